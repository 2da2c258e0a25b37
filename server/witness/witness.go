// Package witness sends the audit log's checkpoints to C2SP tlog-witness
// witnesses and keeps their cosignatures with the checkpoints. Witnesses
// cosign a checkpoint only if it is consistent with every one they
// cosigned before, so a log that was rolled back or forked (a forced
// restore, a failover that lost commits, another history shown to someone
// else) is refused by them: the client reports that as a split view,
// loudly, and never hides it behind a retry.
//
// It runs beside the write path and never in it: a new checkpoint wakes
// it, each witness gets the newest checkpoint with a consistency proof
// from the size it last cosigned, and a witness that is down is retried
// with back-off while the others go on.
package witness

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bgbroker/breakglass/format/cosignature"
	"github.com/bgbroker/breakglass/server/store"
)

// Config is one entry of audit.witnesses.
type Config struct {
	// Name is how people and metrics call the witness.
	Name string `yaml:"name"`
	// URL is the witness's submission prefix: add-checkpoint is POSTed
	// to URL/add-checkpoint.
	URL string `yaml:"url"`
	// Key is the witness's cosignature verifier key (c2sp.org/tlog-cosignature
	// vkey: NAME+HASH+BASE64, signature type 0x04).
	Key string `yaml:"key"`
}

// Parse checks a list of witnesses and the quorum asked of them, and
// returns their keys as a set. Names must be unique, URLs http(s), keys
// cosignature keys, and no witness may be given twice (by name or by
// public key); the quorum is between 1 and the number of witnesses.
func Parse(ws []Config, quorum int) (*cosignature.Set, error) {
	var errs []error
	keys := make([]*cosignature.Key, 0, len(ws))
	for i, w := range ws {
		where := fmt.Sprintf("audit.witnesses[%d]", i)
		if w.Name == "" {
			errs = append(errs, fmt.Errorf("%s: name is required", where))
		} else {
			where += " (" + w.Name + ")"
		}
		for _, o := range ws[:i] {
			if w.Name != "" && o.Name == w.Name {
				errs = append(errs, fmt.Errorf("%s: the name is used twice", where))
			}
		}
		if u, err := url.Parse(w.URL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			errs = append(errs, fmt.Errorf("%s: url %q is not an http(s) URL prefix", where, w.URL))
		}
		k, err := cosignature.ParseKey(w.Key)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: key: %w", where, err))
			continue
		}
		keys = append(keys, k)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	set, err := cosignature.NewSet(keys...)
	if err != nil {
		return nil, fmt.Errorf("audit.witnesses: %w", err)
	}
	if len(ws) > 0 && (quorum < 1 || quorum > len(ws)) {
		return nil, fmt.Errorf("audit.witness_quorum %d must be between 1 and the number of witnesses (%d)", quorum, len(ws))
	}
	if len(ws) == 0 && quorum != 0 {
		return nil, errors.New("audit.witness_quorum is set but no audit.witnesses are configured")
	}
	return set, nil
}

// Options builds a Client.
type Options struct {
	Store     store.Store
	Origin    string
	Witnesses []Config
	Quorum    int
	// Timeout bounds one add-checkpoint call (default 10s).
	Timeout time.Duration
	// BackoffBase and BackoffMax space the retries to a failing witness:
	// exponential with jitter from BackoffBase up to BackoffMax (default
	// 1s and 1m).
	BackoffBase, BackoffMax time.Duration
	// Refresh submits the newest checkpoint again when a witness's
	// cosignature of it is this old, so that its timestamp keeps saying
	// the witness saw nothing larger (default 1h).
	Refresh time.Duration
	HTTP    *http.Client
	Now     func() time.Time
	Log     *slog.Logger
	// OnSplitView is called each time a witness refuses the log's
	// history; the broker alerts.
	OnSplitView func(ctx context.Context, sv SplitView)
	// OnRound is called once per checkpoint, after it was first submitted
	// to every witness that is not backing off, with the checkpoint and
	// the cosignatures it carries.
	OnRound func(ctx context.Context, cp store.Checkpoint, cos []store.Cosignature)
}

