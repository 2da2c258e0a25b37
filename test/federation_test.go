package test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/go-jose/go-jose/v4"

	"github.com/bgbroker/breakglass/hsm"
	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
	"github.com/bgbroker/breakglass/server/config"
	"github.com/bgbroker/breakglass/server/daemon"
	"github.com/bgbroker/breakglass/server/devmode"
)

// fedPolicy has prod-db on the broker's token key and two accounts with
// token keys of their own, so each has its own issuer.
const fedPolicy = `auditors: auditors
relying_parties: relying-parties
groups:
  sre: [alice]
  db-admins: [bob, carol]
  security: [erin]
  db-owners: [carol]
  auditors: [dave]
  relying-parties: [svc-db]
accounts:
  - name: prod-db
    owner: db-owners
    requesters: [sre]
    audiences: [db.prod.example]
    drill_audience: drill.db.prod.example
    max_ttl: 1h
    approval_window: 30m
    activation_window: 15m
    quorum:
      - require:
          - {group: db-admins, approvals: 1}
          - {group: security, approvals: 1}
  - name: ledger
    owner: db-owners
    requesters: [sre]
    audiences: [ledger.example]
    token_key: ledger-key
    max_ttl: 1h
    approval_window: 30m
    activation_window: 15m
    quorum:
      - require: [{group: db-admins, approvals: 1}]
  - name: payroll
    owner: db-owners
    requesters: [sre]
    audiences: [payroll.example]
    token_key: payroll-key
    max_ttl: 1h
    approval_window: 30m
    activation_window: 15m
    quorum:
      - require: [{group: db-admins, approvals: 1}]
`

// fedBroker is an in-process broker with the federation policy and a
// token per account.
type fedBroker struct {
	*inproc
	caPEM  []byte
	http   *http.Client
	tokens map[string]*bgv1.IssueTokenResponse
}

func startFedBroker(t *testing.T) *fedBroker {
	t.Helper()
	return startFedBrokerWith(t, fedPolicy)
}

// startFedBrokerWith is startFedBroker with another policy holding the
// federation policy's accounts.
func startFedBrokerWith(t *testing.T, pol string) *fedBroker {
	t.Helper()
	ip := startInProcess(t, pol, func(cfg *config.Config) {
		m, err := hsm.Open(context.Background(), daemon.HSMConfig(cfg.HSM), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		for _, label := range []string{"ledger-key", "payroll-key"} {
			if _, err := m.GenerateKey(context.Background(), hsm.GenerateRequest{Purpose: hsm.PurposeToken, Label: label}); err != nil {
				t.Fatal(err)
			}
		}
	})
	caPEM, err := os.ReadFile(filepath.Join(ip.dir, "ca", "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	f := &fedBroker{inproc: ip, caPEM: caPEM, tokens: map[string]*bgv1.IssueTokenResponse{},
		http: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}}}
	t.Cleanup(f.http.CloseIdleConnections)
	for account, aud := range map[string]string{"prod-db": "db.prod.example", "ledger": "ledger.example", "payroll": "payroll.example"} {
		f.tokens[account] = f.grantToken(t, account, aud, false)
	}
	return f
}

// grantToken has alice request access to account, bob (and erin where the
// quorum wants security) approve, and alice take a token for aud.
func (f *fedBroker) grantToken(t *testing.T, account, aud string, drill bool) *bgv1.IssueTokenResponse {
	t.Helper()
	ctx := context.Background()
	r, err := f.client("alice").CreateRequest(ctx, &bgv1.CreateRequestRequest{Account: account, Justification: "outage " + account, RequestedTtl: dur(20 * time.Minute), Drill: drill})
	if err != nil {
		t.Fatal(err)
	}
	id := r.GetRequest().GetId()
	for _, who := range []string{"bob", "erin"} {
		got, err := f.client("alice").GetRequest(ctx, &bgv1.GetRequestRequest{Id: id})
		if err != nil {
			t.Fatal(err)
		}
		if got.GetRequest().GetState() == bgv1.RequestState_REQUEST_STATE_APPROVED {
			break
		}
		if _, err := f.client(who).ReviewByID(ctx, id, bgv1.ReviewDecision_REVIEW_DECISION_APPROVE, ""); err != nil {
			t.Fatalf("%s approves %s: %v", who, account, err)
		}
	}
	tok, err := f.client("alice").IssueToken(ctx, &bgv1.IssueTokenRequest{RequestId: id, Audience: aud})
	if err != nil {
		t.Fatalf("token for %s: %v", account, err)
	}
	return tok
}

