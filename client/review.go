package client

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/bgbroker/breakglass/format/statement"
	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
)

// ContentOf is the immutable content of a request as the API shows it: the
// content an approver's statement binds to.
func ContentOf(r *bgv1.Request) statement.Content {
	return statement.Content{
		Version:       statement.ContentVersion(r.GetContentVersion()).Norm(),
		ID:            r.GetId(),
		Account:       r.GetAccount(),
		Requester:     r.GetRequester(),
		Justification: r.GetJustification(),
		Ticket:        r.GetTicket(),
		TTLSeconds:    int64(r.GetRequestedTtl().AsDuration() / time.Second),
		Drill:         r.GetDrill(),
		CreatedAt:     r.GetCreateTime().AsTime(),
	}
}

// checkedDigest is the content digest of r computed from the fields the
// approver is shown. When the broker states the digest too, the two must
// agree: the SDK signs only what it computed, and refuses to sign when
// the broker says the request is something else.
func checkedDigest(r *bgv1.Request) (string, error) {
	c := ContentOf(r)
	if !c.Version.Known() {
		return "", fmt.Errorf("request %s has content version %d, which this SDK does not know: upgrade it", r.GetId(), r.GetContentVersion())
	}
	d := c.Digest()
	if got := r.GetContentDigest(); got != "" && got != d {
		return "", fmt.Errorf("request %s: the broker states content digest %s but its fields give %s; nothing was signed", r.GetId(), got, d)
	}
	return d, nil
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

// sign makes and signs a statement with the client certificate's key.
func (c *Client) sign(ctx context.Context, typ, subject, content, comment string) (stmt, sig []byte, err error) {
	if c.key == nil {
		return nil, nil, errors.New("no client key to sign the statement with; dial with a certificate and key")
	}
	origin, err := c.Origin(ctx)
	if err != nil {
		return nil, nil, err
	}
	st := statement.Statement{Type: typ, Origin: origin, Request: subject, Content: content,
		Comment: statement.CommentDigest(comment), Time: c.now().UTC().Truncate(time.Second)}
	stmt = st.Marshal()
	sig, err = signWith(c.key, stmt)
	return stmt, sig, err
}

// signWith signs a statement by the rules of docs/signing.md.
func signWith(k crypto.Signer, stmt []byte) ([]byte, error) { return statement.Sign(k, stmt) }

// Review approves or denies the request r as shown to the approver: the
// statement binds exactly this content, this comment and this log, and is
// signed with the private key of the client certificate.
//
// idempotencyKey, when given, is the review's idempotency key: pass the
// same one when retrying a review whose reply was lost, so that the retry
// gets the first answer. Without it the SDK picks one per call (and keeps
// it across replicas within the call).
func (c *Client) Review(ctx context.Context, r *bgv1.Request, decision bgv1.ReviewDecision, comment string, idempotencyKey ...string) (*bgv1.ReviewRequestResponse, error) {
	if len(idempotencyKey) > 1 {
		return nil, errors.New("client: Review takes at most one idempotency key")
	}
	typ := statement.TypeApprove
	if decision == bgv1.ReviewDecision_REVIEW_DECISION_DENY {
		typ = statement.TypeDeny
	}
	digest, err := checkedDigest(r)
	if err != nil {
		return nil, err
	}
	stmt, sig, err := c.sign(ctx, typ, r.GetId(), digest, comment)
	if err != nil {
		return nil, err
	}
	in := &bgv1.ReviewRequestRequest{Id: r.GetId(), Decision: decision, Comment: comment, Statement: stmt, Signature: sig, KeyStore: c.keyStore}
	if len(idempotencyKey) == 1 {
		in.IdempotencyKey = idempotencyKey[0]
	}
	return c.ReviewRequest(ctx, in)
}

// ClosePostReviewSigned closes the post-use review of a grant with signed notes,
// bound to the grant's request as the reviewer sees it.
func (c *Client) ClosePostReviewSigned(ctx context.Context, pr *bgv1.PostReview, notes string) (*bgv1.ClosePostReviewResponse, error) {
	got, err := c.GetRequest(ctx, &bgv1.GetRequestRequest{Id: pr.GetRequestId()})
	if err != nil {
		return nil, err
	}
	digest, err := checkedDigest(got.GetRequest())
	if err != nil {
		return nil, err
	}
	stmt, sig, err := c.sign(ctx, statement.TypeReviewClose, pr.GetRequestId(), digest, notes)
	if err != nil {
		return nil, err
	}
	return c.ClosePostReview(ctx, &bgv1.ClosePostReviewRequest{Id: pr.GetId(), Notes: notes, Statement: stmt, Signature: sig})
}

// Attest confirms, as an owner, that the account is still needed and its
// approvers (under the policy now in force) are right.
func (c *Client) Attest(ctx context.Context, account, notes string) (*bgv1.AttestAccountResponse, error) {
	accts, err := c.ListAccounts(ctx, &bgv1.ListAccountsRequest{})
	if err != nil {
		return nil, err
	}
	stmt, sig, err := c.sign(ctx, statement.TypeAttest, uuid.NewString(), statement.AccountDigest(account, accts.GetPolicyHash()), notes)
	if err != nil {
		return nil, err
	}
	return c.AttestAccount(ctx, &bgv1.AttestAccountRequest{Account: account, Notes: notes, Statement: stmt, Signature: sig})
}

// ReviewByID fetches the request and reviews it.
func (c *Client) ReviewByID(ctx context.Context, id string, decision bgv1.ReviewDecision, comment string) (*bgv1.ReviewRequestResponse, error) {
	got, err := c.GetRequest(ctx, &bgv1.GetRequestRequest{Id: id})
	if err != nil {
		return nil, err
	}
	return c.Review(ctx, got.GetRequest(), decision, comment)
}
