package daemon

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/transparency-dev/formats/log"
	"golang.org/x/mod/sumdb/note"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/hsm"
	"github.com/bgbroker/breakglass/server/config"
	"github.com/bgbroker/breakglass/server/keyring"
	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/store/sqlite"
)

// The files of a backup directory.
const (
	BackupDatabase   = "broker.db"
	BackupCheckpoint = "checkpoint"
	BackupManifest   = "manifest.json"
)

// Manifest describes a backup directory.
type Manifest struct {
	Format        int       `json:"format"`
	CreatedAt     time.Time `json:"created_at"`
	BrokerVersion string    `json:"broker_version"`
	Driver        string    `json:"driver"`
	// Database is the copy's file name and SHA256 its digest (SQLite; a
	// PostgreSQL backup is the operator's pg_dump).
	Database string `json:"database,omitempty"`
	SHA256   string `json:"sha256,omitempty"`
	// Entries is the log's length in the copy, CheckpointSize the size of
	// its latest checkpoint (the note in the checkpoint file).
	Entries        uint64 `json:"entries"`
	CheckpointSize uint64 `json:"checkpoint_size"`
	Origin         string `json:"origin,omitempty"`
}

// Backup writes a consistent copy of the store to dir (created, and
// refused if it already holds a backup), with its latest signed checkpoint
// and a manifest. A SQLite store is copied online, while the broker
// serves. A PostgreSQL store gets the checkpoint and the manifest only:
// the database itself is dumped with pg_dump after this returns, so the
// dump extends the checkpoint.
func Backup(ctx context.Context, cfg *config.Config, dir string, log *slog.Logger) (_ *Manifest, err error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if dir == "" {
		return nil, errors.New("name the new directory to write the backup to (--out)")
	}
	for _, name := range []string{BackupManifest, BackupDatabase, BackupCheckpoint} {
		if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
			return nil, fmt.Errorf("%s already holds a backup (or part of one: %s); back up into a new directory", dir, name)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating the backup directory: %w", err)
	}
	// A backup that fails leaves no part of itself behind, so the
	// directory can be used again.
	defer func() {
		if err != nil {
			_ = os.Remove(filepath.Join(dir, BackupManifest))
			_ = os.Remove(filepath.Join(dir, BackupCheckpoint))
			removeDatabase(filepath.Join(dir, BackupDatabase))
		}
	}()
	m := &Manifest{Format: 1, CreatedAt: time.Now().UTC(), BrokerVersion: Version(), Driver: cfg.Store.Driver}
	copyCfg := cfg
	if cfg.Store.Driver != "postgres" {
		m.Driver, m.Database = "sqlite", BackupDatabase
		out := filepath.Join(dir, BackupDatabase)
		if err := sqlite.Backup(ctx, cfg.Store.SQLite.Path, out); err != nil {
			return nil, err
		}
		c := *cfg
		c.Store.SQLite.Path = out
		copyCfg = &c
	}
	st, err := openStore(ctx, copyCfg, log)
	if err != nil {
		return nil, err
	}
	var cp store.Checkpoint
	err = st.View(ctx, func(r store.Reader) error {
		h, err := r.Head(ctx)
		if err != nil {
			return err
		}
		m.Entries = h.Size
		cp, err = r.LatestCheckpoint(ctx)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		return err
	})
	if cerr := st.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	if len(cp.Note) == 0 && m.Entries > 0 {
		log.Warn("the log has no signed checkpoint yet, so this backup holds none; a serving broker signs one within audit.checkpoint_interval of a write")
	}
	if len(cp.Note) > 0 {
		m.CheckpointSize, m.Origin = cp.Size, noteOrigin(cp.Note)
		if err := writeFile(filepath.Join(dir, BackupCheckpoint), bytes.NewReader(cp.Note)); err != nil {
			return nil, err
		}
	}
	if m.Database != "" {
		if m.SHA256, err = fileDigest(filepath.Join(dir, m.Database)); err != nil {
			return nil, err
		}
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := writeFile(filepath.Join(dir, BackupManifest), bytes.NewReader(append(b, '\n'))); err != nil {
		return nil, err
	}
	log.Info("backup written", "dir", dir, "entries", m.Entries, "checkpoint", m.CheckpointSize)
	return m, nil
}

// RestoreOptions says what to restore and against what.
type RestoreOptions struct {
	// From is the backup directory. A SQLite store is replaced by its copy;
	// a PostgreSQL store, already restored with pg_restore, is checked in
	// place (From then only contributes its checkpoint).
	From string
	// Checkpoints are files holding signed checkpoints of this log (from
	// bgctl audit checkpoint, a checkpoint.signed event, an auditor's
	// state) that the restored log must extend.
	Checkpoints []string
	// Force restores a copy that does not extend the newest checkpoint:
	// a rollback, recorded as such in the log with Reason.
	Force    bool
	Reason   string
	Operator string
}

// RestoreResult reports a restore.
type RestoreResult struct {
	// Entry is the store_restored entry's index.
	Entry      uint64
	BackupSize uint64
	// Newest is the newest checkpoint found and NewestFrom where.
	Newest     uint64
	NewestFrom string
	Sources    []string
	Forced     bool
	// MovedAside is where the database the copy replaced now is (empty
	// when there was none, or the store was restored in place).
	MovedAside string
}

// RefusedError is a restore refused because the copy would roll the log
// back; nothing was changed.
type RefusedError struct{ Problems []string }

func (e *RefusedError) Error() string {
	return "restore refused, nothing changed: " + strings.Join(e.Problems, "; ") +
		". Restore a newer backup, or pass --force with --reason to roll back anyway (the override is written to the audit log and announced)"
}

// candidate is a checkpoint the restored log must extend.
type candidate struct {
	from string
	size uint64
	root []byte
	note []byte
}

// Restore replaces the store with a backup, or checks a PostgreSQL store
// restored in place, after making sure the copy's log extends the newest
// signed checkpoint it can find: the current store's, the backup's own and
// any given. A copy that does not is refused unless forced, so a rollback
// cannot silently undo revocations. The restore is then written to the
// log (signed at once) and announced. The broker must be stopped.
func Restore(ctx context.Context, cfg *config.Config, opts RestoreOptions, log *slog.Logger) (*RestoreResult, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.Operator == "" {
		return nil, errors.New("name the operator restoring the store (--operator)")
	}
	if opts.Force && strings.TrimSpace(opts.Reason) == "" {
		return nil, errors.New("--force needs --reason: the override is written to the audit log")
	}
	res := &RestoreResult{}
	var cands []candidate
	var registry []store.KeyRecord
	var manifest *Manifest
	if opts.From != "" {
		m, err := readManifest(opts.From)
		if err != nil {
			return nil, err
		}
		manifest = m
		switch b, err := readNote(filepath.Join(opts.From, BackupCheckpoint)); {
		case err == nil:
			cands = append(cands, candidate{from: "the backup's checkpoint file", note: b})
		case !errors.Is(err, os.ErrNotExist):
			return nil, fmt.Errorf("the backup's checkpoint file: %w", err)
		}
	}
	restored := cfg
	var install func() error
	switch cfg.Store.Driver {
	case "postgres":
		if manifest != nil && manifest.Driver != "postgres" {
			return nil, fmt.Errorf("%s is a %s backup; this broker's store is PostgreSQL", opts.From, manifest.Driver)
		}
		if len(opts.Checkpoints) == 0 && !opts.Force {
			return nil, errors.New("a PostgreSQL store is restored in place with pg_restore, so its own checkpoints are the backup's: " +
				"give the newest checkpoint you hold with --checkpoint (saved with bgctl audit checkpoint before the restore, or an auditor's last verified one)")
		}
		res.Sources = append(res.Sources, "the database, restored in place")
	default:
		if manifest == nil {
			return nil, errors.New("--from: the backup directory (breakglassd backup) to restore")
		}
		if manifest.Driver != "sqlite" {
			return nil, fmt.Errorf("%s is a %s backup; this broker's store is SQLite", opts.From, manifest.Driver)
		}
		if manifest.Database == "" {
			return nil, fmt.Errorf("%s names no database: the backup is damaged", filepath.Join(opts.From, BackupManifest))
		}
		src := filepath.Join(opts.From, manifest.Database)
		if fi, err := os.Stat(src); err != nil {
			return nil, fmt.Errorf("the backup's database: %w", err)
		} else if !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("the backup's database %s is not a regular file: the backup is damaged, or not one breakglassd backup wrote", src)
		}
		target := cfg.Store.SQLite.Path
		staging := target + ".restoring"
		// A staging copy an interrupted restore left is removed (a
		// symlink itself, never what it points to) and made anew.
		removeDatabase(staging)
		installed := false
		defer func() {
			if !installed {
				removeDatabase(staging)
			}
		}()
		if err := copyFile(src, staging); err != nil {
			return nil, fmt.Errorf("copying the backup's database to %s (remove it if no restore is running): %w", staging, err)
		}
		// The copy is what is checked and restored, so it is what the
		// digest must match.
		if sum, err := fileDigest(staging); err != nil {
			return nil, err
		} else if sum != manifest.SHA256 {
			return nil, fmt.Errorf("%s does not match its manifest's digest: the backup is damaged", src)
		}
		cur, keys, err := currentCheckpoint(ctx, cfg)
		switch {
		case errors.Is(err, os.ErrNotExist):
			res.Sources = append(res.Sources, "no current database")
		case err != nil:
			if len(opts.Checkpoints) == 0 && !opts.Force {
				return nil, fmt.Errorf("the current database cannot be read (%v), so its newest checkpoint is unknown: "+
					"give the newest checkpoint you hold with --checkpoint (from another copy of the log, a checkpoint.signed event or an auditor), or --force with --reason", err)
			}
			res.Sources = append(res.Sources, "current database unreadable")
			log.Warn("the current database cannot be read; its checkpoints are not consulted", "err", err)
		default:
			registry = append(registry, keys...)
			if cur != nil {
				cands = append(cands, *cur)
			}
		}
		c := *cfg
		c.Store.SQLite.Path = staging
		restored = &c
		install = func() error {
			// A write-ahead log left without its database is moved aside
			// too: SQLite would apply it to the restored one.
			if databaseExists(target) {
				stamp := time.Now().UTC().Format("20060102T150405Z")
				aside := fmt.Sprintf("%s.before-restore-%s", target, stamp)
				for i := 2; databaseExists(aside); i++ {
					aside = fmt.Sprintf("%s.before-restore-%s-%d", target, stamp, i)
				}
				if err := moveDatabase(target, aside, false); err != nil {
					return fmt.Errorf("moving the current database aside: %w", err)
				}
				res.MovedAside = aside
			}
			if err := moveDatabase(staging, target, true); err != nil {
				return fmt.Errorf("putting the restored database in place (the previous one is %s): %w", res.MovedAside, err)
			}
			installed = true
			return nil
		}
	}
	for _, f := range opts.Checkpoints {
		b, err := readNote(f)
		if err != nil {
			return nil, fmt.Errorf("--checkpoint: %w", err)
		}
		cands = append(cands, candidate{from: f, note: b})
	}

	problems, newestNote, err := checkCopy(ctx, restored, cands, registry, res, log)
	if err != nil {
		return nil, err
	}
	if len(problems) > 0 {
		if !opts.Force {
			return nil, &RefusedError{Problems: problems}
		}
		res.Forced = true
		log.Warn("forced restore: the copy does not extend the newest checkpoint", "problems", problems, "reason", opts.Reason, "operator", opts.Operator)
	}
	o, err := openOffline(ctx, restored, log)
	if err != nil {
		return nil, fmt.Errorf("opening the HSM and the backup to record the restore, so nothing was restored: %w", err)
	}
	rec, err := o.broker.RecordRestore(ctx, audit.StoreRestored{Operator: opts.Operator, Reason: opts.Reason, Forced: res.Forced,
		BackupSize: res.BackupSize, NewestCheckpoint: newestNote, NewestSize: res.Newest, Sources: res.Sources})
	if cerr := o.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("recording the restore in the audit log, so nothing was restored: %w", err)
	}
	res.Entry = rec.Index
	if install != nil {
		if err := install(); err != nil {
			return nil, err
		}
	}
	log.Info("store restored", "entries", res.BackupSize, "newest_checkpoint", res.Newest, "from", res.NewestFrom, "forced", res.Forced, "entry", res.Entry)
	return res, nil
}

