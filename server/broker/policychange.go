package broker

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/keyid"
	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/format/statement"
	"github.com/bgbroker/breakglass/server/event"
	"github.com/bgbroker/breakglass/server/store"
)

// A policy changes only with a quorum of the policy admins of the policy
// in force before it (DESIGN §4.8): their signed policy statements
// (format/statement) travel in the policy_loaded entry that puts it in
// force, so the offline verifier checks them again from the log alone.
// The statements come either with a proposal made over the API, each admin
// approving it in turn, or in a bundle beside a policy file (policy.sigs),
// for deployments that keep the policy in git.

// MaxPendingProposals bounds the proposals waiting at once: every one of
// them is read (and made stale) whenever a policy is put in force.
const MaxPendingProposals = 16

// policyMeta is how a policy came to be put in force: what its
// policy_loaded entry carries besides the policy.
type policyMeta struct {
	approvals   []audit.Signed
	proposal    string
	proposer    string
	proposerKey string
	genesis     string
	reset       *audit.PolicyReset
}

// policySig is a signed policy statement to judge, with the comment it was
// sent with when that is known (a review over the API).
type policySig struct {
	audit.Signed
	Comment *string
}

// judgement is what the policy admins' statements about one change add
// up to.
type judgement struct {
	met bool
	// missing is how many more admins must sign, at the least.
	missing int
	// counted are the statements that count, and signers their admins.
	counted []audit.Signed
	signers []string
	// problems say why each other statement does not count.
	problems []string
}

// judgeChange judges statements about the change from the policy whose
// hash is previous ("" for a genesis) to the one whose hash is hash, by
// the policy_admins rule of judge (the policy in force, or for a genesis
// the new policy itself), at the moment at. A statement counts when it is
// a well-formed approval of exactly this change in this log, signed by the
// key of a certificate that chains to the client CA and is valid and not
// revoked both when it was signed and at, naming a policy admin of judge;
// the rule then counts each principal and each key once, and never the
// proposer's.
func (b *Broker) judgeChange(judge *policy.Policy, previous, hash string, proposer policy.Approval, sigs []policySig, at time.Time, maxAge time.Duration) judgement {
	var (
		j         judgement
		approvals []policy.Approval
		first     = map[string]int{} // principal -> index of its first valid statement
		names     []string
	)
	for i, s := range sigs {
		who, key, err := b.checkPolicySig(judge, previous, hash, s, at, maxAge)
		if err != nil {
			j.problems = append(j.problems, fmt.Sprintf("statement %d%s: %s", i+1, signerHint(b, s.Certificate), err))
			names = append(names, "")
			continue
		}
		approvals = append(approvals, policy.Approval{Principal: who, Key: key})
		names = append(names, who)
		if _, ok := first[who]; !ok {
			first[who] = i
		}
	}
	o := policy.EvaluateSigned(judge, judge.PolicyAdmins, proposer, approvals)
	j.met = o.Met
	j.missing = policy.Shortfall(judge, judge.PolicyAdmins, proposer, approvals)
	for _, who := range o.Counted {
		j.counted = append(j.counted, sigs[first[who]].Signed)
		j.signers = append(j.signers, who)
	}
	for i, who := range names {
		if who == "" || (slices.Contains(o.Counted, who) && first[who] == i) {
			continue
		}
		why := "it adds nobody: its signer or its key signed another statement here"
		if who == proposer.Principal {
			why = "the proposer's own statement never counts"
		}
		j.problems = append(j.problems, fmt.Sprintf("statement %d (%s): %s", i+1, who, why))
	}
	return j
}

// signerHint names a statement's signer for a problem, when its
// certificate says who.
func signerHint(b *Broker, der []byte) string {
	cert, err := b.sigs.ParseCertificate(der)
	if err != nil {
		return ""
	}
	if who, err := b.cfg.Certs.VerifyAt(cert, b.now()); err == nil {
		return " (" + who + ")"
	}
	return " (certificate " + cert.Subject.String() + ")"
}

// checkPolicySig judges one statement and returns its signer and key.
func (b *Broker) checkPolicySig(judge *policy.Policy, previous, hash string, s policySig, at time.Time, maxAge time.Duration) (string, string, error) {
	cert, err := b.sigs.ParseCertificate(s.Certificate)
	if err != nil {
		return "", "", fmt.Errorf("its certificate does not parse: %w", err)
	}
	st, err := statement.ParsePolicyStatement(s.Statement)
	if err != nil {
		return "", "", fmt.Errorf("the policy statement is malformed: %w", err)
	}
	if err := b.sigs.Verify(cert, s.Statement, s.Signature); err != nil {
		if errors.Is(err, statement.ErrSignatureEncoding) {
			return "", "", fmt.Errorf("its signature is in the wrong encoding: %w", err)
		}
		return "", "", errors.New("its signature does not verify with its certificate's key")
	}
	if st.Decision != statement.DecisionApprove {
		return "", "", errors.New("it denies the change")
	}
	exp := statement.PolicyExpect{Decision: statement.DecisionApprove, Origin: b.cfg.Origin, Previous: previous, Policy: hash,
		CommentDigest: st.Comment, Now: at, MaxAge: maxAge}
	if s.Comment != nil {
		exp.Comment, exp.CommentDigest = *s.Comment, ""
	}
	if err := statement.CheckPolicy(st, exp); err != nil {
		return "", "", err
	}
	whoThen, err := b.cfg.Certs.VerifyAt(cert, st.Time)
	if err != nil {
		return "", "", fmt.Errorf("its certificate could not vouch for its holder when it was signed: %w", err)
	}
	whoNow, err := b.cfg.Certs.VerifyAt(cert, at)
	if err != nil {
		return "", "", fmt.Errorf("its certificate cannot vouch for its holder now: %w", err)
	}
	if whoThen != whoNow {
		return "", "", fmt.Errorf("its certificate names %s at its signing and %s now", whoThen, whoNow)
	}
	if !judge.IsPolicyAdmin(whoNow) {
		return "", "", fmt.Errorf("%s is not a policy admin of the policy that judges the change (%s)", whoNow, judge.PolicyAdmins.Short())
	}
	return whoNow, keyid.SPKI(cert.RawSubjectPublicKeyInfo), nil
}

