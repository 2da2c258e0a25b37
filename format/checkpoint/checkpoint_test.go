package checkpoint

import (
	"bytes"
	"crypto/rand"
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/note"
)

func TestOpenRoundTrip(t *testing.T) {
	skey, vkey, err := note.GenerateKey(rand.Reader, "example.org/breakglass")
	if err != nil {
		t.Fatal(err)
	}
	s, _ := note.NewSigner(skey)
	v, _ := note.NewVerifier(vkey)
	root := bytes.Repeat([]byte{7}, 32)
	signed, err := note.Sign(&note.Note{Text: string(Body("example.org/breakglass", 42, root))}, s)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := Open(signed, "example.org/breakglass", v)
	if err != nil {
		t.Fatal(err)
	}
	if cp.Size != 42 || !bytes.Equal(cp.Hash, root) {
		t.Fatalf("opened %d %x", cp.Size, cp.Hash)
	}
	for name, b := range map[string][]byte{
		"empty":         nil,
		"other origin":  mustSign(t, s, Body("example.org/other", 1, root)),
		"short root":    mustSign(t, s, Body("example.org/breakglass", 1, root[:16])),
		"tampered size": []byte(strings.Replace(string(signed), "\n42\n", "\n43\n", 1)),
	} {
		if _, err := Open(b, "example.org/breakglass", v); err == nil {
			t.Errorf("%s: opened", name)
		}
	}
}

func mustSign(t *testing.T, s note.Signer, body []byte) []byte {
	b, err := note.Sign(&note.Note{Text: string(body)}, s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestValidOrigin(t *testing.T) {
	for s, want := range map[string]bool{"example.org/breakglass": true, "": false, "a b": false, "a+b": false, "-x": false} {
		if ValidOrigin(s) != want {
			t.Errorf("ValidOrigin(%q) = %t", s, !want)
		}
	}
}
