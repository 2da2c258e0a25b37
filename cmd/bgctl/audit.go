package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/bgbroker/breakglass/client"
	"github.com/bgbroker/breakglass/client/auditverify"
	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
)

func (a *app) auditCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "Export, follow, prove and verify the audit log"}
	cmd.AddCommand(a.auditExportCmd(), a.auditCheckpointCmd(), a.auditProofCmd(), a.auditConsistencyCmd(),
		a.auditTailCmd(), a.auditKeysCmd(), a.auditVerifyCmd())
	return cmd
}

func (a *app) writeLine(w io.Writer, e *bgv1.Entry) error {
	b, err := json.Marshal(auditverify.ExportLine(e.GetIndex(), e.GetEntry(), e.GetSignature(), e.GetKeyId()))
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

func (a *app) auditExportCmd() *cobra.Command {
	var from, to uint64
	var out string
	cmd := &cobra.Command{
		Use:   "export [--from N] [--to M] [--out FILE]",
		Short: "Write entries as JSON Lines (index, base64 entry and signature, key_id, hex leaf_hash, decoded fields)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			w := a.stdout
			if out != "" {
				f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
				if err != nil {
					return err
				}
				defer f.Close()
				w = f
			}
			bw := bufio.NewWriter(w)
			defer bw.Flush()
			next := from
			for {
				ctx, cancel := a.ctx(cmd)
				resp, err := c.ListEntries(ctx, &bgv1.ListEntriesRequest{Start: next, End: to, PageSize: 1000})
				cancel()
				if err != nil {
					return err
				}
				for _, e := range resp.GetEntries() {
					if err := a.writeLine(bw, e); err != nil {
						return err
					}
				}
				if len(resp.GetEntries()) == 0 || resp.GetNextStart() <= next {
					return bw.Flush()
				}
				next = resp.GetNextStart()
				if to != 0 && next >= to {
					return bw.Flush()
				}
			}
		},
	}
	cmd.Flags().Uint64Var(&from, "from", 0, "first index")
	cmd.Flags().Uint64Var(&to, "to", 0, "one past the last index (default: the end of the log)")
	cmd.Flags().StringVar(&out, "out", "", "write to this file (mode 0600) instead of stdout")
	return cmd
}

func (a *app) auditCheckpointCmd() *cobra.Command {
	var size uint64
	var witnessed bool
	cmd := &cobra.Command{
		Use:   "checkpoint [--size N | --witnessed]",
		Short: "Print the latest signed checkpoint (a C2SP signed note with its witness cosignatures) as is",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.GetCheckpoint(ctx, &bgv1.GetCheckpointRequest{Size: size, Witnessed: witnessed})
				if err != nil {
					return err
				}
				if a.output == "json" {
					return a.printJSON(resp)
				}
				_, err = a.stdout.Write(resp.GetCheckpoint())
				return err
			})
		},
	}
	cmd.Flags().Uint64Var(&size, "size", 0, "the checkpoint at this tree size (default: the latest)")
	cmd.Flags().BoolVar(&witnessed, "witnessed", false, "the newest checkpoint that carries the witness quorum's cosignatures")
	return cmd
}

func b64s(hs [][]byte) []string {
	out := make([]string, len(hs))
	for i, h := range hs {
		out[i] = base64.StdEncoding.EncodeToString(h)
	}
	return out
}

func (a *app) auditProofCmd() *cobra.Command {
	var index, size uint64
	cmd := &cobra.Command{
		Use:   "proof --index N [--size S]",
		Short: "Print an inclusion proof as JSON (hashes in base64)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.GetInclusionProof(ctx, &bgv1.GetInclusionProofRequest{Index: index, TreeSize: size})
				if err != nil {
					return err
				}
				return writeAnyJSON(a.stdout, map[string]any{"index": resp.GetIndex(), "tree_size": resp.GetTreeSize(),
					"leaf_hash": base64.StdEncoding.EncodeToString(resp.GetLeafHash()), "hashes": b64s(resp.GetHashes())})
			})
		},
	}
	cmd.Flags().Uint64Var(&index, "index", 0, "entry index")
	cmd.Flags().Uint64Var(&size, "size", 0, "tree size (default: the latest checkpoint's)")
	_ = cmd.MarkFlagRequired("index")
	return cmd
}

