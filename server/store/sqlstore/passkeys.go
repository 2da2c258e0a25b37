package sqlstore

import (
	"context"
	"database/sql"
	"time"

	"github.com/bgbroker/breakglass/server/store"
)

// passkeyColumns lists the columns of the passkeys table.
const passkeyColumns = `credential_id, principal, public_key, rp_id, web_origin, label, state, code_hash, created_at, expires_at, ` + //nolint:gosec // G101 takes the column name "credential_id" for a secret
	`bound_at, bound_entry, removed_at, counter, flags, statement, signature, cert`

func scanPasskeys(rows *sql.Rows) ([]store.Passkey, error) {
	defer rows.Close()
	var out []store.Passkey
	for rows.Next() {
		var (
			p                       store.Passkey
			code                    sql.NullString
			created                 int64
			expires, bound, removed sql.NullInt64
			entry                   sql.NullInt64
			counter                 int64
			flags                   int
		)
		if err := rows.Scan(&p.CredentialID, &p.Principal, &p.PublicKey, &p.RPID, &p.WebOrigin, &p.Label, &p.State, &code, &created, &expires,
			&bound, &entry, &removed, &counter, &flags, &p.Statement, &p.Signature, &p.Cert); err != nil {
			return nil, err
		}
		p.CodeHash, p.CreatedAt, p.ExpiresAt, p.BoundAt, p.RemovedAt = code.String, fromNanos(created), fromNull(expires), fromNull(bound), fromNull(removed)
		p.BoundEntry, p.Counter, p.Flags = uint64(entry.Int64), uint32(counter), byte(flags)
		out = append(out, p)
	}
	return out, rows.Err()
}

func (t *Tx) onePasskey(ctx context.Context, query string, args ...any) (*store.Passkey, error) {
	rows, err := t.Q.QueryContext(ctx, t.q(query), args...)
	if err != nil {
		return nil, err
	}
	ps, err := scanPasskeys(rows)
	if err != nil {
		return nil, err
	}
	if len(ps) == 0 {
		return nil, store.ErrNotFound
	}
	return &ps[0], nil
}

// Passkey implements store.Reader.
func (t *Tx) Passkey(ctx context.Context, id []byte) (*store.Passkey, error) {
	return t.onePasskey(ctx, `SELECT `+passkeyColumns+` FROM passkeys WHERE credential_id = ?`, id)
}

// PendingPasskey implements store.Reader: one search of the partial
// index of pending codes.
func (t *Tx) PendingPasskey(ctx context.Context, codeHash string) (*store.Passkey, error) {
	return t.onePasskey(ctx, `SELECT `+passkeyColumns+` FROM passkeys WHERE code_hash = ? AND state = 'pending'`, codeHash)
}

// PasskeysOf implements store.Reader.
func (t *Tx) PasskeysOf(ctx context.Context, principal string, limit int) ([]store.Passkey, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := t.Q.QueryContext(ctx, t.q(`SELECT `+passkeyColumns+` FROM passkeys WHERE principal = ? ORDER BY created_at, credential_id LIMIT ?`), principal, limit)
	if err != nil {
		return nil, err
	}
	return scanPasskeys(rows)
}

func nullString(s string) sql.NullString { return sql.NullString{String: s, Valid: s != ""} }

// AddPasskey implements store.Tx.
func (t *Tx) AddPasskey(ctx context.Context, p store.Passkey) error {
	_, err := t.exec(ctx, `INSERT INTO passkeys (`+passkeyColumns+`) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`,
		p.CredentialID, p.Principal, p.PublicKey, p.RPID, p.WebOrigin, p.Label, p.State, nullString(p.CodeHash), nanos(p.CreatedAt), nullNanos(p.ExpiresAt),
		nullNanos(p.BoundAt), boundEntry(p), nullNanos(p.RemovedAt), int64(p.Counter), int(p.Flags), orEmptyBytes(p.Statement), orEmptyBytes(p.Signature), orEmptyBytes(p.Cert))
	return err
}

func boundEntry(p store.Passkey) sql.NullInt64 {
	if p.BoundAt.IsZero() {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: int64(p.BoundEntry), Valid: true}
}

// SavePasskey implements store.Tx. A pending passkey's code is forgotten
// once it is bound or removed.
func (t *Tx) SavePasskey(ctx context.Context, p store.Passkey) error {
	code := nullString(p.CodeHash)
	if p.State != store.PasskeyPending {
		code = sql.NullString{}
	}
	res, err := t.exec(ctx, `UPDATE passkeys SET state = ?, code_hash = ?, expires_at = ?, bound_at = ?, bound_entry = ?, removed_at = ?, counter = ?, flags = ?,
		statement = ?, signature = ?, cert = ? WHERE credential_id = ?`,
		p.State, code, nullNanos(p.ExpiresAt), nullNanos(p.BoundAt), boundEntry(p), nullNanos(p.RemovedAt), int64(p.Counter), int(p.Flags),
		orEmptyBytes(p.Statement), orEmptyBytes(p.Signature), orEmptyBytes(p.Cert), p.CredentialID)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n != 1 {
		return store.ErrNotFound
	}
	return nil
}

// PruneExpiredPasskeys implements store.Tx: a range of the partial index
// of pending passkeys, oldest first.
func (t *Tx) PruneExpiredPasskeys(ctx context.Context, now time.Time, limit int) (int, error) {
	rows, err := t.Q.QueryContext(ctx, t.q(`SELECT credential_id FROM passkeys WHERE state = 'pending' AND expires_at <= ? ORDER BY expires_at LIMIT ?`), nanos(now), limit)
	if err != nil {
		return 0, err
	}
	var ids [][]byte
	for rows.Next() {
		var id []byte
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return 0, err
		}
		ids = append(ids, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	for _, id := range ids {
		if _, err := t.exec(ctx, `DELETE FROM passkeys WHERE credential_id = ? AND state = 'pending'`, id); err != nil {
			return 0, err
		}
	}
	return len(ids), nil
}
