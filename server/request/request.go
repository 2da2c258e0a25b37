// Package request holds the request state machine: what a request is, what
// state it is in at a given moment, and which transitions are allowed. It
// is pure: no storage, no clock of its own.
package request

import (
	"fmt"
	"time"

	"github.com/bgbroker/breakglass/format/keyid"
	"github.com/bgbroker/breakglass/format/passkey"
	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/format/statement"
)

// State is a request's state.
type State string

// The states of DESIGN §5.
const (
	Pending   State = "PENDING"
	Approved  State = "APPROVED"
	Denied    State = "DENIED"
	Cancelled State = "CANCELLED"
	Expired   State = "EXPIRED"
	Revoked   State = "REVOKED"
)

// Final reports whether no transition leaves s.
func (s State) Final() bool { return s != Pending && s != Approved }

// Decision is a review's answer.
type Decision string

// Review decisions.
const (
	Approve Decision = "approve"
	Deny    Decision = "deny"
)

// Review is one principal's decision.
type Review struct {
	Reviewer string
	Decision Decision
	Comment  string
	At       time.Time
	// EntryIndex and LeafHash locate the audit entry that recorded it.
	EntryIndex uint64
	LeafHash   []byte
	// Statement, Signature and Cert are the signed review statement
	// (format/statement), its signature, and the reviewer's certificate (DER).
	Statement []byte
	Signature []byte
	Cert      []byte
	// Passkey, for a review signed by a bound passkey, is the WebAuthn
	// assertion over the statement (Signature and Cert are then empty).
	Passkey *passkey.Assertion
	// KeyStore is where the reviewer's client said the certificate key
	// lives (audit.KeyStorePKCS11 or empty).
	KeyStore string
	// Binding, for a passkey review, is the passkey's binding as the
	// broker holds it when the request is loaded (not stored with the
	// review): a removal or a revoked binding certificate takes the
	// approval away.
	Binding *PasskeyBinding
}

// PasskeyBinding is a passkey's binding statement and the certificate
// that signed it, and whether it has been removed since.
type PasskeyBinding struct {
	Statement []byte
	Cert      []byte
	Removed   bool
}

// Signed is a statement, its signature and the certificate (DER) whose
// key made it.
type Signed struct {
	Statement, Signature, Cert []byte
}

// Request is a request and, once approved, its grant.
type Request struct {
	ID            string
	Account       string
	Requester     string
	Justification string
	Ticket        string
	TTL           time.Duration
	Drill         bool
	// Solo is time-locked solo access: approved when its veto window
	// passes after the alert was acknowledged, unless someone denies.
	Solo bool

	// State is the stored state; Effective gives the state at a moment,
	// taking deadlines into account.
	State State

	CreatedAt        time.Time
	ApprovalDeadline time.Time
	// ContentVersion is the version of the content text the request's
	// content digest is computed in, fixed when it is created.
	ContentVersion statement.ContentVersion
	// Signed is the request statement its requester signed, the
	// signature, and the requester's certificate (DER); empty for requests
	// made before requests were signed.
	Signed Signed
	// Rule is the quorum rule in force when the request was created; it
	// stays the rule of this request whatever later policies say.
	Rule          policy.Rule
	DenyThreshold int
	MaxIssuances  int
	PolicyHash    string
	// ActivationWindow is copied from the account at creation.
	ActivationWindow time.Duration

	ApprovedAt time.Time
	// ApprovedEntry is the index of the grant's request_approved entry;
	// nil before approval, and for grants approved before it was kept.
	ApprovedEntry      *uint64
	GrantExpiresAt     time.Time
	ActivationDeadline time.Time
	Approvers          []string

	Issued        int
	FirstIssuedAt time.Time
	// TokenKID is the kid of the key that signed the grant's tokens.
	TokenKID string

	// SoloAckedAt is when an ack sink accepted the solo alert (the veto
	// window starts then); GrantAckedAt when one accepted the grant's
	// notification (require_alert_ack).
	SoloAckedAt  time.Time
	GrantAckedAt time.Time

	FinalAt     time.Time
	FinalReason string
	FinalBy     string

	Reviews []Review

	CreatedEntry uint64
	CreatedLeaf  []byte
	// Version increases with every stored change, for watchers.
	Version int64
}

