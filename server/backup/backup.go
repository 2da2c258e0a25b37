// Package backup writes consistent copies of the broker's store with their
// latest signed checkpoint, and restores them only when the copy's log
// extends the newest checkpoint anyone holds, so that a restore cannot
// silently undo revocations. The restore itself is written to the log.
package backup

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
	"time"

	"github.com/bgbroker/breakglass/server/config"
	"github.com/bgbroker/breakglass/server/daemon"
	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/store/sqlite"
)

// The files of a backup directory.
const (
	DatabaseFile   = "broker.db"
	CheckpointFile = "checkpoint"
	ManifestFile   = "manifest.json"
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
	if err := newBackupDir(dir); err != nil {
		return nil, err
	}
	// A backup that fails leaves no part of itself behind, so the
	// directory can be used again.
	defer func() {
		if err != nil {
			_ = os.Remove(filepath.Join(dir, ManifestFile))
			_ = os.Remove(filepath.Join(dir, CheckpointFile))
			sqlite.RemoveFiles(filepath.Join(dir, DatabaseFile))
		}
	}()
	m := &Manifest{Format: 1, CreatedAt: time.Now().UTC(), BrokerVersion: daemon.Version(), Driver: cfg.Store.Driver}
	copyCfg := cfg
	if cfg.Store.Driver != config.DriverPostgres {
		m.Driver, m.Database = config.DriverSQLite, DatabaseFile
		out := filepath.Join(dir, DatabaseFile)
		if err := sqlite.Backup(ctx, cfg.Store.SQLite.Path, out); err != nil {
			return nil, err
		}
		c := *cfg
		c.Store.SQLite.Path = out
		copyCfg = &c
	}
	cp, err := latestCheckpoint(ctx, copyCfg, m, log)
	if err != nil {
		return nil, err
	}
	if len(cp.Note) == 0 && m.Entries > 0 {
		log.Warn("the log has no signed checkpoint yet, so this backup holds none; a serving broker signs one within audit.checkpoint_interval of a write")
	}
	if len(cp.Note) > 0 {
		m.CheckpointSize, m.Origin = cp.Size, noteOrigin(cp.Note)
		if err := writeFile(filepath.Join(dir, CheckpointFile), bytes.NewReader(cp.Note)); err != nil {
			return nil, err
		}
	}
	if err := writeManifest(dir, m); err != nil {
		return nil, err
	}
	log.Info("backup written", "dir", dir, "entries", m.Entries, "checkpoint", m.CheckpointSize)
	return m, nil
}

// newBackupDir creates dir for a backup, refusing one that holds a backup
// or part of one.
func newBackupDir(dir string) error {
	if dir == "" {
		return errors.New("name the new directory to write the backup to (--out)")
	}
	for _, name := range []string{ManifestFile, DatabaseFile, CheckpointFile} {
		if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
			return fmt.Errorf("%s already holds a backup (or part of one: %s); back up into a new directory", dir, name)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating the backup directory: %w", err)
	}
	return nil
}

// latestCheckpoint reads the copy's length into m and returns its latest
// checkpoint (none yet is no error).
func latestCheckpoint(ctx context.Context, cfg *config.Config, m *Manifest, log *slog.Logger) (store.Checkpoint, error) {
	st, err := daemon.OpenStore(ctx, cfg, log)
	if err != nil {
		return store.Checkpoint{}, err
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
	return cp, errors.Join(err, st.Close())
}

// writeManifest writes m, with the copy's digest, last: a directory with
// a manifest holds a whole backup.
func writeManifest(dir string, m *Manifest) (err error) {
	if m.Database != "" {
		if m.SHA256, err = fileDigest(filepath.Join(dir, m.Database)); err != nil {
			return err
		}
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return writeFile(filepath.Join(dir, ManifestFile), bytes.NewReader(append(b, '\n')))
}

func readManifest(dir string) (*Manifest, error) {
	b, err := readSmall(filepath.Join(dir, ManifestFile))
	if err != nil {
		return nil, fmt.Errorf("%s is not a backup directory (breakglassd backup writes one): %w", dir, err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil || m.Format != 1 {
		return nil, fmt.Errorf("%s: not a backup manifest this broker reads", filepath.Join(dir, ManifestFile))
	}
	if m.Database != "" && (filepath.Base(m.Database) != m.Database || m.Database == "." || m.Database == "..") {
		return nil, fmt.Errorf("%s: the database must be a file in the backup directory", filepath.Join(dir, ManifestFile))
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
