package test

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	gojose "github.com/go-jose/go-jose/v4"
	gojwt "github.com/go-jose/go-jose/v4/jwt"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/lestrrat-go/jwx/v3/jwt"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	_ "modernc.org/sqlite"

	"github.com/bgbroker/breakglass/format/audit"
	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
	"github.com/bgbroker/breakglass/server/devmode"
)

// chain reads the audit log straight from the database file, as a second
// process, and checks every link and signature.
func (d *devBroker) chain() []audit.Record {
	d.t.Helper()
	db, err := sql.Open("sqlite", "file:"+d.state("broker.db")+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		d.t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(`SELECT idx, body, leaf_hash, signature FROM entries ORDER BY idx`)
	if err != nil {
		d.t.Fatal(err)
	}
	defer rows.Close()
	pubPEM, err := os.ReadFile(d.state("audit.pem"))
	if err != nil {
		d.t.Fatal(err)
	}
	blk, _ := pem.Decode(pubPEM)
	pub, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		d.t.Fatal(err)
	}
	var out []audit.Record
	prev := audit.ZeroPrev
	for rows.Next() {
		var r audit.Record
		var idx int64
		if err := rows.Scan(&idx, &r.Bytes, &r.LeafHash, &r.Signature); err != nil {
			d.t.Fatal(err)
		}
		r.Index = uint64(idx)
		e, err := audit.Parse(r.Bytes)
		if err != nil {
			d.t.Fatal(err)
		}
		if e.Index != r.Index || e.Prev != fmt.Sprintf("%x", prev) || string(audit.LeafHash(r.Bytes)) != string(r.LeafHash) {
			d.t.Fatalf("audit entry %d breaks the chain", idx)
		}
		if r.Signature == nil || !audit.VerifySignature(pub.(*ecdsa.PublicKey), r.Bytes, r.Signature) {
			d.t.Fatalf("audit entry %d is unsigned or badly signed", idx)
		}
		r.Type = e.Type
		out = append(out, r)
		prev = r.LeafHash
	}
	return out
}

// exportAuditKey writes the audit key's PEM with `breakglassd hsm pubkey`.
func (d *devBroker) exportAuditKey() {
	d.t.Helper()
	out := must(d.t, os.Environ(), bin.breakglassd, "hsm", "pubkey", "--config", d.state("config.yaml"), "--label", devmode.AuditKeyLabel)
	if err := os.WriteFile(d.state("audit.pem"), []byte(out), 0o600); err != nil {
		d.t.Fatal(err)
	}
}

