//! Field readers shared by the `oauth` object and its grants: a value's JSON type for messages
//! that must not echo it, a non-empty string, and a secret given inline, by file or by
//! environment variable (at most one of the three).

use std::path::PathBuf;

use crate::oauth::grants::credentials::SecretSource;

/// The JSON type of a value, for messages that must not echo the value (it may be a secret).
pub(super) fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// A string field of `object` (`None` when absent or null); errors name `prefix` + `name`.
pub(super) fn string_field(
    object: &serde_json::Map<String, serde_json::Value>,
    prefix: &str,
    name: &str,
) -> Result<Option<String>, (String, String)> {
    match object.get(name) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
        Some(serde_json::Value::String(_)) => Err((
            format!("{prefix}{name}"),
            "a non-empty string is expected, not an empty one".into(),
        )),
        Some(other) => Err((
            format!("{prefix}{name}"),
            format!("a string is expected, not {}", json_type(other)),
        )),
    }
}

/// One secret given by at most one of `{base}` (inline), `{base}_file` and `{base}_env`.
pub(super) fn secret_field(
    object: &serde_json::Map<String, serde_json::Value>,
    prefix: &str,
    base: &str,
) -> Result<Option<SecretSource>, (String, String)> {
    let inline = string_field(object, prefix, base)?.map(SecretSource::Inline);
    let file = string_field(object, prefix, &format!("{base}_file"))?
        .map(|f| SecretSource::File(PathBuf::from(f)));
    let env = string_field(object, prefix, &format!("{base}_env"))?.map(SecretSource::Env);
    let mut given = [inline, file, env].into_iter().flatten();
    let first = given.next();
    if given.next().is_some() {
        return Err((
            format!("{prefix}{base}"),
            format!("give one of {base}, {base}_file and {base}_env, not several"),
        ));
    }
    Ok(first)
}
