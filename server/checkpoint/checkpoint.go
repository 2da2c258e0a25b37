// Package checkpoint signs the audit log's checkpoints: C2SP tlog-checkpoint
// bodies (origin, size, base64 RFC 6962 root) as C2SP signed notes, with the
// HSM Ed25519 checkpoint key named by the log's origin. Checkpoints are made
// in batches after appends (every N entries or T seconds) and on demand, so
// an auditor never waits for the next batch.
package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/transparency-dev/formats/log"
	"golang.org/x/mod/sumdb/note"

	cpfmt "github.com/bgbroker/breakglass/format/checkpoint"
	"github.com/bgbroker/breakglass/server/store"
)

// Config builds a Checkpointer.
type Config struct {
	Store store.Store
	// Signer signs notes; its name must be Origin.
	Signer note.Signer
	Origin string
	// Every signs a checkpoint once this many entries were appended since
	// the last (default 64).
	Every uint64
	// Interval signs a checkpoint this long after the last if the log grew
	// (default 10s).
	Interval time.Duration
	Now      func() time.Time
	Log      *slog.Logger
	// OnNew is called with every checkpoint signed, for announcing it.
	OnNew func(store.Checkpoint)
}

// Checkpointer signs and serves checkpoints.
type Checkpointer struct {
	cfg  Config
	mu   sync.Mutex // one signature at a time
	wake chan struct{}
}

