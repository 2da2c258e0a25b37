package test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/bgbroker/breakglass/client"
	"github.com/bgbroker/breakglass/format/passkey"
	"github.com/bgbroker/breakglass/format/passkey/passkeytest"
	"github.com/bgbroker/breakglass/format/statement"
	bgv1 "github.com/bgbroker/breakglass/proto/breakglass/v1"
	"github.com/bgbroker/breakglass/server/devmode"
)

// consoleUser is a browser with one client certificate on the console.
type consoleUser struct {
	t      *testing.T
	d      *devBroker
	name   string
	hc     *http.Client
	origin string
	csrf   string
}

func (d *devBroker) consoleAs(name string) *consoleUser {
	d.t.Helper()
	cert, err := tls.LoadX509KeyPair(d.state("identities", name+".crt"), d.state("identities", name+".key"))
	if err != nil {
		d.t.Fatal(err)
	}
	return d.consoleWith(name, &tls.Config{RootCAs: d.caPool(), Certificates: []tls.Certificate{cert}})
}

func (d *devBroker) consoleWith(name string, tc *tls.Config) *consoleUser {
	tr := &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true}
	hc := &http.Client{Timeout: 15 * time.Second, Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	d.t.Cleanup(tr.CloseIdleConnections)
	if d.ready.Console == "" {
		d.t.Fatal("dev mode serves no console")
	}
	return &consoleUser{t: d.t, d: d, name: name, hc: hc, origin: d.ready.Console}
}

var csrfRE = regexp.MustCompile(`data-csrf="([^"]+)"`)

