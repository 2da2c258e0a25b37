package test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/bgbroker/breakglass/server/store/postgres/pgtest"
)

// pgClientTool finds a PostgreSQL client program (pg_dump, pg_restore) the
// way pgtest finds the server's: Debian keeps the versioned ones off the
// PATH, and the newest is the one that can dump the test server. It skips
// when there is none, except in CI.
func pgClientTool(t *testing.T, name string) string {
	t.Helper()
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	version := func(dir string) int {
		v, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
		return v
	}
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, d := range dirs {
		if p := filepath.Join(d, name); fileExists(p) {
			return p
		}
	}
	return needTool(t, name)
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// pgLog summarizes the audit log held by the database at dsn, read
// straight from it: the number of entries, a digest of their leaf hashes
// and the number of checkpoints.
func pgLog(t *testing.T, dsn string) (entries int64, summary string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var digest string
	var checkpoints int64
	err = conn.QueryRow(ctx, `SELECT (SELECT COUNT(*) FROM entries),
		(SELECT COALESCE(md5(string_agg(leaf_hash, ''::bytea ORDER BY idx)), '') FROM entries),
		(SELECT COUNT(*) FROM checkpoints)`).Scan(&entries, &digest, &checkpoints)
	if err != nil {
		t.Fatal(err)
	}
	return entries, fmt.Sprintf("%d entries (%s), %d checkpoints", entries, digest, checkpoints)
}

// noteSize is the tree size a checkpoint note states (its second line).
func noteSize(t *testing.T, path string) uint64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitN(string(b), "\n", 3)
	if len(lines) < 3 {
		t.Fatalf("%s is not a checkpoint note: %q", path, b)
	}
	n, err := strconv.ParseUint(lines[1], 10, 64)
	if err != nil {
		t.Fatalf("%s: tree size: %v", path, err)
	}
	return n
}

