package policy

import (
	"bytes"
	"errors"
	"fmt"

	"go.yaml.in/yaml/v3"

	"github.com/bgbroker/breakglass/format/strictjson"
)

// FromCanonicalJSON rebuilds a policy from its logged form, as the offline
// verifier does, and holds it to everything a policy file is held to: the
// bytes must be the canonical encoding of a policy (exact-case keys, each
// once, none unknown), and that policy, written back as a policy file,
// must pass Load and give these very bytes. So a logged policy can hold
// nothing a file could not: no group named like rule text ("db-admins and
// 1 of security"), no principal outside the principal grammar, no
// unreachable quorum, no window past the ceiling, no unsorted or repeated
// member.
func FromCanonicalJSON(b []byte) (*Policy, error) {
	var p Policy
	if err := strictjson.Decode(b, &p); err != nil {
		return nil, fmt.Errorf("it is not the canonical encoding of a policy: %w", err)
	}
	src, err := p.Source()
	if err != nil {
		return nil, err
	}
	q, err := Load(src, "the logged policy")
	if err != nil {
		var inv *InvalidError
		if errors.As(err, &inv) {
			return nil, fmt.Errorf("it breaks the rules every policy file is held to: %w", err)
		}
		return nil, err
	}
	if !bytes.Equal(q.CanonicalJSON(), b) {
		return nil, errors.New("it is not the canonical form of the policy it describes (group members must be sorted, defaults written out)")
	}
	return q, nil
}

// Source writes p as a policy file that Load reads back to p: every
// setting explicit, defaults included.
func (p *Policy) Source() ([]byte, error) {
	doc := map[string]any{"max_duration": p.MaxDuration.D().String()}
	groups := map[string]any{}
	for g, members := range p.Groups {
		groups[g] = nonNil(members)
	}
	doc["groups"] = groups
	for k, v := range map[string]string{"auditors": p.Auditors, "relying_parties": p.RelyingParties, "admins": p.Admins} {
		if v != "" {
			doc[k] = v
		}
	}
	if len(p.PolicyAdmins) > 0 {
		doc["policy_admins"] = ruleSource(p.PolicyAdmins)
		doc["policy_change_window"] = p.ChangeWindow.D().String()
	}
	if p.Contacts != nil {
		cs := map[string]any{}
		for who, c := range p.Contacts {
			m := map[string]any{}
			for k, v := range map[string]string{"slack": c.Slack, "webhook_tag": c.WebhookTag, "email": c.Email} {
				if v != "" {
					m[k] = v
				}
			}
			cs[who] = m
		}
		doc["contacts"] = cs
	}
	if p.Identity != nil {
		id := map[string]any{"mode": p.Identity.Mode}
		if p.Identity.URIPrefix != "" {
			id["uri_prefix"] = p.Identity.URIPrefix
		}
		doc["identity"] = id
	}
	accounts := []any{}
	for _, a := range p.Accounts {
		if a == nil {
			return nil, errors.New("the policy has a null account")
		}
		accounts = append(accounts, a.source())
	}
	doc["accounts"] = accounts
	return yaml.Marshal(doc)
}

// ruleSource is a rule in the file's grammar: alternatives, each require:
// a list of {group, approvals}.
func ruleSource(rule Rule) []any {
	out := []any{}
	for _, alt := range rule {
		reqs := []any{}
		for _, r := range alt {
			reqs = append(reqs, map[string]any{"group": r.Group, "approvals": r.Approvals})
		}
		out = append(out, map[string]any{"require": reqs})
	}
	return out
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func (a *Account) source() map[string]any {
	m := map[string]any{
		"name": a.Name, "owner": a.Owner, "requesters": nonNil(a.Requesters), "audiences": nonNil(a.Audiences),
		"max_ttl": a.MaxTTL.D().String(), "approval_window": a.ApprovalWindow.D().String(), "activation_window": a.ActivationWindow.D().String(),
		"max_issuances": a.MaxIssuances, "deny_threshold": a.DenyThreshold, "require_ticket": a.RequireTicket,
		"reviewers": a.Reviewers, "review_within": a.ReviewWithin.D().String(),
		"block_on_overdue_review": a.BlockOnOverdueReview, "require_alert_ack": a.RequireAlertAck, "rotate_after_use": a.RotateAfterUse,
	}
	m["quorum"] = ruleSource(a.Quorum)
	opt := func(k, v string) {
		if v != "" {
			m[k] = v
		}
	}
	opt("description", a.Description)
	opt("drill_audience", a.DrillAudience)
	opt("token_key", a.TokenKey)
	if a.DrillEvery != 0 {
		m["drill_every"] = a.DrillEvery.D().String()
	}
	if a.ReviewEvery != 0 {
		m["review_every"] = a.ReviewEvery.D().String()
	}
	if a.AckSinks != nil {
		m["ack_sinks"] = a.AckSinks
	}
	if a.Federation != nil {
		m["federation"] = a.Federation
	}
	if a.Solo != nil {
		m["solo"] = map[string]any{"delay": a.Solo.Delay.D().String(), "max_ttl": a.Solo.MaxTTL.D().String()}
	}
	if s := a.SSH; s != nil {
		sm := map[string]any{"principals": nonNil(s.Principals), "extensions": nonNil(s.Extensions)}
		if s.DrillPrincipals != nil {
			sm["drill_principals"] = s.DrillPrincipals
		}
		if s.SourceAddresses != nil {
			sm["source_addresses"] = s.SourceAddresses
		}
		if s.ForceCommand != "" {
			sm["force_command"] = s.ForceCommand
		}
		if s.MaxTTL != 0 {
			sm["max_ttl"] = s.MaxTTL.D().String()
		}
		m["ssh"] = sm
	}
	if x := a.X509; x != nil {
		xm := map[string]any{"common_name": x.CommonName, "ext_key_usage": nonNil(x.ExtKeyUsage)}
		if x.DrillCommonName != "" {
			xm["drill_common_name"] = x.DrillCommonName
		}
		if x.DNSNames != nil {
			xm["dns_names"] = x.DNSNames
		}
		if x.URISANs != nil {
			xm["uri_sans"] = x.URISANs
		}
		if x.MaxTTL != 0 {
			xm["max_ttl"] = x.MaxTTL.D().String()
		}
		m["x509"] = xm
	}
	return m
}
