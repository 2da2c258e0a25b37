package test

import (
	"crypto/sha256"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// restoreResult is what `breakglassd restore` prints.
type restoreResult struct {
	Entry      uint64   `json:"entry"`
	Backup     uint64   `json:"backup_entries"`
	Newest     uint64   `json:"newest_checkpoint"`
	NewestFrom string   `json:"newest_checkpoint_from"`
	Consulted  []string `json:"consulted"`
	Forced     bool     `json:"forced"`
	Previous   string   `json:"previous_database"`
}

func (d *devBroker) breakglassd(args ...string) result {
	d.t.Helper()
	return runCmd(d.t, os.Environ(), "", bin.breakglassd, append(args[:1:1], append([]string{"--config", d.state("config.yaml")}, args[1:]...)...)...)
}

func (d *devBroker) restore(args ...string) (result, restoreResult) {
	d.t.Helper()
	r := d.breakglassd(append([]string{"restore", "--operator", "frank"}, args...)...)
	var out restoreResult
	if r.code == 0 {
		if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
			d.t.Fatalf("restore output: %v\n%s", err, r.stdout)
		}
	}
	return r, out
}

// backup runs `breakglassd backup` into a new directory named name.
func (d *devBroker) backup(t *testing.T, name string) (string, result) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	r := d.breakglassd("backup", "--out", dir)
	if r.code != 0 {
		t.Fatalf("backup: %+v", r)
	}
	return dir, r
}

// approvedGrant is alice's request with both approvals, and a checkpoint
// over it.
func (d *devBroker) approvedGrant(t *testing.T) string {
	t.Helper()
	id := d.createRequest("alice")
	d.mustBgctl("bob", "approve", id, "--yes")
	d.mustBgctl("erin", "approve", id, "--yes")
	d.mustBgctl("dave", "audit", "checkpoint")
	return id
}

