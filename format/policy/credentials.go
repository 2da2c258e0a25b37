package policy

import (
	"fmt"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// SSH says which OpenSSH user certificates an account's grants may get.
// Every field of an issued certificate that grants something comes from
// here, never from the request.
type SSH struct {
	// Principals are the user names a certificate may name; never empty,
	// since an empty list would mean any user to sshd.
	Principals []string `json:"principals"`
	// DrillPrincipals are the only principals a drill grant's certificate
	// may name; without them drills get no SSH certificate.
	DrillPrincipals []string `json:"drill_principals,omitempty"`
	// SourceAddresses is the source-address critical option (CIDR).
	SourceAddresses []string `json:"source_addresses,omitempty"`
	// ForceCommand is the force-command critical option.
	ForceCommand string `json:"force_command,omitempty"`
	// Extensions are the certificate's extensions (default permit-pty).
	Extensions []string `json:"extensions"`
	// MaxTTL bounds a certificate's validity below the grant's end.
	MaxTTL Duration `json:"max_ttl,omitempty"`
}

// X509 says which X.509 client certificates an account's grants may get.
// Subject and names come from here (templates of {requester} and
// {account}), never from the certificate request.
type X509 struct {
	CommonName string `json:"common_name"`
	// DrillCommonName is the only common name of a drill grant's
	// certificate; without it drills get no X.509 certificate.
	DrillCommonName string   `json:"drill_common_name,omitempty"`
	DNSNames        []string `json:"dns_names,omitempty"`
	URISANs         []string `json:"uri_sans,omitempty"`
	// ExtKeyUsage names the extended key usages (default client_auth).
	ExtKeyUsage []string `json:"ext_key_usage"`
	MaxTTL      Duration `json:"max_ttl,omitempty"`
}

// SSHExtensions are the user certificate extensions of OpenSSH's
// PROTOCOL.certkeys.
var SSHExtensions = []string{"no-touch-required", "permit-X11-forwarding", "permit-agent-forwarding", "permit-port-forwarding", "permit-pty", "permit-user-rc"}

// ExtKeyUsages are the extended key usages a policy may name.
var ExtKeyUsages = []string{"client_auth", "server_auth"}

var (
	sshPrincipalRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._@-]{0,63}$`)
	templateRE     = regexp.MustCompile(`\{[^}]*\}`)
	dnsLabelRE     = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
)

// MaxCommonName is X.509's upper bound for a common name (RFC 5280 ub-common-name).
const MaxCommonName = 64

// Expand fills a name template for a requester and an account. Only
// {requester} and {account} exist; policies are validated so that nothing
// else can appear.
func Expand(tmpl, requester, account string) string {
	return strings.NewReplacer("{requester}", requester, "{account}", account).Replace(tmpl)
}

// checkTemplate reports a template naming anything but {requester} and
// {account}, or stray braces.
func checkTemplate(s string) error {
	for _, m := range templateRE.FindAllString(s, -1) {
		if m != "{requester}" && m != "{account}" {
			return fmt.Errorf("%q is not a template field (only {requester} and {account})", m)
		}
	}
	if rest := templateRE.ReplaceAllString(s, ""); strings.ContainsAny(rest, "{}") {
		return fmt.Errorf("unbalanced braces")
	}
	return nil
}

// ValidDNSName reports whether s is a lower-case DNS host name.
func ValidDNSName(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if !dnsLabelRE.MatchString(l) {
			return false
		}
	}
	return true
}

// ValidCommonName reports whether s may be an issued certificate's common
// name: printable, no control or format characters, at most 64 bytes.
func ValidCommonName(s string) bool {
	if s == "" || len(s) > MaxCommonName {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r > 0x7e {
			return false
		}
	}
	return true
}

// ValidURISAN reports whether s is an absolute URI fit for a SAN.
func ValidURISAN(s string) bool {
	u, err := url.Parse(s)
	return err == nil && u.Scheme != "" && (u.Host != "" || u.Opaque != "") && len(s) <= 512 && !strings.ContainsAny(s, " \t\r\n")
}

// sshPolicy reads an account's ssh: section.
func (l *loader) sshPolicy(n *yaml.Node, path string, a *Account, ceiling time.Duration) *SSH {
	f := l.fields(n, path, "principals", "drill_principals", "source_addresses", "force_command", "extensions", "max_ttl")
	s := &SSH{}
	principals := func(key string) []string {
		v := l.strs(f[key], path+"."+key)
		for i, p := range v {
			if !sshPrincipalRE.MatchString(p) {
				l.add(f[key].Content[i], fmt.Sprintf("%s.%s[%d]", path, key, i), "principal %q must be letters, digits, . _ @ - (at most 64, not starting with . - or @)", p)
			}
			if slices.Index(v, p) != i {
				l.add(f[key].Content[i], fmt.Sprintf("%s.%s[%d]", path, key, i), "principal %q is listed twice", p)
			}
		}
		return v
	}
	s.Principals = principals("principals")
	if len(s.Principals) == 0 {
		l.add(n, path+".principals", "is required and must not be empty: a certificate without principals is valid for every user")
	}
	s.DrillPrincipals = principals("drill_principals")
	for _, p := range s.DrillPrincipals {
		if slices.Contains(s.Principals, p) {
			l.add(f["drill_principals"], path+".drill_principals", "%q is also a real principal: drill certificates must never name a real one", p)
		}
	}
	s.SourceAddresses = l.strs(f["source_addresses"], path+".source_addresses")
	for i, cidr := range s.SourceAddresses {
		p, err := netip.ParsePrefix(cidr)
		if err != nil {
			if ip, aerr := netip.ParseAddr(cidr); aerr == nil {
				p, err = ip.Prefix(ip.BitLen())
			}
		}
		switch {
		case err != nil:
			l.add(f["source_addresses"].Content[i], fmt.Sprintf("%s.source_addresses[%d]", path, i), "%q is not an address or CIDR prefix (write 10.0.0.0/8 or 2001:db8::/32)", cidr)
		case p.Masked() != p:
			l.add(f["source_addresses"].Content[i], fmt.Sprintf("%s.source_addresses[%d]", path, i), "%q has host bits set; did you mean %s?", cidr, p.Masked())
		}
	}
	if f["source_addresses"] != nil && len(s.SourceAddresses) == 0 {
		l.add(f["source_addresses"], path+".source_addresses", "must not be empty when set (omit it to accept any source address)")
	}
	s.ForceCommand = l.str(f["force_command"], path+".force_command")
	if len(s.ForceCommand) > 1024 || strings.ContainsAny(s.ForceCommand, "\x00\r\n") {
		l.add(f["force_command"], path+".force_command", "must be one line of at most 1024 bytes")
	}
	if f["extensions"] == nil {
		s.Extensions = []string{"permit-pty"}
	} else {
		s.Extensions = l.strs(f["extensions"], path+".extensions")
		for i, e := range s.Extensions {
			if !slices.Contains(SSHExtensions, e) {
				l.add(f["extensions"].Content[i], fmt.Sprintf("%s.extensions[%d]", path, i), "unknown extension %q (allowed: %s)", e, strings.Join(SSHExtensions, ", "))
			}
			if slices.Index(s.Extensions, e) != i {
				l.add(f["extensions"].Content[i], fmt.Sprintf("%s.extensions[%d]", path, i), "extension %q is listed twice", e)
			}
		}
		slices.Sort(s.Extensions)
	}
	if f["max_ttl"] != nil {
		s.MaxTTL = l.duration(f["max_ttl"], path+".max_ttl", ceiling)
		if s.MaxTTL > a.MaxTTL {
			l.add(f["max_ttl"], path+".max_ttl", "must not exceed the account's max_ttl (%s): a certificate never outlives its grant", a.MaxTTL.D())
		}
	}
	return s
}

// x509Policy reads an account's x509: section. Templates are expanded for
// every principal who may request the account, so a name that would be
// invalid for one of them fails the load, not an issuance.
func (l *loader) x509Policy(n *yaml.Node, path string, a *Account, requesters []string, ceiling time.Duration) *X509 {
	f := l.fields(n, path, "common_name", "drill_common_name", "dns_names", "uri_sans", "ext_key_usage", "max_ttl")
	x := &X509{}
	expandAll := func(node *yaml.Node, field, tmpl string, valid func(string) bool, what string) {
		if err := checkTemplate(tmpl); err != nil {
			l.add(node, path+"."+field, "%s", err)
			return
		}
		subjects := requesters
		if len(subjects) == 0 {
			subjects = []string{"requester"}
		}
		for _, r := range subjects {
			if v := Expand(tmpl, r, a.Name); !valid(v) {
				l.add(node, path+"."+field, "%q becomes %q for requester %s, which is not %s", tmpl, v, r, what)
				return
			}
		}
	}
	x.CommonName = l.str(f["common_name"], path+".common_name")
	if f["common_name"] == nil || x.CommonName == "" {
		l.add(n, path+".common_name", "is required (e.g. \"{requester}\": targets such as PostgreSQL map it to a role)")
	} else {
		expandAll(f["common_name"], "common_name", x.CommonName, ValidCommonName, "a common name of 1-64 printable ASCII characters")
	}
	if f["drill_common_name"] != nil {
		x.DrillCommonName = l.str(f["drill_common_name"], path+".drill_common_name")
		expandAll(f["drill_common_name"], "drill_common_name", x.DrillCommonName, ValidCommonName, "a common name of 1-64 printable ASCII characters")
		if x.DrillCommonName == x.CommonName {
			l.add(f["drill_common_name"], path+".drill_common_name", "must differ from common_name: drill certificates never carry the real name")
		}
	}
	x.DNSNames = l.strs(f["dns_names"], path+".dns_names")
	for i, d := range x.DNSNames {
		expandAll(f["dns_names"].Content[i], fmt.Sprintf("dns_names[%d]", i), d, ValidDNSName, "a lower-case DNS name")
	}
	x.URISANs = l.strs(f["uri_sans"], path+".uri_sans")
	for i, u := range x.URISANs {
		expandAll(f["uri_sans"].Content[i], fmt.Sprintf("uri_sans[%d]", i), u, ValidURISAN, "an absolute URI")
	}
	if f["ext_key_usage"] == nil {
		x.ExtKeyUsage = []string{"client_auth"}
	} else {
		x.ExtKeyUsage = l.strs(f["ext_key_usage"], path+".ext_key_usage")
		if len(x.ExtKeyUsage) == 0 {
			l.add(f["ext_key_usage"], path+".ext_key_usage", "must not be empty (an X.509 certificate without extended key usage is good for any purpose)")
		}
		for i, e := range x.ExtKeyUsage {
			if !slices.Contains(ExtKeyUsages, e) {
				l.add(f["ext_key_usage"].Content[i], fmt.Sprintf("%s.ext_key_usage[%d]", path, i), "unknown extended key usage %q (allowed: %s)", e, strings.Join(ExtKeyUsages, ", "))
			}
			if slices.Index(x.ExtKeyUsage, e) != i {
				l.add(f["ext_key_usage"].Content[i], fmt.Sprintf("%s.ext_key_usage[%d]", path, i), "%q is listed twice", e)
			}
		}
		slices.Sort(x.ExtKeyUsage)
	}
	if f["max_ttl"] != nil {
		x.MaxTTL = l.duration(f["max_ttl"], path+".max_ttl", ceiling)
		if x.MaxTTL > a.MaxTTL {
			l.add(f["max_ttl"], path+".max_ttl", "must not exceed the account's max_ttl (%s): a certificate never outlives its grant", a.MaxTTL.D())
		}
	}
	return x
}

// sshRule judges a change of an account's ssh: section: it weakens the
// policy when certificates become possible, name more principals or
// extensions, lose or widen a source-address or force-command restriction,
// or live longer.
func sshRule(o, n any, _, _ *Policy) (bool, string) {
	os, _ := o.(*SSH)
	ns, _ := n.(*SSH)
	switch {
	case ns == nil:
		return false, ""
	case os == nil:
		return true, "SSH certificates are now issued"
	case gained(os.Principals, ns.Principals) || gained(os.DrillPrincipals, ns.DrillPrincipals):
		return true, "more SSH principals"
	case gained(os.Extensions, ns.Extensions):
		return true, "more SSH certificate extensions"
	case len(os.SourceAddresses) > 0 && (len(ns.SourceAddresses) == 0 || gained(os.SourceAddresses, ns.SourceAddresses)):
		return true, "the source-address restriction was widened or dropped"
	case os.ForceCommand != "" && ns.ForceCommand != os.ForceCommand:
		return true, "the force-command restriction changed or was dropped"
	case ttlLonger(os.MaxTTL, ns.MaxTTL):
		return true, "SSH certificates last longer"
	}
	return false, ""
}

// x509Rule judges a change of an account's x509: section: it weakens the
// policy when certificates become possible, carry another subject, more
// names or usages, or live longer.
func x509Rule(o, n any, _, _ *Policy) (bool, string) {
	ox, _ := o.(*X509)
	nx, _ := n.(*X509)
	switch {
	case nx == nil:
		return false, ""
	case ox == nil:
		return true, "X.509 certificates are now issued"
	case ox.CommonName != nx.CommonName || (nx.DrillCommonName != "" && ox.DrillCommonName != nx.DrillCommonName):
		return true, "X.509 certificates name another subject (targets map it to a role)"
	case gained(ox.DNSNames, nx.DNSNames) || gained(ox.URISANs, nx.URISANs):
		return true, "X.509 certificates carry more names"
	case gained(ox.ExtKeyUsage, nx.ExtKeyUsage):
		return true, "X.509 certificates are good for more usages"
	case ttlLonger(ox.MaxTTL, nx.MaxTTL):
		return true, "X.509 certificates last longer"
	}
	return false, ""
}

func gained(old, cur []string) bool {
	for _, x := range cur {
		if !slices.Contains(old, x) {
			return true
		}
	}
	return false
}

// ttlLonger: a zero max_ttl means "until the grant ends", the longest.
func ttlLonger(old, cur Duration) bool {
	if cur == 0 {
		return old != 0
	}
	return old != 0 && cur > old
}
