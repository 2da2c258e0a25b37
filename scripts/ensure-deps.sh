#!/usr/bin/env bash
# Installs the system packages the broker and its tests need, when missing:
# SoftHSM2 (the PKCS#11 token used in dev mode and tests) and OpenSC
# (pkcs11-tool, used by tests to inspect tokens as an outsider would).
# With the argument "test", also the PostgreSQL server, which the tests
# start throwaway instances of (the broker's replicated store and a target
# that accepts the broker's X.509 client certificates), and OpenSSH's
# server and client (sshd accepts the broker's SSH certificates; ssh-keygen
# checks its KRLs), and Node.js with the npm packages of test/node (the
# relying party written with openid-client and jose) and of examples/node
# (the client written with @grpc/grpc-js, @grpc/proto-loader and jose),
# each from its lock file; and Debian's Chromium with the npm package of
# test/browser (playwright-core, which drives that Chromium and downloads no
# browser of its own). With the argument "examples" (make examples),
# Node.js and those npm packages only.
set -euo pipefail
need=()
have_softhsm=0
for p in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so; do
  [ -e "$p" ] && have_softhsm=1
done
{ [ "$have_softhsm" = 1 ] && command -v softhsm2-util >/dev/null; } || need+=(softhsm2)
command -v pkcs11-tool >/dev/null || need+=(opensc)
command -v openssl >/dev/null || need+=(openssl)
command -v gcc >/dev/null || need+=(gcc libc6-dev)
if [ "${1:-}" = test ]; then
  ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need+=(postgresql)
  [ -x /usr/sbin/sshd ] || need+=(openssh-server)
  # ssh-keygen checks KRLs; the witnesses the tests run keep their keys in ssh-agent.
  { command -v ssh-agent >/dev/null && command -v ssh-keygen >/dev/null && command -v ssh-add >/dev/null; } || need+=(openssh-client)
  # The approver console's browser tests run in Debian's Chromium.
  [ -x /usr/bin/chromium ] || need+=(chromium)
fi
if [ "${1:-}" = test ] || [ "${1:-}" = examples ]; then
  command -v node >/dev/null || need+=(nodejs)
  command -v npm >/dev/null || need+=(npm)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  # Installing a server must not start it: the tests run their own sshd
  # and PostgreSQL on loopback ports. policy-rc.d exiting 101 tells
  # invoke-rc.d to start nothing; one we put there is removed afterwards.
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  status=0
  $sudo apt-get install -y -qq "${need[@]}" >/dev/null || status=$?
  [ "$own_policy" = 1 ] && $sudo rm -f /usr/sbin/policy-rc.d
  [ "$status" = 0 ] || exit "$status"
fi
# grpcurl, which the tests use as an outside client does, comes from the Go
# module proxy into the project's .bin.
bin="$(cd "$(dirname "$0")/.." && pwd)/.bin"
if ! command -v grpcurl >/dev/null && [ ! -x "$bin/grpcurl" ]; then
  echo "installing: grpcurl" >&2
  GOBIN="$bin" go install github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.3
fi
# Real C2SP tlog-witness witnesses for the tests: litewitness and witnessctl
# from filippo.io/torchwood (v0.6.1 builds with this Go), into .bin.
if [ "${1:-}" = test ]; then
  for tool in litewitness witnessctl; do
    if [ ! -x "$bin/$tool" ]; then
      echo "installing: $tool" >&2
      GOBIN="$bin" go install "filippo.io/torchwood/cmd/$tool@v0.6.1"
    fi
  done
fi
# The npm packages of test/node and examples/node, exactly as their
# package-lock.json files say (npm ci), again whenever a lock file is newer
# than the installed tree. openid-client, jose and undici need Node.js
# 20.18 or later. With the argument "examples" (make examples), only
# Node.js, npm and these packages are installed.
if [ "${1:-}" = test ] || [ "${1:-}" = examples ]; then
  root="$(cd "$(dirname "$0")/.." && pwd)"
  if ! node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=18)?0:1)'; then
    echo "Node.js $(node --version) is too old for test/node and examples/node: they need 20.18 or later" >&2
    exit 1
  fi
  projects=(test/node examples/node)
  [ "${1:-}" = test ] && projects+=(test/browser)
  for project in "${projects[@]}"; do
    stamp="$root/$project/node_modules/.package-lock.json"
    if [ ! -e "$stamp" ] || [ "$root/$project/package-lock.json" -nt "$stamp" ]; then
      echo "installing: npm packages of $project" >&2
      npm ci --prefix "$root/$project" --no-audit --no-fund --loglevel=error >&2
    fi
  done
fi
