package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bgbroker/breakglass/client"
	"github.com/bgbroker/breakglass/client/auditverify"
	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
)

// grant runs create and two signed approvals and returns the request id.
func (d *runningDaemon) grant(ctx context.Context) (string, error) {
	r, err := d.clients["alice"].CreateRequest(ctx, &bgv1.CreateRequestRequest{Account: "prod-db", Justification: "benchmark"})
	if err != nil {
		return "", err
	}
	req := r.GetRequest()
	if _, err := d.clients["bob"].Review(ctx, req, bgv1.ReviewDecision_REVIEW_DECISION_APPROVE, ""); err != nil {
		return "", err
	}
	if _, err := d.clients["erin"].Review(ctx, req, bgv1.ReviewDecision_REVIEW_DECISION_APPROVE, ""); err != nil {
		return "", err
	}
	return req.GetId(), nil
}

// load runs op from c workers for dur (after a short warm-up), profiling
// the daemon meanwhile, and returns throughput and latencies, and how many
// operations succeeded in all, warm-up included.
func (d *runningDaemon) load(name string, c int, dur time.Duration, op func(worker, i int) error) (Load, int, error) {
	warm := time.Now().Add(dur / 5)
	stop := warm.Add(dur)
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		lats    []time.Duration
		errs    atomic.Int64
		done    atomic.Int64
		all     atomic.Int64 // with the warm-up, for signatures per operation
		share   float64
		classes map[string]float64
		perr    error
		pwg     sync.WaitGroup
		shared  = make(chan struct{})
	)
	pwg.Add(1)
	go func() {
		defer pwg.Done()
		<-shared
		share, classes, perr = d.profileShare(dur, fmt.Sprintf("%s-c%d", name, c))
	}()
	for w := range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for i := 0; ; i++ {
				now := time.Now()
				if now.After(stop) {
					break
				}
				err := op(w, i)
				if err == nil {
					all.Add(1)
				}
				if now.Before(warm) {
					continue
				}
				if err != nil {
					errs.Add(1)
					continue
				}
				mine = append(mine, time.Since(now))
				done.Add(1)
			}
			mu.Lock()
			lats = append(lats, mine...)
			mu.Unlock()
		}()
	}
	time.Sleep(time.Until(warm))
	close(shared)
	wg.Wait()
	pwg.Wait()
	if perr != nil {
		return Load{}, 0, perr
	}
	n := int(done.Load())
	return Load{Concurrency: c, PerSec: float64(n) / dur.Seconds(), P50ms: ms(percentile(lats, 0.5)), P99ms: ms(percentile(lats, 0.99)),
		Errors: int(errs.Load()), SignShare: share, CPU: classes}, int(all.Load()), nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// issueLoad issues tokens from grants made beforehand, so only issuance is
// in the window.
func (d *runningDaemon) issueLoad(ctx context.Context, c int, dur time.Duration) (Load, int, error) {
	s0, _ := d.hsmSignatures()
	grants := make([]string, 0, 40+c)
	for range 40 + c/4 {
		id, err := d.grant(ctx)
		if err != nil {
			return Load{}, 0, err
		}
		grants = append(grants, id)
	}
	s1, _ := d.hsmSignatures()
	d.setupSigs += s1 - s0
	var next atomic.Int64
	alice := d.clients["alice"]
	return d.load("issue", c, dur, func(w, i int) error {
		g := grants[int(next.Add(1))%len(grants)]
		_, err := alice.IssueToken(ctx, &bgv1.IssueTokenRequest{RequestId: g, Audience: "db.prod.example"})
		return err
	})
}

// flowLoad runs the whole flow: create, two signed reviews, issue.
func (d *runningDaemon) flowLoad(ctx context.Context, c int, dur time.Duration) (Load, int, error) {
	return d.load("flow", c, dur, func(w, i int) error {
		id, err := d.grant(ctx)
		if err != nil {
			return err
		}
		_, err = d.clients["alice"].IssueToken(ctx, &bgv1.IssueTokenRequest{RequestId: id, Audience: "db.prod.example"})
		return err
	})
}

// goVerifyRate is pure-Go ECDSA P-256 verification on one goroutine.
func goVerifyRate(dur time.Duration) float64 {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	d := sha256.Sum256([]byte("benchmark"))
	sig, _ := ecdsa.SignASN1(rand.Reader, k, d[:])
	n := 0
	start := time.Now()
	for time.Since(start) < dur {
		for range 100 {
			ecdsa.VerifyASN1(&k.PublicKey, d[:], sig)
		}
		n += 100
	}
	return float64(n) / time.Since(start).Seconds()
}

