// Package authority holds the broker's certificate authorities as the key
// registry names them, one signer per CA kind: the SSH user CA and the
// X.509 client CA (each its active HSM key, and its retired keys until
// the last certificate they signed expires), and the revocation lists
// targets read: the OpenSSH KRL, made from the database alone and so
// served while the HSM is down, and the X.509 CRL, signed in the HSM,
// re-signed before it lapses and as soon as a revocation is missing from
// it.
package authority

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bgbroker/breakglass/format/keyid"
	"github.com/bgbroker/breakglass/format/krl"
	"github.com/bgbroker/breakglass/hsm"
	"github.com/bgbroker/breakglass/server/keyring"
	"github.com/bgbroker/breakglass/server/sshca"
	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/x509ca"
)

// Keys are the registry's keys of a purpose (keyring.Ring).
type Keys interface {
	KeysOf(p hsm.Purpose) []keyring.Entry
}

// DefaultCRLValidity is nextUpdate - thisUpdate unless configured.
const DefaultCRLValidity = time.Hour

// Config builds a Set.
type Config struct {
	Keys  Keys
	Store store.Store
	// CACertFile is the PEM bundle holding the CA certificate of each X.509
	// CA key (the active one and those still published); read again on
	// every Reload.
	CACertFile string
	// BaseURL is the broker's HTTPS base URL; CRLs are published under it.
	BaseURL string
	// CRLValidity is how long a CRL is good for (nextUpdate); it is
	// re-signed when half of it has passed.
	CRLValidity time.Duration
	Now         func() time.Time
	Log         *slog.Logger
}

// sshEntry is a published SSH CA key.
type sshEntry struct {
	kid     string
	ca      *sshca.CA
	pub     ssh.PublicKey
	active  bool
	revoked bool
}

// x509Entry is a published X.509 CA key with its certificate.
type x509Entry struct {
	kid     string
	ca      *x509ca.CA // nil when its key is missing from the HSM
	cert    *x509.Certificate
	active  bool
	revoked bool
}

// Set is the broker's certificate authorities. It is safe for concurrent
// use.
type Set struct {
	cfg Config

	mu        sync.RWMutex
	ssh       []sshEntry
	x509      []x509Entry
	sshErr    error // why there is no active SSH CA
	x509Err   error
	sshKeyGen int // bumps when the SSH CA keys change, for the KRL cache

	krlMu  sync.Mutex
	krlKey string
	krl    []byte

	crlMu sync.Mutex
	// crlSerials are the serials of each CA's latest CRL, by number.
	crlSerials map[string]crlSeen
	// crlStale says why a CA's CRL does not cover every revocation, or
	// has lapsed; empty when it is current.
	crlStale map[string]string
}

type crlSeen struct {
	number  uint64
	serials map[string]bool
	// issuer is the CRL's issuer name, DER: it must be the subject of
	// the CA certificate published now, or targets find no CRL for it.
	issuer []byte
}

