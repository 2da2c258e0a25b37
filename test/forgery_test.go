package test

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"

	"github.com/bgbroker/breakglass/client/auditverify"
	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/claims"
	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/format/statement"
)

// The verifier's adversary is the broker's operator: the database and the
// HSM PIN, so every entry and checkpoint can be signed with the broker's
// own audit and checkpoint keys, but no approver's key and not the client
// CA's. The forgery corpus builds, from a genuine log, every forgery such
// an operator was found to try, and each must be refused by `bgctl audit
// verify`, at its entry and for its reason, whether or not the auditor
// holds a checkpoint from before the forgery. The forger signs with the
// broker's keys only; the statements in its forgeries are genuine ones it
// found in the log, moved, replayed or dropped (and, for a requester who
// colludes, signed with the requester's own key).
//
// Keep adding to it: every forgery found is a case here.
func TestForgeryCorpus(t *testing.T) {
	d := startDev(t)
	granted := d.createRequest("alice")
	d.mustBgctl("bob", "approve", granted, "--comment", "confirmed on the bridge", "--yes")
	d.mustBgctl("erin", "approve", granted, "--yes")
	d.mustBgctl("alice", "token", granted, "--audience", "db.prod.example")
	pending := d.createRequest("alice")
	d.mustBgctl("bob", "approve", pending, "--yes")
	revoked := d.createRequest("alice")
	d.mustBgctl("bob", "approve", revoked, "--yes")
	d.mustBgctl("erin", "approve", revoked, "--yes")
	d.mustBgctl("alice", "revoke", revoked, "--reason", "done")
	f := d.exportAudit(t)
	if r := f.verify(t); r.code != 0 {
		t.Fatalf("the genuine log does not verify: %+v", r)
	}
	if r := f.verify(t, "--previous-checkpoint", f.checkpoint); r.code != 0 {
		t.Fatalf("the genuine log does not verify against its own checkpoint: %+v", r)
	}
	genuine := parsed(t, f.lines(t))
	fg := newForger(t, d)

	// at finds the nth entry of a type about a request ("" for any).
	at := func(es []*audit.Entry, typ audit.Type, request string, nth int) int {
		for i, e := range es {
			if e.Type == typ && (request == "" || e.Request == request) {
				if nth == 0 {
					return i
				}
				nth--
			}
		}
		t.Fatalf("no %s entry %d for %q", typ, nth, request)
		return -1
	}
	fresh := func() []*audit.Entry { return parsed(t, f.lines(t)) }
	last := func(es []*audit.Entry) time.Time { return es[len(es)-1].Time }
	// appended adds a copy of e at the end, after dt.
	appended := func(es []*audit.Entry, e audit.Entry, dt time.Duration) ([]*audit.Entry, int) {
		e.Time = last(es).Add(dt)
		return append(es, &e), len(es)
	}
	// loggedPolicy is the policy in force, from its entry.
	var pl audit.PolicyLoaded
	decodeInto(t, genuine[at(genuine, audit.TypePolicyLoaded, "", 0)], &pl)
	inForce, err := policy.FromCanonicalJSON(pl.Policy)
	if err != nil {
		t.Fatal(err)
	}
	// policyEntry is a policy_loaded entry for the canonical JSON of a
	// policy the operator wrote, hashed as the broker would.
	policyEntry := func(canon []byte, id audit.Identity) audit.Entry {
		p := audit.PolicyLoaded{Hash: hexSHA256(canon), Previous: pl.Hash, Source: "policy.yaml", Policy: canon, Identity: id}
		return audit.Entry{V: audit.Version, Type: audit.TypePolicyLoaded, Actor: "operator", Payload: encodeJSON(t, p)}
	}

	type forgery struct {
		name string
		// build returns the forged entries and the index of the entry the
		// verifier must refuse.
		build func() ([]*audit.Entry, int)
		why   string
	}
	corpus := []forgery{
		// ---- the four the verifier used to accept ----
		{"1a. token claims with case-variant exp and aud read differently by relying parties", func() ([]*audit.Entry, int) {
			es := fresh()
			i := at(es, audit.TypeTokenIssued, granted, 0)
			var p audit.TokenIssued
			decodeInto(t, es[i], &p)
			c := strings.Replace(string(p.Claims), `"aud":"db.prod.example"`, `"aud":"payments.prod.example"`, 1)
			c = strings.Replace(c, `"exp":`, `"exp":2111516634,"Exp":`, 1)
			p.Claims = json.RawMessage(strings.TrimSuffix(c, "}") + `,"Aud":"db.prod.example"}`)
			es[i].Payload = encodeJSON(t, p)
			return es, i
		}, "the token's claims are not what relying parties would read"},
		{"1b. an issuance hidden behind a case-variant Type key", nil, "the entry is not the broker's encoding of an entry"},
		{"2a. identity widened and user/bob put in a second group", func() ([]*audit.Entry, int) {
			es := fresh()
			canon := strings.Replace(string(inForce.CanonicalJSON()), `"security":["erin"]`, `"security":["erin","user/bob"]`, 1)
			e := policyEntry([]byte(canon), audit.Identity{Mode: "uri", URIPrefix: "spiffe://breakglass.dev/"})
			return appended(es, e, time.Millisecond)
		}, `principal "user/bob" must be letters`},
		{"2b. bob's one statement logged again under another principal", func() ([]*audit.Entry, int) {
			es := fresh()
			i := at(es, audit.TypeRequestReviewed, pending, 0)
			e := *es[i]
			e.Actor = "erin"
			return appended(es, e, time.Millisecond)
		}, "the certificate belongs to bob, not erin"},
		{"2c. bob's one statement counted twice", func() ([]*audit.Entry, int) {
			es := fresh()
			return appended(es, *es[at(es, audit.TypeRequestReviewed, pending, 0)], time.Millisecond)
		}, "bob reviewed request " + pending + " twice"},
		{"2d. the requester approving her own request with her own key", func() ([]*audit.Entry, int) {
			es := fresh()
			i := at(es, audit.TypeRequestReviewed, pending, 0)
			var p audit.RequestReviewed
			decodeInto(t, es[i], &p)
			var rc audit.RequestCreated
			decodeInto(t, es[at(es, audit.TypeRequestCreated, pending, 0)], &rc)
			st, err := statement.Parse(p.Statement)
			if err != nil {
				t.Fatal(err)
			}
			alice := d.identityKey(t, "alice")
			st.Time = last(es).Add(time.Millisecond).Truncate(time.Second)
			p.Statement = st.Marshal()
			if p.Signature, err = statement.Sign(alice.key, p.Statement); err != nil {
				t.Fatal(err)
			}
			p.Certificate = alice.cert.Raw
			e := *es[i]
			e.Actor, e.Payload = "erin", encodeJSON(t, p)
			return appended(es, e, time.Millisecond)
		}, "the certificate belongs to alice, not erin"},
		{"3. a group named like rule text", func() ([]*audit.Entry, int) {
			es := fresh()
			canon := strings.Replace(string(inForce.CanonicalJSON()), `"db-admins":["bob","carol"]`, `"db-admins":["bob","carol"],"db-admins and 1 of security":["bob"]`, 1)
			return appended(es, policyEntry([]byte(canon), pl.Identity), time.Millisecond)
		}, `group name "db-admins and 1 of security" must be lower-case`},
		{"4a. an approval deadline three years out", func() ([]*audit.Entry, int) {
			es := fresh()
			i := at(es, audit.TypeRequestCreated, pending, 0)
			var p audit.RequestCreated
			decodeInto(t, es[i], &p)
			p.ApprovalDeadline = p.CreatedAt.Add(3 * 365 * 24 * time.Hour)
			es[i].Payload = encodeJSON(t, p)
			return es, i
		}, "approval deadline"},
		{"4b. a creation time far from its entry's", func() ([]*audit.Entry, int) {
			es := fresh()
			i := at(es, audit.TypeRequestCreated, pending, 0)
			var p audit.RequestCreated
			decodeInto(t, es[i], &p)
			p.CreatedAt = p.CreatedAt.Add(-48 * time.Hour)
			p.ApprovalDeadline = p.ApprovalDeadline.Add(-48 * time.Hour)
			es[i].Payload = encodeJSON(t, p)
			return es, i
		}, "from its entry's time"},
		// ---- requests signed by their requesters ----
		{"5. a request the requester never signed", func() ([]*audit.Entry, int) {
			es := fresh()
			i := at(es, audit.TypeRequestCreated, pending, 0)
			var p audit.RequestCreated
			decodeInto(t, es[i], &p)
			p.Signed = audit.Signed{}
			es[i].Payload = encodeJSON(t, p)
			return es, i
		}, "was not signed by its requester alice"},
		{"5b. a request made from the statement of another request", func() ([]*audit.Entry, int) {
			es := fresh()
			e := *es[at(es, audit.TypeRequestCreated, pending, 0)]
			e.Request = "01890000-0000-7000-8000-00000000f00d"
			var p audit.RequestCreated
			decodeInto(t, &e, &p)
			p.CreatedAt = last(es).Add(time.Millisecond)
			p.ApprovalDeadline = p.CreatedAt.Add(p.ApprovalDeadline.Sub(genuineCreated(t, es, pending)))
			p.ContentDigest = contentOf(e, p).Digest()
			e.Payload = encodeJSON(t, p)
			return appended(es, e, time.Millisecond)
		}, "the request statement is for request " + pending},
		{"6. a longer grant than the requester signed for", func() ([]*audit.Entry, int) {
			es := fresh()
			i := at(es, audit.TypeRequestCreated, pending, 0)
			var p audit.RequestCreated
			decodeInto(t, es[i], &p)
			p.TTLSeconds = 3600
			p.ContentDigest = contentOf(*es[i], p).Digest()
			es[i].Payload = encodeJSON(t, p)
			return es, i
		}, "asks for 1800 seconds, not 3600"},
		// ---- the twelve refused before ----
		{"o1. a review statement replayed on another request", func() ([]*audit.Entry, int) {
			es := fresh()
			e := *es[at(es, audit.TypeRequestReviewed, granted, 1)] // erin's, for the grant
			e.Request = pending
			return appended(es, e, time.Millisecond)
		}, "is for request " + granted},
		{"o2. a request id used again", func() ([]*audit.Entry, int) {
			es := fresh()
			return appended(es, *es[at(es, audit.TypeRequestCreated, pending, 0)], time.Millisecond)
		}, "is empty or reused"},
		{"o3. a fourth token past max_issuances", func() ([]*audit.Entry, int) {
			es := fresh()
			tok := *es[at(es, audit.TypeTokenIssued, granted, 0)]
			var idx int
			for n := 2; n <= 4; n++ {
				var p audit.TokenIssued
				decodeInto(t, &tok, &p)
				c, err := claims.Parse(p.Claims)
				if err != nil {
					t.Fatal(err)
				}
				c.ID = c.ID[:len(c.ID)-4] + "000" + string(rune('0'+n))
				p.JTI, p.Issuance, p.Claims = c.ID, n, encodeJSON(t, c)
				e := tok
				e.Payload = encodeJSON(t, p)
				es, idx = appended(es, e, time.Millisecond)
			}
			return es, idx
		}, "token 4 of a grant allowed 3"},
		{"o4. a token after the grant was revoked", func() ([]*audit.Entry, int) {
			es := fresh()
			e := *es[at(es, audit.TypeTokenIssued, granted, 0)]
			e.Request = revoked
			return appended(es, e, time.Millisecond)
		}, "which is REVOKED, not an approved grant"},
		{"o5. a token past its grant", func() ([]*audit.Entry, int) {
			es := fresh()
			var ap audit.RequestApproved
			decodeInto(t, es[at(es, audit.TypeRequestApproved, granted, 0)], &ap)
			e := *es[at(es, audit.TypeTokenIssued, granted, 0)]
			return appended(es, e, ap.GrantExpiresAt.Sub(last(es))+time.Second)
		}, "issued after its grant ended"},
		{"o6. a review after the approval window", func() ([]*audit.Entry, int) {
			es := fresh()
			var rc audit.RequestCreated
			decodeInto(t, es[at(es, audit.TypeRequestCreated, pending, 0)], &rc)
			e := *es[at(es, audit.TypeRequestReviewed, granted, 1)]
			e.Request = pending
			return appended(es, e, rc.ApprovalDeadline.Sub(last(es))+time.Second)
		}, "which was not pending"},
		{"o7. time going backwards", func() ([]*audit.Entry, int) {
			es := fresh()
			e := audit.Entry{V: audit.Version, Type: audit.TypePermissionDenied, Actor: "mallory", Payload: encodeJSON(t, audit.PermissionDenied{
				Principal: "mallory", Count: 1, WindowStart: es[0].Time, WindowEnd: es[0].Time, Methods: map[string]int{"/x": 1}})}
			es, i := appended(es, e, 0)
			es[i].Time = es[0].Time.Add(-time.Hour)
			return es, i
		}, "time goes backwards"},
		{"o8. an entry of a type that does not exist", func() ([]*audit.Entry, int) {
			es := fresh()
			e := *es[at(es, audit.TypeRequestApproved, granted, 0)]
			e.Type = "request_approved_by_the_operator"
			e.Request = pending
			return appended(es, e, time.Millisecond)
		}, `unknown entry type "request_approved_by_the_operator"`},
		{"o9. the requester reviewing her own request by name", func() ([]*audit.Entry, int) {
			es := fresh()
			e := *es[at(es, audit.TypeRequestReviewed, pending, 0)]
			e.Actor = "alice"
			return appended(es, e, time.Millisecond)
		}, "alice reviewed their own request"},
		{"o10. an approval injected without its quorum", func() ([]*audit.Entry, int) {
			es := fresh()
			e := *es[at(es, audit.TypeRequestApproved, granted, 0)]
			e.Request = pending
			return appended(es, e, time.Millisecond)
		}, "approved without its quorum"},
		{"o11. a token injected for a pending request", func() ([]*audit.Entry, int) {
			es := fresh()
			e := *es[at(es, audit.TypeTokenIssued, granted, 0)]
			e.Request = pending
			return appended(es, e, time.Millisecond)
		}, "which is PENDING, not an approved grant"},
		// ---- the verifier forgets an ended request once its statement
		// could no longer be replayed (its entry + 2×MaxSkew) ----
		{"f1. the revoked request's statement logged again at the last instant it is remembered", func() ([]*audit.Entry, int) {
			es := fresh()
			e := *es[at(es, audit.TypeRequestCreated, revoked, 0)]
			return appended(es, relogged(t, e, e.Time.Add(2*statement.MaxSkew)), e.Time.Add(2*statement.MaxSkew).Sub(last(es)))
		}, "is empty or reused"},
		{"f2. the revoked request's statement logged again once it is forgotten", func() ([]*audit.Entry, int) {
			es := fresh()
			e := *es[at(es, audit.TypeRequestCreated, revoked, 0)]
			again := e.Time.Add(2*statement.MaxSkew + time.Nanosecond)
			return appended(es, relogged(t, e, again), again.Sub(last(es)))
		}, "the request statement's time"},
		{"f3. a token for the revoked grant once it is forgotten", func() ([]*audit.Entry, int) {
			es := fresh()
			created := es[at(es, audit.TypeRequestCreated, revoked, 0)].Time
			e := *es[at(es, audit.TypeTokenIssued, granted, 0)]
			e.Request = revoked
			return appended(es, e, created.Add(2*statement.MaxSkew+time.Second).Sub(last(es)))
		}, "which was never created or had ended before"},
		// ---- dead letters: an acknowledgement takes one out of the
		// report and the health, so it must be an auditor's, of one the log
		// dead-lettered, once ----
		{"d1. a dead letter acknowledged by the operator", func() ([]*audit.Entry, int) {
			es, _ := appended(fresh(), deadLettered(t, pending, "e-1"), time.Millisecond)
			return appended(es, deadLetterAck(t, "operator", pending, "e-1"), time.Millisecond)
		}, "operator acknowledged the dead letter " + deadLetterEvent("e-1") + " for sink soc without being an auditor"},
		{"d2. an acknowledgement of an alert never dead-lettered", func() ([]*audit.Entry, int) {
			es, _ := appended(fresh(), deadLettered(t, pending, "e-1"), time.Millisecond)
			return appended(es, deadLetterAck(t, "dave", pending, "e-2"), time.Millisecond)
		}, "was never dead-lettered, or was acknowledged already"},
		{"d3. a dead letter acknowledged under another request", func() ([]*audit.Entry, int) {
			es, _ := appended(fresh(), deadLettered(t, pending, "e-1"), time.Millisecond)
			return appended(es, deadLetterAck(t, "dave", granted, "e-1"), time.Millisecond)
		}, "was never dead-lettered, or was acknowledged already"},
		{"d4. a dead letter acknowledged twice", func() ([]*audit.Entry, int) {
			es, _ := appended(fresh(), deadLettered(t, pending, "e-1"), time.Millisecond)
			es, _ = appended(es, deadLetterAck(t, "dave", pending, "e-1"), time.Millisecond)
			return appended(es, deadLetterAck(t, "dave", pending, "e-1"), time.Millisecond)
		}, "was never dead-lettered, or was acknowledged already"},
	}
	// 1b needs the entry's bytes as written, which the forger's
	// re-encoding would normalise: it is built below.
	for _, fc := range corpus {
		t.Run(fc.name, func(t *testing.T) {
			var g *auditFiles
			idx := 0
			if fc.build == nil {
				g, idx = fg.hiddenIssuance(f, genuine, at(genuine, audit.TypeTokenIssued, granted, 0))
			} else {
				var es []*audit.Entry
				es, idx = fc.build()
				g = fg.rebuild(f, es)
			}
			for _, extra := range [][]string{nil, {"--previous-checkpoint", f.checkpoint}} {
				r := g.verify(t, append([]string{"-o", "json"}, extra...)...)
				if r.code != 1 {
					t.Fatalf("%v: the forged log verifies (exit %d): %s %s", extra, r.code, r.stdout, r.stderr)
				}
				if !violated(t, r.stdout, idx, fc.why) {
					t.Fatalf("%v: not refused at entry %d for %q:\n%s", extra, idx, fc.why, r.stderr)
				}
			}
		})
	}

	// o12. A rewrite of what a checkpoint someone else holds covers: the
	// revocation taken out of the log. The lifecycle alone cannot see a
	// missing entry (this is what checkpoints held by others are for):
	// with the auditor's older checkpoint it is refused.
	t.Run("o12. a revocation removed and the log re-signed", func(t *testing.T) {
		es := fresh()
		i := at(es, audit.TypeGrantRevoked, revoked, 0)
		g := fg.rebuild(f, append(es[:i:i], es[i+1:]...))
		if r := g.verify(t); r.code != 0 {
			t.Fatalf("without an older checkpoint the rewrite is not expected to show: %+v", r)
		}
		r := g.verify(t, "-o", "json", "--previous-checkpoint", f.checkpoint)
		if r.code != 1 || !violated(t, r.stdout, -1, "previous checkpoint") {
			t.Fatalf("the rewrite against the older checkpoint: %+v", r)
		}
	})
}

