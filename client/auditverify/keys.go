package auditverify

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/transparency-dev/formats/log"
	"golang.org/x/mod/sumdb/note"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/checkpoint"
	"github.com/bgbroker/breakglass/format/keyid"
	"github.com/bgbroker/breakglass/format/statement"
)

// keyChain is the set of audit and checkpoint keys a verifier trusts: the
// ones it pinned, and each one introduced since by a rotation statement
// that a trusted key and the new key both signed.
type keyChain struct {
	audit      []*ecdsa.PublicKey
	checkpoint []note.Verifier
	checks     int
}

// follow adds the key a key_activated entry introduces, after checking the
// rotation statement's two signatures.
func (k *keyChain) follow(i int64, e *audit.Entry) *Violation {
	if e.Type != audit.TypeKeyActivated {
		return nil
	}
	var c audit.KeyChange
	if err := json.Unmarshal(e.Payload, &c); err != nil {
		return violation(i, "malformed key_activated payload: %v", err)
	}
	if c.Previous == "" || (c.Purpose != "audit" && c.Purpose != "checkpoint") {
		return nil // a key's first registration, or a token key: nothing to chain
	}
	blk, _ := pem.Decode([]byte(c.PublicPEM))
	if blk == nil {
		return violation(i, "the new %s key's PEM does not parse", c.Purpose)
	}
	pub, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return violation(i, "the new %s key does not parse: %v", c.Purpose, err)
	}
	if kid, err := keyid.Thumbprint(pub); err != nil || kid != c.KID {
		return violation(i, "the new key's kid %s is not its thumbprint", c.KID)
	}
	if !bytes.HasPrefix(c.Rotation, []byte(statement.RotationContext+"\n")) ||
		!bytes.Contains(c.Rotation, fmt.Appendf(nil, "\npurpose %s\n", c.Purpose)) ||
		!bytes.Contains(c.Rotation, fmt.Appendf(nil, "\nold %s\nnew %s\n", c.Previous, c.KID)) {
		return violation(i, "the rotation statement does not describe this rotation")
	}
	k.checks += 2
	switch c.Purpose {
	case "audit":
		np, ok := pub.(*ecdsa.PublicKey)
		d := sha256.Sum256(c.Rotation)
		if !ok || !ecdsa.VerifyASN1(np, d[:], c.NewSignature) {
			return violation(i, "the new audit key did not sign its rotation statement")
		}
		trusted := false
		for _, old := range k.audit {
			if ecdsa.VerifyASN1(old, d[:], c.OldSignature) {
				trusted = true
			}
		}
		if !trusted {
			return violation(i, "no trusted audit key signed the rotation to %s: the key chain is broken", c.KID)
		}
		k.audit = append(k.audit, np)
	case "checkpoint":
		np, ok := pub.(ed25519.PublicKey)
		if !ok || !ed25519.Verify(np, c.Rotation, c.NewSignature) {
			return violation(i, "the new checkpoint key did not sign its rotation statement")
		}
		trusted := false
		for _, v := range k.checkpoint {
			if v.Verify(c.Rotation, c.OldSignature) {
				trusted = true
			}
		}
		if !trusted {
			return violation(i, "no trusted checkpoint key signed the rotation to %s: the key chain is broken", c.KID)
		}
		v, err := note.NewVerifier(c.NoteKey)
		if err != nil || !v.Verify(c.Rotation, c.NewSignature) {
			return violation(i, "the new checkpoint key's note verifier key is not the rotated key")
		}
		k.checkpoint = append(k.checkpoint, v)
	}
	return nil
}

// parseCheckpoint opens a checkpoint signed by any key of the chain.
func (k *keyChain) parseCheckpoint(b []byte, origin string) (*log.Checkpoint, error) {
	var errs []string
	for _, v := range k.checkpoint {
		if v.Name() != origin {
			continue
		}
		cp, err := checkpoint.Open(b, origin, v)
		if err == nil {
			return cp, nil
		}
		errs = append(errs, err.Error())
	}
	if len(errs) == 0 {
		return nil, errors.New("no checkpoint key for this origin")
	}
	return nil, errors.New(errs[len(errs)-1])
}
