package auditverify

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/keyid"
	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/format/statement"
)

// certState is what the replay keeps of the certificates it has seen.
type certState struct {
	sshCAs  []ssh.PublicKey
	x509CAs []*x509.Certificate
	ssh     int
	x509    int
	// sshSeen and x509Seen hold "CA kid/serial" of every certificate not
	// yet expired: a serial is unique among those a KRL or CRL may name.
	sshSeen  digestSet
	x509Seen digestSet
}

func newCertState(o Options) certState {
	return certState{sshCAs: o.SSHCAKeys, x509CAs: o.X509CACerts, sshSeen: digestSet{}, x509Seen: digestSet{}}
}

// certificateIssued replays an ssh_certificate_issued or
// x509_certificate_issued entry like a token: the grant was approved by its
// quorum (under the policy in force), not ended, not exhausted; the
// certificate is the one the entry describes, signed by a pinned CA, and
// names nothing the logged policy did not allow, for no longer than the
// grant.
func (r *replay) certificateIssued(i int64, e *audit.Entry) *Violation {
	q, v := r.request(i, e)
	if v != nil {
		return v
	}
	if v := r.grantUsable(i, e, q, "certificate"); v != nil {
		return v
	}
	acct, ok := r.policy.Account(q.account)
	if !ok {
		return violation(i, "account %s is not in the policy in force", q.account)
	}
	var approvers []string
	var from, until time.Time
	var kind string
	var maxTTL time.Duration
	if e.Type == audit.TypeSSHCertIssued {
		var p audit.SSHCertificateIssued
		if err := decode(e.Payload, &p); err != nil {
			return violation(i, "malformed ssh_certificate_issued payload: %v", err)
		}
		cert, vv := r.checkSSHCert(i, q, acct, p)
		if vv != nil {
			return vv
		}
		approvers, from, until = p.Approvers, time.Unix(int64(cert.ValidAfter), 0), time.Unix(int64(cert.ValidBefore), 0)
		kind, maxTTL = "ssh", acct.SSH.MaxTTL.D()
		r.certs.ssh++
	} else {
		var p audit.X509CertificateIssued
		if err := decode(e.Payload, &p); err != nil {
			return violation(i, "malformed x509_certificate_issued payload: %v", err)
		}
		cert, vv := r.checkX509Cert(i, q, acct, p)
		if vv != nil {
			return vv
		}
		approvers, from, until = p.Approvers, cert.NotBefore, cert.NotAfter
		kind, maxTTL = "x509", acct.X509.MaxTTL.D()
		r.certs.x509++
	}
	switch {
	case until.After(q.grantEnd):
		return violation(i, "the certificate is valid until %s, after its grant ends at %s", until.UTC().Format(time.RFC3339), q.grantEnd.UTC().Format(time.RFC3339))
	case from.Before(q.approvedAt.Truncate(time.Second)):
		return violation(i, "the certificate is valid from %s, before its grant was approved at %s", from.UTC().Format(time.RFC3339), q.approvedAt.UTC().Format(time.RFC3339))
	case !from.Before(until):
		return violation(i, "the certificate's validity is empty")
	case maxTTL > 0 && until.After(e.Time.Add(maxTTL)):
		return violation(i, "the certificate is valid until %s, more than account %s's %s.max_ttl (%s) after its issuance at %s", until.UTC().Format(time.RFC3339),
			acct.Name, kind, maxTTL, e.Time.UTC().Format(time.RFC3339))
	}
	for _, a := range approvers {
		if !slices.Contains(q.approvals(), a) {
			return violation(i, "the certificate's entry names %s as an approver, who did not approve request %s", a, q.id)
		}
	}
	q.issued++
	return nil
}

