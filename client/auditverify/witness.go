package auditverify

import (
	"fmt"
	"strings"
	"time"

	"github.com/bgbroker/breakglass/format/cosignature"
)

// Cosigner is a witness that cosigned the checkpoint the log was verified
// against.
type Cosigner struct {
	Witness string    `json:"witness"`
	Key     string    `json:"key"`
	Time    time.Time `json:"time"`
}

// witnessed checks the witnesses' cosignatures (c2sp.org/tlog-cosignature)
// on the checkpoint: with o.WitnessQuorum set, at least that many of the
// witnesses o.Witnesses names must have cosigned it, each counted once.
// Cosignatures on the previous checkpoint are checked too: a forged one
// fails there as anywhere. A witness that cosigned the checkpoint saw the
// same tree as every auditor it cosigned for, so the checkpoint is not a
// view shown to this auditor alone.
func witnessed(o Options, origin string) ([]Cosigner, *Violation) {
	if len(o.Witnesses) == 0 {
		if o.WitnessQuorum > 0 {
			return nil, violation(-1, "a witness quorum of %d was asked for but no witness key was given", o.WitnessQuorum)
		}
		return nil, nil
	}
	keys := make([]*cosignature.Key, 0, len(o.Witnesses))
	for _, vk := range o.Witnesses {
		k, err := cosignature.ParseKey(vk)
		if err != nil {
			return nil, violation(-1, "witness key %q: %v", vk, err)
		}
		keys = append(keys, k)
	}
	set, err := cosignature.NewSet(keys...)
	if err != nil {
		return nil, violation(-1, "witness keys: %v", err)
	}
	if o.WitnessQuorum > set.Len() {
		return nil, violation(-1, "a witness quorum of %d cannot be met by the %d witness keys given", o.WitnessQuorum, set.Len())
	}
	if len(o.PreviousCheckpoint) > 0 {
		if _, err := set.Verify(o.PreviousCheckpoint, origin); err != nil {
			return nil, violation(-1, "previous checkpoint: %v", err)
		}
	}
	cos, err := set.Verify(o.Checkpoint, origin)
	if err != nil {
		return nil, violation(-1, "checkpoint: %v", err)
	}
	// A cosignature dated ahead of this machine's clock (the auditor's,
	// which reads the log after the witnesses cosigned it) does not count:
	// C2SP tlog-cosignature lets verifiers refuse future timestamps.
	now := time.Now()
	out := make([]Cosigner, 0, len(cos))
	var future []string
	for _, c := range cos {
		if c.Future(now) {
			future = append(future, fmt.Sprintf("%s at %s", c.Witness, c.Time.Format(time.RFC3339)))
			continue
		}
		out = append(out, Cosigner{Witness: c.Witness, Key: c.Key, Time: c.Time})
	}
	if len(out) < o.WitnessQuorum {
		why := ""
		if len(future) > 0 {
			why = fmt.Sprintf(" (not counted, dated more than %s ahead of this machine's clock: %s)", cosignature.MaxClockSkew, strings.Join(future, ", "))
		}
		return out, violation(-1, "the checkpoint carries valid cosignatures by %d of the witnesses given, fewer than the quorum of %d: it may be a view no witness saw%s", len(out), o.WitnessQuorum, why)
	}
	return out, nil
}
