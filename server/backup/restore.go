package backup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/server/config"
	"github.com/bgbroker/breakglass/server/daemon"
	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/store/sqlite"
)

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

// restore is one restore under way: what it checks the copy against, and
// how the copy is put in place once its entry is in the log.
type restore struct {
	cfg      *config.Config
	opts     RestoreOptions
	log      *slog.Logger
	res      *RestoreResult
	manifest *Manifest
	cands    []candidate
	registry []store.KeyRecord
	// restored is the configuration that opens the copy; install puts it
	// in place (nil when restored in place).
	restored *config.Config
	install  func() error
	// staging is the SQLite copy, removed unless installed.
	staging string
}

// Restore replaces the store with a backup, or checks a PostgreSQL store
// restored in place, after making sure the copy's log extends the newest
// checkpoint found: its own, the current database's, the backup's, and
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
	r := &restore{cfg: cfg, opts: opts, log: log, res: &RestoreResult{}, restored: cfg}
	defer r.cleanup()
	if err := r.readBackup(); err != nil {
		return nil, err
	}
	var err error
	if cfg.Store.Driver == config.DriverPostgres {
		err = r.inPlace()
	} else {
		err = r.stage(ctx)
	}
	if err != nil {
		return nil, err
	}
	if err := r.readCheckpointFiles(); err != nil {
		return nil, err
	}
	return r.finish(ctx)
}

// finish checks the copy against every checkpoint, records the restore in
// the copy's log and puts the copy in place.
func (r *restore) finish(ctx context.Context) (*RestoreResult, error) {
	problems, newestNote, err := checkCopy(ctx, r.restored, r.cands, r.registry, r.res, r.log)
	if err != nil {
		return nil, err
	}
	if len(problems) > 0 {
		if !r.opts.Force {
			return nil, &RefusedError{Problems: problems}
		}
		r.res.Forced = true
		r.log.Warn("forced restore: the copy does not extend the newest checkpoint", "problems", problems, "reason", r.opts.Reason, "operator", r.opts.Operator)
	}
	r.res.Entry, err = daemon.RecordRestore(ctx, r.restored, audit.StoreRestored{Operator: r.opts.Operator, Reason: r.opts.Reason,
		Forced: r.res.Forced, BackupSize: r.res.BackupSize, NewestCheckpoint: newestNote, NewestSize: r.res.Newest, Sources: r.res.Sources}, r.log)
	if err != nil {
		return nil, err
	}
	if r.install != nil {
		if err := r.install(); err != nil {
			return nil, err
		}
	}
	r.log.Info("store restored", "entries", r.res.BackupSize, "newest_checkpoint", r.res.Newest, "from", r.res.NewestFrom, "forced", r.res.Forced, "entry", r.res.Entry)
	return r.res, nil
}

// readBackup reads the backup directory's manifest and checkpoint.
func (r *restore) readBackup() error {
	if r.opts.From == "" {
		return nil
	}
	m, err := readManifest(r.opts.From)
	if err != nil {
		return err
	}
	r.manifest = m
	switch b, err := readNote(filepath.Join(r.opts.From, CheckpointFile)); {
	case err == nil:
		r.cands = append(r.cands, candidate{from: "the backup's checkpoint file", note: b})
	case !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("the backup's checkpoint file: %w", err)
	}
	return nil
}

// readCheckpointFiles reads the checkpoints given with --checkpoint.
func (r *restore) readCheckpointFiles() error {
	for _, f := range r.opts.Checkpoints {
		b, err := readNote(f)
		if err != nil {
			return fmt.Errorf("--checkpoint: %w", err)
		}
		r.cands = append(r.cands, candidate{from: f, note: b})
	}
	return nil
}

// inPlace checks a PostgreSQL store the operator restored with pg_restore.
func (r *restore) inPlace() error {
	if r.manifest != nil && r.manifest.Driver != config.DriverPostgres {
		return fmt.Errorf("%s is a %s backup; this broker's store is PostgreSQL", r.opts.From, r.manifest.Driver)
	}
	if len(r.opts.Checkpoints) == 0 && !r.opts.Force {
		return errors.New("a PostgreSQL store is restored in place with pg_restore, so its own checkpoints are the backup's: " +
			"give the newest checkpoint you hold with --checkpoint (saved with bgctl audit checkpoint before the restore, or an auditor's last verified one)")
	}
	r.res.Sources = append(r.res.Sources, "the database, restored in place")
	return nil
}

