package policy

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// Hostile and broken documents are refused with a clear problem, before
// they cost more than their bytes: proposals arrive over the API.
func TestHostilePolicies(t *testing.T) {
	// A "billion laughs" document: each alias names the one before nine
	// times, so expanding it would make 9^9 strings.
	var laughs strings.Builder
	laughs.WriteString("groups:\n  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n")
	prev := "a"
	for i := range 8 {
		name := fmt.Sprintf("b%d", i)
		fmt.Fprintf(&laughs, "  %s: &%s [*%s, *%s, *%s, *%s, *%s, *%s, *%s, *%s, *%s]\n", name, name, prev, prev, prev, prev, prev, prev, prev, prev, prev)
		prev = name
	}
	deep := strings.Repeat("[", MaxDepth+5) + strings.Repeat("]", MaxDepth+5)
	var wide strings.Builder
	wide.WriteString("groups:\n  big: [")
	for i := range MaxGroupMembers + 1 {
		if i > 0 {
			wide.WriteString(", ")
		}
		fmt.Fprintf(&wide, "p%d", i)
	}
	wide.WriteString("]\n")
	var alts strings.Builder
	alts.WriteString(basePolicy + "policy_admins:\n")
	for range MaxAlternatives + 1 {
		alts.WriteString("  - require: [{group: security, approvals: 1}]\n")
	}
	for _, tc := range []struct {
		name, doc, want string
	}{
		{"oversize", "groups: {}\n" + strings.Repeat("# padding\n", MaxPolicyBytes/10+1), "bytes, more than the 1048576 a policy may have"},
		{"billion laughs", laughs.String(), "YAML anchors (&a) are not allowed"},
		{"alias", strings.Replace(basePolicy, "  owners: [olivia]", "  owners: &o [olivia]\n  more: *o", 1), "YAML aliases (*o) are not allowed"},
		{"merge key", strings.Replace(basePolicy, "    max_ttl: 1h\n", "    <<: {max_ttl: 1h}\n", 1), "merge keys"},
		{"deep nesting", "groups: " + deep + "\n", fmt.Sprintf("nests more than %d levels deep", MaxDepth)},
		{"deep mappings", "groups:" + strings.Repeat(" {a:", MaxDepth) + " x" + strings.Repeat("}", MaxDepth) + "\n", "nests more than"},
		{"unknown top-level field", "policy_admin: []\n" + basePolicy, `unknown setting "policy_admin"`},
		{"unknown nested field", strings.Replace(basePolicy, "{group: security, approvals: 1}", "{group: security, approvals: 1, weight: 2}", 1), `unknown setting "weight"`},
		{"two documents", basePolicy + "---\n" + basePolicy, "more than one YAML document"},
		{"huge group", wide.String(), fmt.Sprintf("more than %d members", MaxGroupMembers)},
		{"too many alternatives", alts.String(), fmt.Sprintf("more than %d alternatives", MaxAlternatives)},
		{"huge approvals", strings.Replace(basePolicy, "{group: security, approvals: 1}", "{group: security, approvals: 99999999999}", 1), "approvals"},
		{"binary junk", "\x00\x01\x02\xff\xfe", "not valid YAML"},
		{"a scalar", "just a string\n", "must be a mapping"},
		{"a list", "- a\n- b\n", "must be a mapping"},
		{"null", "~\n", "must be a mapping"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Load([]byte(tc.doc), "hostile.yaml")
			var inv *InvalidError
			if p != nil || !errors.As(err, &inv) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// A large but legitimate policy, at the bounds, loads: the bounds refuse
// abuse, not size, and validation stays near-linear (the satisfiability
// check does not repeat per requester outside the approver groups).
func TestLargePolicyLoads(t *testing.T) {
	var b strings.Builder
	b.WriteString("groups:\n")
	for _, g := range []string{"req", "appr", "sec"} {
		fmt.Fprintf(&b, "  %s: [", g)
		for i := range MaxGroupMembers {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%s%d", g, i)
		}
		b.WriteString("]\n")
	}
	b.WriteString("policy_admins: [{require: [{group: sec, approvals: 10}, {group: appr, approvals: 10}]}]\naccounts:\n")
	for i := range 50 {
		fmt.Fprintf(&b, "  - {name: acct%d, owner: sec, requesters: [req, appr], audiences: [a%d.example], max_ttl: 1h, approval_window: 30m, activation_window: 10m, quorum: [{require: [{group: appr, approvals: 5}, {group: sec, approvals: 5}]}]}\n", i, i)
	}
	p, err := Load([]byte(b.String()), "large.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Accounts) != 50 || len(p.PolicyAdminList()) != 2*MaxGroupMembers {
		t.Fatalf("%d accounts, %d admins", len(p.Accounts), len(p.PolicyAdminList()))
	}
}
