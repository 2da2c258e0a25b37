package policy

import (
	"bytes"
	"testing"
)

// fuzzPolicy uses every setting the loader knows, so that mutations start
// from a document that reaches the deepest checks (satisfiability, solo,
// drills, per-account keys) rather than failing on the first line.
const fuzzPolicy = `
auditors: auditors
relying_parties: relying
max_duration: 168h
policy_admins: [{require: [{group: security, approvals: 1}, {group: db-admins, approvals: 1}]}]
policy_change_window: 48h
groups:
  sre: [alice, frank]
  db-admins: [bob, carol]
  security: [erin, carol]
  owners: [olivia]
  reviewers: [rita, bob]
  auditors: [dave]
  relying: [svc-db]
contacts:
  bob: {slack: "@bob", email: bob@example.org}
  erin: {webhook_tag: sec-oncall}
accounts:
  - name: prod-db
    description: Production database superuser
    owner: owners
    requesters: [sre]
    audiences: [db.prod.example, db2.prod.example]
    max_ttl: 1h
    approval_window: 30m
    activation_window: 10m
    max_issuances: 5
    deny_threshold: 2
    require_ticket: true
    reviewers: reviewers
    review_within: 24h
    block_on_overdue_review: true
    drill_audience: drill.db.prod.example
    drill_every: 720h
    review_every: 2160h
    require_alert_ack: true
    ack_sinks: [soc]
    solo: {delay: 10m, max_ttl: 30m}
    token_key: prod-db-token
    rotate_after_use: true
    quorum:
      - require:
          - {group: db-admins, approvals: 1}
          - {group: security, approvals: 1}
      - require:
          - {group: db-admins, approvals: 2}
  - name: ledger
    owner: owners
    requesters: [sre, db-admins]
    audiences: [ledger.example]
    max_ttl: 30m
    approval_window: 15m
    activation_window: 5m
    quorum:
      - require: [{group: security, approvals: 1}]
`

// FuzzLoad feeds arbitrary documents to the policy loader. A policy that
// loads is hashed into the audit log and rebuilt from that log by the
// offline verifier, so its canonical form must not depend on anything but
// the document, and must survive the trip through FromCanonicalJSON.
func FuzzLoad(f *testing.F) {
	f.Add([]byte(fuzzPolicy))
	f.Add([]byte(basePolicy))
	f.Add([]byte(""))
	f.Add([]byte("---\n...\n"))
	f.Add([]byte("groups: {a: [x]}\naccounts: []\n"))
	f.Add([]byte("a: &a [x]\ngroups: *a\naccounts: [*a, *a]\n"))
	f.Add([]byte("groups: {a: [x], a: [y]}\n"))
	f.Add([]byte("accounts:\n  - quorum: [{require: [{group: g, approvals: 9223372036854775807}]}]\n"))

	f.Fuzz(func(t *testing.T, b []byte) {
		p1, err1 := Load(b, "fuzz.yaml")
		p2, err2 := Load(b, "fuzz.yaml")
		if (err1 == nil) != (err2 == nil) {
			t.Fatalf("loading twice disagrees: %v / %v", err1, err2)
		}
		if err1 != nil {
			// Operators diff the loader's output between runs; the same
			// document must always be reported the same way.
			if err1.Error() != err2.Error() {
				t.Fatalf("the problems differ between two loads:\n%v\n---\n%v", err1, err2)
			}
			return
		}
		c1, c2 := p1.CanonicalJSON(), p2.CanonicalJSON()
		if !bytes.Equal(c1, c2) || p1.Hash() != p2.Hash() {
			t.Fatalf("canonical form differs between two loads:\n%s\n%s", c1, c2)
		}
		back, err := FromCanonicalJSON(c1)
		if err != nil {
			t.Fatalf("the canonical form does not parse back: %v\n%s", err, c1)
		}
		if back.Hash() != p1.Hash() {
			t.Fatalf("the canonical form rebuilds another policy:\n%s\n%s", c1, back.CanonicalJSON())
		}
		for _, a := range p1.Accounts {
			if got, ok := p1.Account(a.Name); !ok || got != a {
				t.Fatalf("account %q is not indexed", a.Name)
			}
		}
	})
}
