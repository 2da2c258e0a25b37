package main

import (
	"context"
	"crypto"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/bgbroker/breakglass/client"
	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/format/statement"
	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
)

// policyCmd changes the policy under the policy admins' quorum: proposals
// over the API, statements signed offline for a bundle beside the file.
func (a *app) policyCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "policy", Short: "The policy in force, and changing it under the policy admins' quorum"}
	cmd.AddCommand(a.policyReloadCmd(), a.policyGetCmd(), a.policyProposeCmd(), a.policyListCmd(), a.policyShowCmd(),
		a.policyReviewCmd("approve"), a.policyReviewCmd("deny"), a.policySignCmd())
	return cmd
}

func (a *app) policyReloadCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "reload",
		Short: "Make the broker read its policy and policy.sigs again and put it in force when the admins signed it (as SIGHUP does)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				res, err := c.ReloadPolicy(ctx, &bgv1.ReloadPolicyRequest{})
				if err != nil {
					return err
				}
				if a.output == "json" {
					return a.printJSON(res)
				}
				if !res.GetChanged() {
					fmt.Fprintf(a.stdout, "policy %s is already in force; nothing changed\n", res.GetPolicyHash())
					return nil
				}
				fmt.Fprintf(a.stdout, "policy %s in force (was %s), audit entry %d, signed by %s\n", res.GetPolicyHash(), orDash(res.GetPreviousHash()),
					res.GetEntry().GetIndex(), strings.Join(res.GetSigners(), ", "))
				for _, ch := range res.GetChanges() {
					fmt.Fprintf(a.stdout, "  %s\n", ch)
				}
				return nil
			})
		},
	}
}

func (a *app) policyGetCmd() *cobra.Command {
	var source bool
	cmd := &cobra.Command{
		Use:   "get [--source]",
		Short: "The policy in force: its hash, who may change it, and with --source a policy file that loads to it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				res, err := c.GetPolicy(ctx, &bgv1.GetPolicyRequest{})
				if err != nil {
					return err
				}
				// The hash is recomputed here: it is what statements sign.
				p, err := policy.FromCanonicalJSON(res.GetCanonical())
				if err != nil {
					return fmt.Errorf("the broker's policy does not load: %w", err)
				}
				if p.Hash() != res.GetPolicyHash() {
					return fmt.Errorf("the broker's policy hashes to %s, not the %s it states", p.Hash(), res.GetPolicyHash())
				}
				switch {
				case source:
					_, err = a.stdout.Write(res.GetSource())
					return err
				case a.output == "json":
					return a.printJSON(res)
				}
				fmt.Fprintf(a.stdout, "policy %s (audit entry %d)\n  change it with: %s\n  policy admins: %s\n  origin %s\n", res.GetPolicyHash(), res.GetEntryIndex(),
					res.GetAdminRule(), orDash(strings.Join(res.GetPolicyAdmins(), ", ")), res.GetOrigin())
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&source, "source", false, "print a policy file (YAML) that loads to the policy in force")
	return cmd
}

func (a *app) policyProposeCmd() *cobra.Command {
	var file, comment string
	cmd := &cobra.Command{
		Use:   "propose --file FILE [--comment TEXT]",
		Short: "Propose a new policy; the policy admins are alerted and approve it with bgctl policy approve",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := os.ReadFile(file)
			if err != nil {
				return err
			}
			// Every problem is reported here first, as the broker would.
			if _, err := policy.Load(b, file); err != nil {
				fmt.Fprintln(a.stderr, err)
				return exitCode(1)
			}
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				res, err := c.ProposePolicy(ctx, &bgv1.ProposePolicyRequest{Policy: b, Source: filepath.Base(file), Comment: comment})
				if err != nil {
					return err
				}
				if a.output == "json" {
					return a.printJSON(res)
				}
				p := res.GetProposal()
				fmt.Fprintf(a.stdout, "proposal %s (audit entry %d): policy %s to replace %s; needs %s, by %s\n", p.GetId(), p.GetEntryIndex(), p.GetPolicyHash(),
					p.GetPreviousHash(), p.GetRule(), fmtTime(p.GetExpireTime()))
				printChanges(a.stdout, p.GetChanges())
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&file, "file", "", "the proposed policy file")
	cmd.Flags().StringVar(&comment, "comment", "", "why, for the admins and the record")
	_ = cmd.MarkFlagRequired("file")
	return cmd
}

