package client_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"

	"github.com/bgbroker/breakglass/client"
	"github.com/bgbroker/breakglass/hsm"
	"github.com/bgbroker/breakglass/hsm/hsmtest"
	"github.com/bgbroker/breakglass/server/token"
)

// The SDK is pure Go; its tests sign with a real SoftHSM2 token through
// the broker's own minter, so what they verify is what the broker issues.
func TestMain(m *testing.M) { os.Exit(hsmtest.Main(m)) }

type countingKeys struct {
	jwks  []byte
	calls atomic.Int32
}

func (c *countingKeys) FetchJWKS(context.Context) ([]byte, error) {
	c.calls.Add(1)
	return c.jwks, nil
}

type fixture struct {
	minter *token.Minter
	key    *hsm.Key
	keys   *countingKeys
	now    time.Time
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	m := hsmtest.NewToken(t).Open(t)
	k := hsmtest.Keys(t, m)[hsm.PurposeToken]
	minter, err := token.NewMinter(k, "https://broker.test")
	if err != nil {
		t.Fatal(err)
	}
	jwks, err := token.JWKS(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{minter: minter, key: k, keys: &countingKeys{jwks: jwks}, now: time.Now()}
}

func (f *fixture) claims() token.Claims {
	return token.Claims{Subject: "alice", Audience: []string{"db.example"}, IssuedAt: token.NumericDate(f.now), NotBefore: token.NumericDate(f.now),
		Expiry: token.NumericDate(f.now.Add(10 * time.Minute)), ID: "2f7cfb0e-8d5f-4b6a-9a47-5a3c8d7e1b11", ClientID: "alice",
		Account: "prod-db", Request: "01890000-0000-7000-8000-000000000001", Approvers: []string{"bob", "erin"}}
}

func (f *fixture) mint(t *testing.T, c token.Claims) string {
	t.Helper()
	m, err := f.minter.Mint(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	return m.Token
}

// forge signs arbitrary headers and payload with the real token key.
func (f *fixture) forge(t *testing.T, typ, kid string, payload any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType(jose.ContentType(typ))
	if kid != "" {
		opts = opts.WithHeader("kid", kid)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: cryptosigner.Opaque(f.key)}, opts)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(payload)
	jws, err := s.Sign(b)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := jws.CompactSerialize()
	return out
}

func (f *fixture) verifier(t *testing.T, mod func(*client.VerifierConfig)) *client.Verifier {
	t.Helper()
	cfg := client.VerifierConfig{Issuer: "https://broker.test", Audience: "db.example", Keys: f.keys, Now: func() time.Time { return f.now }}
	if mod != nil {
		mod(&cfg)
	}
	v, err := client.NewVerifier(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestVerifier(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	good := f.mint(t, f.claims())
	kid := f.minter.KID()
	c, err := f.verifier(t, nil).Verify(ctx, good)
	if err != nil {
		t.Fatal(err)
	}
	if c.Subject != "alice" || c.Account != "prod-db" || c.KeyID != kid || len(c.Approvers) != 2 {
		t.Fatalf("claims %+v", c)
	}

	parts := strings.Split(good, ".")
	noneHeader := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"at+jwt","kid":"` + kid + `"}`))
	hsHeader := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256","typ":"at+jwt","kid":"` + kid + `"}`))
	payloadOf := func(mod func(m map[string]any)) map[string]any {
		var m map[string]any
		b, _ := json.Marshal(f.claims())
		_ = json.Unmarshal(b, &m)
		m["iss"] = "https://broker.test"
		if mod != nil {
			mod(m)
		}
		return m
	}
	expired := f.claims()
	expired.Expiry = token.NumericDate(f.now.Add(-time.Minute))
	notYet := f.claims()
	notYet.NotBefore = token.NumericDate(f.now.Add(time.Hour))
	otherAud := f.claims()
	otherAud.Audience = []string{"ledger.example"}
	drill := f.claims()
	drill.Drill = true

	tests := []struct {
		name string
		tok  string
		mod  func(*client.VerifierConfig)
		want string
	}{
		{"expired", f.mint(t, expired), nil, "exp"},
		{"not yet valid", f.mint(t, notYet), nil, "nbf"},
		{"wrong audience", f.mint(t, otherAud), nil, "aud"},
		{"wrong issuer", good, func(c *client.VerifierConfig) { c.Issuer = "https://evil.test" }, "iss"},
		{"drill refused by default", f.mint(t, drill), nil, "drill"},
		{"typ JWT is not an access token", f.forge(t, "JWT", kid, payloadOf(nil)), nil, "typ"},
		{"no typ", f.forge(t, "", kid, payloadOf(nil)), nil, "typ"},
		{"no kid", f.forge(t, "at+jwt", "", payloadOf(nil)), nil, "kid"},
		{"unknown kid", f.forge(t, "at+jwt", "not-a-kid", payloadOf(nil)), nil, "unknown kid"},
		{"missing jti", f.forge(t, "at+jwt", kid, payloadOf(func(m map[string]any) { delete(m, "jti") })), nil, "required claim"},
		{"missing exp", f.forge(t, "at+jwt", kid, payloadOf(func(m map[string]any) { delete(m, "exp") })), nil, "required claim"},
		{"altered payload", parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(`{"sub":"mallory"}`)) + "." + parts[2], nil, "signature"},
		{"alg none", noneHeader + "." + parts[1] + ".", nil, "invalid"},
		{"alg HS256", hsHeader + "." + parts[1] + "." + parts[2], nil, "invalid"},
		{"garbage", "not.a.token", nil, "invalid"},
		{"empty", "", nil, "invalid"},
		{"oversize", strings.Repeat("a", 20000), nil, "bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.verifier(t, tc.mod).Verify(ctx, tc.tok)
			if err == nil || !errors.Is(err, client.ErrTokenInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrTokenInvalid mentioning %q", err, tc.want)
			}
		})
	}
	// Drill tokens pass when asked for.
	if _, err := f.verifier(t, func(c *client.VerifierConfig) { c.AllowDrill = true }).Verify(ctx, f.mint(t, drill)); err != nil {
		t.Fatal(err)
	}
}

// Unknown kids refresh the JWKS, at most once per interval, so forged kids
// cannot make the verifier hammer the broker.
func TestVerifierRefreshIsRateLimited(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	now := f.now
	v := f.verifier(t, func(c *client.VerifierConfig) { c.Now = func() time.Time { return now } })
	if _, err := v.Verify(ctx, f.mint(t, f.claims())); err != nil {
		t.Fatal(err)
	}
	forged := f.forge(t, "at+jwt", "forged-kid", map[string]any{"sub": "x"})
	for range 20 {
		_, _ = v.Verify(ctx, forged)
	}
	if n := f.keys.calls.Load(); n != 1 {
		t.Fatalf("%d JWKS fetches for 20 forged kids within the interval", n)
	}
	now = now.Add(31 * time.Second)
	_, _ = v.Verify(ctx, forged)
	if n := f.keys.calls.Load(); n != 2 {
		t.Fatalf("%d fetches after the interval", n)
	}
	// A key rotated in is found by the refresh.
	m2 := hsmtest.NewToken(t).Open(t)
	k2 := hsmtest.Keys(t, m2)[hsm.PurposeToken]
	minter2, _ := token.NewMinter(k2, "https://broker.test")
	f.keys.jwks, _ = token.JWKS(f.key.Public(), k2.Public())
	now = now.Add(31 * time.Second)
	tok2, err := minter2.Mint(ctx, f.claims())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(ctx, tok2.Token); err != nil {
		t.Fatalf("rotated key: %v", err)
	}
}
