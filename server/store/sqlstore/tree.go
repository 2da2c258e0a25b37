package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/bgbroker/breakglass/server/store"
)

// The Merkle tree over the audit entries is stored the way
// golang.org/x/mod/sumdb/tlog lays it out: each complete subtree hash at
// its storage index. Appending entry n stores about two hashes; roots and
// proofs read O(log n) of them. tlog hashes are RFC 6962 hashes, so proofs
// verify with any RFC 6962 verifier.

type hashReader struct {
	ctx context.Context
	t   *Tx
}

// ReadHashes implements tlog.HashReader.
func (h hashReader) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	if len(indexes) == 0 {
		return nil, nil
	}
	args := make([]any, len(indexes))
	for i, x := range indexes {
		args[i] = x
	}
	rows, err := h.t.Q.QueryContext(h.ctx, h.t.q(`SELECT idx, hash FROM tree_hashes WHERE idx IN (?`+strings.Repeat(",?", len(indexes)-1)+`)`), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	got := make(map[int64]tlog.Hash, len(indexes))
	for rows.Next() {
		var idx int64
		var b []byte
		if err := rows.Scan(&idx, &b); err != nil {
			return nil, err
		}
		if len(b) != tlog.HashSize {
			return nil, fmt.Errorf("tree hash %d has %d bytes", idx, len(b))
		}
		var hh tlog.Hash
		copy(hh[:], b)
		got[idx] = hh
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		hh, ok := got[x]
		if !ok {
			return nil, fmt.Errorf("tree hash %d is missing", x)
		}
		out[i] = hh
	}
	return out, nil
}

// storeTreeHashes records the tree hashes that entry n with leafHash adds.
func (t *Tx) storeTreeHashes(ctx context.Context, n uint64, leafHash []byte) error {
	var lh tlog.Hash
	if len(leafHash) != tlog.HashSize {
		return fmt.Errorf("leaf hash of entry %d has %d bytes", n, len(leafHash))
	}
	copy(lh[:], leafHash)
	hashes, err := tlog.StoredHashesForRecordHash(int64(n), lh, hashReader{ctx, t})
	if err != nil {
		return err
	}
	start := tlog.StoredHashIndex(0, int64(n))
	for i, h := range hashes {
		if _, err := t.exec(ctx, `INSERT INTO tree_hashes (idx, hash) VALUES (?, ?)`, start+int64(i), h[:]); err != nil {
			return err
		}
	}
	return nil
}

func (t *Tx) checkSize(ctx context.Context, size uint64) error {
	head, err := t.Head(ctx)
	if err != nil {
		return err
	}
	if size > head.Size {
		return fmt.Errorf("%w: the log has %d entries, not %d", store.ErrNotFound, head.Size, size)
	}
	return nil
}

// TreeHash implements store.Reader.
func (t *Tx) TreeHash(ctx context.Context, size uint64) ([]byte, error) {
	if err := t.checkSize(ctx, size); err != nil {
		return nil, err
	}
	h, err := tlog.TreeHash(int64(size), hashReader{ctx, t})
	if err != nil {
		return nil, err
	}
	return h[:], nil
}

// InclusionProof implements store.Reader.
func (t *Tx) InclusionProof(ctx context.Context, index, size uint64) ([][]byte, error) {
	if index >= size {
		return nil, fmt.Errorf("%w: entry %d is not in a tree of size %d", store.ErrNotFound, index, size)
	}
	if err := t.checkSize(ctx, size); err != nil {
		return nil, err
	}
	p, err := tlog.ProveRecord(int64(size), int64(index), hashReader{ctx, t})
	if err != nil {
		return nil, err
	}
	return hashesToBytes(p), nil
}

