package policy

import (
	"errors"
	"strings"
	"testing"
	"time"
)

const basePolicy = `
auditors: auditors
relying_parties: relying
groups:
  sre: [alice, frank]
  db-admins: [bob, carol]
  security: [erin, carol]
  auditors: [dave]
  relying: [svc-db]
  owners: [olivia]
accounts:
  - name: prod-db
    description: Production database superuser
    owner: owners
    requesters: [sre]
    audiences: [db.prod.example]
    max_ttl: 1h
    approval_window: 30m
    activation_window: 10m
    quorum:
      - require:
          - {group: db-admins, approvals: 1}
          - {group: security, approvals: 1}
`

// adminPolicy is basePolicy with policy admins: one of security and one
// of db-admins must agree to change it.
const adminPolicy = basePolicy + `policy_admins: [{require: [{group: security, approvals: 1}, {group: db-admins, approvals: 1}]}]
policy_change_window: 48h
`

func mustLoad(t *testing.T, src string) *Policy {
	t.Helper()
	p, err := Load([]byte(src), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadValid(t *testing.T) {
	p := mustLoad(t, basePolicy)
	a, ok := p.Account("prod-db")
	if !ok {
		t.Fatal("account missing")
	}
	if a.MaxIssuances != DefaultMaxIssuances || a.DenyThreshold != DefaultDenyThreshold || a.MaxTTL.D() != time.Hour {
		t.Errorf("defaults: %+v", a)
	}
	if p.MaxDuration.D() != DefaultCeiling {
		t.Errorf("ceiling %s", p.MaxDuration.D())
	}
	if !p.CanRequest(a, "alice") || p.CanRequest(a, "bob") {
		t.Error("CanRequest")
	}
	if !p.IsAuditor("dave") || p.IsAuditor("alice") || !p.IsRelyingParty("svc-db") {
		t.Error("roles")
	}
	if len(p.Hash()) != 64 {
		t.Errorf("hash %q", p.Hash())
	}
	// Layout does not change the hash; content does.
	reordered := strings.Replace(basePolicy, "  sre: [alice, frank]", "  sre:\n    - frank\n    - alice", 1)
	if mustLoad(t, reordered).Hash() != p.Hash() {
		t.Error("hash depends on layout")
	}
	changed := strings.Replace(basePolicy, "max_ttl: 1h", "max_ttl: 2h", 1)
	if mustLoad(t, changed).Hash() == p.Hash() {
		t.Error("hash ignores max_ttl")
	}
	// The logged form rebuilds the same policy.
	back, err := FromCanonicalJSON(p.CanonicalJSON())
	if err != nil || back.Hash() != p.Hash() {
		t.Errorf("canonical round trip: %v %s", err, back.Hash())
	}
	if got := a.Quorum.String(); !strings.HasPrefix(got, "1 of db-admins and 1 of security") {
		t.Errorf("rule in words: %q", got)
	}
}

func TestLoadProblems(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(string) string
		want    []string
		wantPos string
	}{
		{"unknown setting", func(s string) string {
			return strings.Replace(s, "    max_ttl: 1h", "    max_tll: 1h\n    max_ttl: 1h", 1)
		},
			[]string{`unknown setting "max_tll"`}, "test.yaml:17:5: accounts[0]"},
		{"unknown group in quorum", func(s string) string {
			return strings.Replace(s, "{group: security, approvals: 1}", "{group: secops, approvals: 1}", 1)
		},
			[]string{`unknown group "secops"`}, "quorum[0].require[1].group"},
		{"unknown requester group", func(s string) string { return strings.Replace(s, "requesters: [sre]", "requesters: [nobody]", 1) },
			[]string{`unknown group "nobody"`}, "requesters[0]"},
		{"unknown owner", func(s string) string { return strings.Replace(s, "owner: owners", "owner: ghosts", 1) },
			[]string{`unknown group "ghosts"`}, ".owner"},
		{"unknown auditors group", func(s string) string { return strings.Replace(s, "auditors: auditors", "auditors: audit", 1) },
			[]string{`unknown group "audit"`}, "test.yaml:2:"},
		{"zero approvals", func(s string) string {
			return strings.Replace(s, "{group: security, approvals: 1}", "{group: security, approvals: 0}", 1)
		},
			[]string{"must be at least 1"}, "approvals"},
		{"alternative with no requirements", func(s string) string {
			return strings.Replace(s, "      - require:\n", "      - require: []\n      - require:\n", 1)
		}, []string{"needs zero approvals"}, "quorum[0]"},
		{"unmeetable once the requester is excluded", func(s string) string {
			// carol is both requester (sre) and the only other security member
			s = strings.Replace(s, "sre: [alice, frank]", "sre: [alice, erin]", 1)
			return strings.Replace(s, "security: [erin, carol]", "security: [erin]", 1)
		}, []string{"cannot be met when erin requests"}, "quorum[0]"},
		{"one person cannot fill two requirements", func(s string) string {
			s = strings.Replace(s, "db-admins: [bob, carol]", "db-admins: [carol]", 1)
			return strings.Replace(s, "security: [erin, carol]", "security: [carol]", 1)
		}, []string{"cannot be met when alice requests", "only 1 eligible (carol)"}, "quorum[0]"},
		{"audience shared by two accounts", func(s string) string {
			return s + `
  - name: other
    owner: owners
    requesters: [sre]
    audiences: [db.prod.example]
    max_ttl: 1h
    approval_window: 30m
    activation_window: 10m
    quorum:
      - require: [{group: db-admins, approvals: 1}]
`
		}, []string{`audience "db.prod.example" is already used by account "prod-db"`}, "accounts[1](other)"},
		{"window below a second", func(s string) string { return strings.Replace(s, "approval_window: 30m", "approval_window: 500ms", 1) },
			[]string{"shorter than 1s"}, "approval_window"},
		{"TTL above the ceiling", func(s string) string { return strings.Replace(s, "max_ttl: 1h", "max_ttl: 200h", 1) },
			[]string{"longer than the ceiling of 168h0m0s"}, "max_ttl"},
		{"configured ceiling", func(s string) string { return "max_duration: 30m\n" + s },
			[]string{"max_ttl: 1h0m0s is longer than the ceiling of 30m0s"}, "max_ttl"},
		{"missing window", func(s string) string { return strings.Replace(s, "    activation_window: 10m\n", "", 1) },
			[]string{"activation_window: is required"}, ""},
		{"not a duration", func(s string) string { return strings.Replace(s, "max_ttl: 1h", "max_ttl: soon", 1) },
			[]string{`"soon" is not a duration`}, ""},
		{"negative issuances", func(s string) string {
			return strings.Replace(s, "    max_ttl: 1h", "    max_issuances: -1\n    max_ttl: 1h", 1)
		},
			[]string{"max_issuances: must be between 1 and 1000"}, ""},
		{"deny threshold beyond approvers", func(s string) string {
			return strings.Replace(s, "    max_ttl: 1h", "    deny_threshold: 9\n    max_ttl: 1h", 1)
		},
			[]string{"deny_threshold: is 9 but only 3 approvers"}, ""},
		{"bad principal", func(s string) string { return strings.Replace(s, "sre: [alice, frank]", "sre: [alice, \"fr ank\"]", 1) },
			[]string{`principal "fr ank"`}, ""},
		{"duplicate account", func(s string) string {
			i := strings.Index(s, "  - name: prod-db")
			return s + s[i:]
		}, []string{`account "prod-db" is defined twice`}, ""},
		{"duplicate group in an alternative", func(s string) string {
			return strings.Replace(s, "{group: security, approvals: 1}", "{group: db-admins, approvals: 1}", 1)
		}, []string{`group "db-admins" appears twice`}, ""},
		{"empty requester groups", func(s string) string { return strings.Replace(s, "sre: [alice, frank]", "sre: []", 1) },
			[]string{"nobody could use this account"}, ""},
		{"not YAML", func(string) string { return "groups: [unclosed" }, []string{"not valid YAML"}, ""},
		{"empty", func(string) string { return "" }, []string{"empty"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load([]byte(tc.edit(basePolicy)), "test.yaml")
			var inv *InvalidError
			if !errors.As(err, &inv) {
				t.Fatalf("err = %v, want InvalidError", err)
			}
			msg := err.Error()
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error does not contain %q:\n%s", w, msg)
				}
			}
			if tc.wantPos != "" && !strings.Contains(msg, tc.wantPos) {
				t.Errorf("error does not locate %q:\n%s", tc.wantPos, msg)
			}
		})
	}
}

