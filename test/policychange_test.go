package test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/policy"
	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
	"github.com/bgbroker/breakglass/server/devmode"
)

// withSoloPolicy is dev mode's demo policy with time-locked solo access on
// prod-db: a weakening change (solo access needs no approver at all).
func withSoloPolicy(t *testing.T, d *devBroker) string {
	t.Helper()
	b, err := os.ReadFile(d.state("policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(b), "    require_ticket: false\n", "    require_ticket: false\n    ack_sinks: [events-file]\n    solo: {delay: 10m, max_ttl: 30m}\n", 1)
	if s == string(b) {
		t.Fatal("the demo policy changed: no require_ticket line")
	}
	return s
}

// The proposal workflow through bgctl: a policy admin proposes, the
// admins are alerted, the proposer's own approval is refused, one
// approval of two changes nothing, the second puts the policy in force;
// the weakening change is marked in the entry, the event and the
// verifier's report, which names both signers. A forged policy_loaded
// without the admins' signatures, written with the broker's own HSM keys
// as an operator holding the PIN could, fails offline verification.
func TestPolicyProposalFlow(t *testing.T) {
	d := startDev(t)
	d.exportAuditKey()
	hash0 := d.health(t).PolicyHash
	file := filepath.Join(t.TempDir(), "new.yaml")
	if err := os.WriteFile(file, []byte(withSoloPolicy(t, d)), 0o600); err != nil {
		t.Fatal(err)
	}

	// A file with problems is refused with every problem, before the broker.
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	_ = os.WriteFile(bad, []byte(strings.Replace(withSoloPolicy(t, d), "group: security", "group: nobody", 1)+"\nextra_setting: 1\n"), 0o600)
	if r := d.bgctl("erin", "policy", "propose", "--file", bad); r.code == 0 || !strings.Contains(r.stderr, `unknown group "nobody"`) || !strings.Contains(r.stderr, `unknown setting "extra_setting"`) {
		t.Fatalf("a bad proposal: %+v", r)
	}
	if r := d.bgctl("alice", "policy", "propose", "--file", file); r.code == 0 || !strings.Contains(r.stderr, "PermissionDenied") {
		t.Fatalf("a proposal by a requester: %+v", r)
	}

	// Hostile documents over the API: refused with a clear problem, nothing logged.
	size := len(d.chain())
	laughs := "groups:\n  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n  c: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
	for _, tc := range []struct {
		name, doc string
		code      codes.Code
		want      string
	}{
		{"a YAML bomb", laughs, codes.InvalidArgument, "YAML anchors (&a) are not allowed"},
		{"deep nesting", "groups: " + strings.Repeat("[", 40) + strings.Repeat("]", 40) + "\n", codes.InvalidArgument, "nests more than 32 levels deep"},
		{"two documents", withSoloPolicy(t, d) + "---\n" + withSoloPolicy(t, d), codes.InvalidArgument, "more than one YAML document"},
		{"an unknown field", withSoloPolicy(t, d) + "policy_admin: []\n", codes.InvalidArgument, `unknown setting "policy_admin"`},
		// The API's message limit stops it before any policy code runs.
		{"oversize", "groups: {}\n" + strings.Repeat("# padding\n", 110000), codes.ResourceExhausted, "larger than max"},
		{"unreachable policy admins", strings.Replace(withSoloPolicy(t, d), "approvals: 2}]", "approvals: 3}]", 1), codes.InvalidArgument, "cannot be met when bob proposes a change"},
	} {
		_, err := d.client("erin").ProposePolicy(context.Background(), &bgv1.ProposePolicyRequest{Policy: []byte(tc.doc), Source: "hostile.yaml"})
		if codeOf(err) != tc.code || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %s with %q", tc.name, err, tc.code, tc.want)
		}
	}
	if len(d.chain()) != size {
		t.Fatal("a refused proposal wrote to the log")
	}

	out := d.mustBgctl("erin", "policy", "propose", "--file", file, "--comment", "solo access for the weekend freeze", "-o", "json")
	var prop struct {
		Proposal struct {
			ID      string   `json:"id"`
			Changes []string `json:"changes"`
			Weakens bool     `json:"weakens"`
			Hash    string   `json:"policy_hash"`
		} `json:"proposal"`
	}
	if err := json.Unmarshal([]byte(out), &prop); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	id := prop.Proposal.ID
	if !prop.Proposal.Weakens || !strings.Contains(strings.Join(prop.Proposal.Changes, "\n"), "WEAKENS accounts[prod-db].solo added") {
		t.Fatalf("the proposal does not mark its weakening: %s", out)
	}
	// The admins are alerted through the outbox, the weakening in words.
	if !eventually(10*time.Second, func() bool {
		b, _ := os.ReadFile(d.state("events.jsonl"))
		return strings.Contains(string(b), `"policy.proposed"`) && strings.Contains(string(b), "WEAKENING policy change "+id) && strings.Contains(string(b), `"principal":"bob"`)
	}) {
		t.Error("no policy.proposed event paging the admins")
	}
	// The proposer never approves their own change.
	if r := d.bgctl("erin", "policy", "approve", id, "--yes"); r.code == 0 || !strings.Contains(r.stderr, "the proposer never reviews their own proposal") {
		t.Fatalf("the proposer's approval: %+v", r)
	}
	show := d.mustBgctl("bob", "policy", "show", id)
	for _, want := range []string{"State      PENDING", "Proposer   erin", "2 of policy-admins within 72h0m0s", "2 more approval(s) needed", "WEAKENS accounts[prod-db].solo added"} {
		if !strings.Contains(show, want) {
			t.Fatalf("policy show lacks %q:\n%s", want, show)
		}
	}
	if out := d.mustBgctl("bob", "policy", "approve", id, "--comment", "read the diff", "--yes"); !strings.Contains(out, "PENDING; 1 more approval(s) needed") {
		t.Fatalf("one approval: %s", out)
	}
	if d.health(t).PolicyHash != hash0 {
		t.Fatal("one approval of two changed the policy")
	}
	if r := d.bgctl("bob", "policy", "approve", id, "--yes"); r.code == 0 || !strings.Contains(r.stderr, "each admin counts once") {
		t.Fatalf("a second approval by bob: %+v", r)
	}
	if out := d.mustBgctl("dave", "policy", "proposals"); !strings.Contains(out, id) {
		t.Fatalf("the auditor's list: %s", out)
	}
	out = d.mustBgctl("carol", "policy", "approve", id, "--yes")
	if !strings.Contains(out, "is APPLIED: policy "+prop.Proposal.Hash+" in force") || !strings.Contains(out, "signed by bob, carol") {
		t.Fatalf("the second approval: %s", out)
	}
	if d.health(t).PolicyHash != prop.Proposal.Hash {
		t.Fatal("the approved policy is not in force")
	}
	if !eventually(10*time.Second, func() bool {
		b, _ := os.ReadFile(d.state("events.jsonl"))
		return strings.Contains(string(b), `"policy.weakened"`) && strings.Contains(string(b), "solo access (no approver at all) enabled")
	}) {
		t.Error("no policy.weakened event")
	}

	f := d.exportAudit(t)
	r := f.verify(t)
	for _, want := range []string{"signed by bob, carol, policy admins of the policy before it (proposal " + id + " by erin)",
		"WEAKENS accounts[prod-db].solo added", "WEAKENS the policy before it", "genesis, signed by its own policy admins"} {
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Fatalf("verify lacks %q:\n%s\n%s", want, r.stdout, r.stderr)
		}
	}
	// --genesis-policy pins the first policy.
	first := parsed(t, f.lines(t))[0]
	var pl audit.PolicyLoaded
	_ = json.Unmarshal(first.Payload, &pl)
	if r := f.verify(t, "--genesis-policy", pl.Hash); r.code != 0 {
		t.Fatalf("the pinned genesis: %+v", r)
	}
	if r := f.verify(t, "--genesis-policy", strings.Repeat("0", 64)); r.code == 0 || !strings.Contains(r.stderr, "not the pinned genesis policy") {
		t.Fatalf("another pinned genesis: %+v", r)
	}

	// Forgeries by an operator who holds the PIN and the database but no
	// admin's key: a policy_loaded lowering the quorum with no signatures;
	// the same with the real approvals of another change copied in.
	fg := newForger(t, d)
	orig := f.lines(t)
	lowered := func(approvals []audit.Signed) []*audit.Entry {
		es := parsed(t, orig)
		last := es[len(es)-1]
		var cur audit.PolicyLoaded
		for _, e := range es {
			if e.Type == audit.TypePolicyLoaded {
				_ = json.Unmarshal(e.Payload, &cur)
			}
		}
		p, err := policy.FromCanonicalJSON(cur.Policy)
		if err != nil {
			t.Fatal(err)
		}
		src := strings.Replace(devmode.Policy("", "ack_sinks: [events-file]", "solo: {delay: 10m, max_ttl: 30m}"), "          - {group: security, approvals: 1}\n", "", 1)
		np, err := policy.Load([]byte(src), "forged.yaml")
		if err != nil {
			t.Fatal(err)
		}
		np = np.WithIdentity(*p.Identity)
		payload, _ := json.Marshal(audit.PolicyLoaded{Hash: np.Hash(), Previous: cur.Hash, Source: "forged.yaml", Policy: np.CanonicalJSON(), Identity: *np.Identity,
			Changes: policy.ChangeLines(p, np), Weakens: true, Approvals: approvals})
		return append(es, &audit.Entry{V: audit.Version, Time: last.Time, Type: audit.TypePolicyLoaded, Actor: "operator", Payload: payload})
	}
	var genuine audit.PolicyLoaded
	es := parsed(t, orig)
	_ = json.Unmarshal(es[indexOf(es, audit.TypePolicyLoaded, 1)].Payload, &genuine)
	for _, tc := range []struct {
		name      string
		approvals []audit.Signed
		why       string
	}{
		{"no signatures", nil, "without a quorum of policy admins of the policy before it"},
		{"another change's signatures", genuine.Approvals, "does not verify: the statement is about a change from policy"},
	} {
		g := fg.rebuild(f, lowered(tc.approvals))
		r := g.verify(t)
		if r.code != 1 || !strings.Contains(r.stderr, tc.why) {
			t.Fatalf("a forged policy_loaded (%s) is not caught: %+v", tc.name, r)
		}
	}
}

