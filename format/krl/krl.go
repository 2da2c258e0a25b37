// Package krl reads and writes OpenSSH key revocation lists, the binary
// format of OpenSSH's PROTOCOL.krl that sshd's RevokedKeys and
// `ssh-keygen -Q` read. Marshal writes the same bytes as OpenSSH's own
// encoder (krl.c, ssh_krl_to_blob) for the same revocations: serials are
// coalesced into ranges and each run is written as the cheapest of a list,
// a range or a bitmap section by OpenSSH's cost model; key IDs, keys and
// hashes are sorted. Parse accepts what ssh_krl_from_blob accepts, except
// signature sections, which OpenSSH no longer loads either.
//
// A KRL needs no signature: its integrity comes from the channel it is
// fetched over, so a broker can regenerate it while its HSM is down.
package krl

import (
	"bytes"
	"crypto/sha1" //nolint:gosec // PROTOCOL.krl defines SHA-1 fingerprint sections; they are read, never relied on alone.
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"

	"golang.org/x/crypto/ssh"
)

// Magic is the first eight bytes of every KRL ("SSHKRL\n\0").
const Magic = "SSHKRL\n\x00"

// FormatVersion is the only KRL format version.
const FormatVersion = 1

// Section types of PROTOCOL.krl §1.
const (
	sectionCertificates     = 1
	sectionExplicitKey      = 2
	sectionFingerprintSHA1  = 3
	sectionSignature        = 4
	sectionFingerprintSHA25 = 5
	sectionExtension        = 255
)

// Certificate subsection types of PROTOCOL.krl §2.
const (
	certSerialList   = 0x20
	certSerialRange  = 0x21
	certSerialBitmap = 0x22
	certKeyID        = 0x23
	certExtension    = 0x39
)

// maxBitmapBytes is the largest bitmap OpenSSH reads (BITMAP_MAX bits).
const maxBitmapBytes = (1 << 24) / 8

// KRL is a key revocation list.
type KRL struct {
	// Version increases each time the KRL changes (krl_version).
	Version uint64
	// GeneratedDate is when it was made, in seconds since the Unix epoch.
	GeneratedDate uint64
	// Comment is free text without NUL bytes.
	Comment string
	// Certificates revoke certificates per CA, in the order given.
	Certificates []*CertificateSection
	// Keys revokes plain public keys (and every certificate they are the
	// key of, and, for a CA key, every certificate it signed).
	Keys []ssh.PublicKey
	// SHA1 and SHA256 revoke plain keys by the hash of their wire blob.
	SHA1   [][]byte
	SHA256 [][]byte
}

// CertificateSection revokes certificates signed by one CA.
type CertificateSection struct {
	// CA is the CA key; nil means certificates of every CA (useful for key
	// IDs).
	CA ssh.PublicKey
	// Serials are the revoked serial numbers, as inclusive ranges. They
	// may overlap; serial 0 cannot be revoked (it means "no serial").
	Serials []Range
	// KeyIDs revoke certificates by their key ID.
	KeyIDs []string
}

// Range is the inclusive range of serials Lo..Hi.
type Range struct{ Lo, Hi uint64 }

// Serial is the range of one serial.
func Serial(n uint64) Range { return Range{n, n} }

