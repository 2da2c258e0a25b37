// Package sshca is the broker's OpenSSH user certificate authority: an
// ECDSA P-256 key in the HSM (ecdsa-sha2-nistp256) signs certificates in the
// format of OpenSSH's PROTOCOL.certkeys through golang.org/x/crypto/ssh.
// What goes into a certificate is decided by the caller from the policy;
// this package only refuses what OpenSSH must never see from it: subject
// keys that are weak, certificates as subject keys, empty principals and
// validity outside what was asked.
package sshca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// Signer is the CA key: the HSM key, whose signatures honour a context.
type Signer interface {
	Public() crypto.PublicKey
	SignContext(ctx context.Context, digest []byte, opts crypto.SignerOpts) ([]byte, error)
}

// CA signs user certificates.
type CA struct {
	key Signer
	pub ssh.PublicKey
}

// New makes a CA of an ECDSA P-256 key.
func New(key Signer) (*CA, error) {
	ec, ok := key.Public().(*ecdsa.PublicKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, errors.New("sshca: the SSH CA key must be ECDSA P-256 (ecdsa-sha2-nistp256)")
	}
	pub, err := ssh.NewPublicKey(ec)
	if err != nil {
		return nil, err
	}
	return &CA{key: key, pub: pub}, nil
}

// PublicKey is the CA's public key, as sshd's TrustedUserCAKeys names it.
func (c *CA) PublicKey() ssh.PublicKey { return c.pub }

// AuthorizedKey is the CA's authorized_keys line with a comment.
func (c *CA) AuthorizedKey(comment string) string {
	return AuthorizedKey(c.pub, comment)
}

// AuthorizedKey is an authorized_keys line for a key, with a comment.
func AuthorizedKey(pub ssh.PublicKey, comment string) string {
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub)))
	if comment != "" {
		line += " " + comment
	}
	return line
}

// Request is one certificate to sign.
type Request struct {
	Key        ssh.PublicKey
	Serial     uint64
	KeyID      string
	Principals []string
	// ValidAfter and ValidBefore are whole seconds; valid after <= t <
	// valid before.
	ValidAfter, ValidBefore time.Time
	// CriticalOptions are force-command and source-address.
	CriticalOptions map[string]string
	Extensions      []string
}

// Sign signs a user certificate in the HSM and checks the signature in
// software before handing it out.
func (c *CA) Sign(ctx context.Context, rq Request) (*ssh.Certificate, error) {
	if err := CheckSubjectKey(rq.Key); err != nil {
		return nil, err
	}
	if len(rq.Principals) == 0 {
		return nil, errors.New("sshca: a certificate without principals is valid for every user; refusing")
	}
	if rq.Serial == 0 {
		return nil, errors.New("sshca: serial 0 means no serial and cannot be revoked by a KRL")
	}
	if !rq.ValidAfter.Before(rq.ValidBefore) {
		return nil, fmt.Errorf("sshca: empty validity %s..%s", rq.ValidAfter, rq.ValidBefore)
	}
	exts := map[string]string{}
	for _, e := range rq.Extensions {
		exts[e] = ""
	}
	cert := &ssh.Certificate{
		Key:             rq.Key,
		Serial:          rq.Serial,
		CertType:        ssh.UserCert,
		KeyId:           rq.KeyID,
		ValidPrincipals: slices.Clone(rq.Principals),
		ValidAfter:      uint64(rq.ValidAfter.Unix()),
		ValidBefore:     uint64(rq.ValidBefore.Unix()),
		Permissions:     ssh.Permissions{CriticalOptions: rq.CriticalOptions, Extensions: exts},
	}
	signer, err := ssh.NewSignerFromSigner(ctxSigner{ctx, c.key})
	if err != nil {
		return nil, err
	}
	if err := cert.SignCert(rand.Reader, signer); err != nil {
		return nil, fmt.Errorf("sshca: signing the certificate: %w", err)
	}
	if err := Verify(cert, c.pub); err != nil {
		return nil, fmt.Errorf("sshca: the HSM's signature does not verify: %w", err)
	}
	return cert, nil
}

