package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"github.com/bgbroker/breakglass/format/statement"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/stats"

	"github.com/bgbroker/breakglass/hsm"
	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
	"github.com/bgbroker/breakglass/server/broker"
	"github.com/bgbroker/breakglass/server/checkpoint"
	"github.com/bgbroker/breakglass/server/config"
	"github.com/bgbroker/breakglass/server/grpcapi"
	"github.com/bgbroker/breakglass/server/keyring"
	"github.com/bgbroker/breakglass/server/metrics"
	"github.com/bgbroker/breakglass/server/notify"
	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/tracing"
)

// The constructors Start runs in order. Each sets one part of the Daemon
// from the configuration and the parts before it.

func loadServerCert(c config.TLS) (tls.Certificate, *x509.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("loading the server certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("tls.cert: %w", err)
	}
	return cert, leaf, nil
}

// openHSM opens the token, with tracing when it is on. Tracing starts
// here: the HSM and the store are the first things traced.
func (d *Daemon) openHSM(ctx context.Context) (err error) {
	if d.module, err = hsm.Open(ctx, HSMConfig(d.cfg.HSM), d.log); err != nil {
		return err
	}
	if d.tracing, err = tracing.New(ctx, tracingConfig(d.cfg.Tracing), Version()); err != nil {
		return err
	}
	d.metrics = metrics.New()
	inst := hsm.Instruments{}
	if d.tracing.Enabled() {
		inst.Tracer = d.tracing.Tracer("breakglass/hsm")
	}
	d.metrics.RegisterHSM(d.module, inst)
	return nil
}

func (d *Daemon) openStore(ctx context.Context) (err error) {
	if d.store, err = openStore(ctx, d.cfg, d.log); err != nil {
		return err
	}
	if d.tracing.Enabled() {
		d.store = store.Traced(d.store, d.tracing.Tracer("breakglass/store"))
	}
	return nil
}

// loadKeys finds the signing keys the registry (or, the first time, the
// configuration) names, and test-signs with each before serving.
func (d *Daemon) loadKeys(ctx context.Context) (err error) {
	d.wants = keyWants(d.cfg, d.policy)
	rc := keyring.Config{Module: d.module, Store: d.store, Issuer: d.Ready.Issuer, Log: d.log, Now: d.now}
	if d.ring, d.origin, err = loadRing(ctx, d.cfg, rc, d.wants); err != nil {
		return err
	}
	if err := hsm.Healthy(d.module.Check(ctx, d.ring.Keys()...)); err != nil {
		return fmt.Errorf("HSM self-test failed: %w", err)
	}
	return nil
}

func (d *Daemon) newCheckpointer(ctx context.Context) (err error) {
	if err := d.newWitnesses(ctx); err != nil {
		return err
	}
	signer := keyring.NoteSigner{Ring: d.ring, Origin: d.origin, Ctx: context.WithoutCancel(ctx)}
	d.Checkpoints, err = checkpoint.New(ctx, checkpoint.Config{Store: d.store, Signer: signer, Origin: d.origin,
		Every: d.cfg.Audit.CheckpointEvery, Interval: d.cfg.Audit.CheckpointInterval, Now: d.now, Log: d.log,
		OnNew: d.checkpointSigned})
	return err
}

// newBroker builds the broker, which logs the policy when it changed, and
// records the first keys in the registry.
func (d *Daemon) newBroker(ctx context.Context) (err error) {
	d.Broker, err = broker.New(ctx, broker.Config{Store: d.store, Policy: d.policy, PolicySource: d.policySource, Keys: d.ring,
		Now: d.now, Log: d.log, SweepInterval: d.cfg.SweepInterval, OutboxRetention: d.cfg.Notify.Retention, Origin: d.origin, Certs: d.ident,
		Routes: notify.NewRouter(sinkConfigs(d.cfg.Notify.Sinks)), Observer: observer{d},
		Witnesses: d.witnessing(d.ctx, d.Checkpoints), Authorities: d.brokerAuthorities(), Checkpoints: d.Checkpoints,
		PolicySignatures: d.policySigs, AcceptUnsignedGenesis: d.acceptGenesis, SignPolicy: d.policySigner()})
	if err != nil {
		return err
	}
	return d.ring.Bootstrap(ctx, d.Broker, d.wants)
}

