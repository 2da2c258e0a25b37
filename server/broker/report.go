package broker

import (
	"context"
	"errors"
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

// Report builds the report for caller: auditors see everything, an
// account's owners their accounts.
func (b *Broker) Report(ctx context.Context, caller string) (*Report, error) {
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
	rep, err := b.report(ctx, p, b.now().UTC())
	if err != nil || p.IsAuditor(caller) {
		return rep, err
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

func filter[T any](in []T, keep func(T) bool) []T {
	var out []T
	for _, x := range in {
		if keep(x) {
			out = append(out, x)
		}
	}
	return out
}

func (b *Broker) report(ctx context.Context, p *policy.Policy, now time.Time) (*Report, error) {
	rep := &Report{Time: now}
	if w := b.cfg.Witnesses; w != nil && w.Status != nil {
		rep.Witnesses = w.Status()
	}
	err := b.view(ctx, func(r store.Reader) error {
		var err error
		if rep.ActiveGrants, err = r.ActiveGrants(ctx, now); err != nil {
			return err
		}
		rep.ActiveGrants = filter(rep.ActiveGrants, func(q *request.Request) bool { s, _, _ := q.Effective(now); return s == request.Approved })
		if rep.TokensOutstanding, err = r.TokensOutstanding(ctx, now); err != nil {
			return err
		}
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
		for _, a := range p.Accounts {
			st := AccountStatus{Account: a.Name, DrillEvery: a.DrillEvery.D(), ReviewEvery: a.ReviewEvery.D()}
			first, err := r.AccountFirstSeen(ctx, a.Name)
			if err != nil {
				return err
			}
			if first.IsZero() {
				first = now
			}
			if st.LastDrill, err = r.LastUse(ctx, a.Name, true); err != nil {
				return err
			}
			if st.LastUse, err = r.LastUse(ctx, a.Name, false); err != nil {
				return err
			}
			att, err := r.LastAttestation(ctx, a.Name)
			switch {
			case errors.Is(err, store.ErrNotFound):
			case err != nil:
				return err
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
			rep.Accounts = append(rep.Accounts, st)
		}
		return nil
	})
	return rep, err
}

// AccountStatuses returns the drill, attestation and use status of every
// account.
func (b *Broker) AccountStatuses(ctx context.Context) (map[string]AccountStatus, error) {
	rep, err := b.report(ctx, b.Policy(), b.now().UTC())
	if err != nil {
		return nil, err
	}
	out := map[string]AccountStatus{}
	for _, a := range rep.Accounts {
		out[a.Account] = a
	}
	return out, nil
}
