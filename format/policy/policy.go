// Package policy holds the broker's access policy: groups of principals,
// accounts and their quorum rules. It is pure: loading, validation and
// quorum evaluation do no I/O beyond the bytes they are given.
package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"
)

// Defaults and bounds applied when a policy is loaded.
const (
	DefaultMaxIssuances  = 3
	DefaultDenyThreshold = 1
	// DefaultCeiling bounds every window and TTL unless the policy sets
	// max_duration.
	DefaultCeiling = 7 * 24 * time.Hour
	// CadenceCeiling bounds drill and attestation cadences.
	CadenceCeiling = 400 * 24 * time.Hour
	// DefaultReviewWithin is when a post-use review is due after its grant.
	DefaultReviewWithin = 72 * time.Hour
	// MinDuration is the shortest window or TTL accepted.
	MinDuration = time.Second
	// MaxIssuancesLimit bounds max_issuances.
	MaxIssuancesLimit = 1000
	// DefaultChangeWindow is how long a policy change may wait for the
	// policy admins' quorum unless policy_change_window says otherwise.
	DefaultChangeWindow = 72 * time.Hour
	// GCPMaxTokenLifetime is GCP workload identity federation's bound on a
	// token: its Security Token Service refuses a JWT whose exp is not less
	// than 48 hours after its iat.
	GCPMaxTokenLifetime = 48 * time.Hour
)

// Federation consumers an account's tokens may be marked for (federation:
// in the policy). Marking changes nothing the broker signs; it lets policy
// validation warn about settings the consumer is documented to refuse.
const (
	FederationAWS        = "aws"
	FederationGCP        = "gcp"
	FederationKubernetes = "kubernetes"
	FederationVault      = "vault"
)

// FederationConsumers are the known values of an account's federation:.
var FederationConsumers = []string{FederationAWS, FederationGCP, FederationKubernetes, FederationVault}

