package hsm_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/pkcs11"
	"golang.org/x/mod/sumdb/note"

	"github.com/bgbroker/breakglass/format/keyid"
	"github.com/bgbroker/breakglass/hsm"
	"github.com/bgbroker/breakglass/hsm/hsmtest"
)

func TestMain(m *testing.M) { os.Exit(hsmtest.Main(m)) }

// rawSession opens a second, independent PKCS#11 handle on the same library
// and a logged-in session on the token: the view an outside tool has.
func rawSession(t *testing.T, tok *hsmtest.Token) (*pkcs11.Ctx, uint, pkcs11.SessionHandle) {
	t.Helper()
	path, err := (hsm.Config{}).ResolveModule()
	if err != nil {
		t.Fatal(err)
	}
	p := pkcs11.New(path)
	if err := p.Initialize(); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		t.Fatal(err)
	}
	t.Cleanup(p.Destroy)
	slots, err := p.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range slots {
		ti, err := p.GetTokenInfo(s)
		if err == nil && strings.TrimRight(ti.Label, " ") == tok.Label {
			sess, err := p.OpenSession(s, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
			if err != nil {
				t.Fatal(err)
			}
			return p, s, sess
		}
	}
	t.Fatalf("token %s not found", tok.Label)
	return nil, 0, 0
}

func findPrivate(t *testing.T, p *pkcs11.Ctx, s pkcs11.SessionHandle, label string) pkcs11.ObjectHandle {
	t.Helper()
	if err := p.FindObjectsInit(s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}); err != nil {
		t.Fatal(err)
	}
	hs, _, err := p.FindObjects(s, 2)
	_ = p.FindObjectsFinal(s)
	if err != nil || len(hs) != 1 {
		t.Fatalf("find %s: %v, %d objects", label, err, len(hs))
	}
	return hs[0]
}

func TestKeyAttributesReadBackIndependently(t *testing.T) {
	tok := hsmtest.NewToken(t)
	m := tok.Open(t)
	keys := hsmtest.Keys(t, m)

	p, _, s := rawSession(t, tok)
	// The raw session shares the application's login from the module.
	for purpose, k := range keys {
		t.Run(string(purpose), func(t *testing.T) {
			h := findPrivate(t, p, s, k.Label())
			want := map[uint]bool{
				pkcs11.CKA_TOKEN:             true,
				pkcs11.CKA_PRIVATE:           true,
				pkcs11.CKA_SENSITIVE:         true,
				pkcs11.CKA_ALWAYS_SENSITIVE:  true,
				pkcs11.CKA_EXTRACTABLE:       false,
				pkcs11.CKA_NEVER_EXTRACTABLE: true,
				pkcs11.CKA_SIGN:              true,
				pkcs11.CKA_DECRYPT:           false,
				pkcs11.CKA_UNWRAP:            false,
				pkcs11.CKA_DERIVE:            false,
				pkcs11.CKA_SIGN_RECOVER:      false,
				pkcs11.CKA_MODIFIABLE:        false,
				pkcs11.CKA_DESTROYABLE:       purpose != hsm.PurposeAudit && purpose != hsm.PurposeCheckpoint,
			}
			for typ, v := range want {
				attrs, err := p.GetAttributeValue(s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(typ, nil)})
				if err != nil {
					t.Fatalf("attribute 0x%x: %v", typ, err)
				}
				got := len(attrs[0].Value) == 1 && attrs[0].Value[0] != 0
				if got != v {
					t.Errorf("attribute 0x%x = %t, want %t", typ, got, v)
				}
			}
			attrs, err := p.GetAttributeValue(s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ALLOWED_MECHANISMS, nil)})
			if err != nil {
				t.Fatal(err)
			}
			wantMech := uint(pkcs11.CKM_ECDSA)
			if purpose == hsm.PurposeCheckpoint {
				wantMech = 0x1057
			}
			if got := attrs[0].Value; len(got) != 8 || got[0] != byte(wantMech) || got[1] != byte(wantMech>>8) {
				t.Errorf("allowed mechanisms = %x, want only 0x%x", got, wantMech)
			}
			// The private value must never come out.
			_, err = p.GetAttributeValue(s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
			if !errors.Is(err, pkcs11.Error(pkcs11.CKR_ATTRIBUTE_SENSITIVE)) {
				t.Errorf("reading CKA_VALUE: got %v, want CKR_ATTRIBUTE_SENSITIVE", err)
			}
			// Nor may anyone relax the key later.
			err = p.SetAttributeValue(s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true)})
			if err == nil {
				t.Error("setting CKA_EXTRACTABLE on a non-modifiable key succeeded")
			}
			// And the key signs with its one mechanism only.
			other := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA_SHA256, nil)}
			if purpose == hsm.PurposeCheckpoint {
				other = []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}
			}
			if err := p.SignInit(s, other, h); err == nil {
				t.Error("SignInit with a mechanism outside CKA_ALLOWED_MECHANISMS succeeded")
			}
			// Audit and checkpoint keys cannot be destroyed.
			if purpose == hsm.PurposeAudit || purpose == hsm.PurposeCheckpoint {
				if err := p.DestroyObject(s, h); err == nil {
					t.Error("destroying a log key succeeded")
				}
			}
		})
	}
}