// stage copies a SQLite backup next to the database it replaces, checks
// the copy's digest, and reads the current database's checkpoint.
func (r *restore) stage(ctx context.Context) error {
	src, err := r.backupDatabase()
	if err != nil {
		return err
	}
	target := r.cfg.Store.SQLite.Path
	r.staging = target + ".restoring"
	// A staging copy an interrupted restore left is removed (a symlink
	// itself, never what it points to) and made anew.
	sqlite.RemoveFiles(r.staging)
	if err := copyFile(src, r.staging); err != nil {
		return fmt.Errorf("copying the backup's database to %s (remove it if no restore is running): %w", r.staging, err)
	}
	// The copy is what is checked and restored, so it is what the digest
	// must match.
	if sum, err := fileDigest(r.staging); err != nil {
		return err
	} else if sum != r.manifest.SHA256 {
		return fmt.Errorf("%s does not match its manifest's digest: the backup is damaged", src)
	}
	if err := r.readCurrent(ctx); err != nil {
		return err
	}
	c := *r.cfg
	c.Store.SQLite.Path = r.staging
	r.restored = &c
	r.install = func() error { return r.installSQLite(target) }
	return nil
}

// backupDatabase is the SQLite backup's database file, checked.
func (r *restore) backupDatabase() (string, error) {
	m := r.manifest
	switch {
	case m == nil:
		return "", errors.New("--from: the backup directory (breakglassd backup) to restore")
	case m.Driver != config.DriverSQLite:
		return "", fmt.Errorf("%s is a %s backup; this broker's store is SQLite", r.opts.From, m.Driver)
	case m.Database == "":
		return "", fmt.Errorf("%s names no database: the backup is damaged", filepath.Join(r.opts.From, ManifestFile))
	}
	src := filepath.Join(r.opts.From, m.Database)
	if fi, err := os.Stat(src); err != nil {
		return "", fmt.Errorf("the backup's database: %w", err)
	} else if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("the backup's database %s is not a regular file: the backup is damaged, or not one breakglassd backup wrote", src)
	}
	return src, nil
}

// readCurrent adds the checkpoint and key registry of the database the
// restore replaces.
func (r *restore) readCurrent(ctx context.Context) error {
	cur, keys, err := currentCheckpoint(ctx, r.cfg)
	switch {
	case errors.Is(err, os.ErrNotExist):
		r.res.Sources = append(r.res.Sources, "no current database")
	case err != nil:
		if len(r.opts.Checkpoints) == 0 && !r.opts.Force {
			return fmt.Errorf("the current database cannot be read (%v), so its newest checkpoint is unknown: "+
				"give the newest checkpoint you hold with --checkpoint (from another copy of the log, a checkpoint.signed event or an auditor), or --force with --reason", err)
		}
		r.res.Sources = append(r.res.Sources, "current database unreadable")
		r.log.Warn("the current database cannot be read; its checkpoints are not consulted", "err", err)
	default:
		r.registry = append(r.registry, keys...)
		if cur != nil {
			r.cands = append(r.cands, *cur)
		}
	}
	return nil
}

// installSQLite moves the current database aside (a write-ahead log left
// without its database too: SQLite would apply it to the restored one)
// and puts the copy in its place.
func (r *restore) installSQLite(target string) error {
	if sqlite.FilesExist(target) {
		stamp := time.Now().UTC().Format("20060102T150405Z")
		aside := fmt.Sprintf("%s.before-restore-%s", target, stamp)
		for i := 2; sqlite.FilesExist(aside); i++ {
			aside = fmt.Sprintf("%s.before-restore-%s-%d", target, stamp, i)
		}
		if err := sqlite.MoveFiles(target, aside, false); err != nil {
			return fmt.Errorf("moving the current database aside: %w", err)
		}
		r.res.MovedAside = aside
	}
	if err := sqlite.MoveFiles(r.staging, target, true); err != nil {
		return fmt.Errorf("putting the restored database in place (the previous one is %s): %w", r.res.MovedAside, err)
	}
	r.staging = ""
	return nil
}

// cleanup removes a staging copy that was not installed.
func (r *restore) cleanup() {
	if r.staging != "" {
		sqlite.RemoveFiles(r.staging)
	}
}
