package auditverify

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/passkey"
	"github.com/bgbroker/breakglass/format/passkey/passkeytest"
	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/format/statement"
)

// passkeyLog builds logs in which approvers bind passkeys and review with
// them, and lets each test forge one part as the broker's operator could:
// with the database and the HSM PIN (so every entry is signed by the audit
// key) but no approver's certificate key and no approver's passkey.
type passkeyLog struct {
	l          *fuzzLog
	pol        *policy.Policy
	certs      map[string][]byte
	keys       map[string]ed25519.PrivateKey
	passkeys   map[string]*passkeytest.Authenticator
	drafts     []audit.Draft
	times      []time.Time
	now        time.Time
	content    map[string]statement.Content
	nRequests  int
	crlEntries []x509.RevocationListEntry
	// requestPasskey, when set, signs the requests instead of alice's
	// certificate key; lastRequest is the entry of the last request.
	requestPasskey *passkeytest.Authenticator
	lastRequest    int
}

const (
	pkRPID   = "console.example.org"
	pkOrigin = "https://console.example.org:7445"
)

func newPasskeyLog(t *testing.T) *passkeyLog {
	t.Helper()
	l := theFuzzLog(t)
	pol, err := policy.Load([]byte(`
groups: {sre: [alice], db: [bob, erin], owners: [olivia]}
accounts:
  - name: prod-db
    owner: owners
    requesters: [sre]
    audiences: [db.example]
    max_ttl: 1h
    approval_window: 30m
    activation_window: 10m
    quorum: [{require: [{group: db, approvals: 2}]}]
`), "policy.yaml")
	must(err)
	p := &passkeyLog{l: l, pol: pol, certs: map[string][]byte{}, keys: map[string]ed25519.PrivateKey{}, passkeys: map[string]*passkeytest.Authenticator{},
		now: fuzzT0, content: map[string]statement.Content{}}
	for i, who := range []string{"bob", "erin", "mallory", "alice"} {
		k := ed25519.NewKeyFromSeed(fuzzSeed("passkey log " + who))
		u, _ := url.Parse(fuzzURIPrefix + who)
		der, err := x509.CreateCertificate(nil, &x509.Certificate{SerialNumber: big.NewInt(int64(100 + i)), Subject: pkix.Name{CommonName: who},
			NotBefore: l.ca.NotBefore, NotAfter: l.ca.NotAfter, URIs: []*url.URL{u}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, l.ca, k.Public(), l.caKey)
		must(err)
		p.certs[who], p.keys[who] = der, k
		a, err := passkeytest.New(pkRPID, pkOrigin)
		must(err)
		p.passkeys[who] = a
	}
	p.add(audit.Draft{Type: audit.TypePolicyLoaded, Actor: "breakglass", Payload: audit.PolicyLoaded{Hash: pol.Hash(), Source: "policy.yaml",
		Policy: pol.CanonicalJSON(), Identity: audit.Identity{Mode: "uri", URIPrefix: fuzzURIPrefix}, Genesis: audit.GenesisUnsigned}})
	return p
}

func (p *passkeyLog) add(d audit.Draft) int {
	p.now = p.now.Add(time.Second)
	p.drafts = append(p.drafts, d)
	p.times = append(p.times, p.now)
	return len(p.drafts) - 1
}

// bind logs who binding credential a, signed with signer's certificate key.
func (p *passkeyLog) bind(who, signer string, a *passkeytest.Authenticator, edit func(*passkey.Binding)) int {
	b := a.Binding(fuzzOrigin, who)
	b.Time = p.now.Add(time.Second).Truncate(time.Second)
	if edit != nil {
		edit(&b)
	}
	text := b.Marshal()
	sig, err := statement.Sign(p.keys[signer], text)
	must(err)
	return p.add(audit.Draft{Type: audit.TypePasskeyBound, Actor: who, Payload: audit.PasskeyBound{Credential: b.Credential, Statement: text, Signature: sig,
		Certificate: p.certs[signer]}})
}

func (p *passkeyLog) request() string {
	p.nRequests++
	id := strings.Replace(fuzzRequest, "0001", "100"+string(rune('0'+p.nRequests)), 1)
	created := p.now.Add(time.Second)
	acct, _ := p.pol.Account("prod-db")
	c := statement.Content{Version: statement.ContentV2, ID: id, Account: "prod-db", Requester: "alice", Justification: "db down", TTLSeconds: 1800, CreatedAt: created}
	p.content[id] = c
	rc := audit.RequestCreated{
		Justification: c.Justification, TTLSeconds: c.TTLSeconds, CreatedAt: created, ApprovalDeadline: created.Add(30 * time.Minute), Quorum: acct.Quorum,
		DenyThreshold: acct.DenyThreshold, MaxIssuances: acct.MaxIssuances, ActivationWindow: 600, PolicyHash: p.pol.Hash(), ContentDigest: c.Digest(),
		ContentVersion: int(statement.ContentV2)}
	rc.Signed = signRequest(p.keys["alice"], p.certs["alice"], rc, id, "prod-db", created)
	if p.requestPasskey != nil {
		// Made in the console: alice's passkey signs the request statement.
		x := p.requestPasskey.Assert(rc.Statement, passkeytest.Options{})
		rc.Signed, rc.Passkey = audit.Signed{Statement: rc.Statement}, &x
	}
	p.lastRequest = p.add(audit.Draft{Type: audit.TypeRequestCreated, Actor: "alice", Request: id, Account: "prod-db", Payload: rc})
	return id
}

// review logs who approving request id with authenticator a's assertion
// (made with options o, then edited).
func (p *passkeyLog) review(id, who string, a *passkeytest.Authenticator, o passkeytest.Options, edit func(*audit.RequestReviewed)) int {
	at := p.now.Add(time.Second).Truncate(time.Second)
	stmt := statement.Statement{Type: statement.TypeApprove, Origin: fuzzOrigin, Request: id, Content: p.content[id].Digest(),
		Comment: statement.CommentDigest("from the console"), Time: at}.Marshal()
	x := a.Assert(stmt, o)
	rv := audit.RequestReviewed{Decision: statement.TypeApprove, Comment: "from the console", Groups: []string{"db"}, Statement: stmt, Passkey: &x}
	if edit != nil {
		edit(&rv)
	}
	return p.add(audit.Draft{Type: audit.TypeRequestReviewed, Actor: who, Request: id, Account: "prod-db", Payload: rv})
}

// certReview logs who approving with their certificate key.
func (p *passkeyLog) certReview(id, who string, keyStore string) int {
	at := p.now.Add(time.Second).Truncate(time.Second)
	stmt := statement.Statement{Type: statement.TypeApprove, Origin: fuzzOrigin, Request: id, Content: p.content[id].Digest(),
		Comment: statement.CommentDigest(""), Time: at}.Marshal()
	sig, err := statement.Sign(p.keys[who], stmt)
	must(err)
	return p.add(audit.Draft{Type: audit.TypeRequestReviewed, Actor: who, Request: id, Account: "prod-db", Payload: audit.RequestReviewed{
		Decision: statement.TypeApprove, Groups: []string{"db"}, Statement: stmt, Signature: sig, Certificate: p.certs[who], KeyStore: keyStore}})
}

func (p *passkeyLog) approved(id string) int {
	at := p.now.Add(time.Second)
	return p.add(audit.Draft{Type: audit.TypeRequestApproved, Actor: "broker", Request: id, Account: "prod-db", Payload: audit.RequestApproved{
		ApprovedAt: at, GrantExpiresAt: at.Add(30 * time.Minute), ActivationDeadline: at.Add(10 * time.Minute), Assignment: map[string]string{"bob": "db", "erin": "db"}}})
}

func (p *passkeyLog) verify(t *testing.T) (*Summary, error) {
	t.Helper()
	var (
		head    audit.Head
		entries [][]byte
	)
	for i, d := range p.drafts {
		rec, err := audit.Build(head, p.times[i], d)
		must(err)
		entries = append(entries, rec.Bytes)
		head = rec.Next()
	}
	cp, _ := p.l.checkpoint(entries)
	o := p.l.options(p.l.exportOf(entries), cp, nil)
	if len(p.crlEntries) > 0 {
		der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: fuzzT0, NextUpdate: fuzzT0.Add(48 * time.Hour),
			RevokedCertificateEntries: p.crlEntries}, p.l.ca, p.l.caKey)
		must(err)
		crl, err := x509.ParseRevocationList(der)
		must(err)
		o.CRLs = []*x509.RevocationList{crl}
	}
	return Verify(o)
}

