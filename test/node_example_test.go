package test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
)

// nodeExample is examples/node: a client written from the proto,
// docs/signing.md and testdata/vectors alone, with @grpc/grpc-js,
// @grpc/proto-loader, node:crypto and jose.
const nodeExample = "../examples/node"

var nodeExamplePackages = []string{"@grpc/grpc-js", "@grpc/proto-loader", "jose"}

// runNode runs node with args in examples/node and returns its stdout; it
// fails the test with both outputs when node exits non-zero.
func runNode(t *testing.T, node string, env []string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, args...)
	cmd.Dir = nodeExample
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	t.Logf("node %s:\n%s", strings.Join(args, " "), bytes.TrimSpace(stderr.Bytes()))
	if err != nil {
		t.Fatalf("node %s failed: %v\n%s\n%s", strings.Join(args, " "), err, stdout.Bytes(), stderr.Bytes())
	}
	return stdout.Bytes()
}

// The Node client reaches the Go verifier's verdict on every vector of
// testdata/vectors (the Go side is go test ./format/vectors): the texts
// from their inputs, the digests, its own signatures, and each accepted
// and refused case with the rule that refuses it.
func TestNodeClientVectors(t *testing.T) {
	node := needNodePackages(t, nodeExample, nodeExamplePackages...)
	out := runNode(t, node, nil, "--test", "--test-reporter=tap", "test/")
	if !bytes.Contains(out, []byte("\n# fail 0\n")) || bytes.Contains(out, []byte("\n# pass 0\n")) {
		t.Fatalf("node --test:\n%s", out)
	}
}

// The Node client runs the whole flow against breakglassd dev: a request
// whose content digest it recomputes, three wrongly signed approvals the
// broker refuses with messages that say what is wrong (nothing recorded),
// two approvals it signs itself, a token jose verifies against the JWKS,
// a post-use review closed and an attestation, both signed; then, as the
// auditor with the keys pinned from the HSM, every entry, statement and
// the checkpoint. The broker's state and bgctl audit verify (the Go
// offline verifier) accept everything it signed.
func TestNodeClientFlow(t *testing.T) {
	node := needNodePackages(t, nodeExample, nodeExamplePackages...)
	d := startDev(t)
	keys := d.exportAudit(t)
	out := runNode(t, node, []string{
		"BG_ADDR=" + d.ready.GRPC,
		"BG_DEV_DIR=" + d.state(),
		"BG_AUDIT_KEY=" + keys.auditKey,
		"BG_CHECKPOINT_KEY=" + keys.vkey,
	}, "flow.mjs")
	var got struct {
		Request        string   `json:"request"`
		ContentVersion int      `json:"content_version"`
		ContentDigest  string   `json:"content_digest"`
		Approvers      []string `json:"approvers"`
		Token          struct{ Sub, Aud, Account string }
		PostReview     string            `json:"post_review"`
		Attestation    string            `json:"attestation"`
		Refusals       map[string]string `json:"refusals"`
		Audit          struct {
			Entries, Statements, Requests int
			CheckpointSize                int `json:"checkpoint_size"`
			Pinned                        bool
		}
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("%v: %s", err, out)
	}

	// What the broker recorded is what the Node client said.
	dave := d.client("dave")
	res, err := dave.GetRequest(context.Background(), &bgv1.GetRequestRequest{Id: got.Request})
	if err != nil {
		t.Fatal(err)
	}
	r := res.GetRequest()
	if r.GetState() != bgv1.RequestState_REQUEST_STATE_APPROVED || !slices.Equal(r.GetApprovers(), []string{"bob", "erin"}) || len(r.GetReviews()) != 2 || r.GetTokensIssued() != 1 {
		t.Errorf("the request after the Node flow: %s, approvers %v, %d reviews, %d tokens", r.GetState(), r.GetApprovers(), len(r.GetReviews()), r.GetTokensIssued())
	}
	if r.GetContentDigest() != got.ContentDigest || r.GetContentVersion() != 2 || got.ContentVersion != 2 {
		t.Errorf("content: the broker says %s v%d, the Node client %s v%d", r.GetContentDigest(), r.GetContentVersion(), got.ContentDigest, got.ContentVersion)
	}
	if !slices.Equal(got.Approvers, []string{"bob", "erin"}) || got.Attestation == "" {
		t.Errorf("the Node client saw approvers %v, attestation %q", got.Approvers, got.Attestation)
	}
	if got.Token.Sub != "alice" || got.Token.Aud != "db.prod.example" || got.Token.Account != "prod-db" {
		t.Errorf("the token jose verified: %+v", got.Token)
	}
	prs, err := dave.ListPostReviews(context.Background(), &bgv1.ListPostReviewsRequest{All: true})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	for _, pr := range prs.GetReviews() {
		closed = closed || (pr.GetId() == got.PostReview && pr.GetClosedBy() == "carol" && pr.GetCloseTime() != nil)
	}
	if !closed {
		t.Errorf("post-use review %s is not closed by carol: %v", got.PostReview, prs.GetReviews())
	}
	// Each refusal names what is wrong.
	for key, want := range map[string]string{
		"raw_r_s":       "expected an ASN.1 DER ECDSA signature",
		"content_v1":    "version 1 content text",
		"other_comment": "comment digest does not match",
	} {
		if !strings.Contains(got.Refusals[key], want) {
			t.Errorf("refusal %s: %q does not say %q", key, got.Refusals[key], want)
		}
	}
	a := got.Audit
	if !a.Pinned || a.Statements != 5 || a.Requests != 1 || a.Entries != a.CheckpointSize || a.Entries < 10 {
		t.Errorf("the Node auditor: %+v", a)
	}
	// The Go offline verifier accepts the log with the Node client's
	// statements in it.
	final := d.exportAudit(t)
	if v := final.verify(t); v.code != 0 {
		t.Fatalf("bgctl audit verify after the Node flow: exit %d\n%s\n%s", v.code, v.stdout, v.stderr)
	}
}
