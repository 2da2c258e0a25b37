// Package storetest is the conformance suite every store implementation
// runs: the same behaviours, the same errors, on every engine.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/server/request"
	"github.com/bgbroker/breakglass/server/store"
)

// Factory returns a new, empty store, and a function that opens another
// handle on the same database, as a second broker process would; the suite
// closes both.
type Factory func(t *testing.T) (s store.Store, another func() store.Store)

// Run runs the whole suite.
func Run(t *testing.T, newStore Factory) {
	t.Run("TwoProcessesShareOneLog", func(t *testing.T) {
		s, another := newStore(t)
		t.Cleanup(func() { _ = s.Close() })
		o := another()
		t.Cleanup(func() { _ = o.Close() })
		testTwoHandles(t, s, o)
	})
	t.Run("OutboxWorkIsSharedNotDoubled", func(t *testing.T) {
		s, another := newStore(t)
		t.Cleanup(func() { _ = s.Close() })
		o := another()
		t.Cleanup(func() { _ = o.Close() })
		testOutboxTwoHandles(t, s, o)
	})
	t.Run("OutboxPruningKeepsWhatIsNotDelivered", func(t *testing.T) {
		s, another := newStore(t)
		t.Cleanup(func() { _ = s.Close() })
		testOutboxPrune(t, s, another)
	})
	tests := []struct {
		name string
		fn   func(*testing.T, store.Store)
	}{
		{"AppendIsDenseAndChained", testAppend},
		{"SignaturesAreAddedOnce", testSignatures},
		{"RollbackKeepsNothing", testRollback},
		{"RequestsRoundTrip", testRequests},
		{"OneReviewPerPrincipal", testReviews},
		{"StaleSaveIsRefused", testStaleSave},
		{"FilterAndPage", testFilter},
		{"DueForExpiry", testDueForExpiry},
		{"Tokens", testTokens},
		{"TokensOutstandingAreLiveOnly", testTokensOutstanding},
		{"Certificates", testCertificates},
		{"ConcurrentWritersNeverFork", testConcurrentAppends},
		{"EachWriterGetsItsOwnOutcome", testWriterOutcomes},
		{"IdempotentCalls", testIdempotent},
		{"Counts", testCounts},
		{"ManyReadersAtOnce", testManyReaders},
		{"MerkleTreeAndProofs", testTree},
		{"Checkpoints", testCheckpoints},
		{"Cosignatures", testCosignatures},
		{"ApprovedEntry", testApprovedEntry},
		{"ActiveKey", testActiveKey},
		{"WitnessedAcrossPages", testWitnessedPages},
		{"Passkeys", testPasskeys},
		{"PolicyProposals", testProposals},
		{"QueryPlansUseIndexes", testQueryPlans},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := newStore(t)
			t.Cleanup(func() { _ = s.Close() })
			tc.fn(t, s)
		})
	}
}

var t0 = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

// appendEntry appends an entry built from the head, as the broker does.
func appendEntry(ctx context.Context, tx store.Tx, now time.Time, typ audit.Type) (audit.Record, error) {
	head, err := tx.Head(ctx)
	if err != nil {
		return audit.Record{}, err
	}
	rec, err := audit.Build(head, now, audit.Draft{Type: typ, Actor: "tester", Payload: map[string]int{"n": int(head.Size)}})
	if err != nil {
		return audit.Record{}, err
	}
	rec.Signature, rec.KeyID = []byte("sig"), "kid"
	return rec, tx.Append(ctx, rec)
}

