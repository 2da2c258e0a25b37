package broker

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/server/event"
	"github.com/bgbroker/breakglass/server/request"
	"github.com/bgbroker/breakglass/server/sshca"
	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/x509ca"
)

// Authorities are the certificate authorities certificates are issued
// with: the active SSH and X.509 CA keys in the HSM.
type Authorities interface {
	// SSHCA returns the active SSH CA and its key's kid, or an error
	// saying why there is none.
	SSHCA() (*sshca.CA, string, error)
	// X509CA returns the active X.509 CA and its key's kid.
	X509CA() (*x509ca.CA, string, error)
	// CRLURL is the URL of the CRL that lists certificates of CA kid.
	CRLURL(kid string) string
}

// SSHCertInput asks for an OpenSSH user certificate.
type SSHCertInput struct {
	RequestID string
	// PublicKey is the subject key in authorized_keys format.
	PublicKey []byte
	// Principals, when set, are a subset of what the policy allows.
	Principals []string
}

// IssuedSSHCert is a freshly signed SSH certificate.
type IssuedSSHCert struct {
	Cert          *ssh.Certificate
	CAKID         string
	IssuancesLeft int
	Entry         audit.Record
}

// X509CertInput asks for an X.509 client certificate.
type X509CertInput struct {
	RequestID string
	// CSR is a PKCS #10 request, PEM or DER.
	CSR []byte
}

// IssuedX509Cert is a freshly signed X.509 certificate.
type IssuedX509Cert struct {
	Cert *x509.Certificate
	// CACert is the CA certificate that signed it.
	CACert        *x509.Certificate
	CAKID         string
	IssuancesLeft int
	Entry         audit.Record
}

// maxPrincipalsRequested bounds the principals a caller may list.
const maxPrincipalsRequested = 32

func (b *Broker) authorities() (Authorities, error) {
	if b.cfg.Authorities == nil {
		return nil, wrongState("this broker issues no certificates: it has no CA keys configured")
	}
	return b.cfg.Authorities, nil
}

