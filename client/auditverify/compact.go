package auditverify

import (
	"container/heap"
	"crypto/sha256"
	"time"

	"github.com/google/uuid"
)

// The replay holds what is still open, not the log's history: a request
// whole while something may still happen to it, and an id only while the
// log could still reuse it without being refused for another reason. A
// request that has ended is kept as its final state, account and requester
// (ended) until its signed statement could no longer be replayed (it is
// checked against the entry's time within statement.MaxSkew), then
// forgotten; a token's jti and a certificate's serial are kept until the
// credential expires, which is as long as a relying party's replay cache
// or a revocation list keeps them. Entries come in time order (the
// verifier refuses time going backwards), so once the log's time passes
// those times nothing more needs them, and the verifier's memory is bounded
// by the work open at one time, at any length of log.

// idSet remembers ids with a value. A canonical UUID is kept as its 16
// bytes; any other string, which the broker never writes, as itself, so
// that no two ids are ever taken for one another.
type idSet[V any] struct {
	uuids map[[16]byte]V
	other map[string]V
}

func newIDSet[V any]() *idSet[V] {
	return &idSet[V]{uuids: map[[16]byte]V{}, other: map[string]V{}}
}

func uuidKey(id string) ([16]byte, bool) {
	u, err := uuid.Parse(id)
	if err != nil || u.String() != id {
		return [16]byte{}, false
	}
	return u, true
}

func (s *idSet[V]) get(id string) (V, bool) {
	if k, ok := uuidKey(id); ok {
		v, found := s.uuids[k]
		return v, found
	}
	v, found := s.other[id]
	return v, found
}

func (s *idSet[V]) has(id string) bool {
	_, ok := s.get(id)
	return ok
}

func (s *idSet[V]) forget(id string) {
	if k, ok := uuidKey(id); ok {
		delete(s.uuids, k)
		return
	}
	delete(s.other, id)
}

func (s *idSet[V]) put(id string, v V) {
	if k, ok := uuidKey(id); ok {
		s.uuids[k] = v
		return
	}
	s.other[id] = v
}

// digestSet remembers strings by the first 16 bytes of their SHA-256. It
// serves sets whose only question is "seen before?" and whose answer yes
// is a violation: a collision, which takes some 2^64 work to find, could
// only report a reuse that did not happen, never hide one.
type digestSet map[[16]byte]struct{}

func digestKey(s string) [16]byte {
	h := sha256.Sum256([]byte(s))
	return [16]byte(h[:16])
}

func (d digestSet) has(s string) bool {
	_, ok := d[digestKey(s)]
	return ok
}

func (d digestSet) add(s string) { d[digestKey(s)] = struct{}{} }

func (d digestSet) forget(s string) { delete(d, digestKey(s)) }

// forgetting is what the replay will forget, and when: a min-heap by time.
type forgetting []later

type later struct {
	at     time.Time
	forget func()
}

func (f forgetting) Len() int           { return len(f) }
func (f forgetting) Less(i, j int) bool { return f[i].at.Before(f[j].at) }
func (f forgetting) Swap(i, j int)      { f[i], f[j] = f[j], f[i] }
func (f *forgetting) Push(x any)        { *f = append(*f, x.(later)) }
func (f *forgetting) Pop() any {
	old := *f
	x := old[len(old)-1]
	old[len(old)-1] = later{}
	*f = old[:len(old)-1]
	return x
}

// after arranges for forget to run once the log's time is past at.
func (f *forgetting) after(at time.Time, forget func()) { heap.Push(f, later{at: at, forget: forget}) }

// until runs, in time order, everything due before now.
func (f *forgetting) until(now time.Time) {
	for f.Len() > 0 && (*f)[0].at.Before(now) {
		heap.Pop(f).(later).forget()
	}
}

// ended is what is kept of a request once it is final and its post-use
// reviews are closed: enough for any later entry about it to be refused
// with the reason it would have had (it is no longer pending, no longer a
// grant), as indexes into the replay's names.
type ended struct {
	state, account, requester uint32
}

// names interns the few strings ended requests share (states, accounts,
// principals).
type names struct {
	index map[string]uint32
	list  []string
}

func (n *names) id(s string) uint32 {
	if n.index == nil {
		n.index = map[string]uint32{}
	}
	if i, ok := n.index[s]; ok {
		return i
	}
	n.index[s] = uint32(len(n.list))
	n.list = append(n.list, s)
	return n.index[s]
}

func (n *names) name(i uint32) string { return n.list[i] }
