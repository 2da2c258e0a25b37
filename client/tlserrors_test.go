package client

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func testCert(t *testing.T, notBefore, notAfter time.Time) *x509.Certificate {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "bob"}, NotBefore: notBefore, NotAfter: notAfter}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The transport errors gRPC reports for a connection TLS refused become
// errors that name the alert, the certificate in use and what to set.
func TestExplainTLS(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	valid := &tlsSetup{caFile: "ca.crt", certFile: "bob.crt", cert: testCert(t, now.Add(-time.Hour), now.Add(time.Hour)), now: clock}
	expired := &tlsSetup{caFile: "ca.crt", certFile: "bob.crt", cert: testCert(t, now.Add(-2*time.Hour), now.Add(-time.Hour)), now: clock}
	none := &tlsSetup{caFile: "ca.crt", now: clock}
	preface := func(alert string) error {
		return status.Error(codes.Unavailable, `connection error: desc = "error reading server preface: remote error: tls: `+alert+`"`)
	}
	for _, c := range []struct {
		name string
		s    *tlsSetup
		err  error
		code codes.Code
		want []string
	}{
		{"no certificate", none, preface("certificate required"), codes.Unauthenticated,
			[]string{"broker at b:7443", "this client has none", `"certificate required"`, "BGCTL_CERT and BGCTL_KEY"}},
		{"certificate from another CA, not sent", valid, preface("certificate required"), codes.Unauthenticated,
			[]string{"bob.crt", `subject "CN=bob"`, "is not from that CA", "--cert and --key"}},
		{"unknown CA", valid, preface("unknown certificate authority"), codes.Unauthenticated,
			[]string{"refused bob.crt", "not issued by the broker's client CA", "BGCTL_CERT"}},
		{"expired", expired, preface("expired certificate"), codes.Unauthenticated,
			[]string{"expired by this machine's clock", "expired or not yet valid by the broker's clock", "renew it"}},
		{"revoked", valid, preface("bad certificate"), codes.Unauthenticated,
			[]string{`"bad certificate"`, "revoked", "BGCTL_CERT"}},
		{"another alert", valid, preface("protocol version not supported"), codes.Unavailable,
			[]string{`alert "protocol version not supported"`}},
		{"server from another CA", valid, status.Error(codes.Unavailable, `connection error: desc = "transport: authentication handshake failed: tls: failed to verify certificate: x509: certificate signed by unknown authority"`), codes.Unavailable,
			[]string{"ca.crt did not issue", "BGCTL_CA"}},
		{"server certificate for another name", valid, status.Error(codes.Unavailable, `connection error: desc = "transport: authentication handshake failed: tls: failed to verify certificate: x509: certificate is valid for localhost, not example.org"`), codes.Unavailable,
			[]string{"not for that address", "BGCTL_ADDR"}},
		{"server certificate expired", valid, status.Error(codes.Unavailable, `connection error: desc = "transport: authentication handshake failed: tls: failed to verify certificate: x509: certificate has expired or is not yet valid: current time"`), codes.Unavailable,
			[]string{"by this machine's clock (now 2026-11-29T12:00:00Z)"}},
		{"no SDK setup (client.New)", nil, preface("certificate required"), codes.Unauthenticated, []string{"this client has none"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := c.s.explain("b:7443", c.err)
			if status.Code(got) != c.code {
				t.Fatalf("%v: code %s, want %s", got, status.Code(got), c.code)
			}
			for _, w := range c.want {
				if !strings.Contains(status.Convert(got).Message(), w) {
					t.Errorf("%q does not say %q", status.Convert(got).Message(), w)
				}
			}
		})
	}
	// Anything else is returned untouched.
	for _, err := range []error{
		status.Error(codes.Unavailable, "the HSM is unavailable"),
		status.Error(codes.PermissionDenied, "remote error: tls: certificate required"),
		errors.New("remote error: tls: certificate required"),
	} {
		if got := valid.explain("b:7443", err); got != err { //nolint:errorlint // the very error must come back
			t.Errorf("%v became %v", err, got)
		}
	}
}
