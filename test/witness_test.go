package test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/torchwood"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/mod/sumdb/note"

	"github.com/bgbroker/breakglass/format/cosignature"
	"github.com/bgbroker/breakglass/server/config"
	"github.com/bgbroker/breakglass/server/devmode"
	"github.com/bgbroker/breakglass/server/witness/witnesstest"
)

// witnessedBroker is a dev broker whose checkpoints go to two real
// litewitness processes, each with its key in its own ssh-agent.
type witnessedBroker struct {
	*devBroker
	origin, logKey string
	w1, w2         *witnesstest.Witness
}

// startWitnessed starts a dev broker, registers its log with two new
// witnesses (witnessctl add-log, add-key), and restarts it with them in
// audit.witnesses and the extra audit settings given.
func startWitnessed(t *testing.T, audit string) *witnessedBroker {
	t.Helper()
	d := startDev(t)
	cfg, err := config.Load(d.state("config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	wb := &witnessedBroker{devBroker: d, origin: cfg.Audit.Origin}
	wb.logKey = strings.TrimSpace(must(t, os.Environ(), bin.breakglassd, "hsm", "pubkey", "--config", d.state("config.yaml"),
		"--label", devmode.CheckpointKeyLabel, "--format", "note", "--note-name", wb.origin))
	wb.w1 = witnesstest.Start(t, "witness.test/w1", wb.origin, wb.logKey)
	wb.w2 = witnesstest.Start(t, "witness.test/w2", wb.origin, wb.logKey)
	d.stop()
	b, err := os.ReadFile(d.state("config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	at := "audit:\n  origin: " + wb.origin + "\n"
	if !strings.Contains(string(b), at) {
		t.Fatalf("dev config has no %q", at)
	}
	ws := fmt.Sprintf("  witnesses:\n    - {name: w1, url: %q, key: %q}\n    - {name: w2, url: %q, key: %q}\n%s",
		wb.w1.URL, wb.w1.VKey, wb.w2.URL, wb.w2.VKey, audit)
	if err := os.WriteFile(d.state("config.yaml"), []byte(strings.Replace(string(b), at, at+ws, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	d.start()
	return wb
}

type healthz struct {
	Checks    map[string]string `json:"checks"`
	Witnesses []struct {
		Name         string    `json:"name"`
		CosignedSize uint64    `json:"cosigned_size"`
		CosignedAt   time.Time `json:"cosigned_at"`
		AgeSeconds   int64     `json:"age_seconds"`
		LastError    string    `json:"last_error"`
		SplitView    string    `json:"split_view"`
	} `json:"witnesses"`
}

func (d *devBroker) healthz(t *testing.T) healthz {
	t.Helper()
	resp, err := d.httpClient().Get("https://" + d.ready.HTTPS + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var h healthz
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		t.Fatal(err)
	}
	return h
}

func (d *devBroker) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := d.httpClient().Get("https://" + d.ready.HTTPS + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// verifyCosignature opens the note as a note-style verifier would, with
// only the witness's published key.
func verifyCosignature(t *testing.T, signed []byte, w *witnesstest.Witness) {
	t.Helper()
	k, err := cosignature.ParseKey(w.VKey)
	if err != nil {
		t.Fatal(err)
	}
	n, err := note.Open(signed, note.VerifierList(k.Verifier()))
	if err != nil {
		t.Fatalf("%s's cosignature does not verify: %v\n%s", w.Name, err, signed)
	}
	if ts, err := torchwood.CosignatureTimestamp(n.Sigs[0]); err != nil || ts == 0 {
		t.Fatalf("%s's cosignature has no timestamp: %v", w.Name, err)
	}
}

// Two witnesses cosign a real flow's checkpoints; with require_witnessed
// and a quorum of two, the first token waits while one is down and is
// issued once it is back; the auditor verifies the log with the witness
// keys alone, and forged, foreign, moved and duplicated cosignatures or
// witnesses are refused.
func TestWitnessesCosignARealFlow(t *testing.T) {
	d := startWitnessed(t, "  witness_quorum: 2\n  require_witnessed: true\n  witness_backoff_max: 200ms\n  witness_timeout: 2s\n")
	d.exportAuditKey()
	// The log's first checkpoint reaches both witnesses.
	d.mustBgctl("dave", "audit", "checkpoint")
	if !eventually(30*time.Second, func() bool {
		h := d.healthz(t)
		return h.Checks["witness"] == "ok" && len(h.Witnesses) == 2 && h.Witnesses[0].CosignedSize > 0 && h.Witnesses[1].CosignedSize > 0
	}) {
		t.Fatalf("the witnesses never cosigned: %+v\n%s", d.healthz(t), d.logs)
	}

	// One witness down: the grant is approved, but its first token waits.
	d.w2.Stop()
	id := d.createRequest("alice")
	d.mustBgctl("bob", "approve", id, "--yes")
	d.mustBgctl("erin", "approve", id, "--yes")
	r := d.bgctl("alice", "token", id, "--audience", "db.prod.example")
	if r.code == 0 || !strings.Contains(r.stderr, "FailedPrecondition") || !strings.Contains(r.stderr, "witness cosignatures") {
		t.Fatalf("a token before the witnesses saw the grant: %+v", r)
	}
	t.Logf("bgctl token with w2 down: %s", r.stderr)
	// Certificates are credentials too: none before the witnesses saw the
	// grant either.
	_, pub := sshKey(t, t.TempDir())
	if r := d.bgctl("alice", "ssh-cert", id, "--public-key", pub); r.code == 0 || !strings.Contains(r.stderr, "FailedPrecondition") || !strings.Contains(r.stderr, "witness cosignatures") {
		t.Fatalf("an SSH certificate before the witnesses saw the grant: %+v", r)
	}
	xdir := t.TempDir()
	if r := d.bgctl("alice", "x509-cert", id, "--key-out", filepath.Join(xdir, "k.pem"), "--out", filepath.Join(xdir, "c.pem")); r.code == 0 || !strings.Contains(r.stderr, "witness cosignatures") {
		t.Fatalf("an X.509 certificate before the witnesses saw the grant: %+v", r)
	}
	// w1 alone cosigns the newer checkpoints: a quorum of one is met, and
	// w2 falls behind in health, failing.
	var h healthz
	if !eventually(30*time.Second, func() bool {
		h = d.healthz(t)
		return len(h.Witnesses) == 2 && h.Witnesses[0].CosignedSize > h.Witnesses[1].CosignedSize && h.Witnesses[1].LastError != ""
	}) {
		t.Fatalf("health with w2 down: %+v", d.healthz(t))
	}
	if h.Witnesses[1].AgeSeconds < h.Witnesses[0].AgeSeconds || !strings.Contains(h.Checks["witness:w2"], "failing") ||
		!strings.Contains(h.Checks["witness"], "fewer than the quorum") {
		t.Fatalf("health with w2 down: %+v", h)
	}
	// The metrics say the same, per witness, and the example alert rules
	// name only witness series the broker exports.
	var mfs map[string]*dto.MetricFamily
	if !eventually(30*time.Second, func() bool {
		_, mfs = d.scrape(t)
		return witnessSample(mfs, "breakglass_witness_cosigned_size", "w1") > witnessSample(mfs, "breakglass_witness_cosigned_size", "w2") &&
			witnessSample(mfs, "breakglass_witness_failures", "w2") >= 1 && witnessSample(mfs, "breakglass_witness_quorum_met", "") == 0
	}) {
		t.Fatalf("metrics with w2 down: %v", mfs["breakglass_witness_cosigned_size"])
	}
	if witnessSample(mfs, "breakglass_witness_split_view", "w2") != 0 || witnessSample(mfs, "breakglass_witness_failures", "w1") != 0 ||
		witnessSample(mfs, "breakglass_witness_cosigned_age_seconds", "w2") < witnessSample(mfs, "breakglass_witness_cosigned_age_seconds", "w1") {
		t.Fatalf("metrics with w2 down: %v %v", mfs["breakglass_witness_split_view"], mfs["breakglass_witness_cosigned_age_seconds"])
	}
	checkAlertRules(t, mfs, func(name string) bool { return strings.HasPrefix(name, "breakglass_witness_") })
	alone := d.exportAudit(t)
	write := func(p, s string) string {
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cpW1, _ := os.ReadFile(alone.checkpoint)
	if v := alone.verify(t, "--witness", d.w1.VKey, "--witness-quorum", "1"); v.code != 0 || !strings.Contains(v.stdout, "cosigned by 1 of 1 witnesses") {
		t.Fatalf("quorum 1 with w2 down: %+v\n%s", v, cpW1)
	}
	if v := alone.verify(t, "--witness", d.w1.VKey, "--witness", d.w2.VKey, "--witness-quorum", "2"); v.code == 0 || !strings.Contains(v.stderr, "fewer than the quorum") {
		t.Fatalf("quorum 2 with w2 down: %+v", v)
	}

	// w2 returns: the first token is issued once both cosigned a
	// checkpoint covering the approval.
	d.w2.Start()
	var tok result
	if !eventually(60*time.Second, func() bool {
		tok = d.bgctl("alice", "token", id, "--audience", "db.prod.example")
		return tok.code == 0
	}) {
		t.Fatalf("no token after w2 came back: %+v\n%+v", tok, d.healthz(t))
	}
	if !eventually(30*time.Second, func() bool {
		_, mfs = d.scrape(t)
		return witnessSample(mfs, "breakglass_witness_quorum_met", "") == 1
	}) {
		t.Fatalf("the witness quorum is not met again in the metrics: %+v", d.healthz(t))
	}

	// The auditor: the witnessed checkpoint, the export, the witness keys.
	f := d.exportAudit(t)
	witnessed := d.mustBgctl("dave", "audit", "checkpoint", "--witnessed")
	write(f.checkpoint, witnessed)
	for _, w := range []*witnesstest.Witness{d.w1, d.w2} {
		verifyCosignature(t, []byte(witnessed), w)
	}
	v := f.verify(t, "--witness", d.w1.VKey, "--witness", d.w2.VKey, "--witness-quorum", "2")
	if v.code != 0 || !strings.Contains(v.stdout, "cosigned by 2 of 2 witnesses (quorum 2)") || !strings.Contains(v.stdout, "witness.test/w1 at ") ||
		!strings.Contains(v.stdout, "witness.test/w2 at ") {
		t.Fatalf("verify --witness-quorum 2: %+v", v)
	}
	t.Logf("bgctl audit verify --witness W1 --witness W2 --witness-quorum 2:\n%s", v.stdout)
	// The same checkpoint over HTTPS, with its cosignatures.
	if code, body := d.get(t, "/checkpoint"); code != 200 || strings.Count(body, "\n— witness.test/") != 2 {
		t.Fatalf("GET /checkpoint: %d %s", code, body)
	}
	// And in the checkpoint.signed events.
	if !eventually(10*time.Second, func() bool {
		b, _ := os.ReadFile(d.state("events.jsonl"))
		return strings.Contains(string(b), `"cosigned_by":["witness.test/w1","witness.test/w2"]`)
	}) {
		t.Error("no checkpoint.signed event carries both cosignatures")
	}

	// Hostile cosignatures and witness lists.
	text, sigs, _ := strings.Cut(witnessed, "\n\n")
	var w1Line, logLine string
	for _, l := range strings.Split(strings.TrimSpace(sigs), "\n") {
		switch {
		case strings.HasPrefix(l, "— witness.test/w1 "):
			w1Line = l
		case !strings.HasPrefix(l, "— witness.test/"):
			logLine = l
		}
	}
	raw, _ := base64.StdEncoding.DecodeString(strings.Fields(w1Line)[2])
	raw[len(raw)-1] ^= 1
	forged := "— witness.test/w1 " + base64.StdEncoding.EncodeToString(raw)
	// The witness's cosignature of w1Line moved onto the same size and
	// root under another origin.
	otherOrigin := strings.Replace(text, d.origin, "breakglass.dev/another-log", 1)
	foreignKey := witnesstest.Start(t, "witness.test/w3", "breakglass.dev/unused", d.logKey)
	for _, tc := range []struct {
		name, checkpoint string
		args             []string
		want             string
	}{
		{"forged cosignature", text + "\n\n" + logLine + "\n" + forged + "\n", []string{"--witness", d.w1.VKey, "--witness-quorum", "1"}, "does not verify"},
		{"only the log's signature", text + "\n\n" + logLine + "\n", []string{"--witness", d.w1.VKey, "--witness-quorum", "1"}, "fewer than the quorum"},
		{"a foreign witness counted", witnessed, []string{"--witness", d.w1.VKey, "--witness", foreignKey.VKey, "--witness-quorum", "2"}, "fewer than the quorum"},
		{"another origin", otherOrigin + "\n\n" + logLine + "\n" + w1Line + "\n", []string{"--witness", d.w1.VKey, "--witness-quorum", "1"}, "checkpoint"},
		{"duplicate witness", witnessed, []string{"--witness", d.w1.VKey, "--witness", d.w1.VKey, "--witness-quorum", "2"}, "given twice"},
		{"quorum above the keys", witnessed, []string{"--witness", d.w1.VKey, "--witness-quorum", "2"}, "cannot be met"},
		{"quorum without keys", witnessed, []string{"--witness-quorum", "1"}, "no witness key"},
		{"a log key as a witness key", witnessed, []string{"--witness", d.logKey, "--witness-quorum", "1"}, "not a witness cosignature key"},
	} {
		g := *f
		g.checkpoint = write(filepath.Join(t.TempDir(), "checkpoint"), tc.checkpoint)
		if v := g.verify(t, tc.args...); v.code == 0 || !strings.Contains(v.stderr, tc.want) {
			t.Errorf("%s: %+v", tc.name, v)
		}
	}
	// A cosignature by a key no one trusts next to the real ones is
	// ignored, as signed-note requires.
	g := *f
	g.checkpoint = write(filepath.Join(t.TempDir(), "checkpoint"), witnessed+"— witness.test/w3 "+strings.Fields(w1Line)[2]+"\n")
	if v := g.verify(t, "--witness", d.w1.VKey, "--witness", d.w2.VKey, "--witness-quorum", "2"); v.code != 0 {
		t.Errorf("an unknown key's line next to the quorum: %+v", v)
	}
}

// A forced restore to an older backup rolls the log back: the witnesses
// refuse it, the broker alerts through the outbox, fails its witness
// health check and says so in the report, and the verifier, given the
// witnesses' last cosigned checkpoint, sees the rollback.
func TestWitnessesRefuseARollback(t *testing.T) {
	d := startWitnessed(t, "  witness_backoff_max: 200ms\n  witness_timeout: 2s\n")
	d.exportAuditKey()
	granted := d.approvedGrant(t)
	old, _ := d.backup(t, "old")
	d.mustBgctl("erin", "revoke", granted, "--reason", "compromised laptop")
	d.createRequest("alice")
	latest := d.mustBgctl("dave", "audit", "checkpoint")
	size := strings.Split(latest, "\n")[1]
	var soc string
	if !eventually(30*time.Second, func() bool {
		r := d.bgctl("dave", "audit", "checkpoint", "--witnessed")
		soc = r.stdout
		return r.code == 0 && strings.Split(soc, "\n")[1] == size && strings.Count(soc, "\n— witness.test/") == 2
	}) {
		t.Fatalf("no witnessed checkpoint after the revocation: %s\n%+v", soc, d.healthz(t))
	}
	socFile := filepath.Join(t.TempDir(), "witnessed.note")
	if err := os.WriteFile(socFile, []byte(soc), 0o600); err != nil {
		t.Fatal(err)
	}
	if !eventually(30*time.Second, func() bool {
		h := d.healthz(t)
		return h.Witnesses[0].CosignedSize == h.Witnesses[1].CosignedSize && h.Witnesses[0].CosignedSize > 0 && h.Checks["witness"] == "ok"
	}) {
		t.Fatalf("%+v", d.healthz(t))
	}
	d.stop()
	if r, res := d.restore("--from", old, "--force", "--reason", "the disk is lost"); r.code != 0 || !res.Forced {
		t.Fatalf("forced restore: %+v", r)
	}
	d.start()
	d.createRequest("alice") // the rolled-back log grows again
	d.mustBgctl("dave", "audit", "checkpoint")

	if !eventually(30*time.Second, func() bool {
		b, _ := os.ReadFile(d.state("events.jsonl"))
		return strings.Contains(string(b), `"type":"witness.split_view"`) && strings.Contains(string(b), "SPLIT VIEW: witness w1")
	}) {
		t.Fatalf("no split-view alert\n%s", d.logs)
	}
	h := d.healthz(t)
	if !strings.HasPrefix(h.Checks["witness"], "SPLIT VIEW") || !strings.Contains(h.Checks["witness:w1"], "SPLIT VIEW") || h.Witnesses[0].SplitView == "" {
		t.Fatalf("health after the rollback: %+v", h)
	}
	if _, mfs := d.scrape(t); witnessSample(mfs, "breakglass_witness_split_view", "w1") != 1 || witnessSample(mfs, "breakglass_witness_quorum_met", "") != 0 {
		t.Fatalf("metrics after the rollback: %v %v", mfs["breakglass_witness_split_view"], mfs["breakglass_witness_quorum_met"])
	}
	// gRPC health: the witness service fails, the broker still serves
	// (taking access away must keep working).
	if grpcurl, err := exec.LookPath("grpcurl"); err != nil && os.Getenv("CI") != "" {
		t.Fatal("grpcurl is required in CI")
	} else if err == nil {
		tlsArgs := []string{"-cacert", d.state("ca", "ca.crt"), "-cert", d.state("identities", "dave.crt"), "-key", d.state("identities", "dave.key")}
		if !eventually(30*time.Second, func() bool {
			r := runCmdNoFatal(os.Environ(), grpcurl, append(tlsArgs, "-d", `{"service":"witness"}`, d.ready.GRPC, "grpc.health.v1.Health/Check")...)
			return strings.Contains(r.stdout, `"NOT_SERVING"`)
		}) {
			t.Error("the witness gRPC health service does not fail on a split view")
		}
		if all := must(t, os.Environ(), grpcurl, append(tlsArgs, d.ready.GRPC, "grpc.health.v1.Health/Check")...); !strings.Contains(all, `"SERVING"`) {
			t.Errorf("the broker stopped serving on a split view: %s", all)
		}
	}
	rep := d.mustBgctl("dave", "report")
	if !strings.Contains(rep, "SPLIT VIEW: witness w1") || !strings.Contains(rep, "REFUSES THIS LOG'S HISTORY") {
		t.Fatalf("report after the rollback:\n%s", rep)
	}
	_, tail, _ := strings.Cut(rep, "DAYS (")
	t.Logf("bgctl report after the rollback (its end):\n%s", tail)
	if _, body := d.get(t, "/checkpoint"); strings.Contains(body, "\n"+strings.Split(soc, "\n")[1]+"\n") {
		t.Fatalf("GET /checkpoint serves a checkpoint the log no longer has:\n%s", body)
	}
	// The auditor holds the checkpoint both witnesses cosigned before the
	// restore: its cosignatures verify, and the log no longer extends it.
	for _, w := range []*witnesstest.Witness{d.w1, d.w2} {
		verifyCosignature(t, []byte(soc), w)
	}
	f := d.exportAudit(t)
	v := f.verify(t, "--previous-checkpoint", socFile)
	if v.code == 0 || !strings.Contains(v.stderr, "previous checkpoint") {
		t.Fatalf("the verifier accepts the rolled-back log against the witnessed checkpoint: %+v", v)
	}
	t.Logf("verify against the witnesses' checkpoint: %s", v.stderr)
	// Nor did any witness cosign the rolled-back log's checkpoint.
	if v := f.verify(t, "--witness", d.w1.VKey, "--witness", d.w2.VKey, "--witness-quorum", "1"); v.code == 0 || !strings.Contains(v.stderr, "fewer than the quorum") {
		t.Fatalf("the rolled-back checkpoint is witnessed: %+v", v)
	}
}

// witnessSample is the value of a witness series for one witness ("" for
// the series without a witness label), -1 when it is missing.
func witnessSample(mfs map[string]*dto.MetricFamily, name, witness string) float64 {
	f := mfs[name]
	if f == nil {
		return -1
	}
	for _, m := range f.Metric {
		if labelsOf(m)["witness"] == witness {
			return sample(m)
		}
	}
	return -1
}
