package test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bgbroker/breakglass/client"
	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/hsm"
	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
	"github.com/bgbroker/breakglass/server/devmode"
	"github.com/bgbroker/breakglass/server/httpapi"
	"github.com/bgbroker/breakglass/server/store/postgres/pgtest"
)

// newServeDir makes a dev broker directory (state/ under a temporary
// directory) and lets edit change its configuration, for brokers started
// with `breakglassd serve`.
func newServeDir(t *testing.T, edit func(cfg []byte) []byte) string {
	t.Helper()
	dir := t.TempDir()
	path, _, err := devmode.Setup(context.Background(), devmode.Options{Dir: filepath.Join(dir, "state"), GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, edit(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// newReplicas makes n broker replicas on one PostgreSQL database: the
// first is a dev setup switched to the database, the others copies of its
// directory, each with its own copy of the SoftHSM2 token (SoftHSM2 must
// not be shared by processes; a network HSM would be).
func newReplicas(t *testing.T, dsn string, n int) []*devBroker {
	t.Helper()
	first := newServeDir(t, func(cfg []byte) []byte {
		sqliteStore := "store:\n  driver: sqlite\n  sqlite:\n    path: broker.db\n"
		if !bytes.Contains(cfg, []byte(sqliteStore)) {
			t.Fatalf("dev config has no sqlite store section:\n%s", cfg)
		}
		cfg = bytes.Replace(cfg, []byte(sqliteStore), fmt.Appendf(nil, "store:\n  driver: postgres\n  dsn: %q\n", dsn), 1)
		// Fast health checks, so a replica notices its database is back
		// soon; a rate limit the concurrent flows of one principal stay
		// under.
		return append(cfg, []byte("health_interval: 500ms\nlimits: {rate_per_second: 1000, burst: 1000}\n")...)
	})
	var out []*devBroker
	for i := range n {
		dir := first
		if i > 0 {
			dir = t.TempDir()
			if b, err := exec.Command("cp", "-a", filepath.Join(first, "state"), dir).CombinedOutput(); err != nil {
				t.Fatalf("copying the replica: %v %s", err, b)
			}
			if _, err := hsm.WriteSoftHSMConfig(filepath.Join(dir, "state", "hsm")); err != nil {
				t.Fatal(err)
			}
		}
		d := &devBroker{t: t, dir: dir, serve: true}
		d.start()
		t.Cleanup(d.stop)
		out = append(out, d)
	}
	return out
}

// health reads /healthz.
func (d *devBroker) health(t *testing.T) httpapi.Health {
	t.Helper()
	resp, err := d.httpClient().Get(d.ready.Issuer + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var h httpapi.Health
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		t.Fatal(err)
	}
	return h
}

// dialAll dials as principal with every replica's address, first first.
func dialAll(t *testing.T, name string, reps ...*devBroker) *client.Client {
	t.Helper()
	var addrs []string
	for _, r := range reps {
		addrs = append(addrs, r.ready.GRPC)
	}
	c, err := client.Dial(client.Options{Addr: strings.Join(addrs, ","), CAFile: reps[0].state("ca", "ca.crt"),
		CertFile: reps[0].state("identities", name+".crt"), KeyFile: reps[0].state("identities", name+".key")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// A request made on one replica is reviewed on the other and its token
// issued on the first; a WatchEntries stream on one replica sees what the
// other appends.
func TestReplicasCrossReplicaFlow(t *testing.T) {
	srv := pgtest.Require(t, pg)
	reps := newReplicas(t, srv.NewDatabase(t), 2)
	a, b := reps[0], reps[1]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	info, err := a.client("dave").GetLogInfo(ctx, &bgv1.GetLogInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	stream, err := a.client("dave").WatchEntries(ctx, &bgv1.WatchEntriesRequest{Start: info.GetSize()})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	created, err := b.client("alice").CreateRequest(ctx, &bgv1.CreateRequestRequest{Account: "prod-db", Justification: "made on B"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if got.GetEntry().GetIndex() != created.GetEntry().GetIndex() {
		t.Fatalf("A's stream got entry %d, B appended %d", got.GetEntry().GetIndex(), created.GetEntry().GetIndex())
	}
	t.Logf("CreateRequest on B and its entry on a WatchEntries stream on A took %s", time.Since(start).Round(100*time.Microsecond))

	req := created.GetRequest()
	if _, err := b.client("bob").Review(ctx, req, bgv1.ReviewDecision_REVIEW_DECISION_APPROVE, "on B"); err != nil {
		t.Fatal(err)
	}
	// erin waits on A for the decision she makes on B.
	decided := make(chan *bgv1.Request, 1)
	go func() {
		r, _ := a.client("alice").WaitForDecision(ctx, req.GetId())
		decided <- r
	}()
	// The watch is open on A before the decision is made on B.
	if !eventually(30*time.Second, func() bool { return a.streamsStarted(t, "WatchRequest") > 0 }) {
		t.Fatal("the watch on A never started")
	}
	if _, err := b.client("erin").Review(ctx, req, bgv1.ReviewDecision_REVIEW_DECISION_APPROVE, "on B"); err != nil {
		t.Fatal(err)
	}
	if r := <-decided; r.GetState() != bgv1.RequestState_REQUEST_STATE_APPROVED {
		t.Fatalf("WaitForDecision on A: %v", r)
	}
	if _, err := a.client("alice").IssueToken(ctx, &bgv1.IssueTokenRequest{RequestId: req.GetId(), Audience: "db.prod.example"}); err != nil {
		t.Fatal(err)
	}

	// A retry on the other replica with the same idempotency key gets the
	// first answer.
	in := &bgv1.CreateRequestRequest{Account: "prod-db", Justification: "retried elsewhere", IdempotencyKey: "retry-1"}
	first, err := a.client("alice").CreateRequest(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	again, err := b.client("alice").CreateRequest(ctx, in)
	if err != nil || !again.GetReplayed() || again.GetRequest().GetId() != first.GetRequest().GetId() || again.GetEntry().GetIndex() != first.GetEntry().GetIndex() {
		t.Fatalf("retry on B: %v %v", again, err)
	}

	// bgctl and the SDK given a dead address first move on to a live one.
	dead := "127.0.0.1:1"
	env := append(a.env("alice"), "BGCTL_ADDR="+dead+","+a.ready.GRPC)
	if out := must(t, env, bin.bgctl, "show", req.GetId()); !strings.Contains(out, req.GetId()) {
		t.Errorf("bgctl show through a dead first address: %s", out)
	}
	out := must(t, env, bin.bgctl, "request", "--account", "prod-db", "--justification", "through failover", "-o", "json")
	if !strings.Contains(out, "through failover") {
		t.Errorf("bgctl request through a dead first address: %s", out)
	}
	c, err := client.Dial(client.Options{Addr: dead + "," + b.ready.GRPC, CAFile: a.state("ca", "ca.crt"),
		CertFile: a.state("identities", "alice.crt"), KeyFile: a.state("identities", "alice.key")})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.CreateRequest(ctx, &bgv1.CreateRequestRequest{Account: "prod-db", Justification: "SDK failover"}); err != nil {
		t.Errorf("SDK create through a dead first address: %v", err)
	}
	// A revocation is not repeated on another replica: its outcome is the
	// caller's to check.
	c2, err := client.Dial(client.Options{Addr: dead + "," + b.ready.GRPC, CAFile: a.state("ca", "ca.crt"),
		CertFile: a.state("identities", "alice.crt"), KeyFile: a.state("identities", "alice.key")})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if _, err := c2.RevokeGrant(ctx, &bgv1.RevokeGrantRequest{RequestId: req.GetId(), Reason: "x"}); status.Code(err) != codes.Unavailable {
		t.Errorf("revoke through a dead first address: %v", err)
	}
	if r := a.exportAudit(t).verify(t); r.code != 0 {
		t.Fatalf("verify: %+v", r)
	}

	// B restarts with an edited policy that no policy admin signed: it is
	// set aside, and B runs the policy the log records, as A does.
	hash0 := a.health(t).PolicyHash
	pol := b.state("policy.yaml")
	old, err := os.ReadFile(pol)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pol, bytes.Replace(old, []byte("max_ttl: 1h"), []byte("max_ttl: 2h"), 1), 0o600); err != nil {
		t.Fatal(err)
	}
	b.restart()
	if h := b.health(t); h.PolicyHash != hash0 || !strings.Contains(b.logs.String(), "is not put in force") {
		t.Errorf("an unsigned policy on B: %+v", h)
	}
	// Signed by two policy admins, B puts it in force at its next start;
	// A, whose file still holds the old policy, follows the log: a replica
	// applies the policy the log records, and only that.
	for _, who := range []string{"bob", "carol"} {
		b.mustBgctl(who, "policy", "sign", "--file", pol, "--previous", hash0, "--out", b.state("policy.sigs"))
	}
	b.restart()
	hash1 := b.health(t).PolicyHash
	if hash1 == hash0 {
		t.Fatalf("the signed policy was not put in force on B:\n%s", b.logs)
	}
	if !eventually(30*time.Second, func() bool { h := a.health(t); return h.PolicyHash == hash1 && h.Status == "SERVING" }) {
		t.Errorf("A did not follow the log: %+v", a.health(t))
	}
	if _, err := a.client("alice").CreateRequest(ctx, &bgv1.CreateRequestRequest{Account: "prod-db", Justification: "new policy, old file"}); err != nil {
		t.Errorf("create on the replica that followed the log: %v", err)
	}
	if _, err := a.client("alice").CancelRequest(ctx, &bgv1.CancelRequestRequest{Id: first.GetRequest().GetId()}); err != nil {
		t.Errorf("cancel: %v", err)
	}
	if r := a.exportAudit(t).verify(t); r.code != 0 || !strings.Contains(r.stdout, "signed by bob, carol") {
		t.Fatalf("verify: %+v", r)
	}
}

// Flows spread over two replicas under concurrency, through a kill -9 of
// one and a restart of PostgreSQL under both: every call that returned
// success is in the one log, which verifies with no gap, fork or duplicate.
func TestReplicasSurviveCrashAndDatabaseRestart(t *testing.T) {
	srv := pgtest.Require(t, pg)
	reps := newReplicas(t, srv.NewDatabase(t), 2)
	a, b := reps[0], reps[1]

	type ack struct {
		index uint64
		leaf  []byte
		what  string
	}
	var (
		mu       sync.Mutex
		acks     []ack
		replayed int
		failures []string
	)
	record := func(e *bgv1.AuditRef, what string, again bool) {
		mu.Lock()
		defer mu.Unlock()
		acks = append(acks, ack{e.GetIndex(), e.GetLeafHash(), what})
		if again {
			replayed++
		}
	}
	// retry repeats a step for as long as the outage lasts: Unavailable is
	// what a replica without its database (or a dead one) answers.
	retry := func(ctx context.Context, step func() error) error {
		for {
			err := step()
			if err == nil || ctx.Err() != nil || status.Code(err) != codes.Unavailable {
				return err
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	flow := func(ctx context.Context, w, i int, alice, bob, erin *client.Client) error {
		key := fmt.Sprintf("w%d-f%d", w, i)
		var created *bgv1.CreateRequestResponse
		err := retry(ctx, func() error {
			var err error
			created, err = alice.CreateRequest(ctx, &bgv1.CreateRequestRequest{Account: "prod-db", Justification: "flow " + key, IdempotencyKey: key})
			return err
		})
		if err != nil {
			return fmt.Errorf("create: %w", err)
		}
		record(created.GetEntry(), "create "+key, created.GetReplayed())
		for j, rv := range []*client.Client{bob, erin} {
			err := retry(ctx, func() error {
				resp, err := rv.Review(ctx, created.GetRequest(), bgv1.ReviewDecision_REVIEW_DECISION_APPROVE, "", fmt.Sprintf("%s-r%d", key, j))
				if err == nil {
					record(resp.GetEntry(), "review "+key, resp.GetReplayed())
				}
				return err
			})
			if err != nil {
				return fmt.Errorf("review: %w", err)
			}
		}
		return retry(ctx, func() error {
			resp, err := alice.IssueToken(ctx, &bgv1.IssueTokenRequest{RequestId: created.GetRequest().GetId(), Audience: "db.prod.example"})
			if err == nil {
				record(resp.GetEntry(), "token "+key, false)
			}
			return err
		})
	}
	run := func(workers, flows int) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		var wg sync.WaitGroup
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// Half the workers prefer A, half B; every client knows both.
				order := []*devBroker{a, b}
				if w%2 == 1 {
					order = []*devBroker{b, a}
				}
				alice, bob, erin := dialAll(t, "alice", order...), dialAll(t, "bob", order...), dialAll(t, "erin", order...)
				for i := range flows {
					if err := flow(ctx, w+100*rand.IntN(1000), i, alice, bob, erin); err != nil {
						mu.Lock()
						failures = append(failures, fmt.Sprintf("worker %d flow %d: %v", w, i, err))
						mu.Unlock()
						return
					}
				}
			}()
		}
		wg.Wait()
	}

	// faultAfter starts a load and returns once it has made n more
	// acknowledged writes, with the load still running.
	faultAfter := func(n int) chan struct{} {
		mu.Lock()
		target := len(acks) + n
		mu.Unlock()
		done := make(chan struct{})
		go func() { defer close(done); run(6, 10) }()
		for {
			mu.Lock()
			reached := len(acks) >= target
			mu.Unlock()
			if reached {
				break
			}
			select {
			case <-done:
				t.Fatal("the load ended before the fault")
			case <-time.After(5 * time.Millisecond):
			}
		}
		return done
	}

	// Both replicas up.
	run(6, 4)
	// kill -9 of B in the middle of the load; clients move to A.
	done := faultAfter(20 + rand.IntN(60))
	b.kill()
	<-done
	b.start()
	// PostgreSQL stopped under both in the middle of the load, and started
	// again.
	done = faultAfter(20 + rand.IntN(60))
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	// While the database is down, a replica fails closed and says so.
	var createErr error
	if !eventually(30*time.Second, func() bool {
		_, createErr = a.client("alice").CreateRequest(context.Background(), &bgv1.CreateRequestRequest{Account: "prod-db", Justification: "during the outage"})
		if createErr == nil {
			t.Error("a request was created with the database down")
		}
		return status.Code(createErr) == codes.Unavailable
	}) {
		t.Errorf("create with the database down: %v", createErr)
	}
	if !eventually(30*time.Second, func() bool { return a.health(t).Status == "NOT_SERVING" }) {
		t.Errorf("health with the database down: %+v", a.health(t))
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	<-done
	for _, f := range failures {
		t.Error(f)
	}
	// Both replicas serve again by themselves.
	for _, r := range []*devBroker{a, b} {
		if _, err := r.client("alice").ListRequests(context.Background(), &bgv1.ListRequestsRequest{}); err != nil {
			t.Errorf("replica %s after the database came back: %v", r.ready.GRPC, err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for r.health(t).Status != "SERVING" && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if h := r.health(t); h.Status != "SERVING" {
			t.Errorf("replica %s health after the database came back: %+v", r.ready.GRPC, h)
		}
	}

	f := b.exportAudit(t)
	if r := f.verify(t); r.code != 0 {
		t.Fatalf("the log does not verify: %+v", r)
	}
	lines := f.lines(t)
	seen := map[string]bool{}
	for _, l := range lines {
		e, err := audit.Parse(l.Entry)
		if err != nil {
			t.Fatal(err)
		}
		// One request_created per idempotency key: no retry made a second.
		if e.Type == audit.TypeRequestCreated {
			var p struct {
				Justification string `json:"justification"`
			}
			_ = json.Unmarshal(e.Payload, &p)
			if seen[p.Justification] && strings.HasPrefix(p.Justification, "flow ") {
				t.Errorf("entry %d: a second request for %q", l.Index, p.Justification)
			}
			seen[p.Justification] = true
		}
	}
	for _, k := range acks {
		if k.index >= uint64(len(lines)) || !bytes.Equal(audit.LeafHash(lines[k.index].Entry), k.leaf) {
			t.Fatalf("acknowledged %s (entry %d) is missing or different", k.what, k.index)
		}
	}
	t.Logf("%d acknowledged writes over two replicas, a kill -9 and a PostgreSQL restart (%d answered as retries), all in one log of %d entries that verifies",
		len(acks), replayed, len(lines))
}
