# mcpproxy-oauth: one entry point for building, testing and demos.
# `make test` is what CI runs (through .ci/run) and what the README's quick start names.

CARGO ?= cargo

.PHONY: all build test test-rust test-interop test-gateway test-conformance test-e2e lint demo demo-server bench bench-gateway bench-store bench-criterion clean

all: build

## One build of libraries, binaries and tests, with one feature set, that every test step
## reuses (building a single package would unify features differently and rebuild).
build:
	$(CARGO) build --workspace --lib --bins --tests --locked

## The whole test suite: every Rust test of the workspace, third-party clients, and the
## official MCP conformance suite.
test: test-rust test-interop test-gateway test-conformance test-e2e

test-rust: build
	$(CARGO) test --workspace --locked
	$(CARGO) test --locked --bench access_token
	$(CARGO) test --locked --bench token_save

## A client nobody here wrote (the MCP TypeScript SDK) against the OAuth test server.
test-interop: build
	cd tests/oauthserver/interop && npm ci --no-audit --no-fund --loglevel=error
	node tests/oauthserver/interop/sdk-client.mjs target/debug/oauth-test-server

## The MCP TypeScript SDK's clients (Streamable HTTP without an auth provider, and stdio)
## through the gateway and the stdio bridge, against OAuth test servers with 2 s tokens.
test-gateway: build
	cd tests/gateway && npm ci --no-audit --no-fund --loglevel=error
	node tests/gateway/gateway.mjs target/debug/mcpproxy-oauth target/debug/oauth-test-server

## The MCP conformance suites against `connect`: 0.1.16 (auth, backcompat, draft
## resource-mismatch) and the prerelease 0.2.0-alpha.12 at the 2025-11-25 and 2026-07-28 wires.
## Needs root or unprivileged user namespaces, for a loopback-only network namespace.
test-conformance: build
	cd tests/conformance && npm ci --no-audit --no-fund --loglevel=error
	tests/conformance/run.sh target/debug/mcpproxy-oauth
	cd tests/conformance-next && npm ci --no-audit --no-fund --loglevel=error
	tests/conformance-next/run.sh target/debug/mcpproxy-oauth

## The web page in a real Chromium (Debian's /usr/bin/chromium; CHROMIUM overrides), against
## the real daemon and OAuth test server binaries. Screenshots: tests/e2e/artifacts/.
test-e2e: build
	cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error
	cd tests/e2e && npx playwright test

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

## The quick-start demo: `serve` keeping the OAuth test server (30 s tokens) authorized.
demo:
	examples/demo.sh

## Benchmarks: five tables (hot path beside rmcp, stampedes, scale, cold start, durable
## writes) printed and written to BENCHMARKS.md, in release. Bounded: 2 hours at most (the
## issue's sizes); `make bench BENCH_ARGS=--quick` runs small sizes in a few minutes. The scale
## and cold-start tables run the OAuth test server's release binary as its own process.
BENCH_ARGS ?=
bench:
	$(CARGO) build --release --locked -p oauth-test-server --bin oauth-test-server
	timeout 7200 $(CARGO) bench --locked --bench system -- $(BENCH_ARGS)
	$(MAKE) bench-gateway
	$(MAKE) bench-store

## The gateway's table alone (about a minute): a proxied tools/call against the direct call,
## and our stdio bridge beside mcp-remote (installed here from benches/gateway's lock file).
## Written into BENCHMARKS.md as table 6. GATEWAY_BENCH_ARGS=--quick runs fewer calls.
GATEWAY_BENCH_ARGS ?=
bench-gateway:
	cd benches/gateway && npm ci --no-audit --no-fund --loglevel=error
	timeout 900 $(CARGO) bench --locked --bench gateway -- $(GATEWAY_BENCH_ARGS)

## The store's section (a few minutes): refreshes per second through PostgreSQL beside SQLite,
## the lease hand-off between two instances, statements per refresh with three instances; on a
## PostgreSQL the bench starts from Debian's binaries. Written into BENCHMARKS.md as section 7.
## STORE_BENCH_ARGS=--quick runs small sizes.
STORE_BENCH_ARGS ?=
bench-store:
	timeout 900 $(CARGO) bench --locked --bench store -- $(STORE_BENCH_ARGS)

## The criterion micro-benchmarks (hot path against a bare RwLock, token saves).
bench-criterion:
	$(CARGO) bench --locked --bench access_token
	$(CARGO) bench --locked --bench token_save

## The OAuth test server with short TTLs, for trying things by hand.
demo-server:
	$(CARGO) run -p oauth-test-server --locked -- --port 9000 --access-token-ttl 30s

clean:
	$(CARGO) clean
