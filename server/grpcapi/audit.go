package grpcapi

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bgbroker/breakglass/format/audit"
	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
	"github.com/bgbroker/breakglass/server/broker"
	"github.com/bgbroker/breakglass/server/checkpoint"
	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/witness"
)

// AuditConfig is what the audit service serves besides the broker's store.
type AuditConfig struct {
	Checkpoints *checkpoint.Checkpointer
	// LogKeys describes the log's active audit and checkpoint keys.
	LogKeys func() (audit, checkpoint *bgv1.PublicKey, err error)
	Store   store.Store
	// Witnesses, when set, name the witnesses whose quorum makes a
	// checkpoint witnessed.
	Witnesses *Witnesses
}

// Witnesses are the witnesses' identities in the store and their quorum.
type Witnesses struct {
	IDs    []string
	Quorum int
}

// auditServer implements AuditService.
type auditServer struct {
	bgv1.UnimplementedAuditServiceServer
	s   *Server
	cfg AuditConfig
}

// maxEntriesPage bounds ListEntries and each read of WatchEntries.
const maxEntriesPage = 1000

func (a *auditServer) auditorOnly(ctx context.Context) error {
	if !a.s.b.Policy().IsAuditor(caller(ctx)) {
		return a.s.toStatus(ctx, &broker.Error{Kind: broker.KindPermission, Msg: "only auditors may read audit entries"})
	}
	return nil
}

// storeStatus gives the audit service's store and checkpoint errors their
// kind and public message; toStatus, the one mapping, turns them into a
// status and logs the detail.
func (a *auditServer) storeStatus(ctx context.Context, err error) error {
	var se *checkpoint.SignError
	kinded := func(k broker.Kind, msg string) error { return &broker.Error{Kind: k, Msg: msg, Err: err} }
	switch {
	case errors.Is(err, store.ErrNotFound):
		err = kinded(broker.KindOutOfRange, "the log does not hold that entry or tree size yet")
	case errors.Is(err, store.ErrUnavailable):
		err = kinded(broker.KindUnavailable, "this replica cannot reach its database; try again, here or on another replica")
	case errors.Is(err, checkpoint.ErrEmpty):
		err = kinded(broker.KindState, "the log is empty: there is no checkpoint yet")
	case errors.As(err, &se):
		err = kinded(broker.KindUnavailable, "the HSM cannot sign a checkpoint covering the latest entries right now; try again shortly or ask for the size of an earlier checkpoint")
	}
	return a.s.toStatus(ctx, err)
}

func (a *auditServer) GetLogInfo(ctx context.Context, _ *bgv1.GetLogInfoRequest) (*bgv1.GetLogInfoResponse, error) {
	var size uint64
	err := a.cfg.Store.View(ctx, func(r store.Reader) error {
		h, err := r.Head(ctx)
		size = h.Size
		return err
	})
	if err != nil {
		return nil, a.storeStatus(ctx, err)
	}
	ak, ck, err := a.cfg.LogKeys()
	if err != nil {
		return nil, a.storeStatus(ctx, err)
	}
	return &bgv1.GetLogInfoResponse{Origin: a.cfg.Checkpoints.Origin(), Size: size, AuditKey: ak, CheckpointKey: ck}, nil
}

func (a *auditServer) GetCheckpoint(ctx context.Context, in *bgv1.GetCheckpointRequest) (*bgv1.GetCheckpointResponse, error) {
	var (
		cp  store.Checkpoint
		err error
	)
	switch {
	case in.Witnessed && in.Size != 0:
		return nil, status.Error(codes.InvalidArgument, "ask for a size or for the newest witnessed checkpoint, not both")
	case in.Witnessed:
		w := a.cfg.Witnesses
		if w == nil {
			return nil, status.Error(codes.FailedPrecondition, "this broker has no witnesses configured (audit.witnesses)")
		}
		var size uint64
		err = a.cfg.Store.View(ctx, func(r store.Reader) (err error) {
			size, err = r.LatestWitnessed(ctx, w.IDs, w.Quorum, 0)
			return err
		})
		if errors.Is(err, store.ErrNotFound) {
			return nil, status.Errorf(codes.FailedPrecondition, "no checkpoint carries %d witness cosignatures yet (bgctl report shows the witnesses)", w.Quorum)
		}
		if err == nil {
			cp, err = a.cfg.Checkpoints.At(ctx, size)
		}
	case in.Size == 0:
		cp, err = a.cfg.Checkpoints.Latest(ctx)
	default:
		cp, err = a.cfg.Checkpoints.At(ctx, in.Size)
	}
	if err != nil {
		return nil, a.storeStatus(ctx, err)
	}
	var (
		served []byte
		cos    []store.Cosignature
	)
	err = a.cfg.Store.View(ctx, func(r store.Reader) (err error) {
		served, cos, err = witness.Cosigned(ctx, r, cp)
		return err
	})
	if err != nil {
		return nil, a.storeStatus(ctx, err)
	}
	out := &bgv1.GetCheckpointResponse{Checkpoint: served, Size: cp.Size, RootHash: cp.Root, Origin: a.cfg.Checkpoints.Origin()}
	for _, c := range cos {
		out.Cosignatures = append(out.Cosignatures, &bgv1.Cosignature{Witness: c.Witness, Time: ts(c.SignedAt)})
	}
	return out, nil
}

