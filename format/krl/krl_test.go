package krl

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

// serialSets exercise every section type OpenSSH's cost model picks: lone
// serials (lists), long runs (ranges), dense clusters (bitmaps), gaps that
// force a new bitmap, serials near 2^64 and overlapping inputs.
var serialSets = map[string][]Range{
	"one":             {Serial(7)},
	"list":            {Serial(1), Serial(1000), Serial(1 << 40), Serial(1<<63 + 5)},
	"range":           {{10, 5000}},
	"two ranges":      {{10, 500}, {100000, 200000}},
	"bitmap":          {Serial(100), Serial(102), Serial(103), Serial(107), Serial(110), Serial(111), Serial(120)},
	"bitmap restart":  {Serial(5), Serial(7), Serial(9), Serial(100005), Serial(100007), Serial(100009)},
	"mixed":           {Serial(3), {20, 90}, Serial(92), Serial(95), Serial(99), Serial(5000), {6000, 6100}, Serial(1 << 50)},
	"overlapping":     {{10, 20}, {15, 30}, Serial(31), {5, 9}, Serial(40)},
	"top of the line": {{^uint64(0) - 3, ^uint64(0)}, Serial(^uint64(0) - 10)},
	"bitmap msb":      {Serial(8), Serial(15)},
	"random":          randomSerials(300),
}

func randomSerials(n int) []Range {
	var out []Range
	base := uint64(1 << 20)
	for range n {
		var b [2]byte
		_, _ = rand.Read(b[:])
		base += uint64(binary.BigEndian.Uint16(b[:])%64) + 1
		out = append(out, Serial(base))
	}
	return out
}

func newCAKey(t *testing.T) (ssh.Signer, ssh.PublicKey) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromSigner(k)
	if err != nil {
		t.Fatal(err)
	}
	return s, s.PublicKey()
}

func TestRoundTrip(t *testing.T) {
	_, ca := newCAKey(t)
	for name, serials := range serialSets {
		t.Run(name, func(t *testing.T) {
			in := &KRL{Version: 42, GeneratedDate: 1700000000, Comment: "broker",
				Certificates: []*CertificateSection{{CA: ca, Serials: serials, KeyIDs: []string{"b", "a", "b"}}}}
			b, err := in.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			out, err := Parse(b)
			if err != nil {
				t.Fatal(err)
			}
			want, _ := coalesce(serials)
			if len(out.Certificates) != 1 || !slices.Equal(out.Certificates[0].Serials, want) {
				t.Fatalf("serials %v, want %v", out.Certificates[0].Serials, want)
			}
			if !slices.Equal(out.Certificates[0].KeyIDs, []string{"a", "b"}) || out.Version != 42 || out.GeneratedDate != 1700000000 || out.Comment != "broker" {
				t.Fatalf("parsed %+v", out)
			}
			again, err := out.Marshal()
			if err != nil || !bytes.Equal(again, b) {
				t.Fatalf("re-encoding differs (%v)", err)
			}
		})
	}
}

func sshKeygen(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("ssh-keygen")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("ssh-keygen is required in CI")
		}
		t.Skip("ssh-keygen not installed")
	}
	return p
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestSameBytesAsSSHKeygen checks Marshal writes exactly what OpenSSH's own
// encoder writes (`ssh-keygen -k`) for the same revocations.
func TestSameBytesAsSSHKeygen(t *testing.T) {
	keygen := sshKeygen(t)
	_, ca := newCAKey(t)
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pub")
	writeFile(t, caFile, ssh.MarshalAuthorizedKey(ca))
	for name, serials := range serialSets {
		t.Run(name, func(t *testing.T) {
			var spec strings.Builder
			for _, r := range serials {
				if r.Lo == r.Hi {
					fmt.Fprintf(&spec, "serial: %d\n", r.Lo)
				} else {
					fmt.Fprintf(&spec, "serial: %d-%d\n", r.Lo, r.Hi)
				}
			}
			spec.WriteString("id: breakglass:x:1:alice\nid: another one\n")
			specFile := filepath.Join(dir, "spec")
			writeFile(t, specFile, []byte(spec.String()))
			out := filepath.Join(dir, "ssh-keygen.krl")
			_ = os.Remove(out)
			if b, err := exec.Command(keygen, "-k", "-f", out, "-s", caFile, "-z", "77", specFile).CombinedOutput(); err != nil {
				t.Fatalf("ssh-keygen -k: %v\n%s", err, b)
			}
			theirs, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			// generated_date is ssh-keygen's clock: take it from its output.
			date := binary.BigEndian.Uint64(theirs[len(Magic)+4+8:])
			k := &KRL{Version: 77, GeneratedDate: date,
				Certificates: []*CertificateSection{{CA: ca, Serials: serials, KeyIDs: []string{"another one", "breakglass:x:1:alice"}}}}
			ours, err := k.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(ours, theirs) {
				t.Fatalf("encodings differ:\nours   %x\ntheirs %x", ours, theirs)
			}
		})
	}
}

