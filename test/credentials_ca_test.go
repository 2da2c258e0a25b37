package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bgbroker/breakglass/server/devmode"
)

// The X.509 CA ceremonies as a key custodian runs them, checked with
// openssl: hsm ca-cert self-signs in the HSM a CA certificate with path
// length 0, keyCertSign and cRLSign and critical name constraints; hsm csr
// writes a request an organisation's root signs instead, and the broker,
// given that certificate, issues client certificates that chain to the
// organisation's root; given a certificate of another key it refuses to
// start. Dev mode prints the target-side configuration to try it.
func TestX509CACeremonies(t *testing.T) {
	openssl := needTool(t, "openssl")
	d := startDev(t)
	cfg := d.state("config.yaml")
	dir := t.TempDir()
	osl := func(args ...string) string {
		t.Helper()
		r := runCmd(t, os.Environ(), "", openssl, args...)
		if r.code != 0 {
			t.Fatalf("openssl %v: %s %s", args, r.stdout, r.stderr)
		}
		return r.stdout + r.stderr
	}

	// Dev mode's banner: the sshd_config and pg_hba.conf lines.
	if !eventually(10*time.Second, func() bool { return strings.Contains(d.out.String(), "hostssl all all 0.0.0.0/0 cert") }) {
		t.Fatalf("dev mode printed:\n%s", d.out)
	}
	for _, want := range []string{"TrustedUserCAKeys /etc/ssh/breakglass_ca.pub", d.ready.Issuer + "/ssh/ca.pub", "RevokedKeys /etc/ssh/breakglass_revoked.krl",
		d.ready.Issuer + "/ssh/revoked.krl", "ssl_ca_file = 'breakglass_x509_ca.pem'", d.ready.Issuer + "/x509/crl.pem", "bgctl ssh ID " + devmode.SSHPrincipal + "@HOST"} {
		if !strings.Contains(d.out.String(), want) {
			t.Errorf("dev mode's banner lacks %q:\n%s", want, d.out)
		}
	}

	// hsm ca-cert: a self-signed CA certificate made in the HSM.
	self := filepath.Join(dir, "self.pem")
	must(t, os.Environ(), bin.breakglassd, "hsm", "ca-cert", "--config", cfg, "--label", devmode.X509CAKeyLabel, "--subject", "CN=breakglass X.509 CA,O=Example",
		"--days", "30", "--permit-dns", "users.example.com", "--out", self)
	text := osl("x509", "-in", self, "-noout", "-text")
	for _, want := range []string{"CA:TRUE, pathlen:0", "Certificate Sign, CRL Sign", "X509v3 Name Constraints: critical", "DNS:users.example.com",
		"Subject: O = Example, CN = breakglass X.509 CA", "Signature Algorithm: ecdsa-with-SHA256"} {
		if !strings.Contains(text, want) {
			t.Errorf("hsm ca-cert's certificate lacks %q:\n%s", want, text)
		}
	}
	osl("verify", "-CAfile", self, self)

	// hsm csr, signed by an organisation's root with openssl.
	csr := filepath.Join(dir, "ca.csr")
	must(t, os.Environ(), bin.breakglassd, "hsm", "csr", "--config", cfg, "--label", devmode.X509CAKeyLabel, "--subject", "CN=breakglass X.509 CA,O=Example", "--out", csr)
	if out := osl("req", "-in", csr, "-noout", "-verify", "-subject"); !strings.Contains(out, "verify OK") || !strings.Contains(out, "O = Example, CN = breakglass X.509 CA") {
		t.Fatalf("openssl req -verify: %s", out)
	}
	rootKey, root := filepath.Join(dir, "root.key"), filepath.Join(dir, "root.pem")
	osl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", rootKey, "-out", root, "-days", "30", "-subj", "/CN=Example Root CA")
	ext := filepath.Join(dir, "ext.cnf")
	write(t, ext, []byte("basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"))
	orgCA := filepath.Join(dir, "org-ca.pem")
	osl("x509", "-req", "-in", csr, "-CA", root, "-CAkey", rootKey, "-CAcreateserial", "-days", "20", "-extfile", ext, "-out", orgCA)

	// The broker with the organisation's CA certificate.
	b, err := os.ReadFile(orgCA)
	if err != nil {
		t.Fatal(err)
	}
	d.stop()
	caFile := d.state("x509", "ca.pem")
	write(t, caFile, b)
	d.start()
	// The CRL signed under the dev CA's certificate names another issuer:
	// it is re-signed under the organisation's.
	crl := filepath.Join(dir, "crl.pem")
	if !eventually(30*time.Second, func() bool {
		write(t, crl, d.fetch(t, "/x509/crl.pem"))
		return runCmd(t, os.Environ(), "", openssl, "crl", "-in", crl, "-noout", "-CAfile", orgCA).code == 0
	}) {
		t.Fatalf("the CRL was not re-signed under the new CA certificate: %s", osl("crl", "-in", crl, "-noout", "-issuer"))
	}
	id := d.grantFor("30m")
	key, crt := filepath.Join(dir, "alice.key"), filepath.Join(dir, "alice.crt")
	d.mustBgctl("alice", "x509-cert", id, "--key-out", key, "--out", crt)
	if out := osl("verify", "-crl_check", "-CAfile", root, "-untrusted", orgCA, "-CRLfile", crl, "-purpose", "sslclient", crt); !strings.Contains(out, "OK") {
		t.Fatalf("openssl verify up to the organisation's root: %s", out)
	}

	// A CA certificate of another key: the broker does not start.
	d.stop()
	rb, _ := os.ReadFile(root)
	write(t, caFile, rb)
	r := runCmd(t, append(os.Environ(), "SOFTHSM2_CONF="), "", bin.breakglassd, "serve", "--config", cfg)
	if r.code == 0 || !strings.Contains(r.stderr, "the configured CA certificate does not match its key") {
		t.Fatalf("serve with a CA certificate of another key: %d %s", r.code, r.stderr)
	}
	write(t, caFile, b)
}

// bgctl ssh's ephemeral key does not outlive the command: interrupted,
// terminated, or hung up on (the terminal closed) while ssh runs, it
// removes the key and certificate before it exits.
func TestBGCTLSSHLeavesNoKeyWhenInterrupted(t *testing.T) {
	d := startDev(t)
	id := d.grantFor("30m")
	fake := filepath.Join(t.TempDir(), "ssh")
	write(t, fake, []byte("#!/bin/sh\nexec sleep 60\n"))
	if err := os.Chmod(fake, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP} {
		t.Run(sig.String(), func(t *testing.T) {
			tmp := t.TempDir()
			cmd := exec.Command(bin.bgctl, "ssh", id, devmode.SSHPrincipal+"@127.0.0.1", "--ssh", fake)
			cmd.Env = append(d.env("alice"), "TMPDIR="+tmp)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			// The key and its certificate are there while ssh runs.
			if !eventually(30*time.Second, func() bool {
				m, _ := filepath.Glob(filepath.Join(tmp, "bgctl-ssh-*", "id_ed25519-cert.pub"))
				return len(m) == 1
			}) {
				_ = cmd.Process.Kill()
				t.Fatal("bgctl ssh never wrote its certificate")
			}
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-done:
				t.Logf("bgctl ssh after %s: %v", sig, err) // it exits failing, or by the signal: either is fine
			case <-time.After(30 * time.Second):
				_ = cmd.Process.Kill()
				t.Fatalf("bgctl ssh did not exit on %s", sig)
			}
			if left, _ := os.ReadDir(tmp); len(left) != 0 {
				t.Fatalf("after %s bgctl ssh left %v behind", sig, left)
			}
		})
	}
}
