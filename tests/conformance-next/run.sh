#!/usr/bin/env bash
# Runs the prerelease MCP conformance suite (0.2.0-alpha.12, pinned in package.json) against
# `mcpproxy-oauth connect`, at both wires: the `auth` suite at 2025-11-25 and at 2026-07-28,
# the credential-kind extension scenarios (client credentials with a secret and with a key,
# enterprise-managed authorization, workload identity) at both wires, with `--grant KIND` and
# everything else from the runner's MCP_CONFORMANCE_CONTEXT,
# the draft auth scenarios of 2026-07-28 at their own wire and forced to 2025-11-25, the DPoP
# extension scenarios (auth/dpop, auth/dpop-nonce) at both wires, three 2026-07-28 wire
# scenarios, and the 2025-03-26 backcompat suite. The command line and the
# loopback-only network namespace are tests/conformance/common.sh's; every scenario listed
# here must end with 0 failures and 0 warnings (tests/conformance/check-results.mjs). The scenarios of this suite that are not run here are
# listed, with the reason, in README.md ("Conformance").
#
# Usage: tests/conformance-next/run.sh PATH/TO/mcpproxy-oauth
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/conformance/common.sh
. "$here/../conformance/common.sh"

auth=(auth/metadata-default auth/metadata-var1 auth/metadata-var2 auth/metadata-var3 auth/basic-cimd
  auth/scope-from-www-authenticate auth/scope-from-scopes-supported auth/scope-omitted-when-undefined
  auth/scope-step-up auth/scope-retry-limit auth/token-endpoint-auth-basic auth/token-endpoint-auth-post
  auth/token-endpoint-auth-none auth/pre-registration)
draft=(auth/resource-mismatch auth/offline-access-scope auth/offline-access-not-supported
  auth/authorization-server-migration auth/iss-supported auth/iss-not-advertised
  auth/iss-supported-missing auth/iss-wrong-issuer auth/iss-unexpected auth/iss-normalized
  auth/metadata-issuer-mismatch)
backcompat=(auth/2025-03-26-oauth-metadata-backcompat auth/2025-03-26-oauth-endpoint-fallback)
# Wire scenarios of 2026-07-28 that a one-shot `connect` can meet: the version header and
# `_meta` on every request (with a retry after -32022), the Mcp-Method/Mcp-Name headers, and
# tool schemas taken as given.
core=(request-metadata http-standard-headers json-schema-ref-no-deref)
# The DPoP extension (RFC 9449, SEP-1932): extension scenarios are on no spec timeline, so they
# are forced, at both wires.
dpop=(auth/dpop auth/dpop-nonce)
# The credential kinds (extensions, forced at both wires): `connect --grant KIND`, the client
# ID, secret, private key, IdP and ID token or workload JWT taken from MCP_CONFORMANCE_CONTEXT
# as flags or files would give them.
grants=(auth/client-credentials-basic auth/client-credentials-jwt
  auth/enterprise-managed-authorization auth/wif-jwt-bearer)
grant_kind() {
  case $1 in
    auth/client-credentials-*) echo client_credentials ;;
    auth/enterprise-managed-authorization) echo enterprise ;;
    auth/wif-jwt-bearer) echo workload ;;
  esac
}

# The checker must fail a client that does nothing, on failed checks of a scenario that ran
# (not merely because nothing ran), or a pass proves nothing.
conformance do-nothing true --scenario auth/metadata-default --spec-version 2026-07-28
conformance do-nothing true --scenario auth/iss-wrong-issuer --spec-version 2026-07-28
conformance do-nothing true --scenario auth/dpop-nonce --spec-version 2026-07-28 --force
conformance do-nothing true --scenario auth/client-credentials-basic --spec-version 2026-07-28 --force
for scenario in auth/metadata-default auth/iss-wrong-issuer auth/dpop-nonce auth/client-credentials-basic; do
  if verdict=$(node "$checker" "$out/do-nothing" "$scenario") || ! grep -q "FAILURE" <<<"$verdict"; then
    echo "the conformance checker did not fail a client that does nothing in $scenario: $verdict"
    tail -n 40 "$out"/runner-do-nothing-*.log
    exit 1
  fi
done

conformance wire-2025-11-25 "$client" --suite auth --spec-version 2025-11-25
conformance wire-2026-07-28 "$client" --suite auth --spec-version 2026-07-28
conformance backcompat "$client" --suite backcompat
for scenario in "${core[@]}"; do
  conformance core "$client" --scenario "$scenario" --spec-version 2026-07-28 &
done
wait
# The draft scenarios run one by one (a suite filters them by version); in parallel, as a suite
# would, one wire at a time.
for wire in 2026-07-28 2025-11-25; do
  for scenario in "${draft[@]}" "${dpop[@]}"; do
    conformance "draft-$wire" "$client" --scenario "$scenario" --spec-version "$wire" --force &
  done
  wait
done
for wire in 2026-07-28 2025-11-25; do
  for scenario in "${grants[@]}"; do
    conformance "grants-$wire" "$client --grant $(grant_kind "$scenario")" --scenario "$scenario" \
      --spec-version "$wire" --force &
  done
  wait
done

failed=0
for dir in wire-2025-11-25 wire-2026-07-28; do
  echo "== auth at $dir"
  node "$checker" "$out/$dir" "${auth[@]}" || failed=1
done
for wire in 2026-07-28 2025-11-25; do
  echo "== draft auth scenarios and the DPoP extension at wire $wire"
  node "$checker" "$out/draft-$wire" "${draft[@]}" "${dpop[@]}" || failed=1
done
for wire in 2026-07-28 2025-11-25; do
  echo "== credential kinds (client credentials, enterprise-managed, workload identity) at wire $wire"
  node "$checker" "$out/grants-$wire" "${grants[@]}" || failed=1
done
echo "== 2026-07-28 wire scenarios"
node "$checker" "$out/core" "${core[@]}" || failed=1
echo "== backcompat"
node "$checker" "$out/backcompat" "${backcompat[@]}" || failed=1
if [ "$failed" != 0 ]; then
  echo "runner output:"
  tail -n 60 "$out"/runner-*.log
  exit 1
fi
