package daemon

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/bgbroker/breakglass/server/broker"
	"github.com/bgbroker/breakglass/server/httpapi"
	"github.com/bgbroker/breakglass/server/metrics"
	"github.com/bgbroker/breakglass/server/store"
)

type healthState struct {
	mu     sync.Mutex
	checks map[string]string
	ok     bool
}

func (d *Daemon) healthLoop(ctx context.Context) {
	t := time.NewTicker(d.cfg.HealthInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d.checkHealth(ctx)
		}
	}
}

// checkHealth test-signs with every key and reads the store; the result
// drives gRPC health, /healthz and whether optional signatures are tried.
func (d *Daemon) checkHealth(ctx context.Context) {
	checks := map[string]string{}
	ok := d.checkHSM(ctx, checks)
	if n, err := d.Broker.Backlog(ctx); err != nil {
		checks["store"] = err.Error()
		ok = false
	} else {
		checks["store"] = "ok"
		if n > 0 {
			checks["audit_backlog"] = fmt.Sprintf("%d entries wait for the HSM", n)
		}
	}
	if err := d.Broker.PolicyAgreement(ctx); err != nil {
		checks["policy"] = broker.PublicMessage(err)
		ok = false
	} else {
		checks["policy"] = "ok"
	}
	if !d.checkCRLs(checks) {
		ok = false
	}
	d.checkOutbox(ctx, checks)
	if d.witnessHealth(checks) {
		d.grpc.SetCheck("witness", checks["witness"] == "ok")
	}
	d.healthy.mu.Lock()
	changed := d.healthy.ok != ok
	d.healthy.checks, d.healthy.ok = checks, ok
	d.healthy.mu.Unlock()
	d.grpc.SetServing(ok)
	if changed {
		d.log.Info("health changed", "serving", ok, "checks", checks)
	}
}

// checkHSM test-signs with every key and tells the broker whether the HSM
// is down (optional signatures are then not tried).
func (d *Daemon) checkHSM(ctx context.Context, checks map[string]string) bool {
	ok := true
	for _, r := range d.module.Check(ctx, d.ring.Keys()...) {
		if r.OK {
			checks["hsm:"+string(r.Purpose)] = "ok"
		} else {
			checks["hsm:"+string(r.Purpose)] = r.Error
			ok = false
		}
	}
	d.Broker.SetHSMDown(!ok)
	return ok
}

// checkOutbox reports sinks with dead letters or alerts waiting more than a
// minute; they do not make the broker unhealthy (alerts wait in the outbox).
func (d *Daemon) checkOutbox(ctx context.Context, checks map[string]string) {
	sinks, err := d.outboxSummary(ctx)
	if err != nil {
		return
	}
	now := d.now()
	for _, sk := range sinks {
		if sk.Dead > 0 {
			checks["notify:"+sk.Sink] = fmt.Sprintf("%d alerts dead-lettered (see bgctl report; bgctl alert ack once dealt with)", sk.Dead)
		} else if sk.Pending > 0 && now.Sub(sk.OldestPending) > time.Minute {
			checks["notify:"+sk.Sink] = fmt.Sprintf("%d alerts waiting, oldest since %s", sk.Pending, sk.OldestPending.Format(time.RFC3339))
		}
	}
}

func (d *Daemon) health(ctx context.Context) httpapi.Health {
	d.healthy.mu.Lock()
	h := httpapi.Health{Serving: d.healthy.ok, Checks: map[string]string{}}
	for k, v := range d.healthy.checks {
		h.Checks[k] = v
	}
	d.healthy.mu.Unlock()
	h.Status = "NOT_SERVING"
	if h.Serving {
		h.Status = "SERVING"
	}
	h.UnsignedBacklog, _ = d.Broker.Backlog(ctx)
	h.PolicyHash = d.Broker.Policy().Hash()
	if d.witnesses != nil {
		d.witnessHealth(h.Checks) // live: a split view shows at once
		now := d.now()
		for _, w := range d.witnesses.Status() {
			wh := httpapi.WitnessHealth{Name: w.Name, URL: w.URL, CosignedSize: w.CosignedSize, CosignedAt: w.CosignedAt,
				LastError: w.LastError, Failures: w.Failures, SplitView: w.SplitView}
			if !w.CosignedAt.IsZero() {
				wh.AgeSeconds = max(0, int64(now.Sub(w.CosignedAt).Seconds()))
			}
			h.Witnesses = append(h.Witnesses, wh)
		}
	}
	return h
}