// SplitView is a witness refusing the log's history.
type SplitView struct {
	Witness string
	// WitnessSize is the size the witness cosigned last; LogSize is the
	// log's.
	WitnessSize, LogSize uint64
	// Rollback is set when the witness has cosigned more entries than
	// the log has; otherwise it refused a consistency proof.
	Rollback bool
	Message  string
}

// Status is one witness as health, metrics and the report show it.
type Status struct {
	Name string `json:"name"`
	URL  string `json:"url"`
	Key  string `json:"key"`
	// CosignedSize and CosignedAt are the largest checkpoint the witness
	// cosigned for this log and its timestamp (zero if none).
	CosignedSize uint64    `json:"cosigned_size"`
	CosignedAt   time.Time `json:"cosigned_at,omitzero"`
	LastSuccess  time.Time `json:"last_success,omitzero"`
	LastAttempt  time.Time `json:"last_attempt,omitzero"`
	LastError    string    `json:"last_error,omitempty"`
	Failures     int       `json:"failures,omitempty"`
	// SplitView is set while the witness refuses the log's history.
	SplitView string `json:"split_view,omitempty"`
}

type witness struct {
	cfg Config
	key *cosignature.Key
	set *cosignature.Set // this witness alone, for its answers

	mu         sync.Mutex
	st         Status
	believed   uint64 // the size we think the witness holds
	next       time.Time
	lastSigned time.Time // timestamp of its cosignature of st.CosignedSize
}

// Client submits checkpoints to witnesses.
type Client struct {
	opts      Options
	set       *cosignature.Set
	witnesses []*witness
	wake      chan struct{}
	announced uint64
}

