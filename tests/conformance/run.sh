#!/usr/bin/env bash
# Runs the official MCP conformance suite against `mcpproxy-oauth connect`: the auth suite,
# the backcompat suite and the draft resource-mismatch scenario, in a network namespace with
# only loopback (tests/conformance/common.sh). Every scenario must end with 0 failures and 0
# warnings.
#
# Usage: tests/conformance/run.sh PATH/TO/mcpproxy-oauth
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/conformance/common.sh
. "$here/common.sh"

conformance results "$client" --suite auth
conformance results "$client" --suite backcompat
conformance results "$client" --scenario auth/resource-mismatch

node "$checker" "$out/results" \
  auth/metadata-default auth/metadata-var1 auth/metadata-var2 auth/metadata-var3 auth/basic-cimd \
  auth/scope-from-www-authenticate auth/scope-from-scopes-supported auth/scope-omitted-when-undefined \
  auth/scope-step-up auth/scope-retry-limit auth/token-endpoint-auth-basic auth/token-endpoint-auth-post \
  auth/token-endpoint-auth-none auth/pre-registration \
  auth/2025-03-26-oauth-metadata-backcompat auth/2025-03-26-oauth-endpoint-fallback \
  auth/resource-mismatch || { echo "runner output:"; cat "$out"/runner-*.log | tail -200; exit 1; }
