package auditverify

import (
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/claims"
	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/format/principal"
	"github.com/bgbroker/breakglass/format/statement"
)

// replay re-runs the broker's lifecycle from the entries alone and refuses
// anything the broker must never have done.
type replay struct {
	origin string
	cas    *x509.CertPool
	// revoked maps a certificate (issuer and serial) to when its CRL says
	// it was revoked: it signs nothing valid from then on.
	revoked map[string]time.Time
	report  func(*Violation)

	policy     *policy.Policy
	policyHash string
	identity   audit.Identity
	policies   []PolicyChange
	weakening  int
	// genesisPolicy, when set, is the hash the first policy must have.
	genesisPolicy    string
	unsignedGenesis  bool
	resets           int
	refusals         int
	policyStatements int
	proposals        map[string]*openProposal
	proposalCount    int

	// requests are the requests still open, or ended with a post-use
	// review open; ended keeps the others small while their ids may still
	// be reused (compact.go).
	requests  map[string]*reqState
	ended     *idSet[ended]
	names     names
	nRequests int
	// jtis are the tokens not yet expired.
	jtis *idSet[struct{}]
	// postReviews maps an open post-use review to its request.
	postReviews map[string]string
	// deadLetters are the dead letters nobody acknowledged yet: open work,
	// forgotten at their acknowledgement. Kept whole, not as digests: a
	// yes here accepts an entry.
	deadLetters map[deadLetter]struct{}
	// forgetting is when ended requests, jtis and serials are forgotten;
	// now is the time of the entry replayed.
	forgetting forgetting
	now        time.Time
	// tokenKeys maps an account ("" for the broker) to its active token kid.
	tokenKeys    map[string]string
	grants       int
	tokens       int
	quorumTokens int
	soloTokens   int
	solo         []SoloGrant
	soloCount    int
	reviews      int
	restores     []Restore
	// sigs verifies statements and parses certificates, remembering both:
	// the workers have verified most statements already.
	sigs *statement.Cache
	// chains are the verified chains of the certificates seen;
	// chainChecks counts the chains built.
	chains      map[string][][]*x509.Certificate
	chainChecks int
	// certs are the SSH and X.509 certificates seen (certs.go).
	certs certState
	// passkeys are the bound passkeys by credential ID (passkeys.go).
	passkeys          map[string]*boundPasskey
	passkeyBindings   int
	passkeyApprovals  int
	hardwareApprovals int
}

type reviewState struct {
	decision string
	at       time.Time
	// key names the key that signed the review (keyOf); cert is the
	// certificate it was judged by (a passkey's binding certificate).
	key  string
	cert *x509.Certificate
}

type reqState struct {
	id, account, requester string
	digest                 string
	rule                   policy.Rule
	ttl                    time.Duration
	drill                  bool
	denyThreshold          int
	maxIssuances           int
	activationWindow       time.Duration
	createdAt              time.Time
	approvalDeadline       time.Time
	state                  string
	reviews                map[string]reviewState
	order                  []string
	approvedAt             time.Time
	grantEnd               time.Time
	activationDeadline     time.Time
	issued                 int
	solo                   bool
	// soloGrant is set when the request was approved as solo, by its veto
	// window: a solo request may also be approved by its quorum.
	soloGrant   bool
	soloAckedAt time.Time
	grantAcked  bool
	content     statement.Content
	// requesterKey names the key that signed the request (keyOf), and
	// requesterCert is its certificate.
	requesterKey  string
	requesterCert *x509.Certificate
	// identity is the identity rule in force when the request was
	// created: its reviews are judged by it.
	identity audit.Identity
	// soloListed is the grant's place in the summary's solo grants (-1
	// past MaxListed).
	soloListed int
	// openReviews counts its post-use reviews not yet closed; reviewed is
	// set once one was opened.
	openReviews int
	reviewed    bool
	// forgetAt is when its id may be forgotten once it has ended: its
	// statement, checked within MaxSkew of the entry that carried it and
	// dated within MaxSkew of that entry, can no longer be replayed.
	forgetAt time.Time
	// gone marks what request() makes of an ended request: its id,
	// account, requester and final state, nothing else.
	gone bool
}

func newReplay(origin string, cas *x509.CertPool, crls []*x509.RevocationList, sigs *statement.Cache, report func(*Violation)) *replay {
	r := &replay{origin: origin, cas: cas, sigs: sigs, report: report, chains: map[string][][]*x509.Certificate{}, revoked: map[string]time.Time{},
		requests: map[string]*reqState{}, ended: newIDSet[ended](), jtis: newIDSet[struct{}](), proposals: map[string]*openProposal{}, postReviews: map[string]string{},
		deadLetters: map[deadLetter]struct{}{},
		tokenKeys:   map[string]string{}, passkeys: map[string]*boundPasskey{}}
	for _, crl := range crls {
		for _, e := range crl.RevokedCertificateEntries {
			k := revocationKey(crl.RawIssuer, e.SerialNumber)
			if t, ok := r.revoked[k]; !ok || e.RevocationTime.Before(t) {
				r.revoked[k] = e.RevocationTime
			}
		}
	}
	return r
}

// revocationKey names a certificate by its issuer and serial, as CRLs do.
func revocationKey(issuer []byte, serial *big.Int) string {
	return string(issuer) + "\x00" + serial.String()
}

func (r *replay) summary() *Summary {
	return &Summary{Requests: r.nRequests, Grants: r.grants, Tokens: r.tokens, Reviews: r.reviews, Policies: r.policies, Restores: r.restores,
		QuorumTokens: r.quorumTokens, SoloTokens: r.soloTokens, SoloGrants: r.solo, SoloGrantCount: r.soloCount, WeakeningPolicies: r.weakening,
		UnsignedGenesis: r.unsignedGenesis, TrustResets: r.resets, PolicyRefusals: r.refusals, PolicyProposals: r.proposalCount, PolicyApprovals: r.policyStatements,
		PasskeyBindings: r.passkeyBindings, PasskeyApprovals: r.passkeyApprovals, HardwareKeyApprovals: r.hardwareApprovals}
}

// decode decodes a payload. The verifier has checked that it is the
// strict encoding of its type's payload (audit.DecodePayload) before the
// replay sees it, so encoding/json reads it the one way it can be read.
func decode(raw json.RawMessage, v any) error { return json.Unmarshal(raw, v) }

