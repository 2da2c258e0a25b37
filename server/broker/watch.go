package broker

import (
	"context"
	"time"

	"github.com/bgbroker/breakglass/server/request"
)

// anyRequest keys the watchers of every request (WatchChanges).
const anyRequest = ""

// notify wakes the watchers of a request, and those of every request,
// after a committed change.
func (b *Broker) notify(id string) {
	b.watchMu.Lock()
	defer b.watchMu.Unlock()
	for _, key := range []string{id, anyRequest} {
		for ch := range b.watchers[key] {
			select {
			case ch <- struct{}{}:
			default: // a wake-up is already pending
			}
		}
		if id == anyRequest {
			break
		}
	}
}

// watch registers a watcher of a request (anyRequest: of all) for caller,
// within the caller's limit of open watches.
func (b *Broker) watch(caller, id string) (chan struct{}, func(), error) {
	b.watchMu.Lock()
	defer b.watchMu.Unlock()
	if b.watching[caller] >= b.cfg.MaxWatchesPerPrincipal {
		return nil, nil, newErr(KindExhausted, "you already have %d watch streams open; close one first", b.cfg.MaxWatchesPerPrincipal)
	}
	b.watching[caller]++
	ch := make(chan struct{}, 1)
	if b.watchers[id] == nil {
		b.watchers[id] = map[chan struct{}]struct{}{}
	}
	b.watchers[id][ch] = struct{}{}
	return ch, func() {
		b.watchMu.Lock()
		defer b.watchMu.Unlock()
		delete(b.watchers[id], ch)
		if len(b.watchers[id]) == 0 {
			delete(b.watchers, id)
		}
		if b.watching[caller]--; b.watching[caller] == 0 {
			delete(b.watching, caller)
		}
	}, nil
}

// WatchChanges calls changed(true) once it is watching, then changed(false)
// after every committed change to any request (the same notifications
// Watch uses, other replicas' included) and at least every interval, since
// deadlines change what a list shows without a write; until ctx ends or
// changed fails. It counts as one of the caller's watches: past the limit
// it returns before calling changed at all.
func (b *Broker) WatchChanges(ctx context.Context, caller string, interval time.Duration, changed func(first bool) error) error {
	ch, stop, err := b.watch(caller, anyRequest)
	if err != nil {
		return err
	}
	defer stop()
	if err := changed(true); err != nil {
		return err
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		case <-t.C:
		}
		if err := changed(false); err != nil {
			return err
		}
	}
}

// Watch calls send with the request now and after every change until the
// request is final, ctx ends or send fails. Deadlines count as changes.
func (b *Broker) Watch(ctx context.Context, caller, id string, send func(*request.Request) error) error {
	if id == anyRequest {
		return notFound(id)
	}
	ch, stop, err := b.watch(caller, id)
	if err != nil {
		return err
	}
	defer stop()

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
