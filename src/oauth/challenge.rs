//! `WWW-Authenticate` parsing (RFC 9110 §11.6.1): a header may hold several challenges, each a
//! scheme followed by a token68 or by comma-separated `name=value` parameters whose values are
//! tokens or quoted strings with backslash escapes. Commas separate both parameters and
//! challenges, so a name is a parameter only when `=` follows it.

/// One challenge: its scheme (as sent) and parameters (names lower-cased, values unescaped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub token68: Option<String>,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What a Bearer challenge tells an OAuth client (RFC 6750 §3, RFC 9728 §5.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BearerChallenge {
    pub resource_metadata: Option<String>,
    pub scope: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
    /// RFC 9449 §7.1: the server challenged with the DPoP scheme. `dpop_only`: and not with
    /// Bearer, i.e. it takes only DPoP-bound tokens.
    pub dpop: bool,
    pub dpop_only: bool,
}

impl BearerChallenge {
    /// The Bearer or DPoP challenge among the header values, if any: the DPoP one when both
    /// are there (its `error` is the one about the proof), parameters missing from it taken
    /// from the Bearer one.
    pub fn from_headers<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let challenges: Vec<Challenge> = values
            .into_iter()
            .flat_map(parse_www_authenticate)
            .collect();
        let of = |scheme: &str| {
            challenges
                .iter()
                .find(|c| c.scheme.eq_ignore_ascii_case(scheme))
        };
        let (bearer, dpop) = (of("bearer"), of("dpop"));
        let chosen = dpop.or(bearer)?;
        let param = |name: &str| {
            chosen
                .param(name)
                .or_else(|| bearer.and_then(|b| b.param(name)))
                .map(String::from)
        };
        Some(BearerChallenge {
            resource_metadata: param("resource_metadata"),
            scope: param("scope").filter(|s| !s.trim().is_empty()),
            error: chosen.param("error").map(String::from),
            error_description: chosen.param("error_description").map(String::from),
            dpop: dpop.is_some(),
            dpop_only: dpop.is_some() && bearer.is_none(),
        })
    }

    pub fn is_insufficient_scope(&self) -> bool {
        self.error.as_deref() == Some("insufficient_scope")
    }
}

fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

fn is_token68_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~+/".contains(c)
}

struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<char> {
        self.s[self.pos..].chars().next()
    }
    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }
    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t')) {
            self.bump();
        }
    }
    fn skip_ws_and_commas(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t' | ',')) {
            self.bump();
        }
    }
    fn take_while(&mut self, f: impl Fn(char) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.bump();
        }
        &self.s[start..self.pos]
    }
    /// After optional whitespace, is the next thing `name =` (a parameter, not a new scheme)?
    fn at_param(&self) -> bool {
        let mut probe = Cursor {
            s: self.s,
            pos: self.pos,
        };
        probe.skip_ws();
        if probe.take_while(is_tchar).is_empty() {
            return false;
        }
        probe.skip_ws();
        probe.peek() == Some('=')
    }
    fn quoted_string(&mut self) -> String {
        // The opening quote is consumed by the caller.
        let mut value = String::new();
        while let Some(c) = self.bump() {
            match c {
                '"' => return value,
                '\\' => {
                    if let Some(escaped) = self.bump() {
                        value.push(escaped);
                    }
                }
                c => value.push(c),
            }
        }
        value // unterminated: keep what was there
    }
}

