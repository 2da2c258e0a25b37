package broker

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/passkey"
	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/format/statement"
	"github.com/bgbroker/breakglass/server/event"
	"github.com/bgbroker/breakglass/server/request"
	"github.com/bgbroker/breakglass/server/store"
)

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// oneLine shortens free text for an event summary.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > 200 {
		return string(r[:199]) + "…"
	}
	return s
}

// CreateInput is what a requester asks for.
type CreateInput struct {
	Account       string
	Justification string
	Ticket        string
	// TTL is the requested grant length; zero asks for the account's max_ttl.
	TTL   time.Duration
	Drill bool
	// Solo asks for time-locked solo access, where the account allows it.
	Solo bool
	// IdempotencyKey, when set, makes a retry return this call's result.
	IdempotencyKey string
	// Statement is the request statement the requester signed with the
	// key of Cert, the client certificate of their connection, and
	// Signature its signature; KeyStore is where the client said the key
	// lives (audit.KeyStorePKCS11 or empty).
	Statement []byte
	Signature []byte
	Cert      *x509.Certificate
	KeyStore  string
	// Passkey, for a request made in the console, is the WebAuthn
	// assertion over Statement by a passkey bound to the caller, instead
	// of Signature and Cert: the requester is then known by the key of the
	// certificate that bound the passkey.
	Passkey *passkey.Assertion
}

// checkRequestStatement refuses a request whose signed statement is
// missing, does not verify with the connection's certificate, or says
// anything other than this request in this log; it returns the statement,
// whose id becomes the request's.
func (b *Broker) checkRequestStatement(in CreateInput, caller string, ttl, defaultTTL time.Duration, now time.Time) (statement.Request, error) {
	if in.Passkey != nil {
		// Its signature is the passkey's, checked in the write
		// transaction with the binding (checkPasskeyAssertion).
		if len(in.Statement) == 0 {
			return statement.Request{}, invalid("a request must carry the request statement your passkey signed")
		}
	} else {
		if len(in.Statement) == 0 || len(in.Signature) == 0 || in.Cert == nil {
			return statement.Request{}, invalid("a request must carry a request statement signed with your client certificate's key (bgctl and the Go SDK sign it for you; docs/signing.md)")
		}
		if err := b.checkSigner(in.Cert, caller, now); err != nil {
			return statement.Request{}, err
		}
	}
	st, err := statement.ParseRequest(in.Statement)
	if err != nil {
		return st, invalid("the signed request statement is malformed: %s", err)
	}
	if in.Passkey == nil {
		if err := b.sigs.Verify(in.Cert, in.Statement, in.Signature); err != nil {
			return st, signatureError("the request statement's", err)
		}
	}
	if st.ID == "00000000-0000-0000-0000-000000000000" {
		return st, invalid("the request statement's id is the nil UUID: choose a fresh random one")
	}
	asked := statement.Asked{Origin: b.cfg.Origin, ID: st.ID, Account: in.Account, Ticket: in.Ticket, Justification: in.Justification,
		TTLSeconds: int64(ttl / time.Second), DefaultTTLSeconds: int64(defaultTTL / time.Second), Drill: in.Drill, Solo: in.Solo}
	if err := statement.CheckRequest(st, asked, now); err != nil {
		return st, invalid("the signed request statement does not match this request: %s", err)
	}
	return st, nil
}

// signedOf is what a request_created entry records of the signature: the
// statement with the certificate's signature, or the statement alone when
// a passkey signed it (its assertion is recorded beside).
func signedOf(in CreateInput) audit.Signed {
	if in.Passkey != nil {
		return audit.Signed{Statement: in.Statement}
	}
	return audit.Signed{Statement: in.Statement, Signature: in.Signature, Certificate: in.Cert.Raw}
}

// Result is a request after a change, with the entry that recorded it.
type Result struct {
	Request *request.Request
	Entry   audit.Record
	// Replayed is set when the call repeated an earlier one with the same
	// idempotency key: nothing new happened.
	Replayed bool
}

