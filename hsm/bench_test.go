package hsm_test

import (
	"crypto"
	"crypto/sha256"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ThalesGroup/crypto11"

	"github.com/bgbroker/breakglass/hsm"
	"github.com/bgbroker/breakglass/hsm/hsmtest"
)

// BenchmarkSignES256 signs with one token key through the hsm package and
// through crypto11 called directly on the same key, at 1 and 8 goroutines:
// the package's bounded slots, deadlines and reopen handling should cost
// nothing measurable against the library itself.
func BenchmarkSignES256(b *testing.B) {
	k, direct := benchSigners(b)
	digest := sha256.Sum256([]byte("benchmark"))
	for _, par := range []int{1, 8} {
		for _, impl := range []struct {
			name string
			s    crypto.Signer
		}{{"hsm", k}, {"crypto11", direct}} {
			b.Run(fmt.Sprintf("%s/goroutines=%d", impl.name, par), func(b *testing.B) {
				// Exactly par goroutines share b.N signatures (RunParallel
				// would multiply par by GOMAXPROCS).
				var wg sync.WaitGroup
				for g := range par {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for i := g; i < b.N; i += par {
							if _, err := impl.s.Sign(nil, digest[:], crypto.SHA256); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
			})
		}
	}
}

// BenchmarkSignES256Ratio alternates short windows of the package and of
// crypto11 called directly, on the same key, and reports the package's rate
// as a share of crypto11's: on a shared machine only a ratio measured in
// one run means anything.
func BenchmarkSignES256Ratio(b *testing.B) {
	k, direct := benchSigners(b)
	digest := sha256.Sum256([]byte("benchmark"))
	for _, par := range []int{1, 8} {
		b.Run(fmt.Sprintf("goroutines=%d", par), func(b *testing.B) {
			var pkg, lib, pkgCPU, libCPU float64
			for range b.N {
				r, c := signWindow(b, k, par, digest[:])
				pkg, pkgCPU = pkg+r, pkgCPU+c
				r, c = signWindow(b, direct, par, digest[:])
				lib, libCPU = lib+r, libCPU+c
			}
			b.ReportMetric(pkg/float64(b.N), "hsm-sig/s")
			b.ReportMetric(lib/float64(b.N), "crypto11-sig/s")
			b.ReportMetric(pkg/lib, "ratio")
			// CPU time per signature is less disturbed by other processes.
			b.ReportMetric(pkgCPU/float64(b.N), "hsm-cpu-us/sig")
			b.ReportMetric(libCPU/float64(b.N), "crypto11-cpu-us/sig")
		})
	}
}

// benchSigners returns a token key through the package and the same key
// through crypto11 opened directly on the same token.
func benchSigners(b *testing.B) (*hsm.Key, crypto.Signer) {
	b.Helper()
	tok := hsmtest.NewToken(b)
	m := tok.Open(b)
	k := hsmtest.Keys(b, m)[hsm.PurposeToken]
	path, err := tok.Config.ResolveModule()
	if err != nil {
		b.Fatal(err)
	}
	c, err := crypto11.Configure(&crypto11.Config{Path: path, TokenLabel: tok.Label, Pin: tok.PIN, MaxSessions: m.SigningSlots() + 1})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close() })
	s, err := c.FindKeyPair(k.Info().ID, []byte(k.Label()))
	if err != nil {
		b.Fatal(err)
	}
	return k, s
}

// signWindow returns the rate and the process's CPU microseconds per
// signature over one window.
func signWindow(b *testing.B, s crypto.Signer, par int, digest []byte) (rate, cpuPerSig float64) {
	var n atomic.Int64
	cpu0 := cpuTime()
	deadline := time.Now().Add(100 * time.Millisecond)
	var wg sync.WaitGroup
	start := time.Now()
	for range par {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				if _, err := s.Sign(nil, digest, crypto.SHA256); err != nil {
					b.Error(err)
					return
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	cpu := cpuTime() - cpu0
	return float64(n.Load()) / time.Since(start).Seconds(), float64(cpu.Microseconds()) / float64(n.Load())
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