// checkCopy reads the copy's log and checks it against every candidate:
// each must be signed by one of this log's checkpoint keys and be a
// prefix of the copy's tree. It returns what does not hold, and the
// newest checkpoint's note.
func checkCopy(ctx context.Context, cfg *config.Config, cands []candidate, registry []store.KeyRecord, res *RestoreResult, log *slog.Logger) ([]string, []byte, error) {
	st, err := openStore(ctx, cfg, log)
	if err != nil {
		return nil, nil, fmt.Errorf("opening the backup's database: %w", err)
	}
	defer st.Close()
	var head audit.Head
	var own store.Checkpoint
	err = st.View(ctx, func(r store.Reader) error {
		var err error
		if head, err = r.Head(ctx); err != nil {
			return err
		}
		keys, err := r.Keys(ctx)
		if err != nil {
			return err
		}
		registry = append(registry, keys...)
		own, err = r.LatestCheckpoint(ctx)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("reading the backup: %w", err)
	}
	res.BackupSize = head.Size
	origin := cfg.Audit.Origin
	if len(own.Note) > 0 {
		// Its note is verified like the others: it is written to the
		// store_restored entry when it is the newest.
		cands = append(cands, candidate{from: "the backup's own log", note: own.Note})
		origin = noteOrigin(own.Note)
		if cfg.Audit.Origin != "" && origin != cfg.Audit.Origin {
			return nil, nil, fmt.Errorf("the backup is of log %q, not of this broker's log %q (audit.origin): it is another log's backup", origin, cfg.Audit.Origin)
		}
	}
	for _, c := range cands {
		if origin == "" && c.note != nil {
			origin = noteOrigin(c.note)
		}
	}
	verifiers := checkpointVerifiers(origin, registry)
	var problems []string
	var newest []byte
	for i := range cands {
		c := &cands[i]
		if c.root == nil {
			if c.size, c.root, err = openCheckpoint(c.note, origin, verifiers); err != nil {
				return nil, nil, fmt.Errorf("%s: %w", c.from, err)
			}
		}
		res.Sources = append(res.Sources, fmt.Sprintf("%s (%d entries)", c.from, c.size))
		if c.size >= res.Newest {
			res.Newest, res.NewestFrom, newest = c.size, c.from, c.note
		}
		if c.size > head.Size {
			problems = append(problems, fmt.Sprintf("%s covers %d entries but the backup holds %d: restoring it would undo %d entries, which may include revocations",
				c.from, c.size, head.Size, c.size-head.Size))
			continue
		}
		if c.size == 0 {
			continue
		}
		err := st.View(ctx, func(r store.Reader) error {
			root, err := r.TreeHash(ctx, c.size)
			if err != nil {
				return err
			}
			if !bytes.Equal(root, c.root) {
				problems = append(problems, fmt.Sprintf("%s at %d entries has a different root than the backup's log: they are different histories", c.from, c.size))
			}
			return nil
		})
		if err != nil {
			return nil, nil, fmt.Errorf("reading the backup's tree: %w", err)
		}
	}
	return problems, newest, nil
}

// currentCheckpoint reads the latest checkpoint and the key registry of
// the database a restore would replace: os.ErrNotExist when there is none.
// An empty file is a database whose history is unknown, not a missing one.
func currentCheckpoint(ctx context.Context, cfg *config.Config) (*candidate, []store.KeyRecord, error) {
	path := cfg.Store.SQLite.Path
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if wal, err := os.Stat(path + "-wal"); err == nil && wal.Size() > 0 {
			return nil, nil, fmt.Errorf("%s is missing but its write-ahead log %s-wal is not", path, path)
		}
		return nil, nil, os.ErrNotExist
	case err != nil:
		return nil, nil, err
	case fi.Size() == 0:
		return nil, nil, fmt.Errorf("%s is empty (0 bytes): truncated, or never written", path)
	}
	// It is read from a snapshot: opening it would write to it (fold in
	// the write-ahead log a crashed broker left, apply migrations), and a
	// refused restore must leave it as it was.
	tmp, err := os.MkdirTemp(filepath.Dir(path), ".restore-current-")
	if err != nil {
		return nil, nil, err
	}
	defer os.RemoveAll(tmp)
	snapshot := filepath.Join(tmp, BackupDatabase)
	if err := sqlite.Backup(ctx, path, snapshot); err != nil {
		return nil, nil, err
	}
	st, err := sqlite.Open(ctx, sqlite.Config{Path: snapshot, Synchronous: "NORMAL"})
	if err != nil {
		return nil, nil, err
	}
	defer st.Close()
	var cand *candidate
	var keys []store.KeyRecord
	err = st.View(ctx, func(r store.Reader) error {
		var err error
		if keys, err = r.Keys(ctx); err != nil {
			return err
		}
		cp, err := r.LatestCheckpoint(ctx)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		// The note is verified with the others, as a file would be: a
		// database that lost its keys cannot vouch for its checkpoints.
		cand = &candidate{from: "the current database", note: cp.Note}
		return nil
	})
	return cand, keys, err
}

