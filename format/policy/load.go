package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Problem is one thing wrong with a policy, with where it is.
type Problem struct {
	Line, Column int
	// Path names the setting, e.g. "accounts[0](prod-db).quorum[1]".
	Path string
	Msg  string
}

func (p Problem) String() string {
	if p.Line > 0 {
		return fmt.Sprintf("%d:%d: %s: %s", p.Line, p.Column, p.Path, p.Msg)
	}
	return fmt.Sprintf("%s: %s", p.Path, p.Msg)
}

// InvalidError lists every problem found while loading a policy.
type InvalidError struct {
	Source   string
	Problems []Problem
}

func (e *InvalidError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "policy %s is invalid (%d problem", e.Source, len(e.Problems))
	if len(e.Problems) != 1 {
		b.WriteString("s")
	}
	b.WriteString("):")
	for _, p := range e.Problems {
		if p.Line > 0 {
			b.WriteString("\n  " + e.Source + ":" + p.String())
		} else {
			b.WriteString("\n  " + e.Source + ": " + p.String())
		}
	}
	return b.String()
}

// Bounds on a policy document. A policy is a few kilobytes; these stop a
// hostile or broken one (a proposal comes over the API) from costing the
// broker memory or time before it is refused.
const (
	// MaxPolicyBytes bounds the document.
	MaxPolicyBytes = 1 << 20
	// MaxDepth bounds how deeply mappings and lists nest; the deepest
	// setting of a valid policy is about ten levels down.
	MaxDepth = 32
	// MaxNodes bounds the number of YAML values.
	MaxNodes = 100000
	// MaxGroupMembers bounds each group, MaxGroups the groups, MaxAccounts
	// the accounts and MaxAlternatives the alternatives of a rule and the
	// requirements of an alternative; MaxApprovals bounds one requirement.
	MaxGroupMembers = 2000
	MaxGroups       = 1000
	MaxAccounts     = 1000
	MaxAlternatives = 16
	MaxApprovals    = 100
)

// Load parses and validates a policy document. Every problem is reported,
// not only the first; any problem makes the whole policy invalid.
func Load(b []byte, source string) (*Policy, error) {
	doc := func(msg string) error {
		return &InvalidError{Source: source, Problems: []Problem{{Path: "(document)", Msg: msg}}}
	}
	if len(b) > MaxPolicyBytes {
		return nil, doc(fmt.Sprintf("the policy is %d bytes, more than the %d a policy may have", len(b), MaxPolicyBytes))
	}
	var n yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&n); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, doc("the policy is empty")
		}
		return nil, doc("not valid YAML: " + err.Error())
	}
	if len(n.Content) == 0 {
		return nil, doc("the policy is empty")
	}
	var more yaml.Node
	if err := dec.Decode(&more); !errors.Is(err, io.EOF) {
		return nil, doc("the file holds more than one YAML document (a second --- line): a policy is one document")
	}
	return LoadNode(n.Content[0], source)
}

// LoadNode validates a policy held in a YAML node, such as the policy:
// section of the broker's configuration.
func LoadNode(n *yaml.Node, source string) (*Policy, error) {
	l := &loader{}
	// The shape is checked before anything is read: an alias would be
	// read as often as it is named (a "billion laughs" document), and the
	// walks below recurse by depth.
	if l.shape(n); len(l.problems) > 0 {
		return nil, &InvalidError{Source: source, Problems: l.problems}
	}
	p := l.policy(n)
	if len(l.problems) > 0 {
		sort.SliceStable(l.problems, func(i, j int) bool { return l.problems[i].Line < l.problems[j].Line })
		return nil, &InvalidError{Source: source, Problems: l.problems}
	}
	p.finish()
	p.warnings = l.warnings
	return p, nil
}

type loader struct {
	problems []Problem
	warnings []Problem
}

