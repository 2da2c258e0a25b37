package auditverify

import (
	"crypto/ed25519"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/format/statement"
)

// replayer feeds entries built in order to a replay of its own, as the
// verifier does once signatures and the tree are checked.
type replayer struct {
	t    *testing.T
	l    *fuzzLog
	r    *replay
	head audit.Head
	at   time.Time
	vs   []*Violation
}

func newReplayer(t *testing.T, l *fuzzLog) *replayer {
	p := &replayer{t: t, l: l, at: fuzzT0.Add(time.Minute)}
	p.r = newReplay(fuzzOrigin, l.cas, nil, statement.NewCache(64), func(v *Violation) { p.vs = append(p.vs, v) })
	return p
}

// newPolicyReplayer is a replayer past the fuzz log's first entries (the
// policy, a refusal, the token key), with the policy they put in force.
func newPolicyReplayer(t *testing.T, l *fuzzLog) (*replayer, *policy.Policy) {
	t.Helper()
	p := newReplayer(t, l)
	for _, b := range l.entries[:3] {
		if v := p.raw(b); v != nil {
			t.Fatal(v)
		}
	}
	return p, p.r.policy
}

// nthRequest is the id of the kth request a test makes.
func nthRequest(k int) string { return fmt.Sprintf("01890000-0000-7000-8000-%012x", 0x100+k) }

// raw replays entry bytes as they are.
func (p *replayer) raw(b []byte) *Violation {
	p.t.Helper()
	e, err := audit.Parse(b)
	if err != nil {
		p.t.Fatal(err)
	}
	rec, err := audit.Build(p.head, e.Time, audit.Draft{Type: e.Type, Actor: e.Actor, Request: e.Request, Account: e.Account, Payload: e.Payload})
	if err != nil {
		p.t.Fatal(err)
	}
	p.head = rec.Next()
	if e.Time.After(p.at) {
		p.at = e.Time
	}
	return p.r.entry(int64(rec.Index), e)
}

// next replays a new entry a millisecond after the one before.
func (p *replayer) next(d audit.Draft) *Violation {
	p.t.Helper()
	p.at = p.at.Add(time.Millisecond)
	rec, err := audit.Build(p.head, p.at, d)
	if err != nil {
		p.t.Fatal(err)
	}
	return p.raw(rec.Bytes)
}

func (p *replayer) mustRefuse(v *Violation, reason string) {
	p.t.Helper()
	if v == nil || !strings.Contains(v.Reason, reason) {
		p.t.Errorf("got %v, want a violation saying %q", v, reason)
	}
}

func (p *replayer) created(id string, pol *policy.Policy) *Violation {
	return p.next(p.createdDraft(id, pol))
}

// createdDraft is a request_created entry for id, signed by alice, dated
// a millisecond after the replay's time.
func (p *replayer) createdDraft(id string, pol *policy.Policy) audit.Draft {
	acct, _ := pol.Account("prod-db")
	at := p.at.Add(time.Millisecond)
	c := statement.Content{Version: statement.CurrentContent, ID: id, Account: "prod-db", Requester: "alice", Justification: "db down", Ticket: "INC-1", TTLSeconds: 1800, CreatedAt: at}
	return audit.Draft{Type: audit.TypeRequestCreated, Actor: "alice", Request: id, Account: "prod-db", Payload: p.l.signedRequest(audit.RequestCreated{
		Justification: c.Justification, Ticket: c.Ticket, TTLSeconds: c.TTLSeconds, CreatedAt: at, ApprovalDeadline: at.Add(acct.ApprovalWindow.D()),
		Quorum: acct.Quorum, DenyThreshold: acct.DenyThreshold, MaxIssuances: acct.MaxIssuances, ActivationWindow: int64(acct.ActivationWindow.D() / time.Second),
		PolicyHash: pol.Hash(), ContentDigest: c.Digest(), ContentVersion: int(statement.CurrentContent)}, id, "prod-db", at)}
}

