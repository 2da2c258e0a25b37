package vectors

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/checkpoint"
	"github.com/bgbroker/breakglass/format/keyid"
	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/format/statement"
)

var update = flag.Bool("update", false, "rewrite testdata/vectors from the code (keys.json is made only when missing)")

const dir = "../../testdata/vectors"

// The values every vector shares.
const (
	origin     = "breakglass.test/vectors"
	requestID  = "01938a2e-7c4b-7d3f-9a1e-5b6c7d8e9f01"
	attestID   = "5f0c6b1e-2d3a-4b5c-8d9e-0f1a2b3c4d5e"
	policyHash = "dd35ad6667e67e54f662be931d96a1b62ca375b105badf8979bd46b0f546eeb1"
	uriPrefix  = "spiffe://breakglass.test/user/"
)

var (
	created  = time.Date(2026, 11, 29, 12, 52, 10, 120000000, time.UTC)
	signedAt = time.Date(2026, 11, 29, 12, 53, 0, 0, time.UTC)
	checkAt  = signedAt.Add(30 * time.Second)
)

// ---- keys ----

type keyFile struct {
	Description string     `json:"description"`
	Keys        []*testKey `json:"keys"`
}

type testKey struct {
	Name string `json:"name"`
	// Type is ecdsa-p256, ed25519 or rsa-2048.
	Type string `json:"type"`
	Use  string `json:"use"`
	// Principal is the name the certificate's URI SAN gives under
	// uri_prefix.
	Principal       string `json:"principal,omitempty"`
	PrivateKeyPEM   string `json:"private_key_pem"`
	PublicKeyPEM    string `json:"public_key_pem"`
	CertificatePEM  string `json:"certificate_pem,omitempty"`
	KID             string `json:"kid"`
	NoteVerifierKey string `json:"note_verifier_key,omitempty"`

	signer crypto.Signer
	cert   *x509.Certificate
}

func newKeys(t *testing.T) *keyFile {
	t.Helper()
	gen := func(typ string) crypto.Signer {
		var (
			k   crypto.Signer
			err error
		)
		switch typ {
		case "ecdsa-p256":
			k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		case "ed25519":
			_, k, err = ed25519.GenerateKey(rand.Reader)
		case "rsa-2048":
			k, err = rsa.GenerateKey(rand.Reader, 2048)
		}
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	notBefore, notAfter := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2036, 1, 1, 0, 0, 0, 0, time.UTC)
	ca := gen("ecdsa-p256")
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "breakglass vectors test client CA"},
		NotBefore: notBefore, NotAfter: notAfter, IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, ca.Public(), ca)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	kf := &keyFile{Description: "Published TEST keys for the signing vectors (docs/signing.md). They are public: never trust them for anything. " +
		"Client certificates are issued by the key named ca and name their principal in a URI SAN under " + uriPrefix + "."}
	add := func(name, typ, use, principal string, k crypto.Signer, certDER []byte) {
		pk := &testKey{Name: name, Type: typ, Use: use, Principal: principal, signer: k}
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		pk.PrivateKeyPEM = string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
		if certDER != nil {
			pk.CertificatePEM = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER}))
		}
		kf.Keys = append(kf.Keys, pk)
	}
	add("ca", "ecdsa-p256", "the client CA that issued the principals' certificates", "", ca, caDER)
	serial := int64(2)
	for _, p := range []struct{ name, typ, who string }{
		{"bob", "ecdsa-p256", "bob"}, {"erin", "ed25519", "erin"}, {"carol", "rsa-2048", "carol"}, {"mallory", "ecdsa-p256", "mallory"},
	} {
		k := gen(p.typ)
		u, _ := url.Parse(uriPrefix + p.who)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: p.who}, NotBefore: notBefore, NotAfter: notAfter,
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, URIs: []*url.URL{u}}
		serial++
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, k.Public(), ca)
		if err != nil {
			t.Fatal(err)
		}
		add(p.name, p.typ, "a principal's client certificate key: signs review, review-close and attest statements", p.who, k, der)
	}
	for _, n := range []string{"audit-1", "audit-2"} {
		add(n, "ecdsa-p256", "an audit key: signs audit entries and its rotation statements", "", gen("ecdsa-p256"), nil)
	}
	for _, n := range []string{"checkpoint-1", "checkpoint-2"} {
		add(n, "ed25519", "a checkpoint key: signs checkpoints as signed notes named "+origin, "", gen("ed25519"), nil)
	}
	return kf
}

