package statement

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"testing"
)

// The cache must never turn a failure into a success: every changed byte,
// another certificate, a forgotten entry, all verify afresh.
func TestCacheRemembersOnlyExactSuccesses(t *testing.T) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cert, otherCert := selfSigned(t, k), selfSigned(t, other)
	stmt := sample().Marshal()
	sig, err := Sign(k, stmt)
	if err != nil {
		t.Fatal(err)
	}
	c := NewCache(2)
	for range 2 {
		if err := c.Verify(cert, stmt, sig); err != nil {
			t.Fatal(err)
		}
	}
	flipped := append([]byte(nil), sig...)
	flipped[len(flipped)-1] ^= 1
	changed := append(append([]byte(nil), stmt[:len(stmt)-1]...), 'x')
	for name, tc := range map[string]struct {
		cert      *ecdsa.PrivateKey
		stmt, sig []byte
	}{
		"flipped signature":   {k, stmt, flipped},
		"changed statement":   {k, changed, sig},
		"other certificate":   {other, stmt, sig},
		"signature as stmt":   {k, sig, stmt},
		"truncated signature": {k, stmt, sig[:len(sig)-1]},
	} {
		crt := cert
		if tc.cert == other {
			crt = otherCert
		}
		fresh := NewCache(4)
		for range 2 {
			if err := fresh.Verify(crt, tc.stmt, tc.sig); err == nil {
				t.Fatalf("%s: verified", name)
			}
		}
	}
	// Failures are not remembered as successes by a warm cache either.
	if err := c.Verify(cert, stmt, flipped); err == nil {
		t.Fatal("a warm cache accepted a flipped signature")
	}
	// Evicted entries verify again and still pass.
	for i := range 5 {
		s := sample()
		s.Comment = CommentDigest(string(rune('a' + i)))
		b := s.Marshal()
		sg, _ := Sign(k, b)
		if err := c.Verify(cert, b, sg); err != nil {
			t.Fatal(err)
		}
	}
	if len(c.seen) != 2 || len(c.fifo) != 2 {
		t.Fatalf("cache holds %d/%d entries, bound is 2", len(c.seen), len(c.fifo))
	}
	if err := c.Verify(cert, stmt, sig); err != nil {
		t.Fatal(err)
	}
	var nilCache *Cache
	if err := nilCache.Verify(cert, stmt, flipped); err == nil {
		t.Fatal("a nil cache accepted a flipped signature")
	}
}

func TestCacheParseCertificate(t *testing.T) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cert := selfSigned(t, k)
	c := NewCache(1)
	for range 2 {
		got, err := c.ParseCertificate(cert.Raw)
		if err != nil || !got.Equal(cert) {
			t.Fatalf("ParseCertificate = %v, %v", got, err)
		}
	}
	for _, bad := range [][]byte{nil, {0x30}, cert.Raw[:len(cert.Raw)-1]} {
		if _, err := c.ParseCertificate(bad); err == nil {
			t.Fatalf("parsed %x", bad)
		}
	}
	other := selfSigned(t, k)
	if got, err := c.ParseCertificate(other.Raw); err != nil || !got.Equal(other) {
		t.Fatalf("after eviction: %v, %v", got, err)
	}
}
