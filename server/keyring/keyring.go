// Package keyring holds the broker's signing keys as the key registry names
// them: the active token key of the broker and of each account with its
// own, the retired token keys still published until their last token
// expires, and the active audit and checkpoint keys. It rotates keys, and
// destroys retired token keys in the HSM once nothing they signed is valid.
package keyring

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/keyid"
	"github.com/bgbroker/breakglass/format/statement"
	"github.com/bgbroker/breakglass/hsm"
	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/token"
)

// Registrar records key changes in the audit log and the registry in one
// transaction; the broker implements it.
type Registrar interface {
	RecordKey(ctx context.Context, typ audit.Type, rec store.KeyRecord, change audit.KeyChange, retire *store.KeyRecord) error
}

// Config builds a Ring.
type Config struct {
	Module *hsm.Module
	Store  store.Store
	// Issuer is the iss of the broker's tokens; an account with a token
	// key of its own issues as token.AccountIssuer(Issuer, account).
	Issuer string
	// Origin names the checkpoint key's signed notes.
	Origin string
	Log    *slog.Logger
	Now    func() time.Time
}

// Ring is the set of keys in use. It is safe for concurrent use and is
// reloaded from the registry when it changes.
type Ring struct {
	cfg Config

	mu      sync.RWMutex
	records []store.KeyRecord
	keys    map[string]*hsm.Key      // kid -> key (active and retired, not destroyed)
	minters map[string]*token.Minter // kid -> minter (token keys)
	active  map[string]string        // purpose/account -> kid
}

// New returns an empty ring; Bootstrap and Load fill it.
func New(cfg Config) *Ring {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Ring{cfg: cfg, keys: map[string]*hsm.Key{}, minters: map[string]*token.Minter{}, active: map[string]string{}}
}

// SetOrigin sets the log's origin, the name of checkpoint keys' notes,
// once it is known (it may derive from the checkpoint key itself).
func (r *Ring) SetOrigin(origin string) {
	r.mu.Lock()
	r.cfg.Origin = origin
	r.mu.Unlock()
}

func slot(purpose hsm.Purpose, account string) string { return string(purpose) + "/" + account }

// Want names a key the configuration expects: by label, for a purpose and
// (for token keys of accounts) an account.
type Want struct {
	Purpose hsm.Purpose
	Account string
	Label   string
}

// Bootstrap registers, for each wanted slot the registry has no active key
// for, the configured key. A slot that already has one keeps it: after a
// rotation the registry, not the configuration, names the active key.
func (r *Ring) Bootstrap(ctx context.Context, reg Registrar, wants []Want) error {
	var recs []store.KeyRecord
	if err := r.cfg.Store.View(ctx, func(rd store.Reader) error {
		var err error
		recs, err = rd.Keys(ctx)
		return err
	}); err != nil {
		return err
	}
	for _, w := range wants {
		var active *store.KeyRecord
		for i := range recs {
			if recs[i].State == store.KeyActive && recs[i].Purpose == string(w.Purpose) && recs[i].Account == w.Account {
				active = &recs[i]
			}
		}
		if active != nil {
			if active.Label != w.Label {
				r.cfg.Log.Info("keyring: the registry's active key differs from the configured one (it was rotated)", "purpose", w.Purpose, "account", w.Account, "active", active.Label, "configured", w.Label)
			}
			continue
		}
		k, err := r.cfg.Module.Signer(ctx, w.Label, w.Purpose)
		if err != nil {
			return fmt.Errorf("%s key %q: %w", w.Purpose, w.Label, err)
		}
		rec, change, err := r.describe(k, w.Purpose, w.Account)
		if err != nil {
			return err
		}
		change.Reason = "configured"
		if err := reg.RecordKey(ctx, audit.TypeKeyActivated, rec, change, nil); err != nil {
			return err
		}
	}
	return r.Load(ctx)
}

func (r *Ring) describe(k *hsm.Key, p hsm.Purpose, account string) (store.KeyRecord, audit.KeyChange, error) {
	kid, err := keyid.Thumbprint(k.Public())
	if err != nil {
		return store.KeyRecord{}, audit.KeyChange{}, err
	}
	pemBytes, err := keyid.PublicPEM(k.Public())
	if err != nil {
		return store.KeyRecord{}, audit.KeyChange{}, err
	}
	rec := store.KeyRecord{KID: kid, Purpose: string(p), Account: account, Label: k.Label(), KeyID: k.Info().IDHex(),
		PublicPEM: string(pemBytes), State: store.KeyActive, ActivatedAt: r.cfg.Now().UTC()}
	ch := audit.KeyChange{Purpose: string(p), Account: account, KID: kid, Label: k.Label(), PublicPEM: string(pemBytes)}
	if p == hsm.PurposeCheckpoint {
		if ch.NoteKey, err = hsm.NoteVerifierKey(r.cfg.Origin, k.Public()); err != nil {
			return rec, ch, err
		}
	}
	return rec, ch, nil
}

