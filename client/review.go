package client

import (
	"context"
	"errors"
	"time"

	"github.com/bgbroker/breakglass/client/approval"
	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
)

// ContentOf is the immutable content of a request as the API shows it: the
// content an approver's statement binds to.
func ContentOf(r *bgv1.Request) approval.Content {
	return approval.Content{
		ID: r.GetId(), Account: r.GetAccount(), Requester: r.GetRequester(), Justification: r.GetJustification(),
		Ticket: r.GetTicket(), TTLSeconds: int64(r.GetRequestedTtl().AsDuration() / time.Second), Drill: r.GetDrill(),
		CreatedAt: r.GetCreateTime().AsTime(),
	}
}

// Origin returns the log's origin (cached after the first call).
func (c *Client) Origin(ctx context.Context) (string, error) {
	c.mu.Lock()
	o := c.origin
	c.mu.Unlock()
	if o != "" {
		return o, nil
	}
	info, err := c.GetLogInfo(ctx, &bgv1.GetLogInfoRequest{})
	if err != nil {
		return "", err
	}
	c.mu.Lock()
	c.origin = info.GetOrigin()
	c.mu.Unlock()
	return info.GetOrigin(), nil
}

// Review approves or denies the request r as shown to the approver: the
// statement binds exactly this content, this comment and this log, and is
// signed with the private key of the client certificate.
func (c *Client) Review(ctx context.Context, r *bgv1.Request, decision bgv1.ReviewDecision, comment string) (*bgv1.ReviewRequestResponse, error) {
	if c.key == nil {
		return nil, errors.New("no client key to sign the review with; dial with a certificate and key")
	}
	typ := approval.TypeApprove
	if decision == bgv1.ReviewDecision_REVIEW_DECISION_DENY {
		typ = approval.TypeDeny
	}
	origin, err := c.Origin(ctx)
	if err != nil {
		return nil, err
	}
	st := approval.Statement{Type: typ, Origin: origin, Request: r.GetId(), Content: ContentOf(r).Digest(),
		Comment: approval.CommentDigest(comment), Time: c.now().UTC().Truncate(time.Second)}
	stmt := st.Marshal()
	sig, err := approval.Sign(c.key, stmt)
	if err != nil {
		return nil, err
	}
	return c.ReviewRequest(ctx, &bgv1.ReviewRequestRequest{Id: r.GetId(), Decision: decision, Comment: comment, Statement: stmt, Signature: sig})
}

// ReviewByID fetches the request and reviews it.
func (c *Client) ReviewByID(ctx context.Context, id string, decision bgv1.ReviewDecision, comment string) (*bgv1.ReviewRequestResponse, error) {
	got, err := c.GetRequest(ctx, &bgv1.GetRequestRequest{Id: id})
	if err != nil {
		return nil, err
	}
	return c.Review(ctx, got.GetRequest(), decision, comment)
}
