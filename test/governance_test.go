package test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jwt"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
	"github.com/bgbroker/breakglass/server/devmode"
	"github.com/bgbroker/breakglass/server/event"
)

// hookReceiver verifies every delivery with the Standard Webhooks reference
// library, reading the secret dev mode wrote.
type hookReceiver struct {
	t          *testing.T
	secretFile string
	srv        *httptest.Server
	down       atomic.Bool
	mu         sync.Mutex
	events     []event.Event
	invalid    int
	// refused are the deliveries turned away while down.
	refused []event.Event
}

func newHookReceiver(t *testing.T, secretFile string) *hookReceiver {
	h := &hookReceiver{t: t, secretFile: secretFile}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		secret, _ := os.ReadFile(h.secretFile)
		wh, err := standardwebhooks.NewWebhook(strings.TrimSpace(string(secret)))
		if err != nil || wh.Verify(body, r.Header) != nil {
			h.mu.Lock()
			h.invalid++
			h.mu.Unlock()
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		var ev event.Event
		_ = json.Unmarshal(body, &ev)
		if h.down.Load() {
			h.mu.Lock()
			h.refused = append(h.refused, ev)
			h.mu.Unlock()
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		h.mu.Lock()
		h.events = append(h.events, ev)
		h.mu.Unlock()
	}))
	t.Cleanup(h.srv.Close)
	return h
}

// waitRefused waits until a delivery for request was turned away, and
// returns its event.
func (h *hookReceiver) waitRefused(request string) event.Event {
	h.t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		h.mu.Lock()
		i := slices.IndexFunc(h.refused, func(ev event.Event) bool { return ev.Request == request })
		var ev event.Event
		if i >= 0 {
			ev = h.refused[i]
		}
		h.mu.Unlock()
		if i >= 0 {
			return ev
		}
	}
	h.t.Fatalf("no delivery for %s was attempted", request)
	return event.Event{}
}

// waitFor waits until an event of typ for request has arrived.
func (h *hookReceiver) waitFor(typ, request string) event.Event {
	h.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		h.mu.Lock()
		for _, ev := range h.events {
			if ev.Type == typ && ev.Request == request {
				h.mu.Unlock()
				return ev
			}
		}
		h.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
	h.t.Fatalf("no %s event for %s arrived", typ, request)
	return event.Event{}
}

// A grant in dev mode reaches a Standard Webhooks receiver (validated with
// a library we did not write) and events.jsonl promptly; an event pending
// when the daemon is killed is delivered after it restarts.
func TestWebhooksFromDevMode(t *testing.T) {
	d := &devBroker{t: t, dir: t.TempDir()}
	recv := newHookReceiver(t, d.state("webhook.secret"))
	d.extra = []string{"--webhook", recv.srv.URL}
	d.start()
	t.Cleanup(d.stop)
	if fi, err := os.Stat(recv.secretFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("webhook.secret: %v", err)
	}
	id := d.createRequest("alice")
	d.mustBgctl("bob", "approve", id, "--yes")
	start := time.Now()
	d.mustBgctl("erin", "approve", id, "--yes")
	ev := recv.waitFor(event.GrantApproved, id)
	t.Logf("grant.approved delivered %s after the approval", time.Since(start).Round(time.Millisecond))
	if ev.Requester != "alice" || len(ev.Approvers) != 2 || ev.ID == "" || ev.AuditIndex == nil {
		t.Fatalf("event %+v", ev)
	}
	created := recv.waitFor(event.RequestCreated, id)
	var bobPaged bool
	for _, c := range created.Notify {
		bobPaged = bobPaged || c.Principal == "bob"
	}
	if !bobPaged {
		t.Errorf("request.created does not page the approvers: %+v", created.Notify)
	}
	waitFile := func(needle string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			b, _ := os.ReadFile(d.state("events.jsonl"))
			if strings.Contains(string(b), needle) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("events.jsonl lacks %s", needle)
	}
	waitFile(`"id":"` + ev.ID + `"`)

	// The receiver goes down; a new request's alert waits; the daemon is
	// killed; the receiver comes back; the restarted daemon delivers it.
	recv.down.Store(true)
	id2 := d.createRequest("alice")
	// Killed once the failed attempt is recorded (a kill between the
	// attempt and its record leaves the row leased for a minute).
	refused := recv.waitRefused(id2)
	if !eventually(20*time.Second, func() bool {
		return slices.ContainsFunc(strings.Split(d.logs.String(), "\n"), func(l string) bool {
			return strings.Contains(l, "will retry") && strings.Contains(l, "event="+refused.ID)
		})
	}) {
		t.Fatalf("the failed delivery of %s was not recorded:\n%s", refused.ID, d.logs)
	}
	d.kill()
	recv.down.Store(false)
	d.start()
	got := recv.waitFor(event.RequestCreated, id2)
	waitFile(`"id":"` + got.ID + `"`)
	recv.mu.Lock()
	invalid := recv.invalid
	recv.mu.Unlock()
	if invalid != 0 {
		t.Fatalf("%d deliveries failed signature verification", invalid)
	}
	// Duplicates are possible (at least once) and carry the same id.
	seen := map[string]string{}
	recv.mu.Lock()
	for _, e := range recv.events {
		if prev, ok := seen[e.ID]; ok && prev != e.Type {
			t.Errorf("event id %s reused for %s and %s", e.ID, prev, e.Type)
		}
		seen[e.ID] = e.Type
	}
	recv.mu.Unlock()
}

