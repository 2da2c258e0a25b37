package policy

import (
	"strings"
	"testing"
)

// A logged policy is held to the rules of a policy file: what the loader
// would refuse in a file, the verifier refuses in the log, with the
// loader's own message.
func TestLoggedPolicyHeldToLoaderRules(t *testing.T) {
	full := mustLoad(t, fuzzPolicy)
	for _, p := range []*Policy{mustLoad(t, basePolicy), full} {
		back, err := FromCanonicalJSON(p.CanonicalJSON())
		if err != nil || back.Hash() != p.Hash() {
			t.Fatalf("a loaded policy does not come back from its canonical form: %v", err)
		}
	}
	canon := string(mustLoad(t, basePolicy).CanonicalJSON())
	tests := []struct{ name, from, to, why string }{
		{"a group named like rule text", `"db-admins":["bob","carol"]`, `"db-admins":["bob","carol"],"db-admins and 1 of security":["bob"]`,
			`group name "db-admins and 1 of security" must be lower-case letters`},
		{"a principal outside the grammar", `"db-admins":["bob","carol"]`, `"db-admins":["bob","carol","user/bob"]`,
			`principal "user/bob" must be letters`},
		{"unsorted members", `"db-admins":["bob","carol"]`, `"db-admins":["carol","bob"]`, "members must be sorted"},
		{"a member listed twice", `"db-admins":["bob","carol"]`, `"db-admins":["bob","bob","carol"]`, `principal "bob" is listed twice`},
		{"an unknown setting", `"max_duration"`, `"superusers":["mallory"],"max_duration"`, `unknown key "superusers"`},
		{"a duplicate key", `"auditors":"auditors"`, `"auditors":"auditors","auditors":"sre"`, `key "auditors" appears twice`},
		{"a case variant", `"auditors":"auditors"`, `"auditors":"auditors","Auditors":"sre"`, "only in case"},
		{"zero approvals", `"approvals":1}`, `"approvals":0}`, "must be at least 1"},
		{"an unreachable quorum", `{"group":"security","approvals":1}`, `{"group":"security","approvals":5}`, "cannot be met"},
		{"a duration in nanoseconds", `"max_ttl":"1h0m0s"`, `"max_ttl":3600000000000`, "canonical"},
		{"a window past the ceiling", `"max_ttl":"1h0m0s"`, `"max_ttl":"8760h0m0s"`, "longer than the ceiling"},
		{"an unknown group", `"owner":"owners"`, `"owner":"nobody"`, `unknown group "nobody"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(canon, tc.from) {
				t.Fatalf("%q is not in %s", tc.from, canon)
			}
			_, err := FromCanonicalJSON([]byte(strings.Replace(canon, tc.from, tc.to, 1)))
			if err == nil || !strings.Contains(err.Error(), tc.why) {
				t.Fatalf("got %v, want %q", err, tc.why)
			}
		})
	}
}

// The identity rule is a setting of the policy: validated by the loader,
// part of the hash, carried by the logged form.
func TestIdentitySection(t *testing.T) {
	p := mustLoad(t, "identity: {mode: uri, uri_prefix: \"spiffe://example.org/user/\"}\n"+basePolicy)
	if p.Identity == nil || *p.Identity != (Identity{Mode: "uri", URIPrefix: "spiffe://example.org/user/"}) {
		t.Fatalf("identity %+v", p.Identity)
	}
	base := mustLoad(t, basePolicy)
	if base.Identity != nil || base.Hash() == p.Hash() || base.WithIdentity(*p.Identity).Hash() != p.Hash() {
		t.Fatal("the identity rule is not part of the hash, or WithIdentity differs from the file's")
	}
	back, err := FromCanonicalJSON(p.CanonicalJSON())
	if err != nil || *back.Identity != *p.Identity {
		t.Fatalf("round trip: %v", err)
	}
	for _, tc := range []struct{ section, why string }{
		{`identity: {mode: uri, uri_prefix: "spiffe://example.org/user"}`, `must end in "/"`},
		{`identity: {mode: uri}`, "uri_prefix is required"},
		{`identity: {mode: email}`, "must be uri or cn"},
		{`identity: {mode: cn, uri_prefix: "spiffe://x/"}`, "is set in cn mode"},
		{`identity: {mode: uri, uri_prefix: "SPIFFE://x/"}`, "lowercase"},
		{`identity: {mode: uri, uri_prefix: "spiffe://x/", extra: 1}`, `unknown setting "extra"`},
	} {
		_, err := Load([]byte(tc.section+"\n"+basePolicy), "p.yaml")
		if err == nil || !strings.Contains(err.Error(), tc.why) {
			t.Errorf("%s: %v, want %q", tc.section, err, tc.why)
		}
	}
	if Diff(base.WithIdentity(*p.Identity), base.WithIdentity(Identity{Mode: "cn"}))[0].Path != "identity" {
		t.Fatal("an identity change is not a change")
	}
}
