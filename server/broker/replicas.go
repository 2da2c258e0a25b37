package broker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/server/store"
)

// policyInForce reads the policy the log last recorded: its hash, and
// the index of its entry.
func (b *Broker) policyInForce(ctx context.Context, r store.Reader) (audit.PolicyLoaded, uint64, error) {
	// Entries never change: the last policy entry read is known again by
	// its index and time (a restored log that differs there differs in
	// time too), without reading and decoding the whole policy on every
	// write that grants.
	idx, at, err := r.LastOfTypeAt(ctx, audit.TypePolicyLoaded)
	if err != nil {
		return audit.PolicyLoaded{}, 0, err
	}
	if seen := b.policySeen.Load(); seen != nil && seen.index == idx && seen.at.Equal(at) {
		return seen.pl, idx, nil
	}
	last, err := r.LastOfType(ctx, audit.TypePolicyLoaded)
	if err != nil {
		return audit.PolicyLoaded{}, 0, err
	}
	e, err := audit.Parse(last.Bytes)
	if err != nil {
		return audit.PolicyLoaded{}, 0, fmt.Errorf("reading the last policy entry: %w", err)
	}
	var pl audit.PolicyLoaded
	if err := jsonUnmarshal(e.Payload, &pl); err != nil {
		return audit.PolicyLoaded{}, 0, fmt.Errorf("reading the last policy entry: %w", err)
	}
	if last.Index == idx {
		b.policySeen.Store(&policySeen{index: idx, at: at, pl: pl})
	}
	return pl, last.Index, nil
}

// policySeen is the last policy entry policyInForce read.
type policySeen struct {
	index uint64
	at    time.Time
	pl    audit.PolicyLoaded
}

// checkPolicyInForce refuses to grant from a replica whose policy is not
// the one the log last recorded: another replica started with a newer (or
// older) policy, and until they agree, a grant here would follow rules the
// log does not say were in force. Taking access away does not call it.
func (b *Broker) checkPolicyInForce(ctx context.Context, r store.Reader) error {
	pl, idx, err := b.policyInForce(ctx, r)
	if errors.Is(err, store.ErrNotFound) {
		return &Error{Kind: KindUnavailable, Msg: "no policy is recorded in the log yet; nothing can be granted"}
	}
	if err != nil {
		return err
	}
	mode, prefix := b.cfg.Certs.Describe()
	mine := b.Policy().Hash()
	if pl.Hash != mine || pl.Identity != (audit.Identity{Mode: mode, URIPrefix: prefix}) {
		return &Error{Kind: KindUnavailable, Msg: fmt.Sprintf("this replica runs policy %s but the policy in force is %s (audit entry %d): replicas must run the same policy and identity settings before anything is granted; use another replica or update this one",
			short(mine), short(pl.Hash), idx)}
	}
	return nil
}

// PolicyAgreement reports whether this replica runs the policy in force,
// for health.
func (b *Broker) PolicyAgreement(ctx context.Context) error {
	return b.view(ctx, func(r store.Reader) error { return b.checkPolicyInForce(ctx, r) })
}

func short(hash string) string {
	if len(hash) > 12 {
		return hash[:12]
	}
	return hash
}

// Follow relays changes other replicas commit to this broker's watchers,
// when the store is shared, until ctx ends.
func (b *Broker) Follow(ctx context.Context) {
	w, ok := b.store.(store.Watcher)
	if !ok {
		return
	}
	w.Watch(ctx, func(c store.Change) {
		if c.Resync {
			b.watchMu.Lock()
			ids := make([]string, 0, len(b.watchers))
			for id := range b.watchers {
				ids = append(ids, id)
			}
			b.watchMu.Unlock()
			c.Requests = ids
		}
		for _, id := range c.Requests {
			b.notify(id)
		}
		if c.Entries || c.Resync {
			b.wakeEntryWatchers()
		}
	})
}
