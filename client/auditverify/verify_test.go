package auditverify

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"errors"
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

// signedBy is an export of entries, each signed by the key given for it
// (the fuzz log's audit key when nil).
func (l *fuzzLog) signedBy(entries [][]byte, keys map[int]rfc6979) []byte {
	var b bytes.Buffer
	for i, e := range entries {
		k, ok := keys[i]
		if !ok {
			k = l.audit
		}
		line, _ := json.Marshal(ExportLine(uint64(i), e, k.signSHA256(e), "kid"))
		b.Write(append(line, '\n'))
	}
	return b.Bytes()
}

// chain builds entries after the fuzz log's first n entries.
func (l *fuzzLog) chain(n int, drafts ...audit.Draft) [][]byte {
	entries := append([][]byte(nil), l.entries[:n]...)
	e, _ := audit.Parse(entries[n-1])
	head := audit.Head{Size: uint64(n), LeafHash: audit.LeafHash(entries[n-1]), Time: e.Time}
	for _, d := range drafts {
		rec, err := audit.Build(head, head.Time.Add(time.Second), d)
		must(err)
		entries = append(entries, rec.Bytes)
		head = rec.Next()
	}
	return entries
}

func violationsOf(t *testing.T, err error) *Violations {
	t.Helper()
	var vs *Violations
	if !errors.As(err, &vs) {
		t.Fatalf("Verify returned %T %v, not *Violations", err, err)
	}
	return vs
}

func has(vs *Violations, index int64, reason string) bool {
	for _, v := range vs.List {
		if v.Index == index && strings.Contains(v.Reason, reason) {
			return true
		}
	}
	return false
}

// The whole log is checked: a tampered entry after an unrelated earlier
// violation is reported too, each with its index and reason, and the
// violations past the limit are counted.
func TestEveryViolationIsReported(t *testing.T) {
	l := theFuzzLog(nil)
	n := len(l.entries)
	var lines []Line
	for _, raw := range bytes.Split(bytes.TrimSpace(l.export), []byte("\n")) {
		var x Line
		must(json.Unmarshal(raw, &x))
		lines = append(lines, x)
	}
	lines[1].Signature = nil // an unsigned refusal: the export was taken too early
	tok := indexOfType(l.entries, audit.TypeTokenIssued)
	lines[tok].Entry = bytes.Replace(lines[tok].Entry, []byte(`"db.example"`), []byte(`"db.other"`), 1)
	var b bytes.Buffer
	for _, x := range lines {
		j, _ := json.Marshal(x)
		b.Write(append(j, '\n'))
	}
	_, err := Verify(l.options(b.Bytes(), l.checkpoints[n], nil))
	vs := violationsOf(t, err)
	if !has(vs, 1, "not signed") || !has(vs, int64(tok), "signature does not verify") || !has(vs, int64(tok+1), "does not link") {
		t.Fatalf("violations:\n%s", vs)
	}
	if vs.List[0].Index != 1 {
		t.Fatalf("the first violation listed is %v", vs.List[0])
	}
	// A limit lists the first ones and counts them all.
	o := l.options(b.Bytes(), l.checkpoints[n], nil)
	o.MaxViolations = 1
	_, err = Verify(o)
	if vs := violationsOf(t, err); len(vs.List) != 1 || vs.Count < 3 || !strings.Contains(vs.String(), "more") {
		t.Fatalf("with a limit of 1: %d listed, %d counted", len(vs.List), vs.Count)
	}
}

func indexOfType(entries [][]byte, typ audit.Type) int {
	for i, raw := range entries {
		if e, err := audit.Parse(raw); err == nil && e.Type == typ {
			return i
		}
	}
	return -1
}

