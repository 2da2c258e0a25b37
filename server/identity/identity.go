// Package identity turns a verified client certificate into a principal.
// Identity comes from the certificate only (DESIGN §4.3): chained to the
// configured client CA, not on its CRL, carrying exactly one URI SAN under
// the configured prefix (or, when configured, a common name).
package identity

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/bgbroker/breakglass/format/policy"
)

// Config says how callers are identified.
type Config struct {
	// ClientCA is a PEM file with the CA certificate(s) client certificates
	// must chain to. The broker never holds the CA's key.
	ClientCA string `yaml:"client_ca"`
	// CRL is an optional CRL file (PEM or DER) issued by the client CA. It
	// is re-read when it changes.
	CRL string `yaml:"crl"`
	// Mode is "uri" (default): the principal is the rest of the one URI SAN
	// starting with URIPrefix; or "cn": the subject common name.
	Mode string `yaml:"mode"`
	// URIPrefix, e.g. "spiffe://example.org/user/".
	URIPrefix string `yaml:"uri_prefix"`
}

// Verifier checks client certificates and extracts principals.
type Verifier struct {
	cfg  Config
	pool *x509.CertPool
	cas  []*x509.Certificate
	log  *slog.Logger

	mu      sync.Mutex
	revoked map[string]bool
	crlMod  time.Time
	crlSize int64
	crlNext time.Time
	checked time.Time

	// chains remembers the verified chains of certificates seen, so that
	// re-checking a stored approval before each issuance costs a few
	// comparisons of validity periods rather than a chain build and a
	// signature check. The pool of CAs does not change in a process.
	chainMu sync.Mutex
	chains  map[[32]byte][][]*x509.Certificate
}

// maxChains bounds the chain cache; past it the cache starts afresh.
const maxChains = 4096

// New loads the client CA and, when configured, the CRL. A CRL that cannot
// be read or does not verify at start is an error: the broker must not
// start without the revocations it was told to enforce.
func New(cfg Config, log *slog.Logger) (*Verifier, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	switch cfg.Mode {
	case "", "uri":
		cfg.Mode = "uri"
		if cfg.URIPrefix == "" || !strings.Contains(cfg.URIPrefix, "://") {
			return nil, errors.New("identity: uri_prefix must be a URI prefix such as spiffe://example.org/user/")
		}
	case "cn":
	default:
		return nil, fmt.Errorf("identity: mode must be uri or cn, not %q", cfg.Mode)
	}
	b, err := os.ReadFile(cfg.ClientCA)
	if err != nil {
		return nil, fmt.Errorf("identity: reading client_ca: %w", err)
	}
	v := &Verifier{cfg: cfg, pool: x509.NewCertPool(), log: log}
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			if strings.Contains(blk.Type, "PRIVATE KEY") {
				return nil, fmt.Errorf("identity: %s holds a private key; the broker must hold only the CA certificate", cfg.ClientCA)
			}
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("identity: client_ca: %w", err)
		}
		if !c.IsCA {
			return nil, fmt.Errorf("identity: client_ca %s holds a certificate that is not a CA (%s)", cfg.ClientCA, c.Subject)
		}
		v.pool.AddCert(c)
		v.cas = append(v.cas, c)
	}
	if len(v.cas) == 0 {
		return nil, fmt.Errorf("identity: %s holds no CA certificate", cfg.ClientCA)
	}
	if cfg.CRL != "" {
		if err := v.reloadCRL(true); err != nil {
			return nil, err
		}
	}
	return v, nil
}

// ClientCAs is the pool client certificates must chain to.
func (v *Verifier) ClientCAs() *x509.CertPool { return v.pool }

// CAExpiry is when the first of the client CA certificates expires.
func (v *Verifier) CAExpiry() time.Time {
	var first time.Time
	for _, c := range v.cas {
		if first.IsZero() || c.NotAfter.Before(first) {
			first = c.NotAfter
		}
	}
	return first
}

// ServerTLS returns the gRPC listener's TLS configuration: TLS 1.3 only,
// client certificates required, verified against the client CA and checked
// against the CRL.
func (v *Verifier) ServerTLS(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    v.pool,
		NextProtos:   []string{"h2"},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("a client certificate is required")
			}
			return v.checkRevoked(cs.PeerCertificates[0])
		},
	}
}

