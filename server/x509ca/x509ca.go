// Package x509ca is the broker's X.509 client certificate authority: an
// ECDSA P-256 key in the HSM with its CA certificate (self-signed in the HSM
// or signed by the organisation's root) signs short-lived client
// certificates and their CRL through crypto/x509. The subject and names of
// a certificate are the caller's, from the policy; of the certificate
// request only the public key is used, after its signature is checked.
package x509ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // RFC 5280 §4.2.1.2 method 1 key identifiers, not a security function.
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/url"
	"strings"
	"time"
)

// Signer is the CA key: the HSM key, whose signatures honour a context.
type Signer interface {
	Public() crypto.PublicKey
	SignContext(ctx context.Context, digest []byte, opts crypto.SignerOpts) ([]byte, error)
}

type ctxSigner struct {
	ctx context.Context
	key Signer
}

func (s ctxSigner) Public() crypto.PublicKey { return s.key.Public() }

func (s ctxSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return s.key.SignContext(s.ctx, digest, opts)
}

// CA signs client certificates and CRLs.
type CA struct {
	key  Signer
	cert *x509.Certificate
}

// New pairs a CA certificate with its key, refusing a certificate that is
// not the key's, not a CA, cannot sign certificates and CRLs, or has no
// subject key identifier (the certificates it signs name it).
func New(cert *x509.Certificate, key Signer) (*CA, error) {
	ec, ok := key.Public().(*ecdsa.PublicKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, errors.New("x509ca: the X.509 CA key must be ECDSA P-256")
	}
	if !ec.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("x509ca: the CA certificate %q is not the certificate of the CA key in the HSM (its public key differs)", cert.Subject)
	}
	if !cert.IsCA || !cert.BasicConstraintsValid {
		return nil, fmt.Errorf("x509ca: the certificate %q is not a CA certificate (basic constraints CA:TRUE)", cert.Subject)
	}
	if cert.KeyUsage&x509.KeyUsageCertSign == 0 || cert.KeyUsage&x509.KeyUsageCRLSign == 0 {
		return nil, fmt.Errorf("x509ca: the CA certificate %q lacks key usage keyCertSign or cRLSign", cert.Subject)
	}
	if len(cert.SubjectKeyId) == 0 {
		return nil, fmt.Errorf("x509ca: the CA certificate %q has no subject key identifier", cert.Subject)
	}
	return &CA{key: key, cert: cert}, nil
}

// Certificate is the CA certificate.
func (c *CA) Certificate() *x509.Certificate { return c.cert }

// Request is one client certificate to issue.
type Request struct {
	// PublicKey is the subject key, from a checked CSR.
	PublicKey   crypto.PublicKey
	Serial      *big.Int
	CommonName  string
	DNSNames    []string
	URIs        []*url.URL
	NotBefore   time.Time
	NotAfter    time.Time
	ExtKeyUsage []x509.ExtKeyUsage
	// CRLDistributionPoints are the URLs of the CRL covering it.
	CRLDistributionPoints []string
}

// Issue signs a client certificate in the HSM. Go verifies the signature
// before returning it.
func (c *CA) Issue(ctx context.Context, rq Request) (*x509.Certificate, error) {
	if err := CheckSubjectKey(rq.PublicKey); err != nil {
		return nil, err
	}
	if rq.Serial == nil || rq.Serial.Sign() <= 0 {
		return nil, errors.New("x509ca: a positive serial is required")
	}
	if !rq.NotBefore.Before(rq.NotAfter) {
		return nil, errors.New("x509ca: empty validity")
	}
	if rq.NotAfter.After(c.cert.NotAfter) {
		return nil, fmt.Errorf("x509ca: the certificate would outlive the CA certificate (which ends %s); renew the CA certificate", c.cert.NotAfter.UTC().Format(time.RFC3339))
	}
	if len(rq.ExtKeyUsage) == 0 {
		return nil, errors.New("x509ca: no extended key usage")
	}
	ski, err := KeyID(rq.PublicKey)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          rq.Serial,
		Subject:               pkix.Name{CommonName: rq.CommonName},
		DNSNames:              rq.DNSNames,
		URIs:                  rq.URIs,
		NotBefore:             rq.NotBefore,
		NotAfter:              rq.NotAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           rq.ExtKeyUsage,
		BasicConstraintsValid: true,
		IsCA:                  false,
		SubjectKeyId:          ski,
		AuthorityKeyId:        c.cert.SubjectKeyId,
		CRLDistributionPoints: rq.CRLDistributionPoints,
		SignatureAlgorithm:    x509.ECDSAWithSHA256,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, rq.PublicKey, ctxSigner{ctx, c.key})
	if err != nil {
		return nil, fmt.Errorf("x509ca: signing the certificate: %w", err)
	}
	return x509.ParseCertificate(der)
}

