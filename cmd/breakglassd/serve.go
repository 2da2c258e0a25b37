package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/server/config"
	"github.com/bgbroker/breakglass/server/daemon"
	"github.com/bgbroker/breakglass/server/devmode"
)

// loadConfig loads the configuration and the logger it describes (level
// overriding log.level when set).
func loadConfig(path string, stderr io.Writer, level string) (*config.Config, *slog.Logger, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, nil, err
	}
	log, err := logger(stderr, cfg.Log, level)
	if err != nil {
		return nil, nil, err
	}
	return cfg, log, nil
}

func logger(w io.Writer, cfg config.Log, levelFlag string) (*slog.Logger, error) {
	lv := cfg.Level
	if levelFlag != "" {
		lv = levelFlag
	}
	var level slog.Level
	if lv != "" {
		if err := level.UnmarshalText([]byte(lv)); err != nil {
			return nil, fmt.Errorf("log level %q: want debug, info, warn or error", lv)
		}
	}
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return slog.New(slog.NewTextHandler(w, opts)), nil
}

// serveUntilDone runs the daemon until ctx ends or a listener fails.
// serveUntilDone serves until ctx ends or the daemon fails, reloading
// the policy on SIGHUP.
func serveUntilDone(ctx context.Context, d *daemon.Daemon, log *slog.Logger) error {
	defer d.Close()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			log.Info("shutting down")
			return nil
		case err := <-d.Err():
			return err
		case <-hup:
			res, err := d.ReloadPolicy(ctx, "")
			if err != nil {
				log.Error("SIGHUP: policy not reloaded; the one in force stays", "err", err)
				continue
			}
			log.Info("SIGHUP: policy reloaded", "hash", res.Hash, "changed", res.Changed, "changes", res.Changes)
		}
	}
}

func newServeCmd(stderr io.Writer) *cobra.Command {
	var (
		cfgPath, readyFile, level string
		acceptGenesis             bool
	)
	cmd := &cobra.Command{
		Use:   "serve --config FILE",
		Short: "Run the broker",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, err := loadConfig(cfgPath, stderr, level)
			if err != nil {
				return err
			}
			d, err := daemon.Start(cmd.Context(), daemon.Options{Config: cfg, Log: log, ReadyFile: readyFile, AcceptUnsignedGenesis: acceptGenesis})
			if err != nil {
				return err
			}
			return serveUntilDone(cmd.Context(), d, log)
		},
	}
	cmd.Flags().StringVar(&cfgPath, "config", "", "configuration file (required)")
	cmd.Flags().BoolVar(&acceptGenesis, "accept-unsigned-genesis", false,
		"on a log without a policy, accept the configured policy without its admins' signatures (logged as an unsigned genesis the offline verifier reports; pin it with bgctl audit verify --genesis-policy)")
	cmd.Flags().StringVar(&readyFile, "ready-file", "", "write the listening addresses as JSON to this file once serving")
	cmd.Flags().StringVar(&level, "log-level", "", "debug, info, warn or error (overrides log.level)")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}