// Load reads the registry and finds every key it names in the HSM,
// checking each is still the public key the registry recorded.
func (r *Ring) Load(ctx context.Context) error { return r.load(ctx, nil) }

// Preload is Load for a registry that may still lack some of the wanted
// keys (a new deployment, or a new account with its own key): those slots
// are filled from the configuration until Bootstrap records them.
func (r *Ring) Preload(ctx context.Context, wants []Want) error { return r.load(ctx, wants) }

func (r *Ring) load(ctx context.Context, wants []Want) error {
	var recs []store.KeyRecord
	if err := r.cfg.Store.View(ctx, func(rd store.Reader) error {
		var err error
		recs, err = rd.Keys(ctx)
		return err
	}); err != nil {
		return err
	}
	keys := map[string]*hsm.Key{}
	minters := map[string]*token.Minter{}
	active := map[string]string{}
	for _, rec := range recs {
		if rec.State == store.KeyDestroyed {
			continue
		}
		if rec.State == store.KeyActive {
			active[slot(hsm.Purpose(rec.Purpose), rec.Account)] = rec.KID
		}
		if old, ok := r.keysSnapshot()[rec.KID]; ok {
			keys[rec.KID] = old
		} else {
			k, err := r.cfg.Module.Signer(ctx, rec.Label, hsm.Purpose(rec.Purpose))
			if err != nil {
				if rec.State == store.KeyRetired {
					r.cfg.Log.Warn("keyring: a retired key is missing from the HSM", "kid", rec.KID, "label", rec.Label, "err", err)
					continue
				}
				return fmt.Errorf("active %s key %q: %w", rec.Purpose, rec.Label, err)
			}
			if kid, _ := keyid.Thumbprint(k.Public()); kid != rec.KID {
				return fmt.Errorf("key %q in the HSM is not the key the registry recorded (kid %s, registry %s): refusing to use it", rec.Label, kid, rec.KID)
			}
			keys[rec.KID] = k
		}
		if rec.Purpose == string(hsm.PurposeToken) {
			m, err := token.NewMinter(keys[rec.KID], token.AccountIssuer(r.cfg.Issuer, rec.Account))
			if err != nil {
				return err
			}
			minters[rec.KID] = m
		}
	}
	for _, w := range wants {
		if _, ok := active[slot(w.Purpose, w.Account)]; ok {
			continue
		}
		k, err := r.cfg.Module.Signer(ctx, w.Label, w.Purpose)
		if err != nil {
			return fmt.Errorf("%s key %q: %w", w.Purpose, w.Label, err)
		}
		rec, _, err := r.describe(k, w.Purpose, w.Account)
		if err != nil {
			return err
		}
		keys[rec.KID], active[slot(w.Purpose, w.Account)] = k, rec.KID
		recs = append(recs, rec)
		if w.Purpose == hsm.PurposeToken {
			if minters[rec.KID], err = token.NewMinter(k, token.AccountIssuer(r.cfg.Issuer, w.Account)); err != nil {
				return err
			}
		}
	}
	for _, s := range []hsm.Purpose{hsm.PurposeToken, hsm.PurposeAudit, hsm.PurposeCheckpoint} {
		if _, ok := active[slot(s, "")]; !ok {
			return fmt.Errorf("keyring: no active %s key in the registry", s)
		}
	}
	r.mu.Lock()
	r.records, r.keys, r.minters, r.active = recs, keys, minters, active
	r.mu.Unlock()
	return nil
}

func (r *Ring) keysSnapshot() map[string]*hsm.Key {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.keys
}

// Audit returns the active audit key.
func (r *Ring) Audit() *hsm.Key { return r.activeKey(hsm.PurposeAudit, "") }

// Checkpoint returns the active checkpoint key.
func (r *Ring) Checkpoint() *hsm.Key { return r.activeKey(hsm.PurposeCheckpoint, "") }

func (r *Ring) activeKey(p hsm.Purpose, account string) *hsm.Key {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.keys[r.active[slot(p, account)]]
}

