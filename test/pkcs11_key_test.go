package test

import (
	"crypto/x509"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bgbroker/breakglass/hsm"
	"github.com/bgbroker/breakglass/server/devmode"
)

// hardwareKey is an approver's key on a SoftHSM2 token of its own, made as
// an approver would make one on a smart card (pkcs11-tool), with its
// certificate from the dev CA.
type hardwareKey struct {
	tok      *softToken
	module   string
	certFile string
	label    string
}

// newHardwareKey puts a P-256 key for principal on a fresh token and has
// the dev CA certify it.
func newHardwareKey(t *testing.T, d *devBroker, principal string) *hardwareKey {
	t.Helper()
	tool := needTool(t, "pkcs11-tool")
	module, err := (hsm.Config{}).ResolveModule()
	if err != nil {
		t.Fatal(err)
	}
	tok := newSoftToken(t)
	hk := &hardwareKey{tok: tok, module: module, label: principal + " auth key", certFile: filepath.Join(tok.dir, principal+".crt")}
	env := append(os.Environ(), "SOFTHSM2_CONF="+tok.conf)
	gen := exec.Command(tool, "--module", module, "--token-label", tok.label, "--login", "--pin", tok.pin, "--keypairgen", "--key-type", "EC:prime256v1",
		"--label", hk.label, "--id", "01")
	gen.Env = env
	if out, err := gen.CombinedOutput(); err != nil {
		t.Fatalf("pkcs11-tool --keypairgen: %v\n%s", err, out)
	}
	pubFile := filepath.Join(tok.dir, "pub.der")
	read := exec.Command(tool, "--module", module, "--token-label", tok.label, "--read-object", "--type", "pubkey", "--id", "01", "-o", pubFile)
	read.Env = env
	if out, err := read.CombinedOutput(); err != nil {
		t.Fatalf("pkcs11-tool --read-object: %v\n%s", err, out)
	}
	der, err := os.ReadFile(pubFile)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		t.Fatal(err)
	}
	cert, _, err := d.devCA().Issue(devmode.LeafOptions{CommonName: principal, URIs: []string{devmode.URIPrefix + principal}, Public: pub})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(hk.certFile, devmode.CertPEM(cert), 0o600); err != nil {
		t.Fatal(err)
	}
	return hk
}

// uri is the key's RFC 7512 URI, the PIN from its file.
func (hk *hardwareKey) uri() string {
	return "pkcs11:token=" + hk.tok.label + ";object=" + strings.ReplaceAll(hk.label, " ", "%20") + ";type=private?module-path=" + hk.module +
		"&pin-source=file:" + hk.tok.pinFile
}

// env runs bgctl as the key's principal with key as --key (BGCTL_KEY).
func (hk *hardwareKey) env(d *devBroker, key string, extra ...string) []string {
	return append(os.Environ(), append([]string{"BGCTL_ADDR=" + d.ready.GRPC, "BGCTL_CA=" + d.state("ca", "ca.crt"), "BGCTL_CERT=" + hk.certFile,
		"BGCTL_KEY=" + key, "SOFTHSM2_CONF=" + hk.tok.conf}, extra...)...)
}

// An approver whose key is on a PKCS#11 token approves with bgctl --key
// pkcs11:...: the handshake and the statement are signed on the token,
// the review says so, and the offline verifier counts a hardware-key
// approval. The PIN never appears on a command line, and every mistake
// is named.
func TestHardwareKeyApproval(t *testing.T) {
	d := startDev(t)
	hk := newHardwareKey(t, d, "erin")
	id := d.createRequest("alice")
	d.mustBgctl("bob", "approve", id, "--yes")
	out := must(t, hk.env(d, hk.uri()), bin.bgctl, "approve", id, "--yes", "--comment", "approved with my smart card")
	if !strings.Contains(out, "APPROVED") {
		t.Fatalf("approve with a PKCS#11 key: %s", out)
	}
	show := d.mustBgctl("alice", "show", id)
	if !strings.Contains(show, "erin approve") || !strings.Contains(show, "a certificate key on a PKCS#11 token") {
		t.Fatalf("bgctl show:\n%s", show)
	}
	f := d.exportAudit(t)
	if v := f.verify(t); v.code != 0 || !strings.Contains(v.stdout, "1 hardware-key approval(s)") {
		t.Fatalf("bgctl audit verify: %d\n%s\n%s", v.code, v.stdout, v.stderr)
	}

	for name, c := range map[string]struct {
		key   string
		extra []string
		want  string
	}{
		"a PIN in the URI":     {strings.Replace(hk.uri(), "&pin-source=file:"+hk.tok.pinFile, "&pin-value="+hk.tok.pin, 1), nil, "pin-value is refused"},
		"no PIN at all":        {strings.Replace(hk.uri(), "&pin-source=file:"+hk.tok.pinFile, "", 1), nil, "no PIN for the PKCS#11 token"},
		"the wrong PIN":        {strings.Replace(hk.uri(), "&pin-source=file:"+hk.tok.pinFile, "", 1), []string{"BGCTL_PKCS11_PIN=00000000"}, "opening the PKCS#11 token"},
		"another key":          {strings.Replace(hk.uri(), "object=erin%20auth%20key", "object=nobody", 1), nil, "holds no key pair"},
		"another token":        {strings.Replace(hk.uri(), "token="+hk.tok.label, "token=nothere", 1), nil, "opening the PKCS#11 token"},
		"no library":           {strings.Replace(hk.uri(), "module-path="+hk.module+"&", "", 1), nil, "BGCTL_PKCS11_MODULE"},
		"not the cert's key":   {hk.uri(), []string{"BGCTL_CERT=" + d.state("identities", "erin.crt")}, "not the key of the client certificate"},
		"an unknown attribute": {hk.uri() + "&color=blue", nil, "not one RFC 7512 defines"},
	} {
		res := runCmdNoFatal(hk.env(d, c.key, c.extra...), bin.bgctl, "accounts")
		if res.code == 0 || !strings.Contains(res.stderr, c.want) || strings.Contains(res.stderr, hk.tok.pin) {
			t.Errorf("%s: exit %d, stderr %q (want %q, and never the PIN)", name, res.code, res.stderr, c.want)
		}
	}
	if err := os.Chmod(hk.tok.pinFile, 0o644); err != nil {
		t.Fatal(err)
	}
	if res := runCmdNoFatal(hk.env(d, hk.uri()), bin.bgctl, "accounts"); res.code == 0 || !strings.Contains(res.stderr, "readable by others") {
		t.Errorf("a world-readable PIN file: %d %s", res.code, res.stderr)
	}
}

// Without cgo bgctl still builds, works with key files, and says why it
// cannot use a PKCS#11 key.
func TestBgctlWithoutCgo(t *testing.T) {
	d := startDev(t)
	static := filepath.Join(t.TempDir(), "bgctl")
	build := exec.Command("go", "build", "-o", static, "../cmd/bgctl")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("CGO_ENABLED=0 go build ./cmd/bgctl: %v\n%s", err, out)
	}
	if out := must(t, d.env("bob"), static, "accounts"); !strings.Contains(out, "prod-db") {
		t.Fatalf("the static bgctl with a key file: %s", out)
	}
	res := runCmdNoFatal(append(d.env("bob"), "BGCTL_KEY=pkcs11:token=t;object=k?module-path=/x.so&pin-source=file:/nonexistent"), static, "accounts")
	if res.code == 0 || !strings.Contains(res.stderr, "built without cgo") {
		t.Fatalf("the static bgctl with a PKCS#11 key: %d %s", res.code, res.stderr)
	}
}
