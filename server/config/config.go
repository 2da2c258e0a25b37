// Package config reads the broker's YAML configuration file.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/hsm"
	"github.com/bgbroker/breakglass/server/grpcapi"
	"github.com/bgbroker/breakglass/server/identity"
	"github.com/bgbroker/breakglass/server/notify"
	"github.com/bgbroker/breakglass/server/store/postgres"
	"github.com/bgbroker/breakglass/server/store/sqlite"
	"github.com/bgbroker/breakglass/server/tracing"
)

// Config is the whole configuration file. Relative paths are relative to
// the file's directory.
type Config struct {
	HSM      hsm.Config      `yaml:"hsm"`
	Keys     Keys            `yaml:"keys"`
	Listen   Listen          `yaml:"listen"`
	TLS      TLS             `yaml:"tls"`
	Identity identity.Config `yaml:"identity"`
	// Issuer is the HTTPS base URL relying parties see as iss; by default
	// https://<https listen address>.
	Issuer string `yaml:"issuer"`
	// PolicyFile names the policy; Policy holds it inline instead.
	PolicyFile string         `yaml:"policy_file"`
	Policy     yaml.Node      `yaml:"policy"`
	Store      Store          `yaml:"store"`
	Audit      Audit          `yaml:"audit"`
	Notify     notify.Config  `yaml:"notify"`
	Limits     grpcapi.Limits `yaml:"limits"`
	Log        Log            `yaml:"log"`
	// HealthInterval is how often the HSM keys are test-signed (default 5s).
	HealthInterval time.Duration `yaml:"health_interval"`
	// SweepInterval is how often deadlines are recorded (default 1s).
	SweepInterval time.Duration `yaml:"sweep_interval"`
	Debug         Debug         `yaml:"debug"`
	// Tracing exports OpenTelemetry traces over OTLP; off by default.
	Tracing tracing.Config `yaml:"tracing"`

	path string
}

// Keys names the HSM keys the broker signs with, by label.
type Keys struct {
	Token      string `yaml:"token"`
	Audit      string `yaml:"audit"`
	Checkpoint string `yaml:"checkpoint"`
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
	// CheckpointEvery signs a checkpoint after this many entries (default 64).
	CheckpointEvery uint64 `yaml:"checkpoint_every"`
	// CheckpointInterval signs one this long after the last when the log
	// grew (default 10s).
	CheckpointInterval time.Duration `yaml:"checkpoint_interval"`
}

// Listen holds the listener addresses.
type Listen struct {
	// GRPC is the mTLS gRPC API (TLS 1.3, client certificates required).
	GRPC string `yaml:"grpc"`
	// HTTPS serves the JWKS, metadata and health with the server
	// certificate and no client certificate.
	HTTPS string `yaml:"https"`
	// PlainHTTP serves the same without TLS; only on a loopback address.
	PlainHTTP string `yaml:"plain_http"`
}

// TLS is the server certificate.
type TLS struct {
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// Store selects the storage engine.
type Store struct {
	// Driver is sqlite (default: one file, one broker) or postgres
	// (several replicas sharing one database).
	Driver string        `yaml:"driver"`
	SQLite sqlite.Config `yaml:"sqlite"`
	// DSN is the PostgreSQL connection string (driver postgres). Keep the
	// password out of it: PGPASSWORD or a passfile.
	DSN string `yaml:"dsn"`
	// MaxConns bounds this replica's PostgreSQL connections (default 16).
	MaxConns int `yaml:"max_conns"`
}

// Postgres is the PostgreSQL store's configuration.
func (s Store) Postgres() postgres.Config {
	return postgres.Config{DSN: s.DSN, MaxConns: s.MaxConns}
}

// Log configures logging.
type Log struct {
	// Level is debug, info, warn or error.
	Level string `yaml:"level"`
	// Format is text or json.
	Format string `yaml:"format"`
}

// Load reads and decodes path. Unknown fields are errors: a misspelt
// setting must not silently fall back to a default in a security tool.
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

// Parse decodes a configuration; path locates relative paths and names the
// file in messages.
func Parse(b []byte, path string) (*Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	c.path = path
	c.resolve()
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
	c.Identity.ClientCA, c.Identity.CRL = c.rel(c.Identity.ClientCA), c.rel(c.Identity.CRL)
	c.PolicyFile = c.rel(c.PolicyFile)
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
	if c.Store.Driver == "" {
		c.Store.Driver = "sqlite"
	}
	if c.HealthInterval <= 0 {
		c.HealthInterval = 5 * time.Second
	}
	if c.SweepInterval <= 0 {
		c.SweepInterval = time.Second
	}
}

// Validate reports every missing or unsafe setting.
func (c *Config) Validate() error {
	var errs []error
	need := func(v, name string) {
		if v == "" {
			errs = append(errs, fmt.Errorf("%s is required", name))
		}
	}
	if err := c.HSM.Validate(); err != nil {
		errs = append(errs, err)
	}
	need(c.Keys.Token, "keys.token")
	need(c.Keys.Audit, "keys.audit")
	need(c.Keys.Checkpoint, "keys.checkpoint")
	need(c.Listen.GRPC, "listen.grpc")
	need(c.Listen.HTTPS, "listen.https")
	need(c.TLS.Cert, "tls.cert")
	need(c.TLS.Key, "tls.key")
	need(c.Identity.ClientCA, "identity.client_ca")
	if c.PolicyFile == "" && c.Policy.Kind == 0 {
		errs = append(errs, errors.New("policy_file (or an inline policy:) is required"))
	}
	if c.PolicyFile != "" && c.Policy.Kind != 0 {
		errs = append(errs, errors.New("policy_file and policy are alternatives: set one"))
	}
	if err := c.Tracing.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.Debug.Pprof != "" && !loopback(c.Debug.Pprof) {
		errs = append(errs, fmt.Errorf("debug.pprof %q is not a loopback address: profiles are only served on loopback", c.Debug.Pprof))
	}
	if c.Listen.PlainHTTP != "" && !loopback(c.Listen.PlainHTTP) {
		errs = append(errs, fmt.Errorf("listen.plain_http %q is not a loopback address: plain HTTP is only allowed on loopback", c.Listen.PlainHTTP))
	}
	switch c.Store.Driver {
	case "sqlite":
		need(c.Store.SQLite.Path, "store.sqlite.path")
	case "postgres":
		need(c.Store.DSN, "store.dsn")
		if c.Store.MaxConns < 0 {
			errs = append(errs, errors.New("store.max_conns must not be negative"))
		}
	default:
		errs = append(errs, fmt.Errorf("store.driver %q is not supported (sqlite or postgres)", c.Store.Driver))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s: %w", c.path, errors.Join(errs...))
	}
	return nil
}

func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// LoadPolicy reads and validates the policy the configuration names.
func (c *Config) LoadPolicy() (*policy.Policy, string, error) {
	if c.PolicyFile != "" {
		b, err := os.ReadFile(c.PolicyFile)
		if err != nil {
			return nil, c.PolicyFile, fmt.Errorf("reading policy: %w", err)
		}
		p, err := policy.Load(b, c.PolicyFile)
		return p, c.PolicyFile, err
	}
	if c.Policy.Kind == 0 {
		return nil, "", errors.New("no policy configured: set policy_file or policy")
	}
	p, err := policy.LoadNode(&c.Policy, c.path+" (policy:)")
	return p, c.path, err
}
