// Package witnesstest runs real C2SP tlog-witness witnesses for tests:
// litewitness from filippo.io/torchwood, each with its Ed25519 key in its
// own ssh-agent and the log registered with witnessctl, on loopback.
// scripts/ensure-deps.sh installs both tools into the project's .bin.
// Under CI a missing tool fails the test; elsewhere it skips.
package witnesstest

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Witness is a running (or stopped) litewitness.
type Witness struct {
	t *testing.T
	// Name is the witness's name (its key name in cosignature lines).
	Name string
	// URL is its submission prefix.
	URL string
	// VKey is its cosignature verifier key, as litewitness logs it.
	VKey string

	dir, db, sock, fingerprint, addr, bin string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	logs *strings.Builder
}

// Tool finds a tool the witnesses need: on PATH or in the repository's
// .bin. It fails the test under CI and skips it elsewhere when missing.
func Tool(t testing.TB, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	_, file, _, _ := runtime.Caller(0)
	p := filepath.Join(filepath.Dir(file), "..", "..", "..", ".bin", name)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is required in CI: run scripts/ensure-deps.sh test", name)
	}
	t.Skipf("%s is not installed: run scripts/ensure-deps.sh test", name)
	return ""
}

var vkeyRE = regexp.MustCompile(`vkey=(\S+)`)

// Start creates a witness named name that knows the log origin by its
// checkpoint verifier key logKey, and starts it.
func Start(t *testing.T, name, origin, logKey string) *Witness {
	t.Helper()
	bin := Tool(t, "litewitness")
	ctl := Tool(t, "witnessctl")
	for _, tool := range []string{"ssh-agent", "ssh-keygen", "ssh-add"} {
		Tool(t, tool)
	}
	// ssh-agent's socket path must fit in sun_path: keep it short.
	dir, err := os.MkdirTemp("", "wit")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	w := &Witness{t: t, Name: name, dir: dir, db: filepath.Join(dir, "w.db"), sock: filepath.Join(dir, "a.sock"), bin: bin}

	agent := exec.Command("ssh-agent", "-D", "-a", w.sock)
	agent.SysProcAttr = dieWithTest()
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = agent.Process.Kill(); _ = agent.Wait() })
	waitFor(t, "ssh-agent's socket", func() bool { _, err := os.Stat(w.sock); return err == nil })
	key := filepath.Join(dir, "key")
	run(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", key)
	cmd := exec.Command("ssh-add", key)
	cmd.Env = append(os.Environ(), "SSH_AUTH_SOCK="+w.sock)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ssh-add: %v: %s", err, out)
	}
	fp := strings.Fields(run(t, "ssh-keygen", "-l", "-E", "sha256", "-f", key+".pub"))
	if len(fp) < 2 || !strings.HasPrefix(fp[1], "SHA256:") {
		t.Fatalf("ssh-keygen -l printed %q", fp)
	}
	w.fingerprint = fp[1]
	run(t, ctl, "add-log", "-db", w.db, "-origin", origin)
	run(t, ctl, "add-key", "-db", w.db, "-origin", origin, "-key", logKey)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w.addr = l.Addr().String()
	_ = l.Close()
	w.URL = "http://" + w.addr
	w.Start()
	t.Cleanup(w.Stop)
	return w
}

// Start starts the witness again after Stop, on the same address with the
// same state, and returns once it answers.
func (w *Witness) Start() {
	w.t.Helper()
	w.mu.Lock()
	if w.cmd != nil {
		w.mu.Unlock()
		return
	}
	cmd := exec.Command(w.bin, "-name", w.Name, "-db", w.db, "-ssh-agent", w.sock, "-key", w.fingerprint, "-listen", w.addr)
	cmd.SysProcAttr = dieWithTest()
	stderr, err := cmd.StderrPipe()
	if err == nil {
		err = cmd.Start()
	}
	if err != nil {
		w.mu.Unlock()
		w.t.Fatal(err)
	}
	logs, done, vkey := &strings.Builder{}, make(chan struct{}), make(chan string, 1)
	w.cmd, w.done, w.logs = cmd, done, logs
	w.mu.Unlock()
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			w.mu.Lock()
			logs.WriteString(line + "\n")
			w.mu.Unlock()
			if m := vkeyRE.FindStringSubmatch(line); m != nil {
				select {
				case vkey <- m[1]:
				default:
				}
			}
		}
		_ = cmd.Wait()
		close(done)
	}()
	select {
	case k := <-vkey:
		if w.VKey != "" && w.VKey != k {
			w.t.Fatalf("witness %s came back with another key: %s", w.Name, k)
		}
		w.VKey = k
	case <-done:
		w.t.Fatalf("litewitness %s exited: %s", w.Name, w.Logs())
	case <-time.After(time.Minute):
		w.t.Fatalf("litewitness %s logged no verifier key", w.Name)
	}
	waitFor(w.t, "litewitness "+w.Name+" to listen", func() bool {
		resp, err := http.Get(w.URL + "/")
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return true
	})
}

// Stop stops the witness (its state stays).
func (w *Witness) Stop() {
	w.mu.Lock()
	cmd, done := w.cmd, w.done
	w.cmd = nil
	w.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// Logs is what the witness printed since it last started.
func (w *Witness) Logs() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.logs == nil {
		return ""
	}
	return w.logs.String()
}

// Size is the tree size the witness holds for origin, read from its
// database with witnessctl.
func (w *Witness) Size(origin string) string {
	w.t.Helper()
	out := run(w.t, Tool(w.t, "witnessctl"), "list-logs", "-db", w.db)
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, origin) {
			return l
		}
	}
	return ""
}

// dieWithTest kills a child when the test binary dies (a timeout panics
// past every cleanup), so no witness outlives its test.
func dieWithTest() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func waitFor(t testing.TB, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