func TestSignVerifyBothAlgorithms(t *testing.T) {
	tok := hsmtest.NewToken(t)
	m := tok.Open(t)
	keys := hsmtest.Keys(t, m)
	ctx := context.Background()
	msg := []byte("break glass in case of an emergency")

	for _, p := range []hsm.Purpose{hsm.PurposeToken, hsm.PurposeAudit} {
		k := keys[p]
		d := sha256.Sum256(msg)
		sig, err := k.Sign(nil, d[:], crypto.SHA256)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if !ecdsa.VerifyASN1(k.Public().(*ecdsa.PublicKey), d[:], sig) {
			t.Errorf("%s: signature does not verify with crypto/ecdsa", p)
		}
		if ecdsa.VerifyASN1(k.Public().(*ecdsa.PublicKey), d[:], append(sig[:len(sig)-1:len(sig)-1], sig[len(sig)-1]^1)) {
			t.Errorf("%s: altered signature verifies", p)
		}
		if _, err := k.Sign(nil, msg, crypto.SHA256); err == nil {
			t.Errorf("%s: signing a non-digest succeeded", p)
		}
	}
	ed := keys[hsm.PurposeCheckpoint]
	sig, err := ed.SignContext(ctx, msg, crypto.Hash(0))
	if err != nil {
		t.Fatal(err)
	}
	if !ed25519.Verify(ed.Public().(ed25519.PublicKey), msg, sig) {
		t.Error("Ed25519 signature does not verify with crypto/ed25519")
	}
	if ed25519.Verify(ed.Public().(ed25519.PublicKey), append(msg, '!'), sig) {
		t.Error("Ed25519 signature verifies over another message")
	}
	if _, err := ed.SignContext(ctx, msg, crypto.SHA256); err == nil {
		t.Error("Ed25519 signing with a hash option succeeded")
	}
	st := m.Stats()
	if st.Signatures[hsm.PurposeToken] != 1 || st.Signatures[hsm.PurposeAudit] != 1 || st.Signatures[hsm.PurposeCheckpoint] != 1 {
		t.Errorf("signature counts = %v, want one per purpose", st.Signatures)
	}
}

func TestFindByLabelOrID(t *testing.T) {
	tok := hsmtest.NewToken(t)
	m := tok.Open(t)
	keys := hsmtest.Keys(t, m)
	ctx := context.Background()
	for p, k := range keys {
		byID, err := m.SignerByID(ctx, k.Info().ID, p)
		if err != nil {
			t.Fatalf("%s by ID: %v", p, err)
		}
		if byID.Label() != k.Label() || !byID.Info().Public.(interface{ Equal(crypto.PublicKey) bool }).Equal(k.Public()) {
			t.Errorf("%s: by ID found %s", p, byID.Label())
		}
		sig, err := byID.SignMessage(ctx, []byte("by id"))
		if err != nil || !k.Verify([]byte("by id"), sig) {
			t.Errorf("%s: signing by ID: %v", p, err)
		}
	}
	if _, err := m.SignerByID(ctx, []byte{0xde, 0xad}, hsm.PurposeToken); !errors.Is(err, hsm.ErrKeyNotFound) {
		t.Errorf("unknown ID: %v", err)
	}
}

