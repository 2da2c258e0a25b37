// Command bgctl is the command line for requesters, approvers and auditors.
// Every flag can also come from a BGCTL_* environment variable (BGCTL_ADDR,
// BGCTL_CA, BGCTL_CERT, BGCTL_KEY, BGCTL_OUTPUT, ...).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc/status"

	"github.com/bgbroker/breakglass/client"
	"github.com/bgbroker/breakglass/cmd/bgctl/internal/pkcs11key"
	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// app holds the global flags and streams.
type app struct {
	addr, ca, cert, key string
	output              string
	timeout             time.Duration
	stdin               io.Reader
	stdout, stderr      io.Writer
	// isTerminal reports whether stdin is a terminal (confirmations).
	isTerminal func() bool
	// token is the PKCS#11 session of a --key pkcs11: URI, closed when
	// the command ends.
	token io.Closer
}

// exitCode ends the command with a code after it has printed what happened.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit %d", int(e)) }

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	// A hang-up (the terminal closed) ends the command like an interrupt,
	// so what it cleans up on the way out (bgctl ssh's ephemeral key) is
	// cleaned up then too.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	a := &app{stdin: stdin, stdout: stdout, stderr: stderr, isTerminal: func() bool { return stdinIsTerminal(stdin) }}
	root := a.root()
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if a.token != nil {
		_ = a.token.Close()
	}
	if err == nil {
		return 0
	}
	var ec exitCode
	if errors.As(err, &ec) {
		return int(ec)
	}
	if st, ok := status.FromError(err); ok && st.Code() != 0 {
		fmt.Fprintf(stderr, "bgctl: %s: %s\n", st.Code(), st.Message())
		return 1
	}
	fmt.Fprintln(stderr, "bgctl:", err)
	return 1
}

func (a *app) root() *cobra.Command {
	root := &cobra.Command{
		Use:   "bgctl",
		Short: "Ask for, approve and audit break-glass access",
		Long: `bgctl talks to the break-glass broker over mTLS. Your identity is your client
certificate; every flag can also be set with BGCTL_<FLAG> (BGCTL_ADDR, BGCTL_CA,
BGCTL_CERT, BGCTL_KEY, BGCTL_OUTPUT ...).`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return bindEnv(cmd)
		},
	}
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	pf := root.PersistentFlags()
	pf.StringVar(&a.addr, "addr", "", "broker gRPC address host:port, or several replicas' separated by commas, tried in turn when one is unavailable (BGCTL_ADDR)")
	pf.StringVar(&a.ca, "ca", "", "CA certificate that signed the broker's certificate (BGCTL_CA)")
	pf.StringVar(&a.cert, "cert", "", "your client certificate (BGCTL_CERT)")
	pf.StringVar(&a.key, "key", "", "your client key: a PEM file, or a key on a PKCS#11 token as an RFC 7512 URI such as "+
		"'pkcs11:token=PIV;object=PIV AUTH key?module-path=/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so&pin-source=file:/home/me/.pin' "+
		"(PIN from pin-source or BGCTL_PKCS11_PIN, never a flag; library from module-path or BGCTL_PKCS11_MODULE) (BGCTL_KEY)")
	pf.StringVarP(&a.output, "output", "o", "table", "table or json")
	pf.DurationVar(&a.timeout, "timeout", 30*time.Second, "deadline for each call")
	root.AddCommand(a.policyCmd(), a.requestCmd(), a.listCmd(), a.showCmd(), a.reviewCmd("approve"), a.reviewCmd("deny"),
		a.cancelCmd(), a.tokenCmd(), a.revokeCmd(), a.checkCmd(), a.keysCmd(), a.verifyCmd(), a.accountsCmd(), a.auditCmd(), a.reviewsCmd(), a.reportCmd(), a.alertCmd(),
		a.sshCertCmd(), a.sshCmd(), a.x509CertCmd(), a.passkeyCmd())
	return root
}

// bindEnv fills every flag not given on the command line from BGCTL_<NAME>.
func bindEnv(cmd *cobra.Command) error {
	var err error
	set := func(f *pflag.Flag) {
		if f.Changed || err != nil {
			return
		}
		name := "BGCTL_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(name); ok {
			if e := f.Value.Set(v); e != nil {
				err = fmt.Errorf("%s=%q: %w", name, v, e)
			}
		}
	}
	cmd.Flags().VisitAll(set)
	cmd.InheritedFlags().VisitAll(set)
	return err
}

func (a *app) dial() (*client.Client, error) {
	if a.output != "table" && a.output != "json" {
		return nil, fmt.Errorf("-o %q: want table or json", a.output)
	}
	if pkcs11key.IsURI(a.key) {
		return a.dialToken()
	}
	return client.Dial(client.Options{Addr: a.addr, CAFile: a.ca, CertFile: a.cert, KeyFile: a.key})
}

// dialToken dials with the client certificate's key on a PKCS#11 token:
// the handshake and every statement are signed there, and reviews say so
// (key_store pkcs11).
func (a *app) dialToken() (*client.Client, error) {
	u, err := pkcs11key.ParseURI(a.key)
	if err != nil {
		return nil, fmt.Errorf("--key: %w", err)
	}
	if a.token != nil {
		_ = a.token.Close()
		a.token = nil
	}
	key, closer, err := pkcs11key.Open(u, os.Getenv)
	if err != nil {
		return nil, fmt.Errorf("--key: %w", err)
	}
	a.token = closer
	tc, err := client.TLSConfigSigner(a.ca, a.cert, key)
	if err != nil {
		return nil, err
	}
	return client.Dial(client.Options{Addr: a.addr, TLS: tc, KeyStore: bgv1.KeyStore_KEY_STORE_PKCS11})
}

func (a *app) ctx(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	return context.WithTimeout(cmd.Context(), a.timeout)
}
