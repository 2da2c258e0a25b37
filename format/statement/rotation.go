package statement

import (
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"fmt"
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
