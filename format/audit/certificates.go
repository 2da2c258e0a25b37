package audit

import "time"

// Certificate entry types. Certificates are not secrets: the entry carries
// the whole certificate, so an auditor replays it against the grant and
// the policy, and checks its signature with the pinned CA key.
const (
	TypeSSHCertIssued  Type = "ssh_certificate_issued"
	TypeX509CertIssued Type = "x509_certificate_issued"
)

// SSHCertificateIssued records an OpenSSH user certificate.
type SSHCertificateIssued struct {
	// Serial is the certificate's serial, in decimal.
	Serial string `json:"serial"`
	// KeyID is the key ID sshd logs: breakglass:<request>:<issuance>:<requester>.
	KeyID string `json:"key_id"`
	// CAKID is the RFC 7638 thumbprint of the CA key that signed it.
	CAKID       string    `json:"ca_kid"`
	Principals  []string  `json:"principals"`
	ValidAfter  time.Time `json:"valid_after"`
	ValidBefore time.Time `json:"valid_before"`
	// CriticalOptions and Extensions are the certificate's, by name.
	CriticalOptions map[string]string `json:"critical_options"`
	Extensions      []string          `json:"extensions"`
	// SubjectKeySHA256 is the subject key's fingerprint as ssh-keygen -l
	// prints it (SHA256:base64).
	SubjectKeySHA256 string `json:"subject_key_sha256"`
	// Certificate is the whole certificate in authorized_keys form.
	Certificate string `json:"certificate"`
	// Approvers are the approvals the quorum counted at issuance.
	Approvers []string `json:"approvers"`
	// Issuance numbers it among the grant's tokens and certificates.
	Issuance int `json:"issuance"`
}

// X509CertificateIssued records an X.509 client certificate.
type X509CertificateIssued struct {
	// Serial is the certificate's serial, in decimal.
	Serial string `json:"serial"`
	// CAKID is the RFC 7638 thumbprint of the CA key that signed it.
	CAKID      string    `json:"ca_kid"`
	CommonName string    `json:"common_name"`
	DNSNames   []string  `json:"dns_names,omitempty"`
	URIs       []string  `json:"uris,omitempty"`
	NotBefore  time.Time `json:"not_before"`
	NotAfter   time.Time `json:"not_after"`
	// SubjectKeySHA256 is the SHA-256 of the subject key's DER
	// SubjectPublicKeyInfo, hex.
	SubjectKeySHA256 string `json:"subject_key_sha256"`
	// Certificate is the whole certificate, DER (base64 in JSON).
	Certificate []byte   `json:"certificate"`
	Approvers   []string `json:"approvers"`
	Issuance    int      `json:"issuance"`
}
