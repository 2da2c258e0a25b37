package hsm

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/miekg/pkcs11"
)

// Key is a signing key held in the token. It implements crypto.Signer: for
// ES256 keys Sign takes a SHA-256 digest and returns an ASN.1 DER signature;
// for EdDSA keys it takes the whole message with crypto.Hash(0) and returns
// the 64-byte Ed25519 signature, as crypto/ed25519 does. A Key stays valid
// across reopens of the module: each signature finds the key again in the
// current context and checks it is still the same public key.
type Key struct {
	m    *Module
	info KeyInfo
	// id is the hex CKA_ID, the cache key inside a generation.
	id string
}

var _ crypto.Signer = (*Key)(nil)

// Signer returns the key with this label, checked to be a key of purpose p.
func (m *Module) Signer(ctx context.Context, label string, p Purpose) (*Key, error) {
	return m.signer(ctx, label, nil, p)
}

// SignerByID returns the key with this CKA_ID, checked to be a key of
// purpose p.
func (m *Module) SignerByID(ctx context.Context, id []byte, p Purpose) (*Key, error) {
	return m.signer(ctx, "", id, p)
}

func (m *Module) signer(ctx context.Context, label string, id []byte, p Purpose) (*Key, error) {
	info, err := m.FindKey(ctx, label, id)
	if err != nil {
		return nil, err
	}
	label = info.Label
	if info.Purpose != p {
		if info.Purpose == "" {
			return nil, fmt.Errorf("%w: key %q carries no breakglass purpose; generate %s keys with `breakglassd hsm keygen --purpose %s`", ErrPurposeMismatch, label, p, p)
		}
		return nil, fmt.Errorf("%w: key %q was generated for purpose %q, not %q", ErrPurposeMismatch, label, info.Purpose, p)
	}
	if info.Algorithm != p.Algorithm() {
		return nil, fmt.Errorf("%w: key %q is %s but %s keys must be %s", ErrPurposeMismatch, label, info.Algorithm, p, p.Algorithm())
	}
	return &Key{m: m, info: *info, id: hex.EncodeToString(info.ID)}, nil
}

// Info describes the key as it was found.
func (k *Key) Info() KeyInfo { return k.info }

// Label is the key's CKA_LABEL.
func (k *Key) Label() string { return k.info.Label }

// Purpose is what the key is for.
func (k *Key) Purpose() Purpose { return k.info.Purpose }

// Algorithm is ES256 or EdDSA.
func (k *Key) Algorithm() Algorithm { return k.info.Algorithm }

// Public returns *ecdsa.PublicKey or ed25519.PublicKey.
func (k *Key) Public() crypto.PublicKey { return k.info.Public }

// Sign implements crypto.Signer with the module's default deadline.
func (k *Key) Sign(_ io.Reader, data []byte, opts crypto.SignerOpts) ([]byte, error) {
	return k.SignContext(context.Background(), data, opts)
}

// SignContext signs within ctx's deadline (or the queue timeout, whichever
// is earlier). When the deadline passes the caller gets ErrUnavailable at
// once, even if the library call is still running; that call keeps its slot
// until it returns, so hung calls never exceed the slot count.
func (k *Key) SignContext(ctx context.Context, data []byte, opts crypto.SignerOpts) ([]byte, error) {
	switch k.info.Algorithm {
	case ES256:
		if opts == nil || opts.HashFunc() != crypto.SHA256 || len(data) != sha256.Size {
			return nil, fmt.Errorf("hsm: ES256 key %q signs SHA-256 digests only", k.info.Label)
		}
	case EdDSA:
		if opts != nil && opts.HashFunc() != crypto.Hash(0) {
			return nil, fmt.Errorf("hsm: Ed25519 key %q signs whole messages (crypto.Hash(0)), not digests", k.info.Label)
		}
	}
	return k.m.sign(ctx, k, data)
}

type signResult struct {
	sig []byte
	err error
}

// signJob is one signature handed to a signing worker.
type signJob struct {
	ctx  context.Context
	k    *Key
	data []byte
	// state is jobQueued until a worker takes the job or its caller gives
	// up on it, whichever comes first.
	state atomic.Int32
	done  chan signResult
}

const (
	jobQueued int32 = iota
	jobTaken
	jobAbandoned
)

