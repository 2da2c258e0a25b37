package broker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/bgbroker/breakglass/server/store"
)

// idempotencyTTL is how long a key is remembered: far longer than any
// client retries, short enough that the table stays small.
const idempotencyTTL = 24 * time.Hour

// Methods named in idempotency records.
const (
	methodCreate = "CreateRequest"
	methodReview = "ReviewRequest"
)

// fingerprint digests a call's fields, each length-prefixed, so that a key
// reused for a different call is recognised.
func fingerprint(fields ...string) string {
	h := sha256.New()
	for _, f := range fields {
		fmt.Fprintf(h, "%d:%s;", len(f), f)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// replay answers a retried call from the record of the first one. It
// returns nil when the key is new.
func (b *Broker) replay(ctx context.Context, tx store.Reader, caller, method, key, fp string) (*Result, error) {
	if key == "" {
		return nil, nil
	}
	c, err := tx.Idempotent(ctx, caller, method, key)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if c.Fingerprint != fp {
		return nil, invalid("you already used idempotency key %q for a different %s; a new call needs a new key", key, method)
	}
	r, err := b.loadRequest(ctx, tx, c.RequestID, caller)
	if err != nil {
		return nil, err
	}
	recs, err := tx.Entries(ctx, c.EntryIndex, c.EntryIndex+1)
	if err != nil {
		return nil, err
	}
	if len(recs) != 1 {
		return nil, fmt.Errorf("idempotency record of %s points at missing entry %d", c.RequestID, c.EntryIndex)
	}
	return &Result{Request: effective(r, b.now()), Entry: recs[0], Replayed: true}, nil
}

// remember records a call made with a key, in its own transaction.
func (b *Broker) remember(ctx context.Context, tx store.Tx, caller, method, key, fp, requestID string, entry uint64, now time.Time) error {
	if key == "" {
		return nil
	}
	return tx.AddIdempotent(ctx, store.IdempotentCall{Principal: caller, Method: method, Key: key, Fingerprint: fp, RequestID: requestID, EntryIndex: entry, At: now})
}
