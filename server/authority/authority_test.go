package authority_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bgbroker/breakglass/format/keyid"
	"github.com/bgbroker/breakglass/format/krl"
	"github.com/bgbroker/breakglass/hsm"
	"github.com/bgbroker/breakglass/hsm/hsmtest"
	"github.com/bgbroker/breakglass/server/authority"
	"github.com/bgbroker/breakglass/server/keyring"
	"github.com/bgbroker/breakglass/server/request"
	"github.com/bgbroker/breakglass/server/sshca"
	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/store/sqlite"
	"github.com/bgbroker/breakglass/server/x509ca"
)

func TestMain(m *testing.M) { os.Exit(hsmtest.Main(m)) }

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// keys is a registry of CA keys as the ring would hand them out.
type keys map[hsm.Purpose][]keyring.Entry

func (k keys) KeysOf(p hsm.Purpose) []keyring.Entry { return k[p] }

func entry(t *testing.T, k *hsm.Key, p hsm.Purpose, state string) keyring.Entry {
	t.Helper()
	kid, _ := keyid.Thumbprint(k.Public())
	pemBytes, _ := keyid.PublicPEM(k.Public())
	return keyring.Entry{Record: store.KeyRecord{KID: kid, Purpose: string(p), Label: k.Label(), PublicPEM: string(pemBytes), State: state}, Key: k}
}

