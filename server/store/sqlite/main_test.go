package sqlite_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Every goroutine a test started must have ended with its cleanup.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
