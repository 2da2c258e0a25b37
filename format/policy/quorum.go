package policy

import (
	"slices"
	"sort"
)

// Outcome is the result of evaluating a quorum rule.
type Outcome struct {
	// Met is true when some alternative is satisfied.
	Met bool
	// Alternative is the index of the first satisfied alternative.
	Alternative int
	// Assignment maps each counted approver to the group whose requirement
	// it fills, for the satisfied alternative.
	Assignment map[string]string
	// Counted lists the approvals that counted at all: eligible, not the
	// requester, each principal once.
	Counted []string
}

// Approvers returns the principals of the assignment, sorted.
func (o Outcome) Approvers() []string {
	out := make([]string, 0, len(o.Assignment))
	for p := range o.Assignment {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// Approval is one approval (or denial): the principal it is logged under
// and the key that signed it.
type Approval struct {
	Principal string
	// Key names the signing key: "sha256:" and the hex SHA-256 of its
	// DER SubjectPublicKeyInfo (for a passkey, of the certificate key that
	// bound it). Empty when it is not known.
	Key string
}

// Evaluate decides whether approvals satisfy rule for a request made by
// requester, by principal names alone. EvaluateSigned is the rule for
// signed approvals; Evaluate is EvaluateSigned without keys.
func Evaluate(p *Policy, rule Rule, requester string, approvals []string) Outcome {
	as := make([]Approval, len(approvals))
	for i, a := range approvals {
		as[i] = Approval{Principal: a}
	}
	return EvaluateSigned(p, rule, Approval{Principal: requester}, as)
}

// EvaluateSigned decides whether approvals satisfy rule for a request
// made by requester. Membership is taken from p at the time of the call,
// so an approver removed from the policy since their review no longer
// counts. The requester never counts, neither under their name nor by
// their key, whatever name an approval signed with it is logged under.
// Each principal counts once and so does each key: of several approvals
// signed by one key, only the first counts, so one key fills at most one
// requirement. One approver fills at most one requirement: an alternative
// is met when a matching of approvers to requirement slots fills every
// slot.
func EvaluateSigned(p *Policy, rule Rule, requester Approval, approvals []Approval) Outcome {
	counted := countable(p, rule, requester, approvals)
	sort.Strings(counted)
	out := Outcome{Counted: counted, Alternative: -1}
	for i, alt := range rule {
		if assign, ok := match(p, alt, counted); ok {
			out.Met, out.Alternative, out.Assignment = true, i, assign
			return out
		}
	}
	return out
}

// countable lists, in order, the principals of the approvals that count:
// eligible, neither the requester nor signed by the requester's key, each
// principal and each key once.
func countable(p *Policy, rule Rule, requester Approval, approvals []Approval) []string {
	var counted, keys []string
	for _, a := range approvals {
		switch {
		case a.Principal == requester.Principal, a.Key != "" && a.Key == requester.Key:
			continue
		case slices.Contains(counted, a.Principal), a.Key != "" && slices.Contains(keys, a.Key):
			continue
		case !p.Eligible(rule, a.Principal):
			continue
		}
		counted = append(counted, a.Principal)
		if a.Key != "" {
			keys = append(keys, a.Key)
		}
	}
	return counted
}

// match finds an assignment of approvers to the slots of alt (a
// requirement with Approvals n has n slots) that fills every slot, by
// augmenting paths (Kuhn's algorithm). Sizes are tiny: groups of people.
func match(p *Policy, alt Alternative, approvers []string) (map[string]string, bool) {
	// Count the slots before making them: approvals is whatever the
	// document says, and a count far beyond the approvers could never be
	// filled but would exhaust memory being laid out.
	need := 0
	for _, req := range alt {
		if req.Approvals > len(approvers)-need {
			return nil, false
		}
		need += max(req.Approvals, 0)
	}
	assign, filled, slots := matchMost(p, alt, approvers)
	if slots == 0 || filled < slots {
		return nil, false // an alternative that needs nothing never counts
	}
	return assign, true
}

// Shortfall is how many more approvals, at the least, the rule needs to be
// met by approvals counted as EvaluateSigned counts them: 0 when it is
// met, and for each alternative the slots that no matching of the counted
// approvers fills, the smallest over the alternatives. It is what a
// refusal tells people ("2 more admins must sign").
func Shortfall(p *Policy, rule Rule, requester Approval, approvals []Approval) int {
	counted := countable(p, rule, requester, approvals)
	sort.Strings(counted)
	best := -1
	for _, alt := range rule {
		slots := 0
		for _, req := range alt {
			slots += max(min(req.Approvals, MaxApprovals), 0)
		}
		if slots == 0 {
			continue
		}
		_, filled, _ := matchMost(p, alt, counted)
		if short := slots - filled; best < 0 || short < best {
			best = short
		}
	}
	return max(best, 0)
}

// matchMost fills as many slots of alt as a matching of approvers can and
// returns the assignment, how many it filled and how many slots there are.
// Approvals beyond MaxApprovals are never laid out (Load refuses them).
func matchMost(p *Policy, alt Alternative, approvers []string) (map[string]string, int, int) {
	var slots []int // slot -> requirement
	for r, req := range alt {
		for range min(req.Approvals, MaxApprovals) {
			slots = append(slots, r)
		}
	}
	// Membership is looked up once per approver and requirement, not at
	// every step of the search.
	member := make([][]bool, len(approvers))
	for a, who := range approvers {
		member[a] = make([]bool, len(alt))
		for r, req := range alt {
			member[a][r] = p.IsMember(req.Group, who)
		}
	}
	slotOwner := make([]int, len(slots)) // slot -> approver index, -1 if free
	for i := range slotOwner {
		slotOwner[i] = -1
	}
	var try func(a int, seen []bool) bool
	try = func(a int, seen []bool) bool {
		for s, r := range slots {
			if seen[s] || !member[a][r] {
				continue
			}
			seen[s] = true
			if slotOwner[s] == -1 || try(slotOwner[s], seen) {
				slotOwner[s] = a
				return true
			}
		}
		return false
	}
	filled := 0
	for a := range approvers {
		if try(a, make([]bool, len(slots))) {
			filled++
			if filled == len(slots) {
				break
			}
		}
	}
	assign := map[string]string{}
	for s, a := range slotOwner {
		if a >= 0 {
			assign[approvers[a]] = alt[slots[s]].Group
		}
	}
	return assign, filled, len(slots)
}

// Denials counts the distinct eligible principals, other than the
// requester, among deniers.
func Denials(p *Policy, rule Rule, requester string, deniers []string) int {
	as := make([]Approval, len(deniers))
	for i, d := range deniers {
		as[i] = Approval{Principal: d}
	}
	return DenialsSigned(p, rule, Approval{Principal: requester}, as)
}

// DenialsSigned counts denials as EvaluateSigned counts approvals: eligible,
// not the requester's name or key, each principal and each key once.
func DenialsSigned(p *Policy, rule Rule, requester Approval, deniers []Approval) int {
	return len(countable(p, rule, requester, deniers))
}

// eligibleApprovers lists every principal who may review under rule, other
// than requester.
func (p *Policy) eligibleApprovers(rule Rule, requester string) []string {
	seen := map[string]bool{}
	var out []string
	for _, alt := range rule {
		for _, req := range alt {
			for _, m := range p.Groups[req.Group] {
				if m != requester && !seen[m] {
					seen[m] = true
					out = append(out, m)
				}
			}
		}
	}
	sort.Strings(out)
	return out
}
