package sqlite

// DuringCheck makes every later Check call f while it reads.
func DuringCheck(s *Store, f func()) { s.duringCheck.Store(&f) }
