package claims

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// goJose reads a token with claims b as relying parties do: a compact JWS
// signed with ES256, parsed and verified by go-jose, its claims decoded
// into go-jose's registered claims, the broker's private claims and a map
// of every claim.
type goJose struct {
	std  jwt.Claims
	priv struct {
		ClientID  string   `json:"client_id"`
		Account   string   `json:"bg_account"`
		Request   string   `json:"bg_request"`
		Approvers []string `json:"bg_approvers"`
		Drill     bool     `json:"bg_drill"`
	}
	all map[string]any
}

func fuzzKey() *ecdsa.PrivateKey {
	seed := sha256.Sum256([]byte("breakglass claims fuzz"))
	k, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), seed[:])
	if err != nil {
		panic(err)
	}
	return k
}

func readWithGoJose(t *testing.T, key *ecdsa.PrivateKey, b []byte) (*goJose, bool) {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithType("at+jwt"))
	if err != nil {
		t.Fatal(err)
	}
	jws, err := signer.Sign(b)
	if err != nil {
		t.Fatal(err)
	}
	compact, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.ParseSigned(compact, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return nil, false
	}
	var g goJose
	if err := tok.Claims(&key.PublicKey, &g.std, &g.priv, &g.all); err != nil {
		return nil, false
	}
	return &g, true
}

func genuine() []byte {
	t0 := time.Date(2026, 11, 29, 12, 52, 10, 0, time.UTC)
	b, err := json.Marshal(Claims{Issuer: "https://broker.example", Subject: "alice", Audience: jwt.Audience{"db.prod.example"},
		IssuedAt: NumericDate(t0), NotBefore: NumericDate(t0), Expiry: NumericDate(t0.Add(30 * time.Minute)),
		ID: "c310c0af-aa08-487a-92e5-58b47316fdb2", ClientID: "alice", Account: "prod-db", Request: "01a2275c-ebb0-7dd8-850f-d60aaa9275c9",
		Approvers: []string{"bob", "erin"}})
	if err != nil {
		panic(err)
	}
	return b
}

// FuzzAgreeWithGoJose feeds arbitrary claims to Parse and to go-jose (in
// a real signed token). Whatever both accept, they read the same: every
// registered and private claim has the same value, and go-jose sees no
// claim that Parse does not know.
func FuzzAgreeWithGoJose(f *testing.F) {
	key := fuzzKey()
	g := genuine()
	f.Add(g)
	// The forgery: a second, case-variant exp and aud that
	// encoding/json would read and go-jose would not.
	f.Add([]byte(`{"iss":"https://broker.example","sub":"alice","aud":"payments.prod.example","iat":1796156565,"nbf":1796156565,"exp":2111516634,` +
		`"jti":"c310c0af-aa08-487a-92e5-58b47316fdb2","client_id":"alice","bg_account":"prod-db","bg_request":"01a2275c-ebb0-7dd8-850f-d60aaa9275c9",` +
		`"bg_approvers":["bob","erin"],"bg_drill":false,"Exp":1796158365,"Aud":"db.prod.example"}`))
	f.Add([]byte(`{"iss":"a","sub":"alice","aud":"x","iat":1,"nbf":1,"exp":2,"jti":"j","client_id":"alice","bg_account":"a","bg_request":"r","bg_approvers":[],"bg_drill":false,"exp":3}`))
	f.Add([]byte(`{"iss":"a","sub":"alice","aud":"x","iat":1,"nbf":1,"exp":2.9,"jti":"j","client_id":"alice","bg_account":"a","bg_request":"r","bg_approvers":[],"bg_drill":false}`))
	f.Add([]byte(`{"iss":"a","sub":"alice","aud":["x"],"iat":1,"nbf":1,"exp":2e3,"jti":"j","client_id":"alice","bg_account":"a","bg_request":"r","bg_approvers":null,"bg_drill":true}`))
	f.Add([]byte(`{"iss":"a","sub":"alice","aud":"x","iat":1,"nbf":1,"exp":2,"jti":"j","client_id":"alice","bg_account":"a","bg_request":"r","bg_approvers":[],"bg_drill":false,"scope":"admin"}`))
	f.Add([]byte(`{"iss":"a","sub":"alice","aud":"x","iat":1,"nbf":1,"exp":2,"jti":"j","client_id":"alice","bg_account":"a","bg_request":"r","bg_approvers":[],"bg_dr\u0131ll":true,"bg_drill":false}`))
	f.Add([]byte(`{"iss":"a","sub":"alice","aud":"x","iat":1,"nbf":1,"exp":2,"jti":"j","client_id":"alice","bg_account":"\u0061","bg_request":"r","bg_approvers":[],"bg_drill":false}`))
	f.Add([]byte(`{"iss":"a","sub":"alice","aud":"x","iat":null,"nbf":1,"exp":9223372036854775807,"jti":"j","client_id":"alice","bg_account":"a","bg_request":"r","bg_approvers":["\ud800"],"bg_drill":false}`))

	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse(b)
		if err != nil {
			return
		}
		gj, ok := readWithGoJose(t, key, b)
		if !ok {
			return
		}
		s := gj.std
		switch {
		case s.Issuer != c.Issuer, s.Subject != c.Subject, s.ID != c.ID:
			t.Fatalf("iss/sub/jti: go-jose %q %q %q, Parse %q %q %q", s.Issuer, s.Subject, s.ID, c.Issuer, c.Subject, c.ID)
		case !slices.Equal(s.Audience, c.Audience):
			t.Fatalf("aud: go-jose %q, Parse %q", s.Audience, c.Audience)
		case !sameDate(s.IssuedAt, c.IssuedAt), !sameDate(s.NotBefore, c.NotBefore), !sameDate(s.Expiry, c.Expiry):
			t.Fatalf("iat/nbf/exp: go-jose %v %v %v, Parse %v %v %v", s.IssuedAt, s.NotBefore, s.Expiry, c.IssuedAt, c.NotBefore, c.Expiry)
		}
		p := gj.priv
		if p.ClientID != c.ClientID || p.Account != c.Account || p.Request != c.Request || p.Drill != c.Drill || !slices.Equal(p.Approvers, c.Approvers) {
			t.Fatalf("private claims: go-jose %+v, Parse %+v", p, c)
		}
		for k := range gj.all {
			if !slices.Contains(Names, k) {
				t.Fatalf("go-jose sees claim %q, which Parse does not know", k)
			}
		}
		if len(gj.all) != len(Names) {
			t.Fatalf("go-jose sees %d claims, Parse %d", len(gj.all), len(Names))
		}
	})
}

