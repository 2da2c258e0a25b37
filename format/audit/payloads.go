package audit

import (
	"encoding/json"
	"time"

	"github.com/bgbroker/breakglass/format/passkey"
	"github.com/bgbroker/breakglass/format/policy"
)

// The payload of each entry type. Field names are part of the log format:
// add fields, never rename or remove them. The offline verifier replays the
// lifecycle from these payloads alone.

// PolicyLoaded records the policy in force from this entry on.
type PolicyLoaded struct {
	// Hash is the SHA-256 of Policy's canonical JSON, hex.
	Hash string `json:"hash"`
	// Previous is the hash of the policy logged before, empty for the first.
	Previous string `json:"previous,omitempty"`
	// Source says where it was read from (a file name).
	Source string          `json:"source"`
	Policy json.RawMessage `json:"policy"`
	// Identity says how principals are read from client certificates, so
	// a verifier can derive the reviewer of a signed statement.
	Identity Identity `json:"identity"`
	// Changes lists, for people, what this policy changes from the one
	// before (policy.ChangeLines); Weakens is set when any change widens
	// access or weakens oversight. A verifier recomputes both from the two
	// logged policies and refuses an entry that hides a weakening.
	Changes []string `json:"changes,omitempty"`
	Weakens bool     `json:"weakens,omitempty"`
	// Approvals are the policy admins' signed policy statements
	// (format/statement) that put this policy in force: admins of the
	// policy logged before it, or of this policy itself for a signed
	// genesis. Proposal, Proposer and ProposerKey name the proposal they
	// approved (empty for a file applied with its bundle of signatures);
	// the proposer's statements never count.
	Approvals   []Signed `json:"approvals,omitempty"`
	Proposal    string   `json:"proposal,omitempty"`
	Proposer    string   `json:"proposer,omitempty"`
	ProposerKey string   `json:"proposer_key,omitempty"`
	// Genesis marks the first policy of a log: GenesisSigned when its own
	// admins signed it, GenesisUnsigned when the operator accepted it
	// unsigned (breakglassd serve --accept-unsigned-genesis).
	Genesis string `json:"genesis,omitempty"`
	// Reset, when set, marks a trust reset: a policy put in force by the
	// operator without the admins' quorum (breakglassd policy reset).
	Reset *PolicyReset `json:"reset,omitempty"`
}

// Genesis kinds.
const (
	GenesisSigned   = "signed"
	GenesisUnsigned = "unsigned"
)

// PolicyReset is the operator's account of a trust reset.
type PolicyReset struct {
	Operator string `json:"operator"`
	Reason   string `json:"reason"`
}

// PolicyProposed records a proposed change of the policy, whole: the
// proposed policy, its hash, the hash of the policy in force it changes
// (the statements that approve it must name that one) and what it changes.
// The proposer is the entry's actor.
type PolicyProposed struct {
	Proposal    string          `json:"proposal"`
	Hash        string          `json:"hash"`
	Previous    string          `json:"previous"`
	Policy      json.RawMessage `json:"policy"`
	Source      string          `json:"source,omitempty"`
	Comment     string          `json:"comment"`
	ProposerKey string          `json:"proposer_key"`
	ExpiresAt   time.Time       `json:"expires_at"`
	Changes     []string        `json:"changes"`
	Weakens     bool            `json:"weakens,omitempty"`
}

// PolicyReviewed records a policy admin's signed decision on a proposal;
// the admin is the entry's actor.
type PolicyReviewed struct {
	Proposal string `json:"proposal"`
	Decision string `json:"decision"`
	Comment  string `json:"comment"`
	Signed
}

// PolicyProposalClosed records a proposal ending without being put in
// force: denied, expired, or stale (another policy was put in force first).
type PolicyProposalClosed struct {
	Proposal string `json:"proposal"`
	State    string `json:"state"`
	Reason   string `json:"reason"`
}

// PolicyRefused records a policy file the broker refused to put in force
// for want of the admins' signatures (SIGHUP, ReloadPolicy): the policy in
// force stayed. Missing is how many more admins had to sign; Signers the
// statements that counted and Problems why the others did not.
type PolicyRefused struct {
	Hash     string   `json:"hash"`
	Previous string   `json:"previous"`
	Source   string   `json:"source"`
	Missing  int      `json:"missing"`
	Signers  []string `json:"signers"`
	Problems []string `json:"problems"`
}

// Identity is how the broker names the holder of a client certificate:
// the policy's rule (policy.Identity), logged beside the policy too.
type Identity = policy.Identity

