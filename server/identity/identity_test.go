package identity_test

import (
	"context"
	"crypto/x509"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bgbroker/breakglass/server/devmode"
	"github.com/bgbroker/breakglass/server/identity"
)

func setup(t testing.TB) (*devmode.CA, string) {
	t.Helper()
	ca, err := devmode.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(p, devmode.CertPEM(ca.Cert), 0o644); err != nil {
		t.Fatal(err)
	}
	return ca, p
}

func leaf(t *testing.T, ca *devmode.CA, o devmode.LeafOptions) *x509.Certificate {
	t.Helper()
	c, _, err := ca.Issue(o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestPrincipal(t *testing.T) {
	ca, caFile := setup(t)
	uri, err := identity.New(identity.Config{ClientCA: caFile, URIPrefix: "spiffe://example.org/user/"}, identity.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cn, err := identity.New(identity.Config{ClientCA: caFile, Mode: "cn"}, identity.Options{})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		v       *identity.Verifier
		o       devmode.LeafOptions
		want    string
		wantErr string
	}{
		{"one URI under the prefix", uri, devmode.LeafOptions{CommonName: "x", URIs: []string{"spiffe://example.org/user/alice"}}, "alice", ""},
		{"other URIs are ignored", uri, devmode.LeafOptions{URIs: []string{"https://example.org/alice", "spiffe://example.org/user/alice"}}, "alice", ""},
		{"none", uri, devmode.LeafOptions{CommonName: "alice"}, "", "no URI SAN under"},
		{"two under the prefix", uri, devmode.LeafOptions{URIs: []string{"spiffe://example.org/user/alice", "spiffe://example.org/user/bob"}}, "", "exactly one"},
		{"prefix look-alike", uri, devmode.LeafOptions{URIs: []string{"spiffe://example.org/username/alice"}}, "", "no URI SAN under"},
		{"path under the prefix", uri, devmode.LeafOptions{URIs: []string{"spiffe://example.org/user/team/alice"}}, "", "not a valid principal"},
		{"empty principal", uri, devmode.LeafOptions{URIs: []string{"spiffe://example.org/user/"}}, "", "not a valid principal"},
		{"uppercase scheme, as written", uri, devmode.LeafOptions{RawURIs: []string{"SPIFFE://example.org/user/alice"}}, "", "no URI SAN under"},
		{"uppercase trust domain, as written", uri, devmode.LeafOptions{RawURIs: []string{"spiffe://EXAMPLE.ORG/user/alice"}}, "", "no URI SAN under"},
		{"lowercase, as written", uri, devmode.LeafOptions{RawURIs: []string{"spiffe://example.org/user/alice"}}, "alice", ""},
		{"CA certificate", uri, devmode.LeafOptions{URIs: []string{"spiffe://example.org/user/alice"}, IsCA: true}, "", "CA certificate"},
		{"CN mode, CA certificate", cn, devmode.LeafOptions{CommonName: "bob", IsCA: true}, "", "CA certificate"},
		{"CN mode", cn, devmode.LeafOptions{CommonName: "bob", URIs: []string{"spiffe://example.org/user/alice"}}, "bob", ""},
		{"CN mode, no CN", cn, devmode.LeafOptions{}, "", "no common name"},
		{"CN mode, hostile CN", cn, devmode.LeafOptions{CommonName: "bob\n' OR 1=1"}, "", "not a valid principal"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.v.Principal(leaf(t, ca, tc.o))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Principal = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestConfigRefusals(t *testing.T) {
	ca, caFile := setup(t)
	dir := t.TempDir()
	withKey := filepath.Join(dir, "ca-with-key.pem")
	kb, _ := devmode.KeyPEM(ca.Key)
	_ = os.WriteFile(withKey, append(devmode.CertPEM(ca.Cert), kb...), 0o600)
	notCA := filepath.Join(dir, "leaf.pem")
	_ = os.WriteFile(notCA, devmode.CertPEM(leaf(t, ca, devmode.LeafOptions{CommonName: "x"})), 0o644)
	other, _ := devmode.NewCA("other", time.Hour)
	foreignCRL := filepath.Join(dir, "foreign.crl")
	b, _ := other.CRL(1)
	_ = os.WriteFile(foreignCRL, b, 0o644)
	garbageCRL := filepath.Join(dir, "garbage.crl")
	_ = os.WriteFile(garbageCRL, []byte("not a crl"), 0o644)
	tests := []struct {
		name string
		cfg  identity.Config
		want string
	}{
		{"CA file holds a private key", identity.Config{ClientCA: withKey, URIPrefix: "spiffe://x/"}, "only the CA certificate"},
		{"not a CA", identity.Config{ClientCA: notCA, URIPrefix: "spiffe://x/"}, "not a CA"},
		{"missing CA", identity.Config{ClientCA: filepath.Join(dir, "nope"), URIPrefix: "spiffe://x/"}, "client_ca"},
		{"no prefix", identity.Config{ClientCA: caFile}, "uri_prefix"},
		{"prefix without a trailing slash", identity.Config{ClientCA: caFile, URIPrefix: "spiffe://x/user"}, `must end in "/"`},
		{"prefix with an uppercase scheme", identity.Config{ClientCA: caFile, URIPrefix: "SPIFFE://x/user/"}, "lowercase"},
		{"unknown mode", identity.Config{ClientCA: caFile, Mode: "email"}, "mode"},
		{"CRL from another CA", identity.Config{ClientCA: caFile, URIPrefix: "spiffe://x/", CRL: foreignCRL}, "not signed by the client CA"},
		{"CRL that does not parse", identity.Config{ClientCA: caFile, URIPrefix: "spiffe://x/", CRL: garbageCRL}, "CRL"},
		{"missing CRL", identity.Config{ClientCA: caFile, URIPrefix: "spiffe://x/", CRL: filepath.Join(dir, "none.crl")}, "CRL"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := identity.New(tc.cfg, identity.Options{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

// VerifyAt remembers chains; the answer at every time must still be the
// one a fresh verification gives, whichever time was asked first.
func TestVerifyAtCachedChainsKeepValidity(t *testing.T) {
	ca, caFile := setup(t)
	other, _ := setup(t)
	now := time.Now()
	c := leaf(t, ca, devmode.LeafOptions{URIs: []string{"spiffe://example.org/user/alice"}, NotBefore: now.Add(-10 * time.Minute), NotAfter: now.Add(10 * time.Minute)})
	foreign := leaf(t, other, devmode.LeafOptions{URIs: []string{"spiffe://example.org/user/alice"}})
	times := []struct {
		name string
		at   time.Time
		ok   bool
	}{
		{"inside", now, true},
		{"before the leaf", now.Add(-20 * time.Minute), false},
		{"after the leaf", now.Add(20 * time.Minute), false},
		{"after the CA", now.Add(2 * time.Hour), false},
		{"inside again", now.Add(time.Minute), true},
	}
	for _, order := range [][]int{{0, 1, 2, 3, 4}, {1, 2, 3, 0, 4}} {
		v, err := identity.New(identity.Config{ClientCA: caFile, URIPrefix: "spiffe://example.org/user/"}, identity.Options{})
		if err != nil {
			t.Fatal(err)
		}
		for range 2 {
			for _, i := range order {
				tc := times[i]
				who, err := v.VerifyAt(c, tc.at)
				if (err == nil) != tc.ok || (tc.ok && who != "alice") {
					t.Fatalf("%s: VerifyAt = %q, %v; want ok=%v", tc.name, who, err, tc.ok)
				}
			}
			if _, err := v.VerifyAt(foreign, now); err == nil {
				t.Fatal("a certificate of another CA verified")
			}
		}
	}
}

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

// withCRL is a verifier with a CRL file and the settable clock; write
// rewrites the CRL (revoking the given certificates) and loads it.
func withCRL(t *testing.T, recheck time.Duration) (*identity.Verifier, *devmode.CA, *clock, func(...*x509.Certificate)) {
	t.Helper()
	ca, caFile := setup(t)
	crlFile := filepath.Join(t.TempDir(), "crl.pem")
	n := int64(0)
	var v *identity.Verifier
	write := func(revoked ...*x509.Certificate) {
		t.Helper()
		var serials []*big.Int
		for _, c := range revoked {
			serials = append(serials, c.SerialNumber)
		}
		n++
		b, err := ca.CRL(n, serials...)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(crlFile, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if v != nil && !v.ReloadCRL() {
			t.Fatal("the rewritten CRL was not loaded")
		}
	}
	write()
	clk := &clock{t: time.Now()}
	v, err := identity.New(identity.Config{ClientCA: caFile, CRL: crlFile, URIPrefix: "spiffe://example.org/user/"}, identity.Options{Now: clk.Now, Recheck: recheck})
	if err != nil {
		t.Fatal(err)
	}
	return v, ca, clk, write
}

// chainsOf verifies c as the TLS stack does in the handshake.
func chainsOf(t *testing.T, v *identity.Verifier, c *x509.Certificate, at time.Time) [][]*x509.Certificate {
	t.Helper()
	chains, err := c.Verify(x509.VerifyOptions{Roots: v.ClientCAs(), CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		t.Fatal(err)
	}
	return chains
}

// The check every call makes: a certificate verified at the handshake is
// refused on a later call once the CRL in force revokes it or the broker's
// clock passes its end, and accepted again when a newer CRL lifts the
// revocation; other certificates are unaffected.
func TestCheckOnEveryCall(t *testing.T) {
	v, ca, clk, writeCRL := withCRL(t, time.Second)
	now := clk.Now()
	alice := leaf(t, ca, devmode.LeafOptions{URIs: []string{"spiffe://example.org/user/alice"}, NotBefore: now.Add(-time.Minute), NotAfter: now.Add(10 * time.Minute)})
	bob := leaf(t, ca, devmode.LeafOptions{URIs: []string{"spiffe://example.org/user/bob"}, NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour)})
	ac, bc := chainsOf(t, v, alice, now), chainsOf(t, v, bob, now)
	for range 3 { // the cached answer is the same
		if err := v.Check(alice, ac); err != nil {
			t.Fatalf("alice at the start: %v", err)
		}
	}
	writeCRL(alice)
	if err := v.Check(alice, ac); !errors.Is(err, identity.ErrNotValid) || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("alice after revocation: %v", err)
	}
	if err := v.Check(bob, bc); err != nil {
		t.Fatalf("bob after alice's revocation: %v", err)
	}
	writeCRL()
	if err := v.Check(alice, ac); err != nil {
		t.Fatalf("alice after a CRL without her: %v", err)
	}
	clk.Advance(11 * time.Minute)
	if err := v.Check(alice, ac); !errors.Is(err, identity.ErrNotValid) || !strings.Contains(err.Error(), "validity period") {
		t.Fatalf("alice after expiry: %v", err)
	}
	if err := v.Check(bob, bc); err != nil {
		t.Fatalf("bob after alice's expiry: %v", err)
	}
	// The client CA's own end bounds every chain.
	clk.Advance(2 * time.Hour)
	if err := v.Check(bob, bc); !errors.Is(err, identity.ErrNotValid) {
		t.Fatalf("bob after the CA expired: %v", err)
	}
}

// A CRL file that becomes garbage or disappears keeps the last good CRL
// in force (refusing everyone would also stop revocations), and a later
// good one is picked up.
func TestCRLReloadKeepsLastGood(t *testing.T) {
	v, ca, clk, writeCRL := withCRL(t, time.Second)
	alice := leaf(t, ca, devmode.LeafOptions{URIs: []string{"spiffe://example.org/user/alice"}})
	ac := chainsOf(t, v, alice, clk.Now())
	writeCRL(alice)
	crlFile := v.CRLFile()
	for _, broken := range []func(){
		func() { _ = os.WriteFile(crlFile, []byte("not a CRL"), 0o644) },
		func() { _ = os.Remove(crlFile) },
		func() {
			other, _ := devmode.NewCA("other", time.Hour)
			b, _ := other.CRL(9)
			_ = os.WriteFile(crlFile, b, 0o644)
		},
		func() {
			// An older CRL of the client CA itself (number 1, without
			// alice) put back in place of the one revoking her (number 2).
			b, _ := ca.CRL(1)
			_ = os.WriteFile(crlFile, b, 0o644)
		},
	} {
		broken()
		if v.ReloadCRL() {
			t.Fatal("a broken CRL was put in force")
		}
		if err := v.Check(alice, ac); !errors.Is(err, identity.ErrNotValid) {
			t.Fatalf("alice with a broken CRL file: %v", err)
		}
	}
	writeCRL()
	if err := v.Check(alice, ac); err != nil {
		t.Fatalf("alice after a good CRL without her: %v", err)
	}
}

// A long-lived stream's guard ends its context, with a cause wrapping
// ErrNotValid, when a new CRL revokes the certificate and when the
// broker's clock passes its end; a stream whose certificate stays valid
// is left alone.
func TestGuardEndsStreams(t *testing.T) {
	v, ca, clk, writeCRL := withCRL(t, 10*time.Millisecond)
	now := clk.Now()
	mk := func(name string, d time.Duration) identity.Peer {
		c := leaf(t, ca, devmode.LeafOptions{URIs: []string{"spiffe://example.org/user/" + name}, NotBefore: now.Add(-time.Minute), NotAfter: now.Add(d)})
		return identity.Peer{Leaf: c, Chains: chainsOf(t, v, c, now), Principal: name}
	}
	alice, bob, carol := mk("alice", time.Hour), mk("bob", 10*time.Minute), mk("carol", time.Hour)
	actx, astop := v.Guard(context.Background(), alice)
	defer astop()
	bctx, bstop := v.Guard(context.Background(), bob)
	defer bstop()
	cctx, cstop := v.Guard(context.Background(), carol)
	writeCRL(alice.Leaf)
	select {
	case <-actx.Done():
	case <-time.After(30 * time.Second): // a liveness bound; the guard wakes on the new CRL
		t.Fatal("the revoked stream was not ended")
	}
	if cause := context.Cause(actx); !errors.Is(cause, identity.ErrNotValid) || !strings.Contains(cause.Error(), "revoked") {
		t.Fatalf("cause %v", cause)
	}
	clk.Advance(11 * time.Minute)
	select {
	case <-bctx.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the expired stream was not ended")
	}
	if cause := context.Cause(bctx); !errors.Is(cause, identity.ErrNotValid) || !strings.Contains(cause.Error(), "validity period") {
		t.Fatalf("cause %v", cause)
	}
	if cctx.Err() != nil {
		t.Fatalf("carol's stream ended: %v", context.Cause(cctx))
	}
	cstop()
	if errors.Is(context.Cause(cctx), identity.ErrNotValid) {
		t.Fatal("stopping a guard blamed the certificate")
	}
}

// BenchmarkCheck is the cost the per-call certificate check adds to every
// call on an open connection, next to the chain verification the handshake
// did once (what checking each call from scratch would cost).
func BenchmarkCheck(b *testing.B) {
	ca, caFile := setup(b)
	v, err := identity.New(identity.Config{ClientCA: caFile, URIPrefix: "spiffe://example.org/user/"}, identity.Options{})
	if err != nil {
		b.Fatal(err)
	}
	c, _, err := ca.Issue(devmode.LeafOptions{URIs: []string{"spiffe://example.org/user/alice"}})
	if err != nil {
		b.Fatal(err)
	}
	opts := x509.VerifyOptions{Roots: v.ClientCAs(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	chains, err := c.Verify(opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("per call", func(b *testing.B) {
		for b.Loop() {
			if err := v.Check(c, chains); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("chain verification", func(b *testing.B) {
		for b.Loop() {
			if _, err := c.Verify(opts); err != nil {
				b.Fatal(err)
			}
		}
	})
}
