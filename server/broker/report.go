package broker

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/server/request"
	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/witness"
)

// Report is the standing-access report: what is open now and what is late.
type Report struct {
	Time              time.Time
	ActiveGrants      []*request.Request
	TokensOutstanding []store.TokenRecord
	OverdueReviews    []store.PostReview
	OpenReviews       []store.PostReview
	Accounts          []AccountStatus
	DeadLetters       []store.OutboxItem
	Outbox            []store.SinkSummary
	ExpiringCerts     []store.CertSeen
	// Witnesses are the witnesses the checkpoints go to, with any split
	// view they report.
	Witnesses []witness.Status
	// NextPageToken is set when more active grants or tokens follow.
	NextPageToken string
}

// AccountStatus is an account's drills, attestations and use.
type AccountStatus struct {
	Account            string
	DrillEvery         time.Duration
	LastDrill          time.Time
	DrillOverdue       bool
	ReviewEvery        time.Duration
	LastAttestation    time.Time
	AttestationOverdue bool
	LastUse            time.Time
	// Unused is set when the account has not been used (nor drilled) for
	// UnusedAfter.
	Unused bool
}

// Report horizons.
const (
	// UnusedAfter flags accounts with no grant used for this long.
	UnusedAfter = 180 * 24 * time.Hour
	// CertsSeenWithin and CertExpiryWarning: certificates seen in the last
	// 90 days that expire within 30.
	CertsSeenWithin   = 90 * 24 * time.Hour
	CertExpiryWarning = 30 * 24 * time.Hour
)

// Report page sizes: a grant carries its signed reviews, so a page of 200
// stays well under the gRPC message limit.
const (
	DefaultReportPage = 100
	MaxReportPage     = 200
)

// ReportPage selects one page of the report.
type ReportPage struct {
	// Size bounds the active grants, and the tokens, of the page.
	Size int
	// Token is a previous page's NextPageToken; empty for the first page,
	// which alone carries the sections other than grants and tokens.
	Token string
}

// Report builds one page of the report for caller: auditors see
// everything, an account's owners their accounts.
func (b *Broker) Report(ctx context.Context, caller string, page ReportPage) (*Report, error) {
	p := b.Policy()
	owns := map[string]bool{}
	for _, a := range p.Accounts {
		if p.IsOwner(a, caller) {
			owns[a.Name] = true
		}
	}
	if !p.IsAuditor(caller) && len(owns) == 0 {
		return nil, denied("only auditors and account owners may read the standing-access report")
	}
	cur, err := decodeReportToken(page.Token)
	if err != nil {
		return nil, invalid("page_token is not one this broker issued")
	}
	size := page.Size
	if size <= 0 {
		size = DefaultReportPage
	}
	size = min(size, MaxReportPage)
	now := b.now().UTC()
	if cur.first {
		now = time.Unix(0, cur.at).UTC()
	} else {
		cur.at = now.UnixNano()
	}
	rep := &Report{Time: now}
	err = b.view(ctx, func(r store.Reader) error {
		if err := b.reportOpen(ctx, r, now, size, &cur, rep); err != nil {
			return err
		}
		if cur.first {
			return nil
		}
		if w := b.cfg.Witnesses; w != nil && w.Status != nil {
			rep.Witnesses = w.Status()
		}
		return b.reportRest(ctx, r, p, now, rep)
	})
	if err != nil {
		return nil, err
	}
	if !cur.grantsDone || !cur.tokensDone {
		cur.first = true
		rep.NextPageToken = cur.encode()
	}
	if p.IsAuditor(caller) {
		return rep, nil
	}
	// An owner sees their accounts only.
	keep := func(account string) bool { return owns[account] }
	rep.ActiveGrants = filter(rep.ActiveGrants, func(r *request.Request) bool { return keep(r.Account) })
	rep.TokensOutstanding = filter(rep.TokensOutstanding, func(t store.TokenRecord) bool { return keep(t.Account) })
	rep.OverdueReviews = filter(rep.OverdueReviews, func(r store.PostReview) bool { return keep(r.Account) })
	rep.OpenReviews = filter(rep.OpenReviews, func(r store.PostReview) bool { return keep(r.Account) })
	rep.Accounts = filter(rep.Accounts, func(a AccountStatus) bool { return keep(a.Account) })
	rep.DeadLetters = filter(rep.DeadLetters, func(o store.OutboxItem) bool { return keep(o.Account) })
	rep.Outbox, rep.ExpiringCerts, rep.Witnesses = nil, nil, nil
	return rep, nil
}

// reportCursor is where the report's pages stand: the report's own time
// (every page answers for the same instant), and the last grant and token
// already sent.
type reportCursor struct {
	// first is set once the first page went out.
	first                  bool
	at                     int64
	grantAt, tokenAt       int64
	grantID, tokenJTI      string
	grantsDone, tokensDone bool
}

func (c reportCursor) encode() string {
	return base64.RawURLEncoding.EncodeToString(fmt.Appendf(nil, "r1|%d|%d|%s|%t|%d|%s|%t", c.at, c.grantAt, c.grantID, c.grantsDone, c.tokenAt, c.tokenJTI, c.tokensDone))
}

func decodeReportToken(s string) (reportCursor, error) {
	var c reportCursor
	if s == "" {
		return c, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return c, err
	}
	parts := strings.Split(string(b), "|")
	if len(parts) != 8 || parts[0] != "r1" || len(parts[3]) > 64 || len(parts[6]) > 64 {
		return c, errors.New("malformed")
	}
	ints := []*int64{&c.at, &c.grantAt, &c.tokenAt}
	for i, idx := range []int{1, 2, 5} {
		if *ints[i], err = strconv.ParseInt(parts[idx], 10, 64); err != nil {
			return c, err
		}
	}
	if c.grantsDone, err = strconv.ParseBool(parts[4]); err != nil {
		return c, err
	}
	if c.tokensDone, err = strconv.ParseBool(parts[7]); err != nil {
		return c, err
	}
	c.first, c.grantID, c.tokenJTI = true, parts[3], parts[6]
	return c, nil
}

