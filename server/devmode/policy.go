package devmode

import "strings"

// The dev identities in their roles, as every policy built by Policy has
// them.
const policyGroups = `auditors: auditors
policy_admins: [{require: [{group: policy-admins, approvals: 2}]}]
groups:
  sre: [alice]
  db-admins: [bob, carol]
  security: [erin]
  db-owners: [carol]
  auditors: [dave]
  policy-admins: [bob, carol, erin]
`

// policyWindows are prod-db's bounds unless fields set them.
var policyWindows = []string{"max_ttl: 1h", "approval_window: 30m", "activation_window: 15m"}

// Policy is the one place tests and benchmarks build their policies from:
// the dev identities' groups, then top (top-level settings such as
// "admins: security", one per line), and prod-db, requested by sre for
// db.prod.example and approved by one db-admin and one security approver,
// with fields added to it ("solo: {delay: 10m}", one setting each; those
// naming a window replace the default one).
func Policy(top string, fields ...string) string {
	var b strings.Builder
	b.WriteString(policyGroups)
	if top = strings.TrimSpace(top); top != "" {
		b.WriteString(top + "\n")
	}
	b.WriteString("accounts:\n  - name: prod-db\n    owner: db-owners\n    requesters: [sre]\n    audiences: [db.prod.example]\n")
	set := map[string]bool{}
	for _, f := range fields {
		key, _, _ := strings.Cut(f, ":")
		set[key] = true
		b.WriteString("    " + f + "\n")
	}
	for _, w := range policyWindows {
		if key, _, _ := strings.Cut(w, ":"); !set[key] {
			b.WriteString("    " + w + "\n")
		}
	}
	b.WriteString("    quorum:\n      - require:\n          - {group: db-admins, approvals: 1}\n          - {group: security, approvals: 1}\n")
	return b.String()
}
