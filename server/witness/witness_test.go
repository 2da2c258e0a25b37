package witness_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"filippo.io/torchwood"
	"golang.org/x/mod/sumdb/note"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/cosignature"
	"github.com/bgbroker/breakglass/hsm"
	"github.com/bgbroker/breakglass/hsm/hsmtest"
	"github.com/bgbroker/breakglass/server/checkpoint"
	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/store/sqlite"
	"github.com/bgbroker/breakglass/server/witness"
	"github.com/bgbroker/breakglass/server/witness/witnesstest"
)

func TestMain(m *testing.M) { os.Exit(hsmtest.Main(m)) }

const origin = "example.org/breakglass-witness-test"

// logEnv is a real log: a SQLite store, checkpoints signed by the HSM's
// Ed25519 checkpoint key.
type logEnv struct {
	t      *testing.T
	dbPath string
	store  store.Store
	cps    *checkpoint.Checkpointer
	signer note.Signer
	vkey   string
}

func newLog(t *testing.T) *logEnv {
	t.Helper()
	ctx := context.Background()
	m := hsmtest.NewToken(t).Open(t)
	key := hsmtest.Keys(t, m)[hsm.PurposeCheckpoint]
	signer, err := hsm.NewNoteSigner(ctx, key, origin)
	if err != nil {
		t.Fatal(err)
	}
	vkey, err := hsm.NoteVerifierKey(origin, key.Public())
	if err != nil {
		t.Fatal(err)
	}
	e := &logEnv{t: t, dbPath: filepath.Join(t.TempDir(), "b.db"), signer: signer, vkey: vkey}
	e.open()
	return e
}

func (e *logEnv) open() {
	e.t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, sqlite.Config{Path: e.dbPath})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = st.Close() })
	e.store = st
	if e.cps, err = checkpoint.New(ctx, checkpoint.Config{Store: st, Signer: e.signer, Origin: origin, Interval: time.Hour}); err != nil {
		e.t.Fatal(err)
	}
}

// grow appends n entries and signs the checkpoint of the whole log.
func (e *logEnv) grow(n int) store.Checkpoint {
	e.t.Helper()
	ctx := context.Background()
	for range n {
		err := e.store.Update(ctx, func(tx store.Tx) error {
			h, err := tx.Head(ctx)
			if err != nil {
				return err
			}
			r, err := audit.Build(h, time.Now(), audit.Draft{Type: audit.TypePermissionDenied, Actor: "x", Payload: h.Size})
			if err != nil {
				return err
			}
			return tx.Append(ctx, r)
		})
		if err != nil {
			e.t.Fatal(err)
		}
	}
	cp, err := e.cps.Latest(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	return cp
}

func (e *logEnv) client(ws []witness.Config, quorum int, mod ...func(*witness.Options)) (*witness.Client, *recorder) {
	e.t.Helper()
	rec := &recorder{}
	o := witness.Options{Store: e.store, Origin: origin, Witnesses: ws, Quorum: quorum, BackoffBase: time.Millisecond, BackoffMax: 5 * time.Millisecond,
		OnSplitView: rec.splitView, OnRound: rec.round}
	for _, f := range mod {
		f(&o)
	}
	c, err := witness.New(context.Background(), o)
	if err != nil {
		e.t.Fatal(err)
	}
	return c, rec
}

type recorder struct {
	mu     sync.Mutex
	splits []witness.SplitView
	rounds []uint64
}

func (r *recorder) splitView(_ context.Context, sv witness.SplitView) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.splits = append(r.splits, sv)
}

func (r *recorder) round(_ context.Context, cp store.Checkpoint, _ []store.Cosignature) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rounds = append(r.rounds, cp.Size)
}

func (r *recorder) splitViews() []witness.SplitView {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]witness.SplitView(nil), r.splits...)
}

func configs(ws ...*witnesstest.Witness) []witness.Config {
	out := make([]witness.Config, len(ws))
	for i, w := range ws {
		out[i] = witness.Config{Name: w.Name, URL: w.URL, Key: w.VKey}
	}
	return out
}

