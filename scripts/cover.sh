#!/usr/bin/env bash
# Statement coverage per package, counting what the end-to-end tests run in
# the breakglassd and bgctl processes they start: the unit tests (and the
# in-process brokers of test/) write their counters with -test.gocoverdir;
# the binaries, built with -cover, write theirs to $GOCOVERDIR when they
# exit; go tool covdata merges both. Prints a table; COVERDIR keeps the
# raw data (a temporary directory otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
mod=$($GO list -m)
keep=${COVERDIR:-}
out=${COVERDIR:-$(mktemp -d)}
[ -z "$keep" ] && trap 'rm -rf "$out"' EXIT
rm -rf "$out/unit" "$out/e2e"
mkdir -p "$out/unit" "$out/e2e"
# The product's packages: not the generated API, the benchmarks or the
# test helpers.
pkgs=$($GO list ./... | grep -vE "^$mod/(proto|bench|test)(/|$)|/(storetest|pgtest|hsmtest|witnesstest)$" | paste -sd, -)
flags="-cover -covermode=atomic -coverpkg=$pkgs"
BREAKGLASS_E2E_COVERDIR="$out/e2e" BREAKGLASS_E2E_BUILDFLAGS="$flags" \
  $GO test -count=1 -timeout 30m $flags ./... -args -test.gocoverdir="$out/unit" >"$out/test.log" 2>&1 ||
  { grep -E '^(--- FAIL|FAIL|panic)|_test.go:[0-9]+:' "$out/test.log" | cut -c1-300 | tail -40; echo "make cover: the tests failed (log above)" >&2; exit 1; }
percent() { $GO tool covdata percent -i="$1" | awk '{sub(/%/, "", $3); print $1, $3}' | sort; }
join -a1 -a2 -e - -o 0,1.2,2.2 <(percent "$out/unit") <(percent "$out/unit,$out/e2e") |
  awk -v mod="$mod/" 'function pc(v) { return v == "-" ? "–" : v "%" }
    BEGIN { printf "| package | unit tests | with end-to-end |\n|---|---:|---:|\n" }
    { p = $1; sub("^" mod, "", p); printf "| %s | %s | %s |\n", p, pc($2), pc($3) }'
echo
echo "total: $($GO tool covdata percent -i="$out/unit,$out/e2e" -pkg="$pkgs" 2>/dev/null | awk '{ gsub(/%/, "", $3); s += $3; n++ } END { printf "%.1f%% mean over %d packages", s / n, n }')"