func (f *fedBroker) issuer(account string) string {
	if account == "" || account == "prod-db" {
		return f.d.Ready.Issuer
	}
	return f.d.Ready.Issuer + "/accounts/" + account
}

// getJSON fetches a document the way a relying party would, trusting only
// the broker's CA.
func (f *fedBroker) getJSON(t *testing.T, u string) (map[string]any, fetched) {
	t.Helper()
	resp, err := f.http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got := fetched{StatusCode: resp.StatusCode, Status: resp.Status, Header: resp.Header}
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("%s: %v\n%s", u, err, b)
		}
	}
	return m, got
}

// fetched is what a test needs of a response whose body was read.
type fetched struct {
	StatusCode int
	Status     string
	Header     http.Header
}

// A relying party with a stock OpenID library and only the broker's issuer
// URL and CA certificate verifies tokens: go-oidc's NewProvider finds the
// keys through discovery and its verifier expects ES256, for the broker's
// issuer and for each account with a key of its own; a token of one issuer
// never verifies under another.
func TestGoOIDCDiscovery(t *testing.T) {
	f := startFedBroker(t)
	ctx := oidc.ClientContext(context.Background(), f.http)
	verify := func(issuer, aud, token string) (*oidc.IDToken, error) {
		p, err := oidc.NewProvider(ctx, issuer)
		if err != nil {
			return nil, fmt.Errorf("discovery of %s: %w", issuer, err)
		}
		var m struct {
			Algs []string `json:"id_token_signing_alg_values_supported"`
		}
		if err := p.Claims(&m); err != nil || !slices.Equal(m.Algs, []string{"ES256"}) {
			t.Fatalf("%s: signing algorithms %v (%v)", issuer, m.Algs, err)
		}
		return p.Verifier(&oidc.Config{ClientID: aud}).Verify(ctx, token)
	}
	cases := []struct {
		account, aud string
	}{{"prod-db", "db.prod.example"}, {"ledger", "ledger.example"}, {"payroll", "payroll.example"}}
	for _, c := range cases {
		tok, err := verify(f.issuer(c.account), c.aud, f.tokens[c.account].GetToken())
		if err != nil {
			t.Fatalf("%s under its issuer: %v", c.account, err)
		}
		var claims struct {
			Account string `json:"bg_account"`
			Sub     string `json:"sub"`
		}
		if err := tok.Claims(&claims); err != nil || claims.Account != c.account || claims.Sub != "alice" || tok.Issuer != f.issuer(c.account) {
			t.Fatalf("%s: iss %s, claims %+v (%v)", c.account, tok.Issuer, claims, err)
		}
		for _, other := range cases {
			if other.account == c.account {
				continue
			}
			if _, err := verify(f.issuer(other.account), c.aud, f.tokens[c.account].GetToken()); err == nil {
				t.Fatalf("a token of %s verified under %s's issuer", c.account, other.account)
			}
		}
	}
	// An account without a key of its own has no issuer of its own.
	if _, err := oidc.NewProvider(ctx, f.d.Ready.Issuer+"/accounts/nope"); err == nil {
		t.Fatal("discovery found an issuer for an account that does not exist")
	}
}

