// Package httpapi serves what relying parties and monitors fetch without a
// client certificate: the JWKS, RFC 8414 metadata and health.
package httpapi

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"time"
)

// Health is the broker's health as /healthz reports it.
type Health struct {
	Serving bool `json:"serving"`
	// Status is SERVING or NOT_SERVING, as gRPC health says it.
	Status string            `json:"status"`
	Checks map[string]string `json:"checks"`
	// UnsignedBacklog counts audit entries waiting for the HSM.
	UnsignedBacklog int    `json:"unsigned_backlog"`
	PolicyHash      string `json:"policy_hash"`
	// Witnesses are the witnesses the checkpoints go to.
	Witnesses []WitnessHealth `json:"witnesses,omitempty"`
}

// Config builds the handler.
type Config struct {
	// Issuer is the HTTPS base URL, the iss of every token.
	Issuer string
	// JWKS returns the current key set document.
	JWKS func() ([]byte, error)
	// AccountJWKS returns an account's own key set, or an error when it has
	// none (404).
	AccountJWKS func(account string) ([]byte, error)
	// Health reports health.
	Health func(ctx context.Context) Health
	// Checkpoint returns the newest checkpoint to serve at /checkpoint,
	// with its cosignatures (ErrNoCheckpoint when there is none).
	Checkpoint func(ctx context.Context) ([]byte, error)
	// Credentials, when set, publishes the CA material and revocation
	// lists of SSH and X.509 certificates.
	Credentials Credentials
	Log         *slog.Logger
	// Introspection, when set, serves RFC 7662 introspection at
	// <issuer>/introspect.
	Introspection *Introspection
}

// Handler returns the HTTP handler.
func Handler(cfg Config) http.Handler {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	mux := http.NewServeMux()
	serveMetadata(mux, cfg)
	if cfg.Introspection != nil {
		serveIntrospection(mux, cfg)
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		h := cfg.Health(ctx)
		code := http.StatusOK
		if !h.Serving {
			code = http.StatusServiceUnavailable
		}
		writeJSON(w, code, h)
	})
	if cfg.Checkpoint != nil {
		mux.HandleFunc("GET /checkpoint", serveCheckpoint(cfg.Checkpoint, cfg.Log))
	}
	if cfg.Credentials != nil {
		credentialRoutes(mux, cfg.Credentials, cfg)
	}
	rt := routesFor(cfg.Issuer)
	index := func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("breakglass broker\n\n" + rt.path + "/.well-known/openid-configuration\n" + rt.path + "/.well-known/jwks.json\n/.well-known/oauth-authorization-server" + rt.path + "\n" + rt.path + "/accounts/NAME/.well-known/openid-configuration\n/healthz\n/checkpoint\n"))
	}
	mux.HandleFunc("GET /{$}", index)
	if rt.path != "" {
		mux.HandleFunc("GET "+rt.path+"/{$}", index)
	}
	return securityHeaders(mux)
}

func securityHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Strict-Transport-Security", "max-age=31536000")
		h.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// Server returns an http.Server with timeouts that a slow client cannot
// hold open.
func Server(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}
}
