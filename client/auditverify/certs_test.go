package auditverify

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/keyid"
	"github.com/bgbroker/breakglass/format/policy"
)

// An SSH certificate that outlives the account's ssh.max_ttl counted from
// its issuance is a violation even inside its grant: the broker never
// signs one, so only a forger (holding the HSM PIN) could have.
func TestCertificateWithinItsMaxTTL(t *testing.T) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	caPub, err := ssh.NewPublicKey(&caKey.PublicKey)
	must(err)
	caSigner, err := ssh.NewSignerFromKey(caKey)
	must(err)
	caKID, err := keyid.Thumbprint(&caKey.PublicKey)
	must(err)
	subject, _, err := ed25519.GenerateKey(rand.Reader)
	must(err)
	subjectPub, err := ssh.NewPublicKey(subject)
	must(err)

	for _, tc := range []struct {
		name string
		ttl  time.Duration // the certificate's validity from its issuance
		want string        // "" when it verifies
		// before, when set, is the certificate's valid_before as written.
		before uint64
	}{
		{"within ssh.max_ttl", 10 * time.Minute, "", 0},
		{"beyond ssh.max_ttl, inside the grant", 20 * time.Minute, "more than account prod-db's ssh.max_ttl", 0},
		// Forever reads as a time before 1970 once converted: it must not
		// pass for one before the grant's end, nor be forgotten at once
		// so that its serial could be issued again.
		{"valid forever", 0, "the certificate's validity is empty", ssh.CertTimeInfinity},
		{"valid until past what int64 holds", 0, "is not signed by a pinned SSH CA key", ^uint64(0) - 1_000_000_000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPasskeyLog(t)
			pol, err := policy.Load([]byte(`
groups: {sre: [alice], db: [bob, erin], owners: [olivia]}
accounts:
  - name: prod-db
    owner: owners
    requesters: [sre]
    audiences: [db.example]
    max_ttl: 1h
    approval_window: 30m
    activation_window: 10m
    quorum: [{require: [{group: db, approvals: 2}]}]
    ssh: {principals: [breakglass], max_ttl: 10m}
`), "policy.yaml")
			must(err)
			p.pol = pol
			p.drafts[0].Payload = audit.PolicyLoaded{Hash: pol.Hash(), Source: "policy.yaml", Policy: pol.CanonicalJSON(),
				Identity: audit.Identity{Mode: "uri", URIPrefix: fuzzURIPrefix}, Genesis: audit.GenesisUnsigned}
			id := p.request()
			p.certReview(id, "bob", "")
			p.certReview(id, "erin", "")
			p.approved(id)
			issued := p.now.Add(time.Second)
			from := p.times[len(p.times)-1].Truncate(time.Second)
			cert := &ssh.Certificate{Key: subjectPub, Serial: 7, CertType: ssh.UserCert, KeyId: "breakglass:" + id + ":1:alice",
				ValidPrincipals: []string{"breakglass"}, ValidAfter: uint64(from.Unix()), ValidBefore: uint64(issued.Add(tc.ttl).Truncate(time.Second).Unix()),
				Permissions: ssh.Permissions{CriticalOptions: map[string]string{}, Extensions: map[string]string{"permit-pty": ""}}}
			if tc.before != 0 {
				cert.ValidBefore = tc.before
			}
			must(cert.SignCert(rand.Reader, caSigner))
			p.add(audit.Draft{Type: audit.TypeSSHCertIssued, Actor: "alice", Request: id, Account: "prod-db", Payload: audit.SSHCertificateIssued{
				Serial: strconv.FormatUint(cert.Serial, 10), KeyID: cert.KeyId, CAKID: caKID, Principals: cert.ValidPrincipals,
				ValidAfter: time.Unix(int64(cert.ValidAfter), 0).UTC(), ValidBefore: time.Unix(int64(cert.ValidBefore), 0).UTC(),
				CriticalOptions: map[string]string{}, Extensions: []string{"permit-pty"}, SubjectKeySHA256: ssh.FingerprintSHA256(subjectPub),
				Certificate: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(cert))), Approvers: []string{"bob", "erin"}, Issuance: 1}})
			var head audit.Head
			var entries [][]byte
			for i, d := range p.drafts {
				rec, err := audit.Build(head, p.times[i], d)
				must(err)
				entries, head = append(entries, rec.Bytes), rec.Next()
			}
			cp, _ := p.l.checkpoint(entries)
			o := p.l.options(p.l.exportOf(entries), cp, nil)
			o.SSHCAKeys = []ssh.PublicKey{caPub}
			_, err = Verify(o)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("a certificate within ssh.max_ttl: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want a violation saying %q", err, tc.want)
			}
		})
	}
}
