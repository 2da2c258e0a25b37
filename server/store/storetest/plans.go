package storetest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/server/request"
	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/store/sqlstore"
)

// Explainer is implemented by the SQL stores: fn runs in a transaction that
// is rolled back, and the engine's plan of every statement it ran comes
// back.
type Explainer interface {
	Explain(ctx context.Context, fn func(store.Tx) error) ([]sqlstore.Plan, error)
}

// historyTables are the tables that grow with history: nothing that runs
// per tick, per scrape or per call may scan them.
var historyTables = []string{"requests", "outbox", "entries", "tokens", "reviews", "passkeys", "policy_proposals", "policy_proposal_reviews",
	"tree_hashes"}

var (
	sqliteScan = regexp.MustCompile(`^SCAN (\w+)(?: AS \w+)?(?: USING (?:COVERING )?INDEX (\w+))?`)
	pgSeqScan  = regexp.MustCompile(`Seq Scan on (\w+)`)
	// pgIndexScan is an index walked in PostgreSQL: with sequential scans
	// off, a whole-table read shows as one of these with no Index Cond and
	// no Limit above it.
	pgIndexScan = regexp.MustCompile(`^(?:->\s+)?Index (?:Only )?Scan(?: Backward)? using (\w+) on (\w+)`)
)

// planCase is one store call whose every statement must search an index.
type planCase struct {
	name string
	fn   func(ctx context.Context, tx store.Tx) error
	// scans are indexes a statement may walk from one end, because they
	// hold open work only (partial indexes) or the statement stops at a
	// LIMIT in the index's order ("<rowid>": the table's own order;
	// "table:<rowid>" allows it on that table only).
	scans []string
	// ordered statements that return a page (LIMIT) must not sort: their
	// order is an index's, and sorting would read every match.
	ordered bool
	// uses, when set, is an index every statement must read: a partial
	// index that holds open work only, where an index over all history
	// would also serve but read what is no longer open.
	uses string
}

