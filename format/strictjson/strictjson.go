// Package strictjson reads JSON the broker wrote the one way it can be
// read: the bytes must be exactly the encoding/json encoding of what they
// decode to. encoding/json alone matches keys case-insensitively, keeps
// the last of duplicate keys and ignores unknown ones, while jq, Python
// and go-jose (case-sensitive, its own decoder) may read the same bytes
// differently; a document that is its own canonical re-encoding has
// exact-case keys, each once, none unknown, and values in their one form,
// so every reader sees the same thing.
package strictjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode"
)

// ErrNotCanonical marks bytes that decode but are not the canonical
// encoding of what they decode to.
var ErrNotCanonical = errors.New("not in canonical form")

// Decode decodes b into v (a pointer to a struct with json tags) and
// requires b to equal the encoding of v. Its error says what differs,
// naming a duplicate, case-variant or unknown key when there is one.
func Decode(b []byte, v any) error {
	if err := json.Unmarshal(b, v); err != nil {
		if k := KeyProblem(b); k != "" {
			return fmt.Errorf("%w: %s", ErrNotCanonical, k)
		}
		return err
	}
	c, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if bytes.Equal(c, b) {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrNotCanonical, Explain(b, c))
}

// Explain says how b differs from its canonical encoding c: the first
// duplicate or case-variant key of b, else the first key of b that c
// does not have (unknown) or that b lacks, else the first value that is
// written differently.
func Explain(b, c []byte) string {
	if k := KeyProblem(b); k != "" {
		return k
	}
	if k := unknownKey(b, c); k != "" {
		return k
	}
	i := 0
	for i < len(b) && i < len(c) && b[i] == c[i] {
		i++
	}
	near := func(s []byte) string {
		end := min(i+24, len(s))
		return string(s[i:end])
	}
	return fmt.Sprintf("at byte %d it has %q where its canonical encoding has %q (a value written in another form, a missing or reordered key, or whitespace)", i, near(b), near(c))
}

// maxDepth bounds the nesting KeyProblem walks, as encoding/json does.
const maxDepth = 10000

var errTooDeep = errors.New("nested too deeply")

// KeyProblem returns a description of the first object key of b that is
// a duplicate of another key of the same object, or differs from one only
// in case (as encoding/json folds keys: strings.EqualFold), with its
// path; "" when there is none or b is not JSON.
func KeyProblem(b []byte) string { return keyProblem(b, maxDepth) }

// TopKeyProblem is KeyProblem for the keys of the outermost object only.
func TopKeyProblem(b []byte) string { return keyProblem(b, 1) }

func keyProblem(b []byte, depth int) string {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	s, _ := walk(dec, "$", 0, depth)
	return s
}

// walk reads one value from dec, checking the keys of every object in it.
func walk(dec *json.Decoder, path string, depth, limit int) (string, error) {
	t, err := dec.Token()
	if err != nil {
		return "", err
	}
	d, ok := t.(json.Delim)
	if !ok {
		return "", nil
	}
	if depth >= maxDepth {
		return "", errTooDeep
	}
	if depth >= limit {
		// Skip the value: its keys are not checked.
		for n := 1; n > 0; {
			t, err := dec.Token()
			if err != nil {
				return "", err
			}
			if d, ok := t.(json.Delim); ok {
				if d == '{' || d == '[' {
					n++
				} else {
					n--
				}
			}
		}
		return "", nil
	}
	if d == '[' {
		for i := 0; dec.More(); i++ {
			if s, err := walk(dec, fmt.Sprintf("%s[%d]", path, i), depth+1, limit); s != "" || err != nil {
				return s, err
			}
		}
		_, err := dec.Token()
		return "", err
	}
	seen := map[string]string{} // folded key -> key as written
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return "", err
		}
		k, _ := t.(string)
		switch prev, ok := seen[fold(k)]; {
		case ok && prev == k:
			return fmt.Sprintf("key %q appears twice in %s", k, path), nil
		case ok:
			return fmt.Sprintf("key %q in %s differs from key %q only in case", k, path, prev), nil
		}
		seen[fold(k)] = k
		if s, err := walk(dec, path+"."+k, depth+1, limit); s != "" || err != nil {
			return s, err
		}
	}
	_, err = dec.Token()
	return "", err
}

// fold maps every rune of s to the smallest rune of its simple case
// folding orbit, so that fold(a) == fold(b) exactly when
// strings.EqualFold(a, b), the rule encoding/json matches keys by.
func fold(s string) string {
	var b strings.Builder
	for _, r := range s {
		m := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			m = min(m, f)
		}
		b.WriteRune(m)
	}
	return b.String()
}

// unknownKey finds an object key of b absent from the same object of its
// canonical encoding c, or the reverse, walking both in step.
func unknownKey(b, c []byte) string {
	var vb, vc any
	if json.Unmarshal(b, &vb) != nil || json.Unmarshal(c, &vc) != nil {
		return ""
	}
	return diffKeys("$", vb, vc)
}

func diffKeys(path string, b, c any) string {
	switch x := b.(type) {
	case map[string]any:
		y, ok := c.(map[string]any)
		if !ok {
			return ""
		}
		for k := range x {
			if _, ok := y[k]; ok {
				continue
			}
			for ck := range y {
				if fold(ck) == fold(k) {
					return fmt.Sprintf("key %q in %s is not %q: keys are case-sensitive", k, path, ck)
				}
			}
			return fmt.Sprintf("unknown key %q in %s", k, path)
		}
		for k := range y {
			if _, ok := x[k]; !ok {
				return fmt.Sprintf("key %q is missing from %s", k, path)
			}
		}
		for k, v := range x {
			if s := diffKeys(path+"."+k, v, y[k]); s != "" {
				return s
			}
		}
	case []any:
		y, ok := c.([]any)
		if !ok {
			return ""
		}
		for i := range min(len(x), len(y)) {
			if s := diffKeys(fmt.Sprintf("%s[%d]", path, i), x[i], y[i]); s != "" {
				return s
			}
		}
	}
	return ""
}
