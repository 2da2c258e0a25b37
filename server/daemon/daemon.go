// Package daemon wires the broker together from its configuration: HSM,
// store, policy, identity, gRPC and HTTPS listeners, and the background
// loops. cmd/breakglassd and the end-to-end tests start it the same way.
package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/stats"

	"github.com/bgbroker/breakglass/format/keyid"
	"github.com/bgbroker/breakglass/hsm"
	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
	"github.com/bgbroker/breakglass/server/broker"
	"github.com/bgbroker/breakglass/server/checkpoint"
	"github.com/bgbroker/breakglass/server/config"
	"github.com/bgbroker/breakglass/server/grpcapi"
	"github.com/bgbroker/breakglass/server/httpapi"
	"github.com/bgbroker/breakglass/server/identity"
	"github.com/bgbroker/breakglass/server/keyring"
	"github.com/bgbroker/breakglass/server/metrics"
	"github.com/bgbroker/breakglass/server/notify"
	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/tracing"
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
}

// Ready is what the ready file holds.
type Ready struct {
	GRPC  string `json:"grpc"`
	HTTPS string `json:"https"`
	HTTP  string `json:"http,omitempty"`
	// Metrics is the metrics listener (plain HTTP, its own address).
	Metrics string `json:"metrics"`
	Pprof   string `json:"pprof,omitempty"`
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
	// reloadMu makes policy reloads one at a time.
	reloadMu sync.Mutex
	module   *hsm.Module
	ring     *keyring.Ring
	store    store.Store
	grpc     *grpcapi.Server
	https    *http.Server
	plain    *http.Server
	pprof    *http.Server
	scrape   *http.Server
	metrics  *metrics.Registry
	tracing  *tracing.Provider
	lis      []net.Listener
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	errc     chan error
	healthy  healthState
	// rotateMu serializes rotations of this process.
	rotateMu sync.Mutex
}

type healthState struct {
	mu     sync.Mutex
	checks map[string]string
	ok     bool
}

