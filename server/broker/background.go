package broker

import (
	"context"
	"fmt"
	"time"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/server/event"
	"github.com/bgbroker/breakglass/server/request"
	"github.com/bgbroker/breakglass/server/store"
)

// Run does the broker's background work until ctx ends: it records expired
// deadlines, signs entries written while the HSM was down, and flushes
// aggregated permission denials. Reads apply deadlines themselves, so a
// stalled Run never extends access.
func (b *Broker) Run(ctx context.Context) {
	tick := time.NewTicker(b.cfg.SweepInterval)
	defer tick.Stop()
	var lastOverdue time.Time
	for {
		select {
		case <-ctx.Done():
			// Flush what is pending so a clean shutdown loses no denial.
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			_ = b.FlushDenials(fctx, true)
			cancel()
			return
		case <-tick.C:
		}
		if _, err := b.Sweep(ctx); err != nil && ctx.Err() == nil {
			b.log.Error("expiry sweep failed", "err", err)
		}
		if _, err := b.RipenSolo(ctx); err != nil && ctx.Err() == nil {
			b.log.Warn("solo requests not approved yet", "err", err)
		}
		if _, err := b.ExpireProposals(ctx); err != nil && ctx.Err() == nil {
			b.log.Warn("expiring policy proposals failed", "err", err)
		}
		if err := b.FollowPolicy(ctx); err != nil && ctx.Err() == nil {
			b.log.Error("the policy the log records is not in force here", "err", err)
		}
		// Overdue items change slowly: look once a minute.
		if now := b.now(); now.Sub(lastOverdue) >= time.Minute {
			lastOverdue = now
			if err := b.Overdue(ctx); err != nil && ctx.Err() == nil {
				b.log.Error("overdue checks failed", "err", err)
			}
			if err := b.store.Update(ctx, func(tx store.Tx) error {
				_, err := tx.PruneIdempotent(ctx, b.now().Add(-idempotencyTTL))
				return err
			}); err != nil && ctx.Err() == nil {
				b.log.Warn("forgetting old idempotency keys failed", "err", err)
			}
			if _, err := b.PruneOutbox(ctx); err != nil && ctx.Err() == nil {
				b.log.Warn("pruning delivered events from the outbox failed", "err", err)
			}
			if _, err := b.PrunePasskeys(ctx); err != nil && ctx.Err() == nil {
				b.log.Warn("forgetting passkeys whose codes lapsed failed", "err", err)
			}
		}
		if err := b.flushCerts(ctx); err != nil && ctx.Err() == nil {
			b.log.Error("recording client certificates failed", "err", err)
		}
		if _, err := b.SignBacklog(ctx); err != nil && ctx.Err() == nil {
			b.log.Warn("unsigned audit entries are still waiting for the HSM", "err", err)
		}
		if err := b.FlushDenials(ctx, false); err != nil && ctx.Err() == nil {
			b.log.Error("recording permission denials failed", "err", err)
		}
	}
}

// sweepBatch is how many due requests one read of the sweep takes; the
// sweep goes on reading until none is left.
const sweepBatch = 100

// Sweep records every deadline that has passed: pending requests whose
// approval window ended, grants never activated, grants that ended. It
// drains any backlog (after a long outage, thousands may be due at once),
// one bounded batch at a time, and returns how many requests it expired.
func (b *Broker) Sweep(ctx context.Context) (int, error) {
	now := b.now().UTC()
	total := 0
	for {
		n, full, err := b.sweepOnce(ctx, now)
		total += n
		// A full batch in which nothing expired would be read again
		// unchanged: stop rather than spin (the next tick retries).
		if err != nil || !full || n == 0 {
			return total, err
		}
	}
}

