// Package sqlstore implements the store's reads and writes over database/sql
// for the SQL engines the broker supports. Engines differ only in how they
// open, migrate and lock; their packages wrap this one.
package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/passkey"
	"github.com/bgbroker/breakglass/server/request"
	"github.com/bgbroker/breakglass/server/store"
)

// Dialect describes an engine's SQL differences.
type Dialect struct {
	// Numbered placeholders ($1) instead of ?.
	Numbered bool
	// IsConflict reports whether err is a uniqueness or constraint failure.
	IsConflict func(error) bool
	// LockSuffix is appended to queries that claim rows for a worker
	// (" FOR UPDATE SKIP LOCKED" where the engine has it).
	LockSuffix string
}

// Querier is *sql.Tx or *sql.Conn.
type Querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// Tx implements store.Tx over a database transaction.
type Tx struct {
	Q Querier
	D Dialect
	// Changed, when set, collects what the transaction changed, for stores
	// that announce commits to other processes.
	Changed *store.Change
}

func (t *Tx) touched(requestID string) {
	if t.Changed != nil && requestID != "" && !slices.Contains(t.Changed.Requests, requestID) {
		t.Changed.Requests = append(t.Changed.Requests, requestID)
	}
}

var _ store.Tx = (*Tx)(nil)

func (t *Tx) q(query string) string {
	if !t.D.Numbered {
		return query
	}
	var b strings.Builder
	n := 0
	for _, c := range query {
		if c == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(c)
	}
	return b.String()
}

func (t *Tx) exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	res, err := t.Q.ExecContext(ctx, t.q(query), args...)
	if err != nil && t.D.IsConflict != nil && t.D.IsConflict(err) {
		return nil, fmt.Errorf("%w: %w", store.ErrConflict, err)
	}
	return res, err
}

// Exec runs a statement written with ? placeholders in the transaction:
// for fills of many rows in one statement by tests and benchmarks, which
// the store's own methods write one row at a time.
func (t *Tx) Exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	return t.exec(ctx, query, args...)
}

func nanos(t time.Time) int64 { return t.UnixNano() }

func nullNanos(t time.Time) sql.NullInt64 {
	if t.IsZero() {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: t.UnixNano(), Valid: true}
}

func nullIndex(i *uint64) sql.NullInt64 {
	if i == nil {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: int64(*i), Valid: true}
}

func fromNanos(n int64) time.Time { return time.Unix(0, n).UTC() }

