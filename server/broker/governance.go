package broker

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/format/statement"
	"github.com/bgbroker/breakglass/server/event"
	"github.com/bgbroker/breakglass/server/request"
	"github.com/bgbroker/breakglass/server/store"
)

// Signed is a statement signed with the caller's client certificate key.
type Signed struct {
	Statement []byte
	Signature []byte
	Cert      *x509.Certificate
}

// checkSigned verifies a statement of type typ about subject and content,
// with notes, signed by caller's certificate, which must chain to the
// client CA, be within its validity period and not be revoked at now, as
// an offline verifier checks it.
func (b *Broker) checkSigned(caller string, s Signed, typ, subject, content, notes string, now time.Time) error {
	if len(s.Statement) == 0 || len(s.Signature) == 0 || s.Cert == nil {
		return invalid("this must carry a statement signed with your client certificate's key (bgctl and the Go SDK sign it for you)")
	}
	if err := b.checkSigner(s.Cert, caller, now); err != nil {
		return err
	}
	st, err := statement.Parse(s.Statement)
	if err != nil {
		return invalid("the signed statement is malformed: %s", err)
	}
	if err := b.sigs.Verify(s.Cert, s.Statement, s.Signature); err != nil {
		return signatureError("the statement's", err)
	}
	if err := statement.Check(st, typ, b.cfg.Origin, subject, content, notes, now); err != nil {
		return invalid("the signed statement does not match: %s", err)
	}
	return nil
}

// checkSigner refuses a signed statement whose certificate would not hold
// in the log at at: the offline verifier checks that it chained to the
// client CA, was within its validity period and not on the CRL, and named
// the entry's actor, at the entry's time. Such an entry, once written,
// would make the log fail verification for ever after, so it is refused
// before anything is written.
func (b *Broker) checkSigner(cert *x509.Certificate, caller string, at time.Time) error {
	if cert == nil {
		return invalid("this must carry a statement signed with your client certificate's key (bgctl and the Go SDK sign it for you)")
	}
	who, err := b.cfg.Certs.VerifyAt(cert, at)
	if err != nil {
		return &Error{Kind: KindUnauthenticated, Err: err,
			Msg: fmt.Sprintf("the client certificate you signed with cannot vouch for you at %s (%s); nothing was recorded: renew your certificate and sign again",
				at.UTC().Format(time.RFC3339), err)}
	}
	if who != caller {
		return &Error{Kind: KindUnauthenticated, Msg: fmt.Sprintf("the client certificate you signed with names %s, not %s; nothing was recorded", who, caller)}
	}
	return nil
}

// precheckSigner is checkSigner at the broker's time, before the write
// transaction: the chain is built and verified here, so that the checks
// inside the transaction find it cached and no other writer waits on it.
func (b *Broker) precheckSigner(cert *x509.Certificate, caller string) error {
	if cert == nil {
		return nil // refused inside, in the order of the other checks
	}
	return b.checkSigner(cert, caller, b.now().UTC())
}

// checkSignerAtEntry checks the certificate again at the time the entry
// was actually given, when that is not now (the log's time never goes
// back, so an entry can be later than the clock of the replica writing it).
func (b *Broker) checkSignerAtEntry(cert *x509.Certificate, caller string, now time.Time, rec audit.Record) error {
	if rec.Time.Equal(now) {
		return nil
	}
	return b.checkSigner(cert, caller, rec.Time)
}

// overdueReviewOf returns an open post-use review of requester that is
// past due at now, if any.
func overdueReviewOf(prs []store.PostReview, requester string, now time.Time) *store.PostReview {
	for i, pr := range prs {
		if pr.Requester == requester && pr.ClosedAt.IsZero() && !now.Before(pr.DueAt) {
			return &prs[i]
		}
	}
	return nil
}

// checkNoOverdueReview refuses a new request from a requester with an
// overdue post-use review (block_on_overdue_review).
func (b *Broker) checkNoOverdueReview(ctx context.Context, tx store.Tx, requester string, now time.Time) error {
	prs, err := tx.PostReviews(ctx, true)
	if err != nil {
		return err
	}
	if pr := overdueReviewOf(prs, requester, now); pr != nil {
		return wrongState("the post-use review %s of your grant %s was due %s and is still open; it must be closed before you can open a new request",
			pr.ID, pr.RequestID, pr.DueAt.UTC().Format(time.RFC3339))
	}
	return nil
}

