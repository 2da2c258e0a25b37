package daemon

import (
	"context"
	"fmt"
	"time"

	"github.com/bgbroker/breakglass/server/authority"
	"github.com/bgbroker/breakglass/server/broker"
	"github.com/bgbroker/breakglass/server/grpcapi"
	"github.com/bgbroker/breakglass/server/httpapi"
)

// newAuthorities builds the SSH and X.509 CAs from the keys loaded, when
// the configuration names CA keys. It fails when the X.509 CA certificate
// is not the key's: the broker does not start on it.
func (d *Daemon) newAuthorities(context.Context) (err error) {
	if d.cfg.Keys.SSHCA == "" && d.cfg.Keys.X509CA == "" {
		return nil
	}
	d.cas, err = authority.New(authority.Config{Keys: d.ring, Store: d.store, CACertFile: d.cfg.Certificates.X509CACert, BaseURL: d.Ready.Issuer,
		CRLValidity: d.cfg.Certificates.CRLValidity, Now: d.now, Log: d.log})
	return err
}

// signFirstCRL: once the registry names the CA keys, the first CRL is
// signed before anything is served, so no certificate exists without one.
func (d *Daemon) signFirstCRL(ctx context.Context) error {
	if d.cas == nil {
		return nil
	}
	if err := d.cas.Reload(); err != nil {
		return err
	}
	if err := d.cas.RefreshCRLs(ctx); err != nil {
		return fmt.Errorf("signing the X.509 CRL: %w", err)
	}
	return nil
}

// brokerAuthorities is the set as the broker sees it, nil when there is
// none.
func (d *Daemon) brokerAuthorities() broker.Authorities {
	if d.cas == nil {
		return nil
	}
	return d.cas
}

// CertificatesRevoked asks the CRL loop to look now: a revocation was
// committed.
func (o observer) CertificatesRevoked() {
	select {
	case o.d.crlKick <- struct{}{}:
	default:
	}
}

// crlLoop keeps every X.509 CA's CRL current: re-signed after each
// revocation (here or on another replica), before it lapses, and as soon
// as the HSM is back when it could not be signed. The KRL needs no loop:
// it is made from the database on request.
func (d *Daemon) crlLoop(ctx context.Context) {
	every := min(5*time.Second, d.cfg.Certificates.CRLValidity/20)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-d.crlKick:
		}
		if err := d.cas.RefreshCRLs(ctx); err != nil && ctx.Err() == nil {
			d.log.Warn("the X.509 CRL could not be re-signed; it will be as soon as the HSM signs", "err", err)
		}
	}
}

// checkCRLs reports each CA whose published CRL lacks a revocation or has
// lapsed: the broker is then unhealthy (and issues no X.509 certificate).
func (d *Daemon) checkCRLs(checks map[string]string) bool {
	if d.cas == nil {
		return true
	}
	ok := true
	for kid, why := range d.cas.CRLHealth() {
		checks["x509_crl:"+kid] = "stale: " + why
		ok = false
	}
	return ok
}

// grpcAuthorities and httpCredentials hand the set on as an interface
// that is nil when there is none.
func grpcAuthorities(s *authority.Set) grpcapi.CertificateAuthorities {
	if s == nil {
		return nil
	}
	return s
}

func httpCredentials(s *authority.Set) httpapi.Credentials {
	if s == nil {
		return nil
	}
	return s
}
