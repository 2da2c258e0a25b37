package broker

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/bgbroker/breakglass/format/statement"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/keyid"
	"github.com/bgbroker/breakglass/format/passkey"
	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/server/event"
	"github.com/bgbroker/breakglass/server/request"
	"github.com/bgbroker/breakglass/server/store"
)

// ReviewInput is an approver's decision and the statement they signed
// with the key of Cert, the client certificate of their connection.
type ReviewInput struct {
	ID        string
	Decision  request.Decision
	Comment   string
	Statement []byte
	Signature []byte
	Cert      *x509.Certificate
	// Passkey, for a review signed in the console, is the WebAuthn
	// assertion over Statement by a passkey bound to the caller; Signature
	// and Cert are then unused.
	Passkey *passkey.Assertion
	// KeyStore is where the caller's client says the certificate key
	// lives (audit.KeyStorePKCS11, or empty).
	KeyStore string
	// IdempotencyKey, when set, makes a retry return this call's result.
	IdempotencyKey string
}

// checkStatement refuses a review whose signed statement is missing, does
// not verify with the connection's certificate, or says anything other
// than this review of this request in this log.
func (b *Broker) checkStatement(in ReviewInput, caller string, r *request.Request, now time.Time) error {
	if len(in.Statement) == 0 || len(in.Signature) == 0 || in.Cert == nil {
		return invalid("a review must carry a statement signed with your client certificate's key (bgctl and the Go SDK sign it for you)")
	}
	if err := b.checkSigner(in.Cert, caller, now); err != nil {
		return err
	}
	st, err := statement.Parse(in.Statement)
	if err != nil {
		return invalid("the signed review statement is malformed: %s", err)
	}
	if err := b.sigs.Verify(in.Cert, in.Statement, in.Signature); err != nil {
		return signatureError("the review statement's", err)
	}
	if err := statement.Check(st, string(in.Decision), b.cfg.Origin, r.ID, r.Content().Digest(), in.Comment, now); err != nil {
		return invalid("the signed review statement does not match this review: %s%s", err, contentHint(st, r))
	}
	return nil
}

// signatureError says why a statement's signature was refused: a wrong
// encoding is named, with the one expected; any other failure is that the
// signature does not verify with the certificate of the connection.
func signatureError(what string, err error) error {
	if errors.Is(err, statement.ErrSignatureEncoding) {
		return invalid("%s signature is in the wrong encoding: %s (docs/signing.md)", what, err)
	}
	return invalid("%s signature does not verify with your client certificate's key: sign the exact statement bytes you send with the key of the certificate you connect with (docs/signing.md)", what)
}

// contentHint explains a content digest mismatch when its cause is known.
func contentHint(st statement.Statement, r *request.Request) string {
	if st.Content == r.Content().Digest() {
		return ""
	}
	if h := statement.MismatchHint(st.Content, r.Content()); h != "" {
		return ": " + h
	}
	return ""
}

// Prepared is the statement the broker would accept for a review now,
// with the content it binds.
type Prepared struct {
	Statement []byte
	Content   statement.Content
	Origin    string
}

