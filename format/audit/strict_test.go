package audit

import (
	"encoding/json"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bgbroker/breakglass/format/policy"
)

// Every payload the broker writes comes back from Decode and
// DecodePayload as it was: the strict reading accepts exactly what Build
// writes.
func TestStrictReadingAcceptsWhatBuildWrites(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 52, 10, 123456789, time.UTC)
	payloads := map[Type]any{
		TypePolicyLoaded: PolicyLoaded{Hash: "h", Source: "p.yaml", Policy: json.RawMessage(`{"a":1}`), Identity: Identity{Mode: "uri", URIPrefix: "spiffe://x/"}, Changes: []string{"c"},
			Approvals: []Signed{{Statement: []byte("s")}}, Proposal: "p", Genesis: GenesisSigned, Reset: &PolicyReset{Operator: "o", Reason: "r"}},
		TypeRequestCreated:       RequestCreated{Justification: "<db> & \u2028 down", TTLSeconds: 60, CreatedAt: t0, ApprovalDeadline: t0.Add(time.Hour), Quorum: policy.Rule{{{Group: "g", Approvals: 1}}}, ContentVersion: 2},
		TypeRequestReviewed:      RequestReviewed{Decision: "approve", Groups: []string{}, Statement: []byte("s"), Signature: []byte{0, 1}, Certificate: []byte{2}},
		TypeRequestApproved:      RequestApproved{ApprovedAt: t0, Assignment: map[string]string{"b": "g", "a": "h"}},
		TypeRequestDenied:        RequestFinal{Reason: "r", At: t0, Denials: []string{"x"}},
		TypeTokenIssued:          TokenIssued{JTI: "j", Claims: json.RawMessage(`{"iss":"x"}`), IssuedAt: t0},
		TypePermissionDenied:     PermissionDenied{Principal: "m", Count: 1, Methods: map[string]int{"/b": 1, "/a": 2}},
		TypeAlertAcked:           AlertDelivery{EventID: "e", Sink: "s"},
		TypeAlertDeadAcked:       DeadLetterAcknowledged{EventID: "e", EventType: "t", Sink: "s", Notes: "n"},
		TypeReviewOpened:         PostReviewOpened{ID: "i", Excluded: nil},
		TypeReviewClosed:         PostReviewClosed{ID: "i", Signed: Signed{Statement: []byte("x")}},
		TypeAccountAttested:      AccountAttested{ID: "i"},
		TypeKeyActivated:         KeyChange{Purpose: "audit", KID: "k", Rotation: []byte("r")},
		TypeStoreRestored:        StoreRestored{Operator: "o", Forced: true, NewestCheckpoint: []byte("n")},
		TypeSSHCertIssued:        SSHCertificateIssued{Serial: "1", CriticalOptions: map[string]string{}},
		TypePolicyProposed:       PolicyProposed{Proposal: "p", Hash: "h", Policy: json.RawMessage(`{"a":1}`), ExpiresAt: t0, Changes: []string{"c"}},
		TypePolicyReviewed:       PolicyReviewed{Proposal: "p", Decision: "approve", Signed: Signed{Statement: []byte("s")}},
		TypePolicyProposalClosed: PolicyProposalClosed{Proposal: "p", State: "stale"},
		TypePolicyRefused:        PolicyRefused{Hash: "h", Missing: 2, Signers: []string{}, Problems: []string{"x"}},
		TypeX509CertIssued:       X509CertificateIssued{Serial: "1", Certificate: []byte{1}},
	}
	head := Head{}
	for typ, pl := range payloads {
		rec, err := Build(head, t0, Draft{Type: typ, Actor: "a", Request: "r", Payload: pl})
		if err != nil {
			t.Fatal(err)
		}
		e, err := Decode(rec.Bytes)
		if err != nil {
			t.Fatalf("%s: %v\n%s", typ, err, rec.Bytes)
		}
		got, err := e.DecodePayload()
		if err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		if !reflect.DeepEqual(reflect.ValueOf(got).Elem().Interface(), pl) && typ != TypeReviewOpened {
			t.Fatalf("%s: %+v, not %+v", typ, got, pl)
		}
	}
}

// The second trick: a case-variant "Type" that encoding/json
// would read and jq would not. Any key that two readers could resolve
// differently is refused, with the key named.
func TestStrictReadingRefusesAmbiguity(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 52, 10, 0, time.UTC)
	rec, err := Build(Head{}, t0, Draft{Type: TypeTokenIssued, Actor: "alice", Request: "r", Payload: TokenIssued{JTI: "j"}})
	if err != nil {
		t.Fatal(err)
	}
	good := string(rec.Bytes)
	for _, tc := range []struct{ name, entry, why string }{
		{"case variant", strings.Replace(good, `"actor"`, `"Type":"permission_denied","actor"`, 1), `"Type" in $ differs from key "type" only in case`},
		{"duplicate", strings.Replace(good, `"actor"`, `"type":"permission_denied","actor"`, 1), `"type" appears twice`},
		{"unknown field", strings.Replace(good, `"actor"`, `"hidden":true,"actor"`, 1), `unknown key "hidden"`},
		{"reformatted", strings.Replace(good, `,"actor"`, `, "actor"`, 1), "canonical"},
	} {
		if _, err := Decode([]byte(tc.entry)); err == nil || !strings.Contains(err.Error(), tc.why) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.why)
		}
	}
	e, _ := Decode(rec.Bytes)
	e.Payload = json.RawMessage(`{"jti":"j","JTI":"k","kid":"","audience":"","issued_at":"0001-01-01T00:00:00Z","expires_at":"0001-01-01T00:00:00Z","token_sha256":"","claims":null,"issuance":0}`)
	if _, err := e.DecodePayload(); err == nil || !strings.Contains(err.Error(), `"JTI"`) {
		t.Errorf("a case-variant payload key: %v", err)
	}
	e.Type = "grant_approved_by_magic"
	if _, err := e.DecodePayload(); !errors.Is(err, ErrUnknownType) {
		t.Errorf("an unknown type: %v", err)
	}
}

// Every entry type declared in this package has a payload to be read
// strictly: a type added without one would make the verifier refuse every
// entry of it.
func TestEveryTypeHasAPayload(t *testing.T) {
	fset := token.NewFileSet()
	names, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, name := range names {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		{
			for _, d := range f.Decls {
				g, ok := d.(*ast.GenDecl)
				if !ok || g.Tok != token.CONST {
					continue
				}
				for _, spec := range g.Specs {
					vs := spec.(*ast.ValueSpec)
					if id, ok := vs.Type.(*ast.Ident); !ok || id.Name != "Type" {
						continue
					}
					for _, v := range vs.Values {
						lit, ok := v.(*ast.BasicLit)
						if !ok {
							continue
						}
						name, _ := strconv.Unquote(lit.Value)
						n++
						if NewPayload(Type(name)) == nil {
							t.Errorf("entry type %q has no payload in NewPayload", name)
						}
					}
				}
			}
		}
	}
	if n < 20 {
		t.Fatalf("found only %d entry types", n)
	}
}