// openPostReview opens the review of a grant that just issued its first
// token, due review_within after the grant ends.
func (b *Broker) openPostReview(ctx context.Context, tx store.Tx, r *request.Request, now time.Time) error {
	p := b.Policy()
	acct, ok := p.Account(r.Account)
	if !ok {
		return nil
	}
	id, err := uuid.NewV7()
	if err != nil {
		return err
	}
	excluded := append([]string{r.Requester}, r.Approvers...)
	pr := store.PostReview{ID: id.String(), RequestID: r.ID, Account: r.Account, Requester: r.Requester, Excluded: excluded,
		OpenedAt: now, DueAt: r.GrantExpiresAt.Add(acct.ReviewWithin.D())}
	rec, err := b.appendEntry(ctx, tx, now, audit.Draft{Type: audit.TypeReviewOpened, Actor: "broker", Request: r.ID, Account: r.Account,
		Payload: audit.PostReviewOpened{ID: pr.ID, DueAt: pr.DueAt, Reviewers: acct.Reviewers, Excluded: excluded}}, true)
	if err != nil {
		return err
	}
	if err := tx.AddPostReview(ctx, pr); err != nil {
		return err
	}
	var reviewers []string
	for _, m := range p.Groups[acct.Reviewers] {
		if !slices.Contains(excluded, m) {
			reviewers = append(reviewers, m)
		}
	}
	ev := requestEvent(event.ReviewOpened, r, "broker", fmt.Sprintf("post-use review %s of %s's grant on %s is open, due %s", pr.ID, r.Requester, r.Account, pr.DueAt.Format(time.RFC3339)), &rec)
	ev.Notify = contacts(p, reviewers)
	return b.emit(ctx, tx, ev, nil)
}

// PostReviews lists post-use reviews the caller may see: those they may
// close, and all for auditors.
func (b *Broker) PostReviews(ctx context.Context, caller string, open bool) ([]store.PostReview, error) {
	p := b.Policy()
	var out []store.PostReview
	err := b.view(ctx, func(r store.Reader) error {
		prs, err := r.PostReviews(ctx, open)
		if err != nil {
			return err
		}
		for _, pr := range prs {
			if p.IsAuditor(caller) || b.mayClose(p, pr, caller) || pr.Requester == caller {
				out = append(out, pr)
			}
		}
		return nil
	})
	return out, err
}

func (b *Broker) mayClose(p *policy.Policy, pr store.PostReview, caller string) bool {
	acct, ok := p.Account(pr.Account)
	return ok && p.IsReviewer(acct, caller) && !slices.Contains(pr.Excluded, caller)
}

// ClosePostReview closes a post-use review with the reviewer's signed notes.
func (b *Broker) ClosePostReview(ctx context.Context, caller, id, notes string, s Signed) (*store.PostReview, audit.Record, error) {
	if err := validateText("notes", notes, 4000, true); err != nil {
		return nil, audit.Record{}, err
	}
	if err := b.precheckSigner(s.Cert, caller); err != nil {
		return nil, audit.Record{}, err
	}
	var (
		out *store.PostReview
		rec audit.Record
	)
	err := b.update(ctx, func(tx store.Tx) error {
		pr, err := tx.PostReview(ctx, id)
		if errors.Is(err, store.ErrNotFound) {
			return newErr(KindNotFound, "post-use review %s not found", id)
		}
		if err != nil {
			return err
		}
		// Who may close is judged by the policy in force, as the log says.
		if err := b.checkPolicyInForce(ctx, tx); err != nil {
			return err
		}
		p := b.Policy()
		if !b.mayClose(p, *pr, caller) {
			if p.IsAuditor(caller) || pr.Requester == caller {
				return denied("only members of the account's reviewer group who neither requested nor approved the grant may close its review")
			}
			return newErr(KindNotFound, "post-use review %s not found", id)
		}
		if !pr.ClosedAt.IsZero() {
			return wrongState("post-use review %s was closed at %s by %s", id, pr.ClosedAt.UTC().Format(time.RFC3339), pr.ClosedBy)
		}
		r, err := tx.Request(ctx, pr.RequestID)
		if err != nil {
			return err
		}
		now := b.now().UTC()
		if err := b.checkSigned(caller, s, statement.TypeReviewClose, r.ID, r.Content().Digest(), notes, now); err != nil {
			return err
		}
		pr.ClosedAt, pr.ClosedBy, pr.Notes, pr.Statement, pr.Signature, pr.Cert = now, caller, notes, s.Statement, s.Signature, s.Cert.Raw
		rec, err = b.appendEntry(ctx, tx, now, audit.Draft{Type: audit.TypeReviewClosed, Actor: caller, Request: r.ID, Account: r.Account,
			Payload: audit.PostReviewClosed{ID: pr.ID, Notes: notes, Signed: audit.Signed{Statement: s.Statement, Signature: s.Signature, Certificate: s.Cert.Raw}}}, false)
		if err != nil {
			return err
		}
		if err := b.checkSignerAtEntry(s.Cert, caller, now, rec); err != nil {
			return err
		}
		if err := tx.ClosePostReview(ctx, *pr); err != nil {
			return err
		}
		out = pr
		return b.emit(ctx, tx, requestEvent(event.ReviewClosed, r, caller, fmt.Sprintf("%s closed the post-use review of %s's grant on %s: %s", caller, r.Requester, r.Account, oneLine(notes)), &rec), nil)
	})
	return out, rec, err
}