func (kf *keyFile) complete(t *testing.T) {
	t.Helper()
	for _, k := range kf.Keys {
		if k.signer == nil {
			blk, _ := pem.Decode([]byte(k.PrivateKeyPEM))
			if blk == nil {
				t.Fatalf("key %s: no PEM", k.Name)
			}
			priv, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
			if err != nil {
				t.Fatalf("key %s: %v", k.Name, err)
			}
			k.signer = priv.(crypto.Signer)
		}
		if k.CertificatePEM != "" && k.cert == nil {
			blk, _ := pem.Decode([]byte(k.CertificatePEM))
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				t.Fatalf("key %s: %v", k.Name, err)
			}
			k.cert = c
		}
		pub, err := keyid.PublicPEM(k.signer.Public())
		if err != nil {
			t.Fatal(err)
		}
		k.PublicKeyPEM = string(pub)
		if k.KID, err = keyid.Thumbprint(k.signer.Public()); err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(k.Name, "checkpoint-") {
			if k.NoteVerifierKey, err = note.NewEd25519VerifierKey(origin, k.signer.Public().(ed25519.PublicKey)); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func (kf *keyFile) key(t *testing.T, name string) *testKey {
	t.Helper()
	for _, k := range kf.Keys {
		if k.Name == name {
			return k
		}
	}
	t.Fatalf("no test key %s", name)
	return nil
}

func loadKeys(t *testing.T) *keyFile {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "keys.json"))
	var kf keyFile
	switch {
	case errors.Is(err, os.ErrNotExist) && *update:
		kf = *newKeys(t)
	case err != nil:
		t.Fatal(err)
	default:
		if err := json.Unmarshal(b, &kf); err != nil {
			t.Fatal(err)
		}
	}
	kf.complete(t)
	return &kf
}

