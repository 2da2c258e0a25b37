// Package sqlite is the embedded store: one SQLite file in WAL mode, the
// broker's default. Writes go through a single connection, so write
// transactions are serialized in Go rather than by busy-waiting in SQLite,
// and they are committed in groups: one fsync makes a whole queue of
// writers durable.
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
	"sync"
	"sync/atomic"
	"time"

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
	Path string
	// Synchronous is FULL (default: a commit survives power loss) or NORMAL
	// (survives a process crash; faster).
	Synchronous string
	// WALLimit is the size past which the write-ahead log is checkpointed
	// and truncated between write batches, even while readers keep coming
	// (default 64 MiB).
	WALLimit int64
	// OnDamaged, when set, is called once if the full integrity check that
	// runs in the background after Open finds the database damaged.
	OnDamaged func(error)
	// OnChecked, when set, is called once that check found nothing, with
	// how long it took (it reads every page: operators see what a start
	// costs in the background).
	OnChecked func(time.Duration)
}

// DefaultWALLimit is Config.WALLimit's default.
const DefaultWALLimit = 64 << 20

// Store is the SQLite store.
type Store struct {
	writer     *sql.DB
	reader     *sql.DB
	writeStmts *sqlstore.StmtCache
	readStmts  *sqlstore.StmtCache
	// writes queues writers first come, first served for the one goroutine
	// that writes (database/sql would hand its connection to a random
	// waiter, letting an unlucky request wait many times the median).
	// readers bounds the read transactions running at once.
	readers chan struct{}
	writes  chan *write
	stop    chan struct{}
	stopped chan struct{}
	closed  sync.Once

	path string
	// checkDSN opens a read-only connection (Check); duringCheck, set by
	// tests, is called while a check is under way.
	checkDSN    string
	duringCheck atomic.Pointer[func()]
	walLimit    int64
	// retryAt holds off the next checkpoint attempt after one that failed.
	retryAt time.Time
	// damaged holds the error of a failed background integrity check:
	// from then on every transaction is refused.
	damaged   atomic.Pointer[error]
	onDamaged func(error)
	onChecked func(time.Duration)
	checking  sync.WaitGroup
	// checkpoints counts WAL truncations, for tests.
	checkpoints atomic.Int64
}

// write is one caller's transaction function and where its result goes.
type write struct {
	ctx  context.Context
	fn   func(store.Tx) error
	done chan result
}

type result struct {
	err   error
	panic any
}

// maxReaders bounds concurrent read transactions.
const maxReaders = 8

// maxBatch bounds how many writers one commit carries.
const maxBatch = 64

var dialect = sqlstore.Dialect{IsConflict: isConflict}

// classify marks a full disk with store.ErrNoSpace.
func classify(err error) error {
	var se *sqlite3.Error
	if err != nil && !errors.Is(err, store.ErrNoSpace) && errors.As(err, &se) && se.Code()&0xff == sqlite3lib.SQLITE_FULL {
		return fmt.Errorf("%w: %w", store.ErrNoSpace, err)
	}
	return err
}