func fromNull(n sql.NullInt64) time.Time {
	if !n.Valid {
		return time.Time{}
	}
	return fromNanos(n.Int64)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

const requestCols = `id, account, requester, justification, ticket, ttl_ns, drill, state, created_at,
	approval_deadline, rule_json, deny_threshold, max_issuances, activation_window_ns, policy_hash,
	approved_at, grant_expires_at, activation_deadline, approvers_json, issued, first_issued_at,
	final_at, final_reason, final_by, created_entry, created_leaf, version, solo, solo_acked_at, grant_acked_at, token_kid, approved_entry, content_version,
	request_statement, request_signature, requester_cert`

type scanner interface{ Scan(dest ...any) error }

func scanRequest(s scanner) (*request.Request, error) {
	var (
		r                                                  request.Request
		ttl, aw, created, deadline                         int64
		drill, solo                                        int
		state, ruleJSON, approversJSON                     string
		approved, grantEnd, activation, firstIssued, final sql.NullInt64
		soloAcked, grantAcked, approvedEntry               sql.NullInt64
	)
	if err := s.Scan(&r.ID, &r.Account, &r.Requester, &r.Justification, &r.Ticket, &ttl, &drill, &state, &created,
		&deadline, &ruleJSON, &r.DenyThreshold, &r.MaxIssuances, &aw, &r.PolicyHash,
		&approved, &grantEnd, &activation, &approversJSON, &r.Issued, &firstIssued,
		&final, &r.FinalReason, &r.FinalBy, &r.CreatedEntry, &r.CreatedLeaf, &r.Version, &solo, &soloAcked, &grantAcked, &r.TokenKID, &approvedEntry, &r.ContentVersion,
		&r.Signed.Statement, &r.Signed.Signature, &r.Signed.Cert); err != nil {
		return nil, err
	}
	r.TTL, r.ActivationWindow = time.Duration(ttl), time.Duration(aw)
	r.Drill = drill != 0
	r.State = request.State(state)
	r.CreatedAt, r.ApprovalDeadline = fromNanos(created), fromNanos(deadline)
	r.ApprovedAt, r.GrantExpiresAt, r.ActivationDeadline = fromNull(approved), fromNull(grantEnd), fromNull(activation)
	r.FirstIssuedAt, r.FinalAt = fromNull(firstIssued), fromNull(final)
	r.Solo, r.SoloAckedAt, r.GrantAckedAt = solo != 0, fromNull(soloAcked), fromNull(grantAcked)
	if approvedEntry.Valid {
		idx := uint64(approvedEntry.Int64)
		r.ApprovedEntry = &idx
	}
	if err := json.Unmarshal([]byte(ruleJSON), &r.Rule); err != nil {
		return nil, fmt.Errorf("request %s: stored rule: %w", r.ID, err)
	}
	if err := json.Unmarshal([]byte(approversJSON), &r.Approvers); err != nil {
		return nil, fmt.Errorf("request %s: stored approvers: %w", r.ID, err)
	}
	return &r, nil
}

// Request implements store.Reader.
func (t *Tx) Request(ctx context.Context, id string) (*request.Request, error) {
	r, err := scanRequest(t.Q.QueryRowContext(ctx, t.q(`SELECT `+requestCols+` FROM requests WHERE id = ?`), id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	if err := t.loadReviews(ctx, []*request.Request{r}); err != nil {
		return nil, err
	}
	return r, nil
}

// reviewChunk bounds the ids bound in one reviews query; shorter lists are
// padded to a few fixed lengths so that the statement cache holds a handful
// of texts, whatever the number of requests read.
var reviewChunks = []int{1, 8, 64, 512}

// loadReviews reads the reviews of rs in bounded chunks, each a search of
// the reviews' primary key: however many requests a caller reads (40,000
// active grants), no statement binds more than 512 variables.
func (t *Tx) loadReviews(ctx context.Context, rs []*request.Request) error {
	byID := make(map[string]*request.Request, len(rs))
	for _, r := range rs {
		byID[r.ID] = r
	}
	for start := 0; start < len(rs); {
		n := len(rs) - start
		size := reviewChunks[len(reviewChunks)-1]
		for _, c := range reviewChunks {
			if n <= c {
				size = c
				break
			}
		}
		n = min(n, size)
		args := make([]any, size)
		for i := range size {
			// Padding repeats the last id: IN ignores duplicates.
			args[i] = rs[start+min(i, n-1)].ID
		}
		if err := t.reviewsIn(ctx, byID, args); err != nil {
			return err
		}
		start += n
	}
	return nil
}

func (t *Tx) reviewsIn(ctx context.Context, byID map[string]*request.Request, ids []any) error {
	rows, err := t.Q.QueryContext(ctx, t.q(`SELECT request_id, reviewer, decision, comment, at, entry_index, leaf_hash, statement, signature, cert, passkey, key_store
		FROM reviews WHERE request_id IN (?`+strings.Repeat(",?", len(ids)-1)+`) ORDER BY request_id, entry_index`), ids...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var (
			id, decision string
			rv           request.Review
			at           int64
			pk           []byte
		)
		if err := rows.Scan(&id, &rv.Reviewer, &decision, &rv.Comment, &at, &rv.EntryIndex, &rv.LeafHash, &rv.Statement, &rv.Signature, &rv.Cert, &pk, &rv.KeyStore); err != nil {
			return err
		}
		if len(pk) > 0 {
			rv.Passkey = new(passkey.Assertion)
			if err := json.Unmarshal(pk, rv.Passkey); err != nil {
				return fmt.Errorf("review of %s by %s: its stored passkey assertion does not parse: %w", id, rv.Reviewer, err)
			}
		}
		rv.Decision, rv.At = request.Decision(decision), fromNanos(at)
		if r := byID[id]; r != nil {
			r.Reviews = append(r.Reviews, rv)
		}
	}
	return rows.Err()
}

// Requests implements store.Reader. Each combination of one state and one
// account is a range of one index in page order (requests_by_*), read up
// to the limit; several states or accounts are merged here, so no query
// sorts or filters more rows than it returns.
func (t *Tx) Requests(ctx context.Context, f store.Filter) ([]*request.Request, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	states := []string{""}
	if len(f.States) > 0 {
		states = states[:0]
		for _, st := range f.States {
			if !slices.Contains(states, string(st)) {
				states = append(states, string(st))
			}
		}
	}
	accounts := []string{f.Account}
	if len(f.Accounts) > 0 {
		accounts = accounts[:0]
		for _, a := range f.Accounts {
			if f.Account != "" && a != f.Account {
				continue
			}
			if !slices.Contains(accounts, a) {
				accounts = append(accounts, a)
			}
		}
		if len(accounts) == 0 {
			return nil, nil
		}
	}
	var out []*request.Request
	for _, st := range states {
		for _, acct := range accounts {
			rs, err := t.requestsRange(ctx, st, acct, f, limit)
			if err != nil {
				return nil, err
			}
			out = append(out, rs...)
		}
	}
	if len(states)*len(accounts) > 1 {
		slices.SortFunc(out, func(a, b *request.Request) int {
			if c := b.CreatedAt.Compare(a.CreatedAt); c != 0 {
				return c
			}
			return strings.Compare(b.ID, a.ID)
		})
		out = out[:min(len(out), limit)]
	}
	return out, t.loadReviews(ctx, out)
}

func (t *Tx) requestsRange(ctx context.Context, state, account string, f store.Filter, limit int) ([]*request.Request, error) {
	var (
		where []string
		args  []any
	)
	if state != "" {
		where = append(where, "state = ?")
		args = append(args, state)
	}
	if account != "" {
		where = append(where, "account = ?")
		args = append(args, account)
	}
	if f.Requester != "" {
		where = append(where, "requester = ?")
		args = append(args, f.Requester)
	}
	if !f.BeforeTime.IsZero() {
		where = append(where, "(created_at, id) < (?, ?)")
		args = append(args, nanos(f.BeforeTime), f.BeforeID)
	}
	query := `SELECT ` + requestCols + ` FROM requests`
	if len(where) > 0 {
		query += " WHERE " + strings.Join(where, " AND ")
	}
	query += " ORDER BY created_at DESC, id DESC LIMIT " + strconv.Itoa(limit)
	return t.scanRequests(ctx, query, args...)
}

func (t *Tx) scanRequests(ctx context.Context, query string, args ...any) ([]*request.Request, error) {
	rows, err := t.Q.QueryContext(ctx, t.q(query), args...)
	if err != nil {
		return nil, err
	}
	var out []*request.Request
	for rows.Next() {
		r, err := scanRequest(rows)
		if err != nil {
			rows.Close()
			return nil, err
		}
		out = append(out, r)
	}
	if err := rows.Close(); err != nil {
		return nil, err
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

func (t *Tx) queryRequests(ctx context.Context, query string, args ...any) ([]*request.Request, error) {
	out, err := t.scanRequests(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	return out, t.loadReviews(ctx, out)
}

// DueForExpiry implements store.Reader: one search per deadline, each over
// a partial index that holds open requests only, so the sweep costs the
// number of requests due, never the number ever made.
func (t *Tx) DueForExpiry(ctx context.Context, now time.Time, limit int) ([]*request.Request, error) {
	n := nanos(now)
	limit = max(limit, 1)
	lim := strconv.Itoa(limit)
	type due struct {
		r  *request.Request
		at int64
	}
	var all []due
	seen := map[string]bool{}
	for _, q := range []struct{ where, col string }{
		{"state = 'PENDING' AND approval_deadline <= ?", "approval_deadline"},
		{"state = 'APPROVED' AND grant_expires_at <= ?", "grant_expires_at"},
		{"state = 'APPROVED' AND issued = 0 AND activation_deadline <= ?", "activation_deadline"},
	} {
		rs, err := t.scanRequests(ctx, `SELECT `+requestCols+` FROM requests WHERE `+q.where+` ORDER BY `+q.col+` LIMIT `+lim, n)
		if err != nil {
			return nil, err
		}
		for _, r := range rs {
			if seen[r.ID] {
				continue
			}
			seen[r.ID] = true
			at := r.ApprovalDeadline
			switch q.col {
			case "grant_expires_at":
				at = r.GrantExpiresAt
			case "activation_deadline":
				at = r.ActivationDeadline
			}
			all = append(all, due{r, nanos(at)})
		}
	}
	slices.SortStableFunc(all, func(a, b due) int { return cmpInt(a.at, b.at) })
	out := make([]*request.Request, 0, min(len(all), limit))
	for _, d := range all[:min(len(all), limit)] {
		out = append(out, d.r)
	}
	return out, t.loadReviews(ctx, out)
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// CreateRequest implements store.Tx.
func (t *Tx) CreateRequest(ctx context.Context, r *request.Request) error {
	t.touched(r.ID)
	rule, err := json.Marshal(r.Rule)
	if err != nil {
		return err
	}
	approvers, err := json.Marshal(orEmpty(r.Approvers))
	if err != nil {
		return err
	}
	_, err = t.exec(ctx, `INSERT INTO requests (`+requestCols+`) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`,
		r.ID, r.Account, r.Requester, r.Justification, r.Ticket, int64(r.TTL), boolInt(r.Drill), string(r.State), nanos(r.CreatedAt),
		nanos(r.ApprovalDeadline), string(rule), r.DenyThreshold, r.MaxIssuances, int64(r.ActivationWindow), r.PolicyHash,
		nullNanos(r.ApprovedAt), nullNanos(r.GrantExpiresAt), nullNanos(r.ActivationDeadline), string(approvers), r.Issued, nullNanos(r.FirstIssuedAt),
		nullNanos(r.FinalAt), r.FinalReason, r.FinalBy, r.CreatedEntry, r.CreatedLeaf, 1, boolInt(r.Solo), nullNanos(r.SoloAckedAt), nullNanos(r.GrantAckedAt), r.TokenKID, nullIndex(r.ApprovedEntry), int(r.ContentVersion.Norm()),
		orEmptyBytes(r.Signed.Statement), orEmptyBytes(r.Signed.Signature), orEmptyBytes(r.Signed.Cert))
	if err == nil {
		r.Version = 1
	}
	return err
}

func orEmptyBytes(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

func orEmpty(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// SaveRequest implements store.Tx.
func (t *Tx) SaveRequest(ctx context.Context, r *request.Request) error {
	t.touched(r.ID)
	approvers, err := json.Marshal(orEmpty(r.Approvers))
	if err != nil {
		return err
	}
	vals := []any{string(r.State), nullNanos(r.ApprovedAt), nullNanos(r.GrantExpiresAt), nullNanos(r.ActivationDeadline),
		string(approvers), int64(r.Issued), nullNanos(r.FirstIssuedAt), nullNanos(r.FinalAt), r.FinalReason, r.FinalBy,
		nullNanos(r.SoloAckedAt), nullNanos(r.GrantAckedAt), r.TokenKID, nullIndex(r.ApprovedEntry)}
	// Only the columns that change are written: SQLite rewrites the
	// entries of every index over a column an UPDATE sets, changed or not,
	// and requests have an index per list filter and per deadline (an
	// issuance rewrote eight index entries to change a count).
	stored := make([]any, len(saveCols))
	ptrs := make([]any, len(saveCols))
	for i := range stored {
		ptrs[i] = &stored[i]
	}
	err = t.Q.QueryRowContext(ctx, t.q(`SELECT `+strings.Join(saveCols, ", ")+` FROM requests WHERE id = ? AND version = ?`), r.ID, r.Version).Scan(ptrs...)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("%w: request %s changed underneath (version %d)", store.ErrConflict, r.ID, r.Version)
	}
	if err != nil {
		return err
	}
	var set []string
	var args []any
	for i, v := range vals {
		if !sameValue(stored[i], v) {
			set = append(set, saveCols[i]+" = ?")
			args = append(args, v)
		}
	}
	res, err := t.exec(ctx, `UPDATE requests SET `+strings.Join(append(set, "version = version + 1"), ", ")+` WHERE id = ? AND version = ?`,
		append(args, r.ID, r.Version)...)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n != 1 {
		return fmt.Errorf("%w: request %s changed underneath (version %d)", store.ErrConflict, r.ID, r.Version)
	}
	r.Version++
	if r.State == request.Revoked {
		// Its tokens leave the index of live ones (TokensOutstanding).
		if _, err := t.exec(ctx, `UPDATE tokens SET revoked = 1 WHERE request_id = ? AND revoked = 0`, r.ID); err != nil {
			return err
		}
	}
	return nil
}

// saveCols are the columns SaveRequest may change, in the order of its
// values.
var saveCols = []string{"state", "approved_at", "grant_expires_at", "activation_deadline", "approvers_json", "issued", "first_issued_at",
	"final_at", "final_reason", "final_by", "solo_acked_at", "grant_acked_at", "token_kid", "approved_entry"}

// sameValue reports whether a value read back from the database equals one
// about to be written, across the drivers' representations (NULL, integers
// of any width, text as string or bytes).
func sameValue(stored, v any) bool {
	if n, ok := v.(sql.NullInt64); ok {
		if !n.Valid {
			return stored == nil
		}
		v = n.Int64
	}
	switch x := stored.(type) {
	case int32:
		stored = int64(x)
	case int:
		stored = int64(x)
	case []byte:
		stored = string(x)
	}
	return stored == v
}

// AddReview implements store.Tx.
func (t *Tx) AddReview(ctx context.Context, requestID string, rv request.Review) error {
	t.touched(requestID)
	var pk []byte
	if rv.Passkey != nil {
		var err error
		if pk, err = json.Marshal(rv.Passkey); err != nil {
			return err
		}
	}
	_, err := t.exec(ctx, `INSERT INTO reviews (request_id, reviewer, decision, comment, at, entry_index, leaf_hash, statement, signature, cert, passkey, key_store)
		VALUES (?,?,?,?,?,?,?,?,?,?,?,?)`,
		requestID, rv.Reviewer, string(rv.Decision), rv.Comment, nanos(rv.At), rv.EntryIndex, rv.LeafHash, orEmptyBytes(rv.Statement), orEmptyBytes(rv.Signature), orEmptyBytes(rv.Cert),
		orEmptyBytes(pk), rv.KeyStore)
	return err
}

// AddToken implements store.Tx.
func (t *Tx) AddToken(ctx context.Context, tk *store.TokenRecord) error {
	_, err := t.exec(ctx, `INSERT INTO tokens (jti, request_id, account, subject, audience, kid, issued_at, expires_at, token_sha256, drill, entry_index)
		VALUES (?,?,?,?,?,?,?,?,?,?,?)`,
		tk.JTI, tk.RequestID, tk.Account, tk.Subject, tk.Audience, tk.KID, nanos(tk.IssuedAt), nanos(tk.ExpiresAt), tk.TokenSHA256, boolInt(tk.Drill), tk.EntryIndex)
	return err
}

// Token implements store.Reader.
func (t *Tx) Token(ctx context.Context, jti string) (*store.TokenRecord, error) {
	var (
		tk       store.TokenRecord
		iat, exp int64
		drill    int
	)
	err := t.Q.QueryRowContext(ctx, t.q(`SELECT jti, request_id, account, subject, audience, kid, issued_at, expires_at, token_sha256, drill, entry_index
		FROM tokens WHERE jti = ?`), jti).Scan(&tk.JTI, &tk.RequestID, &tk.Account, &tk.Subject, &tk.Audience, &tk.KID, &iat, &exp, &tk.TokenSHA256, &drill, &tk.EntryIndex)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	tk.IssuedAt, tk.ExpiresAt, tk.Drill = fromNanos(iat), fromNanos(exp), drill != 0
	return &tk, nil
}

// Head implements store.Reader.
func (t *Tx) Head(ctx context.Context) (audit.Head, error) {
	var (
		idx, tm int64
		leaf    []byte
	)
	err := t.Q.QueryRowContext(ctx, `SELECT idx, time, leaf_hash FROM entries ORDER BY idx DESC LIMIT 1`).Scan(&idx, &tm, &leaf)
	if errors.Is(err, sql.ErrNoRows) {
		return audit.Head{}, nil
	}
	if err != nil {
		return audit.Head{}, err
	}
	return audit.Head{Size: uint64(idx) + 1, LeafHash: leaf, Time: fromNanos(tm)}, nil
}

const entryCols = `idx, time, type, body, leaf_hash, signature, key_id`

func (t *Tx) entries(ctx context.Context, query string, args ...any) ([]audit.Record, error) {
	rows, err := t.Q.QueryContext(ctx, t.q(query), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []audit.Record
	for rows.Next() {
		var (
			r     audit.Record
			idx   int64
			tm    int64
			typ   string
			keyID sql.NullString
		)
		if err := rows.Scan(&idx, &tm, &typ, &r.Bytes, &r.LeafHash, &r.Signature, &keyID); err != nil {
			return nil, err
		}
		r.Index, r.Time, r.Type, r.KeyID = uint64(idx), fromNanos(tm), audit.Type(typ), keyID.String
		out = append(out, r)
	}
	return out, rows.Err()
}

// Entries implements store.Reader.
func (t *Tx) Entries(ctx context.Context, from, to uint64) ([]audit.Record, error) {
	if to <= from {
		return nil, nil
	}
	return t.entries(ctx, `SELECT `+entryCols+` FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx`, int64(from), int64(to))
}

// Unsigned implements store.Reader.
func (t *Tx) Unsigned(ctx context.Context, limit int) ([]audit.Record, error) {
	return t.entries(ctx, `SELECT `+entryCols+` FROM entries WHERE signature IS NULL ORDER BY idx LIMIT `+strconv.Itoa(max(limit, 1)))
}

// UnsignedCount implements store.Reader.
func (t *Tx) UnsignedCount(ctx context.Context) (int, error) {
	var n int
	err := t.Q.QueryRowContext(ctx, `SELECT COUNT(*) FROM entries WHERE signature IS NULL`).Scan(&n)
	return n, err
}

// LastOfType implements store.Reader.
func (t *Tx) LastOfType(ctx context.Context, typ audit.Type) (audit.Record, error) {
	rs, err := t.entries(ctx, `SELECT `+entryCols+` FROM entries WHERE type = ? ORDER BY idx DESC LIMIT 1`, string(typ))
	if err != nil {
		return audit.Record{}, err
	}
	if len(rs) == 0 {
		return audit.Record{}, store.ErrNotFound
	}
	return rs[0], nil
}

// LastOfTypeAt implements store.Reader.
func (t *Tx) LastOfTypeAt(ctx context.Context, typ audit.Type) (uint64, time.Time, error) {
	var idx, at int64
	err := t.Q.QueryRowContext(ctx, t.q(`SELECT idx, time FROM entries WHERE type = ? ORDER BY idx DESC LIMIT 1`), string(typ)).Scan(&idx, &at)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, time.Time{}, store.ErrNotFound
	}
	if err != nil {
		return 0, time.Time{}, err
	}
	return uint64(idx), fromNanos(at), nil
}

// Append implements store.Tx.
func (t *Tx) Append(ctx context.Context, r audit.Record) error {
	if t.Changed != nil {
		t.Changed.Entries = true
	}
	var sig any
	if r.Signature != nil {
		sig = r.Signature
	}
	var keyID any
	if r.KeyID != "" {
		keyID = r.KeyID
	}
	if _, err := t.exec(ctx, `INSERT INTO entries (`+entryCols+`) VALUES (?,?,?,?,?,?,?)`,
		int64(r.Index), nanos(r.Time), string(r.Type), r.Bytes, r.LeafHash, sig, keyID); err != nil {
		return err
	}
	return t.storeTreeHashes(ctx, r.Index, r.LeafHash)
}

// SetSignature implements store.Tx.
func (t *Tx) SetSignature(ctx context.Context, index uint64, sig []byte, keyID string) error {
	res, err := t.exec(ctx, `UPDATE entries SET signature = ?, key_id = ? WHERE idx = ? AND signature IS NULL`, sig, keyID, int64(index))
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n != 1 {
		return fmt.Errorf("%w: entry %d is missing or already signed", store.ErrConflict, index)
	}
	return nil
}
