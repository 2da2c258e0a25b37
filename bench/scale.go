package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/bgbroker/breakglass/client"
	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
	"github.com/bgbroker/breakglass/server/devmode"
)

// ScaleResults is one run of the scale benchmark (make bench-scale): the
// same figures at every store size, in one run, so that their ratios say
// what grows with history.
type ScaleResults struct {
	Time      time.Time   `json:"time"`
	Machine   Machine     `json:"machine"`
	Quick     bool        `json:"quick"`
	DurationS float64     `json:"duration_s"`
	Fill      string      `json:"fill"`
	Figures   []figure    `json:"figures"`
	Sizes     []ScaleSize `json:"sizes"`
	Targets   []Check     `json:"targets"`
}

// ScaleSize is every figure at one size of the log.
type ScaleSize struct {
	Entries uint64             `json:"audit_entries"`
	FillS   float64            `json:"fill_s"`
	Values  map[string]float64 `json:"values"`
}

// figure is one row of the table. Kind says how its ratio to the smallest
// size is judged: lat (lower is better, within 1.5×), p99 (within 2×),
// rate (higher is better, within 1/1.5), and grows (a cost that must grow
// with the log, such as its size or a full pass over it: reported, not
// judged).
type figure struct {
	ID    string `json:"id"`
	Label string `json:"label"`
	Unit  string `json:"unit"`
	Kind  string `json:"kind"`
}

// listCase is a ListRequests call measured at every size, as a principal.
type listCase struct {
	id, label, who string
	in             *bgv1.ListRequestsRequest
}

var listCases = []listCase{
	{"all", "no filter (auditor)", "dave", &bgv1.ListRequestsRequest{}},
	{"pending", "state=PENDING", "dave", &bgv1.ListRequestsRequest{State: bgv1.RequestState_REQUEST_STATE_PENDING}},
	{"approved", "state=APPROVED", "dave", &bgv1.ListRequestsRequest{State: bgv1.RequestState_REQUEST_STATE_APPROVED}},
	{"revoked", "state=REVOKED", "dave", &bgv1.ListRequestsRequest{State: bgv1.RequestState_REQUEST_STATE_REVOKED}},
	{"cancelled", "state=CANCELLED", "dave", &bgv1.ListRequestsRequest{State: bgv1.RequestState_REQUEST_STATE_CANCELLED}},
	{"denied", "state=DENIED", "dave", &bgv1.ListRequestsRequest{State: bgv1.RequestState_REQUEST_STATE_DENIED}},
	{"expired", "state=EXPIRED", "dave", &bgv1.ListRequestsRequest{State: bgv1.RequestState_REQUEST_STATE_EXPIRED}},
	{"account", "account=prod-db", "dave", &bgv1.ListRequestsRequest{Account: "prod-db"}},
	{"denied_none", "state=DENIED account=prod-db (none)", "dave", &bgv1.ListRequestsRequest{Account: "prod-db", State: bgv1.RequestState_REQUEST_STATE_DENIED}},
	{"expired_none", "state=EXPIRED account=prod-db (none)", "dave", &bgv1.ListRequestsRequest{Account: "prod-db", State: bgv1.RequestState_REQUEST_STATE_EXPIRED}},
	{"revoked_none", "state=REVOKED account=ops-db (none)", "dave", &bgv1.ListRequestsRequest{Account: "ops-db", State: bgv1.RequestState_REQUEST_STATE_REVOKED}},
	{"mine", "--mine (alice)", "alice", &bgv1.ListRequestsRequest{Mine: true}},
	{"mine_denied", "--mine state=DENIED (alice)", "alice", &bgv1.ListRequestsRequest{Mine: true, State: bgv1.RequestState_REQUEST_STATE_DENIED}},
	{"mine_none", "--mine (bob, none)", "bob", &bgv1.ListRequestsRequest{Mine: true}},
	{"awaiting", "--awaiting-my-review (bob)", "bob", &bgv1.ListRequestsRequest{AwaitingMyReview: true}},
	{"awaiting_none", "--awaiting-my-review (dave, none)", "dave", &bgv1.ListRequestsRequest{AwaitingMyReview: true}},
}

