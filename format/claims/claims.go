// Package claims defines the claims of the broker's access tokens (RFC
// 9068 §2.2 and the broker's private claims) and reads them the way
// relying parties do. A token's claims are logged byte for byte in its
// token_issued entry; the offline verifier judges a token by them, so it
// must read exactly what go-jose (the SDK's verifier, and most Go relying
// parties) reads: keys compared case-sensitively, and no claim a relying
// party could see with a value other than the verifier's.
package claims

import (
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/bgbroker/breakglass/format/strictjson"
)

// Claims are the claims of an access token, in the order the broker
// writes them. Every claim is always present.
type Claims struct {
	Issuer    string           `json:"iss"`
	Subject   string           `json:"sub"`
	Audience  jwt.Audience     `json:"aud"`
	IssuedAt  *jwt.NumericDate `json:"iat"`
	NotBefore *jwt.NumericDate `json:"nbf"`
	Expiry    *jwt.NumericDate `json:"exp"`
	ID        string           `json:"jti"`
	ClientID  string           `json:"client_id"`
	Account   string           `json:"bg_account"`
	Request   string           `json:"bg_request"`
	Approvers []string         `json:"bg_approvers"`
	Drill     bool             `json:"bg_drill"`
}

// Names are the claim names, exactly as written.
var Names = []string{"iss", "sub", "aud", "iat", "nbf", "exp", "jti", "client_id", "bg_account", "bg_request", "bg_approvers", "bg_drill"}

// NumericDate truncates t to whole seconds, so that a token's exp is never
// after the instant it stands for.
func NumericDate(t time.Time) *jwt.NumericDate { return jwt.NewNumericDate(t.Truncate(time.Second)) }

// MaxBytes bounds the claims Parse reads.
const MaxBytes = 16 << 10

// Parse reads claims as the broker writes them and refuses anything else:
// the bytes must be the canonical encoding of the claims they hold. That
// rules out a duplicate claim (encoding/json and go-jose keep the last,
// other libraries the first), a claim whose name differs from one of
// Names only in case (encoding/json would read "Exp" as exp; go-jose, case
// sensitive, reads exp and ignores it), any other claim, a number with a
// fraction or an exponent (go-jose truncates 1.9e9; the broker writes
// whole seconds), an audience other than one string, and a missing or
// null time. What Parse accepts, go-jose reads the same, claim by claim
// (FuzzAgreeWithGoJose).
func Parse(b []byte) (*Claims, error) {
	if len(b) > MaxBytes {
		return nil, fmt.Errorf("the claims are %d bytes; at most %d", len(b), MaxBytes)
	}
	var c Claims
	if err := strictjson.Decode(b, &c); err != nil {
		return nil, fmt.Errorf("the claims are not the broker's encoding of token claims: %w", err)
	}
	if c.IssuedAt == nil || c.NotBefore == nil || c.Expiry == nil {
		return nil, fmt.Errorf("the claims lack iat, nbf or exp")
	}
	if len(c.Audience) != 1 {
		return nil, fmt.Errorf("the claims name %d audiences; a broker token names exactly one", len(c.Audience))
	}
	return &c, nil
}
