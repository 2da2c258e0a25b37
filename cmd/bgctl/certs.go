package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"

	"github.com/bgbroker/breakglass/client"
	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
)

// certPath is where OpenSSH looks for a key's certificate: KEY-cert.pub
// beside KEY (or KEY.pub).
func certPath(pubKeyFile string) string {
	return strings.TrimSuffix(pubKeyFile, ".pub") + "-cert.pub"
}

func (a *app) sshCertCmd() *cobra.Command {
	var pubFile, out string
	var principals []string
	cmd := &cobra.Command{
		Use:   "ssh-cert ID --public-key FILE [--principal P]... [--out FILE]",
		Short: "Get an OpenSSH user certificate for your approved grant (written beside the key as NAME-cert.pub)",
		Long: `Asks the broker to sign an OpenSSH user certificate for a public key (the
private key never leaves this machine). Its principals are the account's SSH
principals (or those given, which must be among them); it is valid from the
grant's approval to the grant's end and counts toward the grant's issuances.
ssh picks it up from beside the key (NAME-cert.pub), or use -o CertificateFile.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pub, err := os.ReadFile(pubFile)
			if err != nil {
				return err
			}
			if out == "" {
				out = certPath(pubFile)
			}
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.IssueSSHCertificate(ctx, &bgv1.IssueSSHCertificateRequest{RequestId: args[0], PublicKey: string(pub), Principals: principals})
				if err != nil {
					return err
				}
				if err := os.WriteFile(out, []byte(resp.GetCertificate()+"\n"), 0o644); err != nil { //nolint:gosec // a certificate is public; ssh reads it beside the key
					return err
				}
				if a.output == "json" {
					return a.printJSON(resp)
				}
				fmt.Fprintln(a.stdout, out)
				a.describeSSHCert(resp)
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&pubFile, "public-key", "", "the public key to certify (authorized_keys format, e.g. ~/.ssh/id_ed25519.pub)")
	cmd.Flags().StringArrayVar(&principals, "principal", nil, "a principal to name (repeatable; default: all the account allows)")
	cmd.Flags().StringVar(&out, "out", "", "where to write the certificate (default: beside the key, NAME-cert.pub)")
	_ = cmd.MarkFlagRequired("public-key")
	return cmd
}

func (a *app) describeSSHCert(resp *bgv1.IssueSSHCertificateResponse) {
	fmt.Fprintf(a.stderr, "SSH certificate serial %d, key id %s, principals %s, valid %s to %s; %d more may be issued\n",
		resp.GetSerial(), resp.GetKeyId(), strings.Join(resp.GetPrincipals(), ","), fmtTime(resp.GetValidAfter()), fmtTime(resp.GetValidBefore()), resp.GetIssuancesLeft())
}

func (a *app) sshCmd() *cobra.Command {
	var principal, sshBin string
	cmd := &cobra.Command{
		Use:   "ssh ID [--principal P] DESTINATION [-- SSH ARGS]",
		Short: "Log in with a certificate for your grant: an ephemeral key, its certificate, and the system ssh",
		Long: `Makes an Ed25519 key in a private temporary directory, gets an OpenSSH
certificate for it from your approved grant, and runs the system ssh with
exactly that key and certificate (-i, CertificateFile, IdentitiesOnly). The key
and certificate are removed when ssh exits; ssh's exit code is bgctl's.
DESTINATION is user@host (the user must be one of the certificate's
principals); what follows -- goes to ssh after it (options or a command).`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, dest, extra := args[0], args[1], args[2:]
			if dash := cmd.ArgsLenAtDash(); dash >= 0 && dash < 2 {
				return errors.New("give the request ID and the destination before --")
			}
			if len(args) > 2 && cmd.ArgsLenAtDash() != 2 {
				return fmt.Errorf("unexpected argument %q: ssh arguments go after --", args[2])
			}
			dir, err := os.MkdirTemp("", "bgctl-ssh-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(dir)
			keyFile := filepath.Join(dir, "id_ed25519")
			pub, priv, err := ed25519.GenerateKey(rand.Reader)
			if err != nil {
				return err
			}
			blk, err := ssh.MarshalPrivateKey(priv, "bgctl ssh "+id)
			if err != nil {
				return err
			}
			if err := os.WriteFile(keyFile, pem.EncodeToMemory(blk), 0o600); err != nil {
				return err
			}
			sshPub, err := ssh.NewPublicKey(pub)
			if err != nil {
				return err
			}
			var principals []string
			if principal != "" {
				principals = []string{principal}
			} else if u, _, ok := strings.Cut(dest, "@"); ok && u != "" {
				principals = []string{u}
			}
			certFile := keyFile + "-cert.pub"
			err = a.call(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.IssueSSHCertificate(ctx, &bgv1.IssueSSHCertificateRequest{RequestId: id, PublicKey: string(ssh.MarshalAuthorizedKey(sshPub)), Principals: principals})
				if err != nil {
					return err
				}
				a.describeSSHCert(resp)
				return os.WriteFile(certFile, []byte(resp.GetCertificate()+"\n"), 0o600)
			})
			if err != nil {
				return err
			}
			run := exec.CommandContext(cmd.Context(), sshBin, append([]string{"-i", keyFile, "-o", "CertificateFile=" + certFile, "-o", "IdentitiesOnly=yes", dest}, extra...)...) //nolint:gosec // running the ssh the user names, with their arguments, is the point
			run.Stdin, run.Stdout, run.Stderr = a.stdin, a.stdout, a.stderr
			if err := run.Run(); err != nil {
				var ee *exec.ExitError
				if errors.As(err, &ee) {
					return exitCode(ee.ExitCode())
				}
				return fmt.Errorf("running %s: %w", sshBin, err)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&principal, "principal", "", "the principal to ask for (default: the user of DESTINATION, or all the account allows)")
	cmd.Flags().StringVar(&sshBin, "ssh", "ssh", "the ssh client to run")
	return cmd
}

func (a *app) x509CertCmd() *cobra.Command {
	var csrFile, keyOut, out, caOut string
	cmd := &cobra.Command{
		Use:   "x509-cert ID (--csr FILE | --key-out FILE) --out FILE [--ca-out FILE]",
		Short: "Get an X.509 client certificate for your approved grant",
		Long: `Asks the broker to sign an X.509 client certificate for the key of a
certificate request. With --key-out a P-256 key is made here (mode 0600) and
the request signed with it; the private key never leaves this machine. The
certificate's subject and names come from the account's policy, not from the
request; it is valid from the grant's approval to the grant's end.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if (csrFile == "") == (keyOut == "") {
				return errors.New("give exactly one of --csr FILE and --key-out FILE")
			}
			var csr []byte
			if csrFile != "" {
				var err error
				if csr, err = os.ReadFile(csrFile); err != nil {
					return err
				}
			} else {
				key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
				if err != nil {
					return err
				}
				der, err := x509.MarshalPKCS8PrivateKey(key)
				if err != nil {
					return err
				}
				f, err := os.OpenFile(keyOut, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
				if err != nil {
					return fmt.Errorf("writing the private key: %w (it is never overwritten)", err)
				}
				if _, err := f.Write(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})); err != nil {
					_ = f.Close()
					return err
				}
				if err := f.Close(); err != nil {
					return err
				}
				if csr, err = x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key); err != nil {
					return err
				}
			}
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.IssueX509Certificate(ctx, &bgv1.IssueX509CertificateRequest{RequestId: args[0], Csr: csr})
				if err != nil {
					return err
				}
				if err := os.WriteFile(out, []byte(resp.GetCertificatePem()), 0o644); err != nil { //nolint:gosec // a certificate is public
					return err
				}
				if caOut != "" {
					if err := os.WriteFile(caOut, []byte(resp.GetCaCertificatePem()), 0o644); err != nil { //nolint:gosec // a CA certificate is public
						return err
					}
				}
				if a.output == "json" {
					return a.printJSON(resp)
				}
				fmt.Fprintln(a.stdout, out)
				fmt.Fprintf(a.stderr, "X.509 certificate serial %s, CN=%s, valid %s to %s; %d more may be issued\n",
					resp.GetSerial(), resp.GetCommonName(), fmtTime(resp.GetNotBefore()), fmtTime(resp.GetNotAfter()), resp.GetIssuancesLeft())
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&csrFile, "csr", "", "a PKCS #10 certificate request (PEM or DER)")
	cmd.Flags().StringVar(&keyOut, "key-out", "", "make a P-256 key here (mode 0600, never overwritten) and a request for it")
	cmd.Flags().StringVar(&out, "out", "", "where to write the certificate (PEM)")
	cmd.Flags().StringVar(&caOut, "ca-out", "", "also write the CA certificate that signed it (PEM)")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}
