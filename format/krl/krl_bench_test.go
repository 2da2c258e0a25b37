package krl

import (
	"crypto/rand"
	"encoding/binary"
	"testing"
)

// BenchmarkMarshal encodes a KRL of n revoked serials spread over a range,
// the shape a long-lived CA's revocations take.
func BenchmarkMarshal(b *testing.B) {
	for _, n := range []int{100, 10000, 1000000} {
		b.Run(itoa(n), func(b *testing.B) {
			_, ca := newCAKey(&testing.T{})
			serials := make([]Range, n)
			for i := range serials {
				var buf [8]byte
				_, _ = rand.Read(buf[:])
				serials[i] = Serial(binary.BigEndian.Uint64(buf[:]) | 1)
			}
			k := &KRL{Version: 1, Certificates: []*CertificateSection{{CA: ca, Serials: serials}}}
			b.ResetTimer()
			for range b.N {
				out, err := k.Marshal()
				if err != nil {
					b.Fatal(err)
				}
				b.SetBytes(int64(len(out)))
			}
		})
	}
}

func itoa(n int) string {
	switch n {
	case 100:
		return "100"
	case 10000:
		return "10k"
	}
	return "1M"
}
