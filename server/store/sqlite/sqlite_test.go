package sqlite_test

import (
	"context"
	"database/sql"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/store/sqlite"
	"github.com/bgbroker/breakglass/server/store/sqlstore"
	"github.com/bgbroker/breakglass/server/store/storetest"
)

func open(t *testing.T, path string) *sqlite.Store {
	t.Helper()
	s, err := sqlite.Open(context.Background(), sqlite.Config{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) (store.Store, func() store.Store) {
		path := filepath.Join(t.TempDir(), "broker.db")
		return open(t, path), func() store.Store { return open(t, path) }
	})
}

// The append-only rules hold in the database itself, not only in our code:
// an operator with the sqlite3 shell cannot quietly edit or delete entries.
func TestEntriesAreAppendOnlyInTheDatabase(t *testing.T) {
	db := storeWithEntries(t, 1)
	for _, stmt := range []string{
		`UPDATE entries SET body = 'x' WHERE idx = 0`,
		`UPDATE entries SET leaf_hash = x'00' WHERE idx = 0`,
		`UPDATE entries SET signature = x'00' WHERE idx = 0`,
		`DELETE FROM entries WHERE idx = 0`,
		`INSERT INTO entries (idx, time, type, body, leaf_hash) VALUES (5, 0, 't', 'b', x'00')`,
	} {
		if _, err := db.Exec(stmt); err == nil || !strings.Contains(err.Error(), "audit entr") {
			t.Errorf("%s: %v", stmt, err)
		}
	}
}

func TestCorruptFileIsRefused(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string][]byte{
		"truncated": []byte("SQLite format 3\x00"),
		"garbage":   []byte(strings.Repeat("not a database ", 200)),
	} {
		p := filepath.Join(dir, name+".db")
		if err := os.WriteFile(p, body, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := sqlite.Open(context.Background(), sqlite.Config{Path: p})
		if err == nil || !strings.Contains(err.Error(), "restore it from a backup") {
			t.Errorf("%s: %v", name, err)
		}
	}
}

var storetestTime = mustTime("2026-11-29T12:00:00Z")

// The witness queries run per token and per checkpoint served: each reads
// an index from one end and never sorts the table.
func TestWitnessQueryPlans(t *testing.T) {
	path := filepath.Join(t.TempDir(), "broker.db")
	open(t, path).Close()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for q, want := range map[string]string{
		`SELECT size, witness FROM cosignatures WHERE size >= 0 AND size < 100 ORDER BY size DESC LIMIT 256`:                 "USING COVERING INDEX sqlite_autoindex_cosignatures_1 (size>? AND size<?)",
		`SELECT size, witness, line, signed_at, created_at FROM cosignatures WHERE witness = 'w' ORDER BY size DESC LIMIT 1`: "USING INDEX cosignatures_witness (witness=?)",
		`SELECT size, witness, line, signed_at, created_at FROM cosignatures WHERE size = 5 ORDER BY witness`:                "USING INDEX sqlite_autoindex_cosignatures_1 (size=?)",
	} {
		rows, err := db.Query("EXPLAIN QUERY PLAN " + q)
		if err != nil {
			t.Fatal(err)
		}
		var plan []string
		for rows.Next() {
			var id, parent, unused int
			var detail string
			if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, detail)
		}
		rows.Close()
		all := strings.Join(plan, "; ")
		if !strings.Contains(all, want) || strings.Contains(all, "TEMP B-TREE") || strings.Contains(all, "SCAN") {
			t.Errorf("%s:\n  plan %s\n  want %s", q, all, want)
		}
	}
}

// Damage on the pages start-up reads (the schema, the ends of every
// table) refuses Open; damage deeper in the file, which start-up does not
// read, is found by the full check that runs in the background, and from
// then on every transaction is refused with a message saying what to do.
func TestDamageFoundAtStartOrInTheBackground(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "broker.db")
	s := open(t, path)
	s.Close()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`CREATE TABLE filler (x TEXT); WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
		INSERT INTO filler SELECT printf('%0100d', i) FROM n`); err != nil {
		t.Fatal(err)
	}
	var pageSize, pages, leaf int
	_ = db.QueryRow("PRAGMA page_size").Scan(&pageSize)
	_ = db.QueryRow("PRAGMA page_count").Scan(&pages)
	if err := db.QueryRow("SELECT pageno FROM dbstat WHERE name = 'filler' AND pagetype = 'leaf' ORDER BY pageno LIMIT 1 OFFSET 100").Scan(&leaf); err != nil {
		t.Fatalf("finding a leaf in the middle of the table: %v", err)
	}
	db.Close()
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	damage := func(page int) {
		b := append([]byte(nil), orig...)
		off := (page - 1) * pageSize
		for i := off; i < off+16; i++ {
			b[i] ^= 0x5a
		}
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// The last page holds an end of some table: start-up reads it.
	damage(pages)
	if _, err := sqlite.Open(context.Background(), sqlite.Config{Path: path}); err == nil || !strings.Contains(err.Error(), "restore it from a backup") {
		t.Fatalf("a damaged last page: %v", err)
	}
	damage(leaf)
	found := make(chan error, 1)
	s, err = sqlite.Open(context.Background(), sqlite.Config{Path: path, OnDamaged: func(err error) { found <- err }})
	if err != nil {
		t.Fatalf("start-up read a page in the middle of a table: %v", err)
	}
	defer s.Close()
	if err := <-found; !strings.Contains(err.Error(), "restore it from a backup") {
		t.Fatalf("background check: %v", err)
	}
	if err := s.Update(context.Background(), func(store.Tx) error { return nil }); err == nil || !strings.Contains(err.Error(), "corrupted") {
		t.Fatalf("write after the check failed: %v", err)
	}
	if err := s.View(context.Background(), func(store.Reader) error { return nil }); err == nil {
		t.Fatal("read after the check failed")
	}
	if err := s.Check(context.Background()); err == nil {
		t.Fatal("Check passes a damaged database")
	}
}

