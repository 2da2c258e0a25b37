package auditverify

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/keyid"
	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/format/statement"
)

// A policy changes only with a quorum of the policy admins of the policy
// in force before it (DESIGN §4.8). The broker puts their signed policy
// statements into the policy_loaded entry; this file checks them from the
// log alone, so that an operator holding the database and the HSM PIN, but
// no admin's key, cannot lower a quorum unseen: a policy_loaded entry they
// write with the broker's keys and no admins' signatures is a violation.

// maxOpenProposals bounds the proposals the verifier follows at once
// (the broker keeps at most 16 pending); a log with more is refused
// rather than allowed to grow the verifier's memory.
const maxOpenProposals = 1024

// openProposal is a proposal logged and not yet ended.
type openProposal struct {
	proposer, proposerKey string
	hash, previous        string
	// stale is set once another policy was put in force.
	stale bool
}

// policyApprovals checks how the policy p of a policy_loaded entry came to
// be in force and records it in ch: the first policy of the log is a
// genesis, signed by a quorum of its own admins or marked unsigned (and
// then pinned by the auditor with GenesisPolicy, or reported); every later
// one carries statements that meet the rule of the policy before it, or is
// a trust reset, which is reported.
func (r *replay) policyApprovals(i int64, e *audit.Entry, pl audit.PolicyLoaded, p *policy.Policy, ch *PolicyChange) *Violation {
	first := r.policy == nil
	ch.Genesis, ch.Proposal, ch.Proposer = pl.Genesis, pl.Proposal, pl.Proposer
	if first && r.genesisPolicy != "" && pl.Hash != r.genesisPolicy {
		return violation(i, "the first policy of the log is %s, not the pinned genesis policy %s (--genesis-policy)", pl.Hash, r.genesisPolicy)
	}
	if pl.Reset != nil {
		if strings.TrimSpace(pl.Reset.Operator) == "" || strings.TrimSpace(pl.Reset.Reason) == "" || len(pl.Approvals) > 0 || pl.Genesis != "" || pl.Proposal != "" {
			return violation(i, "malformed trust reset: it needs an operator and a reason and carries nothing else")
		}
		ch.Reset = pl.Reset
		r.resets++
		return nil
	}
	// The admins who sign a change are the policy before it's, named by
	// its identity rule; a genesis's are its own, named by its own rule.
	ident := r.identity
	if first {
		ident = pl.Identity
	}
	var judge *policy.Policy
	previous := r.policyHash
	switch {
	case first && pl.Genesis == audit.GenesisUnsigned:
		if len(pl.Approvals) > 0 || pl.Proposal != "" {
			return violation(i, "an unsigned genesis carries statements")
		}
		r.unsignedGenesis = true
		return nil
	case first && pl.Genesis == audit.GenesisSigned:
		judge = p // a genesis is signed by its own admins
	case first:
		return violation(i, "the first policy of the log is neither signed by a quorum of its own policy admins nor marked as an unsigned genesis")
	case pl.Genesis != "":
		return violation(i, "a genesis (%s) after the first policy of the log", pl.Genesis)
	default:
		judge = r.policy
	}
	proposer := policy.Approval{}
	if pl.Proposal != "" {
		op, ok := r.proposals[pl.Proposal]
		if !ok || op.stale {
			return violation(i, "the policy names proposal %s, which is not open in the log", pl.Proposal)
		}
		if op.hash != pl.Hash || op.previous != previous || op.proposer != pl.Proposer || op.proposerKey != pl.ProposerKey {
			return violation(i, "the policy is not the one proposal %s proposed (or names another proposer)", pl.Proposal)
		}
		delete(r.proposals, pl.Proposal)
		proposer = policy.Approval{Principal: op.proposer, Key: op.proposerKey}
	} else if pl.Proposer != "" || pl.ProposerKey != "" {
		return violation(i, "the policy names a proposer but no proposal")
	}
	if len(judge.PolicyAdmins) == 0 {
		return violation(i, "policy %s changes a policy that has no policy admins: only a trust reset may replace it", short(pl.Hash))
	}
	maxAge := judge.ChangeWindow.D() + statement.MaxSkew
	var approvals []policy.Approval
	for n, s := range pl.Approvals {
		who, key, why := r.checkPolicyStatement(judge, ident, previous, pl.Hash, s, e.Time, maxAge)
		if why != "" {
			// A statement that does not verify was never a valid approval:
			// the broker never logs one.
			return violation(i, "policy approval %d does not verify: %s", n+1, why)
		}
		approvals = append(approvals, policy.Approval{Principal: who, Key: key})
		ch.Signers = append(ch.Signers, who)
	}
	o := policy.EvaluateSigned(judge, judge.PolicyAdmins, proposer, approvals)
	if !o.Met {
		missing := policy.Shortfall(judge, judge.PolicyAdmins, proposer, approvals)
		what := "policy admins of the policy before it"
		if first {
			what = "its own policy admins"
		}
		return violation(i, "policy %s was put in force without a quorum of %s (%s): %d more approval(s) needed; signed by [%s]",
			short(pl.Hash), what, judge.PolicyAdmins.Short(), missing, strings.Join(ch.Signers, ", "))
	}
	for _, a := range approvals {
		if !slices.Contains(o.Counted, a.Principal) {
			return violation(i, "policy approval by %s does not count (the proposer, or a principal or key that approved twice): the broker logs only approvals that count", a.Principal)
		}
	}
	r.policyStatements += len(approvals)
	return nil
}

