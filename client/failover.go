package client

import (
	"context"
	"strings"
	"sync"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
)

// failover is a connection to several broker replicas. Calls go to the
// current one; a call that is safe to repeat and fails with Unavailable (the
// replica is down, cannot reach its database or HSM, or runs a policy not
// in force) moves to the next replica and is tried there, each replica at
// most once per call.
type failover struct {
	conns []*grpc.ClientConn
	addrs []string
	// tls explains TLS refusals (nil for connections made elsewhere).
	tls *tlsSetup
	mu  sync.Mutex
	cur int
}

var _ grpc.ClientConnInterface = (*failover)(nil)

var errNoConn = status.Error(codes.FailedPrecondition, "client: no broker connection")

// splitAddrs reads "a,b , c" as three addresses.
func splitAddrs(s string) []string {
	var out []string
	for _, a := range strings.Split(s, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

func (f *failover) current() (int, *grpc.ClientConn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cur, f.conns[f.cur]
}

// failed moves on from replica i, unless another call already did.
func (f *failover) failed(i int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cur == i {
		f.cur = (i + 1) % len(f.conns)
	}
}

// retryable lists the calls that may be repeated after Unavailable: reads,
// the writes that carry an idempotency key, and the issuance of tokens and
// certificates, whose retry mints a new one that counts toward the grant's
// max_issuances (none is stored to be handed back). Revocations,
// cancellations and signed closings are not repeated: their outcome is for
// the caller to check.
func retryable(method string) bool {
	name := method[strings.LastIndexByte(method, '/')+1:]
	switch {
	case strings.HasPrefix(name, "Get"), strings.HasPrefix(name, "List"), strings.HasPrefix(name, "Watch"), strings.HasPrefix(name, "Check"):
		return true
	}
	switch name {
	case "CreateRequest", "ReviewRequest", "IssueToken", "IssueSSHCertificate", "IssueX509Certificate":
		return true
	}
	return false
}

// withKey gives a create or review call an idempotency key of its own, on
// a copy: the caller's message is left as it was, so reusing it for a new
// call does not replay the old one.
func withKey(args any) any {
	switch m := args.(type) {
	case *bgv1.CreateRequestRequest:
		if m.GetIdempotencyKey() == "" {
			c := proto.Clone(m).(*bgv1.CreateRequestRequest)
			c.IdempotencyKey = uuid.NewString()
			return c
		}
	case *bgv1.ReviewRequestRequest:
		if m.GetIdempotencyKey() == "" {
			c := proto.Clone(m).(*bgv1.ReviewRequestRequest)
			c.IdempotencyKey = uuid.NewString()
			return c
		}
	}
	return args
}

// Invoke implements grpc.ClientConnInterface.
func (f *failover) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	if len(f.conns) == 0 {
		return errNoConn
	}
	args = withKey(args)
	var err error
	for range len(f.conns) {
		i, conn := f.current()
		err = f.explain(i, conn.Invoke(ctx, method, args, reply, opts...))
		if status.Code(err) != codes.Unavailable || !retryable(method) || ctx.Err() != nil || len(f.conns) == 1 {
			return err
		}
		f.failed(i)
	}
	return err
}

// NewStream implements grpc.ClientConnInterface. A stream that fails with
// Unavailable moves later calls to the next replica; the caller resumes
// (WaitForDecision does).
func (f *failover) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	if len(f.conns) == 0 {
		return nil, errNoConn
	}
	var err error
	for range len(f.conns) {
		i, conn := f.current()
		var s grpc.ClientStream
		s, err = conn.NewStream(ctx, desc, method, opts...)
		if err == nil {
			return &watchedStream{ClientStream: s, explain: func(err error) error { return f.explain(i, err) }, onUnavailable: func() { f.failed(i) }}, nil
		}
		err = f.explain(i, err)
		if status.Code(err) != codes.Unavailable || ctx.Err() != nil {
			return nil, err
		}
		f.failed(i)
	}
	return nil, err
}

type watchedStream struct {
	grpc.ClientStream
	explain       func(error) error
	onUnavailable func()
}

func (s *watchedStream) RecvMsg(m any) error {
	err := s.explain(s.ClientStream.RecvMsg(m))
	if status.Code(err) == codes.Unavailable {
		s.onUnavailable()
	}
	return err
}

// explain makes a TLS refusal on replica i say what to change.
func (f *failover) explain(i int, err error) error {
	if err == nil {
		return nil
	}
	return f.tls.explain(f.addrs[i], err)
}

func (f *failover) close() error {
	var first error
	for _, c := range f.conns {
		if err := c.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}
