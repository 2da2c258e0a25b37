package broker

import (
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/server/event"
	"github.com/bgbroker/breakglass/server/request"
	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/token"
)

// Issued is a freshly minted token.
type Issued struct {
	Token         string
	JTI           string
	KID           string
	ExpiresAt     time.Time
	SHA256        string
	IssuancesLeft int
	Entry         audit.Record
}

// checkIssuable decides, from the stored request and its stored reviews,
// whether a token may be issued now. It trusts no state column alone: the
// quorum is evaluated again from the signed reviews, each re-verified, under
// the current policy.
func (b *Broker) checkIssuable(p *policy.Policy, r *request.Request, caller, audience string, now time.Time) (*policy.Account, policy.Outcome, error) {
	acct, o, err := b.checkGrant(p, r, caller, now, "tokens", "used for a token")
	if err != nil {
		return nil, policy.Outcome{}, err
	}
	// Drill tokens name only the drill audience, real ones never it, so a
	// relying party can refuse drills for real work.
	if r.Drill {
		if audience != acct.DrillAudience {
			return nil, policy.Outcome{}, invalid("request %s is a drill: its tokens are only for the drill audience %q", r.ID, acct.DrillAudience)
		}
	} else if !slices.Contains(acct.Audiences, audience) {
		return nil, policy.Outcome{}, invalid("audience %q is not one of account %s's audiences (%s)", audience, acct.Name, strings.Join(acct.Audiences, ", "))
	}
	return acct, o, nil
}

// checkGrant holds the rules every credential shares (tokens and
// certificates alike): only the requester, only an approved grant, the
// grant alert acknowledged where the account requires it, max_issuances,
// and the quorum evaluated again from the stored signed reviews.
func (b *Broker) checkGrant(p *policy.Policy, r *request.Request, caller string, now time.Time, what, action string) (*policy.Account, policy.Outcome, error) {
	if r.Requester != caller {
		return nil, policy.Outcome{}, denied("only the requester (%s) may be issued %s for request %s", r.Requester, what, r.ID)
	}
	if err := requireState(r, now, request.Approved, action); err != nil {
		return nil, policy.Outcome{}, err
	}
	acct, ok := p.Account(r.Account)
	if !ok {
		return nil, policy.Outcome{}, wrongState("account %s is no longer in the policy; nothing can be issued", r.Account)
	}
	if acct.RequireAlertAck && r.Issued == 0 && r.GrantAckedAt.IsZero() {
		return nil, policy.Outcome{}, wrongState("account %s requires the grant alert to be acknowledged by one of %s before the first credential; it has not been yet (try again shortly; `bgctl report` shows undelivered alerts)",
			acct.Name, strings.Join(acct.AckSinks, ", "))
	}
	if r.Issued >= r.MaxIssuances {
		return nil, policy.Outcome{}, wrongState("request %s has issued all %d tokens and certificates it may", r.ID, r.MaxIssuances)
	}
	if r.SoloGrant() {
		// A solo grant has no quorum: it was approved by its veto window,
		// which the log records; it must still be allowed by the policy.
		if acct.Solo == nil {
			return nil, policy.Outcome{}, wrongState("account %s no longer allows solo access; nothing can be issued", r.Account)
		}
		return acct, policy.Outcome{Met: true}, nil
	}
	o := b.evaluate(p, r)
	if !o.Met {
		return nil, policy.Outcome{}, wrongState("request %s no longer meets its quorum (%s) under the current policy; nothing can be issued", r.ID, r.Rule)
	}
	return acct, o, nil
}