// sshPrincipals picks a certificate's principals: the requested ones,
// each allowed by the policy, or all the policy allows. Drill grants get
// only the drill principals, never real ones.
func sshPrincipals(acct *policy.Account, r *request.Request, requested []string) ([]string, error) {
	allowed := acct.SSH.Principals
	if r.Drill {
		if len(acct.SSH.DrillPrincipals) == 0 {
			return nil, wrongState("request %s is a drill and account %s names no ssh.drill_principals: drills get no SSH certificate for real principals", r.ID, acct.Name)
		}
		allowed = acct.SSH.DrillPrincipals
	}
	if len(requested) == 0 {
		return slices.Clone(allowed), nil
	}
	if len(requested) > maxPrincipalsRequested {
		return nil, invalid("%d principals requested; at most %d", len(requested), maxPrincipalsRequested)
	}
	var out []string
	for _, p := range requested {
		if !slices.Contains(allowed, p) {
			what := "principals"
			if r.Drill {
				what = "drill principals"
			}
			return nil, invalid("principal %q is not one of account %s's SSH %s (%s)", oneLine(p), acct.Name, what, strings.Join(allowed, ", "))
		}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out, nil
}

// validity is a certificate's window: from the second the grant was
// approved (never before it) to the grant's end or the kind's own max_ttl,
// whichever is first, in whole seconds.
func validity(r *request.Request, now time.Time, maxTTL time.Duration) (time.Time, time.Time, error) {
	from := r.ApprovedAt.Truncate(time.Second)
	until := r.GrantExpiresAt
	if maxTTL > 0 && now.Add(maxTTL).Before(until) {
		until = now.Add(maxTTL)
	}
	until = until.Truncate(time.Second)
	if !until.After(now) {
		return time.Time{}, time.Time{}, wrongState("the grant of request %s ends at %s, too soon for a certificate", r.ID, r.GrantExpiresAt.UTC().Format(time.RFC3339))
	}
	return from.UTC(), until.UTC(), nil
}

// IssueSSHCertificate signs an OpenSSH user certificate for an approved
// grant, by the rules of IssueToken: only the requester, quorum evaluated
// again from the stored signed reviews, counted against max_issuances, the
// first credential held back until the witnesses saw the grant
// (require_witnessed), and Unavailable with nothing written when the HSM
// cannot sign. Principals,
// options and extensions come from the policy only.
func (b *Broker) IssueSSHCertificate(ctx context.Context, caller string, in SSHCertInput) (*IssuedSSHCert, error) {
	subject, err := sshca.ParseSubjectKey(in.PublicKey)
	if err != nil {
		return nil, invalid("public_key: %s", err)
	}
	cas, err := b.authorities()
	if err != nil {
		return nil, err
	}
	ca, caKID, caErr := cas.SSHCA()
	p := b.Policy()
	now := b.now().UTC()
	var r *request.Request
	var rq sshca.Request
	var approvers []string
	err = b.view(ctx, func(rd store.Reader) error {
		var err error
		if r, err = b.loadRequest(ctx, rd, in.RequestID, caller); err != nil {
			return err
		}
		acct, o, err := b.checkGrant(p, r, caller, now, "certificates", "used for a certificate")
		if err != nil {
			return err
		}
		if err := b.checkWitnessed(ctx, rd, r); err != nil {
			return err
		}
		if rq, err = sshCertFor(acct, r, in.Principals, now); err != nil {
			return err
		}
		rq.Key = subject
		approvers = o.Approvers()
		if caErr != nil {
			return wrongState("no SSH certificate can be issued: %s", caErr)
		}
		return checkCAInForce(ctx, rd, purposeSSHCA, caKID)
	})
	if err != nil {
		return nil, err
	}
	if rq.Serial, err = sshca.RandomSerial(); err != nil {
		return nil, internal(err)
	}
	if b.hsmSuspect() {
		return nil, hsmDown(errHSMBackoff)
	}
	cert, err := ca.Sign(ctx, rq)
	if err != nil {
		return nil, b.hsmFailure(ctx, err)
	}
	var out IssuedSSHCert
	err = b.update(ctx, func(tx store.Tx) (err error) {
		out, err = b.recordSSHCert(ctx, tx, caller, in, approvers, rq, cert, caKID)
		return err
	})
	if err != nil {
		return nil, err
	}
	b.notify(in.RequestID)
	b.log.Info("ssh certificate issued", "request", in.RequestID, "requester", caller, "serial", cert.Serial, "key_id", cert.KeyId,
		"principals", cert.ValidPrincipals, "entry", out.Entry.Index)
	return &out, nil
}

// recordSSHCert checks, in the transaction that records it, that the grant
// and the CA key still allow a signed SSH certificate, and logs it.
func (b *Broker) recordSSHCert(ctx context.Context, tx store.Tx, caller string, in SSHCertInput, approvers []string, rq sshca.Request,
	cert *ssh.Certificate, caKID string) (IssuedSSHCert, error) {
	r, err := b.certificateGrant(ctx, tx, caller, in.RequestID, approvers, rq.KeyID)
	if err != nil {
		return IssuedSSHCert{}, err
	}
	if err := checkCAInForce(ctx, tx, purposeSSHCA, caKID); err != nil {
		return IssuedSSHCert{}, err
	}
	now := b.now().UTC()
	if err := sshCertStillAllowed(b.Policy(), r, in.Principals, rq, now); err != nil {
		return IssuedSSHCert{}, err
	}
	if time.Unix(int64(cert.ValidBefore), 0).After(r.GrantExpiresAt) {
		return IssuedSSHCert{}, errors.New("certificate would outlive its grant") // cannot happen: valid-before is at most the grant end
	}
	serial := strconv.FormatUint(cert.Serial, 10)
	payload := audit.SSHCertificateIssued{Serial: serial, KeyID: cert.KeyId, CAKID: caKID, Principals: cert.ValidPrincipals,
		ValidAfter: rq.ValidAfter, ValidBefore: rq.ValidBefore, CriticalOptions: rq.CriticalOptions, Extensions: rq.Extensions,
		SubjectKeySHA256: ssh.FingerprintSHA256(rq.Key), Certificate: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(cert))),
		Approvers: approvers, Issuance: r.Issued + 1}
	rec, err := b.recordCertificate(ctx, tx, r, caller, now, audit.TypeSSHCertIssued, payload, &store.CertRecord{Kind: store.CertSSH, CAKID: caKID,
		Serial: serial, RequestID: r.ID, Account: r.Account, Subject: r.Requester, IssuedAt: now, NotBefore: rq.ValidAfter, ExpiresAt: rq.ValidBefore,
		Fingerprint: payload.SubjectKeySHA256},
		fmt.Sprintf("%s received SSH certificate %d of %d on %s for %s (serial %s, expires %s)", caller, r.Issued+1, r.MaxIssuances, r.Account,
			strings.Join(cert.ValidPrincipals, ","), serial, rq.ValidBefore.Format(time.RFC3339)))
	if err != nil {
		return IssuedSSHCert{}, err
	}
	return IssuedSSHCert{Cert: cert, CAKID: caKID, IssuancesLeft: r.MaxIssuances - r.Issued, Entry: rec}, nil
}

