package broker_test

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/hsm"
	"github.com/bgbroker/breakglass/server/broker"
	"github.com/bgbroker/breakglass/server/request"
	"github.com/bgbroker/breakglass/server/sshca"
	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/x509ca"
)

// certPolicy is testPolicy with SSH and X.509 certificates on prod-db and
// drills without drill names on ledger.
var certPolicy = strings.Replace(testPolicy, `    max_issuances: 2
    deny_threshold: 1
`, `    max_issuances: 3
    deny_threshold: 1
    drill_audience: drill.prod.example
    ssh:
      principals: [breakglass, postgres]
      drill_principals: [drill]
      source_addresses: [127.0.0.0/8]
      force_command: /usr/bin/recovery
      extensions: [permit-pty]
    x509:
      common_name: "{requester}"
      drill_common_name: "drill-{requester}"
      dns_names: ["{requester}.users.example.com"]
      uri_sans: ["spiffe://example.com/{account}/{requester}"]
`, 1)

type testAuthorities struct {
	ssh            *sshca.CA
	x509           *x509ca.CA
	sshKID, x5KID  string
	sshKey, x5Key  *faultyKey
	missingX509CAs bool
}

func (a *testAuthorities) SSHCA() (*sshca.CA, string, error) { return a.ssh, a.sshKID, nil }
func (a *testAuthorities) X509CA() (*x509ca.CA, string, error) {
	if a.missingX509CAs {
		return nil, "", errors.New("no X.509 CA key is configured (keys.x509_ca)")
	}
	return a.x509, a.x5KID, nil
}
func (a *testAuthorities) CRLURL(kid string) string {
	return "https://broker.test/x509/crls/" + kid + ".crl"
}

