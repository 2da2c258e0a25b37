package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/bgbroker/breakglass/client"
	"github.com/bgbroker/breakglass/format/passkey"
	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
)

func stdinIsTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func (a *app) printJSON(m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  ", UseProtoNames: true}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(a.stdout, string(b))
	return err
}

// call dials the broker as the configured identity and runs f with a
// deadline.
func (a *app) call(cmd *cobra.Command, f func(ctx context.Context, c *client.Client) error) error {
	c, err := a.dial()
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := a.ctx(cmd)
	defer cancel()
	return f(ctx, c)
}

func stateName(s bgv1.RequestState) string {
	return strings.TrimPrefix(s.String(), "REQUEST_STATE_")
}

func fmtTime(t *timestamppb.Timestamp) string {
	if t == nil {
		return "-"
	}
	return t.AsTime().Local().Format("2006-01-02 15:04:05 MST")
}

// oneLine makes free text safe and short for a table cell.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len([]rune(s)) > n {
		return string([]rune(s)[:n-1]) + "…"
	}
	return s
}

func (a *app) printRequest(out io.Writer, r *bgv1.Request) {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "ID\t%s\n", r.GetId())
	fmt.Fprintf(w, "Account\t%s\n", r.GetAccount())
	fmt.Fprintf(w, "Requester\t%s\n", r.GetRequester())
	fmt.Fprintf(w, "State\t%s\n", stateName(r.GetState()))
	fmt.Fprintf(w, "Justification\t%s\n", oneLine(r.GetJustification(), 200))
	if r.GetTicket() != "" {
		fmt.Fprintf(w, "Ticket\t%s\n", r.GetTicket())
	}
	fmt.Fprintf(w, "Requested TTL\t%s\n", r.GetRequestedTtl().AsDuration())
	if r.GetDrill() {
		fmt.Fprintf(w, "Drill\tyes (tokens say bg_drill: true)\n")
	}
	fmt.Fprintf(w, "Quorum\t%s\n", r.GetQuorum())
	fmt.Fprintf(w, "Created\t%s\n", fmtTime(r.GetCreateTime()))
	if r.GetState() == bgv1.RequestState_REQUEST_STATE_PENDING {
		fmt.Fprintf(w, "Approval deadline\t%s\n", fmtTime(r.GetApprovalDeadline()))
	}
	if r.GetApproveTime() != nil {
		fmt.Fprintf(w, "Approved\t%s by %s\n", fmtTime(r.GetApproveTime()), strings.Join(r.GetApprovers(), ", "))
		fmt.Fprintf(w, "Grant ends\t%s\n", fmtTime(r.GetGrantExpireTime()))
		fmt.Fprintf(w, "Tokens\t%d of %d issued\n", r.GetTokensIssued(), r.GetMaxIssuances())
	}
	if r.GetFinalTime() != nil {
		fmt.Fprintf(w, "Ended\t%s by %s: %s\n", fmtTime(r.GetFinalTime()), r.GetFinalBy(), oneLine(r.GetFinalReason(), 200))
	}
	for _, rv := range r.GetReviews() {
		d := strings.ToLower(strings.TrimPrefix(rv.GetDecision().String(), "REVIEW_DECISION_"))
		fmt.Fprintf(w, "Review\t%s %s at %s, signed with %s: %s\n", rv.GetReviewer(), d, fmtTime(rv.GetCreateTime()), signerKind(rv), oneLine(rv.GetComment(), 120))
	}
	_ = w.Flush()
}

// signerKind says what signed a review, for people.
func signerKind(rv *bgv1.Review) string {
	switch {
	case rv.GetSigner() == bgv1.ReviewSigner_REVIEW_SIGNER_PASSKEY:
		return "a passkey (" + oneLine(passkey.EncodeID(rv.GetPasskeyCredentialId()), 24) + ")"
	case rv.GetKeyStore() == bgv1.KeyStore_KEY_STORE_PKCS11:
		return "a certificate key on a PKCS#11 token"
	}
	return "a certificate key"
}

