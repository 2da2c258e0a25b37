package postgres_test

import (
	"context"
	"strings"
	"testing"

	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/store/postgres"
	"github.com/bgbroker/breakglass/server/store/postgres/pgtest"
	"github.com/bgbroker/breakglass/server/store/storetest"
)

var server *pgtest.Server

func TestMain(m *testing.M) { pgtest.Main(m, &server) }

func open(t *testing.T, dsn string) *postgres.Store {
	t.Helper()
	s, err := postgres.Open(context.Background(), postgres.Config{DSN: dsn}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	srv := pgtest.Require(t, server)
	storetest.Run(t, func(t *testing.T) (store.Store, func() store.Store) {
		dsn := srv.NewDatabase(t)
		return open(t, dsn), func() store.Store { return open(t, dsn) }
	})
}

func TestBadDSNDoesNotLeakThePassword(t *testing.T) {
	_, err := postgres.Open(context.Background(), postgres.Config{DSN: "postgres://u:s3cret@[::1:5432/db"}, nil)
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("err = %v", err)
	}
	_, err = postgres.Open(context.Background(), postgres.Config{DSN: "postgres://u:s3cret@127.0.0.1:1/db?connect_timeout=2"}, nil)
	if err == nil || strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), store.ErrUnavailable.Error()) {
		t.Fatalf("err = %v", err)
	}
}