// Marshal encodes the KRL as OpenSSH's ssh_krl_to_blob does.
func (k *KRL) Marshal() ([]byte, error) {
	if strings.IndexByte(k.Comment, 0) >= 0 {
		return nil, errors.New("krl: the comment contains a NUL byte")
	}
	b := []byte(Magic)
	b = binary.BigEndian.AppendUint32(b, FormatVersion)
	b = binary.BigEndian.AppendUint64(b, k.Version)
	b = binary.BigEndian.AppendUint64(b, k.GeneratedDate)
	b = binary.BigEndian.AppendUint64(b, 0) // flags: none defined
	b = appendString(b, nil)                // reserved
	b = appendString(b, []byte(k.Comment))
	seen := map[string]bool{}
	for i, cs := range k.Certificates {
		ca := ""
		if cs.CA != nil {
			if isCert(cs.CA) {
				return nil, fmt.Errorf("krl: certificate section %d: the CA key is a certificate", i)
			}
			ca = string(cs.CA.Marshal())
		}
		if seen[ca] {
			return nil, fmt.Errorf("krl: certificate section %d: a second section for the same CA", i)
		}
		seen[ca] = true
		sect, err := cs.marshal()
		if err != nil {
			return nil, fmt.Errorf("krl: certificate section %d: %w", i, err)
		}
		b = append(b, sectionCertificates)
		b = appendString(b, sect)
	}
	var keys [][]byte
	for i, pk := range k.Keys {
		if pk == nil {
			return nil, fmt.Errorf("krl: key %d is nil", i)
		}
		keys = append(keys, plainBlob(pk))
	}
	for _, s := range []struct {
		typ   byte
		blobs [][]byte
		size  int
	}{{sectionExplicitKey, keys, 0}, {sectionFingerprintSHA1, k.SHA1, sha1.Size}, {sectionFingerprintSHA25, k.SHA256, sha256.Size}} {
		for _, h := range s.blobs {
			if s.size != 0 && len(h) != s.size {
				return nil, fmt.Errorf("krl: a hash of %d bytes in a section of %d-byte hashes", len(h), s.size)
			}
		}
		if sect := blobSection(s.blobs); len(sect) > 0 {
			b = append(b, s.typ)
			b = appendString(b, sect)
		}
	}
	return b, nil
}

// blobSection writes blobs sorted as OpenSSH's blob_cmp orders them (bytes,
// then length), each once.
func blobSection(blobs [][]byte) []byte {
	sorted := slices.Clone(blobs)
	slices.SortFunc(sorted, bytes.Compare)
	sorted = slices.CompactFunc(sorted, bytes.Equal)
	var sect []byte
	for _, bl := range sorted {
		sect = appendString(sect, bl)
	}
	return sect
}

// marshal is OpenSSH's revoked_certs_generate.
func (cs *CertificateSection) marshal() ([]byte, error) {
	var buf []byte
	if cs.CA == nil {
		buf = appendString(buf, nil)
	} else {
		buf = appendString(buf, cs.CA.Marshal())
	}
	buf = appendString(buf, nil) // reserved
	ranges, err := coalesce(cs.Serials)
	if err != nil {
		return nil, err
	}
	var (
		state       int
		sect        []byte
		bm          bitmap
		last, start uint64
	)
	flush := func() {
		if state == certSerialBitmap {
			sect = appendMpint(sect, bm.bigEndian())
		}
		buf = append(buf, byte(state))
		buf = appendString(buf, sect)
		sect = sect[:0]
	}
	for i, rs := range ranges {
		final := i == len(ranges)-1
		var gap, lastGap uint64
		if !final {
			gap = ranges[i+1].Lo - rs.Hi
		}
		if state != 0 {
			lastGap = rs.Lo - last
		}
		contig := 1 + (rs.Hi - rs.Lo)
		next, force := chooseNextState(state, contig, final, lastGap, gap)
		if state != 0 && (force || next != state || state == certSerialRange) {
			flush()
		}
		if next != state || force {
			state = next
			sect = sect[:0]
			if state == certSerialBitmap {
				bm = bitmap{}
				start = rs.Lo
				sect = binary.BigEndian.AppendUint64(sect, start)
			}
		}
		switch state {
		case certSerialList:
			for j := uint64(0); j < contig; j++ {
				sect = binary.BigEndian.AppendUint64(sect, rs.Lo+j)
			}
		case certSerialRange:
			sect = binary.BigEndian.AppendUint64(sect, rs.Lo)
			sect = binary.BigEndian.AppendUint64(sect, rs.Hi)
		case certSerialBitmap:
			if rs.Lo-start > 1<<31-1 {
				return nil, errors.New("insane bitmap gap")
			}
			for j := uint64(0); j < contig; j++ {
				bm.set(rs.Lo + j - start)
			}
		}
		last = rs.Hi
	}
	if state != 0 {
		flush()
	}
	return appendKeyIDs(buf, cs.KeyIDs)
}

// appendKeyIDs appends the key ID subsection of a certificate section, in
// strcmp order without repeats, when there are key IDs.
func appendKeyIDs(buf []byte, keyIDs []string) ([]byte, error) {
	ids := slices.Clone(keyIDs)
	slices.Sort(ids) // strcmp order: bytes
	ids = slices.Compact(ids)
	var idSect []byte
	for _, id := range ids {
		if strings.IndexByte(id, 0) >= 0 {
			return nil, fmt.Errorf("key ID %q contains a NUL byte", id)
		}
		idSect = appendString(idSect, []byte(id))
	}
	if len(idSect) > 0 {
		buf = append(buf, certKeyID)
		buf = appendString(buf, idSect)
	}
	return buf, nil
}