// IssueToken mints a token for an approved grant. The token is signed
// before the transaction (so HSM signing does not hold the write lock) and
// is thrown away unless the transaction, which checks everything again,
// commits with its audit entry.
func (b *Broker) IssueToken(ctx context.Context, caller, id, audience string) (*Issued, error) {
	p := b.Policy()
	now := b.now().UTC()
	var r *request.Request
	var outcome policy.Outcome
	var minter *token.Minter
	err := b.view(ctx, func(rd store.Reader) error {
		var err error
		if r, err = b.loadRequest(ctx, rd, id, caller); err != nil {
			return err
		}
		if _, outcome, err = b.checkIssuable(p, r, caller, audience, now); err != nil {
			return err
		}
		if err := b.checkWitnessed(ctx, rd, r); err != nil {
			return err
		}
		minter, err = b.minter(ctx, rd, r.Account)
		return err
	})
	if err != nil {
		return nil, err
	}
	jti := uuid.New().String()
	claims := token.Claims{
		Subject: r.Requester, Audience: []string{audience}, IssuedAt: token.NumericDate(now), NotBefore: token.NumericDate(now),
		Expiry: token.NumericDate(r.GrantExpiresAt), ID: jti, ClientID: r.Requester,
		Account: r.Account, Request: r.ID, Approvers: outcome.Approvers(), Drill: r.Drill,
	}
	if b.hsmSuspect() {
		return nil, hsmDown(errHSMBackoff)
	}
	minted, err := minter.Mint(ctx, claims)
	if err != nil {
		return nil, b.hsmFailure(ctx, err)
	}
	var out Issued
	err = b.update(ctx, func(tx store.Tx) (err error) {
		out, err = b.recordToken(ctx, tx, caller, id, audience, claims, minted)
		return err
	})
	if err != nil {
		return nil, err
	}
	b.notify(id)
	b.log.Info("token issued", "request", id, "requester", caller, "audience", audience, "jti", jti, "token_sha256", minted.SHA256, "entry", out.Entry.Index)
	return &out, nil
}

// MinterResolver is implemented by key sets that follow the key registry
// (keyring.Ring): the minter of the token key a registry record names.
type MinterResolver interface {
	MinterFor(ctx context.Context, rec store.KeyRecord) (*token.Minter, error)
}

// purposeToken is the token keys' purpose in the key registry.
const purposeToken = "token"

// recordToken checks again, in the transaction that logs it, everything
// that allowed a minted token (policy and token key in force, the same
// approvals, the witnesses), and records it; nothing is kept when a check
// fails.
func (b *Broker) recordToken(ctx context.Context, tx store.Tx, caller, id, audience string, claims token.Claims, minted *token.Minted) (Issued, error) {
	jti := claims.ID
	r, err := b.loadRequest(ctx, tx, id, caller)
	if err != nil {
		return Issued{}, err
	}
	if err := b.checkPolicyInForce(ctx, tx); err != nil {
		return Issued{}, err
	}
	// The key that signed must still be in force when the issuance
	// is logged: a rotation meanwhile retired it.
	if m, err := b.minter(ctx, tx, r.Account); err != nil {
		return Issued{}, err
	} else if m.KID() != minted.KID {
		return Issued{}, &Error{Kind: KindState, Msg: "the token key was rotated while the token was being made; try again"}
	}
	now := b.now().UTC()
	if _, o, err := b.checkIssuable(b.Policy(), r, caller, audience, now); err != nil {
		return Issued{}, err
	} else if !slices.Equal(o.Approvers(), claims.Approvers) {
		return Issued{}, &Error{Kind: KindState, Msg: "the request's approvals changed while the token was being made; try again"}
	}
	if err := b.checkWitnessed(ctx, tx, r); err != nil {
		return Issued{}, err
	}
	if claims.Expiry.Time().After(r.GrantExpiresAt) {
		return Issued{}, errors.New("token would outlive its grant") // cannot happen: exp is the grant end
	}
	r.Issued++
	first := r.FirstIssuedAt.IsZero()
	if first {
		r.FirstIssuedAt = now
	}
	r.TokenKID = minted.KID
	rec, err := b.appendEntry(ctx, tx, now, audit.Draft{
		Type: audit.TypeTokenIssued, Actor: caller, Request: r.ID, Account: r.Account,
		Payload: audit.TokenIssued{JTI: jti, KID: minted.KID, Audience: audience, IssuedAt: claims.IssuedAt.Time().UTC(),
			ExpiresAt: claims.Expiry.Time().UTC(), TokenSHA256: minted.SHA256, Claims: minted.ClaimsJSON, Issuance: r.Issued},
	}, true)
	if err != nil {
		return Issued{}, err
	}
	if err := tx.AddToken(ctx, &store.TokenRecord{
		JTI: jti, RequestID: r.ID, Account: r.Account, Subject: r.Requester, Audience: audience, KID: minted.KID,
		IssuedAt: claims.IssuedAt.Time().UTC(), ExpiresAt: claims.Expiry.Time().UTC(), TokenSHA256: minted.SHA256,
		Drill: r.Drill, EntryIndex: rec.Index,
	}); err != nil {
		return Issued{}, err
	}
	if err := tx.SaveRequest(ctx, r); err != nil {
		return Issued{}, err
	}
	out := Issued{Token: minted.Token, JTI: jti, KID: minted.KID, ExpiresAt: claims.Expiry.Time().UTC(), SHA256: minted.SHA256,
		IssuancesLeft: r.MaxIssuances - r.Issued, Entry: rec}
	if err := b.emit(ctx, tx, requestEvent(event.TokenIssued, r, caller, fmt.Sprintf("%s received token %d of %d for %s on %s (expires %s)",
		caller, r.Issued, r.MaxIssuances, audience, r.Account, out.ExpiresAt.Format(time.RFC3339)), &rec), nil); err != nil {
		return Issued{}, err
	}
	if first && !r.SoloGrant() { // a solo grant's review opened at its approval
		return out, b.openPostReview(ctx, tx, r, now)
	}
	return out, nil
}