// RequestCreated records a new request and the rule it will be judged by.
type RequestCreated struct {
	Justification    string      `json:"justification"`
	Ticket           string      `json:"ticket"`
	TTLSeconds       int64       `json:"ttl_seconds"`
	Drill            bool        `json:"drill"`
	CreatedAt        time.Time   `json:"created_at"`
	ApprovalDeadline time.Time   `json:"approval_deadline"`
	Quorum           policy.Rule `json:"quorum"`
	DenyThreshold    int         `json:"deny_threshold"`
	MaxIssuances     int         `json:"max_issuances"`
	ActivationWindow int64       `json:"activation_window_seconds"`
	// Solo marks a time-locked solo request.
	Solo       bool   `json:"solo,omitempty"`
	PolicyHash string `json:"policy_hash"`
	// ContentDigest is "sha256:" and the hex SHA-256 of the request's
	// content text (docs/signing.md), the value signed statements bind to.
	ContentDigest string `json:"content_digest"`
	// ContentVersion is the version of that text; absent in entries
	// written before version 2, which are version 1.
	ContentVersion int `json:"content_version,omitempty"`
	// Signed is the request statement (format/statement) the requester
	// signed, its signature and the requester's certificate (DER), so
	// that the requester is known by their key; KeyStore is where their
	// client said the key lives, declared and not signed.
	Signed
	KeyStore string `json:"key_store,omitempty"`
	// Passkey is set for a request made in the console and signed by a
	// bound passkey: the WebAuthn assertion whose challenge is the
	// SHA-256 of the statement (Signature and Certificate are then empty).
	Passkey *passkey.Assertion `json:"passkey,omitempty"`
}

// RequestReviewed records one review. The reviewer is the entry's actor.
type RequestReviewed struct {
	Decision string `json:"decision"`
	Comment  string `json:"comment"`
	// Groups are the reviewer's eligible groups when the review arrived.
	Groups []string `json:"groups"`
	// Statement is the signed review statement (format/statement), byte for
	// byte; Signature its signature; Certificate the reviewer's client
	// certificate (DER) whose key made it. All base64 in JSON.
	Statement   []byte `json:"statement"`
	Signature   []byte `json:"signature"`
	Certificate []byte `json:"certificate"`
	// KeyStore is what the signer's client declared of where the
	// certificate's key lives: KeyStorePKCS11 for a token reached through
	// PKCS#11 (a smart card, a security key, an HSM), empty otherwise. No
	// signature covers it; verifiers report it as declared.
	KeyStore string `json:"key_store,omitempty"`
	// Passkey is set instead of Signature and Certificate for a review
	// signed by a bound passkey: the WebAuthn assertion whose challenge is
	// the SHA-256 of Statement (format/passkey).
	Passkey *passkey.Assertion `json:"passkey,omitempty"`
}

// KeyStorePKCS11 is RequestReviewed.KeyStore for a key on a PKCS#11 token.
const KeyStorePKCS11 = "pkcs11"

// PasskeyBound records an approver binding a passkey to themselves (the
// actor): the binding statement (format/passkey), signed with the key of
// their client certificate, and the certificate (DER). Base64 in JSON.
type PasskeyBound struct {
	Credential  []byte `json:"credential"`
	Statement   []byte `json:"statement"`
	Signature   []byte `json:"signature"`
	Certificate []byte `json:"certificate"`
}

// PasskeyRemoved records the end of a binding: the credential's
// assertions count no more.
type PasskeyRemoved struct {
	Credential []byte `json:"credential"`
	Reason     string `json:"reason,omitempty"`
}

// RequestApproved records the moment the quorum was met.
type RequestApproved struct {
	ApprovedAt         time.Time         `json:"approved_at"`
	GrantExpiresAt     time.Time         `json:"grant_expires_at"`
	ActivationDeadline time.Time         `json:"activation_deadline"`
	Alternative        int               `json:"alternative"`
	Assignment         map[string]string `json:"assignment"`
	// Solo grants are approved by the passing of their veto window, which
	// started when the alert was acknowledged.
	Solo           bool      `json:"solo,omitempty"`
	AcknowledgedAt time.Time `json:"acknowledged_at,omitzero"`
}

// RequestFinal records a request ending: denied, cancelled, expired or a
// grant revoked.
type RequestFinal struct {
	Reason string `json:"reason"`
	// At is when the state took effect: for expiry, the deadline.
	At time.Time `json:"at"`
	// Denials lists the principals whose denials reached the threshold.
	Denials []string `json:"denials,omitempty"`
}

