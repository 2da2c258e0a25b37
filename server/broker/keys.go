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
	return b.update(ctx, func(tx store.Tx) error {
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
			if _, err := b.appendEntry(ctx, tx, now, audit.Draft{Type: audit.TypeKeyRetired, Actor: "broker", Account: retire.Account,
				Payload: audit.KeyChange{Purpose: retire.Purpose, Account: retire.Account, KID: retire.KID, Label: retire.Label, Reason: "replaced by " + rec.KID}}, true); err != nil {
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
		return b.emit(ctx, tx, event.Event{Type: evType, Account: rec.Account, AuditIndex: &idx,
			Summary: fmt.Sprintf("%s key %s (%s) is now %s", rec.Purpose, rec.KID, rec.Label, rec.State)}, nil)
	})
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
