package broker_test

import (
	"strings"
	"testing"
	"time"

	"github.com/bgbroker/breakglass/format/keyid"
	"github.com/bgbroker/breakglass/format/passkey"
	"github.com/bgbroker/breakglass/format/passkey/passkeytest"
	"github.com/bgbroker/breakglass/format/statement"
	"github.com/bgbroker/breakglass/server/broker"
	"github.com/bgbroker/breakglass/server/request"
	"github.com/bgbroker/breakglass/server/store"
)

const (
	consoleRPID   = "localhost"
	consoleOrigin = "https://localhost:7445"
)

// enroll creates a passkey for who in the console and returns it with its
// one-time code.
func (h *harness) enroll(who string) (*passkeytest.Authenticator, string) {
	h.t.Helper()
	a, err := passkeytest.New(consoleRPID, consoleOrigin)
	if err != nil {
		h.t.Fatal(err)
	}
	code, _, err := h.b.AddPendingPasskey(h.ctx, who, broker.NewPasskey{ID: a.ID, PublicKey: a.COSE(), RPID: consoleRPID, WebOrigin: consoleOrigin,
		Label: "laptop", Flags: passkeytest.FlagUP | passkeytest.FlagUV})
	if err != nil {
		h.t.Fatalf("add pending passkey: %v", err)
	}
	return a, code
}

// bindingBy is the binding statement of a for who, signed by signer.
func (h *harness) bindingBy(a *passkeytest.Authenticator, who, signer string) broker.Signed {
	h.t.Helper()
	b := a.Binding(testOrigin, who)
	b.Time = h.clock.Now().Truncate(time.Second)
	text := b.Marshal()
	sig, err := statement.Sign(h.cert(signer).key, text)
	if err != nil {
		h.t.Fatal(err)
	}
	return broker.Signed{Statement: text, Signature: sig, Cert: h.cert(signer).cert}
}

func (h *harness) bind(who string) *passkeytest.Authenticator {
	h.t.Helper()
	a, code := h.enroll(who)
	if _, _, err := h.b.ConfirmPasskey(h.ctx, who, code, h.bindingBy(a, who, who)); err != nil {
		h.t.Fatalf("confirm: %v", err)
	}
	return a
}

// passkeyReview is who's review of id signed by a's assertion.
func (h *harness) passkeyReview(who, id string, d request.Decision, a *passkeytest.Authenticator, o passkeytest.Options) broker.ReviewInput {
	h.t.Helper()
	stmt, _ := h.statement(who, id, d, "from the console")
	x := a.Assert(stmt, o)
	return broker.ReviewInput{ID: id, Decision: d, Comment: "from the console", Statement: stmt, Passkey: &x}
}

// A passkey bound by its owner signs an approval that counts toward the
// quorum like a certificate-signed one, and its token follows.
func TestPasskeyApprovalCounts(t *testing.T) {
	h := newHarness(t, testPolicy)
	a := h.bind("bob")
	r := h.create("alice", "prod-db")
	res, err := h.b.Review(h.ctx, "bob", h.passkeyReview("bob", r.ID, request.Approve, a, passkeytest.Options{}))
	if err != nil {
		t.Fatal(err)
	}
	if res.Request.State != request.Pending {
		t.Fatalf("state %s after one approval", res.Request.State)
	}
	in := reviewInput(h, "erin", r.ID, request.Approve)
	in.KeyStore = "pkcs11"
	res, err = h.b.Review(h.ctx, "erin", in)
	if err != nil || res.Request.State != request.Approved {
		t.Fatalf("second approval: %v %v", err, res)
	}
	if _, err := h.b.IssueToken(h.ctx, "alice", r.ID, "db.prod.example"); err != nil {
		t.Fatalf("token after a passkey approval: %v", err)
	}
	got, err := h.b.GetRequest(h.ctx, "alice", r.ID)
	if err != nil || got.Reviews[0].Passkey == nil || got.Reviews[1].KeyStore != "pkcs11" {
		t.Fatalf("stored reviews: %+v %v", got.Reviews, err)
	}
	ps, err := h.b.Passkeys(h.ctx, "bob", "")
	if err != nil || len(ps) != 1 || ps[0].Counter != 1 || ps[0].State != store.PasskeyBound {
		t.Fatalf("bob's passkeys: %+v %v", ps, err)
	}
	h.verifyChain()
}

