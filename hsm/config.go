package hsm

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"strings"
	"time"
)

// DefaultPINEnv is the environment variable read for the user PIN when the
// configuration names neither a PIN file nor another variable.
const DefaultPINEnv = "BREAKGLASS_HSM_PIN"

// InstallHint is printed when no PKCS#11 module can be found.
const InstallHint = "sudo apt-get install -y softhsm2"

// WellKnownModules are the places SoftHSM2 is installed by common
// distributions; they are tried in order when no module path is configured.
var WellKnownModules = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib64/pkcs11/libsofthsm2.so",
	"/usr/lib/pkcs11/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
	"/opt/homebrew/lib/softhsm/libsofthsm2.so",
}

// Config selects a PKCS#11 module and token and says where the PIN comes from.
// Exactly one of TokenLabel, TokenSerial and Slot selects the token.
type Config struct {
	// Module is the path of the PKCS#11 library; empty tries WellKnownModules.
	Module string `yaml:"module" json:"module,omitempty"`
	// TokenLabel selects the token by its label (the usual choice).
	TokenLabel string `yaml:"token_label" json:"token_label,omitempty"`
	// TokenSerial selects the token by serial number instead.
	TokenSerial string `yaml:"token_serial" json:"token_serial,omitempty"`
	// Slot selects the token by slot ID instead.
	Slot *uint `yaml:"slot" json:"slot,omitempty"`
	// PINFile is a file holding the user PIN; it must not be readable by
	// group or others.
	PINFile string `yaml:"pin_file" json:"pin_file,omitempty"`
	// PINEnv names the environment variable holding the PIN when PINFile is
	// empty; DefaultPINEnv when both are empty.
	PINEnv string `yaml:"pin_env" json:"pin_env,omitempty"`
	// SigningSlots bounds the number of signatures in flight at once. A cgo
	// call cannot be cancelled, so this also bounds the goroutines a hung HSM
	// can hold. Zero sizes it to the machine.
	SigningSlots int `yaml:"signing_slots" json:"signing_slots,omitempty"`
	// SignTimeout bounds how long one signature may take, waiting for a slot
	// included, when the caller's context has no earlier deadline.
	SignTimeout time.Duration `yaml:"sign_timeout" json:"sign_timeout,omitempty"`
	// MaxQueue bounds how many signatures may wait for a slot; more fail at
	// once with ErrUnavailable. Zero means 64 per slot.
	MaxQueue int `yaml:"max_queue" json:"max_queue,omitempty"`
	// Env holds environment variables the module reads when it loads, such
	// as SOFTHSM2_CONF; Open sets them first.
	Env map[string]string `yaml:"env" json:"env,omitempty"`
}

func (c Config) withDefaults() Config {
	if c.SigningSlots <= 0 {
		// SoftHSM2 scales to about twice the cores; real HSMs have their own
		// session limits and are configured explicitly.
		c.SigningSlots = max(2, 2*runtime.NumCPU())
	}
	if c.SignTimeout <= 0 {
		c.SignTimeout = 2 * time.Second
	}
	if c.MaxQueue <= 0 {
		c.MaxQueue = 64 * c.SigningSlots
	}
	return c
}

// Validate reports configuration mistakes before any library is loaded.
func (c Config) Validate() error {
	n := 0
	if c.TokenLabel != "" {
		n++
	}
	if c.TokenSerial != "" {
		n++
	}
	if c.Slot != nil {
		n++
	}
	switch {
	case n == 0:
		return errors.New("hsm: no token selected: set token_label (or token_serial, or slot)")
	case n > 1:
		return errors.New("hsm: token_label, token_serial and slot are alternatives: set exactly one")
	}
	if c.PINFile != "" && c.PINEnv != "" {
		return errors.New("hsm: pin_file and pin_env are alternatives: set at most one")
	}
	return nil
}

// tokenSelector describes the configured token for messages.
func (c Config) tokenSelector() string {
	switch {
	case c.TokenLabel != "":
		return fmt.Sprintf("label %q", c.TokenLabel)
	case c.TokenSerial != "":
		return fmt.Sprintf("serial %q", c.TokenSerial)
	case c.Slot != nil:
		return fmt.Sprintf("slot %d", *c.Slot)
	}
	return "(none)"
}

// ResolveModule returns the module path to load: the configured one, or the
// first well-known SoftHSM2 path that exists.
func (c Config) ResolveModule() (string, error) {
	if c.Module != "" {
		if _, err := os.Stat(c.Module); err != nil {
			return "", fmt.Errorf("%w: %s does not exist; install SoftHSM2 with %q or set hsm.module / --module to your vendor's PKCS#11 library", ErrModuleNotFound, c.Module, InstallHint)
		}
		return c.Module, nil
	}
	for _, p := range WellKnownModules {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: no --module given and SoftHSM2 is not at any of %s; install it with %q or set hsm.module / --module",
		ErrModuleNotFound, strings.Join(WellKnownModules, ", "), InstallHint)
}

// ReadPIN reads the user PIN from the configured file or environment
// variable. A PIN file that group or others can read is refused, because the
// PIN is the only thing between a shell on this host and the keys.
func (c Config) ReadPIN() (string, error) {
	if c.PINFile != "" {
		fi, err := os.Stat(c.PINFile)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return "", fmt.Errorf("%w: PIN file %s does not exist", ErrPINSource, c.PINFile)
			}
			return "", fmt.Errorf("%w: PIN file %s: %w", ErrPINSource, c.PINFile, err)
		}
		if !fi.Mode().IsRegular() {
			return "", fmt.Errorf("%w: PIN file %s is not a regular file", ErrPINSource, c.PINFile)
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			return "", fmt.Errorf("%w: PIN file %s is readable or writable by group or others (mode %04o); run: chmod 600 %s",
				ErrPINSource, c.PINFile, perm, c.PINFile)
		}
		b, err := os.ReadFile(c.PINFile)
		if err != nil {
			return "", fmt.Errorf("%w: PIN file %s: %w", ErrPINSource, c.PINFile, err)
		}
		pin := strings.TrimRight(string(b), "\r\n")
		if pin == "" {
			return "", fmt.Errorf("%w: PIN file %s is empty", ErrPINSource, c.PINFile)
		}
		return pin, nil
	}
	name := c.PINEnv
	if name == "" {
		name = DefaultPINEnv
	}
	pin, ok := os.LookupEnv(name)
	if !ok || pin == "" {
		return "", fmt.Errorf("%w: set the PIN in $%s or point pin_file / --pin-file at a file only its owner can read", ErrPINSource, name)
	}
	return pin, nil
}