// Readers that never stop coming keep SQLite's own checkpoints from ever
// restarting the write-ahead log; the store truncates it between write
// batches once it passes its limit.
func TestWALBoundedUnderContinuousReaders(t *testing.T) {
	path := filepath.Join(t.TempDir(), "broker.db")
	const limit = 256 << 10
	s, err := sqlite.Open(context.Background(), sqlite.Config{Path: path, WALLimit: limit, Synchronous: "NORMAL"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var readers sync.WaitGroup
	for range 4 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for ctx.Err() == nil {
				_ = s.View(ctx, func(r store.Reader) error {
					_, err := r.Head(ctx)
					return err
				})
			}
		}()
	}
	body := strings.Repeat("x", 8000)
	maxWAL := int64(0)
	for i := range 500 {
		err := s.Update(context.Background(), func(tx store.Tx) error {
			rec, err := audit.Build(mustHead(t, tx), storetestTime, audit.Draft{Type: audit.TypeGrantRevoked, Actor: "a", Payload: map[string]any{"i": i, "pad": body}})
			if err != nil {
				return err
			}
			rec.Signature, rec.KeyID = []byte("s"), "k"
			return tx.Append(context.Background(), rec)
		})
		if err != nil {
			t.Fatal(err)
		}
		if fi, err := os.Stat(path + "-wal"); err == nil {
			maxWAL = max(maxWAL, fi.Size())
		}
	}
	cancel()
	readers.Wait()
	// 500 entries of 8 kB wrote several MB through the log; it never held
	// more than a few times its limit.
	if maxWAL > 8*limit {
		t.Fatalf("the write-ahead log reached %d bytes with a limit of %d", maxWAL, limit)
	}
	if s.WALTruncations() == 0 {
		t.Fatal("the write-ahead log was never truncated")
	}
}

func mustHead(t *testing.T, tx store.Tx) audit.Head {
	h, err := tx.Head(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// The full integrity check reads on a connection of its own: writes go on
// while it runs, including those that prepare a statement for the first
// time (on the writer's connections they waited for the whole check, and a
// start-up with them).
func TestWritesDoNotWaitForTheCheck(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "broker.db"))
	defer s.Close()
	release := make(chan struct{})
	inCheck := make(chan struct{})
	var once sync.Once
	sqlite.DuringCheck(s, func() { // the background check may get here too
		once.Do(func() { close(inCheck) })
		<-release
	})
	checked := make(chan error, 1)
	go func() { checked <- s.Check(context.Background()) }()
	<-inCheck
	wrote := make(chan error, 1)
	go func() {
		wrote <- s.Update(context.Background(), func(tx store.Tx) error {
			// A statement no one prepared before.
			_, err := tx.(*sqlstore.Tx).Exec(context.Background(), "CREATE TABLE written_during_the_check (x INTEGER)")
			return err
		})
	}()
	select {
	case err := <-wrote:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		close(release)
		t.Fatal("a write waited for the integrity check")
	}
	close(release)
	if err := <-checked; err != nil {
		t.Fatal(err)
	}
}

// Open reads only the ends of the log and of its tree: a tree that stops
// short of the log is refused, and one never kept (an older store) is
// rebuilt with the hashes appending would have stored.
func TestOpenChecksTheTreeByItsEnds(t *testing.T) {
	ctx := context.Background()
	db := storeWithEntries(t, 5)
	path := db.path
	hashes := func() map[int64]string {
		rows, err := db.Query(`SELECT idx, hex(hash) FROM tree_hashes`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		m := map[int64]string{}
		for rows.Next() {
			var i int64
			var h string
			if err := rows.Scan(&i, &h); err != nil {
				t.Fatal(err)
			}
			m[i] = h
		}
		return m
	}
	want := hashes()
	// Around the append-only trigger, as damage (or a hand) would.
	if _, err := db.Exec(`DROP TRIGGER tree_hashes_no_delete; DELETE FROM tree_hashes WHERE idx = (SELECT MAX(idx) FROM tree_hashes)`); err != nil {
		t.Fatal(err)
	}
	if _, err := sqlite.Open(ctx, sqlite.Config{Path: path}); err == nil || !strings.Contains(err.Error(), "the store is damaged") {
		t.Fatalf("open with the tree short of the log: %v", err)
	}
	if _, err := db.Exec(`DELETE FROM tree_hashes`); err != nil {
		t.Fatal(err)
	}
	open(t, path).Close()
	if got := hashes(); !maps.Equal(got, want) {
		t.Fatalf("rebuilt tree hashes %v, want %v", got, want)
	}
}

// rawDB is a store's file opened with database/sql, bypassing the store.
type rawDB struct {
	*sql.DB
	path string
}

// storeWithEntries makes a store holding n audit entries, closes it and
// opens its file as it is, as damage (or a hand) would reach it.
func storeWithEntries(t *testing.T, n int) rawDB {
	t.Helper()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "broker.db")
	s := open(t, path)
	err := s.Update(ctx, func(tx store.Tx) error {
		head := audit.Head{}
		for i := range n {
			rec, err := audit.Build(head, storetestTime, audit.Draft{Type: audit.TypeGrantRevoked, Actor: "a", Payload: i + 1})
			if err != nil {
				return err
			}
			rec.Signature, rec.KeyID = []byte("s"), "k"
			if err := tx.Append(ctx, rec); err != nil {
				return err
			}
			head = audit.Head{Size: rec.Index + 1, LeafHash: rec.LeafHash, Time: rec.Time}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return rawDB{DB: db, path: path}
}
