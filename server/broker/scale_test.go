//go:build !race

package broker_test

import (
	"testing"
	"time"

	"github.com/bgbroker/breakglass/server/broker"
	"github.com/bgbroker/breakglass/server/event"
	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/store/storetest"
)

// With 40,000 active grants (a store-level fill), the report comes in
// pages that each stay bounded and together hold every grant and token,
// and the account listing and the overdue job read no grant at all. Built without the race detector:
// make test runs it in its own pass.
func TestScaleManyActiveGrants(t *testing.T) {
	h := newGovHarness(t)
	now := h.clock.Now()
	storetest.FillActiveGrants(t, h.store, "prod-db", storetest.ManyActiveGrants, now)

	grants, tokens, pages := 0, 0, 0
	for page := (broker.ReportPage{Size: broker.MaxReportPage}); ; pages++ {
		rep, err := h.b.Report(h.ctx, "dave", page)
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.ActiveGrants) > broker.MaxReportPage || len(rep.TokensOutstanding) > broker.MaxReportPage {
			t.Fatalf("page %d holds %d grants and %d tokens", pages, len(rep.ActiveGrants), len(rep.TokensOutstanding))
		}
		if pages == 0 && len(rep.Accounts) == 0 {
			t.Fatal("the first page has no account statuses")
		}
		if pages > 0 && (rep.Accounts != nil || rep.OpenReviews != nil) {
			t.Fatal("a later page repeats the first page's sections")
		}
		grants, tokens = grants+len(rep.ActiveGrants), tokens+len(rep.TokensOutstanding)
		if rep.NextPageToken == "" {
			break
		}
		page.Token = rep.NextPageToken
	}
	if grants != storetest.ManyActiveGrants || tokens != storetest.ManyActiveGrants {
		t.Fatalf("report pages held %d grants and %d tokens, want %d of each", grants, tokens, storetest.ManyActiveGrants)
	}
	if _, err := h.b.Report(h.ctx, "dave", broker.ReportPage{Token: "not-a-token"}); broker.KindOf(err) != broker.KindInvalid {
		t.Fatalf("forged page token: %v", err)
	}

	st, err := h.b.AccountStatuses(h.ctx)
	if err != nil || !st["prod-db"].LastUse.Equal(now.Add(-30*time.Second)) {
		t.Fatalf("account statuses %+v, %v", st, err)
	}
	// One post-use review past due among them: the overdue job alerts it,
	// and the report lists it, whatever the number of grants.
	overdue := store.PostReview{ID: "pr-overdue", RequestID: "grant-7", Account: "prod-db", Requester: "alice", Excluded: []string{"alice", "bob"},
		OpenedAt: now.Add(-48 * time.Hour), DueAt: now.Add(-time.Hour)}
	if err := h.store.Update(h.ctx, func(tx store.Tx) error { return tx.AddPostReview(h.ctx, overdue) }); err != nil {
		t.Fatal(err)
	}
	if err := h.b.Overdue(h.ctx); err != nil {
		t.Fatalf("overdue job: %v", err)
	}
	if rows := h.outbox("grant-7", event.ReviewOverdue); len(rows) == 0 {
		t.Fatal("the overdue job raised no alert for the overdue review among 40,000 active grants")
	}
	rep, err := h.b.Report(h.ctx, "dave", broker.ReportPage{})
	if err != nil || len(rep.OverdueReviews) != 1 || rep.OverdueReviews[0].ID != overdue.ID {
		t.Fatalf("the report's overdue reviews: %+v, %v", rep.OverdueReviews, err)
	}

}
