package test

import (
	"bytes"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/krl"
	"github.com/bgbroker/breakglass/server/devmode"
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

// Revoking a CA key (hsm rotate --revoke-old, for a key that may be
// compromised) takes every certificate it signed with it, where targets
// look: the SSH CA key leaves /ssh/ca.pub and is listed whole in the KRL,
// so sshd (still trusting the old key) refuses its certificates and
// accepts the new key's; the X.509 CA certificate leaves /x509/ca.pem and
// the old key's CRL lists its certificates, as openssl verify -crl_check
// reports. The log still verifies with both generations of CA pinned.
func TestRevokingACAKey(t *testing.T) {
	d := startDev(t)
	id := d.grantFor("30m")
	dir := t.TempDir()
	key, pub := sshKey(t, dir)
	oldCert := strings.TrimSpace(d.mustBgctl("alice", "ssh-cert", id, "--public-key", pub))
	d.mustBgctl("alice", "x509-cert", id, "--key-out", dir+"/k.pem", "--out", dir+"/c.pem", "--ca-out", dir+"/oldca.pem")
	oldSSHCA := d.fetch(t, "/ssh/ca.pub")
	oldX509 := readCert(t, dir+"/c.pem")
	oldCDP := strings.TrimPrefix(oldX509.CRLDistributionPoints[0], d.ready.Issuer)

	// Half a ceremony is refused with nothing changed.
	cfg := d.state("config.yaml")
	for _, args := range [][]string{{"--purpose", "ssh-ca", "--revoke-old"}, {"--purpose", "ssh-ca", "--reason", "lost"}, {"--purpose", "token", "--revoke-old", "--reason", "lost"}} {
		r := runCmd(t, os.Environ(), "", bin.breakglassd, append([]string{"hsm", "rotate", "--config", cfg}, args...)...)
		if r.code == 0 {
			t.Fatalf("rotate %v was accepted: %s", args, r.stdout)
		}
	}
	if !bytes.Equal(d.fetch(t, "/ssh/ca.pub"), oldSSHCA) {
		t.Fatal("a refused ceremony changed the SSH CA keys")
	}
	for _, args := range [][]string{{"--purpose", "ssh-ca"}, {"--purpose", "x509-ca", "--subject", "CN=breakglass dev X.509 CA 2,O=breakglass dev", "--days", "30"}} {
		args = append(args, "--revoke-old", "--reason", "the HSM backup tape with this key was lost")
		out := must(t, os.Environ(), bin.breakglassd, append([]string{"hsm", "rotate", "--config", cfg}, args...)...)
		if !strings.Contains(out, `"revoked_previous": true`) {
			t.Fatalf("rotate %v: %s", args, out)
		}
	}
	// The running broker publishes only the new CAs, the KRL names the old
	// SSH CA key, and the old X.509 CA's CRL lists its certificate.
	var revoked []byte
	if !eventually(30*time.Second, func() bool {
		revoked = d.fetch(t, "/ssh/revoked.krl")
		k, err := krl.Parse(revoked)
		return err == nil && len(k.Keys) == 1 && bytes.Count(d.fetch(t, "/ssh/ca.pub"), []byte("\n")) == 1 &&
			bytes.Count(d.fetch(t, "/x509/ca.pem"), []byte("BEGIN CERTIFICATE")) == 1 && crlLists(t, d.fetch(t, "/x509/crl.pem"), oldX509) &&
			crlLists(t, pemCRL(d.fetch(t, oldCDP)), oldX509)
	}) {
		t.Fatalf("after revoking the CA keys: ca.pub %q, ca.pem %d certificates", d.fetch(t, "/ssh/ca.pub"), bytes.Count(d.fetch(t, "/x509/ca.pem"), []byte("BEGIN CERTIFICATE")))
	}
	newSSHCA := d.fetch(t, "/ssh/ca.pub")
	if bytes.Equal(newSSHCA, oldSSHCA) || !strings.HasSuffix(strings.TrimSpace(string(newSSHCA)), " active") {
		t.Fatalf("/ssh/ca.pub after the revocation: %s", newSSHCA)
	}
	k, _ := krl.Parse(revoked)
	oldKey, _, _, _, err := ssh.ParseAuthorizedKey(oldSSHCA)
	if err != nil || !bytes.Equal(k.Keys[0].Marshal(), oldKey.Marshal()) {
		t.Fatalf("the KRL's revoked key is not the old SSH CA key (%v)", err)
	}
	krlFile := filepath.Join(dir, "revoked.krl")
	write(t, krlFile, revoked)
	if q := runCmd(t, os.Environ(), "", "ssh-keygen", "-Q", "-f", krlFile, oldCert); !strings.Contains(q.stdout, "REVOKED") {
		t.Fatalf("ssh-keygen -Q on a certificate of the revoked CA key: %q %q", q.stdout, q.stderr)
	}
	key2, pub2 := sshKey(t, t.TempDir())
	newCert := strings.TrimSpace(d.mustBgctl("alice", "ssh-cert", id, "--public-key", pub2))
	if q := runCmd(t, os.Environ(), "", "ssh-keygen", "-Q", "-f", krlFile, newCert); q.code != 0 || !strings.Contains(q.stdout, "ok") {
		t.Fatalf("ssh-keygen -Q on the new CA key's certificate: %d %q %q", q.code, q.stdout, q.stderr)
	}
	// openssl, with the old CA certificate a target still trusts and the
	// CRL from the distribution point its certificate names.
	crlFile := filepath.Join(dir, "old.crl.pem")
	write(t, crlFile, pemCRL(d.fetch(t, oldCDP)))
	if r := runCmd(t, os.Environ(), "", "openssl", "verify", "-crl_check", "-CAfile", dir+"/oldca.pem", "-CRLfile", crlFile, dir+"/c.pem"); r.code == 0 ||
		!strings.Contains(r.stdout+r.stderr, "certificate revoked") {
		t.Fatalf("openssl verify of the revoked CA's certificate: %q %q", r.stdout, r.stderr)
	}
	// sshd that still trusts both keys and reads the KRL: the old key's
	// certificate is refused, the new one's accepted.
	if os.Geteuid() == 0 || os.Getenv("CI") != "" {
		s := startSSHD(t, append(append([]byte(nil), oldSSHCA...), newSSHCA...), revoked)
		if r := s.login(key, oldCert, devmode.SSHPrincipal, "true"); r.code == 0 {
			t.Fatalf("sshd accepted a certificate of the revoked CA key\n%s", s.logs())
		}
		if r := s.login(key2, newCert, devmode.SSHPrincipal, "whoami"); r.code != 0 || strings.TrimSpace(r.stdout) != devmode.SSHPrincipal {
			t.Fatalf("login with the new CA key's certificate: %d %q %q\n%s", r.code, r.stdout, r.stderr, s.logs())
		}
	}
	// The log says so, and verifies with both generations of CA pinned.
	f := d.exportAudit(t)
	entries := parsed(t, f.lines(t))
	n := 0
	for _, e := range entries {
		if e.Type == audit.TypeKeyRetired && strings.Contains(string(e.Payload), "revoked with every certificate it signed (1 not yet expired)") &&
			strings.Contains(string(e.Payload), "the HSM backup tape with this key was lost") {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("%d key_retired entries record the CA revocations, want 2", n)
	}
	sshCAs, x509CAs := filepath.Join(f.dir, "ssh_ca.pub"), filepath.Join(f.dir, "x509_ca.pem")
	write(t, sshCAs, append(append([]byte(nil), oldSSHCA...), newSSHCA...))
	oldCA, _ := os.ReadFile(dir + "/oldca.pem")
	write(t, x509CAs, append(oldCA, d.fetch(t, "/x509/ca.pem")...))
	if r := f.verify(t, "--ssh-ca-key", sshCAs, "--x509-ca-cert", x509CAs); r.code != 0 {
		t.Fatalf("the log after revoking the CA keys: %+v", r)
	}
}

// pemCRL wraps a DER CRL in PEM.
func pemCRL(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})
}