// Minter returns the minter of an account's active token key: its own if
// it has one, else the broker's.
func (r *Ring) Minter(account string) *token.Minter {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if kid, ok := r.active[slot(hsm.PurposeToken, account)]; ok && account != "" {
		return r.minters[kid]
	}
	return r.minters[r.active[slot(hsm.PurposeToken, "")]]
}

// HasOwnKey reports whether an account has its own token key.
func (r *Ring) HasOwnKey(account string) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	_, ok := r.active[slot(hsm.PurposeToken, account)]
	return ok && account != ""
}

// TokenKeys returns the public keys that verify tokens of account ("" for
// the broker's set): active and retired, not destroyed. An account with
// its own key is not in the broker's set, and the broker's keys are not in
// its set, so a relying party pinned to one account never accepts
// another's tokens.
func (r *Ring) TokenKeys(account string) []crypto.PublicKey {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []crypto.PublicKey
	for _, rec := range r.records {
		if rec.Purpose != string(hsm.PurposeToken) || rec.Account != account || rec.State == store.KeyDestroyed {
			continue
		}
		if k, ok := r.keys[rec.KID]; ok {
			out = append(out, k.Public())
		}
	}
	return out
}

// Entry is a key of the registry that is not destroyed, with its HSM key
// (nil when a retired key is missing from the HSM).
type Entry struct {
	Record store.KeyRecord
	Key    *hsm.Key
}

// KeysOf returns the keys of a purpose that are not destroyed, the
// active one first, then the retired ones newest first.
func (r *Ring) KeysOf(p hsm.Purpose) []Entry {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []Entry
	for i := len(r.records) - 1; i >= 0; i-- {
		rec := r.records[i]
		if rec.Purpose != string(p) || rec.State == store.KeyDestroyed {
			continue
		}
		e := Entry{Record: rec, Key: r.keys[rec.KID]}
		if rec.State == store.KeyActive {
			out = append([]Entry{e}, out...)
		} else {
			out = append(out, e)
		}
	}
	return out
}

// Records returns the registry as loaded.
func (r *Ring) Records() []store.KeyRecord {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return append([]store.KeyRecord(nil), r.records...)
}

