package test

import (
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
)

// dbFiles describes the state directory: the database a restore would
// replace, its write-ahead log, and everything a restore may create beside
// it (staging copies, snapshots, databases moved aside). A refused or
// failed restore must leave it exactly as it was, but for SQLite's
// shared-memory index and an empty write-ahead log, which any reader may
// create or rebuild and which hold nothing.
func (d *devBroker) dbFiles(t *testing.T) string {
	t.Helper()
	entries, err := os.ReadDir(d.state())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		n := d.state(e.Name())
		fi, err := os.Lstat(n)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(n, "-shm") || (strings.HasSuffix(n, "-wal") && fi.Size() == 0) {
			continue
		}
		out = append(out, describeFile(t, filepath.Base(n), n, fi))
	}
	return strings.Join(out, "\n")
}

// describeFile is a file's name, mode and, for a regular file, the start
// of its digest.
func describeFile(t *testing.T, name, path string, fi os.FileInfo) string {
	t.Helper()
	desc := name + " " + fi.Mode().String()
	if fi.Mode().IsRegular() {
		s := fileSum(t, path)
		desc += " " + hex.EncodeToString(s[:8])
	}
	return desc
}

// copyBackup copies a backup directory, to damage the copy.
func copyBackup(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "backup")
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
	return dst
}

// editManifest rewrites a backup's manifest; the digest is recomputed
// over the file it then names, as an attacker (or a careless script)
// would, when that file is a regular one.
func editManifest(t *testing.T, dir string, edit func(m map[string]any)) {
	t.Helper()
	p := filepath.Join(dir, "manifest.json")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	if name, _ := m["database"].(string); name != "" && !filepath.IsAbs(name) {
		if fi, err := os.Stat(filepath.Join(dir, name)); err == nil && fi.Mode().IsRegular() {
			s := fileSum(t, filepath.Join(dir, name))
			m["sha256"] = hex.EncodeToString(s[:])
		}
	}
	if b, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func writeTestFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// checkpointFile saves the broker's latest checkpoint.
func (d *devBroker) checkpointFile(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "checkpoint.note")
	writeTestFile(t, p, []byte(d.mustBgctl("dave", "audit", "checkpoint")))
	return p
}

// unknownKeyNote signs the text of a real checkpoint (same origin, size
// and root) with a fresh key that no registry holds.
func unknownKeyNote(t *testing.T, checkpointFile string) string {
	t.Helper()
	b, err := os.ReadFile(checkpointFile)
	if err != nil {
		t.Fatal(err)
	}
	text, _, _ := strings.Cut(string(b), "\n\n")
	origin, _, _ := strings.Cut(text, "\n")
	skey, _, err := note.GenerateKey(rand.Reader, origin)
	if err != nil {
		t.Fatal(err)
	}
	s, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	signed, err := note.Sign(&note.Note{Text: text + "\n"}, s)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "unknown-key.note")
	writeTestFile(t, p, signed)
	return p
}

