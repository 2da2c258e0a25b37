// Package grpcapi serves the broker over gRPC: mTLS identity, interceptors,
// and the one place where broker errors become gRPC status codes with fixed
// messages (the log keeps the detail).
package grpcapi

import (
	"context"
	"errors"
	"fmt"
	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"google.golang.org/grpc/stats"
	"log/slog"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"buf.build/go/protovalidate"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	pvmw "github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/protovalidate"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
	"github.com/bgbroker/breakglass/server/broker"
	"github.com/bgbroker/breakglass/server/identity"
)

// Limits protect the broker from one caller; the daemon passes the
// configuration file's values (config.Limits, with its defaults).
type Limits struct {
	// RatePerSecond and Burst bound calls per principal.
	RatePerSecond float64
	Burst         int
	// MaxMessageBytes bounds a request message.
	MaxMessageBytes int
	// HandshakeTimeout bounds the TLS handshake.
	HandshakeTimeout time.Duration
	// MaxConnectionAge ends every connection this long after it was made,
	// so that each one handshakes again with the client CA; the calls
	// still running get MaxConnectionAgeGrace to finish, then the
	// connection is closed. Certificates are also checked on every call;
	// this bounds what a connection carries on from its handshake.
	MaxConnectionAge      time.Duration
	MaxConnectionAgeGrace time.Duration
}

// Config builds the gRPC server.
type Config struct {
	Broker   *broker.Broker
	Identity *identity.Verifier
	// TLS is the listener's configuration (identity.Verifier.ServerTLS).
	TLS    credentials.TransportCredentials
	Limits Limits
	Log    *slog.Logger
	Audit  AuditConfig
	// Metrics, when set, counts and times every call (Prometheus).
	Metrics *grpcprom.ServerMetrics
	// StatsHandler, when set, sees every call and connection (the
	// OpenTelemetry handler traces them).
	StatsHandler stats.Handler
	// ReloadPolicy, when set, serves AdminService.ReloadPolicy.
	ReloadPolicy func(ctx context.Context, caller string) (*broker.PolicyReload, error)
	// Authorities publishes the CA keys and certificates; nil when the
	// broker has none.
	Authorities CertificateAuthorities
}

// Server is the broker's gRPC server.
type Server struct {
	bgv1.UnimplementedRequestServiceServer
	bgv1.UnimplementedReviewServiceServer
	bgv1.UnimplementedTokenServiceServer
	bgv1.UnimplementedAccountServiceServer

	b      *broker.Broker
	id     *identity.Verifier
	log    *slog.Logger
	limits Limits
	Health *health.Server
	GRPC   *grpc.Server
	reload func(ctx context.Context, caller string) (*broker.PolicyReload, error)

	mu       sync.Mutex
	limiters map[string]*rate.Limiter
}

// ServiceNames are the services whose health is reported.
var ServiceNames = []string{
	bgv1.RequestService_ServiceDesc.ServiceName,
	bgv1.ReviewService_ServiceDesc.ServiceName,
	bgv1.TokenService_ServiceDesc.ServiceName,
	bgv1.AccountService_ServiceDesc.ServiceName,
	bgv1.AuditService_ServiceDesc.ServiceName,
	bgv1.GovernanceService_ServiceDesc.ServiceName,
	bgv1.AdminService_ServiceDesc.ServiceName,
	bgv1.CertificateService_ServiceDesc.ServiceName,
	bgv1.PasskeyService_ServiceDesc.ServiceName,
}

var errNoReload = broker.Unavailable("this broker cannot reload its policy over the API")