// grantUsable holds the rules tokens and certificates share: issued to the
// requester, of an approved grant before its end, the first within the
// activation window, within max_issuances, with its quorum (or a solo
// grant the policy allows), and the alert acknowledged where required.
func (r *replay) grantUsable(i int64, e *audit.Entry, q *reqState, what string) *Violation {
	switch {
	case e.Actor != q.requester:
		return violation(i, "%s issued to %s, not the requester %s", what, e.Actor, q.requester)
	case q.state != "APPROVED":
		return violation(i, "%s issued for request %s, which is %s, not an approved grant", what, q.id, q.state)
	case !e.Time.Before(q.grantEnd):
		return violation(i, "%s issued after its grant ended at %s", what, q.grantEnd.Format(time.RFC3339))
	case q.issued == 0 && !e.Time.Before(q.activationDeadline) && q.activationDeadline.Before(q.grantEnd):
		return violation(i, "first %s issued after the activation deadline %s", what, q.activationDeadline.Format(time.RFC3339))
	case q.issued >= q.maxIssuances:
		return violation(i, "%s %d of a grant allowed %d tokens and certificates", what, q.issued+1, q.maxIssuances)
	}
	if q.soloGrant {
		if a, ok := r.policy.Account(q.account); !ok || a.Solo == nil {
			return violation(i, "%s for a solo grant on %s, whose policy in force does not allow solo access", what, q.account)
		}
	} else if o := q.evaluate(r.policy); !o.Met {
		return violation(i, "%s issued without quorum under the policy in force: approvals %v do not satisfy %s", what, q.approvals(), shortRule(q.rule))
	}
	if a, ok := r.policy.Account(q.account); ok && a.RequireAlertAck && q.issued == 0 && !q.grantAcked {
		return violation(i, "first %s of a grant on %s before an ack sink acknowledged the grant alert (require_alert_ack)", what, q.account)
	}
	return nil
}

func (r *replay) checkSSHCert(i int64, q *reqState, acct *policy.Account, p audit.SSHCertificateIssued) (*ssh.Certificate, *Violation) {
	if acct.SSH == nil {
		return nil, violation(i, "an SSH certificate for account %s, whose policy in force allows none", acct.Name)
	}
	pk, _, _, rest, err := ssh.ParseAuthorizedKey([]byte(p.Certificate))
	if err != nil || len(bytes.TrimSpace(rest)) > 0 {
		return nil, violation(i, "the logged SSH certificate does not parse")
	}
	cert, ok := pk.(*ssh.Certificate)
	if !ok || cert.CertType != ssh.UserCert {
		return nil, violation(i, "the logged SSH certificate is not a user certificate")
	}
	if len(r.certs.sshCAs) == 0 {
		return nil, violation(i, "the log holds SSH certificates: give the SSH CA keys (--ssh-ca-key) to check who signed them")
	}
	signer := r.sshSigner(cert)
	if signer == nil {
		return nil, violation(i, "the SSH certificate (serial %d) is not signed by a pinned SSH CA key", cert.Serial)
	}
	ck, ok := signer.(ssh.CryptoPublicKey)
	if !ok {
		return nil, violation(i, "the SSH CA key has no public key")
	}
	if kid, err := keyid.Thumbprint(ck.CryptoPublicKey()); err != nil || kid != p.CAKID {
		return nil, violation(i, "the entry says CA key %s signed it, but %s did", p.CAKID, kid)
	}
	allowed := acct.SSH.Principals
	if q.drill {
		allowed = acct.SSH.DrillPrincipals
	}
	wantOpts := map[string]string{}
	if acct.SSH.ForceCommand != "" {
		wantOpts["force-command"] = acct.SSH.ForceCommand
	}
	if len(acct.SSH.SourceAddresses) > 0 {
		wantOpts["source-address"] = strings.Join(acct.SSH.SourceAddresses, ",")
	}
	exts := slices.Sorted(maps.Keys(cert.Extensions))
	switch {
	case strconv.FormatUint(cert.Serial, 10) != p.Serial || cert.KeyId != p.KeyID || !slices.Equal(cert.ValidPrincipals, p.Principals) ||
		!time.Unix(int64(cert.ValidAfter), 0).Equal(p.ValidAfter) || !time.Unix(int64(cert.ValidBefore), 0).Equal(p.ValidBefore) ||
		ssh.FingerprintSHA256(cert.Key) != p.SubjectKeySHA256:
		return nil, violation(i, "the SSH certificate differs from what its entry says of it")
	case cert.Serial == 0:
		return nil, violation(i, "the SSH certificate has serial 0, which no KRL can revoke")
	case r.certs.sshSeen.has(p.CAKID + "/" + p.Serial):
		return nil, violation(i, "SSH certificate serial %s was issued before by the same CA", p.Serial)
	case cert.KeyId != fmt.Sprintf("breakglass:%s:%d:%s", q.id, q.issued+1, q.requester) || p.Issuance != q.issued+1:
		return nil, violation(i, "the SSH certificate's key ID %q is not breakglass:%s:%d:%s", cert.KeyId, q.id, q.issued+1, q.requester)
	case len(cert.ValidPrincipals) == 0:
		return nil, violation(i, "the SSH certificate has no principals: it would be valid for every user")
	case !maps.Equal(cert.CriticalOptions, wantOpts):
		return nil, violation(i, "the SSH certificate's critical options %v are not the policy's %v", cert.CriticalOptions, wantOpts)
	case !slices.Equal(exts, acct.SSH.Extensions) || slices.ContainsFunc(exts, func(k string) bool { return cert.Extensions[k] != "" }):
		return nil, violation(i, "the SSH certificate's extensions %v are not the policy's %v", exts, acct.SSH.Extensions)
	}
	for _, pr := range cert.ValidPrincipals {
		if !slices.Contains(allowed, pr) {
			what := "SSH principals"
			if q.drill {
				what = "drill principals"
			}
			return nil, violation(i, "the SSH certificate names principal %q, which is not one of account %s's %s in the logged policy", pr, acct.Name, what)
		}
	}
	serial := p.CAKID + "/" + p.Serial
	r.certs.sshSeen.add(serial)
	r.forgetting.after(time.Unix(int64(cert.ValidBefore), 0).Add(statement.MaxSkew), func() { r.certs.sshSeen.forget(serial) })
	return cert, nil
}