func (a *app) policyListCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "proposals",
		Short: "The pending policy proposals",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				res, err := c.ListPolicyProposals(ctx, &bgv1.ListPolicyProposalsRequest{})
				if err != nil {
					return err
				}
				if a.output == "json" {
					return a.printJSON(res)
				}
				fmt.Fprintf(a.stdout, "%-36s  %-10s  %-12s  %-8s  %-23s  %s\n", "ID", "PROPOSER", "POLICY", "MISSING", "EXPIRES", "WEAKENS")
				for _, p := range res.GetProposals() {
					fmt.Fprintf(a.stdout, "%-36s  %-10s  %-12s  %-8d  %-23s  %v\n", p.GetId(), p.GetProposer(), p.GetPolicyHash()[:12], p.GetMissing(), fmtTime(p.GetExpireTime()), p.GetWeakens())
				}
				return nil
			})
		},
	}
}

func (a *app) policyShowCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "show ID",
		Short: "A policy proposal: what it changes (recomputed here from the policy in force), its reviews and what it lacks",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				res, err := c.GetPolicyProposal(ctx, &bgv1.GetPolicyProposalRequest{Id: args[0]})
				if err != nil {
					return err
				}
				if a.output == "json" {
					return a.printJSON(res)
				}
				return a.printProposal(ctx, c, a.stdout, res.GetProposal())
			})
		},
	}
}

// printProposal shows a proposal; while it is pending, its changes are
// recomputed from its policy and the policy in force, never taken from the
// broker.
func (a *app) printProposal(ctx context.Context, c *client.Client, w io.Writer, p *bgv1.PolicyProposal) error {
	changes := p.GetChanges()
	state := strings.TrimPrefix(p.GetState().String(), "POLICY_PROPOSAL_STATE_")
	if p.GetState() == bgv1.PolicyProposalState_POLICY_PROPOSAL_STATE_PENDING {
		inForce, err := c.GetPolicy(ctx, &bgv1.GetPolicyRequest{})
		if err != nil {
			return err
		}
		_, _, mine, err := client.CheckedProposal(p, inForce)
		if err != nil {
			return err
		}
		if !slices.Equal(mine, changes) {
			return fmt.Errorf("the broker's summary of proposal %s differs from the one computed here from its policy: do not approve it", p.GetId())
		}
		changes = mine
	}
	fmt.Fprintf(w, "Proposal   %s\nState      %s", p.GetId(), state)
	if p.GetReason() != "" {
		fmt.Fprintf(w, " (%s)", p.GetReason())
	}
	fmt.Fprintf(w, "\nProposer   %s at %s\nComment    %s\nSource     %s\nPolicy     %s\nReplaces   %s\nRule       %s\nExpires    %s\n",
		p.GetProposer(), fmtTime(p.GetCreateTime()), orDash(p.GetComment()), orDash(p.GetSource()), p.GetPolicyHash(), p.GetPreviousHash(), p.GetRule(), fmtTime(p.GetExpireTime()))
	if p.GetState() == bgv1.PolicyProposalState_POLICY_PROPOSAL_STATE_PENDING {
		fmt.Fprintf(w, "Approved   %s; %d more approval(s) needed\n", orDash(strings.Join(p.GetSigners(), ", ")), p.GetMissing())
	}
	for _, r := range p.GetReviews() {
		fmt.Fprintf(w, "Review     %s %s at %s (audit entry %d): %s\n", r.GetReviewer(), strings.ToLower(strings.TrimPrefix(r.GetDecision().String(), "REVIEW_DECISION_")),
			fmtTime(r.GetCreateTime()), r.GetEntryIndex(), r.GetComment())
	}
	if p.GetWeakens() {
		fmt.Fprintln(w, "WEAKENS    this change widens access or weakens oversight (the WEAKENS lines below)")
	}
	fmt.Fprintln(w, "Changes")
	printChanges(w, changes)
	return nil
}