func (a *app) auditConsistencyCmd() *cobra.Command {
	var from, to uint64
	cmd := &cobra.Command{
		Use:   "consistency --from A --to B",
		Short: "Print a consistency proof between two tree sizes as JSON",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.GetConsistencyProof(ctx, &bgv1.GetConsistencyProofRequest{FromSize: from, ToSize: to})
				if err != nil {
					return err
				}
				return writeAnyJSON(a.stdout, map[string]any{"from_size": resp.GetFromSize(), "to_size": resp.GetToSize(), "hashes": b64s(resp.GetHashes())})
			})
		},
	}
	cmd.Flags().Uint64Var(&from, "from", 0, "smaller tree size")
	cmd.Flags().Uint64Var(&to, "to", 0, "larger tree size (default: the latest checkpoint's)")
	_ = cmd.MarkFlagRequired("from")
	return cmd
}

func (a *app) auditTailCmd() *cobra.Command {
	var from uint64
	var fromEnd bool
	cmd := &cobra.Command{
		Use:   "tail [--from N]",
		Short: "Follow the log and print entries as they are committed (JSON Lines with -o json)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.dial()
			if err != nil {
				return err
			}
			defer c.Close()
			ctx := cmd.Context()
			if fromEnd && !cmd.Flags().Changed("from") {
				info, err := c.GetLogInfo(ctx, &bgv1.GetLogInfoRequest{})
				if err != nil {
					return err
				}
				from = info.GetSize()
			}
			stream, err := c.WatchEntries(ctx, &bgv1.WatchEntriesRequest{Start: from})
			if err != nil {
				return err
			}
			for {
				resp, err := stream.Recv()
				if err != nil {
					if errors.Is(err, io.EOF) || ctx.Err() != nil {
						return nil
					}
					return err
				}
				e := resp.GetEntry()
				if a.output == "json" {
					if err := a.writeLine(a.stdout, e); err != nil {
						return err
					}
					continue
				}
				l := auditverify.ExportLine(e.GetIndex(), e.GetEntry(), e.GetSignature(), e.GetKeyId())
				signed := "signed"
				if len(e.GetSignature()) == 0 {
					signed = "UNSIGNED (waiting for the HSM)"
				}
				fmt.Fprintf(a.stdout, "%d %s %-18s actor=%s account=%s request=%s %s %s\n", l.Index, l.Time, l.Type, l.Actor,
					orDash(l.Account), orDash(l.Request), signed, oneLine(string(l.Payload), 160))
			}
		},
	}
	cmd.Flags().Uint64Var(&from, "from", 0, "first index to print")
	cmd.Flags().BoolVar(&fromEnd, "new", false, "only entries committed from now on")
	return cmd
}

func (a *app) auditKeysCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "keys",
		Short: "Print the audit key's PEM and the checkpoint verifier key, for auditors to pin",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				info, err := c.GetLogInfo(ctx, &bgv1.GetLogInfoRequest{})
				if err != nil {
					return err
				}
				if a.output == "json" {
					return a.printJSON(info)
				}
				fmt.Fprintf(a.stdout, "# log origin: %s (%d entries)\n# audit key %s (kid %s)\n%s# checkpoint verifier key\n%s\n",
					info.GetOrigin(), info.GetSize(), info.GetAuditKey().GetLabel(), info.GetAuditKey().GetKid(),
					info.GetAuditKey().GetPem(), info.GetCheckpointKey().GetNoteVerifierKey())
				return nil
			})
		},
	}
}

func readPEMKey(path string) (*ecdsa.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("%s is not PEM", path)
	}
	pub, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	k, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%s is not an ECDSA public key", path)
	}
	return k, nil
}