// certHarness is a broker with SSH and X.509 CAs whose HSM keys fail on
// command.
func certHarness(t *testing.T) (*harness, *testAuthorities, *atomic.Int32) {
	t.Helper()
	h := newHarness(t, certPolicy)
	a := &testAuthorities{sshKey: &faultyKey{Key: h.keys[hsm.PurposeSSHCA]}, x5Key: &faultyKey{Key: h.keys[hsm.PurposeX509CA]}, sshKID: "ssh-kid", x5KID: "x509-kid"}
	var err error
	if a.ssh, err = sshca.New(a.sshKey); err != nil {
		t.Fatal(err)
	}
	caCert, err := x509ca.SelfSign(h.ctx, a.x5Key, x509ca.CAOptions{Subject: pkix.Name{CommonName: "test X.509 CA"}, NotBefore: h.clock.Now().Add(-time.Hour), NotAfter: h.clock.Now().Add(90 * 24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if a.x509, err = x509ca.New(caCert, a.x5Key); err != nil {
		t.Fatal(err)
	}
	revoked := &atomic.Int32{}
	h.authorities = a
	h.observer = revocations{n: revoked}
	h.restart(certPolicy)
	return h, a, revoked
}

func newSSHKey(t *testing.T) []byte {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pk, _ := ssh.NewPublicKey(pub)
	return ssh.MarshalAuthorizedKey(pk)
}

func newCSR(t *testing.T, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func lastEntry(t *testing.T, h *harness, typ audit.Type) *audit.Entry {
	t.Helper()
	all := h.verifyChain()
	for i := len(all) - 1; i >= 0; i-- {
		if all[i].Type == typ {
			e, err := audit.Parse(all[i].Bytes)
			if err != nil {
				t.Fatal(err)
			}
			return e
		}
	}
	t.Fatalf("no %s entry", typ)
	return nil
}

func TestSSHCertificateFromThePolicy(t *testing.T) {
	h, a, _ := certHarness(t)
	h.clock.Advance(1500 * time.Millisecond) // approval inside a second
	r := h.approved("alice")
	h.clock.Advance(2 * time.Second)
	iss, err := h.b.IssueSSHCertificate(h.ctx, "alice", broker.SSHCertInput{RequestID: r.ID, PublicKey: newSSHKey(t), Principals: []string{"postgres"}})
	if err != nil {
		t.Fatal(err)
	}
	c := iss.Cert
	switch {
	case !slices.Equal(c.ValidPrincipals, []string{"postgres"}):
		t.Errorf("principals %v", c.ValidPrincipals)
	case c.KeyId != "breakglass:"+r.ID+":1:alice":
		t.Errorf("key id %q", c.KeyId)
	case int64(c.ValidAfter) != r.ApprovedAt.Unix() || c.ValidAfter > uint64(r.ApprovedAt.Unix()):
		t.Errorf("valid after %d, approval %s", c.ValidAfter, r.ApprovedAt)
	case int64(c.ValidBefore) != r.GrantExpiresAt.Unix():
		t.Errorf("valid before %d, grant end %s", c.ValidBefore, r.GrantExpiresAt)
	case c.CriticalOptions["source-address"] != "127.0.0.0/8" || c.CriticalOptions["force-command"] != "/usr/bin/recovery" || len(c.Extensions) != 1:
		t.Errorf("options %v extensions %v", c.CriticalOptions, c.Extensions)
	case c.Serial == 0 || iss.IssuancesLeft != 2:
		t.Errorf("serial %d, left %d", c.Serial, iss.IssuancesLeft)
	}
	if err := sshca.Verify(c, a.ssh.PublicKey()); err != nil {
		t.Fatal(err)
	}
	// Without principals: every one the policy allows.
	all, err := h.b.IssueSSHCertificate(h.ctx, "alice", broker.SSHCertInput{RequestID: r.ID, PublicKey: newSSHKey(t)})
	if err != nil || !slices.Equal(all.Cert.ValidPrincipals, []string{"breakglass", "postgres"}) || all.Cert.KeyId != "breakglass:"+r.ID+":2:alice" {
		t.Fatalf("default principals: %v %v", all, err)
	}
	e := lastEntry(t, h, audit.TypeSSHCertIssued)
	var p audit.SSHCertificateIssued
	if err := json.Unmarshal(e.Payload, &p); err != nil {
		t.Fatal(err)
	}
	pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(p.Certificate))
	if err != nil || string(pk.Marshal()) != string(all.Cert.Marshal()) || p.Issuance != 2 || p.CAKID != "ssh-kid" || e.Actor != "alice" ||
		!strings.HasPrefix(p.SubjectKeySHA256, "SHA256:") || !slices.Equal(p.Approvers, []string{"bob", "erin"}) {
		t.Fatalf("entry %s: %v", e.Payload, err)
	}
	// The issuance counts against max_issuances with tokens.
	if _, err := h.b.IssueToken(h.ctx, "alice", r.ID, "db.prod.example"); err != nil {
		t.Fatal(err)
	}
	before := h.snap()
	_, err = h.b.IssueSSHCertificate(h.ctx, "alice", broker.SSHCertInput{RequestID: r.ID, PublicKey: newSSHKey(t)})
	wantKind(t, err, broker.KindState, "issued all 3")
	if h.snap() != before {
		t.Fatal("a refused issuance changed the store")
	}
}

func TestSSHCertificateRefusals(t *testing.T) {
	h, _, _ := certHarness(t)
	r := h.approved("alice")
	key := newSSHKey(t)
	pending := h.create("frank", "prod-db")
	denied := h.create("frank", "prod-db")
	if _, err := h.review("bob", denied.ID, request.Deny); err != nil {
		t.Fatal(err)
	}
	revoked := h.approved("frank")
	if _, err := h.b.RevokeGrant(h.ctx, "frank", revoked.ID, "done"); err != nil {
		t.Fatal(err)
	}
	drill, err := h.b.CreateRequest(h.ctx, "alice", h.signedCreate("alice", broker.CreateInput{Account: "prod-db", Justification: "quarterly drill", TTL: 10 * time.Minute, Drill: true}))
	if err != nil {
		t.Fatal(err)
	}
	for _, who := range []string{"bob", "erin"} {
		if _, err := h.review(who, drill.Request.ID, request.Approve); err != nil {
			t.Fatal(err)
		}
	}
	before := h.snap()
	cases := []struct {
		name   string
		caller string
		in     broker.SSHCertInput
		kind   broker.Kind
		msg    string
	}{
		{"principal outside the policy", "alice", broker.SSHCertInput{RequestID: r.ID, PublicKey: key, Principals: []string{"root"}}, broker.KindInvalid, `principal "root" is not one of account prod-db's SSH principals`},
		{"one good one bad", "alice", broker.SSHCertInput{RequestID: r.ID, PublicKey: key, Principals: []string{"breakglass", "root"}}, broker.KindInvalid, "not one of"},
		{"too many principals", "alice", broker.SSHCertInput{RequestID: r.ID, PublicKey: key, Principals: slices.Repeat([]string{"breakglass"}, 33)}, broker.KindInvalid, "at most 32"},
		{"non-requester", "bob", broker.SSHCertInput{RequestID: r.ID, PublicKey: key}, broker.KindPermission, "only the requester"},
		{"stranger", "mallory", broker.SSHCertInput{RequestID: r.ID, PublicKey: key}, broker.KindNotFound, "not found"},
		{"pending", "frank", broker.SSHCertInput{RequestID: pending.ID, PublicKey: key}, broker.KindState, "still pending"},
		{"denied", "frank", broker.SSHCertInput{RequestID: denied.ID, PublicKey: key}, broker.KindState, "denied"},
		{"revoked", "frank", broker.SSHCertInput{RequestID: revoked.ID, PublicKey: key}, broker.KindState, "revoked"},
		{"drill for a real principal", "alice", broker.SSHCertInput{RequestID: drill.Request.ID, PublicKey: key, Principals: []string{"breakglass"}}, broker.KindInvalid, "drill principals"},
		{"garbage key", "alice", broker.SSHCertInput{RequestID: r.ID, PublicKey: []byte("ssh-ed25519 AAAA")}, broker.KindInvalid, "public_key"},
		{"no key", "alice", broker.SSHCertInput{RequestID: r.ID}, broker.KindInvalid, "public_key"},
	}
	for _, c := range cases {
		_, err := h.b.IssueSSHCertificate(h.ctx, c.caller, c.in)
		if err == nil || broker.KindOf(err) != c.kind || !strings.Contains(broker.PublicMessage(err), c.msg) {
			t.Errorf("%s: %v (kind %d), want kind %d %q", c.name, err, broker.KindOf(err), c.kind, c.msg)
		}
	}
	if h.snap() != before {
		t.Fatal("a refused issuance changed the store")
	}
	// A drill gets the drill principals only.
	d, err := h.b.IssueSSHCertificate(h.ctx, "alice", broker.SSHCertInput{RequestID: drill.Request.ID, PublicKey: key})
	if err != nil || !slices.Equal(d.Cert.ValidPrincipals, []string{"drill"}) {
		t.Fatalf("drill certificate %v %v", d, err)
	}
	// After the grant ends, nothing.
	h.clock.Advance(time.Hour)
	_, err = h.b.IssueSSHCertificate(h.ctx, "alice", broker.SSHCertInput{RequestID: r.ID, PublicKey: key})
	wantKind(t, err, broker.KindState, "")
	// An account without an ssh: section issues none.
	plain := newHarness(t, testPolicy)
	plain.authorities = h.authorities
	plain.restart(testPolicy)
	g := plain.approved("alice")
	_, err = plain.b.IssueSSHCertificate(plain.ctx, "alice", broker.SSHCertInput{RequestID: g.ID, PublicKey: key})
	wantKind(t, err, broker.KindState, "no ssh: section")
}

func TestX509CertificateFromThePolicy(t *testing.T) {
	h, a, _ := certHarness(t)
	r := h.approved("alice")
	// The CSR asks for another name and CA:TRUE: ignored.
	csr := newCSR(t, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "postgres"}, DNSNames: []string{"evil.example.org"}})
	iss, err := h.b.IssueX509Certificate(h.ctx, "alice", broker.X509CertInput{RequestID: r.ID, CSR: csr})
	if err != nil {
		t.Fatal(err)
	}
	c := iss.Cert
	switch {
	case c.Subject.CommonName != "alice" || !slices.Equal(c.DNSNames, []string{"alice.users.example.com"}) || len(c.URIs) != 1 || c.URIs[0].String() != "spiffe://example.com/prod-db/alice":
		t.Errorf("names %s %v %v", c.Subject, c.DNSNames, c.URIs)
	case c.IsCA || !slices.Equal(c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}):
		t.Errorf("CA %v usages %v", c.IsCA, c.ExtKeyUsage)
	case !c.NotAfter.Equal(r.GrantExpiresAt.Truncate(time.Second)) || c.NotBefore.After(r.ApprovedAt) || c.NotBefore.Before(r.ApprovedAt.Truncate(time.Second)):
		t.Errorf("validity %s..%s, grant %s..%s", c.NotBefore, c.NotAfter, r.ApprovedAt, r.GrantExpiresAt)
	case !slices.Equal(c.CRLDistributionPoints, []string{"https://broker.test/x509/crls/x509-kid.crl"}):
		t.Errorf("CDP %v", c.CRLDistributionPoints)
	case c.SerialNumber.BitLen() < 64:
		t.Errorf("serial %s is not random 128-bit", c.SerialNumber)
	}
	pool := x509.NewCertPool()
	pool.AddCert(a.x509.Certificate())
	if _, err := c.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: h.clock.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatal(err)
	}
	var p audit.X509CertificateIssued
	if err := json.Unmarshal(lastEntry(t, h, audit.TypeX509CertIssued).Payload, &p); err != nil {
		t.Fatal(err)
	}
	if string(p.Certificate) != string(c.Raw) || p.Serial != c.SerialNumber.String() || p.CommonName != "alice" || p.Issuance != 1 || len(p.SubjectKeySHA256) != 64 {
		t.Fatalf("entry %+v", p)
	}
	// Hostile requests change nothing.
	good := newCSR(t, &x509.CertificateRequest{})
	blk, _ := pem.Decode(good)
	bad := append([]byte(nil), blk.Bytes...)
	bad[len(bad)-3] ^= 1
	before := h.snap()
	for name, in := range map[string]broker.X509CertInput{
		"bad signature": {RequestID: r.ID, CSR: bad},
		"not a CSR":     {RequestID: r.ID, CSR: []byte("hello")},
		"oversize":      {RequestID: r.ID, CSR: make([]byte, 20000)},
	} {
		_, err := h.b.IssueX509Certificate(h.ctx, "alice", in)
		wantKind(t, err, broker.KindInvalid, "csr:")
		_ = name
	}
	_, err = h.b.IssueX509Certificate(h.ctx, "bob", broker.X509CertInput{RequestID: r.ID, CSR: good})
	wantKind(t, err, broker.KindPermission, "only the requester")
	a.missingX509CAs = true
	_, err = h.b.IssueX509Certificate(h.ctx, "alice", broker.X509CertInput{RequestID: r.ID, CSR: good})
	wantKind(t, err, broker.KindState, "keys.x509_ca")
	a.missingX509CAs = false
	if h.snap() != before {
		t.Fatal("a refused issuance changed the store")
	}
}

