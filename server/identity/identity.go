// Package identity turns a verified client certificate into a principal.
// Identity comes from the certificate only (DESIGN §4.3): chained to the
// configured client CA, not on its CRL, within its validity period by the
// broker's clock, carrying exactly one URI SAN under the configured prefix
// (or, when configured, a common name). Every call is checked, not only the
// handshake: a connection outlives a revocation or an expiry.
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
	"sync/atomic"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/bgbroker/breakglass/format/principal"
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
	// starting with URIPrefix, compared as written; or "cn": the subject
	// common name.
	Mode string `yaml:"mode"`
	// URIPrefix, e.g. "spiffe://example.org/user/"; it must end in "/".
	URIPrefix string `yaml:"uri_prefix"`
}

// Options are the verifier's collaborators.
type Options struct {
	Log *slog.Logger
	// Now is the broker's clock (time.Now when nil): certificates are
	// valid or not by it, in the handshake and on every call.
	Now func() time.Time
	// CRLInterval is how often Run looks for a new CRL file (default 1s).
	CRLInterval time.Duration
	// Recheck is how often a long-lived stream's certificate is checked
	// against the clock (default 1s); a new CRL is applied to streams at
	// once.
	Recheck time.Duration
}

// ErrNotValid marks a certificate that chained to the client CA when the
// connection was made but is no longer acceptable: revoked, expired or not
// yet valid by the broker's clock.
var ErrNotValid = errors.New("client certificate not valid")

// crlState is one loaded CRL; a new one replaces it whole.
type crlState struct {
	version uint64
	revoked map[string]bool
	// number is the CRL's cRLNumber (nil without one): a CRL numbered
	// below the one in force is an older one and is not loaded.
	number *big.Int
	next   time.Time
	mod    time.Time
	size   int64
	sum    [32]byte
}

// Verifier checks client certificates and extracts principals.
type Verifier struct {
	cfg Config
	// rule is the identity rule in force (SetRule changes it with the
	// policy that names it).
	rule    atomic.Pointer[principal.Rule]
	pool    *x509.CertPool
	cas     []*x509.Certificate
	log     *slog.Logger
	now     func() time.Time
	crlTick time.Duration
	recheck time.Duration

	crl atomic.Pointer[crlState]
	// reloadMu makes CRL loads one at a time; lastErr is the last reload
	// failure logged, so a broken file is reported once, not every tick.
	reloadMu sync.Mutex
	lastErr  string
	// changed is closed and replaced when a new CRL is loaded, waking the
	// guards of open streams.
	changedMu sync.Mutex
	changed   chan struct{}

	// peers caches, per leaf certificate of a live connection (the TLS
	// stack hands every call of a connection the same pointer), what the
	// per-call check needs, so that it costs a map lookup and a few time
	// comparisons; revocation is looked up again when the CRL changes.
	peersMu sync.Mutex
	peers   map[*x509.Certificate]*peerCheck

	// chains remembers the verified chains of certificates seen, so that
	// re-checking a stored approval before each issuance costs a few
	// comparisons of validity periods rather than a chain build and a
	// signature check. The pool of CAs does not change in a process.
	chainMu sync.Mutex
	chains  map[[32]byte][][]*x509.Certificate
}

type peerCheck struct {
	serial    string
	principal string
	perr      error
	// windows are, per verified chain, the latest NotBefore and the
	// earliest NotAfter of its certificates.
	windows [][2]time.Time
	crl     uint64
	revoked bool
}

// maxChains bounds the chain and peer caches; past it a cache starts afresh.
const maxChains = 4096