func (l *loader) warn(n *yaml.Node, path, format string, args ...any) {
	w := Problem{Path: path, Msg: fmt.Sprintf(format, args...)}
	if n != nil {
		w.Line, w.Column = n.Line, n.Column
	}
	l.warnings = append(l.warnings, w)
}

// shape refuses anchors, aliases and merge keys, documents nested deeper
// than MaxDepth and documents of more than MaxNodes values. It walks with
// an explicit stack, so a deep document cannot exhaust the goroutine's.
func (l *loader) shape(root *yaml.Node) {
	type item struct {
		n     *yaml.Node
		depth int
	}
	stack := []item{{root, 1}}
	count, deep := 0, false
	for len(stack) > 0 {
		it := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		n := it.n
		if count++; count > MaxNodes {
			l.add(nil, "(document)", "the policy has more than %d values", MaxNodes)
			return
		}
		switch {
		case n.Kind == yaml.AliasNode:
			l.add(n, "(document)", "YAML aliases (*%s) are not allowed in a policy: write the value out where it is used", n.Value)
			continue
		case n.Anchor != "":
			l.add(n, "(document)", "YAML anchors (&%s) are not allowed in a policy: write the value out where it is used", n.Anchor)
		case n.Kind == yaml.ScalarNode && n.Tag == "!!merge":
			l.add(n, "(document)", "YAML merge keys (<<) are not allowed in a policy")
		}
		if it.depth > MaxDepth {
			if !deep {
				l.add(n, "(document)", "the policy nests more than %d levels deep", MaxDepth)
				deep = true
			}
			continue
		}
		for i := len(n.Content) - 1; i >= 0; i-- {
			stack = append(stack, item{n.Content[i], it.depth + 1})
		}
	}
	sort.SliceStable(l.problems, func(i, j int) bool { return l.problems[i].Line < l.problems[j].Line })
}

func (l *loader) add(n *yaml.Node, path, format string, args ...any) {
	pr := Problem{Path: path, Msg: fmt.Sprintf(format, args...)}
	if n != nil {
		pr.Line, pr.Column = n.Line, n.Column
	}
	l.problems = append(l.problems, pr)
}

// fields checks that n is a mapping with only the allowed keys and returns
// the value node of each key present.
func (l *loader) fields(n *yaml.Node, path string, allowed ...string) map[string]*yaml.Node {
	out := map[string]*yaml.Node{}
	if n.Kind != yaml.MappingNode {
		l.add(n, path, "must be a mapping")
		return out
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if !slices.Contains(allowed, k.Value) {
			l.add(k, path, "unknown setting %q (allowed: %s)", k.Value, strings.Join(allowed, ", "))
			continue
		}
		if _, dup := out[k.Value]; dup {
			l.add(k, path, "%q is set twice", k.Value)
			continue
		}
		out[k.Value] = v
	}
	return out
}

func (l *loader) str(n *yaml.Node, path string) string {
	if n == nil {
		return ""
	}
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		l.add(n, path, "must be a string")
		return ""
	}
	return n.Value
}

func (l *loader) strs(n *yaml.Node, path string) []string {
	if n == nil {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		l.add(n, path, "must be a list")
		return nil
	}
	out := make([]string, 0, len(n.Content))
	for i, c := range n.Content {
		out = append(out, l.str(c, fmt.Sprintf("%s[%d]", path, i)))
	}
	return out
}

func (l *loader) integer(n *yaml.Node, path string, def int) int {
	if n == nil {
		return def
	}
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
		l.add(n, path, "must be a whole number")
		return def
	}
	v, err := strconv.Atoi(n.Value)
	if err != nil {
		l.add(n, path, "must be a whole number")
		return def
	}
	return v
}

func (l *loader) boolean(n *yaml.Node, path string) bool {
	if n == nil {
		return false
	}
	if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
		l.add(n, path, "must be true or false")
		return false
	}
	return n.Value == "true"
}

