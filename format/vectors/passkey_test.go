package vectors

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/bgbroker/breakglass/format/passkey"
	"github.com/bgbroker/breakglass/format/passkey/passkeytest"
	"github.com/bgbroker/breakglass/format/principal"
	"github.com/bgbroker/breakglass/format/statement"
)

// The relying party of the passkey vectors.
const (
	rpID      = "console.breakglass.test"
	webOrigin = "https://console.breakglass.test:7445"
)

// passkeyKeys are the published test passkeys: credential keys of bob and
// erin, added to keys.json beside the others.
var passkeyKeys = []struct{ name, typ string }{{"bob-passkey", "ecdsa-p256"}, {"erin-passkey", "ed25519"}}

// ensurePasskeys adds the passkey keys to a key file made before they
// existed (only with -update; without it a missing key fails).
func ensurePasskeys(t *testing.T, kf *keyFile) {
	t.Helper()
	for _, pk := range passkeyKeys {
		if kf.has(pk.name) {
			continue
		}
		if !*update {
			t.Fatalf("keys.json has no %s (go test ./format/vectors -update adds it)", pk.name)
		}
		var priv crypto.Signer
		switch pk.typ {
		case "ecdsa-p256":
			k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			priv = k
		case "ed25519":
			_, k, err := ed25519.GenerateKey(rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			priv = k
		}
		der, err := x509.MarshalPKCS8PrivateKey(priv)
		if err != nil {
			t.Fatal(err)
		}
		kf.Keys = append(kf.Keys, &testKey{Name: pk.name, Type: pk.typ, signer: priv,
			Use:           "a passkey (WebAuthn credential) key: signs assertions (authenticatorData || SHA-256(clientDataJSON), whose challenge is the SHA-256 of a review statement)",
			PrivateKeyPEM: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))})
	}
	kf.complete(t)
}

func (kf *keyFile) has(name string) bool {
	for _, k := range kf.Keys {
		if k.Name == name {
			return true
		}
	}
	return false
}

// credentialID is a test credential's ID: fixed bytes, so that the vectors
// regenerate the same.
func credentialID(name string) []byte {
	s := sha256.Sum256([]byte("credential " + name))
	return s[:16]
}

func authenticatorFor(t *testing.T, kf *keyFile, name string) *passkeytest.Authenticator {
	t.Helper()
	return &passkeytest.Authenticator{ID: credentialID(name), Key: kf.key(t, name).signer, RPID: rpID, Origin: webOrigin}
}

// ---- bindings ----

type bindingInputs struct {
	Origin     string `json:"origin"`
	Principal  string `json:"principal"`
	Credential string `json:"credential"`
	// Key is the base64 COSE_Key of the credential.
	Key       string `json:"key"`
	RPID      string `json:"rp_id"`
	WebOrigin string `json:"web_origin"`
	Time      string `json:"time"`
}

type bindingExpect struct {
	// Certificate names the key in keys.json whose certificate is
	// presented with the signature.
	Certificate string `json:"certificate"`
	Origin      string `json:"origin"`
	Now         string `json:"now"`
}

type bindingVector struct {
	Name        string         `json:"name"`
	Description string         `json:"description"`
	Inputs      *bindingInputs `json:"inputs,omitempty"`
	Text        string         `json:"text"`
	SHA256      string         `json:"sha256"`
	// Passkey names the passkey key of keys.json the binding binds.
	Passkey string `json:"passkey"`
	// Key names the certificate key that signed the text.
	Key       string        `json:"key"`
	Signature string        `json:"signature"`
	Expect    bindingExpect `json:"expect"`
	// Verdict is accept or reject; Reason is malformed,
	// signature-encoding, signature, signer (the presented certificate
	// names someone other than the principal), log or time.
	Verdict string `json:"verdict"`
	Reason  string `json:"reason,omitempty"`
}

