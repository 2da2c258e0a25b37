// Package keyid names the broker's public keys the way outsiders do: the
// RFC 7638 JWK thumbprint is the kid of every key the broker publishes or
// logs, and PEM SPKI is the form openssl and the JWKS tools read.
package keyid

import (
	"crypto"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"

	"github.com/go-jose/go-jose/v4"
)

// Thumbprint is the RFC 7638 JWK thumbprint (SHA-256, base64url without
// padding) of a public key.
func Thumbprint(pub crypto.PublicKey) (string, error) {
	tp, err := (&jose.JSONWebKey{Key: pub}).Thumbprint(crypto.SHA256)
	if err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(tp), nil
}

// JWK returns the public key as a JSON Web Key whose kid is its thumbprint,
// with the algorithm the broker signs with under it.
func JWK(pub crypto.PublicKey) (jose.JSONWebKey, error) {
	kid, err := Thumbprint(pub)
	if err != nil {
		return jose.JSONWebKey{}, err
	}
	alg := string(jose.ES256)
	if _, ok := pub.(ed25519.PublicKey); ok {
		alg = string(jose.EdDSA)
	}
	return jose.JSONWebKey{Key: pub, KeyID: kid, Algorithm: alg, Use: "sig"}, nil
}

// PublicPEM encodes a public key as a PEM "PUBLIC KEY" block (SPKI), the
// form openssl reads with -pubin or dgst -verify.
func PublicPEM(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// SPKI names a signer's key the way approvals are counted: "sha256:" and
// the hex SHA-256 of its DER SubjectPublicKeyInfo (a certificate's
// RawSubjectPublicKeyInfo). Two certificates for one key name it alike,
// whatever principals they name.
func SPKI(spki []byte) string {
	sum := sha256.Sum256(spki)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// CertSPKI is SPKI of the key of a DER certificate, "" when it does not
// parse.
func CertSPKI(der []byte) string {
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return ""
	}
	return SPKI(c.RawSubjectPublicKeyInfo)
}