func scaleFigures() []figure {
	fs := []figure{
		{"fill_per_s", "fill: audit entries appended/s", "/s", "rate"},
		{"start_clean_s", "start to SERVING, clean", "s", "lat"},
		{"start_kill_s", "start to SERVING after kill -9", "s", "lat"},
		{"bgcheck_s", "background quick_check after start", "s", "grows"},
		{"idle_cpu_cores", "idle daemon CPU", "cores", "abs"},
		{"rss_idle_mib", "daemon RSS, idle after start", "MiB", "lat"},
	}
	for _, c := range listCases {
		fs = append(fs, figure{"list_" + c.id + "_ms", "ListRequests " + c.label + ", p50", "ms", "lat"})
	}
	fs = append(fs, []figure{
		{"accounts_ms", "ListAccounts, p50", "ms", "lat"},
		{"report_ms", "GetReport first page, p50", "ms", "lat"},
		{"report_all_ms", "GetReport, every page", "ms", "lat"},
		{"metrics_ms", "/metrics scrape, p50", "ms", "lat"},
		{"get_request_ms", "GetRequest, p50", "ms", "lat"},
		{"checkpoint_ms", "GetCheckpoint (latest), p50", "ms", "lat"},
		{"inclusion_p50_ms", "inclusion proof, p50", "ms", "lat"},
		{"inclusion_p99_ms", "inclusion proof, p99", "ms", "p99"},
		{"consistency_p50_ms", "consistency proof, p50", "ms", "lat"},
		{"export_per_s", "bgctl audit export, entries/s", "/s", "rate"},
		{"export_s", "bgctl audit export, whole log", "s", "grows"},
		{"verify_per_s", "bgctl audit verify, entries/s", "/s", "rate"},
		{"verify_s", "bgctl audit verify, whole log", "s", "grows"},
		{"verify_rss_mib", "bgctl audit verify, peak RSS", "MiB", "lat"},
	}...)
	for _, op := range []string{"issue", "flow"} {
		name := map[string]string{"issue": "IssueToken", "flow": "whole flow"}[op]
		for _, c := range []int{1, 8} {
			p := fmt.Sprintf("%s_c%d", op, c)
			fs = append(fs, figure{p + "_per_s", fmt.Sprintf("%s at %d, per s", name, c), "/s", "rate"},
				figure{p + "_p50_ms", fmt.Sprintf("%s at %d, p50", name, c), "ms", "lat"},
				figure{p + "_p99_ms", fmt.Sprintf("%s at %d, p99", name, c), "ms", "p99"})
		}
	}
	return append(fs, []figure{
		{"issue_c8_sqlite", "IssueToken at 8: SQLite share of daemon CPU", "%", "lat"},
		{"issue_c8_pkcs11", "IssueToken at 8: PKCS#11 share of daemon CPU", "%", "info"},
		{"rss_peak_mib", "daemon peak RSS (VmHWM)", "MiB", "lat"},
		{"db_mib", "database file", "MiB", "grows"},
		{"db_bytes_per_entry", "database bytes per audit entry", "B", "lat"},
		{"wal_mib", "write-ahead log after the run", "MiB", "info"},
	}...)
}

type scaleOpts struct {
	sizes     []uint64
	dur, idle time.Duration
	samples   int
	outDir    string
	bgd, bgc  string
	quick     bool
	// keep leaves the work directory (the store, the last export) behind.
	keep bool
}

type scaleRun struct {
	o       scaleOpts
	work    string
	dir     string
	cfgPath string
	ca      *x509.CertPool
	res     *ScaleResults
}

func runScale(o scaleOpts) error {
	start := time.Now()
	work, err := os.MkdirTemp("", "breakglass-scale-")
	if err != nil {
		return err
	}
	if o.keep {
		logf("keeping the stores and the last export in %s", work)
	} else {
		defer os.RemoveAll(work)
	}
	for _, b := range []struct {
		path *string
		pkg  string
	}{{&o.bgd, "./cmd/breakglassd"}, {&o.bgc, "./cmd/bgctl"}} {
		if *b.path != "" {
			continue
		}
		*b.path = filepath.Join(work, filepath.Base(b.pkg))
		build := exec.Command("go", "build", "-o", *b.path, b.pkg)
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("building %s: %w", b.pkg, err)
		}
	}
	s := &scaleRun{o: o, work: work, res: &ScaleResults{Time: time.Now().UTC(), Machine: machine(), Quick: o.quick, Figures: scaleFigures(),
		Fill: "in a process of its own, the daemon built in process as breakglassd serve builds it and driven through the broker's methods (no TLS or gRPC): " +
			"per ten cycles seven whole uses of prod-db (request, two signed approvals, token, revocation, post-use review closed), one cancellation, " +
			"one denial and one expiry on ops-db; then every open request ended and the same open work made at each size " +
			"(5 pending requests, 5 live grants with a token); events delivered to a Standard Webhooks receiver in the benchmark process"}}
	// The receiver of the broker's events: it answers at once, as a SOC's
	// collector would, so the outbox holds what a real one holds.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	hooks := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusNoContent)
	})}
	go func() { _ = hooks.Serve(ln) }()
	defer hooks.Close()
	if err := s.setup("http://" + ln.Addr().String() + "/events"); err != nil {
		return err
	}
	for _, n := range o.sizes {
		logf("filling the log to %d entries", n)
		sz, err := s.measureSize(n)
		if err != nil {
			return fmt.Errorf("at %d entries: %w", n, err)
		}
		s.res.Sizes = append(s.res.Sizes, *sz)
	}
	s.res.Targets = scaleTargets(s.res)
	s.res.DurationS = time.Since(start).Seconds()
	printScale(s.res)
	if err := os.MkdirAll(o.outDir, 0o755); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(s.res, "", "  ")
	path := filepath.Join(o.outDir, "scale.json")
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Printf("\nwrote %s; the run took %s\n", path, time.Since(start).Round(time.Second))
	return nil
}