func pageAfter(at int64, id string) store.Page {
	if at == 0 {
		return store.Page{}
	}
	return store.Page{AfterTime: time.Unix(0, at).UTC(), AfterID: id}
}

// reportOpen reads the next page of active grants and outstanding tokens
// and moves the cursor past them.
func (b *Broker) reportOpen(ctx context.Context, r store.Reader, now time.Time, size int, cur *reportCursor, rep *Report) error {
	if !cur.grantsDone {
		pg := pageAfter(cur.grantAt, cur.grantID)
		pg.Limit = size
		grants, err := r.ActiveGrants(ctx, now, pg)
		if err != nil {
			return err
		}
		if n := len(grants); n > 0 {
			cur.grantAt, cur.grantID = grants[n-1].GrantExpiresAt.UnixNano(), grants[n-1].ID
		}
		cur.grantsDone = len(grants) < size
		rep.ActiveGrants = filter(grants, func(q *request.Request) bool { s, _, _ := q.Effective(now); return s == request.Approved })
	}
	if !cur.tokensDone {
		pg := pageAfter(cur.tokenAt, cur.tokenJTI)
		pg.Limit = size
		tokens, err := r.TokensOutstanding(ctx, now, pg)
		if err != nil {
			return err
		}
		if n := len(tokens); n > 0 {
			cur.tokenAt, cur.tokenJTI = tokens[n-1].ExpiresAt.UnixNano(), tokens[n-1].JTI
		}
		cur.tokensDone = len(tokens) < size
		rep.TokensOutstanding = tokens
	}
	return nil
}

func filter[T any](in []T, keep func(T) bool) []T {
	var out []T
	for _, x := range in {
		if keep(x) {
			out = append(out, x)
		}
	}
	return out
}

// reportRest reads the sections that are small whatever the history:
// open post-use reviews, dead letters, the outbox, expiring certificates
// and each account's status.
func (b *Broker) reportRest(ctx context.Context, r store.Reader, p *policy.Policy, now time.Time, rep *Report) error {
	var err error
	if rep.OpenReviews, err = r.PostReviews(ctx, true); err != nil {
		return err
	}
	rep.OverdueReviews = filter(rep.OpenReviews, func(pr store.PostReview) bool { return !now.Before(pr.DueAt) })
	if rep.DeadLetters, err = r.DeadLetters(ctx, 100); err != nil {
		return err
	}
	if rep.Outbox, err = r.OutboxSummary(ctx); err != nil {
		return err
	}
	certs, err := r.CertsSeen(ctx, now.Add(-CertsSeenWithin))
	if err != nil {
		return err
	}
	rep.ExpiringCerts = filter(certs, func(c store.CertSeen) bool { return c.NotAfter.Before(now.Add(CertExpiryWarning)) })
	rep.Accounts, err = accountStatuses(ctx, r, p, now)
	return err
}

// accountStatuses reads each account's drills, attestations and use: a
// few index searches per account, whatever the history.
func accountStatuses(ctx context.Context, r store.Reader, p *policy.Policy, now time.Time) ([]AccountStatus, error) {
	var out []AccountStatus
	for _, a := range p.Accounts {
		st := AccountStatus{Account: a.Name, DrillEvery: a.DrillEvery.D(), ReviewEvery: a.ReviewEvery.D()}
		first, err := r.AccountFirstSeen(ctx, a.Name)
		if err != nil {
			return nil, err
		}
		if first.IsZero() {
			first = now
		}
		if st.LastDrill, err = r.LastUse(ctx, a.Name, true); err != nil {
			return nil, err
		}
		if st.LastUse, err = r.LastUse(ctx, a.Name, false); err != nil {
			return nil, err
		}
		att, err := r.LastAttestation(ctx, a.Name)
		switch {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			return nil, err
		default:
			st.LastAttestation = att.At
		}
		since := func(t time.Time) time.Time {
			if t.IsZero() {
				return first
			}
			return t
		}
		st.DrillOverdue = st.DrillEvery > 0 && now.Sub(since(st.LastDrill)) > st.DrillEvery
		st.AttestationOverdue = st.ReviewEvery > 0 && now.Sub(since(st.LastAttestation)) > st.ReviewEvery
		lastActivity := st.LastUse
		if st.LastDrill.After(lastActivity) {
			lastActivity = st.LastDrill
		}
		st.Unused = now.Sub(since(lastActivity)) > UnusedAfter
		out = append(out, st)
	}
	return out, nil
}

// lateWork is what the overdue alerts read: the report without its grants
// and tokens.
func (b *Broker) lateWork(ctx context.Context, p *policy.Policy, now time.Time) (*Report, error) {
	rep := &Report{Time: now}
	err := b.view(ctx, func(r store.Reader) error { return b.reportRest(ctx, r, p, now, rep) })
	return rep, err
}

// AccountStatuses returns the drill, attestation and use status of every
// account.
func (b *Broker) AccountStatuses(ctx context.Context) (map[string]AccountStatus, error) {
	var sts []AccountStatus
	err := b.view(ctx, func(r store.Reader) error {
		var err error
		sts, err = accountStatuses(ctx, r, b.Policy(), b.now().UTC())
		return err
	})
	if err != nil {
		return nil, err
	}
	out := map[string]AccountStatus{}
	for _, a := range sts {
		out[a.Account] = a
	}
	return out, nil
}