func newDevCmd(stdout, stderr io.Writer) *cobra.Command {
	var o devmode.Options
	var readyFile, level, consoleAddr string
	cmd := &cobra.Command{
		Use:   "dev [--dir DIR] [--addr HOST:PORT] [--http-addr HOST:PORT] [--metrics-addr HOST:PORT] [--console-addr HOST:PORT]",
		Short: "Run a complete broker for trying it out: SoftHSM2 token, CA, demo identities and policy in DIR",
		Long: `Dev mode creates, on its first run, everything a broker needs in DIR: a SoftHSM2
token with the token, audit and checkpoint keys, a CA with a server certificate
and client certificates for alice (requester), bob and carol (db-admins), erin
(security), dave (auditor) and svc-db (relying party), a policy, config.yaml and the database. Later
runs reuse DIR. NOT FOR PRODUCTION: the CA key and the HSM PIN are in DIR.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			// The console is on in dev mode, also for a directory made
			// before it existed; on a free port when the gRPC one is.
			o.ConsoleAddr = consoleAddr
			if !cmd.Flags().Changed("console-addr") && strings.HasSuffix(o.GRPCAddr, ":0") {
				o.ConsoleAddr = "127.0.0.1:0"
			}
			path, created, err := devmode.Setup(ctx, o)
			if err != nil {
				return err
			}
			cfg, err := config.Load(path)
			if err != nil {
				return err
			}
			if cmd.Flags().Changed("addr") {
				cfg.Listen.GRPC = o.GRPCAddr
			}
			if cmd.Flags().Changed("http-addr") {
				cfg.Listen.HTTPS = o.HTTPAddr
			}
			if cmd.Flags().Changed("metrics-addr") {
				cfg.Listen.Metrics = o.MetricsAddr
			}
			if cmd.Flags().Changed("console-addr") || cfg.Listen.Console == "" {
				cfg.Listen.Console = o.ConsoleAddr
			}
			hooks, err := devmode.WebhookSinks(filepath.Dir(path), o.Webhooks)
			if err != nil {
				return err
			}
			cfg.Notify.Sinks = append(cfg.Notify.Sinks, hooks...)
			log, err := logger(stderr, cfg.Log, level)
			if err != nil {
				return err
			}
			// Dev mode accepts its first policy unsigned only when its demo
			// admins cannot sign it, and signs an edited policy at start.
			d, err := daemon.Start(ctx, daemon.Options{Config: cfg, Log: log, ReadyFile: readyFile, Dev: true, AcceptUnsignedGenesis: true,
				SignPolicy: devmode.PolicySigner(o.Dir)})
			if err != nil {
				return err
			}
			envs, err := devmode.WriteIdentityEnv(o.Dir, d.Ready.GRPC, bgctlDir())
			if err != nil {
				d.Close()
				return err
			}
			printBanner(stdout, o.Dir, path, created, d.Ready, envs)
			return serveUntilDone(ctx, d, log)
		},
	}
	cmd.Flags().StringVar(&o.Dir, "dir", ".breakglass-dev", "directory holding the dev broker's state")
	cmd.Flags().StringVar(&o.GRPCAddr, "addr", "127.0.0.1:7443", "gRPC (mTLS) listen address")
	cmd.Flags().StringVar(&o.HTTPAddr, "http-addr", "127.0.0.1:7444", "HTTPS listen address (JWKS, metadata, health)")
	cmd.Flags().StringVar(&o.MetricsAddr, "metrics-addr", "127.0.0.1:7445", "metrics listen address (plain HTTP, no authentication: keep it on loopback)")
	cmd.Flags().StringVar(&consoleAddr, "console-addr", "127.0.0.1:7446", "approver console listen address (HTTPS, client certificates required), reached as https://localhost:PORT")
	cmd.Flags().StringVar(&readyFile, "ready-file", "", "write the listening addresses as JSON to this file once serving")
	cmd.Flags().StringVar(&level, "log-level", "", "debug, info, warn or error")
	cmd.Flags().StringArrayVar(&o.Webhooks, "webhook", nil, "announce events to this Standard Webhooks receiver (repeatable); the secret is in DIR/webhook.secret")
	return cmd
}

// bgctlDir is the directory of this breakglassd when bgctl is beside it
// (make dev builds both into .bin, packages install both), for the
// identity files to put on PATH; "" otherwise.
func bgctlDir() string {
	exe, err := os.Executable()
	if err != nil {
		return ""
	}
	if exe, err = filepath.EvalSymlinks(exe); err != nil {
		return ""
	}
	dir := filepath.Dir(exe)
	if fi, err := os.Stat(filepath.Join(dir, "bgctl")); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		return ""
	}
	return dir
}

func printBanner(w io.Writer, dir, cfgPath string, created bool, r daemon.Ready, envs []string) {
	abs, _ := filepath.Abs(dir)
	state := "reusing"
	if created {
		state = "created"
	}
	fmt.Fprintf(w, `
breakglass broker, DEV MODE (not for production)
  state     %s %s (CA key, HSM PIN and client keys live here; in production the CA key belongs to the security team)
  gRPC      %s (mTLS, TLS 1.3)
  HTTPS     %s  (JWKS at %s/.well-known/jwks.json, CA %s)
  metrics   http://%s/metrics  (loopback, no authentication)
  console   %s  (approver console; import a client certificate into the browser first,
            such as bob's: openssl pkcs12 -export -in %s -inkey %s -out bob.p12)
  config    %s  (breakglassd serve --config %s runs the same broker)

identities (source one per shell):
`, state, abs, r.GRPC, r.Issuer, r.Issuer, filepath.Join(abs, "ca", "ca.crt"), r.Metrics, r.Console,
		filepath.Join(abs, "identities", "bob.crt"), filepath.Join(abs, "identities", "bob.key"), cfgPath, cfgPath)
	for i, e := range envs {
		fmt.Fprintf(w, "  source %-60s # %s\n", e, devmode.Principals[i].Role)
	}
	fmt.Fprintf(w, `
try it:
  (alice) bgctl request --account prod-db --justification "primary is down" --wait
  (bob)   bgctl list --awaiting-my-review; bgctl approve ID
  (erin)  bgctl approve ID
  (alice) bgctl token ID --audience db.prod.example
`)
	if !strings.Contains(readConfig(cfgPath), "ssh_ca:") {
		fmt.Fprintf(w, "\nthis dev directory predates SSH and X.509 certificates; remove %s to get both CAs\n", abs)
		return
	}
	ca := filepath.Join(abs, "ca", "ca.crt")
	fmt.Fprintf(w, `
SSH and X.509 certificates for grants of prod-db (CA keys in the HSM):
  sshd_config:
    TrustedUserCAKeys /etc/ssh/breakglass_ca.pub      # curl -fsS --cacert %[2]s %[1]s/ssh/ca.pub -o /etc/ssh/breakglass_ca.pub
    RevokedKeys /etc/ssh/breakglass_revoked.krl       # curl -fsS --cacert %[2]s %[1]s/ssh/revoked.krl -o /etc/ssh/breakglass_revoked.krl (every minute)
    # principal: %[3]s (the user the requester logs in as)
  postgresql.conf:
    ssl = on
    ssl_ca_file = 'breakglass_x509_ca.pem'            # curl -fsS --cacert %[2]s %[1]s/x509/ca.pem -o $PGDATA/breakglass_x509_ca.pem
    ssl_crl_file = 'breakglass.crl.pem'               # curl -fsS --cacert %[2]s %[1]s/x509/crl.pem -o $PGDATA/breakglass.crl.pem; then SELECT pg_reload_conf()
  pg_hba.conf:
    hostssl all all 0.0.0.0/0 cert                    # the certificate's CN (the requester) is the role
  (alice) bgctl ssh ID %[3]s@HOST
  (alice) bgctl x509-cert ID --key-out alice.key --out alice.crt
`, r.Issuer, ca, devmode.SSHPrincipal)
}

func readConfig(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

func newPolicyCmd(stdout io.Writer) *cobra.Command {
	cmd := &cobra.Command{Use: "policy", Short: "Work with the access policy"}
	var cfgPath, policyPath string
	check := &cobra.Command{
		Use:   "check --config FILE | --policy FILE",
		Short: "Validate a policy and print every problem with where it is",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var (
				p   *policy.Policy
				src string
				err error
			)
			switch {
			case policyPath != "":
				var b []byte
				if b, err = os.ReadFile(policyPath); err != nil {
					return err
				}
				src = policyPath
				p, err = policy.Load(b, policyPath)
			case cfgPath != "":
				cfg, lerr := config.Load(cfgPath)
				if lerr != nil {
					return lerr
				}
				p, src, err = cfg.LoadPolicy()
			default:
				return errors.New("give --config FILE or --policy FILE")
			}
			var inv *policy.InvalidError
			if errors.As(err, &inv) {
				fmt.Fprintln(stdout, inv.Error())
				return exitError{code: 1, msg: fmt.Sprintf("the policy has %d problem(s); the broker refuses to start with it", len(inv.Problems))}
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "policy %s is valid\n  hash %s\n  %d groups, %d accounts\n", src, p.Hash(), len(p.Groups), len(p.Accounts))
			if p.Identity != nil {
				fmt.Fprintf(stdout, "  identity %s\n", p.Identity)
			} else {
				fmt.Fprintln(stdout, "  identity: not named; the broker puts its configuration's identity rule in, which changes the hash (check with --config)")
			}
			for _, a := range p.Accounts {
				fmt.Fprintf(stdout, "  %s: requesters %s; quorum %s\n", a.Name, strings.Join(a.Requesters, ", "), a.Quorum)
			}
			for _, w := range p.Warnings() {
				fmt.Fprintf(stdout, "warning: %s:%s\n", src, w)
			}
			return nil
		},
	}
	check.Flags().StringVar(&cfgPath, "config", "", "broker configuration naming the policy")
	check.Flags().StringVar(&policyPath, "policy", "", "policy file")
	cmd.AddCommand(check, newPolicyResetCmd(stdout))
	return cmd
}

func newPolicyResetCmd(stdout io.Writer) *cobra.Command {
	var cfgPath, reason, operator string
	var force bool
	cmd := &cobra.Command{
		Use:   "reset --config FILE --force --reason TEXT [--operator NAME]",
		Short: "TRUST RESET: put the configured policy in force without the policy admins' quorum (when their keys are lost)",
		Long: `Puts the policy the configuration names in force without the policy admins'
signatures: the recovery when too many admins' keys are lost for any change to
reach their quorum. Run it with the broker stopped, as the operator, on the
broker's host (it needs the HSM PIN and the database). It is logged as a trust
reset, which bgctl audit verify reports on every verification from then on,
and announced to every sink. Everything the policy admins' quorum protects
depends on this not happening unseen: tell your auditors.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !force {
				return errors.New("a trust reset bypasses the policy admins' quorum and is reported by every audit from now on: say --force")
			}
			if strings.TrimSpace(reason) == "" {
				return errors.New("--reason is required: say why the policy admins cannot sign")
			}
			cfg, err := config.Load(cfgPath)
			if err != nil {
				return err
			}
			if operator == "" {
				operator = os.Getenv("USER")
			}
			res, err := daemon.ResetPolicy(cmd.Context(), cfg, operator, reason, nil)
			if err != nil {
				return err
			}
			if !res.Changed {
				fmt.Fprintf(stdout, "policy %s is already in force; nothing was reset\n", res.Hash)
				return nil
			}
			fmt.Fprintf(stdout, "TRUST RESET: policy %s in force (was %s) without the policy admins' quorum, audit entry %d\n", res.Hash, res.Previous, res.Entry.Index)
			for _, c := range res.Changes {
				fmt.Fprintf(stdout, "  %s\n", c)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&cfgPath, "config", "", "broker configuration naming the policy (required)")
	cmd.Flags().BoolVar(&force, "force", false, "yes, bypass the policy admins' quorum")
	cmd.Flags().StringVar(&reason, "reason", "", "why the policy admins cannot sign (logged)")
	cmd.Flags().StringVar(&operator, "operator", "", "who runs the reset (default $USER; logged)")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}
