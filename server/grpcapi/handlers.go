package grpcapi

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/keyid"
	"github.com/bgbroker/breakglass/hsm"
	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
	"github.com/bgbroker/breakglass/server/broker"
	"github.com/bgbroker/breakglass/server/identity"
	"github.com/bgbroker/breakglass/server/request"
)

var stateToProto = map[request.State]bgv1.RequestState{
	request.Pending:   bgv1.RequestState_REQUEST_STATE_PENDING,
	request.Approved:  bgv1.RequestState_REQUEST_STATE_APPROVED,
	request.Denied:    bgv1.RequestState_REQUEST_STATE_DENIED,
	request.Cancelled: bgv1.RequestState_REQUEST_STATE_CANCELLED,
	request.Expired:   bgv1.RequestState_REQUEST_STATE_EXPIRED,
	request.Revoked:   bgv1.RequestState_REQUEST_STATE_REVOKED,
}

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func ref(r audit.Record) *bgv1.AuditRef {
	return &bgv1.AuditRef{Index: r.Index, LeafHash: r.LeafHash}
}

func toProto(r *request.Request) *bgv1.Request {
	out := &bgv1.Request{
		Id: r.ID, Account: r.Account, Requester: r.Requester, Justification: r.Justification, Ticket: r.Ticket,
		RequestedTtl: durationpb.New(r.TTL), Drill: r.Drill, State: stateToProto[r.State],
		CreateTime: ts(r.CreatedAt), ApprovalDeadline: ts(r.ApprovalDeadline), ApproveTime: ts(r.ApprovedAt),
		GrantExpireTime: ts(r.GrantExpiresAt), ActivationDeadline: ts(r.ActivationDeadline), FinalTime: ts(r.FinalAt),
		FinalReason: r.FinalReason, FinalBy: r.FinalBy, Approvers: r.Approvers, TokensIssued: int32(r.Issued),
		MaxIssuances: int32(r.MaxIssuances), Quorum: r.Rule.String(), PolicyHash: r.PolicyHash,
		CreatedEntry: &bgv1.AuditRef{Index: r.CreatedEntry, LeafHash: r.CreatedLeaf},
		Solo:         r.Solo, SoloAcknowledgeTime: ts(r.SoloAckedAt), GrantAcknowledgeTime: ts(r.GrantAckedAt),
		ContentDigest: r.Content().Digest(), ContentVersion: uint32(r.ContentVersion.Norm()),
	}
	for _, rv := range r.Reviews {
		d := bgv1.ReviewDecision_REVIEW_DECISION_APPROVE
		if rv.Decision == request.Deny {
			d = bgv1.ReviewDecision_REVIEW_DECISION_DENY
		}
		pr := &bgv1.Review{Reviewer: rv.Reviewer, Decision: d, Comment: rv.Comment, CreateTime: ts(rv.At),
			Entry: &bgv1.AuditRef{Index: rv.EntryIndex, LeafHash: rv.LeafHash}, Signer: bgv1.ReviewSigner_REVIEW_SIGNER_CERTIFICATE}
		switch {
		case rv.Passkey != nil:
			pr.Signer, pr.PasskeyCredentialId = bgv1.ReviewSigner_REVIEW_SIGNER_PASSKEY, rv.Passkey.Credential
		case rv.KeyStore == audit.KeyStorePKCS11:
			pr.KeyStore = bgv1.KeyStore_KEY_STORE_PKCS11
		}
		out.Reviews = append(out.Reviews, pr)
	}
	return out
}