// IssueX509Certificate signs an X.509 client certificate for an approved
// grant from a certificate request whose signature proves possession of
// its key. Subject, names and usages come from the policy only; of the
// request only the public key is used.
func (b *Broker) IssueX509Certificate(ctx context.Context, caller string, in X509CertInput) (*IssuedX509Cert, error) {
	csr, err := x509ca.ParseCSR(in.CSR)
	if err != nil {
		return nil, invalid("csr: %s", err)
	}
	cas, err := b.authorities()
	if err != nil {
		return nil, err
	}
	ca, caKID, caErr := cas.X509CA()
	p := b.Policy()
	now := b.now().UTC()
	var r *request.Request
	var rq x509ca.Request
	var approvers []string
	err = b.view(ctx, func(rd store.Reader) error {
		var err error
		if r, err = b.loadRequest(ctx, rd, in.RequestID, caller); err != nil {
			return err
		}
		acct, o, err := b.checkGrant(p, r, caller, now, "certificates", "used for a certificate")
		if err != nil {
			return err
		}
		if err := b.checkWitnessed(ctx, rd, r); err != nil {
			return err
		}
		if rq, err = x509CertFor(acct, r, now); err != nil {
			return err
		}
		approvers = o.Approvers()
		if caErr != nil {
			return wrongState("no X.509 certificate can be issued: %s", caErr)
		}
		return checkCAInForce(ctx, rd, purposeX509CA, caKID)
	})
	if err != nil {
		return nil, err
	}
	if end := ca.Certificate().NotAfter; rq.NotAfter.After(end) {
		return nil, wrongState("the X.509 CA certificate ends at %s, before this grant: renew it (breakglassd hsm ca-cert) or rotate the CA", end.UTC().Format(time.RFC3339))
	}
	rq.PublicKey = csr.PublicKey
	rq.CRLDistributionPoints = []string{cas.CRLURL(caKID)}
	if rq.Serial, err = x509ca.RandomSerial(); err != nil {
		return nil, internal(err)
	}
	if b.hsmSuspect() {
		return nil, hsmDown(errHSMBackoff)
	}
	cert, err := ca.Issue(ctx, rq)
	if err != nil {
		return nil, b.hsmFailure(ctx, err)
	}
	var out IssuedX509Cert
	err = b.update(ctx, func(tx store.Tx) (err error) {
		out, err = b.recordX509Cert(ctx, tx, caller, in, approvers, rq, cert, caKID)
		out.CACert = ca.Certificate()
		return err
	})
	if err != nil {
		return nil, err
	}
	b.notify(in.RequestID)
	b.log.Info("x509 certificate issued", "request", in.RequestID, "requester", caller, "serial", cert.SerialNumber.String(),
		"common_name", cert.Subject.CommonName, "entry", out.Entry.Index)
	return &out, nil
}