// ConsistencyProof implements store.Reader.
func (t *Tx) ConsistencyProof(ctx context.Context, from, to uint64) ([][]byte, error) {
	if from > to {
		return nil, fmt.Errorf("%w: size %d is larger than %d", store.ErrNotFound, from, to)
	}
	if err := t.checkSize(ctx, to); err != nil {
		return nil, err
	}
	if from == 0 || from == to {
		return [][]byte{}, nil
	}
	p, err := tlog.ProveTree(int64(to), int64(from), hashReader{ctx, t})
	if err != nil {
		return nil, err
	}
	return hashesToBytes(p), nil
}

func hashesToBytes(hs []tlog.Hash) [][]byte {
	out := make([][]byte, len(hs))
	for i := range hs {
		out[i] = append([]byte(nil), hs[i][:]...)
	}
	return out
}

// AddCheckpoint implements store.Tx. A checkpoint at a size already
// stored is left as it is (checkpoints are deterministic but their
// signatures are not).
func (t *Tx) AddCheckpoint(ctx context.Context, cp store.Checkpoint) error {
	_, err := t.exec(ctx, `INSERT INTO checkpoints (size, root, note, created_at) VALUES (?,?,?,?) ON CONFLICT (size) DO NOTHING`,
		int64(cp.Size), cp.Root, cp.Note, nanos(cp.CreatedAt))
	return err
}

// Checkpoint implements store.Reader.
func (t *Tx) Checkpoint(ctx context.Context, size uint64) (store.Checkpoint, error) {
	return t.checkpoint(ctx, `SELECT size, root, note, created_at FROM checkpoints WHERE size = ?`, int64(size))
}

// LatestCheckpoint implements store.Reader.
func (t *Tx) LatestCheckpoint(ctx context.Context) (store.Checkpoint, error) {
	return t.checkpoint(ctx, `SELECT size, root, note, created_at FROM checkpoints ORDER BY size DESC LIMIT 1`)
}

func (t *Tx) checkpoint(ctx context.Context, query string, args ...any) (store.Checkpoint, error) {
	var (
		cp       store.Checkpoint
		size, at int64
	)
	err := t.Q.QueryRowContext(ctx, t.q(query), args...).Scan(&size, &cp.Root, &cp.Note, &at)
	if errors.Is(err, sql.ErrNoRows) {
		return cp, store.ErrNotFound
	}
	if err != nil {
		return cp, err
	}
	cp.Size, cp.CreatedAt = uint64(size), fromNanos(at)
	return cp, nil
}

// queryTreeHashesStored is how many tree hashes are stored, read as one
// past the highest index: the hashes are written in index order, from 0,
// and never deleted, so that is their count, found at the end of the
// primary key. COUNT(*) read the whole table (two rows per entry, 79 MB at
// a million entries) at every start: most of two seconds when those pages
// were not in the page cache.
const queryTreeHashesStored = `SELECT COALESCE(MAX(idx) + 1, 0) FROM tree_hashes`

// BackfillTree stores the tree hashes of entries written before the tree
// was kept (a store created by an earlier version). It runs at open, so it
// reads only the ends of the log and of the tree: a hash missing inside the
// tree is found by the proofs that need it, which then fail.
func (t *Tx) BackfillTree(ctx context.Context) error {
	head, err := t.Head(ctx)
	if err != nil || head.Size == 0 {
		return err
	}
	var stored int64
	if err := t.Q.QueryRowContext(ctx, queryTreeHashesStored).Scan(&stored); err != nil {
		return err
	}
	want := tlog.StoredHashCount(int64(head.Size))
	if stored == want {
		return nil
	}
	if stored != 0 {
		return fmt.Errorf("the audit tree has %d of %d hashes: the store is damaged; restore it from a backup", stored, want)
	}
	const batch = 1000
	for from := uint64(0); from < head.Size; from += batch {
		recs, err := t.Entries(ctx, from, min(from+batch, head.Size))
		if err != nil {
			return err
		}
		for _, r := range recs {
			if err := t.storeTreeHashes(ctx, r.Index, r.LeafHash); err != nil {
				return err
			}
		}
	}
	return nil
}