// checkRevoked refuses a certificate whose serial is on the CRL.
func (v *Verifier) checkRevoked(c *x509.Certificate) error {
	if v.cfg.CRL == "" {
		return nil
	}
	if err := v.reloadCRL(false); err != nil {
		// Keep the last good CRL: refusing everyone would also stop
		// revocations, and the last good list still holds.
		v.log.Error("identity: CRL reload failed; keeping the previous CRL", "err", err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.revoked[c.SerialNumber.String()] {
		return fmt.Errorf("client certificate serial %s is revoked", c.SerialNumber)
	}
	return nil
}

// reloadCRL re-reads the CRL when its file changed (checked at most once a
// second).
func (v *Verifier) reloadCRL(force bool) error {
	v.mu.Lock()
	if !force && time.Since(v.checked) < time.Second {
		v.mu.Unlock()
		return nil
	}
	v.checked = time.Now()
	mod, size := v.crlMod, v.crlSize
	v.mu.Unlock()
	fi, err := os.Stat(v.cfg.CRL)
	if err != nil {
		return fmt.Errorf("identity: CRL %s: %w", v.cfg.CRL, err)
	}
	if !force && fi.ModTime().Equal(mod) && fi.Size() == size {
		return nil
	}
	b, err := os.ReadFile(v.cfg.CRL)
	if err != nil {
		return fmt.Errorf("identity: CRL %s: %w", v.cfg.CRL, err)
	}
	if blk, _ := pem.Decode(b); blk != nil {
		b = blk.Bytes
	}
	crl, err := x509.ParseRevocationList(b)
	if err != nil {
		return fmt.Errorf("identity: CRL %s: %w", v.cfg.CRL, err)
	}
	var signed bool
	for _, ca := range v.cas {
		if crl.CheckSignatureFrom(ca) == nil {
			signed = true
			break
		}
	}
	if !signed {
		return fmt.Errorf("identity: CRL %s is not signed by the client CA", v.cfg.CRL)
	}
	revoked := map[string]bool{}
	for _, e := range crl.RevokedCertificateEntries {
		revoked[new(big.Int).Set(e.SerialNumber).String()] = true
	}
	v.mu.Lock()
	v.revoked, v.crlMod, v.crlSize, v.crlNext = revoked, fi.ModTime(), fi.Size(), crl.NextUpdate
	v.mu.Unlock()
	v.log.Info("identity: CRL loaded", "file", v.cfg.CRL, "revoked", len(revoked), "next_update", crl.NextUpdate)
	return nil
}

// CRLNextUpdate is when the loaded CRL says a new one is due (zero without a CRL).
func (v *Verifier) CRLNextUpdate() time.Time {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.crlNext
}

// Principal extracts the principal from a verified leaf certificate.
func (v *Verifier) Principal(c *x509.Certificate) (string, error) {
	var name string
	if v.cfg.Mode == "cn" {
		name = c.Subject.CommonName
		if name == "" {
			return "", errors.New("the client certificate has no common name")
		}
	} else {
		var found []string
		for _, u := range c.URIs {
			if s := u.String(); strings.HasPrefix(s, v.cfg.URIPrefix) {
				found = append(found, strings.TrimPrefix(s, v.cfg.URIPrefix))
			}
		}
		switch len(found) {
		case 0:
			return "", fmt.Errorf("the client certificate has no URI SAN under %s", v.cfg.URIPrefix)
		case 1:
			name = found[0]
		default:
			return "", fmt.Errorf("the client certificate has %d URI SANs under %s; exactly one is allowed", len(found), v.cfg.URIPrefix)
		}
	}
	if !policy.ValidPrincipal(name) {
		return "", fmt.Errorf("the client certificate names principal %q, which is not a valid principal name", name)
	}
	return name, nil
}

// FromPeer returns the principal of the gRPC caller. The TLS stack has
// already verified the chain and the CRL.
func (v *Verifier) FromPeer(ctx context.Context) (string, *x509.Certificate, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "", nil, errors.New("no peer")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return "", nil, errors.New("the connection is not TLS")
	}
	if len(ti.State.VerifiedChains) == 0 || len(ti.State.VerifiedChains[0]) == 0 {
		return "", nil, errors.New("no verified client certificate")
	}
	leaf := ti.State.VerifiedChains[0][0]
	name, err := v.Principal(leaf)
	return name, leaf, err
}

// VerifyAt checks a client certificate as the TLS stack would have at time
// at (chain to the client CA, client-auth usage), against the CRL as it is
// now, and returns its principal. The broker uses it to re-check the
// certificates behind stored signed reviews.
func (v *Verifier) VerifyAt(c *x509.Certificate, at time.Time) (string, error) {
	k := sha256.Sum256(c.Raw)
	v.chainMu.Lock()
	known := v.chains[k]
	v.chainMu.Unlock()
	if !anyValidAt(known, at) {
		chains, err := c.Verify(x509.VerifyOptions{Roots: v.pool, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		if err != nil {
			return "", fmt.Errorf("certificate of %s does not verify at %s: %w", c.Subject, at.UTC().Format(time.RFC3339), err)
		}
		v.chainMu.Lock()
		if v.chains == nil || len(v.chains) >= maxChains {
			v.chains = map[[32]byte][][]*x509.Certificate{}
		}
		v.chains[k] = chains
		v.chainMu.Unlock()
	}
	if err := v.checkRevoked(c); err != nil {
		return "", err
	}
	return v.Principal(c)
}

// anyValidAt reports whether every certificate of one of chains is within
// its validity period at t. Everything else x509 checks of a chain (the
// signatures, key usages, constraints) does not depend on the time, so a
// chain that verified once and is valid at t verifies at t.
func anyValidAt(chains [][]*x509.Certificate, t time.Time) bool {
	for _, ch := range chains {
		ok := len(ch) > 0
		for _, c := range ch {
			if t.Before(c.NotBefore) || t.After(c.NotAfter) {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// Describe is the identity configuration as the audit log records it.
func (v *Verifier) Describe() (mode, uriPrefix string) {
	if v.cfg.Mode == "cn" {
		return "cn", ""
	}
	return "uri", v.cfg.URIPrefix
}

type principalKey struct{}

// WithPrincipal stores the caller's principal in ctx.
func WithPrincipal(ctx context.Context, p string) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// PrincipalFrom returns the principal stored by the auth middleware.
func PrincipalFrom(ctx context.Context) (string, bool) {
	p, ok := ctx.Value(principalKey{}).(string)
	return p, ok && p != ""
}