// duration parses a Go duration ("90m", "1h30m") within [MinDuration, ceiling].
func (l *loader) duration(n *yaml.Node, path string, ceiling time.Duration) Duration {
	if n == nil {
		l.add(nil, path, "is required (a duration such as \"1h\")")
		return 0
	}
	s := l.str(n, path)
	d, err := time.ParseDuration(s)
	if err != nil {
		l.add(n, path, "%q is not a duration (write e.g. \"30m\" or \"1h\")", s)
		return 0
	}
	if d < MinDuration {
		l.add(n, path, "%s is shorter than %s", d, MinDuration)
	}
	// The log records windows and TTLs in whole seconds; a fraction would
	// be acted on but never recorded.
	if d >= MinDuration && d%time.Second != 0 {
		l.add(n, path, "%s is not a whole number of seconds", d)
	}
	if ceiling > 0 && d > ceiling {
		l.add(n, path, "%s is longer than the ceiling of %s (max_duration)", d, ceiling)
	}
	return Duration(d)
}

func (l *loader) policy(n *yaml.Node) *Policy {
	p := &Policy{Groups: map[string][]string{}}
	f := l.fields(n, "policy", "groups", "auditors", "relying_parties", "admins", "policy_admins", "policy_change_window",
		"max_duration", "accounts", "contacts", "identity")
	if id := f["identity"]; id != nil {
		p.Identity = l.identity(id)
	}

	ceiling := DefaultCeiling
	if v := f["max_duration"]; v != nil {
		ceiling = l.duration(v, "max_duration", 0).D()
		if ceiling < MinDuration {
			ceiling = DefaultCeiling
		}
	}
	p.MaxDuration = Duration(ceiling)

	if g := f["groups"]; g != nil {
		switch {
		case g.Kind != yaml.MappingNode:
			l.add(g, "groups", "must be a mapping of group name to a list of principals")
		case len(g.Content)/2 > MaxGroups:
			l.add(g, "groups", "more than %d groups", MaxGroups)
		default:
			for i := 0; i+1 < len(g.Content); i += 2 {
				k, v := g.Content[i], g.Content[i+1]
				path := "groups." + k.Value
				if !nameRE.MatchString(k.Value) {
					l.add(k, path, "group name %q must be lower-case letters, digits, . _ - (at most 64)", k.Value)
				}
				if _, dup := p.Groups[k.Value]; dup {
					l.add(k, path, "group %q is defined twice", k.Value)
				}
				members := l.strs(v, path)
				if len(members) > MaxGroupMembers {
					l.add(v, path, "more than %d members", MaxGroupMembers)
					members = nil
				}
				seen := map[string]bool{}
				for j, m := range members {
					if !principalRE.MatchString(m) {
						l.add(v.Content[j], fmt.Sprintf("%s[%d]", path, j), "principal %q must be letters, digits, . _ @ - (at most 128)", m)
					}
					if seen[m] {
						l.add(v.Content[j], fmt.Sprintf("%s[%d]", path, j), "principal %q is listed twice", m)
					}
					seen[m] = true
				}
				members = slices.Clone(members)
				sort.Strings(members)
				p.Groups[k.Value] = members
			}
		}
	}
	groupRef := func(n *yaml.Node, path string) string {
		name := l.str(n, path)
		if n != nil && name != "" {
			if _, ok := p.Groups[name]; !ok {
				l.add(n, path, "unknown group %q", name)
			}
		}
		return name
	}
	p.Auditors = groupRef(f["auditors"], "auditors")
	p.RelyingParties = groupRef(f["relying_parties"], "relying_parties")
	p.Admins = groupRef(f["admins"], "admins")
	known := func(g string) bool { _, ok := p.Groups[g]; return ok }
	if an := f["policy_admins"]; an != nil {
		before := len(l.problems)
		p.PolicyAdmins = l.rule(an, n, "policy_admins", known)
		p.ChangeWindow = l.optDuration(f["policy_change_window"], "policy_change_window", ceiling, min(DefaultChangeWindow, ceiling))
		if len(l.problems) == before {
			l.reachableAdmins(an, p)
		}
	} else if cw := f["policy_change_window"]; cw != nil {
		l.add(cw, "policy_change_window", "is set but policy_admins is not: without policy admins the policy can never be changed")
	}

	if cn := f["contacts"]; cn != nil {
		if cn.Kind != yaml.MappingNode {
			l.add(cn, "contacts", "must be a mapping of principal to {slack, webhook_tag, email}")
		} else {
			p.Contacts = map[string]Contact{}
			for i := 0; i+1 < len(cn.Content); i += 2 {
				k, v := cn.Content[i], cn.Content[i+1]
				path := "contacts." + k.Value
				if !principalRE.MatchString(k.Value) {
					l.add(k, path, "principal %q is not a valid principal", k.Value)
				}
				cf := l.fields(v, path, "slack", "webhook_tag", "email")
				c := Contact{Slack: l.str(cf["slack"], path+".slack"), WebhookTag: l.str(cf["webhook_tag"], path+".webhook_tag"), Email: l.str(cf["email"], path+".email")}
				// In a fixed order: problems on one line keep the order found.
				for _, s := range [...]struct{ name, val string }{{"slack", c.Slack}, {"webhook_tag", c.WebhookTag}, {"email", c.Email}} {
					if len(s.val) > 128 || strings.ContainsAny(s.val, "\n\r\t ") {
						l.add(cf[s.name], path+"."+s.name, "must be at most 128 characters without whitespace")
					}
				}
				p.Contacts[k.Value] = c
			}
		}
	}

	audiences := map[string]string{}
	if as := f["accounts"]; as != nil {
		switch {
		case as.Kind != yaml.SequenceNode:
			l.add(as, "accounts", "must be a list")
		case len(as.Content) > MaxAccounts:
			l.add(as, "accounts", "more than %d accounts", MaxAccounts)
		default:
			names := map[string]bool{}
			for i, an := range as.Content {
				a := l.account(an, i, p, ceiling)
				if a == nil {
					continue
				}
				path := fmt.Sprintf("accounts[%d](%s)", i, a.Name)
				if names[a.Name] {
					l.add(an, path, "account %q is defined twice", a.Name)
				}
				names[a.Name] = true
				for _, aud := range a.Audiences {
					if other, ok := audiences[aud]; ok && other != a.Name {
						l.add(an, path+".audiences", "audience %q is already used by account %q: a token for one must never be accepted by the other", aud, other)
					}
					audiences[aud] = a.Name
				}
				p.Accounts = append(p.Accounts, a)
			}
			// Drill audiences must differ from every real audience, of any
			// account, so relying parties can refuse drill tokens for real work.
			for i, a := range p.Accounts {
				if a.DrillAudience == "" {
					continue
				}
				if other, ok := audiences[a.DrillAudience]; ok {
					l.add(as.Content[i], fmt.Sprintf("accounts[%d](%s).drill_audience", i, a.Name), "drill audience %q is a real audience of account %q", a.DrillAudience, other)
				}
				audiences[a.DrillAudience] = a.Name + " (drill)"
			}
		}
	}
	return p
}

