package test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"cel.dev/cel-go/cel"
	"github.com/go-jose/go-jose/v4"
	josejwt "github.com/go-jose/go-jose/v4/jwt"
	capjwt "github.com/hashicorp/cap/jwt"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	k8sauthn "k8s.io/apiserver/pkg/apis/apiserver"
	k8sauthninstall "k8s.io/apiserver/pkg/apis/apiserver/install"
	k8sauthnvalidation "k8s.io/apiserver/pkg/apis/apiserver/validation"
	authenticationcel "k8s.io/apiserver/pkg/authentication/cel"
	"k8s.io/apiserver/pkg/server/dynamiccertificates"
	k8soidc "k8s.io/apiserver/plugin/pkg/authenticator/token/oidc"

	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/server/config"
)

// readmeIssuer is the issuer the README's consumer configurations name;
// the tests put the test broker's in its place.
const readmeIssuer = "https://breakglass.example.com"

// readmeBlock returns the fenced block that follows <!-- consumer: name -->
// in the README, so that what the README shows is what is tested.
func readmeBlock(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	marker := "<!-- consumer: " + name + " -->\n"
	_, rest, ok := strings.Cut(string(b), marker)
	if !ok {
		t.Fatalf("README.md has no %q block", strings.TrimSpace(marker))
	}
	fence, rest, ok := strings.Cut(rest, "\n")
	if !ok || !strings.HasPrefix(fence, "```") {
		t.Fatalf("README.md: %s is not followed by a fenced block", strings.TrimSpace(marker))
	}
	body, _, ok := strings.Cut(rest, "\n```\n")
	if !ok {
		t.Fatalf("README.md: the %s block is not closed", name)
	}
	return body + "\n"
}

// consumerBroker is the federation broker with the README's platform
// account, marked for every consumer, and its tokens.
type consumerBroker struct {
	*fedBroker
	caFile string
	// live has a real token of the platform account per audience; drill
	// is a drill token of it.
	live  map[string]string
	drill string
}

func startConsumerBroker(t *testing.T) *consumerBroker {
	t.Helper()
	account := readmeBlock(t, "policy")
	pol := fedPolicy + account
	if _, err := policy.Load([]byte(pol), "README platform account"); err != nil {
		t.Fatalf("the README's platform account: %v", err)
	}
	f := startFedBrokerWith(t, pol)
	c := &consumerBroker{fedBroker: f, caFile: filepath.Join(f.dir, "ca", "ca.crt"), live: map[string]string{}}
	for _, aud := range []string{"vault.prod.example", "kubernetes.prod.example", "sts.amazonaws.com", gcpAudience(t)} {
		c.live[aud] = f.grantToken(t, "platform", aud, false).GetToken()
	}
	c.drill = f.grantToken(t, "platform", "drill.platform.example", true).GetToken()
	return c
}

// local puts the test broker's issuer where the README names its own.
func (c *consumerBroker) local(s string) string {
	return strings.ReplaceAll(s, readmeIssuer, c.issuer(""))
}

// shellCommands splits a README shell block into commands (joining
// continued lines) and each into words, with the quoting the blocks use.
func shellCommands(t *testing.T, block string) [][]string {
	t.Helper()
	var out [][]string
	var cur strings.Builder
	sc := bufio.NewScanner(strings.NewReader(block))
	for sc.Scan() {
		line := sc.Text()
		if cont, ok := strings.CutSuffix(line, "\\"); ok {
			cur.WriteString(cont + " ")
			continue
		}
		cur.WriteString(line)
		if s := strings.TrimSpace(cur.String()); s != "" {
			out = append(out, shellWords(t, s))
		}
		cur.Reset()
	}
	return out
}

func shellWords(t *testing.T, s string) []string {
	t.Helper()
	var words []string
	var w strings.Builder
	in, quote := false, rune(0)
	for _, r := range s {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			w.WriteRune(r)
		case r == '\'' || r == '"':
			quote, in = r, true
		case r == ' ' || r == '\t':
			if in {
				words = append(words, w.String())
				w.Reset()
				in = false
			}
		default:
			w.WriteRune(r)
			in = true
		}
	}
	if quote != 0 {
		t.Fatalf("unbalanced quote in %q", s)
	}
	if in {
		words = append(words, w.String())
	}
	return words
}

// keyValues reads the key=value arguments of a vault write.
func keyValues(t *testing.T, words []string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, w := range words {
		k, v, ok := strings.Cut(w, "=")
		if !ok {
			t.Fatalf("vault write argument %q is not key=value", w)
		}
		out[k] = v
	}
	return out
}

