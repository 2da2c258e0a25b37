// Package config reads the broker's YAML configuration file into plain
// types. It imports no implementation: the daemon turns each section into
// the configuration of the component it describes. Every default lives in
// defaults.go, and a Config that Load returns has passed Validate.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/format/statement"
)

// Config is the whole configuration file. Relative paths are relative to
// the file's directory.
type Config struct {
	HSM      HSM      `yaml:"hsm"`
	Keys     Keys     `yaml:"keys"`
	Listen   Listen   `yaml:"listen"`
	TLS      TLS      `yaml:"tls"`
	Identity Identity `yaml:"identity"`
	// Issuer is the public HTTPS URL relying parties use: the iss of every
	// token, under which discovery (/.well-known/openid-configuration), the
	// JWKS and introspection are served. A path is allowed; no trailing
	// slash, query or fragment. AWS wants a DNS name without a port. By
	// default https://<https listen address>.
	Issuer string `yaml:"issuer"`
	// PolicyFile names the policy; Policy holds it inline instead.
	PolicyFile string    `yaml:"policy_file"`
	Policy     yaml.Node `yaml:"policy"`
	// PolicySignatures names the bundle of policy admins' statements that
	// comes with the policy (JSON Lines, docs/signing.md): by default the
	// policy file with its extension replaced by .sigs (policy.yaml ->
	// policy.sigs), or policy.sigs beside the configuration for an inline
	// policy. A missing file is an empty bundle.
	PolicySignatures string `yaml:"policy_signatures"`
	Store            Store  `yaml:"store"`
	Audit            Audit  `yaml:"audit"`
	Notify           Notify `yaml:"notify"`
	Limits           Limits `yaml:"limits"`
	Log              Log    `yaml:"log"`
	// HealthInterval is how often the HSM keys are test-signed.
	HealthInterval time.Duration `yaml:"health_interval"`
	// SweepInterval is how often deadlines are recorded.
	SweepInterval time.Duration `yaml:"sweep_interval"`
	Debug         Debug         `yaml:"debug"`
	// Tracing exports OpenTelemetry traces over OTLP; off by default.
	Tracing Tracing `yaml:"tracing"`

	// Certificates configures the SSH and X.509 certificate authorities
	// (their keys are named under keys:).
	Certificates Certificates `yaml:"certificates"`
	// Console configures the approver console (listen.console).
	Console Console `yaml:"console"`

	path string
}

// HSM selects a PKCS#11 module and token and says where the PIN comes
// from. Exactly one of TokenLabel, TokenSerial and Slot selects the token.
type HSM struct {
	// Module is the path of the PKCS#11 library; empty tries the places
	// SoftHSM2 is installed by common distributions.
	Module string `yaml:"module"`
	// TokenLabel selects the token by its label (the usual choice).
	TokenLabel string `yaml:"token_label"`
	// TokenSerial selects the token by serial number instead.
	TokenSerial string `yaml:"token_serial"`
	// Slot selects the token by slot ID instead.
	Slot *uint `yaml:"slot"`
	// PINFile is a file holding the user PIN; it must not be readable by
	// group or others.
	PINFile string `yaml:"pin_file"`
	// PINEnv names the environment variable holding the PIN when PINFile
	// is empty; BREAKGLASS_HSM_PIN when both are empty.
	PINEnv string `yaml:"pin_env"`
	// SigningSlots bounds the signatures in flight at once (and so the
	// goroutines a hung HSM can hold).
	SigningSlots int `yaml:"signing_slots"`
	// SignTimeout bounds one signature, waiting for a slot included.
	SignTimeout time.Duration `yaml:"sign_timeout"`
	// MaxQueue bounds the signatures waiting for a slot.
	MaxQueue int `yaml:"max_queue"`
	// Env holds environment variables the module reads when it loads, such
	// as SOFTHSM2_CONF.
	Env map[string]string `yaml:"env"`
}

// Keys names the HSM keys the broker signs with, by label.
type Keys struct {
	Token      string `yaml:"token"`
	Audit      string `yaml:"audit"`
	Checkpoint string `yaml:"checkpoint"`
	// SSHCA signs OpenSSH user certificates (purpose ssh-ca); optional.
	SSHCA string `yaml:"ssh_ca"`
	// X509CA signs X.509 client certificates and the CRL (purpose
	// x509-ca); optional, and then certificates.x509_ca_cert is required.
	X509CA string `yaml:"x509_ca"`
}