// checkpointVerifiers are the signed-note verifiers of every checkpoint key
// the registries name, active or not: a checkpoint given to a restore may
// predate a rotation.
func checkpointVerifiers(origin string, registry []store.KeyRecord) note.Verifiers {
	seen := map[string]bool{}
	var vs []note.Verifier
	for _, k := range registry {
		if k.Purpose != string(hsm.PurposeCheckpoint) || origin == "" {
			continue
		}
		pub, err := keyring.PublicFromPEM(k.PublicPEM)
		if err != nil {
			continue
		}
		vkey, err := hsm.NoteVerifierKey(origin, pub)
		if err != nil || seen[vkey] {
			continue
		}
		seen[vkey] = true
		if v, err := note.NewVerifier(vkey); err == nil {
			vs = append(vs, v)
		}
	}
	return note.VerifierList(vs...)
}

// openCheckpoint verifies a checkpoint note and returns its size and root.
func openCheckpoint(b []byte, origin string, vs note.Verifiers) (uint64, []byte, error) {
	if origin == "" {
		return 0, nil, errors.New("this log's origin is unknown (the backup holds no checkpoint; set audit.origin)")
	}
	if o := noteOrigin(b); o != origin {
		return 0, nil, fmt.Errorf("not a checkpoint of log %s: it names log %q (another log's checkpoint?)", origin, o)
	}
	n, err := note.Open(b, vs)
	if err != nil {
		return 0, nil, fmt.Errorf("not a checkpoint of log %s signed by one of its checkpoint keys: %w", origin, err)
	}
	var cp log.Checkpoint
	if _, err := cp.Unmarshal([]byte(n.Text)); err != nil {
		return 0, nil, fmt.Errorf("not a checkpoint: %w", err)
	}
	if cp.Origin != origin {
		return 0, nil, fmt.Errorf("a checkpoint of log %q, not of this log (%s)", cp.Origin, origin)
	}
	if len(cp.Hash) != 32 {
		return 0, nil, errors.New("the checkpoint's root is not 32 bytes")
	}
	return cp.Size, cp.Hash, nil
}

