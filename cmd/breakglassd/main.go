// Command breakglassd is the break-glass access broker: the daemon, its dev
// mode, and the HSM key ceremonies.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRoot(stdout, stderr)
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			if ee.msg != "" {
				fmt.Fprintln(stderr, "breakglassd:", ee.msg)
			}
			return ee.code
		}
		fmt.Fprintln(stderr, "breakglassd:", err)
		return 1
	}
	return 0
}

// exitError ends the command with a code, after output that already told
// the user what happened.
type exitError struct {
	code int
	msg  string
}

func (e exitError) Error() string { return e.msg }

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "breakglassd",
		Short:         "Break-glass access broker: HSM-signed emergency access behind a quorum of approvers",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(newHSMCmd(stdout, stderr), newServeCmd(stderr), newDevCmd(stdout, stderr), newPolicyCmd(stdout),
		newBackupCmd(stdout, stderr), newRestoreCmd(stdout, stderr), newDBCmd(stdout, stderr))
	addVersion(root, stdout)
	return root
}
