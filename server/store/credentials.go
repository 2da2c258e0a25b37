package store

import (
	"context"
	"time"
)

// Certificate kinds.
const (
	CertSSH  = "ssh"
	CertX509 = "x509"
)

// CertRecord is what the broker keeps of an issued certificate; the
// certificate itself is in its audit entry.
type CertRecord struct {
	Kind string
	// CAKID is the RFC 7638 thumbprint of the CA key that signed it.
	CAKID string
	// Serial is the serial number in decimal.
	Serial    string
	RequestID string
	Account   string
	Subject   string
	IssuedAt  time.Time
	NotBefore time.Time
	ExpiresAt time.Time
	// Fingerprint is the SHA-256 fingerprint of the subject key.
	Fingerprint string
	EntryIndex  uint64
	// RevokedAt is when its grant was revoked (zero while it is not).
	RevokedAt time.Time
}

// RevocationState counts the changes to the set of revoked certificates:
// the KRL's version and date.
type RevocationState struct {
	Generation uint64
	At         time.Time
}

// CRLRecord is the latest CRL of an X.509 CA key.
type CRLRecord struct {
	CAKID      string
	Number     uint64
	ThisUpdate time.Time
	NextUpdate time.Time
	DER        []byte
}

// CertReader reads certificates and revocation lists.
type CertReader interface {
	// RevokedCertificates returns the revoked certificates of a kind that
	// expire after t, by CA and serial.
	RevokedCertificates(ctx context.Context, kind string, t time.Time) ([]CertRecord, error)
	// RequestCertificates returns the certificates issued for a request.
	RequestCertificates(ctx context.Context, requestID string) ([]CertRecord, error)
	// Revocations returns the revocation state (zero before any).
	Revocations(ctx context.Context) (RevocationState, error)
	// LastCertificateExpiry is the latest expiry of certificates signed by
	// the CA key kid (zero if none).
	LastCertificateExpiry(ctx context.Context, kid string) (time.Time, error)
	// CRL returns the latest CRL of a CA key, or ErrNotFound.
	CRL(ctx context.Context, caKID string) (*CRLRecord, error)
}

// CertWriter records certificates and their revocation.
type CertWriter interface {
	// AddCertificate records an issued certificate; a serial used before
	// by the same CA is ErrConflict.
	AddCertificate(ctx context.Context, c *CertRecord) error
	// RevokeCertificates revokes, at at, the unrevoked certificates of a
	// request (requestID) or of a CA key (caKID), and advances the
	// revocation state when there were any. It returns how many.
	RevokeCertificates(ctx context.Context, requestID, caKID string, at time.Time) (int, error)
	// PutCRL stores a CA key's latest CRL.
	PutCRL(ctx context.Context, c CRLRecord) error
}
