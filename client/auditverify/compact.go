package auditverify

import (
	"crypto/sha256"

	"github.com/google/uuid"
)

// What the replay must remember of everything ever logged is kept small:
// the ids the broker makes (requests, tokens, post-use reviews) are UUIDs,
// remembered as their 16 bytes, and a request that has ended is kept as
// its final state, account and requester only (ended), once nothing more
// may refer to it. The verifier's memory then grows by a few tens of bytes
// per request, not by the request's whole state.

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
