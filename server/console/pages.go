package console

import (
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"slices"

	"strings"
	"time"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/passkey"
	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/format/statement"
	"github.com/bgbroker/breakglass/server/broker"
	"github.com/bgbroker/breakglass/server/request"
	"github.com/bgbroker/breakglass/server/store"
)

var funcs = template.FuncMap{
	"time": func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.UTC().Format("2006-01-02 15:04:05 UTC")
	},
	"iso":   func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	"b64id": passkey.EncodeID,
	"lower": strings.ToLower,
}

// page is what every page template gets.
type page struct {
	Title   string
	Nav     string
	Viewer  *viewer
	Auditor bool
	// Origin and RPID are the console's, for the script.
	Origin string
	RPID   string
	// LogOrigin is the log's origin, which every statement names.
	LogOrigin string
	// Now is the broker's clock, which the script dates statements by.
	Now  time.Time
	Data any
}

func (c *Console) page(v *viewer, title, nav string, data any) page {
	b := c.cfg.Broker
	return page{Title: title, Nav: nav, Viewer: v, Auditor: b.Policy().IsAuditor(v.Principal), Origin: c.cfg.Origin, RPID: c.cfg.RPID,
		LogOrigin: b.Origin(), Now: b.Now().UTC(), Data: data}
}

// requestView is a request as the pages show it.
type requestView struct {
	R        *request.Request
	State    request.State
	Age      string
	Deadline time.Time
	// Progress says in words what the quorum still needs and who filled
	// what ("needs 1 of security; bob approved for db-admins").
	Progress string
	Reviews  []reviewView
	// Content carries the request's content fields for the script, which
	// builds the content text and the statement itself.
	Content   contentView
	CanReview bool
	CanCancel bool
	CanRevoke bool
	Reviewed  bool
	// Credentials are the viewer's bound passkeys (for the assertion's
	// allowCredentials).
	Credentials []string
}

type reviewView struct {
	Reviewer, Decision, Comment, Signer string
	At                                  time.Time
	Entry                               uint64
}

type contentView struct {
	Version       int
	ID            string
	Account       string
	Requester     string
	TTLSeconds    int64
	Drill         bool
	CreatedSecs   int64
	CreatedNanos  int
	Ticket        string
	Justification string
	Digest        string
	LogOrigin     string
}

func (c *Console) view(v *viewer, r *request.Request, creds []string) requestView {
	b := c.cfg.Broker
	p := b.Policy()
	now := b.Now()
	st, _, _ := r.Effective(now)
	rv := requestView{R: r, State: st, Age: age(now.Sub(r.CreatedAt)), Progress: progress(p, r), Credentials: creds}
	switch st {
	case request.Pending:
		rv.Deadline = r.ApprovalDeadline
	case request.Approved:
		rv.Deadline = r.GrantExpiresAt
	}
	ct := r.Content()
	rv.Content = contentView{Version: int(ct.Version.Norm()), ID: ct.ID, Account: ct.Account, Requester: ct.Requester, TTLSeconds: ct.TTLSeconds, Drill: ct.Drill,
		CreatedSecs: ct.CreatedAt.Unix(), CreatedNanos: ct.CreatedAt.Nanosecond(), Ticket: ct.Ticket, Justification: ct.Justification, Digest: ct.Digest(),
		LogOrigin: b.Origin()}
	for _, x := range r.Reviews {
		rv.Reviews = append(rv.Reviews, reviewView{Reviewer: x.Reviewer, Decision: string(x.Decision), Comment: x.Comment, At: x.At, Entry: x.EntryIndex,
			Signer: signer(x)})
		if x.Reviewer == v.Principal {
			rv.Reviewed = true
		}
	}
	rv.CanReview = st == request.Pending && r.Requester != v.Principal && p.Eligible(r.Rule, v.Principal) && !rv.Reviewed
	rv.CanCancel = st == request.Pending && r.Requester == v.Principal
	if st == request.Approved {
		a, ok := p.Account(r.Account)
		rv.CanRevoke = r.Requester == v.Principal || p.Eligible(r.Rule, v.Principal) || (ok && p.IsOwner(a, v.Principal))
	}
	return rv
}

// signer says what signed a review.
func signer(x request.Review) string {
	switch {
	case x.Passkey != nil:
		return "passkey " + passkey.EncodeID(x.Passkey.Credential)
	case x.KeyStore == audit.KeyStorePKCS11:
		return "certificate key on a PKCS#11 token"
	}
	return "certificate key"
}

