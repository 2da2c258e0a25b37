package store

import (
	"context"
	"time"
)

// Policy proposal states: pending until the policy admins' quorum puts it
// in force (applied), enough of them deny it (denied), its window passes
// (expired) or another policy is put in force first (stale: its statements
// name a previous policy that is no longer the one in force).
const (
	ProposalPending = "pending"
	ProposalApplied = "applied"
	ProposalDenied  = "denied"
	ProposalExpired = "expired"
	ProposalStale   = "stale"
)

// PolicyProposal is a proposed change of the policy.
type PolicyProposal struct {
	ID       string
	Proposer string
	// ProposerKey is "sha256:" and the hex SHA-256 of the SPKI of the
	// proposer's certificate key: a statement signed with it never counts.
	ProposerKey string
	Comment     string
	Source      string
	// Previous is the hash of the policy in force when it was proposed;
	// Hash the proposed policy's and Policy its canonical JSON.
	Previous  string
	Hash      string
	Policy    []byte
	CreatedAt time.Time
	ExpiresAt time.Time
	State     string
	ClosedAt  time.Time
	// Entry is the index of its policy_proposed entry, ClosedEntry of the
	// policy_loaded or policy_proposal_closed entry that ended it.
	Entry       uint64
	ClosedEntry uint64
	// Reason says why it was closed.
	Reason string
}

// ProposalReview is a policy admin's signed decision on a proposal.
type ProposalReview struct {
	Proposal string
	Reviewer string
	// Key names the signing key as PolicyProposal.ProposerKey does.
	Key      string
	Decision string
	Comment  string
	// Statement, Signature and Cert are the policy statement
	// (format/statement), its signature and the reviewer's certificate (DER).
	Statement []byte
	Signature []byte
	Cert      []byte
	At        time.Time
	Entry     uint64
}

// MaxProposalReviews bounds the reviews one proposal keeps: more than the
// admins who could sign it is never needed.
const MaxProposalReviews = 256

// ProposalReader reads policy proposals.
type ProposalReader interface {
	// PolicyProposal returns a proposal by id, or ErrNotFound.
	PolicyProposal(ctx context.Context, id string) (*PolicyProposal, error)
	// ProposalReviews returns a proposal's reviews, oldest first (at most
	// MaxProposalReviews).
	ProposalReviews(ctx context.Context, id string) ([]ProposalReview, error)
	// PendingProposals returns up to limit pending proposals, oldest
	// first: a range of the index of open ones, whatever the history.
	PendingProposals(ctx context.Context, limit int) ([]PolicyProposal, error)
	// DueProposals returns up to limit pending proposals whose window
	// ended at or before now, soonest first.
	DueProposals(ctx context.Context, now time.Time, limit int) ([]PolicyProposal, error)
}

// ProposalWriter records policy proposals.
type ProposalWriter interface {
	// AddPolicyProposal inserts a pending proposal; an id already stored
	// is ErrConflict.
	AddPolicyProposal(ctx context.Context, p PolicyProposal) error
	// ClosePolicyProposal records that a pending proposal ended (its State,
	// ClosedAt, ClosedEntry and Reason); ErrConflict when it is not pending.
	ClosePolicyProposal(ctx context.Context, p PolicyProposal) error
	// AddProposalReview records a review; a second review of one proposal
	// by the same principal or with the same key is ErrConflict.
	AddProposalReview(ctx context.Context, r ProposalReview) error
}
