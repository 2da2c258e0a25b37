// Package hsmtest creates real SoftHSM2 tokens for tests. Each test binary
// gets its own token directory (SoftHSM2 reads SOFTHSM2_CONF once per
// process), and each test its own token in it.
package hsmtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"go.uber.org/goleak"
	"os"
	"path/filepath"
	"testing"

	"github.com/bgbroker/breakglass/hsm"
)

// Main prepares a SoftHSM2 token directory for the test binary and runs the
// tests. Call it from TestMain before anything loads the PKCS#11 module.
func Main(m *testing.M) int {
	dir, err := os.MkdirTemp("", "breakglass-softhsm-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	conf, err := hsm.WriteSoftHSMConfig(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	os.Setenv("SOFTHSM2_CONF", conf)
	if _, err := (hsm.Config{}).ResolveModule(); err != nil {
		if os.Getenv("CI") != "" {
			fmt.Fprintln(os.Stderr, "SoftHSM2 is required in CI:", err)
			return 1
		}
		fmt.Fprintln(os.Stderr, "skipping: SoftHSM2 is not installed:", err)
		return 0
	}
	code := m.Run()
	if code == 0 {
		// Every goroutine a test started (signing, reopening, background
		// loops) must have ended with the test's cleanup.
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines leaked:", err)
			return 1
		}
	}
	return code
}

// Token is a fresh token with its configuration.
type Token struct {
	Label  string
	PIN    string
	SOPIN  string
	Config hsm.Config
}

// NewToken initializes a token with a random label and writes its PIN to a
// 0600 file.
func NewToken(t testing.TB) *Token {
	t.Helper()
	if os.Getenv("SOFTHSM2_CONF") == "" {
		t.Fatal("hsmtest: call hsmtest.Main from TestMain")
	}
	tok := &Token{Label: "test-" + randHex(6), PIN: randHex(8), SOPIN: randHex(8)}
	if err := hsm.InitToken("", tok.Label, tok.SOPIN, tok.PIN); err != nil {
		t.Fatalf("hsmtest: %v", err)
	}
	pinFile := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(pinFile, []byte(tok.PIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tok.Config = hsm.Config{TokenLabel: tok.Label, PINFile: pinFile}
	return tok
}

// Open opens the token and closes it when the test ends.
func (tok *Token) Open(t testing.TB) *hsm.Module {
	t.Helper()
	m, err := hsm.Open(context.Background(), tok.Config, nil)
	if err != nil {
		t.Fatalf("hsmtest: open: %v", err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

// Keys generates one key per purpose, labelled PURPOSE-key, and returns
// their signers.
func Keys(t testing.TB, m *hsm.Module) map[hsm.Purpose]*hsm.Key {
	t.Helper()
	out := map[hsm.Purpose]*hsm.Key{}
	for _, p := range hsm.Purposes {
		label := string(p) + "-key"
		if _, err := m.GenerateKey(context.Background(), hsm.GenerateRequest{Purpose: p, Label: label}); err != nil {
			t.Fatalf("hsmtest: keygen %s: %v", p, err)
		}
		k, err := m.Signer(context.Background(), label, p)
		if err != nil {
			t.Fatalf("hsmtest: signer %s: %v", p, err)
		}
		out[p] = k
	}
	return out
}

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
