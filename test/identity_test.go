package test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"google.golang.org/grpc/codes"

	"github.com/bgbroker/breakglass/client"
	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
	"github.com/bgbroker/breakglass/server/config"
	"github.com/bgbroker/breakglass/server/devmode"
)

// idBroker is an in-process dev broker with the dev CA at hand, to revoke
// and issue client certificates while connections stay open.
type idBroker struct {
	*inproc
	ca  *devmode.CA
	crl int64
}

func startIDBroker(t *testing.T) *idBroker {
	t.Helper()
	p := &idBroker{inproc: startInProcess(t, "", nil), crl: 1}
	var err error
	if p.ca, err = devmode.LoadCA(filepath.Join(p.dir, "ca", "ca.crt"), filepath.Join(p.dir, "ca", "ca.key")); err != nil {
		t.Fatal(err)
	}
	return p
}

// dial connects as a dev identity; the connection is made at once.
func (p *idBroker) dial(name string) *client.Client {
	p.t.Helper()
	c, err := client.Dial(client.Options{Addr: p.d.Ready.GRPC, CAFile: filepath.Join(p.dir, "ca", "ca.crt"),
		CertFile: filepath.Join(p.dir, "identities", name+".crt"), KeyFile: filepath.Join(p.dir, "identities", name+".key"), Now: p.clk.Now})
	if err != nil {
		p.t.Fatal(err)
	}
	p.t.Cleanup(func() { _ = c.Close() })
	if _, err := c.ListAccounts(context.Background(), &bgv1.ListAccountsRequest{}); err != nil {
		p.t.Fatalf("%s connects: %v", name, err)
	}
	return c
}

// dialShortLived connects as name with a new certificate from the dev CA
// that ends after d by the broker's clock.
func (p *idBroker) dialShortLived(name string, d time.Duration) *client.Client {
	p.t.Helper()
	now := p.clk.Now()
	cert, key, err := p.ca.Issue(devmode.LeafOptions{CommonName: name, URIs: []string{devmode.URIPrefix + name}, NotBefore: now.Add(-time.Minute), NotAfter: now.Add(d)})
	if err != nil {
		p.t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(p.ca.Cert)
	c, err := client.Dial(client.Options{Addr: p.d.Ready.GRPC, TLS: tlsFor(p.t, roots, cert, key), Now: p.clk.Now})
	if err != nil {
		p.t.Fatal(err)
	}
	p.t.Cleanup(func() { _ = c.Close() })
	if _, err := c.ListAccounts(context.Background(), &bgv1.ListAccountsRequest{}); err != nil {
		p.t.Fatalf("%s connects: %v", name, err)
	}
	return c
}

// revoke rewrites the dev CRL with the certificates of the named dev
// identities, as the security team would.
func (p *idBroker) revoke(names ...string) {
	p.t.Helper()
	var serials []*big.Int
	for _, n := range names {
		serials = append(serials, certOf(p.t, filepath.Join(p.dir, "identities", n+".crt")).SerialNumber)
	}
	p.crl++
	b, err := p.ca.CRL(p.crl, serials...)
	if err != nil {
		p.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p.dir, "ca", "crl.pem"), b, 0o644); err != nil {
		p.t.Fatal(err)
	}
}

// refusedByBroker reports whether err is the broker's refusal of a call on
// an open connection, for the reason given: Unauthenticated, and not a new
// connection's refusal in the TLS handshake (which the SDK reports with
// its alert).
func refusedByBroker(err error, reason string) bool {
	return codeOf(err) == codes.Unauthenticated && strings.Contains(err.Error(), reason) && !strings.Contains(err.Error(), "TLS alert")
}

// refusedOnItsConnection polls call (on an open connection) until the
// broker refuses it with Unauthenticated and the reason; the broker reads
// a new CRL within about a second.
func refusedOnItsConnection(t *testing.T, what, reason string, call func() error) {
	t.Helper()
	var err error
	if !eventually(30*time.Second, func() bool {
		err = call()
		return codeOf(err) == codes.Unauthenticated && !strings.Contains(err.Error(), "TLS alert")
	}) {
		t.Fatalf("%s: still %v", what, err)
	}
	if !refusedByBroker(err, reason) {
		t.Fatalf("%s: %v, want the reason %q", what, err, reason)
	}
}

