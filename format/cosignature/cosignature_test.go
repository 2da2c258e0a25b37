package cosignature

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
)

// The cosignatures in these tests are made the way c2sp.org/tlog-cosignature
// spells it out, with crypto/ed25519 and no torchwood, so that the
// verification (torchwood's) is checked against the spec, not against
// itself.

const origin = "example.org/breakglass"

func seedKey(seed byte) ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, 32))
}

// specKeyID is SHA-256(name || "\n" || 0x04 || public key)[:4].
func specKeyID(name string, pub ed25519.PublicKey) uint32 {
	h := sha256.Sum256(append([]byte(name+"\n\x04"), pub...))
	return binary.BigEndian.Uint32(h[:4])
}

func specVKey(name string, pub ed25519.PublicKey) string {
	return fmt.Sprintf("%s+%08x+%s", name, specKeyID(name, pub), base64.StdEncoding.EncodeToString(append([]byte{4}, pub...)))
}

// specCosign returns the signature line of a v1 cosignature over body at t.
func specCosign(name string, priv ed25519.PrivateKey, t uint64, body string) string {
	msg := fmt.Sprintf("cosignature/v1\ntime %d\n%s", t, body)
	sig := binary.BigEndian.AppendUint32(nil, specKeyID(name, priv.Public().(ed25519.PublicKey)))
	sig = binary.BigEndian.AppendUint64(sig, t)
	sig = append(sig, ed25519.Sign(priv, []byte(msg))...)
	return "— " + name + " " + base64.StdEncoding.EncodeToString(sig) + "\n"
}

// logNote is a checkpoint signed by a log key named by its origin.
func logNote(t *testing.T, origin string, size int, root byte) ([]byte, string) {
	t.Helper()
	skey, _, err := note.GenerateKey(nil, origin)
	if err != nil {
		t.Fatal(err)
	}
	s, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	body := fmt.Sprintf("%s\n%d\n%s\n", origin, size, base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{root}, 32)))
	signed, err := note.Sign(&note.Note{Text: body}, s)
	if err != nil {
		t.Fatal(err)
	}
	return signed, body
}

func mustKey(t *testing.T, vkey string) *Key {
	t.Helper()
	k, err := ParseKey(vkey)
	if err != nil {
		t.Fatalf("ParseKey(%s): %v", vkey, err)
	}
	return k
}