// flags reads --name=value and --name value arguments.
func flags(words []string) map[string]string {
	out := map[string]string{}
	for i := 0; i < len(words); i++ {
		name, ok := strings.CutPrefix(words[i], "--")
		if !ok {
			continue
		}
		if k, v, ok := strings.Cut(name, "="); ok {
			out[k] = v
		} else if i+1 < len(words) {
			out[name] = words[i+1]
			i++
		}
	}
	return out
}

func gcpAudience(t *testing.T) string {
	t.Helper()
	for _, cmd := range shellCommands(t, readmeBlock(t, "gcp")) {
		if a := flags(cmd)["allowed-audiences"]; a != "" {
			return a
		}
	}
	t.Fatal("the README's gcloud command has no --allowed-audiences")
	return ""
}

// The configurations the README gives for Vault, Kubernetes, AWS and GCP,
// read out of the README and run against a broker by the code or the
// rules each consumer applies: the platform account's real tokens are
// accepted with sub as the user, and drill tokens, tokens for another
// audience, tokens of another issuer and tampered tokens are refused.
func TestFederationConsumerConfigs(t *testing.T) {
	c := startConsumerBroker(t)
	ctx := context.Background()
	prodDB := c.tokens["prod-db"].GetToken()
	ledger := c.tokens["ledger"].GetToken()
	tamper := func(tok string) string { return tok[:len(tok)-6] + "AAAAAA" }

	t.Run("vault", func(t *testing.T) { vaultConfig(ctx, t, c, prodDB, ledger, tamper) })
	t.Run("kubernetes", func(t *testing.T) { kubernetesConfig(ctx, t, c, prodDB, ledger, tamper) })
	t.Run("aws", func(t *testing.T) { awsConfig(ctx, t, c) })
	t.Run("gcp", func(t *testing.T) { gcpConfig(ctx, t, c) })
}

// Vault's JWT auth method with oidc_discovery_url verifies with
// hashicorp/cap: an OIDC discovery key set with the discovery CA, and
// Expected built from bound_issuer, bound_audiences and jwt_supported_algs;
// then bound_claims must match and user_claim names the user.
func vaultConfig(ctx context.Context, t *testing.T, c *consumerBroker, prodDB, ledger string, tamper func(string) string) {
	var cfg, role map[string]string
	for _, cmd := range shellCommands(t, c.local(readmeBlock(t, "vault"))) {
		if len(cmd) < 3 || cmd[0] != "vault" || cmd[1] != "write" {
			continue
		}
		switch {
		case cmd[2] == "auth/jwt/config":
			cfg = keyValues(t, cmd[3:])
		case strings.HasPrefix(cmd[2], "auth/jwt/role/"):
			role = keyValues(t, cmd[3:])
		}
	}
	if cfg == nil || role == nil {
		t.Fatal("the README's Vault block lacks the config or the role")
	}
	if cfg["oidc_discovery_ca_pem"] != "@ca.crt" || cfg["jwt_supported_algs"] != "ES256" || role["role_type"] != "jwt" || role["user_claim"] != "sub" {
		t.Fatalf("Vault settings: %v %v", cfg, role)
	}
	caPEM, err := os.ReadFile(c.caFile)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := capjwt.NewOIDCDiscoveryKeySet(ctx, cfg["oidc_discovery_url"], string(caPEM))
	if err != nil {
		t.Fatalf("Vault's discovery of %s: %v", cfg["oidc_discovery_url"], err)
	}
	validator, err := capjwt.NewValidator(keys)
	if err != nil {
		t.Fatal(err)
	}
	var bound map[string]any
	if err := json.Unmarshal([]byte(role["bound_claims"]), &bound); err != nil {
		t.Fatalf("bound_claims: %v", err)
	}
	login := func(tok string) (string, error) {
		claims, err := validator.Validate(ctx, tok, capjwt.Expected{
			Issuer: cfg["bound_issuer"], Audiences: strings.Split(role["bound_audiences"], ","),
			SigningAlgorithms: []capjwt.Alg{capjwt.Alg(cfg["jwt_supported_algs"])}, Now: c.clk.Now,
		})
		if err != nil {
			return "", err
		}
		for k, want := range bound {
			if claims[k] != want {
				return "", fmt.Errorf("bound claim %s: %v, want %v", k, claims[k], want)
			}
		}
		user, _ := claims[role["user_claim"]].(string)
		return user, nil
	}
	if user, err := login(c.live["vault.prod.example"]); err != nil || user != "alice" {
		t.Fatalf("Vault login with the platform token: %q %v", user, err)
	}
	for what, tok := range map[string]string{
		"a drill token": c.drill, "a token for Kubernetes": c.live["kubernetes.prod.example"],
		"a token of another account": prodDB, "a token of another issuer": ledger, "a tampered token": tamper(c.live["vault.prod.example"]),
	} {
		if user, err := login(tok); err == nil {
			t.Errorf("Vault accepted %s as %q", what, user)
		}
	}
}