// CRL signs a CRL (RFC 5280 §5, version 2, with CRL number and the CA's
// authority key identifier) listing revoked.
func (c *CA) CRL(ctx context.Context, number *big.Int, thisUpdate, nextUpdate time.Time, revoked []x509.RevocationListEntry) ([]byte, error) {
	tmpl := &x509.RevocationList{
		SignatureAlgorithm:        x509.ECDSAWithSHA256,
		RevokedCertificateEntries: revoked,
		Number:                    number,
		ThisUpdate:                thisUpdate,
		NextUpdate:                nextUpdate,
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, c.cert, ctxSigner{ctx, c.key})
	if err != nil {
		return nil, fmt.Errorf("x509ca: signing the CRL: %w", err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, err
	}
	if err := crl.CheckSignatureFrom(c.cert); err != nil {
		return nil, fmt.Errorf("x509ca: the HSM's CRL signature does not verify: %w", err)
	}
	return der, nil
}

// CAOptions describe a CA certificate.
type CAOptions struct {
	Subject   pkix.Name
	NotBefore time.Time
	NotAfter  time.Time
	// PermittedDNSDomains and PermittedURIDomains, when set, become
	// critical name constraints.
	PermittedDNSDomains []string
	PermittedURIDomains []string
}

// SelfSign makes a CA certificate for key, signed by key in the HSM: path
// length 0 (it signs only end-entity certificates), key usage keyCertSign
// and cRLSign.
func SelfSign(ctx context.Context, key Signer, o CAOptions) (*x509.Certificate, error) {
	ski, err := KeyID(key.Public())
	if err != nil {
		return nil, err
	}
	serial, err := RandomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:                serial,
		Subject:                     o.Subject,
		NotBefore:                   o.NotBefore,
		NotAfter:                    o.NotAfter,
		KeyUsage:                    x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid:       true,
		IsCA:                        true,
		MaxPathLen:                  0,
		MaxPathLenZero:              true,
		SubjectKeyId:                ski,
		PermittedDNSDomains:         o.PermittedDNSDomains,
		PermittedURIDomains:         o.PermittedURIDomains,
		PermittedDNSDomainsCritical: len(o.PermittedDNSDomains)+len(o.PermittedURIDomains) > 0,
		SignatureAlgorithm:          x509.ECDSAWithSHA256,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), ctxSigner{ctx, key})
	if err != nil {
		return nil, fmt.Errorf("x509ca: self-signing the CA certificate: %w", err)
	}
	return x509.ParseCertificate(der)
}

// CSR makes a certificate request for key, signed in the HSM, for an
// organisation's root to sign as the broker's CA.
func CSR(ctx context.Context, key Signer, subject pkix.Name) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: subject, SignatureAlgorithm: x509.ECDSAWithSHA256}, ctxSigner{ctx, key})
	if err != nil {
		return nil, fmt.Errorf("x509ca: signing the CSR: %w", err)
	}
	return der, nil
}

// MaxCSRBytes bounds a certificate request.
const MaxCSRBytes = 16 << 10

// MinRSABits is the smallest RSA subject key accepted.
const MinRSABits = 3072

