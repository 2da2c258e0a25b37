# The README's two commands: `make dev` brings the broker up, `make test`
# runs everything CI runs.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/.bin
BUF := $(GO) run github.com/bufbuild/buf/cmd/buf@v1.75.0
# Pinned and built through the Go module proxy, like buf; .golangci.yml
# holds the linters and every reviewed exclusion.
GOLANGCI_LINT := $(GO) run github.com/golangci/golangci-lint/v2/cmd/golangci-lint@v2.15.0
PROTOC_GEN_GO := google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
PROTOC_GEN_GO_GRPC := google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
export PATH := $(BIN):$(PATH)
export CGO_ENABLED := 1

.PHONY: all build deps test-deps examples-deps examples dev test fuzz soak vet purego lint proto proto-check unit tools bench bench-scale clean cover

all: build

deps:
	@./scripts/ensure-deps.sh

build:
	$(GO) build -o $(BIN)/ ./cmd/...

dev: deps build
	$(BIN)/breakglassd dev

test: test-deps vet purego lint proto-check unit

test-deps:
	@./scripts/ensure-deps.sh test

examples-deps:
	@./scripts/ensure-deps.sh examples

# The Node client of examples/node, written from the proto, docs/signing.md
# and testdata/vectors alone: its vector tests, then the whole flow against
# a fresh dev broker (make test runs both in TestNodeClientVectors and
# TestNodeClientFlow).
examples: examples-deps build
	@./scripts/examples.sh

vet:
	$(GO) vet ./...

# The SDK must build without cgo, so anyone can import it; so must bgctl,
# for approvers without a C toolchain (its PKCS#11 keys need cgo).
purego:
	CGO_ENABLED=0 $(GO) build ./client/... ./proto/...
	CGO_ENABLED=0 $(GO) build -o /dev/null ./cmd/bgctl

tools:
	@mkdir -p $(BIN)
	@test -x $(BIN)/protoc-gen-go || GOBIN=$(BIN) $(GO) install $(PROTOC_GEN_GO)
	@test -x $(BIN)/protoc-gen-go-grpc || GOBIN=$(BIN) $(GO) install $(PROTOC_GEN_GO_GRPC)

# golangci-lint (depguard keeps client/ and format/ free of the broker),
# buf lint, and the SDK's whole dependency graph checked for broker code.
lint:
	$(GOLANGCI_LINT) run --allow-parallel-runners ./...
	$(BUF) lint
	@if $(GO) list -deps ./client/... | grep -E '^github.com/bgbroker/breakglass/(server|hsm|cmd)(/|$$)'; then \
	  echo "client/ depends on the broker's packages above" >&2; exit 1; fi

proto: tools
	$(BUF) generate

# Regenerates into a scratch directory and fails if the committed code
# differs (tests kept beside the generated code are not generated).
proto-check: tools
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	$(BUF) generate -o $$tmp && \
	diff -r -x '*.proto' -x '*_test.go' $$tmp/proto proto >/dev/null 2>&1 || \
	  { diff -r -x '*.proto' -x '*_test.go' $$tmp/proto proto; echo "generated protobuf code is stale: run 'make proto' and commit" >&2; exit 1; }
	@echo "generated protobuf code is up to date"

# The scale cases (40,000 active grants) are built without the race
# detector, which slows the embedded SQLite twentyfold: they run in a pass
# of their own.
unit:
	$(GO) test -race -count=1 -timeout 20m ./...
	$(GO) test -count=1 -timeout 10m -run 'TestScale' ./server/...

# Statement coverage per package, the end-to-end tests' processes included
# (binaries built with -cover, GOCOVERDIR, go tool covdata), as a table.
cover: test-deps
	@GO=$(GO) ./scripts/cover.sh

# Runs every fuzz target in turn for FUZZTIME each (the seed corpora in
# testdata/fuzz also run as ordinary tests in `make test`).
FUZZTIME ?= 30s
fuzz:
	@FUZZTIME=$(FUZZTIME) GO=$(GO) ./scripts/fuzz.sh

# Measures the broker against the HSM's own signing rate, in one run on one
# SoftHSM2 token: a table on stdout, the figures in bench/results/latest.json.
# BENCHFLAGS=-quick for a short run; -profiles DIR keeps the CPU profiles.
bench: deps build
	$(GO) run ./bench -breakglassd $(BIN)/breakglassd $(BENCHFLAGS)

# Measures the daemon at 10k, 100k and 1M audit entries in one run (start,
# idle CPU, every ListRequests filter, reports, /metrics, proofs, export and
# offline verification, IssueToken and whole flows), with each figure's
# ratio to its 10k value: a table on stdout, the figures in
# bench/results/scale.json. Takes most of an hour; BENCHFLAGS=-quick for a
# short run at 2k and 20k entries, -sizes N,M,... for other sizes.
bench-scale: deps build
	$(GO) run ./bench -scale -breakglassd $(BIN)/breakglassd -bgctl $(BIN)/bgctl $(BENCHFLAGS)

# Holds a steady mixed load (requests, signed reviews, tokens, reads, audit
# reads, watch streams) on a running breakglassd for SOAKTIME at SOAKRATE
# operations a second, sampling its memory, goroutines, open files and
# latency; fails on any error or growth. Figures in bench/results/soak.json.
SOAKTIME ?= 5m
SOAKRATE ?= 100
soak: deps build
	$(GO) run ./bench -breakglassd $(BIN)/breakglassd -soak $(SOAKTIME) -rate $(SOAKRATE)

clean:
	rm -rf $(BIN)