// TokenIssued records a token by its claims and hash, never the token.
type TokenIssued struct {
	JTI         string          `json:"jti"`
	KID         string          `json:"kid"`
	Audience    string          `json:"audience"`
	IssuedAt    time.Time       `json:"issued_at"`
	ExpiresAt   time.Time       `json:"expires_at"`
	TokenSHA256 string          `json:"token_sha256"`
	Claims      json.RawMessage `json:"claims"`
	Issuance    int             `json:"issuance"`
}

// PermissionDenied aggregates the refusals of one principal over a window,
// so a hostile caller costs at most one entry per minute.
type PermissionDenied struct {
	Principal   string         `json:"principal"`
	Count       int            `json:"count"`
	WindowStart time.Time      `json:"window_start"`
	WindowEnd   time.Time      `json:"window_end"`
	Methods     map[string]int `json:"methods"`
	// Sample is the first refusal's reason, for the SOC.
	Sample string `json:"sample"`
}

// AlertDelivery records an alert accepted by an acknowledging sink (a 2xx
// from it), or given up on after the configured attempts.
type AlertDelivery struct {
	EventID   string `json:"event_id"`
	EventType string `json:"event_type"`
	Sink      string `json:"sink"`
	Attempts  int    `json:"attempts"`
	LastError string `json:"last_error,omitempty"`
}

// DeadLetterAcknowledged records that an auditor dealt with a dead letter
// (an alert_dead_lettered entry of the same event and sink): it leaves the
// report and the health, and the outbox after the retention.
type DeadLetterAcknowledged struct {
	EventID   string `json:"event_id"`
	EventType string `json:"event_type"`
	Sink      string `json:"sink"`
	Notes     string `json:"notes"`
}

// MaxDeadLetterNotes bounds, in bytes, what an acknowledgement of a dead
// letter says: the broker refuses longer notes and the verifier reports
// them.
const MaxDeadLetterNotes = 4000

// Signed is a statement signed with a principal's client certificate key
// (format/statement), with the certificate (DER). Base64 in JSON.
type Signed struct {
	Statement   []byte `json:"statement"`
	Signature   []byte `json:"signature"`
	Certificate []byte `json:"certificate"`
}

// PostReviewOpened records the review task of a grant that issued a token.
type PostReviewOpened struct {
	ID        string    `json:"id"`
	DueAt     time.Time `json:"due_at"`
	Reviewers string    `json:"reviewers"`
	Excluded  []string  `json:"excluded"`
}

// PostReviewClosed records its closing, signed by the reviewer.
type PostReviewClosed struct {
	ID    string `json:"id"`
	Notes string `json:"notes"`
	Signed
}

// AccountAttested records that an owner confirmed an account is still
// needed and its approvers are right, signed by the owner.
type AccountAttested struct {
	ID         string `json:"id"`
	Notes      string `json:"notes"`
	PolicyHash string `json:"policy_hash"`
	Signed
}

// KeyChange records a key becoming active, retired or destroyed. A new
// audit or checkpoint key is introduced by a rotation statement signed by
// both the old key and the new one, so a verifier holding only the first
// key follows the chain.
type KeyChange struct {
	Purpose   string `json:"purpose"`
	Account   string `json:"account,omitempty"`
	KID       string `json:"kid"`
	Label     string `json:"label"`
	PublicPEM string `json:"public_pem,omitempty"`
	// Previous is the key this one replaces.
	Previous string `json:"previous,omitempty"`
	// Rotation is the rotation statement; OldSignature and NewSignature
	// are the old and new key's signatures over it (audit and checkpoint
	// keys only).
	Rotation     []byte `json:"rotation,omitempty"`
	OldSignature []byte `json:"old_signature,omitempty"`
	NewSignature []byte `json:"new_signature,omitempty"`
	// NoteKey is the new checkpoint key's signed-note verifier key.
	NoteKey string `json:"note_key,omitempty"`
	Reason  string `json:"reason,omitempty"`
}

// StoreRestored records that the store was restored from a backup, the
// first entry after the backup's last. Forced is set when the backup did
// not hold the newest checkpoint the restore found: entries after the
// backup, revocations among them, are gone, and NewestCheckpoint says how
// many there were.
type StoreRestored struct {
	Operator string `json:"operator"`
	Reason   string `json:"reason,omitempty"`
	Forced   bool   `json:"forced"`
	// BackupSize is the number of entries the backup held.
	BackupSize uint64 `json:"backup_size"`
	// NewestCheckpoint is the newest checkpoint found (a signed note) and
	// NewestSize its size.
	NewestCheckpoint []byte `json:"newest_checkpoint,omitempty"`
	NewestSize       uint64 `json:"newest_size"`
	// Sources are the checkpoints the restore consulted, and what it could
	// not consult (a current database that could not be read).
	Sources []string `json:"sources,omitempty"`
}
