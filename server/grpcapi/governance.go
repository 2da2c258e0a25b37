package grpcapi

import (
	"context"
	"time"

	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
	"github.com/bgbroker/breakglass/server/broker"
	"github.com/bgbroker/breakglass/server/store"
)

// governanceServer implements GovernanceService.
type governanceServer struct {
	bgv1.UnimplementedGovernanceServiceServer
	s *Server
}

func postReviewProto(pr store.PostReview, now time.Time) *bgv1.PostReview {
	return &bgv1.PostReview{Id: pr.ID, RequestId: pr.RequestID, Account: pr.Account, Requester: pr.Requester, OpenTime: ts(pr.OpenedAt),
		DueTime: ts(pr.DueAt), CloseTime: ts(pr.ClosedAt), ClosedBy: pr.ClosedBy, Notes: pr.Notes, Excluded: pr.Excluded,
		Overdue: pr.ClosedAt.IsZero() && !now.Before(pr.DueAt)}
}

func (g *governanceServer) ListPostReviews(ctx context.Context, in *bgv1.ListPostReviewsRequest) (*bgv1.ListPostReviewsResponse, error) {
	prs, err := g.s.b.PostReviews(ctx, caller(ctx), !in.All)
	if err != nil {
		return nil, g.s.toStatus(ctx, err)
	}
	out := &bgv1.ListPostReviewsResponse{}
	now := g.s.b.Now()
	for _, pr := range prs {
		out.Reviews = append(out.Reviews, postReviewProto(pr, now))
	}
	return out, nil
}

func (g *governanceServer) ClosePostReview(ctx context.Context, in *bgv1.ClosePostReviewRequest) (*bgv1.ClosePostReviewResponse, error) {
	signed, err := g.s.signedFrom(ctx, in.Statement, in.Signature)
	if err != nil {
		return nil, err
	}
	pr, rec, err := g.s.b.ClosePostReview(ctx, caller(ctx), in.Id, in.Notes, signed)
	if err != nil {
		return nil, g.s.toStatus(ctx, err)
	}
	return &bgv1.ClosePostReviewResponse{Review: postReviewProto(*pr, g.s.b.Now()), Entry: ref(rec)}, nil
}

func (g *governanceServer) GetReport(ctx context.Context, in *bgv1.GetReportRequest) (*bgv1.GetReportResponse, error) {
	rep, err := g.s.b.Report(ctx, caller(ctx), broker.ReportPage{Size: int(in.PageSize), Token: in.PageToken})
	if err != nil {
		return nil, g.s.toStatus(ctx, err)
	}
	out := &bgv1.GetReportResponse{Time: ts(rep.Time), NextPageToken: rep.NextPageToken}
	for _, r := range rep.ActiveGrants {
		out.ActiveGrants = append(out.ActiveGrants, toProto(r))
	}
	for _, t := range rep.TokensOutstanding {
		out.Tokens = append(out.Tokens, &bgv1.OutstandingToken{Jti: t.JTI, RequestId: t.RequestID, Account: t.Account, Subject: t.Subject,
			Audience: t.Audience, ExpireTime: ts(t.ExpiresAt), Drill: t.Drill})
	}
	for _, pr := range rep.OverdueReviews {
		out.OverdueReviews = append(out.OverdueReviews, postReviewProto(pr, rep.Time))
	}
	for _, pr := range rep.OpenReviews {
		out.OpenReviews = append(out.OpenReviews, postReviewProto(pr, rep.Time))
	}
	for _, a := range rep.Accounts {
		out.Accounts = append(out.Accounts, &bgv1.AccountStatus{Account: a.Account, DrillEvery: optDur(a.DrillEvery), LastDrillTime: ts(a.LastDrill),
			DrillOverdue: a.DrillOverdue, ReviewEvery: optDur(a.ReviewEvery), LastAttestationTime: ts(a.LastAttestation),
			AttestationOverdue: a.AttestationOverdue, LastUseTime: ts(a.LastUse), Unused: a.Unused})
	}
	for _, d := range rep.DeadLetters {
		out.DeadLetters = append(out.DeadLetters, &bgv1.DeadLetter{EventId: d.EventID, Sink: d.Sink, Type: d.Type, Account: d.Account,
			RequestId: d.RequestID, Attempts: int32(d.Attempts), LastError: d.LastError, CreateTime: ts(d.CreatedAt)})
	}
	for _, o := range rep.Outbox {
		out.Outbox = append(out.Outbox, &bgv1.SinkStatus{Sink: o.Sink, Pending: int32(o.Pending), Delivered: int32(o.Delivered), Dead: int32(o.Dead),
			OldestPendingTime: ts(o.OldestPending)})
	}
	for _, c := range rep.ExpiringCerts {
		out.ExpiringCerts = append(out.ExpiringCerts, &bgv1.ExpiringCert{Principal: c.Principal, Serial: c.Serial, ExpireTime: ts(c.NotAfter)})
	}
	for _, w := range rep.Witnesses {
		out.Witnesses = append(out.Witnesses, &bgv1.WitnessStatus{Name: w.Name, Url: w.URL, CosignedSize: w.CosignedSize, CosignedTime: ts(w.CosignedAt),
			LastError: w.LastError, Failures: uint32(min(w.Failures, 1<<31)), SplitView: w.SplitView})
	}
	return out, nil
}

func (g *governanceServer) AcknowledgeDeadLetter(ctx context.Context, in *bgv1.AcknowledgeDeadLetterRequest) (*bgv1.AcknowledgeDeadLetterResponse, error) {
	who := caller(ctx)
	d, rec, err := g.s.b.AcknowledgeDeadLetter(ctx, who, in.EventId, in.Sink, in.Notes)
	if err != nil {
		return nil, g.s.toStatus(ctx, err)
	}
	return &bgv1.AcknowledgeDeadLetterResponse{Entry: ref(rec), DeadLetter: &bgv1.DeadLetter{EventId: d.EventID, Sink: d.Sink, Type: d.Type,
		Account: d.Account, RequestId: d.RequestID, Attempts: int32(d.Attempts), LastError: d.LastError, CreateTime: ts(d.CreatedAt),
		AckTime: ts(d.AckedAt), AckedBy: who}}, nil
}