// A genuine log: bob binds a passkey and approves with it, erin approves
// with her certificate key on a PKCS#11 token; the quorum of two is met
// and the summary counts one passkey and one hardware-key approval.
func TestPasskeyApprovalVerifies(t *testing.T) {
	p := newPasskeyLog(t)
	p.bind("bob", "bob", p.passkeys["bob"], nil)
	id := p.request()
	p.review(id, "bob", p.passkeys["bob"], passkeytest.Options{}, nil)
	p.certReview(id, "erin", audit.KeyStorePKCS11)
	p.approved(id)
	sum, err := p.verify(t)
	if err != nil {
		t.Fatal(err)
	}
	if sum.PasskeyBindings != 1 || sum.PasskeyApprovals != 1 || sum.HardwareKeyApprovals != 1 || sum.Grants != 1 {
		t.Fatalf("summary %+v", sum)
	}
}

// Each forgery is refused at its entry, with the reason.
func TestPasskeyForgeries(t *testing.T) {
	for _, c := range []struct {
		name string
		// build returns the entry that must be refused.
		build  func(p *passkeyLog) int
		reason string
	}{
		{"a passkey never bound", func(p *passkeyLog) int {
			id := p.request()
			return p.review(id, "bob", p.passkeys["bob"], passkeytest.Options{}, nil)
		}, "was never bound"},
		{"a binding signed by someone else", func(p *passkeyLog) int {
			return p.bind("bob", "mallory", p.passkeys["bob"], nil)
		}, "signed with the certificate of mallory but logged as made by bob"},
		{"a binding naming someone else than its signer", func(p *passkeyLog) int {
			return p.bind("mallory", "mallory", p.passkeys["bob"], func(b *passkey.Binding) { b.Principal = "bob" })
		}, "only the approver binds their own passkey"},
		{"a binding whose signature was made by another key", func(p *passkeyLog) int {
			i := p.bind("bob", "bob", p.passkeys["bob"], nil)
			pb := p.drafts[i].Payload.(audit.PasskeyBound)
			pb.Signature, _ = statement.Sign(p.keys["mallory"], pb.Statement)
			p.drafts[i].Payload = pb
			return i
		}, "does not verify with the signing certificate's key"},
		{"a binding from another log", func(p *passkeyLog) int {
			return p.bind("bob", "bob", p.passkeys["bob"], func(b *passkey.Binding) { b.Origin = "other.example/log" })
		}, "is for log"},
		{"a binding swapping in the operator's own key", func(p *passkeyLog) int {
			p.bind("bob", "bob", p.passkeys["bob"], nil)
			id := p.request()
			forged := *p.passkeys["bob"]
			forged.Key = p.passkeys["mallory"].Key
			return p.review(id, "bob", &forged, passkeytest.Options{}, nil)
		}, "signature does not verify with the bound ES256 key"},
		{"an assertion without user verification", func(p *passkeyLog) int {
			p.bind("bob", "bob", p.passkeys["bob"], nil)
			return p.review(p.request(), "bob", p.passkeys["bob"], passkeytest.Options{Flags: passkeytest.FlagUP}, nil)
		}, "user verification (UV)"},
		{"an assertion made on another origin", func(p *passkeyLog) int {
			p.bind("bob", "bob", p.passkeys["bob"], nil)
			return p.review(p.request(), "bob", p.passkeys["bob"], passkeytest.Options{Origin: "https://evil.example.org"}, nil)
		}, "not on the bound origin"},
		{"an assertion over another statement", func(p *passkeyLog) int {
			p.bind("bob", "bob", p.passkeys["bob"], nil)
			id := p.request()
			return p.review(id, "bob", p.passkeys["bob"], passkeytest.Options{Challenge: passkey.Challenge([]byte("another request"))}, nil)
		}, "challenge is not the SHA-256 of this statement"},
		{"an assertion for another relying party", func(p *passkeyLog) int {
			p.bind("bob", "bob", p.passkeys["bob"], nil)
			return p.review(p.request(), "bob", p.passkeys["bob"], passkeytest.Options{RPID: "evil.example.org"}, nil)
		}, "another relying party"},
		{"a replayed assertion (its counter does not advance)", func(p *passkeyLog) int {
			p.bind("bob", "bob", p.passkeys["bob"], nil)
			p.review(p.request(), "bob", p.passkeys["bob"], passkeytest.Options{}, nil)
			one := uint32(1)
			return p.review(p.request(), "bob", p.passkeys["bob"], passkeytest.Options{Counter: &one}, nil)
		}, "does not advance"},
		{"erin's passkey logged as bob's review", func(p *passkeyLog) int {
			p.bind("erin", "erin", p.passkeys["erin"], nil)
			return p.review(p.request(), "bob", p.passkeys["erin"], passkeytest.Options{}, nil)
		}, "is bound to erin, not bob"},
		{"a removed passkey", func(p *passkeyLog) int {
			p.bind("bob", "bob", p.passkeys["bob"], nil)
			p.add(audit.Draft{Type: audit.TypePasskeyRemoved, Actor: "bob", Payload: audit.PasskeyRemoved{Credential: p.passkeys["bob"].ID}})
			return p.review(p.request(), "bob", p.passkeys["bob"], passkeytest.Options{}, nil)
		}, "was removed"},
		{"a credential bound twice", func(p *passkeyLog) int {
			p.bind("bob", "bob", p.passkeys["bob"], nil)
			return p.bind("erin", "erin", p.passkeys["bob"], nil)
		}, "already bound"},
		{"a passkey whose binding certificate was revoked", func(p *passkeyLog) int {
			p.bind("bob", "bob", p.passkeys["bob"], nil)
			id := p.request()
			bob, _ := x509.ParseCertificate(p.certs["bob"])
			p.crlEntries = append(p.crlEntries, x509.RevocationListEntry{SerialNumber: bob.SerialNumber, RevocationTime: p.now})
			return p.review(id, "bob", p.passkeys["bob"], passkeytest.Options{}, nil)
		}, "binding no longer holds"},
		{"a passkey review that also carries a certificate", func(p *passkeyLog) int {
			p.bind("bob", "bob", p.passkeys["bob"], nil)
			return p.review(p.request(), "bob", p.passkeys["bob"], passkeytest.Options{}, func(rv *audit.RequestReviewed) { rv.Certificate = p.certs["bob"] })
		}, "carries no certificate signature"},
		{"an assertion moved to another comment", func(p *passkeyLog) int {
			p.bind("bob", "bob", p.passkeys["bob"], nil)
			return p.review(p.request(), "bob", p.passkeys["bob"], passkeytest.Options{}, func(rv *audit.RequestReviewed) { rv.Comment = "something else" })
		}, "comment digest does not match"},
		{"the requester approving with a passkey she bound", func(p *passkeyLog) int {
			p.bind("alice", "alice", p.passkeys["alice"], nil)
			return p.review(p.request(), "alice", p.passkeys["alice"], passkeytest.Options{}, nil)
		}, "reviewed their own request"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := newPasskeyLog(t)
			at := c.build(p)
			_, err := p.verify(t)
			if err == nil {
				t.Fatal("the forgery verifies")
			}
			if vs := violationsOf(t, err); !has(vs, int64(at), c.reason) {
				t.Fatalf("entry %d is not refused for %q:\n%s", at, c.reason, vs)
			}
		})
	}
}

