//go:build cgo

package pkcs11key

import (
	"crypto"
	"errors"
	"fmt"
	"io"

	"github.com/ThalesGroup/crypto11"
)

// Available reports whether this build can reach PKCS#11 tokens.
const Available = true

// Open logs in to the token the URI selects and returns the key it names,
// as a crypto.Signer whose private half stays on the token, and a closer
// that logs out.
func Open(u *URI, getenv func(string) string) (crypto.Signer, io.Closer, error) {
	module, err := u.Module(getenv)
	if err != nil {
		return nil, nil, err
	}
	pin, err := u.PIN(getenv)
	if err != nil {
		return nil, nil, err
	}
	if u.Manufacturer != "" || u.Model != "" {
		return nil, nil, errors.New("PKCS#11 URI manufacturer and model are not supported here: select the token by token, serial or slot-id")
	}
	ctx, err := crypto11.Configure(&crypto11.Config{Path: module, TokenLabel: u.Token, TokenSerial: u.Serial, SlotNumber: u.SlotID, Pin: pin, MaxSessions: 2})
	if err != nil {
		// crypto11's errors name the module and the token, never the PIN.
		return nil, nil, fmt.Errorf("opening the PKCS#11 token: %w", err)
	}
	var id, label []byte
	if len(u.ID) > 0 {
		id = u.ID
	}
	if u.Object != "" {
		label = []byte(u.Object)
	}
	keys, err := ctx.FindKeyPairs(id, label)
	if err != nil {
		_ = ctx.Close()
		return nil, nil, fmt.Errorf("finding the key on the PKCS#11 token: %w", err)
	}
	switch len(keys) {
	case 0:
		_ = ctx.Close()
		return nil, nil, fmt.Errorf("the PKCS#11 token holds no key pair with %s", describe(u))
	case 1:
		return keys[0], ctx, nil
	}
	_ = ctx.Close()
	return nil, nil, fmt.Errorf("the PKCS#11 token holds %d key pairs with %s: add id= or object= to choose one", len(keys), describe(u))
}

func describe(u *URI) string {
	switch {
	case u.Object != "" && len(u.ID) > 0:
		return fmt.Sprintf("label %q and id %x", u.Object, u.ID)
	case u.Object != "":
		return fmt.Sprintf("label %q", u.Object)
	}
	return fmt.Sprintf("id %x", u.ID)
}