// The dev policy, with post-use reviews due after one second and blocking.
func governancePolicy() string {
	return devmode.Policy("", "drill_audience: drill.db.prod.example", "reviewers: db-owners", "review_within: 1s",
		"block_on_overdue_review: true")
}

// bgctl report shows a grant, its outstanding token and its overdue
// review, and the block applies until the review is closed.
func TestReportAndReviewBlock(t *testing.T) {
	d := startDev(t)
	d.stop()
	if err := os.WriteFile(d.state("policy.yaml"), []byte(governancePolicy()), 0o600); err != nil {
		t.Fatal(err)
	}
	d.start()
	id := d.createRequest("alice")
	d.mustBgctl("bob", "approve", id, "--yes")
	d.mustBgctl("erin", "approve", id, "--yes")
	tok := strings.TrimSpace(d.mustBgctl("alice", "token", id, "--audience", "db.prod.example"))
	rep := d.mustBgctl("dave", "report")
	for _, want := range []string{"ACTIVE GRANTS (1)", id, "OUTSTANDING TOKENS (1)", "OVERDUE POST-USE REVIEWS (0 of 1 open)"} {
		if !strings.Contains(rep, want) {
			t.Fatalf("report lacks %q:\n%s", want, rep)
		}
	}
	d.mustBgctl("alice", "revoke", id, "--reason", "done")
	// review_within is 1s after the grant's end: the report says so once
	// the broker's clock has passed it.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		rep = d.mustBgctl("dave", "report")
		if strings.Contains(rep, "OVERDUE POST-USE REVIEWS (1 of 1 open)") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the post-use review never became overdue:\n%s", rep)
		}
	}
	r := d.bgctl("alice", "request", "--account", "prod-db", "--justification", "again")
	if r.code == 0 || !strings.Contains(r.stderr, "FailedPrecondition") || !strings.Contains(r.stderr, "must be closed") {
		t.Fatalf("blocked requester: %+v", r)
	}
	var list struct {
		Reviews []struct {
			ID string `json:"id"`
		} `json:"reviews"`
	}
	if err := json.Unmarshal([]byte(d.mustBgctl("carol", "reviews", "list", "-o", "json")), &list); err != nil || len(list.Reviews) != 1 {
		t.Fatalf("carol's reviews: %v %+v", err, list)
	}
	if r := d.bgctl("bob", "reviews", "close", list.Reviews[0].ID, "--notes", "mine"); r.code == 0 {
		t.Fatal("an approver of the grant closed its review")
	}
	d.mustBgctl("carol", "reviews", "close", list.Reviews[0].ID, "--notes", "checked the session log; access was right")
	d.mustBgctl("alice", "request", "--account", "prod-db", "--justification", "again")
	_ = tok

	// The log, with its governance entries, still verifies offline.
	f := d.exportAudit(t)
	if r := f.verify(t); r.code != 0 {
		t.Fatalf("verify: %+v", r)
	}
	// The owner attests; the report says when.
	d.mustBgctl("carol", "accounts", "attest", "prod-db", "--notes", "still needed; approvers checked")
	if out := d.mustBgctl("carol", "accounts"); strings.Contains(out, "never (OVERDUE)") || !strings.Contains(out, time.Now().Format("2006-01-02")) {
		t.Fatalf("accounts:\n%s", out)
	}
	f = d.exportAudit(t)
	if r := f.verify(t); r.code != 0 {
		t.Fatalf("verify after an attestation: %+v", r)
	}
}

