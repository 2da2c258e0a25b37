package statement

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"testing"
	"time"
)

// FuzzParseRoundTrip checks that a statement Parse accepts is one value
// with one encoding: marshalling it again gives a statement that parses to
// the same value. The broker and the offline verifier compare statements
// field by field and hash them byte for byte; the two views must agree.
func FuzzParseRoundTrip(f *testing.F) {
	good := sample().Marshal()
	f.Add(good)
	for _, typ := range []string{TypeDeny, TypeReviewClose, TypeAttest} {
		s := sample()
		s.Type = typ
		f.Add(s.Marshal())
	}
	f.Add(bytes.Replace(good, []byte("2026-11-29T12:00:00Z"), []byte("0000-01-01T00:00:00Z"), 1))
	f.Add(bytes.Replace(good, []byte("2026-11-29T12:00:00Z"), []byte("9999-12-31T23:59:59Z"), 1))
	f.Add(bytes.Replace(good, []byte("2026-11-29T12:00:00Z"), []byte("2026-11-29T12:00:60Z"), 1))
	f.Add(bytes.ReplaceAll(good, []byte("\n"), []byte("\r\n")))

	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := Parse(b)
		if err != nil {
			return
		}
		again, err := Parse(s.Marshal())
		if err != nil {
			t.Fatalf("the marshalled form of an accepted statement does not parse: %v\n%q", err, s.Marshal())
		}
		if again != s || !again.Time.Equal(s.Time) {
			t.Fatalf("round trip changed the statement:\n%+v\n%+v", s, again)
		}
	})
}

// fuzzSigner is a statement key that every fuzz worker process derives
// alike (workers rerun the setup and exchange inputs, so a key or signature
// drawn from fresh randomness would differ between them), signing with
// deterministic nonces where the algorithm has any.
type fuzzSigner struct{ crypto.Signer }

func (s fuzzSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return s.Signer.Sign(nil, digest, opts)
}

func fuzzSigners(f *testing.F) []fuzzSigner {
	f.Helper()
	seed := sha256.Sum256([]byte("breakglass fuzz statement key"))
	ec, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), seed[:])
	if err != nil {
		f.Fatal(err)
	}
	return []fuzzSigner{{ed25519.NewKeyFromSeed(seed[:])}, {ec}}
}

func fuzzCert(f *testing.F, key fuzzSigner) []byte {
	f.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bob"}, NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(nil, tmpl, tmpl, key.Public(), key)
	if err != nil {
		f.Fatal(err)
	}
	return der
}

// FuzzVerifyStatement runs a review through the checks the broker makes
// before it accepts it (certificate, statement, binding to the request,
// signature), with every byte string fuzzed. Only the statements signed
// here may pass, and only with their own signature: the certificate may
// change, since chaining it to the client CA is the caller's next check,
// but not its key. The verification cache must agree with a fresh check.
func FuzzVerifyStatement(f *testing.F) {
	signers := fuzzSigners(f)
	s := sample()
	want := s.Marshal()
	type signed struct {
		key crypto.PublicKey
		sig []byte
	}
	var valid []signed
	for _, k := range signers {
		sig, err := Sign(k, want)
		if err != nil {
			f.Fatal(err)
		}
		valid = append(valid, signed{k.Public(), sig})
		der := fuzzCert(f, k)
		f.Add(der, want, sig)
		f.Add(der, bytes.Replace(want, []byte("type approve"), []byte("type deny"), 1), sig)
		f.Add(der, want, append(bytes.Clone(sig), 0))
		f.Add(der, want, []byte{})
	}
	f.Add(fuzzCert(f, signers[0]), want, valid[1].sig)
	f.Add([]byte{0x30, 0x80}, want, valid[0].sig)

	cache := NewCache(4)
	f.Fuzz(func(t *testing.T, der, stmt, sig []byte) {
		cert, err := cache.ParseCertificate(der)
		if err != nil {
			return
		}
		direct := Verify(cert, stmt, sig)
		if cached := cache.Verify(cert, stmt, sig); (cached == nil) != (direct == nil) {
			t.Fatalf("the cache says %v where a fresh check says %v", cached, direct)
		}
		if st, err := Parse(stmt); err == nil {
			_ = Check(st, TypeApprove, s.Origin, s.Request, s.Content, "ok", t0)
		}
		if direct != nil {
			return
		}
		key, _ := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
		for _, v := range valid {
			if key != nil && key.Equal(v.key) && bytes.Equal(sig, v.sig) {
				if !bytes.Equal(stmt, want) {
					t.Fatalf("a signature verified over other bytes: %q", stmt)
				}
				return
			}
		}
		t.Fatalf("accepted a signature the test did not make: key %T, signature %x, statement %q", cert.PublicKey, sig, stmt)
	})
}
