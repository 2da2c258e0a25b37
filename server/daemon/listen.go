package daemon

import (
	"cmp"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"os"
	"time"

	"github.com/bgbroker/breakglass/server/broker"
	"github.com/bgbroker/breakglass/server/config"
	"github.com/bgbroker/breakglass/server/console"
	"github.com/bgbroker/breakglass/server/httpapi"
)

// listeners are the daemon's sockets, opened before anything serves so that
// a taken port fails the start before the broker writes to its log.
type listeners struct {
	grpc, https, metrics, plain, pprof, console net.Listener
}

func (l *listeners) close() {
	for _, x := range []net.Listener{l.grpc, l.https, l.metrics, l.plain, l.pprof, l.console} {
		if x != nil {
			_ = x.Close()
		}
	}
}

// listen opens every configured listener and fills in Ready.
func (d *Daemon) listen(context.Context) error {
	open := func(name, addr string, into *net.Listener) error {
		if addr == "" {
			return nil
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		*into = l
		return nil
	}
	l, c := &d.listeners, d.cfg.Listen
	for _, x := range []struct {
		name, addr string
		into       *net.Listener
	}{{"listen.grpc", c.GRPC, &l.grpc}, {"listen.https", c.HTTPS, &l.https}, {"listen.metrics", c.Metrics, &l.metrics},
		{"listen.plain_http", c.PlainHTTP, &l.plain}, {"debug.pprof", d.cfg.Debug.Pprof, &l.pprof}, {"listen.console", c.Console, &l.console}} {
		if err := open(x.name, x.addr, x.into); err != nil {
			return err
		}
	}
	d.Ready = Ready{GRPC: l.grpc.Addr().String(), HTTPS: l.https.Addr().String(), Metrics: l.metrics.Addr().String(),
		Issuer: d.cfg.Issuer, PID: os.Getpid()}
	if d.Ready.Issuer == "" {
		d.Ready.Issuer = "https://" + l.https.Addr().String()
	}
	if err := config.ValidateIssuer(d.Ready.Issuer, d.dev); err != nil {
		return err
	}
	if l.plain != nil {
		d.Ready.HTTP = l.plain.Addr().String()
	}
	if l.pprof != nil {
		d.Ready.Pprof = l.pprof.Addr().String()
	}
	if l.console != nil {
		d.Ready.Console = d.consoleOrigin()
	}
	return nil
}

// consoleOrigin is the console's origin: console.origin, or
// https://localhost:PORT for a loopback listener (WebAuthn needs a
// domain, and browsers treat localhost as secure).
func (d *Daemon) consoleOrigin() string {
	if o := d.cfg.Console.Origin; o != "" {
		return o
	}
	_, port, _ := net.SplitHostPort(d.listeners.console.Addr().String())
	return "https://localhost:" + port
}

// newConsole builds the approver console on its own listener, when
// listen.console is set.
func (d *Daemon) newConsole(context.Context) error {
	if d.listeners.console == nil {
		return nil
	}
	origin := d.consoleOrigin()
	u, err := url.Parse(origin)
	if err != nil {
		return fmt.Errorf("console.origin: %w", err)
	}
	rp := cmp.Or(d.cfg.Console.RPID, u.Hostname())
	if err := d.serverCert.VerifyHostname(u.Hostname()); err != nil {
		return fmt.Errorf("listen.console: the server certificate (tls.cert) does not name %s, the console's host: %w", u.Hostname(), err)
	}
	c, err := console.New(console.Config{Broker: d.Broker, Identity: d.ident, Origin: origin, RPID: rp, Store: d.store, Checkpoint: d.servedCheckpoint,
		RatePerSecond: d.cfg.Limits.RatePerSecond, Burst: d.cfg.Limits.Burst, Log: d.log.With("component", "console")})
	if err != nil {
		return err
	}
	d.addServer(c.Server(d.cert), d.listeners.console, func(s *http.Server, l net.Listener) error { return s.ServeTLS(l, "", "") })
	return nil
}

// newHTTP builds the HTTP servers: the public one (keys, metadata, health;
// with TLS and, when configured, its plain twin on loopback), metrics on
// their own listener (they show live break-glass activity, so never on the
// public one), and profiles when configured.
func (d *Daemon) newHTTP(context.Context) error {
	public := httpapi.Handler(httpapi.Config{Issuer: d.Ready.Issuer, JWKS: d.Broker.JWKS, AccountJWKS: d.Broker.AccountJWKS,
		Health: d.health, Log: d.log, Checkpoint: d.servedCheckpoint,
		Credentials: httpCredentials(d.cas),
		Introspection: &httpapi.Introspection{Authenticate: d.ident.VerifyNow, Introspect: d.introspect,
			Forbidden:     func(err error) bool { return broker.KindOf(err) == broker.KindPermission },
			RatePerSecond: d.cfg.Limits.RatePerSecond, Burst: d.cfg.Limits.Burst}})
	https := httpapi.Server(public)
	// A client certificate is asked for, not required and not verified in
	// the handshake: the public documents need none, and introspection
	// verifies the one it gets (RFC 8705 tls_client_auth).
	https.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{d.cert},
		ClientAuth: tls.RequestClientCert, ClientCAs: d.ident.ClientCAs()}
	https.ErrorLog = slog.NewLogLogger(d.log.Handler(), slog.LevelDebug)
	d.addServer(https, d.listeners.https, func(s *http.Server, l net.Listener) error { return s.ServeTLS(l, "", "") })
	if d.listeners.plain != nil {
		d.addServer(httpapi.Server(public), d.listeners.plain, nil)
	}
	scrape := http.NewServeMux()
	scrape.Handle("GET /metrics", d.metrics.Handler())
	d.addServer(&http.Server{Handler: scrape, ReadHeaderTimeout: 5 * time.Second}, d.listeners.metrics, nil)
	if d.listeners.pprof != nil {
		d.addServer(&http.Server{Handler: pprofMux(), ReadHeaderTimeout: 5 * time.Second}, d.listeners.pprof, nil)
	}
	return nil
}

func pprofMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// addServer records a server to start on l (with serve, or Serve when nil)
// and to shut down on Close.
func (d *Daemon) addServer(s *http.Server, l net.Listener, serve func(*http.Server, net.Listener) error) {
	if serve == nil {
		serve = (*http.Server).Serve
	}
	d.servers = append(d.servers, s)
	d.pending = append(d.pending, func() error { return ignoreClosed(serve(s, l)) })
}

// serveListeners starts gRPC and every HTTP server.
func (d *Daemon) serveListeners() {
	grpcLis := d.listeners.grpc
	d.goServe(func() error { return d.grpc.GRPC.Serve(grpcLis) })
	for _, run := range d.pending {
		d.goServe(run)
	}
	d.pending = nil
}

// introspect is the RFC 7662 answer about a token: {"active": false} alone
// for anything but a live token, whose claims it lists otherwise.
func (d *Daemon) introspect(ctx context.Context, principal, raw string) (map[string]any, error) {
	in, err := d.Broker.Introspect(ctx, principal, raw)
	if err != nil {
		return nil, err
	}
	if !in.Active {
		return map[string]any{"active": false}, nil
	}
	c := in.Claims
	out := map[string]any{"active": true, "iss": c.Issuer, "sub": c.Subject, "exp": c.Expiry.Time().Unix(), "iat": c.IssuedAt.Time().Unix(),
		"jti": c.ID, "client_id": c.ClientID, "token_type": "Bearer", "bg_account": c.Account, "bg_request": c.Request, "bg_approvers": c.Approvers, "bg_drill": c.Drill}
	if c.NotBefore != nil {
		out["nbf"] = c.NotBefore.Time().Unix()
	}
	if len(c.Audience) == 1 {
		out["aud"] = c.Audience[0]
	} else {
		out["aud"] = []string(c.Audience)
	}
	return out, nil
}