func isConflict(err error) bool {
	var se *sqlite3.Error
	return errors.As(err, &se) && se.Code()&0xff == sqlite3lib.SQLITE_CONSTRAINT
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
	// Writes are one at a time (turn, below); the second connection only
	// prepares statements, which must not wait for the writing one.
	writer.SetMaxOpenConns(2)
	writer.SetMaxIdleConns(2)
	writer.SetConnMaxLifetime(0)
	walLimit := cfg.WALLimit
	if walLimit <= 0 {
		walLimit = DefaultWALLimit
	}
	s := &Store{writer: writer, writeStmts: sqlstore.NewStmtCache(writer),
		writes: make(chan *write, 1024), stop: make(chan struct{}), stopped: make(chan struct{}),
		path: cfg.Path, walLimit: walLimit, onDamaged: cfg.OnDamaged, onChecked: cfg.OnChecked}
	if err := s.check(ctx, cfg.Path); err != nil {
		writer.Close()
		return nil, err
	}
	go s.writeLoop()
	if err := s.migrate(ctx); err != nil {
		s.stopWriting()
		writer.Close()
		return nil, err
	}
	s.checkDSN = base + "?_pragma=query_only(1)" + common
	reader, err := sql.Open("sqlite", s.checkDSN)
	if err != nil {
		s.stopWriting()
		writer.Close()
		return nil, err
	}
	// Readers run at most maxReaders at a time, each holding one
	// connection, and a statement seen for the first time is prepared on
	// the pool, which takes a second connection for a moment: twice as
	// many connections as readers, so that preparing never waits for a
	// reader that is itself waiting to prepare. Every connection stays
	// open: the default of two idle ones had busy readers reopening the
	// file, and preparing their statements again, on most transactions.
	reader.SetMaxOpenConns(2 * maxReaders)
	reader.SetMaxIdleConns(2 * maxReaders)
	reader.SetConnMaxLifetime(0)
	s.reader, s.readStmts, s.readers = reader, sqlstore.NewStmtCache(reader), make(chan struct{}, maxReaders)
	if err := os.Chmod(cfg.Path, 0o600); err != nil {
		s.Close()
		return nil, err
	}
	s.checking.Add(1)
	go s.backgroundCheck(context.WithoutCancel(ctx))
	return s, nil
}

// check refuses, at start, a file that is not a sound SQLite database,
// at a cost independent of its size: the header, the schema, and one
// root-to-leaf path at each end of every table (a damaged page on those
// paths, or a schema that does not parse, is found here). The full
// quick_check, which reads every page, runs in the background once the
// store is open (backgroundCheck) and on `breakglassd db check` (Check).
func (s *Store) check(ctx context.Context, path string) error {
	var n int
	if err := s.writer.QueryRowContext(ctx, "SELECT COUNT(*) FROM sqlite_master").Scan(&n); err != nil {
		return fmt.Errorf("sqlite: %s cannot be read as a database (%w); restore it from a backup", path, err)
	}
	rows, err := s.writer.QueryContext(ctx, "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
	if err != nil {
		return fmt.Errorf("sqlite: %s cannot be read as a database (%w); restore it from a backup", path, err)
	}
	var tables []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			rows.Close()
			return fmt.Errorf("sqlite: %s is corrupted (%w); restore it from a backup", path, err)
		}
		tables = append(tables, name)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("sqlite: %s is corrupted (%w); restore it from a backup", path, err)
	}
	for _, t := range tables {
		for _, order := range []string{"ASC", "DESC"} {
			var probe sql.NullString
			err := s.writer.QueryRowContext(ctx, `SELECT typeof(rowid) FROM "`+strings.ReplaceAll(t, `"`, `""`)+`" ORDER BY rowid `+order+` LIMIT 1`).Scan(&probe)
			if err != nil && !errors.Is(err, sql.ErrNoRows) && !strings.Contains(err.Error(), "no such column: rowid") {
				return fmt.Errorf("sqlite: %s is corrupted (table %s: %w); restore it from a backup", path, t, err)
			}
		}
	}
	return nil
}

