package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/bgbroker/breakglass/server/request"
	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/store/sqlstore"
)

// RunScale runs the cases that hold tens of thousands of rows. Engines call
// it from a file built without the race detector (which makes the embedded
// SQLite's translated C some twenty times slower); make test runs those
// files in a pass of their own.
func RunScale(t *testing.T, newStore Factory) {
	t.Run("ManyActiveGrants", func(t *testing.T) {
		s, _ := newStore(t)
		t.Cleanup(func() { _ = s.Close() })
		testManyActiveGrants(t, s)
	})
}

// ManyActiveGrants is how many grants the scale cases hold open: more
// than SQLite's 32,766 bound variables, which one IN (…) per grant broke.
const ManyActiveGrants = 40000

// FillActiveGrants writes n approved, unexpired grants on account, each
// with one review and one token, straight into the store: three INSERT …
// SELECT statements over a counter, so that a test holds 40,000 grants in
// seconds (no audit entries: what is measured is the reads).
func FillActiveGrants(t testing.TB, s store.Store, account string, n int, now time.Time) {
	t.Helper()
	ctx := context.Background()
	rule, err := json.Marshal(newRequest("x", now).Rule)
	if err != nil {
		t.Fatal(err)
	}
	created, expires := now.Add(-time.Minute).UnixNano(), now.Add(time.Hour).UnixNano()
	counter := `WITH RECURSIVE n(i) AS (SELECT CAST(? AS BIGINT) UNION ALL SELECT i + 1 FROM n WHERE i < ?) `
	err = s.Update(ctx, func(tx store.Tx) error {
		st, ok := tx.(*sqlstore.Tx)
		if !ok {
			return fmt.Errorf("FillActiveGrants needs a SQL store, not %T", tx)
		}
		if _, err := st.Exec(ctx, counter+`INSERT INTO requests (id, account, requester, justification, ticket, ttl_ns, drill, state, created_at,
			approval_deadline, rule_json, deny_threshold, max_issuances, activation_window_ns, policy_hash, approved_at, grant_expires_at,
			activation_deadline, approvers_json, issued, first_issued_at, created_entry, created_leaf)
			SELECT 'grant-' || i, ?, 'alice', 'fill', '', 3600000000000, 0, 'APPROVED', ?, ?, ?, 1, 3, 600000000000, 'abc', ?, ? + i * 1000000,
			?, '["bob"]', 1, ?, 0, ? FROM n`,
			0, n-1, account, created, created+int64(30*time.Minute), string(rule), created, expires, expires, created+int64(30*time.Second), []byte{1}); err != nil {
			return err
		}
		if _, err := st.Exec(ctx, counter+`INSERT INTO reviews (request_id, reviewer, decision, comment, at, entry_index, leaf_hash)
			SELECT 'grant-' || i, 'bob', 'approve', '', ?, 0, ? FROM n`, 0, n-1, created, []byte{1}); err != nil {
			return err
		}
		_, err := st.Exec(ctx, counter+`INSERT INTO tokens (jti, request_id, account, subject, audience, kid, issued_at, expires_at, token_sha256, drill, entry_index)
			SELECT 'jti-' || i, 'grant-' || i, ?, 'alice', 'db', 'k', ?, ? + i * 1000000, 'x', 0, 0 FROM n`, 0, n-1, account, created, expires)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// With 40,000 active grants, every grant and token comes back through
// bounded pages, each grant with its review, and the counts agree.
func testManyActiveGrants(t *testing.T, s store.Store) {
	ctx := context.Background()
	now := t0
	FillActiveGrants(t, s, "prod-db", ManyActiveGrants, now)
	err := s.View(ctx, func(r store.Reader) error {
		grants, tokens := 0, 0
		for pg := (store.Page{Limit: 5000}); ; {
			rs, err := r.ActiveGrants(ctx, now, pg)
			if err != nil {
				return err
			}
			for _, g := range rs {
				if len(g.Reviews) != 1 || g.Reviews[0].Reviewer != "bob" {
					return fmt.Errorf("grant %s came back with reviews %+v", g.ID, g.Reviews)
				}
			}
			grants += len(rs)
			if len(rs) < pg.Limit {
				break
			}
			pg.AfterTime, pg.AfterID = rs[len(rs)-1].GrantExpiresAt, rs[len(rs)-1].ID
		}
		for pg := (store.Page{Limit: 5000}); ; {
			ts, err := r.TokensOutstanding(ctx, now, pg)
			if err != nil {
				return err
			}
			tokens += len(ts)
			if len(ts) < pg.Limit {
				break
			}
			pg.AfterTime, pg.AfterID = ts[len(ts)-1].ExpiresAt, ts[len(ts)-1].JTI
		}
		if grants != ManyActiveGrants || tokens != ManyActiveGrants {
			return fmt.Errorf("paged %d grants and %d tokens, want %d of each", grants, tokens, ManyActiveGrants)
		}
		c, err := r.Counts(ctx, now)
		if err != nil {
			return err
		}
		if c.ActiveGrants != ManyActiveGrants || c.Requests[request.Approved] != ManyActiveGrants || c.Tokens != ManyActiveGrants {
			return fmt.Errorf("counts %+v", c)
		}
		rs, err := r.Requests(ctx, store.Filter{Account: "prod-db", States: []request.State{request.Approved}, Limit: 500})
		if err != nil || len(rs) != 500 || len(rs[0].Reviews) != 1 {
			return fmt.Errorf("listing: %d requests: %w", len(rs), err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// All of them end at once: the sweep reads them in bounded batches.
	later := now.Add(2 * time.Hour)
	_ = s.View(ctx, func(r store.Reader) error {
		due, err := r.DueForExpiry(ctx, later, 100)
		if err != nil || len(due) != 100 || len(due[0].Reviews) != 1 {
			t.Errorf("DueForExpiry with 40,000 due: %d, %v", len(due), err)
		}
		return nil
	})
}

// Pruning removes delivered rows past the retention, in batches, and only
// them: pending rows and dead letters nobody acknowledged stay, through a
// failed prune and through a reopen, as after a crash.
func testOutboxPrune(t *testing.T, s store.Store, reopen func() store.Store) {
	ctx := context.Background()
	var items []store.OutboxItem
	for i := range 30 {
		items = append(items, store.OutboxItem{EventID: fmt.Sprintf("e%02d", i), Sink: "soc", Type: "t", Account: "prod-db", RequestID: "r", Body: []byte("{}"), CreatedAt: t0})
	}
	if err := s.Update(ctx, func(tx store.Tx) error { return tx.Enqueue(ctx, items) }); err != nil {
		t.Fatal(err)
	}
	// e00-e19 delivered at t0, e20-e24 dead, e25-e29 pending.
	if err := s.Update(ctx, func(tx store.Tx) error {
		claimed, err := tx.ClaimOutbox(ctx, t0, time.Minute, 100)
		if err != nil {
			return err
		}
		for _, it := range claimed {
			var n int
			_, _ = fmt.Sscanf(it.EventID, "e%d", &n)
			switch {
			case n < 20:
				it.State, it.DeliveredAt, it.Attempts = store.OutboxDelivered, t0, 1
			case n < 25:
				it.State, it.LastError, it.Attempts = store.OutboxDead, "refused", 10
			default:
				it.State, it.NextAttempt, it.Attempts = store.OutboxPending, t0.Add(time.Hour), 1
			}
			if err := tx.FinishOutbox(ctx, it); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	summary := func(s store.Store) store.SinkSummary {
		t.Helper()
		var sum []store.SinkSummary
		if err := s.View(ctx, func(r store.Reader) error {
			var err error
			sum, err = r.OutboxSummary(ctx)
			return err
		}); err != nil || len(sum) != 1 {
			t.Fatalf("summary %+v, %v", sum, err)
		}
		return sum[0]
	}
	if got := summary(s); got.Delivered != 20 || got.Dead != 5 || got.Pending != 5 {
		t.Fatalf("before pruning: %+v", got)
	}
	// Within the retention nothing goes.
	prune := func(s store.Store, before time.Time, limit int) int {
		t.Helper()
		var n int
		if err := s.Update(ctx, func(tx store.Tx) error {
			var err error
			n, err = tx.PruneOutbox(ctx, before, limit)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := prune(s, t0, 100); n != 0 {
		t.Fatalf("pruned %d rows delivered at the cut-off itself", n)
	}
	// A prune that fails (a crash before its commit) keeps everything.
	boom := errors.New("crash")
	if err := s.Update(ctx, func(tx store.Tx) error {
		if _, err := tx.PruneOutbox(ctx, t0.Add(time.Hour), 100); err != nil {
			return err
		}
		return boom
	}); !errors.Is(err, boom) {
		t.Fatal(err)
	}
	if got := summary(s); got.Delivered != 20 {
		t.Fatalf("after a failed prune: %+v", got)
	}
	// Batches of 8: 8, 8, 4, then nothing; dead and pending untouched.
	for _, want := range []int{8, 8, 4, 0} {
		if n := prune(s, t0.Add(time.Hour), 8); n != want {
			t.Fatalf("batch pruned %d, want %d", n, want)
		}
	}
	o := reopen()
	defer o.Close()
	if got := summary(o); got.Delivered != 0 || got.Dead != 5 || got.Pending != 5 {
		t.Fatalf("after pruning, reopened: %+v", got)
	}
	_ = o.View(ctx, func(r store.Reader) error {
		dead, err := r.DeadLetters(ctx, 100)
		if err != nil || len(dead) != 5 {
			t.Errorf("dead letters after pruning: %d, %v", len(dead), err)
		}
		if rows, err := r.OutboxFor(ctx, "r", "t"); err != nil || len(rows) != 10 {
			t.Errorf("rows left: %d, %v", len(rows), err)
		}
		return nil
	})
	// An acknowledged dead letter leaves the report at once and the outbox
	// after the retention; acknowledging twice, or a pending row, is refused.
	if err := o.Update(ctx, func(tx store.Tx) error { return tx.AckDeadLetter(ctx, "e20", "soc", t0.Add(time.Minute)) }); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"e20", "e27", "nope"} {
		if err := o.Update(ctx, func(tx store.Tx) error { return tx.AckDeadLetter(ctx, id, "soc", t0) }); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("acknowledging %s: %v", id, err)
		}
	}
	_ = o.View(ctx, func(r store.Reader) error {
		if dead, _ := r.DeadLetters(ctx, 100); len(dead) != 4 {
			t.Errorf("%d unacknowledged dead letters, want 4", len(dead))
		}
		// The row itself says when, and the others say not yet.
		if it, err := r.DeadLetter(ctx, "e20", "soc"); err != nil || it.State != store.OutboxDead || !it.AckedAt.Equal(t0.Add(time.Minute)) {
			t.Errorf("acknowledged row: %+v, %v", it, err)
		}
		if it, err := r.DeadLetter(ctx, "e21", "soc"); err != nil || !it.AckedAt.IsZero() {
			t.Errorf("unacknowledged row: %+v, %v", it, err)
		}
		if it, err := r.DeadLetter(ctx, "e27", "soc"); err != nil || it.State != store.OutboxPending {
			t.Errorf("pending row: %+v, %v", it, err)
		}
		for _, k := range [][2]string{{"nope", "soc"}, {"e20", "other"}} {
			if _, err := r.DeadLetter(ctx, k[0], k[1]); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("row %v: %v", k, err)
			}
		}
		return nil
	})
	// The counters leave it out of the dead at once, and keep it apart.
	if got := summary(o); got.Dead != 4 || got.Acked != 1 || got.Pending != 5 {
		t.Fatalf("after acknowledging: %+v", got)
	}
	// An acknowledgement rolled back changes nothing.
	if err := o.Update(ctx, func(tx store.Tx) error {
		if err := tx.AckDeadLetter(ctx, "e21", "soc", t0.Add(time.Minute)); err != nil {
			return err
		}
		return boom
	}); !errors.Is(err, boom) {
		t.Fatal(err)
	}
	if got := summary(o); got.Dead != 4 || got.Acked != 1 {
		t.Fatalf("after a failed acknowledgement: %+v", got)
	}
	if n := prune(o, t0.Add(time.Minute), 100); n != 0 {
		t.Fatalf("pruned %d rows acknowledged at the cut-off", n)
	}
	if n := prune(o, t0.Add(2*time.Minute), 100); n != 1 {
		t.Fatalf("pruned %d acknowledged dead letters, want 1", n)
	}
	if got := summary(o); got.Delivered != 0 || got.Dead != 4 || got.Acked != 0 || got.Pending != 5 {
		t.Fatalf("at the end: %+v", got)
	}
	_ = o.View(ctx, func(r store.Reader) error {
		if _, err := r.DeadLetter(ctx, "e20", "soc"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("pruned dead letter still read: %v", err)
		}
		return nil
	})
}
