package policy

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

// policyTypes walks the types of the canonical policy from Policy, and
// calls fn for every JSON field of every struct type reached.
func policyTypes(fn func(typ reflect.Type, f reflect.StructField, name string)) {
	seen := map[reflect.Type]bool{}
	var walk func(t reflect.Type)
	walk = func(t reflect.Type) {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Map {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct || seen[t] || t.PkgPath() != reflect.TypeOf(Policy{}).PkgPath() {
			return
		}
		seen[t] = true
		for i := range t.NumField() {
			f := t.Field(i)
			name := jsonName(f)
			if name == "" {
				continue
			}
			fn(t, f, name)
			walk(f.Type)
		}
	}
	walk(reflect.TypeOf(Policy{}))
}

// Every field of every type of the canonical policy has a rule saying how
// a change of it is judged: a field added later without one fails here.
func TestEveryFieldIsCompared(t *testing.T) {
	n := 0
	policyTypes(func(typ reflect.Type, f reflect.StructField, name string) {
		n++
		if _, ok := rules[typ.Name()+"."+name]; !ok {
			t.Errorf("%s.%s (%s) has no rule in changes.go: say whether a change of it weakens the policy", typ.Name(), f.Name, name)
		}
	})
	if n < 30 {
		t.Fatalf("walked only %d fields", n)
	}
}

// mutate changes v to some other value of its type.
func mutate(t *testing.T, v reflect.Value) {
	t.Helper()
	switch v.Kind() {
	case reflect.String:
		v.SetString(v.String() + "-changed")
	case reflect.Bool:
		v.SetBool(!v.Bool())
	case reflect.Int, reflect.Int64:
		v.SetInt(v.Int() + int64(time.Hour))
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		e := v.Elem()
		for i := range e.NumField() {
			mutate(t, e.Field(i))
		}
	case reflect.Slice:
		switch v.Type() {
		case reflect.TypeOf(Rule{}):
			v.Set(reflect.ValueOf(append(v.Interface().(Rule), Alternative{{Group: "security", Approvals: 1}})))
		default:
			v.Set(reflect.Append(v, reflect.ValueOf("zz-added")))
		}
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		for _, k := range v.MapKeys() {
			m.SetMapIndex(k, v.MapIndex(k))
		}
		elem := reflect.New(v.Type().Elem()).Elem()
		if elem.Kind() == reflect.Slice {
			elem = reflect.ValueOf([]string{"zz-added"})
		} else {
			mutate(t, elem.Field(0))
		}
		m.SetMapIndex(reflect.ValueOf("zz-added"), elem)
		v.Set(m)
	default:
		t.Fatalf("cannot mutate a %s", v.Type())
	}
}

// A change to any one setting of the policy or of an account is reported,
// at its path: nothing is left out of the comparison.
func TestDiffSeesEverySetting(t *testing.T) {
	base := func() *Policy { return mustLoad(t, basePolicy) }
	for _, level := range []struct {
		typ    reflect.Type
		target func(p *Policy) reflect.Value
		prefix string
	}{
		{reflect.TypeOf(Policy{}), func(p *Policy) reflect.Value { return reflect.ValueOf(p).Elem() }, ""},
		{reflect.TypeOf(Account{}), func(p *Policy) reflect.Value { return reflect.ValueOf(p.Accounts[0]).Elem() }, "accounts[prod-db]."},
	} {
		for i := range level.typ.NumField() {
			f := level.typ.Field(i)
			name := jsonName(f)
			if name == "" || name == "accounts" || (level.prefix != "" && name == "name") {
				continue
			}
			t.Run(level.typ.Name()+"."+name, func(t *testing.T) {
				old, cur := base(), base()
				mutate(t, level.target(cur).Field(i))
				cur.finish()
				path := level.prefix + name
				for _, c := range Diff(old, cur) {
					if c.Path == path || strings.HasPrefix(c.Path, path+"[") {
						return
					}
				}
				t.Fatalf("changing %s is not reported: %v", path, Diff(old, cur))
			})
		}
	}
}

// Changes that widen access or weaken oversight are marked; those that
// narrow it are not.
func TestWeakeningChanges(t *testing.T) {
	tests := []struct {
		name    string
		from    string
		to      string
		weakens bool
		want    string
	}{
		// The finding: solo access enabled, reported as "no change".
		{"solo enabled", "    max_ttl: 1h\n", "    max_ttl: 1h\n    ack_sinks: [soc]\n    solo: {delay: 10m, max_ttl: 30m}\n", true, "solo access (no approver at all) enabled"},
		{"quorum lowered", "          - {group: security, approvals: 1}\n", "", true, "quorum can be met with less"},
		{"quorum raised", "{group: db-admins, approvals: 1}", "{group: db-admins, approvals: 2}", false, "accounts[prod-db].quorum"},
		{"deny threshold raised", "    max_ttl: 1h\n", "    max_ttl: 1h\n    deny_threshold: 2\n", true, "more denials"},
		{"requester group added", "requesters: [sre]", "requesters: [sre, db-admins]", true, "requester groups added"},
		{"requester added to a group", "sre: [alice, frank]", "sre: [alice, frank, mallory]", true, "mallory join the requesters of prod-db"},
		{"approver added", "db-admins: [bob, carol]", "db-admins: [bob, carol, mallory]", true, "approvers of prod-db"},
		{"member removed", "sre: [alice, frank]", "sre: [alice]", false, "groups[sre]"},
		{"TTL widened", "max_ttl: 1h", "max_ttl: 2h", true, "longer"},
		{"TTL narrowed", "max_ttl: 1h", "max_ttl: 30m", false, "max_ttl"},
		{"approval window widened", "approval_window: 30m", "approval_window: 45m", true, "approval_window"},
		{"auditors changed", "auditors: auditors\n", "auditors: sre\n", true, "who may read everything"},
		{"auditor added", "auditors: [dave]", "auditors: [dave, mallory]", true, "mallory join the auditors"},
		{"relying parties changed", "relying_parties: relying\n", "relying_parties: sre\n", true, "check tokens"},
		{"admins added", "auditors: auditors\n", "auditors: auditors\nadmins: owners\n", true, "propose policy changes"},
		{"policy admins lowered", ", {group: db-admins, approvals: 1}]}]\n", "]}]\n", true, "the policy can be changed with less"},
		{"policy admins raised", "{group: db-admins, approvals: 1}]}]\n", "{group: db-admins, approvals: 1}, {group: sre, approvals: 1}]}]\n", false, "policy_admins"},
		{"policy admins given an alternative", "]}]\npolicy_change_window", "]}, {require: [{group: sre, approvals: 1}, {group: db-admins, approvals: 1}]}]\npolicy_change_window", true, "the policy can be changed with less"},
		{"policy admin added", "security: [erin, carol]", "security: [erin, carol, mallory]", true, "mallory join the approvers of prod-db, policy admins"},
		{"change window widened", "policy_change_window: 48h", "policy_change_window: 96h", true, "policy_change_window"},
		{"policy admins dropped", "policy_admins: [{require: [{group: security, approvals: 1}, {group: db-admins, approvals: 1}]}]\npolicy_change_window: 48h\n", "", false, `policy_admins: "1 of security and 1 of db-admins" -> "(none)"`},
		{"account added", "accounts:\n", "accounts:\n  - {name: new, owner: owners, requesters: [sre], audiences: [new.example], max_ttl: 1h, approval_window: 30m, activation_window: 10m, quorum: [{require: [{group: db-admins, approvals: 1}]}]}\n", true, "a new account"},
		{"description changed", "description: Production database superuser", "description: Prod DB", false, "description"},
		{"ticket no longer required", "    max_ttl: 1h\n", "    max_ttl: 1h\n    require_ticket: true\n", false, "require_ticket"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(adminPolicy, tc.from) {
				t.Fatalf("the base policy has no %q", tc.from)
			}
			old, cur := mustLoad(t, adminPolicy), mustLoad(t, strings.Replace(adminPolicy, tc.from, tc.to, 1))
			cs := Diff(old, cur)
			lines := strings.Join(ChangeLines(old, cur), "\n")
			if Weakens(cs) != tc.weakens || !strings.Contains(lines, tc.want) {
				t.Fatalf("weakens %v, want %v; changes:\n%s", Weakens(cs), tc.weakens, lines)
			}
			if tc.weakens && !strings.HasPrefix(lines, "WEAKENS ") {
				t.Fatalf("a weakening change is not marked first:\n%s", lines)
			}
			// Back again is the reverse: a weakening change undone weakens nothing.
			if tc.weakens && Weakens(Diff(cur, old)) && tc.name != "auditors changed" && tc.name != "relying parties changed" {
				t.Errorf("undoing %s is marked weakening too: %v", tc.name, Diff(cur, old))
			}
		})
	}
	// Identical policies: no change at all.
	if got := ChangeLines(mustLoad(t, basePolicy), mustLoad(t, basePolicy)); fmt.Sprint(got) != "["+NoChange+"]" {
		t.Errorf("identical policies: %v", got)
	}
	// Rules that read alike are still compared as structures.
	a := mustLoad(t, basePolicy)
	b := mustLoad(t, basePolicy)
	b.Accounts[0].Quorum = Rule{{{Group: "db-admins and 1 of security", Approvals: 1}}}
	b.finish()
	if cs := Diff(a, b); len(cs) != 1 || !cs[0].Weakens {
		t.Errorf("a rule that imitates another's text: %v", cs)
	}
}
