//! Text from outside made inert before a terminal, a pretty log line or a table: a server's
//! `error_description` or a config name holding ESC, CR, LF or another C0/C1 control character
//! could clear a screen, move the cursor or forge a log line. Each such character is written as
//! a visible escape (`\u{1b}`, `\n`, `\r`, `\t`); everything else is kept.

use std::borrow::Cow;

use super::secrets;

fn is_control(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// `text` with control characters escaped.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_control(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// What every human-facing sink writes: known secrets scrubbed, then control characters
/// escaped.
pub fn safe(text: &str) -> String {
    escape(&secrets::scrub(text)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(
            escape("bad\u{1b}[2J\r\nINFO forged\u{9b}1m\u{7f} ünïcode\ttab"),
            "bad\\u{1b}[2J\\r\\nINFO forged\\u{9b}1m\\u{7f} ünïcode\\ttab"
        );
        assert!(matches!(escape("plain text"), Cow::Borrowed(_)));
    }
}