// sdkVerifyRate verifies one token repeatedly with the SDK's Verifier (the
// JWKS cached after the first call), on one goroutine.
func (d *runningDaemon) sdkVerifyRate(ctx context.Context, dur time.Duration) (float64, error) {
	id, err := d.grant(ctx)
	if err != nil {
		return 0, err
	}
	tok, err := d.clients["alice"].IssueToken(ctx, &bgv1.IssueTokenRequest{RequestId: id, Audience: "db.prod.example"})
	if err != nil {
		return 0, err
	}
	v, err := client.NewVerifier(client.VerifierConfig{Issuer: d.ready.Issuer, Audience: "db.prod.example", Keys: client.GRPCKeys{Client: d.clients["alice"]}})
	if err != nil {
		return 0, err
	}
	if _, err := v.Verify(ctx, tok.GetToken()); err != nil {
		return 0, fmt.Errorf("SDK verifier: %w", err)
	}
	n := 0
	start := time.Now()
	for time.Since(start) < dur {
		for range 50 {
			if _, err := v.Verify(ctx, tok.GetToken()); err != nil {
				return 0, err
			}
		}
		n += 50
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// fill appends entries (one request_created each) from c workers until the
// log holds n entries, and returns entries appended per second.
func (d *runningDaemon) fill(ctx context.Context, n uint64, c int) (float64, error) {
	size := func() (uint64, error) {
		info, err := d.clients["dave"].GetLogInfo(ctx, &bgv1.GetLogInfoRequest{})
		return info.GetSize(), err
	}
	s0, err := size()
	if err != nil {
		return 0, err
	}
	if s0 >= n {
		return 0, fmt.Errorf("the log already holds %d entries", s0)
	}
	var (
		made  atomic.Int64
		wg    sync.WaitGroup
		first atomic.Pointer[error]
	)
	want := int64(n - s0)
	start := time.Now()
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for made.Add(1) <= want {
				if _, err := d.clients["alice"].CreateRequest(ctx, &bgv1.CreateRequestRequest{Account: "prod-db", Justification: "append"}); err != nil {
					first.CompareAndSwap(nil, &err)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if e := first.Load(); e != nil {
		return 0, *e
	}
	s1, err := size()
	if err != nil {
		return 0, err
	}
	return float64(s1-s0) / elapsed.Seconds(), nil
}

// offline exports the first n entries over the API, verifies the export
// with the auditor's verifier (timing only the verification, from memory),
// and measures inclusion-proof latency at that size.
func (d *runningDaemon) offline(ctx context.Context, n uint64) (Verify, float64, float64, error) {
	dave := d.clients["dave"]
	info, err := dave.GetLogInfo(ctx, &bgv1.GetLogInfoRequest{})
	if err != nil {
		return Verify{}, 0, 0, err
	}
	// The checkpoint at exactly n, signed on demand.
	cp, err := dave.GetCheckpoint(ctx, &bgv1.GetCheckpointRequest{Size: n})
	if err != nil {
		return Verify{}, 0, 0, fmt.Errorf("checkpoint at %d: %w", n, err)
	}
	var export bytes.Buffer
	enc := json.NewEncoder(&export)
	for next := uint64(0); next < n; {
		resp, err := dave.ListEntries(ctx, &bgv1.ListEntriesRequest{Start: next, End: n, PageSize: 1000})
		if err != nil {
			return Verify{}, 0, 0, err
		}
		for _, e := range resp.GetEntries() {
			if err := enc.Encode(auditverify.ExportLine(e.GetIndex(), e.GetEntry(), e.GetSignature(), e.GetKeyId())); err != nil {
				return Verify{}, 0, 0, err
			}
		}
		if resp.GetNextStart() <= next {
			return Verify{}, 0, 0, fmt.Errorf("export stalled at %d", next)
		}
		next = resp.GetNextStart()
	}
	blk, _ := pem.Decode([]byte(info.GetAuditKey().GetPem()))
	if blk == nil {
		return Verify{}, 0, 0, fmt.Errorf("audit key PEM")
	}
	pub, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return Verify{}, 0, 0, err
	}
	caPEM, err := os.ReadFile(filepath.Join(d.env.dir, "ca", "ca.crt"))
	if err != nil {
		return Verify{}, 0, 0, err
	}
	cas := x509.NewCertPool()
	cas.AppendCertsFromPEM(caPEM)
	runtime.GC()
	start := time.Now()
	sum, err := auditverify.Verify(auditverify.Options{Log: bytes.NewReader(export.Bytes()), Checkpoint: cp.GetCheckpoint(),
		CheckpointKey: info.GetCheckpointKey().GetNoteVerifierKey(), AuditKeys: []*ecdsa.PublicKey{pub.(*ecdsa.PublicKey)}, ClientCAs: cas})
	elapsed := time.Since(start)
	if err != nil {
		return Verify{}, 0, 0, fmt.Errorf("verifying the export: %w", err)
	}
	v := Verify{Entries: int(sum.Entries), PerSec: float64(sum.Entries) / elapsed.Seconds(),
		VerifiesEntry: float64(sum.SignatureChecks) / float64(sum.Entries), Mix: sum.Types}

	var lats []time.Duration
	for i := range 2000 {
		idx := uint64(mrand.Int64N(int64(n)))
		t := time.Now()
		if _, err := dave.GetInclusionProof(ctx, &bgv1.GetInclusionProofRequest{Index: idx, TreeSize: n}); err != nil {
			return Verify{}, 0, 0, fmt.Errorf("inclusion proof %d (%d): %w", idx, i, err)
		}
		lats = append(lats, time.Since(t))
	}
	return v, us(percentile(lats, 0.5)), us(percentile(lats, 0.99)), nil
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }
