package client

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/format/statement"
	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
)

// SignPolicyChange signs a policy admin's statement about the change from
// the policy whose hash is previous ("" for a log's first policy) to the
// one whose hash is hash, with key, the private key of the admin's client
// certificate (docs/signing.md, "Policy statements"). It is what bgctl
// policy sign writes into a bundle, and what ReviewPolicy sends.
func SignPolicyChange(key crypto.Signer, cert *x509.Certificate, origin, previous, hash, decision, comment string, at time.Time) (statement.Signed, error) {
	st := statement.PolicyStatement{Decision: decision, Origin: origin, Previous: statement.PreviousLine(previous), Policy: hash,
		Comment: statement.CommentDigest(comment), Time: at.UTC().Truncate(time.Second)}
	text := st.Marshal()
	if _, err := statement.ParsePolicyStatement(text); err != nil {
		return statement.Signed{}, fmt.Errorf("nothing was signed: %w", err)
	}
	sig, err := statement.Sign(key, text)
	if err != nil {
		return statement.Signed{}, err
	}
	return statement.Signed{Statement: text, Signature: sig, Certificate: cert.Raw}, nil
}

// CheckedProposal recomputes what a proposal says from its canonical
// policy and the policy in force, as an admin's client must before it
// signs: the policy's hash (what the statement names), and what it changes
// from the policy in force, whose hash must be the proposal's previous
// one. It returns the two policies and the changes computed here; it
// refuses a proposal whose broker-stated hashes do not match.
func CheckedProposal(p *bgv1.PolicyProposal, inForce *bgv1.GetPolicyResponse) (*policy.Policy, *policy.Policy, []string, error) {
	np, err := policy.FromCanonicalJSON(p.GetCanonical())
	if err != nil {
		return nil, nil, nil, fmt.Errorf("proposal %s: its policy does not load: %w", p.GetId(), err)
	}
	if np.Hash() != p.GetPolicyHash() {
		return nil, nil, nil, fmt.Errorf("proposal %s: the broker states policy hash %s but its policy hashes to %s; nothing was signed", p.GetId(), p.GetPolicyHash(), np.Hash())
	}
	cur, err := policy.FromCanonicalJSON(inForce.GetCanonical())
	if err != nil {
		return nil, nil, nil, fmt.Errorf("the policy in force does not load: %w", err)
	}
	if cur.Hash() != inForce.GetPolicyHash() {
		return nil, nil, nil, fmt.Errorf("the broker states the policy in force is %s but it hashes to %s", inForce.GetPolicyHash(), cur.Hash())
	}
	if cur.Hash() != p.GetPreviousHash() {
		return nil, nil, nil, fmt.Errorf("proposal %s changes policy %s, but %s is in force now: it is stale", p.GetId(), p.GetPreviousHash(), cur.Hash())
	}
	return cur, np, policy.ChangeLines(cur, np), nil
}

// ReviewPolicy approves or denies a policy proposal as this admin sees
// it: the hashes are recomputed from the proposal's policy and the policy
// in force (CheckedProposal), the statement is built here and signed with
// the client certificate's key.
func (c *Client) ReviewPolicy(ctx context.Context, p *bgv1.PolicyProposal, decision bgv1.ReviewDecision, comment string) (*bgv1.ReviewPolicyProposalResponse, error) {
	if c.key == nil || c.cert == nil {
		return nil, errors.New("no client certificate and key to sign the statement with")
	}
	inForce, err := c.GetPolicy(ctx, &bgv1.GetPolicyRequest{})
	if err != nil {
		return nil, err
	}
	if _, _, _, err := CheckedProposal(p, inForce); err != nil {
		return nil, err
	}
	origin, err := c.Origin(ctx)
	if err != nil {
		return nil, err
	}
	d := statement.DecisionApprove
	if decision == bgv1.ReviewDecision_REVIEW_DECISION_DENY {
		d = statement.DecisionDeny
	}
	s, err := SignPolicyChange(c.key, c.cert, origin, p.GetPreviousHash(), p.GetPolicyHash(), d, comment, c.now())
	if err != nil {
		return nil, err
	}
	return c.ReviewPolicyProposal(ctx, &bgv1.ReviewPolicyProposalRequest{Id: p.GetId(), Decision: decision, Comment: comment, Statement: s.Statement, Signature: s.Signature})
}
