package principal

import (
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"github.com/bgbroker/breakglass/format/policy"
)

const prefix = "spiffe://example.org/user/"

// generalName is one entry of a subjectAltName: tag and content.
type generalName struct {
	tag   cbasn1.Tag
	value string
}

func uri(s string) generalName { return generalName{cbasn1.Tag(6).ContextSpecific(), s} }
func dns(s string) generalName { return generalName{cbasn1.Tag(2).ContextSpecific(), s} }

// sanValue encodes a subjectAltName value as a CA would, with the URIs as
// given: crypto/x509 would write url.URL.String() instead.
func sanValue(names ...generalName) []byte {
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		for _, n := range names {
			b.AddASN1(n.tag, func(b *cryptobyte.Builder) { b.AddBytes([]byte(n.value)) })
		}
	})
	return b.BytesOrPanic()
}

// testKey is the same in every fuzz worker, so that inputs they exchange
// mean the same certificate.
var testKey = ed25519.NewKeyFromSeed(func() []byte { s := sha256.Sum256([]byte("principal test key")); return s[:] }())

// certificate signs a real certificate whose subjectAltName value is san
// (none when nil) and parses it as the TLS stack would.
func certificate(san []byte, cn string, isCA bool) (*x509.Certificate, error) {
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Unix(1e9, 0), NotAfter: time.Unix(2e9, 0), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: isCA, IsCA: isCA}
	if san != nil {
		tmpl.ExtraExtensions = []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Value: san}}
	}
	der, err := x509.CreateCertificate(nil, tmpl, tmpl, testKey.Public(), testKey)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

