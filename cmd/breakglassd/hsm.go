package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/user"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"

	"github.com/bgbroker/breakglass/format/keyid"
	"github.com/bgbroker/breakglass/hsm"
	"github.com/bgbroker/breakglass/server/config"
	"github.com/bgbroker/breakglass/server/daemon"
	"github.com/bgbroker/breakglass/server/sshca"
	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/x509ca"
)

// hsmFlags are the settings every ceremony command shares. Flags override
// the hsm: section of --config. There is deliberately no PIN flag: a PIN on
// a command line is visible to every user of the host.
type hsmFlags struct {
	config      string
	module      string
	tokenLabel  string
	tokenSerial string
	slot        int
	pinFile     string
	pinEnv      string
	output      string
}

func (f *hsmFlags) register(cmd *cobra.Command) {
	pf := cmd.PersistentFlags()
	pf.StringVar(&f.config, "config", "", "broker configuration file; its hsm: section is used")
	pf.StringVar(&f.module, "module", "", "PKCS#11 module path (default: the first well-known SoftHSM2 path that exists)")
	pf.StringVar(&f.tokenLabel, "token-label", "", "select the token by label")
	pf.StringVar(&f.tokenSerial, "token-serial", "", "select the token by serial number")
	pf.IntVar(&f.slot, "slot", -1, "select the token by slot ID")
	pf.StringVar(&f.pinFile, "pin-file", "", "file holding the user PIN (mode 0600 or stricter)")
	pf.StringVar(&f.pinEnv, "pin-env", "", "environment variable holding the user PIN (default "+hsm.DefaultPINEnv+")")
	pf.StringVarP(&f.output, "output", "o", "", "output format: table (default for list) or json")
}

// hsmConfig merges --config with the flags.
func (f *hsmFlags) hsmConfig() (config.HSM, *config.Config, error) {
	var cfg config.Config
	if f.config != "" {
		c, err := config.Load(f.config)
		if err != nil {
			return config.HSM{}, nil, err
		}
		cfg = *c
	}
	h := cfg.HSM
	if f.module != "" {
		h.Module = f.module
	}
	if f.tokenLabel != "" || f.tokenSerial != "" || f.slot >= 0 {
		h.TokenLabel, h.TokenSerial, h.Slot = f.tokenLabel, f.tokenSerial, nil
		if f.slot >= 0 {
			s := uint(f.slot)
			h.Slot = &s
		}
	}
	if f.pinFile != "" {
		h.PINFile, h.PINEnv = f.pinFile, ""
	}
	if f.pinEnv != "" {
		h.PINEnv, h.PINFile = f.pinEnv, ""
	}
	return h, &cfg, nil
}

func (f *hsmFlags) open(ctx context.Context, stderr io.Writer) (*hsm.Module, error) {
	h, _, err := f.hsmConfig()
	if err != nil {
		return nil, err
	}
	return hsm.Open(ctx, daemon.HSMConfig(h), slog.New(slog.NewTextHandler(stderr, nil)))
}

func newHSMCmd(stdout, stderr io.Writer) *cobra.Command {
	f := &hsmFlags{}
	cmd := &cobra.Command{
		Use:   "hsm",
		Short: "HSM key ceremonies: generate, list, export and test keys",
		Long: `HSM key ceremonies. The PIN is read from a file (--pin-file, mode 0600) or an
environment variable (--pin-env, default ` + hsm.DefaultPINEnv + `), never from a flag.`,
	}
	f.register(cmd)
	cmd.AddCommand(newKeygenCmd(f, stdout, stderr), newListCmd(f, stdout, stderr), newPubkeyCmd(f, stdout, stderr), newSelftestCmd(f, stdout, stderr),
		newRotateCmd(f, stdout, stderr), newCACertCmd(f, stdout, stderr), newCSRCmd(f, stdout, stderr))
	return cmd
}

