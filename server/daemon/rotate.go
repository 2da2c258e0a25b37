package daemon

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/bgbroker/breakglass/hsm"
	"github.com/bgbroker/breakglass/server/broker"
	"github.com/bgbroker/breakglass/server/config"
	"github.com/bgbroker/breakglass/server/identity"
	"github.com/bgbroker/breakglass/server/keyring"
	"github.com/bgbroker/breakglass/server/notify"
	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/store/sqlite"
)

// Rotate runs a key rotation ceremony against the broker's HSM and store:
// a new key for purpose (and account, for token keys) becomes active and
// the old one retired, audited in the log (and announced through the
// outbox, which the running broker delivers). A running broker picks the
// new key up within seconds.
func Rotate(ctx context.Context, cfg *config.Config, p hsm.Purpose, account, label string, log *slog.Logger) (store.KeyRecord, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := cfg.Validate(); err != nil {
		return store.KeyRecord{}, err
	}
	pol, source, err := cfg.LoadPolicy()
	if err != nil {
		return store.KeyRecord{}, err
	}
	if account != "" {
		a, ok := pol.Account(account)
		if !ok {
			return store.KeyRecord{}, fmt.Errorf("account %q is not in the policy", account)
		}
		if a.TokenKey == "" {
			return store.KeyRecord{}, fmt.Errorf("account %s has no token_key of its own; set one in the policy first", account)
		}
	}
	ident, err := identity.New(cfg.Identity, log)
	if err != nil {
		return store.KeyRecord{}, err
	}
	m, err := hsm.Open(ctx, cfg.HSM, log)
	if err != nil {
		return store.KeyRecord{}, err
	}
	defer m.Close()
	st, err := sqlite.Open(ctx, cfg.Store.SQLite)
	if err != nil {
		return store.KeyRecord{}, err
	}
	defer st.Close()
	wants := []keyring.Want{{Purpose: hsm.PurposeToken, Label: cfg.Keys.Token}, {Purpose: hsm.PurposeAudit, Label: cfg.Keys.Audit},
		{Purpose: hsm.PurposeCheckpoint, Label: cfg.Keys.Checkpoint}}
	for _, a := range pol.Accounts {
		if a.TokenKey != "" {
			wants = append(wants, keyring.Want{Purpose: hsm.PurposeToken, Account: a.Name, Label: a.TokenKey})
		}
	}
	ring := keyring.New(keyring.Config{Module: m, Store: st, Issuer: cfg.Issuer, Log: log})
	if err := ring.Preload(ctx, wants); err != nil {
		return store.KeyRecord{}, err
	}
	origin := cfg.Audit.Origin
	if origin == "" {
		origin = "breakglass/" + hsm.Fingerprint(ring.Checkpoint().Public())[:16]
	}
	ring.SetOrigin(origin)
	router := notify.NewRouter(cfg.Notify.Sinks)
	b, err := broker.New(ctx, broker.Config{Store: st, Policy: pol, PolicySource: source, Keys: ring, Log: log, Origin: origin, Certs: ident,
		Routes: router, AckSinkKnown: router.Has})
	if err != nil {
		return store.KeyRecord{}, err
	}
	if err := ring.Bootstrap(ctx, b, wants); err != nil {
		return store.KeyRecord{}, err
	}
	return ring.Rotate(ctx, b, p, account, label, "key ceremony")
}