// Attest records that an owner confirms an account is still needed and its
// approvers are right, under the policy in force.
func (b *Broker) Attest(ctx context.Context, caller, account, notes string, s Signed) (*store.Attestation, audit.Record, error) {
	if err := validateText("notes", notes, 4000, true); err != nil {
		return nil, audit.Record{}, err
	}
	p := b.Policy()
	acct, ok := p.Account(account)
	if !ok {
		return nil, audit.Record{}, newErr(KindNotFound, "account %q does not exist", account)
	}
	if !p.IsOwner(acct, caller) {
		return nil, audit.Record{}, denied("only members of account %s's owner group (%s) may attest it", account, acct.Owner)
	}
	if err := b.precheckSigner(s.Cert, caller); err != nil {
		return nil, audit.Record{}, err
	}
	var (
		out *store.Attestation
		rec audit.Record
	)
	err := b.update(ctx, func(tx store.Tx) error {
		// An attestation names the policy in force: it must be this one.
		if err := b.checkPolicyInForce(ctx, tx); err != nil {
			return err
		}
		now := b.now().UTC()
		st, err := statement.Parse(s.Statement)
		if err != nil || st.Type != statement.TypeAttest {
			return invalid("an attestation must carry a signed attest statement")
		}
		if err := b.checkSigned(caller, s, statement.TypeAttest, st.Request, statement.AccountDigest(account, p.Hash()), notes, now); err != nil {
			return err
		}
		a := store.Attestation{ID: st.Request, Account: account, By: caller, At: now, Notes: notes, PolicyHash: p.Hash(),
			Statement: s.Statement, Signature: s.Signature, Cert: s.Cert.Raw}
		rec, err = b.appendEntry(ctx, tx, now, audit.Draft{Type: audit.TypeAccountAttested, Actor: caller, Account: account,
			Payload: audit.AccountAttested{ID: a.ID, Notes: notes, PolicyHash: a.PolicyHash, Signed: audit.Signed{Statement: s.Statement, Signature: s.Signature, Certificate: s.Cert.Raw}}}, false)
		if err != nil {
			return err
		}
		if err := b.checkSignerAtEntry(s.Cert, caller, now, rec); err != nil {
			return err
		}
		a.EntryIndex = rec.Index
		if err := tx.AddAttestation(ctx, a); err != nil {
			if errors.Is(err, store.ErrConflict) {
				return newErr(KindExists, "attestation %s was already recorded", a.ID)
			}
			return err
		}
		out = &a
		idx := rec.Index
		return b.emit(ctx, tx, event.Event{Type: event.AttestationDone, Account: account, Actor: caller, AuditIndex: &idx,
			Summary: fmt.Sprintf("%s attested that %s is still needed and its approvers are right: %s", caller, account, oneLine(notes))}, nil)
	})
	return out, rec, err
}

// RipenSolo approves solo requests whose veto window has passed since
// their alert was acknowledged, without a denial. It returns how many.
func (b *Broker) RipenSolo(ctx context.Context) (int, error) {
	now := b.now().UTC()
	var due []*request.Request
	if err := b.view(ctx, func(r store.Reader) error {
		var err error
		due, err = r.SoloAcknowledged(ctx)
		return err
	}); err != nil {
		return 0, err
	}
	p := b.Policy()
	n := 0
	for _, d := range due {
		acct, ok := p.Account(d.Account)
		if !ok || acct.Solo == nil || now.Before(d.SoloAckedAt.Add(acct.Solo.Delay.D())) {
			continue
		}
		err := b.update(ctx, func(tx store.Tx) error {
			r, err := tx.Request(ctx, d.ID)
			if err != nil {
				return err
			}
			if state, _, _ := r.Effective(now); state != request.Pending || r.SoloAckedAt.IsZero() {
				return nil
			}
			if err := b.approve(ctx, tx, p, r, now, audit.RequestApproved{Alternative: -1, Solo: true, AcknowledgedAt: r.SoloAckedAt}, []string{}); err != nil {
				return err
			}
			n++
			if err := tx.SaveRequest(ctx, r); err != nil {
				return err
			}
			// A solo grant is always reviewed after, used or not.
			return b.openPostReview(ctx, tx, r, now)
		})
		if err != nil {
			return n, err
		}
		b.notify(d.ID)
	}
	return n, nil
}