// The replay keeps a request whole only while something may still happen
// to it: once final with no post-use review owed, only its final state,
// account and requester stay, and every later entry about it is refused
// for the reason its whole state gave.
func TestEndedRequestsKeepLittle(t *testing.T) {
	p, pol := newPolicyReplayer(t, theFuzzLog(t))
	const n = 5000
	for k := range n {
		if v := p.created(nthRequest(k), pol); v != nil {
			t.Fatalf("request %d: %v", k, v)
		}
		if k == n-1 {
			break // the last stays pending
		}
		if v := p.next(audit.Draft{Type: audit.TypeRequestCancelled, Actor: "alice", Request: nthRequest(k), Account: "prod-db",
			Payload: audit.RequestFinal{Reason: "restored", At: p.at.Add(time.Millisecond)}}); v != nil {
			t.Fatalf("cancelling %d: %v", k, v)
		}
	}
	if len(p.r.requests) != 1 || p.r.requests[nthRequest(n-1)] == nil || len(p.r.ended.uuids) != n-1 || len(p.r.ended.other) != 0 || p.r.nRequests != n {
		t.Fatalf("after %d requests, %d cancelled: %d held whole, %d ended, %d counted", n, n-1, len(p.r.requests), len(p.r.ended.uuids), p.r.nRequests)
	}
	old := nthRequest(7)
	entry := func(typ audit.Type, actor, account string, payload any) audit.Draft {
		return audit.Draft{Type: typ, Actor: actor, Request: old, Account: account, Payload: payload}
	}
	p.mustRefuse(p.created(old, pol), "is empty or reused")
	p.mustRefuse(p.next(entry(audit.TypeTokenIssued, "alice", "prod-db", audit.TokenIssued{JTI: "j"})), "which is CANCELLED, not an approved grant")
	p.mustRefuse(p.next(entry(audit.TypeTokenIssued, "bob", "prod-db", audit.TokenIssued{JTI: "j"})), "token issued to bob, not the requester alice")
	p.mustRefuse(p.next(entry(audit.TypeRequestReviewed, "bob", "prod-db", audit.RequestReviewed{Decision: statement.TypeApprove})), "which was not pending")
	p.mustRefuse(p.next(entry(audit.TypeRequestApproved, "breakglass", "prod-db", audit.RequestApproved{})), "approved while not pending")
	p.mustRefuse(p.next(entry(audit.TypeRequestCancelled, "alice", "prod-db", audit.RequestFinal{At: p.at.Add(time.Millisecond)})), "cancelled by alice while CANCELLED")
	p.mustRefuse(p.next(entry(audit.TypeGrantRevoked, "alice", "prod-db", audit.RequestFinal{At: p.at.Add(time.Millisecond)})), "revoked while CANCELLED")
	p.mustRefuse(p.next(entry(audit.TypeSoloAcked, "breakglass", "prod-db", audit.AlertDelivery{EventID: "e", Sink: "soc"})), "not a pending solo request")
	p.mustRefuse(p.next(entry(audit.TypeRequestCancelled, "alice", "other-db", audit.RequestFinal{At: p.at.Add(time.Millisecond)})), "names account other-db but request")
	p.mustRefuse(p.next(entry(audit.TypeReviewOpened, "breakglass", "prod-db", audit.PostReviewOpened{ID: "r"})), "after it ended (CANCELLED)")
	// A delivery report about it is no violation, as before.
	if v := p.next(entry(audit.TypeAlertDead, "breakglass", "prod-db", audit.AlertDelivery{EventID: "e", Sink: "soc"})); v != nil {
		t.Errorf("a dead letter about an ended request: %v", v)
	}
}

