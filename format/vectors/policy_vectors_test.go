package vectors

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/bgbroker/breakglass/format/principal"
	"github.com/bgbroker/breakglass/format/statement"
)

// The policy hashes the policy statement vectors name: the policy in force
// and the one a change puts in force.
const (
	previousPolicy = policyHash
	newPolicy      = "4b2d1c0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c"
)

type policyInputs struct {
	Decision string `json:"decision"`
	Origin   string `json:"origin"`
	// Previous is the hash of the policy in force, "" for a genesis.
	Previous string `json:"previous"`
	Policy   string `json:"policy"`
	// Comment is the comment itself, not its digest.
	Comment string `json:"comment"`
	Time    string `json:"time"`
}

// policyExpectation is the change a verifier checks a statement against,
// its clock, and how old a statement may be (max_age_seconds: the
// policy's change window for a bundle; 0 means the five-minute skew of a
// review made over the API).
type policyExpectation struct {
	Decision      string `json:"decision"`
	Origin        string `json:"origin"`
	Previous      string `json:"previous"`
	Policy        string `json:"policy"`
	Comment       string `json:"comment"`
	Now           string `json:"now"`
	MaxAgeSeconds int64  `json:"max_age_seconds"`
}

type policyVector struct {
	Name        string        `json:"name"`
	Description string        `json:"description"`
	Inputs      *policyInputs `json:"inputs,omitempty"`
	Text        string        `json:"text"`
	SHA256      string        `json:"sha256"`
	Key         string        `json:"key"`
	Signature   string        `json:"signature"`
	// BundleLine is the statement as one line of a policy.sigs bundle.
	BundleLine string            `json:"bundle_line,omitempty"`
	Expect     policyExpectation `json:"expect"`
	Verdict    string            `json:"verdict"`
	Reason     string            `json:"reason,omitempty"`
}

