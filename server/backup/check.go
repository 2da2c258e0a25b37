package backup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/transparency-dev/formats/log"
	"golang.org/x/mod/sumdb/note"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/hsm"
	"github.com/bgbroker/breakglass/server/config"
	"github.com/bgbroker/breakglass/server/daemon"
	"github.com/bgbroker/breakglass/server/keyring"
	"github.com/bgbroker/breakglass/server/store"
	"github.com/bgbroker/breakglass/server/store/sqlite"
)

// copyLog is what a restore reads of the copy's log.
type copyLog struct {
	head audit.Head
	own  store.Checkpoint
	keys []store.KeyRecord
}

// checkCopy reads the copy's log and checks it against every candidate:
// each must be signed by one of this log's checkpoint keys and be a
// prefix of the copy's tree. It returns what does not hold, and the
// newest checkpoint's note.
func checkCopy(ctx context.Context, cfg *config.Config, cands []candidate, registry []store.KeyRecord, res *RestoreResult, log *slog.Logger) ([]string, []byte, error) {
	st, err := daemon.OpenStore(ctx, cfg, log)
	if err != nil {
		return nil, nil, fmt.Errorf("opening the backup's database: %w", err)
	}
	defer st.Close()
	cl, err := readCopy(ctx, st)
	if err != nil {
		return nil, nil, fmt.Errorf("reading the backup: %w", err)
	}
	res.BackupSize = cl.head.Size
	origin := cfg.Audit.Origin
	if len(cl.own.Note) > 0 {
		// Its note is verified like the others: it is written to the
		// store_restored entry when it is the newest.
		cands = append(cands, candidate{from: "the backup's own log", note: cl.own.Note})
		origin = noteOrigin(cl.own.Note)
		if cfg.Audit.Origin != "" && origin != cfg.Audit.Origin {
			return nil, nil, fmt.Errorf("the backup is of log %q, not of this broker's log %q (audit.origin): it is another log's backup", origin, cfg.Audit.Origin)
		}
	}
	for _, c := range cands {
		if origin == "" && c.note != nil {
			origin = noteOrigin(c.note)
		}
	}
	verifiers := checkpointVerifiers(origin, append(registry, cl.keys...))
	var problems []string
	var newest []byte
	for i := range cands {
		c := &cands[i]
		if c.size, c.root, err = openCheckpoint(c.note, origin, verifiers); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", c.from, err)
		}
		res.Sources = append(res.Sources, fmt.Sprintf("%s (%d entries)", c.from, c.size))
		if c.size >= res.Newest {
			res.Newest, res.NewestFrom, newest = c.size, c.from, c.note
		}
		problem, err := extends(ctx, st, cl.head, c)
		if err != nil {
			return nil, nil, fmt.Errorf("reading the backup's tree: %w", err)
		}
		if problem != "" {
			problems = append(problems, problem)
		}
	}
	return problems, newest, nil
}

// readCopy reads the copy's head, key registry and latest checkpoint.
func readCopy(ctx context.Context, st store.Store) (copyLog, error) {
	var cl copyLog
	err := st.View(ctx, func(r store.Reader) error {
		var err error
		if cl.head, err = r.Head(ctx); err != nil {
			return err
		}
		if cl.keys, err = r.Keys(ctx); err != nil {
			return err
		}
		cl.own, err = r.LatestCheckpoint(ctx)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		return err
	})
	return cl, err
}

// extends says what is wrong, if anything, with restoring a copy of head
// entries over a log that had checkpoint c.
func extends(ctx context.Context, st store.Store, head audit.Head, c *candidate) (string, error) {
	if c.size > head.Size {
		return fmt.Sprintf("%s covers %d entries but the backup holds %d: restoring it would undo %d entries, which may include revocations",
			c.from, c.size, head.Size, c.size-head.Size), nil
	}
	if c.size == 0 {
		return "", nil
	}
	var problem string
	err := st.View(ctx, func(r store.Reader) error {
		root, err := r.TreeHash(ctx, c.size)
		if err != nil {
			return err
		}
		if !bytes.Equal(root, c.root) {
			problem = fmt.Sprintf("%s at %d entries has a different root than the backup's log: they are different histories", c.from, c.size)
		}
		return nil
	})
	return problem, err
}

// currentCheckpoint reads the latest checkpoint and the key registry of
// the database a restore would replace, from a snapshot (a refused restore
// must leave it as it was): os.ErrNotExist when there is none.
func currentCheckpoint(ctx context.Context, cfg *config.Config) (*candidate, []store.KeyRecord, error) {
	st, err := sqlite.OpenSnapshot(ctx, cfg.Store.SQLite.Path)
	if err != nil {
		return nil, nil, err
	}
	defer st.Close()
	var cand *candidate
	var keys []store.KeyRecord
	err = st.View(ctx, func(r store.Reader) error {
		var err error
		if keys, err = r.Keys(ctx); err != nil {
			return err
		}
		cp, err := r.LatestCheckpoint(ctx)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		// The note is verified with the others, as a file would be: a
		// database that lost its keys cannot vouch for its checkpoints.
		cand = &candidate{from: "the current database", note: cp.Note}
		return nil
	})
	return cand, keys, err
}

// checkpointVerifiers are the signed-note verifiers of every checkpoint key
// the registries name, active or not: a checkpoint given to a restore may
// predate a rotation.
func checkpointVerifiers(origin string, registry []store.KeyRecord) note.Verifiers {
	seen := map[string]bool{}
	var vs []note.Verifier
	for _, k := range registry {
		if k.Purpose != string(hsm.PurposeCheckpoint) || origin == "" {
			continue
		}
		pub, err := keyring.PublicFromPEM(k.PublicPEM)
		if err != nil {
			continue
		}
		vkey, err := hsm.NoteVerifierKey(origin, pub)
		if err != nil || seen[vkey] {
			continue
		}
		seen[vkey] = true
		if v, err := note.NewVerifier(vkey); err == nil {
			vs = append(vs, v)
		}
	}
	return note.VerifierList(vs...)
}

// openCheckpoint verifies a checkpoint note and returns its size and root.
func openCheckpoint(b []byte, origin string, vs note.Verifiers) (uint64, []byte, error) {
	if origin == "" {
		return 0, nil, errors.New("this log's origin is unknown (the backup holds no checkpoint; set audit.origin)")
	}
	if o := noteOrigin(b); o != origin {
		return 0, nil, fmt.Errorf("not a checkpoint of log %s: it names log %q (another log's checkpoint?)", origin, o)
	}
	n, err := note.Open(b, vs)
	if err != nil {
		return 0, nil, fmt.Errorf("not a checkpoint of log %s signed by one of its checkpoint keys: %w", origin, err)
	}
	var cp log.Checkpoint
	if _, err := cp.Unmarshal([]byte(n.Text)); err != nil {
		return 0, nil, fmt.Errorf("not a checkpoint: %w", err)
	}
	if cp.Origin != origin {
		return 0, nil, fmt.Errorf("a checkpoint of log %q, not of this log (%s)", cp.Origin, origin)
	}
	if len(cp.Hash) != 32 {
		return 0, nil, errors.New("the checkpoint's root is not 32 bytes")
	}
	return cp.Size, cp.Hash, nil
}

func noteOrigin(n []byte) string {
	line, _, _ := bytes.Cut(n, []byte("\n"))
	return string(line)
}
