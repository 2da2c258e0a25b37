package hsm

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"

	"github.com/miekg/pkcs11"
)

// PKCS#11 3.0 values for Edwards curves that miekg/pkcs11 v1.1.2 lacks.
const (
	ckkECEdwards            = 0x40
	ckmECEdwardsKeyPairGen  = 0x1055
	ckmEdDSA                = 0x1057
	ckrAttributeTypeInvalid = pkcs11.CKR_ATTRIBUTE_TYPE_INVALID
)

// Purpose is what a key is for. Each purpose has exactly one algorithm, so a
// key made for one duty cannot be picked up for another.
type Purpose string

// The purposes of DESIGN §6.
const (
	PurposeToken      Purpose = "token"
	PurposeAudit      Purpose = "audit"
	PurposeCheckpoint Purpose = "checkpoint"
	// PurposeSSHCA signs OpenSSH user certificates (ecdsa-sha2-nistp256).
	PurposeSSHCA Purpose = "ssh-ca"
	// PurposeX509CA signs X.509 client certificates and their CRL.
	PurposeX509CA Purpose = "x509-ca"
)

// Purposes lists every purpose in a stable order.
var Purposes = []Purpose{PurposeToken, PurposeAudit, PurposeCheckpoint, PurposeSSHCA, PurposeX509CA}

// Algorithm names a key algorithm as JOSE spells it.
type Algorithm string

// Supported algorithms.
const (
	ES256   Algorithm = "ES256"
	EdDSA   Algorithm = "EdDSA"
	Unknown Algorithm = "unknown"
)

// ParsePurpose checks a purpose given by a person.
func ParsePurpose(s string) (Purpose, error) {
	for _, p := range Purposes {
		if string(p) == s {
			return p, nil
		}
	}
	return "", fmt.Errorf("unknown purpose %q: want one of token, audit, checkpoint, ssh-ca, x509-ca", s)
}

// Algorithm returns the only algorithm keys of this purpose may have.
func (p Purpose) Algorithm() Algorithm {
	if p == PurposeCheckpoint {
		return EdDSA
	}
	return ES256
}

// destroyable reports whether keys of this purpose may be destroyed. Audit
// and checkpoint keys must outlive every log they signed; token and CA keys
// are destroyed once the last token or certificate they signed expired.
func (p Purpose) destroyable() bool { return p != PurposeAudit && p != PurposeCheckpoint }

// mechanism is the one signing mechanism a key of this algorithm may use.
func (a Algorithm) mechanism() uint {
	if a == EdDSA {
		return ckmEdDSA
	}
	return pkcs11.CKM_ECDSA
}

// KeyInfo describes a key pair on the token as read back through PKCS#11.
type KeyInfo struct {
	Label     string
	ID        []byte
	Purpose   Purpose
	Algorithm Algorithm
	Public    crypto.PublicKey
	// Attributes holds the boolean attributes of the private key as the token
	// reports them; an attribute the token does not support is absent.
	Attributes map[string]bool
	// AllowedMechanisms lists CKA_ALLOWED_MECHANISMS when the token has it.
	AllowedMechanisms []string
}

// IDHex returns the CKA_ID in hex, as pkcs11-tool prints it.
func (k KeyInfo) IDHex() string { return hex.EncodeToString(k.ID) }

// Fingerprint is the SHA-256 of the DER SubjectPublicKeyInfo, in hex.
func (k KeyInfo) Fingerprint() string { return Fingerprint(k.Public) }

// Fingerprint is the SHA-256 of a public key's DER SubjectPublicKeyInfo, in hex.
func Fingerprint(pub crypto.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// boolAttrs are the private-key attributes read back and reported. Order is
// the order of the ceremony record.
var boolAttrs = []struct {
	name string
	typ  uint
}{
	{"token", pkcs11.CKA_TOKEN},
	{"private", pkcs11.CKA_PRIVATE},
	{"sensitive", pkcs11.CKA_SENSITIVE},
	{"always_sensitive", pkcs11.CKA_ALWAYS_SENSITIVE},
	{"extractable", pkcs11.CKA_EXTRACTABLE},
	{"never_extractable", pkcs11.CKA_NEVER_EXTRACTABLE},
	{"local", pkcs11.CKA_LOCAL},
	{"sign", pkcs11.CKA_SIGN},
	{"sign_recover", pkcs11.CKA_SIGN_RECOVER},
	{"decrypt", pkcs11.CKA_DECRYPT},
	{"unwrap", pkcs11.CKA_UNWRAP},
	{"derive", pkcs11.CKA_DERIVE},
	{"modifiable", pkcs11.CKA_MODIFIABLE},
	{"copyable", pkcs11.CKA_COPYABLE},
	{"destroyable", pkcs11.CKA_DESTROYABLE},
}

// optionalAttr is a hardening attribute that not every token implements. Key
// generation drops one the token rejects and the ceremony record says so.
type optionalAttr struct {
	name string
	attr *pkcs11.Attribute
}

// privateTemplate builds the private key template of DESIGN §4.4: on the
// token, private, sensitive, never extractable, sign-only, not modifiable,
// limited to one mechanism, and not destroyable for log keys.
func privateTemplate(p Purpose, label string, id []byte) (required []*pkcs11.Attribute, optional []optionalAttr) {
	alg := p.Algorithm()
	required = []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN_RECOVER, false),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		pkcs11.NewAttribute(pkcs11.CKA_SUBJECT, purposeSubject(p, label)),
	}
	if alg == EdDSA {
		required = append(required, pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, ckkECEdwards))
	} else {
		required = append(required, pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC))
	}
	optional = []optionalAttr{
		{"allowed_mechanisms", pkcs11.NewAttribute(pkcs11.CKA_ALLOWED_MECHANISMS, ulongs(alg.mechanism()))},
		{"modifiable", pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false)},
		{"copyable", pkcs11.NewAttribute(pkcs11.CKA_COPYABLE, false)},
	}
	if !p.destroyable() {
		optional = append(optional, optionalAttr{"destroyable", pkcs11.NewAttribute(pkcs11.CKA_DESTROYABLE, false)})
	}
	return required, optional
}

