package test

import (
	"crypto"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/lestrrat-go/jwx/v3/jwk"
	"golang.org/x/mod/sumdb/note"

	"github.com/bgbroker/breakglass/hsm"
)

type ceremonyRecord struct {
	Ceremony string `json:"ceremony"`
	Operator string `json:"operator"`
	Token    struct {
		Label  string `json:"label"`
		Serial string `json:"serial"`
	} `json:"token"`
	Key struct {
		Label       string `json:"label"`
		ID          string `json:"id"`
		Purpose     string `json:"purpose"`
		Algorithm   string `json:"algorithm"`
		Fingerprint string `json:"fingerprint_sha256"`
		KID         string `json:"kid"`
		PublicKey   string `json:"public_key_pem"`
	} `json:"key"`
	Attributes  map[string]bool `json:"attributes"`
	Mechanisms  []string        `json:"allowed_mechanisms"`
	Unsupported []string        `json:"unsupported_attributes"`
}

// A key ceremony as an operator runs it, checked with tools we did not
// write: pkcs11-tool reads the flags back, openssl verifies signatures the
// token made outside our code, jwx computes the thumbprint.
func TestKeyCeremonyWithOutsideTools(t *testing.T) {
	tok := newSoftToken(t)
	env := tok.env()
	sel := []string{"--token-label", tok.label, "--pin-file", tok.pinFile}
	recs := map[string]ceremonyRecord{}
	for _, p := range []string{"token", "audit", "checkpoint"} {
		out := must(t, env, bin.breakglassd, append([]string{"hsm", "keygen", "--purpose", p, "--label", p + "-2026", "--operator", "custodian-a"}, sel...)...)
		var rec ceremonyRecord
		if err := json.Unmarshal([]byte(out), &rec); err != nil {
			t.Fatalf("ceremony record is not JSON: %v\n%s", err, out)
		}
		if rec.Ceremony != "keygen" || rec.Operator != "custodian-a" || rec.Token.Label != tok.label || rec.Token.Serial == "" ||
			rec.Key.Label != p+"-2026" || rec.Key.Purpose != p || rec.Key.ID == "" || len(rec.Key.Fingerprint) != 64 {
			t.Errorf("ceremony record: %+v", rec)
		}
		if !rec.Attributes["sensitive"] || rec.Attributes["extractable"] || !rec.Attributes["never_extractable"] || rec.Attributes["decrypt"] || rec.Attributes["unwrap"] || rec.Attributes["derive"] || rec.Attributes["modifiable"] {
			t.Errorf("%s: attributes %v", p, rec.Attributes)
		}
		if len(rec.Mechanisms) != 1 || len(rec.Unsupported) != 0 {
			t.Errorf("%s: mechanisms %v unsupported %v", p, rec.Mechanisms, rec.Unsupported)
		}
		recs[p] = rec
	}

	// Collisions are refused and change nothing.
	r := runCmd(t, env, "", bin.breakglassd, append([]string{"hsm", "keygen", "--purpose", "audit", "--label", "token-2026"}, sel...)...)
	if r.code == 0 || !strings.Contains(r.stderr, `"token-2026" is already on the token`) {
		t.Errorf("label collision: exit %d, %s", r.code, r.stderr)
	}
	r = runCmd(t, env, "", bin.breakglassd, append([]string{"hsm", "keygen", "--purpose", "audit", "--label", "fresh", "--id", recs["audit"].Key.ID}, sel...)...)
	if r.code == 0 || !strings.Contains(r.stderr, "already on the token") {
		t.Errorf("ID collision: exit %d, %s", r.code, r.stderr)
	}

	list := must(t, env, bin.breakglassd, append([]string{"hsm", "list"}, sel...)...)
	for p, rec := range recs {
		if !regexp.MustCompile(rec.Key.Label + `\s+` + rec.Key.ID + `\s+\S+\s+` + p + `\s+true\s+false\s+` + rec.Key.Fingerprint).MatchString(list) {
			t.Errorf("hsm list lacks %s:\n%s", p, list)
		}
	}
	if strings.Contains(list, "fresh") {
		t.Error("a refused keygen left a key behind")
	}

	self := must(t, env, bin.breakglassd, append([]string{"hsm", "selftest"}, sel...)...)
	if strings.Count(self, " ok ") != 3 {
		t.Errorf("selftest:\n%s", self)
	}

	// pkcs11-tool: each private key sensitive, never extractable, sign only.
	pkcs11tool := needTool(t, "pkcs11-tool")
	module := softHSMModule(t)
	objs := must(t, env, pkcs11tool, "--module", module, "--token-label", tok.label, "--login", "--pin", tok.pin, "--list-objects")
	// pkcs11-tool selects keys for --sign by ID only, hence --id below.
	blocks := strings.Split(objs, "Object;")
	privs := 0
	for i := 1; i < len(blocks); i++ {
		b := blocks[i]
		if !strings.HasSuffix(strings.TrimSpace(blocks[i-1]), "Private Key") {
			continue
		}
		privs++
		if !regexp.MustCompile(`Usage:\s+sign\n`).MatchString(b) {
			t.Errorf("private key usage is not sign only:\n%s", b)
		}
		if !regexp.MustCompile(`Access:\s+sensitive, always sensitive, never extractable, local`).MatchString(b) {
			t.Errorf("private key access flags:\n%s", b)
		}
	}
	if privs != 3 {
		t.Errorf("pkcs11-tool listed %d private keys, want 3:\n%s", privs, objs)
	}

	// Signatures made by the token through pkcs11-tool verify with openssl
	// against the PEM that `hsm pubkey` prints.
	openssl := needTool(t, "openssl")
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	if err := os.WriteFile(data, []byte("signed outside the broker\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"token", "audit", "checkpoint"} {
		label := p + "-2026"
		pem := filepath.Join(dir, p+".pem")
		if err := os.WriteFile(pem, []byte(must(t, env, bin.breakglassd, append([]string{"hsm", "pubkey", "--label", label, "--format", "pem"}, sel...)...)), 0o600); err != nil {
			t.Fatal(err)
		}
		sig := filepath.Join(dir, p+".sig")
		if p == "checkpoint" {
			must(t, env, pkcs11tool, "--module", module, "--token-label", tok.label, "--login", "--pin", tok.pin,
				"--sign", "--mechanism", "EDDSA", "--id", recs[p].Key.ID, "--input-file", data, "--output-file", sig)
			must(t, env, openssl, "pkeyutl", "-verify", "-pubin", "-inkey", pem, "-rawin", "-in", data, "-sigfile", sig)
		} else {
			digest := filepath.Join(dir, p+".sha256")
			sum := sha256.Sum256([]byte("signed outside the broker\n"))
			if err := os.WriteFile(digest, sum[:], 0o600); err != nil {
				t.Fatal(err)
			}
			must(t, env, pkcs11tool, "--module", module, "--token-label", tok.label, "--login", "--pin", tok.pin,
				"--sign", "--mechanism", "ECDSA", "--id", recs[p].Key.ID, "--input-file", digest, "--output-file", sig, "--signature-format", "openssl")
			out := must(t, env, openssl, "dgst", "-sha256", "-verify", pem, "-signature", sig, data)
			if !strings.Contains(out, "Verified OK") {
				t.Errorf("openssl: %s", out)
			}
			// And a wrong message does not verify.
			bad := runCmd(t, env, "", openssl, "dgst", "-sha256", "-verify", pem, "-signature", sig, pem)
			if bad.code == 0 {
				t.Error("openssl verified a signature over other data")
			}
		}
	}

	// The JWK's kid is the RFC 7638 thumbprint an independent library computes.
	jwkOut := must(t, env, bin.breakglassd, append([]string{"hsm", "pubkey", "--label", "token-2026", "--format", "jwk"}, sel...)...)
	key, err := jwk.ParseKey([]byte(jwkOut))
	if err != nil {
		t.Fatalf("jwx cannot parse %s: %v", jwkOut, err)
	}
	tp, err := key.Thumbprint(crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	kid, _ := key.KeyID()
	if want := base64.RawURLEncoding.EncodeToString(tp); kid != want || kid != recs["token"].Key.KID {
		t.Errorf("kid %q, jwx thumbprint %q, ceremony record %q", kid, want, recs["token"].Key.KID)
	}

	// The note verifier key parses with golang.org/x/mod/sumdb/note.
	vkey := strings.TrimSpace(must(t, env, bin.breakglassd, append([]string{"hsm", "pubkey", "--label", "checkpoint-2026", "--format", "note", "--note-name", "example.org/breakglass"}, sel...)...))
	v, err := note.NewVerifier(vkey)
	if err != nil || v.Name() != "example.org/breakglass" {
		t.Errorf("note verifier %q: %v", vkey, err)
	}
	r = runCmd(t, env, "", bin.breakglassd, append([]string{"hsm", "pubkey", "--label", "token-2026", "--format", "note"}, sel...)...)
	if r.code == 0 || !strings.Contains(r.stderr, "only for Ed25519") {
		t.Errorf("note key for an ECDSA key: exit %d %s", r.code, r.stderr)
	}
}

func TestCeremonyErrors(t *testing.T) {
	tok := newSoftToken(t)
	loose := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(loose, []byte(tok.pin), 0o644); err != nil {
		t.Fatal(err)
	}
	wrong := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(wrong, []byte("wrong-pin-123"), 0o600); err != nil {
		t.Fatal(err)
	}
	noPIN := append(tok.env(), "BREAKGLASS_HSM_PIN=")
	tests := []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"module not found", tok.env(), []string{"hsm", "list", "--module", "/no/such/module.so", "--token-label", tok.label}, "apt-get install -y softhsm2"},
		{"token not found", tok.env(), []string{"hsm", "list", "--token-label", "absent"}, `tokens present: "` + tok.label + `"`},
		{"wrong PIN", tok.env(), []string{"hsm", "list", "--token-label", tok.label, "--pin-file", wrong}, "CKR_PIN_INCORRECT"},
		{"loose PIN file", tok.env(), []string{"hsm", "list", "--token-label", tok.label, "--pin-file", loose}, "chmod 600"},
		{"no PIN", noPIN, []string{"hsm", "list", "--token-label", tok.label}, "$BREAKGLASS_HSM_PIN"},
		{"key not found", tok.env(), []string{"hsm", "pubkey", "--token-label", tok.label, "--label", "ghost"}, `no key with label "ghost"`},
		{"bad purpose", tok.env(), []string{"hsm", "keygen", "--token-label", tok.label, "--purpose", "root", "--label", "x"}, "want one of token, audit, checkpoint"},
		{"no pin flag", tok.env(), []string{"hsm", "list", "--token-label", tok.label, "--pin", tok.pin}, "unknown flag: --pin"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := runCmd(t, tc.env, "", bin.breakglassd, tc.args...)
			if r.code == 0 {
				t.Fatalf("exit 0: %s", r.stdout)
			}
			if !strings.Contains(r.stderr, tc.want) {
				t.Errorf("stderr %q does not contain %q", r.stderr, tc.want)
			}
			if strings.Contains(r.stderr+r.stdout, tok.pin) || strings.Contains(r.stderr, "wrong-pin-123") {
				t.Errorf("output leaks a PIN: %s", r.stderr)
			}
		})
	}
}

// softHSMModule finds the PKCS#11 module the way the product does
// (hsm.Config.ResolveModule). Under CI a missing module fails the run.
func softHSMModule(t *testing.T) string {
	t.Helper()
	p, err := (hsm.Config{}).ResolveModule()
	switch {
	case err == nil:
		return p
	case os.Getenv("CI") != "":
		t.Fatalf("SoftHSM2 is required under CI: %v", err)
	default:
		t.Skipf("SoftHSM2 not installed: %v", err)
	}
	return ""
}