// A CRL revokes from its revocation time on: a review signed before its
// signer's certificate was revoked stays valid; one signed after is not.
func TestCRLRevocationTime(t *testing.T) {
	l := theFuzzLog(nil)
	n := len(l.entries)
	bob, err := x509.ParseCertificate(l.bobDER)
	must(err)
	ca := l.ca
	crl := func(at time.Time) *x509.RevocationList {
		der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: fuzzT0, NextUpdate: fuzzT0.Add(48 * time.Hour),
			RevokedCertificateEntries: []x509.RevocationListEntry{{SerialNumber: bob.SerialNumber, RevocationTime: at}}}, ca, l.caKey)
		must(err)
		out, err := x509.ParseRevocationList(der)
		must(err)
		return out
	}
	review := indexOfType(l.entries, audit.TypeRequestReviewed)
	o := l.options(l.export, l.checkpoints[n], nil)
	o.CRLs = []*x509.RevocationList{crl(fuzzT0.Add(time.Hour))}
	if _, err := Verify(o); err != nil {
		t.Fatalf("a review signed before its certificate was revoked is refused: %v", err)
	}
	o = l.options(l.export, l.checkpoints[n], nil)
	o.CRLs = []*x509.RevocationList{crl(fuzzT0.Add(time.Minute))}
	_, err = Verify(o)
	if vs := violationsOf(t, err); !has(vs, int64(review), "revoked at") {
		t.Fatalf("a review signed after its certificate was revoked: %s", vs)
	}
}

// An entry must verify with the audit key in force at its index: after a
// rotation, the retired key signs nothing but the rotation's own
// key_retired entry.
func TestRetiredAuditKeySignsNothingAfter(t *testing.T) {
	l := theFuzzLog(nil)
	var rot audit.KeyChange
	must(json.Unmarshal(l.rotation("audit"), &rot))
	entries := l.chain(3,
		audit.Draft{Type: audit.TypeKeyActivated, Actor: "broker", Payload: json.RawMessage(l.rotation("audit"))},
		audit.Draft{Type: audit.TypeKeyRetired, Actor: "broker", Payload: audit.KeyChange{Purpose: "audit", KID: rot.Previous, Label: "audit", Reason: "replaced by " + rot.KID}},
		audit.Draft{Type: audit.TypePermissionDenied, Actor: "mallory", Payload: audit.PermissionDenied{Principal: "mallory", Count: 1,
			WindowStart: fuzzT0, WindowEnd: fuzzT0.Add(time.Minute), Methods: map[string]int{"/x": 1}}},
	)
	cp, _ := l.checkpoint(entries)
	// The rotation and its retirement by the old key, what follows by the new.
	good := l.signedBy(entries, map[int]rfc6979{5: l.nextAudit})
	if _, err := Verify(l.options(good, cp, nil)); err != nil {
		t.Fatalf("a rotated log does not verify: %v", err)
	}
	// The retired key signing the entry after its retirement.
	_, err := Verify(l.options(l.signedBy(entries, nil), cp, nil))
	if vs := violationsOf(t, err); !has(vs, 5, "retired") {
		t.Fatalf("an entry signed by the retired key: %s", vs)
	}
	// The new key signing the rotation itself, before it was in force.
	_, err = Verify(l.options(l.signedBy(entries, map[int]rfc6979{3: l.nextAudit, 4: l.nextAudit, 5: l.nextAudit}), cp, nil))
	if vs := violationsOf(t, err); !has(vs, 3, "does not verify with the audit key in force") {
		t.Fatalf("the rotation signed by the new key: %s", vs)
	}
}