func (d *Daemon) outboxSummary(ctx context.Context) ([]store.SinkSummary, error) {
	var out []store.SinkSummary
	err := d.store.View(ctx, func(r store.Reader) error {
		var err error
		out, err = r.OutboxSummary(ctx)
		return err
	})
	return out, err
}

// metricsState reads the broker's state for a scrape.
func (d *Daemon) metricsState(ctx context.Context) (metrics.State, error) {
	now := d.now()
	st := metrics.State{Requests: map[string]int{}, Outbox: map[string]metrics.OutboxState{},
		Expiry: map[string]time.Time{"server": d.serverCert.NotAfter, "client_ca": d.ident.CAExpiry()}}
	if d.cas != nil {
		if c := d.cas.ActiveX509(); c != nil {
			st.Expiry["x509_ca"] = c.NotAfter
		}
	}
	err := d.store.View(ctx, func(r store.Reader) error {
		if err := readLogState(ctx, r, now, &st); err != nil {
			return err
		}
		return readOutboxAndCerts(ctx, r, now, &st)
	})
	if err != nil {
		return st, err
	}
	st.PolicyHash = d.Broker.Policy().Hash()
	st.PolicyInForce = d.Broker.PolicyAgreement(ctx) == nil
	if d.witnesses != nil {
		st.Witnesses = map[string]metrics.WitnessState{}
		for _, w := range d.witnesses.Status() {
			st.Witnesses[w.Name] = metrics.WitnessState{CosignedSize: w.CosignedSize, CosignedAt: w.CosignedAt, Age: now.Sub(w.CosignedAt), Failures: w.Failures,
				SplitView: w.SplitView != ""}
		}
		checks := map[string]string{}
		d.witnessHealth(checks)
		st.WitnessQuorumMet = checks["witness"] == "ok"
	}
	return st, nil
}

// readLogState reads the requests, grants, tokens, log size and latest
// checkpoint.
func readLogState(ctx context.Context, r store.Reader, now time.Time, st *metrics.State) error {
	c, err := r.Counts(ctx, now)
	if err != nil {
		return err
	}
	for state, n := range c.Requests {
		st.Requests[strings.ToLower(string(state))] = n
	}
	st.ActiveGrants, st.Tokens = c.ActiveGrants, c.Tokens
	h, err := r.Head(ctx)
	if err != nil {
		return err
	}
	st.AuditEntries = h.Size
	if st.Unsigned, err = r.UnsignedCount(ctx); err != nil {
		return err
	}
	switch cp, err := r.LatestCheckpoint(ctx); {
	case err == nil:
		st.CheckpointSize, st.CheckpointTime = cp.Size, cp.CreatedAt
	case !errors.Is(err, store.ErrNotFound):
		return err
	}
	return nil
}

// readOutboxAndCerts reads the outbox per sink and counts the client
// certificates seen in the last 30 days that expire within 14.
func readOutboxAndCerts(ctx context.Context, r store.Reader, now time.Time, st *metrics.State) error {
	sinks, err := r.OutboxSummary(ctx)
	if err != nil {
		return err
	}
	for _, s := range sinks {
		// The metric counts every dead letter kept, acknowledged or not, so
		// that an acknowledgement does not make a counter go down.
		st.Outbox[s.Sink] = metrics.OutboxState{Pending: s.Pending, Dead: s.Dead + s.Acked, OldestPending: s.OldestPending}
	}
	seen, err := r.CertsSeen(ctx, now.Add(-30*24*time.Hour))
	if err != nil {
		return err
	}
	for _, c := range seen {
		if c.NotAfter.Before(now.Add(14 * 24 * time.Hour)) {
			st.ClientCertsExpiring++
		}
	}
	return nil
}