// CreateRequest implements RequestService.
func (s *Server) CreateRequest(ctx context.Context, in *bgv1.CreateRequestRequest) (*bgv1.CreateRequestResponse, error) {
	var ttl time.Duration
	if in.RequestedTtl != nil {
		ttl = in.RequestedTtl.AsDuration()
	}
	p, ok := identity.PeerFrom(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "no verified client certificate")
	}
	ci := broker.CreateInput{Account: in.Account, Justification: in.Justification, Ticket: in.Ticket, TTL: ttl, Drill: in.Drill, Solo: in.Solo,
		IdempotencyKey: in.IdempotencyKey, Cert: p.Leaf}
	if st := in.GetRequestStatement(); st != nil {
		if st.GetSigner() == bgv1.ReviewSigner_REVIEW_SIGNER_PASSKEY {
			return nil, status.Error(codes.InvalidArgument, "request statements are signed with the key of your client certificate; passkey-signed requests are not accepted yet")
		}
		ci.Statement, ci.Signature = st.GetStatement(), st.GetSignature()
		if st.GetKeyStore() == bgv1.KeyStore_KEY_STORE_PKCS11 {
			ci.KeyStore = audit.KeyStorePKCS11
		}
	}
	res, err := s.b.CreateRequest(ctx, caller(ctx), ci)
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	return &bgv1.CreateRequestResponse{Request: toProto(res.Request), Entry: ref(res.Entry), Replayed: res.Replayed}, nil
}

// GetRequest implements RequestService.
func (s *Server) GetRequest(ctx context.Context, in *bgv1.GetRequestRequest) (*bgv1.GetRequestResponse, error) {
	r, err := s.b.GetRequest(ctx, caller(ctx), in.Id)
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	return &bgv1.GetRequestResponse{Request: toProto(r)}, nil
}

// ListRequests implements RequestService.
func (s *Server) ListRequests(ctx context.Context, in *bgv1.ListRequestsRequest) (*bgv1.ListRequestsResponse, error) {
	var st request.State
	for k, v := range stateToProto {
		if v == in.State {
			st = k
		}
	}
	rs, next, err := s.b.ListRequests(ctx, caller(ctx), broker.ListInput{State: st, Account: in.Account, Mine: in.Mine,
		AwaitingMyReview: in.AwaitingMyReview, PageSize: int(in.PageSize), PageToken: in.PageToken})
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	out := &bgv1.ListRequestsResponse{NextPageToken: next}
	for _, r := range rs {
		out.Requests = append(out.Requests, toProto(r))
	}
	return out, nil
}

// WatchRequest implements RequestService.
func (s *Server) WatchRequest(in *bgv1.WatchRequestRequest, stream bgv1.RequestService_WatchRequestServer) error {
	ctx := stream.Context()
	err := s.b.Watch(ctx, caller(ctx), in.Id, func(r *request.Request) error {
		return stream.Send(&bgv1.WatchRequestResponse{Request: toProto(r)})
	})
	if err != nil && ctx.Err() != nil {
		return nil //nolint:nilerr // the client went away: nobody to tell
	}
	return s.toStatus(ctx, err)
}

// CancelRequest implements RequestService.
func (s *Server) CancelRequest(ctx context.Context, in *bgv1.CancelRequestRequest) (*bgv1.CancelRequestResponse, error) {
	res, err := s.b.CancelRequest(ctx, caller(ctx), in.Id, in.Reason)
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	return &bgv1.CancelRequestResponse{Request: toProto(res.Request), Entry: ref(res.Entry)}, nil
}

// ReviewRequest implements ReviewService.
func (s *Server) ReviewRequest(ctx context.Context, in *bgv1.ReviewRequestRequest) (*bgv1.ReviewRequestResponse, error) {
	d := request.Approve
	if in.Decision == bgv1.ReviewDecision_REVIEW_DECISION_DENY {
		d = request.Deny
	}
	p, ok := identity.PeerFrom(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "no verified client certificate")
	}
	keyStore := ""
	if in.KeyStore == bgv1.KeyStore_KEY_STORE_PKCS11 {
		keyStore = audit.KeyStorePKCS11
	}
	res, err := s.b.Review(ctx, caller(ctx), broker.ReviewInput{ID: in.Id, Decision: d, Comment: in.Comment,
		Statement: in.Statement, Signature: in.Signature, Cert: p.Leaf, KeyStore: keyStore, IdempotencyKey: in.IdempotencyKey})
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	return &bgv1.ReviewRequestResponse{Request: toProto(res.Request), Entry: ref(res.Entry), Replayed: res.Replayed}, nil
}

