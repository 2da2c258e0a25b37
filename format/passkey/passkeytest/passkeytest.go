// Package passkeytest is a software WebAuthn authenticator for tests: it
// makes COSE keys, authenticator data, client data and signatures exactly
// as WebAuthn Level 3 lays them out, and can make each of them wrong on
// purpose. Browser tests use Chromium's virtual authenticator instead.
package passkeytest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"

	"github.com/go-webauthn/webauthn/protocol/webauthncbor"
	"github.com/go-webauthn/webauthn/protocol/webauthncose"

	"github.com/bgbroker/breakglass/format/passkey"
)

// Flags of the authenticator data (WebAuthn §6.1).
const (
	FlagUP = 0x01
	FlagUV = 0x04
	FlagBE = 0x08
	FlagBS = 0x10
	FlagAT = 0x40
	FlagED = 0x80
)

// Authenticator holds one credential.
type Authenticator struct {
	ID      []byte
	Key     crypto.Signer
	RPID    string
	Origin  string
	Counter uint32
}

// New makes an ES256 credential for rpID, used on origin.
func New(rpID, origin string) (*Authenticator, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return nil, err
	}
	return &Authenticator{ID: id, Key: k, RPID: rpID, Origin: origin}, nil
}

// COSE is the credential public key as a COSE_Key, in the CTAP2 canonical
// CBOR an authenticator writes.
func (a *Authenticator) COSE() []byte {
	var v any
	switch pub := a.Key.Public().(type) {
	case *ecdsa.PublicKey:
		b, _ := pub.Bytes()
		v = webauthncose.EC2PublicKeyData{PublicKeyData: webauthncose.PublicKeyData{KeyType: int64(webauthncose.EllipticKey), Algorithm: int64(webauthncose.AlgES256)},
			Curve: int64(webauthncose.P256), XCoord: b[1:33], YCoord: b[33:]}
	case ed25519.PublicKey:
		v = webauthncose.OKPPublicKeyData{PublicKeyData: webauthncose.PublicKeyData{KeyType: int64(webauthncose.OctetKey), Algorithm: int64(webauthncose.AlgEdDSA)},
			Curve: int64(webauthncose.Ed25519), XCoord: pub}
	default:
		panic(fmt.Sprintf("passkeytest: %T keys are not made here", pub))
	}
	b, err := webauthncbor.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// Binding is the binding of this credential to principal in the log origin.
func (a *Authenticator) Binding(logOrigin, principal string) passkey.Binding {
	return passkey.Binding{Origin: logOrigin, Principal: principal, Credential: a.ID, Key: a.COSE(), RPID: a.RPID, WebOrigin: a.Origin}
}

// Options make an assertion wrong on purpose; the zero value makes a
// right one.
type Options struct {
	// Type replaces "webauthn.get".
	Type string
	// Origin replaces the authenticator's origin.
	Origin string
	// RPID replaces the relying party whose hash the data carries.
	RPID string
	// Flags replaces UP|UV when not zero.
	Flags byte
	// CrossOrigin sets crossOrigin true.
	CrossOrigin bool
	// Challenge replaces the statement's SHA-256.
	Challenge []byte
	// Signer replaces the credential's key.
	Signer crypto.Signer
	// Counter, when set, is used instead of the next count.
	Counter *uint32
}

// ClientData is clientDataJSON as Chromium writes it.
func ClientData(typ string, challenge []byte, origin string, crossOrigin bool) []byte {
	b, _ := json.Marshal(struct {
		Type        string `json:"type"`
		Challenge   string `json:"challenge"`
		Origin      string `json:"origin"`
		CrossOrigin bool   `json:"crossOrigin"`
	}{typ, base64.RawURLEncoding.EncodeToString(challenge), origin, crossOrigin})
	return b
}

// AuthData is authenticator data without attested credential data.
func AuthData(rpID string, flags byte, counter uint32) []byte {
	h := sha256.Sum256([]byte(rpID))
	out := append(h[:], flags)
	return binary.BigEndian.AppendUint32(out, counter)
}

// Sign signs authenticatorData ‖ SHA-256(clientDataJSON) as an authenticator does.
func Sign(k crypto.Signer, authData, clientData []byte) []byte {
	cdh := sha256.Sum256(clientData)
	msg := append(append([]byte{}, authData...), cdh[:]...)
	var (
		sig []byte
		err error
	)
	if _, ok := k.Public().(ed25519.PublicKey); ok {
		sig, err = k.Sign(rand.Reader, msg, crypto.Hash(0))
	} else {
		d := sha256.Sum256(msg)
		sig, err = k.Sign(rand.Reader, d[:], crypto.SHA256)
	}
	if err != nil {
		panic(err)
	}
	return sig
}

// Assert signs statement as navigator.credentials.get would, with the
// statement's SHA-256 as the challenge, and counts.
func (a *Authenticator) Assert(statement []byte, o Options) passkey.Assertion {
	typ, origin, rp, flags := "webauthn.get", a.Origin, a.RPID, byte(FlagUP|FlagUV)
	if o.Type != "" {
		typ = o.Type
	}
	if o.Origin != "" {
		origin = o.Origin
	}
	if o.RPID != "" {
		rp = o.RPID
	}
	if o.Flags != 0 {
		flags = o.Flags
	}
	ch := passkey.Challenge(statement)
	if o.Challenge != nil {
		ch = o.Challenge
	}
	a.Counter++
	n := a.Counter
	if o.Counter != nil {
		n = *o.Counter
	}
	k := a.Key
	if o.Signer != nil {
		k = o.Signer
	}
	cd := ClientData(typ, ch, origin, o.CrossOrigin)
	ad := AuthData(rp, flags, n)
	return passkey.Assertion{Credential: a.ID, AuthenticatorData: ad, ClientDataJSON: cd, Signature: Sign(k, ad, cd)}
}

// Attest makes what navigator.credentials.create returns for a
// registration's challenge: its client data (webauthn.create on the
// authenticator's origin) and an attestation object of format "none"
// whose authenticator data carries the credential (flags UP, UV and AT
// unless flags says otherwise).
func (a *Authenticator) Attest(challenge []byte, flags byte) (clientData, attestationObject []byte) {
	if flags == 0 {
		flags = FlagUP | FlagUV
	}
	flags |= FlagAT
	ad := AuthData(a.RPID, flags, a.Counter)
	ad = append(ad, make([]byte, 16)...) // AAGUID: none
	ad = binary.BigEndian.AppendUint16(ad, uint16(len(a.ID)))
	ad = append(ad, a.ID...)
	ad = append(ad, a.COSE()...)
	obj, err := webauthncbor.Marshal(struct {
		Fmt      string         `cbor:"fmt"`
		AttStmt  map[string]any `cbor:"attStmt"`
		AuthData []byte         `cbor:"authData"`
	}{"none", map[string]any{}, ad})
	if err != nil {
		panic(err)
	}
	return ClientData("webauthn.create", challenge, a.Origin, false), obj
}