func bindingVectors(t *testing.T, kf *keyFile) []bindingVector {
	t.Helper()
	var out []bindingVector
	good := func(name, desc, principal, pk string) bindingVector {
		b := authenticatorFor(t, kf, pk).Binding(origin, principal)
		b.Time = signedAt
		text := b.Marshal()
		v := bindingVector{Name: name, Description: desc, Text: string(text), SHA256: hexSHA(text), Passkey: pk, Key: principal,
			Inputs: &bindingInputs{Origin: origin, Principal: principal, Credential: passkey.EncodeID(b.Credential), Key: b64(b.Key), RPID: rpID,
				WebOrigin: webOrigin, Time: signedAt.Format(time.RFC3339)},
			Signature: b64(sign(t, kf.key(t, principal), text)), Expect: bindingExpect{Certificate: principal, Origin: origin, Now: checkAt.Format(time.RFC3339)},
			Verdict: "accept"}
		out = append(out, v)
		return v
	}
	reject := func(v bindingVector, name, desc, reason string) {
		v.Name, v.Description, v.Verdict, v.Reason = name, desc, "reject", reason
		v.SHA256 = hexSHA([]byte(v.Text))
		out = append(out, v)
	}
	bob := good("bind-es256-by-ecdsa", "bob binds his ES256 passkey, signing with his ECDSA P-256 certificate key (ASN.1 DER over SHA-256 of the text)", "bob", "bob-passkey")
	good("bind-eddsa-by-ed25519", "erin binds her EdDSA (Ed25519) passkey, signing with her Ed25519 certificate key over the text itself", "erin", "erin-passkey")
	m := bob
	m.Key, m.Signature, m.Expect.Certificate = "mallory", b64(sign(t, kf.key(t, "mallory"), []byte(bob.Text))), "mallory"
	reject(m, "bound-by-someone-else", "mallory signs a binding of bob's passkey to bob with her own certificate key: a binding is signed by the principal it names", "signer")
	m = bob
	m.Signature = b64(sign(t, kf.key(t, "mallory"), []byte(bob.Text)))
	reject(m, "other-key", "mallory's signature presented with bob's certificate", "signature")
	sig, _ := base64.StdEncoding.DecodeString(bob.Signature)
	m = bob
	m.Signature = b64(p1363(t, sig))
	reject(m, "ecdsa-raw-r-s", "bob's signature as raw r||s instead of ASN.1 DER", "signature-encoding")
	m = bob
	m.Expect.Origin = "breakglass.test/other"
	reject(m, "other-log", "presented to another deployment", "log")
	m = bob
	m.Expect.Now = signedAt.Add(statement.MaxSkew + time.Second).Format(time.RFC3339)
	reject(m, "too-late", "checked five minutes and one second after its time", "time")
	malformed := func(name, desc, text string) {
		v := bob
		v.Inputs, v.Text, v.Signature = nil, text, b64(sign(t, kf.key(t, "bob"), []byte(text)))
		reject(v, name, desc, "malformed")
	}
	tx := bob.Text
	malformed("rp-id-is-ip", "an IP address as RP ID (WebAuthn RP IDs are domains)", strings.Replace(strings.Replace(tx, "rp_id "+rpID, "rp_id 127.0.0.1", 1), webOrigin, "https://127.0.0.1:7445", 1))
	malformed("origin-not-on-rp-id", "a web origin whose host is not the RP ID or under it", strings.Replace(tx, webOrigin, "https://console.evil.test:7445", 1))
	malformed("origin-http", "a web origin that is not https", strings.Replace(tx, webOrigin, "http://console.breakglass.test:7445", 1))
	id := passkey.EncodeID(credentialID("bob-passkey"))
	malformed("credential-std-base64", "the credential ID in standard base64 with padding instead of base64url", strings.Replace(tx, "credential "+id, "credential "+base64.StdEncoding.EncodeToString(credentialID("bob-passkey")), 1))
	malformed("key-not-cose", "a DER public key where the COSE_Key belongs", strings.Replace(tx, "key "+bob.Inputs.Key, "key "+b64(mustSPKI(t, kf.key(t, "bob-passkey").signer.Public())), 1))
	malformed("fractional-time", "a fraction of a second in the time", strings.Replace(tx, "12:53:00Z", "12:53:00.000Z", 1))
	return out
}

// ---- passkey reviews ----

type assertionVector struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	// Binding names the accepted binding vector whose credential must
	// have made the assertion.
	Binding string `json:"binding"`
	// Statement is the review statement (review-statement.json's grammar).
	Statement string `json:"statement"`
	// Challenge is base64url (no padding) of the statement's SHA-256:
	// what navigator.credentials.get was given and clientDataJSON says.
	Challenge         string `json:"challenge"`
	Credential        string `json:"credential"`
	AuthenticatorData string `json:"authenticator_data"`
	// ClientDataJSON is the UTF-8 text the browser made.
	ClientDataJSON string `json:"client_data_json"`
	Signature      string `json:"signature"`
	// LastCounter is the signature counter of the credential's previous
	// assertion in the log (0 for none).
	LastCounter uint32 `json:"last_counter"`
	// Verdict is accept or reject; Reason is credential, malformed,
	// client-data-type, challenge, origin, cross-origin, rp-id,
	// user-presence, user-verification, signature or counter.
	Verdict string `json:"verdict"`
	Reason  string `json:"reason,omitempty"`
}

