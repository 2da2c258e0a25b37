package vectors

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/bgbroker/breakglass/format/principal"
	"github.com/bgbroker/breakglass/format/statement"
)

// ensureRequester adds alice, the requester of the request vectors, to a
// key file made before she signed anything (only with -update).
func ensureRequester(t *testing.T, kf *keyFile) {
	t.Helper()
	if kf.has("alice") {
		return
	}
	if !*update {
		t.Fatal("keys.json has no alice (go test ./format/vectors -update adds her)")
	}
	ca := kf.key(t, "ca")
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(uriPrefix + "alice")
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(100), Subject: pkix.Name{CommonName: "alice"}, NotBefore: ca.cert.NotBefore, NotAfter: ca.cert.NotAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, URIs: []*url.URL{u}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, k.Public(), ca.signer)
	if err != nil {
		t.Fatal(err)
	}
	priv, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	kf.Keys = append(kf.Keys, &testKey{Name: "alice", Type: "ecdsa-p256", Principal: "alice", signer: k,
		Use:            "a requester's client certificate key: signs request statements",
		PrivateKeyPEM:  string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: priv})),
		CertificatePEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))})
	kf.complete(t)
}

// ---- request statements ----

type requestInputs struct {
	Origin        string `json:"origin"`
	Request       string `json:"request"`
	Account       string `json:"account"`
	TTLSeconds    int64  `json:"ttl_seconds"`
	Drill         bool   `json:"drill"`
	Solo          bool   `json:"solo"`
	Ticket        string `json:"ticket"`
	Justification string `json:"justification"`
	Time          string `json:"time"`
}

// requestExpect is the request a verifier checks a statement against:
// what the log records (the TTL resolved), what a zero ttl_seconds stands
// for on that account, and the verifier's clock.
type requestExpect struct {
	Origin            string `json:"origin"`
	Request           string `json:"request"`
	Account           string `json:"account"`
	TTLSeconds        int64  `json:"ttl_seconds"`
	DefaultTTLSeconds int64  `json:"default_ttl_seconds"`
	Drill             bool   `json:"drill"`
	Solo              bool   `json:"solo"`
	Ticket            string `json:"ticket"`
	Justification     string `json:"justification"`
	Now               string `json:"now"`
}

type requestVector struct {
	Name        string         `json:"name"`
	Description string         `json:"description"`
	Inputs      *requestInputs `json:"inputs,omitempty"`
	Text        string         `json:"text"`
	SHA256      string         `json:"sha256"`
	Key         string         `json:"key"`
	Signature   string         `json:"signature"`
	Expect      requestExpect  `json:"expect"`
	// Verdict is accept or reject; Reason is the rule that refuses it:
	// malformed, signature-encoding, signature, or the mismatched line
	// (origin, request, account, ttl_seconds, drill, solo, ticket,
	// justification, time).
	Verdict string `json:"verdict"`
	Reason  string `json:"reason,omitempty"`
}

func (in requestInputs) statement(t *testing.T) statement.Request {
	tm, err := time.Parse(time.RFC3339, in.Time)
	if err != nil {
		t.Fatal(err)
	}
	return statement.Request{Origin: in.Origin, ID: in.Request, Account: in.Account, TTLSeconds: in.TTLSeconds, Drill: in.Drill, Solo: in.Solo,
		Ticket: in.Ticket, Justification: in.Justification, Time: tm}
}

