package krl

import (
	"bytes"
	"crypto/sha1" //nolint:gosec // PROTOCOL.krl defines SHA-1 fingerprint sections.
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"golang.org/x/crypto/ssh"
)

// ErrFormat is wrapped by every error of Parse.
var ErrFormat = errors.New("krl: invalid format")

// MaxSize bounds the KRLs Parse reads.
const MaxSize = 64 << 20

// Parse decodes a KRL as OpenSSH's ssh_krl_from_blob does: unknown
// sections, critical extensions and trailing bytes in any section are
// errors, non-critical extensions are ignored. Serials come back as sorted,
// coalesced ranges, one certificate section per CA in the order first seen.
// Signature sections are refused: OpenSSH 9.4 and later refuse them too,
// and nothing here could check them.
func Parse(b []byte) (*KRL, error) {
	if len(b) > MaxSize {
		return nil, fmt.Errorf("%w: %d bytes is more than %d", ErrFormat, len(b), MaxSize)
	}
	if !bytes.HasPrefix(b, []byte(Magic)) {
		return nil, fmt.Errorf("%w: bad magic (not a KRL)", ErrFormat)
	}
	r := reader(b[len(Magic):])
	k := &KRL{}
	if err := parseHeader(&r, k); err != nil {
		return nil, err
	}
	p := sections{byCA: map[string]*CertificateSection{}}
	for len(r) > 0 {
		if err := p.parse(&r, k); err != nil {
			return nil, err
		}
	}
	return p.finish(k)
}

// parseHeader reads the header after the magic into k.
func parseHeader(r *reader, k *KRL) error {
	ver, err := r.u32()
	if err != nil {
		return err
	}
	if ver != FormatVersion {
		return fmt.Errorf("%w: unsupported format version %d", ErrFormat, ver)
	}
	if k.Version, err = r.u64(); err != nil {
		return err
	}
	if k.GeneratedDate, err = r.u64(); err != nil {
		return err
	}
	if _, err = r.u64(); err != nil { // flags: none are defined; OpenSSH ignores them
		return err
	}
	if _, err = r.str(); err != nil {
		return err
	}
	k.Comment, err = r.cstring()
	return err
}

// sections is what Parse gathers across sections before sorting it.
type sections struct {
	byCA                 map[string]*CertificateSection
	keys, sha1s, sha256s [][]byte
}

// parse reads one section.
func (p *sections) parse(r *reader, k *KRL) error {
	typ, err := r.u8()
	if err != nil {
		return err
	}
	if typ == sectionSignature {
		return fmt.Errorf("%w: signed KRLs are not supported (OpenSSH 9.4 and later refuse them too)", ErrFormat)
	}
	data, err := r.str()
	if err != nil {
		return err
	}
	sect := reader(data)
	switch typ {
	case sectionCertificates:
		err = parseCertificates(&sect, k, p.byCA)
	case sectionExplicitKey:
		p.keys, err = blobs(&sect, p.keys, 0)
	case sectionFingerprintSHA1:
		p.sha1s, err = blobs(&sect, p.sha1s, sha1.Size)
	case sectionFingerprintSHA25:
		p.sha256s, err = blobs(&sect, p.sha256s, sha256.Size)
	case sectionExtension:
		err = extension(&sect, "extension section")
	default:
		return fmt.Errorf("%w: unsupported section type %d", ErrFormat, typ)
	}
	if err != nil {
		return err
	}
	if len(sect) > 0 {
		return fmt.Errorf("%w: section %d has trailing data", ErrFormat, typ)
	}
	return nil
}

// finish sorts and de-duplicates what the sections listed, and parses the
// revoked keys.
func (p *sections) finish(k *KRL) (*KRL, error) {
	for _, cs := range k.Certificates {
		cs.Serials, _ = coalesce(cs.Serials) // every range was checked non-empty and non-zero
		slices.Sort(cs.KeyIDs)
		cs.KeyIDs = slices.Compact(cs.KeyIDs)
	}
	slices.SortFunc(p.keys, bytes.Compare)
	for _, kb := range slices.CompactFunc(p.keys, bytes.Equal) {
		pk, err := ssh.ParsePublicKey(kb)
		if err != nil {
			return nil, fmt.Errorf("%w: a revoked key does not parse: %w", ErrFormat, err)
		}
		if isCert(pk) {
			return nil, fmt.Errorf("%w: a revoked key is a certificate, not a plain key", ErrFormat)
		}
		k.Keys = append(k.Keys, pk)
	}
	for _, h := range []*[][]byte{&p.sha1s, &p.sha256s} {
		slices.SortFunc(*h, bytes.Compare)
		*h = slices.CompactFunc(*h, bytes.Equal)
	}
	k.SHA1, k.SHA256 = p.sha1s, p.sha256s
	return k, nil
}