// recordX509Cert checks, in the transaction that records it, that the
// grant and the CA key still allow an issued X.509 certificate, and logs
// it.
func (b *Broker) recordX509Cert(ctx context.Context, tx store.Tx, caller string, in X509CertInput, approvers []string, rq x509ca.Request,
	cert *x509.Certificate, caKID string) (IssuedX509Cert, error) {
	r, err := b.certificateGrant(ctx, tx, caller, in.RequestID, approvers, "")
	if err != nil {
		return IssuedX509Cert{}, err
	}
	if err := checkCAInForce(ctx, tx, purposeX509CA, caKID); err != nil {
		return IssuedX509Cert{}, err
	}
	now := b.now().UTC()
	if err := x509CertStillAllowed(b.Policy(), r, rq, now); err != nil {
		return IssuedX509Cert{}, err
	}
	if cert.NotAfter.After(r.GrantExpiresAt) {
		return IssuedX509Cert{}, errors.New("certificate would outlive its grant") // cannot happen: not-after is at most the grant end
	}
	spki := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	var uris []string
	for _, u := range cert.URIs {
		uris = append(uris, u.String())
	}
	serial := cert.SerialNumber.String()
	payload := audit.X509CertificateIssued{Serial: serial, CAKID: caKID, CommonName: cert.Subject.CommonName, DNSNames: cert.DNSNames, URIs: uris,
		NotBefore: cert.NotBefore.UTC(), NotAfter: cert.NotAfter.UTC(), SubjectKeySHA256: hex.EncodeToString(spki[:]), Certificate: cert.Raw,
		Approvers: approvers, Issuance: r.Issued + 1}
	rec, err := b.recordCertificate(ctx, tx, r, caller, now, audit.TypeX509CertIssued, payload, &store.CertRecord{Kind: store.CertX509, CAKID: caKID,
		Serial: serial, RequestID: r.ID, Account: r.Account, Subject: r.Requester, IssuedAt: now, NotBefore: cert.NotBefore, ExpiresAt: cert.NotAfter,
		Fingerprint: payload.SubjectKeySHA256},
		fmt.Sprintf("%s received X.509 certificate %d of %d on %s for CN=%s (serial %s, expires %s)", caller, r.Issued+1, r.MaxIssuances, r.Account,
			cert.Subject.CommonName, serial, cert.NotAfter.UTC().Format(time.RFC3339)))
	if err != nil {
		return IssuedX509Cert{}, err
	}
	return IssuedX509Cert{Cert: cert, CAKID: caKID, IssuancesLeft: r.MaxIssuances - r.Issued, Entry: rec}, nil
}

// sshCertFor is what the policy gives a grant's SSH certificate now:
// principals (the requested ones, each allowed), options, extensions and
// validity; the key and serial are the caller's.
func sshCertFor(acct *policy.Account, r *request.Request, requested []string, now time.Time) (sshca.Request, error) {
	if acct.SSH == nil {
		return sshca.Request{}, wrongState("account %s does not allow SSH certificates (its policy has no ssh: section)", acct.Name)
	}
	principals, err := sshPrincipals(acct, r, requested)
	if err != nil {
		return sshca.Request{}, err
	}
	from, until, err := validity(r, now, acct.SSH.MaxTTL.D())
	if err != nil {
		return sshca.Request{}, err
	}
	opts := map[string]string{}
	if acct.SSH.ForceCommand != "" {
		opts["force-command"] = acct.SSH.ForceCommand
	}
	if len(acct.SSH.SourceAddresses) > 0 {
		opts["source-address"] = strings.Join(acct.SSH.SourceAddresses, ",")
	}
	return sshca.Request{KeyID: sshca.KeyID(r.ID, r.Issued+1, r.Requester), Principals: principals,
		ValidAfter: from, ValidBefore: until, CriticalOptions: opts, Extensions: acct.SSH.Extensions}, nil
}

// errPolicyChanged refuses a certificate made under a policy that is no
// longer in force.
var errPolicyChanged = &Error{Kind: KindState, Msg: "the account's policy changed while the certificate was being made, and no longer gives what it names; try again"}

