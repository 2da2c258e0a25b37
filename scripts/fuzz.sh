#!/usr/bin/env bash
# Runs every fuzz target of the module in turn for FUZZTIME (default 30s).
#
# Go 1.26's fuzz coordinator can end a run with a bare "context deadline
# exceeded" at the fuzztime boundary (go.dev/issue/75804, fixed in Go 1.27)
# without finding anything. A run fails here only when the fuzzer wrote a
# reproducer into testdata/fuzz; a failure without one is reported and
# skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
fuzztime="${FUZZTIME:-30s}"
go="${GO:-go}"
failed=0
for dir in $(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u); do
  for target in $(grep -h '^func Fuzz' "$dir"/*_test.go | sed 's/^func \(Fuzz[A-Za-z0-9_]*\).*/\1/'); do
    corpus="$dir/testdata/fuzz/$target"
    before=$(ls "$corpus" 2>/dev/null | sort)
    echo "== $dir $target ($fuzztime)"
    log=$(mktemp)
    "$go" test -run '^$' -fuzz "^$target\$" -fuzztime "$fuzztime" -fuzzminimizetime 3s "$dir" 2>&1 | tee "$log"
    status=${PIPESTATUS[0]}
    after=$(ls "$corpus" 2>/dev/null | sort)
    execs=$(grep -o 'execs: [0-9]*' "$log" | tail -1)
    if [ "$status" -ne 0 ]; then
      if [ "$before" != "$after" ]; then
        echo "FAILED: $dir $target wrote a reproducer into $corpus" >&2
        failed=1
      else
        echo "note: $dir $target ended with an error but wrote no reproducer (go.dev/issue/75804); $execs" >&2
      fi
    else
      echo "ok: $dir $target, $execs"
    fi
    rm -f "$log"
  done
done
exit $failed
