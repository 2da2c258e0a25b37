package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"time"

	"github.com/bgbroker/breakglass/server/store"
)

const outboxCols = `event_id, sink, type, account, request_id, body, ack, created_at, next_attempt_at, attempts, state, last_error, delivered_at, acked_at`

func scanOutbox(rows *sql.Rows) ([]store.OutboxItem, error) {
	defer rows.Close()
	var out []store.OutboxItem
	for rows.Next() {
		var (
			it            store.OutboxItem
			ack           int
			created, next int64
			delivered     sql.NullInt64
			acked         sql.NullInt64
		)
		if err := rows.Scan(&it.EventID, &it.Sink, &it.Type, &it.Account, &it.RequestID, &it.Body, &ack, &created, &next,
			&it.Attempts, &it.State, &it.LastError, &delivered, &acked); err != nil {
			return nil, err
		}
		it.Ack, it.CreatedAt, it.NextAttempt, it.DeliveredAt, it.AckedAt = ack != 0, fromNanos(created), fromNanos(next), fromNull(delivered), fromNull(acked)
		out = append(out, it)
	}
	return out, rows.Err()
}

// Enqueue implements store.Tx.
func (t *Tx) Enqueue(ctx context.Context, items []store.OutboxItem) error {
	for _, it := range items {
		if _, err := t.exec(ctx, `INSERT INTO outbox (event_id, sink, type, account, request_id, body, ack, created_at, next_attempt_at)
			VALUES (?,?,?,?,?,?,?,?,?)`, it.EventID, it.Sink, it.Type, it.Account, it.RequestID, it.Body, boolInt(it.Ack),
			nanos(it.CreatedAt), nanos(it.CreatedAt)); err != nil {
			return err
		}
	}
	return nil
}

// ClaimOutbox implements store.Tx.
func (t *Tx) ClaimOutbox(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]store.OutboxItem, error) {
	rows, err := t.Q.QueryContext(ctx, t.q(`SELECT `+outboxCols+` FROM outbox
		WHERE state = 'pending' AND next_attempt_at <= ? AND lease_until <= ?
		ORDER BY next_attempt_at, created_at LIMIT `+strconv.Itoa(max(limit, 1))+t.D.LockSuffix), nanos(now), nanos(now))
	if err != nil {
		return nil, err
	}
	items, err := scanOutbox(rows)
	if err != nil {
		return nil, err
	}
	for _, it := range items {
		if _, err := t.exec(ctx, `UPDATE outbox SET lease_until = ? WHERE event_id = ? AND sink = ?`, nanos(now.Add(lease)), it.EventID, it.Sink); err != nil {
			return nil, err
		}
	}
	return items, nil
}

// FinishOutbox implements store.Tx.
func (t *Tx) FinishOutbox(ctx context.Context, it store.OutboxItem) error {
	_, err := t.exec(ctx, `UPDATE outbox SET attempts = ?, state = ?, last_error = ?, next_attempt_at = ?, delivered_at = ?, lease_until = 0
		WHERE event_id = ? AND sink = ? AND state = 'pending'`,
		it.Attempts, it.State, it.LastError, nanos(it.NextAttempt), nullNanos(it.DeliveredAt), it.EventID, it.Sink)
	return err
}

// OutboxFor implements store.Reader.
func (t *Tx) OutboxFor(ctx context.Context, requestID, eventType string) ([]store.OutboxItem, error) {
	rows, err := t.Q.QueryContext(ctx, t.q(`SELECT `+outboxCols+` FROM outbox WHERE request_id = ? AND type = ? ORDER BY created_at, sink`), requestID, eventType)
	if err != nil {
		return nil, err
	}
	return scanOutbox(rows)
}

// DeadLetters implements store.Reader.
func (t *Tx) DeadLetters(ctx context.Context, limit int) ([]store.OutboxItem, error) {
	rows, err := t.Q.QueryContext(ctx, `SELECT `+outboxCols+` FROM outbox WHERE state = 'dead' AND acked_at IS NULL ORDER BY created_at DESC LIMIT `+strconv.Itoa(max(limit, 1)))
	if err != nil {
		return nil, err
	}
	return scanOutbox(rows)
}