// coalesce sorts ranges and merges those that overlap or abut, as
// OpenSSH's insert_serial_range keeps its tree.
func coalesce(in []Range) ([]Range, error) {
	rs := slices.Clone(in)
	for _, r := range rs {
		if r.Lo == 0 || r.Lo > r.Hi {
			return nil, fmt.Errorf("invalid serial range %d-%d (serial 0 cannot be revoked; a range must not be empty)", r.Lo, r.Hi)
		}
	}
	slices.SortFunc(rs, func(a, b Range) int {
		switch {
		case a.Lo < b.Lo:
			return -1
		case a.Lo > b.Lo:
			return 1
		}
		return 0
	})
	var out []Range
	for _, r := range rs {
		if n := len(out); n > 0 && (out[n-1].Hi == ^uint64(0) || r.Lo <= out[n-1].Hi+1) {
			out[n-1].Hi = max(out[n-1].Hi, r.Hi)
			continue
		}
		out = append(out, r)
	}
	return out, nil
}

// chooseNextState is OpenSSH's choose_next_state: the section type that
// makes the KRL smallest, by its bit cost model.
func chooseNextState(current int, contig uint64, final bool, lastGap, nextGap uint64) (int, bool) {
	contig = min(contig, 1<<31)
	lastGap = min(lastGap, 1<<31)
	nextGap = min(nextGap, 1<<31)
	var costList, costBitmap, costBitmapRestart uint64
	costRange := uint64(8)
	switch current {
	case certSerialList:
		costBitmapRestart, costBitmap = 8+64, 8+64
	case certSerialBitmap:
		costList = 8
		costBitmapRestart = 8 + 64
	case certSerialRange, 0:
		costBitmapRestart, costBitmap = 8+64, 8+64
		costList = 8
	}
	notFinal := func(v uint64) uint64 {
		if final {
			return 0
		}
		return v
	}
	costList += 64*contig + notFinal(8+64)
	costRange += 2*64 + notFinal(8+64)
	costBitmap += lastGap + contig + notFinal(min(nextGap, 8+64))
	costBitmapRestart += contig + notFinal(min(nextGap, 8+64))
	costList = (costList + 7) / 8
	costBitmap = (costBitmap + 7) / 8
	costBitmapRestart = (costBitmapRestart + 7) / 8
	costRange = (costRange + 7) / 8

	next, cost, force := certSerialBitmap, costBitmap, false
	if costRange < cost {
		next, cost = certSerialRange, costRange
	}
	if costList < cost {
		next, cost = certSerialList, costList
	}
	if costBitmapRestart < cost {
		next, force = certSerialBitmap, true
	}
	return next, force
}

// bitmap is a bit set, bit i in byte i/8 at position i%8.
type bitmap []byte

func (b *bitmap) set(i uint64) {
	for uint64(len(*b)) <= i/8 {
		*b = append(*b, 0)
	}
	(*b)[i/8] |= 1 << (i % 8)
}

// bigEndian is the bitmap as a big-endian integer, bit N worth 2^N, as
// OpenSSH's bitmap_to_string writes it.
func (b bitmap) bigEndian() []byte {
	out := slices.Clone([]byte(b))
	slices.Reverse(out)
	return out
}

func appendString(b, s []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

// appendMpint is sshbuf_put_bignum2_bytes: leading zeros dropped, a zero
// byte prepended when the top bit is set.
func appendMpint(b, v []byte) []byte {
	for len(v) > 0 && v[0] == 0 {
		v = v[1:]
	}
	if len(v) > 0 && v[0]&0x80 != 0 {
		b = binary.BigEndian.AppendUint32(b, uint32(len(v)+1))
		b = append(b, 0)
		return append(b, v...)
	}
	return appendString(b, v)
}

func isCert(pk ssh.PublicKey) bool {
	_, ok := pk.(*ssh.Certificate)
	return ok
}

// plainBlob is the wire blob of a key without its certificate.
func plainBlob(pk ssh.PublicKey) []byte {
	if c, ok := pk.(*ssh.Certificate); ok {
		return c.Key.Marshal()
	}
	return pk.Marshal()
}
