package main

import (
	"encoding/pem"
	"fmt"
	"io"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/hsm"
	"github.com/bgbroker/breakglass/server/config"
	"github.com/bgbroker/breakglass/server/x509ca"
)

func newCACertCmd(f *hsmFlags, stdout, stderr io.Writer) *cobra.Command {
	var label, subject, out string
	var days int
	var permitDNS, permitURI []string
	var noConstraints bool
	cmd := &cobra.Command{
		Use:   "ca-cert --label LABEL --subject DN [--days N] [--out FILE]",
		Short: "Self-sign the X.509 CA certificate of an x509-ca key, in the HSM",
		Long: `Self-signs a CA certificate for an x509-ca key inside the HSM: basic
constraints CA with path length 0 (it signs client certificates only), key
usage keyCertSign and cRLSign, and critical name constraints on DNS names and
URI hosts. With --config, the constraints come from the policy's x509: names
when every one of them has a fixed domain ("{requester}.users.example.com"
permits users.example.com); --permit-dns and --permit-uri add or set them.
Point certificates.x509_ca_cert at the result (several certificates may sit
in one file: the current key's and those of keys rotated out).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			name, err := x509ca.ParseName(subject)
			if err != nil {
				return fmt.Errorf("--subject: %w", err)
			}
			if days < 1 || days > 3650 {
				return fmt.Errorf("--days must be between 1 and 3650")
			}
			dns, uris := slices.Clone(permitDNS), slices.Clone(permitURI)
			if f.config != "" && !noConstraints {
				cfg, err := config.Load(f.config)
				if err != nil {
					return err
				}
				pol, _, err := cfg.LoadPolicy()
				if err != nil {
					return err
				}
				pd, pu, notes := policyConstraints(pol)
				for _, n := range notes {
					fmt.Fprintln(stderr, "note:", n)
				}
				dns, uris = append(dns, pd...), append(uris, pu...)
			}
			if noConstraints {
				dns, uris = nil, nil
			}
			m, err := f.open(cmd.Context(), stderr)
			if err != nil {
				return err
			}
			defer m.Close()
			k, err := m.Signer(cmd.Context(), label, hsm.PurposeX509CA)
			if err != nil {
				return err
			}
			now := time.Now().UTC().Truncate(time.Second)
			cert, err := x509ca.SelfSign(cmd.Context(), k, x509ca.CAOptions{Subject: name, NotBefore: now.Add(-5 * time.Minute),
				NotAfter: now.Add(time.Duration(days) * 24 * time.Hour), PermittedDNSDomains: dedupe(dns), PermittedURIDomains: dedupe(uris)})
			if err != nil {
				return err
			}
			return writePEM(stdout, out, "CERTIFICATE", cert.Raw)
		},
	}
	cmd.Flags().StringVar(&label, "label", "", "label of the x509-ca key (required)")
	cmd.Flags().StringVar(&subject, "subject", "", `distinguished name, e.g. "CN=breakglass X.509 CA,O=Example" (required)`)
	cmd.Flags().IntVar(&days, "days", 365, "validity in days")
	cmd.Flags().StringVar(&out, "out", "", "write the PEM certificate here (mode 0644) instead of stdout")
	cmd.Flags().StringSliceVar(&permitDNS, "permit-dns", nil, "permitted DNS domain (repeatable)")
	cmd.Flags().StringSliceVar(&permitURI, "permit-uri", nil, "permitted URI host domain (repeatable)")
	cmd.Flags().BoolVar(&noConstraints, "no-name-constraints", false, "make no name constraints")
	_ = cmd.MarkFlagRequired("label")
	_ = cmd.MarkFlagRequired("subject")
	return cmd
}

func newCSRCmd(f *hsmFlags, stdout, stderr io.Writer) *cobra.Command {
	var label, subject, out string
	cmd := &cobra.Command{
		Use:   "csr --label LABEL --subject DN [--out FILE]",
		Short: "Write a certificate request for an x509-ca key, signed in the HSM, for an organisation's root CA to sign",
		Long: `Writes a PKCS #10 request for an x509-ca key, signed inside the HSM. Have the
organisation's root sign it as a CA certificate with path length 0, key usage
keyCertSign and cRLSign and a subject key identifier, and point
certificates.x509_ca_cert at the result; the broker refuses to start when that
certificate is not its key's.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			name, err := x509ca.ParseName(subject)
			if err != nil {
				return fmt.Errorf("--subject: %w", err)
			}
			m, err := f.open(cmd.Context(), stderr)
			if err != nil {
				return err
			}
			defer m.Close()
			k, err := m.Signer(cmd.Context(), label, hsm.PurposeX509CA)
			if err != nil {
				return err
			}
			der, err := x509ca.CSR(cmd.Context(), k, name)
			if err != nil {
				return err
			}
			return writePEM(stdout, out, "CERTIFICATE REQUEST", der)
		},
	}
	cmd.Flags().StringVar(&label, "label", "", "label of the x509-ca key (required)")
	cmd.Flags().StringVar(&subject, "subject", "", "distinguished name (required)")
	cmd.Flags().StringVar(&out, "out", "", "write the PEM request here instead of stdout")
	_ = cmd.MarkFlagRequired("label")
	_ = cmd.MarkFlagRequired("subject")
	return cmd
}

func writePEM(stdout io.Writer, out, typ string, der []byte) error {
	b := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	if out == "" {
		_, err := stdout.Write(b)
		return err
	}
	return os.WriteFile(out, b, 0o644) //nolint:gosec // a certificate or request is public
}

func dedupe(s []string) []string {
	slices.Sort(s)
	return slices.Compact(s)
}

// policyConstraints derives name constraints from the policy's x509:
// names: each DNS name's fixed part after its templated first label (or
// the whole name when it has no template), each URI's host. One name
// without a fixed domain means no constraint of its kind can hold.
func policyConstraints(p *policy.Policy) (dns, uris, notes []string) {
	dnsOK, uriOK := true, true
	for _, a := range p.Accounts {
		if a.X509 == nil {
			continue
		}
		for _, d := range a.X509.DNSNames {
			dom := d
			if strings.Contains(d, "{") {
				first, rest, ok := strings.Cut(d, ".")
				if !ok || strings.Contains(rest, "{") || !strings.Contains(first, "{") {
					dnsOK = false
					notes = append(notes, fmt.Sprintf("account %s: DNS name %q has no fixed domain; no DNS name constraint", a.Name, d))
					continue
				}
				dom = rest
			}
			dns = append(dns, dom)
		}
		for _, s := range a.X509.URISANs {
			u, err := url.Parse(s)
			if err != nil || u.Host == "" || strings.Contains(u.Host, "{") {
				uriOK = false
				notes = append(notes, fmt.Sprintf("account %s: URI %q has no fixed host; no URI name constraint", a.Name, s))
				continue
			}
			uris = append(uris, u.Hostname())
		}
	}
	if !dnsOK {
		dns = nil
	}
	if !uriOK {
		uris = nil
	}
	return dns, uris, notes
}