// setup makes the dev broker directory with the scale policy and a
// configuration for measuring: no rate limit worth the name, profiles on
// loopback, and every event sent to the webhook receiver at hookURL, so
// the outbox fills as it would (the dev file sink syncs the disk for every
// event and fell tens of minutes behind a fill).
func (s *scaleRun) setup(hookURL string) error {
	s.dir = filepath.Join(s.work, "state")
	path, _, err := devmode.Setup(context.Background(), devmode.Options{Dir: s.dir, GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0"})
	if err != nil {
		return err
	}
	s.cfgPath = path
	if err := os.WriteFile(filepath.Join(s.dir, "policy.yaml"), []byte(scalePolicy), 0o600); err != nil {
		return err
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var doc map[string]any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return err
	}
	doc["limits"] = map[string]any{"rate_per_second": 1e6, "burst": 1000000}
	doc["debug"] = map[string]any{"pprof": "127.0.0.1:0"}
	sinks, err := devmode.WebhookSinks(s.dir, []string{hookURL})
	if err != nil {
		return err
	}
	doc["notify"] = map[string]any{"sinks": []any{map[string]any{"name": "soc", "type": "webhook", "url": hookURL, "secret_file": sinks[0].SecretFile}}}
	out, err := yaml.Marshal(doc)
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, out, 0o600); err != nil {
		return err
	}
	caPEM, err := os.ReadFile(filepath.Join(s.dir, "ca", "ca.crt"))
	if err != nil {
		return err
	}
	s.ca = x509.NewCertPool()
	s.ca.AppendCertsFromPEM(caPEM)
	return nil
}

// fill runs the fill process up to n entries.
func (s *scaleRun) fill(n uint64) (*FillResult, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, "-scale-fill", s.cfgPath, "-scale-to", strconv.FormatUint(n, 10))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, os.Stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("the fill process: %w", err)
	}
	var r FillResult
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		return nil, fmt.Errorf("the fill process said %q: %w", out.String(), err)
	}
	return &r, nil
}

