package broker_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bgbroker/breakglass/client/auditverify"
	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/format/statement"
	"github.com/bgbroker/breakglass/hsm"
	"github.com/bgbroker/breakglass/hsm/hsmtest"
	"github.com/bgbroker/breakglass/server/authority"
	"github.com/bgbroker/breakglass/server/broker"
	"github.com/bgbroker/breakglass/server/checkpoint"
	"github.com/bgbroker/breakglass/server/devmode"
	"github.com/bgbroker/breakglass/server/event"
	"github.com/bgbroker/breakglass/server/identity"
	"github.com/bgbroker/breakglass/server/keyring"
	"github.com/bgbroker/breakglass/server/notify"
	"github.com/bgbroker/breakglass/server/request"
	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/store/sqlite"
	"github.com/bgbroker/breakglass/server/x509ca"
	"golang.org/x/crypto/ssh"
)

// The property: whatever a broker is asked, valid or not, the log it
// writes verifies offline. A world is a real broker (SoftHSM2 keys through
// the key ring, a SQLite store, the identity verifier over a real client
// CA, an injected clock) driven by a stream of operations.

// propPolicies are the policies the operations reload between: a solo
// account, a drill audience, a two-group quorum, a ticket, changes that
// weaken and strengthen.
var propPolicies = []string{`
auditors: auditors
admins: admins
policy_admins: [{require: [{group: security, approvals: 1}, {group: db-admins, approvals: 1}]}]
groups:
  sre: [alice, carol, frank]
  db-admins: [bob, carol, dual]
  security: [erin, dual]
  owners: [olivia]
  reviewers: [rita, olivia]
  auditors: [dave]
  admins: [olivia]
accounts:
  - name: prod-db
    owner: owners
    requesters: [sre]
    audiences: [db.prod.example, db-replica.prod.example]
    drill_audience: drill.db.example
    reviewers: reviewers
    max_ttl: 1h
    approval_window: 30m
    activation_window: 10m
    max_issuances: 2
    quorum:
      - require:
          - {group: db-admins, approvals: 1}
          - {group: security, approvals: 1}
      - require:
          - {group: db-admins, approvals: 2}
    ssh:
      principals: [breakglass, postgres]
      drill_principals: [drill]
      max_ttl: 20m
    x509:
      common_name: "{requester}"
      drill_common_name: "drill-{requester}"
      dns_names: ["{requester}.users.example.com"]
      max_ttl: 25m
  - name: solo-db
    owner: owners
    requesters: [sre]
    audiences: [solo.example]
    ack_sinks: [soc]
    solo: {delay: 5m, max_ttl: 20m}
    max_ttl: 30m
    approval_window: 20m
    activation_window: 10m
    require_ticket: true
    quorum:
      - require: [{group: db-admins, approvals: 1}]
`}

func init() {
	p := propPolicies[0]
	propPolicies = append(propPolicies,
		// Weakened: one approval is enough, longer grants.
		strings.Replace(strings.Replace(p, "          - {group: security, approvals: 1}\n", "", 1), "max_ttl: 1h", "max_ttl: 2h", 1),
		// Strengthened, with an approver more and a deny threshold of 2.
		strings.Replace(strings.Replace(p, "security: [erin, dual]", "security: [erin, dual, sam]", 1), "    max_issuances: 2\n", "    max_issuances: 2\n    deny_threshold: 2\n", 1),
		// An alert to acknowledge before the first token.
		strings.Replace(p, "    max_issuances: 2\n", "    max_issuances: 2\n    require_alert_ack: true\n    ack_sinks: [soc]\n", 1),
	)
}

var propPrincipals = []string{"alice", "bob", "carol", "dual", "erin", "frank", "sam", "olivia", "rita", "dave", "mallory"}

// downKeys wraps the key ring so that the HSM can be made to fail: every
// audit signature (through the ring, or a key found in the registry)
// fails while down is set.
type downKeys struct {
	*keyring.Ring
	down *atomic.Bool
}

type downSigner struct {
	audit.Signer
	down *atomic.Bool
}

func (k downSigner) SignContext(ctx context.Context, d []byte, o crypto.SignerOpts) ([]byte, error) {
	if k.down.Load() {
		return nil, fmt.Errorf("%w: CKR_DEVICE_ERROR (injected)", hsm.ErrUnavailable)
	}
	return k.Signer.SignContext(ctx, d, o)
}

func (k downKeys) AuditKey() (audit.Signer, string) {
	s, kid := k.Ring.AuditKey()
	return downSigner{s, k.down}, kid
}

