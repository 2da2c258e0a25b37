package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/bgbroker/breakglass/server/store"
)

const proposalColumns = `id, proposer, proposer_key, comment, source, previous, hash, policy, created_at, expires_at, state, closed_at, entry, closed_entry, reason`

func (t *Tx) proposals(ctx context.Context, query string, args ...any) ([]store.PolicyProposal, error) {
	rows, err := t.Q.QueryContext(ctx, t.q(query), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.PolicyProposal
	for rows.Next() {
		var (
			p                store.PolicyProposal
			created, expires int64
			closed, cEntry   sql.NullInt64
			entry            int64
		)
		if err := rows.Scan(&p.ID, &p.Proposer, &p.ProposerKey, &p.Comment, &p.Source, &p.Previous, &p.Hash, &p.Policy, &created, &expires, &p.State,
			&closed, &entry, &cEntry, &p.Reason); err != nil {
			return nil, err
		}
		p.CreatedAt, p.ExpiresAt, p.ClosedAt, p.Entry, p.ClosedEntry = fromNanos(created), fromNanos(expires), fromNull(closed), uint64(entry), uint64(cEntry.Int64)
		out = append(out, p)
	}
	return out, rows.Err()
}

// PolicyProposal implements store.Reader.
func (t *Tx) PolicyProposal(ctx context.Context, id string) (*store.PolicyProposal, error) {
	ps, err := t.proposals(ctx, `SELECT `+proposalColumns+` FROM policy_proposals WHERE id = ?`, id)
	if err != nil {
		return nil, err
	}
	if len(ps) == 0 {
		return nil, store.ErrNotFound
	}
	return &ps[0], nil
}

// PendingProposals implements store.Reader: the partial index of pending
// proposals, in its order.
func (t *Tx) PendingProposals(ctx context.Context, limit int) ([]store.PolicyProposal, error) {
	return t.proposals(ctx, `SELECT `+proposalColumns+` FROM policy_proposals WHERE state = 'pending' ORDER BY created_at, id LIMIT ?`, limit)
}

// DueProposals implements store.Reader: the partial index of pending
// proposals' expiry.
func (t *Tx) DueProposals(ctx context.Context, now time.Time, limit int) ([]store.PolicyProposal, error) {
	return t.proposals(ctx, `SELECT `+proposalColumns+` FROM policy_proposals WHERE state = 'pending' AND expires_at <= ? ORDER BY expires_at LIMIT ?`, nanos(now), limit)
}

// ProposalReviews implements store.Reader.
func (t *Tx) ProposalReviews(ctx context.Context, id string) ([]store.ProposalReview, error) {
	rows, err := t.Q.QueryContext(ctx, t.q(`SELECT proposal, reviewer, signer_key, decision, comment, statement, signature, cert, at, entry
		FROM policy_proposal_reviews WHERE proposal = ? ORDER BY at, entry LIMIT ?`), id, store.MaxProposalReviews)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.ProposalReview
	for rows.Next() {
		var (
			r     store.ProposalReview
			at    int64
			entry int64
		)
		if err := rows.Scan(&r.Proposal, &r.Reviewer, &r.Key, &r.Decision, &r.Comment, &r.Statement, &r.Signature, &r.Cert, &at, &entry); err != nil {
			return nil, err
		}
		r.At, r.Entry = fromNanos(at), uint64(entry)
		out = append(out, r)
	}
	return out, rows.Err()
}

// AddPolicyProposal implements store.Tx.
func (t *Tx) AddPolicyProposal(ctx context.Context, p store.PolicyProposal) error {
	if p.State != store.ProposalPending {
		return fmt.Errorf("a new proposal is pending, not %q", p.State)
	}
	_, err := t.exec(ctx, `INSERT INTO policy_proposals (`+proposalColumns+`) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`,
		p.ID, p.Proposer, p.ProposerKey, p.Comment, p.Source, p.Previous, p.Hash, p.Policy, nanos(p.CreatedAt), nanos(p.ExpiresAt), p.State,
		sql.NullInt64{}, int64(p.Entry), sql.NullInt64{}, "")
	return err
}

// ClosePolicyProposal implements store.Tx.
func (t *Tx) ClosePolicyProposal(ctx context.Context, p store.PolicyProposal) error {
	if p.State == store.ProposalPending || p.ClosedAt.IsZero() {
		return fmt.Errorf("closing proposal %s needs a final state and a time", p.ID)
	}
	res, err := t.exec(ctx, `UPDATE policy_proposals SET state = ?, closed_at = ?, closed_entry = ?, reason = ? WHERE id = ? AND state = 'pending'`,
		p.State, nanos(p.ClosedAt), int64(p.ClosedEntry), p.Reason, p.ID)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n != 1 {
		return fmt.Errorf("%w: proposal %s is not pending", store.ErrConflict, p.ID)
	}
	return nil
}

// AddProposalReview implements store.Tx; the primary key and the unique
// index on the key refuse a second review by a principal or a key.
func (t *Tx) AddProposalReview(ctx context.Context, r store.ProposalReview) error {
	_, err := t.exec(ctx, `INSERT INTO policy_proposal_reviews (proposal, reviewer, signer_key, decision, comment, statement, signature, cert, at, entry)
		VALUES (?,?,?,?,?,?,?,?,?,?)`, r.Proposal, r.Reviewer, r.Key, r.Decision, r.Comment, r.Statement, r.Signature, r.Cert, nanos(r.At), int64(r.Entry))
	return err
}
