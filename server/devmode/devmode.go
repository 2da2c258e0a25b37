// Package devmode creates a complete, self-contained broker in one
// directory: a SoftHSM2 token with the three keys, a CA with a server
// certificate and client certificates for demo principals, a policy and a
// configuration. Everything a person needs to try the broker alone; none of
// it is fit for production (the CA key and the HSM PIN sit on disk).
package devmode

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/bgbroker/breakglass/hsm"
	"github.com/bgbroker/breakglass/server/config"
	"github.com/bgbroker/breakglass/server/notify"
	"github.com/bgbroker/breakglass/server/x509ca"
)

// URIPrefix is the dev CA's principal namespace.
const URIPrefix = "spiffe://breakglass.dev/user/"

// Principals are the demo identities.
var Principals = []struct{ Name, Role string }{
	{"alice", "requester (sre)"},
	{"bob", "approver (db-admins)"},
	{"carol", "approver (db-admins), owner of prod-db"},
	{"erin", "approver (security)"},
	{"dave", "auditor"},
	{"svc-db", "relying party of db.prod.example (CheckToken, introspection)"},
}

const tokenLabel = "breakglass-dev"

// Key labels in the dev token.
const (
	TokenKeyLabel      = "token-dev"
	AuditKeyLabel      = "audit-dev"
	CheckpointKeyLabel = "checkpoint-dev"
	SSHCAKeyLabel      = "ssh-ca-dev"
	X509CAKeyLabel     = "x509-ca-dev"
)

// SSHPrincipal is the demo account's SSH principal: the user sshd logs
// the requester in as.
const SSHPrincipal = "breakglass"

const demoPolicy = `# Demo policy written by breakglassd dev.
#
# prod-db needs one approval from db-admins AND one from security; the
# requester never counts and one person fills at most one requirement.
auditors: auditors
# Relying parties may check tokens (CheckToken over gRPC, introspection
# over HTTPS) with their client certificate.
relying_parties: relying-parties
# Changing this policy takes two of the policy admins, the proposer never
# counting (bgctl policy propose / approve, or bgctl policy sign into
# policy.sigs). Dev mode signs an edited file with the demo keys at start.
policy_admins:
  - require: [{group: policy-admins, approvals: 2}]
groups:
  sre: [alice]
  db-admins: [bob, carol]
  security: [erin]
  db-owners: [carol]
  auditors: [dave]
  relying-parties: [svc-db]
  policy-admins: [bob, carol, erin]
accounts:
  - name: prod-db
    description: Superuser on the production database
    owner: db-owners
    requesters: [sre]
    audiences: [db.prod.example]
    max_ttl: 1h
    approval_window: 30m
    activation_window: 15m
    max_issuances: 3
    deny_threshold: 1
    require_ticket: false
    quorum:
      - require:
          - {group: db-admins, approvals: 1}
          - {group: security, approvals: 1}
    # OpenSSH user certificates (sshd TrustedUserCAKeys) and X.509 client
    # certificates (PostgreSQL cert auth, any mTLS service) for the grant.
    ssh:
      principals: [breakglass]
      extensions: [permit-pty]
    x509:
      common_name: "{requester}"
`

// Options are dev mode's flags.
type Options struct {
	Dir      string
	GRPCAddr string
	HTTPAddr string
	// MetricsAddr is the metrics listener; a free loopback port when empty.
	MetricsAddr string
	// ConsoleAddr is the approver console's listener; a free loopback
	// port when empty.
	ConsoleAddr string
	// Webhooks are Standard Webhooks receivers to announce events to.
	Webhooks []string
}

// WebhookSinks returns sinks for the --webhook URLs, signed with the
// secret in DIR/webhook.secret (created on first use).
func WebhookSinks(dir string, urls []string) ([]config.Sink, error) {
	if len(urls) == 0 {
		return nil, nil
	}
	path := filepath.Join(dir, "webhook.secret")
	if _, err := os.Stat(path); err != nil {
		secret, err := notify.NewSecret(rand.Reader)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(path, []byte(secret+"\n"), 0o600); err != nil {
			return nil, err
		}
	}
	var out []config.Sink
	for i, u := range urls {
		out = append(out, config.Sink{Name: fmt.Sprintf("webhook-%d", i+1), Type: "webhook", URL: u, SecretFile: path, Timeout: config.DefaultSinkTimeout})
	}
	return out, nil
}

