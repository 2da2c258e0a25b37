package client

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// tlsSetup is what the client knows of its own TLS configuration, to say
// what to change when the broker refuses it or it refuses the broker.
type tlsSetup struct {
	caFile, certFile string
	// cert is the client certificate, nil without one.
	cert *x509.Certificate
	now  func() time.Time
}

func newTLSSetup(o Options, tc *tls.Config, now func() time.Time) *tlsSetup {
	s := &tlsSetup{caFile: o.CAFile, certFile: o.CertFile, now: now}
	if len(tc.Certificates) > 0 {
		c := tc.Certificates[0]
		s.cert = c.Leaf
		if s.cert == nil && len(c.Certificate) > 0 {
			s.cert, _ = x509.ParseCertificate(c.Certificate[0])
		}
	}
	return s
}

// What to set, in the words of both the SDK and bgctl.
const (
	setCert = "set --cert and --key (BGCTL_CERT and BGCTL_KEY; client.Options CertFile and KeyFile) to your certificate from the broker's client CA and its key"
	setCA   = "set --ca (BGCTL_CA; client.Options.CAFile) to the CA that issued the broker's server certificate"
)

// explain turns the transport error of a connection that TLS refused into
// one a person can act on. The broker refuses a client certificate with a
// TLS alert, which in TLS 1.3 arrives after the client's side of the
// handshake, so gRPC reports it as an Unavailable connection error such as
// `error reading server preface: remote error: tls: certificate
// required`; those become Unauthenticated (the same certificate is refused
// by every replica, so nothing is retried) and name the certificate in use
// and what to set. A server certificate this client does not trust stays
// Unavailable (it may be one replica's) and says which flag to check.
// Other errors are returned as they are.
func (s *tlsSetup) explain(addr string, err error) error {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.Unavailable {
		return err
	}
	msg := st.Message()
	var alert string
	if _, after, found := strings.Cut(msg, "remote error: tls: "); found {
		alert, _, _ = strings.Cut(after, "\"")
	}
	mine := s.describe()
	switch alert {
	case "":
	case "certificate required":
		if s == nil || s.cert == nil {
			return status.Errorf(codes.Unauthenticated, "the broker at %s requires a client certificate and this client has none (TLS alert %q): %s", addr, alert, setCert)
		}
		// Go sends a certificate only when its issuer is one the server
		// names as acceptable (and its key one the server can verify): one
		// from another CA is not sent at all.
		return status.Errorf(codes.Unauthenticated, "the broker at %s requires a client certificate from its client CA and received none (TLS alert %q): %s is not from that CA, so it was not sent; %s",
			addr, alert, mine, setCert)
	case "unknown certificate authority":
		return status.Errorf(codes.Unauthenticated, "the broker at %s refused %s: it is not issued by the broker's client CA (TLS alert %q); %s", addr, mine, alert, setCert)
	case "expired certificate":
		return status.Errorf(codes.Unauthenticated, "the broker at %s refused %s: it is expired or not yet valid by the broker's clock (TLS alert %q); renew it, or %s", addr, mine, alert, setCert)
	case "bad certificate", "revoked certificate", "unsupported certificate", "unknown certificate", "access denied":
		return status.Errorf(codes.Unauthenticated, "the broker at %s refused %s (TLS alert %q): it is revoked, not yet or no longer valid by the broker's clock, or not a client-authentication certificate; renew it, or %s",
			addr, mine, alert, setCert)
	default:
		return status.Errorf(codes.Unavailable, "the broker at %s ended the TLS connection with the alert %q: %s", addr, alert, msg)
	}
	where := "the CA in --ca"
	if s != nil && s.caFile != "" {
		where = "the CA in " + s.caFile
	}
	switch {
	case strings.Contains(msg, "x509: certificate signed by unknown authority"):
		return status.Errorf(codes.Unavailable, "the server at %s presented a certificate that %s did not issue: it is another server, or %s (%s)", addr, where, setCA, msg)
	case strings.Contains(msg, "x509: certificate is valid for"):
		return status.Errorf(codes.Unavailable, "the server certificate at %s is not for that address: use a host name or address its certificate names in --addr (BGCTL_ADDR) (%s)", addr, msg)
	case strings.Contains(msg, "x509: certificate has expired or is not yet valid"):
		return status.Errorf(codes.Unavailable, "the server certificate at %s is expired or not yet valid by this machine's clock (now %s): check the clock, or the broker's certificate (%s)",
			addr, s.clock().UTC().Format(time.RFC3339), msg)
	}
	return err
}

func (s *tlsSetup) clock() time.Time {
	if s == nil || s.now == nil {
		return time.Now()
	}
	return s.now()
}

// describe names the client certificate in use for a message.
func (s *tlsSetup) describe() string {
	if s == nil || s.cert == nil {
		return "the client certificate"
	}
	name := "the client certificate"
	if s.certFile != "" {
		name = s.certFile
	}
	c := s.cert
	out := fmt.Sprintf("%s (subject %q, issued by %q, valid %s to %s", name, c.Subject.String(), c.Issuer.String(),
		c.NotBefore.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339))
	switch now := s.clock(); {
	case now.After(c.NotAfter):
		out += ", expired by this machine's clock"
	case now.Before(c.NotBefore):
		out += ", not yet valid by this machine's clock"
	}
	return out + ")"
}