// ParseCSR reads a certificate request in PEM or DER and checks its
// signature (proof that the requester holds the key) and its key.
func ParseCSR(b []byte) (*x509.CertificateRequest, error) {
	if len(b) > MaxCSRBytes {
		return nil, fmt.Errorf("the certificate request is %d bytes; at most %d", len(b), MaxCSRBytes)
	}
	der := b
	if t := bytes.TrimSpace(b); bytes.HasPrefix(t, []byte("-----BEGIN")) {
		blk, rest := pem.Decode(t)
		if blk == nil {
			return nil, errors.New("the certificate request is not valid PEM")
		}
		if blk.Type != "CERTIFICATE REQUEST" && blk.Type != "NEW CERTIFICATE REQUEST" {
			return nil, fmt.Errorf("the PEM block is %q, not a CERTIFICATE REQUEST", blk.Type)
		}
		if len(bytes.TrimSpace(rest)) > 0 {
			return nil, errors.New("more than one PEM block given; give exactly one certificate request")
		}
		der = blk.Bytes
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("not a certificate request (PKCS #10, PEM or DER): %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("the certificate request's signature does not verify, so it does not prove possession of its key: %w", err)
	}
	if err := CheckSubjectKey(csr.PublicKey); err != nil {
		return nil, err
	}
	return csr, nil
}

// CheckSubjectKey accepts ECDSA P-256 and P-384, Ed25519 and RSA of at
// least 3072 bits.
func CheckSubjectKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() || k.Curve == elliptic.P384() {
			return nil
		}
		return fmt.Errorf("ECDSA curve %s is not accepted (use P-256 or P-384)", k.Curve.Params().Name)
	case ed25519.PublicKey:
		return nil
	case *rsa.PublicKey:
		if k.N.BitLen() < MinRSABits {
			return fmt.Errorf("the RSA key has %d bits; at least %d are required", k.N.BitLen(), MinRSABits)
		}
		return nil
	}
	return fmt.Errorf("key type %T is not accepted (use ECDSA P-256/P-384, Ed25519 or RSA of at least %d bits)", pub, MinRSABits)
}

// RandomSerial is a random positive 128-bit serial.
func RandomSerial() (*big.Int, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	s := new(big.Int).SetBytes(b)
	if s.Sign() == 0 {
		s.SetInt64(1)
	}
	return s, nil
}

// KeyID is the RFC 5280 §4.2.1.2 (1) key identifier: SHA-1 of the
// subjectPublicKey bits.
func KeyID(pub crypto.PublicKey) ([]byte, error) {
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	var info struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(spki, &info); err != nil {
		return nil, err
	}
	sum := sha1.Sum(info.PublicKey.Bytes) //nolint:gosec // identifier, not security
	return sum[:], nil
}

// ParseName reads a distinguished name written as RFC 4514 attributes,
// most significant first or last as people write them: "CN=breakglass
// X.509 CA,O=Example,C=DE" (CN, O, OU, L, ST, C, SERIALNUMBER).
func ParseName(s string) (pkix.Name, error) {
	var n pkix.Name
	s = strings.TrimPrefix(strings.TrimSpace(s), "/")
	if s == "" {
		return n, errors.New("empty subject")
	}
	sep := ","
	if !strings.Contains(s, ",") && strings.Contains(s, "/") {
		sep = "/" // OpenSSL's /CN=.../O=... form
	}
	for _, part := range strings.Split(s, sep) {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		v = strings.TrimSpace(v)
		if !ok || v == "" {
			return n, fmt.Errorf("%q is not ATTRIBUTE=value", part)
		}
		switch strings.ToUpper(strings.TrimSpace(k)) {
		case "CN":
			n.CommonName = v
		case "O":
			n.Organization = append(n.Organization, v)
		case "OU":
			n.OrganizationalUnit = append(n.OrganizationalUnit, v)
		case "L":
			n.Locality = append(n.Locality, v)
		case "ST":
			n.Province = append(n.Province, v)
		case "C":
			n.Country = append(n.Country, v)
		case "SERIALNUMBER":
			n.SerialNumber = v
		default:
			return n, fmt.Errorf("unsupported attribute %q (use CN, O, OU, L, ST, C, SERIALNUMBER)", k)
		}
	}
	if n.CommonName == "" {
		return n, errors.New("the subject needs a CN")
	}
	return n, nil
}

// ParseCertificates reads every CERTIFICATE block of a PEM bundle.
func ParseCertificates(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no CERTIFICATE block")
	}
	return out, nil
}