func testQueryPlans(t *testing.T, s store.Store) {
	ex, ok := s.(Explainer)
	if !ok {
		t.Fatalf("%T cannot explain its queries", s)
	}
	ctx := context.Background()
	seedPlans(t, s)
	now := t0.Add(time.Hour)
	cases := []planCase{
		{name: "Request", fn: func(ctx context.Context, tx store.Tx) error { _, err := tx.Request(ctx, "r1"); return err }},
		{name: "DueForExpiry", fn: func(ctx context.Context, tx store.Tx) error { _, err := tx.DueForExpiry(ctx, now, 100); return err }, ordered: true},
		{name: "SoloAcknowledged", fn: func(ctx context.Context, tx store.Tx) error { _, err := tx.SoloAcknowledged(ctx); return err },
			scans: []string{"requests_solo_waiting"}},
		{name: "ActiveGrants", fn: func(ctx context.Context, tx store.Tx) error {
			_, err := tx.ActiveGrants(ctx, now, store.Page{Limit: 100})
			return err
		}, ordered: true},
		{name: "ActiveGrants/page", fn: func(ctx context.Context, tx store.Tx) error {
			_, err := tx.ActiveGrants(ctx, now, store.Page{AfterTime: now.Add(time.Minute), AfterID: "r1", Limit: 100})
			return err
		}, ordered: true},
		// Tokens of revoked grants are not read: they stay unexpired for
		// up to max_ttl, however many grants were revoked meanwhile.
		{name: "TokensOutstanding", fn: func(ctx context.Context, tx store.Tx) error {
			_, err := tx.TokensOutstanding(ctx, now, store.Page{Limit: 100})
			return err
		}, ordered: true, uses: "tokens_live"},
		{name: "TokensOutstanding/page", fn: func(ctx context.Context, tx store.Tx) error {
			_, err := tx.TokensOutstanding(ctx, now, store.Page{AfterTime: now.Add(time.Minute), AfterID: "j1", Limit: 100})
			return err
		}, ordered: true, uses: "tokens_live"},
		{name: "LastUse", fn: func(ctx context.Context, tx store.Tx) error { _, err := tx.LastUse(ctx, "prod-db", false); return err }},
		{name: "Counts", fn: func(ctx context.Context, tx store.Tx) error { _, err := tx.Counts(ctx, now); return err }},
		{name: "OutboxSummary", fn: func(ctx context.Context, tx store.Tx) error { _, err := tx.OutboxSummary(ctx); return err }},
		{name: "DeadLetters", fn: func(ctx context.Context, tx store.Tx) error { _, err := tx.DeadLetters(ctx, 100); return err },
			scans: []string{"outbox_dead"}, ordered: true},
		// By the primary key. The acknowledgement may also walk the
		// partial index of dead rows, which holds dead letters only: those
		// nobody acknowledged, and those acknowledged within the retention.
		{name: "DeadLetter", fn: func(ctx context.Context, tx store.Tx) error { _, err := tx.DeadLetter(ctx, "e1", "soc"); return err }},
		{name: "AckDeadLetter", fn: func(ctx context.Context, tx store.Tx) error {
			if err := tx.AckDeadLetter(ctx, "e1", "soc", now); err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
			return nil
		}, scans: []string{"outbox_dead"}},
		{name: "ClaimOutbox", fn: func(ctx context.Context, tx store.Tx) error {
			_, err := tx.ClaimOutbox(ctx, now, time.Minute, 10)
			return err
		}},
		{name: "PruneOutbox", fn: func(ctx context.Context, tx store.Tx) error { _, err := tx.PruneOutbox(ctx, now, 500); return err }},
		{name: "UnsignedCount", fn: func(ctx context.Context, tx store.Tx) error { _, err := tx.UnsignedCount(ctx); return err },
			scans: []string{"entries_unsigned"}},
		{name: "Unsigned", fn: func(ctx context.Context, tx store.Tx) error { _, err := tx.Unsigned(ctx, 64); return err },
			scans: []string{"entries_unsigned"}},
		// The newest entry: one step back from the end of the rowid order.
		{name: "Head", fn: func(ctx context.Context, tx store.Tx) error { _, err := tx.Head(ctx); return err }, scans: []string{"<rowid>"}},
		// Runs at every open: the ends of the log and of the tree, never
		// the whole tree (a COUNT(*) there read two rows per entry).
		{name: "BackfillTree", fn: func(ctx context.Context, tx store.Tx) error { return tx.(*sqlstore.Tx).BackfillTree(ctx) },
			scans: []string{"entries:<rowid>"}},
		{name: "LastOfType", fn: func(ctx context.Context, tx store.Tx) error {
			_, err := tx.LastOfType(ctx, audit.TypePolicyLoaded)
			if err != nil && err != store.ErrNotFound { //nolint:errorlint // the store's own sentinel, unwrapped
				return err
			}
			return nil
		}},
		{name: "LastOfTypeAt", fn: func(ctx context.Context, tx store.Tx) error {
			_, _, err := tx.LastOfTypeAt(ctx, audit.TypePolicyLoaded)
			if err != nil && err != store.ErrNotFound { //nolint:errorlint // the store's own sentinel, unwrapped
				return err
			}
			return nil
		}},
		// Only the columns that change are written, by the primary key.
		{name: "SaveRequest", fn: func(ctx context.Context, tx store.Tx) error {
			r, err := tx.Request(ctx, "r1")
			if err != nil {
				return err
			}
			r.Issued++
			return tx.SaveRequest(ctx, r)
		}},
		{name: "LastTokenExpiry", fn: func(ctx context.Context, tx store.Tx) error { _, err := tx.LastTokenExpiry(ctx, "k"); return err }},
		{name: "PostReviewsOpen", fn: func(ctx context.Context, tx store.Tx) error { _, err := tx.PostReviews(ctx, true); return err },
			scans: []string{"post_reviews_open"}},
		// PostgreSQL may walk the partial index of pending passkeys, which
		// holds open enrolments only.
		{name: "PendingPasskey", fn: func(ctx context.Context, tx store.Tx) error { _, err := tx.PendingPasskey(ctx, "h1"); return err },
			scans: []string{"passkeys_pending_expiry"}},
		{name: "Passkey", fn: func(ctx context.Context, tx store.Tx) error { _, err := tx.Passkey(ctx, []byte("c1")); return err }},
		{name: "PasskeysOf", fn: func(ctx context.Context, tx store.Tx) error { _, err := tx.PasskeysOf(ctx, "bob", 20); return err }, ordered: true},
		{name: "PruneExpiredPasskeys", fn: func(ctx context.Context, tx store.Tx) error {
			_, err := tx.PruneExpiredPasskeys(ctx, now, 100)
			return err
		},
			scans: []string{"passkeys_pending_expiry"}, ordered: true},
		{name: "PolicyProposal", fn: func(ctx context.Context, tx store.Tx) error { _, err := tx.PolicyProposal(ctx, "p2"); return err }},
		{name: "ProposalReviews", fn: func(ctx context.Context, tx store.Tx) error { _, err := tx.ProposalReviews(ctx, "p2"); return err }, ordered: true},
		{name: "PendingProposals", fn: func(ctx context.Context, tx store.Tx) error { _, err := tx.PendingProposals(ctx, 16); return err },
			scans: []string{"policy_proposals_pending"}, ordered: true, uses: "policy_proposals_pending"},
		{name: "DueProposals", fn: func(ctx context.Context, tx store.Tx) error { _, err := tx.DueProposals(ctx, now, 16); return err },
			scans: []string{"policy_proposals_pending_expiry"}, ordered: true, uses: "policy_proposals_pending_expiry"},
		{name: "ClosePolicyProposal", fn: func(ctx context.Context, tx store.Tx) error {
			c := proposal("p2", t0)
			c.State, c.ClosedAt = store.ProposalStale, now
			return tx.ClosePolicyProposal(ctx, c)
		}},
	}
	// Every ListRequests filter, and the pairs the API can combine, with a
	// page token: each is one index range in page order.
	before := store.Filter{BeforeTime: t0.Add(30 * time.Minute), BeforeID: "zz"}
	for _, f := range []struct {
		name string
		f    store.Filter
	}{
		{"all", store.Filter{}},
		{"state", store.Filter{States: []request.State{request.Denied}}},
		{"expired", store.Filter{States: []request.State{request.Expired, request.Pending, request.Approved}}},
		{"account", store.Filter{Account: "prod-db"}},
		{"account+state", store.Filter{Account: "prod-db", States: []request.State{request.Denied}}},
		{"requester", store.Filter{Requester: "alice"}},
		{"requester+state", store.Filter{Requester: "alice", States: []request.State{request.Expired}}},
		{"requester+account", store.Filter{Requester: "alice", Account: "prod-db"}},
		{"accounts", store.Filter{Accounts: []string{"prod-db", "other"}}},
	} {
		for _, paged := range []bool{false, true} {
			ff := f.f
			name := "Requests/" + f.name
			if paged {
				ff.BeforeTime, ff.BeforeID = before.BeforeTime, before.BeforeID
				name += "/page"
			}
			ff.Limit = 50
			cases = append(cases, planCase{name: name, fn: func(ctx context.Context, tx store.Tx) error {
				_, err := tx.Requests(ctx, ff)
				return err
			}, scans: []string{"requests_newest"}, ordered: true})
		}
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			plans, err := ex.Explain(ctx, func(tx store.Tx) error { return tc.fn(ctx, tx) })
			if err != nil {
				t.Fatal(err)
			}
			if len(plans) == 0 {
				t.Fatal("no statement recorded")
			}
			for _, p := range plans {
				if bad := badPlan(p, tc); bad != "" {
					t.Errorf("%s\nquery: %s\nplan:\n  %s", bad, oneLine(p.Query), strings.Join(p.Lines, "\n  "))
				} else if os.Getenv("STORETEST_PLANS") != "" {
					t.Logf("query: %s\nplan:\n  %s", oneLine(p.Query), strings.Join(p.Lines, "\n  "))
				}
			}
		})
	}
}

