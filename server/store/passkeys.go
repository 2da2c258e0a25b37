package store

import (
	"context"
	"time"
)

// Passkey states: pending from its creation in the console until its
// owner confirms it (bgctl passkey confirm), bound from then on, removed
// when its owner or an admin ends the binding. A removed credential ID
// stays, so it cannot be bound again.
const (
	PasskeyPending = "pending"
	PasskeyBound   = "bound"
	PasskeyRemoved = "removed"
)

// Passkey is an approver's WebAuthn credential.
type Passkey struct {
	// CredentialID is the WebAuthn credential ID (rawId).
	CredentialID []byte
	Principal    string
	// PublicKey is the credential's COSE_Key.
	PublicKey []byte
	RPID      string
	WebOrigin string
	// Label is the name its owner gave it ("laptop", "YubiKey").
	Label string
	State string
	// CodeHash is the hex SHA-256 of the one-time code that confirms a
	// pending passkey; the code itself is never stored.
	CodeHash  string
	CreatedAt time.Time
	// ExpiresAt is when a pending passkey's code lapses.
	ExpiresAt time.Time
	BoundAt   time.Time
	// BoundEntry is the index of its passkey_bound entry.
	BoundEntry uint64
	RemovedAt  time.Time
	// Counter is the signature counter of its last assertion; Flags the
	// flags byte of its registration (backup eligibility is checked
	// against it at every assertion).
	Counter uint32
	Flags   byte
	// Statement, Signature and Cert are the binding statement
	// (format/passkey), its signature and the certificate (DER) that made it.
	Statement []byte
	Signature []byte
	Cert      []byte
}

// PasskeyReader reads passkeys.
type PasskeyReader interface {
	// Passkey returns a credential by ID, or ErrNotFound.
	Passkey(ctx context.Context, id []byte) (*Passkey, error)
	// PendingPasskey returns the pending credential whose code has this
	// hash, or ErrNotFound.
	PendingPasskey(ctx context.Context, codeHash string) (*Passkey, error)
	// PasskeysOf returns a principal's credentials, pending, bound and
	// removed, oldest first, at most limit.
	PasskeysOf(ctx context.Context, principal string, limit int) ([]Passkey, error)
}

// PasskeyWriter records passkeys.
type PasskeyWriter interface {
	// AddPasskey inserts a pending credential; a credential ID already
	// stored is ErrConflict.
	AddPasskey(ctx context.Context, p Passkey) error
	// SavePasskey stores a credential's state, binding, counter and flags.
	SavePasskey(ctx context.Context, p Passkey) error
	// PruneExpiredPasskeys deletes up to limit pending credentials whose
	// code lapsed at or before now, and returns how many.
	PruneExpiredPasskeys(ctx context.Context, now time.Time, limit int) (int, error)
}