func (s *scaleRun) measureSize(n uint64) (*ScaleSize, error) {
	ctx := context.Background()
	sz := &ScaleSize{Values: map[string]float64{}}
	v := sz.Values
	fr, err := s.fill(n)
	if err != nil {
		return nil, err
	}
	sz.Entries, sz.FillS = fr.Size, fr.Seconds
	v["fill_per_s"] = float64(fr.Appended) / fr.Seconds
	logf("%d entries (%d cycles, %d errors) in %.0f s; starting the daemon", fr.Size, fr.Cycles, fr.Errors, fr.Seconds)

	d, took, err := s.start(ctx)
	if err != nil {
		return nil, err
	}
	defer d.stop()
	v["start_clean_s"] = took.Seconds()
	select {
	case c := <-d.checked:
		v["bgcheck_s"] = c.Seconds()
	case <-time.After(10 * time.Minute):
		return nil, errors.New("the background integrity check did not finish")
	}
	time.Sleep(2 * time.Second)
	logf("idle CPU over %s", s.o.idle)
	v["idle_cpu_cores"] = d.idleCPU(s.o.idle)
	v["rss_idle_mib"] = d.rss()

	logf("reads")
	if err := s.reads(ctx, d, v); err != nil {
		return nil, err
	}
	logf("export and offline verification")
	if err := s.exportVerify(ctx, d, v); err != nil {
		return nil, err
	}
	logf("IssueToken and whole flows at 1 and 8 clients")
	for _, c := range []int{1, 8} {
		l, _, err := d.issueLoad(ctx, c, s.o.dur)
		if err != nil {
			return nil, err
		}
		putLoad(v, fmt.Sprintf("issue_c%d", c), l)
		if c == 8 {
			v["issue_c8_sqlite"], v["issue_c8_pkcs11"] = 100*l.CPU["sqlite"], 100*l.CPU["pkcs11_sign"]
		}
	}
	for _, c := range []int{1, 8} {
		l, _, err := d.flowLoad(ctx, c, s.o.dur)
		if err != nil {
			return nil, err
		}
		putLoad(v, fmt.Sprintf("flow_c%d", c), l)
	}
	v["rss_peak_mib"] = d.peakRSS()

	logf("kill -9 and start again")
	_ = d.cmd.Process.Kill()
	_ = d.cmd.Wait()
	d.cmd = nil
	d2, took, err := s.start(ctx)
	if err != nil {
		return nil, err
	}
	v["start_kill_s"] = took.Seconds()
	d2.stop()

	db := fileSize(filepath.Join(s.dir, "broker.db"))
	v["db_mib"] = db / (1 << 20)
	v["db_bytes_per_entry"] = db / float64(fr.Size)
	v["wal_mib"] = fileSize(filepath.Join(s.dir, "broker.db-wal")) / (1 << 20)
	return sz, nil
}

func putLoad(v map[string]float64, p string, l Load) {
	v[p+"_per_s"], v[p+"_p50_ms"], v[p+"_p99_ms"] = l.PerSec, l.P50ms, l.P99ms
	if l.Errors > 0 {
		logf("%s: %d errors", p, l.Errors)
	}
}

func fileSize(path string) float64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return float64(st.Size())
}

// scaleDaemon is a breakglassd serve started by the scale benchmark.
type scaleDaemon struct {
	*runningDaemon
	// checked receives how long the background integrity check took.
	checked chan time.Duration
}

var tookRE = regexp.MustCompile(`took=([0-9.]+[a-zµ]+)`)

// start runs breakglassd serve and returns once its gRPC health check says
// SERVING, with the time from exec to then.
func (s *scaleRun) start(ctx context.Context) (*scaleDaemon, time.Duration, error) {
	readyFile := filepath.Join(s.dir, "ready.json")
	_ = os.Remove(readyFile)
	cmd := exec.Command(s.o.bgd, "serve", "--config", s.cfgPath, "--ready-file", readyFile, "--log-level", "info")
	d := &scaleDaemon{checked: make(chan time.Duration, 1)}
	cmd.Stderr = &lineWriter{fn: func(l string) {
		switch {
		case strings.Contains(l, "background integrity check"):
			if m := tookRE.FindStringSubmatch(l); m != nil {
				if t, err := time.ParseDuration(m[1]); err == nil {
					d.checked <- t
				}
			}
		case strings.Contains(l, "level=WARN"), strings.Contains(l, "level=ERROR"):
			fmt.Fprintln(os.Stderr, "breakglassd: "+l)
		}
	}}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, 0, err
	}
	d.runningDaemon = &runningDaemon{cmd: cmd, clients: map[string]*client.Client{}, env: &env{dir: s.dir, cfgPath: s.cfgPath}}
	fail := func(err error) (*scaleDaemon, time.Duration, error) {
		d.stop()
		return nil, 0, err
	}
	deadline := t0.Add(5 * time.Minute)
	for {
		if b, err := os.ReadFile(readyFile); err == nil && json.Unmarshal(b, &d.ready) == nil && d.ready.GRPC != "" {
			break
		}
		if time.Now().After(deadline) {
			return fail(errors.New("breakglassd wrote no ready file"))
		}
		time.Sleep(2 * time.Millisecond)
	}
	hc, conn, err := s.health(d.ready.GRPC)
	if err != nil {
		return fail(err)
	}
	defer conn.Close()
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		r, err := hc.Check(cctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && r.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			break
		}
		if time.Now().After(deadline) {
			return fail(fmt.Errorf("breakglassd did not become SERVING (status %s): %w", r.GetStatus(), err))
		}
		time.Sleep(2 * time.Millisecond)
	}
	took := time.Since(t0)
	d.http = httpClient(s.ca)
	for _, p := range []string{"alice", "bob", "erin", "dave"} {
		c, err := client.Dial(client.Options{Addr: d.ready.GRPC, CAFile: filepath.Join(s.dir, "ca", "ca.crt"),
			CertFile: filepath.Join(s.dir, "identities", p+".crt"), KeyFile: filepath.Join(s.dir, "identities", p+".key")})
		if err != nil {
			return fail(err)
		}
		d.clients[p] = c
	}
	return d, took, nil
}

