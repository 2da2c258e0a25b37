package statement

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// RotationContext begins every key rotation statement: the text that both
// the old and the new audit or checkpoint key sign, so that a verifier
// holding only the first key can follow every rotation after it.
const RotationContext = "breakglass key rotation v1"

// Rotation is the text the old and the new key both sign when a key of the
// given purpose (and account, for token keys) is replaced.
func Rotation(purpose, account, oldKID, newKID string, newPub crypto.PublicKey, at time.Time) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(newPub)
	if err != nil {
		return nil, err
	}
	return fmt.Appendf(nil, "%s\npurpose %s\naccount %s\nold %s\nnew %s\nkey %s\ntime %s\n", RotationContext, purpose, account, oldKID, newKID,
		base64.StdEncoding.EncodeToString(der), at.UTC().Format(time.RFC3339)), nil
}

// RotationFields is a parsed key rotation statement.
type RotationFields struct {
	Purpose string
	Account string
	Old     string
	New     string
	// Key is the new key's DER SubjectPublicKeyInfo.
	Key  []byte
	Time time.Time
}

var (
	kidRE = regexp.MustCompile(`^[A-Za-z0-9_-]{43}$`)
	// Only the audit and the checkpoint keys rotate by a statement both
	// keys sign (docs/signing.md, "Key rotation").
	purposeRE = regexp.MustCompile(`^(audit|checkpoint)$`)
	accountRE = regexp.MustCompile(`^([a-z0-9][a-z0-9._-]{0,63})?$`)
)

// ParseRotation reads a key rotation statement strictly: the exact lines
// in order, each value in its one canonical form (docs/signing.md).
func ParseRotation(b []byte) (RotationFields, error) {
	var r RotationFields
	if len(b) > MaxStatementBytes*4 {
		return r, errors.New("rotation statement is too long")
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) != 8 || lines[7] != "" {
		return r, errors.New("rotation statement must be 7 lines, each ending in a newline")
	}
	if lines[0] != RotationContext {
		return r, fmt.Errorf("rotation statement does not begin with %q", RotationContext)
	}
	fields := []string{"purpose", "account", "old", "new", "key", "time"}
	vals := make([]string, len(fields))
	for i, f := range fields {
		k, v, ok := strings.Cut(lines[i+1], " ")
		if !ok || k != f {
			return r, fmt.Errorf("rotation statement line %d must be %q, a space and a value", i+2, f)
		}
		vals[i] = v
	}
	r.Purpose, r.Account, r.Old, r.New = vals[0], vals[1], vals[2], vals[3]
	if !purposeRE.MatchString(r.Purpose) || !accountRE.MatchString(r.Account) {
		return r, errors.New("rotation statement purpose or account is malformed")
	}
	if !kidRE.MatchString(r.Old) || !kidRE.MatchString(r.New) {
		return r, errors.New("rotation statement key ids must be RFC 7638 thumbprints (43 base64url characters)")
	}
	key, err := base64.StdEncoding.Strict().DecodeString(vals[4])
	if err != nil || len(key) == 0 {
		return r, errors.New("rotation statement key must be the base64 DER SubjectPublicKeyInfo of the new key")
	}
	pub, err := x509.ParsePKIXPublicKey(key)
	if err != nil {
		return r, fmt.Errorf("rotation statement key does not parse: %w", err)
	}
	r.Key = key
	t, err := time.Parse(time.RFC3339, vals[5])
	if err != nil || t.UTC().Format(time.RFC3339) != vals[5] {
		return r, errors.New("rotation statement time must be RFC 3339 UTC to the second, such as 2026-11-29T12:52:10Z")
	}
	r.Time = t
	again, err := Rotation(r.Purpose, r.Account, r.Old, r.New, pub, r.Time)
	if err != nil || !bytes.Equal(again, b) {
		return r, errors.New("rotation statement is not in canonical form")
	}
	return r, nil
}
