package test

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
)

// collector is an OTLP/gRPC trace receiver, as an OpenTelemetry collector
// would run one.
type collector struct {
	collectortrace.UnimplementedTraceServiceServer
	mu    sync.Mutex
	spans []*tracepb.Span
}

func (c *collector) Export(_ context.Context, in *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, rs := range in.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			c.spans = append(c.spans, ss.GetSpans()...)
		}
	}
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

func startCollector(t *testing.T) (*collector, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &collector{}
	srv := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(srv, c)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return c, lis.Addr().String()
}

// With an OTLP endpoint configured, a request's trace reaches the
// collector: the gRPC server span, and under the same trace the store
// transaction and the HSM signature it caused.
func TestTracingExportsOverOTLP(t *testing.T) {
	c, addr := startCollector(t)
	dir := newServeDir(t, func(cfg []byte) []byte {
		return append(cfg, fmt.Appendf(nil, "tracing:\n  otlp_endpoint: %q\n  insecure: true\n  service_name: breakglass-test\n", addr)...)
	})
	d := &devBroker{t: t, dir: dir, serve: true}
	d.start()
	t.Cleanup(d.stop)
	d.createRequest("alice")
	d.stop() // flushes the batch

	c.mu.Lock()
	defer c.mu.Unlock()
	byTrace := map[string]map[string]bool{}
	var createTrace string
	for _, s := range c.spans {
		id := fmt.Sprintf("%x", s.GetTraceId())
		if byTrace[id] == nil {
			byTrace[id] = map[string]bool{}
		}
		byTrace[id][s.GetName()] = true
		if s.GetName() == "breakglass.v1.RequestService/CreateRequest" && s.GetKind() == tracepb.Span_SPAN_KIND_SERVER {
			createTrace = id
		}
	}
	if createTrace == "" {
		t.Fatalf("no server span for CreateRequest among %d spans: %v", len(c.spans), byTrace)
	}
	for _, name := range []string{"store.Update", "hsm.Sign"} {
		if !byTrace[createTrace][name] {
			t.Errorf("the CreateRequest trace has no %s span: %v", name, byTrace[createTrace])
		}
	}
}
