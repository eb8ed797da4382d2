//! Errors in `locald.toml`, rendered the way a compiler would: the message,
//! `file:line:column`, the offending line with a caret under the span, and a
//! hint. Every check of the file produces a [`Diagnostic`]; [`ConfigError`]
//! gathers them with the file's text so they can be rendered without
//! re-reading the file.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

use super::raw::HINT_SEP;

/// One problem in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// What is wrong, lowercase, no trailing period.
    pub message: String,
    /// Byte range in the file, when the problem has a place.
    pub span: Option<Range<usize>>,
    /// What to do about it.
    pub hint: Option<String>,
}

impl Diagnostic {
    /// A diagnostic at `span` with an optional hint.
    pub fn new(
        message: impl Into<String>,
        span: Option<Range<usize>>,
        hint: Option<String>,
    ) -> Self {
        Self {
            message: message.into(),
            span,
            hint,
        }
    }

    /// Converts a parser error, pulling hints out of the message.
    pub(crate) fn from_toml(err: &toml::de::Error) -> Self {
        let raw = err.message().trim_end().to_owned();
        let (message, hint) = match raw.split_once(HINT_SEP) {
            Some((m, h)) => (m.to_owned(), Some(h.to_owned())),
            None => {
                let hint = hint_for_serde_message(&raw);
                // The hint names the close match; the full list of keys is noise.
                let message = match raw.split_once(", expected one of") {
                    Some((m, _)) if raw.starts_with("unknown ") => m.to_owned(),
                    _ => raw,
                };
                (message, hint)
            }
        };
        Self {
            message,
            span: err.span(),
            hint,
        }
    }
}

/// Hints for serde's own messages, which carry no hint of their own.
fn hint_for_serde_message(message: &str) -> Option<String> {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (field, expected) = rest.split_once('`')?;
        let candidates = backticked(expected);
        return Some(
            match did_you_mean(field, candidates.iter().map(String::as_str)) {
                Some(best) => format!("did you mean `{best}`?"),
                None if candidates.is_empty() => "this table takes no keys".to_owned(),
                None => format!("known keys here: {}", candidates.join(", ")),
            },
        );
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        let (value, expected) = rest.split_once('`')?;
        let candidates = backticked(expected);
        return Some(
            match did_you_mean(value, candidates.iter().map(String::as_str)) {
                Some(best) => format!("did you mean \"{best}\"?"),
                None => format!("use one of: {}", candidates.join(", ")),
            },
        );
    }
    if message.starts_with("invalid type") || message.starts_with("invalid value") {
        return Some("check the value's type: strings need quotes, lists use [ ], tables use { } or a [header]".into());
    }
    if message.starts_with("duplicate key") {
        return Some("each key may appear once per table".into());
    }
    if message.starts_with("missing field") {
        return None;
    }
    // Anything else comes from the TOML grammar itself.
    if message.contains("string") {
        return Some(
            "close the string on the same line, or use \"\"\" for a multi-line string".into(),
        );
    }
    Some("this is not valid TOML here; see https://toml.io for the syntax".into())
}

fn backticked(s: &str) -> Vec<String> {
    s.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

/// The closest candidate to `word`, if one is close enough to be a typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// `locald.toml` is invalid; holds every problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// Its text, to render the offending lines.
    pub text: String,
    /// At least one problem.
    pub diagnostics: Vec<Diagnostic>,
}

impl ConfigError {
    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        line_col(&self.text, offset)
    }

    /// `file:line:column` of the first diagnostic, for one-line reports (e.g. D-Bus errors).
    pub fn location(&self) -> String {
        match self.diagnostics.first().and_then(|d| d.span.clone()) {
            Some(span) => {
                let (l, c) = self.line_col(span.start);
                format!("{}:{l}:{c}", self.path.display())
            }
            None => self.path.display().to_string(),
        }
    }

    /// The first message, for one-line reports.
    pub fn summary(&self) -> String {
        match self.diagnostics.first() {
            // One line: a TOML parser's message has a second line
            // ("expected ..."), and the reply's first line is the summary.
            Some(d) => format!(
                "{}: {}",
                self.location(),
                d.message.lines().collect::<Vec<_>>().join("; ")
            ),
            None => format!("{}: invalid", self.path.display()),
        }
    }

    /// The text of a `dev.locald.Error.ConfigInvalid` reply: the
    /// [`summary`](Self::summary) line, which editors link like a
    /// compiler's `file:line:column: message`, then the whole report as
    /// `locald check` prints it (the line, a caret, the hint). Plain text:
    /// the reader may be a terminal, a log or an editor's message pane.
    pub fn summary_and_report(&self) -> String {
        format!("{}\n{self}", self.summary())
    }
}

/// 1-based line and column (in characters) of a byte offset in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, col)
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error: {}", d.message)?;
            match &d.span {
                Some(span) => {
                    let (line, col) = self.line_col(span.start);
                    write!(f, "\n  --> {}:{line}:{col}", self.path.display())?;
                    let text = self.text.lines().nth(line - 1).unwrap_or("");
                    let gutter = line.to_string().len();
                    // Underline the span, clipped to the first line it touches.
                    let span_chars = self.text.get(span.clone()).map_or(1, |s| {
                        s.lines().next().map_or(1, |l| l.chars().count().max(1))
                    });
                    let width = span_chars.min(text.chars().count().saturating_sub(col - 1).max(1));
                    write!(
                        f,
                        "\n{:gutter$} |\n{line} | {text}\n{:gutter$} | {:pad$}{}",
                        "",
                        "",
                        "",
                        "^".repeat(width),
                        pad = col - 1
                    )?;
                }
                None => write!(f, "\n  --> {}", self.path.display())?,
            }
            if let Some(hint) = &d.hint {
                write!(f, "\n  = hint: {hint}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        // 'é' is two bytes but one column.
        assert_eq!(line_col(text, 9), (2, 3));
    }

    #[test]
    fn summary_and_report_leads_with_the_location() {
        let Err(e) = super::super::Config::parse(
            std::path::Path::new("/p/locald.toml"),
            "[services.web]\ncomand = \"x\"\n",
        ) else {
            panic!("a misspelt key must be rejected");
        };
        let text = e.summary_and_report();
        let (first, rest) = text.split_once('\n').unwrap_or_default();
        assert_eq!(first, "/p/locald.toml:2:1: unknown field `comand`");
        assert_eq!(rest, e.to_string());
        assert!(rest.contains("2 | comand = \"x\"\n  | ^^^^^^"), "{rest}");
        assert!(rest.contains("= hint: did you mean `command`?"), "{rest}");
        assert!(!text.contains('\x1b'), "{text}");
    }

    #[test]
    fn a_two_line_parser_message_is_one_summary_line_and_said_once() {
        let Err(e) = super::super::Config::parse(
            std::path::Path::new("/p/locald.toml"),
            "[services.web]\ncommand = \"x\"\nbad = = 1\n",
        ) else {
            panic!("broken TOML must be rejected");
        };
        let text = e.summary_and_report();
        let (first, rest) = text.split_once('\n').unwrap_or_default();
        assert_eq!(
            first,
            "/p/locald.toml:3:7: invalid string; expected `\"`, `'`"
        );
        assert_eq!(rest, e.to_string());
        assert_eq!(rest.matches("invalid string").count(), 1, "{rest}");
    }

    #[test]
    fn suggests_close_keys() {
        assert_eq!(
            did_you_mean("comand", ["command", "build", "env"]),
            Some("command")
        );
        assert_eq!(did_you_mean("zzz", ["command", "build"]), None);
    }
}