// Certificates configures the certificate authorities.
type Certificates struct {
	// X509CACert is a PEM file with the CA certificate of keys.x509_ca
	// (self-signed by `breakglassd hsm ca-cert`, or signed by the
	// organisation's root from `breakglassd hsm csr`), and of retired X.509
	// CA keys while their certificates are valid. The broker refuses to
	// start when it does not match the key.
	X509CACert string `yaml:"x509_ca_cert"`
	// CRLValidity is the CRL's nextUpdate after thisUpdate (default 1h);
	// it is re-signed when half of it has passed.
	CRLValidity time.Duration `yaml:"crl_validity"`
}

// Identity says how callers are recognised from their client certificates.
type Identity struct {
	// ClientCA is a PEM file with the CA certificate(s) client certificates
	// must chain to. The broker never holds the CA's key.
	ClientCA string `yaml:"client_ca"`
	// CRL is an optional CRL file (PEM or DER) issued by the client CA. It
	// is re-read when it changes.
	CRL string `yaml:"crl"`
	// Mode is "uri": the principal is the rest of the one URI SAN starting
	// with URIPrefix, compared as written in the certificate (case
	// included); or "cn": the subject common name.
	Mode string `yaml:"mode"`
	// URIPrefix, e.g. "spiffe://example.org/user/"; it must end in "/".
	URIPrefix string `yaml:"uri_prefix"`
}

// Debug configures diagnostics.
type Debug struct {
	// Pprof serves net/http/pprof on this address; loopback only, off by
	// default.
	Pprof string `yaml:"pprof"`
}

// Audit configures the audit log's checkpoints.
type Audit struct {
	// Origin names the log: the first line of every checkpoint and the
	// signed-note name of the checkpoint key. Set it once; a log keeps its
	// origin for life. Default: breakglass/ and the first 16 hex digits of
	// the checkpoint key's fingerprint, unique to the deployment.
	Origin string `yaml:"origin"`
	// CheckpointEvery signs a checkpoint after this many entries.
	CheckpointEvery uint64 `yaml:"checkpoint_every"`
	// CheckpointInterval signs one this long after the last when the log
	// grew.
	CheckpointInterval time.Duration `yaml:"checkpoint_interval"`
	// Witnesses are C2SP tlog-witness witnesses every new checkpoint is
	// sent to; their cosignatures are kept and served with it.
	Witnesses []Witness `yaml:"witnesses"`
	// WitnessQuorum is how many witnesses a checkpoint needs to count as
	// witnessed (default: a majority of them).
	WitnessQuorum int `yaml:"witness_quorum"`
	// RequireWitnessed withholds a grant's first token until a checkpoint
	// covering its approval carries WitnessQuorum cosignatures.
	RequireWitnessed bool `yaml:"require_witnessed"`
	// WitnessTimeout bounds one call to a witness; WitnessBackoffMax caps
	// the wait between retries to a failing one; WitnessRefresh sends an
	// unchanged checkpoint again when a witness's cosignature of it is
	// this old, so its timestamp stays recent.
	WitnessTimeout    time.Duration `yaml:"witness_timeout"`
	WitnessBackoffMax time.Duration `yaml:"witness_backoff_max"`
	WitnessRefresh    time.Duration `yaml:"witness_refresh"`
}

// Witness is one C2SP tlog-witness witness.
type Witness struct {
	// Name is how people, health and metrics call it.
	Name string `yaml:"name"`
	// URL is its submission prefix (add-checkpoint is POSTed under it):
	// HTTPS, or HTTP on a loopback address only.
	URL string `yaml:"url"`
	// Key is its cosignature verifier key (c2sp.org/tlog-cosignature,
	// NAME+HASH+BASE64 with signature type 0x04), as litewitness logs it.
	Key string `yaml:"key"`
}

// Listen holds the listener addresses.
type Listen struct {
	// GRPC is the mTLS gRPC API (TLS 1.3, client certificates required).
	GRPC string `yaml:"grpc"`
	// HTTPS serves the public keys, metadata and health with the server
	// certificate and no client certificate.
	HTTPS string `yaml:"https"`
	// PlainHTTP serves the same without TLS; only on a loopback address.
	PlainHTTP string `yaml:"plain_http"`
	// Metrics serves Prometheus metrics, which show live break-glass
	// activity, without TLS or authentication: loopback by default, for a
	// local scraper or an authenticating proxy.
	Metrics string `yaml:"metrics"`
	// Console serves the approver console (HTTPS, client certificates from
	// the client CA required); off unless set, on in dev mode.
	Console string `yaml:"console"`
}

