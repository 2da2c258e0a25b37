package client_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/json"
	"io"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/bgbroker/breakglass/client"
)

// fuzzKeys hands the verifier whatever JWKS bytes the fuzzer chose.
type fuzzKeys []byte

func (k fuzzKeys) FetchJWKS(context.Context) ([]byte, error) { return k, nil }

// The fuzzer runs the target in several worker processes, each running
// FuzzVerify's setup anew, and hands them inputs made in the others: every
// process must mint the very same token. So the key is derived from a label
// and signatures use RFC 6979 nonces, not fresh randomness.
func fuzzKey(f *testing.F, label string) *ecdsa.PrivateKey {
	f.Helper()
	d := sha256.Sum256([]byte(label))
	k, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), d[:])
	if err != nil {
		f.Fatal(err)
	}
	return k
}

// rfc6979 signs with deterministic nonces whatever randomness it is offered.
type rfc6979 struct{ *ecdsa.PrivateKey }

func (k rfc6979) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return k.PrivateKey.Sign(nil, digest, opts)
}

// fuzzToken signs claims as the broker does: ES256, typ at+jwt and a kid.
func fuzzToken(f *testing.F, key *ecdsa.PrivateKey, kid string, c client.Claims) string {
	f.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: cryptosigner.Opaque(rfc6979{key})},
		(&jose.SignerOptions{}).WithType("at+jwt").WithHeader("kid", kid))
	if err != nil {
		f.Fatal(err)
	}
	tok, err := jwt.Signed(s).Claims(c).Serialize()
	if err != nil {
		f.Fatal(err)
	}
	return tok
}

func fuzzJWKS(f *testing.F, keys ...jose.JSONWebKey) []byte {
	f.Helper()
	b, err := json.Marshal(jose.JSONWebKeySet{Keys: keys})
	if err != nil {
		f.Fatal(err)
	}
	return b
}

// FuzzVerify gives the relying party's verifier an arbitrary JWKS and an
// arbitrary token. The one token it may accept is the one minted here with
// the key generated here: nothing the fuzzer derives from it, by changing
// the token or the key set, may pass. (ECDSA's own (r, n-s) twin of a
// signature would, but random mutation cannot compute it.)
func FuzzVerify(f *testing.F) {
	key, other := fuzzKey(f, "breakglass fuzz token key"), fuzzKey(f, "breakglass fuzz other key")
	const kid = "k1"
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	claims := client.Claims{
		Claims: jwt.Claims{Issuer: "https://broker.test/accounts/prod-db", Subject: "alice", Audience: jwt.Audience{"db.example"}, ID: "2f7cfb0e-8d5f-4b6a-9a47-5a3c8d7e1b11",
			IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(10 * time.Minute))},
		ClientID: "alice", Account: "prod-db", Request: "01890000-0000-7000-8000-000000000001", Approvers: []string{"bob", "erin"},
	}
	good := fuzzToken(f, key, kid, claims)
	jwks := fuzzJWKS(f, jose.JSONWebKey{Key: &key.PublicKey, KeyID: kid, Algorithm: string(jose.ES256), Use: "sig"})

	verify := func(jwks []byte, tok string) (*client.Claims, error) {
		v, err := client.NewVerifier(client.VerifierConfig{Issuer: "https://broker.test", Audience: "db.example", Account: "prod-db",
			Keys: fuzzKeys(jwks), Now: func() time.Time { return now }})
		if err != nil {
			return nil, err
		}
		return v.Verify(context.Background(), tok)
	}
	if _, err := verify(jwks, good); err != nil {
		f.Fatalf("the seed token does not verify: %v", err)
	}

	drill := claims
	drill.Drill = true
	otherAccount := claims
	otherAccount.Account = "ledger"
	f.Add(jwks, good)
	f.Add(jwks, fuzzToken(f, key, kid, drill))
	f.Add(jwks, fuzzToken(f, key, kid, otherAccount))
	f.Add(jwks, fuzzToken(f, key, "k2", claims))
	f.Add(jwks, fuzzToken(f, other, kid, claims))
	f.Add(fuzzJWKS(f, jose.JSONWebKey{Key: &other.PublicKey, KeyID: kid}, jose.JSONWebKey{Key: &key.PublicKey, KeyID: kid, Use: "enc"}), good)
	f.Add(fuzzJWKS(f, jose.JSONWebKey{Key: key, KeyID: kid}), good)
	f.Add(fuzzJWKS(f, jose.JSONWebKey{Key: []byte("0123456789abcdef0123456789abcdef"), KeyID: kid, Algorithm: "HS256"}), good)
	f.Add([]byte(`{"keys":[]}`), good)
	f.Add([]byte(`{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":"","y":""}]}`), good)
	f.Add([]byte(`null`), "..")

	f.Fuzz(func(t *testing.T, jwks []byte, tok string) {
		c, err := verify(jwks, tok)
		if err != nil {
			return
		}
		if tok != good {
			t.Fatalf("accepted a token other than the one minted:\n%q\nwant\n%q", tok, good)
		}
		if c.Subject != "alice" || c.KeyID != kid || c.Account != "prod-db" {
			t.Fatalf("claims %+v", c)
		}
	})
}