func requestVectors(t *testing.T, kf *keyFile) []requestVector {
	t.Helper()
	c := baseContent()
	base := statement.Request{Origin: origin, ID: requestID, Account: c.Account, TTLSeconds: c.TTLSeconds, Ticket: c.Ticket, Justification: c.Justification,
		Time: created.Truncate(time.Second)}
	expectFor := func(s statement.Request, defaultTTL int64) requestExpect {
		ttl := s.TTLSeconds
		if ttl == 0 {
			ttl = defaultTTL
		}
		return requestExpect{Origin: s.Origin, Request: s.ID, Account: s.Account, TTLSeconds: ttl, DefaultTTLSeconds: defaultTTL, Drill: s.Drill, Solo: s.Solo,
			Ticket: s.Ticket, Justification: s.Justification, Now: s.Time.Add(20 * time.Second).Format(time.RFC3339)}
	}
	var out []requestVector
	good := func(name, desc, key string, s statement.Request, defaultTTL int64) requestVector {
		text := s.Marshal()
		v := requestVector{Name: name, Description: desc, Text: string(text), SHA256: hexSHA(text), Key: key,
			Inputs: &requestInputs{Origin: s.Origin, Request: s.ID, Account: s.Account, TTLSeconds: s.TTLSeconds, Drill: s.Drill, Solo: s.Solo,
				Ticket: s.Ticket, Justification: s.Justification, Time: s.Time.UTC().Format(time.RFC3339)},
			Signature: b64(sign(t, kf.key(t, key), text)), Expect: expectFor(s, 3600), Verdict: "accept"}
		out = append(out, v)
		return v
	}
	reject := func(v requestVector, name, desc, reason string) {
		v.Name, v.Description, v.Verdict, v.Reason = name, desc, "reject", reason
		v.SHA256 = hexSHA([]byte(v.Text))
		out = append(out, v)
	}
	req := good("request-ecdsa-p256", "alice asks for 30 minutes on prod-db: the id is hers to choose and becomes the request's; free text in base64", "alice", base, 3600)
	def := base
	def.ID, def.TTLSeconds, def.Ticket = "01938a2e-7c4b-7d3f-9a1e-5b6c7d8e9f03", 0, ""
	good("request-longest", "ttl_seconds 0 asks for the longest the account allows (its max_ttl, 3600 seconds here): the log records the resolved TTL; an empty ticket is the key and one space", "alice", def, 3600)
	solo := base
	solo.ID, solo.Solo, solo.Drill = "01938a2e-7c4b-7d3f-9a1e-5b6c7d8e9f04", true, true
	good("request-solo-drill-ed25519", "a solo drill, signed by an Ed25519 certificate key over the text itself", "erin", solo, 3600)

	sig, _ := base64.StdEncoding.DecodeString(req.Signature)
	raw := req
	raw.Signature = b64(p1363(t, sig))
	reject(raw, "ecdsa-raw-r-s", "the ECDSA signature as raw r||s (what WebCrypto returns) instead of ASN.1 DER", "signature-encoding")
	other := req
	other.Signature = b64(sign(t, kf.key(t, "mallory"), []byte(req.Text)))
	reject(other, "other-key", "a valid signature by mallory's key presented with alice's certificate: an operator cannot make a request in alice's name", "signature")
	longer := req
	longer.Text = strings.Replace(req.Text, "ttl_seconds 1800", "ttl_seconds 3600", 1)
	longer.Inputs, longer.Expect.TTLSeconds = nil, 3600
	reject(longer, "altered-after-signing", "the TTL doubled after signing", "signature")
	mis := func(name, desc, reason string, mod func(*requestExpect)) {
		v := req
		mod(&v.Expect)
		reject(v, name, desc, reason)
	}
	mis("other-origin", "presented to another deployment", "origin", func(e *requestExpect) { e.Origin = "breakglass.test/other" })
	mis("other-request", "presented as another request: a statement makes one request", "request", func(e *requestExpect) { e.Request = "01938a2e-7c4b-7d3f-9a1e-5b6c7d8e9f02" })
	mis("other-account", "presented for another account", "account", func(e *requestExpect) { e.Account = "ledger" })
	mis("longer-grant", "presented for a grant longer than asked", "ttl_seconds", func(e *requestExpect) { e.TTLSeconds = 3600 })
	mis("made-solo", "an ordinary request presented as a solo one (approved with no approver)", "solo", func(e *requestExpect) { e.Solo = true })
	mis("made-drill", "a request presented as a drill", "drill", func(e *requestExpect) { e.Drill = true })
	mis("other-ticket", "presented with another ticket", "ticket", func(e *requestExpect) { e.Ticket = "INC-1" })
	mis("other-justification", "presented with another justification", "justification", func(e *requestExpect) { e.Justification = "routine maintenance" })
	mis("too-late", "checked five minutes and one second after its time", "time", func(e *requestExpect) {
		e.Now = base.Time.Add(statement.MaxSkew + time.Second).Format(time.RFC3339)
	})
	d := out[1]
	d.Expect.DefaultTTLSeconds, d.Expect.TTLSeconds = 1800, 3600
	reject(d, "longest-resolved-otherwise", "ttl_seconds 0 presented with a TTL other than the account's longest", "ttl_seconds")

	malformed := func(name, desc, text string) {
		v := req
		v.Inputs, v.Text, v.Signature = nil, text, b64(sign(t, kf.key(t, v.Key), []byte(text)))
		reject(v, name, desc, "malformed")
	}
	tx := req.Text
	malformed("unpadded-base64", "the ticket's base64 without its padding", strings.Replace(tx, "ticket SU5DLTQ3MTE=", "ticket SU5DLTQ3MTE", 1))
	malformed("crlf", "lines ending in CR LF", strings.ReplaceAll(tx, "\n", "\r\n"))
	malformed("review-context", "the review statement's context line", strings.Replace(tx, statement.RequestContext, statement.StatementContext, 1))
	malformed("fractional-time", "a fraction of a second in the time", strings.Replace(tx, "12:52:10Z", "12:52:10.120Z", 1))
	malformed("leading-zero-ttl", "ttl_seconds with a leading zero", strings.Replace(tx, "ttl_seconds 1800", "ttl_seconds 01800", 1))
	malformed("requester-line", "a requester line: the requester is who the certificate names", strings.Replace(tx, "account ", "requester alice\naccount ", 1))
	return out
}

