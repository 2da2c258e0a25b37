package notify

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/bgbroker/breakglass/server/event"
	"github.com/bgbroker/breakglass/server/store"
)

// Config is the notify: section of the broker's configuration.
type Config struct {
	Sinks []SinkConfig
	// MaxAttempts before an event is dead-lettered (default 10).
	MaxAttempts int
	// BackoffBase and BackoffMax shape the retry delays: full jitter over
	// base·2^attempt, capped at max (defaults 1s and 5m).
	BackoffBase time.Duration
	BackoffMax  time.Duration
	// Workers deliver in parallel (default 4).
	Workers int
	// PollInterval is how often due retries are looked for (default 500ms).
	PollInterval time.Duration
}

func (c Config) withDefaults() Config {
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 10
	}
	if c.BackoffBase <= 0 {
		c.BackoffBase = time.Second
	}
	if c.BackoffMax <= 0 {
		c.BackoffMax = 5 * time.Minute
	}
	if c.Workers <= 0 {
		c.Workers = 4
	}
	if c.PollInterval <= 0 {
		c.PollInterval = 500 * time.Millisecond
	}
	return c
}

// Router decides which sinks receive an event.
type Router struct {
	routes map[string]event.Route
	names  []string
}

// NewRouter builds the router of the configured sinks.
func NewRouter(sinks []SinkConfig) *Router {
	r := &Router{routes: map[string]event.Route{}}
	for _, s := range sinks {
		r.routes[s.Name] = s.Route
		r.names = append(r.names, s.Name)
	}
	return r
}

// Sinks returns the sinks whose route takes this event.
func (r *Router) Sinks(typ, account string) []string {
	if r == nil {
		return nil
	}
	var out []string
	for _, n := range r.names {
		if r.routes[n].Matches(typ, account) {
			out = append(out, n)
		}
	}
	return out
}

// All returns every sink name.
func (r *Router) All() []string {
	if r == nil {
		return nil
	}
	return slices.Clone(r.names)
}

// Has reports whether a sink is configured.
func (r *Router) Has(name string) bool {
	_, ok := r.routes[name]
	return r != nil && ok
}

// Finisher records a delivery outcome: the broker implements it so that an
// acknowledgement or a dead letter is audited in the same transaction that
// records it.
type Finisher func(ctx context.Context, it store.OutboxItem) error

// Dispatcher delivers outbox rows to sinks.
type Dispatcher struct {
	cfg    Config
	store  store.Store
	sinks  map[string]Sink
	finish Finisher
	now    func() time.Time
	log    *slog.Logger
	wake   chan struct{}
	// observe, when set, learns each attempt's outcome (metrics).
	observe func(sink string, sinceEvent time.Duration, ok bool)
}

// Observe sets a function told of every delivery attempt: the sink, the
// time since the event, and whether it was delivered.
func (d *Dispatcher) Observe(fn func(sink string, sinceEvent time.Duration, ok bool)) { d.observe = fn }

// NewDispatcher builds a dispatcher over the configured sinks.
func NewDispatcher(cfg Config, st store.Store, finish Finisher, now func() time.Time, log *slog.Logger) (*Dispatcher, error) {
	cfg = cfg.withDefaults()
	if now == nil {
		now = time.Now
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Dispatcher{cfg: cfg, store: st, sinks: map[string]Sink{}, finish: finish, now: now, log: log, wake: make(chan struct{}, 1)}
	for _, sc := range cfg.Sinks {
		if _, dup := d.sinks[sc.Name]; dup {
			return nil, fmt.Errorf("notify: two sinks are named %s", sc.Name)
		}
		s, err := NewSink(sc)
		if err != nil {
			return nil, err
		}
		d.sinks[sc.Name] = s
	}
	return d, nil
}

// Kick makes the dispatcher look at the outbox now.
func (d *Dispatcher) Kick() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// Run delivers until ctx ends.
func (d *Dispatcher) Run(ctx context.Context) {
	if len(d.sinks) == 0 {
		return
	}
	t := time.NewTicker(d.cfg.PollInterval)
	defer t.Stop()
	for {
		n, err := d.Once(ctx)
		if err != nil && ctx.Err() == nil {
			d.log.Error("notify: dispatch failed", "err", err)
		}
		if n > 0 {
			continue // more may be due
		}
		select {
		case <-ctx.Done():
			return
		case <-d.wake:
		case <-t.C:
		}
	}
}

// lease is how long a claimed row is held; a dispatcher that dies mid-way
// leaves it to be claimed again after this.
const lease = time.Minute

// Once delivers one batch of due rows and returns how many it tried.
func (d *Dispatcher) Once(ctx context.Context) (int, error) {
	var items []store.OutboxItem
	err := d.store.Update(ctx, func(tx store.Tx) error {
		var err error
		items, err = tx.ClaimOutbox(ctx, d.now(), lease, 64)
		return err
	})
	if err != nil || len(items) == 0 {
		return 0, err
	}
	sem := make(chan struct{}, d.cfg.Workers)
	var wg sync.WaitGroup
	for _, it := range items {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			d.deliver(ctx, it)
		}()
	}
	wg.Wait()
	return len(items), nil
}

func (d *Dispatcher) deliver(ctx context.Context, it store.OutboxItem) {
	sink, ok := d.sinks[it.Sink]
	var err error
	if !ok {
		err = fmt.Errorf("sink %s is no longer configured", it.Sink)
	} else {
		var ev event.Event
		if err = json.Unmarshal(it.Body, &ev); err == nil {
			err = sink.Deliver(ctx, it.EventID, it.Body, &ev)
		}
	}
	if ctx.Err() != nil {
		return // shutting down: the lease returns the row to the queue
	}
	it.Attempts++
	now := d.now()
	if d.observe != nil {
		d.observe(it.Sink, now.Sub(it.CreatedAt), err == nil)
	}
	switch {
	case err == nil:
		it.State, it.DeliveredAt, it.LastError = store.OutboxDelivered, now, ""
	case it.Attempts >= d.cfg.MaxAttempts:
		it.State, it.LastError = store.OutboxDead, trim(err.Error())
	default:
		it.State, it.LastError = store.OutboxPending, trim(err.Error())
		it.NextAttempt = now.Add(d.backoff(it.Attempts))
	}
	if ferr := d.finish(ctx, it); ferr != nil {
		if ctx.Err() == nil {
			d.log.Error("notify: recording a delivery failed; it will be retried", "sink", it.Sink, "event", it.EventID, "err", ferr)
		}
		return
	}
	// Logged once recorded, so the log says what the outbox holds.
	switch it.State {
	case store.OutboxDead:
		d.log.Error("notify: event dead-lettered", "sink", it.Sink, "event", it.EventID, "type", it.Type, "attempts", it.Attempts, "err", err)
	case store.OutboxPending:
		d.log.Warn("notify: delivery failed; will retry", "sink", it.Sink, "event", it.EventID, "attempt", it.Attempts, "next", it.NextAttempt, "err", err)
	}
}

// backoff is full jitter: a uniform delay in [0, min(max, base·2^n)].
func (d *Dispatcher) backoff(attempt int) time.Duration {
	ceiling := d.cfg.BackoffBase << min(attempt, 30)
	if ceiling <= 0 || ceiling > d.cfg.BackoffMax {
		ceiling = d.cfg.BackoffMax
	}
	return time.Duration(rand.Int64N(int64(ceiling) + 1)) //nolint:gosec // jitter needs spread, not secrecy
}

func trim(s string) string {
	if len(s) > 500 {
		return s[:500]
	}
	return s
}
