package main

import (
	"bufio"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ThalesGroup/crypto11"
	"github.com/google/pprof/profile"
	"go.yaml.in/yaml/v3"

	"github.com/bgbroker/breakglass/client"
	"github.com/bgbroker/breakglass/hsm"
	"github.com/bgbroker/breakglass/server/config"
	"github.com/bgbroker/breakglass/server/daemon"
	"github.com/bgbroker/breakglass/server/devmode"
)

var benchPolicy = devmode.Policy("", "approval_window: 1h", "activation_window: 1h", "max_issuances: 1000")

type env struct {
	dir      string
	cfgPath  string
	cfg      *config.Config
	module   *hsm.Module
	tokenKey *hsm.Key
	auditKey *hsm.Key
	cpKey    *hsm.Key
	// direct is the token key through crypto11 opened directly on the same
	// token, the library's own rate beside the package's.
	direct    crypto.Signer
	directCtx *crypto11.Context
}

// setup makes a dev broker directory with the benchmark policy and a
// configuration whose limits allow the load, and opens its token here too.
func setup(ctx context.Context, work string) (*env, error) {
	dir := filepath.Join(work, "state")
	path, _, err := devmode.Setup(ctx, devmode.Options{Dir: dir, GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0"})
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), []byte(benchPolicy), 0o600); err != nil {
		return nil, err
	}
	// The benchmark configuration: no rate limit worth the name, no
	// periodic self-test in the measured windows, profiles on loopback,
	// no event sinks (delivery is asynchronous and not what is measured).
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var doc map[string]any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return nil, err
	}
	doc["limits"] = map[string]any{"rate_per_second": 1e6, "burst": 1000000}
	doc["health_interval"] = "1h"
	doc["debug"] = map[string]any{"pprof": "127.0.0.1:0"}
	delete(doc, "notify")
	out, err := yaml.Marshal(doc)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, out, 0o600); err != nil {
		return nil, err
	}
	cfg, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	// The demo admins sign the benchmark policy as the log's first, as dev
	// mode signs its own.
	if err := devmode.SignGenesis(dir, cfg.Audit.Origin, benchPolicy); err != nil {
		return nil, err
	}
	m, err := hsm.Open(ctx, daemon.HSMConfig(cfg.HSM), nil)
	if err != nil {
		return nil, err
	}
	e := &env{dir: dir, cfgPath: path, cfg: cfg, module: m}
	for p, k := range map[hsm.Purpose]**hsm.Key{hsm.PurposeToken: &e.tokenKey, hsm.PurposeAudit: &e.auditKey, hsm.PurposeCheckpoint: &e.cpKey} {
		label := map[hsm.Purpose]string{hsm.PurposeToken: cfg.Keys.Token, hsm.PurposeAudit: cfg.Keys.Audit, hsm.PurposeCheckpoint: cfg.Keys.Checkpoint}[p]
		if *k, err = m.Signer(ctx, label, p); err != nil {
			return nil, err
		}
	}
	if err := e.openDirect(); err != nil {
		e.close()
		return nil, err
	}
	return e, nil
}

// openDirect opens crypto11 itself on the benchmark token and finds the
// token key there.
func (e *env) openDirect() error {
	hc := daemon.HSMConfig(e.cfg.HSM)
	path, err := hc.ResolveModule()
	if err != nil {
		return err
	}
	pin, err := hc.ReadPIN()
	if err != nil {
		return err
	}
	c, err := crypto11.Configure(&crypto11.Config{Path: path, TokenLabel: e.cfg.HSM.TokenLabel, Pin: pin, MaxSessions: e.module.SigningSlots() + 1})
	if err != nil {
		return fmt.Errorf("opening crypto11 directly: %w", err)
	}
	e.directCtx = c
	info := e.tokenKey.Info()
	if e.direct, err = c.FindKeyPair(info.ID, []byte(info.Label)); err != nil {
		return fmt.Errorf("finding the token key through crypto11: %w", err)
	}
	return nil
}

func (e *env) close() {
	if e.directCtx != nil {
		_ = e.directCtx.Close()
	}
	_ = e.module.Close()
}

// pairedRates measures the package and crypto11 called directly on the
// same key at c goroutines, in alternating windows so that the machine's
// other load falls on both alike.
func (e *env) pairedRates(ctx context.Context, c int, d time.Duration) (pkg, direct float64) {
	const rounds = 4
	digest := sha256.Sum256([]byte("breakglass benchmark: raw signing rate"))
	for range rounds {
		pkg += e.rawRate(ctx, e.tokenKey, c, d/(2*rounds))
		direct += signerRate(e.direct, digest[:], c, d/(2*rounds))
	}
	return pkg / rounds, direct / rounds
}

// signerRate signs a digest with s from c goroutines for d.
func signerRate(s crypto.Signer, digest []byte, c int, d time.Duration) float64 {
	var n atomic.Int64
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	start := time.Now()
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				if _, err := s.Sign(nil, digest, crypto.SHA256); err == nil {
					n.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return float64(n.Load()) / time.Since(start).Seconds()
}

// rawRate signs with key from c goroutines for d.
func (e *env) rawRate(ctx context.Context, key *hsm.Key, c int, d time.Duration) float64 {
	var n atomic.Int64
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	msg := []byte("breakglass benchmark: raw signing rate")
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				if _, err := key.SignMessage(ctx, msg); err == nil {
					n.Add(1)
				}
			}
		}()
	}
	start := time.Now()
	wg.Wait()
	return float64(n.Load()) / time.Since(start).Seconds()
}

