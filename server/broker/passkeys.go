package broker

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"

	"github.com/go-webauthn/webauthn/protocol"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/keyid"
	"github.com/bgbroker/breakglass/format/passkey"
	"github.com/bgbroker/breakglass/format/statement"
	"github.com/bgbroker/breakglass/server/event"
	"github.com/bgbroker/breakglass/server/request"
	"github.com/bgbroker/breakglass/server/store"
)

// Passkey event types: a new approver credential is announced like any
// other change to who can approve.
const (
	EventPasskeyBound   = "passkey.bound"
	EventPasskeyRemoved = "passkey.removed"
)

// Limits on passkeys.
const (
	// PasskeyCodeTTL is how long a pending passkey's one-time code lasts.
	PasskeyCodeTTL = 10 * time.Minute
	// maxPendingPasskeys bounds the pending passkeys of one principal.
	maxPendingPasskeys = 5
	// maxPasskeys bounds the passkeys one principal holds in all.
	maxPasskeys = 50
	// maxPasskeyLabel bounds a passkey's label.
	maxPasskeyLabel = 64
)

// NewPasskey is a credential the console registered: go-webauthn verified
// its attestation response (a webauthn.create with user verification on
// the console's origin), and this is what it yielded.
type NewPasskey struct {
	ID []byte
	// PublicKey is the COSE_Key of the attested credential data.
	PublicKey []byte
	RPID      string
	WebOrigin string
	Label     string
	// Flags is the registration's authenticator data flags byte.
	Flags byte
}

// codeAlphabet is Crockford's base32: no I, L, O or U, so a code read
// aloud or typed from a screen is hard to get wrong.
const codeAlphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

// newPasskeyCode returns a one-time code of 50 random bits, as XXXXX-XXXXX.
func newPasskeyCode() (string, error) {
	b := make([]byte, 10)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	out := make([]byte, 0, 11)
	for i, c := range b {
		if i == 5 {
			out = append(out, '-')
		}
		out = append(out, codeAlphabet[int(c)%32])
	}
	return string(out), nil
}

// normalizeCode reads a code as people type it: any case, with or
// without the dash or spaces, O for 0 and I or L for 1.
func normalizeCode(code string) (string, error) {
	var b strings.Builder
	for _, r := range strings.ToUpper(code) {
		switch {
		case r == '-' || unicode.IsSpace(r):
			continue
		case r == 'O':
			r = '0'
		case r == 'I' || r == 'L':
			r = '1'
		}
		if r > unicode.MaxASCII || !strings.ContainsRune(codeAlphabet, r) {
			return "", invalid("a passkey code is ten letters and digits, as the console shows it (such as 7KQ2M-X9D4B)")
		}
		b.WriteRune(r)
	}
	if b.Len() != 10 {
		return "", invalid("a passkey code is ten letters and digits, as the console shows it (such as 7KQ2M-X9D4B)")
	}
	return b.String(), nil
}

func codeHash(normalized string) string {
	sum := sha256.Sum256([]byte("breakglass passkey code\n" + normalized))
	return hex.EncodeToString(sum[:])
}

