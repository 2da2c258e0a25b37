// Package statement defines the statements approvers sign with the key of
// their own client certificate: what a review says, in a form that cannot be
// mistaken for any other signed object of the broker, replayed on another
// request, or carried to another deployment. The broker checks them before
// it accepts a review and again before it issues a token; the offline
// verifier checks them once more from the log.
package statement

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"regexp"
	"strings"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// StatementContext begins every review, review-close and attest statement.
// Each signed object of the broker starts with a context line of its own.
const StatementContext = "breakglass review statement v1"

// MaxSkew is how far a statement's time may be from the broker's clock.
const MaxSkew = 5 * time.Minute

// Statement types.
const (
	// TypeApprove and TypeDeny review a pending request.
	TypeApprove = "approve"
	TypeDeny    = "deny"
	// TypeReviewClose closes the post-use review of a grant: request is
	// the grant's request and content its content digest.
	TypeReviewClose = "review-close"
	// TypeAttest attests an account is still needed and its approvers are
	// right: request is a fresh id for the attestation and content the
	// digest of AccountContent.
	TypeAttest = "attest"
)

// Statement is one signed review.
type Statement struct {
	// Type is approve, deny, review-close or attest.
	Type string
	// Origin is the log origin of the deployment, so a statement is worth
	// nothing in another one.
	Origin string
	// Request is the request id.
	Request string
	// Content is the request's content digest.
	Content string
	// Comment is the digest of the review comment.
	Comment string
	// Time is the signer's clock, to the second.
	Time time.Time
}

var (
	digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
	uuidRE   = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	originRE = regexp.MustCompile(`^[\x21-\x7E]{1,255}$`)
)

// Marshal returns the statement's canonical text, the bytes that are signed.
func (s Statement) Marshal() []byte {
	return fmt.Appendf(nil, "%s\ntype %s\norigin %s\nrequest %s\ncontent %s\ncomment %s\ntime %s\n",
		StatementContext, s.Type, s.Origin, s.Request, s.Content, s.Comment, s.Time.UTC().Format(time.RFC3339))
}

// MaxStatementBytes bounds what Parse reads.
const MaxStatementBytes = 1024

// Parse reads a statement strictly: the exact lines in the exact order,
// nothing else, and only the canonical form of each value (so one
// statement has one encoding).
func Parse(b []byte) (Statement, error) {
	var s Statement
	if len(b) > MaxStatementBytes {
		return s, errors.New("statement is too long")
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) != 8 || lines[7] != "" {
		return s, errors.New("statement must be 7 lines, each ending in a newline")
	}
	if lines[0] != StatementContext {
		return s, fmt.Errorf("statement does not begin with %q", StatementContext)
	}
	fields := []string{"type", "origin", "request", "content", "comment", "time"}
	vals := make([]string, len(fields))
	for i, f := range fields {
		k, v, ok := strings.Cut(lines[i+1], " ")
		if !ok || k != f || v == "" {
			return s, fmt.Errorf("statement line %d must be %q followed by a value", i+2, f)
		}
		vals[i] = v
	}
	s.Type, s.Origin, s.Request, s.Content, s.Comment = vals[0], vals[1], vals[2], vals[3], vals[4]
	switch s.Type {
	case TypeApprove, TypeDeny, TypeReviewClose, TypeAttest:
	default:
		return s, fmt.Errorf("statement type %q is not approve, deny, review-close or attest", s.Type)
	}
	if !originRE.MatchString(s.Origin) {
		return s, errors.New("statement origin is malformed")
	}
	if !uuidRE.MatchString(s.Request) {
		return s, errors.New("statement request is not a request id")
	}
	if !digestRE.MatchString(s.Content) || !digestRE.MatchString(s.Comment) {
		return s, errors.New("statement digests must be sha256:<64 hex>")
	}
	t, err := time.Parse(time.RFC3339, vals[5])
	if err != nil || t.UTC().Format(time.RFC3339) != vals[5] {
		return s, errors.New("statement time must be RFC 3339 UTC to the second, such as 2026-11-29T12:52:10Z (no fraction, no offset other than Z)")
	}
	s.Time = t
	if !bytes.Equal(s.Marshal(), b) {
		return s, errors.New("statement is not in canonical form")
	}
	return s, nil
}

// Sign signs a statement with the private key of the approver's client
// certificate: ECDSA with SHA-256 (ASN.1 DER), Ed25519, or RSA PKCS #1 v1.5
// with SHA-256, by the key's type.
func Sign(key crypto.Signer, stmt []byte) ([]byte, error) {
	switch key.Public().(type) {
	case ed25519.PublicKey:
		return key.Sign(rand.Reader, stmt, crypto.Hash(0))
	case *ecdsa.PublicKey, *rsa.PublicKey:
		d := sha256.Sum256(stmt)
		return key.Sign(rand.Reader, d[:], crypto.SHA256)
	}
	return nil, fmt.Errorf("cannot sign statements with a %T key", key.Public())
}

