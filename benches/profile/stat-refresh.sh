#!/bin/bash
# Counts what the daemon's refreshes cost in the scale bench with perf's software counters,
# which do not drift with the machine's load the way CPU-clock samples do: fsyncs, context
# switches, futex calls (thread hand-offs) and writes per refresh, beside the CPU time. Runs
# `--only scale` (2,000 servers at a 20 s TTL for two lifetimes by default, the OAuth test
# server as its own process and so not counted) and counts from the bench's "servers for"
# line for the run's length, then divides by the refreshes the run counted (its table).
# Usage: benches/profile/stat-refresh.sh TAG (writes /tmp/stat-TAG.*). Needs the release
# bench (`cargo bench --locked --no-run --bench system`, or BENCH_BIN) and a test server
# build (OAUTH_TEST_SERVER_BIN, else target/release/oauth-test-server).
# Instruction counts (callgrind, cachegrind) are not an option here: under valgrind 3.19 the
# daemon's first `clock_gettime` through rustix faults (its vDSO lookup reads an unmapped
# page).
set -euo pipefail
cd "$(dirname "$0")/../.."
TAG=${1:-stat}
export BENCH_SCALE=${BENCH_SCALE:-2000} BENCH_TTL=${BENCH_TTL:-20s} BENCH_LIFETIMES=${BENCH_LIFETIMES:-2}
export BENCH_COLD=0 BENCH_OUT=${BENCH_OUT:-/tmp/stat-$TAG.md}
RUN_S=$(( ${BENCH_TTL%s} * BENCH_LIFETIMES ))
OUT=/tmp/stat-$TAG
. benches/profile/scale-run.sh
start_scale "stat-$TAG"
LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
perf stat -x, -o "$OUT.perf" -p "$PID" -e task-clock,context-switches,cpu-migrations \
    -e syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync,syscalls:sys_enter_futex \
    -e syscalls:sys_enter_pwrite64,syscalls:sys_enter_write,syscalls:sys_enter_epoll_wait \
    -- sleep "$RUN_S"
wait "$PID"
python3 - "$BENCH_OUT" "$OUT.perf" "$LOAD" "$(cut -d' ' -f1-3 /proc/loadavg)" <<'PY'
import re, sys
rows = [l for l in open(sys.argv[1]) if l.startswith("|")]
refreshes = cpu = None
for i, l in enumerate(rows):
    cells = [c.strip() for c in l.strip().strip("|").split("|")]
    if "refreshes" in cells:
        row = [c.strip() for c in rows[i + 2].strip().strip("|").split("|")]
        refreshes = int(re.match(r"[\d,]+", row[cells.index("refreshes")]).group(0).replace(",", ""))
        cpu = next(row[j] for j, c in enumerate(cells) if c.startswith("CPU per refresh"))
        break
print(f"refreshes {refreshes}; the bench's CPU per refresh {cpu}; load average {sys.argv[3]} at the start, {sys.argv[4]} at the end")
for line in open(sys.argv[2]):
    parts = line.strip().split(",")
    if len(parts) < 3 or not parts[0].replace(".", "").isdigit():
        continue
    value, event = float(parts[0]), parts[2]
    unit = " ms" if event == "task-clock" else ""
    print(f"{event}: {value / refreshes:.3f}{unit} per refresh")
PY
