//! Text that reaches a terminal without locald having written it.
//!
//! A reason, a registry's error body, a service's `STATUS=` line, a path or
//! a name read from a file may hold escape sequences: printed as they are,
//! `ESC ] 0 ; … BEL` retitles the victim's terminal, `ESC [ 2 J` clears it,
//! and worse sequences exist. Everything locald prints that it did not
//! produce itself goes through [`sanitize`] first (a service's own output
//! lines do not: they are the service's, shown as it wrote them).

use std::borrow::Cow;
use std::fmt::Write;

/// `text` with every control character (C0 but for tab, DEL, C1) and every
/// bidirectional override written as an escape (`\x1b`, `\n`, `\u{202e}`),
/// so it prints as one visible line that cannot drive a terminal or hide
/// what follows it. Text without any is returned as it is.
pub fn sanitize(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if needs_escape(c) && (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    (c.is_control() && c != '\t')
        || matches!(
            c,
            // Bidirectional embeddings, overrides, isolates and marks.
            '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{061c}'
                // Line and paragraph separators: a new line on some terminals.
                | '\u{2028}'
                | '\u{2029}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_are_shown_not_obeyed() {
        assert_eq!(
            sanitize("\u{1b}]0;PWNED-TITLE\u{7}\u{1b}[2Jgone"),
            "\\x1b]0;PWNED-TITLE\\x07\\x1b[2Jgone"
        );
        assert_eq!(sanitize("a\nfake line\r"), "a\\nfake line\\r");
        assert_eq!(sanitize("\u{9b}31m"), "\\x9b31m");
        assert_eq!(sanitize("abc\u{202e}fdp.exe"), "abc\\u{202e}fdp.exe");
        assert_eq!(sanitize("a\u{200f}b\u{2028}c"), "a\\u{200f}b\\u{2028}c");
        assert_eq!(sanitize("tab\tand ünï ok"), "tab\tand ünï ok");
        assert!(matches!(sanitize("plain"), Cow::Borrowed(_)));
    }
}
