package auditverify

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math"
	"math/big"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/checkpoint"
	"github.com/bgbroker/breakglass/format/claims"
	"github.com/bgbroker/breakglass/format/keyid"
	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/format/statement"
)

// The fuzzer runs each target in several worker processes that rerun its
// setup and trade inputs. An input that verifies in one process must
// verify in all of them, so every key below is derived from a label and
// every signature is deterministic (Ed25519, or ECDSA with RFC 6979 nonces).

const (
	fuzzOrigin    = "example.org/breakglass"
	fuzzURIPrefix = "spiffe://example.org/user/"
	fuzzRequest   = "01890000-0000-7000-8000-000000000001"
	fuzzTokenKID  = "token-1"
)

var fuzzT0 = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

func fuzzSeed(label string) []byte {
	s := sha256.Sum256([]byte("breakglass fuzz " + label))
	return s[:]
}

func fuzzECDSA(label string) *ecdsa.PrivateKey {
	k, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), fuzzSeed(label))
	if err != nil {
		panic(err)
	}
	return k
}

// rfc6979 signs with deterministic nonces whatever randomness it is offered.
type rfc6979 struct{ *ecdsa.PrivateKey }

func (k rfc6979) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return k.PrivateKey.Sign(nil, digest, opts)
}

func (k rfc6979) signSHA256(b []byte) []byte {
	d := sha256.Sum256(b)
	sig, err := k.Sign(nil, d[:], crypto.SHA256)
	if err != nil {
		panic(err)
	}
	return sig
}

// fuzzLog is a small log that verifies: a policy, a refusal, a token key,
// and one request reviewed with a signed statement, approved, used and
// ended, with a checkpoint at every size.
type fuzzLog struct {
	audit    rfc6979
	signer   note.Signer
	verifier note.Verifier
	cas      *x509.CertPool
	ca       *x509.Certificate
	caKey    ed25519.PrivateKey
	entries  [][]byte
	export   []byte
	// checkpoints[n] is the signed checkpoint of the first n entries; notes
	// maps each one's text to it, and roots a size to its root hash.
	checkpoints [][]byte
	notes       map[string][]byte
	roots       map[uint64][]byte
	// next are the keys a rotation introduces.
	nextAudit rfc6979
	nextNote  ed25519.PrivateKey
	notePriv  ed25519.PrivateKey
	// bob approves requests with the key of his client certificate, and
	// alice signs hers with hers.
	bobKey   ed25519.PrivateKey
	bobDER   []byte
	aliceKey ed25519.PrivateKey
	aliceDER []byte
}

// signedRequest is p signed by alice as request id on account, at t.
func (l *fuzzLog) signedRequest(p audit.RequestCreated, id, account string, t time.Time) audit.RequestCreated {
	p.Signed = signRequest(l.aliceKey, l.aliceDER, p, id, account, t)
	return p
}

// signRequest signs the request statement of p with key, whose
// certificate is der.
func signRequest(key crypto.Signer, der []byte, p audit.RequestCreated, id, account string, t time.Time) audit.Signed {
	st := statement.Request{Origin: fuzzOrigin, ID: id, Account: account, TTLSeconds: p.TTLSeconds, Drill: p.Drill, Solo: p.Solo,
		Ticket: p.Ticket, Justification: p.Justification, Time: t.Truncate(time.Second)}
	b := st.Marshal()
	sig, err := statement.Sign(key, b)
	must(err)
	return audit.Signed{Statement: b, Signature: sig, Certificate: der}
}

var (
	fuzzLogOnce sync.Once
	fuzzLogVal  *fuzzLog
)

func theFuzzLog(testing.TB) *fuzzLog {
	fuzzLogOnce.Do(func() { fuzzLogVal = buildFuzzLog() })
	return fuzzLogVal
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}