func badPlan(p sqlstore.Plan, tc planCase) string {
	allowed := func(table, idx string) bool {
		for _, a := range tc.scans {
			if a == idx || a == table+":"+idx {
				return true
			}
		}
		return false
	}
	if tc.uses != "" && !strings.Contains(strings.Join(p.Lines, "\n"), tc.uses) {
		return "does not read the index " + tc.uses
	}
	for i, l := range p.Lines {
		if m := sqliteScan.FindStringSubmatch(l); len(m) == 3 && isHistory(m[1]) && !allowed(m[1], or(m[2], "<rowid>")) {
			return fmt.Sprintf("scans %s (%s)", m[1], l)
		}
		if m := pgSeqScan.FindStringSubmatch(l); len(m) == 2 && isHistory(m[1]) {
			return fmt.Sprintf("scans %s (%s)", m[1], l)
		}
		if m := pgIndexScan.FindStringSubmatch(l); len(m) == 3 && isHistory(m[2]) && !allowed(m[2], m[1]) && !pgBounded(p.Lines, i) {
			return fmt.Sprintf("walks all of %s (%s)", m[2], l)
		}
		if tc.ordered && strings.Contains(p.Query, "LIMIT") && (strings.Contains(l, "USE TEMP B-TREE FOR ORDER BY") || strings.HasPrefix(strings.TrimLeft(l, "-> "), "Sort ")) {
			return "sorts instead of reading an index in order (" + l + ")"
		}
	}
	return ""
}

