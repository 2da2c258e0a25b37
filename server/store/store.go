// Package store defines the broker's storage: requests, reviews, token
// records and the audit log, written together in one transaction so that a
// state change and its audit entry commit together or not at all.
// Implementations live in sub-packages and pass the conformance suite in
// storetest.
package store

import (
	"context"
	"errors"
	"time"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/server/request"
)

// Errors every implementation returns for the same conditions.
var (
	ErrNotFound = errors.New("not found")
	// ErrConflict means a uniqueness rule refused the write (a second
	// review by one principal, a reused id, an index out of sequence).
	ErrConflict = errors.New("conflict")
)

// Store is a transactional store.
type Store interface {
	// Update runs fn in a write transaction. Write transactions are
	// serialized and hold the audit chain's head for their whole length,
	// so two writers can never fork the log. If fn returns an error,
	// nothing it wrote is kept.
	Update(ctx context.Context, fn func(Tx) error) error
	// View runs fn in a read-only snapshot.
	View(ctx context.Context, fn func(Reader) error) error
	// Close releases the store.
	Close() error
}

// ErrUnavailable means the database cannot be reached or lost the
// connection: nothing that grants access can happen until it is back, and
// the caller may try another replica.
var ErrUnavailable = errors.New("the database is unavailable")

// ErrNoSpace means the database's disk is full: nothing can be written
// until an operator frees space; the store goes on by itself once there is.
var ErrNoSpace = errors.New("the database's disk is full")

// Change is what one committed transaction changed, as announced to the
// other processes sharing a store.
type Change struct {
	// Requests whose state, reviews or tokens changed.
	Requests []string `json:"requests,omitempty"`
	// Entries is set when audit entries were appended.
	Entries bool `json:"entries,omitempty"`
	// Resync is set when changes may have been missed (the listener lost
	// its connection): everything may have changed.
	Resync bool `json:"resync,omitempty"`
}

// Watcher is implemented by stores that several broker processes share.
type Watcher interface {
	// Watch calls fn, from one goroutine, for every change committed by
	// any process (this one included), until ctx ends.
	Watch(ctx context.Context, fn func(Change))
}

// Pinger is implemented by stores whose database can go away under a
// running broker.
type Pinger interface {
	Ping(ctx context.Context) error
}

// Filter selects requests.
type Filter struct {
	// States, when not empty, keeps requests whose stored state is one of
	// these.
	States    []request.State
	Account   string
	Requester string
	// Accounts, when not empty, keeps requests for one of these accounts.
	Accounts []string
	// Before pages: only requests created before this (CreatedAt, ID).
	BeforeTime time.Time
	BeforeID   string
	// Limit caps the result; zero means 100.
	Limit int
}

// Page is a keyset page: the rows after (AfterTime, AfterID) in the
// listing's order, at most Limit of them (zero means 100).
type Page struct {
	AfterTime time.Time
	AfterID   string
	Limit     int
}

// Size is the page's limit with its default.
func (p Page) Size() int {
	if p.Limit <= 0 {
		return 100
	}
	return p.Limit
}

