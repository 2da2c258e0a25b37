package test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bgbroker/breakglass/client"
	"github.com/bgbroker/breakglass/client/auditverify"
	"github.com/bgbroker/breakglass/hsm"
	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
	"github.com/bgbroker/breakglass/server/config"
	"github.com/bgbroker/breakglass/server/daemon"
	"github.com/bgbroker/breakglass/server/devmode"
)

var soloPolicy = devmode.Policy("", "require_alert_ack: true", "ack_sinks: [events-file]", "solo: {delay: 10m, max_ttl: 30m}",
	"token_key: prod-db-key", "rotate_after_use: true")

type inproc struct {
	t   *testing.T
	dir string
	d   *daemon.Daemon
	clk *fakeClock
	c   map[string]*client.Client
}

// startInProcess runs a dev broker in this process with a settable clock,
// its policy replaced by policyYAML (the demo policy when empty), after
// preparing the HSM with prepare.
func startInProcess(t *testing.T, policyYAML string, prepare func(cfg *config.Config)) *inproc {
	t.Helper()
	ip := &inproc{t: t, dir: t.TempDir(), clk: &fakeClock{t: time.Now()}, c: map[string]*client.Client{}}
	ctx := context.Background()
	path, _, err := devmode.Setup(ctx, devmode.Options{Dir: ip.dir, GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	if policyYAML != "" {
		if err := os.WriteFile(filepath.Join(ip.dir, "policy.yaml"), []byte(policyYAML), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if prepare != nil {
		prepare(cfg)
	}
	ip.d, err = daemon.Start(ctx, daemon.Options{Config: cfg, Now: ip.clk.Now, AcceptUnsignedGenesis: true, SignPolicy: devmode.PolicySigner(ip.dir)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ip.d.Close)
	return ip
}

func (ip *inproc) client(name string) *client.Client {
	if c, ok := ip.c[name]; ok {
		return c
	}
	c, err := client.Dial(client.Options{Addr: ip.d.Ready.GRPC, CAFile: ip.dir + "/ca/ca.crt", CertFile: ip.dir + "/identities/" + name + ".crt",
		KeyFile: ip.dir + "/identities/" + name + ".key", Now: ip.clk.Now})
	if err != nil {
		ip.t.Fatal(err)
	}
	ip.t.Cleanup(func() { _ = c.Close() })
	ip.c[name] = c
	return c
}

// waitFor polls until cond holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (ip *inproc) request(id string) *bgv1.Request {
	r, err := ip.client("dave").GetRequest(context.Background(), &bgv1.GetRequestRequest{Id: id})
	if err != nil {
		ip.t.Fatal(err)
	}
	return r.GetRequest()
}

// verifyLog exports the log through the API and verifies it offline.
func (ip *inproc) verifyLog() *auditverify.Summary {
	ip.t.Helper()
	ctx := context.Background()
	c := ip.client("dave")
	cp, err := c.GetCheckpoint(ctx, &bgv1.GetCheckpointRequest{})
	if err != nil {
		ip.t.Fatal(err)
	}
	var buf bytes.Buffer
	for next := uint64(0); next < cp.GetSize(); {
		resp, err := c.ListEntries(ctx, &bgv1.ListEntriesRequest{Start: next, End: cp.GetSize(), PageSize: 1000})
		if err != nil {
			ip.t.Fatal(err)
		}
		for _, e := range resp.GetEntries() {
			b, _ := json.Marshal(auditverify.ExportLine(e.GetIndex(), e.GetEntry(), e.GetSignature(), e.GetKeyId()))
			buf.Write(append(b, '\n'))
		}
		next = resp.GetNextStart()
	}
	// The first keys, as pinned at the key ceremony.
	first := map[string]string{}
	for _, rec := range ip.d.Ring().Records() {
		if _, ok := first[rec.Purpose]; !ok {
			first[rec.Purpose] = rec.PublicPEM
		}
	}
	blk, _ := pem.Decode([]byte(first["audit"]))
	pub, _ := x509.ParsePKIXPublicKey(blk.Bytes)
	cpPub, _ := x509.ParsePKIXPublicKey(mustPEM(first["checkpoint"]))
	vkey, _ := hsm.NoteVerifierKey(ip.d.Checkpoints.Origin(), cpPub)
	caPEM, _ := os.ReadFile(ip.dir + "/ca/ca.crt")
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	sum, err := auditverify.Verify(auditverify.Options{Log: &buf, Checkpoint: cp.GetCheckpoint(), CheckpointKey: vkey,
		AuditKeys: []*ecdsa.PublicKey{pub.(*ecdsa.PublicKey)}, ClientCAs: pool})
	if err != nil {
		ip.t.Fatalf("the log does not verify: %v", err)
	}
	return sum
}

func mustPEM(s string) []byte {
	blk, _ := pem.Decode([]byte(s))
	return blk.Bytes
}

// Time-locked solo access: one request vetoed, one that ripens after its
// alert is acknowledged; with per-account keys rotated after use and the
// retired key destroyed once its tokens expired. The log verifies.
func TestSoloAccessAndKeyLifecycle(t *testing.T) {
	var accountKeyID []byte
	ip := startInProcess(t, soloPolicy, func(cfg *config.Config) {
		m, err := hsm.Open(context.Background(), daemon.HSMConfig(cfg.HSM), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		g, err := m.GenerateKey(context.Background(), hsm.GenerateRequest{Purpose: hsm.PurposeToken, Label: "prod-db-key"})
		if err != nil {
			t.Fatal(err)
		}
		accountKeyID = g.Key.ID
	})
	ctx := context.Background()
	alice := ip.client("alice")

	// Vetoed: erin denies inside the window.
	v, err := alice.CreateRequest(ctx, &bgv1.CreateRequestRequest{Account: "prod-db", Justification: "nobody answers the phone", Solo: true})
	if err != nil {
		t.Fatal(err)
	}
	vid := v.GetRequest().GetId()
	waitFor(t, "the solo alert to be acknowledged", func() bool { return ip.request(vid).GetSoloAcknowledgeTime() != nil })
	if _, err := ip.client("erin").ReviewByID(ctx, vid, bgv1.ReviewDecision_REVIEW_DECISION_DENY, "I am here: no"); err != nil {
		t.Fatal(err)
	}
	ip.clk.Advance(11 * time.Minute)
	if n, _ := ip.d.Broker.RipenSolo(ctx); n != 0 || ip.request(vid).GetState() != bgv1.RequestState_REQUEST_STATE_DENIED {
		t.Fatalf("vetoed solo request: %d ripened, state %s", n, ip.request(vid).GetState())
	}

	// Ripens: nobody objects within 10 minutes of the acknowledgement.
	s, err := alice.CreateRequest(ctx, &bgv1.CreateRequestRequest{Account: "prod-db", Justification: "nobody answers the phone", Solo: true})
	if err != nil {
		t.Fatal(err)
	}
	sid := s.GetRequest().GetId()
	waitFor(t, "the solo alert to be acknowledged", func() bool { return ip.request(sid).GetSoloAcknowledgeTime() != nil })
	ip.clk.Advance(9 * time.Minute)
	if n, _ := ip.d.Broker.RipenSolo(ctx); n != 0 {
		t.Fatal("ripened inside the veto window")
	}
	ip.clk.Advance(2 * time.Minute)
	if n, err := ip.d.Broker.RipenSolo(ctx); n != 1 || err != nil {
		t.Fatalf("ripen: %d %v", n, err)
	}
	waitFor(t, "the grant alert to be acknowledged", func() bool { return ip.request(sid).GetGrantAcknowledgeTime() != nil })
	tok, err := alice.IssueToken(ctx, &bgv1.IssueTokenRequest{RequestId: sid, Audience: "db.prod.example"})
	if err != nil {
		t.Fatal(err)
	}
	// The account's own key signs its tokens, and only its JWKS holds it.
	accountKID := tok.GetKid()
	global, _ := alice.GetSigningKeys(ctx, &bgv1.GetSigningKeysRequest{})
	own, _ := alice.GetSigningKeys(ctx, &bgv1.GetSigningKeysRequest{Account: "prod-db"})
	if strings.Contains(global.GetJwks(), accountKID) || !strings.Contains(own.GetJwks(), accountKID) {
		t.Fatalf("kid %s: global %s, account %s", accountKID, global.GetJwks(), own.GetJwks())
	}
	pinned, _ := client.NewVerifier(client.VerifierConfig{Issuer: ip.d.Ready.Issuer, Audience: "db.prod.example", Account: "prod-db",
		Keys: client.GRPCKeys{Client: alice, Account: "prod-db"}, Now: ip.clk.Now})
	if _, err := pinned.Verify(ctx, tok.GetToken()); err != nil {
		t.Fatalf("account-pinned verifier: %v", err)
	}
	globalV, _ := client.NewVerifier(client.VerifierConfig{Issuer: ip.d.Ready.Issuer, Audience: "db.prod.example", Keys: client.GRPCKeys{Client: alice}, Now: ip.clk.Now})
	if _, err := globalV.Verify(ctx, tok.GetToken()); err == nil {
		t.Fatal("a verifier of the broker's key set accepted an account-key token")
	}

	// The grant ends: the account's key rotates; the old one stays
	// published while its token is valid, then is destroyed.
	if _, err := alice.RevokeGrant(ctx, &bgv1.RevokeGrantRequest{RequestId: sid, Reason: "restored"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "rotation after use", func() bool { return ip.d.Ring().Minter("prod-db").KID() != accountKID })
	own, _ = alice.GetSigningKeys(ctx, &bgv1.GetSigningKeysRequest{Account: "prod-db"})
	if !strings.Contains(own.GetJwks(), accountKID) || len(own.GetKeys()) != 2 {
		t.Fatalf("after rotation the account JWKS is %s", own.GetJwks())
	}
	if n, _ := ip.d.Ring().DestroyExpired(ctx, ip.d.Broker); n != 0 {
		t.Fatal("destroyed a key whose token is still valid")
	}
	ip.clk.Advance(time.Hour)
	if n, err := ip.d.Ring().DestroyExpired(ctx, ip.d.Broker); n != 1 || err != nil {
		t.Fatalf("destroy: %d %v", n, err)
	}
	own, _ = alice.GetSigningKeys(ctx, &bgv1.GetSigningKeysRequest{Account: "prod-db"})
	if strings.Contains(own.GetJwks(), accountKID) {
		t.Fatal("a destroyed key is still published")
	}
	// It is gone from the HSM too.
	cfg, _ := config.Load(filepath.Join(ip.dir, "config.yaml"))
	m, err := hsm.Open(ctx, daemon.HSMConfig(cfg.HSM), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = m.FindKey(ctx, "prod-db-key", accountKeyID)
	m.Close()
	if !errors.Is(err, hsm.ErrKeyNotFound) {
		t.Fatalf("the retired key is still in the HSM: %v", err)
	}
	sum := ip.verifyLog()
	if sum.Grants != 1 || sum.Tokens != 1 {
		t.Fatalf("summary %+v", sum)
	}
}
