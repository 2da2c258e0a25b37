package sshca

import (
	"context"
	"crypto"
	"crypto/dsa" //nolint:staticcheck // DSA keys are generated to prove they are refused.
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bgbroker/breakglass/hsm"
	"github.com/bgbroker/breakglass/hsm/hsmtest"
)

func TestMain(m *testing.M) { os.Exit(hsmtest.Main(m)) }

func newCA(t *testing.T) *CA {
	t.Helper()
	m := hsmtest.NewToken(t).Open(t)
	ctx := context.Background()
	if _, err := m.GenerateKey(ctx, hsm.GenerateRequest{Purpose: hsm.PurposeSSHCA, Label: "ssh-ca"}); err != nil {
		t.Fatal(err)
	}
	k, err := m.Signer(ctx, "ssh-ca", hsm.PurposeSSHCA)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := New(k)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func sshPub(t *testing.T, k any) ssh.PublicKey {
	t.Helper()
	pk, err := ssh.NewPublicKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pk
}

func TestSignInTheHSM(t *testing.T) {
	ca := newCA(t)
	if ca.PublicKey().Type() != ssh.KeyAlgoECDSA256 {
		t.Fatalf("CA key type %s", ca.PublicKey().Type())
	}
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	after := time.Unix(1900000000, 0)
	cert, err := ca.Sign(context.Background(), Request{Key: sshPub(t, pub), Serial: 77, KeyID: KeyID("r-1", 2, "alice"), Principals: []string{"breakglass"},
		ValidAfter: after, ValidBefore: after.Add(30 * time.Minute), CriticalOptions: map[string]string{"source-address": "10.0.0.0/8"},
		Extensions: []string{"permit-pty"}})
	if err != nil {
		t.Fatal(err)
	}
	if cert.KeyId != "breakglass:r-1:2:alice" || cert.Serial != 77 || cert.CertType != ssh.UserCert || cert.ValidAfter != 1900000000 ||
		cert.ValidBefore != 1900001800 || len(cert.Extensions) != 1 || cert.CriticalOptions["source-address"] != "10.0.0.0/8" {
		t.Fatalf("certificate %+v", cert)
	}
	if err := Verify(cert, ca.PublicKey()); err != nil {
		t.Fatal(err)
	}
	// OpenSSH reads it as we meant it.
	keygen, err := exec.LookPath("ssh-keygen")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("ssh-keygen is required in CI")
		}
		t.Skip("ssh-keygen not installed")
	}
	f := filepath.Join(t.TempDir(), "id-cert.pub")
	if err := os.WriteFile(f, ssh.MarshalAuthorizedKey(cert), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(keygen, "-L", "-f", f).CombinedOutput()
	if err != nil {
		t.Fatalf("ssh-keygen -L: %v\n%s", err, out)
	}
	for _, want := range []string{"Type: ssh-ed25519-cert-v01@openssh.com user certificate", `Key ID: "breakglass:r-1:2:alice"`, "Serial: 77",
		"Signing CA: ECDSA", "breakglass", "source-address 10.0.0.0/8", "permit-pty"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("ssh-keygen -L lacks %q:\n%s", want, out)
		}
	}
}

func TestSignRefuses(t *testing.T) {
	ca := newCA(t)
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	ok := Request{Key: sshPub(t, pub), Serial: 1, Principals: []string{"a"}, ValidAfter: time.Unix(10, 0), ValidBefore: time.Unix(20, 0)}
	for name, edit := range map[string]func(r *Request){
		"no principals":  func(r *Request) { r.Principals = nil },
		"serial 0":       func(r *Request) { r.Serial = 0 },
		"empty validity": func(r *Request) { r.ValidBefore = r.ValidAfter },
		"no key":         func(r *Request) { r.Key = nil },
	} {
		rq := ok
		edit(&rq)
		if _, err := ca.Sign(context.Background(), rq); err == nil {
			t.Errorf("%s: signed", name)
		}
	}
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	if _, err := New(publicOnly{edPub}); err == nil {
		t.Error("New accepted a key that is not P-256")
	}
}

