//! Which scope to ask for (MCP authorization, "scope selection strategy"): the challenge's
//! `scope` first, else everything the protected resource advertises, else no scope parameter.
//! A 403 `insufficient_scope` asks again with the union of what was granted and what is needed.

/// The scope for an authorization request, or `None` to omit the parameter.
pub fn select_scope(
    challenge_scope: Option<&str>,
    resource_scopes_supported: Option<&[String]>,
) -> Option<String> {
    if let Some(scope) = challenge_scope.map(str::trim).filter(|s| !s.is_empty()) {
        return Some(normalize(scope));
    }
    resource_scopes_supported
        .filter(|s| !s.is_empty())
        .map(|s| s.join(" "))
}

/// The union of two space-separated scope lists, first-seen order, no duplicates.
pub fn union(current: Option<&str>, needed: Option<&str>) -> Option<String> {
    let mut scopes: Vec<&str> = Vec::new();
    for scope in current
        .into_iter()
        .chain(needed)
        .flat_map(str::split_whitespace)
    {
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    (!scopes.is_empty()).then(|| scopes.join(" "))
}

fn normalize(scope: &str) -> String {
    union(Some(scope), None).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_then_resource_then_nothing() {
        let supported = vec!["a".to_string(), "b".to_string()];
        assert_eq!(
            select_scope(Some("x  y"), Some(&supported)).as_deref(),
            Some("x y")
        );
        assert_eq!(
            select_scope(Some("  "), Some(&supported)).as_deref(),
            Some("a b")
        );
        assert_eq!(select_scope(None, Some(&supported)).as_deref(), Some("a b"));
        assert_eq!(select_scope(None, Some(&[])), None);
        assert_eq!(select_scope(None, None), None);
    }

    #[test]
    fn union_keeps_order_and_drops_duplicates() {
        assert_eq!(
            union(Some("read write"), Some("write admin")).as_deref(),
            Some("read write admin")
        );
        assert_eq!(union(None, Some("admin")).as_deref(), Some("admin"));
        assert_eq!(union(None, None), None);
    }
}
