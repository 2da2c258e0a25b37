package broker_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/google/uuid"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/keyid"
	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/format/statement"
	"github.com/bgbroker/breakglass/hsm"
	"github.com/bgbroker/breakglass/hsm/hsmtest"
	"github.com/bgbroker/breakglass/server/broker"
	"github.com/bgbroker/breakglass/server/devmode"
	"github.com/bgbroker/breakglass/server/identity"
	"github.com/bgbroker/breakglass/server/request"
	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/store/sqlite"
	"github.com/bgbroker/breakglass/server/token"
)

func TestMain(m *testing.M) { os.Exit(hsmtest.Main(m)) }

const testPolicy = `
auditors: auditors
relying_parties: relying
policy_admins: [{require: [{group: db-admins, approvals: 2}]}]
groups:
  sre: [alice, frank, carol]
  db-admins: [bob, carol, dual]
  security: [erin, dual]
  auditors: [dave]
  relying: [svc]
  owners: [olivia]
  other: [mallory]
accounts:
  - name: prod-db
    description: Production database superuser
    owner: owners
    requesters: [sre]
    audiences: [db.prod.example, db-replica.prod.example]
    max_ttl: 1h
    approval_window: 30m
    activation_window: 10m
    max_issuances: 2
    deny_threshold: 1
    quorum:
      - require:
          - {group: db-admins, approvals: 1}
          - {group: security, approvals: 1}
  - name: ledger
    owner: owners
    requesters: [other]
    audiences: [ledger.example]
    max_ttl: 1h
    approval_window: 30m
    activation_window: 10m
    deny_threshold: 2
    require_ticket: true
    quorum:
      - require:
          - {group: db-admins, approvals: 2}
`

// clock is a settable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// faultyKey passes through to a real HSM key and fails on command, for the
// fail-closed tests. The key underneath is real: only the answer changes.
type faultyKey struct {
	*hsm.Key
	down atomic.Bool
	// tries counts the signatures asked of the key.
	tries atomic.Int64
	// during, when set, runs once inside the next signature: something
	// another process does while the HSM signs.
	during atomic.Pointer[func()]
}

func (k *faultyKey) SignContext(ctx context.Context, d []byte, o crypto.SignerOpts) ([]byte, error) {
	k.tries.Add(1)
	if f := k.during.Swap(nil); f != nil {
		(*f)()
	}
	if k.down.Load() {
		return nil, fmt.Errorf("%w: CKR_DEVICE_ERROR (injected)", hsm.ErrUnavailable)
	}
	return k.Key.SignContext(ctx, d, o)
}

const testOrigin = "breakglass.test/log"

// principalKey is a principal's client certificate and key.
type principalKey struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

type harness struct {
	t        *testing.T
	ident    *identity.Verifier
	ca       *devmode.CA
	certs    map[string]principalKey
	b        *broker.Broker
	clock    *clock
	store    store.Store
	dbPath   string
	audit    *faultyKey
	tokenKey *faultyKey
	routes   broker.Routes
	crlFile  string
	crlN     int64
	// authorities and observer are the certificate settings of the broker.
	authorities broker.Authorities
	observer    broker.Observer
	witnesses   *broker.Witnessing
	keys        map[hsm.Purpose]*hsm.Key
	ctx         context.Context
	cancel      context.CancelFunc
}

func newHarness(t *testing.T, policyYAML string) *harness {
	t.Helper()
	tok := hsmtest.NewToken(t)
	m := tok.Open(t)
	keys := hsmtest.Keys(t, m)
	h := &harness{t: t, clock: &clock{t: time.Now().UTC().Truncate(time.Second)}, certs: map[string]principalKey{},
		audit: &faultyKey{Key: keys[hsm.PurposeAudit]}, tokenKey: &faultyKey{Key: keys[hsm.PurposeToken]},
		dbPath: filepath.Join(t.TempDir(), "broker.db"), keys: keys}
	h.ctx, h.cancel = context.WithCancel(context.Background())
	t.Cleanup(h.cancel)
	var err error
	if h.ca, err = devmode.NewCA("test client CA", 400*24*time.Hour); err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(caFile, devmode.CertPEM(h.ca.Cert), 0o644); err != nil {
		t.Fatal(err)
	}
	h.crlFile = filepath.Join(t.TempDir(), "crl.pem")
	h.revoke()
	if h.ident, err = identity.New(identity.Config{ClientCA: caFile, CRL: h.crlFile, URIPrefix: "spiffe://test/user/"}, identity.Options{Now: h.clock.Now}); err != nil {
		t.Fatal(err)
	}
	h.start(policyYAML)
	return h
}

// revoke writes a new client CA CRL revoking the certificates of
// principals (none: an empty CRL) and has the verifier load it.
func (h *harness) revoke(principals ...string) {
	h.t.Helper()
	var serials []*big.Int
	for _, p := range principals {
		serials = append(serials, h.cert(p).cert.SerialNumber)
	}
	h.crlN++
	crl, err := h.ca.CRL(h.crlN, serials...)
	if err != nil {
		h.t.Fatal(err)
	}
	if err := os.WriteFile(h.crlFile, crl, 0o644); err != nil {
		h.t.Fatal(err)
	}
	if h.ident != nil && !h.ident.ReloadCRL() {
		h.t.Fatal("the new CRL was not loaded")
	}
}

// cert returns principal's client certificate and key, issuing them once.
func (h *harness) cert(principal string) principalKey {
	if pk, ok := h.certs[principal]; ok {
		return pk
	}
	// Valid for as long as the tests move the clock on: what a principal
	// signs must verify at the time it is logged.
	c, k, err := h.ca.Issue(devmode.LeafOptions{CommonName: principal, URIs: []string{"spiffe://test/user/" + principal},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(29 * 24 * time.Hour)})
	if err != nil {
		h.t.Fatal(err)
	}
	h.certs[principal] = principalKey{c, k}
	return h.certs[principal]
}

// statement signs a review statement as principal for request id,
// binding the request's stored content.
func (h *harness) statement(principal, id string, d request.Decision, comment string) ([]byte, []byte) {
	h.t.Helper()
	var content string
	_ = h.store.View(h.ctx, func(r store.Reader) error {
		req, err := r.Request(h.ctx, id)
		if err == nil {
			content = req.Content().Digest()
		} else {
			content = statement.CommentDigest("no such request")
		}
		return nil
	})
	st := statement.Statement{Type: string(d), Origin: testOrigin, Request: id, Content: content, Comment: statement.CommentDigest(comment), Time: h.clock.Now()}
	sig, err := statement.Sign(h.cert(principal).key, st.Marshal())
	if err != nil {
		h.t.Fatal(err)
	}
	return st.Marshal(), sig
}

func (h *harness) start(policyYAML string) {
	h.t.Helper()
	p, err := policy.Load([]byte(policyYAML), "policy.yaml")
	if err != nil {
		h.t.Fatal(err)
	}
	st, err := sqlite.Open(h.ctx, sqlite.Config{Path: h.dbPath})
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { _ = st.Close() })
	h.store = st
	minter, err := token.NewMinter(h.tokenKey, "https://broker.test")
	if err != nil {
		h.t.Fatal(err)
	}
	h.b, err = broker.New(h.ctx, broker.Config{Store: st, Policy: p, PolicySource: "policy.yaml", AcceptUnsignedGenesis: true, Keys: broker.StaticKeys{Audit: h.audit, Tokens: minter}, Now: h.clock.Now,
		Origin: testOrigin, Certs: h.ident, Routes: h.routes, Authorities: h.authorities, Observer: h.observer, Witnesses: h.witnesses,
		SignPolicy: func(previous, hash string) ([]statement.Signed, error) {
			return h.policySigs(previous, hash, "bob", "carol"), nil
		}})
	if err != nil {
		h.t.Fatal(err)
	}
}

