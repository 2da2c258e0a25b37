// Package hsm is the only code in the broker that speaks PKCS#11. It opens a
// module and token, generates keys inside the token, finds them by label and
// ID, and hands out signers: crypto.Signer for ECDSA P-256 (through crypto11)
// and for Ed25519 (through raw PKCS#11, which crypto11 lacks).
//
// Signers survive broken sessions: on a return value that says the context is
// gone the module reopens it, finds its keys again and retries once. Signing
// runs in a bounded number of slots with a FIFO queue and a deadline, so a
// slow or hung HSM makes callers fail fast with ErrUnavailable instead of
// piling up goroutines behind cgo calls that cannot be cancelled.
package hsm

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"
)

// Token describes the opened token.
type Token struct {
	Label        string `json:"label"`
	Serial       string `json:"serial"`
	Manufacturer string `json:"manufacturer"`
	Model        string `json:"model"`
	Slot         uint   `json:"slot"`
	Module       string `json:"module"`
}

// Module is an open PKCS#11 token. It is safe for concurrent use.
type Module struct {
	cfg   Config
	path  string
	pin   string
	log   *slog.Logger
	raw   *pkcs11.Ctx
	token Token
	// jobs feeds the signing workers, one per slot; queued counts the
	// signatures waiting in it for a worker.
	jobs    chan *signJob
	queued  atomic.Int64
	quit    chan struct{}
	workers sync.WaitGroup

	gen atomic.Pointer[generation]

	mu          sync.Mutex
	pending     *reopenOp
	lastFailure time.Time
	closed      bool

	stats stats
	inst  atomic.Pointer[Instruments]
}

// reopenOp is one reopen in flight; every caller whose generation broke waits
// on the same one.
type reopenOp struct {
	done chan struct{}
	err  error
}

// generation is one crypto11 context and the raw sessions opened beside it.
// A reopen replaces the whole generation; signers find their keys again in
// the new one.
type generation struct {
	c11      *crypto11.Context
	raw      *pkcs11.Ctx
	slot     uint
	sessions chan pkcs11.SessionHandle

	mu     sync.Mutex
	ecKeys map[string]crypto11.Signer
	edKeys map[string]pkcs11.ObjectHandle
}

// reopenBackoff is the least time between two failed reopens, so a dead HSM
// is not hammered by every caller.
const reopenBackoff = 500 * time.Millisecond

