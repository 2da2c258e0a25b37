package pkcs11key

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseURI(t *testing.T) {
	u, err := ParseURI("pkcs11:token=PIV%20Card;object=PIV%20AUTH%20key;id=%01%02;type=private?module-path=/usr/lib/opensc-pkcs11.so&pin-source=file:/run/pin")
	if err != nil {
		t.Fatal(err)
	}
	if u.Token != "PIV Card" || u.Object != "PIV AUTH key" || string(u.ID) != "\x01\x02" || u.ModulePath != "/usr/lib/opensc-pkcs11.so" || u.PINSource != "file:/run/pin" {
		t.Fatalf("%+v", u)
	}
	if u, err := ParseURI("pkcs11:slot-id=3;id=%AB"); err != nil || *u.SlotID != 3 {
		t.Fatalf("slot-id: %+v %v", u, err)
	}
	for name, c := range map[string]struct{ uri, want string }{
		"not pkcs11":       {"/home/me/key.pem", "begins with"},
		"no token":         {"pkcs11:object=k", "selects no token"},
		"no key":           {"pkcs11:token=t", "selects no key"},
		"pin on the line":  {"pkcs11:token=t;object=k?pin-value=1234", "pin-value is refused"},
		"twice":            {"pkcs11:token=t;token=u;object=k", "given twice"},
		"unknown":          {"pkcs11:token=t;object=k;color=blue", "not one RFC 7512 defines"},
		"unknown query":    {"pkcs11:token=t;object=k?x=1", "not one RFC 7512 defines"},
		"bad escape":       {"pkcs11:token=%zz;object=k", "invalid URL escape"},
		"public key":       {"pkcs11:token=t;object=k;type=public", "type=private"},
		"module by name":   {"pkcs11:token=t;object=k?module-name=opensc", "module-name is not supported"},
		"bad slot":         {"pkcs11:slot-id=-1;object=k", "not a slot number"},
		"no value":         {"pkcs11:token;object=k", "not name=value"},
		"library selector": {"pkcs11:token=t;object=k;library-version=1", "not supported here"},
	} {
		if _, err := ParseURI(c.uri); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
}

func TestPINAndModule(t *testing.T) {
	dir := t.TempDir()
	pin := filepath.Join(dir, "pin")
	if err := os.WriteFile(pin, []byte("4711\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	getenv := func(k string) string { return env[k] }
	u, _ := ParseURI("pkcs11:token=t;object=k?pin-source=file:" + pin)
	if p, err := u.PIN(getenv); err != nil || p != "4711" {
		t.Fatalf("pin-source: %q %v", p, err)
	}
	if _, err := u.Module(getenv); err == nil || !strings.Contains(err.Error(), EnvModule) {
		t.Fatalf("no module: %v", err)
	}
	env[EnvModule] = "/lib/m.so"
	if m, err := u.Module(getenv); err != nil || m != "/lib/m.so" {
		t.Fatalf("module from the environment: %q %v", m, err)
	}
	if err := os.Chmod(pin, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := u.PIN(getenv); err == nil || !strings.Contains(err.Error(), "readable by others") {
		t.Fatalf("a world-readable PIN file: %v", err)
	}
	bare, _ := ParseURI("pkcs11:token=t;object=k")
	if _, err := bare.PIN(getenv); err == nil || !strings.Contains(err.Error(), EnvPIN) {
		t.Fatalf("no PIN: %v", err)
	}
	env[EnvPIN] = "0000"
	if p, err := bare.PIN(getenv); err != nil || p != "0000" {
		t.Fatalf("PIN from the environment: %q %v", p, err)
	}
	web, _ := ParseURI("pkcs11:token=t;object=k?pin-source=https://evil.example/pin")
	if _, err := web.PIN(getenv); err == nil || !strings.Contains(err.Error(), "only a file") {
		t.Fatalf("a PIN from the network: %v", err)
	}
}

func FuzzParseURI(f *testing.F) {
	f.Add("pkcs11:token=t;object=k?module-path=/m.so&pin-source=file:/p")
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseURI(s)
		if err == nil && u.Token == "" && u.Serial == "" && u.SlotID == nil {
			t.Fatalf("accepted a URI that selects no token: %q", s)
		}
	})
}
