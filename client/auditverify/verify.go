// Package auditverify checks an exported audit log offline, with public
// keys only: every entry's signature, the hash chain, the Merkle root
// against a signed checkpoint (and, given an older checkpoint, that the log
// only grew since), and then the whole lifecycle replayed from the entry
// bytes alone, so that every token is shown to follow a valid quorum of
// approvals the approvers themselves signed.
package auditverify

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/statement"
)

// Line is one line of an export (`bgctl audit export`). Only Index, Entry
// and Signature are read; the rest is for people and never trusted.
type Line struct {
	Index     uint64 `json:"index"`
	Entry     []byte `json:"entry"`
	Signature []byte `json:"signature"`
	KeyID     string `json:"key_id"`
	LeafHash  string `json:"leaf_hash"`
	// Decoded fields, for people reading the export.
	Time    string          `json:"time,omitempty"`
	Type    string          `json:"type,omitempty"`
	Actor   string          `json:"actor,omitempty"`
	Request string          `json:"request,omitempty"`
	Account string          `json:"account,omitempty"`
	Payload json.RawMessage `json:"payload,omitempty"`
}

// ExportLine builds the export line of a stored entry.
func ExportLine(index uint64, entry, sig []byte, keyID string) Line {
	l := Line{Index: index, Entry: entry, Signature: sig, KeyID: keyID, LeafHash: hex.EncodeToString(audit.LeafHash(entry))}
	if e, err := audit.Parse(entry); err == nil {
		l.Time, l.Type, l.Actor, l.Request, l.Account, l.Payload = e.Time.Format("2006-01-02T15:04:05.000000000Z07:00"), string(e.Type), e.Actor, e.Request, e.Account, e.Payload
	}
	return l
}

// Options is what an auditor holds.
type Options struct {
	// Log is the export, JSON Lines from index 0.
	Log io.Reader
	// Checkpoint is a signed checkpoint note the log must match.
	Checkpoint []byte
	// CheckpointKey is the signed-note verifier key (name+hash+base64) of
	// the checkpoint key; its name is the log's origin.
	CheckpointKey string
	// AuditKeys verify entry signatures.
	AuditKeys []*ecdsa.PublicKey
	// ClientCAs verify the certificates behind signed reviews.
	ClientCAs *x509.CertPool
	// CRLs, when given, list certificates that must not have signed reviews.
	CRLs []*x509.RevocationList
	// PreviousCheckpoint, when given, is an older checkpoint the log must
	// extend: a truncated or rolled-back log fails.
	PreviousCheckpoint []byte
	// Witnesses are the cosignature verifier keys of the witnesses the
	// auditor trusts; WitnessQuorum how many of them must have cosigned
	// the checkpoint (witness.go).
	Witnesses     []string
	WitnessQuorum int
}

// Violation is the first thing found wrong, at an entry index (-1 when it
// is about the inputs rather than an entry).
type Violation struct {
	Index  int64
	Reason string
}

func (v *Violation) Error() string {
	if v.Index < 0 {
		return v.Reason
	}
	return fmt.Sprintf("entry %d: %s", v.Index, v.Reason)
}

func violation(i int64, format string, args ...any) *Violation {
	return &Violation{Index: i, Reason: fmt.Sprintf(format, args...)}
}

// PolicyChange is one policy_loaded entry as the summary reports it.
type PolicyChange struct {
	Index   uint64   `json:"index"`
	Hash    string   `json:"hash"`
	Changes []string `json:"changes"`
}

// Summary is what a verified log contains.
type Summary struct {
	Origin         string         `json:"origin"`
	Entries        uint64         `json:"entries"`
	CheckpointSize uint64         `json:"checkpoint_size"`
	PreviousSize   uint64         `json:"previous_checkpoint_size,omitempty"`
	Requests       int            `json:"requests"`
	Grants         int            `json:"grants"`
	Tokens         int            `json:"tokens"`
	Reviews        int            `json:"reviews"`
	Policies       []PolicyChange `json:"policies"`
	// AuditKeys and CheckpointKeys count the keys in the chains followed.
	AuditKeys      int `json:"audit_keys"`
	CheckpointKeys int `json:"checkpoint_keys"`
	// Types counts the entries by type.
	Types map[string]int `json:"types"`
	// SignatureChecks counts the signatures verified: entries, signed
	// statements, certificate chains and rotation statements.
	SignatureChecks int `json:"signature_checks"`
	// Restores are the store's restores from backups the log records.
	Restores []Restore `json:"restores,omitempty"`
	// Cosigners are the witnesses that cosigned the checkpoint.
	Cosigners []Cosigner `json:"cosigners,omitempty"`
}

