package statement

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"sync"
	"sync/atomic"
)

// Cache remembers which (certificate, statement, signature) triples have
// verified, so that a statement checked when it was submitted is not
// checked again, at full cost, before every issuance or by every pass of an
// offline verifier. Only successes are kept, under a hash of the exact
// bytes: a changed byte anywhere misses and is verified afresh. A nil
// *Cache verifies every time.
type Cache struct {
	mu   sync.Mutex
	max  int
	seen map[[32]byte]struct{}
	fifo [][32]byte
	next int

	certMu sync.Mutex
	certs  map[[32]byte]*x509.Certificate

	checks atomic.Int64
}

// Checks is how many signatures the cache has verified rather than
// remembered.
func (c *Cache) Checks() int64 {
	if c == nil {
		return 0
	}
	return c.checks.Load()
}

// NewCache keeps up to size verified triples, forgetting the oldest first.
func NewCache(size int) *Cache {
	size = max(size, 1)
	return &Cache{max: size, seen: make(map[[32]byte]struct{}, size), fifo: make([][32]byte, 0, size), certs: map[[32]byte]*x509.Certificate{}}
}

// ParseCertificate is x509.ParseCertificate, remembered: stored reviews
// carry the same few approvers' certificates over and over. The result is
// shared and must not be modified.
func (c *Cache) ParseCertificate(der []byte) (*x509.Certificate, error) {
	if c == nil {
		return x509.ParseCertificate(der)
	}
	k := sha256.Sum256(der)
	c.certMu.Lock()
	cert, ok := c.certs[k]
	c.certMu.Unlock()
	if ok {
		return cert, nil
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	c.certMu.Lock()
	defer c.certMu.Unlock()
	if len(c.certs) >= c.max {
		clear(c.certs)
	}
	c.certs[k] = cert
	return cert, nil
}

// Verify is Verify(cert, stmt, sig), remembered.
func (c *Cache) Verify(cert *x509.Certificate, stmt, sig []byte) error {
	if c == nil {
		return Verify(cert, stmt, sig)
	}
	k := cacheKey(cert.Raw, stmt, sig)
	c.mu.Lock()
	_, ok := c.seen[k]
	c.mu.Unlock()
	if ok {
		return nil
	}
	c.checks.Add(1)
	if err := Verify(cert, stmt, sig); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.seen[k]; ok {
		return nil
	}
	if len(c.fifo) < c.max {
		c.fifo = append(c.fifo, k)
	} else {
		delete(c.seen, c.fifo[c.next])
		c.fifo[c.next] = k
		c.next = (c.next + 1) % c.max
	}
	c.seen[k] = struct{}{}
	return nil
}

// cacheKey hashes the three byte strings with their lengths, so that no
// two different triples share an encoding.
func cacheKey(parts ...[]byte) [32]byte {
	h := sha256.New()
	var n [8]byte
	for _, p := range parts {
		binary.BigEndian.PutUint64(n[:], uint64(len(p)))
		h.Write(n[:])
		h.Write(p)
	}
	var k [32]byte
	h.Sum(k[:0])
	return k
}