// AddPendingPasskey records a passkey the caller just created in the
// console and returns the one-time code that binds it, valid for
// PasskeyCodeTTL. Nothing is logged: the passkey counts for nothing until
// its owner signs the binding (ConfirmPasskey).
func (b *Broker) AddPendingPasskey(ctx context.Context, caller string, in NewPasskey) (code string, expires time.Time, err error) {
	if !b.Policy().Known(caller) {
		return "", time.Time{}, denied("principal %s is not in the broker's policy", caller)
	}
	switch {
	case len(in.ID) == 0 || len(in.ID) > passkey.MaxCredentialID:
		return "", time.Time{}, invalid("a credential ID is 1 to %d bytes", passkey.MaxCredentialID)
	case len([]rune(in.Label)) > maxPasskeyLabel:
		return "", time.Time{}, invalid("a passkey label is at most %d characters", maxPasskeyLabel)
	}
	if err := validateText("label", in.Label, maxPasskeyLabel*4, false); err != nil {
		return "", time.Time{}, err
	}
	if _, err := passkey.ParseKey(in.PublicKey); err != nil {
		return "", time.Time{}, invalid("the passkey's public key: %s", err)
	}
	if err := passkey.CheckRPID(in.RPID); err != nil {
		return "", time.Time{}, invalid("%s", err)
	}
	if err := passkey.CheckWebOrigin(in.WebOrigin, in.RPID); err != nil {
		return "", time.Time{}, invalid("%s", err)
	}
	code, err = newPasskeyCode()
	if err != nil {
		return "", time.Time{}, internal(err)
	}
	norm, _ := normalizeCode(code)
	now := b.now().UTC()
	expires = now.Add(PasskeyCodeTTL)
	err = b.update(ctx, func(tx store.Tx) error {
		mine, err := tx.PasskeysOf(ctx, caller, maxPasskeys+1)
		if err != nil {
			return err
		}
		pending := 0
		for _, p := range mine {
			if p.State == store.PasskeyPending && now.Before(p.ExpiresAt) {
				pending++
			}
		}
		if pending >= maxPendingPasskeys {
			return newErr(KindExhausted, "you have %d passkeys waiting for bgctl passkey confirm; confirm them or wait for their codes to lapse (%s)", pending, PasskeyCodeTTL)
		}
		if len(mine) >= maxPasskeys {
			return newErr(KindExhausted, "you hold %d passkeys, the most one principal may; remove some (bgctl passkey remove)", len(mine))
		}
		err = tx.AddPasskey(ctx, store.Passkey{CredentialID: in.ID, Principal: caller, PublicKey: in.PublicKey, RPID: in.RPID, WebOrigin: in.WebOrigin,
			Label: in.Label, State: store.PasskeyPending, CodeHash: codeHash(norm), CreatedAt: now, ExpiresAt: expires, Flags: in.Flags})
		if errors.Is(err, store.ErrConflict) {
			return newErr(KindExists, "this passkey is already registered; a credential is bound once (create a new passkey)")
		}
		return err
	})
	if err != nil {
		return "", time.Time{}, err
	}
	b.log.Info("passkey created, waiting for its binding", "principal", caller, "credential", passkey.EncodeID(in.ID), "expires", expires)
	return code, expires, nil
}

// pendingByCode finds the pending passkey of a code: NotFound when there
// is none or it lapsed, PermissionDenied when someone else created it.
func (b *Broker) pendingByCode(ctx context.Context, rd store.Reader, caller, code string, now time.Time) (*store.Passkey, error) {
	norm, err := normalizeCode(code)
	if err != nil {
		return nil, err
	}
	p, err := rd.PendingPasskey(ctx, codeHash(norm))
	if errors.Is(err, store.ErrNotFound) || (err == nil && !now.Before(p.ExpiresAt)) {
		return nil, newErr(KindNotFound, "no passkey is waiting for this code: codes last %s; create the passkey again in the console", PasskeyCodeTTL)
	}
	if err != nil {
		return nil, err
	}
	if p.Principal != caller {
		return nil, denied("this code is for a passkey %s created; only %s can bind it, with their own certificate", p.Principal, p.Principal)
	}
	return p, nil
}

// PendingPasskey returns the caller's pending passkey for a code, so that
// bgctl can show it and build the binding statement from it.
func (b *Broker) PendingPasskey(ctx context.Context, caller, code string) (*store.Passkey, error) {
	var out *store.Passkey
	err := b.view(ctx, func(rd store.Reader) error {
		var err error
		out, err = b.pendingByCode(ctx, rd, caller, code, b.now().UTC())
		return err
	})
	return out, unwrapInternal(err)
}

// unwrapInternal keeps a broker error raised inside view as it is.
func unwrapInternal(err error) error {
	var be *Error
	if errors.As(err, &be) && be.Kind != KindInternal {
		return be
	}
	return err
}