// RefusedError is a policy refused for want of the policy admins'
// signatures: the policy in force stays.
type RefusedError struct {
	Hash, Previous string
	Missing        int
	Signers        []string
	Problems       []string
	// Entry is the policy_refused entry that records the refusal.
	Entry uint64
}

func (e *RefusedError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "policy %s is refused and policy %s stays in force: it needs %d more signature(s) of policy admins of the policy in force",
		short(e.Hash), short(e.Previous), e.Missing)
	if len(e.Signers) > 0 {
		fmt.Fprintf(&b, " (counted: %s)", strings.Join(e.Signers, ", "))
	} else {
		b.WriteString(" (none counted)")
	}
	if len(e.Problems) > 0 {
		b.WriteString("; " + strings.Join(e.Problems, "; "))
	}
	fmt.Fprintf(&b, " (audit entry %d)", e.Entry)
	return b.String()
}

// policyState reads the policy the log says is in force, nil when the log
// has none yet.
func (b *Broker) policyState(ctx context.Context, r store.Reader) (*policy.Policy, audit.PolicyLoaded, uint64, error) {
	pl, idx, err := b.policyInForce(ctx, r)
	if errors.Is(err, store.ErrNotFound) {
		return nil, audit.PolicyLoaded{}, 0, nil
	}
	if err != nil {
		return nil, audit.PolicyLoaded{}, 0, err
	}
	p, err := policy.FromCanonicalJSON(pl.Policy)
	if err != nil {
		return nil, audit.PolicyLoaded{}, 0, fmt.Errorf("the policy in force (audit entry %d) does not load: %w", idx, err)
	}
	return p, pl, idx, nil
}

// ApplyPolicy puts p in force with the statements of a bundle that meet
// the policy admins' rule of the policy in force, each signed within its
// change window (SIGHUP and ReloadPolicy with policy.sigs). caller is the
// admin asking over the API, whose own statement does not count, or "" for
// the operator. Without enough valid statements the refusal is audited and
// returned as a *RefusedError inside a FailedPrecondition; the policy in
// force stays.
func (b *Broker) ApplyPolicy(ctx context.Context, caller string, p *policy.Policy, source string, bundle []statement.Signed) (*PolicyReload, error) {
	actor := "operator"
	if caller != "" {
		if err := b.RequireAdmin(caller); err != nil {
			return nil, err
		}
		actor = caller
	}
	if err := b.checkPolicySinks(p); err != nil {
		return nil, invalid("the new policy is refused and the one in force stays: %s", err)
	}
	if len(bundle) > statement.MaxBundleStatements {
		return nil, invalid("a bundle holds at most %d statements", statement.MaxBundleStatements)
	}
	p = b.withIdentity(p)
	sigs := make([]policySig, len(bundle))
	for i, s := range bundle {
		sigs[i] = policySig{Signed: audit.Signed{Statement: s.Statement, Signature: s.Signature, Certificate: s.Certificate}}
	}
	var (
		res     *PolicyReload
		refused *RefusedError
	)
	err := b.update(ctx, func(tx store.Tx) error {
		cur, pl, _, err := b.policyState(ctx, tx)
		if err != nil {
			return err
		}
		if cur == nil {
			return wrongState("no policy is in force yet: the first policy is put in force when the broker starts")
		}
		if pl.Hash == p.Hash() {
			res = &PolicyReload{Hash: p.Hash(), Previous: pl.Hash}
			return nil
		}
		now := b.now().UTC()
		j := b.judgeChange(cur, pl.Hash, p.Hash(), policy.Approval{Principal: caller}, sigs, now, cur.ChangeWindow.D())
		if !j.met {
			refused, err = b.refusePolicy(ctx, tx, now, actor, p, pl.Hash, source, j)
			return err
		}
		res, err = b.logPolicyTx(ctx, tx, p, source, actor, policyMeta{approvals: j.counted})
		return err
	})
	if err != nil {
		return nil, err
	}
	if refused != nil {
		b.log.Warn("policy refused: not enough policy admins signed it; the one in force stays", "hash", p.Hash(), "missing", refused.Missing,
			"signers", refused.Signers, "problems", refused.Problems, "by", actor, "entry", refused.Entry)
		return nil, &Error{Kind: KindState, Msg: refused.Error(), Err: refused}
	}
	if res.Changed {
		if err := b.putInForce(p); err != nil {
			return nil, err
		}
		b.log.Info("policy in force", "hash", p.Hash(), "previous", res.Previous, "by", actor, "signers", res.Signers, "changes", res.Changes)
	}
	return res, nil
}