// DeadLetter implements store.Reader, by the primary key.
func (t *Tx) DeadLetter(ctx context.Context, eventID, sink string) (*store.OutboxItem, error) {
	rows, err := t.Q.QueryContext(ctx, t.q(`SELECT `+outboxCols+` FROM outbox WHERE event_id = ? AND sink = ?`), eventID, sink)
	if err != nil {
		return nil, err
	}
	items, err := scanOutbox(rows)
	if err != nil {
		return nil, err
	}
	if len(items) == 0 {
		return nil, fmt.Errorf("%w: no outbox row %s for sink %s", store.ErrNotFound, eventID, sink)
	}
	return &items[0], nil
}

// OutboxSummary implements store.Reader from the counters the write
// transactions keep (outbox_counts, where an acknowledged dead row counts
// as 'acked'), and the oldest pending row of each
// sink from the partial index of pending rows.
func (t *Tx) OutboxSummary(ctx context.Context) ([]store.SinkSummary, error) {
	rows, err := t.Q.QueryContext(ctx, `SELECT c.sink,
		SUM(CASE WHEN c.state = 'pending' THEN c.n ELSE 0 END),
		SUM(CASE WHEN c.state = 'delivered' THEN c.n ELSE 0 END),
		SUM(CASE WHEN c.state = 'dead' THEN c.n ELSE 0 END),
		SUM(CASE WHEN c.state = 'acked' THEN c.n ELSE 0 END),
		COALESCE((SELECT MIN(o.created_at) FROM outbox o WHERE o.state = 'pending' AND o.sink = c.sink), 0)
		FROM outbox_counts c GROUP BY c.sink HAVING SUM(c.n) > 0 ORDER BY c.sink`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.SinkSummary
	for rows.Next() {
		var s store.SinkSummary
		var oldest int64
		if err := rows.Scan(&s.Sink, &s.Pending, &s.Delivered, &s.Dead, &s.Acked, &oldest); err != nil {
			return nil, err
		}
		if oldest != 0 {
			s.OldestPending = fromNanos(oldest)
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// PruneOutbox implements store.Tx: one batch of delivered rows delivered
// before the cut-off, and of dead rows acknowledged before it, oldest
// first, each found through its partial index. Pending rows and dead rows
// nobody acknowledged are never touched.
func (t *Tx) PruneOutbox(ctx context.Context, before time.Time, limit int) (int, error) {
	lim := strconv.Itoa(max(limit, 1))
	total := 0
	for _, q := range []string{
		`DELETE FROM outbox WHERE (event_id, sink) IN (SELECT event_id, sink FROM outbox
			WHERE state = 'delivered' AND delivered_at < ? ORDER BY delivered_at LIMIT ` + lim + `)`,
		`DELETE FROM outbox WHERE (event_id, sink) IN (SELECT event_id, sink FROM outbox
			WHERE state = 'dead' AND acked_at IS NOT NULL AND acked_at < ? ORDER BY acked_at LIMIT ` + lim + `)`,
	} {
		res, err := t.exec(ctx, q, nanos(before))
		if err != nil {
			return total, err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return total, err
		}
		total += int(n)
	}
	return total, nil
}

// AckDeadLetter implements store.Tx.
func (t *Tx) AckDeadLetter(ctx context.Context, eventID, sink string, at time.Time) error {
	res, err := t.exec(ctx, `UPDATE outbox SET acked_at = ? WHERE event_id = ? AND sink = ? AND state = 'dead' AND acked_at IS NULL`, nanos(at), eventID, sink)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n != 1 {
		return fmt.Errorf("%w: no unacknowledged dead letter %s for sink %s", store.ErrNotFound, eventID, sink)
	}
	return nil
}