func mustSet(t *testing.T, keys ...*Key) *Set {
	t.Helper()
	s, err := NewSet(keys...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestParseKey(t *testing.T) {
	// Base64 uses '+': a key whose encoding has one must still parse.
	for seed := range byte(64) {
		pub := seedKey(seed).Public().(ed25519.PublicKey)
		vkey := specVKey("witness.example/w", pub)
		if _, err := ParseKey(vkey); err != nil {
			t.Fatalf("ParseKey(%s): %v", vkey, err)
		}
	}
	pub := seedKey(1).Public().(ed25519.PublicKey)
	good := specVKey("witness.example/w1", pub)
	k := mustKey(t, good)
	if k.Name() != "witness.example/w1" || k.String() != good {
		t.Fatalf("parsed %s as %s", good, k)
	}
	if k.ID() != fmt.Sprintf("witness.example/w1+%08x", specKeyID("witness.example/w1", pub)) {
		t.Fatalf("ID %s", k.ID())
	}
	plain, err := note.NewEd25519VerifierKey("witness.example/w1", pub)
	if err != nil {
		t.Fatal(err)
	}
	name, rest, _ := strings.Cut(good, "+")
	hash, key64, _ := strings.Cut(rest, "+")
	for label, vkey := range map[string]string{
		"empty":                 "",
		"no plus":               "witness.example/w1",
		"type 0x01 note key":    plain,
		"wrong key ID":          name + "+00000000+" + key64,
		"uppercase key ID":      name + "+" + strings.ToUpper(hash) + "+" + key64,
		"short key ID":          name + "+" + hash[:6] + "+" + key64,
		"not base64":            name + "+" + hash + "+!!!",
		"short key":             name + "+" + hash + "+" + base64.StdEncoding.EncodeToString(append([]byte{4}, pub[:31]...)),
		"unknown type":          name + "+" + hash + "+" + base64.StdEncoding.EncodeToString(append([]byte{6}, pub...)),
		"space in name":         "witness example+" + hash + "+" + key64,
		"trailing newline":      good + "\n",
		"another name, same ID": "witness.example/w2+" + hash + "+" + key64,
	} {
		if _, err := ParseKey(vkey); err == nil {
			t.Errorf("%s: ParseKey(%q) accepted it", label, vkey)
		}
	}
}

func TestVerifySpecCosignatures(t *testing.T) {
	w1, w2 := seedKey(1), seedKey(2)
	k1 := mustKey(t, specVKey("witness.example/w1", w1.Public().(ed25519.PublicKey)))
	k2 := mustKey(t, specVKey("witness.example/w2", w2.Public().(ed25519.PublicKey)))
	set := mustSet(t, k1, k2)
	signed, body := logNote(t, origin, 20852163, 7)
	at := uint64(time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC).Unix())
	l1 := specCosign("witness.example/w1", w1, at, body)
	l2 := specCosign("witness.example/w2", w2, at+5, body)
	got, err := set.Verify(Append(signed, l1, l2), origin)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Witness != "witness.example/w1" || got[1].Witness != "witness.example/w2" {
		t.Fatalf("cosignatures %+v", got)
	}
	if got[0].Time.Unix() != int64(at) || got[1].Time.Unix() != int64(at+5) || got[0].Line != l1 || got[0].Key != k1.String() {
		t.Fatalf("cosignature %+v", got[0])
	}
	// Each witness counts once, however often its line appears.
	if got, err := set.Verify(Append(signed, l1, l1, l2), origin); err != nil || len(got) != 2 {
		t.Fatalf("repeated line: %d, %v", len(got), err)
	}
	// No cosignature at all is not an error: it is none.
	if got, err := set.Verify(signed, origin); err != nil || len(got) != 0 {
		t.Fatalf("uncosigned: %d, %v", len(got), err)
	}
	// Nor is an empty set.
	if got, err := mustSet(t).Verify(Append(signed, l1), origin); err != nil || len(got) != 0 {
		t.Fatalf("empty set: %d, %v", len(got), err)
	}
}

func TestVerifyRejectsHostileCosignatures(t *testing.T) {
	w1 := seedKey(1)
	name := "witness.example/w1"
	k1 := mustKey(t, specVKey(name, w1.Public().(ed25519.PublicKey)))
	set := mustSet(t, k1)
	signed, body := logNote(t, origin, 42, 7)
	at := uint64(time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC).Unix())
	good := specCosign(name, w1, at, body)

	// A cosignature for another tree of the same log, moved over.
	_, other := logNote(t, origin, 43, 8)
	moved := specCosign(name, w1, at, other)
	// A cosignature for another log's checkpoint with the same size and root.
	_, foreignOrigin := logNote(t, "example.org/other", 42, 7)
	otherLog := specCosign(name, w1, at, foreignOrigin)
	// One whose timestamp was changed after signing.
	raw, _ := base64.StdEncoding.DecodeString(strings.Fields(good)[2])
	binary.BigEndian.PutUint64(raw[4:12], at+3600)
	retimed := "— " + name + " " + base64.StdEncoding.EncodeToString(raw) + "\n"
	// One with a flipped signature bit.
	raw, _ = base64.StdEncoding.DecodeString(strings.Fields(good)[2])
	raw[len(raw)-1] ^= 1
	flipped := "— " + name + " " + base64.StdEncoding.EncodeToString(raw) + "\n"
	// One signed at time zero (the spec forbids omitting the timestamp).
	zero := specCosign(name, w1, 0, body)
	// One made by another key under the witness's name and key ID.
	impostor := seedKey(9)
	raw, _ = base64.StdEncoding.DecodeString(strings.Fields(specCosign(name, impostor, at, body))[2])
	binary.BigEndian.PutUint32(raw[:4], specKeyID(name, w1.Public().(ed25519.PublicKey)))
	impersonated := "— " + name + " " + base64.StdEncoding.EncodeToString(raw) + "\n"

	for label, line := range map[string]string{
		"moved from another tree": moved, "another origin": otherLog, "retimed": retimed,
		"flipped bit": flipped, "zero timestamp": zero, "impersonated": impersonated,
	} {
		got, err := set.Verify(Append(signed, line), origin)
		if err == nil {
			t.Errorf("%s: accepted as %+v", label, got)
			continue
		}
		// A bad line condemns the note even when a good one follows.
		if _, err := set.Verify(Append(signed, line, good), origin); err == nil {
			t.Errorf("%s: accepted before a good line", label)
		}
	}
	// The good line first, then a forged repeat: a witness counts once and
	// its first line is the one verified, as in x/mod/sumdb/note.
	if got, err := set.Verify(Append(signed, good), origin); err != nil || len(got) != 1 {
		t.Fatalf("good line: %d, %v", len(got), err)
	}
	// The checkpoint must be of the origin asked for.
	if _, err := set.Verify(Append(signed, good), "example.org/other"); err == nil {
		t.Fatal("accepted a checkpoint of another origin")
	}
	// Cosignatures by keys outside the set do not count and do not fail.
	foreign := seedKey(3)
	if got, err := set.Verify(Append(signed, specCosign("witness.example/w3", foreign, at, body)), origin); err != nil || len(got) != 0 {
		t.Fatalf("foreign witness: %d, %v", len(got), err)
	}
	// A foreign key that reuses the witness's name (but not its key ID) is
	// another key: ignored.
	if got, err := set.Verify(Append(signed, specCosign(name, foreign, at, body)), origin); err != nil || len(got) != 0 {
		t.Fatalf("foreign key under the witness's name: %d, %v", len(got), err)
	}
	for label, b := range map[string][]byte{
		"not a note":          []byte("hello"),
		"not a checkpoint":    Append([]byte("hello\n\n"), good),
		"control characters":  Append(bytes.Replace(signed, []byte("\n42\n"), []byte("\n4\x002\n"), 1), good),
		"no signature block":  []byte(body),
		"signature not ended": bytes.TrimSuffix(Append(signed, good), []byte("\n")),
	} {
		if _, err := set.Verify(b, origin); err == nil {
			t.Errorf("%s: accepted", label)
		}
	}
}

