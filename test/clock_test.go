package test

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/bgbroker/breakglass/client"
	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
	"github.com/bgbroker/breakglass/server/config"
	"github.com/bgbroker/breakglass/server/daemon"
	"github.com/bgbroker/breakglass/server/devmode"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// Deadlines through the whole stack (mTLS, gRPC, SoftHSM2, SQLite), with
// the broker in this process so its clock can be moved instead of waited
// for.
func TestDeadlinesThroughTheAPI(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	path, _, err := devmode.Setup(ctx, devmode.Options{Dir: dir, GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	clk := &fakeClock{t: time.Now()}
	d, err := daemon.Start(ctx, daemon.Options{Config: cfg, Now: clk.Now, AcceptUnsignedGenesis: true, SignPolicy: devmode.PolicySigner(dir)})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	dial := func(name string) *client.Client {
		c, err := client.Dial(client.Options{Addr: d.Ready.GRPC, CAFile: dir + "/ca/ca.crt", CertFile: dir + "/identities/" + name + ".crt", KeyFile: dir + "/identities/" + name + ".key", Now: clk.Now})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	alice, bob, erin := dial("alice"), dial("bob"), dial("erin")
	create := func() string {
		r, err := alice.CreateRequest(ctx, &bgv1.CreateRequestRequest{Account: "prod-db", Justification: "outage", RequestedTtl: dur(20 * time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetRequest().GetId()
	}
	approve := func(c *client.Client, id string) error {
		_, err := c.ReviewByID(ctx, id, bgv1.ReviewDecision_REVIEW_DECISION_APPROVE, "")
		return err
	}

	// Approval after the approval window: refused, and the request reads
	// as expired before any sweep.
	late := create()
	clk.Advance(31 * time.Minute)
	if err := approve(bob, late); codeOf(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("approval after expiry: %v", err)
	}
	got, err := alice.GetRequest(ctx, &bgv1.GetRequestRequest{Id: late})
	if err != nil || got.GetRequest().GetState() != bgv1.RequestState_REQUEST_STATE_EXPIRED {
		t.Fatalf("expired request reads as %v (%v)", got.GetRequest().GetState(), err)
	}

	// A grant never used expires after its activation window.
	idle := create()
	if err := approve(bob, idle); err != nil {
		t.Fatal(err)
	}
	if err := approve(erin, idle); err != nil {
		t.Fatal(err)
	}
	clk.Advance(15 * time.Minute)
	_, err = alice.IssueToken(ctx, &bgv1.IssueTokenRequest{RequestId: idle, Audience: "db.prod.example"})
	if codeOf(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "activation window") {
		t.Fatalf("token after the activation window: %v", err)
	}

	// A used grant ends at approval + TTL; its token's exp is no later, and
	// a relying party's verifier refuses it after.
	used := create()
	if err := approve(bob, used); err != nil {
		t.Fatal(err)
	}
	if err := approve(erin, used); err != nil {
		t.Fatal(err)
	}
	approvedAt := clk.Now()
	tok, err := alice.IssueToken(ctx, &bgv1.IssueTokenRequest{RequestId: used, Audience: "db.prod.example"})
	if err != nil {
		t.Fatal(err)
	}
	if tok.GetExpireTime().AsTime().After(approvedAt.Add(20 * time.Minute)) {
		t.Fatalf("token exp %s after approval + TTL", tok.GetExpireTime().AsTime())
	}
	v, err := client.NewVerifier(client.VerifierConfig{Issuer: d.Ready.Issuer, Audience: "db.prod.example", Keys: client.GRPCKeys{Client: alice}, Now: clk.Now, Leeway: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(ctx, tok.GetToken()); err != nil {
		t.Fatalf("fresh token: %v", err)
	}
	clk.Advance(20*time.Minute + 2*time.Second) // past exp and the verifier's leeway
	if _, err := v.Verify(ctx, tok.GetToken()); err == nil {
		t.Fatal("the verifier accepted a token past its grant")
	}
	_, err = alice.IssueToken(ctx, &bgv1.IssueTokenRequest{RequestId: used, Audience: "db.prod.example"})
	if codeOf(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "grant ended") {
		t.Fatalf("token after the grant: %v", err)
	}
	dave := dial("dave")
	chk, err := dave.CheckToken(ctx, &bgv1.CheckTokenRequest{Jti: tok.GetJti()})
	if err != nil || chk.GetStatus() != bgv1.TokenStatus_TOKEN_STATUS_EXPIRED {
		t.Fatalf("CheckToken after the grant: %v %v", chk.GetStatus(), err)
	}
	// The sweep records every expiry in the log, once: the daemon's own
	// sweep (on a wall-clock ticker) may already have recorded some of
	// them, and this one records the rest.
	if _, err := d.Broker.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	expiries := map[string]int{}
	for start := uint64(0); ; {
		page, err := dave.ListEntries(ctx, &bgv1.ListEntriesRequest{Start: start})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range page.GetEntries() {
			var head struct{ Type, Request string }
			if err := json.Unmarshal(e.GetEntry(), &head); err != nil {
				t.Fatal(err)
			}
			if head.Type == "request_expired" {
				expiries[head.Request]++
			}
		}
		if len(page.GetEntries()) == 0 || page.GetNextStart() >= page.GetTreeSize() {
			break
		}
		start = page.GetNextStart()
	}
	for what, id := range map[string]string{"the late request": late, "the idle grant": idle, "the used grant": used} {
		if expiries[id] != 1 {
			t.Errorf("%s has %d request_expired entries after the sweep, want 1", what, expiries[id])
		}
	}
}