// The discovery documents, checked member by member against what OpenID
// Connect Discovery 1.0 §3 and RFC 8414 §2 require, at the places §4 and
// §3.1 of each put them, for the broker's issuer and an account's.
func TestMetadataDocuments(t *testing.T) {
	f := startFedBroker(t)
	for _, issuer := range []string{f.issuer(""), f.issuer("ledger")} {
		u, _ := url.Parse(issuer)
		oidcURL := issuer + "/.well-known/openid-configuration"
		rfc8414URL := u.Scheme + "://" + u.Host + "/.well-known/oauth-authorization-server" + u.Path
		docs := map[string]map[string]any{}
		for name, loc := range map[string]string{"openid-configuration": oidcURL, "oauth-authorization-server": rfc8414URL} {
			m, resp := f.getJSON(t, loc)
			if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
				t.Fatalf("%s: %s, %s", loc, resp.Status, resp.Header.Get("Content-Type"))
			}
			docs[name] = m
			checkMetadata(t, loc, issuer, f.issuer(""), m)
		}
		if fmt.Sprint(docs["openid-configuration"]) != fmt.Sprint(docs["oauth-authorization-server"]) {
			t.Fatalf("the two documents of %s differ:\n%v\n%v", issuer, docs["openid-configuration"], docs["oauth-authorization-server"])
		}
		// The JWKS they name holds the keys of this issuer's tokens.
		set, resp := f.getJSON(t, docs["openid-configuration"]["jwks_uri"].(string))
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/jwk-set+json" {
			t.Fatalf("jwks_uri: %s %s", resp.Status, resp.Header.Get("Content-Type"))
		}
		keys, _ := set["keys"].([]any)
		if len(keys) == 0 {
			t.Fatalf("%s: empty key set", issuer)
		}
		for _, k := range keys {
			k := k.(map[string]any)
			if k["kty"] != "EC" || k["crv"] != "P-256" || k["alg"] != "ES256" || k["use"] != "sig" || k["kid"] == "" || k["d"] != nil {
				t.Fatalf("%s: key %v", issuer, k)
			}
		}
	}
}

