package hsm

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/miekg/pkcs11"
)

// SoftHSM2 support for dev mode and tests: a token directory of our own,
// never the system one. SoftHSM2 reads SOFTHSM2_CONF once, when the library
// is initialized, and silently falls back to /var/lib/softhsm without it.

// WriteSoftHSMConfig creates dir/tokens and dir/softhsm2.conf pointing at it
// and returns the configuration file's path.
func WriteSoftHSMConfig(dir string) (string, error) {
	tokens := filepath.Join(dir, "tokens")
	if err := os.MkdirAll(tokens, 0o700); err != nil {
		return "", err
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	body := fmt.Sprintf("# written by breakglassd\ndirectories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tokens)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		return "", err
	}
	return conf, nil
}

// InitToken initializes a new token labelled label in the first free slot of
// the module and sets its user PIN. The library must not be in use by this
// process unless it was initialized by this package (SoftHSM2 only sees
// tokens created in-process, or present when it was initialized).
func InitToken(modulePath, label, soPIN, userPIN string) error {
	if modulePath == "" {
		var err error
		if modulePath, err = (Config{}).ResolveModule(); err != nil {
			return err
		}
	}
	p := pkcs11.New(modulePath)
	if p == nil {
		return fmt.Errorf("%w: cannot load %s; install SoftHSM2 with %q", ErrModuleNotFound, modulePath, InstallHint)
	}
	defer p.Destroy()
	err := p.Initialize()
	weInit := err == nil
	if err != nil {
		if code, ok := p11Code(err); !ok || code != pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED {
			return fmt.Errorf("initializing %s: %w", modulePath, err)
		}
	}
	if weInit {
		defer func() { _ = p.Finalize() }()
	}
	slots, err := p.GetSlotList(false)
	if err != nil {
		return fmt.Errorf("listing slots: %w", err)
	}
	free, found := uint(0), false
	for _, s := range slots {
		ti, err := p.GetTokenInfo(s)
		if err != nil {
			continue
		}
		if ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED != 0 {
			if strings.TrimRight(ti.Label, " \x00") == label {
				return fmt.Errorf("%w: a token labelled %q already exists", ErrKeyExists, label)
			}
			continue
		}
		if !found {
			free, found = s, true
		}
	}
	if !found {
		return fmt.Errorf("no free slot to initialize a token in")
	}
	if err := p.InitToken(free, soPIN, label); err != nil {
		return fmt.Errorf("initializing token %q: %w", label, err)
	}
	// InitToken may renumber the slot: find the token by label again.
	slots, err = p.GetSlotList(true)
	if err != nil {
		return err
	}
	for _, s := range slots {
		ti, err := p.GetTokenInfo(s)
		if err != nil || strings.TrimRight(ti.Label, " \x00") != label {
			continue
		}
		return initUserPIN(p, s, soPIN, userPIN)
	}
	return fmt.Errorf("token %q vanished after initialization", label)
}

// initUserPIN logs in to the token in slot s as the security officer and
// sets the user PIN.
func initUserPIN(p *pkcs11.Ctx, s uint, soPIN, userPIN string) error {
	sess, err := p.OpenSession(s, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return err
	}
	defer func() { _ = p.CloseSession(sess) }()
	if err := p.Login(sess, pkcs11.CKU_SO, soPIN); err != nil {
		return fmt.Errorf("logging in as SO: %w", err)
	}
	defer func() { _ = p.Logout(sess) }()
	if err := p.InitPIN(sess, userPIN); err != nil {
		return fmt.Errorf("setting the user PIN: %w", err)
	}
	return nil
}
