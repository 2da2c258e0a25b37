package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/bgbroker/breakglass/server/store"
)

// Plan is the engine's query plan for one statement a store method ran.
type Plan struct {
	Query string
	// Lines are the plan's lines as the engine prints them (EXPLAIN QUERY
	// PLAN's details on SQLite, EXPLAIN's lines on PostgreSQL).
	Lines []string
}

// Explainer is what an engine tells Explain.
type Explainer struct {
	// Prefix turns a statement into its plan: "EXPLAIN QUERY PLAN " or
	// "EXPLAIN ".
	Prefix string
	// Setup runs first in the transaction (PostgreSQL: SET LOCAL
	// enable_seqscan = off and the like, so that a plan shows whether an
	// index can serve the query rather than what a planner prefers on a
	// table of ten rows).
	Setup []string
}

var errExplained = errors.New("sqlstore: explained; rolled back")

// Explain runs fn in a write transaction of s that is always rolled back,
// records every statement fn ran, and returns the engine's plan of each,
// asked in the same transaction with the same arguments. It is how the
// conformance suite asserts that what runs per tick or per call searches an
// index instead of scanning history.
func Explain(ctx context.Context, s store.Store, e Explainer, fn func(store.Tx) error) ([]Plan, error) {
	var plans []Plan
	err := s.Update(ctx, func(tx store.Tx) error {
		st, ok := tx.(*Tx)
		if !ok {
			return fmt.Errorf("sqlstore: Explain needs a SQL store, not %T", tx)
		}
		for _, q := range e.Setup {
			if _, err := st.Q.ExecContext(ctx, q); err != nil {
				return err
			}
		}
		rec := &recorder{Querier: st.Q}
		if err := fn(&Tx{Q: rec, D: st.D}); err != nil {
			return err
		}
		for _, s := range rec.stmts {
			lines, err := planOf(ctx, st.Q, e.Prefix+s.query, s.args)
			if err != nil {
				return fmt.Errorf("explaining %s: %w", s.query, err)
			}
			plans = append(plans, Plan{Query: s.query, Lines: lines})
		}
		return errExplained
	})
	if !errors.Is(err, errExplained) {
		return nil, err
	}
	return plans, nil
}

func planOf(ctx context.Context, q Querier, query string, args []any) ([]string, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return nil, err
	}
	var out []string
	for rows.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return nil, err
		}
		// The last column holds the plan's text on both engines.
		switch v := vals[len(vals)-1].(type) {
		case string:
			out = append(out, strings.TrimSpace(v))
		case []byte:
			out = append(out, strings.TrimSpace(string(v)))
		default:
			out = append(out, fmt.Sprint(v))
		}
	}
	return out, rows.Err()
}

type stmt struct {
	query string
	args  []any
}

// recorder passes statements through and remembers them.
type recorder struct {
	Querier
	stmts []stmt
}

func (r *recorder) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	r.stmts = append(r.stmts, stmt{query, args})
	return r.Querier.ExecContext(ctx, query, args...)
}

func (r *recorder) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	r.stmts = append(r.stmts, stmt{query, args})
	return r.Querier.QueryContext(ctx, query, args...)
}

func (r *recorder) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	r.stmts = append(r.stmts, stmt{query, args})
	return r.Querier.QueryRowContext(ctx, query, args...)
}
