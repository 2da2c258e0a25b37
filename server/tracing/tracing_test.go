package tracing_test

import (
	"context"
	"testing"
	"time"

	"github.com/bgbroker/breakglass/server/tracing"
)

func TestNew(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		cfg     tracing.Config
		enabled bool
		wantErr bool
	}{
		{"off by default", tracing.Config{}, false, false},
		{"an endpoint turns it on", tracing.Config{OTLPEndpoint: "127.0.0.1:4317", Insecure: true}, true, false},
		{"sample ratio above 1", tracing.Config{OTLPEndpoint: "127.0.0.1:4317", SampleRatio: 1.5}, false, true},
		{"negative sample ratio", tracing.Config{OTLPEndpoint: "127.0.0.1:4317", SampleRatio: -0.1}, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := tracing.New(ctx, tc.cfg, "test")
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v", err)
			}
			if err != nil {
				return
			}
			defer func() {
				sctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
				defer cancel()
				_ = p.Shutdown(sctx)
			}()
			if p.Enabled() != tc.enabled {
				t.Errorf("enabled = %v", p.Enabled())
			}
			// A collector that is not there costs spans, never the caller.
			_, span := p.Tracer("t").Start(ctx, "s")
			span.End()
		})
	}
}
