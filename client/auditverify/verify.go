// Package auditverify checks an exported audit log offline, with public
// keys only: every entry's signature by the audit key in force at its
// index, the hash chain, the Merkle root against a signed checkpoint (and,
// given an older checkpoint, that the log only grew since), and then the
// whole lifecycle replayed from the entry bytes alone, so that every token
// is shown to follow a valid quorum of approvals the approvers themselves
// signed. It reads the export once, as a stream, and reports every
// violation it finds, not only the first.
package auditverify

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/crypto/ssh"
	"golang.org/x/mod/sumdb/note"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/statement"
)

// Line is one line of an export (`bgctl audit export`). Only Index, Entry
// and Signature are read; the rest is for people and never trusted.
type Line struct {
	Index     uint64 `json:"index"`
	Entry     []byte `json:"entry"`
	Signature []byte `json:"signature"`
	KeyID     string `json:"key_id"`
	LeafHash  string `json:"leaf_hash"`
	// Decoded fields, for people reading the export.
	Time    string          `json:"time,omitempty"`
	Type    string          `json:"type,omitempty"`
	Actor   string          `json:"actor,omitempty"`
	Request string          `json:"request,omitempty"`
	Account string          `json:"account,omitempty"`
	Payload json.RawMessage `json:"payload,omitempty"`
}

// ExportLine builds the export line of a stored entry.
func ExportLine(index uint64, entry, sig []byte, keyID string) Line {
	l := Line{Index: index, Entry: entry, Signature: sig, KeyID: keyID, LeafHash: hex.EncodeToString(audit.LeafHash(entry))}
	if e, err := audit.Parse(entry); err == nil {
		l.Time, l.Type, l.Actor, l.Request, l.Account, l.Payload = e.Time.Format("2006-01-02T15:04:05.000000000Z07:00"), string(e.Type), e.Actor, e.Request, e.Account, e.Payload
	}
	return l
}

// Options is what an auditor holds.
type Options struct {
	// Log is the export, JSON Lines from index 0. It is read once, in
	// order: memory stays bounded whatever its size.
	Log io.Reader
	// Checkpoint is a signed checkpoint note the log must match.
	Checkpoint []byte
	// CheckpointKey is the signed-note verifier key (name+hash+base64) of
	// the checkpoint key; its name is the log's origin.
	CheckpointKey string
	// AuditKeys verify entry signatures: the keys in force from the first
	// entry. Later keys are followed through the rotation statements.
	AuditKeys []*ecdsa.PublicKey
	// ClientCAs verify the certificates behind signed reviews.
	ClientCAs *x509.CertPool
	// CRLs, when given, list certificates that must not have signed
	// anything from their revocation on.
	CRLs []*x509.RevocationList
	// PreviousCheckpoint, when given, is an older checkpoint the log must
	// extend: a truncated or rolled-back log fails.
	PreviousCheckpoint []byte
	// Witnesses are the cosignature verifier keys of the witnesses the
	// auditor trusts; WitnessQuorum how many of them must have cosigned
	// the checkpoint (witness.go).
	Witnesses     []string
	WitnessQuorum int
	// MaxViolations bounds the violations listed (default 100); the rest
	// are counted.
	MaxViolations int
	// GenesisPolicy, when set, is the hash the log's first policy must
	// have: the auditor pins the genesis they accepted (an unsigned one
	// above all) instead of trusting whatever the log starts with.
	GenesisPolicy string
	// SSHCAKeys and X509CACerts are the pinned certificate authorities:
	// every logged certificate must be signed by one of them.
	SSHCAKeys   []ssh.PublicKey
	X509CACerts []*x509.Certificate
}

// Violation is one thing found wrong, at an entry index (-1 when it is
// about the inputs rather than an entry).
type Violation struct {
	Index  int64  `json:"index"`
	Reason string `json:"reason"`
}

func (v *Violation) Error() string {
	if v.Index < 0 {
		return v.Reason
	}
	return fmt.Sprintf("entry %d: %s", v.Index, v.Reason)
}

func violation(i int64, format string, args ...any) *Violation {
	return &Violation{Index: i, Reason: fmt.Sprintf(format, args...)}
}

