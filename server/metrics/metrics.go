// Package metrics exposes the broker's Prometheus metrics. Names follow
// Prometheus conventions (breakglass_ prefix, _total counters, base units,
// timestamps rather than ages) and labels stay low-cardinality: purposes,
// key labels, sinks, states, certificate kinds; never request ids or
// principals.
package metrics

import (
	"context"
	"net/http"
	"sync"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/bgbroker/breakglass/hsm"
)

// Registry is the broker's metrics registry.
type Registry struct {
	*prometheus.Registry
	// GRPC holds the gRPC server metrics; its interceptors go on the server.
	GRPC *grpcprom.ServerMetrics

	delivery *prometheus.HistogramVec
}

// latencyBuckets span a fast HSM (a millisecond) to a sign timeout.
var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}

// New returns a registry with the process, Go runtime and gRPC server
// collectors.
func New() *Registry {
	r := &Registry{Registry: prometheus.NewRegistry()}
	r.MustRegister(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), collectors.NewGoCollector())
	r.GRPC = grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(grpcprom.WithHistogramBuckets(latencyBuckets)))
	r.MustRegister(r.GRPC)
	r.delivery = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "breakglass_notify_delivery_seconds",
		Help:    "Time from an event to its successful delivery to a sink, retries included.",
		Buckets: []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900},
	}, []string{"sink"})
	r.MustRegister(r.delivery)
	return r
}

// Handler serves the registry.
func (r *Registry) Handler() http.Handler {
	return promhttp.HandlerFor(r.Registry, promhttp.HandlerOpts{Registry: r.Registry})
}

// ObserveDelivery records a delivery attempt's outcome: the latency of
// the successful ones.
func (r *Registry) ObserveDelivery(sink string, latency time.Duration, ok bool) {
	if ok {
		r.delivery.WithLabelValues(sink).Observe(latency.Seconds())
	}
}

// RegisterHSM exports the module's signatures: counts, errors and latency
// per key purpose and label, observed as they happen, and the queue,
// reopen and refusal counters read at scrape time.
func (r *Registry) RegisterHSM(m *hsm.Module, in hsm.Instruments) {
	labels := []string{"purpose", "key"}
	signs := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "breakglass_hsm_signatures_total", Help: "Signatures the HSM made."}, labels)
	errs := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "breakglass_hsm_sign_errors_total", Help: "Signatures that reached the HSM and failed."}, labels)
	dur := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "breakglass_hsm_sign_duration_seconds",
		Help: "Time the HSM took for a signature, once it had a signing slot.", Buckets: latencyBuckets}, labels)
	r.MustRegister(signs, errs, dur, &hsmCollector{m: m,
		queued:   prometheus.NewDesc("breakglass_hsm_queue_depth", "Signatures waiting for a signing slot now.", nil, nil),
		reopens:  prometheus.NewDesc("breakglass_hsm_reopens_total", "Reopens of the PKCS#11 context after a broken session.", nil, nil),
		rejected: prometheus.NewDesc("breakglass_hsm_rejected_total", "Signatures refused for lack of a slot within the deadline or a full queue.", nil, nil),
		slotsMax: prometheus.NewDesc("breakglass_hsm_signing_slots", "Signing slots (signatures in flight at most).", nil, nil),
	})
	in.Observe = func(p hsm.Purpose, label string, d time.Duration, err error) {
		// Both counters of a key exist from its first signature, so an
		// error rate reads 0 rather than nothing before the first failure.
		e, n := errs.WithLabelValues(string(p), label), signs.WithLabelValues(string(p), label)
		if err != nil {
			e.Inc()
			return
		}
		n.Inc()
		dur.WithLabelValues(string(p), label).Observe(d.Seconds())
	}
	m.Instrument(in)
}

type hsmCollector struct {
	m                                   *hsm.Module
	queued, reopens, rejected, slotsMax *prometheus.Desc
}

func (c *hsmCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.queued, c.reopens, c.rejected, c.slotsMax} {
		ch <- d
	}
}

func (c *hsmCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.m.Stats()
	ch <- prometheus.MustNewConstMetric(c.queued, prometheus.GaugeValue, float64(st.Queued))
	ch <- prometheus.MustNewConstMetric(c.reopens, prometheus.CounterValue, float64(st.Reopens))
	ch <- prometheus.MustNewConstMetric(c.rejected, prometheus.CounterValue, float64(st.Rejected))
	ch <- prometheus.MustNewConstMetric(c.slotsMax, prometheus.GaugeValue, float64(c.m.SigningSlots()))
}

// State is the broker's state as the metrics show it, read at scrape time.
type State struct {
	Requests       map[string]int
	ActiveGrants   int
	Tokens         int64
	AuditEntries   uint64
	Unsigned       int
	CheckpointSize uint64
	CheckpointTime time.Time
	// Outbox is per sink.
	Outbox map[string]OutboxState
	// PolicyHash is this broker's policy; PolicyInForce whether it is the
	// one the log last recorded.
	PolicyHash    string
	PolicyInForce bool
	// Expiry holds certificate expiry times by kind (server, client_ca).
	Expiry map[string]time.Time
	// ClientCertsExpiring counts client certificates seen in the last 30
	// days that expire within 14 days.
	ClientCertsExpiring int
	// Witnesses is per witness; WitnessQuorumMet whether enough of them
	// cosign the newest checkpoint without a split view (the witness
	// health check), when witnesses are configured.
	Witnesses        map[string]WitnessState
	WitnessQuorumMet bool
}

// WitnessState is one witness's view of the log.
type WitnessState struct {
	CosignedSize uint64
	CosignedAt   time.Time
	// Age is how old its newest cosignature is by the broker's clock.
	Age       time.Duration
	Failures  int
	SplitView bool
}