func (s *scaleRun) health(addr string) (healthpb.HealthClient, *grpc.ClientConn, error) {
	kp, err := tls.LoadX509KeyPair(filepath.Join(s.dir, "identities", "dave.crt"), filepath.Join(s.dir, "identities", "dave.key"))
	if err != nil {
		return nil, nil, err
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: s.ca, Certificates: []tls.Certificate{kp}, MinVersion: tls.VersionTLS13})))
	if err != nil {
		return nil, nil, err
	}
	return healthpb.NewHealthClient(conn), conn, nil
}

func httpClient(pool *x509.CertPool) *http.Client {
	return &http.Client{Timeout: 120 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
}

// lineWriter calls fn with every complete line written to it.
type lineWriter struct {
	mu  sync.Mutex
	buf []byte
	fn  func(string)
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.fn(string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
	return len(p), nil
}

// cpuTicks is the daemon's user and system CPU time in clock ticks.
func (d *runningDaemon) cpuTicks() float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", d.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	// The fields after the command name, which is in parentheses.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return ut + st
}

// idleCPU is the daemon's CPU use over dur, in cores, with no calls made.
func (d *runningDaemon) idleCPU(dur time.Duration) float64 {
	const ticksPerSecond = 100 // USER_HZ on Linux
	c0, t0 := d.cpuTicks(), time.Now()
	time.Sleep(dur)
	return (d.cpuTicks() - c0) / ticksPerSecond / time.Since(t0).Seconds()
}

// metricSum adds up every sample of a metric on /metrics.
func (d *runningDaemon) metricSum(name string) (float64, error) {
	resp, err := d.http.Get("http://" + d.ready.Metrics + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	total := 0.0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, name+"{") || strings.HasPrefix(l, name+" ") {
			f := strings.Fields(l)
			x, _ := strconv.ParseFloat(f[len(f)-1], 64)
			total += x
		}
	}
	return total, sc.Err()
}

// timed calls fn n times and returns its p50 and p99 in milliseconds.
func timed(n int, fn func() error) (float64, float64, error) {
	lats := make([]time.Duration, 0, n)
	for range n {
		t := time.Now()
		if err := fn(); err != nil {
			return 0, 0, err
		}
		lats = append(lats, time.Since(t))
	}
	return ms(percentile(lats, 0.5)), ms(percentile(lats, 0.99)), nil
}