// sshSigner returns the pinned CA key whose signature the certificate
// carries, after checking it.
func (r *replay) sshSigner(cert *ssh.Certificate) ssh.PublicKey {
	for _, ca := range r.certs.sshCAs {
		if !bytes.Equal(ca.Marshal(), cert.SignatureKey.Marshal()) {
			continue
		}
		checker := ssh.CertChecker{IsUserAuthority: func(a ssh.PublicKey) bool { return bytes.Equal(a.Marshal(), ca.Marshal()) },
			Clock:                    func() time.Time { return time.Unix(int64(cert.ValidAfter), 0) },
			SupportedCriticalOptions: []string{"force-command", "source-address"}}
		if len(cert.ValidPrincipals) > 0 && checker.CheckCert(cert.ValidPrincipals[0], cert) == nil {
			return ca
		}
	}
	return nil
}

func (r *replay) checkX509Cert(i int64, q *reqState, acct *policy.Account, p audit.X509CertificateIssued) (*x509.Certificate, *Violation) {
	if acct.X509 == nil {
		return nil, violation(i, "an X.509 certificate for account %s, whose policy in force allows none", acct.Name)
	}
	cert, err := x509.ParseCertificate(p.Certificate)
	if err != nil {
		return nil, violation(i, "the logged X.509 certificate does not parse: %v", err)
	}
	if len(r.certs.x509CAs) == 0 {
		return nil, violation(i, "the log holds X.509 certificates: give the X.509 CA certificates (--x509-ca-cert) to check who signed them")
	}
	var issuer *x509.Certificate
	for _, ca := range r.certs.x509CAs {
		if cert.CheckSignatureFrom(ca) == nil {
			issuer = ca
			break
		}
	}
	if issuer == nil {
		return nil, violation(i, "the X.509 certificate (serial %s) is not signed by a pinned X.509 CA", cert.SerialNumber)
	}
	if kid, err := keyid.Thumbprint(issuer.PublicKey); err != nil || kid != p.CAKID {
		return nil, violation(i, "the entry says CA key %s signed it, but %s did", p.CAKID, kid)
	}
	tmpl := acct.X509.CommonName
	var wantDNS, wantURIs []string
	if q.drill {
		tmpl = acct.X509.DrillCommonName
	} else {
		for _, d := range acct.X509.DNSNames {
			wantDNS = append(wantDNS, policy.Expand(d, q.requester, acct.Name))
		}
		for _, u := range acct.X509.URISANs {
			wantURIs = append(wantURIs, policy.Expand(u, q.requester, acct.Name))
		}
	}
	var uris []string
	for _, u := range cert.URIs {
		uris = append(uris, u.String())
	}
	var ekus []string
	for _, u := range cert.ExtKeyUsage {
		switch u {
		case x509.ExtKeyUsageClientAuth:
			ekus = append(ekus, "client_auth")
		case x509.ExtKeyUsageServerAuth:
			ekus = append(ekus, "server_auth")
		default:
			ekus = append(ekus, fmt.Sprintf("other(%d)", u))
		}
	}
	slices.Sort(ekus)
	spki := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	switch {
	case cert.SerialNumber.String() != p.Serial || cert.Subject.CommonName != p.CommonName || !slices.Equal(cert.DNSNames, p.DNSNames) ||
		!slices.Equal(uris, p.URIs) || !cert.NotBefore.Equal(p.NotBefore) || !cert.NotAfter.Equal(p.NotAfter) || hex.EncodeToString(spki[:]) != p.SubjectKeySHA256:
		return nil, violation(i, "the X.509 certificate differs from what its entry says of it")
	case r.certs.x509Seen.has(p.CAKID + "/" + p.Serial):
		return nil, violation(i, "X.509 certificate serial %s was issued before by the same CA", p.Serial)
	case p.Issuance != q.issued+1:
		return nil, violation(i, "the entry numbers the certificate %d, but it is issuance %d of its grant", p.Issuance, q.issued+1)
	case tmpl == "":
		return nil, violation(i, "an X.509 certificate for drill %s, but account %s names no drill common name", q.id, acct.Name)
	case cert.Subject.CommonName != policy.Expand(tmpl, q.requester, acct.Name) || len(cert.Subject.Names) != 1:
		return nil, violation(i, "the X.509 certificate's subject %q is not the logged policy's %q for %s", cert.Subject, policy.Expand(tmpl, q.requester, acct.Name), q.requester)
	case !slices.Equal(cert.DNSNames, wantDNS) || !slices.Equal(uris, wantURIs) || len(cert.EmailAddresses)+len(cert.IPAddresses) > 0:
		return nil, violation(i, "the X.509 certificate names %v %v, not the logged policy's %v %v", cert.DNSNames, uris, wantDNS, wantURIs)
	case cert.IsCA || !slices.Equal(ekus, acct.X509.ExtKeyUsage) || cert.KeyUsage != x509.KeyUsageDigitalSignature:
		return nil, violation(i, "the X.509 certificate's usages (CA %v, %v) are not the logged policy's %v", cert.IsCA, ekus, acct.X509.ExtKeyUsage)
	}
	serial := p.CAKID + "/" + p.Serial
	r.certs.x509Seen.add(serial)
	r.forgetting.after(cert.NotAfter.Add(statement.MaxSkew), func() { r.certs.x509Seen.forget(serial) })
	return cert, nil
}

// ParseSSHCAKeys reads authorized_keys lines (as /ssh/ca.pub and `hsm
// pubkey --format ssh` print them).
func ParseSSHCAKeys(b []byte) ([]ssh.PublicKey, error) {
	var out []ssh.PublicKey
	for len(bytes.TrimSpace(b)) > 0 {
		pk, _, _, rest, err := ssh.ParseAuthorizedKey(b)
		if err != nil {
			return nil, err
		}
		out = append(out, pk)
		b = rest
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no SSH public key")
	}
	return out, nil
}
