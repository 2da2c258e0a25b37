// Package checkpoint is the audit log's checkpoint format as outsiders read
// it: a C2SP tlog-checkpoint body (origin, size, base64 RFC 6962 root) in a
// C2SP signed note whose key name is the log's origin. The broker signs
// these; auditors, witnesses and the offline verifier open them.
package checkpoint

import (
	"errors"
	"regexp"

	"github.com/transparency-dev/formats/log"
	"golang.org/x/mod/sumdb/note"
)

// originRE is what a log origin may look like: a schema-less URL-ish name
// that is also a valid signed-note key name (no spaces, no '+').
var originRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:/-]{0,254}$`)

// ValidOrigin reports whether s may be a log origin.
func ValidOrigin(s string) bool { return originRE.MatchString(s) }

// Body is the checkpoint body for a tree of size entries with root hash root.
func Body(origin string, size uint64, root []byte) []byte {
	return log.Checkpoint{Origin: origin, Size: size, Hash: root}.Marshal()
}

// Open verifies a signed checkpoint note with v (whose name must be the
// origin) and parses its body.
func Open(b []byte, origin string, v note.Verifier) (*log.Checkpoint, error) {
	if len(b) == 0 {
		return nil, errors.New("missing")
	}
	cp, _, _, err := log.ParseCheckpoint(b, origin, v)
	if err != nil {
		return nil, err
	}
	if len(cp.Hash) != 32 {
		return nil, errors.New("the root hash is not 32 bytes")
	}
	return cp, nil
}
