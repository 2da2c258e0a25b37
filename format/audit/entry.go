// Package audit defines the audit log's entries: their versioned JSON form,
// the hash chain, and their signatures. Entry bytes are produced once, by
// Build, stored as written and never re-serialised: verification hashes and
// checks exactly the stored bytes.
package audit

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/transparency-dev/merkle/rfc6962"
)

// Version is the entry format version written in field "v".
const Version = 1

// Type is an entry type. Each has its own payload, documented in
// docs/audit-log.md and defined in payloads.go.
type Type string

// Entry types.
const (
	TypePolicyLoaded     Type = "policy_loaded"
	TypeRequestCreated   Type = "request_created"
	TypeRequestReviewed  Type = "request_reviewed"
	TypeRequestApproved  Type = "request_approved"
	TypeRequestDenied    Type = "request_denied"
	TypeRequestCancelled Type = "request_cancelled"
	TypeRequestExpired   Type = "request_expired"
	TypeTokenIssued      Type = "token_issued"
	TypeGrantRevoked     Type = "grant_revoked"
	TypePermissionDenied Type = "permission_denied"
	TypeAlertAcked       Type = "alert_acknowledged"
	TypeAlertDead        Type = "alert_dead_lettered"
	// TypeAlertDeadAcked records an auditor's acknowledgement of a dead
	// letter.
	TypeAlertDeadAcked  Type = "alert_dead_letter_acknowledged"
	TypeSoloAcked       Type = "solo_acknowledged"
	TypeReviewOpened    Type = "post_review_opened"
	TypeReviewClosed    Type = "post_review_closed"
	TypeAccountAttested Type = "account_attested"
	TypeKeyActivated    Type = "key_activated"
	TypeKeyRetired      Type = "key_retired"
	TypeKeyDestroyed    Type = "key_destroyed"
	TypeStoreRestored   Type = "store_restored"
	TypePasskeyBound    Type = "passkey_bound"
	TypePasskeyRemoved  Type = "passkey_removed"
	// Policy changes under the policy admins' quorum (docs/audit-log.md).
	TypePolicyProposed       Type = "policy_proposed"
	TypePolicyReviewed       Type = "policy_reviewed"
	TypePolicyProposalClosed Type = "policy_proposal_closed"
	TypePolicyRefused        Type = "policy_refused"
)

// Entry is the JSON object that is hashed and signed. Field order is fixed
// by this struct; Build is the only producer.
type Entry struct {
	V       int             `json:"v"`
	Index   uint64          `json:"index"`
	Time    time.Time       `json:"time"`
	Type    Type            `json:"type"`
	Actor   string          `json:"actor"`
	Request string          `json:"request,omitempty"`
	Account string          `json:"account,omitempty"`
	Prev    string          `json:"prev"`
	Payload json.RawMessage `json:"payload"`
}

// Record is an entry as stored: its exact bytes, leaf hash and signature.
type Record struct {
	Index    uint64
	Time     time.Time
	Type     Type
	Bytes    []byte
	LeafHash []byte
	// Signature is an ASN.1 DER ECDSA P-256 signature over SHA-256(Bytes),
	// nil while the entry waits for the HSM.
	Signature []byte
	// KeyID is the RFC 7638 thumbprint of the audit key that signed it.
	KeyID string
}

// Head is the end of the chain: what the next entry links to.
type Head struct {
	// Size is the number of entries, i.e. the next index.
	Size     uint64
	LeafHash []byte
	Time     time.Time
}

// ZeroPrev is the prev of the first entry.
var ZeroPrev = make([]byte, sha256.Size)

// LeafHash is the RFC 6962 leaf hash SHA-256(0x00 || b).
func LeafHash(b []byte) []byte { return rfc6962.DefaultHasher.HashLeaf(b) }

// Draft is what a caller knows about a new entry; Build adds the chain.
type Draft struct {
	Type    Type
	Actor   string
	Request string
	Account string
	Payload any
}

// Build makes the next entry after head at time now (or the head's time if
// the clock went back: entry times never decrease).
func Build(head Head, now time.Time, d Draft) (Record, error) {
	t := now.UTC()
	if t.Before(head.Time) {
		t = head.Time
	}
	payload, err := json.Marshal(d.Payload)
	if err != nil {
		return Record{}, fmt.Errorf("encoding %s payload: %w", d.Type, err)
	}
	prev := head.LeafHash
	if head.Size == 0 {
		prev = ZeroPrev
	}
	e := Entry{V: Version, Index: head.Size, Time: t, Type: d.Type, Actor: d.Actor, Request: d.Request,
		Account: d.Account, Prev: hex.EncodeToString(prev), Payload: payload}
	b, err := json.Marshal(e)
	if err != nil {
		return Record{}, err
	}
	return Record{Index: head.Size, Time: t, Type: d.Type, Bytes: b, LeafHash: LeafHash(b)}, nil
}

// Next returns the head after r.
func (r Record) Next() Head { return Head{Size: r.Index + 1, LeafHash: r.LeafHash, Time: r.Time} }

// Signer signs entries. The HSM audit key implements it.
type Signer interface {
	SignContext(ctx context.Context, digest []byte, opts crypto.SignerOpts) ([]byte, error)
	Public() crypto.PublicKey
}

// Sign signs r's bytes with s and records kid.
func Sign(ctx context.Context, s Signer, kid string, r *Record) error {
	d := sha256.Sum256(r.Bytes)
	sig, err := s.SignContext(ctx, d[:], crypto.SHA256)
	if err != nil {
		return err
	}
	r.Signature, r.KeyID = sig, kid
	return nil
}

// VerifySignature checks an entry signature against an audit public key.
func VerifySignature(pub *ecdsa.PublicKey, entry, sig []byte) bool {
	d := sha256.Sum256(entry)
	return ecdsa.VerifyASN1(pub, d[:], sig)
}

// Parse decodes entry bytes.
func Parse(b []byte) (*Entry, error) {
	var e Entry
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, err
	}
	return &e, nil
}