// A used grant stays whole until its post-use review is closed, even when
// the review opens after the grant ended; then it ends like any other, and
// its token's jti and its review's id stay taken.
func TestUsedGrantEndsWithItsReview(t *testing.T) {
	l := theFuzzLog(t)
	p := newReplayer(t, l)
	for i, b := range l.entries {
		if v := p.raw(b); v != nil {
			t.Fatalf("entry %d: %v", i, v)
		}
	}
	q := p.r.requests[fuzzRequest]
	if q == nil || q.state != "EXPIRED" || q.openReviews != 1 {
		t.Fatalf("the used grant after its review opened: %+v", q)
	}
	closing := p.oliviaCloses(q, "review-1")
	if v := p.next(closing); v != nil {
		t.Fatalf("closing the review: %v", v)
	}
	// Its request was created long before: nothing of it is kept, and
	// every later entry about it is refused as about a request not open.
	if len(p.r.requests) != 0 || len(p.r.postReviews) != 0 || p.r.ended.has(fuzzRequest) {
		t.Fatalf("after its review closed the grant is still held: %d requests, %d open reviews", len(p.r.requests), len(p.r.postReviews))
	}
	p.mustRefuse(p.next(closing), "which was never created or had ended before")
	p.mustRefuse(p.next(audit.Draft{Type: audit.TypeReviewOpened, Actor: "breakglass", Request: fuzzRequest, Account: "prod-db",
		Payload: audit.PostReviewOpened{ID: "review-1"}}), "which was never created or had ended before")
	p.mustRefuse(p.next(audit.Draft{Type: audit.TypeTokenIssued, Actor: "alice", Request: fuzzRequest, Account: "prod-db",
		Payload: audit.TokenIssued{JTI: "jti-2"}}), "which was never created or had ended before")
	// Its token's jti stays taken until the token has expired.
	if !p.r.jtis.has("jti-1") || len(p.r.forgetting) != 1 {
		t.Errorf("the token's jti was forgotten before it expired (%d things to forget)", len(p.r.forgetting))
	}
	p.at = p.at.Add(statement.MaxSkew + time.Second)
	if v := p.next(audit.Draft{Type: audit.TypePermissionDenied, Actor: "mallory", Payload: audit.PermissionDenied{Principal: "mallory", Count: 1}}); v != nil {
		t.Fatal(v)
	}
	if p.r.jtis.has("jti-1") || len(p.r.forgetting) != 0 {
		t.Errorf("the expired token's jti is still held (%d things to forget)", len(p.r.forgetting))
	}
}

// What the replay holds does not grow with the log: an ended request is
// kept small only while its signed statement could be replayed, a jti
// until its token expires. A replayed statement is refused after that as
// before, for its age, and a delivery report about a forgotten request is
// no violation.
func TestReplayForgetsWhatCanNoLongerBeReused(t *testing.T) {
	p, pol := newPolicyReplayer(t, theFuzzLog(t))
	var first audit.Draft
	for round := range 3 {
		if round > 0 {
			p.at = p.at.Add(2*statement.MaxSkew + time.Second)
		}
		for k := range 1000 {
			d := p.createdDraft(nthRequest(round*1000+k), pol)
			if round == 0 && k == 0 {
				first = d
			}
			if v := p.next(d); v != nil {
				t.Fatalf("request %d: %v", k, v)
			}
			if v := p.next(audit.Draft{Type: audit.TypeRequestCancelled, Actor: "alice", Request: d.Request, Account: "prod-db",
				Payload: audit.RequestFinal{Reason: "restored", At: p.at.Add(time.Millisecond)}}); v != nil {
				t.Fatalf("cancelling %d: %v", k, v)
			}
		}
		held := len(p.r.ended.uuids) + len(p.r.ended.other)
		if held != 1000 || len(p.r.forgetting) != 1000 {
			t.Fatalf("round %d: %d ended requests held, %d to forget; want only this round's 1000", round, held, len(p.r.forgetting))
		}
	}
	if p.r.nRequests != 3000 {
		t.Fatalf("%d requests counted", p.r.nRequests)
	}
	// Within the window the id is refused as reused; past it, the same
	// entry is refused for its age.
	p.mustRefuse(p.created(nthRequest(2999), pol), "is empty or reused")
	p.mustRefuse(p.next(first), "was created at")
	p.mustRefuse(p.next(audit.Draft{Type: audit.TypeRequestCancelled, Actor: "alice", Request: nthRequest(5), Account: "prod-db",
		Payload: audit.RequestFinal{At: p.at.Add(time.Millisecond)}}), "which was never created or had ended before")
	if v := p.next(audit.Draft{Type: audit.TypeAlertDead, Actor: "breakglass", Request: nthRequest(5), Account: "prod-db",
		Payload: audit.AlertDelivery{EventID: "e", Sink: "soc"}}); v != nil {
		t.Errorf("a dead letter about a forgotten request: %v", v)
	}
	p.mustRefuse(p.next(audit.Draft{Type: audit.TypeSoloAcked, Actor: "breakglass", Request: nthRequest(5), Account: "prod-db",
		Payload: audit.AlertDelivery{EventID: "e", Sink: "soc"}}), "which was never created or had ended before")
}