// New loads the client CA and, when configured, the CRL. A CRL that cannot
// be read or does not verify at start is an error: the broker must not
// start without the revocations it was told to enforce.
func New(cfg Config, opts Options) (*Verifier, error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.CRLInterval <= 0 {
		opts.CRLInterval = time.Second
	}
	if opts.Recheck <= 0 {
		opts.Recheck = time.Second
	}
	if cfg.Mode == "" {
		cfg.Mode = principal.ModeURI
	}
	rule := principal.Rule{Mode: cfg.Mode, URIPrefix: cfg.URIPrefix}
	if err := rule.Validate(); err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	b, err := os.ReadFile(cfg.ClientCA)
	if err != nil {
		return nil, fmt.Errorf("identity: reading client_ca: %w", err)
	}
	v := &Verifier{cfg: cfg, pool: x509.NewCertPool(), log: opts.Log, now: opts.Now, crlTick: opts.CRLInterval,
		recheck: opts.Recheck, changed: make(chan struct{}), peers: map[*x509.Certificate]*peerCheck{}}
	v.crl.Store(&crlState{})
	v.rule.Store(&rule)
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

// Run re-reads the CRL file whenever it changes (looked at every
// CRLInterval) until ctx ends. A CRL that does not load is logged and the
// last good one stays: refusing everyone would also stop revocations, and
// the last good list still holds.
func (v *Verifier) Run(ctx context.Context) {
	if v.cfg.CRL == "" {
		return
	}
	t := time.NewTicker(v.crlTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			v.ReloadCRL()
		}
	}
}

// ReloadCRL reads the CRL file again if it changed. It reports whether a
// new CRL is in force.
func (v *Verifier) ReloadCRL() bool {
	if v.cfg.CRL == "" {
		return false
	}
	before := v.crl.Load().version
	err := v.reloadCRL(false)
	v.reloadMu.Lock()
	defer v.reloadMu.Unlock()
	if err != nil {
		if msg := err.Error(); msg != v.lastErr {
			v.log.Error("identity: CRL reload failed; keeping the previous CRL", "err", err)
			v.lastErr = msg
		}
		return false
	}
	v.lastErr = ""
	return v.crl.Load().version != before
}

// CRLFile is the CRL file the verifier reads ("" without one).
func (v *Verifier) CRLFile() string { return v.cfg.CRL }

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
// client certificates required, verified against the client CA at the
// broker's time and checked against the CRL.
func (v *Verifier) ServerTLS(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    v.pool,
		NextProtos:   []string{"h2"},
		Time:         v.now,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("a client certificate is required")
			}
			return v.checkRevoked(cs.PeerCertificates[0])
		},
	}
}

// checkRevoked refuses a certificate whose serial is on the CRL in force.
func (v *Verifier) checkRevoked(c *x509.Certificate) error {
	if v.crl.Load().revoked[c.SerialNumber.String()] {
		return fmt.Errorf("%w: client certificate serial %s is revoked", ErrNotValid, c.SerialNumber)
	}
	return nil
}

