package hsm

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"fmt"

	"golang.org/x/mod/sumdb/note"
)

// NoteVerifierKey returns the C2SP signed-note verifier key
// "name+hash+base64" for an Ed25519 public key, as golang.org/x/mod/sumdb/note
// reads it.
func NoteVerifierKey(name string, pub crypto.PublicKey) (string, error) {
	edpub, ok := pub.(ed25519.PublicKey)
	if !ok {
		return "", fmt.Errorf("signed-note keys are Ed25519; this key is %T", pub)
	}
	return note.NewEd25519VerifierKey(name, edpub)
}

// NoteSigner signs C2SP signed notes with an Ed25519 key in the HSM.
type NoteSigner struct {
	ctx  context.Context
	key  *Key
	name string
	hash uint32
}

var _ note.Signer = (*NoteSigner)(nil)

// NewNoteSigner returns a note.Signer named name over an EdDSA key. ctx bounds
// each signature (note.Signer has no context of its own).
func NewNoteSigner(ctx context.Context, key *Key, name string) (*NoteSigner, error) {
	vkey, err := NoteVerifierKey(name, key.Public())
	if err != nil {
		return nil, err
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, fmt.Errorf("note name %q: %w", name, err)
	}
	return &NoteSigner{ctx: ctx, key: key, name: name, hash: v.KeyHash()}, nil
}

// Name implements note.Signer.
func (s *NoteSigner) Name() string { return s.name }

// KeyHash implements note.Signer.
func (s *NoteSigner) KeyHash() uint32 { return s.hash }

// Sign implements note.Signer.
func (s *NoteSigner) Sign(msg []byte) ([]byte, error) {
	return s.key.SignContext(s.ctx, msg, crypto.Hash(0))
}

// Verifier returns the matching note verifier.
func (s *NoteSigner) Verifier() (note.Verifier, error) {
	vkey, err := NoteVerifierKey(s.name, s.key.Public())
	if err != nil {
		return nil, err
	}
	return note.NewVerifier(vkey)
}