// treeSize resolves 0 to the latest checkpoint's size.
func (a *auditServer) treeSize(ctx context.Context, size uint64) (uint64, error) {
	if size != 0 {
		return size, nil
	}
	cp, err := a.cfg.Checkpoints.Latest(ctx)
	if err != nil {
		return 0, err
	}
	return cp.Size, nil
}

func (a *auditServer) GetInclusionProof(ctx context.Context, in *bgv1.GetInclusionProofRequest) (*bgv1.GetInclusionProofResponse, error) {
	size, err := a.treeSize(ctx, in.TreeSize)
	if err != nil {
		return nil, a.storeStatus(ctx, err)
	}
	if in.Index >= size {
		return nil, status.Errorf(codes.OutOfRange, "entry %d is not in a tree of size %d", in.Index, size)
	}
	var out bgv1.GetInclusionProofResponse
	err = a.cfg.Store.View(ctx, func(r store.Reader) error {
		p, err := r.InclusionProof(ctx, in.Index, size)
		if err != nil {
			return err
		}
		es, err := r.Entries(ctx, in.Index, in.Index+1)
		if err != nil || len(es) != 1 {
			return fmt.Errorf("reading entry %d: %w", in.Index, errors.Join(err, store.ErrNotFound))
		}
		out = bgv1.GetInclusionProofResponse{Index: in.Index, TreeSize: size, LeafHash: es[0].LeafHash, Hashes: p}
		return nil
	})
	if err != nil {
		return nil, a.storeStatus(ctx, err)
	}
	return &out, nil
}

func (a *auditServer) GetConsistencyProof(ctx context.Context, in *bgv1.GetConsistencyProofRequest) (*bgv1.GetConsistencyProofResponse, error) {
	to, err := a.treeSize(ctx, in.ToSize)
	if err != nil {
		return nil, a.storeStatus(ctx, err)
	}
	if in.FromSize > to {
		return nil, status.Errorf(codes.InvalidArgument, "from_size %d is larger than to_size %d", in.FromSize, to)
	}
	var p [][]byte
	err = a.cfg.Store.View(ctx, func(r store.Reader) error {
		var err error
		p, err = r.ConsistencyProof(ctx, in.FromSize, to)
		return err
	})
	if err != nil {
		return nil, a.storeStatus(ctx, err)
	}
	return &bgv1.GetConsistencyProofResponse{FromSize: in.FromSize, ToSize: to, Hashes: p}, nil
}

func toEntry(r audit.Record) *bgv1.Entry {
	return &bgv1.Entry{Index: r.Index, Entry: r.Bytes, Signature: r.Signature, KeyId: r.KeyID, LeafHash: r.LeafHash}
}

func (a *auditServer) ListEntries(ctx context.Context, in *bgv1.ListEntriesRequest) (*bgv1.ListEntriesResponse, error) {
	if err := a.auditorOnly(ctx); err != nil {
		return nil, err
	}
	size := int(in.PageSize)
	if size == 0 {
		size = 100
	}
	var out bgv1.ListEntriesResponse
	err := a.cfg.Store.View(ctx, func(r store.Reader) error {
		h, err := r.Head(ctx)
		if err != nil {
			return err
		}
		end := in.End
		if end == 0 || end > h.Size {
			end = h.Size
		}
		stop := min(end, in.Start+uint64(size))
		recs, err := r.Entries(ctx, in.Start, stop)
		if err != nil {
			return err
		}
		for _, rec := range recs {
			out.Entries = append(out.Entries, toEntry(rec))
		}
		out.NextStart, out.TreeSize = max(stop, in.Start), h.Size
		return nil
	})
	if err != nil {
		return nil, a.storeStatus(ctx, err)
	}
	return &out, nil
}

func (a *auditServer) WatchEntries(in *bgv1.WatchEntriesRequest, stream bgv1.AuditService_WatchEntriesServer) error {
	ctx := stream.Context()
	if err := a.auditorOnly(ctx); err != nil {
		return err
	}
	next := in.Start
	for {
		// Take the wake-up channel before reading, so a commit between the
		// read and the wait is never missed.
		wake := a.s.b.Appended()
		var recs []audit.Record
		err := a.cfg.Store.View(ctx, func(r store.Reader) error {
			var err error
			recs, err = r.Entries(ctx, next, next+maxEntriesPage)
			return err
		})
		if err != nil {
			if ctx.Err() != nil {
				return nil //nolint:nilerr // the client went away: nobody to tell
			}
			return a.storeStatus(ctx, err)
		}
		for _, rec := range recs {
			if err := stream.Send(&bgv1.WatchEntriesResponse{Entry: toEntry(rec)}); err != nil {
				return nil //nolint:nilerr // the stream is broken: nobody to tell
			}
			next = rec.Index + 1
		}
		if len(recs) == maxEntriesPage {
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
		}
	}
}