// sshCertStillAllowed checks, when the certificate is recorded, that the
// policy in force then gives what was signed: the same principals,
// options and extensions, and a validity no longer than it allows from
// now. A policy reloaded while the HSM signed must not let a certificate
// of the old policy into the log.
func sshCertStillAllowed(p *policy.Policy, r *request.Request, requested []string, signed sshca.Request, now time.Time) error {
	acct, ok := p.Account(r.Account)
	if !ok {
		return errPolicyChanged
	}
	want, err := sshCertFor(acct, r, requested, now)
	if err != nil {
		if KindOf(err) == KindInvalid {
			return errPolicyChanged // a principal it no longer allows
		}
		return err
	}
	if !slices.Equal(want.Principals, signed.Principals) || !maps.Equal(want.CriticalOptions, signed.CriticalOptions) ||
		!slices.Equal(want.Extensions, signed.Extensions) || !want.ValidAfter.Equal(signed.ValidAfter) || signed.ValidBefore.After(want.ValidBefore) {
		return errPolicyChanged
	}
	return nil
}

// x509CertFor is what the policy gives a grant's X.509 certificate now:
// subject, names, usages and validity; the key, serial and distribution
// point are the caller's.
func x509CertFor(acct *policy.Account, r *request.Request, now time.Time) (x509ca.Request, error) {
	if acct.X509 == nil {
		return x509ca.Request{}, wrongState("account %s does not allow X.509 certificates (its policy has no x509: section)", acct.Name)
	}
	rq, err := x509Names(acct, r)
	if err != nil {
		return rq, err
	}
	rq.NotBefore, rq.NotAfter, err = validity(r, now, acct.X509.MaxTTL.D())
	return rq, err
}

// x509CertStillAllowed is sshCertStillAllowed for X.509 certificates.
func x509CertStillAllowed(p *policy.Policy, r *request.Request, signed x509ca.Request, now time.Time) error {
	acct, ok := p.Account(r.Account)
	if !ok {
		return errPolicyChanged
	}
	want, err := x509CertFor(acct, r, now)
	if err != nil {
		return err
	}
	uri := func(us []*url.URL) []string {
		var out []string
		for _, u := range us {
			out = append(out, u.String())
		}
		return out
	}
	if want.CommonName != signed.CommonName || !slices.Equal(want.DNSNames, signed.DNSNames) || !slices.Equal(uri(want.URIs), uri(signed.URIs)) ||
		!slices.Equal(want.ExtKeyUsage, signed.ExtKeyUsage) || !want.NotBefore.Equal(signed.NotBefore) || signed.NotAfter.After(want.NotAfter) {
		return errPolicyChanged
	}
	return nil
}

// The CA keys' purposes in the key registry.
const (
	purposeSSHCA  = "ssh-ca"
	purposeX509CA = "x509-ca"
)

// checkCAInForce refuses a certificate of CA key kid unless the key
// registry in rd names kid the active key of its purpose. Read before
// signing, it keeps a broker that has not yet reloaded its CAs after a
// rotation by another process (breakglassd hsm rotate) from signing with
// the retired key; read again in the write transaction, it throws away a
// certificate whose key was retired while the HSM signed it, so no
// certificate is ever recorded under a key after its retirement (when its
// last certificate is counted before the key is destroyed with its CRL).
// CAs that do not follow the registry (no active key of the purpose) are
// not checked.
func checkCAInForce(ctx context.Context, rd store.Reader, purpose, kid string) error {
	rec, err := rd.ActiveKey(ctx, purpose, "")
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if rec.KID == kid {
		return nil
	}
	what := "SSH"
	if purpose == purposeX509CA {
		what = "X.509"
	}
	return &Error{Kind: KindState, Msg: fmt.Sprintf("the %s CA key was rotated (the registry's active key is now %s, this broker's %s); the broker loads the new key within seconds: try again", what, rec.KID, kid)}
}

