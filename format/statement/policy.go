package statement

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"time"
)

// PolicyContext begins every policy statement: a policy admin's decision
// on one change of the policy (docs/signing.md, "Policy statements").
const PolicyContext = "breakglass policy statement v1"

// NoPrevious is the previous line of a statement about the first policy
// of a log (its genesis), which has no predecessor.
const NoPrevious = "none"

// Policy statement decisions.
const (
	DecisionApprove = "approve"
	DecisionDeny    = "deny"
)

// PolicyStatement is a policy admin's signed decision on a change from
// the policy whose hash is Previous to the one whose hash is Policy. It
// names no proposal: it binds the change itself, so the same statement
// serves a proposal made over the API and a file applied with its bundle
// of signatures, and is worth nothing for any other change.
type PolicyStatement struct {
	// Decision is approve or deny.
	Decision string
	// Origin is the log origin of the deployment.
	Origin string
	// Previous is the hex hash of the policy in force the change starts
	// from, NoPrevious for a genesis.
	Previous string
	// Policy is the hex hash of the policy's canonical JSON.
	Policy string
	// Comment is the digest of the comment.
	Comment string
	// Time is the signer's clock, to the second.
	Time time.Time
}

var policyHashRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// Marshal returns the statement's canonical text, the bytes that are signed.
func (s PolicyStatement) Marshal() []byte {
	return fmt.Appendf(nil, "%s\ndecision %s\norigin %s\nprevious %s\npolicy %s\ncomment %s\ntime %s\n",
		PolicyContext, s.Decision, s.Origin, s.Previous, s.Policy, s.Comment, s.Time.UTC().Format(time.RFC3339))
}

// ParsePolicyStatement reads a policy statement strictly: the exact lines
// in the exact order, each value in its one canonical form.
func ParsePolicyStatement(b []byte) (PolicyStatement, error) {
	var s PolicyStatement
	if len(b) > MaxStatementBytes {
		return s, errors.New("policy statement is too long")
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) != 8 || lines[7] != "" {
		return s, errors.New("policy statement must be 7 lines, each ending in a newline")
	}
	if lines[0] != PolicyContext {
		return s, fmt.Errorf("policy statement does not begin with %q", PolicyContext)
	}
	fields := []string{"decision", "origin", "previous", "policy", "comment", "time"}
	vals := make([]string, len(fields))
	for i, f := range fields {
		k, v, ok := strings.Cut(lines[i+1], " ")
		if !ok || k != f || v == "" {
			return s, fmt.Errorf("policy statement line %d must be %q followed by a value", i+2, f)
		}
		vals[i] = v
	}
	s.Decision, s.Origin, s.Previous, s.Policy, s.Comment = vals[0], vals[1], vals[2], vals[3], vals[4]
	if s.Decision != DecisionApprove && s.Decision != DecisionDeny {
		return s, fmt.Errorf("policy statement decision %q is not approve or deny", s.Decision)
	}
	if !originRE.MatchString(s.Origin) {
		return s, errors.New("policy statement origin is malformed")
	}
	if s.Previous != NoPrevious && !policyHashRE.MatchString(s.Previous) {
		return s, errors.New("policy statement previous must be a policy hash (64 lower-case hex digits) or none")
	}
	if !policyHashRE.MatchString(s.Policy) {
		return s, errors.New("policy statement policy must be a policy hash (64 lower-case hex digits)")
	}
	if s.Previous == s.Policy {
		return s, errors.New("policy statement previous and policy are the same: a change must change the policy")
	}
	if !digestRE.MatchString(s.Comment) {
		return s, errors.New("policy statement comment must be sha256:<64 hex>")
	}
	t, err := time.Parse(time.RFC3339, vals[5])
	if err != nil || t.UTC().Format(time.RFC3339) != vals[5] {
		return s, errors.New("policy statement time must be RFC 3339 UTC to the second, such as 2026-11-29T12:52:10Z (no fraction, no offset other than Z)")
	}
	s.Time = t
	if !bytes.Equal(s.Marshal(), b) {
		return s, errors.New("policy statement is not in canonical form")
	}
	return s, nil
}

// PreviousLine is what a statement's previous line says for the policy
// logged before: its hash, or NoPrevious when there is none.
func PreviousLine(previousHash string) string {
	if previousHash == "" {
		return NoPrevious
	}
	return previousHash
}

// PolicyExpect is the change a policy statement is presented for.
type PolicyExpect struct {
	Decision, Origin string
	// Previous is the hash of the policy in force ("" for a genesis).
	Previous, Policy string
	// Comment is the comment itself; CommentDigest, when set, is its
	// digest instead (what a log records when it keeps no comment).
	Comment, CommentDigest string
	// Now is the judge's clock. A statement may be at most MaxSkew ahead
	// of it and at most MaxAge behind it (MaxSkew when zero): reviews
	// made over the API are judged at once, statements of a bundle may
	// have been signed in a pull request within the policy's change window.
	Now    time.Time
	MaxAge time.Duration
}

