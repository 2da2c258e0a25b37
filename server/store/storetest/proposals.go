package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/bgbroker/breakglass/server/store"
)

func proposal(id string, at time.Time) store.PolicyProposal {
	return store.PolicyProposal{ID: id, Proposer: "erin", ProposerKey: "sha256:ee", Comment: "raise prod-db's quorum", Source: "new.yaml",
		Previous: "aa", Hash: "bb-" + id, Policy: []byte(`{"groups":{}}`), CreatedAt: at, ExpiresAt: at.Add(72 * time.Hour), State: store.ProposalPending, Entry: 7}
}

// testProposals: a proposal is stored whole and closed once; reviews keep
// their statements and are refused a second time per principal or per
// key; pending and due proposals come from their indexes in order.
func testProposals(t *testing.T, s store.Store) {
	ctx := context.Background()
	up := func(fn func(tx store.Tx) error) error { return s.Update(ctx, fn) }
	if err := up(func(tx store.Tx) error {
		for i, id := range []string{"p1", "p2", "p3"} {
			if err := tx.AddPolicyProposal(ctx, proposal(id, t0.Add(time.Duration(i)*time.Hour))); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := up(func(tx store.Tx) error { return tx.AddPolicyProposal(ctx, proposal("p1", t0)) }); !errors.Is(err, store.ErrConflict) {
		t.Errorf("a proposal id used twice: %v", err)
	}
	closed := proposal("p9", t0)
	closed.State = store.ProposalApplied
	if err := up(func(tx store.Tx) error { return tx.AddPolicyProposal(ctx, closed) }); err == nil {
		t.Error("a proposal stored closed")
	}
	_ = s.View(ctx, func(r store.Reader) error {
		p, err := r.PolicyProposal(ctx, "p1")
		if err != nil {
			t.Fatal(err)
		}
		want := proposal("p1", t0)
		if p.ID != want.ID || p.Proposer != "erin" || p.ProposerKey != want.ProposerKey || p.Comment != want.Comment || p.Source != want.Source ||
			p.Previous != "aa" || p.Hash != want.Hash || !bytes.Equal(p.Policy, want.Policy) || !p.CreatedAt.Equal(t0) || !p.ExpiresAt.Equal(want.ExpiresAt) ||
			p.State != store.ProposalPending || !p.ClosedAt.IsZero() || p.Entry != 7 || p.ClosedEntry != 0 {
			t.Errorf("stored %+v", p)
		}
		if _, err := r.PolicyProposal(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("an unknown proposal: %v", err)
		}
		return nil
	})

	review := func(who, key, decision string, at time.Time) store.ProposalReview {
		return store.ProposalReview{Proposal: "p1", Reviewer: who, Key: key, Decision: decision, Comment: "looks right",
			Statement: []byte("stmt " + who), Signature: []byte("sig " + who), Cert: []byte("cert " + who), At: at, Entry: uint64(at.Sub(t0) / time.Minute)}
	}
	if err := up(func(tx store.Tx) error {
		if err := tx.AddProposalReview(ctx, review("carol", "sha256:cc", "deny", t0.Add(2*time.Minute))); err != nil {
			return err
		}
		return tx.AddProposalReview(ctx, review("bob", "sha256:bb", "approve", t0.Add(time.Minute)))
	}); err != nil {
		t.Fatal(err)
	}
	if err := up(func(tx store.Tx) error {
		return tx.AddProposalReview(ctx, review("bob", "sha256:b2", "deny", t0.Add(3*time.Minute)))
	}); !errors.Is(err, store.ErrConflict) {
		t.Errorf("a second review by one principal: %v", err)
	}
	if err := up(func(tx store.Tx) error {
		return tx.AddProposalReview(ctx, review("mallory", "sha256:bb", "approve", t0.Add(3*time.Minute)))
	}); !errors.Is(err, store.ErrConflict) {
		t.Errorf("a second review with one key under another name: %v", err)
	}
	_ = s.View(ctx, func(r store.Reader) error {
		rs, err := r.ProposalReviews(ctx, "p1")
		if err != nil || len(rs) != 2 {
			t.Fatalf("reviews %v %v", rs, err)
		}
		b := rs[0]
		if b.Reviewer != "bob" || rs[1].Reviewer != "carol" || b.Key != "sha256:bb" || b.Decision != "approve" || b.Comment != "looks right" ||
			string(b.Statement) != "stmt bob" || string(b.Signature) != "sig bob" || string(b.Cert) != "cert bob" || !b.At.Equal(t0.Add(time.Minute)) || b.Entry != 1 {
			t.Errorf("reviews %+v", rs)
		}
		if rs, _ := r.ProposalReviews(ctx, "p2"); len(rs) != 0 {
			t.Errorf("another proposal's reviews: %v", rs)
		}
		return nil
	})

	ids := func(ps []store.PolicyProposal) string {
		var out []string
		for _, p := range ps {
			out = append(out, p.ID)
		}
		return fmt.Sprint(out)
	}
	_ = s.View(ctx, func(r store.Reader) error {
		if ps, err := r.PendingProposals(ctx, 10); err != nil || ids(ps) != "[p1 p2 p3]" {
			t.Errorf("pending %s %v", ids(ps), err)
		}
		if ps, _ := r.PendingProposals(ctx, 2); ids(ps) != "[p1 p2]" {
			t.Errorf("pending, limited: %s", ids(ps))
		}
		if ps, err := r.DueProposals(ctx, t0.Add(73*time.Hour), 10); err != nil || ids(ps) != "[p1 p2]" {
			t.Errorf("due %s %v", ids(ps), err)
		}
		return nil
	})

	// Closing: once, with a final state; closed ones leave the indexes.
	c := proposal("p1", t0)
	c.State, c.ClosedAt, c.ClosedEntry, c.Reason = store.ProposalApplied, t0.Add(time.Hour), 12, "the policy admins' quorum was met"
	if err := up(func(tx store.Tx) error { return tx.ClosePolicyProposal(ctx, c) }); err != nil {
		t.Fatal(err)
	}
	if err := up(func(tx store.Tx) error { return tx.ClosePolicyProposal(ctx, c) }); !errors.Is(err, store.ErrConflict) {
		t.Errorf("closing twice: %v", err)
	}
	bad := proposal("p2", t0)
	if err := up(func(tx store.Tx) error { return tx.ClosePolicyProposal(ctx, bad) }); err == nil {
		t.Error("closed to pending")
	}
	missing := c
	missing.ID = "nope"
	if err := up(func(tx store.Tx) error { return tx.ClosePolicyProposal(ctx, missing) }); !errors.Is(err, store.ErrConflict) {
		t.Errorf("closing an unknown proposal: %v", err)
	}
	_ = s.View(ctx, func(r store.Reader) error {
		p, _ := r.PolicyProposal(ctx, "p1")
		if p.State != store.ProposalApplied || !p.ClosedAt.Equal(c.ClosedAt) || p.ClosedEntry != 12 || p.Reason != c.Reason {
			t.Errorf("closed %+v", p)
		}
		if ps, _ := r.PendingProposals(ctx, 10); ids(ps) != "[p2 p3]" {
			t.Errorf("pending after closing: %s", ids(ps))
		}
		if ps, _ := r.DueProposals(ctx, t0.Add(1000*time.Hour), 10); ids(ps) != "[p2 p3]" {
			t.Errorf("due after closing: %s", ids(ps))
		}
		return nil
	})
}