// PrepareReview builds, without recording anything, the statement that
// caller's review of request id with this decision and comment would sign
// now, for a client to compare with its own.
func (b *Broker) PrepareReview(ctx context.Context, caller, id string, d request.Decision, comment string) (*Prepared, error) {
	if d != request.Approve && d != request.Deny {
		return nil, invalid("decision must be approve or deny")
	}
	if err := validateText("comment", comment, 2000, false); err != nil {
		return nil, err
	}
	r, err := b.GetRequest(ctx, caller, id)
	if err != nil {
		return nil, err
	}
	c := r.Content()
	st := statement.Statement{Type: string(d), Origin: b.cfg.Origin, Request: r.ID, Content: c.Digest(),
		Comment: statement.CommentDigest(comment), Time: b.now().UTC().Truncate(time.Second)}
	return &Prepared{Statement: st.Marshal(), Content: c, Origin: b.cfg.Origin}, nil
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
	// The signature is verified before the write transaction so that no
	// other writer waits on it; checkStatement inside finds it cached and
	// reports any problem in its own order.
	if in.KeyStore != "" && in.KeyStore != audit.KeyStorePKCS11 {
		return nil, invalid("unknown key store %q", in.KeyStore)
	}
	if in.Passkey == nil {
		if in.Cert != nil && len(in.Statement) > 0 && len(in.Signature) > 0 {
			_ = b.sigs.Verify(in.Cert, in.Statement, in.Signature)
		}
		// So is the certificate: one that expired or was revoked is refused
		// here, before anything is written (the log would otherwise hold a
		// review the offline verifier must reject).
		if err := b.precheckSigner(in.Cert, caller); err != nil {
			return nil, err
		}
	}
	var (
		res      Result
		approved bool
	)
	// The statement is left out: a retry signs a new one, with a new time,
	// for the same review.
	fp := fingerprint(in.ID, string(in.Decision), in.Comment)
	err := b.update(ctx, func(tx store.Tx) error {
		if prev, err := b.replay(ctx, tx, caller, methodReview, in.IdempotencyKey, fp); err != nil || prev != nil {
			if prev != nil {
				res = *prev
			}
			return err
		}
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
		payload := audit.RequestReviewed{Decision: string(in.Decision), Comment: in.Comment, Groups: p.EligibleGroups(r.Rule, caller), Statement: in.Statement}
		rv := request.Review{Reviewer: caller, Decision: in.Decision, Comment: in.Comment, At: now, Statement: in.Statement}
		var pk *store.Passkey
		if in.Passkey != nil {
			if pk, err = b.checkPasskeyReview(ctx, tx, in, caller, r, now); err != nil {
				return err
			}
			payload.Passkey, rv.Passkey = in.Passkey, in.Passkey
			rv.Binding = &request.PasskeyBinding{Statement: pk.Statement, Cert: pk.Cert}
		} else {
			if err := b.checkStatement(in, caller, r, now); err != nil {
				return err
			}
			payload.Signature, payload.Certificate, payload.KeyStore = in.Signature, in.Cert.Raw, in.KeyStore
			rv.Signature, rv.Cert, rv.KeyStore = in.Signature, in.Cert.Raw, in.KeyStore
		}
		// One key is one reviewer: a certificate naming someone else over
		// a key that already reviewed, or that signed the request, adds
		// nobody.
		// A passkey counts as the certificate key that bound it.
		key := b.reviewKey(rv)
		if k := r.RequesterKey(); k != "" && k == key {
			return denied("your client certificate's key signed request %s as its requester (%s): the requester never reviews their own request", r.ID, r.Requester)
		}
		for _, rv := range r.Reviews {
			if b.reviewKey(rv) == key {
				return newErr(KindExists, "the key of your client certificate already reviewed request %s as %s; each key counts once, whatever name its certificate gives", r.ID, rv.Reviewer)
			}
		}
		rec, err := b.appendEntry(ctx, tx, now, audit.Draft{
			Type: audit.TypeRequestReviewed, Actor: caller, Request: r.ID, Account: r.Account, Payload: payload,
		}, in.Decision == request.Approve)
		if err != nil {
			return err
		}
		if pk != nil {
			if err := b.passkeyAtEntry(pk, in, caller, r, now, rec); err != nil {
				return err
			}
			if err := tx.SavePasskey(ctx, *pk); err != nil {
				return err
			}
		} else if err := b.checkSignerAtEntry(in.Cert, caller, now, rec); err != nil {
			return err
		}
		rv.EntryIndex, rv.LeafHash = rec.Index, rec.LeafHash
		if err := tx.AddReview(ctx, r.ID, rv); err != nil {
			if errors.Is(err, store.ErrConflict) {
				return newErr(KindExists, "you already reviewed request %s; each approver counts once", r.ID)
			}
			return err
		}
		r.Reviews = append(r.Reviews, rv)
		res = Result{Request: r, Entry: rec}
		if err := b.remember(ctx, tx, caller, methodReview, in.IdempotencyKey, fp, r.ID, rec.Index, now); err != nil {
			return err
		}
		if err := b.emit(ctx, tx, requestEvent(event.RequestReviewed, r, caller, fmt.Sprintf("%s %ss %s's request for %s", caller, in.Decision, r.Requester, r.Account), &rec), nil); err != nil {
			return err
		}

		_, denials := r.ApprovalsAndDenials()
		switch in.Decision {
		case request.Approve:
			o := b.evaluate(p, r)
			if !o.Met {
				break
			}
			approved = true
			if err := b.approve(ctx, tx, p, r, now, audit.RequestApproved{Alternative: o.Alternative, Assignment: o.Assignment}, o.Approvers()); err != nil {
				return err
			}
		case request.Deny:
			// One eligible denial vetoes a solo request.
			if policy.DenialsSigned(p, r.Rule, requesterOf(r), b.signedDenials(r)) < r.DenyThreshold && !r.Solo {
				break
			}
			if err := b.deny(ctx, tx, r, now, caller, denials); err != nil {
				return err
			}
		}
		return tx.SaveRequest(ctx, r)
	})
	if err != nil {
		return nil, err
	}
	if res.Replayed {
		b.log.Info("review retried; answered from the first call", "request", in.ID, "reviewer", caller, "entry", res.Entry.Index)
		return &res, nil
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

// verifiedApprovals returns the approvals whose stored signed statement
// still verifies, with the key that signed each: a well-formed approve
// statement for this request, its content and comment, in this log, made
// within MaxSkew of the review, by the key of a certificate that chained
// to the client CA when the review was made, is not revoked now, and names
// the reviewer. Anything else does not count toward a quorum; the quorum
// rule then counts each principal and each key once, and never the
// requester's (policy.EvaluateSigned).
func (b *Broker) verifiedApprovals(r *request.Request) []policy.Approval {
	var out []policy.Approval
	digest := r.Content().Digest()
	for _, rv := range r.Reviews {
		if rv.Decision != request.Approve {
			continue
		}
		key, err := b.verifyReview(r, rv, digest)
		if err != nil {
			b.log.Warn("a stored approval does not verify and is not counted", "request", r.ID, "reviewer", rv.Reviewer, "err", err)
			continue
		}
		out = append(out, policy.Approval{Principal: rv.Reviewer, Key: key})
	}
	return out
}

// signedDenials returns the denials with the keys that signed them.
func (b *Broker) signedDenials(r *request.Request) []policy.Approval {
	var out []policy.Approval
	for _, rv := range r.Reviews {
		if rv.Decision == request.Deny {
			out = append(out, policy.Approval{Principal: rv.Reviewer, Key: b.reviewKey(rv)})
		}
	}
	return out
}

// reviewKey names the key that signed a stored review ("" if its
// certificate does not parse).
func (b *Broker) reviewKey(rv request.Review) string {
	der := rv.Cert
	if rv.Passkey != nil {
		// A passkey signs for the certificate key that bound it: one
		// person's certificate and passkey are one approver.
		if rv.Binding == nil {
			return ""
		}
		der = rv.Binding.Cert
	}
	cert, err := b.sigs.ParseCertificate(der)
	if err != nil {
		return ""
	}
	return keyid.SPKI(cert.RawSubjectPublicKeyInfo)
}

// requesterOf is the requester as the quorum rule sees them: their name
// and the key that signed the request.
func requesterOf(r *request.Request) policy.Approval {
	return policy.Approval{Principal: r.Requester, Key: r.RequesterKey()}
}

// evaluate judges r's verified approvals under p.
func (b *Broker) evaluate(p *policy.Policy, r *request.Request) policy.Outcome {
	return policy.EvaluateSigned(p, r.Rule, requesterOf(r), b.verifiedApprovals(r))
}

func (b *Broker) verifyReview(r *request.Request, rv request.Review, digest string) (string, error) {
	if rv.Passkey != nil {
		return b.verifyPasskeyReview(r, rv, digest)
	}
	st, err := statement.Parse(rv.Statement)
	if err != nil {
		return "", err
	}
	if err := statement.Check(st, string(rv.Decision), b.cfg.Origin, r.ID, digest, rv.Comment, rv.At); err != nil {
		return "", err
	}
	cert, err := b.sigs.ParseCertificate(rv.Cert)
	if err != nil {
		return "", err
	}
	if err := b.sigs.Verify(cert, rv.Statement, rv.Signature); err != nil {
		return "", err
	}
	who, err := b.cfg.Certs.VerifyAt(cert, rv.At)
	if err != nil {
		return "", err
	}
	if who != rv.Reviewer {
		return "", fmt.Errorf("the certificate names %s, not the reviewer %s", who, rv.Reviewer)
	}
	return keyid.SPKI(cert.RawSubjectPublicKeyInfo), nil
}

// approve moves r to APPROVED now with its request_approved entry (which
// needs the HSM: it grants access) and announces the grant.
func (b *Broker) approve(ctx context.Context, tx store.Tx, p *policy.Policy, r *request.Request, now time.Time, payload audit.RequestApproved, approvers []string) error {
	if err := b.checkPolicyInForce(ctx, tx); err != nil {
		return err
	}
	r.State, r.ApprovedAt = request.Approved, now
	r.GrantExpiresAt = r.GrantEnd(now)
	r.ActivationDeadline = now.Add(r.ActivationWindow)
	r.Approvers = approvers
	payload.ApprovedAt, payload.GrantExpiresAt, payload.ActivationDeadline = now, r.GrantExpiresAt, r.ActivationDeadline
	rec, err := b.appendEntry(ctx, tx, now, audit.Draft{Type: audit.TypeRequestApproved, Actor: "broker", Request: r.ID, Account: r.Account, Payload: payload}, true)
	if err != nil {
		return err
	}
	idx := rec.Index
	r.ApprovedEntry = &idx
	var ack []string
	summary := fmt.Sprintf("%s's grant on %s is approved by %s until %s", r.Requester, r.Account, joinNames(approvers), r.GrantExpiresAt.Format(time.RFC3339))
	if r.Solo {
		summary = fmt.Sprintf("%s's SOLO grant on %s is approved: its veto window passed without a denial; until %s", r.Requester, r.Account, r.GrantExpiresAt.Format(time.RFC3339))
	}
	if a, ok := p.Account(r.Account); ok && a.RequireAlertAck {
		ack = a.AckSinks
	}
	ev := requestEvent(event.GrantApproved, r, "broker", summary, &rec)
	ev.Notify = contacts(p, []string{r.Requester})
	return b.emit(ctx, tx, ev, ack)
}

// deny moves r to DENIED with its entry and announces it.
func (b *Broker) deny(ctx context.Context, tx store.Tx, r *request.Request, now time.Time, by string, denials []string) error {
	r.State, r.FinalAt, r.FinalBy, r.FinalReason = request.Denied, now, by, "denied by "+joinNames(denials)
	rec, err := b.appendEntry(ctx, tx, now, audit.Draft{
		Type: audit.TypeRequestDenied, Actor: "broker", Request: r.ID, Account: r.Account,
		Payload: audit.RequestFinal{Reason: r.FinalReason, At: now, Denials: denials},
	}, false)
	if err != nil {
		return err
	}
	return b.emit(ctx, tx, requestEvent(event.RequestDenied, r, by, fmt.Sprintf("%s's request for %s is %s", r.Requester, r.Account, r.FinalReason), &rec), nil)
}