// Start brings the broker up and returns once it is serving.
func Start(ctx context.Context, opts Options) (_ *Daemon, err error) {
	cfg := opts.Config
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pol, source, ident, err := loadPolicyAndIdentity(cfg, log)
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(cfg.TLS.Cert, cfg.TLS.Key)
	if err != nil {
		return nil, fmt.Errorf("loading the server certificate: %w", err)
	}
	d := &Daemon{log: log, cfg: cfg, errc: make(chan error, 4)}
	defer func() {
		if err != nil {
			d.closeResources()
		}
	}()
	if d.module, err = hsm.Open(ctx, HSMConfig(cfg.HSM), log); err != nil {
		return nil, err
	}
	if d.store, err = openStore(ctx, cfg, log); err != nil {
		return nil, err
	}
	if d.tracing, err = tracing.New(ctx, tracingConfig(cfg.Tracing), Version()); err != nil {
		return nil, err
	}
	if d.tracing.Enabled() {
		d.store = store.Traced(d.store, d.tracing.Tracer("breakglass/store"))
	}
	d.metrics = metrics.New()
	hsmInst := hsm.Instruments{}
	if d.tracing.Enabled() {
		hsmInst.Tracer = d.tracing.Tracer("breakglass/hsm")
	}
	d.metrics.RegisterHSM(d.module, hsmInst)

	grpcLis, err := net.Listen("tcp", cfg.Listen.GRPC)
	if err != nil {
		return nil, fmt.Errorf("listen.grpc: %w", err)
	}
	d.lis = append(d.lis, grpcLis)
	httpsLis, err := net.Listen("tcp", cfg.Listen.HTTPS)
	if err != nil {
		return nil, fmt.Errorf("listen.https: %w", err)
	}
	d.lis = append(d.lis, httpsLis)
	issuer := cfg.Issuer
	if issuer == "" {
		issuer = "https://" + httpsLis.Addr().String()
	}
	wants := keyWants(cfg, pol)
	ring, origin, err := loadRing(ctx, cfg, keyring.Config{Module: d.module, Store: d.store, Issuer: issuer, Log: log, Now: opts.Now}, wants)
	if err != nil {
		return nil, err
	}
	if err := hsm.Healthy(d.module.Check(ctx, ring.Keys()...)); err != nil {
		return nil, fmt.Errorf("HSM self-test failed: %w", err)
	}
	d.ring = ring
	noteSigner := keyring.NoteSigner{Ring: ring, Origin: origin, Ctx: context.WithoutCancel(ctx)}
	// The checkpointer announces checkpoints through the broker, which is
	// built after it; the indirection is set once both exist.
	var onCheckpoint func(store.Checkpoint)
	cps, err := checkpoint.New(ctx, checkpoint.Config{Store: d.store, Signer: noteSigner, Origin: origin,
		Every: cfg.Audit.CheckpointEvery, Interval: cfg.Audit.CheckpointInterval, Now: opts.Now, Log: log,
		OnNew: func(cp store.Checkpoint) {
			if onCheckpoint != nil {
				onCheckpoint(cp)
			}
		}})
	if err != nil {
		return nil, err
	}
	d.Checkpoints = cps
	ncfg := notifyConfig(cfg.Notify)
	router := notify.NewRouter(ncfg.Sinks)
	var dispatcher *notify.Dispatcher
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	d.cancel = cancel
	d.Broker, err = broker.New(ctx, broker.Config{Store: d.store, Policy: pol, PolicySource: source, Keys: ring,
		Now: opts.Now, Log: log, SweepInterval: cfg.SweepInterval, Origin: origin, Certs: ident, OnAppend: cps.Appended,
		Routes: router, AckSinkKnown: router.Has, OnEvents: func() {
			if dispatcher != nil {
				dispatcher.Kick()
			}
		},
		OnGrantEnded: func(account string) { go d.rotateAfterUse(rctx, account) }})
	if err != nil {
		return nil, err
	}
	if err := ring.Bootstrap(ctx, d.Broker, wants); err != nil {
		return nil, err
	}
	if dispatcher, err = notify.NewDispatcher(ncfg, d.store, d.Broker.FinishDelivery, opts.Now, log); err != nil {
		return nil, err
	}
	b := d.Broker
	onCheckpoint = func(cp store.Checkpoint) {
		if err := b.CheckpointSigned(context.WithoutCancel(ctx), cp); err != nil {
			log.Error("announcing a checkpoint failed", "size", cp.Size, "err", err)
		}
	}
	logKeys := func() (*bgv1.PublicKey, *bgv1.PublicKey, error) {
		a, err := publicKey(ring.Audit(), hsm.PurposeAudit, "")
		if err != nil {
			return nil, nil, err
		}
		c, err := publicKey(ring.Checkpoint(), hsm.PurposeCheckpoint, origin)
		return a, c, err
	}
	var statsHandler stats.Handler
	if d.tracing.Enabled() {
		statsHandler = otelgrpc.NewServerHandler(otelgrpc.WithTracerProvider(d.tracing), otelgrpc.WithPropagators(d.tracing.Propagator))
	}
	d.grpc, err = grpcapi.New(grpcapi.Config{Broker: d.Broker, Identity: ident, TLS: credentials.NewTLS(ident.ServerTLS(cert)), Limits: limits(cfg.Limits), Log: log,
		Audit: grpcapi.AuditConfig{Checkpoints: cps, LogKeys: logKeys, Store: d.store}, Metrics: d.metrics.GRPC, StatsHandler: statsHandler,
		ReloadPolicy: d.ReloadPolicy})
	if err != nil {
		return nil, err
	}
	dispatcher.Observe(d.metrics.ObserveDelivery)
	serverCert, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("tls.cert: %w", err)
	}
	d.metrics.RegisterState(func(ctx context.Context) (metrics.State, error) { return d.metricsState(ctx, serverCert, ident) })
	handler := httpapi.Handler(httpapi.Config{Issuer: issuer, JWKS: d.Broker.JWKS, AccountJWKS: d.Broker.AccountJWKS, Health: d.health, Log: log})
	d.https = httpapi.Server(handler)
	d.https.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	d.https.ErrorLog = slog.NewLogLogger(log.Handler(), slog.LevelDebug)
	d.Ready = Ready{GRPC: grpcLis.Addr().String(), HTTPS: httpsLis.Addr().String(), Issuer: issuer, PID: os.Getpid()}
	// Metrics show live break-glass activity: their own listener, never
	// the public one that serves keys and metadata to anyone.
	ml, err := net.Listen("tcp", cfg.Listen.Metrics)
	if err != nil {
		return nil, fmt.Errorf("listen.metrics: %w", err)
	}
	d.lis = append(d.lis, ml)
	d.Ready.Metrics = ml.Addr().String()
	mmux := http.NewServeMux()
	mmux.Handle("GET /metrics", d.metrics.Handler())
	d.scrape = &http.Server{Handler: mmux, ReadHeaderTimeout: 5 * time.Second}
	scrape := d.scrape
	d.goRun(func() error { return ignoreClosed(scrape.Serve(ml)) })
	if cfg.Debug.Pprof != "" {
		pl, err := net.Listen("tcp", cfg.Debug.Pprof)
		if err != nil {
			return nil, fmt.Errorf("debug.pprof: %w", err)
		}
		d.lis = append(d.lis, pl)
		d.Ready.Pprof = pl.Addr().String()
		mux := http.NewServeMux()
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		d.pprof = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		srv := d.pprof
		d.goRun(func() error { return ignoreClosed(srv.Serve(pl)) })
	}
	var plainLis net.Listener
	if cfg.Listen.PlainHTTP != "" {
		if plainLis, err = net.Listen("tcp", cfg.Listen.PlainHTTP); err != nil {
			return nil, fmt.Errorf("listen.plain_http: %w", err)
		}
		d.lis = append(d.lis, plainLis)
		d.plain = httpapi.Server(handler)
		d.Ready.HTTP = plainLis.Addr().String()
	}

	d.checkHealth(rctx)
	d.goRun(func() error { d.Broker.Run(rctx); return nil })
	d.goRun(func() error { d.Broker.Follow(rctx); return nil })
	d.goRun(func() error { cps.Run(rctx); return nil })
	d.goRun(func() error { dispatcher.Run(rctx); return nil })
	d.goRun(func() error { d.keysLoop(rctx); return nil })
	d.goRun(func() error { d.healthLoop(rctx); return nil })
	d.goRun(func() error { return d.grpc.GRPC.Serve(grpcLis) })
	d.goRun(func() error { return ignoreClosed(d.https.ServeTLS(httpsLis, "", "")) })
	if d.plain != nil {
		d.goRun(func() error { return ignoreClosed(d.plain.Serve(plainLis)) })
	}
	if opts.ReadyFile != "" {
		b, _ := json.MarshalIndent(d.Ready, "", "  ")
		if err := os.WriteFile(opts.ReadyFile, append(b, '\n'), 0o600); err != nil {
			d.Close()
			return nil, err
		}
	}
	log.Info("broker serving", "grpc", d.Ready.GRPC, "https", d.Ready.HTTPS, "metrics", d.Ready.Metrics, "issuer", issuer, "policy", pol.Hash(),
		"token_kid", ring.Minter("").KID(), "audit_kid", d.Broker.AuditKID(), "origin", origin)
	return d, nil
}