// effective returns a copy of r showing its state at now.
func effective(r *request.Request, now time.Time) *request.Request {
	c := *r
	state, reason, at := r.Effective(now)
	if state != r.State {
		c.State, c.FinalReason, c.FinalAt, c.FinalBy = state, reason, at, "broker"
	}
	return &c
}

// CreateRequest records a new request from caller.
func (b *Broker) CreateRequest(ctx context.Context, caller string, in CreateInput) (*Result, error) {
	p := b.Policy()
	acct, ok := p.Account(in.Account)
	if !ok {
		return nil, newErr(KindNotFound, "account %q does not exist; `bgctl accounts` lists the accounts you may use", in.Account)
	}
	if !p.CanRequest(acct, caller) {
		return nil, denied("you are not in a requester group of account %s (%s)", acct.Name, strings.Join(acct.Requesters, ", "))
	}
	if in.Drill && acct.DrillAudience == "" {
		return nil, wrongState("account %s has no drill_audience, so it cannot be drilled", acct.Name)
	}
	maxTTL := acct.MaxTTL.D()
	if in.Solo {
		if acct.Solo == nil {
			return nil, wrongState("account %s does not allow time-locked solo access", acct.Name)
		}
		maxTTL = acct.Solo.MaxTTL.D()
		if in.TTL > maxTTL {
			return nil, invalid("the requested TTL %s exceeds the account's solo max_ttl of %s", in.TTL, maxTTL)
		}
	}
	if in.TTL == 0 {
		in.TTL = maxTTL
	}
	if err := validateText("justification", in.Justification, 2000, true); err != nil {
		return nil, err
	}
	if err := validateText("ticket", in.Ticket, 128, false); err != nil {
		return nil, err
	}
	if err := request.Validate(acct, in.Justification, in.Ticket, in.TTL); err != nil {
		return nil, invalid("%s", err)
	}
	now := b.now().UTC()
	// The requester signed this request, with the id they chose for it;
	// the statement's ttl_seconds is what they asked for (zero: the
	// longest the account allows).
	st, err := b.checkRequestStatement(in, caller, in.TTL, maxTTL, now)
	if err != nil {
		return nil, err
	}
	id := st.ID
	r := &request.Request{
		ID: id, Account: acct.Name, Requester: caller, Justification: in.Justification, Ticket: in.Ticket,
		TTL: in.TTL, Drill: in.Drill, Solo: in.Solo, State: request.Pending, CreatedAt: now,
		ContentVersion:   statement.CurrentContent,
		ApprovalDeadline: now.Add(acct.ApprovalWindow.D()), Rule: acct.Quorum, DenyThreshold: acct.DenyThreshold,
		MaxIssuances: acct.MaxIssuances, PolicyHash: p.Hash(), ActivationWindow: acct.ActivationWindow.D(),
	}
	if in.Passkey == nil {
		r.Signed = request.Signed{Statement: in.Statement, Signature: in.Signature, Cert: in.Cert.Raw}
	}
	var res Result
	fp := fingerprint(acct.Name, in.Justification, in.Ticket, in.TTL.String(), fmt.Sprint(in.Drill), fmt.Sprint(in.Solo))
	err = b.update(ctx, func(tx store.Tx) error {
		if prev, err := b.replay(ctx, tx, caller, methodCreate, in.IdempotencyKey, fp); err != nil || prev != nil {
			if prev != nil {
				res = *prev
			}
			return err
		}
		// The request's quorum rule comes from this replica's policy: it
		// must be the one in force.
		if err := b.checkPolicyInForce(ctx, tx); err != nil {
			return err
		}
		if acct.BlockOnOverdueReview {
			if err := b.checkNoOverdueReview(ctx, tx, caller, now); err != nil {
				return err
			}
		}
		var pk *store.Passkey
		if in.Passkey != nil {
			var err error
			if pk, err = b.checkPasskeyAssertion(ctx, tx, caller, in.Statement, *in.Passkey, now); err != nil {
				return err
			}
			// The requester is known by the key of the certificate that
			// bound the passkey.
			r.Signed = request.Signed{Statement: in.Statement, Cert: pk.Cert}
		}
		// A statement makes one request: its id is taken once.
		if _, err := tx.Request(ctx, r.ID); err == nil {
			return newErr(KindExists, "request %s already exists: each request statement names a fresh id (sign a new one)", r.ID)
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		rec, err := b.appendEntry(ctx, tx, now, audit.Draft{
			Type: audit.TypeRequestCreated, Actor: caller, Request: r.ID, Account: r.Account,
			Payload: audit.RequestCreated{
				Justification: r.Justification, Ticket: r.Ticket, TTLSeconds: int64(r.TTL / time.Second), Drill: r.Drill,
				CreatedAt: r.CreatedAt, ApprovalDeadline: r.ApprovalDeadline, Quorum: r.Rule, DenyThreshold: r.DenyThreshold,
				MaxIssuances: r.MaxIssuances, ActivationWindow: int64(r.ActivationWindow / time.Second), PolicyHash: r.PolicyHash,
				ContentDigest: r.Content().Digest(), ContentVersion: int(r.ContentVersion), Solo: r.Solo,
				Signed: signedOf(in), KeyStore: in.KeyStore, Passkey: in.Passkey,
			},
		}, true)
		if err != nil {
			return err
		}
		if pk != nil {
			if err := b.passkeyStatementAtEntry(pk, caller, now, rec, func(at time.Time) error {
				_, err := b.checkRequestStatement(in, caller, in.TTL, maxTTL, at)
				return err
			}); err != nil {
				return err
			}
			if err := tx.SavePasskey(ctx, *pk); err != nil {
				return err
			}
		} else if err := b.checkSignerAtEntry(in.Cert, caller, now, rec); err != nil {
			return err
		}
		r.CreatedEntry, r.CreatedLeaf = rec.Index, rec.LeafHash
		if err := tx.CreateRequest(ctx, r); err != nil {
			return err
		}
		if err := b.remember(ctx, tx, caller, methodCreate, in.IdempotencyKey, fp, r.ID, rec.Index, now); err != nil {
			return err
		}
		res = Result{Request: r, Entry: rec}
		ev := requestEvent(event.RequestCreated, r, caller, fmt.Sprintf("%s asks for %s on %s (%s): %s", caller, r.TTL, r.Account, r.Rule, oneLine(r.Justification)), &rec)
		ev.Notify = contacts(p, approversOf(p, r))
		if err := b.emit(ctx, tx, ev, nil); err != nil {
			return err
		}
		if r.Solo {
			ev := requestEvent(event.SoloRequested, r, caller, fmt.Sprintf("SOLO request by %s for %s on %s: it becomes approved %s after this alert is acknowledged unless an approver denies it",
				caller, r.TTL, r.Account, acct.Solo.Delay.D()), &rec)
			ev.Notify = contacts(p, approversOf(p, r))
			return b.emit(ctx, tx, ev, acct.AckSinks)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if res.Replayed {
		b.log.Info("request creation retried; answered from the first call", "request", res.Request.ID, "requester", caller, "entry", res.Entry.Index)
		return &res, nil
	}
	b.notify(r.ID)
	b.log.Info("request created", "request", r.ID, "account", r.Account, "requester", caller, "drill", r.Drill, "entry", res.Entry.Index)
	return &res, nil
}

// validateText refuses control and bidi characters in free text that
// approvers will read in a terminal. The API layer checks the same with
// protovalidate; this keeps the broker safe for any caller.
func validateText(field, s string, maxLen int, required bool) error {
	if required && strings.TrimSpace(s) == "" {
		return invalid("%s is required", field)
	}
	if len(s) > maxLen {
		return invalid("%s is %d bytes; at most %d", field, len(s), maxLen)
	}
	for _, r := range s {
		switch {
		case r == '\t' || r == '\n':
		case r < 0x20 || r == 0x7f:
			return invalid("%s contains a control character (U+%04X)", field, r)
		case r >= 0x202A && r <= 0x202E, r >= 0x2066 && r <= 0x2069:
			return invalid("%s contains a bidirectional override (U+%04X)", field, r)
		case r == 0xFFFD:
			return invalid("%s is not valid UTF-8", field)
		}
	}
	return nil
}

// GetRequest returns a request the caller may see.
func (b *Broker) GetRequest(ctx context.Context, caller, id string) (*request.Request, error) {
	var out *request.Request
	err := b.view(ctx, func(r store.Reader) error {
		req, err := b.loadRequest(ctx, r, id, caller)
		if err != nil {
			return err
		}
		out = effective(req, b.now())
		return nil
	})
	return out, err
}

// ListInput filters ListRequests.
type ListInput struct {
	State            request.State
	Account          string
	Mine             bool
	AwaitingMyReview bool
	PageSize         int
	PageToken        string
}

// ListRequests returns the requests caller may see, newest first, and a
// token for the next page.
func (b *Broker) ListRequests(ctx context.Context, caller string, in ListInput) ([]*request.Request, string, error) {
	p := b.Policy()
	size := in.PageSize
	if size <= 0 {
		size = 50
	}
	if size > 500 {
		size = 500
	}
	f := store.Filter{Account: in.Account, Limit: size * 2}
	if in.Mine {
		f.Requester = caller
	}
	switch in.State {
	case "":
	case request.Expired:
		// Stored PENDING or APPROVED past their deadline are expired too.
		f.States = []request.State{request.Expired, request.Pending, request.Approved}
	case request.Pending, request.Approved:
		f.States = []request.State{in.State}
	default:
		f.States = []request.State{in.State}
	}
	if in.AwaitingMyReview {
		f.States = []request.State{request.Pending}
	}
	if in.PageToken != "" {
		t, id, err := decodePageToken(in.PageToken)
		if err != nil {
			return nil, "", invalid("page_token is not one this broker issued")
		}
		f.BeforeTime, f.BeforeID = t, id
	}
	now := b.now()
	var out []*request.Request
	next := ""
	// A call examines a bounded number of rows: past it, the page ends
	// short with a token where the reading stopped (requests the caller
	// may not see, or stored open but past their deadline, are skipped
	// here), so that no call walks the history.
	examined, maxExamined := 0, 10*size
	err := b.view(ctx, func(r store.Reader) error {
		for len(out) < size {
			if examined >= maxExamined {
				next = encodePageToken(f.BeforeTime, f.BeforeID)
				return nil
			}
			batch, err := r.Requests(ctx, f)
			if err != nil {
				return err
			}
			for _, req := range batch {
				examined++
				f.BeforeTime, f.BeforeID = req.CreatedAt, req.ID
				if !b.canSee(p, req, caller) {
					continue
				}
				e := effective(req, now)
				if in.State != "" && e.State != in.State {
					continue
				}
				if in.AwaitingMyReview && (e.State != request.Pending || req.Requester == caller || req.Reviewed(caller) || !p.Eligible(req.Rule, caller)) {
					continue
				}
				out = append(out, e)
				if len(out) == size {
					next = encodePageToken(req.CreatedAt, req.ID)
					return nil
				}
			}
			if len(batch) < f.Limit {
				return nil
			}
		}
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	return out, next, nil
}

func encodePageToken(t time.Time, id string) string {
	return base64.RawURLEncoding.EncodeToString(fmt.Appendf(nil, "%d|%s", t.UnixNano(), id))
}

func decodePageToken(s string) (time.Time, string, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return time.Time{}, "", err
	}
	var n int64
	var id string
	parts := strings.SplitN(string(b), "|", 2)
	if len(parts) != 2 {
		return time.Time{}, "", errors.New("malformed")
	}
	if _, err := fmt.Sscanf(parts[0], "%d", &n); err != nil {
		return time.Time{}, "", err
	}
	id = parts[1]
	if len(id) > 64 {
		return time.Time{}, "", errors.New("malformed")
	}
	return time.Unix(0, n).UTC(), id, nil
}

// CancelRequest withdraws a pending request; only its requester may.
func (b *Broker) CancelRequest(ctx context.Context, caller, id, reason string) (*Result, error) {
	if err := validateText("reason", reason, 500, false); err != nil {
		return nil, err
	}
	if reason == "" {
		reason = "cancelled by the requester"
	}
	return b.endRequest(ctx, caller, id, request.Pending, request.Cancelled, audit.TypeRequestCancelled, "cancelled", reason,
		func(_ *policy.Policy, r *request.Request) error {
			if r.Requester != caller {
				return denied("only the requester (%s) may cancel request %s", r.Requester, id)
			}
			return nil
		})
}

// endRequest moves a request the caller may see from state from to the
// final state to, with its audit entry. These transitions take access away,
// so their entries are written even while the HSM cannot sign.
func (b *Broker) endRequest(ctx context.Context, caller, id string, from, to request.State, typ audit.Type, action, reason string,
	authorize func(*policy.Policy, *request.Request) error) (*Result, error) {
	var res Result
	revokedCerts := 0
	err := b.update(ctx, func(tx store.Tx) error {
		revokedCerts = 0
		r, err := b.loadRequest(ctx, tx, id, caller)
		if err != nil {
			return err
		}
		if err := authorize(b.Policy(), r); err != nil {
			return err
		}
		now := b.now().UTC()
		if err := requireState(r, now, from, action); err != nil {
			return err
		}
		rec, err := b.appendEntry(ctx, tx, now, audit.Draft{
			Type: typ, Actor: caller, Request: r.ID, Account: r.Account,
			Payload: audit.RequestFinal{Reason: reason, At: now},
		}, false)
		if err != nil {
			return err
		}
		r.State, r.FinalAt, r.FinalBy, r.FinalReason = to, now, caller, reason
		if err := tx.SaveRequest(ctx, r); err != nil {
			return err
		}
		if err := b.grantEndedEarly(ctx, tx, r, now); err != nil {
			return err
		}
		if to == request.Revoked {
			// Its certificates are revoked with it, in this transaction:
			// the KRL and CRL are made from these rows.
			if revokedCerts, err = tx.RevokeCertificates(ctx, r.ID, "", now); err != nil {
				return err
			}
		}
		res = Result{Request: r, Entry: rec}
		evType := event.RequestCancelled
		if to == request.Revoked {
			evType = event.GrantRevoked
		}
		return b.emit(ctx, tx, requestEvent(evType, r, caller, fmt.Sprintf("%s %s request %s on %s: %s", caller, action, r.ID, r.Account, oneLine(reason)), &rec), nil)
	})
	if err != nil {
		return nil, err
	}
	b.notify(id)
	b.log.Info("request "+action, "request", id, "by", caller, "entry", res.Entry.Index)
	if to == request.Revoked {
		b.grantEnded(res.Request.Account, res.Request.Issued)
	}
	if revokedCerts > 0 {
		b.log.Info("certificates revoked with their grant", "request", id, "certificates", revokedCerts)
		b.cfg.Observer.CertificatesRevoked()
	}
	return &res, nil
}

// requireState refuses a transition unless r is in want at now, with a
// message that says what state it is in and since when.
func requireState(r *request.Request, now time.Time, want request.State, action string) error {
	state, reason, at := r.Effective(now)
	if state == want {
		return nil
	}
	switch state {
	case request.Expired:
		return wrongState("request %s expired at %s (%s) and cannot be %s", r.ID, at.UTC().Format(time.RFC3339), reason, action)
	case request.Pending:
		return wrongState("request %s is still pending approval and cannot be %s", r.ID, action)
	case request.Approved:
		return wrongState("request %s is already approved and cannot be %s", r.ID, action)
	}
	return wrongState("request %s is %s (%s) and cannot be %s", r.ID, strings.ToLower(string(state)), reason, action)
}

// Accounts returns the accounts caller may request, review or own (every
// account for auditors).
func (b *Broker) Accounts(caller string) []AccountView {
	p := b.Policy()
	var out []AccountView
	for _, a := range p.Accounts {
		v := AccountView{Account: a, CanRequest: p.CanRequest(a, caller), CanReview: p.Eligible(a.Quorum, caller), IsOwner: p.IsOwner(a, caller)}
		if v.CanRequest || v.CanReview || v.IsOwner || p.IsAuditor(caller) {
			out = append(out, v)
		}
	}
	return out
}

// AccountView is an account and what the caller may do with it.
type AccountView struct {
	Account    *policy.Account
	CanRequest bool
	CanReview  bool
	IsOwner    bool
}