// Hostile backups, checkpoints and surroundings, and failures while the
// restore is recorded: each is refused or fails with a message naming the
// problem, and leaves the database it would have replaced, and the files
// beside it, exactly as they were.
func TestRestoreHostile(t *testing.T) {
	d := startDev(t)
	other := startDev(t) // another log: its own HSM, keys and origin
	granted := d.approvedGrant(t)
	old, _ := d.backup(t, "old")
	d.mustBgctl("erin", "revoke", granted, "--reason", "compromised laptop")
	newest := d.checkpointFile(t)
	d.stop()
	cur, _ := d.backup(t, "cur")

	other.createRequest("alice")
	otherNote := other.checkpointFile(t)
	other.stop()
	otherBackup, _ := other.backup(t, "other")

	db := d.state("broker.db")
	victim := filepath.Join(t.TempDir(), "victim")
	writeTestFile(t, victim, []byte("not the broker's to touch"))
	moveAway := func(t *testing.T, p string) func() {
		aside := filepath.Join(t.TempDir(), "aside")
		if err := os.Rename(p, aside); err != nil {
			t.Fatal(err)
		}
		return func() {
			if err := os.Rename(aside, p); err != nil {
				t.Fatal(err)
			}
		}
	}

	for _, tc := range []struct {
		name string
		// prepare returns the restore's arguments and what undoes its
		// changes to the broker's state.
		prepare func(t *testing.T) ([]string, func())
		code    int
		want    []string
	}{
		{"database path traversal", func(t *testing.T) ([]string, func()) {
			b := copyBackup(t, cur)
			rel, err := filepath.Rel(b, filepath.Join(cur, "broker.db"))
			if err != nil || !strings.HasPrefix(rel, "..") {
				t.Fatalf("relative path: %q %v", rel, err)
			}
			editManifest(t, b, func(m map[string]any) { m["database"] = rel })
			return []string{"--from", b}, nil
		}, 1, []string{"the database must be a file in the backup directory"}},
		{"database path absolute", func(t *testing.T) ([]string, func()) {
			b := copyBackup(t, cur)
			editManifest(t, b, func(m map[string]any) { m["database"] = filepath.Join(cur, "broker.db") })
			return []string{"--from", b}, nil
		}, 1, []string{"the database must be a file in the backup directory"}},
		{"database is the parent directory", func(t *testing.T) ([]string, func()) {
			b := copyBackup(t, cur)
			editManifest(t, b, func(m map[string]any) { m["database"] = ".." })
			return []string{"--from", b}, nil
		}, 1, []string{"the database must be a file in the backup directory"}},
		{"database is the backup directory", func(t *testing.T) ([]string, func()) {
			b := copyBackup(t, cur)
			editManifest(t, b, func(m map[string]any) { m["database"] = "." })
			return []string{"--from", b}, nil
		}, 1, []string{"the database must be a file in the backup directory"}},
		{"no database named", func(t *testing.T) ([]string, func()) {
			b := copyBackup(t, cur)
			editManifest(t, b, func(m map[string]any) { delete(m, "database") })
			return []string{"--from", b}, nil
		}, 1, []string{"names no database", "the backup is damaged"}},
		{"database is a device", func(t *testing.T) ([]string, func()) {
			b := copyBackup(t, cur)
			_ = os.Remove(filepath.Join(b, "broker.db"))
			if err := os.Symlink("/dev/zero", filepath.Join(b, "broker.db")); err != nil {
				t.Fatal(err)
			}
			return []string{"--from", b}, nil
		}, 1, []string{"is not a regular file"}},
		{"database is not SQLite", func(t *testing.T) ([]string, func()) {
			b := copyBackup(t, cur)
			junk := make([]byte, 8192)
			_, _ = rand.Read(junk)
			writeTestFile(t, filepath.Join(b, "broker.db"), junk)
			editManifest(t, b, func(map[string]any) {})
			return []string{"--from", b, "--force", "--reason", "x"}, nil
		}, 1, []string{"opening the backup's database", "cannot be read as a database"}},
		{"database is the checkpoint note", func(t *testing.T) ([]string, func()) {
			b := copyBackup(t, cur)
			editManifest(t, b, func(m map[string]any) { m["database"] = "checkpoint" })
			return []string{"--from", b, "--force", "--reason", "x"}, nil
		}, 1, []string{"opening the backup's database", "truncated or not a database"}},
		{"database of another log", func(t *testing.T) ([]string, func()) {
			b := copyBackup(t, cur)
			db, err := os.ReadFile(filepath.Join(otherBackup, "broker.db"))
			if err != nil {
				t.Fatal(err)
			}
			writeTestFile(t, filepath.Join(b, "broker.db"), db)
			editManifest(t, b, func(map[string]any) {})
			return []string{"--from", b}, nil
		}, 1, []string{"another log"}},
		{"backup of another log", func(t *testing.T) ([]string, func()) {
			return []string{"--from", otherBackup, "--force", "--reason", "x"}, nil
		}, 1, []string{"another log"}},
		{"backup of another log, no current database", func(t *testing.T) ([]string, func()) {
			return []string{"--from", otherBackup, "--force", "--reason", "x"}, moveAway(t, db)
		}, 1, []string{"another log"}},
		{"backup's checkpoint forged", func(t *testing.T) ([]string, func()) {
			b := copyBackup(t, cur)
			n, _ := os.ReadFile(filepath.Join(b, "checkpoint"))
			lines := strings.SplitN(string(n), "\n", 3)
			writeTestFile(t, filepath.Join(b, "checkpoint"), []byte(lines[0]+"\n1\n"+lines[2]))
			return []string{"--from", b}, nil
		}, 1, []string{"the backup's checkpoint file", "not a checkpoint of log"}},
		{"backup's checkpoint from another log", func(t *testing.T) ([]string, func()) {
			b := copyBackup(t, cur)
			n, _ := os.ReadFile(otherNote)
			writeTestFile(t, filepath.Join(b, "checkpoint"), n)
			return []string{"--from", b}, nil
		}, 1, []string{"the backup's checkpoint file"}},
		{"backup's checkpoint signed by an unknown key", func(t *testing.T) ([]string, func()) {
			b := copyBackup(t, cur)
			n, _ := os.ReadFile(unknownKeyNote(t, filepath.Join(cur, "checkpoint")))
			writeTestFile(t, filepath.Join(b, "checkpoint"), n)
			return []string{"--from", b}, nil
		}, 1, []string{"the backup's checkpoint file", "not a checkpoint of log"}},
		{"backup's own checkpoint forged", func(t *testing.T) ([]string, func()) {
			b := copyBackup(t, cur)
			forged, _ := os.ReadFile(unknownKeyNote(t, filepath.Join(cur, "checkpoint")))
			db, err := sql.Open("sqlite", filepath.Join(b, "broker.db"))
			if err != nil {
				t.Fatal(err)
			}
			for _, q := range []string{"PRAGMA journal_mode=DELETE", "DROP TRIGGER checkpoints_no_rewrite",
				"UPDATE checkpoints SET note = ? WHERE size = (SELECT MAX(size) FROM checkpoints)"} {
				if _, err := db.Exec(q, forged); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
			_ = os.Remove(filepath.Join(b, "checkpoint"))
			editManifest(t, b, func(map[string]any) {})
			return []string{"--from", b}, nil
		}, 1, []string{"the backup's own log", "not a checkpoint of log"}},
		{"backup's checkpoint unreadable", func(t *testing.T) ([]string, func()) {
			b := copyBackup(t, old)
			_ = os.Remove(filepath.Join(b, "checkpoint"))
			if err := os.Mkdir(filepath.Join(b, "checkpoint"), 0o700); err != nil {
				t.Fatal(err)
			}
			return []string{"--from", b}, nil
		}, 1, []string{"the backup's checkpoint file", "is a directory"}},
		{"backup's checkpoint endless", func(t *testing.T) ([]string, func()) {
			b := copyBackup(t, cur)
			_ = os.Remove(filepath.Join(b, "checkpoint"))
			if err := os.Symlink("/dev/zero", filepath.Join(b, "checkpoint")); err != nil {
				t.Fatal(err)
			}
			return []string{"--from", b}, nil
		}, 1, []string{"the backup's checkpoint file", "not a manifest or a checkpoint"}},
		{"manifest endless", func(t *testing.T) ([]string, func()) {
			b := copyBackup(t, cur)
			_ = os.Remove(filepath.Join(b, "manifest.json"))
			if err := os.Symlink("/dev/zero", filepath.Join(b, "manifest.json")); err != nil {
				t.Fatal(err)
			}
			return []string{"--from", b}, nil
		}, 1, []string{"is not a backup directory"}},
		{"--checkpoint empty", func(t *testing.T) ([]string, func()) {
			p := filepath.Join(t.TempDir(), "empty.note")
			writeTestFile(t, p, nil)
			return []string{"--from", cur, "--checkpoint", p}, nil
		}, 1, []string{"empty.note", "is empty"}},
		{"--checkpoint a directory", func(t *testing.T) ([]string, func()) {
			return []string{"--from", cur, "--checkpoint", t.TempDir()}, nil
		}, 1, []string{"--checkpoint"}},
		{"--checkpoint of another log", func(t *testing.T) ([]string, func()) {
			return []string{"--from", cur, "--checkpoint", otherNote}, nil
		}, 1, []string{otherNote, "not a checkpoint of log"}},
		{"--checkpoint signed by an unknown key", func(t *testing.T) ([]string, func()) {
			p := unknownKeyNote(t, newest)
			return []string{"--from", cur, "--checkpoint", p}, nil
		}, 1, []string{"unknown-key.note", "not a checkpoint of log"}},
		{"older backup, no current database", func(t *testing.T) ([]string, func()) {
			return []string{"--from", old, "--checkpoint", newest}, moveAway(t, db)
		}, 3, []string{newest + " covers"}},
		{"current database empty", func(t *testing.T) ([]string, func()) {
			undo := moveAway(t, db)
			writeTestFile(t, db, nil)
			return []string{"--from", old}, func() { _ = os.Remove(db); undo() }
		}, 1, []string{"is empty", "--checkpoint"}},
		{"current database empty, newer checkpoint given", func(t *testing.T) ([]string, func()) {
			undo := moveAway(t, db)
			writeTestFile(t, db, nil)
			return []string{"--from", old, "--checkpoint", newest}, func() { _ = os.Remove(db); undo() }
		}, 3, []string{newest + " covers"}},
		{"current database not SQLite", func(t *testing.T) ([]string, func()) {
			undo := moveAway(t, db)
			writeTestFile(t, db, make([]byte, 4096))
			return []string{"--from", old}, func() { _ = os.Remove(db); undo() }
		}, 1, []string{"cannot be read", "--checkpoint"}},
		{"staging path a symlink, refused", func(t *testing.T) ([]string, func()) {
			if err := os.Symlink(victim, db+".restoring"); err != nil {
				t.Fatal(err)
			}
			return []string{"--from", old}, func() { _ = os.Remove(db + ".restoring") }
		}, 3, []string{"restore refused"}},
		{"HSM PIN wrong", func(t *testing.T) ([]string, func()) {
			pin := d.state("hsm", "pin")
			good, err := os.ReadFile(pin)
			if err != nil {
				t.Fatal(err)
			}
			writeTestFile(t, pin, []byte("00000000"))
			return []string{"--from", cur}, func() { writeTestFile(t, pin, good) }
		}, 1, []string{"nothing was restored", "PIN"}},
		{"HSM token missing", func(t *testing.T) ([]string, func()) {
			dirs, _ := filepath.Glob(d.state("hsm", "*"))
			var tokens string
			for _, p := range dirs {
				if fi, err := os.Stat(p); err == nil && fi.IsDir() {
					tokens = p
				}
			}
			if tokens == "" {
				t.Fatal("no SoftHSM2 token directory")
			}
			undo := moveAway(t, tokens)
			if err := os.Mkdir(tokens, 0o700); err != nil {
				t.Fatal(err)
			}
			return []string{"--from", cur}, func() { _ = os.Remove(tokens); undo() }
		}, 1, []string{"nothing was restored", "token"}},
		{"HSM PIN wrong, no current database", func(t *testing.T) ([]string, func()) {
			pin := d.state("hsm", "pin")
			good, err := os.ReadFile(pin)
			if err != nil {
				t.Fatal(err)
			}
			writeTestFile(t, pin, []byte("00000000"))
			undo := moveAway(t, db)
			return []string{"--from", cur}, func() { writeTestFile(t, pin, good); undo() }
		}, 1, []string{"nothing was restored", "PIN"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args, undo := tc.prepare(t)
			// A staging copy an interrupted restore left is removed.
			before := regexp.MustCompile(`(?m)^broker\.db\.restoring.*\n?`).ReplaceAllString(d.dbFiles(t), "")
			r, _ := d.restore(args...)
			after := d.dbFiles(t)
			if undo != nil {
				undo()
			}
			if r.code != tc.code {
				t.Errorf("exit %d, want %d: %+v", r.code, tc.code, r)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr does not say %q: %s", w, r.stderr)
				}
			}
			if strings.Contains(r.stderr, "panic") || strings.Contains(r.stderr, "goroutine ") {
				t.Errorf("panicked: %s", r.stderr)
			}
			if after != before {
				t.Errorf("the restore changed the database's files:\nbefore:\n%s\nafter:\n%s", before, after)
			}
			if b, err := os.ReadFile(victim); err != nil || string(b) != "not the broker's to touch" {
				t.Errorf("the restore wrote through a symlink: %q %v", b, err)
			}
		})
	}

	// Every refusal and failure left the log as it was: the revocation
	// after the old backup is still there, and a backup of the current
	// state is still accepted.
	r, res := d.restore("--from", cur, "--checkpoint", newest)
	if r.code != 0 || res.Forced || res.Entry != res.Backup {
		t.Fatalf("restore of the current backup after the hostile ones: %+v %+v", r, res)
	}
}