// runningDaemon is breakglassd serve in its own process.
type runningDaemon struct {
	cmd       *exec.Cmd
	ready     daemon.Ready
	http      *http.Client
	clients   map[string]*client.Client
	setupSigs float64
	env       *env
	// profiles, when set, is where the daemon's CPU profiles are kept.
	profiles string
}

func (e *env) startDaemon(ctx context.Context, bin string) (*runningDaemon, error) {
	readyFile := filepath.Join(e.dir, "ready.json")
	cmd := exec.Command(bin, "serve", "--config", e.cfgPath, "--ready-file", readyFile, "--log-level", "warn")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	d := &runningDaemon{cmd: cmd, clients: map[string]*client.Client{}, env: e}
	for i := 0; ; i++ {
		if b, err := os.ReadFile(readyFile); err == nil && json.Unmarshal(b, &d.ready) == nil && d.ready.GRPC != "" {
			break
		}
		if i > 600 {
			d.stop()
			return nil, fmt.Errorf("breakglassd did not start")
		}
		time.Sleep(50 * time.Millisecond)
	}
	caPEM, err := os.ReadFile(filepath.Join(e.dir, "ca", "ca.crt"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	d.http = &http.Client{Timeout: 120 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	for _, p := range []string{"alice", "bob", "erin", "dave"} {
		c, err := client.Dial(client.Options{Addr: d.ready.GRPC, CAFile: filepath.Join(e.dir, "ca", "ca.crt"),
			CertFile: filepath.Join(e.dir, "identities", p+".crt"), KeyFile: filepath.Join(e.dir, "identities", p+".key")})
		if err != nil {
			return nil, err
		}
		d.clients[p] = c
	}
	return d, nil
}

func (d *runningDaemon) stop() {
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	for _, c := range d.clients {
		_ = c.Close()
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	_ = d.cmd.Wait()
	d.cmd = nil
}

// hsmSignatures reads the daemon's HSM signature counter from /metrics.
func (d *runningDaemon) hsmSignatures() (float64, error) {
	resp, err := d.http.Get("http://" + d.ready.Metrics + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	total := 0.0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "breakglass_hsm_signatures_total{") {
			f := strings.Fields(l)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			total += v
		}
	}
	return total, sc.Err()
}

// cpuClasses sort the daemon's CPU samples, first match wins, so that a
// miss against the signing-share target shows where the time went.
var cpuClasses = []struct {
	name string
	re   *regexp.Regexp
}{
	{"pkcs11_sign", regexp.MustCompile(`^github\.com/miekg/pkcs11\..*Sign`)},
	{"sqlite", regexp.MustCompile(`^modernc\.org/(sqlite|libc)`)},
	{"go_crypto_verify", regexp.MustCompile(`^crypto/(x509|ecdsa)\.`)},
	{"tls_network", regexp.MustCompile(`^(crypto/tls|net|internal/poll|syscall)\.`)},
	{"grpc_http2", regexp.MustCompile(`^(google\.golang\.org/grpc|golang\.org/x/net/http2)`)},
	{"encoding", regexp.MustCompile(`^(encoding/json|google\.golang\.org/protobuf|buf\.build/go/protovalidate|github\.com/go-jose)`)},
	{"gc_alloc", regexp.MustCompile(`^runtime\.(gcBgMarkWorker|mallocgc|gcAssist|bgsweep|bgscavenge)`)},
}

// profileShare profiles the daemon for dur and returns the share of CPU
// samples whose stack is inside PKCS#11 signing (C_SignInit, C_Sign), and
// the shares of every class of cpuClasses ("other" for the rest).
func (d *runningDaemon) profileShare(dur time.Duration, name string) (float64, map[string]float64, error) {
	resp, err := d.http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", d.ready.Pprof, int(dur.Seconds())))
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, err
	}
	if d.profiles != "" {
		if err := os.WriteFile(filepath.Join(d.profiles, name+".pprof"), b, 0o644); err != nil {
			return 0, nil, err
		}
	}
	p, err := profile.ParseData(b)
	if err != nil {
		return 0, nil, err
	}
	var total int64
	by := map[string]int64{}
	for _, s := range p.Sample {
		v := s.Value[len(s.Value)-1]
		total += v
		class := "other"
	classify:
		for _, c := range cpuClasses {
			for _, loc := range s.Location {
				for _, line := range loc.Line {
					if line.Function != nil && c.re.MatchString(line.Function.Name) {
						class = c.name
						break classify
					}
				}
			}
		}
		by[class] += v
	}
	if total == 0 {
		return 0, nil, nil
	}
	shares := map[string]float64{}
	for k, v := range by {
		shares[k] = float64(v) / float64(total)
	}
	return shares["pkcs11_sign"], shares, nil
}

// metric reads one unlabelled sample from /metrics.
func (d *runningDaemon) metric(name string) (float64, error) {
	resp, err := d.http.Get("http://" + d.ready.Metrics + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == name {
			return strconv.ParseFloat(f[1], 64)
		}
	}
	return 0, fmt.Errorf("no %s in /metrics", name)
}

// rss is the daemon's resident set now (VmRSS).
func (d *runningDaemon) rss() float64 { return d.status("VmRSS:") }

// openFiles counts the daemon's file descriptors.
func (d *runningDaemon) openFiles() int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", d.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	return len(ents)
}

// status reads a kB figure from /proc/PID/status, in MiB.
func (d *runningDaemon) status(field string) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, field) {
			f := strings.Fields(l)
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// peakRSS is the daemon's VmHWM.
func (d *runningDaemon) peakRSS() float64 { return d.status("VmHWM:") }