// New builds the set from the registry and the CA certificate file. It
// fails when the active X.509 CA key has no certificate there, or a
// certificate does not belong to it: the broker refuses to start on a CA
// certificate that does not match its key.
func New(cfg Config) (*Set, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.CRLValidity <= 0 {
		cfg.CRLValidity = DefaultCRLValidity
	}
	s := &Set{cfg: cfg, crlSerials: map[string]crlSeen{}, crlStale: map[string]string{}}
	if err := s.Reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// Reload rebuilds the set after the registry changed (a rotation).
func (s *Set) Reload() error {
	var sshs []sshEntry
	sshErr := errors.New("no SSH CA key is configured (keys.ssh_ca)")
	for _, e := range s.cfg.Keys.KeysOf(hsm.PurposeSSHCA) {
		pubKey, err := keyring.PublicFromPEM(e.Record.PublicPEM)
		if err != nil {
			return fmt.Errorf("ssh-ca key %s: %w", e.Record.Label, err)
		}
		pub, err := ssh.NewPublicKey(pubKey)
		if err != nil {
			return err
		}
		en := sshEntry{kid: e.Record.KID, pub: pub, active: e.Record.State == store.KeyActive, revoked: !e.Record.RevokedAt.IsZero()}
		if e.Key != nil {
			if en.ca, err = sshca.New(e.Key); err != nil {
				return fmt.Errorf("ssh-ca key %s: %w", e.Record.Label, err)
			}
		}
		if en.active {
			sshErr = nil
			if en.ca == nil {
				sshErr = fmt.Errorf("the active SSH CA key %s is not in the HSM", e.Record.Label)
			}
		}
		sshs = append(sshs, en)
	}
	x, err := s.loadX509()
	if err != nil {
		return err
	}
	x509s, x509Err := x.entries, x.activeErr
	s.mu.Lock()
	if !slices.EqualFunc(s.ssh, sshs, func(a, b sshEntry) bool { return a.kid == b.kid && a.active == b.active && a.revoked == b.revoked }) {
		s.sshKeyGen++
	}
	s.ssh, s.sshErr, s.x509, s.x509Err = sshs, sshErr, x509s, x509Err
	s.mu.Unlock()
	return nil
}

// x509Load is what loadX509 found: the published CAs, and why there is no
// active one to issue with (nil when there is).
type x509Load struct {
	entries   []x509Entry
	activeErr error
}

func (s *Set) loadX509() (x509Load, error) {
	keys := s.cfg.Keys.KeysOf(hsm.PurposeX509CA)
	noCA := errors.New("no X.509 CA key is configured (keys.x509_ca)")
	if len(keys) == 0 {
		return x509Load{activeErr: noCA}, nil
	}
	if s.cfg.CACertFile == "" {
		return x509Load{}, errors.New("an X.509 CA key is configured but no CA certificate: set certificates.x509_ca_cert (breakglassd hsm ca-cert makes one)")
	}
	b, err := os.ReadFile(s.cfg.CACertFile)
	if err != nil {
		return x509Load{}, fmt.Errorf("reading the X.509 CA certificate: %w", err)
	}
	certs, err := x509ca.ParseCertificates(b)
	if err != nil {
		return x509Load{}, fmt.Errorf("%s: %w", s.cfg.CACertFile, err)
	}
	now := s.cfg.Now()
	var out []x509Entry
	used := make([]bool, len(certs))
	activeErr := noCA
	for _, e := range keys {
		pub, err := keyring.PublicFromPEM(e.Record.PublicPEM)
		if err != nil {
			return x509Load{}, err
		}
		ec, _ := pub.(*ecdsa.PublicKey)
		var cert *x509.Certificate
		for i, c := range certs {
			if ec == nil || !ec.Equal(c.PublicKey) {
				continue
			}
			used[i] = true
			// Of several certificates for one key (a renewed CA
			// certificate), the one valid now that lasts longest.
			if now.Before(c.NotBefore) || now.After(c.NotAfter) {
				continue
			}
			if cert == nil || c.NotAfter.After(cert.NotAfter) {
				cert = c
			}
		}
		en := x509Entry{kid: e.Record.KID, cert: cert, active: e.Record.State == store.KeyActive, revoked: !e.Record.RevokedAt.IsZero()}
		if cert == nil {
			msg := fmt.Errorf("%s holds no valid CA certificate for the X.509 CA key %s (kid %s): the configured CA certificate does not match its key; make one with `breakglassd hsm ca-cert --label %s`",
				s.cfg.CACertFile, e.Record.Label, e.Record.KID, e.Record.Label)
			if en.active {
				return x509Load{}, msg
			}
			s.cfg.Log.Warn("a retired X.509 CA key has no CA certificate; its CRL cannot be published", "err", msg)
			continue
		}
		if e.Key != nil {
			if en.ca, err = x509ca.New(cert, e.Key); err != nil {
				if en.active {
					return x509Load{}, err
				}
				s.cfg.Log.Warn("a retired X.509 CA is unusable", "kid", e.Record.KID, "err", err)
			}
		}
		if en.active {
			activeErr = nil
			if en.ca == nil {
				activeErr = fmt.Errorf("the active X.509 CA key %s is not in the HSM", e.Record.Label)
			}
		}
		out = append(out, en)
	}
	for i, c := range certs {
		if !used[i] {
			return x509Load{}, fmt.Errorf("%s: the certificate %q belongs to none of the broker's X.509 CA keys (its public key differs): the configured CA certificate does not match its key", s.cfg.CACertFile, c.Subject)
		}
	}
	return x509Load{entries: out, activeErr: activeErr}, nil
}

// SSHCA implements broker.Authorities.
func (s *Set) SSHCA() (*sshca.CA, string, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.sshErr != nil {
		return nil, "", s.sshErr
	}
	for _, e := range s.ssh {
		if e.active {
			if e.revoked {
				return nil, "", errors.New("the active SSH CA key was revoked; rotate it")
			}
			return e.ca, e.kid, nil
		}
	}
	return nil, "", errors.New("no active SSH CA key")
}

// X509CA implements broker.Authorities. While the active CA's CRL does not
// list every revocation (the HSM could not re-sign it), no certificate is
// issued: one could not be taken back where targets look.
func (s *Set) X509CA() (*x509ca.CA, string, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.x509Err != nil {
		return nil, "", s.x509Err
	}
	for _, e := range s.x509 {
		if !e.active {
			continue
		}
		if e.revoked {
			return nil, "", errors.New("the active X.509 CA key was revoked; rotate it")
		}
		s.crlMu.Lock()
		stale := s.crlStale[e.kid]
		s.crlMu.Unlock()
		if stale != "" {
			return nil, "", fmt.Errorf("its CRL is stale (%s), so a new certificate could not be revoked where targets look; it is re-signed as soon as the HSM signs", stale)
		}
		return e.ca, e.kid, nil
	}
	return nil, "", errors.New("no active X.509 CA key")
}

// CRLURL implements broker.Authorities: the CRL of one CA key, stable
// across rotations.
func (s *Set) CRLURL(kid string) string {
	return strings.TrimSuffix(s.cfg.BaseURL, "/") + "/x509/crls/" + kid + ".crl"
}

// SSHAuthorizedKeys is /ssh/ca.pub: the authorized_keys lines of the SSH
// CA keys sshd should trust (TrustedUserCAKeys), the active one first,
// then retired ones until their last certificate expires. Revoked keys
// are left out (and listed in the KRL).
func (s *Set) SSHAuthorizedKeys() []byte {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var b bytes.Buffer
	for _, e := range s.ssh {
		if e.revoked {
			continue
		}
		state := "retired"
		if e.active {
			state = "active"
		}
		fmt.Fprintln(&b, sshca.AuthorizedKey(e.pub, "breakglass-ssh-ca kid="+e.kid+" "+state))
	}
	return b.Bytes()
}

// X509CACerts is /x509/ca.pem: the CA certificates targets should trust,
// the active one first.
func (s *Set) X509CACerts() []byte {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var b bytes.Buffer
	for _, e := range s.x509 {
		if !e.revoked {
			_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: e.cert.Raw})
		}
	}
	return b.Bytes()
}

