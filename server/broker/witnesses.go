package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/google/uuid"

	"github.com/bgbroker/breakglass/format/cosignature"
	"github.com/bgbroker/breakglass/server/event"
	"github.com/bgbroker/breakglass/server/request"
	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/witness"
)

// Witnessing is what the broker needs of the witnesses.
type Witnessing struct {
	// IDs are the witnesses' identities in the store; Quorum how many of
	// them a checkpoint needs.
	IDs    []string
	Quorum int
	// Require withholds a grant's first credential (token or certificate)
	// until a checkpoint covering its approval carries Quorum cosignatures
	// (audit.require_witnessed).
	Require bool
	// Needed is called when a first credential waits for the witnesses, so a
	// checkpoint covering the approval is signed and sent now.
	Needed func()
	// Status reports each witness, for the standing-access report.
	Status func() []witness.Status
}

// checkWitnessed refuses a grant's first credential (token, SSH or X.509
// certificate) while no checkpoint that covers its approval entry carries
// the witness quorum, so that no grant can be used unseen by the witnesses.
func (b *Broker) checkWitnessed(ctx context.Context, rd store.Reader, r *request.Request) error {
	w := b.cfg.Witnesses
	if w == nil || !w.Require || r.Issued > 0 {
		return nil
	}
	// A grant approved before its approval entry was recorded must wait
	// for a checkpoint of the whole log as it is now.
	var need uint64
	if r.ApprovedEntry != nil {
		need = *r.ApprovedEntry + 1
	} else {
		h, err := rd.Head(ctx)
		if err != nil {
			return err
		}
		need = h.Size
	}
	_, err := rd.LatestWitnessed(ctx, w.IDs, w.Quorum, need)
	if err == nil {
		return nil
	}
	if !errors.Is(err, store.ErrNotFound) {
		return err
	}
	if w.Needed != nil {
		w.Needed()
	}
	return wrongState("the broker requires every grant to be witnessed before its first token or certificate: no checkpoint covering this grant's approval (entry %d) carries %d witness cosignatures yet (try again shortly; `bgctl report` shows the witnesses)",
		need-1, w.Quorum)
}

// CheckpointSigned announces a checkpoint with the cosignatures it
// carries, so the SOC holds checkpoints the broker cannot later deny.
func (b *Broker) CheckpointSigned(ctx context.Context, cp store.Checkpoint, cos []store.Cosignature) error {
	var by, lines []string
	for _, c := range cos {
		name, _, _ := strings.Cut(c.Witness, "+")
		by, lines = append(by, name), append(lines, c.Line)
	}
	served := cosignature.Append(cp.Note, lines...)
	details, err := json.Marshal(map[string]any{"size": cp.Size, "checkpoint": string(served), "cosigned_by": by})
	if err != nil {
		return err
	}
	// The event id is derived from the log and the size: replicas that
	// both sign the checkpoint of one size (the same bytes: Ed25519 is
	// deterministic) announce it once.
	id := uuid.NewSHA1(uuid.NameSpaceURL, fmt.Appendf(nil, "breakglass:%s/checkpoint/%d", b.cfg.Origin, cp.Size))
	summary := fmt.Sprintf("checkpoint of %d entries signed", cp.Size)
	if b.cfg.Witnesses != nil {
		summary = fmt.Sprintf("checkpoint of %d entries signed and cosigned by %d of %d witnesses (%s)", cp.Size, len(by), len(b.cfg.Witnesses.IDs), strings.Join(by, ", "))
	}
	return b.announce(ctx, event.Event{ID: id.String(), Type: event.CheckpointSigned, Time: cp.CreatedAt, Summary: summary, Details: details})
}

// WitnessSplitView alerts every sink that a witness refuses the log's
// history: the log was rolled back or forked after the witness cosigned
// it. Each distinct refusal is announced once, however often the witness
// repeats it.
func (b *Broker) WitnessSplitView(ctx context.Context, sv witness.SplitView) error {
	kind := "fork"
	if sv.Rollback {
		kind = "rollback"
	}
	details, err := json.Marshal(map[string]any{"witness": sv.Witness, "witness_size": sv.WitnessSize, "log_size": sv.LogSize, "kind": kind})
	if err != nil {
		return err
	}
	id := uuid.NewSHA1(uuid.NameSpaceURL, fmt.Appendf(nil, "breakglass:%s/split-view/%s/%s/%d", b.cfg.Origin, sv.Witness, kind, sv.WitnessSize))
	return b.announce(ctx, event.Event{ID: id.String(), Type: event.WitnessSplitView, Time: b.now().UTC(),
		Summary: "SPLIT VIEW: " + sv.Message, Details: details})
}

// announce writes an event that stands for itself (no state change) to
// the outbox once: a second announcement with the same id is dropped.
func (b *Broker) announce(ctx context.Context, ev event.Event) error {
	err := b.update(ctx, func(tx store.Tx) error { return b.emit(ctx, tx, ev, nil) })
	if KindOf(err) == KindState && errors.Is(err, store.ErrConflict) {
		return nil // announced already, by another replica or an earlier round
	}
	return err
}
