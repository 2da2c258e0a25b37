// Package console serves the approver console: server-rendered pages on
// their own HTTPS listener, for approvers on a laptop rather than in a
// terminal. Identity is the browser's client certificate, checked on every
// request exactly as the gRPC API checks it (chained to the client CA, not
// on the CRL in force, within its validity period by the broker's clock,
// naming a principal in the policy). Approvals are signed in the browser by
// a passkey the approver bound (format/passkey), so the log alone proves
// who approved what.
//
// The pages are html/template; the only script is a static file served
// from here (no inline script, no other host), under a Content-Security-
// Policy without 'unsafe-inline'. Every state change needs a request from
// the console's own origin (the Origin header, and Sec-Fetch-Site when the
// browser sends it) and a CSRF token bound to the client certificate.
// Access tokens are never rendered: they are fetched with bgctl.
package console

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/go-webauthn/webauthn/webauthn"
	"golang.org/x/time/rate"

	"github.com/bgbroker/breakglass/server/broker"
	"github.com/bgbroker/breakglass/server/identity"
	"github.com/bgbroker/breakglass/server/store"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Config builds the console.
type Config struct {
	Broker   *broker.Broker
	Identity *identity.Verifier
	// Origin is the console's origin as browsers write it
	// (https://host[:port]); RPID the WebAuthn relying party ID.
	Origin string
	RPID   string
	// Store reads the audit log's tail for auditors.
	Store store.Store
	// Checkpoint returns the latest checkpoint as served (with its
	// cosignatures), for auditors.
	Checkpoint func(ctx context.Context) ([]byte, error)
	// RatePerSecond and Burst bound requests per principal, as for the API.
	RatePerSecond float64
	Burst         int
	Log           *slog.Logger
}

// Console is the approver console's HTTP handler.
type Console struct {
	cfg   Config
	log   *slog.Logger
	pages *template.Template
	wa    *webauthn.WebAuthn
	// csrfKey makes the CSRF tokens of this process.
	csrfKey []byte

	mu       sync.Mutex
	limiters map[string]*rate.Limiter
	// ceremonies are the passkey registrations begun and not finished,
	// one per principal.
	ceremonies map[string]ceremony
}

// New builds the console.
func New(cfg Config) (*Console, error) {
	if cfg.Broker == nil || cfg.Identity == nil || cfg.Origin == "" || cfg.RPID == "" || cfg.Store == nil {
		return nil, errors.New("console: Broker, Identity, Origin, RPID and Store are required")
	}
	if cfg.RatePerSecond <= 0 || cfg.Burst <= 0 {
		return nil, errors.New("console: RatePerSecond and Burst must be positive")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	wa, err := webauthn.New(&webauthn.Config{RPID: cfg.RPID, RPDisplayName: "breakglass approver console", RPOrigins: []string{cfg.Origin}})
	if err != nil {
		return nil, fmt.Errorf("console: WebAuthn relying party %s at %s: %w", cfg.RPID, cfg.Origin, err)
	}
	pages, err := template.New("").Funcs(funcs).ParseFS(templateFS, "templates/*.html")
	if err != nil {
		return nil, err
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	return &Console{cfg: cfg, log: cfg.Log, pages: pages, wa: wa, csrfKey: key, limiters: map[string]*rate.Limiter{}, ceremonies: map[string]ceremony{}}, nil
}

// TLSConfig is the console listener's TLS configuration: client
// certificates required and verified against the client CA at the broker's
// time, the CRL in force checked in the handshake (and again on every
// request).
func (c *Console) TLSConfig(cert tls.Certificate) *tls.Config {
	t := c.cfg.Identity.ServerTLS(cert)
	t.MinVersion = tls.VersionTLS12
	t.NextProtos = []string{"h2", "http/1.1"}
	return t
}

// Server is the console's HTTP server.
func (c *Console) Server(cert tls.Certificate) *http.Server {
	return &http.Server{Handler: c.Handler(), TLSConfig: c.TLSConfig(cert), ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 30 * time.Second,
		IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10, ErrorLog: slog.NewLogLogger(c.log.Handler(), slog.LevelDebug)}
}

// maxBody bounds what a request may send (a WebAuthn response is a few
// kilobytes).
const maxBody = 64 << 10

// Handler serves the console.
func (c *Console) Handler() http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(staticFS, "static")
	files := http.FileServerFS(static)
	mux.Handle("GET /static/", http.StripPrefix("/static/", files))
	page := func(pattern string, h func(w http.ResponseWriter, r *http.Request, v *viewer)) {
		mux.Handle(pattern, c.authenticated(h))
	}
	page("GET /{$}", c.awaiting)
	page("GET /fragments/awaiting", c.awaitingFragment)
	page("GET /requests/{id}", c.requestPage)
	page("GET /fragments/requests/{id}", c.requestFragment)
	page("POST /requests/{id}/review", c.review)
	page("POST /requests/{id}/cancel", c.cancel)
	page("POST /requests/{id}/revoke", c.revoke)
	page("GET /mine", c.mine)
	page("POST /requests", c.create)
	page("GET /passkeys", c.passkeys)
	page("POST /passkeys/begin", c.beginPasskey)
	page("POST /passkeys/finish", c.finishPasskey)
	page("POST /passkeys/{id}/remove", c.removePasskey)
	page("GET /audit", c.auditPage)
	page("GET /events", c.events)
	return c.secure(mux)
}

// secure sets the headers every answer carries.
func (c *Console) secure(next http.Handler) http.Handler {
	csp := "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; " +
		"frame-ancestors 'none'; base-uri 'none'"
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", csp)
		h.Set("Strict-Transport-Security", "max-age=63072000; includeSubDomains")
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		h.Set("Cross-Origin-Resource-Policy", "same-origin")
		h.Set("Permissions-Policy", "publickey-credentials-get=(self), publickey-credentials-create=(self), camera=(), microphone=(), geolocation=()")
		h.Set("Cache-Control", "no-store")
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		next.ServeHTTP(w, r)
	})
}

