package test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bgbroker/breakglass/hsm"
	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
)

// faultyHSM is a broker whose token sits behind the PKCS#11 fault module.
type faultyHSM struct {
	*devBroker
	control string
}

// startFaultyHSM starts `breakglassd serve` on a dev directory whose HSM is
// SoftHSM2 behind pkcs11fault, with fast health checks.
func startFaultyHSM(t *testing.T, signTimeout string) *faultyHSM {
	t.Helper()
	softhsm, err := (hsm.Config{}).ResolveModule()
	if err != nil {
		t.Fatal(err)
	}
	var control string
	dir := newServeDir(t, func(cfg []byte) []byte {
		control = filepath.Join(t.TempDir(), "control")
		hsmEnv := []byte("  env:\n    SOFTHSM2_CONF: hsm/softhsm2.conf\n")
		if !bytes.Contains(cfg, hsmEnv) {
			t.Fatalf("dev config has no hsm env:\n%s", cfg)
		}
		cfg = bytes.Replace(cfg, hsmEnv, fmt.Appendf(nil, "  module: %s\n  sign_timeout: %s\n  env:\n    SOFTHSM2_CONF: hsm/softhsm2.conf\n    FAULT_PKCS11_REAL: %s\n    FAULT_PKCS11_CONTROL: %s\n",
			bin.faultModule, signTimeout, softhsm, control), 1)
		return append(cfg, []byte("health_interval: 300ms\nlimits: {rate_per_second: 1000, burst: 1000}\ndebug: {pprof: \"127.0.0.1:0\"}\n")...)
	})
	d := &devBroker{t: t, dir: dir, serve: true}
	d.start()
	t.Cleanup(d.stop)
	return &faultyHSM{devBroker: d, control: control}
}

// set tells the fault module what to do from the next PKCS#11 call on.
func (f *faultyHSM) set(mode string) {
	f.t.Helper()
	if err := os.WriteFile(f.control, []byte(mode), 0o600); err != nil {
		f.t.Fatal(err)
	}
}

