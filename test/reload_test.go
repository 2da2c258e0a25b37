package test

import (
	"context"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
	"github.com/bgbroker/breakglass/server/devmode"
)

var reloadPolicy = devmode.Policy("admins: security")

// countType counts the entries of a type in the log.
func (d *devBroker) countType(typ string) int {
	n := 0
	for _, e := range d.chain() {
		if string(e.Type) == typ {
			n++
		}
	}
	return n
}

// The policy changes only with a quorum of policy admins. An operator who
// edits the file and sends SIGHUP, or one admin calling ReloadPolicy, is
// refused (the refusal audited and announced, the policy in force stays);
// with the statements of two admins beside the file (bgctl policy sign
// into policy.sigs) the lowered quorum is put in force, logged with its
// signers and what changed, announced as weakening, shown by the offline
// verifier, and applied to new requests only.
func TestPolicyReload(t *testing.T) {
	d := startDev(t)
	d.exportAuditKey()
	pol := d.state("policy.yaml")
	if err := os.WriteFile(pol, []byte(reloadPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	d.restart() // dev mode signs an edited policy at start with the demo admins' keys
	ctx := context.Background()
	before := d.createRequest("alice")
	hash0 := d.health(t).PolicyHash
	sighup := func(want string) {
		t.Helper()
		if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		if !eventually(10*time.Second, func() bool { return strings.Contains(d.logs.String(), want) }) {
			t.Fatalf("no %q after SIGHUP:\n%s", want, d.logs)
		}
	}

	// An invalid policy: SIGHUP and the RPC both leave the one in force.
	if err := os.WriteFile(pol, []byte(strings.Replace(reloadPolicy, "group: security", "group: nobody", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	size := len(d.chain())
	sighup("SIGHUP: policy not reloaded")
	_, err := d.client("erin").ReloadPolicy(ctx, &bgv1.ReloadPolicyRequest{})
	if codeOf(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "unknown group") {
		t.Fatalf("reload of an invalid policy: %v", err)
	}
	if d.health(t).PolicyHash != hash0 || len(d.chain()) != size {
		t.Fatal("an invalid policy changed something")
	}
	// Only admins and policy admins reload over the API.
	if _, err := d.client("alice").ReloadPolicy(ctx, &bgv1.ReloadPolicyRequest{}); codeOf(err) != codes.PermissionDenied {
		t.Fatalf("reload by a non-admin: %v", err)
	}

	// A lowered quorum, by SIGHUP, signed by nobody: refused and audited.
	lowered := strings.Replace(reloadPolicy, "          - {group: security, approvals: 1}\n", "", 1)
	if err := os.WriteFile(pol, []byte(lowered), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = os.Remove(d.state("policy.sigs"))
	refusals := d.countType("policy_refused")
	sighup("needs 2 more signature(s)")
	if d.health(t).PolicyHash != hash0 || d.countType("policy_refused") != refusals+1 {
		t.Fatalf("an unsigned policy: hash %s, refusals %d", d.health(t).PolicyHash, d.countType("policy_refused"))
	}
	// The same through ReloadPolicy by one admin, who also signed it: the
	// caller's own statement never counts.
	d.mustBgctl("erin", "policy", "sign", "--file", pol, "--previous", hash0, "--out", d.state("policy.sigs"), "--comment", "lower prod-db for the outage")
	_, err = d.client("erin").ReloadPolicy(ctx, &bgv1.ReloadPolicyRequest{})
	if codeOf(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "needs 2 more signature(s)") || !strings.Contains(err.Error(), "the proposer's own statement never counts") {
		t.Fatalf("ReloadPolicy by one admin: %v", err)
	}
	if d.health(t).PolicyHash != hash0 || d.countType("policy_refused") != refusals+2 {
		t.Fatal("a policy one admin signed was put in force")
	}
	// The operator's SIGHUP with erin's statement: one more is needed.
	sighup("needs 1 more signature(s)")
	if !eventually(10*time.Second, func() bool {
		b, _ := os.ReadFile(d.state("events.jsonl"))
		return strings.Contains(string(b), `"policy.refused"`) && strings.Contains(string(b), "POLICY REFUSED")
	}) {
		t.Error("no policy.refused event")
	}
	// bob signs too: put in force by SIGHUP.
	d.mustBgctl("bob", "policy", "sign", "--file", pol, "--previous", hash0, "--out", d.state("policy.sigs"))
	sighup("SIGHUP: policy reloaded")
	if !eventually(10*time.Second, func() bool { return d.health(t).PolicyHash != hash0 }) {
		t.Fatalf("the signed policy did not take effect:\n%s", d.logs)
	}
	// The RPC now finds it already in force.
	res, err := d.client("erin").ReloadPolicy(ctx, &bgv1.ReloadPolicyRequest{})
	if err != nil || res.GetChanged() || res.GetPolicyHash() != d.health(t).PolicyHash {
		t.Fatalf("reload of the policy in force: %v %v", res, err)
	}
	// New requests need one approval; the one made before keeps two.
	after := d.createRequest("alice")
	d.mustBgctl("bob", "approve", after, "--yes")
	d.mustBgctl("bob", "approve", before, "--yes")
	show := func(id string) string { return d.mustBgctl("dave", "show", id, "-o", "json") }
	if !strings.Contains(show(after), "REQUEST_STATE_APPROVED") {
		t.Fatalf("a request under the lowered quorum is not approved by one approval:\n%s", show(after))
	}
	if !strings.Contains(show(before), "REQUEST_STATE_PENDING") {
		t.Fatalf("a request made before the reload lost its quorum rule:\n%s", show(before))
	}

	// The dev genesis, the one of this test at its restart, the reload.
	if n := d.countType("policy_loaded"); n != 3 {
		t.Errorf("%d policy_loaded entries, want 3", n)
	}
	if !eventually(10*time.Second, func() bool {
		b, _ := os.ReadFile(d.state("events.jsonl"))
		// A lowered quorum weakens the policy: its own event type, to page on.
		return strings.Contains(string(b), `"policy.weakened"`) && strings.Contains(string(b), "POLICY WEAKENED") && strings.Contains(string(b), "signed by bob, erin")
	}) {
		t.Error("no policy.weakened event with the change and its signers")
	}
	r := d.exportAudit(t).verify(t)
	if r.code != 0 || !strings.Contains(r.stdout, `WEAKENS accounts[prod-db].quorum: "1 of db-admins and 1 of security" -> "1 of db-admins" (the quorum can be met with less)`) ||
		!strings.Contains(r.stdout, "WEAKENS the policy before it") || !strings.Contains(r.stdout, "signed by bob, erin, policy admins of the policy before it") ||
		!strings.Contains(r.stdout, "3 policy file(s) refused") || !strings.Contains(r.stdout, "genesis, signed by its own policy admins bob, carol, erin") {
		t.Fatalf("verify:\n%s\n%s", r.stdout, r.stderr)
	}
}
