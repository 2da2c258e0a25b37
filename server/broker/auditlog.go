package broker

import (
	"context"
	"errors"
	"fmt"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/server/checkpoint"
	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/witness"
)

// Checkpoints is what the broker reads of the checkpointer to serve the
// log: its checkpoints, signed on demand for a size not yet covered.
type Checkpoints interface {
	Latest(ctx context.Context) (store.Checkpoint, error)
	At(ctx context.Context, size uint64) (store.Checkpoint, error)
}

// ServedCheckpoint is a checkpoint as auditors get it: the signed note
// with every cosignature stored for it appended, and those cosignatures.
type ServedCheckpoint struct {
	store.Checkpoint
	Served       []byte
	Cosignatures []store.Cosignature
}

// InclusionProof proves the entry at Index is in the tree of TreeSize.
type InclusionProof struct {
	Index, TreeSize uint64
	LeafHash        []byte
	Hashes          [][]byte
}

// EntriesPage is one page of the log and the size of the log it was read
// from.
type EntriesPage struct {
	Entries   []audit.Record
	NextStart uint64
	TreeSize  uint64
}

// RequireAuditor refuses a caller the policy does not name as an auditor.
func (b *Broker) RequireAuditor(caller string) error {
	if !b.Policy().IsAuditor(caller) {
		return denied("only auditors may read audit entries")
	}
	return nil
}

// auditReadErr gives the log's store and checkpoint errors their kind and
// a message for the caller.
func auditReadErr(err error) error {
	var se *checkpoint.SignError
	kinded := func(k Kind, msg string) error { return &Error{Kind: k, Msg: msg, Err: err} }
	switch {
	case err == nil:
		return nil
	case errors.Is(err, store.ErrNotFound):
		return kinded(KindOutOfRange, "the log does not hold that entry or tree size yet")
	case errors.Is(err, store.ErrUnavailable):
		return kinded(KindUnavailable, "this replica cannot reach its database; try again, here or on another replica")
	case errors.Is(err, checkpoint.ErrEmpty):
		return kinded(KindState, "the log is empty: there is no checkpoint yet")
	case errors.As(err, &se):
		return kinded(KindUnavailable, "the HSM cannot sign a checkpoint covering the latest entries right now; try again shortly or ask for the size of an earlier checkpoint")
	}
	return err
}

func (b *Broker) checkpoints() (Checkpoints, error) {
	if b.cfg.Checkpoints == nil {
		return nil, errors.New("broker: no checkpointer configured")
	}
	return b.cfg.Checkpoints, nil
}

// LogSize is the number of entries in the log.
func (b *Broker) LogSize(ctx context.Context) (uint64, error) {
	var size uint64
	err := b.cfg.Store.View(ctx, func(r store.Reader) error {
		h, err := r.Head(ctx)
		size = h.Size
		return err
	})
	return size, auditReadErr(err)
}

// Checkpoint returns the checkpoint of size, the latest when size is 0, or
// with witnessed the newest one the witnesses' quorum cosigned; each with
// its cosignatures.
func (b *Broker) Checkpoint(ctx context.Context, size uint64, witnessed bool) (*ServedCheckpoint, error) {
	cps, err := b.checkpoints()
	if err != nil {
		return nil, err
	}
	var cp store.Checkpoint
	switch {
	case witnessed && size != 0:
		return nil, invalid("ask for a size or for the newest witnessed checkpoint, not both")
	case witnessed:
		cp, err = b.witnessedCheckpoint(ctx, cps)
	case size == 0:
		cp, err = cps.Latest(ctx)
	default:
		cp, err = cps.At(ctx, size)
	}
	if err != nil {
		return nil, auditReadErr(err)
	}
	out := &ServedCheckpoint{Checkpoint: cp}
	err = b.cfg.Store.View(ctx, func(r store.Reader) (err error) {
		out.Served, out.Cosignatures, err = witness.Cosigned(ctx, r, cp)
		return err
	})
	if err != nil {
		return nil, auditReadErr(err)
	}
	return out, nil
}