func age(d time.Duration) string {
	switch {
	case d < time.Minute:
		return "just now"
	case d < time.Hour:
		return fmt.Sprintf("%d min", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh %02dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
	}
	return fmt.Sprintf("%d days", int(d/(24*time.Hour)))
}

// progress says in words where a request stands against its quorum: for
// the alternative closest to being met, what it still needs and who has
// filled which group; "quorum met" once one is.
func progress(p *policy.Policy, r *request.Request) string {
	var approvers []string
	for _, x := range r.Reviews {
		if x.Decision == request.Approve && x.Reviewer != r.Requester && !slices.Contains(approvers, x.Reviewer) {
			approvers = append(approvers, x.Reviewer)
		}
	}
	if policy.Evaluate(p, r.Rule, r.Requester, approvers).Met {
		return "quorum met: approved by " + strings.Join(approvers, ", ")
	}
	best, bestLeft := "", -1
	for _, alt := range r.Rule {
		left := make([]int, len(alt))
		for i, req := range alt {
			left[i] = req.Approvals
		}
		var filled []string
		for _, who := range approvers {
			for i, req := range alt {
				if left[i] > 0 && p.IsMember(req.Group, who) {
					left[i]--
					filled = append(filled, who+" approved for "+req.Group)
					break
				}
			}
		}
		var needs []string
		total := 0
		for i, req := range alt {
			if left[i] > 0 {
				needs = append(needs, fmt.Sprintf("%d of %s", left[i], req.Group))
				total += left[i]
			}
		}
		text := "needs " + strings.Join(needs, " and ")
		if len(filled) > 0 {
			text += "; " + strings.Join(filled, "; ")
		}
		if bestLeft < 0 || total < bestLeft {
			best, bestLeft = text, total
		}
	}
	if best == "" {
		return "no quorum can be met"
	}
	return best
}

// boundCredentials lists the viewer's bound passkeys.
func (c *Console) boundCredentials(r *http.Request, who string) ([]string, error) {
	ps, err := c.cfg.Broker.Passkeys(r.Context(), who, "")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range ps {
		if p.State == store.PasskeyBound && p.RPID == c.cfg.RPID && p.WebOrigin == c.cfg.Origin {
			out = append(out, passkey.EncodeID(p.CredentialID))
		}
	}
	return out, nil
}

type listData struct {
	Requests []requestView
	Passkeys int
}

func (c *Console) awaitingData(r *http.Request, v *viewer) (listData, error) {
	rs, _, err := c.cfg.Broker.ListRequests(r.Context(), v.Principal, broker.ListInput{AwaitingMyReview: true, PageSize: 100})
	if err != nil {
		return listData{}, err
	}
	creds, err := c.boundCredentials(r, v.Principal)
	if err != nil {
		return listData{}, err
	}
	d := listData{Passkeys: len(creds)}
	for _, x := range rs {
		d.Requests = append(d.Requests, c.view(v, x, creds))
	}
	return d, nil
}

// awaiting is the home page: requests the viewer may review.
func (c *Console) awaiting(w http.ResponseWriter, r *http.Request, v *viewer) {
	d, err := c.awaitingData(r, v)
	if err != nil {
		c.brokerError(w, r, v, err)
		return
	}
	c.render(w, r, "awaiting.html", c.page(v, "Awaiting my review", "awaiting", d))
}

// awaitingFragment is the list alone, which the script swaps in when the
// event stream says something changed.
func (c *Console) awaitingFragment(w http.ResponseWriter, r *http.Request, v *viewer) {
	d, err := c.awaitingData(r, v)
	if err != nil {
		c.brokerError(w, r, v, err)
		return
	}
	c.render(w, r, "awaiting-list", c.page(v, "", "", d))
}

func (c *Console) requestData(r *http.Request, v *viewer) (requestView, error) {
	x, err := c.cfg.Broker.GetRequest(r.Context(), v.Principal, r.PathValue("id"))
	if err != nil {
		return requestView{}, err
	}
	creds, err := c.boundCredentials(r, v.Principal)
	if err != nil {
		return requestView{}, err
	}
	return c.view(v, x, creds), nil
}

// requestPage shows one request: everything bgctl show shows, the reviews
// and what signed each, and the approve and deny buttons.
func (c *Console) requestPage(w http.ResponseWriter, r *http.Request, v *viewer) {
	d, err := c.requestData(r, v)
	if err != nil {
		c.brokerError(w, r, v, err)
		return
	}
	c.render(w, r, "request.html", c.page(v, "Request "+d.R.ID, "", d))
}

func (c *Console) requestFragment(w http.ResponseWriter, r *http.Request, v *viewer) {
	d, err := c.requestData(r, v)
	if err != nil {
		c.brokerError(w, r, v, err)
		return
	}
	c.render(w, r, "request-body", c.page(v, "", "", d))
}

type mineData struct {
	Requests []requestView
	Accounts []broker.AccountView
	Error    string
	// Credentials are the viewer's bound passkeys, which sign requests.
	Credentials []string
}

// mine lists the viewer's own requests and the form to make one.
func (c *Console) mine(w http.ResponseWriter, r *http.Request, v *viewer) {
	c.renderMine(w, r, v, "")
}

func (c *Console) renderMine(w http.ResponseWriter, r *http.Request, v *viewer, problem string) {
	b := c.cfg.Broker
	rs, _, err := b.ListRequests(r.Context(), v.Principal, broker.ListInput{Mine: true, PageSize: 50})
	if err != nil {
		c.brokerError(w, r, v, err)
		return
	}
	creds, err := c.boundCredentials(r, v.Principal)
	if err != nil {
		c.brokerError(w, r, v, err)
		return
	}
	d := mineData{Error: problem, Credentials: creds}
	for _, x := range rs {
		d.Requests = append(d.Requests, c.view(v, x, nil))
	}
	for _, a := range b.Accounts(v.Principal) {
		if a.CanRequest {
			d.Accounts = append(d.Accounts, a)
		}
	}
	if problem != "" {
		w.WriteHeader(http.StatusBadRequest)
	}
	c.render(w, r, "mine.html", c.page(v, "My requests", "mine", d))
}

// createBody is what the console's script posts to ask for access: the
// request, and the request statement the requester's passkey signed
// (docs/signing.md, "Request statements"; the statement's SHA-256 is the
// WebAuthn challenge).
type createBody struct {
	Account       string          `json:"account"`
	Justification string          `json:"justification"`
	Ticket        string          `json:"ticket"`
	TTLSeconds    int64           `json:"ttl_seconds"`
	Drill         bool            `json:"drill"`
	Statement     []byte          `json:"statement"`
	Assertion     json.RawMessage `json:"assertion"`
}

// create makes a request signed by the viewer's passkey: the script built
// the request statement from the form, with an id of its choosing, and
// the passkey signed it.
func (c *Console) create(w http.ResponseWriter, r *http.Request, v *viewer) {
	if !wantsJSON(r) {
		c.renderMine(w, r, v, "requests made in the console are signed by your passkey, in the page's script: enable JavaScript, or use bgctl request")
		return
	}
	var in createBody
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
		c.fail(w, r, http.StatusBadRequest, "the request is not JSON the console sent: "+err.Error())
		return
	}
	if in.TTLSeconds < 0 || in.TTLSeconds > statement.MaxTTLSeconds {
		c.fail(w, r, http.StatusBadRequest, "the TTL is out of range")
		return
	}
	a, err := parseAssertion(in.Assertion)
	if err != nil {
		c.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	res, err := c.cfg.Broker.CreateRequest(r.Context(), v.Principal, broker.CreateInput{Account: in.Account, Justification: in.Justification, Ticket: in.Ticket,
		TTL: time.Duration(in.TTLSeconds) * time.Second, Drill: in.Drill, Statement: in.Statement, Passkey: a})
	if err != nil {
		c.brokerError(w, r, v, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"id": res.Request.ID, "entry": res.Entry.Index})
}

// cancel withdraws the viewer's pending request.
func (c *Console) cancel(w http.ResponseWriter, r *http.Request, v *viewer) {
	id := r.PathValue("id")
	if _, err := c.cfg.Broker.CancelRequest(r.Context(), v.Principal, id, r.PostFormValue("reason")); err != nil {
		c.brokerError(w, r, v, err)
		return
	}
	http.Redirect(w, r, "/requests/"+url.PathEscape(id), http.StatusSeeOther)
}

// revoke ends a grant now.
func (c *Console) revoke(w http.ResponseWriter, r *http.Request, v *viewer) {
	id := r.PathValue("id")
	reason := strings.TrimSpace(r.PostFormValue("reason"))
	if reason == "" {
		c.fail(w, r, http.StatusBadRequest, "say why the grant is revoked")
		return
	}
	if _, err := c.cfg.Broker.RevokeGrant(r.Context(), v.Principal, id, reason); err != nil {
		c.brokerError(w, r, v, err)
		return
	}
	http.Redirect(w, r, "/requests/"+url.PathEscape(id), http.StatusSeeOther)
}

type auditData struct {
	Entries    []entryView
	Size       uint64
	Checkpoint string
	Report     *broker.Report
}

type entryView struct {
	Index                 uint64
	Time                  time.Time
	Type, Actor, Request  string
	Account, Signed, Leaf string
}

// auditTail is how many of the newest entries the audit page shows.
const auditTail = 50

// auditPage shows auditors the log's tail, the latest checkpoint and the
// standing-access report.
func (c *Console) auditPage(w http.ResponseWriter, r *http.Request, v *viewer) {
	b := c.cfg.Broker
	if !b.Policy().IsAuditor(v.Principal) {
		b.RecordDenial(v.Principal, "console GET /audit", "only auditors read the audit log")
		c.fail(w, r, http.StatusForbidden, "only auditors read the audit log")
		return
	}
	var d auditData
	err := c.cfg.Store.View(r.Context(), func(rd store.Reader) error {
		h, err := rd.Head(r.Context())
		if err != nil {
			return err
		}
		d.Size = h.Size
		from := uint64(0)
		if h.Size > auditTail {
			from = h.Size - auditTail
		}
		recs, err := rd.Entries(r.Context(), from, h.Size)
		if err != nil {
			return err
		}
		for i := len(recs) - 1; i >= 0; i-- {
			rec := recs[i]
			ev := entryView{Index: rec.Index, Time: rec.Time, Type: string(rec.Type), Signed: "signed", Leaf: fmt.Sprintf("%x", rec.LeafHash)}
			if len(rec.Signature) == 0 {
				ev.Signed = "waiting for the HSM"
			}
			if e, err := audit.Parse(rec.Bytes); err == nil {
				ev.Actor, ev.Request, ev.Account = e.Actor, e.Request, e.Account
			}
			d.Entries = append(d.Entries, ev)
		}
		return nil
	})
	if err != nil {
		c.brokerError(w, r, v, err)
		return
	}
	if c.cfg.Checkpoint != nil {
		if cp, err := c.cfg.Checkpoint(r.Context()); err == nil {
			d.Checkpoint = string(cp)
		} else {
			d.Checkpoint = "no checkpoint yet: " + err.Error()
		}
	}
	if d.Report, err = b.Report(r.Context(), v.Principal, broker.ReportPage{Size: 50}); err != nil {
		c.brokerError(w, r, v, err)
		return
	}
	c.render(w, r, "audit.html", c.page(v, "Audit", "audit", d))
}

// reviewBody is what the console's script posts to approve or deny.
type reviewBody struct {
	Decision  string          `json:"decision"`
	Comment   string          `json:"comment"`
	Statement []byte          `json:"statement"`
	Assertion json.RawMessage `json:"assertion"`
}

// review records an approval or a denial signed by the viewer's passkey:
// the script built the statement from the request it showed, and the
// passkey signed its SHA-256 (docs/signing.md, "Passkey reviews").
func (c *Console) review(w http.ResponseWriter, r *http.Request, v *viewer) {
	var in reviewBody
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
		c.fail(w, r, http.StatusBadRequest, "the review is not JSON the console sent: "+err.Error())
		return
	}
	d := request.Decision(in.Decision)
	if d != request.Approve && d != request.Deny {
		c.fail(w, r, http.StatusBadRequest, "decision must be approve or deny")
		return
	}
	a, err := parseAssertion(in.Assertion)
	if err != nil {
		c.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	res, err := c.cfg.Broker.Review(r.Context(), v.Principal, broker.ReviewInput{ID: r.PathValue("id"), Decision: d, Comment: in.Comment, Statement: in.Statement,
		Passkey: a})
	if err != nil {
		c.brokerError(w, r, v, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"state": string(res.Request.State), "entry": res.Entry.Index})
}

// passkeyData is the passkeys page.
type passkeyData struct {
	Passkeys []passkeyView
}

type passkeyView struct {
	ID, Label, State, Alg, Fingerprint, Origin string
	Created, Bound                             time.Time
	Entry                                      uint64
}

func (c *Console) passkeys(w http.ResponseWriter, r *http.Request, v *viewer) {
	ps, err := c.cfg.Broker.Passkeys(r.Context(), v.Principal, "")
	if err != nil {
		c.brokerError(w, r, v, err)
		return
	}
	var d passkeyData
	now := c.cfg.Broker.Now()
	for _, p := range ps {
		if p.State == store.PasskeyPending && !now.Before(p.ExpiresAt) {
			continue
		}
		pv := passkeyView{ID: passkey.EncodeID(p.CredentialID), Label: p.Label, State: p.State, Origin: p.WebOrigin, Created: p.CreatedAt, Bound: p.BoundAt, Entry: p.BoundEntry}
		if k, err := passkey.ParseKey(p.PublicKey); err == nil {
			pv.Alg, pv.Fingerprint = passkey.AlgName(k.Alg), k.Fingerprint()
		}
		d.Passkeys = append(d.Passkeys, pv)
	}
	c.render(w, r, "passkeys.html", c.page(v, "My passkeys", "passkeys", d))
}

func (c *Console) removePasskey(w http.ResponseWriter, r *http.Request, v *viewer) {
	id, err := passkey.DecodeID(r.PathValue("id"))
	if err != nil {
		c.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	if _, _, err := c.cfg.Broker.RemovePasskey(r.Context(), v.Principal, id, r.PostFormValue("reason")); err != nil {
		c.brokerError(w, r, v, err)
		return
	}
	http.Redirect(w, r, "/passkeys", http.StatusSeeOther)
}
