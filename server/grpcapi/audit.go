package grpcapi

import (
	"context"

	"github.com/bgbroker/breakglass/format/audit"
	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
)

// AuditConfig is what the audit service serves besides what the broker
// reads of the log.
type AuditConfig struct {
	// Origin is the log's origin.
	Origin string
	// LogKeys describes the log's active audit and checkpoint keys.
	LogKeys func() (audit, checkpoint *bgv1.PublicKey, err error)
}

// auditServer implements AuditService.
type auditServer struct {
	bgv1.UnimplementedAuditServiceServer
	s   *Server
	cfg AuditConfig
}

// maxEntriesPage bounds ListEntries and each read of WatchEntries.
const maxEntriesPage = 1000

func (a *auditServer) GetLogInfo(ctx context.Context, _ *bgv1.GetLogInfoRequest) (*bgv1.GetLogInfoResponse, error) {
	size, err := a.s.b.LogSize(ctx)
	if err != nil {
		return nil, a.s.toStatus(ctx, err)
	}
	ak, ck, err := a.cfg.LogKeys()
	if err != nil {
		return nil, a.s.toStatus(ctx, err)
	}
	return &bgv1.GetLogInfoResponse{Origin: a.cfg.Origin, Size: size, AuditKey: ak, CheckpointKey: ck}, nil
}

func (a *auditServer) GetCheckpoint(ctx context.Context, in *bgv1.GetCheckpointRequest) (*bgv1.GetCheckpointResponse, error) {
	cp, err := a.s.b.Checkpoint(ctx, in.Size, in.Witnessed)
	if err != nil {
		return nil, a.s.toStatus(ctx, err)
	}
	out := &bgv1.GetCheckpointResponse{Checkpoint: cp.Served, Size: cp.Size, RootHash: cp.Root, Origin: a.cfg.Origin}
	for _, c := range cp.Cosignatures {
		out.Cosignatures = append(out.Cosignatures, &bgv1.Cosignature{Witness: c.Witness, Time: ts(c.SignedAt)})
	}
	return out, nil
}

func (a *auditServer) GetInclusionProof(ctx context.Context, in *bgv1.GetInclusionProofRequest) (*bgv1.GetInclusionProofResponse, error) {
	p, err := a.s.b.InclusionProof(ctx, in.Index, in.TreeSize)
	if err != nil {
		return nil, a.s.toStatus(ctx, err)
	}
	return &bgv1.GetInclusionProofResponse{Index: p.Index, TreeSize: p.TreeSize, LeafHash: p.LeafHash, Hashes: p.Hashes}, nil
}

func (a *auditServer) GetConsistencyProof(ctx context.Context, in *bgv1.GetConsistencyProofRequest) (*bgv1.GetConsistencyProofResponse, error) {
	to, p, err := a.s.b.ConsistencyProof(ctx, in.FromSize, in.ToSize)
	if err != nil {
		return nil, a.s.toStatus(ctx, err)
	}
	return &bgv1.GetConsistencyProofResponse{FromSize: in.FromSize, ToSize: to, Hashes: p}, nil
}

func toEntry(r audit.Record) *bgv1.Entry {
	return &bgv1.Entry{Index: r.Index, Entry: r.Bytes, Signature: r.Signature, KeyId: r.KeyID, LeafHash: r.LeafHash}
}

func (a *auditServer) ListEntries(ctx context.Context, in *bgv1.ListEntriesRequest) (*bgv1.ListEntriesResponse, error) {
	size := int(in.PageSize)
	if size == 0 {
		size = 100
	}
	page, err := a.s.b.ListEntries(ctx, caller(ctx), in.Start, in.End, size)
	if err != nil {
		return nil, a.s.toStatus(ctx, err)
	}
	out := &bgv1.ListEntriesResponse{NextStart: page.NextStart, TreeSize: page.TreeSize}
	for _, rec := range page.Entries {
		out.Entries = append(out.Entries, toEntry(rec))
	}
	return out, nil
}

func (a *auditServer) WatchEntries(in *bgv1.WatchEntriesRequest, stream bgv1.AuditService_WatchEntriesServer) error {
	ctx := stream.Context()
	if err := a.s.b.RequireAuditor(caller(ctx)); err != nil {
		return a.s.toStatus(ctx, err)
	}
	next := in.Start
	for {
		// Take the wake-up channel before reading, so a commit between the
		// read and the wait is never missed.
		wake := a.s.b.Appended()
		recs, err := a.s.b.ReadEntries(ctx, next, maxEntriesPage)
		if err != nil {
			if ctx.Err() != nil {
				return nil //nolint:nilerr // the client went away: nobody to tell
			}
			return a.s.toStatus(ctx, err)
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
