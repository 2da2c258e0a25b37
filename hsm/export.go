package hsm

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"

	"github.com/go-jose/go-jose/v4"
	"golang.org/x/mod/sumdb/note"
)

// PublicPEM encodes a public key as a PEM "PUBLIC KEY" block (SPKI), the
// form openssl reads with -pubin or dgst -verify.
func PublicPEM(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// Thumbprint is the RFC 7638 JWK thumbprint (SHA-256, base64url without
// padding), used as the kid of every key the broker publishes.
func Thumbprint(pub crypto.PublicKey) (string, error) {
	jwk := jose.JSONWebKey{Key: pub}
	tp, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(tp), nil
}

// JWK returns the public key as a JSON Web Key with kid = RFC 7638 thumbprint.
func JWK(pub crypto.PublicKey) (jose.JSONWebKey, error) {
	kid, err := Thumbprint(pub)
	if err != nil {
		return jose.JSONWebKey{}, err
	}
	alg := string(jose.ES256)
	if _, ok := pub.(ed25519.PublicKey); ok {
		alg = string(jose.EdDSA)
	}
	return jose.JSONWebKey{Key: pub, KeyID: kid, Algorithm: alg, Use: "sig"}, nil
}

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
