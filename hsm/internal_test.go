package hsm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/pkcs11"
)

func TestConfigValidate(t *testing.T) {
	one := uint(1)
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"label", Config{TokenLabel: "a"}, ""},
		{"serial", Config{TokenSerial: "a"}, ""},
		{"slot", Config{Slot: &one}, ""},
		{"none", Config{}, "no token selected"},
		{"two", Config{TokenLabel: "a", TokenSerial: "b"}, "exactly one"},
		{"three", Config{TokenLabel: "a", TokenSerial: "b", Slot: &one}, "exactly one"},
		{"two pin sources", Config{TokenLabel: "a", PINFile: "f", PINEnv: "E"}, "at most one"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("Validate() = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestReadPIN(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good", "s3cret\n", 0o600)
	readOnly := write("ro", "s3cret", 0o400)
	group := write("group", "s3cret", 0o640)
	world := write("world", "s3cret", 0o604)
	groupWrite := write("gw", "s3cret", 0o620)
	empty := write("empty", "\n", 0o600)
	t.Setenv("BG_TEST_PIN", "fromenv")
	t.Setenv(DefaultPINEnv, "default")
	tests := []struct {
		name    string
		cfg     Config
		want    string
		wantErr string
	}{
		{"file", Config{PINFile: good}, "s3cret", ""},
		{"read-only file", Config{PINFile: readOnly}, "s3cret", ""},
		{"group readable", Config{PINFile: group}, "", "chmod 600"},
		{"world readable", Config{PINFile: world}, "", "chmod 600"},
		{"group writable", Config{PINFile: groupWrite}, "", "chmod 600"},
		{"empty file", Config{PINFile: empty}, "", "empty"},
		{"missing file", Config{PINFile: filepath.Join(dir, "nope")}, "", "does not exist"},
		{"directory", Config{PINFile: dir}, "", "not a regular file"},
		{"named env", Config{PINEnv: "BG_TEST_PIN"}, "fromenv", ""},
		{"default env", Config{}, "default", ""},
		{"unset env", Config{PINEnv: "BG_TEST_NOT_SET"}, "", "$BG_TEST_NOT_SET"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.cfg.ReadPIN()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, ErrPINSource) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), "s3cret") {
					t.Fatalf("error leaks the PIN: %v", err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ReadPIN() = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestPurposeSubjectRoundTrip(t *testing.T) {
	for _, p := range Purposes {
		if got := purposeFromSubject(purposeSubject(p, "label-"+string(p))); got != p {
			t.Errorf("%s: round trip gave %q", p, got)
		}
	}
	for _, bad := range [][]byte{nil, {}, {0x30}, []byte("token"), {0x30, 0x00}} {
		if got := purposeFromSubject(bad); got != "" {
			t.Errorf("subject %x parsed as %q", bad, got)
		}
	}
}

func TestULongs(t *testing.T) {
	got := decodeULongs(ulongs(pkcs11.CKM_ECDSA, ckmEdDSA))
	if len(got) != 2 || got[0] != pkcs11.CKM_ECDSA || got[1] != ckmEdDSA {
		t.Fatalf("round trip = %v", got)
	}
}

func TestReopenClassification(t *testing.T) {
	for code, want := range map[uint]bool{
		pkcs11.CKR_SESSION_HANDLE_INVALID:   true,
		pkcs11.CKR_SESSION_CLOSED:           true,
		pkcs11.CKR_DEVICE_ERROR:             true,
		pkcs11.CKR_DEVICE_REMOVED:           true,
		pkcs11.CKR_TOKEN_NOT_PRESENT:        true,
		pkcs11.CKR_USER_NOT_LOGGED_IN:       true,
		pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED: true,
		pkcs11.CKR_KEY_HANDLE_INVALID:       true,
		pkcs11.CKR_OBJECT_HANDLE_INVALID:    true,
		pkcs11.CKR_PIN_INCORRECT:            false,
		pkcs11.CKR_MECHANISM_INVALID:        false,
		pkcs11.CKR_DATA_LEN_RANGE:           false,
	} {
		err := error(pkcs11.Error(code))
		if got := needsReopen(err); got != want {
			t.Errorf("needsReopen(%v) = %t", err, got)
		}
		// Wrapped errors classify the same.
		if got := needsReopen(errors.Join(errors.New("ctx"), err)); got != want {
			t.Errorf("needsReopen(wrapped %v) = %t", err, got)
		}
	}
}

// With every slot taken by a hung call, a signature fails fast with
// ErrUnavailable at its deadline instead of queueing forever, and a full
// queue refuses at once.
func TestSlotsFailFast(t *testing.T) {
	// No worker ever takes a job: both slots are held, as two hung
	// library calls would hold them.
	m := newModule(Config{SigningSlots: 2, SignTimeout: 50 * time.Millisecond, MaxQueue: 1})
	k := &Key{m: m, info: KeyInfo{Label: "k", Algorithm: EdDSA, Purpose: PurposeCheckpoint}}
	start := time.Now()
	_, err := k.SignContext(context.Background(), []byte("x"), nil)
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
	if waited := time.Since(start); waited > 5*time.Second {
		t.Fatalf("waited %s for a slot", waited)
	}
	// Fill the queue with one waiter; the next is refused without waiting.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := k.SignContext(ctx, []byte("x"), nil)
		done <- err
	}()
	for m.queued.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	_, err = k.SignContext(context.Background(), []byte("x"), nil)
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "already waiting") {
		t.Fatalf("over-full queue: %v", err)
	}
	cancel()
	if err := <-done; !errors.Is(err, ErrUnavailable) {
		t.Fatalf("cancelled waiter: %v", err)
	}
	if st := m.Stats(); st.Rejected != 3 {
		t.Errorf("rejected = %d, want 3", st.Rejected)
	}
}

// Closing the module releases a signature still waiting for a worker at
// once, instead of at its deadline.
func TestCloseReleasesWaiters(t *testing.T) {
	m := newModule(Config{SigningSlots: 1, SignTimeout: time.Hour, MaxQueue: 4})
	k := &Key{m: m, info: KeyInfo{Label: "k", Algorithm: EdDSA, Purpose: PurposeCheckpoint}}
	done := make(chan error, 1)
	go func() {
		_, err := k.SignContext(context.Background(), []byte("x"), nil)
		done <- err
	}()
	for m.queued.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("waiter after Close: %v", err)
	}
	if _, err := k.SignContext(context.Background(), []byte("x"), nil); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("sign after Close: %v", err)
	}
	if q := m.Stats().Queued; q != 0 {
		t.Errorf("queued = %d after Close, want 0", q)
	}
}
