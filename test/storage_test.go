package test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
)

// smallDisk mounts a tmpfs of size bytes for the test (root only).
func smallDisk(t *testing.T, size int) string {
	t.Helper()
	dir := t.TempDir()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("the disk-full test mounts a tmpfs and needs root, which CI has")
		}
		t.Skip("mounting a small tmpfs needs root")
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d,mode=0700", size), "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	return dir
}

// fill writes a file until the filesystem is full.
func fill(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 4096)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			return path
		}
	}
}

// The database on a full disk: calls fail closed with a message an
// operator can act on, nothing is half-written, and once space returns the
// broker goes on without a restart.
func TestDiskFull(t *testing.T) {
	disk := smallDisk(t, 8<<20)
	dir := newServeDir(t, func(cfg []byte) []byte {
		return bytes.Replace(cfg, []byte("    path: broker.db\n"), fmt.Appendf(nil, "    path: %s\n", filepath.Join(disk, "broker.db")), 1)
	})
	d := &devBroker{t: t, dir: dir, serve: true}
	d.start()
	t.Cleanup(d.stop)
	ctx := context.Background()
	alice := d.client("alice")
	g, err := alice.CreateRequest(ctx, &bgv1.CreateRequestRequest{Account: "prod-db", Justification: "before the disk filled"})
	if err != nil {
		t.Fatal(err)
	}
	for _, who := range []string{"bob", "erin"} {
		if _, err := d.client(who).Review(ctx, g.GetRequest(), bgv1.ReviewDecision_REVIEW_DECISION_APPROVE, ""); err != nil {
			t.Fatal(err)
		}
	}
	info, _ := d.client("dave").GetLogInfo(ctx, &bgv1.GetLogInfoRequest{})

	filler := fill(t, disk)
	// Writes fail until SQLite has no free page left to fill; then every
	// one fails, and says why.
	var err2 error
	for i := 0; i < 500 && err2 == nil; i++ {
		_, err2 = alice.CreateRequest(ctx, &bgv1.CreateRequestRequest{Account: "prod-db", Justification: strings.Repeat("disk full ", 150)})
	}
	if status.Code(err2) != codes.Unavailable || !strings.Contains(err2.Error(), "no disk space") {
		t.Fatalf("create on a full disk: %v", err2)
	}
	_, err = alice.IssueToken(ctx, &bgv1.IssueTokenRequest{RequestId: g.GetRequest().GetId(), Audience: "db.prod.example"})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "no disk space") {
		t.Fatalf("issue on a full disk: %v", err)
	}
	// Reads still work.
	if _, err := alice.GetRequest(ctx, &bgv1.GetRequestRequest{Id: g.GetRequest().GetId()}); err != nil {
		t.Fatalf("read on a full disk: %v", err)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.IssueToken(ctx, &bgv1.IssueTokenRequest{RequestId: g.GetRequest().GetId(), Audience: "db.prod.example"}); err != nil {
		t.Fatalf("issue once space returned: %v", err)
	}
	if _, err := alice.CreateRequest(ctx, &bgv1.CreateRequestRequest{Account: "prod-db", Justification: "space again"}); err != nil {
		t.Fatalf("create once space returned: %v", err)
	}
	after, _ := d.client("dave").GetLogInfo(ctx, &bgv1.GetLogInfoRequest{})
	t.Logf("log: %d entries before the disk filled, %d after it was freed", info.GetSize(), after.GetSize())
	if r := d.exportAudit(t).verify(t); r.code != 0 {
		t.Fatalf("the log does not verify: %+v", r)
	}
}

// A truncated or corrupted database is refused at start with a message
// that says what to do, never served.
func TestDamagedDatabaseRefused(t *testing.T) {
	d := startDev(t)
	d.createRequest("alice")
	d.stop()
	db := d.state("broker.db")
	orig, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	// The full check an operator runs (start-up leaves it to the background).
	dbCheck := func() (string, error) {
		cmd := exec.Command(bin.breakglassd, "db", "check", "--config", d.state("config.yaml"))
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := dbCheck(); err != nil || !strings.Contains(out, ": ok") {
		t.Fatalf("db check on a sound database: %v\n%s", err, out)
	}
	for _, tc := range []struct {
		name, want string
		damage     func([]byte) []byte
	}{
		{"truncated", "truncated or not a database", func(b []byte) []byte { return b[:100] }},
		{"not a database", "cannot be read as a database", func(b []byte) []byte { return bytes.Repeat([]byte("not sqlite "), 2000) }},
		{"corrupted pages", "restore it from a backup", func(b []byte) []byte {
			c := append([]byte(nil), b...)
			for i := 4096; i < len(c); i += 7 {
				c[i] ^= 0x5a
			}
			return c
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(db, tc.damage(orig), 0o600); err != nil {
				t.Fatal(err)
			}
			_ = os.Remove(db + "-wal")
			_ = os.Remove(db + "-shm")
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin.breakglassd, "serve", "--config", d.state("config.yaml"))
			cmd.Env = append(os.Environ(), "SOFTHSM2_CONF=")
			out, err := cmd.CombinedOutput()
			if err == nil || ctx.Err() != nil || !strings.Contains(string(out), tc.want) {
				t.Fatalf("serve on a %s database: %v\n%s", tc.name, err, out)
			}
			if out, err := dbCheck(); err == nil || !strings.Contains(out, "restore it from a backup") {
				t.Fatalf("db check on a %s database: %v\n%s", tc.name, err, out)
			}
		})
	}
}