// The summary counts the tokens of solo grants apart and lists the grants,
// and marks a policy change that weakens the policy; an entry that hides
// a weakening change it records is refused.
func TestWeakeningPolicyChangeIsReported(t *testing.T) {
	l := theFuzzLog(nil)
	e0, _ := audit.Parse(l.entries[0])
	var pl audit.PolicyLoaded
	must(json.Unmarshal(e0.Payload, &pl))
	old, err := policy.FromCanonicalJSON(pl.Policy)
	must(err)
	solo, err := policy.Load([]byte(`
groups: {sre: [alice], db: [bob], owners: [olivia]}
accounts:
  - name: prod-db
    owner: owners
    requesters: [sre]
    audiences: [db.example]
    max_ttl: 1h
    approval_window: 30m
    activation_window: 10m
    ack_sinks: [soc]
    solo: {delay: 10m, max_ttl: 30m}
    quorum: [{require: [{group: db, approvals: 1}]}]
`), "policy.yaml")
	must(err)
	loaded := func(weakens bool) audit.Draft {
		return audit.Draft{Type: audit.TypePolicyLoaded, Actor: "operator", Payload: audit.PolicyLoaded{Hash: solo.Hash(), Previous: old.Hash(), Source: "policy.yaml",
			Policy: solo.CanonicalJSON(), Identity: pl.Identity, Changes: policy.ChangeLines(old, solo), Weakens: weakens,
			Reset: &audit.PolicyReset{Operator: "frank", Reason: "the policy admins' keys were lost"}}}
	}
	entries := l.chain(len(l.entries), loaded(true))
	cp, _ := l.checkpoint(entries)
	sum, err := Verify(l.options(l.exportOf(entries), cp, nil))
	if err != nil {
		t.Fatal(err)
	}
	last := sum.Policies[len(sum.Policies)-1]
	if !last.Weakens || sum.WeakeningPolicies != 1 || !strings.Contains(strings.Join(last.Changes, "\n"), "WEAKENS accounts[prod-db].solo") {
		t.Fatalf("the solo change: %+v", last)
	}
	if sum.QuorumTokens != 1 || sum.SoloTokens != 0 || sum.SoloGrantCount != 0 {
		t.Fatalf("token counts %+v", sum)
	}
	// Hidden: the entry lists its changes but says it weakens nothing.
	entries = l.chain(len(l.entries), loaded(false))
	cp, _ = l.checkpoint(entries)
	_, err = Verify(l.options(l.exportOf(entries), cp, nil))
	if vs := violationsOf(t, err); !has(vs, int64(len(l.entries)), "does not say so") {
		t.Fatalf("a hidden weakening: %s", vs)
	}
}

var _ = ecdsa.PublicKey{}

// What the verifier reads is what jq, Python and go-jose read: an entry
// or a token's claims that two readers could resolve differently is a
// violation, whatever the signatures say.
func TestAmbiguousBytesAreViolations(t *testing.T) {
	l := theFuzzLog(nil)
	tok := indexOfType(l.entries, audit.TypeTokenIssued)
	resign := func(i int, entry []byte) []byte {
		entries := append([][]byte(nil), l.entries...)
		entries[i] = entry // as written: rechain would re-encode it
		for j := i + 1; j < len(entries); j++ {
			e, _ := audit.Parse(entries[j])
			e.Prev = hex.EncodeToString(audit.LeafHash(entries[j-1]))
			entries[j], _ = json.Marshal(e)
		}
		cp, _ := l.checkpoint(entries)
		_, err := Verify(l.options(l.exportOf(entries), cp, nil))
		if err == nil {
			t.Fatalf("verifies with entry %d:\n%s", i, entry)
		}
		var vs *Violations
		errors.As(err, &vs)
		return []byte(vs.String())
	}
	e, _ := audit.Parse(l.entries[tok])
	var p audit.TokenIssued
	must(json.Unmarshal(e.Payload, &p))
	claims := strings.Replace(string(p.Claims), `"aud":"db.example"`, `"aud":"payments.example"`, 1)
	claims = strings.TrimSuffix(claims, "}") + `,"Aud":"db.example"}`
	p.Claims = json.RawMessage(claims)
	e.Payload, _ = json.Marshal(p)
	forged, _ := json.Marshal(e)
	if got := resign(tok, forged); !strings.Contains(string(got), fmt.Sprintf("entry %d: the token's claims are not what relying parties would read", tok)) ||
		!strings.Contains(string(got), `"Aud" in $ differs from key "aud" only in case`) {
		t.Fatalf("a case-variant claim:\n%s", got)
	}
	hidden := bytes.Replace(l.entries[tok], []byte(`"actor"`), []byte(`"Type":"permission_denied","actor"`), 1)
	if got := resign(tok, hidden); !strings.Contains(string(got), fmt.Sprintf("entry %d: the entry is not the broker's encoding of an entry", tok)) {
		t.Fatalf("a case-variant entry key:\n%s", got)
	}
}

