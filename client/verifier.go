package client

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
)

// Claims are the claims of a verified access token.
type Claims struct {
	jwt.Claims
	ClientID  string   `json:"client_id"`
	Account   string   `json:"bg_account"`
	Request   string   `json:"bg_request"`
	Approvers []string `json:"bg_approvers"`
	Drill     bool     `json:"bg_drill"`
	// KeyID is the kid the token was signed with.
	KeyID string `json:"-"`
}

// KeySource fetches the broker's JWKS document.
type KeySource interface {
	FetchJWKS(ctx context.Context) ([]byte, error)
}

// HTTPKeys fetches the JWKS over HTTPS.
type HTTPKeys struct {
	URL    string
	Client *http.Client
}

// FetchJWKS implements KeySource.
func (h HTTPKeys) FetchJWKS(ctx context.Context) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.URL, nil)
	if err != nil {
		return nil, err
	}
	hc := h.Client
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetching %s: %s", h.URL, resp.Status)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 1<<20))
}

// GRPCKeys fetches the JWKS with GetSigningKeys: the broker's set, or an
// account's own.
type GRPCKeys struct {
	Client  bgv1.TokenServiceClient
	Account string
}

// FetchJWKS implements KeySource.
func (g GRPCKeys) FetchJWKS(ctx context.Context) ([]byte, error) {
	resp, err := g.Client.GetSigningKeys(ctx, &bgv1.GetSigningKeysRequest{Account: g.Account})
	if err != nil {
		return nil, err
	}
	return []byte(resp.GetJwks()), nil
}

// VerifierConfig configures a relying party's verifier.
type VerifierConfig struct {
	// Issuer is the iss tokens must carry: the broker's issuer, or the
	// issuer of an account with a token key of its own
	// (<broker issuer>/accounts/NAME).
	Issuer string
	// Audience is this relying party's identifier; tokens must name it.
	Audience string
	// Account pins the verifier to one account: its tokens alone are
	// accepted. With Issuer the broker's, the account's own issuer
	// (<Issuer>/accounts/NAME, for an account with a token key of its own)
	// is the one expected and its keys alone are trusted.
	Account string
	// Keys fetches the JWKS; by default HTTPS from
	// <issuer>/.well-known/jwks.json.
	Keys KeySource
	// HTTPClient is used for the default key source.
	HTTPClient *http.Client
	// Leeway tolerates clock skew on exp, nbf and iat (default 30s, at
	// most 5 minutes).
	Leeway time.Duration
	// RefreshInterval is the least time between two fetches of the JWKS
	// caused by unknown kids (default 30s), so forged kids cannot make the
	// verifier hammer the broker.
	RefreshInterval time.Duration
	// Checker, when set, asks the broker whether the token was revoked.
	Checker bgv1.TokenServiceClient
	// AllowDrill accepts drill tokens; relying parties refuse them for
	// real work by default.
	AllowDrill bool
	// Now is the clock (time.Now by default).
	Now func() time.Time
}

// Verifier checks access tokens: signature with a key from the broker's
// JWKS, typ at+jwt, iss, aud, exp/nbf, and optionally revocation.
type Verifier struct {
	cfg VerifierConfig

	mu        sync.Mutex
	keys      jose.JSONWebKeySet
	fetchedAt time.Time
}

// Errors callers can test for.
var (
	ErrTokenInvalid = errors.New("token invalid")
	ErrTokenRevoked = errors.New("token revoked")
)

// NewVerifier builds a verifier.
func NewVerifier(cfg VerifierConfig) (*Verifier, error) {
	if cfg.Issuer == "" || cfg.Audience == "" {
		return nil, errors.New("verifier: Issuer and Audience are required")
	}
	if cfg.Account != "" && !strings.HasSuffix(cfg.Issuer, "/accounts/"+cfg.Account) {
		cfg.Issuer = strings.TrimRight(cfg.Issuer, "/") + "/accounts/" + cfg.Account
	}
	if cfg.Keys == nil {
		cfg.Keys = HTTPKeys{URL: strings.TrimRight(cfg.Issuer, "/") + "/.well-known/jwks.json", Client: cfg.HTTPClient}
	}
	if cfg.Leeway == 0 {
		cfg.Leeway = 30 * time.Second
	}
	if cfg.Leeway < 0 || cfg.Leeway > 5*time.Minute {
		return nil, errors.New("verifier: Leeway must be between 0 and 5 minutes")
	}
	if cfg.RefreshInterval <= 0 {
		cfg.RefreshInterval = 30 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Verifier{cfg: cfg}, nil
}

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrTokenInvalid}, args...)...)
}

// maxTokenBytes bounds what the verifier parses.
const maxTokenBytes = 16 << 10