// sign signs as a statement signer does, deterministically (RFC 6979
// nonces for ECDSA) so that regenerating the vectors gives the same bytes.
func sign(t *testing.T, k *testKey, msg []byte) []byte {
	t.Helper()
	var (
		sig []byte
		err error
	)
	switch k.signer.Public().(type) {
	case ed25519.PublicKey:
		sig, err = k.signer.Sign(nil, msg, crypto.Hash(0))
	default:
		d := sha256.Sum256(msg)
		sig, err = k.signer.Sign(nil, d[:], crypto.SHA256)
	}
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

// p1363 re-encodes an ASN.1 DER ECDSA signature as raw r||s, as WebCrypto
// returns it.
func p1363(t *testing.T, der []byte) []byte {
	t.Helper()
	var s struct{ R, S *big.Int }
	if _, err := asn1.Unmarshal(der, &s); err != nil {
		t.Fatal(err)
	}
	out := make([]byte, 64)
	s.R.FillBytes(out[:32])
	s.S.FillBytes(out[32:])
	return out
}

// ---- files ----

type file[V any] struct {
	Description string `json:"description"`
	Spec        string `json:"spec"`
	Vectors     []V    `json:"vectors"`
}

func encode(t *testing.T, v any) []byte {
	t.Helper()
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func hexSHA(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// ---- request content ----

type contentInputs struct {
	ContentVersion   int    `json:"content_version"`
	ID               string `json:"id"`
	Account          string `json:"account"`
	Requester        string `json:"requester"`
	Justification    string `json:"justification"`
	Ticket           string `json:"ticket"`
	TTLSeconds       int64  `json:"ttl_seconds"`
	Drill            bool   `json:"drill"`
	CreatedAtSeconds int64  `json:"created_at_seconds"`
	CreatedAtNanos   int32  `json:"created_at_nanos"`
}

func (in contentInputs) content() statement.Content {
	return statement.Content{Version: statement.ContentVersion(in.ContentVersion), ID: in.ID, Account: in.Account, Requester: in.Requester,
		Justification: in.Justification, Ticket: in.Ticket, TTLSeconds: in.TTLSeconds, Drill: in.Drill,
		CreatedAt: time.Unix(in.CreatedAtSeconds, int64(in.CreatedAtNanos)).UTC()}
}

func inputsOf(c statement.Content) contentInputs {
	return contentInputs{ContentVersion: int(c.Version), ID: c.ID, Account: c.Account, Requester: c.Requester, Justification: c.Justification,
		Ticket: c.Ticket, TTLSeconds: c.TTLSeconds, Drill: c.Drill, CreatedAtSeconds: c.CreatedAt.Unix(), CreatedAtNanos: int32(c.CreatedAt.Nanosecond())}
}

type wrongText struct {
	Why    string `json:"why"`
	Text   string `json:"text"`
	Digest string `json:"digest"`
}

type contentVector struct {
	Name        string        `json:"name"`
	Description string        `json:"description"`
	Inputs      contentInputs `json:"inputs"`
	Text        string        `json:"text"`
	Digest      string        `json:"digest"`
	// Wrong are texts that a client could make by mistake; none is the
	// request's content text and none of their digests matches.
	Wrong []wrongText `json:"wrong,omitempty"`
}

func baseContent() statement.Content {
	return statement.Content{Version: statement.ContentV2, ID: requestID, Account: "prod-db", Requester: "alice",
		Justification: "primary is down, INC-4711", Ticket: "INC-4711", TTLSeconds: 1800, CreatedAt: created}
}

func contentVectors() []contentVector {
	var out []contentVector
	add := func(name, desc string, c statement.Content, wrong ...wrongText) {
		for i := range wrong {
			wrong[i].Digest = "sha256:" + hexSHA([]byte(wrong[i].Text))
		}
		out = append(out, contentVector{Name: name, Description: desc, Inputs: inputsOf(c), Text: string(c.Bytes()), Digest: c.Digest(), Wrong: wrong})
	}
	at := func(c statement.Content, nanos int) statement.Content {
		c.CreatedAt = time.Date(2026, 11, 29, 12, 52, 10, nanos, time.UTC)
		return c
	}
	v1 := func(c statement.Content) statement.Content { c.Version = statement.ContentV1; return c }
	replace := func(c statement.Content, from, to string) string {
		return strings.Replace(string(c.Bytes()), from, to, 1)
	}
	c := baseContent()
	add("v2-fraction", "version 2: created_at always has nine fractional digits", c,
		wrongText{Why: "the version 1 rendering (trailing zeros trimmed) under the version 2 context line", Text: replace(c, ".120000000Z", ".12Z")},
		wrongText{Why: "milliseconds, as JavaScript's Date.toISOString() writes them", Text: replace(c, ".120000000Z", ".120Z")})
	add("v2-whole-second", "version 2: a whole second still has nine zeros", at(c, 0),
		wrongText{Why: "no fraction, as version 1 wrote a whole second", Text: replace(at(c, 0), ".000000000Z", "Z")})
	add("v2-nine-digits", "version 2: every digit of the nanoseconds", at(c, 123456789))
	add("v2-microsecond", "version 2: leading zeros of the fraction are kept", at(c, 1000))
	e := c
	e.Ticket, e.Drill, e.Justification = "", true, "replica lag 40 s\nprimärer Knoten ✓"
	add("v2-empty-ticket-drill-unicode", "an empty ticket is the line \"ticket\" followed by one space and nothing else; the justification is base64 of its UTF-8 bytes, newline included", e,
		wrongText{Why: "the ticket line without its space", Text: replace(e, "\nticket \n", "\nticket\n")})
	add("v1-fraction", "version 1 (requests created before version 2): trailing zeros of the fraction are trimmed", v1(c),
		wrongText{Why: "nine digits: the version 2 rendering under the version 1 context line", Text: replace(v1(c), ".12Z", ".120000000Z")})
	add("v1-whole-second", "version 1: a whole second has no fraction and no dot", v1(at(c, 0)),
		wrongText{Why: "a fraction of zeros", Text: replace(v1(at(c, 0)), ":10Z", ":10.000000000Z")})
	add("v1-nine-digits", "version 1: nothing to trim", v1(at(c, 123456789)))
	add("v1-microsecond", "version 1: leading zeros kept, trailing zeros trimmed", v1(at(c, 1000)),
		wrongText{Why: "trailing zeros kept", Text: replace(v1(at(c, 1000)), ".000001Z", ".000001000Z")})
	return out
}

// ---- attestation account text ----

type accountVector struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	Inputs      struct {
		Account    string `json:"account"`
		PolicyHash string `json:"policy_hash"`
	} `json:"inputs"`
	Text   string `json:"text"`
	Digest string `json:"digest"`
}

func accountVectors() []accountVector {
	var v accountVector
	v.Name, v.Description = "attest-prod-db", "the content an attest statement binds: the account and the hash of the policy in force (ListAccounts.policy_hash)"
	v.Inputs.Account, v.Inputs.PolicyHash = "prod-db", policyHash
	v.Text, v.Digest = string(statement.AccountText("prod-db", policyHash)), statement.AccountDigest("prod-db", policyHash)
	return []accountVector{v}
}

// ---- review statements ----

type statementInputs struct {
	Type    string `json:"type"`
	Origin  string `json:"origin"`
	Request string `json:"request"`
	// Content is the digest the statement binds.
	Content string `json:"content"`
	// Comment is the comment or notes themselves, not their digest.
	Comment string `json:"comment"`
	Time    string `json:"time"`
}

// expectation is what a verifier checks a statement against: the action
// it is presented with, and the verifier's clock.
type expectation struct {
	Type    string `json:"type"`
	Origin  string `json:"origin"`
	Request string `json:"request"`
	Content string `json:"content"`
	Comment string `json:"comment"`
	Now     string `json:"now"`
}

type statementVector struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	// Inputs, when present, build Text; texts no signer would build have
	// none.
	Inputs *statementInputs `json:"inputs,omitempty"`
	Text   string           `json:"text"`
	// SHA256 is the hex SHA-256 of Text: what ECDSA and RSA sign, and the
	// WebAuthn challenge of a passkey-signed statement.
	SHA256    string      `json:"sha256"`
	Key       string      `json:"key"`
	Signature string      `json:"signature"`
	Expect    expectation `json:"expect"`
	// Verdict is accept or reject; Reason says which rule refuses it:
	// malformed, signature-encoding, signature, or the mismatched line
	// (type, origin, request, content, comment, time).
	Verdict string `json:"verdict"`
	Reason  string `json:"reason,omitempty"`
}

func statementVectors(t *testing.T, kf *keyFile) []statementVector {
	t.Helper()
	c := baseContent()
	base := statement.Statement{Type: statement.TypeApprove, Origin: origin, Request: requestID, Content: c.Digest(), Time: signedAt}
	expectFor := func(s statement.Statement, comment string) expectation {
		return expectation{Type: s.Type, Origin: s.Origin, Request: s.Request, Content: s.Content, Comment: comment, Now: checkAt.Format(time.RFC3339)}
	}
	var out []statementVector
	// good builds an accepted vector from the statement fields.
	good := func(name, desc, key string, s statement.Statement, comment string) statementVector {
		s.Comment = statement.CommentDigest(comment)
		text := s.Marshal()
		v := statementVector{Name: name, Description: desc, Text: string(text), SHA256: hexSHA(text), Key: key,
			Inputs:    &statementInputs{Type: s.Type, Origin: s.Origin, Request: s.Request, Content: s.Content, Comment: comment, Time: s.Time.UTC().Format(time.RFC3339)},
			Signature: b64(sign(t, kf.key(t, key), text)), Expect: expectFor(s, comment), Verdict: "accept"}
		out = append(out, v)
		return v
	}
	reject := func(v statementVector, name, desc, reason string) {
		v.Name, v.Description, v.Verdict, v.Reason = name, desc, "reject", reason
		v.SHA256 = hexSHA([]byte(v.Text))
		out = append(out, v)
	}
	// resigned is v with its text replaced and signed again by its key.
	resigned := func(v statementVector, text string) statementVector {
		v.Inputs, v.Text, v.Signature = nil, text, b64(sign(t, kf.key(t, v.Key), []byte(text)))
		return v
	}

	approve := good("approve-ecdsa-p256", "an approval signed with an ECDSA P-256 certificate key: ASN.1 DER over SHA-256 of the text", "bob", base, "confirmed on the incident bridge")
	good("approve-ed25519", "an approval signed with an Ed25519 certificate key over the text itself; the empty comment's digest is SHA-256 of no bytes", "erin", base, "")
	good("approve-rsa-2048", "an approval signed with an RSA certificate key: PKCS #1 v1.5 with SHA-256", "carol", base, "ok")
	deny := base
	deny.Type = statement.TypeDeny
	denied := good("deny-ecdsa-p256", "a denial", "bob", deny, "not during the freeze")
	rc := base
	rc.Type = statement.TypeReviewClose
	closed := good("review-close-ecdsa-p256", "closing the post-use review of the grant: request and content are the grant's request and its content digest, comment the digest of the notes", "bob", rc, "used as described; the replica was rebuilt")
	at := base
	at.Type, at.Request, at.Content = statement.TypeAttest, attestID, statement.AccountDigest("prod-db", policyHash)
	attested := good("attest-rsa-2048", "an attestation: request is a fresh id chosen by the signer, content the digest of the account text (account-attestation.json), comment the digest of the notes", "carol", at, "still needed; approvers reviewed")
	edge := approve
	edge.Name, edge.Description = "approve-at-skew-limit", "the statement's time is exactly five minutes from the verifier's clock: still accepted"
	edge.Expect.Now = signedAt.Add(statement.MaxSkew).Format(time.RFC3339)
	out = append(out, edge)

	// Signatures.
	sig, _ := base64.StdEncoding.DecodeString(approve.Signature)
	raw := approve
	raw.Signature = b64(p1363(t, sig))
	reject(raw, "ecdsa-raw-r-s", "the same ECDSA signature as raw r||s (IEEE P1363, what WebCrypto returns) instead of ASN.1 DER", "signature-encoding")
	ed := out[1]
	edSig, _ := base64.StdEncoding.DecodeString(ed.Signature)
	ed.Signature = b64(edSig[:63])
	reject(ed, "ed25519-short", "an Ed25519 signature one byte short", "signature-encoding")
	other := approve
	other.Signature = b64(sign(t, kf.key(t, "mallory"), []byte(approve.Text)))
	reject(other, "other-key", "a valid signature by another principal's key, presented with bob's certificate", "signature")
	altered := approve
	altered.Text = strings.Replace(approve.Text, "comment "+statement.CommentDigest("confirmed on the incident bridge"), "comment "+statement.CommentDigest("approved"), 1)
	altered.Inputs, altered.Expect.Comment = nil, "approved"
	reject(altered, "altered-after-signing", "the comment line changed after signing", "signature")

	// Bindings.
	v1 := c
	v1.Version = statement.ContentV1
	wrongContent := base
	wrongContent.Content = v1.Digest()
	w := good("", "", "bob", wrongContent, "confirmed on the incident bridge")
	out = out[:len(out)-1]
	w.Expect.Content = c.Digest()
	reject(w, "content-v1-for-v2-request", "bound to the version 1 content text of a request whose content_version is 2", "content")
	mis := func(name, desc, reason string, mod func(*expectation)) {
		v := approve
		mod(&v.Expect)
		reject(v, name, desc, reason)
	}
	mis("other-origin", "presented to another deployment", "origin", func(e *expectation) { e.Origin = "breakglass.test/other" })
	mis("other-request", "presented as a review of another request", "request", func(e *expectation) { e.Request = "01938a2e-7c4b-7d3f-9a1e-5b6c7d8e9f02" })
	mis("approve-as-deny", "an approval presented as a denial", "type", func(e *expectation) { e.Type = statement.TypeDeny })
	mis("other-comment", "presented with another comment", "comment", func(e *expectation) { e.Comment = "confirmed" })
	mis("too-late", "checked five minutes and one second after its time", "time", func(e *expectation) { e.Now = signedAt.Add(statement.MaxSkew + time.Second).Format(time.RFC3339) })
	mis("too-early", "checked five minutes and one second before its time (the signer's clock is fast)", "time", func(e *expectation) { e.Now = signedAt.Add(-statement.MaxSkew - time.Second).Format(time.RFC3339) })
	// The other types refused: a statement serves only the action its type
	// names, and an attestation binds the policy in force.
	d := denied
	d.Expect.Type = statement.TypeApprove
	reject(d, "deny-as-approve", "a denial presented as an approval", "type")
	rcv := closed
	rcv.Expect.Type = statement.TypeApprove
	reject(rcv, "review-close-as-approve", "the closing of a grant's post-use review presented as an approval of its request", "type")
	rcv = closed
	rcv.Expect.Request = "01938a2e-7c4b-7d3f-9a1e-5b6c7d8e9f02"
	reject(rcv, "review-close-other-grant", "the closing of one grant's review presented for another grant's", "request")
	atv := attested
	atv.Expect.Content = statement.AccountDigest("prod-db", hexSHA([]byte("another policy")))
	reject(atv, "attest-other-policy", "an attestation made under a policy other than the one in force", "content")

	// Malformed texts, each signed as it is: only the form is wrong.
	malformed := func(name, desc, text string) { reject(resigned(approve, text), name, desc, "malformed") }
	tx := approve.Text
	malformed("fractional-time", "a fraction of a second in the time", strings.Replace(tx, "12:53:00Z", "12:53:00.000Z", 1))
	malformed("offset-time", "a zone offset instead of Z", strings.Replace(tx, "12:53:00Z", "12:53:00+00:00", 1))
	malformed("crlf", "lines ending in CR LF", strings.ReplaceAll(tx, "\n", "\r\n"))
	malformed("no-final-newline", "the last line without its LF", strings.TrimSuffix(tx, "\n"))
	malformed("trailing-space", "a space at the end of the type line", strings.Replace(tx, "type approve\n", "type approve \n", 1))
	malformed("upper-case-hex", "digests must be lower-case hex", strings.Replace(tx, "content sha256:"+c.Digest()[7:], "content sha256:"+strings.ToUpper(c.Digest()[7:]), 1))
	malformed("upper-case-id", "request ids are lower-case", strings.Replace(tx, "request "+requestID, "request "+strings.ToUpper(requestID), 1))
	malformed("unknown-type", "a type that does not exist", strings.Replace(tx, "type approve", "type approved", 1))
	malformed("extra-line", "a line after the time", tx+"note hello\n")
	malformed("reordered", "origin and type swapped", strings.Replace(tx, "type approve\norigin "+origin+"\n", "origin "+origin+"\ntype approve\n", 1))
	malformed("other-context", "the content context line instead of the statement's", strings.Replace(tx, statement.StatementContext, statement.ContentContextV2, 1))
	malformed("too-long", "over 1024 bytes", strings.Replace(tx, "origin "+origin, "origin "+strings.Repeat("o", 255), 1)+strings.Repeat("x", 800))
	return out
}

// ---- key rotation ----

type rotationInputs struct {
	Purpose string `json:"purpose"`
	Account string `json:"account"`
	Old     string `json:"old"`
	New     string `json:"new"`
	// Key is the base64 DER SubjectPublicKeyInfo of the new key.
	Key  string `json:"key"`
	Time string `json:"time"`
}

type rotationVector struct {
	Name         string          `json:"name"`
	Description  string          `json:"description"`
	Inputs       *rotationInputs `json:"inputs,omitempty"`
	Text         string          `json:"text"`
	SHA256       string          `json:"sha256"`
	OldKey       string          `json:"old_key"`
	NewKey       string          `json:"new_key"`
	OldSignature string          `json:"old_signature"`
	NewSignature string          `json:"new_signature"`
	Verdict      string          `json:"verdict"`
	Reason       string          `json:"reason,omitempty"`
}

func rotationVectors(t *testing.T, kf *keyFile) []rotationVector {
	t.Helper()
	var out []rotationVector
	mk := func(name, desc, purpose, oldName, newName string) rotationVector {
		oldK, newK := kf.key(t, oldName), kf.key(t, newName)
		text, err := statement.Rotation(purpose, "", oldK.KID, newK.KID, newK.signer.Public(), signedAt)
		if err != nil {
			t.Fatal(err)
		}
		der, _ := x509.MarshalPKIXPublicKey(newK.signer.Public())
		v := rotationVector{Name: name, Description: desc, Text: string(text), SHA256: hexSHA(text), OldKey: oldName, NewKey: newName,
			Inputs:       &rotationInputs{Purpose: purpose, Old: oldK.KID, New: newK.KID, Key: b64(der), Time: signedAt.Format(time.RFC3339)},
			OldSignature: b64(sign(t, oldK, text)), NewSignature: b64(sign(t, newK, text)), Verdict: "accept"}
		out = append(out, v)
		return v
	}
	audit := mk("audit-key-rotation", "the audit key rotated: both keys sign the text, ECDSA P-256, ASN.1 DER over SHA-256; account is empty, so its line is \"account\" and one space", "audit", "audit-1", "audit-2")
	mk("checkpoint-key-rotation", "the checkpoint key rotated: both keys sign the text itself with Ed25519", "checkpoint", "checkpoint-1", "checkpoint-2")
	bad := audit
	bad.Name, bad.Description, bad.Verdict, bad.Reason = "old-signature-by-new-key", "the old key's signature made by the new key", "reject", "signature"
	bad.OldSignature = bad.NewSignature
	out = append(out, bad)
	bad = audit
	bad.Name, bad.Description, bad.Verdict, bad.Reason = "account-line-without-space", "the empty account line written without its space", "reject", "malformed"
	bad.Inputs, bad.Text = nil, strings.Replace(audit.Text, "\naccount \n", "\naccount\n", 1)
	bad.SHA256, bad.OldSignature, bad.NewSignature = hexSHA([]byte(bad.Text)), b64(sign(t, kf.key(t, "audit-1"), []byte(bad.Text))), b64(sign(t, kf.key(t, "audit-2"), []byte(bad.Text)))
	out = append(out, bad)
	bad = audit
	bad.Name, bad.Description, bad.Verdict, bad.Reason = "token-purpose", "a purpose other than audit or checkpoint, signed by both keys: only those two keys rotate by statement", "reject", "malformed"
	bad.Inputs, bad.Text = nil, strings.Replace(audit.Text, "\npurpose audit\n", "\npurpose token\n", 1)
	bad.SHA256, bad.OldSignature, bad.NewSignature = hexSHA([]byte(bad.Text)), b64(sign(t, kf.key(t, "audit-1"), []byte(bad.Text))), b64(sign(t, kf.key(t, "audit-2"), []byte(bad.Text)))
	out = append(out, bad)
	return out
}

// ---- audit entries and a checkpoint ----

type entryVector struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	// Entry is the exact entry bytes, base64.
	Entry string `json:"entry"`
	// LeafHash is SHA-256(0x00 || entry), hex.
	LeafHash string `json:"leaf_hash"`
	// Prev is the leaf hash the entry must name as its predecessor.
	Prev      string `json:"prev"`
	Key       string `json:"key"`
	KeyID     string `json:"key_id"`
	Signature string `json:"signature"`
	Verdict   string `json:"verdict"`
	Reason    string `json:"reason,omitempty"`
}