func printChanges(w io.Writer, changes []string) {
	for _, ch := range changes {
		fmt.Fprintf(w, "  %s\n", ch)
	}
}

func (a *app) policyReviewCmd(verb string) *cobra.Command {
	var comment string
	var yes bool
	decision := bgv1.ReviewDecision_REVIEW_DECISION_APPROVE
	short := "Approve a policy proposal with a statement signed by your certificate's key (shows it and asks first on a terminal)"
	if verb == "deny" {
		decision = bgv1.ReviewDecision_REVIEW_DECISION_DENY
		short = "Deny a policy proposal with a statement signed by your certificate's key"
	}
	cmd := &cobra.Command{
		Use:   verb + " ID [--comment TEXT] [--yes]",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				got, err := c.GetPolicyProposal(ctx, &bgv1.GetPolicyProposalRequest{Id: args[0]})
				if err != nil {
					return err
				}
				p := got.GetProposal()
				if !yes && a.isTerminal() {
					shown := a.stdout
					if a.output == "json" {
						shown = a.stderr
					}
					if err := a.printProposal(ctx, c, shown, p); err != nil {
						return err
					}
					ok, err := a.confirm(fmt.Sprintf("%s %s's policy change %s?", strings.ToUpper(verb[:1])+verb[1:], p.GetProposer(), p.GetPolicyHash()[:12]))
					if err != nil {
						return err
					}
					if !ok {
						fmt.Fprintln(a.stderr, "nothing done")
						return exitCode(1)
					}
				}
				res, err := c.ReviewPolicy(ctx, p, decision, comment)
				if err != nil {
					return err
				}
				if a.output == "json" {
					return a.printJSON(res)
				}
				q := res.GetProposal()
				state := strings.TrimPrefix(q.GetState().String(), "POLICY_PROPOSAL_STATE_")
				fmt.Fprintf(a.stdout, "%s recorded; proposal %s is %s", verb, q.GetId(), state)
				switch {
				case res.GetLoaded() != nil:
					fmt.Fprintf(a.stdout, ": policy %s in force (audit entry %d), signed by %s\n", res.GetLoaded().GetPolicyHash(), res.GetLoaded().GetEntry().GetIndex(),
						strings.Join(res.GetLoaded().GetSigners(), ", "))
				case q.GetState() == bgv1.PolicyProposalState_POLICY_PROPOSAL_STATE_PENDING:
					fmt.Fprintf(a.stdout, "; %d more approval(s) needed\n", q.GetMissing())
				default:
					fmt.Fprintf(a.stdout, ": %s\n", q.GetReason())
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&comment, "comment", "", "a note for the record (its digest is signed)")
	cmd.Flags().BoolVar(&yes, "yes", false, "do not ask for confirmation")
	if verb == "deny" {
		_ = cmd.MarkFlagRequired("comment")
	}
	return cmd
}

func (a *app) policySignCmd() *cobra.Command {
	var file, previous, origin, comment, out string
	var genesis bool
	cmd := &cobra.Command{
		Use:   "sign --file FILE (--previous HASH | --genesis) [--origin ORIGIN] [--comment TEXT] [--out FILE]",
		Short: "Sign, offline, your approval of a policy file for the bundle beside it (policy.sigs): one line, appended to --out or printed",
		Long: `Signs with the key of your client certificate (--cert, --key) a policy statement
approving the change from the policy whose hash is --previous (bgctl policy get,
or the hash a reviewer checks in the pull request) to the policy in --file,
whose hash is computed here. --genesis signs a log's first policy instead.
--origin is the log's origin (bgctl audit keys, GetLogInfo); without it the
broker is asked. The line is appended to --out (the bundle, policy.sigs) or
printed; a bundle is the admins' lines, concatenated.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if genesis == (previous != "") {
				return errors.New("give either --previous HASH (the policy in force) or --genesis (the first policy of a log)")
			}
			b, err := os.ReadFile(file)
			if err != nil {
				return err
			}
			p, err := policy.Load(b, file)
			if err != nil {
				fmt.Fprintln(a.stderr, err)
				return exitCode(1)
			}
			pair, err := tls.LoadX509KeyPair(a.cert, a.key)
			if err != nil {
				return fmt.Errorf("loading your client certificate (--cert, --key): %w", err)
			}
			signer, ok := pair.PrivateKey.(crypto.Signer)
			if !ok || pair.Leaf == nil {
				return errors.New("your client certificate's key cannot sign")
			}
			if p, origin, err = a.signContext(cmd, p, origin, genesis); err != nil {
				return err
			}
			s, err := client.SignPolicyChange(signer, pair.Leaf, origin, previous, p.Hash(), statement.DecisionApprove, comment, time.Now())
			if err != nil {
				return err
			}
			line := statement.MarshalBundleLine(s)
			if out == "" || out == "-" {
				_, err = a.stdout.Write(line)
				return err
			}
			if err := appendLine(out, line); err != nil {
				return err
			}
			fmt.Fprintf(a.stderr, "signed the change %s -> %s of %s into %s\n", orDash(previous), p.Hash(), origin, out)
			return nil
		},
	}
	cmd.Flags().StringVar(&file, "file", "", "the policy file to approve")
	cmd.Flags().StringVar(&previous, "previous", "", "the hash of the policy in force it replaces")
	cmd.Flags().BoolVar(&genesis, "genesis", false, "approve the first policy of a log (no previous policy)")
	cmd.Flags().StringVar(&origin, "origin", "", "the log's origin (asked of the broker when not given)")
	cmd.Flags().StringVar(&comment, "comment", "", "a note (its digest is signed)")
	cmd.Flags().StringVar(&out, "out", "", "append the line to this bundle (policy.sigs) instead of printing it")
	_ = cmd.MarkFlagRequired("file")
	return cmd
}

// signContext finds what a statement binds that the file may not say: the
// log's origin, and the identity rule (part of the policy's hash) when the
// file names none: the broker runs such a policy with the rule in force.
func (a *app) signContext(cmd *cobra.Command, p *policy.Policy, origin string, genesis bool) (*policy.Policy, string, error) {
	if p.Identity == nil && genesis {
		return nil, "", errors.New("the policy names no identity rule (identity: {mode, uri_prefix}): the broker would add its configuration's, changing the hash; name it in the file to sign a genesis")
	}
	if origin != "" && p.Identity != nil {
		return p, origin, nil
	}
	err := a.call(cmd, func(ctx context.Context, c *client.Client) error {
		if origin == "" {
			o, err := c.Origin(ctx)
			if err != nil {
				return err
			}
			origin = o
		}
		if p.Identity != nil {
			return nil
		}
		res, err := c.GetPolicy(ctx, &bgv1.GetPolicyRequest{})
		if err != nil {
			return err
		}
		cur, err := policy.FromCanonicalJSON(res.GetCanonical())
		if err != nil {
			return err
		}
		if cur.Identity == nil {
			return errors.New("the policy in force names no identity rule either; name one in the file")
		}
		p = p.WithIdentity(*cur.Identity)
		fmt.Fprintf(a.stderr, "the file names no identity rule: signing it with the policy in force's, %s\n", cur.Identity)
		return nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("asking the broker for the log's origin and the identity rule in force (or give --origin and name identity: in the file): %w", err)
	}
	return p, origin, nil
}

// appendLine appends one bundle line to the file.
func appendLine(path string, line []byte) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644) //nolint:gosec // a bundle of signatures is public
	if err != nil {
		return err
	}
	if _, err := f.Write(line); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}