// Backups and restores of a PostgreSQL store: `breakglassd backup` writes
// the checkpoint and the manifest while the broker serves, and the
// operator's pg_dump extends them. After the grant is revoked and the
// older dump is restored in place with pg_restore, `breakglassd restore`
// wants the newest checkpoint the operator holds, refuses the rollback
// against the one saved after the revocation without touching the
// database, and accepts the dump against the backup's own checkpoint; the
// broker then serves on it and the verifier lists the restore.
func TestBackupAndRestorePostgres(t *testing.T) {
	srv := pgtest.Require(t, pg)
	pgDump, pgRestore := pgClientTool(t, "pg_dump"), pgClientTool(t, "pg_restore")
	dsn := srv.NewDatabase(t)
	d := newReplicas(t, dsn, 1)[0]
	d.exportAuditKey()
	granted := d.approvedGrant(t)

	// Online: the checkpoint and manifest first, then the dump, which
	// extends them.
	old, r := d.backup(t, "old")
	if !strings.Contains(r.stderr, "pg_dump --format=custom") {
		t.Fatalf("backup: %+v", r)
	}
	var m struct {
		Driver   string `json:"driver"`
		Database string `json:"database"`
		E        uint64 `json:"entries"`
		C        uint64 `json:"checkpoint_size"`
	}
	b, err := os.ReadFile(filepath.Join(old, "manifest.json"))
	if err != nil || json.Unmarshal(b, &m) != nil || m.Driver != "postgres" || m.Database != "" || m.E == 0 || m.C == 0 || m.C > m.E {
		t.Fatalf("manifest: %s %v", b, err)
	}
	if fileExists(filepath.Join(old, "broker.db")) || noteSize(t, filepath.Join(old, "checkpoint")) != m.C {
		t.Fatalf("a PostgreSQL backup holds a SQLite copy or a checkpoint its manifest does not describe")
	}
	// The DSN is TCP to the test server as its postgres role with trust
	// authentication, so the client programs run as the test's own user
	// (who owns the backup directory), not as the server's.
	dump := filepath.Join(old, "broker.pgdump")
	if out, err := exec.Command(pgDump, "--format=custom", "--file", dump, dsn).CombinedOutput(); err != nil {
		t.Fatalf("pg_dump: %v\n%s", err, out)
	}

	// After the backup the grant is revoked: the entry a rollback would
	// undo. The SOC keeps the newest checkpoint.
	d.mustBgctl("erin", "revoke", granted, "--reason", "compromised laptop")
	d.createRequest("alice")
	soc := d.checkpointFile(t)
	d.stop()
	newest, _ := pgLog(t, dsn)
	if noteSize(t, soc) <= m.E {
		t.Fatalf("the saved checkpoint covers %d entries, no more than the backup's %d (the test is wrong)", noteSize(t, soc), m.E)
	}

	// The operator restores the older dump in place.
	if out, err := exec.Command(pgRestore, "--clean", "--if-exists", "--single-transaction", "--exit-on-error", "--no-owner",
		"--dbname", dsn, dump).CombinedOutput(); err != nil {
		t.Fatalf("pg_restore: %v\n%s", err, out)
	}
	restored, before := pgLog(t, dsn)
	if restored >= newest || uint64(restored) < m.E {
		t.Fatalf("after pg_restore the database holds %d entries; the backup had %d and the broker %d", restored, m.E, newest)
	}

	// Without a checkpoint the operator kept, the database's own are the
	// dump's: refused, naming what to give.
	for _, args := range [][]string{nil, {"--from", old}} {
		r, _ := d.restore(args...)
		if r.code == 0 || r.code == 3 || !strings.Contains(r.stderr, "--checkpoint") {
			t.Errorf("restore %v without --checkpoint: %+v", args, r)
		}
	}
	if _, s := pgLog(t, dsn); s != before {
		t.Fatalf("a restore without --checkpoint changed the database: %s, was %s", s, before)
	}

	// Against the checkpoint saved after the revocation: a rollback,
	// refused with nothing changed.
	for _, args := range [][]string{{"--checkpoint", soc}, {"--from", old, "--checkpoint", soc}} {
		r, _ := d.restore(args...)
		if r.code != 3 || !strings.Contains(r.stderr, "restore refused, nothing changed") || !strings.Contains(r.stderr, soc+" covers") ||
			!strings.Contains(r.stderr, "which may include revocations") {
			t.Fatalf("restore %v of the older dump against the newest checkpoint: %+v", args, r)
		}
		if _, s := pgLog(t, dsn); s != before {
			t.Fatalf("a refused restore changed the database: %s, was %s", s, before)
		}
	}

	// Against the backup's own checkpoint: accepted, and written to the log.
	r, res := d.restore("--checkpoint", filepath.Join(old, "checkpoint"))
	if r.code != 0 || res.Forced || res.Previous != "" || res.Newest != m.C || uint64(restored) != res.Backup || res.Entry != res.Backup {
		t.Fatalf("restore of the dump against the backup's checkpoint: %+v %+v", r, res)
	}
	if !strings.Contains(strings.Join(res.Consulted, ","), "restored in place") {
		t.Errorf("the restore does not say the database was restored in place: %v", res.Consulted)
	}
	if n, _ := pgLog(t, dsn); n != restored+1 {
		t.Fatalf("after the restore the database holds %d entries, want %d (the dump's and store_restored)", n, restored+1)
	}

	// The broker serves on the restored database, with the grant the dump
	// had: the revocation is what was rolled back.
	d.start()
	if show := d.mustBgctl("dave", "show", granted, "-o", "json"); !strings.Contains(show, "REQUEST_STATE_APPROVED") {
		t.Fatalf("the restored database is not the dump's: %s", show)
	}
	d.createRequest("alice")
	f := d.exportAudit(t)
	if v := f.verify(t); v.code != 0 || !strings.Contains(v.stdout, "restore at entry") || !strings.Contains(v.stdout, "by frank") ||
		strings.Contains(v.stdout, "FORCED") {
		t.Fatalf("verify after the restore: %+v", v)
	}
	// The SOC's checkpoint still shows what was lost.
	if v := f.verify(t, "--previous-checkpoint", soc); v.code == 0 {
		t.Fatalf("the rollback is not caught against the SOC's checkpoint: %+v", v)
	}
	t.Logf("dump of %d entries restored in place over %d; refused against the checkpoint of %d, accepted against the backup's of %d; store_restored at entry %d",
		restored, newest, noteSize(t, soc), res.Newest, res.Entry)
}
