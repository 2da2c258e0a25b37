package grpcapi

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/format/statement"
	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
	"github.com/bgbroker/breakglass/server/broker"
	"github.com/bgbroker/breakglass/server/identity"
	"github.com/bgbroker/breakglass/server/store"
)

type adminServer struct {
	bgv1.UnimplementedAdminServiceServer
	s *Server
}

func (a *adminServer) ReloadPolicy(ctx context.Context, _ *bgv1.ReloadPolicyRequest) (*bgv1.ReloadPolicyResponse, error) {
	// Admins only, before anything is read: the problems of a bad policy
	// are for them.
	if err := a.s.b.RequireAdmin(caller(ctx)); err != nil {
		return nil, a.s.toStatus(ctx, err)
	}
	if a.s.reload == nil {
		return nil, a.s.toStatus(ctx, errNoReload)
	}
	res, err := a.s.reload(ctx, caller(ctx))
	if err != nil {
		return nil, a.s.toStatus(ctx, err)
	}
	return reloadProto(res), nil
}

func reloadProto(res *broker.PolicyReload) *bgv1.ReloadPolicyResponse {
	out := &bgv1.ReloadPolicyResponse{PolicyHash: res.Hash, PreviousHash: res.Previous, Changed: res.Changed, Changes: res.Changes, Signers: res.Signers}
	if res.Changed {
		out.Entry = ref(res.Entry)
	}
	return out
}

func (a *adminServer) GetPolicy(ctx context.Context, _ *bgv1.GetPolicyRequest) (*bgv1.GetPolicyResponse, error) {
	p, idx, err := a.s.b.CurrentPolicy(ctx, caller(ctx))
	if err != nil {
		return nil, a.s.toStatus(ctx, err)
	}
	src, err := p.Source()
	if err != nil {
		return nil, a.s.toStatus(ctx, err)
	}
	return &bgv1.GetPolicyResponse{PolicyHash: p.Hash(), Canonical: p.CanonicalJSON(), Source: src, AdminRule: p.AdminRule(), PolicyAdmins: p.PolicyAdminList(),
		Origin: a.s.b.Origin(), EntryIndex: idx}, nil
}

func (a *adminServer) ProposePolicy(ctx context.Context, in *bgv1.ProposePolicyRequest) (*bgv1.ProposePolicyResponse, error) {
	who := caller(ctx)
	// Only those who may propose learn what is wrong with a document.
	if err := a.s.b.RequireAdmin(who); err != nil {
		return nil, a.s.toStatus(ctx, err)
	}
	source := in.Source
	if source == "" {
		source = "proposal"
	}
	p, err := policy.Load(in.Policy, source)
	if err != nil {
		var inv *policy.InvalidError
		if errors.As(err, &inv) {
			return nil, a.s.toStatus(ctx, broker.Invalid("the proposed policy is refused: %v", err))
		}
		return nil, a.s.toStatus(ctx, err)
	}
	peer, ok := identity.PeerFrom(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "no verified client certificate")
	}
	v, err := a.s.b.ProposePolicy(ctx, who, peer.Leaf, p, source, in.Comment)
	if err != nil {
		return nil, a.s.toStatus(ctx, err)
	}
	return &bgv1.ProposePolicyResponse{Proposal: proposalProto(v)}, nil
}

func (a *adminServer) GetPolicyProposal(ctx context.Context, in *bgv1.GetPolicyProposalRequest) (*bgv1.GetPolicyProposalResponse, error) {
	v, err := a.s.b.GetPolicyProposal(ctx, caller(ctx), in.Id)
	if err != nil {
		return nil, a.s.toStatus(ctx, err)
	}
	return &bgv1.GetPolicyProposalResponse{Proposal: proposalProto(v)}, nil
}

func (a *adminServer) ListPolicyProposals(ctx context.Context, _ *bgv1.ListPolicyProposalsRequest) (*bgv1.ListPolicyProposalsResponse, error) {
	vs, err := a.s.b.ListPolicyProposals(ctx, caller(ctx))
	if err != nil {
		return nil, a.s.toStatus(ctx, err)
	}
	out := &bgv1.ListPolicyProposalsResponse{}
	for _, v := range vs {
		out.Proposals = append(out.Proposals, proposalProto(v))
	}
	return out, nil
}

func (a *adminServer) ReviewPolicyProposal(ctx context.Context, in *bgv1.ReviewPolicyProposalRequest) (*bgv1.ReviewPolicyProposalResponse, error) {
	d := statement.DecisionApprove
	if in.Decision == bgv1.ReviewDecision_REVIEW_DECISION_DENY {
		d = statement.DecisionDeny
	}
	peer, ok := identity.PeerFrom(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "no verified client certificate")
	}
	v, err := a.s.b.ReviewPolicyProposal(ctx, caller(ctx), broker.PolicyReviewInput{ID: in.Id, Decision: d, Comment: in.Comment,
		Statement: in.Statement, Signature: in.Signature, Cert: peer.Leaf})
	if err != nil {
		return nil, a.s.toStatus(ctx, err)
	}
	out := &bgv1.ReviewPolicyProposalResponse{Proposal: proposalProto(v)}
	if v.Loaded != nil {
		out.Loaded = reloadProto(v.Loaded)
	}
	return out, nil
}

var proposalStates = map[string]bgv1.PolicyProposalState{
	store.ProposalPending: bgv1.PolicyProposalState_POLICY_PROPOSAL_STATE_PENDING,
	store.ProposalApplied: bgv1.PolicyProposalState_POLICY_PROPOSAL_STATE_APPLIED,
	store.ProposalDenied:  bgv1.PolicyProposalState_POLICY_PROPOSAL_STATE_DENIED,
	store.ProposalExpired: bgv1.PolicyProposalState_POLICY_PROPOSAL_STATE_EXPIRED,
	store.ProposalStale:   bgv1.PolicyProposalState_POLICY_PROPOSAL_STATE_STALE,
}

func proposalProto(v *broker.ProposalView) *bgv1.PolicyProposal {
	out := &bgv1.PolicyProposal{Id: v.ID, Proposer: v.Proposer, Comment: v.Comment, Source: v.Source, PreviousHash: v.Previous, PolicyHash: v.Hash,
		Canonical: v.Policy, CreateTime: ts(v.CreatedAt), ExpireTime: ts(v.ExpiresAt), State: proposalStates[v.State], CloseTime: ts(v.ClosedAt),
		Reason: v.Reason, Changes: v.Changes, Weakens: v.Weakens, Rule: v.Rule, Signers: v.Signers, Missing: int32(min(v.Missing, 1<<20)), //nolint:gosec // bounded
		EntryIndex: v.Entry, ClosedEntryIndex: v.ClosedEntry}
	for _, r := range v.Reviews {
		d := bgv1.ReviewDecision_REVIEW_DECISION_APPROVE
		if r.Decision == statement.DecisionDeny {
			d = bgv1.ReviewDecision_REVIEW_DECISION_DENY
		}
		out.Reviews = append(out.Reviews, &bgv1.PolicyProposalReview{Reviewer: r.Reviewer, Decision: d, Comment: r.Comment, CreateTime: ts(r.At), EntryIndex: r.Entry})
	}
	return out
}