// PrepareReview implements ReviewService.
func (s *Server) PrepareReview(ctx context.Context, in *bgv1.PrepareReviewRequest) (*bgv1.PrepareReviewResponse, error) {
	d := request.Approve
	if in.Decision == bgv1.ReviewDecision_REVIEW_DECISION_DENY {
		d = request.Deny
	}
	p, err := s.b.PrepareReview(ctx, caller(ctx), in.Id, d, in.Comment)
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	return &bgv1.PrepareReviewResponse{Statement: p.Statement, Content: p.Content.Bytes(), ContentDigest: p.Content.Digest(),
		ContentVersion: uint32(p.Content.Version.Norm()), Origin: p.Origin}, nil
}

// IssueToken implements TokenService.
func (s *Server) IssueToken(ctx context.Context, in *bgv1.IssueTokenRequest) (*bgv1.IssueTokenResponse, error) {
	iss, err := s.b.IssueToken(ctx, caller(ctx), in.RequestId, in.Audience)
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	return &bgv1.IssueTokenResponse{Token: iss.Token, Jti: iss.JTI, Kid: iss.KID, ExpireTime: ts(iss.ExpiresAt),
		IssuancesLeft: int32(iss.IssuancesLeft), TokenSha256: iss.SHA256, Entry: ref(iss.Entry)}, nil
}

// RevokeGrant implements TokenService.
func (s *Server) RevokeGrant(ctx context.Context, in *bgv1.RevokeGrantRequest) (*bgv1.RevokeGrantResponse, error) {
	res, err := s.b.RevokeGrant(ctx, caller(ctx), in.RequestId, in.Reason)
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	return &bgv1.RevokeGrantResponse{Request: toProto(res.Request), Entry: ref(res.Entry)}, nil
}

// CheckToken implements TokenService.
func (s *Server) CheckToken(ctx context.Context, in *bgv1.CheckTokenRequest) (*bgv1.CheckTokenResponse, error) {
	c, err := s.b.CheckToken(ctx, caller(ctx), in.Jti)
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	st := map[broker.TokenStatus]bgv1.TokenStatus{
		broker.TokenValid: bgv1.TokenStatus_TOKEN_STATUS_VALID, broker.TokenExpired: bgv1.TokenStatus_TOKEN_STATUS_EXPIRED,
		broker.TokenRevoked: bgv1.TokenStatus_TOKEN_STATUS_REVOKED,
	}[c.Status]
	return &bgv1.CheckTokenResponse{Status: st, RequestId: c.Record.RequestID, Account: c.Record.Account, Subject: c.Record.Subject,
		Audience: c.Record.Audience, IssueTime: ts(c.Record.IssuedAt), ExpireTime: ts(c.Record.ExpiresAt), RevokeTime: ts(c.RevokedAt),
		Drill: c.Record.Drill}, nil
}

// GetSigningKeys implements TokenService.
func (s *Server) GetSigningKeys(ctx context.Context, in *bgv1.GetSigningKeysRequest) (*bgv1.GetSigningKeysResponse, error) {
	var (
		jwks []byte
		err  error
	)
	if in.Account != "" {
		jwks, err = s.b.AccountJWKS(in.Account)
	} else {
		jwks, err = s.b.JWKS()
	}
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	out := &bgv1.GetSigningKeysResponse{Jwks: string(jwks), Issuer: s.b.Minter(in.Account).Issuer()}
	for _, pub := range s.b.TokenKeys(in.Account) {
		pemBytes, err := keyid.PublicPEM(pub)
		if err != nil {
			return nil, s.toStatus(ctx, err)
		}
		kid, _ := keyid.Thumbprint(pub)
		out.Keys = append(out.Keys, &bgv1.PublicKey{Purpose: bgv1.KeyPurpose_KEY_PURPOSE_TOKEN, Algorithm: "ES256", Kid: kid,
			FingerprintSha256: hsm.Fingerprint(pub), Pem: string(pemBytes)})
	}
	return out, nil
}