func (k downKeys) AuditKeyFor(ctx context.Context, rec store.KeyRecord) (audit.Signer, error) {
	s, err := k.Ring.AuditKeyFor(ctx, rec)
	if err != nil {
		return nil, err
	}
	return downSigner{s, k.down}, nil
}

// world is one broker and everything around it.
type world struct {
	t      testing.TB
	ctx    context.Context
	clock  *clock
	module *hsm.Module
	dir    string
	store  store.Store
	ring   *keyring.Ring
	b      *broker.Broker
	// cas are the SSH and X.509 CAs over the ring's CA keys, with the
	// X.509 CA certificates in caCerts (as certificates.x509_ca_cert).
	cas     *authority.Set
	caCerts string
	// sshKey and csr are a requester's subject key and certificate
	// request, made once.
	sshKey []byte
	csr    []byte
	ident  *identity.Verifier
	ca     *devmode.CA
	certs  map[string]principalKey
	down   atomic.Bool
	policy int
	// sigs are the policy admins' statements the next start is given;
	// policyOps counts the reloads and restarts, which sign in turn.
	sigs      []statement.Signed
	policyOps int
	ids       []string
	// first keys, as an auditor pins them at the key ceremony.
	firstAudit *ecdsa.PublicKey
	firstCP    crypto.PublicKey
	// counts of what happened, to show the operations reach the flow.
	counts map[string]int
}

// hsmWorld is a SoftHSM2 token with its keys and a client CA, shared by
// the worlds of one test: fuzzing makes thousands of them.
type hsmWorld struct {
	module *hsm.Module
	ca     *devmode.CA
	caFile string
	// caCertPEM is the X.509 CA key's self-signed CA certificate.
	caCertPEM   []byte
	sshKey, csr []byte
}

func newHSMWorld(t testing.TB) *hsmWorld {
	t.Helper()
	tok := hsmtest.NewToken(t)
	m := tok.Open(t)
	keys := hsmtest.Keys(t, m)
	ca, err := devmode.NewCA("property client CA", 10*365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(caFile, devmode.CertPEM(ca.Cert), 0o644); err != nil {
		t.Fatal(err)
	}
	hw := &hsmWorld{module: m, ca: ca, caFile: caFile}
	hw.caCertPEM = propCACert(t, keys[hsm.PurposeX509CA], "property X.509 CA")
	pub, _, err := ed25519.GenerateKey(crand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sk, _ := ssh.NewPublicKey(pub)
	hw.sshKey = ssh.MarshalAuthorizedKey(sk)
	ck, _ := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	der, err := x509.CreateCertificateRequest(crand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "root"}, DNSNames: []string{"evil.example"}}, ck)
	if err != nil {
		t.Fatal(err)
	}
	hw.csr = der
	return hw
}

