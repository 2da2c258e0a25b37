package auditverify

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/keyid"
	"github.com/bgbroker/breakglass/format/passkey"
	"github.com/bgbroker/breakglass/format/statement"
)

// boundPasskey is a credential some approver bound (format/passkey), as
// the log says: who, with which certificate, and the last signature
// counter its assertions showed.
type boundPasskey struct {
	principal string
	binding   passkey.Binding
	cert      *x509.Certificate
	removed   bool
	counter   uint32
	index     int64
}

// keyOf names a certificate's key: the SHA-256 of its SubjectPublicKeyInfo.
func keyOf(c *x509.Certificate) string { return keyid.SPKI(c.RawSubjectPublicKeyInfo) }

// passkeyBound checks a binding as the broker must have before logging it:
// the statement parses and is signed with the key of a certificate that
// chained to the client CA at the entry's time and was not revoked, which
// names the actor, who is the principal the binding names; it is for this
// log, made within the allowed skew of the entry, and binds a credential
// never bound before.
func (r *replay) passkeyBound(i int64, e *audit.Entry) *Violation {
	var p audit.PasskeyBound
	if err := decode(e.Payload, &p); err != nil {
		return violation(i, "malformed passkey_bound payload: %v", err)
	}
	cert, err := r.sigs.ParseCertificate(p.Certificate)
	if err != nil {
		return violation(i, "the passkey binding's certificate does not parse: %v", err)
	}
	b, err := passkey.VerifyBinding(cert, p.Statement, p.Signature)
	if err != nil {
		return violation(i, "the passkey binding of %s does not hold: %v", e.Actor, err)
	}
	if !bytes.Equal(b.Credential, p.Credential) {
		return violation(i, "the entry names credential %s but the binding binds %s", passkey.EncodeID(p.Credential), passkey.EncodeID(b.Credential))
	}
	if reason := r.certHeld(cert, e.Time); reason != "" {
		return violation(i, "the passkey binding of %s does not hold: %s", e.Actor, reason)
	}
	who, err := principalOf(cert, r.identity)
	if err != nil {
		return violation(i, "the passkey binding's certificate names nobody: %v", err)
	}
	if who != e.Actor {
		return violation(i, "the passkey binding was signed with the certificate of %s but logged as made by %s", who, e.Actor)
	}
	if err := passkey.CheckBinding(b, r.origin, who, e.Time); err != nil {
		return violation(i, "the passkey binding of %s does not hold: %v", e.Actor, err)
	}
	id := string(b.Credential)
	if prev := r.passkeys[id]; prev != nil {
		return violation(i, "credential %s was already bound (entry %d); a credential is bound once", passkey.EncodeID(b.Credential), prev.index)
	}
	r.passkeys[id] = &boundPasskey{principal: who, binding: b, cert: cert, index: i}
	r.passkeyBindings++
	return nil
}

// passkeyRemoved ends a binding; anyone the broker let do it may take
// access away, so only the credential is checked.
func (r *replay) passkeyRemoved(i int64, e *audit.Entry) *Violation {
	var p audit.PasskeyRemoved
	if err := decode(e.Payload, &p); err != nil {
		return violation(i, "malformed passkey_removed payload: %v", err)
	}
	bp := r.passkeys[string(p.Credential)]
	if bp == nil || bp.removed {
		return violation(i, "removal of credential %s, which is not bound", passkey.EncodeID(p.Credential))
	}
	bp.removed = true
	return nil
}

// certHeld says why a certificate could not sign at t: it did not chain
// to the client CA then, or the CRL revoked it before t ("" if it could).
func (r *replay) certHeld(cert *x509.Certificate, at time.Time) string {
	if err := r.verifyChain(cert, at); err != nil {
		return "the certificate did not chain to the client CA at " + at.UTC().Format(time.RFC3339) + ": " + err.Error()
	}
	if t, ok := r.revoked[revocationKey(cert.RawIssuer, cert.SerialNumber)]; ok && !at.Before(t) {
		return fmt.Sprintf("the certificate was revoked at %s (CRL), before %s", t.UTC().Format(time.RFC3339), at.UTC().Format(time.RFC3339))
	}
	return ""
}

// checkPasskeyReview verifies a review signed by a passkey the way the
// broker must have: the statement is this review's, the credential is
// bound to the reviewer by a binding whose certificate still holds at the
// review's time (a binding lasts no longer than the certificate that made
// it), the assertion is a user-verified WebAuthn assertion over the
// statement on the bound origin, and its counter advanced. It returns the
// signer's key (the binding certificate's) or why the review does not
// hold.
func (r *replay) checkPasskeyReview(q *reqState, reviewer string, p audit.RequestReviewed, at time.Time) (string, string) {
	if len(p.Signature) > 0 || len(p.Certificate) > 0 {
		return "", "a passkey review carries no certificate signature"
	}
	st, err := statement.Parse(p.Statement)
	if err != nil {
		return "", err.Error()
	}
	if err := statement.Check(st, p.Decision, r.origin, q.id, q.digest, p.Comment, at); err != nil {
		return "", err.Error()
	}
	bp, reason := r.checkPasskeyAssertion(reviewer, q.identity, p.Statement, *p.Passkey, at)
	if reason != "" {
		return "", reason
	}
	return keyOf(bp.cert), ""
}

// checkPasskeyAssertion verifies an assertion over a statement (a
// review's or a request's) by signer's passkey: the credential is bound to
// signer, by a binding whose certificate still holds at the statement's
// entry (a binding lasts no longer than the certificate that made it) and
// names signer under the identity rule id; the assertion is a
// user-verified WebAuthn assertion over the statement on the bound origin;
// its counter advanced. It returns the passkey, or why it did not sign.
func (r *replay) checkPasskeyAssertion(signer string, id audit.Identity, stmt []byte, a passkey.Assertion, at time.Time) (*boundPasskey, string) {
	bp := r.passkeys[string(a.Credential)]
	switch {
	case bp == nil:
		return nil, fmt.Sprintf("passkey %s was never bound: only bound passkeys sign", passkey.EncodeID(a.Credential))
	case bp.removed:
		return nil, fmt.Sprintf("passkey %s was removed before this", passkey.EncodeID(a.Credential))
	case bp.principal != signer:
		return nil, fmt.Sprintf("passkey %s is bound to %s, not %s", passkey.EncodeID(a.Credential), bp.principal, signer)
	}
	if reason := r.certHeld(bp.cert, at); reason != "" {
		return nil, "the passkey's binding no longer holds: " + reason
	}
	if who, err := principalOf(bp.cert, id); err != nil || who != signer {
		return nil, fmt.Sprintf("the passkey's binding certificate names %q, not %s, under the identity rule in force", who, signer)
	}
	v, err := passkey.VerifyAssertion(bp.binding, stmt, a)
	if err != nil {
		return nil, err.Error()
	}
	if !passkey.CounterAdvances(bp.counter, v.Counter) {
		return nil, fmt.Sprintf("the assertion's signature counter %d does not advance past %d, the last this passkey showed: a replayed assertion or a cloned authenticator", v.Counter, bp.counter)
	}
	bp.counter = v.Counter
	return bp, ""
}
