package test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"

	"github.com/bgbroker/breakglass/client"
	"github.com/bgbroker/breakglass/client/auditverify"
	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/statement"
	"github.com/bgbroker/breakglass/hsm"
	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
	"github.com/bgbroker/breakglass/server/config"
	"github.com/bgbroker/breakglass/server/daemon"
	"github.com/bgbroker/breakglass/server/devmode"
)

// auditFiles is what an auditor takes home: the export, a checkpoint and
// the public keys.
type auditFiles struct {
	dir, log, checkpoint, auditKey, vkey, ca string
}

// exportAudit exports the log, the latest checkpoint and the keys as dave
// (the auditor), the way the README says.
func (d *devBroker) exportAudit(t *testing.T) *auditFiles {
	t.Helper()
	f := &auditFiles{dir: t.TempDir()}
	f.log, f.checkpoint, f.auditKey, f.vkey = filepath.Join(f.dir, "log.jsonl"), filepath.Join(f.dir, "checkpoint"), filepath.Join(f.dir, "audit.pem"), filepath.Join(f.dir, "checkpoint.vkey")
	f.ca = d.state("ca", "ca.crt")
	d.mustBgctl("dave", "audit", "export", "--out", f.log)
	write := func(p, s string) {
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(f.checkpoint, d.mustBgctl("dave", "audit", "checkpoint"))
	// The keys come from the key ceremony commands, not from the broker.
	write(f.auditKey, must(t, os.Environ(), bin.breakglassd, "hsm", "pubkey", "--config", d.state("config.yaml"), "--label", devmode.AuditKeyLabel))
	cfg, err := config.Load(d.state("config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	write(f.vkey, must(t, os.Environ(), bin.breakglassd, "hsm", "pubkey", "--config", d.state("config.yaml"), "--label", devmode.CheckpointKeyLabel,
		"--format", "note", "--note-name", cfg.Audit.Origin))
	return f
}

// verify runs `bgctl audit verify` (no broker needed) and returns exit code
// and output.
func (f *auditFiles) verify(t *testing.T, extra ...string) result {
	t.Helper()
	args := append([]string{"audit", "verify", "--log", f.log, "--checkpoint", f.checkpoint, "--audit-key", f.auditKey,
		"--checkpoint-key", f.vkey, "--client-ca", f.ca}, extra...)
	return runCmd(t, os.Environ(), "", bin.bgctl, args...)
}

func (f *auditFiles) lines(t *testing.T) []auditverify.Line {
	t.Helper()
	b, err := os.ReadFile(f.log)
	if err != nil {
		t.Fatal(err)
	}
	var out []auditverify.Line
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var x auditverify.Line
		if err := json.Unmarshal([]byte(l), &x); err != nil {
			t.Fatal(err)
		}
		out = append(out, x)
	}
	return out
}

