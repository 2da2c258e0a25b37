package x509ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"math/big"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bgbroker/breakglass/hsm"
	"github.com/bgbroker/breakglass/hsm/hsmtest"
)

func TestMain(m *testing.M) { os.Exit(hsmtest.Main(m)) }

func hsmKey(t *testing.T) *hsm.Key {
	t.Helper()
	m := hsmtest.NewToken(t).Open(t)
	ctx := context.Background()
	if _, err := m.GenerateKey(ctx, hsm.GenerateRequest{Purpose: hsm.PurposeX509CA, Label: "x509-ca"}); err != nil {
		t.Fatal(err)
	}
	k, err := m.Signer(ctx, "x509-ca", hsm.PurposeX509CA)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newCA(t *testing.T) (*CA, *hsm.Key) {
	t.Helper()
	k := hsmKey(t)
	now := time.Now()
	cert, err := SelfSign(context.Background(), k, CAOptions{Subject: pkix.Name{CommonName: "breakglass test CA", Organization: []string{"Example"}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), PermittedDNSDomains: []string{"users.example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	ca, err := New(cert, k)
	if err != nil {
		t.Fatal(err)
	}
	return ca, k
}

func csrFor(t *testing.T, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func TestSelfSignedCA(t *testing.T) {
	ca, _ := newCA(t)
	c := ca.Certificate()
	if !c.IsCA || !c.MaxPathLenZero || c.MaxPathLen != 0 || c.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign ||
		!slices.Equal(c.PermittedDNSDomains, []string{"users.example.com"}) || !c.PermittedDNSDomainsCritical || len(c.SubjectKeyId) != 20 {
		t.Fatalf("CA certificate %+v", c)
	}
	if err := c.CheckSignatureFrom(c); err != nil {
		t.Fatal(err)
	}
}

func TestIssueFromCSR(t *testing.T) {
	ca, _ := newCA(t)
	client, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	// The CSR asks for CA:TRUE, another name and a DNS SAN: all ignored.
	bc, _ := asn1.Marshal(struct {
		IsCA bool `asn1:"optional"`
	}{true})
	raw := csrFor(t, client, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "root"}, DNSNames: []string{"evil.example.org"},
		ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: bc}}})
	csr, err := ParseCSR(raw)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := RandomSerial()
	now := time.Now().Truncate(time.Second)
	u, _ := url.Parse("spiffe://example.com/breakglass/prod-db/alice")
	cert, err := ca.Issue(context.Background(), Request{PublicKey: csr.PublicKey, Serial: serial, CommonName: "alice", DNSNames: []string{"alice.users.example.com"},
		URIs: []*url.URL{u}, NotBefore: now, NotAfter: now.Add(30 * time.Minute), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		CRLDistributionPoints: []string{"https://broker.example/x509/crl.der"}})
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case cert.Subject.CommonName != "alice" || len(cert.Subject.Organization) != 0:
		t.Errorf("subject %s", cert.Subject)
	case cert.IsCA || !cert.BasicConstraintsValid:
		t.Error("the CSR's CA:TRUE leaked into the certificate")
	case !slices.Equal(cert.DNSNames, []string{"alice.users.example.com"}) || len(cert.URIs) != 1:
		t.Errorf("names %v %v", cert.DNSNames, cert.URIs)
	case cert.KeyUsage != x509.KeyUsageDigitalSignature || !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}):
		t.Errorf("usages %v %v", cert.KeyUsage, cert.ExtKeyUsage)
	case !bytes.Equal(cert.AuthorityKeyId, ca.Certificate().SubjectKeyId) || len(cert.SubjectKeyId) != 20:
		t.Error("AKI/SKI")
	case !slices.Equal(cert.CRLDistributionPoints, []string{"https://broker.example/x509/crl.der"}):
		t.Errorf("CDP %v", cert.CRLDistributionPoints)
	case cert.SerialNumber.Cmp(serial) != 0 || !cert.NotAfter.Equal(now.Add(30*time.Minute)):
		t.Error("serial or validity")
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Certificate())
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatal(err)
	}
	// A name outside the CA's name constraints could not be issued and
	// verify: the constraint holds.
	bad, err := ca.Issue(context.Background(), Request{PublicKey: csr.PublicKey, Serial: big.NewInt(5), CommonName: "alice", DNSNames: []string{"evil.example.org"},
		NotBefore: now, NotAfter: now.Add(time.Minute), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bad.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Fatal("a name outside the constraints verified")
	}
	if _, err := ca.Issue(context.Background(), Request{PublicKey: csr.PublicKey, Serial: big.NewInt(6), CommonName: "a", NotBefore: now,
		NotAfter: now.Add(48 * time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Fatal("issued a certificate outliving its CA")
	}
}

func TestCRL(t *testing.T) {
	ca, _ := newCA(t)
	now := time.Now().Truncate(time.Second)
	der, err := ca.CRL(context.Background(), big.NewInt(3), now, now.Add(time.Hour), []x509.RevocationListEntry{{SerialNumber: big.NewInt(99), RevocationTime: now}})
	if err != nil {
		t.Fatal(err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	if crl.Number.Int64() != 3 || len(crl.RevokedCertificateEntries) != 1 || !crl.NextUpdate.Equal(now.Add(time.Hour)) || !bytes.Equal(crl.AuthorityKeyId, ca.Certificate().SubjectKeyId) {
		t.Fatalf("CRL %+v", crl)
	}
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	dir := t.TempDir()
	caFile, crlFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "crl.pem")
	_ = os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Certificate().Raw}), 0o600)
	_ = os.WriteFile(crlFile, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o600)
	out, err := exec.Command(openssl, "crl", "-in", crlFile, "-CAfile", caFile, "-noout", "-text").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "verify OK") || !strings.Contains(string(out), "Serial Number: 63") {
		t.Fatalf("openssl crl: %v\n%s", err, out)
	}
}