func fileSum(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// Backups and restores: a backup taken while the broker serves is refused
// against the newer checkpoint of the database it would replace and of a
// checkpoint the SOC kept, and accepted against its own; a forced restore
// is written to the log, announced and listed by the verifier, which also
// catches it as a rollback against the older checkpoint.
func TestBackupAndRestore(t *testing.T) {
	d := startDev(t)
	d.exportAuditKey()
	granted := d.approvedGrant(t)

	// Online: the broker keeps serving.
	old, _ := d.backup(t, "old")
	var m struct {
		E      uint64 `json:"entries"`
		C      uint64 `json:"checkpoint_size"`
		SHA256 string `json:"sha256"`
	}
	b, err := os.ReadFile(filepath.Join(old, "manifest.json"))
	if err != nil || json.Unmarshal(b, &m) != nil || m.E == 0 || m.C == 0 || m.C > m.E || len(m.SHA256) != 64 {
		t.Fatalf("manifest: %s %v", b, err)
	}
	if r := d.breakglassd("backup", "--out", old); r.code == 0 || !strings.Contains(r.stderr, "already holds a backup") {
		t.Fatalf("a second backup into the same directory: %+v", r)
	}

	// After the backup the grant is revoked: the entry a rollback would undo.
	d.mustBgctl("erin", "revoke", granted, "--reason", "compromised laptop")
	d.createRequest("alice")
	soc := d.checkpointFile(t)
	d.stop()
	db := d.state("broker.db")
	sum := fileSum(t, db)

	// Refused against the current database's newer checkpoint; nothing changes.
	r, _ := d.restore("--from", old)
	if r.code != 3 || !strings.Contains(r.stderr, "restore refused, nothing changed") || !strings.Contains(r.stderr, "the current database covers") ||
		!strings.Contains(r.stderr, "which may include revocations") {
		t.Fatalf("restore of an older backup: %+v", r)
	}
	if fileSum(t, db) != sum {
		t.Fatal("a refused restore changed the database")
	}
	if _, err := os.Stat(db + ".restoring"); !os.IsNotExist(err) {
		t.Fatal("a refused restore left its staging copy")
	}

	// Broken and hostile input: nothing changes either.
	damaged := copyBackup(t, old)
	if err := os.WriteFile(filepath.Join(damaged, "broker.db"), []byte("not the backup"), 0o600); err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(t.TempDir(), "garbage.note")
	_ = os.WriteFile(garbage, []byte("example.org/other\n3\nAAAA\n\n— nobody AAAA\n"), 0o600)
	forged := filepath.Join(t.TempDir(), "forged.note")
	note, _ := os.ReadFile(soc)
	lines := strings.SplitN(string(note), "\n", 3)
	_ = os.WriteFile(forged, []byte(lines[0]+"\n1\n"+lines[2]), 0o600)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"damaged backup", []string{"--from", damaged, "--force", "--reason", "x"}, "does not match its manifest's digest"},
		{"not a backup", []string{"--from", t.TempDir()}, "is not a backup directory"},
		{"no backup", nil, "--from"},
		{"force without reason", []string{"--from", old, "--force"}, "--force needs --reason"},
		{"garbage checkpoint", []string{"--from", old, "--checkpoint", garbage}, "not a checkpoint of log"},
		{"altered checkpoint", []string{"--from", old, "--checkpoint", forged}, "not a checkpoint of log"},
		{"missing checkpoint", []string{"--from", old, "--checkpoint", filepath.Join(old, "nope")}, "--checkpoint"},
	} {
		r, _ := d.restore(tc.args...)
		if r.code == 0 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%s: %+v", tc.name, r)
		}
		if fileSum(t, db) != sum {
			t.Fatalf("%s changed the database", tc.name)
		}
	}

	// A backup of the current state is accepted against it.
	current, _ := d.backup(t, "current")
	r, res := d.restore("--from", current, "--checkpoint", soc)
	if r.code != 0 || res.Forced || res.Previous == "" || res.Newest == 0 || res.Entry != res.Backup {
		t.Fatalf("restore of the current backup: %+v %+v", r, res)
	}
	if _, err := os.Stat(res.Previous); err != nil {
		t.Fatalf("the replaced database is not kept: %v", err)
	}
	d.start()
	d.createRequest("alice")
	f := d.exportAudit(t)
	if v := f.verify(t, "--previous-checkpoint", soc); v.code != 0 || !strings.Contains(v.stdout, "restore at entry") || !strings.Contains(v.stdout, "by frank") {
		t.Fatalf("verify after a clean restore: %+v", v)
	}
	d.stop()

	// Forced: written to the log and announced, and a rollback to the SOC.
	r, res = d.restore("--from", old, "--force", "--reason", "the disk and every newer backup are lost")
	if r.code != 0 || !res.Forced || res.Newest <= res.Backup {
		t.Fatalf("forced restore: %+v %+v", r, res)
	}
	d.start()
	show := d.mustBgctl("dave", "show", granted, "-o", "json")
	if !strings.Contains(show, "REQUEST_STATE_APPROVED") {
		t.Fatalf("the forced restore did not roll back (the test is wrong): %s", show)
	}
	if !eventually(10*time.Second, func() bool {
		b, _ := os.ReadFile(d.state("events.jsonl"))
		return strings.Contains(string(b), `"store.restored"`) && strings.Contains(string(b), "FORCED restore by frank")
	}) {
		t.Error("no store.restored event for the forced restore")
	}
	f = d.exportAudit(t)
	if v := f.verify(t); v.code != 0 || !strings.Contains(v.stdout, "FORCED restore at entry") || !strings.Contains(v.stdout, "every newer backup are lost") {
		t.Fatalf("verify after a forced restore: %+v", v)
	}
	if v := f.verify(t, "--previous-checkpoint", soc); v.code == 0 {
		t.Fatalf("the rollback is not caught against the SOC's checkpoint: %+v", v)
	}
	d.stop()

	// The machine is lost: only the backup and the SOC's checkpoint remain.
	for _, s := range []string{"", "-wal", "-shm"} {
		_ = os.Remove(db + s)
	}
	r, _ = d.restore("--from", old, "--checkpoint", soc)
	if r.code != 3 || !strings.Contains(r.stderr, soc+" covers") {
		t.Fatalf("restore of an older backup against the SOC's checkpoint: %+v", r)
	}
	if _, err := os.Stat(db); !os.IsNotExist(err) {
		t.Fatal("a refused restore created a database")
	}
	r, res = d.restore("--from", old)
	if r.code != 0 || res.Forced || res.Newest != m.C || res.NewestFrom != "the backup's own log" {
		t.Fatalf("restore against the backup's own checkpoint: %+v %+v", r, res)
	}
	if !strings.Contains(strings.Join(res.Consulted, ","), "no current database") {
		t.Errorf("the restore does not say what it could not consult: %v", res.Consulted)
	}
	d.start()
	d.createRequest("alice")
}