func (a *app) requestCmd() *cobra.Command {
	var (
		account, justification, ticket string
		ttl                            time.Duration
		drill, wait, solo              bool
	)
	cmd := &cobra.Command{
		Use:   "request --account NAME --justification TEXT [--ticket REF] [--ttl DURATION] [--drill] [--wait]",
		Short: "Ask for emergency access to an account",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				in := &bgv1.CreateRequestRequest{Account: account, Justification: justification, Ticket: ticket, Drill: drill, Solo: solo}
				if ttl != 0 {
					in.RequestedTtl = durationpb.New(ttl)
				}
				resp, err := c.CreateRequest(ctx, in)
				if err != nil {
					return err
				}
				r := resp.GetRequest()
				if !wait {
					if a.output == "json" {
						return a.printJSON(resp)
					}
					fmt.Fprintf(a.stdout, "request %s created for %s; approvers need: %s\n", r.GetId(), r.GetAccount(), r.GetQuorum())
					return nil
				}
				fmt.Fprintf(a.stderr, "request %s created; waiting for %s (until %s)\n", r.GetId(), r.GetQuorum(), fmtTime(r.GetApprovalDeadline()))
				wctx, wcancel := context.WithDeadline(cmd.Context(), r.GetApprovalDeadline().AsTime().Add(time.Minute))
				defer wcancel()
				final, err := c.WaitForDecision(wctx, r.GetId())
				if err != nil {
					return err
				}
				if a.output == "json" {
					if err := a.printJSON(final); err != nil {
						return err
					}
				} else {
					fmt.Fprintf(a.stdout, "request %s is %s", final.GetId(), stateName(final.GetState()))
					if final.GetState() == bgv1.RequestState_REQUEST_STATE_APPROVED {
						fmt.Fprintf(a.stdout, " by %s until %s\nget a token: bgctl token %s --audience AUDIENCE\n",
							strings.Join(final.GetApprovers(), ", "), fmtTime(final.GetGrantExpireTime()), final.GetId())
					} else {
						fmt.Fprintf(a.stdout, ": %s\n", final.GetFinalReason())
					}
				}
				if final.GetState() != bgv1.RequestState_REQUEST_STATE_APPROVED {
					return exitCode(3)
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&account, "account", "", "account to access (bgctl accounts lists yours)")
	cmd.Flags().StringVar(&justification, "justification", "", "why, for the approvers")
	cmd.Flags().StringVar(&ticket, "ticket", "", "incident or change ticket reference")
	cmd.Flags().DurationVar(&ttl, "ttl", 0, "grant length once approved (default: the account's max_ttl)")
	cmd.Flags().BoolVar(&drill, "drill", false, "a drill: its tokens are marked bg_drill and grant nothing real")
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the request is decided and print the outcome (exit 3 unless approved)")
	cmd.Flags().BoolVar(&solo, "solo", false, "time-locked solo access (where the account allows it): approved after its veto window unless denied")
	_ = cmd.MarkFlagRequired("account")
	_ = cmd.MarkFlagRequired("justification")
	return cmd
}

func (a *app) listCmd() *cobra.Command {
	var (
		state, account string
		mine, awaiting bool
		limit          int
		pageToken      string
	)
	cmd := &cobra.Command{
		Use:   "list [--state STATE] [--account NAME] [--mine] [--awaiting-my-review]",
		Short: "List the requests you may see, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				in := &bgv1.ListRequestsRequest{Account: account, Mine: mine, AwaitingMyReview: awaiting, PageSize: int32(limit), PageToken: pageToken}
				if state != "" {
					v, ok := bgv1.RequestState_value["REQUEST_STATE_"+strings.ToUpper(state)]
					if !ok || v == 0 {
						return fmt.Errorf("--state %q: want pending, approved, denied, cancelled, expired or revoked", state)
					}
					in.State = bgv1.RequestState(v)
				}
				resp, err := c.ListRequests(ctx, in)
				if err != nil {
					return err
				}
				if a.output == "json" {
					return a.printJSON(resp)
				}
				w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "ID\tACCOUNT\tREQUESTER\tSTATE\tCREATED\tREVIEWS\tJUSTIFICATION")
				for _, r := range resp.GetRequests() {
					var revs []string
					for _, rv := range r.GetReviews() {
						mark := "+"
						if rv.GetDecision() == bgv1.ReviewDecision_REVIEW_DECISION_DENY {
							mark = "-"
						}
						revs = append(revs, mark+rv.GetReviewer())
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.GetId(), r.GetAccount(), r.GetRequester(), stateName(r.GetState()),
						fmtTime(r.GetCreateTime()), orDash(strings.Join(revs, " ")), oneLine(r.GetJustification(), 40))
				}
				if err := w.Flush(); err != nil {
					return err
				}
				if resp.GetNextPageToken() != "" {
					fmt.Fprintf(a.stderr, "more: bgctl list --page-token %s\n", resp.GetNextPageToken())
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&state, "state", "", "pending, approved, denied, cancelled, expired or revoked")
	cmd.Flags().StringVar(&account, "account", "", "only this account")
	cmd.Flags().BoolVar(&mine, "mine", false, "only your requests")
	cmd.Flags().BoolVar(&awaiting, "awaiting-my-review", false, "only pending requests you may review and have not")
	cmd.Flags().IntVar(&limit, "limit", 50, "at most this many (up to 500)")
	cmd.Flags().StringVar(&pageToken, "page-token", "", "continue a previous listing")
	return cmd
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func (a *app) showCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "show ID",
		Short: "Show a request",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.GetRequest(ctx, &bgv1.GetRequestRequest{Id: args[0]})
				if err != nil {
					return err
				}
				if a.output == "json" {
					return a.printJSON(resp)
				}
				a.printRequest(a.stdout, resp.GetRequest())
				return nil
			})
		},
	}
}

