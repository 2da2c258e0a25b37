package broker

import (
	"context"
	"time"

	"github.com/bgbroker/breakglass/server/request"
)

// notify wakes the watchers of a request after a committed change.
func (b *Broker) notify(id string) {
	b.watchMu.Lock()
	defer b.watchMu.Unlock()
	for ch := range b.watchers[id] {
		select {
		case ch <- struct{}{}:
		default: // a wake-up is already pending
		}
	}
}

// Watch calls send with the request now and after every change until the
// request is final, ctx ends or send fails. Deadlines count as changes.
func (b *Broker) Watch(ctx context.Context, caller, id string, send func(*request.Request) error) error {
	b.watchMu.Lock()
	if b.watching[caller] >= b.cfg.MaxWatchesPerPrincipal {
		b.watchMu.Unlock()
		return newErr(KindExhausted, "you already have %d watch streams open; close one first", b.cfg.MaxWatchesPerPrincipal)
	}
	b.watching[caller]++
	ch := make(chan struct{}, 1)
	if b.watchers[id] == nil {
		b.watchers[id] = map[chan struct{}]struct{}{}
	}
	b.watchers[id][ch] = struct{}{}
	b.watchMu.Unlock()
	defer func() {
		b.watchMu.Lock()
		delete(b.watchers[id], ch)
		if len(b.watchers[id]) == 0 {
			delete(b.watchers, id)
		}
		if b.watching[caller]--; b.watching[caller] == 0 {
			delete(b.watching, caller)
		}
		b.watchMu.Unlock()
	}()

	var lastVersion int64 = -1
	var lastState request.State
	for {
		r, err := b.GetRequest(ctx, caller, id)
		if err != nil {
			return err
		}
		if r.Version != lastVersion || r.State != lastState {
			if err := send(r); err != nil {
				return err
			}
			lastVersion, lastState = r.Version, r.State
		}
		if r.State.Final() {
			return nil
		}
		// Wake at the next deadline even if nothing is written, since the
		// effective state changes then.
		wait := time.Minute
		if d := nextDeadline(r).Sub(b.now()); d > 0 && d < wait {
			wait = d + 10*time.Millisecond
		} else if d <= 0 {
			wait = b.cfg.SweepInterval
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case <-ch:
		case <-timer.C:
		}
		timer.Stop()
	}
}

func nextDeadline(r *request.Request) time.Time {
	if r.State == request.Pending {
		return r.ApprovalDeadline
	}
	if r.Issued == 0 && r.ActivationDeadline.Before(r.GrantExpiresAt) {
		return r.ActivationDeadline
	}
	return r.GrantExpiresAt
}