func TestNewRefusesAMismatchedCertificate(t *testing.T) {
	ca, k := newCA(t)
	other := hsmKey(t)
	if _, err := New(ca.Certificate(), other); err == nil || !strings.Contains(err.Error(), "not the certificate of the CA key") {
		t.Fatalf("mismatch: %v", err)
	}
	now := time.Now()
	leaf, err := ca.Issue(context.Background(), Request{PublicKey: k.Public(), Serial: big.NewInt(9), CommonName: "x", NotBefore: now, NotAfter: now.Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(leaf, k); err == nil || !strings.Contains(err.Error(), "not a CA certificate") {
		t.Fatalf("leaf as CA: %v", err)
	}
}

func TestParseCSRRefuses(t *testing.T) {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p521, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	rsa2048, _ := rsa.GenerateKey(rand.Reader, 2048)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	good := csrFor(t, p256, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "x"}})
	if _, err := ParseCSR(good); err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(good)
	if _, err := ParseCSR(blk.Bytes); err != nil {
		t.Fatalf("DER: %v", err)
	}
	if _, err := ParseCSR(csrFor(t, ed, &x509.CertificateRequest{})); err != nil {
		t.Fatalf("ed25519: %v", err)
	}
	tampered := bytes.Clone(blk.Bytes)
	tampered[len(tampered)-3] ^= 0x40 // inside the signature
	cases := map[string]struct {
		b    []byte
		want string
	}{
		"bad signature": {tampered, "signature does not verify"},
		"rsa 2048":      {csrFor(t, rsa2048, &x509.CertificateRequest{}), "at least 3072"},
		"p521":          {csrFor(t, p521, &x509.CertificateRequest{}), "P-521 is not accepted"},
		"wrong pem":     {pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: blk.Bytes}), "not a CERTIFICATE REQUEST"},
		"two blocks":    {append(bytes.Clone(good), good...), "more than one"},
		"garbage":       {[]byte("hello"), "not a certificate request"},
		"trailing der":  {append(bytes.Clone(blk.Bytes), 0), "not a certificate request"},
		"bad pem":       {[]byte("-----BEGIN CERTIFICATE REQUEST-----\n!!!\n"), "not valid PEM"},
		"oversize":      {make([]byte, MaxCSRBytes+1), "at most"},
		"empty":         {nil, "not a certificate request"},
	}
	for name, c := range cases {
		_, err := ParseCSR(c.b)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
}

func TestParseName(t *testing.T) {
	n, err := ParseName("CN=breakglass X.509 CA,O=Example,C=DE")
	if err != nil || n.CommonName != "breakglass X.509 CA" || n.Organization[0] != "Example" || n.Country[0] != "DE" {
		t.Fatalf("%+v %v", n, err)
	}
	if n, err := ParseName("/CN=x/O=y"); err != nil || n.CommonName != "x" {
		t.Fatalf("slash form: %+v %v", n, err)
	}
	for _, bad := range []string{"", "O=only", "CN", "XX=1,CN=a"} {
		if _, err := ParseName(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}