// sweepOnce expires one batch of due requests and says whether the batch
// was full.
func (b *Broker) sweepOnce(ctx context.Context, now time.Time) (int, bool, error) {
	var due []*request.Request
	if err := b.view(ctx, func(r store.Reader) error {
		var err error
		due, err = r.DueForExpiry(ctx, now, sweepBatch)
		return err
	}); err != nil {
		return 0, false, err
	}
	n := 0
	for _, d := range due {
		var ended *request.Request
		err := b.update(ctx, func(tx store.Tx) error {
			r, err := tx.Request(ctx, d.ID)
			if err != nil {
				return err
			}
			state, reason, at := r.Effective(now)
			if state != request.Expired || r.State == request.Expired {
				return nil
			}
			rec, err := b.appendEntry(ctx, tx, now, audit.Draft{
				Type: audit.TypeRequestExpired, Actor: "broker", Request: r.ID, Account: r.Account,
				Payload: audit.RequestFinal{Reason: reason, At: at},
			}, false)
			if err != nil {
				return err
			}
			wasGrant := r.State == request.Approved
			r.State, r.FinalAt, r.FinalBy, r.FinalReason = request.Expired, at, "broker", reason
			n++
			if err := tx.SaveRequest(ctx, r); err != nil {
				return err
			}
			if wasGrant {
				ended = r
				if err := b.grantEndedEarly(ctx, tx, r, at); err != nil {
					return err
				}
			}
			return b.emit(ctx, tx, requestEvent(event.RequestExpired, r, "broker", fmt.Sprintf("request %s on %s expired: %s", r.ID, r.Account, reason), &rec), nil)
		})
		if err != nil {
			return n, false, err
		}
		b.notify(d.ID)
		if ended != nil {
			b.grantEnded(ended.Account, ended.Issued)
		}
	}
	return n, len(due) == sweepBatch, nil
}

// pruneBatch bounds the rows one pruning transaction deletes, so that the
// writer is never held long.
const pruneBatch = 500

// PruneOutbox deletes delivered events older than the retention, and dead
// letters acknowledged longer ago than it, in bounded batches until none
// is left; it returns how many rows it deleted. Each batch is its own
// transaction deleting delivered rows only: a crash between batches loses
// nothing that was not already delivered.
func (b *Broker) PruneOutbox(ctx context.Context) (int, error) {
	before := b.now().Add(-b.cfg.OutboxRetention)
	total := 0
	for {
		var n int
		if err := b.store.Update(ctx, func(tx store.Tx) error {
			var err error
			n, err = tx.PruneOutbox(ctx, before, pruneBatch)
			return err
		}); err != nil {
			return total, err
		}
		total += n
		if n == 0 {
			return total, nil
		}
	}
}

// SignBacklog signs entries written while the HSM was down, oldest first.
// It returns how many it signed.
func (b *Broker) SignBacklog(ctx context.Context) (int, error) {
	signed := 0
	for {
		if n, err := b.Backlog(ctx); err != nil || n == 0 {
			return signed, err
		}
		var batch []audit.Record
		// Read the backlog under the write lock: another replica may be
		// signing it too, and an entry is signed once. The key is the one
		// in force (an audit key is never rotated over a backlog, so it is
		// the key in force at each entry's index).
		err := b.update(ctx, func(tx store.Tx) error {
			key, kid, err := b.auditKey(ctx, tx)
			if err != nil {
				return err
			}
			if batch, err = tx.Unsigned(ctx, 64); err != nil {
				return err
			}
			for i := range batch {
				if err := audit.Sign(ctx, key, kid, &batch[i]); err != nil {
					return hsmDown(err)
				}
				if err := tx.SetSignature(ctx, batch[i].Index, batch[i].Signature, batch[i].KeyID); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil || len(batch) == 0 {
			return signed, err
		}
		signed += len(batch)
		b.log.Info("signed audit entries written while the HSM was down", "count", len(batch), "through", batch[len(batch)-1].Index)
	}
}

// Backlog is the number of entries waiting for a signature.
func (b *Broker) Backlog(ctx context.Context) (int, error) {
	n := 0
	err := b.view(ctx, func(r store.Reader) error {
		var err error
		n, err = r.UnsignedCount(ctx)
		return err
	})
	return n, err
}