// Verify checks that cert is a user certificate signed by ca, as sshd
// would at its valid-after time for its first principal.
func Verify(cert *ssh.Certificate, ca ssh.PublicKey) error {
	if cert.CertType != ssh.UserCert {
		return errors.New("not a user certificate")
	}
	if len(cert.ValidPrincipals) == 0 {
		return errors.New("no principals")
	}
	checker := ssh.CertChecker{
		IsUserAuthority:          func(auth ssh.PublicKey) bool { return string(auth.Marshal()) == string(ca.Marshal()) },
		Clock:                    func() time.Time { return time.Unix(int64(cert.ValidAfter), 0) },
		SupportedCriticalOptions: []string{"force-command", "source-address"},
	}
	return checker.CheckCert(cert.ValidPrincipals[0], cert)
}

type ctxSigner struct {
	ctx context.Context
	key Signer
}

func (s ctxSigner) Public() crypto.PublicKey { return s.key.Public() }

func (s ctxSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return s.key.SignContext(s.ctx, digest, opts)
}

// MinRSABits is the smallest RSA subject key accepted.
const MinRSABits = 3072

// MaxKeyBytes bounds an authorized_keys line.
const MaxKeyBytes = 16 << 10

// ParseSubjectKey reads a public key in authorized_keys format (options
// are refused) and checks it is a key the broker certifies.
func ParseSubjectKey(b []byte) (ssh.PublicKey, error) {
	if len(b) > MaxKeyBytes {
		return nil, fmt.Errorf("the public key is %d bytes; at most %d", len(b), MaxKeyBytes)
	}
	pk, _, options, rest, err := ssh.ParseAuthorizedKey(b)
	if err != nil {
		return nil, fmt.Errorf("not a public key in authorized_keys format (%w)", err)
	}
	if len(options) > 0 {
		return nil, errors.New("the public key line carries authorized_keys options; give the key alone")
	}
	if len(strings.TrimSpace(string(rest))) > 0 {
		return nil, errors.New("more than one public key given; give exactly one")
	}
	if err := CheckSubjectKey(pk); err != nil {
		return nil, err
	}
	return pk, nil
}

// CheckSubjectKey accepts Ed25519, ECDSA P-256 and P-384, and RSA of at
// least 3072 bits, and nothing else: no DSA, no short RSA, no certificate.
func CheckSubjectKey(pk ssh.PublicKey) error {
	if pk == nil {
		return errors.New("no public key")
	}
	if _, ok := pk.(*ssh.Certificate); ok {
		return errors.New("the key is itself a certificate; give the plain public key")
	}
	ck, ok := pk.(ssh.CryptoPublicKey)
	if !ok {
		return fmt.Errorf("key type %s is not accepted (use ssh-ed25519, ecdsa-sha2-nistp256/384 or RSA of at least %d bits)", pk.Type(), MinRSABits)
	}
	switch k := ck.CryptoPublicKey().(type) {
	case ed25519.PublicKey:
		if pk.Type() != ssh.KeyAlgoED25519 {
			break // a security-key (sk-) variant: not on the list
		}
		return nil
	case *ecdsa.PublicKey:
		if pk.Type() != ssh.KeyAlgoECDSA256 && pk.Type() != ssh.KeyAlgoECDSA384 {
			break
		}
		return nil
	case *rsa.PublicKey:
		if k.N.BitLen() < MinRSABits {
			return fmt.Errorf("the RSA key has %d bits; at least %d are required", k.N.BitLen(), MinRSABits)
		}
		return nil
	}
	return fmt.Errorf("key type %s is not accepted (use ssh-ed25519, ecdsa-sha2-nistp256/384 or RSA of at least %d bits)", pk.Type(), MinRSABits)
}

// RandomSerial is a uniformly random, non-zero serial.
func RandomSerial() (uint64, error) {
	for {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return 0, err
		}
		if s := binary.BigEndian.Uint64(b[:]); s != 0 {
			return s, nil
		}
	}
}

// KeyID is the key ID sshd logs at login: breakglass:<request
// id>:<issuance>:<requester>.
func KeyID(requestID string, issuance int, requester string) string {
	return fmt.Sprintf("breakglass:%s:%d:%s", requestID, issuance, requester)
}
