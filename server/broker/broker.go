// Package broker is the break-glass flow: requests, reviews, grants and
// tokens, each state change committed together with its audit entry. It
// enforces DESIGN §4: no token without quorum, fail closed for access and
// open for taking it away, no standing access.
package broker

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bgbroker/breakglass/format/keyid"
	"github.com/bgbroker/breakglass/format/statement"
	"github.com/bgbroker/breakglass/server/event"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/server/request"
	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/token"
)

// Config builds a Broker.
type Config struct {
	Store        store.Store
	Policy       *policy.Policy
	PolicySource string
	// Keys are the signing keys: the audit key and each account's token
	// minter (keyring.Ring, or StaticKeys).
	Keys Keys
	// Now is the clock; time.Now when nil. Tests inject their own so that
	// expiry is tested without sleeping.
	Now func() time.Time
	Log *slog.Logger
	// SweepInterval is how often deadlines are recorded and unsigned
	// entries retried (default 1s).
	SweepInterval time.Duration
	// OutboxRetention is how long delivered events, and dead letters once
	// acknowledged, stay in the outbox (default 7 days).
	OutboxRetention time.Duration
	// DenialWindow is the aggregation window of permission_denied entries
	// (default one minute).
	DenialWindow time.Duration
	// OptionalSignTimeout bounds the signature attempt for entries that
	// may be stored unsigned (revocations and the like), so that taking
	// access away stays quick while the HSM hangs (default 300ms).
	OptionalSignTimeout time.Duration
	// HSMBackoff is how long after a failed signature that had to succeed
	// the broker refuses at once, instead of trying the HSM again (default
	// 1s). Writes are serialized: without it, every call queued behind a
	// slow or dead HSM would hold the writer for a whole sign timeout, and
	// revocations would wait behind them.
	HSMBackoff time.Duration
	// MaxWatchesPerPrincipal bounds concurrent WatchRequest streams per
	// principal (default 16).
	MaxWatchesPerPrincipal int
	// Origin is the log's origin; signed review statements must name it.
	Origin string
	// Certs re-verifies the client certificates behind signed reviews.
	Certs CertVerifier
	// Routes routes events to sinks and knows the policy's ack_sinks; nil
	// sends none and accepts any.
	Routes Routes
	// Observer hears what the broker committed; nil hears nothing.
	Observer Observer
	// Witnesses, when set, are the witnesses the checkpoints go to.
	Witnesses *Witnessing
	// Authorities sign SSH and X.509 certificates; nil issues none.
	Authorities Authorities
	// Checkpoints are the log's checkpoints, served to auditors; nil
	// serves none.
	Checkpoints Checkpoints
	// PolicySignatures are the policy admins' statements that come with
	// Policy (policy.sigs): a policy that is not the one the log last
	// recorded is put in force only when they meet the rule of the policy
	// in force (for a first policy, its own rule).
	PolicySignatures []statement.Signed
	// AcceptUnsignedGenesis logs a first policy without its admins'
	// signatures, as an unsigned genesis the offline verifier reports.
	AcceptUnsignedGenesis bool
	// SignPolicy, when set, makes statements for a change at start, beside
	// PolicySignatures: dev mode signs with its demo admins' keys. Nothing
	// else may set it.
	SignPolicy func(previous, hash string) ([]statement.Signed, error)
	// PolicyNotice hears, at start, that the configured policy was not put
	// in force and why (the policy in force is the log's); nil logs it only.
	PolicyNotice func(msg string)
}

// Observer hears what the broker has committed: the components that act on
// it (checkpoints, deliveries, key rotation) without the broker knowing
// them. The broker calls it after the commit, outside any transaction;
// every method must return at once, handing longer work to a goroutine.
type Observer interface {
	// EntriesAppended: the audit log grew.
	EntriesAppended()
	// EventsQueued: the outbox holds new events to deliver.
	EventsQueued()
	// RotateAfterUse: a grant that issued a token of this account, whose
	// policy says rotate_after_use, has ended.
	RotateAfterUse(account string)
	// CertificatesRevoked: certificates were revoked with their grant;
	// the CRL must follow at once.
	CertificatesRevoked()
}

// NopObserver hears nothing.
type NopObserver struct{}

// EntriesAppended implements Observer.
func (NopObserver) EntriesAppended() {}

// EventsQueued implements Observer.
func (NopObserver) EventsQueued() {}

// RotateAfterUse implements Observer.
func (NopObserver) RotateAfterUse(string) {}

