package test

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// Rotating the CA keys: new certificates come from the new keys, and the
// old keys stay published (and their CRL signed) while certificates they
// signed may still be valid.
func TestCARotation(t *testing.T) {
	d := startDev(t)
	id := d.grantFor("30m")
	dir := t.TempDir()
	_, pub := sshKey(t, dir)
	d.mustBgctl("alice", "ssh-cert", id, "--public-key", pub)
	oldCA := d.fetch(t, "/ssh/ca.pub")
	for _, args := range [][]string{{"--purpose", "ssh-ca"}, {"--purpose", "x509-ca", "--subject", "CN=breakglass dev X.509 CA 2,O=breakglass dev", "--days", "30"}} {
		out := must(t, os.Environ(), bin.breakglassd, append([]string{"hsm", "rotate", "--config", d.state("config.yaml")}, args...)...)
		if !strings.Contains(out, `"ceremony": "rotate"`) {
			t.Fatalf("rotate %v: %s", args, out)
		}
	}
	// The running broker picks both up.
	if !eventually(30*time.Second, func() bool {
		return bytes.Count(d.fetch(t, "/ssh/ca.pub"), []byte("\n")) == 2 && bytes.Count(d.fetch(t, "/x509/ca.pem"), []byte("BEGIN CERTIFICATE")) == 2 &&
			bytes.Count(d.fetch(t, "/x509/crl.pem"), []byte("BEGIN X509 CRL")) == 2
	}) {
		t.Fatalf("after rotation: ca.pub %q", d.fetch(t, "/ssh/ca.pub"))
	}
	lines := strings.Split(strings.TrimSpace(string(d.fetch(t, "/ssh/ca.pub"))), "\n")
	if !strings.HasSuffix(lines[0], " active") || !strings.HasSuffix(lines[1], " retired") || !strings.HasPrefix(string(oldCA), strings.Fields(lines[1])[0]+" "+strings.Fields(lines[1])[1]) {
		t.Fatalf("ca.pub after rotation:\n%s\nbefore:\n%s", strings.Join(lines, "\n"), oldCA)
	}
	newCA, _, _, _, err := ssh.ParseAuthorizedKey([]byte(lines[0]))
	if err != nil {
		t.Fatal(err)
	}
	_, pub2 := sshKey(t, t.TempDir())
	certFile := strings.TrimSpace(d.mustBgctl("alice", "ssh-cert", id, "--public-key", pub2))
	b, _ := os.ReadFile(certFile)
	pk, _, _, _, err := ssh.ParseAuthorizedKey(b)
	if err != nil || !bytes.Equal(pk.(*ssh.Certificate).SignatureKey.Marshal(), newCA.Marshal()) {
		t.Fatalf("a certificate after rotation is not signed by the new CA key (%v)", err)
	}
	d.mustBgctl("alice", "x509-cert", id, "--key-out", dir+"/k.pem", "--out", dir+"/c.pem", "--ca-out", dir+"/ca.pem")
	if ca := readCert(t, dir+"/ca.pem"); ca.Subject.CommonName != "breakglass dev X.509 CA 2" || readCert(t, dir+"/c.pem").CheckSignatureFrom(ca) != nil {
		t.Fatalf("the X.509 certificate after rotation is not from the new CA %s", ca.Subject)
	}
}