// nextAt replays a new entry dated t.
func (p *replayer) nextAt(t time.Time, d audit.Draft) *Violation {
	p.t.Helper()
	p.at = t.Add(-time.Millisecond)
	return p.next(d)
}

// createdAt is a request_created entry for id created at created, whose
// statement alice signed at signed.
func (p *replayer) createdAt(id string, pol *policy.Policy, created, signed time.Time) audit.Draft {
	d := p.createdDraft(id, pol)
	rc := d.Payload.(audit.RequestCreated)
	acct, _ := pol.Account("prod-db")
	c := statement.Content{Version: statement.CurrentContent, ID: id, Account: "prod-db", Requester: "alice", Justification: rc.Justification, Ticket: rc.Ticket,
		TTLSeconds: rc.TTLSeconds, CreatedAt: created}
	rc.CreatedAt, rc.ApprovalDeadline, rc.ContentDigest = created, created.Add(acct.ApprovalWindow.D()), c.Digest()
	d.Payload = p.l.signedRequest(rc, id, "prod-db", signed)
	return d
}

// A request statement may be dated up to MaxSkew after its entry and be
// replayed up to MaxSkew after its own time: an ended request is kept
// until then, inclusive. At the window's last instant, equal to the time
// of the entry that ends the request, the statement is refused as a
// reused id; an instant later, for its age. Entries may share one time,
// so this is a log the broker's clock can write.
func TestReplayedStatementAtTheWindowsEdge(t *testing.T) {
	l := theFuzzLog(t)
	for _, tc := range []struct {
		name string
		// ends and replayed are when the request ends and when its
		// statement is logged again, after the window opened at T.
		ends, replayed time.Duration
		want           string
	}{
		{"ended at the edge, replayed at the edge", 2 * statement.MaxSkew, 2 * statement.MaxSkew, "is empty or reused"},
		{"ended before, replayed at the edge", time.Minute, 2 * statement.MaxSkew, "is empty or reused"},
		{"ended at the edge, replayed after", 2 * statement.MaxSkew, 2*statement.MaxSkew + time.Nanosecond, "the request statement's time"},
		{"ended after, replayed after", 2*statement.MaxSkew + time.Nanosecond, 2*statement.MaxSkew + time.Nanosecond, "the request statement's time"},
		{"ended before, replayed after", time.Minute, 2*statement.MaxSkew + time.Nanosecond, "the request statement's time"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, pol := newPolicyReplayer(t, l)
			const id = "01890000-0000-7000-8000-0000000000aa"
			// Created at T, a whole second, its statement signed MaxSkew
			// later: the latest the broker accepts.
			t0 := fuzzT0.Add(10 * time.Minute)
			signed := t0.Add(statement.MaxSkew)
			if v := p.nextAt(t0, p.createdAt(id, pol, t0, signed)); v != nil {
				t.Fatal(v)
			}
			end := t0.Add(tc.ends)
			if v := p.nextAt(end, audit.Draft{Type: audit.TypeRequestCancelled, Actor: "alice", Request: id, Account: "prod-db",
				Payload: audit.RequestFinal{Reason: "restored", At: end}}); v != nil {
				t.Fatal(v)
			}
			again := t0.Add(tc.replayed)
			p.mustRefuse(p.nextAt(again, p.createdAt(id, pol, again, signed)), tc.want)
		})
	}
}

// oliviaCloses is olivia, an owner and reviewer, closing post-use review
// id of q with a signed statement dated a second after the replay's time.
func (p *replayer) oliviaCloses(q *reqState, id string) audit.Draft {
	p.t.Helper()
	oKey := ed25519.NewKeyFromSeed(fuzzSeed("olivia"))
	oURI, _ := url.Parse(fuzzURIPrefix + "olivia")
	der, err := x509.CreateCertificate(nil, &x509.Certificate{SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "olivia"},
		NotBefore: p.l.ca.NotBefore, NotAfter: p.l.ca.NotAfter, URIs: []*url.URL{oURI}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}},
		p.l.ca, oKey.Public(), p.l.caKey)
	if err != nil {
		p.t.Fatal(err)
	}
	at := p.at.Add(time.Second)
	st := statement.Statement{Type: statement.TypeReviewClose, Origin: fuzzOrigin, Request: q.id, Content: q.digest,
		Comment: statement.CommentDigest("fine"), Time: at.Truncate(time.Second)}.Marshal()
	sig, err := statement.Sign(oKey, st)
	if err != nil {
		p.t.Fatal(err)
	}
	p.at = at
	return audit.Draft{Type: audit.TypeReviewClosed, Actor: "olivia", Request: q.id, Account: q.account,
		Payload: audit.PostReviewClosed{ID: id, Notes: "fine", Signed: audit.Signed{Statement: st, Signature: sig, Certificate: der}}}
}

