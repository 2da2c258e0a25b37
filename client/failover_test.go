package client

import (
	"testing"

	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
)

func TestRetryable(t *testing.T) {
	for method, want := range map[string]bool{
		"/breakglass.v1.RequestService/GetRequest":               true,
		"/breakglass.v1.RequestService/ListRequests":             true,
		"/breakglass.v1.RequestService/WatchRequest":             true,
		"/breakglass.v1.TokenService/CheckToken":                 true,
		"/breakglass.v1.RequestService/CreateRequest":            true,
		"/breakglass.v1.ReviewService/ReviewRequest":             true,
		"/breakglass.v1.TokenService/IssueToken":                 true,
		"/breakglass.v1.TokenService/RevokeGrant":                false,
		"/breakglass.v1.RequestService/CancelRequest":            false,
		"/breakglass.v1.GovernanceService/ClosePostReview":       false,
		"/breakglass.v1.GovernanceService/AcknowledgeDeadLetter": false,
		"/breakglass.v1.AccountService/AttestAccount":            false,
	} {
		if got := retryable(method); got != want {
			t.Errorf("retryable(%s) = %v", method, got)
		}
	}
}

// The SDK gives a create its own key on a copy: the caller's message is
// unchanged, so reusing it makes a new request rather than a replay.
func TestWithKeyCopies(t *testing.T) {
	in := &bgv1.CreateRequestRequest{Account: "prod-db", Justification: "x"}
	a := withKey(in).(*bgv1.CreateRequestRequest)
	b := withKey(in).(*bgv1.CreateRequestRequest)
	if in.GetIdempotencyKey() != "" || a.GetIdempotencyKey() == "" || a.GetIdempotencyKey() == b.GetIdempotencyKey() {
		t.Fatalf("keys: caller %q, first %q, second %q", in.GetIdempotencyKey(), a.GetIdempotencyKey(), b.GetIdempotencyKey())
	}
	keyed := &bgv1.ReviewRequestRequest{IdempotencyKey: "mine"}
	if withKey(keyed).(*bgv1.ReviewRequestRequest).GetIdempotencyKey() != "mine" {
		t.Fatal("the caller's own key was replaced")
	}
	if got := splitAddrs(" a:1, ,b:2,"); len(got) != 2 || got[0] != "a:1" || got[1] != "b:2" {
		t.Fatalf("splitAddrs = %q", got)
	}
}