func (l *loader) account(n *yaml.Node, i int, p *Policy, ceiling time.Duration) *Account {
	before := len(l.problems)
	path := fmt.Sprintf("accounts[%d]", i)
	f := l.fields(n, path, "name", "description", "owner", "requesters", "audiences", "max_ttl",
		"approval_window", "activation_window", "max_issuances", "deny_threshold", "require_ticket", "quorum",
		"reviewers", "review_within", "block_on_overdue_review", "drill_audience", "drill_every", "review_every",
		"require_alert_ack", "ack_sinks", "solo", "token_key", "rotate_after_use", "ssh", "x509", "federation")
	if n.Kind != yaml.MappingNode {
		return nil
	}
	a := &Account{Name: l.str(f["name"], path+".name")}
	if !nameRE.MatchString(a.Name) {
		l.add(n, path+".name", "account name %q must be lower-case letters, digits, . _ - (at most 64)", a.Name)
	}
	path = fmt.Sprintf("accounts[%d](%s)", i, a.Name)
	a.Description = l.str(f["description"], path+".description")
	if len(a.Description) > 500 {
		l.add(f["description"], path+".description", "is longer than 500 bytes")
	}
	known := func(g string) bool { _, ok := p.Groups[g]; return ok }

	a.Owner = l.str(f["owner"], path+".owner")
	switch {
	case f["owner"] == nil:
		l.add(n, path+".owner", "is required (the group that owns the account and may revoke its grants)")
	case !known(a.Owner):
		l.add(f["owner"], path+".owner", "unknown group %q", a.Owner)
	}

	a.Requesters = l.strs(f["requesters"], path+".requesters")
	if len(a.Requesters) == 0 {
		l.add(n, path+".requesters", "is required: at least one group whose members may request access")
	}
	var requesters []string
	seenRequester := map[string]bool{}
	for j, g := range a.Requesters {
		if !known(g) {
			l.add(f["requesters"].Content[j], fmt.Sprintf("%s.requesters[%d]", path, j), "unknown group %q", g)
			continue
		}
		for _, m := range p.Groups[g] {
			if !seenRequester[m] {
				seenRequester[m] = true
				requesters = append(requesters, m)
			}
		}
	}
	if len(a.Requesters) > 0 && len(requesters) == 0 && len(l.problems) == before {
		l.add(f["requesters"], path+".requesters", "the requester groups have no members: nobody could use this account")
	}

	a.Audiences = l.strs(f["audiences"], path+".audiences")
	if len(a.Audiences) == 0 {
		l.add(n, path+".audiences", "is required: at least one audience (the relying system's identifier)")
	}
	for j, aud := range a.Audiences {
		if !audienceRE.MatchString(aud) {
			l.add(f["audiences"].Content[j], fmt.Sprintf("%s.audiences[%d]", path, j), "audience %q must be 1-256 printable ASCII characters without spaces", aud)
		}
		if slices.Index(a.Audiences, aud) != j {
			l.add(f["audiences"].Content[j], fmt.Sprintf("%s.audiences[%d]", path, j), "audience %q is listed twice", aud)
		}
	}

	a.MaxTTL = l.duration(f["max_ttl"], path+".max_ttl", ceiling)
	a.ApprovalWindow = l.duration(f["approval_window"], path+".approval_window", ceiling)
	a.ActivationWindow = l.duration(f["activation_window"], path+".activation_window", ceiling)

	a.MaxIssuances = l.integer(f["max_issuances"], path+".max_issuances", DefaultMaxIssuances)
	if a.MaxIssuances < 1 || a.MaxIssuances > MaxIssuancesLimit {
		l.add(f["max_issuances"], path+".max_issuances", "must be between 1 and %d", MaxIssuancesLimit)
	}
	a.DenyThreshold = l.integer(f["deny_threshold"], path+".deny_threshold", DefaultDenyThreshold)
	if a.DenyThreshold < 1 {
		l.add(f["deny_threshold"], path+".deny_threshold", "must be at least 1")
	}
	a.RequireTicket = l.boolean(f["require_ticket"], path+".require_ticket")

	a.Quorum = l.rule(f["quorum"], n, path+".quorum", known)
	l.governance(f, n, path, a, known, ceiling)
	if f["ssh"] != nil {
		a.SSH = l.sshPolicy(f["ssh"], path+".ssh", a, ceiling)
	}
	if f["x509"] != nil {
		a.X509 = l.x509Policy(f["x509"], path+".x509", a, requesters, ceiling)
	}
	l.federation(f, n, path, a)
	if len(l.problems) == before {
		// Only with every group reference sound would the matching mean anything.
		l.satisfiable(f["quorum"], path, p, a, requesters)
	}
	return a
}