// entry replays one linked entry.
func (r *replay) entry(i int64, e *audit.Entry) *Violation {
	r.now = e.Time
	r.forgetting.until(e.Time)
	if e.Type != audit.TypePolicyLoaded && r.policy == nil && e.Type != audit.TypePermissionDenied {
		return violation(i, "%s before any policy was logged", e.Type)
	}
	switch e.Type {
	case audit.TypePolicyLoaded:
		return r.policyLoaded(i, e)
	case audit.TypePolicyProposed:
		return r.policyProposed(i, e)
	case audit.TypePolicyReviewed:
		return r.policyReviewed(i, e)
	case audit.TypePolicyProposalClosed:
		return r.policyProposalClosed(i, e)
	case audit.TypePolicyRefused:
		return r.policyRefused(i, e)
	case audit.TypeRequestCreated:
		return r.created(i, e)
	case audit.TypeRequestReviewed:
		return r.reviewed(i, e)
	case audit.TypeRequestApproved:
		return r.approved(i, e)
	case audit.TypeRequestDenied, audit.TypeRequestCancelled, audit.TypeRequestExpired, audit.TypeGrantRevoked:
		return r.final(i, e)
	case audit.TypeTokenIssued:
		return r.tokenIssued(i, e)
	case audit.TypeSSHCertIssued, audit.TypeX509CertIssued:
		return r.certificateIssued(i, e)
	case audit.TypePermissionDenied:
		var p audit.PermissionDenied
		if err := decode(e.Payload, &p); err != nil || p.Principal != e.Actor || p.Count < 1 {
			return violation(i, "malformed permission_denied entry")
		}
		return nil
	case audit.TypeAlertAcked, audit.TypeSoloAcked, audit.TypeAlertDead:
		return r.alert(i, e)
	case audit.TypeAlertDeadAcked:
		return r.deadLetterAcked(i, e)
	case audit.TypeReviewOpened:
		return r.reviewOpened(i, e)
	case audit.TypeReviewClosed:
		return r.reviewClosed(i, e)
	case audit.TypeAccountAttested:
		return r.attested(i, e)
	case audit.TypeKeyActivated, audit.TypeKeyRetired, audit.TypeKeyDestroyed:
		var c audit.KeyChange
		if err := decode(e.Payload, &c); err != nil || c.KID == "" {
			return violation(i, "malformed %s payload", e.Type)
		}
		if e.Type == audit.TypeKeyActivated && c.Purpose == "token" {
			r.tokenKeys[c.Account] = c.KID
		}
		return nil
	case audit.TypePasskeyBound:
		return r.passkeyBound(i, e)
	case audit.TypePasskeyRemoved:
		return r.passkeyRemoved(i, e)
	case audit.TypeStoreRestored:
		var p audit.StoreRestored
		if err := decode(e.Payload, &p); err != nil || p.Operator == "" || p.BackupSize > uint64(i) || (p.Forced && p.Reason == "") {
			return violation(i, "malformed store_restored entry")
		}
		r.restores = append(r.restores, Restore{Index: uint64(i), Forced: p.Forced, Reason: p.Reason, Operator: p.Operator, LostAfter: p.NewestSize})
		return nil
	}
	return violation(i, "unknown entry type %q", e.Type)
}

func (r *replay) policyLoaded(i int64, e *audit.Entry) *Violation {
	var pl audit.PolicyLoaded
	if err := decode(e.Payload, &pl); err != nil {
		return violation(i, "malformed policy_loaded payload: %v", err)
	}
	p, err := policy.FromCanonicalJSON(pl.Policy)
	if err != nil {
		return violation(i, "the logged policy is refused: %v", err)
	}
	if p.Hash() != pl.Hash {
		return violation(i, "the logged policy's hash is %s, not %s as the entry claims", p.Hash(), pl.Hash)
	}
	if pl.Previous != r.policyHash {
		return violation(i, "the entry says the previous policy was %q but it was %q", pl.Previous, r.policyHash)
	}
	if err := pl.Identity.Validate(); err != nil {
		return violation(i, "the identity rule is refused: %v", err)
	}
	if pl.Identity.Mode == policy.IdentityCN && pl.Identity.URIPrefix != "" {
		return violation(i, "the identity rule has a uri_prefix in cn mode")
	}
	// The rule is part of the policy: the entry must say the same.
	if p.Identity != nil && *p.Identity != pl.Identity {
		return violation(i, "the policy names identity rule %s but its entry says %s", p.Identity, pl.Identity)
	}
	if r.policy != nil && pl.Identity != r.identity {
		if v := r.checkRemap(i, e.Time, pl.Identity); v != nil {
			return v
		}
	}
	changes, weakens := describeChanges(r.policy, p, r.identity, pl.Identity)
	// A broker that records what changed must not hide a weakening.
	if pl.Changes != nil && weakens && !pl.Weakens {
		return violation(i, "the policy weakens the one before (%s) but the entry does not say so", strings.Join(weakening(changes), "; "))
	}
	ch := PolicyChange{Index: uint64(i), Hash: p.Hash(), Changes: changes, Weakens: weakens}
	if v := r.policyApprovals(i, e, pl, p, &ch); v != nil {
		return v
	}
	if weakens {
		r.weakening++
	}
	if len(r.policies) < MaxListed {
		r.policies = append(r.policies, ch)
	}
	r.policy, r.policyHash, r.identity = p, p.Hash(), pl.Identity
	// Open proposals changed the policy that was in force: they are stale,
	// and may only be closed.
	for _, op := range r.proposals {
		op.stale = true
	}
	return nil
}

// weakening keeps the lines that mark a weakening change.
func weakening(lines []string) []string {
	var out []string
	for _, l := range lines {
		if strings.HasPrefix(l, "WEAKENS ") {
			out = append(out, l)
		}
	}
	return out
}

// describeChanges lists what a new policy changes, and whether anything
// weakens it. The identity rule is compared as part of the policy: a
// policy logged before policies named it is judged by the rule its
// entry names.
func describeChanges(old, cur *policy.Policy, oldID, curID audit.Identity) ([]string, bool) {
	if cur.Identity == nil {
		cur = cur.WithIdentity(curID)
	}
	if old == nil {
		return policy.ChangeLines(nil, cur), false
	}
	if old.Identity == nil {
		old = old.WithIdentity(oldID)
	}
	return policy.ChangeLines(old, cur), policy.Weakens(policy.Diff(old, cur))
}

