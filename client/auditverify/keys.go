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
	"slices"

	"github.com/transparency-dev/formats/log"
	"golang.org/x/mod/sumdb/note"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/checkpoint"
	"github.com/bgbroker/breakglass/format/keyid"
	"github.com/bgbroker/breakglass/format/statement"
)

// keyChain is the audit and checkpoint keys a verifier trusts, each with
// its window in the log: the ones it pinned are in force from the first
// entry, and each key introduced since by a rotation statement that the
// key in force and the new key both signed is in force from the entry
// after its rotation. A key replaced by a rotation signs nothing after
// it: not an entry (beyond the retirement entry the broker writes in the
// rotation's own transaction), not a checkpoint covering one.
type keyChain struct {
	// inForce are the audit keys that may sign the next entry (the pinned
	// ones until the first rotation, then the one key it introduced).
	inForce []*ecdsa.PublicKey
	// retiring is the audit key the rotation at retiringAt replaced: it
	// may still sign that rotation's key_retired entry, and nothing else.
	retiring    *ecdsa.PublicKey
	retiringKID string
	retiringAt  int64
	// audit is every audit key of the chain; retiredAt the entry of the
	// rotation that replaced each (absent while in force).
	audit     []*ecdsa.PublicKey
	retiredAt map[string]int64
	// checkpoint are the checkpoint keys of the chain.
	checkpoint []*cpKey
	checks     int
}

// cpKey is a checkpoint key and the last entry a checkpoint it signs may
// cover (-1 while it is in force).
type cpKey struct {
	v       note.Verifier
	through int64
	kid     string
}

// same matches keys equal to pub.
func same(pub *ecdsa.PublicKey) func(*ecdsa.PublicKey) bool {
	return func(p *ecdsa.PublicKey) bool { return pub.Equal(p) }
}

func newKeyChain(pinned []*ecdsa.PublicKey, cp note.Verifier) *keyChain {
	k := &keyChain{inForce: slices.Clone(pinned), audit: slices.Clone(pinned), retiredAt: map[string]int64{}, retiringAt: -2}
	k.checkpoint = []*cpKey{{v: cp, through: -1}}
	return k
}

// checkEntry checks the signature of entry i against the audit key in
// force at i. signer is the key a worker found the signature to verify
// with, if any: a hint, since trust is decided here, in order.
func (k *keyChain) checkEntry(i int64, e *audit.Entry, entry, sig []byte, signer *ecdsa.PublicKey) string {
	defer func() {
		if k.retiring != nil && i > k.retiringAt {
			k.retiring = nil
		}
	}()
	if len(sig) == 0 {
		return "the entry is not signed (it was written while the HSM was down and the export was taken before it was signed)"
	}
	if signer != nil && slices.ContainsFunc(k.inForce, same(signer)) {
		return ""
	}
	if signer == nil {
		// The workers may not have known a key that an entry just before
		// brought in: try the keys in force.
		for _, pub := range k.inForce {
			k.checks++
			if audit.VerifySignature(pub, entry, sig) {
				return ""
			}
		}
	}
	if k.retiring != nil && i == k.retiringAt+1 && e != nil && e.Type == audit.TypeKeyRetired {
		var c audit.KeyChange
		if json.Unmarshal(e.Payload, &c) == nil && c.Purpose == "audit" && c.KID == k.retiringKID {
			if signer != nil && signer.Equal(k.retiring) {
				return ""
			}
			if signer == nil {
				k.checks++
				if audit.VerifySignature(k.retiring, entry, sig) {
					return ""
				}
			}
		}
	}
	if signer != nil && slices.ContainsFunc(k.audit, same(signer)) {
		kid, _ := keyid.Thumbprint(signer)
		return fmt.Sprintf("the entry is signed by the audit key %s, which was replaced at entry %d: a retired key must not sign anything after its retirement", kid, k.retiredAt[kid])
	}
	return "the signature does not verify with the audit key in force: the entry or its signature was changed"
}

// follow adds the key a key_activated entry introduces, after checking the
// rotation statement's two signatures: the new key's and the key in force's.
func (k *keyChain) follow(i int64, e *audit.Entry) *Violation {
	if e.Type == audit.TypeKeyRetired {
		// The broker retires the old key in the rotation's transaction,
		// right after it: a checkpoint may cover that entry too.
		var c audit.KeyChange
		if json.Unmarshal(e.Payload, &c) == nil && c.Purpose == "checkpoint" {
			for _, ck := range k.checkpoint {
				if ck.through == i-1 && ck.kid == c.KID {
					ck.through = i
				}
			}
		}
		return nil
	}
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
	rot, err := statement.ParseRotation(c.Rotation)
	if err != nil {
		return violation(i, "the rotation statement is malformed: %v", err)
	}
	if rot.Purpose != c.Purpose || rot.Account != c.Account || rot.Old != c.Previous || rot.New != c.KID || !bytes.Equal(rot.Key, blk.Bytes) {
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
		var old *ecdsa.PublicKey
		for _, pub := range k.inForce {
			if kid, _ := keyid.Thumbprint(pub); kid == c.Previous && ecdsa.VerifyASN1(pub, d[:], c.OldSignature) {
				old = pub
			}
		}
		if old == nil {
			return violation(i, "the audit key in force (kid %s) did not sign the rotation to %s: the key chain is broken", c.Previous, c.KID)
		}
		for _, pub := range k.inForce {
			kid, _ := keyid.Thumbprint(pub)
			k.retiredAt[kid] = i
		}
		k.retiring, k.retiringKID, k.retiringAt = old, c.Previous, i
		k.inForce = []*ecdsa.PublicKey{np}
		delete(k.retiredAt, c.KID)
		if !slices.ContainsFunc(k.audit, same(np)) {
			k.audit = append(k.audit, np)
		}
	case "checkpoint":
		np, ok := pub.(ed25519.PublicKey)
		if !ok || !ed25519.Verify(np, c.Rotation, c.NewSignature) {
			return violation(i, "the new checkpoint key did not sign its rotation statement")
		}
		var old *cpKey
		for _, ck := range k.checkpoint {
			if ck.through < 0 && ck.v.Verify(c.Rotation, c.OldSignature) {
				old = ck
			}
		}
		if old == nil {
			return violation(i, "the checkpoint key in force did not sign the rotation to %s: the key chain is broken", c.KID)
		}
		v, err := note.NewVerifier(c.NoteKey)
		if err != nil || !v.Verify(c.Rotation, c.NewSignature) {
			return violation(i, "the new checkpoint key's note verifier key is not the rotated key")
		}
		old.through, old.kid = i, c.Previous
		k.checkpoint = append(k.checkpoint, &cpKey{v: v, through: -1, kid: c.KID})
	}
	return nil
}

// openCheckpoint opens a checkpoint signed by a key of the chain whose
// window covers it: a retired key may sign checkpoints of the log as it
// was up to its retirement, never beyond.
func (k *keyChain) openCheckpoint(b []byte, origin string) (*log.Checkpoint, error) {
	var errs []string
	for _, ck := range k.checkpoint {
		if ck.v.Name() != origin {
			continue
		}
		cp, err := checkpoint.Open(b, origin, ck.v)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		if ck.through >= 0 && cp.Size > uint64(ck.through)+1 {
			errs = append(errs, fmt.Sprintf("it is signed by the checkpoint key replaced at entry %d, but covers %d entries: a retired key must not sign beyond its retirement", ck.through, cp.Size))
			continue
		}
		return cp, nil
	}
	if len(errs) == 0 {
		return nil, errors.New("no checkpoint key for this origin")
	}
	return nil, errors.New(errs[len(errs)-1])
}
