package policy

import (
	"slices"
	"strings"
	"testing"
)

func withCredentials(section string) string {
	return basePolicy + section
}

func TestCredentialSections(t *testing.T) {
	p := mustLoad(t, withCredentials(`    ssh:
      principals: [breakglass, postgres]
      drill_principals: [drill]
      source_addresses: [10.0.0.0/8, 192.0.2.7, "2001:db8::/32"]
      force_command: /usr/local/bin/recovery-shell
      extensions: [permit-pty, permit-agent-forwarding]
      max_ttl: 30m
    x509:
      common_name: "{requester}"
      drill_common_name: "drill-{requester}"
      dns_names: ["{requester}.users.example.com"]
      uri_sans: ["spiffe://example.com/breakglass/{account}/{requester}"]
`))
	a, _ := p.Account("prod-db")
	if a.SSH == nil || !slices.Equal(a.SSH.Principals, []string{"breakglass", "postgres"}) || a.SSH.MaxTTL.D().Minutes() != 30 ||
		!slices.Equal(a.SSH.Extensions, []string{"permit-agent-forwarding", "permit-pty"}) {
		t.Fatalf("ssh %+v", a.SSH)
	}
	if a.X509 == nil || a.X509.CommonName != "{requester}" || !slices.Equal(a.X509.ExtKeyUsage, []string{"client_auth"}) {
		t.Fatalf("x509 %+v", a.X509)
	}
	if got := Expand(a.X509.URISANs[0], "alice", a.Name); got != "spiffe://example.com/breakglass/prod-db/alice" {
		t.Fatalf("expand %q", got)
	}
	// Defaults: permit-pty only; client_auth.
	d := mustLoad(t, withCredentials("    ssh: {principals: [breakglass]}\n    x509: {common_name: \"{requester}\"}\n"))
	da, _ := d.Account("prod-db")
	if !slices.Equal(da.SSH.Extensions, []string{"permit-pty"}) || da.SSH.MaxTTL != 0 || !slices.Equal(da.X509.ExtKeyUsage, []string{"client_auth"}) {
		t.Fatalf("defaults %+v %+v", da.SSH, da.X509)
	}
	// The sections are part of the policy's hash and its changes.
	if d.Hash() == mustLoad(t, basePolicy).Hash() {
		t.Fatal("credential sections do not change the hash")
	}
	ch := strings.Join(Changes(mustLoad(t, basePolicy), d), "\n")
	if !strings.Contains(ch, "WEAKENS accounts[prod-db].ssh added") || !strings.Contains(ch, "(SSH certificates are now issued)") ||
		!strings.Contains(ch, "WEAKENS accounts[prod-db].x509 added") {
		t.Fatalf("changes: %s", ch)
	}
	// Round trip through the logged form.
	back, err := FromCanonicalJSON(p.CanonicalJSON())
	if err != nil || back.Hash() != p.Hash() {
		t.Fatalf("canonical round trip: %v", err)
	}
}