// KRL is /ssh/revoked.krl: every revoked SSH certificate that had not
// expired when the revocations last changed, by CA key, and every revoked
// CA key. It is a function of the database, so every replica serves the
// same bytes, and needs no signature: it is served while the HSM is down.
// Its version is the revocation generation, its date that change's time.
func (s *Set) KRL(ctx context.Context) ([]byte, error) {
	var st store.RevocationState
	var revoked []store.CertRecord
	err := s.cfg.Store.View(ctx, func(r store.Reader) error {
		var err error
		if st, err = r.Revocations(ctx); err != nil {
			return err
		}
		if s.cachedKRL(st) != nil {
			return nil
		}
		revoked, err = r.RevokedCertificates(ctx, store.CertSSH, st.At)
		return err
	})
	if err != nil {
		return nil, err
	}
	if b := s.cachedKRL(st); b != nil {
		return b, nil
	}
	s.mu.RLock()
	cas := map[string]ssh.PublicKey{}
	var revokedCAs []ssh.PublicKey
	for _, e := range s.ssh {
		cas[e.kid] = e.pub
		if e.revoked {
			revokedCAs = append(revokedCAs, e.pub)
		}
	}
	gen := s.sshKeyGen
	s.mu.RUnlock()
	k := &krl.KRL{Version: st.Generation, GeneratedDate: uint64(max(st.At.Unix(), 0)), Comment: "breakglass broker", Keys: revokedCAs}
	byCA := map[string]*krl.CertificateSection{}
	for _, c := range revoked {
		serial, err := strconv.ParseUint(c.Serial, 10, 64)
		if err != nil || serial == 0 {
			return nil, fmt.Errorf("a stored SSH certificate has serial %q", c.Serial)
		}
		sec := byCA[c.CAKID]
		if sec == nil {
			pub, ok := cas[c.CAKID]
			if !ok {
				pub, err = s.destroyedCA(ctx, c.CAKID)
				if err != nil {
					return nil, err
				}
			}
			sec = &krl.CertificateSection{CA: pub}
			byCA[c.CAKID] = sec
			k.Certificates = append(k.Certificates, sec)
		}
		sec.Serials = append(sec.Serials, krl.Serial(serial))
	}
	b, err := k.Marshal()
	if err != nil {
		return nil, err
	}
	s.krlMu.Lock()
	s.krlKey, s.krl = krlKey(st, gen), b
	s.krlMu.Unlock()
	return b, nil
}

func krlKey(st store.RevocationState, gen int) string {
	return fmt.Sprintf("%d/%d/%d", st.Generation, st.At.UnixNano(), gen)
}

