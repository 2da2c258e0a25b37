package test

import (
	"os/exec"
	"strings"
	"testing"
)

// The README's tour in a fresh shell: sourcing an identity file is enough
// for bgctl to run, since dev mode puts the bgctl built beside breakglassd
// on PATH (once, whatever the number of files sourced); before, a newcomer
// typing the tour got "bgctl: command not found".
func TestIdentityEnvPutsBgctlOnPath(t *testing.T) {
	d := startDev(t)
	sh, err := exec.LookPath("bash")
	if err != nil {
		t.Fatal(err)
	}
	script := `source "$1" && source "$2" && command -v bgctl && echo "PATH=$PATH" && bgctl accounts`
	r := runCmd(t, []string{"HOME=" + t.TempDir(), "PATH=/usr/bin:/bin"}, "", sh, "-c", script, "tour",
		d.state("identities", "alice.env"), d.state("identities", "bob.env"))
	if r.code != 0 {
		t.Fatalf("the tour in a fresh shell: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if !strings.HasPrefix(r.stdout, bin.bgctl+"\n") || strings.Count(r.stdout, bin.dir) != 2 || !strings.Contains(r.stdout, "prod-db") {
		t.Errorf("bgctl on PATH once, then bgctl accounts:\n%s", r.stdout)
	}
}
