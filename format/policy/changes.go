package policy

import (
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strings"
	"time"
)

// Change is one difference between two policies, for people and for the
// SOC: every field of the canonical policy is compared, and a change that
// widens access or weakens oversight is marked as weakening.
type Change struct {
	// Path names the setting: "accounts[prod-db].max_ttl", "groups[sre]".
	Path string `json:"path"`
	// Old and New are the values as canonical JSON, "" when absent.
	Old string `json:"old,omitempty"`
	New string `json:"new,omitempty"`
	// Weakens is set when the change widens who may get access, for how
	// long, or with how little oversight; Why says how.
	Weakens bool   `json:"weakens,omitempty"`
	Why     string `json:"why,omitempty"`
}

// String is one line for people: "WEAKENS accounts[prod-db].max_ttl:
// "1h0m0s" -> "2h0m0s" (longer)".
func (c Change) String() string {
	var b strings.Builder
	if c.Weakens {
		b.WriteString("WEAKENS ")
	}
	b.WriteString(c.Path)
	switch {
	case c.Old == "":
		b.WriteString(" added: " + c.New)
	case c.New == "":
		b.WriteString(" removed (was " + c.Old + ")")
	default:
		b.WriteString(": " + c.Old + " -> " + c.New)
	}
	if c.Why != "" {
		b.WriteString(" (" + c.Why + ")")
	}
	return b.String()
}

// NoChange is what ChangeLines says of two policies that differ in nothing.
const NoChange = "no change"

// Weakens reports whether any of the changes weakens the policy.
func Weakens(cs []Change) bool {
	return slices.ContainsFunc(cs, func(c Change) bool { return c.Weakens })
}

// ChangeLines describes the changes for people, weakening ones first; with
// no old policy, every account's quorum rule.
func ChangeLines(old, cur *Policy) []string {
	if old == nil {
		out := make([]string, 0, len(cur.Accounts))
		for _, a := range cur.Accounts {
			out = append(out, fmt.Sprintf("account %s: quorum %s", a.Name, a.Quorum.Short()))
		}
		return append(out, "policy admins: "+cur.AdminRule())
	}
	cs := Diff(old, cur)
	if len(cs) == 0 {
		return []string{NoChange}
	}
	out := make([]string, 0, len(cs))
	for _, weak := range []bool{true, false} {
		for _, c := range cs {
			if c.Weakens == weak {
				out = append(out, c.String())
			}
		}
	}
	return out
}

// Changes is ChangeLines, the name older callers know.
func Changes(old, cur *Policy) []string { return ChangeLines(old, cur) }

// rule classifies a change of one setting. It is given the old and new
// values (nil when absent) and both policies, and says whether the change
// weakens the policy and why.
type rule func(old, cur any, op, cp *Policy) (bool, string)

