package policy

import (
	"errors"
	"strings"
	"testing"
)

// An account marked for GCP warns when its tokens could live 48 hours or
// more (GCP's Security Token Service refuses them); other consumers and
// shorter lifetimes do not; unknown or repeated consumers are problems;
// the warning is not part of the policy that is hashed and logged.
func TestFederationConsumers(t *testing.T) {
	with := func(federation, maxTTL string) string {
		s := strings.Replace(basePolicy, "    max_ttl: 1h\n", "    max_ttl: "+maxTTL+"\n", 1)
		if federation != "" {
			s += "    federation: " + federation + "\n"
		}
		return s
	}
	cases := []struct {
		name, federation, maxTTL string
		problem, warning         string
	}{
		{"unmarked, long", "", "72h", "", ""},
		{"gcp, short", "[gcp]", "1h", "", ""},
		{"gcp, just under 48h", "[gcp]", "47h59m59s", "", ""},
		{"gcp, exactly 48h", "[gcp]", "48h", "", "GCP workload identity federation refuses a token whose exp is not less than 48h0m0s after its iat"},
		{"gcp among others, 72h", "[aws, gcp, vault]", "72h", "", "accounts[0](prod-db).max_ttl"},
		{"aws, kubernetes and vault, 72h", "[aws, kubernetes, vault]", "72h", "", ""},
		{"unknown consumer", "[azure]", "1h", `unknown consumer "azure" (known: aws, gcp, kubernetes, vault)`, ""},
		{"repeated consumer", "[gcp, gcp]", "1h", `consumer "gcp" is listed twice`, ""},
		{"not a list", "gcp", "1h", "accounts[0](prod-db).federation", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := Load([]byte(with(c.federation, c.maxTTL)), "test.yaml")
			if c.problem != "" {
				var inv *InvalidError
				if !errors.As(err, &inv) || !strings.Contains(err.Error(), c.problem) {
					t.Fatalf("want a problem %q, got %v", c.problem, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, w := range p.Warnings() {
				got = append(got, w.String())
			}
			switch {
			case c.warning == "" && len(got) != 0:
				t.Fatalf("unexpected warnings %q", got)
			case c.warning != "" && (len(got) != 1 || !strings.Contains(got[0], c.warning) || p.Warnings()[0].Line == 0):
				t.Fatalf("warnings %q, want one with a line naming %q", got, c.warning)
			}
			if strings.Contains(string(p.CanonicalJSON()), "48h0m0s after") {
				t.Fatal("a warning leaked into the canonical policy")
			}
			a, _ := p.Account("prod-db")
			if c.federation != "" && len(a.Federation) == 0 {
				t.Fatalf("federation not kept: %+v", a)
			}
			if back, err := FromCanonicalJSON(p.CanonicalJSON()); err != nil || back.Hash() != p.Hash() {
				t.Fatalf("the logged form does not round-trip: %v", err)
			}
		})
	}
	// An unmarked account keeps the hash it had before federation existed.
	if strings.Contains(string(mustLoad(t, basePolicy).CanonicalJSON()), "federation") {
		t.Fatal("federation is written for an account that has none")
	}
}
