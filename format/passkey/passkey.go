// Package passkey defines how an approver's passkey (a WebAuthn credential
// on a phone, a laptop or a security key) comes to sign reviews that an
// auditor can check from the log alone.
//
// Two objects make that work. A binding statement, signed with the key of
// the approver's client certificate, says "this credential, with this
// public key, for this relying party and origin, is mine"; it is logged
// when the approver confirms it. A passkey review is then an ordinary
// review statement (format/statement) whose SHA-256 is the WebAuthn
// challenge, with the assertion the authenticator made over it. Both are
// checked here, by the rules of WebAuthn Level 3 §7.2, so the broker and the
// offline verifier judge them with the same code. docs/signing.md is the
// normative description; testdata/vectors holds worked examples.
package passkey

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/go-webauthn/webauthn/protocol"
	"github.com/go-webauthn/webauthn/protocol/webauthncose"

	"github.com/bgbroker/breakglass/format/statement"
)

// BindingContext begins every binding statement.
const BindingContext = "breakglass passkey binding v1"

// MaxBindingBytes bounds what ParseBinding reads: a credential ID of at
// most 1023 bytes (WebAuthn's limit) and an RSA-4096 COSE key fit.
const MaxBindingBytes = 4096

// MaxCredentialID is the longest credential ID WebAuthn allows.
const MaxCredentialID = 1023

// Binding is what an approver signs to bind a passkey to themselves.
type Binding struct {
	// Origin is the log origin of the deployment (GetLogInfo.origin).
	Origin string
	// Principal is the approver, as their client certificate names them.
	Principal string
	// Credential is the WebAuthn credential ID (rawId).
	Credential []byte
	// Key is the credential public key as a COSE_Key (RFC 9052 §7), the
	// bytes of the attested credential data.
	Key []byte
	// RPID is the WebAuthn relying party ID the credential is scoped to.
	RPID string
	// WebOrigin is the console's origin ("https://host[:port]") whose
	// assertions count.
	WebOrigin string
	// Time is the signer's clock, to the second.
	Time time.Time
}

