#!/usr/bin/env bash
# make examples: the Node client of examples/node against a fresh
# `breakglassd dev` in a temporary directory. npm test checks its signing
# code against testdata/vectors; flow.mjs runs the whole flow as the dev
# identities, then audits the log with the audit and checkpoint keys read
# from the HSM with `breakglassd hsm pubkey`, as an auditor pins them.
# The broker is stopped and its directory removed on exit.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/.bin"
dir="$(mktemp -d)"
pid=""
cleanup() {
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$dir"
}
trap cleanup EXIT

"$bin/breakglassd" dev --dir "$dir/state" --addr 127.0.0.1:0 --http-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 \
  --ready-file "$dir/ready.json" >"$dir/banner" 2>"$dir/broker.log" &
pid=$!
deadline=$((SECONDS + 60))
until [ -s "$dir/ready.json" ]; do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "breakglassd dev exited:" >&2; cat "$dir/broker.log" >&2; exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "breakglassd dev did not become ready in 60 s:" >&2; cat "$dir/broker.log" >&2; exit 1
  fi
  sleep 0.1
done
# The ready file is written whole once the broker serves.
grpc="$(node -e 'process.stdout.write(JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).grpc)' "$dir/ready.json")"
cfg="$dir/state/config.yaml"
origin="$(sed -n 's/^ *origin: *//p' "$cfg" | head -n 1)"
"$bin/breakglassd" hsm pubkey --config "$cfg" --label audit-dev >"$dir/audit.pem"
"$bin/breakglassd" hsm pubkey --config "$cfg" --label checkpoint-dev --format note --note-name "$origin" >"$dir/checkpoint.vkey"

cd "$root/examples/node"
echo "examples/node: npm test (testdata/vectors)" >&2
npm test --silent
echo "examples/node: flow.mjs against breakglassd dev at $grpc" >&2
BG_ADDR="$grpc" BG_DEV_DIR="$dir/state" BG_AUDIT_KEY="$dir/audit.pem" BG_CHECKPOINT_KEY="$dir/checkpoint.vkey" node flow.mjs
