package broker

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/format/principal"
	"github.com/bgbroker/breakglass/server/request"
	"github.com/bgbroker/breakglass/server/store"
)

// RuleSetter is implemented by certificate verifiers whose identity rule
// follows the policy (identity.Verifier).
type RuleSetter interface {
	SetRule(mode, uriPrefix string) error
}

// currentIdentity is the identity rule the certificate verifier applies.
func (b *Broker) currentIdentity() policy.Identity {
	mode, prefix := b.cfg.Certs.Describe()
	return policy.Identity{Mode: mode, URIPrefix: prefix}
}

// withIdentity returns p naming an identity rule: its own, or the one the
// certificate verifier was configured with.
func (b *Broker) withIdentity(p *policy.Policy) *policy.Policy {
	if p.Identity != nil {
		return p
	}
	return p.WithIdentity(b.currentIdentity())
}

// applyIdentity puts p's identity rule in force in the certificate
// verifier, once p is logged.
func (b *Broker) applyIdentity(p *policy.Policy) error {
	if *p.Identity == b.currentIdentity() {
		return nil
	}
	rs, ok := b.cfg.Certs.(RuleSetter)
	if !ok {
		return fmt.Errorf("the policy names identity rule %s but the certificate verifier applies %s and cannot change", p.Identity, b.currentIdentity())
	}
	return rs.SetRule(p.Identity.Mode, p.Identity.URIPrefix)
}

// maxRemapped bounds the principals a refusal lists.
const maxRemapped = 10

// checkRemap refuses to change the identity rule from old to cur while it
// would name anyone with open work differently: a pending request's
// requester or reviewers, or a live grant's, by the certificates their
// signed request and reviews carry. Their signatures were judged under
// old; under cur another principal (or none) would stand behind them, so
// the change waits until that work ends. A request made before requests
// were signed has no certificate of its requester to judge by, and holds
// the change too. It reads the open requests only: O(open work).
func (b *Broker) checkRemap(ctx context.Context, rd store.Reader, old, cur policy.Identity, now time.Time) error {
	if old == cur {
		return nil
	}
	rule := principal.FromIdentity(cur)
	var problems []string
	n := 0
	note := func(format string, args ...any) {
		n++
		if len(problems) < maxRemapped {
			problems = append(problems, fmt.Sprintf(format, args...))
		}
	}
	check := func(r *request.Request, role, who string, der []byte) {
		cert, err := b.sigs.ParseCertificate(der)
		if err != nil {
			note("%s %s of request %s: the certificate does not parse", role, who, r.ID)
			return
		}
		got, err := rule.Of(cert)
		switch {
		case err != nil:
			note("%s %s of request %s would be nobody (%v)", role, who, r.ID, err)
		case got != who:
			note("%s %s of request %s would be %s", role, who, r.ID, got)
		}
	}
	f := store.Filter{States: []request.State{request.Pending, request.Approved}, Limit: 200}
	for {
		batch, err := rd.Requests(ctx, f)
		if err != nil {
			return err
		}
		for _, r := range batch {
			f.BeforeTime, f.BeforeID = r.CreatedAt, r.ID
			if st, _, _ := r.Effective(now); st != request.Pending && st != request.Approved {
				continue
			}
			if err := attachBindings(ctx, rd, r); err != nil {
				return err
			}
			if c := r.RequesterCert(); c != nil {
				check(r, "requester", r.Requester, c)
			} else {
				note("request %s was made by %s before requests were signed, so who they are under the new rule cannot be shown", r.ID, r.Requester)
			}
			for _, rv := range r.Reviews {
				switch {
				case len(rv.Cert) > 0:
					check(r, "reviewer", rv.Reviewer, rv.Cert)
				case rv.Binding != nil:
					// A passkey review: its reviewer is whom the binding's
					// certificate names.
					check(r, "reviewer", rv.Reviewer, rv.Binding.Cert)
				}
			}
		}
		if len(batch) < f.Limit {
			break
		}
	}
	if n == 0 {
		return nil
	}
	more := ""
	if n > len(problems) {
		more = fmt.Sprintf("; and %d more", n-len(problems))
	}
	return wrongState("the policy changes the identity rule from %s to %s, which would name people with open work differently: %s%s. The policy in force stays; reload once these requests and grants have ended (or cancel and revoke them)",
		old, cur, strings.Join(problems, "; "), more)
}
