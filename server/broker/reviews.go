package broker

import (
	"context"
	"errors"

	"github.com/bgbroker/breakglass/server/audit"
	"github.com/bgbroker/breakglass/server/policy"
	"github.com/bgbroker/breakglass/server/request"
	"github.com/bgbroker/breakglass/server/store"
)

// ReviewInput is an approver's decision.
type ReviewInput struct {
	ID       string
	Decision request.Decision
	Comment  string
}

// Review records caller's decision on a pending request. An approval that
// meets the quorum approves the request in the same transaction; a denial
// that reaches the deny threshold denies it. Approvals need the HSM (they
// grant access); denials do not.
func (b *Broker) Review(ctx context.Context, caller string, in ReviewInput) (*Result, error) {
	if in.Decision != request.Approve && in.Decision != request.Deny {
		return nil, invalid("decision must be approve or deny")
	}
	if err := validateText("comment", in.Comment, 2000, false); err != nil {
		return nil, err
	}
	var (
		res      Result
		approved bool
	)
	err := b.update(ctx, func(tx store.Tx) error {
		r, err := b.loadRequest(ctx, tx, in.ID, caller)
		if err != nil {
			return err
		}
		p := b.Policy()
		if caller == r.Requester {
			return denied("you cannot review your own request")
		}
		if !p.Eligible(r.Rule, caller) {
			return denied("you are not an eligible approver for request %s (needs %s)", r.ID, r.Rule)
		}
		now := b.now().UTC()
		if err := requireState(r, now, request.Pending, "reviewed"); err != nil {
			return err
		}
		if r.Reviewed(caller) {
			return newErr(KindExists, "you already reviewed request %s; each approver counts once", r.ID)
		}
		rec, err := b.appendEntry(ctx, tx, now, audit.Draft{
			Type: audit.TypeRequestReviewed, Actor: caller, Request: r.ID, Account: r.Account,
			Payload: audit.RequestReviewed{Decision: string(in.Decision), Comment: in.Comment, Groups: p.EligibleGroups(r.Rule, caller)},
		}, in.Decision == request.Approve)
		if err != nil {
			return err
		}
		rv := request.Review{Reviewer: caller, Decision: in.Decision, Comment: in.Comment, At: now, EntryIndex: rec.Index, LeafHash: rec.LeafHash}
		if err := tx.AddReview(ctx, r.ID, rv); err != nil {
			if errors.Is(err, store.ErrConflict) {
				return newErr(KindExists, "you already reviewed request %s; each approver counts once", r.ID)
			}
			return err
		}
		r.Reviews = append(r.Reviews, rv)
		res = Result{Request: r, Entry: rec}

		approvals, denials := r.ApprovalsAndDenials()
		switch in.Decision {
		case request.Approve:
			o := policy.Evaluate(p, r.Rule, r.Requester, approvals)
			if !o.Met {
				break
			}
			approved = true
			r.State, r.ApprovedAt = request.Approved, now
			r.GrantExpiresAt = r.GrantEnd(now)
			r.ActivationDeadline = now.Add(r.ActivationWindow)
			r.Approvers = o.Approvers()
			if _, err := b.appendEntry(ctx, tx, now, audit.Draft{
				Type: audit.TypeRequestApproved, Actor: "broker", Request: r.ID, Account: r.Account,
				Payload: audit.RequestApproved{ApprovedAt: now, GrantExpiresAt: r.GrantExpiresAt, ActivationDeadline: r.ActivationDeadline,
					Alternative: o.Alternative, Assignment: o.Assignment},
			}, true); err != nil {
				return err
			}
		case request.Deny:
			if policy.Denials(p, r.Rule, r.Requester, denials) < r.DenyThreshold {
				break
			}
			r.State, r.FinalAt, r.FinalBy, r.FinalReason = request.Denied, now, caller, "denied by "+joinNames(denials)
			if _, err := b.appendEntry(ctx, tx, now, audit.Draft{
				Type: audit.TypeRequestDenied, Actor: "broker", Request: r.ID, Account: r.Account,
				Payload: audit.RequestFinal{Reason: r.FinalReason, At: now, Denials: denials},
			}, false); err != nil {
				return err
			}
		}
		return tx.SaveRequest(ctx, r)
	})
	if err != nil {
		return nil, err
	}
	b.notify(in.ID)
	b.log.Info("request reviewed", "request", in.ID, "reviewer", caller, "decision", in.Decision, "approved", approved, "state", res.Request.State, "entry", res.Entry.Index)
	return &res, nil
}

func joinNames(names []string) string {
	out := ""
	for i, n := range names {
		if i > 0 {
			out += ", "
		}
		out += n
	}
	return out
}