func buildFuzzLog() *fuzzLog {
	l := &fuzzLog{audit: rfc6979{fuzzECDSA("audit")}, nextAudit: rfc6979{fuzzECDSA("next audit")},
		notes: map[string][]byte{}, roots: map[uint64][]byte{}}
	skey, vkey, err := note.GenerateKey(bytes.NewReader(fuzzSeed("checkpoint")), fuzzOrigin)
	must(err)
	l.signer, err = note.NewSigner(skey)
	must(err)
	l.verifier, err = note.NewVerifier(vkey)
	must(err)
	l.notePriv = ed25519.NewKeyFromSeed(fuzzSeed("checkpoint"))
	l.nextNote = ed25519.NewKeyFromSeed(fuzzSeed("next checkpoint"))

	caKey := ed25519.NewKeyFromSeed(fuzzSeed("client ca"))
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fuzz client CA"}, NotBefore: fuzzT0.Add(-time.Hour),
		NotAfter: fuzzT0.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	caDER, err := x509.CreateCertificate(nil, caTmpl, caTmpl, caKey.Public(), caKey)
	must(err)
	ca, err := x509.ParseCertificate(caDER)
	must(err)
	l.cas = x509.NewCertPool()
	l.cas.AddCert(ca)
	l.ca, l.caKey = ca, caKey
	l.bobKey = ed25519.NewKeyFromSeed(fuzzSeed("bob"))
	bobURI, _ := url.Parse(fuzzURIPrefix + "bob")
	l.bobDER, err = x509.CreateCertificate(nil, &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "bob"},
		NotBefore: caTmpl.NotBefore, NotAfter: caTmpl.NotAfter, URIs: []*url.URL{bobURI}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}},
		ca, l.bobKey.Public(), caKey)
	must(err)
	l.aliceKey = ed25519.NewKeyFromSeed(fuzzSeed("alice"))
	aliceURI, _ := url.Parse(fuzzURIPrefix + "alice")
	l.aliceDER, err = x509.CreateCertificate(nil, &x509.Certificate{SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "alice"},
		NotBefore: caTmpl.NotBefore, NotAfter: caTmpl.NotAfter, URIs: []*url.URL{aliceURI}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}},
		ca, l.aliceKey.Public(), caKey)
	must(err)

	l.entries = l.build(1800)
	l.export = l.exportOf(l.entries)
	l.checkpoints = make([][]byte, len(l.entries)+1)
	for n := 1; n <= len(l.entries); n++ {
		signed, root := l.checkpoint(l.entries[:n])
		text, _, _ := strings.Cut(string(signed), "\n\n")
		l.checkpoints[n], l.notes[text+"\n"], l.roots[uint64(n)] = signed, signed, root
	}
	if _, err := Verify(l.options(l.export, l.checkpoints[len(l.entries)], nil)); err != nil {
		var vs *Violations
		if errors.As(err, &vs) {
			panic(fmt.Sprintf("the fuzz log does not verify:\n%s", vs))
		}
		panic(fmt.Sprintf("the fuzz log does not verify: %v", err))
	}
	return l
}