// refusePolicy records a refused policy and announces it to every sink.
func (b *Broker) refusePolicy(ctx context.Context, tx store.Tx, now time.Time, actor string, p *policy.Policy, previous, source string, j judgement) (*RefusedError, error) {
	problems := j.problems
	if len(problems) > 32 {
		problems = append(problems[:32:32], fmt.Sprintf("and %d more", len(j.problems)-32))
	}
	signers := nonNilStrings(j.signers)
	rec, err := b.appendEntry(ctx, tx, now, audit.Draft{Type: audit.TypePolicyRefused, Actor: actor,
		Payload: audit.PolicyRefused{Hash: p.Hash(), Previous: previous, Source: source, Missing: j.missing, Signers: signers, Problems: nonNilStrings(problems)}}, false)
	if err != nil {
		return nil, err
	}
	ref := &RefusedError{Hash: p.Hash(), Previous: previous, Missing: j.missing, Signers: signers, Problems: problems, Entry: rec.Index}
	details, err := json.Marshal(map[string]any{"hash": p.Hash(), "previous": previous, "source": source, "missing": j.missing, "signers": signers, "problems": problems})
	if err != nil {
		return nil, err
	}
	idx := rec.Index
	return ref, b.emit(ctx, tx, event.Event{Type: event.PolicyRefused, Actor: actor, Time: now, AuditIndex: &idx, Details: details,
		Summary: fmt.Sprintf("POLICY REFUSED: %s tried to put policy %s in force without the policy admins' quorum (%d more signature(s) needed); policy %s stays",
			actor, short(p.Hash()), j.missing, short(previous))}, nil)
}

