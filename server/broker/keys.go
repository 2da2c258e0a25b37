package broker

import (
	"context"
	"fmt"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/server/event"
	"github.com/bgbroker/breakglass/server/store"
)

// RecordKey records a key change in the registry and the audit log in one
// transaction, and announces it. retire, when set, is the key the change
// replaces (recorded retired in the same transaction). Key entries need the
// HSM: a key that becomes active grants the power to sign.
func (b *Broker) RecordKey(ctx context.Context, typ audit.Type, rec store.KeyRecord, change audit.KeyChange, retire *store.KeyRecord) error {
	now := b.now().UTC()
	revokedCerts := 0
	err := b.update(ctx, func(tx store.Tx) error {
		revokedCerts = 0
		if change.Purpose == purposeAudit && change.Previous != "" {
			// Entries are signed by the key in force at their index: one
			// written before the rotation must be signed by the old key,
			// which only this broker's backlog signer could still do.
			n, err := tx.UnsignedCount(ctx)
			if err != nil {
				return err
			}
			if n > 0 {
				return wrongState("%d audit entries written while the HSM was down are not signed yet; the broker signs them as soon as it reaches the HSM (see /healthz unsigned_backlog): rotate the audit key after that", n)
			}
		}
		e, err := b.appendEntry(ctx, tx, now, audit.Draft{Type: typ, Actor: "broker", Account: rec.Account, Payload: change}, true)
		if err != nil {
			return err
		}
		if retire != nil {
			reason := "replaced by " + rec.KID
			if !retire.RevokedAt.IsZero() {
				// A CA key retired as revoked (it may be compromised) takes
				// every certificate it signed that has not expired with it,
				// in this transaction: they are in the KRL at once and in
				// the key's CRL when it is next signed, moments later.
				if retire.Purpose != purposeSSHCA && retire.Purpose != purposeX509CA {
					return invalid("only CA keys are revoked with what they signed; a %s key is retired", retire.Purpose)
				}
				n, err := tx.RevokeCertificates(ctx, "", retire.KID, retire.RevokedAt)
				if err != nil {
					return err
				}
				revokedCerts = n
				reason += fmt.Sprintf("; revoked with every certificate it signed (%d not yet expired): %s", n, change.Reason)
			}
			if _, err := b.appendEntry(ctx, tx, now, audit.Draft{Type: audit.TypeKeyRetired, Actor: "broker", Account: retire.Account,
				Payload: audit.KeyChange{Purpose: retire.Purpose, Account: retire.Account, KID: retire.KID, Label: retire.Label, Reason: reason}}, true); err != nil {
				return err
			}
			if err := tx.PutKey(ctx, *retire); err != nil {
				return err
			}
		}
		if err := tx.PutKey(ctx, rec); err != nil {
			return err
		}
		evType := map[audit.Type]string{audit.TypeKeyActivated: event.KeyRotated, audit.TypeKeyDestroyed: event.KeyDestroyed, audit.TypeKeyRetired: event.KeyRetired}[typ]
		idx := e.Index
		summary := fmt.Sprintf("%s key %s (%s) is now %s", rec.Purpose, rec.KID, rec.Label, rec.State)
		if retire != nil && !retire.RevokedAt.IsZero() {
			summary += fmt.Sprintf("; the previous key %s (%s) is REVOKED with the %d certificates it signed that had not expired", retire.KID, retire.Label, revokedCerts)
		}
		return b.emit(ctx, tx, event.Event{Type: evType, Account: rec.Account, AuditIndex: &idx, Summary: summary}, nil)
	})
	if err == nil && retire != nil && !retire.RevokedAt.IsZero() {
		b.cfg.Observer.CertificatesRevoked()
	}
	return err
}

// grantEnded runs the account's rotate_after_use when a grant that issued
// a token ends.
func (b *Broker) grantEnded(account string, issued int) {
	if issued == 0 {
		return
	}
	if a, ok := b.Policy().Account(account); ok && a.RotateAfterUse {
		b.cfg.Observer.RotateAfterUse(account)
	}
}
