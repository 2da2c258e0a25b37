package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/bgbroker/breakglass/client"
	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
)

func (a *app) reviewsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "reviews", Short: "Post-use reviews of grants"}
	var all bool
	list := &cobra.Command{
		Use:   "list [--all]",
		Short: "List the open post-use reviews you may close (auditors see all)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.ListPostReviews(ctx, &bgv1.ListPostReviewsRequest{All: all})
				if err != nil {
					return err
				}
				if a.output == "json" {
					return a.printJSON(resp)
				}
				a.printPostReviews(resp.GetReviews())
				return nil
			})
		},
	}
	list.Flags().BoolVar(&all, "all", false, "closed ones too")
	var notes string
	closeCmd := &cobra.Command{
		Use:   "close ID --notes TEXT",
		Short: "Close a post-use review with your notes (a signed statement)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.ClosePostReviewSigned(ctx, &bgv1.PostReview{Id: args[0], RequestId: requestOfReview(ctx, c, args[0])}, notes)
				if err != nil {
					return err
				}
				if a.output == "json" {
					return a.printJSON(resp)
				}
				fmt.Fprintf(a.stdout, "post-use review %s closed (audit entry %d)\n", args[0], resp.GetEntry().GetIndex())
				return nil
			})
		},
	}
	closeCmd.Flags().StringVar(&notes, "notes", "", "what was done with the access and whether it was right (required)")
	_ = closeCmd.MarkFlagRequired("notes")
	cmd.AddCommand(list, closeCmd)
	return cmd
}

// requestOfReview finds the request a post-use review is about, among the
// reviews the caller may see (empty if none: the broker then answers).
func requestOfReview(ctx context.Context, c *client.Client, id string) string {
	resp, err := c.ListPostReviews(ctx, &bgv1.ListPostReviewsRequest{All: true})
	if err != nil {
		return ""
	}
	for _, pr := range resp.GetReviews() {
		if pr.GetId() == id {
			return pr.GetRequestId()
		}
	}
	return ""
}

func (a *app) printPostReviews(prs []*bgv1.PostReview) {
	w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "REVIEW\tACCOUNT\tREQUESTER\tREQUEST\tDUE\tSTATUS")
	for _, pr := range prs {
		st := "open"
		switch {
		case pr.GetCloseTime() != nil:
			st = "closed by " + pr.GetClosedBy()
		case pr.GetOverdue():
			st = "OVERDUE"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", pr.GetId(), pr.GetAccount(), pr.GetRequester(), pr.GetRequestId(), fmtTime(pr.GetDueTime()), st)
	}
	_ = w.Flush()
}

func (a *app) reportCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "report",
		Short: "Standing access: active grants, outstanding tokens, overdue reviews, drills and attestations, dead letters, lapsing certificates",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				rep, err := fetchReport(ctx, c)
				if err != nil {
					return err
				}
				if a.output == "json" {
					return a.printJSON(rep)
				}
				now := rep.GetTime().AsTime()
				out := a.stdout
				fmt.Fprintf(out, "standing access at %s\n\nACTIVE GRANTS (%d)\n", fmtTime(rep.GetTime()), len(rep.GetActiveGrants()))
				w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				for _, g := range rep.GetActiveGrants() {
					left := g.GetGrantExpireTime().AsTime().Sub(now).Round(time.Second)
					kind := ""
					if g.GetDrill() {
						kind = " (drill)"
					}
					if g.GetSolo() {
						kind += " (solo)"
					}
					fmt.Fprintf(w, "  %s\t%s\t%s%s\tapproved by %s\t%s left\t%d/%d tokens\n", g.GetId(), g.GetAccount(), g.GetRequester(), kind,
						orDash(strings.Join(g.GetApprovers(), ",")), left, g.GetTokensIssued(), g.GetMaxIssuances())
				}
				_ = w.Flush()
				fmt.Fprintf(out, "\nOUTSTANDING TOKENS (%d)\n", len(rep.GetTokens()))
				w = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				for _, t := range rep.GetTokens() {
					fmt.Fprintf(w, "  %s\t%s\t%s\t%s\texpires %s\n", t.GetJti(), t.GetAccount(), t.GetSubject(), t.GetAudience(), fmtTime(t.GetExpireTime()))
				}
				_ = w.Flush()
				fmt.Fprintf(out, "\nOVERDUE POST-USE REVIEWS (%d of %d open)\n", len(rep.GetOverdueReviews()), len(rep.GetOpenReviews()))
				for _, pr := range rep.GetOverdueReviews() {
					fmt.Fprintf(out, "  %s %s: %s's grant %s, due %s\n", pr.GetId(), pr.GetAccount(), pr.GetRequester(), pr.GetRequestId(), fmtTime(pr.GetDueTime()))
				}
				fmt.Fprintf(out, "\nACCOUNTS\n")
				w = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "  ACCOUNT\tLAST USE\tLAST DRILL\tLAST ATTESTED\tFLAGS")
				for _, s := range rep.GetAccounts() {
					var flags []string
					if s.GetDrillOverdue() {
						flags = append(flags, "drill overdue")
					}
					if s.GetAttestationOverdue() {
						flags = append(flags, "attestation overdue")
					}
					if s.GetUnused() {
						flags = append(flags, "unused for long: still needed?")
					}
					fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%s\n", s.GetAccount(), fmtOptTime(s.GetLastUseTime()), fmtOptTime(s.GetLastDrillTime()),
						fmtOptTime(s.GetLastAttestationTime()), orDash(strings.Join(flags, "; ")))
				}
				_ = w.Flush()
				printDeadLetters(out, rep)
				fmt.Fprintf(out, "\nCLIENT CERTIFICATES EXPIRING WITHIN 30 DAYS (%d)\n", len(rep.GetExpiringCerts()))
				for _, c := range rep.GetExpiringCerts() {
					fmt.Fprintf(out, "  %s serial %s expires %s\n", c.GetPrincipal(), c.GetSerial(), fmtTime(c.GetExpireTime()))
				}
				printWitnesses(out, rep.GetWitnesses())
				return nil
			})
		},
	}
}

