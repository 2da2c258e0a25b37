package config

import (
	"path/filepath"
	"testing"
)

// fuzzConfig sets every section, with an inline policy, so that mutations
// reach each nested decoder and the policy loader behind LoadPolicy.
const fuzzConfig = `
hsm: {token_label: t, pin_file: pin, signing_slots: 4, sign_timeout: 2s, env: {SOFTHSM2_CONF: softhsm2.conf}}
keys: {token: a, audit: b, checkpoint: c}
listen: {grpc: "127.0.0.1:1", https: "127.0.0.1:2", plain_http: "[::1]:8080"}
tls: {cert: s.crt, key: s.key}
identity: {client_ca: ca.crt, crl: ca.crl, mode: uri, uri_prefix: "spiffe://x/user/"}
issuer: https://broker.example
store: {driver: sqlite, sqlite: {path: broker.db, synchronous: FULL}}
audit: {origin: example.org/breakglass, checkpoint_every: 64, checkpoint_interval: 10s}
notify:
  max_attempts: 3
  sinks:
    - {name: soc, type: webhook, url: "https://soc.example/hook", secret_env: WH, events: ["grant.*"], accounts: [prod-db]}
    - {name: log, type: file, path: events.jsonl}
limits: {rate_per_second: 2.5, burst: 10, max_message_bytes: 65536, handshake_timeout: 5s}
log: {level: info, format: json}
health_interval: 5s
sweep_interval: 1s
debug: {pprof: "localhost:6060"}
policy:
  groups: {sre: [alice], db: [bob]}
  accounts:
    - name: prod-db
      owner: db
      requesters: [sre]
      audiences: [db.example]
      max_ttl: 1h
      approval_window: 10m
      activation_window: 10m
      quorum: [{require: [{group: db, approvals: 1}]}]
`

// FuzzParse feeds arbitrary files to the configuration reader. The broker
// reads this file before anything else, so it must fail cleanly, never
// crash, and never leave a relative path unresolved: the broker would then
// read files relative to wherever it was started.
func FuzzParse(f *testing.F) {
	f.Add([]byte(fuzzConfig))
	f.Add([]byte(minimal))
	f.Add([]byte(""))
	f.Add([]byte("policy: &p {groups: *p}\n"))
	f.Add([]byte("store: {driver: postgres, dsn: 'host=/tmp', max_conns: -1}\nhealth_interval: -5s\n"))
	f.Add([]byte("listen: {plain_http: \"[::ffff:127.0.0.1]:80\"}\ndebug: {pprof: \"[fe80::1%lo]:1\"}\n"))

	const path = "/etc/breakglass/config.yaml"
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse(b, path)
		if err != nil {
			return
		}
		paths := []string{c.HSM.PINFile, c.TLS.Cert, c.TLS.Key, c.Identity.ClientCA, c.Identity.CRL, c.PolicyFile,
			c.Store.SQLite.Path, c.HSM.Env["SOFTHSM2_CONF"]}
		for _, s := range c.Notify.Sinks {
			paths = append(paths, s.SecretFile, s.CAFile, s.Path)
		}
		for _, p := range paths {
			if p != "" && !filepath.IsAbs(p) {
				t.Fatalf("%q was not resolved against %s", p, path)
			}
		}
		if c.HealthInterval <= 0 || c.SweepInterval <= 0 || c.Store.Driver == "" {
			t.Fatalf("defaults not applied: health %s, sweep %s, driver %q", c.HealthInterval, c.SweepInterval, c.Store.Driver)
		}
		_ = c.Validate()
		// An inline policy is parsed from the same bytes; a policy_file
		// would be read from disk, which a fuzz target must not do.
		if c.PolicyFile == "" && c.Policy.Kind != 0 {
			_, _, _ = c.LoadPolicy()
		}
	})
}
