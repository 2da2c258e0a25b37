package main

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/statement"
	"github.com/bgbroker/breakglass/server/broker"
	"github.com/bgbroker/breakglass/server/config"
	"github.com/bgbroker/breakglass/server/daemon"
	"github.com/bgbroker/breakglass/server/devmode"
	"github.com/bgbroker/breakglass/server/request"
)

// The scale benchmark's store is filled by this same program in a process
// of its own (bench -scale-fill CONFIG -scale-to N): the daemon built in
// process, exactly as breakglassd serve builds it (same HSM keys, SQLite
// store, policy, outbox and background loops), driven through the
// broker's own methods rather than over gRPC. Every entry, row and event
// is the one the broker writes for that call; what is left out is TLS,
// gRPC and the client SDK, which cost the same at any size.
//
// The history is a fixed mix, per ten cycles: seven whole uses of prod-db
// (a request, two signed approvals, a token, the revocation, and the
// post-use review closed by the owner: eight entries), one request
// cancelled, and on ops-db one denied and one left to expire (its
// approval window is a second). Every request ends final; the open work
// is then set to the same few requests and grants at every size. Events go
// to a webhook receiver in the benchmark process (runScale).

// scalePolicy is the benchmark policy of the scale runs: the dev
// identities' groups, prod-db for the history and the loads, ops-db for the
// denials and expiries.
const scalePolicy = `auditors: auditors
policy_admins: [{require: [{group: policy-admins, approvals: 2}]}]
groups:
  sre: [alice]
  db-admins: [bob, carol]
  security: [erin]
  db-owners: [carol]
  auditors: [dave]
  policy-admins: [bob, carol, erin]
accounts:
  - name: prod-db
    owner: db-owners
    requesters: [sre]
    audiences: [db.prod.example]
    max_ttl: 1h
    approval_window: 1h
    activation_window: 1h
    max_issuances: 1000
    quorum:
      - require:
          - {group: db-admins, approvals: 1}
          - {group: security, approvals: 1}
  - name: ops-db
    owner: db-owners
    requesters: [sre]
    audiences: [db.ops.example]
    max_ttl: 1h
    approval_window: 1s
    activation_window: 1s
    quorum:
      - require:
          - {group: db-admins, approvals: 1}
          - {group: security, approvals: 1}
`

// openWork is how many pending requests, and how many live grants with a
// token, every measured store holds.
const openWork = 5

// FillResult is what the fill process reports on stdout.
type FillResult struct {
	Size uint64 `json:"size"`
	// Appended is how many entries the fill wrote.
	Appended uint64  `json:"appended"`
	Seconds  float64 `json:"seconds"`
	Cycles   int64   `json:"cycles"`
	Errors   int64   `json:"errors"`
}

type principalKey struct {
	cert *x509.Certificate
	key  crypto.Signer
}

type filler struct {
	b    *broker.Broker
	keys map[string]principalKey
	// size is one past the highest entry index seen, low one past the
	// lowest.
	size   atomic.Uint64
	low    atomic.Uint64
	cycles atomic.Int64
	errs   atomic.Int64
	first  atomic.Pointer[error]
}

// runFill fills the store of the configuration to at least target entries,
// then sets its open work, and prints a FillResult.
func runFill(cfgPath string, target uint64, workers int) error {
	ctx := context.Background()
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return err
	}
	// A commit that survives a crash of the process but not of the
	// machine: the rows are the same, the fill needs fewer fsyncs.
	cfg.Store.SQLite.Synchronous = "NORMAL"
	// The first fill logs the policy signed by the demo policy admins, as
	// dev mode does; the daemon measured later finds it in force.
	d, err := daemon.Start(ctx, daemon.Options{Config: cfg, SignPolicy: devmode.PolicySigner(filepath.Dir(cfgPath))})
	if err != nil {
		return err
	}
	defer d.Close()
	f := &filler{b: d.Broker, keys: map[string]principalKey{}}
	dir := filepath.Dir(cfgPath)
	for _, p := range []string{"alice", "bob", "erin", "carol"} {
		kp, err := tls.LoadX509KeyPair(filepath.Join(dir, "identities", p+".crt"), filepath.Join(dir, "identities", p+".key"))
		if err != nil {
			return err
		}
		cert, err := x509.ParseCertificate(kp.Certificate[0])
		if err != nil {
			return err
		}
		f.keys[p] = principalKey{cert: cert, key: kp.PrivateKey.(crypto.Signer)}
	}
	start := time.Now()
	// The end of the log now: the first call tells.
	if err := f.settle(ctx); err != nil {
		return fmt.Errorf("setting the open work aside: %w", err)
	}
	var (
		wg   sync.WaitGroup
		next atomic.Int64
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for f.size.Load() < target && f.first.Load() == nil {
				f.cycle(ctx, next.Add(1))
			}
		}()
	}
	wg.Wait()
	if e := f.first.Load(); e != nil {
		return *e
	}
	if err := f.settle(ctx); err != nil {
		return fmt.Errorf("settling the filled store: %w", err)
	}
	if err := f.openWork(ctx); err != nil {
		return fmt.Errorf("making the open work: %w", err)
	}
	if err := waitOutbox(ctx, d.Ready.Metrics); err != nil {
		return err
	}
	res := FillResult{Size: f.size.Load(), Appended: f.size.Load() - max(f.low.Load(), 1) + 1, Seconds: time.Since(start).Seconds(), Cycles: f.cycles.Load(), Errors: f.errs.Load()}
	return json.NewEncoder(os.Stdout).Encode(res)
}