func parseCertificates(r *reader, k *KRL, byCA map[string]*CertificateSection) error {
	cs, err := certificateSection(r, k, byCA)
	if err != nil {
		return err
	}
	for len(*r) > 0 {
		typ, err := r.u8()
		if err != nil {
			return err
		}
		data, err := r.str()
		if err != nil {
			return err
		}
		sub := reader(data)
		if err := parseCertSubsection(&sub, typ, cs); err != nil {
			return err
		}
		if len(sub) > 0 {
			return fmt.Errorf("%w: certificate section 0x%02x has trailing data", ErrFormat, typ)
		}
	}
	return nil
}

// certificateSection reads a certificate section's CA and returns the
// section of that CA, new when it is the first one seen.
func certificateSection(r *reader, k *KRL, byCA map[string]*CertificateSection) (*CertificateSection, error) {
	caBlob, err := r.str()
	if err != nil {
		return nil, err
	}
	if _, err := r.str(); err != nil { // reserved
		return nil, err
	}
	if cs := byCA[string(caBlob)]; cs != nil {
		return cs, nil
	}
	cs := &CertificateSection{}
	if len(caBlob) > 0 {
		if cs.CA, err = ssh.ParsePublicKey(caBlob); err != nil {
			return nil, fmt.Errorf("%w: the CA key does not parse: %w", ErrFormat, err)
		}
		if isCert(cs.CA) {
			return nil, fmt.Errorf("%w: the CA key is a certificate", ErrFormat)
		}
	}
	byCA[string(caBlob)] = cs
	k.Certificates = append(k.Certificates, cs)
	return cs, nil
}

// parseCertSubsection reads one subsection of a certificate section into
// cs.
func parseCertSubsection(sub *reader, typ byte, cs *CertificateSection) error {
	switch typ {
	case certSerialList:
		for len(*sub) > 0 {
			s, err := sub.u64()
			if err != nil {
				return err
			}
			if s == 0 {
				return fmt.Errorf("%w: serial 0 in a serial list", ErrFormat)
			}
			cs.Serials = append(cs.Serials, Serial(s))
		}
	case certSerialRange:
		lo, err := sub.u64()
		if err != nil {
			return err
		}
		hi, err := sub.u64()
		if err != nil {
			return err
		}
		if lo == 0 || lo > hi {
			return fmt.Errorf("%w: invalid serial range %d-%d", ErrFormat, lo, hi)
		}
		cs.Serials = append(cs.Serials, Range{lo, hi})
	case certSerialBitmap:
		return parseSerialBitmap(sub, cs)
	case certKeyID:
		if len(*sub) == 0 {
			return fmt.Errorf("%w: an empty key ID section", ErrFormat)
		}
		for len(*sub) > 0 {
			id, err := sub.cstring()
			if err != nil {
				return err
			}
			cs.KeyIDs = append(cs.KeyIDs, id)
		}
	case certExtension:
		return extension(sub, "certificate extension subsection")
	default:
		return fmt.Errorf("%w: unsupported certificate section type 0x%02x", ErrFormat, typ)
	}
	return nil
}

// parseSerialBitmap reads a serial bitmap subsection into cs.
func parseSerialBitmap(sub *reader, cs *CertificateSection) error {
	off, err := sub.u64()
	if err != nil {
		return err
	}
	bits, err := sub.mpint()
	if err != nil {
		return err
	}
	if len(bits) > maxBitmapBytes {
		return fmt.Errorf("%w: a serial bitmap of %d bytes", ErrFormat, len(bits))
	}
	cs.Serials, err = bitmapRanges(cs.Serials, off, bits)
	return err
}

// bitmapRanges appends the runs of set bits of a big-endian bitmap whose
// bit N is serial off+N.
func bitmapRanges(out []Range, off uint64, be []byte) ([]Range, error) {
	n := uint64(len(be)) * 8
	inRun := false
	var lo uint64
	for i := uint64(0); i < n; i++ {
		set := be[len(be)-1-int(i/8)]&(1<<(i%8)) != 0
		if set {
			if i > 0 && off+i == 0 {
				return nil, fmt.Errorf("%w: a serial bitmap wraps around 2^64", ErrFormat)
			}
			if off+i == 0 {
				return nil, fmt.Errorf("%w: serial 0 in a serial bitmap", ErrFormat)
			}
			if !inRun {
				lo, inRun = off+i, true
			}
			continue
		}
		if inRun {
			out = append(out, Range{lo, off + i - 1})
			inRun = false
		}
	}
	if inRun {
		out = append(out, Range{lo, off + n - 1})
	}
	return out, nil
}