func (s *Set) cachedKRL(st store.RevocationState) []byte {
	s.mu.RLock()
	gen := s.sshKeyGen
	s.mu.RUnlock()
	s.krlMu.Lock()
	defer s.krlMu.Unlock()
	if s.krl != nil && s.krlKey == krlKey(st, gen) {
		return s.krl
	}
	return nil
}

// destroyedCA finds a CA key no longer in the ring in the registry.
func (s *Set) destroyedCA(ctx context.Context, kid string) (ssh.PublicKey, error) {
	var recs []store.KeyRecord
	if err := s.cfg.Store.View(ctx, func(r store.Reader) error {
		var err error
		recs, err = r.Keys(ctx)
		return err
	}); err != nil {
		return nil, err
	}
	for _, rec := range recs {
		if rec.KID == kid {
			pub, err := keyring.PublicFromPEM(rec.PublicPEM)
			if err != nil {
				return nil, err
			}
			return ssh.NewPublicKey(pub)
		}
	}
	return nil, fmt.Errorf("a revoked SSH certificate names CA key %s, which the registry does not have", kid)
}

// CRLs returns the latest CRL of every published X.509 CA, the active
// one first (DER), for /x509/crl.pem; and the active one's alone.
func (s *Set) CRLs(ctx context.Context) (all [][]byte, active []byte, err error) {
	s.mu.RLock()
	entries := slices.Clone(s.x509)
	s.mu.RUnlock()
	err = s.cfg.Store.View(ctx, func(r store.Reader) error {
		for _, e := range entries {
			c, err := r.CRL(ctx, e.kid)
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			all = append(all, c.DER)
			if e.active {
				active = c.DER
			}
		}
		return nil
	})
	return all, active, err
}

// CRL returns the latest CRL of one CA key, nil when there is none.
func (s *Set) CRL(ctx context.Context, kid string) ([]byte, error) {
	var der []byte
	err := s.cfg.Store.View(ctx, func(r store.Reader) error {
		c, err := r.CRL(ctx, kid)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		der = c.DER
		return nil
	})
	return der, err
}

// RefreshCRLs signs a new CRL for every published X.509 CA whose latest
// one is missing, lacks a revoked certificate, or has passed half its
// validity. It costs the revoked, unexpired certificates, never the whole
// history. A CA whose CRL could not be signed is reported by CRLHealth and
// issues nothing until it is.
func (s *Set) RefreshCRLs(ctx context.Context) error {
	s.mu.RLock()
	entries := slices.Clone(s.x509)
	s.mu.RUnlock()
	var errs []error
	for _, e := range entries {
		if err := s.refreshCRL(ctx, e); err != nil {
			errs = append(errs, fmt.Errorf("CRL of X.509 CA %s: %w", e.kid, err))
		}
	}
	return errors.Join(errs...)
}

func (s *Set) refreshCRL(ctx context.Context, e x509Entry) error {
	now := s.cfg.Now().UTC()
	var latest *store.CRLRecord
	var revoked []store.CertRecord
	read := func(r store.Reader) error {
		c, err := r.CRL(ctx, e.kid)
		switch {
		case errors.Is(err, store.ErrNotFound):
			latest = nil
		case err != nil:
			return err
		default:
			latest = c
		}
		all, err := r.RevokedCertificates(ctx, store.CertX509, now)
		if err != nil {
			return err
		}
		revoked = revoked[:0]
		for _, c := range all {
			if c.CAKID == e.kid {
				revoked = append(revoked, c)
			}
		}
		return nil
	}
	if err := s.cfg.Store.View(ctx, read); err != nil {
		return err
	}
	why := s.crlDue(latest, revoked, now, e.cert)
	if why == "" {
		s.setStale(e.kid, "")
		return nil
	}
	if e.ca == nil {
		s.setStale(e.kid, "its key is not in the HSM")
		return errors.New("the CA key is not in the HSM")
	}
	err := s.cfg.Store.Update(ctx, func(tx store.Tx) error {
		// Under the write lock: another replica may have signed it since.
		if err := read(tx); err != nil {
			return err
		}
		if s.crlDue(latest, revoked, now, e.cert) == "" {
			return nil
		}
		number := uint64(1)
		if latest != nil {
			number = latest.Number + 1
		}
		var entries []x509.RevocationListEntry
		for _, c := range revoked {
			n, ok := new(big.Int).SetString(c.Serial, 10)
			if !ok {
				return fmt.Errorf("a stored X.509 certificate has serial %q", c.Serial)
			}
			entries = append(entries, x509.RevocationListEntry{SerialNumber: n, RevocationTime: c.RevokedAt.UTC()})
		}
		next := now.Add(s.cfg.CRLValidity)
		der, err := e.ca.CRL(ctx, new(big.Int).SetUint64(number), now, next, entries)
		if err != nil {
			return err
		}
		return tx.PutCRL(ctx, store.CRLRecord{CAKID: e.kid, Number: number, ThisUpdate: now, NextUpdate: next, DER: der})
	})
	if err != nil {
		// Until it is re-signed, say why the published one falls short.
		s.setStale(e.kid, s.crlShortfall(latest, revoked, now, e.cert))
		return err
	}
	s.setStale(e.kid, "")
	s.cfg.Log.Info("CRL signed", "ca_kid", e.kid, "reason", why, "revoked", len(revoked))
	return nil
}