/// Parses one `WWW-Authenticate` header value. Never fails: what cannot be read is skipped.
pub fn parse_www_authenticate(header: &str) -> Vec<Challenge> {
    let mut cursor = Cursor { s: header, pos: 0 };
    let mut challenges = Vec::new();
    loop {
        cursor.skip_ws_and_commas();
        let scheme = cursor.take_while(is_tchar);
        if scheme.is_empty() {
            if cursor.bump().is_none() {
                break;
            }
            continue; // junk: skip a character and look for the next scheme
        }
        let mut challenge = Challenge {
            scheme: scheme.to_string(),
            token68: None,
            params: Vec::new(),
        };
        cursor.skip_ws();
        // token68 (e.g. `Negotiate YIIB==`): token68 characters and `=` padding up to the end
        // or a comma. Tried first, since `YIIB=` also starts like a parameter.
        let start = cursor.pos;
        if !cursor.take_while(is_token68_char).is_empty() {
            let _ = cursor.take_while(|c| c == '=');
            let mut after = Cursor {
                s: header,
                pos: cursor.pos,
            };
            after.skip_ws();
            if matches!(after.peek(), None | Some(',')) {
                challenge.token68 = Some(header[start..cursor.pos].to_string());
            } else {
                cursor.pos = start;
            }
        }
        while cursor.at_param() {
            cursor.skip_ws();
            let name = cursor.take_while(is_tchar).to_ascii_lowercase();
            cursor.skip_ws();
            cursor.bump(); // '='
            cursor.skip_ws();
            let value = if cursor.peek() == Some('"') {
                cursor.bump();
                cursor.quoted_string()
            } else {
                cursor.take_while(is_tchar).to_string()
            };
            challenge.params.push((name, value));
            cursor.skip_ws();
            if cursor.peek() == Some(',') {
                let mut probe = Cursor {
                    s: header,
                    pos: cursor.pos + 1,
                };
                probe.skip_ws_and_commas();
                if probe.at_param() {
                    cursor.pos = probe.pos;
                }
            }
        }
        challenges.push(challenge);
    }
    challenges
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_dpop_challenge_is_read_and_marked() {
        let only = BearerChallenge::from_headers([
            r#"DPoP error="use_dpop_nonce", algs="ES256", resource_metadata="https://rs/prm""#,
        ])
        .unwrap();
        assert!(only.dpop && only.dpop_only);
        assert_eq!(only.error.as_deref(), Some("use_dpop_nonce"));
        assert_eq!(only.resource_metadata.as_deref(), Some("https://rs/prm"));
        let both = BearerChallenge::from_headers([
            r#"Bearer resource_metadata="https://rs/prm", scope="a b""#,
            r#"DPoP algs="ES256""#,
        ])
        .unwrap();
        assert!(both.dpop && !both.dpop_only, "Bearer is offered too");
        assert_eq!(
            both.scope.as_deref(),
            Some("a b"),
            "taken from the Bearer one"
        );
        let bearer = BearerChallenge::from_headers([r#"Bearer scope="x""#]).unwrap();
        assert!(!bearer.dpop);
    }

    #[test]
    fn a_typical_mcp_challenge() {
        let h = concat!(
            r#"Bearer error="invalid_token", error_description="The token expired", "#,
            r#"resource_metadata="https://mcp.example/.well-known/oauth-protected-resource/mcp", "#,
            r#"scope="files:read files:write""#
        );
        let c = BearerChallenge::from_headers([h]).unwrap();
        assert_eq!(c.error.as_deref(), Some("invalid_token"));
        assert_eq!(c.error_description.as_deref(), Some("The token expired"));
        assert_eq!(
            c.resource_metadata.as_deref(),
            Some("https://mcp.example/.well-known/oauth-protected-resource/mcp")
        );
        assert_eq!(c.scope.as_deref(), Some("files:read files:write"));
    }

    #[test]
    fn several_challenges_token68_and_escapes() {
        let h = concat!(
            r#"Basic realm="a, b", Negotiate YIIB==, "#,
            r#"Bearer realm="x\"y\\z",scope=read ,  error=insufficient_scope"#
        );
        let cs = parse_www_authenticate(h);
        assert_eq!(cs.len(), 3, "{cs:?}");
        assert_eq!(cs[0].scheme, "Basic");
        assert_eq!(cs[0].param("realm"), Some("a, b"));
        assert_eq!(cs[1].token68.as_deref(), Some("YIIB=="));
        assert_eq!(cs[2].param("realm"), Some("x\"y\\z"));
        assert_eq!(cs[2].param("scope"), Some("read"));
        assert_eq!(cs[2].param("error"), Some("insufficient_scope"));
    }

    #[test]
    fn case_and_whitespace_tolerance() {
        let c = BearerChallenge::from_headers(["bearer   Resource_Metadata = \"u\" ,SCOPE=\"\""])
            .unwrap();
        assert_eq!(c.resource_metadata.as_deref(), Some("u"));
        assert_eq!(c.scope, None, "an empty scope is no scope");
        assert!(BearerChallenge::from_headers(["Basic realm=x"]).is_none());
        assert_eq!(parse_www_authenticate(""), vec![]);
        assert_eq!(parse_www_authenticate("Bearer").len(), 1);
        let unterminated = parse_www_authenticate("Bearer scope=\"read");
        assert_eq!(unterminated[0].param("scope"), Some("read"));
    }

    fn quote(v: &str) -> String {
        format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,200}") {
            let _ = parse_www_authenticate(&s);
        }

        #[test]
        fn round_trips_generated_challenges(
            challenges in prop::collection::vec(
                ("[A-Za-z][A-Za-z0-9_-]{0,10}",
                 prop::collection::vec(("[a-z][a-z0-9_]{0,12}", "[ -~]{0,30}"), 0..5)),
                1..4),
            spaces in "[ ]{0,2}",
        ) {
            let header = challenges.iter().map(|(scheme, params)| {
                let params: Vec<String> = params
                    .iter()
                    .map(|(n, v)| format!("{n}{spaces}={spaces}{}", quote(v)))
                    .collect();
                if params.is_empty() {
                    scheme.clone()
                } else {
                    format!("{scheme} {}", params.join(&format!(",{spaces}")))
                }
            }).collect::<Vec<_>>().join(&format!(",{spaces}"));
            let parsed = parse_www_authenticate(&header);
            prop_assert_eq!(parsed.len(), challenges.len(), "{}", header);
            for (p, (scheme, params)) in parsed.iter().zip(&challenges) {
                prop_assert_eq!(&p.scheme, scheme);
                prop_assert_eq!(p.params.len(), params.len(), "{}", header);
                for ((pn, pv), (n, v)) in p.params.iter().zip(params) {
                    prop_assert_eq!(pn, n);
                    prop_assert_eq!(pv, v);
                }
            }
        }
    }
}
