package test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"google.golang.org/grpc/codes"

	"github.com/bgbroker/breakglass/format/krl"
	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
)

// While the HSM cannot sign, no certificate is issued and nothing is
// written, but revoking a grant still revokes its certificates: the KRL
// (which needs no signature) lists them at once, health reports the CRL as
// stale, and when the HSM is back the CRL is re-signed with them by itself.
func TestRevocationListsWhileTheHSMIsDown(t *testing.T) {
	f := startFaultyHSM(t, "2s")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	alice := f.client("alice")
	id := f.grantFor("30m")
	sshKey := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(mustSSHPub(t))))
	sc, err := alice.IssueSSHCertificate(ctx, &bgv1.IssueSSHCertificateRequest{RequestId: id, PublicKey: sshKey})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	xc, err := alice.IssueX509Certificate(ctx, &bgv1.IssueX509CertificateRequest{RequestId: id, Csr: csr})
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode([]byte(xc.GetCertificatePem()))
	xcert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}

	f.set("fail")
	f.waitHealth("NOT_SERVING")
	size := f.logSize(ctx)
	if _, err := alice.IssueSSHCertificate(ctx, &bgv1.IssueSSHCertificateRequest{RequestId: id, PublicKey: sshKey}); codeOf(err) != codes.Unavailable {
		t.Errorf("SSH certificate with the HSM failing: %v", err)
	}
	if _, err := alice.IssueX509Certificate(ctx, &bgv1.IssueX509CertificateRequest{RequestId: id, Csr: csr}); codeOf(err) != codes.Unavailable && codeOf(err) != codes.FailedPrecondition {
		t.Errorf("X.509 certificate with the HSM failing: %v", err)
	}
	if got := f.logSize(ctx); got != size {
		t.Fatalf("refused issuances wrote %d entries", got-size)
	}
	if _, err := alice.RevokeGrant(ctx, &bgv1.RevokeGrantRequest{RequestId: id, Reason: "done, HSM or not"}); err != nil {
		t.Fatalf("revocation with the HSM failing: %v", err)
	}
	pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(sc.GetCertificate()))
	if err != nil {
		t.Fatal(err)
	}
	k, err := krl.Parse(f.fetch(t, "/ssh/revoked.krl"))
	if err != nil || !k.IsRevoked(pk) {
		t.Fatalf("the KRL does not list the revoked certificate while the HSM is down: %v", err)
	}
	stale := func() string {
		for name, v := range f.health(t).Checks {
			if strings.HasPrefix(name, "x509_crl:") {
				return v
			}
		}
		return ""
	}
	if !eventually(30*time.Second, func() bool { return strings.Contains(stale(), "not in it yet") }) {
		t.Fatalf("health does not report the stale CRL: %+v", f.health(t))
	}
	if crlLists(t, f.fetch(t, "/x509/crl.pem"), xcert) {
		t.Fatal("the CRL lists the certificate although the HSM could not sign")
	}

	f.set("ok")
	f.waitHealth("SERVING")
	if !eventually(30*time.Second, func() bool { return crlLists(t, f.fetch(t, "/x509/crl.pem"), xcert) }) {
		t.Fatal("the CRL was not re-signed with the revocation once the HSM was back")
	}
	if s := stale(); s != "" {
		t.Fatalf("health still says %q", s)
	}
	// And certificates are issued again.
	id2 := f.grantFor("30m")
	if _, err := alice.IssueX509Certificate(ctx, &bgv1.IssueX509CertificateRequest{RequestId: id2, Csr: csr}); err != nil {
		t.Fatalf("X.509 issuance after the HSM returned: %v", err)
	}
}