// A trust reset is the documented recovery when the policy admins' keys
// are lost: offline, by the operator, with --force and a reason; logged as
// a reset, announced to every sink, and reported by every verification.
func TestTrustResetIsLoud(t *testing.T) {
	d := startDev(t)
	d.exportAuditKey()
	// Without --force or a reason nothing happens.
	d.stop()
	if r := d.breakglassd("policy", "reset", "--config", d.state("config.yaml"), "--reason", "x"); r.code == 0 || !strings.Contains(r.stderr, "say --force") {
		t.Fatalf("a reset without --force: %+v", r)
	}
	if r := d.breakglassd("policy", "reset", "--config", d.state("config.yaml"), "--force"); r.code == 0 || !strings.Contains(r.stderr, "--reason is required") {
		t.Fatalf("a reset without a reason: %+v", r)
	}
	// The lost admins' policy replaced by one with new admins.
	b, _ := os.ReadFile(d.state("policy.yaml"))
	edited := strings.Replace(string(b), "policy-admins: [bob, carol, erin]", "policy-admins: [carol, erin, dave]", 1)
	if err := os.WriteFile(d.state("policy.yaml"), []byte(edited), 0o600); err != nil {
		t.Fatal(err)
	}
	r := d.breakglassd("policy", "reset", "--config", d.state("config.yaml"), "--force", "--reason", "bob's key was lost with his laptop", "--operator", "frank")
	if r.code != 0 || !strings.Contains(r.stdout, "TRUST RESET: policy") || !strings.Contains(r.stdout, "dave join the policy admins") {
		t.Fatalf("reset: %+v", r)
	}
	d.start()
	if !eventually(10*time.Second, func() bool {
		b, _ := os.ReadFile(d.state("events.jsonl"))
		return strings.Contains(string(b), `"policy.reset"`) && strings.Contains(string(b), "POLICY TRUST RESET")
	}) {
		t.Error("no policy.reset event")
	}
	v := d.exportAudit(t).verify(t)
	if v.code != 0 || !strings.Contains(v.stdout, "TRUST RESET by frank, without the policy admins' quorum: bob's key was lost with his laptop") ||
		!strings.Contains(v.stdout, "TRUST RESET: 1 policy change(s)") {
		t.Fatalf("verify:\n%s\n%s", v.stdout, v.stderr)
	}
}
