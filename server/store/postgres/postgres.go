// Package postgres is the store for several broker replicas sharing one
// PostgreSQL database (replicated by the operator's own means). Queries are
// those of the SQLite store (server/store/sqlstore), through pgx's
// database/sql driver; the differences are the locking, the notifications
// and the error classes.
//
// Every write transaction takes one transaction-scoped advisory lock before
// it reads anything, so writers are serialized across all replicas exactly
// as they are inside one SQLite broker: the audit chain's head, the request
// rows and every quorum and issuance count are read and written by one
// writer at a time, and the log cannot fork. A break-glass broker writes a
// few entries a second at the worst of an outage; the lock costs nothing
// there and removes every cross-replica race by construction.
//
// Each commit that changed requests or appended entries sends a NOTIFY that
// every replica LISTENs to, so watch streams on one replica see changes made
// on another at once, without polling.
package postgres

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/store/sqlstore"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Config configures the PostgreSQL store.
type Config struct {
	// DSN is a libpq connection string or URL. Keep the password out of it:
	// pgx reads PGPASSWORD and the passfile (passfile=, ~/.pgpass).
	DSN string
	// MaxConns bounds the connections this replica opens (default 16).
	MaxConns int
}

// channel is the NOTIFY channel of committed changes.
const channel = "breakglass_changes"

// writeLock is the advisory lock every write transaction holds (an
// arbitrary constant: "bg" in ASCII, then the log's lock number).
const writeLock int64 = 0x6267_0001

// Store is the PostgreSQL store.
type Store struct {
	db  *sql.DB
	dsn string
	log *slog.Logger
}

var dialect = sqlstore.Dialect{Numbered: true, IsConflict: isConflict, LockSuffix: " FOR UPDATE SKIP LOCKED"}

// Open connects, applies migrations (one replica at a time, under a
// session advisory lock) and returns the store.
func Open(ctx context.Context, cfg Config, log *slog.Logger) (*Store, error) {
	if cfg.DSN == "" {
		return nil, errors.New("postgres: store.postgres.dsn is required")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pcfg, err := pgx.ParseConfig(cfg.DSN)
	if err != nil {
		// pgx's message may quote the DSN, password included.
		return nil, errors.New("postgres: store.postgres.dsn does not parse as a connection string or URL")
	}
	if pcfg.ConnectTimeout == 0 {
		pcfg.ConnectTimeout = 5 * time.Second
	}
	db := stdlib.OpenDB(*pcfg)
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = 16
	}
	db.SetMaxOpenConns(cfg.MaxConns)
	db.SetMaxIdleConns(cfg.MaxConns)
	db.SetConnMaxIdleTime(5 * time.Minute)
	s := &Store{db: db, dsn: cfg.DSN, log: log}
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("postgres: connecting to %s: %w", describe(pcfg), unavailable(err))
	}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// describe names the server without the password.
func describe(c *pgx.ConnConfig) string {
	return fmt.Sprintf("%s@%s:%d/%s", c.User, c.Host, c.Port, c.Database)
}

func (s *Store) migrate(ctx context.Context) error {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return err
	}
	locker, err := lock.NewPostgresSessionLocker()
	if err != nil {
		return err
	}
	p, err := goose.NewProvider(goose.DialectPostgres, s.db, sub, goose.WithSessionLocker(locker))
	if err != nil {
		return fmt.Errorf("postgres: migrations: %w", err)
	}
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("postgres: applying migrations: %w", err)
	}
	return s.Update(ctx, func(tx store.Tx) error { return tx.(*sqlstore.Tx).BackfillTree(ctx) })
}

