// Package metrics exposes the broker's Prometheus metrics. Names follow
// Prometheus conventions (breakglass_ prefix, _total counters, base units)
// and labels stay low-cardinality: purposes, sinks, states, never request
// ids or principals.
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/bgbroker/breakglass/hsm"
)

// Registry is the broker's metrics registry.
type Registry struct {
	*prometheus.Registry
}

// New returns a registry with the process and Go runtime collectors.
func New() *Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), collectors.NewGoCollector())
	return &Registry{r}
}

// Handler serves the registry.
func (r *Registry) Handler() http.Handler {
	return promhttp.HandlerFor(r.Registry, promhttp.HandlerOpts{Registry: r.Registry})
}

// hsmCollector reads the HSM module's counters at scrape time.
type hsmCollector struct {
	m                                   *hsm.Module
	signs, failures, seconds            *prometheus.Desc
	queued, reopens, rejected, slotsMax *prometheus.Desc
}

// RegisterHSM exports the module's signature counters.
func (r *Registry) RegisterHSM(m *hsm.Module) {
	c := &hsmCollector{
		m:        m,
		signs:    prometheus.NewDesc("breakglass_hsm_signatures_total", "Signatures the HSM made, by key purpose.", []string{"purpose"}, nil),
		failures: prometheus.NewDesc("breakglass_hsm_sign_errors_total", "Signatures that reached the HSM and failed, by key purpose.", []string{"purpose"}, nil),
		seconds:  prometheus.NewDesc("breakglass_hsm_sign_seconds_total", "Time spent in successful signatures, by key purpose.", []string{"purpose"}, nil),
		queued:   prometheus.NewDesc("breakglass_hsm_queue_depth", "Signatures waiting for a signing slot now.", nil, nil),
		reopens:  prometheus.NewDesc("breakglass_hsm_reopens_total", "Reopens of the PKCS#11 context after a broken session.", nil, nil),
		rejected: prometheus.NewDesc("breakglass_hsm_rejected_total", "Signatures refused for lack of a slot within the deadline or a full queue.", nil, nil),
		slotsMax: prometheus.NewDesc("breakglass_hsm_signing_slots", "Signing slots (signatures in flight at most).", nil, nil),
	}
	r.MustRegister(c)
}

func (c *hsmCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.signs, c.failures, c.seconds, c.queued, c.reopens, c.rejected, c.slotsMax} {
		ch <- d
	}
}

func (c *hsmCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.m.Stats()
	for _, p := range hsm.Purposes {
		ch <- prometheus.MustNewConstMetric(c.signs, prometheus.CounterValue, float64(st.Signatures[p]), string(p))
		ch <- prometheus.MustNewConstMetric(c.failures, prometheus.CounterValue, float64(st.Failures[p]), string(p))
		ch <- prometheus.MustNewConstMetric(c.seconds, prometheus.CounterValue, st.SignTime[p].Seconds(), string(p))
	}
	ch <- prometheus.MustNewConstMetric(c.queued, prometheus.GaugeValue, float64(st.Queued))
	ch <- prometheus.MustNewConstMetric(c.reopens, prometheus.CounterValue, float64(st.Reopens))
	ch <- prometheus.MustNewConstMetric(c.rejected, prometheus.CounterValue, float64(st.Rejected))
	ch <- prometheus.MustNewConstMetric(c.slotsMax, prometheus.GaugeValue, float64(c.m.SigningSlots()))
}