func nonNilStrings(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// closeStale marks stale every pending proposal bound to a policy other
// than the one now in force, in the transaction that put it in force.
func (b *Broker) closeStale(ctx context.Context, tx store.Tx, now time.Time, hash string, except string) error {
	pending, err := tx.PendingProposals(ctx, MaxPendingProposals)
	if err != nil {
		return err
	}
	for _, pp := range pending {
		if pp.ID == except || pp.Previous == hash {
			continue
		}
		if err := b.closeProposal(ctx, tx, now, pp, store.ProposalStale,
			fmt.Sprintf("policy %s was put in force first: this proposal changes policy %s, which is no longer the one in force; propose it again", short(hash), short(pp.Previous))); err != nil {
			return err
		}
	}
	return nil
}

// closeProposal ends a pending proposal with its entry and event.
func (b *Broker) closeProposal(ctx context.Context, tx store.Tx, now time.Time, pp store.PolicyProposal, state, reason string) error {
	rec, err := b.appendEntry(ctx, tx, now, audit.Draft{Type: audit.TypePolicyProposalClosed, Actor: "broker",
		Payload: audit.PolicyProposalClosed{Proposal: pp.ID, State: state, Reason: reason}}, false)
	if err != nil {
		return err
	}
	pp.State, pp.ClosedAt, pp.ClosedEntry, pp.Reason = state, now, rec.Index, reason
	if err := tx.ClosePolicyProposal(ctx, pp); err != nil {
		return err
	}
	idx := rec.Index
	details, err := json.Marshal(map[string]any{"proposal": pp.ID, "state": state, "hash": pp.Hash, "previous": pp.Previous})
	if err != nil {
		return err
	}
	return b.emit(ctx, tx, event.Event{Type: event.PolicyProposalClosed, Actor: "broker", Time: now, AuditIndex: &idx, Details: details,
		Summary: fmt.Sprintf("policy proposal %s by %s %s: %s", pp.ID, pp.Proposer, state, reason)}, nil)
}

// ResetPolicy puts p in force without the policy admins' quorum: the
// documented recovery when the admins' keys are lost. It is offered only
// to the operator, offline (breakglassd policy reset --force --reason),
// logged as a trust reset that the offline verifier flags, and announced
// to every sink.
func (b *Broker) ResetPolicy(ctx context.Context, operator, reason string, p *policy.Policy, source string) (*PolicyReload, error) {
	if strings.TrimSpace(reason) == "" {
		return nil, invalid("a trust reset needs a reason")
	}
	if err := validateText("reason", reason, 2000, false); err != nil {
		return nil, err
	}
	if operator == "" {
		operator = "operator"
	}
	if err := b.checkPolicySinks(p); err != nil {
		return nil, invalid("the new policy is refused: %s", err)
	}
	p = b.withIdentity(p)
	var res *PolicyReload
	err := b.update(ctx, func(tx store.Tx) error {
		var err error
		res, err = b.logPolicyTx(ctx, tx, p, source, operator, policyMeta{reset: &audit.PolicyReset{Operator: operator, Reason: reason}})
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := b.putInForce(p); err != nil {
		return nil, err
	}
	b.log.Warn("TRUST RESET: policy put in force without the policy admins' quorum", "hash", p.Hash(), "previous", res.Previous, "operator", operator, "reason", reason)
	return res, nil
}

// FollowPolicy puts in force the policy the log last recorded when it is
// not this broker's: another replica applied it (a proposal approved
// there, a reload). A replica never applies a policy that is not in the
// log, and re-checks the statements of one whose predecessor it runs.
func (b *Broker) FollowPolicy(ctx context.Context) error {
	var (
		pl  audit.PolicyLoaded
		idx uint64
	)
	mine := b.Policy()
	if err := b.view(ctx, func(r store.Reader) error {
		var err error
		pl, idx, err = b.policyInForce(ctx, r)
		return err
	}); errors.Is(err, store.ErrNotFound) || (err == nil && pl.Hash == mine.Hash()) {
		return nil // one indexed row read: the common case costs nothing more
	} else if err != nil {
		return err
	}
	p, err := policy.FromCanonicalJSON(pl.Policy)
	if err != nil {
		return fmt.Errorf("the policy in force (audit entry %d) does not load: %w", idx, err)
	}
	if pl.Previous == mine.Hash() && pl.Reset == nil {
		j := b.judgeChange(mine, pl.Previous, pl.Hash, policy.Approval{Principal: pl.Proposer, Key: pl.ProposerKey}, sigsOf(pl.Approvals), b.now().UTC(), mine.ChangeWindow.D()+statement.MaxSkew)
		if !j.met {
			return fmt.Errorf("the policy logged at audit entry %d does not carry a quorum of this broker's policy admins (%s): not followed", idx, strings.Join(j.problems, "; "))
		}
	}
	if err := b.checkPolicySinks(p); err != nil {
		return fmt.Errorf("the policy logged at audit entry %d is not followed: %w", idx, err)
	}
	if p.Identity == nil {
		p = p.WithIdentity(pl.Identity)
	}
	if err := b.putInForce(p); err != nil {
		return fmt.Errorf("the policy logged at audit entry %d is not followed: %w", idx, err)
	}
	b.log.Info("policy in force, as the log records it", "hash", p.Hash(), "previous", pl.Previous, "entry", idx)
	return nil
}

func sigsOf(ss []audit.Signed) []policySig {
	out := make([]policySig, len(ss))
	for i, s := range ss {
		out[i] = policySig{Signed: s}
	}
	return out
}

// ---- proposals over the API ----

// ProposalView is a proposal with its reviews and where it stands.
type ProposalView struct {
	store.PolicyProposal
	Reviews []store.ProposalReview
	Changes []string
	Weakens bool
	// Rule is the rule that judges it, in words; Signers the admins whose
	// approvals count now and Missing how many more must approve.
	Rule    string
	Signers []string
	Missing int
	// Loaded is set when this call put the policy in force.
	Loaded *PolicyReload
}

// ProposePolicy stores caller's proposal of p and logs it whole with what
// it changes; the policy admins are alerted. It is put in force when
// enough of them approve it (ReviewPolicyProposal).
func (b *Broker) ProposePolicy(ctx context.Context, caller string, cert *x509.Certificate, p *policy.Policy, source, comment string) (*ProposalView, error) {
	if err := validateText("comment", comment, 2000, false); err != nil {
		return nil, err
	}
	if err := validateText("source", source, 256, false); err != nil {
		return nil, err
	}
	if err := b.checkPolicySinks(p); err != nil {
		return nil, invalid("the proposed policy is refused: %s", err)
	}
	// A policy that names no identity rule keeps the one in force: it is
	// part of what the admins sign.
	p = b.withIdentity(p)
	proposerKey := ""
	if cert != nil {
		proposerKey = keyid.SPKI(cert.RawSubjectPublicKeyInfo)
	}
	u, err := uuid.NewV7() // time-ordered, as proposals are listed
	if err != nil {
		return nil, internal(err)
	}
	id := u.String()
	var view *ProposalView
	err = b.update(ctx, func(tx store.Tx) error {
		cur, pl, _, err := b.policyState(ctx, tx)
		if err != nil {
			return err
		}
		if cur == nil {
			return wrongState("no policy is in force yet")
		}
		if !cur.MayPropose(caller) {
			return denied("only policy admins and members of the admins group may propose policy changes")
		}
		if len(cur.PolicyAdmins) == 0 {
			return wrongState("the policy in force has no policy_admins, so nobody can approve a change of it: only a trust reset replaces it (breakglassd policy reset --force --reason ...)")
		}
		if p.Hash() == pl.Hash {
			return wrongState("the proposed policy is the one in force (%s)", short(pl.Hash))
		}
		pending, err := tx.PendingProposals(ctx, MaxPendingProposals)
		if err != nil {
			return err
		}
		if len(pending) >= MaxPendingProposals {
			return newErr(KindExhausted, "%d policy proposals are already waiting: decide or let some expire before proposing another", len(pending))
		}
		now := b.now().UTC()
		changes := policy.ChangeLines(cur, p)
		weakens := policy.Weakens(policy.Diff(cur, p))
		pp := store.PolicyProposal{ID: id, Proposer: caller, ProposerKey: proposerKey, Comment: comment, Source: source, Previous: pl.Hash,
			Hash: p.Hash(), Policy: p.CanonicalJSON(), CreatedAt: now, ExpiresAt: now.Add(cur.ChangeWindow.D()), State: store.ProposalPending}
		rec, err := b.appendEntry(ctx, tx, now, audit.Draft{Type: audit.TypePolicyProposed, Actor: caller,
			Payload: audit.PolicyProposed{Proposal: id, Hash: pp.Hash, Previous: pp.Previous, Policy: pp.Policy, Source: source, Comment: comment,
				ProposerKey: proposerKey, ExpiresAt: pp.ExpiresAt, Changes: changes, Weakens: weakens}}, true)
		if err != nil {
			return err
		}
		pp.Entry = rec.Index
		if err := tx.AddPolicyProposal(ctx, pp); err != nil {
			return err
		}
		if err := b.announceProposal(ctx, tx, cur, pp, changes, weakens, rec.Index); err != nil {
			return err
		}
		view = &ProposalView{PolicyProposal: pp, Changes: changes, Weakens: weakens}
		b.standing(cur, view)
		return nil
	})
	if err != nil {
		return nil, err
	}
	b.log.Info("policy change proposed", "proposal", id, "by", caller, "hash", view.Hash, "weakens", view.Weakens, "entry", view.Entry)
	return view, nil
}

// announceProposal pages the policy admins (all but the proposer) about a
// new proposal, weakening marked.
func (b *Broker) announceProposal(ctx context.Context, tx store.Tx, cur *policy.Policy, pp store.PolicyProposal, changes []string, weakens bool, idx uint64) error {
	admins := slices.DeleteFunc(cur.PolicyAdminList(), func(a string) bool { return a == pp.Proposer })
	summary := fmt.Sprintf("policy change %s proposed by %s: %s needed (%s); %s", pp.ID, pp.Proposer, cur.PolicyAdmins.Short(), short(pp.Hash), strings.Join(changes, "; "))
	if weakens {
		summary = "WEAKENING " + summary
	}
	details, err := json.Marshal(map[string]any{"proposal": pp.ID, "hash": pp.Hash, "previous": pp.Previous, "changes": changes, "weakens": weakens,
		"expires_at": pp.ExpiresAt, "rule": cur.PolicyAdmins.Short(), "comment": pp.Comment})
	if err != nil {
		return err
	}
	return b.emit(ctx, tx, event.Event{Type: event.PolicyProposed, Actor: pp.Proposer, Time: pp.CreatedAt, AuditIndex: &idx, Summary: summary, Details: details,
		Notify: contacts(cur, admins)}, nil)
}

// standing fills where a proposal stands under cur, its judge.
func (b *Broker) standing(cur *policy.Policy, v *ProposalView) {
	v.Rule = cur.AdminRule()
	var sigs []policySig
	for _, rv := range v.Reviews {
		if rv.Decision != statement.DecisionApprove {
			continue
		}
		comment := rv.Comment
		sigs = append(sigs, policySig{Signed: audit.Signed{Statement: rv.Statement, Signature: rv.Signature, Certificate: rv.Cert}, Comment: &comment})
	}
	if v.State != store.ProposalPending {
		return
	}
	j := b.judgeChange(cur, v.Previous, v.Hash, policy.Approval{Principal: v.Proposer, Key: v.ProposerKey}, sigs, b.now().UTC(), cur.ChangeWindow.D()+statement.MaxSkew)
	v.Signers, v.Missing = j.signers, j.missing
}

// GetPolicyProposal returns a proposal with its reviews and what it
// changes. Policy admins, admins and auditors may read proposals.
func (b *Broker) GetPolicyProposal(ctx context.Context, caller, id string) (*ProposalView, error) {
	var view *ProposalView
	err := b.view(ctx, func(r store.Reader) error {
		cur, pl, _, err := b.policyState(ctx, r)
		if err != nil {
			return err
		}
		if cur == nil || !(cur.MayPropose(caller) || cur.IsAuditor(caller)) {
			return newErr(KindNotFound, "policy proposal %s not found", id)
		}
		pp, err := r.PolicyProposal(ctx, id)
		if errors.Is(err, store.ErrNotFound) {
			return newErr(KindNotFound, "policy proposal %s not found", id)
		}
		if err != nil {
			return err
		}
		reviews, err := r.ProposalReviews(ctx, id)
		if err != nil {
			return err
		}
		view = &ProposalView{PolicyProposal: *pp, Reviews: reviews}
		if err := b.describeProposal(view, cur, pl.Hash); err != nil {
			return err
		}
		return nil
	})
	return view, err
}

// describeProposal fills the changes of a proposal against the policy it
// was proposed to change (the one in force, while it is pending).
func (b *Broker) describeProposal(v *ProposalView, cur *policy.Policy, curHash string) error {
	np, err := policy.FromCanonicalJSON(v.Policy)
	if err != nil {
		return fmt.Errorf("the stored proposal %s does not load: %w", v.ID, err)
	}
	base := cur
	if curHash != v.Previous {
		base = nil // no longer the policy it changes: describe it whole
	}
	v.Changes = policy.ChangeLines(base, np)
	v.Weakens = base != nil && policy.Weakens(policy.Diff(base, np))
	b.standing(cur, v)
	return nil
}

// ListPolicyProposals returns the pending proposals, oldest first.
func (b *Broker) ListPolicyProposals(ctx context.Context, caller string) ([]*ProposalView, error) {
	var out []*ProposalView
	err := b.view(ctx, func(r store.Reader) error {
		cur, pl, _, err := b.policyState(ctx, r)
		if err != nil {
			return err
		}
		if cur == nil || !(cur.MayPropose(caller) || cur.IsAuditor(caller)) {
			return denied("only policy admins, admins and auditors may list policy proposals")
		}
		pending, err := r.PendingProposals(ctx, MaxPendingProposals)
		if err != nil {
			return err
		}
		for _, pp := range pending {
			reviews, err := r.ProposalReviews(ctx, pp.ID)
			if err != nil {
				return err
			}
			v := &ProposalView{PolicyProposal: pp, Reviews: reviews}
			if err := b.describeProposal(v, cur, pl.Hash); err != nil {
				return err
			}
			out = append(out, v)
		}
		return nil
	})
	return out, err
}

// PolicyReviewInput is a policy admin's decision on a proposal and the
// policy statement they signed with the key of Cert, their connection's
// client certificate.
type PolicyReviewInput struct {
	ID        string
	Decision  string
	Comment   string
	Statement []byte
	Signature []byte
	Cert      *x509.Certificate
}

// ReviewPolicyProposal records caller's signed decision on a pending
// proposal. An approval that meets the policy admins' rule of the policy
// in force puts the proposed policy in force in the same transaction, its
// policy_loaded entry carrying the statements that counted; denials that
// leave too few admins to meet the rule deny it. A proposal whose window
// passed, or whose policy is no longer the one in force, is closed
// instead and the review refused.
func (b *Broker) ReviewPolicyProposal(ctx context.Context, caller string, in PolicyReviewInput) (*ProposalView, error) {
	if in.Decision != statement.DecisionApprove && in.Decision != statement.DecisionDeny {
		return nil, invalid("decision must be approve or deny")
	}
	if err := validateText("comment", in.Comment, 2000, false); err != nil {
		return nil, err
	}
	if len(in.Statement) == 0 || len(in.Signature) == 0 || in.Cert == nil {
		return nil, invalid("a policy review must carry a policy statement signed with your client certificate's key (bgctl policy approve and deny sign it for you)")
	}
	if err := b.precheckSigner(in.Cert, caller); err != nil {
		return nil, err
	}
	_ = b.sigs.Verify(in.Cert, in.Statement, in.Signature) // cached for the check inside
	var r proposalReview
	err := b.update(ctx, func(tx store.Tx) error {
		r = proposalReview{caller: caller, in: in}
		return b.reviewProposalTx(ctx, tx, &r)
	})
	if err != nil {
		return nil, err
	}
	if r.closed != nil {
		return nil, r.closed
	}
	if r.applied != nil {
		if err := b.putInForce(r.applied); err != nil {
			return nil, err
		}
		b.log.Info("policy in force", "hash", r.applied.Hash(), "previous", r.view.Previous, "proposal", r.view.ID, "signers", r.view.Loaded.Signers,
			"changes", r.view.Loaded.Changes)
	}
	b.log.Info("policy proposal reviewed", "proposal", in.ID, "by", caller, "decision", in.Decision, "state", r.view.State)
	return r.view, nil
}

// proposalReview is one review of a proposal as its transaction goes.
type proposalReview struct {
	caller string
	in     PolicyReviewInput
	now    time.Time
	cur    *policy.Policy
	pl     audit.PolicyLoaded
	pp     *store.PolicyProposal
	// reviews are the proposal's reviews, this one included once recorded.
	reviews []store.ProposalReview
	// view is the answer; closed the refusal of a proposal this call found
	// stale or expired (and closed); applied the policy put in force.
	view    *ProposalView
	closed  error
	applied *policy.Policy
}

func (b *Broker) reviewProposalTx(ctx context.Context, tx store.Tx, r *proposalReview) error {
	var err error
	if r.cur, r.pl, _, err = b.policyState(ctx, tx); err != nil {
		return err
	}
	if r.cur == nil || !r.cur.IsPolicyAdmin(r.caller) {
		return denied("only policy admins of the policy in force may review policy proposals")
	}
	r.pp, err = tx.PolicyProposal(ctx, r.in.ID)
	if errors.Is(err, store.ErrNotFound) {
		return newErr(KindNotFound, "policy proposal %s not found", r.in.ID)
	}
	if err != nil {
		return err
	}
	r.now = b.now().UTC()
	if open, err := b.proposalOpen(ctx, tx, r); err != nil || !open {
		return err
	}
	if err := b.checkPolicyReviewer(ctx, tx, r); err != nil {
		return err
	}
	if err := b.recordPolicyReview(ctx, tx, r); err != nil {
		return err
	}
	r.view = &ProposalView{PolicyProposal: *r.pp, Reviews: r.reviews}
	if err := b.describeProposal(r.view, r.cur, r.pl.Hash); err != nil {
		return err
	}
	return b.settleProposal(ctx, tx, r)
}

// proposalOpen reports whether the proposal may be reviewed: pending, of
// the policy in force, within its window. One found stale or expired is
// closed here, and the review refused (r.closed).
func (b *Broker) proposalOpen(ctx context.Context, tx store.Tx, r *proposalReview) (bool, error) {
	pp := r.pp
	if pp.State != store.ProposalPending {
		return false, wrongState("policy proposal %s is %s since %s: %s", pp.ID, pp.State, pp.ClosedAt.Format(time.RFC3339), pp.Reason)
	}
	switch {
	case r.pl.Hash != pp.Previous:
		reason := fmt.Sprintf("policy %s is in force now, not %s, which this proposal changes: propose it again", short(r.pl.Hash), short(pp.Previous))
		r.closed = wrongState("policy proposal %s is stale: %s", pp.ID, reason)
		return false, b.closeProposal(ctx, tx, r.now, *pp, store.ProposalStale, reason)
	case !r.now.Before(pp.ExpiresAt):
		reason := fmt.Sprintf("its window ended at %s without the policy admins' quorum", pp.ExpiresAt.Format(time.RFC3339))
		r.closed = wrongState("policy proposal %s expired: %s", pp.ID, reason)
		return false, b.closeProposal(ctx, tx, r.now, *pp, store.ProposalExpired, reason)
	}
	return true, nil
}

// checkPolicyReviewer refuses the proposer (by name or key), a second
// review by a principal or a key, and a statement that is not exactly
// this decision on this change, signed by the connection's certificate.
func (b *Broker) checkPolicyReviewer(ctx context.Context, tx store.Tx, r *proposalReview) error {
	pp, in := r.pp, r.in
	if r.caller == pp.Proposer {
		return denied("you proposed this change: the proposer never reviews their own proposal")
	}
	key := keyid.SPKI(in.Cert.RawSubjectPublicKeyInfo)
	if pp.ProposerKey != "" && key == pp.ProposerKey {
		return denied("your client certificate's key proposed this change as %s: the proposer never reviews their own proposal", pp.Proposer)
	}
	var err error
	if r.reviews, err = tx.ProposalReviews(ctx, pp.ID); err != nil {
		return err
	}
	for _, rv := range r.reviews {
		switch {
		case rv.Reviewer == r.caller:
			return newErr(KindExists, "you already reviewed policy proposal %s; each admin counts once", pp.ID)
		case rv.Key == key:
			return newErr(KindExists, "the key of your client certificate already reviewed policy proposal %s as %s; each key counts once", pp.ID, rv.Reviewer)
		}
	}
	if err := b.checkSigner(in.Cert, r.caller, r.now); err != nil {
		return err
	}
	st, err := statement.ParsePolicyStatement(in.Statement)
	if err != nil {
		return invalid("the signed policy statement is malformed: %s", err)
	}
	if err := b.sigs.Verify(in.Cert, in.Statement, in.Signature); err != nil {
		return signatureError("the policy statement's", err)
	}
	if err := statement.CheckPolicy(st, statement.PolicyExpect{Decision: in.Decision, Origin: b.cfg.Origin, Previous: pp.Previous, Policy: pp.Hash,
		Comment: in.Comment, Now: r.now}); err != nil {
		return invalid("the signed policy statement does not match this review of proposal %s: %s", pp.ID, err)
	}
	return nil
}

// recordPolicyReview logs and stores the review and announces it.
func (b *Broker) recordPolicyReview(ctx context.Context, tx store.Tx, r *proposalReview) error {
	pp, in := r.pp, r.in
	rec, err := b.appendEntry(ctx, tx, r.now, audit.Draft{Type: audit.TypePolicyReviewed, Actor: r.caller,
		Payload: audit.PolicyReviewed{Proposal: pp.ID, Decision: in.Decision, Comment: in.Comment,
			Signed: audit.Signed{Statement: in.Statement, Signature: in.Signature, Certificate: in.Cert.Raw}}}, in.Decision == statement.DecisionApprove)
	if err != nil {
		return err
	}
	if err := b.checkSignerAtEntry(in.Cert, r.caller, r.now, rec); err != nil {
		return err
	}
	rv := store.ProposalReview{Proposal: pp.ID, Reviewer: r.caller, Key: keyid.SPKI(in.Cert.RawSubjectPublicKeyInfo), Decision: in.Decision, Comment: in.Comment,
		Statement: in.Statement, Signature: in.Signature, Cert: in.Cert.Raw, At: r.now, Entry: rec.Index}
	if err := tx.AddProposalReview(ctx, rv); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return newErr(KindExists, "you or your key already reviewed policy proposal %s", pp.ID)
		}
		return err
	}
	r.reviews = append(r.reviews, rv)
	idx := rec.Index
	return b.emit(ctx, tx, event.Event{Type: event.PolicyReviewed, Actor: r.caller, Time: r.now, AuditIndex: &idx,
		Summary: fmt.Sprintf("%s %ss policy proposal %s by %s", r.caller, in.Decision, pp.ID, pp.Proposer)}, nil)
}

// settleProposal puts the proposal in force when its approvals meet the
// rule, or denies it when the admins left could no longer meet it.
func (b *Broker) settleProposal(ctx context.Context, tx store.Tx, r *proposalReview) error {
	pp, cur := r.pp, r.cur
	switch {
	case r.in.Decision == statement.DecisionApprove && r.view.Missing == 0:
		var sigs []policySig
		for _, rv := range r.reviews {
			if rv.Decision == statement.DecisionApprove {
				c := rv.Comment
				sigs = append(sigs, policySig{Signed: audit.Signed{Statement: rv.Statement, Signature: rv.Signature, Certificate: rv.Cert}, Comment: &c})
			}
		}
		j := b.judgeChange(cur, pp.Previous, pp.Hash, policy.Approval{Principal: pp.Proposer, Key: pp.ProposerKey}, sigs, r.now, cur.ChangeWindow.D()+statement.MaxSkew)
		if !j.met {
			return nil
		}
		np, err := policy.FromCanonicalJSON(pp.Policy)
		if err != nil {
			return err
		}
		if err := b.checkPolicySinks(np); err != nil {
			return invalid("the proposed policy cannot be put in force: %s", err)
		}
		res, err := b.logPolicyTx(ctx, tx, np, pp.Source, r.caller, policyMeta{approvals: j.counted, proposal: pp.ID, proposer: pp.Proposer, proposerKey: pp.ProposerKey})
		if err != nil {
			return err
		}
		pp.State, pp.ClosedAt, pp.ClosedEntry, pp.Reason = store.ProposalApplied, r.now, res.Entry.Index, "put in force with the approvals of "+strings.Join(j.signers, ", ")
		if err := tx.ClosePolicyProposal(ctx, *pp); err != nil {
			return err
		}
		r.view.PolicyProposal, r.view.Loaded, r.applied = *pp, res, np
	case r.in.Decision == statement.DecisionDeny && !b.stillReachable(cur, pp, r.reviews):
		reason := "denied by " + strings.Join(deniers(r.reviews), ", ") + ": the admins left cannot meet " + cur.PolicyAdmins.Short()
		if err := b.closeProposal(ctx, tx, r.now, *pp, store.ProposalDenied, reason); err != nil {
			return err
		}
		pp.State, pp.ClosedAt, pp.Reason = store.ProposalDenied, r.now, reason
		r.view.PolicyProposal = *pp
	}
	return nil
}

// stillReachable reports whether the admins who have not denied a
// proposal (nor proposed it) could still meet the rule.
func (b *Broker) stillReachable(cur *policy.Policy, pp *store.PolicyProposal, reviews []store.ProposalReview) bool {
	denied := deniers(reviews)
	var left []string
	for _, a := range cur.PolicyAdminList() {
		if a != pp.Proposer && !slices.Contains(denied, a) {
			left = append(left, a)
		}
	}
	return policy.Evaluate(cur, cur.PolicyAdmins, pp.Proposer, left).Met
}

func deniers(reviews []store.ProposalReview) []string {
	var out []string
	for _, r := range reviews {
		if r.Decision == statement.DecisionDeny {
			out = append(out, r.Reviewer)
		}
	}
	return out
}

// ExpireProposals closes the pending proposals whose window passed,
// through the index of their expiry, and returns how many.
func (b *Broker) ExpireProposals(ctx context.Context) (int, error) {
	now := b.now().UTC()
	var due []store.PolicyProposal
	if err := b.view(ctx, func(r store.Reader) error {
		var err error
		due, err = r.DueProposals(ctx, now, MaxPendingProposals)
		return err
	}); err != nil || len(due) == 0 {
		return 0, err
	}
	n := 0
	err := b.update(ctx, func(tx store.Tx) error {
		n = 0
		due, err := tx.DueProposals(ctx, now, MaxPendingProposals)
		if err != nil {
			return err
		}
		for _, pp := range due {
			if err := b.closeProposal(ctx, tx, now, pp, store.ProposalExpired,
				fmt.Sprintf("its window ended at %s without the policy admins' quorum", pp.ExpiresAt.Format(time.RFC3339))); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	return n, err
}

// startPolicy settles the policy in force at start. A log without a policy
// gets its genesis: the configured policy, signed by a quorum of its own
// admins or, with AcceptUnsignedGenesis, logged unsigned. Otherwise the
// policy in force is the one the log last recorded; the configured one
// replaces it only with statements that meet the rule of the logged one,
// and is otherwise set aside (logged, never put in force).
func (b *Broker) startPolicy(ctx context.Context) error {
	want := b.withIdentity(b.cfg.Policy)
	var (
		inForce *policy.Policy
		notice  string
		loaded  *PolicyReload
	)
	err := b.update(ctx, func(tx store.Tx) error {
		cur, pl, idx, err := b.policyState(ctx, tx)
		if err != nil {
			return err
		}
		now := b.now().UTC()
		switch {
		case cur == nil:
			inForce = want
			loaded, err = b.startGenesis(ctx, tx, want, now)
			return err
		case pl.Hash == want.Hash():
			inForce = want
			return nil
		}
		ss, err := b.startSigs(pl.Hash, want.Hash())
		if err != nil {
			return err
		}
		j := b.judgeChange(cur, pl.Hash, want.Hash(), policy.Approval{}, ss, now, cur.ChangeWindow.D())
		if !j.met {
			inForce = cur
			if cur.Identity == nil {
				inForce = cur.WithIdentity(pl.Identity)
			}
			notice = fmt.Sprintf("the configured policy %s (%s) is not put in force: it needs %d more signature(s) of the policy admins of the policy in force %s (audit entry %d), which stays (policy.sigs; bgctl policy sign, or bgctl policy propose)%s",
				b.cfg.PolicySource, short(want.Hash()), j.missing, short(pl.Hash), idx, problemsSuffix(j.problems))
			return nil
		}
		inForce = want
		loaded, err = b.logPolicyTx(ctx, tx, want, b.cfg.PolicySource, "broker", policyMeta{approvals: j.counted})
		return err
	})
	if err != nil {
		return err
	}
	if err := b.checkPolicySinks(inForce); err != nil {
		return err
	}
	if err := b.putInForce(inForce); err != nil {
		return err
	}
	if notice != "" {
		b.log.Warn(notice)
		if b.cfg.PolicyNotice != nil {
			b.cfg.PolicyNotice(notice)
		}
	}
	if loaded != nil && loaded.Changed {
		b.log.Info("policy in force", "hash", inForce.Hash(), "previous", loaded.Previous, "signers", loaded.Signers)
	}
	return nil
}

// startSigs are the statements that come with the configured policy: its
// bundle, and in dev mode the demo admins' too.
func (b *Broker) startSigs(previous, hash string) ([]policySig, error) {
	bundle := b.cfg.PolicySignatures
	if b.cfg.SignPolicy != nil {
		signed, err := b.cfg.SignPolicy(previous, hash)
		if err != nil {
			return nil, err
		}
		bundle = append(slices.Clip(bundle), signed...)
	}
	out := make([]policySig, len(bundle))
	for i, s := range bundle {
		out[i] = policySig{Signed: audit.Signed{Statement: s.Statement, Signature: s.Signature, Certificate: s.Certificate}}
	}
	return out, nil
}

// startGenesis logs the first policy of a log: signed by a quorum of its
// own admins, or unsigned when the operator accepts that.
func (b *Broker) startGenesis(ctx context.Context, tx store.Tx, want *policy.Policy, now time.Time) (*PolicyReload, error) {
	ss, err := b.startSigs("", want.Hash())
	if err != nil {
		return nil, err
	}
	j := b.judgeChange(want, "", want.Hash(), policy.Approval{}, ss, now, max(want.ChangeWindow.D(), statement.MaxSkew))
	switch {
	case len(want.PolicyAdmins) > 0 && j.met:
		return b.logPolicyTx(ctx, tx, want, b.cfg.PolicySource, "broker", policyMeta{approvals: j.counted, genesis: audit.GenesisSigned})
	case b.cfg.AcceptUnsignedGenesis:
		return b.logPolicyTx(ctx, tx, want, b.cfg.PolicySource, "broker", policyMeta{genesis: audit.GenesisUnsigned})
	case len(want.PolicyAdmins) == 0:
		return nil, wrongState("the log has no policy yet and %s has no policy_admins to sign it: give the first policy policy admins and their signatures (bgctl policy sign --genesis, into policy.sigs), or start once with --accept-unsigned-genesis (logged as an unsigned genesis the offline verifier reports)", b.cfg.PolicySource)
	}
	return nil, wrongState("the log has no policy yet and the first policy (%s, %s) is not signed by a quorum of its own policy admins: %d more signature(s) needed (bgctl policy sign --file POLICY --genesis, into policy.sigs; or start once with --accept-unsigned-genesis)%s",
		b.cfg.PolicySource, short(want.Hash()), j.missing, problemsSuffix(j.problems))
}

func problemsSuffix(problems []string) string {
	if len(problems) == 0 {
		return ""
	}
	return ": " + strings.Join(problems, "; ")
}

// CurrentPolicy returns the policy the log records as in force and the
// index of its policy_loaded entry, for admins and auditors.
func (b *Broker) CurrentPolicy(ctx context.Context, caller string) (*policy.Policy, uint64, error) {
	var (
		p   *policy.Policy
		idx uint64
	)
	err := b.view(ctx, func(r store.Reader) error {
		var err error
		if p, _, idx, err = b.policyState(ctx, r); err != nil {
			return err
		}
		if p == nil {
			return wrongState("no policy is in force yet")
		}
		if !(p.MayPropose(caller) || p.IsAuditor(caller)) {
			return denied("only members of the admins group, policy admins and auditors may read the policy")
		}
		return nil
	})
	return p, idx, err
}

// putInForce makes p the policy this broker judges by, its identity rule
// applied to every caller.
func (b *Broker) putInForce(p *policy.Policy) error {
	if err := b.applyIdentity(p); err != nil {
		return err
	}
	b.policy.Store(p)
	return nil
}
