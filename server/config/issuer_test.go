package config

import (
	"strings"
	"testing"
)

// The issuer relying parties see as iss: https with a host, a path
// allowed, nothing that would give it a second spelling; http only on
// loopback and only in dev mode.
func TestValidateIssuer(t *testing.T) {
	cases := []struct {
		issuer    string
		allowHTTP bool
		refused   string // "" when accepted
	}{
		{"https://breakglass.example.com", false, ""},
		{"https://breakglass.example.com:8443", false, ""},
		{"https://sec.example.com/breakglass", false, ""},
		{"https://sec.example.com/a/b-c_d.e~f", false, ""},
		{"https://127.0.0.1:7444", false, ""},
		{"http://127.0.0.1:7444", true, ""},
		{"http://localhost:7444", true, ""},
		{"http://[::1]:7444", true, ""},
		{"http://127.0.0.1:7444", false, "only dev mode may use http"},
		{"http://breakglass.example.com", true, "must be an https URL"},
		{"ftp://breakglass.example.com", false, "must be an https URL"},
		{"breakglass.example.com", false, "must be an https URL"},
		{"https://", false, "has no host"},
		{"https:breakglass.example.com", false, "has no host"},
		{"https://user:pw@breakglass.example.com", false, "user name or password"},
		{"https://breakglass.example.com?x=1", false, "query or fragment"},
		{"https://breakglass.example.com?", false, "query or fragment"},
		{"https://breakglass.example.com#top", false, "query or fragment"},
		{"https://breakglass.example.com/", false, `must not end in "/"`},
		{"https://sec.example.com/breakglass/", false, `must not end in "/"`},
		{"https://sec.example.com/break%20glass", false, "has a path with characters"},
		{"https://sec.example.com/a//b", false, "has a path with characters"},
		{"https://sec.example.com/a/../b", false, `".." segment`},
		{"https://sec.example.com/./b", false, `".." segment`},
		{"https://sec.example.com/a.b/..c", false, ""},
		{"https://Breakglass.example.com", false, "lowercase"},
		{"://x", false, "is not a URL"},
	}
	for _, c := range cases {
		err := ValidateIssuer(c.issuer, c.allowHTTP)
		switch {
		case c.refused == "" && err != nil:
			t.Errorf("%q (dev %v): refused: %v", c.issuer, c.allowHTTP, err)
		case c.refused != "" && (err == nil || !strings.Contains(err.Error(), c.refused)):
			t.Errorf("%q (dev %v): %v, want an error with %q", c.issuer, c.allowHTTP, err, c.refused)
		}
	}
}