// Restore is a restore of the store from a backup. A forced one rolled
// the log back: LostAfter is the size of the newest checkpoint it knew of,
// entries past the restore point that the log no longer has.
type Restore struct {
	Index     uint64 `json:"index"`
	Forced    bool   `json:"forced"`
	Reason    string `json:"reason,omitempty"`
	Operator  string `json:"operator"`
	LostAfter uint64 `json:"newest_checkpoint_size,omitempty"`
}

// MaxLineBytes bounds one export line.
const MaxLineBytes = 1 << 20

// Verify checks the log. It returns the summary, or a *Violation naming the
// first entry found wrong and why.
func Verify(o Options) (*Summary, error) {
	if len(o.AuditKeys) == 0 {
		return nil, violation(-1, "no audit key given")
	}
	if o.ClientCAs == nil {
		return nil, violation(-1, "no client CA given")
	}
	vkey, err := note.NewVerifier(o.CheckpointKey)
	if err != nil {
		return nil, violation(-1, "the checkpoint key is not a signed-note verifier key: %v", err)
	}
	origin := vkey.Name()
	lines, err := readLines(o.Log)
	if err != nil {
		return nil, err
	}
	// The chain, which also follows key rotations: each new audit or
	// checkpoint key is introduced by a statement signed by a key already
	// trusted and by the new one.
	keys := &keyChain{audit: append([]*ecdsa.PublicKey(nil), o.AuditKeys...), checkpoint: []note.Verifier{vkey}}
	sigs := statement.NewCache(min(len(lines), 1<<18))
	parsed := prepare(lines, sigs)
	r := newReplay(origin, o.ClientCAs, o.CRLs, sigs)
	var entries []*audit.Entry
	var chainErr *Violation
	for i, l := range lines {
		e, v := r.link(int64(i), l.Entry, parsed[i])
		if v == nil {
			v = keys.follow(int64(i), e)
		}
		if v != nil {
			chainErr = v
			break
		}
		entries = append(entries, e)
	}
	// The entry signatures are checked on every core while this goroutine
	// goes on with the tree and the replay, which must go in order; the
	// signatures' verdict comes first all the same. The first thing wrong
	// is reported by index: a changed entry fails its signature at its own
	// index before its successor's link fails.
	var (
		sigChecks int
		sigErr    *Violation
		sigDone   = make(chan struct{})
	)
	go func() {
		defer close(sigDone)
		sigChecks, sigErr = checkSignatures(lines, keys.audit)
	}()
	if chainErr != nil {
		<-sigDone
		if sigErr != nil && sigErr.Index <= chainErr.Index {
			return nil, sigErr
		}
		return nil, chainErr
	}
	sum, err := verifyRest(o, origin, keys, r, lines, entries)
	<-sigDone
	if sigErr != nil {
		return nil, sigErr
	}
	if err != nil {
		return nil, err
	}
	sum.SignatureChecks += sigChecks
	cos, v := witnessed(o, origin)
	if v != nil {
		return nil, v
	}
	sum.Cosigners = cos
	sum.SignatureChecks += len(sum.Cosigners)
	return sum, nil
}

// verifyRest checks the checkpoints against the tree of the entries and
// replays the lifecycle.
func verifyRest(o Options, origin string, keys *keyChain, r *replay, lines []wireLine, entries []*audit.Entry) (*Summary, error) {
	cp, err := keys.parseCheckpoint(o.Checkpoint, origin)
	if err != nil {
		return nil, violation(-1, "checkpoint: %v", err)
	}
	var prev *log.Checkpoint
	if len(o.PreviousCheckpoint) > 0 {
		if prev, err = keys.parseCheckpoint(o.PreviousCheckpoint, origin); err != nil {
			return nil, violation(-1, "previous checkpoint: %v", err)
		}
		if prev.Size > cp.Size {
			return nil, violation(int64(cp.Size), "the checkpoint (size %d) is smaller than the previous checkpoint (size %d): the log was truncated or rolled back", cp.Size, prev.Size)
		}
	}
	if uint64(len(lines)) < cp.Size {
		return nil, violation(int64(len(lines)), "the export ends at %d entries but the checkpoint covers %d: entries were removed or the log was truncated", len(lines), cp.Size)
	}
	if prev != nil && uint64(len(lines)) < prev.Size {
		return nil, violation(int64(len(lines)), "the export ends at %d entries but the previous checkpoint covers %d", len(lines), prev.Size)
	}
	// The tree from the entries' own bytes must have the checkpoints' roots.
	rf := compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}
	cr := rf.NewEmptyRange(0)
	for i, l := range lines {
		if err := cr.Append(audit.LeafHash(l.Entry), nil); err != nil {
			return nil, violation(int64(i), "building the tree: %v", err)
		}
		size := uint64(i + 1)
		for _, c := range []*log.Checkpoint{prev, cp} {
			if c == nil || c.Size != size {
				continue
			}
			root, err := cr.GetRootHash(nil)
			if err != nil {
				return nil, violation(int64(i), "building the tree: %v", err)
			}
			if !bytes.Equal(root, c.Hash) {
				which := "checkpoint"
				if c == prev {
					which = "previous checkpoint"
				}
				return nil, violation(int64(i), "the tree of the first %d entries does not have the %s's root: an entry up to here was changed, removed, added or reordered", size, which)
			}
		}
	}
	for i, e := range entries {
		if v := r.entry(int64(i), e); v != nil {
			return nil, v
		}
	}
	sum := r.summary()
	sum.Origin, sum.Entries, sum.CheckpointSize = origin, uint64(len(lines)), cp.Size
	sum.AuditKeys, sum.CheckpointKeys = len(keys.audit), len(keys.checkpoint)
	sum.SignatureChecks = int(r.sigs.Checks()) + r.chainChecks + keys.checks
	sum.Types = map[string]int{}
	for _, e := range entries {
		sum.Types[string(e.Type)]++
	}
	if prev != nil {
		sum.PreviousSize = prev.Size
	}
	return sum, nil
}

