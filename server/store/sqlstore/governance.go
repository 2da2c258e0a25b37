package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"strconv"
	"time"

	"github.com/bgbroker/breakglass/server/request"
	"github.com/bgbroker/breakglass/server/store"
)

// SoloAcknowledged implements store.Reader.
func (t *Tx) SoloAcknowledged(ctx context.Context) ([]*request.Request, error) {
	return t.queryRequests(ctx, `SELECT `+requestCols+` FROM requests WHERE state = 'PENDING' AND solo = 1 AND solo_acked_at IS NOT NULL ORDER BY created_at`)
}

// ActiveGrants implements store.Reader.
func (t *Tx) ActiveGrants(ctx context.Context, now time.Time, page store.Page) ([]*request.Request, error) {
	lim := strconv.Itoa(page.Size())
	if page.AfterTime.IsZero() {
		return t.queryRequests(ctx, `SELECT `+requestCols+` FROM requests WHERE state = 'APPROVED' AND grant_expires_at > ?
			ORDER BY grant_expires_at, id LIMIT `+lim, nanos(now))
	}
	return t.queryRequests(ctx, `SELECT `+requestCols+` FROM requests WHERE state = 'APPROVED' AND grant_expires_at > ?
		AND (grant_expires_at, id) > (?, ?) ORDER BY grant_expires_at, id LIMIT `+lim, nanos(now), nanos(page.AfterTime), page.AfterID)
}

// Counts implements store.Reader from counters the write transactions keep
// (request_counts, token_count) and the partial index of open grants.
func (t *Tx) Counts(ctx context.Context, now time.Time) (store.Counts, error) {
	c := store.Counts{Requests: map[request.State]int{}}
	rows, err := t.Q.QueryContext(ctx, `SELECT state, n FROM request_counts`)
	if err != nil {
		return c, err
	}
	defer rows.Close()
	for rows.Next() {
		var state string
		var n int
		if err := rows.Scan(&state, &n); err != nil {
			return c, err
		}
		if n != 0 {
			c.Requests[request.State(state)] = n
		}
	}
	if err := rows.Err(); err != nil {
		return c, err
	}
	err = t.Q.QueryRowContext(ctx, t.q(`SELECT (SELECT COUNT(*) FROM requests WHERE state = 'APPROVED' AND grant_expires_at > ?), (SELECT COALESCE(MAX(n), 0) FROM token_count)`),
		nanos(now)).Scan(&c.ActiveGrants, &c.Tokens)
	return c, err
}