func TestCredentialSectionsFailClosed(t *testing.T) {
	cases := map[string]struct{ section, want string }{
		"no principals":         {"    ssh: {principals: []}\n", "must not be empty"},
		"principals missing":    {"    ssh: {extensions: [permit-pty]}\n", "principals: is required"},
		"bad principal":         {"    ssh: {principals: [\"root,admin\"]}\n", "must be letters"},
		"wildcard principal":    {"    ssh: {principals: [\"*\"]}\n", "must be letters"},
		"duplicate principal":   {"    ssh: {principals: [a, a]}\n", "listed twice"},
		"drill is real":         {"    ssh: {principals: [a], drill_principals: [a]}\n", "also a real principal"},
		"bad cidr":              {"    ssh: {principals: [a], source_addresses: [10.0.0.0/33]}\n", "not an address or CIDR"},
		"host bits":             {"    ssh: {principals: [a], source_addresses: [10.1.2.3/8]}\n", "host bits set; did you mean 10.0.0.0/8"},
		"empty sources":         {"    ssh: {principals: [a], source_addresses: []}\n", "must not be empty when set"},
		"two-line command":      {"    ssh: {principals: [a], force_command: \"a\\nb\"}\n", "one line"},
		"unknown extension":     {"    ssh: {principals: [a], extensions: [permit-everything]}\n", "unknown extension"},
		"ssh ttl above account": {"    ssh: {principals: [a], max_ttl: 2h}\n", "must not exceed the account's max_ttl"},
		"unknown ssh setting":   {"    ssh: {principals: [a], permit_root: true}\n", "unknown setting \"permit_root\""},
		"no common name":        {"    x509: {dns_names: [a.example.com]}\n", "common_name: is required"},
		"unknown template":      {"    x509: {common_name: \"{hostname}\"}\n", "not a template field"},
		"unbalanced":            {"    x509: {common_name: \"{requester\"}\n", "unbalanced braces"},
		"long common name":      {"    x509: {common_name: \"" + strings.Repeat("x", 65) + "\"}\n", "not a common name"},
		"control in cn":         {"    x509: {common_name: \"a\\tb\"}\n", "not a common name"},
		"dns from principal":    {"    x509: {common_name: x, dns_names: [\"{requester}_host\"]}\n", "not a lower-case DNS name"},
		"bad uri":               {"    x509: {common_name: x, uri_sans: [\"not a uri\"]}\n", "not an absolute URI"},
		"drill cn is real":      {"    x509: {common_name: \"{requester}\", drill_common_name: \"{requester}\"}\n", "must differ from common_name"},
		"unknown eku":           {"    x509: {common_name: x, ext_key_usage: [any]}\n", "unknown extended key usage"},
		"empty eku":             {"    x509: {common_name: x, ext_key_usage: []}\n", "must not be empty"},
		"x509 ttl above":        {"    x509: {common_name: x, max_ttl: 3h}\n", "must not exceed the account's max_ttl"},
		"ssh not a mapping":     {"    ssh: [a]\n", "must be a mapping"},
	}
	for name, c := range cases {
		_, err := Load([]byte(withCredentials(c.section)), "test.yaml")
		if err == nil {
			t.Errorf("%s: loaded", name)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
}

// Changes to the certificate sections are marked weakening when they widen
// what a grant's certificates can do.
func TestCredentialChangesWeaken(t *testing.T) {
	base := "    ssh: {principals: [a], source_addresses: [10.0.0.0/8], force_command: /bin/x, max_ttl: 30m}\n    x509: {common_name: \"{requester}\", max_ttl: 30m}\n"
	from := mustLoad(t, withCredentials(base))
	cases := map[string]struct {
		section string
		weakens bool
	}{
		"a principal added":       {strings.Replace(base, "[a]", "[a, b]", 1), true},
		"a principal removed":     {strings.Replace(strings.Replace(base, "[a]", "[a, b]", 1), "[a, b]", "[b]", 1), true},
		"source-address dropped":  {strings.Replace(base, "source_addresses: [10.0.0.0/8], ", "", 1), true},
		"source-address narrowed": {strings.Replace(base, "10.0.0.0/8", "10.1.0.0/16", 1), true},
		"force-command dropped":   {strings.Replace(base, "force_command: /bin/x, ", "", 1), true},
		"ssh max_ttl shorter":     {strings.Replace(base, "max_ttl: 30m}\n    x509", "max_ttl: 10m}\n    x509", 1), false},
		"ssh max_ttl dropped":     {strings.Replace(base, ", max_ttl: 30m}\n    x509", "}\n    x509", 1), true},
		"another common name":     {strings.Replace(base, "{requester}", "admin", 1), true},
		"a DNS name added":        {strings.Replace(base, `"{requester}", max_ttl: 30m}`, `"{requester}", max_ttl: 30m, dns_names: [a.example.com]}`, 1), true},
		"ssh section removed":     {"    x509: {common_name: \"{requester}\", max_ttl: 30m}\n", false},
		"x509 usage server added": {strings.Replace(base, `"{requester}", max_ttl: 30m}`, `"{requester}", max_ttl: 30m, ext_key_usage: [client_auth, server_auth]}`, 1), true},
	}
	for name, c := range cases {
		to := mustLoad(t, withCredentials(c.section))
		if got := Weakens(Diff(from, to)); got != c.weakens {
			t.Errorf("%s: weakens = %v, want %v (%v)", name, got, c.weakens, ChangeLines(from, to))
		}
	}
}