// checkPolicyStatement judges one policy admin's statement approving the
// change from previous to hash at the entry's time, and returns its
// signer, key, and why it fails ("" when it does not).
func (r *replay) checkPolicyStatement(judge *policy.Policy, ident audit.Identity, previous, hash string, s audit.Signed, at time.Time, maxAge time.Duration) (string, string, string) {
	st, err := statement.ParsePolicyStatement(s.Statement)
	if err != nil {
		return "", "", err.Error()
	}
	if err := statement.CheckPolicy(st, statement.PolicyExpect{Decision: statement.DecisionApprove, Origin: r.origin, Previous: previous, Policy: hash,
		CommentDigest: st.Comment, Now: at, MaxAge: maxAge}); err != nil {
		return "", "", err.Error()
	}
	who, key, why := r.policySigner(s, ident, st.Time, at)
	if why != "" {
		return "", "", why
	}
	if !judge.IsPolicyAdmin(who) {
		return "", "", fmt.Sprintf("%s is not a policy admin of the policy that judges the change (%s)", who, judge.PolicyAdmins.Short())
	}
	return who, key, ""
}

// policySigner checks a policy statement's certificate and signature: the
// certificate chained to the client CA both when the statement was signed
// and at the entry, was not revoked before the entry, and names its
// holder under the identity rule logged with the policy in force.
func (r *replay) policySigner(s audit.Signed, ident audit.Identity, signedAt, at time.Time) (string, string, string) {
	cert, err := r.sigs.ParseCertificate(s.Certificate)
	if err != nil {
		return "", "", "the certificate does not parse: " + err.Error()
	}
	for _, t := range []time.Time{signedAt, at} {
		if err := r.verifyChain(cert, t); err != nil {
			return "", "", "the certificate did not chain to the client CA at " + t.UTC().Format(time.RFC3339) + ": " + err.Error()
		}
	}
	if t, ok := r.revoked[revocationKey(cert.RawIssuer, cert.SerialNumber)]; ok && !at.Before(t) {
		return "", "", fmt.Sprintf("the certificate was revoked at %s (CRL), before the change was put in force at %s", t.UTC().Format(time.RFC3339), at.UTC().Format(time.RFC3339))
	}
	who, err := principalOf(cert, ident)
	if err != nil {
		return "", "", err.Error()
	}
	if err := r.sigs.Verify(cert, s.Statement, s.Signature); err != nil {
		return "", "", err.Error()
	}
	return who, keyid.SPKI(cert.RawSubjectPublicKeyInfo), ""
}

