// Package pgtest runs a throwaway PostgreSQL server for tests: initdb and
// pg_ctl into a temporary directory, on a free loopback port. As root (CI)
// the server runs as the postgres user, since PostgreSQL refuses root.
// fsync is off: the server is a test fixture, and the tests that restart
// it stop it cleanly or kill only the broker.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"go.uber.org/goleak"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Server is a running test server.
type Server struct {
	dir, bin string
	port     int
	owner    *user.User // nil when the tests run unprivileged
	n        atomic.Int64
}

// ErrNoServer means no PostgreSQL server binaries were found.
var ErrNoServer = errors.New("pgtest: no PostgreSQL server (initdb, pg_ctl) found; install the postgresql package")

// binDir finds initdb and pg_ctl: Debian keeps them off the PATH.
func binDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "pg_ctl")); err == nil {
			return d, nil
		}
	}
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			return filepath.Dir(r), nil
		}
		return filepath.Dir(p), nil
	}
	return "", ErrNoServer
}

func version(dir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
	return v
}

// Start initializes and starts a server.
func Start() (*Server, error) {
	bin, err := binDir()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "breakglass-pg-")
	if err != nil {
		return nil, err
	}
	s := &Server{dir: dir, bin: bin}
	if os.Geteuid() == 0 {
		if s.owner, err = user.Lookup("postgres"); err != nil {
			if s.owner, err = user.Lookup("nobody"); err != nil {
				return nil, fmt.Errorf("pgtest: running as root and no postgres or nobody user to run the server as")
			}
		}
		uid, _ := strconv.Atoi(s.owner.Uid)
		gid, _ := strconv.Atoi(s.owner.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, err
		}
	}
	if out, err := s.run("initdb", "-D", s.data(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"); err != nil {
		s.cleanup()
		return nil, fmt.Errorf("pgtest: initdb: %w\n%s", err, out)
	}
	if s.port, err = freePort(); err != nil {
		s.cleanup()
		return nil, err
	}
	if err := s.Start(); err != nil {
		s.cleanup()
		return nil, err
	}
	return s, nil
}

func (s *Server) data() string { return filepath.Join(s.dir, "data") }

// run runs a server program, as the owner when the tests run as root.
func (s *Server) run(prog string, args ...string) ([]byte, error) {
	path := filepath.Join(s.bin, prog)
	var cmd *exec.Cmd
	if s.owner != nil {
		cmd = exec.Command("runuser", append([]string{"-u", s.owner.Username, "--", path}, args...)...)
	} else {
		cmd = exec.Command(path, args...)
	}
	cmd.Dir = s.dir
	// Keep the server out of the test's process group, so a ^C to the
	// tests does not take it down before the cleanup stops it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd.CombinedOutput()
}

// Start starts the server (again, after Stop).
func (s *Server) Start() error {
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=300", s.port, s.dir)
	if out, err := s.run("pg_ctl", "start", "-w", "-t", "60", "-D", s.data(), "-l", filepath.Join(s.dir, "server.log"), "-o", opts); err != nil {
		log, _ := os.ReadFile(filepath.Join(s.dir, "server.log"))
		return fmt.Errorf("pgtest: pg_ctl start: %w\n%s\n%s", err, out, log)
	}
	return nil
}

// Stop stops the server, fast: open connections are closed.
func (s *Server) Stop() error {
	if out, err := s.run("pg_ctl", "stop", "-w", "-m", "fast", "-D", s.data()); err != nil {
		return fmt.Errorf("pgtest: pg_ctl stop: %w\n%s", err, out)
	}
	return nil
}

// Close stops the server and removes its directory.
func (s *Server) Close() {
	_ = s.Stop()
	s.cleanup()
}

func (s *Server) cleanup() { _ = os.RemoveAll(s.dir) }

// DSN is the connection string of database db.
func (s *Server) DSN(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.port, db)
}

// NewDatabase creates an empty database and returns its DSN.
func (s *Server) NewDatabase(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("t%d_%d", os.Getpid(), s.n.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return s.DSN(name)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Main runs a test binary's tests with a server in *srv. Without server
// binaries the tests that need one skip, except under CI (CI set), where a
// missing server is a failure.
func Main(m *testing.M, srv **Server) {
	s, err := Start()
	switch {
	case err == nil:
		*srv = s
	case errors.Is(err, ErrNoServer) && os.Getenv("CI") == "":
		fmt.Fprintln(os.Stderr, "pgtest:", err, "(PostgreSQL tests skip)")
	default:
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	if s != nil {
		s.Close()
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines leaked:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// Require returns the server or skips the test when there is none.
func Require(t testing.TB, s *Server) *Server {
	t.Helper()
	if s == nil {
		t.Skip("no PostgreSQL server: " + ErrNoServer.Error())
	}
	return s
}

// DataDir is the server's data directory (postgresql.conf, pg_hba.conf),
// for tests that configure the server as a target rather than a store.
func (s *Server) DataDir() string { return s.data() }

// SocketDir is where the server's Unix socket is.
func (s *Server) SocketDir() string { return s.dir }

// Port is the server's TCP port on 127.0.0.1.
func (s *Server) Port() int { return s.port }

// Own gives a file in the data directory to the user the server runs as
// (the server refuses a key file it does not own).
func (s *Server) Own(path string) error {
	if s.owner == nil {
		return nil
	}
	uid, _ := strconv.Atoi(s.owner.Uid)
	gid, _ := strconv.Atoi(s.owner.Gid)
	return os.Chown(path, uid, gid)
}
