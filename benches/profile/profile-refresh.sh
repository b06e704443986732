#!/bin/bash
# Profiles the daemon's refreshes in the scale bench: runs `--only scale` (2,000 servers at a
# 20 s TTL for two lifetimes, the OAuth test server as its own process), and once every server
# is logged in records 25 s of the daemon's process with perf (cpu-clock, 499 Hz, DWARF call
# graphs). Then sorts the samples into the parts of a refresh (parts.py) and prints the table
# BENCHMARKS.md quotes. Usage: benches/profile/profile-refresh.sh TAG (writes /tmp/perf-TAG.*).
# Needs a release build of the bench (`cargo bench --locked --no-run --bench system`) and of
# the test server (`cargo build --release --locked -p oauth-test-server`, or set
# OAUTH_TEST_SERVER_BIN).
set -euo pipefail
cd "$(dirname "$0")/../.."
TAG=${1:-profile}
BENCH=$(ls -t target/release/deps/system-* | grep -v '\.d$' | head -1)
export BENCH_SCALE=${BENCH_SCALE:-2000} BENCH_TTL=${BENCH_TTL:-20s} BENCH_LIFETIMES=${BENCH_LIFETIMES:-2} BENCH_COLD=0
nice -n 10 "$BENCH" --bench --only scale >"/tmp/perf-$TAG.out" 2>"/tmp/perf-$TAG.err" &
PID=$!
until grep -q "servers for" "/tmp/perf-$TAG.err"; do
    sleep 1
    kill -0 "$PID" 2>/dev/null || { cat "/tmp/perf-$TAG.err"; exit 1; }
done
perf record -e cpu-clock -F 499 --call-graph dwarf,32768 -p "$PID" -o "/tmp/perf-$TAG.data" -- sleep 25 2>/dev/null
wait "$PID"
cat "/tmp/perf-$TAG.out"
perf script -i "/tmp/perf-$TAG.data" 2>/dev/null | python3 benches/profile/parts.py
