package config

import (
	"strings"
	"testing"
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
