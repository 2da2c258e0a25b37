package auditverify

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/statement"
	"github.com/bgbroker/breakglass/format/strictjson"
)

// batchLines is how many export lines are read and prepared at once. Two
// batches are in flight at most (one prepared on every core while the one
// before is checked in order), so memory does not grow with the log.
const batchLines = 2048

// wireLine is what the verifier reads of an export line.
type wireLine struct {
	Index     uint64 `json:"index"`
	Entry     []byte `json:"entry"`
	Signature []byte `json:"signature"`
}

// prepared is an export line with the work that does not depend on the
// entries before it done: decoded, parsed, hashed, its signature and its
// signed statement verified.
type prepared struct {
	wire     wireLine
	wireErr  error
	entry    *audit.Entry
	parseErr error
	// payloadErr is set when the payload is not the strict encoding of
	// its type's payload (or the type is unknown): the replay, which
	// decodes payloads again, only ever sees canonical ones.
	payloadErr error
	leaf       []byte
	// signer is the candidate audit key the signature verifies with, if
	// any; whether that key was in force at this index is decided in order.
	signer *ecdsa.PublicKey
	checks int
}

type batch struct {
	items []prepared
	// err is the read error that ended the export, if any.
	err error
}

// candidates are the audit keys the workers try signatures with: the
// pinned ones and every key a key_activated entry names. A key here is
// only a guess at which key signed; the key chain decides trust.
type candidates struct {
	mu   sync.RWMutex
	keys []*ecdsa.PublicKey
}

func (c *candidates) list() []*ecdsa.PublicKey {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.keys
}

func (c *candidates) add(k *ecdsa.PublicKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !slices.ContainsFunc(c.keys, same(k)) {
		c.keys = append(slices.Clip(c.keys), k)
	}
}

// stream reads the export in batches, prepares each batch on every core
// while the one before is checked in order, and checks every line.
func (v *verifier) stream(r io.Reader) {
	cands := &candidates{keys: slices.Clone(v.o.AuditKeys)}
	batches := make(chan *batch, 1)
	go func() {
		defer close(batches)
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), MaxLineBytes)
		for {
			raw := make([][]byte, 0, batchLines)
			for len(raw) < batchLines && sc.Scan() {
				if b := bytes.TrimSpace(sc.Bytes()); len(b) > 0 {
					raw = append(raw, bytes.Clone(b))
				}
			}
			b := &batch{items: make([]prepared, len(raw))}
			parallel(len(raw), func(i int) {
				b.items[i] = prepare(raw[i], cands, v.sigs)
				raw[i] = nil
			})
			done := len(raw) < batchLines
			if done {
				b.err = sc.Err()
			}
			batches <- b
			if done {
				return
			}
		}
	}()
	i := int64(0)
	for b := range batches {
		for k := range b.items {
			v.step(i, &b.items[k])
			v.sigChecks += b.items[k].checks
			i++
		}
		if b.err != nil {
			v.reportf(i, "reading the export: %v", b.err)
			v.lost()
		}
	}
}

// prepare does everything for one line that needs no other line.
func prepare(raw []byte, cands *candidates, sigs *statement.Cache) prepared {
	var p prepared
	if p.wireErr = json.Unmarshal(raw, &p.wire); p.wireErr == nil {
		// The line is not signed, but it is what people read: one key,
		// one meaning, as for the entries.
		if k := strictjson.TopKeyProblem(raw); k != "" {
			p.wireErr = errors.New(k)
		}
	}
	if p.wireErr != nil || len(p.wire.Entry) == 0 {
		return p
	}
	p.leaf = audit.LeafHash(p.wire.Entry)
	p.entry, p.parseErr = audit.Decode(p.wire.Entry)
	e := p.entry
	if e != nil {
		_, p.payloadErr = e.DecodePayload()
	}
	if e != nil && e.Type == audit.TypeKeyActivated {
		var c audit.KeyChange
		if json.Unmarshal(e.Payload, &c) == nil && c.Purpose == "audit" {
			if blk, _ := pem.Decode([]byte(c.PublicPEM)); blk != nil {
				if pub, err := x509.ParsePKIXPublicKey(blk.Bytes); err == nil {
					if k, ok := pub.(*ecdsa.PublicKey); ok {
						cands.add(k)
					}
				}
			}
		}
	}
	if len(p.wire.Signature) > 0 {
		d := sha256.Sum256(p.wire.Entry)
		for _, k := range cands.list() {
			p.checks++
			if ecdsa.VerifyASN1(k, d[:], p.wire.Signature) {
				p.signer = k
				break
			}
		}
	}
	// The statements that reviews, post-use review closings and
	// attestations carry are verified here, on every core; the replay
	// finds them in the cache.
	if e != nil {
		switch e.Type {
		case audit.TypeRequestCreated, audit.TypeRequestReviewed, audit.TypeReviewClosed, audit.TypeAccountAttested:
			var s audit.Signed
			if json.Unmarshal(e.Payload, &s) == nil {
				if cert, err := sigs.ParseCertificate(s.Certificate); err == nil {
					_ = sigs.Verify(cert, s.Statement, s.Signature)
				}
			}
		}
	}
	return p
}

// parallel calls fn(i) for every i < n on every core, in chunks.
func parallel(n int, fn func(i int)) {
	const chunk = 64
	var (
		next atomic.Int64
		wg   sync.WaitGroup
	)
	for range min(runtime.GOMAXPROCS(0), (n+chunk-1)/chunk) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				start := int(next.Add(chunk)) - chunk
				if start >= n {
					return
				}
				for i := start; i < min(start+chunk, n); i++ {
					fn(i)
				}
			}
		}()
	}
	wg.Wait()
}
