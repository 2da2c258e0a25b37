package grpcapi

import (
	"context"

	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
)

type adminServer struct {
	bgv1.UnimplementedAdminServiceServer
	s *Server
}

func (a *adminServer) ReloadPolicy(ctx context.Context, _ *bgv1.ReloadPolicyRequest) (*bgv1.ReloadPolicyResponse, error) {
	// Admins only, before anything is read: the problems of a bad policy
	// are for them.
	if err := a.s.b.RequireAdmin(caller(ctx)); err != nil {
		return nil, a.s.toStatus(ctx, err)
	}
	if a.s.reload == nil {
		return nil, a.s.toStatus(ctx, errNoReload)
	}
	res, err := a.s.reload(ctx, caller(ctx))
	if err != nil {
		return nil, a.s.toStatus(ctx, err)
	}
	out := &bgv1.ReloadPolicyResponse{PolicyHash: res.Hash, PreviousHash: res.Previous, Changed: res.Changed, Changes: res.Changes}
	if res.Changed {
		out.Entry = ref(res.Entry)
	}
	return out, nil
}
