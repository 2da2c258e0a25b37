package test

import (
	"bufio"
	"context"
	"crypto"
	"crypto/tls"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/bgbroker/breakglass/client"
	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/statement"
	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
	"github.com/bgbroker/breakglass/server/devmode"
)

// hostilePolicy has principals in two roles (carol requests and approves;
// frank is in both groups of prod-db's quorum) and an account with short
// windows and a single issuance.
const hostilePolicy = `auditors: auditors
groups:
  sre: [alice, carol]
  db-admins: [bob, carol, frank]
  security: [erin, frank]
  db-owners: [carol]
  auditors: [dave, zoe]
accounts:
  - name: prod-db
    owner: db-owners
    requesters: [sre]
    audiences: [db.prod.example]
    max_ttl: 1h
    approval_window: 30m
    activation_window: 15m
    max_issuances: 3
    quorum:
      - require:
          - {group: db-admins, approvals: 1}
          - {group: security, approvals: 1}
  - name: quick
    owner: db-owners
    requesters: [sre]
    audiences: [quick.example]
    max_ttl: 1h
    approval_window: 3s
    activation_window: 1h
    max_issuances: 1
    quorum:
      - require:
          - {group: db-admins, approvals: 1}
`

// rawCodec sends and receives bytes as they are, to put on the wire what
// no generated client would.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error)      { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v any) error { *(v.(*[]byte)) = data; return nil }
func (rawCodec) Name() string                       { return "proto" }

// hostileState is everything a refused call must leave alone: requests
// (state, issuances, version, reviews), token records, the outbox of
// notifications, and the log beyond permission_denied entries (and the
// checkpoints announced as the log grows with them).
func hostileState(t *testing.T, d *devBroker) (string, int) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+d.state("broker.db")+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var tokens, outbox, entries int
	// Checkpoints follow the log's growth, permission_denied entries too.
	if err := db.QueryRow(`SELECT (SELECT COUNT(*) FROM tokens), (SELECT COUNT(*) FROM outbox WHERE type != 'checkpoint.signed'),
		(SELECT COUNT(*) FROM entries WHERE type != 'permission_denied')`).Scan(&tokens, &outbox, &entries); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%s|tokens %d|outbox %d", d.snapshot(), tokens, outbox), entries
}

