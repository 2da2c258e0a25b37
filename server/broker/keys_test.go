package broker_test

import (
	"crypto/ecdsa"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/format/statement"
	"github.com/bgbroker/breakglass/hsm"
	"github.com/bgbroker/breakglass/server/broker"
	"github.com/bgbroker/breakglass/server/keyring"
	"github.com/bgbroker/breakglass/server/request"
	"github.com/bgbroker/breakglass/server/store"
)

// ceremony rotates a key from a process of its own (breakglassd hsm
// rotate): its own ring and broker on the same store and HSM.
func (w *world) ceremony(t *testing.T, p hsm.Purpose) store.KeyRecord {
	t.Helper()
	cer := keyring.New(keyring.Config{Module: w.module, Store: w.store, Issuer: "https://broker.test", Origin: testOrigin, Now: w.clock.Now})
	if err := cer.Load(w.ctx); err != nil {
		t.Fatal(err)
	}
	pol, _ := policy.Load([]byte(propPolicies[w.policy]), "policy.yaml")
	ob, err := broker.New(w.ctx, broker.Config{Store: w.store, Policy: pol, PolicySource: "policy.yaml", AcceptUnsignedGenesis: true, Keys: cer, Now: w.clock.Now, Origin: testOrigin, Certs: w.ident})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := cer.Rotate(w.ctx, ob, p, "", string(p)+"-rotated-"+time.Now().Format("150405.000000"), "ceremony")
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

func (w *world) entries(t *testing.T) []audit.Record {
	t.Helper()
	var out []audit.Record
	_ = w.store.View(w.ctx, func(r store.Reader) error {
		head, err := r.Head(w.ctx)
		if err != nil {
			return err
		}
		out, err = r.Entries(w.ctx, 0, head.Size)
		return err
	})
	return out
}

// A key rotated by another process is in force at once for a running
// broker: the next entry is signed by the new audit key, the next token by
// the new token key and the next checkpoint by the new checkpoint key,
// never by the retired ones (which the broker would otherwise keep using
// until it reloads its keys). An audit key is not rotated over entries
// still waiting for a signature.
func TestRotatedKeysAreInForceAtOnce(t *testing.T) {
	w := newWorld(t, newHSMWorld(t), time.Now().UTC().Truncate(time.Second))
	ctx := w.ctx
	approved := func() *request.Request {
		t.Helper()
		res, err := w.b.CreateRequest(ctx, "alice", w.signedCreate("alice", broker.CreateInput{Account: "prod-db", Justification: "primary is down", TTL: 15 * time.Minute}))
		if err != nil {
			t.Fatal(err)
		}
		for _, who := range []string{"bob", "erin"} {
			st := statement.Statement{Type: statement.TypeApprove, Origin: testOrigin, Request: res.Request.ID, Content: res.Request.Content().Digest(),
				Comment: statement.CommentDigest(""), Time: w.clock.Now().UTC().Truncate(time.Second)}
			sig, _ := statement.Sign(w.cert(who).key, st.Marshal())
			if _, err := w.b.Review(ctx, who, broker.ReviewInput{ID: res.Request.ID, Decision: request.Approve, Statement: st.Marshal(), Signature: sig, Cert: w.cert(who).cert}); err != nil {
				t.Fatal(err)
			}
		}
		return res.Request
	}
	r := approved()

	rec := w.ceremony(t, hsm.PurposeAudit)
	pub, err := keyring.PublicFromPEM(rec.PublicPEM)
	if err != nil {
		t.Fatal(err)
	}
	before := len(w.entries(t))
	if _, err := w.b.IssueToken(ctx, "alice", r.ID, "db.prod.example"); err != nil {
		t.Fatal(err)
	}
	if _, err := w.b.RevokeGrant(ctx, "alice", r.ID, "done"); err != nil {
		t.Fatal(err)
	}
	es := w.entries(t)
	for _, e := range es[before:] {
		if !audit.VerifySignature(pub.(*ecdsa.PublicKey), e.Bytes, e.Signature) || e.KeyID != rec.KID {
			t.Fatalf("entry %d (%s) after the rotation is not signed by the new audit key %s but by %s", e.Index, e.Type, rec.KID, e.KeyID)
		}
	}

	// The token key.
	r = approved()
	trec := w.ceremony(t, hsm.PurposeToken)
	iss, err := w.b.IssueToken(ctx, "alice", r.ID, "db.prod.example")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jose.ParseSignedCompact(iss.Token, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	if iss.KID != trec.KID || tok.Signatures[0].Header.KeyID != trec.KID {
		t.Fatalf("a token after the rotation is signed by %s, not the new token key %s", iss.KID, trec.KID)
	}

	// The checkpoint key: the whole log verifies with the first keys only,
	// which checks every entry and checkpoint key window.
	w.ceremony(t, hsm.PurposeCheckpoint)
	if _, err := w.b.CreateRequest(ctx, "alice", w.signedCreate("alice", broker.CreateInput{Account: "prod-db", Justification: "after the rotation"})); err != nil {
		t.Fatal(err)
	}
	sum := w.verify()
	if sum.AuditKeys != 2 || sum.CheckpointKeys != 2 {
		t.Fatalf("the log verified with %d audit and %d checkpoint keys", sum.AuditKeys, sum.CheckpointKeys)
	}

	// A backlog: the audit key is not rotated over it.
	w.down.Store(true)
	r = approved2(t, w)
	if _, err := w.b.RevokeGrant(ctx, "alice", r.ID, "done"); err != nil {
		t.Fatal(err)
	}
	if n, _ := w.b.Backlog(ctx); n == 0 {
		t.Fatal("no backlog while the HSM is down")
	}
	cer := keyring.New(keyring.Config{Module: w.module, Store: w.store, Issuer: "https://broker.test", Origin: testOrigin, Now: w.clock.Now})
	_ = cer.Load(ctx)
	pol, _ := policy.Load([]byte(propPolicies[w.policy]), "policy.yaml")
	ob, err := broker.New(ctx, broker.Config{Store: w.store, Policy: pol, PolicySource: "policy.yaml", AcceptUnsignedGenesis: true, Keys: cer, Now: w.clock.Now, Origin: testOrigin, Certs: w.ident})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cer.Rotate(ctx, ob, hsm.PurposeAudit, "", "audit-over-backlog", "ceremony"); err == nil || !strings.Contains(err.Error(), "not signed yet") {
		t.Fatalf("an audit key rotated over a backlog: %v", err)
	}
	w.verify()
}

// approved2 makes an approved grant while the HSM may be down for the
// entries that take access away: it brings the HSM back for the grant.
func approved2(t *testing.T, w *world) *request.Request {
	t.Helper()
	w.down.Store(false)
	res, err := w.b.CreateRequest(w.ctx, "alice", w.signedCreate("alice", broker.CreateInput{Account: "prod-db", Justification: "primary is down", TTL: 15 * time.Minute}))
	if err != nil {
		t.Fatal(err)
	}
	for _, who := range []string{"bob", "erin"} {
		st := statement.Statement{Type: statement.TypeApprove, Origin: testOrigin, Request: res.Request.ID, Content: res.Request.Content().Digest(),
			Comment: statement.CommentDigest(""), Time: w.clock.Now().UTC().Truncate(time.Second)}
		sig, _ := statement.Sign(w.cert(who).key, st.Marshal())
		if _, err := w.b.Review(w.ctx, who, broker.ReviewInput{ID: res.Request.ID, Decision: request.Approve, Statement: st.Marshal(), Signature: sig, Cert: w.cert(who).cert}); err != nil {
			t.Fatal(err)
		}
	}
	w.down.Store(true)
	return res.Request
}