// ErrSignatureEncoding marks a signature that is not in the encoding its
// key type requires (docs/signing.md), such as a raw r||s ECDSA signature
// where ASN.1 DER is expected: the signer's mistake, named as such.
var ErrSignatureEncoding = errors.New("the signature is not in the encoding its key type requires")

// Verify checks a statement signature against the certificate's key:
// ECDSA with SHA-256, ASN.1 DER; Ed25519 over the statement itself; RSA
// PKCS #1 v1.5 with SHA-256. A signature in another encoding is refused
// with an error wrapping ErrSignatureEncoding that says which encoding was
// expected.
func Verify(cert *x509.Certificate, stmt, sig []byte) error {
	var alg x509.SignatureAlgorithm
	switch pub := cert.PublicKey.(type) {
	case *ecdsa.PublicKey:
		alg = x509.ECDSAWithSHA256
		if err := checkDER(sig); err != nil {
			hint := ""
			if n := (pub.Curve.Params().BitSize + 7) / 8; len(sig) == 2*n {
				hint = fmt.Sprintf("; these %d bytes look like a raw r||s signature (IEEE P1363, what WebCrypto returns): encode r and s as a DER SEQUENCE of two INTEGERs", len(sig))
			}
			return fmt.Errorf("%w: expected an ASN.1 DER ECDSA signature (RFC 3279: SEQUENCE { r INTEGER, s INTEGER }) over SHA-256 of the statement, %s%s", ErrSignatureEncoding, err.Error(), hint)
		}
	case ed25519.PublicKey:
		alg = x509.PureEd25519
		if len(sig) != ed25519.SignatureSize {
			return fmt.Errorf("%w: expected a %d-byte Ed25519 signature (RFC 8032) of the statement itself, got %d bytes", ErrSignatureEncoding, ed25519.SignatureSize, len(sig))
		}
	case *rsa.PublicKey:
		alg = x509.SHA256WithRSA
		if len(sig) != pub.Size() {
			return fmt.Errorf("%w: expected an RSA PKCS #1 v1.5 SHA-256 signature of %d bytes (the modulus size), got %d bytes", ErrSignatureEncoding, pub.Size(), len(sig))
		}
	default:
		return fmt.Errorf("unsupported certificate key %T: statements are signed with ECDSA, Ed25519 or RSA keys", cert.PublicKey)
	}
	if err := cert.CheckSignature(alg, stmt, sig); err != nil {
		return fmt.Errorf("the signature does not verify with the certificate's key: %w", err)
	}
	return nil
}

// checkDER checks that sig is one DER SEQUENCE of two positive INTEGERs
// in minimal encoding and nothing after it.
func checkDER(sig []byte) error {
	var seq cryptobyte.String
	in := cryptobyte.String(sig)
	if !in.ReadASN1(&seq, cbasn1.SEQUENCE) {
		return fmt.Errorf("got %d bytes that are not a DER SEQUENCE", len(sig))
	}
	if !in.Empty() {
		return errors.New("got bytes after the DER SEQUENCE")
	}
	for _, name := range []string{"r", "s"} {
		var n big.Int
		if !seq.ReadASN1Integer(&n) {
			return fmt.Errorf("%s is not a minimally encoded DER INTEGER", name)
		}
		if n.Sign() <= 0 {
			return fmt.Errorf("%s is not positive", name)
		}
	}
	if !seq.Empty() {
		return errors.New("the SEQUENCE holds more than r and s")
	}
	return nil
}

// MismatchError is a statement that verifies but says something other
// than the action it is presented with. Field names the line that differs:
// type, origin, request, content, comment or time.
type MismatchError struct {
	Field string
	msg   string
}

func (e *MismatchError) Error() string { return e.msg }

func mismatch(field, format string, args ...any) error {
	return &MismatchError{Field: field, msg: fmt.Sprintf(format, args...)}
}

// Check verifies that stmt is a statement for exactly this review: type,
// origin, request, content and comment all match, and its time is within
// MaxSkew of now. Its error is a *MismatchError.
func Check(s Statement, decision, origin, requestID, contentDigest, comment string, now time.Time) error {
	switch {
	case s.Type != decision:
		return mismatch("type", "the statement says %s but the review is %s", s.Type, decision)
	case s.Origin != origin:
		return mismatch("origin", "the statement is for log %q, not this one (%q)", s.Origin, origin)
	case s.Request != requestID:
		return mismatch("request", "the statement is for request %s, not %s", s.Request, requestID)
	case s.Content != contentDigest:
		return mismatch("content", "the statement's content digest does not match the request: it was signed over other content")
	case s.Comment != CommentDigest(comment):
		return mismatch("comment", "the statement's comment digest does not match the comment")
	}
	if d := s.Time.Sub(now); d > MaxSkew || d < -MaxSkew {
		return mismatch("time", "the statement's time %s is %s from the broker's clock; at most %s is allowed (check your clock)",
			s.Time.UTC().Format(time.RFC3339), d.Round(time.Second), MaxSkew)
	}
	return nil
}
