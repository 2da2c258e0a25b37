package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
)

// Soak is a steady mixed load held for a long time, sampled as it runs.
type Soak struct {
	Time     time.Time `json:"time"`
	Machine  Machine   `json:"machine"`
	Duration float64   `json:"duration_s"`
	Rate     float64   `json:"target_ops_per_s"`
	// Ops counts completed operations by kind; Errors the unexpected
	// failures (the traffic asks for none); Late the operations the
	// generator could not start on time (it, not the broker, fell behind).
	Ops     map[string]int `json:"ops"`
	Errors  map[string]int `json:"errors"`
	Late    int            `json:"late"`
	Samples []SoakSample   `json:"samples"`
	// Growth compares the last third of the run with the first (after a
	// warm-up): RSS, goroutines and open files must stay flat.
	RSSGrowth        float64 `json:"rss_growth_ratio"`
	GoroutinesGrowth float64 `json:"goroutines_growth_ratio"`
	FDsGrowth        float64 `json:"open_files_growth_ratio"`
	P50ms            float64 `json:"p50_ms"`
	P99ms            float64 `json:"p99_ms"`
	Flat             bool    `json:"flat"`
	// Kinds are the whole run's latencies per operation kind; TailsTight
	// says whether each kind's p99 stayed within 3 × its p50, the bench's
	// tail target.
	Kinds      map[string]KindLatency `json:"latency_by_kind"`
	TailsTight bool                   `json:"tails_tight"`
	kindLats   map[string][]time.Duration
}

// KindLatency is one operation kind's latency over the whole run.
type KindLatency struct {
	N     int     `json:"n"`
	P50ms float64 `json:"p50_ms"`
	P99ms float64 `json:"p99_ms"`
}

// SoakSample is one window of the run.
type SoakSample struct {
	At         float64 `json:"at_s"`
	OpsPerSec  float64 `json:"ops_per_s"`
	P50ms      float64 `json:"p50_ms"`
	P99ms      float64 `json:"p99_ms"`
	RSSMiB     float64 `json:"rss_mib"`
	Goroutines float64 `json:"goroutines"`
	OpenFiles  int     `json:"open_files"`
}

