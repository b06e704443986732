//! What BENCHMARKS.md says about the machine a table was measured on (shared by the benches).

/// `nproc N; CPU MODEL; kernel VERSION`.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("nproc {nproc}; CPU {cpu}; kernel {}", kernel.trim())
}

/// The 1, 5 and 15 minute load averages: the machine is shared, and other builds running
/// beside a bench change its figures.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
