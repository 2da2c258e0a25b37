package broker

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/server/store"
)

// denials aggregates PermissionDenied answers per principal, so that a
// hostile but authenticated caller costs at most one audit entry (and one
// HSM signature) per principal and window.
type denials struct {
	mu  sync.Mutex
	buf map[string]*denialWindow
}

type denialWindow struct {
	start   time.Time
	last    time.Time
	count   int
	methods map[string]int
	sample  string
}

func (d *denials) init() { d.buf = map[string]*denialWindow{} }

// maxMethods bounds the per-window method map; method names come from the
// server's own routing table, but stay careful.
const maxMethods = 32

// RecordDenial notes that principal was refused on method.
func (b *Broker) RecordDenial(principal, method, reason string) {
	now := b.now().UTC()
	b.denials.mu.Lock()
	defer b.denials.mu.Unlock()
	w := b.denials.buf[principal]
	if w == nil {
		w = &denialWindow{start: now, methods: map[string]int{}, sample: reason}
		b.denials.buf[principal] = w
	}
	w.count++
	w.last = now
	if _, ok := w.methods[method]; ok || len(w.methods) < maxMethods {
		w.methods[method]++
	}
}

// FlushDenials writes one permission_denied entry per principal whose
// window has closed (or every window when all is set).
func (b *Broker) FlushDenials(ctx context.Context, all bool) error {
	now := b.now().UTC()
	b.denials.mu.Lock()
	var due []string
	for p, w := range b.denials.buf {
		if all || !now.Before(w.start.Add(b.cfg.DenialWindow)) {
			due = append(due, p)
		}
	}
	sort.Strings(due)
	windows := make([]*denialWindow, len(due))
	for i, p := range due {
		windows[i] = b.denials.buf[p]
		delete(b.denials.buf, p)
	}
	b.denials.mu.Unlock()
	if len(due) == 0 {
		return nil
	}
	err := b.update(ctx, func(tx store.Tx) error {
		for i, p := range due {
			w := windows[i]
			if _, err := b.appendEntry(ctx, tx, now, audit.Draft{
				Type: audit.TypePermissionDenied, Actor: p,
				Payload: audit.PermissionDenied{Principal: p, Count: w.count, WindowStart: w.start, WindowEnd: w.last, Methods: w.methods, Sample: w.sample},
			}, false); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		// Put the windows back so nothing is lost.
		b.denials.mu.Lock()
		for i, p := range due {
			if cur := b.denials.buf[p]; cur != nil {
				windows[i].count += cur.count
				for m, c := range cur.methods {
					windows[i].methods[m] += c
				}
			}
			b.denials.buf[p] = windows[i]
		}
		b.denials.mu.Unlock()
	}
	return err
}