// Violations is every violation found: the first MaxViolations of them,
// in index order, and how many there were in all. errors.As finds the
// first as a *Violation.
type Violations struct {
	List  []*Violation `json:"violations"`
	Count int          `json:"count"`
}

func (v *Violations) Error() string {
	if len(v.List) == 0 {
		return fmt.Sprintf("%d violations", v.Count)
	}
	if v.Count == 1 {
		return v.List[0].Error()
	}
	return fmt.Sprintf("%d violations, the first: %s", v.Count, v.List[0].Error())
}

// Unwrap returns the violations listed.
func (v *Violations) Unwrap() []error {
	out := make([]error, len(v.List))
	for i, x := range v.List {
		out[i] = x
	}
	return out
}

// PolicyChange is one policy_loaded entry as the summary reports it.
type PolicyChange struct {
	Index   uint64   `json:"index"`
	Hash    string   `json:"hash"`
	Changes []string `json:"changes"`
	// Weakens is set when the policy widened access or weakened
	// oversight (policy.Weakens, or a change of the identity settings).
	Weakens bool `json:"weakens,omitempty"`
	// Signers are the policy admins whose statements put it in force,
	// Proposal and Proposer the proposal they approved (none for a file
	// applied with its bundle).
	Signers  []string `json:"signers,omitempty"`
	Proposal string   `json:"proposal,omitempty"`
	Proposer string   `json:"proposer,omitempty"`
	// Genesis is signed or unsigned for the first policy of the log.
	Genesis string `json:"genesis,omitempty"`
	// Reset is set for a trust reset: a policy the operator put in force
	// without the admins' quorum.
	Reset *audit.PolicyReset `json:"reset,omitempty"`
}

// SoloGrant is a grant approved by the passing of its veto window, with
// no approver: its tokens had no quorum, and the summary says so.
type SoloGrant struct {
	Index      uint64    `json:"index"`
	Request    string    `json:"request"`
	Account    string    `json:"account"`
	Requester  string    `json:"requester"`
	ApprovedAt time.Time `json:"approved_at"`
	Tokens     int       `json:"tokens"`
}

// Summary is what a verified log contains.
type Summary struct {
	Origin         string         `json:"origin"`
	Entries        uint64         `json:"entries"`
	CheckpointSize uint64         `json:"checkpoint_size"`
	PreviousSize   uint64         `json:"previous_checkpoint_size,omitempty"`
	Requests       int            `json:"requests"`
	Grants         int            `json:"grants"`
	Tokens         int            `json:"tokens"`
	Reviews        int            `json:"reviews"`
	Policies       []PolicyChange `json:"policies"`
	// QuorumTokens are the tokens of grants approved by a quorum;
	// SoloTokens those of solo grants, listed in SoloGrants (at most
	// MaxListed, SoloGrantCount in all).
	QuorumTokens   int         `json:"quorum_tokens"`
	SoloTokens     int         `json:"solo_tokens"`
	SoloGrants     []SoloGrant `json:"solo_grants,omitempty"`
	SoloGrantCount int         `json:"solo_grant_count"`
	// WeakeningPolicies counts the policy changes that weakened the policy.
	WeakeningPolicies int `json:"weakening_policies"`
	// UnsignedGenesis is set when the first policy was accepted without its
	// admins' signatures; TrustResets counts policies put in force without
	// the admins' quorum. Both are reported, for people to judge.
	UnsignedGenesis bool `json:"unsigned_genesis,omitempty"`
	TrustResets     int  `json:"trust_resets,omitempty"`
	// PolicyProposals, PolicyApprovals and PolicyRefusals count proposals
	// logged, admins' statements that put policies in force, and policy
	// files refused for want of them.
	PolicyProposals int `json:"policy_proposals,omitempty"`
	PolicyApprovals int `json:"policy_approvals,omitempty"`
	PolicyRefusals  int `json:"policy_refusals,omitempty"`
	// AuditKeys and CheckpointKeys count the keys in the chains followed.
	AuditKeys      int `json:"audit_keys"`
	CheckpointKeys int `json:"checkpoint_keys"`
	// Types counts the entries by type.
	Types map[string]int `json:"types"`
	// SignatureChecks counts the signatures verified: entries, signed
	// statements, certificate chains and rotation statements.
	SignatureChecks int `json:"signature_checks"`
	// Restores are the store's restores from backups the log records.
	Restores []Restore `json:"restores,omitempty"`
	// Cosigners are the witnesses that cosigned the checkpoint.
	Cosigners []Cosigner `json:"cosigners,omitempty"`
	// SSHCertificates and X509Certificates count the certificates
	// replayed.
	SSHCertificates  int `json:"ssh_certificates"`
	X509Certificates int `json:"x509_certificates"`
	// PasskeyBindings counts the passkeys approvers bound; PasskeyApprovals
	// the approvals signed by one (WebAuthn assertions, user verified).
	PasskeyBindings  int `json:"passkey_bindings"`
	PasskeyApprovals int `json:"passkey_approvals"`
	// HardwareKeyApprovals counts the certificate-signed approvals whose
	// client said its key was on a PKCS#11 token (key_store pkcs11): what
	// the signer's client declared, which no signature proves.
	HardwareKeyApprovals int `json:"hardware_key_approvals"`
}

