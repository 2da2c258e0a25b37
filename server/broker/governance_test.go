package broker_test

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/statement"
	"github.com/bgbroker/breakglass/server/broker"
	"github.com/bgbroker/breakglass/server/event"
	"github.com/bgbroker/breakglass/server/notify"
	"github.com/bgbroker/breakglass/server/request"
	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/store/storetest"
	"github.com/bgbroker/breakglass/server/witness"
)

const govPolicy = `
auditors: auditors
groups:
  sre: [alice, frank]
  db-admins: [bob, carol]
  security: [erin]
  owners: [olivia]
  reviewers: [rita, bob]
  auditors: [dave]
contacts:
  bob: {slack: "@bob"}
  erin: {slack: "@erin", webhook_tag: sec-oncall}
accounts:
  - name: prod-db
    owner: owners
    requesters: [sre]
    audiences: [db.prod.example]
    drill_audience: drill.db.prod.example
    drill_every: 720h
    review_every: 2160h
    reviewers: reviewers
    review_within: 24h
    block_on_overdue_review: true
    require_alert_ack: true
    ack_sinks: [soc]
    solo: {delay: 10m, max_ttl: 30m}
    max_ttl: 1h
    approval_window: 30m
    activation_window: 20m
    quorum:
      - require:
          - {group: db-admins, approvals: 1}
          - {group: security, approvals: 1}
  - name: ledger
    owner: owners
    requesters: [sre]
    audiences: [ledger.example]
    max_ttl: 1h
    approval_window: 30m
    activation_window: 10m
    quorum:
      - require: [{group: db-admins, approvals: 1}]
`

func newGovHarness(t *testing.T) *harness {
	t.Helper()
	h := newHarness(t, testPolicy) // builds keys, CA and clock
	h.routes = notify.NewRouter([]notify.SinkConfig{
		{Name: "soc"},
		{Name: "slack", Route: event.Route{Events: []string{"grant.*", "solo.*", "request.created"}}},
		{Name: "ledger-only", Route: event.Route{Accounts: []string{"ledger"}}},
	})
	h.restart(govPolicy)
	return h
}

func (h *harness) outbox(requestID, typ string) []store.OutboxItem {
	h.t.Helper()
	var out []store.OutboxItem
	_ = h.store.View(h.ctx, func(r store.Reader) error {
		var err error
		out, err = r.OutboxFor(h.ctx, requestID, typ)
		return err
	})
	return out
}

// deliver records a 2xx from sink for the event rows of a request.
func (h *harness) deliver(requestID, typ, sink string) {
	h.t.Helper()
	for _, it := range h.outbox(requestID, typ) {
		if it.Sink == sink {
			it.Attempts, it.State, it.DeliveredAt = 1, store.OutboxDelivered, h.clock.Now()
			if err := h.b.FinishDelivery(h.ctx, it); err != nil {
				h.t.Fatal(err)
			}
			return
		}
	}
	h.t.Fatalf("no %s row for %s to %s", typ, requestID, sink)
}

func (h *harness) signed(principal, typ, subject, content, notes string) broker.Signed {
	st := statement.Statement{Type: typ, Origin: testOrigin, Request: subject, Content: content, Comment: statement.CommentDigest(notes), Time: h.clock.Now()}
	sig, err := statement.Sign(h.cert(principal).key, st.Marshal())
	if err != nil {
		h.t.Fatal(err)
	}
	return broker.Signed{Statement: st.Marshal(), Signature: sig, Cert: h.cert(principal).cert}
}

func sinks(items []store.OutboxItem) string {
	var s []string
	for _, it := range items {
		mark := ""
		if it.Ack {
			mark = "!"
		}
		s = append(s, it.Sink+mark)
	}
	sort.Strings(s)
	return strings.Join(s, ",")
}

