package grpcapi

import (
	"context"

	"github.com/bgbroker/breakglass/format/passkey"
	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
	"github.com/bgbroker/breakglass/server/store"
)

// passkeyServer implements PasskeyService.
type passkeyServer struct {
	bgv1.UnimplementedPasskeyServiceServer
	s *Server
}

var passkeyStates = map[string]bgv1.PasskeyState{
	store.PasskeyPending: bgv1.PasskeyState_PASSKEY_STATE_PENDING,
	store.PasskeyBound:   bgv1.PasskeyState_PASSKEY_STATE_BOUND,
	store.PasskeyRemoved: bgv1.PasskeyState_PASSKEY_STATE_REMOVED,
}

// PasskeyProto is a passkey as the API shows it.
func PasskeyProto(p store.Passkey) *bgv1.Passkey {
	out := &bgv1.Passkey{CredentialId: p.CredentialID, Principal: p.Principal, PublicKey: p.PublicKey, RpId: p.RPID, WebOrigin: p.WebOrigin,
		Label: p.Label, State: passkeyStates[p.State], CreateTime: ts(p.CreatedAt), ExpireTime: ts(p.ExpiresAt), BindTime: ts(p.BoundAt),
		RemoveTime: ts(p.RemovedAt)}
	if k, err := passkey.ParseKey(p.PublicKey); err == nil {
		out.Algorithm, out.Fingerprint = k.Alg, k.Fingerprint()
	}
	if !p.BoundAt.IsZero() {
		out.BoundEntry = &bgv1.AuditRef{Index: p.BoundEntry}
	}
	return out
}

func (x *passkeyServer) GetPendingPasskey(ctx context.Context, in *bgv1.GetPendingPasskeyRequest) (*bgv1.GetPendingPasskeyResponse, error) {
	p, err := x.s.b.PendingPasskey(ctx, caller(ctx), in.Code)
	if err != nil {
		return nil, x.s.toStatus(ctx, err)
	}
	return &bgv1.GetPendingPasskeyResponse{Passkey: PasskeyProto(*p), Origin: x.s.b.Origin()}, nil
}

func (x *passkeyServer) ConfirmPasskey(ctx context.Context, in *bgv1.ConfirmPasskeyRequest) (*bgv1.ConfirmPasskeyResponse, error) {
	signed, err := x.s.signedFrom(ctx, in.Statement, in.Signature)
	if err != nil {
		return nil, err
	}
	p, rec, err := x.s.b.ConfirmPasskey(ctx, caller(ctx), in.Code, signed)
	if err != nil {
		return nil, x.s.toStatus(ctx, err)
	}
	return &bgv1.ConfirmPasskeyResponse{Passkey: PasskeyProto(*p), Entry: ref(rec)}, nil
}

func (x *passkeyServer) ListPasskeys(ctx context.Context, in *bgv1.ListPasskeysRequest) (*bgv1.ListPasskeysResponse, error) {
	ps, err := x.s.b.Passkeys(ctx, caller(ctx), in.Principal)
	if err != nil {
		return nil, x.s.toStatus(ctx, err)
	}
	out := &bgv1.ListPasskeysResponse{}
	for _, p := range ps {
		out.Passkeys = append(out.Passkeys, PasskeyProto(p))
	}
	return out, nil
}

func (x *passkeyServer) RemovePasskey(ctx context.Context, in *bgv1.RemovePasskeyRequest) (*bgv1.RemovePasskeyResponse, error) {
	p, rec, err := x.s.b.RemovePasskey(ctx, caller(ctx), in.CredentialId, in.Reason)
	if err != nil {
		return nil, x.s.toStatus(ctx, err)
	}
	out := &bgv1.RemovePasskeyResponse{Passkey: PasskeyProto(*p)}
	if rec.LeafHash != nil {
		out.Entry = ref(rec)
	}
	return out, nil
}