// policySigs are who's approvals of the change from previous to hash,
// as bgctl policy sign writes them: a restart with another policy is
// signed by two policy admins of testPolicy (two of db-admins), as dev
// mode signs its own.
func (h *harness) policySigs(previous, hash string, who ...string) []statement.Signed {
	var out []statement.Signed
	for _, name := range who {
		st := statement.PolicyStatement{Decision: statement.DecisionApprove, Origin: testOrigin, Previous: statement.PreviousLine(previous),
			Policy: hash, Comment: statement.CommentDigest(""), Time: h.clock.Now().UTC().Truncate(time.Second)}
		sig, err := statement.Sign(h.cert(name).key, st.Marshal())
		if err != nil {
			h.t.Fatal(err)
		}
		out = append(out, statement.Signed{Statement: st.Marshal(), Signature: sig, Certificate: h.cert(name).cert.Raw})
	}
	return out
}

// restart closes the store and builds a new broker on the same database.
func (h *harness) restart(policyYAML string) {
	h.t.Helper()
	_ = h.store.Close()
	h.start(policyYAML)
}

func (h *harness) create(caller, account string) *request.Request {
	h.t.Helper()
	res, err := h.b.CreateRequest(h.ctx, caller, h.signedCreate(caller, broker.CreateInput{Account: account, Justification: "primary is down, INC-42", Ticket: "INC-42", TTL: 30 * time.Minute}))
	if err != nil {
		h.t.Fatalf("create: %v", err)
	}
	return res.Request
}

func (h *harness) review(caller, id string, d request.Decision) (*broker.Result, error) {
	return h.b.Review(h.ctx, caller, reviewInput(h, caller, id, d))
}

func (h *harness) approved(caller string) *request.Request {
	h.t.Helper()
	r := h.create(caller, "prod-db")
	if _, err := h.review("bob", r.ID, request.Approve); err != nil {
		h.t.Fatal(err)
	}
	res, err := h.review("erin", r.ID, request.Approve)
	if err != nil {
		h.t.Fatal(err)
	}
	if res.Request.State != request.Approved {
		h.t.Fatalf("state %s after quorum", res.Request.State)
	}
	return res.Request
}

// snapshot is everything a refused call must leave alone.
type snapshot struct {
	head     uint64
	requests string
}

func (h *harness) snap() snapshot {
	h.t.Helper()
	var s snapshot
	err := h.store.View(h.ctx, func(r store.Reader) error {
		head, err := r.Head(h.ctx)
		if err != nil {
			return err
		}
		s.head = head.Size
		rs, err := r.Requests(h.ctx, store.Filter{Limit: 1000})
		if err != nil {
			return err
		}
		b, _ := json.Marshal(rs)
		s.requests = string(b)
		return nil
	})
	if err != nil {
		h.t.Fatal(err)
	}
	return s
}

// verifyChain checks every entry's link and signature: what the offline
// verifier will do, in its smallest form.
func (h *harness) verifyChain() []audit.Record {
	h.t.Helper()
	var all []audit.Record
	_ = h.store.View(h.ctx, func(r store.Reader) error {
		head, _ := r.Head(h.ctx)
		var err error
		all, err = r.Entries(h.ctx, 0, head.Size)
		return err
	})
	prev := audit.ZeroPrev
	var last time.Time
	pub := h.audit.Public().(*ecdsa.PublicKey)
	for i, rec := range all {
		e, err := audit.Parse(rec.Bytes)
		if err != nil {
			h.t.Fatalf("entry %d: %v", i, err)
		}
		if e.Index != uint64(i) || e.Prev != fmt.Sprintf("%x", prev) || string(audit.LeafHash(rec.Bytes)) != string(rec.LeafHash) {
			h.t.Fatalf("entry %d breaks the chain", i)
		}
		if e.Time.Before(last) {
			h.t.Fatalf("entry %d goes back in time", i)
		}
		if rec.Signature != nil && !audit.VerifySignature(pub, rec.Bytes, rec.Signature) {
			h.t.Fatalf("entry %d has a bad signature", i)
		}
		prev, last = rec.LeafHash, e.Time
	}
	return all
}

func kindOf(err error) broker.Kind { return broker.KindOf(err) }

func wantKind(t *testing.T, err error, k broker.Kind, msg string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want kind %d (%s)", k, msg)
	}
	if kindOf(err) != k {
		t.Fatalf("error %q has kind %d, want %d", err, kindOf(err), k)
	}
	if msg != "" && !strings.Contains(broker.PublicMessage(err), msg) {
		t.Fatalf("message %q does not contain %q", broker.PublicMessage(err), msg)
	}
}