// federation reads the consumers an account is marked for and warns about
// settings they are documented to refuse. A token lives at most max_ttl
// (it expires no later than its grant, which ends at most max_ttl after
// approval; solo grants are shorter still), so max_ttl bounds exp - iat.
func (l *loader) federation(f map[string]*yaml.Node, n *yaml.Node, path string, a *Account) {
	fn := f["federation"]
	a.Federation = l.strs(fn, path+".federation")
	for j, c := range a.Federation {
		at := fmt.Sprintf("%s.federation[%d]", path, j)
		if !slices.Contains(FederationConsumers, c) {
			l.add(fn.Content[j], at, "unknown consumer %q (known: %s)", c, strings.Join(FederationConsumers, ", "))
		}
		if slices.Index(a.Federation, c) != j {
			l.add(fn.Content[j], at, "consumer %q is listed twice", c)
		}
	}
	if slices.Contains(a.Federation, FederationGCP) && a.MaxTTL.D() >= GCPMaxTokenLifetime {
		at := f["max_ttl"]
		if at == nil {
			at = n
		}
		l.warn(at, path+".max_ttl", "%s lets tokens live %s, but the account is marked for gcp and GCP workload identity federation refuses a token whose exp is not less than %s after its iat: set max_ttl below %s (GCP recommends under 6h)",
			a.MaxTTL.D(), a.MaxTTL.D(), GCPMaxTokenLifetime, GCPMaxTokenLifetime)
	}
}