// An interrupted restore's staging copy, even a symlink to a file
// elsewhere, is replaced and never written through; the database moved
// aside never overwrites an earlier one.
func TestRestoreLeftovers(t *testing.T) {
	d := startDev(t)
	d.createRequest("alice")
	d.stop()
	cur, _ := d.backup(t, "cur")
	db := d.state("broker.db")
	victim := filepath.Join(t.TempDir(), "victim")
	writeTestFile(t, victim, []byte("not the broker's to touch"))
	for _, s := range []string{".restoring", ".restoring-wal", ".restoring-shm"} {
		if err := os.Symlink(victim, db+s); err != nil {
			t.Fatal(err)
		}
	}
	// Names the database moved aside could get in the next seconds, taken.
	var decoys []string
	now := time.Now().UTC()
	for i := -1; i < 30; i++ {
		p := fmt.Sprintf("%s.before-restore-%s", db, now.Add(time.Duration(i)*time.Second).Format("20060102T150405Z"))
		writeTestFile(t, p, []byte("an earlier database"))
		decoys = append(decoys, p)
	}
	r, res := d.restore("--from", cur)
	if r.code != 0 || res.Previous == "" {
		t.Fatalf("restore over an interrupted one: %+v %+v", r, res)
	}
	if b, err := os.ReadFile(victim); err != nil || string(b) != "not the broker's to touch" {
		t.Fatalf("the restore wrote through the staging symlink: %q %v", b, err)
	}
	if slices.Contains(decoys, res.Previous) {
		t.Fatalf("the replaced database was moved onto an earlier one: %s", res.Previous)
	}
	for _, p := range decoys {
		if b, err := os.ReadFile(p); err != nil || string(b) != "an earlier database" {
			t.Fatalf("an earlier database moved aside was overwritten: %s %q %v", p, b, err)
		}
	}
	if _, err := os.Stat(res.Previous); err != nil {
		t.Fatalf("the replaced database is not kept: %v", err)
	}
	if left, _ := filepath.Glob(db + ".restoring*"); len(left) > 0 {
		t.Fatalf("staging files left: %v", left)
	}
	d.start()
	d.createRequest("alice")
}