// hiddenIssuance forges forgery 1b: the token_issued entry at i with a
// second, case-variant "Type" key that encoding/json would read as
// permission_denied while jq and Python read token_issued, the entries
// after it re-chained. The entry's bytes are written as the operator
// chooses, not re-encoded.
func (fg *forger) hiddenIssuance(f *auditFiles, genuine []*audit.Entry, i int) (*auditFiles, int) {
	fg.t.Helper()
	raws := make([][]byte, len(genuine))
	for k, e := range genuine {
		if k > i {
			e.Prev = hex.EncodeToString(audit.LeafHash(raws[k-1]))
		}
		b, err := json.Marshal(e)
		if err != nil {
			fg.t.Fatal(err)
		}
		raws[k] = b
		if k == i {
			raws[k] = []byte(strings.Replace(string(b), `"actor":`, `"Type":"permission_denied","actor":`, 1))
		}
	}
	return fg.signRaw(f, raws), i
}

// signRaw signs entry bytes as they are, with the HSM audit key, and a
// checkpoint over them with the HSM checkpoint key.
func (fg *forger) signRaw(f *auditFiles, raws [][]byte) *auditFiles {
	fg.t.Helper()
	var lines []auditverify.Line
	cr := (&compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}).NewEmptyRange(0)
	for i, b := range raws {
		rec := audit.Record{Bytes: b}
		if err := audit.Sign(context.Background(), fg.audit, "forged", &rec); err != nil {
			fg.t.Fatal(err)
		}
		lines = append(lines, auditverify.ExportLine(uint64(i), b, rec.Signature, "forged"))
		if err := cr.Append(audit.LeafHash(b), nil); err != nil {
			fg.t.Fatal(err)
		}
	}
	root, err := cr.GetRootHash(nil)
	if err != nil {
		fg.t.Fatal(err)
	}
	signed, err := note.Sign(&note.Note{Text: string(log.Checkpoint{Origin: fg.origin, Size: uint64(len(raws)), Hash: root}.Marshal())}, fg.cp)
	if err != nil {
		fg.t.Fatal(err)
	}
	g := f.tampered(fg.t, lines)
	g.checkpoint = filepath.Join(fg.t.TempDir(), "checkpoint")
	write(fg.t, g.checkpoint, signed)
	return g
}