// reloadCRL re-reads the CRL when its file changed (or always, forced).
func (v *Verifier) reloadCRL(force bool) error {
	v.reloadMu.Lock()
	defer v.reloadMu.Unlock()
	cur := v.crl.Load()
	fi, err := os.Stat(v.cfg.CRL)
	if err != nil {
		return fmt.Errorf("identity: CRL %s: %w", v.cfg.CRL, err)
	}
	// File times are coarse (a few milliseconds): a file rewritten at the
	// same size within that time of the last load looks unchanged, so a
	// recently modified file is read and compared whole.
	if !force && fi.ModTime().Equal(cur.mod) && fi.Size() == cur.size && time.Since(fi.ModTime()) > 2*time.Second {
		return nil
	}
	b, err := os.ReadFile(v.cfg.CRL)
	if err != nil {
		return fmt.Errorf("identity: CRL %s: %w", v.cfg.CRL, err)
	}
	sum := sha256.Sum256(b)
	if !force && sum == cur.sum {
		if !fi.ModTime().Equal(cur.mod) || fi.Size() != cur.size {
			next := *cur
			next.mod, next.size = fi.ModTime(), fi.Size()
			v.crl.Store(&next)
		}
		return nil
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
	// CRL numbers only grow (RFC 5280 §5.2.3): a CRL numbered below the
	// one in force is an older CRL put back, which would take revocations
	// away. The last good CRL stays in force.
	if cur.number != nil && crl.Number != nil && crl.Number.Cmp(cur.number) < 0 {
		return fmt.Errorf("identity: CRL %s is number %s, older than the CRL in force (number %s): it would undo revocations; keeping the one in force",
			v.cfg.CRL, crl.Number, cur.number)
	}
	revoked := map[string]bool{}
	for _, e := range crl.RevokedCertificateEntries {
		revoked[new(big.Int).Set(e.SerialNumber).String()] = true
	}
	v.crl.Store(&crlState{version: cur.version + 1, revoked: revoked, number: crl.Number, next: crl.NextUpdate, mod: fi.ModTime(), size: fi.Size(), sum: sum})
	v.changedMu.Lock()
	close(v.changed)
	v.changed = make(chan struct{})
	v.changedMu.Unlock()
	v.log.Info("identity: CRL loaded", "file", v.cfg.CRL, "revoked", len(revoked), "next_update", crl.NextUpdate)
	return nil
}

// CRLNextUpdate is when the loaded CRL says a new one is due (zero without a CRL).
func (v *Verifier) CRLNextUpdate() time.Time { return v.crl.Load().next }

// Principal extracts the principal from a verified leaf certificate.
func (v *Verifier) Principal(c *x509.Certificate) (string, error) {
	return v.rule.Load().Of(c)
}

// SetRule puts an identity rule in force (the broker does when a policy
// naming another one is put in force, having checked that it re-maps
// nobody with open work). Every certificate is named by it from the next
// call on: the principals cached for live connections are forgotten.
func (v *Verifier) SetRule(mode, uriPrefix string) error {
	r := principal.Rule{Mode: mode, URIPrefix: uriPrefix}
	if r.Mode == "" {
		r.Mode = principal.ModeURI
	}
	if err := r.Validate(); err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	if r.Mode == principal.ModeCN {
		r.URIPrefix = ""
	}
	v.peersMu.Lock()
	v.rule.Store(&r)
	v.peers = map[*x509.Certificate]*peerCheck{}
	v.peersMu.Unlock()
	v.log.Info("identity: rule in force", "mode", r.Mode, "uri_prefix", r.URIPrefix)
	return nil
}

// Peer is the caller of one gRPC call as its certificate names it.
type Peer struct {
	// Leaf is the client certificate the TLS stack verified.
	Leaf *x509.Certificate
	// Chains are the chains it verified to the client CA.
	Chains [][]*x509.Certificate
	// Principal is who the certificate names; PrincipalErr says why it
	// names nobody (the open services accept such callers).
	Principal    string
	PrincipalErr error
}

// Authenticate checks the caller of this call: its certificate chained to
// the client CA in the handshake; it must also be within its validity
// period now, by the broker's clock, and not on the CRL in force. An error
// wraps ErrNotValid for a certificate that lapsed or was revoked since the
// handshake.
func (v *Verifier) Authenticate(ctx context.Context) (Peer, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Peer{}, errors.New("no peer")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return Peer{}, errors.New("the connection is not TLS")
	}
	if len(ti.State.VerifiedChains) == 0 || len(ti.State.VerifiedChains[0]) == 0 {
		return Peer{}, errors.New("no verified client certificate")
	}
	out := Peer{Leaf: ti.State.VerifiedChains[0][0], Chains: ti.State.VerifiedChains}
	pc, err := v.check(out.Leaf, out.Chains)
	out.Principal, out.PrincipalErr = pc.principal, pc.perr
	return out, err
}

// Check is the per-call check of a connection's certificate (Authenticate
// without the gRPC peer).
func (v *Verifier) Check(leaf *x509.Certificate, chains [][]*x509.Certificate) error {
	_, err := v.check(leaf, chains)
	return err
}

