//! `Procfile`: the format of foreman, overmind and Heroku, one process type
//! per line (`web: bundle exec puma -p $PORT`).
//!
//! A directory with a `Procfile` and no `locald.toml` is a project of its
//! own: each line becomes a service running its command with `sh -c`, with
//! `port = "auto"` (so `$PORT` is set, remembered per process type and never
//! shared with another project, instead of foreman's 5000, 5100, ...), and
//! `.env` as its `env_file` when there is one, as foreman reads it. A
//! `locald.toml` service without `command` or `image` runs the `Procfile`
//! entry of its name.
//!
//! Parsing is stricter than foreman's (which skips lines it cannot read):
//! every line that is not blank or a `#` comment must be `NAME: COMMAND`,
//! and each problem is a [`Diagnostic`] with the span of the line, so
//! `locald check` shows `Procfile:LINE:COLUMN`.

use std::ops::Range;
use std::path::Path;

use indexmap::IndexMap;
use toml::Spanned;

use super::raw::{RawCommand, RawFile, RawPort, RawService};
use super::{Config, ConfigError, Diagnostic};

/// The file name locald looks for next to (or instead of) `locald.toml`.
pub use locald_core::project::PROCFILE;

/// One process type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its name (the service name).
    pub name: String,
    /// The command, run with `sh -c`.
    pub command: String,
    /// Byte range of the whole line.
    pub line: Range<usize>,
    /// Byte range of the command.
    pub span: Range<usize>,
}

/// Reads the entries of a Procfile; every bad line is reported.
pub fn parse(text: &str) -> Result<Vec<Entry>, Vec<Diagnostic>> {
    let mut out: Vec<Entry> = Vec::new();
    let mut diags = Vec::new();
    let mut start = 0;
    for raw in text.split_inclusive('\n') {
        let line_range = start..start + raw.trim_end_matches(['\n', '\r']).len();
        start += raw.len();
        let line = &text[line_range.clone()];
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((name, command)) = line.split_once(':') else {
            diags.push(Diagnostic::new(
                "a Procfile line is `NAME: COMMAND`; this one has no `:`",
                Some(line_range),
                Some("e.g. `web: python3 -m http.server $PORT`; comments start with #".into()),
            ));
            continue;
        };
        let lead = line.len() - line.trim_start().len();
        let name_range = line_range.start + lead..line_range.start + name.len();
        let name = name.trim();
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric());
        if !ok {
            diags.push(Diagnostic::new(
                format!("invalid process type `{name}`"),
                Some(name_range),
                Some("process types use letters, digits, `-` and `_`, start with a letter or digit, and are at most 64 long".into()),
            ));
            continue;
        }
        let cmd_start = line_range.start + line.len() - command.trim_start().len();
        let command = command.trim();
        if command.is_empty() {
            diags.push(Diagnostic::new(
                format!("process type `{name}` has no command"),
                Some(line_range),
                Some("write the command after the `:`".into()),
            ));
            continue;
        }
        if let Some(first) = out.iter().find(|e| e.name == name) {
            let (first_line, _) = super::line_col(text, first.line.start);
            diags.push(Diagnostic::new(
                format!("process type `{name}` is defined twice (first on line {first_line})"),
                Some(name_range),
                Some("rename or remove one of them".into()),
            ));
            continue;
        }
        out.push(Entry {
            name: name.to_owned(),
            command: command.to_owned(),
            line: line_range,
            span: cmd_start..cmd_start + command.len(),
        });
    }
    if out.is_empty() && diags.is_empty() {
        diags.push(Diagnostic::new(
            "the Procfile has no process types",
            None,
            Some("add a line such as `web: python3 -m http.server $PORT`".into()),
        ));
    }
    if diags.is_empty() {
        Ok(out)
    } else {
        Err(diags)
    }
}

impl Config {
    /// Checks `text` as the `Procfile` at `file`, a project without
    /// `locald.toml`.
    pub fn parse_procfile(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let error = |diagnostics| ConfigError {
            path: file.to_owned(),
            text: text.to_owned(),
            diagnostics,
        };
        let entries = parse(text).map_err(error)?;
        let root = file.parent().map(Path::to_owned).unwrap_or_default();
        let env_file = root
            .join(".env")
            .symlink_metadata()
            .is_ok()
            .then(|| Spanned::new(0..0, ".env".to_owned()));
        let services: IndexMap<Spanned<String>, Spanned<RawService>> = entries
            .into_iter()
            .map(|e| {
                let service = RawService {
                    command: Some(Spanned::new(e.span.clone(), RawCommand::Shell(e.command))),
                    port: Some(Spanned::new(e.span.clone(), RawPort::Auto)),
                    env_file: env_file.clone(),
                    ..RawService::default()
                };
                (
                    Spanned::new(e.line.clone(), e.name),
                    Spanned::new(e.line, service),
                )
            })
            .collect();
        let raw = RawFile {
            project: None,
            services: Some(services),
            service: None,
        };
        Config::from_raw(raw, file, &root).map_err(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreman_files_parse() {
        let e = parse(
            "# a comment\nweb: bundle exec puma -p $PORT\n\nworker:   python3 w.py --x=1:2\r\n",
        )
        .expect("valid");
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].name, "web");
        assert_eq!(e[0].command, "bundle exec puma -p $PORT");
        assert_eq!(e[1].command, "python3 w.py --x=1:2");
    }

    #[test]
    fn bad_lines_are_reported_with_their_line() {
        let text = "web: ok\nthis line is wrong\nbad name: x\nempty:\nweb: again\n";
        let err = Config::parse_procfile(Path::new("/p/Procfile"), text).expect_err("invalid");
        let s = err.to_string();
        assert!(s.contains("/p/Procfile:2:1"), "{s}");
        assert!(
            s.contains("invalid process type `bad name`") && s.contains("/p/Procfile:3:1"),
            "{s}"
        );
        assert!(
            s.contains("`empty` has no command") && s.contains("/p/Procfile:4:1"),
            "{s}"
        );
        assert!(
            s.contains("defined twice (first on line 1)") && s.contains("/p/Procfile:5:1"),
            "{s}"
        );
    }

    #[test]
    fn a_procfile_project_gets_auto_ports() {
        let c =
            Config::parse_procfile(Path::new("/p/Procfile"), "web: a\nworker: b\n").expect("valid");
        assert_eq!(c.name, "p");
        let web = &c.services["web"];
        assert_eq!(
            web.command,
            Some(super::super::CommandSpec::Shell("a".into()))
        );
        assert!(web.ports[0].auto);
        assert!(c.services["worker"].ports[0].auto);
    }
}
