package broker

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"time"

	"github.com/google/uuid"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/server/event"
	"github.com/bgbroker/breakglass/server/request"
	"github.com/bgbroker/breakglass/server/store"
)

// Routes says which sinks receive an event; notify.Router implements it.
type Routes interface {
	Sinks(eventType, account string) []string
	All() []string
	// Has reports whether a sink is configured (for the policy's ack_sinks).
	Has(name string) bool
}

// emit writes an event to the outbox inside tx, so it commits with the
// change it announces or not at all. ackSinks receive it whatever their
// routes say, and their delivery acknowledges it.
func (b *Broker) emit(ctx context.Context, tx store.Tx, ev event.Event, ackSinks []string) error {
	if b.cfg.Routes == nil {
		return nil
	}
	sinks := b.cfg.Routes.Sinks(ev.Type, ev.Account)
	switch ev.Type {
	case event.SoloRequested, event.WitnessSplitView, event.PolicyRefused, event.PolicyReset:
		sinks = b.cfg.Routes.All() // a solo request, a split view, a refused policy or a trust reset alerts every sink at once
	}
	for _, s := range ackSinks {
		if !slices.Contains(sinks, s) {
			sinks = append(sinks, s)
		}
	}
	return b.enqueue(ctx, tx, ev, sinks, ackSinks)
}

// enqueue puts ev in the outbox for sinks.
func (b *Broker) enqueue(ctx context.Context, tx store.Tx, ev event.Event, sinks, ackSinks []string) error {
	if ev.ID == "" {
		id, err := uuid.NewV7()
		if err != nil {
			return err
		}
		ev.ID = id.String()
	}
	if ev.Time.IsZero() {
		ev.Time = b.now().UTC()
	}
	body, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	items := make([]store.OutboxItem, 0, len(sinks))
	for _, s := range sinks {
		items = append(items, store.OutboxItem{EventID: ev.ID, Sink: s, Type: ev.Type, Account: ev.Account, RequestID: ev.Request,
			Body: body, Ack: slices.Contains(ackSinks, s), CreatedAt: ev.Time})
	}
	if len(items) > 0 {
		b.eventsPending.Store(true)
	}
	return tx.Enqueue(ctx, items)
}

// requestEvent fills the common fields of an event about r.
func requestEvent(typ string, r *request.Request, actor, summary string, rec *audit.Record) event.Event {
	ev := event.Event{Type: typ, Account: r.Account, Request: r.ID, Requester: r.Requester, Actor: actor, Approvers: r.Approvers,
		Drill: r.Drill, Solo: r.Solo, Summary: summary}
	if rec != nil {
		idx := rec.Index
		ev.AuditIndex = &idx
	}
	return ev
}

// contacts returns the paging routes of principals.
func contacts(p *policy.Policy, principals []string) []event.Contact {
	out := make([]event.Contact, 0, len(principals))
	for _, who := range principals {
		c := p.Contacts[who]
		out = append(out, event.Contact{Principal: who, Slack: c.Slack, WebhookTag: c.WebhookTag, Email: c.Email})
	}
	return out
}

// approversOf lists who may review r, for paging.
func approversOf(p *policy.Policy, r *request.Request) []string {
	var out []string
	for _, a := range p.Approvers(r.Rule) {
		if a != r.Requester {
			out = append(out, a)
		}
	}
	return out
}

// eventsPending reports whether the dispatcher should look at the outbox.
func (b *Broker) kickEvents() {
	if b.eventsPending.Swap(false) {
		b.cfg.Observer.EventsQueued()
	}
}

// FinishDelivery records a delivery outcome. An acknowledging delivery
// (require_alert_ack, solo requests) and a dead letter are audited in the
// same transaction, and announced.
func (b *Broker) FinishDelivery(ctx context.Context, it store.OutboxItem) error {
	err := b.update(ctx, func(tx store.Tx) error {
		if err := tx.FinishOutbox(ctx, it); err != nil {
			return err
		}
		now := b.now().UTC()
		switch {
		case it.State == store.OutboxDelivered && it.Ack:
			return b.acknowledged(ctx, tx, it, now)
		case it.State == store.OutboxDead:
			rec, err := b.appendEntry(ctx, tx, now, audit.Draft{Type: audit.TypeAlertDead, Actor: "broker", Request: it.RequestID, Account: it.Account,
				Payload: audit.AlertDelivery{EventID: it.EventID, EventType: it.Type, Sink: it.Sink, Attempts: it.Attempts, LastError: it.LastError}}, false)
			if err != nil {
				return err
			}
			return b.announceDeadLetter(ctx, tx, it, rec.Index)
		}
		return nil
	})
	return err
}

// announceDeadLetter tells the other sinks routed for dead letters that
// one was given up. Not the sink that refused it, and not at all when the
// event given up was itself such an announcement: while sinks are down,
// each dead letter announced to them would dead-letter in turn, without
// end. Every dead letter is audited and stays in the report and the health
// until an auditor acknowledges it, announced or not.
func (b *Broker) announceDeadLetter(ctx context.Context, tx store.Tx, it store.OutboxItem, idx uint64) error {
	if b.cfg.Routes == nil || it.Type == event.AlertDeadLettered {
		return nil
	}
	sinks := slices.DeleteFunc(b.cfg.Routes.Sinks(event.AlertDeadLettered, it.Account), func(s string) bool { return s == it.Sink })
	return b.enqueue(ctx, tx, event.Event{Type: event.AlertDeadLettered, Account: it.Account, Request: it.RequestID, AuditIndex: &idx,
		Summary: "an alert (" + it.Type + ") could not be delivered to sink " + it.Sink + " and was given up: " + it.LastError}, sinks, nil)
}

