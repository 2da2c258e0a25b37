package hsm

import (
	"context"
	"errors"
	"time"
)

// healthMessage is what health checks sign. It is fixed so a signature made
// for a check can never be mistaken for one over a broker object: tokens,
// entries and notes all begin differently.
var healthMessage = []byte("breakglass hsm self-test v1: this signature authorises nothing\n")

// KeyHealth is the outcome of signing and verifying with one key.
type KeyHealth struct {
	Label       string        `json:"label"`
	Purpose     Purpose       `json:"purpose"`
	Algorithm   Algorithm     `json:"algorithm"`
	Fingerprint string        `json:"fingerprint"`
	OK          bool          `json:"ok"`
	Error       string        `json:"error,omitempty"`
	Latency     time.Duration `json:"latency_ns"`
}

// Check signs a fixed message with each key and verifies the signature in
// software against the public key the key was loaded with.
func (m *Module) Check(ctx context.Context, keys ...*Key) []KeyHealth {
	out := make([]KeyHealth, 0, len(keys))
	for _, k := range keys {
		h := KeyHealth{Label: k.Label(), Purpose: k.Purpose(), Algorithm: k.Algorithm(), Fingerprint: Fingerprint(k.Public())}
		start := time.Now()
		sig, err := k.SignMessage(ctx, healthMessage)
		h.Latency = time.Since(start)
		switch {
		case err != nil:
			h.Error = err.Error()
		case !k.Verify(healthMessage, sig):
			h.Error = "the signature does not verify against the key's public key"
		default:
			h.OK = true
		}
		out = append(out, h)
	}
	return out
}

// Healthy reports whether every check passed, with the first failure.
func Healthy(checks []KeyHealth) error {
	for _, c := range checks {
		if !c.OK {
			return errors.New(c.Label + ": " + c.Error)
		}
	}
	return nil
}
