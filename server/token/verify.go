package token

import (
	"crypto"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/bgbroker/breakglass/format/keyid"
)

// IssuerKeys are the public keys of one issuer.
type IssuerKeys struct {
	Issuer string
	Keys   []crypto.PublicKey
}

// MaxTokenBytes bounds what Verify parses.
const MaxTokenBytes = 16 << 10

// ErrInvalid marks a token that is not one of the broker's: malformed, not
// canonical, of another type, signed by a key of no issuer given, or
// carrying another issuer than its key's.
var ErrInvalid = errors.New("not a token of this broker")

// Verify checks a compact token's form and signature against the keys of
// the issuers given, and that its iss is the issuer whose key signed it.
// It does not check times or the token's record: the caller does.
func Verify(raw string, issuers []IssuerKeys) (*Claims, error) {
	if len(raw) > MaxTokenBytes {
		return nil, fmt.Errorf("%w: %d bytes", ErrInvalid, len(raw))
	}
	if !canonical(raw) {
		return nil, fmt.Errorf("%w: not in canonical base64url", ErrInvalid)
	}
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil || len(tok.Headers) != 1 {
		return nil, fmt.Errorf("%w: malformed", ErrInvalid)
	}
	h := tok.Headers[0]
	if typ, _ := h.ExtraHeaders[jose.HeaderType].(string); typ != Type {
		return nil, fmt.Errorf("%w: typ %q", ErrInvalid, typ)
	}
	for _, is := range issuers {
		for _, k := range is.Keys {
			if kid, err := keyid.Thumbprint(k); err != nil || kid != h.KeyID {
				continue
			}
			var c Claims
			if err := tok.Claims(k, &c); err != nil {
				return nil, fmt.Errorf("%w: signature", ErrInvalid)
			}
			if c.Issuer != is.Issuer {
				return nil, fmt.Errorf("%w: iss %q is not its key's issuer", ErrInvalid, c.Issuer)
			}
			if c.ID == "" || c.Expiry == nil || c.IssuedAt == nil || c.Subject == "" {
				return nil, fmt.Errorf("%w: a required claim is missing", ErrInvalid)
			}
			return &c, nil
		}
	}
	return nil, fmt.Errorf("%w: unknown kid", ErrInvalid)
}

// canonical reports whether raw is three parts of unpadded base64url with
// no stray bits, so that one token has one spelling (go-jose also accepts
// line breaks and non-zero padding bits).
func canonical(raw string) bool {
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return false
	}
	for _, p := range parts {
		b, err := base64.RawURLEncoding.Strict().DecodeString(p)
		if err != nil || base64.RawURLEncoding.EncodeToString(b) != p {
			return false
		}
	}
	return true
}
