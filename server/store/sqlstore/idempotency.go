package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"github.com/bgbroker/breakglass/server/store"
)

// Idempotent implements store.Reader.
func (t *Tx) Idempotent(ctx context.Context, principal, method, key string) (*store.IdempotentCall, error) {
	c := store.IdempotentCall{Principal: principal, Method: method, Key: key}
	var at int64
	err := t.Q.QueryRowContext(ctx, t.q(`SELECT fingerprint, request_id, entry_index, at FROM idempotency WHERE principal = ? AND method = ? AND key = ?`),
		principal, method, key).Scan(&c.Fingerprint, &c.RequestID, &c.EntryIndex, &at)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	c.At = fromNanos(at)
	return &c, nil
}

// AddIdempotent implements store.Tx.
func (t *Tx) AddIdempotent(ctx context.Context, c store.IdempotentCall) error {
	_, err := t.exec(ctx, `INSERT INTO idempotency (principal, method, key, fingerprint, request_id, entry_index, at) VALUES (?,?,?,?,?,?,?)`,
		c.Principal, c.Method, c.Key, c.Fingerprint, c.RequestID, c.EntryIndex, nanos(c.At))
	return err
}

// PruneIdempotent implements store.Tx.
func (t *Tx) PruneIdempotent(ctx context.Context, before time.Time) (int, error) {
	res, err := t.exec(ctx, `DELETE FROM idempotency WHERE at < ?`, nanos(before))
	if err != nil {
		return 0, err
	}
	n, err := res.RowsAffected()
	return int(n), err
}
