package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/bgbroker/breakglass/client"
	"github.com/bgbroker/breakglass/format/passkey"
	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
)

func (a *app) passkeyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "passkey",
		Short: "Bind, list and remove the passkeys that sign your reviews in the console",
		Long: `A passkey (or security key) created in the approver console signs your reviews there
only once you bind it: the console shows a one-time code, and "bgctl passkey confirm CODE"
signs a binding statement with your client certificate's key (docs/signing.md). The
binding is logged, so an auditor can prove from the log that the passkey is yours.`,
	}
	cmd.AddCommand(a.passkeyConfirmCmd(), a.passkeyListCmd(), a.passkeyRemoveCmd())
	return cmd
}

func passkeyState(s bgv1.PasskeyState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "PASSKEY_STATE_"))
}

func (a *app) passkeyConfirmCmd() *cobra.Command {
	var yes bool
	cmd := &cobra.Command{
		Use:   "confirm CODE [--yes]",
		Short: "Bind the passkey the console's one-time code stands for (shows it and asks first on a terminal)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				p, err := c.PendingPasskey(ctx, args[0])
				if err != nil {
					return err
				}
				if !yes && a.isTerminal() {
					pk := p.Passkey
					w := tabwriter.NewWriter(a.stderr, 0, 4, 2, ' ', 0)
					fmt.Fprintf(w, "Passkey\t%s\n", oneLine(orDash(pk.GetLabel()), 64))
					fmt.Fprintf(w, "Credential\t%s\n", passkey.EncodeID(pk.GetCredentialId()))
					fmt.Fprintf(w, "Key\t%s %s\n", passkey.AlgName(pk.GetAlgorithm()), pk.GetFingerprint())
					fmt.Fprintf(w, "Console\t%s (RP ID %s)\n", pk.GetWebOrigin(), pk.GetRpId())
					fmt.Fprintf(w, "Created\t%s\n", fmtTime(pk.GetCreateTime()))
					_ = w.Flush()
					ok, err := a.confirm(fmt.Sprintf("Bind this passkey to %s? Check that the console shows the same key fingerprint.", pk.GetPrincipal()))
					if err != nil {
						return err
					}
					if !ok {
						fmt.Fprintln(a.stderr, "nothing done")
						return exitCode(1)
					}
				}
				resp, err := c.ConfirmPasskey(ctx, args[0], p)
				if err != nil {
					return err
				}
				if a.output == "json" {
					return a.printJSON(resp)
				}
				fmt.Fprintf(a.stdout, "passkey %s bound to %s (audit entry %d); it signs your reviews in the console from now on\n",
					passkey.EncodeID(resp.GetPasskey().GetCredentialId()), resp.GetPasskey().GetPrincipal(), resp.GetEntry().GetIndex())
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&yes, "yes", false, "do not ask for confirmation")
	return cmd
}

func (a *app) passkeyListCmd() *cobra.Command {
	var principal string
	cmd := &cobra.Command{
		Use:   "list [--principal NAME]",
		Short: "Your passkeys (admins and auditors: anyone's)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.ListPasskeys(ctx, &bgv1.ListPasskeysRequest{Principal: principal})
				if err != nil {
					return err
				}
				if a.output == "json" {
					return a.printJSON(resp)
				}
				w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "CREDENTIAL\tLABEL\tSTATE\tKEY\tCONSOLE\tCREATED\tBOUND")
				for _, p := range resp.GetPasskeys() {
					bound := "-"
					if p.GetBindTime() != nil {
						bound = fmt.Sprintf("%s (entry %d)", fmtTime(p.GetBindTime()), p.GetBoundEntry().GetIndex())
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s %s\t%s\t%s\t%s\n", passkey.EncodeID(p.GetCredentialId()), oneLine(orDash(p.GetLabel()), 32), passkeyState(p.GetState()),
						passkey.AlgName(p.GetAlgorithm()), oneLine(p.GetFingerprint(), 24), p.GetWebOrigin(), fmtTime(p.GetCreateTime()), bound)
				}
				return w.Flush()
			})
		},
	}
	cmd.Flags().StringVar(&principal, "principal", "", "whose passkeys (default yours)")
	return cmd
}

func (a *app) passkeyRemoveCmd() *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "remove CREDENTIAL [--reason TEXT]",
		Short: "End a passkey's binding: its approvals count no more (works while the HSM is down)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := passkey.DecodeID(args[0])
			if err != nil {
				return fmt.Errorf("%s: %w (bgctl passkey list shows the IDs)", args[0], err)
			}
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.RemovePasskey(ctx, &bgv1.RemovePasskeyRequest{CredentialId: id, Reason: reason})
				if err != nil {
					return err
				}
				if a.output == "json" {
					return a.printJSON(resp)
				}
				if resp.GetEntry() == nil {
					fmt.Fprintf(a.stdout, "pending passkey %s forgotten (it was never bound)\n", args[0])
					return nil
				}
				fmt.Fprintf(a.stdout, "passkey %s removed (audit entry %d); it signs nothing more\n", args[0], resp.GetEntry().GetIndex())
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why, for the record")
	return cmd
}