// publicKey describes an HSM key for the API; for checkpoint keys with the
// signed-note verifier key named by the log's origin.
func publicKey(k *hsm.Key, p hsm.Purpose, noteName string) (*bgv1.PublicKey, error) {
	pemBytes, err := keyid.PublicPEM(k.Public())
	if err != nil {
		return nil, err
	}
	kid, err := keyid.Thumbprint(k.Public())
	if err != nil {
		return nil, err
	}
	out := &bgv1.PublicKey{Label: k.Label(), Algorithm: string(k.Algorithm()), Kid: kid, FingerprintSha256: hsm.Fingerprint(k.Public()), Pem: string(pemBytes)}
	switch p {
	case hsm.PurposeAudit:
		out.Purpose = bgv1.KeyPurpose_KEY_PURPOSE_AUDIT
	case hsm.PurposeCheckpoint:
		out.Purpose = bgv1.KeyPurpose_KEY_PURPOSE_CHECKPOINT
		if out.NoteVerifierKey, err = hsm.NoteVerifierKey(noteName, k.Public()); err != nil {
			return nil, err
		}
	default:
		out.Purpose = bgv1.KeyPurpose_KEY_PURPOSE_TOKEN
	}
	return out, nil
}

func ignoreClosed(err error) error {
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

func (d *Daemon) goRun(f func() error) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		if err := f(); err != nil {
			select {
			case d.errc <- err:
			default:
			}
		}
	}()
}

