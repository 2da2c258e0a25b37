package statement

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"time"
)

// ContentVersion is the version of the request content text. A request's
// content digest is computed once, in the version current when it was
// created, and that version is recorded with it (the request_created
// payload's content_version, the API's Request.content_version), so a
// request logged under version 1 verifies as version 1 for ever.
type ContentVersion int

const (
	// ContentV1 wrote created_at as Go's RFC3339Nano: the fraction with
	// its trailing zeros removed, and no fraction at all on a whole
	// second. Clients that padded it got a digest that matched about one
	// time in ten. The broker writes it no more; it still verifies every
	// request logged with it. Zero (an absent field) means version 1.
	ContentV1 ContentVersion = 1
	// ContentV2 writes created_at with exactly nine fractional digits.
	ContentV2 ContentVersion = 2
	// CurrentContent is the version new requests are created with.
	CurrentContent = ContentV2
)

// Context lines of the request content text, one per version.
const (
	ContentContextV1 = "breakglass request content v1"
	ContentContextV2 = "breakglass request content v2"
)

// Known reports whether v is a content version this package can write.
// Zero counts as version 1.
func (v ContentVersion) Known() bool { return v == 0 || v == ContentV1 || v == ContentV2 }

// Norm maps zero (an absent field) to ContentV1.
func (v ContentVersion) Norm() ContentVersion {
	if v == 0 {
		return ContentV1
	}
	return v
}

// Content is a request's immutable content: what an approver approves.
type Content struct {
	// Version selects the text; zero is version 1, as an absent field in
	// the log or the API is.
	Version       ContentVersion
	ID            string
	Account       string
	Requester     string
	Justification string
	Ticket        string
	TTLSeconds    int64
	Drill         bool
	CreatedAt     time.Time
}

// CreatedAtText is created_at as the content text writes it.
func (c Content) CreatedAtText() string {
	t := c.CreatedAt.UTC()
	if c.Version.Norm() == ContentV1 {
		return t.Format(time.RFC3339Nano)
	}
	return t.Format("2006-01-02T15:04:05.000000000Z")
}

// Bytes is the canonical text whose SHA-256 is the content digest (the
// grammar is in docs/signing.md). Free text is base64-encoded so that no
// field can forge a line of another. An unknown version gives the text of
// version 2 under its own context line, which no broker writes, so that
// its digest matches nothing.
func (c Content) Bytes() []byte {
	var b bytes.Buffer
	ctx := ContentContextV2
	switch c.Version.Norm() {
	case ContentV1:
		ctx = ContentContextV1
	case ContentV2:
	default:
		ctx = fmt.Sprintf("breakglass request content v%d", c.Version)
	}
	fmt.Fprintf(&b, "%s\nid %s\naccount %s\nrequester %s\nttl_seconds %d\ndrill %t\ncreated_at %s\nticket %s\njustification %s\n",
		ctx, c.ID, c.Account, c.Requester, c.TTLSeconds, c.Drill, c.CreatedAtText(),
		base64.StdEncoding.EncodeToString([]byte(c.Ticket)), base64.StdEncoding.EncodeToString([]byte(c.Justification)))
	return b.Bytes()
}

// Digest is "sha256:" and the hex SHA-256 of Bytes.
func (c Content) Digest() string { return digest(c.Bytes()) }

// MismatchHint says why a statement's content digest may not be the
// request's, when the cause is a known mistake: the content text of
// another version. It is empty otherwise.
func MismatchHint(signed string, c Content) string {
	for _, v := range []ContentVersion{ContentV1, ContentV2} {
		if v == c.Version.Norm() {
			continue
		}
		o := c
		o.Version = v
		if o.Digest() == signed {
			return fmt.Sprintf("it is the digest of the version %d content text, but this request's content is version %d (its content_version; see docs/signing.md)", v, c.Version.Norm())
		}
	}
	return ""
}

// AccountContext begins the text an attestation's content digest covers.
const AccountContext = "breakglass account attestation v1"

// AccountText is the text whose digest an attestation's content is: the
// account and the hash of the policy in force, which says who its
// approvers are.
func AccountText(account, policyHash string) []byte {
	return fmt.Appendf(nil, "%s\naccount %s\npolicy %s\n", AccountContext, account, policyHash)
}

// AccountDigest is the content digest of an attestation.
func AccountDigest(account, policyHash string) string {
	return digest(AccountText(account, policyHash))
}

// CommentDigest is the digest a statement carries for a review comment or
// notes: of their UTF-8 bytes, exactly as sent.
func CommentDigest(comment string) string { return digest([]byte(comment)) }

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}
