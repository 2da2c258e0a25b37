package broker

import (
	"errors"
	"fmt"
	"github.com/bgbroker/breakglass/server/store"
)

// Kind classifies a broker error; the API edge turns each into one gRPC
// code. Nothing else about an error crosses the edge but its public
// message.
type Kind int

// Error kinds.
const (
	KindInternal Kind = iota
	KindInvalid
	KindNotFound
	KindPermission
	KindState
	KindExists
	KindUnavailable
	KindExhausted
	// KindUnauthenticated is a caller whose client certificate cannot
	// vouch for them now: expired, not yet valid or revoked.
	KindUnauthenticated
	// KindOutOfRange asks for more of the log than it holds.
	KindOutOfRange
)

// Error is an error with a message safe to show the caller. Err, when set,
// holds the detail for the log only.
type Error struct {
	Kind Kind
	// Msg is shown to the caller: actionable, without internals or secrets.
	Msg string
	Err error
}

func (e *Error) Error() string {
	if e.Err != nil && e.Err.Error() != e.Msg { // a cause that is its own public message is said once
		return e.Msg + ": " + e.Err.Error()
	}
	return e.Msg
}

func (e *Error) Unwrap() error { return e.Err }

func newErr(k Kind, format string, args ...any) *Error {
	return &Error{Kind: k, Msg: fmt.Sprintf(format, args...)}
}

func invalid(format string, args ...any) error { return newErr(KindInvalid, format, args...) }

// Unavailable is an Unavailable error with a message for the caller.
func Unavailable(format string, args ...any) error { return newErr(KindUnavailable, format, args...) }

// Invalid is an InvalidArgument error with a message for the caller, for
// the layers around the broker.
func Invalid(format string, args ...any) error    { return invalid(format, args...) }
func denied(format string, args ...any) error     { return newErr(KindPermission, format, args...) }
func wrongState(format string, args ...any) error { return newErr(KindState, format, args...) }

// notFound is the answer for a request that does not exist and for one the
// caller may not see, so the two cannot be told apart.
func notFound(id string) error {
	return newErr(KindNotFound, "request %s not found", id)
}

// hsmDown is the answer when a signature needed to grant access cannot be
// made: nothing was written.
func hsmDown(err error) error {
	return &Error{Kind: KindUnavailable, Msg: "the HSM cannot sign right now, so nothing that grants access can happen; nothing was changed; try again shortly", Err: err}
}

// dbDown is the error of a call the database could not serve.
func dbDown(err error) error {
	return &Error{Kind: KindUnavailable, Msg: "this replica cannot reach its database, so it can neither read nor change anything; the call may not have taken effect: retry it, here or on another replica (bgctl and the SDK do both by themselves)", Err: err}
}

func internal(err error) error {
	var be *Error
	if errors.As(err, &be) && (be.Kind != KindInternal || !(errors.Is(err, store.ErrUnavailable) || errors.Is(err, store.ErrNoSpace))) {
		return err
	}
	if errors.Is(err, store.ErrUnavailable) {
		return dbDown(err)
	}
	if errors.Is(err, store.ErrNoSpace) {
		return &Error{Kind: KindUnavailable, Msg: "the broker's database has no disk space left, so nothing can be recorded; nothing was changed; an operator must free space (the broker resumes by itself)", Err: err}
	}
	return &Error{Kind: KindInternal, Msg: "internal error", Err: err}
}

// KindOf returns the kind of err, KindInternal for foreign errors.
func KindOf(err error) Kind {
	var be *Error
	if errors.As(err, &be) {
		return be.Kind
	}
	return KindInternal
}

// PublicMessage returns the message the caller may see.
func PublicMessage(err error) string {
	var be *Error
	if errors.As(err, &be) {
		return be.Msg
	}
	return "internal error"
}