// Reader reads in a transaction or snapshot.
type Reader interface {
	// Request returns a request with its reviews, or ErrNotFound.
	Request(ctx context.Context, id string) (*request.Request, error)
	// Requests returns requests with their reviews, newest first.
	Requests(ctx context.Context, f Filter) ([]*request.Request, error)
	// DueForExpiry returns PENDING or APPROVED requests with a deadline at
	// or before now, oldest deadline first.
	DueForExpiry(ctx context.Context, now time.Time, limit int) ([]*request.Request, error)
	// Token returns a token record by jti, or ErrNotFound.
	Token(ctx context.Context, jti string) (*TokenRecord, error)
	// Head returns the end of the audit chain.
	Head(ctx context.Context) (audit.Head, error)
	// Entries returns entries with from <= index < to.
	Entries(ctx context.Context, from, to uint64) ([]audit.Record, error)
	// Unsigned returns up to limit entries without a signature, in order.
	Unsigned(ctx context.Context, limit int) ([]audit.Record, error)
	// UnsignedCount is the number of entries waiting for a signature.
	UnsignedCount(ctx context.Context) (int, error)
	// LastOfType returns the newest entry of a type, or ErrNotFound.
	LastOfType(ctx context.Context, t audit.Type) (audit.Record, error)
	// LastOfTypeAt returns the index and time of the newest entry of a
	// type, or ErrNotFound, without reading the entry: for callers that
	// keep what they read of it last time.
	LastOfTypeAt(ctx context.Context, t audit.Type) (uint64, time.Time, error)
	// TreeHash returns the RFC 6962 root of the first size entries.
	TreeHash(ctx context.Context, size uint64) ([]byte, error)
	// InclusionProof proves entry index is in the tree of the first size
	// entries (RFC 6962 audit path, leaf to root).
	InclusionProof(ctx context.Context, index, size uint64) ([][]byte, error)
	// ConsistencyProof proves the tree of size from is a prefix of the tree
	// of size to (RFC 6962 consistency proof).
	ConsistencyProof(ctx context.Context, from, to uint64) ([][]byte, error)
	// Checkpoint returns the stored checkpoint at size, or ErrNotFound.
	Checkpoint(ctx context.Context, size uint64) (Checkpoint, error)
	// LatestCheckpoint returns the largest stored checkpoint, or ErrNotFound.
	LatestCheckpoint(ctx context.Context) (Checkpoint, error)
	// Cosignatures returns the witness cosignatures stored for the
	// checkpoint at size, in witness order.
	Cosignatures(ctx context.Context, size uint64) ([]Cosignature, error)
	// LatestCosignature returns a witness's cosignature of the largest
	// checkpoint it cosigned, or ErrNotFound.
	LatestCosignature(ctx context.Context, witness string) (Cosignature, error)
	// LatestWitnessed returns the size of the largest checkpoint of at
	// least minSize entries that quorum of witnesses cosigned, or
	// ErrNotFound.
	LatestWitnessed(ctx context.Context, witnesses []string, quorum int, minSize uint64) (uint64, error)
	// OutboxFor returns the outbox rows of one request and event type.
	OutboxFor(ctx context.Context, requestID, eventType string) ([]OutboxItem, error)
	// OutboxSummary counts outbox rows per sink and state.
	OutboxSummary(ctx context.Context) ([]SinkSummary, error)
	// DeadLetters returns the dead rows nobody acknowledged, newest first.
	DeadLetters(ctx context.Context, limit int) ([]OutboxItem, error)
	// DeadLetter returns the outbox row of one event and sink, whatever
	// its state; ErrNotFound when there is none (never enqueued, or pruned).
	DeadLetter(ctx context.Context, eventID, sink string) (*OutboxItem, error)

	// SoloAcknowledged returns pending solo requests whose alert was
	// acknowledged (their veto windows are running).
	SoloAcknowledged(ctx context.Context) ([]*request.Request, error)
	// ActiveGrants returns one page of APPROVED requests whose grant has
	// not ended at now, in order of grant end then id, after the page's
	// cursor (grant end and id).
	ActiveGrants(ctx context.Context, now time.Time, page Page) ([]*request.Request, error)
	// TokensOutstanding returns one page of tokens not yet expired at now
	// whose grant was not revoked, in order of expiry then jti, after the
	// page's cursor (expiry and jti).
	TokensOutstanding(ctx context.Context, now time.Time, page Page) ([]TokenRecord, error)
	// LastUse is the first issuance of the newest grant of the account
	// that issued a token (drill selects drills or real use); zero if none.
	LastUse(ctx context.Context, account string, drill bool) (time.Time, error)

	// PostReviews returns post-use reviews, open ones only when open is set.
	PostReviews(ctx context.Context, open bool) ([]PostReview, error)
	// PostReview returns one by id, or ErrNotFound.
	PostReview(ctx context.Context, id string) (*PostReview, error)
	// LastAttestation returns the newest attestation of the account, or
	// ErrNotFound.
	LastAttestation(ctx context.Context, account string) (*Attestation, error)
	// AccountFirstSeen is when the account first appeared in a logged
	// policy (zero if never).
	AccountFirstSeen(ctx context.Context, account string) (time.Time, error)
	// AlertSent is when an alert with this key was last sent (zero if never).
	AlertSent(ctx context.Context, key string) (time.Time, error)
	// CertsSeen returns the client certificates seen since.
	CertsSeen(ctx context.Context, since time.Time) ([]CertSeen, error)
	// Keys returns the key registry.
	Keys(ctx context.Context) ([]KeyRecord, error)
	// ActiveKey returns the active key of a purpose (and account, for an
	// account's own token key), or ErrNotFound: one indexed row, cheap
	// enough to read in every write transaction.
	ActiveKey(ctx context.Context, purpose, account string) (KeyRecord, error)
	// LastTokenExpiry is the latest expiry of tokens signed by kid (zero
	// if none).
	LastTokenExpiry(ctx context.Context, kid string) (time.Time, error)
	// Idempotent returns the record of an earlier call with this key, or
	// ErrNotFound.
	Idempotent(ctx context.Context, principal, method, key string) (*IdempotentCall, error)
	// Counts summarises the store for metrics.
	Counts(ctx context.Context, now time.Time) (Counts, error)
	CertReader
	PasskeyReader
	ProposalReader
}