// publicTemplate builds the public key template: verify only.
func publicTemplate(p Purpose, label string, id []byte) []*pkcs11.Attribute {
	t := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		pkcs11.NewAttribute(pkcs11.CKA_SUBJECT, purposeSubject(p, label)),
	}
	if p.Algorithm() == EdDSA {
		t = append(t,
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, ckkECEdwards),
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, oidEd25519DER))
	} else {
		t = append(t,
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, oidP256DER))
	}
	return t
}

// ulongs encodes CK_ULONG values in the platform's native layout, as an
// array attribute such as CKA_ALLOWED_MECHANISMS needs.
func ulongs(vs ...uint) []byte {
	var out []byte
	for _, v := range vs {
		out = append(out, pkcs11.NewAttribute(0, v).Value...)
	}
	return out
}

func decodeULongs(b []byte) []uint {
	size := strconv.IntSize / 8
	var out []uint
	for len(b) >= size {
		if size == 8 {
			out = append(out, uint(binary.NativeEndian.Uint64(b)))
		} else {
			out = append(out, uint(binary.NativeEndian.Uint32(b)))
		}
		b = b[size:]
	}
	return out
}

func mechanismName(m uint) string {
	switch m {
	case pkcs11.CKM_ECDSA:
		return "CKM_ECDSA"
	case ckmEdDSA:
		return "CKM_EDDSA"
	}
	return fmt.Sprintf("0x%x", m)
}

// purposeSubject records a key's purpose inside the token, so `hsm list`
// and key lookup can tell a token key from an audit key without a database.
// It is an X.509 Name (O=breakglass, OU=purpose, CN=label), the form
// CKA_SUBJECT is defined to hold.
func purposeSubject(p Purpose, label string) []byte {
	name := pkix.Name{Organization: []string{"breakglass"}, OrganizationalUnit: []string{string(p)}, CommonName: label}
	der, err := asn1.Marshal(name.ToRDNSequence())
	if err != nil {
		panic(err) // only strings: cannot fail
	}
	return der
}

func purposeFromSubject(der []byte) Purpose {
	var rdn pkix.RDNSequence
	if rest, err := asn1.Unmarshal(der, &rdn); err != nil || len(rest) != 0 {
		return ""
	}
	var name pkix.Name
	name.FillFromRDNSequence(&rdn)
	if !slices.Contains(name.Organization, "breakglass") || len(name.OrganizationalUnit) != 1 {
		return ""
	}
	p, err := ParsePurpose(name.OrganizationalUnit[0])
	if err != nil {
		return ""
	}
	return p
}

var (
	oidP256DER    = mustDER(asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7})
	oidEd25519DER = mustDER(asn1.ObjectIdentifier{1, 3, 101, 112})
)

func mustDER(v any) []byte {
	b, err := asn1.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// parsePublic turns CKA_EC_PARAMS and CKA_EC_POINT into a Go public key.
func parsePublic(keyType uint, params, point []byte) (crypto.PublicKey, Algorithm, error) {
	// CKA_EC_POINT is a DER OCTET STRING; some tokens return it raw.
	raw := point
	var inner []byte
	if rest, err := asn1.Unmarshal(point, &inner); err == nil && len(rest) == 0 {
		raw = inner
	}
	switch keyType {
	case ckkECEdwards:
		if len(raw) != ed25519.PublicKeySize {
			return nil, Unknown, fmt.Errorf("ed25519 public key has %d bytes", len(raw))
		}
		return ed25519.PublicKey(slices.Clone(raw)), EdDSA, nil
	case pkcs11.CKK_EC:
		var oid asn1.ObjectIdentifier
		if _, err := asn1.Unmarshal(params, &oid); err != nil || !oid.Equal(asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}) {
			return nil, Unknown, fmt.Errorf("EC key is not on P-256")
		}
		if len(raw) != 65 || raw[0] != 4 {
			return nil, Unknown, fmt.Errorf("EC point is not an uncompressed P-256 point")
		}
		// The checked parser refuses an off-curve point.
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), raw)
		if err != nil {
			return nil, Unknown, fmt.Errorf("EC point is not on P-256: %w", err)
		}
		return pub, ES256, nil
	}
	return nil, Unknown, fmt.Errorf("unsupported key type 0x%x", keyType)
}

// samePublic reports whether two public keys are the same key.
func samePublic(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	if e, ok := a.(equaler); ok {
		return e.Equal(b)
	}
	return false
}