// build makes the entries of one request for ttlSeconds, from its policy
// to its post-use review, computing the grant's end as a broker would.
func (l *fuzzLog) build(ttlSeconds int64) [][]byte {
	pol, err := policy.Load([]byte(`
groups: {sre: [alice], db: [bob], owners: [olivia]}
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
	must(err)
	acct, _ := pol.Account("prod-db")
	created := fuzzT0.Add(time.Minute)
	content := statement.Content{ID: fuzzRequest, Account: "prod-db", Requester: "alice", Justification: "db down", Ticket: "INC-1", TTLSeconds: ttlSeconds, CreatedAt: created}
	reviewed := fuzzT0.Add(2 * time.Minute)
	stmt := statement.Statement{Type: statement.TypeApprove, Origin: fuzzOrigin, Request: fuzzRequest, Content: content.Digest(),
		Comment: statement.CommentDigest("ok"), Time: reviewed}.Marshal()
	stmtSig, err := statement.Sign(l.bobKey, stmt)
	must(err)
	grantEnd := reviewed.Add(time.Duration(ttlSeconds) * time.Second)
	issued := fuzzT0.Add(3 * time.Minute)
	claims, err := json.Marshal(claims.Claims{Issuer: "https://broker.example", Subject: "alice", Audience: jwt.Audience{"db.example"},
		IssuedAt: claims.NumericDate(issued), NotBefore: claims.NumericDate(issued), Expiry: claims.NumericDate(grantEnd),
		ID: "jti-1", ClientID: "alice", Account: "prod-db", Request: fuzzRequest, Approvers: []string{"bob"}})
	must(err)

	type step struct {
		at time.Time
		d  audit.Draft
	}
	req := func(typ audit.Type, actor string, payload any) audit.Draft {
		return audit.Draft{Type: typ, Actor: actor, Request: fuzzRequest, Account: "prod-db", Payload: payload}
	}
	steps := []step{
		{fuzzT0, audit.Draft{Type: audit.TypePolicyLoaded, Actor: "breakglass", Payload: audit.PolicyLoaded{Hash: pol.Hash(), Source: "policy.yaml",
			Policy: pol.CanonicalJSON(), Identity: audit.Identity{Mode: "uri", URIPrefix: fuzzURIPrefix}, Genesis: audit.GenesisUnsigned}}},
		{fuzzT0.Add(time.Second), audit.Draft{Type: audit.TypePermissionDenied, Actor: "mallory", Payload: audit.PermissionDenied{Principal: "mallory",
			Count: 2, WindowStart: fuzzT0, WindowEnd: fuzzT0.Add(time.Minute), Methods: map[string]int{"/breakglass.v1.AccessService/Approve": 2}}}},
		{fuzzT0.Add(2 * time.Second), audit.Draft{Type: audit.TypeKeyActivated, Actor: "breakglass", Payload: audit.KeyChange{Purpose: "token",
			KID: fuzzTokenKID, Label: "token"}}},
		{created, req(audit.TypeRequestCreated, "alice", l.signedRequest(audit.RequestCreated{Justification: content.Justification, Ticket: content.Ticket,
			TTLSeconds: content.TTLSeconds, CreatedAt: created, ApprovalDeadline: created.Add(30 * time.Minute), Quorum: acct.Quorum,
			DenyThreshold: acct.DenyThreshold, MaxIssuances: acct.MaxIssuances, ActivationWindow: 600, PolicyHash: pol.Hash(), ContentDigest: content.Digest()},
			fuzzRequest, "prod-db", created))},
		{reviewed, req(audit.TypeRequestReviewed, "bob", audit.RequestReviewed{Decision: statement.TypeApprove, Comment: "ok", Groups: []string{"db"},
			Statement: stmt, Signature: stmtSig, Certificate: l.bobDER})},
		{reviewed, req(audit.TypeRequestApproved, "breakglass", audit.RequestApproved{ApprovedAt: reviewed, GrantExpiresAt: grantEnd,
			ActivationDeadline: reviewed.Add(10 * time.Minute), Assignment: map[string]string{"bob": "db"}})},
		{issued, req(audit.TypeTokenIssued, "alice", audit.TokenIssued{JTI: "jti-1", KID: fuzzTokenKID, Audience: "db.example", IssuedAt: issued,
			ExpiresAt: grantEnd, TokenSHA256: strings.Repeat("ab", 32), Claims: claims, Issuance: 1})},
		{grantEnd, req(audit.TypeRequestExpired, "breakglass", audit.RequestFinal{Reason: "the grant ended", At: grantEnd})},
		{grantEnd, req(audit.TypeReviewOpened, "breakglass", audit.PostReviewOpened{ID: "review-1", DueAt: grantEnd.Add(72 * time.Hour),
			Reviewers: "owners", Excluded: []string{"alice", "bob"}})},
	}
	var head audit.Head
	var entries [][]byte
	for _, s := range steps {
		rec, err := audit.Build(head, s.at, s.d)
		must(err)
		entries = append(entries, rec.Bytes)
		head = rec.Next()
	}
	return entries
}

func (l *fuzzLog) exportOf(entries [][]byte) []byte {
	var b bytes.Buffer
	for i, e := range entries {
		line, err := json.Marshal(ExportLine(uint64(i), e, l.audit.signSHA256(e), "audit-1"))
		if err != nil {
			panic(err)
		}
		b.Write(line)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// checkpoint signs a checkpoint over entries.
func (l *fuzzLog) checkpoint(entries [][]byte) (signed, root []byte) {
	cr := (&compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}).NewEmptyRange(0)
	for _, e := range entries {
		if err := cr.Append(audit.LeafHash(e), nil); err != nil {
			panic(err)
		}
	}
	root, err := cr.GetRootHash(nil)
	if err != nil {
		panic(err)
	}
	text := string(log.Checkpoint{Origin: fuzzOrigin, Size: uint64(len(entries)), Hash: root}.Marshal())
	signed, err = note.Sign(&note.Note{Text: text}, l.signer)
	if err != nil {
		panic(err)
	}
	return signed, root
}

func (l *fuzzLog) options(export, cp, prev []byte) Options {
	return Options{Log: bytes.NewReader(export), Checkpoint: cp, PreviousCheckpoint: prev, CheckpointKey: l.verifierKey(),
		AuditKeys: []*ecdsa.PublicKey{&l.audit.PublicKey}, ClientCAs: l.cas}
}

func (l *fuzzLog) verifierKey() string {
	vkey, err := note.NewEd25519VerifierKey(fuzzOrigin, l.notePriv.Public().(ed25519.PublicKey))
	if err != nil {
		panic(err)
	}
	return vkey
}

// mustBeViolation checks the documented error type: bgctl reports the
// entry index from it.
func mustBeViolation(t *testing.T, err error) {
	t.Helper()
	var v *Violation
	if !errors.As(err, &v) {
		t.Fatalf("Verify failed with %T, not a *Violation: %v", err, err)
	}
}

// exportEntries reads the entry bytes of an export independently of
// readLines, for the oracle.
func exportEntries(t *testing.T, export []byte) [][]byte {
	var out [][]byte
	for _, line := range bytes.Split(export, []byte("\n")) {
		if line = bytes.TrimSpace(line); len(line) == 0 {
			continue
		}
		var w struct{ Entry []byte }
		if err := json.Unmarshal(line, &w); err != nil {
			t.Fatalf("a verified export has a line that is not JSON: %v", err)
		}
		out = append(out, w.Entry)
	}
	return out
}

// FuzzVerify runs the offline verifier on arbitrary exports and
// checkpoints, with the fuzz log's keys. Whatever it accepts must be the
// fuzz log itself: its entries, byte for byte and in order (the export's
// JSON around them may vary), under a checkpoint the test signed.
func FuzzVerify(f *testing.F) {
	l := theFuzzLog(f)
	n := len(l.entries)
	full, first := l.checkpoints[n], l.checkpoints[1]
	f.Add(l.export, full, []byte(nil))
	f.Add(l.export, full, first)
	f.Add(l.export, first, []byte(nil))
	f.Add(l.export, first, full)
	f.Add(l.exportOf(l.entries[:1]), first, []byte(nil))
	f.Add(l.exportOf(l.entries[:n-1]), full, []byte(nil))
	swapped := append([][]byte{l.entries[1], l.entries[0]}, l.entries[2:]...)
	f.Add(l.exportOf(swapped), full, []byte(nil))
	f.Add(bytes.ReplaceAll(l.export, []byte("\n"), []byte("\r\n\n")), full, []byte(nil))
	f.Add([]byte(`{"index":0,"entry":"e30=","signature":""}`), full, []byte(nil))
	f.Add([]byte("{}\n[]\nnull\n"), []byte(fuzzOrigin+"\n1\n\n\n— x\n"), []byte(nil))

	f.Fuzz(func(t *testing.T, export, cp, prev []byte) {
		sum, err := Verify(l.options(export, cp, prev))
		if err != nil {
			mustBeViolation(t, err)
			return
		}
		got := exportEntries(t, export)
		if len(got) > n {
			t.Fatalf("verified %d entries; the test signed %d", len(got), n)
		}
		for i, e := range got {
			if !bytes.Equal(e, l.entries[i]) {
				t.Fatalf("verified entry %d is not the one the test signed:\n%s\n%s", i, e, l.entries[i])
			}
		}
		for _, c := range [][]byte{cp, prev} {
			if len(c) == 0 {
				continue
			}
			if nt, err := note.Open(c, note.VerifierList(l.verifier)); err != nil || l.notes[nt.Text] == nil {
				t.Fatalf("verified under a checkpoint the test did not sign: %q", c)
			}
		}
		if sum.Entries != uint64(len(got)) || sum.Origin != fuzzOrigin {
			t.Fatalf("summary %+v for %d entries", sum, len(got))
		}
	})
}

// rechain gives fuzzed entries the index and prev a broker would, so that
// the replay, and not the hash chain, is what has to refuse them.
func rechain(raws [][]byte) [][]byte {
	prev := audit.ZeroPrev
	out := make([][]byte, len(raws))
	for i, raw := range raws {
		out[i] = raw
		if e, err := audit.Parse(raw); err == nil {
			e.Index, e.Prev = uint64(i), hex.EncodeToString(prev)
			if b, err := json.Marshal(e); err == nil {
				out[i] = b
			}
		}
		prev = audit.LeafHash(out[i])
	}
	return out
}

// FuzzReplay signs whatever entries the fuzzer writes, one JSON object a
// line, as a broker holding the audit and checkpoint keys would, so that
// the lifecycle replay sees arbitrary content behind valid signatures. It
// must never crash, and a log it accepts must be self-consistent: its
// counts match its entries, and every token was issued for a request the
// log approved before.
func FuzzReplay(f *testing.F) {
	l := theFuzzLog(f)
	f.Add(bytes.Join(l.entries, []byte("\n")))
	f.Add(bytes.Join(l.entries[:3], []byte("\n")))
	withoutReview := append(append([][]byte{}, l.entries[:4]...), l.entries[5:]...)
	f.Add(bytes.Join(withoutReview, []byte("\n")))
	twoTokens := append(append([][]byte{}, l.entries[:7]...), l.entries[6:]...)
	f.Add(bytes.Join(twoTokens, []byte("\n")))
	// A TTL whose nanoseconds wrap around int64 to the 30 minutes the grant
	// then lasts: signed, chained and consistent, but not what was asked.
	f.Add(bytes.Join(l.build(1800+1<<55), []byte("\n")))
	f.Add([]byte(`{"v":1,"type":"policy_loaded","payload":{"policy":{"groups":{"a":["x"]},"accounts":[{"name":"n","quorum":[[{"group":"a","approvals":1000000000}]]}]},"identity":{"mode":"cn"}}}`))

	f.Fuzz(func(t *testing.T, b []byte) {
		var raws [][]byte
		for _, r := range bytes.Split(b, []byte("\n")) {
			if len(bytes.TrimSpace(r)) > 0 {
				raws = append(raws, r)
			}
		}
		if len(raws) == 0 || len(raws) > 64 {
			return
		}
		entries := rechain(raws)
		cp, _ := l.checkpoint(entries)
		sum, err := Verify(l.options(l.exportOf(entries), cp, nil))
		if err != nil {
			mustBeViolation(t, err)
			return
		}
		types, approved := map[string]int{}, map[string]bool{}
		for _, raw := range entries {
			e, err := audit.Parse(raw)
			if err != nil {
				t.Fatalf("accepted an entry that does not parse: %q", raw)
			}
			types[string(e.Type)]++
			switch e.Type {
			case audit.TypeRequestCreated:
				var p audit.RequestCreated
				if err := json.Unmarshal(e.Payload, &p); err != nil || p.TTLSeconds <= 0 || p.TTLSeconds > int64(math.MaxInt64/time.Second) {
					t.Fatalf("accepted request %q for %d seconds, which is no duration (%v)", e.Request, p.TTLSeconds, err)
				}
			case audit.TypeRequestApproved:
				approved[e.Request] = true
			case audit.TypeTokenIssued:
				if !approved[e.Request] {
					t.Fatalf("accepted a token for request %q, which the log never approved", e.Request)
				}
			}
		}
		if sum.Entries != uint64(len(entries)) || sum.CheckpointSize != sum.Entries ||
			sum.Requests != types[string(audit.TypeRequestCreated)] || sum.Grants != types[string(audit.TypeRequestApproved)] ||
			sum.Tokens != types[string(audit.TypeTokenIssued)] || sum.Reviews != types[string(audit.TypeRequestReviewed)] {
			t.Fatalf("summary %+v does not count entries %v", sum, types)
		}
	})
}

// FuzzCheckpoint opens arbitrary checkpoint notes as the verifier does. A
// note that opens must carry the text the test signed and the test key's
// very signature. The signed-note format lets other keys cosign (witnesses)
// and lets a key's repeated lines be ignored, so lines other than that
// signature may differ; nothing that the signature covers may.
func FuzzCheckpoint(f *testing.F) {
	l := theFuzzLog(f)
	for _, n := range l.checkpoints[1:] {
		f.Add(n)
	}
	full := l.checkpoints[len(l.entries)]
	otherSkey, _, err := note.GenerateKey(bytes.NewReader(fuzzSeed("witness")), "witness.example")
	if err != nil {
		f.Fatal(err)
	}
	witness, err := note.NewSigner(otherSkey)
	if err != nil {
		f.Fatal(err)
	}
	text, _, _ := strings.Cut(string(full), "\n\n")
	cosigned, err := note.Sign(&note.Note{Text: text + "\n"}, l.signer, witness)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(cosigned)
	f.Add(bytes.Replace(full, []byte("\n\n"), []byte("\nextension line\n\n"), 1))
	f.Add(bytes.ReplaceAll(full, []byte("\n"), []byte("\r\n")))
	f.Add([]byte(fuzzOrigin + "\n18446744073709551615\nAAAA\n\n— " + fuzzOrigin + " AAAAAAAA\n"))

	f.Fuzz(func(t *testing.T, msg []byte) {
		k := newKeyChain(nil, l.verifier)
		cp, err := k.openCheckpoint(msg, fuzzOrigin)
		if err != nil {
			return
		}
		opened, err := note.Open(msg, note.VerifierList(l.verifier))
		if err != nil {
			t.Fatalf("parseCheckpoint accepted a note that does not open: %v", err)
		}
		orig := l.notes[opened.Text]
		if orig == nil {
			t.Fatalf("accepted a checkpoint whose text the test never signed: %q", opened.Text)
		}
		want, _ := note.Open(orig, note.VerifierList(l.verifier))
		if len(opened.Sigs) != 1 || opened.Sigs[0] != want.Sigs[0] {
			t.Fatalf("accepted other signatures %v; the test made %v", opened.Sigs, want.Sigs)
		}
		if !bytes.Equal(cp.Hash, l.roots[cp.Size]) || cp.Origin != fuzzOrigin {
			t.Fatalf("checkpoint %+v is not what the test signed", cp)
		}
	})
}

// FuzzCheckpointBody signs arbitrary checkpoint texts with the log's own
// key, to reach the body parser that an unsigned note never gets to: what
// the verifier takes from a signed body must be a well-formed checkpoint
// of its log.
func FuzzCheckpointBody(f *testing.F) {
	l := theFuzzLog(f)
	for _, n := range l.checkpoints[1:] {
		text, _, _ := strings.Cut(string(n), "\n\n")
		f.Add(text + "\n")
	}
	f.Add(fuzzOrigin + "\n0\n\n")
	f.Add(fuzzOrigin + "\n-1\n" + strings.Repeat("A", 43) + "=\n")
	f.Add(fuzzOrigin + "\n00000000000000000000001\n" + strings.Repeat("A", 43) + "B\nextra\n")
	f.Add("other.example/log\n1\n" + strings.Repeat("A", 43) + "=\n")

	f.Fuzz(func(t *testing.T, text string) {
		msg, err := note.Sign(&note.Note{Text: text}, l.signer)
		if err != nil {
			return
		}
		cp, err := checkpoint.Open(msg, fuzzOrigin, l.verifier)
		if err != nil {
			return
		}
		if cp.Origin != fuzzOrigin || len(cp.Hash) != 32 || !strings.HasPrefix(text, fuzzOrigin+"\n") {
			t.Fatalf("accepted %+v from %q", cp, text)
		}
	})
}

// rotation builds a key_activated payload that introduces next, signed by
// the current and the next key as the broker's keyring does.
func (l *fuzzLog) rotation(purpose string) []byte {
	var pub, old crypto.PublicKey
	var signOld, signNew func([]byte) []byte
	noteKey := ""
	switch purpose {
	case "audit":
		pub, old = &l.nextAudit.PublicKey, &l.audit.PublicKey
		signOld, signNew = l.audit.signSHA256, l.nextAudit.signSHA256
	case "checkpoint":
		np := l.nextNote.Public().(ed25519.PublicKey)
		pub, old = np, l.notePriv.Public()
		signOld = func(b []byte) []byte { return ed25519.Sign(l.notePriv, b) }
		signNew = func(b []byte) []byte { return ed25519.Sign(l.nextNote, b) }
		var err error
		if noteKey, err = note.NewEd25519VerifierKey(fuzzOrigin, np); err != nil {
			panic(err)
		}
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		panic(err)
	}
	kid, err := keyid.Thumbprint(pub)
	if err != nil {
		panic(err)
	}
	oldKID, err := keyid.Thumbprint(old)
	if err != nil {
		panic(err)
	}
	stmt, err := statement.Rotation(purpose, "", oldKID, kid, pub, fuzzT0)
	if err != nil {
		panic(err)
	}
	b, err := json.Marshal(audit.KeyChange{Purpose: purpose, KID: kid, Label: "next-" + purpose, Previous: oldKID,
		PublicPEM: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})), Rotation: stmt,
		OldSignature: signOld(stmt), NewSignature: signNew(stmt), NoteKey: noteKey})
	if err != nil {
		panic(err)
	}
	return b
}

// FuzzFollowRotation feeds arbitrary key_activated payloads to the key
// chain. The chain may only ever grow by the keys the test rotated in: a
// payload the fuzzer changed must never smuggle in a key of its own.
func FuzzFollowRotation(f *testing.F) {
	l := theFuzzLog(f)
	audit1, cp1 := l.rotation("audit"), l.rotation("checkpoint")
	f.Add(audit1)
	f.Add(cp1)
	f.Add(bytes.Replace(audit1, []byte(`"purpose":"audit"`), []byte(`"purpose":"checkpoint"`), 1))
	f.Add([]byte(`{"purpose":"token","kid":"t","label":"t"}`))
	f.Add([]byte(`{"purpose":"audit","kid":"k","previous":"p","public_pem":"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"}`))

	probe := []byte("probe")
	probeSig := ed25519.Sign(l.nextNote, probe)
	f.Fuzz(func(t *testing.T, payload []byte) {
		k := newKeyChain([]*ecdsa.PublicKey{&l.audit.PublicKey}, l.verifier)
		if v := k.follow(0, &audit.Entry{Type: audit.TypeKeyActivated, Payload: payload}); v != nil {
			return
		}
		switch {
		case len(k.audit)+len(k.checkpoint) > 3:
			t.Fatalf("one entry added %d audit and %d checkpoint keys", len(k.audit)-1, len(k.checkpoint)-1)
		case len(k.audit) == 2 && !k.audit[1].Equal(&l.nextAudit.PublicKey):
			t.Fatalf("a rotation brought in an audit key the test never made")
		case len(k.checkpoint) == 2 && !k.checkpoint[1].v.Verify(probe, probeSig):
			t.Fatalf("a rotation brought in a checkpoint key the test never made: %s", k.checkpoint[1].v.Name())
		}
	})
}