func (s *scaleRun) reads(ctx context.Context, d *scaleDaemon, v map[string]float64) error {
	n := s.o.samples
	for _, c := range listCases {
		var got int
		p50, _, err := timed(n, func() error {
			r, err := d.clients[c.who].ListRequests(ctx, c.in)
			got = len(r.GetRequests())
			return err
		})
		if err != nil {
			return fmt.Errorf("ListRequests %s: %w", c.label, err)
		}
		v["list_"+c.id+"_ms"] = p50
		v["list_"+c.id+"_n"] = float64(got)
	}
	dave, alice := d.clients["dave"], d.clients["alice"]
	var err error
	if v["accounts_ms"], _, err = timed(n, func() error {
		_, err := alice.ListAccounts(ctx, &bgv1.ListAccountsRequest{})
		return err
	}); err != nil {
		return fmt.Errorf("ListAccounts: %w", err)
	}
	if v["report_ms"], _, err = timed(n, func() error {
		_, err := dave.GetReport(ctx, &bgv1.GetReportRequest{})
		return err
	}); err != nil {
		return fmt.Errorf("GetReport: %w", err)
	}
	if v["report_all_ms"], _, err = timed(max(n/5, 3), func() error {
		for tok := ""; ; {
			r, err := dave.GetReport(ctx, &bgv1.GetReportRequest{PageToken: tok})
			if err != nil {
				return err
			}
			if tok = r.GetNextPageToken(); tok == "" {
				return nil
			}
		}
	}); err != nil {
		return fmt.Errorf("GetReport pages: %w", err)
	}
	if v["metrics_ms"], _, err = timed(n, func() error {
		resp, err := d.http.Get("http://" + d.ready.Metrics + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}); err != nil {
		return fmt.Errorf("/metrics: %w", err)
	}
	pend, err := dave.ListRequests(ctx, &bgv1.ListRequestsRequest{State: bgv1.RequestState_REQUEST_STATE_PENDING})
	if err != nil {
		return err
	}
	if len(pend.GetRequests()) == 0 {
		return errors.New("no pending request to read")
	}
	id := pend.GetRequests()[0].GetId()
	if v["get_request_ms"], _, err = timed(n, func() error {
		_, err := dave.GetRequest(ctx, &bgv1.GetRequestRequest{Id: id})
		return err
	}); err != nil {
		return fmt.Errorf("GetRequest: %w", err)
	}
	if v["checkpoint_ms"], _, err = timed(n, func() error {
		_, err := dave.GetCheckpoint(ctx, &bgv1.GetCheckpointRequest{})
		return err
	}); err != nil {
		return fmt.Errorf("GetCheckpoint: %w", err)
	}
	info, err := dave.GetLogInfo(ctx, &bgv1.GetLogInfoRequest{})
	if err != nil {
		return err
	}
	size := info.GetSize()
	if v["inclusion_p50_ms"], v["inclusion_p99_ms"], err = timed(20*n, func() error {
		_, err := dave.GetInclusionProof(ctx, &bgv1.GetInclusionProofRequest{Index: mrand.Uint64N(size), TreeSize: size})
		return err
	}); err != nil {
		return fmt.Errorf("inclusion proof: %w", err)
	}
	if v["consistency_p50_ms"], _, err = timed(n, func() error {
		_, err := dave.GetConsistencyProof(ctx, &bgv1.GetConsistencyProofRequest{FromSize: 1 + mrand.Uint64N(size-1), ToSize: size})
		return err
	}); err != nil {
		return fmt.Errorf("consistency proof: %w", err)
	}
	return nil
}

// exportVerify exports the log with bgctl audit export and verifies it with
// bgctl audit verify, as an auditor would, each in its own process: the
// verifier's peak RSS is its own.
func (s *scaleRun) exportVerify(ctx context.Context, d *scaleDaemon, v map[string]float64) error {
	dave := d.clients["dave"]
	info, err := dave.GetLogInfo(ctx, &bgv1.GetLogInfoRequest{})
	if err != nil {
		return err
	}
	size := info.GetSize()
	cp, err := dave.GetCheckpoint(ctx, &bgv1.GetCheckpointRequest{Size: size})
	if err != nil {
		return fmt.Errorf("checkpoint at %d: %w", size, err)
	}
	dir := filepath.Join(s.work, "audit")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	files := map[string][]byte{"checkpoint.note": cp.GetCheckpoint(), "audit.pem": []byte(info.GetAuditKey().GetPem()),
		"checkpoint.vkey": []byte(info.GetCheckpointKey().GetNoteVerifierKey() + "\n")}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return err
		}
	}
	logFile := filepath.Join(dir, "log.jsonl")
	if !s.o.keep {
		defer os.Remove(logFile)
	}
	id := filepath.Join(s.dir, "identities", "dave")
	t := time.Now()
	if _, err := runPeak(s.o.bgc, "audit", "export", "--addr", d.ready.GRPC, "--ca", filepath.Join(s.dir, "ca", "ca.crt"), "--cert", id+".crt", "--key", id+".key",
		"--to", strconv.FormatUint(size, 10), "--out", logFile); err != nil {
		return fmt.Errorf("bgctl audit export: %w", err)
	}
	v["export_s"] = time.Since(t).Seconds()
	v["export_per_s"] = float64(size) / v["export_s"]
	t = time.Now()
	rss, err := runPeak(s.o.bgc, "audit", "verify", "--log", logFile, "--checkpoint", filepath.Join(dir, "checkpoint.note"),
		"--audit-key", filepath.Join(dir, "audit.pem"), "--checkpoint-key", filepath.Join(dir, "checkpoint.vkey"), "--client-ca", filepath.Join(s.dir, "ca", "ca.crt"))
	if err != nil {
		return fmt.Errorf("bgctl audit verify: %w", err)
	}
	v["verify_s"] = time.Since(t).Seconds()
	v["verify_per_s"] = float64(size) / v["verify_s"]
	v["verify_rss_mib"] = rss
	return nil
}

// runPeak runs a command and returns its peak RSS in MiB.
func runPeak(bin string, args ...string) (float64, error) {
	cmd := exec.Command(bin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("%w: %s", err, strings.TrimSpace(out.String()))
	}
	ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if !ok {
		return 0, nil
	}
	return float64(ru.Maxrss) / 1024, nil // KiB on Linux
}