// ListAccounts implements AccountService.
func (s *Server) ListAccounts(ctx context.Context, _ *bgv1.ListAccountsRequest) (*bgv1.ListAccountsResponse, error) {
	out := &bgv1.ListAccountsResponse{PolicyHash: s.b.Policy().Hash()}
	statuses, err := s.b.AccountStatuses(ctx)
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	for _, v := range s.b.Accounts(caller(ctx)) {
		a := v.Account
		pa := &bgv1.Account{Name: a.Name, Description: a.Description, OwnerGroup: a.Owner, RequesterGroups: a.Requesters,
			Audiences: a.Audiences, MaxTtl: durationpb.New(a.MaxTTL.D()), ApprovalWindow: durationpb.New(a.ApprovalWindow.D()),
			ActivationWindow: durationpb.New(a.ActivationWindow.D()), MaxIssuances: int32(a.MaxIssuances),
			DenyThreshold: int32(a.DenyThreshold), RequireTicket: a.RequireTicket, QuorumDescription: a.Quorum.String(),
			CanRequest: v.CanRequest, CanReview: v.CanReview, IsOwner: v.IsOwner,
			DrillAudience: a.DrillAudience, DrillEvery: optDur(a.DrillEvery.D()), ReviewEvery: optDur(a.ReviewEvery.D()),
			RequireAlertAck: a.RequireAlertAck, ReviewerGroup: a.Reviewers}
		if a.Solo != nil {
			pa.SoloAllowed, pa.SoloDelay, pa.SoloMaxTtl = true, durationpb.New(a.Solo.Delay.D()), durationpb.New(a.Solo.MaxTTL.D())
		}
		if st, ok := statuses[a.Name]; ok {
			pa.LastDrillTime, pa.DrillOverdue = ts(st.LastDrill), st.DrillOverdue
			pa.LastAttestationTime, pa.AttestationOverdue = ts(st.LastAttestation), st.AttestationOverdue
			pa.LastUseTime = ts(st.LastUse)
		}
		for _, alt := range a.Quorum {
			qa := &bgv1.QuorumAlternative{}
			for _, req := range alt {
				qa.Requirements = append(qa.Requirements, &bgv1.QuorumRequirement{Group: req.Group, Approvals: int32(req.Approvals)})
			}
			pa.Quorum = append(pa.Quorum, qa)
		}
		out.Accounts = append(out.Accounts, pa)
	}
	return out, nil
}

func optDur(d time.Duration) *durationpb.Duration {
	if d == 0 {
		return nil
	}
	return durationpb.New(d)
}

// signedFrom binds a signed statement to the connection's certificate.
func (s *Server) signedFrom(ctx context.Context, stmt, sig []byte) (broker.Signed, error) {
	p, ok := identity.PeerFrom(ctx)
	if !ok {
		return broker.Signed{}, status.Error(codes.Unauthenticated, "no verified client certificate")
	}
	return broker.Signed{Statement: stmt, Signature: sig, Cert: p.Leaf}, nil
}

// AttestAccount implements AccountService.
func (s *Server) AttestAccount(ctx context.Context, in *bgv1.AttestAccountRequest) (*bgv1.AttestAccountResponse, error) {
	signed, err := s.signedFrom(ctx, in.Statement, in.Signature)
	if err != nil {
		return nil, err
	}
	a, rec, err := s.b.Attest(ctx, caller(ctx), in.Account, in.Notes, signed)
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	return &bgv1.AttestAccountResponse{AttestationId: a.ID, Entry: ref(rec)}, nil
}
