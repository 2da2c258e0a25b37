// Package daemon wires the broker together from its configuration: HSM,
// store, policy, identity, gRPC and HTTPS listeners, and the background
// loops. cmd/breakglassd and the end-to-end tests start it the same way.
//
// Start reads as the order things come up in: each step is a small
// constructor in build.go or listen.go that sets one part of the Daemon.
package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"runtime/debug"
	"sync"
	"time"

	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/format/statement"
	"github.com/bgbroker/breakglass/hsm"
	"github.com/bgbroker/breakglass/server/authority"
	"github.com/bgbroker/breakglass/server/broker"
	"github.com/bgbroker/breakglass/server/checkpoint"
	"github.com/bgbroker/breakglass/server/config"
	"github.com/bgbroker/breakglass/server/grpcapi"
	"github.com/bgbroker/breakglass/server/identity"
	"github.com/bgbroker/breakglass/server/keyring"
	"github.com/bgbroker/breakglass/server/metrics"
	"github.com/bgbroker/breakglass/server/notify"
	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/tracing"
	"github.com/bgbroker/breakglass/server/witness"
)

// Options starts a daemon.
type Options struct {
	Config *config.Config
	Log    *slog.Logger
	// Now is the broker's clock (time.Now when nil); tests inject one.
	Now func() time.Time
	// ReadyFile, when set, receives the listening addresses as JSON once
	// the daemon serves.
	ReadyFile string
	// Dev is breakglassd dev: an http issuer on loopback is allowed.
	Dev bool
	// AcceptUnsignedGenesis lets a log without a policy start with one its
	// admins did not sign, logged as an unsigned genesis
	// (breakglassd serve --accept-unsigned-genesis).
	AcceptUnsignedGenesis bool
	// SignPolicy signs, at start, a configured policy that comes without
	// enough signatures: dev mode signs with its demo admins. Never set
	// outside dev mode.
	SignPolicy func(origin, previous, hash string, at time.Time) ([]statement.Signed, error)
}

// Ready is what the ready file holds.
type Ready struct {
	GRPC  string `json:"grpc"`
	HTTPS string `json:"https"`
	HTTP  string `json:"http,omitempty"`
	// Metrics is the metrics listener (plain HTTP, its own address).
	Metrics string `json:"metrics"`
	Pprof   string `json:"pprof,omitempty"`
	// Console is the approver console's origin (https://host:port), when on.
	Console string `json:"console,omitempty"`
	Issuer  string `json:"issuer"`
	PID     int    `json:"pid"`
}

// Daemon is a running broker.
type Daemon struct {
	Broker      *broker.Broker
	Checkpoints *checkpoint.Checkpointer
	Ready       Ready

	log *slog.Logger
	cfg *config.Config
	now func() time.Time

	// What the configuration names, loaded before anything is opened.
	policy        *policy.Policy
	policySource  string
	policySigs    []statement.Signed
	acceptGenesis bool
	signPolicy    func(origin, previous, hash string, at time.Time) ([]statement.Signed, error)
	ident         *identity.Verifier
	dev           bool
	cert          tls.Certificate
	serverCert    *x509.Certificate

	module     *hsm.Module
	store      store.Store
	tracing    *tracing.Provider
	metrics    *metrics.Registry
	ring       *keyring.Ring
	wants      []keyring.Want
	origin     string
	dispatcher *notify.Dispatcher
	// witnesses, when configured, get every new checkpoint.
	witnesses *witness.Client
	grpc      *grpcapi.Server
	listeners listeners
	servers   []*http.Server
	// pending are the servers' serve loops, started once all is built.
	pending []func() error

	// reloadMu makes policy reloads one at a time.
	reloadMu sync.Mutex
	// rotating admits one rotation of this process at a time; a waiting
	// rotation gives up when the daemon closes.
	rotating chan struct{}

	// bg runs every goroutine the daemon starts; Close waits for them all
	// before it closes the store and the HSM.
	bg background
	// ctx is cancelled by Close; background work runs under it.
	ctx    context.Context //nolint:containedctx // the daemon's lifetime, cancelled by Close
	cancel context.CancelFunc
	errc   chan error

	healthy healthState

	// cas are the certificate authorities (nil without CA keys); crlKick
	// asks for the CRLs to be checked now (after a revocation).
	cas     *authority.Set
	crlKick chan struct{}
}

