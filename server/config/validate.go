package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/bgbroker/breakglass/format/cosignature"
	"github.com/bgbroker/breakglass/format/passkey"
	"github.com/bgbroker/breakglass/format/principal"
)

// Validate reports every missing or unsafe setting. Load and Parse run it;
// call it again after changing a loaded Config.
func (c *Config) Validate() error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	add(c.HSM.validate())
	need := func(v, name string) {
		if v == "" {
			add(fmt.Errorf("%s is required", name))
		}
	}
	need(c.Keys.Token, "keys.token")
	need(c.Keys.Audit, "keys.audit")
	need(c.Keys.Checkpoint, "keys.checkpoint")
	need(c.Listen.GRPC, "listen.grpc")
	need(c.Listen.HTTPS, "listen.https")
	need(c.Listen.Metrics, "listen.metrics")
	need(c.TLS.Cert, "tls.cert")
	need(c.TLS.Key, "tls.key")
	need(c.Identity.ClientCA, "identity.client_ca")
	if err := (principal.Rule{Mode: c.Identity.Mode, URIPrefix: c.Identity.URIPrefix}).Validate(); err != nil {
		add(fmt.Errorf("identity: %w", err))
	}
	add(c.Certificates.validate(c.Keys))
	add(c.validatePolicySource())
	add(c.Tracing.validate())
	add(c.Store.validate())
	add(c.Audit.validateWitnesses())
	if c.Issuer != "" {
		// http on loopback passes here: dev mode may use it (the daemon
		// refuses it anywhere else).
		add(ValidateIssuer(c.Issuer, true))
	}
	add(onLoopback("debug.pprof", c.Debug.Pprof, "profiles are only served on loopback"))
	add(onLoopback("listen.plain_http", c.Listen.PlainHTTP, "plain HTTP is only allowed on loopback"))
	add(c.validateConsole())
	if len(errs) > 0 {
		return fmt.Errorf("%s: %w", c.path, errors.Join(errs...))
	}
	return nil
}

// validateConsole checks the console's origin and RP ID when it is on.
func (c *Config) validateConsole() error {
	if c.Listen.Console == "" {
		if c.Console.Origin != "" || c.Console.RPID != "" {
			return errors.New("console.origin and console.rp_id need listen.console")
		}
		return nil
	}
	if c.Console.Origin == "" {
		if !loopback(c.Listen.Console) {
			return fmt.Errorf("listen.console %q is not on loopback: set console.origin to the https://host[:port] browsers use", c.Listen.Console)
		}
		return nil // https://localhost:PORT, once the port is known
	}
	u, err := url.Parse(c.Console.Origin)
	if err != nil {
		return fmt.Errorf("console.origin %q is not a URL", c.Console.Origin)
	}
	rp := c.Console.RPID
	if rp == "" {
		rp = u.Hostname()
	}
	if err := passkey.CheckRPID(rp); err != nil {
		return fmt.Errorf("console.rp_id: %w", err)
	}
	if err := passkey.CheckWebOrigin(c.Console.Origin, rp); err != nil {
		return fmt.Errorf("console.origin: %w", err)
	}
	return nil
}

func (c *Config) validatePolicySource() error {
	switch {
	case c.PolicyFile == "" && c.Policy.Kind == 0:
		return errors.New("policy_file (or an inline policy:) is required")
	case c.PolicyFile != "" && c.Policy.Kind != 0:
		return errors.New("policy_file and policy are alternatives: set one")
	}
	return nil
}

func (h HSM) validate() error {
	n := 0
	for _, set := range []bool{h.TokenLabel != "", h.TokenSerial != "", h.Slot != nil} {
		if set {
			n++
		}
	}
	switch {
	case n == 0:
		return errors.New("hsm: no token selected: set token_label (or token_serial, or slot)")
	case n > 1:
		return errors.New("hsm: token_label, token_serial and slot are alternatives: set exactly one")
	case h.PINFile != "" && h.PINEnv != "":
		return errors.New("hsm: pin_file and pin_env are alternatives: set at most one")
	}
	return nil
}

func (t Tracing) validate() error {
	if t.SampleRatio < 0 || t.SampleRatio > 1 {
		return fmt.Errorf("tracing.sample_ratio must be between 0 and 1, not %g", t.SampleRatio)
	}
	return nil
}

func (s Store) validate() error {
	switch s.Driver {
	case DriverSQLite:
		if s.SQLite.Path == "" {
			return errors.New("store.sqlite.path is required")
		}
		if !strings.EqualFold(s.SQLite.Synchronous, "FULL") && !strings.EqualFold(s.SQLite.Synchronous, "NORMAL") {
			return fmt.Errorf("store.sqlite.synchronous must be FULL or NORMAL, not %q", s.SQLite.Synchronous)
		}
	case DriverPostgres:
		if s.DSN == "" {
			return errors.New("store.dsn is required")
		}
		if s.MaxConns < 0 {
			return errors.New("store.max_conns must not be negative")
		}
	default:
		return fmt.Errorf("store.driver %q is not supported (sqlite or postgres)", s.Driver)
	}
	return nil
}

