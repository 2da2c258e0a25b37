package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"github.com/bgbroker/breakglass/server/store"
)

// Keys implements store.Reader.
func (t *Tx) Keys(ctx context.Context) ([]store.KeyRecord, error) {
	rows, err := t.Q.QueryContext(ctx, `SELECT kid, purpose, account, label, key_id, public_pem, state, activated_at, retired_at, destroyed_at, revoked_at
		FROM keys ORDER BY activated_at, kid`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.KeyRecord
	for rows.Next() {
		var k store.KeyRecord
		var act int64
		var ret, des, rev sql.NullInt64
		if err := rows.Scan(&k.KID, &k.Purpose, &k.Account, &k.Label, &k.KeyID, &k.PublicPEM, &k.State, &act, &ret, &des, &rev); err != nil {
			return nil, err
		}
		k.ActivatedAt, k.RetiredAt, k.DestroyedAt, k.RevokedAt = fromNanos(act), fromNull(ret), fromNull(des), fromNull(rev)
		out = append(out, k)
	}
	return out, rows.Err()
}

// ActiveKey implements store.Reader.
func (t *Tx) ActiveKey(ctx context.Context, purpose, account string) (store.KeyRecord, error) {
	var k store.KeyRecord
	var act int64
	var ret, des sql.NullInt64
	err := t.Q.QueryRowContext(ctx, t.q(`SELECT kid, purpose, account, label, key_id, public_pem, state, activated_at, retired_at, destroyed_at
		FROM keys WHERE purpose = ? AND account = ? AND state = 'active'`), purpose, account).
		Scan(&k.KID, &k.Purpose, &k.Account, &k.Label, &k.KeyID, &k.PublicPEM, &k.State, &act, &ret, &des)
	if errors.Is(err, sql.ErrNoRows) {
		return k, store.ErrNotFound
	}
	if err != nil {
		return k, err
	}
	k.ActivatedAt, k.RetiredAt, k.DestroyedAt = fromNanos(act), fromNull(ret), fromNull(des)
	return k, nil
}

// PutKey implements store.Tx.
func (t *Tx) PutKey(ctx context.Context, k store.KeyRecord) error {
	_, err := t.exec(ctx, `INSERT INTO keys (kid, purpose, account, label, key_id, public_pem, state, activated_at, retired_at, destroyed_at, revoked_at)
		VALUES (?,?,?,?,?,?,?,?,?,?,?)
		ON CONFLICT (kid) DO UPDATE SET state = excluded.state, retired_at = excluded.retired_at, destroyed_at = excluded.destroyed_at, revoked_at = excluded.revoked_at`,
		k.KID, k.Purpose, k.Account, k.Label, k.KeyID, k.PublicPEM, k.State, nanos(k.ActivatedAt), nullNanos(k.RetiredAt), nullNanos(k.DestroyedAt), nullNanos(k.RevokedAt))
	return err
}

// LastTokenExpiry implements store.Reader.
func (t *Tx) LastTokenExpiry(ctx context.Context, kid string) (time.Time, error) {
	var at sql.NullInt64
	err := t.Q.QueryRowContext(ctx, t.q(`SELECT MAX(expires_at) FROM tokens WHERE kid = ?`), kid).Scan(&at)
	return fromNull(at), err
}
