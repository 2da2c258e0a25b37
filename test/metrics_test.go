package test

import (
	"bytes"
	"io"
	"net"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"
)

// Metrics show live break-glass activity (active grants, pending requests,
// result codes per method): they are served on their own loopback listener,
// never on the public HTTPS listener that anyone may reach without a client
// certificate, nor on its plain-HTTP twin.
func TestMetricsNotOnThePublicListener(t *testing.T) {
	d := startDev(t, "--log-level", "warn")
	bases := []string{d.ready.Issuer}
	if d.ready.HTTP != "" {
		bases = append(bases, "http://"+d.ready.HTTP)
	}
	for _, base := range bases {
		resp, err := d.httpClient().Get(base + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 404 || bytes.Contains(body, []byte("breakglass_")) {
			t.Errorf("%s/metrics answers %d without a client certificate:\n%.300s", base, resp.StatusCode, body)
		}
	}
	host, _, err := net.SplitHostPort(d.ready.Metrics)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		t.Errorf("the metrics listener %q is not on loopback", d.ready.Metrics)
	}
	body, mfs := d.scrape(t)
	if _, ok := mfs["breakglass_requests"]; !ok && !bytes.Contains(body, []byte("breakglass_")) {
		t.Errorf("the metrics listener serves no broker metric:\n%.300s", body)
	}
}