func assertionVectors(t *testing.T, kf *keyFile) []assertionVector {
	t.Helper()
	c := baseContent()
	st := statement.Statement{Type: statement.TypeApprove, Origin: origin, Request: requestID, Content: c.Digest(),
		Comment: statement.CommentDigest("approved from the console"), Time: signedAt}
	text := st.Marshal()
	var out []assertionVector
	mk := func(name, desc, binding, pk string, stmt []byte, o passkeytest.Options, counter uint32, signer string) assertionVector {
		typ, wo, rp, flags := "webauthn.get", webOrigin, rpID, byte(passkeytest.FlagUP|passkeytest.FlagUV)
		if o.Type != "" {
			typ = o.Type
		}
		if o.Origin != "" {
			wo = o.Origin
		}
		if o.RPID != "" {
			rp = o.RPID
		}
		if o.Flags != 0 {
			flags = o.Flags
		}
		ch := passkey.Challenge(stmt)
		cd := passkeytest.ClientData(typ, ch, wo, o.CrossOrigin)
		ad := passkeytest.AuthData(rp, flags, counter)
		cdh := sha256.Sum256(cd)
		v := assertionVector{Name: name, Description: desc, Binding: binding, Statement: string(text),
			Challenge: base64.RawURLEncoding.EncodeToString(passkey.Challenge(text)), Credential: passkey.EncodeID(credentialID(pk)),
			AuthenticatorData: b64(ad), ClientDataJSON: string(cd), Signature: b64(sign(t, kf.key(t, signer), append(append([]byte{}, ad...), cdh[:]...))),
			Verdict: "accept"}
		out = append(out, v)
		return v
	}
	reject := func(v assertionVector, reason string) {
		out[len(out)-1].Verdict, out[len(out)-1].Reason = "reject", reason
	}
	good := passkeytest.Options{}
	mk("passkey-approve-es256", "bob approves with his ES256 passkey: user presence and user verification set (flags 0x05), counter 1", "bind-es256-by-ecdsa", "bob-passkey", text, good, 1, "bob-passkey")
	mk("passkey-approve-eddsa", "erin approves with her EdDSA passkey; an authenticator without a counter (0)", "bind-eddsa-by-ed25519", "erin-passkey", text, good, 0, "erin-passkey")
	v := mk("replayed", "bob's assertion again, its counter not above the last one logged for the credential", "bind-es256-by-ecdsa", "bob-passkey", text, good, 1, "bob-passkey")
	out[len(out)-1].LastCounter = 1
	reject(v, "counter")
	v = mk("no-user-verification", "user presence without user verification (flags 0x01): the approver was not verified by PIN or biometrics", "bind-es256-by-ecdsa", "bob-passkey", text, passkeytest.Options{Flags: passkeytest.FlagUP}, 2, "bob-passkey")
	reject(v, "user-verification")
	v = mk("no-user-presence", "user verification without user presence (flags 0x04)", "bind-es256-by-ecdsa", "bob-passkey", text, passkeytest.Options{Flags: passkeytest.FlagUV}, 2, "bob-passkey")
	reject(v, "user-presence")
	other := st
	other.Type = statement.TypeDeny
	v = mk("other-statement", "the assertion's challenge is the SHA-256 of another statement (a denial) than the one presented", "bind-es256-by-ecdsa", "bob-passkey", other.Marshal(), good, 2, "bob-passkey")
	reject(v, "challenge")
	v = mk("wrong-origin", "made on another origin than the bound one", "bind-es256-by-ecdsa", "bob-passkey", text, passkeytest.Options{Origin: "https://console.evil.test:7445"}, 2, "bob-passkey")
	reject(v, "origin")
	v = mk("cross-origin", "made in a frame of another origin (crossOrigin true)", "bind-es256-by-ecdsa", "bob-passkey", text, passkeytest.Options{CrossOrigin: true}, 2, "bob-passkey")
	reject(v, "cross-origin")
	v = mk("other-rp-id", "authenticator data for another relying party", "bind-es256-by-ecdsa", "bob-passkey", text, passkeytest.Options{RPID: "evil.test"}, 2, "bob-passkey")
	reject(v, "rp-id")
	v = mk("registration-type", "client data of type webauthn.create: a registration, not an assertion", "bind-es256-by-ecdsa", "bob-passkey", text, passkeytest.Options{Type: "webauthn.create"}, 2, "bob-passkey")
	reject(v, "client-data-type")
	v = mk("other-credential", "erin's passkey's assertion presented as made by bob's bound credential", "bind-es256-by-ecdsa", "erin-passkey", text, good, 2, "erin-passkey")
	reject(v, "credential")
	v = mk("other-key", "bob's credential ID, signed by another key (mallory's)", "bind-es256-by-ecdsa", "bob-passkey", text, good, 2, "mallory")
	reject(v, "signature")
	return out
}

