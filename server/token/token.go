// Package token mints the broker's access tokens: RFC 9068 JWTs signed
// with ES256 by the HSM token key, and the JWKS that verifies them.
package token

import (
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/bgbroker/breakglass/format/claims"
	"github.com/bgbroker/breakglass/format/keyid"
)

// Type is the JWT typ header of RFC 9068 access tokens.
const Type = "at+jwt"

// Signer is a key that signs with a context: the HSM token key.
type Signer interface {
	Public() crypto.PublicKey
	SignContext(ctx context.Context, digest []byte, opts crypto.SignerOpts) ([]byte, error)
}

// Claims are the claims of an access token (format/claims).
type Claims = claims.Claims

// Minted is a signed token and what the broker may keep of it.
type Minted struct {
	// Token is the compact JWS; it is returned to the requester once and
	// never stored or logged.
	Token string
	// SHA256 is the hex SHA-256 of Token, which records keep instead.
	SHA256 string
	// ClaimsJSON is the payload as signed.
	ClaimsJSON []byte
	KID        string
}

// Minter signs tokens with one key.
type Minter struct {
	key    Signer
	kid    string
	issuer string
}

// AccountIssuer is the issuer of an account with a token key of its own:
// its own discovery document and JWKS live under it, so that a relying
// party pinned to the account uses stock OpenID discovery and trusts that
// account's keys alone. account "" is the broker's own issuer.
func AccountIssuer(issuer, account string) string {
	if account == "" {
		return issuer
	}
	return issuer + "/accounts/" + account
}

// NewMinter returns a minter for key with the given issuer (the broker's
// HTTPS base URL).
func NewMinter(key Signer, issuer string) (*Minter, error) {
	kid, err := keyid.Thumbprint(key.Public())
	if err != nil {
		return nil, err
	}
	return &Minter{key: key, kid: kid, issuer: issuer}, nil
}

// KID is the RFC 7638 thumbprint of the signing key.
func (m *Minter) KID() string { return m.kid }

// Issuer is the iss of every token.
func (m *Minter) Issuer() string { return m.issuer }

// Mint signs c (with iss set to the minter's issuer).
func (m *Minter) Mint(ctx context.Context, c Claims) (*Minted, error) {
	c.Issuer = m.issuer
	if c.Approvers == nil {
		c.Approvers = []string{}
	}
	opaque := cryptosigner.Opaque(ctxSigner{ctx: ctx, key: m.key})
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: opaque},
		(&jose.SignerOptions{}).WithType(Type).WithHeader(jose.HeaderKey("kid"), m.kid))
	if err != nil {
		return nil, err
	}
	payload, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		return nil, fmt.Errorf("signing token: %w", err)
	}
	compact, err := jws.CompactSerialize()
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte(compact))
	return &Minted{Token: compact, SHA256: hex.EncodeToString(sum[:]), ClaimsJSON: payload, KID: m.kid}, nil
}

// ctxSigner binds a context to the HSM key for go-jose, whose signer
// interface has none.
type ctxSigner struct {
	ctx context.Context
	key Signer
}

func (s ctxSigner) Public() crypto.PublicKey { return s.key.Public() }

func (s ctxSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return s.key.SignContext(s.ctx, digest, opts)
}

// JWKS is the key set that verifies tokens. Keys are published with their
// kid, alg ES256 and use sig.
func JWKS(keys ...crypto.PublicKey) ([]byte, error) {
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{}}
	for _, k := range keys {
		jwk, err := keyid.JWK(k)
		if err != nil {
			return nil, err
		}
		set.Keys = append(set.Keys, jwk)
	}
	return json.Marshal(set)
}

// NumericDate truncates t to whole seconds, so that a token's exp is never
// after the instant it stands for.
func NumericDate(t time.Time) *jwt.NumericDate { return claims.NumericDate(t) }

// Public is the token key's public key.
func (m *Minter) Public() crypto.PublicKey { return m.key.Public() }
