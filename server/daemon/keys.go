package daemon

import (
	"context"
	"time"

	"github.com/bgbroker/breakglass/format/keyid"
	"github.com/bgbroker/breakglass/hsm"
	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
)

// keysLoop picks up keys rotated by another process (breakglassd hsm
// rotate) and destroys retired token keys whose last token has expired.
func (d *Daemon) keysLoop(ctx context.Context) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := d.ring.Load(ctx); err != nil && ctx.Err() == nil {
			d.log.Error("reloading the key registry failed; keeping the keys in use", "err", err)
		} else if d.cas != nil {
			if err := d.cas.Reload(); err != nil {
				d.log.Error("reloading the certificate authorities failed; keeping the ones in use", "err", err)
			}
		}
		if n%12 == 0 {
			if _, err := d.ring.DestroyExpired(ctx, d.Broker); err != nil && ctx.Err() == nil {
				d.log.Error("destroying expired token and CA keys failed", "err", err)
			}
		}
	}
}

// rotateAfterUse rotates an account's token key after a grant that used it
// ended (rotate_after_use), one rotation at a time; one still waiting when
// the daemon closes gives up.
func (d *Daemon) rotateAfterUse(ctx context.Context, account string) {
	select {
	case d.rotating <- struct{}{}:
		defer func() { <-d.rotating }()
	case <-ctx.Done():
		d.log.Warn("the daemon closed before the token key could be rotated after use; rotate it by hand", "account", account)
		return
	}
	rec, err := d.ring.Rotate(ctx, d.Broker, hsm.PurposeToken, account, "", "rotate_after_use")
	if err != nil {
		d.log.Error("rotating the token key after use failed", "account", account, "err", err)
		return
	}
	d.log.Info("token key rotated after use", "account", account, "kid", rec.KID, "label", rec.Label)
}

// publicKey describes an HSM key for the API; for checkpoint keys with the
// signed-note verifier key named by the log's origin.
func publicKey(k *hsm.Key, p hsm.Purpose, noteName string) (*bgv1.PublicKey, error) {
	pemBytes, err := keyid.PublicPEM(k.Public())
	if err != nil {
		return nil, err
	}
	kid, err := keyid.Thumbprint(k.Public())
	if err != nil {
		return nil, err
	}
	out := &bgv1.PublicKey{Label: k.Label(), Algorithm: string(k.Algorithm()), Kid: kid, FingerprintSha256: hsm.Fingerprint(k.Public()), Pem: string(pemBytes)}
	switch p {
	case hsm.PurposeAudit:
		out.Purpose = bgv1.KeyPurpose_KEY_PURPOSE_AUDIT
	case hsm.PurposeCheckpoint:
		out.Purpose = bgv1.KeyPurpose_KEY_PURPOSE_CHECKPOINT
		if out.NoteVerifierKey, err = hsm.NoteVerifierKey(noteName, k.Public()); err != nil {
			return nil, err
		}
	default:
		out.Purpose = bgv1.KeyPurpose_KEY_PURPOSE_TOKEN
	}
	return out, nil
}
