package strictjson

import (
	"errors"
	"strings"
	"testing"
)

type doc struct {
	Type    string         `json:"type"`
	N       int            `json:"n"`
	Inner   inner          `json:"inner"`
	Map     map[string]int `json:"map,omitempty"`
	Comment string         `json:"comment,omitempty"`
}

type inner struct {
	Name string `json:"name"`
}

func TestDecode(t *testing.T) {
	var d doc
	if err := Decode([]byte(`{"type":"a","n":1,"inner":{"name":"x"},"map":{"a":1,"b":2}}`), &d); err != nil || d.Inner.Name != "x" {
		t.Fatalf("canonical: %v %+v", err, d)
	}
	tests := []struct{ name, in, why string }{
		{"case variant", `{"type":"a","n":1,"inner":{"name":"x"},"Type":"b"}`, `key "Type" in $ differs from key "type" only in case`},
		{"duplicate nested", `{"type":"a","n":1,"inner":{"name":"x","name":"y"}}`, `key "name" appears twice in $.inner`},
		{"unknown", `{"type":"a","n":1,"inner":{"name":"x"},"extra":true}`, `unknown key "extra" in $`},
		{"case only", `{"Type":"a","n":1,"inner":{"name":"x"}}`, `key "Type" in $ is not "type"`},
		{"missing", `{"type":"a","inner":{"name":"x"}}`, `key "n" is missing from $`},
		{"whitespace", `{"type":"a", "n":1,"inner":{"name":"x"}}`, "at byte 12"},
		{"escape", `{"type":"\u0061","n":1,"inner":{"name":"x"}}`, "at byte 9"},
		{"map order", `{"type":"a","n":1,"inner":{"name":"x"},"map":{"b":2,"a":1}}`, "at byte"},
		{"kelvin", `{"type":"a","n":1,"inner":{"name":"x"},"map":{"k":1,"\u212a":2}}`, "only in case"},
		{"empty omitted", `{"type":"a","n":1,"inner":{"name":"x"},"comment":""}`, `unknown key "comment"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var d doc
			err := Decode([]byte(tc.in), &d)
			if !errors.Is(err, ErrNotCanonical) || !strings.Contains(err.Error(), tc.why) {
				t.Fatalf("got %v, want %q", err, tc.why)
			}
		})
	}
	if err := Decode([]byte(`{"type":1}`), &d); err == nil || errors.Is(err, ErrNotCanonical) {
		t.Fatalf("a type error: %v", err)
	}
	if err := Decode([]byte(strings.Repeat("[", 20000)), &d); err == nil {
		t.Fatal("deep nesting accepted")
	}
}

// fold is exactly the case folding encoding/json matches keys by.
func FuzzFold(f *testing.F) {
	f.Add("exp", "EXP")
	f.Add("k", "\u212a")
	f.Add("ſ", "S")
	f.Add("\xff", "\xfe")
	f.Fuzz(func(t *testing.T, a, b string) {
		if (fold(a) == fold(b)) != strings.EqualFold(a, b) {
			t.Fatalf("fold(%q)==fold(%q) is %v, EqualFold %v", a, b, fold(a) == fold(b), strings.EqualFold(a, b))
		}
	})
}
