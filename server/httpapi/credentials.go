package httpapi

import (
	"bytes"
	"context"
	"encoding/pem"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Credentials publishes what targets of SSH and X.509 certificates fetch:
// the CA keys and certificates to trust and the revocation lists to load
// (authority.Set).
type Credentials interface {
	SSHAuthorizedKeys() []byte
	X509CACerts() []byte
	KRL(ctx context.Context) ([]byte, error)
	CRLs(ctx context.Context) (all [][]byte, active []byte, err error)
	// CRL is one CA key's latest CRL, nil when there is none.
	CRL(ctx context.Context, kid string) ([]byte, error)
}

var kidRE = regexp.MustCompile(`^[A-Za-z0-9_-]{43}$`)

// credentialRoutes serves /ssh/ca.pub, /ssh/revoked.krl, /x509/ca.pem,
// /x509/crl.pem, /x509/crl.der and /x509/crls/KID.crl (the CRL
// distribution point certificates name). Revocation lists are never cached
// for long: a target that refreshes them should see a revocation at once.
func credentialRoutes(mux *http.ServeMux, c Credentials, cfg Config) {
	send := func(w http.ResponseWriter, typ string, maxAge int, b []byte) {
		if len(b) == 0 {
			http.Error(w, "not configured on this broker", http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", typ)
		w.Header().Set("Cache-Control", "public, max-age="+strconv.Itoa(maxAge))
		_, _ = w.Write(b) //nolint:gosec // keys, certificates and revocation lists of our own, never HTML, sent with their own content type and nosniff
	}
	fail := func(w http.ResponseWriter, what string, err error) {
		cfg.Log.Error("serving "+what, "err", err)
		http.Error(w, what+" unavailable: the broker cannot read its database right now; keep the last copy and retry", http.StatusServiceUnavailable)
	}
	ctxOf := func(r *http.Request) (context.Context, context.CancelFunc) {
		return context.WithTimeout(r.Context(), 5*time.Second)
	}
	mux.HandleFunc("GET /ssh/ca.pub", func(w http.ResponseWriter, r *http.Request) {
		send(w, "text/plain; charset=utf-8", 300, c.SSHAuthorizedKeys())
	})
	mux.HandleFunc("GET /x509/ca.pem", func(w http.ResponseWriter, r *http.Request) {
		send(w, "application/x-pem-file", 300, c.X509CACerts())
	})
	mux.HandleFunc("GET /ssh/revoked.krl", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := ctxOf(r)
		defer cancel()
		b, err := c.KRL(ctx)
		if err != nil {
			fail(w, "the KRL", err)
			return
		}
		send(w, "application/octet-stream", 10, b)
	})
	mux.HandleFunc("GET /x509/crl.pem", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := ctxOf(r)
		defer cancel()
		all, _, err := c.CRLs(ctx)
		if err != nil {
			fail(w, "the CRL", err)
			return
		}
		var b bytes.Buffer
		for _, der := range all {
			_ = pem.Encode(&b, &pem.Block{Type: "X509 CRL", Bytes: der})
		}
		send(w, "application/x-pem-file", 10, b.Bytes())
	})
	mux.HandleFunc("GET /x509/crl.der", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := ctxOf(r)
		defer cancel()
		_, active, err := c.CRLs(ctx)
		if err != nil {
			fail(w, "the CRL", err)
			return
		}
		send(w, "application/pkix-crl", 10, active)
	})
	mux.HandleFunc("GET /x509/crls/{name}", func(w http.ResponseWriter, r *http.Request) {
		kid, ok := strings.CutSuffix(r.PathValue("name"), ".crl")
		if !ok || !kidRE.MatchString(kid) {
			http.Error(w, "no such CRL", http.StatusNotFound)
			return
		}
		ctx, cancel := ctxOf(r)
		defer cancel()
		der, err := c.CRL(ctx, kid)
		if err != nil {
			fail(w, "the CRL", err)
			return
		}
		send(w, "application/pkix-crl", 10, der)
	})
}
