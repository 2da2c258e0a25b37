// Package event defines the out-of-band notifications the broker sends:
// their JSON form, their types, and how they are routed to sinks. Events
// are written to a durable outbox in the same transaction as the change
// they announce, and delivered at least once; receivers dedupe by ID.
package event

import (
	"encoding/json"
	"path"
	"slices"
	"time"
)

// Event types.
const (
	RequestCreated    = "request.created"
	RequestReviewed   = "request.reviewed"
	GrantApproved     = "grant.approved"
	RequestDenied     = "request.denied"
	RequestCancelled  = "request.cancelled"
	RequestExpired    = "request.expired"
	TokenIssued       = "token.issued"
	CertIssued        = "certificate.issued"
	GrantRevoked      = "grant.revoked"
	SoloRequested     = "solo.requested"
	SoloAcknowledged  = "solo.acknowledged"
	AlertAcknowledged = "alert.acknowledged"
	AlertDeadLettered = "alert.dead_lettered"
	// AlertDeadLetterAcked announces that an auditor dealt with a dead
	// letter.
	AlertDeadLetterAcked = "alert.dead_letter_acknowledged"
	DrillOverdue         = "drill.overdue"
	ReviewOpened         = "review.opened"
	ReviewClosed         = "review.closed"
	ReviewOverdue        = "review.overdue"
	AttestationDone      = "attestation.recorded"
	AttestationDue       = "attestation.overdue"
	CheckpointSigned     = "checkpoint.signed"
	WitnessSplitView     = "witness.split_view"
	KeyRotated           = "key.rotated"
	KeyRetired           = "key.retired"
	KeyDestroyed         = "key.destroyed"
	CertExpiring         = "cert.expiring"
	PolicyLoaded         = "policy.loaded"
	// PolicyWeakened replaces policy.loaded for a policy that widens
	// access or weakens oversight (policy.Weakens), so the SOC can page
	// on it alone.
	PolicyWeakened = "policy.weakened"
	// Policy changes under the policy admins' quorum: a proposal, a
	// review of one, its end without being put in force, a policy file
	// refused for want of signatures, and a trust reset (the last two go
	// to every sink).
	PolicyProposed       = "policy.proposed"
	PolicyReviewed       = "policy.reviewed"
	PolicyProposalClosed = "policy.proposal_closed"
	PolicyRefused        = "policy.refused"
	PolicyReset          = "policy.reset"
	StoreRestored        = "store.restored"
)

// Event is the JSON body every sink receives (the Slack sink renders it as
// text). Fields are added, never renamed.
type Event struct {
	// ID is stable across retries and sinks: receivers dedupe by it.
	ID      string    `json:"id"`
	Type    string    `json:"type"`
	Time    time.Time `json:"time"`
	Account string    `json:"account,omitempty"`
	Request string    `json:"request,omitempty"`
	// Principals involved: who asked, who acted, who approved.
	Requester string   `json:"requester,omitempty"`
	Actor     string   `json:"actor,omitempty"`
	Approvers []string `json:"approvers,omitempty"`
	Drill     bool     `json:"drill,omitempty"`
	Solo      bool     `json:"solo,omitempty"`
	// Summary is one line for people.
	Summary string `json:"summary"`
	// Notify lists the principals to page, with their contact routes from
	// the policy (Slack handle, webhook tag).
	Notify []Contact `json:"notify,omitempty"`
	// AuditIndex is the audit entry that recorded the change, when any.
	AuditIndex *uint64         `json:"audit_index,omitempty"`
	Details    json.RawMessage `json:"details,omitempty"`
}

// Contact is a principal to page and how.
type Contact struct {
	Principal  string `json:"principal"`
	Slack      string `json:"slack,omitempty"`
	WebhookTag string `json:"webhook_tag,omitempty"`
	Email      string `json:"email,omitempty"`
}

// Route selects the events a sink receives.
type Route struct {
	// Events are type patterns ("grant.*", "token.issued"); empty means all.
	Events []string
	// Accounts limits to these accounts; empty means all. Events without
	// an account (checkpoints) go to every sink whose events match.
	Accounts []string
}

// Matches reports whether the route takes an event of this type and account.
func (r Route) Matches(typ, account string) bool {
	if len(r.Events) > 0 && !slices.ContainsFunc(r.Events, func(p string) bool {
		ok, err := path.Match(p, typ)
		return err == nil && ok
	}) {
		return false
	}
	if account != "" && len(r.Accounts) > 0 && !slices.Contains(r.Accounts, account) {
		return false
	}
	return true
}