// Check runs SQLite's quick_check over the whole database (every page,
// every index): what start-up leaves to the background. It reads on a
// connection of its own: on one of the writer's, the writes waiting to
// prepare a statement waited for the whole check, and start-up with them.
func (s *Store) Check(ctx context.Context) error {
	db, err := sql.Open("sqlite", s.checkDSN)
	if err != nil {
		return fmt.Errorf("sqlite: %s cannot be checked (%w)", s.path, err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	rows, err := db.QueryContext(ctx, "PRAGMA quick_check")
	if err != nil {
		return fmt.Errorf("sqlite: %s cannot be checked (%w); restore it from a backup", s.path, err)
	}
	defer rows.Close()
	if f := s.duringCheck.Load(); f != nil {
		(*f)()
	}
	var problems []string
	for rows.Next() {
		var res string
		if err := rows.Scan(&res); err != nil {
			return fmt.Errorf("sqlite: %s cannot be checked (%w); restore it from a backup", s.path, err)
		}
		if res != "ok" {
			problems = append(problems, res)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("sqlite: %s is corrupted (%w); restore it from a backup", s.path, err)
	}
	if len(problems) > 0 {
		return fmt.Errorf("sqlite: %s is corrupted (quick_check: %s); restore it from a backup", s.path, strings.Join(problems, "; "))
	}
	return nil
}

// backgroundCheck runs the full check once after Open. A damaged database
// found then refuses every later transaction: the broker stops granting
// (and its health says why) rather than serve from, or write into, pages
// it cannot trust.
func (s *Store) backgroundCheck(ctx context.Context) {
	defer s.checking.Done()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-s.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	start := time.Now()
	err := s.Check(ctx)
	if err == nil && s.onChecked != nil {
		s.onChecked(time.Since(start))
	}
	if err == nil || ctx.Err() != nil {
		return
	}
	s.damaged.Store(&err)
	if s.onDamaged != nil {
		s.onDamaged(err)
	}
}

// Damaged returns the background check's finding, nil while none.
func (s *Store) Damaged() error {
	if e := s.damaged.Load(); e != nil {
		return *e
	}
	return nil
}

// truncateWAL checkpoints the whole write-ahead log into the database and
// truncates it, between write batches, once it has grown past the limit.
// Readers that keep arriving would otherwise keep the log from ever
// restarting (each holds a snapshot inside it), and it would grow without
// bound. The size is looked at after every batch (a stat): a check every
// so often let a loaded machine write several limits' worth between two
// looks. The checkpoint waits a moment for the readers in flight, which
// are short; when one is not, the next attempt waits a little, so that
// writers are not held up by a checkpoint that cannot finish.
func (s *Store) truncateWAL() {
	if time.Now().Before(s.retryAt) {
		return
	}
	fi, err := os.Stat(s.path + "-wal")
	if err != nil || fi.Size() < s.walLimit {
		return
	}
	ctx := context.Background()
	conn, err := s.writer.Conn(ctx)
	if err != nil {
		return
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "PRAGMA busy_timeout = 250"); err != nil {
		return
	}
	defer func() { _, _ = conn.ExecContext(ctx, "PRAGMA busy_timeout = 10000") }()
	var busy, logFrames, done int
	if err := conn.QueryRowContext(ctx, "PRAGMA wal_checkpoint(TRUNCATE)").Scan(&busy, &logFrames, &done); err == nil && busy == 0 {
		s.checkpoints.Add(1)
		return
	}
	s.retryAt = time.Now().Add(100 * time.Millisecond)
}

// WALTruncations is how many times the write-ahead log was truncated.
func (s *Store) WALTruncations() int64 { return s.checkpoints.Load() }

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

// Update implements store.Store. fn runs in its own savepoint of a
// transaction it may share with the writers queued behind or ahead of it;
// its error rolls back only its own work, and it returns only once the
// shared transaction has committed (or failed, taking fn's work with it).
func (s *Store) Update(ctx context.Context, fn func(store.Tx) error) error {
	if err := s.Damaged(); err != nil {
		return err
	}
	w := &write{ctx: ctx, fn: fn, done: make(chan result, 1)}
	select {
	case s.writes <- w:
	case <-s.stop:
		return errStoreClosed
	case <-ctx.Done():
		return fmt.Errorf("sqlite: waiting to write: %w", ctx.Err())
	}
	// Once queued, wait for the answer even if ctx ends: fn may already
	// be running, and its outcome is what the caller must learn.
	r := <-w.done
	if r.panic != nil {
		panic(r.panic)
	}
	return classify(r.err)
}

var errStoreClosed = errors.New("sqlite: the store is closed")

// writeLoop runs queued writes in batches until the store closes.
func (s *Store) writeLoop() {
	defer close(s.stopped)
	batch := make([]*write, 0, maxBatch)
	for {
		select {
		case w := <-s.writes:
			batch = append(batch[:0], w)
		case <-s.stop:
			for {
				select {
				case w := <-s.writes:
					w.done <- result{err: errStoreClosed}
				default:
					return
				}
			}
		}
	more:
		for len(batch) < maxBatch {
			select {
			case w := <-s.writes:
				batch = append(batch, w)
			default:
				break more
			}
		}
		s.runBatch(batch)
		s.truncateWAL()
	}
}

// runBatch runs each write in its own savepoint of one transaction and
// commits once. A savepoint that cannot be rolled back or released means
// SQLite dropped the transaction (an I/O error, a full disk): then every
// write of the batch fails, the ones that had succeeded included, since
// their work is gone.
func (s *Store) runBatch(batch []*write) {
	ctx := context.Background()
	res := make([]result, len(batch))
	finish := func() {
		for i, w := range batch {
			w.done <- res[i]
		}
	}
	failAll := func(err error) {
		for i := range res {
			if res[i].err == nil && res[i].panic == nil {
				res[i].err = err
			}
		}
		finish()
	}
	tx, err := s.writer.BeginTx(ctx, nil)
	if err != nil {
		failAll(fmt.Errorf("sqlite: begin: %w", err))
		return
	}
	q := s.writeStmts.Detached(tx)
	ok := 0
	for i, w := range batch {
		if err := w.ctx.Err(); err != nil {
			res[i].err = fmt.Errorf("sqlite: waiting to write: %w", err)
			continue
		}
		if _, err := tx.ExecContext(ctx, "SAVEPOINT w"); err != nil {
			_ = tx.Rollback()
			failAll(fmt.Errorf("sqlite: savepoint: %w", err))
			return
		}
		res[i] = run(w.fn, &sqlstore.Tx{Q: q, D: dialect})
		end := "RELEASE w"
		if res[i].err != nil || res[i].panic != nil {
			end = "ROLLBACK TO w; RELEASE w"
		} else {
			ok++
		}
		if _, err := tx.ExecContext(ctx, end); err != nil {
			_ = tx.Rollback()
			for j := range i {
				if res[j].err == nil && res[j].panic == nil {
					// Not wrapped: the later writer's error must not classify this one.
					res[j].err = fmt.Errorf("sqlite: the transaction was lost with a later writer's (%v)", err) //nolint:errorlint // see above
				}
			}
			if res[i].err == nil && res[i].panic == nil {
				res[i].err = fmt.Errorf("sqlite: release: %w", err)
			}
			failAll(fmt.Errorf("sqlite: the transaction was lost (%v)", err)) //nolint:errorlint // not the failed transactions' own error
			return
		}
	}
	if ok == 0 {
		_ = tx.Rollback()
		finish()
		return
	}
	if err := tx.Commit(); err != nil {
		failAll(fmt.Errorf("sqlite: commit: %w", err))
		return
	}
	finish()
}

// run calls fn, turning a panic into a result the caller re-raises in its
// own goroutine.
func run(fn func(store.Tx) error, tx store.Tx) (r result) {
	defer func() {
		if p := recover(); p != nil {
			r = result{panic: p}
		}
	}()
	return result{err: fn(tx)}
}

func (s *Store) stopWriting() {
	s.closed.Do(func() {
		close(s.stop)
		<-s.stopped
	})
}

// View implements store.Store.
func (s *Store) View(ctx context.Context, fn func(store.Reader) error) error {
	if err := s.Damaged(); err != nil {
		return err
	}
	select {
	case s.readers <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("sqlite: waiting to read: %w", ctx.Err())
	}
	defer func() { <-s.readers }()
	tx, err := s.reader.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return fmt.Errorf("sqlite: begin read: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	return fn(&sqlstore.Tx{Q: s.readStmts.In(tx), D: dialect})
}

// Close implements store.Store.
func (s *Store) Close() error {
	s.stopWriting()
	s.checking.Wait()
	var errs []error
	if s.reader != nil {
		errs = append(errs, s.readStmts.Close(), s.reader.Close())
	}
	errs = append(errs, s.writeStmts.Close(), s.writer.Close())
	return errors.Join(errs...)
}

// Explain runs fn in a write transaction that is rolled back and returns
// SQLite's EXPLAIN QUERY PLAN of every statement it ran.
func (s *Store) Explain(ctx context.Context, fn func(store.Tx) error) ([]sqlstore.Plan, error) {
	return sqlstore.Explain(ctx, s, sqlstore.Explainer{Prefix: "EXPLAIN QUERY PLAN "}, fn)
}