type checkpointVector struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	Origin      string `json:"origin"`
	// LeafHashes are the tree's leaves, hex, in index order.
	LeafHashes []string `json:"leaf_hashes"`
	Size       uint64   `json:"size"`
	// RootHash is the RFC 6962 root, base64 as the checkpoint writes it.
	RootHash    string `json:"root_hash"`
	Note        string `json:"note"`
	Key         string `json:"key"`
	VerifierKey string `json:"verifier_key"`
	Verdict     string `json:"verdict"`
	Reason      string `json:"reason,omitempty"`
}

type noteSigner struct {
	name string
	key  ed25519.PrivateKey
}

func (s noteSigner) Name() string { return s.name }
func (s noteSigner) KeyHash() uint32 {
	h := sha256.Sum256(append([]byte(s.name+"\n\x01"), s.key.Public().(ed25519.PublicKey)...))
	return binary.BigEndian.Uint32(h[:4])
}
func (s noteSigner) Sign(msg []byte) ([]byte, error) { return ed25519.Sign(s.key, msg), nil }

func entryVectors(t *testing.T, kf *keyFile, reviews []statementVector, requests []requestVector) ([]entryVector, []checkpointVector) {
	t.Helper()
	ak := kf.key(t, "audit-1")
	c := baseContent()
	approve := reviews[0]
	bob := kf.key(t, approve.Key)
	sig, _ := base64.StdEncoding.DecodeString(approve.Signature)
	asked := requests[0]
	askedSig, _ := base64.StdEncoding.DecodeString(asked.Signature)
	drafts := []audit.Draft{
		{Type: audit.TypeRequestCreated, Actor: c.Requester, Request: c.ID, Account: c.Account, Payload: audit.RequestCreated{
			Justification: c.Justification, Ticket: c.Ticket, TTLSeconds: c.TTLSeconds, Drill: c.Drill, CreatedAt: c.CreatedAt,
			ApprovalDeadline: c.CreatedAt.Add(30 * time.Minute), Quorum: policy.Rule{{{Group: "db-admins", Approvals: 1}, {Group: "security", Approvals: 1}}},
			DenyThreshold: 1, MaxIssuances: 3, ActivationWindow: 900, PolicyHash: policyHash, ContentDigest: c.Digest(), ContentVersion: int(c.Version),
			Signed: audit.Signed{Statement: []byte(asked.Text), Signature: askedSig, Certificate: kf.key(t, asked.Key).cert.Raw}}},
		{Type: audit.TypeRequestReviewed, Actor: bob.Principal, Request: c.ID, Account: c.Account, Payload: audit.RequestReviewed{
			Decision: statement.TypeApprove, Comment: approve.Inputs.Comment, Groups: []string{"db-admins"},
			Statement: []byte(approve.Text), Signature: sig, Certificate: bob.cert.Raw}},
	}
	var (
		head audit.Head
		out  []entryVector
		recs []audit.Record
	)
	times := []time.Time{c.CreatedAt, signedAt.Add(time.Second)}
	for i, d := range drafts {
		rec, err := audit.Build(head, times[i], d)
		if err != nil {
			t.Fatal(err)
		}
		prev := hex.EncodeToString(audit.ZeroPrev)
		if i > 0 {
			prev = hex.EncodeToString(head.LeafHash)
		}
		recs = append(recs, rec)
		out = append(out, entryVector{Name: fmt.Sprintf("entry-%d-%s", i, d.Type), Entry: b64(rec.Bytes), LeafHash: hex.EncodeToString(rec.LeafHash), Prev: prev,
			Key: ak.Name, KeyID: ak.KID, Signature: b64(sign(t, ak, rec.Bytes)), Verdict: "accept"})
		head = rec.Next()
	}
	out[0].Description = "the first entry (prev is 64 zeros): a request_created whose payload's content_digest a verifier recomputes from the payload, the entry's request, account and actor (content_version 2), carrying alice's signed request statement (request-ecdsa-p256) and her certificate"
	out[1].Description = "the next entry, naming the first's leaf hash: a request_reviewed carrying the approve-ecdsa-p256 statement, its signature and bob's certificate"
	flipped := out[1]
	eb, _ := base64.StdEncoding.DecodeString(flipped.Entry)
	eb = bytes.Replace(eb, []byte(`"decision":"approve"`), []byte(`"decision":"deny"   `), 1)
	flipped.Name, flipped.Description, flipped.Entry, flipped.LeafHash = "entry-altered", "entry 1 with its decision changed after signing", b64(eb), hex.EncodeToString(audit.LeafHash(eb))
	flipped.Verdict, flipped.Reason = "reject", "signature"
	unchained := out[1]
	unchained.Name, unchained.Description, unchained.Prev = "entry-unchained", "entry 1 presented after a predecessor other than entry 0", hex.EncodeToString(audit.LeafHash([]byte("another entry")))
	unchained.Verdict, unchained.Reason = "reject", "prev"
	out = append(out, flipped, unchained)

	ck := kf.key(t, "checkpoint-1")
	rf := compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}
	r := rf.NewEmptyRange(0)
	var leaves []string
	for _, rec := range recs {
		if err := r.Append(rec.LeafHash, nil); err != nil {
			t.Fatal(err)
		}
		leaves = append(leaves, hex.EncodeToString(rec.LeafHash))
	}
	root, err := r.GetRootHash(nil)
	if err != nil {
		t.Fatal(err)
	}
	signNote := func(k *testKey, body []byte) string {
		n, err := note.Sign(&note.Note{Text: string(body)}, noteSigner{name: origin, key: k.signer.(ed25519.PrivateKey)})
		if err != nil {
			t.Fatal(err)
		}
		return string(n)
	}
	body := checkpoint.Body(origin, uint64(len(recs)), root)
	cp := checkpointVector{Name: "checkpoint-2-entries", Description: "a C2SP signed note over the tlog-checkpoint body of the tree of the two entries above, signed by the checkpoint key under the name " + origin,
		Origin: origin, LeafHashes: leaves, Size: uint64(len(recs)), RootHash: b64(root), Note: signNote(ck, body), Key: ck.Name, VerifierKey: ck.NoteVerifierKey, Verdict: "accept"}
	other := cp
	other.Name, other.Description, other.Note = "checkpoint-other-key", "the same body signed by another Ed25519 key under the same name", signNote(kf.key(t, "checkpoint-2"), body)
	other.Verdict, other.Reason = "reject", "signature"
	short := cp
	short.Name, short.Description, short.LeafHashes = "checkpoint-other-tree", "a valid checkpoint presented with only the first leaf: its root is not the tree's", leaves[:1]
	short.Verdict, short.Reason = "reject", "root"
	return out, []checkpointVector{cp, other, short}
}

