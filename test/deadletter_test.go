package test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/bgbroker/breakglass/server/devmode"
	"github.com/bgbroker/breakglass/server/event"
)

type deadLetter struct {
	EventID   string `json:"event_id"`
	Sink      string `json:"sink"`
	Type      string `json:"type"`
	RequestID string `json:"request_id"`
}

// deadLetters reads the dead letters of dave's report.
func (d *devBroker) deadLetters(t *testing.T) []deadLetter {
	t.Helper()
	var rep struct {
		DeadLetters []deadLetter `json:"dead_letters"`
	}
	if err := json.Unmarshal([]byte(d.mustBgctl("dave", "report", "-o", "json")), &rep); err != nil {
		t.Fatal(err)
	}
	return rep.DeadLetters
}

// waitHealthCheck polls /healthz until its check named name satisfies ok.
func (d *devBroker) waitHealthCheck(t *testing.T, name string, ok func(string) bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		c := d.healthz(t).Checks[name]
		if ok(c) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("health check %s stays %q", name, c)
		}
	}
}

// A sink that refuses every delivery dead-letters the alert: the report
// lists it by event id and sink and the health names the sink. An auditor
// acknowledges it with bgctl alert ack, over mTLS: it leaves the report
// and the health, the acknowledgement is audited and the log verifies
// offline. Nobody else may, and a wrong name, a second acknowledgement or
// bad notes are refused with nothing written.
func TestDeadLetterAcknowledgedWithBgctl(t *testing.T) {
	var down atomic.Bool
	down.Store(true)
	soc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if down.Load() {
			http.Error(w, "receiver down", http.StatusServiceUnavailable)
			return
		}
	}))
	t.Cleanup(soc.Close)
	hooks, err := devmode.WebhookSinks(t.TempDir(), []string{soc.URL})
	if err != nil {
		t.Fatal(err)
	}
	dir := newServeDir(t, func(cfg []byte) []byte {
		const sinks = "notify:\n  sinks:\n"
		if !bytes.Contains(cfg, []byte(sinks)) {
			t.Fatalf("dev config has no notify section:\n%s", cfg)
		}
		// Health checks often, so that the health follows the outbox soon; a
		// rate limit the polling stays under.
		cfg = append(cfg, []byte("health_interval: 100ms\nlimits: {rate_per_second: 1000, burst: 1000}\n")...)
		return bytes.Replace(cfg, []byte(sinks), fmt.Appendf(nil, "notify:\n  max_attempts: 2\n  backoff_base: 10ms\n  backoff_max: 20ms\n  poll_interval: 50ms\n"+
			"  sinks:\n    - name: soc\n      type: webhook\n      url: %q\n      secret_file: %q\n", soc.URL, hooks[0].SecretFile), 1)
	})
	d := &devBroker{t: t, dir: dir, serve: true}
	d.start()
	t.Cleanup(d.stop)
	d.exportAuditKey()

	id := d.createRequest("alice")
	var dead deadLetter
	for deadline := time.Now().Add(30 * time.Second); dead.EventID == ""; time.Sleep(50 * time.Millisecond) {
		for _, dl := range d.deadLetters(t) {
			if dl.RequestID == id && dl.Type == event.RequestCreated && dl.Sink == "soc" {
				dead = dl
			}
		}
		if dead.EventID == "" && time.Now().After(deadline) {
			t.Fatalf("request.created never dead-lettered at soc: %+v", d.deadLetters(t))
		}
	}
	rep := d.mustBgctl("dave", "report")
	if !strings.Contains(rep, dead.EventID) || !strings.Contains(rep, "bgctl alert ack EVENT_ID --sink SINK") {
		t.Fatalf("report does not name the dead letter:\n%s", rep)
	}
	d.waitHealthCheck(t, "notify:soc", func(c string) bool { return strings.Contains(c, "dead-lettered") })
	entries := d.countType("alert_dead_letter_acknowledged")
	for _, c := range []struct {
		who  string
		args []string
		want []string
	}{
		{"carol", []string{dead.EventID, "--sink", "soc", "--notes", "seen"}, []string{"PermissionDenied", "auditors"}}, // the account's owner
		{"alice", []string{dead.EventID, "--sink", "soc", "--notes", "seen"}, []string{"PermissionDenied"}},
		{"dave", []string{uuid.NewString(), "--sink", "soc", "--notes", "seen"}, []string{"NotFound", "bgctl report"}},
		{"dave", []string{dead.EventID, "--sink", "events-file", "--notes", "seen"}, []string{"FailedPrecondition", "not dead-lettered"}},
		{"dave", []string{dead.EventID, "--sink", "nope", "--notes", "seen"}, []string{"NotFound"}},
		{"dave", []string{"not-an-id", "--sink", "soc", "--notes", "seen"}, []string{"InvalidArgument"}},
		{"dave", []string{dead.EventID, "--sink", "soc", "--notes", ""}, []string{"InvalidArgument"}},
		{"dave", []string{dead.EventID, "--sink", "soc", "--notes", strings.Repeat("x", 4001)}, []string{"InvalidArgument"}},
		{"dave", []string{dead.EventID, "--sink", "soc", "--notes", "line\x1b[2Jcleared"}, []string{"InvalidArgument"}},
		{"dave", []string{dead.EventID, "--notes", "seen"}, []string{"sink"}},
	} {
		r := d.bgctl(c.who, append([]string{"alert", "ack"}, c.args...)...)
		for _, w := range c.want {
			if r.code == 0 || !strings.Contains(r.stderr, w) {
				t.Errorf("%s alert ack %q: want %q, got %+v", c.who, c.args, w, r)
			}
		}
	}
	if n := d.countType("alert_dead_letter_acknowledged"); n != entries {
		t.Fatalf("refused acknowledgements were logged: %d", n-entries)
	}

	// The receiver is back: acknowledge every dead letter (whatever else
	// was announced while it was down) until none is left.
	down.Store(false)
	acked := 0
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		left := d.deadLetters(t)
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dead letters keep coming: %+v", left)
		}
		for _, dl := range left {
			out := d.mustBgctl("dave", "alert", "ack", dl.EventID, "--sink", dl.Sink, "--notes", "receiver restarted; SOC told by phone")
			if !strings.Contains(out, "acknowledged (audit entry") {
				t.Fatalf("ack output %q", out)
			}
			acked++
		}
	}
	r := d.bgctl("dave", "alert", "ack", dead.EventID, "--sink", "soc", "--notes", "again")
	if r.code == 0 || !strings.Contains(r.stderr, "FailedPrecondition") || !strings.Contains(r.stderr, "already acknowledged") {
		t.Fatalf("second acknowledgement: %+v", r)
	}
	if rep := d.mustBgctl("dave", "report"); !strings.Contains(rep, "DEAD-LETTERED ALERTS (0)") {
		t.Fatalf("report:\n%s", rep)
	}
	d.waitHealthCheck(t, "notify:soc", func(c string) bool { return !strings.Contains(c, "dead-lettered") })
	if n := d.countType("alert_dead_letter_acknowledged"); n != entries+acked {
		t.Fatalf("%d acknowledgements logged, want %d", n-entries, acked)
	}
	f := d.exportAudit(t)
	if r := f.verify(t); r.code != 0 {
		t.Fatalf("the log with acknowledgements does not verify: %+v", r)
	}
}
