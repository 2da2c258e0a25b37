package sqlite_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/store/sqlite"
)

func appendEntry(ctx context.Context, s store.Store) error {
	return s.Update(ctx, func(tx store.Tx) error {
		h, err := tx.Head(ctx)
		if err != nil {
			return err
		}
		rec, err := audit.Build(h, storetestTime, audit.Draft{Type: audit.TypeGrantRevoked, Actor: "a", Payload: h.Size})
		if err != nil {
			return err
		}
		rec.Signature, rec.KeyID = []byte("s"), "k"
		return tx.Append(ctx, rec)
	})
}

// A backup taken while writers append holds a whole prefix of the log:
// its tree over its own length is the live one's over the same length.
func TestBackupWhileWriting(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	live := open(t, filepath.Join(dir, "broker.db"))
	defer live.Close()
	for range 20 {
		if err := appendEntry(ctx, live); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := appendEntry(ctx, live); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	out := filepath.Join(dir, "backup.db")
	err := sqlite.Backup(ctx, filepath.Join(dir, "broker.db"), out)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(out); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("backup file mode: %v %v", fi, err)
	}
	if err := sqlite.Backup(ctx, filepath.Join(dir, "broker.db"), out); err == nil {
		t.Fatal("a backup overwrote an existing file")
	}
	if err := sqlite.Backup(ctx, filepath.Join(dir, "missing.db"), filepath.Join(dir, "x.db")); err == nil {
		t.Fatal("a backup of a missing database succeeded")
	}
	cp := open(t, out)
	defer cp.Close()
	var size uint64
	var root []byte
	if err := cp.View(ctx, func(r store.Reader) error {
		h, err := r.Head(ctx)
		if err != nil {
			return err
		}
		size = h.Size
		root, err = r.TreeHash(ctx, size)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if size < 20 {
		t.Fatalf("the backup holds %d entries, fewer than were committed before it", size)
	}
	if err := live.View(ctx, func(r store.Reader) error {
		want, err := r.TreeHash(ctx, size)
		if err != nil {
			return err
		}
		if !bytes.Equal(want, root) {
			t.Error("the backup's log is not a prefix of the live one")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