// Invariant 2: no certificate while the HSM cannot sign, and nothing
// written; revocation still works and revokes the grant's certificates.
func TestCertificatesFailClosedAndRevokeWithTheGrant(t *testing.T) {
	h, a, revoked := certHarness(t)
	r := h.approved("alice")
	sshCert, err := h.b.IssueSSHCertificate(h.ctx, "alice", broker.SSHCertInput{RequestID: r.ID, PublicKey: newSSHKey(t)})
	if err != nil {
		t.Fatal(err)
	}
	x5, err := h.b.IssueX509Certificate(h.ctx, "alice", broker.X509CertInput{RequestID: r.ID, CSR: newCSR(t, &x509.CertificateRequest{})})
	if err != nil {
		t.Fatal(err)
	}
	before := h.snap()
	a.sshKey.down.Store(true)
	a.x5Key.down.Store(true)
	_, err = h.b.IssueSSHCertificate(h.ctx, "alice", broker.SSHCertInput{RequestID: r.ID, PublicKey: newSSHKey(t)})
	wantKind(t, err, broker.KindUnavailable, "HSM")
	h.b.SetHSMDown(false) // ends the broker's back-off, so the X.509 key is asked
	tries := a.x5Key.tries.Load()
	_, err = h.b.IssueX509Certificate(h.ctx, "alice", broker.X509CertInput{RequestID: r.ID, CSR: newCSR(t, &x509.CertificateRequest{})})
	wantKind(t, err, broker.KindUnavailable, "HSM")
	if a.x5Key.tries.Load() == tries {
		t.Fatal("the X.509 CA key was not asked to sign")
	}
	a.sshKey.down.Store(false)
	a.x5Key.down.Store(false)
	h.audit.down.Store(true) // the certificate signs but its entry cannot
	h.b.SetHSMDown(false)
	_, err = h.b.IssueSSHCertificate(h.ctx, "alice", broker.SSHCertInput{RequestID: r.ID, PublicKey: newSSHKey(t)})
	wantKind(t, err, broker.KindUnavailable, "HSM")
	if h.snap() != before {
		t.Fatal("an issuance wrote while the HSM could not sign")
	}
	// Revocation works with the HSM down and takes the certificates along.
	if _, err := h.b.RevokeGrant(h.ctx, "alice", r.ID, "done"); err != nil {
		t.Fatal(err)
	}
	if revoked.Load() != 1 {
		t.Fatalf("CertificatesRevoked heard %d times", revoked.Load())
	}
	_ = h.store.View(h.ctx, func(rd store.Reader) error {
		for kind, serial := range map[string]string{store.CertSSH: sshCertSerial(sshCert.Cert), store.CertX509: x5.Cert.SerialNumber.String()} {
			got, err := rd.RevokedCertificates(h.ctx, kind, h.clock.Now())
			if err != nil || len(got) != 1 || got[0].Serial != serial || got[0].RequestID != r.ID {
				t.Errorf("revoked %s certificates %+v, %v", kind, got, err)
			}
		}
		st, _ := rd.Revocations(h.ctx)
		if st.Generation != 1 {
			t.Errorf("revocation generation %d", st.Generation)
		}
		return nil
	})
}