// A credential is one per principal's binding; the same person's
// certificate and passkey are one approver: bob approving twice, once
// with each, counts once.
func TestPasskeyAndCertificateAreOneApprover(t *testing.T) {
	p := newPasskeyLog(t)
	p.bind("bob", "bob", p.passkeys["bob"], nil)
	id := p.request()
	p.review(id, "bob", p.passkeys["bob"], passkeytest.Options{}, nil)
	second := p.certReview(id, "bob", "")
	_, err := p.verify(t)
	if vs := violationsOf(t, err); !has(vs, int64(second), "reviewed request") {
		t.Fatalf("bob counted twice: %s", vs)
	}
	if !bytes.Equal(p.passkeys["bob"].ID, p.drafts[1].Payload.(audit.PasskeyBound).Credential) {
		t.Fatal("the binding is not the first entry after the policy")
	}
}

// A request made in the console is signed by the requester's bound
// passkey: it verifies, and the requester is known by the key of the
// certificate that bound it, so an approval signed by that certificate
// (logged under another name) never counts. A request signed by a passkey
// never bound, or bound to someone else, was not made by its requester.
func TestPasskeySignedRequest(t *testing.T) {
	p := newPasskeyLog(t)
	p.bind("alice", "alice", p.passkeys["alice"], nil)
	p.bind("bob", "bob", p.passkeys["bob"], nil)
	p.requestPasskey = p.passkeys["alice"]
	id := p.request()
	p.review(id, "bob", p.passkeys["bob"], passkeytest.Options{}, nil)
	p.certReview(id, "erin", "")
	p.approved(id)
	if _, err := p.verify(t); err != nil {
		t.Fatalf("a passkey-signed request: %v", err)
	}
	for _, c := range []struct {
		name   string
		build  func(p *passkeyLog) int
		reason string
	}{
		{"by a passkey never bound", func(p *passkeyLog) int {
			p.requestPasskey = p.passkeys["alice"]
			p.request()
			return p.lastRequest
		}, "was never bound"},
		{"by bob's passkey, logged as alice's", func(p *passkeyLog) int {
			p.bind("bob", "bob", p.passkeys["bob"], nil)
			p.requestPasskey = p.passkeys["bob"]
			p.request()
			return p.lastRequest
		}, "is bound to bob, not alice"},
		{"with a certificate signature too", func(p *passkeyLog) int {
			p.bind("alice", "alice", p.passkeys["alice"], nil)
			p.requestPasskey = p.passkeys["alice"]
			id := p.request()
			rc := p.drafts[p.lastRequest].Payload.(audit.RequestCreated)
			rc.Certificate = p.certs["alice"]
			p.drafts[p.lastRequest].Payload = rc
			_ = id
			return p.lastRequest
		}, "carries no certificate signature"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := newPasskeyLog(t)
			at := c.build(p)
			_, err := p.verify(t)
			if vs := violationsOf(t, err); !has(vs, int64(at), c.reason) {
				t.Fatalf("entry %d is not refused for %q:\n%s", at, c.reason, vs)
			}
		})
	}
}
