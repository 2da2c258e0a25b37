package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

// Fallbacks for builds that carry no VCS stamp, such as the container
// build, whose context leaves out .git:
//
//	go build -ldflags "-X main.version=v1.2.3 -X main.vcsRevision=SHA -X main.vcsTime=RFC3339 -X main.vcsModified=false"
//
// What the Go toolchain stamped itself always wins over these.
var (
	version     string
	vcsRevision string
	vcsTime     string
	vcsModified string
)

// buildInfo is what `breakglassd version -o json` prints. The field names
// are stable and every field is always present: an unknown string is "" and
// an unknown flag is null.
type buildInfo struct {
	// Module is the main module's path.
	Module string `json:"module"`
	// Path is the main package's import path.
	Path string `json:"path"`
	// Version is the main module's version: a tag, a pseudo-version
	// (with +dirty for a modified tree), or "(devel)" when nothing said.
	Version     string `json:"version"`
	VCSRevision string `json:"vcs_revision"`
	VCSTime     string `json:"vcs_time"`
	VCSModified *bool  `json:"vcs_modified"`
	GoVersion   string `json:"go_version"`
	GOOS        string `json:"goos"`
	GOARCH      string `json:"goarch"`
	CGOEnabled  *bool  `json:"cgo_enabled"`
}

func readBuildInfo() buildInfo {
	info := buildInfo{GoVersion: runtime.Version(), GOOS: runtime.GOOS, GOARCH: runtime.GOARCH}
	if bi, ok := debug.ReadBuildInfo(); ok {
		info.Module, info.Path, info.Version = bi.Main.Path, bi.Path, bi.Main.Version
		if bi.GoVersion != "" {
			info.GoVersion = bi.GoVersion
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				info.VCSRevision = s.Value
			case "vcs.time":
				info.VCSTime = s.Value
			case "vcs.modified":
				info.VCSModified = parseBool(s.Value)
			case "CGO_ENABLED":
				info.CGOEnabled = parseBool(s.Value)
			case "GOOS":
				info.GOOS = s.Value
			case "GOARCH":
				info.GOARCH = s.Value
			}
		}
	}
	if (info.Version == "" || info.Version == "(devel)") && version != "" {
		info.Version = version
	}
	if info.Version == "" {
		info.Version = "(devel)"
	}
	if info.VCSRevision == "" {
		info.VCSRevision = vcsRevision
	}
	if info.VCSTime == "" {
		info.VCSTime = vcsTime
	}
	if info.VCSModified == nil {
		info.VCSModified = parseBool(vcsModified)
	}
	return info
}

func parseBool(s string) *bool {
	b, err := strconv.ParseBool(s)
	if err != nil {
		return nil
	}
	return &b
}

// text is the human-readable form, printed by `breakglassd version` and
// `breakglassd --version` alike.
func (b buildInfo) text() string {
	unknown := func(s string) string {
		if s == "" {
			return "unknown"
		}
		return s
	}
	flag := func(p *bool, yes, no string) string {
		switch {
		case p == nil:
			return "unknown"
		case *p:
			return yes
		default:
			return no
		}
	}
	var sb strings.Builder
	tw := tabwriter.NewWriter(&sb, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "breakglassd\t%s\n", b.Version)
	fmt.Fprintf(tw, "module\t%s\n", unknown(b.Module))
	fmt.Fprintf(tw, "revision\t%s\n", unknown(b.VCSRevision))
	fmt.Fprintf(tw, "revision time\t%s\n", unknown(b.VCSTime))
	fmt.Fprintf(tw, "modified\t%s\n", flag(b.VCSModified, "yes", "no"))
	fmt.Fprintf(tw, "go\t%s\n", b.GoVersion)
	fmt.Fprintf(tw, "platform\t%s/%s\n", b.GOOS, b.GOARCH)
	fmt.Fprintf(tw, "cgo\t%s\n", flag(b.CGOEnabled, "enabled", "disabled"))
	_ = tw.Flush()
	return sb.String()
}

// addVersion registers `version` and `--version` on root.
func addVersion(root *cobra.Command, stdout io.Writer) {
	info := readBuildInfo()
	root.Version = info.Version
	// The template is the text itself, with any "{{" made literal.
	root.SetVersionTemplate(strings.ReplaceAll(info.text(), "{{", `{{"{{"}}`))
	var output string
	cmd := &cobra.Command{
		Use:   "version [-o text|json]",
		Short: "Print the version, VCS revision, Go version and platform of this build",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			switch output {
			case "", "text", "table":
				_, err := io.WriteString(stdout, info.text())
				return err
			case "json":
				return writeJSON(stdout, info)
			default:
				return fmt.Errorf("-o %q: want text or json", output)
			}
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	root.AddCommand(cmd)
}