// served is the checkpoint at size as the broker serves it.
func (e *logEnv) served(size uint64) ([]byte, []store.Cosignature) {
	e.t.Helper()
	ctx := context.Background()
	var (
		b   []byte
		cos []store.Cosignature
	)
	err := e.store.View(ctx, func(r store.Reader) error {
		cp, err := r.Checkpoint(ctx, size)
		if err != nil {
			return err
		}
		b, cos, err = witness.Cosigned(ctx, r, cp)
		return err
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return b, cos
}

// verifyAsOutsider opens the served note the way a note-style verifier
// does, with x/mod/sumdb/note and torchwood's cosignature verifier built
// from the witness's published key (and the log's key), one key at a time.
func verifyAsOutsider(t *testing.T, served []byte, logVKey string, w *witnesstest.Witness) {
	t.Helper()
	lv, err := note.NewVerifier(logVKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := note.Open(served, note.VerifierList(lv)); err != nil {
		t.Fatalf("the log's signature does not verify on the served note: %v", err)
	}
	k, err := cosignature.ParseKey(w.VKey)
	if err != nil {
		t.Fatal(err)
	}
	n, err := note.Open(served, note.VerifierList(k.Verifier()))
	if err != nil {
		t.Fatalf("witness %s's cosignature does not verify with its key: %v\n%s", w.Name, err, served)
	}
	if len(n.Sigs) != 1 || n.Sigs[0].Name != w.Name {
		t.Fatalf("witness %s: verified %+v", w.Name, n.Sigs)
	}
	if ts, err := torchwood.CosignatureTimestamp(n.Sigs[0]); err != nil || ts == 0 {
		t.Fatalf("witness %s: timestamp %d, %v", w.Name, ts, err)
	}
}

func TestTwoWitnessesCosign(t *testing.T) {
	ctx := context.Background()
	e := newLog(t)
	w1 := witnesstest.Start(t, "witness.test/w1", origin, e.vkey)
	w2 := witnesstest.Start(t, "witness.test/w2", origin, e.vkey)
	c, rec := e.client(configs(w1, w2), 2)

	// The first checkpoint goes with old size 0 and no proof; the next
	// ones with a consistency proof from the size each witness cosigned.
	for _, n := range []int{3, 5, 1, 17} {
		cp := e.grow(n)
		c.Round(ctx)
		served, cos := e.served(cp.Size)
		if len(cos) != 2 {
			t.Fatalf("size %d: %d cosignatures\n%s", cp.Size, len(cos), served)
		}
		verifyAsOutsider(t, served, e.vkey, w1)
		verifyAsOutsider(t, served, e.vkey, w2)
		set, err := witness.Parse(configs(w1, w2), 2)
		if err != nil {
			t.Fatal(err)
		}
		got, err := set.Verify(served, origin)
		if err != nil || len(got) != 2 {
			t.Fatalf("size %d: %d verified, %v", cp.Size, len(got), err)
		}
		for _, st := range c.Status() {
			if st.CosignedSize != cp.Size || st.LastError != "" || st.CosignedAt.IsZero() {
				t.Fatalf("size %d: status %+v", cp.Size, st)
			}
		}
		if !strings.Contains(w1.Size(origin), fmt.Sprint(cp.Size)) {
			t.Fatalf("witness 1 holds %q, not %d", w1.Size(origin), cp.Size)
		}
	}
	var witnessed uint64
	_ = e.store.View(ctx, func(r store.Reader) (err error) {
		witnessed, err = r.LatestWitnessed(ctx, c.IDs(), 2, 0)
		return err
	})
	if witnessed != 26 {
		t.Fatalf("latest witnessed = %d", witnessed)
	}
	if len(rec.rounds) != 4 || len(rec.splitViews()) != 0 {
		t.Fatalf("rounds %v, split views %v", rec.rounds, rec.splitViews())
	}
	// Nothing new: nothing is sent (the witnesses' sizes stay).
	c.Round(ctx)
	if len(rec.rounds) != 4 {
		t.Fatalf("rounds %v", rec.rounds)
	}
}

// A second client on the same log (another replica, or a broker whose
// stored cosignatures are behind) sends an old size; the witness answers
// 409 with its own, and the client proves consistency from there.
func TestConflictFollowsTheWitnessSize(t *testing.T) {
	ctx := context.Background()
	e := newLog(t)
	w1 := witnesstest.Start(t, "witness.test/w1", origin, e.vkey)
	a, _ := e.client(configs(w1), 1)
	b, recB := e.client(configs(w1), 1) // believes the witness holds nothing
	e.grow(4)
	a.Round(ctx)
	cp := e.grow(6)
	b.Round(ctx)
	st := b.Status()[0]
	if st.CosignedSize != cp.Size || st.LastError != "" || len(recB.splitViews()) != 0 {
		t.Fatalf("after a 409: %+v, split views %v", st, recB.splitViews())
	}
	if _, cos := e.served(cp.Size); len(cos) != 1 {
		t.Fatalf("%d cosignatures", len(cos))
	}
}

func TestWitnessDown(t *testing.T) {
	ctx := context.Background()
	e := newLog(t)
	w1 := witnesstest.Start(t, "witness.test/w1", origin, e.vkey)
	w2 := witnesstest.Start(t, "witness.test/w2", origin, e.vkey)
	c, rec := e.client(configs(w1, w2), 1)
	first := e.grow(2)
	c.Round(ctx)
	w2.Stop()
	cp := e.grow(3)
	c.Round(ctx)
	st := c.Status()
	if st[0].CosignedSize != cp.Size || st[1].CosignedSize != first.Size || st[1].Failures != 1 || !strings.Contains(st[1].LastError, "unreachable") {
		t.Fatalf("with w2 down: %+v", st)
	}
	if _, cos := e.served(cp.Size); len(cos) != 1 {
		t.Fatalf("%d cosignatures with one witness down", len(cos))
	}
	if len(rec.splitViews()) != 0 {
		t.Fatalf("a witness that is down is not a split view: %v", rec.splitViews())
	}
	// It comes back: the next round after its back-off catches it up.
	w2.Start()
	roundsUntil(t, c, "w2 catches up", func() bool { return c.Status()[1].CosignedSize == cp.Size })
	if st := c.Status()[1]; st.Failures != 0 || st.LastError != "" {
		t.Fatalf("after coming back: %+v", st)
	}
	if _, cos := e.served(cp.Size); len(cos) != 2 {
		t.Fatalf("%d cosignatures", len(cos))
	}
}

// A restore to an older backup: the witnesses have cosigned more than the
// log has (a rollback), and once the log has grown past that again, its
// history is not the one they cosigned (a fork). Both are split views.
func TestRollbackIsASplitView(t *testing.T) {
	ctx := context.Background()
	e := newLog(t)
	w1 := witnesstest.Start(t, "witness.test/w1", origin, e.vkey)
	w2 := witnesstest.Start(t, "witness.test/w2", origin, e.vkey)
	c, _ := e.client(configs(w1, w2), 2)
	e.grow(5)
	c.Round(ctx)
	backup := filepath.Join(t.TempDir(), "backup.db")
	if err := sqlite.Backup(ctx, e.dbPath, backup); err != nil {
		t.Fatal(err)
	}
	witnessed := e.grow(5)
	c.Round(ctx)
	if st := c.Status(); st[0].CosignedSize != witnessed.Size || st[1].CosignedSize != witnessed.Size {
		t.Fatalf("%+v", st)
	}

	// The forced restore: the log is back at 5 entries.
	if err := e.store.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(backup)
	if err != nil {
		t.Fatal(err)
	}
	for _, suffix := range []string{"-wal", "-shm"} {
		_ = os.Remove(e.dbPath + suffix)
	}
	if err := os.WriteFile(e.dbPath, data, 0o600); err != nil {
		t.Fatal(err)
	}
	e.open()
	c, rec := e.client(configs(w1, w2), 2)
	e.grow(2) // 7 entries, rewritten history from 5
	c.Round(ctx)
	svs := rec.splitViews()
	if len(svs) != 2 || !svs[0].Rollback || svs[0].WitnessSize != 10 || svs[0].LogSize != 7 || !strings.Contains(svs[0].Message, "rolled back") {
		t.Fatalf("rollback: %+v", svs)
	}
	for _, st := range c.Status() {
		if st.SplitView == "" || st.CosignedSize != 5 {
			t.Fatalf("status after rollback: %+v", st)
		}
	}
	// Grown past what the witnesses hold: they refuse the proof.
	cp := e.grow(6) // 13 entries
	roundsUntil(t, c, "both witnesses refuse the proof", func() bool { return len(rec.splitViews()) >= 4 })
	sv := rec.splitViews()[3]
	if sv.Rollback || sv.WitnessSize != 10 || sv.LogSize != cp.Size || !strings.Contains(sv.Message, "refused the consistency proof") {
		t.Fatalf("fork: %+v", sv)
	}
	if _, cos := e.served(cp.Size); len(cos) != 0 {
		t.Fatalf("the rewritten checkpoint carries %d cosignatures", len(cos))
	}
	if !strings.Contains(w1.Size(origin), "10") {
		t.Fatalf("the witness moved: %q", w1.Size(origin))
	}
}

// roundsUntil runs rounds, as Run would, until ok or a deadline.
func roundsUntil(t *testing.T, c *witness.Client, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out: %s; witnesses %+v", what, c.Status())
		}
		time.Sleep(min(c.Round(context.Background()), 20*time.Millisecond))
	}
}

func TestUnknownLog(t *testing.T) {
	ctx := context.Background()
	e := newLog(t)
	other := newLog(t)
	w := witnesstest.Start(t, "witness.test/w1", "example.org/another-log", other.vkey)
	c, rec := e.client(configs(w), 1)
	e.grow(1)
	c.Round(ctx)
	st := c.Status()[0]
	if st.CosignedSize != 0 || !strings.Contains(st.LastError, "witnessctl add-log") || len(rec.splitViews()) != 0 {
		t.Fatalf("unknown log: %+v", st)
	}
}

func TestParseRefusesBadWitnesses(t *testing.T) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	s, _ := torchwood.NewCosignatureSigner("witness.test/w1", priv)
	k1 := s.Verifier().String()
	s2, _ := torchwood.NewCosignatureSigner("witness.test/w2", priv)
	sameKey := s2.Verifier().String()
	_, priv3, _ := ed25519.GenerateKey(rand.Reader)
	s3, _ := torchwood.NewCosignatureSigner("witness.test/w3", priv3)
	k3 := s3.Verifier().String()
	plain, _ := note.NewEd25519VerifierKey("witness.test/w1", priv.Public().(ed25519.PublicKey))
	ok := witness.Config{Name: "w1", URL: "http://127.0.0.1:1", Key: k1}
	for label, tc := range map[string]struct {
		ws     []witness.Config
		quorum int
		want   string
	}{
		"no name":          {[]witness.Config{{URL: ok.URL, Key: k1}}, 1, "name is required"},
		"name twice":       {[]witness.Config{ok, {Name: "w1", URL: ok.URL, Key: k3}}, 1, "used twice"},
		"ftp":              {[]witness.Config{{Name: "w1", URL: "ftp://x", Key: k1}}, 1, "not an http(s) URL"},
		"no host":          {[]witness.Config{{Name: "w1", URL: "http://", Key: k1}}, 1, "not an http(s) URL"},
		"plain note key":   {[]witness.Config{{Name: "w1", URL: ok.URL, Key: plain}}, 1, "not a witness cosignature key"},
		"garbage key":      {[]witness.Config{{Name: "w1", URL: ok.URL, Key: "x"}}, 1, "key"},
		"duplicate":        {[]witness.Config{ok, {Name: "again", URL: ok.URL, Key: k1}}, 1, "given twice"},
		"same public key":  {[]witness.Config{ok, {Name: "w2", URL: ok.URL, Key: sameKey}}, 1, "same public key"},
		"quorum 0":         {[]witness.Config{ok}, 0, "between 1 and"},
		"quorum too large": {[]witness.Config{ok, {Name: "w3", URL: ok.URL, Key: k3}}, 3, "between 1 and"},
		"quorum, none":     {nil, 1, "no audit.witnesses"},
	} {
		if _, err := witness.Parse(tc.ws, tc.quorum); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v", label, err)
		}
	}
	if set, err := witness.Parse([]witness.Config{ok, {Name: "w3", URL: "https://w3.example/prefix", Key: k3}}, 2); err != nil || set.Len() != 2 {
		t.Fatalf("good witnesses: %v", err)
	}
}

