package passkey_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/bgbroker/breakglass/format/passkey"
	"github.com/bgbroker/breakglass/format/passkey/passkeytest"
)

const (
	logOrigin = "breakglass.test/passkey"
	rpID      = "console.example"
	webOrigin = "https://console.example:7445"
)

var at = time.Date(2026, 11, 29, 12, 53, 0, 0, time.UTC)

func authenticator(t *testing.T) *passkeytest.Authenticator {
	t.Helper()
	a, err := passkeytest.New(rpID, webOrigin)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func binding(t *testing.T, a *passkeytest.Authenticator) passkey.Binding {
	t.Helper()
	b := a.Binding(logOrigin, "bob")
	b.Time = at
	return b
}

func TestBindingRoundTrip(t *testing.T) {
	b := binding(t, authenticator(t))
	text := b.Marshal()
	got, err := passkey.ParseBinding(text)
	if err != nil {
		t.Fatalf("%s: %v", text, err)
	}
	if !bytes.Equal(got.Marshal(), text) || got.Principal != "bob" || !bytes.Equal(got.Key, b.Key) || !got.Time.Equal(at) {
		t.Fatalf("round trip changed the binding: %+v", got)
	}
	if err := passkey.CheckBinding(got, logOrigin, "bob", at.Add(5*time.Minute)); err != nil {
		t.Fatalf("at the skew limit: %v", err)
	}
}

func TestParseBindingRefuses(t *testing.T) {
	good := string(binding(t, authenticator(t)).Marshal())
	line := func(n int) string { return strings.Split(good, "\n")[n] }
	swap := func(from, to string) string { return strings.Replace(good, from, to, 1) }
	_, edPriv, _ := ed25519.GenerateKey(rand.Reader)
	ed := &passkeytest.Authenticator{ID: []byte("id"), Key: edPriv, RPID: rpID, Origin: webOrigin}
	cases := map[string]string{
		"empty":                "",
		"crlf":                 strings.ReplaceAll(good, "\n", "\r\n"),
		"no final newline":     strings.TrimSuffix(good, "\n"),
		"other context":        swap(passkey.BindingContext, "breakglass passkey binding v2"),
		"review context":       swap(passkey.BindingContext, "breakglass review statement v1"),
		"lines swapped":        swap(line(1)+"\n"+line(2), line(2)+"\n"+line(1)),
		"extra line":           good + "extra x\n",
		"padded credential":    swap(line(3), line(3)+"="),
		"std base64 id":        swap(line(3), "credential "+base64.StdEncoding.EncodeToString([]byte{0xfb, 0xff})),
		"key not base64":       swap(line(4), "key !!!"),
		"key not COSE":         swap(line(4), "key "+base64.StdEncoding.EncodeToString([]byte("not a key"))),
		"rp id is an IP":       swap(line(5), "rp_id 127.0.0.1"),
		"rp id upper case":     swap(line(5), "rp_id Console.example"),
		"origin http":          swap(line(6), "web_origin http://console.example:7445"),
		"origin other host":    swap(line(6), "web_origin https://evil.example:7445"),
		"origin suffix trick":  swap(line(6), "web_origin https://evilconsole.example"),
		"origin with path":     swap(line(6), "web_origin https://console.example:7445/"),
		"origin default port":  swap(line(6), "web_origin https://console.example:443"),
		"origin leading zero":  swap(line(6), "web_origin https://console.example:07445"),
		"time with fraction":   swap(line(7), "time 2026-11-29T12:53:00.5Z"),
		"time with offset":     swap(line(7), "time 2026-11-29T13:53:00+01:00"),
		"principal with space": swap(line(2), "principal bob smith"),
		"double space":         swap(line(2), "principal  bob"),
		"oversize":             good + strings.Repeat("x", passkey.MaxBindingBytes),
	}
	for name, text := range cases {
		if _, err := passkey.ParseBinding([]byte(text)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	edBinding := ed.Binding(logOrigin, "bob")
	edBinding.Time = at
	if _, err := passkey.ParseBinding(edBinding.Marshal()); err != nil {
		t.Errorf("an Ed25519 passkey: %v", err)
	}
}

func TestCheckBinding(t *testing.T) {
	b := binding(t, authenticator(t))
	for _, c := range []struct {
		name, origin, signer string
		at                   time.Time
		reason               string
	}{
		{"other log", "other/log", "bob", at, passkey.ReasonLog},
		{"signed by someone else", logOrigin, "mallory", at, passkey.ReasonSigner},
		{"too old", logOrigin, "bob", at.Add(5*time.Minute + time.Second), passkey.ReasonTime},
		{"from the future", logOrigin, "bob", at.Add(-5*time.Minute - time.Second), passkey.ReasonTime},
	} {
		if r := passkey.ReasonOf(passkey.CheckBinding(b, c.origin, c.signer, c.at)); r != c.reason {
			t.Errorf("%s: reason %q, want %q", c.name, r, c.reason)
		}
	}
}

func TestVerifyAssertion(t *testing.T) {
	a := authenticator(t)
	b := binding(t, a)
	stmt := []byte("breakglass review statement v1\ntype approve\n")
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	zero := uint32(0)
	v, err := passkey.VerifyAssertion(b, stmt, a.Assert(stmt, passkeytest.Options{}))
	if err != nil {
		t.Fatal(err)
	}
	if v.Counter != 1 || v.Flags&(passkeytest.FlagUP|passkeytest.FlagUV) != passkeytest.FlagUP|passkeytest.FlagUV {
		t.Fatalf("verified %+v", v)
	}
	if _, err := passkey.VerifyAssertion(b, stmt, a.Assert(stmt, passkeytest.Options{Counter: &zero})); err != nil {
		t.Fatalf("a counter of zero is not the verifier's business: %v", err)
	}
	cases := []struct {
		name   string
		o      passkeytest.Options
		edit   func(*passkey.Assertion)
		reason string
	}{
		{"registration, not assertion", passkeytest.Options{Type: "webauthn.create"}, nil, passkey.ReasonType},
		{"another statement", passkeytest.Options{Challenge: passkey.Challenge([]byte("other"))}, nil, passkey.ReasonChallenge},
		{"wrong origin", passkeytest.Options{Origin: "https://evil.example"}, nil, passkey.ReasonOrigin},
		{"subdomain origin", passkeytest.Options{Origin: "https://a.console.example:7445"}, nil, passkey.ReasonOrigin},
		{"in a cross-origin frame", passkeytest.Options{CrossOrigin: true}, nil, passkey.ReasonCrossOrigin},
		{"other relying party", passkeytest.Options{RPID: "evil.example"}, nil, passkey.ReasonRPID},
		{"no user presence", passkeytest.Options{Flags: passkeytest.FlagUV}, nil, passkey.ReasonUserPresence},
		{"no user verification", passkeytest.Options{Flags: passkeytest.FlagUP}, nil, passkey.ReasonVerification},
		{"another key", passkeytest.Options{Signer: other}, nil, passkey.ReasonSignature},
		{"other credential", passkeytest.Options{}, func(x *passkey.Assertion) { x.Credential = []byte("someone else") }, passkey.ReasonCredential},
		{"flags changed after signing", passkeytest.Options{Flags: passkeytest.FlagUP}, func(x *passkey.Assertion) { x.AuthenticatorData[32] |= passkeytest.FlagUV }, passkey.ReasonSignature},
		{"client data changed after signing", passkeytest.Options{}, func(x *passkey.Assertion) {
			x.ClientDataJSON = bytes.Replace(x.ClientDataJSON, []byte(`"crossOrigin":false`), []byte(`"crossOrigin":false `), 1)
		}, passkey.ReasonSignature},
		{"duplicate type", passkeytest.Options{}, func(x *passkey.Assertion) {
			x.ClientDataJSON = bytes.Replace(x.ClientDataJSON, []byte(`{`), []byte(`{"type":"webauthn.create",`), 1)
		}, passkey.ReasonMalformed},
		{"case-variant type", passkeytest.Options{Type: "webauthn.create"}, func(x *passkey.Assertion) {
			x.ClientDataJSON = bytes.Replace(x.ClientDataJSON, []byte(`{`), []byte(`{"Type":"webauthn.get",`), 1)
		}, passkey.ReasonMalformed},
		{"client data not JSON", passkeytest.Options{}, func(x *passkey.Assertion) { x.ClientDataJSON = []byte("{") }, passkey.ReasonMalformed},
		{"short authenticator data", passkeytest.Options{}, func(x *passkey.Assertion) { x.AuthenticatorData = x.AuthenticatorData[:20] }, passkey.ReasonMalformed},
		{"attested data in an assertion", passkeytest.Options{Flags: passkeytest.FlagUP | passkeytest.FlagUV | passkeytest.FlagAT}, nil, passkey.ReasonMalformed},
		{"no signature", passkeytest.Options{}, func(x *passkey.Assertion) { x.Signature = nil }, passkey.ReasonMalformed},
		{"raw r||s signature", passkeytest.Options{}, func(x *passkey.Assertion) { x.Signature = make([]byte, 64) }, passkey.ReasonSignature},
	}
	for _, c := range cases {
		x := a.Assert(stmt, c.o)
		if c.edit != nil {
			c.edit(&x)
		}
		_, err := passkey.VerifyAssertion(b, stmt, x)
		if r := passkey.ReasonOf(err); r != c.reason {
			t.Errorf("%s: reason %q (%v), want %q", c.name, r, err, c.reason)
		}
	}
}

func TestCounterAdvances(t *testing.T) {
	for _, c := range []struct {
		last, next uint32
		ok         bool
	}{{0, 0, true}, {0, 1, true}, {1, 2, true}, {5, 5, false}, {5, 4, false}, {5, 0, false}} {
		if got := passkey.CounterAdvances(c.last, c.next); got != c.ok {
			t.Errorf("%d then %d: %v", c.last, c.next, got)
		}
	}
}

func TestDecodeID(t *testing.T) {
	for _, bad := range []string{"", "a=", "a+b", "a/b", "ab c", strings.Repeat("A", 1400)} {
		if _, err := passkey.DecodeID(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if b, err := passkey.DecodeID("AQID"); err != nil || !bytes.Equal(b, []byte{1, 2, 3}) {
		t.Errorf("AQID: %v %v", b, err)
	}
}

func FuzzParseBinding(f *testing.F) {
	a, _ := passkeytest.New(rpID, webOrigin)
	b := a.Binding(logOrigin, "bob")
	b.Time = at
	f.Add(b.Marshal())
	f.Fuzz(func(t *testing.T, text []byte) {
		got, err := passkey.ParseBinding(text)
		if err == nil && !bytes.Equal(got.Marshal(), text) {
			t.Fatalf("accepted a non-canonical binding %q", text)
		}
	})
}

func FuzzVerifyAssertion(f *testing.F) {
	a, _ := passkeytest.New(rpID, webOrigin)
	b := a.Binding(logOrigin, "bob")
	stmt := []byte("statement")
	x := a.Assert(stmt, passkeytest.Options{})
	f.Add(x.AuthenticatorData, x.ClientDataJSON, x.Signature)
	f.Fuzz(func(t *testing.T, ad, cd, sig []byte) {
		y := passkey.Assertion{Credential: a.ID, AuthenticatorData: ad, ClientDataJSON: cd, Signature: sig}
		if _, err := passkey.VerifyAssertion(b, stmt, y); err == nil && !bytes.Equal(sig, x.Signature) {
			t.Fatalf("accepted a signature the authenticator did not make")
		}
	})
}