func TestConcurrentSigning(t *testing.T) {
	tok := hsmtest.NewToken(t)
	m := tok.Open(t)
	keys := hsmtest.Keys(t, m)
	const workers, each = 32, 20
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k := keys[hsm.Purposes[i%3]]
			for j := range each {
				msg := fmt.Appendf(nil, "worker %d message %d", i, j)
				sig, err := k.SignMessage(context.Background(), msg)
				if err != nil {
					errs <- err
					return
				}
				if !k.Verify(msg, sig) {
					errs <- fmt.Errorf("worker %d: bad signature", i)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := m.Stats().TotalSignatures(); got != workers*each {
		t.Errorf("counted %d signatures, want %d", got, workers*each)
	}
}

// The sessions are closed underneath the broker by another handle in the
// same process: the next signature reopens and succeeds.
func TestRecoversAfterSessionsClosedUnderneath(t *testing.T) {
	tok := hsmtest.NewToken(t)
	m := tok.Open(t)
	keys := hsmtest.Keys(t, m)
	ctx := context.Background()
	for _, k := range keys {
		if _, err := k.SignMessage(ctx, []byte("warm")); err != nil {
			t.Fatal(err)
		}
	}
	p, slot, _ := rawSession(t, tok)
	if err := p.CloseAllSessions(slot); err != nil {
		t.Fatal(err)
	}
	for _, purpose := range hsm.Purposes {
		k := keys[purpose]
		sig, err := k.SignMessage(ctx, []byte("after"))
		if err != nil {
			t.Fatalf("%s after C_CloseAllSessions: %v", purpose, err)
		}
		if !k.Verify([]byte("after"), sig) {
			t.Fatalf("%s: bad signature after reopen", purpose)
		}
	}
	if got := m.Stats().Reopens; got != 1 {
		t.Errorf("reopens = %d, want 1", got)
	}
	if err := hsm.Healthy(m.Check(ctx, keys[hsm.PurposeToken], keys[hsm.PurposeAudit], keys[hsm.PurposeCheckpoint])); err != nil {
		t.Error(err)
	}
}

// The library is finalized underneath (CKR_CRYPTOKI_NOT_INITIALIZED): the
// module initializes it again and carries on.
func TestRecoversAfterFinalizeUnderneath(t *testing.T) {
	tok := hsmtest.NewToken(t)
	m := tok.Open(t)
	keys := hsmtest.Keys(t, m)
	ctx := context.Background()
	p, _, _ := rawSession(t, tok)
	if err := p.Finalize(); err != nil {
		t.Fatal(err)
	}
	k := keys[hsm.PurposeAudit]
	sig, err := k.SignMessage(ctx, []byte("after finalize"))
	if err != nil {
		t.Fatalf("after C_Finalize: %v", err)
	}
	if !k.Verify([]byte("after finalize"), sig) {
		t.Fatal("bad signature")
	}
	if _, err := keys[hsm.PurposeCheckpoint].SignMessage(ctx, []byte("x")); err != nil {
		t.Fatal(err)
	}
}

// A key replaced under its label is refused, not silently used.
func TestReplacedKeyIsRefused(t *testing.T) {
	tok := hsmtest.NewToken(t)
	m := tok.Open(t)
	ctx := context.Background()
	if _, err := m.GenerateKey(ctx, hsm.GenerateRequest{Purpose: hsm.PurposeToken, Label: "tk", ID: []byte{1}}); err != nil {
		t.Fatal(err)
	}
	k, err := m.Signer(ctx, "tk", hsm.PurposeToken)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.SignMessage(ctx, []byte("x")); err != nil {
		t.Fatal(err)
	}
	// Destroy it (token keys are destroyable) and make another with the
	// same label and ID from outside.
	p, _, s := rawSession(t, tok)
	h := findPrivate(t, p, s, "tk")
	if err := p.DestroyObject(s, h); err != nil {
		t.Fatal(err)
	}
	if _, err := m.GenerateKey(ctx, hsm.GenerateRequest{Purpose: hsm.PurposeToken, Label: "tk", ID: []byte{1}}); err == nil {
		// The public half still exists, so the label is taken; remove it too.
		t.Fatal("label reuse while the public key remains was allowed")
	}
	if err := p.FindObjectsInit(s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, "tk")}); err != nil {
		t.Fatal(err)
	}
	hs, _, _ := p.FindObjects(s, 10)
	_ = p.FindObjectsFinal(s)
	for _, h := range hs {
		_ = p.DestroyObject(s, h)
	}
	if _, err := m.GenerateKey(ctx, hsm.GenerateRequest{Purpose: hsm.PurposeToken, Label: "tk", ID: []byte{1}}); err != nil {
		t.Fatal(err)
	}
	_, err = k.SignMessage(ctx, []byte("x"))
	if err == nil || !errors.Is(err, hsm.ErrUnavailable) || !strings.Contains(err.Error(), "no longer the key") {
		t.Fatalf("signing with a replaced key: %v", err)
	}
}