// MaxListed bounds the solo grants, policy changes and restores a summary
// lists; past it they are only counted.
const MaxListed = 1000

// Restore is a restore of the store from a backup. A forced one rolled
// the log back: LostAfter is the size of the newest checkpoint it knew of,
// entries past the restore point that the log no longer has.
type Restore struct {
	Index     uint64 `json:"index"`
	Forced    bool   `json:"forced"`
	Reason    string `json:"reason,omitempty"`
	Operator  string `json:"operator"`
	LostAfter uint64 `json:"newest_checkpoint_size,omitempty"`
}

// MaxLineBytes bounds one export line.
const MaxLineBytes = 1 << 20

// DefaultMaxViolations is how many violations are listed by default.
const DefaultMaxViolations = 100

// Verify checks the log. It returns the summary and, when anything is
// wrong, a *Violations listing every violation found.
func Verify(o Options) (*Summary, error) {
	fatal := func(format string, args ...any) (*Summary, error) {
		return nil, &Violations{List: []*Violation{violation(-1, format, args...)}, Count: 1}
	}
	if len(o.AuditKeys) == 0 {
		return fatal("no audit key given")
	}
	if o.ClientCAs == nil {
		return fatal("no client CA given")
	}
	vkey, err := note.NewVerifier(o.CheckpointKey)
	if err != nil {
		return fatal("the checkpoint key is not a signed-note verifier key: %v", err)
	}
	if o.Log == nil {
		return fatal("no export given")
	}
	v := &verifier{o: o, origin: vkey.Name(), keys: newKeyChain(o.AuditKeys, vkey), max: o.MaxViolations,
		tree: (&compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}).NewEmptyRange(0), types: map[string]int{}}
	if v.max <= 0 {
		v.max = DefaultMaxViolations
	}
	v.sigs = statement.NewCache(1 << 16)
	v.r = newReplay(v.origin, o.ClientCAs, o.CRLs, v.sigs, v.report)
	v.r.genesisPolicy = o.GenesisPolicy
	v.r.certs = newCertState(o)
	v.prevLeaf = audit.ZeroPrev
	if len(o.PreviousCheckpoint) > 0 {
		v.cps = append(v.cps, v.checkpointBody("previous checkpoint", o.PreviousCheckpoint))
	}
	v.cps = append(v.cps, v.checkpointBody("checkpoint", o.Checkpoint))
	v.stream(o.Log)
	sum := v.finish()
	if v.vs.Count > 0 {
		sort.SliceStable(v.vs.List, func(i, j int) bool { return v.vs.List[i].Index < v.vs.List[j].Index })
		return sum, &v.vs
	}
	return sum, nil
}