// Open loads the module, finds the token and logs in.
func Open(ctx context.Context, cfg Config, log *slog.Logger) (*Module, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	for k, v := range cfg.Env {
		// The library reads these when it initializes, which happens below.
		if err := os.Setenv(k, v); err != nil {
			return nil, fmt.Errorf("hsm: setting %s: %w", k, err)
		}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	path, err := cfg.ResolveModule()
	if err != nil {
		return nil, err
	}
	pin, err := cfg.ReadPIN()
	if err != nil {
		return nil, err
	}
	m := newModule(cfg)
	m.path, m.pin, m.log = path, pin, log
	raw := pkcs11.New(path)
	if raw == nil {
		return nil, fmt.Errorf("%w: %s could not be loaded as a PKCS#11 library; install SoftHSM2 with %q or set --module", ErrModuleNotFound, path, InstallHint)
	}
	m.raw = raw
	if err := m.preflight(); err != nil {
		raw.Destroy()
		return nil, err
	}
	g, err := m.openGeneration()
	if err != nil {
		raw.Destroy()
		return nil, err
	}
	m.gen.Store(g)
	m.startWorkers()
	ti, err := raw.GetTokenInfo(g.slot)
	if err != nil {
		_ = m.Close()
		return nil, unavailable("reading token info: %s", ckrName(err))
	}
	m.token = Token{
		Label:        strings.TrimRight(ti.Label, " \x00"),
		Serial:       strings.TrimRight(ti.SerialNumber, " \x00"),
		Manufacturer: strings.TrimRight(ti.ManufacturerID, " \x00"),
		Model:        strings.TrimRight(ti.Model, " \x00"),
		Slot:         g.slot,
		Module:       path,
	}
	return m, nil
}

// newModule makes a module with its signing queue and counters, before any
// worker or library.
func newModule(cfg Config) *Module {
	m := &Module{
		cfg:  cfg,
		jobs: make(chan *signJob, cfg.MaxQueue+cfg.SigningSlots),
		quit: make(chan struct{}),
	}
	m.stats.init()
	return m
}

// preflight finds the token before crypto11 opens it, so that a missing
// token gets a message listing the tokens that do exist. crypto11 insists on
// initializing the library itself, so a library this call initialized is
// finalized again before crypto11 runs.
func (m *Module) preflight() error {
	err := m.raw.Initialize()
	weInit := err == nil
	if err != nil {
		if code, ok := p11Code(err); !ok || code != pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED {
			return fmt.Errorf("%w: initializing %s: %s", ErrModuleNotFound, m.path, ckrName(err))
		}
	}
	if weInit {
		defer func() { _ = m.raw.Finalize() }()
	}
	_, err = m.findSlot()
	return err
}

// findSlot resolves the configured label, serial or slot to a slot ID.
func (m *Module) findSlot() (uint, error) {
	slots, err := m.raw.GetSlotList(true)
	if err != nil {
		return 0, unavailable("listing slots: %s", ckrName(err))
	}
	var labels []string
	for _, s := range slots {
		ti, err := m.raw.GetTokenInfo(s)
		if err != nil {
			continue
		}
		label := strings.TrimRight(ti.Label, " \x00")
		serial := strings.TrimRight(ti.SerialNumber, " \x00")
		if ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 {
			continue
		}
		labels = append(labels, fmt.Sprintf("%q (serial %s, slot %d)", label, serial, s))
		switch {
		case m.cfg.TokenLabel != "" && label == m.cfg.TokenLabel,
			m.cfg.TokenSerial != "" && serial == m.cfg.TokenSerial,
			m.cfg.Slot != nil && *m.cfg.Slot == s:
			return s, nil
		}
	}
	if len(labels) == 0 {
		return 0, fmt.Errorf("%w: no token with %s in %s, and the module has no initialized tokens at all (for SoftHSM2, is SOFTHSM2_CONF set? create one with: softhsm2-util --init-token --free --label LABEL)",
			ErrTokenNotFound, m.cfg.tokenSelector(), m.path)
	}
	return 0, fmt.Errorf("%w: no token with %s in %s; tokens present: %s", ErrTokenNotFound, m.cfg.tokenSelector(), m.path, strings.Join(labels, ", "))
}

// openGeneration opens a fresh crypto11 context and logs in.
func (m *Module) openGeneration() (*generation, error) {
	c11cfg := &crypto11.Config{
		Path:            m.path,
		Pin:             m.pin,
		MaxSessions:     m.cfg.SigningSlots + 1, // one is crypto11's long-lived login session
		PoolWaitTimeout: m.cfg.SignTimeout,
	}
	switch {
	case m.cfg.TokenLabel != "":
		c11cfg.TokenLabel = m.cfg.TokenLabel
	case m.cfg.TokenSerial != "":
		c11cfg.TokenSerial = m.cfg.TokenSerial
	default:
		n := int(*m.cfg.Slot)
		c11cfg.SlotNumber = &n
	}
	c11, err := crypto11.Configure(c11cfg)
	if code, ok := p11Code(err); ok && code == pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED {
		// Someone finalized the library under crypto11's cached reference:
		// initialize it again through our own handle and retry.
		_ = m.raw.Initialize()
		c11, err = crypto11.Configure(c11cfg)
	}
	if err != nil {
		return nil, m.classifyOpenError(err)
	}
	if err := m.raw.Initialize(); err != nil {
		if code, ok := p11Code(err); !ok || code != pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED {
			_ = c11.Close()
			return nil, unavailable("initializing raw handle: %s", ckrName(err))
		}
	}
	slot, err := m.findSlot()
	if err != nil {
		_ = c11.Close()
		return nil, err
	}
	return &generation{
		c11:      c11,
		raw:      m.raw,
		slot:     slot,
		sessions: make(chan pkcs11.SessionHandle, m.cfg.SigningSlots),
		ecKeys:   map[string]crypto11.Signer{},
		edKeys:   map[string]pkcs11.ObjectHandle{},
	}, nil
}

func (m *Module) classifyOpenError(err error) error {
	if code, ok := p11Code(err); ok {
		switch code {
		case pkcs11.CKR_PIN_INCORRECT:
			return fmt.Errorf("%w: token %s refused the PIN (CKR_PIN_INCORRECT); check the PIN file or $%s", ErrPINIncorrect, m.cfg.tokenSelector(), m.pinEnvName())
		case pkcs11.CKR_PIN_LOCKED:
			return fmt.Errorf("%w: the user PIN of token %s is locked (CKR_PIN_LOCKED); the security officer must reset it", ErrPINIncorrect, m.cfg.tokenSelector())
		case pkcs11.CKR_PIN_LEN_RANGE, pkcs11.CKR_PIN_INVALID:
			return fmt.Errorf("%w: token %s refused the PIN as malformed (%s)", ErrPINIncorrect, m.cfg.tokenSelector(), code.Error())
		}
		return unavailable("opening token %s: %s", m.cfg.tokenSelector(), ckrName(err))
	}
	if strings.Contains(err.Error(), "could not find PKCS#11 token") {
		return fmt.Errorf("%w: token %s disappeared while opening it", ErrTokenNotFound, m.cfg.tokenSelector())
	}
	return unavailable("opening token %s: %v", m.cfg.tokenSelector(), err)
}

func (m *Module) pinEnvName() string {
	if m.cfg.PINFile != "" {
		return "(pin file " + m.cfg.PINFile + ")"
	}
	if m.cfg.PINEnv != "" {
		return m.cfg.PINEnv
	}
	return DefaultPINEnv
}

// Token returns what the token says about itself.
func (m *Module) Token() Token { return m.token }

// Close releases the token. Signers obtained from the module stop working.
func (m *Module) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	m.mu.Unlock()
	if m.quit != nil {
		// Workers finish the signature in hand (behind a hung call, as
		// closing crypto11 below would anyway) and leave.
		close(m.quit)
		m.workers.Wait()
	}
	if g := m.gen.Swap(nil); g != nil {
		g.close()
	}
	m.raw.Destroy()
	return nil
}