// Err delivers the first fatal error of a listener.
func (d *Daemon) Err() <-chan error { return d.errc }

// Close stops serving and releases everything. In-flight calls get a few
// seconds to finish.
func (d *Daemon) Close() {
	if d.cancel != nil {
		d.cancel()
	}
	done := make(chan struct{})
	go func() {
		if d.grpc != nil {
			d.grpc.GRPC.GracefulStop()
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		d.grpc.GRPC.Stop()
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if d.https != nil {
		_ = d.https.Shutdown(sctx)
	}
	if d.plain != nil {
		_ = d.plain.Shutdown(sctx)
	}
	if d.pprof != nil {
		_ = d.pprof.Shutdown(sctx)
	}
	if d.scrape != nil {
		_ = d.scrape.Shutdown(sctx)
	}
	d.wg.Wait()
	d.closeResources()
}

func (d *Daemon) closeResources() {
	for _, l := range d.lis {
		_ = l.Close()
	}
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

func (d *Daemon) healthLoop(ctx context.Context) {
	t := time.NewTicker(d.cfg.HealthInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d.checkHealth(ctx)
		}
	}
}

// checkHealth test-signs with every key and reads the store; the result
// drives gRPC health, /healthz and whether optional signatures are tried.
func (d *Daemon) checkHealth(ctx context.Context) {
	checks := map[string]string{}
	ok := true
	hsmOK := true
	for _, r := range d.module.Check(ctx, d.ring.Keys()...) {
		if r.OK {
			checks["hsm:"+string(r.Purpose)] = "ok"
		} else {
			checks["hsm:"+string(r.Purpose)] = r.Error
			ok, hsmOK = false, false
		}
	}
	d.Broker.SetHSMDown(!hsmOK)
	if n, err := d.Broker.Backlog(ctx); err != nil {
		checks["store"] = err.Error()
		ok = false
	} else {
		checks["store"] = "ok"
		if n > 0 {
			checks["audit_backlog"] = fmt.Sprintf("%d entries wait for the HSM", n)
		}
	}
	if err := d.Broker.PolicyAgreement(ctx); err != nil {
		checks["policy"] = broker.PublicMessage(err)
		ok = false
	} else {
		checks["policy"] = "ok"
	}
	if sinks, err := d.outboxSummary(ctx); err == nil {
		for _, sk := range sinks {
			if sk.Dead > 0 {
				checks["notify:"+sk.Sink] = fmt.Sprintf("%d alerts dead-lettered (see bgctl report)", sk.Dead)
			} else if sk.Pending > 0 && time.Since(sk.OldestPending) > time.Minute {
				checks["notify:"+sk.Sink] = fmt.Sprintf("%d alerts waiting, oldest since %s", sk.Pending, sk.OldestPending.Format(time.RFC3339))
			}
		}
	}
	d.healthy.mu.Lock()
	changed := d.healthy.ok != ok
	d.healthy.checks, d.healthy.ok = checks, ok
	d.healthy.mu.Unlock()
	d.grpc.SetServing(ok)
	if changed {
		d.log.Info("health changed", "serving", ok, "checks", checks)
	}
}

func (d *Daemon) health(ctx context.Context) httpapi.Health {
	d.healthy.mu.Lock()
	h := httpapi.Health{Serving: d.healthy.ok, Checks: map[string]string{}}
	for k, v := range d.healthy.checks {
		h.Checks[k] = v
	}
	d.healthy.mu.Unlock()
	h.Status = "NOT_SERVING"
	if h.Serving {
		h.Status = "SERVING"
	}
	h.UnsignedBacklog, _ = d.Broker.Backlog(ctx)
	h.PolicyHash = d.Broker.Policy().Hash()
	return h
}

func (d *Daemon) outboxSummary(ctx context.Context) ([]store.SinkSummary, error) {
	var out []store.SinkSummary
	err := d.store.View(ctx, func(r store.Reader) error {
		var err error
		out, err = r.OutboxSummary(ctx)
		return err
	})
	return out, err
}

// keysLoop picks up keys rotated by another process (breakglassd hsm
// rotate) and destroys retired token keys whose last token has expired.
func (d *Daemon) keysLoop(ctx context.Context) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	n := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := d.ring.Load(ctx); err != nil && ctx.Err() == nil {
			d.log.Error("reloading the key registry failed; keeping the keys in use", "err", err)
		}
		if n++; n%12 == 0 {
			if _, err := d.ring.DestroyExpired(ctx, d.Broker); err != nil && ctx.Err() == nil {
				d.log.Error("destroying expired token keys failed", "err", err)
			}
		}
	}
}