// CeremonyRecord is what keygen prints: enough for a second person to check
// later, from the token alone, that the key is the one generated here.
type CeremonyRecord struct {
	Ceremony    string          `json:"ceremony"`
	Time        time.Time       `json:"time"`
	Operator    string          `json:"operator"`
	Host        string          `json:"host"`
	Token       hsm.Token       `json:"token"`
	Key         CeremonyKey     `json:"key"`
	Attributes  map[string]bool `json:"attributes"`
	Mechanisms  []string        `json:"allowed_mechanisms"`
	Unsupported []string        `json:"unsupported_attributes"`
}

// CeremonyKey describes the generated key.
type CeremonyKey struct {
	Label       string `json:"label"`
	ID          string `json:"id"`
	Purpose     string `json:"purpose"`
	Algorithm   string `json:"algorithm"`
	Curve       string `json:"curve"`
	Fingerprint string `json:"fingerprint_sha256"`
	KID         string `json:"kid"`
	PublicKey   string `json:"public_key_pem"`
}

func operatorName(flag string) string {
	if flag != "" {
		return flag
	}
	if s := os.Getenv("SUDO_USER"); s != "" {
		return s
	}
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return "unknown"
}

func newKeygenCmd(f *hsmFlags, stdout, stderr io.Writer) *cobra.Command {
	var purpose, label, idHex, operator string
	cmd := &cobra.Command{
		Use:   "keygen --purpose token|audit|checkpoint|ssh-ca|x509-ca --label LABEL",
		Short: "Generate a key inside the token and print the ceremony record (JSON)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := hsm.ParsePurpose(purpose)
			if err != nil {
				return err
			}
			var id []byte
			if idHex != "" {
				if id, err = hex.DecodeString(idHex); err != nil || len(id) == 0 {
					return fmt.Errorf("--id must be non-empty hex, like pkcs11-tool prints it")
				}
			}
			m, err := f.open(cmd.Context(), stderr)
			if err != nil {
				return err
			}
			defer m.Close()
			g, err := m.GenerateKey(cmd.Context(), hsm.GenerateRequest{Purpose: p, Label: label, ID: id})
			if err != nil {
				return err
			}
			rec, err := ceremonyRecord(m, g, operatorName(operator))
			if err != nil {
				return err
			}
			return writeJSON(stdout, rec)
		},
	}
	cmd.Flags().StringVar(&purpose, "purpose", "", "token, audit, checkpoint, ssh-ca or x509-ca (required)")
	cmd.Flags().StringVar(&label, "label", "", "key label (required; must be unused on the token)")
	cmd.Flags().StringVar(&idHex, "id", "", "CKA_ID in hex (default: 16 random bytes)")
	cmd.Flags().StringVar(&operator, "operator", "", "name recorded as the operator (default: $SUDO_USER or the current user)")
	_ = cmd.MarkFlagRequired("purpose")
	_ = cmd.MarkFlagRequired("label")
	return cmd
}

func ceremonyRecord(m *hsm.Module, g *hsm.Generated, operator string) (*CeremonyRecord, error) {
	k := g.Key
	pemBytes, err := keyid.PublicPEM(k.Public)
	if err != nil {
		return nil, err
	}
	kid, err := keyid.Thumbprint(k.Public)
	if err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	curve := "P-256"
	if k.Algorithm == hsm.EdDSA {
		curve = "Ed25519"
	}
	unsupported := g.Unsupported
	if unsupported == nil {
		unsupported = []string{}
	}
	return &CeremonyRecord{
		Ceremony: "keygen",
		Time:     time.Now().UTC(),
		Operator: operator,
		Host:     host,
		Token:    m.Token(),
		Key: CeremonyKey{
			Label: k.Label, ID: k.IDHex(), Purpose: string(k.Purpose), Algorithm: string(k.Algorithm), Curve: curve,
			Fingerprint: k.Fingerprint(), KID: kid, PublicKey: string(pemBytes),
		},
		Attributes:  k.Attributes,
		Mechanisms:  k.AllowedMechanisms,
		Unsupported: unsupported,
	}, nil
}