// soak drives the daemon at rate operations a second for dur with mixed
// traffic: requests, two signed reviews, tokens, reads, audit reads and
// watch streams, in the proportions of whole flows.
func (d *runningDaemon) soak(ctx context.Context, dur time.Duration, rate float64) (*Soak, error) {
	res := &Soak{Time: time.Now().UTC(), Duration: dur.Seconds(), Rate: rate, Ops: map[string]int{}, Errors: map[string]int{}, Machine: machine(),
		kindLats: map[string][]time.Duration{}}
	var (
		mu       sync.Mutex
		lats     []time.Duration
		needBob  = make(chan string, 100000)
		needErin = make(chan string, 100000)
		approved = make(chan string, 100000)
		watching atomic.Int64
	)
	alice, bob, erin, dave := d.clients["alice"], d.clients["bob"], d.clients["erin"], d.clients["dave"]
	done := func(kind string, start time.Time, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			res.Errors[kind+": "+firstLine(err.Error())]++
			return
		}
		res.Ops[kind]++
		lats = append(lats, time.Since(start))
		res.kindLats[kind] = append(res.kindLats[kind], time.Since(start))
	}
	create := func() {
		start := time.Now()
		r, err := alice.CreateRequest(ctx, &bgv1.CreateRequestRequest{Account: "prod-db", Justification: "soak"})
		done("create", start, err)
		if err == nil {
			needBob <- r.GetRequest().GetId()
		}
	}
	ops := []func(){
		create,
		func() {
			select {
			case id := <-needBob:
				start := time.Now()
				_, err := bob.ReviewByID(ctx, id, bgv1.ReviewDecision_REVIEW_DECISION_APPROVE, "")
				done("review", start, err)
				if err == nil {
					needErin <- id
				}
			default:
				create()
			}
		},
		func() {
			select {
			case id := <-needErin:
				start := time.Now()
				_, err := erin.ReviewByID(ctx, id, bgv1.ReviewDecision_REVIEW_DECISION_APPROVE, "")
				done("review", start, err)
				if err == nil {
					approved <- id
				}
			default:
				create()
			}
		},
		func() {
			select {
			case id := <-approved:
				start := time.Now()
				_, err := alice.IssueToken(ctx, &bgv1.IssueTokenRequest{RequestId: id, Audience: "db.prod.example"})
				done("token", start, err)
			default:
				create()
			}
		},
		func() {
			start := time.Now()
			_, err := alice.ListRequests(ctx, &bgv1.ListRequestsRequest{PageSize: 20})
			done("read", start, err)
		},
		func() {
			start := time.Now()
			info, err := dave.GetLogInfo(ctx, &bgv1.GetLogInfoRequest{})
			if err == nil && info.GetSize() > 1 {
				size := info.GetSize()
				_, err = dave.ListEntries(ctx, &bgv1.ListEntriesRequest{Start: size - min(size, 20), End: size, PageSize: 20})
				if err == nil {
					_, err = dave.GetInclusionProof(ctx, &bgv1.GetInclusionProofRequest{Index: rand.Uint64N(size), TreeSize: size})
				}
			}
			done("audit", start, err)
		},
		func() {
			// A watch stream on a pending request, kept until the request
			// moves on: at most eight at a time.
			select {
			case id := <-needBob:
				needBob <- id
				if watching.Add(1) > 8 {
					watching.Add(-1)
					return
				}
				start := time.Now()
				wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				s, err := dave.WatchRequest(wctx, &bgv1.WatchRequestRequest{Id: id})
				if err == nil {
					_, err = s.Recv()
				}
				done("watch", start, err)
				go func() {
					defer cancel()
					defer watching.Add(-1)
					if s == nil {
						return
					}
					for {
						r, err := s.Recv()
						if err != nil || r.GetRequest().GetState() != bgv1.RequestState_REQUEST_STATE_PENDING {
							return
						}
					}
				}()
			default:
			}
		},
	}
	// Whole flows: a create, two reviews and a token for every read, audit
	// read and watch.
	weights := []int{2, 2, 2, 2, 1, 1, 1}
	var pick []int
	for i, w := range weights {
		for range w {
			pick = append(pick, i)
		}
	}

	work := make(chan func(), 64)
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for f := range work {
				f()
			}
		}()
	}
	stop := time.Now().Add(dur)
	interval := time.Duration(float64(time.Second) / rate)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	sample := time.NewTicker(max(dur/30, 2*time.Second))
	defer sample.Stop()
	start, last := time.Now(), time.Now()
	lastOps := 0
	for time.Now().Before(stop) {
		select {
		case <-tick.C:
			select {
			case work <- ops[pick[rand.IntN(len(pick))]]:
			default:
				res.Late++
			}
		case <-sample.C:
			mu.Lock()
			window := append([]time.Duration(nil), lats...)
			lats = lats[:0]
			total := 0
			for _, n := range res.Ops {
				total += n
			}
			mu.Unlock()
			g, _ := d.metric("go_goroutines")
			s := SoakSample{At: time.Since(start).Seconds(), OpsPerSec: float64(total-lastOps) / time.Since(last).Seconds(),
				P50ms: ms(percentile(window, 0.5)), P99ms: ms(percentile(window, 0.99)), RSSMiB: d.rss(), Goroutines: g, OpenFiles: d.openFiles()}
			lastOps, last = total, time.Now()
			res.Samples = append(res.Samples, s)
			logf("soak %4.0fs: %5.0f ops/s, p50 %.1f ms, p99 %.1f ms, RSS %.1f MiB, %0.f goroutines, %d open files",
				s.At, s.OpsPerSec, s.P50ms, s.P99ms, s.RSSMiB, s.Goroutines, s.OpenFiles)
		}
	}
	close(work)
	wg.Wait()
	res.summarize()
	return res, nil
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 160 {
		s = s[:160]
	}
	return s
}