// Binding refusals: another principal's code, a binding signed by someone
// else, a statement that does not describe the pending passkey, a stale
// or malformed code; each changes nothing.
func TestPasskeyBindingRefusals(t *testing.T) {
	h := newHarness(t, testPolicy)
	a, code := h.enroll("bob")
	before := h.snap()
	_, err := h.b.PendingPasskey(h.ctx, "erin", code)
	wantKind(t, err, broker.KindPermission, "only bob can bind it")
	_, _, err = h.b.ConfirmPasskey(h.ctx, "erin", code, h.bindingBy(a, "erin", "erin"))
	wantKind(t, err, broker.KindPermission, "only bob can bind it")
	_, _, err = h.b.ConfirmPasskey(h.ctx, "bob", code, h.bindingBy(a, "bob", "erin"))
	wantKind(t, err, broker.KindUnauthenticated, "names erin, not bob")
	s := h.bindingBy(a, "bob", "bob")
	s.Signature = h.bindingBy(a, "bob", "mallory").Signature
	_, _, err = h.b.ConfirmPasskey(h.ctx, "bob", code, s)
	wantKind(t, err, broker.KindInvalid, "does not verify")
	other, _ := passkeytest.New(consoleRPID, consoleOrigin)
	other.ID = a.ID
	_, _, err = h.b.ConfirmPasskey(h.ctx, "bob", code, h.bindingBy(other, "bob", "bob"))
	wantKind(t, err, broker.KindInvalid, "not the pending passkey's public key")
	_, _, err = h.b.ConfirmPasskey(h.ctx, "bob", "ZZZZZ-ZZZZZ", h.bindingBy(a, "bob", "bob"))
	wantKind(t, err, broker.KindNotFound, "no passkey is waiting")
	_, _, err = h.b.ConfirmPasskey(h.ctx, "bob", "not a code!", h.bindingBy(a, "bob", "bob"))
	wantKind(t, err, broker.KindInvalid, "ten letters")
	old := h.bindingBy(a, "bob", "bob")
	h.clock.Advance(6 * time.Minute)
	_, _, err = h.b.ConfirmPasskey(h.ctx, "bob", code, old)
	wantKind(t, err, broker.KindInvalid, "time")
	if h.snap() != before {
		t.Fatal("a refused binding changed the store")
	}
	// The code, typed in lower case without its dash, still works in time.
	if _, _, err := h.b.ConfirmPasskey(h.ctx, "bob", strings.ToLower(strings.ReplaceAll(code, "-", "")), h.bindingBy(a, "bob", "bob")); err != nil {
		t.Fatalf("confirm: %v", err)
	}
	// Once bound, the code is spent.
	_, _, err = h.b.ConfirmPasskey(h.ctx, "bob", code, h.bindingBy(a, "bob", "bob"))
	wantKind(t, err, broker.KindNotFound, "no passkey is waiting")
	// The same credential cannot be registered again, by anyone.
	_, _, err = h.b.AddPendingPasskey(h.ctx, "erin", broker.NewPasskey{ID: a.ID, PublicKey: a.COSE(), RPID: consoleRPID, WebOrigin: consoleOrigin})
	wantKind(t, err, broker.KindExists, "already registered")
	// A lapsed code binds nothing.
	b2, code2 := h.enroll("bob")
	h.clock.Advance(broker.PasskeyCodeTTL)
	_, _, err = h.b.ConfirmPasskey(h.ctx, "bob", code2, h.bindingBy(b2, "bob", "bob"))
	wantKind(t, err, broker.KindNotFound, "codes last")
	if n, err := h.b.PrunePasskeys(h.ctx); err != nil || n != 1 {
		t.Fatalf("prune: %d %v", n, err)
	}
	h.verifyChain()
}

// Hostile registrations are refused with a reason and store nothing.
func TestPendingPasskeyValidation(t *testing.T) {
	h := newHarness(t, testPolicy)
	a, _ := passkeytest.New(consoleRPID, consoleOrigin)
	good := broker.NewPasskey{ID: a.ID, PublicKey: a.COSE(), RPID: consoleRPID, WebOrigin: consoleOrigin}
	for name, c := range map[string]struct {
		mod  func(*broker.NewPasskey)
		kind broker.Kind
		msg  string
	}{
		"no id":         {func(p *broker.NewPasskey) { p.ID = nil }, broker.KindInvalid, "credential ID"},
		"long id":       {func(p *broker.NewPasskey) { p.ID = make([]byte, 1024) }, broker.KindInvalid, "credential ID"},
		"not a key":     {func(p *broker.NewPasskey) { p.PublicKey = []byte("x") }, broker.KindInvalid, "public key"},
		"ip rp id":      {func(p *broker.NewPasskey) { p.RPID, p.WebOrigin = "127.0.0.1", "https://127.0.0.1:7445" }, broker.KindInvalid, "never an IP"},
		"origin off rp": {func(p *broker.NewPasskey) { p.WebOrigin = "https://evil.example" }, broker.KindInvalid, "not on the RP ID"},
		"long label":    {func(p *broker.NewPasskey) { p.Label = strings.Repeat("x", 65) }, broker.KindInvalid, "label"},
		"control label": {func(p *broker.NewPasskey) { p.Label = "a\x1b[31m" }, broker.KindInvalid, "label"},
	} {
		in := good
		c.mod(&in)
		_, _, err := h.b.AddPendingPasskey(h.ctx, "bob", in)
		if err == nil || kindOf(err) != c.kind || !strings.Contains(broker.PublicMessage(err), c.msg) {
			t.Errorf("%s: %v", name, err)
		}
	}
	_, _, err := h.b.AddPendingPasskey(h.ctx, "nobody", good)
	wantKind(t, err, broker.KindPermission, "not in the broker's policy")
	for range 5 {
		h.enroll("carol")
	}
	b, _ := passkeytest.New(consoleRPID, consoleOrigin)
	_, _, err = h.b.AddPendingPasskey(h.ctx, "carol", broker.NewPasskey{ID: b.ID, PublicKey: b.COSE(), RPID: consoleRPID, WebOrigin: consoleOrigin})
	wantKind(t, err, broker.KindExhausted, "waiting for bgctl passkey confirm")
	if ps, _ := h.b.Passkeys(h.ctx, "bob", ""); len(ps) != 0 {
		t.Fatalf("refused registrations stored %d passkeys", len(ps))
	}
}

