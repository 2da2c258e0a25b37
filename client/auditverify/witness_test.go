package auditverify

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
)

// specCosignature is a C2SP tlog-cosignature/v1 line over the checkpoint
// body at t, made as the spec spells it out (crypto/ed25519 only).
func specCosignature(name string, priv ed25519.PrivateKey, t time.Time, body string) (line, vkey string) {
	pub := priv.Public().(ed25519.PublicKey)
	h := sha256.Sum256(append([]byte(name+"\n\x04"), pub...))
	id := binary.BigEndian.Uint32(h[:4])
	msg := fmt.Sprintf("cosignature/v1\ntime %d\n%s", t.Unix(), body)
	sig := binary.BigEndian.AppendUint32(nil, id)
	sig = binary.BigEndian.AppendUint64(sig, uint64(t.Unix()))
	sig = append(sig, ed25519.Sign(priv, []byte(msg))...)
	return "— " + name + " " + base64.StdEncoding.EncodeToString(sig) + "\n",
		fmt.Sprintf("%s+%08x+%s", name, id, base64.StdEncoding.EncodeToString(append([]byte{4}, pub...)))
}

// A cosignature dated ahead of the auditor's clock does not count towards
// the witness quorum (C2SP tlog-cosignature: verifiers MAY reject
// timestamps in the future); one dated now does.
func TestFutureCosignaturesDoNotCount(t *testing.T) {
	l := theFuzzLog(t)
	entries := l.build(1800)
	cp, _ := l.checkpoint(entries)
	body := string(cp[:bytes.Index(cp, []byte("\n\n"))+1])
	priv := ed25519.NewKeyFromSeed(fuzzSeed("witness w1"))
	for _, tc := range []struct {
		name string
		at   time.Time
		want string // "" when it verifies
	}{
		{"dated now", time.Now(), ""},
		{"dated a minute ahead (clock skew)", time.Now().Add(time.Minute), ""},
		{"dated a day ahead", time.Now().Add(24 * time.Hour), "not counted, dated more than 5m0s ahead of this machine's clock: witness.example/w1 at "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			line, vkey := specCosignature("witness.example/w1", priv, tc.at, body)
			o := l.options(l.exportOf(entries), append(append([]byte(nil), cp...), line...), nil)
			o.Witnesses, o.WitnessQuorum = []string{vkey}, 1
			s, err := Verify(o)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("verify: %v", err)
			case tc.want == "" && (len(s.Cosigners) != 1 || s.Cosigners[0].Witness != "witness.example/w1"):
				t.Fatalf("cosigners %+v", s.Cosigners)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}
