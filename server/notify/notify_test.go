package notify_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/bgbroker/breakglass/server/event"
	"github.com/bgbroker/breakglass/server/notify"
	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/store/sqlite"
)

// receiver is a Standard Webhooks receiver that verifies every delivery
// with the reference library, and can be told to fail.
type receiver struct {
	t       *testing.T
	wh      *standardwebhooks.Webhook
	srv     *httptest.Server
	mu      sync.Mutex
	got     []string // event ids, in arrival order, duplicates kept
	bodies  map[string]event.Event
	fail    atomic.Bool
	invalid atomic.Int32
}

func newReceiver(t *testing.T, secret string) *receiver {
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		t.Fatal(err)
	}
	r := &receiver{t: t, wh: wh, bodies: map[string]event.Event{}}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		if err := r.wh.Verify(body, req.Header); err != nil {
			r.invalid.Add(1)
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		if r.fail.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		var ev event.Event
		if err := json.Unmarshal(body, &ev); err != nil || ev.ID != req.Header.Get("webhook-id") {
			http.Error(w, "bad body", http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		r.got = append(r.got, ev.ID)
		r.bodies[ev.ID] = ev
		r.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) ids() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.got...)
}

type fixture struct {
	t      *testing.T
	st     store.Store
	secret string
	dir    string
	now    time.Time
}

func newFixture(t *testing.T) *fixture {
	dir := t.TempDir()
	st, err := sqlite.Open(context.Background(), sqlite.Config{Path: filepath.Join(dir, "b.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	secret, _ := notify.NewSecret(rand.Reader)
	_ = os.WriteFile(filepath.Join(dir, "secret"), []byte(secret), 0o600)
	return &fixture{t: t, st: st, secret: secret, dir: dir, now: time.Now()}
}

func (f *fixture) enqueue(sinks ...string) string {
	f.t.Helper()
	ev := event.Event{ID: "ev-" + time.Now().Format("150405.000000000"), Type: event.GrantApproved, Time: f.now, Account: "prod-db", Request: "r1", Summary: "grant"}
	body, _ := json.Marshal(ev)
	var items []store.OutboxItem
	for _, s := range sinks {
		items = append(items, store.OutboxItem{EventID: ev.ID, Sink: s, Type: ev.Type, Account: ev.Account, RequestID: ev.Request, Body: body, CreatedAt: f.now})
	}
	if err := f.st.Update(context.Background(), func(tx store.Tx) error { return tx.Enqueue(context.Background(), items) }); err != nil {
		f.t.Fatal(err)
	}
	return ev.ID
}

func (f *fixture) finish(ctx context.Context, it store.OutboxItem) error {
	return f.st.Update(ctx, func(tx store.Tx) error { return tx.FinishOutbox(ctx, it) })
}

func (f *fixture) dispatcher(cfg notify.Config) *notify.Dispatcher {
	f.t.Helper()
	return f.dispatcherAt(cfg, nil)
}

// dispatcherAt is a dispatcher on the clock now (time.Now when nil).
func (f *fixture) dispatcherAt(cfg notify.Config, now func() time.Time) *notify.Dispatcher {
	f.t.Helper()
	d, err := notify.NewDispatcher(cfg, f.st, f.finish, now, nil)
	if err != nil {
		f.t.Fatal(err)
	}
	return d
}

func (f *fixture) rows(id string) map[string]store.OutboxItem {
	out := map[string]store.OutboxItem{}
	_ = f.st.View(context.Background(), func(r store.Reader) error {
		items, _ := r.OutboxFor(context.Background(), "r1", event.GrantApproved)
		for _, it := range items {
			if it.EventID == id {
				out[it.Sink] = it
			}
		}
		return nil
	})
	return out
}

// A Standard Webhooks library we did not write validates the deliveries;
// the file and Slack sinks get theirs.
func TestDeliverToEverySinkKind(t *testing.T) {
	f := newFixture(t)
	recv := newReceiver(t, f.secret)
	var slackBody atomic.Value
	slack := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		slackBody.Store(string(b))
	}))
	defer slack.Close()
	jsonl := filepath.Join(f.dir, "events.jsonl")
	d := f.dispatcher(notify.Config{Sinks: []notify.SinkConfig{
		{Name: "hook", Type: "webhook", URL: recv.srv.URL, SecretFile: filepath.Join(f.dir, "secret")},
		{Name: "slack", Type: "slack", URL: slack.URL},
		{Name: "file", Type: "file", Path: jsonl},
	}})
	id := f.enqueue("hook", "slack", "file")
	if n, err := d.Once(context.Background()); err != nil || n != 3 {
		t.Fatalf("Once = %d, %v", n, err)
	}
	if got := recv.ids(); len(got) != 1 || got[0] != id || recv.invalid.Load() != 0 {
		t.Fatalf("webhook got %v (%d invalid)", got, recv.invalid.Load())
	}
	if s, _ := slackBody.Load().(string); !strings.Contains(s, `"text"`) || !strings.Contains(s, "grant.approved") {
		t.Fatalf("slack got %q", s)
	}
	fb, _ := os.ReadFile(jsonl)
	if !strings.Contains(string(fb), `"id":"`+id+`"`) || strings.Count(string(fb), "\n") != 1 {
		t.Fatalf("file sink wrote %q", fb)
	}
	if fi, _ := os.Stat(jsonl); fi.Mode().Perm() != 0o600 {
		t.Errorf("events file mode %o", fi.Mode().Perm())
	}
	for sink, row := range f.rows(id) {
		if row.State != store.OutboxDelivered || row.Attempts != 1 {
			t.Errorf("%s row %+v", sink, row)
		}
	}
	// A wrong secret is refused by the receiver's library.
	other, _ := notify.NewSecret(rand.Reader)
	_ = os.WriteFile(filepath.Join(f.dir, "other"), []byte(other), 0o600)
	d2 := f.dispatcher(notify.Config{Sinks: []notify.SinkConfig{{Name: "hook", Type: "webhook", URL: recv.srv.URL, SecretFile: filepath.Join(f.dir, "other")}}})
	f.enqueue("hook")
	_, _ = d2.Once(context.Background())
	if recv.invalid.Load() != 1 {
		t.Fatal("a delivery signed with another secret was accepted")
	}
}

