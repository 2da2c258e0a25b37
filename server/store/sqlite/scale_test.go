//go:build !race

package sqlite_test

import (
	"path/filepath"
	"testing"

	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/store/storetest"
)

// Built without the race detector: make test runs it in its own pass.
func TestScale(t *testing.T) {
	storetest.RunScale(t, func(t *testing.T) (store.Store, func() store.Store) {
		path := filepath.Join(t.TempDir(), "broker.db")
		return open(t, path), func() store.Store { return open(t, path) }
	})
}