// publicOnly is a key that can only say what it is.
type publicOnly struct{ pub crypto.PublicKey }

func (p publicOnly) Public() crypto.PublicKey { return p.pub }
func (p publicOnly) SignContext(context.Context, []byte, crypto.SignerOpts) ([]byte, error) {
	return nil, errors.New("no signing here")
}

func TestParseSubjectKey(t *testing.T) {
	line := ssh.MarshalAuthorizedKey
	ed, _, _ := ed25519.GenerateKey(rand.Reader)
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p521, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	rsa2048, _ := rsa.GenerateKey(rand.Reader, 2048)
	rsa3072, _ := rsa.GenerateKey(rand.Reader, 3072)
	var dsaKey dsa.PrivateKey
	if err := dsa.GenerateParameters(&dsaKey.Parameters, rand.Reader, dsa.L1024N160); err != nil {
		t.Fatal(err)
	}
	if err := dsa.GenerateKey(&dsaKey, rand.Reader); err != nil {
		t.Fatal(err)
	}
	caSigner, _ := ssh.NewSignerFromKey(p256)
	cert := &ssh.Certificate{Key: sshPub(t, ed), CertType: ssh.UserCert, ValidPrincipals: []string{"a"}, ValidBefore: ssh.CertTimeInfinity}
	if err := cert.SignCert(rand.Reader, caSigner); err != nil {
		t.Fatal(err)
	}
	// A FIDO security key (sk-ssh-ed25519@openssh.com): type, key, application.
	sk := ssh.Marshal(struct {
		Type        string
		Key         []byte
		Application string
	}{"sk-ssh-ed25519@openssh.com", ed, "ssh:"})
	skLine := []byte("sk-ssh-ed25519@openssh.com " + base64.StdEncoding.EncodeToString(sk) + "\n")
	accept := map[string][]byte{
		"ed25519":   line(sshPub(t, ed)),
		"p256":      line(sshPub(t, &p256.PublicKey)),
		"p384":      line(sshPub(t, &p384.PublicKey)),
		"rsa 3072":  line(sshPub(t, &rsa3072.PublicKey)),
		"comment":   []byte(strings.TrimSpace(string(line(sshPub(t, ed)))) + " alice@laptop\n"),
		"no eol":    []byte(strings.TrimSpace(string(line(sshPub(t, ed))))),
		"crlf line": []byte(strings.TrimSpace(string(line(sshPub(t, ed)))) + "\r\n"),
	}
	for name, b := range accept {
		if _, err := ParseSubjectKey(b); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	refuse := map[string]struct {
		b    []byte
		want string
	}{
		"dsa":         {line(sshPub(t, &dsaKey.PublicKey)), "ssh-dss is not accepted"},
		"rsa 2048":    {line(sshPub(t, &rsa2048.PublicKey)), "2048 bits; at least 3072"},
		"p521":        {line(sshPub(t, &p521.PublicKey)), "ecdsa-sha2-nistp521 is not accepted"},
		"certificate": {line(cert), "itself a certificate"},
		"sk key":      {skLine, "sk-ssh-ed25519@openssh.com is not accepted"},
		"options":     {[]byte("command=\"/bin/sh\" " + string(line(sshPub(t, ed)))), "options"},
		"two keys":    {append(line(sshPub(t, ed)), line(sshPub(t, &p256.PublicKey))...), "more than one"},
		"garbage":     {[]byte("ssh-ed25519 AAAA!!!"), "authorized_keys format"},
		"empty":       {nil, "authorized_keys format"},
		"truncated":   {[]byte("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA"), "authorized_keys format"},
		"oversize":    {make([]byte, MaxKeyBytes+1), "at most"},
	}
	for name, c := range refuse {
		_, err := ParseSubjectKey(c.b)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
}

func TestRandomSerial(t *testing.T) {
	seen := map[uint64]bool{}
	for range 1000 {
		s, err := RandomSerial()
		if err != nil || s == 0 || seen[s] {
			t.Fatalf("serial %d: %v", s, err)
		}
		seen[s] = true
	}
}