// Keys returns every key in use (for health checks).
func (r *Ring) Keys() []*hsm.Key {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []*hsm.Key
	for _, kid := range sortedKeys(r.active) {
		out = append(out, r.keys[r.active[kid]])
	}
	return out
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Rotate makes a new key for purpose (and account, for token keys) in the
// HSM, records it active and the old one retired, with an audited entry;
// for audit and checkpoint keys the entry carries the rotation statement
// signed by both keys. label names the new key (generated when empty).
func (r *Ring) Rotate(ctx context.Context, reg Registrar, p hsm.Purpose, account, label, reason string) (store.KeyRecord, error) {
	return r.RotateWith(ctx, reg, p, account, label, reason, nil)
}

// RotateWith is Rotate with a step between making the new key and
// recording it active (an X.509 CA key needs its CA certificate first);
// when prepare fails, nothing is recorded.
func (r *Ring) RotateWith(ctx context.Context, reg Registrar, p hsm.Purpose, account, label, reason string, prepare func(*hsm.Key) error) (store.KeyRecord, error) {
	return r.rotate(ctx, reg, p, account, label, reason, prepare, false)
}

// RotateRevoking rotates a CA key and retires the old one as revoked,
// with every certificate it signed that has not expired: for a CA key
// that may be compromised. The old key leaves /ssh/ca.pub or /x509/ca.pem,
// an SSH CA key is listed whole in the KRL, and an X.509 CA key's CRL
// (signed while its key is still in the HSM) lists everything it signed.
func (r *Ring) RotateRevoking(ctx context.Context, reg Registrar, p hsm.Purpose, label, reason string, prepare func(*hsm.Key) error) (store.KeyRecord, error) {
	if p != hsm.PurposeSSHCA && p != hsm.PurposeX509CA {
		return store.KeyRecord{}, fmt.Errorf("only CA keys are revoked with what they signed; a %s key is rotated and retired", p)
	}
	return r.rotate(ctx, reg, p, "", label, reason, prepare, true)
}

func (r *Ring) rotate(ctx context.Context, reg Registrar, p hsm.Purpose, account, label, reason string, prepare func(*hsm.Key) error, revoke bool) (store.KeyRecord, error) {
	if account != "" && p != hsm.PurposeToken {
		return store.KeyRecord{}, errors.New("only token keys belong to accounts")
	}
	now := r.cfg.Now().UTC()
	if label == "" {
		parts := []string{string(p)}
		if account != "" {
			parts = append(parts, account)
		}
		label = strings.Join(append(parts, now.Format("20060102T150405")), "-")
	}
	r.mu.RLock()
	oldKID := r.active[slot(p, account)]
	old := r.keys[oldKID]
	var oldRec *store.KeyRecord
	for i := range r.records {
		if r.records[i].KID == oldKID {
			rec := r.records[i]
			oldRec = &rec
		}
	}
	r.mu.RUnlock()
	if revoke && oldRec == nil {
		return store.KeyRecord{}, fmt.Errorf("no active %s key to revoke", p)
	}
	if _, err := r.cfg.Module.GenerateKey(ctx, hsm.GenerateRequest{Purpose: p, Label: label}); err != nil {
		return store.KeyRecord{}, err
	}
	k, err := r.cfg.Module.Signer(ctx, label, p)
	if err != nil {
		return store.KeyRecord{}, err
	}
	if prepare != nil {
		if err := prepare(k); err != nil {
			return store.KeyRecord{}, err
		}
	}
	rec, change, err := r.describe(k, p, account)
	if err != nil {
		return rec, err
	}
	change.Previous, change.Reason = oldKID, reason
	if p == hsm.PurposeAudit || p == hsm.PurposeCheckpoint {
		if old == nil {
			return rec, fmt.Errorf("no active %s key to rotate from", p)
		}
		stmt, err := statement.Rotation(string(p), account, oldKID, rec.KID, k.Public(), now)
		if err != nil {
			return rec, err
		}
		if change.OldSignature, err = old.SignMessage(ctx, stmt); err != nil {
			return rec, fmt.Errorf("the old key could not sign the rotation: %w", err)
		}
		if change.NewSignature, err = k.SignMessage(ctx, stmt); err != nil {
			return rec, fmt.Errorf("the new key could not sign the rotation: %w", err)
		}
		change.Rotation = stmt
	}
	if oldRec != nil {
		oldRec.State, oldRec.RetiredAt = store.KeyRetired, now
		if revoke {
			oldRec.RevokedAt = now
		}
	}
	if err := reg.RecordKey(ctx, audit.TypeKeyActivated, rec, change, oldRec); err != nil {
		return rec, err
	}
	return rec, r.Load(ctx)
}

// DestroyExpired destroys, in the HSM, every retired token or CA key whose
// last token or certificate has expired, after recording it (the key
// leaves the JWKS, /ssh/ca.pub or /x509/ca.pem).
func (r *Ring) DestroyExpired(ctx context.Context, reg Registrar) (int, error) {
	now := r.cfg.Now()
	n := 0
	for _, rec := range r.Records() {
		ca := rec.Purpose == string(hsm.PurposeSSHCA) || rec.Purpose == string(hsm.PurposeX509CA)
		if (rec.Purpose != string(hsm.PurposeToken) && !ca) || rec.State != store.KeyRetired {
			continue
		}
		var last time.Time
		if err := r.cfg.Store.View(ctx, func(rd store.Reader) error {
			var err error
			if ca {
				last, err = rd.LastCertificateExpiry(ctx, rec.KID)
			} else {
				last, err = rd.LastTokenExpiry(ctx, rec.KID)
			}
			return err
		}); err != nil {
			return n, err
		}
		if now.Before(last) {
			continue
		}
		reason := "its last token expired"
		if ca {
			reason = "its last certificate expired"
		}
		rec.State, rec.DestroyedAt = store.KeyDestroyed, now.UTC()
		if err := reg.RecordKey(ctx, audit.TypeKeyDestroyed, rec, audit.KeyChange{Purpose: rec.Purpose, Account: rec.Account, KID: rec.KID, Label: rec.Label,
			Reason: reason}, nil); err != nil {
			return n, err
		}
		id, err := hex.DecodeString(rec.KeyID)
		if err != nil {
			return n, err
		}
		if err := r.cfg.Module.DestroyKey(ctx, rec.Label, id); err != nil {
			r.cfg.Log.Error("keyring: a retired key could not be destroyed in the HSM", "label", rec.Label, "err", err)
		}
		n++
	}
	if n > 0 {
		return n, r.Load(ctx)
	}
	return n, nil
}

// PublicFromPEM parses a registry PEM.
func PublicFromPEM(s string) (crypto.PublicKey, error) {
	blk, _ := pem.Decode([]byte(s))
	if blk == nil {
		return nil, errors.New("not PEM")
	}
	return x509.ParsePKIXPublicKey(blk.Bytes)
}

// AuditKey returns the active audit key and its kid.
func (r *Ring) AuditKey() (audit.Signer, string) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	kid := r.active[slot(hsm.PurposeAudit, "")]
	return r.keys[kid], kid
}