// listedKey is one row of `hsm list -o json`.
type listedKey struct {
	Label             string          `json:"label"`
	ID                string          `json:"id"`
	Algorithm         string          `json:"algorithm"`
	Purpose           string          `json:"purpose"`
	Fingerprint       string          `json:"fingerprint_sha256"`
	Sensitive         bool            `json:"sensitive"`
	Extractable       bool            `json:"extractable"`
	Attributes        map[string]bool `json:"attributes"`
	AllowedMechanisms []string        `json:"allowed_mechanisms"`
}

func newListCmd(f *hsmFlags, stdout, stderr io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List every key on the token with its flags as the token reports them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, err := f.open(cmd.Context(), stderr)
			if err != nil {
				return err
			}
			defer m.Close()
			keys, err := m.ListKeys(cmd.Context())
			if err != nil {
				return err
			}
			rows := make([]listedKey, 0, len(keys))
			for _, k := range keys {
				purpose := string(k.Purpose)
				if purpose == "" {
					purpose = "-"
				}
				rows = append(rows, listedKey{
					Label: k.Label, ID: k.IDHex(), Algorithm: string(k.Algorithm), Purpose: purpose,
					Fingerprint: k.Fingerprint(), Sensitive: k.Attributes["sensitive"], Extractable: k.Attributes["extractable"],
					Attributes: k.Attributes, AllowedMechanisms: k.AllowedMechanisms,
				})
			}
			if f.output == "json" {
				return writeJSON(stdout, rows)
			}
			tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "LABEL\tID\tALGORITHM\tPURPOSE\tSENSITIVE\tEXTRACTABLE\tFINGERPRINT (SHA-256)\n")
			for _, r := range rows {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%t\t%t\t%s\n", r.Label, r.ID, r.Algorithm, r.Purpose, r.Sensitive, r.Extractable, r.Fingerprint)
			}
			return tw.Flush()
		},
	}
}

func newPubkeyCmd(f *hsmFlags, stdout, stderr io.Writer) *cobra.Command {
	var label, format, noteName string
	cmd := &cobra.Command{
		Use:   "pubkey --label LABEL [--format pem|jwk|note|ssh] [--note-name NAME]",
		Short: "Print a key's public half as PEM (SPKI), JWK, signed-note verifier key, or authorized_keys line (for sshd's TrustedUserCAKeys)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, err := f.open(cmd.Context(), stderr)
			if err != nil {
				return err
			}
			defer m.Close()
			k, err := m.FindKey(cmd.Context(), label, nil)
			if err != nil {
				return err
			}
			switch format {
			case "pem":
				b, err := keyid.PublicPEM(k.Public)
				if err != nil {
					return err
				}
				_, err = stdout.Write(b)
				return err
			case "jwk":
				jwk, err := keyid.JWK(k.Public)
				if err != nil {
					return err
				}
				return writeJSON(stdout, jwk)
			case "note":
				if k.Algorithm != hsm.EdDSA {
					return fmt.Errorf("%w: key %q is %s; signed-note verifier keys exist only for Ed25519 (checkpoint) keys", hsm.ErrPurposeMismatch, label, k.Algorithm)
				}
				name := noteName
				if name == "" {
					name = k.Label
				}
				vkey, err := hsm.NoteVerifierKey(name, k.Public)
				if err != nil {
					return err
				}
				_, err = fmt.Fprintln(stdout, vkey)
				return err
			case "ssh":
				if k.Algorithm != hsm.ES256 {
					return fmt.Errorf("%w: key %q is %s; SSH CA keys are ECDSA P-256", hsm.ErrPurposeMismatch, label, k.Algorithm)
				}
				pub, err := ssh.NewPublicKey(k.Public)
				if err != nil {
					return err
				}
				_, err = fmt.Fprintln(stdout, sshca.AuthorizedKey(pub, "breakglass-ssh-ca "+k.Label))
				return err
			}
			return fmt.Errorf("unknown --format %q: want pem, jwk, note or ssh", format)
		},
	}
	cmd.Flags().StringVar(&label, "label", "", "key label (required)")
	cmd.Flags().StringVar(&format, "format", "pem", "pem, jwk, note or ssh")
	cmd.Flags().StringVar(&noteName, "note-name", "", "signed-note key name (default: the key label; the audit log uses its origin)")
	_ = cmd.MarkFlagRequired("label")
	return cmd
}