func blobs(r *reader, into [][]byte, size int) ([][]byte, error) {
	if len(*r) == 0 {
		return nil, fmt.Errorf("%w: an empty key or hash section", ErrFormat)
	}
	for len(*r) > 0 {
		b, err := r.str()
		if err != nil {
			return nil, err
		}
		if size != 0 && len(b) != size {
			return nil, fmt.Errorf("%w: a %d-byte hash where %d bytes belong", ErrFormat, len(b), size)
		}
		into = append(into, slices.Clone(b))
	}
	return into, nil
}

func extension(r *reader, what string) error {
	name, err := r.cstring()
	if err != nil {
		return err
	}
	critical, err := r.u8()
	if err != nil {
		return err
	}
	if _, err := r.str(); err != nil {
		return err
	}
	if len(*r) > 0 {
		return fmt.Errorf("%w: %s %q has trailing data", ErrFormat, what, name)
	}
	if critical != 0 {
		return fmt.Errorf("%w: unsupported critical %s %q", ErrFormat, what, name)
	}
	return nil
}

// reader consumes SSH wire types (RFC 4251 §5).
type reader []byte

var errShort = fmt.Errorf("%w: truncated", ErrFormat)

func (r *reader) u8() (byte, error) {
	if len(*r) < 1 {
		return 0, errShort
	}
	v := (*r)[0]
	*r = (*r)[1:]
	return v, nil
}

func (r *reader) u32() (uint32, error) {
	if len(*r) < 4 {
		return 0, errShort
	}
	v := binary.BigEndian.Uint32(*r)
	*r = (*r)[4:]
	return v, nil
}

func (r *reader) u64() (uint64, error) {
	if len(*r) < 8 {
		return 0, errShort
	}
	v := binary.BigEndian.Uint64(*r)
	*r = (*r)[8:]
	return v, nil
}

func (r *reader) str() ([]byte, error) {
	n, err := r.u32()
	if err != nil {
		return nil, err
	}
	if uint64(n) > uint64(len(*r)) {
		return nil, errShort
	}
	v := (*r)[:n]
	*r = (*r)[n:]
	return v, nil
}

// cstring is a string that must not hold a NUL (sshbuf_get_cstring).
func (r *reader) cstring() (string, error) {
	b, err := r.str()
	if err != nil {
		return "", err
	}
	if bytes.IndexByte(b, 0) >= 0 {
		return "", fmt.Errorf("%w: a string contains a NUL byte", ErrFormat)
	}
	return string(b), nil
}

// mpint is sshbuf_get_bignum2_bytes_direct: negative numbers are refused,
// leading zeros dropped.
func (r *reader) mpint() ([]byte, error) {
	b, err := r.str()
	if err != nil {
		return nil, err
	}
	if len(b) > 0 && b[0]&0x80 != 0 {
		return nil, fmt.Errorf("%w: a negative bitmap", ErrFormat)
	}
	for len(b) > 0 && b[0] == 0 {
		b = b[1:]
	}
	return b, nil
}

// IsRevoked reports whether the KRL revokes key, as OpenSSH's
// ssh_krl_check_key decides: by the plain key's hashes or blob, and for a
// certificate by its serial or key ID under its CA (or any CA), and by its
// CA key being revoked.
func (k *KRL) IsRevoked(key ssh.PublicKey) bool {
	if k.keyRevoked(key) {
		return true
	}
	if c, ok := key.(*ssh.Certificate); ok {
		return k.keyRevoked(c.SignatureKey)
	}
	return false
}

func (k *KRL) keyRevoked(key ssh.PublicKey) bool {
	blob := plainBlob(key)
	s1 := sha1.Sum(blob) //nolint:gosec // the format's own SHA-1 sections
	s256 := sha256.Sum256(blob)
	if slices.ContainsFunc(k.SHA1, func(h []byte) bool { return bytes.Equal(h, s1[:]) }) ||
		slices.ContainsFunc(k.SHA256, func(h []byte) bool { return bytes.Equal(h, s256[:]) }) {
		return true
	}
	for _, pk := range k.Keys {
		if bytes.Equal(plainBlob(pk), blob) {
			return true
		}
	}
	c, ok := key.(*ssh.Certificate)
	if !ok {
		return false
	}
	for _, cs := range k.Certificates {
		if cs.CA != nil && !bytes.Equal(cs.CA.Marshal(), plainBlob(c.SignatureKey)) {
			continue
		}
		if slices.Contains(cs.KeyIDs, c.KeyId) {
			return true
		}
		if c.Serial == 0 {
			continue
		}
		for _, r := range cs.Serials {
			if r.Lo <= c.Serial && c.Serial <= r.Hi {
				return true
			}
		}
	}
	return false
}
