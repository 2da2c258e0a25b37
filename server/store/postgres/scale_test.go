//go:build !race

package postgres_test

import (
	"testing"

	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/store/postgres/pgtest"
	"github.com/bgbroker/breakglass/server/store/storetest"
)

// Built without the race detector: make test runs it in its own pass.
func TestScale(t *testing.T) {
	srv := pgtest.Require(t, server)
	storetest.RunScale(t, func(t *testing.T) (store.Store, func() store.Store) {
		dsn := srv.NewDatabase(t)
		return open(t, dsn), func() store.Store { return open(t, dsn) }
	})
}