// scrape reads /metrics and parses it as Prometheus does.
func (d *devBroker) scrape(t *testing.T) ([]byte, map[string]*dto.MetricFamily) {
	t.Helper()
	resp, err := d.httpClient().Get("http://" + d.ready.Metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("/metrics: %d %v", resp.StatusCode, err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	return body, mfs
}

// sample is one series' value: a gauge's or counter's, a histogram's count.
func sample(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	case m.Summary != nil:
		return float64(m.Summary.GetSampleCount())
	}
	return m.Untyped.GetValue()
}

func labelsOf(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range m.Label {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

// A scrape during a flow shows every metric an operator alerts on, with
// plausible values; the exposition passes promlint (the linter behind
// `promtool check metrics`); the broker's labels stay low-cardinality.
func TestMetricsScrape(t *testing.T) {
	// A webhook receiver that is down keeps its events waiting.
	d := startDev(t, "--webhook", "http://127.0.0.1:9/down")
	approved, _ := runFlow(t, d)
	d.mustBgctl("dave", "audit", "checkpoint")
	d.bgctl("carol", "approve", approved, "--yes") // a refusal, for the code label
	hash := d.health(t).PolicyHash
	now := float64(time.Now().Unix())

	// Deliveries to the dev events file are asynchronous.
	var body []byte
	var mfs map[string]*dto.MetricFamily
	if !eventually(15*time.Second, func() bool {
		body, mfs = d.scrape(t)
		f := mfs["breakglass_notify_delivery_seconds"]
		return f != nil && len(f.Metric) > 0 && sample(f.Metric[0]) > 0
	}) {
		t.Fatalf("no delivery observed:\n%s", body)
	}

	problems, err := promlint.New(bytes.NewReader(body)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}

	type want struct {
		name   string
		labels map[string]string
		ok     func(v float64) bool
	}
	atLeast := func(n float64) func(float64) bool { return func(v float64) bool { return v >= n } }
	is := func(n float64) func(float64) bool { return func(v float64) bool { return v == n } }
	recent := func(v float64) bool { return v > now-3600 && v <= now+60 }
	future := func(v float64) bool { return v > now }
	for _, w := range []want{
		// gRPC server metrics (go-grpc-middleware/providers/prometheus).
		{"grpc_server_started_total", map[string]string{"grpc_method": "CreateRequest"}, atLeast(2)},
		{"grpc_server_handled_total", map[string]string{"grpc_method": "CreateRequest", "grpc_code": "OK"}, atLeast(2)},
		{"grpc_server_handled_total", map[string]string{"grpc_method": "IssueToken", "grpc_code": "OK"}, atLeast(1)},
		{"grpc_server_handled_total", map[string]string{"grpc_method": "ReviewRequest"}, atLeast(3)},
		{"grpc_server_handling_seconds", map[string]string{"grpc_method": "ReviewRequest"}, atLeast(3)},
		// The HSM, per purpose and key.
		{"breakglass_hsm_signatures_total", map[string]string{"purpose": "token"}, atLeast(1)},
		{"breakglass_hsm_signatures_total", map[string]string{"purpose": "audit"}, atLeast(5)},
		{"breakglass_hsm_signatures_total", map[string]string{"purpose": "checkpoint"}, atLeast(1)},
		{"breakglass_hsm_sign_errors_total", map[string]string{"purpose": "audit"}, is(0)},
		{"breakglass_hsm_sign_duration_seconds", map[string]string{"purpose": "audit"}, atLeast(5)},
		{"breakglass_hsm_queue_depth", nil, is(0)},
		{"breakglass_hsm_reopens_total", nil, is(0)},
		{"breakglass_hsm_rejected_total", nil, is(0)},
		{"breakglass_hsm_signing_slots", nil, atLeast(1)},
		// Requests, grants, tokens.
		{"breakglass_requests", map[string]string{"state": "approved"}, atLeast(1)},
		{"breakglass_requests", map[string]string{"state": "pending"}, atLeast(1)},
		{"breakglass_grants_active", nil, atLeast(1)},
		{"breakglass_tokens_issued_total", nil, atLeast(1)},
		// The log and its checkpoints.
		{"breakglass_audit_entries_total", nil, atLeast(8)},
		{"breakglass_audit_unsigned_entries", nil, is(0)},
		{"breakglass_checkpoint_size", nil, atLeast(8)},
		{"breakglass_checkpoint_timestamp_seconds", nil, recent},
		// The outbox, per sink.
		{"breakglass_outbox_pending", map[string]string{"sink": "events-file"}, atLeast(0)},
		{"breakglass_outbox_dead_letters_total", map[string]string{"sink": "events-file"}, is(0)},
		{"breakglass_outbox_pending", map[string]string{"sink": "webhook-1"}, atLeast(1)},
		{"breakglass_outbox_oldest_pending_timestamp_seconds", map[string]string{"sink": "webhook-1"}, recent},
		{"breakglass_notify_delivery_seconds", map[string]string{"sink": "events-file"}, atLeast(1)},
		// Policy and certificates.
		{"breakglass_policy_info", map[string]string{"hash": hash}, is(1)},
		{"breakglass_policy_in_force", nil, is(1)},
		{"breakglass_certificate_expiry_timestamp_seconds", map[string]string{"cert": "server"}, future},
		{"breakglass_certificate_expiry_timestamp_seconds", map[string]string{"cert": "client_ca"}, future},
		{"breakglass_client_certificates_expiring", nil, atLeast(0)},
		{"breakglass_state_scrape_error", nil, is(0)},
		// The process.
		{"process_resident_memory_bytes", nil, atLeast(1 << 20)},
		{"process_open_fds", nil, atLeast(3)},
		{"go_goroutines", nil, atLeast(5)},
	} {
		f := mfs[w.name]
		if f == nil {
			t.Errorf("%s is missing", w.name)
			continue
		}
		var sum float64
		var found bool
		for _, m := range f.Metric {
			l := labelsOf(m)
			match := true
			for k, v := range w.labels {
				if l[k] != v {
					match = false
				}
			}
			if match {
				sum += sample(m)
				found = true
			}
		}
		if !found || !w.ok(sum) {
			t.Errorf("%s%v = %v (found %v)", w.name, w.labels, sum, found)
		}
	}

	// The example alert rules name only metrics the broker exports (the
	// witnesses' are checked by TestWitnessesCosignARealFlow, with
	// witnesses configured).
	checkAlertRules(t, mfs, func(name string) bool { return !strings.HasPrefix(name, "breakglass_witness_") })

	// Low cardinality: the broker's own series carry only these labels,
	// and no label value is a request id or a principal.
	allowed := map[string]bool{"purpose": true, "key": true, "state": true, "sink": true, "hash": true, "cert": true, "le": true}
	for name, f := range mfs {
		if !strings.HasPrefix(name, "breakglass_") {
			continue
		}
		for _, m := range f.Metric {
			for k, v := range labelsOf(m) {
				if !allowed[k] || v == approved || strings.Contains(v, "alice") {
					t.Errorf("%s has label %s=%q", name, k, v)
				}
			}
		}
	}
}

// streamsStarted is how many calls of a gRPC method the broker has started
// (grpc_server_started_total), for waiting until a stream is open.
func (d *devBroker) streamsStarted(t *testing.T, method string) float64 {
	t.Helper()
	_, mfs := d.scrape(t)
	n := 0.0
	if mf := mfs["grpc_server_started_total"]; mf != nil {
		for _, m := range mf.Metric {
			if labelsOf(m)["grpc_method"] == method {
				n += sample(m)
			}
		}
	}
	return n
}

// checkAlertRules fails for every metric named by an example alert rule
// (packaging/prometheus/breakglass-alerts.yml) that the scrape mfs lacks,
// among the names judge accepts.
func checkAlertRules(t *testing.T, mfs map[string]*dto.MetricFamily, judge func(name string) bool) {
	t.Helper()
	rules, err := os.ReadFile("../packaging/prometheus/breakglass-alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Groups []struct {
			Rules []struct {
				Alert, Expr string
			}
		}
	}
	if err := yaml.Unmarshal(rules, &doc); err != nil || len(doc.Groups) == 0 {
		t.Fatalf("alert rules: %v", err)
	}
	metricName := regexp.MustCompile(`\b(breakglass|grpc_server|process|go)_[a-z_]+`)
	checked := 0
	for _, g := range doc.Groups {
		for _, r := range g.Rules {
			for _, name := range metricName.FindAllString(r.Expr, -1) {
				if !judge(name) {
					continue
				}
				checked++
				base := name
				for _, suffix := range []string{"_bucket", "_count", "_sum"} {
					if trimmed, ok := strings.CutSuffix(name, suffix); ok && mfs[trimmed] != nil {
						base = trimmed
					}
				}
				if mfs[base] == nil {
					t.Errorf("alert %s uses %s, which the broker does not export", r.Alert, name)
				}
			}
		}
	}
	if checked == 0 {
		t.Error("no alert rule names a metric checked here")
	}
}