// The broker opens one post-use review per grant, at its first token (at
// its approval for a solo grant): a second, under a fresh id or under the
// id of one closed and no longer remembered, would let one reviewer's
// signed closing, which names the request and not the review, be counted
// as the closing of two.
func TestPostUseReviewOpensOnce(t *testing.T) {
	l := theFuzzLog(t)
	for _, again := range []string{"review-1", "review-2"} {
		t.Run(again, func(t *testing.T) {
			p := newReplayer(t, l)
			for i, b := range l.entries[:7] { // up to the grant's token
				if v := p.raw(b); v != nil {
					t.Fatalf("entry %d: %v", i, v)
				}
			}
			q := p.r.requests[fuzzRequest]
			opened := audit.Draft{Type: audit.TypeReviewOpened, Actor: "breakglass", Request: fuzzRequest, Account: "prod-db",
				Payload: audit.PostReviewOpened{ID: "review-1", Reviewers: "owners", Excluded: []string{"alice", "bob"}}}
			if v := p.next(opened); v != nil {
				t.Fatal(v)
			}
			// Closed while the grant is still in force: the request stays.
			closing := p.oliviaCloses(q, "review-1")
			if v := p.next(closing); v != nil {
				t.Fatalf("closing the review: %v", v)
			}
			if p.r.requests[fuzzRequest] == nil || len(p.r.postReviews) != 0 {
				t.Fatalf("the grant in force was dropped, or its review is still open")
			}
			opened.Payload = audit.PostReviewOpened{ID: again, Reviewers: "owners", Excluded: []string{"alice", "bob"}}
			p.mustRefuse(p.next(opened), "already had its post-use review")
			closing.Payload = audit.PostReviewClosed{ID: again, Notes: "fine", Signed: closing.Payload.(audit.PostReviewClosed).Signed}
			p.mustRefuse(p.next(closing), "is not open for request")
		})
	}
}

// A token's jti is held up to and including its expiry + MaxSkew, the
// latest a relying party allowing that skew accepts it, and forgotten
// only once the log's time is past that.
func TestJTIHeldUntilPastItsExpiry(t *testing.T) {
	l := theFuzzLog(t)
	p := newReplayer(t, l)
	for i, b := range l.entries {
		if v := p.raw(b); v != nil {
			t.Fatalf("entry %d: %v", i, v)
		}
	}
	q := p.r.requests[fuzzRequest]
	if v := p.next(p.oliviaCloses(q, "review-1")); v != nil {
		t.Fatalf("closing the review: %v", v)
	}
	edge := q.grantEnd.Truncate(time.Second).Add(statement.MaxSkew)
	denied := audit.Draft{Type: audit.TypePermissionDenied, Actor: "mallory", Payload: audit.PermissionDenied{Principal: "mallory", Count: 1}}
	if v := p.nextAt(edge, denied); v != nil {
		t.Fatal(v)
	}
	if !p.r.jtis.has("jti-1") {
		t.Fatal("the jti was forgotten at its expiry + MaxSkew, while a relying party may still accept its token")
	}
	if v := p.nextAt(edge.Add(time.Nanosecond), denied); v != nil {
		t.Fatal(v)
	}
	if p.r.jtis.has("jti-1") || len(p.r.forgetting) != 0 {
		t.Errorf("the jti is still held past its expiry + MaxSkew (%d things to forget)", len(p.r.forgetting))
	}
}

