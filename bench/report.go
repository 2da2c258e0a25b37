package main

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
)

// targets checks this run's figures against the issue's ratios.
func targets(r *Results) []Check {
	var out []Check
	add := func(name string, value, target float64, higher bool, detail string) {
		met := value >= target
		if !higher {
			met = value <= target
		}
		out = append(out, Check{Name: name, Value: value, Target: target, Met: met, Detail: detail})
	}
	for _, x := range r.RawECDSA {
		if direct := rawAt(r.Crypto11, x.Concurrency); direct > 0 {
			add(fmt.Sprintf("hsm package / crypto11 direct c=%d", x.Concurrency), x.PerSec/direct, 0.95, true,
				fmt.Sprintf("%.0f / %.0f signatures/s on the same key, alternating windows", x.PerSec, direct))
		}
	}
	for _, l := range r.Issue {
		add(fmt.Sprintf("IssueToken c=%d tokens/s", l.Concurrency), l.PerSec, 0.5*l.RawPerSec/r.SigsPerIssue, true,
			fmt.Sprintf("≥ 0.5 × %.0f raw/s ÷ %.2f signatures per issuance", l.RawPerSec, r.SigsPerIssue))
	}
	for _, l := range r.Flow {
		add(fmt.Sprintf("flow c=%d flows/s", l.Concurrency), l.PerSec, 0.4*l.RawPerSec/r.SigsPerFlow, true,
			fmt.Sprintf("≥ 0.4 × %.0f raw/s ÷ %.2f signatures per flow", l.RawPerSec, r.SigsPerFlow))
	}
	for _, set := range []struct {
		name  string
		loads []Load
	}{{"IssueToken", r.Issue}, {"flow", r.Flow}} {
		for _, l := range set.loads {
			add(fmt.Sprintf("%s c=%d PKCS#11 signing CPU share", set.name, l.Concurrency), l.SignShare, 0.5, true,
				"share of the daemon's CPU profile inside C_Sign/C_SignInit")
			if l.Concurrency >= 32 {
				add(fmt.Sprintf("%s c=%d p99/p50", set.name, l.Concurrency), l.P99ms/l.P50ms, 3, false,
					fmt.Sprintf("p50 %.2f ms, p99 %.2f ms", l.P50ms, l.P99ms))
			}
		}
	}
	cores := float64(r.Machine.CPUs)
	add("offline verification entries/s", r.Verify.PerSec, 0.8*cores*r.GoECDSAVerify/r.Verify.VerifiesEntry, true,
		fmt.Sprintf("≥ 0.8 × %.0f cores × %.0f verify/s ÷ %.2f verifications per entry", cores, r.GoECDSAVerify, r.Verify.VerifiesEntry))
	add("SDK token verifications/s", r.SDKVerify, 0.8*r.GoECDSAVerify, true,
		fmt.Sprintf("≥ 0.8 × %.0f pure-Go ECDSA verify/s on one core", r.GoECDSAVerify))
	add("daemon peak RSS MiB", r.PeakRSSMiB, 150, false, "VmHWM through the flow benchmark")
	return out
}

func printTable(r *Results) {
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Printf("\nmachine: %d × %s, %s, %s\n\n", r.Machine.CPUs, r.Machine.Model, r.Machine.GoVer, r.Machine.SoftHS)
	fmt.Fprintln(w, "raw HSM signing\tconcurrency\thsm package/s\tcrypto11 direct/s\tratio\t")
	for _, x := range r.RawECDSA {
		direct := rawAt(r.Crypto11, x.Concurrency)
		ratio := 0.0
		if direct > 0 {
			ratio = x.PerSec / direct
		}
		fmt.Fprintf(w, "ECDSA P-256\t%d\t%.0f\t%.0f\t%.2f\t\n", x.Concurrency, x.PerSec, direct, ratio)
	}
	for _, x := range r.RawEd25519 {
		fmt.Fprintf(w, "Ed25519\t%d\t%.0f\t\t\t\n", x.Concurrency, x.PerSec)
	}
	w.Flush()
	fmt.Println()
	fmt.Fprintln(w, "over mTLS gRPC\tconcurrency\tper s\tp50 ms\tp99 ms\terrors\tsigning CPU share\t")
	for _, x := range r.Issue {
		fmt.Fprintf(w, "IssueToken\t%d\t%.0f\t%.2f\t%.2f\t%d\t%.0f%%\t\n", x.Concurrency, x.PerSec, x.P50ms, x.P99ms, x.Errors, 100*x.SignShare)
	}
	for _, x := range r.Flow {
		fmt.Fprintf(w, "whole flow\t%d\t%.0f\t%.2f\t%.2f\t%d\t%.0f%%\t\n", x.Concurrency, x.PerSec, x.P50ms, x.P99ms, x.Errors, 100*x.SignShare)
	}
	w.Flush()
	fmt.Println()
	fmt.Fprintln(w, "daemon CPU at c=32\tPKCS#11 sign\tSQLite\tTLS, net\tgRPC, HTTP/2\tencoding\tGo verify\tGC, alloc\tother\t")
	for _, set := range []struct {
		name  string
		loads []Load
	}{{"IssueToken", r.Issue}, {"whole flow", r.Flow}} {
		for _, l := range set.loads {
			if l.Concurrency != 32 || l.CPU == nil {
				continue
			}
			fmt.Fprintf(w, "%s\t", set.name)
			for _, k := range []string{"pkcs11_sign", "sqlite", "tls_network", "grpc_http2", "encoding", "go_crypto_verify", "gc_alloc", "other"} {
				fmt.Fprintf(w, "%.0f%%\t", 100*l.CPU[k])
			}
			fmt.Fprintln(w)
		}
	}
	w.Flush()
	fmt.Println()
	types := make([]string, 0, len(r.Verify.Mix))
	for t, n := range r.Verify.Mix {
		types = append(types, fmt.Sprintf("%s %d", t, n))
	}
	slices.Sort(types)
	fmt.Fprintf(w, "HSM signatures per issuance\t%.2f\t\n", r.SigsPerIssue)
	fmt.Fprintf(w, "HSM signatures per flow\t%.2f\t\n", r.SigsPerFlow)
	fmt.Fprintf(w, "audit entries appended/s (c=32)\t%.0f\t\n", r.AppendPerSec)
	fmt.Fprintf(w, "offline verification, %d entries, entries/s\t%.0f\t\n", r.Verify.Entries, r.Verify.PerSec)
	fmt.Fprintf(w, "  signature verifications per entry\t%.2f\t\n", r.Verify.VerifiesEntry)
	fmt.Fprintf(w, "inclusion proof at %d, p50 / p99 µs\t%.0f / %.0f\t\n", r.Verify.Entries, r.ProofP50us, r.ProofP99us)
	fmt.Fprintf(w, "pure-Go ECDSA P-256 verify/s, one core\t%.0f\t\n", r.GoECDSAVerify)
	fmt.Fprintf(w, "SDK token verifications/s, one goroutine\t%.0f\t\n", r.SDKVerify)
	fmt.Fprintf(w, "daemon peak RSS MiB\t%.1f\t\n", r.PeakRSSMiB)
	w.Flush()
	fmt.Printf("  export: %s\n\n", strings.Join(types, ", "))
	fmt.Fprintln(w, "target\tvalue\tneeded\tmet\t")
	for _, c := range r.Targets {
		met := "yes"
		if !c.Met {
			met = "NO"
		}
		fmt.Fprintf(w, "%s\t%.2f\t%.2f\t%s\t\n", c.Name, c.Value, c.Target, met)
	}
	w.Flush()
}
