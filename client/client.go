// Package client is the Go SDK for the break-glass broker: dial it with
// mTLS, make requests, review them, fetch tokens, and verify tokens as a
// relying party. It is pure Go (no cgo) so that anyone can import it.
package client

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
)

// Options says where the broker is and who the caller is.
type Options struct {
	// Addr is the broker's gRPC address, host:port, or several replicas'
	// separated by commas: calls that are safe to repeat move to the next
	// replica when one answers Unavailable.
	Addr string
	// CAFile verifies the broker's server certificate.
	CAFile string
	// CertFile and KeyFile are the caller's client certificate and key;
	// the broker knows the caller only by this certificate.
	CertFile string
	KeyFile  string
	// TLS, when set, is used instead of the files.
	TLS *tls.Config
	// Now is the clock that dates signed review statements (time.Now when
	// nil); the broker refuses statements more than five minutes off its own.
	Now func() time.Time
	// KeyStore is where the client certificate's key lives, as reviews
	// declare it (bgv1.KeyStore_KEY_STORE_PKCS11 for a token reached
	// through PKCS#11); unspecified when not said.
	KeyStore bgv1.KeyStore
}

// Client is a connection to the broker with a method per RPC.
type Client struct {
	bgv1.RequestServiceClient
	bgv1.ReviewServiceClient
	bgv1.TokenServiceClient
	bgv1.AccountServiceClient
	bgv1.AuditServiceClient
	bgv1.GovernanceServiceClient
	bgv1.AdminServiceClient
	bgv1.CertificateServiceClient
	bgv1.PasskeyServiceClient

	cc *failover
	// key is the client certificate's private key, which signs review
	// statements.
	key crypto.Signer

	now      func() time.Time
	keyStore bgv1.KeyStore
	mu       sync.Mutex
	origin   string
	// cert is the client certificate, which policy statements carry.
	cert *x509.Certificate
}

// TLSConfig builds the mTLS client configuration from PEM files.
func TLSConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	if caFile == "" || certFile == "" || keyFile == "" {
		return nil, errors.New("the broker CA, a client certificate and its key are required (--ca, --cert, --key or BGCTL_CA, BGCTL_CERT, BGCTL_KEY)")
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("reading the CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s holds no PEM certificate", caFile)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("loading the client certificate: %w", err)
	}
	return &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, Certificates: []tls.Certificate{cert}}, nil
}

// TLSConfigSigner builds the mTLS client configuration from the broker's
// CA and the client certificate's PEM files, with its private key held
// elsewhere (a PKCS#11 token, an agent) behind a crypto.Signer, which must
// be the certificate's key.
func TLSConfigSigner(caFile, certFile string, key crypto.Signer) (*tls.Config, error) {
	if caFile == "" || certFile == "" || key == nil {
		return nil, errors.New("the broker CA, a client certificate and its key are required (--ca, --cert, --key or BGCTL_CA, BGCTL_CERT, BGCTL_KEY)")
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("reading the CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s holds no PEM certificate", caFile)
	}
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("reading the client certificate: %w", err)
	}
	var chain [][]byte
	for rest := certPEM; ; {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			break
		}
		if blk.Type == "CERTIFICATE" {
			chain = append(chain, blk.Bytes)
		}
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("%s holds no PEM certificate", certFile)
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return nil, fmt.Errorf("the client certificate: %w", err)
	}
	type equaler interface{ Equal(crypto.PublicKey) bool }
	if pub, ok := leaf.PublicKey.(equaler); !ok || !pub.Equal(key.Public()) {
		return nil, fmt.Errorf("the key given is not the key of the client certificate %s (subject %q): check --key", certFile, leaf.Subject)
	}
	return &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, Certificates: []tls.Certificate{{Certificate: chain, PrivateKey: key, Leaf: leaf}}}, nil
}