// minter is the minter of the token key in force for account, as the key
// registry names it in rd: the account's own key, else the broker's. A key
// rotated by another process is used at once and a retired one never
// again; keys that do not follow the registry mint with their own.
func (b *Broker) minter(ctx context.Context, rd store.Reader, account string) (*token.Minter, error) {
	own := b.keys.Minter(account)
	res, ok := b.keys.(MinterResolver)
	if !ok {
		return own, nil
	}
	rec, err := rd.ActiveKey(ctx, purposeToken, account)
	if errors.Is(err, store.ErrNotFound) && account != "" {
		rec, err = rd.ActiveKey(ctx, purposeToken, "")
	}
	if errors.Is(err, store.ErrNotFound) || (err == nil && own != nil && rec.KID == own.KID()) {
		return own, nil
	}
	if err != nil {
		return nil, internal(err)
	}
	m, err := res.MinterFor(ctx, rec)
	if err != nil {
		return nil, hsmDown(fmt.Errorf("the token key in force (%s, %q): %w", rec.KID, rec.Label, err))
	}
	return m, nil
}

// RevokeGrant ends an approved grant now. Its requester, anyone eligible to
// review it and the account's owners may revoke. The entry is written even
// while the HSM is down and signed when it returns.
func (b *Broker) RevokeGrant(ctx context.Context, caller, id, reason string) (*Result, error) {
	if err := validateText("reason", reason, 500, true); err != nil {
		return nil, err
	}
	return b.endRequest(ctx, caller, id, request.Approved, request.Revoked, audit.TypeGrantRevoked, "revoked", reason,
		func(p *policy.Policy, r *request.Request) error {
			acct, _ := p.Account(r.Account)
			owner := acct != nil && p.IsOwner(acct, caller)
			if caller != r.Requester && !p.Eligible(r.Rule, caller) && !owner {
				return denied("only the requester, the request's approvers and the owners of account %s may revoke its grant", r.Account)
			}
			return nil
		})
}

// TokenStatus is what CheckToken reports.
type TokenStatus string

// Token statuses.
const (
	TokenValid   TokenStatus = "VALID"
	TokenExpired TokenStatus = "EXPIRED"
	TokenRevoked TokenStatus = "REVOKED"
)

// TokenCheck is the answer to CheckToken.
type TokenCheck struct {
	Status    TokenStatus
	Record    store.TokenRecord
	RevokedAt time.Time
}