// verifier is one run over one export.
type verifier struct {
	o      Options
	origin string
	keys   *keyChain
	r      *replay
	sigs   *statement.Cache
	tree   *compact.Range
	// treeBroken is set once an export line could not be read: the tree
	// of the log can no longer be compared with the checkpoints.
	treeBroken bool
	cps        []*cpCheck
	// n is the number of export lines read; prevLeaf the leaf hash of the
	// last entry (nil when it could not be read).
	n         int64
	prevLeaf  []byte
	lastTime  time.Time
	vs        Violations
	max       int
	types     map[string]int
	sigChecks int
}

// cpCheck is a checkpoint the log must match at its size.
type cpCheck struct {
	which string
	raw   []byte
	body  *log.Checkpoint
	// reached is set once the tree had the checkpoint's size.
	reached bool
}

// report records a violation at entry i.
func (v *verifier) report(x *Violation) {
	v.vs.Count++
	if len(v.vs.List) < v.max {
		v.vs.List = append(v.vs.List, x)
	}
}

func (v *verifier) reportf(i int64, format string, args ...any) {
	v.report(violation(i, format, args...))
}

// checkpointBody reads a checkpoint's body before its signature can be
// checked: the key that signed it may be one the log rotates in, so the
// signature is checked at the end with the whole key chain, and the body
// gives the size at which the tree must have its root.
func (v *verifier) checkpointBody(which string, raw []byte) *cpCheck {
	c := &cpCheck{which: which, raw: raw}
	if len(raw) == 0 {
		v.reportf(-1, "%s: missing", which)
		return c
	}
	_, err := note.Open(raw, note.VerifierList())
	var unverified *note.UnverifiedNoteError
	if !errors.As(err, &unverified) {
		v.reportf(-1, "%s: not a signed note: %v", which, err)
		return c
	}
	var body log.Checkpoint
	rest, err := body.Unmarshal([]byte(unverified.Note.Text))
	if err != nil {
		v.reportf(-1, "%s: %v", which, err)
		return c
	}
	if body.Origin != v.origin {
		v.reportf(-1, "%s: it is for log %q, not %q", which, body.Origin, v.origin)
		return c
	}
	_ = rest
	if len(body.Hash) != 32 {
		v.reportf(-1, "%s: the root hash is not 32 bytes", which)
		return c
	}
	c.body = &body
	return c
}

// step checks the export line at position i, in order.
func (v *verifier) step(i int64, p *prepared) {
	v.n = i + 1
	if p.wireErr != nil {
		v.reportf(i, "export line %d is not a JSON object with base64 entry and signature: %v", i+1, p.wireErr)
		v.lost()
		return
	}
	if p.wire.Index != uint64(i) {
		v.reportf(i, "export line %d holds index %d: an entry is missing, duplicated or out of order", i+1, p.wire.Index)
	}
	if len(p.wire.Entry) == 0 {
		v.reportf(i, "export line %d has no entry", i+1)
		v.lost()
		return
	}
	v.appendLeaf(i, p.leaf)
	e := p.entry
	prev := v.prevLeaf
	v.prevLeaf = p.leaf
	if e == nil {
		v.reportf(i, "the entry is not the broker's encoding of an entry: %v", p.parseErr)
		return
	}
	v.types[string(e.Type)]++
	switch {
	case e.V != audit.Version:
		v.reportf(i, "unknown entry format version %d", e.V)
	case e.Index != uint64(i):
		v.reportf(i, "the entry says it is entry %d: an entry before it was removed, or entries were reordered", e.Index)
	case prev != nil && e.Prev != hex.EncodeToString(prev):
		v.reportf(i, "the entry does not link to the one before it (prev %s): the log was changed or reordered", e.Prev)
	case e.Time.Before(v.lastTime):
		v.reportf(i, "time goes backwards (%s after %s)", e.Time.Format(time.RFC3339Nano), v.lastTime.Format(time.RFC3339Nano))
	}
	if e.Time.After(v.lastTime) {
		v.lastTime = e.Time
	}
	if reason := v.keys.checkEntry(i, e, p.wire.Entry, p.wire.Signature, p.signer); reason != "" {
		v.reportf(i, "%s", reason)
	}
	if p.payloadErr != nil {
		if errors.Is(p.payloadErr, audit.ErrUnknownType) {
			v.reportf(i, "unknown entry type %q", e.Type)
		} else {
			v.reportf(i, "%v", p.payloadErr)
		}
		return
	}
	// An entry whose signature or link is wrong is reported, and still
	// replayed for what it says: what follows is judged on its own, so one
	// bad entry does not hide, or drown, the violations after it. (A key
	// rotation is trusted for its statement's own two signatures.)
	if x := v.keys.follow(i, e); x != nil {
		v.report(x)
		return
	}
	if x := v.r.entry(i, e); x != nil {
		v.report(x)
	}
}