func (v *Verifier) check(leaf *x509.Certificate, chains [][]*x509.Certificate) (peerCheck, error) {
	crl := v.crl.Load()
	v.peersMu.Lock()
	pc := v.peers[leaf]
	if pc == nil {
		pc = &peerCheck{serial: leaf.SerialNumber.String(), crl: crl.version, revoked: crl.revoked[leaf.SerialNumber.String()]}
		pc.principal, pc.perr = v.rule.Load().Of(leaf)
		for _, ch := range chains {
			var w [2]time.Time
			for i, c := range ch {
				if i == 0 || c.NotBefore.After(w[0]) {
					w[0] = c.NotBefore
				}
				if i == 0 || c.NotAfter.Before(w[1]) {
					w[1] = c.NotAfter
				}
			}
			pc.windows = append(pc.windows, w)
		}
		if len(v.peers) >= maxChains {
			v.peers = map[*x509.Certificate]*peerCheck{}
		}
		v.peers[leaf] = pc
	} else if pc.crl != crl.version {
		pc.crl, pc.revoked = crl.version, crl.revoked[pc.serial]
	}
	out := *pc
	v.peersMu.Unlock()
	if out.revoked {
		return out, fmt.Errorf("%w: your client certificate (serial %s) was revoked; ask the security team for a new one", ErrNotValid, out.serial)
	}
	now := v.now()
	for _, w := range out.windows {
		if !now.Before(w[0]) && !now.After(w[1]) {
			return out, nil
		}
	}
	return out, fmt.Errorf("%w: your client certificate (serial %s) is outside its validity period (until %s) at %s; renew it",
		ErrNotValid, out.serial, leaf.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
}

// Guard returns a context that ends, with a cause wrapping ErrNotValid,
// once the certificate of a long-lived call stops being acceptable: at once
// when a new CRL revokes it, within Recheck when it expires by the broker's
// clock. stop releases the guard.
func (v *Verifier) Guard(ctx context.Context, p Peer) (_ context.Context, stop func()) {
	gctx, cancel := context.WithCancelCause(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(v.recheck)
		defer t.Stop()
		for {
			v.changedMu.Lock()
			changed := v.changed
			v.changedMu.Unlock()
			select {
			case <-gctx.Done():
				return
			case <-changed:
			case <-t.C:
			}
			if err := v.Check(p.Leaf, p.Chains); err != nil {
				cancel(err)
				return
			}
		}
	}()
	return gctx, func() { cancel(context.Canceled); <-done }
}

// VerifyAt checks a client certificate as the TLS stack would have at time
// at (chain to the client CA, client-auth usage), against the CRL in force,
// and returns its principal. The broker uses it for the certificates behind
// signed statements: before one is written and again before a stored review
// counts toward a quorum.
func (v *Verifier) VerifyAt(c *x509.Certificate, at time.Time) (string, error) {
	k := sha256.Sum256(c.Raw)
	v.chainMu.Lock()
	known := v.chains[k]
	v.chainMu.Unlock()
	if !anyValidAt(known, at) {
		chains, err := c.Verify(x509.VerifyOptions{Roots: v.pool, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		if err != nil {
			var inv x509.CertificateInvalidError
			if errors.As(err, &inv) && inv.Reason == x509.Expired && inv.Cert != nil {
				what := "client certificate"
				if inv.Cert != c {
					what = "client CA certificate " + inv.Cert.Subject.String()
				}
				return "", fmt.Errorf("%w: the %s (serial %s) is not valid at %s (valid %s to %s)", ErrNotValid, what, inv.Cert.SerialNumber,
					at.UTC().Format(time.RFC3339), inv.Cert.NotBefore.UTC().Format(time.RFC3339), inv.Cert.NotAfter.UTC().Format(time.RFC3339))
			}
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
	r := v.rule.Load()
	if r.Mode == principal.ModeCN {
		return principal.ModeCN, ""
	}
	return principal.ModeURI, r.URIPrefix
}

type peerKey struct{}

// WithPeer stores the authenticated caller in ctx.
func WithPeer(ctx context.Context, p Peer) context.Context {
	return context.WithValue(ctx, peerKey{}, p)
}

// PeerFrom returns the caller stored by the auth middleware.
func PeerFrom(ctx context.Context) (Peer, bool) {
	p, ok := ctx.Value(peerKey{}).(Peer)
	return p, ok && p.Leaf != nil
}

// PrincipalFrom returns the principal stored by the auth middleware.
func PrincipalFrom(ctx context.Context) (string, bool) {
	p, ok := PeerFrom(ctx)
	return p.Principal, ok && p.Principal != "" && p.PrincipalErr == nil
}

// VerifyNow checks a client certificate presented outside the gRPC
// listener (the HTTPS listener's introspection) as the gRPC handshake and
// every call check theirs: chained to the client CA and within its validity
// period at the broker's time, not on the CRL in force; and returns its
// principal.
func (v *Verifier) VerifyNow(c *x509.Certificate) (string, error) {
	return v.VerifyAt(c, v.now())
}
