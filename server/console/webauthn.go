package console

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/go-webauthn/webauthn/protocol"
	"github.com/go-webauthn/webauthn/webauthn"

	"github.com/bgbroker/breakglass/format/passkey"
	"github.com/bgbroker/breakglass/server/broker"
	"github.com/bgbroker/breakglass/server/store"
)

// ceremony is a passkey registration begun in one request and finished
// in the next.
type ceremony struct {
	session webauthn.SessionData
	label   string
	expires time.Time
}

// ceremonyTTL bounds how long the browser may take to create the passkey.
const ceremonyTTL = 5 * time.Minute

// user is a principal as go-webauthn sees one. The user handle is a hash
// of the principal, so that authenticators store no name the broker did
// not choose to show.
type user struct {
	principal string
	creds     []webauthn.Credential
}

func (u user) WebAuthnID() []byte {
	h := sha256.Sum256([]byte("breakglass console user\n" + u.principal))
	return h[:]
}
func (u user) WebAuthnName() string                       { return u.principal }
func (u user) WebAuthnDisplayName() string                { return u.principal }
func (u user) WebAuthnCredentials() []webauthn.Credential { return u.creds }

func (c *Console) userOf(r *http.Request, who string) (user, error) {
	ps, err := c.cfg.Broker.Passkeys(r.Context(), who, "")
	if err != nil {
		return user{}, err
	}
	u := user{principal: who}
	for _, p := range ps {
		if p.State != store.PasskeyRemoved {
			u.creds = append(u.creds, webauthn.Credential{ID: p.CredentialID, PublicKey: p.PublicKey})
		}
	}
	return u, nil
}

// beginPasskey starts a registration: the creation options the script
// passes to navigator.credentials.create. User verification is required,
// the RP ID is the console's, the algorithms the ones format/passkey
// verifies, and the caller's existing passkeys are excluded.
func (c *Console) beginPasskey(w http.ResponseWriter, r *http.Request, v *viewer) {
	var in struct {
		Label string `json:"label"`
	}
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
		c.fail(w, r, http.StatusBadRequest, "the request is not JSON the console sent")
		return
	}
	in.Label = strings.TrimSpace(in.Label)
	u, err := c.userOf(r, v.Principal)
	if err != nil {
		c.brokerError(w, r, v, err)
		return
	}
	var exclude []protocol.CredentialDescriptor
	for _, cr := range u.creds {
		exclude = append(exclude, cr.Descriptor())
	}
	creation, session, err := c.wa.BeginRegistration(u,
		webauthn.WithAuthenticatorSelection(protocol.AuthenticatorSelection{UserVerification: protocol.VerificationRequired, ResidentKey: protocol.ResidentKeyRequirementPreferred}),
		webauthn.WithConveyancePreference(protocol.PreferNoAttestation),
		webauthn.WithCredentialParameters([]protocol.CredentialParameter{
			{Type: protocol.PublicKeyCredentialType, Algorithm: -7}, {Type: protocol.PublicKeyCredentialType, Algorithm: -8}, {Type: protocol.PublicKeyCredentialType, Algorithm: -257}}),
		webauthn.WithExclusions(exclude))
	if err != nil {
		c.log.Error("console: beginning a passkey registration", "principal", v.Principal, "err", err)
		c.fail(w, r, http.StatusInternalServerError, "internal error")
		return
	}
	// The broker's clock decides when the ceremony lapses, not
	// go-webauthn's.
	session.Expires = time.Time{}
	c.mu.Lock()
	c.ceremonies[v.Principal] = ceremony{session: *session, label: in.Label, expires: c.cfg.Broker.Now().Add(ceremonyTTL)}
	c.mu.Unlock()
	writeJSON(w, http.StatusOK, creation)
}

// finishPasskey verifies the browser's attestation response with
// go-webauthn (type webauthn.create, the challenge of this ceremony, the
// console's origin, the RP ID hash, user presence and verification) and
// records the passkey as pending, returning the one-time code that binds it.
func (c *Console) finishPasskey(w http.ResponseWriter, r *http.Request, v *viewer) {
	c.mu.Lock()
	cer, ok := c.ceremonies[v.Principal]
	delete(c.ceremonies, v.Principal)
	c.mu.Unlock()
	if !ok || !c.cfg.Broker.Now().Before(cer.expires) {
		c.fail(w, r, http.StatusBadRequest, "no passkey creation is under way for you (it lapses after 5 minutes): start again")
		return
	}
	parsed, err := protocol.ParseCredentialCreationResponseBody(r.Body)
	if err != nil {
		c.fail(w, r, http.StatusBadRequest, "the passkey response does not parse: "+webauthnMessage(err))
		return
	}
	u, err := c.userOf(r, v.Principal)
	if err != nil {
		c.brokerError(w, r, v, err)
		return
	}
	cred, err := c.wa.CreateCredential(u, cer.session, parsed)
	if err != nil {
		c.fail(w, r, http.StatusBadRequest, "the passkey was not created as required: "+webauthnMessage(err))
		return
	}
	flags := byte(parsed.Response.AttestationObject.AuthData.Flags)
	code, expires, err := c.cfg.Broker.AddPendingPasskey(r.Context(), v.Principal, broker.NewPasskey{ID: cred.ID, PublicKey: cred.PublicKey, RPID: c.cfg.RPID,
		WebOrigin: c.cfg.Origin, Label: cer.label, Flags: flags})
	if err != nil {
		c.brokerError(w, r, v, err)
		return
	}
	k, err := passkey.ParseKey(cred.PublicKey)
	if err != nil {
		c.fail(w, r, http.StatusBadRequest, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"code": code, "credential": passkey.EncodeID(cred.ID), "algorithm": passkey.AlgName(k.Alg),
		"fingerprint": k.Fingerprint(), "expires": expires.UTC().Format(time.RFC3339),
		"command": "bgctl passkey confirm " + code})
}

// parseAssertion reads the PublicKeyCredential (its JSON, as toJSON() or
// the console's script writes it) that navigator.credentials.get returned.
func parseAssertion(raw json.RawMessage) (*passkey.Assertion, error) {
	if len(raw) == 0 {
		return nil, errors.New("a review in the console is signed by your passkey: the assertion is missing")
	}
	p, err := protocol.ParseCredentialRequestResponseBytes(raw)
	if err != nil {
		return nil, fmt.Errorf("the passkey assertion does not parse: %s", webauthnMessage(err))
	}
	a := p.Raw.AssertionResponse
	return &passkey.Assertion{Credential: bytes.Clone(p.RawID), AuthenticatorData: bytes.Clone(a.AuthenticatorData), ClientDataJSON: bytes.Clone(a.ClientDataJSON),
		Signature: bytes.Clone(a.Signature)}, nil
}

// webauthnMessage is go-webauthn's account of what failed.
func webauthnMessage(err error) string {
	var pe *protocol.Error
	if errors.As(err, &pe) {
		return strings.TrimSpace(pe.Details + " " + pe.DevInfo)
	}
	return err.Error()
}