// confirm asks on the terminal; without a terminal it proceeds, since the
// caller is a script that already chose.
func (a *app) confirm(question string) (bool, error) {
	if !a.isTerminal() {
		return true, nil
	}
	fmt.Fprintf(a.stderr, "%s [y/N] ", question)
	line, err := bufio.NewReader(a.stdin).ReadString('\n')
	if err != nil && line == "" {
		return false, nil
	}
	ans := strings.ToLower(strings.TrimSpace(line))
	return ans == "y" || ans == "yes", nil
}

func (a *app) reviewCmd(verb string) *cobra.Command {
	var comment string
	var yes bool
	decision := bgv1.ReviewDecision_REVIEW_DECISION_APPROVE
	short := "Approve a pending request (shows it and asks first on a terminal)"
	if verb == "deny" {
		decision = bgv1.ReviewDecision_REVIEW_DECISION_DENY
		short = "Deny a pending request (shows it and asks first on a terminal)"
	}
	cmd := &cobra.Command{
		Use:   verb + " ID [--comment TEXT] [--yes]",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				got, err := c.GetRequest(ctx, &bgv1.GetRequestRequest{Id: args[0]})
				if err != nil {
					return err
				}
				r := got.GetRequest()
				if !yes && a.isTerminal() {
					// With -o json, stdout stays clean JSON: show the request on stderr.
					shown := a.stdout
					if a.output == "json" {
						shown = a.stderr
					}
					a.printRequest(shown, r)
					ok, err := a.confirm(fmt.Sprintf("%s %s's request for %s?", strings.ToUpper(verb[:1])+verb[1:], r.GetRequester(), r.GetAccount()))
					if err != nil {
						return err
					}
					if !ok {
						fmt.Fprintln(a.stderr, "nothing done")
						return exitCode(1)
					}
				}
				// The statement signed is over the request as fetched (and
				// shown): what the approver saw is what they sign.
				resp, err := c.Review(ctx, r, decision, comment)
				if err != nil {
					return err
				}
				if a.output == "json" {
					return a.printJSON(resp)
				}
				fmt.Fprintf(a.stdout, "%s recorded (audit entry %d); request %s is %s\n", verb, resp.GetEntry().GetIndex(), args[0], stateName(resp.GetRequest().GetState()))
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&comment, "comment", "", "a note for the record")
	cmd.Flags().BoolVar(&yes, "yes", false, "do not ask for confirmation")
	if verb == "deny" {
		_ = cmd.MarkFlagRequired("comment")
	}
	return cmd
}

func (a *app) cancelCmd() *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "cancel ID [--reason TEXT]",
		Short: "Withdraw your pending request",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.CancelRequest(ctx, &bgv1.CancelRequestRequest{Id: args[0], Reason: reason})
				if err != nil {
					return err
				}
				if a.output == "json" {
					return a.printJSON(resp)
				}
				fmt.Fprintf(a.stdout, "request %s cancelled (audit entry %d)\n", args[0], resp.GetEntry().GetIndex())
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why")
	return cmd
}

