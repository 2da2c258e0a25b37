package test

import (
	"bytes"
	"context"
	"crypto/dsa" //nolint:staticcheck // DSA keys are made to prove they are refused.
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"google.golang.org/grpc/codes"

	"github.com/bgbroker/breakglass/format/krl"
	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
	"github.com/bgbroker/breakglass/server/devmode"
	"github.com/bgbroker/breakglass/server/store/postgres/pgtest"
)

// fetch GETs a path of the broker's HTTPS listener.
func (d *devBroker) fetch(t *testing.T, path string) []byte {
	t.Helper()
	resp, err := d.httpClient().Get(d.ready.Issuer + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v\n%s", path, resp.StatusCode, err, b)
	}
	return b
}

// grantFor makes a request of alice for prod-db with ttl and has bob
// and erin approve it.
func (d *devBroker) grantFor(ttl string) string {
	d.t.Helper()
	out := d.mustBgctl("alice", "request", "--account", "prod-db", "--justification", "primary database is down (INC-9)", "--ttl", ttl, "-o", "json")
	var resp struct {
		Request struct{ ID string } `json:"request"`
	}
	if err := json.Unmarshal([]byte(out), &resp); err != nil || resp.Request.ID == "" {
		d.t.Fatalf("request output %q: %v", out, err)
	}
	d.mustBgctl("bob", "approve", resp.Request.ID, "--yes")
	d.mustBgctl("erin", "approve", resp.Request.ID, "--yes")
	return resp.Request.ID
}

func needRoot(t *testing.T, what string) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s needs root in CI", what)
		}
		t.Skipf("%s needs root", what)
	}
}

// sshdServer is Debian's OpenSSH server on a loopback port, trusting the
// broker's SSH CA and reading its KRL.
type sshdServer struct {
	t              *testing.T
	dir, conf, log string
	krl            string
	port           int
	cmd            *exec.Cmd
}