// viewer is the caller of one request.
type viewer struct {
	Principal string
	peer      identity.Peer
	// CSRF is the token state changes must carry.
	CSRF string
}

// authenticated checks the caller of every request as the gRPC API checks
// its callers: a client certificate the TLS stack verified against the
// client CA, within its validity period now by the broker's clock, not on
// the CRL in force, naming a principal in the policy; then the caller's
// rate limit; then, for anything but a read, that the request comes from
// the console's own origin with the caller's CSRF token.
func (c *Console) authenticated(h func(w http.ResponseWriter, r *http.Request, v *viewer)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
			c.fail(w, r, http.StatusUnauthorized, "a client certificate from the broker's client CA is required")
			return
		}
		chains := r.TLS.VerifiedChains
		leaf := chains[0][0]
		if err := c.cfg.Identity.Check(leaf, chains); err != nil {
			c.log.Warn("console: unauthenticated request", "path", r.URL.Path, "err", err)
			c.fail(w, r, http.StatusUnauthorized, err.Error())
			return
		}
		who, err := c.cfg.Identity.Principal(leaf)
		if err != nil {
			c.fail(w, r, http.StatusUnauthorized, err.Error())
			return
		}
		b := c.cfg.Broker
		if !b.Policy().Known(who) {
			b.RecordDenial(who, "console "+r.Method+" "+r.URL.Path, "principal not in the policy")
			c.fail(w, r, http.StatusForbidden, fmt.Sprintf("principal %s is not in the broker's policy", who))
			return
		}
		if !c.limiter(who).Allow() {
			w.Header().Set("Retry-After", "1")
			c.fail(w, r, http.StatusTooManyRequests, fmt.Sprintf("rate limit: at most %g requests per second for %s; slow down and retry", c.cfg.RatePerSecond, who))
			return
		}
		b.SeenCert(who, leaf)
		v := &viewer{Principal: who, peer: identity.Peer{Leaf: leaf, Chains: chains, Principal: who}, CSRF: c.csrfToken(who, leaf)}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if err := c.checkOrigin(r, v); err != nil {
				b.RecordDenial(who, "console "+r.Method+" "+r.URL.Path, err.Error())
				c.fail(w, r, http.StatusForbidden, err.Error())
				return
			}
		}
		h(w, r, v)
	})
}

