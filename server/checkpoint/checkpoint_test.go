package checkpoint_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/transparency-dev/formats/log"
	"golang.org/x/mod/sumdb/note"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/hsm"
	"github.com/bgbroker/breakglass/hsm/hsmtest"
	"github.com/bgbroker/breakglass/server/checkpoint"
	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/store/sqlite"
)

func TestMain(m *testing.M) { os.Exit(hsmtest.Main(m)) }

func appendN(t *testing.T, s store.Store, n int) {
	t.Helper()
	ctx := context.Background()
	for range n {
		err := s.Update(ctx, func(tx store.Tx) error {
			h, err := tx.Head(ctx)
			if err != nil {
				return err
			}
			r, err := audit.Build(h, time.Now(), audit.Draft{Type: audit.TypePermissionDenied, Actor: "x", Payload: 1})
			if err != nil {
				return err
			}
			return tx.Append(ctx, r)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestCheckpoints(t *testing.T) {
	ctx := context.Background()
	m := hsmtest.NewToken(t).Open(t)
	key := hsmtest.Keys(t, m)[hsm.PurposeCheckpoint]
	const origin = "example.org/breakglass-test"
	signer, err := hsm.NewNoteSigner(ctx, key, origin)
	if err != nil {
		t.Fatal(err)
	}
	vkey, _ := hsm.NoteVerifierKey(origin, key.Public())
	verifier, _ := note.NewVerifier(vkey)
	dbPath := filepath.Join(t.TempDir(), "b.db")
	st, err := sqlite.Open(ctx, sqlite.Config{Path: dbPath})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var announced []uint64
	cps, err := checkpoint.New(ctx, checkpoint.Config{Store: st, Signer: signer, Origin: origin, Every: 5, Interval: time.Hour,
		OnNew: func(c store.Checkpoint) { announced = append(announced, c.Size) }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cps.Latest(ctx); !errors.Is(err, checkpoint.ErrEmpty) {
		t.Fatalf("latest of an empty log: %v", err)
	}
	appendN(t, st, 3)
	cp, err := cps.Latest(ctx)
	if err != nil || cp.Size != 3 {
		t.Fatalf("latest = %d, %v", cp.Size, err)
	}
	parsed, _, _, err := log.ParseCheckpoint(cp.Note, origin, verifier)
	if err != nil || parsed.Size != 3 || string(parsed.Hash) != string(cp.Root) {
		t.Fatalf("the note does not open as a checkpoint: %v", err)
	}
	// Asked again without growth: the same checkpoint, no new signature.
	again, _ := cps.Latest(ctx)
	if string(again.Note) != string(cp.Note) || len(announced) != 1 {
		t.Fatalf("re-signed without growth (%d announced)", len(announced))
	}
	// An older size on demand.
	two, err := cps.At(ctx, 2)
	if err != nil || two.Size != 2 {
		t.Fatalf("At(2) = %v", err)
	}
	if _, err := cps.At(ctx, 9); err == nil {
		t.Fatal("a checkpoint beyond the log")
	}
	// Batches: Run signs after Every appends without being asked.
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { cps.Run(runCtx); close(done) }()
	appendN(t, st, 5)
	cps.Appended()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var latest store.Checkpoint
		_ = st.View(ctx, func(r store.Reader) error { latest, _ = r.LatestCheckpoint(ctx); return nil })
		if latest.Size == 8 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no batch checkpoint; latest %d", latest.Size)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done

	// The log keeps its origin for life.
	other, _ := hsm.NewNoteSigner(ctx, key, "example.org/another-name")
	_, err = checkpoint.New(ctx, checkpoint.Config{Store: st, Signer: other, Origin: "example.org/another-name"})
	if err == nil || !strings.Contains(err.Error(), "keeps its origin for life") {
		t.Fatalf("origin change: %v", err)
	}
	for _, bad := range []string{"", "has space", "a+b", "émoji/x"} {
		s2, _ := hsm.NewNoteSigner(ctx, key, "x")
		if _, err := checkpoint.New(ctx, checkpoint.Config{Store: st, Signer: s2, Origin: bad}); err == nil {
			t.Errorf("origin %q accepted", bad)
		}
	}
}