// ConfirmPasskey binds the caller's pending passkey with the binding
// statement they signed with their client certificate's key, and logs it.
// The statement must describe the pending passkey exactly (credential,
// key, RP ID, origin), name the caller and this log, and be fresh. Binding
// grants the power to approve, so it needs the HSM to sign its entry.
func (b *Broker) ConfirmPasskey(ctx context.Context, caller, code string, s Signed) (*store.Passkey, audit.Record, error) {
	if len(s.Statement) == 0 || len(s.Signature) == 0 || s.Cert == nil {
		return nil, audit.Record{}, invalid("a binding must carry a statement signed with your client certificate's key (bgctl passkey confirm signs it for you)")
	}
	if err := b.precheckSigner(s.Cert, caller); err != nil {
		return nil, audit.Record{}, err
	}
	var (
		out *store.Passkey
		rec audit.Record
	)
	err := b.update(ctx, func(tx store.Tx) error {
		now := b.now().UTC()
		p, err := b.pendingByCode(ctx, tx, caller, code, now)
		if err != nil {
			return err
		}
		if err := b.checkSigner(s.Cert, caller, now); err != nil {
			return err
		}
		bd, err := passkey.VerifyBinding(s.Cert, s.Statement, s.Signature)
		if err != nil {
			switch passkey.ReasonOf(err) {
			case passkey.ReasonSignatureEncoding, passkey.ReasonSignature:
				return signatureError("the binding statement's", errors.Unwrap(err))
			}
			return invalid("%s (docs/signing.md, Passkey bindings)", err)
		}
		if err := passkey.CheckBinding(bd, b.cfg.Origin, caller, now); err != nil {
			return invalid("the binding statement does not hold: %s", err)
		}
		switch {
		case !bytes.Equal(bd.Credential, p.CredentialID):
			return invalid("the binding statement's credential is not the pending passkey's (%s)", passkey.EncodeID(p.CredentialID))
		case !bytes.Equal(bd.Key, p.PublicKey):
			return invalid("the binding statement's key is not the pending passkey's public key")
		case bd.RPID != p.RPID || bd.WebOrigin != p.WebOrigin:
			return invalid("the binding statement's RP ID and origin must be the pending passkey's (%s, %s)", p.RPID, p.WebOrigin)
		}
		rec, err = b.appendEntry(ctx, tx, now, audit.Draft{Type: audit.TypePasskeyBound, Actor: caller,
			Payload: audit.PasskeyBound{Credential: p.CredentialID, Statement: s.Statement, Signature: s.Signature, Certificate: s.Cert.Raw}}, true)
		if err != nil {
			return err
		}
		if err := b.checkSignerAtEntry(s.Cert, caller, now, rec); err != nil {
			return err
		}
		if !rec.Time.Equal(now) {
			if err := passkey.CheckBinding(bd, b.cfg.Origin, caller, rec.Time); err != nil {
				return invalid("the binding statement does not hold at the log's time: %s", err)
			}
		}
		p.State, p.BoundAt, p.BoundEntry, p.ExpiresAt, p.CodeHash = store.PasskeyBound, now, rec.Index, time.Time{}, ""
		p.Statement, p.Signature, p.Cert = s.Statement, s.Signature, s.Cert.Raw
		if err := tx.SavePasskey(ctx, *p); err != nil {
			return err
		}
		out = p
		idx := rec.Index
		return b.emit(ctx, tx, event.Event{Type: EventPasskeyBound, Actor: caller, AuditIndex: &idx,
			Summary: fmt.Sprintf("%s bound a passkey (%s, %q) for %s; it can sign their reviews from now on", caller, passkey.EncodeID(p.CredentialID), p.Label, p.WebOrigin)}, nil)
	})
	if err != nil {
		return nil, audit.Record{}, err
	}
	b.log.Info("passkey bound", "principal", caller, "credential", passkey.EncodeID(out.CredentialID), "entry", rec.Index)
	return out, rec, nil
}

// Passkeys lists a principal's passkeys: one's own, or anyone's for admins
// and auditors.
func (b *Broker) Passkeys(ctx context.Context, caller, principal string) ([]store.Passkey, error) {
	if principal == "" {
		principal = caller
	}
	p := b.Policy()
	if principal != caller && !p.IsAuditor(caller) && b.RequireAdmin(caller) != nil {
		return nil, denied("only admins and auditors list other principals' passkeys")
	}
	var out []store.Passkey
	err := b.view(ctx, func(rd store.Reader) error {
		var err error
		out, err = rd.PasskeysOf(ctx, principal, maxPasskeys)
		return err
	})
	return out, err
}