// New checks the configuration against the store: a log keeps its origin
// for life, so a different origin than the stored checkpoints carry is
// refused.
func New(ctx context.Context, cfg Config) (*Checkpointer, error) {
	if !cpfmt.ValidOrigin(cfg.Origin) {
		return nil, fmt.Errorf("checkpoint: origin %q must be letters, digits and . _ : / - (no spaces), like example.org/breakglass", cfg.Origin)
	}
	if cfg.Signer == nil || cfg.Signer.Name() != cfg.Origin {
		return nil, errors.New("checkpoint: the signer must be named by the origin")
	}
	if cfg.Every == 0 {
		cfg.Every = 64
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 10 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	err := cfg.Store.View(ctx, func(r store.Reader) error {
		cp, err := r.LatestCheckpoint(ctx)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		n, err := note.Open(cp.Note, note.VerifierList())
		var unknown *note.UnverifiedNoteError
		if err != nil && !errors.As(err, &unknown) {
			return fmt.Errorf("checkpoint: the stored checkpoint at %d does not parse: %w", cp.Size, err)
		}
		if n == nil && unknown != nil {
			n = unknown.Note
		}
		var c log.Checkpoint
		if _, err := c.Unmarshal([]byte(n.Text)); err != nil {
			return fmt.Errorf("checkpoint: the stored checkpoint at %d does not parse: %w", cp.Size, err)
		}
		if c.Origin != cfg.Origin {
			return fmt.Errorf("checkpoint: this log's origin is %q (its checkpoints say so), but the configuration says %q; a log keeps its origin for life", c.Origin, cfg.Origin)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &Checkpointer{cfg: cfg, wake: make(chan struct{}, 1)}, nil
}

// Origin is the log's origin.
func (c *Checkpointer) Origin() string { return c.cfg.Origin }

// Appended tells the checkpointer the log grew.
func (c *Checkpointer) Appended() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// ErrEmpty is returned for a checkpoint of the empty log.
var ErrEmpty = errors.New("the log is empty")

// Latest returns a checkpoint that covers every entry committed before the
// call, signing one if the log has grown since the last.
func (c *Checkpointer) Latest(ctx context.Context) (store.Checkpoint, error) {
	var head uint64
	var latest store.Checkpoint
	err := c.cfg.Store.View(ctx, func(r store.Reader) error {
		h, err := r.Head(ctx)
		if err != nil {
			return err
		}
		head = h.Size
		latest, err = r.LatestCheckpoint(ctx)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		return err
	})
	if err != nil {
		return store.Checkpoint{}, err
	}
	if head == 0 {
		return store.Checkpoint{}, ErrEmpty
	}
	if latest.Size == head {
		return latest, nil
	}
	return c.sign(ctx, head)
}

// At returns the checkpoint at size, signing it if none is stored.
func (c *Checkpointer) At(ctx context.Context, size uint64) (store.Checkpoint, error) {
	if size == 0 {
		return store.Checkpoint{}, ErrEmpty
	}
	var cp store.Checkpoint
	err := c.cfg.Store.View(ctx, func(r store.Reader) error {
		var err error
		cp, err = r.Checkpoint(ctx, size)
		return err
	})
	if err == nil {
		return cp, nil
	}
	if !errors.Is(err, store.ErrNotFound) {
		return cp, err
	}
	return c.sign(ctx, size)
}

// sign makes, signs and stores the checkpoint at size.
func (c *Checkpointer) sign(ctx context.Context, size uint64) (store.Checkpoint, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var cp store.Checkpoint
	err := c.cfg.Store.View(ctx, func(r store.Reader) error {
		var err error
		if cp, err = r.Checkpoint(ctx, size); err == nil {
			return nil // signed meanwhile
		}
		if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		root, err := r.TreeHash(ctx, size)
		if err != nil {
			return err
		}
		cp = store.Checkpoint{Size: size, Root: root}
		return nil
	})
	if err != nil || cp.Note != nil {
		return cp, err
	}
	signer := c.cfg.Signer
	if r, ok := signer.(Resolver); ok {
		// The key in force now, read after the size: a key rotated in
		// since may sign the log as it was, a retired one never signs
		// beyond its retirement.
		if signer, err = r.Resolve(ctx); err != nil {
			return store.Checkpoint{}, &SignError{Err: err}
		}
	}
	body := cpfmt.Body(c.cfg.Origin, size, cp.Root)
	signed, err := note.Sign(&note.Note{Text: string(body)}, signer)
	if err != nil {
		return store.Checkpoint{}, &SignError{Err: err}
	}
	cp.Note, cp.CreatedAt = signed, c.cfg.Now().UTC()
	if err := c.cfg.Store.Update(ctx, func(tx store.Tx) error { return tx.AddCheckpoint(ctx, cp) }); err != nil {
		return store.Checkpoint{}, err
	}
	c.cfg.Log.Debug("checkpoint signed", "size", size)
	if c.cfg.OnNew != nil {
		c.cfg.OnNew(cp)
	}
	return cp, nil
}

// Resolver is a signer that follows key rotations: Resolve returns the
// one key that signs the next checkpoint.
type Resolver interface {
	Resolve(ctx context.Context) (note.Signer, error)
}

// SignError means the HSM could not sign the checkpoint.
type SignError struct{ Err error }

func (e *SignError) Error() string { return "signing checkpoint: " + e.Err.Error() }
func (e *SignError) Unwrap() error { return e.Err }

// Run signs checkpoints in batches until ctx ends: after Every entries, or
// Interval after the last checkpoint when the log grew.
func (c *Checkpointer) Run(ctx context.Context) {
	t := time.NewTicker(c.cfg.Interval)
	defer t.Stop()
	for {
		timed := false
		select {
		case <-ctx.Done():
			return
		case <-c.wake:
		case <-t.C:
			timed = true
		}
		if err := c.maybeSign(ctx, timed); err != nil && ctx.Err() == nil {
			c.cfg.Log.Warn("checkpoint not signed", "err", err)
		}
	}
}

func (c *Checkpointer) maybeSign(ctx context.Context, timed bool) error {
	var head, last uint64
	err := c.cfg.Store.View(ctx, func(r store.Reader) error {
		h, err := r.Head(ctx)
		if err != nil {
			return err
		}
		head = h.Size
		cp, err := r.LatestCheckpoint(ctx)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		last = cp.Size
		return err
	})
	if err != nil || head == 0 || head == last {
		return err
	}
	if head-last >= c.cfg.Every || timed {
		_, err = c.sign(ctx, head)
	}
	return err
}