// New checks the witnesses and loads what the store holds of them.
func New(ctx context.Context, o Options) (*Client, error) {
	set, err := Parse(o.Witnesses, o.Quorum)
	if err != nil {
		return nil, err
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	if o.BackoffBase <= 0 {
		o.BackoffBase = time.Second
	}
	if o.BackoffMax < o.BackoffBase {
		o.BackoffMax = max(time.Minute, o.BackoffBase)
	}
	if o.Refresh <= 0 {
		o.Refresh = time.Hour
	}
	if o.HTTP == nil {
		o.HTTP = &http.Client{}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	c := &Client{opts: o, set: set, wake: make(chan struct{}, 1)}
	for i, cfg := range o.Witnesses {
		k := set.Keys()[i]
		one, _ := cosignature.NewSet(k)
		w := &witness{cfg: cfg, key: k, set: one, st: Status{Name: cfg.Name, URL: cfg.URL, Key: k.String()}}
		c.witnesses = append(c.witnesses, w)
	}
	err = o.Store.View(ctx, func(r store.Reader) error {
		for _, w := range c.witnesses {
			cs, err := r.LatestCosignature(ctx, w.key.ID())
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			w.st.CosignedSize, w.st.CosignedAt, w.believed, w.lastSigned = cs.Size, cs.SignedAt, cs.Size, cs.SignedAt
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("witnesses: reading their cosignatures: %w", err)
	}
	return c, nil
}

// Quorum is the number of witnesses a checkpoint needs.
func (c *Client) Quorum() int { return c.opts.Quorum }

// Set is the witnesses' keys.
func (c *Client) Set() *cosignature.Set { return c.set }

// IDs are the witnesses' identities in the store.
func (c *Client) IDs() []string {
	out := make([]string, len(c.witnesses))
	for i, w := range c.witnesses {
		out[i] = w.key.ID()
	}
	return out
}

// Notify tells the client a checkpoint was signed. It never blocks.
func (c *Client) Notify() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// Status returns every witness's state.
func (c *Client) Status() []Status {
	out := make([]Status, len(c.witnesses))
	for i, w := range c.witnesses {
		w.mu.Lock()
		out[i] = w.st
		w.mu.Unlock()
	}
	return out
}

// Run submits checkpoints until ctx ends.
func (c *Client) Run(ctx context.Context) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.wake:
		case <-t.C:
		}
		wait := c.Round(ctx)
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(wait)
	}
}

// Round submits the newest checkpoint to every witness that needs it and
// is not backing off, at once, and returns how long to wait before the
// next round if nothing new comes.
func (c *Client) Round(ctx context.Context) time.Duration {
	var cp store.Checkpoint
	err := c.opts.Store.View(ctx, func(r store.Reader) (err error) {
		cp, err = r.LatestCheckpoint(ctx)
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		return c.opts.Refresh
	}
	if err != nil {
		if ctx.Err() == nil {
			c.opts.Log.Warn("witnesses: reading the newest checkpoint failed", "err", err)
		}
		return c.opts.BackoffBase
	}
	now := c.opts.Now()
	var wg sync.WaitGroup
	for _, w := range c.witnesses {
		w.mu.Lock()
		due := w.st.CosignedSize < cp.Size || w.st.SplitView != "" || now.Sub(w.lastSigned) >= c.opts.Refresh
		waiting := now.Before(w.next)
		w.mu.Unlock()
		if !due || waiting {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.submit(ctx, w, cp)
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return 0
	}
	if cp.Size > c.announced && c.opts.OnRound != nil {
		var cos []store.Cosignature
		err := c.opts.Store.View(ctx, func(r store.Reader) error {
			var err error
			cos, err = r.Cosignatures(ctx, cp.Size)
			return err
		})
		if err == nil {
			c.announced = cp.Size
			c.opts.OnRound(ctx, cp, cos)
		}
	}
	// Wake for the first witness due again.
	wait := c.opts.Refresh
	now = c.opts.Now()
	for _, w := range c.witnesses {
		w.mu.Lock()
		switch {
		case !w.next.IsZero():
			wait = min(wait, max(w.next.Sub(now), time.Millisecond))
		case !w.lastSigned.IsZero():
			wait = min(wait, max(w.lastSigned.Add(c.opts.Refresh).Sub(now), time.Millisecond))
		}
		w.mu.Unlock()
	}
	return wait
}

// answerError is a witness's answer other than 200.
type answerError struct {
	status int
	msg    string
}

func (e *answerError) Error() string { return e.msg }

// submit sends cp to w, following 409 answers to the size the witness
// holds, at most a few times.
func (c *Client) submit(ctx context.Context, w *witness, cp store.Checkpoint) {
	w.mu.Lock()
	old := w.believed
	w.st.LastAttempt = c.opts.Now()
	w.mu.Unlock()
	var err error
	for range 3 {
		if old > cp.Size {
			// The witness holds more than this checkpoint: either the
			// log lost entries, or another replica submitted a newer one.
			if now, herr := c.head(ctx); herr == nil && old > now {
				c.splitView(ctx, w, SplitView{Witness: w.cfg.Name, WitnessSize: old, LogSize: now, Rollback: true,
					Message: fmt.Sprintf("witness %s has cosigned a tree of %d entries but this log has only %d: the log was rolled back (a forced restore, a failover that lost commits) or another broker writes under this origin", w.cfg.Name, old, now)})
				return
			}
			c.Notify() // a newer checkpoint exists: the next round sends it
			return
		}
		var (
			lines []string
			known uint64
		)
		lines, known, err = c.addCheckpoint(ctx, w, cp, old)
		if err == nil {
			c.cosigned(ctx, w, cp, lines)
			return
		}
		var ae *answerError
		if !errors.As(err, &ae) {
			break
		}
		if ae.status == http.StatusUnprocessableEntity {
			c.splitView(ctx, w, SplitView{Witness: w.cfg.Name, WitnessSize: old, LogSize: cp.Size,
				Message: fmt.Sprintf("witness %s refused the consistency proof from the %d entries it cosigned to this log's %d: the log's history is not the one it saw (the log was rolled back and rewritten, or forked)", w.cfg.Name, old, cp.Size)})
			return
		}
		if ae.status != http.StatusConflict {
			break
		}
		if known == old {
			err = fmt.Errorf("the witness answered 409 Conflict with the size we sent (%d)", old)
			break
		}
		w.mu.Lock()
		w.believed = known
		w.mu.Unlock()
		old = known
	}
	c.fail(w, err)
}

func (c *Client) head(ctx context.Context) (uint64, error) {
	var n uint64
	err := c.opts.Store.View(ctx, func(r store.Reader) error {
		h, err := r.Head(ctx)
		n = h.Size
		return err
	})
	return n, err
}

// maxAnswer bounds a witness's answer: room for far more than the 16
// signatures a note verifier must accept, post-quantum ones included.
const maxAnswer = 128 << 10

// addCheckpoint makes one add-checkpoint call. On 409 it returns the
// witness's size.
func (c *Client) addCheckpoint(ctx context.Context, w *witness, cp store.Checkpoint, old uint64) ([]string, uint64, error) {
	var proof [][]byte
	err := c.opts.Store.View(ctx, func(r store.Reader) error {
		var err error
		proof, err = r.ConsistencyProof(ctx, old, cp.Size)
		return err
	})
	if err != nil {
		return nil, 0, fmt.Errorf("making the consistency proof from %d to %d: %w", old, cp.Size, err)
	}
	if len(proof) > 63 {
		return nil, 0, fmt.Errorf("the consistency proof has %d hashes, more than the protocol's 63", len(proof))
	}
	var body bytes.Buffer
	fmt.Fprintf(&body, "old %d\n", old)
	for _, h := range proof {
		body.WriteString(base64.StdEncoding.EncodeToString(h) + "\n")
	}
	body.WriteString("\n")
	body.Write(cp.Note)
	rctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, strings.TrimSuffix(w.cfg.URL, "/")+"/add-checkpoint", &body)
	if err != nil {
		return nil, 0, err
	}
	resp, err := c.opts.HTTP.Do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("unreachable: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err != nil {
		return nil, 0, fmt.Errorf("reading its answer: %w", err)
	}
	if len(b) > maxAnswer {
		return nil, 0, &answerError{status: resp.StatusCode, msg: fmt.Sprintf("its answer (%s) is larger than %d bytes", resp.Status, maxAnswer)}
	}
	switch resp.StatusCode {
	case http.StatusOK:
		lines, err := cosignature.ParseLines(b)
		if err != nil {
			return nil, 0, fmt.Errorf("its answer is not signature lines: %w", err)
		}
		return lines, 0, nil
	case http.StatusConflict:
		s := string(b)
		n, err := strconv.ParseUint(strings.TrimSuffix(s, "\n"), 10, 64)
		if err != nil || !strings.HasSuffix(s, "\n") || strconv.FormatUint(n, 10)+"\n" != s {
			return nil, 0, fmt.Errorf("it answered 409 Conflict without a tree size (%q)", short(b))
		}
		if ct := resp.Header.Get("Content-Type"); ct != "text/x.tlog.size" {
			c.opts.Log.Debug("witness answered 409 with an unexpected content type", "witness", w.cfg.Name, "content_type", ct)
		}
		return nil, n, &answerError{status: resp.StatusCode, msg: fmt.Sprintf("it holds size %d, not %d", n, old)}
	case http.StatusNotFound, http.StatusForbidden:
		return nil, 0, &answerError{status: resp.StatusCode, msg: fmt.Sprintf("it refused the checkpoint (%s: %s): it does not know this log's origin %s or its checkpoint key; register them with witnessctl add-log and add-key",
			resp.Status, short(b), c.opts.Origin)}
	case http.StatusUnprocessableEntity:
		return nil, 0, &answerError{status: resp.StatusCode, msg: "it refused the consistency proof: " + short(b)}
	case http.StatusBadRequest:
		return nil, 0, &answerError{status: resp.StatusCode, msg: "it refused the request as malformed: " + short(b)}
	}
	return nil, 0, &answerError{status: resp.StatusCode, msg: fmt.Sprintf("it answered %s: %s", resp.Status, short(b))}
}

func short(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return strings.ToValidUTF8(s, "?")
}

// cosigned verifies w's answer against the checkpoint with w's key and
// stores its cosignature.
func (c *Client) cosigned(ctx context.Context, w *witness, cp store.Checkpoint, lines []string) {
	cos, err := w.set.Verify(cosignature.Append(cp.Note, lines...), c.opts.Origin)
	if err == nil && len(cos) == 0 {
		err = fmt.Errorf("its answer carries no cosignature by its key %s", w.key.ID())
	}
	if err != nil {
		c.fail(w, fmt.Errorf("its answer does not verify: %w", err))
		return
	}
	got := cos[0]
	now := c.opts.Now().UTC()
	if got.Future(now) {
		c.fail(w, fmt.Errorf("its cosignature is dated %s, %s ahead of this broker's clock (at most %s is allowed): not stored; the witness's clock, or this broker's, is wrong",
			got.Time.Format(time.RFC3339), got.Time.Sub(now).Round(time.Second), cosignature.MaxClockSkew))
		return
	}
	err = c.opts.Store.Update(ctx, func(tx store.Tx) error {
		return tx.AddCosignature(ctx, store.Cosignature{Size: cp.Size, Witness: w.key.ID(), Line: got.Line, SignedAt: got.Time, CreatedAt: now})
	})
	if err != nil {
		c.fail(w, fmt.Errorf("storing its cosignature: %w", err))
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.st.SplitView != "" {
		c.opts.Log.Info("witness cosigns again: its view and the log's agree", "witness", w.cfg.Name, "size", cp.Size)
	}
	w.believed, w.next, w.lastSigned = cp.Size, time.Time{}, got.Time
	w.st.CosignedSize, w.st.CosignedAt, w.st.LastSuccess = cp.Size, got.Time, now
	w.st.LastError, w.st.Failures, w.st.SplitView = "", 0, ""
	c.opts.Log.Debug("checkpoint cosigned", "witness", w.cfg.Name, "size", cp.Size)
}

func (c *Client) fail(w *witness, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.st.Failures++
	w.st.LastError = err.Error()
	w.next = c.opts.Now().Add(c.backoff(w.st.Failures))
	c.opts.Log.Warn("witness did not cosign", "witness", w.cfg.Name, "failures", w.st.Failures, "retry_in", w.next.Sub(c.opts.Now()).Round(time.Millisecond), "err", err)
}

func (c *Client) splitView(ctx context.Context, w *witness, sv SplitView) {
	w.mu.Lock()
	first := w.st.SplitView == ""
	w.st.SplitView = sv.Message
	w.mu.Unlock()
	c.fail(w, errors.New(sv.Message))
	if first {
		c.opts.Log.Error("SPLIT VIEW: a witness refuses this log's history", "witness", sv.Witness, "witness_size", sv.WitnessSize, "log_size", sv.LogSize, "msg", sv.Message)
	}
	if c.opts.OnSplitView != nil {
		c.opts.OnSplitView(ctx, sv)
	}
}

// backoff is exponential from BackoffBase, capped at BackoffMax, with
// half of it random so that replicas do not retry in step.
func (c *Client) backoff(failures int) time.Duration {
	d := c.opts.BackoffBase
	for i := 1; i < failures && d < c.opts.BackoffMax; i++ {
		d *= 2
	}
	d = min(d, c.opts.BackoffMax)
	return d/2 + rand.N(d/2+1) //nolint:gosec // jitter needs spread, not secrecy
}

// Cosigned returns cp's note with the cosignatures stored for it appended,
// and those cosignatures.
func Cosigned(ctx context.Context, r store.Reader, cp store.Checkpoint) ([]byte, []store.Cosignature, error) {
	cos, err := r.Cosignatures(ctx, cp.Size)
	if err != nil {
		return nil, nil, err
	}
	lines := make([]string, 0, len(cos))
	for _, c := range cos {
		if !slices.Contains(lines, c.Line) {
			lines = append(lines, c.Line)
		}
	}
	return cosignature.Append(cp.Note, lines...), cos, nil
}