func policyVectors(t *testing.T, kf *keyFile) []policyVector {
	t.Helper()
	base := statement.PolicyStatement{Decision: statement.DecisionApprove, Origin: origin, Previous: previousPolicy, Policy: newPolicy, Time: signedAt}
	var out []policyVector
	good := func(name, desc, key string, s statement.PolicyStatement, comment string, maxAge time.Duration, bundle bool) policyVector {
		s.Comment = statement.CommentDigest(comment)
		text := s.Marshal()
		k := kf.key(t, key)
		sig := sign(t, k, text)
		prev := s.Previous
		if prev == statement.NoPrevious {
			prev = ""
		}
		v := policyVector{Name: name, Description: desc, Text: string(text), SHA256: hexSHA(text), Key: key, Signature: b64(sig),
			Inputs: &policyInputs{Decision: s.Decision, Origin: s.Origin, Previous: prev, Policy: s.Policy, Comment: comment, Time: s.Time.UTC().Format(time.RFC3339)},
			Expect: policyExpectation{Decision: s.Decision, Origin: s.Origin, Previous: prev, Policy: s.Policy, Comment: comment,
				Now: checkAt.Format(time.RFC3339), MaxAgeSeconds: int64(maxAge / time.Second)},
			Verdict: "accept"}
		if bundle {
			v.BundleLine = string(statement.MarshalBundleLine(statement.Signed{Statement: text, Signature: sig, Certificate: k.cert.Raw}))
		}
		out = append(out, v)
		return v
	}
	reject := func(v policyVector, name, desc, reason string) {
		v.Name, v.Description, v.Verdict, v.Reason, v.BundleLine = name, desc, "reject", reason, ""
		v.SHA256 = hexSHA([]byte(v.Text))
		out = append(out, v)
	}
	approve := good("approve-ecdsa-p256", "a policy admin approves the change from the policy in force to a new one over the API (bgctl policy approve): judged within five minutes", "bob", base, "reviewed the diff: only prod-db's max_ttl", 0, false)
	good("approve-ed25519-bundle", "the same change signed offline for a bundle (bgctl policy sign): judged within the policy's change window, here 72 hours; bundle_line is its policy.sigs line", "erin", base, "", 72*time.Hour, true)
	good("approve-rsa-2048", "an approval with an RSA certificate key", "carol", base, "ok", 0, false)
	deny := base
	deny.Decision = statement.DecisionDeny
	good("deny-ecdsa-p256", "a denial", "bob", deny, "this removes the security approver", 0, false)
	gen := base
	gen.Previous = statement.NoPrevious
	good("genesis-ecdsa-p256", "the first policy of a log, signed by one of its own admins: previous is none", "bob", gen, "", 72*time.Hour, true)
	old := approve
	old.Name, old.Description = "bundle-within-window", "a statement signed 71 hours before it is applied from a bundle, whose change window is 72 hours"
	old.Expect.Now, old.Expect.MaxAgeSeconds = signedAt.Add(71*time.Hour).Format(time.RFC3339), 72*3600
	out = append(out, old)

	sig, _ := base64.StdEncoding.DecodeString(approve.Signature)
	raw := approve
	raw.Signature = b64(p1363(t, sig))
	reject(raw, "ecdsa-raw-r-s", "the ECDSA signature as raw r||s instead of ASN.1 DER", "signature-encoding")
	other := approve
	other.Signature = b64(sign(t, kf.key(t, "mallory"), []byte(approve.Text)))
	reject(other, "other-key", "a valid signature by another principal's key, presented with bob's certificate", "signature")
	altered := approve
	altered.Text = strings.Replace(approve.Text, "policy "+newPolicy, "policy "+strings.Repeat("5", 64), 1)
	altered.Inputs, altered.Expect.Policy = nil, strings.Repeat("5", 64)
	reject(altered, "altered-after-signing", "the policy line changed after signing", "signature")
	mis := func(name, desc, reason string, mod func(*policyExpectation)) {
		v := approve
		mod(&v.Expect)
		reject(v, name, desc, reason)
	}
	mis("other-origin", "presented to another deployment", "origin", func(e *policyExpectation) { e.Origin = "breakglass.test/other" })
	mis("other-previous", "presented after the policy in force changed: the statement was for a change from another policy (a stale proposal)", "previous", func(e *policyExpectation) { e.Previous = strings.Repeat("6", 64) })
	mis("as-genesis", "presented as the signature of a genesis", "previous", func(e *policyExpectation) { e.Previous = "" })
	mis("other-policy", "presented for another new policy (another proposal)", "policy", func(e *policyExpectation) { e.Policy = strings.Repeat("7", 64) })
	mis("approve-as-deny", "an approval presented as a denial", "decision", func(e *policyExpectation) { e.Decision = statement.DecisionDeny })
	mis("other-comment", "presented with another comment", "comment", func(e *policyExpectation) { e.Comment = "ok" })
	mis("too-old-for-the-api", "judged over the API five minutes and one second after its time", "time", func(e *policyExpectation) { e.Now = signedAt.Add(statement.MaxSkew + time.Second).Format(time.RFC3339) })
	mis("older-than-the-window", "applied from a bundle 72 hours and one second after it was signed, with a 72-hour change window", "time", func(e *policyExpectation) {
		e.Now, e.MaxAgeSeconds = signedAt.Add(72*time.Hour+time.Second).Format(time.RFC3339), 72*3600
	})
	mis("from-the-future", "the signer's clock is more than five minutes ahead", "time", func(e *policyExpectation) {
		e.Now = signedAt.Add(-statement.MaxSkew - time.Second).Format(time.RFC3339)
	})

	resigned := func(text string) policyVector {
		v := approve
		v.Inputs, v.Text, v.Signature = nil, text, b64(sign(t, kf.key(t, v.Key), []byte(text)))
		return v
	}
	malformed := func(name, desc, text string) { reject(resigned(text), name, desc, "malformed") }
	tx := approve.Text
	malformed("review-context", "a review statement's context line over the policy statement's lines", strings.Replace(tx, statement.PolicyContext, statement.StatementContext, 1))
	malformed("prefixed-hash", "policy hashes are plain hex, not sha256:-prefixed digests", strings.Replace(tx, "policy "+newPolicy, "policy sha256:"+newPolicy, 1))
	malformed("same-hashes", "previous and policy are the same: no change", strings.Replace(tx, "previous "+previousPolicy, "previous "+newPolicy, 1))
	malformed("empty-previous", "an empty previous line instead of none", strings.Replace(tx, "previous "+previousPolicy, "previous ", 1))
	malformed("abstain", "a decision that does not exist", strings.Replace(tx, "decision approve", "decision abstain", 1))
	malformed("proposal-line", "a line after the time", tx+"proposal 01938a2e-7c4b-7d3f-9a1e-5b6c7d8e9f01\n")
	return out
}