// Overdue raises, once a day each, the alerts for overdue post-use reviews,
// drills and attestations, and for client certificates about to lapse.
func (b *Broker) Overdue(ctx context.Context) error {
	if b.cfg.Routes == nil {
		return nil
	}
	now := b.now().UTC()
	rep, err := b.lateWork(ctx, b.Policy(), now)
	if err != nil {
		return err
	}
	type alert struct {
		key string
		ev  event.Event
	}
	var alerts []alert
	day := now.Format("2006-01-02")
	for _, pr := range rep.OverdueReviews {
		alerts = append(alerts, alert{"review:" + pr.ID + ":" + day, event.Event{Type: event.ReviewOverdue, Account: pr.Account, Request: pr.RequestID, Requester: pr.Requester,
			Summary: fmt.Sprintf("post-use review %s of %s's grant on %s was due %s", pr.ID, pr.Requester, pr.Account, pr.DueAt.Format(time.RFC3339))}})
	}
	for _, d := range rep.Accounts {
		if d.DrillOverdue {
			alerts = append(alerts, alert{"drill:" + d.Account + ":" + day, event.Event{Type: event.DrillOverdue, Account: d.Account,
				Summary: fmt.Sprintf("account %s has not had a successful drill within %s (last: %s)", d.Account, d.DrillEvery, when(d.LastDrill))}})
		}
		if d.AttestationOverdue {
			alerts = append(alerts, alert{"attest:" + d.Account + ":" + day, event.Event{Type: event.AttestationDue, Account: d.Account,
				Summary: fmt.Sprintf("account %s has not been attested within %s (last: %s)", d.Account, d.ReviewEvery, when(d.LastAttestation))}})
		}
	}
	for _, c := range rep.ExpiringCerts {
		alerts = append(alerts, alert{"cert:" + c.Serial + ":" + day, event.Event{Type: event.CertExpiring, Actor: c.Principal,
			Summary: fmt.Sprintf("the client certificate of %s (serial %s) expires %s; renew it before break-glass needs it", c.Principal, c.Serial, c.NotAfter.Format(time.RFC3339))}})
	}
	for _, a := range alerts {
		err := b.update(ctx, func(tx store.Tx) error {
			sent, err := tx.AlertSent(ctx, a.key)
			if err != nil || !sent.IsZero() {
				return err
			}
			if err := tx.SetAlertSent(ctx, a.key, now); err != nil {
				return err
			}
			return b.emit(ctx, tx, a.ev, nil)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func when(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.UTC().Format(time.RFC3339)
}

// SeenCert notes a client certificate a principal called with; they are
// written in batches, so calls cost no write.
func (b *Broker) SeenCert(principal string, c *x509.Certificate) {
	key := principal + "/" + c.SerialNumber.String()
	now := b.now().UTC()
	b.certsMu.Lock()
	defer b.certsMu.Unlock()
	if len(b.certs) < 10000 {
		b.certs[key] = store.CertSeen{Principal: principal, Serial: c.SerialNumber.String(), NotAfter: c.NotAfter.UTC(), LastSeen: now}
	}
}

func (b *Broker) flushCerts(ctx context.Context) error {
	b.certsMu.Lock()
	if len(b.certs) == 0 {
		b.certsMu.Unlock()
		return nil
	}
	batch := make([]store.CertSeen, 0, len(b.certs))
	for _, c := range b.certs {
		batch = append(batch, c)
	}
	b.certs = map[string]store.CertSeen{}
	b.certsMu.Unlock()
	return b.store.Update(ctx, func(tx store.Tx) error { return tx.RecordCerts(ctx, batch) })
}

// grantEndedEarly moves the review of a grant that ended before its planned
// end to review_within after the actual end.
func (b *Broker) grantEndedEarly(ctx context.Context, tx store.Tx, r *request.Request, at time.Time) error {
	if r.Issued == 0 {
		return nil
	}
	acct, ok := b.Policy().Account(r.Account)
	if !ok {
		return nil
	}
	return tx.AdvancePostReviewDue(ctx, r.ID, at.Add(acct.ReviewWithin.D()))
}