// CertificatesRevoked implements Observer.
func (NopObserver) CertificatesRevoked() {}

// CertVerifier checks a client certificate as of a moment and names its
// principal; identity.Verifier implements it.
type CertVerifier interface {
	VerifyAt(c *x509.Certificate, at time.Time) (string, error)
	Describe() (mode, uriPrefix string)
}

// Broker runs the flow.
type Broker struct {
	cfg    Config
	store  store.Store
	policy atomic.Pointer[policy.Policy]
	keys   Keys
	now    func() time.Time
	log    *slog.Logger

	// hsmDown is set by the health checker; while it is set, optional
	// signatures are not even attempted.
	hsmDown atomic.Bool
	// hsmFailed is when (Unix ns) a signature that had to succeed last
	// failed on the HSM's side; see Config.HSMBackoff.
	hsmFailed atomic.Int64
	// eventsPending is set when a transaction wrote to the outbox.
	eventsPending atomic.Bool
	// certs are client certificates seen since the last flush.
	certsMu sync.Mutex
	certs   map[string]store.CertSeen

	watchMu  sync.Mutex
	watchers map[string]map[chan struct{}]struct{}
	watching map[string]int
	// appended is closed and replaced after every commit that appended
	// entries, waking WatchEntries streams.
	appended chan struct{}

	denials denials
	// sigs remembers statements already verified, so the re-check of
	// every stored approval before an issuance costs a hash, not a
	// signature verification.
	sigs *statement.Cache
	// policySeen is the last policy entry read (policyInForce).
	policySeen atomic.Pointer[policySeen]
}

// New builds a broker and records the policy in the audit log when it
// differs from the last one logged.
func New(ctx context.Context, cfg Config) (*Broker, error) {
	if cfg.Store == nil || cfg.Policy == nil || cfg.Keys == nil || cfg.Certs == nil || cfg.Origin == "" {
		return nil, errors.New("broker: Store, Policy, Keys, Certs and Origin are required")
	}
	if k, _ := cfg.Keys.AuditKey(); k == nil {
		return nil, errors.New("broker: no audit key")
	} else if _, ok := k.Public().(*ecdsa.PublicKey); !ok {
		return nil, errors.New("broker: the audit key must be ECDSA P-256")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Observer == nil {
		cfg.Observer = NopObserver{}
	}
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = time.Second
	}
	if cfg.OutboxRetention <= 0 {
		cfg.OutboxRetention = 7 * 24 * time.Hour
	}
	if cfg.DenialWindow <= 0 {
		cfg.DenialWindow = time.Minute
	}
	if cfg.HSMBackoff <= 0 {
		cfg.HSMBackoff = time.Second
	}
	if cfg.OptionalSignTimeout <= 0 {
		cfg.OptionalSignTimeout = 300 * time.Millisecond
	}
	if cfg.MaxWatchesPerPrincipal <= 0 {
		cfg.MaxWatchesPerPrincipal = 16
	}
	b := &Broker{
		cfg: cfg, store: cfg.Store, keys: cfg.Keys,
		now: cfg.Now, log: cfg.Log,
		watchers: map[string]map[chan struct{}]struct{}{}, watching: map[string]int{}, appended: make(chan struct{}),
		sigs: statement.NewCache(16384),
	}
	b.denials.init()
	b.certs = map[string]store.CertSeen{}
	if err := b.checkPolicySinks(cfg.Policy); err != nil {
		return nil, err
	}
	b.policy.Store(b.withIdentity(cfg.Policy))
	if err := b.startPolicy(ctx); err != nil {
		return nil, err
	}
	return b, nil
}

// Now is the broker's clock, which every part that decides by time reads.
func (b *Broker) Now() time.Time { return b.now() }

// Policy returns the policy in force.
func (b *Broker) Policy() *policy.Policy { return b.policy.Load() }

// Keys are the broker's signing keys.
type Keys interface {
	// AuditKey returns the active audit key and its kid.
	AuditKey() (audit.Signer, string)
	// Minter returns the minter of the account's token key.
	Minter(account string) *token.Minter
	// TokenKeys returns the public keys that verify the account's tokens
	// ("" for the broker's own set).
	TokenKeys(account string) []crypto.PublicKey
}

// StaticKeys is one audit key and one token key, for tests and tools.
type StaticKeys struct {
	Audit  audit.Signer
	Tokens *token.Minter
}

// AuditKey implements Keys.
func (s StaticKeys) AuditKey() (audit.Signer, string) {
	kid, _ := keyid.Thumbprint(s.Audit.Public())
	return s.Audit, kid
}