// policySigner is dev mode's signer of the configured policy, with the
// log's origin bound in.
func (d *Daemon) policySigner() func(previous, hash string) ([]statement.Signed, error) {
	if d.signPolicy == nil {
		return nil
	}
	return func(previous, hash string) ([]statement.Signed, error) {
		return d.signPolicy(d.origin, previous, hash, d.now())
	}
}

func (d *Daemon) newDispatcher(context.Context) (err error) {
	d.dispatcher, err = notify.NewDispatcher(notifyConfig(d.cfg.Notify), d.store, d.Broker.FinishDelivery, d.now, d.log)
	if err != nil {
		return err
	}
	d.dispatcher.Observe(d.metrics.ObserveDelivery)
	return nil
}

func (d *Daemon) newGRPC(context.Context) (err error) {
	var statsHandler stats.Handler
	if d.tracing.Enabled() {
		statsHandler = otelgrpc.NewServerHandler(otelgrpc.WithTracerProvider(d.tracing), otelgrpc.WithPropagators(d.tracing.Propagator))
	}
	d.grpc, err = grpcapi.New(grpcapi.Config{Broker: d.Broker, Identity: d.ident, TLS: credentials.NewTLS(d.ident.ServerTLS(d.cert)),
		Limits: limits(d.cfg.Limits), Log: d.log, Metrics: d.metrics.GRPC, StatsHandler: statsHandler, ReloadPolicy: d.ReloadPolicy,
		Audit: grpcapi.AuditConfig{Origin: d.origin, LogKeys: d.logKeys}, Authorities: grpcAuthorities(d.cas)})
	if err != nil {
		return err
	}
	d.metrics.RegisterState(d.metricsState)
	return nil
}

// logKeys describes the audit and checkpoint keys for AuditService.
func (d *Daemon) logKeys() (*bgv1.PublicKey, *bgv1.PublicKey, error) {
	a, err := publicKey(d.ring.Audit(), hsm.PurposeAudit, "")
	if err != nil {
		return nil, nil, err
	}
	c, err := publicKey(d.ring.Checkpoint(), hsm.PurposeCheckpoint, d.origin)
	return a, c, err
}

// checkpointSigned announces a new checkpoint through the broker (a
// checkpoint signed while the broker is still being built is announced
// with the next). With witnesses it goes to them first, and is announced
// with their cosignatures once they answered.
func (d *Daemon) checkpointSigned(cp store.Checkpoint) {
	if wc := d.witnesses; wc != nil {
		wc.Notify()
		return
	}
	b := d.Broker
	if b == nil {
		return
	}
	if err := b.CheckpointSigned(context.Background(), cp, nil); err != nil {
		d.log.Error("announcing a checkpoint failed", "size", cp.Size, "err", err)
	}
}

// serve starts the listeners and the background loops.
func (d *Daemon) serve() {
	ctx := d.ctx
	d.checkHealth(ctx)
	loops := []func(context.Context){d.Broker.Run, d.Broker.Follow, d.Checkpoints.Run, d.dispatcher.Run, d.keysLoop, d.healthLoop, d.ident.Run}
	if d.witnesses != nil {
		loops = append(loops, d.witnesses.Run)
	}
	for _, loop := range loops {
		d.goServe(func() error { loop(ctx); return nil })
	}
	if d.cas != nil {
		d.goServe(func() error { d.crlLoop(ctx); return nil })
	}
	d.serveListeners()
}

// observer is how the broker's commits reach the daemon's other parts.
type observer struct{ d *Daemon }

// EntriesAppended lets the checkpointer count the entries.
func (o observer) EntriesAppended() {
	if cps := o.d.Checkpoints; cps != nil {
		cps.Appended()
	}
}

// EventsQueued wakes the dispatcher (built after the broker: events queued
// before it exists are found when it starts).
func (o observer) EventsQueued() {
	if disp := o.d.dispatcher; disp != nil {
		disp.Kick()
	}
}

// RotateAfterUse rotates the account's token key in the background, under
// the daemon's wait group, so Close cannot close the store and the HSM
// under a running rotation.
func (o observer) RotateAfterUse(account string) {
	o.d.bg.goRun(func() { o.d.rotateAfterUse(o.d.ctx, account) })
}