func isFile(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// readVKey takes a verifier key given directly or in a file.
func readVKey(s string) (string, error) {
	if strings.Count(s, "+") >= 2 && !strings.ContainsAny(s, "\n") && !isFile(s) {
		return s, nil
	}
	b, err := os.ReadFile(s)
	if err != nil {
		return "", fmt.Errorf("--checkpoint-key: neither a verifier key nor a readable file: %w", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			return l, nil
		}
	}
	return "", fmt.Errorf("--checkpoint-key file %s holds no key", s)
}

func (a *app) auditVerifyCmd() *cobra.Command {
	var logFile, cpFile, prevFile, auditKey, cpKey, caFile string
	var crlFiles, witnessKeys, sshCAFiles, x509CAFiles []string
	var witnessQuorum, maxViolations int
	var genesisPolicy string
	cmd := &cobra.Command{
		Use:   "verify --log FILE --checkpoint FILE --audit-key PEM --checkpoint-key VKEY --client-ca PEM",
		Short: "Verify an exported log offline and prove every token had its quorum",
		Long: `Checks every entry's signature, the hash chain, the Merkle root against the
signed checkpoint (and with --previous-checkpoint that the log only grew), then
replays the lifecycle from the entry bytes alone: every token belongs to an
approved grant whose reviews are signed by distinct eligible principals with
certificates that chained to the client CA, satisfying the logged quorum rule.
Needs no broker: only the files and public keys.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := os.Open(logFile)
			if err != nil {
				return err
			}
			defer f.Close()
			cp, err := os.ReadFile(cpFile)
			if err != nil {
				return err
			}
			var prev []byte
			if prevFile != "" {
				if prev, err = os.ReadFile(prevFile); err != nil {
					return err
				}
			}
			ak, err := readPEMKey(auditKey)
			if err != nil {
				return err
			}
			vk, err := readVKey(cpKey)
			if err != nil {
				return err
			}
			caPEM, err := os.ReadFile(caFile)
			if err != nil {
				return err
			}
			pool := x509.NewCertPool()
			var caCerts []*x509.Certificate
			for rest := caPEM; ; {
				var blk *pem.Block
				if blk, rest = pem.Decode(rest); blk == nil {
					break
				}
				if c, err := x509.ParseCertificate(blk.Bytes); err == nil && blk.Type == "CERTIFICATE" {
					pool.AddCert(c)
					caCerts = append(caCerts, c)
				}
			}
			if len(caCerts) == 0 {
				return fmt.Errorf("%s holds no certificate", caFile)
			}
			var crls []*x509.RevocationList
			for _, cf := range crlFiles {
				b, err := os.ReadFile(cf)
				if err != nil {
					return err
				}
				if blk, _ := pem.Decode(b); blk != nil {
					b = blk.Bytes
				}
				crl, err := x509.ParseRevocationList(b)
				if err != nil {
					return fmt.Errorf("%s: %w", cf, err)
				}
				// Only the client CA says which of its certificates were
				// revoked, and when.
				signed := false
				for _, ca := range caCerts {
					if crl.CheckSignatureFrom(ca) == nil {
						signed = true
					}
				}
				if !signed {
					return fmt.Errorf("%s is not a CRL signed by a certificate of %s", cf, caFile)
				}
				crls = append(crls, crl)
			}
			sshCAs, x509CAs, err := certAuthorities(sshCAFiles, x509CAFiles)
			if err != nil {
				return err
			}
			sum, err := auditverify.Verify(auditverify.Options{Log: f, Checkpoint: cp, CheckpointKey: vk, AuditKeys: []*ecdsa.PublicKey{ak},
				ClientCAs: pool, CRLs: crls, PreviousCheckpoint: prev, Witnesses: witnessKeys, WitnessQuorum: witnessQuorum, MaxViolations: maxViolations,
				SSHCAKeys: sshCAs, X509CACerts: x509CAs, GenesisPolicy: genesisPolicy})
			if err != nil {
				var vs *auditverify.Violations
				if !errors.As(err, &vs) || len(vs.List) == 0 {
					return err
				}
				if a.output == "json" {
					_ = writeAnyJSON(a.stdout, map[string]any{"ok": false, "index": vs.List[0].Index, "reason": vs.List[0].Reason,
						"violations": vs.List, "count": vs.Count, "summary": sum})
				}
				fmt.Fprintf(a.stderr, "bgctl: audit log does NOT verify: %d violation(s)\n", vs.Count)
				for _, v := range vs.List {
					fmt.Fprintln(a.stderr, "  "+v.Error())
				}
				if vs.Count > len(vs.List) {
					fmt.Fprintf(a.stderr, "  ... and %d more (--max-violations)\n", vs.Count-len(vs.List))
				}
				return exitCode(1)
			}
			if a.output == "json" {
				return writeAnyJSON(a.stdout, map[string]any{"ok": true, "summary": sum})
			}
			fmt.Fprintf(a.stdout, "audit log verifies: origin %s\n  entries %d (checkpoint covers %d", sum.Origin, sum.Entries, sum.CheckpointSize)
			if sum.PreviousSize > 0 {
				fmt.Fprintf(a.stdout, "; consistent with the previous checkpoint at %d", sum.PreviousSize)
			}
			fmt.Fprintf(a.stdout, ")\n")
			if len(witnessKeys) > 0 {
				fmt.Fprintf(a.stdout, "  cosigned by %d of %d witnesses (quorum %d):\n", len(sum.Cosigners), len(witnessKeys), witnessQuorum)
				for _, c := range sum.Cosigners {
					fmt.Fprintf(a.stdout, "    %s at %s\n", c.Witness, c.Time.Format(time.RFC3339))
				}
			}
			fmt.Fprintf(a.stdout, "  requests %d, reviews %d, grants %d, tokens %d\n", sum.Requests, sum.Reviews, sum.Grants, sum.Tokens)
			fmt.Fprintf(a.stdout, "  %d token(s) followed their quorum of signed approvals\n", sum.QuorumTokens)
			if sum.PasskeyBindings+sum.PasskeyApprovals+sum.HardwareKeyApprovals > 0 {
				fmt.Fprintf(a.stdout, "  passkeys: %d bound by their approvers' certificate keys; %d passkey approval(s) (user-verified WebAuthn assertions over the statement); "+
					"%d hardware-key approval(s) (certificate keys on a PKCS#11 token, as the signer's client declared)\n", sum.PasskeyBindings, sum.PasskeyApprovals, sum.HardwareKeyApprovals)
			}
			if sum.SSHCertificates+sum.X509Certificates > 0 {
				fmt.Fprintf(a.stdout, "  certificates: SSH %d, X.509 %d: each signed by a pinned CA after its quorum, within its grant, naming only what the policy allowed\n",
					sum.SSHCertificates, sum.X509Certificates)
			}
			if sum.SoloGrantCount > 0 {
				fmt.Fprintf(a.stdout, "  SOLO: %d grant(s) approved with no approver at all (time-locked solo access), %d token(s) from them:\n", sum.SoloGrantCount, sum.SoloTokens)
				for _, g := range sum.SoloGrants {
					fmt.Fprintf(a.stdout, "    entry %d: request %s on %s by %s, approved %s, %d token(s)\n", g.Index, g.Request, g.Account, g.Requester,
						g.ApprovedAt.UTC().Format(time.RFC3339), g.Tokens)
				}
				if len(sum.SoloGrants) < sum.SoloGrantCount {
					fmt.Fprintf(a.stdout, "    ... and %d more\n", sum.SoloGrantCount-len(sum.SoloGrants))
				}
			}
			if sum.WeakeningPolicies > 0 {
				fmt.Fprintf(a.stdout, "  WEAKENED: %d policy change(s) widened access or weakened oversight (marked WEAKENS below)\n", sum.WeakeningPolicies)
			}
			if sum.TrustResets > 0 {
				fmt.Fprintf(a.stdout, "  TRUST RESET: %d policy change(s) were put in force by an operator without the policy admins' quorum (marked below)\n", sum.TrustResets)
			}
			if sum.UnsignedGenesis {
				if genesisPolicy != "" {
					fmt.Fprintf(a.stdout, "  the first policy was accepted unsigned; it is the pinned genesis policy %s\n", genesisPolicy)
				} else {
					fmt.Fprintf(a.stdout, "  UNSIGNED GENESIS: the first policy was accepted without its admins' signatures; pin it with --genesis-policy HASH once you trust it\n")
				}
			}
			if sum.PolicyRefusals > 0 {
				fmt.Fprintf(a.stdout, "  %d policy file(s) refused for want of the policy admins' signatures (the policy in force stayed)\n", sum.PolicyRefusals)
			}
			for _, p := range sum.Policies {
				mark := ""
				if p.Weakens {
					mark = " WEAKENS the policy before it"
				}
				fmt.Fprintf(a.stdout, "  policy at entry %d: %s%s\n", p.Index, p.Hash, mark)
				switch {
				case p.Reset != nil:
					fmt.Fprintf(a.stdout, "    TRUST RESET by %s, without the policy admins' quorum: %s\n", p.Reset.Operator, p.Reset.Reason)
				case p.Genesis == "unsigned":
					fmt.Fprintf(a.stdout, "    genesis, UNSIGNED (accepted by the operator)\n")
				case p.Genesis == "signed":
					fmt.Fprintf(a.stdout, "    genesis, signed by its own policy admins %s\n", strings.Join(p.Signers, ", "))
				case p.Proposal != "":
					fmt.Fprintf(a.stdout, "    signed by %s, policy admins of the policy before it (proposal %s by %s)\n", strings.Join(p.Signers, ", "), p.Proposal, p.Proposer)
				default:
					fmt.Fprintf(a.stdout, "    signed by %s, policy admins of the policy before it\n", strings.Join(p.Signers, ", "))
				}
				for _, c := range p.Changes {
					fmt.Fprintf(a.stdout, "    %s\n", c)
				}
			}
			for _, r := range sum.Restores {
				if r.Forced {
					fmt.Fprintf(a.stdout, "  FORCED restore at entry %d by %s: the newest checkpoint then covered %d entries; reason: %s\n", r.Index, r.Operator, r.LostAfter, r.Reason)
					continue
				}
				fmt.Fprintf(a.stdout, "  restore at entry %d by %s, consistent with the newest checkpoint (%d entries)\n", r.Index, r.Operator, r.LostAfter)
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&witnessKeys, "witness", nil, "a witness's cosignature verifier key (repeat for each witness)")
	cmd.Flags().IntVar(&witnessQuorum, "witness-quorum", 0, "how many of the --witness keys must have cosigned the checkpoint")
	cmd.Flags().IntVar(&maxViolations, "max-violations", auditverify.DefaultMaxViolations, "list at most this many violations (the rest are counted)")
	cmd.Flags().StringVar(&genesisPolicy, "genesis-policy", "", "the hash the log's first policy must have: the genesis you accepted")
	cmd.Flags().StringVar(&logFile, "log", "", "export file (bgctl audit export)")
	cmd.Flags().StringVar(&cpFile, "checkpoint", "", "signed checkpoint file (bgctl audit checkpoint)")
	cmd.Flags().StringVar(&prevFile, "previous-checkpoint", "", "an older checkpoint the log must extend")
	cmd.Flags().StringVar(&auditKey, "audit-key", "", "audit public key PEM (breakglassd hsm pubkey)")
	cmd.Flags().StringVar(&cpKey, "checkpoint-key", "", "checkpoint verifier key, or a file holding it (breakglassd hsm pubkey --format note)")
	cmd.Flags().StringVar(&caFile, "client-ca", "", "client CA certificate(s) PEM")
	cmd.Flags().StringSliceVar(&crlFiles, "crl", nil, "CRL file(s) of the client CA")
	cmd.Flags().StringSliceVar(&sshCAFiles, "ssh-ca-key", nil, "SSH CA key(s), authorized_keys lines (/ssh/ca.pub, breakglassd hsm pubkey --format ssh); needed when the log holds SSH certificates")
	cmd.Flags().StringSliceVar(&x509CAFiles, "x509-ca-cert", nil, "X.509 CA certificate(s) PEM (/x509/ca.pem); needed when the log holds X.509 certificates")
	for _, f := range []string{"log", "checkpoint", "audit-key", "checkpoint-key", "client-ca"} {
		_ = cmd.MarkFlagRequired(f)
	}
	return cmd
}

func writeAnyJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