func sameDate(a, b *jwt.NumericDate) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// Parse refuses every way of making encoding/json and go-jose read one
// claim differently, and accepts what the broker writes.
func TestParseRefusesAmbiguousClaims(t *testing.T) {
	g := genuine()
	if _, err := Parse(g); err != nil {
		t.Fatalf("the broker's claims: %v", err)
	}
	tests := []struct {
		name, claims, why string
	}{
		{"case-variant exp", `{"iss":"a","sub":"alice","aud":"x","iat":1,"nbf":1,"exp":2,"jti":"j","client_id":"alice","bg_account":"a","bg_request":"r","bg_approvers":[],"bg_drill":false,"Exp":9}`,
			`"Exp" in $ differs from key "exp" only in case`},
		{"duplicate", `{"iss":"a","sub":"alice","aud":"x","iat":1,"nbf":1,"exp":2,"jti":"j","client_id":"alice","bg_account":"a","bg_request":"r","bg_approvers":[],"bg_drill":false,"aud":"y"}`,
			`"aud" appears twice`},
		{"unknown claim", `{"iss":"a","sub":"alice","aud":"x","iat":1,"nbf":1,"exp":2,"jti":"j","client_id":"alice","bg_account":"a","bg_request":"r","bg_approvers":[],"bg_drill":false,"scope":"admin"}`,
			`unknown key "scope"`},
		{"fraction", `{"iss":"a","sub":"alice","aud":"x","iat":1,"nbf":1,"exp":2.5,"jti":"j","client_id":"alice","bg_account":"a","bg_request":"r","bg_approvers":[],"bg_drill":false}`,
			"canonical"},
		{"two audiences", `{"iss":"a","sub":"alice","aud":["x","y"],"iat":1,"nbf":1,"exp":2,"jti":"j","client_id":"alice","bg_account":"a","bg_request":"r","bg_approvers":[],"bg_drill":false}`,
			"2 audiences"},
		{"no exp", `{"iss":"a","sub":"alice","aud":"x","iat":1,"nbf":1,"exp":null,"jti":"j","client_id":"alice","bg_account":"a","bg_request":"r","bg_approvers":[],"bg_drill":false}`,
			"lack iat, nbf or exp"},
		{"only the case variant", `{"iss":"a","sub":"alice","aud":"x","iat":1,"nbf":1,"Exp":2,"jti":"j","client_id":"alice","bg_account":"a","bg_request":"r","bg_approvers":[],"bg_drill":false}`,
			`key "Exp" in $ is not "exp"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.claims))
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.why) {
				t.Fatalf("refused for %v; want %q", err, tc.why)
			}
		})
	}
}