func TestNewSetRejectsDuplicates(t *testing.T) {
	pub1, pub2 := seedKey(1).Public().(ed25519.PublicKey), seedKey(2).Public().(ed25519.PublicKey)
	a := mustKey(t, specVKey("witness.example/w1", pub1))
	again := mustKey(t, specVKey("witness.example/w1", pub1))
	sameName := mustKey(t, specVKey("witness.example/w1", pub2))
	sameKey := mustKey(t, specVKey("witness.example/w2", pub1))
	for label, keys := range map[string][]*Key{
		"the same key twice":         {a, again},
		"one name, two keys":         {a, sameName},
		"one key under two names":    {a, sameKey},
		"one key under two names, 2": {sameKey, mustKey(t, specVKey("witness.example/w3", pub2)), a},
	} {
		if _, err := NewSet(keys...); err == nil {
			t.Errorf("%s: accepted", label)
		}
	}
	// Why one key under two names must be refused: the v1 message does not
	// include the name, so the same signature verifies under both.
	signed, body := logNote(t, origin, 42, 7)
	line := specCosign("witness.example/w1", seedKey(1), 1_700_000_000, body)
	raw, _ := base64.StdEncoding.DecodeString(strings.Fields(line)[2])
	binary.BigEndian.PutUint32(raw[:4], specKeyID("witness.example/w2", pub1))
	renamed := "— witness.example/w2 " + base64.StdEncoding.EncodeToString(raw) + "\n"
	if got, err := mustSet(t, sameKey).Verify(Append(signed, renamed), origin); err != nil || len(got) != 1 {
		t.Fatalf("the renamed line should verify under the other name: %d, %v", len(got), err)
	}
}

func TestParseLines(t *testing.T) {
	good := "— witness.example/w1 AAAA\n— witness.example/w2 BBBB\n"
	if ls, err := ParseLines([]byte(good)); err != nil || len(ls) != 2 || ls[1] != "— witness.example/w2 BBBB\n" {
		t.Fatalf("%q, %v", ls, err)
	}
	for _, bad := range []string{"", "— witness.example/w1 AAAA", "old 3\n", "— a b c\n", "\n", "— witness.example/w1 AAAA\n\n"} {
		if _, err := ParseLines([]byte(bad)); err == nil {
			t.Errorf("ParseLines(%q) accepted", bad)
		}
	}
}

// C2SP tlog-cosignature: "verifiers MAY reject cosignatures with
// timestamps in the future". Future says which ones are, with the clock
// skew allowed.
func TestFuture(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		at     time.Time
		future bool
	}{
		{now.Add(-time.Hour), false},
		{now, false},
		{now.Add(MaxClockSkew), false},
		{now.Add(MaxClockSkew + time.Second), true},
		{now.Add(365 * 24 * time.Hour), true},
	} {
		if got := (Cosignature{Time: tc.at}).Future(now); got != tc.future {
			t.Errorf("a cosignature at %s, verified at %s: Future %v", tc.at, now, got)
		}
	}
}