var (
	originRE    = regexp.MustCompile(`^[\x21-\x7E]{1,255}$`)
	principalRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$`)
	b64urlRE    = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)
	labelRE     = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
)

// EncodeID is how credential IDs are written: base64url without padding,
// as WebAuthn's PublicKeyCredential.id.
func EncodeID(id []byte) string { return base64.RawURLEncoding.EncodeToString(id) }

// DecodeID reads a credential ID written by EncodeID, strictly.
func DecodeID(s string) ([]byte, error) {
	if !b64urlRE.MatchString(s) {
		return nil, errors.New("a credential ID is base64url without padding")
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(s)
	if err != nil || EncodeID(b) != s {
		return nil, errors.New("a credential ID is base64url without padding, in canonical form")
	}
	if len(b) > MaxCredentialID {
		return nil, fmt.Errorf("a credential ID is at most %d bytes", MaxCredentialID)
	}
	return b, nil
}

// Marshal returns the binding's canonical text, the bytes that are signed.
func (b Binding) Marshal() []byte {
	return fmt.Appendf(nil, "%s\norigin %s\nprincipal %s\ncredential %s\nkey %s\nrp_id %s\nweb_origin %s\ntime %s\n",
		BindingContext, b.Origin, b.Principal, EncodeID(b.Credential), base64.StdEncoding.EncodeToString(b.Key), b.RPID, b.WebOrigin,
		b.Time.UTC().Format(time.RFC3339))
}

// ParseBinding reads a binding statement strictly: the exact lines in the
// exact order, each value in its one canonical form, a COSE key of an
// algorithm this package verifies, an RP ID that is a domain and a web
// origin on it.
func ParseBinding(text []byte) (Binding, error) {
	var b Binding
	if len(text) > MaxBindingBytes {
		return b, fmt.Errorf("a binding statement is at most %d bytes", MaxBindingBytes)
	}
	lines := strings.Split(string(text), "\n")
	if len(lines) != 9 || lines[8] != "" {
		return b, errors.New("a binding statement is 8 lines, each ending in a newline")
	}
	if lines[0] != BindingContext {
		return b, fmt.Errorf("a binding statement begins with %q", BindingContext)
	}
	fields := []string{"origin", "principal", "credential", "key", "rp_id", "web_origin", "time"}
	vals := make([]string, len(fields))
	for i, f := range fields {
		k, v, ok := strings.Cut(lines[i+1], " ")
		if !ok || k != f || v == "" {
			return b, fmt.Errorf("binding statement line %d must be %q followed by a value", i+2, f)
		}
		vals[i] = v
	}
	b.Origin, b.Principal, b.RPID, b.WebOrigin = vals[0], vals[1], vals[4], vals[5]
	if !originRE.MatchString(b.Origin) {
		return b, errors.New("the binding's origin is malformed")
	}
	if !principalRE.MatchString(b.Principal) {
		return b, errors.New("the binding's principal is malformed")
	}
	var err error
	if b.Credential, err = DecodeID(vals[2]); err != nil {
		return b, fmt.Errorf("the binding's credential: %w", err)
	}
	if b.Key, err = base64.StdEncoding.Strict().DecodeString(vals[3]); err != nil || len(b.Key) == 0 {
		return b, errors.New("the binding's key is not base64 (RFC 4648 section 4, with padding)")
	}
	if _, err := ParseKey(b.Key); err != nil {
		return b, fmt.Errorf("the binding's key: %w", err)
	}
	if err := CheckRPID(b.RPID); err != nil {
		return b, err
	}
	if err := CheckWebOrigin(b.WebOrigin, b.RPID); err != nil {
		return b, err
	}
	t, err := time.Parse(time.RFC3339, vals[6])
	if err != nil || t.UTC().Format(time.RFC3339) != vals[6] {
		return b, errors.New("the binding's time must be RFC 3339 UTC to the second, such as 2026-11-29T12:52:10Z")
	}
	b.Time = t
	if !bytes.Equal(b.Marshal(), text) {
		return b, errors.New("the binding statement is not in canonical form")
	}
	return b, nil
}

// CheckRPID accepts a relying party ID as WebAuthn does (a domain, never
// an IP address), in lower case: one to 253 characters of LDH labels.
func CheckRPID(id string) error {
	if id == "" || len(id) > 253 || net.ParseIP(id) != nil {
		return fmt.Errorf("the RP ID %q is not a domain name (WebAuthn RP IDs are domains: use a host name such as localhost, never an IP address)", id)
	}
	for _, l := range strings.Split(id, ".") {
		if !labelRE.MatchString(l) {
			return fmt.Errorf("the RP ID %q is not a lower-case domain name", id)
		}
	}
	return nil
}

// CheckWebOrigin accepts an origin as a browser serialises it, https with
// a host equal to the RP ID or under it and an optional port, nothing
// else (no path, no trailing slash, no default port written).
func CheckWebOrigin(origin, rpID string) error {
	u, err := url.Parse(origin)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || u.Path != "" || u.RawQuery != "" || u.Fragment != "" ||
		u.Opaque != "" || strings.HasSuffix(origin, "/") {
		return fmt.Errorf("the web origin %q is not an https origin (https://host[:port], nothing after it)", origin)
	}
	host := u.Hostname()
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 || n == 443 || strconv.Itoa(n) != p {
			return fmt.Errorf("the web origin %q has a port a browser would not write", origin)
		}
	}
	if "https://"+u.Host != origin {
		return fmt.Errorf("the web origin %q is not in the form a browser writes", origin)
	}
	if host != rpID && !strings.HasSuffix(host, "."+rpID) {
		return fmt.Errorf("the web origin %q is not on the RP ID %q (its host must be the RP ID or under it)", origin, rpID)
	}
	return nil
}

// Supported COSE algorithms: what the console asks authenticators for.
const (
	AlgES256 = int64(webauthncose.AlgES256)
	AlgEdDSA = int64(webauthncose.AlgEdDSA)
	AlgRS256 = int64(webauthncose.AlgRS256)
)

// Key is a parsed credential public key.
type Key struct {
	// Alg is its COSE algorithm: ES256, EdDSA (Ed25519) or RS256.
	Alg int64
	// Public is the Go public key.
	Public crypto.PublicKey
	cose   any
}

// ParseKey reads a COSE_Key of one of the supported algorithms.
func ParseKey(cose []byte) (*Key, error) {
	k, err := webauthncose.ParsePublicKey(cose)
	if err != nil {
		return nil, fmt.Errorf("not a COSE key this verifier knows: %w", err)
	}
	out := &Key{cose: k}
	switch c := k.(type) {
	case webauthncose.EC2PublicKeyData:
		if c.Algorithm != AlgES256 {
			return nil, fmt.Errorf("COSE algorithm %d is not ES256 (-7), EdDSA (-8) or RS256 (-257)", c.Algorithm)
		}
		pub, err := c.ToECDSA()
		if err != nil {
			return nil, err
		}
		out.Alg, out.Public = c.Algorithm, pub
	case webauthncose.OKPPublicKeyData:
		if c.Algorithm != AlgEdDSA || len(c.XCoord) != ed25519.PublicKeySize {
			return nil, errors.New("an OKP key must be EdDSA (-8) over Ed25519")
		}
		out.Alg, out.Public = c.Algorithm, ed25519.PublicKey(bytes.Clone(c.XCoord))
	case webauthncose.RSAPublicKeyData:
		if c.Algorithm != AlgRS256 {
			return nil, fmt.Errorf("COSE algorithm %d is not ES256 (-7), EdDSA (-8) or RS256 (-257)", c.Algorithm)
		}
		e, err := webauthncose.ParseRSAPublicKeyDataExponent(&c)
		if err != nil {
			return nil, err
		}
		pub := &rsa.PublicKey{N: new(big.Int).SetBytes(c.Modulus), E: e}
		if pub.N.BitLen() < 2048 {
			return nil, fmt.Errorf("an RSA key of %d bits is too short (at least 2048)", pub.N.BitLen())
		}
		out.Alg, out.Public = c.Algorithm, pub
	default:
		return nil, errors.New("only ES256, EdDSA and RS256 keys are accepted")
	}
	return out, nil
}

// AlgName names a COSE algorithm for people.
func AlgName(alg int64) string {
	switch alg {
	case AlgES256:
		return "ES256"
	case AlgEdDSA:
		return "EdDSA"
	case AlgRS256:
		return "RS256"
	}
	return strconv.FormatInt(alg, 10)
}

// Fingerprint is "sha256:" and the hex SHA-256 of the key's DER
// SubjectPublicKeyInfo: the key's name wherever keys are counted.
func (k *Key) Fingerprint() string {
	der, err := x509.MarshalPKIXPublicKey(k.Public)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(der)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// SPKI is the key's DER SubjectPublicKeyInfo.
func (k *Key) SPKI() ([]byte, error) { return x509.MarshalPKIXPublicKey(k.Public) }

// Assertion is what an authenticator returned from navigator.credentials.get,
// as the review entry stores it.
type Assertion struct {
	// Credential is the credential ID (rawId).
	Credential []byte `json:"credential"`
	// AuthenticatorData, ClientDataJSON and Signature are the response's
	// fields, byte for byte.
	AuthenticatorData []byte `json:"authenticator_data"`
	ClientDataJSON    []byte `json:"client_data_json"`
	Signature         []byte `json:"signature"`
}

// Challenge is the WebAuthn challenge of a statement: its SHA-256.
func Challenge(statement []byte) []byte {
	sum := sha256.Sum256(statement)
	return sum[:]
}

// Reasons an assertion or a binding is refused; the vectors name them.
const (
	ReasonMalformed    = "malformed"
	ReasonCredential   = "credential"
	ReasonType         = "client-data-type"
	ReasonChallenge    = "challenge"
	ReasonOrigin       = "origin"
	ReasonCrossOrigin  = "cross-origin"
	ReasonRPID         = "rp-id"
	ReasonUserPresence = "user-presence"
	ReasonVerification = "user-verification"
	ReasonSignature    = "signature"
	ReasonCounter      = "counter"
	// ReasonSigner refuses a binding signed with the certificate key of
	// someone other than the principal it names; ReasonLog one made for
	// another deployment; ReasonTime one whose time is too far from the
	// verifier's clock.
	ReasonSigner = "signer"
	ReasonLog    = "log"
	ReasonTime   = "time"
)

// Error is a refusal with the rule that refuses.
type Error struct {
	Reason string
	msg    string
}

func (e *Error) Error() string { return e.msg }

func refuse(reason, format string, args ...any) error {
	return &Error{Reason: reason, msg: fmt.Sprintf(format, args...)}
}

// ReasonOf is the reason of a refusal made here ("" for other errors).
func ReasonOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ""
}

// clientData is the part of CollectedClientData (WebAuthn §5.8.1) that is
// checked. Other members a browser adds are ignored, as the specification
// requires.
type clientData struct {
	Type        string `json:"type"`
	Challenge   string `json:"challenge"`
	Origin      string `json:"origin"`
	CrossOrigin *bool  `json:"crossOrigin,omitempty"`
	TopOrigin   string `json:"topOrigin,omitempty"`
}

// MaxClientData bounds the client data read.
const MaxClientData = 4096

// parseClientData reads clientDataJSON as one JSON object whose members
// appear once each and match their names exactly (encoding/json alone
// would take "Type" for "type" and the last of two "type"s).
func parseClientData(b []byte) (clientData, error) {
	var cd clientData
	if len(b) > MaxClientData {
		return cd, fmt.Errorf("the client data is longer than %d bytes", MaxClientData)
	}
	var members map[string]json.RawMessage
	if err := json.Unmarshal(b, &members); err != nil {
		return cd, fmt.Errorf("the client data is not a JSON object: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if _, err := dec.Token(); err != nil {
		return cd, err
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return cd, err
		}
		name, _ := tok.(string)
		if seen[name] {
			return cd, fmt.Errorf("the client data has member %q twice", name)
		}
		seen[name] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return cd, err
		}
	}
	for name := range members {
		for _, want := range []string{"type", "challenge", "origin", "crossOrigin", "topOrigin"} {
			if name != want && strings.EqualFold(name, want) {
				return cd, fmt.Errorf("the client data has member %q, a case variant of %q", name, want)
			}
		}
	}
	str := func(name string, into *string) error {
		raw, ok := members[name]
		if !ok {
			return nil
		}
		if err := json.Unmarshal(raw, into); err != nil {
			return fmt.Errorf("the client data's %s is not a string", name)
		}
		return nil
	}
	for name, into := range map[string]*string{"type": &cd.Type, "challenge": &cd.Challenge, "origin": &cd.Origin, "topOrigin": &cd.TopOrigin} {
		if err := str(name, into); err != nil {
			return cd, err
		}
	}
	if raw, ok := members["crossOrigin"]; ok {
		var v bool
		if err := json.Unmarshal(raw, &v); err != nil {
			return cd, errors.New("the client data's crossOrigin is not a boolean")
		}
		cd.CrossOrigin = &v
	}
	return cd, nil
}

// Verified is what a verified assertion says besides "yes".
type Verified struct {
	// Counter is the authenticator's signature counter (zero for
	// authenticators that keep none, such as synced passkeys).
	Counter uint32
	// Flags is the authenticator data's flags byte.
	Flags byte
}

// VerifyAssertion checks an assertion over statement by the credential of
// binding b, following WebAuthn Level 3 §7.2 with user verification
// required: the credential is the bound one; the client data is a
// webauthn.get whose challenge is the base64url SHA-256 of the statement,
// made on the bound web origin and not in a cross-origin frame; the
// authenticator data is for the bound RP ID with user presence and user
// verification; and the signature over authenticatorData ‖
// SHA-256(clientDataJSON) verifies with the bound key. It checks nothing
// of the statement's text (format/statement does) nor the counter (the
// caller knows the last one).
func VerifyAssertion(b Binding, statement []byte, a Assertion) (Verified, error) {
	var out Verified
	if len(a.Credential) == 0 || len(a.AuthenticatorData) == 0 || len(a.ClientDataJSON) == 0 || len(a.Signature) == 0 {
		return out, refuse(ReasonMalformed, "a passkey assertion needs its credential ID, authenticator data, client data and signature")
	}
	if !bytes.Equal(a.Credential, b.Credential) {
		return out, refuse(ReasonCredential, "the assertion is by credential %s, not the bound credential %s", EncodeID(a.Credential), EncodeID(b.Credential))
	}
	key, err := ParseKey(b.Key)
	if err != nil {
		return out, refuse(ReasonMalformed, "the bound key: %v", err)
	}
	cd, err := parseClientData(a.ClientDataJSON)
	if err != nil {
		return out, refuse(ReasonMalformed, "%v", err)
	}
	if cd.Type != string(protocol.AssertCeremony) {
		return out, refuse(ReasonType, "the client data's type is %q, not %q: it is not an assertion", cd.Type, protocol.AssertCeremony)
	}
	if want := base64.RawURLEncoding.EncodeToString(Challenge(statement)); cd.Challenge != want {
		return out, refuse(ReasonChallenge, "the client data's challenge is not the SHA-256 of this statement (base64url %s): the passkey signed something else", want)
	}
	if cd.Origin != b.WebOrigin {
		return out, refuse(ReasonOrigin, "the assertion was made on %q, not on the bound origin %q", cd.Origin, b.WebOrigin)
	}
	if (cd.CrossOrigin != nil && *cd.CrossOrigin) || cd.TopOrigin != "" {
		return out, refuse(ReasonCrossOrigin, "the assertion was made in a cross-origin frame")
	}
	var ad protocol.AuthenticatorData
	if err := ad.Unmarshal(a.AuthenticatorData); err != nil {
		return out, refuse(ReasonMalformed, "the authenticator data does not parse: %v", err)
	}
	if ad.Flags.HasAttestedCredentialData() {
		return out, refuse(ReasonMalformed, "the authenticator data of an assertion carries no attested credential data")
	}
	rp := sha256.Sum256([]byte(b.RPID))
	if !bytes.Equal(ad.RPIDHash, rp[:]) {
		return out, refuse(ReasonRPID, "the authenticator data is for another relying party than %q", b.RPID)
	}
	if !ad.Flags.HasUserPresent() {
		return out, refuse(ReasonUserPresence, "the authenticator data does not have user presence (UP) set")
	}
	if !ad.Flags.HasUserVerified() {
		return out, refuse(ReasonVerification, "the authenticator data does not have user verification (UV) set: the approver was not verified by PIN or biometrics")
	}
	cdh := sha256.Sum256(a.ClientDataJSON)
	signed := append(bytes.Clone(a.AuthenticatorData), cdh[:]...)
	ok, err := webauthncose.VerifySignature(key.cose, signed, a.Signature)
	if err != nil || !ok {
		return out, refuse(ReasonSignature, "the assertion's signature does not verify with the bound %s key", AlgName(key.Alg))
	}
	return Verified{Counter: ad.Counter, Flags: byte(ad.Flags)}, nil
}

// CounterAdvances reports whether a signature counter may follow the last
// one seen for a credential: authenticators that count must count up
// (WebAuthn §6.1.1), so an equal or lower value is a replay or a clone;
// zero twice is an authenticator that keeps no counter.
func CounterAdvances(last, next uint32) bool {
	if last == 0 && next == 0 {
		return true
	}
	return next > last
}

// CheckBinding checks a parsed binding against where and when it is
// presented, in the order of docs/signing.md: the principal the signing
// certificate names (a binding is signed by the key of the certificate
// of the principal it names, never by someone else's), the deployment's
// log origin, and a time within statement.MaxSkew of at.
func CheckBinding(b Binding, origin, signer string, at time.Time) error {
	switch {
	case b.Principal != signer:
		return refuse(ReasonSigner, "the binding names %s but was signed with the certificate key of %s: only the approver binds their own passkey", b.Principal, signer)
	case b.Origin != origin:
		return refuse(ReasonLog, "the binding is for log %q, not this one (%q)", b.Origin, origin)
	}
	if d := b.Time.Sub(at); d > statement.MaxSkew || d < -statement.MaxSkew {
		return refuse(ReasonTime, "the binding's time %s is %s from %s; at most %s is allowed (check your clock)",
			b.Time.UTC().Format(time.RFC3339), d.Round(time.Second), at.UTC().Format(time.RFC3339), statement.MaxSkew)
	}
	return nil
}

// ReasonSignatureEncoding refuses a binding signature in the wrong
// encoding for its key type.
const ReasonSignatureEncoding = "signature-encoding"

// VerifyBinding parses a binding statement and checks its signature with
// the key of cert, the signer's client certificate, by the rules of review
// statements (docs/signing.md, "Signatures by key type"). Who cert names,
// and whether it chained to the client CA, is the caller's to check.
func VerifyBinding(cert *x509.Certificate, text, sig []byte) (Binding, error) {
	b, err := ParseBinding(text)
	if err != nil {
		return b, refuse(ReasonMalformed, "the binding statement is malformed: %v", err)
	}
	if err := statement.Verify(cert, text, sig); err != nil {
		if errors.Is(err, statement.ErrSignatureEncoding) {
			return b, refuse(ReasonSignatureEncoding, "the binding's signature is in the wrong encoding: %v", err)
		}
		return b, refuse(ReasonSignature, "the binding's signature does not verify with the signing certificate's key")
	}
	return b, nil
}
