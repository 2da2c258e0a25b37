//go:build !cgo

package pkcs11key

import (
	"crypto"
	"errors"
	"io"
)

// Available reports whether this build can reach PKCS#11 tokens.
const Available = false

// Open says that this bgctl cannot reach a token: PKCS#11 modules are C
// libraries, and this build has no cgo.
func Open(*URI, func(string) string) (crypto.Signer, io.Closer, error) {
	return nil, nil, errors.New("this bgctl was built without cgo (CGO_ENABLED=0), so it cannot use PKCS#11 keys: build it with cgo, or use a key file")
}
