// Package tracing sets up OpenTelemetry traces: off unless an OTLP
// endpoint is configured, and then exported over OTLP/gRPC in batches.
// The tracer provider is passed explicitly to what it instruments (the
// gRPC server, the HSM, the store); nothing is set globally.
package tracing

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Config configures tracing.
type Config struct {
	// OTLPEndpoint is the collector's OTLP/gRPC address, host:port; empty
	// turns tracing off.
	OTLPEndpoint string
	// Insecure sends to the collector without TLS (a sidecar on loopback).
	Insecure bool
	// SampleRatio is the share of new traces kept (default 1); a caller's
	// sampled trace is always continued.
	SampleRatio float64
	// ServiceName names this broker in traces (default breakglassd).
	ServiceName string
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if c.SampleRatio < 0 || c.SampleRatio > 1 {
		return fmt.Errorf("tracing.sample_ratio must be between 0 and 1, not %g", c.SampleRatio)
	}
	return nil
}

// Provider is the tracer provider and its shutdown.
type Provider struct {
	trace.TracerProvider
	// Propagator reads and writes trace context on the wire.
	Propagator propagation.TextMapPropagator
	shutdown   func(context.Context) error
}

// Enabled reports whether traces are exported.
func (p *Provider) Enabled() bool { return p.shutdown != nil }

// Shutdown flushes and stops the exporter.
func (p *Provider) Shutdown(ctx context.Context) error {
	if p.shutdown == nil {
		return nil
	}
	return p.shutdown(ctx)
}

// New builds the provider: a no-op one when no endpoint is configured.
func New(ctx context.Context, cfg Config, version string) (*Provider, error) {
	prop := propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
	if cfg.OTLPEndpoint == "" {
		return &Provider{TracerProvider: noop.NewTracerProvider(), Propagator: prop}, nil
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	opts := []otlptracegrpc.Option{otlptracegrpc.WithEndpoint(cfg.OTLPEndpoint), otlptracegrpc.WithTimeout(5 * time.Second)}
	if cfg.Insecure {
		opts = append(opts, otlptracegrpc.WithInsecure())
	}
	// The exporter connects lazily: a collector that is down loses spans,
	// never requests.
	exp, err := otlptracegrpc.New(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	ratio := cfg.SampleRatio
	if ratio == 0 {
		ratio = 1
	}
	name := cfg.ServiceName
	if name == "" {
		name = "breakglassd"
	}
	res, err := resource.Merge(resource.Default(), resource.NewWithAttributes(semconv.SchemaURL, semconv.ServiceName(name), semconv.ServiceVersion(version)))
	if err != nil && !errors.Is(err, resource.ErrSchemaURLConflict) {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp),
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(ratio))),
	)
	return &Provider{TracerProvider: tp, Propagator: prop, shutdown: tp.Shutdown}, nil
}
