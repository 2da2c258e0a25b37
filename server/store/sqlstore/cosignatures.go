package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"math"
	"strconv"

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

// maxWitnessedScan bounds the cosignatures LatestWitnessed reads: the
// newest witnessed checkpoint is normally within the newest few rows, and
// a log whose witnesses have refused it for longer than this reads as
// unwitnessed rather than costing a scan of its history.
const maxWitnessedScan = 1 << 16

// LatestWitnessed implements store.Reader. It walks the primary key from
// the largest size down, a page at a time, and stops at the first size
// with a quorum of the given witnesses.
func (t *Tx) LatestWitnessed(ctx context.Context, witnesses []string, quorum int, minSize uint64) (uint64, error) {
	if len(witnesses) == 0 || quorum < 1 || quorum > len(witnesses) {
		return 0, store.ErrNotFound
	}
	counted := map[string]bool{}
	for _, w := range witnesses {
		counted[w] = true
	}
	const page = 256
	below := int64(math.MaxInt64) // sizes < below are still to read
	for scanned := 0; scanned < maxWitnessedScan; {
		rows, err := t.Q.QueryContext(ctx, t.q(`SELECT size, witness FROM cosignatures WHERE size >= ? AND size < ? ORDER BY size DESC LIMIT `+strconv.Itoa(page)),
			int64(minSize), below)
		if err != nil {
			return 0, err
		}
		var (
			sizes []int64
			by    = map[int64]int{}
		)
		n := 0
		for rows.Next() {
			var (
				size int64
				w    string
			)
			if err := rows.Scan(&size, &w); err != nil {
				rows.Close()
				return 0, err
			}
			n++
			if len(sizes) == 0 || sizes[len(sizes)-1] != size {
				sizes = append(sizes, size)
			}
			if counted[w] {
				by[size]++
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return 0, err
		}
		scanned += n
		// A full page may end inside a size: that size is read again,
		// whole, with the next page.
		complete := sizes
		if n == page && len(sizes) > 1 {
			complete = sizes[:len(sizes)-1]
		}
		for _, size := range complete {
			if by[size] >= quorum {
				return uint64(size), nil
			}
		}
		if n < page || len(complete) == 0 {
			return 0, store.ErrNotFound
		}
		below = complete[len(complete)-1]
	}
	return 0, store.ErrNotFound
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