// x509Names fills a certificate's subject and names from the policy, for
// the requester, or for a drill the drill common name alone.
func x509Names(acct *policy.Account, r *request.Request) (x509ca.Request, error) {
	x := acct.X509
	var rq x509ca.Request
	if r.Drill {
		if x.DrillCommonName == "" {
			return rq, wrongState("request %s is a drill and account %s names no x509.drill_common_name: drills get no X.509 certificate for real names", r.ID, acct.Name)
		}
		rq.CommonName = policy.Expand(x.DrillCommonName, r.Requester, acct.Name)
	} else {
		rq.CommonName = policy.Expand(x.CommonName, r.Requester, acct.Name)
		for _, d := range x.DNSNames {
			rq.DNSNames = append(rq.DNSNames, policy.Expand(d, r.Requester, acct.Name))
		}
		for _, s := range x.URISANs {
			u, err := url.Parse(policy.Expand(s, r.Requester, acct.Name))
			if err != nil {
				return rq, wrongState("account %s's URI SAN %q does not parse for %s", acct.Name, s, r.Requester)
			}
			rq.URIs = append(rq.URIs, u)
		}
	}
	// The policy was validated for every requester it had when loaded;
	// check again for this one all the same.
	if !policy.ValidCommonName(rq.CommonName) {
		return rq, wrongState("account %s's common name template gives %q for %s, which is not a valid common name", acct.Name, rq.CommonName, r.Requester)
	}
	for _, d := range rq.DNSNames {
		if !policy.ValidDNSName(d) {
			return rq, wrongState("account %s's DNS name template gives %q for %s, which is not a DNS name", acct.Name, d, r.Requester)
		}
	}
	for _, e := range x.ExtKeyUsage {
		switch e {
		case "client_auth":
			rq.ExtKeyUsage = append(rq.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
		case "server_auth":
			rq.ExtKeyUsage = append(rq.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		}
	}
	return rq, nil
}

// certificateGrant reads the request again inside the write transaction
// and checks everything again: the policy in force, the grant, and that
// the approvals that counted are the ones the certificate was made for.
func (b *Broker) certificateGrant(ctx context.Context, tx store.Tx, caller, id string, approvers []string, keyID string) (*request.Request, error) {
	r, err := b.loadRequest(ctx, tx, id, caller)
	if err != nil {
		return nil, err
	}
	if err := b.checkPolicyInForce(ctx, tx); err != nil {
		return nil, err
	}
	_, o, err := b.checkGrant(b.Policy(), r, caller, b.now().UTC(), "certificates", "used for a certificate")
	if err != nil {
		return nil, err
	}
	if !slices.Equal(o.Approvers(), approvers) {
		return nil, &Error{Kind: KindState, Msg: "the request's approvals changed while the certificate was being made; try again"}
	}
	if keyID != "" && keyID != fmt.Sprintf("breakglass:%s:%d:%s", r.ID, r.Issued+1, r.Requester) {
		return nil, &Error{Kind: KindState, Msg: "another token or certificate was issued for this grant while the certificate was being made; try again"}
	}
	if err := b.checkWitnessed(ctx, tx, r); err != nil {
		return nil, err
	}
	return r, nil
}

// recordCertificate counts an issuance against the grant and writes its
// audit entry, its certificate record and its event in the transaction.
func (b *Broker) recordCertificate(ctx context.Context, tx store.Tx, r *request.Request, caller string, now time.Time, typ audit.Type,
	payload any, rec *store.CertRecord, summary string) (audit.Record, error) {
	r.Issued++
	first := r.FirstIssuedAt.IsZero()
	if first {
		r.FirstIssuedAt = now
	}
	entry, err := b.appendEntry(ctx, tx, now, audit.Draft{Type: typ, Actor: caller, Request: r.ID, Account: r.Account, Payload: payload}, true)
	if err != nil {
		return audit.Record{}, err
	}
	rec.EntryIndex = entry.Index
	if err := tx.AddCertificate(ctx, rec); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return audit.Record{}, &Error{Kind: KindState, Msg: "a serial collided with an earlier certificate's; try again", Err: err}
		}
		return audit.Record{}, err
	}
	if err := tx.SaveRequest(ctx, r); err != nil {
		return audit.Record{}, err
	}
	if err := b.emit(ctx, tx, requestEvent(event.CertIssued, r, caller, summary, &entry), nil); err != nil {
		return audit.Record{}, err
	}
	if first && !r.Solo { // a solo grant's review opened at its approval
		if err := b.openPostReview(ctx, tx, r, now); err != nil {
			return audit.Record{}, err
		}
	}
	return entry, nil
}