// waitHealth waits until /healthz says status (a liveness bound, not a
// measurement).
func (f *faultyHSM) waitHealth(status string) {
	f.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if f.health(f.t).Status == status {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	f.t.Fatalf("health did not become %s: %+v", status, f.health(f.t))
}

// metric reads one unlabelled gauge from /metrics.
func (d *devBroker) metric(name string) float64 {
	d.t.Helper()
	resp, err := d.httpClient().Get("http://" + d.ready.Metrics + "/metrics")
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + name + ` ([0-9.e+]+)$`).FindSubmatch(b)
	if m == nil {
		d.t.Fatalf("no %s in /metrics", name)
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

func (f *faultyHSM) logSize(ctx context.Context) uint64 {
	f.t.Helper()
	info, err := f.client("dave").GetLogInfo(ctx, &bgv1.GetLogInfoRequest{})
	if err != nil {
		f.t.Fatal(err)
	}
	return info.GetSize()
}

// The token fails underneath a running broker: nothing that grants access
// happens and nothing is written for it, taking access away still works,
// health says NOT_SERVING; when the token is back the broker recovers by
// itself, signs what it wrote meanwhile, and the log verifies.
func TestHSMFailsUnderneath(t *testing.T) {
	f := startFaultyHSM(t, "2s")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	alice, bob, erin := f.client("alice"), f.client("bob"), f.client("erin")
	grant := func() *bgv1.Request {
		r, err := alice.CreateRequest(ctx, &bgv1.CreateRequestRequest{Account: "prod-db", Justification: "before the fault"})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []interface {
			Review(context.Context, *bgv1.Request, bgv1.ReviewDecision, string, ...string) (*bgv1.ReviewRequestResponse, error)
		}{bob, erin} {
			if _, err := c.Review(ctx, r.GetRequest(), bgv1.ReviewDecision_REVIEW_DECISION_APPROVE, ""); err != nil {
				t.Fatal(err)
			}
		}
		return r.GetRequest()
	}
	g1, g2 := grant(), grant()
	pending, err := alice.CreateRequest(ctx, &bgv1.CreateRequestRequest{Account: "prod-db", Justification: "pending"})
	if err != nil {
		t.Fatal(err)
	}
	half, err := alice.CreateRequest(ctx, &bgv1.CreateRequestRequest{Account: "prod-db", Justification: "half approved"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.Review(ctx, half.GetRequest(), bgv1.ReviewDecision_REVIEW_DECISION_APPROVE, ""); err != nil {
		t.Fatal(err)
	}

	f.set("fail")
	f.waitHealth("NOT_SERVING")
	size := f.logSize(ctx)
	for name, call := range map[string]func() error{
		"create": func() error {
			_, err := alice.CreateRequest(ctx, &bgv1.CreateRequestRequest{Account: "prod-db", Justification: "during the fault"})
			return err
		},
		"approve": func() error {
			_, err := erin.Review(ctx, half.GetRequest(), bgv1.ReviewDecision_REVIEW_DECISION_APPROVE, "")
			return err
		},
		"issue": func() error {
			_, err := alice.IssueToken(ctx, &bgv1.IssueTokenRequest{RequestId: g1.GetId(), Audience: "db.prod.example"})
			return err
		},
	} {
		if err := call(); status.Code(err) != codes.Unavailable {
			t.Errorf("%s with the HSM failing: %v, want Unavailable", name, err)
		}
	}
	if got := f.logSize(ctx); got != size {
		t.Fatalf("refused calls wrote %d entries", got-size)
	}
	if r, err := alice.GetRequest(ctx, &bgv1.GetRequestRequest{Id: half.GetRequest().GetId()}); err != nil || r.GetRequest().GetState() != bgv1.RequestState_REQUEST_STATE_PENDING {
		t.Fatalf("the half-approved request after a refused approval: %v %v", r, err)
	}
	// Taking access away does not wait for the HSM.
	if _, err := bob.RevokeGrant(ctx, &bgv1.RevokeGrantRequest{RequestId: g2.GetId(), Reason: "incident over"}); err != nil {
		t.Fatalf("revoke with the HSM failing: %v", err)
	}
	if _, err := alice.CancelRequest(ctx, &bgv1.CancelRequestRequest{Id: pending.GetRequest().GetId()}); err != nil {
		t.Fatalf("cancel with the HSM failing: %v", err)
	}
	if _, err := erin.Review(ctx, half.GetRequest(), bgv1.ReviewDecision_REVIEW_DECISION_DENY, "not now"); err != nil {
		t.Fatalf("deny with the HSM failing: %v", err)
	}
	// The revocation, the cancellation, the denial and the request's end.
	if h := f.health(t); h.UnsignedBacklog != 4 {
		t.Errorf("backlog while failing: %+v", h)
	}

	f.set("ok")
	f.waitHealth("SERVING")
	deadline := time.Now().Add(60 * time.Second)
	for f.health(t).UnsignedBacklog != 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if h := f.health(t); h.UnsignedBacklog != 0 {
		t.Fatalf("backlog after the HSM came back: %+v", h)
	}
	if _, err := alice.IssueToken(ctx, &bgv1.IssueTokenRequest{RequestId: g1.GetId(), Audience: "db.prod.example"}); err != nil {
		t.Fatalf("issue after the HSM came back: %v", err)
	}
	if _, err := alice.IssueToken(ctx, &bgv1.IssueTokenRequest{RequestId: g2.GetId(), Audience: "db.prod.example"}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("issue on the grant revoked during the fault: %v", err)
	}
	if r := f.exportAudit(t).verify(t); r.code != 0 {
		t.Fatalf("the log does not verify: %+v", r)
	}
}

// A slow HSM: every signature takes longer than sign_timeout. Calls are
// answered Unavailable by the deadline instead of hanging, the signing
// slots bound the goroutines stuck in the module, and once the token is
// fast again the goroutines are back to where they were.
func TestSlowHSM(t *testing.T) {
	f := startFaultyHSM(t, "1s")
	ctx := context.Background()
	alice := f.client("alice")
	if _, err := alice.CreateRequest(ctx, &bgv1.CreateRequestRequest{Account: "prod-db", Justification: "warm"}); err != nil {
		t.Fatal(err)
	}
	g, err := alice.CreateRequest(ctx, &bgv1.CreateRequestRequest{Account: "prod-db", Justification: "to revoke"})
	if err != nil {
		t.Fatal(err)
	}
	for _, who := range []string{"bob", "erin"} {
		if _, err := f.client(who).Review(ctx, g.GetRequest(), bgv1.ReviewDecision_REVIEW_DECISION_APPROVE, ""); err != nil {
			t.Fatal(err)
		}
	}
	before := f.metric("go_goroutines")
	creates := f.streamsStarted(t, "CreateRequest")
	f.set("delay 3000")
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		got = map[codes.Code]int{}
	)
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The client waits far longer than the broker's deadline: the
			// answer must come from the broker.
			cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
			defer cancel()
			_, err := alice.CreateRequest(cctx, &bgv1.CreateRequestRequest{Account: "prod-db", Justification: fmt.Sprintf("slow %d", i)})
			mu.Lock()
			got[status.Code(err)]++
			mu.Unlock()
		}()
	}
	// A revocation in the middle of it (every create has reached the
	// broker) takes effect; its entry is signed later.
	if !eventually(30*time.Second, func() bool { return f.streamsStarted(t, "CreateRequest") >= creates+40 }) {
		t.Fatal("the creates never reached the broker")
	}
	start := time.Now()
	if _, err := f.client("bob").RevokeGrant(ctx, &bgv1.RevokeGrantRequest{RequestId: g.GetRequest().GetId(), Reason: "slow HSM"}); err != nil {
		t.Errorf("revoke during the slow HSM: %v", err)
	}
	revoked := time.Since(start)
	wg.Wait()
	t.Logf("40 creates against a 3 s signature with a 1 s deadline: %v; a revocation among them took %s", got, revoked.Round(time.Millisecond))
	for c, n := range got {
		if c != codes.Unavailable && c != codes.OK {
			t.Errorf("%d calls ended with %s", n, c)
		}
	}
	if got[codes.Unavailable] == 0 {
		t.Error("no call was cut off by the signing deadline")
	}
	// Fast again: the broker recovers by itself (its backoff ends, the
	// calls stuck in the module finish within their 3 s) ...
	f.set("ok")
	deadline := time.Now().Add(60 * time.Second)
	for {
		_, err := alice.CreateRequest(ctx, &bgv1.CreateRequestRequest{Account: "prod-db", Justification: "fast again"})
		if err == nil {
			break
		}
		if status.Code(err) != codes.Unavailable || time.Now().After(deadline) {
			t.Fatalf("after the HSM is fast again: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	f.waitHealth("SERVING")
	// ... and the goroutine count returns to its level before the burst.
	var after float64
	for deadline = time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if after = f.metric("go_goroutines"); after <= before+5 {
			break
		}
	}
	if after > before+5 {
		t.Fatalf("goroutines: %.0f before the slow HSM, %.0f after:\n%s", before, after, f.goroutineDump())
	}
	// The revocation's entry was stored unsigned: export once the backlog
	// is signed (as TestHSMFailsUnderneath does), or it races the signer.
	if !eventually(60*time.Second, func() bool { return f.health(t).UnsignedBacklog == 0 }) {
		t.Fatalf("backlog after the HSM came back: %+v", f.health(t))
	}
	if r := f.exportAudit(t).verify(t); r.code != 0 {
		t.Fatalf("the log does not verify: %+v", r)
	}
}
