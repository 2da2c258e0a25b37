package sqlstore

import (
	"context"
	"database/sql"
	"strconv"
	"time"

	"github.com/bgbroker/breakglass/server/store"
)

const outboxCols = `event_id, sink, type, account, request_id, body, ack, created_at, next_attempt_at, attempts, state, last_error, delivered_at`

func scanOutbox(rows *sql.Rows) ([]store.OutboxItem, error) {
	defer rows.Close()
	var out []store.OutboxItem
	for rows.Next() {
		var (
			it            store.OutboxItem
			ack           int
			created, next int64
			delivered     sql.NullInt64
		)
		if err := rows.Scan(&it.EventID, &it.Sink, &it.Type, &it.Account, &it.RequestID, &it.Body, &ack, &created, &next,
			&it.Attempts, &it.State, &it.LastError, &delivered); err != nil {
			return nil, err
		}
		it.Ack, it.CreatedAt, it.NextAttempt, it.DeliveredAt = ack != 0, fromNanos(created), fromNanos(next), fromNull(delivered)
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
	rows, err := t.Q.QueryContext(ctx, `SELECT `+outboxCols+` FROM outbox WHERE state = 'dead' ORDER BY created_at DESC LIMIT `+strconv.Itoa(max(limit, 1)))
	if err != nil {
		return nil, err
	}
	return scanOutbox(rows)
}

// OutboxSummary implements store.Reader.
func (t *Tx) OutboxSummary(ctx context.Context) ([]store.SinkSummary, error) {
	rows, err := t.Q.QueryContext(ctx, `SELECT sink,
		SUM(CASE WHEN state = 'pending' THEN 1 ELSE 0 END),
		SUM(CASE WHEN state = 'delivered' THEN 1 ELSE 0 END),
		SUM(CASE WHEN state = 'dead' THEN 1 ELSE 0 END),
		COALESCE(MIN(CASE WHEN state = 'pending' THEN created_at END), 0)
		FROM outbox GROUP BY sink ORDER BY sink`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.SinkSummary
	for rows.Next() {
		var s store.SinkSummary
		var oldest int64
		if err := rows.Scan(&s.Sink, &s.Pending, &s.Delivered, &s.Dead, &oldest); err != nil {
			return nil, err
		}
		if oldest != 0 {
			s.OldestPending = fromNanos(oldest)
		}
		out = append(out, s)
	}
	return out, rows.Err()
}