func (m *Module) sign(ctx context.Context, k *Key, data []byte) (sig []byte, err error) {
	ctx, end := m.startSpan(ctx, k)
	defer func() { end(err) }()
	ctx, cancel := context.WithTimeout(ctx, m.cfg.SignTimeout)
	defer cancel()
	if n := m.queued.Add(1); n > int64(m.cfg.MaxQueue) {
		m.queued.Add(-1)
		m.stats.rejected.Add(1)
		return nil, unavailable("%d signatures already waiting for the HSM", n-1)
	}
	j := &signJob{ctx: ctx, k: k, data: data, done: make(chan signResult, 1)}
	select {
	case m.jobs <- j:
	case <-ctx.Done():
		// The queue is full of abandoned jobs behind hung workers.
		j.state.Store(jobAbandoned)
		return nil, m.noSlot(ctx)
	case <-m.quit:
		m.queued.Add(-1)
		return nil, unavailable("module is closed")
	}
	select {
	case r := <-j.done:
		return r.sig, r.err
	case <-ctx.Done():
		if j.state.CompareAndSwap(jobQueued, jobAbandoned) {
			return nil, m.noSlot(ctx)
		}
		return nil, unavailable("signing with %q: %v", k.info.Label, ctx.Err())
	case <-m.quit:
		if j.state.CompareAndSwap(jobQueued, jobAbandoned) {
			m.queued.Add(-1)
		}
		return nil, unavailable("module is closed")
	}
}

// noSlot counts and describes a signature that no worker took in time.
func (m *Module) noSlot(ctx context.Context) error {
	m.queued.Add(-1)
	m.stats.rejected.Add(1)
	return unavailable("no signing slot within the deadline (%d slots, all busy): %v", m.cfg.SigningSlots, ctx.Err())
}

// startWorkers starts one long-lived signing worker per slot. A worker owns
// its slot for as long as the module is open: a signature is a hand-off to a
// warm goroutine rather than a new goroutine and a semaphore each time, and
// a cgo call that hangs holds exactly one worker, so hung calls never exceed
// the slot count.
func (m *Module) startWorkers() {
	for range m.cfg.SigningSlots {
		m.workers.Add(1)
		go m.worker()
	}
}

func (m *Module) worker() {
	defer m.workers.Done()
	for {
		select {
		case <-m.quit:
			return
		case j := <-m.jobs:
			if !j.state.CompareAndSwap(jobQueued, jobTaken) {
				continue // its caller gave up and already left the queue
			}
			m.queued.Add(-1)
			start := time.Now()
			sig, err := m.signInSlot(j.ctx, j.k, j.data)
			d := time.Since(start)
			m.stats.record(j.k.info.Purpose, d, err)
			m.observe(j.k, d, err)
			j.done <- signResult{sig, err}
		}
	}
}

// signInSlot signs against the current generation, reopening and retrying
// once when the context is broken.
func (m *Module) signInSlot(ctx context.Context, k *Key, data []byte) ([]byte, error) {
	for attempt := 0; ; attempt++ {
		g, err := m.current()
		if err != nil {
			return nil, err
		}
		sig, err := g.sign(k, data)
		if err == nil {
			return sig, nil
		}
		if !needsReopen(err) || attempt > 0 {
			if isKeyGone(err) {
				return nil, err
			}
			return nil, unavailable("signing with %q: %s", k.info.Label, ckrName(err))
		}
		if rerr := m.reopen(ctx, g, err); rerr != nil {
			return nil, rerr
		}
	}
}

// errKeyChanged means the key under the label is no longer the key the
// signer was made for: someone replaced it, and it must not be used.
type errKeyChanged struct{ label string }

func (e errKeyChanged) Error() string {
	return fmt.Sprintf("key %q on the token is no longer the key the broker loaded (its public key changed); refusing to sign", e.label)
}
func (e errKeyChanged) Unwrap() error { return ErrUnavailable }

func isKeyGone(err error) bool {
	var kc errKeyChanged
	return errors.As(err, &kc)
}

// sign signs with the generation's handle for k, finding it on first use.
func (g *generation) sign(k *Key, data []byte) ([]byte, error) {
	if k.info.Algorithm == EdDSA {
		h, err := g.edHandle(k)
		if err != nil {
			return nil, err
		}
		var sig []byte
		err = g.withSession(func(s pkcs11.SessionHandle) error {
			if err := g.raw.SignInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(ckmEdDSA, nil)}, h); err != nil {
				return err
			}
			var err error
			sig, err = g.raw.Sign(s, data)
			return err
		})
		if err != nil {
			g.forget(k)
			return nil, err
		}
		if len(sig) != ed25519.SignatureSize {
			return nil, fmt.Errorf("token returned a %d-byte Ed25519 signature", len(sig))
		}
		return sig, nil
	}
	s, err := g.ecSigner(k)
	if err != nil {
		return nil, err
	}
	sig, err := s.Sign(nil, data, crypto.SHA256)
	if err != nil {
		g.forget(k)
	}
	return sig, err
}

func (g *generation) forget(k *Key) {
	g.mu.Lock()
	delete(g.ecKeys, k.id)
	delete(g.edKeys, k.id)
	g.mu.Unlock()
}

