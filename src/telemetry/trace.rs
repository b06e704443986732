//! `logs trace`: one flow's JSON log lines as a readable timeline (step, endpoint, status,
//! duration, outcome). Pure functions over lines, so any log file or pipe works. The log may
//! hold a server's text: every piece is made inert (`inert::safe`) before it is printed.

use std::fmt::Write as _;
use std::time::SystemTime;

use serde_json::Value;

use super::inert;

/// The lines of `correlation_id`, in file order.
pub fn flow_lines<'a>(correlation_id: &str, lines: impl Iterator<Item = &'a str>) -> Vec<Value> {
    lines
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["correlation_id"].as_str() == Some(correlation_id))
        .collect()
}

fn timestamp(line: &Value) -> Option<SystemTime> {
    humantime::parse_rfc3339(line["timestamp"].as_str()?).ok()
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// One line of the timeline: what happened, where, with what answer.
fn describe(line: &Value) -> String {
    let mut out = line["message"].as_str().unwrap_or("").to_string();
    let details = &line["details"];
    let field = |name: &str| text(&line[name]).or_else(|| text(&details[name]));
    if let Some(endpoint) = field("endpoint") {
        let _ = write!(out, " | {endpoint}");
    }
    if let (Some(method), Some(url)) = (field("method"), field("url")) {
        let _ = write!(out, " {method} {url}");
    }
    if let Some(status) = field("status") {
        let _ = write!(out, " | HTTP {status}");
    }
    if let Some(ms) = field("duration_ms") {
        let _ = write!(out, " | {ms} ms");
    }
    if let Some(code) =
        field("error_code").or_else(|| line["response_body"]["error"].as_str().map(String::from))
    {
        let _ = write!(out, " | error {code}");
    }
    if let Some(error) = field("error") {
        let _ = write!(out, " | {error}");
    }
    if let Some(decision) = field("decision") {
        let _ = write!(out, " | decision: {decision}");
    }
    out
}

/// The whole timeline of one flow, or `None` when no line has that correlation ID.
pub fn render(correlation_id: &str, lines: &[Value]) -> Option<String> {
    let first = lines.first()?;
    let start = timestamp(first);
    let server = lines
        .iter()
        .find_map(|l| l["server"].as_str())
        .unwrap_or("?");
    let kind = lines
        .iter()
        .find_map(|l| l["flow_kind"].as_str())
        .unwrap_or("?");
    let mut out = format!(
        "flow {} ({}, server {})\n",
        inert::safe(correlation_id),
        inert::safe(kind),
        inert::safe(server)
    );
    for line in lines {
        let elapsed = match (start, timestamp(line)) {
            (Some(a), Some(b)) => b.duration_since(a).map(|d| d.as_millis()).unwrap_or(0),
            _ => 0,
        };
        let level = inert::safe(line["level"].as_str().unwrap_or(""));
        let _ = writeln!(
            out,
            "  +{elapsed:>6} ms  {level:<5}  {}",
            inert::safe(&describe(line))
        );
    }
    let outcome = lines
        .iter()
        .rev()
        .find_map(|l| match l["step"].as_str() {
            Some("decision") => text(&l["details"]["decision"]).map(|d| format!("decision: {d}")),
            Some("failed") => text(&l["details"]["error"]).map(|e| format!("failed: {e}")),
            Some("token obtained") | Some("adopted") => Some("token obtained".to_string()),
            _ => None,
        })
        .unwrap_or_else(|| "unknown (the flow's last events are not in this log)".into());
    let total = match (start, lines.last().and_then(timestamp)) {
        (Some(a), Some(b)) => b.duration_since(a).map(|d| d.as_millis()).unwrap_or(0),
        _ => 0,
    };
    let _ = writeln!(
        out,
        "outcome: {outcome}; {} lines over {total} ms",
        lines.len()
    );
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_timeline() {
        let log = [
            concat!(
                r#"{"timestamp":"2026-11-29T00:00:00.000000Z","level":"INFO","message":"flow started","#,
                r#""correlation_id":"c1","server":"srv","flow_kind":"refresh","step":"started","#,
                r#""details":{"token_endpoint":"http://t"}}"#
            ),
            concat!(
                r#"{"timestamp":"2026-11-29T00:00:00.001000Z","level":"INFO","message":"other flow","#,
                r#""correlation_id":"c2","server":"x"}"#
            ),
            r#"not json"#,
            concat!(
                r#"{"timestamp":"2026-11-29T00:00:00.002000Z","level":"DEBUG","#,
                r#""message":"oauth response","correlation_id":"c1","endpoint":"token endpoint","#,
                r#""method":"POST","url":"http://t/token","status":400,"duration_ms":3,"#,
                r#""response_body":{"error":"invalid_grant"}}"#
            ),
            concat!(
                r#"{"timestamp":"2026-11-29T00:00:00.010000Z","level":"INFO","message":"flow decision","#,
                r#""correlation_id":"c1","step":"decision","#,
                r#""details":{"decision":"re-login: a browser login started"}}"#
            ),
        ];
        let lines = flow_lines("c1", log.iter().copied());
        assert_eq!(lines.len(), 3, "only c1's lines");
        let out = render("c1", &lines).unwrap();
        assert!(out.starts_with("flow c1 (refresh, server srv)\n"), "{out}");
        assert!(
            out.contains(
                "+     2 ms  DEBUG  oauth response | token endpoint POST \
                              http://t/token | HTTP 400 | 3 ms | error invalid_grant"
            ),
            "{out}"
        );
        assert!(
            out.ends_with(
                "outcome: decision: re-login: a browser login started; 3 lines over 10 ms\n"
            ),
            "{out}"
        );
        assert!(render("nope", &flow_lines("nope", log.iter().copied())).is_none());
    }
}