// OutboxState is one sink's outbox.
type OutboxState struct {
	Pending, Dead int
	OldestPending time.Time
}

// RegisterState exports the broker's state, read by src at scrape time
// (at most once a second, whatever the scrape rate).
func (r *Registry) RegisterState(src func(ctx context.Context) (State, error)) {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	r.MustRegister(&stateCollector{src: src,
		requests:   d("breakglass_requests", "Requests by stored state.", "state"),
		grants:     d("breakglass_grants_active", "Approved grants whose time has not ended."),
		tokens:     d("breakglass_tokens_issued_total", "Tokens issued."),
		entries:    d("breakglass_audit_entries_total", "Entries in the audit log."),
		unsigned:   d("breakglass_audit_unsigned_entries", "Audit entries waiting for the HSM to sign them."),
		cpSize:     d("breakglass_checkpoint_size", "Entries covered by the latest signed checkpoint."),
		cpTime:     d("breakglass_checkpoint_timestamp_seconds", "When the latest checkpoint was signed (Unix time)."),
		pending:    d("breakglass_outbox_pending", "Events waiting for delivery, per sink.", "sink"),
		oldest:     d("breakglass_outbox_oldest_pending_timestamp_seconds", "Creation time of the oldest undelivered event, per sink (Unix time).", "sink"),
		dead:       d("breakglass_outbox_dead_letters_total", "Events given up on after every retry, per sink.", "sink"),
		policy:     d("breakglass_policy_info", "The policy this broker runs (hash label; always 1).", "hash"),
		inForce:    d("breakglass_policy_in_force", "1 when this broker's policy is the one the audit log last recorded; 0 when it refuses to grant."),
		expiry:     d("breakglass_certificate_expiry_timestamp_seconds", "When a certificate the broker depends on expires (Unix time).", "cert"),
		expiring:   d("breakglass_client_certificates_expiring", "Client certificates seen in the last 30 days that expire within 14 days."),
		wSize:      d("breakglass_witness_cosigned_size", "Entries covered by the largest checkpoint the witness cosigned, per witness.", "witness"),
		wAge:       d("breakglass_witness_cosigned_age_seconds", "Age of the witness's newest cosignature, by the broker's clock, per witness.", "witness"),
		wFailures:  d("breakglass_witness_failures", "Submissions that failed in a row, per witness.", "witness"),
		wSplit:     d("breakglass_witness_split_view", "1 while the witness refuses this log's history (a rollback or a fork), per witness.", "witness"),
		wQuorum:    d("breakglass_witness_quorum_met", "1 while witness_quorum witnesses cosign the newest checkpoint and none refuses the log's history; 0 otherwise."),
		scrapeFail: d("breakglass_state_scrape_error", "1 when the state could not be read for this scrape (the database is unreachable)."),
	})
}

type stateCollector struct {
	src func(ctx context.Context) (State, error)

	mu   sync.Mutex
	at   time.Time
	last State
	err  error

	requests, grants, tokens, entries, unsigned, cpSize, cpTime, pending, oldest, dead, policy, inForce, expiry, expiring, scrapeFail *prometheus.Desc
	wSize, wAge, wFailures, wSplit, wQuorum                                                                                           *prometheus.Desc
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.requests, c.grants, c.tokens, c.entries, c.unsigned, c.cpSize, c.cpTime, c.pending, c.oldest, c.dead,
		c.policy, c.inForce, c.expiry, c.expiring, c.scrapeFail, c.wSize, c.wAge, c.wFailures, c.wSplit, c.wQuorum} {
		ch <- d
	}
}

func (c *stateCollector) read() (State, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.at) > time.Second {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c.last, c.err = c.src(ctx)
		cancel()
		c.at = time.Now()
	}
	return c.last, c.err
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	s, err := c.read()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	if err != nil {
		gauge(c.scrapeFail, 1)
		return
	}
	gauge(c.scrapeFail, 0)
	for state, n := range s.Requests {
		gauge(c.requests, float64(n), state)
	}
	gauge(c.grants, float64(s.ActiveGrants))
	counter(c.tokens, float64(s.Tokens))
	counter(c.entries, float64(s.AuditEntries))
	gauge(c.unsigned, float64(s.Unsigned))
	if !s.CheckpointTime.IsZero() {
		gauge(c.cpSize, float64(s.CheckpointSize))
		gauge(c.cpTime, float64(s.CheckpointTime.UnixNano())/1e9)
	}
	for sink, o := range s.Outbox {
		gauge(c.pending, float64(o.Pending), sink)
		counter(c.dead, float64(o.Dead), sink)
		if !o.OldestPending.IsZero() {
			gauge(c.oldest, float64(o.OldestPending.UnixNano())/1e9, sink)
		}
	}
	gauge(c.policy, 1, s.PolicyHash)
	inForce := 0.0
	if s.PolicyInForce {
		inForce = 1
	}
	gauge(c.inForce, inForce)
	for kind, t := range s.Expiry {
		gauge(c.expiry, float64(t.Unix()), kind)
	}
	gauge(c.expiring, float64(s.ClientCertsExpiring))
	for name, w := range s.Witnesses {
		gauge(c.wSize, float64(w.CosignedSize), name)
		if !w.CosignedAt.IsZero() {
			gauge(c.wAge, max(0, w.Age.Seconds()), name)
		}
		gauge(c.wFailures, float64(w.Failures), name)
		split := 0.0
		if w.SplitView {
			split = 1
		}
		gauge(c.wSplit, split, name)
	}
	if s.Witnesses != nil {
		met := 0.0
		if s.WitnessQuorumMet {
			met = 1
		}
		gauge(c.wQuorum, met)
	}
}
