package storetest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/bgbroker/breakglass/server/store"
)

// testCertificates: certificates are recorded once per CA and serial,
// revoked with their grant (or their CA key) in one transaction that
// advances the revocation state, and listed until they expire; CRLs are
// kept per CA key.
func testCertificates(t *testing.T, s store.Store) {
	ctx := context.Background()
	cert := func(kind, ca, serial, req string, exp time.Duration) *store.CertRecord {
		return &store.CertRecord{Kind: kind, CAKID: ca, Serial: serial, RequestID: req, Account: "prod-db", Subject: "alice",
			IssuedAt: t0, NotBefore: t0, ExpiresAt: t0.Add(exp), Fingerprint: "SHA256:x", EntryIndex: 3}
	}
	err := s.Update(ctx, func(tx store.Tx) error {
		for _, id := range []string{"r1", "r2"} {
			if err := tx.CreateRequest(ctx, newRequest(id, t0)); err != nil {
				return err
			}
		}
		for _, c := range []*store.CertRecord{
			cert(store.CertSSH, "ca1", "11", "r1", time.Hour), cert(store.CertSSH, "ca1", "12", "r1", time.Minute),
			cert(store.CertX509, "xa", "99", "r1", time.Hour), cert(store.CertSSH, "ca1", "13", "r2", time.Hour),
			cert(store.CertSSH, "ca2", "11", "r2", 2*time.Hour), // the same serial under another CA
		} {
			if err := tx.AddCertificate(ctx, c); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Update(ctx, func(tx store.Tx) error {
		return tx.AddCertificate(ctx, cert(store.CertSSH, "ca1", "11", "r2", time.Hour))
	}); !errors.Is(err, store.ErrConflict) {
		t.Errorf("a serial used twice by one CA: %v", err)
	}
	var n int
	if err := s.Update(ctx, func(tx store.Tx) (err error) {
		n, err = tx.RevokeCertificates(ctx, "r1", "", t0.Add(time.Second))
		return
	}); err != nil || n != 3 {
		t.Fatalf("revoking r1: %d, %v", n, err)
	}
	// Revoking again changes nothing and does not advance the state.
	if err := s.Update(ctx, func(tx store.Tx) (err error) {
		n, err = tx.RevokeCertificates(ctx, "r1", "", t0.Add(2*time.Second))
		return
	}); err != nil || n != 0 {
		t.Fatalf("revoking r1 again: %d, %v", n, err)
	}
	_ = s.View(ctx, func(r store.Reader) error {
		st, err := r.Revocations(ctx)
		if err != nil || st.Generation != 1 || !st.At.Equal(t0.Add(time.Second)) {
			t.Errorf("revocation state %+v, %v", st, err)
		}
		ssh, err := r.RevokedCertificates(ctx, store.CertSSH, t0.Add(2*time.Minute))
		if err != nil || len(ssh) != 1 || ssh[0].Serial != "11" || !ssh[0].RevokedAt.Equal(t0.Add(time.Second)) {
			t.Errorf("revoked ssh certificates after 2m: %+v, %v", ssh, err)
		}
		x, err := r.RevokedCertificates(ctx, store.CertX509, t0)
		if err != nil || len(x) != 1 || x[0].CAKID != "xa" {
			t.Errorf("revoked x509 certificates: %+v, %v", x, err)
		}
		last, err := r.LastCertificateExpiry(ctx, "ca1")
		if err != nil || !last.Equal(t0.Add(time.Hour)) {
			t.Errorf("last expiry %s, %v", last, err)
		}
		if none, err := r.LastCertificateExpiry(ctx, "nobody"); err != nil || !none.IsZero() {
			t.Errorf("last expiry of an unused CA %s, %v", none, err)
		}
		rc, err := r.RequestCertificates(ctx, "r2")
		if err != nil || len(rc) != 2 {
			t.Errorf("request certificates %+v, %v", rc, err)
		}
		if _, err := r.CRL(ctx, "xa"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("CRL before any: %v", err)
		}
		return nil
	})
	// Retiring a CA key with revocation revokes its unexpired certificates.
	if err := s.Update(ctx, func(tx store.Tx) (err error) {
		n, err = tx.RevokeCertificates(ctx, "", "ca2", t0.Add(time.Minute))
		return
	}); err != nil || n != 1 {
		t.Fatalf("revoking ca2: %d, %v", n, err)
	}
	crl := store.CRLRecord{CAKID: "xa", Number: 1, ThisUpdate: t0, NextUpdate: t0.Add(time.Hour), DER: []byte{1, 2}}
	for i := range 2 {
		crl.Number = uint64(i + 1)
		if err := s.Update(ctx, func(tx store.Tx) error { return tx.PutCRL(ctx, crl) }); err != nil {
			t.Fatal(err)
		}
	}
	_ = s.View(ctx, func(r store.Reader) error {
		got, err := r.CRL(ctx, "xa")
		if err != nil || got.Number != 2 || string(got.DER) != "\x01\x02" || !got.NextUpdate.Equal(t0.Add(time.Hour)) {
			t.Errorf("CRL %+v, %v", got, err)
		}
		st, _ := r.Revocations(ctx)
		if st.Generation != 2 {
			t.Errorf("generation %d after revoking a CA key", st.Generation)
		}
		return nil
	})
}