// propCACert self-signs a CA certificate for an X.509 CA key, valid long
// after any certificate of the test.
func propCACert(t testing.TB, k x509ca.Signer, cn string) []byte {
	t.Helper()
	c, err := x509ca.SelfSign(context.Background(), k, x509ca.CAOptions{Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(5 * 365 * 24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func newWorld(t testing.TB, hw *hsmWorld, seedTime time.Time) *world {
	t.Helper()
	w := &world{t: t, ctx: context.Background(), clock: &clock{t: seedTime}, module: hw.module, dir: t.TempDir(),
		ca: hw.ca, certs: map[string]principalKey{}, counts: map[string]int{}}
	var err error
	if w.ident, err = identity.New(identity.Config{ClientCA: hw.caFile, URIPrefix: "spiffe://test/user/"}, identity.Options{Now: w.clock.Now}); err != nil {
		t.Fatal(err)
	}
	if w.store, err = sqlite.Open(w.ctx, sqlite.Config{Path: filepath.Join(w.dir, "broker.db")}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.store.Close() })
	w.caCerts = filepath.Join(w.dir, "x509-ca.pem")
	if err := os.WriteFile(w.caCerts, hw.caCertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	w.sshKey, w.csr = hw.sshKey, hw.csr
	if err := w.start(); err != nil {
		t.Fatal(err)
	}
	recs := w.ring.Records()
	for _, r := range recs {
		pub, err := keyring.PublicFromPEM(r.PublicPEM)
		if err != nil {
			t.Fatal(err)
		}
		switch r.Purpose {
		case "audit":
			w.firstAudit = pub.(*ecdsa.PublicKey)
		case "checkpoint":
			w.firstCP = pub
		}
	}
	return w
}

// start builds the broker on the store, as breakglassd does at start. It
// fails, as breakglassd does, when a changed policy cannot be logged.
func (w *world) start() error {
	p, err := policy.Load([]byte(propPolicies[w.policy]), "policy.yaml")
	if err != nil {
		w.t.Fatal(err)
	}
	wants := []keyring.Want{{Purpose: hsm.PurposeToken, Label: "token-key"}, {Purpose: hsm.PurposeAudit, Label: "audit-key"}, {Purpose: hsm.PurposeCheckpoint, Label: "checkpoint-key"},
		{Purpose: hsm.PurposeSSHCA, Label: "ssh-ca-key"}, {Purpose: hsm.PurposeX509CA, Label: "x509-ca-key"}}
	ring := keyring.New(keyring.Config{Module: w.module, Store: w.store, Issuer: "https://broker.test", Origin: testOrigin, Now: w.clock.Now})
	if err := ring.Preload(w.ctx, wants); err != nil {
		w.t.Fatal(err)
	}
	cas, err := authority.New(authority.Config{Keys: ring, Store: w.store, CACertFile: w.caCerts, BaseURL: "https://broker.test", Now: w.clock.Now})
	if err != nil {
		w.t.Fatal(err)
	}
	routes := notify.NewRouter([]notify.SinkConfig{{Name: "soc"}, {Name: "slack", Route: event.Route{Events: []string{"grant.*"}}}})
	b, err := broker.New(w.ctx, broker.Config{Store: w.store, Policy: p, PolicySource: "policy.yaml", AcceptUnsignedGenesis: true, Keys: downKeys{ring, &w.down}, Now: w.clock.Now,
		Origin: testOrigin, Certs: w.ident, Routes: routes, HSMBackoff: time.Nanosecond, Authorities: cas, PolicySignatures: w.sigs})
	if err != nil {
		return err
	}
	// A policy without enough signatures is set aside at start: the one
	// the log records stays in force.
	for i, src := range propPolicies {
		if q, _ := policy.Load([]byte(src), "policy.yaml"); q != nil && q.WithIdentity(*b.Policy().Identity).Hash() == b.Policy().Hash() {
			w.policy = i
		}
	}
	if err := ring.Bootstrap(w.ctx, b, wants); err != nil {
		return err
	}
	if err := cas.Reload(); err != nil {
		w.t.Fatal(err)
	}
	w.ring, w.b, w.cas = ring, b, cas
	return nil
}

// reloadKeys is the daemon's keys loop: the ring and the CAs follow the
// registry (keys rotated by another process), and the CRLs are re-signed.
func (w *world) reloadKeys() {
	if err := w.ring.Load(w.ctx); err != nil {
		w.t.Fatal(err)
	}
	if err := w.cas.Reload(); err != nil {
		w.t.Fatal(err)
	}
	w.counts["keys reloaded"]++
	if err := w.cas.RefreshCRLs(w.ctx); err == nil {
		w.counts["crls"]++
	}
}

// signPolicy is the statements of who about the change from the policy
// in force to p, as bgctl policy sign writes them.
func (w *world) signPolicy(p *policy.Policy, who ...string) []statement.Signed {
	if p.Identity == nil {
		p = p.WithIdentity(policy.Identity{Mode: policy.IdentityURI, URIPrefix: "spiffe://test/user/"})
	}
	var out []statement.Signed
	for _, name := range who {
		st := statement.PolicyStatement{Decision: statement.DecisionApprove, Origin: testOrigin, Previous: statement.PreviousLine(w.b.Policy().Hash()),
			Policy: p.Hash(), Comment: statement.CommentDigest(""), Time: w.clock.Now().UTC().Truncate(time.Second)}
		sig, err := statement.Sign(w.cert(name).key, st.Marshal())
		if err != nil {
			w.t.Fatal(err)
		}
		out = append(out, statement.Signed{Statement: st.Marshal(), Signature: sig, Certificate: w.cert(name).cert.Raw})
	}
	return out
}

func (w *world) cert(p string) principalKey {
	if pk, ok := w.certs[p]; ok {
		return pk
	}
	c, k, err := w.ca.Issue(devmode.LeafOptions{CommonName: p, URIs: []string{"spiffe://test/user/" + p}, NotBefore: w.clock.Now().Add(-time.Hour),
		NotAfter: w.clock.Now().Add(5 * 365 * 24 * time.Hour)})
	if err != nil {
		w.t.Fatal(err)
	}
	w.certs[p] = principalKey{c, k}
	return w.certs[p]
}

func (w *world) request(id string) *request.Request {
	var out *request.Request
	_ = w.store.View(w.ctx, func(r store.Reader) error {
		var err error
		out, err = r.Request(w.ctx, id)
		return err
	})
	return out
}

// ops reads operations from a byte stream; each takes the bytes it needs
// and past the end reads zeros.
type ops struct {
	b []byte
}

func (o *ops) next() byte {
	if len(o.b) == 0 {
		return 0
	}
	c := o.b[0]
	o.b = o.b[1:]
	return c
}

func (o *ops) pick(n int) int { return int(o.next()) % n }

// ttls include the fractions of a second that once broke verification.
var propTTLs = []time.Duration{0, 30 * time.Minute, 30*time.Minute + 500*time.Millisecond, time.Nanosecond, 2 * time.Hour, time.Second,
	59*time.Minute + 59*time.Second, 15 * time.Minute, time.Hour, 20*time.Minute + time.Millisecond}

var propSteps = []time.Duration{time.Second, time.Minute, 5*time.Minute + 1, 10 * time.Minute, 31 * time.Minute, 1500 * time.Millisecond, 123,
	time.Hour + 7*time.Second, 2 * time.Second, 30 * time.Second, 3 * time.Minute, 1}

// step runs one operation chosen by o. Refusals are expected: only what
// the broker writes is under test.
func (w *world) step(o *ops) {
	ctx := w.ctx
	pick := func(xs []string) string { return xs[o.pick(len(xs))] }
	id := func() string {
		if len(w.ids) == 0 || o.pick(16) == 0 {
			return "01890000-0000-7000-8000-000000000000"
		}
		if o.pick(4) != 0 {
			return w.ids[len(w.ids)-1-o.pick(min(len(w.ids), 2))]
		}
		return w.ids[len(w.ids)-1-o.pick(min(len(w.ids), 8))]
	}
	note := func(op string, err error) {
		if err == nil {
			w.counts[op]++
		} else {
			w.counts[op+" refused"]++
		}
	}
	switch o.pick(20) {
	case 16, 17, 18: // a whole flow, as people make it
		res, err := w.b.CreateRequest(ctx, "alice", w.signedCreate("alice", broker.CreateInput{Account: "prod-db", Justification: "primary is down", Ticket: "INC-7",
			TTL: 15 * time.Minute, Drill: o.pick(4) == 0}))
		note("create", err)
		if err != nil {
			return
		}
		r := res.Request
		w.ids = append(w.ids, r.ID)
		for _, who := range [][]string{{"bob", "erin"}, {"dual", "carol"}, {"carol", "bob"}}[o.pick(3)] {
			st := statement.Statement{Type: statement.TypeApprove, Origin: testOrigin, Request: r.ID, Content: r.Content().Digest(),
				Comment: statement.CommentDigest(""), Time: w.clock.Now().UTC().Truncate(time.Second)}
			sig, _ := statement.Sign(w.cert(who).key, st.Marshal())
			_, err := w.b.Review(ctx, who, broker.ReviewInput{ID: r.ID, Decision: request.Approve, Statement: st.Marshal(), Signature: sig, Cert: w.cert(who).cert})
			note("review", err)
		}
		aud := "db.prod.example"
		if r.Drill {
			aud = "drill.db.example"
		}
		for range o.pick(3) + 1 {
			switch o.pick(4) {
			case 0:
				_, err = w.b.IssueSSHCertificate(ctx, "alice", broker.SSHCertInput{RequestID: r.ID, PublicKey: w.sshKey})
				note("ssh certificate", err)
			case 1:
				_, err = w.b.IssueX509Certificate(ctx, "alice", broker.X509CertInput{RequestID: r.ID, CSR: w.csr})
				note("x509 certificate", err)
			default:
				_, err = w.b.IssueToken(ctx, "alice", r.ID, aud)
				note("token", err)
			}
			if err != nil && os.Getenv("PROPDEBUG") != "" {
				w.t.Logf("credential for %s: %v", r.ID, err)
			}
		}
	case 0, 1, 2: // a request: mostly one the broker should take
		acct := pick([]string{"prod-db", "prod-db", "solo-db", "nope"})
		in := broker.CreateInput{Account: acct, Justification: pick([]string{"primary is down", "INC-1 disk full", "", "bad\x1b[0m"}),
			Ticket: pick([]string{"", "INC-42"}), TTL: propTTLs[o.pick(len(propTTLs))], Drill: o.pick(5) == 0, Solo: acct == "solo-db" && o.pick(3) != 0}
		requester := pick([]string{"alice", "carol", "frank", "bob"})
		if o.pick(4) != 0 {
			acct = pick([]string{"prod-db", "prod-db", "solo-db"})
			in = broker.CreateInput{Account: acct, Justification: pick([]string{"primary is down", "INC-1 disk full", "replica lag"}), Ticket: "INC-42",
				TTL: []time.Duration{0, 15 * time.Minute, time.Second, 20 * time.Minute}[o.pick(4)], Drill: acct == "prod-db" && o.pick(5) == 0, Solo: acct == "solo-db" && o.pick(3) != 0}
			requester = pick([]string{"alice", "carol", "frank"})
		}
		res, err := w.b.CreateRequest(ctx, requester, w.signedCreate(requester, in))
		note("create", err)
		if err != nil && os.Getenv("PROPDEBUG") != "" {
			w.t.Logf("create %+v: %v", in, err)
		}
		if err == nil {
			w.ids = append(w.ids, res.Request.ID)
		}
	case 3, 4, 5, 6: // a review, signed right or wrong, mostly by an approver
		rid, who := id(), pick(propPrincipals)
		if r := w.request(rid); r != nil && o.pick(4) != 0 {
			who = pick([]string{"bob", "carol", "dual", "erin"})
			if r.Account == "solo-db" {
				who = pick([]string{"bob", "carol", "dual"})
			}
		}
		d := request.Approve
		if o.pick(5) == 0 {
			d = request.Deny
		}
		content := statement.CommentDigest("unknown")
		if r := w.request(rid); r != nil {
			content = r.Content().Digest()
		}
		comment := pick([]string{"", "ok", "looks right"})
		st := statement.Statement{Type: string(d), Origin: testOrigin, Request: rid, Content: content, Comment: statement.CommentDigest(comment),
			Time: w.clock.Now().UTC().Truncate(time.Second)}
		switch o.pick(16) {
		case 0:
			st.Content = statement.CommentDigest("other content")
		case 1:
			st.Time = st.Time.Add(-time.Hour)
		case 2:
			st.Origin = "other.example/log"
		}
		signer := who
		if o.pick(10) == 0 {
			signer = pick(propPrincipals) // someone else's key
		}
		sig, err := statement.Sign(w.cert(signer).key, st.Marshal())
		if err != nil {
			w.t.Fatal(err)
		}
		_, err = w.b.Review(ctx, who, broker.ReviewInput{ID: rid, Decision: d, Comment: comment, Statement: st.Marshal(), Signature: sig, Cert: w.cert(who).cert})
		note("review", err)
		if err != nil && os.Getenv("PROPDEBUG") != "" {
			w.t.Logf("review %s by %s: %v", rid, who, err)
		}
	case 7, 8: // a token, or a certificate
		rid := id()
		caller := "alice"
		if r := w.request(rid); r != nil && o.pick(6) != 0 {
			caller = r.Requester
		}
		switch o.pick(4) {
		case 0:
			principals := [][]string{nil, nil, {"postgres"}, {"drill"}, {"root"}, {"breakglass", "postgres"}}[o.pick(6)]
			_, err := w.b.IssueSSHCertificate(ctx, caller, broker.SSHCertInput{RequestID: rid, PublicKey: w.sshKey, Principals: principals})
			note("ssh certificate", err)
			if err != nil && os.Getenv("PROPDEBUG") != "" {
				w.t.Logf("ssh certificate %s by %s: %v", rid, caller, err)
			}
			return
		case 1:
			_, err := w.b.IssueX509Certificate(ctx, caller, broker.X509CertInput{RequestID: rid, CSR: w.csr})
			note("x509 certificate", err)
			if err != nil && os.Getenv("PROPDEBUG") != "" {
				w.t.Logf("x509 certificate %s by %s: %v", rid, caller, err)
			}
			return
		}
		aud := pick([]string{"db.prod.example", "db-replica.prod.example", "drill.db.example", "solo.example", "other.example"})
		if r := w.request(rid); r != nil && o.pick(4) != 0 {
			aud = map[string]string{"prod-db": "db.prod.example", "solo-db": "solo.example"}[r.Account]
			if r.Drill {
				aud = "drill.db.example"
			}
		}
		_, err := w.b.IssueToken(ctx, caller, rid, aud)
		note("token", err)
	case 9: // cancel or revoke
		rid := id()
		caller := pick([]string{"alice", "carol", "bob", "olivia", "dave"})
		if r := w.request(rid); r != nil && o.pick(3) != 0 {
			caller = r.Requester
		}
		var err error
		if o.pick(2) == 0 {
			_, err = w.b.CancelRequest(ctx, caller, rid, "")
		} else {
			_, err = w.b.RevokeGrant(ctx, caller, rid, "done")
		}
		note("end", err)
	case 10, 11: // time passes; deadlines are recorded; solo grants ripen
		w.clock.Advance(propSteps[o.pick(len(propSteps))])
		if o.pick(2) == 0 {
			w.down.Store(false) // the HSM is back
		}
		if o.pick(2) == 0 {
			w.reloadKeys()
		}
		_, err := w.b.Sweep(ctx)
		note("sweep", err)
		_, err = w.b.RipenSolo(ctx)
		note("ripen", err)
	case 12: // an ack sink answers for some alert
		var items []store.OutboxItem
		_ = w.store.View(ctx, func(r store.Reader) error {
			var err error
			rid := id()
			items, err = r.OutboxFor(ctx, rid, pick([]string{event.SoloRequested, event.GrantApproved}))
			return err
		})
		for _, it := range items {
			if it.Sink == "soc" && it.State != store.OutboxDelivered {
				it.Attempts, it.State, it.DeliveredAt = 1, store.OutboxDelivered, w.clock.Now()
				note("ack", w.b.FinishDelivery(ctx, it))
			}
		}
	case 13: // the policy is reloaded, or the broker restarts on another
		was := w.policy
		w.policy = o.pick(len(propPolicies))
		p, err := policy.Load([]byte(propPolicies[w.policy]), "policy.yaml")
		if err != nil {
			w.t.Fatal(err)
		}
		// Signed by none, one or two admins, the proposer among them or
		// not, or by someone who is no admin: only a quorum changes it.
		// (Chosen in turn, not from the operations, so that a seed drives
		// the same operations as before policies needed signatures.)
		w.policyOps++
		signers := [][]string{{"bob", "erin"}, nil, {"dual", "carol"}, {"bob"}, {"erin", "mallory"}, {"olivia", "bob"}}[w.policyOps%6]
		if o.pick(2) == 0 {
			_, err = w.b.ApplyPolicy(ctx, "", p, "policy.yaml", w.signPolicy(p, signers...))
			note("reload", err)
			if err != nil {
				w.policy = was
			}
		} else {
			w.sigs = w.signPolicy(p, signers...)
			err = w.start()
			w.sigs = nil
			note("restart", err)
			if err != nil {
				w.policy = was
			}
		}
	case 14, 19: // a key ceremony, or the HSM fails for a while
		switch o.pick(4) {
		case 0:
			w.down.Store(!w.down.Load())
			w.counts["hsm toggled"]++
		case 1:
			w.down.Store(false)
			_, err := w.b.SignBacklog(ctx)
			note("backlog", err)
		default:
			purpose := []hsm.Purpose{hsm.PurposeAudit, hsm.PurposeCheckpoint, hsm.PurposeToken, hsm.PurposeSSHCA, hsm.PurposeX509CA}[o.pick(5)]
			// The ceremony runs in a process of its own (breakglassd hsm
			// rotate), with its own ring and broker on the same store: this
			// broker learns of the new key from the registry alone.
			cer := keyring.New(keyring.Config{Module: w.module, Store: w.store, Issuer: "https://broker.test", Origin: testOrigin, Now: w.clock.Now})
			if err := cer.Load(ctx); err != nil {
				w.t.Fatal(err)
			}
			p, _ := policy.Load([]byte(propPolicies[w.policy]), "policy.yaml")
			ob, err := broker.New(ctx, broker.Config{Store: w.store, Policy: p, PolicySource: "policy.yaml", AcceptUnsignedGenesis: true, Keys: cer, Now: w.clock.Now, Origin: testOrigin, Certs: w.ident})
			label := fmt.Sprintf("%s-%d", purpose, w.clock.Now().UnixNano())
			var prepare func(*hsm.Key) error
			if purpose == hsm.PurposeX509CA {
				prepare = func(k *hsm.Key) error { // as hsm rotate --subject does
					f, err := os.OpenFile(w.caCerts, os.O_APPEND|os.O_WRONLY, 0)
					if err != nil {
						return err
					}
					defer f.Close()
					_, err = f.Write(propCACert(w.t, k, label))
					return err
				}
			}
			op := "rotate " + string(purpose)
			switch {
			case err != nil:
			case (purpose == hsm.PurposeSSHCA || purpose == hsm.PurposeX509CA) && o.pick(3) == 0:
				_, err = cer.RotateRevoking(ctx, ob, purpose, label, "ceremony: compromised", prepare)
				op = "revoke " + string(purpose)
			default:
				_, err = cer.RotateWith(ctx, ob, purpose, "", label, "ceremony", prepare)
			}
			note(op, err)
			if err != nil && os.Getenv("PROPDEBUG") != "" {
				w.t.Logf("%s: %v", op, err)
			}
		}
	case 15: // a post-use review closed, or an account attested
		who := pick([]string{"rita", "olivia", "alice", "bob"})
		if o.pick(2) == 0 {
			who = pick([]string{"rita", "olivia"})
			prs, _ := w.b.PostReviews(ctx, "dave", true)
			if len(prs) == 0 {
				return
			}
			pr := prs[o.pick(len(prs))]
			r := w.request(pr.RequestID)
			st := statement.Statement{Type: statement.TypeReviewClose, Origin: testOrigin, Request: r.ID, Content: r.Content().Digest(),
				Comment: statement.CommentDigest("used as asked"), Time: w.clock.Now().UTC().Truncate(time.Second)}
			sig, _ := statement.Sign(w.cert(who).key, st.Marshal())
			_, _, err := w.b.ClosePostReview(ctx, who, pr.ID, "used as asked", broker.Signed{Statement: st.Marshal(), Signature: sig, Cert: w.cert(who).cert})
			note("close review", err)
			return
		}
		if o.pick(3) != 0 {
			who = "olivia"
		}
		st := statement.Statement{Type: statement.TypeAttest, Origin: testOrigin, Request: fmt.Sprintf("01890000-0000-7000-8000-%012d", len(w.ids)+int(o.next())),
			Content: statement.AccountDigest("prod-db", w.b.Policy().Hash()), Comment: statement.CommentDigest("still needed"), Time: w.clock.Now().UTC().Truncate(time.Second)}
		sig, _ := statement.Sign(w.cert(who).key, st.Marshal())
		_, _, err := w.b.Attest(ctx, who, "prod-db", "still needed", broker.Signed{Statement: st.Marshal(), Signature: sig, Cert: w.cert(who).cert})
		note("attest", err)
	}
}

// verify signs what waits for the HSM, exports the log as bgctl does, has
// it checkpointed with the key in force, and verifies it offline with
// the first keys only.
func (w *world) verify() *auditverify.Summary {
	w.t.Helper()
	w.down.Store(false)
	if _, err := w.b.SignBacklog(w.ctx); err != nil {
		w.t.Fatalf("signing the backlog: %v", err)
	}
	if err := w.b.FlushDenials(w.ctx, true); err != nil {
		w.t.Fatal(err)
	}
	// The ring is not reloaded: the checkpoint is signed by the key the
	// registry names, as a running broker's would be after a ceremony.
	cpr, err := checkpoint.New(w.ctx, checkpoint.Config{Store: w.store, Signer: keyring.NoteSigner{Ring: w.ring, Origin: testOrigin, Ctx: w.ctx}, Origin: testOrigin})
	if err != nil {
		w.t.Fatal(err)
	}
	cp, err := cpr.Latest(w.ctx)
	if err != nil {
		w.t.Fatal(err)
	}
	var recs []audit.Record
	_ = w.store.View(w.ctx, func(r store.Reader) error {
		var err error
		recs, err = r.Entries(w.ctx, 0, cp.Size)
		return err
	})
	var export bytes.Buffer
	for _, rec := range recs {
		b, _ := json.Marshal(auditverify.ExportLine(rec.Index, rec.Bytes, rec.Signature, rec.KeyID))
		export.Write(append(b, '\n'))
	}
	vkey, err := hsm.NoteVerifierKey(testOrigin, w.firstCP)
	if err != nil {
		w.t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(w.ca.Cert)
	// The auditor pins every CA key of the key ceremonies.
	var sshCAs []ssh.PublicKey
	var recs2 []store.KeyRecord
	_ = w.store.View(w.ctx, func(r store.Reader) error {
		var err error
		recs2, err = r.Keys(w.ctx)
		return err
	})
	for _, k := range recs2 {
		if k.Purpose == string(hsm.PurposeSSHCA) {
			pub, err := keyring.PublicFromPEM(k.PublicPEM)
			if err != nil {
				w.t.Fatal(err)
			}
			sk, err := ssh.NewPublicKey(pub)
			if err != nil {
				w.t.Fatal(err)
			}
			sshCAs = append(sshCAs, sk)
		}
	}
	b, err := os.ReadFile(w.caCerts)
	if err != nil {
		w.t.Fatal(err)
	}
	x509CAs, err := x509ca.ParseCertificates(b)
	if err != nil {
		w.t.Fatal(err)
	}
	sum, err := auditverify.Verify(auditverify.Options{Log: &export, Checkpoint: cp.Note, CheckpointKey: vkey, AuditKeys: []*ecdsa.PublicKey{w.firstAudit}, ClientCAs: pool,
		SSHCAKeys: sshCAs, X509CACerts: x509CAs})
	if err != nil {
		var vs *auditverify.Violations
		if errors.As(err, &vs) {
			w.t.Fatalf("the broker wrote a log that does not verify (%d entries, what happened: %v):\n%s", len(recs), w.counts, vs)
		}
		w.t.Fatal(err)
	}
	return sum
}

// run drives a world through the operations in b, verifying the log
// every so often and at the end.
func runWorld(t testing.TB, hw *hsmWorld, b []byte, t0 time.Time) (*world, *auditverify.Summary) {
	w := newWorld(t, hw, t0)
	o := &ops{b: b}
	for n := 0; len(o.b) > 0; n++ {
		w.step(o)
		if n%97 == 96 {
			w.verify()
		}
	}
	sum := w.verify()
	return w, sum
}

// Random valid and invalid calls, with time passing, policies reloaded,
// keys rotated by another process and the HSM failing: every log the
// broker writes verifies offline. The calls include SSH and X.509
// certificates (fractional TTLs, ssh and x509 max_ttl, principals outside
// the policy, drills) and CA keys rotated or revoked by another process
// and picked up later, so certificate entries verify against the pinned
// CAs under the same churn as tokens. One run has a fixed seed, and is shown
// to reach the whole flow; the others a fresh one each time, logged
// (BROKER_PROPERTY_SEED replays it; BROKER_PROPERTY_RUNS and
// BROKER_PROPERTY_OPS make the test longer).
func TestBrokerLogsAlwaysVerify(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	runs, n := 2, 400
	for _, v := range []struct {
		env string
		to  any
	}{{"BROKER_PROPERTY_SEED", &seed}, {"BROKER_PROPERTY_RUNS", &runs}, {"BROKER_PROPERTY_OPS", &n}} {
		if s := os.Getenv(v.env); s != "" {
			if _, err := fmt.Sscan(s, v.to); err != nil {
				t.Fatalf("%s: %v", v.env, err)
			}
		}
	}
	hw := newHSMWorld(t)
	ops := func(seed uint64) []byte {
		rnd := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
		b := make([]byte, 4*n)
		for i := range b {
			b[i] = byte(rnd.Uint32())
		}
		return b
	}
	// The fixed run reaches every part of the flow.
	w, sum := runWorld(t, hw, ops(43), time.Now().UTC().Truncate(time.Second))
	t.Logf("fixed seed: %v", w.counts)
	t.Logf("verified: %d entries, %d grants (%d solo), %d tokens, %d SSH and %d X.509 certificates, %d audit keys, %d weakening policies", sum.Entries, sum.Grants, sum.SoloGrantCount,
		sum.Tokens, sum.SSHCertificates, sum.X509Certificates, sum.AuditKeys, sum.WeakeningPolicies)
	for _, op := range []string{"create", "create refused", "review", "review refused", "token", "token refused", "end", "sweep", "reload", "restart",
		"rotate audit", "rotate checkpoint", "rotate token", "hsm toggled", "backlog", "ack", "attest", "ssh certificate", "ssh certificate refused",
		"x509 certificate", "x509 certificate refused", "rotate ssh-ca", "rotate x509-ca", "revoke ssh-ca", "revoke x509-ca", "keys reloaded"} {
		if w.counts[op] == 0 {
			t.Errorf("no %q in the fixed run: the operations do not reach it", op)
		}
	}
	if sum.Grants < 3 || sum.Tokens < 2 || sum.AuditKeys < 2 || sum.SoloGrantCount < 1 || sum.SSHCertificates < 2 || sum.X509Certificates < 2 {
		t.Errorf("the fixed run verified %d grants (%d solo), %d tokens, %d SSH and %d X.509 certificates and %d audit keys", sum.Grants, sum.SoloGrantCount,
			sum.Tokens, sum.SSHCertificates, sum.X509Certificates, sum.AuditKeys)
	}
	for run := range runs {
		s := seed + uint64(run)
		t.Logf("random run %d: seed %d (BROKER_PROPERTY_SEED=%d BROKER_PROPERTY_RUNS=1 to replay)", run, s, s)
		runWorld(t, hw, ops(s), time.Now().UTC().Truncate(time.Second))
	}
}

// FuzzBrokerLog drives a broker with the fuzzer's operations: whatever it
// writes must verify.
func FuzzBrokerLog(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 0, 0, 3, 1, 0, 0, 3, 4, 0, 0, 7, 0, 10, 1})
	seed := make([]byte, 800)
	binary.LittleEndian.PutUint64(seed, 42)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range seed {
		seed[i] = byte(r.Uint32())
	}
	f.Add(seed)
	hw := newHSMWorld(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 2000 {
			return
		}
		runWorld(t, hw, b, time.Now().UTC().Truncate(time.Second))
	})
}
