package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
)

// Backup writes a consistent copy of the database at dbPath to outPath
// while brokers may be writing to it: VACUUM INTO reads one snapshot of
// the WAL database through its own read-only connection, so the copy holds
// whole transactions only and never blocks the writer. outPath must not
// exist.
func Backup(ctx context.Context, dbPath, outPath string) error {
	if _, err := os.Stat(dbPath); err != nil {
		return fmt.Errorf("sqlite: the database to back up: %w", err)
	}
	if _, err := os.Stat(outPath); err == nil {
		return fmt.Errorf("sqlite: %s exists; a backup never overwrites a file", outPath)
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	// VACUUM INTO fills an empty file: created here owner-only, so the copy
	// of the log and the grants is never readable by others, even briefly.
	f, err := os.OpenFile(outPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_ = f.Close()
	db, err := sql.Open("sqlite", "file:"+(&url.URL{Path: dbPath}).EscapedPath()+"?mode=ro&_pragma=busy_timeout(10000)")
	if err != nil {
		_ = os.Remove(outPath)
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	if _, err := db.ExecContext(ctx, "VACUUM INTO ?", outPath); err != nil {
		_ = os.Remove(outPath)
		return fmt.Errorf("sqlite: backing up %s: %w", dbPath, classify(err))
	}
	return nil
}
