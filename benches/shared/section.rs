//! A bench's own section of BENCHMARKS.md, between its markers (shared by the benches that
//! write one section each, beside the system tables that `make bench` rewrites first).

use std::path::Path;

/// Puts `tables` and the hand-written analysis read from `analysis` between `start` and
/// `end` in the file at `path`: in place when the markers are there, else before the goals'
/// analysis of the system tables (so sections keep the order `make bench` writes them in).
pub fn write_section(path: &Path, start: &str, end: &str, tables: &str, analysis: &str) {
    let analysis = std::fs::read_to_string(analysis).unwrap_or_default();
    let section = format!("{start}\n{tables}\n{analysis}{end}\n");
    let doc = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n\n".into());
    let doc = match (doc.find(start), doc.find(end)) {
        (Some(at), Some(until)) if until > at => {
            format!(
                "{}{section}\n{}",
                &doc[..at],
                doc[until + end.len()..].trim_start_matches('\n')
            )
        }
        _ => match doc.find("## Goals, and where they are missed") {
            Some(at) => format!("{}{section}\n{}", &doc[..at], &doc[at..]),
            None => format!("{doc}\n{section}"),
        },
    };
    std::fs::write(path, doc).expect("BENCHMARKS.md is writable");
}