func (l *loader) rule(n, parent *yaml.Node, path string, known func(string) bool) Rule {
	if n == nil {
		l.add(parent, path, "is required: a list of alternatives, each `require:` a list of {group, approvals}")
		return nil
	}
	if n.Kind != yaml.SequenceNode || len(n.Content) == 0 {
		l.add(n, path, "must be a non-empty list of alternatives")
		return nil
	}
	if len(n.Content) > MaxAlternatives {
		l.add(n, path, "more than %d alternatives", MaxAlternatives)
		return nil
	}
	var rule Rule
	for i, an := range n.Content {
		apath := fmt.Sprintf("%s[%d]", path, i)
		f := l.fields(an, apath, "require")
		rn := f["require"]
		if rn == nil || rn.Kind != yaml.SequenceNode || len(rn.Content) == 0 {
			l.add(an, apath, "needs zero approvals: `require` must list at least one {group, approvals}")
			rule = append(rule, nil)
			continue
		}
		if len(rn.Content) > MaxAlternatives {
			l.add(rn, apath+".require", "more than %d requirements", MaxAlternatives)
			rule = append(rule, nil)
			continue
		}
		var alt Alternative
		total := 0
		for j, qn := range rn.Content {
			qpath := fmt.Sprintf("%s.require[%d]", apath, j)
			qf := l.fields(qn, qpath, "group", "approvals")
			req := Requirement{Group: l.str(qf["group"], qpath+".group"), Approvals: l.integer(qf["approvals"], qpath+".approvals", 0)}
			switch {
			case qf["group"] == nil:
				l.add(qn, qpath+".group", "is required")
			case !known(req.Group):
				l.add(qf["group"], qpath+".group", "unknown group %q", req.Group)
			}
			if req.Approvals < 1 {
				l.add(qn, qpath+".approvals", "must be at least 1 (an alternative must never be met by nobody)")
			}
			if req.Approvals > MaxApprovals {
				l.add(qn, qpath+".approvals", "must be at most %d", MaxApprovals)
				req.Approvals = MaxApprovals
			}
			for _, prev := range alt {
				if prev.Group == req.Group {
					l.add(qn, qpath, "group %q appears twice in one alternative: list it once with the total approvals", req.Group)
				}
			}
			total += max(req.Approvals, 0)
			alt = append(alt, req)
		}
		if total == 0 {
			l.add(an, apath, "needs zero approvals")
		}
		rule = append(rule, alt)
	}
	return rule
}