// Events commit with their change, routed by type and account, and the
// grant's first token waits for an ack sink to accept its alert.
func TestEventsAndAlertAck(t *testing.T) {
	h := newGovHarness(t)
	r := h.create("alice", "prod-db")
	created := h.outbox(r.ID, event.RequestCreated)
	if got := sinks(created); got != "slack,soc" {
		t.Fatalf("request.created went to %s", got)
	}
	var ev event.Event
	_ = json.Unmarshal(created[0].Body, &ev)
	if ev.ID == "" || ev.ID != created[1].EventID || ev.Requester != "alice" || len(ev.Notify) != 3 || ev.AuditIndex == nil {
		t.Fatalf("event %+v", ev)
	}
	if _, err := h.review("bob", r.ID, request.Approve); err != nil {
		t.Fatal(err)
	}
	if got := sinks(h.outbox(r.ID, event.RequestReviewed)); got != "soc" {
		t.Fatalf("request.reviewed went to %s", got)
	}
	if _, err := h.review("erin", r.ID, request.Approve); err != nil {
		t.Fatal(err)
	}
	if got := sinks(h.outbox(r.ID, event.GrantApproved)); got != "slack,soc!" {
		t.Fatalf("grant.approved went to %s (ack sinks marked !)", got)
	}
	before := h.snap()
	_, err := h.b.IssueToken(h.ctx, "alice", r.ID, "db.prod.example")
	wantKind(t, err, broker.KindState, "acknowledged by one of soc")
	if h.snap() != before {
		t.Fatal("the refused issuance changed the store")
	}
	// Slack accepting is not an acknowledgement; soc is.
	h.deliver(r.ID, event.GrantApproved, "slack")
	_, err = h.b.IssueToken(h.ctx, "alice", r.ID, "db.prod.example")
	wantKind(t, err, broker.KindState, "acknowledged")
	h.deliver(r.ID, event.GrantApproved, "soc")
	if _, err := h.b.IssueToken(h.ctx, "alice", r.ID, "db.prod.example"); err != nil {
		t.Fatalf("after the ack: %v", err)
	}
	var types []string
	for _, e := range h.verifyChain() {
		types = append(types, string(e.Type))
	}
	if !strings.Contains(strings.Join(types, " "), "request_approved alert_acknowledged token_issued post_review_opened") {
		t.Fatalf("entries %v", types)
	}
	// A ledger event goes to ledger-only; a prod-db one does not.
	l := h.create("frank", "ledger")
	if got := sinks(h.outbox(l.ID, event.RequestCreated)); got != "ledger-only,slack,soc" {
		t.Fatalf("ledger request.created went to %s", got)
	}
}