// checkMetadata checks one metadata document of issuer.
func checkMetadata(t *testing.T, loc, issuer, brokerIssuer string, m map[string]any) {
	t.Helper()
	str := func(name string) string {
		s, ok := m[name].(string)
		if !ok || s == "" {
			t.Fatalf("%s: %s is missing or not a string: %v", loc, name, m[name])
		}
		return s
	}
	list := func(name string) []string {
		raw, ok := m[name].([]any)
		if !ok || len(raw) == 0 {
			t.Fatalf("%s: %s must be a non-empty JSON array: %v", loc, name, m[name])
		}
		var out []string
		for _, v := range raw {
			s, ok := v.(string)
			if !ok || s == "" {
				t.Fatalf("%s: %s holds %v", loc, name, v)
			}
			out = append(out, s)
		}
		return out
	}
	httpsURL := func(name, want string) {
		s := str(name)
		u, err := url.Parse(s)
		if err != nil || u.Scheme != "https" || u.RawQuery != "" || u.Fragment != "" || (want != "" && s != want) {
			t.Fatalf("%s: %s = %q, want an https URL %q", loc, name, s, want)
		}
	}
	// Both: issuer REQUIRED, https, no query or fragment, identical to the
	// issuer the document was fetched for (and to iss in tokens).
	httpsURL("issuer", issuer)
	// Discovery: jwks_uri REQUIRED (RFC 8414: OPTIONAL, https).
	httpsURL("jwks_uri", "")
	if !strings.HasPrefix(str("jwks_uri"), issuer+"/") {
		t.Fatalf("%s: jwks_uri %s is not under the issuer", loc, str("jwks_uri"))
	}
	// Both: response_types_supported REQUIRED.
	list("response_types_supported")
	// Discovery: subject_types_supported REQUIRED (pairwise or public).
	if got := list("subject_types_supported"); !slices.Equal(got, []string{"public"}) {
		t.Fatalf("%s: subject_types_supported %v", loc, got)
	}
	// Discovery: id_token_signing_alg_values_supported REQUIRED; the only
	// algorithm the broker signs with.
	if got := list("id_token_signing_alg_values_supported"); !slices.Equal(got, []string{"ES256"}) {
		t.Fatalf("%s: id_token_signing_alg_values_supported %v", loc, got)
	}
	// RFC 8414: introspection_endpoint with its auth methods (RFC 8705
	// tls_client_auth), the broker's whatever the issuer.
	httpsURL("introspection_endpoint", brokerIssuer+"/introspect")
	if got := list("introspection_endpoint_auth_methods_supported"); !slices.Equal(got, []string{"tls_client_auth"}) {
		t.Fatalf("%s: introspection_endpoint_auth_methods_supported %v", loc, got)
	}
	for _, c := range []string{"iss", "sub", "aud", "exp", "iat", "jti", "bg_account", "bg_approvers"} {
		if !slices.Contains(list("claims_supported"), c) {
			t.Fatalf("%s: claims_supported lacks %s", loc, c)
		}
	}
	// What the broker does not have, it does not list: no authorization or
	// token endpoint, so neither the endpoints (RFC 8414: "REQUIRED unless
	// no grant types are supported that use" them) nor their auth methods
	// and grant types; no empty lists.
	for _, absent := range []string{"authorization_endpoint", "token_endpoint", "token_endpoint_auth_methods_supported", "grant_types_supported", "userinfo_endpoint", "registration_endpoint"} {
		if _, ok := m[absent]; ok {
			t.Fatalf("%s: lists %s, which the broker does not have", loc, absent)
		}
	}
	for k, v := range m {
		if l, ok := v.([]any); ok && len(l) == 0 {
			t.Fatalf("%s: %s is an empty list", loc, k)
		}
	}
}

// introspector is an HTTPS client of the introspection endpoint.
type introspector struct {
	t    *testing.T
	url  string
	http *http.Client
	id   string
}