// printWitnesses shows each witness's view of the log, a split view first
// and loudest.
func printWitnesses(out io.Writer, ws []*bgv1.WitnessStatus) {
	if len(ws) == 0 {
		return
	}
	for _, w := range ws {
		if w.GetSplitView() != "" {
			fmt.Fprintf(out, "\nSPLIT VIEW: %s\n", w.GetSplitView())
		}
	}
	fmt.Fprintf(out, "\nWITNESSES (%d)\n", len(ws))
	for _, w := range ws {
		state := "ok"
		switch {
		case w.GetSplitView() != "":
			state = "REFUSES THIS LOG'S HISTORY"
		case w.GetLastError() != "":
			state = fmt.Sprintf("failing (%d in a row): %s", w.GetFailures(), w.GetLastError())
		}
		cosigned := "nothing cosigned yet"
		if w.GetCosignedSize() > 0 {
			cosigned = fmt.Sprintf("cosigned %d entries at %s", w.GetCosignedSize(), fmtTime(w.GetCosignedTime()))
		}
		fmt.Fprintf(out, "  %s (%s): %s; %s\n", w.GetName(), w.GetUrl(), cosigned, state)
	}
}

// fetchReport reads every page of the report into one: the first page
// carries every section, the ones after it further grants and tokens.
func fetchReport(ctx context.Context, c *client.Client) (*bgv1.GetReportResponse, error) {
	rep, err := c.GetReport(ctx, &bgv1.GetReportRequest{})
	if err != nil {
		return nil, err
	}
	for token := rep.GetNextPageToken(); token != ""; {
		next, err := c.GetReport(ctx, &bgv1.GetReportRequest{PageToken: token})
		if err != nil {
			return nil, err
		}
		rep.ActiveGrants = append(rep.ActiveGrants, next.GetActiveGrants()...)
		rep.Tokens = append(rep.Tokens, next.GetTokens()...)
		token = next.GetNextPageToken()
	}
	rep.NextPageToken = ""
	return rep, nil
}

func (a *app) alertCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "alert", Short: "Alerts the broker gave up on (dead letters)"}
	var sink, notes string
	ack := &cobra.Command{
		Use:   "ack EVENT_ID --sink NAME --notes TEXT",
		Short: "Acknowledge a dead letter once dealt with: it leaves the report and the health (auditors)",
		Long: "Acknowledge a dead-lettered alert, named by its event id and sink as bgctl report lists them, once " +
			"what it announced reached the people it was for some other way, or the sink was fixed. The acknowledgement " +
			"is audited with your notes; the dead letter leaves the report and the health, and the outbox after notify.retention.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.AcknowledgeDeadLetter(ctx, &bgv1.AcknowledgeDeadLetterRequest{EventId: args[0], Sink: sink, Notes: notes})
				if err != nil {
					return err
				}
				if a.output == "json" {
					return a.printJSON(resp)
				}
				d := resp.GetDeadLetter()
				fmt.Fprintf(a.stdout, "dead letter %s (%s) for sink %s acknowledged (audit entry %d)\n", d.GetEventId(), d.GetType(), d.GetSink(),
					resp.GetEntry().GetIndex())
				return nil
			})
		},
	}
	ack.Flags().StringVar(&sink, "sink", "", "the sink it was dead-lettered at, as bgctl report lists it (required)")
	ack.Flags().StringVar(&notes, "notes", "", "what was done about it (required)")
	_ = ack.MarkFlagRequired("sink")
	_ = ack.MarkFlagRequired("notes")
	cmd.AddCommand(ack)
	return cmd
}

// printDeadLetters lists the dead letters nobody acknowledged, by the event
// id and sink that bgctl alert ack takes, and the state of each sink.
func printDeadLetters(out io.Writer, rep *bgv1.GetReportResponse) {
	fmt.Fprintf(out, "\nDEAD-LETTERED ALERTS (%d)\n", len(rep.GetDeadLetters()))
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	if len(rep.GetDeadLetters()) > 0 {
		fmt.Fprintln(w, "  EVENT ID\tSINK\tEVENT\tACCOUNT\tSINCE\tATTEMPTS\tLAST ERROR")
	}
	for _, d := range rep.GetDeadLetters() {
		fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%s\t%d\t%s\n", d.GetEventId(), d.GetSink(), d.GetType(), orDash(d.GetAccount()),
			fmtTime(d.GetCreateTime()), d.GetAttempts(), d.GetLastError())
	}
	_ = w.Flush()
	if len(rep.GetDeadLetters()) > 0 {
		fmt.Fprintln(out, "  once dealt with: bgctl alert ack EVENT_ID --sink SINK --notes TEXT (auditors)")
	}
	if len(rep.GetOutbox()) > 0 {
		fmt.Fprintf(out, "\nALERT SINKS\n")
		for _, s := range rep.GetOutbox() {
			fmt.Fprintf(out, "  %s: %d delivered, %d pending, %d dead\n", s.GetSink(), s.GetDelivered(), s.GetPending(), s.GetDead())
		}
	}
}
