package sqlite_test

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"strings"
	"testing"

	_ "modernc.org/sqlite"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/store/sqlite"
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
	path := filepath.Join(t.TempDir(), "broker.db")
	s := open(t, path)
	ctx := context.Background()
	err := s.Update(ctx, func(tx store.Tx) error {
		rec, err := audit.Build(audit.Head{}, storetestTime, audit.Draft{Type: audit.TypeGrantRevoked, Actor: "a", Payload: 1})
		if err != nil {
			return err
		}
		rec.Signature, rec.KeyID = []byte("s"), "k"
		return tx.Append(ctx, rec)
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
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