// RemovePasskey ends a binding, or forgets a pending passkey: its owner
// or an admin may. Taking the power to approve away needs no HSM: the
// entry is chained now and signed when the HSM is back.
func (b *Broker) RemovePasskey(ctx context.Context, caller string, id []byte, reason string) (*store.Passkey, audit.Record, error) {
	if err := validateText("reason", reason, 500, false); err != nil {
		return nil, audit.Record{}, err
	}
	var (
		out *store.Passkey
		rec audit.Record
	)
	err := b.update(ctx, func(tx store.Tx) error {
		p, err := tx.Passkey(ctx, id)
		if errors.Is(err, store.ErrNotFound) || (err == nil && p.Principal != caller && b.RequireAdmin(caller) != nil) {
			return newErr(KindNotFound, "you hold no passkey %s (bgctl passkey list shows yours)", passkey.EncodeID(id))
		}
		if err != nil {
			return err
		}
		now := b.now().UTC()
		switch p.State {
		case store.PasskeyRemoved:
			return wrongState("passkey %s was already removed at %s", passkey.EncodeID(id), p.RemovedAt.Format(time.RFC3339))
		case store.PasskeyPending:
			// Never bound, never logged: forgetting it is enough.
			p.State, p.RemovedAt = store.PasskeyRemoved, now
			out = p
			return tx.SavePasskey(ctx, *p)
		}
		rec, err = b.appendEntry(ctx, tx, now, audit.Draft{Type: audit.TypePasskeyRemoved, Actor: caller,
			Payload: audit.PasskeyRemoved{Credential: p.CredentialID, Reason: reason}}, false)
		if err != nil {
			return err
		}
		p.State, p.RemovedAt = store.PasskeyRemoved, now
		if err := tx.SavePasskey(ctx, *p); err != nil {
			return err
		}
		out = p
		idx := rec.Index
		return b.emit(ctx, tx, event.Event{Type: EventPasskeyRemoved, Actor: caller, AuditIndex: &idx,
			Summary: fmt.Sprintf("%s removed %s's passkey %s (%q): it signs nothing more", caller, p.Principal, passkey.EncodeID(p.CredentialID), p.Label)}, nil)
	})
	if err != nil {
		return nil, audit.Record{}, err
	}
	b.log.Info("passkey removed", "by", caller, "principal", out.Principal, "credential", passkey.EncodeID(id))
	return out, rec, nil
}

// PrunePasskeys forgets pending passkeys whose codes lapsed, a batch at a
// time (a range of the partial index of pending passkeys).
func (b *Broker) PrunePasskeys(ctx context.Context) (int, error) {
	var n int
	err := b.update(ctx, func(tx store.Tx) error {
		var err error
		n, err = tx.PruneExpiredPasskeys(ctx, b.now().UTC(), 500)
		return err
	})
	return n, err
}

// checkPasskeyReview judges a review signed by a passkey, inside the
// write transaction, as the offline verifier will: the statement is this
// review's; the credential is bound to the caller, by a binding whose
// certificate still vouches for them; the assertion holds under
// go-webauthn's verification of WebAuthn §7.2 (user verification
// required, the bound origin and RP ID) and under format/passkey's, which
// the verifier runs; its counter advances. It returns the passkey with
// its counter moved on, to be saved with the review.
func (b *Broker) checkPasskeyReview(ctx context.Context, tx store.Tx, in ReviewInput, caller string, r *request.Request, now time.Time) (*store.Passkey, error) {
	if len(in.Statement) == 0 || len(in.Passkey.Credential) == 0 {
		return nil, invalid("a passkey review must carry the statement and the assertion over it")
	}
	st, err := statement.Parse(in.Statement)
	if err != nil {
		return nil, invalid("the review statement is malformed: %s", err)
	}
	if err := statement.Check(st, string(in.Decision), b.cfg.Origin, r.ID, r.Content().Digest(), in.Comment, now); err != nil {
		return nil, invalid("the review statement does not match this review: %s%s", err, contentHint(st, r))
	}
	return b.checkPasskeyAssertion(ctx, tx, caller, in.Statement, *in.Passkey, now)
}

