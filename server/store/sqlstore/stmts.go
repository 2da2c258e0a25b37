package sqlstore

import (
	"context"
	"database/sql"
	"sync"
)

// StmtCache prepares each distinct query once per database handle, and
// database/sql then keeps one prepared statement per connection: the
// broker's queries are a fixed set, and parsing and planning them again
// in every transaction cost more than running them.
type StmtCache struct {
	db    *sql.DB
	mu    sync.Mutex
	stmts map[string]*sql.Stmt
}

// maxStmts bounds the cache; queries past it run unprepared. Only queries
// whose text varies (IN lists) can get near it.
const maxStmts = 512

// NewStmtCache caches statements prepared on db.
func NewStmtCache(db *sql.DB) *StmtCache {
	return &StmtCache{db: db, stmts: map[string]*sql.Stmt{}}
}

// In returns a Querier that runs tx's queries through the cache.
func (c *StmtCache) In(tx *sql.Tx) Querier { return cachedTx{tx: tx, c: c} }

// Detached is In for a transaction shared by several callers: their
// queries are not interrupted when one caller's context ends, because
// SQLite answers an interrupted write by rolling back the whole
// transaction, everyone's work with it.
func (c *StmtCache) Detached(tx *sql.Tx) Querier { return cachedTx{tx: tx, c: c, detached: true} }

// Close closes every cached statement.
func (c *StmtCache) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for q, s := range c.stmts {
		_ = s.Close()
		delete(c.stmts, q)
	}
	return nil
}

func (c *StmtCache) get(ctx context.Context, query string) *sql.Stmt {
	c.mu.Lock()
	s, ok := c.stmts[query]
	c.mu.Unlock()
	if ok {
		return s
	}
	s, err := c.db.PrepareContext(ctx, query)
	if err != nil {
		// Run it unprepared, where its error surfaces as usual.
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.stmts[query]; ok {
		_ = s.Close()
		return old
	}
	if len(c.stmts) >= maxStmts {
		_ = s.Close()
		return nil
	}
	c.stmts[query] = s
	return s
}

type cachedTx struct {
	tx       *sql.Tx
	c        *StmtCache
	detached bool
}

func (q cachedTx) ctx(ctx context.Context) context.Context {
	if q.detached {
		return context.WithoutCancel(ctx)
	}
	return ctx
}

func (q cachedTx) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	ctx = q.ctx(ctx)
	if s := q.c.get(ctx, query); s != nil {
		return q.tx.StmtContext(ctx, s).ExecContext(ctx, args...)
	}
	return q.tx.ExecContext(ctx, query, args...)
}

func (q cachedTx) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	ctx = q.ctx(ctx)
	if s := q.c.get(ctx, query); s != nil {
		return q.tx.StmtContext(ctx, s).QueryContext(ctx, args...)
	}
	return q.tx.QueryContext(ctx, query, args...)
}

func (q cachedTx) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	ctx = q.ctx(ctx)
	if s := q.c.get(ctx, query); s != nil {
		return q.tx.StmtContext(ctx, s).QueryRowContext(ctx, args...)
	}
	return q.tx.QueryRowContext(ctx, query, args...)
}