// wireLine is what the verifier reads of an export line.
type wireLine struct {
	Index     uint64 `json:"index"`
	Entry     []byte `json:"entry"`
	Signature []byte `json:"signature"`
}

func readLines(r io.Reader) ([]wireLine, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), MaxLineBytes)
	var raw [][]byte
	for sc.Scan() {
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		raw = append(raw, bytes.Clone(b))
	}
	if err := sc.Err(); err != nil {
		return nil, violation(int64(len(raw)), "reading the export: %v", err)
	}
	if len(raw) == 0 {
		return nil, violation(-1, "the export is empty")
	}
	// Decoding is independent per line: on every core.
	out := make([]wireLine, len(raw))
	bad := make([]error, len(raw))
	parallel(len(raw), func(i int) {
		bad[i] = json.Unmarshal(raw[i], &out[i])
		raw[i] = nil
	})
	for i, l := range out {
		if bad[i] != nil {
			return nil, violation(int64(i), "export line %d is not a JSON object with base64 entry and signature: %v", i+1, bad[i])
		}
		if l.Index != uint64(i) {
			return nil, violation(int64(i), "export line %d holds index %d: an entry is missing, duplicated or out of order", i+1, l.Index)
		}
		if len(l.Entry) == 0 {
			return nil, violation(int64(i), "export line %d has no entry", i+1)
		}
	}
	return out, nil
}

// parallel calls fn(i) for every i < n on every core, in chunks.
func parallel(n int, fn func(i int)) {
	const chunk = 128
	var (
		next atomic.Int64
		wg   sync.WaitGroup
	)
	for range min(runtime.GOMAXPROCS(0), (n+chunk-1)/chunk) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				start := int(next.Add(chunk)) - chunk
				if start >= n {
					return
				}
				for i := start; i < min(start+chunk, n); i++ {
					fn(i)
				}
			}
		}()
	}
	wg.Wait()
}

// prepare parses every entry and verifies the statements that reviews,
// post-use review closings and attestations carry, on every core, so that
// the replay, which must go in order, finds them parsed and verified. A
// line that does not parse is left nil for the replay to report.
func prepare(lines []wireLine, sigs *statement.Cache) []*audit.Entry {
	parsed := make([]*audit.Entry, len(lines))
	parallel(len(lines), func(i int) {
		e, err := audit.Parse(lines[i].Entry)
		if err != nil {
			return
		}
		parsed[i] = e
		switch e.Type {
		case audit.TypeRequestReviewed, audit.TypeReviewClosed, audit.TypeAccountAttested:
			var s audit.Signed
			if json.Unmarshal(e.Payload, &s) != nil {
				return
			}
			if cert, err := sigs.ParseCertificate(s.Certificate); err == nil {
				_ = sigs.Verify(cert, s.Statement, s.Signature)
			}
		}
	})
	return parsed
}

// checkSignatures verifies every entry signature, on every core: it is the
// bulk of the work.
func checkSignatures(lines []wireLine, keys []*ecdsa.PublicKey) (int, *Violation) {
	var (
		mu     sync.Mutex
		first  *Violation
		checks atomic.Int64
	)
	parallel(len(lines), func(i int) {
		l := lines[i]
		ok := false
		if len(l.Signature) > 0 {
			for _, k := range keys {
				checks.Add(1)
				if audit.VerifySignature(k, l.Entry, l.Signature) {
					ok = true
					break
				}
			}
		}
		if ok {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if first == nil || int64(i) < first.Index {
			reason := "the signature does not verify with the audit key: the entry or its signature was changed"
			if len(l.Signature) == 0 {
				reason = "the entry is not signed (it was written while the HSM was down and the export was taken before it was signed)"
			}
			first = violation(int64(i), "%s", reason)
		}
	})
	return int(checks.Load()), first
}
