// Package cosignature reads witness cosignatures on the audit log's
// checkpoints as outsiders do: C2SP tlog-cosignature/v1 (Ed25519, signature
// type 0x04) note signatures added by C2SP tlog-witness witnesses, each
// known by its verifier key (name+hash+base64(0x04 || public key)). The
// cryptography is filippo.io/torchwood's; this package adds what a
// verifier must decide around it: which witnesses count, once each, and
// that a cosignature which claims to be from one of them and does not
// verify condemns the whole note.
package cosignature

import (
	"crypto"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"filippo.io/torchwood"
	"golang.org/x/mod/sumdb/note"
)

// algCosignatureV1 is the signed-note signature type of Ed25519
// timestamped cosignatures (c2sp.org/signed-note, c2sp.org/tlog-cosignature).
const algCosignatureV1 = 0x04

// Key is a witness's cosignature verifier key.
type Key struct {
	name string
	hash uint32
	pub  ed25519.PublicKey
	v    *torchwood.CosignatureVerifier
}

// ParseKey reads a cosignature verifier key, as litewitness logs it at
// start and witness operators publish it:
// NAME+HEX(key ID)+BASE64(0x04 || 32-byte Ed25519 public key). The key ID
// must be the one the spec derives from the name and the key.
func ParseKey(vkey string) (*Key, error) {
	name, rest, ok1 := strings.Cut(vkey, "+")
	hash16, key64, ok2 := strings.Cut(rest, "+")
	if !ok1 || !ok2 || name == "" || len(hash16) != 8 || strings.ContainsAny(key64, " \t\r\n") {
		return nil, errors.New("not a verifier key (NAME+HASH+BASE64)")
	}
	hash, err := strconv.ParseUint(hash16, 16, 32)
	if err != nil || strings.ToLower(hash16) != hash16 {
		return nil, errors.New("the key ID is not 8 lowercase hex digits")
	}
	raw, err := base64.StdEncoding.DecodeString(key64)
	if err != nil || len(raw) == 0 {
		return nil, errors.New("the key is not base64")
	}
	if raw[0] != algCosignatureV1 {
		if raw[0] == 0x01 {
			return nil, errors.New("this is a plain Ed25519 note key (type 0x01), not a witness cosignature key (type 0x04)")
		}
		return nil, fmt.Errorf("signature type 0x%02x is not a cosignature/v1 key (0x04)", raw[0])
	}
	if len(raw) != 1+ed25519.PublicKeySize {
		return nil, errors.New("the Ed25519 public key is not 32 bytes")
	}
	pub := ed25519.PublicKey(raw[1:])
	// torchwood builds its verifier from a signer; a public key that
	// refuses to sign is all it needs for verifying.
	s, err := torchwood.NewCosignatureSigner(name, verifyOnly{pub})
	if err != nil {
		return nil, fmt.Errorf("the key name %q is not a valid note key name", name)
	}
	v := s.Verifier()
	if uint64(v.KeyHash()) != hash {
		return nil, fmt.Errorf("the key ID %s is not the one derived from the name and key (%08x)", hash16, v.KeyHash())
	}
	return &Key{name: name, hash: uint32(hash), pub: pub, v: v}, nil
}

// verifyOnly is a public key dressed as a crypto.Signer for torchwood.
type verifyOnly struct{ pub ed25519.PublicKey }

func (k verifyOnly) Public() crypto.PublicKey { return k.pub }
func (verifyOnly) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	return nil, errors.New("a witness key held for verifying cannot sign")
}

// Name is the key's name: the witness's name in signature lines.
func (k *Key) Name() string { return k.name }

// String is the verifier key.
func (k *Key) String() string { return k.v.String() }

// Verifier is the key's note verifier.
func (k *Key) Verifier() note.Verifier { return k.v }

// ID is a short identity for people and storage: name and key ID.
func (k *Key) ID() string { return fmt.Sprintf("%s+%08x", k.name, k.hash) }

// Cosignature is a verified cosignature.
type Cosignature struct {
	// Witness is the key's name; Key its verifier key.
	Witness string
	Key     string
	// Time is when the witness cosigned (its own clock).
	Time time.Time
	// Line is the signature line, with its final newline.
	Line string
}

// MaxClockSkew is how far a cosignature's timestamp may be ahead of the
// verifier's clock. C2SP tlog-cosignature says verifiers MAY reject
// cosignatures with timestamps in the future; the broker and the offline
// verifier do, beyond this much disagreement between two NTP-kept clocks.
// A cosignature is a statement about what the witness had seen "as of"
// its time: one dated ahead is wrong by the witness's own definition, and
// counted it would make a witness that stopped cosigning look current
// until that time.
const MaxClockSkew = 5 * time.Minute

