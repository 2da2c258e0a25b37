package grpcapi

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Every RPC says in its comment who may call it: relying parties and
// auditors read the proto, not the broker's Go code, to learn what their
// certificate lets them do.
func TestEveryRPCSaysWhoMayCallIt(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "..", "proto", "breakglass", "v1", "*.proto"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no .proto files here (%v)", err)
	}
	rpcs := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(string(b), "\n")
		for i, line := range lines {
			name, ok := strings.CutPrefix(strings.TrimSpace(line), "rpc ")
			if !ok {
				continue
			}
			rpcs++
			name, _, _ = strings.Cut(name, "(")
			var comment []string
			for j := i - 1; j >= 0 && strings.HasPrefix(strings.TrimSpace(lines[j]), "//"); j-- {
				comment = append(comment, lines[j])
			}
			if !strings.Contains(strings.Join(comment, "\n"), "// Who may call: ") {
				t.Errorf("%s: rpc %s has no \"Who may call:\" line in its comment", f, name)
			}
		}
	}
	if rpcs < 20 {
		t.Fatalf("found only %d rpcs: the parser is broken", rpcs)
	}
}
