# Sourced by the profiling scripts: starts the release scale bench (`--only scale`, writing
# /tmp/$1.out and /tmp/$1.err) with the sizes the caller exported, and returns once every
# server is logged in (its "servers for" line), with the bench's process in PID.
start_scale() {
    local bench
    bench=${BENCH_BIN:-$(ls -t target/release/deps/system-* | grep -v '\.d$' | head -1)}
    nice -n 10 "$bench" --bench --only scale >"/tmp/$1.out" 2>"/tmp/$1.err" &
    PID=$!
    until grep -qs "servers for" "/tmp/$1.err"; do
        sleep 0.2
        kill -0 "$PID" 2>/dev/null || { cat "/tmp/$1.err"; exit 1; }
    done
}