// pgBounded reports whether the index scan on line i of a PostgreSQL plan
// reads a range, not the whole index: an Index Cond among its details (the
// lines up to the next node), or a Limit before it in the plan to stop it.
// The plan's lines come without their indentation, so a Limit anywhere
// above counts: loose, but a statement without either is a full walk.
func pgBounded(lines []string, i int) bool {
	for _, l := range lines[i+1:] {
		if strings.HasPrefix(l, "->") || strings.HasPrefix(l, "InitPlan") || strings.HasPrefix(l, "SubPlan") {
			break
		}
		if strings.HasPrefix(l, "Index Cond:") {
			return true
		}
	}
	for _, l := range lines[:i] {
		if strings.HasPrefix(strings.TrimLeft(l, "-> "), "Limit") {
			return true
		}
	}
	return false
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func isHistory(table string) bool {
	for _, h := range historyTables {
		if h == table {
			return true
		}
	}
	return false
}

func oneLine(q string) string { return strings.Join(strings.Fields(q), " ") }

// seedPlans writes a little of everything, so that plans are asked of
// tables that hold rows.
func seedPlans(t *testing.T, s store.Store) {
	ctx := context.Background()
	err := s.Update(ctx, func(tx store.Tx) error {
		for i, st := range []request.State{request.Pending, request.Approved, request.Denied, request.Expired} {
			r := newRequest(fmt.Sprintf("r%d", i), t0.Add(time.Duration(i)*time.Minute))
			r.State = st
			if st == request.Approved {
				r.ApprovedAt, r.GrantExpiresAt, r.ActivationDeadline, r.Issued, r.FirstIssuedAt = t0, t0.Add(2*time.Hour), t0.Add(time.Hour), 1, t0
			}
			if err := tx.CreateRequest(ctx, r); err != nil {
				return err
			}
			if err := tx.AddReview(ctx, r.ID, request.Review{Reviewer: "bob", Decision: request.Approve, At: t0, LeafHash: []byte{1}}); err != nil {
				return err
			}
		}
		if err := tx.AddToken(ctx, &store.TokenRecord{JTI: "j1", RequestID: "r1", Account: "prod-db", Subject: "alice", Audience: "db", KID: "k",
			IssuedAt: t0, ExpiresAt: t0.Add(2 * time.Hour), TokenSHA256: "x"}); err != nil {
			return err
		}
		if err := tx.Enqueue(ctx, []store.OutboxItem{{EventID: "e1", Sink: "soc", Type: "t", Account: "prod-db", RequestID: "r1", Body: []byte("{}"), CreatedAt: t0}}); err != nil {
			return err
		}
		for i, who := range []string{"bob", "erin", "carol"} {
			p := pendingPasskey(fmt.Sprintf("c%d", i), who, fmt.Sprintf("h%d", i), t0)
			if err := tx.AddPasskey(ctx, p); err != nil {
				return err
			}
		}
		for i := range 3 {
			p := proposal(fmt.Sprintf("p%d", i), t0.Add(time.Duration(i)*time.Minute))
			if err := tx.AddPolicyProposal(ctx, p); err != nil {
				return err
			}
			if i < 2 { // history: closed proposals stay
				p.State, p.ClosedAt = store.ProposalExpired, t0.Add(time.Hour)
				if err := tx.ClosePolicyProposal(ctx, p); err != nil {
					return err
				}
			}
			if err := tx.AddProposalReview(ctx, store.ProposalReview{Proposal: p.ID, Reviewer: "bob", Key: "k", Decision: "approve", At: t0,
				Statement: []byte("s"), Signature: []byte("s"), Cert: []byte("c")}); err != nil {
				return err
			}
		}
		_, err := appendEntry(ctx, tx, t0, audit.TypeGrantRevoked)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}