func sshCertSerial(c *ssh.Certificate) string {
	b, _ := json.Marshal(c.Serial)
	return string(b)
}

// revocations counts what the broker says of revoked certificates.
type revocations struct {
	broker.NopObserver
	n *atomic.Int32
}

func (r revocations) CertificatesRevoked() { r.n.Add(1) }

// audit.require_witnessed holds back every first credential, not only
// tokens: an SSH or X.509 certificate for a grant no witness has seen
// would let the grant be used hidden from them. Once a checkpoint that
// covers the approval carries the quorum, certificates are issued.
func TestCertificatesWaitForTheWitnesses(t *testing.T) {
	h, _, _ := certHarness(t)
	needed := &atomic.Int32{}
	h.witnesses = &broker.Witnessing{IDs: []string{"w1+00000001", "w2+00000002"}, Quorum: 2, Require: true, Needed: func() { needed.Add(1) }}
	h.restart(certPolicy)
	r := h.approved("alice")
	before := h.snap()
	_, err := h.b.IssueSSHCertificate(h.ctx, "alice", broker.SSHCertInput{RequestID: r.ID, PublicKey: newSSHKey(t)})
	wantKind(t, err, broker.KindState, "witness cosignatures")
	_, err = h.b.IssueX509Certificate(h.ctx, "alice", broker.X509CertInput{RequestID: r.ID, CSR: newCSR(t, &x509.CertificateRequest{})})
	wantKind(t, err, broker.KindState, "witness cosignatures")
	_, err = h.b.IssueToken(h.ctx, "alice", r.ID, "db.prod.example")
	wantKind(t, err, broker.KindState, "witness cosignatures")
	if h.snap() != before {
		t.Fatal("a credential held back for the witnesses changed the store")
	}
	if needed.Load() < 3 {
		t.Errorf("a checkpoint was asked for %d times, want one per refused credential", needed.Load())
	}
	// A checkpoint covering the approval, cosigned by one witness: still
	// short of the quorum.
	var size uint64
	if err := h.store.Update(h.ctx, func(tx store.Tx) error {
		hd, err := tx.Head(h.ctx)
		if err != nil {
			return err
		}
		size = hd.Size
		if err := tx.AddCheckpoint(h.ctx, store.Checkpoint{Size: size, Root: make([]byte, 32), Note: []byte("test checkpoint\n"), CreatedAt: h.clock.Now()}); err != nil {
			return err
		}
		return tx.AddCosignature(h.ctx, store.Cosignature{Size: size, Witness: "w1+00000001", Line: "— w1 AAAA\n", SignedAt: h.clock.Now(), CreatedAt: h.clock.Now()})
	}); err != nil {
		t.Fatal(err)
	}
	_, err = h.b.IssueSSHCertificate(h.ctx, "alice", broker.SSHCertInput{RequestID: r.ID, PublicKey: newSSHKey(t)})
	wantKind(t, err, broker.KindState, "witness cosignatures")
	if err := h.store.Update(h.ctx, func(tx store.Tx) error {
		return tx.AddCosignature(h.ctx, store.Cosignature{Size: size, Witness: "w2+00000002", Line: "— w2 AAAA\n", SignedAt: h.clock.Now(), CreatedAt: h.clock.Now()})
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.b.IssueSSHCertificate(h.ctx, "alice", broker.SSHCertInput{RequestID: r.ID, PublicKey: newSSHKey(t)}); err != nil {
		t.Fatalf("SSH certificate once the witnesses cosigned the approval: %v", err)
	}
	if _, err := h.b.IssueX509Certificate(h.ctx, "alice", broker.X509CertInput{RequestID: r.ID, CSR: newCSR(t, &x509.CertificateRequest{})}); err != nil {
		t.Fatalf("X.509 certificate once the witnesses cosigned the approval: %v", err)
	}
}

// registerCA records a CA key as the registry's active key of its purpose
// (retiring old, when given), as `breakglassd hsm rotate` does from
// another process.
func registerCA(t *testing.T, h *harness, purpose, kid string, old *store.KeyRecord) store.KeyRecord {
	t.Helper()
	rec := store.KeyRecord{KID: kid, Purpose: purpose, Label: kid, KeyID: "01", PublicPEM: "-", State: store.KeyActive, ActivatedAt: h.clock.Now()}
	if old != nil {
		old.State, old.RetiredAt = store.KeyRetired, h.clock.Now()
	}
	if err := h.b.RecordKey(h.ctx, audit.TypeKeyActivated, rec, audit.KeyChange{Purpose: purpose, KID: kid, Label: kid, Reason: "test"}, old); err != nil {
		t.Fatal(err)
	}
	return rec
}

// A CA key rotated by another process while a certificate is being
// signed: the certificate signed by the retired key is thrown away, not
// issued and not logged, as a token signed by a retired token key is. A
// broker that has not reloaded its CAs since the rotation signs nothing
// with the retired key either. Otherwise a certificate could be recorded
// under a key already retired, after the key's last certificate was
// counted, and outlive the key's CRL.
func TestCertificatesSignedByARotatedCAKeyAreRefused(t *testing.T) {
	h, a, _ := certHarness(t)
	sshRec := registerCA(t, h, "ssh-ca", a.sshKID, nil)
	x5Rec := registerCA(t, h, "x509-ca", a.x5KID, nil)
	r := h.approved("alice")
	if _, err := h.b.IssueSSHCertificate(h.ctx, "alice", broker.SSHCertInput{RequestID: r.ID, PublicKey: newSSHKey(t)}); err != nil {
		t.Fatalf("with the registry naming the CA key in use: %v", err)
	}
	// The rotation lands while the HSM signs.
	rotate := func() { registerCA(t, h, "ssh-ca", "ssh-kid-2", &sshRec) }
	a.sshKey.during.Store(&rotate)
	before := h.snap()
	_, err := h.b.IssueSSHCertificate(h.ctx, "alice", broker.SSHCertInput{RequestID: r.ID, PublicKey: newSSHKey(t)})
	wantKind(t, err, broker.KindState, "SSH CA key was rotated")
	if after := h.snap(); after.requests != before.requests || after.head != before.head+2 { // the rotation's two entries
		t.Fatalf("a certificate of the retired CA key was recorded: head %d -> %d", before.head, after.head)
	}
	// This broker still holds the old key as its active one: nothing more
	// is signed with it until it reloads.
	tries := a.sshKey.tries.Load()
	_, err = h.b.IssueSSHCertificate(h.ctx, "alice", broker.SSHCertInput{RequestID: r.ID, PublicKey: newSSHKey(t)})
	wantKind(t, err, broker.KindState, "SSH CA key was rotated")
	if a.sshKey.tries.Load() != tries {
		t.Fatal("the retired SSH CA key was asked to sign")
	}
	// The same for X.509.
	rotateX := func() { registerCA(t, h, "x509-ca", "x509-kid-2", &x5Rec) }
	a.x5Key.during.Store(&rotateX)
	before = h.snap()
	_, err = h.b.IssueX509Certificate(h.ctx, "alice", broker.X509CertInput{RequestID: r.ID, CSR: newCSR(t, &x509.CertificateRequest{})})
	wantKind(t, err, broker.KindState, "X.509 CA key was rotated")
	if after := h.snap(); after.requests != before.requests || after.head != before.head+2 {
		t.Fatalf("a certificate of the retired X.509 CA key was recorded: head %d -> %d", before.head, after.head)
	}
	tries = a.x5Key.tries.Load()
	_, err = h.b.IssueX509Certificate(h.ctx, "alice", broker.X509CertInput{RequestID: r.ID, CSR: newCSR(t, &x509.CertificateRequest{})})
	wantKind(t, err, broker.KindState, "X.509 CA key was rotated")
	if a.x5Key.tries.Load() != tries {
		t.Fatal("the retired X.509 CA key was asked to sign")
	}
	// Once the broker's CAs name the new keys, it issues again.
	a.sshKID, a.x5KID = "ssh-kid-2", "x509-kid-2"
	if _, err := h.b.IssueSSHCertificate(h.ctx, "alice", broker.SSHCertInput{RequestID: r.ID, PublicKey: newSSHKey(t)}); err != nil {
		t.Fatalf("after the reload: %v", err)
	}
}

// A CA key retired as revoked (hsm rotate --revoke-old, for a key that may
// be compromised) takes every certificate it signed with it, in the
// rotation's transaction: they enter the KRL and the key's CRL at once.
// Certificates of other CA keys are untouched.
func TestRevokingACAKeyRevokesItsCertificates(t *testing.T) {
	h, a, revoked := certHarness(t)
	sshRec := registerCA(t, h, "ssh-ca", a.sshKID, nil)
	registerCA(t, h, "x509-ca", a.x5KID, nil)
	r := h.approved("alice")
	old, err := h.b.IssueSSHCertificate(h.ctx, "alice", broker.SSHCertInput{RequestID: r.ID, PublicKey: newSSHKey(t)})
	if err != nil {
		t.Fatal(err)
	}
	x5, err := h.b.IssueX509Certificate(h.ctx, "alice", broker.X509CertInput{RequestID: r.ID, CSR: newCSR(t, &x509.CertificateRequest{})})
	if err != nil {
		t.Fatal(err)
	}
	sshRec.State, sshRec.RetiredAt, sshRec.RevokedAt = store.KeyRetired, h.clock.Now(), h.clock.Now()
	next := store.KeyRecord{KID: "ssh-kid-2", Purpose: "ssh-ca", Label: "ssh-kid-2", KeyID: "02", PublicPEM: "-", State: store.KeyActive, ActivatedAt: h.clock.Now()}
	if err := h.b.RecordKey(h.ctx, audit.TypeKeyActivated, next, audit.KeyChange{Purpose: "ssh-ca", KID: next.KID, Label: next.Label, Previous: sshRec.KID,
		Reason: "key ceremony: the old key's backup was lost"}, &sshRec); err != nil {
		t.Fatal(err)
	}
	if revoked.Load() != 1 {
		t.Fatalf("CertificatesRevoked heard %d times", revoked.Load())
	}
	_ = h.store.View(h.ctx, func(rd store.Reader) error {
		got, err := rd.RevokedCertificates(h.ctx, store.CertSSH, h.clock.Now())
		if err != nil || len(got) != 1 || got[0].Serial != sshCertSerial(old.Cert) || got[0].CAKID != a.sshKID {
			t.Errorf("revoked SSH certificates %+v, %v", got, err)
		}
		if got, err := rd.RevokedCertificates(h.ctx, store.CertX509, h.clock.Now()); err != nil || len(got) != 0 {
			t.Errorf("the X.509 certificate %s of another CA was revoked: %+v %v", x5.Cert.SerialNumber, got, err)
		}
		keys, err := rd.Keys(h.ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			if k.KID == a.sshKID && (k.RevokedAt.IsZero() || k.State != store.KeyRetired) {
				t.Errorf("the old SSH CA key is %s, revoked at %s", k.State, k.RevokedAt)
			}
		}
		return nil
	})
	e := lastEntry(t, h, audit.TypeKeyRetired)
	var ch audit.KeyChange
	if err := json.Unmarshal(e.Payload, &ch); err != nil || ch.KID != a.sshKID || !strings.Contains(ch.Reason, "revoked with every certificate it signed (1 not yet expired)") ||
		!strings.Contains(ch.Reason, "the old key's backup was lost") {
		t.Fatalf("key_retired entry %s: %v", e.Payload, err)
	}
}

// The policy reloaded while the HSM signs a certificate: the certificate
// was made from the old policy's ssh: or x509: section, and is recorded
// only if the policy in force when it is recorded gives the same names,
// options and validity. Otherwise the log would hold a certificate the
// logged policy does not allow, which the offline verifier refuses.
func TestCertificatesAfterAPolicyReloadMidFlight(t *testing.T) {
	h, a, _ := certHarness(t)
	r := h.approved("alice")
	narrowed := strings.Replace(certPolicy, "principals: [breakglass, postgres]", "principals: [breakglass]", 1)
	narrowed = strings.Replace(narrowed, `dns_names: ["{requester}.users.example.com"]`, `dns_names: ["{requester}.db.example.com"]`, 1)
	for _, tc := range []struct {
		name   string
		policy string
		issue  func() error
		key    *faultyKey
	}{
		{"ssh principals narrowed", narrowed, func() error {
			_, err := h.b.IssueSSHCertificate(h.ctx, "alice", broker.SSHCertInput{RequestID: r.ID, PublicKey: newSSHKey(t), Principals: []string{"postgres"}})
			return err
		}, a.sshKey},
		{"ssh max_ttl shortened", strings.Replace(certPolicy, "      extensions: [permit-pty]\n", "      extensions: [permit-pty]\n      max_ttl: 5m\n", 1), func() error {
			_, err := h.b.IssueSSHCertificate(h.ctx, "alice", broker.SSHCertInput{RequestID: r.ID, PublicKey: newSSHKey(t)})
			return err
		}, a.sshKey},
		{"x509 names changed", narrowed, func() error {
			_, err := h.b.IssueX509Certificate(h.ctx, "alice", broker.X509CertInput{RequestID: r.ID, CSR: newCSR(t, &x509.CertificateRequest{})})
			return err
		}, a.x5Key},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := policy.Load([]byte(tc.policy), "policy.yaml")
			if err != nil {
				t.Fatal(err)
			}
			orig, err := policy.Load([]byte(certPolicy), "policy.yaml")
			if err != nil {
				t.Fatal(err)
			}
			reload := func() {
				if _, err := h.reload(p); err != nil {
					t.Error(err)
				}
			}
			tc.key.during.Store(&reload)
			before := h.snap()
			err = tc.issue()
			wantKind(t, err, broker.KindState, "policy changed while the certificate was being made")
			if after := h.snap(); after.requests != before.requests || after.head != before.head+1 { // the reload's entry alone
				t.Fatalf("a certificate made under the old policy was recorded: head %d -> %d", before.head, after.head)
			}
			// Under the policy in force, issuance goes on.
			if err := tc.issue(); err != nil && !strings.Contains(err.Error(), "not one of") {
				t.Fatalf("after the reload: %v", err)
			}
			if _, err := h.reload(orig); err != nil {
				t.Fatal(err)
			}
		})
	}
}