// checkRemap refuses an identity rule change that names someone with open
// work differently, as the broker does: for every request still pending
// or granted at t, its requester and reviewers, by the certificates their
// signatures were judged by, must be the same principals under cur.
func (r *replay) checkRemap(i int64, t time.Time, cur audit.Identity) *Violation {
	for _, q := range r.requests {
		if !q.openAt(t) {
			continue
		}
		check := func(role, who string, c *x509.Certificate) *Violation {
			if c == nil {
				return nil
			}
			got, err := principalOf(c, cur)
			if err != nil {
				got = "nobody (" + err.Error() + ")"
			}
			if got != who {
				return violation(i, "the new identity rule %s would name %s %s of open request %s %s: the broker refuses to re-map anyone with open work",
					cur, role, who, q.id, got)
			}
			return nil
		}
		if v := check("requester", q.requester, q.requesterCert); v != nil {
			return v
		}
		for _, who := range q.order {
			if v := check("reviewer", who, q.reviews[who].cert); v != nil {
				return v
			}
		}
	}
	return nil
}

// openAt reports whether q is pending or a live grant at t.
func (q *reqState) openAt(t time.Time) bool {
	switch q.state {
	case "PENDING":
		return t.Before(q.approvalDeadline)
	case "APPROVED":
		end := q.grantEnd
		if q.issued == 0 && q.activationDeadline.Before(end) {
			end = q.activationDeadline
		}
		return t.Before(end)
	}
	return false
}

func shortRule(r policy.Rule) string { return r.Short() }

func (r *replay) created(i int64, e *audit.Entry) *Violation {
	var p audit.RequestCreated
	if err := decode(e.Payload, &p); err != nil {
		return violation(i, "malformed request_created payload: %v", err)
	}
	if e.Request == "" || r.requests[e.Request] != nil || r.ended.has(e.Request) {
		return violation(i, "request id %q is empty or reused", e.Request)
	}
	acct, ok := r.policy.Account(e.Account)
	if !ok {
		return violation(i, "request for account %q, which the policy in force does not have", e.Account)
	}
	if !r.policy.CanRequest(acct, e.Actor) {
		return violation(i, "%s may not request account %s under the policy in force", e.Actor, e.Account)
	}
	// Bound the seconds before making a Duration of them: a count past what
	// a Duration holds wraps around to anything, a TTL within max_ttl too.
	if p.TTLSeconds <= 0 || p.TTLSeconds > int64(acct.MaxTTL.D()/time.Second) {
		return violation(i, "the requested TTL of %d seconds is outside (0, max_ttl %s]", p.TTLSeconds, acct.MaxTTL.D())
	}
	ttl := time.Duration(p.TTLSeconds) * time.Second
	if p.Solo && (acct.Solo == nil || ttl > acct.Solo.MaxTTL.D()) {
		return violation(i, "solo request on account %s, whose policy does not allow solo access or not for that long", e.Account)
	}
	if p.ActivationWindow != int64(acct.ActivationWindow.D()/time.Second) {
		return violation(i, "the request's activation window of %d seconds is not account %s's (%s)", p.ActivationWindow, e.Account, acct.ActivationWindow.D())
	}
	// Rules are compared as structures: their text, which a group name
	// could imitate, means nothing.
	if !p.Quorum.Equal(acct.Quorum) || p.DenyThreshold != acct.DenyThreshold || p.MaxIssuances != acct.MaxIssuances {
		return violation(i, "the request's quorum, deny threshold or issuance limit differ from account %s's in the policy in force", e.Account)
	}
	if d := e.Time.Sub(p.CreatedAt); d < 0 || d > statement.MaxSkew {
		return violation(i, "the request says it was created at %s, %s from its entry's time %s (at most %s before it)",
			p.CreatedAt.UTC().Format(time.RFC3339Nano), d, e.Time.UTC().Format(time.RFC3339Nano), statement.MaxSkew)
	}
	if want := p.CreatedAt.Add(acct.ApprovalWindow.D()); !p.ApprovalDeadline.Equal(want) {
		return violation(i, "the request's approval deadline %s is not its creation + account %s's approval window %s (%s)",
			p.ApprovalDeadline.UTC().Format(time.RFC3339), e.Account, acct.ApprovalWindow.D(), want.UTC().Format(time.RFC3339))
	}
	switch {
	case strings.TrimSpace(p.Justification) == "":
		return violation(i, "the request has no justification")
	case acct.RequireTicket && p.Ticket == "":
		return violation(i, "account %s requires a ticket and the request has none", e.Account)
	case p.Drill && acct.DrillAudience == "":
		return violation(i, "a drill of account %s, which has no drill audience", e.Account)
	}
	if p.PolicyHash != r.policyHash {
		return violation(i, "the request names policy %s but %s is in force", p.PolicyHash, r.policyHash)
	}
	v := statement.ContentVersion(p.ContentVersion)
	if !v.Known() || p.ContentVersion == int(statement.ContentV1) {
		// Version 1 is written as an absent field, never as 1: one
		// entry, one encoding.
		return violation(i, "request content_version %d is not one the broker writes (absent for version 1, or 2)", p.ContentVersion)
	}
	c := statement.Content{Version: v.Norm(), ID: e.Request, Account: e.Account, Requester: e.Actor, Justification: p.Justification, Ticket: p.Ticket,
		TTLSeconds: p.TTLSeconds, Drill: p.Drill, CreatedAt: p.CreatedAt}
	if c.Digest() != p.ContentDigest {
		return violation(i, "the content digest does not match the request's content (version %d text)", v.Norm())
	}
	defaultTTL := acct.MaxTTL.D()
	if p.Solo {
		defaultTTL = acct.Solo.MaxTTL.D()
	}
	cert, reason := r.checkRequestStatement(e, p, defaultTTL)
	if reason != "" {
		return violation(i, "request %s was not signed by its requester %s: %s", e.Request, e.Actor, reason)
	}
	r.nRequests++
	r.requests[e.Request] = &reqState{
		id: e.Request, account: e.Account, requester: e.Actor, digest: p.ContentDigest, rule: p.Quorum, ttl: ttl, drill: p.Drill,
		denyThreshold: p.DenyThreshold, maxIssuances: p.MaxIssuances, activationWindow: time.Duration(p.ActivationWindow) * time.Second,
		identity: r.identity, createdAt: p.CreatedAt, approvalDeadline: p.ApprovalDeadline, state: "PENDING", reviews: map[string]reviewState{}, solo: p.Solo, content: c,
		requesterKey: keyOf(cert), requesterCert: cert, forgetAt: e.Time.Add(2 * statement.MaxSkew),
	}
	return nil
}