// Update implements store.Store.
func (s *Store) Update(ctx context.Context, fn func(store.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("postgres: begin: %w", unavailable(err))
	}
	rollback := func(err error) error {
		_ = tx.Rollback()
		return unavailable(err)
	}
	// A panicking fn must not leave its transaction open: it holds the
	// write lock of every replica.
	defer func() {
		if p := recover(); p != nil {
			_ = tx.Rollback()
			panic(p)
		}
	}()
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, writeLock); err != nil {
		return fmt.Errorf("postgres: taking the write lock: %w", rollback(err))
	}
	var changed store.Change
	if err := fn(&sqlstore.Tx{Q: tx, D: dialect, Changed: &changed}); err != nil {
		return rollback(err)
	}
	if len(changed.Requests) > 0 || changed.Entries {
		payload, err := json.Marshal(changed)
		if err != nil {
			return rollback(err)
		}
		// NOTIFY is delivered at commit, and only if it commits. Payloads
		// are limited to 8000 bytes: a transaction touching more requests
		// than fit asks listeners to look at everything instead.
		if len(payload) > 7000 {
			payload, _ = json.Marshal(store.Change{Entries: changed.Entries, Resync: true})
		}
		if _, err := tx.ExecContext(ctx, `SELECT pg_notify($1, $2)`, channel, string(payload)); err != nil {
			return fmt.Errorf("postgres: notify: %w", rollback(err))
		}
	}
	if err := tx.Commit(); err != nil {
		// A commit whose reply was lost may or may not have happened: the
		// caller is told the database is unavailable and may retry (with
		// the same idempotency key, so a retried write is not doubled).
		return fmt.Errorf("postgres: commit: %w", unavailable(err))
	}
	return nil
}

// View implements store.Store: one consistent snapshot.
func (s *Store) View(ctx context.Context, fn func(store.Reader) error) error {
	tx, err := s.db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true, Isolation: sql.LevelRepeatableRead})
	if err != nil {
		return fmt.Errorf("postgres: begin read: %w", unavailable(err))
	}
	defer func() { _ = tx.Rollback() }()
	return unavailable(fn(&sqlstore.Tx{Q: tx, D: dialect}))
}

// Ping implements store.Pinger.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.db.PingContext(ctx); err != nil {
		return unavailable(err)
	}
	return nil
}

// Close implements store.Store.
func (s *Store) Close() error { return s.db.Close() }

// Watch implements store.Watcher: it LISTENs on its own connection,
// reconnecting with backoff when the connection is lost, and reports a
// resync after every reconnection, since notifications sent meanwhile are
// gone.
func (s *Store) Watch(ctx context.Context, fn func(store.Change)) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := s.listen(ctx, fn, func() { backoff = 100 * time.Millisecond })
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("postgres: lost the change notifications; reconnecting", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (s *Store) listen(ctx context.Context, fn func(store.Change), connected func()) error {
	conn, err := pgx.Connect(ctx, s.dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+channel); err != nil {
		return err
	}
	connected()
	fn(store.Change{Resync: true})
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		var c store.Change
		if err := json.Unmarshal([]byte(n.Payload), &c); err != nil {
			c = store.Change{Resync: true}
		}
		fn(c)
	}
}

func isConflict(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return false
	}
	// Class 23 is integrity constraint violations; P0001 is an exception
	// raised by the schema's own triggers (entries out of sequence).
	return strings.HasPrefix(pe.Code, "23") || pe.Code == "P0001"
}

// unavailable marks errors that mean the database cannot be reached, or
// went away mid-transaction, with store.ErrUnavailable.
func unavailable(err error) error {
	if err == nil || errors.Is(err, store.ErrUnavailable) || !isUnavailable(err) {
		return err
	}
	return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
}

func isUnavailable(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		// Connection exceptions, shutdowns, too many connections, a
		// standby that cannot take writes.
		return strings.HasPrefix(pe.Code, "08") || strings.HasPrefix(pe.Code, "57P") || pe.Code == "53300" || pe.Code == "25006"
	}
	var ce *pgconn.ConnectError
	var ne net.Error
	return errors.As(err, &ce) || errors.As(err, &ne) || errors.Is(err, driver.ErrBadConn) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, sql.ErrConnDone) ||
		pgconn.SafeToRetry(err) || strings.Contains(err.Error(), "conn closed")
}

// Explain runs fn in a write transaction that is rolled back and returns
// PostgreSQL's EXPLAIN of every statement it ran, with sequential scans,
// bitmap scans and sorts priced out so that each plan shows whether an
// index serves the query, in its order, at any table size.
func (s *Store) Explain(ctx context.Context, fn func(store.Tx) error) ([]sqlstore.Plan, error) {
	return sqlstore.Explain(ctx, s, sqlstore.Explainer{Prefix: "EXPLAIN ",
		Setup: []string{"SET LOCAL enable_seqscan = off", "SET LOCAL enable_bitmapscan = off", "SET LOCAL enable_sort = off"}}, fn)
}