// summarize compares the last third of the samples with the first third
// after a warm-up of one sample, and takes the latency percentiles of all
// windows.
func (s *Soak) summarize() {
	n := len(s.Samples)
	if n < 4 {
		return
	}
	body := s.Samples[1:]
	third := max(len(body)/3, 1)
	mean := func(xs []SoakSample, f func(SoakSample) float64) float64 {
		t := 0.0
		for _, x := range xs {
			t += f(x)
		}
		return t / float64(len(xs))
	}
	first, last := body[:third], body[len(body)-third:]
	// Flat: the last third's mean within 20% of the first's, plus a slack
	// for what comes and goes with the load itself (calls in flight, watch
	// streams, GC cycles). A leak grows past both over a long run.
	flat := true
	ratio := func(f func(SoakSample) float64, slack float64) float64 {
		a, b := mean(first, f), mean(last, f)
		if b > 1.2*a+slack {
			flat = false
		}
		return b / a
	}
	s.RSSGrowth = ratio(func(x SoakSample) float64 { return x.RSSMiB }, 8)
	s.GoroutinesGrowth = ratio(func(x SoakSample) float64 { return x.Goroutines }, 25)
	s.FDsGrowth = ratio(func(x SoakSample) float64 { return float64(x.OpenFiles) }, 8)
	s.Flat = flat
	s.Kinds, s.TailsTight = map[string]KindLatency{}, true
	for k, ds := range s.kindLats {
		kl := KindLatency{N: len(ds), P50ms: ms(percentile(ds, 0.5)), P99ms: ms(percentile(ds, 0.99))}
		s.Kinds[k] = kl
		if k != "watch" && kl.P99ms > 3*kl.P50ms {
			s.TailsTight = false
		}
	}
	p50s, p99s := []float64{}, []float64{}
	for _, x := range body {
		p50s, p99s = append(p50s, x.P50ms), append(p99s, x.P99ms)
	}
	sort.Float64s(p50s)
	sort.Float64s(p99s)
	s.P50ms, s.P99ms = p50s[len(p50s)/2], p99s[len(p99s)-1]
}

func (s *Soak) print() {
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Printf("\nsoak: %s at %.0f ops/s on %d × %s\n\n", time.Duration(s.Duration*float64(time.Second)), s.Rate, s.Machine.CPUs, s.Machine.Model)
	fmt.Fprintln(w, "at s\tops/s\tp50 ms\tp99 ms\tRSS MiB\tgoroutines\topen files\t")
	for _, x := range s.Samples {
		fmt.Fprintf(w, "%.0f\t%.0f\t%.1f\t%.1f\t%.1f\t%.0f\t%d\t\n", x.At, x.OpsPerSec, x.P50ms, x.P99ms, x.RSSMiB, x.Goroutines, x.OpenFiles)
	}
	w.Flush()
	kinds := make([]string, 0, len(s.Ops))
	for k, n := range s.Ops {
		kinds = append(kinds, fmt.Sprintf("%s %d", k, n))
	}
	sort.Strings(kinds)
	fmt.Printf("\noperations: %s; late starts %d\n", strings.Join(kinds, ", "), s.Late)
	if len(s.Errors) == 0 {
		fmt.Println("errors: none")
	}
	for e, n := range s.Errors {
		fmt.Printf("error ×%d: %s\n", n, e)
	}
	fmt.Printf("last third / first third: RSS ×%.2f, goroutines ×%.2f, open files ×%.2f (flat: %v)\n", s.RSSGrowth, s.GoroutinesGrowth, s.FDsGrowth, s.Flat)
	fmt.Printf("median window p50 %.1f ms, worst window p99 %.1f ms\n", s.P50ms, s.P99ms)
	names := make([]string, 0, len(s.Kinds))
	for k := range s.Kinds {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		kl := s.Kinds[k]
		fmt.Printf("  %-7s n %6d  p50 %6.1f ms  p99 %6.1f ms\n", k, kl.N, kl.P50ms, kl.P99ms)
	}
	fmt.Printf("every kind's p99 within 3 × its p50 (watch streams aside): %v\n", s.TailsTight)
}

func (s *Soak) write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(s, "", "  ")
	path := filepath.Join(dir, "soak.json")
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Printf("wrote %s\n", path)
	return nil
}