func (a *app) tokenCmd() *cobra.Command {
	var audience string
	cmd := &cobra.Command{
		Use:   "token ID --audience AUD",
		Short: "Issue an access token for your approved grant; prints the JWT alone",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.IssueToken(ctx, &bgv1.IssueTokenRequest{RequestId: args[0], Audience: audience})
				if err != nil {
					return err
				}
				if a.output == "json" {
					return a.printJSON(resp)
				}
				fmt.Fprintln(a.stdout, resp.GetToken())
				fmt.Fprintf(a.stderr, "token %s for %s expires %s; %d more may be issued\n", resp.GetJti(), audience, fmtTime(resp.GetExpireTime()), resp.GetIssuancesLeft())
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&audience, "audience", "", "the relying system (one of the account's audiences)")
	_ = cmd.MarkFlagRequired("audience")
	return cmd
}

func (a *app) revokeCmd() *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "revoke ID --reason TEXT",
		Short: "End an approved grant now",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.RevokeGrant(ctx, &bgv1.RevokeGrantRequest{RequestId: args[0], Reason: reason})
				if err != nil {
					return err
				}
				if a.output == "json" {
					return a.printJSON(resp)
				}
				fmt.Fprintf(a.stdout, "grant %s revoked (audit entry %d)\n", args[0], resp.GetEntry().GetIndex())
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (required)")
	_ = cmd.MarkFlagRequired("reason")
	return cmd
}

func (a *app) checkCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "check JTI",
		Short: "Ask the broker whether a token is valid, expired or revoked",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.CheckToken(ctx, &bgv1.CheckTokenRequest{Jti: args[0]})
				if err != nil {
					return err
				}
				if a.output == "json" {
					return a.printJSON(resp)
				}
				st := strings.TrimPrefix(resp.GetStatus().String(), "TOKEN_STATUS_")
				fmt.Fprintf(a.stdout, "%s: %s (request %s, account %s, subject %s, audience %s, expires %s)\n", args[0], st,
					resp.GetRequestId(), resp.GetAccount(), resp.GetSubject(), resp.GetAudience(), fmtTime(resp.GetExpireTime()))
				if resp.GetStatus() != bgv1.TokenStatus_TOKEN_STATUS_VALID {
					return exitCode(3)
				}
				return nil
			})
		},
	}
}

