package storetest

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/bgbroker/breakglass/format/passkey"
	"github.com/bgbroker/breakglass/server/request"
	"github.com/bgbroker/breakglass/server/store"
)

func pendingPasskey(id, who, code string, at time.Time) store.Passkey {
	return store.Passkey{CredentialID: []byte(id), Principal: who, PublicKey: []byte("cose " + id), RPID: "localhost", WebOrigin: "https://localhost:7445",
		Label: "laptop", State: store.PasskeyPending, CodeHash: code, CreatedAt: at, ExpiresAt: at.Add(10 * time.Minute), Flags: 0x45}
}

// testPasskeys: a pending passkey is found by its code, bound once,
// removed, never replaced; codes are unique among pending ones; expired
// pending ones are pruned and bound ones never; reviews keep their
// passkey assertion.
func testPasskeys(t *testing.T, s store.Store) {
	ctx := context.Background()
	up := func(fn func(tx store.Tx) error) error { return s.Update(ctx, fn) }
	if err := up(func(tx store.Tx) error {
		for _, p := range []store.Passkey{pendingPasskey("c1", "bob", "h1", t0), pendingPasskey("c2", "bob", "h2", t0.Add(time.Second)),
			pendingPasskey("c3", "erin", "h3", t0.Add(time.Minute))} {
			if err := tx.AddPasskey(ctx, p); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := up(func(tx store.Tx) error { return tx.AddPasskey(ctx, pendingPasskey("c1", "mallory", "h9", t0)) }); !errors.Is(err, store.ErrConflict) {
		t.Errorf("a credential ID added twice: %v", err)
	}
	if err := up(func(tx store.Tx) error { return tx.AddPasskey(ctx, pendingPasskey("c9", "mallory", "h1", t0)) }); !errors.Is(err, store.ErrConflict) {
		t.Errorf("a pending code used twice: %v", err)
	}
	var p *store.Passkey
	_ = s.View(ctx, func(r store.Reader) error {
		var err error
		if p, err = r.PendingPasskey(ctx, "h1"); err != nil {
			t.Fatal(err)
		}
		if _, err := r.PendingPasskey(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("an unknown code: %v", err)
		}
		if _, err := r.Passkey(ctx, []byte("nope")); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("an unknown credential: %v", err)
		}
		return nil
	})
	want := pendingPasskey("c1", "bob", "h1", t0)
	if !bytes.Equal(p.CredentialID, want.CredentialID) || p.Principal != "bob" || !bytes.Equal(p.PublicKey, want.PublicKey) || p.RPID != want.RPID ||
		p.WebOrigin != want.WebOrigin || p.Label != "laptop" || p.State != store.PasskeyPending || !p.CreatedAt.Equal(t0) || !p.ExpiresAt.Equal(want.ExpiresAt) ||
		p.Flags != 0x45 || !p.BoundAt.IsZero() {
		t.Fatalf("pending passkey round trip: %+v", p)
	}
	// Bind it.
	bound := *p
	bound.State, bound.BoundAt, bound.BoundEntry, bound.Statement, bound.Signature, bound.Cert, bound.ExpiresAt = store.PasskeyBound, t0.Add(time.Minute), 7,
		[]byte("binding"), []byte("sig"), []byte("cert"), time.Time{}
	if err := up(func(tx store.Tx) error { return tx.SavePasskey(ctx, bound) }); err != nil {
		t.Fatal(err)
	}
	_ = s.View(ctx, func(r store.Reader) error {
		got, err := r.Passkey(ctx, []byte("c1"))
		if err != nil || got.State != store.PasskeyBound || got.BoundEntry != 7 || !got.BoundAt.Equal(bound.BoundAt) || string(got.Statement) != "binding" ||
			string(got.Cert) != "cert" || got.CodeHash != "" {
			t.Errorf("bound passkey: %+v %v", got, err)
		}
		if _, err := r.PendingPasskey(ctx, "h1"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("the code of a bound passkey still works: %v", err)
		}
		mine, err := r.PasskeysOf(ctx, "bob", 10)
		if err != nil || len(mine) != 2 || string(mine[0].CredentialID) != "c1" || string(mine[1].CredentialID) != "c2" {
			t.Errorf("bob's passkeys: %+v %v", mine, err)
		}
		if one, _ := r.PasskeysOf(ctx, "bob", 1); len(one) != 1 {
			t.Errorf("limit 1 gave %d", len(one))
		}
		return nil
	})
	// The code of a bound passkey is free for a new pending one.
	if err := up(func(tx store.Tx) error {
		return tx.AddPasskey(ctx, pendingPasskey("c4", "bob", "h1", t0.Add(time.Hour)))
	}); err != nil {
		t.Errorf("reusing a bound passkey's code hash: %v", err)
	}
	// Pruning removes lapsed pending passkeys only, in bounded batches.
	var n int
	if err := up(func(tx store.Tx) error {
		var err error
		n, err = tx.PruneExpiredPasskeys(ctx, t0.Add(11*time.Minute), 1)
		return err
	}); err != nil || n != 1 {
		t.Fatalf("prune with limit 1: %d %v", n, err)
	}
	if err := up(func(tx store.Tx) error {
		var err error
		n, err = tx.PruneExpiredPasskeys(ctx, t0.Add(11*time.Minute), 100)
		return err
	}); err != nil || n != 1 {
		t.Fatalf("prune: %d %v", n, err)
	}
	_ = s.View(ctx, func(r store.Reader) error {
		for id, want := range map[string]bool{"c1": true, "c2": false, "c3": false, "c4": true} {
			_, err := r.Passkey(ctx, []byte(id))
			if (err == nil) != want {
				t.Errorf("after pruning, %s: %v", id, err)
			}
		}
		return nil
	})
	// Remove and count.
	bound.State, bound.RemovedAt, bound.Counter = store.PasskeyRemoved, t0.Add(2*time.Hour), 9
	if err := up(func(tx store.Tx) error { return tx.SavePasskey(ctx, bound) }); err != nil {
		t.Fatal(err)
	}
	if err := up(func(tx store.Tx) error { return tx.SavePasskey(ctx, pendingPasskey("c8", "bob", "h8", t0)) }); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("saving a passkey never added: %v", err)
	}
	_ = s.View(ctx, func(r store.Reader) error {
		got, err := r.Passkey(ctx, []byte("c1"))
		if err != nil || got.State != store.PasskeyRemoved || got.Counter != 9 || !got.RemovedAt.Equal(bound.RemovedAt) || string(got.Statement) != "binding" {
			t.Errorf("removed passkey: %+v %v", got, err)
		}
		return nil
	})
	// A review keeps its assertion and key store.
	a := &passkey.Assertion{Credential: []byte("c1"), AuthenticatorData: []byte{1, 2}, ClientDataJSON: []byte(`{"type":"webauthn.get"}`), Signature: []byte{3}}
	if err := up(func(tx store.Tx) error {
		if err := tx.CreateRequest(ctx, newRequest("rp", t0)); err != nil {
			return err
		}
		if err := tx.AddReview(ctx, "rp", request.Review{Reviewer: "bob", Decision: request.Approve, At: t0, EntryIndex: 1, LeafHash: []byte{1},
			Statement: []byte("st"), Passkey: a}); err != nil {
			return err
		}
		return tx.AddReview(ctx, "rp", request.Review{Reviewer: "erin", Decision: request.Approve, At: t0, EntryIndex: 2, LeafHash: []byte{2},
			Statement: []byte("st"), Signature: []byte("s"), Cert: []byte("c"), KeyStore: "pkcs11"})
	}); err != nil {
		t.Fatal(err)
	}
	_ = s.View(ctx, func(r store.Reader) error {
		got, err := r.Request(ctx, "rp")
		if err != nil || len(got.Reviews) != 2 {
			t.Fatalf("%v %+v", err, got)
		}
		pk := got.Reviews[0].Passkey
		if pk == nil || !bytes.Equal(pk.Credential, a.Credential) || !bytes.Equal(pk.ClientDataJSON, a.ClientDataJSON) || !bytes.Equal(pk.Signature, a.Signature) ||
			!bytes.Equal(pk.AuthenticatorData, a.AuthenticatorData) {
			t.Errorf("the passkey review: %+v", got.Reviews[0])
		}
		if got.Reviews[1].Passkey != nil || got.Reviews[1].KeyStore != "pkcs11" {
			t.Errorf("the certificate review: %+v", got.Reviews[1])
		}
		return nil
	})
}