// get fetches a page and remembers its CSRF token.
func (u *consoleUser) get(path string) (int, string, http.Header) {
	u.t.Helper()
	res, err := u.hc.Get(u.origin + path)
	if err != nil {
		u.t.Fatalf("GET %s as %s: %v", path, u.name, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if m := csrfRE.FindSubmatch(b); m != nil {
		u.csrf = string(m[1])
	}
	return res.StatusCode, string(b), res.Header
}

// postJSON posts as the console's script does: from its origin, with the
// CSRF token.
func (u *consoleUser) postJSON(path string, body any, hdr map[string]string) (int, map[string]any) {
	u.t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		u.t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPost, u.origin+path, bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Origin", u.origin)
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	req.Header.Set("X-CSRF-Token", u.csrf)
	for k, v := range hdr {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	res, err := u.hc.Do(req)
	if err != nil {
		u.t.Fatalf("POST %s: %v", path, err)
	}
	defer res.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(res.Body).Decode(&out)
	return res.StatusCode, out
}

// enroll creates a passkey on the console with a software authenticator
// and returns it with the one-time code the console shows.
func (u *consoleUser) enroll(label string) (*passkeytest.Authenticator, string, map[string]any) {
	u.t.Helper()
	u.get("/passkeys")
	code, opts := u.postJSON("/passkeys/begin", map[string]string{"label": label}, nil)
	if code != http.StatusOK {
		u.t.Fatalf("begin: %d %v", code, opts)
	}
	pk := opts["publicKey"].(map[string]any)
	challenge, err := base64.RawURLEncoding.DecodeString(pk["challenge"].(string))
	if err != nil {
		u.t.Fatal(err)
	}
	rp := pk["rp"].(map[string]any)
	if sel := pk["authenticatorSelection"].(map[string]any); sel["userVerification"] != "required" {
		u.t.Fatalf("the creation options do not require user verification: %v", sel)
	}
	a, err := passkeytest.New(rp["id"].(string), u.origin)
	if err != nil {
		u.t.Fatal(err)
	}
	cd, att := a.Attest(challenge, 0)
	code, out := u.postJSON("/passkeys/finish", map[string]any{"id": passkey.EncodeID(a.ID), "rawId": passkey.EncodeID(a.ID), "type": "public-key",
		"response": map[string]string{"clientDataJSON": base64.RawURLEncoding.EncodeToString(cd), "attestationObject": base64.RawURLEncoding.EncodeToString(att)}}, nil)
	if code != http.StatusOK {
		u.t.Fatalf("finish: %d %v", code, out)
	}
	return a, out["code"].(string), out
}

// reviewWith signs a review of request r with a's assertion (made with o)
// and posts it as the console's script does.
func (u *consoleUser) reviewWith(r *bgv1.Request, decision, comment string, a *passkeytest.Authenticator, o passkeytest.Options) (int, map[string]any) {
	u.t.Helper()
	origin, err := u.d.client(u.name).Origin(context.Background())
	if err != nil {
		u.t.Fatal(err)
	}
	st := statement.Statement{Type: decision, Origin: origin, Request: r.GetId(), Content: client.ContentOf(r).Digest(), Comment: statement.CommentDigest(comment),
		Time: time.Now().UTC().Truncate(time.Second)}
	text := st.Marshal()
	x := a.Assert(text, o)
	u.get("/requests/" + r.GetId())
	return u.postJSON("/requests/"+r.GetId()+"/review", map[string]any{"decision": decision, "comment": comment, "statement": text,
		"assertion": map[string]any{"id": passkey.EncodeID(x.Credential), "rawId": passkey.EncodeID(x.Credential), "type": "public-key",
			"response": map[string]string{"authenticatorData": base64.RawURLEncoding.EncodeToString(x.AuthenticatorData),
				"clientDataJSON": base64.RawURLEncoding.EncodeToString(x.ClientDataJSON), "signature": base64.RawURLEncoding.EncodeToString(x.Signature)}}}, nil)
}

// The console end to end with a software authenticator (the browser tests
// drive Chromium's): bob creates a passkey, binds it with bgctl, approves
// with it; erin approves with bgctl; alice gets her token; the log
// verifies offline and counts one passkey approval. Every refusal leaves
// the store as it was.
func TestConsolePasskeyApproval(t *testing.T) {
	d := startDev(t)
	bob := d.consoleAs("bob")
	code, page, hdr := bob.get("/")
	if code != http.StatusOK || !strings.Contains(page, "Awaiting my review") {
		t.Fatalf("GET /: %d\n%s", code, page)
	}
	for k, want := range map[string]string{"Content-Security-Policy": "frame-ancestors 'none'", "X-Frame-Options": "DENY", "Strict-Transport-Security": "max-age=",
		"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"} {
		if got := hdr.Get(k); !strings.Contains(got, want) {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	if csp := hdr.Get("Content-Security-Policy"); strings.Contains(csp, "unsafe-inline") || !strings.Contains(csp, "script-src 'self'") {
		t.Errorf("CSP %q", csp)
	}
	if regexp.MustCompile(`<script[^>]*>\s*[^<\s]`).MatchString(page) || regexp.MustCompile(`(?i)\son[a-z]+\s*=`).MatchString(page) ||
		!strings.Contains(page, `<script src="/static/console.js" defer></script>`) {
		t.Errorf("the page carries inline script, or not the console's own file:\n%s", page)
	}

	id := d.createRequest("alice")
	r := getRequest(t, d, "bob", id)

	a, otc, shown := bob.enroll("laptop")
	// Bound to nobody yet: it signs nothing.
	before := d.snapshot()
	if code, out := bob.reviewWith(r, "approve", "from the console", a, passkeytest.Options{}); code != http.StatusForbidden {
		t.Fatalf("an unbound passkey's approval: %d %v", code, out)
	}
	// A binding signed by someone else: erin cannot confirm bob's code.
	if res := d.bgctl("erin", "passkey", "confirm", otc, "--yes"); res.code == 0 || !strings.Contains(res.stderr, "only bob can bind it") {
		t.Fatalf("erin confirming bob's code: %d %s", res.code, res.stderr)
	}
	out := d.mustBgctl("bob", "passkey", "confirm", otc, "--yes")
	if !strings.Contains(out, "bound to bob") {
		t.Fatalf("confirm: %s", out)
	}
	list := d.mustBgctl("bob", "passkey", "list")
	if !strings.Contains(list, "bound") || !strings.Contains(list, "laptop") || !strings.Contains(list, shown["fingerprint"].(string)[:18]) {
		t.Fatalf("bgctl passkey list:\n%s", list)
	}
	if d.snapshot() != before {
		t.Fatal("a refused review or binding changed a request")
	}

	// Refused assertions, each changing nothing.
	for _, c := range []struct {
		name string
		o    passkeytest.Options
		want string
	}{
		{"without user verification", passkeytest.Options{Flags: passkeytest.FlagUP}, "User verification required"},
		{"on another origin", passkeytest.Options{Origin: "https://evil.example:443"}, "origin"},
		{"over another statement", passkeytest.Options{Challenge: passkey.Challenge([]byte("another request"))}, "challenge"},
	} {
		if code, out := bob.reviewWith(r, "approve", "", a, c.o); code != http.StatusBadRequest || !strings.Contains(fmt.Sprint(out["error"]), c.want) {
			t.Errorf("an assertion %s: %d %v", c.name, code, out)
		}
	}
	if d.snapshot() != before {
		t.Fatal("a refused assertion changed a request")
	}
	code, res := bob.reviewWith(r, "approve", "confirmed on the bridge", a, passkeytest.Options{})
	if code != http.StatusOK || res["state"] != "PENDING" {
		t.Fatalf("approve with the passkey: %d %v", code, res)
	}
	// The same assertion again, and a new one whose counter went back.
	zero := uint32(1)
	if code, out := bob.reviewWith(r, "approve", "again", a, passkeytest.Options{Counter: &zero}); code != http.StatusConflict && code != http.StatusBadRequest {
		t.Fatalf("a replayed assertion: %d %v", code, out)
	}
	d.mustBgctl("erin", "approve", id, "--yes")
	tok := d.mustBgctl("alice", "token", id, "--audience", "db.prod.example")
	if strings.Count(strings.TrimSpace(tok), ".") != 2 {
		t.Fatalf("token: %q", tok)
	}
	show := d.mustBgctl("alice", "show", id)
	if !strings.Contains(show, "bob approve") || !strings.Contains(show, "signed with a passkey") {
		t.Fatalf("bgctl show:\n%s", show)
	}
	_, page, _ = bob.get("/requests/" + id)
	if !strings.Contains(page, "passkey "+passkey.EncodeID(a.ID)) || strings.Contains(page, strings.TrimSpace(tok)) {
		t.Fatalf("the request page does not say bob signed with a passkey, or shows the token:\n%s", page)
	}

	// bob removes his passkey: it signs nothing more; alice revokes her
	// grant from the console.
	if out := d.mustBgctl("bob", "passkey", "remove", passkey.EncodeID(a.ID), "--reason", "laptop lost"); !strings.Contains(out, "removed") {
		t.Fatalf("bgctl passkey remove: %s", out)
	}
	if list := d.mustBgctl("bob", "passkey", "list"); !strings.Contains(list, "removed") {
		t.Fatalf("bgctl passkey list after the removal:\n%s", list)
	}
	r3 := getRequest(t, d, "bob", d.createRequest("alice"))
	if code, out := bob.reviewWith(r3, "approve", "", a, passkeytest.Options{}); code != http.StatusForbidden {
		t.Fatalf("an approval by a removed passkey: %d %v", code, out)
	}
	aliceGrant := d.consoleAs("alice")
	aliceGrant.get("/requests/" + id)
	revoke, _ := http.NewRequest(http.MethodPost, aliceGrant.origin+"/requests/"+id+"/revoke", strings.NewReader("csrf="+aliceGrant.csrf+"&reason=done"))
	revoke.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	revoke.Header.Set("Origin", aliceGrant.origin)
	if res, err := aliceGrant.hc.Do(revoke); err != nil || res.StatusCode != http.StatusSeeOther {
		t.Fatalf("revoke from the console: %v %v", res, err)
	} else {
		res.Body.Close()
	}
	if show := d.mustBgctl("alice", "show", id); !strings.Contains(show, "REVOKED") {
		t.Fatalf("after the console's revoke:\n%s", show)
	}

	// alice asks for access in the console: her passkey signs the request
	// statement her page builds.
	alice := d.consoleAs("alice")
	ap, acode, _ := alice.enroll("alice's laptop")
	d.mustBgctl("alice", "passkey", "confirm", acode, "--yes")
	origin, err := d.client("alice").Origin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	rid := uuid.NewString()
	rst := statement.Request{Origin: origin, ID: rid, Account: "prod-db", TTLSeconds: 900, Ticket: "INC-9", Justification: "replica lagging",
		Time: time.Now().UTC().Truncate(time.Second)}
	text := rst.Marshal()
	x := ap.Assert(text, passkeytest.Options{})
	assertion := map[string]any{"id": passkey.EncodeID(x.Credential), "rawId": passkey.EncodeID(x.Credential), "type": "public-key",
		"response": map[string]string{"authenticatorData": base64.RawURLEncoding.EncodeToString(x.AuthenticatorData),
			"clientDataJSON": base64.RawURLEncoding.EncodeToString(x.ClientDataJSON), "signature": base64.RawURLEncoding.EncodeToString(x.Signature)}}
	alice.get("/mine")
	body := map[string]any{"account": "prod-db", "justification": "replica lagging", "ticket": "INC-9", "ttl_seconds": 900, "statement": text, "assertion": assertion}
	if code, out := alice.postJSON("/requests", body, nil); code != http.StatusOK || out["id"] != rid {
		t.Fatalf("a passkey-signed request from the console: %d %v", code, out)
	}
	body["ticket"] = "INC-10"
	if code, out := alice.postJSON("/requests", body, nil); code != http.StatusBadRequest {
		t.Fatalf("a request other than the statement says: %d %v", code, out)
	}
	// The old form post, without the script, is refused with a reason.
	form, _ := http.NewRequest(http.MethodPost, alice.origin+"/requests", strings.NewReader("csrf="+alice.csrf+"&account=prod-db&justification=x"))
	form.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	form.Header.Set("Origin", alice.origin)
	if res, err := alice.hc.Do(form); err != nil || res.StatusCode != http.StatusBadRequest {
		t.Fatalf("an unsigned form post: %v %v", res, err)
	} else {
		res.Body.Close()
	}

	f := d.exportAudit(t)
	v := f.verify(t)
	if v.code != 0 || !strings.Contains(v.stdout, "1 passkey approval(s)") || !strings.Contains(v.stdout, "requests 3") {
		t.Fatalf("bgctl audit verify: %d\n%s\n%s", v.code, v.stdout, v.stderr)
	}
}

func getRequest(t *testing.T, d *devBroker, who, id string) *bgv1.Request {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := d.client(who).GetRequest(ctx, &bgv1.GetRequestRequest{Id: id})
	if err != nil {
		t.Fatal(err)
	}
	return got.GetRequest()
}

// The console refuses what the API refuses, and what only a browser can
// be tricked into: no client certificate (no TLS session at all), one from
// another CA, a state change from another origin or without the token,
// a principal outside the policy, and a certificate revoked while its
// connection is open.
func TestConsoleRefusals(t *testing.T) {
	d := startDev(t)
	// No client certificate: the handshake fails, the console does not load.
	anon := d.consoleWith("anonymous", &tls.Config{RootCAs: d.caPool()})
	if res, err := anon.hc.Get(anon.origin + "/"); err == nil {
		res.Body.Close()
		t.Fatal("the console loaded without a client certificate")
	}
	// A certificate from another CA.
	other, err := devmode.NewCA("another CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, k, err := other.Issue(devmode.LeafOptions{CommonName: "bob", URIs: []string{devmode.URIPrefix + "bob"}})
	if err != nil {
		t.Fatal(err)
	}
	foreign := d.consoleWith("foreign", &tls.Config{RootCAs: d.caPool(), Certificates: []tls.Certificate{{Certificate: [][]byte{c.Raw}, PrivateKey: k}}})
	if res, err := foreign.hc.Get(foreign.origin + "/"); err == nil {
		res.Body.Close()
		t.Fatal("the console loaded with a certificate from another CA")
	}
	// A principal the policy does not know.
	ca := d.devCA()
	c, k, err = ca.Issue(devmode.LeafOptions{CommonName: "nobody", URIs: []string{devmode.URIPrefix + "nobody"}})
	if err != nil {
		t.Fatal(err)
	}
	nobody := d.consoleWith("nobody", &tls.Config{RootCAs: d.caPool(), Certificates: []tls.Certificate{{Certificate: [][]byte{c.Raw}, PrivateKey: k}}})
	if code, _, _ := nobody.get("/"); code != http.StatusForbidden {
		t.Fatalf("a principal outside the policy: %d", code)
	}

	alice := d.consoleAs("alice")
	alice.get("/mine")
	id := d.createRequest("alice")
	before := d.snapshot()
	post := func(hdr map[string]string) int {
		code, _ := alice.postJSON("/requests/"+id+"/cancel", map[string]string{}, hdr)
		return code
	}
	for name, hdr := range map[string]map[string]string{
		"from another origin":     {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
		"with no origin":          {"Origin": ""},
		"cross-site fetch":        {"Sec-Fetch-Site": "cross-site"},
		"without the CSRF token":  {"X-CSRF-Token": ""},
		"with another CSRF token": {"X-CSRF-Token": "AAAA"},
	} {
		if code := post(hdr); code != http.StatusForbidden {
			t.Errorf("a cancel %s: %d", name, code)
		}
	}
	// A classic form post from another site carries the other origin.
	form, _ := http.NewRequest(http.MethodPost, alice.origin+"/requests/"+id+"/cancel", strings.NewReader("csrf="+alice.csrf))
	form.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	form.Header.Set("Origin", "https://evil.example")
	if res, err := alice.hc.Do(form); err != nil || res.StatusCode != http.StatusForbidden {
		t.Errorf("a cross-origin form post: %v %v", res, err)
	} else {
		res.Body.Close()
	}
	if d.snapshot() != before {
		t.Fatal("a refused state change changed a request")
	}
	// bob's CSRF token is his: alice's page token does not work for him.
	bob := d.consoleAs("bob")
	bob.get("/")
	bob.csrf = alice.csrf
	if code, _ := bob.postJSON("/passkeys/begin", map[string]string{}, nil); code != http.StatusForbidden {
		t.Errorf("bob with alice's CSRF token: %d", code)
	}
	// The genuine cancel works.
	form, _ = http.NewRequest(http.MethodPost, alice.origin+"/requests/"+id+"/cancel", strings.NewReader("csrf="+alice.csrf))
	form.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	form.Header.Set("Origin", alice.origin)
	res, err := alice.hc.Do(form)
	if err != nil || res.StatusCode != http.StatusSeeOther {
		t.Fatalf("cancel from the console: %v %v", res, err)
	}
	res.Body.Close()

	// Revoked while connected: the next request on the same connection is
	// refused once the broker reads the new CRL.
	bob.get("/")
	cert := certOf(t, d.state("identities", "bob.crt"))
	crl, err := ca.CRL(2, []*big.Int{cert.SerialNumber}...)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(d.state("ca", "crl.pem"), crl, 0o644); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		res, err := bob.hc.Get(bob.origin + "/")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusUnauthorized {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("a revoked certificate still reads the console: %v %v", res, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// A new connection fails in the handshake.
	fresh := d.consoleAs("bob")
	if res, err := fresh.hc.Get(fresh.origin + "/"); err == nil {
		res.Body.Close()
		t.Fatal("a revoked certificate opens a new connection to the console")
	}
}