// tampered writes lines as a new export next to the original.
func (f *auditFiles) tampered(t *testing.T, lines []auditverify.Line) *auditFiles {
	t.Helper()
	g := *f
	g.log = filepath.Join(t.TempDir(), "log.jsonl")
	var b bytes.Buffer
	for _, l := range lines {
		j, _ := json.Marshal(l)
		b.Write(append(j, '\n'))
	}
	if err := os.WriteFile(g.log, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return &g
}

// runFlow makes a full flow and a few more requests, returning ids.
func runFlow(t *testing.T, d *devBroker) (approved, pending string) {
	t.Helper()
	approved = d.createRequest("alice")
	d.mustBgctl("bob", "approve", approved, "--comment", "confirmed", "--yes")
	d.mustBgctl("erin", "approve", approved, "--yes")
	d.mustBgctl("alice", "token", approved, "--audience", "db.prod.example")
	pending = d.createRequest("alice")
	d.mustBgctl("bob", "approve", pending, "--yes")
	return approved, pending
}

// Outside tools accept what the broker produces: openssl verifies an entry
// signature against `hsm pubkey`, note.Open accepts the checkpoint with the
// printed verifier key, and proofs from the API verify with
// transparency-dev/merkle against checkpoint roots.
func TestAuditWithOutsideTools(t *testing.T) {
	d := startDev(t)
	runFlow(t, d)
	f := d.exportAudit(t)
	if r := f.verify(t); r.code != 0 || !strings.Contains(r.stdout, "audit log verifies") || !strings.Contains(r.stdout, "tokens 1\n  1 token(s) followed their quorum") {
		t.Fatalf("verify: %+v", r)
	}

	openssl := needTool(t, "openssl")
	lines := f.lines(t)
	for _, l := range lines {
		entry, sig := filepath.Join(f.dir, "entry.bin"), filepath.Join(f.dir, "sig.der")
		_ = os.WriteFile(entry, l.Entry, 0o600)
		_ = os.WriteFile(sig, l.Signature, 0o600)
		out := must(t, os.Environ(), openssl, "dgst", "-sha256", "-verify", f.auditKey, "-signature", sig, entry)
		if !strings.Contains(out, "Verified OK") {
			t.Fatalf("openssl on entry %d: %s", l.Index, out)
		}
		sum := sha256.Sum256(append([]byte{0}, l.Entry...))
		if l.LeafHash != hex.EncodeToString(sum[:]) {
			t.Fatalf("entry %d: leaf_hash %s is not SHA-256(0x00||entry)", l.Index, l.LeafHash)
		}
	}

	cpBytes, _ := os.ReadFile(f.checkpoint)
	vkeyBytes, _ := os.ReadFile(f.vkey)
	v, err := note.NewVerifier(strings.TrimSpace(string(vkeyBytes)))
	if err != nil {
		t.Fatal(err)
	}
	n, err := note.Open(cpBytes, note.VerifierList(v))
	if err != nil {
		t.Fatalf("note.Open: %v\n%s", err, cpBytes)
	}
	cp, _, _, err := log.ParseCheckpoint(cpBytes, v.Name(), v)
	if err != nil {
		t.Fatalf("formats/log: %v", err)
	}
	if !strings.HasPrefix(n.Text, v.Name()+"\n") || cp.Size != uint64(len(lines)) {
		t.Fatalf("checkpoint %q for %d entries", n.Text, len(lines))
	}

	c := d.client("dave")
	ctx := context.Background()
	for _, idx := range []uint64{0, 3, cp.Size - 1} {
		p, err := c.GetInclusionProof(ctx, &bgv1.GetInclusionProofRequest{Index: idx, TreeSize: cp.Size})
		if err != nil {
			t.Fatal(err)
		}
		if err := proof.VerifyInclusion(rfc6962.DefaultHasher, idx, cp.Size, audit.LeafHash(lines[idx].Entry), p.GetHashes(), cp.Hash); err != nil {
			t.Fatalf("inclusion of %d: %v", idx, err)
		}
	}
	// Grow the log; the new checkpoint is consistent with the old one.
	d.createRequest("alice")
	cp2resp, err := c.GetCheckpoint(ctx, &bgv1.GetCheckpointRequest{})
	if err != nil {
		t.Fatal(err)
	}
	cp2, _, _, err := log.ParseCheckpoint(cp2resp.GetCheckpoint(), v.Name(), v)
	if err != nil || cp2.Size != cp.Size+1 {
		t.Fatalf("GetCheckpoint after an append: %v size %d", err, cp2.Size)
	}
	cons, err := c.GetConsistencyProof(ctx, &bgv1.GetConsistencyProofRequest{FromSize: cp.Size, ToSize: cp2.Size})
	if err != nil {
		t.Fatal(err)
	}
	if err := proof.VerifyConsistency(rfc6962.DefaultHasher, cp.Size, cp2.Size, cons.GetHashes(), cp.Hash, cp2.Hash); err != nil {
		t.Fatalf("consistency: %v", err)
	}
	// bgctl prints the same proofs.
	var pj struct {
		Hashes   []string `json:"hashes"`
		TreeSize uint64   `json:"tree_size"`
	}
	if err := json.Unmarshal([]byte(d.mustBgctl("dave", "audit", "proof", "--index", "1", "--size", fmt.Sprint(cp.Size))), &pj); err != nil || pj.TreeSize != cp.Size {
		t.Fatalf("bgctl audit proof: %v", err)
	}
	var hs [][]byte
	for _, h := range pj.Hashes {
		b, _ := base64.StdEncoding.DecodeString(h)
		hs = append(hs, b)
	}
	if err := proof.VerifyInclusion(rfc6962.DefaultHasher, 1, cp.Size, audit.LeafHash(lines[1].Entry), hs, cp.Hash); err != nil {
		t.Fatalf("bgctl proof: %v", err)
	}

	// Entries are for auditors only; proofs and checkpoints for everyone.
	if _, err := d.client("alice").ListEntries(ctx, &bgv1.ListEntriesRequest{}); codeOf(err).String() != "PermissionDenied" {
		t.Errorf("alice ListEntries: %v", err)
	}
	if _, err := d.client("alice").GetCheckpoint(ctx, &bgv1.GetCheckpointRequest{}); err != nil {
		t.Errorf("alice GetCheckpoint: %v", err)
	}
	if _, err := c.GetInclusionProof(ctx, &bgv1.GetInclusionProofRequest{Index: 99, TreeSize: 5}); codeOf(err).String() != "OutOfRange" {
		t.Errorf("proof outside the tree: %v", err)
	}
}

// WatchEntries resumes from an index without gaps or duplicates.
func TestWatchEntriesResumes(t *testing.T) {
	d := startDev(t)
	c := d.client("dave")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	recv := func(start uint64, n int) []uint64 {
		sctx, scancel := context.WithCancel(ctx)
		defer scancel()
		st, err := c.WatchEntries(sctx, &bgv1.WatchEntriesRequest{Start: start})
		if err != nil {
			t.Fatal(err)
		}
		var got []uint64
		for len(got) < n {
			m, err := st.Recv()
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, m.GetEntry().GetIndex())
		}
		return got
	}
	d.createRequest("alice")
	info, err := c.GetLogInfo(ctx, &bgv1.GetLogInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	n := info.GetSize()
	first := recv(0, int(n))
	created := make(chan struct{})
	streams := d.streamsStarted(t, "WatchEntries")
	go func() {
		defer close(created)
		// Once the next stream is open and waiting (t.Fatal is not for
		// this goroutine: a stream that never opens fails recv below).
		eventually(30*time.Second, func() bool { return d.streamsStarted(t, "WatchEntries") > streams })
		_, _ = d.client("alice").CreateRequest(ctx, &bgv1.CreateRequestRequest{Account: "prod-db", Justification: "while the stream waits"})
	}()
	second := recv(first[len(first)-1]+1, 1)
	<-created
	for i, idx := range first {
		if idx != uint64(i) {
			t.Fatalf("first stream %v", first)
		}
	}
	if second[0] != n {
		t.Fatalf("resumed at %d, got %v", n, second)
	}
	if _, err := d.client("bob").WatchEntries(ctx, &bgv1.WatchEntriesRequest{}); err == nil {
		st, _ := d.client("bob").WatchEntries(ctx, &bgv1.WatchEntriesRequest{})
		if _, err := st.Recv(); codeOf(err).String() != "PermissionDenied" {
			t.Errorf("bob WatchEntries: %v", err)
		}
	}
}

// forger holds the HSM keys the way an insider with the PIN would, to build
// logs that pass every cryptographic check, so that the lifecycle replay is
// what must catch them.
type forger struct {
	t      *testing.T
	m      *hsm.Module
	audit  *hsm.Key
	cp     *hsm.NoteSigner
	origin string
}

func newForger(t *testing.T, d *devBroker) *forger {
	t.Helper()
	cfg, err := config.Load(d.state("config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	prev := os.Getenv("SOFTHSM2_CONF")
	t.Cleanup(func() { os.Setenv("SOFTHSM2_CONF", prev) })
	m, err := hsm.Open(context.Background(), daemon.HSMConfig(cfg.HSM), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	ak, err := m.Signer(context.Background(), devmode.AuditKeyLabel, hsm.PurposeAudit)
	if err != nil {
		t.Fatal(err)
	}
	ck, err := m.Signer(context.Background(), devmode.CheckpointKeyLabel, hsm.PurposeCheckpoint)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := hsm.NewNoteSigner(context.Background(), ck, cfg.Audit.Origin)
	if err != nil {
		t.Fatal(err)
	}
	return &forger{t: t, m: m, audit: ak, cp: ns, origin: cfg.Audit.Origin}
}

// rebuild re-chains and re-signs the entries (given as parsed entries) and
// signs a checkpoint over them.
func (fg *forger) rebuild(f *auditFiles, entries []*audit.Entry) *auditFiles {
	fg.t.Helper()
	var lines []auditverify.Line
	prev := audit.ZeroPrev
	rf := compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}
	cr := rf.NewEmptyRange(0)
	for i, e := range entries {
		e.Index, e.Prev = uint64(i), hex.EncodeToString(prev)
		b, err := json.Marshal(e)
		if err != nil {
			fg.t.Fatal(err)
		}
		rec := audit.Record{Bytes: b}
		if err := audit.Sign(context.Background(), fg.audit, "forged", &rec); err != nil {
			fg.t.Fatal(err)
		}
		lines = append(lines, auditverify.ExportLine(uint64(i), b, rec.Signature, "forged"))
		prev = audit.LeafHash(b)
		_ = cr.Append(prev, nil)
	}
	root, _ := cr.GetRootHash(nil)
	body := log.Checkpoint{Origin: fg.origin, Size: uint64(len(entries)), Hash: root}.Marshal()
	signed, err := note.Sign(&note.Note{Text: string(body)}, fg.cp)
	if err != nil {
		fg.t.Fatal(err)
	}
	g := f.tampered(fg.t, lines)
	g.checkpoint = filepath.Join(fg.t.TempDir(), "checkpoint")
	_ = os.WriteFile(g.checkpoint, signed, 0o600)
	return g
}

func parsed(t *testing.T, lines []auditverify.Line) []*audit.Entry {
	var out []*audit.Entry
	for _, l := range lines {
		e, err := audit.Parse(l.Entry)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	return out
}

func indexOf(entries []*audit.Entry, typ audit.Type, nth int) int {
	for i, e := range entries {
		if e.Type == typ {
			if nth == 0 {
				return i
			}
			nth--
		}
	}
	return -1
}

// Every way of tampering with the log is caught, at the right entry and
// for the right reason.
func TestAuditTampering(t *testing.T) {
	d := startDev(t)
	approvedID, pendingID := runFlow(t, d)
	f := d.exportAudit(t)
	if r := f.verify(t); r.code != 0 {
		t.Fatalf("the untouched log does not verify: %+v", r)
	}
	orig := f.lines(t)
	clone := func() []auditverify.Line {
		out := make([]auditverify.Line, len(orig))
		for i, l := range orig {
			l.Entry = bytes.Clone(l.Entry)
			l.Signature = bytes.Clone(l.Signature)
			out[i] = l
		}
		return out
	}
	entries := parsed(t, orig)
	firstReview := indexOf(entries, audit.TypeRequestReviewed, 0)
	tokenIdx := indexOf(entries, audit.TypeTokenIssued, 0)

	// An outside checkpoint key: someone else's log.
	otherCP := filepath.Join(t.TempDir(), "other.note")
	{
		s, _, err := note.GenerateKey(nil, f.vkeyName(t))
		if err != nil {
			t.Fatal(err)
		}
		signer, _ := note.NewSigner(s)
		cpb, _ := os.ReadFile(f.checkpoint)
		n, _ := note.Open(cpb, note.VerifierList())
		text := ""
		if n != nil {
			text = n.Text
		} else {
			text = strings.SplitN(string(cpb), "\n\n", 2)[0] + "\n"
		}
		forged, _ := note.Sign(&note.Note{Text: text}, signer)
		_ = os.WriteFile(otherCP, forged, 0o600)
	}

	fg := newForger(t, d)
	reviewOf := func(mod func(e *audit.Entry, p *audit.RequestReviewed)) []*audit.Entry {
		es := parsed(t, orig)
		var p audit.RequestReviewed
		_ = json.Unmarshal(es[firstReview].Payload, &p)
		mod(es[firstReview], &p)
		es[firstReview].Payload, _ = json.Marshal(p)
		return es
	}
	signStatement := func(principal string, st statement.Statement) ([]byte, []byte, []byte) {
		ca := d.devCA()
		cert, key, err := ca.Issue(devmode.LeafOptions{CommonName: principal, URIs: []string{devmode.URIPrefix + principal}})
		if err != nil {
			t.Fatal(err)
		}
		sig, err := statement.Sign(key, st.Marshal())
		if err != nil {
			t.Fatal(err)
		}
		return st.Marshal(), sig, cert.Raw
	}
	statementOf := func(p *audit.RequestReviewed) statement.Statement {
		st, err := statement.Parse(p.Statement)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}

	tests := []struct {
		name  string
		files func() *auditFiles
		index int
		why   string
		extra []string
	}{
		{"one byte of one entry flipped", func() *auditFiles {
			ls := clone()
			ls[3].Entry[len(ls[3].Entry)/2] ^= 0x01
			return f.tampered(t, ls)
		}, 3, "signature does not verify", nil},
		{"an entry deleted", func() *auditFiles {
			ls := clone()
			ls = append(ls[:4], ls[5:]...)
			for i := 4; i < len(ls); i++ {
				ls[i].Index = uint64(i) // hide the gap in the export's own numbering
			}
			return f.tampered(t, ls)
		}, 4, "says it is entry 5", nil},
		{"two entries swapped", func() *auditFiles {
			ls := clone()
			ls[2], ls[3] = ls[3], ls[2]
			ls[2].Index, ls[3].Index = 2, 3
			return f.tampered(t, ls)
		}, 2, "says it is entry 3", nil},
		{"tail truncated below the checkpoint", func() *auditFiles {
			return f.tampered(t, clone()[:len(orig)-2])
		}, len(orig) - 2, "checkpoint covers", nil},
		{"two signatures swapped", func() *auditFiles {
			ls := clone()
			ls[1].Signature, ls[2].Signature = ls[2].Signature, ls[1].Signature
			return f.tampered(t, ls)
		}, 1, "signature does not verify", nil},
		{"checkpoint signed by another key", func() *auditFiles {
			g := *f
			g.checkpoint = otherCP
			return &g
		}, -1, "checkpoint", nil},
		{"review replaced by one signed by a non-approver", func() *auditFiles {
			return fg.rebuild(f, reviewOf(func(e *audit.Entry, p *audit.RequestReviewed) {
				st := statementOf(p)
				e.Actor = "dave"
				p.Statement, p.Signature, p.Certificate = signStatement("dave", st)
			}))
		}, firstReview, "dave is not an eligible approver", nil},
		{"review replayed from another request", func() *auditFiles {
			return fg.rebuild(f, reviewOf(func(e *audit.Entry, p *audit.RequestReviewed) {
				st := statementOf(p)
				st.Request = pendingID
				p.Statement, p.Signature, p.Certificate = signStatement(e.Actor, st)
			}))
		}, firstReview, "is for request " + pendingID, nil},
		{"review replayed from another deployment", func() *auditFiles {
			return fg.rebuild(f, reviewOf(func(e *audit.Entry, p *audit.RequestReviewed) {
				st := statementOf(p)
				st.Origin = "other.example/breakglass"
				p.Statement, p.Signature, p.Certificate = signStatement(e.Actor, st)
			}))
		}, firstReview, "is for log", nil},
		{"review statement over altered content", func() *auditFiles {
			return fg.rebuild(f, reviewOf(func(e *audit.Entry, p *audit.RequestReviewed) {
				st := statementOf(p)
				st.Content = statement.Content{ID: approvedID, Justification: "something else"}.Digest()
				p.Statement, p.Signature, p.Certificate = signStatement(e.Actor, st)
			}))
		}, firstReview, "other content", nil},
		{"token issuance injected without quorum", func() *auditFiles {
			es := parsed(t, orig)
			inj := *es[tokenIdx]
			inj.Request = pendingID
			var p audit.TokenIssued
			_ = json.Unmarshal(inj.Payload, &p)
			p.JTI = "0b3c4d5e-0000-4000-8000-00000000beef"
			inj.Payload, _ = json.Marshal(p)
			inj.Time = es[len(es)-1].Time.Add(time.Millisecond)
			return fg.rebuild(f, append(es, &inj))
		}, len(orig), "which is PENDING, not an approved grant", nil},
		{"approval injected without quorum", func() *auditFiles {
			es := parsed(t, orig)
			appr := *es[indexOf(es, audit.TypeRequestApproved, 0)]
			appr.Request = pendingID
			appr.Time = es[len(es)-1].Time.Add(time.Millisecond)
			return fg.rebuild(f, append(es, &appr))
		}, len(orig), "approved without its quorum", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := tc.files()
			r := g.verify(t, append([]string{"-o", "json"}, tc.extra...)...)
			if r.code == 0 {
				t.Fatalf("the tampered log verifies: %s", r.stdout)
			}
			var out struct {
				Index  int    `json:"index"`
				Reason string `json:"reason"`
			}
			if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
				t.Fatalf("output %q: %v", r.stdout, err)
			}
			if out.Index != tc.index || !strings.Contains(out.Reason, tc.why) {
				t.Fatalf("caught at %d (%s), want %d (%q)", out.Index, out.Reason, tc.index, tc.why)
			}
		})
	}
}

// Every violation is reported, not only the first: a change to one entry
// after an unrelated earlier violation is caught at its own index.
func TestAuditReportsEveryViolation(t *testing.T) {
	d := startDev(t)
	runFlow(t, d)
	f := d.exportAudit(t)
	ls := f.lines(t)
	last := len(ls) - 1
	ls[1].Signature = nil                                                                        // taken before the HSM signed it
	ls[last].Entry = bytes.Replace(ls[last].Entry, []byte(`"actor":"`), []byte(`"actor":"x`), 1) // and, later, a changed entry
	r := f.tampered(t, ls).verify(t, "-o", "json")
	var out struct {
		Violations []struct {
			Index  int    `json:"index"`
			Reason string `json:"reason"`
		} `json:"violations"`
		Count int `json:"count"`
	}
	if r.code != 1 || json.Unmarshal([]byte(r.stdout), &out) != nil {
		t.Fatalf("verify: %+v", r)
	}
	got := map[int]string{}
	for _, v := range out.Violations {
		got[v.Index] += v.Reason + "; "
	}
	if !strings.Contains(got[1], "not signed") || !strings.Contains(got[last], "signature does not verify") || out.Count != len(out.Violations) {
		t.Fatalf("violations %+v", out)
	}
	r = f.tampered(t, ls).verify(t)
	if r.code != 1 || !strings.Contains(r.stderr, fmt.Sprintf("%d violation(s)", out.Count)) || !strings.Contains(r.stderr, "entry 1: ") ||
		!strings.Contains(r.stderr, fmt.Sprintf("entry %d: ", last)) {
		t.Fatalf("verify for people: %+v", r)
	}
}

// A CRL revokes a certificate from its revocation time on: reviews signed
// before it stay valid (bgctl audit verify --crl), and a CRL not signed by
// the client CA is refused.
func TestAuditVerifyWithCRL(t *testing.T) {
	d := startDev(t)
	runFlow(t, d)
	f := d.exportAudit(t)
	bobPEM, err := os.ReadFile(d.state("identities", "bob.crt"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(bobPEM)
	bob, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	// Revoked after every review of the flow (a CRL's times are to the
	// second).
	ca := d.devCA()
	at := time.Now().Add(2 * time.Second)
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(2), ThisUpdate: at, NextUpdate: at.Add(time.Hour),
		RevokedCertificateEntries: []x509.RevocationListEntry{{SerialNumber: bob.SerialNumber, RevocationTime: at}}}, ca.Cert, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	crl := pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})
	crlFile := filepath.Join(t.TempDir(), "crl.pem")
	if err := os.WriteFile(crlFile, crl, 0o600); err != nil {
		t.Fatal(err)
	}
	if r := f.verify(t, "--crl", crlFile); r.code != 0 {
		t.Fatalf("reviews signed before bob's certificate was revoked are refused: %+v", r)
	}
	other, err := devmode.NewCA("another CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := other.CRL(1, bob.SerialNumber)
	if err != nil {
		t.Fatal(err)
	}
	_ = os.WriteFile(crlFile, foreign, 0o600)
	if r := f.verify(t, "--crl", crlFile); r.code == 0 || !strings.Contains(r.stderr, "not a CRL signed by") {
		t.Fatalf("a CRL from another CA: %+v", r)
	}
}

func (f *auditFiles) vkeyName(t *testing.T) string {
	b, err := os.ReadFile(f.vkey)
	if err != nil {
		t.Fatal(err)
	}
	return strings.SplitN(strings.TrimSpace(string(b)), "+", 2)[0]
}

// A database rolled back to an earlier copy is caught against a checkpoint
// taken before the rollback.
func TestAuditRollbackIsCaught(t *testing.T) {
	d := startDev(t)
	d.createRequest("alice")
	d.stop()
	backup := t.TempDir()
	for _, n := range []string{"broker.db", "broker.db-wal", "broker.db-shm"} {
		if b, err := os.ReadFile(d.state(n)); err == nil {
			_ = os.WriteFile(filepath.Join(backup, n), b, 0o600)
		}
	}
	d.start()
	id := d.createRequest("alice")
	d.mustBgctl("alice", "cancel", id, "--reason", "the grant the operator wants to forget")
	before := d.exportAudit(t) // the SOC keeps this checkpoint
	d.stop()
	for _, n := range []string{"broker.db", "broker.db-wal", "broker.db-shm"} {
		_ = os.Remove(d.state(n))
		if b, err := os.ReadFile(filepath.Join(backup, n)); err == nil {
			_ = os.WriteFile(d.state(n), b, 0o600)
		}
	}
	d.start()
	d.createRequest("alice")
	d.createRequest("alice")
	d.createRequest("alice")
	after := d.exportAudit(t)
	if r := after.verify(t); r.code != 0 {
		t.Fatalf("the rolled-back log on its own verifies, as it should: %+v", r)
	}
	r := after.verify(t, "--previous-checkpoint", before.checkpoint)
	if r.code == 0 || !strings.Contains(r.stderr, "previous checkpoint") {
		t.Fatalf("rollback not caught: %+v", r)
	}
}

// kill -9 at random moments under concurrent flows (create, two signed
// approvals, token), restarting each time: every call that returned
// success is in the log, and the log verifies, which replays every grant
// and token against the quorum its approvers signed.
func TestCrashSafety(t *testing.T) {
	d := startDev(t)
	type ack struct {
		index uint64
		leaf  []byte
	}
	var (
		mu   sync.Mutex
		acks []ack
	)
	record := func(e *bgv1.AuditRef) {
		mu.Lock()
		acks = append(acks, ack{e.GetIndex(), e.GetLeafHash()})
		mu.Unlock()
	}
	rounds := 20
	if testing.Short() {
		rounds = 3
	}
	for round := range rounds {
		ctx, cancel := context.WithCancel(context.Background())
		alice, bob, erin := d.client("alice"), d.client("bob"), d.client("erin")
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ctx.Err() == nil; i++ {
					c, err := alice.CreateRequest(ctx, &bgv1.CreateRequestRequest{Account: "prod-db", Justification: fmt.Sprintf("round %d worker %d op %d", round, w, i)})
					if err != nil {
						continue
					}
					record(c.GetEntry())
					ok := true
					for _, rv := range []*client.Client{bob, erin} {
						r, err := rv.Review(ctx, c.GetRequest(), bgv1.ReviewDecision_REVIEW_DECISION_APPROVE, "")
						if err != nil {
							ok = false
							break
						}
						record(r.GetEntry())
					}
					if !ok {
						continue
					}
					if tok, err := alice.IssueToken(ctx, &bgv1.IssueTokenRequest{RequestId: c.GetRequest().GetId(), Audience: "db.prod.example"}); err == nil {
						record(tok.GetEntry())
					}
				}
			}()
		}
		time.Sleep(time.Duration(50+mrand.IntN(400)) * time.Millisecond)
		d.kill()
		cancel()
		wg.Wait()
		for _, c := range []*client.Client{alice, bob, erin} {
			_ = c.Close()
		}
		d.start()
	}
	f := d.exportAudit(t)
	if r := f.verify(t); r.code != 0 {
		t.Fatalf("after %d kill -9: %+v", rounds, r)
	}
	lines := f.lines(t)
	for _, a := range acks {
		if a.index >= uint64(len(lines)) || !bytes.Equal(audit.LeafHash(lines[a.index].Entry), a.leaf) {
			t.Fatalf("acknowledged entry %d is missing or different after kill -9", a.index)
		}
	}
	if len(acks) == 0 {
		t.Fatal("no call succeeded")
	}
	t.Logf("%d kill -9 under concurrent flows, %d acknowledged writes, all present; log of %d entries verifies", rounds, len(acks), len(lines))
}
