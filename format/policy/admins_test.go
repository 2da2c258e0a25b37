package policy

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestPolicyAdmins(t *testing.T) {
	p := mustLoad(t, adminPolicy)
	if len(p.PolicyAdmins) != 1 || p.ChangeWindow.D().Hours() != 48 {
		t.Fatalf("policy admins %v, window %s", p.PolicyAdmins, p.ChangeWindow.D())
	}
	for _, who := range []string{"bob", "carol", "erin"} {
		if !p.IsPolicyAdmin(who) || !p.MayPropose(who) {
			t.Errorf("%s is a policy admin", who)
		}
	}
	if p.IsPolicyAdmin("alice") || p.MayPropose("alice") {
		t.Error("alice is no policy admin")
	}
	if got := fmt.Sprint(p.PolicyAdminList()); got != "[bob carol erin]" {
		t.Errorf("admins %s", got)
	}
	// The proposer never counts: erin cannot approve her own change alone
	// with bob, but carol and bob (or erin) can for a proposal by someone else.
	if o := Evaluate(p, p.PolicyAdmins, "erin", []string{"erin", "bob"}); o.Met {
		t.Error("the proposer's own statement counted")
	}
	if o := Evaluate(p, p.PolicyAdmins, "bob", []string{"erin", "carol"}); !o.Met {
		t.Error("erin and carol do not meet the rule")
	}
	// The logged form rebuilds the same policy, admins included.
	if back, err := FromCanonicalJSON(p.CanonicalJSON()); err != nil || back.Hash() != p.Hash() || !back.IsPolicyAdmin("erin") {
		t.Fatalf("canonical round trip: %v", err)
	}
	// The window defaults, and the genesis summary names the rule.
	def := mustLoad(t, strings.Replace(adminPolicy, "policy_change_window: 48h\n", "", 1))
	if def.ChangeWindow.D() != DefaultChangeWindow {
		t.Errorf("default window %s", def.ChangeWindow.D())
	}
	if lines := strings.Join(ChangeLines(nil, p), "\n"); !strings.Contains(lines, "policy admins: 1 of security and 1 of db-admins within 48h0m0s (the proposer never counts") {
		t.Errorf("genesis lines:\n%s", lines)
	}
	// No policy admins: the policy is frozen, its hash unchanged by the
	// new fields (they are omitted from the canonical form).
	frozen := mustLoad(t, basePolicy)
	if frozen.MayPropose("erin") || strings.Contains(string(frozen.CanonicalJSON()), "policy_") {
		t.Errorf("a policy without admins: %s", frozen.CanonicalJSON())
	}
	if !strings.Contains(frozen.AdminRule(), "cannot be changed") {
		t.Errorf("frozen rule %q", frozen.AdminRule())
	}
	// Admins group members may propose.
	withAdmins := mustLoad(t, strings.Replace(adminPolicy, "auditors: auditors\n", "auditors: auditors\nadmins: owners\n", 1))
	if !withAdmins.MayPropose("olivia") || withAdmins.IsPolicyAdmin("olivia") {
		t.Error("an admins member may propose but not sign")
	}
}

// The policy_admins rule fails closed like an account's quorum.
func TestPolicyAdminsFailClosed(t *testing.T) {
	rule := "policy_admins: [{require: [{group: security, approvals: 1}, {group: db-admins, approvals: 1}]}]"
	for _, tc := range []struct {
		name, from, to, want string
	}{
		{"zero approvals", "{group: security, approvals: 1}, {group: db-admins, approvals: 1}", "{group: security, approvals: 0}", "must be at least 1"},
		{"no requirement", "[{require: [{group: security, approvals: 1}, {group: db-admins, approvals: 1}]}]", "[{require: []}]", "needs zero approvals"},
		{"empty rule", "[{require: [{group: security, approvals: 1}, {group: db-admins, approvals: 1}]}]", "[]", "must be a non-empty list of alternatives"},
		{"unknown group", "{group: security, approvals: 1}, ", "{group: secops, approvals: 1}, ", `policy_admins[0].require[0].group: unknown group "secops"`},
		{"unreachable", ", {group: db-admins, approvals: 1}]}]", ", {group: db-admins, approvals: 3}]}]", "cannot be met: needs 1 of security and 3 of db-admins from distinct admins, but only 3 are eligible"},
		{"proposer excluded", "{group: security, approvals: 1}, {group: db-admins, approvals: 1}", "{group: security, approvals: 2}", "cannot be met when carol proposes a change"},
		{"unknown setting beside it", rule, rule + "\nadmins: owners\npolicy_admins_x: 1", `unknown setting "policy_admins_x"`},
		{"too many approvals", ", {group: db-admins, approvals: 1}]}]", ", {group: db-admins, approvals: 1000000}]}]", "must be at most 100"},
		{"window without admins", rule + "\n", "", "policy_change_window: is set but policy_admins is not"},
		{"window above the ceiling", "policy_change_window: 48h", "policy_change_window: 400h", "longer than the ceiling"},
		{"window not a duration", "policy_change_window: 48h", "policy_change_window: soon", `"soon" is not a duration`},
		{"not a rule", rule, "policy_admins: security", "must be a non-empty list of alternatives"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(adminPolicy, tc.from) {
				t.Fatalf("no %q in the policy", tc.from)
			}
			_, err := Load([]byte(strings.Replace(adminPolicy, tc.from, tc.to, 1)), "test.yaml")
			var inv *InvalidError
			if !errors.As(err, &inv) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
	// A proposer from the admins group is excluded too: owners' olivia
	// proposes, and 2 of security (erin, carol) still works; but a rule
	// that only olivia's group could meet does not.
	_, err := Load([]byte(strings.Replace(adminPolicy, "{group: security, approvals: 1}, {group: db-admins, approvals: 1}", "{group: owners, approvals: 1}", 1)), "test.yaml")
	if err == nil || !strings.Contains(err.Error(), "cannot be met when olivia proposes a change") {
		t.Fatalf("a rule only the proposer meets: %v", err)
	}
}

func TestShortfall(t *testing.T) {
	p := mustLoad(t, adminPolicy) // 1 of security (erin, carol) and 1 of db-admins (bob, carol)
	who := func(names ...string) []Approval {
		var out []Approval
		for _, n := range names {
			out = append(out, Approval{Principal: n, Key: "k-" + n})
		}
		return out
	}
	for _, tc := range []struct {
		proposer  Approval
		approvals []Approval
		want      int
	}{
		{Approval{}, nil, 2},
		{Approval{}, who("bob"), 1},
		{Approval{}, who("bob", "erin"), 0},
		{Approval{}, who("carol"), 1},                       // carol fills one requirement only
		{Approval{Principal: "bob"}, who("bob", "erin"), 1}, // the proposer never counts
		{Approval{}, who("alice", "mallory"), 2},            // nor do non-admins
		{Approval{Key: "k-erin"}, who("bob", "erin"), 1},    // nor the proposer's key under another name
		{Approval{}, []Approval{{Principal: "bob", Key: "k"}, {Principal: "erin", Key: "k"}}, 1}, // one key counts once
	} {
		if got := Shortfall(p, p.PolicyAdmins, tc.proposer, tc.approvals); got != tc.want {
			t.Errorf("%+v by %+v: shortfall %d, want %d", tc.approvals, tc.proposer, got, tc.want)
		}
	}
}
