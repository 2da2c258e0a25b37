package store

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// Traced wraps s so that every transaction is a span ("store.Update",
// "store.View"), with the time spent waiting for the write lock inside it.
// The result also forwards Watch and Ping, doing nothing for a store that
// has neither.
func Traced(s Store, tr trace.Tracer) Store { return &traced{Store: s, tr: tr} }

type traced struct {
	Store
	tr trace.Tracer
}

func (t *traced) span(ctx context.Context, name string) (context.Context, func(error)) {
	ctx, span := t.tr.Start(ctx, name, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attribute.String("db.system", "breakglass-store")))
	return ctx, func(err error) {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, "transaction failed")
		}
		span.End()
	}
}

func (t *traced) Update(ctx context.Context, fn func(Tx) error) (err error) {
	ctx, end := t.span(ctx, "store.Update")
	defer func() { end(err) }()
	return t.Store.Update(ctx, fn)
}

func (t *traced) View(ctx context.Context, fn func(Reader) error) (err error) {
	ctx, end := t.span(ctx, "store.View")
	defer func() { end(err) }()
	return t.Store.View(ctx, fn)
}

func (t *traced) Watch(ctx context.Context, fn func(Change)) {
	if w, ok := t.Store.(Watcher); ok {
		w.Watch(ctx, fn)
	}
}

func (t *traced) Ping(ctx context.Context) error {
	if p, ok := t.Store.(Pinger); ok {
		return p.Ping(ctx)
	}
	return nil
}