// violated reports whether bgctl's JSON output lists a violation at index
// (any index when -1) whose reason says why.
func violated(t *testing.T, out string, index int, why string) bool {
	t.Helper()
	var o struct {
		Violations []struct {
			Index  int    `json:"index"`
			Reason string `json:"reason"`
		} `json:"violations"`
	}
	if err := json.Unmarshal([]byte(out), &o); err != nil {
		t.Fatalf("bgctl output %q: %v", out, err)
	}
	for _, v := range o.Violations {
		if (index < 0 || v.Index == index) && strings.Contains(v.Reason, why) {
			return true
		}
	}
	return false
}

func decodeInto(t *testing.T, e *audit.Entry, v any) {
	t.Helper()
	if err := json.Unmarshal(e.Payload, v); err != nil {
		t.Fatal(err)
	}
}

func encodeJSON(t *testing.T, v any) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// principalKey is a dev principal's client certificate and key.
type principalKey struct {
	cert *x509.Certificate
	key  crypto.Signer
}

// identityKey reads a dev principal's client certificate and key from the
// dev state, as bgctl does.
func (d *devBroker) identityKey(t *testing.T, name string) principalKey {
	t.Helper()
	kp, err := tls.LoadX509KeyPair(d.state("identities", name+".crt"), d.state("identities", name+".key"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(kp.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return principalKey{cert: c, key: kp.PrivateKey.(crypto.Signer)}
}

// contentOf is the content of a request_created entry with payload p.
func contentOf(e audit.Entry, p audit.RequestCreated) statement.Content {
	return statement.Content{Version: statement.ContentVersion(p.ContentVersion).Norm(), ID: e.Request, Account: e.Account, Requester: e.Actor,
		Justification: p.Justification, Ticket: p.Ticket, TTLSeconds: p.TTLSeconds, Drill: p.Drill, CreatedAt: p.CreatedAt}
}

// genuineCreated is when request id was created.
// relogged is request_created entry e logged again at at, with the
// creation time, deadline and content digest the broker would write then:
// only the requester's signed statement is kept.
func relogged(t *testing.T, e audit.Entry, at time.Time) audit.Entry {
	t.Helper()
	var p audit.RequestCreated
	decodeInto(t, &e, &p)
	p.ApprovalDeadline = at.Add(p.ApprovalDeadline.Sub(p.CreatedAt))
	p.CreatedAt = at
	p.ContentDigest = contentOf(e, p).Digest()
	e.Payload = encodeJSON(t, p)
	return e
}

func genuineCreated(t *testing.T, es []*audit.Entry, id string) time.Time {
	t.Helper()
	for _, e := range es {
		if e.Type == audit.TypeRequestCreated && e.Request == id {
			var p audit.RequestCreated
			decodeInto(t, e, &p)
			return p.CreatedAt
		}
	}
	t.Fatalf("no request %s", id)
	return time.Time{}
}

func hexSHA256(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// deadLetterEvent is a fixed event id for a forged dead letter.
func deadLetterEvent(name string) string {
	return uuid.NewSHA1(uuid.NameSpaceOID, []byte(name)).String()
}

// deadLettered is the broker's entry for an alert about request given up
// on at sink soc.
func deadLettered(t *testing.T, request, name string) audit.Entry {
	return audit.Entry{V: audit.Version, Type: audit.TypeAlertDead, Actor: "broker", Request: request, Account: "prod-db",
		Payload: encodeJSON(t, audit.AlertDelivery{EventID: deadLetterEvent(name), EventType: "request.created", Sink: "soc", Attempts: 10, LastError: "503"})}
}

// deadLetterAck is an acknowledgement of it by actor.
func deadLetterAck(t *testing.T, actor, request, name string) audit.Entry {
	return audit.Entry{V: audit.Version, Type: audit.TypeAlertDeadAcked, Actor: actor, Request: request, Account: "prod-db",
		Payload: encodeJSON(t, audit.DeadLetterAcknowledged{EventID: deadLetterEvent(name), EventType: "request.created", Sink: "soc", Notes: "passed on"})}
}