func (f *filler) saw(r audit.Record) {
	for {
		cur := f.low.Load()
		if (cur != 0 && r.Index+1 >= cur) || f.low.CompareAndSwap(cur, r.Index+1) {
			break
		}
	}
	for {
		cur := f.size.Load()
		if r.Index+1 <= cur || f.size.CompareAndSwap(cur, r.Index+1) {
			return
		}
	}
}

// fail records an error; more than one in a hundred cycles stops the fill.
func (f *filler) fail(err error) {
	if n := f.errs.Add(1); n > 20 && n*100 > f.cycles.Load() {
		f.first.CompareAndSwap(nil, &err)
	}
}

func (f *filler) signed(who, typ, id, digest, comment string) ([]byte, []byte, error) {
	st := statement.Statement{Type: typ, Origin: f.b.Origin(), Request: id, Content: digest,
		Comment: statement.CommentDigest(comment), Time: f.b.Now().UTC().Truncate(time.Second)}
	m := st.Marshal()
	sig, err := statement.Sign(f.keys[who].key, m)
	return m, sig, err
}

func (f *filler) review(ctx context.Context, who string, r *request.Request, d request.Decision, comment string) (*broker.Result, error) {
	m, sig, err := f.signed(who, string(d), r.ID, r.Content().Digest(), comment)
	if err != nil {
		return nil, err
	}
	res, err := f.b.Review(ctx, who, broker.ReviewInput{ID: r.ID, Decision: d, Comment: comment, Statement: m, Signature: sig,
		Cert: f.keys[who].cert, IdempotencyKey: uuid.NewString()})
	if err == nil {
		f.saw(res.Entry)
	}
	return res, err
}

func (f *filler) create(ctx context.Context, account string, k int64) (*request.Request, error) {
	in := broker.CreateInput{Account: account, Ticket: fmt.Sprintf("INC-%d", k),
		Justification: fmt.Sprintf("primary database unreachable, failover needs superuser (scale fill %d)", k), IdempotencyKey: uuid.NewString()}
	id, err := uuid.NewV7()
	if err != nil {
		return nil, err
	}
	st := statement.Request{Origin: f.b.Origin(), ID: id.String(), Account: account, Ticket: in.Ticket, Justification: in.Justification,
		Time: f.b.Now().UTC().Truncate(time.Second)}
	in.Statement = st.Marshal()
	if in.Signature, err = statement.Sign(f.keys["alice"].key, in.Statement); err != nil {
		return nil, err
	}
	in.Cert = f.keys["alice"].cert
	res, err := f.b.CreateRequest(ctx, "alice", in)
	if err != nil {
		return nil, err
	}
	f.saw(res.Entry)
	return res.Request, nil
}

// grant makes an approved grant on prod-db with its first token.
func (f *filler) grant(ctx context.Context, k int64) (*request.Request, error) {
	r, err := f.create(ctx, "prod-db", k)
	if err != nil {
		return nil, err
	}
	for _, who := range []string{"bob", "erin"} {
		if _, err := f.review(ctx, who, r, request.Approve, ""); err != nil {
			return nil, err
		}
	}
	iss, err := f.b.IssueToken(ctx, "alice", r.ID, "db.prod.example")
	if err != nil {
		return nil, err
	}
	f.saw(iss.Entry)
	return r, nil
}