func TestHappyPathTokenVerifiesWithJOSE(t *testing.T) {
	h := newHarness(t, testPolicy)
	r := h.create("alice", "prod-db")
	res, err := h.review("bob", r.ID, request.Approve)
	if err != nil {
		t.Fatal(err)
	}
	if res.Request.State != request.Pending {
		t.Fatalf("one approval approved the request")
	}
	h.clock.Advance(time.Minute)
	res, err = h.review("erin", r.ID, request.Approve)
	if err != nil {
		t.Fatal(err)
	}
	approvedAt := h.clock.Now()
	if res.Request.State != request.Approved || !res.Request.ApprovedAt.Equal(approvedAt) || fmt.Sprint(res.Request.Approvers) != "[bob erin]" {
		t.Fatalf("after quorum: %+v", res.Request)
	}
	h.clock.Advance(time.Minute)
	iss, err := h.b.IssueToken(h.ctx, "alice", r.ID, "db.prod.example")
	if err != nil {
		t.Fatal(err)
	}

	jwks, err := h.b.JWKS()
	if err != nil {
		t.Fatal(err)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(jwks, &set); err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.ParseSigned(iss.Token, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	hdr := tok.Headers[0]
	if hdr.KeyID != iss.KID || hdr.ExtraHeaders["typ"] != "at+jwt" || hdr.Algorithm != "ES256" {
		t.Fatalf("header %+v", hdr)
	}
	keys := set.Key(hdr.KeyID)
	if len(keys) != 1 {
		t.Fatalf("kid %s not in JWKS %s", hdr.KeyID, jwks)
	}
	var std jwt.Claims
	var priv struct {
		ClientID  string   `json:"client_id"`
		Account   string   `json:"bg_account"`
		Request   string   `json:"bg_request"`
		Approvers []string `json:"bg_approvers"`
		Drill     bool     `json:"bg_drill"`
	}
	if err := tok.Claims(keys[0].Key, &std, &priv); err != nil {
		t.Fatalf("signature: %v", err)
	}
	if err := std.ValidateWithLeeway(jwt.Expected{Issuer: "https://broker.test", AnyAudience: jwt.Audience{"db.prod.example"}, Time: h.clock.Now()}, 0); err != nil {
		t.Fatal(err)
	}
	if std.Subject != "alice" || priv.ClientID != "alice" || priv.Account != "prod-db" || priv.Request != r.ID || fmt.Sprint(priv.Approvers) != "[bob erin]" || priv.Drill {
		t.Fatalf("claims %+v %+v", std, priv)
	}
	if std.Expiry.Time().After(approvedAt.Add(30*time.Minute)) || std.ID != iss.JTI {
		t.Fatalf("exp %s after approval+TTL %s", std.Expiry.Time(), approvedAt.Add(30*time.Minute))
	}
	if iss.IssuancesLeft != 1 {
		t.Errorf("issuances left %d", iss.IssuancesLeft)
	}
	// The token appears nowhere in the store; its hash does.
	entries := h.verifyChain()
	raw, _ := os.ReadFile(h.dbPath)
	wal, _ := os.ReadFile(h.dbPath + "-wal")
	for _, b := range [][]byte{raw, wal} {
		if strings.Contains(string(b), iss.Token) || strings.Contains(string(b), strings.Split(iss.Token, ".")[2]) {
			t.Fatal("the token is stored")
		}
	}
	last := entries[len(entries)-2]
	if last.Type != audit.TypeTokenIssued || !strings.Contains(string(last.Bytes), iss.SHA256) {
		t.Fatalf("token entry %s", last.Bytes)
	}
	types := []audit.Type{}
	for _, e := range entries {
		types = append(types, e.Type)
	}
	if fmt.Sprint(types) != "[policy_loaded request_created request_reviewed request_reviewed request_approved token_issued post_review_opened]" {
		t.Errorf("entries %v", types)
	}
	check, err := h.b.CheckToken(h.ctx, "svc", iss.JTI)
	if err != nil || check.Status != broker.TokenValid {
		t.Fatalf("CheckToken = %+v %v", check, err)
	}
}

// Invariant 1: no token without quorum.
func TestNoTokenWithoutQuorum(t *testing.T) {
	h := newHarness(t, testPolicy)
	r := h.create("alice", "prod-db")
	_, err := h.b.IssueToken(h.ctx, "alice", r.ID, "db.prod.example")
	wantKind(t, err, broker.KindState, "still pending")
	if _, err := h.review("bob", r.ID, request.Approve); err != nil {
		t.Fatal(err)
	}
	_, err = h.b.IssueToken(h.ctx, "alice", r.ID, "db.prod.example")
	wantKind(t, err, broker.KindState, "still pending")

	// An approver removed from the policy after approving no longer counts
	// when the token is issued.
	r2 := h.approved("alice")
	h.restart(strings.Replace(testPolicy, "security: [erin, dual]", "security: [dual]", 1))
	before := h.snap()
	_, err = h.b.IssueToken(h.ctx, "alice", r2.ID, "db.prod.example")
	wantKind(t, err, broker.KindState, "no longer meets its quorum")
	if after := h.snap(); after != before {
		t.Fatal("a refused issuance changed the store")
	}
	h.verifyChain()
}

func TestReviewRules(t *testing.T) {
	h := newHarness(t, testPolicy)
	tests := []struct {
		name   string
		setup  func() string
		caller string
		kind   broker.Kind
		msg    string
	}{
		{"self-approval by a requester who is also an approver", func() string { return h.create("carol", "prod-db").ID },
			"carol", broker.KindPermission, "your own request"},
		{"double approval", func() string {
			id := h.create("alice", "prod-db").ID
			if _, err := h.review("bob", id, request.Approve); err != nil {
				t.Fatal(err)
			}
			return id
		}, "bob", broker.KindExists, "already reviewed"},
		{"non-member cannot even see it", func() string { return h.create("alice", "prod-db").ID }, "mallory", broker.KindNotFound, "not found"},
		{"auditor sees it but may not review", func() string { return h.create("alice", "prod-db").ID }, "dave", broker.KindPermission, "not an eligible approver"},
		{"owner sees it but may not review", func() string { return h.create("alice", "prod-db").ID }, "olivia", broker.KindPermission, "not an eligible approver"},
		{"after expiry", func() string {
			id := h.create("alice", "prod-db").ID
			h.clock.Advance(31 * time.Minute)
			return id
		}, "bob", broker.KindState, "expired"},
		{"after denial", func() string {
			id := h.create("alice", "prod-db").ID
			if _, err := h.review("erin", id, request.Deny); err != nil {
				t.Fatal(err)
			}
			return id
		}, "bob", broker.KindState, "denied"},
		{"after cancel", func() string {
			id := h.create("alice", "prod-db").ID
			if _, err := h.b.CancelRequest(h.ctx, "alice", id, ""); err != nil {
				t.Fatal(err)
			}
			return id
		}, "bob", broker.KindState, "cancelled"},
		{"after approval", func() string { return h.approved("alice").ID }, "dual", broker.KindState, "already approved"},
		{"unknown id", func() string { return "01890000-0000-7000-8000-000000000000" }, "bob", broker.KindNotFound, "not found"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := tc.setup()
			before := h.snap()
			_, err := h.review(tc.caller, id, request.Approve)
			wantKind(t, err, tc.kind, tc.msg)
			if after := h.snap(); after != before {
				t.Fatal("a refused review changed the store")
			}
		})
	}
	h.verifyChain()
}

func TestOnePersonFillsOneRequirement(t *testing.T) {
	h := newHarness(t, testPolicy)
	r := h.create("alice", "prod-db")
	res, err := h.review("dual", r.ID, request.Approve) // in db-admins and security
	if err != nil {
		t.Fatal(err)
	}
	if res.Request.State != request.Pending {
		t.Fatal("one person in two groups met an AND of two groups")
	}
	res, err = h.review("bob", r.ID, request.Approve)
	if err != nil || res.Request.State != request.Approved {
		t.Fatalf("dual+bob: %v %v", err, res.Request.State)
	}
}

// One key is one approver: a second certificate for bob's key, naming
// erin, fills no second requirement; the broker refuses the review, and
// the quorum rule would not count it either.
func TestOneKeyIsOneApprover(t *testing.T) {
	h := newHarness(t, testPolicy)
	r := h.create("alice", "prod-db")
	if _, err := h.review("bob", r.ID, request.Approve); err != nil {
		t.Fatal(err)
	}
	c, k, err := h.ca.Issue(devmode.LeafOptions{CommonName: "erin", URIs: []string{"spiffe://test/user/erin"}, Key: h.cert("bob").key,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	h.certs["erin"] = principalKey{c, k}
	before := h.snap()
	_, err = h.review("erin", r.ID, request.Approve)
	wantKind(t, err, broker.KindExists, "already reviewed request "+r.ID+" as bob; each key counts once")
	if h.snap() != before {
		t.Fatal("a refused review changed something")
	}
	delete(h.certs, "erin")
	if res, err := h.review("erin", r.ID, request.Approve); err != nil || res.Request.State != request.Approved {
		t.Fatalf("erin with her own key: %v", err)
	}
}

func TestDenyThreshold(t *testing.T) {
	h := newHarness(t, testPolicy)
	// ledger needs two denials.
	res, err := h.b.CreateRequest(h.ctx, "mallory", h.signedCreate("mallory", broker.CreateInput{Account: "ledger", Justification: "close the books", Ticket: "CHG-9"}))
	if err != nil {
		t.Fatal(err)
	}
	id := res.Request.ID
	r1, err := h.review("bob", id, request.Deny)
	if err != nil || r1.Request.State != request.Pending {
		t.Fatalf("one denial of two: %v %v", err, r1.Request.State)
	}
	r2, err := h.review("carol", id, request.Deny)
	if err != nil || r2.Request.State != request.Denied {
		t.Fatalf("second denial: %v %v", err, r2.Request.State)
	}
	if r2.Request.FinalReason != "denied by bob, carol" {
		t.Errorf("reason %q", r2.Request.FinalReason)
	}
}

func TestCreateValidation(t *testing.T) {
	h := newHarness(t, testPolicy)
	tests := []struct {
		name   string
		caller string
		in     broker.CreateInput
		kind   broker.Kind
		msg    string
	}{
		{"TTL over max", "alice", broker.CreateInput{Account: "prod-db", Justification: "x", TTL: 2 * time.Hour}, broker.KindInvalid, "exceeds the account's max_ttl"},
		{"negative TTL", "alice", broker.CreateInput{Account: "prod-db", Justification: "x", TTL: -time.Second}, broker.KindInvalid, "must be positive"},
		{"sub-second TTL", "alice", broker.CreateInput{Account: "prod-db", Justification: "x", TTL: time.Millisecond}, broker.KindInvalid, "at least one second"},
		{"unknown account", "alice", broker.CreateInput{Account: "nope", Justification: "x"}, broker.KindNotFound, "does not exist"},
		{"not a requester", "bob", broker.CreateInput{Account: "prod-db", Justification: "x"}, broker.KindPermission, "not in a requester group"},
		{"missing ticket", "mallory", broker.CreateInput{Account: "ledger", Justification: "x"}, broker.KindInvalid, "requires a ticket"},
		{"blank justification", "alice", broker.CreateInput{Account: "prod-db", Justification: "  "}, broker.KindInvalid, "justification is required"},
		{"oversize justification", "alice", broker.CreateInput{Account: "prod-db", Justification: strings.Repeat("x", 2001)}, broker.KindInvalid, "at most 2000"},
		{"control characters", "alice", broker.CreateInput{Account: "prod-db", Justification: "ok\x1b[31mred"}, broker.KindInvalid, "control character"},
		{"bidi override", "alice", broker.CreateInput{Account: "prod-db", Justification: "ok\u202edlrow"}, broker.KindInvalid, "bidirectional"},
		{"oversize ticket", "alice", broker.CreateInput{Account: "prod-db", Justification: "x", Ticket: strings.Repeat("T", 129)}, broker.KindInvalid, "at most 128"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := h.snap()
			_, err := h.b.CreateRequest(h.ctx, tc.caller, h.signedCreate(tc.caller, tc.in))
			wantKind(t, err, tc.kind, tc.msg)
			if h.snap() != before {
				t.Fatal("a refused request changed the store")
			}
		})
	}
	// A TTL left out asks for the account's max_ttl.
	res, err := h.b.CreateRequest(h.ctx, "alice", h.signedCreate("alice", broker.CreateInput{Account: "prod-db", Justification: "x"}))
	if err != nil || res.Request.TTL != time.Hour {
		t.Fatalf("default TTL: %v %v", err, res)
	}
}

func TestTokenRules(t *testing.T) {
	h := newHarness(t, testPolicy)
	r := h.approved("alice")
	before := h.snap()
	_, err := h.b.IssueToken(h.ctx, "alice", r.ID, "ledger.example")
	wantKind(t, err, broker.KindInvalid, "not one of account prod-db's audiences")
	_, err = h.b.IssueToken(h.ctx, "bob", r.ID, "db.prod.example")
	wantKind(t, err, broker.KindPermission, "only the requester")
	_, err = h.b.IssueToken(h.ctx, "mallory", r.ID, "db.prod.example")
	wantKind(t, err, broker.KindNotFound, "not found")
	if h.snap() != before {
		t.Fatal("refused issuance changed the store")
	}
	// max_issuances is 2.
	for i := range 2 {
		if _, err := h.b.IssueToken(h.ctx, "alice", r.ID, "db-replica.prod.example"); err != nil {
			t.Fatalf("token %d: %v", i, err)
		}
	}
	_, err = h.b.IssueToken(h.ctx, "alice", r.ID, "db.prod.example")
	wantKind(t, err, broker.KindState, "issued all 2 tokens")

	// Concurrent issuance never exceeds max_issuances.
	r2 := h.approved("frank")
	var wg sync.WaitGroup
	var ok atomic.Int32
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := h.b.IssueToken(h.ctx, "frank", r2.ID, "db.prod.example"); err == nil {
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	if ok.Load() != 2 {
		t.Fatalf("%d concurrent issuances succeeded, want 2", ok.Load())
	}
	h.verifyChain()
}

func TestRevocation(t *testing.T) {
	h := newHarness(t, testPolicy)
	r := h.approved("alice")
	iss, err := h.b.IssueToken(h.ctx, "alice", r.ID, "db.prod.example")
	if err != nil {
		t.Fatal(err)
	}
	_, err = h.b.RevokeGrant(h.ctx, "mallory", r.ID, "x")
	wantKind(t, err, broker.KindNotFound, "")
	_, err = h.b.RevokeGrant(h.ctx, "dave", r.ID, "x")
	wantKind(t, err, broker.KindPermission, "may revoke")
	res, err := h.b.RevokeGrant(h.ctx, "olivia", r.ID, "incident over")
	if err != nil || res.Request.State != request.Revoked {
		t.Fatalf("owner revoke: %v", err)
	}
	_, err = h.b.IssueToken(h.ctx, "alice", r.ID, "db.prod.example")
	wantKind(t, err, broker.KindState, "revoked")
	c, err := h.b.CheckToken(h.ctx, "svc", iss.JTI)
	if err != nil || c.Status != broker.TokenRevoked {
		t.Fatalf("CheckToken after revoke: %+v %v", c, err)
	}
	_, err = h.b.RevokeGrant(h.ctx, "alice", r.ID, "again")
	wantKind(t, err, broker.KindState, "revoked")
	// A pending request is cancelled, not revoked.
	p := h.create("alice", "prod-db")
	_, err = h.b.RevokeGrant(h.ctx, "alice", p.ID, "x")
	wantKind(t, err, broker.KindState, "still pending")
	_, err = h.b.CancelRequest(h.ctx, "bob", p.ID, "")
	wantKind(t, err, broker.KindPermission, "only the requester")
}

// Invariant 5: no standing access.
func TestDeadlines(t *testing.T) {
	h := newHarness(t, testPolicy)
	// Unapproved requests expire; reads see it before the sweep does.
	p := h.create("alice", "prod-db")
	h.clock.Advance(30 * time.Minute)
	got, err := h.b.GetRequest(h.ctx, "alice", p.ID)
	if err != nil || got.State != request.Expired {
		t.Fatalf("pending after approval window: %v %v", err, got.State)
	}
	// An approved grant never used expires after the activation window.
	a := h.approved("alice")
	h.clock.Advance(10 * time.Minute)
	_, err = h.b.IssueToken(h.ctx, "alice", a.ID, "db.prod.example")
	wantKind(t, err, broker.KindState, "activation window passed")

	// A used grant ends after its TTL; its tokens end no later.
	g := h.approved("alice")
	iss, err := h.b.IssueToken(h.ctx, "alice", g.ID, "db.prod.example")
	if err != nil {
		t.Fatal(err)
	}
	if iss.ExpiresAt.After(g.GrantExpiresAt) {
		t.Fatalf("token exp %s after grant end %s", iss.ExpiresAt, g.GrantExpiresAt)
	}
	h.clock.Advance(30 * time.Minute)
	_, err = h.b.IssueToken(h.ctx, "alice", g.ID, "db.prod.example")
	wantKind(t, err, broker.KindState, "grant ended")
	c, _ := h.b.CheckToken(h.ctx, "svc", iss.JTI)
	if c.Status != broker.TokenExpired {
		t.Fatalf("token after grant end: %s", c.Status)
	}
	// The sweep records all three, once.
	n, err := h.b.Sweep(h.ctx)
	if err != nil || n != 3 {
		t.Fatalf("sweep expired %d: %v", n, err)
	}
	if n, _ := h.b.Sweep(h.ctx); n != 0 {
		t.Fatalf("second sweep expired %d", n)
	}
	var expired []string
	for _, e := range h.verifyChain() {
		if e.Type == audit.TypeRequestExpired {
			expired = append(expired, string(e.Bytes))
		}
	}
	if len(expired) != 3 || !strings.Contains(expired[0], "approval window passed") {
		t.Fatalf("expiry entries %v", expired)
	}
}

// Invariant 2: fail closed for access, open for taking it away.
func TestHSMDown(t *testing.T) {
	h := newHarness(t, testPolicy)
	r := h.create("alice", "prod-db")
	if _, err := h.review("bob", r.ID, request.Approve); err != nil {
		t.Fatal(err)
	}
	g := h.approved("frank")
	pending := h.create("alice", "prod-db")

	h.audit.down.Store(true)
	h.tokenKey.down.Store(true)
	before := h.snap()
	_, err := h.review("erin", r.ID, request.Approve)
	wantKind(t, err, broker.KindUnavailable, "HSM")
	_, err = h.b.IssueToken(h.ctx, "frank", g.ID, "db.prod.example")
	wantKind(t, err, broker.KindUnavailable, "HSM")
	_, err = h.b.CreateRequest(h.ctx, "alice", h.signedCreate("alice", broker.CreateInput{Account: "prod-db", Justification: "x"}))
	wantKind(t, err, broker.KindUnavailable, "HSM")
	if h.snap() != before {
		t.Fatal("a granting call wrote while the HSM was down")
	}
	// Only the token key down: issuance still fails and writes nothing.
	h.audit.down.Store(false)
	_, err = h.b.IssueToken(h.ctx, "frank", g.ID, "db.prod.example")
	wantKind(t, err, broker.KindUnavailable, "HSM")
	if h.snap() != before {
		t.Fatal("issuance wrote without a token signature")
	}
	h.audit.down.Store(true)

	// Taking access away still works.
	if _, err := h.b.RevokeGrant(h.ctx, "frank", g.ID, "done"); err != nil {
		t.Fatalf("revoke while HSM down: %v", err)
	}
	if _, err := h.b.CancelRequest(h.ctx, "alice", pending.ID, ""); err != nil {
		t.Fatalf("cancel while HSM down: %v", err)
	}
	if _, err := h.review("erin", r.ID, request.Deny); err != nil {
		t.Fatalf("deny while HSM down: %v", err)
	}
	if n, _ := h.b.Backlog(h.ctx); n != 4 { // revoke, cancel, review, denied
		t.Fatalf("backlog %d, want 4", n)
	}
	if _, err := h.b.SignBacklog(h.ctx); err == nil {
		t.Fatal("backlog signed while the HSM is down")
	}
	h.audit.down.Store(false)
	h.tokenKey.down.Store(false)
	if n, err := h.b.SignBacklog(h.ctx); err != nil || n != 4 {
		t.Fatalf("SignBacklog = %d, %v", n, err)
	}
	for _, e := range h.verifyChain() {
		if e.Signature == nil {
			t.Fatalf("entry %d still unsigned", e.Index)
		}
	}
}

func TestVisibilityAndListing(t *testing.T) {
	h := newHarness(t, testPolicy)
	a := h.create("alice", "prod-db")
	f := h.create("frank", "prod-db")
	l, err := h.b.CreateRequest(h.ctx, "mallory", h.signedCreate("mallory", broker.CreateInput{Account: "ledger", Justification: "x", Ticket: "T-1"}))
	if err != nil {
		t.Fatal(err)
	}
	list := func(caller string, in broker.ListInput) []string {
		rs, _, err := h.b.ListRequests(h.ctx, caller, in)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, r := range rs {
			ids = append(ids, r.ID)
		}
		return ids
	}
	eq := func(name string, got []string, want ...string) {
		t.Helper()
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: %v, want %v", name, got, want)
		}
	}
	eq("alice sees her own", list("alice", broker.ListInput{}), a.ID)
	eq("bob reviews both accounts", list("bob", broker.ListInput{}), l.Request.ID, f.ID, a.ID)
	eq("erin reviews prod-db only", list("erin", broker.ListInput{}), f.ID, a.ID)
	eq("auditor sees all", list("dave", broker.ListInput{}), l.Request.ID, f.ID, a.ID)
	eq("owner sees its accounts", list("olivia", broker.ListInput{Account: "ledger"}), l.Request.ID)
	eq("stranger sees nothing", list("svc", broker.ListInput{}))
	if _, err := h.review("bob", a.ID, request.Approve); err != nil {
		t.Fatal(err)
	}
	eq("awaiting bob", list("bob", broker.ListInput{AwaitingMyReview: true}), l.Request.ID, f.ID)
	eq("mine", list("frank", broker.ListInput{Mine: true}), f.ID)
	eq("paged", list("dave", broker.ListInput{PageSize: 2}), l.Request.ID, f.ID)
	_, next, _ := h.b.ListRequests(h.ctx, "dave", broker.ListInput{PageSize: 2})
	eq("second page", list("dave", broker.ListInput{PageSize: 2, PageToken: next}), a.ID)
	_, _, err = h.b.ListRequests(h.ctx, "dave", broker.ListInput{PageToken: "garbage!"})
	wantKind(t, err, broker.KindInvalid, "page_token")
	h.clock.Advance(time.Hour)
	eq("expired in effect", list("dave", broker.ListInput{State: request.Expired}), l.Request.ID, f.ID, a.ID)
	eq("none pending", list("dave", broker.ListInput{State: request.Pending}))
	if _, err := h.b.GetRequest(h.ctx, "svc", a.ID); kindOf(err) != broker.KindNotFound {
		t.Errorf("stranger GetRequest: %v", err)
	}
	accts := h.b.Accounts("erin")
	if len(accts) != 1 || accts[0].Account.Name != "prod-db" || !accts[0].CanReview || accts[0].CanRequest {
		t.Errorf("erin's accounts: %+v", accts)
	}
	if n := len(h.b.Accounts("dave")); n != 2 {
		t.Errorf("auditor sees %d accounts", n)
	}
}

func TestPermissionDenialsAreAggregated(t *testing.T) {
	h := newHarness(t, testPolicy)
	for i := range 50 {
		h.b.RecordDenial("mallory", fmt.Sprintf("/m%d", i%3), "not an approver")
	}
	h.b.RecordDenial("svc", "/x", "no")
	before := h.snap()
	if err := h.b.FlushDenials(h.ctx, false); err != nil {
		t.Fatal(err)
	}
	if h.snap() != before {
		t.Fatal("flushed before the window closed")
	}
	h.clock.Advance(time.Minute)
	if err := h.b.FlushDenials(h.ctx, false); err != nil {
		t.Fatal(err)
	}
	var got []audit.PermissionDenied
	for _, e := range h.verifyChain() {
		if e.Type == audit.TypePermissionDenied {
			ent, _ := audit.Parse(e.Bytes)
			var pd audit.PermissionDenied
			_ = json.Unmarshal(ent.Payload, &pd)
			got = append(got, pd)
		}
	}
	if len(got) != 2 || got[0].Principal != "mallory" || got[0].Count != 50 || len(got[0].Methods) != 3 || got[1].Count != 1 {
		t.Fatalf("denial entries %+v", got)
	}
}

func TestPolicyLoggedOncePerChange(t *testing.T) {
	h := newHarness(t, testPolicy)
	h.restart(testPolicy)
	h.restart(strings.Replace(testPolicy, "max_ttl: 1h\n    approval_window: 30m\n    activation_window: 10m\n    max_issuances: 2", "max_ttl: 2h\n    approval_window: 30m\n    activation_window: 10m\n    max_issuances: 2", 1))
	var hashes []string
	for _, e := range h.verifyChain() {
		if e.Type == audit.TypePolicyLoaded {
			ent, _ := audit.Parse(e.Bytes)
			var pl audit.PolicyLoaded
			_ = json.Unmarshal(ent.Payload, &pl)
			hashes = append(hashes, pl.Hash+"<"+pl.Previous)
		}
	}
	if len(hashes) != 2 || !strings.HasSuffix(hashes[0], "<") || !strings.HasSuffix(hashes[1], "<"+strings.Split(hashes[0], "<")[0]) {
		t.Fatalf("policy entries %v", hashes)
	}
}

// A request is signed by its requester: the broker refuses one that is
// not, or whose statement says anything else, or reuses an id, and keeps
// the statement and the certificate with the request; a review signed by
// the requester's key, under whatever name, is refused.
func TestSignedRequests(t *testing.T) {
	h := newHarness(t, testPolicy)
	in := broker.CreateInput{Account: "prod-db", Justification: "primary is down", Ticket: "INC-1", TTL: 30 * time.Minute}
	good := h.signedCreate("alice", in)
	before := h.snap()
	tests := []struct {
		name string
		in   broker.CreateInput
		kind broker.Kind
		why  string
	}{
		{"unsigned", in, broker.KindInvalid, "a request must carry a request statement"},
		{"signed by someone else", func() broker.CreateInput { x := h.signedCreate("mallory", in); return x }(), broker.KindUnauthenticated, "names mallory, not alice"},
		{"another key's signature", func() broker.CreateInput { x := good; x.Signature = h.signedCreate("alice", in).Signature; return x }(), broker.KindInvalid, "signature does not verify"},
		{"for another account", func() broker.CreateInput { x := good; x.Account = "ledger"; return x }(), broker.KindPermission, "requester group"},
		{"a longer grant than signed", func() broker.CreateInput { x := good; x.TTL = time.Hour; return x }(), broker.KindInvalid, "asks for 1800 seconds, not 3600"},
		{"another justification", func() broker.CreateInput { x := good; x.Justification = "something else"; return x }(), broker.KindInvalid, "justification is not the request's"},
		{"a solo request signed as an ordinary one", func() broker.CreateInput { x := good; x.Solo = true; return x }(), broker.KindState, "solo"},
		{"another ticket", func() broker.CreateInput { x := good; x.Ticket = "INC-2"; return x }(), broker.KindInvalid, "ticket is not the request's"},
		{"the account's longest grant, signed as 30 minutes", func() broker.CreateInput { x := good; x.TTL = 0; return x }(), broker.KindInvalid, "asks for 1800 seconds, not 3600"},
		{"another log", func() broker.CreateInput {
			x := good
			st, _ := statement.ParseRequest(x.Statement)
			st.Origin = "other.example/log"
			x.Statement = st.Marshal()
			x.Signature, _ = statement.Sign(h.cert("alice").key, x.Statement)
			return x
		}(), broker.KindInvalid, "is for log"},
		{"a stale statement", func() broker.CreateInput { return signedBy(h.cert("alice"), h.clock.Now().Add(-10*time.Minute), in) }(), broker.KindInvalid, "from the broker's clock"},
		{"garbage", func() broker.CreateInput {
			x := good
			x.Statement = []byte("breakglass request statement v1\n")
			return x
		}(), broker.KindInvalid, "malformed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.b.CreateRequest(h.ctx, "alice", tc.in)
			wantKind(t, err, tc.kind, tc.why)
			if h.snap() != before {
				t.Fatal("a refused request changed something")
			}
		})
	}
	res, err := h.b.CreateRequest(h.ctx, "alice", good)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := statement.ParseRequest(good.Statement)
	if res.Request.ID != st.ID || res.Request.RequesterKey() != keyid.SPKI(h.cert("alice").cert.RawSubjectPublicKeyInfo) {
		t.Fatalf("request %s, key %s: not the signed id and key", res.Request.ID, res.Request.RequesterKey())
	}
	var stored *request.Request
	if err := h.store.View(h.ctx, func(r store.Reader) error {
		var err error
		stored, err = r.Request(h.ctx, res.Request.ID)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(stored.Signed.Statement, good.Statement) || !bytes.Equal(stored.Signed.Cert, h.cert("alice").cert.Raw) {
		t.Fatal("the statement and certificate are not stored with the request")
	}
	before = h.snap()
	_, err = h.b.CreateRequest(h.ctx, "alice", good)
	wantKind(t, err, broker.KindExists, "already exists")
	if h.snap() != before {
		t.Fatal("a reused statement changed something")
	}
	// alice's key in a certificate naming carol, an approver.
	c, _, err := h.ca.Issue(devmode.LeafOptions{CommonName: "carol", URIs: []string{"spiffe://test/user/carol"}, Key: h.cert("alice").key,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	h.certs["carol"] = principalKey{c, h.cert("alice").key}
	_, err = h.review("carol", res.Request.ID, request.Approve)
	wantKind(t, err, broker.KindPermission, "signed request "+res.Request.ID+" as its requester (alice)")
	if h.snap() != before {
		t.Fatal("a refused review changed something")
	}
	// And the quorum rule never counts it, were it stored.
	p := h.b.Policy()
	a, _ := p.Account("prod-db")
	o := policy.EvaluateSigned(p, a.Quorum, policy.Approval{Principal: "alice", Key: res.Request.RequesterKey()},
		[]policy.Approval{{Principal: "carol", Key: res.Request.RequesterKey()}, {Principal: "erin", Key: "sha256:e"}})
	if o.Met || len(o.Counted) != 1 {
		t.Fatalf("the requester's key counted: %+v", o)
	}
}

// The identity rule is part of the policy: a reload that would name
// anyone with open work differently is refused and the rule in force
// stays; once the work has ended, the new rule is logged with the policy
// and applied to every caller.
func TestIdentityRuleChangeWaitsForOpenWork(t *testing.T) {
	h := newHarness(t, testPolicy)
	r := h.create("alice", "prod-db")
	if _, err := h.review("bob", r.ID, request.Approve); err != nil {
		t.Fatal(err)
	}
	wider := "identity: {mode: uri, uri_prefix: \"spiffe://test/\"}\n" + testPolicy
	p, err := policy.Load([]byte(wider), "policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if p.Hash() == h.b.Policy().Hash() {
		t.Fatal("the identity rule is not part of the policy's hash")
	}
	before := h.snap()
	_, err = h.reload(p)
	wantKind(t, err, broker.KindState, "would name people with open work differently")
	for _, want := range []string{"reviewer bob of request " + r.ID + " would be nobody", "requester alice of request " + r.ID + " would be nobody"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the refusal does not say %q: %v", want, err)
		}
	}
	if h.snap() != before || h.b.Policy().Identity.URIPrefix != "spiffe://test/user/" {
		t.Fatal("a refused identity change changed something")
	}
	if mode, prefix := h.ident.Describe(); mode != "uri" || prefix != "spiffe://test/user/" {
		t.Fatalf("the rule in force changed to %s %s", mode, prefix)
	}
	if _, err := h.b.CancelRequest(h.ctx, "alice", r.ID, "done"); err != nil {
		t.Fatal(err)
	}
	res, err := h.reload(p)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Weakens || !strings.Contains(strings.Join(res.Changes, "\n"), "WEAKENS identity") {
		t.Fatalf("the identity change is not marked: %v", res.Changes)
	}
	if _, prefix := h.ident.Describe(); prefix != "spiffe://test/" {
		t.Fatalf("the new rule is not in force: %s", prefix)
	}
	if _, err := h.ident.Principal(h.cert("bob").cert); err == nil {
		t.Fatal("a certificate is still named by the old rule")
	}
}

func TestWatch(t *testing.T) {
	h := newHarness(t, testPolicy)
	r := h.create("alice", "prod-db")
	states := make(chan request.State, 10)
	done := make(chan error, 1)
	go func() {
		done <- h.b.Watch(h.ctx, "alice", r.ID, func(r *request.Request) error { states <- r.State; return nil })
	}()
	if s := <-states; s != request.Pending {
		t.Fatalf("first %s", s)
	}
	if _, err := h.review("bob", r.ID, request.Approve); err != nil {
		t.Fatal(err)
	}
	if s := <-states; s != request.Pending {
		t.Fatalf("after one review %s", s)
	}
	if _, err := h.review("erin", r.ID, request.Approve); err != nil {
		t.Fatal(err)
	}
	if s := <-states; s != request.Approved {
		t.Fatalf("after quorum %s", s)
	}
	if _, err := h.b.RevokeGrant(h.ctx, "alice", r.ID, "done"); err != nil {
		t.Fatal(err)
	}
	if s := <-states; s != request.Revoked {
		t.Fatalf("after revoke %s", s)
	}
	if err := <-done; err != nil {
		t.Fatalf("watch ended with %v", err)
	}
	// Watches per principal are bounded.
	ctx, cancel := context.WithCancel(h.ctx)
	defer cancel()
	p := h.create("alice", "prod-db")
	started := make(chan struct{}, 16)
	for range 16 {
		go func() {
			_ = h.b.Watch(ctx, "alice", p.ID, func(*request.Request) error { started <- struct{}{}; return nil })
		}()
	}
	for range 16 {
		<-started
	}
	err := h.b.Watch(ctx, "alice", p.ID, func(*request.Request) error { return nil })
	wantKind(t, err, broker.KindExhausted, "watch streams")
	if err := h.b.Watch(ctx, "mallory", p.ID, func(*request.Request) error { return nil }); kindOf(err) != broker.KindNotFound {
		t.Fatalf("stranger watch: %v", err)
	}
	if errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
}

// Every review carries a statement signed by the reviewer's own key; each
// way it can be wrong is refused with InvalidArgument and changes nothing.
func TestSignedReviews(t *testing.T) {
	h := newHarness(t, testPolicy)
	r := h.create("alice", "prod-db")
	other := h.create("frank", "prod-db")
	good := func() ([]byte, []byte) { return h.statement("bob", r.ID, request.Approve, "ok") }
	sign := func(principal string, st statement.Statement) ([]byte, []byte) {
		sig, err := statement.Sign(h.cert(principal).key, st.Marshal())
		if err != nil {
			t.Fatal(err)
		}
		return st.Marshal(), sig
	}
	base := func() statement.Statement {
		s, _ := good()
		st, err := statement.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	tests := []struct {
		name     string
		stmt     func() ([]byte, []byte)
		comment  string
		decision request.Decision
		cert     string
		msg      string
	}{
		{"missing statement", func() ([]byte, []byte) { return nil, nil }, "ok", request.Approve, "bob", "must carry a statement"},
		{"missing signature", func() ([]byte, []byte) { s, _ := good(); return s, nil }, "ok", request.Approve, "bob", "must carry a statement"},
		{"malformed statement", func() ([]byte, []byte) { _, sig := good(); return []byte("approve please\n"), sig }, "ok", request.Approve, "bob", "malformed"},
		{"signature by another key", func() ([]byte, []byte) {
			st := base()
			sig, _ := statement.Sign(h.cert("erin").key, st.Marshal())
			return st.Marshal(), sig
		}, "ok", request.Approve, "bob", "does not verify"},
		{"signature over altered content", func() ([]byte, []byte) {
			st := base()
			st.Content = statement.Content{ID: r.ID, Account: "prod-db", Requester: "alice", Justification: "something else"}.Digest()
			return sign("bob", st)
		}, "ok", request.Approve, "bob", "other content"},
		{"replayed from another request", func() ([]byte, []byte) { return h.statement("bob", other.ID, request.Approve, "ok") }, "ok", request.Approve, "bob", "is for request"},
		{"from another deployment", func() ([]byte, []byte) { st := base(); st.Origin = "other.example/log"; return sign("bob", st) }, "ok", request.Approve, "bob", "is for log"},
		{"a deny statement sent as an approval", func() ([]byte, []byte) { return h.statement("bob", r.ID, request.Deny, "ok") }, "ok", request.Approve, "bob", "says deny"},
		{"another comment", func() ([]byte, []byte) { return good() }, "something else", request.Approve, "bob", "comment digest"},
		{"clock far ahead", func() ([]byte, []byte) { st := base(); st.Time = st.Time.Add(6 * time.Minute); return sign("bob", st) }, "ok", request.Approve, "bob", "from the broker's clock"},
		{"clock far behind", func() ([]byte, []byte) { st := base(); st.Time = st.Time.Add(-6 * time.Minute); return sign("bob", st) }, "ok", request.Approve, "bob", "from the broker's clock"},
		{"non-canonical time", func() ([]byte, []byte) {
			s, _ := good()
			s = []byte(strings.Replace(string(s), "Z\n", "+00:00\n", 1))
			sig, _ := statement.Sign(h.cert("bob").key, s)
			return s, sig
		}, "ok", request.Approve, "bob", "malformed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := h.snap()
			stmt, sig := tc.stmt()
			_, err := h.b.Review(h.ctx, "bob", broker.ReviewInput{ID: r.ID, Decision: tc.decision, Comment: tc.comment, Statement: stmt, Signature: sig, Cert: h.cert(tc.cert).cert})
			wantKind(t, err, broker.KindInvalid, tc.msg)
			if h.snap() != before {
				t.Fatal("a refused review changed the store")
			}
		})
	}
	// A statement within the allowed skew is accepted.
	st := base()
	st.Time = st.Time.Add(-4 * time.Minute)
	stmt, sig := sign("bob", st)
	if _, err := h.b.Review(h.ctx, "bob", broker.ReviewInput{ID: r.ID, Decision: request.Approve, Comment: "ok", Statement: stmt, Signature: sig, Cert: h.cert("bob").cert}); err != nil {
		t.Fatalf("statement 4 minutes old: %v", err)
	}
}

// IssueToken re-verifies the stored signed reviews: an approval whose
// stored signature was altered, or whose certificate is no longer valid,
// does not count.
func TestIssuanceReverifiesStoredReviews(t *testing.T) {
	h := newHarness(t, testPolicy)
	r := h.approved("alice")
	db, err := sql.Open("sqlite", "file:"+h.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`UPDATE reviews SET signature = x'3006020101020101' WHERE request_id = ? AND reviewer = 'erin'`, r.ID); err != nil {
		t.Fatal(err)
	}
	_, err = h.b.IssueToken(h.ctx, "alice", r.ID, "db.prod.example")
	wantKind(t, err, broker.KindState, "no longer meets its quorum")

	// A stored review time moved away from the statement's time no longer
	// matches it.
	r2 := h.approved("frank")
	if _, err := db.Exec(`UPDATE reviews SET at = at + 3600000000000 WHERE request_id = ? AND reviewer = 'bob'`, r2.ID); err != nil {
		t.Fatal(err)
	}
	_, err = h.b.IssueToken(h.ctx, "frank", r2.ID, "db.prod.example")
	wantKind(t, err, broker.KindState, "no longer meets its quorum")
}

// Two replicas on one store with different policies: the one whose policy
// is not the one last logged refuses to create, approve and issue, says so,
// and still revokes, cancels and denies.
func TestReplicaWithAnotherPolicyRefusesToGrant(t *testing.T) {
	h := newHarness(t, testPolicy)
	grant := h.approved("alice")
	pending := h.create("alice", "prod-db")
	other := h.create("alice", "prod-db")
	oldB := h.b
	if err := oldB.PolicyAgreement(h.ctx); err != nil {
		t.Fatalf("agreement before the change: %v", err)
	}

	// Replica B starts with a changed policy, signed by two policy admins,
	// and logs it.
	st, err := sqlite.Open(h.ctx, sqlite.Config{Path: h.dbPath})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	p := loadPolicy(t, strings.Replace(testPolicy, "max_ttl: 1h", "max_ttl: 2h", 1))
	minter, _ := token.NewMinter(h.tokenKey, "https://broker.test")
	newB, err := broker.New(h.ctx, broker.Config{Store: st, Policy: p, PolicySource: "policy.yaml", Keys: broker.StaticKeys{Audit: h.audit, Tokens: minter},
		Now: h.clock.Now, Origin: testOrigin, Certs: h.ident, PolicySignatures: h.policySigs(oldB.Policy().Hash(), p.Hash(), "carol", "dual")})
	if err != nil {
		t.Fatal(err)
	}
	if err := newB.PolicyAgreement(h.ctx); err != nil {
		t.Fatalf("the new replica disagrees with the log: %v", err)
	}
	err = oldB.PolicyAgreement(h.ctx)
	wantKind(t, err, broker.KindUnavailable, "policy in force")

	before := h.snap()
	_, err = oldB.CreateRequest(h.ctx, "alice", h.signedCreate("alice", broker.CreateInput{Account: "prod-db", Justification: "x", Ticket: "INC-1", TTL: time.Minute}))
	wantKind(t, err, broker.KindUnavailable, "policy in force")
	_, err = oldB.IssueToken(h.ctx, "alice", grant.ID, "db.prod.example")
	wantKind(t, err, broker.KindUnavailable, "policy in force")
	if _, err := oldB.Review(h.ctx, "bob", reviewInput(h, "bob", pending.ID, request.Approve)); err != nil {
		t.Fatalf("the first approval (no quorum yet) was refused: %v", err)
	}
	after1 := h.snap()
	_, err = oldB.Review(h.ctx, "erin", reviewInput(h, "erin", pending.ID, request.Approve))
	wantKind(t, err, broker.KindUnavailable, "policy in force")
	if h.snap() != after1 || after1.head != before.head+1 {
		t.Fatal("a refused grant changed the store")
	}

	// Taking access away still works on the stale replica.
	if _, err := oldB.RevokeGrant(h.ctx, "alice", grant.ID, "done"); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	if _, err := oldB.CancelRequest(h.ctx, "alice", other.ID, ""); err != nil {
		t.Fatalf("cancel: %v", err)
	}
	if res, err := oldB.Review(h.ctx, "erin", reviewInput(h, "erin", pending.ID, request.Deny)); err != nil || res.Request.State != request.Denied {
		t.Fatalf("deny: %v", err)
	}
	// The replica with the policy in force grants.
	res, err := newB.CreateRequest(h.ctx, "alice", h.signedCreate("alice", broker.CreateInput{Account: "prod-db", Justification: "x", Ticket: "INC-1", TTL: time.Minute}))
	if err != nil {
		t.Fatal(err)
	}
	h.b = newB
	if _, err := h.review("bob", res.Request.ID, request.Approve); err != nil {
		t.Fatal(err)
	}
	if r, err := h.review("erin", res.Request.ID, request.Approve); err != nil || r.Request.State != request.Approved {
		t.Fatalf("approve on the agreeing replica: %v", err)
	}
	// The stale replica follows the log: it puts in force the policy the
	// log recorded, whose statements it checks, and grants again.
	if err := oldB.FollowPolicy(h.ctx); err != nil {
		t.Fatal(err)
	}
	if oldB.Policy().Hash() != p.Hash() || oldB.PolicyAgreement(h.ctx) != nil {
		t.Fatalf("the old replica did not follow the log: %s", oldB.Policy().Hash())
	}
	h.verifyChain()
}

func reviewInput(h *harness, caller, id string, d request.Decision) broker.ReviewInput {
	stmt, sig := h.statement(caller, id, d, "ok")
	return broker.ReviewInput{ID: id, Decision: d, Comment: "ok", Statement: stmt, Signature: sig, Cert: h.cert(caller).cert}
}

// A retried create or review with the same idempotency key answers from
// the first call and writes nothing; a key reused for something else is
// refused; keys are per principal.
func TestIdempotencyKeys(t *testing.T) {
	h := newHarness(t, testPolicy)
	in := broker.CreateInput{Account: "prod-db", Justification: "primary is down", Ticket: "INC-7", TTL: 30 * time.Minute, IdempotencyKey: "k-1"}
	first, err := h.b.CreateRequest(h.ctx, "alice", h.signedCreate("alice", in))
	if err != nil || first.Replayed {
		t.Fatalf("first create: %+v %v", first, err)
	}
	before := h.snap()
	again, err := h.b.CreateRequest(h.ctx, "alice", h.signedCreate("alice", in))
	if err != nil || !again.Replayed || again.Request.ID != first.Request.ID || again.Entry.Index != first.Entry.Index {
		t.Fatalf("retried create: %+v %v", again, err)
	}
	if h.snap() != before {
		t.Fatal("a retried create wrote something")
	}
	changed := in
	changed.Justification = "something else"
	_, err = h.b.CreateRequest(h.ctx, "alice", h.signedCreate("alice", changed))
	wantKind(t, err, broker.KindInvalid, "already used idempotency key")
	// Another principal's key space is their own.
	if _, err := h.b.CreateRequest(h.ctx, "frank", h.signedCreate("frank", in)); err != nil {
		t.Fatalf("same key, another principal: %v", err)
	}

	rv := reviewInput(h, "bob", first.Request.ID, request.Approve)
	rv.IdempotencyKey = "r-1"
	r1, err := h.b.Review(h.ctx, "bob", rv)
	if err != nil || r1.Replayed {
		t.Fatal(err)
	}
	before = h.snap()
	r2, err := h.b.Review(h.ctx, "bob", rv)
	if err != nil || !r2.Replayed || r2.Entry.Index != r1.Entry.Index {
		t.Fatalf("retried review: %+v %v", r2, err)
	}
	if h.snap() != before {
		t.Fatal("a retried review wrote something")
	}
	// Without the key, the second review is the duplicate it is.
	rv.IdempotencyKey = ""
	_, err = h.b.Review(h.ctx, "bob", rv)
	wantKind(t, err, broker.KindExists, "already reviewed")
	// The quorum still needs the second approver.
	if res, err := h.review("erin", first.Request.ID, request.Approve); err != nil || res.Request.State != request.Approved {
		t.Fatalf("quorum: %v", err)
	}
	h.verifyChain()
}

// After a signature that had to succeed fails, granting calls are refused
// at once for a moment instead of each waiting on the HSM inside the one
// write transaction; revocations go on unsigned; a caller hanging up does
// not count as an HSM failure.
func TestHSMBackoff(t *testing.T) {
	h := newHarness(t, testPolicy)
	g := h.approved("frank")
	h.audit.down.Store(true)
	_, err := h.b.CreateRequest(h.ctx, "alice", h.signedCreate("alice", broker.CreateInput{Account: "prod-db", Justification: "x"}))
	wantKind(t, err, broker.KindUnavailable, "HSM")
	tries := h.audit.tries.Load()
	for range 5 {
		_, err := h.b.CreateRequest(h.ctx, "alice", h.signedCreate("alice", broker.CreateInput{Account: "prod-db", Justification: "x"}))
		wantKind(t, err, broker.KindUnavailable, "HSM")
	}
	if _, err := h.b.RevokeGrant(h.ctx, "frank", g.ID, "done"); err != nil {
		t.Fatalf("revoke during the backoff: %v", err)
	}
	if got := h.audit.tries.Load(); got != tries {
		t.Fatalf("%d signatures tried during the backoff", got-tries)
	}
	// After the backoff the HSM is tried again, and works.
	h.audit.down.Store(false)
	h.clock.Advance(time.Second + time.Millisecond)
	if _, err := h.b.CreateRequest(h.ctx, "alice", h.signedCreate("alice", broker.CreateInput{Account: "prod-db", Justification: "x"})); err != nil {
		t.Fatalf("after the backoff: %v", err)
	}
	// A caller who hangs up mid-signature does not start a backoff.
	cctx, cancel := context.WithCancel(h.ctx)
	cancel()
	_, _ = h.b.CreateRequest(cctx, "alice", h.signedCreate("alice", broker.CreateInput{Account: "prod-db", Justification: "x"}))
	if _, err := h.b.CreateRequest(h.ctx, "alice", h.signedCreate("alice", broker.CreateInput{Account: "prod-db", Justification: "x"})); err != nil {
		t.Fatalf("after a cancelled caller: %v", err)
	}
	h.verifyChain()
}

// signedBy is in with its request statement signed by pk, dated now: what
// bgctl and the SDK send.
func signedBy(pk principalKey, now time.Time, in broker.CreateInput) broker.CreateInput {
	id, err := uuid.NewV7()
	if err != nil {
		panic(err)
	}
	st := statement.Request{Origin: testOrigin, ID: id.String(), Account: in.Account, TTLSeconds: int64(in.TTL / time.Second), Drill: in.Drill, Solo: in.Solo,
		Ticket: in.Ticket, Justification: in.Justification, Time: now.UTC().Truncate(time.Second)}
	in.Statement = st.Marshal()
	sig, err := statement.Sign(pk.key, in.Statement)
	if err != nil {
		panic(err)
	}
	in.Signature, in.Cert = sig, pk.cert
	return in
}

// signed is in as caller signs it.
func (h *harness) signedCreate(caller string, in broker.CreateInput) broker.CreateInput {
	return signedBy(h.cert(caller), h.clock.Now(), in)
}

// signed is in as caller signs it.
func (w *world) signedCreate(caller string, in broker.CreateInput) broker.CreateInput {
	return signedBy(w.cert(caller), w.clock.Now(), in)
}
