package grpcapi

import (
	"context"
	"encoding/pem"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
	"github.com/bgbroker/breakglass/server/broker"
)

// CertificateAuthorities publishes the CA material targets trust
// (authority.Set).
type CertificateAuthorities interface {
	SSHAuthorizedKeys() []byte
	X509CACerts() []byte
}

// certificateServer implements CertificateService.
type certificateServer struct {
	bgv1.UnimplementedCertificateServiceServer
	s   *Server
	cas CertificateAuthorities
}

// IssueSSHCertificate implements CertificateService.
func (c *certificateServer) IssueSSHCertificate(ctx context.Context, in *bgv1.IssueSSHCertificateRequest) (*bgv1.IssueSSHCertificateResponse, error) {
	res, err := c.s.b.IssueSSHCertificate(ctx, caller(ctx), broker.SSHCertInput{RequestID: in.RequestId, PublicKey: []byte(in.PublicKey), Principals: in.Principals})
	if err != nil {
		return nil, c.s.toStatus(ctx, err)
	}
	cert := res.Cert
	return &bgv1.IssueSSHCertificateResponse{
		Certificate: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(cert))), Serial: cert.Serial, KeyId: cert.KeyId, Principals: cert.ValidPrincipals,
		ValidAfter: ts(unix(cert.ValidAfter)), ValidBefore: ts(unix(cert.ValidBefore)), CaKid: res.CAKID, IssuancesLeft: int32(res.IssuancesLeft), Entry: ref(res.Entry),
	}, nil
}

// IssueX509Certificate implements CertificateService.
func (c *certificateServer) IssueX509Certificate(ctx context.Context, in *bgv1.IssueX509CertificateRequest) (*bgv1.IssueX509CertificateResponse, error) {
	res, err := c.s.b.IssueX509Certificate(ctx, caller(ctx), broker.X509CertInput{RequestID: in.RequestId, CSR: in.Csr})
	if err != nil {
		return nil, c.s.toStatus(ctx, err)
	}
	cert := res.Cert
	return &bgv1.IssueX509CertificateResponse{
		CertificatePem: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})), Serial: cert.SerialNumber.String(),
		CommonName: cert.Subject.CommonName, NotBefore: ts(cert.NotBefore), NotAfter: ts(cert.NotAfter), CaKid: res.CAKID,
		CaCertificatePem: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: res.CACert.Raw})), IssuancesLeft: int32(res.IssuancesLeft), Entry: ref(res.Entry),
	}, nil
}

// GetCertificateAuthorities implements CertificateService.
func (c *certificateServer) GetCertificateAuthorities(ctx context.Context, _ *bgv1.GetCertificateAuthoritiesRequest) (*bgv1.GetCertificateAuthoritiesResponse, error) {
	if c.cas == nil {
		return nil, c.s.toStatus(ctx, &broker.Error{Kind: broker.KindState, Msg: "this broker has no certificate authorities configured (keys.ssh_ca, keys.x509_ca)"})
	}
	return &bgv1.GetCertificateAuthoritiesResponse{SshCaKeys: string(c.cas.SSHAuthorizedKeys()), X509CaCertificatesPem: string(c.cas.X509CACerts())}, nil
}

func unix(s uint64) time.Time { return time.Unix(int64(s), 0).UTC() }
