package statement

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// RequestContext begins every request statement.
const RequestContext = "breakglass request statement v1"

// MaxRequestBytes bounds what ParseRequest reads: a justification of 2000
// bytes and a ticket of 128, in base64, with the other lines.
const MaxRequestBytes = 4096

// MaxTTLSeconds is the longest TTL a request statement may name (a year).
const MaxTTLSeconds = 31536000

// Request is what a requester signs with the key of their client
// certificate when they ask for access: the request as they made it, in a
// form no other signed object of the broker shares. The requester picks
// its id, which becomes the request's id, so a statement makes one
// request at most; the log keeps it with the certificate, so that an
// auditor knows who asked by their key, and a review signed by that key
// never counts.
type Request struct {
	// Origin is the log origin of the deployment.
	Origin string
	// ID is the new request's id, a UUID the requester chose.
	ID      string
	Account string
	// TTLSeconds is the grant length asked for, in whole seconds; zero
	// asks for the longest the account allows (its max_ttl, or its solo
	// max_ttl for a solo request).
	TTLSeconds    int64
	Drill         bool
	Solo          bool
	Ticket        string
	Justification string
	// Time is the requester's clock, to the second.
	Time time.Time
}

var (
	requestAccountRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
	ttlRE            = regexp.MustCompile(`^(0|[1-9][0-9]{0,7})$`)
)

// Marshal returns the statement's canonical text, the bytes that are signed.
func (r Request) Marshal() []byte {
	return fmt.Appendf(nil, "%s\norigin %s\nrequest %s\naccount %s\nttl_seconds %d\ndrill %t\nsolo %t\nticket %s\njustification %s\ntime %s\n",
		RequestContext, r.Origin, r.ID, r.Account, r.TTLSeconds, r.Drill, r.Solo,
		base64.StdEncoding.EncodeToString([]byte(r.Ticket)), base64.StdEncoding.EncodeToString([]byte(r.Justification)),
		r.Time.UTC().Format(time.RFC3339))
}

// ParseRequest reads a request statement strictly: the exact lines in the
// exact order, and only the canonical form of each value.
func ParseRequest(b []byte) (Request, error) {
	var r Request
	if len(b) > MaxRequestBytes {
		return r, fmt.Errorf("request statement is longer than %d bytes", MaxRequestBytes)
	}
	lines := strings.Split(string(b), "\n")
	fields := []string{"origin", "request", "account", "ttl_seconds", "drill", "solo", "ticket", "justification", "time"}
	if len(lines) != len(fields)+2 || lines[len(lines)-1] != "" {
		return r, fmt.Errorf("request statement must be %d lines, each ending in a newline", len(fields)+1)
	}
	if lines[0] != RequestContext {
		return r, fmt.Errorf("request statement does not begin with %q", RequestContext)
	}
	vals := make([]string, len(fields))
	for i, f := range fields {
		k, v, ok := strings.Cut(lines[i+1], " ")
		if !ok || k != f {
			return r, fmt.Errorf("request statement line %d must be %q, a space and its value", i+2, f)
		}
		vals[i] = v
	}
	r.Origin, r.ID, r.Account = vals[0], vals[1], vals[2]
	switch {
	case !originRE.MatchString(r.Origin):
		return r, errors.New("request statement origin is malformed")
	case !uuidRE.MatchString(r.ID):
		return r, errors.New("request statement request is not a request id (a lower-case UUID)")
	case !requestAccountRE.MatchString(r.Account):
		return r, errors.New("request statement account is not an account name")
	case !ttlRE.MatchString(vals[3]):
		return r, errors.New("request statement ttl_seconds must be a whole number of seconds without leading zeros")
	}
	r.TTLSeconds, _ = strconv.ParseInt(vals[3], 10, 64)
	if r.TTLSeconds > MaxTTLSeconds {
		return r, fmt.Errorf("request statement ttl_seconds is more than %d", MaxTTLSeconds)
	}
	var err error
	if r.Drill, err = parseBool(vals[4]); err != nil {
		return r, fmt.Errorf("request statement drill %w", err)
	}
	if r.Solo, err = parseBool(vals[5]); err != nil {
		return r, fmt.Errorf("request statement solo %w", err)
	}
	ticket, err1 := base64.StdEncoding.Strict().DecodeString(vals[6])
	just, err2 := base64.StdEncoding.Strict().DecodeString(vals[7])
	if err1 != nil || err2 != nil {
		return r, errors.New("request statement ticket and justification must be base64 (RFC 4648 section 4, with padding)")
	}
	r.Ticket, r.Justification = string(ticket), string(just)
	t, err := time.Parse(time.RFC3339, vals[8])
	if err != nil || t.UTC().Format(time.RFC3339) != vals[8] {
		return r, errors.New("request statement time must be RFC 3339 UTC to the second, such as 2026-11-29T12:52:10Z")
	}
	r.Time = t
	if !bytes.Equal(r.Marshal(), b) {
		return r, errors.New("request statement is not in canonical form")
	}
	return r, nil
}

func parseBool(s string) (bool, error) {
	switch s {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, errors.New("must be true or false")
}

// Asked is a request as the broker records it, for CheckRequest.
type Asked struct {
	Origin, ID, Account, Ticket, Justification string
	TTLSeconds                                 int64
	// DefaultTTLSeconds is what a statement's zero ttl_seconds stands for.
	DefaultTTLSeconds int64
	Drill, Solo       bool
}

// CheckRequest verifies that s says exactly the request a: every line
// matches, and s's time is within MaxSkew of now. Its error is a
// *MismatchError naming the line.
func CheckRequest(s Request, a Asked, now time.Time) error {
	ttl := s.TTLSeconds
	if ttl == 0 {
		ttl = a.DefaultTTLSeconds
	}
	switch {
	case s.Origin != a.Origin:
		return mismatch("origin", "the request statement is for log %q, not this one (%q)", s.Origin, a.Origin)
	case s.ID != a.ID:
		return mismatch("request", "the request statement is for request %s, not %s", s.ID, a.ID)
	case s.Account != a.Account:
		return mismatch("account", "the request statement asks for account %s, not %s", s.Account, a.Account)
	case ttl != a.TTLSeconds:
		return mismatch("ttl_seconds", "the request statement asks for %d seconds, not %d", ttl, a.TTLSeconds)
	case s.Drill != a.Drill:
		return mismatch("drill", "the request statement says drill %t, not %t", s.Drill, a.Drill)
	case s.Solo != a.Solo:
		return mismatch("solo", "the request statement says solo %t, not %t", s.Solo, a.Solo)
	case s.Ticket != a.Ticket:
		return mismatch("ticket", "the request statement's ticket is not the request's")
	case s.Justification != a.Justification:
		return mismatch("justification", "the request statement's justification is not the request's")
	}
	if d := s.Time.Sub(now); d > MaxSkew || d < -MaxSkew {
		return mismatch("time", "the request statement's time %s is %s from the broker's clock; at most %s is allowed (check your clock)",
			s.Time.UTC().Format(time.RFC3339), d.Round(time.Second), MaxSkew)
	}
	return nil
}