func TestRuleOf(t *testing.T) {
	uriRule, cnRule := Rule{Mode: ModeURI, URIPrefix: prefix}, Rule{Mode: ModeCN}
	tests := []struct {
		name    string
		rule    Rule
		san     []byte
		cn      string
		isCA    bool
		want    string
		wantErr string
	}{
		{"one URI under the prefix", uriRule, sanValue(uri(prefix + "alice")), "x", false, "alice", ""},
		{"default mode is uri", Rule{URIPrefix: prefix}, sanValue(uri(prefix + "alice")), "", false, "alice", ""},
		{"other names and URIs are ignored", uriRule, sanValue(dns("alice.example.org"), uri("https://example.org/alice"), uri(prefix+"alice")), "", false, "alice", ""},
		{"no SAN", uriRule, nil, "alice", false, "", "no URI SAN under"},
		{"no URI", uriRule, sanValue(dns("alice.example.org")), "", false, "", "no URI SAN under"},
		{"two under the prefix", uriRule, sanValue(uri(prefix+"alice"), uri(prefix+"bob")), "", false, "", "exactly one"},
		{"the same URI twice", uriRule, sanValue(uri(prefix+"alice"), uri(prefix+"alice")), "", false, "", "exactly one"},
		{"uppercase scheme", uriRule, sanValue(uri("SPIFFE://example.org/user/alice")), "", false, "", "no URI SAN under"},
		{"mixed-case scheme", uriRule, sanValue(uri("Spiffe://example.org/user/alice")), "", false, "", "no URI SAN under"},
		{"uppercase trust domain", uriRule, sanValue(uri("spiffe://EXAMPLE.org/user/alice")), "", false, "", "no URI SAN under"},
		{"percent-encoded path", uriRule, sanValue(uri("spiffe://example.org/%75ser/alice")), "", false, "", "no URI SAN under"},
		{"percent-encoded principal", uriRule, sanValue(uri(prefix + "al%69ce")), "", false, "", "not a valid principal"},
		{"prefix look-alike", uriRule, sanValue(uri("spiffe://example.org/username/alice")), "", false, "", "no URI SAN under"},
		{"path under the prefix", uriRule, sanValue(uri(prefix + "team/alice")), "", false, "", "not a valid principal"},
		{"query after the principal", uriRule, sanValue(uri(prefix + "alice?admin=1")), "", false, "", "not a valid principal"},
		{"empty principal", uriRule, sanValue(uri(prefix)), "", false, "", "not a valid principal"},
		{"CA certificate", uriRule, sanValue(uri(prefix + "alice")), "", true, "", "CA certificate"},
		{"CN mode", cnRule, sanValue(uri(prefix + "alice")), "bob", false, "bob", ""},
		{"CN mode, CA certificate", cnRule, nil, "bob", true, "", "CA certificate"},
		{"CN mode, no CN", cnRule, nil, "", false, "", "no common name"},
		{"CN mode, hostile CN", cnRule, nil, "bob\n' OR 1=1", false, "", "not a valid principal"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := certificate(tc.san, tc.cn, tc.isCA)
			if err != nil {
				t.Fatal(err)
			}
			got, err := tc.rule.Of(c)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Of = %q, %v; want an error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Of = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// The regression behind raw matching: crypto/x509 accepts the certificate
// and shows its URI lowercased, which is what the broker used to match.
func TestUppercaseSchemeIsReserialisedByX509(t *testing.T) {
	c, err := certificate(sanValue(uri("SPIFFE://example.org/user/alice")), "", false)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.URIs) != 1 || c.URIs[0].String() != prefix+"alice" {
		t.Fatalf("crypto/x509 no longer re-serialises the URI (%v): this test's premise changed", c.URIs)
	}
	if raw, err := URIs(c); err != nil || len(raw) != 1 || raw[0] != "SPIFFE://example.org/user/alice" {
		t.Fatalf("URIs = %q, %v", raw, err)
	}
}

func TestRuleValidate(t *testing.T) {
	tests := []struct {
		rule    Rule
		wantErr string
	}{
		{Rule{URIPrefix: prefix}, ""},
		{Rule{Mode: ModeURI, URIPrefix: "spiffe://example.org/"}, ""},
		{Rule{Mode: ModeURI, URIPrefix: "https://id.example.org/people/"}, ""},
		{Rule{Mode: ModeCN}, ""},
		{Rule{Mode: ModeURI, URIPrefix: "spiffe://example.org/user"}, `must end in "/"`},
		{Rule{Mode: ModeURI, URIPrefix: "spiffe://x/user"}, "spiffe://x/userxbob"},
		{Rule{Mode: ModeURI}, "required"},
		{Rule{Mode: ModeURI, URIPrefix: "example.org/user/"}, "absolute URI"},
		{Rule{Mode: ModeURI, URIPrefix: "urn:example:user/"}, "absolute URI"},
		{Rule{Mode: ModeURI, URIPrefix: "SPIFFE://example.org/user/"}, "lowercase"},
		{Rule{Mode: ModeURI, URIPrefix: "spiffe://example.org/user/?x=/"}, "query or fragment"},
		{Rule{Mode: ModeURI, URIPrefix: "spiffe://example.org/user/#/"}, "query or fragment"},
		{Rule{Mode: "email"}, "must be uri or cn"},
	}
	for _, tc := range tests {
		err := tc.rule.Validate()
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("%+v: Validate = %v, want %q", tc.rule, err, tc.wantErr)
		}
	}
}

func TestMalformedSAN(t *testing.T) {
	for name, v := range map[string][]byte{
		"not a sequence":   {0x04, 0x00},
		"trailing bytes":   append(sanValue(uri(prefix+"alice")), 0),
		"truncated name":   {0x30, 0x03, 0x86, 0x05, 'a'},
		"non-ASCII URI":    sanValue(uri(prefix + "al\xc3\xafce")),
		"control char URI": sanValue(uri(prefix + "alice\n")),
	} {
		c := &x509.Certificate{Extensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Value: v}}}
		if got, err := (Rule{URIPrefix: prefix}).Of(c); err == nil {
			t.Errorf("%s: Of = %q, want an error", name, got)
		}
	}
	two := &x509.Certificate{Extensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Value: sanValue(uri(prefix + "alice"))},
		{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Value: sanValue(uri(prefix + "bob"))}}}
	if got, err := (Rule{URIPrefix: prefix}).Of(two); err == nil || !strings.Contains(err.Error(), "two subjectAltName") {
		t.Errorf("two SAN extensions: Of = %q, %v", got, err)
	}
}

