package main

import (
	"fmt"
	"math"
	"os"
	"strings"
	"text/tabwriter"
)

// scaleTargets judges the largest size against the smallest, as the
// project's targets say: every figure within 1.5× (tail latencies within
// 2×), idle CPU under 2% of one core, start under a second, the verifier
// under 256 MiB.
func scaleTargets(r *ScaleResults) []Check {
	if len(r.Sizes) < 2 {
		return nil
	}
	first, last := r.Sizes[0], r.Sizes[len(r.Sizes)-1]
	var out []Check
	for _, f := range r.Figures {
		a, b := first.Values[f.ID], last.Values[f.ID]
		if a <= 0 || b <= 0 {
			continue
		}
		detail := fmt.Sprintf("%s at %d entries against %s at %d", num(b), last.Entries, num(a), first.Entries)
		switch f.Kind {
		case "lat":
			out = append(out, Check{Name: f.Label + " ratio", Value: b / a, Target: 1.5, Met: b/a <= 1.5, Detail: detail})
		case "p99":
			out = append(out, Check{Name: f.Label + " ratio", Value: b / a, Target: 2, Met: b/a <= 2, Detail: detail})
		case "rate":
			out = append(out, Check{Name: f.Label + " ratio", Value: b / a, Target: 1 / 1.5, Met: b/a >= 1/1.5, Detail: detail})
		}
	}
	v := last.Values
	out = append(out,
		Check{Name: "idle daemon CPU, cores", Value: v["idle_cpu_cores"], Target: 0.02, Met: v["idle_cpu_cores"] < 0.02, Detail: "under 2% of one core"},
		Check{Name: "start to SERVING, clean, s", Value: v["start_clean_s"], Target: 1, Met: v["start_clean_s"] < 1},
		Check{Name: "start to SERVING after kill -9, s", Value: v["start_kill_s"], Target: 1, Met: v["start_kill_s"] < 1},
		Check{Name: "bgctl audit verify peak RSS, MiB", Value: v["verify_rss_mib"], Target: 256, Met: v["verify_rss_mib"] < 256})
	return out
}

func num(x float64) string {
	switch {
	case x == 0:
		return "0"
	case math.Abs(x) >= 100:
		return fmt.Sprintf("%.0f", x)
	case math.Abs(x) >= 10:
		return fmt.Sprintf("%.1f", x)
	case math.Abs(x) >= 0.1:
		return fmt.Sprintf("%.2f", x)
	}
	return fmt.Sprintf("%.3f", x)
}

func printScale(r *ScaleResults) {
	fmt.Printf("\nmachine: %d × %s, %s, %s\n\n", r.Machine.CPUs, r.Machine.Model, r.Machine.GoVer, r.Machine.SoftHS)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	head := []string{"audit entries"}
	for _, s := range r.Sizes {
		head = append(head, fmt.Sprintf("%d", s.Entries))
	}
	if len(r.Sizes) > 1 {
		head = append(head, "ratio")
	}
	fmt.Fprintln(w, strings.Join(head, "\t")+"\t")
	for _, f := range r.Figures {
		row := []string{fmt.Sprintf("%s (%s)", f.Label, f.Unit)}
		for _, s := range r.Sizes {
			row = append(row, num(s.Values[f.ID]))
		}
		if len(r.Sizes) > 1 {
			a, b := r.Sizes[0].Values[f.ID], r.Sizes[len(r.Sizes)-1].Values[f.ID]
			ratio := "-"
			if a > 0 {
				ratio = fmt.Sprintf("× %.2f", b/a)
			}
			row = append(row, ratio)
		}
		fmt.Fprintln(w, strings.Join(row, "\t")+"\t")
	}
	w.Flush()
	if len(r.Targets) == 0 {
		return
	}
	fmt.Println()
	fmt.Fprintln(w, "target\tvalue\tneeded\tmet\t")
	for _, c := range r.Targets {
		met := "yes"
		if !c.Met {
			met = "NO"
		}
		fmt.Fprintf(w, "%s\t%.3f\t%.3f\t%s\t\n", c.Name, c.Value, c.Target, met)
	}
	w.Flush()
}