func testAppend(t *testing.T, s store.Store) {
	ctx := context.Background()
	var recs []audit.Record
	for i := range 5 {
		err := s.Update(ctx, func(tx store.Tx) error {
			r, err := appendEntry(ctx, tx, t0.Add(time.Duration(i)*time.Second), audit.TypeRequestCreated)
			recs = append(recs, r)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	err := s.View(ctx, func(r store.Reader) error {
		head, err := r.Head(ctx)
		if err != nil {
			return err
		}
		if head.Size != 5 || string(head.LeafHash) != string(recs[4].LeafHash) {
			return fmt.Errorf("head = %+v", head)
		}
		got, err := r.Entries(ctx, 1, 4)
		if err != nil {
			return err
		}
		if len(got) != 3 || got[0].Index != 1 || got[2].Index != 3 {
			return fmt.Errorf("entries [1,4) = %d records", len(got))
		}
		for i, g := range got {
			want := recs[i+1]
			if string(g.Bytes) != string(want.Bytes) || string(g.LeafHash) != string(want.LeafHash) || !g.Time.Equal(want.Time) || g.Type != want.Type {
				return fmt.Errorf("entry %d stored as %+v", g.Index, g)
			}
			e, err := audit.Parse(g.Bytes)
			if err != nil {
				return err
			}
			if want := fmt.Sprintf("%x", recs[i].LeafHash); e.Prev != want {
				return fmt.Errorf("entry %d prev %s, want %s", g.Index, e.Prev, want)
			}
		}
		last, err := r.LastOfType(ctx, audit.TypeRequestCreated)
		if err != nil || last.Index != 4 {
			return fmt.Errorf("LastOfType = %d, %w", last.Index, err)
		}
		if _, err := r.LastOfType(ctx, audit.TypePolicyLoaded); !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("LastOfType(absent) = %w", err)
		}
		if idx, at, err := r.LastOfTypeAt(ctx, audit.TypeRequestCreated); err != nil || idx != 4 || !at.Equal(last.Time) {
			return fmt.Errorf("LastOfTypeAt = %d, %s, %w; the entry is at %s", idx, at, err, last.Time)
		}
		if _, _, err := r.LastOfTypeAt(ctx, audit.TypePolicyLoaded); !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("LastOfTypeAt(absent) = %w", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// An entry out of sequence is refused: no gap, no overwrite.
	for _, idx := range []uint64{3, 7} {
		err := s.Update(ctx, func(tx store.Tx) error {
			rec := recs[0]
			rec.Index = idx
			return tx.Append(ctx, rec)
		})
		if err == nil {
			t.Errorf("append at index %d succeeded", idx)
		}
	}
}

func testSignatures(t *testing.T, s store.Store) {
	ctx := context.Background()
	err := s.Update(ctx, func(tx store.Tx) error {
		for i := range 3 {
			head, _ := tx.Head(ctx)
			rec, err := audit.Build(head, t0, audit.Draft{Type: audit.TypeGrantRevoked, Actor: "a", Payload: i})
			if err != nil {
				return err
			}
			if i == 1 {
				rec.Signature, rec.KeyID = []byte("signed"), "k"
			}
			if err := tx.Append(ctx, rec); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var unsigned []audit.Record
	_ = s.View(ctx, func(r store.Reader) error {
		unsigned, err = r.Unsigned(ctx, 10)
		return err
	})
	if len(unsigned) != 2 || unsigned[0].Index != 0 || unsigned[1].Index != 2 || unsigned[0].Signature != nil {
		t.Fatalf("unsigned = %+v", unsigned)
	}
	if err := s.Update(ctx, func(tx store.Tx) error { return tx.SetSignature(ctx, 0, []byte("late"), "k2") }); err != nil {
		t.Fatal(err)
	}
	if err := s.Update(ctx, func(tx store.Tx) error { return tx.SetSignature(ctx, 0, []byte("again"), "k3") }); !errors.Is(err, store.ErrConflict) {
		t.Errorf("second signature: %v", err)
	}
	if err := s.Update(ctx, func(tx store.Tx) error { return tx.SetSignature(ctx, 1, []byte("again"), "k3") }); !errors.Is(err, store.ErrConflict) {
		t.Errorf("re-signing a signed entry: %v", err)
	}
	_ = s.View(ctx, func(r store.Reader) error {
		n, err := r.UnsignedCount(ctx)
		if err != nil || n != 1 {
			t.Errorf("UnsignedCount = %d, %v", n, err)
		}
		es, _ := r.Entries(ctx, 0, 1)
		if string(es[0].Signature) != "late" || es[0].KeyID != "k2" {
			t.Errorf("entry 0 = %+v", es[0])
		}
		return nil
	})
}

func newRequest(id string, created time.Time) *request.Request {
	return &request.Request{
		ID: id, Account: "prod-db", Requester: "alice", Justification: "disk full on primary", Ticket: "INC-1",
		TTL: time.Hour, State: request.Pending, CreatedAt: created, ApprovalDeadline: created.Add(30 * time.Minute),
		Rule:          policy.Rule{{{Group: "db", Approvals: 1}, {Group: "sec", Approvals: 1}}},
		DenyThreshold: 1, MaxIssuances: 3, PolicyHash: "abc", ActivationWindow: 10 * time.Minute,
		CreatedEntry: 0, CreatedLeaf: []byte{1, 2, 3},
	}
}

func testRollback(t *testing.T, s store.Store) {
	ctx := context.Background()
	boom := errors.New("boom")
	err := s.Update(ctx, func(tx store.Tx) error {
		if err := tx.CreateRequest(ctx, newRequest("r1", t0)); err != nil {
			return err
		}
		if _, err := appendEntry(ctx, tx, t0, audit.TypeRequestCreated); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update = %v", err)
	}
	_ = s.View(ctx, func(r store.Reader) error {
		if _, err := r.Request(ctx, "r1"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("request survived rollback: %v", err)
		}
		if h, _ := r.Head(ctx); h.Size != 0 {
			t.Errorf("entry survived rollback: %+v", h)
		}
		return nil
	})
}

func testRequests(t *testing.T, s store.Store) {
	ctx := context.Background()
	r := newRequest("r1", t0)
	r.Drill = true
	if err := s.Update(ctx, func(tx store.Tx) error { return tx.CreateRequest(ctx, r) }); err != nil {
		t.Fatal(err)
	}
	if err := s.Update(ctx, func(tx store.Tx) error { return tx.CreateRequest(ctx, newRequest("r1", t0)) }); !errors.Is(err, store.ErrConflict) {
		t.Errorf("duplicate id: %v", err)
	}
	err := s.Update(ctx, func(tx store.Tx) error {
		got, err := tx.Request(ctx, "r1")
		if err != nil {
			return err
		}
		got.State = request.Approved
		got.ApprovedAt = t0.Add(time.Minute)
		got.GrantExpiresAt = t0.Add(61 * time.Minute)
		got.ActivationDeadline = t0.Add(11 * time.Minute)
		got.Approvers = []string{"bob", "erin"}
		return tx.SaveRequest(ctx, got)
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = s.View(ctx, func(rd store.Reader) error {
		got, err := rd.Request(ctx, "r1")
		if err != nil {
			t.Fatal(err)
		}
		if got.State != request.Approved || !got.ApprovedAt.Equal(t0.Add(time.Minute)) || len(got.Approvers) != 2 || !got.Drill ||
			got.Version != 2 || got.TTL != time.Hour || got.Rule.String() != r.Rule.String() || !got.CreatedAt.Equal(t0) ||
			got.Justification != r.Justification || got.Ticket != "INC-1" || got.ActivationWindow != 10*time.Minute {
			t.Errorf("round trip: %+v", got)
		}
		if _, err := rd.Request(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("missing request: %v", err)
		}
		return nil
	})
}

func testReviews(t *testing.T, s store.Store) {
	ctx := context.Background()
	if err := s.Update(ctx, func(tx store.Tx) error { return tx.CreateRequest(ctx, newRequest("r1", t0)) }); err != nil {
		t.Fatal(err)
	}
	add := func(who string, d request.Decision, idx uint64) error {
		return s.Update(ctx, func(tx store.Tx) error {
			return tx.AddReview(ctx, "r1", request.Review{Reviewer: who, Decision: d, Comment: "ok", At: t0, EntryIndex: idx, LeafHash: []byte{byte(idx)}})
		})
	}
	if err := add("bob", request.Approve, 1); err != nil {
		t.Fatal(err)
	}
	if err := add("erin", request.Deny, 2); err != nil {
		t.Fatal(err)
	}
	if err := add("bob", request.Deny, 3); !errors.Is(err, store.ErrConflict) {
		t.Errorf("second review by bob: %v", err)
	}
	_ = s.View(ctx, func(r store.Reader) error {
		got, _ := r.Request(ctx, "r1")
		if len(got.Reviews) != 2 || got.Reviews[0].Reviewer != "bob" || got.Reviews[0].Decision != request.Approve || got.Reviews[1].Decision != request.Deny {
			t.Errorf("reviews = %+v", got.Reviews)
		}
		return nil
	})
}

func testStaleSave(t *testing.T, s store.Store) {
	ctx := context.Background()
	if err := s.Update(ctx, func(tx store.Tx) error { return tx.CreateRequest(ctx, newRequest("r1", t0)) }); err != nil {
		t.Fatal(err)
	}
	var stale *request.Request
	_ = s.View(ctx, func(r store.Reader) error { stale, _ = r.Request(ctx, "r1"); return nil })
	if err := s.Update(ctx, func(tx store.Tx) error {
		fresh, _ := tx.Request(ctx, "r1")
		fresh.State = request.Cancelled
		return tx.SaveRequest(ctx, fresh)
	}); err != nil {
		t.Fatal(err)
	}
	stale.State = request.Approved
	if err := s.Update(ctx, func(tx store.Tx) error { return tx.SaveRequest(ctx, stale) }); !errors.Is(err, store.ErrConflict) {
		t.Errorf("stale save: %v", err)
	}
}

func testFilter(t *testing.T, s store.Store) {
	ctx := context.Background()
	err := s.Update(ctx, func(tx store.Tx) error {
		for i := range 7 {
			r := newRequest(fmt.Sprintf("r%d", i), t0.Add(time.Duration(i)*time.Minute))
			if i%2 == 1 {
				r.Account, r.Requester = "other", "frank"
			}
			if i == 6 {
				r.State = request.Cancelled
			}
			if err := tx.CreateRequest(ctx, r); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	ids := func(f store.Filter) []string {
		var out []string
		_ = s.View(ctx, func(r store.Reader) error {
			rs, err := r.Requests(ctx, f)
			if err != nil {
				t.Fatal(err)
			}
			for _, x := range rs {
				out = append(out, x.ID)
			}
			return nil
		})
		return out
	}
	check := func(name string, got []string, want ...string) {
		t.Helper()
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: got %v, want %v", name, got, want)
		}
	}
	check("all newest first", ids(store.Filter{}), "r6", "r5", "r4", "r3", "r2", "r1", "r0")
	check("account", ids(store.Filter{Account: "other"}), "r5", "r3", "r1")
	check("accounts", ids(store.Filter{Accounts: []string{"other", "nope"}}), "r5", "r3", "r1")
	check("requester", ids(store.Filter{Requester: "alice"}), "r6", "r4", "r2", "r0")
	check("state", ids(store.Filter{States: []request.State{request.Cancelled}}), "r6")
	check("limit", ids(store.Filter{Limit: 2}), "r6", "r5")
	check("page", ids(store.Filter{Limit: 2, BeforeTime: t0.Add(5 * time.Minute), BeforeID: "r5"}), "r4", "r3")
	// Hostile strings are data, not SQL.
	check("metacharacters", ids(store.Filter{Account: "x' OR '1'='1"}))
}

func testDueForExpiry(t *testing.T, s store.Store) {
	ctx := context.Background()
	err := s.Update(ctx, func(tx store.Tx) error {
		pending := newRequest("pending", t0) // deadline t0+30m
		approvedIdle := newRequest("idle", t0)
		approvedIdle.State = request.Approved
		approvedIdle.ApprovedAt, approvedIdle.ActivationDeadline, approvedIdle.GrantExpiresAt = t0, t0.Add(10*time.Minute), t0.Add(time.Hour)
		approvedUsed := newRequest("used", t0)
		approvedUsed.State = request.Approved
		approvedUsed.Issued = 1
		approvedUsed.ApprovedAt, approvedUsed.ActivationDeadline, approvedUsed.GrantExpiresAt = t0, t0.Add(10*time.Minute), t0.Add(time.Hour)
		done := newRequest("done", t0)
		done.State = request.Denied
		for _, r := range []*request.Request{pending, approvedIdle, approvedUsed, done} {
			if err := tx.CreateRequest(ctx, r); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	due := func(at time.Time) []string {
		var out []string
		_ = s.View(ctx, func(r store.Reader) error {
			rs, err := r.DueForExpiry(ctx, at, 10)
			if err != nil {
				t.Fatal(err)
			}
			for _, x := range rs {
				out = append(out, x.ID)
			}
			return nil
		})
		return out
	}
	if got := due(t0.Add(5 * time.Minute)); len(got) != 0 {
		t.Errorf("at +5m: %v", got)
	}
	if got := fmt.Sprint(due(t0.Add(10 * time.Minute))); got != "[idle]" {
		t.Errorf("at +10m: %v", got)
	}
	if got := len(due(t0.Add(30 * time.Minute))); got != 2 {
		t.Errorf("at +30m: %d due", got)
	}
	if got := len(due(t0.Add(time.Hour))); got != 3 {
		t.Errorf("at +1h: %d due", got)
	}
}

func testTokens(t *testing.T, s store.Store) {
	ctx := context.Background()
	tk := &store.TokenRecord{JTI: "j1", RequestID: "r1", Account: "prod-db", Subject: "alice", Audience: "db", KID: "k",
		IssuedAt: t0, ExpiresAt: t0.Add(time.Hour), TokenSHA256: "ff", Drill: true, EntryIndex: 9}
	err := s.Update(ctx, func(tx store.Tx) error {
		if err := tx.CreateRequest(ctx, newRequest("r1", t0)); err != nil {
			return err
		}
		return tx.AddToken(ctx, tk)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Update(ctx, func(tx store.Tx) error { return tx.AddToken(ctx, tk) }); !errors.Is(err, store.ErrConflict) {
		t.Errorf("duplicate jti: %v", err)
	}
	_ = s.View(ctx, func(r store.Reader) error {
		got, err := r.Token(ctx, "j1")
		if err != nil || *got != *tk {
			t.Errorf("token = %+v, %v", got, err)
		}
		if _, err := r.Token(ctx, "j2"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("missing token: %v", err)
		}
		return nil
	})
}

// Outstanding tokens are the unexpired tokens of grants not revoked, in
// expiry order across pages; revoking a grant takes its tokens out at once,
// in the transaction that revokes it.
func testTokensOutstanding(t *testing.T, s store.Store) {
	ctx := context.Background()
	now := t0.Add(10 * time.Minute)
	err := s.Update(ctx, func(tx store.Tx) error {
		for i := range 3 {
			r := newRequest(fmt.Sprintf("g%d", i), t0)
			r.State, r.ApprovedAt, r.GrantExpiresAt, r.Issued = request.Approved, t0, t0.Add(time.Hour), 2
			if err := tx.CreateRequest(ctx, r); err != nil {
				return err
			}
			// One token long expired, two live.
			for j, exp := range []time.Duration{time.Minute, 30 * time.Minute, time.Hour} {
				if err := tx.AddToken(ctx, &store.TokenRecord{JTI: fmt.Sprintf("j%d%d", i, j), RequestID: r.ID, Account: "prod-db", Subject: "alice",
					Audience: "db", KID: "k", IssuedAt: t0, ExpiresAt: t0.Add(exp + time.Duration(i)*time.Second), TokenSHA256: "ff"}); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	outstanding := func(limit int) []string {
		t.Helper()
		var jtis []string
		_ = s.View(ctx, func(r store.Reader) error {
			for pg := (store.Page{Limit: limit}); ; {
				ts, err := r.TokensOutstanding(ctx, now, pg)
				if err != nil {
					t.Fatal(err)
				}
				for _, tk := range ts {
					jtis = append(jtis, tk.JTI)
				}
				if len(ts) < limit {
					return nil
				}
				pg.AfterTime, pg.AfterID = ts[len(ts)-1].ExpiresAt, ts[len(ts)-1].JTI
			}
		})
		return jtis
	}
	if got, want := strings.Join(outstanding(2), ","), "j01,j11,j21,j02,j12,j22"; got != want {
		t.Fatalf("outstanding tokens %s, want %s", got, want)
	}
	revoke := func(id string, fail error) error {
		return s.Update(ctx, func(tx store.Tx) error {
			r, err := tx.Request(ctx, id)
			if err != nil {
				return err
			}
			r.State, r.FinalAt = request.Revoked, now
			if err := tx.SaveRequest(ctx, r); err != nil {
				return err
			}
			return fail
		})
	}
	boom := errors.New("boom")
	if err := revoke("g1", boom); !errors.Is(err, boom) {
		t.Fatal(err)
	}
	if got, want := strings.Join(outstanding(100), ","), "j01,j11,j21,j02,j12,j22"; got != want {
		t.Fatalf("after a revocation rolled back: %s, want %s", got, want)
	}
	if err := revoke("g1", nil); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(outstanding(1), ","), "j01,j21,j02,j22"; got != want {
		t.Fatalf("after revoking g1: %s, want %s", got, want)
	}
}

// Many writers at once: the log stays dense and every entry links to the
// one before it.
func testConcurrentAppends(t *testing.T, s store.Store) {
	ctx := context.Background()
	const writers, each = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				err := s.Update(ctx, func(tx store.Tx) error {
					if err := tx.CreateRequest(ctx, newRequest(fmt.Sprintf("w%d-%d", w, i), t0)); err != nil {
						return err
					}
					_, err := appendEntry(ctx, tx, t0, audit.TypeRequestCreated)
					return err
				})
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	_ = s.View(ctx, func(r store.Reader) error {
		all, err := r.Entries(ctx, 0, writers*each+10)
		if err != nil {
			t.Fatal(err)
		}
		if len(all) != writers*each {
			t.Fatalf("%d entries, want %d", len(all), writers*each)
		}
		prev := audit.ZeroPrev
		for i, rec := range all {
			e, err := audit.Parse(rec.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			if rec.Index != uint64(i) || e.Index != uint64(i) || e.Prev != fmt.Sprintf("%x", prev) {
				t.Fatalf("entry %d: index %d/%d prev %s", i, rec.Index, e.Index, e.Prev)
			}
			prev = rec.LeafHash
		}
		return nil
	})
}

// Two handles on one database, as two broker replicas: writers on both at
// once never fork the log, and a read-modify-write of one request (an
// issuance against max_issuances) is never lost or doubled.
func testTwoHandles(t *testing.T, a, b store.Store) {
	ctx := context.Background()
	if err := a.Update(ctx, func(tx store.Tx) error {
		r := newRequest("shared", t0)
		r.State, r.MaxIssuances = request.Approved, 3
		return tx.CreateRequest(ctx, r)
	}); err != nil {
		t.Fatal(err)
	}
	exhausted := errors.New("exhausted")
	const perHandle, each = 4, 15
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		issued int
		fails  []error
	)
	for h, s := range []store.Store{a, b} {
		for w := range perHandle {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range each {
					err := s.Update(ctx, func(tx store.Tx) error {
						if err := tx.CreateRequest(ctx, newRequest(fmt.Sprintf("h%d-w%d-%d", h, w, i), t0)); err != nil {
							return err
						}
						if _, err := appendEntry(ctx, tx, t0, audit.TypeRequestCreated); err != nil {
							return err
						}
						if i%5 != 0 {
							return nil
						}
						r, err := tx.Request(ctx, "shared")
						if err != nil {
							return err
						}
						if r.Issued >= r.MaxIssuances {
							return exhausted
						}
						r.Issued++
						if err := tx.SaveRequest(ctx, r); err != nil {
							return err
						}
						_, err = appendEntry(ctx, tx, t0, audit.TypeTokenIssued)
						return err
					})
					mu.Lock()
					switch {
					case err == nil && i%5 == 0:
						issued++
					case err == nil, errors.Is(err, exhausted):
					default:
						fails = append(fails, err)
					}
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	for _, err := range fails {
		t.Error(err)
	}
	if issued != 3 {
		t.Errorf("%d issuances succeeded against max_issuances 3", issued)
	}
	for _, s := range []store.Store{a, b} {
		_ = s.View(ctx, func(r store.Reader) error {
			all, err := r.Entries(ctx, 0, 10000)
			if err != nil {
				t.Fatal(err)
			}
			created, tokens := 0, 0
			prev := audit.ZeroPrev
			for i, rec := range all {
				e, err := audit.Parse(rec.Bytes)
				if err != nil {
					t.Fatal(err)
				}
				if rec.Index != uint64(i) || e.Index != uint64(i) || e.Prev != fmt.Sprintf("%x", prev) {
					t.Fatalf("entry %d: index %d/%d prev %s: the log forked", i, rec.Index, e.Index, e.Prev)
				}
				prev = rec.LeafHash
				switch e.Type {
				case audit.TypeRequestCreated:
					created++
				case audit.TypeTokenIssued:
					tokens++
				}
			}
			// Writers that found the grant exhausted rolled back their
			// request and entry too.
			if tokens != 3 || created != 2*perHandle*each-(2*perHandle*each/5-3) {
				t.Errorf("%d request entries and %d token entries", created, tokens)
			}
			shared, err := r.Request(ctx, "shared")
			if err != nil || shared.Issued != 3 {
				t.Errorf("shared request issued %d (%v)", shared.Issued, err)
			}
			return nil
		})
	}
}

// Many readers at once on a fresh store, each running queries it sees for
// the first time, all finish: no pool of connections or prepared
// statements can leave them waiting on each other.
func testManyReaders(t *testing.T, s store.Store) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := s.Update(ctx, func(tx store.Tx) error {
		if err := tx.CreateRequest(ctx, newRequest("r1", t0)); err != nil {
			return err
		}
		_, err := appendEntry(ctx, tx, t0, audit.TypeRequestCreated)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- s.View(ctx, func(r store.Reader) error {
				if _, err := r.Requests(ctx, store.Filter{Account: fmt.Sprintf("a%d", i%7), Limit: 1 + i%5}); err != nil {
					return err
				}
				if _, err := r.Head(ctx); err != nil {
					return err
				}
				if _, err := r.Counts(ctx, t0); err != nil {
					return err
				}
				_, err := r.Entries(ctx, 0, 1)
				return err
			})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

func testCounts(t *testing.T, s store.Store) {
	ctx := context.Background()
	err := s.Update(ctx, func(tx store.Tx) error {
		for i, st := range []request.State{request.Pending, request.Pending, request.Approved, request.Approved, request.Denied} {
			r := newRequest(fmt.Sprintf("r%d", i), t0)
			r.State = st
			if st == request.Approved {
				r.ApprovedAt, r.GrantExpiresAt = t0, t0.Add(time.Duration(2*i-5)*time.Hour) // r2 ended, r3 running
			}
			if err := tx.CreateRequest(ctx, r); err != nil {
				return err
			}
		}
		return tx.AddToken(ctx, &store.TokenRecord{JTI: "j1", RequestID: "r3", Account: "prod-db", Subject: "alice", Audience: "a", KID: "k",
			IssuedAt: t0, ExpiresAt: t0.Add(time.Hour), TokenSHA256: "x"})
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = s.View(ctx, func(r store.Reader) error {
		c, err := r.Counts(ctx, t0.Add(time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		if c.Requests[request.Pending] != 2 || c.Requests[request.Approved] != 2 || c.Requests[request.Denied] != 1 || c.ActiveGrants != 1 || c.Tokens != 1 {
			t.Errorf("Counts = %+v", c)
		}
		return nil
	})
}

func testIdempotent(t *testing.T, s store.Store) {
	ctx := context.Background()
	c := store.IdempotentCall{Principal: "alice", Method: "create", Key: "k1", Fingerprint: "f", RequestID: "r1", EntryIndex: 7, At: t0}
	if err := s.Update(ctx, func(tx store.Tx) error { return tx.AddIdempotent(ctx, c) }); err != nil {
		t.Fatal(err)
	}
	dup := c
	dup.Fingerprint = "other"
	if err := s.Update(ctx, func(tx store.Tx) error { return tx.AddIdempotent(ctx, dup) }); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("second record with one key: %v", err)
	}
	for _, other := range []store.IdempotentCall{{Principal: "bob", Method: "create", Key: "k1"}, {Principal: "alice", Method: "review", Key: "k1"}} {
		other.At = t0.Add(time.Hour)
		if err := s.Update(ctx, func(tx store.Tx) error { return tx.AddIdempotent(ctx, other) }); err != nil {
			t.Fatalf("another principal or method with the same key: %v", err)
		}
	}
	_ = s.View(ctx, func(r store.Reader) error {
		got, err := r.Idempotent(ctx, "alice", "create", "k1")
		if err != nil || *got != c {
			t.Errorf("Idempotent = %+v, %v", got, err)
		}
		if _, err := r.Idempotent(ctx, "alice", "create", "k2"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("unknown key: %v", err)
		}
		return nil
	})
	var pruned int
	if err := s.Update(ctx, func(tx store.Tx) error {
		var err error
		pruned, err = tx.PruneIdempotent(ctx, t0.Add(time.Minute))
		return err
	}); err != nil || pruned != 1 {
		t.Fatalf("pruned %d, %v", pruned, err)
	}
}

// Two processes delivering one outbox: concurrent claims never overlap, a
// row leased by a process that died is claimed again when its lease ends,
// and the dead process's late report cannot undo the delivery.
func testOutboxTwoHandles(t *testing.T, a, b store.Store) {
	ctx := context.Background()
	var items []store.OutboxItem
	for i := range 40 {
		items = append(items, store.OutboxItem{EventID: fmt.Sprintf("e%02d", i), Sink: "soc", Type: "request.created", Body: []byte("{}"), CreatedAt: t0})
	}
	if err := a.Update(ctx, func(tx store.Tx) error { return tx.Enqueue(ctx, items) }); err != nil {
		t.Fatal(err)
	}
	claim := func(s store.Store, now time.Time) []store.OutboxItem {
		var got []store.OutboxItem
		if err := s.Update(ctx, func(tx store.Tx) error {
			var err error
			got, err = tx.ClaimOutbox(ctx, now, time.Minute, 10)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return got
	}
	// Concurrent claims from both processes are disjoint.
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		claimed = map[string]int{}
	)
	for _, s := range []store.Store{a, b, a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, it := range claim(s, t0) {
				mu.Lock()
				claimed[it.EventID]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(claimed) != 40 {
		t.Fatalf("%d rows claimed by four concurrent claims of 10", len(claimed))
	}
	for id, n := range claimed {
		if n != 1 {
			t.Fatalf("row %s claimed %d times", id, n)
		}
	}
	if got := claim(b, t0.Add(30*time.Second)); len(got) != 0 {
		t.Fatalf("%d leased rows claimed again before their lease ended", len(got))
	}
	// The claimers died; after the lease, the other process takes the rows.
	retaken := claim(b, t0.Add(2*time.Minute))
	if len(retaken) != 10 {
		t.Fatalf("%d rows retaken after the lease ended", len(retaken))
	}
	it := retaken[0]
	it.Attempts, it.State, it.DeliveredAt = 1, store.OutboxDelivered, t0.Add(2*time.Minute)
	if err := b.Update(ctx, func(tx store.Tx) error { return tx.FinishOutbox(ctx, it) }); err != nil {
		t.Fatal(err)
	}
	late := it
	late.Attempts, late.State, late.LastError, late.DeliveredAt = 1, store.OutboxPending, "timeout", time.Time{}
	if err := a.Update(ctx, func(tx store.Tx) error { return tx.FinishOutbox(ctx, late) }); err != nil {
		t.Fatal(err)
	}
	_ = a.View(ctx, func(r store.Reader) error {
		sum, err := r.OutboxSummary(ctx)
		if err != nil || len(sum) != 1 || sum[0].Delivered != 1 || sum[0].Pending != 39 {
			t.Errorf("after a late report from the dead process: %+v %v", sum, err)
		}
		return nil
	})
}

// Writers that run at the same time (and may share a commit) each get
// their own outcome: a failure, a panic or a cancelled context takes away
// only that writer's work, and every success is there afterwards.
func testWriterOutcomes(t *testing.T, s store.Store) {
	ctx := context.Background()
	const writers = 120
	boom := errors.New("boom")
	var wg sync.WaitGroup
	outcome := make([]string, writers)
	start := make(chan struct{})
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			wctx := ctx
			if w%7 == 3 {
				c, cancel := context.WithCancel(ctx)
				cancel()
				wctx = c
			}
			defer func() {
				if p := recover(); p != nil {
					outcome[w] = fmt.Sprintf("panic %v", p)
				}
			}()
			err := s.Update(wctx, func(tx store.Tx) error {
				if err := tx.CreateRequest(ctx, newRequest(fmt.Sprintf("w%d", w), t0)); err != nil {
					return err
				}
				if _, err := appendEntry(ctx, tx, t0, audit.TypeRequestCreated); err != nil {
					return err
				}
				switch w % 7 {
				case 1:
					return boom
				case 5:
					panic("writer five")
				}
				return nil
			})
			switch {
			case err == nil:
				outcome[w] = "ok"
			case errors.Is(err, boom):
				outcome[w] = "boom"
			case errors.Is(err, context.Canceled):
				outcome[w] = "cancelled"
			default:
				outcome[w] = err.Error()
			}
		}()
	}
	close(start)
	wg.Wait()
	ok := 0
	for w, o := range outcome {
		want := map[int]string{1: "boom", 3: "cancelled", 5: "panic writer five"}[w%7]
		if want == "" {
			want = "ok"
			ok++
		}
		if o != want {
			t.Errorf("writer %d: %s, want %s", w, o, want)
		}
	}
	_ = s.View(ctx, func(r store.Reader) error {
		for w := range writers {
			_, err := r.Request(ctx, fmt.Sprintf("w%d", w))
			if stored := err == nil; stored != (outcome[w] == "ok") {
				t.Errorf("writer %d (%s): stored = %v (%v)", w, outcome[w], stored, err)
			}
		}
		if h, err := r.Head(ctx); err != nil || h.Size != uint64(ok) {
			t.Errorf("log size %d (%v), want %d", h.Size, err, ok)
		}
		return nil
	})
}

// The stored tree agrees with an independent RFC 6962 implementation
// (transparency-dev/merkle): roots, inclusion and consistency proofs.
func testTree(t *testing.T, s store.Store) {
	ctx := context.Background()
	const n = 70
	var leaves [][]byte
	for i := range n {
		err := s.Update(ctx, func(tx store.Tx) error {
			r, err := appendEntry(ctx, tx, t0, audit.TypeRequestCreated)
			leaves = append(leaves, r.LeafHash)
			_ = i
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	rf := compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}
	roots := map[uint64][]byte{}
	cr := rf.NewEmptyRange(0)
	for i, l := range leaves {
		if err := cr.Append(l, nil); err != nil {
			t.Fatal(err)
		}
		root, err := cr.GetRootHash(nil)
		if err != nil {
			t.Fatal(err)
		}
		roots[uint64(i+1)] = root
	}
	_ = s.View(ctx, func(r store.Reader) error {
		for _, size := range []uint64{1, 2, 3, 7, 8, 9, 31, 32, 33, 64, 69, 70} {
			root, err := r.TreeHash(ctx, size)
			if err != nil || !bytes.Equal(root, roots[size]) {
				t.Fatalf("root at %d: %x, %v; want %x", size, root, err, roots[size])
			}
			for _, idx := range []uint64{0, size / 2, size - 1} {
				p, err := r.InclusionProof(ctx, idx, size)
				if err != nil {
					t.Fatal(err)
				}
				if err := proof.VerifyInclusion(rfc6962.DefaultHasher, idx, size, leaves[idx], p, roots[size]); err != nil {
					t.Fatalf("inclusion of %d in %d: %v", idx, size, err)
				}
			}
			for _, from := range []uint64{1, size / 3, size - 1, size} {
				if from == 0 {
					continue
				}
				p, err := r.ConsistencyProof(ctx, from, size)
				if err != nil {
					t.Fatal(err)
				}
				if err := proof.VerifyConsistency(rfc6962.DefaultHasher, from, size, p, roots[from], roots[size]); err != nil {
					t.Fatalf("consistency %d->%d: %v", from, size, err)
				}
			}
		}
		if _, err := r.TreeHash(ctx, n+1); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("root beyond the log: %v", err)
		}
		if _, err := r.InclusionProof(ctx, 5, 5); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("inclusion of an index outside the tree: %v", err)
		}
		if _, err := r.ConsistencyProof(ctx, 9, 8); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("consistency backwards: %v", err)
		}
		return nil
	})
}

func testCheckpoints(t *testing.T, s store.Store) {
	ctx := context.Background()
	_ = s.View(ctx, func(r store.Reader) error {
		if _, err := r.LatestCheckpoint(ctx); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("latest of none: %v", err)
		}
		return nil
	})
	for _, cp := range []store.Checkpoint{{Size: 3, Root: []byte("r3"), Note: []byte("n3"), CreatedAt: t0}, {Size: 10, Root: []byte("r10"), Note: []byte("n10"), CreatedAt: t0},
		{Size: 3, Root: []byte("other"), Note: []byte("other"), CreatedAt: t0}} {
		if err := s.Update(ctx, func(tx store.Tx) error { return tx.AddCheckpoint(ctx, cp) }); err != nil {
			t.Fatal(err)
		}
	}
	_ = s.View(ctx, func(r store.Reader) error {
		latest, err := r.LatestCheckpoint(ctx)
		if err != nil || latest.Size != 10 || string(latest.Note) != "n10" {
			t.Errorf("latest = %+v, %v", latest, err)
		}
		three, err := r.Checkpoint(ctx, 3)
		if err != nil || string(three.Note) != "n3" {
			t.Errorf("checkpoint 3 = %+v, %v (the first one stored must stay)", three, err)
		}
		if _, err := r.Checkpoint(ctx, 4); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("checkpoint 4: %v", err)
		}
		return nil
	})
}

func testCosignatures(t *testing.T, s store.Store) {
	ctx := context.Background()
	_ = s.View(ctx, func(r store.Reader) error {
		if _, err := r.LatestCosignature(ctx, "w1+00000001"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("latest of none: %v", err)
		}
		if got, err := r.Cosignatures(ctx, 3); err != nil || len(got) != 0 {
			t.Errorf("cosignatures of none: %v, %v", got, err)
		}
		if _, err := r.LatestWitnessed(ctx, []string{"w1+00000001"}, 1, 0); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("witnessed of none: %v", err)
		}
		return nil
	})
	add := func(size uint64, w string, at time.Time, line string) {
		t.Helper()
		c := store.Cosignature{Size: size, Witness: w, Line: line, SignedAt: at, CreatedAt: at.Add(time.Second)}
		if err := s.Update(ctx, func(tx store.Tx) error { return tx.AddCosignature(ctx, c) }); err != nil {
			t.Fatal(err)
		}
	}
	w1, w2, w3 := "witness.example/w1+0a0b0c0d", "witness.example/w2+01020304", "witness.example/w3+ffffffff"
	add(3, w1, t0, "— w1 3a\n")
	add(3, w2, t0, "— w2 3\n")
	add(10, w1, t0.Add(time.Minute), "— w1 10\n")
	add(12, w3, t0.Add(time.Minute), "— w3 12\n")
	// The same size cosigned again later replaces the line; an older one
	// arriving late does not.
	add(3, w1, t0.Add(time.Second), "— w1 3b\n")
	add(3, w1, t0.Add(-time.Second), "— w1 3old\n")
	_ = s.View(ctx, func(r store.Reader) error {
		three, err := r.Cosignatures(ctx, 3)
		if err != nil || len(three) != 2 || three[0].Witness != w1 || three[0].Line != "— w1 3b\n" || !three[0].SignedAt.Equal(t0.Add(time.Second)) || three[1].Witness != w2 {
			t.Errorf("cosignatures at 3 = %+v, %v", three, err)
		}
		l, err := r.LatestCosignature(ctx, w1)
		if err != nil || l.Size != 10 || l.Line != "— w1 10\n" || !l.CreatedAt.Equal(t0.Add(time.Minute+time.Second)) {
			t.Errorf("latest of w1 = %+v, %v", l, err)
		}
		for _, tc := range []struct {
			ws      []string
			quorum  int
			min     uint64
			want    uint64
			present bool
		}{
			{[]string{w1, w2}, 2, 0, 3, true},
			{[]string{w1, w2}, 1, 0, 10, true},
			{[]string{w1, w2, w3}, 1, 0, 12, true},
			{[]string{w1, w2}, 2, 4, 0, false},
			{[]string{w1, w3}, 2, 0, 0, false},
			{[]string{w2}, 1, 3, 3, true},
			{[]string{w1, w2}, 3, 0, 0, false},
			{nil, 1, 0, 0, false},
		} {
			got, err := r.LatestWitnessed(ctx, tc.ws, tc.quorum, tc.min)
			if tc.present && (err != nil || got != tc.want) || !tc.present && !errors.Is(err, store.ErrNotFound) {
				t.Errorf("LatestWitnessed(%v, %d, %d) = %d, %v; want %d", tc.ws, tc.quorum, tc.min, got, err, tc.want)
			}
		}
		return nil
	})
}

// testWitnessedPages: the newest witnessed checkpoint lies below pages of
// checkpoints only one witness cosigned.
func testWitnessedPages(t *testing.T, s store.Store) {
	ctx := context.Background()
	w1, w2 := "witness.example/w1+0a0b0c0d", "witness.example/w2+01020304"
	err := s.Update(ctx, func(tx store.Tx) error {
		for _, c := range []store.Cosignature{{Size: 5, Witness: w1}, {Size: 5, Witness: w2}, {Size: 6, Witness: "other+00000000"}, {Size: 6, Witness: w2}} {
			c.Line, c.SignedAt, c.CreatedAt = "— x\n", t0, t0
			if err := tx.AddCosignature(ctx, c); err != nil {
				return err
			}
		}
		for size := uint64(7); size < 7+700; size++ {
			if err := tx.AddCosignature(ctx, store.Cosignature{Size: size, Witness: w1, Line: "— x\n", SignedAt: t0, CreatedAt: t0}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = s.View(ctx, func(r store.Reader) error {
		if got, err := r.LatestWitnessed(ctx, []string{w1, w2}, 2, 0); err != nil || got != 5 {
			t.Errorf("LatestWitnessed = %d, %v; want 5", got, err)
		}
		if got, err := r.LatestWitnessed(ctx, []string{w1, w2}, 1, 0); err != nil || got != 706 {
			t.Errorf("LatestWitnessed quorum 1 = %d, %v; want 706", got, err)
		}
		if _, err := r.LatestWitnessed(ctx, []string{w1, w2}, 2, 6); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("LatestWitnessed from 6: %v", err)
		}
		return nil
	})
}

func testApprovedEntry(t *testing.T, s store.Store) {
	ctx := context.Background()
	if err := s.Update(ctx, func(tx store.Tx) error { return tx.CreateRequest(ctx, newRequest("r1", t0)) }); err != nil {
		t.Fatal(err)
	}
	load := func() *request.Request {
		var r *request.Request
		if err := s.View(ctx, func(rd store.Reader) (err error) { r, err = rd.Request(ctx, "r1"); return err }); err != nil {
			t.Fatal(err)
		}
		return r
	}
	if r := load(); r.ApprovedEntry != nil {
		t.Fatalf("a pending request has approval entry %d", *r.ApprovedEntry)
	}
	err := s.Update(ctx, func(tx store.Tx) error {
		r, err := tx.Request(ctx, "r1")
		if err != nil {
			return err
		}
		idx := uint64(1 << 40)
		r.State, r.ApprovedAt, r.ApprovedEntry = request.Approved, t0, &idx
		return tx.SaveRequest(ctx, r)
	})
	if err != nil {
		t.Fatal(err)
	}
	if r := load(); r.ApprovedEntry == nil || *r.ApprovedEntry != 1<<40 {
		t.Fatalf("approval entry = %v", r.ApprovedEntry)
	}
}

// testActiveKey: the active key of a purpose and account, the one the
// broker signs with in every write transaction, follows rotations.
func testActiveKey(t *testing.T, s store.Store) {
	ctx := context.Background()
	get := func(purpose, account string) (store.KeyRecord, error) {
		var k store.KeyRecord
		err := s.View(ctx, func(r store.Reader) error {
			var err error
			k, err = r.ActiveKey(ctx, purpose, account)
			return err
		})
		return k, err
	}
	if _, err := get("audit", ""); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("an empty registry: %v", err)
	}
	k1 := store.KeyRecord{KID: "kid-1", Purpose: "audit", Label: "audit-1", KeyID: "01", PublicPEM: "pem", State: store.KeyActive, ActivatedAt: t0}
	tk := store.KeyRecord{KID: "kid-t", Purpose: "token", Account: "prod-db", Label: "t", KeyID: "02", PublicPEM: "pem", State: store.KeyActive, ActivatedAt: t0}
	if err := s.Update(ctx, func(tx store.Tx) error {
		if err := tx.PutKey(ctx, k1); err != nil {
			return err
		}
		return tx.PutKey(ctx, tk)
	}); err != nil {
		t.Fatal(err)
	}
	if k, err := get("audit", ""); err != nil || k.KID != "kid-1" || k.Label != "audit-1" || !k.ActivatedAt.Equal(t0) {
		t.Fatalf("active audit key %+v, %v", k, err)
	}
	if _, err := get("token", ""); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the broker's token key, when only an account has one: %v", err)
	}
	if k, err := get("token", "prod-db"); err != nil || k.KID != "kid-t" {
		t.Fatalf("an account's token key %+v, %v", k, err)
	}
	// A rotation: the old key retired, the new one active, in one transaction.
	k2 := store.KeyRecord{KID: "kid-2", Purpose: "audit", Label: "audit-2", KeyID: "03", PublicPEM: "pem", State: store.KeyActive, ActivatedAt: t0.Add(time.Hour)}
	if err := s.Update(ctx, func(tx store.Tx) error {
		k1.State, k1.RetiredAt = store.KeyRetired, t0.Add(time.Hour)
		if err := tx.PutKey(ctx, k1); err != nil {
			return err
		}
		if k, err := tx.ActiveKey(ctx, "audit", ""); err != nil || k.KID != "" {
			if !errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("between the two writes: %+v, %w", k, err)
			}
		}
		return tx.PutKey(ctx, k2)
	}); err != nil {
		t.Fatal(err)
	}
	if k, err := get("audit", ""); err != nil || k.KID != "kid-2" {
		t.Fatalf("after the rotation %+v, %v", k, err)
	}
}
