package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"github.com/bgbroker/breakglass/server/store"
)

const certColumns = `kind, ca_kid, serial, request_id, account, subject, issued_at, not_before, expires_at, fingerprint, entry_index, revoked_at`

// The queries the KRL, the CRL and key retirement run on every change and
// tick; their plans are checked in the engines' tests (each reads only the
// revoked, unexpired certificates, or one CA's latest expiry, by index).
const (
	QueryRevokedCertificates   = `SELECT ` + certColumns + ` FROM certificates WHERE kind = ? AND expires_at > ? AND revoked_at IS NOT NULL ORDER BY ca_kid, serial`
	QueryLastCertificateExpiry = `SELECT MAX(expires_at) FROM certificates WHERE ca_kid = ?`
)

func scanCerts(rows *sql.Rows) ([]store.CertRecord, error) {
	defer rows.Close()
	var out []store.CertRecord
	for rows.Next() {
		var c store.CertRecord
		var iat, nbf, exp int64
		var rev sql.NullInt64
		if err := rows.Scan(&c.Kind, &c.CAKID, &c.Serial, &c.RequestID, &c.Account, &c.Subject, &iat, &nbf, &exp, &c.Fingerprint, &c.EntryIndex, &rev); err != nil {
			return nil, err
		}
		c.IssuedAt, c.NotBefore, c.ExpiresAt, c.RevokedAt = fromNanos(iat), fromNanos(nbf), fromNanos(exp), fromNull(rev)
		out = append(out, c)
	}
	return out, rows.Err()
}

// AddCertificate implements store.Tx.
func (t *Tx) AddCertificate(ctx context.Context, c *store.CertRecord) error {
	t.touched(c.RequestID)
	_, err := t.exec(ctx, `INSERT INTO certificates (`+certColumns+`) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)`,
		c.Kind, c.CAKID, c.Serial, c.RequestID, c.Account, c.Subject, nanos(c.IssuedAt), nanos(c.NotBefore), nanos(c.ExpiresAt), c.Fingerprint, c.EntryIndex, nullNanos(c.RevokedAt))
	return err
}

// RevokeCertificates implements store.Tx.
func (t *Tx) RevokeCertificates(ctx context.Context, requestID, caKID string, at time.Time) (int, error) {
	var res sql.Result
	var err error
	if requestID != "" {
		t.touched(requestID)
		res, err = t.exec(ctx, `UPDATE certificates SET revoked_at = ? WHERE request_id = ? AND revoked_at IS NULL`, nanos(at), requestID)
	} else {
		res, err = t.exec(ctx, `UPDATE certificates SET revoked_at = ? WHERE ca_kid = ? AND revoked_at IS NULL AND expires_at > ?`, nanos(at), caKID, nanos(at))
	}
	if err != nil {
		return 0, err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, nil
	}
	_, err = t.exec(ctx, `INSERT INTO revocation_state (id, generation, at) VALUES (1, 1, ?)
		ON CONFLICT (id) DO UPDATE SET generation = revocation_state.generation + 1, at = excluded.at`, nanos(at))
	return int(n), err
}

// PutCRL implements store.Tx.
func (t *Tx) PutCRL(ctx context.Context, c store.CRLRecord) error {
	_, err := t.exec(ctx, `INSERT INTO crls (ca_kid, number, this_update, next_update, der) VALUES (?,?,?,?,?)
		ON CONFLICT (ca_kid) DO UPDATE SET number = excluded.number, this_update = excluded.this_update, next_update = excluded.next_update, der = excluded.der`,
		c.CAKID, c.Number, nanos(c.ThisUpdate), nanos(c.NextUpdate), c.DER)
	return err
}

// RevokedCertificates implements store.Reader.
func (t *Tx) RevokedCertificates(ctx context.Context, kind string, after time.Time) ([]store.CertRecord, error) {
	rows, err := t.Q.QueryContext(ctx, t.q(QueryRevokedCertificates), kind, nanos(after))
	if err != nil {
		return nil, err
	}
	return scanCerts(rows)
}

// RequestCertificates implements store.Reader.
func (t *Tx) RequestCertificates(ctx context.Context, requestID string) ([]store.CertRecord, error) {
	rows, err := t.Q.QueryContext(ctx, t.q(`SELECT `+certColumns+` FROM certificates WHERE request_id = ? ORDER BY entry_index`), requestID)
	if err != nil {
		return nil, err
	}
	return scanCerts(rows)
}

// Revocations implements store.Reader.
func (t *Tx) Revocations(ctx context.Context) (store.RevocationState, error) {
	var gen, at int64
	err := t.Q.QueryRowContext(ctx, `SELECT generation, at FROM revocation_state WHERE id = 1`).Scan(&gen, &at)
	if errors.Is(err, sql.ErrNoRows) {
		return store.RevocationState{}, nil
	}
	if err != nil {
		return store.RevocationState{}, err
	}
	return store.RevocationState{Generation: uint64(gen), At: fromNanos(at)}, nil
}

// LastCertificateExpiry implements store.Reader.
func (t *Tx) LastCertificateExpiry(ctx context.Context, kid string) (time.Time, error) {
	var at sql.NullInt64
	err := t.Q.QueryRowContext(ctx, t.q(QueryLastCertificateExpiry), kid).Scan(&at)
	return fromNull(at), err
}

// CRL implements store.Reader.
func (t *Tx) CRL(ctx context.Context, caKID string) (*store.CRLRecord, error) {
	c := store.CRLRecord{CAKID: caKID}
	var num, this, next int64
	err := t.Q.QueryRowContext(ctx, t.q(`SELECT number, this_update, next_update, der FROM crls WHERE ca_kid = ?`), caKID).Scan(&num, &this, &next, &c.DER)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	c.Number, c.ThisUpdate, c.NextUpdate = uint64(num), fromNanos(this), fromNanos(next)
	return &c, nil
}