// kube-apiserver's --authentication-config, decoded strictly with the
// apiserver's scheme, validated, and run by its JWT authenticator (what
// kube-apiserver does with it, all signing algorithms allowed as it allows
// them with a configuration file).
func kubernetesConfig(ctx context.Context, t *testing.T, c *consumerBroker, prodDB, ledger string, tamper func(string) string) {
	caPEM, err := os.ReadFile(c.caFile)
	if err != nil {
		t.Fatal(err)
	}
	doc := c.local(readmeBlock(t, "kubernetes"))
	placeholder := regexp.MustCompile(`(?m)^( +)-----BEGIN CERTIFICATE-----\n[^\n]*\n +-----END CERTIFICATE-----\n`)
	indent := placeholder.FindStringSubmatch(doc)
	if indent == nil {
		t.Fatal("the README's AuthenticationConfiguration has no certificateAuthority placeholder")
	}
	var pemLines strings.Builder
	for _, l := range strings.Split(strings.TrimSpace(string(caPEM)), "\n") {
		pemLines.WriteString(indent[1] + l + "\n")
	}
	doc = placeholder.ReplaceAllLiteralString(doc, pemLines.String())

	scheme := runtime.NewScheme()
	k8sauthninstall.Install(scheme)
	obj, gvk, err := serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDecoder().Decode([]byte(doc), nil, nil)
	if err != nil {
		t.Fatalf("kube-apiserver would not load the README's AuthenticationConfiguration: %v", err)
	}
	cfg, ok := obj.(*k8sauthn.AuthenticationConfiguration)
	if !ok || len(cfg.JWT) != 1 {
		t.Fatalf("decoded %s as %T", gvk, obj)
	}
	compiler := authenticationcel.NewDefaultCompiler()
	if errs := k8sauthnvalidation.ValidateAuthenticationConfiguration(compiler, cfg, nil); len(errs) > 0 {
		t.Fatalf("the README's AuthenticationConfiguration is invalid: %v", errs.ToAggregate())
	}
	ca, err := dynamiccertificates.NewStaticCAContent("breakglass", []byte(cfg.JWT[0].Issuer.CertificateAuthority))
	if err != nil {
		t.Fatal(err)
	}
	lifecycle, cancel := context.WithCancel(ctx)
	defer cancel()
	authn, err := k8soidc.New(lifecycle, k8soidc.Options{JWTAuthenticator: cfg.JWT[0], CAContentProvider: ca,
		SupportedSigningAlgs: k8soidc.AllValidSigningAlgorithms(), Compiler: compiler})
	if err != nil {
		t.Fatal(err)
	}
	// It discovers the issuer in the background; poll until it has.
	deadline := time.Now().Add(20 * time.Second)
	for authn.HealthCheck() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("the Kubernetes authenticator never discovered the issuer: %v", authn.HealthCheck())
		}
		time.Sleep(20 * time.Millisecond)
	}
	resp, ok, err := authn.AuthenticateToken(ctx, c.live["kubernetes.prod.example"])
	if err != nil || !ok {
		t.Fatalf("Kubernetes refused the platform token: %v", err)
	}
	var req struct {
		Request string `json:"bg_request"`
	}
	payload, _ := decodeSegment(strings.Split(c.live["kubernetes.prod.example"], ".")[1])
	_ = json.Unmarshal(payload, &req)
	if u := resp.User; u.GetName() != "breakglass:alice" || len(u.GetExtra()["breakglass.example.com/request"]) != 1 || u.GetExtra()["breakglass.example.com/request"][0] != req.Request {
		t.Fatalf("Kubernetes user %q extra %v", u.GetName(), u.GetExtra())
	}
	for what, tok := range map[string]string{
		"a drill token": c.drill, "a token for Vault": c.live["vault.prod.example"],
		"a token of another account": prodDB, "a token of another issuer": ledger, "a tampered token": tamper(c.live["kubernetes.prod.example"]),
	} {
		if resp, ok, _ := authn.AuthenticateToken(ctx, tok); ok {
			t.Errorf("Kubernetes accepted %s as %q", what, resp.User.GetName())
		}
	}
}

