package config

import (
	"bytes"
	"crypto/ed25519"
	"fmt"
	"strings"
	"testing"

	"filippo.io/torchwood"
)

const minimal = `
hsm: {token_label: t, pin_file: pin}
keys: {token: a, audit: b, checkpoint: c}
listen: {grpc: "127.0.0.1:1", https: "127.0.0.1:2"}
tls: {cert: s.crt, key: s.key}
identity: {client_ca: ca.crt, uri_prefix: "spiffe://x/user/"}
policy_file: policy.yaml
store: {sqlite: {path: broker.db}}
`

func TestParseResolvesPathsAndValidates(t *testing.T) {
	c, err := Parse([]byte(minimal), "/etc/breakglass/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.HSM.PINFile != "/etc/breakglass/pin" || c.Store.SQLite.Path != "/etc/breakglass/broker.db" || c.Store.Driver != "sqlite" {
		t.Errorf("paths not resolved: %+v", c)
	}
	tests := []struct {
		name, edit, want string
	}{
		{"unknown setting", "listen: {grpc: \"127.0.0.1:1\", https: \"127.0.0.1:2\", htps: x}", "htps"},
		{"plain HTTP off loopback", "listen: {grpc: \"127.0.0.1:1\", https: \"127.0.0.1:2\", plain_http: \"0.0.0.0:80\"}", "loopback"},
		{"no keys", "keys: {}", "keys.token is required"},
		{"unknown driver", "store: {driver: mysql}", "not supported"},
		{"profiles off loopback", "debug: {pprof: \"0.0.0.0:6060\"}", "loopback"},
		{"profiles on a name", "debug: {pprof: \"example.org:6060\"}", "loopback"},
		{"URI prefix without a trailing slash", "identity: {client_ca: ca.crt, uri_prefix: \"spiffe://x/user\"}", `must end in "/"`},
		{"URI prefix with an uppercase scheme", "identity: {client_ca: ca.crt, uri_prefix: \"SPIFFE://x/user/\"}", "lowercase"},
		{"unknown identity mode", "identity: {client_ca: ca.crt, mode: email}", "must be uri or cn"},
		{"console off loopback without an origin", "listen: {grpc: \"127.0.0.1:1\", https: \"127.0.0.1:2\", console: \"0.0.0.0:7446\"}", "set console.origin"},
		{"console origin without the listener", "console: {origin: \"https://b.example\"}", "need listen.console"},
		{"console origin over http", "listen: {grpc: \"127.0.0.1:1\", https: \"127.0.0.1:2\", console: \"0.0.0.0:7446\"}\nconsole: {origin: \"http://b.example\"}", "not an https origin"},
		{"console RP ID an IP", "listen: {grpc: \"127.0.0.1:1\", https: \"127.0.0.1:2\", console: \"0.0.0.0:7446\"}\nconsole: {origin: \"https://10.0.0.1:7446\"}", "never an IP"},
		{"console origin off its RP ID", "listen: {grpc: \"127.0.0.1:1\", https: \"127.0.0.1:2\", console: \"0.0.0.0:7446\"}\nconsole: {origin: \"https://b.example\", rp_id: other.example}", "not on the RP ID"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			field := strings.SplitN(tc.edit, ":", 2)[0]
			var lines []string
			found := false
			for _, l := range strings.Split(minimal, "\n") {
				if strings.HasPrefix(l, field+":") {
					l, found = tc.edit, true
				}
				lines = append(lines, l)
			}
			if !found {
				lines = append(lines, tc.edit)
			}
			// Parse validates: no caller can forget to.
			_, err := Parse([]byte(strings.Join(lines, "\n")), "c.yaml")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
	cons, err := Parse([]byte(strings.Replace(minimal, `https: "127.0.0.1:2"}`, `https: "127.0.0.1:2", console: "0.0.0.0:7446"}`, 1)+
		"\nconsole: {origin: \"https://console.b.example:7446\", rp_id: b.example}\n"), "c.yaml")
	if err != nil || cons.Console.RPID != "b.example" {
		t.Errorf("a console under its RP ID refused: %v", err)
	}
	lo, err := Parse([]byte(strings.Replace(minimal, `https: "127.0.0.1:2"}`, `https: "127.0.0.1:2", plain_http: "[::1]:8080"}`, 1)), "c.yaml")
	if err != nil || lo.Listen.PlainHTTP != "[::1]:8080" {
		t.Errorf("plain HTTP on ::1 refused: %v", err)
	}
}

// Every default is filled in by Load, so the components the daemon builds
// receive explicit values and a reader finds each default in defaults.go.
func TestDefaultsAreFilledIn(t *testing.T) {
	c, err := Parse([]byte(minimal), "/etc/breakglass/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	checks := map[string]bool{
		"health_interval":               c.HealthInterval == DefaultHealthInterval,
		"sweep_interval":                c.SweepInterval == DefaultSweepInterval,
		"audit.checkpoint_every":        c.Audit.CheckpointEvery == DefaultCheckpointEvery,
		"audit.checkpoint_interval":     c.Audit.CheckpointInterval == DefaultCheckpointInterval,
		"listen.metrics":                c.Listen.Metrics == DefaultMetricsAddr && loopback(c.Listen.Metrics),
		"store.driver":                  c.Store.Driver == DriverSQLite,
		"store.sqlite.synchronous":      c.Store.SQLite.Synchronous == DefaultSynchronous,
		"store.max_conns":               c.Store.MaxConns == DefaultMaxConns,
		"identity.mode":                 c.Identity.Mode == DefaultIdentityMode,
		"hsm.sign_timeout":              c.HSM.SignTimeout == DefaultSignTimeout,
		"hsm.signing_slots":             c.HSM.SigningSlots >= 2,
		"hsm.max_queue":                 c.HSM.MaxQueue == 64*c.HSM.SigningSlots,
		"limits.rate_per_second":        c.Limits.RatePerSecond == DefaultRate,
		"limits.burst":                  c.Limits.Burst == DefaultBurst,
		"limits.max_message_bytes":      c.Limits.MaxMessageBytes == DefaultMaxMessage,
		"limits.handshake_timeout":      c.Limits.HandshakeTimeout == DefaultHandshake,
		"notify.max_attempts":           c.Notify.MaxAttempts == DefaultMaxAttempts,
		"notify.backoff":                c.Notify.BackoffBase == DefaultBackoffBase && c.Notify.BackoffMax == DefaultBackoffMax,
		"notify.workers":                c.Notify.Workers == DefaultWorkers,
		"notify.poll_interval":          c.Notify.PollInterval == DefaultPollInterval,
		"tracing.sample_ratio":          c.Tracing.SampleRatio == DefaultSampleRatio,
		"tracing.service_name":          c.Tracing.ServiceName == DefaultServiceName,
		"hsm.pin_env (pin_file is set)": c.HSM.PINEnv == "",
	}
	for name, ok := range checks {
		if !ok {
			t.Errorf("%s: default not applied (%+v)", name, c)
		}
	}
	withSink, err := Parse([]byte(minimal+"notify: {sinks: [{name: s, type: file, path: e.jsonl}]}\n"), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if withSink.Notify.Sinks[0].Timeout != DefaultSinkTimeout {
		t.Errorf("sink timeout default not applied: %s", withSink.Notify.Sinks[0].Timeout)
	}
}

func TestWitnesses(t *testing.T) {
	// Keys made with torchwood's cosignature signer (seeds 1 and 2) and a
	// plain Ed25519 note key of the first.
	const (
		k1    = "witness.example/w1+"
		good  = "audit:\n  witnesses:\n    - {name: w1, url: \"https://w1.example/\", key: %s}\n    - {name: w2, url: \"http://127.0.0.1:7380\", key: %s}\n"
		alone = "audit:\n  witnesses:\n    - {name: w1, url: %q, key: %s}\n  witness_quorum: %d\n  require_witnessed: %t\n"
	)
	v1 := testVKey(t, "witness.example/w1", 1)
	v2 := testVKey(t, "witness.example/w2", 2)
	c, err := Parse([]byte(minimal+fmt.Sprintf(good, v1, v2)), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Audit.WitnessQuorum != 2 || c.Audit.WitnessTimeout != DefaultWitnessTimeout || c.Audit.WitnessRefresh != DefaultWitnessRefresh {
		t.Fatalf("defaults: %+v", c.Audit)
	}
	sameKey := testVKey(t, "witness.example/w2", 1)
	for label, tc := range map[string]struct{ yaml, want string }{
		"plain http off loopback": {fmt.Sprintf(alone, "http://w1.example", v1, 1, false), "only allowed on loopback"},
		"not a url":               {fmt.Sprintf(alone, "w1.example", v1, 1, false), "not an https URL"},
		"bad key":                 {fmt.Sprintf(alone, "https://w1.example", k1, 1, false), "key"},
		"quorum too large":        {fmt.Sprintf(alone, "https://w1.example", v1, 2, false), "between 1 and"},
		"duplicate":               {fmt.Sprintf(good, v1, v1), "given twice"},
		"one key, two names":      {fmt.Sprintf(good, v1, sameKey), "same public key"},
		"require without any":     {"audit: {require_witnessed: true}\n", "needs audit.witnesses"},
		"quorum without any":      {"audit: {witness_quorum: 1}\n", "no audit.witnesses"},
	} {
		if _, err := Parse([]byte(minimal+tc.yaml), "c.yaml"); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", label, err, tc.want)
		}
	}
}

func testVKey(t *testing.T, name string, seed byte) string {
	t.Helper()
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, 32))
	s, err := torchwood.NewCosignatureSigner(name, priv)
	if err != nil {
		t.Fatal(err)
	}
	return s.Verifier().String()
}