func noteOrigin(n []byte) string {
	line, _, _ := bytes.Cut(n, []byte("\n"))
	return string(line)
}

func readManifest(dir string) (*Manifest, error) {
	b, err := readSmall(filepath.Join(dir, BackupManifest))
	if err != nil {
		return nil, fmt.Errorf("%s is not a backup directory (breakglassd backup writes one): %w", dir, err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil || m.Format != 1 {
		return nil, fmt.Errorf("%s: not a backup manifest this broker reads", filepath.Join(dir, BackupManifest))
	}
	if m.Database != "" && (filepath.Base(m.Database) != m.Database || m.Database == "." || m.Database == "..") {
		return nil, fmt.Errorf("%s: the database must be a file in the backup directory", filepath.Join(dir, BackupManifest))
	}
	return &m, nil
}

// maxSmallFile bounds what is read of a manifest or a checkpoint note,
// which are a few hundred bytes: a hostile backup's /dev/zero is not read
// forever.
const maxSmallFile = 1 << 20

func readSmall(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSmallFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxSmallFile {
		return nil, fmt.Errorf("%s is over %d bytes: not a manifest or a checkpoint", path, maxSmallFile)
	}
	return b, nil
}

// readNote reads a checkpoint note file.
func readNote(path string) ([]byte, error) {
	b, err := readSmall(path)
	if err != nil {
		return nil, err
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, fmt.Errorf("%s is empty: not a checkpoint", path)
	}
	return b, nil
}

func fileDigest(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// writeFile writes r to a new owner-only file, synced before it returns.
func writeFile(path string, r io.Reader) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	return writeFile(dst, in)
}

// SQLite keeps a database in up to three files.
var databaseSuffixes = []string{"", "-wal", "-shm"}

func removeDatabase(path string) {
	for _, s := range databaseSuffixes {
		_ = os.Remove(path + s)
	}
}

// databaseExists says whether any of a database's files is there.
func databaseExists(path string) bool {
	for _, s := range databaseSuffixes {
		if _, err := os.Lstat(path + s); err == nil {
			return true
		}
	}
	return false
}

// moveDatabase renames a database's files, skipping those missing but the
// main file when needMain.
func moveDatabase(from, to string, needMain bool) error {
	for _, s := range databaseSuffixes {
		if err := os.Rename(from+s, to+s); err != nil && !(errors.Is(err, os.ErrNotExist) && (s != "" || !needMain)) {
			return err
		}
	}
	return nil
}