// witnessedCheckpoint is the newest checkpoint the witnesses' quorum
// cosigned.
func (b *Broker) witnessedCheckpoint(ctx context.Context, cps Checkpoints) (store.Checkpoint, error) {
	w := b.cfg.Witnesses
	if w == nil {
		return store.Checkpoint{}, wrongState("this broker has no witnesses configured (audit.witnesses)")
	}
	var size uint64
	err := b.cfg.Store.View(ctx, func(r store.Reader) (err error) {
		size, err = r.LatestWitnessed(ctx, w.IDs, w.Quorum, 0)
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		return store.Checkpoint{}, wrongState("no checkpoint carries %d witness cosignatures yet (bgctl report shows the witnesses)", w.Quorum)
	}
	if err != nil {
		return store.Checkpoint{}, err
	}
	return cps.At(ctx, size)
}

// treeSize resolves 0 to the latest checkpoint's size.
func (b *Broker) treeSize(ctx context.Context, size uint64) (uint64, error) {
	if size != 0 {
		return size, nil
	}
	cps, err := b.checkpoints()
	if err != nil {
		return 0, err
	}
	cp, err := cps.Latest(ctx)
	if err != nil {
		return 0, auditReadErr(err)
	}
	return cp.Size, nil
}

// InclusionProof proves the entry at index is in the tree of treeSize, the
// latest checkpoint's when 0.
func (b *Broker) InclusionProof(ctx context.Context, index, treeSize uint64) (*InclusionProof, error) {
	size, err := b.treeSize(ctx, treeSize)
	if err != nil {
		return nil, err
	}
	if index >= size {
		return nil, newErr(KindOutOfRange, "entry %d is not in a tree of size %d", index, size)
	}
	var out InclusionProof
	err = b.cfg.Store.View(ctx, func(r store.Reader) error {
		p, err := r.InclusionProof(ctx, index, size)
		if err != nil {
			return err
		}
		es, err := r.Entries(ctx, index, index+1)
		if err != nil || len(es) != 1 {
			return fmt.Errorf("reading entry %d: %w", index, errors.Join(err, store.ErrNotFound))
		}
		out = InclusionProof{Index: index, TreeSize: size, LeafHash: es[0].LeafHash, Hashes: p}
		return nil
	})
	if err != nil {
		return nil, auditReadErr(err)
	}
	return &out, nil
}

// ConsistencyProof proves the tree of size from is a prefix of the tree of
// size to, the latest checkpoint's when 0; it returns the resolved to.
func (b *Broker) ConsistencyProof(ctx context.Context, from, to uint64) (uint64, [][]byte, error) {
	to, err := b.treeSize(ctx, to)
	if err != nil {
		return 0, nil, err
	}
	if from > to {
		return 0, nil, invalid("from_size %d is larger than to_size %d", from, to)
	}
	var p [][]byte
	err = b.cfg.Store.View(ctx, func(r store.Reader) (err error) {
		p, err = r.ConsistencyProof(ctx, from, to)
		return err
	})
	if err != nil {
		return 0, nil, auditReadErr(err)
	}
	return to, p, nil
}

// ListEntries returns up to limit entries from start, stopping before end
// (the log's end when 0 or beyond it), to an auditor.
func (b *Broker) ListEntries(ctx context.Context, caller string, start, end uint64, limit int) (*EntriesPage, error) {
	if err := b.RequireAuditor(caller); err != nil {
		return nil, err
	}
	var out EntriesPage
	err := b.cfg.Store.View(ctx, func(r store.Reader) error {
		h, err := r.Head(ctx)
		if err != nil {
			return err
		}
		if end == 0 || end > h.Size {
			end = h.Size
		}
		stop := min(end, start+uint64(limit))
		if out.Entries, err = r.Entries(ctx, start, stop); err != nil {
			return err
		}
		out.NextStart, out.TreeSize = max(stop, start), h.Size
		return nil
	})
	if err != nil {
		return nil, auditReadErr(err)
	}
	return &out, nil
}

// ReadEntries returns up to limit entries from start, for a stream whose
// caller RequireAuditor admitted.
func (b *Broker) ReadEntries(ctx context.Context, start uint64, limit int) ([]audit.Record, error) {
	var recs []audit.Record
	err := b.cfg.Store.View(ctx, func(r store.Reader) (err error) {
		recs, err = r.Entries(ctx, start, start+uint64(limit))
		return err
	})
	return recs, auditReadErr(err)
}
