package test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
)

// nodeRelyingParty is test/node: npm openid-client and jose, installed from
// its lock file by scripts/ensure-deps.sh test.
const nodeRelyingParty = "node"

// needNodePackages returns node's path when Node.js and the packages of
// the Node project in dir are installed; it skips otherwise, except under
// CI, where either missing is a broken setup.
func needNodePackages(t *testing.T, dir string, pkgs ...string) string {
	t.Helper()
	node := needTool(t, "node")
	for _, pkg := range pkgs {
		if _, err := os.Stat(filepath.Join(dir, "node_modules", pkg, "package.json")); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("npm package %s is not installed in %s (scripts/ensure-deps.sh test runs npm ci there): %v", pkg, dir, err)
			}
			t.Skipf("npm package %s is not installed in %s: run scripts/ensure-deps.sh test", pkg, dir)
		}
	}
	return node
}

// A relying party in Node.js, with stock npm libraries and nothing but the
// broker's issuer URL and CA certificate: openid-client's discovery()
// (OpenID Connect Discovery and RFC 8414) finds the issuer, jose verifies
// tokens against the JWKS it names, for the broker's issuer and an
// account's; a token of one issuer never verifies under another; and
// openid-client's tokenIntrospection() with the relying party's client
// certificate says a live token is active and a revoked or forged one is
// not.
func TestNodeRelyingParty(t *testing.T) {
	node := needNodePackages(t, nodeRelyingParty, "openid-client", "jose", "undici")
	f := startFedBroker(t)
	revoked := f.grantToken(t, "prod-db", "db.prod.example", false)
	if _, err := f.client("alice").RevokeGrant(context.Background(), &bgv1.RevokeGrantRequest{RequestId: f.requestOf(t, revoked), Reason: "done"}); err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(f.dir, "ca", "ca.crt")
	ids := filepath.Join(f.dir, "identities")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "relying-party.mjs")
	cmd.Dir = nodeRelyingParty
	cmd.Env = append(os.Environ(),
		"NODE_EXTRA_CA_CERTS="+ca,
		"BG_ISSUER="+f.issuer(""),
		"BG_TOKEN="+f.tokens["prod-db"].GetToken(),
		"BG_AUDIENCE=db.prod.example",
		"BG_ACCOUNT_ISSUER="+f.issuer("ledger"),
		"BG_ACCOUNT_TOKEN="+f.tokens["ledger"].GetToken(),
		"BG_ACCOUNT_AUDIENCE=ledger.example",
		"BG_OTHER_ACCOUNT_TOKEN="+f.tokens["payroll"].GetToken(),
		"BG_OTHER_ACCOUNT_AUDIENCE=payroll.example",
		"BG_REVOKED_TOKEN="+revoked.GetToken(),
		"BG_CA="+ca,
		"BG_CLIENT_ID=svc-db",
		"BG_CLIENT_CERT="+filepath.Join(ids, "svc-db.crt"),
		"BG_CLIENT_KEY="+filepath.Join(ids, "svc-db.key"),
	)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	t.Logf("node relying-party.mjs: %s", bytes.TrimSpace(stdout.Bytes()))
	if runErr != nil {
		t.Fatalf("the Node relying party failed: %v\n%s\n%s", runErr, stdout.Bytes(), stderr.Bytes())
	}
	var got struct {
		Broker, Account struct {
			Iss, Sub, Account, Alg string
			Algs                   []string
		}
		BrokerTokenUnderAccount       string
		OtherAccountTokenUnderAccount string
		AccountTokenUnderBroker       string
		RFC8414                       struct{ Issuer, Introspection string } `json:"rfc8414"`
		Introspection                 struct{ Live, Account, Revoked, Forged map[string]any }
	}
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
		t.Fatalf("%v: %s", err, stdout.Bytes())
	}
	for _, c := range []struct {
		what            string
		iss, account    string
		gotIss, gotAcct string
		gotAlg          string
		gotAlgs         []string
		sub             string
	}{
		{"broker issuer", f.issuer(""), "prod-db", got.Broker.Iss, got.Broker.Account, got.Broker.Alg, got.Broker.Algs, got.Broker.Sub},
		{"account issuer", f.issuer("ledger"), "ledger", got.Account.Iss, got.Account.Account, got.Account.Alg, got.Account.Algs, got.Account.Sub},
	} {
		if c.gotIss != c.iss || c.gotAcct != c.account || c.sub != "alice" || c.gotAlg != "ES256" || !reflect.DeepEqual(c.gotAlgs, []string{"ES256"}) {
			t.Errorf("%s: jose verified iss %q account %q sub %q alg %q (discovery listed %v)", c.what, c.gotIss, c.gotAcct, c.sub, c.gotAlg, c.gotAlgs)
		}
	}
	// jose refuses a token whose kid is not in the issuer's JWKS with
	// ERR_JWKS_NO_MATCHING_KEY, and one whose iss is not the issuer with
	// ERR_JWT_CLAIM_VALIDATION_FAILED; either is a refusal.
	for what, verdict := range map[string]string{
		"the broker's token under the ledger issuer": got.BrokerTokenUnderAccount,
		"payroll's token under the ledger issuer":    got.OtherAccountTokenUnderAccount,
		"ledger's token under the broker's issuer":   got.AccountTokenUnderBroker,
	} {
		if verdict != "refused: ERR_JWKS_NO_MATCHING_KEY" && verdict != "refused: ERR_JWT_CLAIM_VALIDATION_FAILED" {
			t.Errorf("%s: %s", what, verdict)
		}
	}
	if got.RFC8414.Issuer != f.issuer("") || got.RFC8414.Introspection != f.issuer("")+"/introspect" {
		t.Errorf("RFC 8414 discovery: %+v", got.RFC8414)
	}
	in := got.Introspection
	if in.Live["active"] != true || in.Live["sub"] != "alice" || in.Live["aud"] != "db.prod.example" || in.Live["iss"] != f.issuer("") || in.Live["bg_account"] != "prod-db" || in.Live["bg_drill"] != false {
		t.Errorf("introspection of a live token: %v", in.Live)
	}
	if in.Account["active"] != true || in.Account["iss"] != f.issuer("ledger") || in.Account["bg_account"] != "ledger" {
		t.Errorf("introspection of a live account token: %v", in.Account)
	}
	for what, m := range map[string]map[string]any{"revoked": in.Revoked, "forged": in.Forged} {
		if !reflect.DeepEqual(m, map[string]any{"active": false}) {
			t.Errorf("introspection of a %s token: %v, want {\"active\": false} alone", what, m)
		}
	}
}
