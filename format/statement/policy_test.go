package statement

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"
)

const (
	hashA = "1111111111111111111111111111111111111111111111111111111111111111"
	hashB = "2222222222222222222222222222222222222222222222222222222222abcdef"
)

func samplePolicy() PolicyStatement {
	return PolicyStatement{Decision: DecisionApprove, Origin: "example.org/breakglass", Previous: hashA, Policy: hashB, Comment: CommentDigest("ok"), Time: t0}
}

func TestPolicyStatementRoundTrip(t *testing.T) {
	for _, s := range []PolicyStatement{samplePolicy(), {Decision: DecisionDeny, Origin: "o", Previous: NoPrevious, Policy: hashB, Comment: CommentDigest(""), Time: t0}} {
		b := s.Marshal()
		got, err := ParsePolicyStatement(b)
		if err != nil || got != s {
			t.Fatalf("round trip %+v != %+v (%v)", got, s, err)
		}
		if !strings.HasPrefix(string(b), PolicyContext+"\n") {
			t.Fatalf("no context line: %q", b)
		}
		// A review statement is never a policy statement, nor the reverse.
		if _, err := Parse(b); err == nil {
			t.Fatal("a policy statement parses as a review statement")
		}
	}
	if _, err := ParsePolicyStatement(sample().Marshal()); err == nil {
		t.Fatal("a review statement parses as a policy statement")
	}
}

func TestParsePolicyStatementIsStrict(t *testing.T) {
	good := string(samplePolicy().Marshal())
	for name, in := range map[string]string{
		"empty":               "",
		"review context":      strings.Replace(good, PolicyContext, StatementContext, 1),
		"no trailing newline": strings.TrimSuffix(good, "\n"),
		"extra line":          good + "proposal x\n",
		"reordered":           swapLines(good, 3, 4),
		"CRLF":                strings.ReplaceAll(good, "\n", "\r\n"),
		"unknown decision":    strings.Replace(good, "decision approve", "decision abstain", 1),
		"upper-case hash":     strings.Replace(good, "policy "+hashB, "policy "+strings.ToUpper(hashB), 1),
		"short hash":          strings.Replace(good, "previous "+hashA, "previous "+hashA[:60], 1),
		"empty previous":      strings.Replace(good, "previous "+hashA, "previous ", 1),
		"previous NONE":       strings.Replace(good, "previous "+hashA, "previous NONE", 1),
		"no change":           strings.Replace(good, "previous "+hashA, "previous "+hashB, 1),
		"prefixed digest":     strings.Replace(good, "policy "+hashB, "policy sha256:"+hashB, 1),
		"non-UTC time":        strings.Replace(good, "2026-11-29T12:00:00Z", "2026-11-29T13:00:00+01:00", 1),
		"fractional time":     strings.Replace(good, "2026-11-29T12:00:00Z", "2026-11-29T12:00:00.5Z", 1),
		"two spaces":          strings.Replace(good, "decision approve", "decision  approve", 1),
		"too long":            good + strings.Repeat("x", 2000),
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := ParsePolicyStatement([]byte(in)); err == nil {
				t.Fatalf("accepted %q", in)
			}
		})
	}
}