type env struct {
	set     *authority.Set
	store   store.Store
	clock   *clock
	ssh     *hsm.Key
	x509    *hsm.Key
	caCert  *x509.Certificate
	keys    keys
	certPEM string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	m := hsmtest.NewToken(t).Open(t)
	all := hsmtest.Keys(t, m)
	e := &env{clock: &clock{t: time.Now().UTC().Truncate(time.Second)}, ssh: all[hsm.PurposeSSHCA], x509: all[hsm.PurposeX509CA]}
	var err error
	e.caCert, err = x509ca.SelfSign(context.Background(), e.x509, x509ca.CAOptions{Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: e.clock.Now().Add(-time.Hour), NotAfter: e.clock.Now().Add(30 * 24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	e.certPEM = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(e.certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.caCert.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := sqlite.Open(context.Background(), sqlite.Config{Path: filepath.Join(t.TempDir(), "b.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	e.store = st
	e.keys = keys{hsm.PurposeSSHCA: {entry(t, e.ssh, hsm.PurposeSSHCA, store.KeyActive)}, hsm.PurposeX509CA: {entry(t, e.x509, hsm.PurposeX509CA, store.KeyActive)}}
	e.set, err = authority.New(authority.Config{Keys: e.keys, Store: st, CACertFile: e.certPEM, BaseURL: "https://broker.test", CRLValidity: time.Hour, Now: e.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) crl(t *testing.T) *x509.RevocationList {
	t.Helper()
	_, der, err := e.set.CRLs(context.Background())
	if err != nil || der == nil {
		t.Fatalf("no CRL: %v", err)
	}
	c, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CheckSignatureFrom(e.caCert); err != nil {
		t.Fatal(err)
	}
	return c
}

// The CRL is signed at once, re-signed when half its validity has passed
// (long before it lapses), and as soon as a revocation is missing from it.
func TestCRLRefresh(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if err := e.set.RefreshCRLs(ctx); err != nil {
		t.Fatal(err)
	}
	first := e.crl(t)
	if first.Number.Int64() != 1 || !first.NextUpdate.Equal(e.clock.Now().Add(time.Hour)) {
		t.Fatalf("first CRL %v next %s", first.Number, first.NextUpdate)
	}
	e.clock.Advance(20 * time.Minute)
	if err := e.set.RefreshCRLs(ctx); err != nil || e.crl(t).Number.Int64() != 1 {
		t.Fatalf("re-signed before half its validity: %v", err)
	}
	e.clock.Advance(11 * time.Minute)
	if err := e.set.RefreshCRLs(ctx); err != nil || e.crl(t).Number.Int64() != 2 {
		t.Fatalf("not re-signed after half its validity: %v", err)
	}
	// A revocation the CRL lacks: re-signed at the next look.
	serial, _ := x509ca.RandomSerial()
	kid, _ := keyid.Thumbprint(e.x509.Public())
	now := e.clock.Now()
	err := e.store.Update(ctx, func(tx store.Tx) error {
		if err := tx.CreateRequest(ctx, &request.Request{ID: "r1", Account: "a", Requester: "alice", State: request.Approved, CreatedAt: now,
			ApprovalDeadline: now.Add(time.Hour), MaxIssuances: 1, TTL: time.Hour, CreatedLeaf: []byte{1}, PolicyHash: "p"}); err != nil {
			return err
		}
		if err := tx.AddCertificate(ctx, &store.CertRecord{Kind: store.CertX509, CAKID: kid, Serial: serial.String(), RequestID: "r1", Account: "a", Subject: "alice",
			IssuedAt: now, NotBefore: now, ExpiresAt: now.Add(time.Hour)}); err != nil {
			return err
		}
		_, err := tx.RevokeCertificates(ctx, "r1", "", now)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.set.RefreshCRLs(ctx); err != nil {
		t.Fatal(err)
	}
	c := e.crl(t)
	if c.Number.Int64() != 3 || len(c.RevokedCertificateEntries) != 1 || c.RevokedCertificateEntries[0].SerialNumber.Cmp(serial) != 0 {
		t.Fatalf("CRL after a revocation: %v %+v", c.Number, c.RevokedCertificateEntries)
	}
	if h := e.set.CRLHealth(); len(h) != 0 {
		t.Fatalf("health %v", h)
	}
	// The certificate expired: it stays until the CRL is re-signed, then leaves.
	e.clock.Advance(2 * time.Hour)
	if err := e.set.RefreshCRLs(ctx); err != nil || len(e.crl(t).RevokedCertificateEntries) != 0 {
		t.Fatalf("an expired certificate stayed on the CRL: %v", err)
	}
}

// The KRL lists revoked SSH certificates by CA and is the same for the
// same database; a revoked CA key is listed whole.
func TestKRL(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	empty, err := e.set.KRL(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if k, err := krl.Parse(empty); err != nil || k.Version != 0 || len(k.Certificates) != 0 {
		t.Fatalf("empty KRL %+v %v", k, err)
	}
	ca, _, err := e.set.SSHCA()
	if err != nil {
		t.Fatal(err)
	}
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	pk, _ := ssh.NewPublicKey(pub)
	now := e.clock.Now()
	cert, err := ca.Sign(ctx, sshca.Request{Key: pk, Serial: 4242, KeyID: "k", Principals: []string{"breakglass"}, ValidAfter: now, ValidBefore: now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	kid, _ := keyid.Thumbprint(e.ssh.Public())
	err = e.store.Update(ctx, func(tx store.Tx) error {
		if err := tx.CreateRequest(ctx, &request.Request{ID: "r1", Account: "a", Requester: "alice", State: request.Approved, CreatedAt: now,
			ApprovalDeadline: now.Add(time.Hour), MaxIssuances: 1, TTL: time.Hour, CreatedLeaf: []byte{1}, PolicyHash: "p"}); err != nil {
			return err
		}
		if err := tx.AddCertificate(ctx, &store.CertRecord{Kind: store.CertSSH, CAKID: kid, Serial: "4242", RequestID: "r1", Account: "a", Subject: "alice",
			IssuedAt: now, NotBefore: now, ExpiresAt: now.Add(time.Hour)}); err != nil {
			return err
		}
		_, err := tx.RevokeCertificates(ctx, "r1", "", now)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	b, err := e.set.KRL(ctx)
	if err != nil {
		t.Fatal(err)
	}
	k, err := krl.Parse(b)
	if err != nil || k.Version != 1 || k.GeneratedDate != uint64(now.Unix()) || !k.IsRevoked(cert) {
		t.Fatalf("KRL %+v %v", k, err)
	}
	again, _ := e.set.KRL(ctx)
	if string(again) != string(b) {
		t.Fatal("the KRL changed without a change")
	}
	// A CA key retired with revocation: its key is in the KRL, it is no
	// longer in /ssh/ca.pub, and nothing more is signed with it.
	e.keys[hsm.PurposeSSHCA][0].Record.RevokedAt = now
	if err := e.set.Reload(); err != nil {
		t.Fatal(err)
	}
	b, _ = e.set.KRL(ctx)
	k, _ = krl.Parse(b)
	if len(k.Keys) != 1 || strings.Contains(string(e.set.SSHAuthorizedKeys()), "ecdsa") {
		t.Fatalf("revoked CA: KRL keys %d, ca.pub %q", len(k.Keys), e.set.SSHAuthorizedKeys())
	}
	if _, _, err := e.set.SSHCA(); err == nil {
		t.Fatal("a revoked CA key still signs")
	}
}

// The broker refuses to start on a CA certificate that is not its key's,
// and on a bundle holding a certificate of no key of its.
func TestCACertificateMustMatchTheKey(t *testing.T) {
	e := newEnv(t)
	other := hsmtest.Keys(t, hsmtest.NewToken(t).Open(t))[hsm.PurposeX509CA]
	wrong, err := x509ca.SelfSign(context.Background(), other, x509ca.CAOptions{Subject: pkix.Name{CommonName: "other"}, NotBefore: e.clock.Now().Add(-time.Hour),
		NotAfter: e.clock.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	for name, certs := range map[string][]*x509.Certificate{"another key's": {wrong}, "an extra one": {e.caCert, wrong}} {
		var b []byte
		for _, c := range certs {
			b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
		}
		if err := os.WriteFile(e.certPEM, b, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := authority.New(authority.Config{Keys: e.keys, Store: e.store, CACertFile: e.certPEM, BaseURL: "https://b", Now: e.clock.Now})
		if err == nil || !strings.Contains(err.Error(), "does not match its key") {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// The CA certificate replaced for the same key (renewed, or signed by the
// organisation's root after hsm csr): the stored CRL names the old
// certificate's subject as its issuer, which targets no longer find a CA
// for, so it is re-signed at the next look under the new certificate.
func TestCRLResignedWhenTheCACertificateChanges(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if err := e.set.RefreshCRLs(ctx); err != nil {
		t.Fatal(err)
	}
	if n := e.crl(t).Number.Int64(); n != 1 {
		t.Fatalf("first CRL number %d", n)
	}
	renewed, err := x509ca.SelfSign(ctx, e.x509, x509ca.CAOptions{Subject: pkix.Name{CommonName: "test CA, renewed", Organization: []string{"Example"}},
		NotBefore: e.clock.Now().Add(-time.Minute), NotAfter: e.clock.Now().Add(60 * 24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: renewed.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.set.Reload(); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Minute) // long before half the CRL's validity
	if err := e.set.RefreshCRLs(ctx); err != nil {
		t.Fatal(err)
	}
	e.caCert = renewed
	c := e.crl(t) // checks the signature against the renewed certificate
	if c.Number.Int64() != 2 || !bytes.Equal(c.RawIssuer, renewed.RawSubject) {
		t.Fatalf("the CRL after the CA certificate changed: number %v, issuer %s", c.Number, c.Issuer)
	}
}