// A checkpoint of this log, signed by its key, whose root differs from the
// backup's at a size the backup holds is a forked history: refused, from
// the current database as from --checkpoint.
func TestRestoreForkedCheckpoint(t *testing.T) {
	d := startDev(t)
	d.createRequest("alice")
	d.mustBgctl("dave", "audit", "checkpoint")
	b0, _ := d.backup(t, "b0")
	for range 4 {
		d.createRequest("alice")
	}
	d.mustBgctl("dave", "audit", "checkpoint")
	d.stop()
	b1, _ := d.backup(t, "b1")
	// Roll back to b0 and write another history on it.
	if r, _ := d.restore("--from", b0, "--force", "--reason", "fork the log for the test"); r.code != 0 {
		t.Fatalf("forced restore: %+v", r)
	}
	d.start()
	d.createRequest("alice")
	fork := d.checkpointFile(t)
	d.stop()
	var m struct {
		Entries uint64 `json:"entries"`
	}
	b, _ := os.ReadFile(filepath.Join(b1, "manifest.json"))
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if n := noteSize(t, fork); n == 0 || n > m.Entries {
		t.Fatalf("the fork's checkpoint covers %d entries, b1 holds %d: the test is wrong", n, m.Entries)
	}

	db := d.state("broker.db")
	before := d.dbFiles(t)
	r, _ := d.restore("--from", b1)
	if r.code != 3 || !strings.Contains(r.stderr, "the current database at") || !strings.Contains(r.stderr, "different histories") {
		t.Fatalf("restore against the current database's forked checkpoint: %+v", r)
	}
	if after := d.dbFiles(t); after != before {
		t.Fatalf("a refused restore changed the database's files:\n%s\n%s", before, after)
	}
	// The machine is lost; the SOC kept the fork's checkpoint.
	lost, _ := filepath.Glob(db + "*")
	for _, p := range lost {
		_ = os.Remove(p)
	}
	r, _ = d.restore("--from", b1, "--checkpoint", fork)
	if r.code != 3 || !strings.Contains(r.stderr, fork+" at") || !strings.Contains(r.stderr, "different histories") {
		t.Fatalf("restore against a forked --checkpoint: %+v", r)
	}
	if left, _ := filepath.Glob(db + "*"); len(left) > 0 {
		t.Fatalf("a refused restore created files: %v", left)
	}
	// Forced, the restore writes the newest checkpoint it found, signed
	// note and all, into its entry.
	r, res := d.restore("--from", b1, "--checkpoint", fork, "--force", "--reason", "the fork is the mistake")
	if r.code != 0 || !res.Forced {
		t.Fatalf("forced restore over the fork: %+v %+v", r, res)
	}
	d.start()
	f := d.exportAudit(t)
	lines := f.lines(t)
	var p struct {
		NewestCheckpoint []byte `json:"newest_checkpoint"`
		NewestSize       uint64 `json:"newest_size"`
	}
	last := lines[res.Entry]
	if last.Type != "store_restored" {
		t.Fatalf("entry %d is %s, not the restore", res.Entry, last.Type)
	}
	if err := json.Unmarshal(last.Payload, &p); err != nil {
		t.Fatalf("store_restored payload %s: %v", last.Payload, err)
	}
	if p.NewestSize != res.Newest || p.NewestSize < noteSize(t, fork) || !strings.Contains(string(p.NewestCheckpoint), fmt.Sprintf("\n%d\n", p.NewestSize)) {
		t.Fatalf("the store_restored entry does not hold the newest checkpoint: %+v, newest %d", p, res.Newest)
	}
}