// checkPasskeyAssertion judges an assertion over a statement (a review's
// or a request's) by one of caller's passkeys, inside the write
// transaction: the credential is bound to the caller, by a binding whose
// certificate still vouches for them; the assertion holds under
// go-webauthn's verification of WebAuthn §7.2 (user verification
// required, the bound origin and RP ID) and under format/passkey's, which
// the verifier runs; its counter advances. It returns the passkey with its
// counter moved on, to be saved with what it signed.
func (b *Broker) checkPasskeyAssertion(ctx context.Context, tx store.Tx, caller string, stmt []byte, a passkey.Assertion, now time.Time) (*store.Passkey, error) {
	if len(a.Credential) == 0 {
		return nil, invalid("a passkey signature must carry the assertion over the statement")
	}
	p, err := tx.Passkey(ctx, a.Credential)
	if errors.Is(err, store.ErrNotFound) || (err == nil && (p.State != store.PasskeyBound || p.Principal != caller)) {
		return nil, denied("this passkey is not bound to you: only passkeys you bound with bgctl passkey confirm sign")
	}
	if err != nil {
		return nil, err
	}
	bd, cert, err := b.bindingOf(p.Statement, p.Cert)
	if err != nil {
		return nil, err
	}
	if err := b.checkSigner(cert, caller, now); err != nil {
		return nil, &Error{Kind: KindUnauthenticated, Err: err, Msg: "the certificate that bound this passkey no longer vouches for you (it expired or was revoked): bind the passkey again with your current certificate"}
	}
	if err := verifyWithWebAuthn(bd, stmt, a); err != nil {
		return nil, invalid("the passkey assertion does not verify: %s", err)
	}
	v, err := passkey.VerifyAssertion(bd, stmt, a)
	if err != nil {
		return nil, invalid("the passkey assertion does not hold: %s", err)
	}
	if !passkey.CounterAdvances(p.Counter, v.Counter) {
		return nil, invalid("the passkey's signature counter (%d) did not advance past %d: the assertion was replayed or the authenticator cloned", v.Counter, p.Counter)
	}
	if (v.Flags^p.Flags)&byte(protocol.FlagBackupEligible) != 0 {
		return nil, invalid("the passkey's backup eligibility changed since it was registered; remove it and create a new one")
	}
	p.Counter = v.Counter
	return p, nil
}

// bindingOf parses a stored binding and its certificate.
func (b *Broker) bindingOf(stmt, certDER []byte) (passkey.Binding, *x509.Certificate, error) {
	bd, err := passkey.ParseBinding(stmt)
	if err != nil {
		return bd, nil, fmt.Errorf("stored passkey binding: %w", err)
	}
	cert, err := b.sigs.ParseCertificate(certDER)
	if err != nil {
		return bd, nil, fmt.Errorf("stored passkey binding certificate: %w", err)
	}
	return bd, cert, nil
}

// verifyWithWebAuthn runs go-webauthn's assertion verification (WebAuthn
// §7.2 steps 7-21) over the stored fields, with the binding's key, RP ID
// and origin, user presence and user verification required.
func verifyWithWebAuthn(bd passkey.Binding, stmt []byte, a passkey.Assertion) error {
	id := passkey.EncodeID(a.Credential)
	car := protocol.CredentialAssertionResponse{
		PublicKeyCredential: protocol.PublicKeyCredential{Credential: protocol.Credential{ID: id, Type: string(protocol.PublicKeyCredentialType)}, RawID: a.Credential},
		AssertionResponse: protocol.AuthenticatorAssertionResponse{AuthenticatorResponse: protocol.AuthenticatorResponse{ClientDataJSON: a.ClientDataJSON},
			AuthenticatorData: a.AuthenticatorData, Signature: a.Signature},
	}
	parsed, err := car.Parse()
	if err != nil {
		return webauthnError(err)
	}
	challenge := protocol.URLEncodedBase64(passkey.Challenge(stmt)).String()
	return webauthnError(parsed.Verify(challenge, bd.RPID, "", []string{bd.WebOrigin}, nil, nil, protocol.TopOriginExplicitVerificationMode, false, true, true,
		bd.Key, protocol.SignaturePolicy{}))
}