// TestSameBytesForKeysAsSSHKeygen covers the explicit key and SHA-256
// sections.
func TestSameBytesForKeysAsSSHKeygen(t *testing.T) {
	keygen := sshKeygen(t)
	dir := t.TempDir()
	var spec strings.Builder
	var keys []ssh.PublicKey
	var hashes [][]byte
	for i := range 6 {
		pub, _, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		pk, _ := ssh.NewPublicKey(pub)
		line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pk)))
		if i%2 == 0 {
			keys = append(keys, pk)
			fmt.Fprintf(&spec, "key: %s\n", line)
		} else {
			h := sha256.Sum256(pk.Marshal())
			hashes = append(hashes, h[:])
			fmt.Fprintf(&spec, "sha256: %s\n", line)
		}
	}
	specFile := filepath.Join(dir, "spec")
	writeFile(t, specFile, []byte(spec.String()))
	out := filepath.Join(dir, "keys.krl")
	if b, err := exec.Command(keygen, "-k", "-f", out, "-z", "3", specFile).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen -k: %v\n%s", err, b)
	}
	theirs, _ := os.ReadFile(out)
	date := binary.BigEndian.Uint64(theirs[len(Magic)+4+8:])
	ours, err := (&KRL{Version: 3, GeneratedDate: date, Keys: keys, SHA256: hashes}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ours, theirs) {
		t.Fatalf("encodings differ:\nours   %x\ntheirs %x", ours, theirs)
	}
}

// TestSSHKeygenAgrees issues certificates and asks `ssh-keygen -Q` about
// each against our KRL: revoked serials, key IDs and CA keys say REVOKED,
// everything else ok.
func TestSSHKeygenAgrees(t *testing.T) {
	keygen := sshKeygen(t)
	dir := t.TempDir()
	signer, ca := newCAKey(t)
	otherSigner, otherCA := newCAKey(t)
	_ = otherCA
	revokedCA, revokedCAPub := newCAKey(t)
	k := &KRL{Version: 1, GeneratedDate: 1700000000, Certificates: []*CertificateSection{
		{CA: ca, Serials: serialSets["mixed"], KeyIDs: []string{"breakglass:revoked:1:alice"}},
		{Serials: []Range{Serial(424242)}},
	}, Keys: []ssh.PublicKey{revokedCAPub}}
	b, err := k.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	krlFile := filepath.Join(dir, "revoked.krl")
	writeFile(t, krlFile, b)
	parsed, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		ca      ssh.Signer
		serial  uint64
		keyID   string
		revoked bool
	}{
		{signer, 3, "a", true},
		{signer, 4, "a", false},
		{signer, 20, "a", true},
		{signer, 55, "a", true},
		{signer, 90, "a", true},
		{signer, 91, "a", false},
		{signer, 92, "a", true},
		{signer, 95, "a", true},
		{signer, 96, "a", false},
		{signer, 6050, "a", true},
		{signer, 1 << 50, "a", true},
		{signer, 1<<50 + 1, "a", false},
		{signer, 0, "a", false},
		{signer, 12345, "breakglass:revoked:1:alice", true},
		{otherSigner, 3, "a", false},                          // another CA's serial 3
		{otherSigner, 424242, "a", true},                      // the any-CA section
		{otherSigner, 7, "breakglass:revoked:1:alice", false}, // key IDs are per CA
		{revokedCA, 99999, "a", true},                         // a revoked CA key revokes all it signed
	}
	for i, c := range cases {
		pub, _, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		pk, _ := ssh.NewPublicKey(pub)
		cert := &ssh.Certificate{Key: pk, Serial: c.serial, CertType: ssh.UserCert, KeyId: c.keyID, ValidPrincipals: []string{"breakglass"},
			ValidAfter: 0, ValidBefore: ssh.CertTimeInfinity}
		if err := cert.SignCert(rand.Reader, c.ca); err != nil {
			t.Fatal(err)
		}
		certFile := filepath.Join(dir, fmt.Sprintf("c%d-cert.pub", i))
		writeFile(t, certFile, ssh.MarshalAuthorizedKey(cert))
		out, _ := exec.Command(keygen, "-Q", "-f", krlFile, certFile).CombinedOutput()
		theirs := strings.Contains(string(out), "REVOKED")
		if !theirs && !strings.Contains(string(out), ": ok") {
			t.Fatalf("case %d: ssh-keygen -Q said %q", i, out)
		}
		if theirs != c.revoked {
			t.Errorf("case %d (serial %d, key id %q): ssh-keygen says revoked=%v, want %v (%s)", i, c.serial, c.keyID, theirs, c.revoked, out)
		}
		if got := parsed.IsRevoked(cert); got != c.revoked {
			t.Errorf("case %d: IsRevoked = %v, want %v", i, got, c.revoked)
		}
	}
}