// Console configures the approver console served on listen.console.
type Console struct {
	// Origin is the address browsers use, https://host[:port]: passkeys
	// are bound to it, and every state change must come from it. By
	// default https://localhost:PORT for a loopback listener; required
	// otherwise. The server certificate (tls.cert) must name its host.
	Origin string `yaml:"origin"`
	// RPID is the WebAuthn relying party ID passkeys are scoped to: the
	// origin's host (the default) or a domain it is under. Changing it
	// makes every bound passkey useless.
	RPID string `yaml:"rp_id"`
}

// TLS is the server certificate.
type TLS struct {
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// Store selects the storage engine.
type Store struct {
	// Driver is sqlite (one file, one broker) or postgres (several
	// replicas sharing one database).
	Driver string `yaml:"driver"`
	SQLite SQLite `yaml:"sqlite"`
	// DSN is the PostgreSQL connection string (driver postgres). Keep the
	// password out of it: PGPASSWORD or a passfile.
	DSN string `yaml:"dsn"`
	// MaxConns bounds this replica's PostgreSQL connections.
	MaxConns int `yaml:"max_conns"`
}

// The store drivers.
const (
	DriverSQLite   = "sqlite"
	DriverPostgres = "postgres"
)

// SQLite is the embedded store's file.
type SQLite struct {
	// Path is the database file.
	Path string `yaml:"path"`
	// Synchronous is FULL (a commit survives power loss) or NORMAL
	// (survives a process crash; faster).
	Synchronous string `yaml:"synchronous"`
}

// Notify configures the out-of-band announcements.
type Notify struct {
	Sinks []Sink `yaml:"sinks"`
	// MaxAttempts before an event is dead-lettered.
	MaxAttempts int `yaml:"max_attempts"`
	// BackoffBase and BackoffMax shape the retry delays: full jitter over
	// base·2^attempt, capped at max.
	BackoffBase time.Duration `yaml:"backoff_base"`
	BackoffMax  time.Duration `yaml:"backoff_max"`
	// Workers deliver in parallel.
	Workers int `yaml:"workers"`
	// PollInterval is how often due retries are looked for.
	PollInterval time.Duration `yaml:"poll_interval"`
	// Retention is how long delivered events (and dead letters once
	// acknowledged) stay in the outbox before they are pruned; pending and
	// unacknowledged dead events stay until delivered or acknowledged.
	Retention time.Duration `yaml:"retention"`
}

// Sink is one destination of announcements.
type Sink struct {
	Name string `yaml:"name"`
	// Type is webhook (Standard Webhooks), slack, or file.
	Type string `yaml:"type"`
	// URL is where webhook and slack sinks POST. HTTPS, or HTTP on a
	// loopback address only.
	URL string `yaml:"url"`
	// SecretFile or SecretEnv hold the webhook's whsec_ secret.
	SecretFile string `yaml:"secret_file"`
	SecretEnv  string `yaml:"secret_env"`
	// CAFile verifies an HTTPS receiver with a private CA.
	CAFile string `yaml:"ca_file"`
	// Path is the file sink's JSON Lines file.
	Path string `yaml:"path"`
	// Timeout bounds one delivery attempt.
	Timeout time.Duration `yaml:"timeout"`
	// Events are type patterns ("grant.*", "token.issued"); empty means all.
	Events []string `yaml:"events"`
	// Accounts limits to these accounts; empty means all.
	Accounts []string `yaml:"accounts"`
}

// Limits protect the broker from one caller.
type Limits struct {
	// RatePerSecond and Burst bound calls per principal.
	RatePerSecond float64 `yaml:"rate_per_second"`
	Burst         int     `yaml:"burst"`
	// MaxMessageBytes bounds a request message.
	MaxMessageBytes int `yaml:"max_message_bytes"`
	// HandshakeTimeout bounds the TLS handshake.
	HandshakeTimeout time.Duration `yaml:"handshake_timeout"`
	// MaxConnectionAge ends every gRPC connection this long after it was
	// made, so that each one handshakes again with the client CA (client
	// certificates are also checked on every call); the calls in flight
	// get MaxConnectionAgeGrace to finish.
	MaxConnectionAge      time.Duration `yaml:"max_connection_age"`
	MaxConnectionAgeGrace time.Duration `yaml:"max_connection_age_grace"`
}

// Tracing exports OpenTelemetry traces.
type Tracing struct {
	// OTLPEndpoint is the collector's OTLP/gRPC address, host:port; empty
	// turns tracing off.
	OTLPEndpoint string `yaml:"otlp_endpoint"`
	// Insecure sends to the collector without TLS (a sidecar on loopback).
	Insecure bool `yaml:"insecure"`
	// SampleRatio is the share of new traces kept; a caller's sampled
	// trace is always continued.
	SampleRatio float64 `yaml:"sample_ratio"`
	// ServiceName names this broker in traces.
	ServiceName string `yaml:"service_name"`
}

// Log configures logging.
type Log struct {
	// Level is debug, info, warn or error.
	Level string `yaml:"level"`
	// Format is text or json.
	Format string `yaml:"format"`
}

// Load reads, decodes and validates path. Unknown fields are errors: a
// misspelt setting must not silently fall back to a default in a security
// tool.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	c, err := Parse(b, path)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Parse decodes a configuration, resolves its relative paths, fills in the
// defaults and validates it; path locates relative paths and names the file
// in messages.
func Parse(b []byte, path string) (*Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	c.path = path
	c.resolve()
	c.setDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Path is the file the configuration came from.
func (c *Config) Path() string { return c.path }

func (c *Config) rel(p string) string {
	if p == "" || filepath.IsAbs(p) || c.path == "" {
		return p
	}
	return filepath.Join(filepath.Dir(c.path), p)
}

func (c *Config) resolve() {
	c.HSM.PINFile = c.rel(c.HSM.PINFile)
	c.TLS.Cert, c.TLS.Key = c.rel(c.TLS.Cert), c.rel(c.TLS.Key)
	c.Certificates.X509CACert = c.rel(c.Certificates.X509CACert)
	c.Identity.ClientCA, c.Identity.CRL = c.rel(c.Identity.ClientCA), c.rel(c.Identity.CRL)
	c.PolicyFile = c.rel(c.PolicyFile)
	c.PolicySignatures = c.rel(c.PolicySignatures)
	c.Store.SQLite.Path = c.rel(c.Store.SQLite.Path)
	for i := range c.Notify.Sinks {
		sk := &c.Notify.Sinks[i]
		sk.SecretFile, sk.CAFile, sk.Path = c.rel(sk.SecretFile), c.rel(sk.CAFile), c.rel(sk.Path)
	}
	for k, v := range c.HSM.Env {
		if k == "SOFTHSM2_CONF" {
			c.HSM.Env[k] = c.rel(v)
		}
	}
}

// PolicySignaturesPath is where the bundle of statements that comes with
// the policy is read from.
func (c *Config) PolicySignaturesPath() string {
	switch {
	case c.PolicySignatures != "":
		return c.PolicySignatures
	case c.PolicyFile != "":
		return strings.TrimSuffix(c.PolicyFile, filepath.Ext(c.PolicyFile)) + ".sigs"
	case c.path != "":
		return filepath.Join(filepath.Dir(c.path), "policy.sigs")
	}
	return "policy.sigs"
}

// LoadPolicySignatures reads the bundle that comes with the policy; a
// missing file is an empty bundle.
func (c *Config) LoadPolicySignatures() ([]statement.Signed, string, error) {
	path := c.PolicySignaturesPath()
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, path, nil
	}
	if err != nil {
		return nil, path, fmt.Errorf("reading the policy signatures: %w", err)
	}
	defer f.Close()
	sigs, err := statement.ParseBundle(f)
	if err != nil {
		return nil, path, fmt.Errorf("%s: %w", path, err)
	}
	return sigs, path, nil
}

// LoadPolicy reads and validates the policy the configuration names. A
// policy that names no identity rule gets the configuration's (identity:
// mode and uri_prefix): every policy the broker runs names the rule it is
// judged by, and its hash covers it.
func (c *Config) LoadPolicy() (*policy.Policy, string, error) {
	var (
		p      *policy.Policy
		source string
		err    error
	)
	switch {
	case c.PolicyFile != "":
		source = c.PolicyFile
		b, rerr := os.ReadFile(c.PolicyFile)
		if rerr != nil {
			return nil, c.PolicyFile, fmt.Errorf("reading policy: %w", rerr)
		}
		p, err = policy.Load(b, c.PolicyFile)
	case c.Policy.Kind == 0:
		return nil, "", errors.New("no policy configured: set policy_file or policy")
	default:
		source = c.path
		p, err = policy.LoadNode(&c.Policy, c.path+" (policy:)")
	}
	if err != nil {
		return nil, source, err
	}
	if p.Identity == nil {
		p = p.WithIdentity(c.IdentityRule())
	}
	return p, source, nil
}

// IdentityRule is the identity rule the identity: section names, the
// default for a policy that names none.
func (c *Config) IdentityRule() policy.Identity {
	if c.Identity.Mode == policy.IdentityCN {
		return policy.Identity{Mode: policy.IdentityCN}
	}
	return policy.Identity{Mode: policy.IdentityURI, URIPrefix: c.Identity.URIPrefix}
}