// checkRequestStatement verifies the request statement a request_created
// entry carries the way the broker must have: it says exactly this
// request (its id, account, TTL, drill and solo flags, ticket and
// justification, in this log, within MaxSkew of the entry), and is signed
// by the key of a certificate that chained to the client CA then, was not
// revoked, and names the requester under the identity rule in force. It
// returns the certificate, or why the request was not signed.
func (r *replay) checkRequestStatement(e *audit.Entry, p audit.RequestCreated, defaultTTL time.Duration) (*x509.Certificate, string) {
	if len(p.Statement) == 0 {
		return nil, "the entry carries no request statement: every request is signed by its requester, so this one was made by someone else (the broker refuses unsigned requests)"
	}
	st, err := statement.ParseRequest(p.Statement)
	if err != nil {
		return nil, err.Error()
	}
	asked := statement.Asked{Origin: r.origin, ID: e.Request, Account: e.Account, Ticket: p.Ticket, Justification: p.Justification,
		TTLSeconds: p.TTLSeconds, DefaultTTLSeconds: int64(defaultTTL / time.Second), Drill: p.Drill, Solo: p.Solo}
	if err := statement.CheckRequest(st, asked, e.Time); err != nil {
		return nil, err.Error()
	}
	if p.Passkey != nil {
		// Made in the console: signed by the requester's bound passkey,
		// who is known by the key of the certificate that bound it.
		if len(p.Signature) > 0 || len(p.Certificate) > 0 {
			return nil, "a passkey-signed request carries no certificate signature"
		}
		bp, reason := r.checkPasskeyAssertion(e.Actor, r.identity, p.Statement, *p.Passkey, e.Time)
		if reason != "" {
			return nil, reason
		}
		return bp.cert, ""
	}
	cert, err := r.sigs.ParseCertificate(p.Certificate)
	if err != nil {
		return nil, "the certificate does not parse: " + err.Error()
	}
	if reason := r.certHeld(cert, e.Time); reason != "" {
		return nil, reason
	}
	who, err := principalOf(cert, r.identity)
	if err != nil {
		return nil, err.Error()
	}
	if who != e.Actor {
		return nil, fmt.Sprintf("the certificate belongs to %s, not %s", who, e.Actor)
	}
	if err := r.sigs.Verify(cert, p.Statement, p.Signature); err != nil {
		return nil, err.Error()
	}
	return cert, ""
}

func (r *replay) request(i int64, e *audit.Entry) (*reqState, *Violation) {
	q := r.requests[e.Request]
	if q == nil {
		end, ok := r.ended.get(e.Request)
		if !ok {
			return nil, violation(i, "%s for request %q, which was never created or had ended before", e.Type, e.Request)
		}
		// Every check an entry about it meets refuses it by its final
		// state, as the whole state would have.
		q = &reqState{id: e.Request, account: r.names.name(end.account), requester: r.names.name(end.requester), state: r.names.name(end.state), gone: true}
	}
	if e.Account != q.account {
		return nil, violation(i, "%s names account %s but request %s is for %s", e.Type, e.Account, q.id, q.account)
	}
	return q, nil
}

func (r *replay) reviewed(i int64, e *audit.Entry) *Violation {
	q, v := r.request(i, e)
	if v != nil {
		return v
	}
	var p audit.RequestReviewed
	if err := decode(e.Payload, &p); err != nil {
		return violation(i, "malformed request_reviewed payload: %v", err)
	}
	if q.state != "PENDING" || !e.Time.Before(q.approvalDeadline) {
		return violation(i, "review of request %s, which was not pending", q.id)
	}
	if e.Actor == q.requester {
		return violation(i, "%s reviewed their own request", e.Actor)
	}
	if _, dup := q.reviews[e.Actor]; dup {
		return violation(i, "%s reviewed request %s twice", e.Actor, q.id)
	}
	if p.Decision != statement.TypeApprove && p.Decision != statement.TypeDeny {
		return violation(i, "unknown decision %q", p.Decision)
	}
	if !r.policy.Eligible(q.rule, e.Actor) {
		return violation(i, "%s is not an eligible approver of request %s under the policy in force", e.Actor, q.id)
	}
	var (
		key  string
		cert *x509.Certificate
	)
	if p.Passkey != nil {
		var reason string
		if key, reason = r.checkPasskeyReview(q, e.Actor, p, e.Time); reason != "" {
			return violation(i, "the passkey-signed review of %s does not hold: %s", e.Actor, reason)
		}
		cert = r.passkeys[string(p.Passkey.Credential)].cert
	} else {
		if reason := r.checkSignedReview(q, e.Actor, p, e.Time); reason != "" {
			return violation(i, "the signed review of %s does not hold: %s", e.Actor, reason)
		}
		cert, _ = r.sigs.ParseCertificate(p.Certificate) // parsed and checked above
		key = keyOf(cert)
	}
	// One key is one reviewer, whatever name its review is logged under:
	// the broker refuses a second review by a key, and never counts the
	// requester's.
	if q.requesterKey != "" && key == q.requesterKey {
		return violation(i, "the review logged as %s is signed by the key that signed request %s as its requester %s: the requester never counts",
			e.Actor, q.id, q.requester)
	}
	for _, who := range q.order {
		if q.reviews[who].key == key {
			return violation(i, "the review logged as %s is signed by the key that already reviewed request %s as %s: each key counts once", e.Actor, q.id, who)
		}
	}
	if p.Decision == statement.TypeApprove {
		if p.Passkey != nil {
			r.passkeyApprovals++
		} else if p.KeyStore == audit.KeyStorePKCS11 {
			r.hardwareApprovals++
		}
	}
	q.reviews[e.Actor] = reviewState{decision: p.Decision, at: e.Time, key: key, cert: cert}
	q.order = append(q.order, e.Actor)
	r.reviews++
	return nil
}

