package hsm

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// Instruments receive the module's signatures, for metrics and traces.
type Instruments struct {
	// Observe is called after every signature that got a signing slot, with
	// the key's purpose and label, how long the token took, and its error.
	Observe func(purpose Purpose, label string, d time.Duration, err error)
	// Tracer, when set, wraps each signature, queueing included, in a span.
	Tracer trace.Tracer
}

// Instrument sets the module's instruments (replacing any before).
func (m *Module) Instrument(in Instruments) { m.inst.Store(&in) }

// startSpan opens the signature's span when a tracer is set.
func (m *Module) startSpan(ctx context.Context, k *Key) (context.Context, func(error)) {
	in := m.inst.Load()
	if in == nil || in.Tracer == nil {
		return ctx, func(error) {}
	}
	ctx, span := in.Tracer.Start(ctx, "hsm.Sign", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("hsm.key.purpose", string(k.info.Purpose)), attribute.String("hsm.key.label", k.info.Label)))
	return ctx, func(err error) {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, "signature failed")
		}
		span.End()
	}
}

func (m *Module) observe(k *Key, d time.Duration, err error) {
	if in := m.inst.Load(); in != nil && in.Observe != nil {
		in.Observe(k.info.Purpose, k.info.Label, d, err)
	}
}
