package daemon

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"

	"github.com/bgbroker/breakglass/server/broker"
	"github.com/bgbroker/breakglass/server/checkpoint"
	"github.com/bgbroker/breakglass/server/config"
	"github.com/bgbroker/breakglass/server/httpapi"
	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/witness"
)

func witnessConfigs(ws []config.Witness) []witness.Config {
	out := make([]witness.Config, len(ws))
	for i, w := range ws {
		out[i] = witness.Config{Name: w.Name, URL: w.URL, Key: w.Key}
	}
	return out
}

// newWitnesses builds the witness client when witnesses are configured.
// It announces through the broker, built after it.
func (d *Daemon) newWitnesses(ctx context.Context) error {
	a := d.cfg.Audit
	if len(a.Witnesses) == 0 {
		return nil
	}
	log := d.log
	wc, err := witness.New(ctx, witness.Options{Store: d.store, Origin: d.origin, Witnesses: witnessConfigs(a.Witnesses), Quorum: a.WitnessQuorum,
		Timeout: a.WitnessTimeout, BackoffMax: a.WitnessBackoffMax, Refresh: a.WitnessRefresh, Now: d.now, Log: log,
		OnSplitView: func(ctx context.Context, sv witness.SplitView) {
			if b := d.Broker; b != nil {
				if err := b.WitnessSplitView(ctx, sv); err != nil {
					log.Error("alerting a split view failed", "witness", sv.Witness, "err", err)
				}
			}
		},
		OnRound: func(ctx context.Context, cp store.Checkpoint, cos []store.Cosignature) {
			if b := d.Broker; b != nil {
				if err := b.CheckpointSigned(ctx, cp, cos); err != nil {
					log.Error("announcing a checkpoint failed", "size", cp.Size, "err", err)
				}
			}
		}})
	if err != nil {
		return err
	}
	d.witnesses = wc
	return nil
}

// witnessing is what the broker knows of the witnesses: for the report
// and, with require_witnessed, to hold first tokens back.
func (d *Daemon) witnessing(ctx context.Context, cps *checkpoint.Checkpointer) *broker.Witnessing {
	wc := d.witnesses
	if wc == nil {
		return nil
	}
	var busy atomic.Bool
	return &broker.Witnessing{IDs: wc.IDs(), Quorum: wc.Quorum(), Require: d.cfg.Audit.RequireWitnessed, Status: wc.Status,
		// A first token waits: sign a checkpoint covering the grant now
		// rather than at the next batch, and send it, once at a time.
		Needed: func() {
			if busy.Swap(true) {
				return
			}
			go func() {
				defer busy.Store(false)
				if _, err := cps.Latest(ctx); err != nil && ctx.Err() == nil {
					d.log.Warn("signing a checkpoint for the witnesses failed", "err", err)
					return
				}
				wc.Notify()
			}()
		}}
}

// servedCheckpoint is what GET /checkpoint serves: with witnesses, the
// newest checkpoint their quorum cosigned; without, the newest signed.
// Either with every cosignature it carries. It never signs: an
// unauthenticated caller cannot make the HSM work.
func (d *Daemon) servedCheckpoint(ctx context.Context) ([]byte, error) {
	var out []byte
	err := d.store.View(ctx, func(r store.Reader) error {
		var (
			cp  store.Checkpoint
			err error
		)
		if wc := d.witnesses; wc != nil {
			size, err := r.LatestWitnessed(ctx, wc.IDs(), wc.Quorum(), 0)
			if errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("%w: no checkpoint carries %d witness cosignatures yet", httpapi.ErrNoCheckpoint, wc.Quorum())
			}
			if err != nil {
				return err
			}
			cp, err = r.Checkpoint(ctx, size)
			if err != nil {
				return err
			}
		} else if cp, err = r.LatestCheckpoint(ctx); errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("%w: the log has no checkpoint yet", httpapi.ErrNoCheckpoint)
		} else if err != nil {
			return err
		}
		out, _, err = witness.Cosigned(ctx, r, cp)
		return err
	})
	return out, err
}

// witnessHealth adds a check per witness and the overall witness check
// (also the gRPC health service "witness"): failing while any witness
// reports a split view, or while fewer than the quorum cosigned the
// newest checkpoint they were sent. It reports whether witnesses are
// configured.
func (d *Daemon) witnessHealth(checks map[string]string) bool {
	wc := d.witnesses
	if wc == nil {
		return false
	}
	now := d.now()
	var splits, behind []string
	var top uint64
	sts := wc.Status()
	for _, w := range sts {
		top = max(top, w.CosignedSize)
	}
	fresh := 0
	for _, w := range sts {
		state := "ok"
		switch {
		case w.SplitView != "":
			state, splits = "SPLIT VIEW: "+w.SplitView, append(splits, w.Name)
		case w.LastError != "":
			state = fmt.Sprintf("failing (%d in a row): %s", w.Failures, w.LastError)
		}
		if w.CosignedSize > 0 {
			state += fmt.Sprintf("; cosigned %d entries %s ago", w.CosignedSize, now.Sub(w.CosignedAt).Round(1e9))
		}
		checks["witness:"+w.Name] = state
		if w.SplitView == "" && w.LastError == "" && w.CosignedSize == top {
			fresh++
		} else {
			behind = append(behind, w.Name)
		}
	}
	switch {
	case len(splits) > 0:
		checks["witness"] = fmt.Sprintf("SPLIT VIEW: %s refuse this log's history: it was rolled back or forked after they cosigned it (see bgctl report)", strings.Join(splits, ", "))
	case fresh < wc.Quorum():
		checks["witness"] = fmt.Sprintf("%d of %d witnesses cosign the newest checkpoint, fewer than the quorum of %d (behind: %s)", fresh, len(sts), wc.Quorum(), strings.Join(behind, ", "))
	default:
		checks["witness"] = "ok"
	}
	return true
}