// After a crash the database's newest entries may be in its write-ahead
// log only: a refused restore reads them without folding them into the
// database file, which stays byte for byte as the crash left it.
func TestRestoreAfterCrash(t *testing.T) {
	d := startDev(t)
	d.createRequest("alice")
	d.mustBgctl("dave", "audit", "checkpoint")
	old, _ := d.backup(t, "old")
	d.createRequest("alice")
	d.mustBgctl("dave", "audit", "checkpoint")
	d.kill()
	if fi, err := os.Stat(d.state("broker.db-wal")); err != nil || fi.Size() == 0 {
		t.Fatalf("the crash left no write-ahead log (the test is wrong): %v", err)
	}
	before := d.dbFiles(t)
	r, _ := d.restore("--from", old)
	if r.code != 3 || !strings.Contains(r.stderr, "the current database covers") {
		t.Fatalf("restore of an older backup after a crash: %+v", r)
	}
	if after := d.dbFiles(t); after != before {
		t.Fatalf("a refused restore changed the crashed database's files:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	d.start()
	d.createRequest("alice")
}

// A backup goes into a new or empty directory, or one without any part of
// a backup; it never overwrites a file, and an existing one's files stay
// as they were.
func TestBackupInto(t *testing.T) {
	d := startDev(t)
	d.createRequest("alice")
	d.mustBgctl("dave", "audit", "checkpoint")
	d.stop()
	for _, tc := range []struct {
		name    string
		prepare func(t *testing.T) string
		want    string // empty: the backup is written
	}{
		{"new directory", func(t *testing.T) string { return filepath.Join(t.TempDir(), "a", "b") }, ""},
		{"empty directory", func(t *testing.T) string { return t.TempDir() }, ""},
		{"directory with other files", func(t *testing.T) string {
			dir := t.TempDir()
			writeTestFile(t, filepath.Join(dir, "notes.txt"), []byte("keep"))
			return dir
		}, ""},
		{"an interrupted backup's database", func(t *testing.T) string {
			dir := t.TempDir()
			writeTestFile(t, filepath.Join(dir, "broker.db"), []byte("partial"))
			return dir
		}, "already holds a backup (or part of one: broker.db)"},
		{"a stray checkpoint", func(t *testing.T) string {
			dir := t.TempDir()
			writeTestFile(t, filepath.Join(dir, "checkpoint"), []byte("another log's"))
			return dir
		}, "already holds a backup (or part of one: checkpoint)"},
		{"manifest a dangling symlink", func(t *testing.T) string {
			dir := t.TempDir()
			if err := os.Symlink(filepath.Join(t.TempDir(), "elsewhere"), filepath.Join(dir, "manifest.json")); err != nil {
				t.Fatal(err)
			}
			return dir
		}, "already holds a backup (or part of one: manifest.json)"},
		{"a file", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "file")
			writeTestFile(t, p, []byte("keep"))
			return p
		}, "not a directory"},
		{"no directory named", func(t *testing.T) string { return "" }, "--out"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := tc.prepare(t)
			var before string
			if tc.want != "" && dir != "" {
				before = dirState(t, dir)
			}
			r := d.breakglassd("backup", "--out", dir)
			if tc.want == "" {
				if r.code != 0 {
					t.Fatalf("backup: %+v", r)
				}
				if res, _ := d.restore("--from", dir); res.code != 0 {
					t.Fatalf("restore of the backup: %+v", res)
				}
				return
			}
			if r.code == 0 || !strings.Contains(r.stderr, tc.want) || strings.Contains(r.stderr, "panic") {
				t.Fatalf("backup: %+v, want %q", r, tc.want)
			}
			if dir != "" {
				if after := dirState(t, dir); after != before {
					t.Fatalf("a refused backup changed %s:\nbefore:\n%s\nafter:\n%s", dir, before, after)
				}
			}
		})
	}
}

// dirState describes a directory's files, or a file.
func dirState(t *testing.T, p string) string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(p, func(path string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(path)
		if err != nil {
			return err
		}
		out = append(out, describeFile(t, path, path, fi))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(out, "\n")
}