// A witness (or whoever answers in its place) that answers with something
// other than its cosignature gets nothing stored, and the client says why.
func TestHostileWitnessAnswers(t *testing.T) {
	ctx := context.Background()
	e := newLog(t)
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := torchwood.NewCosignatureSigner("witness.test/evil", priv)
	_, otherPriv, _ := ed25519.GenerateKey(rand.Reader)
	other, _ := torchwood.NewCosignatureSigner("witness.test/evil", otherPriv)
	cp := e.grow(3)
	_, otherBody := logNote(t, 4)
	cosign := func(s note.Signer, text string) string {
		b, err := note.Sign(&note.Note{Text: text}, s)
		if err != nil {
			t.Fatal(err)
		}
		return string(b[strings.LastIndex(string(b), "\n\n")+2:])
	}
	text := string(cp.Note[:strings.Index(string(cp.Note), "\n\n")+1])
	good := cosign(signer, text)
	flip := []byte(good)
	flip[len(flip)-3] ^= 1
	for label, tc := range map[string]struct {
		status int
		body   string
		want   string
	}{
		"garbage":               {200, "hello\n", "not signature lines"},
		"empty":                 {200, "", "not signature lines"},
		"another key's line":    {200, cosign(other, text), "no cosignature by its key"},
		"another tree's line":   {200, cosign(signer, otherBody), "does not verify"},
		"flipped bit":           {200, string(flip), "does not verify"},
		"409 without a size":    {409, "many\n", "without a tree size"},
		"409 with leading zero": {409, "03\n", "without a tree size"},
		"409 with our size":     {409, "0\n", "with the size we sent"},
		"400":                   {400, "bad", "malformed"},
		"500":                   {500, "oops", "500"},
		"huge":                  {200, strings.Repeat("— a b\n", 1<<15), "larger than"},
	} {
		t.Run(label, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method != http.MethodPost || r.URL.Path != "/add-checkpoint" {
					http.Error(w, "no", 404)
					return
				}
				w.WriteHeader(tc.status)
				_, _ = w.Write([]byte(tc.body))
			}))
			defer srv.Close()
			c, rec := e.client([]witness.Config{{Name: "evil", URL: srv.URL, Key: signer.Verifier().String()}}, 1)
			c.Round(ctx)
			st := c.Status()[0]
			if st.CosignedSize != 0 || !strings.Contains(st.LastError, tc.want) || st.Failures != 1 || len(rec.splitViews()) != 0 {
				t.Fatalf("status %+v", st)
			}
			if _, cos := e.served(cp.Size); len(cos) != 0 {
				t.Fatalf("stored %d cosignatures", len(cos))
			}
		})
	}
	// The same fake witness answering with its real cosignature is stored:
	// the refusals above are about the answers, not the fake.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte(good)) }))
	defer srv.Close()
	// Unless it is dated ahead of the broker's clock by more than the
	// skew allowed (here the broker's clock is an hour behind the
	// witness's): C2SP tlog-cosignature lets verifiers refuse future
	// timestamps, and a cosignature an hour ahead would make a witness
	// that stopped cosigning look current for that hour.
	behind, _ := e.client([]witness.Config{{Name: "evil", URL: srv.URL, Key: signer.Verifier().String()}}, 1,
		func(o *witness.Options) { o.Now = func() time.Time { return time.Now().Add(-time.Hour) } })
	behind.Round(ctx)
	if st := behind.Status()[0]; st.CosignedSize != 0 || !strings.Contains(st.LastError, "ahead of this broker's clock") || st.Failures != 1 {
		t.Fatalf("a cosignature from an hour ahead: status %+v", st)
	}
	if _, cos := e.served(cp.Size); len(cos) != 0 {
		t.Fatalf("stored %d cosignatures dated in the future", len(cos))
	}
	c, _ := e.client([]witness.Config{{Name: "evil", URL: srv.URL, Key: signer.Verifier().String()}}, 1,
		func(o *witness.Options) { o.Now = func() time.Time { return time.Now().Add(-time.Minute) } }) // within the skew
	c.Round(ctx)
	if _, cos := e.served(cp.Size); len(cos) != 1 {
		t.Fatalf("stored %d cosignatures", len(cos))
	}
}

func logNote(t *testing.T, size int) ([]byte, string) {
	t.Helper()
	body := fmt.Sprintf("%s\n%d\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n", origin, size)
	return []byte(body), body
}