func newSelftestCmd(f *hsmFlags, stdout, stderr io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "selftest",
		Short: "Sign and verify a fixed message with every broker key on the token",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			m, err := f.open(ctx, stderr)
			if err != nil {
				return err
			}
			defer m.Close()
			infos, err := m.ListKeys(ctx)
			if err != nil {
				return err
			}
			var results []hsm.KeyHealth
			for _, info := range infos {
				if info.Purpose == "" {
					results = append(results, hsm.KeyHealth{Label: info.Label, Algorithm: info.Algorithm, Fingerprint: info.Fingerprint(), Error: "not a breakglass key (no purpose); skipped"})
					continue
				}
				k, err := m.Signer(ctx, info.Label, info.Purpose)
				if err != nil {
					results = append(results, hsm.KeyHealth{Label: info.Label, Purpose: info.Purpose, Algorithm: info.Algorithm, Error: err.Error()})
					continue
				}
				results = append(results, m.Check(ctx, k)...)
			}
			failed := 0
			for _, r := range results {
				if !r.OK && r.Purpose != "" {
					failed++
				}
			}
			if f.output == "json" {
				if err := writeJSON(stdout, results); err != nil {
					return err
				}
			} else {
				tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintf(tw, "LABEL\tPURPOSE\tALGORITHM\tRESULT\tLATENCY\n")
				for _, r := range results {
					res := "ok"
					if !r.OK {
						res = "FAIL: " + r.Error
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Label, orDash(string(r.Purpose)), r.Algorithm, res, r.Latency.Round(time.Microsecond))
				}
				_ = tw.Flush()
			}
			if len(infos) == 0 {
				return exitError{code: 1, msg: "the token holds no keys; generate them with `breakglassd hsm keygen`"}
			}
			if failed > 0 {
				return exitError{code: 1, msg: fmt.Sprintf("%d of %d keys failed the self-test", failed, len(results))}
			}
			return nil
		},
	}
}

