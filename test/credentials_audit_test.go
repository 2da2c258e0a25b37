package test

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/hsm"
	"github.com/bgbroker/breakglass/server/devmode"
	"github.com/bgbroker/breakglass/server/sshca"
)

// The offline verifier replays certificates like tokens: a log with SSH
// and X.509 certificates verifies against the pinned CAs, and one where a
// certificate outlives its grant, names a principal the policy did not
// allow, or was issued before the quorum, is refused at that entry. The
// forger holds the HSM PIN (the verifier's adversary), so every forged
// certificate is signed by the real CA key and every entry re-signed.
func TestAuditVerifiesCertificates(t *testing.T) {
	d := startDev(t)
	id := d.grantFor("30m")
	dir := t.TempDir()
	_, pub := sshKey(t, dir)
	d.mustBgctl("alice", "ssh-cert", id, "--public-key", pub)
	d.mustBgctl("alice", "x509-cert", id, "--key-out", filepath.Join(dir, "k.pem"), "--out", filepath.Join(dir, "c.pem"))
	f := d.exportAudit(t)
	sshCA, x509CA := filepath.Join(f.dir, "ssh_ca.pub"), filepath.Join(f.dir, "x509_ca.pem")
	write(t, sshCA, d.fetch(t, "/ssh/ca.pub"))
	write(t, x509CA, d.fetch(t, "/x509/ca.pem"))
	pins := []string{"--ssh-ca-key", sshCA, "--x509-ca-cert", x509CA}
	r := f.verify(t, pins...)
	if r.code != 0 || !strings.Contains(r.stdout, "certificates: SSH 1, X.509 1") {
		t.Fatalf("the log with certificates: %+v", r)
	}
	if r := f.verify(t); r.code != 1 || !strings.Contains(r.stderr, "give the SSH CA keys (--ssh-ca-key)") {
		t.Fatalf("without the pinned CA: %+v", r)
	}

	fg := newForger(t, d)
	caKey, err := fg.m.Signer(context.Background(), devmode.SSHCAKeyLabel, hsm.PurposeSSHCA)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := sshca.New(caKey)
	if err != nil {
		t.Fatal(err)
	}
	entries := parsed(t, f.lines(t))
	sshIdx := indexOf(entries, audit.TypeSSHCertIssued, 0)
	approvedIdx := indexOf(entries, audit.TypeRequestApproved, 0)
	var orig audit.SSHCertificateIssued
	if err := json.Unmarshal(entries[sshIdx].Payload, &orig); err != nil {
		t.Fatal(err)
	}
	pk, _, _, _, _ := ssh.ParseAuthorizedKey([]byte(orig.Certificate))
	cert := pk.(*ssh.Certificate)
	// reissue signs a changed copy of the certificate with the real CA key
	// and puts it, described truthfully, into the entry.
	reissue := func(edit func(*sshca.Request)) []*audit.Entry {
		rq := sshca.Request{Key: cert.Key, Serial: cert.Serial, KeyID: cert.KeyId, Principals: cert.ValidPrincipals,
			ValidAfter: time.Unix(int64(cert.ValidAfter), 0), ValidBefore: time.Unix(int64(cert.ValidBefore), 0),
			CriticalOptions: cert.CriticalOptions, Extensions: orig.Extensions}
		edit(&rq)
		c, err := ca.Sign(context.Background(), rq)
		if err != nil {
			t.Fatal(err)
		}
		p := orig
		p.Principals, p.ValidAfter, p.ValidBefore = c.ValidPrincipals, rq.ValidAfter.UTC(), rq.ValidBefore.UTC()
		p.Certificate = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(c)))
		out := parsed(t, f.lines(t))
		if out[sshIdx].Payload, err = json.Marshal(p); err != nil {
			t.Fatal(err)
		}
		return out
	}
	cases := []struct {
		name    string
		entries []*audit.Entry
		want    string
	}{
		{"outlives its grant", reissue(func(r *sshca.Request) { r.ValidBefore = r.ValidBefore.Add(time.Hour) }), "after its grant ends"},
		{"a principal the policy did not allow", reissue(func(r *sshca.Request) { r.Principals = []string{"root"} }), `names principal "root"`},
		{"before the quorum", func() []*audit.Entry {
			e := parsed(t, f.lines(t))
			moved := e[sshIdx]
			e = append(e[:sshIdx], e[sshIdx+1:]...)
			moved.Time = e[approvedIdx-1].Time
			return append(e[:approvedIdx], append([]*audit.Entry{moved}, e[approvedIdx:]...)...)
		}(), "which is PENDING, not an approved grant"},
	}
	for _, c := range cases {
		g := fg.rebuild(f, c.entries)
		r := g.verify(t, pins...)
		if r.code != 1 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("%s: %+v, want %q", c.name, r, c.want)
		}
	}
}
