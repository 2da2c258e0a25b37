package daemon

import (
	"context"
	"runtime"
	"strings"
	"testing"

	"github.com/bgbroker/breakglass/server/config"
	"github.com/bgbroker/breakglass/server/devmode"
)

func startDev(t *testing.T) *Daemon {
	t.Helper()
	ctx := context.Background()
	path, _, err := devmode.Setup(ctx, devmode.Options{Dir: t.TempDir(), GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	d, err := Start(ctx, Options{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// A rotation after use runs in the background. Close must wait for it
// before it closes the store and the HSM under it: here a rotation waits
// for another (the slot is held), and Close returns only once it has given
// up; none is left running, and none starts after Close.
func TestCloseWaitsForRotationAfterUse(t *testing.T) {
	d := startDev(t)
	d.rotating <- struct{}{} // another rotation is running
	observer{d}.RotateAfterUse("prod-db")
	d.Close()
	if stacks := goroutines(); strings.Contains(stacks, "rotateAfterUse") {
		t.Fatalf("a rotation still runs after Close closed the store and the HSM:\n%s", stacks)
	}
	observer{d}.RotateAfterUse("prod-db")
	if stacks := goroutines(); strings.Contains(stacks, "rotateAfterUse") {
		t.Fatalf("a rotation started after Close:\n%s", stacks)
	}
}

func goroutines() string {
	buf := make([]byte, 1<<20)
	return string(buf[:runtime.Stack(buf, true)])
}