// rotateAfterUse rotates an account's token key after a grant that used it
// ended (rotate_after_use).
func (d *Daemon) rotateAfterUse(ctx context.Context, account string) {
	d.rotateMu.Lock()
	defer d.rotateMu.Unlock()
	rec, err := d.ring.Rotate(ctx, d.Broker, hsm.PurposeToken, account, "", "rotate_after_use")
	if err != nil {
		d.log.Error("rotating the token key after use failed", "account", account, "err", err)
		return
	}
	d.log.Info("token key rotated after use", "account", account, "kid", rec.KID, "label", rec.Label)
}

// Ring returns the key ring.
func (d *Daemon) Ring() *keyring.Ring { return d.ring }

// metricsState reads the broker's state for a scrape.
func (d *Daemon) metricsState(ctx context.Context, serverCert *x509.Certificate, ident *identity.Verifier) (metrics.State, error) {
	now := time.Now()
	st := metrics.State{Requests: map[string]int{}, Outbox: map[string]metrics.OutboxState{},
		Expiry: map[string]time.Time{"server": serverCert.NotAfter, "client_ca": ident.CAExpiry()}}
	err := d.store.View(ctx, func(r store.Reader) error {
		c, err := r.Counts(ctx, now)
		if err != nil {
			return err
		}
		for state, n := range c.Requests {
			st.Requests[strings.ToLower(string(state))] = n
		}
		st.ActiveGrants, st.Tokens = c.ActiveGrants, c.Tokens
		h, err := r.Head(ctx)
		if err != nil {
			return err
		}
		st.AuditEntries = h.Size
		if st.Unsigned, err = r.UnsignedCount(ctx); err != nil {
			return err
		}
		switch cp, err := r.LatestCheckpoint(ctx); {
		case err == nil:
			st.CheckpointSize, st.CheckpointTime = cp.Size, cp.CreatedAt
		case !errors.Is(err, store.ErrNotFound):
			return err
		}
		sinks, err := r.OutboxSummary(ctx)
		if err != nil {
			return err
		}
		for _, s := range sinks {
			st.Outbox[s.Sink] = metrics.OutboxState{Pending: s.Pending, Dead: s.Dead, OldestPending: s.OldestPending}
		}
		seen, err := r.CertsSeen(ctx, now.Add(-30*24*time.Hour))
		if err != nil {
			return err
		}
		for _, c := range seen {
			if c.NotAfter.Before(now.Add(14 * 24 * time.Hour)) {
				st.ClientCertsExpiring++
			}
		}
		return nil
	})
	if err != nil {
		return st, err
	}
	st.PolicyHash = d.Broker.Policy().Hash()
	st.PolicyInForce = d.Broker.PolicyAgreement(ctx) == nil
	return st, nil
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
// (the configuration file is read again for an inline policy) and puts it
// in force. A policy that does not load is refused with its problems, and
// the one in force stays. caller is "" for the operator (SIGHUP).
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
	return d.Broker.ReloadPolicy(ctx, caller, p, source)
}