// Start brings the broker up and returns once it is serving.
func Start(ctx context.Context, opts Options) (_ *Daemon, err error) {
	d, err := newDaemon(ctx, opts)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			d.closeResources()
		}
	}()
	// Each step's time is logged (debug): start-up must not grow with the
	// store, and this says which step does when one does.
	steps := []struct {
		name string
		run  func(context.Context) error
	}{
		{"openHSM", d.openHSM}, {"openStore", d.openStore}, {"listen", d.listen}, {"loadKeys", d.loadKeys},
		{"newAuthorities", d.newAuthorities}, {"newCheckpointer", d.newCheckpointer}, {"newBroker", d.newBroker},
		{"signFirstCRL", d.signFirstCRL}, {"newDispatcher", d.newDispatcher}, {"newGRPC", d.newGRPC},
		{"newHTTP", d.newHTTP}, {"newConsole", d.newConsole},
	}
	began := time.Now()
	for _, step := range steps {
		t := time.Now()
		if err := step.run(ctx); err != nil {
			return nil, err
		}
		d.log.Debug("start step done", "step", step.name, "took", time.Since(t))
	}
	t := time.Now()
	d.serve()
	d.log.Debug("start step done", "step", "serve", "took", time.Since(t), "total", time.Since(began))
	if err := d.writeReady(opts.ReadyFile); err != nil {
		d.Close()
		return nil, err
	}
	d.log.Info("broker serving", "grpc", d.Ready.GRPC, "https", d.Ready.HTTPS, "metrics", d.Ready.Metrics, "console", d.Ready.Console, "issuer", d.Ready.Issuer,
		"policy", d.Broker.Policy().Hash(), "token_kid", d.ring.Minter("").KID(), "audit_kid", d.Broker.AuditKID(), "origin", d.origin)
	return d, nil
}

// newDaemon loads what the configuration names (policy, client CA, server
// certificate) before anything is opened, so that a mistake there costs
// nothing to undo.
func newDaemon(ctx context.Context, opts Options) (*Daemon, error) {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	cfg := opts.Config
	pol, source, ident, err := loadPolicyAndIdentity(cfg, log, now)
	if err != nil {
		return nil, err
	}
	sigs, _, err := cfg.LoadPolicySignatures()
	if err != nil {
		return nil, err
	}
	cert, serverCert, err := loadServerCert(cfg.TLS)
	if err != nil {
		return nil, err
	}
	d := &Daemon{log: log, cfg: cfg, now: now, dev: opts.Dev, policy: pol, policySource: source, policySigs: sigs, acceptGenesis: opts.AcceptUnsignedGenesis,
		signPolicy: opts.SignPolicy, ident: ident, cert: cert, serverCert: serverCert,
		rotating: make(chan struct{}, 1), errc: make(chan error, 4), crlKick: make(chan struct{}, 1)}
	d.ctx, d.cancel = context.WithCancel(context.WithoutCancel(ctx))
	return d, nil
}

// writeReady tells whoever started the daemon where it listens.
func (d *Daemon) writeReady(path string) error {
	if path == "" {
		return nil
	}
	b, err := json.MarshalIndent(d.Ready, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o600)
}

// Err delivers the first fatal error of a listener.
func (d *Daemon) Err() <-chan error { return d.errc }

// Ring returns the key ring.
func (d *Daemon) Ring() *keyring.Ring { return d.ring }

