package client

import (
	"context"
	"errors"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/bgbroker/breakglass/format/statement"
	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
)

// RequestStatement builds and signs, with the client certificate's key,
// the request statement of in (docs/signing.md): this request, in this
// log, under a fresh request id, now. The broker refuses a request
// without one; CreateRequest adds it when in has none.
func (c *Client) RequestStatement(ctx context.Context, in *bgv1.CreateRequestRequest) (*bgv1.SignedStatement, error) {
	if c.key == nil {
		return nil, errors.New("no client key to sign the request statement with; dial with a certificate and key")
	}
	origin, err := c.Origin(ctx)
	if err != nil {
		return nil, err
	}
	id, err := uuid.NewV7()
	if err != nil {
		return nil, err
	}
	st := statement.Request{Origin: origin, ID: id.String(), Account: in.GetAccount(), TTLSeconds: int64(in.GetRequestedTtl().AsDuration() / time.Second),
		Drill: in.GetDrill(), Solo: in.GetSolo(), Ticket: in.GetTicket(), Justification: in.GetJustification(), Time: c.now().UTC().Truncate(time.Second)}
	if in.GetRequestedTtl() == nil {
		st.TTLSeconds = 0
	}
	b := st.Marshal()
	sig, err := signWith(c.key, b)
	if err != nil {
		return nil, err
	}
	return &bgv1.SignedStatement{Statement: b, Signature: sig, Signer: bgv1.ReviewSigner_REVIEW_SIGNER_CERTIFICATE, KeyStore: c.keyStore}, nil
}

// CreateRequest asks for access. A request the caller did not sign (no
// request_statement) is signed here, with the client certificate's key,
// before it is sent; in itself is left as it was.
func (c *Client) CreateRequest(ctx context.Context, in *bgv1.CreateRequestRequest, opts ...grpc.CallOption) (*bgv1.CreateRequestResponse, error) {
	if in.GetRequestStatement() == nil {
		st, err := c.RequestStatement(ctx, in)
		if err != nil {
			return nil, err
		}
		in = proto.CloneOf(in)
		in.RequestStatement = st
	}
	return c.RequestServiceClient.CreateRequest(ctx, in, opts...)
}