// TestPolicyStatementVectors gives each policy statement vector's verdict
// by the rules the broker and the offline verifier apply, and reads each
// bundle line back.
func TestPolicyStatementVectors(t *testing.T) {
	kf := loadKeys(t)
	rule := principal.Rule{Mode: principal.ModeURI, URIPrefix: uriPrefix}
	for _, v := range read[policyVector](t, "policy-statement.json") {
		if v.Inputs != nil {
			tm, err := time.Parse(time.RFC3339, v.Inputs.Time)
			if err != nil {
				t.Fatal(err)
			}
			s := statement.PolicyStatement{Decision: v.Inputs.Decision, Origin: v.Inputs.Origin, Previous: statement.PreviousLine(v.Inputs.Previous),
				Policy: v.Inputs.Policy, Comment: statement.CommentDigest(v.Inputs.Comment), Time: tm}
			if string(s.Marshal()) != v.Text {
				t.Errorf("%s: the code builds %q from the inputs", v.Name, s.Marshal())
			}
		}
		if hexSHA([]byte(v.Text)) != v.SHA256 {
			t.Errorf("%s: sha256 is not the text's", v.Name)
		}
		k := kf.key(t, v.Key)
		if who, err := rule.Of(k.cert); err != nil || who != k.Principal {
			t.Fatalf("%s: key %s names %q (%v)", v.Name, v.Key, who, err)
		}
		if v.BundleLine != "" {
			got, err := statement.ParseBundle(strings.NewReader(v.BundleLine))
			if err != nil || len(got) != 1 || string(got[0].Statement) != v.Text || b64(got[0].Signature) != v.Signature || string(got[0].Certificate) != string(k.cert.Raw) {
				t.Errorf("%s: the bundle line does not read back: %v", v.Name, err)
			}
		}
		reason, err := judgePolicy(k, v)
		judge(t, v.Name, v.Verdict, v.Reason, reason, err)
	}
}

func judgePolicy(k *testKey, v policyVector) (string, error) {
	st, err := statement.ParsePolicyStatement([]byte(v.Text))
	if err != nil {
		return "malformed", err
	}
	sig, err := base64.StdEncoding.DecodeString(v.Signature)
	if err != nil {
		return "signature-encoding", err
	}
	if err := statement.Verify(k.cert, []byte(v.Text), sig); err != nil {
		if errors.Is(err, statement.ErrSignatureEncoding) {
			return "signature-encoding", err
		}
		return "signature", err
	}
	now, err := time.Parse(time.RFC3339, v.Expect.Now)
	if err != nil {
		return "expect", err
	}
	e := v.Expect
	err = statement.CheckPolicy(st, statement.PolicyExpect{Decision: e.Decision, Origin: e.Origin, Previous: e.Previous, Policy: e.Policy,
		Comment: e.Comment, Now: now, MaxAge: time.Duration(e.MaxAgeSeconds) * time.Second})
	if err != nil {
		var m *statement.MismatchError
		if errors.As(err, &m) {
			return m.Field, err
		}
		return "?", err
	}
	return "", nil
}