func (a *app) keysCmd() *cobra.Command {
	var account, format string
	cmd := &cobra.Command{
		Use:   "keys [--account A] [--format jwks|pem]",
		Short: "Print the public keys that verify tokens, as a JWKS or PEM, for relying parties that take static keys",
		Long: `Prints the keys that verify the broker's tokens (or, with --account, those of
an account with a token key of its own), for consumers configured with static
keys instead of discovery: Vault jwt_validation_pubkeys (--format pem), GCP
--jwk-json-path or a pinned Kubernetes JWKS (--format jwks). A rotated key
stays in the set until the last token it signed has expired: fetch the set
again after every rotation, before the old key leaves it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "jwks" && format != "pem" {
				return fmt.Errorf("--format must be jwks or pem, not %q", format)
			}
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.GetSigningKeys(ctx, &bgv1.GetSigningKeysRequest{Account: account})
				if err != nil {
					return err
				}
				if a.output == "json" {
					return a.printJSON(resp)
				}
				if format == "pem" {
					for _, k := range resp.GetKeys() {
						fmt.Fprintf(a.stdout, "# kid %s, issuer %s\n%s", k.GetKid(), resp.GetIssuer(), k.GetPem())
					}
					return nil
				}
				fmt.Fprintln(a.stdout, resp.GetJwks())
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&account, "account", "", "an account with a token key of its own (default: the broker's keys)")
	cmd.Flags().StringVar(&format, "format", "jwks", "jwks (RFC 7517 key set) or pem (one PUBLIC KEY block per key)")
	return cmd
}

func (a *app) verifyCmd() *cobra.Command {
	var audience, issuer, jwksURL, account string
	var check, allowDrill bool
	cmd := &cobra.Command{
		Use:   "verify-token TOKEN --audience AUD",
		Short: "Verify a token as a relying party would (signature, typ, iss, aud, exp)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				cfg := client.VerifierConfig{Audience: audience, Issuer: issuer, AllowDrill: allowDrill, Keys: client.GRPCKeys{Client: c, Account: account}}
				if issuer == "" {
					keys, err := c.GetSigningKeys(ctx, &bgv1.GetSigningKeysRequest{Account: account})
					if err != nil {
						return err
					}
					cfg.Issuer = keys.GetIssuer()
				}
				if jwksURL != "" {
					cfg.Keys = client.HTTPKeys{URL: jwksURL}
				}
				if check {
					cfg.Checker = c
				}
				v, err := client.NewVerifier(cfg)
				if err != nil {
					return err
				}
				claims, err := v.Verify(ctx, strings.TrimSpace(args[0]))
				if err != nil {
					fmt.Fprintln(a.stderr, "bgctl: token rejected:", err)
					return exitCode(3)
				}
				if a.output == "json" {
					return writeAnyJSON(a.stdout, claims)
				}
				fmt.Fprintf(a.stdout, "valid: sub %s, account %s, request %s, approvers %s, audience %s, expires %s, jti %s\n",
					claims.Subject, claims.Account, claims.Request, strings.Join(claims.Approvers, ","), strings.Join(claims.Audience, ","),
					claims.Expiry.Time().Local().Format(time.RFC3339), claims.ID)
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&audience, "audience", "", "your relying party's audience (required)")
	cmd.Flags().StringVar(&issuer, "issuer", "", "expected iss (default: the broker's, or the account's with --account, from GetSigningKeys)")
	cmd.Flags().StringVar(&account, "account", "", "verify a token of an account with a token key of its own, with that account's keys")
	cmd.Flags().StringVar(&jwksURL, "jwks-url", "", "fetch keys from this HTTPS JWKS URL instead of the gRPC API")
	cmd.Flags().BoolVar(&check, "check", false, "also ask the broker whether the token was revoked")
	cmd.Flags().BoolVar(&allowDrill, "allow-drill", false, "accept drill tokens")
	_ = cmd.MarkFlagRequired("audience")
	return cmd
}

func (a *app) accountsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "accounts",
		Short: "List the accounts you may request, review or own, with their drills and attestations",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.ListAccounts(ctx, &bgv1.ListAccountsRequest{})
				if err != nil {
					return err
				}
				if a.output == "json" {
					return a.printJSON(resp)
				}
				w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "ACCOUNT\tYOU MAY\tMAX TTL\tAUDIENCES\tLAST DRILL\tLAST ATTESTED\tQUORUM")
				for _, acc := range resp.GetAccounts() {
					var may []string
					if acc.GetCanRequest() {
						may = append(may, "request")
					}
					if acc.GetCanReview() {
						may = append(may, "review")
					}
					if acc.GetIsOwner() {
						may = append(may, "own")
					}
					drill := fmtOptTime(acc.GetLastDrillTime())
					if acc.GetDrillOverdue() {
						drill += " (OVERDUE)"
					}
					att := fmtOptTime(acc.GetLastAttestationTime())
					if acc.GetAttestationOverdue() {
						att += " (OVERDUE)"
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", acc.GetName(), orDash(strings.Join(may, ",")), acc.GetMaxTtl().AsDuration(),
						strings.Join(acc.GetAudiences(), ","), drill, att, strings.TrimSuffix(acc.GetQuorumDescription(), " (the requester never counts; each approver counts once)"))
				}
				return w.Flush()
			})
		},
	}
	var notes string
	attest := &cobra.Command{
		Use:   "attest NAME --notes TEXT",
		Short: "As an owner, confirm the account is still needed and its approvers are right (signed)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.Attest(ctx, args[0], notes)
				if err != nil {
					return err
				}
				if a.output == "json" {
					return a.printJSON(resp)
				}
				fmt.Fprintf(a.stdout, "account %s attested (audit entry %d)\n", args[0], resp.GetEntry().GetIndex())
				return nil
			})
		},
	}
	attest.Flags().StringVar(&notes, "notes", "", "what you checked (required)")
	_ = attest.MarkFlagRequired("notes")
	cmd.AddCommand(attest)
	return cmd
}

func fmtOptTime(t *timestamppb.Timestamp) string {
	if t == nil {
		return "never"
	}
	return t.AsTime().Local().Format("2006-01-02")
}