// Passkey review refusals: a passkey never bound, another's passkey, no
// user verification, a replayed assertion, a wrong origin, an assertion
// over another statement, a removed passkey; each changes nothing.
func TestPasskeyReviewRefusals(t *testing.T) {
	h := newHarness(t, testPolicy)
	a := h.bind("bob")
	e := h.bind("erin")
	r := h.create("alice", "prod-db")
	unbound, _ := h.enroll("bob")
	before := h.snap()
	for _, c := range []struct {
		name string
		who  string
		in   broker.ReviewInput
		kind broker.Kind
		msg  string
	}{
		{"not bound", "bob", h.passkeyReview("bob", r.ID, request.Approve, unbound, passkeytest.Options{}), broker.KindPermission, "not bound to you"},
		{"someone else's", "bob", h.passkeyReview("bob", r.ID, request.Approve, e, passkeytest.Options{}), broker.KindPermission, "not bound to you"},
		{"no user verification", "bob", h.passkeyReview("bob", r.ID, request.Approve, a, passkeytest.Options{Flags: passkeytest.FlagUP}), broker.KindInvalid, "User verification required"},
		{"wrong origin", "bob", h.passkeyReview("bob", r.ID, request.Approve, a, passkeytest.Options{Origin: "https://evil.example"}), broker.KindInvalid, "origin"},
		{"another statement", "bob", h.passkeyReview("bob", r.ID, request.Approve, a, passkeytest.Options{Challenge: passkey.Challenge([]byte("x"))}), broker.KindInvalid, "challenge"},
		{"cross-origin", "bob", h.passkeyReview("bob", r.ID, request.Approve, a, passkeytest.Options{CrossOrigin: true}), broker.KindInvalid, "cross origin"},
	} {
		_, err := h.b.Review(h.ctx, c.who, c.in)
		if err == nil || kindOf(err) != c.kind || !strings.Contains(broker.PublicMessage(err), c.msg) {
			t.Errorf("%s: %v (%q)", c.name, err, broker.PublicMessage(err))
		}
	}
	if h.snap() != before {
		t.Fatal("a refused review changed the store")
	}
	// One good approval, then the same assertion again on another request
	// and on the same one.
	good := h.passkeyReview("bob", r.ID, request.Approve, a, passkeytest.Options{})
	if _, err := h.b.Review(h.ctx, "bob", good); err != nil {
		t.Fatal(err)
	}
	_, err := h.b.Review(h.ctx, "bob", good)
	wantKind(t, err, broker.KindExists, "already reviewed")
	r2 := h.create("alice", "prod-db")
	one := uint32(1)
	_, err = h.b.Review(h.ctx, "bob", h.passkeyReview("bob", r2.ID, request.Approve, a, passkeytest.Options{Counter: &one}))
	wantKind(t, err, broker.KindInvalid, "did not advance")
	// Removing the passkey takes its approval away: the quorum no longer
	// holds for the first request's token.
	if _, err := h.b.Review(h.ctx, "erin", reviewInput(h, "erin", r.ID, request.Approve)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := h.b.RemovePasskey(h.ctx, "bob", a.ID, "laptop lost"); err != nil {
		t.Fatal(err)
	}
	_, err = h.b.IssueToken(h.ctx, "alice", r.ID, "db.prod.example")
	wantKind(t, err, broker.KindState, "no longer meets its quorum")
	_, err = h.b.Review(h.ctx, "bob", h.passkeyReview("bob", r2.ID, request.Approve, a, passkeytest.Options{}))
	wantKind(t, err, broker.KindPermission, "not bound to you")
	_, _, err = h.b.RemovePasskey(h.ctx, "erin", a.ID, "")
	wantKind(t, err, broker.KindNotFound, "no passkey")
	h.verifyChain()
}

// A revoked client certificate takes its passkey's power with it.
func TestPasskeyFollowsItsCertificate(t *testing.T) {
	h := newHarness(t, testPolicy)
	a := h.bind("bob")
	r := h.create("alice", "prod-db")
	h.revoke("bob")
	_, err := h.b.Review(h.ctx, "bob", h.passkeyReview("bob", r.ID, request.Approve, a, passkeytest.Options{}))
	wantKind(t, err, broker.KindUnauthenticated, "bind the passkey again")
}

// Removal works while the HSM is down; binding does not.
func TestPasskeyRemovalWithoutHSM(t *testing.T) {
	h := newHarness(t, testPolicy)
	a := h.bind("bob")
	b, code := h.enroll("bob")
	h.audit.down.Store(true)
	h.b.SetHSMDown(true)
	_, _, err := h.b.ConfirmPasskey(h.ctx, "bob", code, h.bindingBy(b, "bob", "bob"))
	wantKind(t, err, broker.KindUnavailable, "")
	if _, _, err := h.b.RemovePasskey(h.ctx, "bob", a.ID, "compromised"); err != nil {
		t.Fatalf("removal with the HSM down: %v", err)
	}
}

// passkeyCreate is in as caller's passkey a signs it in the console.
func (h *harness) passkeyCreate(caller string, a *passkeytest.Authenticator, in broker.CreateInput) broker.CreateInput {
	in = h.signedCreate(caller, in)
	x := a.Assert(in.Statement, passkeytest.Options{})
	in.Signature, in.Cert, in.Passkey = nil, nil, &x
	return in
}

// A request made in the console is signed by the requester's bound
// passkey; the requester is known by the key of the certificate that bound
// it, so that key never reviews the request. A passkey not bound, or
// bound to someone else, makes no request, nor does a statement that says
// another request, nor the same assertion twice.
func TestPasskeySignedRequest(t *testing.T) {
	h := newHarness(t, testPolicy)
	a := h.bind("alice")
	e := h.bind("erin")
	in := broker.CreateInput{Account: "prod-db", Justification: "primary is down, INC-42", Ticket: "INC-42", TTL: 30 * time.Minute}
	res, err := h.b.CreateRequest(h.ctx, "alice", h.passkeyCreate("alice", a, in))
	if err != nil {
		t.Fatal(err)
	}
	if k := res.Request.RequesterKey(); k == "" || k != keyid.SPKI(h.cert("alice").cert.RawSubjectPublicKeyInfo) {
		t.Fatalf("the requester's key is %q, not her binding certificate's", k)
	}
	before := h.snap()
	unbound, _ := h.enroll("alice")
	_, err = h.b.CreateRequest(h.ctx, "alice", h.passkeyCreate("alice", unbound, in))
	wantKind(t, err, broker.KindPermission, "not bound to you")
	_, err = h.b.CreateRequest(h.ctx, "alice", h.passkeyCreate("alice", e, in))
	wantKind(t, err, broker.KindPermission, "not bound to you")
	other := h.passkeyCreate("alice", a, in)
	other.Ticket = "INC-43"
	_, err = h.b.CreateRequest(h.ctx, "alice", other)
	wantKind(t, err, broker.KindInvalid, "ticket")
	noUV := h.signedCreate("alice", in)
	x := a.Assert(noUV.Statement, passkeytest.Options{Flags: passkeytest.FlagUP})
	noUV.Signature, noUV.Cert, noUV.Passkey = nil, nil, &x
	_, err = h.b.CreateRequest(h.ctx, "alice", noUV)
	wantKind(t, err, broker.KindInvalid, "User verification required")
	if h.snap() != before {
		t.Fatal("a refused request changed the store")
	}
	again := h.passkeyCreate("alice", a, in)
	if _, err := h.b.CreateRequest(h.ctx, "alice", again); err != nil {
		t.Fatal(err)
	}
	before = h.snap()
	_, err = h.b.CreateRequest(h.ctx, "alice", again)
	if err == nil {
		t.Fatal("the same passkey-signed request twice")
	}
	if h.snap() != before {
		t.Fatal("a refused request changed the store")
	}
	h.verifyChain()
}

// A denial signed by a passkey denies like any other.
func TestPasskeyDenial(t *testing.T) {
	h := newHarness(t, testPolicy)
	a := h.bind("bob")
	r := h.create("alice", "prod-db")
	res, err := h.b.Review(h.ctx, "bob", h.passkeyReview("bob", r.ID, request.Deny, a, passkeytest.Options{}))
	if err != nil || res.Request.State != request.Denied {
		t.Fatalf("a passkey denial: %v %+v", err, res)
	}
	h.verifyChain()
}