// close closes the generation's sessions and its crypto11 context. crypto11
// waits for every pooled session to come back, so this may block behind a
// hung call: callers run it in the background when that matters.
func (g *generation) close() {
	for {
		select {
		case s := <-g.sessions:
			_ = g.raw.CloseSession(s)
			continue
		default:
		}
		break
	}
	_ = g.c11.Close()
}

// current returns the live generation or ErrUnavailable after Close.
func (m *Module) current() (*generation, error) {
	g := m.gen.Load()
	if g == nil {
		return nil, unavailable("module is closed")
	}
	return g, nil
}

// reopen replaces the failed generation, once, however many callers saw it
// fail. The reopen runs in its own goroutine so that a caller whose context
// ends is not held by a hung library call.
func (m *Module) reopen(ctx context.Context, failed *generation, cause error) error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return unavailable("module is closed")
	}
	if cur := m.gen.Load(); cur != failed {
		m.mu.Unlock()
		return nil // someone else already reopened
	}
	op := m.pending
	if op == nil {
		if since := time.Since(m.lastFailure); since < reopenBackoff {
			m.mu.Unlock()
			return unavailable("the HSM failed (%s) and the last reopen failed %s ago", ckrName(cause), since.Round(time.Millisecond))
		}
		op = &reopenOp{done: make(chan struct{})}
		m.pending = op
		m.stats.reopens.Add(1)
		m.log.Warn("hsm: reopening PKCS#11 context", "cause", ckrName(cause), "token", m.cfg.tokenSelector())
		go m.runReopen(op, failed, cause)
	}
	m.mu.Unlock()
	select {
	case <-op.done:
		return op.err
	case <-ctx.Done():
		return unavailable("waiting for the HSM to reopen: %v", ctx.Err())
	}
}