// Verify checks a compact JWT and returns its claims.
func (v *Verifier) Verify(ctx context.Context, raw string) (*Claims, error) {
	if len(raw) > maxTokenBytes {
		return nil, invalidf("token is %d bytes", len(raw))
	}
	// go-jose decodes each part leniently: it skips CR and LF and ignores
	// the unused low bits of a part's last character, so one signed token
	// has many spellings that all verify. Only the canonical one passes, so
	// that a token's bytes, and any hash or cache key made of them, name it
	// alone.
	if !canonicalParts(raw) {
		return nil, invalidf("not in canonical base64url (no padding, line breaks or stray bits)")
	}
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return nil, invalidf("%v", err)
	}
	if len(tok.Headers) != 1 {
		return nil, invalidf("want exactly one signature")
	}
	h := tok.Headers[0]
	// RFC 9068 §4: typ must be at+jwt (or application/at+jwt), so that an
	// ID token or other JWT from the same keys is never taken for access.
	typ, _ := h.ExtraHeaders[jose.HeaderType].(string)
	if !strings.EqualFold(typ, "at+jwt") && !strings.EqualFold(typ, "application/at+jwt") {
		return nil, invalidf("typ %q is not at+jwt", typ)
	}
	if h.KeyID == "" {
		return nil, invalidf("no kid")
	}
	key, err := v.key(ctx, h.KeyID)
	if err != nil {
		return nil, err
	}
	var c Claims
	if err := tok.Claims(key.Key, &c); err != nil {
		return nil, invalidf("signature: %v", err)
	}
	c.KeyID = h.KeyID
	if c.Expiry == nil || c.IssuedAt == nil || c.Subject == "" || c.ID == "" {
		return nil, invalidf("missing a required claim (exp, iat, sub, jti)")
	}
	err = c.ValidateWithLeeway(jwt.Expected{Issuer: v.cfg.Issuer, AnyAudience: jwt.Audience{v.cfg.Audience}, Time: v.cfg.Now()}, v.cfg.Leeway)
	if err != nil {
		return nil, invalidf("%v", err)
	}
	if v.cfg.Account != "" && c.Account != v.cfg.Account {
		return nil, invalidf("the token is for account %q, not %q", c.Account, v.cfg.Account)
	}
	if c.Drill && !v.cfg.AllowDrill {
		return nil, invalidf("drill token: it exercises the flow and grants nothing")
	}
	if v.cfg.Checker != nil {
		resp, err := v.cfg.Checker.CheckToken(ctx, &bgv1.CheckTokenRequest{Jti: c.ID})
		if err != nil {
			return nil, fmt.Errorf("checking revocation: %w", err)
		}
		switch resp.GetStatus() {
		case bgv1.TokenStatus_TOKEN_STATUS_VALID:
		case bgv1.TokenStatus_TOKEN_STATUS_REVOKED:
			return nil, fmt.Errorf("%w: its grant was revoked", ErrTokenRevoked)
		default:
			return nil, invalidf("the broker says the token is %s", resp.GetStatus())
		}
	}
	return &c, nil
}

// canonicalParts reports whether every dot-separated part of raw is
// unpadded base64url in the one form its bytes encode to.
func canonicalParts(raw string) bool {
	for part := range strings.SplitSeq(raw, ".") {
		b, err := base64.RawURLEncoding.DecodeString(part)
		if err != nil || base64.RawURLEncoding.EncodeToString(b) != part {
			return false
		}
	}
	return true
}

// key finds kid in the cached JWKS, refreshing it (at most once per
// RefreshInterval) when the kid is unknown.
func (v *Verifier) key(ctx context.Context, kid string) (*jose.JSONWebKey, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if k := v.find(kid); k != nil {
		return k, nil
	}
	if !v.fetchedAt.IsZero() && v.cfg.Now().Sub(v.fetchedAt) < v.cfg.RefreshInterval {
		return nil, invalidf("unknown kid %q", kid)
	}
	b, err := v.cfg.Keys.FetchJWKS(ctx)
	if err != nil {
		return nil, fmt.Errorf("fetching the broker's keys: %w", err)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(b, &set); err != nil {
		return nil, fmt.Errorf("the broker's JWKS does not parse: %w", err)
	}
	v.keys, v.fetchedAt = set, v.cfg.Now()
	if k := v.find(kid); k != nil {
		return k, nil
	}
	return nil, invalidf("unknown kid %q", kid)
}

func (v *Verifier) find(kid string) *jose.JSONWebKey {
	for i, k := range v.keys.Keys {
		if k.KeyID == kid && k.Valid() && k.IsPublic() && (k.Use == "" || k.Use == "sig") &&
			(k.Algorithm == "" || k.Algorithm == string(jose.ES256)) {
			return &v.keys.Keys[i]
		}
	}
	return nil
}