// Dial connects to the broker. The connection is made lazily; the first
// call reports a broker that cannot be reached.
func Dial(o Options, opts ...grpc.DialOption) (*Client, error) {
	if o.Addr == "" {
		return nil, errors.New("the broker address is required (--addr or BGCTL_ADDR)")
	}
	tc := o.TLS
	if tc == nil {
		var err error
		if tc, err = TLSConfig(o.CAFile, o.CertFile, o.KeyFile); err != nil {
			return nil, err
		}
	}
	f := &failover{addrs: splitAddrs(o.Addr), tls: newTLSSetup(o, tc, o.Now)}
	if len(f.addrs) == 0 {
		return nil, errors.New("the broker address is required (--addr or BGCTL_ADDR)")
	}
	for _, a := range f.addrs {
		conn, err := grpc.NewClient(a, append([]grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tc))}, opts...)...)
		if err != nil {
			_ = f.close()
			return nil, fmt.Errorf("%s: %w", a, err)
		}
		f.conns = append(f.conns, conn)
	}
	c := newClient(f)
	if o.Now != nil {
		c.now = o.Now
	}
	c.keyStore = o.KeyStore
	if len(tc.Certificates) > 0 {
		c.key, _ = tc.Certificates[0].PrivateKey.(crypto.Signer)
		c.cert = tc.Certificates[0].Leaf
		if c.cert == nil && len(tc.Certificates[0].Certificate) > 0 {
			c.cert, _ = x509.ParseCertificate(tc.Certificates[0].Certificate[0])
		}
	}
	return c, nil
}

// New wraps existing connections, one per replica.
func New(conns ...*grpc.ClientConn) *Client {
	f := &failover{conns: conns}
	for _, c := range conns {
		f.addrs = append(f.addrs, c.Target())
	}
	return newClient(f)
}

func newClient(f *failover) *Client {
	return &Client{
		RequestServiceClient:     bgv1.NewRequestServiceClient(f),
		ReviewServiceClient:      bgv1.NewReviewServiceClient(f),
		TokenServiceClient:       bgv1.NewTokenServiceClient(f),
		AccountServiceClient:     bgv1.NewAccountServiceClient(f),
		AuditServiceClient:       bgv1.NewAuditServiceClient(f),
		GovernanceServiceClient:  bgv1.NewGovernanceServiceClient(f),
		AdminServiceClient:       bgv1.NewAdminServiceClient(f),
		CertificateServiceClient: bgv1.NewCertificateServiceClient(f),
		PasskeyServiceClient:     bgv1.NewPasskeyServiceClient(f),
		cc:                       f,
		now:                      time.Now,
	}
}

// Addrs are the replicas' addresses, in the order they are tried.
func (c *Client) Addrs() []string { return append([]string(nil), c.cc.addrs...) }

// Close closes the connections.
func (c *Client) Close() error { return c.cc.close() }

// WaitForDecision blocks until the request leaves PENDING (approved,
// denied, cancelled or expired) and returns it. It follows WatchRequest and
// resumes after a dropped stream.
func (c *Client) WaitForDecision(ctx context.Context, id string) (*bgv1.Request, error) {
	backoff := 200 * time.Millisecond
	for {
		r, err := c.watchUntilDecided(ctx, id)
		if err == nil {
			return r, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if code := status.Code(err); code != codes.Unavailable && code != codes.Internal {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (c *Client) watchUntilDecided(ctx context.Context, id string) (*bgv1.Request, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.WatchRequest(ctx, &bgv1.WatchRequestRequest{Id: id})
	if err != nil {
		return nil, err
	}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			// The broker ends the stream at a final state; read it.
			got, err := c.GetRequest(ctx, &bgv1.GetRequestRequest{Id: id})
			if err != nil {
				return nil, err
			}
			if got.GetRequest().GetState() == bgv1.RequestState_REQUEST_STATE_PENDING {
				return nil, status.Error(codes.Unavailable, "watch ended while the request is pending")
			}
			return got.GetRequest(), nil
		}
		if err != nil {
			return nil, err
		}
		if r := resp.GetRequest(); r.GetState() != bgv1.RequestState_REQUEST_STATE_PENDING {
			return r, nil
		}
	}
}
