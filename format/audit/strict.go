package audit

import (
	"errors"
	"fmt"

	"github.com/bgbroker/breakglass/format/strictjson"
)

// ErrUnknownType marks an entry whose type no payload is defined for.
var ErrUnknownType = errors.New("unknown entry type")

// Decode reads entry bytes as a verifier must: they must be exactly the
// encoding Build writes of the entry they hold (strictjson), so that a
// second "Type" key, a case variant, a duplicate or an unknown field,
// which encoding/json, jq and Python resolve each their own way, cannot
// make one entry say two things. Parse, which is lenient, is for people.
func Decode(b []byte) (*Entry, error) {
	var e Entry
	if err := strictjson.Decode(b, &e); err != nil {
		return nil, err
	}
	return &e, nil
}

// NewPayload returns a pointer to a new payload of the entry type t, nil
// for a type that has none defined.
func NewPayload(t Type) any {
	switch t {
	case TypePolicyLoaded:
		return new(PolicyLoaded)
	case TypeRequestCreated:
		return new(RequestCreated)
	case TypeRequestReviewed:
		return new(RequestReviewed)
	case TypeRequestApproved:
		return new(RequestApproved)
	case TypeRequestDenied, TypeRequestCancelled, TypeRequestExpired, TypeGrantRevoked:
		return new(RequestFinal)
	case TypeTokenIssued:
		return new(TokenIssued)
	case TypePermissionDenied:
		return new(PermissionDenied)
	case TypeAlertAcked, TypeAlertDead, TypeSoloAcked:
		return new(AlertDelivery)
	case TypeAlertDeadAcked:
		return new(DeadLetterAcknowledged)
	case TypeReviewOpened:
		return new(PostReviewOpened)
	case TypeReviewClosed:
		return new(PostReviewClosed)
	case TypeAccountAttested:
		return new(AccountAttested)
	case TypeKeyActivated, TypeKeyRetired, TypeKeyDestroyed:
		return new(KeyChange)
	case TypeStoreRestored:
		return new(StoreRestored)
	case TypePasskeyBound:
		return new(PasskeyBound)
	case TypePasskeyRemoved:
		return new(PasskeyRemoved)
	case TypePolicyProposed:
		return new(PolicyProposed)
	case TypePolicyReviewed:
		return new(PolicyReviewed)
	case TypePolicyProposalClosed:
		return new(PolicyProposalClosed)
	case TypePolicyRefused:
		return new(PolicyRefused)
	case TypeSSHCertIssued:
		return new(SSHCertificateIssued)
	case TypeX509CertIssued:
		return new(X509CertificateIssued)
	}
	return nil
}

// DecodePayload decodes e's payload into the struct of its type, strictly
// (the payload must be exactly its encoding), and returns a pointer to it.
func (e *Entry) DecodePayload() (any, error) {
	p := NewPayload(e.Type)
	if p == nil {
		return nil, fmt.Errorf("%w %q", ErrUnknownType, e.Type)
	}
	if err := strictjson.Decode(e.Payload, p); err != nil {
		return nil, fmt.Errorf("malformed %s payload: %w", e.Type, err)
	}
	return p, nil
}