// crlDue says why a new CRL is needed, or "".
func (s *Set) crlDue(latest *store.CRLRecord, revoked []store.CertRecord, now time.Time, caCert *x509.Certificate) string {
	if latest == nil {
		return "none yet"
	}
	if why := s.crlShortfall(latest, revoked, now, caCert); why != "" {
		return why
	}
	if !now.Before(latest.ThisUpdate.Add(latest.NextUpdate.Sub(latest.ThisUpdate) / 2)) {
		return "half of its validity passed"
	}
	return ""
}

// crlShortfall says what the CRL fails at: a revocation it lacks, an
// issuer that is not the published CA certificate's subject (the CA
// certificate was replaced, say by one the organisation's root signed:
// targets look CRLs up by issuer name and would find none), or having
// lapsed.
func (s *Set) crlShortfall(latest *store.CRLRecord, revoked []store.CertRecord, now time.Time, caCert *x509.Certificate) string {
	if latest == nil {
		return "no CRL has been signed"
	}
	seen, issuer, err := s.serialsOf(latest)
	if err != nil {
		return "the stored CRL does not parse"
	}
	if caCert != nil && !bytes.Equal(issuer, caCert.RawSubject) {
		return "it was signed under another CA certificate (the CA certificate was replaced)"
	}
	missing := 0
	for _, c := range revoked {
		if !seen[c.Serial] {
			missing++
		}
	}
	if missing > 0 {
		return fmt.Sprintf("%d revoked certificate(s) are not in it yet", missing)
	}
	if !now.Before(latest.NextUpdate) {
		return "it lapsed at " + latest.NextUpdate.UTC().Format(time.RFC3339)
	}
	return ""
}

func (s *Set) serialsOf(c *store.CRLRecord) (map[string]bool, []byte, error) {
	s.crlMu.Lock()
	defer s.crlMu.Unlock()
	if seen, ok := s.crlSerials[c.CAKID]; ok && seen.number == c.Number {
		return seen.serials, seen.issuer, nil
	}
	crl, err := x509.ParseRevocationList(c.DER)
	if err != nil {
		return nil, nil, err
	}
	out := map[string]bool{}
	for _, e := range crl.RevokedCertificateEntries {
		out[e.SerialNumber.String()] = true
	}
	s.crlSerials[c.CAKID] = crlSeen{number: c.Number, serials: out, issuer: crl.RawIssuer}
	return out, crl.RawIssuer, nil
}

func (s *Set) setStale(kid, why string) {
	s.crlMu.Lock()
	defer s.crlMu.Unlock()
	if why == "" {
		delete(s.crlStale, kid)
	} else {
		s.crlStale[kid] = why
	}
}

// CRLHealth says, per X.509 CA, what is wrong with its published CRL
// ("" for none): revocations it lacks because the HSM could not re-sign
// it, or that it lapsed.
func (s *Set) CRLHealth() map[string]string {
	s.crlMu.Lock()
	defer s.crlMu.Unlock()
	out := map[string]string{}
	for k, v := range s.crlStale {
		out[k] = v
	}
	return out
}

// HasX509 reports whether an X.509 CA is configured.
func (s *Set) HasX509() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.x509) > 0
}

// ActiveX509 returns the active X.509 CA certificate, for its expiry.
func (s *Set) ActiveX509() *x509.Certificate {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, e := range s.x509 {
		if e.active {
			return e.cert
		}
	}
	return nil
}

// SSHCAKID is the thumbprint of an SSH CA public key, as the registry
// names keys.
func SSHCAKID(pub ssh.PublicKey) (string, error) {
	ck, ok := pub.(ssh.CryptoPublicKey)
	if !ok {
		return "", errors.New("not a crypto public key")
	}
	return keyid.Thumbprint(ck.CryptoPublicKey())
}
