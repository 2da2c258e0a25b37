package client

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/bgbroker/breakglass/format/passkey"
	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
)

// PendingPasskey is what a one-time code from the console stands for,
// and the binding statement the caller would sign for it now.
type PendingPasskey struct {
	Passkey *bgv1.Passkey
	Binding passkey.Binding
}

// PendingPasskey looks up the passkey a code stands for and builds the
// binding statement from it (docs/signing.md, "Passkey bindings"). It
// refuses a passkey whose key, RP ID or origin the statement could not
// carry, so that what is shown is what is signed.
func (c *Client) PendingPasskey(ctx context.Context, code string) (*PendingPasskey, error) {
	got, err := c.GetPendingPasskey(ctx, &bgv1.GetPendingPasskeyRequest{Code: code})
	if err != nil {
		return nil, err
	}
	p := got.GetPasskey()
	origin, err := c.Origin(ctx)
	if err != nil {
		return nil, err
	}
	if got.GetOrigin() != origin {
		return nil, fmt.Errorf("the broker names log %q for the binding but its log is %q; nothing was signed", got.GetOrigin(), origin)
	}
	b := passkey.Binding{Origin: origin, Principal: p.GetPrincipal(), Credential: p.GetCredentialId(), Key: p.GetPublicKey(), RPID: p.GetRpId(),
		WebOrigin: p.GetWebOrigin(), Time: c.now().UTC().Truncate(time.Second)}
	if _, err := passkey.ParseBinding(b.Marshal()); err != nil {
		return nil, fmt.Errorf("the pending passkey cannot be bound: %w; nothing was signed", err)
	}
	k, err := passkey.ParseKey(b.Key)
	if err != nil {
		return nil, err
	}
	if p.GetFingerprint() != "" && p.GetFingerprint() != k.Fingerprint() {
		return nil, errors.New("the broker's fingerprint of the passkey is not its key's; nothing was signed")
	}
	p.Fingerprint, p.Algorithm = k.Fingerprint(), k.Alg
	return &PendingPasskey{Passkey: p, Binding: b}, nil
}

// ConfirmPasskey signs the binding statement of a pending passkey (as
// PendingPasskey built it, after the person checked it) with the client
// certificate's key and sends it.
func (c *Client) ConfirmPasskey(ctx context.Context, code string, p *PendingPasskey) (*bgv1.ConfirmPasskeyResponse, error) {
	if c.key == nil {
		return nil, errors.New("no client key to sign the binding with; dial with a certificate and key")
	}
	text := p.Binding.Marshal()
	sig, err := signWith(c.key, text)
	if err != nil {
		return nil, err
	}
	return c.PasskeyServiceClient.ConfirmPasskey(ctx, &bgv1.ConfirmPasskeyRequest{Code: code, Statement: text, Signature: sig})
}