// validateWitnesses checks the witnesses the way their cosignatures will
// be counted: each once, by name and by public key.
func (a Audit) validateWitnesses() error {
	var errs []error
	keys := make([]*cosignature.Key, 0, len(a.Witnesses))
	for i, w := range a.Witnesses {
		where := fmt.Sprintf("audit.witnesses[%d]", i)
		if w.Name == "" {
			errs = append(errs, fmt.Errorf("%s: name is required", where))
		} else {
			where += " (" + w.Name + ")"
		}
		for _, o := range a.Witnesses[:i] {
			if w.Name != "" && o.Name == w.Name {
				errs = append(errs, fmt.Errorf("%s: the name is used twice", where))
			}
		}
		u, err := url.Parse(w.URL)
		switch {
		case err != nil || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || (u.Scheme != "https" && u.Scheme != "http"):
			errs = append(errs, fmt.Errorf("%s: url %q is not an https URL prefix", where, w.URL))
		case u.Scheme == "http" && !loopbackHost(u.Hostname()):
			errs = append(errs, fmt.Errorf("%s: url %q: plain HTTP is only allowed on loopback (terminate TLS in front of the witness)", where, w.URL))
		}
		k, err := cosignature.ParseKey(w.Key)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: key: %w", where, err))
			continue
		}
		keys = append(keys, k)
	}
	if len(errs) == 0 {
		if _, err := cosignature.NewSet(keys...); err != nil {
			errs = append(errs, fmt.Errorf("audit.witnesses: %w", err))
		}
	}
	switch n := len(a.Witnesses); {
	case n > 0 && (a.WitnessQuorum < 1 || a.WitnessQuorum > n):
		errs = append(errs, fmt.Errorf("audit.witness_quorum %d must be between 1 and the number of witnesses (%d)", a.WitnessQuorum, n))
	case n == 0 && a.WitnessQuorum != 0:
		errs = append(errs, errors.New("audit.witness_quorum is set but no audit.witnesses are configured"))
	}
	if a.RequireWitnessed && len(a.Witnesses) == 0 {
		errs = append(errs, errors.New("audit.require_witnessed needs audit.witnesses"))
	}
	return errors.Join(errs...)
}

// onLoopback refuses an address that is set and not on loopback.
func onLoopback(name, addr, why string) error {
	if addr == "" || loopback(addr) {
		return nil
	}
	return fmt.Errorf("%s %q is not a loopback address: %s", name, addr, why)
}

func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	return loopbackHost(host)
}

func loopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (ct Certificates) validate(k Keys) error {
	var errs []error
	if k.X509CA != "" && ct.X509CACert == "" {
		errs = append(errs, errors.New("keys.x509_ca needs certificates.x509_ca_cert, the CA certificate of that key (make one with `breakglassd hsm ca-cert`)"))
	}
	if v := ct.CRLValidity; v < time.Minute || v > 7*24*time.Hour {
		errs = append(errs, fmt.Errorf("certificates.crl_validity %s must be between 1m and 168h", v))
	}
	return errors.Join(errs...)
}

// issuerPathRE is what an issuer's path may hold: it becomes the prefix of
// the discovery, JWKS and introspection routes.
var issuerPathRE = regexp.MustCompile(`^(/[A-Za-z0-9._~-]+)*$`)

// ValidateIssuer checks the issuer relying parties will see as iss: an
// absolute https URL (OpenID Connect Discovery 1.0 §3, RFC 8414 §2) with a
// host, no user, query or fragment, and no trailing slash (iss is compared
// byte for byte, so there is one spelling); a path is allowed. http is
// accepted only for a loopback host, and only where allowHTTP says so (dev
// mode).
func ValidateIssuer(issuer string, allowHTTP bool) error {
	u, err := url.Parse(issuer)
	if err != nil {
		return fmt.Errorf("issuer %q is not a URL: %w", issuer, err)
	}
	switch {
	case u.Scheme == "http" && allowHTTP && loopbackHost(u.Hostname()):
	case u.Scheme == "http" && loopbackHost(u.Hostname()):
		return fmt.Errorf("issuer %q uses http: only dev mode may use http, and only on loopback; relying parties need https", issuer)
	case u.Scheme != "https":
		return fmt.Errorf("issuer %q must be an https URL, the address relying parties fetch discovery and keys from", issuer)
	}
	switch {
	case u.Host == "" || u.Opaque != "":
		return fmt.Errorf("issuer %q has no host", issuer)
	case u.User != nil:
		return fmt.Errorf("issuer %q must not hold a user name or password", issuer)
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.ContainsAny(issuer, "?#"):
		return fmt.Errorf("issuer %q must not have a query or fragment", issuer)
	case strings.HasSuffix(issuer, "/"):
		return fmt.Errorf("issuer %q must not end in \"/\": tokens carry it as iss, compared byte for byte; write %q", issuer, strings.TrimRight(issuer, "/"))
	case !issuerPathRE.MatchString(u.EscapedPath()) || u.RawPath != "":
		return fmt.Errorf("issuer %q has a path with characters other than letters, digits and . _ ~ -", issuer)
	case hasDotSegment(u.Path):
		// A client or proxy that resolves "." or ".." would fetch
		// discovery from another path than the one tokens name.
		return fmt.Errorf("issuer %q has a \".\" or \"..\" segment in its path; write the path it means", issuer)
	case u.Scheme+"://"+u.Host+u.Path != issuer:
		return fmt.Errorf("issuer %q is not in its plain form (%s)", issuer, u.Scheme+"://"+u.Host+u.Path)
	case strings.ToLower(u.Host) != u.Host:
		return fmt.Errorf("issuer %q must spell its host in lowercase", issuer)
	}
	return nil
}

func hasDotSegment(path string) bool {
	for _, seg := range strings.Split(path, "/") {
		if seg == "." || seg == ".." {
			return true
		}
	}
	return false
}