func TestCheckPolicy(t *testing.T) {
	s := samplePolicy()
	e := PolicyExpect{Decision: DecisionApprove, Origin: s.Origin, Previous: hashA, Policy: hashB, Comment: "ok", Now: t0.Add(time.Minute)}
	if err := CheckPolicy(s, e); err != nil {
		t.Fatal(err)
	}
	d := e
	d.Comment, d.CommentDigest = "", CommentDigest("ok")
	if err := CheckPolicy(s, d); err != nil {
		t.Fatalf("by comment digest: %v", err)
	}
	for field, mod := range map[string]func(*PolicyExpect){
		"decision": func(e *PolicyExpect) { e.Decision = DecisionDeny },
		"origin":   func(e *PolicyExpect) { e.Origin = "other.example/log" },
		"previous": func(e *PolicyExpect) { e.Previous = hashB },
		"policy":   func(e *PolicyExpect) { e.Policy = hashA },
		"comment":  func(e *PolicyExpect) { e.Comment = "not ok" },
		"time":     func(e *PolicyExpect) { e.Now = t0.Add(-MaxSkew - time.Second) },
	} {
		x := e
		mod(&x)
		var m *MismatchError
		if err := CheckPolicy(s, x); !errors.As(err, &m) || m.Field != field {
			t.Errorf("%s: %v", field, err)
		}
	}
	// Live reviews are judged within the skew; a bundle within MaxAge.
	old := e
	old.Now = t0.Add(MaxSkew + time.Second)
	if err := CheckPolicy(s, old); err == nil || !strings.Contains(err.Error(), "before the broker's clock") {
		t.Fatalf("an old statement: %v", err)
	}
	old.MaxAge = 72 * time.Hour
	if err := CheckPolicy(s, old); err != nil {
		t.Fatalf("within the change window: %v", err)
	}
	old.Now = t0.Add(72*time.Hour + time.Second)
	if err := CheckPolicy(s, old); err == nil {
		t.Fatal("older than the change window")
	}
	// A genesis statement names no previous policy.
	g := s
	g.Previous = NoPrevious
	ge := e
	ge.Previous = ""
	if err := CheckPolicy(g, ge); err != nil {
		t.Fatalf("genesis: %v", err)
	}
	if err := CheckPolicy(s, ge); err == nil {
		t.Fatal("a statement about a change accepted as a genesis")
	}
}

func TestBundle(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cert := selfSigned(t, key)
	text := samplePolicy().Marshal()
	sig, err := Sign(key, text)
	if err != nil {
		t.Fatal(err)
	}
	one := MarshalBundleLine(Signed{Statement: text, Signature: sig, Certificate: cert.Raw})
	if strings.Count(string(one), "\n") != 1 || !strings.Contains(string(one), `"statement":"breakglass policy statement v1\ndecision approve\n`) {
		t.Fatalf("line %s", one)
	}
	got, err := ParseBundle(strings.NewReader("# signatures for the change in PR 42\n" + string(one) + "\n" + string(one)))
	if err != nil || len(got) != 2 || string(got[0].Statement) != string(text) || string(got[1].Signature) != string(sig) || string(got[0].Certificate) != string(cert.Raw) {
		t.Fatalf("parse: %v %d", err, len(got))
	}
	if got, err := ParseBundle(strings.NewReader("")); err != nil || len(got) != 0 {
		t.Fatalf("empty bundle: %v", err)
	}
	line := strings.TrimSuffix(string(one), "\n")
	for name, in := range map[string]string{
		"not JSON":          "statement: x\n",
		"unknown key":       strings.Replace(line, `"certificate"`, `"certificate":"","x"`, 1),
		"upper-case key":    strings.Replace(line, `"statement"`, `"Statement"`, 1),
		"duplicate key":     strings.Replace(line, `{"statement"`, `{"signature":"AA==","statement"`, 1),
		"two values":        line + " {}",
		"missing signature": strings.Replace(line, `"signature":"`, `"signature":"`+"\x00", 1),
		"empty certificate": `{"statement":"x","signature":"AA==","certificate":""}`,
		"url-safe base64":   `{"statement":"x","signature":"-_-_","certificate":"AA=="}`,
		"array":             `[]`,
		"too long":          `{"statement":"` + strings.Repeat("a", MaxBundleLine) + `"}`,
		"too many":          strings.Repeat(line+"\n", MaxBundleStatements+1),
	} {
		t.Run(name, func(t *testing.T) {
			if got, err := ParseBundle(strings.NewReader(in)); err == nil {
				t.Fatalf("accepted %q: %d", in, len(got))
			}
		})
	}
}

func FuzzParsePolicyStatement(f *testing.F) {
	f.Add(samplePolicy().Marshal())
	f.Add([]byte(PolicyContext + "\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParsePolicyStatement(b)
		if err != nil {
			return
		}
		if string(s.Marshal()) != string(b) {
			t.Fatalf("accepted a text that is not canonical: %q", b)
		}
	})
}

func FuzzParseBundle(f *testing.F) {
	f.Add(MarshalBundleLine(Signed{Statement: samplePolicy().Marshal(), Signature: []byte{1}, Certificate: []byte{2}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := ParseBundle(strings.NewReader(string(b)))
		if err != nil {
			return
		}
		for _, s := range got {
			if len(s.Statement) == 0 || len(s.Signature) == 0 || len(s.Certificate) == 0 {
				t.Fatal("accepted an incomplete line")
			}
		}
	})
}