// ConfigPath is where Setup writes the configuration.
func ConfigPath(dir string) string { return filepath.Join(dir, "config.yaml") }

// Setup creates dir on the first run and returns the configuration path.
// Later runs reuse what is there. Created reports whether this run made it.
func Setup(ctx context.Context, o Options) (path string, created bool, err error) {
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return "", false, err
	}
	path = ConfigPath(dir)
	if _, err := os.Stat(path); err == nil {
		return path, false, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", false, err
	}
	if err := os.Chmod(dir, 0o700); err != nil { //nolint:gosec // a directory: owner-only with search
		return "", false, err
	}
	if err := setupHSM(ctx, dir); err != nil {
		return "", false, fmt.Errorf("dev mode: HSM: %w", err)
	}
	if err := setupPKI(dir); err != nil {
		return "", false, fmt.Errorf("dev mode: certificates: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), []byte(demoPolicy), 0o600); err != nil {
		return "", false, err
	}
	origin := "breakglass.dev/" + randHex(8)
	cfg := fmt.Sprintf(`# Written by breakglassd dev. Run it again with:
#   breakglassd serve --config %s
hsm:
  token_label: %s
  pin_file: hsm/pin
  env:
    SOFTHSM2_CONF: hsm/softhsm2.conf
keys:
  token: %s
  audit: %s
  checkpoint: %s
  ssh_ca: %s
  x509_ca: %s
certificates:
  x509_ca_cert: x509/ca.pem
  crl_validity: 1h
listen:
  grpc: %s
  https: %s
  metrics: %s
  console: %s
tls:
  cert: tls/server.crt
  key: tls/server.key
identity:
  client_ca: ca/ca.crt
  crl: ca/crl.pem
  mode: uri
  uri_prefix: %s
policy_file: policy.yaml
audit:
  origin: %s
notify:
  sinks:
    - name: events-file
      type: file
      path: events.jsonl
store:
  driver: sqlite
  sqlite:
    path: broker.db
`, path, tokenLabel, TokenKeyLabel, AuditKeyLabel, CheckpointKeyLabel, SSHCAKeyLabel, X509CAKeyLabel, o.GRPCAddr, o.HTTPAddr, cmp.Or(o.MetricsAddr, "127.0.0.1:0"), cmp.Or(o.ConsoleAddr, "127.0.0.1:0"), URIPrefix, origin)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return "", false, err
	}
	// The demo admins sign the first policy, as admins sign a genesis with
	// bgctl policy sign --genesis: the log starts with a signed genesis.
	if err := writeGenesisSignatures(dir, origin); err != nil {
		return "", false, fmt.Errorf("dev mode: signing the first policy: %w", err)
	}
	return path, true, nil
}

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func setupHSM(ctx context.Context, dir string) error {
	hdir := filepath.Join(dir, "hsm")
	conf, err := hsm.WriteSoftHSMConfig(hdir)
	if err != nil {
		return err
	}
	// SoftHSM2 reads this when the library initializes, which happens next.
	if err := os.Setenv("SOFTHSM2_CONF", conf); err != nil {
		return err
	}
	pin, soPIN := randHex(8), randHex(8)
	pinFile := filepath.Join(hdir, "pin")
	if err := os.WriteFile(pinFile, []byte(pin+"\n"), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(hdir, "so-pin"), []byte(soPIN+"\n"), 0o600); err != nil {
		return err
	}
	if err := hsm.InitToken("", tokenLabel, soPIN, pin); err != nil {
		return err
	}
	m, err := hsm.Open(ctx, hsm.Config{TokenLabel: tokenLabel, PINFile: pinFile}, nil)
	if err != nil {
		return err
	}
	defer m.Close()
	for p, label := range map[hsm.Purpose]string{hsm.PurposeToken: TokenKeyLabel, hsm.PurposeAudit: AuditKeyLabel, hsm.PurposeCheckpoint: CheckpointKeyLabel,
		hsm.PurposeSSHCA: SSHCAKeyLabel, hsm.PurposeX509CA: X509CAKeyLabel} {
		if _, err := m.GenerateKey(ctx, hsm.GenerateRequest{Purpose: p, Label: label}); err != nil {
			return err
		}
	}
	// The X.509 CA certificate, self-signed by its key in the HSM.
	k, err := m.Signer(ctx, X509CAKeyLabel, hsm.PurposeX509CA)
	if err != nil {
		return err
	}
	now := time.Now().UTC().Truncate(time.Second)
	cert, err := x509ca.SelfSign(ctx, k, x509ca.CAOptions{Subject: pkix.Name{CommonName: "breakglass dev X.509 CA", Organization: []string{"breakglass dev"}},
		NotBefore: now.Add(-5 * time.Minute), NotAfter: now.Add(2 * 365 * 24 * time.Hour)})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dir, "x509"), 0o700); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "x509", "ca.pem"), CertPEM(cert), 0o644) //nolint:gosec // a CA certificate is public
}