// New builds the server with its interceptors: recovery first, then
// logging, authentication, rate limiting and validation.
func New(cfg Config) (*Server, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if l := cfg.Limits; l.RatePerSecond <= 0 || l.Burst <= 0 || l.MaxMessageBytes <= 0 || l.HandshakeTimeout <= 0 ||
		l.MaxConnectionAge <= 0 || l.MaxConnectionAgeGrace <= 0 {
		return nil, fmt.Errorf("grpcapi: every limit must be positive: %+v", l)
	}
	s := &Server{b: cfg.Broker, id: cfg.Identity, log: cfg.Log, limits: cfg.Limits, limiters: map[string]*rate.Limiter{}, reload: cfg.ReloadPolicy}
	validator, err := protovalidate.New()
	if err != nil {
		return nil, err
	}
	recoveryOpt := recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		s.log.ErrorContext(ctx, "panic in handler", "method", methodOf(ctx), "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
		return status.Error(codes.Internal, "internal error")
	})
	logOpts := []logging.Option{
		logging.WithLogOnEvents(logging.FinishCall),
		logging.WithFieldsFromContext(func(ctx context.Context) logging.Fields {
			if p, err := s.id.Authenticate(ctx); err == nil && p.PrincipalErr == nil {
				return logging.Fields{"principal", p.Principal}
			}
			return nil
		}),
	}
	logger := logging.LoggerFunc(func(ctx context.Context, lvl logging.Level, msg string, fields ...any) {
		s.log.Log(ctx, slog.Level(lvl), msg, fields...)
	})
	unary := []grpc.UnaryServerInterceptor{
		recovery.UnaryServerInterceptor(recoveryOpt),
		logging.UnaryServerInterceptor(logger, logOpts...),
		s.authUnary,
		pvmw.UnaryServerInterceptor(validator),
	}
	streams := []grpc.StreamServerInterceptor{
		recovery.StreamServerInterceptor(recoveryOpt),
		logging.StreamServerInterceptor(logger, logOpts...),
		s.authStream,
		pvmw.StreamServerInterceptor(validator),
	}
	if cfg.Metrics != nil {
		// Outermost, so that the code a caller got is the code counted,
		// a recovered panic's included.
		unary = append([]grpc.UnaryServerInterceptor{cfg.Metrics.UnaryServerInterceptor()}, unary...)
		streams = append([]grpc.StreamServerInterceptor{cfg.Metrics.StreamServerInterceptor()}, streams...)
	}
	opts := []grpc.ServerOption{}
	if cfg.StatsHandler != nil {
		opts = append(opts, grpc.StatsHandler(cfg.StatsHandler))
	}
	s.GRPC = grpc.NewServer(append(opts,
		grpc.Creds(deliverAlerts(cfg.TLS)),
		grpc.MaxRecvMsgSize(s.limits.MaxMessageBytes),
		grpc.ConnectionTimeout(s.limits.HandshakeTimeout),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: 5 * time.Minute,
			MaxConnectionAge: s.limits.MaxConnectionAge, MaxConnectionAgeGrace: s.limits.MaxConnectionAgeGrace}),
		grpc.MaxConcurrentStreams(256),
		grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(streams...),
	)...)
	bgv1.RegisterRequestServiceServer(s.GRPC, s)
	bgv1.RegisterReviewServiceServer(s.GRPC, s)
	bgv1.RegisterTokenServiceServer(s.GRPC, s)
	bgv1.RegisterAccountServiceServer(s.GRPC, s)
	bgv1.RegisterAuditServiceServer(s.GRPC, &auditServer{s: s, cfg: cfg.Audit})
	bgv1.RegisterGovernanceServiceServer(s.GRPC, &governanceServer{s: s})
	bgv1.RegisterAdminServiceServer(s.GRPC, &adminServer{s: s})
	bgv1.RegisterCertificateServiceServer(s.GRPC, &certificateServer{s: s, cas: cfg.Authorities})
	bgv1.RegisterPasskeyServiceServer(s.GRPC, &passkeyServer{s: s})
	s.Health = health.NewServer()
	healthpb.RegisterHealthServer(s.GRPC, s.Health)
	reflection.Register(s.GRPC)
	if cfg.Metrics != nil {
		cfg.Metrics.InitializeMetrics(s.GRPC)
	}
	return s, nil
}

// SetServing sets the health of every service.
func (s *Server) SetServing(ok bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if ok {
		st = healthpb.HealthCheckResponse_SERVING
	}
	s.Health.SetServingStatus("", st)
	for _, n := range ServiceNames {
		s.Health.SetServingStatus(n, st)
	}
}

// SetCheck sets the health of one named check that does not decide the
// broker's own serving status (the witnesses: a split view must be loud
// without taking revocation away), as its own gRPC health service.
func (s *Server) SetCheck(name string, ok bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if ok {
		st = healthpb.HealthCheckResponse_SERVING
	}
	s.Health.SetServingStatus(name, st)
}

func methodOf(ctx context.Context) string {
	m, _ := grpc.Method(ctx)
	return m
}

// open services need a verified certificate (the TLS stack demands one) but
// no principal in the policy.
func openMethod(m string) bool {
	return strings.HasPrefix(m, "/grpc.health.v1.Health/") || strings.HasPrefix(m, "/grpc.reflection.")
}