// TokensOutstanding implements store.Reader.
func (t *Tx) TokensOutstanding(ctx context.Context, now time.Time, page store.Page) ([]store.TokenRecord, error) {
	after, afterID := nanos(now), ""
	if !page.AfterTime.IsZero() {
		after, afterID = max(after, nanos(page.AfterTime)), page.AfterID
	}
	// (expires_at, jti) > (after, afterID) with afterID "" is expires_at >=
	// after: a page from now starts after now, hence the first condition.
	rows, err := t.Q.QueryContext(ctx, t.q(`SELECT t.jti, t.request_id, t.account, t.subject, t.audience, t.kid, t.issued_at, t.expires_at, t.token_sha256, t.drill, t.entry_index
		FROM tokens t WHERE t.revoked = 0 AND t.expires_at > ? AND (t.expires_at, t.jti) > (?, ?) ORDER BY t.expires_at, t.jti LIMIT `+strconv.Itoa(page.Size())),
		nanos(now), after, afterID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.TokenRecord
	for rows.Next() {
		var tk store.TokenRecord
		var iat, exp int64
		var drill int
		if err := rows.Scan(&tk.JTI, &tk.RequestID, &tk.Account, &tk.Subject, &tk.Audience, &tk.KID, &iat, &exp, &tk.TokenSHA256, &drill, &tk.EntryIndex); err != nil {
			return nil, err
		}
		tk.IssuedAt, tk.ExpiresAt, tk.Drill = fromNanos(iat), fromNanos(exp), drill != 0
		out = append(out, tk)
	}
	return out, rows.Err()
}

// LastUse implements store.Reader.
func (t *Tx) LastUse(ctx context.Context, account string, drill bool) (time.Time, error) {
	var at sql.NullInt64
	err := t.Q.QueryRowContext(ctx, t.q(`SELECT first_issued_at FROM requests WHERE account = ? AND drill = ? AND issued > 0 AND first_issued_at IS NOT NULL
		ORDER BY first_issued_at DESC LIMIT 1`), account, boolInt(drill)).Scan(&at)
	if errors.Is(err, sql.ErrNoRows) {
		return time.Time{}, nil
	}
	return fromNull(at), err
}

const postReviewCols = `id, request_id, account, requester, excluded_json, opened_at, due_at, closed_at, closed_by, notes, statement, signature, cert`

func (t *Tx) postReviews(ctx context.Context, query string, args ...any) ([]store.PostReview, error) {
	rows, err := t.Q.QueryContext(ctx, t.q(query), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.PostReview
	for rows.Next() {
		var (
			pr          store.PostReview
			excluded    string
			opened, due int64
			closed      sql.NullInt64
		)
		if err := rows.Scan(&pr.ID, &pr.RequestID, &pr.Account, &pr.Requester, &excluded, &opened, &due, &closed, &pr.ClosedBy, &pr.Notes,
			&pr.Statement, &pr.Signature, &pr.Cert); err != nil {
			return nil, err
		}
		if err := json.Unmarshal([]byte(excluded), &pr.Excluded); err != nil {
			return nil, err
		}
		pr.OpenedAt, pr.DueAt, pr.ClosedAt = fromNanos(opened), fromNanos(due), fromNull(closed)
		out = append(out, pr)
	}
	return out, rows.Err()
}

// PostReviews implements store.Reader.
func (t *Tx) PostReviews(ctx context.Context, open bool) ([]store.PostReview, error) {
	q := `SELECT ` + postReviewCols + ` FROM post_reviews`
	if open {
		q += ` WHERE closed_at IS NULL`
	}
	return t.postReviews(ctx, q+` ORDER BY due_at`)
}

// PostReview implements store.Reader.
func (t *Tx) PostReview(ctx context.Context, id string) (*store.PostReview, error) {
	prs, err := t.postReviews(ctx, `SELECT `+postReviewCols+` FROM post_reviews WHERE id = ?`, id)
	if err != nil {
		return nil, err
	}
	if len(prs) == 0 {
		return nil, store.ErrNotFound
	}
	return &prs[0], nil
}

// AddPostReview implements store.Tx.
func (t *Tx) AddPostReview(ctx context.Context, pr store.PostReview) error {
	ex, err := json.Marshal(orEmpty(pr.Excluded))
	if err != nil {
		return err
	}
	_, err = t.exec(ctx, `INSERT INTO post_reviews (id, request_id, account, requester, excluded_json, opened_at, due_at) VALUES (?,?,?,?,?,?,?)`,
		pr.ID, pr.RequestID, pr.Account, pr.Requester, string(ex), nanos(pr.OpenedAt), nanos(pr.DueAt))
	return err
}

// ClosePostReview implements store.Tx.
func (t *Tx) ClosePostReview(ctx context.Context, pr store.PostReview) error {
	res, err := t.exec(ctx, `UPDATE post_reviews SET closed_at = ?, closed_by = ?, notes = ?, statement = ?, signature = ?, cert = ?
		WHERE id = ? AND closed_at IS NULL`, nanos(pr.ClosedAt), pr.ClosedBy, pr.Notes, pr.Statement, pr.Signature, pr.Cert, pr.ID)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return store.ErrConflict
	}
	return nil
}

// LastAttestation implements store.Reader.
func (t *Tx) LastAttestation(ctx context.Context, account string) (*store.Attestation, error) {
	var a store.Attestation
	var at int64
	err := t.Q.QueryRowContext(ctx, t.q(`SELECT id, account, attested_by, at, notes, policy_hash, statement, signature, cert, entry_index
		FROM attestations WHERE account = ? ORDER BY at DESC LIMIT 1`), account).Scan(&a.ID, &a.Account, &a.By, &at, &a.Notes, &a.PolicyHash,
		&a.Statement, &a.Signature, &a.Cert, &a.EntryIndex)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	a.At = fromNanos(at)
	return &a, nil
}

// AddAttestation implements store.Tx.
func (t *Tx) AddAttestation(ctx context.Context, a store.Attestation) error {
	_, err := t.exec(ctx, `INSERT INTO attestations (id, account, attested_by, at, notes, policy_hash, statement, signature, cert, entry_index)
		VALUES (?,?,?,?,?,?,?,?,?,?)`, a.ID, a.Account, a.By, nanos(a.At), a.Notes, a.PolicyHash, a.Statement, a.Signature, a.Cert, a.EntryIndex)
	return err
}

// AccountFirstSeen implements store.Reader.
func (t *Tx) AccountFirstSeen(ctx context.Context, account string) (time.Time, error) {
	var at int64
	err := t.Q.QueryRowContext(ctx, t.q(`SELECT first_seen FROM accounts_seen WHERE account = ?`), account).Scan(&at)
	if errors.Is(err, sql.ErrNoRows) {
		return time.Time{}, nil
	}
	return fromNanos(at), err
}

// MarkAccountSeen implements store.Tx.
func (t *Tx) MarkAccountSeen(ctx context.Context, account string, at time.Time) error {
	_, err := t.exec(ctx, `INSERT INTO accounts_seen (account, first_seen) VALUES (?, ?) ON CONFLICT (account) DO NOTHING`, account, nanos(at))
	return err
}

// AlertSent implements store.Reader.
func (t *Tx) AlertSent(ctx context.Context, key string) (time.Time, error) {
	var at int64
	err := t.Q.QueryRowContext(ctx, t.q(`SELECT at FROM alerts_sent WHERE key = ?`), key).Scan(&at)
	if errors.Is(err, sql.ErrNoRows) {
		return time.Time{}, nil
	}
	return fromNanos(at), err
}

// SetAlertSent implements store.Tx.
func (t *Tx) SetAlertSent(ctx context.Context, key string, at time.Time) error {
	_, err := t.exec(ctx, `INSERT INTO alerts_sent (key, at) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET at = excluded.at`, key, nanos(at))
	return err
}

// RecordCerts implements store.Tx.
func (t *Tx) RecordCerts(ctx context.Context, certs []store.CertSeen) error {
	for _, c := range certs {
		if _, err := t.exec(ctx, `INSERT INTO certs_seen (principal, serial, not_after, last_seen) VALUES (?,?,?,?)
			ON CONFLICT (principal, serial) DO UPDATE SET last_seen = excluded.last_seen`, c.Principal, c.Serial, nanos(c.NotAfter), nanos(c.LastSeen)); err != nil {
			return err
		}
	}
	return nil
}

// CertsSeen implements store.Reader.
func (t *Tx) CertsSeen(ctx context.Context, since time.Time) ([]store.CertSeen, error) {
	rows, err := t.Q.QueryContext(ctx, t.q(`SELECT principal, serial, not_after, last_seen FROM certs_seen WHERE last_seen >= ? ORDER BY not_after`), nanos(since))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.CertSeen
	for rows.Next() {
		var c store.CertSeen
		var na, ls int64
		if err := rows.Scan(&c.Principal, &c.Serial, &na, &ls); err != nil {
			return nil, err
		}
		c.NotAfter, c.LastSeen = fromNanos(na), fromNanos(ls)
		out = append(out, c)
	}
	return out, rows.Err()
}

// AdvancePostReviewDue implements store.Tx.
func (t *Tx) AdvancePostReviewDue(ctx context.Context, requestID string, due time.Time) error {
	_, err := t.exec(ctx, `UPDATE post_reviews SET due_at = ? WHERE request_id = ? AND closed_at IS NULL AND due_at > ?`, nanos(due), requestID, nanos(due))
	return err
}
