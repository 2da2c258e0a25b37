package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/hsm"
	"github.com/bgbroker/breakglass/server/broker"
	"github.com/bgbroker/breakglass/server/config"
	"github.com/bgbroker/breakglass/server/identity"
	"github.com/bgbroker/breakglass/server/keyring"
	"github.com/bgbroker/breakglass/server/notify"
	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/store/postgres"
	"github.com/bgbroker/breakglass/server/store/sqlite"
)

// openStore opens the configured store.
func openStore(ctx context.Context, cfg *config.Config, log *slog.Logger) (store.Store, error) {
	switch cfg.Store.Driver {
	case config.DriverPostgres:
		st, err := postgres.Open(ctx, postgresConfig(cfg.Store), log)
		if err != nil {
			return nil, err
		}
		return st, nil
	case config.DriverSQLite, "":
		sc := sqliteConfig(cfg.Store)
		sc.OnDamaged = func(err error) {
			log.Error("the database failed its integrity check: every transaction is refused until it is restored from a backup", "err", err)
		}
		sc.OnChecked = func(took time.Duration) {
			log.Info("the database passed its background integrity check", "took", took.Round(time.Millisecond))
		}
		st, err := sqlite.Open(ctx, sc)
		if err != nil {
			return nil, err
		}
		return st, nil
	}
	return nil, fmt.Errorf("store.driver %q is not sqlite or postgres", cfg.Store.Driver)
}

// offline is a broker without listeners or background loops, for the
// commands that write to the log while no broker serves (key ceremonies,
// restores): the same keys, policy and store a served one would have.
type offline struct {
	module *hsm.Module
	store  store.Store
	ring   *keyring.Ring
	broker *broker.Broker
	policy *policy.Policy
	origin string
}

func openOffline(ctx context.Context, cfg *config.Config, log *slog.Logger) (_ *offline, err error) {
	pol, source, ident, err := loadPolicyAndIdentity(cfg, log, nil)
	if err != nil {
		return nil, err
	}
	o := &offline{policy: pol}
	defer func() {
		if err != nil {
			o.Close()
		}
	}()
	if o.module, err = hsm.Open(ctx, HSMConfig(cfg.HSM), log); err != nil {
		return nil, err
	}
	if o.store, err = openStore(ctx, cfg, log); err != nil {
		return nil, err
	}
	wants := keyWants(cfg, pol)
	if o.ring, o.origin, err = loadRing(ctx, cfg, keyring.Config{Module: o.module, Store: o.store, Issuer: cfg.Issuer, Log: log}, wants); err != nil {
		return nil, err
	}
	router := notify.NewRouter(sinkConfigs(cfg.Notify.Sinks))
	sigs, _, err := cfg.LoadPolicySignatures()
	if err != nil {
		return nil, err
	}
	if o.broker, err = broker.New(ctx, broker.Config{Store: o.store, Policy: pol, PolicySource: source, Keys: o.ring, Log: log, Origin: o.origin, Certs: ident,
		Routes: router, PolicySignatures: sigs}); err != nil {
		return nil, err
	}
	if err := o.ring.Bootstrap(ctx, o.broker, wants); err != nil {
		return nil, err
	}
	return o, nil
}

// loadPolicyAndIdentity loads what the configuration names of the policy
// and the callers' identities.
func loadPolicyAndIdentity(cfg *config.Config, log *slog.Logger, now func() time.Time) (*policy.Policy, string, *identity.Verifier, error) {
	pol, source, err := cfg.LoadPolicy()
	if err != nil {
		return nil, "", nil, err
	}
	logPolicyWarnings(log, pol, source)
	// The policy names the identity rule (the configuration's, unless it
	// names its own).
	ic := identityConfig(cfg.Identity)
	ic.Mode, ic.URIPrefix = pol.Identity.Mode, pol.Identity.URIPrefix
	ident, err := identity.New(ic, identity.Options{Log: log, Now: now})
	if err != nil {
		return nil, "", nil, err
	}
	return pol, source, ident, nil
}

// loadRing loads the keys the registry and wants name and sets the log's
// origin: audit.origin, or one derived from the checkpoint key.
func loadRing(ctx context.Context, cfg *config.Config, rc keyring.Config, wants []keyring.Want) (*keyring.Ring, string, error) {
	ring := keyring.New(rc)
	if err := ring.Preload(ctx, wants); err != nil {
		return nil, "", err
	}
	origin := cfg.Audit.Origin
	if origin == "" {
		origin = "breakglass/" + hsm.Fingerprint(ring.Checkpoint().Public())[:16]
	}
	ring.SetOrigin(origin)
	return ring, origin, nil
}

// keyWants are the keys the configuration and the policy name: the
// registry names the ones in use, these the first ones.
func keyWants(cfg *config.Config, pol *policy.Policy) []keyring.Want {
	wants := []keyring.Want{{Purpose: hsm.PurposeToken, Label: cfg.Keys.Token}, {Purpose: hsm.PurposeAudit, Label: cfg.Keys.Audit},
		{Purpose: hsm.PurposeCheckpoint, Label: cfg.Keys.Checkpoint}}
	if cfg.Keys.SSHCA != "" {
		wants = append(wants, keyring.Want{Purpose: hsm.PurposeSSHCA, Label: cfg.Keys.SSHCA})
	}
	if cfg.Keys.X509CA != "" {
		wants = append(wants, keyring.Want{Purpose: hsm.PurposeX509CA, Label: cfg.Keys.X509CA})
	}
	for _, a := range pol.Accounts {
		if a.TokenKey != "" {
			wants = append(wants, keyring.Want{Purpose: hsm.PurposeToken, Account: a.Name, Label: a.TokenKey})
		}
	}
	return wants
}

func (o *offline) Close() error {
	var errs []error
	if o.store != nil {
		errs = append(errs, o.store.Close())
	}
	if o.module != nil {
		errs = append(errs, o.module.Close())
	}
	return errors.Join(errs...)
}

// OpenStore opens the store the configuration names, for the commands that
// read or write it while no broker serves (backup, restore).
func OpenStore(ctx context.Context, cfg *config.Config, log *slog.Logger) (store.Store, error) {
	return openStore(ctx, cfg, log)
}

// RecordRestore writes a store_restored entry to the log of the store cfg
// names, signed at once by the HSM, and returns its index.
func RecordRestore(ctx context.Context, cfg *config.Config, e audit.StoreRestored, log *slog.Logger) (uint64, error) {
	o, err := openOffline(ctx, cfg, log)
	if err != nil {
		return 0, fmt.Errorf("opening the HSM and the backup to record the restore, so nothing was restored: %w", err)
	}
	rec, err := o.broker.RecordRestore(ctx, e)
	if cerr := o.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, fmt.Errorf("recording the restore in the audit log, so nothing was restored: %w", err)
	}
	return rec.Index, nil
}

// ResetPolicy is the trust reset for when the policy admins' keys are lost:
// the configured policy is put in force without their quorum, offline (no
// broker serves), logged as a reset the offline verifier reports and
// announced to every sink (delivered once the broker serves again).
func ResetPolicy(ctx context.Context, cfg *config.Config, operator, reason string, log *slog.Logger) (*broker.PolicyReload, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	o, err := openOffline(ctx, cfg, log)
	if err != nil {
		return nil, err
	}
	defer o.Close()
	return o.broker.ResetPolicy(ctx, operator, reason, o.policy, cfg.PolicyFile)
}