// FuzzPrincipal signs a real certificate around a fuzzed subjectAltName
// value and checks principal extraction against crypto/x509's own parse:
// the raw URIs are the ones x509 found, in order; a principal is only ever
// the rest of exactly one raw URI that starts with the prefix byte for byte,
// a valid principal name, of a certificate that is not a CA; and nothing
// panics, whatever the bytes.
func FuzzPrincipal(f *testing.F) {
	for _, s := range [][]generalName{
		{uri(prefix + "alice")},
		{uri("SPIFFE://example.org/user/alice")},
		{uri("spiffe://EXAMPLE.org/user/alice")},
		{uri(prefix + "al%69ce")},
		{uri("spiffe://example.org/%75ser/alice")},
		{uri(prefix + "alice"), uri(prefix + "bob")},
		{dns("alice.example.org"), uri(prefix + "alice")},
		{uri("spiffe://example.org/username/alice")},
		{uri(prefix + "team/alice")},
		{uri(prefix)},
		{uri(prefix + "alice?x")},
		{{cbasn1.Tag(0).ContextSpecific().Constructed(), "\x06\x03\x2a\x03\x04\xa0\x02\x04\x00"}, uri(prefix + "carol")},
	} {
		f.Add(sanValue(s...), prefix, "", false)
	}
	f.Add(sanValue(uri(prefix+"alice")), prefix, "", true)
	f.Add(sanValue(uri("spiffe://x/userbob")), "spiffe://x/user", "", false)
	f.Add([]byte{}, prefix, "bob", false)
	f.Add([]byte{0x30, 0x03, 0x86, 0x05, 'a'}, prefix, "", false)

	f.Fuzz(func(t *testing.T, san []byte, pfx, cn string, isCA bool) {
		rule := Rule{Mode: ModeURI, URIPrefix: pfx}
		if len(san) == 0 {
			rule.Mode, san = ModeCN, nil
		}
		c, err := certificate(san, cn, isCA)
		if err != nil {
			// crypto/x509 refuses it; the TLS stack would never hand it
			// over. The parser must still not panic on the bytes.
			bare := &x509.Certificate{IsCA: isCA, Extensions: []pkix.Extension{{Id: oidSubjectAltName, Value: san}}}
			_, _ = rule.Of(bare)
			return
		}
		raw, rawErr := URIs(c)
		if rawErr == nil {
			if len(raw) != len(c.URIs) {
				t.Fatalf("found %d URIs where crypto/x509 found %d: %q vs %v", len(raw), len(c.URIs), raw, c.URIs)
			}
			for i, r := range raw {
				u, err := url.Parse(r)
				if err != nil || u.String() != c.URIs[i].String() {
					t.Fatalf("URI %d reads %q here and %q in crypto/x509", i, r, c.URIs[i])
				}
			}
		}
		name, err := rule.Of(c)
		if err != nil {
			return
		}
		if isCA {
			t.Fatalf("a CA certificate named principal %q", name)
		}
		if !policy.ValidPrincipal(name) {
			t.Fatalf("invalid principal %q", name)
		}
		if rule.Mode == ModeCN {
			if name != cn {
				t.Fatalf("CN mode named %q, not the CN %q", name, cn)
			}
			return
		}
		if rawErr != nil {
			t.Fatalf("named %q from a SAN that does not parse: %v", name, rawErr)
		}
		n := 0
		for _, r := range raw {
			if strings.HasPrefix(r, pfx) {
				n++
				if r != pfx+name {
					t.Fatalf("named %q from %q under %q", name, r, pfx)
				}
			}
		}
		if n != 1 {
			t.Fatalf("named %q with %d URIs under %q", name, n, pfx)
		}
	})
}