func setupPKI(dir string) error {
	for _, d := range []string{"ca", "tls", "identities"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return err
		}
	}
	ca, err := NewCA("breakglass dev client CA", 5*365*24*time.Hour)
	if err != nil {
		return err
	}
	if err := WriteCert(filepath.Join(dir, "ca", "ca.crt"), filepath.Join(dir, "ca", "ca.key"), ca.Cert, ca.Key); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "ca", "README"), []byte( //nolint:gosec // a public notice
		"DEV ONLY. ca.key signs client certificates. In production this key belongs to the\n"+
			"security team and never sits next to the broker: the broker needs only ca.crt\n"+
			"(and a CRL, crl.pem, which the broker re-reads when it changes).\n"), 0o644); err != nil {
		return err
	}
	crl, err := ca.CRL(1)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "ca", "crl.pem"), crl, 0o644); err != nil { //nolint:gosec // a CRL is public
		return err
	}
	srv, key, err := ca.Issue(LeafOptions{CommonName: "localhost", DNSNames: []string{"localhost"},
		IPs: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}, Server: true})
	if err != nil {
		return err
	}
	if err := WriteCert(filepath.Join(dir, "tls", "server.crt"), filepath.Join(dir, "tls", "server.key"), srv, key); err != nil {
		return err
	}
	for _, p := range Principals {
		c, k, err := ca.Issue(LeafOptions{CommonName: p.Name, URIs: []string{URIPrefix + p.Name}})
		if err != nil {
			return err
		}
		if err := WriteCert(filepath.Join(dir, "identities", p.Name+".crt"), filepath.Join(dir, "identities", p.Name+".key"), c, k); err != nil {
			return err
		}
	}
	return nil
}

// WriteIdentityEnv writes DIR/identities/NAME.env for each principal with
// the four BGCTL_* variables, pointing at addr, and, when binDir is not
// empty, binDir on PATH (once, however many files a shell sources), so
// that the bgctl built beside breakglassd runs in a fresh shell as the
// README's tour types it.
func WriteIdentityEnv(dir, addr, binDir string) ([]string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range Principals {
		f := filepath.Join(dir, "identities", p.Name+".env")
		lines := []string{
			"# " + p.Name + ": " + p.Role,
			"export BGCTL_ADDR=" + shellQuote(addr),
			"export BGCTL_CA=" + shellQuote(filepath.Join(dir, "ca", "ca.crt")),
			"export BGCTL_CERT=" + shellQuote(filepath.Join(dir, "identities", p.Name+".crt")),
			"export BGCTL_KEY=" + shellQuote(filepath.Join(dir, "identities", p.Name+".key")),
		}
		if binDir != "" {
			q := shellQuote(binDir)
			lines = append(lines, `case ":$PATH:" in *:`+q+`:*) ;; *) export PATH=`+q+`:"$PATH" ;; esac`)
		}
		if err := os.WriteFile(f, []byte(strings.Join(append(lines, ""), "\n")), 0o600); err != nil {
			return nil, err
		}
		out = append(out, f)
	}
	return out, nil
}

// shellQuote quotes s for a POSIX shell: inside single quotes, each single
// quote closing them, escaped, and opening them again.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