// The whole flow as people run it: bgctl for everyone, dev mode's
// identities, a token that an outside JOSE library verifies against the
// HTTPS JWKS.
func TestDevModeFlowWithBgctl(t *testing.T) {
	d := startDev(t)
	d.exportAuditKey()

	// alice asks and waits.
	wait := startBg(t, d.env("alice"), bin.bgctl, "request", "--account", "prod-db", "--justification", "primary database is down", "--ttl", "20m", "--wait")
	var id string
	deadline := time.Now().Add(20 * time.Second)
	for id == "" && time.Now().Before(deadline) {
		out := d.mustBgctl("bob", "list", "--awaiting-my-review", "-o", "json")
		var l struct {
			Requests []struct{ ID string } `json:"requests"`
		}
		_ = json.Unmarshal([]byte(out), &l)
		if len(l.Requests) == 1 {
			id = l.Requests[0].ID
		} else {
			time.Sleep(50 * time.Millisecond)
		}
	}
	if id == "" {
		t.Fatal("bob never saw the request")
	}
	if r := d.bgctl("alice", "approve", id, "--yes"); r.code == 0 || !strings.Contains(r.stderr, "PermissionDenied: you cannot review your own request") {
		t.Errorf("self-approval: %+v", r)
	}
	d.mustBgctl("bob", "approve", id, "--comment", "verified the outage", "--yes")
	if r := d.bgctl("bob", "approve", id, "--yes"); r.code == 0 || !strings.Contains(r.stderr, "AlreadyExists") {
		t.Errorf("double approval: %+v", r)
	}
	if r := d.bgctl("carol", "token", id, "--audience", "db.prod.example"); r.code == 0 || !strings.Contains(r.stderr, "FailedPrecondition") && !strings.Contains(r.stderr, "PermissionDenied") {
		t.Errorf("token by a non-requester: %+v", r)
	}
	d.mustBgctl("erin", "approve", id, "--yes")
	res := wait.wait(t)
	if res.code != 0 || !strings.Contains(res.stdout, "is APPROVED by bob, erin") {
		t.Fatalf("request --wait: %+v", res)
	}

	out := d.bgctl("alice", "token", id, "--audience", "db.prod.example")
	if out.code != 0 {
		t.Fatalf("token: %+v", out)
	}
	tok := strings.TrimSpace(out.stdout)
	if strings.Count(tok, ".") != 2 || strings.Contains(tok, "\n") {
		t.Fatalf("token output is not a compact JWT alone: %q", out.stdout)
	}
	show := d.mustBgctl("alice", "show", id, "-o", "json")
	var shown struct {
		Request struct {
			ApproveTime string `json:"approve_time"`
			GrantExpire string `json:"grant_expire_time"`
		} `json:"request"`
	}
	if err := json.Unmarshal([]byte(show), &shown); err != nil {
		t.Fatal(err)
	}
	approved, _ := time.Parse(time.RFC3339Nano, shown.Request.ApproveTime)

	// An outside JOSE library (jwx) verifies the token against the HTTPS JWKS.
	hc := d.httpClient()
	resp, err := hc.Get(d.ready.Issuer + "/.well-known/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	jwksBody, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/jwk-set+json") {
		t.Errorf("JWKS content type %q", ct)
	}
	set, err := jwk.Parse(jwksBody)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := jwt.Parse([]byte(tok), jwt.WithKeySet(set), jwt.WithValidate(true), jwt.WithIssuer(d.ready.Issuer), jwt.WithAudience("db.prod.example"))
	if err != nil {
		t.Fatalf("jwx: %v", err)
	}
	exp, _ := parsed.Expiration()
	if exp.After(approved.Add(20 * time.Minute)) {
		t.Errorf("exp %s is after approval %s + TTL", exp, approved)
	}
	sub, _ := parsed.Subject()
	var acct string
	_ = parsed.Get("bg_account", &acct)
	if sub != "alice" || acct != "prod-db" {
		t.Errorf("sub %q bg_account %q", sub, acct)
	}
	msg, err := jws.Parse([]byte(tok))
	if err != nil {
		t.Fatal(err)
	}
	if typ, _ := msg.Signatures()[0].ProtectedHeaders().Type(); typ != "at+jwt" {
		t.Errorf("typ %q", typ)
	}
	if _, err := jwt.Parse([]byte(tok), jwt.WithKeySet(set), jwt.WithValidate(true), jwt.WithAudience("other.example")); err == nil {
		t.Error("jwx accepted the token for another audience")
	}

	// go-jose against the same JWKS.
	var gset gojose.JSONWebKeySet
	if err := json.Unmarshal(jwksBody, &gset); err != nil {
		t.Fatal(err)
	}
	gt, err := gojwt.ParseSigned(tok, []gojose.SignatureAlgorithm{gojose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	var gc gojwt.Claims
	if err := gt.Claims(gset.Key(gt.Headers[0].KeyID)[0].Key, &gc); err != nil {
		t.Fatalf("go-jose: %v", err)
	}

	// RFC 8414 metadata names the issuer and the JWKS.
	resp, err = hc.Get(d.ready.Issuer + "/.well-known/oauth-authorization-server")
	if err != nil {
		t.Fatal(err)
	}
	var meta map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&meta)
	resp.Body.Close()
	if meta["issuer"] != d.ready.Issuer || meta["jwks_uri"] != d.ready.Issuer+"/.well-known/jwks.json" {
		t.Errorf("metadata %v", meta)
	}
	resp, err = hc.Get(d.ready.Issuer + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz: %v %v", err, resp)
	}
	resp.Body.Close()

	// The HSM's signatures are counted by purpose: the token, and the
	// audit entries of the flow.
	resp, err = hc.Get("http://" + d.ready.Metrics + "/metrics")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("metrics: %v %v", err, resp)
	}
	metricsBody, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, purpose := range []string{"token", "audit"} {
		m := regexp.MustCompile(`(?m)^breakglass_hsm_signatures_total\{key="[^"]+",purpose="` + purpose + `"\} ([0-9.e+]+)$`).FindSubmatch(metricsBody)
		if m == nil {
			t.Fatalf("no %s signature counter in /metrics:\n%s", purpose, metricsBody)
		}
		if n, err := strconv.ParseFloat(string(m[1]), 64); err != nil || n < 1 {
			t.Errorf("%s signatures counted: %s", purpose, m[1])
		}
	}

	// The SDK's verifier and bgctl verify-token agree.
	v := d.mustBgctl("dave", "verify-token", tok, "--audience", "db.prod.example", "--check")
	if !strings.HasPrefix(v, "valid: sub alice") {
		t.Errorf("verify-token: %s", v)
	}
	if r := d.bgctl("dave", "verify-token", tok, "--audience", "ledger.example"); r.code == 0 {
		t.Error("verify-token accepted the wrong audience")
	}

	// Revocation: the grant ends, later issuance is refused, CheckToken says so.
	jtiStr, _ := parsed.JwtID()
	d.mustBgctl("bob", "revoke", id, "--reason", "outage over")
	if r := d.bgctl("alice", "token", id, "--audience", "db.prod.example"); r.code == 0 || !strings.Contains(r.stderr, "FailedPrecondition") {
		t.Errorf("token after revoke: %+v", r)
	}
	if r := d.bgctl("dave", "check", jtiStr); r.code != 3 || !strings.Contains(r.stdout, "REVOKED") {
		t.Errorf("check after revoke: %+v", r)
	}
	if r := d.bgctl("dave", "verify-token", tok, "--audience", "db.prod.example", "--check"); r.code == 0 || !strings.Contains(r.stderr, "revoked") {
		t.Errorf("verify-token --check after revoke: %+v", r)
	}

	// The token is nowhere in the database; the log chains and verifies.
	db, _ := os.ReadFile(d.state("broker.db"))
	wal, _ := os.ReadFile(d.state("broker.db-wal"))
	sig := tok[strings.LastIndex(tok, ".")+1:]
	if strings.Contains(string(db)+string(wal), sig) {
		t.Error("the token's signature is in the database")
	}
	var types []string
	for _, e := range d.chain() {
		types = append(types, string(e.Type))
	}
	want := "policy_loaded key_activated key_activated key_activated key_activated key_activated request_created request_reviewed request_reviewed request_approved token_issued post_review_opened grant_revoked"
	if strings.Join(types, " ") != want {
		t.Errorf("audit entries:\n %s\nwant\n %s", strings.Join(types, " "), want)
	}
	if strings.Contains(d.logs.String(), tok) || strings.Contains(d.logs.String(), sig) {
		t.Error("the daemon logged the token")
	}
}