var (
	nameRE      = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
	principalRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$`)
	audienceRE  = regexp.MustCompile(`^[\x21-\x7E]{1,256}$`)
)

// ValidPrincipal reports whether s may name a principal. The identity layer
// refuses certificates whose principal fails this.
func ValidPrincipal(s string) bool { return principalRE.MatchString(s) }

// Policy is a loaded, validated policy. Treat it as immutable.
type Policy struct {
	// Groups maps a group name to its members, sorted.
	Groups map[string][]string `json:"groups"`
	// Auditors names the group that may read everything.
	Auditors string `json:"auditors,omitempty"`
	// RelyingParties names the group that may call CheckToken.
	RelyingParties string `json:"relying_parties,omitempty"`
	// Admins names the group that may reload the policy over the API and
	// propose changes to it.
	Admins string `json:"admins,omitempty"`
	// PolicyAdmins is the quorum rule that judges a change of this policy:
	// the policy after it is put in force only with signed statements by
	// enough of these admins, the proposer never counting. Empty, the
	// policy cannot be changed at all, only replaced by a trust reset.
	PolicyAdmins Rule `json:"policy_admins,omitempty"`
	// ChangeWindow is how long a proposed change may wait for its quorum,
	// and how old an admin's statement may be when the change is put in
	// force. Set (default DefaultChangeWindow) only with PolicyAdmins.
	ChangeWindow Duration `json:"policy_change_window,omitempty"`
	// MaxDuration is the ceiling for windows and TTLs.
	MaxDuration Duration   `json:"max_duration"`
	Accounts    []*Account `json:"accounts"`
	// Contacts are the principals' paging routes.
	Contacts map[string]Contact `json:"contacts,omitempty"`
	// Identity is how principals are read from client certificates
	// (identity.go). A policy file may leave it out; the broker then puts
	// its configured rule in, so every policy it runs and logs names one.
	Identity *Identity `json:"identity,omitempty"`

	byName map[string]*Account
	hash   string
	// warnings are what loading found legal but likely wrong; they are
	// not part of the policy (not hashed, not logged).
	warnings []Problem
}

// Warnings lists what loading found valid but likely not what was meant,
// such as an account marked for GCP whose tokens GCP would refuse.
func (p *Policy) Warnings() []Problem { return p.warnings }

// Account is one protected system or role.
type Account struct {
	Name             string   `json:"name"`
	Description      string   `json:"description,omitempty"`
	Owner            string   `json:"owner"`
	Requesters       []string `json:"requesters"`
	Audiences        []string `json:"audiences"`
	MaxTTL           Duration `json:"max_ttl"`
	ApprovalWindow   Duration `json:"approval_window"`
	ActivationWindow Duration `json:"activation_window"`
	MaxIssuances     int      `json:"max_issuances"`
	DenyThreshold    int      `json:"deny_threshold"`
	RequireTicket    bool     `json:"require_ticket"`
	Quorum           Rule     `json:"quorum"`

	// Reviewers is the group that reviews each grant after use (default
	// the owner group); the grant's requester and approvers never review it.
	Reviewers string `json:"reviewers"`
	// ReviewWithin is how long after a used grant ends its review is due.
	ReviewWithin Duration `json:"review_within"`
	// BlockOnOverdueReview stops a requester from opening new requests
	// while one of their post-use reviews is overdue.
	BlockOnOverdueReview bool `json:"block_on_overdue_review,omitempty"`
	// DrillAudience is the only audience drill tokens may name; it is
	// distinct from every real audience.
	DrillAudience string `json:"drill_audience,omitempty"`
	// DrillEvery is how often a successful drill is expected.
	DrillEvery Duration `json:"drill_every,omitempty"`
	// ReviewEvery is how often the owners must attest the account is still
	// needed and its approvers are right.
	ReviewEvery Duration `json:"review_every,omitempty"`
	// RequireAlertAck holds the first token of a grant until one of
	// AckSinks has accepted the grant's notification.
	RequireAlertAck bool     `json:"require_alert_ack,omitempty"`
	AckSinks        []string `json:"ack_sinks,omitempty"`
	// Solo, when set, allows time-locked solo access.
	Solo *Solo `json:"solo,omitempty"`
	// TokenKey names the account's own HSM token key (by label); its
	// tokens are then signed by it and published only in the account's JWKS.
	TokenKey string `json:"token_key,omitempty"`
	// RotateAfterUse rotates the account's token key after every grant
	// that issued a token ends.
	RotateAfterUse bool `json:"rotate_after_use,omitempty"`
	// SSH and X509, when set, let the account's grants get OpenSSH user
	// certificates and X.509 client certificates.
	SSH  *SSH  `json:"ssh,omitempty"`
	X509 *X509 `json:"x509,omitempty"`
	// Federation names the outside consumers (aws, gcp, kubernetes,
	// vault) that accept the account's tokens through discovery, so that
	// validation can warn about settings they refuse.
	Federation []string `json:"federation,omitempty"`
}

// Solo is time-locked solo access: a request no approver could be reached
// for becomes approved when its veto window passes without a denial. The
// window starts only once an ack sink has acknowledged the alert.
type Solo struct {
	Delay  Duration `json:"delay"`
	MaxTTL Duration `json:"max_ttl"`
}

// Contact is how to page a principal.
type Contact struct {
	Slack      string `json:"slack,omitempty"`
	WebhookTag string `json:"webhook_tag,omitempty"`
	Email      string `json:"email,omitempty"`
}

// Rule is a quorum rule: any one alternative satisfies it.
type Rule []Alternative

// Alternative is satisfied when every requirement is, with each approver
// filling at most one requirement.
type Alternative []Requirement

// Requirement asks for Approvals distinct approvers from Group.
type Requirement struct {
	Group     string `json:"group"`
	Approvals int    `json:"approvals"`
}

// Duration is a time.Duration that encodes as a Go duration string.
type Duration time.Duration

// D returns the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// MarshalJSON encodes the duration as "1h0m0s".
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON decodes "1h" or a number of nanoseconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		v, err := time.ParseDuration(s)
		if err != nil {
			return err
		}
		*d = Duration(v)
		return nil
	}
	var n int64
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("duration must be a string like \"1h\"")
	}
	*d = Duration(n)
	return nil
}

// Account returns the named account.
func (p *Policy) Account(name string) (*Account, bool) {
	a, ok := p.byName[name]
	return a, ok
}

// Hash is the SHA-256 of the policy's canonical JSON, hex. Two policies
// that grant the same access have the same hash whatever their YAML layout.
func (p *Policy) Hash() string { return p.hash }

// CanonicalJSON is the form that is hashed and logged.
func (p *Policy) CanonicalJSON() []byte {
	b, err := json.Marshal(p)
	if err != nil {
		panic(err) // plain data: cannot fail
	}
	return b
}

// IsMember reports whether principal belongs to group.
func (p *Policy) IsMember(group, principal string) bool {
	_, ok := slices.BinarySearch(p.Groups[group], principal)
	return ok
}

// IsAuditor reports whether principal may read everything.
func (p *Policy) IsAuditor(principal string) bool {
	return p.Auditors != "" && p.IsMember(p.Auditors, principal)
}

// IsAdmin reports whether principal may reload the policy over the API.
func (p *Policy) IsAdmin(principal string) bool {
	return p.Admins != "" && p.IsMember(p.Admins, principal)
}

// IsPolicyAdmin reports whether principal may sign statements about
// changes of this policy: a member of a group its policy_admins rule names.
func (p *Policy) IsPolicyAdmin(principal string) bool {
	return p.Eligible(p.PolicyAdmins, principal)
}

// MayPropose reports whether principal may propose a change of this
// policy: a policy admin or a member of the admins group.
func (p *Policy) MayPropose(principal string) bool {
	return p.IsPolicyAdmin(principal) || p.IsAdmin(principal)
}

// PolicyAdminList lists every principal who may sign statements about
// changes of this policy, sorted.
func (p *Policy) PolicyAdminList() []string { return p.eligibleApprovers(p.PolicyAdmins, "") }

// IsRelyingParty reports whether principal may check tokens.
func (p *Policy) IsRelyingParty(principal string) bool {
	return p.RelyingParties != "" && p.IsMember(p.RelyingParties, principal)
}

// Known reports whether the principal appears anywhere in the policy.
func (p *Policy) Known(principal string) bool {
	for _, members := range p.Groups {
		if _, ok := slices.BinarySearch(members, principal); ok {
			return true
		}
	}
	return false
}

// CanRequest reports whether principal may ask for access to a.
func (p *Policy) CanRequest(a *Account, principal string) bool {
	for _, g := range a.Requesters {
		if p.IsMember(g, principal) {
			return true
		}
	}
	return false
}

// IsReviewer reports whether principal may review a's grants after use
// (the grant's own requester and approvers are excluded by the caller).
func (p *Policy) IsReviewer(a *Account, principal string) bool {
	return p.IsMember(a.Reviewers, principal)
}

// Approvers lists every principal who may approve under rule, sorted.
func (p *Policy) Approvers(rule Rule) []string { return p.eligibleApprovers(rule, "") }

// IsOwner reports whether principal is in a's owner group.
func (p *Policy) IsOwner(a *Account, principal string) bool {
	return p.IsMember(a.Owner, principal)
}

// Eligible reports whether principal may review under rule: a member of a
// group the rule names. The requester is excluded by the caller, who knows
// who the requester is.
func (p *Policy) Eligible(rule Rule, principal string) bool {
	for _, alt := range rule {
		for _, req := range alt {
			if p.IsMember(req.Group, principal) {
				return true
			}
		}
	}
	return false
}

// EligibleGroups lists the groups of rule that principal belongs to.
func (p *Policy) EligibleGroups(rule Rule, principal string) []string {
	var out []string
	for _, alt := range rule {
		for _, req := range alt {
			if p.IsMember(req.Group, principal) && !slices.Contains(out, req.Group) {
				out = append(out, req.Group)
			}
		}
	}
	sort.Strings(out)
	return out
}

// String describes the rule in words, e.g. "1 of db-admins and 1 of
// security, or 2 of db-admins".
func (r Rule) String() string {
	alts := make([]string, 0, len(r))
	for _, alt := range r {
		reqs := make([]string, 0, len(alt))
		for _, req := range alt {
			reqs = append(reqs, fmt.Sprintf("%d of %s", req.Approvals, req.Group))
		}
		alts = append(alts, strings.Join(reqs, " and "))
	}
	s := strings.Join(alts, ", or ")
	if s == "" {
		return "(none)"
	}
	return s + " (the requester never counts; each approver counts once)"
}

// finish indexes and hashes a validated policy.
func (p *Policy) finish() {
	p.byName = map[string]*Account{}
	for _, a := range p.Accounts {
		p.byName[a.Name] = a
	}
	sum := sha256.Sum256(p.CanonicalJSON())
	p.hash = hex.EncodeToString(sum[:])
}

// AdminRule describes who must agree to change the policy, in words.
func (p *Policy) AdminRule() string {
	if len(p.PolicyAdmins) == 0 {
		return "none (the policy cannot be changed, only replaced by a trust reset)"
	}
	return fmt.Sprintf("%s within %s (the proposer never counts; each admin counts once)", p.PolicyAdmins.Short(), p.ChangeWindow.D())
}

// Short is the rule without the reminder every rule carries.
func (r Rule) Short() string {
	return strings.TrimSuffix(r.String(), " (the requester never counts; each approver counts once)")
}

// Equal reports whether two rules are the same structure: the same
// alternatives in the same order, each the same requirements. Rules are
// compared this way, never by their text, which a group name can imitate.
func (r Rule) Equal(o Rule) bool {
	return slices.EqualFunc(r, o, slices.Equal)
}
