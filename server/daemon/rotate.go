package daemon

import (
	"bytes"
	"context"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/bgbroker/breakglass/hsm"
	"github.com/bgbroker/breakglass/server/config"
	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/x509ca"
)

// Rotate runs a key rotation ceremony against the broker's HSM and store:
// a new key for purpose (and account, for token keys) becomes active and
// the old one retired, audited in the log (and announced through the
// outbox, which the running broker delivers). A running broker picks the
// new key up within seconds.
func Rotate(ctx context.Context, cfg *config.Config, p hsm.Purpose, account, label string, log *slog.Logger) (store.KeyRecord, error) {
	return rotate(ctx, cfg, p, account, label, "", log)
}

// RotateRevoking rotates the SSH CA key and revokes the old one with every
// certificate it signed (hsm rotate --revoke-old), for the reason given.
func RotateRevoking(ctx context.Context, cfg *config.Config, p hsm.Purpose, label, reason string, log *slog.Logger) (store.KeyRecord, error) {
	if strings.TrimSpace(reason) == "" {
		return store.KeyRecord{}, errors.New("revoking a CA key needs a reason (--reason): it is logged and announced")
	}
	return rotate(ctx, cfg, p, "", label, reason, log)
}

func rotate(ctx context.Context, cfg *config.Config, p hsm.Purpose, account, label, revokeReason string, log *slog.Logger) (store.KeyRecord, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pol, _, err := cfg.LoadPolicy()
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
	if p == hsm.PurposeX509CA {
		return store.KeyRecord{}, errors.New("an X.509 CA key needs its CA certificate: rotate it with --subject (and --days)")
	}
	o, err := openOffline(ctx, cfg, log)
	if err != nil {
		return store.KeyRecord{}, err
	}
	defer o.Close()
	if revokeReason != "" {
		return o.ring.RotateRevoking(ctx, o.broker, p, label, "key ceremony: "+revokeReason, nil)
	}
	return o.ring.Rotate(ctx, o.broker, p, account, label, "key ceremony")
}

// RotateX509CA rotates the X.509 CA key: the new key's CA certificate is
// self-signed in the HSM and added to certificates.x509_ca_cert (beside the
// old key's, which stays published until its last certificate expires)
// before the key is recorded active, so the broker never holds an active
// X.509 CA key without its certificate.
//
// With revokeReason set, the old key is revoked with every certificate it
// signed (hsm rotate --revoke-old): its certificate leaves /x509/ca.pem and
// its CRL, signed while the key is still in the HSM, lists them all.
func RotateX509CA(ctx context.Context, cfg *config.Config, label string, subject pkix.Name, validity time.Duration, revokeReason string, log *slog.Logger) (store.KeyRecord, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	bundle := cfg.Certificates.X509CACert
	if bundle == "" {
		return store.KeyRecord{}, errors.New("certificates.x509_ca_cert is not set: the new key's CA certificate would have nowhere to go")
	}
	o, err := openOffline(ctx, cfg, log)
	if err != nil {
		return store.KeyRecord{}, err
	}
	defer o.Close()
	prepare := func(k *hsm.Key) error {
		now := time.Now().UTC().Truncate(time.Second)
		cert, err := x509ca.SelfSign(ctx, k, x509ca.CAOptions{Subject: subject, NotBefore: now.Add(-5 * time.Minute), NotAfter: now.Add(validity)})
		if err != nil {
			return err
		}
		old, err := os.ReadFile(bundle)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		b := append(bytes.TrimRight(old, "\n"), '\n')
		if len(old) == 0 {
			b = nil
		}
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})...)
		tmp := bundle + ".new"
		if err := os.WriteFile(tmp, b, 0o644); err != nil { //nolint:gosec // CA certificates are public
			return err
		}
		return os.Rename(tmp, bundle)
	}
	if revokeReason != "" {
		return o.ring.RotateRevoking(ctx, o.broker, hsm.PurposeX509CA, label, "key ceremony: "+revokeReason, prepare)
	}
	return o.ring.RotateWith(ctx, o.broker, hsm.PurposeX509CA, "", label, "key ceremony", prepare)
}
