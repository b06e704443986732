//! Which scope to ask for (MCP authorization, "scope selection strategy"): the challenge's
//! `scope` first, else everything the protected resource advertises, else no scope parameter.
//! A 403 `insufficient_scope` asks again with the union of what was granted and what is needed.
//! Where the authorization server lists `offline_access`, it is added so that a refresh token is
//! issued (SEP-2207); where it does not, it is never asked for.

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

/// The scope a step-up login asks for after a 403 `insufficient_scope` demanding `demanded`:
/// the union with `granted` (SEP-2350), or `None` when the demand holds no scope beyond the
/// granted ones (a login would bring the same token again: the server wants something more
/// scope cannot give).
pub fn step_up(granted: Option<&str>, demanded: Option<&str>) -> Option<String> {
    let has = |scope: &str| granted.is_some_and(|g| g.split_whitespace().any(|s| s == scope));
    demanded
        .is_some_and(|d| d.split_whitespace().any(|s| !has(s)))
        .then(|| union(granted, demanded))
        .flatten()
}

/// The scope to request from an authorization server whose metadata lists `as_scopes_supported`,
/// for a client that wants refresh tokens: `offline_access` is added when the server lists it
/// (SEP-2207, OpenID Connect Core §11) and removed when it does not (a server that does not know
/// it may refuse the whole request). An omitted scope stays omitted: asking for `offline_access`
/// alone would replace the server's default scope with one that grants no access.
pub fn with_offline_access(
    scope: Option<String>,
    as_scopes_supported: Option<&[String]>,
) -> Option<String> {
    let scope = scope?;
    let advertised = as_scopes_supported.is_some_and(|s| s.iter().any(|s| s == OFFLINE_ACCESS));
    let kept: Vec<&str> = scope
        .split_whitespace()
        .filter(|s| advertised || *s != OFFLINE_ACCESS)
        .collect();
    union(Some(&kept.join(" ")), advertised.then_some(OFFLINE_ACCESS))
}

const OFFLINE_ACCESS: &str = "offline_access";

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

    #[test]
    fn offline_access_only_where_the_authorization_server_lists_it() {
        let with = vec!["mcp:basic".to_string(), "offline_access".to_string()];
        let without = vec!["mcp:basic".to_string(), "mcp:read".to_string()];
        // (scope asked for, scopes the server lists, scope sent, why)
        let cases = [
            (
                Some("mcp:basic"),
                Some(&with),
                Some("mcp:basic offline_access"),
                "added",
            ),
            (
                Some("mcp:basic offline_access"),
                Some(&with),
                Some("mcp:basic offline_access"),
                "not twice",
            ),
            (
                Some("mcp:basic mcp:read"),
                Some(&without),
                Some("mcp:basic mcp:read"),
                "unlisted: as asked",
            ),
            (
                Some("mcp:basic offline_access"),
                Some(&without),
                Some("mcp:basic"),
                "never asked for where not listed",
            ),
            (
                Some("mcp:basic"),
                None,
                Some("mcp:basic"),
                "no list: as asked",
            ),
            (None, Some(&with), None, "omitted stays omitted"),
            (
                Some("offline_access"),
                Some(&without),
                None,
                "nothing left to ask for",
            ),
        ];
        for (asked, listed, sent, why) in cases {
            assert_eq!(
                with_offline_access(asked.map(String::from), listed.map(Vec::as_slice)).as_deref(),
                sent,
                "{why}"
            );
        }
    }
}