// All problems are reported at once, each with its place.
func TestLoadReportsEveryProblem(t *testing.T) {
	src := strings.Replace(basePolicy, "{group: security, approvals: 1}", "{group: secops, approvals: 0}", 1)
	src = strings.Replace(src, "max_ttl: 1h", "max_ttl: 1ms", 1)
	_, err := Load([]byte(src), "p.yaml")
	var inv *InvalidError
	if !errors.As(err, &inv) || len(inv.Problems) != 3 {
		t.Fatalf("want 3 problems, got %v", err)
	}
	for _, p := range inv.Problems {
		if p.Line == 0 {
			t.Errorf("problem without a line: %v", p)
		}
	}
}

func TestEvaluate(t *testing.T) {
	p := mustLoad(t, `
groups:
  req: [alice, zed]
  a: [bob, carol, dual]
  b: [erin, dual]
  c: [frank, gina]
accounts:
  - name: acct
    owner: req
    requesters: [req]
    audiences: [x]
    max_ttl: 1h
    approval_window: 1h
    activation_window: 1h
    quorum:
      - require: [{group: a, approvals: 1}, {group: b, approvals: 1}]
      - require: [{group: c, approvals: 2}]
`)
	rule := p.byName["acct"].Quorum
	tests := []struct {
		name      string
		requester string
		approvals []string
		met       bool
		alt       int
		counted   int
	}{
		{"nobody", "alice", nil, false, -1, 0},
		{"one of two groups", "alice", []string{"bob"}, false, -1, 1},
		{"AND across groups", "alice", []string{"bob", "erin"}, true, 0, 2},
		{"one person in both groups cannot fill both", "alice", []string{"dual"}, false, -1, 1},
		{"dual fills one, bob the other", "alice", []string{"dual", "bob"}, true, 0, 2},
		{"dual fills the other side", "alice", []string{"erin", "dual"}, true, 0, 2},
		{"same principal twice counts once", "alice", []string{"bob", "bob"}, false, -1, 1},
		{"requester never counts", "dual", []string{"dual", "bob"}, false, -1, 1},
		{"non-member does not count", "alice", []string{"bob", "mallory"}, false, -1, 1},
		{"requester in another group does not count", "alice", []string{"alice", "erin"}, false, -1, 1},
		{"second alternative", "alice", []string{"frank", "gina"}, true, 1, 2},
		{"second alternative needs two", "alice", []string{"frank", "frank"}, false, -1, 1},
		{"both alternatives: first wins", "alice", []string{"frank", "gina", "bob", "erin"}, true, 0, 4},
		{"two in one group is not an AND", "alice", []string{"bob", "carol"}, false, -1, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := Evaluate(p, rule, tc.requester, tc.approvals)
			if o.Met != tc.met || o.Alternative != tc.alt || len(o.Counted) != tc.counted {
				t.Fatalf("Evaluate = %+v, want met=%t alt=%d counted=%d", o, tc.met, tc.alt, tc.counted)
			}
			if o.Met {
				groups := map[string]int{}
				for _, g := range o.Assignment {
					groups[g]++
				}
				for _, req := range rule[o.Alternative] {
					if groups[req.Group] != req.Approvals {
						t.Errorf("assignment %v does not fill %v", o.Assignment, req)
					}
				}
				if _, ok := o.Assignment[tc.requester]; ok {
					t.Error("requester assigned")
				}
			}
		})
	}

	// Removing an approver from the policy after their review removes
	// their approval.
	p2 := mustLoad(t, strings.Replace(`
groups:
  req: [alice]
  a: [bob, carol]
  b: [erin]
accounts:
  - name: acct
    owner: req
    requesters: [req]
    audiences: [x]
    max_ttl: 1h
    approval_window: 1h
    activation_window: 1h
    quorum:
      - require: [{group: a, approvals: 1}, {group: b, approvals: 1}]
`, "a: [bob, carol]", "a: [carol]", 1))
	if o := Evaluate(p2, rule, "alice", []string{"bob", "erin"}); o.Met {
		t.Error("an approver removed from the policy still counts")
	}

	if n := Denials(p, rule, "alice", []string{"bob", "bob", "alice", "mallory", "erin"}); n != 2 {
		t.Errorf("Denials = %d, want 2", n)
	}
}