// authenticate puts the caller into the context, from the verified client
// certificate and nothing else, checked on this call (validity by the
// broker's clock, the CRL in force), and applies the caller's rate limit.
func (s *Server) authenticate(ctx context.Context) (context.Context, identity.Peer, error) {
	m := methodOf(ctx)
	p, err := s.id.Authenticate(ctx)
	if err != nil {
		// A certificate that lapsed or was revoked is refused everywhere,
		// the open services included.
		s.log.WarnContext(ctx, "unauthenticated call", "method", m, "err", err)
		return nil, p, status.Error(codes.Unauthenticated, err.Error())
	}
	if p.PrincipalErr != nil {
		if openMethod(m) {
			return identity.WithPeer(ctx, p), p, nil
		}
		s.log.WarnContext(ctx, "unauthenticated call", "method", m, "err", p.PrincipalErr)
		return nil, p, status.Error(codes.Unauthenticated, p.PrincipalErr.Error())
	}
	if !openMethod(m) {
		if !s.b.Policy().Known(p.Principal) {
			s.b.RecordDenial(p.Principal, m, "principal not in the policy")
			return nil, p, status.Errorf(codes.PermissionDenied, "principal %s is not in the broker's policy", p.Principal)
		}
		if !s.limiter(p.Principal).Allow() {
			return nil, p, status.Errorf(codes.ResourceExhausted, "rate limit: at most %g calls per second for %s; slow down and retry", s.limits.RatePerSecond, p.Principal)
		}
		s.b.SeenCert(p.Principal, p.Leaf)
	}
	return identity.WithPeer(ctx, p), p, nil
}

// authUnary is the authentication interceptor of unary calls.
func (s *Server) authUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, _, err := s.authenticate(ctx)
	if err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

// authStream is the authentication interceptor of streams. A stream lives
// as long as its caller keeps it open, so its certificate is watched while
// it runs: a revocation or an expiry ends it with Unauthenticated.
func (s *Server) authStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, p, err := s.authenticate(ss.Context())
	if err != nil {
		return err
	}
	ctx, stop := s.id.Guard(ctx, p)
	defer stop()
	err = handler(srv, &guardedStream{ServerStream: ss, ctx: ctx})
	if cause := context.Cause(ctx); errors.Is(cause, identity.ErrNotValid) {
		s.log.WarnContext(ctx, "stream ended: the caller's certificate is no longer valid", "method", methodOf(ctx), "principal", p.Principal, "err", cause)
		return status.Error(codes.Unauthenticated, cause.Error())
	}
	return err
}

type guardedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (g *guardedStream) Context() context.Context { return g.ctx }

func (s *Server) limiter(p string) *rate.Limiter {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.limiters[p]
	if l == nil {
		l = rate.NewLimiter(rate.Limit(s.limits.RatePerSecond), s.limits.Burst)
		s.limiters[p] = l
	}
	return l
}

func caller(ctx context.Context) string {
	p, _ := identity.PrincipalFrom(ctx)
	return p
}

// toStatus is the single place broker errors become gRPC errors. The caller
// sees the kind's code and the public message; the log gets the detail.
func (s *Server) toStatus(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	code := codes.Internal
	switch broker.KindOf(err) {
	case broker.KindInvalid:
		code = codes.InvalidArgument
	case broker.KindNotFound:
		code = codes.NotFound
	case broker.KindPermission:
		code = codes.PermissionDenied
	case broker.KindState:
		code = codes.FailedPrecondition
	case broker.KindExists:
		code = codes.AlreadyExists
	case broker.KindUnavailable:
		code = codes.Unavailable
	case broker.KindExhausted:
		code = codes.ResourceExhausted
	case broker.KindUnauthenticated:
		code = codes.Unauthenticated
	case broker.KindOutOfRange:
		code = codes.OutOfRange
	}
	msg := broker.PublicMessage(err)
	p := caller(ctx)
	switch code {
	case codes.Internal:
		if ctx.Err() != nil {
			return status.FromContextError(ctx.Err()).Err()
		}
		s.log.ErrorContext(ctx, "internal error", "method", methodOf(ctx), "principal", p, "err", err)
	case codes.Unavailable:
		s.log.WarnContext(ctx, "unavailable", "method", methodOf(ctx), "principal", p, "err", err)
	case codes.PermissionDenied:
		s.b.RecordDenial(p, methodOf(ctx), msg)
	}
	return status.Error(code, msg)
}