// closeReviews closes the open post-use reviews of the requests given (all
// when ids is nil), as their owner carol.
func (f *filler) closeReviews(ctx context.Context, ids map[string]bool) error {
	prs, err := f.b.PostReviews(ctx, "carol", true)
	if err != nil {
		return err
	}
	for _, pr := range prs {
		if ids != nil && !ids[pr.RequestID] {
			continue
		}
		r, err := f.b.GetRequest(ctx, "carol", pr.RequestID)
		if err != nil {
			return err
		}
		notes := "used as asked; the failover is documented in the incident"
		m, sig, err := f.signed("carol", statement.TypeReviewClose, r.ID, r.Content().Digest(), notes)
		if err != nil {
			return err
		}
		_, rec, err := f.b.ClosePostReview(ctx, "carol", pr.ID, notes, broker.Signed{Statement: m, Signature: sig, Cert: f.keys["carol"].cert})
		if err != nil {
			return err
		}
		f.saw(rec)
	}
	return nil
}

func (f *filler) cycle(ctx context.Context, k int64) {
	f.cycles.Add(1)
	var err error
	switch k % 10 {
	case 7:
		var r *request.Request
		if r, err = f.create(ctx, "prod-db", k); err == nil {
			var res *broker.Result
			if res, err = f.b.CancelRequest(ctx, "alice", r.ID, "restored without break-glass"); err == nil {
				f.saw(res.Entry)
			}
		}
	case 8:
		var r *request.Request
		if r, err = f.create(ctx, "ops-db", k); err == nil {
			_, err = f.review(ctx, "bob", r, request.Deny, "not an emergency")
			// Past the one-second window the sweep expired it first.
			if broker.KindOf(err) == broker.KindState {
				err = nil
			}
		}
	case 9:
		// Left to the sweep, which expires it a second later.
		_, err = f.create(ctx, "ops-db", k)
	default:
		var r *request.Request
		if r, err = f.grant(ctx, k); err == nil {
			var res *broker.Result
			if res, err = f.b.RevokeGrant(ctx, "alice", r.ID, "incident resolved"); err == nil {
				f.saw(res.Entry)
				err = f.closeReviews(ctx, map[string]bool{r.ID: true})
			}
		}
	}
	if err != nil {
		f.fail(err)
	}
}

// settle ends all open work: pending requests expire or are cancelled,
// grants are revoked and their post-use reviews closed, so that every
// measured store holds the same open work whatever its history.
func (f *filler) settle(ctx context.Context) error {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		rs, _, err := f.b.ListRequests(ctx, "dave", broker.ListInput{Account: "ops-db", State: request.Pending, PageSize: 10})
		if err != nil {
			return err
		}
		if len(rs) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return errors.New("ops-db requests did not expire")
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, st := range []request.State{request.Pending, request.Approved} {
		for {
			rs, _, err := f.b.ListRequests(ctx, "dave", broker.ListInput{Account: "prod-db", State: st, PageSize: 500})
			if err != nil {
				return err
			}
			if len(rs) == 0 {
				break
			}
			for _, r := range rs {
				var res *broker.Result
				if st == request.Pending {
					res, err = f.b.CancelRequest(ctx, "alice", r.ID, "benchmark: open work set aside")
				} else {
					res, err = f.b.RevokeGrant(ctx, "alice", r.ID, "benchmark: open work set aside")
				}
				if err != nil {
					return err
				}
				f.saw(res.Entry)
			}
		}
	}
	return f.closeReviews(ctx, nil)
}

// openWork makes the open work every size holds: requests waiting for
// review and live grants, each with a token and an open post-use review.
func (f *filler) openWork(ctx context.Context) error {
	for i := range openWork {
		if _, err := f.create(ctx, "prod-db", int64(-1-i)); err != nil {
			return err
		}
		if _, err := f.grant(ctx, int64(-100-i)); err != nil {
			return err
		}
	}
	return nil
}

// waitOutbox waits until the daemon's outbox has delivered everything.
func waitOutbox(ctx context.Context, metricsAddr string) error {
	d := &runningDaemon{ready: daemon.Ready{Metrics: metricsAddr}, http: httpClient(nil)}
	deadline := time.Now().Add(30 * time.Minute)
	for said := time.Now(); ; {
		n, err := d.metricSum("breakglass_outbox_pending")
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("the outbox still holds %.0f pending events", n)
		}
		if time.Since(said) > time.Minute {
			fmt.Fprintf(os.Stderr, "bench fill: %.0f events still to deliver\n", n)
			said = time.Now()
		}
		time.Sleep(200 * time.Millisecond)
	}
}