// satisfiable checks every alternative can be met by the eligible approvers
// whoever among the possible requesters asks, and that the deny threshold
// can be reached.
func (l *loader) satisfiable(n *yaml.Node, path string, p *Policy, a *Account, requesters []string) {
	for i, alt := range a.Quorum {
		if r, candidates, ok := meetableWithoutAny(p, alt, requesters); !ok {
			l.add(n.Content[i], fmt.Sprintf("%s.quorum[%d]", path, i),
				"cannot be met when %s requests: needs %s from distinct approvers other than %s, but only %d eligible (%s)",
				r, Rule{alt}.describeShort(), r, len(candidates), strings.Join(candidates, ", "))
		}
	}
	eligible := p.eligibleApprovers(a.Quorum, "")
	for _, r := range requesters {
		n := len(eligible)
		if _, in := slices.BinarySearch(eligible, r); in {
			n--
		}
		if n < a.DenyThreshold {
			l.add(nil, path+".deny_threshold", "is %d but only %d approvers other than %s could deny", a.DenyThreshold, n, r)
			break
		}
	}
}

// reachableAdmins checks the policy_admins rule as satisfiable checks an
// account's quorum: every alternative can be met by the admins other than
// whoever proposes the change, for every possible proposer (a policy admin
// or a member of admins), so no change is ever stuck and none is ever
// approved by its proposer alone.
func (l *loader) reachableAdmins(n *yaml.Node, p *Policy) {
	proposers := p.eligibleApprovers(p.PolicyAdmins, "")
	if p.Admins != "" {
		admins := proposers[:len(proposers):len(proposers)] // sorted
		for _, m := range p.Groups[p.Admins] {
			if _, in := slices.BinarySearch(admins, m); !in {
				proposers = append(proposers, m)
			}
		}
	}
	for i, alt := range p.PolicyAdmins {
		all := p.eligibleApprovers(Rule{alt}, "")
		if _, ok := match(p, alt, all); !ok {
			l.add(n.Content[i], fmt.Sprintf("policy_admins[%d]", i), "cannot be met: needs %s from distinct admins, but only %d are eligible (%s)",
				Rule{alt}.describeShort(), len(all), strings.Join(all, ", "))
			continue
		}
		if r, others, ok := meetableWithoutAny(p, alt, proposers); !ok {
			l.add(n.Content[i], fmt.Sprintf("policy_admins[%d]", i),
				"cannot be met when %s proposes a change: needs %s from distinct admins other than the proposer, but only %d remain (%s)",
				r, Rule{alt}.describeShort(), len(others), strings.Join(others, ", "))
		}
	}
}

// meetableWithoutAny reports whether alt can be met by its eligible
// members once any one of excluded is left out; when not, it names the
// first such person and the candidates left without them. Leaving out
// someone the full matching does not use changes nothing, so only the
// matched members (at most the alternative's approvals) are tried again:
// the cost does not grow with the number of requesters.
func meetableWithoutAny(p *Policy, alt Alternative, excluded []string) (string, []string, bool) {
	all := p.eligibleApprovers(Rule{alt}, "")
	without := func(r string) []string {
		if _, in := slices.BinarySearch(all, r); !in {
			return all
		}
		return slices.DeleteFunc(slices.Clone(all), func(m string) bool { return m == r })
	}
	assign, ok := match(p, alt, all)
	if !ok {
		if len(excluded) == 0 {
			return "", all, false
		}
		return excluded[0], without(excluded[0]), false
	}
	for _, r := range excluded {
		if _, used := assign[r]; !used {
			continue
		}
		if others := without(r); !matchable(p, alt, others) {
			return r, others, false
		}
	}
	return "", nil, true
}

func matchable(p *Policy, alt Alternative, approvers []string) bool {
	_, ok := match(p, alt, approvers)
	return ok
}