func orDash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newRotateCmd(f *hsmFlags, stdout, stderr io.Writer) *cobra.Command {
	var r rotateFlags
	cmd := &cobra.Command{
		Use:   "rotate --config FILE --purpose token|audit|checkpoint|ssh-ca|x509-ca [--account NAME] [--label LABEL] [--subject DN --days N] [--revoke-old --reason TEXT]",
		Short: "Make a new key active and retire the old one, audited in the broker's log",
		Long: `Generates a new key in the token and records it in the broker's key registry as
active, the old one as retired, with an audit entry. An audit or checkpoint key
rotation carries a statement signed by both the old and the new key, so a
verifier holding the first key follows the chain. Retired token keys stay in
the JWKS until the last token they signed expires, then are destroyed; retired
SSH and X.509 CA keys stay in /ssh/ca.pub and /x509/ca.pem (and their CRL is
kept signed) until the last certificate they signed expires. An X.509 CA
rotation self-signs the new key's CA certificate (--subject, --days) and adds
it to certificates.x509_ca_cert before the key becomes active. A running
broker picks the new key up within seconds.

With --revoke-old (CA keys only, for a key that may be compromised) the old
CA key is revoked, not merely retired, with every certificate it signed that
has not expired, in the rotation's transaction: an SSH CA key leaves
/ssh/ca.pub and is listed whole in the KRL (sshd refuses everything it
signed); an X.509 CA key's certificate leaves /x509/ca.pem and its CRL,
signed while the key is still in the HSM, lists every certificate it
signed. --reason is required and logged.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return rotate(cmd.Context(), f, &r, stdout, stderr) },
	}
	cmd.Flags().StringVar(&r.purpose, "purpose", "", "token, audit, checkpoint, ssh-ca or x509-ca (required)")
	cmd.Flags().StringVar(&r.account, "account", "", "the account whose own token key to rotate")
	cmd.Flags().StringVar(&r.label, "label", "", "label of the new key (default: purpose, account and time)")
	cmd.Flags().StringVar(&r.operator, "operator", "", "name recorded as the operator")
	cmd.Flags().StringVar(&r.subject, "subject", "", "x509-ca: the new CA certificate's distinguished name")
	cmd.Flags().IntVar(&r.days, "days", 365, "x509-ca: the new CA certificate's validity in days")
	cmd.Flags().BoolVar(&r.revokeOld, "revoke-old", false, "ssh-ca, x509-ca: revoke the old CA key with every certificate it signed (a key that may be compromised)")
	cmd.Flags().StringVar(&r.reason, "reason", "", "with --revoke-old: why, logged and announced")
	_ = cmd.MarkFlagRequired("purpose")
	return cmd
}

// rotateFlags are breakglassd hsm rotate's flags.
type rotateFlags struct {
	purpose, account, label, operator, subject, reason string
	days                                               int
	revokeOld                                          bool
}

// rotate checks the flags against the configuration, rotates and prints
// the ceremony's record.
func rotate(ctx context.Context, f *hsmFlags, r *rotateFlags, stdout, stderr io.Writer) error {
	if f.config == "" {
		return fmt.Errorf("--config is required: rotation records the key in the broker's store")
	}
	p, err := hsm.ParsePurpose(r.purpose)
	if err != nil {
		return err
	}
	cfg, err := config.Load(f.config)
	if err != nil {
		return err
	}
	h, _, err := f.hsmConfig()
	if err != nil {
		return err
	}
	cfg.HSM = h
	if err := cfg.Validate(); err != nil {
		return err
	}
	if r.revokeOld != (r.reason != "") {
		return errors.New("--revoke-old and --reason go together: a CA key is revoked for a reason, which is logged")
	}
	if r.revokeOld && p != hsm.PurposeSSHCA && p != hsm.PurposeX509CA {
		return fmt.Errorf("--revoke-old is for CA keys (ssh-ca, x509-ca); a %s key is rotated and retired", p)
	}
	rec, err := rotateKey(ctx, cfg, p, r, slog.New(slog.NewTextHandler(stderr, nil)))
	if err != nil {
		return err
	}
	out := map[string]any{"ceremony": "rotate", "time": time.Now().UTC(), "operator": operatorName(r.operator),
		"purpose": rec.Purpose, "account": rec.Account, "label": rec.Label, "kid": rec.KID, "id": rec.KeyID, "public_key_pem": rec.PublicPEM}
	if r.revokeOld {
		out["revoked_previous"], out["reason"] = true, r.reason
	}
	return writeJSON(stdout, out)
}

// rotateKey rotates the key of purpose p: an X.509 CA key with its new CA
// certificate, a CA key revoking the old one, any other key retiring it.
func rotateKey(ctx context.Context, cfg *config.Config, p hsm.Purpose, r *rotateFlags, log *slog.Logger) (store.KeyRecord, error) {
	revokeReason := ""
	if r.revokeOld {
		revokeReason = r.reason
	}
	switch {
	case p == hsm.PurposeX509CA:
		name, err := x509ca.ParseName(r.subject)
		if err != nil {
			return store.KeyRecord{}, fmt.Errorf("--subject (the new X.509 CA certificate's): %w", err)
		}
		if r.days < 1 || r.days > 3650 {
			return store.KeyRecord{}, fmt.Errorf("--days must be between 1 and 3650")
		}
		return daemon.RotateX509CA(ctx, cfg, r.label, name, time.Duration(r.days)*24*time.Hour, revokeReason, log)
	case r.revokeOld:
		return daemon.RotateRevoking(ctx, cfg, p, r.label, revokeReason, log)
	default:
		return daemon.Rotate(ctx, cfg, p, r.account, r.label, log)
	}
}
