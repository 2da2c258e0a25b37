package broker

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/server/event"
	"github.com/bgbroker/breakglass/server/store"
)

// RecordRestore appends the store_restored entry to a store just restored
// from a backup, signed at once, and announces it. A forced restore (one
// that rolled the log back past a checkpoint) pages like any other
// override: the SOC must learn that revocations may have been undone.
func (b *Broker) RecordRestore(ctx context.Context, r audit.StoreRestored) (audit.Record, error) {
	if r.Operator == "" {
		return audit.Record{}, invalid("a restore names its operator")
	}
	if r.Forced && r.Reason == "" {
		return audit.Record{}, invalid("a forced restore needs a reason")
	}
	var rec audit.Record
	err := b.update(ctx, func(tx store.Tx) error {
		now := b.now()
		var err error
		if rec, err = b.appendEntry(ctx, tx, now, audit.Draft{Type: audit.TypeStoreRestored, Actor: r.Operator, Payload: r}, true); err != nil {
			return err
		}
		summary := fmt.Sprintf("store restored by %s from a backup of %d entries, consistent with the newest checkpoint (%d entries)", r.Operator, r.BackupSize, r.NewestSize)
		switch {
		case r.Forced && r.NewestSize > r.BackupSize:
			summary = fmt.Sprintf("FORCED restore by %s from a backup of %d entries: the newest checkpoint covered %d, so %d entries, which may include revocations, are undone; reason: %s",
				r.Operator, r.BackupSize, r.NewestSize, r.NewestSize-r.BackupSize, r.Reason)
		case r.Forced:
			summary = fmt.Sprintf("FORCED restore by %s from a backup of %d entries whose log differs from the newest checkpoint (%d entries); reason: %s",
				r.Operator, r.BackupSize, r.NewestSize, r.Reason)
		}
		details, err := json.Marshal(map[string]any{"forced": r.Forced, "reason": r.Reason, "backup_size": r.BackupSize, "newest_size": r.NewestSize})
		if err != nil {
			return err
		}
		idx := rec.Index
		return b.emit(ctx, tx, event.Event{Type: event.StoreRestored, Actor: r.Operator, Time: now, AuditIndex: &idx, Summary: summary, Details: details}, nil)
	})
	return rec, err
}