// acknowledged records that an ack sink accepted an alert: for a solo
// request its veto window starts; for a grant its first token may issue.
func (b *Broker) acknowledged(ctx context.Context, tx store.Tx, it store.OutboxItem, now time.Time) error {
	r, err := tx.Request(ctx, it.RequestID)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	typ := audit.TypeAlertAcked
	switch it.Type {
	case event.SoloRequested:
		if !r.SoloAckedAt.IsZero() {
			return nil // the window already runs from the first acknowledgement
		}
		if state, _, _ := r.Effective(now); state != request.Pending || !r.Solo {
			return nil // ended before the alert was acknowledged: no window starts
		}
		r.SoloAckedAt, typ = now, audit.TypeSoloAcked
	case event.GrantApproved:
		if !r.GrantAckedAt.IsZero() {
			return nil
		}
		r.GrantAckedAt = now
	default:
		return nil
	}
	rec, err := b.appendEntry(ctx, tx, now, audit.Draft{Type: typ, Actor: "broker", Request: r.ID, Account: r.Account,
		Payload: audit.AlertDelivery{EventID: it.EventID, EventType: it.Type, Sink: it.Sink, Attempts: it.Attempts}}, false)
	if err != nil {
		return err
	}
	if err := tx.SaveRequest(ctx, r); err != nil {
		return err
	}
	evType, summary := event.AlertAcknowledged, "sink "+it.Sink+" acknowledged the grant alert; the grant may now be used"
	if typ == audit.TypeSoloAcked {
		evType, summary = event.SoloAcknowledged, "sink "+it.Sink+" acknowledged the solo request; its veto window runs now"
	}
	return b.emit(ctx, tx, requestEvent(evType, r, "broker", summary, &rec), nil)
}

// MaxDeadLetterNotes bounds what an acknowledgement of a dead letter says.
const MaxDeadLetterNotes = audit.MaxDeadLetterNotes

// AcknowledgeDeadLetter records that caller, an auditor, dealt with the
// dead letter of event eventID at sink: in one transaction the row is
// marked, so that it leaves the report and the health and is pruned after
// the retention, the acknowledgement is audited with the notes, and
// announced. Only auditors may: a dead letter is an alert nobody received,
// perhaps the only notice of a use of an account, so neither the account's
// owners nor anyone whose work it announced may make it go away.
func (b *Broker) AcknowledgeDeadLetter(ctx context.Context, caller, eventID, sink, notes string) (*store.OutboxItem, audit.Record, error) {
	if err := validateText("notes", notes, MaxDeadLetterNotes, true); err != nil {
		return nil, audit.Record{}, err
	}
	if eventID == "" || sink == "" {
		return nil, audit.Record{}, invalid("name the dead letter by its event id and sink (bgctl report lists them)")
	}
	var (
		out *store.OutboxItem
		rec audit.Record
	)
	err := b.update(ctx, func(tx store.Tx) error {
		// Who may acknowledge is judged by the policy in force, as the log
		// says.
		if err := b.checkPolicyInForce(ctx, tx); err != nil {
			return err
		}
		p := b.Policy()
		if !p.IsAuditor(caller) {
			return denied("only members of the auditors group (%s) may acknowledge dead letters", p.Auditors)
		}
		it, err := tx.DeadLetter(ctx, eventID, sink)
		if errors.Is(err, store.ErrNotFound) {
			return newErr(KindNotFound, "no alert %s for sink %s is kept (check the event id and sink in bgctl report; an acknowledged one is pruned after the retention)", eventID, sink)
		}
		if err != nil {
			return err
		}
		switch {
		case it.State != store.OutboxDead:
			return wrongState("alert %s for sink %s is %s, not dead-lettered: there is nothing to acknowledge", eventID, sink, it.State)
		case !it.AckedAt.IsZero():
			return wrongState("the dead letter %s for sink %s was already acknowledged at %s", eventID, sink, it.AckedAt.UTC().Format(time.RFC3339))
		}
		now := b.now().UTC()
		rec, err = b.appendEntry(ctx, tx, now, audit.Draft{Type: audit.TypeAlertDeadAcked, Actor: caller, Request: it.RequestID, Account: it.Account,
			Payload: audit.DeadLetterAcknowledged{EventID: it.EventID, EventType: it.Type, Sink: it.Sink, Notes: notes}}, false)
		if err != nil {
			return err
		}
		// The entry's time, which never goes back, is the acknowledgement's.
		if err := tx.AckDeadLetter(ctx, it.EventID, it.Sink, rec.Time); err != nil {
			return err
		}
		it.AckedAt = rec.Time
		out = it
		idx := rec.Index
		return b.emit(ctx, tx, event.Event{Type: event.AlertDeadLetterAcked, Account: it.Account, Request: it.RequestID, Actor: caller, AuditIndex: &idx,
			Summary: caller + " acknowledged the dead letter of an alert (" + it.Type + ") to sink " + it.Sink + ": " + oneLine(notes)}, nil)
	})
	return out, rec, err
}
