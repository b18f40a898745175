# csnap: clustered snapshots for block storage, served over iSCSI.
#   make run    start csnapd -dev (one node, no Consul)
#   make cluster  run 3 nodes (Consul + csnapd on 127.0.0.1-3) until Ctrl-C
#   make test   install what the tests need, then run every test
GO      ?= go
BIN     := bin
VERSION := $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
# staticcheck is fetched through the module proxy at a pinned version
# (v0.6.1 is the 2025.1.1 release).
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.6.1

.PHONY: all build run test deps consul cluster unit integration conformance bench lint fuzz fuzz-brief clean crash

all: build

build:
	@mkdir -p $(BIN)
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

run: build
	./$(BIN)/csnapd -dev

# deps installs the Debian packages the integration tests drive (libiscsi's
# tools, qemu-img/qemu-io with the iSCSI driver, tgt as the reference
# target, and the VM initiator's parts). Idempotent and quick when done.
deps:
	./tests/setup-deps.sh

test: deps build consul lint unit fuzz-brief integration

# Every package but the integration tests (tests/...), so a new package is
# never left out.
unit:
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v '/csnap/tests')

# Every crash and fault point of the store engine (power cuts, IO errors,
# ENOSPC, failed flushes: TestCrash, TestCrashConcurrent, TestFaults), and
# power cuts under a running server and client (TestPowerCutServerClient);
# about 4000 points. make unit runs a deterministic sample of each.
crash:
	CSNAP_CRASH_STRIDE=1 $(GO) test -count=1 -timeout 60m -run 'TestCrash|TestFaults' -v ./snapstore/
	CSNAP_CRASH_STRIDE=1 $(GO) test -count=1 -timeout 30m -run TestPowerCutServerClient -v ./snapstore/client/

# -p 1: the cluster tests (tests/ and tests/cluster/) use the same fixed
# loopback ports, so test packages run one after another.
integration: build
	CSNAP_BIN=$(CURDIR)/$(BIN) $(GO) test -p 1 -count=1 -timeout 25m ./tests/...

conformance: build
	CSNAP_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -v -run TestConformance ./tests/

# Consul for the cluster tests: it has no Debian package and refuses
# `go install`, so tools/consul pins v1.20.6 (with upstream's go-msgpack
# excludes and a committed go.sum) and this builds it into bin/: about 12
# minutes cold on 2 cores, seconds when the Go build cache is warm.
consul: $(BIN)/consul

$(BIN)/consul: tools/consul/go.mod tools/consul/go.sum
	@mkdir -p $(BIN)
	cd tools/consul && CGO_ENABLED=0 $(GO) build -trimpath -o ../../$(BIN)/consul github.com/hashicorp/consul

# A local 3-node cluster (Consul + csnapd on 127.0.0.1-3) for trying csnap
# by hand: prints how to use it, runs until Ctrl-C, then stops every
# process; state and logs stay in ./csnap-cluster.
cluster: build consul
	$(GO) run ./tests/cluster/csnap-cluster -bin $(BIN) -dir ./csnap-cluster

bench: build consul
	./tests/bench/target-vs-tgtd.sh
	./tests/bench/snapshot-vs-plain.sh
	./tests/bench/cluster-vs-tgtd.sh
	$(GO) test -run '^$$' -bench . -benchtime 3x ./snapstore/

lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt -l: not formatted:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

# Every fuzzer of the repository (found by tools/fuzz.sh), FUZZTIME each.
fuzz:
	FUZZTIME=$${FUZZTIME:-30s} GO=$(GO) ./tools/fuzz.sh

# The brief pass CI runs: each fuzzer for a couple of seconds.
fuzz-brief:
	FUZZTIME=2s GO=$(GO) ./tools/fuzz.sh

clean:
	rm -rf $(BIN)
