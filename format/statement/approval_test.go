package statement

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

func sample() Statement {
	c := Content{ID: "01890000-0000-7000-8000-000000000001", Account: "prod-db", Requester: "alice", Justification: "db down\nINC-1", Ticket: "INC-1", TTLSeconds: 1800, CreatedAt: t0}
	return Statement{Type: TypeApprove, Origin: "example.org/breakglass", Request: c.ID, Content: c.Digest(), Comment: CommentDigest("ok"), Time: t0}
}

func TestStatementRoundTrip(t *testing.T) {
	s := sample()
	b := s.Marshal()
	got, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if got != s {
		t.Fatalf("round trip %+v != %+v", got, s)
	}
	if !strings.HasPrefix(string(b), StatementContext+"\n") {
		t.Fatalf("no context line: %q", b)
	}
}

func TestParseIsStrict(t *testing.T) {
	good := string(sample().Marshal())
	tests := map[string]string{
		"empty":               "",
		"other context":       strings.Replace(good, StatementContext, "breakglass request content v1", 1),
		"no trailing newline": strings.TrimSuffix(good, "\n"),
		"extra line":          good + "extra value\n",
		"reordered":           swapLines(good, 2, 3),
		"CRLF":                strings.ReplaceAll(good, "\n", "\r\n"),
		"unknown type":        strings.Replace(good, "type approve", "type maybe", 1),
		"bad request id":      strings.Replace(good, "request 01890000", "request ../../01890000", 1),
		"upper-case digest":   strings.Replace(good, "content sha256:", "content SHA256:", 1),
		"short digest":        strings.Replace(good, "comment sha256:", "comment sha256:ab", 1)[:len(good)-10] + "\n",
		"non-UTC time":        strings.Replace(good, "2026-11-29T12:00:00Z", "2026-11-29T13:00:00+01:00", 1),
		"fractional time":     strings.Replace(good, "2026-11-29T12:00:00Z", "2026-11-29T12:00:00.5Z", 1),
		"two spaces":          strings.Replace(good, "type approve", "type  approve", 1),
		"origin with space":   strings.Replace(good, "origin example.org/breakglass", "origin example.org breakglass", 1),
		"too long":            good + strings.Repeat("x", 2000),
	}
	for name, in := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := Parse([]byte(in)); err == nil {
				t.Fatalf("accepted %q", in)
			}
		})
	}
}

func TestContentDigestBindsEveryField(t *testing.T) {
	base := Content{ID: "a", Account: "b", Requester: "c", Justification: "d", Ticket: "e", TTLSeconds: 1, Drill: false, CreatedAt: t0}
	seen := map[string]bool{base.Digest(): true}
	for _, c := range []Content{
		{ID: "x", Account: "b", Requester: "c", Justification: "d", Ticket: "e", TTLSeconds: 1, CreatedAt: t0},
		{ID: "a", Account: "x", Requester: "c", Justification: "d", Ticket: "e", TTLSeconds: 1, CreatedAt: t0},
		{ID: "a", Account: "b", Requester: "x", Justification: "d", Ticket: "e", TTLSeconds: 1, CreatedAt: t0},
		{ID: "a", Account: "b", Requester: "c", Justification: "x", Ticket: "e", TTLSeconds: 1, CreatedAt: t0},
		{ID: "a", Account: "b", Requester: "c", Justification: "d", Ticket: "x", TTLSeconds: 1, CreatedAt: t0},
		{ID: "a", Account: "b", Requester: "c", Justification: "d", Ticket: "e", TTLSeconds: 2, CreatedAt: t0},
		{ID: "a", Account: "b", Requester: "c", Justification: "d", Ticket: "e", TTLSeconds: 1, Drill: true, CreatedAt: t0},
		{ID: "a", Account: "b", Requester: "c", Justification: "d", Ticket: "e", TTLSeconds: 1, CreatedAt: t0.Add(time.Nanosecond)},
		// A justification cannot smuggle in a ticket line.
		{ID: "a", Account: "b", Requester: "c", Justification: "d\nticket ZQ==", Ticket: "", TTLSeconds: 1, CreatedAt: t0},
	} {
		d := c.Digest()
		if seen[d] {
			t.Errorf("%+v collides", c)
		}
		seen[d] = true
	}
}

func selfSigned(t *testing.T, key crypto.Signer) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "x"}, NotBefore: t0, NotAfter: t0.Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

func TestSignVerifyEveryKeyType(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	stmt := sample().Marshal()
	for name, k := range map[string]crypto.Signer{"ecdsa": ec, "ed25519": ed, "rsa": rk} {
		t.Run(name, func(t *testing.T) {
			sig, err := Sign(k, stmt)
			if err != nil {
				t.Fatal(err)
			}
			cert := selfSigned(t, k)
			if err := Verify(cert, stmt, sig); err != nil {
				t.Fatal(err)
			}
			if err := Verify(cert, append(stmt[:len(stmt)-1:len(stmt)-1], 'x'), sig); err == nil {
				t.Fatal("verified over other bytes")
			}
			if err := Verify(selfSigned(t, other), stmt, sig); err == nil {
				t.Fatal("verified with another key")
			}
		})
	}
}

func TestCheck(t *testing.T) {
	s := sample()
	ok := func(mod func(*Statement), decision, origin, req, content, comment string, now time.Time) error {
		st := s
		if mod != nil {
			mod(&st)
		}
		return Check(st, decision, origin, req, content, comment, now)
	}
	if err := ok(nil, TypeApprove, s.Origin, s.Request, s.Content, "ok", t0.Add(4*time.Minute)); err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"decision": ok(nil, TypeDeny, s.Origin, s.Request, s.Content, "ok", t0),
		"origin":   ok(nil, TypeApprove, "other", s.Request, s.Content, "ok", t0),
		"request":  ok(nil, TypeApprove, s.Origin, "other", s.Content, "ok", t0),
		"content":  ok(nil, TypeApprove, s.Origin, s.Request, CommentDigest("x"), "ok", t0),
		"comment":  ok(nil, TypeApprove, s.Origin, s.Request, s.Content, "other", t0),
		"skew":     ok(nil, TypeApprove, s.Origin, s.Request, s.Content, "ok", t0.Add(6*time.Minute)),
	} {
		if err == nil {
			t.Errorf("%s mismatch accepted", name)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(sample().Marshal())
	f.Add([]byte(StatementContext + "\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := Parse(b)
		if err != nil {
			return
		}
		if string(s.Marshal()) != string(b) {
			t.Fatalf("accepted a non-canonical statement %q", b)
		}
	})
}

func swapLines(s string, i, j int) string {
	ls := strings.Split(s, "\n")
	ls[i], ls[j] = ls[j], ls[i]
	return strings.Join(ls, "\n")
}
