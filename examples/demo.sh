#!/usr/bin/env bash
# The quick-start demo: the OAuth test server (auto-approving logins, 30 s access tokens) on
# 127.0.0.1:$DEMO_PORT (9000), and `mcpproxy-oauth serve` keeping it authorized with its SQLite
# store in .data/demo, its web page and API on http://127.0.0.1:$DEMO_API_PORT/ (9001): serve
# prints the URL to open, with the API key it keeps in .data/demo/api-key. Watch one login,
# then a silent refresh every ~22 s. Ctrl-C or SIGTERM stops both.
#
# The test server keeps its clients and tokens in memory only, so each run starts from an
# empty .data/demo: a registration stored by an earlier run would name a client the new server
# never heard of. DEMO_NO_BUILD=1 skips the build (tests run the demo on a built tree);
# DEMO_DATA_DIR moves .data/demo.
set -euo pipefail
cd "$(dirname "$0")/.."
port="${DEMO_PORT:-9000}"
api_port="${DEMO_API_PORT:-9001}"
data="${DEMO_DATA_DIR:-.data/demo}"
if [ -z "${DEMO_NO_BUILD:-}" ]; then
  echo "building (the first build takes a few minutes; later ones are quick)..."
  # The same build as `make build`, so demo, tests and cargo run share one feature set.
  cargo build --workspace --lib --bins --tests --locked
fi
rm -rf "$data"
mkdir -p "$data"
cat > "$data/mcp_config.json" <<EOF
{"mcpServers": [{"name": "demo", "url": "http://127.0.0.1:$port/mcp", "protocol": "http", "oauth": {}}]}
EOF
server=""
serve=""
stop() {
  # Both children go, whichever way the script ends; serve gets its clean shutdown first.
  if [ -n "$serve" ]; then kill -TERM "$serve" 2>/dev/null || true; wait "$serve" 2>/dev/null || true; fi
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
target/debug/oauth-test-server --port "$port" --access-token-ttl 30s > "$data/oauth-test-server.log" 2>&1 &
server=$!
# Wait (bounded) for the server's "listening on" line.
for _ in $(seq 1 50); do
  grep -q "^listening on" "$data/oauth-test-server.log" 2>/dev/null && break
  kill -0 "$server" 2>/dev/null || { cat "$data/oauth-test-server.log"; exit 1; }
  sleep 0.1
done
grep -q "^listening on" "$data/oauth-test-server.log" || { echo "the OAuth test server did not start"; exit 1; }
echo "OAuth test server on http://127.0.0.1:$port (log: $data/oauth-test-server.log)"
echo "web page and API on http://127.0.0.1:$api_port/ (every request needs the API key: open the URL below)"
# The test server approves at once, so following its redirect is the whole "browser" login.
target/debug/mcpproxy-oauth serve --config "$data/mcp_config.json" --data-dir "$data" \
  --listen "127.0.0.1:$api_port" --browser-command "curl -s -o /dev/null -L" "$@" &
serve=$!
# `wait` returns when a trapped signal arrives, so the trap runs at once.
wait "$serve"