// Minter implements Keys.
func (s StaticKeys) Minter(string) *token.Minter { return s.Tokens }

// TokenKeys implements Keys.
func (s StaticKeys) TokenKeys(account string) []crypto.PublicKey {
	if account != "" {
		return nil
	}
	return []crypto.PublicKey{s.Tokens.Public()}
}

// AuditKID is the RFC 7638 thumbprint of the active audit key.
func (b *Broker) AuditKID() string { _, kid := b.keys.AuditKey(); return kid }

// Minter returns the token minter of an account ("" for the broker's).
func (b *Broker) Minter(account string) *token.Minter { return b.keys.Minter(account) }

// SetHSMDown records the HSM health as the health checker sees it.
func (b *Broker) SetHSMDown(down bool) {
	b.hsmDown.Store(down)
	if !down {
		b.hsmFailed.Store(0)
	}
}

// errHSMBackoff is the cause given while the broker backs off the HSM.
var errHSMBackoff = errors.New("a signature failed moments ago; not trying the HSM again yet")

// hsmSuspect reports whether signatures should not be tried now: the
// health checker says the HSM is down, or one failed within HSMBackoff.
func (b *Broker) hsmSuspect() bool {
	if b.hsmDown.Load() {
		return true
	}
	t := b.hsmFailed.Load()
	return t != 0 && b.now().Sub(time.Unix(0, t)) < b.cfg.HSMBackoff
}

// hsmFailure records a failed signature that had to succeed and returns
// the caller's error. A signature abandoned because the caller went away
// says nothing about the HSM and is not recorded: a client must not be
// able to make the broker refuse everyone by hanging up.
func (b *Broker) hsmFailure(ctx context.Context, err error) error {
	if ctx.Err() == nil {
		b.hsmFailed.Store(b.now().UnixNano())
	}
	return hsmDown(err)
}

// PolicyReload is what putting a policy in force did.
type PolicyReload struct {
	Hash, Previous string
	// Changed is false when the policy was the one already logged.
	Changed bool
	Changes []string
	// Weakens is set when the new policy widens access or weakens
	// oversight; it is announced as policy.weakened.
	Weakens bool
	// Signers are the policy admins whose statements put it in force.
	Signers []string
	Entry   audit.Record
}

// logPolicyTx appends a policy_loaded entry for p by actor in tx, unless
// the last one logged has the same hash and identity configuration, with
// how it came to be in force (meta), announces it, and makes every
// pending proposal of another policy stale. Callers have judged the
// change: this writes it.
func (b *Broker) logPolicyTx(ctx context.Context, tx store.Tx, p *policy.Policy, source, actor string, meta policyMeta) (*PolicyReload, error) {
	p = b.withIdentity(p)
	ident := *p.Identity
	res := &PolicyReload{Hash: p.Hash()}
	var old *policy.Policy
	pl, _, err := b.policyInForce(ctx, tx)
	switch {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		return nil, err
	case pl.Hash == p.Hash() && pl.Identity == ident:
		res.Previous = pl.Hash
		return res, nil
	default:
		res.Previous = pl.Hash
		if old, err = policy.FromCanonicalJSON(pl.Policy); err != nil {
			return nil, fmt.Errorf("reading the policy in force: %w", err)
		}
		// A policy logged before policies named their identity rule
		// was judged by the one its entry names.
		if old.Identity == nil {
			old = old.WithIdentity(pl.Identity)
		}
		if err := b.checkRemap(ctx, tx, pl.Identity, ident, b.now()); err != nil {
			return nil, err
		}
	}
	now := b.now()
	for _, a := range p.Accounts {
		if err := tx.MarkAccountSeen(ctx, a.Name, now); err != nil {
			return nil, err
		}
	}
	// The identity rule is part of the policy: a change of it is one of
	// the changes, and always weakening.
	changes := policy.ChangeLines(old, p)
	weakens := old != nil && policy.Weakens(policy.Diff(old, p))
	rec, err := b.appendEntry(ctx, tx, now, audit.Draft{
		Type: audit.TypePolicyLoaded, Actor: actor,
		Payload: audit.PolicyLoaded{Hash: p.Hash(), Previous: res.Previous, Source: source, Policy: p.CanonicalJSON(), Identity: ident,
			Changes: changes, Weakens: weakens, Approvals: meta.approvals, Proposal: meta.proposal, Proposer: meta.proposer, ProposerKey: meta.proposerKey,
			Genesis: meta.genesis, Reset: meta.reset},
	}, true)
	if err != nil {
		return nil, err
	}
	res.Changed, res.Entry, res.Changes, res.Weakens = true, rec, changes, weakens
	for _, s := range meta.approvals {
		if cert, err := b.sigs.ParseCertificate(s.Certificate); err == nil {
			if who, err := b.cfg.Certs.VerifyAt(cert, now); err == nil {
				res.Signers = append(res.Signers, who)
			}
		}
	}
	details, err := json.Marshal(map[string]any{"hash": p.Hash(), "previous": res.Previous, "source": source, "changes": res.Changes, "weakens": weakens,
		"signers": nonNilStrings(res.Signers), "proposal": meta.proposal, "genesis": meta.genesis, "reset": meta.reset})
	if err != nil {
		return nil, err
	}
	idx := rec.Index
	how := "signed by " + strings.Join(res.Signers, ", ")
	switch {
	case meta.reset != nil:
		how = fmt.Sprintf("TRUST RESET by %s without the policy admins' quorum: %s", meta.reset.Operator, meta.reset.Reason)
	case meta.genesis == audit.GenesisUnsigned:
		how = "UNSIGNED GENESIS accepted by the operator"
	case len(res.Signers) == 0:
		how = "unsigned"
	}
	typ, summary := event.PolicyLoaded, fmt.Sprintf("policy %s in force (was %s) by %s, %s: %s", short(p.Hash()), short(res.Previous), actor, how, strings.Join(res.Changes, "; "))
	switch {
	case meta.reset != nil:
		typ, summary = event.PolicyReset, "POLICY TRUST RESET: "+summary
	case weakens:
		typ, summary = event.PolicyWeakened, "POLICY WEAKENED: "+summary
	}
	if err := b.emit(ctx, tx, event.Event{Type: typ, Actor: actor, Time: now, AuditIndex: &idx, Summary: summary, Details: details}, nil); err != nil {
		return nil, err
	}
	return res, b.closeStale(ctx, tx, now, p.Hash(), meta.proposal)
}