// TestParseReadsSSHKeygenOutput parses what OpenSSH wrote.
func TestParseReadsSSHKeygenOutput(t *testing.T) {
	keygen := sshKeygen(t)
	dir := t.TempDir()
	_, ca := newCAKey(t)
	caFile := filepath.Join(dir, "ca.pub")
	writeFile(t, caFile, ssh.MarshalAuthorizedKey(ca))
	specFile := filepath.Join(dir, "spec")
	writeFile(t, specFile, []byte("serial: 5\nserial: 9-12\nserial: 14\nid: x\n"))
	out := filepath.Join(dir, "k.krl")
	if b, err := exec.Command(keygen, "-k", "-f", out, "-s", caFile, specFile).CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	b, _ := os.ReadFile(out)
	k, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	want := []Range{Serial(5), {9, 12}, Serial(14)}
	if len(k.Certificates) != 1 || !slices.Equal(k.Certificates[0].Serials, want) || !bytes.Equal(k.Certificates[0].CA.Marshal(), ca.Marshal()) ||
		!slices.Equal(k.Certificates[0].KeyIDs, []string{"x"}) {
		t.Fatalf("parsed %+v", k.Certificates[0])
	}
}

func TestMarshalRefuses(t *testing.T) {
	_, ca := newCAKey(t)
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	pk, _ := ssh.NewPublicKey(pub)
	s, _ := newCAKey(t)
	cert := &ssh.Certificate{Key: pk, CertType: ssh.UserCert, ValidBefore: ssh.CertTimeInfinity}
	if err := cert.SignCert(rand.Reader, s); err != nil {
		t.Fatal(err)
	}
	for name, k := range map[string]*KRL{
		"serial 0":       {Certificates: []*CertificateSection{{CA: ca, Serials: []Range{Serial(0)}}}},
		"empty range":    {Certificates: []*CertificateSection{{CA: ca, Serials: []Range{{9, 3}}}}},
		"NUL in comment": {Comment: "a\x00b"},
		"NUL in key id":  {Certificates: []*CertificateSection{{CA: ca, KeyIDs: []string{"a\x00"}}}},
		"CA twice":       {Certificates: []*CertificateSection{{CA: ca, Serials: []Range{Serial(1)}}, {CA: ca, Serials: []Range{Serial(2)}}}},
		"cert as CA":     {Certificates: []*CertificateSection{{CA: cert}}},
		"short hash":     {SHA256: [][]byte{{1, 2, 3}}},
		"nil key":        {Keys: []ssh.PublicKey{nil}},
	} {
		if _, err := k.Marshal(); err == nil {
			t.Errorf("%s: Marshal accepted it", name)
		}
	}
}

func header() []byte {
	b := []byte(Magic)
	b = binary.BigEndian.AppendUint32(b, 1)
	b = binary.BigEndian.AppendUint64(b, 1)
	b = binary.BigEndian.AppendUint64(b, 2)
	b = binary.BigEndian.AppendUint64(b, 0)
	b = appendString(b, nil)
	return appendString(b, nil)
}

func section(typ byte, body []byte) []byte { return append([]byte{typ}, appendString(nil, body)...) }

