// Command bench measures, in one run on one SoftHSM2 token, how close the
// broker comes to the HSM's own signing rate: the raw sign rates, IssueToken
// and the whole flow over mTLS gRPC against a running breakglassd, HSM
// signatures per operation, audit append and offline verification rates,
// inclusion-proof latency, SDK token verification, the share of the
// daemon's CPU spent signing, and its peak RSS. It prints a table and
// writes the figures as JSON. `make bench` runs it.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Results is everything one run measured.
type Results struct {
	Time      time.Time `json:"time"`
	Machine   Machine   `json:"machine"`
	DurationS float64   `json:"duration_per_measurement_s"`
	// RawECDSA is the token key's rate through the hsm package, Crypto11
	// the same key through crypto11 called directly, in alternating
	// windows; the HSM limit the targets use is the higher of the two.
	RawECDSA   []Rate `json:"raw_ecdsa"`
	Crypto11   []Rate `json:"crypto11_direct_ecdsa"`
	RawEd25519 []Rate `json:"raw_ed25519"`
	Issue      []Load `json:"issue_token"`
	Flow       []Load `json:"flow"`
	// SigsPerIssue and SigsPerFlow are counted by the hsm package in the
	// daemon (breakglass_hsm_signatures_total), not assumed.
	SigsPerIssue  float64 `json:"hsm_signatures_per_issuance"`
	SigsPerFlow   float64 `json:"hsm_signatures_per_flow"`
	AppendPerSec  float64 `json:"audit_entries_appended_per_s"`
	Verify        Verify  `json:"offline_verification"`
	ProofP50us    float64 `json:"inclusion_proof_p50_us"`
	ProofP99us    float64 `json:"inclusion_proof_p99_us"`
	SDKVerify     float64 `json:"sdk_token_verifications_per_s"`
	GoECDSAVerify float64 `json:"go_ecdsa_verify_per_s_per_core"`
	PeakRSSMiB    float64 `json:"daemon_peak_rss_mib"`
	Targets       []Check `json:"targets"`
}

// Machine describes where the run happened.
type Machine struct {
	CPUs   int    `json:"cpus"`
	Model  string `json:"cpu_model"`
	GoVer  string `json:"go"`
	SoftHS string `json:"softhsm"`
}

// Rate is operations per second at a concurrency.
type Rate struct {
	Concurrency int     `json:"concurrency"`
	PerSec      float64 `json:"per_s"`
}

// Load is a load test at one concurrency.
type Load struct {
	Concurrency int     `json:"concurrency"`
	PerSec      float64 `json:"per_s"`
	P50ms       float64 `json:"p50_ms"`
	P99ms       float64 `json:"p99_ms"`
	Errors      int     `json:"errors"`
	// SignShare is the share of the daemon's CPU samples inside PKCS#11
	// signing during the run.
	SignShare float64 `json:"pkcs11_sign_cpu_share"`
	// CPU is the daemon's CPU profile by class (see cpuClasses).
	CPU map[string]float64 `json:"daemon_cpu_by_class"`
	// RawPerSec is the HSM's ECDSA sign rate at the same concurrency: the
	// higher of the package's and crypto11's own.
	RawPerSec float64 `json:"raw_ecdsa_per_s"`
}

// Verify is the offline verification figure.
type Verify struct {
	Entries       int     `json:"entries"`
	PerSec        float64 `json:"entries_per_s"`
	VerifiesEntry float64 `json:"signature_verifications_per_entry"`
	// Mix counts the export's entries by type.
	Mix map[string]int `json:"entry_types"`
}

// Check is one target and whether this run met it.
type Check struct {
	Name   string  `json:"name"`
	Value  float64 `json:"value"`
	Target float64 `json:"target"`
	Met    bool    `json:"met"`
	Detail string  `json:"detail"`
}

var levels = []int{1, 8, 32, 128}