// ---- verdicts ----

func TestPasskeyBindingVectors(t *testing.T) {
	kf := loadKeys(t)
	rule := principal.Rule{Mode: principal.ModeURI, URIPrefix: uriPrefix}
	for _, v := range read[bindingVector](t, "passkey-binding.json") {
		if v.Inputs != nil {
			tm, _ := time.Parse(time.RFC3339, v.Inputs.Time)
			id, err := passkey.DecodeID(v.Inputs.Credential)
			if err != nil {
				t.Fatal(err)
			}
			b := passkey.Binding{Origin: v.Inputs.Origin, Principal: v.Inputs.Principal, Credential: id, Key: unb64(t, v.Inputs.Key), RPID: v.Inputs.RPID,
				WebOrigin: v.Inputs.WebOrigin, Time: tm}
			if string(b.Marshal()) != v.Text {
				t.Errorf("%s: the code builds %q from the inputs", v.Name, b.Marshal())
			}
		}
		if hexSHA([]byte(v.Text)) != v.SHA256 {
			t.Errorf("%s: sha256 is not the text's", v.Name)
		}
		cert := kf.key(t, v.Expect.Certificate).cert
		reason, err := func() (string, error) {
			b, err := passkey.VerifyBinding(cert, []byte(v.Text), unb64(t, v.Signature))
			if err != nil {
				return passkey.ReasonOf(err), err
			}
			who, err := rule.Of(cert)
			if err != nil {
				return "?", err
			}
			now, _ := time.Parse(time.RFC3339, v.Expect.Now)
			if err := passkey.CheckBinding(b, v.Expect.Origin, who, now); err != nil {
				return passkey.ReasonOf(err), err
			}
			return "", nil
		}()
		judge(t, v.Name, v.Verdict, v.Reason, reason, err)
	}
}

func TestPasskeyReviewVectors(t *testing.T) {
	bindings := map[string]passkey.Binding{}
	for _, v := range read[bindingVector](t, "passkey-binding.json") {
		if v.Verdict == "accept" {
			b, err := passkey.ParseBinding([]byte(v.Text))
			if err != nil {
				t.Fatal(err)
			}
			bindings[v.Name] = b
		}
	}
	for _, v := range read[assertionVector](t, "passkey-review.json") {
		if _, err := statement.Parse([]byte(v.Statement)); err != nil {
			t.Fatalf("%s: %v", v.Name, err)
		}
		if v.Challenge != base64.RawURLEncoding.EncodeToString(passkey.Challenge([]byte(v.Statement))) {
			t.Errorf("%s: the challenge is not the statement's SHA-256", v.Name)
		}
		b, ok := bindings[v.Binding]
		if !ok {
			t.Fatalf("%s: no accepted binding %s", v.Name, v.Binding)
		}
		id, err := passkey.DecodeID(v.Credential)
		if err != nil {
			t.Fatal(err)
		}
		a := passkey.Assertion{Credential: id, AuthenticatorData: unb64(t, v.AuthenticatorData), ClientDataJSON: []byte(v.ClientDataJSON), Signature: unb64(t, v.Signature)}
		reason := ""
		got, err := passkey.VerifyAssertion(b, []byte(v.Statement), a)
		switch {
		case err != nil:
			reason = passkey.ReasonOf(err)
		case !passkey.CounterAdvances(v.LastCounter, got.Counter):
			reason, err = passkey.ReasonCounter, errors.New("the counter did not advance")
		}
		judge(t, v.Name, v.Verdict, v.Reason, reason, err)
	}
}

func mustSPKI(t *testing.T, pub crypto.PublicKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return der
}