// webauthnError keeps go-webauthn's details, which say which check failed.
func webauthnError(err error) error {
	var pe *protocol.Error
	if errors.As(err, &pe) {
		msg := strings.TrimSpace(pe.Details + " " + pe.DevInfo)
		return errors.New(strings.TrimSpace(msg))
	}
	return err
}

// verifyPasskeyReview re-judges a stored passkey approval before it counts
// toward a quorum: the binding it was made under is still in force (not
// removed; its certificate chained at the review's time and is not
// revoked now, naming the reviewer) and the assertion holds over the
// statement.
// It returns the key the approval counts under: the binding
// certificate's.
func (b *Broker) verifyPasskeyReview(r *request.Request, rv request.Review, digest string) (string, error) {
	st, err := statement.Parse(rv.Statement)
	if err != nil {
		return "", err
	}
	if err := statement.Check(st, string(rv.Decision), b.cfg.Origin, r.ID, digest, rv.Comment, rv.At); err != nil {
		return "", err
	}
	if rv.Binding == nil || rv.Binding.Removed {
		return "", errors.New("the passkey is not bound (removed, or never bound)")
	}
	bd, cert, err := b.bindingOf(rv.Binding.Statement, rv.Binding.Cert)
	if err != nil {
		return "", err
	}
	if bd.Principal != rv.Reviewer {
		return "", fmt.Errorf("the passkey is bound to %s, not the reviewer %s", bd.Principal, rv.Reviewer)
	}
	who, err := b.cfg.Certs.VerifyAt(cert, rv.At)
	if err != nil {
		return "", err
	}
	if who != rv.Reviewer {
		return "", fmt.Errorf("the binding's certificate names %s, not the reviewer %s", who, rv.Reviewer)
	}
	if _, err := passkey.VerifyAssertion(bd, rv.Statement, *rv.Passkey); err != nil {
		return "", err
	}
	return keyid.SPKI(cert.RawSubjectPublicKeyInfo), nil
}

// attachBindings fills, for each passkey review of r, the binding in force
// now, so that the approvals can be judged again before they count.
func attachBindings(ctx context.Context, rd store.Reader, r *request.Request) error {
	for i := range r.Reviews {
		rv := &r.Reviews[i]
		if rv.Passkey == nil {
			continue
		}
		p, err := rd.Passkey(ctx, rv.Passkey.Credential)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		rv.Binding = &request.PasskeyBinding{Statement: p.Statement, Cert: p.Cert, Removed: p.State != store.PasskeyBound}
	}
	return nil
}

// passkeyStatementAtEntry checks a passkey-signed statement again at the
// time its entry was given, when that is not now: the statement (by check)
// and the binding certificate must hold then too.
func (b *Broker) passkeyStatementAtEntry(p *store.Passkey, caller string, now time.Time, rec audit.Record, check func(at time.Time) error) error {
	if rec.Time.Equal(now) {
		return nil
	}
	if err := check(rec.Time); err != nil {
		return err
	}
	_, cert, err := b.bindingOf(p.Statement, p.Cert)
	if err != nil {
		return err
	}
	return b.checkSigner(cert, caller, rec.Time)
}

// passkeyAtEntry checks a passkey review again at the time its entry was
// given, when that is not now (the log's time never goes back): the
// statement's time and the binding certificate must hold then too, as the
// offline verifier judges them at the entry's time.
func (b *Broker) passkeyAtEntry(p *store.Passkey, in ReviewInput, caller string, r *request.Request, now time.Time, rec audit.Record) error {
	if rec.Time.Equal(now) {
		return nil
	}
	st, err := statement.Parse(in.Statement)
	if err != nil {
		return invalid("the review statement is malformed: %s", err)
	}
	if err := statement.Check(st, string(in.Decision), b.cfg.Origin, r.ID, r.Content().Digest(), in.Comment, rec.Time); err != nil {
		return invalid("the review statement does not hold at the log's time: %s", err)
	}
	_, cert, err := b.bindingOf(p.Statement, p.Cert)
	if err != nil {
		return err
	}
	return b.checkSigner(cert, caller, rec.Time)
}