// checkSignedReview verifies a review statement the way the broker must
// have: bound to this request, its content, comment and log, signed by the
// key of a certificate that chained to the client CA when the review was
// logged, not revoked, and naming the reviewer.
func (r *replay) checkSignedReview(q *reqState, reviewer string, p audit.RequestReviewed, at time.Time) string {
	st, err := statement.Parse(p.Statement)
	if err != nil {
		return err.Error()
	}
	if err := statement.Check(st, p.Decision, r.origin, q.id, q.digest, p.Comment, at); err != nil {
		return err.Error()
	}
	cert, err := r.sigs.ParseCertificate(p.Certificate)
	if err != nil {
		return "the certificate does not parse: " + err.Error()
	}
	if err := r.verifyChain(cert, at); err != nil {
		return "the certificate did not chain to the client CA at " + at.UTC().Format(time.RFC3339) + ": " + err.Error()
	}
	if t, ok := r.revoked[revocationKey(cert.RawIssuer, cert.SerialNumber)]; ok && !at.Before(t) {
		return fmt.Sprintf("the certificate was revoked at %s (CRL), before this was signed at %s", t.UTC().Format(time.RFC3339), at.UTC().Format(time.RFC3339))
	}
	// Judged by the identity rule in force when the request was made: a
	// later rule cannot re-map who signed it.
	who, err := principalOf(cert, q.identity)
	if err != nil {
		return err.Error()
	}
	if who != reviewer {
		return fmt.Sprintf("the certificate belongs to %s, not %s", who, reviewer)
	}
	if err := r.sigs.Verify(cert, p.Statement, p.Signature); err != nil {
		return err.Error()
	}
	return ""
}