// rules lists, for every field of every type of the canonical policy (by
// Go type and JSON name), how a change of it is judged. TestEveryFieldIsCompared
// walks the types by reflection: a field added without a rule here fails.
var rules = map[string]rule{
	"Policy.groups":               nil, // keyed: see diffGroups
	"Policy.auditors":             roleGroup("who may read everything changed"),
	"Policy.relying_parties":      roleGroup("who may check tokens changed"),
	"Policy.admins":               roleGroup("who may propose policy changes changed"),
	"Policy.policy_admins":        nil, // compared as a rule: see Diff
	"Policy.policy_change_window": longer,
	"Policy.max_duration":         longer,
	"Policy.accounts":             nil, // keyed: see diffAccounts
	"Policy.contacts":             nil, // keyed: see diffContacts
	"Policy.identity":             anyChange("principals are read from certificates differently"),

	"Identity.mode":       nil, // compared as part of Policy.identity
	"Identity.uri_prefix": nil,

	"Account.name":                    nil, // the key of accounts
	"Account.description":             never,
	"Account.owner":                   anyChange("who may revoke and attest changed"),
	"Account.requesters":              added("requester groups added"),
	"Account.audiences":               added("tokens for more systems"),
	"Account.max_ttl":                 longer,
	"Account.approval_window":         longer,
	"Account.activation_window":       longer,
	"Account.max_issuances":           more("more tokens per grant"),
	"Account.deny_threshold":          more("more denials needed to stop a request"),
	"Account.require_ticket":          turnedOff("a ticket is no longer required"),
	"Account.quorum":                  nil, // compared as a rule: see diffAccounts
	"Account.reviewers":               anyChange("who reviews grants after use changed"),
	"Account.review_within":           longer,
	"Account.block_on_overdue_review": turnedOff("overdue reviews no longer block new requests"),
	"Account.drill_audience":          anyChange("drill tokens name another audience"),
	"Account.drill_every":             lessOften,
	"Account.review_every":            lessOften,
	"Account.require_alert_ack":       turnedOff("the first token no longer waits for an acknowledged alert"),
	"Account.ack_sinks":               added("more sinks may acknowledge alerts"),
	"Account.solo":                    soloRule,
	"Account.token_key":               never,
	"Account.rotate_after_use":        turnedOff("the token key is no longer rotated after use"),
	"Account.ssh":                     sshRule,
	"Account.x509":                    x509Rule,
	"Account.federation":              never, // a note for validation: it grants nothing

	"SSH.principals":       nil, // compared as part of Account.ssh
	"SSH.drill_principals": nil,
	"SSH.source_addresses": nil,
	"SSH.force_command":    nil,
	"SSH.extensions":       nil,
	"SSH.max_ttl":          nil,

	"X509.common_name":       nil, // compared as part of Account.x509
	"X509.drill_common_name": nil,
	"X509.dns_names":         nil,
	"X509.uri_sans":          nil,
	"X509.ext_key_usage":     nil,
	"X509.max_ttl":           nil,

	"Solo.delay":   nil, // compared as part of Account.solo
	"Solo.max_ttl": nil,

	"Contact.slack":       nil, // compared as part of Policy.contacts
	"Contact.webhook_tag": nil,
	"Contact.email":       nil,

	"Requirement.group":     nil, // compared as part of Account.quorum
	"Requirement.approvals": nil,
}

// Diff compares two policies setting by setting: every field of the
// policy, every group, account and contact, by name.
func Diff(old, cur *Policy) []Change {
	var out []Change
	add := func(path string, o, n any, r rule) {
		oj, nj := canon(o), canon(n)
		if oj == nj {
			return
		}
		c := Change{Path: path, Old: oj, New: nj}
		if r != nil {
			c.Weakens, c.Why = r(o, n, old, cur)
		}
		out = append(out, c)
	}
	diffFields(reflect.ValueOf(old).Elem(), reflect.ValueOf(cur).Elem(), "", func(path, name string, o, n reflect.Value) {
		switch name {
		case "Policy.groups":
			out = append(out, diffGroups(old, cur)...)
		case "Policy.accounts":
			out = append(out, diffAccounts(old, cur, add)...)
		case "Policy.policy_admins":
			if c, ok := ruleChange(path, old.PolicyAdmins, cur.PolicyAdmins, "the policy can be changed with less"); ok {
				out = append(out, c)
			}
		case "Policy.contacts":
			diffKeyed(path, old.Contacts, cur.Contacts, func(p string, o, n any) { add(p, o, n, never) })
		default:
			add(path, valueOf(o), valueOf(n), rules[name])
		}
	})
	return out
}

// diffFields calls fn for every JSON field of the struct values o and n.
func diffFields(o, n reflect.Value, prefix string, fn func(path, name string, o, n reflect.Value)) {
	t := o.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		tag := jsonName(f)
		if tag == "" {
			continue
		}
		fn(prefix+tag, t.Name()+"."+tag, o.Field(i), n.Field(i))
	}
}

func jsonName(f reflect.StructField) string {
	if !f.IsExported() {
		return ""
	}
	name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
	if name == "-" || name == "" {
		return ""
	}
	return name
}

// valueOf is the value to compare: nil for an empty one, so that absent
// and empty compare alike.
func valueOf(v reflect.Value) any {
	if !v.IsValid() || v.IsZero() {
		return nil
	}
	if (v.Kind() == reflect.Slice || v.Kind() == reflect.Map) && v.Len() == 0 {
		return nil
	}
	return v.Interface()
}