// The hostile-input matrix: every case names the attack and the code and
// message it must get, and leaves requests, grants, tokens, notifications
// and the log (beyond the aggregated permission_denied entries) as they
// were. The log verifies at the end.
func TestHostileInputMatrix(t *testing.T) {
	dir := newServeDir(t, func(cfg []byte) []byte {
		return append(cfg, []byte("limits: {rate_per_second: 50, burst: 100, handshake_timeout: 2s}\ndebug: {pprof: \"127.0.0.1:0\"}\n")...)
	})
	if err := os.WriteFile(filepath.Join(dir, "state", "policy.yaml"), []byte(hostilePolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	// A policy of its own from the first start: an unsigned genesis.
	d := &devBroker{t: t, dir: dir, serve: true, extra: []string{"--accept-unsigned-genesis"}}
	d.start()
	t.Cleanup(d.stop)
	d.exportAuditKey()
	ctx := context.Background()

	ca := d.devCA()
	foreign, err := devmode.NewCA("someone else's CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(ca *devmode.CA, o devmode.LeafOptions) *tls.Config {
		cert, key, err := ca.Issue(o)
		if err != nil {
			t.Fatal(err)
		}
		return tlsFor(t, d.caPool(), cert, key)
	}
	who := func(name string) *client.Client {
		if _, err := os.Stat(d.state("identities", name+".crt")); err == nil {
			return d.client(name)
		}
		return d.clientTLS(issue(ca, devmode.LeafOptions{CommonName: name, URIs: []string{devmode.URIPrefix + name}}))
	}
	bobURIs := []string{devmode.URIPrefix + "bob"}
	c := map[string]*client.Client{}
	for _, p := range []string{"alice", "bob", "carol", "erin", "frank", "dave", "zoe"} {
		c[p] = who(p)
	}
	create := func(name, account, justification string) *bgv1.Request {
		t.Helper()
		r, err := c[name].CreateRequest(ctx, &bgv1.CreateRequestRequest{Account: account, Justification: justification})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetRequest()
	}
	approve := func(name string, r *bgv1.Request) {
		t.Helper()
		if _, err := c[name].Review(ctx, r, bgv1.ReviewDecision_REVIEW_DECISION_APPROVE, ""); err != nil {
			t.Fatalf("%s approves: %v", name, err)
		}
	}
	// Fixtures: a request in every state the cases need.
	pending := create("alice", "prod-db", "pending")
	carols := create("carol", "prod-db", "carol's own")
	frankHalf := create("alice", "prod-db", "frank approves once")
	approve("frank", frankHalf)
	approved := create("alice", "prod-db", "approved")
	approve("bob", approved)
	approve("erin", approved)
	denied := create("alice", "prod-db", "denied")
	if _, err := c["erin"].Review(ctx, denied, bgv1.ReviewDecision_REVIEW_DECISION_DENY, "no"); err != nil {
		t.Fatal(err)
	}
	cancelled := create("alice", "prod-db", "cancelled")
	if _, err := c["alice"].CancelRequest(ctx, &bgv1.CancelRequestRequest{Id: cancelled.GetId()}); err != nil {
		t.Fatal(err)
	}
	revoked := create("alice", "prod-db", "revoked")
	approve("bob", revoked)
	approve("erin", revoked)
	if _, err := c["alice"].RevokeGrant(ctx, &bgv1.RevokeGrantRequest{RequestId: revoked.GetId(), Reason: "done"}); err != nil {
		t.Fatal(err)
	}
	exhausted := create("alice", "quick", "one token only")
	approve("bob", exhausted)
	if _, err := c["alice"].IssueToken(ctx, &bgv1.IssueTokenRequest{RequestId: exhausted.GetId(), Audience: "quick.example"}); err != nil {
		t.Fatal(err)
	}
	shortGrant, err := c["alice"].CreateRequest(ctx, &bgv1.CreateRequestRequest{Account: "quick", Justification: "one second", RequestedTtl: dur(time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	approve("bob", shortGrant.GetRequest())
	lapsed := create("alice", "quick", "approval window of 3s")
	// Connections opened while their certificates were good: one of bob's
	// whose certificate is then revoked, one whose certificate expires in
	// a second. Both must carry no call after that (DESIGN §4.3).
	bobRevokedCert, bobRevokedKey, err := ca.Issue(devmode.LeafOptions{CommonName: "bob", URIs: bobURIs})
	if err != nil {
		t.Fatal(err)
	}
	bobRevokedTLS := tlsFor(t, d.caPool(), bobRevokedCert, bobRevokedKey)
	bobRevoked := d.clientTLS(bobRevokedTLS)
	shortEnd := time.Now().Add(time.Second)
	bobExpiring := d.clientTLS(issue(ca, devmode.LeafOptions{CommonName: "bob", URIs: bobURIs, NotBefore: time.Now().Add(-time.Minute), NotAfter: shortEnd}))
	for _, cl := range []*client.Client{bobRevoked, bobExpiring} {
		if _, err := cl.ListAccounts(ctx, &bgv1.ListAccountsRequest{}); err != nil {
			t.Fatalf("bob's connection before the revocation and the expiry: %v", err)
		}
	}
	crl, err := ca.CRL(2, bobRevokedCert.SerialNumber)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(d.state("ca", "crl.pem"), crl, 0o644); err != nil {
		t.Fatal(err)
	}
	// The short grant and the approval window end, the sweep records
	// both, the short certificate expires and the broker loads the new
	// CRL (a new connection with the revoked certificate is refused in
	// the handshake) before the matrix starts: nothing may change while
	// it runs.
	if !eventually(90*time.Second, func() bool {
		if !strings.Contains(d.snapshot(), lapsed.GetId()+" EXPIRED") || !strings.Contains(d.snapshot(), shortGrant.GetRequest().GetId()+" EXPIRED") ||
			!time.Now().After(shortEnd.Add(time.Second)) {
			return false
		}
		cc, err := client.Dial(client.Options{Addr: d.ready.GRPC, TLS: bobRevokedTLS})
		if err != nil {
			return false
		}
		defer cc.Close()
		_, err = cc.ListAccounts(ctx, &bgv1.ListAccountsRequest{})
		return status.Code(err) == codes.Unauthenticated && strings.Contains(err.Error(), `"bad certificate"`)
	}) {
		t.Fatalf("the sweep did not record the expiries or the CRL was not loaded: %s", d.snapshot())
	}

	// Statements an attacker might replay or forge.
	origin, err := c["bob"].Origin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bobKey, erinKey := tlsFromFiles(t, d, "bob").Certificates[0].PrivateKey.(crypto.Signer), tlsFromFiles(t, d, "erin").Certificates[0].PrivateKey.(crypto.Signer)
	signFor := func(key crypto.Signer, r *bgv1.Request, content statement.Content) ([]byte, []byte) {
		st := statement.Statement{Type: statement.TypeApprove, Origin: origin, Request: r.GetId(), Content: content.Digest(),
			Comment: statement.CommentDigest(""), Time: time.Now().UTC().Truncate(time.Second)}
		sig, err := statement.Sign(key, st.Marshal())
		if err != nil {
			t.Fatal(err)
		}
		return st.Marshal(), sig
	}
	otherStmt, otherSig := signFor(bobKey, approved, client.ContentOf(approved))
	altered := client.ContentOf(pending)
	altered.Justification = "something the requester never wrote"
	alteredStmt, alteredSig := signFor(bobKey, pending, altered)
	erinStmt, erinSig := signFor(erinKey, pending, client.ContentOf(pending))

	// A raw connection as alice, for bytes no generated client sends.
	aliceTLS := tlsFromFiles(t, d, "alice")
	raw, err := grpc.NewClient(d.ready.GRPC, grpc.WithTransportCredentials(credentials.NewTLS(aliceTLS)))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	invalidUTF8 := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), []byte("prod-db"))
	invalidUTF8 = protowire.AppendBytes(protowire.AppendTag(invalidUTF8, 2, protowire.BytesType), []byte("db down \xff\xfe"))

	// Connections are made lazily: make them all before counting, so the
	// count after the matrix compares like with like.
	for name, cl := range c {
		if _, err := cl.ListAccounts(ctx, &bgv1.ListAccountsRequest{}); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	raw.Connect()
	goroutines := d.metric("go_goroutines")
	watchCtx, stopWatches := context.WithCancel(ctx)
	defer stopWatches()

	create1 := func(name string, in *bgv1.CreateRequestRequest) func() error {
		return func() error { _, err := c[name].CreateRequest(ctx, in); return err }
	}
	review := func(name string, in *bgv1.ReviewRequestRequest) func() error {
		return func() error { _, err := c[name].ReviewRequest(ctx, in); return err }
	}
	signedReview := func(name string, r *bgv1.Request) func() error {
		return func() error {
			_, err := c[name].Review(ctx, r, bgv1.ReviewDecision_REVIEW_DECISION_APPROVE, "")
			return err
		}
	}
	issueTok := func(name, id, aud string) func() error {
		return func() error {
			_, err := c[name].IssueToken(ctx, &bgv1.IssueTokenRequest{RequestId: id, Audience: aud})
			return err
		}
	}
	withTLS := func(tc *tls.Config) func() error {
		return func() error {
			cc, err := client.Dial(client.Options{Addr: d.ready.GRPC, TLS: tc})
			if err != nil {
				return err
			}
			defer cc.Close()
			_, err = cc.GetRequest(ctx, &bgv1.GetRequestRequest{Id: pending.GetId()})
			return err
		}
	}
	approveID := bgv1.ReviewDecision_REVIEW_DECISION_APPROVE
	bobURI := []string{devmode.URIPrefix + "bob"}

	tests := []struct {
		attack string
		call   func() error
		want   codes.Code
		msg    string
	}{
		// Who is calling.
		// Refused in the TLS handshake; the SDK names the alert, the
		// certificate and what to set.
		{"no client certificate", withTLS(&tls.Config{MinVersion: tls.VersionTLS13, RootCAs: d.caPool()}), codes.Unauthenticated, `this client has none (TLS alert "certificate required"): set --cert and --key (BGCTL_CERT and BGCTL_KEY`},
		{"certificate from another CA", withTLS(issue(foreign, devmode.LeafOptions{CommonName: "bob", URIs: bobURI})), codes.Unauthenticated, `is not from that CA, so it was not sent; set --cert and --key (BGCTL_CERT and BGCTL_KEY`},
		{"expired certificate", withTLS(issue(ca, devmode.LeafOptions{CommonName: "bob", URIs: bobURI, NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour)})), codes.Unauthenticated, `expired by this machine's clock): it is expired or not yet valid by the broker's clock (TLS alert "expired certificate"); renew it`},
		{"not yet valid certificate", withTLS(issue(ca, devmode.LeafOptions{CommonName: "bob", URIs: bobURI, NotBefore: time.Now().Add(24 * time.Hour), NotAfter: time.Now().Add(48 * time.Hour)})), codes.Unauthenticated, `not yet valid by this machine's clock): it is expired or not yet valid by the broker's clock (TLS alert "expired certificate")`},
		{"revoked certificate", withTLS(bobRevokedTLS), codes.Unauthenticated, `(TLS alert "bad certificate"): it is revoked, not yet or no longer valid`},
		{"certificate without a URI SAN", withTLS(issue(ca, devmode.LeafOptions{CommonName: "bob"})), codes.Unauthenticated, "no URI SAN under"},
		{"certificate naming two principals", withTLS(issue(ca, devmode.LeafOptions{CommonName: "bob", URIs: []string{devmode.URIPrefix + "bob", devmode.URIPrefix + "erin"}})), codes.Unauthenticated, "exactly one"},
		{"URI SAN outside the trust domain", withTLS(issue(ca, devmode.LeafOptions{CommonName: "bob", URIs: []string{"spiffe://evil.example/user/bob"}})), codes.Unauthenticated, "no URI SAN under"},
		{"URI SAN with an uppercase scheme", withTLS(issue(ca, devmode.LeafOptions{CommonName: "bob", RawURIs: []string{strings.Replace(devmode.URIPrefix, "spiffe://", "SPIFFE://", 1) + "bob"}})), codes.Unauthenticated, "no URI SAN under"},
		{"URI SAN with an uppercase trust domain", withTLS(issue(ca, devmode.LeafOptions{CommonName: "bob", RawURIs: []string{strings.Replace(devmode.URIPrefix, "breakglass.dev", "BREAKGLASS.DEV", 1) + "bob"}})), codes.Unauthenticated, "no URI SAN under"},
		{"CA certificate as a client certificate", withTLS(issue(ca, devmode.LeafOptions{CommonName: "bob", URIs: bobURI, IsCA: true})), codes.Unauthenticated, "CA certificate"},
		{"open connection after revocation", func() error {
			_, err := bobRevoked.GetRequest(ctx, &bgv1.GetRequestRequest{Id: pending.GetId()})
			return err
		}, codes.Unauthenticated, "(serial " + bobRevokedCert.SerialNumber.String() + ") was revoked"},
		{"open connection after expiry", func() error {
			_, err := bobExpiring.GetRequest(ctx, &bgv1.GetRequestRequest{Id: pending.GetId()})
			return err
		}, codes.Unauthenticated, "validity period"},
		{"approval by a revoked approver", func() error {
			_, err := bobRevoked.Review(ctx, pending, bgv1.ReviewDecision_REVIEW_DECISION_APPROVE, "")
			return err
		}, codes.Unauthenticated, "(serial " + bobRevokedCert.SerialNumber.String() + ") was revoked"},
		{"approval by an expired approver", func() error {
			_, err := bobExpiring.Review(ctx, pending, bgv1.ReviewDecision_REVIEW_DECISION_APPROVE, "")
			return err
		}, codes.Unauthenticated, "validity period"},
		{"principal not in the policy", withTLS(issue(ca, devmode.LeafOptions{CommonName: "mallory", URIs: []string{devmode.URIPrefix + "mallory"}})), codes.PermissionDenied, "not in the broker's policy"},
		{"principal spoofed in metadata", func() error {
			mctx := metadata.AppendToOutgoingContext(ctx, "x-principal", "alice", "x-forwarded-client-cert", "URI="+devmode.URIPrefix+"alice")
			_, err := c["bob"].CancelRequest(mctx, &bgv1.CancelRequestRequest{Id: pending.GetId()})
			return err
		}, codes.PermissionDenied, "only the requester"},
		{"a request hidden from a non-participant", func() error {
			_, err := c["zoe"].CancelRequest(ctx, &bgv1.CancelRequestRequest{Id: carols.GetId()})
			return err
		}, codes.PermissionDenied, "only the requester"},

		// Reviews.
		{"self-approval", signedReview("carol", carols), codes.PermissionDenied, "your own request"},
		{"double approval", signedReview("frank", frankHalf), codes.AlreadyExists, "counts once"},
		{"one person filling two requirements", signedReview("frank", frankHalf), codes.AlreadyExists, "counts once"},
		{"approval by an auditor", signedReview("dave", pending), codes.PermissionDenied, "not an eligible approver"},
		{"review of a request the caller may not see", signedReview("alice", carols), codes.NotFound, "not found"},
		{"approval after expiry", signedReview("bob", lapsed), codes.FailedPrecondition, "expired"},
		{"approval after denial", signedReview("bob", denied), codes.FailedPrecondition, "denied"},
		{"approval after cancel", signedReview("bob", cancelled), codes.FailedPrecondition, "cancelled"},
		{"approval after approval", signedReview("carol", approved), codes.FailedPrecondition, "already approved"},
		{"approval without a signed statement", review("bob", &bgv1.ReviewRequestRequest{Id: pending.GetId(), Decision: approveID}), codes.InvalidArgument, "signed with your client certificate"},
		{"signed approval replayed from another request", review("bob", &bgv1.ReviewRequestRequest{Id: pending.GetId(), Decision: approveID, Statement: otherStmt, Signature: otherSig}), codes.InvalidArgument, "does not match"},
		{"signature over altered content", review("bob", &bgv1.ReviewRequestRequest{Id: pending.GetId(), Decision: approveID, Statement: alteredStmt, Signature: alteredSig}), codes.InvalidArgument, "does not match"},
		{"someone else's signed approval", review("bob", &bgv1.ReviewRequestRequest{Id: pending.GetId(), Decision: approveID, Statement: erinStmt, Signature: erinSig}), codes.InvalidArgument, "does not verify"},
		{"garbage statement", review("bob", &bgv1.ReviewRequestRequest{Id: pending.GetId(), Decision: approveID, Statement: []byte("approve everything\n"), Signature: []byte{1, 2, 3}}), codes.InvalidArgument, "statement"},
		{"unspecified decision", review("bob", &bgv1.ReviewRequestRequest{Id: pending.GetId()}), codes.InvalidArgument, "decision"},
		{"decision out of range", review("bob", &bgv1.ReviewRequestRequest{Id: pending.GetId(), Decision: 42}), codes.InvalidArgument, "decision"},
		{"oversize comment", review("bob", &bgv1.ReviewRequestRequest{Id: pending.GetId(), Decision: bgv1.ReviewDecision_REVIEW_DECISION_DENY, Comment: strings.Repeat("y", 2001)}), codes.InvalidArgument, "comment"},

		// Creating requests.
		{"requester outside the requester groups", create1("bob", &bgv1.CreateRequestRequest{Account: "prod-db", Justification: "x"}), codes.PermissionDenied, "not in a requester group"},
		{"unknown account", create1("alice", &bgv1.CreateRequestRequest{Account: "nope", Justification: "x"}), codes.NotFound, "does not exist"},
		{"SQL in the account name", create1("alice", &bgv1.CreateRequestRequest{Account: "prod-db' OR '1'='1", Justification: "x"}), codes.InvalidArgument, "account"},
		{"SQL in the ticket", create1("alice", &bgv1.CreateRequestRequest{Account: "prod-db", Justification: "x", Ticket: "INC-1'); DROP TABLE requests;--"}), codes.InvalidArgument, "ticket"},
		{"TTL zero", create1("alice", &bgv1.CreateRequestRequest{Account: "prod-db", Justification: "x", RequestedTtl: dur(0)}), codes.InvalidArgument, "requested_ttl"},
		{"TTL negative", create1("alice", &bgv1.CreateRequestRequest{Account: "prod-db", Justification: "x", RequestedTtl: dur(-time.Hour)}), codes.InvalidArgument, "requested_ttl"},
		{"TTL not whole seconds", create1("alice", &bgv1.CreateRequestRequest{Account: "prod-db", Justification: "x", RequestedTtl: dur(30*time.Minute + 500*time.Millisecond)}), codes.InvalidArgument, "whole number of seconds"},
		{"TTL over max_ttl", create1("alice", &bgv1.CreateRequestRequest{Account: "prod-db", Justification: "x", RequestedTtl: dur(2 * time.Hour)}), codes.InvalidArgument, "max_ttl"},
		{"empty justification", create1("alice", &bgv1.CreateRequestRequest{Account: "prod-db"}), codes.InvalidArgument, "justification"},
		{"oversize justification", create1("alice", &bgv1.CreateRequestRequest{Account: "prod-db", Justification: strings.Repeat("x", 2001)}), codes.InvalidArgument, "justification"},
		{"oversize ticket", create1("alice", &bgv1.CreateRequestRequest{Account: "prod-db", Justification: "x", Ticket: "INC-" + strings.Repeat("9", 200)}), codes.InvalidArgument, "ticket"},
		{"terminal escape in the justification", create1("alice", &bgv1.CreateRequestRequest{Account: "prod-db", Justification: "ok\x1b]0;pwned\x07"}), codes.InvalidArgument, "justification"},
		{"bidi override in the justification", create1("alice", &bgv1.CreateRequestRequest{Account: "prod-db", Justification: "approve \u202egnp.exe"}), codes.InvalidArgument, "justification"},
		{"NUL in the justification", create1("alice", &bgv1.CreateRequestRequest{Account: "prod-db", Justification: "a\x00b"}), codes.InvalidArgument, "justification"},
		{"hostile idempotency key", create1("alice", &bgv1.CreateRequestRequest{Account: "prod-db", Justification: "x", IdempotencyKey: "../../etc/passwd"}), codes.InvalidArgument, "idempotency_key"},
		{"invalid UTF-8 in a string field", func() error {
			var out []byte
			return raw.Invoke(ctx, "/breakglass.v1.RequestService/CreateRequest", &invalidUTF8, &out, grpc.ForceCodec(rawCodec{}))
		}, codes.Internal, "invalid UTF-8"},
		{"message over the size limit", create1("alice", &bgv1.CreateRequestRequest{Account: "prod-db", Justification: strings.Repeat("x", 100<<10)}), codes.ResourceExhausted, "larger than max"},

		// Ids.
		{"SQL in an id", func() error {
			_, err := c["alice"].GetRequest(ctx, &bgv1.GetRequestRequest{Id: "'; DROP TABLE requests; --"})
			return err
		}, codes.InvalidArgument, "id"},
		{"absent id", func() error { _, err := c["alice"].GetRequest(ctx, &bgv1.GetRequestRequest{}); return err }, codes.InvalidArgument, "id"},
		{"well-formed id of no request", func() error {
			_, err := c["alice"].GetRequest(ctx, &bgv1.GetRequestRequest{Id: "01890000-0000-7000-8000-000000000000"})
			return err
		}, codes.NotFound, ""},

		// Tokens.
		{"token for an unapproved request", issueTok("alice", pending.GetId(), "db.prod.example"), codes.FailedPrecondition, "still pending"},
		{"token for an expired grant", issueTok("alice", shortGrant.GetRequest().GetId(), "quick.example"), codes.FailedPrecondition, "expired"},
		{"token for a revoked grant", issueTok("alice", revoked.GetId(), "db.prod.example"), codes.FailedPrecondition, "revoked"},
		{"token for an exhausted grant", issueTok("alice", exhausted.GetId(), "quick.example"), codes.FailedPrecondition, "issued all 1 tokens"},
		{"token for a denied request", issueTok("alice", denied.GetId(), "db.prod.example"), codes.FailedPrecondition, "denied"},
		{"token by a non-requester", issueTok("bob", approved.GetId(), "db.prod.example"), codes.PermissionDenied, "only the requester"},
		{"token for another account's audience", issueTok("alice", approved.GetId(), "quick.example"), codes.InvalidArgument, "audiences"},
		{"CheckToken on an unknown jti", func() error {
			_, err := c["dave"].CheckToken(ctx, &bgv1.CheckTokenRequest{Jti: "7b3f4f8e-0000-4000-8000-000000000000"})
			return err
		}, codes.NotFound, "no token"},
		{"CheckToken by a requester", func() error {
			_, err := c["alice"].CheckToken(ctx, &bgv1.CheckTokenRequest{Jti: "7b3f4f8e-0000-4000-8000-000000000000"})
			return err
		}, codes.PermissionDenied, "relying parties and auditors"},
		{"revocation by an auditor", func() error {
			_, err := c["dave"].RevokeGrant(ctx, &bgv1.RevokeGrantRequest{RequestId: approved.GetId(), Reason: "x"})
			return err
		}, codes.PermissionDenied, "may revoke"},

		// Load.
		{"a flood of calls from one principal", func() error {
			var (
				wg    sync.WaitGroup
				mu    sync.Mutex
				first error
			)
			for range 20 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range 20 {
						if _, err := c["zoe"].ListRequests(ctx, &bgv1.ListRequestsRequest{}); status.Code(err) == codes.ResourceExhausted {
							mu.Lock()
							first = cmpOr(first, err)
							mu.Unlock()
						}
					}
				}()
			}
			wg.Wait()
			return first
		}, codes.ResourceExhausted, "rate limit"},
		{"too many watch streams from one principal", func() error {
			for i := range 17 {
				s, err := c["alice"].WatchRequest(watchCtx, &bgv1.WatchRequestRequest{Id: pending.GetId()})
				if err == nil {
					_, err = s.Recv()
				}
				if err != nil {
					if i < 16 {
						return fmt.Errorf("stream %d refused: %w", i, err)
					}
					return err
				}
			}
			return nil
		}, codes.ResourceExhausted, "watch streams"},
		{"a TLS handshake that never starts", func() error {
			conn, err := net.Dial("tcp", d.ready.GRPC)
			if err != nil {
				return err
			}
			defer conn.Close()
			return closedByPeer(conn, 60*time.Second, "gRPC")
		}, codes.Unavailable, "closed by the broker"},
		{"a slowloris HTTP client", func() error {
			u, _ := url.Parse(d.ready.Issuer)
			conn, err := tls.Dial("tcp", u.Host, &tls.Config{RootCAs: d.caPool(), ServerName: "localhost"})
			if err != nil {
				return err
			}
			defer conn.Close()
			// Headers that never end, a byte at a time.
			if _, err := conn.Write([]byte("GET /healthz HTTP/1.1\r\nHost: localhost\r\n")); err != nil {
				return err
			}
			go func() {
				for range 60 {
					if _, err := conn.Write([]byte("X")); err != nil {
						return
					}
					time.Sleep(500 * time.Millisecond)
				}
			}()
			return closedByPeer(conn, 60*time.Second, "HTTPS")
		}, codes.Unavailable, "closed by the broker"},
	}
	if len(tests) < 40 {
		t.Fatalf("the matrix has %d cases", len(tests))
	}
	for _, tc := range tests {
		t.Run(tc.attack, func(t *testing.T) {
			before, entries := hostileState(t, d)
			err := tc.call()
			if status.Code(err) != tc.want || !strings.Contains(fmt.Sprint(err), tc.msg) {
				t.Fatalf("got %v, want %s containing %q", err, tc.want, tc.msg)
			}
			if after, n := hostileState(t, d); after != before || n != entries {
				t.Fatalf("the refused call changed state:\n%s", stateDiff(before, after, entries, n))
			}
		})
	}
	stopWatches()

	// The attacks left no goroutines behind.
	var after float64
	eventually(30*time.Second, func() bool { after = d.metric("go_goroutines"); return after <= goroutines+5 })
	if after > goroutines+5 {
		t.Errorf("goroutines: %.0f before the matrix, %.0f after:\n%s", goroutines, after, d.goroutineDump())
	}
	// The refusals are on record, aggregated (a clean stop flushes the
	// current minute's), and the log verifies.
	d.restart()
	denials := 0
	for _, e := range d.chain() {
		if e.Type == audit.TypePermissionDenied {
			denials++
		}
	}
	if denials == 0 {
		t.Error("no permission_denied entry recorded the refusals")
	}
	if r := d.exportAudit(t).verify(t); r.code != 0 {
		t.Fatalf("the log does not verify after the matrix: %+v", r)
	}
	t.Logf("%d hostile cases, each refused with its code and message and nothing changed; %d permission_denied entries", len(tests), denials)
}

// stateDiff shows the parts of two hostileState results that differ.
func stateDiff(before, after string, n0, n1 int) string {
	b, a := strings.Split(before, "|"), strings.Split(after, "|")
	var out []string
	for i := range max(len(a), len(b)) {
		var x, y string
		if i < len(b) {
			x = b[i]
		}
		if i < len(a) {
			y = a[i]
		}
		if x != y {
			out = append(out, fmt.Sprintf("%q -> %q", x, y))
		}
	}
	return fmt.Sprintf("%s; entries %d -> %d", strings.Join(out, ", "), n0, n1)
}

func cmpOr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// goroutineDump is the daemon's goroutine profile (debug.pprof must be
// on), for failure messages.
func (d *devBroker) goroutineDump() string {
	resp, err := http.Get("http://" + d.ready.Pprof + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 20000))
	return string(b)
}

// closedByPeer reads from conn until the broker closes it, which must
// happen within limit (a liveness bound: the broker's own timeouts are far
// shorter).
func closedByPeer(conn net.Conn, limit time.Duration, what string) error {
	_ = conn.SetReadDeadline(time.Now().Add(limit))
	_, err := io.Copy(io.Discard, bufio.NewReader(conn))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("the %s connection was still open after %s", what, limit)
	}
	return status.Errorf(codes.Unavailable, "the %s connection was closed by the broker", what)
}

// eventually polls ok for up to limit and reports whether it held.
func eventually(limit time.Duration, ok func() bool) bool {
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if ok() {
			return true
		}
	}
	return ok()
}

// tlsFromFiles is the mTLS configuration of a dev identity.
func tlsFromFiles(t *testing.T, d *devBroker, name string) *tls.Config {
	t.Helper()
	tc, err := client.TLSConfig(d.state("ca", "ca.crt"), d.state("identities", name+".crt"), d.state("identities", name+".key"))
	if err != nil {
		t.Fatal(err)
	}
	return tc
}
