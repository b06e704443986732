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
export BENCH_SCALE=${BENCH_SCALE:-2000} BENCH_TTL=${BENCH_TTL:-20s} BENCH_LIFETIMES=${BENCH_LIFETIMES:-2} BENCH_COLD=0
. benches/profile/scale-run.sh
start_scale "perf-$TAG"
perf record -e cpu-clock -F 499 --call-graph dwarf,32768 -p "$PID" -o "/tmp/perf-$TAG.data" -- sleep 25 2>/dev/null
wait "$PID"
cat "/tmp/perf-$TAG.out"
perf script -i "/tmp/perf-$TAG.data" 2>/dev/null | python3 benches/profile/parts.py