// CheckToken reports a token's status by jti. Relying parties, auditors
// and the token's own requester may ask.
func (b *Broker) CheckToken(ctx context.Context, caller, jti string) (*TokenCheck, error) {
	p := b.Policy()
	var out TokenCheck
	err := b.view(ctx, func(rd store.Reader) error {
		tk, err := rd.Token(ctx, jti)
		if errors.Is(err, store.ErrNotFound) {
			if !p.IsRelyingParty(caller) && !p.IsAuditor(caller) {
				return denied("only relying parties and auditors may check tokens")
			}
			return newErr(KindNotFound, "no token with jti %s was issued by this broker", jti)
		}
		if err != nil {
			return err
		}
		if !p.IsRelyingParty(caller) && !p.IsAuditor(caller) && caller != tk.Subject {
			return denied("only relying parties and auditors may check tokens")
		}
		r, err := rd.Request(ctx, tk.RequestID)
		if err != nil {
			return err
		}
		now := b.now()
		out.Record = *tk
		state, _, at := r.Effective(now)
		switch {
		case state == request.Revoked:
			out.Status, out.RevokedAt = TokenRevoked, at
		case !now.Before(tk.ExpiresAt):
			out.Status = TokenExpired
		case state == request.Expired:
			out.Status = TokenExpired
		default:
			out.Status = TokenValid
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &out, nil
}

// JWKS returns the key set that verifies the broker's tokens: its active
// and retired token keys. Accounts with their own keys are not in it.
func (b *Broker) JWKS() ([]byte, error) { return token.JWKS(b.keys.TokenKeys("")...) }

// AccountJWKS returns the key set of an account with its own token key,
// or ErrNotFound-kind when it has none.
func (b *Broker) AccountJWKS(account string) ([]byte, error) {
	if _, ok := b.Policy().Account(account); !ok {
		return nil, newErr(KindNotFound, "account %q does not exist", account)
	}
	keys := b.keys.TokenKeys(account)
	if len(keys) == 0 {
		return nil, newErr(KindNotFound, "account %s has no token key of its own; its tokens verify with the broker's JWKS", account)
	}
	return token.JWKS(keys...)
}

// TokenKeys returns the public keys that verify an account's tokens ("" for
// the broker's own set).
func (b *Broker) TokenKeys(account string) []crypto.PublicKey { return b.keys.TokenKeys(account) }

// Introspection is what RFC 7662 introspection says of a token: Active,
// and for an active token its claims; nothing else for an inactive one.
type Introspection struct {
	Active bool
	Claims *token.Claims
}

// Introspect answers a relying party (or an auditor) about a token it was
// given: active only when it is one this broker signed (signature with a
// key of its issuer, the broker's or its account's), recorded with this
// exact hash, within its validity period, its grant neither revoked nor
// ended, and not a drill. Anything else is inactive, with no detail. The
// token is never stored or logged.
func (b *Broker) Introspect(ctx context.Context, caller, raw string) (*Introspection, error) {
	p := b.Policy()
	if !p.IsRelyingParty(caller) && !p.IsAuditor(caller) {
		return nil, denied("only relying parties and auditors may introspect tokens")
	}
	issuers := []token.IssuerKeys{{Issuer: b.keys.Minter("").Issuer(), Keys: b.keys.TokenKeys("")}}
	for _, a := range p.Accounts {
		if keys := b.keys.TokenKeys(a.Name); len(keys) > 0 && a.TokenKey != "" {
			issuers = append(issuers, token.IssuerKeys{Issuer: token.AccountIssuer(issuers[0].Issuer, a.Name), Keys: keys})
		}
	}
	c, err := token.Verify(raw, issuers)
	if err != nil {
		return &Introspection{}, nil //nolint:nilerr // an invalid token is an inactive one (RFC 7662 §2.2), not an error
	}
	now := b.now()
	if !now.Before(c.Expiry.Time()) || (c.NotBefore != nil && now.Before(c.NotBefore.Time())) || c.Drill {
		return &Introspection{}, nil
	}
	sum := sha256.Sum256([]byte(raw))
	active := false
	err = b.view(ctx, func(rd store.Reader) error {
		tk, err := rd.Token(ctx, c.ID)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if tk.TokenSHA256 != hex.EncodeToString(sum[:]) || tk.Account != c.Account || tk.Drill {
			return nil
		}
		r, err := rd.Request(ctx, tk.RequestID)
		if err != nil {
			return err
		}
		state, _, _ := r.Effective(now)
		active = state == request.Approved && now.Before(tk.ExpiresAt)
		return nil
	})
	if err != nil || !active {
		return &Introspection{}, err
	}
	return &Introspection{Active: true, Claims: c}, nil
}
