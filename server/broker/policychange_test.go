package broker_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bgbroker/breakglass/client/auditverify"
	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/format/statement"
	"github.com/bgbroker/breakglass/hsm"
	"github.com/bgbroker/breakglass/server/broker"
	"github.com/bgbroker/breakglass/server/checkpoint"
	"github.com/bgbroker/breakglass/server/devmode"
	"github.com/bgbroker/breakglass/server/notify"
	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/store/sqlite"
	"github.com/bgbroker/breakglass/server/token"
)

// In testPolicy, changing the policy takes two of db-admins (bob, carol,
// dual), the proposer never counting.

// loadPolicy loads a policy as the broker runs it: naming the identity
// rule of its certificate verifier, which is part of its hash.
func loadPolicy(t *testing.T, src string) *policy.Policy {
	t.Helper()
	p, err := policy.Load([]byte(src), "new.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if p.Identity == nil {
		p = p.WithIdentity(policy.Identity{Mode: policy.IdentityURI, URIPrefix: "spiffe://test/user/"})
	}
	return p
}

// longerTTL weakens testPolicy: prod-db grants last two hours.
var longerTTL = strings.Replace(testPolicy, "max_ttl: 1h\n    approval_window: 30m\n    activation_window: 10m\n    max_issuances: 2",
	"max_ttl: 2h\n    approval_window: 30m\n    activation_window: 10m\n    max_issuances: 2", 1)

// policyStatement signs who's statement about the change previous -> hash.
func (h *harness) policyStatement(who, decision, origin, previous, hash, comment string, at time.Time) statement.Signed {
	h.t.Helper()
	st := statement.PolicyStatement{Decision: decision, Origin: origin, Previous: statement.PreviousLine(previous), Policy: hash,
		Comment: statement.CommentDigest(comment), Time: at.UTC().Truncate(time.Second)}
	sig, err := statement.Sign(h.cert(who).key, st.Marshal())
	if err != nil {
		h.t.Fatal(err)
	}
	return statement.Signed{Statement: st.Marshal(), Signature: sig, Certificate: h.cert(who).cert.Raw}
}

// reviewPolicy reviews proposal pp as who, with a statement made right.
func (h *harness) reviewPolicy(who string, pp *broker.ProposalView, decision, comment string) (*broker.ProposalView, error) {
	s := h.policyStatement(who, decision, testOrigin, pp.Previous, pp.Hash, comment, h.clock.Now())
	return h.b.ReviewPolicyProposal(h.ctx, who, broker.PolicyReviewInput{ID: pp.ID, Decision: decision, Comment: comment,
		Statement: s.Statement, Signature: s.Signature, Cert: h.cert(who).cert})
}

// lastPolicyEntry returns the payload of the newest policy_loaded entry.
func (h *harness) lastPolicyEntry() audit.PolicyLoaded {
	h.t.Helper()
	var pl audit.PolicyLoaded
	_ = h.store.View(h.ctx, func(r store.Reader) error {
		rec, err := r.LastOfType(h.ctx, audit.TypePolicyLoaded)
		if err != nil {
			h.t.Fatal(err)
		}
		e, _ := audit.Parse(rec.Bytes)
		return json.Unmarshal(e.Payload, &pl)
	})
	return pl
}

