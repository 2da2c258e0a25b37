package identity_test

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bgbroker/breakglass/server/devmode"
	"github.com/bgbroker/breakglass/server/identity"
)

func setup(t *testing.T) (*devmode.CA, string) {
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
	uri, err := identity.New(identity.Config{ClientCA: caFile, URIPrefix: "spiffe://example.org/user/"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cn, err := identity.New(identity.Config{ClientCA: caFile, Mode: "cn"}, nil)
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
		{"unknown mode", identity.Config{ClientCA: caFile, Mode: "email"}, "mode"},
		{"CRL from another CA", identity.Config{ClientCA: caFile, URIPrefix: "spiffe://x/", CRL: foreignCRL}, "not signed by the client CA"},
		{"CRL that does not parse", identity.Config{ClientCA: caFile, URIPrefix: "spiffe://x/", CRL: garbageCRL}, "CRL"},
		{"missing CRL", identity.Config{ClientCA: caFile, URIPrefix: "spiffe://x/", CRL: filepath.Join(dir, "none.crl")}, "CRL"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := identity.New(tc.cfg, nil)
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
		v, err := identity.New(identity.Config{ClientCA: caFile, URIPrefix: "spiffe://example.org/user/"}, nil)
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