// A rotated token key's old tokens still verify until they expire; new
// tokens carry the new kid. Audit and checkpoint rotations keep the log
// verifiable from the first keys alone.
func TestKeyRotation(t *testing.T) {
	d := startDev(t)
	issue := func() string {
		id := d.createRequest("alice")
		d.mustBgctl("bob", "approve", id, "--yes")
		d.mustBgctl("erin", "approve", id, "--yes")
		return strings.TrimSpace(d.mustBgctl("alice", "token", id, "--audience", "db.prod.example"))
	}
	kidOf := func(tok string) string {
		var h struct {
			Kid string `json:"kid"`
		}
		hdr, _ := decodeSegment(strings.Split(tok, ".")[0])
		_ = json.Unmarshal(hdr, &h)
		return h.Kid
	}
	verifyAll := func(toks ...string) {
		t.Helper()
		resp, err := d.httpClient().Get(d.ready.Issuer + "/.well-known/jwks.json")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		set, err := jwk.Parse(body)
		if err != nil {
			t.Fatal(err)
		}
		for _, tok := range toks {
			if _, err := jwt.Parse([]byte(tok), jwt.WithKeySet(set), jwt.WithValidate(true), jwt.WithAudience("db.prod.example")); err != nil {
				t.Fatalf("token with kid %s: %v", kidOf(tok), err)
			}
		}
	}
	f0 := d.exportAudit(t) // the auditor pins the first keys now
	old := issue()
	for _, p := range []string{"token", "audit", "checkpoint"} {
		out := must(t, os.Environ(), bin.breakglassd, "hsm", "rotate", "--config", d.state("config.yaml"), "--purpose", p)
		if !strings.Contains(out, `"ceremony": "rotate"`) {
			t.Fatalf("rotate %s: %s", p, out)
		}
	}
	d.restart() // a running broker reloads within seconds; a restart is immediate
	fresh := issue()
	if kidOf(fresh) == kidOf(old) {
		t.Fatal("the new token carries the old kid")
	}
	verifyAll(old, fresh)
	// The log now holds entries signed by the new audit key and a
	// checkpoint signed by the new checkpoint key; the auditor's first keys
	// still verify it by following the chain.
	f := d.exportAudit(t)
	f.auditKey, f.vkey = f0.auditKey, f0.vkey
	r := f.verify(t, "-o", "json")
	if r.code != 0 {
		t.Fatalf("verify with the first keys: %+v", r)
	}
	var out struct {
		Summary struct {
			AuditKeys      int `json:"audit_keys"`
			CheckpointKeys int `json:"checkpoint_keys"`
		} `json:"summary"`
	}
	_ = json.Unmarshal([]byte(r.stdout), &out)
	if out.Summary.AuditKeys != 2 || out.Summary.CheckpointKeys != 2 {
		t.Fatalf("key chains followed: %+v", out.Summary)
	}
	c := d.client("dave")
	info, err := c.GetLogInfo(context.Background(), &bgv1.GetLogInfoRequest{})
	if err != nil || !strings.Contains(info.GetAuditKey().GetLabel(), "audit-") || info.GetAuditKey().GetLabel() == "audit-dev" {
		t.Fatalf("log info after rotation: %v %v", err, info.GetAuditKey())
	}
	_ = fmt.Sprint
}