func main() {
	var (
		dur   = flag.Duration("duration", 5*time.Second, "length of each measurement")
		out   = flag.String("out", "bench/results", "directory for the JSON results")
		bgd   = flag.String("breakglassd", "", "breakglassd binary (built when empty)")
		nVer  = flag.Int("verify-entries", 100000, "entries in the offline verification export")
		quick = flag.Bool("quick", false, "levels 1 and 32 only, 20,000-entry export")
		profs = flag.String("profiles", "", "keep the daemon's CPU profiles, and the load generator's, in this directory")
		soak  = flag.Duration("soak", 0, "instead of the benchmarks, hold a steady mixed load this long and sample the daemon")
		rate  = flag.Float64("rate", 100, "operations per second of the soak")
		scale = flag.Bool("scale", false, "instead of the benchmarks, measure the daemon at growing log sizes (make bench-scale)")
		sizes = flag.String("sizes", "10000,100000,1000000", "the log sizes of -scale, in audit entries")
		bgc   = flag.String("bgctl", "", "bgctl binary for -scale (built when empty)")
		keep  = flag.Bool("keep", false, "-scale leaves its stores and last export in its work directory")
		// The fill process of -scale (see scalefill.go).
		fillCfg = flag.String("scale-fill", "", "")
		fillTo  = flag.Uint64("scale-to", 0, "")
	)
	flag.Parse()
	if *fillCfg != "" {
		if err := runFill(*fillCfg, *fillTo, 32); err != nil {
			fmt.Fprintln(os.Stderr, "bench fill:", err)
			os.Exit(1)
		}
		return
	}
	if *scale {
		o := scaleOpts{dur: *dur, idle: 30 * time.Second, samples: 30, outDir: *out, bgd: *bgd, bgc: *bgc, quick: *quick, keep: *keep}
		set := map[string]bool{}
		flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if *quick && !set["sizes"] {
			*sizes = "2000,20000"
		}
		if *quick {
			o.dur, o.idle, o.samples = 2*time.Second, 10*time.Second, 15
		}
		for _, f := range strings.Split(*sizes, ",") {
			n, err := strconv.ParseUint(strings.TrimSpace(f), 10, 64)
			if err != nil || n == 0 {
				fmt.Fprintf(os.Stderr, "bench: -sizes: %q is not a number of entries\n", f)
				os.Exit(2)
			}
			o.sizes = append(o.sizes, n)
		}
		if err := runScale(o); err != nil {
			fmt.Fprintln(os.Stderr, "bench-scale:", err)
			os.Exit(1)
		}
		return
	}
	if *soak > 0 {
		if err := runSoak(*soak, *rate, *out, *bgd); err != nil {
			fmt.Fprintln(os.Stderr, "soak:", err)
			os.Exit(1)
		}
		return
	}
	if *quick {
		levels = []int{1, 32}
		*nVer = 20000
	}
	if err := run(*dur, *out, *bgd, *nVer, *profs); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(dur time.Duration, outDir, bgd string, nVerify int, profiles string) error {
	ctx := context.Background()
	start := time.Now()
	work, err := os.MkdirTemp("", "breakglass-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	if bgd == "" {
		bgd = filepath.Join(work, "breakglassd")
		build := exec.Command("go", "build", "-o", bgd, "./cmd/breakglassd")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("building breakglassd: %w", err)
		}
	}
	res := &Results{Time: time.Now().UTC(), DurationS: dur.Seconds(), Machine: machine()}
	env, err := setup(ctx, work)
	if err != nil {
		return err
	}
	defer env.close()

	logf("raw HSM signing through the hsm package and through crypto11 directly")
	for _, c := range levels {
		pkg, direct := env.pairedRates(ctx, c, dur)
		res.RawECDSA = append(res.RawECDSA, Rate{c, pkg})
		res.Crypto11 = append(res.Crypto11, Rate{c, direct})
	}
	for _, c := range []int{1, 2 * runtime.NumCPU()} {
		res.RawEd25519 = append(res.RawEd25519, Rate{c, env.rawRate(ctx, env.cpKey, c, dur/2)})
	}

	d, err := env.startDaemon(ctx, bgd)
	if err != nil {
		return err
	}
	defer d.stop()
	if profiles != "" {
		if err := os.MkdirAll(profiles, 0o755); err != nil {
			return err
		}
		d.profiles = profiles
		f, err := os.Create(filepath.Join(profiles, "loadgen.pprof"))
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}

	logf("IssueToken over mTLS gRPC")
	sigs0, _ := d.hsmSignatures()
	issued := 0
	for _, c := range levels {
		l, n, err := d.issueLoad(ctx, c, dur)
		if err != nil {
			return err
		}
		l.RawPerSec = max(rawAt(res.RawECDSA, c), rawAt(res.Crypto11, c))
		res.Issue = append(res.Issue, l)
		issued += n
	}
	sigs1, _ := d.hsmSignatures()
	// The grants the issuance load used were made beforehand: their
	// signatures are not in the window (see issueLoad).
	res.SigsPerIssue = (sigs1 - sigs0 - d.setupSigs) / float64(issued)

	logf("whole flow: create, two signed reviews, issue")
	flows := 0
	sigs0, _ = d.hsmSignatures()
	for _, c := range levels {
		l, n, err := d.flowLoad(ctx, c, dur)
		if err != nil {
			return err
		}
		l.RawPerSec = max(rawAt(res.RawECDSA, c), rawAt(res.Crypto11, c))
		res.Flow = append(res.Flow, l)
		flows += n
	}
	sigs1, _ = d.hsmSignatures()
	res.SigsPerFlow = (sigs1 - sigs0) / float64(flows)
	res.PeakRSSMiB = d.peakRSS()

	logf("pure-Go ECDSA verify and SDK token verification")
	res.GoECDSAVerify = goVerifyRate(dur / 2)
	if res.SDKVerify, err = d.sdkVerifyRate(ctx, dur/2); err != nil {
		return err
	}

	logf("audit appends, filling the log to %d entries", nVerify)
	if res.AppendPerSec, err = d.fill(ctx, uint64(nVerify), 32); err != nil {
		return err
	}
	logf("offline verification of a %d-entry export", nVerify)
	if res.Verify, res.ProofP50us, res.ProofP99us, err = d.offline(ctx, uint64(nVerify)); err != nil {
		return err
	}
	d.stop()

	res.Targets = targets(res)
	printTable(res)
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(res, "", "  ")
	path := filepath.Join(outDir, "latest.json")
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Printf("\nwrote %s; the run took %s\n", path, time.Since(start).Round(time.Second))
	return nil
}