// CheckPolicy verifies that s is a statement for exactly this change. Its
// error is a *MismatchError whose field is the line that differs.
func CheckPolicy(s PolicyStatement, e PolicyExpect) error {
	comment := e.CommentDigest
	if comment == "" {
		comment = CommentDigest(e.Comment)
	}
	maxAge := e.MaxAge
	if maxAge < MaxSkew {
		maxAge = MaxSkew
	}
	switch {
	case s.Decision != e.Decision:
		return mismatch("decision", "the statement says %s but the decision is %s", s.Decision, e.Decision)
	case s.Origin != e.Origin:
		return mismatch("origin", "the statement is for log %q, not this one (%q)", s.Origin, e.Origin)
	case s.Previous != PreviousLine(e.Previous):
		return mismatch("previous", "the statement is about a change from policy %s, but the policy in force is %s: it was signed for another change (or the policy changed since)",
			short(s.Previous), short(PreviousLine(e.Previous)))
	case s.Policy != e.Policy:
		return mismatch("policy", "the statement is about policy %s, not %s", short(s.Policy), short(e.Policy))
	case s.Comment != comment:
		return mismatch("comment", "the statement's comment digest does not match the comment")
	}
	if d := s.Time.Sub(e.Now); d > MaxSkew {
		return mismatch("time", "the statement's time %s is %s ahead of the broker's clock; at most %s is allowed (check your clock)",
			s.Time.UTC().Format(time.RFC3339), d.Round(time.Second), MaxSkew)
	} else if -d > maxAge {
		return mismatch("time", "the statement was signed at %s, %s before the broker's clock; at most %s is allowed (sign the change again)",
			s.Time.UTC().Format(time.RFC3339), (-d).Round(time.Second), maxAge)
	}
	return nil
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

// Bounds on a bundle of policy statements (policy.sigs).
const (
	MaxBundleStatements = 64
	// MaxBundleLine bounds one line: a statement, its signature and a
	// certificate of a few kilobytes.
	MaxBundleLine = 32 << 10
)

// Signed is one signed policy statement as a bundle carries it: the
// statement text, the signature and the signer's client certificate.
type Signed struct {
	Statement   []byte
	Signature   []byte
	Certificate []byte
}

// bundleLine is a line of policy.sigs: JSON with the statement as text
// (so a reviewer reads what was signed) and the signature and the DER
// certificate in standard base64.
type bundleLine struct {
	Statement   string `json:"statement"`
	Signature   string `json:"signature"`
	Certificate string `json:"certificate"`
}

// MarshalBundleLine is one line of a bundle, newline included.
// Bundles are JSON Lines: each signer's line can be appended alone (in a
// pull request, say), and concatenated files are a bundle.
func MarshalBundleLine(s Signed) []byte {
	b, err := json.Marshal(bundleLine{Statement: string(s.Statement), Signature: base64.StdEncoding.EncodeToString(s.Signature),
		Certificate: base64.StdEncoding.EncodeToString(s.Certificate)})
	if err != nil {
		panic(err) // strings only: cannot fail
	}
	return append(b, '\n')
}

// ParseBundle reads a bundle of signed policy statements: one JSON object
// per line with exactly statement, signature and certificate, blank lines
// and lines starting with # ignored. Only the form is checked here; each
// statement is judged when the bundle is applied.
func ParseBundle(r io.Reader) ([]Signed, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), MaxBundleLine)
	var out []Signed
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		if len(out) == MaxBundleStatements {
			return nil, fmt.Errorf("line %d: a bundle holds at most %d statements", n, MaxBundleStatements)
		}
		var bl bundleLine
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&bl); err != nil {
			return nil, fmt.Errorf("line %d: not a signed policy statement {statement, signature, certificate}: %w", n, err)
		}
		if dec.More() {
			return nil, fmt.Errorf("line %d: more than one JSON value", n)
		}
		if err := exactKeys(line, "statement", "signature", "certificate"); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		sig, err1 := base64.StdEncoding.Strict().DecodeString(bl.Signature)
		cert, err2 := base64.StdEncoding.Strict().DecodeString(bl.Certificate)
		if bl.Statement == "" || err1 != nil || err2 != nil || len(sig) == 0 || len(cert) == 0 {
			return nil, fmt.Errorf("line %d: statement, signature and certificate (standard base64 of the DER) are all required", n)
		}
		out = append(out, Signed{Statement: []byte(bl.Statement), Signature: sig, Certificate: cert})
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("a line is longer than %d bytes", MaxBundleLine)
		}
		return nil, err
	}
	return out, nil
}

// exactKeys refuses an object that names a key twice (encoding/json would
// take the last) or in another case than allowed (encoding/json would
// match it regardless of case).
func exactKeys(b []byte, allowed ...string) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	if _, err := dec.Token(); err != nil {
		return err
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		k, _ := tok.(string)
		if !slices.Contains(allowed, k) {
			return fmt.Errorf("unknown key %q (keys are %s, in lower case)", k, strings.Join(allowed, ", "))
		}
		if seen[k] {
			return fmt.Errorf("%q is given twice", k)
		}
		seen[k] = true
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return err
		}
	}
	return nil
}
