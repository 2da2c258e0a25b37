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

// Evaluate decides whether approvals satisfy rule for a request made by
// requester. Membership is taken from p at the time of the call, so an
// approver removed from the policy since their review no longer counts. The
// requester never counts and each principal counts once, however many
// approvals name them. One approver fills at most one requirement: an
// alternative is met when a matching of approvers to requirement slots
// fills every slot.
func Evaluate(p *Policy, rule Rule, requester string, approvals []string) Outcome {
	var counted []string
	for _, a := range approvals {
		if a == requester || slices.Contains(counted, a) || !p.Eligible(rule, a) {
			continue
		}
		counted = append(counted, a)
	}
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
	var slots []string // slot -> group
	for _, req := range alt {
		for range req.Approvals {
			slots = append(slots, req.Group)
		}
	}
	if len(slots) == 0 {
		return nil, false // an alternative that needs nothing never counts
	}
	if len(approvers) < len(slots) {
		return nil, false
	}
	slotOwner := make([]int, len(slots)) // slot -> approver index, -1 if free
	for i := range slotOwner {
		slotOwner[i] = -1
	}
	var try func(a int, seen []bool) bool
	try = func(a int, seen []bool) bool {
		for s, g := range slots {
			if seen[s] || !p.IsMember(g, approvers[a]) {
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
	if filled < len(slots) {
		return nil, false
	}
	assign := map[string]string{}
	for s, a := range slotOwner {
		assign[approvers[a]] = slots[s]
	}
	return assign, true
}

// Denials counts the distinct eligible principals, other than the
// requester, among deniers.
func Denials(p *Policy, rule Rule, requester string, deniers []string) int {
	var seen []string
	for _, d := range deniers {
		if d != requester && !slices.Contains(seen, d) && p.Eligible(rule, d) {
			seen = append(seen, d)
		}
	}
	return len(seen)
}

// eligibleApprovers lists every principal who may review under rule, other
// than requester.
func (p *Policy) eligibleApprovers(rule Rule, requester string) []string {
	var out []string
	for _, alt := range rule {
		for _, req := range alt {
			for _, m := range p.Groups[req.Group] {
				if m != requester && !slices.Contains(out, m) {
					out = append(out, m)
				}
			}
		}
	}
	sort.Strings(out)
	return out
}