// RequireAdmin refuses a caller who may not reload or propose the policy:
// a member of neither the admins group nor the policy admins.
func (b *Broker) RequireAdmin(caller string) error {
	if !b.Policy().MayPropose(caller) {
		return denied("only members of the policy's admins group and its policy admins may reload or propose the policy")
	}
	return nil
}

// ReloadPolicy is ApplyPolicy without a bundle of signatures: it succeeds
// only for the policy already in force.
func (b *Broker) ReloadPolicy(ctx context.Context, caller string, p *policy.Policy, source string) (*PolicyReload, error) {
	return b.ApplyPolicy(ctx, caller, p, source, nil)
}

// checkPolicySinks refuses a policy whose ack_sinks name sinks the broker
// does not have: an acknowledgement that can never come would block every
// grant of the account.
func (b *Broker) checkPolicySinks(p *policy.Policy) error {
	if b.cfg.Routes == nil {
		return nil
	}
	for _, a := range p.Accounts {
		for _, s := range a.AckSinks {
			if !b.cfg.Routes.Has(s) {
				return fmt.Errorf("account %s: ack sink %q is not configured under notify.sinks", a.Name, s)
			}
		}
	}
	return nil
}

// appendEntry builds the next entry, signs it and appends it. When
// mustSign is set (the entry records something that grants access) a
// failed signature fails the whole transaction. Otherwise the entry is
// chained now and signed later, so taking access away never waits for the
// HSM.
func (b *Broker) appendEntry(ctx context.Context, tx store.Tx, now time.Time, d audit.Draft, mustSign bool) (audit.Record, error) {
	head, err := tx.Head(ctx)
	if err != nil {
		return audit.Record{}, err
	}
	rec, err := audit.Build(head, now, d)
	if err != nil {
		return audit.Record{}, err
	}
	key, kid, err := b.auditKey(ctx, tx)
	switch {
	case mustSign && err != nil:
		return audit.Record{}, err
	case mustSign:
		if b.hsmSuspect() {
			return audit.Record{}, hsmDown(errHSMBackoff)
		}
		if err := audit.Sign(ctx, key, kid, &rec); err != nil {
			return audit.Record{}, b.hsmFailure(ctx, err)
		}
	case err != nil:
		b.log.Warn("audit entry stored unsigned: the audit key in force is not at hand yet", "index", rec.Index, "type", rec.Type, "err", err)
	case !b.hsmSuspect():
		sctx, cancel := context.WithTimeout(ctx, b.cfg.OptionalSignTimeout)
		err := audit.Sign(sctx, key, kid, &rec)
		cancel()
		if err != nil {
			rec.Signature, rec.KeyID = nil, ""
			b.log.Warn("audit entry stored unsigned; it will be signed when the HSM is back", "index", rec.Index, "type", rec.Type, "err", err)
		}
	}
	if err := tx.Append(ctx, rec); err != nil {
		return audit.Record{}, err
	}
	return rec, nil
}