// ---- generation ----

const specRef = "docs/signing.md"

func generate(t *testing.T, kf *keyFile) map[string][]byte {
	t.Helper()
	ensurePasskeys(t, kf)
	ensureRequester(t, kf)
	reviews := statementVectors(t, kf)
	requests := requestVectors(t, kf)
	entries, cps := entryVectors(t, kf, reviews, requests)
	return map[string][]byte{
		"passkey-binding.json": encode(t, file[bindingVector]{Spec: specRef + "#passkey-bindings",
			Description: "Passkey binding statements: an approver binds a WebAuthn credential (its ID and COSE public key, the RP ID and the console's origin) with the key of their client certificate. Verification order: parse, signature with the presented certificate's key, the certificate names the principal line, then origin and time against expect.",
			Vectors:     bindingVectors(t, kf)}),
		"passkey-review.json": encode(t, file[assertionVector]{Spec: specRef + "#passkey-reviews",
			Description: "Review statements signed by a bound passkey: the WebAuthn assertion (authenticator data, client data, signature) whose challenge is the statement's SHA-256, judged by WebAuthn Level 3 section 7.2 with user verification required, against the binding named. Verification order: credential, client data (malformed, type, challenge, origin, cross-origin), authenticator data (rp-id, user-presence, user-verification), signature, counter.",
			Vectors:     assertionVectors(t, kf)}),
		"keys.json": encode(t, kf),
		"request-content.json": encode(t, file[contentVector]{Spec: specRef + "#request-content",
			Description: "The request content text, whose SHA-256 is Request.content_digest, built from a request's fields in its content_version; and texts a client could make by mistake.",
			Vectors:     contentVectors()}),
		"account-attestation.json": encode(t, file[accountVector]{Spec: specRef + "#attest",
			Description: "The account text whose SHA-256 an attest statement binds.", Vectors: accountVectors()}),
		"request-statement.json": encode(t, file[requestVector]{Spec: specRef + "#request-statements",
			Description: "Request statements: a request as its requester asks for it, under the id they chose, signed with the key of their client certificate (alice's in keys.json), and the verdict of a verifier that checks it against the request the log records (expect). Verification order: parse, signature, then each line against expect.",
			Vectors:     requests}),
		"review-statement.json": encode(t, file[statementVector]{Spec: specRef + "#review-statements",
			Description: "Review statements (approve, deny, review-close, attest): the text from its inputs, its signature by a key of keys.json (the certificate key of a principal), and the verdict of a verifier that checks it against expect. Verification order: parse, signature, then each line against expect.",
			Vectors:     reviews}),
		"policy-statement.json": encode(t, file[policyVector]{Spec: specRef + "#policy-statements",
			Description: "Policy statements: a policy admin's decision on one change of the policy (previous hash to new hash), its signature by a key of keys.json, and the verdict of a verifier that checks it against expect. Statements for a bundle carry their policy.sigs line.",
			Vectors:     policyVectors(t, kf)}),
		"key-rotation.json": encode(t, file[rotationVector]{Spec: specRef + "#key-rotation",
			Description: "Key rotation statements, signed by both the old and the new key.", Vectors: rotationVectors(t, kf)}),
		"audit-entry.json": encode(t, file[entryVector]{Spec: specRef + "#audit-entries",
			Description: "Audit entries as stored, signed by an audit key (ECDSA P-256, ASN.1 DER over SHA-256 of the exact bytes) and chained by leaf hash.", Vectors: entries}),
		"checkpoint.json": encode(t, file[checkpointVector]{Spec: specRef + "#checkpoints",
			Description: "Checkpoints: C2SP signed notes over tlog-checkpoint bodies whose root is the RFC 6962 tree of the entries' leaf hashes.", Vectors: cps}),
	}
}

// TestVectorsAreCurrent regenerates every vector file from the code and
// the committed keys and fails on any difference: the spec's examples and
// the code cannot drift apart.
func TestVectorsAreCurrent(t *testing.T) {
	kf := loadKeys(t)
	for name, want := range generate(t, kf) {
		path := filepath.Join(dir, name)
		if *update {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, want, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (go test ./format/vectors -update writes the vectors)", err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from what the code produces now: the format changed or the file was edited. If the change is meant, "+
				"update docs/signing.md and run go test ./format/vectors -update\n%s", name, firstDiff(got, want))
		}
	}
}

func firstDiff(got, want []byte) string {
	gl, wl := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
	for i := range max(len(gl), len(wl)) {
		var g, w string
		if i < len(gl) {
			g = gl[i]
		}
		if i < len(wl) {
			w = wl[i]
		}
		if g != w {
			return fmt.Sprintf("line %d:\n  committed: %s\n  code:      %s", i+1, g, w)
		}
	}
	return ""
}
