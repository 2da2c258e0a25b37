package policy

import (
	"fmt"
	"net/url"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Identity modes.
const (
	IdentityURI = "uri"
	IdentityCN  = "cn"
)

// Identity is how the broker names the holder of a client certificate:
// in uri mode the rest of the one URI SAN under URIPrefix, in cn mode the
// subject common name (format/principal applies it). It is part of the
// policy, and of its hash: who a certificate is decides who may request
// and approve as much as the groups do, so it changes only with the
// policy, is logged with it, and a change that would re-map anyone with
// open work is refused.
type Identity struct {
	Mode      string `json:"mode"`
	URIPrefix string `json:"uri_prefix,omitempty"`
}

// Validate refuses a rule that could name the wrong principal: in uri mode
// the prefix must be an absolute URI with a lowercase scheme, no query or
// fragment, ending in "/" (without the slash, "spiffe://x/user" would give
// "spiffe://x/userbob" the principal "bob"). In cn mode the prefix is not
// used.
func (id Identity) Validate() error {
	switch id.Mode {
	case IdentityURI:
	case IdentityCN:
		return nil
	default:
		return fmt.Errorf("identity mode must be %s or %s, not %q", IdentityURI, IdentityCN, id.Mode)
	}
	p := id.URIPrefix
	const example = "such as spiffe://example.org/user/"
	if p == "" {
		return fmt.Errorf("uri_prefix is required in uri mode: a URI prefix %s", example)
	}
	u, err := url.Parse(p)
	if err != nil || u.Scheme == "" || !strings.Contains(p, "://") || u.Opaque != "" {
		return fmt.Errorf("uri_prefix %q is not an absolute URI prefix %s", p, example)
	}
	if !strings.HasPrefix(p, u.Scheme+"://") || u.Scheme != strings.ToLower(u.Scheme) {
		return fmt.Errorf("uri_prefix %q must spell its scheme in lowercase: URI SANs are compared as written", p)
	}
	if strings.ContainsAny(p, "?#") {
		return fmt.Errorf("uri_prefix %q must not hold a query or fragment", p)
	}
	if !strings.HasSuffix(p, "/") {
		return fmt.Errorf("uri_prefix %q must end in \"/\": without it %sbob would be the principal bob", p, p+"x")
	}
	if strings.ContainsAny(p, " \t\r\n") || !printableASCII(p) {
		return fmt.Errorf("uri_prefix %q must be printable ASCII without spaces", p)
	}
	return nil
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// String is the rule for people: "uri spiffe://example.org/user/" or "cn".
func (id Identity) String() string { return strings.TrimSpace(id.Mode + " " + id.URIPrefix) }

// WithIdentity returns p with its identity rule set to id (the broker's
// configured rule, for a policy that names none), hashed anew.
func (p *Policy) WithIdentity(id Identity) *Policy {
	q := *p
	q.Identity = &id
	q.finish()
	return &q
}

// identity reads the policy's identity: section.
func (l *loader) identity(n *yaml.Node) *Identity {
	f := l.fields(n, "identity", "mode", "uri_prefix")
	id := &Identity{Mode: l.str(f["mode"], "identity.mode"), URIPrefix: l.str(f["uri_prefix"], "identity.uri_prefix")}
	if id.Mode == "" {
		id.Mode = IdentityURI
	}
	if err := id.Validate(); err != nil {
		l.add(n, "identity", "%s", err)
	}
	if id.Mode == IdentityCN && id.URIPrefix != "" {
		l.add(f["uri_prefix"], "identity.uri_prefix", "is set in cn mode, where it means nothing")
	}
	return id
}