// Close stops serving and releases everything. In-flight calls get a few
// seconds to finish; background work (loops, rotations) is waited for
// before the store and the HSM close under it.
func (d *Daemon) Close() {
	if d.cancel != nil {
		d.cancel()
	}
	d.stopGRPC(5 * time.Second)
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range d.servers {
		_ = s.Shutdown(sctx)
	}
	d.bg.stop()
	d.closeResources()
}

// stopGRPC lets in-flight calls finish for up to grace, then cuts them.
func (d *Daemon) stopGRPC(grace time.Duration) {
	if d.grpc == nil {
		return
	}
	done := make(chan struct{})
	go func() {
		d.grpc.GRPC.GracefulStop()
		close(done)
	}()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		d.grpc.GRPC.Stop()
	}
}

func (d *Daemon) closeResources() {
	d.listeners.close()
	if d.store != nil {
		_ = d.store.Close()
	}
	if d.module != nil {
		_ = d.module.Close()
	}
	if d.tracing != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = d.tracing.Shutdown(ctx) // flushes the last spans
		cancel()
	}
}

// Version is the module version breakglassd was built from ("(devel)" in
// a work tree).
func Version() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		return bi.Main.Version
	}
	return "unknown"
}

// ReloadPolicy reads the policy again from where the configuration names it
// (the configuration file is read again for an inline policy), with the
// bundle of policy admins' statements beside it (policy.sigs), and puts it
// in force when they meet the rule of the policy in force. A policy that
// does not load is refused with its problems, one without enough
// signatures with how many are missing (audited); either way the one in
// force stays. caller is "" for the operator (SIGHUP).
func (d *Daemon) ReloadPolicy(ctx context.Context, caller string) (*broker.PolicyReload, error) {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	cfg := d.cfg
	if cfg.PolicyFile == "" && cfg.Path() != "" {
		fresh, err := config.Load(cfg.Path())
		if err != nil {
			return nil, broker.Invalid("the configuration does not load, so the policy in force stays: %v", err)
		}
		cfg = fresh
	}
	p, source, err := cfg.LoadPolicy()
	if err != nil {
		return nil, broker.Invalid("the policy is refused and the one in force stays: %v", err)
	}
	logPolicyWarnings(d.log, p, source)
	sigs, _, err := cfg.LoadPolicySignatures()
	if err != nil {
		return nil, broker.Invalid("the policy is refused and the one in force stays: %v", err)
	}
	return d.Broker.ApplyPolicy(ctx, caller, p, source, sigs)
}

// logPolicyWarnings logs what the policy holds that is valid but likely
// wrong (breakglassd policy check prints the same).
func logPolicyWarnings(log *slog.Logger, p *policy.Policy, source string) {
	for _, w := range p.Warnings() {
		log.Warn("policy: "+w.Msg, "source", source, "setting", w.Path, "line", w.Line)
	}
}

// background runs goroutines that Close waits for. Once stopping, it
// starts no more: a rotation asked for while the daemon closes is dropped
// (the next start finds the grant ended and the key still in use, and the
// operator can rotate by hand).
type background struct {
	mu       sync.Mutex
	wg       sync.WaitGroup
	stopping bool
}

// goRun runs f unless the daemon is closing, and reports whether it did.
func (b *background) goRun(f func()) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopping {
		return false
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		f()
	}()
	return true
}

// stop refuses new goroutines and waits for the running ones.
func (b *background) stop() {
	b.mu.Lock()
	b.stopping = true
	b.mu.Unlock()
	b.wg.Wait()
}

// goServe runs a server or loop; its error, if any, is fatal.
func (d *Daemon) goServe(f func() error) {
	d.bg.goRun(func() {
		if err := f(); err != nil {
			select {
			case d.errc <- err:
			default:
			}
		}
	})
}

// ignoreClosed treats a server's orderly shutdown as no error.
func ignoreClosed(err error) error {
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
