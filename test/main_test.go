// Package test holds end-to-end tests: they build breakglassd and bgctl,
// create real SoftHSM2 tokens with softhsm2-util, and drive the binaries the
// way an operator, a requester or an outside tool would.
package test

import (
	"errors"
	"go.uber.org/goleak"

	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"github.com/bgbroker/breakglass/server/store/postgres/pgtest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bgbroker/breakglass/hsm"
)

// bin holds the paths of the binaries built for this test run.
var bin struct {
	dir, breakglassd, bgctl string
	// faultModule is the PKCS#11 pass-through of pkcs11fault/fault.c.
	faultModule string
}

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	if _, err := (hsm.Config{}).ResolveModule(); err != nil {
		if os.Getenv("CI") != "" {
			fmt.Fprintln(os.Stderr, "SoftHSM2 is required in CI:", err)
			return 1
		}
		fmt.Fprintln(os.Stderr, "skipping end-to-end tests: SoftHSM2 is not installed:", err)
		return 0
	}
	dir, err := os.MkdirTemp("", "breakglass-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	bin.dir = dir
	bin.breakglassd = filepath.Join(dir, "breakglassd")
	bin.bgctl = filepath.Join(dir, "bgctl")
	// make cover builds them with coverage counters, which they write to
	// $GOCOVERDIR when they exit (go test sets GOCOVERDIR for the test
	// binary itself, so the directory comes under another name).
	args := append([]string{"build"}, strings.Fields(os.Getenv("BREAKGLASS_E2E_BUILDFLAGS"))...)
	if d := os.Getenv("BREAKGLASS_E2E_COVERDIR"); d != "" {
		if err := os.Setenv("GOCOVERDIR", d); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	build := exec.Command("go", append(args, "-o", dir, "../cmd/breakglassd", "../cmd/bgctl")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building binaries:", err)
		return 1
	}
	// The PKCS#11 fault module, over the real SoftHSM2.
	inc, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/miekg/pkcs11").Output()
	if err != nil {
		fmt.Fprintln(os.Stderr, "finding pkcs11.h:", err)
		return 1
	}
	bin.faultModule = filepath.Join(dir, "libpkcs11fault.so")
	cc := exec.Command("cc", "-Wall", "-Werror", "-shared", "-fPIC", "-I", strings.TrimSpace(string(inc)), "-o", bin.faultModule, "pkcs11fault/fault.c", "-ldl")
	cc.Stdout, cc.Stderr = os.Stderr, os.Stderr
	if err := cc.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building the PKCS#11 fault module:", err)
		return 1
	}
	s, err := pgtest.Start()
	switch {
	case err == nil:
		pg = s
		defer s.Close()
	case errors.Is(err, pgtest.ErrNoServer) && os.Getenv("CI") == "":
		fmt.Fprintln(os.Stderr, "PostgreSQL tests skip:", err)
	default:
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := m.Run()
	if code == 0 {
		// The in-process brokers of these tests must leave nothing running.
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines leaked:", err)
			return 1
		}
	}
	return code
}

// pg is the throwaway PostgreSQL server of the replica tests (nil when
// there is none outside CI).
var pg *pgtest.Server

// softToken is a SoftHSM2 token in a directory of its own, created with
// softhsm2-util as an operator would.
type softToken struct {
	dir, conf, label, pin, pinFile string
}

func newSoftToken(t *testing.T) *softToken {
	t.Helper()
	dir := t.TempDir()
	conf, err := hsm.WriteSoftHSMConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	tok := &softToken{dir: dir, conf: conf, label: "e2e-" + randHex(4), pin: randHex(8)}
	cmd := exec.Command("softhsm2-util", "--init-token", "--free", "--label", tok.label, "--pin", tok.pin, "--so-pin", randHex(8))
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+conf)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("softhsm2-util: %v\n%s", err, out)
	}
	tok.pinFile = filepath.Join(dir, "pin")
	if err := os.WriteFile(tok.pinFile, []byte(tok.pin), 0o600); err != nil {
		t.Fatal(err)
	}
	return tok
}

// env is the environment for processes using this token.
func (tok *softToken) env(extra ...string) []string {
	return append(append(os.Environ(), "SOFTHSM2_CONF="+tok.conf, "BREAKGLASS_HSM_PIN="+tok.pin), extra...)
}

type result struct {
	stdout, stderr string
	code           int
}

// runCmd runs a binary and returns its output and exit code.
func runCmd(t *testing.T, env []string, stdin string, name string, args ...string) result {
	t.Helper()
	r, err := runCmdErr(env, stdin, name, args...)
	if err != nil {
		t.Fatalf("%s %v: %v", name, args, err)
	}
	return r
}

// runCmdNoFatal is runCmd for goroutines other than the test's.
func runCmdNoFatal(env []string, name string, args ...string) result {
	r, err := runCmdErr(env, "", name, args...)
	if err != nil {
		r.stderr += err.Error()
		r.code = -1
	}
	return r
}

func runCmdErr(env []string, stdin string, name string, args ...string) (result, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	err := cmd.Run()
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			return result{}, err
		}
		code = ee.ExitCode()
	}
	return result{out.String(), errb.String(), code}, nil
}

// must runs a command that has to succeed.
func must(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	r := runCmd(t, env, "", name, args...)
	if r.code != 0 {
		t.Fatalf("%s %s: exit %d\nstdout: %s\nstderr: %s", filepath.Base(name), strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// needTool skips when an outside tool is missing, except in CI where its
// absence is a broken setup.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is required in CI", name)
		}
		t.Skipf("%s not installed", name)
	}
	return p
}

func decodeSegment(s string) ([]byte, error) { return base64.RawURLEncoding.DecodeString(s) }