func TestErrorsPeopleCanActOn(t *testing.T) {
	tok := hsmtest.NewToken(t)
	// PKCS#11 login is per process and token: a second login while one is
	// active succeeds whatever the PIN. The wrong-PIN case therefore uses a
	// token nobody in this process has opened.
	unopened := hsmtest.NewToken(t)
	m := tok.Open(t)
	keys := hsmtest.Keys(t, m)
	ctx := context.Background()
	dir := t.TempDir()
	loose := filepath.Join(dir, "loose-pin")
	if err := os.WriteFile(loose, []byte(tok.PIN), 0o644); err != nil {
		t.Fatal(err)
	}
	wrong := filepath.Join(dir, "wrong-pin")
	if err := os.WriteFile(wrong, []byte("not-the-pin"), 0o600); err != nil {
		t.Fatal(err)
	}
	open := func(c hsm.Config) error {
		m, err := hsm.Open(ctx, c, nil)
		if err == nil {
			m.Close()
		}
		return err
	}
	tests := []struct {
		name    string
		err     func() error
		is      error
		mention []string
		never   []string
	}{
		{"module not found", func() error {
			return open(hsm.Config{Module: "/nonexistent/libp11.so", TokenLabel: tok.Label, PINFile: tok.Config.PINFile})
		},
			hsm.ErrModuleNotFound, []string{"/nonexistent/libp11.so", "apt-get install -y softhsm2"}, nil},
		{"token not found", func() error { return open(hsm.Config{TokenLabel: "no-such-token", PINFile: tok.Config.PINFile}) },
			hsm.ErrTokenNotFound, []string{`"no-such-token"`, tok.Label}, nil},
		{"wrong PIN", func() error { return open(hsm.Config{TokenLabel: unopened.Label, PINFile: wrong}) },
			hsm.ErrPINIncorrect, []string{"CKR_PIN_INCORRECT"}, []string{"not-the-pin"}},
		{"loose PIN file", func() error { return open(hsm.Config{TokenLabel: tok.Label, PINFile: loose}) },
			hsm.ErrPINSource, []string{"chmod 600", "0644"}, []string{tok.PIN}},
		{"missing PIN variable", func() error { return open(hsm.Config{TokenLabel: tok.Label, PINEnv: "BG_TEST_UNSET_PIN"}) },
			hsm.ErrPINSource, []string{"$BG_TEST_UNSET_PIN"}, nil},
		{"no token selected", func() error { return open(hsm.Config{PINFile: tok.Config.PINFile}) },
			nil, []string{"token_label"}, nil},
		{"key not found", func() error { _, err := m.Signer(ctx, "nope", hsm.PurposeToken); return err },
			hsm.ErrKeyNotFound, []string{`"nope"`, "token-key", "audit-key"}, nil},
		{"label collision", func() error {
			_, err := m.GenerateKey(ctx, hsm.GenerateRequest{Purpose: hsm.PurposeAudit, Label: "token-key"})
			return err
		}, hsm.ErrKeyExists, []string{`"token-key"`}, nil},
		{"ID collision", func() error {
			_, err := m.GenerateKey(ctx, hsm.GenerateRequest{Purpose: hsm.PurposeAudit, Label: "fresh", ID: keys[hsm.PurposeToken].Info().ID})
			return err
		}, hsm.ErrKeyExists, []string{keys[hsm.PurposeToken].Info().IDHex()}, nil},
		{"purpose mismatch", func() error { _, err := m.Signer(ctx, "token-key", hsm.PurposeAudit); return err },
			hsm.ErrPurposeMismatch, []string{`"token"`, `"audit"`}, nil},
		{"algorithm mismatch", func() error { _, err := m.Signer(ctx, "checkpoint-key", hsm.PurposeToken); return err },
			hsm.ErrPurposeMismatch, []string{"checkpoint"}, nil},
		{"bad label", func() error {
			_, err := m.GenerateKey(ctx, hsm.GenerateRequest{Purpose: hsm.PurposeToken, Label: "bad label\n"})
			return err
		}, nil, []string{"label"}, nil},
		{"unknown purpose", func() error {
			_, err := m.GenerateKey(ctx, hsm.GenerateRequest{Purpose: "root", Label: "x"})
			return err
		}, nil, []string{"token, audit, checkpoint"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.err()
			if err == nil {
				t.Fatal("no error")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %q is not %v", err, tc.is)
			}
			for _, s := range tc.mention {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
			for _, s := range append(tc.never, tok.PIN, tok.SOPIN) {
				if strings.Contains(err.Error(), s) {
					t.Errorf("error %q leaks %q", err, s)
				}
			}
		})
	}
}

func TestExports(t *testing.T) {
	tok := hsmtest.NewToken(t)
	m := tok.Open(t)
	keys := hsmtest.Keys(t, m)
	ctx := context.Background()

	for p, k := range keys {
		b, err := keyid.PublicPEM(k.Public())
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(b)
		if block == nil || block.Type != "PUBLIC KEY" {
			t.Fatalf("%s: not a PUBLIC KEY PEM: %s", p, b)
		}
		pub, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if !pub.(interface{ Equal(crypto.PublicKey) bool }).Equal(k.Public()) {
			t.Errorf("%s: PEM holds another key", p)
		}
	}

	// RFC 7638 §3: SHA-256 over the required members in lexicographic order,
	// computed here by hand rather than with the library the code uses.
	ec := keys[hsm.PurposeToken].Public().(*ecdsa.PublicKey)
	point, err := ec.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	bx, by := point[1:33], point[33:]
	canon := fmt.Sprintf(`{"crv":"P-256","kty":"EC","x":%q,"y":%q}`, base64.RawURLEncoding.EncodeToString(bx), base64.RawURLEncoding.EncodeToString(by))
	sum := sha256.Sum256([]byte(canon))
	wantKID := base64.RawURLEncoding.EncodeToString(sum[:])
	jwk, err := keyid.JWK(ec)
	if err != nil {
		t.Fatal(err)
	}
	if jwk.KeyID != wantKID {
		t.Errorf("kid = %s, want RFC 7638 thumbprint %s", jwk.KeyID, wantKID)
	}
	js, _ := json.Marshal(jwk)
	if !strings.Contains(string(js), `"alg":"ES256"`) || strings.Contains(string(js), `"d"`) {
		t.Errorf("JWK JSON %s", js)
	}

	// A note signed through the HSM opens with the printed verifier key.
	ed := keys[hsm.PurposeCheckpoint]
	vkey, err := hsm.NoteVerifierKey("example.org/breakglass", ed.Public())
	if err != nil {
		t.Fatal(err)
	}
	signer, err := hsm.NewNoteSigner(ctx, ed, "example.org/breakglass")
	if err != nil {
		t.Fatal(err)
	}
	msg, err := note.Sign(&note.Note{Text: "example.org/breakglass\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"}, signer)
	if err != nil {
		t.Fatal(err)
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	n, err := note.Open(msg, note.VerifierList(v))
	if err != nil {
		t.Fatalf("note.Open: %v\n%s", err, msg)
	}
	if len(n.Sigs) != 1 || n.Sigs[0].Name != "example.org/breakglass" {
		t.Errorf("sigs = %+v", n.Sigs)
	}
	if _, err := hsm.NoteVerifierKey("x", ec); err == nil {
		t.Error("note key from an ECDSA key")
	}
}

func TestHealthCheck(t *testing.T) {
	tok := hsmtest.NewToken(t)
	m := tok.Open(t)
	keys := hsmtest.Keys(t, m)
	res := m.Check(context.Background(), keys[hsm.PurposeToken], keys[hsm.PurposeAudit], keys[hsm.PurposeCheckpoint])
	if len(res) != 3 {
		t.Fatalf("%d results", len(res))
	}
	if err := hsm.Healthy(res); err != nil {
		t.Fatal(err)
	}
	m.Close()
	res = m.Check(context.Background(), keys[hsm.PurposeToken])
	if res[0].OK || !strings.Contains(res[0].Error, "closed") {
		t.Errorf("check after close: %+v", res[0])
	}
}