// Every window and TTL is a whole number of seconds: the log records
// seconds, and a fraction would be acted on but never recorded.
func TestFractionalDurationsRefused(t *testing.T) {
	for _, field := range []string{"max_ttl: 1h", "approval_window: 30m", "activation_window: 10m"} {
		src := strings.Replace(basePolicy, field, field+"0.5s", 1)
		_, err := Load([]byte(src), "p.yaml")
		if err == nil || !strings.Contains(err.Error(), "not a whole number of seconds") {
			t.Errorf("%s0.5s: %v", field, err)
		}
	}
}

// One key is one approver, whatever names its approvals are logged under,
// and the requester's key never counts.
func TestEvaluateSignedCountsKeys(t *testing.T) {
	p := mustLoad(t, `
groups: {sre: [alice, frank], db-admins: [bob, carol, frank], security: [bob2, erin, alice2]}
accounts:
  - name: prod-db
    owner: sre
    requesters: [sre]
    audiences: [db.prod.example]
    max_ttl: 1h
    approval_window: 30m
    activation_window: 10m
    quorum:
      - require: [{group: db-admins, approvals: 1}, {group: security, approvals: 1}]
`)
	a, _ := p.Account("prod-db")
	alice := Approval{Principal: "alice", Key: "sha256:aa"}
	tests := []struct {
		name      string
		approvals []Approval
		met       bool
		counted   []string
	}{
		{"two keys", []Approval{{"bob", "sha256:b1"}, {"erin", "sha256:e1"}}, true, []string{"bob", "erin"}},
		{"one key under two names", []Approval{{"bob", "sha256:b1"}, {"bob2", "sha256:b1"}}, false, []string{"bob"}},
		{"the requester's key under another name", []Approval{{"bob", "sha256:b1"}, {"alice2", "sha256:aa"}}, false, []string{"bob"}},
		{"names without keys still count once each", []Approval{{"bob", ""}, {"erin", ""}, {"bob", ""}}, true, []string{"bob", "erin"}},
		{"the first approval of a key is the one that counts", []Approval{{"bob2", "sha256:b1"}, {"bob", "sha256:b1"}, {"carol", "sha256:c1"}}, true, []string{"bob2", "carol"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := EvaluateSigned(p, a.Quorum, alice, tc.approvals)
			if o.Met != tc.met || strings.Join(o.Counted, ",") != strings.Join(tc.counted, ",") {
				t.Fatalf("met %v counted %v; want %v %v", o.Met, o.Counted, tc.met, tc.counted)
			}
			if n := DenialsSigned(p, a.Quorum, alice, tc.approvals); n != len(tc.counted) {
				t.Fatalf("denials counted %d, want %d", n, len(tc.counted))
			}
		})
	}
}
