package test

import (
	"crypto/tls"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bgbroker/breakglass/server/devmode"
)

// A client refused in the TLS handshake learns why, every time, and bgctl
// says what to set.
//
// In TLS 1.3 a client finishes its side of the handshake before the broker
// judges its certificate and starts sending at once (gRPC writes its
// HTTP/2 preface); if the broker closed the socket with those bytes
// unread, the client got a reset instead of the alert. Twenty clients in a
// row, each writing the preface as gRPC does, must all read "certificate
// required" (before the broker drained refused connections, four in ten
// saw "broken pipe" or "connection reset").
func TestTLSRefusalsSayWhatToSet(t *testing.T) {
	d := startDev(t)
	for i := range 20 {
		conn, err := tls.Dial("tcp", d.ready.GRPC, &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: d.caPool(), NextProtos: []string{"h2"}})
		if err != nil {
			t.Fatalf("connection %d: the client's side of a TLS 1.3 handshake completes before the broker judges it: %v", i, err)
		}
		_, _ = conn.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"))
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = conn.Read(make([]byte, 1))
		_ = conn.Close()
		if err == nil || !strings.Contains(err.Error(), "remote error: tls: certificate required") {
			t.Fatalf("connection %d without a client certificate read %v, not the alert", i, err)
		}
	}

	// bgctl with a certificate from another CA, and with the wrong CA for
	// the broker's server certificate.
	dir := t.TempDir()
	foreign, err := devmode.NewCA("someone else's CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := foreign.Issue(devmode.LeafOptions{CommonName: "alice", URIs: []string{devmode.URIPrefix + "alice"}})
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "alice.crt"), filepath.Join(dir, "alice.key")
	if err := devmode.WriteCert(certFile, keyFile, cert, key); err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "other-ca.crt")
	if err := devmode.WriteCert(caFile, filepath.Join(dir, "other-ca.key"), foreign.Cert, foreign.Key); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		what string
		env  []string
		want []string
	}{
		{"a certificate from another CA", []string{"BGCTL_CERT=" + certFile, "BGCTL_KEY=" + keyFile},
			[]string{"bgctl: Unauthenticated: the broker at " + d.ready.GRPC, certFile, `"certificate required"`, "not from that CA", "BGCTL_CERT and BGCTL_KEY"}},
		{"the wrong CA for the broker", []string{"BGCTL_CA=" + caFile},
			[]string{"bgctl: Unavailable: the server at " + d.ready.GRPC, caFile + " did not issue", "BGCTL_CA"}},
	} {
		r := runCmd(t, append(d.env("alice"), c.env...), "", bin.bgctl, "accounts")
		for _, w := range c.want {
			if r.code != 1 || !strings.Contains(r.stderr, w) {
				t.Errorf("bgctl accounts with %s: exit %d, %q does not say %q", c.what, r.code, r.stderr, w)
			}
		}
	}
}