// A policy_loaded that changes the identity rule while a request is open
// would re-map who signed it: the broker refuses that, so the verifier
// does too; the same change once nothing is open is a change like any
// other, marked as weakening, and later requests are judged by it.
func TestIdentityChangeWithOpenWork(t *testing.T) {
	l := theFuzzLog(nil)
	e0, _ := audit.Parse(l.entries[0])
	var pl audit.PolicyLoaded
	must(json.Unmarshal(e0.Payload, &pl))
	old, err := policy.FromCanonicalJSON(pl.Policy)
	must(err)
	wider := old.WithIdentity(policy.Identity{Mode: "uri", URIPrefix: "spiffe://example.org/"})
	loaded := audit.Draft{Type: audit.TypePolicyLoaded, Actor: "operator", Payload: audit.PolicyLoaded{Hash: wider.Hash(), Previous: old.Hash(), Source: "policy.yaml",
		Policy: wider.CanonicalJSON(), Identity: *wider.Identity, Reset: &audit.PolicyReset{Operator: "frank", Reason: "the fuzz policy has no policy admins"}}}
	review := indexOfType(l.entries, audit.TypeRequestReviewed)
	entries := l.chain(review+1, loaded)
	cp, _ := l.checkpoint(entries)
	_, err = Verify(l.options(l.exportOf(entries), cp, nil))
	if vs := violationsOf(t, err); !has(vs, int64(review+1), "would name requester alice of open request "+fuzzRequest+" nobody") {
		t.Fatalf("an identity change under an open request: %s", vs)
	}
	entries = l.chain(len(l.entries), loaded)
	cp, _ = l.checkpoint(entries)
	sum, err := Verify(l.options(l.exportOf(entries), cp, nil))
	if err != nil {
		t.Fatalf("an identity change once nothing is open: %v", err)
	}
	if last := sum.Policies[len(sum.Policies)-1]; !last.Weakens || !strings.Contains(strings.Join(last.Changes, "\n"), "WEAKENS identity") {
		t.Fatalf("the identity change: %+v", last)
	}
	// The entry and the policy must name the same rule.
	lying := loaded
	p := lying.Payload.(audit.PolicyLoaded)
	p.Identity = pl.Identity
	lying.Payload = p
	entries = l.chain(len(l.entries), lying)
	cp, _ = l.checkpoint(entries)
	_, err = Verify(l.options(l.exportOf(entries), cp, nil))
	if vs := violationsOf(t, err); !has(vs, int64(len(l.entries)), "but its entry says") {
		t.Fatalf("an entry naming another rule than its policy: %s", vs)
	}
}

// The requester is known by the key that signed the request: a review
// signed with that key never counts, whatever principal its certificate
// names (here a second certificate for alice's key naming bob, as whoever
// holds the client CA's key could make).
func TestRequesterKeyNeverCounts(t *testing.T) {
	l := theFuzzLog(nil)
	i := indexOfType(l.entries, audit.TypeRequestReviewed)
	e, _ := audit.Parse(l.entries[i])
	var p audit.RequestReviewed
	must(json.Unmarshal(e.Payload, &p))
	bobURI, _ := url.Parse(fuzzURIPrefix + "bob")
	der, err := x509.CreateCertificate(nil, &x509.Certificate{SerialNumber: big.NewInt(77), Subject: pkix.Name{CommonName: "bob"},
		NotBefore: l.ca.NotBefore, NotAfter: l.ca.NotAfter, URIs: []*url.URL{bobURI}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}},
		l.ca, l.aliceKey.Public(), l.caKey)
	must(err)
	p.Certificate = der
	p.Signature, err = statement.Sign(l.aliceKey, p.Statement)
	must(err)
	e.Payload, _ = json.Marshal(p)
	entries := append([][]byte(nil), l.entries...)
	entries[i], _ = json.Marshal(e)
	entries = rechain(entries)
	cp, _ := l.checkpoint(entries)
	_, err = Verify(l.options(l.exportOf(entries), cp, nil))
	if vs := violationsOf(t, err); !has(vs, int64(i), "is signed by the key that signed request "+fuzzRequest+" as its requester alice") {
		t.Fatalf("a review by the requester's key under bob's name: %s", vs)
	}
}