// runSoak holds a steady mixed load on a running breakglassd and fails
// when the traffic met errors or the daemon did not stay flat.
func runSoak(dur time.Duration, rate float64, outDir, bgd string) error {
	ctx := context.Background()
	work, err := os.MkdirTemp("", "breakglass-soak-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	if bgd == "" {
		bgd = filepath.Join(work, "breakglassd")
		build := exec.Command("go", "build", "-o", bgd, "./cmd/breakglassd")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("building breakglassd: %w", err)
		}
	}
	env, err := setup(ctx, work)
	if err != nil {
		return err
	}
	defer env.close()
	d, err := env.startDaemon(ctx, bgd)
	if err != nil {
		return err
	}
	defer d.stop()
	res, err := d.soak(ctx, dur, rate)
	if err != nil {
		return err
	}
	res.print()
	if err := res.write(outDir); err != nil {
		return err
	}
	switch {
	case len(res.Errors) > 0:
		return fmt.Errorf("%d kinds of errors under a load that asked for none", len(res.Errors))
	case !res.Flat:
		return fmt.Errorf("the daemon did not stay flat")
	}
	return nil
}

func rawAt(rs []Rate, c int) float64 {
	for _, r := range rs {
		if r.Concurrency == c {
			return r.PerSec
		}
	}
	return 0
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoVer: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				m.Model = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	if out, err := exec.Command("softhsm2-util", "--version").Output(); err == nil {
		m.SoftHS = strings.TrimSpace(string(out))
	}
	return m
}

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	i := int(p * float64(len(ds)-1))
	return ds[i]
}