func startSSHD(t *testing.T, caPub, revoked []byte) *sshdServer {
	t.Helper()
	needRoot(t, "sshd")
	if _, err := os.Stat("/usr/sbin/sshd"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("openssh-server is required in CI (scripts/ensure-deps.sh test installs it)")
		}
		t.Skip("openssh-server not installed")
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatal(err)
	}
	// The user the certificate's principal names; useradd makes it locked,
	// which sshd refuses until it has a (disabled) password.
	if exec.Command("id", "-u", devmode.SSHPrincipal).Run() != nil {
		if out, err := exec.Command("useradd", "-m", "-s", "/bin/sh", devmode.SSHPrincipal).CombinedOutput(); err != nil {
			t.Fatalf("useradd: %v\n%s", err, out)
		}
	}
	if out, err := exec.Command("usermod", "-p", "*", devmode.SSHPrincipal).CombinedOutput(); err != nil {
		t.Fatalf("usermod: %v\n%s", err, out)
	}
	s := &sshdServer{t: t, dir: t.TempDir()}
	s.conf, s.log, s.krl = filepath.Join(s.dir, "sshd_config"), filepath.Join(s.dir, "sshd.log"), filepath.Join(s.dir, "revoked.krl")
	hostKey := filepath.Join(s.dir, "host_ed25519")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", hostKey).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	write(t, filepath.Join(s.dir, "ca.pub"), caPub)
	s.setKRL(revoked)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.port = l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	write(t, s.conf, []byte(fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %s
PidFile %s
TrustedUserCAKeys %s
RevokedKeys %s
AuthorizedKeysFile none
UsePAM no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
LogLevel VERBOSE
`, s.port, hostKey, filepath.Join(s.dir, "sshd.pid"), filepath.Join(s.dir, "ca.pub"), s.krl)))
	s.cmd = exec.Command("/usr/sbin/sshd", "-D", "-f", s.conf, "-E", s.log)
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		_ = s.cmd.Wait() // killed at cleanup: its exit status says nothing
		close(done)
	}()
	t.Cleanup(func() {
		_ = s.cmd.Process.Kill()
		<-done
	})
	if !eventually(10*time.Second, func() bool {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", s.port))
		if err == nil {
			_ = c.Close()
		}
		return err == nil
	}) {
		t.Fatalf("sshd did not listen:\n%s", s.logs())
	}
	return s
}

func write(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// setKRL replaces the KRL as a cron job with curl would: sshd reads it on
// every authentication.
func (s *sshdServer) setKRL(b []byte) {
	tmp := s.krl + ".new"
	write(s.t, tmp, b)
	if err := os.Rename(tmp, s.krl); err != nil {
		s.t.Fatal(err)
	}
}

func (s *sshdServer) logs() string {
	b, _ := os.ReadFile(s.log)
	return string(b)
}

// login runs the system ssh with exactly this key and certificate.
func (s *sshdServer) login(key, cert, user, command string) result {
	s.t.Helper()
	return runCmd(s.t, os.Environ(), "", "ssh", "-i", key, "-o", "CertificateFile="+cert, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-p", fmt.Sprint(s.port), user+"@127.0.0.1", command)
}

func sshKey(t *testing.T, dir string) (key, pub string) {
	t.Helper()
	key = filepath.Join(dir, "id_ed25519")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	return key, key + ".pub"
}

// OpenSSH accepts the broker's certificates and honours its revocations:
// sshd trusts the CA key from /ssh/ca.pub (the same as `hsm pubkey
// --format ssh`), logs in the principal the policy names, refuses a
// certificate after its valid-before and after its grant is revoked and
// the KRL refreshed; ssh-keygen agrees; bgctl ssh works end to end.
func TestSSHCertificatesAgainstRealSSHD(t *testing.T) {
	needTool(t, "ssh")
	d := startDev(t)
	caPub := d.fetch(t, "/ssh/ca.pub")
	fromHSM := must(t, os.Environ(), bin.breakglassd, "hsm", "pubkey", "--config", d.state("config.yaml"), "--label", devmode.SSHCAKeyLabel, "--format", "ssh")
	served, _, _, _, err := ssh.ParseAuthorizedKey(caPub)
	if err != nil {
		t.Fatal(err)
	}
	ceremony, _, _, _, err := ssh.ParseAuthorizedKey([]byte(fromHSM))
	if err != nil || !bytes.Equal(served.Marshal(), ceremony.Marshal()) || served.Type() != ssh.KeyAlgoECDSA256 {
		t.Fatalf("/ssh/ca.pub %q is not the HSM key %q (%v)", caPub, fromHSM, err)
	}
	s := startSSHD(t, []byte(fromHSM), d.fetch(t, "/ssh/revoked.krl"))
	id := d.grantFor("30m")
	dir := t.TempDir()
	key, pub := sshKey(t, dir)
	out := d.mustBgctl("alice", "ssh-cert", id, "--public-key", pub)
	cert := strings.TrimSpace(out)
	if cert != filepath.Join(dir, "id_ed25519-cert.pub") {
		t.Fatalf("ssh-cert wrote %q", cert)
	}
	listing := must(t, os.Environ(), "ssh-keygen", "-L", "-f", cert)
	keyID := "breakglass:" + id + ":1:alice"
	for _, want := range []string{"user certificate", `Key ID: "` + keyID + `"`, "Principals: \n                breakglass", "permit-pty", "Signing CA: ECDSA"} {
		if !strings.Contains(listing, want) {
			t.Errorf("ssh-keygen -L lacks %q:\n%s", want, listing)
		}
	}
	if r := s.login(key, cert, devmode.SSHPrincipal, "whoami"); r.code != 0 || strings.TrimSpace(r.stdout) != devmode.SSHPrincipal {
		t.Fatalf("login with the certificate: %d %q %q\n%s", r.code, r.stdout, r.stderr, s.logs())
	}
	if !strings.Contains(s.logs(), "ID "+keyID+" (serial ") {
		t.Errorf("sshd did not log the key ID:\n%s", s.logs())
	}
	// Another user is refused by sshd: not a principal of the certificate.
	if r := s.login(key, cert, "root", "true"); r.code == 0 {
		t.Fatal("sshd let the certificate log in as root")
	}
	// A principal outside the policy is refused by the broker.
	r := d.bgctl("alice", "ssh-cert", id, "--public-key", pub, "--principal", "root", "--out", filepath.Join(dir, "root-cert.pub"))
	if r.code == 0 || !strings.Contains(r.stderr, "InvalidArgument") || !strings.Contains(r.stderr, `principal "root" is not one of account prod-db's SSH principals`) {
		t.Fatalf("principal outside the policy: %d %s", r.code, r.stderr)
	}
	// bgctl ssh: an ephemeral key in a private directory, removed after.
	tmp := t.TempDir()
	env := append(d.env("alice"), "TMPDIR="+tmp)
	r = runCmd(t, env, "", bin.bgctl, "ssh", id, devmode.SSHPrincipal+"@127.0.0.1", "--", "-p", fmt.Sprint(s.port), "-o", "BatchMode=yes",
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "echo", "via bgctl ssh; whoami")
	if r.code != 0 || !strings.Contains(r.stdout, "via bgctl ssh") || !strings.Contains(r.stdout, devmode.SSHPrincipal) {
		t.Fatalf("bgctl ssh: %d %q %q\n%s", r.code, r.stdout, r.stderr, s.logs())
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Fatalf("bgctl ssh left %v behind", left)
	}
	// Revoking the grant revokes its certificates: after a KRL refresh sshd
	// refuses the first one, and ssh-keygen says REVOKED.
	d.mustBgctl("alice", "revoke", id, "--reason", "database restored")
	revoked := d.fetch(t, "/ssh/revoked.krl")
	s.setKRL(revoked)
	if q := runCmd(t, os.Environ(), "", "ssh-keygen", "-Q", "-f", s.krl, cert); !strings.Contains(q.stdout, "REVOKED") {
		t.Fatalf("ssh-keygen -Q: %q %q", q.stdout, q.stderr)
	}
	if r := s.login(key, cert, devmode.SSHPrincipal, "true"); r.code == 0 {
		t.Fatalf("sshd accepted a revoked certificate\n%s", s.logs())
	}
	if !strings.Contains(s.logs(), "revoked") {
		t.Errorf("sshd did not log the revocation:\n%s", s.logs())
	}
	k, err := krl.Parse(revoked)
	if err != nil || k.Version == 0 || len(k.Certificates) != 1 || len(k.Certificates[0].Serials) != 2 {
		t.Fatalf("KRL %+v: %v", k, err)
	}

	// A certificate used after its valid-before is refused by sshd. The
	// grant is short; the certificate works first, then the test waits
	// for its end on the clock and tries again.
	short := d.grantFor("5s")
	key2, pub2 := sshKey(t, t.TempDir())
	cert2 := strings.TrimSpace(d.mustBgctl("alice", "ssh-cert", short, "--public-key", pub2))
	parsed, _, _, _, err := ssh.ParseAuthorizedKey([]byte(must(t, os.Environ(), "cat", cert2)))
	if err != nil {
		t.Fatal(err)
	}
	validBefore := time.Unix(int64(parsed.(*ssh.Certificate).ValidBefore), 0)
	if r := s.login(key2, cert2, devmode.SSHPrincipal, "true"); r.code != 0 && time.Now().Before(validBefore) {
		t.Fatalf("login before valid-before: %d %s\n%s", r.code, r.stderr, s.logs())
	}
	if !eventually(15*time.Second, func() bool { return time.Now().After(validBefore.Add(time.Second)) }) {
		t.Fatal("the certificate did not reach its end")
	}
	if r := s.login(key2, cert2, devmode.SSHPrincipal, "true"); r.code == 0 {
		t.Fatalf("sshd accepted a certificate after its valid-before\n%s", s.logs())
	}
	if !strings.Contains(s.logs(), "expired") {
		t.Errorf("sshd did not log the expiry:\n%s", s.logs())
	}
}

// PostgreSQL accepts the broker's X.509 client certificates for the role
// of their common name, refuses them for another, and once the grant is
// revoked and the CRL from /x509/crl.pem reloaded, refuses them; openssl
// verify -crl_check agrees.
func TestX509CertificatesAgainstRealPostgreSQL(t *testing.T) {
	psql := needTool(t, "psql")
	openssl := needTool(t, "openssl")
	srv, err := pgtest.Start()
	if err != nil {
		if os.Getenv("CI") == "" {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	d := startDev(t)
	data := srv.DataDir()
	// The server's own certificate comes from the dev CA; the broker's X.509
	// CA is the one it trusts for clients, with the broker's CRL.
	sc, sk, err := d.devCA().Issue(devmode.LeafOptions{CommonName: "localhost", IPs: []net.IP{net.ParseIP("127.0.0.1")}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := devmode.WriteCert(filepath.Join(data, "server.crt"), filepath.Join(data, "server.key"), sc, sk); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(data, "breakglass_x509_ca.pem"), d.fetch(t, "/x509/ca.pem"))
	crlFile := filepath.Join(data, "breakglass.crl.pem")
	write(t, crlFile, d.fetch(t, "/x509/crl.pem"))
	for _, f := range []string{"server.crt", "server.key", "breakglass_x509_ca.pem", "breakglass.crl.pem"} {
		if err := srv.Own(filepath.Join(data, f)); err != nil {
			t.Fatal(err)
		}
	}
	conf, err := os.OpenFile(filepath.Join(data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = conf.WriteString("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'breakglass_x509_ca.pem'\nssl_crl_file = 'breakglass.crl.pem'\n")
	_ = conf.Close()
	write(t, filepath.Join(data, "pg_hba.conf"), []byte("local all postgres trust\nhostssl all all 127.0.0.1/32 cert\n"))
	if err := srv.Own(filepath.Join(data, "pg_hba.conf")); err != nil {
		t.Fatal(err)
	}
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	super := fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres", srv.SocketDir(), srv.Port())
	must(t, os.Environ(), psql, super, "-c", "CREATE ROLE alice LOGIN", "-c", "CREATE ROLE bob LOGIN")

	id := d.grantFor("30m")
	dir := t.TempDir()
	key, crt, ca := filepath.Join(dir, "alice.key"), filepath.Join(dir, "alice.crt"), filepath.Join(dir, "ca.pem")
	d.mustBgctl("alice", "x509-cert", id, "--key-out", key, "--out", crt, "--ca-out", ca)
	if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file %v %v", fi.Mode(), err)
	}
	connect := func(user string) result {
		return runCmd(t, os.Environ(), "", psql, fmt.Sprintf("host=127.0.0.1 port=%d dbname=postgres user=%s sslmode=verify-full sslrootcert=%s sslcert=%s sslkey=%s",
			srv.Port(), user, d.state("ca", "ca.crt"), crt, key), "-tAc", "SELECT current_user")
	}
	if r := connect("alice"); r.code != 0 || strings.TrimSpace(r.stdout) != "alice" {
		t.Fatalf("psql as alice: %d %q %q", r.code, r.stdout, r.stderr)
	}
	if r := connect("bob"); r.code == 0 || !strings.Contains(r.stderr, `certificate authentication failed for user "bob"`) {
		t.Fatalf("psql as bob with alice's certificate: %d %q", r.code, r.stderr)
	}
	if r := runCmd(t, os.Environ(), "", openssl, "verify", "-crl_check", "-CAfile", ca, "-CRLfile", crlFile, crt); r.code != 0 || !strings.Contains(r.stdout, "OK") {
		t.Fatalf("openssl verify before revocation: %q %q", r.stdout, r.stderr)
	}
	d.mustBgctl("alice", "revoke", id, "--reason", "database restored")
	cert := readCert(t, crt)
	var crlPEM []byte
	if !eventually(20*time.Second, func() bool {
		crlPEM = d.fetch(t, "/x509/crl.pem")
		return crlLists(t, crlPEM, cert)
	}) {
		t.Fatal("the CRL never listed the revoked certificate")
	}
	write(t, crlFile, crlPEM)
	must(t, os.Environ(), psql, super, "-c", "SELECT pg_reload_conf()")
	if !eventually(10*time.Second, func() bool {
		r := connect("alice")
		return r.code != 0 && strings.Contains(r.stderr, "certificate revoked")
	}) {
		r := connect("alice")
		t.Fatalf("psql after revocation: %d %q %q", r.code, r.stdout, r.stderr)
	}
	if r := runCmd(t, os.Environ(), "", openssl, "verify", "-crl_check", "-CAfile", ca, "-CRLfile", crlFile, crt); r.code == 0 || !strings.Contains(r.stdout+r.stderr, "certificate revoked") {
		t.Fatalf("openssl verify after revocation: %q %q", r.stdout, r.stderr)
	}
	// The DER form and the distribution point the certificate names are
	// the same CRL.
	der := d.fetch(t, "/x509/crl.der")
	cdp := strings.TrimPrefix(cert.CRLDistributionPoints[0], d.ready.Issuer)
	if !bytes.Equal(der, d.fetch(t, cdp)) {
		t.Fatalf("%s is not /x509/crl.der", cdp)
	}
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s holds no PEM", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func crlLists(t *testing.T, crlPEM []byte, c *x509.Certificate) bool {
	t.Helper()
	for {
		var blk *pem.Block
		blk, crlPEM = pem.Decode(crlPEM)
		if blk == nil {
			return false
		}
		crl, err := x509.ParseRevocationList(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range crl.RevokedCertificateEntries {
			if e.SerialNumber.Cmp(c.SerialNumber) == 0 {
				return true
			}
		}
	}
}

// Hostile inputs over the API: each refused with its code, nothing written.
func TestCertificateHostileInputs(t *testing.T) {
	d := startDev(t)
	id := d.grantFor("30m")
	alice, bob := d.client("alice"), d.client("bob")
	pending := d.createRequest("alice")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	good := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(mustSSHPub(t))))
	dsaLine := dsaKeyLine(t)
	before, n0 := hostileState(t, d)
	cases := []struct {
		name string
		call func() error
		code codes.Code
		msg  string
	}{
		{"oversize public key", func() error {
			_, err := alice.IssueSSHCertificate(ctx, &bgv1.IssueSSHCertificateRequest{RequestId: id, PublicKey: strings.Repeat("A", 20000)})
			return err
		}, codes.InvalidArgument, "public_key"},
		{"oversize CSR", func() error {
			_, err := alice.IssueX509Certificate(ctx, &bgv1.IssueX509CertificateRequest{RequestId: id, Csr: make([]byte, 20000)})
			return err
		}, codes.InvalidArgument, "csr"},
		{"too many principals", func() error {
			_, err := alice.IssueSSHCertificate(ctx, &bgv1.IssueSSHCertificateRequest{RequestId: id, PublicKey: good, Principals: make([]string, 33)})
			return err
		}, codes.InvalidArgument, "principals"},
		{"a DSA key", func() error {
			_, err := alice.IssueSSHCertificate(ctx, &bgv1.IssueSSHCertificateRequest{RequestId: id, PublicKey: dsaLine})
			return err
		}, codes.InvalidArgument, "ssh-dss is not accepted"},
		{"a CSR that is garbage", func() error {
			_, err := alice.IssueX509Certificate(ctx, &bgv1.IssueX509CertificateRequest{RequestId: id, Csr: []byte("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")})
			return err
		}, codes.InvalidArgument, "csr"},
		{"pending grant", func() error {
			_, err := alice.IssueSSHCertificate(ctx, &bgv1.IssueSSHCertificateRequest{RequestId: pending, PublicKey: good})
			return err
		}, codes.FailedPrecondition, "still pending"},
		{"not the requester", func() error {
			_, err := bob.IssueSSHCertificate(ctx, &bgv1.IssueSSHCertificateRequest{RequestId: id, PublicKey: good})
			return err
		}, codes.PermissionDenied, "only the requester"},
		{"malformed id", func() error {
			_, err := alice.IssueSSHCertificate(ctx, &bgv1.IssueSSHCertificateRequest{RequestId: "../../etc", PublicKey: good})
			return err
		}, codes.InvalidArgument, "request_id"},
	}
	for _, c := range cases {
		err := c.call()
		if codeOf(err) != c.code || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: %v, want %s %q", c.name, err, c.code, c.msg)
		}
	}
	if after, n1 := hostileState(t, d); after != before || n1 != n0 {
		t.Fatalf("hostile certificate calls changed the state:\n%s", stateDiff(before, after, n0, n1))
	}
	// Exhausted: max_issuances 3 of prod-db, shared with tokens.
	for range 3 {
		if _, err := alice.IssueSSHCertificate(ctx, &bgv1.IssueSSHCertificateRequest{RequestId: id, PublicKey: good}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := alice.IssueSSHCertificate(ctx, &bgv1.IssueSSHCertificateRequest{RequestId: id, PublicKey: good}); codeOf(err) != codes.FailedPrecondition {
		t.Fatalf("fourth issuance: %v", err)
	}
}

// dsaKeyLine is an ssh-dss public key, which is never certified.
func dsaKeyLine(t *testing.T) string {
	t.Helper()
	var k dsa.PrivateKey
	if err := dsa.GenerateParameters(&k.Parameters, rand.Reader, dsa.L1024N160); err != nil {
		t.Fatal(err)
	}
	if err := dsa.GenerateKey(&k, rand.Reader); err != nil {
		t.Fatal(err)
	}
	pk, err := ssh.NewPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return string(ssh.MarshalAuthorizedKey(pk))
}

func mustSSHPub(t *testing.T) ssh.PublicKey {
	t.Helper()
	dir := t.TempDir()
	_, pub := sshKey(t, dir)
	b, err := os.ReadFile(pub)
	if err != nil {
		t.Fatal(err)
	}
	pk, _, _, _, err := ssh.ParseAuthorizedKey(b)
	if err != nil {
		t.Fatal(err)
	}
	return pk
}
