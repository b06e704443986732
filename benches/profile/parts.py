"""Sorts `perf script` samples of the daemon's threads into the parts of a refresh.

A sample belongs to the first part that matches: first the inclusive ones (anywhere in the
stack, or the thread's name), then the leaf-most frame naming a part. The bench driver's
threads (`bench-driver*`) are left out: they are not the daemon.
"""
import collections
import re
import sys

INCLUSIVE = [
    ("fsync (I/O; its kernel work included, excluded from the goal)", [r"fsync", r"fdatasync"]),
    ("lock file (open, flock, mode checks)", [r"store::lock::", r"store::perms::"]),
    ("registry: SQLite on the store thread, SQL parsing", [r"sqlite3Prepare|sqlite3RunParser|sqlite3LockAndPrepare"]),
    ("registry: SQLite on the store thread, the rest", [r"^oauth-store", r"sqlite3", r"rusqlite"]),
    ("log lines: the log thread's writes", [r"^oauth-log"]),
    ("secret registry (register, scrub)", [r"telemetry::secrets::"]),
]
LEAF = [
    ("log lines: JSON layer on the calling thread", [r"JsonLayer", r"telemetry::logging"]),
    ("trace events (flow logger)", [r"flow_logger"]),
    ("tracing: spans, dispatch, filter", [r"tracing_subscriber", r"tracing_core", r"sharded_slab"]),
    ("sealing", [r"chacha", r"poly1305", r"store::sealing", r"store::cipher"]),
    ("JSON (token answer, details)", [r"serde_json"]),
    ("state machine", [r"upstream::state"]),
    ("TLS", [r"rustls"]),
    ("HTTP (reqwest, hyper, oauth2, loopback TCP)",
     [r"hyper", r"reqwest", r"h2::", r"oauth2::", r"tcp_", r"__sys_sendto", r"__sys_recvfrom", r"sock_", r"net_rx", r"ip_"]),
    ("thread hand-offs: context switches, wakeups", [r"finish_task_switch", r"_raw_spin_unlock_irq", r"futex", r"schedule", r"epoll", r"sched_yield"]),
    ("allocator (malloc, free, memcpy)", [r"malloc", r"free", r"memcpy", r"memmove", r"tcache", r"unlink_chunk"]),
    ("actors, scheduler, runtimes (actix, tokio, our glue)", [r"actix", r"tokio::", r"mcpproxy_oauth::"]),
]

parts = collections.Counter()
total = 0


def sample(comm, frames):
    global total
    if not comm or comm.startswith("bench-driver"):
        return
    total += 1
    text = comm + "\n" + "\n".join(frames)
    for name, patterns in INCLUSIVE:
        if any(re.search(p, text, re.M) for p in patterns):
            parts[name] += 1
            return
    for frame in frames:
        for name, patterns in LEAF:
            if any(re.search(p, frame) for p in patterns):
                parts[name] += 1
                return
    parts["other (kernel, libc)"] += 1


comm, frames = None, []
for line in sys.stdin:
    if not line.strip():
        sample(comm, frames)
        comm, frames = None, []
    elif not line.startswith((" ", "\t")):
        comm = line.split()[0]
    else:
        frames.append(line.strip())
sample(comm, frames)
print(f"{total} samples of the daemon's threads")
print("| part | share of the daemon's CPU samples |\n| --- | --- |")
for name, n in parts.most_common():
    print(f"| {name} | {100 * n / total:.1f}% |")