// AWS cannot be reached from here: the README's provider and trust policy
// are checked against IAM's documented rules, and the broker's documents
// and tokens against what STS requires of an OIDC provider.
func awsConfig(ctx context.Context, t *testing.T, c *consumerBroker) {
	var provider map[string]string
	for _, cmd := range shellCommands(t, readmeBlock(t, "aws")) {
		if len(cmd) > 2 && cmd[0] == "aws" && cmd[2] == "create-open-id-connect-provider" {
			provider = flags(cmd)
		}
	}
	if provider == nil {
		t.Fatal("the README's AWS block has no create-open-id-connect-provider")
	}
	// The provider URL: https, no port, no query, and an issuer the
	// broker accepts outside dev mode.
	u, err := url.Parse(provider["url"])
	if err != nil || u.Scheme != "https" || u.Port() != "" || u.RawQuery != "" || config.ValidateIssuer(provider["url"], false) != nil {
		t.Fatalf("the README's provider URL %q: %v %v", provider["url"], err, config.ValidateIssuer(provider["url"], false))
	}
	var trust struct {
		Statement []struct {
			Principal struct{ Federated string }
			Action    string
			Condition map[string]map[string]string
		}
	}
	if err := json.Unmarshal([]byte(readmeBlock(t, "aws-trust")), &trust); err != nil || len(trust.Statement) != 1 {
		t.Fatalf("the README's trust policy: %v", err)
	}
	st := trust.Statement[0]
	name := strings.TrimPrefix(provider["url"], "https://")
	if !strings.HasSuffix(st.Principal.Federated, ":oidc-provider/"+name) || st.Action != "sts:AssumeRoleWithWebIdentity" {
		t.Fatalf("the trust policy names %q for %q", st.Principal.Federated, st.Action)
	}
	aud := st.Condition["StringEquals"][name+":aud"]
	if aud == "" || aud != provider["client-id-list"] || st.Condition["StringLike"][name+":sub"] == "" {
		t.Fatalf("the trust policy's conditions %v do not name the provider's aud and sub", st.Condition)
	}

	// What STS does with a token: discovery at iss, the JWKS it names, a
	// kid found there, an algorithm it accepts, and aud in the client ids.
	tok := c.live[aud]
	set := discoveredKeys(ctx, t, c, c.issuer(""))
	claims := verifyWith(t, set, tok, c.issuer(""), aud, c.clk.Now())
	if claims.Subject != "alice" {
		t.Fatalf("sub %q", claims.Subject)
	}
}

