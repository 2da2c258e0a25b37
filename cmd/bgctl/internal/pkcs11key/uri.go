// Package pkcs11key finds a client certificate's private key on a PKCS#11
// token (a PIV smart card, a security key, an HSM) by an RFC 7512 URI, so
// that bgctl can make its mTLS handshake and sign statements with a key
// that never leaves the token. Reaching a token needs cgo; without it
// (CGO_ENABLED=0) bgctl still builds, and says so when asked for a
// PKCS#11 key. The SDK stays pure Go: it takes a crypto.Signer.
package pkcs11key

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
)

// URI is what an RFC 7512 PKCS#11 URI selects.
type URI struct {
	// Token, Serial, Manufacturer and Model select the token.
	Token        string
	Serial       string
	Manufacturer string
	Model        string
	// SlotID selects the slot (RFC 7512 slot-id) instead.
	SlotID *int
	// Object and ID select the key by CKA_LABEL and CKA_ID.
	Object string
	ID     []byte
	// ModulePath is the PKCS#11 library (module-path).
	ModulePath string
	// PINSource is where the PIN is read (pin-source): a file.
	PINSource string
}

// Environment variables that complete a URI.
const (
	// EnvModule names the PKCS#11 library when the URI has no module-path.
	EnvModule = "BGCTL_PKCS11_MODULE"
	// EnvPIN holds the PIN when the URI has no pin-source.
	EnvPIN = "BGCTL_PKCS11_PIN"
)

// IsURI reports whether a --key value is a PKCS#11 URI.
func IsURI(s string) bool { return strings.HasPrefix(strings.ToLower(s), "pkcs11:") }

// ParseURI reads an RFC 7512 URI: path attributes separated by ";", query
// attributes after "?" separated by "&", values percent-encoded. An
// attribute given twice, or one this package does not know, is refused
// rather than ignored: a key chosen by a URI read differently is the
// wrong key. pin-value is refused: a PIN on a command line is seen by
// every process on the machine.
func ParseURI(s string) (*URI, error) {
	if !IsURI(s) {
		return nil, errors.New(`a PKCS#11 URI begins with "pkcs11:" (RFC 7512)`)
	}
	rest := s[len("pkcs11:"):]
	path, query, _ := strings.Cut(rest, "?")
	u := &URI{}
	seen := map[string]bool{}
	attr := func(kv string) (string, string, error) {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return "", "", fmt.Errorf("PKCS#11 URI attribute %q is not name=value", kv)
		}
		if seen[k] {
			return "", "", fmt.Errorf("PKCS#11 URI attribute %s is given twice", k)
		}
		seen[k] = true
		val, err := url.PathUnescape(v)
		if err != nil {
			return "", "", fmt.Errorf("PKCS#11 URI attribute %s: %w", k, err)
		}
		return k, val, nil
	}
	if path != "" {
		for _, kv := range strings.Split(path, ";") {
			k, v, err := attr(kv)
			if err != nil {
				return nil, err
			}
			switch k {
			case "token":
				u.Token = v
			case "serial":
				u.Serial = v
			case "manufacturer":
				u.Manufacturer = v
			case "model":
				u.Model = v
			case "object":
				u.Object = v
			case "id":
				u.ID = []byte(v)
			case "slot-id":
				n, err := strconv.Atoi(v)
				if err != nil || n < 0 {
					return nil, fmt.Errorf("PKCS#11 URI slot-id %q is not a slot number", v)
				}
				u.SlotID = &n
			case "type":
				if v != "private" {
					return nil, fmt.Errorf("PKCS#11 URI type=%s: the key of a client certificate is type=private", v)
				}
			case "library-manufacturer", "library-description", "library-version", "slot-description", "slot-manufacturer":
				return nil, fmt.Errorf("PKCS#11 URI attribute %s is not supported here: select the token by token, serial or slot-id", k)
			default:
				return nil, fmt.Errorf("PKCS#11 URI attribute %q is not one RFC 7512 defines", k)
			}
		}
	}
	if query != "" {
		for _, kv := range strings.Split(query, "&") {
			k, v, err := attr(kv)
			if err != nil {
				return nil, err
			}
			switch k {
			case "module-path":
				u.ModulePath = v
			case "pin-source":
				u.PINSource = v
			case "pin-value":
				return nil, fmt.Errorf("PKCS#11 URI pin-value is refused: a PIN on the command line or in the environment of every process is not kept secret; use pin-source=file:PATH or %s", EnvPIN)
			case "module-name":
				return nil, fmt.Errorf("PKCS#11 URI module-name is not supported: give the library's path, module-path=/usr/lib/.../opensc-pkcs11.so, or %s", EnvModule)
			default:
				return nil, fmt.Errorf("PKCS#11 URI query attribute %q is not one RFC 7512 defines", k)
			}
		}
	}
	if u.Token == "" && u.Serial == "" && u.SlotID == nil {
		return nil, errors.New("the PKCS#11 URI selects no token: give token=LABEL, serial=S or slot-id=N")
	}
	if u.Object == "" && len(u.ID) == 0 {
		return nil, errors.New("the PKCS#11 URI selects no key: give object=LABEL or id=%XX (the key's CKA_ID)")
	}
	return u, nil
}

// Module is the PKCS#11 library: module-path, or BGCTL_PKCS11_MODULE.
func (u *URI) Module(getenv func(string) string) (string, error) {
	if u.ModulePath != "" {
		return u.ModulePath, nil
	}
	if m := getenv(EnvModule); m != "" {
		return m, nil
	}
	return "", fmt.Errorf("no PKCS#11 library: add module-path=/path/to/module.so to the URI or set %s", EnvModule)
}

// PIN reads the token's PIN from pin-source (a file, file:PATH or PATH,
// readable by its owner only) or, without one, from BGCTL_PKCS11_PIN;
// never from a flag.
func (u *URI) PIN(getenv func(string) string) (string, error) {
	if u.PINSource != "" {
		path := strings.TrimPrefix(u.PINSource, "file:")
		if strings.Contains(path, "://") {
			return "", fmt.Errorf("pin-source %q: only a file is supported (file:PATH)", u.PINSource)
		}
		fi, err := os.Stat(path)
		if err != nil {
			return "", fmt.Errorf("pin-source: %w", err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			return "", fmt.Errorf("pin-source %s is readable by others (mode %o): chmod 600 it", path, fi.Mode().Perm())
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("pin-source: %w", err)
		}
		pin := strings.TrimRight(string(b), "\r\n")
		if pin == "" {
			return "", fmt.Errorf("pin-source %s is empty", path)
		}
		return pin, nil
	}
	if p := getenv(EnvPIN); p != "" {
		return p, nil
	}
	return "", fmt.Errorf("no PIN for the PKCS#11 token: add pin-source=file:PATH to the URI or set %s (never a flag)", EnvPIN)
}
