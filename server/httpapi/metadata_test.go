package httpapi

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net/http/httptest"
	"testing"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/go-jose/go-jose/v4"
)

// An issuer with a path: discovery, the key set and the RFC 8414 document
// are served under it (and at RFC 8414 §3.1's place), nothing at the
// host's root, and go-oidc's stock discovery finds the issuer and its keys
// from the issuer URL alone, for the broker and for an account.
func TestIssuerWithAPath(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	set, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: key.Public(), KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	if err != nil {
		t.Fatal(err)
	}
	var issuer string
	srv := httptest.NewUnstartedServer(nil)
	srv.StartTLS()
	defer srv.Close()
	issuer = srv.URL + "/sec/breakglass"
	srv.Config.Handler = Handler(Config{Issuer: issuer, JWKS: func() ([]byte, error) { return set, nil },
		AccountJWKS: func(a string) ([]byte, error) {
			if a == "ledger" {
				return set, nil
			}
			return nil, errors.New("no key of its own")
		},
		Health: func(context.Context) Health { return Health{Serving: true} }})
	hc := srv.Client()

	status := func(path string) int {
		t.Helper()
		resp, err := hc.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	for path, want := range map[string]int{
		"/sec/breakglass/.well-known/openid-configuration":                       200,
		"/sec/breakglass/.well-known/jwks.json":                                  200,
		"/.well-known/oauth-authorization-server/sec/breakglass":                 200,
		"/sec/breakglass/accounts/ledger/.well-known/openid-configuration":       200,
		"/sec/breakglass/accounts/ledger/.well-known/jwks.json":                  200,
		"/.well-known/oauth-authorization-server/sec/breakglass/accounts/ledger": 200,
		"/sec/breakglass/accounts/payroll/.well-known/openid-configuration":      404,
		"/.well-known/openid-configuration":                                      404,
		"/.well-known/jwks.json":                                                 404,
		"/sec/.well-known/openid-configuration":                                  404,
	} {
		if got := status(path); got != want {
			t.Errorf("GET %s: %d, want %d", path, got, want)
		}
	}
	ctx := oidc.ClientContext(context.Background(), hc)
	for _, iss := range []string{issuer, issuer + "/accounts/ledger"} {
		p, err := oidc.NewProvider(ctx, iss)
		if err != nil {
			t.Fatalf("go-oidc discovery of %s: %v", iss, err)
		}
		var m struct {
			JWKS  string   `json:"jwks_uri"`
			Algs  []string `json:"id_token_signing_alg_values_supported"`
			Intro string   `json:"introspection_endpoint"`
		}
		if err := p.Claims(&m); err != nil || m.JWKS != iss+"/.well-known/jwks.json" || len(m.Algs) != 1 || m.Algs[0] != "ES256" || m.Intro != issuer+"/introspect" {
			t.Fatalf("%s: %+v %v", iss, m, err)
		}
	}
}