// GCP cannot be reached either: its attribute mapping and condition are
// CEL, evaluated here with cel-go over real claims; its documented token
// rules (ES256 with a kid, exp less than 48 hours after iat, an allowed
// audience, google.subject at most 127 bytes) are checked of the tokens.
func gcpConfig(ctx context.Context, t *testing.T, c *consumerBroker) {
	var fl map[string]string
	for _, cmd := range shellCommands(t, readmeBlock(t, "gcp")) {
		if len(cmd) > 0 && cmd[0] == "gcloud" {
			fl = flags(cmd)
		}
	}
	if fl == nil || fl["issuer-uri"] != readmeIssuer {
		t.Fatalf("the README's gcloud command: %v", fl)
	}
	aud := fl["allowed-audiences"]
	set := discoveredKeys(ctx, t, c, c.local(fl["issuer-uri"]))
	env, err := cel.NewEnv(cel.Variable("assertion", cel.MapType(cel.StringType, cel.DynType)))
	if err != nil {
		t.Fatal(err)
	}
	eval := func(expr string, claims map[string]any) any {
		t.Helper()
		ast, iss := env.Compile(expr)
		if iss.Err() != nil {
			t.Fatalf("CEL %q: %v", expr, iss.Err())
		}
		prg, err := env.Program(ast)
		if err != nil {
			t.Fatal(err)
		}
		out, _, err := prg.Eval(map[string]any{"assertion": claims})
		if err != nil {
			t.Fatalf("CEL %q: %v", expr, err)
		}
		return out.Value()
	}
	claimsOf := func(tok string) map[string]any {
		payload, err := decodeSegment(strings.Split(tok, ".")[1])
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(payload, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	tok := c.live[aud]
	claims := verifyWith(t, set, tok, c.issuer(""), aud, c.clk.Now())
	if life := claims.Expiry.Time().Sub(claims.IssuedAt.Time()); life >= policy.GCPMaxTokenLifetime {
		t.Fatalf("a token for GCP lives %s", life)
	}
	mapped := map[string]any{}
	for _, m := range strings.Split(fl["attribute-mapping"], ",") {
		k, expr, _ := strings.Cut(m, "=")
		mapped[k] = eval(expr, claimsOf(tok))
	}
	if sub, _ := mapped["google.subject"].(string); sub != "alice" || len(sub) > 127 || mapped["attribute.account"] != "platform" {
		t.Fatalf("GCP attributes %v", mapped)
	}
	if eval(fl["attribute-condition"], claimsOf(tok)) != true {
		t.Fatal("the attribute condition refuses the platform token")
	}
	for what, tok := range map[string]string{"a drill token": c.drill, "a token of another account": c.tokens["prod-db"].GetToken()} {
		if eval(fl["attribute-condition"], claimsOf(tok)) != false {
			t.Errorf("the attribute condition accepts %s", what)
		}
	}
}

// discoveredKeys fetches issuer's discovery document and the JWKS it
// names, as a consumer does, and checks the document names issuer.
func discoveredKeys(_ context.Context, t *testing.T, c *consumerBroker, issuer string) *jose.JSONWebKeySet {
	t.Helper()
	meta, resp := c.getJSON(t, issuer+"/.well-known/openid-configuration")
	if resp.StatusCode != 200 || meta["issuer"] != issuer {
		t.Fatalf("discovery of %s: %s %v", issuer, resp.Status, meta["issuer"])
	}
	r, err := c.http.Get(meta["jwks_uri"].(string))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	var set jose.JSONWebKeySet
	if err := json.NewDecoder(r.Body).Decode(&set); err != nil || len(set.Keys) == 0 {
		t.Fatalf("jwks: %v", err)
	}
	return &set
}

// verifyWith checks tok as STS and GCP's STS are documented to: an ES256
// signature by the key its kid names in set, iss, aud, and times.
func verifyWith(t *testing.T, set *jose.JSONWebKeySet, tok, issuer, aud string, now time.Time) josejwt.Claims {
	t.Helper()
	parsed, err := josejwt.ParseSigned(tok, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil || len(parsed.Headers) != 1 {
		t.Fatal(err)
	}
	kid := parsed.Headers[0].KeyID
	keys := set.Key(kid)
	if kid == "" || len(keys) != 1 {
		t.Fatalf("kid %q: %d keys in the JWKS", kid, len(keys))
	}
	var claims josejwt.Claims
	if err := parsed.Claims(keys[0].Key, &claims); err != nil {
		t.Fatal(err)
	}
	if err := claims.ValidateWithLeeway(josejwt.Expected{Issuer: issuer, AnyAudience: josejwt.Audience{aud}, Time: now}, 0); err != nil {
		t.Fatal(err)
	}
	return claims
}

// breakglassd policy check prints, and the daemon logs, the warning the
// README shows for an account marked for GCP whose tokens could live 48
// hours or more; the policy stays valid.
func TestPolicyCheckWarnsAboutGCPLifetimes(t *testing.T) {
	account := readmeBlock(t, "policy")
	if strings.Count(account, "    max_ttl: 1h\n") != 1 {
		t.Fatal("the README's platform account has no max_ttl: 1h to lengthen")
	}
	long := fedPolicy + strings.Replace(account, "    max_ttl: 1h\n", "    max_ttl: 72h\n", 1)
	file := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(file, []byte(long), 0o600); err != nil {
		t.Fatal(err)
	}
	r := runCmd(t, os.Environ(), "", bin.breakglassd, "policy", "check", "--policy", file)
	want := "accounts[3](platform).max_ttl: 72h0m0s lets tokens live 72h0m0s, but the account is marked for gcp and GCP workload identity federation refuses a token whose exp is not less than 48h0m0s after its iat"
	if r.code != 0 || !strings.Contains(r.stdout, "warning: "+file+":") || !strings.Contains(r.stdout, want) {
		t.Fatalf("policy check: %+v", r)
	}
	short := strings.Replace(long, "max_ttl: 72h", "max_ttl: 47h", 1)
	if err := os.WriteFile(file, []byte(short), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := runCmd(t, os.Environ(), "", bin.breakglassd, "policy", "check", "--policy", file); r.code != 0 || strings.Contains(r.stdout, "warning:") {
		t.Fatalf("policy check of a 47h account: %+v", r)
	}
}