// A connection opened before its certificate was revoked, or before it
// expired, carries no more calls: each call checks the certificate again
// (DESIGN §4.3), unary calls and streams alike. A refusal is
// Unauthenticated with the reason, from the broker's check of an open
// connection (a new connection is refused in the handshake instead).
func TestOpenConnectionAfterRevocationAndExpiry(t *testing.T) {
	p := startIDBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	alice, bob, erin := p.dial("alice"), p.dial("bob"), p.dial("erin")
	r, err := alice.CreateRequest(ctx, &bgv1.CreateRequestRequest{Account: "prod-db", Justification: "outage", RequestedTtl: dur(20 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	id := r.GetRequest().GetId()
	for _, c := range []*client.Client{bob, erin} {
		if _, err := c.ReviewByID(ctx, id, bgv1.ReviewDecision_REVIEW_DECISION_APPROVE, ""); err != nil {
			t.Fatal(err)
		}
	}
	// dave (an auditor) watches the request on a stream opened before
	// the revocation.
	dave := p.dial("dave")
	watch, err := dave.WatchRequest(ctx, &bgv1.WatchRequestRequest{Id: id})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watch.Recv(); err != nil {
		t.Fatal(err)
	}

	p.revoke("alice", "dave")
	refusedOnItsConnection(t, "alice's GetRequest after revocation", "revoked", func() error {
		_, err := alice.GetRequest(ctx, &bgv1.GetRequestRequest{Id: id})
		return err
	})
	_, err = alice.CreateRequest(ctx, &bgv1.CreateRequestRequest{Account: "prod-db", Justification: "again", RequestedTtl: dur(20 * time.Minute)})
	if !refusedByBroker(err, "revoked") {
		t.Fatalf("CreateRequest on the revoked connection: %v", err)
	}
	_, err = alice.IssueToken(ctx, &bgv1.IssueTokenRequest{RequestId: id, Audience: "db.prod.example"})
	if !refusedByBroker(err, "revoked") {
		t.Fatalf("IssueToken on the revoked connection: %v", err)
	}
	// Certificates are credentials like tokens: none on the revoked
	// connection either.
	_, err = alice.IssueSSHCertificate(ctx, &bgv1.IssueSSHCertificateRequest{RequestId: id, PublicKey: string(ssh.MarshalAuthorizedKey(mustSSHPub(t)))})
	if codeOf(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("IssueSSHCertificate on the revoked connection: %v", err)
	}
	csrKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, csrKey)
	_, err = alice.IssueX509Certificate(ctx, &bgv1.IssueX509CertificateRequest{RequestId: id, Csr: csr})
	if codeOf(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("IssueX509Certificate on the revoked connection: %v", err)
	}
	// The open stream is cut with Unauthenticated, not only checked when
	// it started.
	for {
		_, err := watch.Recv()
		if err == nil {
			continue
		}
		if !refusedByBroker(err, "revoked") {
			t.Fatalf("dave's watch after revocation: %v", err)
		}
		break
	}
	// Others are unaffected.
	if _, err := bob.GetRequest(ctx, &bgv1.GetRequestRequest{Id: id}); err != nil {
		t.Fatalf("bob after alice's revocation: %v", err)
	}

	// Expiry by the broker's clock: carol's certificate lasts ten minutes.
	carol := p.dialShortLived("carol", 10*time.Minute)
	carolWatch, err := carol.WatchRequest(ctx, &bgv1.WatchRequestRequest{Id: id})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := carolWatch.Recv(); err != nil {
		t.Fatal(err)
	}
	if _, err := carol.ListRequests(ctx, &bgv1.ListRequestsRequest{}); err != nil {
		t.Fatalf("carol before expiry: %v", err)
	}
	p.clk.Advance(11 * time.Minute)
	_, err = carol.ListRequests(ctx, &bgv1.ListRequestsRequest{})
	if !refusedByBroker(err, "validity period") {
		t.Fatalf("carol's next call after expiry: %v", err)
	}
	for {
		_, err := carolWatch.Recv()
		if err == nil {
			continue
		}
		if !refusedByBroker(err, "validity period") {
			t.Fatalf("carol's watch after expiry: %v", err)
		}
		break
	}
	if _, err := bob.GetRequest(ctx, &bgv1.GetRequestRequest{Id: id}); err != nil {
		t.Fatalf("bob after carol's expiry: %v", err)
	}
}

func certOf(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s is not PEM", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Every connection ends MaxConnectionAge after it was made (the calls in
// flight get the grace period), so that each one handshakes again with
// the client CA: a client that keeps calling goes through new handshakes
// without a failed call.
func TestConnectionsAreReHandshaken(t *testing.T) {
	ip := startInProcess(t, "", func(cfg *config.Config) {
		cfg.Limits.MaxConnectionAge, cfg.Limits.MaxConnectionAgeGrace = time.Second, time.Second
	})
	tc, err := client.TLSConfig(filepath.Join(ip.dir, "ca", "ca.crt"), filepath.Join(ip.dir, "identities", "dave.crt"), filepath.Join(ip.dir, "identities", "dave.key"))
	if err != nil {
		t.Fatal(err)
	}
	var handshakes atomic.Int32
	tc.VerifyConnection = func(tls.ConnectionState) error { handshakes.Add(1); return nil }
	c, err := client.Dial(client.Options{Addr: ip.d.Ready.GRPC, TLS: tc})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	calls := 0
	if !eventually(30*time.Second, func() bool {
		calls++
		if _, err := c.ListAccounts(ctx, &bgv1.ListAccountsRequest{}); err != nil {
			t.Fatalf("call %d: %v", calls, err)
		}
		return handshakes.Load() >= 3
	}) {
		t.Fatalf("%d handshakes in %d calls: connections are not aged out", handshakes.Load(), calls)
	}
	t.Logf("%d handshakes over %d calls", handshakes.Load(), calls)
}