func (g *generation) ecSigner(k *Key) (cryptoSigner, error) {
	g.mu.Lock()
	s, ok := g.ecKeys[k.id]
	g.mu.Unlock()
	if ok {
		return s, nil
	}
	found, err := g.c11.FindKeyPairs(k.info.ID, []byte(k.info.Label))
	if err != nil {
		return nil, err
	}
	if len(found) != 1 {
		return nil, pkcs11.Error(pkcs11.CKR_KEY_HANDLE_INVALID)
	}
	if !samePublic(k.info.Public, found[0].Public()) {
		return nil, errKeyChanged{k.info.Label}
	}
	g.mu.Lock()
	g.ecKeys[k.id] = found[0]
	g.mu.Unlock()
	return found[0], nil
}

type cryptoSigner = interface {
	Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error)
}

func (g *generation) edHandle(k *Key) (pkcs11.ObjectHandle, error) {
	g.mu.Lock()
	h, ok := g.edKeys[k.id]
	g.mu.Unlock()
	if ok {
		return h, nil
	}
	h, err := g.findPrivate(k.info.Label, k.info.ID)
	if errors.Is(err, errNoKey) {
		return 0, pkcs11.Error(pkcs11.CKR_KEY_HANDLE_INVALID)
	}
	if err != nil {
		return 0, err
	}
	info, err := g.keyInfo(h)
	if err != nil {
		return 0, err
	}
	if !samePublic(k.info.Public, info.Public) {
		return 0, errKeyChanged{k.info.Label}
	}
	g.mu.Lock()
	g.edKeys[k.id] = h
	g.mu.Unlock()
	return h, nil
}

// Verify checks a signature made by this key in software, as a relying party
// would.
func (k *Key) Verify(data, sig []byte) bool {
	switch pub := k.info.Public.(type) {
	case *ecdsa.PublicKey:
		d := sha256.Sum256(data)
		return ecdsa.VerifyASN1(pub, d[:], sig)
	case ed25519.PublicKey:
		return ed25519.Verify(pub, data, sig)
	}
	return false
}

// SignMessage signs a whole message: SHA-256 then ECDSA for ES256 keys (DER
// signature), pure Ed25519 for EdDSA keys.
func (k *Key) SignMessage(ctx context.Context, msg []byte) ([]byte, error) {
	if k.info.Algorithm == EdDSA {
		return k.SignContext(ctx, msg, crypto.Hash(0))
	}
	d := sha256.Sum256(msg)
	return k.SignContext(ctx, d[:], crypto.SHA256)
}

// counters are the module's signature statistics.
type stats struct {
	signs    map[Purpose]*atomic.Int64
	failures map[Purpose]*atomic.Int64
	nanos    map[Purpose]*atomic.Int64
	rejected atomic.Int64
	reopens  atomic.Int64
}

func (s *stats) init() {
	s.signs, s.failures, s.nanos = map[Purpose]*atomic.Int64{}, map[Purpose]*atomic.Int64{}, map[Purpose]*atomic.Int64{}
	for _, p := range Purposes {
		s.signs[p], s.failures[p], s.nanos[p] = new(atomic.Int64), new(atomic.Int64), new(atomic.Int64)
	}
}

func (s *stats) record(p Purpose, d time.Duration, err error) {
	if s.signs[p] == nil {
		return
	}
	if err != nil {
		s.failures[p].Add(1)
		return
	}
	s.signs[p].Add(1)
	s.nanos[p].Add(int64(d))
}

// Stats is a snapshot of the module's counters.
type Stats struct {
	// Signatures counts successful signatures per purpose.
	Signatures map[Purpose]int64 `json:"signatures"`
	// Failures counts signatures that reached the token and failed.
	Failures map[Purpose]int64 `json:"failures"`
	// SignTime is the total time spent in successful signatures per purpose.
	SignTime map[Purpose]time.Duration `json:"sign_time"`
	// Rejected counts signatures refused for lack of a slot in time.
	Rejected int64 `json:"rejected"`
	// Reopens counts reopens of the PKCS#11 context.
	Reopens int64 `json:"reopens"`
	// Queued is the number of signatures waiting for a slot now.
	Queued int64 `json:"queued"`
}

// Stats returns the module's counters.
func (m *Module) Stats() Stats {
	st := Stats{Signatures: map[Purpose]int64{}, Failures: map[Purpose]int64{}, SignTime: map[Purpose]time.Duration{}}
	for _, p := range Purposes {
		st.Signatures[p] = m.stats.signs[p].Load()
		st.Failures[p] = m.stats.failures[p].Load()
		st.SignTime[p] = time.Duration(m.stats.nanos[p].Load())
	}
	st.Rejected = m.stats.rejected.Load()
	st.Reopens = m.stats.reopens.Load()
	st.Queued = m.queued.Load()
	return st
}

// TotalSignatures is the sum of successful signatures over all purposes.
func (s Stats) TotalSignatures() int64 {
	var n int64
	for _, v := range s.Signatures {
		n += v
	}
	return n
}

// SigningSlots is the number of signatures that may be in flight at once.
func (m *Module) SigningSlots() int { return m.cfg.SigningSlots }