// purposeAudit is the audit key's purpose in the key registry.
const purposeAudit = "audit"

// AuditKeyResolver is implemented by key sets that follow the key
// registry (keyring.Ring): it returns the audit key a registry record
// names, finding it in the HSM when it is new.
type AuditKeyResolver interface {
	AuditKeyFor(ctx context.Context, rec store.KeyRecord) (audit.Signer, error)
}

// auditKey is the audit key in force for the next entry of tx: the one
// the key registry names active in the same transaction. A rotation made
// by another process (breakglassd hsm rotate) takes effect at once, so a
// retired key never signs an entry after its retirement; a broker whose
// keys do not follow the registry (tools and tests with static keys, a
// registry still empty) signs with its own.
func (b *Broker) auditKey(ctx context.Context, tx store.Tx) (audit.Signer, string, error) {
	key, kid := b.keys.AuditKey()
	rec, err := tx.ActiveKey(ctx, purposeAudit, "")
	if errors.Is(err, store.ErrNotFound) || (err == nil && rec.KID == kid) {
		return key, kid, nil
	}
	if err != nil {
		return nil, "", internal(err)
	}
	res, ok := b.keys.(AuditKeyResolver)
	if !ok {
		return nil, "", hsmDown(fmt.Errorf("the key registry's audit key is %s, not %s, and this broker cannot load it", rec.KID, kid))
	}
	k, err := res.AuditKeyFor(ctx, rec)
	if err != nil {
		return nil, "", hsmDown(fmt.Errorf("the audit key in force (%s, %q): %w", rec.KID, rec.Label, err))
	}
	return k, rec.KID, nil
}

// update runs fn in a write transaction and maps foreign errors to
// internal ones. After a commit it wakes whoever follows the log.
func (b *Broker) update(ctx context.Context, fn func(tx store.Tx) error) error {
	if err := b.store.Update(ctx, fn); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return &Error{Kind: KindState, Msg: "the request changed while this call was being made; try again", Err: err}
		}
		return internal(err)
	}
	b.entriesAppended()
	b.kickEvents()
	return nil
}

// entriesAppended wakes WatchEntries streams and the checkpointer.
func (b *Broker) entriesAppended() {
	b.wakeEntryWatchers()
	b.cfg.Observer.EntriesAppended()
}

// wakeEntryWatchers wakes WatchEntries streams.
func (b *Broker) wakeEntryWatchers() {
	b.watchMu.Lock()
	close(b.appended)
	b.appended = make(chan struct{})
	b.watchMu.Unlock()
}

// Appended returns a channel closed at the next commit.
func (b *Broker) Appended() <-chan struct{} {
	b.watchMu.Lock()
	defer b.watchMu.Unlock()
	return b.appended
}

// Origin is the log's origin.
func (b *Broker) Origin() string { return b.cfg.Origin }

func (b *Broker) view(ctx context.Context, fn func(r store.Reader) error) error {
	if err := b.store.View(ctx, fn); err != nil {
		return internal(err)
	}
	return nil
}

// loadRequest reads a request and hides it from callers who may not see it.
func (b *Broker) loadRequest(ctx context.Context, r store.Reader, id, caller string) (*request.Request, error) {
	req, err := r.Request(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, notFound(id)
	}
	if err != nil {
		return nil, err
	}
	if !b.canSee(b.Policy(), req, caller) {
		return nil, notFound(id)
	}
	if err := attachBindings(ctx, r, req); err != nil {
		return nil, err
	}
	return req, nil
}

// canSee: the requester, anyone who may review it, the account's owners
// and auditors.
func (b *Broker) canSee(p *policy.Policy, r *request.Request, caller string) bool {
	if caller == r.Requester || p.IsAuditor(caller) || p.Eligible(r.Rule, caller) {
		return true
	}
	if a, ok := p.Account(r.Account); ok && p.IsOwner(a, caller) {
		return true
	}
	return false
}
