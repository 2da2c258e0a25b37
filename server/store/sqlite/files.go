package sqlite

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// The files of a database: SQLite keeps one in up to three.
var fileSuffixes = []string{"", "-wal", "-shm"}

// RemoveFiles removes a database's files (a symlink itself, never what it
// points to).
func RemoveFiles(path string) {
	for _, s := range fileSuffixes {
		_ = os.Remove(path + s)
	}
}

// FilesExist says whether any of a database's files is there.
func FilesExist(path string) bool {
	for _, s := range fileSuffixes {
		if _, err := os.Lstat(path + s); err == nil {
			return true
		}
	}
	return false
}

// MoveFiles renames a database's files, skipping those missing, except the
// main file when needMain.
func MoveFiles(from, to string, needMain bool) error {
	for _, s := range fileSuffixes {
		err := os.Rename(from+s, to+s)
		if err == nil || (errors.Is(err, os.ErrNotExist) && (s != "" || !needMain)) {
			continue
		}
		return err
	}
	return nil
}

// Snapshot is a consistent copy of a database, opened: reading it never
// writes to the original (opening that would fold in the write-ahead log a
// crashed broker left and apply migrations).
type Snapshot struct {
	*Store
	dir string
}

// OpenSnapshot copies the database at path into a temporary directory
// beside it and opens the copy. It returns os.ErrNotExist when there is
// no database; an empty file, or a write-ahead log without its database,
// is a database whose history is unknown, not a missing one.
func OpenSnapshot(ctx context.Context, path string) (*Snapshot, error) {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if wal, err := os.Stat(path + "-wal"); err == nil && wal.Size() > 0 {
			return nil, fmt.Errorf("%s is missing but its write-ahead log %s-wal is not", path, path)
		}
		return nil, os.ErrNotExist
	case err != nil:
		return nil, err
	case fi.Size() == 0:
		return nil, fmt.Errorf("%s is empty (0 bytes): truncated, or never written", path)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(path), ".snapshot-")
	if err != nil {
		return nil, err
	}
	copyPath := filepath.Join(tmp, filepath.Base(path))
	if err := Backup(ctx, path, copyPath); err != nil {
		_ = os.RemoveAll(tmp)
		return nil, err
	}
	st, err := Open(ctx, Config{Path: copyPath, Synchronous: "NORMAL"})
	if err != nil {
		_ = os.RemoveAll(tmp)
		return nil, err
	}
	return &Snapshot{Store: st, dir: tmp}, nil
}

// Close closes the copy and removes it.
func (s *Snapshot) Close() error {
	err := s.Store.Close()
	return errors.Join(err, os.RemoveAll(s.dir))
}