func (f *fedBroker) introspector(t *testing.T, name string) *introspector {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(f.caPEM)
	tc := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if name != "" {
		cert, err := tls.LoadX509KeyPair(filepath.Join(f.dir, "identities", name+".crt"), filepath.Join(f.dir, "identities", name+".key"))
		if err != nil {
			t.Fatal(err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
	t.Cleanup(c.CloseIdleConnections)
	return &introspector{t: t, url: f.issuer("") + "/introspect", http: c, id: name}
}

// post sends body as a form and returns the status and the JSON answer.
func (in *introspector) post(contentType, body string) (int, map[string]any) {
	in.t.Helper()
	resp, err := in.http.Post(in.url, contentType, strings.NewReader(body))
	if err != nil {
		in.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	if resp.StatusCode == http.StatusOK && resp.Header.Get("Cache-Control") != "no-store" {
		in.t.Fatalf("an introspection answer without Cache-Control: no-store")
	}
	return resp.StatusCode, m
}

// as is in reporting to t (a subtest).
func (in *introspector) as(t *testing.T) *introspector {
	c := *in
	c.t = t
	return &c
}

func (in *introspector) token(tok string) (int, map[string]any) {
	in.t.Helper()
	return in.post("application/x-www-form-urlencoded", url.Values{"token": {tok}, "client_id": {in.id}}.Encode())
}

// RFC 7662 introspection with RFC 8705 tls_client_auth: a relying party
// with its client certificate learns whether a token is live; revoked,
// expired, tampered, foreign, unknown and drill tokens are all just
// inactive; callers without a certificate, with one the broker does not
// accept, or that are not relying parties or auditors, get no answer;
// hostile bodies are refused; each principal is rate-limited alone.
func TestIntrospection(t *testing.T) {
	f := startFedBroker(t)
	svc, dave := f.introspector(t, "svc-db"), f.introspector(t, "dave")
	inactive := func(t *testing.T, who *introspector, tok string) {
		t.Helper()
		code, m := who.as(t).token(tok)
		if code != http.StatusOK || m["active"] != false || len(m) != 1 {
			t.Fatalf("%d %v, want {\"active\": false} alone", code, m)
		}
	}
	// Live tokens, of the broker's issuer and of an account's, for a
	// relying party and an auditor.
	for account, aud := range map[string]string{"prod-db": "db.prod.example", "ledger": "ledger.example"} {
		for _, who := range []*introspector{svc, dave} {
			t.Run("live "+account+" token for "+who.id, func(t *testing.T) {
				code, m := who.as(t).token(f.tokens[account].GetToken())
				if code != http.StatusOK || m["active"] != true || m["sub"] != "alice" || m["aud"] != aud || m["iss"] != f.issuer(account) ||
					m["jti"] != f.tokens[account].GetJti() || m["client_id"] != "alice" || m["bg_account"] != account || m["bg_drill"] != false ||
					m["exp"] == nil || m["iat"] == nil || m["nbf"] == nil || m["bg_request"] == nil || m["bg_approvers"] == nil {
					t.Fatalf("%d %v", code, m)
				}
			})
		}
	}

	live := f.tokens["prod-db"].GetToken()
	parts := strings.Split(live, ".")
	payload, _ := decodeSegment(parts[1])
	sig, _ := decodeSegment(parts[2])
	sig[0] ^= 1
	drill := f.grantToken(t, "prod-db", "drill.db.prod.example", true)
	for what, tok := range map[string]string{
		"tampered payload":        parts[0] + "." + b64url([]byte(strings.Replace(string(payload), `"sub":"alice"`, `"sub":"mallory"`, 1))) + "." + parts[2],
		"tampered signature":      parts[0] + "." + parts[1] + "." + b64url(sig),
		"foreign token":           parts[0] + "." + strings.Split(f.tokens["ledger"].GetToken(), ".")[1] + "." + parts[2],
		"unknown token":           "not-a-token",
		"non-canonical base64url": live + "=",
		"drill token":             drill.GetToken(),
	} {
		t.Run("inactive: "+what, func(t *testing.T) { inactive(t, svc, tok) })
	}
	t.Run("inactive: a token signed by another issuer's key", func(t *testing.T) {
		// The same claims, signed by a key the broker never had, named
		// by its own kid: what another broker (or a forger) would send.
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		jwk := jose.JSONWebKey{Key: key.Public(), Algorithm: "ES256"}
		kid, _ := jwk.Thumbprint(crypto.SHA256)
		signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key},
			(&jose.SignerOptions{}).WithType("at+jwt").WithHeader("kid", b64url(kid)))
		if err != nil {
			t.Fatal(err)
		}
		jws, err := signer.Sign(payload)
		if err != nil {
			t.Fatal(err)
		}
		foreign, err := jws.CompactSerialize()
		if err != nil {
			t.Fatal(err)
		}
		inactive(t, svc, foreign)
	})

	// Client certificates the broker does not accept, from the client CA
	// or not: no answer, 401 (or 403 for a principal that may not ask).
	ca, err := devmode.LoadCA(filepath.Join(f.dir, "ca", "ca.crt"), filepath.Join(f.dir, "ca", "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	foreignCA, err := devmode.NewCA("another CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	const prefix = "spiffe://breakglass.dev/user/"
	uri := []string{prefix + "svc-db"}
	// The auditor's second certificate, revoked below (its own rate
	// limit, not svc-db's, pays for the polling).
	revoked := f.certIntrospector(t, ca, devmode.LeafOptions{CommonName: "dave", URIs: []string{prefix + "dave"}}, "dave")
	certCases := []struct {
		what string
		ca   *devmode.CA
		leaf devmode.LeafOptions
		id   string
		code int
	}{
		{"a certificate from another CA", foreignCA, devmode.LeafOptions{CommonName: "svc-db", URIs: uri}, "svc-db", http.StatusUnauthorized},
		{"a server certificate (no clientAuth)", ca, devmode.LeafOptions{CommonName: "svc-db", URIs: uri, Server: true}, "svc-db", http.StatusUnauthorized},
		{"an expired certificate", ca, devmode.LeafOptions{CommonName: "svc-db", URIs: uri, NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: time.Now().Add(-time.Hour)}, "svc-db", http.StatusUnauthorized},
		{"two URI SANs under the prefix", ca, devmode.LeafOptions{CommonName: "svc-db", URIs: []string{prefix + "svc-db", prefix + "dave"}}, "svc-db", http.StatusUnauthorized},
		{"no URI SAN under the prefix", ca, devmode.LeafOptions{CommonName: "svc-db", URIs: []string{"spiffe://elsewhere/user/svc-db"}}, "svc-db", http.StatusUnauthorized},
		{"a CA certificate", ca, devmode.LeafOptions{CommonName: "svc-db", URIs: uri, IsCA: true}, "svc-db", http.StatusUnauthorized},
		{"a principal not in the policy", ca, devmode.LeafOptions{CommonName: "mallory", URIs: []string{prefix + "mallory"}}, "mallory", http.StatusForbidden},
	}
	for _, c := range certCases {
		t.Run("refused: "+c.what, func(t *testing.T) {
			in := f.certIntrospector(t, c.ca, c.leaf, c.id)
			code, m := in.as(t).token(live)
			if code != c.code || m["active"] != nil || m["error"] == nil {
				t.Fatalf("%d %v, want %d with an OAuth error and no answer", code, m, c.code)
			}
		})
	}

	// Hostile and broken requests: refused, with no answer about the token.
	refused := []struct {
		what string
		who  *introspector
		ct   string
		body string
		code int
	}{
		{"no client certificate", f.introspector(t, ""), "application/x-www-form-urlencoded", "token=" + live + "&client_id=svc-db", http.StatusUnauthorized},
		{"a requester", f.introspector(t, "alice"), "application/x-www-form-urlencoded", "token=" + live + "&client_id=alice", http.StatusForbidden},
		{"an approver", f.introspector(t, "bob"), "application/x-www-form-urlencoded", "token=" + live + "&client_id=bob", http.StatusForbidden},
		{"client_id of someone else (wrong client)", svc, "application/x-www-form-urlencoded", "token=" + live + "&client_id=dave", http.StatusUnauthorized},
		{"no client_id", svc, "application/x-www-form-urlencoded", "token=" + live, http.StatusBadRequest},
		{"no token", svc, "application/x-www-form-urlencoded", "client_id=svc-db", http.StatusBadRequest},
		{"the token twice", svc, "application/x-www-form-urlencoded", "token=" + live + "&token=x&client_id=svc-db", http.StatusBadRequest},
		{"JSON instead of a form", svc, "application/json", `{"token":"` + live + `","client_id":"svc-db"}`, http.StatusBadRequest},
		{"no content type", svc, "", "token=" + live + "&client_id=svc-db", http.StatusBadRequest},
		{"a malformed form", svc, "application/x-www-form-urlencoded", "token=%zz&client_id=svc-db", http.StatusBadRequest},
		{"an oversize body", svc, "application/x-www-form-urlencoded", "client_id=svc-db&token=" + strings.Repeat("a", 1<<20), http.StatusRequestEntityTooLarge},
	}
	for _, c := range refused {
		t.Run("refused: "+c.what, func(t *testing.T) {
			code, m := c.who.as(t).post(c.ct, c.body)
			if code != c.code || m["active"] != nil || m["error"] == nil {
				t.Fatalf("%d %v, want %d with an OAuth error and no answer", code, m, c.code)
			}
		})
	}
	t.Run("refused: GET", func(t *testing.T) {
		resp, err := svc.http.Get(svc.url + "?token=" + url.QueryEscape(live) + "&client_id=svc-db")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != http.MethodPost {
			t.Fatalf("GET: %s, Allow %q", resp.Status, resp.Header.Get("Allow"))
		}
	})

	t.Run("refused: a revoked client certificate", func(t *testing.T) {
		if code, m := revoked.as(t).token(live); code != http.StatusOK || m["active"] != true {
			t.Fatalf("before revocation: %d %v", code, m)
		}
		crl, err := ca.CRL(2, revoked.cert.SerialNumber)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(f.dir, "ca", "crl.pem"), crl, 0o644); err != nil {
			t.Fatal(err)
		}
		// The broker looks for a new CRL every second.
		var code int
		var m map[string]any
		waitFor(t, "the revoked certificate to be refused", func() bool {
			code, m = revoked.as(t).token(live)
			return code != http.StatusOK
		})
		if code != http.StatusUnauthorized || m["active"] != nil || !strings.Contains(fmt.Sprint(m["error_description"]), "revoked") {
			t.Fatalf("after revocation: %d %v", code, m)
		}
		if code, _ := dave.as(t).token(live); code != http.StatusOK {
			t.Fatalf("dave's own certificate after another of his was revoked: %d", code)
		}
	})

	t.Run("inactive: a revoked grant", func(t *testing.T) {
		ledgerReq := f.requestOf(t, f.tokens["ledger"])
		if _, err := f.client("alice").RevokeGrant(context.Background(), &bgv1.RevokeGrantRequest{RequestId: ledgerReq, Reason: "done"}); err != nil {
			t.Fatal(err)
		}
		inactive(t, svc, f.tokens["ledger"].GetToken())
		if code, m := svc.as(t).token(live); code != http.StatusOK || m["active"] != true {
			t.Fatalf("another grant's token after the revocation: %d %v", code, m)
		}
	})
	t.Run("inactive: an expired token (the broker's clock)", func(t *testing.T) {
		f.clk.Advance(21 * time.Minute)
		inactive(t, svc, live)
	})

	t.Run("rate limit per principal", func(t *testing.T) {
		var limited bool
		for range 200 {
			code, m := dave.as(t).token("x")
			if code == http.StatusTooManyRequests {
				if m["error"] != "slow_down" {
					t.Fatalf("429 with %v", m)
				}
				limited = true
				break
			}
		}
		if !limited {
			t.Fatal("200 calls in a row were not rate-limited")
		}
		if code, _ := svc.as(t).token("x"); code != http.StatusOK {
			t.Fatalf("svc-db after dave's flood: %d", code)
		}
	})
}

// certIntrospector is an introspection client with a certificate issued
// by ca for leaf, sending client_id id.
func (f *fedBroker) certIntrospector(t *testing.T, ca *devmode.CA, leaf devmode.LeafOptions, id string) *certIntrospectorT {
	t.Helper()
	cert, key, err := ca.Issue(leaf)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(f.caPEM)
	tc := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12,
		Certificates: []tls.Certificate{{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}}}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
	t.Cleanup(c.CloseIdleConnections)
	return &certIntrospectorT{introspector: &introspector{t: t, url: f.issuer("") + "/introspect", http: c, id: id}, cert: cert}
}

type certIntrospectorT struct {
	*introspector
	cert *x509.Certificate
}

// requestOf is the request id of an issued token.
func (f *fedBroker) requestOf(t *testing.T, tok *bgv1.IssueTokenResponse) string {
	t.Helper()
	payload, err := decodeSegment(strings.Split(tok.GetToken(), ".")[1])
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Request string `json:"bg_request"`
	}
	if err := json.Unmarshal(payload, &c); err != nil {
		t.Fatal(err)
	}
	return c.Request
}

func b64url(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
