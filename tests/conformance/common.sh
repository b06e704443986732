# Shared by tests/conformance/run.sh and tests/conformance-next/run.sh (sourced, with the
# binary as $1 and $here set to the package directory whose node_modules hold the runner): the
# `connect` command line every scenario runs, the loopback-only network namespace, and one
# runner call. The mock servers listen on all interfaces and one scenario reaches for an
# outside address, hence the namespace with only loopback.
bin=$(realpath "${1:?usage: run.sh PATH/TO/mcpproxy-oauth}")
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
checker="$(dirname "${BASH_SOURCE[0]}")/check-results.mjs"

# The suite expects this client ID metadata document URL in auth/basic-cimd; it is used only
# where a server advertises client_id_metadata_document_supported.
client="$bin connect --browser-command 'curl -s -o /dev/null -L' \
  --client-metadata-url https://conformance-test.local/client-metadata.json \
  --call-tool test-tool --args {} --timeout 20s"

isolate=(unshare --net)
[ "$(id -u)" = 0 ] || isolate=(unshare --map-root-user --net)

# conformance DIR COMMAND RUNNER-ARGS...: one runner call, its results in $out/DIR.
conformance() {
  local dir=$1 command=$2
  shift 2
  mkdir -p "$out/$dir"
  "${isolate[@]}" sh -c "ip link set lo up && cd '$here' && exec npx --no-install conformance client $* --timeout 30000 -o '$out/$dir' --command \"$command\"" \
    >"$out/runner-$dir-$RANDOM.log" 2>&1 || true  # judged from checks.json, not the exit code
}