func certSection(subs ...[]byte) []byte {
	body := appendString(nil, nil)
	body = appendString(body, nil)
	for _, s := range subs {
		body = append(body, s...)
	}
	return section(sectionCertificates, body)
}

func TestParseRefusesHostileInput(t *testing.T) {
	u64 := func(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
	ext := func(critical byte) []byte {
		e := appendString(nil, []byte("x@example.com"))
		e = append(e, critical)
		return appendString(e, nil)
	}
	cases := map[string][]byte{
		"empty":                 nil,
		"bad magic":             []byte("SSHKRL\n\x01rest"),
		"wrong version":         append([]byte(Magic), 0, 0, 0, 2),
		"truncated header":      header()[:20],
		"string past the end":   append(header(), sectionExplicitKey, 0xff, 0xff, 0xff, 0xff),
		"unknown section":       append(header(), section(9, nil)...),
		"signature section":     append(header(), section(sectionSignature, nil)...),
		"critical extension":    append(header(), section(sectionExtension, ext(1))...),
		"extension trailing":    append(header(), section(sectionExtension, append(ext(0), 1))...),
		"serial 0 in a list":    append(header(), certSection(section(certSerialList, u64(0)))...),
		"list trailing bytes":   append(header(), certSection(section(certSerialList, append(u64(5), 1)))...),
		"empty range":           append(header(), certSection(section(certSerialRange, append(u64(9), u64(3)...)))...),
		"range from 0":          append(header(), certSection(section(certSerialRange, append(u64(0), u64(3)...)))...),
		"negative bitmap":       append(header(), certSection(section(certSerialBitmap, append(u64(5), appendString(nil, []byte{0x80})...)))...),
		"bitmap serial 0":       append(header(), certSection(section(certSerialBitmap, append(u64(0), appendString(nil, []byte{1})...)))...),
		"bitmap wraps":          append(header(), certSection(section(certSerialBitmap, append(u64(^uint64(0)), appendString(nil, []byte{3})...)))...),
		"unknown cert section":  append(header(), certSection(section(0x30, nil))...),
		"critical cert ext":     append(header(), certSection(section(certExtension, ext(1)))...),
		"empty key id section":  append(header(), certSection(section(certKeyID, nil))...),
		"NUL in key id":         append(header(), certSection(section(certKeyID, appendString(nil, []byte("a\x00"))))...),
		"bad CA key":            append(header(), section(sectionCertificates, append(appendString(nil, []byte("junk")), appendString(nil, nil)...))...),
		"garbage explicit key":  append(header(), section(sectionExplicitKey, appendString(nil, []byte("junk")))...),
		"empty key section":     append(header(), section(sectionExplicitKey, nil)...),
		"short sha256":          append(header(), section(sectionFingerprintSHA25, appendString(nil, []byte{1, 2}))...),
		"section trailing byte": append(header(), section(sectionFingerprintSHA25, append(appendString(nil, make([]byte, 32)), 7))...),
		"huge":                  make([]byte, MaxSize+1),
	}
	for name, b := range cases {
		if _, err := Parse(b); err == nil {
			t.Errorf("%s: Parse accepted it", name)
		}
	}
	// A non-critical extension is ignored, as OpenSSH ignores it.
	if _, err := Parse(append(header(), section(sectionExtension, ext(0))...)); err != nil {
		t.Errorf("non-critical extension: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(header())
	f.Add(append(header(), certSection(section(certSerialBitmap, append(binary.BigEndian.AppendUint64(nil, 5), appendString(nil, []byte{0x7f, 0xff})...)))...))
	f.Add(append(header(), certSection(section(certSerialRange, append(binary.BigEndian.AppendUint64(nil, 1), binary.BigEndian.AppendUint64(nil, 1<<62)...)))...))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := Parse(b)
		if err != nil {
			return
		}
		// Whatever parses re-encodes canonically and means the same.
		enc, err := k.Marshal()
		if err != nil {
			t.Fatalf("a parsed KRL does not encode: %v", err)
		}
		k2, err := Parse(enc)
		if err != nil {
			t.Fatalf("our own encoding does not parse: %v", err)
		}
		enc2, _ := k2.Marshal()
		if !bytes.Equal(enc, enc2) {
			t.Fatal("encoding is not stable")
		}
	})
}
