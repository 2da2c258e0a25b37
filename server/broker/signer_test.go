package broker_test

import (
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/bgbroker/breakglass/format/statement"
	"github.com/bgbroker/breakglass/server/broker"
	"github.com/bgbroker/breakglass/server/devmode"
	"github.com/bgbroker/breakglass/server/event"
	"github.com/bgbroker/breakglass/server/request"
)

// shortCert replaces principal's client certificate with one that expires
// in d by the broker's clock.
func (h *harness) shortCert(principal string, d time.Duration) {
	h.t.Helper()
	now := h.clock.Now()
	c, k, err := h.ca.Issue(devmode.LeafOptions{CommonName: principal, URIs: []string{"spiffe://test/user/" + principal},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(d)})
	if err != nil {
		h.t.Fatal(err)
	}
	h.certs[principal] = principalKey{c, k}
}

// A signed statement whose certificate has expired or is revoked is
// refused before anything is written: once in the log, the offline
// verifier would reject it, and everything after it, for ever. Reviews,
// post-use review closings and attestations all carry one.
func TestSignedStatementsNeedAValidCertificate(t *testing.T) {
	type signedCall func(h *harness) error
	review := func(h *harness, r *request.Request) signedCall {
		return func(h *harness) error { _, err := h.review("bob", r.ID, request.Approve); return err }
	}
	cases := []struct {
		name string
		// setup returns the call bob makes with his certificate.
		setup func(h *harness) signedCall
	}{
		{"approval", func(h *harness) signedCall { return review(h, h.create("alice", "prod-db")) }},
		{"denial", func(h *harness) signedCall {
			r := h.create("alice", "prod-db")
			return func(h *harness) error { _, err := h.review("bob", r.ID, request.Deny); return err }
		}},
		{"post-use review close", func(h *harness) signedCall {
			g := h.approvedOn("alice", "prod-db")
			h.deliver(g.ID, event.GrantApproved, "soc")
			if _, err := h.b.IssueToken(h.ctx, "alice", g.ID, "db.prod.example"); err != nil {
				h.t.Fatal(err)
			}
			prs, err := h.b.PostReviews(h.ctx, "rita", true)
			if err != nil || len(prs) != 1 {
				h.t.Fatalf("reviews: %v %d", err, len(prs))
			}
			return func(h *harness) error {
				_, _, err := h.b.ClosePostReview(h.ctx, "rita", prs[0].ID, "fine", h.signed("rita", statement.TypeReviewClose, g.ID, g.Content().Digest(), "fine"))
				return err
			}
		}},
		{"attestation", func(h *harness) signedCall {
			return func(h *harness) error {
				_, _, err := h.b.Attest(h.ctx, "olivia", "prod-db", "ok", h.signed("olivia", statement.TypeAttest, uuid.NewString(),
					statement.AccountDigest("prod-db", h.b.Policy().Hash()), "ok"))
				return err
			}
		}},
	}
	signer := map[string]string{"approval": "bob", "denial": "bob", "post-use review close": "rita", "attestation": "olivia"}
	for _, tc := range cases {
		for _, lapse := range []string{"expired", "revoked"} {
			t.Run(tc.name+"/"+lapse, func(t *testing.T) {
				h := newGovHarness(t)
				who := signer[tc.name]
				call := tc.setup(h)
				switch lapse {
				case "expired":
					h.shortCert(who, 5*time.Minute)
					h.clock.Advance(6 * time.Minute)
				case "revoked":
					h.revoke(who)
				}
				before := h.snap()
				err := call(h)
				wantKind(t, err, broker.KindUnauthenticated, "nothing was recorded")
				if h.snap() != before {
					t.Fatal("the refused statement changed the log or a request")
				}
				h.verifyChain()
				// A fresh certificate signs again, and is recorded.
				delete(h.certs, who)
				if lapse == "revoked" {
					h.revoke()
				}
				if err := call(h); err != nil {
					t.Fatalf("with a fresh certificate: %v", err)
				}
			})
		}
	}
}
