package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"strconv"
	"strings"

	"github.com/bgbroker/breakglass/server/store"
)

// AddCosignature implements store.Tx.
func (t *Tx) AddCosignature(ctx context.Context, c store.Cosignature) error {
	_, err := t.exec(ctx, `INSERT INTO cosignatures (size, witness, line, signed_at, created_at) VALUES (?,?,?,?,?)
		ON CONFLICT (size, witness) DO UPDATE SET line = excluded.line, signed_at = excluded.signed_at, created_at = excluded.created_at
		WHERE excluded.signed_at > cosignatures.signed_at`,
		int64(c.Size), c.Witness, c.Line, nanos(c.SignedAt), nanos(c.CreatedAt))
	return err
}

// Cosignatures implements store.Reader.
func (t *Tx) Cosignatures(ctx context.Context, size uint64) ([]store.Cosignature, error) {
	rows, err := t.Q.QueryContext(ctx, t.q(`SELECT size, witness, line, signed_at, created_at FROM cosignatures WHERE size = ? ORDER BY witness`), int64(size))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.Cosignature
	for rows.Next() {
		c, err := scanCosignature(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// LatestCosignature implements store.Reader.
func (t *Tx) LatestCosignature(ctx context.Context, witness string) (store.Cosignature, error) {
	c, err := scanCosignature(t.Q.QueryRowContext(ctx, t.q(`SELECT size, witness, line, signed_at, created_at FROM cosignatures
		WHERE witness = ? ORDER BY size DESC LIMIT 1`), witness))
	if errors.Is(err, sql.ErrNoRows) {
		return c, store.ErrNotFound
	}
	return c, err
}

// LatestWitnessed implements store.Reader. It walks the primary key from
// the largest size down and stops at the first size with a quorum, which
// is normally the newest checkpoint.
func (t *Tx) LatestWitnessed(ctx context.Context, witnesses []string, quorum int, minSize uint64) (uint64, error) {
	if len(witnesses) == 0 || quorum < 1 || quorum > len(witnesses) {
		return 0, store.ErrNotFound
	}
	args := []any{int64(minSize)}
	for _, w := range witnesses {
		args = append(args, w)
	}
	var size int64
	err := t.Q.QueryRowContext(ctx, t.q(`SELECT size FROM cosignatures WHERE size >= ? AND witness IN (?`+strings.Repeat(",?", len(witnesses)-1)+`)
		GROUP BY size HAVING COUNT(*) >= `+strconv.Itoa(quorum)+` ORDER BY size DESC LIMIT 1`), args...).Scan(&size)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, store.ErrNotFound
	}
	return uint64(size), err
}

func scanCosignature(s scanner) (store.Cosignature, error) {
	var (
		c                   store.Cosignature
		size, signed, added int64
	)
	if err := s.Scan(&size, &c.Witness, &c.Line, &signed, &added); err != nil {
		return c, err
	}
	c.Size, c.SignedAt, c.CreatedAt = uint64(size), fromNanos(signed), fromNanos(added)
	return c, nil
}
