package httpapi

import (
	"context"
	"crypto/x509"
	"errors"
	"mime"
	"net/http"
	"strconv"
	"sync"

	"golang.org/x/time/rate"
)

// Introspection serves RFC 7662 token introspection with RFC 8705
// tls_client_auth.
type Introspection struct {
	// Authenticate names the principal of a client certificate the TLS
	// stack received (it asks for one and verifies none: the public
	// documents need none).
	Authenticate func(leaf *x509.Certificate) (string, error)
	// Introspect answers for principal about token; an error of kind
	// Forbidden is a caller who may not introspect.
	Introspect func(ctx context.Context, principal, token string) (map[string]any, error)
	// Forbidden reports whether an Introspect error says the caller may
	// not introspect.
	Forbidden func(error) bool
	// RatePerSecond and Burst bound the calls of each principal.
	RatePerSecond float64
	Burst         int
}

// maxIntrospectionBody bounds a request: a token is at most 16 KiB.
const maxIntrospectionBody = 20 << 10

// maxLimiters bounds the per-principal limiters kept; past it they start
// afresh.
const maxLimiters = 4096

// limiters are the per-principal rate limiters of introspection.
type limiters struct {
	mu    sync.Mutex
	m     map[string]*rate.Limiter
	rate  rate.Limit
	burst int
}

// allow takes one call of principal p from its limiter.
func (ls *limiters) allow(p string) bool {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	l := ls.m[p]
	if l == nil {
		if ls.m == nil || len(ls.m) >= maxLimiters {
			ls.m = map[string]*rate.Limiter{}
		}
		l = rate.NewLimiter(ls.rate, ls.burst)
		ls.m[p] = l
	}
	return l.Allow()
}

func oauthError(w http.ResponseWriter, code int, kind, desc string) {
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, code, map[string]string{"error": kind, "error_description": desc})
}

func serveIntrospection(mux *http.ServeMux, cfg Config) {
	in := cfg.Introspection
	ls := &limiters{rate: rate.Limit(in.RatePerSecond), burst: in.Burst}
	mux.HandleFunc(routesFor(cfg.Issuer).path+IntrospectionPath, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			oauthError(w, http.StatusMethodNotAllowed, "invalid_request", "introspection is a POST of application/x-www-form-urlencoded (RFC 7662 §2.1)")
			return
		}
		// RFC 8705 §2: the client authenticates with its TLS client
		// certificate; without one, or with one the broker does not
		// accept, invalid_client (RFC 6749 §5.2).
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
			oauthError(w, http.StatusUnauthorized, "invalid_client", "a client certificate from the broker's client CA is required (tls_client_auth, RFC 8705)")
			return
		}
		principal, err := in.Authenticate(r.TLS.PeerCertificates[0])
		if err != nil {
			cfg.Log.Warn("introspection: client certificate refused", "err", err)
			oauthError(w, http.StatusUnauthorized, "invalid_client", "the client certificate is not accepted: "+err.Error())
			return
		}
		if !ls.allow(principal) {
			w.Header().Set("Retry-After", strconv.Itoa(1))
			oauthError(w, http.StatusTooManyRequests, "slow_down", "rate limit: too many introspection calls for "+principal)
			return
		}
		tok, ok := introspectionToken(w, r, principal)
		if !ok {
			return
		}
		resp, err := in.Introspect(r.Context(), principal, tok)
		if err != nil {
			if in.Forbidden(err) {
				oauthError(w, http.StatusForbidden, "access_denied", "only relying parties and auditors may introspect tokens")
				return
			}
			cfg.Log.Error("introspection failed", "principal", principal, "err", err)
			oauthError(w, http.StatusServiceUnavailable, "temporarily_unavailable", "the broker cannot answer now; try again")
			return
		}
		// RFC 7662 §4: answers are not cached.
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Pragma", "no-cache")
		writeJSON(w, http.StatusOK, resp)
	})
}

// introspectionToken reads the form of an introspection request from the
// client principal authenticated and returns its token; when the form is
// refused it writes the OAuth error and returns false.
func introspectionToken(w http.ResponseWriter, r *http.Request, principal string) (string, bool) {
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/x-www-form-urlencoded" {
		oauthError(w, http.StatusBadRequest, "invalid_request", "the body must be application/x-www-form-urlencoded")
		return "", false
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxIntrospectionBody)
	if err := r.ParseForm(); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			oauthError(w, http.StatusRequestEntityTooLarge, "invalid_request", "the request body is too large")
			return "", false
		}
		oauthError(w, http.StatusBadRequest, "invalid_request", "the body is not a valid form")
		return "", false
	}
	form := r.PostForm
	for name, vals := range form {
		if len(vals) > 1 {
			// RFC 6749 §3.1: parameters are sent at most once.
			oauthError(w, http.StatusBadRequest, "invalid_request", "parameter "+name+" is repeated")
			return "", false
		}
	}
	// RFC 8705 §2: client_id is included and names the certificate's
	// holder.
	switch id := form.Get("client_id"); {
	case id == "":
		oauthError(w, http.StatusBadRequest, "invalid_request", "client_id is required with tls_client_auth (RFC 8705 §2)")
		return "", false
	case id != principal:
		oauthError(w, http.StatusUnauthorized, "invalid_client", "client_id does not name the holder of the client certificate")
		return "", false
	}
	tok := form.Get("token")
	if tok == "" {
		oauthError(w, http.StatusBadRequest, "invalid_request", "token is required (RFC 7662 §2.1)")
		return "", false
	}
	return tok, true
}