// grpcurl, as a new user would: reflection lists the services and health
// says SERVING.
func TestGrpcurl(t *testing.T) {
	grpcurl := needTool(t, "grpcurl")
	d := startDev(t)
	tlsArgs := []string{"-cacert", d.state("ca", "ca.crt"), "-cert", d.state("identities", "dave.crt"), "-key", d.state("identities", "dave.key")}
	list := must(t, os.Environ(), grpcurl, append(tlsArgs, d.ready.GRPC, "list")...)
	for _, s := range []string{"breakglass.v1.RequestService", "breakglass.v1.ReviewService", "breakglass.v1.TokenService", "breakglass.v1.AccountService", "grpc.health.v1.Health"} {
		if !strings.Contains(list, s) {
			t.Errorf("grpcurl list lacks %s:\n%s", s, list)
		}
	}
	health := must(t, os.Environ(), grpcurl, append(tlsArgs, d.ready.GRPC, "grpc.health.v1.Health/Check")...)
	if !strings.Contains(health, `"SERVING"`) {
		t.Errorf("health: %s", health)
	}
	accts := must(t, os.Environ(), grpcurl, append(tlsArgs, d.ready.GRPC, "breakglass.v1.AccountService/ListAccounts")...)
	if !strings.Contains(accts, `"prod-db"`) {
		t.Errorf("ListAccounts: %s", accts)
	}
	// Refused in the TLS handshake; grpcurl reports the alert or, when the
	// alert loses the race with its retry, a dial timeout.
	r := runCmd(t, os.Environ(), "", grpcurl, "-connect-timeout", "5", "-cacert", d.state("ca", "ca.crt"), d.ready.GRPC, "list")
	if r.code == 0 || !strings.Contains(r.stderr, "certificate required") && !strings.Contains(r.stderr, "deadline exceeded") {
		t.Errorf("grpcurl without a client certificate: %+v", r)
	}
}

// A restart with a pending request: it survives and is approved after.
func TestRestartWithPendingRequest(t *testing.T) {
	d := startDev(t)
	d.exportAuditKey()
	id := d.createRequest("alice")
	d.mustBgctl("bob", "approve", id, "--yes")
	d.restart()
	d.mustBgctl("erin", "approve", id, "--yes")
	tok := d.mustBgctl("alice", "token", id, "--audience", "db.prod.example")
	if strings.Count(strings.TrimSpace(tok), ".") != 2 {
		t.Fatalf("token %q", tok)
	}
	entries := d.chain()
	policies := 0
	for _, e := range entries {
		if e.Type == audit.TypePolicyLoaded {
			policies++
		}
	}
	if policies != 1 {
		t.Errorf("the unchanged policy was logged %d times across a restart", policies)
	}
}

