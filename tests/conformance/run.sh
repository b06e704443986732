#!/usr/bin/env bash
# Runs the official MCP conformance suite against `mcpproxy-oauth connect`: the auth suite,
# the backcompat suite and the draft resource-mismatch scenario. The mock servers listen on all
# interfaces and one scenario reaches for an outside address, so the runner lives in a network
# namespace with only loopback. Every scenario must end with 0 failures and 0 warnings.
#
# Usage: tests/conformance/run.sh PATH/TO/mcpproxy-oauth
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=$(realpath "${1:?usage: run.sh PATH/TO/mcpproxy-oauth}")
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# The suite expects this client ID metadata document URL in auth/basic-cimd; it is used only
# where a server advertises client_id_metadata_document_supported.
client="$bin connect --browser-command 'curl -s -o /dev/null -L' \
  --client-metadata-url https://conformance-test.local/client-metadata.json \
  --call-tool test-tool --args {} --timeout 20s"

isolate=(unshare --net)
[ "$(id -u)" = 0 ] || isolate=(unshare --map-root-user --net)

run() {
  "${isolate[@]}" sh -c "ip link set lo up && cd '$here' && exec npx --no-install conformance client $* --timeout 30000 -o '$out' --command \"$client\"" \
    >"$out/runner-$RANDOM.log" 2>&1 || true  # judged from checks.json below, not from the runner's exit code
}

run --suite auth
run --suite backcompat
run --scenario auth/resource-mismatch

node "$here/check-results.mjs" "$out" \
  auth/metadata-default auth/metadata-var1 auth/metadata-var2 auth/metadata-var3 auth/basic-cimd \
  auth/scope-from-www-authenticate auth/scope-from-scopes-supported auth/scope-omitted-when-undefined \
  auth/scope-step-up auth/scope-retry-limit auth/token-endpoint-auth-basic auth/token-endpoint-auth-post \
  auth/token-endpoint-auth-none auth/pre-registration \
  auth/2025-03-26-oauth-metadata-backcompat auth/2025-03-26-oauth-endpoint-fallback \
  auth/resource-mismatch || { echo "runner output:"; cat "$out"/runner-*.log | tail -200; exit 1; }