func (r Rule) describeShort() string {
	s := r.String()
	return strings.TrimSuffix(s, " (the requester never counts; each approver counts once)")
}

// optDuration parses an optional duration within [MinDuration, ceiling].
func (l *loader) optDuration(n *yaml.Node, path string, ceiling time.Duration, def time.Duration) Duration {
	if n == nil {
		return Duration(def)
	}
	return l.duration(n, path, ceiling)
}

// governance reads the settings around the flow: post-use reviews, drills,
// attestations, alert acknowledgement, solo access and per-account keys.
func (l *loader) governance(f map[string]*yaml.Node, n *yaml.Node, path string, a *Account, known func(string) bool, ceiling time.Duration) {
	a.Reviewers = l.str(f["reviewers"], path+".reviewers")
	if a.Reviewers == "" {
		a.Reviewers = a.Owner
	} else if !known(a.Reviewers) {
		l.add(f["reviewers"], path+".reviewers", "unknown group %q", a.Reviewers)
	}
	a.ReviewWithin = l.optDuration(f["review_within"], path+".review_within", CadenceCeiling, DefaultReviewWithin)
	a.BlockOnOverdueReview = l.boolean(f["block_on_overdue_review"], path+".block_on_overdue_review")
	a.DrillAudience = l.str(f["drill_audience"], path+".drill_audience")
	if a.DrillAudience != "" && !audienceRE.MatchString(a.DrillAudience) {
		l.add(f["drill_audience"], path+".drill_audience", "must be 1-256 printable ASCII characters without spaces")
	}
	if slices.Contains(a.Audiences, a.DrillAudience) {
		l.add(f["drill_audience"], path+".drill_audience", "the drill audience must differ from the account's real audiences")
	}
	if f["drill_every"] != nil {
		a.DrillEvery = l.duration(f["drill_every"], path+".drill_every", CadenceCeiling)
		if a.DrillAudience == "" {
			l.add(f["drill_every"], path+".drill_every", "drills need a drill_audience")
		}
	}
	if f["review_every"] != nil {
		a.ReviewEvery = l.duration(f["review_every"], path+".review_every", CadenceCeiling)
	}
	a.RequireAlertAck = l.boolean(f["require_alert_ack"], path+".require_alert_ack")
	a.AckSinks = l.strs(f["ack_sinks"], path+".ack_sinks")
	if a.RequireAlertAck && len(a.AckSinks) == 0 {
		l.add(n, path+".ack_sinks", "require_alert_ack needs at least one sink in ack_sinks")
	}
	if sn := f["solo"]; sn != nil {
		sf := l.fields(sn, path+".solo", "delay", "max_ttl")
		a.Solo = &Solo{Delay: l.duration(sf["delay"], path+".solo.delay", ceiling), MaxTTL: l.duration(sf["max_ttl"], path+".solo.max_ttl", ceiling)}
		if a.Solo.MaxTTL > a.MaxTTL {
			l.add(sn, path+".solo.max_ttl", "must not exceed the account's max_ttl")
		}
		if a.Solo.Delay >= a.ApprovalWindow {
			l.add(sn, path+".solo.delay", "must be shorter than the approval_window, or a solo request expires before its veto window ends")
		}
		if len(a.AckSinks) == 0 {
			l.add(sn, path+".solo", "solo access needs ack_sinks: its veto window starts only when one of them acknowledges the alert")
		}
	}
	a.TokenKey = l.str(f["token_key"], path+".token_key")
	if a.TokenKey != "" && !regexp.MustCompile(`^[A-Za-z0-9._:-]{1,64}$`).MatchString(a.TokenKey) {
		l.add(f["token_key"], path+".token_key", "is not a key label")
	}
	a.RotateAfterUse = l.boolean(f["rotate_after_use"], path+".rotate_after_use")
	if a.RotateAfterUse && a.TokenKey == "" {
		l.add(f["rotate_after_use"], path+".rotate_after_use", "rotation after use needs the account's own token_key")
	}
}
