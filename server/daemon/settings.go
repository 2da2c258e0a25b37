package daemon

import (
	"github.com/bgbroker/breakglass/hsm"
	"github.com/bgbroker/breakglass/server/config"
	"github.com/bgbroker/breakglass/server/event"
	"github.com/bgbroker/breakglass/server/grpcapi"
	"github.com/bgbroker/breakglass/server/identity"
	"github.com/bgbroker/breakglass/server/notify"
	"github.com/bgbroker/breakglass/server/store/postgres"
	"github.com/bgbroker/breakglass/server/store/sqlite"
	"github.com/bgbroker/breakglass/server/tracing"
)

// The configuration file's sections, turned into the configurations of the
// components they describe. config holds plain types and every default;
// these functions only copy.

// HSMConfig is the hsm package's configuration for the file's hsm: section.
func HSMConfig(c config.HSM) hsm.Config {
	return hsm.Config{Module: c.Module, TokenLabel: c.TokenLabel, TokenSerial: c.TokenSerial, Slot: c.Slot,
		PINFile: c.PINFile, PINEnv: c.PINEnv, SigningSlots: c.SigningSlots, SignTimeout: c.SignTimeout,
		MaxQueue: c.MaxQueue, Env: c.Env}
}

func identityConfig(c config.Identity) identity.Config {
	return identity.Config{ClientCA: c.ClientCA, CRL: c.CRL, Mode: c.Mode, URIPrefix: c.URIPrefix}
}

func sqliteConfig(c config.Store) sqlite.Config {
	return sqlite.Config{Path: c.SQLite.Path, Synchronous: c.SQLite.Synchronous}
}

func postgresConfig(c config.Store) postgres.Config {
	return postgres.Config{DSN: c.DSN, MaxConns: c.MaxConns}
}

func tracingConfig(c config.Tracing) tracing.Config {
	return tracing.Config{OTLPEndpoint: c.OTLPEndpoint, Insecure: c.Insecure, SampleRatio: c.SampleRatio, ServiceName: c.ServiceName}
}

func limits(c config.Limits) grpcapi.Limits {
	return grpcapi.Limits{RatePerSecond: c.RatePerSecond, Burst: c.Burst, MaxMessageBytes: c.MaxMessageBytes, HandshakeTimeout: c.HandshakeTimeout,
		MaxConnectionAge: c.MaxConnectionAge, MaxConnectionAgeGrace: c.MaxConnectionAgeGrace}
}

func notifyConfig(c config.Notify) notify.Config {
	return notify.Config{Sinks: sinkConfigs(c.Sinks), MaxAttempts: c.MaxAttempts, BackoffBase: c.BackoffBase,
		BackoffMax: c.BackoffMax, Workers: c.Workers, PollInterval: c.PollInterval}
}

func sinkConfigs(sinks []config.Sink) []notify.SinkConfig {
	out := make([]notify.SinkConfig, 0, len(sinks))
	for _, s := range sinks {
		out = append(out, notify.SinkConfig{Name: s.Name, Type: s.Type, URL: s.URL, SecretFile: s.SecretFile,
			SecretEnv: s.SecretEnv, CAFile: s.CAFile, Path: s.Path, Timeout: s.Timeout,
			Route: event.Route{Events: s.Events, Accounts: s.Accounts}})
	}
	return out
}