func (c *Console) limiter(p string) *rate.Limiter {
	c.mu.Lock()
	defer c.mu.Unlock()
	l := c.limiters[p]
	if l == nil {
		l = rate.NewLimiter(rate.Limit(c.cfg.RatePerSecond), c.cfg.Burst)
		c.limiters[p] = l
	}
	return l
}

// csrfToken binds a token to the principal and the very certificate: a
// page served to one certificate cannot be replayed with another.
func (c *Console) csrfToken(who string, leaf *x509.Certificate) string {
	m := hmac.New(sha256.New, c.csrfKey)
	cert := sha256.Sum256(leaf.Raw)
	fmt.Fprintf(m, "breakglass console csrf\n%s\n%x\n", who, cert)
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// errCrossOrigin is a state change not made from the console's own pages.
var errCrossOrigin = errors.New("this request did not come from the console's own pages (origin check): nothing was changed")

// checkOrigin refuses a state change that a page of another origin made:
// the Origin header must be the console's, Sec-Fetch-Site (when sent)
// same-origin, and the CSRF token the caller's.
func (c *Console) checkOrigin(r *http.Request, v *viewer) error {
	if r.Header.Get("Origin") != c.cfg.Origin {
		return errCrossOrigin
	}
	if s := r.Header.Get("Sec-Fetch-Site"); s != "" && s != "same-origin" {
		return errCrossOrigin
	}
	tok := r.Header.Get("X-CSRF-Token")
	if tok == "" {
		tok = r.PostFormValue("csrf")
	}
	if subtle.ConstantTimeCompare([]byte(tok), []byte(v.CSRF)) != 1 {
		return errors.New("the console's CSRF token is missing or not yours: reload the page and try again; nothing was changed")
	}
	return nil
}

// statusOf maps a broker error to an HTTP status; its public message is
// what the person sees.
func statusOf(err error) int {
	switch broker.KindOf(err) {
	case broker.KindInvalid:
		return http.StatusBadRequest
	case broker.KindNotFound:
		return http.StatusNotFound
	case broker.KindPermission:
		return http.StatusForbidden
	case broker.KindState:
		return http.StatusConflict
	case broker.KindExists:
		return http.StatusConflict
	case broker.KindUnavailable:
		return http.StatusServiceUnavailable
	case broker.KindExhausted:
		return http.StatusTooManyRequests
	case broker.KindUnauthenticated:
		return http.StatusUnauthorized
	case broker.KindOutOfRange:
		return http.StatusRequestedRangeNotSatisfiable
	}
	return http.StatusInternalServerError
}

// brokerError answers with a broker error: its public message, the detail
// only in the log.
func (c *Console) brokerError(w http.ResponseWriter, r *http.Request, v *viewer, err error) {
	code := statusOf(err)
	msg := broker.PublicMessage(err)
	switch code {
	case http.StatusInternalServerError:
		if r.Context().Err() != nil {
			return
		}
		c.log.Error("console: internal error", "path", r.URL.Path, "principal", v.Principal, "err", err)
		msg = "internal error"
	case http.StatusForbidden:
		c.cfg.Broker.RecordDenial(v.Principal, "console "+r.Method+" "+r.URL.Path, msg)
	}
	c.fail(w, r, code, msg)
}

// fail answers with an error: JSON to the console's script, a page to
// people.
func (c *Console) fail(w http.ResponseWriter, r *http.Request, code int, msg string) {
	if wantsJSON(r) {
		writeJSON(w, code, map[string]string{"error": msg})
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	if err := c.pages.ExecuteTemplate(w, "error.html", map[string]any{"Code": code, "Status": http.StatusText(code), "Message": msg}); err != nil {
		c.log.Debug("console: writing an error page", "err", err)
	}
}

func wantsJSON(r *http.Request) bool {
	return r.Header.Get("Accept") == "application/json" || r.Header.Get("Content-Type") == "application/json"
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// render writes a page.
func (c *Console) render(w http.ResponseWriter, r *http.Request, name string, data any) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := c.pages.ExecuteTemplate(w, name, data); err != nil && r.Context().Err() == nil {
		c.log.Error("console: rendering a page", "page", name, "err", err)
	}
}