// Counts are the store's figures for metrics.
type Counts struct {
	// Requests counts requests by stored state (a deadline passed since
	// the last sweep still counts in the old state).
	Requests map[request.State]int
	// ActiveGrants counts APPROVED requests whose grant has not ended.
	ActiveGrants int
	// Tokens counts token records: every token ever issued.
	Tokens int64
}

// Tx writes. It sees its own writes.
type Tx interface {
	Reader
	// CreateRequest inserts a new request (without reviews).
	CreateRequest(ctx context.Context, r *request.Request) error
	// SaveRequest stores a request's mutable fields and increments its
	// version.
	SaveRequest(ctx context.Context, r *request.Request) error
	// AddReview inserts a review; a second review by the same principal is
	// ErrConflict.
	AddReview(ctx context.Context, requestID string, rv request.Review) error
	// AddToken records an issued token.
	AddToken(ctx context.Context, t *TokenRecord) error
	// Append adds the next audit entry; its index must equal Head().Size.
	Append(ctx context.Context, r audit.Record) error
	// SetSignature signs a stored unsigned entry; signing twice is refused.
	SetSignature(ctx context.Context, index uint64, sig []byte, keyID string) error
	// AddCheckpoint stores a signed checkpoint; one already stored at the
	// same size is kept.
	AddCheckpoint(ctx context.Context, cp Checkpoint) error
	// AddCosignature stores a witness's cosignature of the checkpoint at
	// its size; a later cosignature of the same size by the same witness
	// replaces an older one.
	AddCosignature(ctx context.Context, c Cosignature) error
	// Enqueue adds events to the outbox.
	Enqueue(ctx context.Context, items []OutboxItem) error
	// ClaimOutbox leases up to limit pending rows that are due at now and
	// not leased, for lease; a dispatcher that dies leaves them to be
	// claimed again when the lease ends.
	ClaimOutbox(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]OutboxItem, error)
	// FinishOutbox records the outcome of a delivery attempt.
	FinishOutbox(ctx context.Context, it OutboxItem) error
	// PruneOutbox deletes up to limit rows delivered before the cut-off,
	// and up to limit dead rows acknowledged before it, oldest first, and
	// returns how many. Pending rows and unacknowledged dead rows stay.
	PruneOutbox(ctx context.Context, before time.Time, limit int) (int, error)
	// AckDeadLetter records that an operator dealt with a dead row: it
	// leaves the report and may be pruned after the retention. ErrNotFound
	// when there is no such unacknowledged dead row.
	AckDeadLetter(ctx context.Context, eventID, sink string, at time.Time) error

	// AddPostReview opens a post-use review.
	AddPostReview(ctx context.Context, pr PostReview) error
	// ClosePostReview records the closing of an open one.
	ClosePostReview(ctx context.Context, pr PostReview) error
	// AdvancePostReviewDue brings the due time of a request's open review
	// forward to due, when its grant ends before planned.
	AdvancePostReviewDue(ctx context.Context, requestID string, due time.Time) error
	// AddAttestation records an attestation.
	AddAttestation(ctx context.Context, a Attestation) error
	// MarkAccountSeen records an account's first appearance (kept if set).
	MarkAccountSeen(ctx context.Context, account string, at time.Time) error
	// SetAlertSent records that an alert was sent.
	SetAlertSent(ctx context.Context, key string, at time.Time) error
	// RecordCerts stores client certificates seen.
	RecordCerts(ctx context.Context, certs []CertSeen) error
	// PutKey inserts or updates a key registry record.
	PutKey(ctx context.Context, k KeyRecord) error
	// AddIdempotent records a call made with an idempotency key (a second
	// record with the same principal, method and key is ErrConflict).
	AddIdempotent(ctx context.Context, c IdempotentCall) error
	// PruneIdempotent forgets calls made before t and returns how many.
	PruneIdempotent(ctx context.Context, before time.Time) (int, error)
	CertWriter
	PasskeyWriter
	ProposalWriter
}