// AuditKeyFor returns the audit key a registry record names: one the ring
// holds, or, when another process rotated it in since the ring was last
// loaded, the key found in the HSM by its label (and checked to be the
// key the registry recorded). It lets a broker sign every entry with the
// audit key in force in the very transaction that appends it.
func (r *Ring) AuditKeyFor(ctx context.Context, rec store.KeyRecord) (audit.Signer, error) {
	return r.keyFor(ctx, rec)
}

func (r *Ring) keyFor(ctx context.Context, rec store.KeyRecord) (*hsm.Key, error) {
	r.mu.RLock()
	k, ok := r.keys[rec.KID]
	r.mu.RUnlock()
	if ok {
		return k, nil
	}
	k, err := r.cfg.Module.Signer(ctx, rec.Label, hsm.Purpose(rec.Purpose))
	if err != nil {
		return nil, err
	}
	if kid, _ := keyid.Thumbprint(k.Public()); kid != rec.KID {
		return nil, fmt.Errorf("key %q in the HSM is not the key the registry recorded (kid %s, registry %s): refusing to use it", rec.Label, kid, rec.KID)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	// Copied, not changed in place: load reads the old map unlocked.
	keys := make(map[string]*hsm.Key, len(r.keys)+1)
	for kid, k := range r.keys {
		keys[kid] = k
	}
	keys[rec.KID] = k
	r.keys = keys
	return k, nil
}

// MinterFor returns the minter of the token key a registry record names,
// finding the key in the HSM when another process rotated it in since the
// ring was last loaded: tokens are signed by the key in force.
func (r *Ring) MinterFor(ctx context.Context, rec store.KeyRecord) (*token.Minter, error) {
	r.mu.RLock()
	m, ok := r.minters[rec.KID]
	r.mu.RUnlock()
	if ok {
		return m, nil
	}
	k, err := r.keyFor(ctx, rec)
	if err != nil {
		return nil, err
	}
	if m, err = token.NewMinter(k, token.AccountIssuer(r.cfg.Issuer, rec.Account)); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	minters := make(map[string]*token.Minter, len(r.minters)+1)
	for kid, m := range r.minters {
		minters[kid] = m
	}
	minters[rec.KID] = m
	r.minters = minters
	return m, nil
}

// activeFromRegistry returns the key the registry names active for a
// purpose of the broker's own, or the ring's when the registry has none.
func (r *Ring) activeFromRegistry(ctx context.Context, p hsm.Purpose) (*hsm.Key, error) {
	var rec store.KeyRecord
	err := r.cfg.Store.View(ctx, func(rd store.Reader) error {
		var err error
		rec, err = rd.ActiveKey(ctx, string(p), "")
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		return r.activeKey(p, ""), nil
	}
	if err != nil {
		return nil, err
	}
	return r.keyFor(ctx, rec)
}

// NoteSigner signs checkpoints with whichever checkpoint key is active.
type NoteSigner struct {
	Ring   *Ring
	Origin string
	Ctx    context.Context
}

// signer is the checkpoint key the registry names active now, so that a
// checkpoint of the log after a rotation (made by another process) is
// never signed by the retired key: the size was read before, so the key
// read here was in force at it or came after it, and a key may sign the
// log as it was before its activation.
func (n NoteSigner) signer() (*hsm.NoteSigner, error) {
	k, err := n.Ring.activeFromRegistry(n.Ctx, hsm.PurposeCheckpoint)
	if err != nil {
		return nil, err
	}
	return hsm.NewNoteSigner(n.Ctx, k, n.Origin)
}

// Resolve returns the signer of the checkpoint key in force now, so that
// one checkpoint's key hash and signature come from the same key.
func (n NoteSigner) Resolve(ctx context.Context) (note.Signer, error) {
	k, err := n.Ring.activeFromRegistry(ctx, hsm.PurposeCheckpoint)
	if err != nil {
		return nil, err
	}
	return hsm.NewNoteSigner(ctx, k, n.Origin)
}

// Name implements note.Signer.
func (n NoteSigner) Name() string { return n.Origin }

// KeyHash implements note.Signer.
func (n NoteSigner) KeyHash() uint32 {
	s, err := n.signer()
	if err != nil {
		return 0
	}
	return s.KeyHash()
}

// Sign implements note.Signer.
func (n NoteSigner) Sign(msg []byte) ([]byte, error) {
	s, err := n.signer()
	if err != nil {
		return nil, err
	}
	return s.Sign(msg)
}