// Effective returns the state at now and, when a deadline has moved the
// request on, the reason and the moment. A request whose stored state is
// PENDING or APPROVED can be EXPIRED in effect before the background sweep
// records it: a stalled timer never extends access.
func (r *Request) Effective(now time.Time) (State, string, time.Time) {
	switch r.State {
	case Pending:
		if !now.Before(r.ApprovalDeadline) {
			return Expired, "approval window passed without quorum", r.ApprovalDeadline
		}
	case Approved:
		end, why := r.GrantExpiresAt, "grant ended"
		if r.Issued == 0 && r.ActivationDeadline.Before(end) {
			end, why = r.ActivationDeadline, "activation window passed without a token"
		}
		if !now.Before(end) {
			return Expired, why, end
		}
	}
	return r.State, r.FinalReason, r.FinalAt
}

// SoloGrant reports whether r was approved as a solo grant, by the passing
// of its veto window with no approver (a solo request may also be
// approved by its quorum, and is then an ordinary grant).
func (r *Request) SoloGrant() bool { return r.Solo && !r.ApprovedAt.IsZero() && len(r.Approvers) == 0 }

// Reviewed reports whether principal has already reviewed.
func (r *Request) Reviewed(principal string) bool {
	for _, rv := range r.Reviews {
		if rv.Reviewer == principal {
			return true
		}
	}
	return false
}

// RequesterKey names the key that signed the request (keyid.SPKI), ""
// for a request made before requests were signed.
func (r *Request) RequesterKey() string {
	if len(r.Signed.Cert) == 0 {
		return ""
	}
	return keyid.CertSPKI(r.Signed.Cert)
}

// RequesterCert is the certificate (DER) whose key signed the request,
// nil for a request made before requests were signed.
func (r *Request) RequesterCert() []byte {
	if len(r.Signed.Cert) == 0 {
		return nil
	}
	return r.Signed.Cert
}

// ApprovalsAndDenials splits the reviewers by decision.
func (r *Request) ApprovalsAndDenials() (approvals, denials []string) {
	for _, rv := range r.Reviews {
		if rv.Decision == Approve {
			approvals = append(approvals, rv.Reviewer)
		} else {
			denials = append(denials, rv.Reviewer)
		}
	}
	return approvals, denials
}

// Content returns the request's immutable content: what approvers approve
// and what their signed statements bind to.
func (r *Request) Content() statement.Content {
	return statement.Content{Version: r.ContentVersion.Norm(), ID: r.ID, Account: r.Account, Requester: r.Requester, Justification: r.Justification,
		Ticket: r.Ticket, TTLSeconds: int64(r.TTL / time.Second), Drill: r.Drill, CreatedAt: r.CreatedAt.UTC()}
}

// GrantEnd computes the end of a grant approved at t: the requested TTL,
// which validation already capped at the account's max_ttl.
func (r *Request) GrantEnd(t time.Time) time.Time { return t.Add(r.TTL) }

// Validate checks a new request against its account. It returns a message
// for the requester when something is wrong.
func Validate(a *policy.Account, justification, ticket string, ttl time.Duration) error {
	if justification == "" {
		return fmt.Errorf("a justification is required")
	}
	if a.RequireTicket && ticket == "" {
		return fmt.Errorf("account %s requires a ticket reference (--ticket)", a.Name)
	}
	if ttl <= 0 {
		return fmt.Errorf("the requested TTL must be positive")
	}
	if ttl < time.Second {
		return fmt.Errorf("the requested TTL must be at least one second")
	}
	// The log, the content approvers sign and the token record whole
	// seconds: a fraction would make the grant other than the one signed.
	if ttl%time.Second != 0 {
		return fmt.Errorf("the requested TTL %s is not a whole number of seconds", ttl)
	}
	if ttl > a.MaxTTL.D() {
		return fmt.Errorf("the requested TTL %s exceeds the account's max_ttl of %s", ttl, a.MaxTTL.D())
	}
	return nil
}
