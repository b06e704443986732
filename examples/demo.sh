#!/usr/bin/env bash
# The quick-start demo: the OAuth test server (auto-approving logins, 30 s access tokens) on
# 127.0.0.1:9000, and `mcpproxy-oauth serve` keeping it authorized with its SQLite store in
# .data/demo. Watch one login, then a silent refresh every ~22 s. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --quiet -p mcpproxy-oauth -p oauth-test-server --bins
mkdir -p .data/demo
target/debug/oauth-test-server --port 9000 --access-token-ttl 30s > .data/demo/oauth-test-server.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
# Wait (bounded) for the server's "listening on" line.
for _ in $(seq 1 50); do
  grep -q "^listening on" .data/demo/oauth-test-server.log 2>/dev/null && break
  kill -0 "$server" 2>/dev/null || { cat .data/demo/oauth-test-server.log; exit 1; }
  sleep 0.1
done
grep -q "^listening on" .data/demo/oauth-test-server.log || { echo "the OAuth test server did not start"; exit 1; }
echo "OAuth test server on http://127.0.0.1:9000 (log: .data/demo/oauth-test-server.log)"
# The test server approves at once, so following its redirect is the whole "browser" login.
target/debug/mcpproxy-oauth serve --config examples/demo_config.json --data-dir .data/demo \
  --browser-command "curl -s -o /dev/null -L" "$@"