// canon is the canonical JSON of v, "" for nothing.
func canon(v any) string {
	if v == nil {
		return ""
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

func diffKeyed[V any](path string, old, cur map[string]V, fn func(path string, o, n any)) {
	keys := map[string]bool{}
	for k := range old {
		keys[k] = true
	}
	for k := range cur {
		keys[k] = true
	}
	sorted := make([]string, 0, len(keys))
	for k := range keys {
		sorted = append(sorted, k)
	}
	sort.Strings(sorted)
	for _, k := range sorted {
		var o, n any
		if v, ok := old[k]; ok {
			o = v
		}
		if v, ok := cur[k]; ok {
			n = v
		}
		fn(fmt.Sprintf("%s[%s]", path, k), o, n)
	}
}

// diffGroups compares group members. A member added to a group that the
// new policy gives any power (requesters, quorum, owners, reviewers,
// auditors, admins, relying parties) weakens it.
func diffGroups(old, cur *Policy) []Change {
	var out []Change
	diffKeyed("groups", old.Groups, cur.Groups, func(path string, o, n any) {
		om, _ := o.([]string)
		nm, _ := n.([]string)
		if slices.Equal(om, nm) && (o == nil) == (n == nil) {
			return
		}
		c := Change{Path: path, Old: canon(o), New: canon(n)}
		name := strings.TrimSuffix(strings.TrimPrefix(path, "groups["), "]")
		var gained []string
		for _, m := range nm {
			if !slices.Contains(om, m) {
				gained = append(gained, m)
			}
		}
		if len(gained) > 0 {
			if role := cur.groupRole(name); role != "" {
				c.Weakens, c.Why = true, fmt.Sprintf("%s join the %s", strings.Join(gained, ", "), role)
			}
		}
		out = append(out, c)
	})
	return out
}

// groupRole says what power a group has in p, "" when none.
func (p *Policy) groupRole(g string) string {
	var roles []string
	for _, a := range p.Accounts {
		switch {
		case slices.Contains(a.Requesters, g):
			roles = append(roles, "requesters of "+a.Name)
		case p.ruleNames(a.Quorum, g):
			roles = append(roles, "approvers of "+a.Name)
		case a.Owner == g || a.Reviewers == g:
			roles = append(roles, "owners or reviewers of "+a.Name)
		}
	}
	if p.ruleNames(p.PolicyAdmins, g) {
		roles = append(roles, "policy admins")
	}
	for _, r := range []struct{ name, group string }{{"auditors", p.Auditors}, {"admins", p.Admins}, {"relying parties", p.RelyingParties}} {
		if r.group == g {
			roles = append(roles, r.name)
		}
	}
	return strings.Join(roles, ", ")
}

func (p *Policy) ruleNames(r Rule, g string) bool {
	for _, alt := range r {
		for _, req := range alt {
			if req.Group == g {
				return true
			}
		}
	}
	return false
}

// diffAccounts compares accounts by name, field by field. A new account is
// a new way in: it weakens the policy.
func diffAccounts(old, cur *Policy, add func(path string, o, n any, r rule)) []Change {
	var out []Change
	byName := func(p *Policy) map[string]*Account {
		m := map[string]*Account{}
		for _, a := range p.Accounts {
			m[a.Name] = a
		}
		return m
	}
	oa, na := byName(old), byName(cur)
	diffKeyed("accounts", oa, na, func(path string, o, n any) {
		switch {
		case o == nil:
			a := n.(*Account)
			out = append(out, Change{Path: path, New: fmt.Sprintf("quorum %s, requesters %s", a.Quorum.Short(), strings.Join(a.Requesters, ", ")),
				Weakens: true, Why: "a new account"})
		case n == nil:
			out = append(out, Change{Path: path, Old: "account " + o.(*Account).Name})
		default:
			diffFields(reflect.ValueOf(o).Elem(), reflect.ValueOf(n).Elem(), path+".", func(p, name string, ov, nv reflect.Value) {
				if name == "Account.quorum" {
					if c, ok := ruleChange(p, ov.Interface().(Rule), nv.Interface().(Rule), "the quorum can be met with less"); ok {
						out = append(out, c)
					}
					return
				}
				add(p, valueOf(ov), valueOf(nv), rules[name])
			})
		}
	})
	return out
}

// ruleChange compares two rules as structures and shows them in words; a
// new rule that some alternative of which demands less than every old one
// weakens, for why.
func ruleChange(path string, or, nr Rule, why string) (Change, bool) {
	if canon(or) == canon(nr) {
		return Change{}, false
	}
	c := Change{Path: path, Old: canon(ruleText(or)), New: canon(ruleText(nr))}
	if c.Old == c.New {
		c.Old, c.New = canon(or), canon(nr) // rules that read alike but differ
	}
	if weaker(or, nr) {
		c.Weakens, c.Why = true, why
	}
	return c, true
}

// ruleText shows a quorum rule in words in a change, so that people read
// "quorum 1 of db-admins and 1 of security -> 1 of db-admins".
type ruleText Rule

func (r ruleText) MarshalJSON() ([]byte, error) {
	if len(r) == 0 {
		return []byte(`"(none)"`), nil
	}
	return json.Marshal(Rule(r).Short())
}

func never(_, _ any, _, _ *Policy) (bool, string) { return false, "" }

func anyChange(why string) rule {
	return func(_, _ any, _, _ *Policy) (bool, string) { return true, why }
}

// roleGroup weakens when a role is given to a group (another or a first
// one); taking the role from every group does not.
func roleGroup(why string) rule {
	return func(_, n any, _, _ *Policy) (bool, string) { return n != nil, why }
}

// added weakens when the new list has an element the old one did not.
func added(why string) rule {
	return func(o, n any, _, _ *Policy) (bool, string) {
		om, _ := o.([]string)
		nm, _ := n.([]string)
		for _, x := range nm {
			if !slices.Contains(om, x) {
				return true, why
			}
		}
		return false, ""
	}
}

func durOf(v any) time.Duration {
	d, _ := v.(Duration)
	return d.D()
}

// longer weakens when a window, TTL or ceiling grows.
func longer(o, n any, _, _ *Policy) (bool, string) {
	if durOf(n) > durOf(o) {
		return true, "longer"
	}
	return false, ""
}

// lessOften weakens when a cadence grows or is dropped (zero: never).
func lessOften(o, n any, _, _ *Policy) (bool, string) {
	od, nd := durOf(o), durOf(n)
	if od != 0 && (nd == 0 || nd > od) {
		return true, "checked less often"
	}
	return false, ""
}

func more(why string) rule {
	return func(o, n any, _, _ *Policy) (bool, string) {
		oi, _ := o.(int)
		ni, _ := n.(int)
		if ni > oi {
			return true, why
		}
		return false, ""
	}
}

func turnedOff(why string) rule {
	return func(o, n any, _, _ *Policy) (bool, string) {
		ob, _ := o.(bool)
		nb, _ := n.(bool)
		if ob && !nb {
			return true, why
		}
		return false, ""
	}
}

// soloRule: enabling solo access, lengthening a solo grant or shortening
// its veto window weakens the policy.
func soloRule(o, n any, _, _ *Policy) (bool, string) {
	os, _ := o.(*Solo)
	ns, _ := n.(*Solo)
	switch {
	case ns == nil:
		return false, ""
	case os == nil:
		return true, "solo access (no approver at all) enabled"
	case ns.MaxTTL > os.MaxTTL:
		return true, "solo grants last longer"
	case ns.Delay < os.Delay:
		return true, "a shorter veto window"
	}
	return false, ""
}

// weaker reports whether some alternative of the new rule demands less
// than every alternative of the old one: the same groups, each with at
// least as many approvals, is what "at least" means. An empty new rule
// (nobody may act) never weakens; an empty old one and a new one does.
func weaker(or, nr Rule) bool {
	for _, alt := range nr {
		if !slices.ContainsFunc(or, func(old Alternative) bool { return demandsAtLeast(alt, old) }) {
			return true
		}
	}
	return false
}

// demandsAtLeast reports whether alt needs at least everything old needs.
func demandsAtLeast(alt, old Alternative) bool {
	for _, req := range old {
		i := slices.IndexFunc(alt, func(r Requirement) bool { return r.Group == req.Group })
		if i < 0 || alt[i].Approvals < req.Approvals {
			return false
		}
	}
	return true
}
