package main

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"

	"golang.org/x/crypto/ssh"

	"github.com/bgbroker/breakglass/client/auditverify"
)

// certAuthorities reads the CA keys and certificates the auditor pins.
func certAuthorities(sshFiles, x509Files []string) ([]ssh.PublicKey, []*x509.Certificate, error) {
	var keys []ssh.PublicKey
	for _, f := range sshFiles {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, nil, err
		}
		k, err := auditverify.ParseSSHCAKeys(b)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", f, err)
		}
		keys = append(keys, k...)
	}
	var certs []*x509.Certificate
	for _, f := range x509Files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, nil, err
		}
		for {
			var c *x509.Certificate
			c, b, err = nextCert(b)
			if err != nil {
				return nil, nil, fmt.Errorf("%s: %w", f, err)
			}
			if c == nil {
				break
			}
			certs = append(certs, c)
		}
	}
	return keys, certs, nil
}

func nextCert(b []byte) (*x509.Certificate, []byte, error) {
	for {
		blk, rest := pem.Decode(b)
		if blk == nil {
			return nil, nil, nil
		}
		b = rest
		if blk.Type == "CERTIFICATE" {
			c, err := x509.ParseCertificate(blk.Bytes)
			return c, b, err
		}
	}
}