// TestRequestStatementVectors builds each text from its inputs and judges
// each vector as the broker and the verifier do.
func TestRequestStatementVectors(t *testing.T) {
	kf := loadKeys(t)
	rule := principal.Rule{Mode: principal.ModeURI, URIPrefix: uriPrefix}
	for _, v := range read[requestVector](t, "request-statement.json") {
		if v.Inputs != nil && string(v.Inputs.statement(t).Marshal()) != v.Text {
			t.Errorf("%s: the code builds %q from the inputs", v.Name, v.Inputs.statement(t).Marshal())
		}
		if hexSHA([]byte(v.Text)) != v.SHA256 {
			t.Errorf("%s: sha256 is not the text's", v.Name)
		}
		k := kf.key(t, v.Key)
		if who, err := rule.Of(k.cert); err != nil || who != k.Principal {
			t.Fatalf("%s: key %s names %q (%v)", v.Name, v.Key, who, err)
		}
		reason, err := judgeRequest(k.cert, v)
		judge(t, v.Name, v.Verdict, v.Reason, reason, err)
	}
}

func judgeRequest(cert *x509.Certificate, v requestVector) (string, error) {
	st, err := statement.ParseRequest([]byte(v.Text))
	if err != nil {
		return "malformed", err
	}
	sig, err := base64.StdEncoding.DecodeString(v.Signature)
	if err != nil {
		return "signature-encoding", err
	}
	if err := statement.Verify(cert, []byte(v.Text), sig); err != nil {
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
	err = statement.CheckRequest(st, statement.Asked{Origin: e.Origin, ID: e.Request, Account: e.Account, Ticket: e.Ticket, Justification: e.Justification,
		TTLSeconds: e.TTLSeconds, DefaultTTLSeconds: e.DefaultTTLSeconds, Drill: e.Drill, Solo: e.Solo}, now)
	var m *statement.MismatchError
	if errors.As(err, &m) {
		return m.Field, err
	}
	return "", err
}
