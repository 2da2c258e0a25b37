package statement

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

func sampleRequest() Request {
	return Request{Origin: "breakglass.test/vectors", ID: "01938a2e-7c4b-7d3f-9a1e-5b6c7d8e9f01", Account: "prod-db", TTLSeconds: 1800,
		Ticket: "INC-4711", Justification: "primary is down, INC-4711\nsee the bridge", Time: time.Date(2026, 11, 29, 12, 52, 10, 0, time.UTC)}
}

func TestRequestStatement(t *testing.T) {
	r := sampleRequest()
	b := r.Marshal()
	want := "breakglass request statement v1\norigin breakglass.test/vectors\nrequest 01938a2e-7c4b-7d3f-9a1e-5b6c7d8e9f01\naccount prod-db\n" +
		"ttl_seconds 1800\ndrill false\nsolo false\nticket SU5DLTQ3MTE=\njustification cHJpbWFyeSBpcyBkb3duLCBJTkMtNDcxMQpzZWUgdGhlIGJyaWRnZQ==\ntime 2026-11-29T12:52:10Z\n"
	if string(b) != want {
		t.Fatalf("text:\n%s", b)
	}
	got, err := ParseRequest(b)
	if err != nil || got != r {
		t.Fatalf("parse: %v %+v", err, got)
	}
	for _, tc := range []struct{ name, from, to, why string }{
		{"another context", "statement v1", "statement v2", "does not begin with"},
		{"a review statement's type line", "origin ", "type approve\norigin ", "lines"},
		{"upper-case id", "01938a2e", "01938A2E", "not a request id"},
		{"leading zero", "ttl_seconds 1800", "ttl_seconds 01800", "leading zeros"},
		{"negative", "ttl_seconds 1800", "ttl_seconds -1", "leading zeros"},
		{"past a year", "ttl_seconds 1800", "ttl_seconds 31536001", "more than"},
		{"capital bool", "drill false", "drill False", "true or false"},
		{"base64 without padding", "SU5DLTQ3MTE=", "SU5DLTQ3MTE", "base64"},
		{"a fraction of a second", "12:52:10Z", "12:52:10.5Z", "to the second"},
		{"an offset", "12:52:10Z", "12:52:10+00:00", "to the second"},
		{"CRLF", "\n", "\r\n", "does not begin"},
		{"an account name with upper case", "account prod-db", "account Prod-db", "account name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRequest(bytes.Replace(b, []byte(tc.from), []byte(tc.to), 1))
			if err == nil || !strings.Contains(err.Error(), tc.why) {
				t.Fatalf("got %v, want %q", err, tc.why)
			}
		})
	}
	if _, err := ParseRequest(bytes.Repeat([]byte("x"), MaxRequestBytes+1)); err == nil {
		t.Fatal("an oversize statement parses")
	}
	a := Asked{Origin: r.Origin, ID: r.ID, Account: r.Account, Ticket: r.Ticket, Justification: r.Justification, TTLSeconds: 1800, DefaultTTLSeconds: 3600}
	if err := CheckRequest(r, a, r.Time.Add(MaxSkew)); err != nil {
		t.Fatalf("the request as asked: %v", err)
	}
	zero := r
	zero.TTLSeconds = 0
	if err := CheckRequest(zero, a, r.Time); err == nil {
		t.Fatal("ttl 0 stands for the account's default, not 1800 seconds")
	}
	a.DefaultTTLSeconds = 1800
	if err := CheckRequest(zero, a, r.Time); err != nil {
		t.Fatalf("ttl 0 for the default: %v", err)
	}
	for field, mod := range map[string]func(*Asked){
		"origin": func(a *Asked) { a.Origin = "other" }, "request": func(a *Asked) { a.ID = "x" }, "account": func(a *Asked) { a.Account = "x" },
		"ttl_seconds": func(a *Asked) { a.TTLSeconds = 60 }, "drill": func(a *Asked) { a.Drill = true }, "solo": func(a *Asked) { a.Solo = true },
		"ticket": func(a *Asked) { a.Ticket = "" }, "justification": func(a *Asked) { a.Justification = "other" },
	} {
		b := a
		b.TTLSeconds = 1800
		mod(&b)
		var m *MismatchError
		if err := CheckRequest(r, b, r.Time); !errors.As(err, &m) || m.Field != field {
			t.Errorf("%s: %v", field, err)
		}
	}
	var m *MismatchError
	if err := CheckRequest(r, a, r.Time.Add(MaxSkew+time.Second)); !errors.As(err, &m) || m.Field != "time" {
		t.Errorf("time: %v", err)
	}
}

// FuzzParseRequest: a statement ParseRequest accepts is one value with one
// encoding.
func FuzzParseRequest(f *testing.F) {
	good := sampleRequest().Marshal()
	f.Add(good)
	s := sampleRequest()
	s.Drill, s.Solo, s.Ticket, s.TTLSeconds = true, true, "", 0
	f.Add(s.Marshal())
	f.Add(bytes.ReplaceAll(good, []byte("\n"), []byte("\r\n")))
	f.Add(bytes.Replace(good, []byte("ttl_seconds 1800"), []byte("ttl_seconds 99999999999999999999"), 1))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRequest(b)
		if err != nil {
			return
		}
		if !bytes.Equal(r.Marshal(), b) {
			t.Fatalf("accepted a non-canonical statement %q", b)
		}
		again, err := ParseRequest(r.Marshal())
		if err != nil || again != r {
			t.Fatalf("round trip: %v %+v %+v", err, again, r)
		}
	})
}