// A receiver that is down, then back: retried with backoff and delivered
// once it answers; a dead one is dead-lettered after MaxAttempts.
func TestRetryBackoffAndDeadLetter(t *testing.T) {
	f := newFixture(t)
	recv := newReceiver(t, f.secret)
	recv.fail.Store(true)
	// The dispatcher's clock moves past the longest back-off after each
	// attempt, so every retry is due without waiting.
	var clock atomic.Int64
	clock.Store(time.Now().UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	later := func() { clock.Add(int64(10 * time.Millisecond)) }
	d := f.dispatcherAt(notify.Config{MaxAttempts: 4, BackoffBase: time.Millisecond, BackoffMax: 5 * time.Millisecond,
		Sinks: []notify.SinkConfig{{Name: "hook", Type: "webhook", URL: recv.srv.URL, SecretFile: filepath.Join(f.dir, "secret")}}}, now)
	id := f.enqueue("hook")
	for range 2 {
		_, _ = d.Once(context.Background())
		later()
	}
	row := f.rows(id)["hook"]
	if row.State != store.OutboxPending || row.Attempts != 2 || !strings.Contains(row.LastError, "503") {
		t.Fatalf("after two failures: %+v", row)
	}
	recv.fail.Store(false)
	_, _ = d.Once(context.Background())
	if row := f.rows(id)["hook"]; row.State != store.OutboxDelivered || row.Attempts != 3 {
		t.Fatalf("after recovery: %+v", row)
	}
	// A receiver that never comes back.
	recv.fail.Store(true)
	dead := f.enqueue("hook")
	for range 10 {
		_, _ = d.Once(context.Background())
		later()
	}
	if row := f.rows(dead)["hook"]; row.State != store.OutboxDead || row.Attempts != 4 {
		t.Fatalf("dead letter: %+v", row)
	}
}

// Events left pending when the process died are delivered by the next
// dispatcher; a lease keeps two from sending the same row at once.
func TestRestartLosesNothing(t *testing.T) {
	f := newFixture(t)
	recv := newReceiver(t, f.secret)
	cfg := notify.Config{Sinks: []notify.SinkConfig{{Name: "hook", Type: "webhook", URL: recv.srv.URL, SecretFile: filepath.Join(f.dir, "secret")}}}
	id := f.enqueue("hook")
	// A dispatcher claims the row and dies before delivering.
	var claimed []store.OutboxItem
	_ = f.st.Update(context.Background(), func(tx store.Tx) error {
		var err error
		claimed, err = tx.ClaimOutbox(context.Background(), time.Now(), time.Minute, 10)
		return err
	})
	if len(claimed) != 1 {
		t.Fatalf("claimed %d", len(claimed))
	}
	d := f.dispatcher(cfg)
	if n, _ := d.Once(context.Background()); n != 0 {
		t.Fatal("a leased row was claimed twice")
	}
	// After the lease, the new dispatcher delivers it.
	_ = f.st.Update(context.Background(), func(tx store.Tx) error {
		items, err := tx.ClaimOutbox(context.Background(), time.Now().Add(2*time.Minute), time.Minute, 10)
		if len(items) != 1 {
			t.Errorf("the expired lease was not reclaimed: %d", len(items))
		}
		return err
	})
	d2, _ := notify.NewDispatcher(cfg, f.st, f.finish, func() time.Time { return time.Now().Add(4 * time.Minute) }, nil)
	if n, err := d2.Once(context.Background()); n != 1 || err != nil {
		t.Fatalf("redelivery %d %v", n, err)
	}
	if got := recv.ids(); len(got) != 1 || got[0] != id {
		t.Fatalf("receiver got %v", got)
	}
}

func TestSinkConfigRefusals(t *testing.T) {
	dir := t.TempDir()
	loose := filepath.Join(dir, "loose")
	_ = os.WriteFile(loose, []byte("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), 0o644)
	good := filepath.Join(dir, "good")
	_ = os.WriteFile(good, []byte("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), 0o600)
	bad := filepath.Join(dir, "bad")
	_ = os.WriteFile(bad, []byte("not-a-secret"), 0o600)
	for name, c := range map[string]notify.SinkConfig{
		"plain HTTP off loopback": {Name: "a", Type: "webhook", URL: "http://soc.example/hook", SecretFile: good},
		"secret readable by all":  {Name: "a", Type: "webhook", URL: "https://soc.example/hook", SecretFile: loose},
		"secret without whsec_":   {Name: "a", Type: "webhook", URL: "https://soc.example/hook", SecretFile: bad},
		"no secret":               {Name: "a", Type: "webhook", URL: "https://soc.example/hook"},
		"unknown type":            {Name: "a", Type: "email"},
		"no name":                 {Type: "file", Path: "x"},
		"ftp":                     {Name: "a", Type: "slack", URL: "ftp://x/"},
	} {
		if _, err := notify.NewSink(c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestRoutes(t *testing.T) {
	r := notify.NewRouter([]notify.SinkConfig{
		{Name: "all"},
		{Name: "grants", Route: event.Route{Events: []string{"grant.*", "token.issued"}}},
		{Name: "ledger", Route: event.Route{Accounts: []string{"ledger"}}},
	})
	for _, tc := range []struct{ typ, account, want string }{
		{"grant.approved", "prod-db", "all grants"},
		{"token.issued", "ledger", "all grants ledger"},
		{"request.created", "prod-db", "all"},
		{"checkpoint.signed", "", "all ledger"},
	} {
		if got := strings.Join(r.Sinks(tc.typ, tc.account), " "); got != tc.want {
			t.Errorf("%s/%s -> %q, want %q", tc.typ, tc.account, got, tc.want)
		}
	}
}

// Without failures, events arrive in the order they were committed; a
// delivery whose outcome was lost (the process died after the receiver
// answered) is sent again with the same id, and the receiver dedupes.
func TestOrderAndDuplicates(t *testing.T) {
	f := newFixture(t)
	recv := newReceiver(t, f.secret)
	cfg := notify.Config{Workers: 1, Sinks: []notify.SinkConfig{{Name: "hook", Type: "webhook", URL: recv.srv.URL, SecretFile: filepath.Join(f.dir, "secret")}}}
	var ids []string
	base := time.Now().Add(-time.Second)
	for i := range 5 {
		f.now = base.Add(time.Duration(i) * time.Millisecond)
		ids = append(ids, f.enqueue("hook"))
	}
	// The first attempt's outcome is lost: the receiver got it, the store
	// never heard.
	lost, _ := notify.NewDispatcher(cfg, f.st, func(context.Context, store.OutboxItem) error { return errors.New("crash") }, nil, nil)
	if n, _ := lost.Once(context.Background()); n != 5 {
		t.Fatalf("first pass %d", n)
	}
	d, _ := notify.NewDispatcher(cfg, f.st, f.finish, func() time.Time { return time.Now().Add(2 * time.Minute) }, nil)
	if n, _ := d.Once(context.Background()); n != 5 {
		t.Fatalf("redelivery pass %d", n)
	}
	got := recv.ids()
	if len(got) != 10 {
		t.Fatalf("receiver got %d deliveries, want 10 (5 twice)", len(got))
	}
	seen := map[string]bool{}
	var order []string
	for _, id := range got {
		if !seen[id] {
			seen[id] = true
			order = append(order, id)
		}
	}
	if strings.Join(order, ",") != strings.Join(ids, ",") {
		t.Fatalf("deduped order %v, committed %v", order, ids)
	}
}
