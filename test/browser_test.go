package test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// consoleBrowser is test/browser: npm playwright-core, installed from its
// lock file by scripts/ensure-deps.sh test, driving Debian's chromium.
const consoleBrowser = "browser"

// The approver console in Debian's Chromium (playwright-core, mTLS client
// certificates, a CDP virtual authenticator): alice requests with bgctl
// (and later in the console, signed by her passkey);
// bob sees it live, enrolls a passkey in the browser and binds it with
// bgctl (erin cannot bind it for him); bob approves in the browser; erin
// approves with bgctl and a key on a SoftHSM2 token through a PKCS#11 URI;
// alice gets her token; bgctl audit verify passes and counts one passkey
// and one hardware-key approval. The browser is refused without a client
// certificate, with a passkey never bound, an assertion without user
// verification, a replayed assertion, another origin, a CSRF post from
// another site and a frame. Screenshots of the pages go to
// $BREAKGLASS_CONSOLE_SCREENSHOTS (docs/console in the repository) or a
// temporary directory.
func TestConsoleInChromium(t *testing.T) {
	chromium := needTool(t, "chromium")
	node := needNodePackages(t, consoleBrowser, "playwright-core")
	d := startDev(t)
	hk := newHardwareKey(t, d, "erin")
	request := d.createRequest("alice")
	request2 := d.createRequest("alice")

	// Another site: a page that posts a form to the console, and one that
	// frames it.
	console := d.ready.Console
	attacker := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		switch r.URL.Path {
		case "/csrf.html":
			fmt.Fprintf(w, `<!doctype html><form id="f" method="post" action="%s/requests/%s/cancel"><input name="csrf" value="guessed"><input name="reason" value="forged"></form><script>document.getElementById("f").submit()</script>`,
				console, request2)
		case "/frame.html":
			fmt.Fprintf(w, `<!doctype html><iframe id="x" src="%s/" width="800" height="600"></iframe><script>document.getElementById("x").onload = () => { window.frameLoaded = true; };</script>`, console)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(attacker.Close)

	shots := os.Getenv("BREAKGLASS_CONSOLE_SCREENSHOTS")
	if shots == "" {
		shots = t.TempDir()
	} else if abs, err := filepath.Abs(shots); err == nil {
		shots = abs
	}
	ids := map[string]map[string]string{}
	envs := map[string]map[string]string{}
	for _, who := range []string{"alice", "bob", "carol", "dave", "erin"} {
		ids[who] = map[string]string{"cert": d.state("identities", who+".crt"), "key": d.state("identities", who+".key")}
		envs[who] = map[string]string{"BGCTL_ADDR": d.ready.GRPC, "BGCTL_CA": d.state("ca", "ca.crt"), "BGCTL_CERT": ids[who]["cert"], "BGCTL_KEY": ids[who]["key"]}
	}
	// erin's approvals are signed on her token.
	envs["erin"]["BGCTL_CERT"], envs["erin"]["BGCTL_KEY"], envs["erin"]["SOFTHSM2_CONF"] = hk.certFile, hk.uri(), hk.tok.conf
	cfg, err := json.Marshal(map[string]any{"console": console, "consoleIP": strings.Replace(console, "://localhost:", "://127.0.0.1:", 1),
		"attacker": attacker.URL, "request": request, "request2": request2, "ids": ids, "bgctl": bin.bgctl, "bgctlEnv": envs,
		"chromium": chromium, "screenshots": shots})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "console.mjs")
	cmd.Dir = consoleBrowser
	cmd.Env = append(os.Environ(), "BG_TEST="+string(cfg), "NODE_EXTRA_CA_CERTS="+d.state("ca", "ca.crt"))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	for _, l := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		t.Log(l)
	}
	if runErr != nil || !strings.Contains(stdout.String(), `"step":"done"`) {
		t.Fatalf("the browser scenario failed: %v\n%s", runErr, stderr.String())
	}

	// The broker's side: alice's token, and the log proves both approvals.
	tok := d.mustBgctl("alice", "token", request, "--audience", "db.prod.example")
	if strings.Count(strings.TrimSpace(tok), ".") != 2 {
		t.Fatalf("token: %q", tok)
	}
	if show := d.mustBgctl("alice", "show", request2); !strings.Contains(show, "PENDING") || strings.Contains(show, "Review") {
		t.Fatalf("the request the refused reviews and the forged cancel aimed at changed:\n%s", show)
	}
	f := d.exportAudit(t)
	v := f.verify(t)
	if v.code != 0 || !strings.Contains(v.stdout, "1 passkey approval(s)") || !strings.Contains(v.stdout, "1 hardware-key approval(s)") ||
		!strings.Contains(v.stdout, "requests 4") {
		t.Fatalf("bgctl audit verify: %d\n%s\n%s", v.code, v.stdout, v.stderr)
	}
	t.Logf("bgctl audit verify:\n%s", v.stdout)
}
