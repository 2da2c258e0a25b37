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
	if err := c.Validate(); err != nil {
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
			c, err := Parse([]byte(strings.Join(lines, "\n")), "c.yaml")
			if err == nil {
				err = c.Validate()
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
	lo, err := Parse([]byte(strings.Replace(minimal, `https: "127.0.0.1:2"}`, `https: "127.0.0.1:2", plain_http: "[::1]:8080"}`, 1)), "c.yaml")
	if err != nil || lo.Validate() != nil {
		t.Errorf("plain HTTP on ::1 refused: %v", err)
	}
}
