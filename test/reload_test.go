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

// A policy reloaded with a lowered quorum, by SIGHUP and by the admin
// RPC: it is logged with what changed, announced, shown by the offline
// verifier, and applies to new requests only; an invalid policy and a
// caller outside the admins group change nothing.
func TestPolicyReload(t *testing.T) {
	d := startDev(t)
	d.exportAuditKey()
	pol := d.state("policy.yaml")
	if err := os.WriteFile(pol, []byte(reloadPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	d.restart()
	ctx := context.Background()
	before := d.createRequest("alice")
	hash0 := d.health(t).PolicyHash

	// An invalid policy: SIGHUP and the RPC both leave the one in force.
	if err := os.WriteFile(pol, []byte(strings.Replace(reloadPolicy, "group: security", "group: nobody", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	size := len(d.chain())
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if !eventually(10*time.Second, func() bool { return strings.Contains(d.logs.String(), "SIGHUP: policy not reloaded") }) {
		t.Fatalf("no refusal logged for an invalid policy:\n%s", d.logs)
	}
	_, err := d.client("erin").ReloadPolicy(ctx, &bgv1.ReloadPolicyRequest{})
	if codeOf(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "unknown group") {
		t.Fatalf("reload of an invalid policy: %v", err)
	}
	if d.health(t).PolicyHash != hash0 || len(d.chain()) != size {
		t.Fatal("an invalid policy changed something")
	}
	// Only the admins group reloads over the API.
	if _, err := d.client("bob").ReloadPolicy(ctx, &bgv1.ReloadPolicyRequest{}); codeOf(err) != codes.PermissionDenied {
		t.Fatalf("reload by a non-admin: %v", err)
	}

	// A lowered quorum, by SIGHUP.
	lowered := strings.Replace(reloadPolicy, "          - {group: security, approvals: 1}\n", "", 1)
	if err := os.WriteFile(pol, []byte(lowered), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if !eventually(10*time.Second, func() bool { return d.health(t).PolicyHash != hash0 }) {
		t.Fatalf("the SIGHUP reload did not take effect:\n%s", d.logs)
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

	// The log, the events and the offline verifier all show it.
	var loaded int
	for _, e := range d.chain() {
		if e.Type == "policy_loaded" {
			loaded++
		}
	}
	// The dev policy, the one of this test at its restart, the reload.
	if loaded != 3 {
		t.Errorf("%d policy_loaded entries, want 3", loaded)
	}
	if !eventually(10*time.Second, func() bool {
		b, _ := os.ReadFile(d.state("events.jsonl"))
		// A lowered quorum weakens the policy: its own event type, to page on.
		return strings.Contains(string(b), `"policy.weakened"`) && strings.Contains(string(b), "POLICY WEAKENED") && strings.Contains(string(b), "quorum")
	}) {
		t.Error("no policy.weakened event with the change")
	}
	r := d.exportAudit(t).verify(t)
	if r.code != 0 || !strings.Contains(r.stdout, `WEAKENS accounts[prod-db].quorum: "1 of db-admins and 1 of security" -> "1 of db-admins" (the quorum can be met with less)`) ||
		!strings.Contains(r.stdout, "WEAKENS the policy before it") {
		t.Fatalf("verify:\n%s\n%s", r.stdout, r.stderr)
	}
}