// lost notes an export line that could not be read: what follows can be
// checked, but not against the checkpoints' roots.
func (v *verifier) lost() {
	v.treeBroken = true
	v.prevLeaf = nil
}

// appendLeaf adds entry i to the tree and compares roots at the
// checkpoints' sizes.
func (v *verifier) appendLeaf(i int64, leaf []byte) {
	if v.treeBroken {
		return
	}
	if err := v.tree.Append(leaf, nil); err != nil {
		v.reportf(i, "building the tree: %v", err)
		v.treeBroken = true
		return
	}
	size := uint64(i + 1)
	for _, c := range v.cps {
		if c.body == nil || c.body.Size != size {
			continue
		}
		c.reached = true
		root, err := v.tree.GetRootHash(nil)
		if err != nil {
			v.reportf(i, "building the tree: %v", err)
			continue
		}
		if !bytes.Equal(root, c.body.Hash) {
			v.reportf(i, "the tree of the first %d entries does not have the %s's root: an entry up to here was changed, removed, added or reordered", size, c.which)
		}
	}
}

// finish checks the checkpoints' signatures and sizes, and sums up.
func (v *verifier) finish() *Summary {
	if v.n == 0 {
		v.reportf(-1, "the export is empty")
	}
	var main, prev *log.Checkpoint
	for _, c := range v.cps {
		if c.body == nil {
			continue
		}
		cp, err := v.keys.openCheckpoint(c.raw, v.origin)
		if err != nil {
			v.reportf(-1, "%s: %v", c.which, err)
			continue
		}
		if c.which == "checkpoint" {
			main = cp
		} else {
			prev = cp
		}
		switch {
		case !c.reached && uint64(v.n) < cp.Size && c.which == "checkpoint":
			v.reportf(v.n, "the export ends at %d entries but the checkpoint covers %d: entries were removed or the log was truncated", v.n, cp.Size)
		case !c.reached && uint64(v.n) < cp.Size:
			v.reportf(v.n, "the export ends at %d entries but the %s covers %d", v.n, c.which, cp.Size)
		case !c.reached:
			v.reportf(-1, "the %s (size %d) could not be compared with the log: an export line before it could not be read", c.which, cp.Size)
		}
	}
	if main != nil && prev != nil && prev.Size > main.Size {
		v.reportf(int64(main.Size), "the checkpoint (size %d) is smaller than the previous checkpoint (size %d): the log was truncated or rolled back", main.Size, prev.Size)
	}
	sum := v.r.summary()
	sum.SSHCertificates, sum.X509Certificates = v.r.certs.ssh, v.r.certs.x509
	sum.Origin, sum.Entries = v.origin, uint64(v.n)
	if main != nil {
		sum.CheckpointSize = main.Size
	}
	if prev != nil {
		sum.PreviousSize = prev.Size
	}
	sum.AuditKeys, sum.CheckpointKeys = len(v.keys.audit), len(v.keys.checkpoint)
	sum.SignatureChecks = int(v.sigs.Checks()) + v.r.chainChecks + v.keys.checks + v.sigChecks
	sum.Types = v.types
	cos, x := witnessed(v.o, v.origin)
	if x != nil {
		v.report(x)
	}
	sum.Cosigners = cos
	sum.SignatureChecks += len(sum.Cosigners)
	return sum
}

// String describes the violations for people, one a line.
func (v *Violations) String() string {
	var b strings.Builder
	for _, x := range v.List {
		b.WriteString(x.Error() + "\n")
	}
	if v.Count > len(v.List) {
		fmt.Fprintf(&b, "... and %d more\n", v.Count-len(v.List))
	}
	return b.String()
}
