// Package principal names the holder of a client certificate: the one rule
// the broker applies to every caller and the offline verifier applies to
// every signed statement in the log, so that the two can never disagree on
// who signed.
//
// In uri mode the principal is the rest of the one URI subjectAltName that
// starts with the configured prefix. The URI is compared as it is written
// in the certificate, byte for byte: crypto/x509 parses URI SANs into
// url.URL values, and url.URL.String re-serialises them (it lowercases the
// scheme, among other things), so a certificate for "SPIFFE://x/user/bob"
// would otherwise match the prefix "spiffe://x/user/".
package principal

import (
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"github.com/bgbroker/breakglass/format/policy"
)

// Modes.
const (
	ModeURI = "uri"
	ModeCN  = "cn"
)

// Rule says how a certificate names its principal; the audit log records
// it (audit.Identity) so that a verifier applies the broker's rule.
type Rule struct {
	// Mode is ModeURI (the default when empty) or ModeCN.
	Mode string
	// URIPrefix, in uri mode, e.g. "spiffe://example.org/user/".
	URIPrefix string
}

// Validate refuses a rule that could name the wrong principal
// (policy.Identity.Validate says how).
func (r Rule) Validate() error {
	if r.Mode == "" {
		r.Mode = ModeURI
	}
	return policy.Identity{Mode: r.Mode, URIPrefix: r.URIPrefix}.Validate()
}

// Identity is the rule as the policy names it.
func (r Rule) Identity() policy.Identity {
	if r.Mode == ModeCN {
		return policy.Identity{Mode: ModeCN}
	}
	return policy.Identity{Mode: ModeURI, URIPrefix: r.URIPrefix}
}

// FromIdentity is the rule a policy's identity names.
func FromIdentity(id policy.Identity) Rule { return Rule{Mode: id.Mode, URIPrefix: id.URIPrefix} }

// Of returns the principal c names under r. A CA certificate names no
// principal: a client identity is a leaf.
func (r Rule) Of(c *x509.Certificate) (string, error) {
	if c.IsCA {
		return "", errors.New("the client certificate is a CA certificate (basicConstraints CA:TRUE); a client identity must be a leaf certificate")
	}
	var name string
	if r.Mode == ModeCN {
		name = c.Subject.CommonName
		if name == "" {
			return "", errors.New("the client certificate has no common name")
		}
	} else {
		uris, err := URIs(c)
		if err != nil {
			return "", err
		}
		if name, err = r.fromURIs(uris); err != nil {
			return "", err
		}
	}
	if !policy.ValidPrincipal(name) {
		return "", fmt.Errorf("the client certificate names principal %q, which is not a valid principal name", name)
	}
	return name, nil
}

func (r Rule) fromURIs(uris []string) (string, error) {
	var found []string
	for _, u := range uris {
		if rest, ok := strings.CutPrefix(u, r.URIPrefix); ok {
			found = append(found, rest)
		}
	}
	switch len(found) {
	case 0:
		return "", fmt.Errorf("the client certificate has no URI SAN under %s (URI SANs are compared as written, case included)", r.URIPrefix)
	case 1:
		return found[0], nil
	default:
		return "", fmt.Errorf("the client certificate has %d URI SANs under %s; exactly one is allowed", len(found), r.URIPrefix)
	}
}

var oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}

// URIs returns the uniformResourceIdentifier entries of c's
// subjectAltName extension as written in the certificate.
func URIs(c *x509.Certificate) ([]string, error) {
	var ext []byte
	seen := false
	for _, e := range c.Extensions {
		if !e.Id.Equal(oidSubjectAltName) {
			continue
		}
		if seen {
			return nil, errors.New("the client certificate has two subjectAltName extensions")
		}
		seen, ext = true, e.Value
	}
	if !seen {
		return nil, nil
	}
	return parseURIs(ext)
}

// parseURIs reads the URI names of a SubjectAltName value (RFC 5280
// 4.2.1.6: a SEQUENCE of GeneralName; uniformResourceIdentifier is [6]
// IMPLICIT IA5String).
func parseURIs(der []byte) ([]string, error) {
	in := cryptobyte.String(der)
	var names cryptobyte.String
	if !in.ReadASN1(&names, cbasn1.SEQUENCE) || !in.Empty() {
		return nil, errors.New("the client certificate's subjectAltName extension is malformed")
	}
	var out []string
	for !names.Empty() {
		var (
			name cryptobyte.String
			tag  cbasn1.Tag
		)
		if !names.ReadAnyASN1(&name, &tag) {
			return nil, errors.New("the client certificate's subjectAltName extension is malformed")
		}
		if tag != cbasn1.Tag(6).ContextSpecific() {
			continue
		}
		for _, b := range name {
			if b < 0x20 || b > 0x7e {
				return nil, errors.New("the client certificate has a URI SAN that is not printable ASCII")
			}
		}
		out = append(out, string(name))
	}
	return out, nil
}