func (m *Module) runReopen(op *reopenOp, failed *generation, cause error) {
	g, err := m.openGeneration()
	m.mu.Lock()
	switch {
	case err != nil:
		m.lastFailure = time.Now()
		op.err = err
		m.log.Error("hsm: reopen failed", "err", err)
	case m.closed:
		op.err = unavailable("module is closed")
		go g.close()
	default:
		m.gen.Store(g)
		m.log.Info("hsm: PKCS#11 context reopened")
		code, _ := p11Code(cause)
		if !sessionsGone[code] {
			// The old sessions still exist: release them, in the background
			// because crypto11 waits for calls that may be hung.
			go failed.close()
		}
		// Otherwise the old handles are dead and their numbers may already
		// belong to the new generation: the old context is abandoned, never
		// closed.
	}
	m.pending = nil
	m.mu.Unlock()
	close(op.done)
}

// session takes a raw session from the generation's pool or opens one.
func (g *generation) session() (pkcs11.SessionHandle, error) {
	select {
	case s := <-g.sessions:
		return s, nil
	default:
	}
	return g.raw.OpenSession(g.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
}

// release returns a session to the pool unless err says it is broken.
func (g *generation) release(s pkcs11.SessionHandle, err error) {
	if err != nil && needsReopen(err) {
		return
	}
	select {
	case g.sessions <- s:
	default:
		_ = g.raw.CloseSession(s)
	}
}

// withSession runs f on a raw session of the generation.
func (g *generation) withSession(f func(s pkcs11.SessionHandle) error) error {
	s, err := g.session()
	if err != nil {
		return err
	}
	err = f(s)
	g.release(s, err)
	return err
}

// do runs op against the current generation, reopening and retrying once
// when the failure says the context is broken. It is used by everything
// except signing, which adds slots and deadlines around the same loop.
func (m *Module) do(ctx context.Context, op func(g *generation) error) error {
	for attempt := 0; ; attempt++ {
		g, err := m.current()
		if err != nil {
			return err
		}
		err = op(g)
		if err == nil || !needsReopen(err) || attempt > 0 {
			return err
		}
		if rerr := m.reopen(ctx, g, err); rerr != nil {
			return rerr
		}
	}
}

// findObjects returns the handles of objects matching template.
func (g *generation) findObjects(template []*pkcs11.Attribute) ([]pkcs11.ObjectHandle, error) {
	var out []pkcs11.ObjectHandle
	err := g.withSession(func(s pkcs11.SessionHandle) error {
		if err := g.raw.FindObjectsInit(s, template); err != nil {
			return err
		}
		defer func() { _ = g.raw.FindObjectsFinal(s) }()
		for {
			hs, _, err := g.raw.FindObjects(s, 64)
			if err != nil {
				return err
			}
			if len(hs) == 0 {
				return nil
			}
			out = append(out, hs...)
		}
	})
	return out, err
}

// attributes reads the given attributes of one object. Attributes the token
// does not know come back absent instead of failing the whole read.
func (g *generation) attributes(h pkcs11.ObjectHandle, types []uint) (map[uint][]byte, error) {
	out := map[uint][]byte{}
	err := g.withSession(func(s pkcs11.SessionHandle) error {
		for _, t := range types {
			attrs, err := g.raw.GetAttributeValue(s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(t, nil)})
			if err != nil {
				code, ok := p11Code(err)
				if ok && (code == pkcs11.CKR_ATTRIBUTE_TYPE_INVALID || code == pkcs11.CKR_ATTRIBUTE_SENSITIVE) {
					continue
				}
				return err
			}
			if len(attrs) == 1 {
				out[t] = attrs[0].Value
			}
		}
		return nil
	})
	return out, err
}
