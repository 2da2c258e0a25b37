package test

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bgbroker/breakglass/client"
	"github.com/bgbroker/breakglass/server/daemon"
	"github.com/bgbroker/breakglass/server/devmode"
)

// devBroker is `breakglassd dev` running as a separate process.
type devBroker struct {
	t   *testing.T
	dir string
	// extra are more flags for every start.
	extra []string
	// serve runs `breakglassd serve` on state/config.yaml instead of dev
	// mode (a replica on a shared database).
	serve bool
	hc    *http.Client
	ready daemon.Ready
	cmd   *exec.Cmd
	logs  *logBuffer
	// out is what the daemon printed on its standard output.
	out  *logBuffer
	done chan error
}

// logBuffer collects the daemon's stderr while the test reads it.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) add(s string) {
	l.mu.Lock()
	l.b.WriteString(s)
	l.mu.Unlock()
}

// Write lets the buffer collect a stream.
func (l *logBuffer) Write(b []byte) (int, error) {
	l.add(string(b))
	return len(b), nil
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func startDev(t *testing.T, extra ...string) *devBroker {
	t.Helper()
	d := &devBroker{t: t, dir: t.TempDir(), extra: extra}
	d.start()
	t.Cleanup(d.stop)
	return d
}

func (d *devBroker) start() {
	d.t.Helper()
	readyFile := filepath.Join(d.dir, "ready.json")
	_ = os.Remove(readyFile)
	args := append([]string{"dev", "--dir", filepath.Join(d.dir, "state"), "--addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--ready-file", readyFile}, d.extra...)
	if d.serve {
		args = append([]string{"serve", "--config", d.state("config.yaml"), "--ready-file", readyFile}, d.extra...)
	}
	d.cmd = exec.Command(bin.breakglassd, args...)
	// Dev mode sets SOFTHSM2_CONF itself; make sure nothing else leaks in.
	d.cmd.Env = append(os.Environ(), "SOFTHSM2_CONF=")
	d.logs = &logBuffer{}
	stderr, _ := d.cmd.StderrPipe()
	d.out = &logBuffer{}
	d.cmd.Stdout = d.out
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	logs := d.logs
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			logs.add(sc.Text() + "\n")
		}
	}()
	d.done = make(chan error, 1)
	go func(c *exec.Cmd) { d.done <- c.Wait() }(d.cmd)
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(readyFile); err == nil && len(b) > 0 && json.Unmarshal(b, &d.ready) == nil {
			return
		}
		select {
		case err := <-d.done:
			d.t.Fatalf("breakglassd dev exited: %v\n%s", err, d.logs)
		case <-time.After(50 * time.Millisecond):
		}
	}
	d.t.Fatalf("breakglassd dev did not become ready\n%s", d.logs)
}

// stop ends the daemon with SIGTERM, as an operator would.
func (d *devBroker) stop() {
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.done:
		if err != nil {
			d.t.Errorf("breakglassd did not exit cleanly on SIGTERM: %v\n%s", err, d.logs)
		}
	case <-time.After(15 * time.Second):
		_ = d.cmd.Process.Kill()
		_ = d.wait() // killed: the status is the signal's
	}
	d.cmd = nil
}

// wait returns the daemon's exit status once it has exited.
func (d *devBroker) wait() error { return <-d.done }

// kill ends the daemon with SIGKILL, as a crash would.
func (d *devBroker) kill() {
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	_ = d.cmd.Process.Signal(syscall.SIGKILL)
	_ = d.wait() // killed: the status is the signal's
	d.cmd = nil
}

func (d *devBroker) restart() {
	d.stop()
	d.start()
}

func (d *devBroker) state(parts ...string) string {
	return filepath.Join(append([]string{d.dir, "state"}, parts...)...)
}

// env is the environment of a bgctl run as principal name.
func (d *devBroker) env(name string) []string {
	return append(os.Environ(),
		"BGCTL_ADDR="+d.ready.GRPC,
		"BGCTL_CA="+d.state("ca", "ca.crt"),
		"BGCTL_CERT="+d.state("identities", name+".crt"),
		"BGCTL_KEY="+d.state("identities", name+".key"),
	)
}

// client dials as principal name with the SDK.
func (d *devBroker) client(name string) *client.Client {
	d.t.Helper()
	c, err := client.Dial(client.Options{Addr: d.ready.GRPC, CAFile: d.state("ca", "ca.crt"),
		CertFile: d.state("identities", name+".crt"), KeyFile: d.state("identities", name+".key")})
	if err != nil {
		d.t.Fatal(err)
	}
	d.t.Cleanup(func() { _ = c.Close() })
	return c
}

// clientTLS dials with an arbitrary TLS configuration.
func (d *devBroker) clientTLS(tc *tls.Config) *client.Client {
	d.t.Helper()
	c, err := client.Dial(client.Options{Addr: d.ready.GRPC, TLS: tc})
	if err != nil {
		d.t.Fatal(err)
	}
	d.t.Cleanup(func() { _ = c.Close() })
	return c
}

func (d *devBroker) caPool() *x509.CertPool {
	d.t.Helper()
	b, err := os.ReadFile(d.state("ca", "ca.crt"))
	if err != nil {
		d.t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(b)
	return pool
}

// httpClient is one client per broker, so that polling /healthz or
// /metrics reuses one connection instead of leaving one open per call.
func (d *devBroker) httpClient() *http.Client {
	if d.hc == nil {
		d.hc = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: d.caPool()}}}
		d.t.Cleanup(d.hc.CloseIdleConnections)
	}
	return d.hc
}

// devCA loads the dev CA, to mint extra certificates for hostile cases.
func (d *devBroker) devCA() *devmode.CA {
	d.t.Helper()
	ca, err := devmode.LoadCA(d.state("ca", "ca.crt"), d.state("ca", "ca.key"))
	if err != nil {
		d.t.Fatal(err)
	}
	return ca
}

func (d *devBroker) bgctl(name string, args ...string) result {
	d.t.Helper()
	return runCmd(d.t, d.env(name), "", bin.bgctl, args...)
}

func (d *devBroker) mustBgctl(name string, args ...string) string {
	d.t.Helper()
	return must(d.t, d.env(name), bin.bgctl, args...)
}

// createRequest makes a request as name and returns its id.
func (d *devBroker) createRequest(name string) string {
	d.t.Helper()
	out := d.mustBgctl(name, "request", "--account", "prod-db", "--justification", "primary database is down (INC-7)", "--ttl", "30m", "-o", "json")
	var resp struct {
		Request struct{ ID string } `json:"request"`
	}
	if err := json.Unmarshal([]byte(out), &resp); err != nil || resp.Request.ID == "" {
		d.t.Fatalf("request output %q: %v", out, err)
	}
	return resp.Request.ID
}

// snapshot reads every request's state, reviews and issuances straight
// from the database (a second reader, not the API, so it neither counts
// against rate limits nor trusts the code under test); the hostile cases
// assert it does not move.
func (d *devBroker) snapshot() string {
	db, err := sql.Open("sqlite", "file:"+d.state("broker.db")+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		panic(err)
	}
	defer db.Close()
	var out string
	err = db.QueryRow(`SELECT COALESCE(group_concat(x, '|'), '') FROM (
		SELECT id || ' ' || state || ' ' || issued || ' ' || version ||
		       ' ' || (SELECT COUNT(*) FROM reviews WHERE request_id = requests.id) AS x
		FROM requests ORDER BY id)`).Scan(&out)
	if err != nil {
		panic(err)
	}
	return out
}

func codeOf(err error) codes.Code { return status.Code(err) }