func TestDeadLetterIsAuditedAndReported(t *testing.T) {
	h := newGovHarness(t)
	r := h.create("alice", "prod-db")
	for _, it := range h.outbox(r.ID, event.RequestCreated) {
		if it.Sink == "slack" {
			it.Attempts, it.State, it.LastError = 10, store.OutboxDead, "receiver answered 500"
			if err := h.b.FinishDelivery(h.ctx, it); err != nil {
				t.Fatal(err)
			}
		}
	}
	entries := h.verifyChain()
	last := entries[len(entries)-1]
	if last.Type != audit.TypeAlertDead || !strings.Contains(string(last.Bytes), "receiver answered 500") {
		t.Fatalf("last entry %s", last.Bytes)
	}
	rep, err := h.b.Report(h.ctx, "dave", broker.ReportPage{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.DeadLetters) != 1 || rep.DeadLetters[0].Sink != "slack" {
		t.Fatalf("dead letters %+v", rep.DeadLetters)
	}
	if _, err := h.b.Report(h.ctx, "alice", broker.ReportPage{}); broker.KindOf(err) != broker.KindPermission {
		t.Fatalf("requester reads the report: %v", err)
	}
}

// A dead letter is announced to the other sinks, not to the one that
// refused it; an announcement given up in turn is audited and reported but
// not announced again, so sinks that stay down do not feed each other dead
// letters without end.
func TestDeadLetterAnnouncedToTheOtherSinks(t *testing.T) {
	h := newGovHarness(t)
	r := h.create("alice", "prod-db")
	giveUp := func(it store.OutboxItem) {
		t.Helper()
		it.Attempts, it.State, it.LastError = 10, store.OutboxDead, "receiver answered 500"
		if err := h.b.FinishDelivery(h.ctx, it); err != nil {
			t.Fatal(err)
		}
	}
	for _, it := range h.outbox(r.ID, event.RequestCreated) {
		if it.Sink == "slack" {
			giveUp(it)
		}
	}
	announced := h.outbox(r.ID, event.AlertDeadLettered)
	if got := sinks(announced); got != "soc" {
		t.Fatalf("the dead letter at slack was announced to %q, want soc alone", got)
	}
	giveUp(announced[0])
	if got := sinks(h.outbox(r.ID, event.AlertDeadLettered)); got != "soc" {
		t.Fatalf("a given-up announcement was announced again: %q", got)
	}
	var dead int
	for _, e := range h.verifyChain() {
		if e.Type == audit.TypeAlertDead {
			dead++
		}
	}
	rep, err := h.b.Report(h.ctx, "dave", broker.ReportPage{})
	if err != nil {
		t.Fatal(err)
	}
	if dead != 2 || len(rep.DeadLetters) != 2 {
		t.Fatalf("%d dead letters audited and %d reported, want 2 of each", dead, len(rep.DeadLetters))
	}
	// soc takes every event, dead letters too, but not news of its own.
	r2 := h.create("alice", "prod-db")
	for _, it := range h.outbox(r2.ID, event.RequestCreated) {
		if it.Sink == "soc" {
			giveUp(it)
		}
	}
	if got := sinks(h.outbox(r2.ID, event.AlertDeadLettered)); got != "" {
		t.Fatalf("the dead letter at soc was announced to %q, want no sink (slack takes no dead letters)", got)
	}
}

// An auditor acknowledges a dead letter: it leaves the report and the
// outbox summary's dead count at once, is audited and announced, and is
// refused a second time; nobody else may, and a wrong name changes nothing.
func TestDeadLetterAcknowledgement(t *testing.T) {
	h := newGovHarness(t)
	r := h.create("alice", "prod-db")
	var dead store.OutboxItem
	for _, it := range h.outbox(r.ID, event.RequestCreated) {
		if it.Sink == "slack" {
			it.Attempts, it.State, it.LastError = 10, store.OutboxDead, "receiver answered 500"
			if err := h.b.FinishDelivery(h.ctx, it); err != nil {
				t.Fatal(err)
			}
			dead = it
		}
	}
	pending := h.outbox(r.ID, event.RequestCreated)[0]
	if pending.Sink == "slack" {
		pending = h.outbox(r.ID, event.RequestCreated)[1]
	}
	size := func() uint64 {
		var n uint64
		_ = h.store.View(h.ctx, func(r store.Reader) error { hd, err := r.Head(h.ctx); n = hd.Size; return err })
		return n
	}
	before := size()
	for _, c := range []struct {
		who, id, sink, notes string
		kind                 broker.Kind
		msg                  string
	}{
		{"olivia", dead.EventID, "slack", "seen", broker.KindPermission, "only members of the auditors group"}, // an owner of the account
		{"alice", dead.EventID, "slack", "seen", broker.KindPermission, "auditors"},                            // whose request it announced
		{"mallory", dead.EventID, "slack", "seen", broker.KindPermission, "auditors"},
		{"dave", uuid.NewString(), "slack", "seen", broker.KindNotFound, "bgctl report"},
		{"dave", dead.EventID, "soc", "seen", broker.KindState, "not dead-lettered"}, // same event, another sink, still pending
		{"dave", dead.EventID, "nope", "seen", broker.KindNotFound, "for sink nope"},
		{"dave", pending.EventID, pending.Sink, "seen", broker.KindState, "nothing to acknowledge"},
		{"dave", dead.EventID, "slack", "", broker.KindInvalid, "notes"},
		{"dave", dead.EventID, "slack", strings.Repeat("x", broker.MaxDeadLetterNotes+1), broker.KindInvalid, "notes"},
		{"dave", dead.EventID, "slack", "bad\x00byte", broker.KindInvalid, "notes"},
		{"dave", "", "slack", "seen", broker.KindInvalid, "event id and sink"},
	} {
		_, _, err := h.b.AcknowledgeDeadLetter(h.ctx, c.who, c.id, c.sink, c.notes)
		wantKind(t, err, c.kind, c.msg)
	}
	if got := size(); got != before {
		t.Fatalf("refused acknowledgements wrote %d entries", got-before)
	}
	if rep, err := h.b.Report(h.ctx, "dave", broker.ReportPage{}); err != nil || len(rep.DeadLetters) != 1 {
		t.Fatalf("dead letters before: %+v, %v", rep, err)
	}

	it, rec, err := h.b.AcknowledgeDeadLetter(h.ctx, "dave", dead.EventID, "slack", "slack webhook rotated; SOC told by phone")
	if err != nil {
		t.Fatal(err)
	}
	if it.AckedAt.IsZero() || !it.AckedAt.Equal(rec.Time) || rec.Type != audit.TypeAlertDeadAcked {
		t.Fatalf("acknowledged %+v, entry %+v", it, rec)
	}
	e, err := audit.Decode(rec.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	p, err := e.DecodePayload()
	if err != nil {
		t.Fatal(err)
	}
	want := &audit.DeadLetterAcknowledged{EventID: dead.EventID, EventType: event.RequestCreated, Sink: "slack", Notes: "slack webhook rotated; SOC told by phone"}
	if e.Actor != "dave" || e.Request != r.ID || e.Account != "prod-db" || *p.(*audit.DeadLetterAcknowledged) != *want {
		t.Fatalf("entry %s", rec.Bytes)
	}
	h.verifyChain()
	rep, err := h.b.Report(h.ctx, "dave", broker.ReportPage{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.DeadLetters) != 0 {
		t.Fatalf("acknowledged dead letter still reported: %+v", rep.DeadLetters)
	}
	for _, s := range rep.Outbox {
		if s.Sink == "slack" && (s.Dead != 0 || s.Acked != 1) {
			t.Fatalf("slack outbox %+v", s)
		}
	}
	// Announced, to the sinks that route it.
	found := false
	_ = h.store.View(h.ctx, func(r store.Reader) error {
		rows, err := r.OutboxFor(h.ctx, e.Request, event.AlertDeadLetterAcked)
		found = len(rows) > 0
		return err
	})
	if !found {
		t.Fatal("the acknowledgement was not announced")
	}
	// Twice is refused, and writes nothing.
	before = size()
	_, _, err = h.b.AcknowledgeDeadLetter(h.ctx, "dave", dead.EventID, "slack", "again")
	wantKind(t, err, broker.KindState, "already acknowledged")
	if size() != before {
		t.Fatal("a second acknowledgement wrote an entry")
	}
	// Kept for the retention, then pruned: it is no more to be found.
	gone := func() bool {
		var err error
		_ = h.store.View(h.ctx, func(r store.Reader) error { _, err = r.DeadLetter(h.ctx, dead.EventID, "slack"); return nil })
		return err != nil
	}
	h.clock.Advance(6 * 24 * time.Hour)
	if _, err := h.b.PruneOutbox(h.ctx); err != nil || gone() {
		t.Fatalf("pruned within the retention: %v", err)
	}
	h.clock.Advance(24*time.Hour + time.Second)
	if _, err := h.b.PruneOutbox(h.ctx); err != nil || !gone() {
		t.Fatalf("not pruned after the retention: %v", err)
	}
	_, _, err = h.b.AcknowledgeDeadLetter(h.ctx, "dave", dead.EventID, "slack", "again")
	wantKind(t, err, broker.KindNotFound, "is kept")
}

func TestDrills(t *testing.T) {
	h := newGovHarness(t)
	_, err := h.b.CreateRequest(h.ctx, "alice", h.signedCreate("alice", broker.CreateInput{Account: "ledger", Justification: "drill", Drill: true}))
	wantKind(t, err, broker.KindState, "no drill_audience")
	res, err := h.b.CreateRequest(h.ctx, "alice", h.signedCreate("alice", broker.CreateInput{Account: "prod-db", Justification: "quarterly drill", Drill: true, TTL: 10 * time.Minute}))
	if err != nil {
		t.Fatal(err)
	}
	id := res.Request.ID
	for _, who := range []string{"bob", "erin"} {
		if _, err := h.review(who, id, request.Approve); err != nil {
			t.Fatal(err)
		}
	}
	h.deliver(id, event.GrantApproved, "soc")
	_, err = h.b.IssueToken(h.ctx, "alice", id, "db.prod.example")
	wantKind(t, err, broker.KindInvalid, "only for the drill audience")
	tok, err := h.b.IssueToken(h.ctx, "alice", id, "drill.db.prod.example")
	if err != nil {
		t.Fatal(err)
	}
	var entry audit.TokenIssued
	for _, e := range h.verifyChain() {
		if e.Type == audit.TypeTokenIssued {
			ent, _ := audit.Parse(e.Bytes)
			_ = json.Unmarshal(ent.Payload, &entry)
		}
	}
	if !strings.Contains(string(entry.Claims), `"bg_drill":true`) || entry.JTI != tok.JTI {
		t.Fatalf("drill claims %s", entry.Claims)
	}
	// A real request may not use the drill audience.
	g := h.approvedOn("frank", "prod-db")
	h.deliver(g.ID, event.GrantApproved, "soc")
	_, err = h.b.IssueToken(h.ctx, "frank", g.ID, "drill.db.prod.example")
	wantKind(t, err, broker.KindInvalid, "not one of account prod-db's audiences")
	st, err := h.b.AccountStatuses(h.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st["prod-db"].LastDrill.IsZero() || st["prod-db"].DrillOverdue {
		t.Fatalf("drill status %+v", st["prod-db"])
	}
	h.clock.Advance(31 * 24 * time.Hour)
	st, _ = h.b.AccountStatuses(h.ctx)
	if !st["prod-db"].DrillOverdue || st["prod-db"].AttestationOverdue {
		t.Fatalf("after 31 days: %+v", st["prod-db"])
	}
	// The overdue drill raises one alert a day.
	if err := h.b.Overdue(h.ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.b.Overdue(h.ctx); err != nil {
		t.Fatal(err)
	}
	var drills int
	_ = h.store.View(h.ctx, func(r store.Reader) error {
		items, _ := r.OutboxFor(h.ctx, "", event.DrillOverdue)
		drills = len(items)
		return nil
	})
	if drills != 1 { // one event, to soc (slack does not route drill.*)
		t.Fatalf("%d drill.overdue rows", drills)
	}
}

// approvedOn makes an approved request on account.
func (h *harness) approvedOn(requester, account string) *request.Request {
	h.t.Helper()
	r := h.create(requester, account)
	for _, who := range []string{"bob", "erin"} {
		if _, err := h.review(who, r.ID, request.Approve); err != nil {
			h.t.Fatal(err)
		}
	}
	got, err := h.b.GetRequest(h.ctx, requester, r.ID)
	if err != nil || got.State != request.Approved {
		h.t.Fatalf("not approved: %v", err)
	}
	return got
}

func TestPostUseReviews(t *testing.T) {
	h := newGovHarness(t)
	g := h.approvedOn("alice", "prod-db")
	h.deliver(g.ID, event.GrantApproved, "soc")
	if _, err := h.b.IssueToken(h.ctx, "alice", g.ID, "db.prod.example"); err != nil {
		t.Fatal(err)
	}
	prs, err := h.b.PostReviews(h.ctx, "rita", true)
	if err != nil || len(prs) != 1 {
		t.Fatalf("rita's reviews: %v %d", err, len(prs))
	}
	pr := prs[0]
	if !pr.DueAt.Equal(g.GrantExpiresAt.Add(24*time.Hour)) || fmt.Sprint(pr.Excluded) != "[alice bob erin]" {
		t.Fatalf("review %+v", pr)
	}
	digest := g.Content().Digest()
	// bob is a reviewer but approved this grant: excluded.
	_, _, err = h.b.ClosePostReview(h.ctx, "bob", pr.ID, "fine", h.signed("bob", statement.TypeReviewClose, g.ID, digest, "fine"))
	wantKind(t, err, broker.KindNotFound, "not found")
	_, _, err = h.b.ClosePostReview(h.ctx, "alice", pr.ID, "fine", h.signed("alice", statement.TypeReviewClose, g.ID, digest, "fine"))
	wantKind(t, err, broker.KindPermission, "neither requested nor approved")
	_, _, err = h.b.ClosePostReview(h.ctx, "rita", pr.ID, "fine", h.signed("rita", statement.TypeReviewClose, g.ID, digest, "other notes"))
	wantKind(t, err, broker.KindInvalid, "comment digest")
	// Past due: alice may not open a new request (block_on_overdue_review).
	h.clock.Advance(25*time.Hour + time.Hour)
	_, err = h.b.CreateRequest(h.ctx, "alice", h.signedCreate("alice", broker.CreateInput{Account: "prod-db", Justification: "again"}))
	wantKind(t, err, broker.KindState, "must be closed before")
	rep, _ := h.b.Report(h.ctx, "dave", broker.ReportPage{})
	if len(rep.OverdueReviews) != 1 {
		t.Fatalf("overdue reviews %d", len(rep.OverdueReviews))
	}
	if _, _, err := h.b.ClosePostReview(h.ctx, "rita", pr.ID, "used to fix replication; access was right", h.signed("rita", statement.TypeReviewClose, g.ID, digest, "used to fix replication; access was right")); err != nil {
		t.Fatal(err)
	}
	if _, err := h.b.CreateRequest(h.ctx, "alice", h.signedCreate("alice", broker.CreateInput{Account: "prod-db", Justification: "again"})); err != nil {
		t.Fatalf("after closing the review: %v", err)
	}
	_, _, err = h.b.ClosePostReview(h.ctx, "rita", pr.ID, "again", h.signed("rita", statement.TypeReviewClose, g.ID, digest, "again"))
	wantKind(t, err, broker.KindState, "was closed")
	h.verifyChain()
}

func TestAttestation(t *testing.T) {
	h := newGovHarness(t)
	digest := statement.AccountDigest("prod-db", h.b.Policy().Hash())
	id := uuid.NewString()
	_, _, err := h.b.Attest(h.ctx, "bob", "prod-db", "ok", h.signed("bob", statement.TypeAttest, id, digest, "ok"))
	wantKind(t, err, broker.KindPermission, "owner group")
	_, _, err = h.b.Attest(h.ctx, "olivia", "prod-db", "ok", h.signed("olivia", statement.TypeAttest, id, statement.AccountDigest("prod-db", "stale-policy"), "ok"))
	wantKind(t, err, broker.KindInvalid, "other content")
	if _, _, err := h.b.Attest(h.ctx, "olivia", "prod-db", "still needed; approvers checked", h.signed("olivia", statement.TypeAttest, id, digest, "still needed; approvers checked")); err != nil {
		t.Fatal(err)
	}
	_, _, err = h.b.Attest(h.ctx, "olivia", "prod-db", "still needed; approvers checked", h.signed("olivia", statement.TypeAttest, id, digest, "still needed; approvers checked"))
	wantKind(t, err, broker.KindExists, "already recorded")
	st, _ := h.b.AccountStatuses(h.ctx)
	if st["prod-db"].LastAttestation.IsZero() || st["prod-db"].AttestationOverdue {
		t.Fatalf("status %+v", st["prod-db"])
	}
	h.clock.Advance(91 * 24 * time.Hour)
	st, _ = h.b.AccountStatuses(h.ctx)
	if !st["prod-db"].AttestationOverdue {
		t.Fatal("attestation not overdue after 91 days")
	}
}

func TestSoloAccess(t *testing.T) {
	h := newGovHarness(t)
	_, err := h.b.CreateRequest(h.ctx, "alice", h.signedCreate("alice", broker.CreateInput{Account: "ledger", Justification: "nobody answers", Solo: true}))
	wantKind(t, err, broker.KindState, "does not allow")
	_, err = h.b.CreateRequest(h.ctx, "alice", h.signedCreate("alice", broker.CreateInput{Account: "prod-db", Justification: "nobody answers", Solo: true, TTL: time.Hour}))
	wantKind(t, err, broker.KindInvalid, "solo max_ttl")
	res, err := h.b.CreateRequest(h.ctx, "alice", h.signedCreate("alice", broker.CreateInput{Account: "prod-db", Justification: "nobody answers", Solo: true}))
	if err != nil {
		t.Fatal(err)
	}
	s := res.Request
	if s.TTL != 30*time.Minute {
		t.Fatalf("solo TTL %s", s.TTL)
	}
	// Every sink is alerted, soc as the acknowledging one.
	if got := sinks(h.outbox(s.ID, event.SoloRequested)); got != "ledger-only,slack,soc!" {
		t.Fatalf("solo.requested went to %s", got)
	}
	// The window does not start before the acknowledgement.
	h.clock.Advance(15 * time.Minute)
	if n, _ := h.b.RipenSolo(h.ctx); n != 0 {
		t.Fatal("ripened without an acknowledgement")
	}
	h.deliver(s.ID, event.SoloRequested, "soc")
	h.clock.Advance(9 * time.Minute)
	if n, _ := h.b.RipenSolo(h.ctx); n != 0 {
		t.Fatal("ripened inside the veto window")
	}
	h.clock.Advance(time.Minute)
	if n, err := h.b.RipenSolo(h.ctx); err != nil || n != 1 {
		t.Fatalf("ripen: %d %v", n, err)
	}
	got, _ := h.b.GetRequest(h.ctx, "alice", s.ID)
	if got.State != request.Approved || !got.GrantExpiresAt.Equal(got.ApprovedAt.Add(30*time.Minute)) {
		t.Fatalf("solo grant %+v", got)
	}
	h.deliver(s.ID, event.GrantApproved, "soc")
	if _, err := h.b.IssueToken(h.ctx, "alice", s.ID, "db.prod.example"); err != nil {
		t.Fatalf("token for a ripe solo grant: %v", err)
	}
	prs, _ := h.b.PostReviews(h.ctx, "dave", true)
	if len(prs) != 1 || prs[0].RequestID != s.ID {
		t.Fatal("a solo grant must open a post-use review")
	}

	// A solo request vetoed by one eligible approver.
	v, err := h.b.CreateRequest(h.ctx, "frank", h.signedCreate("frank", broker.CreateInput{Account: "prod-db", Justification: "solo", Solo: true}))
	if err != nil {
		t.Fatal(err)
	}
	h.deliver(v.Request.ID, event.SoloRequested, "soc")
	if _, err := h.review("erin", v.Request.ID, request.Deny); err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(11 * time.Minute)
	if n, _ := h.b.RipenSolo(h.ctx); n != 0 {
		t.Fatal("a vetoed solo request ripened")
	}
	got, _ = h.b.GetRequest(h.ctx, "frank", v.Request.ID)
	if got.State != request.Denied {
		t.Fatalf("vetoed solo request is %s", got.State)
	}
	h.verifyChain()
}

// Two replicas that sign the checkpoint of one size announce it once.
func TestCheckpointAnnouncedOnce(t *testing.T) {
	h := newGovHarness(t)
	cp := store.Checkpoint{Size: 3, Root: make([]byte, 32), Note: []byte("breakglass.test/log\n3\nAAAA\n\n— sig\n"), CreatedAt: h.clock.Now()}
	for range 2 {
		if err := h.b.CheckpointSigned(h.ctx, cp, nil); err != nil {
			t.Fatal(err)
		}
	}
	ids, sinks := map[string]bool{}, map[string]int{}
	for _, r := range h.outbox("", event.CheckpointSigned) {
		ids[r.EventID] = true
		sinks[r.Sink]++
	}
	if len(ids) != 1 || sinks["soc"] != 1 {
		t.Fatalf("checkpoint events %v to sinks %v", ids, sinks)
	}
}

// A split view alerts every sink, whatever their routes, once per distinct
// refusal however often the witness repeats it; a checkpoint is announced
// with the witnesses that cosigned it.
func TestWitnessSplitViewAlertsEverySinkOnce(t *testing.T) {
	h := newGovHarness(t)
	sv := witness.SplitView{Witness: "w1", WitnessSize: 10, LogSize: 7, Rollback: true, Message: "witness w1 has cosigned a tree of 10 entries but this log has only 7"}
	for range 3 {
		if err := h.b.WitnessSplitView(h.ctx, sv); err != nil {
			t.Fatal(err)
		}
	}
	sinks := map[string]int{}
	for _, r := range h.outbox("", event.WitnessSplitView) {
		sinks[r.Sink]++
		var ev event.Event
		if err := json.Unmarshal(r.Body, &ev); err != nil || !strings.HasPrefix(ev.Summary, "SPLIT VIEW: witness w1") || !strings.Contains(string(ev.Details), `"kind":"rollback"`) {
			t.Fatalf("event %s: %v", r.Body, err)
		}
	}
	if len(sinks) != 3 || sinks["soc"] != 1 || sinks["slack"] != 1 || sinks["ledger-only"] != 1 {
		t.Fatalf("split view alerts to sinks %v", sinks)
	}
	// Another refusal (the witness now refuses a proof) is another alert.
	sv.Rollback, sv.LogSize = false, 12
	if err := h.b.WitnessSplitView(h.ctx, sv); err != nil {
		t.Fatal(err)
	}
	if n := len(h.outbox("", event.WitnessSplitView)); n != 6 {
		t.Fatalf("%d split view rows", n)
	}

	cp := store.Checkpoint{Size: 4, Root: make([]byte, 32), Note: []byte("breakglass.test/log\n4\nAAAA\n\n— sig\n"), CreatedAt: h.clock.Now()}
	cos := []store.Cosignature{{Size: 4, Witness: "witness.test/w1+01020304", Line: "— witness.test/w1 AAAA\n"}, {Size: 4, Witness: "witness.test/w2+05060708", Line: "— witness.test/w2 BBBB\n"}}
	if err := h.b.CheckpointSigned(h.ctx, cp, cos); err != nil {
		t.Fatal(err)
	}
	rows := h.outbox("", event.CheckpointSigned)
	if len(rows) == 0 {
		t.Fatal("no checkpoint event")
	}
	var ev event.Event
	_ = json.Unmarshal(rows[0].Body, &ev)
	var d struct {
		Checkpoint string   `json:"checkpoint"`
		By         []string `json:"cosigned_by"`
	}
	if err := json.Unmarshal(ev.Details, &d); err != nil || !strings.HasSuffix(d.Checkpoint, "— sig\n— witness.test/w1 AAAA\n— witness.test/w2 BBBB\n") ||
		strings.Join(d.By, ",") != "witness.test/w1,witness.test/w2" {
		t.Fatalf("checkpoint event %s: %v", ev.Details, err)
	}
}

// A backlog larger than a sweep batch (after an outage, say) is drained in
// one sweep, not a hundred a tick.
func TestSweepDrainsBacklog(t *testing.T) {
	h := newGovHarness(t)
	const n = 250
	storetest.FillActiveGrants(t, h.store, "prod-db", n, h.clock.Now())
	h.clock.Advance(2 * time.Hour)
	got, err := h.b.Sweep(h.ctx)
	if err != nil || got != n {
		t.Fatalf("sweep expired %d, %v; want %d", got, err, n)
	}
	_ = h.store.View(h.ctx, func(r store.Reader) error {
		c, err := r.Counts(h.ctx, h.clock.Now())
		if err != nil || c.ActiveGrants != 0 || c.Requests["EXPIRED"] != n {
			t.Errorf("counts after the sweep: %+v, %v", c, err)
		}
		return nil
	})
	h.verifyChain()
}

// A caller who may see none of many requests gets short pages, each
// bounded in the rows it read, with a token to go on, instead of one call
// that walks the whole history.
func TestListRequestsExaminesBoundedRows(t *testing.T) {
	h := newGovHarness(t)
	const n = 250
	storetest.FillActiveGrants(t, h.store, "prod-db", n, h.clock.Now())
	calls, token := 0, ""
	for {
		calls++
		out, next, err := h.b.ListRequests(h.ctx, "frank", broker.ListInput{PageSize: 10, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		if len(out) != 0 {
			t.Fatalf("frank sees %d requests of others", len(out))
		}
		if next == "" {
			break
		}
		if calls > n {
			t.Fatal("the pages never end")
		}
		token = next
	}
	if calls != 3 {
		t.Fatalf("%d calls to read %d hidden requests at most 100 rows a call, want 3", calls, n)
	}
	// Someone who sees them all gets full pages.
	out, next, err := h.b.ListRequests(h.ctx, "dave", broker.ListInput{PageSize: 10})
	if err != nil || len(out) != 10 || next == "" {
		t.Fatalf("auditor: %d requests, next %q, %v", len(out), next, err)
	}
}
