package test

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"
	"runtime"
	"strings"
	"testing"
)

// TestVersion runs `breakglassd version` as a packager or an operator would:
// the text and the JSON describe the same build, the JSON keeps its field
// names, and --version prints what `version` prints.
func TestVersion(t *testing.T) {
	env := os.Environ()
	text := must(t, env, bin.breakglassd, "version")
	out := must(t, env, bin.breakglassd, "version", "-o", "json")

	// Every documented field is present, whatever the build knew.
	var fields map[string]json.RawMessage
	if err := json.Unmarshal([]byte(out), &fields); err != nil {
		t.Fatalf("version -o json: %v\n%s", err, out)
	}
	for _, k := range []string{"module", "path", "version", "vcs_revision", "vcs_time", "vcs_modified", "go_version", "goos", "goarch", "cgo_enabled"} {
		if _, ok := fields[k]; !ok {
			t.Errorf("version -o json has no %q field:\n%s", k, out)
		}
	}

	var info struct {
		Module      string `json:"module"`
		Path        string `json:"path"`
		Version     string `json:"version"`
		VCSRevision string `json:"vcs_revision"`
		VCSTime     string `json:"vcs_time"`
		VCSModified *bool  `json:"vcs_modified"`
		GoVersion   string `json:"go_version"`
		GOOS        string `json:"goos"`
		GOARCH      string `json:"goarch"`
		CGOEnabled  *bool  `json:"cgo_enabled"`
	}
	dec := json.NewDecoder(bytes.NewReader([]byte(out)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&info); err != nil {
		t.Fatalf("version -o json: %v\n%s", err, out)
	}
	const module = "github.com/bgbroker/breakglass"
	if info.Module != module {
		t.Errorf("module = %q, want %q", info.Module, module)
	}
	if info.Path != module+"/cmd/breakglassd" {
		t.Errorf("path = %q, want %q", info.Path, module+"/cmd/breakglassd")
	}
	// The binaries were built by the toolchain that built this test.
	if info.GoVersion != runtime.Version() {
		t.Errorf("go_version = %q, want %q", info.GoVersion, runtime.Version())
	}
	if info.GOOS != runtime.GOOS || info.GOARCH != runtime.GOARCH {
		t.Errorf("platform = %s/%s, want %s/%s", info.GOOS, info.GOARCH, runtime.GOOS, runtime.GOARCH)
	}
	if info.CGOEnabled == nil || !*info.CGOEnabled {
		t.Errorf("cgo_enabled = %v, want true (the daemon loads PKCS#11 modules through cgo)", info.CGOEnabled)
	}
	// "(devel)" without a VCS stamp (-buildvcs=false); a pseudo-version
	// from the work tree otherwise.
	if info.Version == "" {
		t.Error("version is empty")
	}
	if info.VCSRevision != "" {
		if _, err := hex.DecodeString(info.VCSRevision); err != nil || len(info.VCSRevision) < 40 {
			t.Errorf("vcs_revision = %q, want a full commit hash", info.VCSRevision)
		}
		if info.VCSTime == "" || info.VCSModified == nil {
			t.Errorf("vcs_revision without vcs_time or vcs_modified:\n%s", out)
		}
	}

	for _, want := range []string{info.Version, module, info.GoVersion, info.GOOS + "/" + info.GOARCH} {
		if !strings.Contains(text, want) {
			t.Errorf("version text does not name %q:\n%s", want, text)
		}
	}
	if got := must(t, env, bin.breakglassd, "--version"); got != text {
		t.Errorf("--version differs from version:\n%s\nversus\n%s", got, text)
	}
	if got := must(t, env, bin.breakglassd, "version", "--output", "json"); got != out {
		t.Errorf("--output json differs from -o json:\n%s\nversus\n%s", got, out)
	}
	if r := runCmd(t, env, "", bin.breakglassd, "version", "-o", "yaml"); r.code == 0 || !strings.Contains(r.stderr, "want text or json") {
		t.Errorf("version -o yaml: exit %d, stderr %q; want a refusal", r.code, r.stderr)
	}
}
