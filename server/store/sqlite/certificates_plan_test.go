package sqlite_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bgbroker/breakglass/server/store/sqlstore"
)

// The KRL and CRL are rebuilt on every revocation and checked on every
// tick: their queries must read the revoked, unexpired certificates by
// index, never scan every certificate ever issued.
func TestCertificateQueriesUseIndexes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "broker.db")
	s := open(t, path)
	_ = s.Close()
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for q, want := range map[string]string{
		sqlstore.QueryRevokedCertificates:   "certificates_revoked",
		sqlstore.QueryLastCertificateExpiry: "certificates_ca_expiry",
	} {
		rows, err := db.QueryContext(context.Background(), "EXPLAIN QUERY PLAN "+q, "ssh", 0)
		if strings.Count(q, "?") == 1 {
			rows, err = db.QueryContext(context.Background(), "EXPLAIN QUERY PLAN "+q, "kid")
		}
		if err != nil {
			t.Fatal(err)
		}
		var plan []string
		for rows.Next() {
			var id, parent, notused int
			var detail string
			if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, detail)
		}
		rows.Close()
		joined := strings.Join(plan, "; ")
		if !strings.Contains(joined, want) || strings.Contains(joined, "SCAN certificates ") || strings.HasSuffix(joined, "SCAN certificates") {
			t.Errorf("%s\nplan: %s\nwant it to use %s", q, joined, want)
		}
	}
}