// IdempotentCall is a write made with an idempotency key: what it was
// (Fingerprint, a digest of its fields) and what it did, so that a retry
// gets the same answer.
type IdempotentCall struct {
	Principal   string
	Method      string
	Key         string
	Fingerprint string
	RequestID   string
	EntryIndex  uint64
	At          time.Time
}

// Key states.
const (
	KeyActive    = "active"
	KeyRetired   = "retired"
	KeyDestroyed = "destroyed"
)

// KeyRecord is a key in the registry.
type KeyRecord struct {
	KID         string
	Purpose     string
	Account     string
	Label       string
	KeyID       string
	PublicPEM   string
	State       string
	ActivatedAt time.Time
	RetiredAt   time.Time
	DestroyedAt time.Time
	// RevokedAt is when a CA key was retired with every certificate it
	// signed revoked (zero otherwise).
	RevokedAt time.Time
}

// PostReview is the review of a grant after use.
type PostReview struct {
	ID        string
	RequestID string
	Account   string
	Requester string
	// Excluded are the principals who may not review it: the requester and
	// the grant's approvers.
	Excluded  []string
	OpenedAt  time.Time
	DueAt     time.Time
	ClosedAt  time.Time
	ClosedBy  string
	Notes     string
	Statement []byte
	Signature []byte
	Cert      []byte
}

// Attestation records that an account is still needed.
type Attestation struct {
	ID         string
	Account    string
	By         string
	At         time.Time
	Notes      string
	PolicyHash string
	Statement  []byte
	Signature  []byte
	Cert       []byte
	EntryIndex uint64
}

// CertSeen is a client certificate a principal connected with.
type CertSeen struct {
	Principal string
	Serial    string
	NotAfter  time.Time
	LastSeen  time.Time
}

// Outbox row states.
const (
	OutboxPending   = "pending"
	OutboxDelivered = "delivered"
	OutboxDead      = "dead"
)

// OutboxItem is one event for one sink.
type OutboxItem struct {
	EventID   string
	Sink      string
	Type      string
	Account   string
	RequestID string
	Body      []byte
	// Ack marks an alert whose delivery acknowledges it (require_alert_ack,
	// solo requests).
	Ack         bool
	CreatedAt   time.Time
	NextAttempt time.Time
	Attempts    int
	State       string
	LastError   string
	DeliveredAt time.Time
	// AckedAt is when someone acknowledged a dead row (zero while not).
	AckedAt time.Time
}

// SinkSummary is the outbox's state for one sink: rows pending, rows
// delivered and not yet pruned, rows dead that nobody acknowledged, and
// dead rows acknowledged and not yet pruned.
type SinkSummary struct {
	Sink          string
	Pending       int
	Delivered     int
	Dead          int
	Acked         int
	OldestPending time.Time
}

// Checkpoint is a signed checkpoint: a C2SP signed note over the
// tlog-checkpoint body (origin, size, root).
type Checkpoint struct {
	Size      uint64
	Root      []byte
	Note      []byte
	CreatedAt time.Time
}

// Cosignature is a witness's cosignature of a checkpoint (C2SP
// tlog-cosignature), verified before it was stored.
type Cosignature struct {
	Size uint64
	// Witness identifies the witness's key: its name and key ID.
	Witness string
	// Line is the note signature line, with its final newline.
	Line string
	// SignedAt is the cosignature's timestamp (the witness's clock).
	SignedAt time.Time
	// CreatedAt is when the broker received it.
	CreatedAt time.Time
}

// TokenRecord is what the broker keeps of an issued token: its claims and
// hash, never the token.
type TokenRecord struct {
	JTI         string
	RequestID   string
	Account     string
	Subject     string
	Audience    string
	KID         string
	IssuedAt    time.Time
	ExpiresAt   time.Time
	TokenSHA256 string
	Drill       bool
	EntryIndex  uint64
}