// A dead letter is held until it is acknowledged, and no longer: an
// acknowledgement must be an auditor's, with notes, and repeat the event,
// sink, event type, request and account of a dead letter still open.
func TestDeadLetterAcknowledgements(t *testing.T) {
	p, _ := newPolicyReplayer(t, theFuzzLog(t))
	pol, err := policy.Load([]byte(`
auditors: auditors
groups: {sre: [alice], db: [bob], owners: [olivia], auditors: [dave]}
accounts:
  - name: prod-db
    owner: owners
    requesters: [sre]
    audiences: [db.example]
    max_ttl: 1h
    approval_window: 30m
    activation_window: 10m
    quorum: [{require: [{group: db, approvals: 1}]}]
`), "policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p.r.policy = pol // as a policy_loaded entry would put it in force
	const n = 1000
	event := func(k int) string { return nthRequest(100000 + k) }
	for k := range n {
		if v := p.next(audit.Draft{Type: audit.TypeAlertDead, Actor: "breakglass", Request: nthRequest(k), Account: "prod-db",
			Payload: audit.AlertDelivery{EventID: event(k), EventType: "request.created", Sink: "soc", Attempts: 10, LastError: "500"}}); v != nil {
			t.Fatalf("dead letter %d: %v", k, v)
		}
	}
	// Logged twice, it is one dead letter.
	if v := p.next(audit.Draft{Type: audit.TypeAlertDead, Actor: "breakglass", Request: nthRequest(0), Account: "prod-db",
		Payload: audit.AlertDelivery{EventID: event(0), EventType: "request.created", Sink: "soc", Attempts: 10}}); v != nil {
		t.Fatal(v)
	}
	if len(p.r.deadLetters) != n {
		t.Fatalf("%d dead letters held, want %d", len(p.r.deadLetters), n)
	}
	ack := func(actor, request, account string, pl audit.DeadLetterAcknowledged) *Violation {
		return p.next(audit.Draft{Type: audit.TypeAlertDeadAcked, Actor: actor, Request: request, Account: account, Payload: pl})
	}
	good := audit.DeadLetterAcknowledged{EventID: event(0), EventType: "request.created", Sink: "soc", Notes: "passed on by phone"}
	with := func(f func(*audit.DeadLetterAcknowledged)) audit.DeadLetterAcknowledged { c := good; f(&c); return c }
	p.mustRefuse(ack("olivia", nthRequest(0), "prod-db", good), "olivia acknowledged the dead letter")
	p.mustRefuse(ack("breakglass", nthRequest(0), "prod-db", good), "without being an auditor")
	p.mustRefuse(ack("dave", nthRequest(0), "prod-db", with(func(a *audit.DeadLetterAcknowledged) { a.EventID = nthRequest(999999) })), "was never dead-lettered")
	p.mustRefuse(ack("dave", nthRequest(0), "prod-db", with(func(a *audit.DeadLetterAcknowledged) { a.Sink = "slack" })), "was never dead-lettered")
	p.mustRefuse(ack("dave", nthRequest(0), "prod-db", with(func(a *audit.DeadLetterAcknowledged) { a.EventType = "grant.approved" })), "was never dead-lettered")
	p.mustRefuse(ack("dave", nthRequest(1), "prod-db", good), "was never dead-lettered")
	p.mustRefuse(ack("dave", nthRequest(0), "other-db", good), "was never dead-lettered")
	p.mustRefuse(ack("dave", nthRequest(0), "prod-db", with(func(a *audit.DeadLetterAcknowledged) { a.Notes = " " })), "malformed")
	p.mustRefuse(ack("dave", nthRequest(0), "prod-db", with(func(a *audit.DeadLetterAcknowledged) { a.Notes = strings.Repeat("x", 4001) })), "malformed")
	p.mustRefuse(ack("dave", nthRequest(0), "prod-db", with(func(a *audit.DeadLetterAcknowledged) { a.Sink = "" })), "malformed")
	if len(p.r.deadLetters) != n {
		t.Fatalf("refused acknowledgements changed what is held: %d", len(p.r.deadLetters))
	}
	for k := range n {
		if v := ack("dave", nthRequest(k), "prod-db", with(func(a *audit.DeadLetterAcknowledged) { a.EventID = event(k) })); v != nil {
			t.Fatalf("acknowledging %d: %v", k, v)
		}
	}
	p.mustRefuse(ack("dave", nthRequest(0), "prod-db", good), "or was acknowledged already")
	// Acknowledged, nothing of them is held.
	if len(p.r.deadLetters) != 0 {
		t.Fatalf("%d dead letters held after all were acknowledged", len(p.r.deadLetters))
	}
}
