package hsm

import (
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"
)

// Sentinel errors. Callers test them with errors.Is; the API edge maps them to
// gRPC codes (ErrUnavailable becomes Unavailable). Messages wrapped around
// them are meant for people: they name what to do, never a PIN.
var (
	// ErrUnavailable means the HSM could not sign now: a broken session that a
	// reopen did not mend, a full signing queue, a deadline, a device error.
	ErrUnavailable = errors.New("hsm unavailable")
	// ErrModuleNotFound means the PKCS#11 library could not be loaded.
	ErrModuleNotFound = errors.New("pkcs11 module not found")
	// ErrTokenNotFound means no token matched the configured label, serial or slot.
	ErrTokenNotFound = errors.New("token not found")
	// ErrPINIncorrect means the token refused the PIN.
	ErrPINIncorrect = errors.New("pin incorrect")
	// ErrPINSource means the PIN could not be read from its file or variable.
	ErrPINSource = errors.New("pin unavailable")
	// ErrKeyNotFound means no key matched the label or ID asked for.
	ErrKeyNotFound = errors.New("key not found")
	// ErrKeyExists means a key generation would reuse a label or ID.
	ErrKeyExists = errors.New("key label or id already exists")
	// ErrPurposeMismatch means a key exists but was made for another purpose
	// or with another algorithm than the caller needs.
	ErrPurposeMismatch = errors.New("key purpose or algorithm mismatch")
)

// reopenCodes are PKCS#11 return values after which the sessions or login of
// the current context cannot be trusted; the module reopens and retries once.
var reopenCodes = map[pkcs11.Error]bool{
	pkcs11.CKR_SESSION_HANDLE_INVALID:   true,
	pkcs11.CKR_SESSION_CLOSED:           true,
	pkcs11.CKR_DEVICE_ERROR:             true,
	pkcs11.CKR_DEVICE_REMOVED:           true,
	pkcs11.CKR_TOKEN_NOT_PRESENT:        true,
	pkcs11.CKR_USER_NOT_LOGGED_IN:       true,
	pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED: true,
	pkcs11.CKR_KEY_HANDLE_INVALID:       true,
	pkcs11.CKR_OBJECT_HANDLE_INVALID:    true,
	pkcs11.CKR_GENERAL_ERROR:            true,
}

// sessionsGone are the codes after which the old sessions no longer exist in
// the library. Their handle numbers may already belong to new sessions, so
// the old context must be abandoned rather than closed.
var sessionsGone = map[pkcs11.Error]bool{
	pkcs11.CKR_SESSION_HANDLE_INVALID:   true,
	pkcs11.CKR_SESSION_CLOSED:           true,
	pkcs11.CKR_DEVICE_REMOVED:           true,
	pkcs11.CKR_TOKEN_NOT_PRESENT:        true,
	pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED: true,
}

func p11Code(err error) (pkcs11.Error, bool) {
	var pe pkcs11.Error
	if errors.As(err, &pe) {
		return pe, true
	}
	return 0, false
}

// needsReopen reports whether err says the context is broken rather than the
// request being wrong.
func needsReopen(err error) bool {
	code, ok := p11Code(err)
	return ok && reopenCodes[code]
}

// ckrName gives the symbolic name of a PKCS#11 return value for messages.
func ckrName(err error) string {
	if code, ok := p11Code(err); ok {
		return code.Error()
	}
	return err.Error()
}

// unavailable wraps err so that errors.Is(err, ErrUnavailable) holds while the
// message keeps the detail for the log.
func unavailable(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrUnavailable}, args...)...)
}