// verifyChain checks that cert chained to the client CA at t. A chain
// found once stays valid at any time inside every link's validity period:
// the rest of what x509 checks does not depend on the time.
func (r *replay) verifyChain(cert *x509.Certificate, t time.Time) error {
	for _, ch := range r.chains[string(cert.Raw)] {
		ok := true
		for _, c := range ch {
			if t.Before(c.NotBefore) || t.After(c.NotAfter) {
				ok = false
				break
			}
		}
		if ok && len(ch) > 0 {
			return nil
		}
	}
	r.chainChecks++
	chains, err := cert.Verify(x509.VerifyOptions{Roots: r.cas, CurrentTime: t, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		return err
	}
	r.chains[string(cert.Raw)] = chains
	return nil
}

// principalOf names the holder of c by the rule the broker logged: the
// broker's own rule (format/principal), so the two cannot disagree.
func principalOf(c *x509.Certificate, id audit.Identity) (string, error) {
	return principal.Rule{Mode: id.Mode, URIPrefix: id.URIPrefix}.Of(c)
}

func (q *reqState) approvals() []string {
	var out []string
	for _, who := range q.order {
		if q.reviews[who].decision == statement.TypeApprove {
			out = append(out, who)
		}
	}
	return out
}

// signed lists the reviews of one decision with their keys, in log order.
func (q *reqState) signed(decision string) []policy.Approval {
	var out []policy.Approval
	for _, who := range q.order {
		if rv := q.reviews[who]; rv.decision == decision {
			out = append(out, policy.Approval{Principal: who, Key: rv.key})
		}
	}
	return out
}

// requesterOf is the requester as the quorum rules see it: name and key.
func (q *reqState) requesterOf() policy.Approval {
	return policy.Approval{Principal: q.requester, Key: q.requesterKey}
}

// evaluate judges the request's approvals under pol by name and by key.
func (q *reqState) evaluate(pol *policy.Policy) policy.Outcome {
	return policy.EvaluateSigned(pol, q.rule, q.requesterOf(), q.signed(statement.TypeApprove))
}

func (r *replay) approved(i int64, e *audit.Entry) *Violation {
	q, v := r.request(i, e)
	if v != nil {
		return v
	}
	var p audit.RequestApproved
	if err := decode(e.Payload, &p); err != nil {
		return violation(i, "malformed request_approved payload: %v", err)
	}
	if q.state != "PENDING" || !e.Time.Before(q.approvalDeadline) {
		return violation(i, "request %s approved while not pending", q.id)
	}
	if p.Solo {
		if v := r.soloRipe(i, e, q); v != nil {
			return v
		}
		// The acknowledgement time comes back from the store, whose clock
		// may be coarser than the entry's (PostgreSQL keeps microseconds).
		if d := p.AcknowledgedAt.Sub(q.soloAckedAt); len(p.Assignment) > 0 || p.Alternative != -1 || d > time.Microsecond || d < -time.Microsecond {
			return violation(i, "the solo approval of %s names approvers, an alternative or an acknowledgement time other than the logged one", q.id)
		}
	} else {
		o := q.evaluate(r.policy)
		if !o.Met {
			return violation(i, "request %s approved without its quorum (%s): approvals %v", q.id, shortRule(q.rule), q.approvals())
		}
		if reason := checkAssignment(r.policy, q, p); reason != "" {
			return violation(i, "the approval's assignment of approvers to requirements does not hold: %s", reason)
		}
		if !p.AcknowledgedAt.IsZero() {
			return violation(i, "a quorum approval with an acknowledgement time")
		}
	}
	if d := e.Time.Sub(p.ApprovedAt); d < 0 || d > statement.MaxSkew {
		return violation(i, "approval time %s is not within %s before its entry's time %s", p.ApprovedAt.UTC().Format(time.RFC3339Nano), statement.MaxSkew, e.Time.UTC().Format(time.RFC3339Nano))
	}
	if p.ApprovedAt.Before(q.createdAt) || !p.ApprovedAt.Before(q.approvalDeadline) {
		return violation(i, "approval time %s is outside the request's approval window [%s, %s)", p.ApprovedAt.UTC().Format(time.RFC3339),
			q.createdAt.UTC().Format(time.RFC3339), q.approvalDeadline.UTC().Format(time.RFC3339))
	}
	if !p.GrantExpiresAt.Equal(p.ApprovedAt.Add(q.ttl)) {
		return violation(i, "the grant ends at %s, not approval + TTL (%s)", p.GrantExpiresAt, p.ApprovedAt.Add(q.ttl))
	}
	if !p.ActivationDeadline.Equal(p.ApprovedAt.Add(q.activationWindow)) {
		return violation(i, "the activation deadline is not approval + activation window")
	}
	q.state, q.approvedAt, q.grantEnd, q.activationDeadline = "APPROVED", p.ApprovedAt, p.GrantExpiresAt, p.ActivationDeadline
	r.grants++
	if p.Solo {
		q.soloGrant = true
		r.soloCount++
		q.soloListed = -1
		if len(r.solo) < MaxListed {
			q.soloListed = len(r.solo)
			r.solo = append(r.solo, SoloGrant{Index: uint64(i), Request: q.id, Account: q.account, Requester: q.requester, ApprovedAt: p.ApprovedAt})
		}
	}
	return nil
}

func (r *replay) final(i int64, e *audit.Entry) *Violation {
	q, v := r.request(i, e)
	if v != nil {
		return v
	}
	var p audit.RequestFinal
	if err := decode(e.Payload, &p); err != nil {
		return violation(i, "malformed %s payload: %v", e.Type, err)
	}
	if e.Type != audit.TypeRequestExpired {
		// Taking access away happens when it is logged.
		if d := e.Time.Sub(p.At); d < 0 || d > statement.MaxSkew {
			return violation(i, "%s at %s, not within %s before its entry's time %s", e.Type, p.At.UTC().Format(time.RFC3339Nano), statement.MaxSkew, e.Time.UTC().Format(time.RFC3339Nano))
		}
	}
	switch e.Type {
	case audit.TypeRequestCancelled:
		if q.state != "PENDING" || e.Actor != q.requester {
			return violation(i, "request %s cancelled by %s while %s", q.id, e.Actor, q.state)
		}
		q.state = "CANCELLED"
	case audit.TypeRequestDenied:
		var deniers []string
		for _, who := range q.order {
			if q.reviews[who].decision == statement.TypeDeny {
				deniers = append(deniers, who)
			}
		}
		need := q.denyThreshold
		if q.solo {
			need = 1 // one eligible denial vetoes a solo request
		}
		if q.state != "PENDING" || policy.DenialsSigned(r.policy, q.rule, q.requesterOf(), q.signed(statement.TypeDeny)) < need {
			return violation(i, "request %s denied without reaching its deny threshold", q.id)
		}
		if !slices.Equal(p.Denials, deniers) {
			return violation(i, "the denial names %v, but %v denied request %s", p.Denials, deniers, q.id)
		}
		q.state = "DENIED"
	case audit.TypeGrantRevoked:
		if q.state != "APPROVED" {
			return violation(i, "grant %s revoked while %s", q.id, q.state)
		}
		q.state = "REVOKED"
	case audit.TypeRequestExpired:
		if q.state != "PENDING" && q.state != "APPROVED" {
			return violation(i, "request %s expired while %s", q.id, q.state)
		}
		if e.Time.Before(p.At) {
			return violation(i, "request %s expired before its deadline", q.id)
		}
		// The deadline it expired at: the approval window of a pending
		// request; the end of a grant, or of its activation window when
		// nothing was issued. Deadlines come back from the store, whose
		// clock may keep only microseconds.
		want := q.approvalDeadline
		if q.state == "APPROVED" {
			want = q.grantEnd
			if q.issued == 0 && q.activationDeadline.Before(want) {
				want = q.activationDeadline
			}
		}
		if !p.At.Equal(want) && !p.At.Equal(want.Truncate(time.Microsecond)) {
			return violation(i, "request %s expired at %s, but its deadline was %s", q.id, p.At.UTC().Format(time.RFC3339Nano), want.UTC().Format(time.RFC3339Nano))
		}
		q.state = "EXPIRED"
	}
	r.endIfDone(q)
	return nil
}

// endIfDone keeps only what ended holds of a request that is final and
// owes no post-use review (none was due, or every one opened was closed):
// nothing later in the log may use more. Once its statement can no longer
// be replayed even that is forgotten, and a later entry about it is
// refused as about a request not open.
func (r *replay) endIfDone(q *reqState) {
	used := q.issued > 0 || q.soloGrant
	switch {
	case q.gone, q.openReviews > 0, q.state == "PENDING", q.state == "APPROVED", used && !q.reviewed:
		return
	}
	delete(r.requests, q.id)
	// Forgotten only once the log's time is past forgetAt, as the
	// forgetting heap does: at forgetAt itself, which an entry ending the
	// request may share with the next, its statement is still in time.
	if q.forgetAt.Before(r.now) {
		return
	}
	r.ended.put(q.id, ended{state: r.names.id(q.state), account: r.names.id(q.account), requester: r.names.id(q.requester)})
	id := q.id
	r.forgetting.after(q.forgetAt, func() { r.ended.forget(id) })
}

func (r *replay) tokenIssued(i int64, e *audit.Entry) *Violation {
	q, v := r.request(i, e)
	if v != nil {
		return v
	}
	var p audit.TokenIssued
	if err := decode(e.Payload, &p); err != nil {
		return violation(i, "malformed token_issued payload: %v", err)
	}
	if e.Actor != q.requester {
		return violation(i, "token issued to %s, not the requester %s", e.Actor, q.requester)
	}
	if q.state != "APPROVED" {
		return violation(i, "token issued for request %s, which is %s, not an approved grant", q.id, q.state)
	}
	if !e.Time.Before(q.grantEnd) {
		return violation(i, "token issued after its grant ended at %s", q.grantEnd.Format(time.RFC3339))
	}
	if q.issued == 0 && !e.Time.Before(q.activationDeadline) && q.activationDeadline.Before(q.grantEnd) {
		return violation(i, "first token issued after the activation deadline %s", q.activationDeadline.Format(time.RFC3339))
	}
	if q.issued >= q.maxIssuances {
		return violation(i, "token %d of a grant allowed %d", q.issued+1, q.maxIssuances)
	}
	if q.soloGrant {
		if a, ok := r.policy.Account(q.account); !ok || a.Solo == nil {
			return violation(i, "token for a solo grant on %s, whose policy in force does not allow solo access", q.account)
		}
	} else if o := q.evaluate(r.policy); !o.Met {
		return violation(i, "token issued without quorum under the policy in force: approvals %v do not satisfy %s", q.approvals(), shortRule(q.rule))
	}
	slot := ""
	if _, own := r.tokenKeys[q.account]; own {
		slot = q.account
	}
	if want := r.tokenKeys[slot]; p.KID != want {
		return violation(i, "the token was signed by key %s, not the active token key %q of %s", p.KID, want, strings.TrimSpace("account "+slot))
	}
	if a, ok := r.policy.Account(q.account); ok && a.RequireAlertAck && q.issued == 0 && !q.grantAcked {
		return violation(i, "first token of a grant on %s before an ack sink acknowledged the grant alert (require_alert_ack)", q.account)
	}
	c, err := claims.Parse(p.Claims)
	if err != nil {
		return violation(i, "the token's claims are not what relying parties would read: %v", err)
	}
	aud := []string(c.Audience)
	exp := c.Expiry.Time()
	acct, ok := r.policy.Account(q.account)
	switch {
	case c.Subject != q.requester || c.ClientID != q.requester:
		return violation(i, "the token's subject is %s, not the requester %s", c.Subject, q.requester)
	case c.Request != q.id || c.Account != q.account || c.Drill != q.drill:
		return violation(i, "the token's bg_request, bg_account or bg_drill do not match its request")
	case c.ID == "" || c.ID != p.JTI || r.jtis.has(c.ID):
		return violation(i, "the token's jti is missing, differs from the entry's or was issued before")
	case len(aud) != 1 || aud[0] != p.Audience:
		return violation(i, "the token's audience %v is not the entry's %q", aud, p.Audience)
	case !ok:
		return violation(i, "account %s is not in the policy in force", q.account)
	case q.drill && p.Audience != acct.DrillAudience:
		return violation(i, "drill token for audience %q, not the drill audience %q", p.Audience, acct.DrillAudience)
	case !q.drill && !slices.Contains(acct.Audiences, p.Audience):
		return violation(i, "audience %q is not one of account %s's", p.Audience, q.account)
	case exp.After(q.grantEnd):
		return violation(i, "the token expires at %s, after its grant ends at %s", exp.UTC().Format(time.RFC3339), q.grantEnd.UTC().Format(time.RFC3339))
	case !exp.Equal(p.ExpiresAt):
		return violation(i, "the token's exp differs from the entry's expires_at")
	case c.IssuedAt.Time().Before(q.approvedAt.Truncate(time.Second)):
		return violation(i, "the token was issued at %s, before its grant was approved", c.IssuedAt.Time().UTC().Format(time.RFC3339))
	case !exp.Equal(q.grantEnd.Truncate(time.Second)):
		return violation(i, "the token expires at %s, not when its grant ends (%s)", exp.UTC().Format(time.RFC3339), q.grantEnd.UTC().Format(time.RFC3339))
	case !c.NotBefore.Time().Equal(c.IssuedAt.Time()) || !c.IssuedAt.Time().Equal(p.IssuedAt):
		return violation(i, "the token's iat, nbf and the entry's issued_at differ")
	case e.Time.Before(p.IssuedAt) || e.Time.Sub(p.IssuedAt) > statement.MaxSkew:
		return violation(i, "the token was issued at %s, not within %s before its entry's time %s", p.IssuedAt.UTC().Format(time.RFC3339), statement.MaxSkew, e.Time.UTC().Format(time.RFC3339Nano))
	case p.Issuance != q.issued+1:
		return violation(i, "the entry numbers the token %d, but it is issuance %d of its grant", p.Issuance, q.issued+1)
	case !validIssuer(c.Issuer, q.account, slot != ""):
		return violation(i, "the token's issuer %q is not an https issuer (under /accounts/%s for the account's own key)", c.Issuer, q.account)
	case !validSHA256(p.TokenSHA256):
		return violation(i, "the token hash is not a SHA-256")
	}
	for _, a := range c.Approvers {
		if !slices.Contains(q.approvals(), a) {
			return violation(i, "the token names %s as an approver, who did not approve request %s", a, q.id)
		}
	}
	r.jtis.put(c.ID, struct{}{})
	jti := c.ID
	r.forgetting.after(exp.Add(statement.MaxSkew), func() { r.jtis.forget(jti) })
	q.issued++
	r.tokens++
	if q.soloGrant {
		r.soloTokens++
		if q.soloListed >= 0 {
			r.solo[q.soloListed].Tokens++
		}
	} else {
		r.quorumTokens++
	}
	return nil
}

// validIssuer reports whether iss is a broker issuer: an https URL (http
// on loopback, as dev mode runs), under /accounts/ACCOUNT exactly when the
// account signs with its own key.
func validIssuer(iss, account string, own bool) bool {
	u, err := url.Parse(iss)
	if err != nil || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil || strings.HasSuffix(iss, "/") {
		return false
	}
	if u.Scheme != "https" && (u.Scheme != "http" || !loopback(u.Hostname())) {
		return false
	}
	return strings.HasSuffix(u.Path, "/accounts/"+account) == own
}

func loopback(host string) bool {
	ip, err := netip.ParseAddr(host)
	return host == "localhost" || (err == nil && ip.IsLoopback())
}

func validSHA256(s string) bool {
	b, err := hex.DecodeString(s)
	return err == nil && len(b) == 32 && s == hex.EncodeToString(b)
}

// checkAssignment checks the approval's record of which approver filled
// which requirement: the alternative it names is the rule's, every
// approver in it approved this request, belongs to the group it fills,
// and counts once, and each requirement has exactly its approvals.
func checkAssignment(pol *policy.Policy, q *reqState, p audit.RequestApproved) string {
	if p.Alternative < 0 || p.Alternative >= len(q.rule) {
		return fmt.Sprintf("alternative %d is not one of the rule's %d", p.Alternative, len(q.rule))
	}
	counted := q.evaluate(pol).Counted
	filled := map[string]int{}
	for who, g := range p.Assignment {
		switch {
		case !slices.Contains(counted, who):
			return fmt.Sprintf("%s is assigned to %s but has no approval that counts", who, g)
		case !pol.IsMember(g, who):
			return fmt.Sprintf("%s is assigned to %s, a group they are not in", who, g)
		}
		filled[g]++
	}
	alt := q.rule[p.Alternative]
	for _, req := range alt {
		if filled[req.Group] != req.Approvals {
			return fmt.Sprintf("requirement %d of %s has %d approvers assigned", req.Approvals, req.Group, filled[req.Group])
		}
		delete(filled, req.Group)
	}
	for g := range filled {
		return fmt.Sprintf("approvers are assigned to %s, which alternative %d does not name", g, p.Alternative)
	}
	return ""
}

// soloRipe checks a solo approval: the policy in force allows solo access,
// an ack sink acknowledged the alert, the veto window passed between the
// logged acknowledgement and this entry, and no eligible approver denied.
func (r *replay) soloRipe(i int64, e *audit.Entry, q *reqState) *Violation {
	a, ok := r.policy.Account(q.account)
	switch {
	case !q.solo:
		return violation(i, "request %s approved as solo but it was not a solo request", q.id)
	case !ok || a.Solo == nil:
		return violation(i, "solo approval on %s, whose policy in force does not allow solo access", q.account)
	case q.soloAckedAt.IsZero():
		return violation(i, "solo approval of %s without a logged acknowledgement of its alert", q.id)
	case e.Time.Before(q.soloAckedAt.Add(a.Solo.Delay.D())):
		return violation(i, "solo approval of %s at %s, before its veto window (%s after the acknowledgement at %s) ended",
			q.id, e.Time.UTC().Format(time.RFC3339), a.Solo.Delay.D(), q.soloAckedAt.UTC().Format(time.RFC3339))
	}
	for _, who := range q.order {
		if q.reviews[who].decision == statement.TypeDeny && r.policy.Eligible(q.rule, who) {
			return violation(i, "solo approval of %s despite a denial by %s", q.id, who)
		}
	}
	return nil
}

func (r *replay) alert(i int64, e *audit.Entry) *Violation {
	var p audit.AlertDelivery
	if err := decode(e.Payload, &p); err != nil || p.EventID == "" || p.Sink == "" {
		return violation(i, "malformed %s payload", e.Type)
	}
	if e.Type == audit.TypeAlertDead {
		// Logged again for the same row (two dispatchers finishing one
		// lease) it is still one dead letter to acknowledge.
		r.deadLetters[deadLetter{p.EventID, p.Sink, p.EventType, e.Request, e.Account}] = struct{}{}
	}
	if e.Request == "" {
		return nil
	}
	if e.Type != audit.TypeSoloAcked && r.requests[e.Request] == nil && !r.ended.has(e.Request) {
		// A delivery report may come long after its request ended and was
		// forgotten; it grants nothing and changes no request.
		return nil
	}
	q, v := r.request(i, e)
	if v != nil {
		return v
	}
	switch e.Type {
	case audit.TypeSoloAcked:
		if !q.solo || q.state != "PENDING" {
			return violation(i, "solo acknowledgement for %s, which is not a pending solo request", q.id)
		}
		if q.soloAckedAt.IsZero() {
			q.soloAckedAt = e.Time
		}
	case audit.TypeAlertAcked:
		q.grantAcked = true
	}
	return nil
}

// deadLetter names a dead letter by everything its acknowledgement must
// repeat.
type deadLetter struct{ eventID, sink, eventType, request, account string }

// deadLetterAcked checks an acknowledgement of a dead letter: by an
// auditor of the policy in force, with notes, of a dead letter the log
// holds and nothing acknowledged before.
func (r *replay) deadLetterAcked(i int64, e *audit.Entry) *Violation {
	var p audit.DeadLetterAcknowledged
	if err := decode(e.Payload, &p); err != nil || p.EventID == "" || p.Sink == "" || strings.TrimSpace(p.Notes) == "" || len(p.Notes) > audit.MaxDeadLetterNotes {
		return violation(i, "malformed %s payload", e.Type)
	}
	if !r.policy.IsAuditor(e.Actor) {
		return violation(i, "%s acknowledged the dead letter %s for sink %s without being an auditor", e.Actor, p.EventID, p.Sink)
	}
	k := deadLetter{p.EventID, p.Sink, p.EventType, e.Request, e.Account}
	if _, open := r.deadLetters[k]; !open {
		return violation(i, "acknowledgement of a dead letter the log does not hold open: event %s (%s) for sink %s, request %q, account %q was never dead-lettered, or was acknowledged already",
			p.EventID, p.EventType, p.Sink, e.Request, e.Account)
	}
	delete(r.deadLetters, k)
	return nil
}

func (r *replay) reviewOpened(i int64, e *audit.Entry) *Violation {
	q, v := r.request(i, e)
	if v != nil {
		return v
	}
	var p audit.PostReviewOpened
	if err := decode(e.Payload, &p); err != nil || p.ID == "" || r.postReviews[p.ID] != "" {
		return violation(i, "malformed or reused post_review_opened")
	}
	if q.gone {
		return violation(i, "post-use review opened for %s after it ended (%s) with no review left to open", q.id, q.state)
	}
	if q.issued == 0 && !(q.soloGrant && q.state == "APPROVED") {
		return violation(i, "post-use review opened for %s, which issued no token", q.id)
	}
	// The broker opens one review per grant. A closing statement names
	// the request, not the review, so a second review (under a fresh id,
	// or a closed one's, which is no longer remembered) would count one
	// reviewer's closing twice.
	if q.reviewed {
		return violation(i, "post-use review %s opened for %s, which already had its post-use review", p.ID, q.id)
	}
	r.postReviews[p.ID] = q.id
	q.openReviews++
	q.reviewed = true
	return nil
}

func (r *replay) reviewClosed(i int64, e *audit.Entry) *Violation {
	q, v := r.request(i, e)
	if v != nil {
		return v
	}
	var p audit.PostReviewClosed
	if err := decode(e.Payload, &p); err != nil {
		return violation(i, "malformed post_review_closed payload: %v", err)
	}
	if r.postReviews[p.ID] != q.id {
		return violation(i, "post-use review %s is not open for request %s", p.ID, q.id)
	}
	a, ok := r.policy.Account(q.account)
	if !ok || !r.policy.IsReviewer(a, e.Actor) || e.Actor == q.requester || slices.Contains(q.approvals(), e.Actor) {
		return violation(i, "%s may not close the post-use review of %s (not a reviewer, or its requester or approver)", e.Actor, q.id)
	}
	if reason := r.checkStatement(e.Actor, statement.TypeReviewClose, q.id, q.digest, p.Notes, p.Signed, e.Time); reason != "" {
		return violation(i, "the signed closing of post-use review %s does not hold: %s", p.ID, reason)
	}
	delete(r.postReviews, p.ID)
	q.openReviews--
	r.endIfDone(q)
	return nil
}

func (r *replay) attested(i int64, e *audit.Entry) *Violation {
	var p audit.AccountAttested
	if err := decode(e.Payload, &p); err != nil {
		return violation(i, "malformed account_attested payload: %v", err)
	}
	a, ok := r.policy.Account(e.Account)
	if !ok || !r.policy.IsOwner(a, e.Actor) {
		return violation(i, "%s attested account %s without being one of its owners", e.Actor, e.Account)
	}
	if p.PolicyHash != r.policyHash {
		return violation(i, "the attestation names policy %s but %s is in force", p.PolicyHash, r.policyHash)
	}
	if reason := r.checkStatement(e.Actor, statement.TypeAttest, p.ID, statement.AccountDigest(e.Account, p.PolicyHash), p.Notes, p.Signed, e.Time); reason != "" {
		return violation(i, "the signed attestation does not hold: %s", reason)
	}
	return nil
}

// checkStatement verifies a signed statement of principal like the broker
// must have.
func (r *replay) checkStatement(principal, typ, subject, content, notes string, s audit.Signed, at time.Time) string {
	return r.checkSignedReview(&reqState{id: subject, digest: content, identity: r.identity}, principal,
		audit.RequestReviewed{Decision: typ, Comment: notes, Statement: s.Statement, Signature: s.Signature, Certificate: s.Certificate}, at)
}
