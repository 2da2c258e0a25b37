// Package sqlite is the embedded store: one SQLite file in WAL mode, the
// broker's default. Writes go through a single connection, so write
// transactions are serialized in Go rather than by busy-waiting in SQLite.
package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/pressly/goose/v3"
	sqlite3 "modernc.org/sqlite"
	sqlite3lib "modernc.org/sqlite/lib"

	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/store/sqlstore"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Config configures the SQLite store.
type Config struct {
	// Path is the database file.
	Path string `yaml:"path"`
	// Synchronous is FULL (default: a commit survives power loss) or NORMAL
	// (survives a process crash; faster).
	Synchronous string `yaml:"synchronous"`
}

// Store is the SQLite store.
type Store struct {
	writer *sql.DB
	reader *sql.DB
}

var dialect = sqlstore.Dialect{IsConflict: isConflict}

func isConflict(err error) bool {
	var se *sqlite3.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqlite3lib.SQLITE_CONSTRAINT:
			return true
		}
	}
	return false
}

// Open opens (creating if needed) the database, checks it, and applies
// migrations.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Path == "" {
		return nil, errors.New("sqlite: store.path is required")
	}
	sync := strings.ToUpper(cfg.Synchronous)
	switch sync {
	case "":
		sync = "FULL"
	case "FULL", "NORMAL":
	default:
		return nil, fmt.Errorf("sqlite: synchronous must be FULL or NORMAL, not %q", cfg.Synchronous)
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Path), 0o700); err != nil {
		return nil, err
	}
	// Create the file owner-only before SQLite does, so the -wal and -shm
	// files SQLite derives from it are owner-only too.
	if f, err := os.OpenFile(cfg.Path, os.O_RDWR|os.O_CREATE, 0o600); err == nil {
		_ = f.Close()
	}
	if fi, err := os.Stat(cfg.Path); err == nil && fi.Size() > 0 && fi.Size() < 512 {
		return nil, fmt.Errorf("sqlite: %s is %d bytes: truncated or not a database; restore it from a backup", cfg.Path, fi.Size())
	}
	base := "file:" + (&url.URL{Path: cfg.Path}).EscapedPath()
	common := "&_pragma=busy_timeout(10000)&_pragma=foreign_keys(1)&_pragma=synchronous(" + sync + ")"
	writer, err := sql.Open("sqlite", base+"?_txlock=immediate&_pragma=journal_mode(WAL)"+common)
	if err != nil {
		return nil, err
	}
	writer.SetMaxOpenConns(1)
	writer.SetMaxIdleConns(1)
	writer.SetConnMaxLifetime(0)
	s := &Store{writer: writer}
	if err := s.check(ctx, cfg.Path); err != nil {
		writer.Close()
		return nil, err
	}
	if err := s.migrate(ctx); err != nil {
		writer.Close()
		return nil, err
	}
	reader, err := sql.Open("sqlite", base+"?_pragma=query_only(1)"+common)
	if err != nil {
		writer.Close()
		return nil, err
	}
	reader.SetMaxOpenConns(8)
	s.reader = reader
	if err := os.Chmod(cfg.Path, 0o600); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// check refuses a file that is not a sound SQLite database, so a corrupted
// store is reported at start rather than served.
func (s *Store) check(ctx context.Context, path string) error {
	var res string
	if err := s.writer.QueryRowContext(ctx, "PRAGMA quick_check").Scan(&res); err != nil {
		return fmt.Errorf("sqlite: %s cannot be read as a database (%v); restore it from a backup", path, err)
	}
	if res != "ok" {
		return fmt.Errorf("sqlite: %s is corrupted (quick_check: %s); restore it from a backup", path, res)
	}
	return nil
}

func (s *Store) migrate(ctx context.Context) error {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return err
	}
	p, err := goose.NewProvider(goose.DialectSQLite3, s.writer, sub)
	if err != nil {
		return fmt.Errorf("sqlite: migrations: %w", err)
	}
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("sqlite: applying migrations: %w", err)
	}
	return s.Update(ctx, func(tx store.Tx) error { return tx.(*sqlstore.Tx).BackfillTree(ctx) })
}

// Update implements store.Store.
func (s *Store) Update(ctx context.Context, fn func(store.Tx) error) error {
	tx, err := s.writer.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("sqlite: begin: %w", err)
	}
	if err := fn(&sqlstore.Tx{Q: tx, D: dialect}); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("sqlite: commit: %w", err)
	}
	return nil
}

// View implements store.Store.
func (s *Store) View(ctx context.Context, fn func(store.Reader) error) error {
	tx, err := s.reader.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return fmt.Errorf("sqlite: begin read: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	return fn(&sqlstore.Tx{Q: tx, D: dialect})
}

// Close implements store.Store.
func (s *Store) Close() error {
	var errs []error
	if s.reader != nil {
		errs = append(errs, s.reader.Close())
	}
	errs = append(errs, s.writer.Close())
	return errors.Join(errs...)
}