// verifyOffline signs a checkpoint and verifies the whole log as an
// auditor would, from the first keys and the client CA alone.
func (h *harness) verifyOffline(extra ...func(*auditverify.Options)) (*auditverify.Summary, error) {
	h.t.Helper()
	ns, err := hsm.NewNoteSigner(h.ctx, h.keys[hsm.PurposeCheckpoint], testOrigin)
	if err != nil {
		h.t.Fatal(err)
	}
	cpr, err := checkpoint.New(h.ctx, checkpoint.Config{Store: h.store, Signer: ns, Origin: testOrigin})
	if err != nil {
		h.t.Fatal(err)
	}
	cp, err := cpr.Latest(h.ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	var recs []audit.Record
	_ = h.store.View(h.ctx, func(r store.Reader) error {
		var err error
		recs, err = r.Entries(h.ctx, 0, cp.Size)
		return err
	})
	var export bytes.Buffer
	for _, rec := range recs {
		b, _ := json.Marshal(auditverify.ExportLine(rec.Index, rec.Bytes, rec.Signature, rec.KeyID))
		export.Write(append(b, '\n'))
	}
	vkey, err := hsm.NoteVerifierKey(testOrigin, h.keys[hsm.PurposeCheckpoint].Public())
	if err != nil {
		h.t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(h.ca.Cert)
	o := auditverify.Options{Log: &export, Checkpoint: cp.Note, CheckpointKey: vkey, AuditKeys: []*ecdsa.PublicKey{h.audit.Public().(*ecdsa.PublicKey)}, ClientCAs: pool}
	for _, f := range extra {
		f(&o)
	}
	return auditverify.Verify(o)
}

func (h *harness) mustVerifyOffline() *auditverify.Summary {
	h.t.Helper()
	sum, err := h.verifyOffline()
	if err != nil {
		h.t.Fatalf("the log does not verify: %v", err)
	}
	return sum
}

// A proposal is put in force by the second approval of a policy admin,
// never by the proposer's; its policy_loaded entry carries both
// statements, and the verifier names both signers.
func TestPolicyProposalNeedsTheQuorum(t *testing.T) {
	h := newHarness(t, testPolicy)
	old := h.b.Policy()
	np := loadPolicy(t, longerTTL)
	pp, err := h.b.ProposePolicy(h.ctx, "bob", h.cert("bob").cert, np, "new.yaml", "longer grants for the migration")
	if err != nil {
		t.Fatal(err)
	}
	if !pp.Weakens || pp.Missing != 2 || pp.Previous != old.Hash() || pp.Hash != np.Hash() || !strings.Contains(strings.Join(pp.Changes, "\n"), "WEAKENS accounts[prod-db].max_ttl") {
		t.Fatalf("proposal %+v", pp)
	}
	// Nobody outside the policy admins and the admins group proposes.
	_, err = h.b.ProposePolicy(h.ctx, "alice", h.cert("alice").cert, np, "new.yaml", "")
	wantKind(t, err, broker.KindPermission, "propose")

	// The proposer's own approval is refused; it would not count anyway.
	before := h.snap()
	_, err = h.reviewPolicy("bob", pp, statement.DecisionApprove, "")
	wantKind(t, err, broker.KindPermission, "proposer")
	if h.snap() != before {
		t.Fatal("a refused review changed the store")
	}
	v, err := h.reviewPolicy("carol", pp, statement.DecisionApprove, "checked the diff")
	if err != nil || v.State != store.ProposalPending || v.Missing != 1 || h.b.Policy().Hash() != old.Hash() {
		t.Fatalf("one of two approvals: %+v %v", v, err)
	}
	_, err = h.reviewPolicy("carol", pp, statement.DecisionApprove, "again")
	wantKind(t, err, broker.KindExists, "each admin counts once")
	v, err = h.reviewPolicy("dual", pp, statement.DecisionApprove, "")
	if err != nil || v.State != store.ProposalApplied || v.Loaded == nil || h.b.Policy().Hash() != np.Hash() {
		t.Fatalf("two of two approvals: %+v %v", v, err)
	}
	pl := h.lastPolicyEntry()
	if pl.Hash != np.Hash() || pl.Previous != old.Hash() || pl.Proposal != pp.ID || pl.Proposer != "bob" || len(pl.Approvals) != 2 || !pl.Weakens {
		t.Fatalf("policy_loaded %+v", pl)
	}
	sum := h.mustVerifyOffline()
	last := sum.Policies[len(sum.Policies)-1]
	if strings.Join(last.Signers, ",") != "carol,dual" || last.Proposer != "bob" || !last.Weakens || sum.PolicyProposals != 1 || sum.PolicyApprovals != 4 {
		t.Fatalf("the verifier's account of the change: %+v (%+v)", last, sum)
	}
	if v, err := h.b.GetPolicyProposal(h.ctx, "dave", pp.ID); err != nil || v.State != store.ProposalApplied || len(v.Reviews) != 2 {
		t.Fatalf("the auditor reads the applied proposal: %+v %v", v, err)
	}
}

// Statements that are not for exactly this change, or not by a valid
// admin's certificate, are refused with what is wrong, and nothing changes.
func TestPolicyStatementReplaysAndForgeries(t *testing.T) {
	h := newHarness(t, testPolicy)
	np := loadPolicy(t, longerTTL)
	other := loadPolicy(t, strings.Replace(testPolicy, "deny_threshold: 2", "deny_threshold: 1", 1))
	pp, err := h.b.ProposePolicy(h.ctx, "bob", h.cert("bob").cert, np, "new.yaml", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.b.ProposePolicy(h.ctx, "bob", h.cert("bob").cert, other, "other.yaml", ""); err != nil {
		t.Fatal(err)
	}
	cur := h.b.Policy().Hash()
	send := func(who string, s statement.Signed, cert *x509.Certificate, decision, comment string) error {
		_, err := h.b.ReviewPolicyProposal(h.ctx, who, broker.PolicyReviewInput{ID: pp.ID, Decision: decision, Comment: comment,
			Statement: s.Statement, Signature: s.Signature, Cert: cert})
		return err
	}
	now := h.clock.Now()
	carol := h.cert("carol").cert
	h.shortCert("dual", time.Minute)
	dualShort := h.cert("dual")
	cases := []struct {
		name string
		call func() error
		kind broker.Kind
		msg  string
	}{
		{"a statement for another proposal", func() error {
			return send("carol", h.policyStatement("carol", statement.DecisionApprove, testOrigin, cur, other.Hash(), "", now), carol, statement.DecisionApprove, "")
		}, broker.KindInvalid, "not " + np.Hash()[:12]},
		{"another origin", func() error {
			return send("carol", h.policyStatement("carol", statement.DecisionApprove, "breakglass.test/other", cur, np.Hash(), "", now), carol, statement.DecisionApprove, "")
		}, broker.KindInvalid, "not this one"},
		{"another previous hash", func() error {
			return send("carol", h.policyStatement("carol", statement.DecisionApprove, testOrigin, np.Hash(), other.Hash(), "", now), carol, statement.DecisionApprove, "")
		}, broker.KindInvalid, "signed for another change"},
		{"a genesis statement", func() error {
			return send("carol", h.policyStatement("carol", statement.DecisionApprove, testOrigin, "", np.Hash(), "", now), carol, statement.DecisionApprove, "")
		}, broker.KindInvalid, "signed for another change"},
		{"an approval sent as a denial", func() error {
			return send("carol", h.policyStatement("carol", statement.DecisionApprove, testOrigin, cur, np.Hash(), "", now), carol, statement.DecisionDeny, "")
		}, broker.KindInvalid, "decision"},
		{"another comment", func() error {
			return send("carol", h.policyStatement("carol", statement.DecisionApprove, testOrigin, cur, np.Hash(), "yes", now), carol, statement.DecisionApprove, "no")
		}, broker.KindInvalid, "comment"},
		{"an old statement", func() error {
			return send("carol", h.policyStatement("carol", statement.DecisionApprove, testOrigin, cur, np.Hash(), "", now.Add(-time.Hour)), carol, statement.DecisionApprove, "")
		}, broker.KindInvalid, "before the broker's clock"},
		{"a signature by another key", func() error {
			s := h.policyStatement("mallory", statement.DecisionApprove, testOrigin, cur, np.Hash(), "", now)
			return send("carol", s, carol, statement.DecisionApprove, "")
		}, broker.KindInvalid, "does not verify"},
		{"a review statement", func() error {
			st, sig := h.statement("carol", pp.ID, "approve", "")
			return send("carol", statement.Signed{Statement: st, Signature: sig}, carol, statement.DecisionApprove, "")
		}, broker.KindInvalid, "malformed"},
		{"a non-admin", func() error {
			return send("erin", h.policyStatement("erin", statement.DecisionApprove, testOrigin, cur, np.Hash(), "", now), h.cert("erin").cert, statement.DecisionApprove, "")
		}, broker.KindPermission, "only policy admins"},
		{"another principal's certificate", func() error {
			return send("dual", h.policyStatement("carol", statement.DecisionApprove, testOrigin, cur, np.Hash(), "", now), carol, statement.DecisionApprove, "")
		}, broker.KindUnauthenticated, "names carol, not dual"},
		{"an expired admin", func() error {
			h.clock.Advance(2 * time.Minute)
			defer h.clock.Advance(-2 * time.Minute)
			s := h.policyStatement("dual", statement.DecisionApprove, testOrigin, cur, np.Hash(), "", h.clock.Now())
			return send("dual", s, dualShort.cert, statement.DecisionApprove, "")
		}, broker.KindUnauthenticated, "cannot vouch"},
		{"a revoked admin", func() error {
			h.revoke("carol")
			defer h.revoke()
			return send("carol", h.policyStatement("carol", statement.DecisionApprove, testOrigin, cur, np.Hash(), "", now), carol, statement.DecisionApprove, "")
		}, broker.KindUnauthenticated, "cannot vouch"},
		{"no statement", func() error { return send("carol", statement.Signed{}, carol, statement.DecisionApprove, "") }, broker.KindInvalid, "must carry"},
		{"an unknown proposal", func() error {
			s := h.policyStatement("carol", statement.DecisionApprove, testOrigin, cur, np.Hash(), "", now)
			_, err := h.b.ReviewPolicyProposal(h.ctx, "carol", broker.PolicyReviewInput{ID: "01a2354e-4483-7692-b0bd-2544b3845b15", Decision: statement.DecisionApprove,
				Statement: s.Statement, Signature: s.Signature, Cert: carol})
			return err
		}, broker.KindNotFound, "not found"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := h.snap()
			err := tc.call()
			wantKind(t, err, tc.kind, tc.msg)
			if h.snap() != before {
				t.Fatal("a refused statement changed the store")
			}
		})
	}
	// One key is one admin: a certificate for dual over carol's key adds
	// nobody once carol approved.
	if _, err := h.reviewPolicy("carol", pp, statement.DecisionApprove, ""); err != nil {
		t.Fatal(err)
	}
	c, _, err := h.ca.Issue(h.leafFor("dual", h.cert("carol").key))
	if err != nil {
		t.Fatal(err)
	}
	s := h.policyStatement("carol", statement.DecisionApprove, testOrigin, cur, np.Hash(), "", h.clock.Now())
	_, err = h.b.ReviewPolicyProposal(h.ctx, "dual", broker.PolicyReviewInput{ID: pp.ID, Decision: statement.DecisionApprove, Statement: s.Statement, Signature: s.Signature, Cert: c})
	wantKind(t, err, broker.KindExists, "each key counts once")
	if h.b.Policy().Hash() != cur {
		t.Fatal("the policy changed without two admins")
	}
	h.mustVerifyOffline()
}

// A policy file with its bundle of signatures (SIGHUP, ReloadPolicy):
// refused, audited, with the missing count, until two admins signed it.
func TestPolicyBundle(t *testing.T) {
	h := withSinks(newHarness(t, testPolicy))
	old := h.b.Policy()
	np := loadPolicy(t, longerTTL)
	sig := func(who string, at time.Time) statement.Signed {
		return h.policyStatement(who, statement.DecisionApprove, testOrigin, old.Hash(), np.Hash(), "", at)
	}
	now := h.clock.Now()
	for _, tc := range []struct {
		name    string
		caller  string
		bundle  []statement.Signed
		missing int
		problem string
	}{
		{"no signatures", "", nil, 2, ""},
		{"one admin", "", []statement.Signed{sig("bob", now)}, 1, ""},
		{"one admin twice", "", []statement.Signed{sig("bob", now), sig("bob", now)}, 1, "adds nobody"},
		{"an admin and a non-admin", "", []statement.Signed{sig("bob", now), sig("erin", now)}, 1, "erin is not a policy admin"},
		{"older than the change window", "", []statement.Signed{sig("bob", now), sig("carol", now.Add(-73*time.Hour))}, 1, "sign the change again"},
		{"the caller's own", "carol", []statement.Signed{sig("bob", now), sig("carol", now)}, 1, "the proposer's own statement never counts"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := h.snap()
			_, err := h.b.ApplyPolicy(h.ctx, tc.caller, np, "new.yaml", tc.bundle)
			wantKind(t, err, broker.KindState, "more signature(s)")
			var ref *broker.RefusedError
			if !errors.As(err, &ref) || ref.Missing != tc.missing || !strings.Contains(strings.Join(ref.Problems, "\n"), tc.problem) {
				t.Fatalf("refusal %+v", ref)
			}
			if h.b.Policy().Hash() != old.Hash() {
				t.Fatal("a refused policy was put in force")
			}
			// The refusal, and nothing else, is in the log.
			after := h.snap()
			if after.head != before.head+1 || after.requests != before.requests {
				t.Fatalf("the refusal wrote %d entries", after.head-before.head)
			}
			if len(h.outbox("", "policy.refused")) == 0 {
				t.Fatal("the refusal was not announced")
			}
		})
	}
	res, err := h.b.ApplyPolicy(h.ctx, "", np, "new.yaml", []statement.Signed{sig("erin", now), sig("bob", now), sig("carol", now.Add(-30*time.Second))})
	if err != nil || !res.Changed || strings.Join(res.Signers, ",") != "bob,carol" || h.b.Policy().Hash() != np.Hash() {
		t.Fatalf("a bundle of two admins: %+v %v", res, err)
	}
	// The same file again changes nothing.
	if res, err := h.b.ApplyPolicy(h.ctx, "", np, "new.yaml", nil); err != nil || res.Changed {
		t.Fatalf("the policy in force again: %+v %v", res, err)
	}
	sum := h.mustVerifyOffline()
	if sum.PolicyRefusals != 6 || strings.Join(sum.Policies[len(sum.Policies)-1].Signers, ",") != "bob,carol" {
		t.Fatalf("summary %+v", sum)
	}
}

// The rule that judges a change is the one in force before it: a policy
// that removes two admins needs those admins.
func TestRemovingAdminsNeedsThem(t *testing.T) {
	h := newHarness(t, testPolicy)
	old := h.b.Policy()
	np := loadPolicy(t, strings.Replace(strings.Replace(testPolicy, "db-admins: [bob, carol, dual]", "db-admins: [dual, mallory, frank]", 1),
		"other: [mallory]", "other: [mallory]\n  more: [zed]", 1))
	sig := func(who string) statement.Signed {
		return h.policyStatement(who, statement.DecisionApprove, testOrigin, old.Hash(), np.Hash(), "", h.clock.Now())
	}
	// The admins it adds cannot put it in force.
	_, err := h.b.ApplyPolicy(h.ctx, "", np, "new.yaml", []statement.Signed{sig("dual"), sig("mallory"), sig("frank")})
	wantKind(t, err, broker.KindState, "1 more signature(s)")
	if _, err := h.b.ApplyPolicy(h.ctx, "", np, "new.yaml", []statement.Signed{sig("bob"), sig("carol")}); err != nil {
		t.Fatalf("the admins it removes: %v", err)
	}
	if h.b.Policy().IsPolicyAdmin("bob") || !h.b.Policy().IsPolicyAdmin("mallory") {
		t.Fatal("the admins did not change")
	}
	h.mustVerifyOffline()
}

// Another policy put in force first makes pending proposals stale; a
// proposal expires after its window through the expiry index; denials
// that leave too few admins deny it.
func TestProposalsStaleExpiredDenied(t *testing.T) {
	h := newHarness(t, testPolicy)
	np := loadPolicy(t, longerTTL)
	other := loadPolicy(t, strings.Replace(testPolicy, "deny_threshold: 2", "deny_threshold: 1", 1))
	a, _ := h.b.ProposePolicy(h.ctx, "bob", h.cert("bob").cert, np, "a.yaml", "")
	b, _ := h.b.ProposePolicy(h.ctx, "carol", h.cert("carol").cert, other, "b.yaml", "")
	if a == nil || b == nil {
		t.Fatal("proposals refused")
	}
	if _, err := h.reviewPolicy("carol", a, statement.DecisionApprove, ""); err != nil {
		t.Fatal(err)
	}
	if v, err := h.reviewPolicy("dual", a, statement.DecisionApprove, ""); err != nil || v.State != store.ProposalApplied {
		t.Fatalf("apply a: %+v %v", v, err)
	}
	got, _ := h.b.GetPolicyProposal(h.ctx, "dave", b.ID)
	if got.State != store.ProposalStale || !strings.Contains(got.Reason, "put in force first") {
		t.Fatalf("b after a: %+v", got)
	}
	_, err := h.reviewPolicy("bob", b, statement.DecisionApprove, "")
	wantKind(t, err, broker.KindState, "stale")

	// Expiry: through the index of pending proposals' expiry.
	c, err := h.b.ProposePolicy(h.ctx, "bob", h.cert("bob").cert, loadPolicy(t, testPolicy), "back.yaml", "")
	if err != nil {
		t.Fatal(err)
	}
	if n, err := h.b.ExpireProposals(h.ctx); err != nil || n != 0 {
		t.Fatalf("nothing is due yet: %d %v", n, err)
	}
	h.clock.Advance(72*time.Hour + time.Second)
	_, err = h.reviewPolicy("carol", c, statement.DecisionApprove, "")
	wantKind(t, err, broker.KindState, "expired")
	d, _ := h.b.ProposePolicy(h.ctx, "bob", h.cert("bob").cert, loadPolicy(t, testPolicy), "back.yaml", "")
	h.clock.Advance(72*time.Hour + time.Second)
	if n, err := h.b.ExpireProposals(h.ctx); err != nil || n != 1 {
		t.Fatalf("expired %d %v", n, err)
	}
	if got, _ := h.b.GetPolicyProposal(h.ctx, "dave", d.ID); got.State != store.ProposalExpired {
		t.Fatalf("d: %+v", got)
	}

	// Denials: with bob proposing, carol's denial leaves dual alone, who
	// cannot make two.
	e, _ := h.b.ProposePolicy(h.ctx, "bob", h.cert("bob").cert, loadPolicy(t, testPolicy), "back.yaml", "")
	v, err := h.reviewPolicy("carol", e, statement.DecisionDeny, "no")
	if err != nil || v.State != store.ProposalDenied {
		t.Fatalf("denied: %+v %v", v, err)
	}
	if h.b.Policy().Hash() != np.Hash() {
		t.Fatal("the policy changed")
	}
	if vs, _ := h.b.ListPolicyProposals(h.ctx, "dave"); len(vs) != 0 {
		t.Fatalf("pending: %d", len(vs))
	}
	h.mustVerifyOffline()
}

// The first policy of a log is signed by its own admins, or accepted
// unsigned only when the operator says so; a restart with a policy that
// is not signed leaves the logged one in force.
func TestGenesisAndRestart(t *testing.T) {
	h := newHarness(t, testPolicy) // signed by bob and carol (the harness signs as dev mode does)
	pl := h.lastPolicyEntry()
	if pl.Genesis != audit.GenesisSigned || len(pl.Approvals) != 2 {
		t.Fatalf("genesis %q with %d approvals", pl.Genesis, len(pl.Approvals))
	}
	sum := h.mustVerifyOffline()
	if sum.UnsignedGenesis || strings.Join(sum.Policies[0].Signers, ",") != "bob,carol" || sum.Policies[0].Genesis != audit.GenesisSigned {
		t.Fatalf("the verifier's genesis: %+v", sum.Policies[0])
	}
	if _, err := h.verifyOffline(func(o *auditverify.Options) { o.GenesisPolicy = strings.Repeat("a", 64) }); err == nil || !strings.Contains(err.Error(), "pinned genesis") {
		t.Fatalf("a pinned genesis that is not the log's: %v", err)
	}
	if _, err := h.verifyOffline(func(o *auditverify.Options) { o.GenesisPolicy = pl.Hash }); err != nil {
		t.Fatalf("the pinned genesis: %v", err)
	}

	// A fresh log: refused without signatures, signed by two of its own admins.
	fresh := func(sigs []statement.Signed, accept bool) (*broker.Broker, error) {
		st, err := openStore(h, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return broker.New(h.ctx, broker.Config{Store: st, Policy: loadPolicy(t, testPolicy), PolicySource: "policy.yaml", Keys: h.staticKeys(),
			Now: h.clock.Now, Origin: testOrigin, Certs: h.ident, PolicySignatures: sigs, AcceptUnsignedGenesis: accept})
	}
	p := loadPolicy(t, testPolicy)
	gsig := func(who string) statement.Signed {
		return h.policyStatement(who, statement.DecisionApprove, testOrigin, "", p.Hash(), "", h.clock.Now())
	}
	if _, err := fresh(nil, false); err == nil || !strings.Contains(err.Error(), "2 more signature(s)") {
		t.Fatalf("an unsigned genesis: %v", err)
	}
	if _, err := fresh([]statement.Signed{gsig("bob"), gsig("erin")}, false); err == nil || !strings.Contains(err.Error(), "1 more signature(s)") {
		t.Fatalf("a genesis with one admin: %v", err)
	}
	if _, err := fresh([]statement.Signed{gsig("bob"), gsig("carol")}, false); err != nil {
		t.Fatalf("a signed genesis: %v", err)
	}
	if b, err := fresh(nil, true); err != nil || b.Policy().Hash() != p.Hash() {
		t.Fatalf("an unsigned genesis the operator accepts: %v", err)
	}

	// A restart with a changed policy that is not signed keeps the logged one.
	var notice string
	h.b = nil
	_ = h.store.Close()
	st, err := openStore(h, "")
	if err != nil {
		t.Fatal(err)
	}
	h.store = st
	b, err := broker.New(h.ctx, broker.Config{Store: st, Policy: loadPolicy(t, longerTTL), PolicySource: "policy.yaml", Keys: h.staticKeys(),
		Now: h.clock.Now, Origin: testOrigin, Certs: h.ident, PolicyNotice: func(m string) { notice = m }})
	if err != nil {
		t.Fatal(err)
	}
	h.b = b
	if b.Policy().Hash() != pl.Hash || !strings.Contains(notice, "is not put in force: it needs 2 more signature(s)") {
		t.Fatalf("the unsigned file was put in force (notice %q)", notice)
	}
}

// A trust reset puts a policy in force without the quorum: logged as such,
// announced to every sink, reported by the verifier.
func TestTrustReset(t *testing.T) {
	h := withSinks(newHarness(t, testPolicy))
	np := loadPolicy(t, longerTTL)
	if _, err := h.b.ResetPolicy(h.ctx, "frank", "", np, "new.yaml"); err == nil {
		t.Fatal("a reset without a reason")
	}
	res, err := h.b.ResetPolicy(h.ctx, "frank", "the policy admins' keys were lost in the fire", np, "new.yaml")
	if err != nil || !res.Changed || h.b.Policy().Hash() != np.Hash() {
		t.Fatalf("reset: %+v %v", res, err)
	}
	pl := h.lastPolicyEntry()
	if pl.Reset == nil || pl.Reset.Operator != "frank" || len(pl.Approvals) != 0 {
		t.Fatalf("reset entry %+v", pl)
	}
	if len(h.outbox("", "policy.reset")) == 0 {
		t.Fatal("the reset was not announced")
	}
	sum := h.mustVerifyOffline()
	if sum.TrustResets != 1 || sum.Policies[len(sum.Policies)-1].Reset == nil {
		t.Fatalf("summary %+v", sum)
	}
}

// leafFor is a certificate naming who over key.
func (h *harness) leafFor(who string, key *ecdsa.PrivateKey) devmode.LeafOptions {
	return devmode.LeafOptions{CommonName: who, URIs: []string{"spiffe://test/user/" + who}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(29 * 24 * time.Hour), Key: key}
}

// openStore opens the harness's database, or a fresh one in dir.
func openStore(h *harness, dir string) (store.Store, error) {
	path := h.dbPath
	if dir != "" {
		path = filepath.Join(dir, "broker.db")
	}
	st, err := sqlite.Open(h.ctx, sqlite.Config{Path: path})
	if err == nil {
		h.t.Cleanup(func() { _ = st.Close() })
	}
	return st, err
}

func (h *harness) staticKeys() broker.Keys {
	minter, err := token.NewMinter(h.tokenKey, "https://broker.test")
	if err != nil {
		h.t.Fatal(err)
	}
	return broker.StaticKeys{Audit: h.audit, Tokens: minter}
}

// withSinks restarts the broker with a sink, so that events are queued.
func withSinks(h *harness) *harness {
	h.routes = notify.NewRouter([]notify.SinkConfig{{Name: "soc"}})
	h.restart(testPolicy)
	return h
}

// reload puts p in force as SIGHUP does with a policy.sigs signed by two
// policy admins of testPolicy (bob and carol, of db-admins).
func (h *harness) reload(p *policy.Policy) (*broker.PolicyReload, error) {
	h.t.Helper()
	q := p
	if q.Identity == nil {
		q = q.WithIdentity(*h.b.Policy().Identity)
	}
	return h.b.ApplyPolicy(h.ctx, "", p, "policy.yaml", h.policySigs(h.b.Policy().Hash(), q.Hash(), "bob", "carol"))
}