// policyProposed follows a proposal: made by someone who may propose under
// the policy in force, of a policy that loads, changing the one in force,
// its changes and weakening recomputed.
func (r *replay) policyProposed(i int64, e *audit.Entry) *Violation {
	var p audit.PolicyProposed
	if err := decode(e.Payload, &p); err != nil {
		return violation(i, "malformed policy_proposed payload: %v", err)
	}
	if !r.policy.MayPropose(e.Actor) {
		return violation(i, "%s may not propose policy changes under the policy in force", e.Actor)
	}
	np, err := policy.FromCanonicalJSON(p.Policy)
	if err != nil {
		return violation(i, "the proposed policy is refused: %v", err)
	}
	if np.Hash() != p.Hash || p.Previous != r.policyHash || p.Hash == p.Previous {
		return violation(i, "proposal %s: its hash or the policy it changes is not what the log holds", p.Proposal)
	}
	if policy.Weakens(policy.Diff(r.policy, np)) && !p.Weakens {
		return violation(i, "proposal %s weakens the policy but the entry does not say so", p.Proposal)
	}
	if _, dup := r.proposals[p.Proposal]; dup || p.Proposal == "" {
		return violation(i, "proposal id %q is empty or already open", p.Proposal)
	}
	if len(r.proposals) >= maxOpenProposals {
		return violation(i, "more than %d policy proposals open at once", maxOpenProposals)
	}
	r.proposals[p.Proposal] = &openProposal{proposer: e.Actor, proposerKey: p.ProposerKey, hash: p.Hash, previous: p.Previous}
	r.proposalCount++
	return nil
}

// policyReviewed checks a policy admin's signed decision on an open
// proposal, as the broker judged it when it arrived.
func (r *replay) policyReviewed(i int64, e *audit.Entry) *Violation {
	var p audit.PolicyReviewed
	if err := decode(e.Payload, &p); err != nil {
		return violation(i, "malformed policy_reviewed payload: %v", err)
	}
	op, ok := r.proposals[p.Proposal]
	if !ok || op.stale {
		return violation(i, "a review of policy proposal %s, which is not open", p.Proposal)
	}
	if e.Actor == op.proposer {
		return violation(i, "%s reviewed their own policy proposal %s", e.Actor, p.Proposal)
	}
	if !r.policy.IsPolicyAdmin(e.Actor) {
		return violation(i, "%s is not a policy admin and may not review policy proposals", e.Actor)
	}
	st, err := statement.ParsePolicyStatement(p.Statement)
	if err != nil {
		return violation(i, "the policy review statement is malformed: %v", err)
	}
	if err := statement.CheckPolicy(st, statement.PolicyExpect{Decision: p.Decision, Origin: r.origin, Previous: op.previous, Policy: op.hash,
		Comment: p.Comment, Now: e.Time}); err != nil {
		return violation(i, "the policy review statement does not match the review: %v", err)
	}
	who, _, why := r.policySigner(p.Signed, r.identity, st.Time, e.Time)
	if why != "" {
		return violation(i, "the policy review does not verify: %s", why)
	}
	if who != e.Actor {
		return violation(i, "the policy review is signed by %s's certificate, not %s's", who, e.Actor)
	}
	return nil
}

// policyProposalClosed ends an open proposal.
func (r *replay) policyProposalClosed(i int64, e *audit.Entry) *Violation {
	var p audit.PolicyProposalClosed
	if err := decode(e.Payload, &p); err != nil {
		return violation(i, "malformed policy_proposal_closed payload: %v", err)
	}
	if _, ok := r.proposals[p.Proposal]; !ok {
		return violation(i, "policy proposal %s is closed but is not open", p.Proposal)
	}
	switch op := r.proposals[p.Proposal]; {
	case p.State == "stale" && op.stale, p.State == "denied" && !op.stale, p.State == "expired" && !op.stale:
	default:
		return violation(i, "policy proposal %s closed as %q (stale: %v)", p.Proposal, p.State, op.stale)
	}
	delete(r.proposals, p.Proposal)
	return nil
}

// policyRefused records a policy the broker refused for want of
// signatures: nothing changed, the SOC was told.
func (r *replay) policyRefused(i int64, e *audit.Entry) *Violation {
	var p audit.PolicyRefused
	if err := decode(e.Payload, &p); err != nil || p.Missing < 1 || p.Previous != r.policyHash {
		return violation(i, "malformed policy_refused entry")
	}
	r.refusals++
	return nil
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}
