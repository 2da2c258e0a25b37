package httpapi

import (
	"net/http"
	"net/url"
)

// Claims lists the claims of every token (claims_supported).
var Claims = []string{"iss", "sub", "aud", "exp", "iat", "nbf", "jti", "client_id", "bg_account", "bg_request", "bg_approvers", "bg_drill"}

// IntrospectionPath is where, under the broker's issuer, RFC 7662
// introspection is served.
const IntrospectionPath = "/introspect"

// Metadata is the discovery document of an issuer: OpenID Connect
// Discovery 1.0 provider metadata, served also as RFC 8414 authorization
// server metadata (the two registries share these members).
//
// The broker issues tokens over its gRPC API after a quorum of approvals:
// it has no authorization or token endpoint, so it lists none, and no
// token_endpoint_auth_methods_supported or grant types (an issuer of this
// kind, like the service account issuer of Kubernetes). Its tokens are JWTs
// signed with ES256 alone, which id_token_signing_alg_values_supported
// says, so that discovery-based verifiers (go-oidc, AWS, Vault, Kubernetes)
// expect ES256 rather than falling back to RS256. response_types_supported
// (required by both specifications) is ["id_token"]: what those consumers
// expect of a JWT issuer; subject_types_supported is ["public"]: sub is the
// requester's principal, the same for every relying party.
type Metadata struct {
	Issuer                           string   `json:"issuer"`
	JWKSURI                          string   `json:"jwks_uri"`
	ResponseTypesSupported           []string `json:"response_types_supported"`
	SubjectTypesSupported            []string `json:"subject_types_supported"`
	IDTokenSigningAlgValuesSupported []string `json:"id_token_signing_alg_values_supported"`
	ClaimsSupported                  []string `json:"claims_supported"`
	// IntrospectionEndpoint is RFC 7662 introspection (RFC 8414 §2), with
	// RFC 8705 tls_client_auth: a client certificate from the client CA.
	IntrospectionEndpoint                     string   `json:"introspection_endpoint"`
	IntrospectionEndpointAuthMethodsSupported []string `json:"introspection_endpoint_auth_methods_supported"`
	ServiceDocumentation                      string   `json:"service_documentation,omitempty"`
}

// MetadataFor is the metadata of issuer, whose key set is at jwksURI;
// introspection is the broker's, whichever issuer asks.
func MetadataFor(issuer, jwksURI, brokerIssuer string) Metadata {
	return Metadata{
		Issuer: issuer, JWKSURI: jwksURI,
		ResponseTypesSupported:                    []string{"id_token"},
		SubjectTypesSupported:                     []string{"public"},
		IDTokenSigningAlgValuesSupported:          []string{"ES256"},
		ClaimsSupported:                           Claims,
		IntrospectionEndpoint:                     brokerIssuer + IntrospectionPath,
		IntrospectionEndpointAuthMethodsSupported: []string{"tls_client_auth"},
		ServiceDocumentation:                      brokerIssuer + "/",
	}
}

// routes are the issuer-relative paths of one issuer, rooted where the
// issuer's path says (discovery and keys live under the issuer).
type routes struct{ issuer, path string }

func routesFor(issuer string) routes {
	u, err := url.Parse(issuer)
	if err != nil {
		return routes{issuer: issuer}
	}
	return routes{issuer: issuer, path: u.EscapedPath()}
}

// serveMetadata registers the discovery documents and key sets of the
// broker's issuer and of each account with a token key of its own
// (<issuer>/accounts/NAME).
func serveMetadata(mux *http.ServeMux, cfg Config) {
	r := routesFor(cfg.Issuer)
	brokerMeta := MetadataFor(cfg.Issuer, cfg.Issuer+"/.well-known/jwks.json", cfg.Issuer)
	meta := func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=300")
		writeJSON(w, http.StatusOK, brokerMeta)
	}
	jwks := func(w http.ResponseWriter, _ *http.Request) {
		b, err := cfg.JWKS()
		if err != nil {
			cfg.Log.Error("jwks", "err", err)
			http.Error(w, "internal error", http.StatusInternalServerError)
			return
		}
		writeJWKS(w, b)
	}
	// OpenID Connect Discovery 1.0 §4: the issuer, then the well-known
	// path; RFC 8414 §3.1: the well-known path between host and path.
	mux.HandleFunc("GET "+r.path+"/.well-known/openid-configuration", meta)
	mux.HandleFunc("GET /.well-known/oauth-authorization-server"+r.path, meta)
	mux.HandleFunc("GET "+r.path+"/.well-known/jwks.json", jwks)

	account := func(h func(w http.ResponseWriter, name, issuer string, set []byte)) http.HandlerFunc {
		return func(w http.ResponseWriter, req *http.Request) {
			name := req.PathValue("account")
			set, err := cfg.AccountJWKS(name)
			if err != nil {
				http.Error(w, "no issuer for this account: it has no token key of its own, and its tokens carry the broker's issuer", http.StatusNotFound)
				return
			}
			h(w, name, cfg.Issuer+"/accounts/"+name, set)
		}
	}
	accountMeta := account(func(w http.ResponseWriter, _, issuer string, _ []byte) {
		w.Header().Set("Cache-Control", "public, max-age=300")
		writeJSON(w, http.StatusOK, MetadataFor(issuer, issuer+"/.well-known/jwks.json", cfg.Issuer))
	})
	accountJWKS := account(func(w http.ResponseWriter, _, _ string, set []byte) { writeJWKS(w, set) })
	mux.HandleFunc("GET "+r.path+"/accounts/{account}/.well-known/openid-configuration", accountMeta)
	mux.HandleFunc("GET /.well-known/oauth-authorization-server"+r.path+"/accounts/{account}", accountMeta)
	mux.HandleFunc("GET "+r.path+"/accounts/{account}/.well-known/jwks.json", accountJWKS)
	// The account key set's first address, kept for relying parties that
	// were configured with it.
	mux.HandleFunc("GET "+r.path+"/accounts/{account}/jwks.json", accountJWKS)
}

func writeJWKS(w http.ResponseWriter, b []byte) {
	w.Header().Set("Content-Type", "application/jwk-set+json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	_, _ = w.Write(b)
}