// Every authorization rule of the flow, through the API.
func tlsFor(t *testing.T, roots *x509.CertPool, cert *x509.Certificate, key *ecdsa.PrivateKey) *tls.Config {
	t.Helper()
	return &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: roots, Certificates: []tls.Certificate{{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}}}
}

// A certificate put on the CRL is refused as soon as the broker re-reads
// it; others are unaffected. (Certificates that never get in are cases of
// the hostile-input matrix.)
func TestCRLRevocation(t *testing.T) {
	d := startDev(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	pending := d.createRequest("alice")
	ca := d.devCA()
	// Revoke bob's certificate in the CRL: the broker re-reads it and
	// refuses him; erin is unaffected.
	bobPEM, _ := os.ReadFile(d.state("identities", "bob.crt"))
	blk, _ := pem.Decode(bobPEM)
	bobCert, _ := x509.ParseCertificate(blk.Bytes)
	crl, err := ca.CRL(2, bobCert.SerialNumber)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(d.state("ca", "crl.pem"), crl, 0o644); err != nil {
		t.Fatal(err)
	}
	// The broker looks for a new CRL file every second: a new connection
	// of bob's is refused in the handshake once it has, and the SDK says
	// so.
	if !eventually(30*time.Second, func() bool {
		c := d.client("bob")
		_, err = c.ReviewRequest(ctx, &bgv1.ReviewRequestRequest{Id: pending, Decision: bgv1.ReviewDecision_REVIEW_DECISION_APPROVE})
		_ = c.Close()
		return codeOf(err) == codes.Unauthenticated && strings.Contains(err.Error(), `"bad certificate"`)
	}) {
		t.Fatalf("revoked certificate: %v", err)
	}
	if _, err := d.client("erin").ReviewByID(ctx, pending, bgv1.ReviewDecision_REVIEW_DECISION_APPROVE, ""); err != nil {
		t.Fatalf("erin after bob's revocation: %v", err)
	}
}

func TestPolicyCheckAndRefusal(t *testing.T) {
	dir := t.TempDir()
	bad := dir + "/policy.yaml"
	if err := os.WriteFile(bad, []byte(`
groups:
  sre: [alice]
  db: [bob]
accounts:
  - name: prod-db
    owner: db
    requesters: [sre]
    audiences: [db.example]
    max_ttl: 1h
    approval_window: 10m
    activation_window: 10m
    quorum:
      - require: [{group: db, approvals: 2}]
      - require: [{group: secops, approvals: 1}]
`), 0o600); err != nil {
		t.Fatal(err)
	}
	r := runCmd(t, os.Environ(), "", bin.breakglassd, "policy", "check", "--policy", bad)
	if r.code == 0 || !strings.Contains(r.stdout, bad+":15:") || !strings.Contains(r.stdout, `unknown group "secops"`) {
		t.Errorf("policy check: %+v", r)
	}
	// Fix the unknown group; the unmeetable alternative remains.
	b, _ := os.ReadFile(bad)
	_ = os.WriteFile(bad, []byte(strings.Replace(string(b), "secops", "db", 1)), 0o600)
	r = runCmd(t, os.Environ(), "", bin.breakglassd, "policy", "check", "--policy", bad)
	if r.code == 0 || !strings.Contains(r.stdout, "cannot be met when alice requests") {
		t.Errorf("policy check: %+v", r)
	}

	// The daemon refuses to start with an invalid policy.
	d := startDev(t)
	d.stop()
	if err := os.WriteFile(d.state("policy.yaml"), []byte(strings.Replace(string(b), "secops", "db", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	r = runCmd(t, os.Environ(), "", bin.breakglassd, "serve", "--config", d.state("config.yaml"))
	if r.code == 0 || !strings.Contains(r.stderr, "cannot be met") {
		t.Errorf("serve with an invalid policy: %+v", r)
	}
	ok := runCmd(t, os.Environ(), "", bin.breakglassd, "policy", "check", "--config", d.state("config.yaml"))
	if ok.code == 0 {
		t.Error("policy check --config passed an invalid policy")
	}
}

func dur(d time.Duration) *durationpb.Duration { return durationpb.New(d) }

// background is a command running while the test goes on.
type background struct {
	done chan result
}

func startBg(t *testing.T, env []string, name string, args ...string) *background {
	t.Helper()
	b := &background{done: make(chan result, 1)}
	go func() { b.done <- runCmdNoFatal(env, name, args...) }()
	return b
}

func (b *background) wait(t *testing.T) result {
	t.Helper()
	select {
	case r := <-b.done:
		return r
	case <-time.After(60 * time.Second):
		t.Fatal("background command did not finish")
	}
	return result{}
}