// Future reports whether c is dated more than MaxClockSkew after now.
func (c Cosignature) Future(now time.Time) bool { return c.Time.After(now.Add(MaxClockSkew)) }

// Set is the witnesses a verifier counts, each once.
type Set struct {
	keys []*Key
	list note.Verifiers
}

// NewSet checks that no witness is given twice: not under one name twice,
// and not one public key under two names, which would let one witness's
// cosignature count as two (the v1 signed message does not include the
// name, so its signature verifies under any name).
func NewSet(keys ...*Key) (*Set, error) {
	vs := make([]note.Verifier, 0, len(keys))
	for i, k := range keys {
		for _, o := range keys[:i] {
			if o.name == k.name {
				return nil, fmt.Errorf("witness %s is given twice", k.name)
			}
			if o.pub.Equal(k.pub) {
				return nil, fmt.Errorf("witnesses %s and %s have the same public key: they are one witness and would count twice", o.name, k.name)
			}
		}
		vs = append(vs, k.v)
	}
	return &Set{keys: keys, list: note.VerifierList(vs...)}, nil
}

// Len is the number of witnesses.
func (s *Set) Len() int { return len(s.keys) }

// Keys are the witnesses' keys.
func (s *Set) Keys() []*Key { return s.keys }

// Verify returns the cosignatures by witnesses of the set on a signed
// checkpoint of origin: at most one per witness, each verified, in the
// order of their lines. Lines by other keys are ignored. A line that names
// one of the witnesses and its key ID but does not verify, or carries no
// timestamp, fails the whole note: it is forged or damaged.
func (s *Set) Verify(signed []byte, origin string) ([]Cosignature, error) {
	n, err := note.Open(signed, s.list)
	var unverified *note.UnverifiedNoteError
	switch {
	case errors.As(err, &unverified):
		n = unverified.Note // none of ours: no cosignature, the text still must be a checkpoint
	case err != nil:
		var bad *note.InvalidSignatureError
		if errors.As(err, &bad) {
			return nil, fmt.Errorf("the cosignature by witness %s does not verify: it is forged, or was made over another checkpoint", bad.Name)
		}
		return nil, fmt.Errorf("the checkpoint is not a well-formed signed note: %w", err)
	}
	c, err := torchwood.ParseCheckpoint(n.Text)
	if err != nil {
		return nil, errors.New("the note is not a checkpoint")
	}
	if c.Origin != origin {
		return nil, fmt.Errorf("the checkpoint is for origin %q, not %q", c.Origin, origin)
	}
	out := make([]Cosignature, 0, len(n.Sigs))
	for _, sig := range n.Sigs {
		k := s.key(sig.Name, sig.Hash)
		if k == nil {
			continue
		}
		ts, err := torchwood.CosignatureTimestamp(sig)
		if err != nil || ts == 0 {
			return nil, fmt.Errorf("the cosignature by witness %s has no timestamp", sig.Name)
		}
		out = append(out, Cosignature{Witness: k.name, Key: k.String(), Time: time.Unix(ts, 0).UTC(),
			Line: "— " + sig.Name + " " + sig.Base64 + "\n"})
	}
	return out, nil
}

func (s *Set) key(name string, hash uint32) *Key {
	for _, k := range s.keys {
		if k.name == name && k.hash == hash {
			return k
		}
	}
	return nil
}

// ParseLines reads a witness's add-checkpoint answer: one or more note
// signature lines, each ending in a newline, and nothing else.
func ParseLines(b []byte) ([]string, error) {
	s := string(b)
	if s == "" || !strings.HasSuffix(s, "\n") {
		return nil, errors.New("the answer is not signature lines ending in a newline")
	}
	lines := strings.SplitAfter(s, "\n")
	lines = lines[:len(lines)-1]
	for _, l := range lines {
		if !strings.HasPrefix(l, "— ") || strings.Count(l, " ") != 2 {
			return nil, fmt.Errorf("%q is not a signature line", strings.TrimSuffix(l, "\n"))
		}
	}
	return lines, nil
}

// Append returns the signed note with lines added to its signatures.
func Append(signed []byte, lines ...string) []byte {
	out := append([]byte(nil), signed...)
	for _, l := range lines {
		out = append(out, l...)
	}
	return out
}
