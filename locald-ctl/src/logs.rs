//! `logs [SERVICE] [-f] [--phase build|run] [--since …] [--until …] [-n N]
//! [--timestamps | -o FORMAT | --json]`: a project's build and run output
//! from the journal, printed the way `locald up` prints it, after the time
//! each line was written (`__REALTIME_TIMESTAMP`) in journalctl's format
//! when asked.
//!
//! It reads through `journalctl --output=json` rather than linking the
//! sd-journal API: journalctl already handles the user's and the system's
//! journal files, access rights, `--since` parsing, following, and journal
//! namespaces, and keeps `locald-ctl` free of a C library. It needs no
//! daemon: the lines are in the journal whether or not locald runs.
//!
//! `-n N` is always the *last* N lines. journalctl alone gives the first N
//! after `--since` when both are set (its seek to the time wins over the
//! seek to the tail), so then the history is read whole, the last N kept,
//! and following resumes after the last one's cursor.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, ExitCode, Stdio};

use locald_core::term::Terminal;
use serde_json::Value;

use crate::clock::Local;

/// How lines are printed; the time formats are journalctl's of the same name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// As `locald up` prints them, without a time.
    #[default]
    Plain,
    /// `Dec 01 14:16:24`, local time.
    Short,
    /// `Dec 01 14:16:24.123456`.
    ShortPrecise,
    /// `2026-12-01T14:16:24+0100`.
    ShortIso,
    /// `2026-12-01T14:16:24.123456+0100`.
    ShortIsoPrecise,
    /// journalctl's JSON entries as they are, one per line.
    Json,
}

/// What to show.
pub struct LogsArgs {
    /// Project name.
    pub project: String,
    /// Services known to the project (for alignment and colour).
    pub services: Vec<String>,
    /// One service, or all.
    pub service: Option<String>,
    /// Keep printing new lines.
    pub follow: bool,
    /// Only build or run lines.
    pub phase: Option<String>,
    /// journalctl's `--since`.
    pub since: Option<String>,
    /// journalctl's `--until`.
    pub until: Option<String>,
    /// Last N lines.
    pub lines: Option<u64>,
    /// How to print.
    pub output: Output,
    /// A journal namespace (`journalctl --namespace`), e.g. for tests.
    pub namespace: Option<String>,
}

/// Which part of the journal one journalctl run reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pass {
    /// What `args` asks for, as journalctl does it.
    Direct,
    /// Everything `--since`/`--until` select, without `--follow` or
    /// `--lines` (the caller keeps the last N).
    History,
    /// Following, after the entry with this cursor.
    FollowAfter(String),
    /// Following, from now on.
    FollowNew,
}

/// Whether `args` needs [`Pass::History`]: `-n` with a time range.
pub fn needs_history(args: &LogsArgs) -> bool {
    args.lines.is_some() && (args.since.is_some() || args.until.is_some())
}

/// The journalctl arguments for `args`, for one `pass`.
pub fn journalctl_args(args: &LogsArgs, pass: &Pass) -> Vec<String> {
    let mut v = vec![
        "--output=json".to_owned(),
        "--all".to_owned(),
        "--no-pager".to_owned(),
    ];
    if let Some(ns) = &args.namespace {
        v.push(format!("--namespace={ns}"));
    }
    match pass {
        Pass::Direct => {
            if args.follow {
                v.push("--follow".into());
            }
            if let Some(s) = &args.since {
                v.push(format!("--since={s}"));
            }
            if let Some(u) = &args.until {
                v.push(format!("--until={u}"));
            }
            if let Some(n) = args.lines {
                v.push(format!("--lines={n}"));
            }
        }
        Pass::History => {
            if let Some(s) = &args.since {
                v.push(format!("--since={s}"));
            }
            if let Some(u) = &args.until {
                v.push(format!("--until={u}"));
            }
        }
        Pass::FollowAfter(cursor) => {
            v.push("--follow".into());
            v.push(format!("--after-cursor={cursor}"));
        }
        Pass::FollowNew => {
            v.push("--follow".into());
            v.push("--lines=0".into());
        }
    }
    // LOCALD_* are fields a writer chooses: any local user can log
    // `LOCALD_PROJECT=shop` (logger --journald), and a user who may read
    // others' journals (group adm or systemd-journal) would see such lines
    // as their own service's. Only the user's own count: `_UID` is set by
    // journald from the sender's credentials.
    let uid = own_uid();
    v.push(format!("LOCALD_PROJECT={}", args.project));
    if let Some(s) = &args.service {
        v.push(format!("LOCALD_SERVICE={s}"));
    }
    if let Some(p) = &args.phase {
        v.push(format!("LOCALD_PHASE={p}"));
    }
    v.push(uid.clone());
    // A service run as a systemd user unit writes to the journal itself,
    // and systemd gives a user unit's lines no LogExtraFields: match the
    // unit (or the project's slice) too.
    if args.phase.as_deref().is_none_or(|p| p == "run") {
        v.push("+".into());
        v.push(uid);
        match &args.service {
            Some(s) => v.push(format!(
                "_SYSTEMD_USER_UNIT={}",
                locald_core::units::unit_name(&args.project, s)
            )),
            None => v.push(format!(
                "_SYSTEMD_USER_SLICE={}",
                locald_core::units::slice_name(&args.project)
            )),
        }
    }
    v
}

pub(crate) use locald_core::journal_entry::{bytes, text};

/// The journal match for entries this user's processes wrote.
pub(crate) fn own_uid() -> String {
    format!("_UID={}", rustix::process::getuid().as_raw())
}

/// When the entry was written, as `output` shows it; `None` for formats
/// without a time, or an entry without one. Like journalctl, the time the
/// line was sent (`_SOURCE_REALTIME_TIMESTAMP`, which journald takes from
/// the socket) wins over the time journald received it
/// (`__REALTIME_TIMESTAMP`).
pub fn stamp(entry: &Value, output: Output) -> Option<String> {
    let usec = ["_SOURCE_REALTIME_TIMESTAMP", "__REALTIME_TIMESTAMP"]
        .iter()
        .find_map(|f| text(entry, f)?.parse::<u64>().ok().filter(|&t| t > 0))?;
    let t = Local::from_usec(usec)?;
    let micros = t.micros();
    Some(match output {
        Output::Plain | Output::Json => return None,
        Output::Short => t.format(c"%b %d %H:%M:%S"),
        Output::ShortPrecise => format!("{}.{micros:06}", t.format(c"%b %d %H:%M:%S")),
        // journalctl (252) writes the offset as strftime's %z, `+0100`.
        Output::ShortIso => t.format(c"%Y-%m-%dT%H:%M:%S%z"),
        Output::ShortIsoPrecise => format!(
            "{}.{micros:06}{}",
            t.format(c"%Y-%m-%dT%H:%M:%S"),
            t.format(c"%z")
        ),
    })
}

pub use locald_core::journal_entry::entry_to_line;

/// Runs journalctl and prints what it finds.
pub fn run(args: &LogsArgs) -> ExitCode {
    let term = Terminal::new(&args.services);
    if !needs_history(args) {
        return journalctl(args, &Pass::Direct, |line| print(args, &term, line));
    }
    // The last N of the range, then (with -f) what comes after them.
    let keep = args
        .lines
        .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let mut last: VecDeque<String> = VecDeque::new();
    let code = journalctl(args, &Pass::History, |line| {
        if keep > 0 {
            if last.len() == keep {
                last.pop_front();
            }
            last.push_back(line.to_owned());
        }
        Ok(())
    });
    let mut cursor = None;
    for line in &last {
        cursor = serde_json::from_str::<Value>(line)
            .ok()
            .and_then(|e| text(&e, "__CURSOR"))
            .or(cursor);
        if print(args, &term, line).is_err() {
            return ExitCode::SUCCESS;
        }
    }
    if !args.follow || code != ExitCode::SUCCESS {
        return code;
    }
    let pass = match cursor {
        Some(c) => Pass::FollowAfter(c),
        // Nothing in the range: what comes from now on.
        None => Pass::FollowNew,
    };
    journalctl(args, &pass, |line| print(args, &term, line))
}

/// Runs journalctl for `pass`, handing each output line to `each` until
/// it fails (a closed pipe: `| head`), which ends the command quietly.
fn journalctl(
    args: &LogsArgs,
    pass: &Pass,
    mut each: impl FnMut(&str) -> std::io::Result<()>,
) -> ExitCode {
    let mut child = match Command::new("journalctl")
        .args(journalctl_args(args, pass))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("locald-ctl: cannot run journalctl: {e}; the logs are in the journal (install systemd's journalctl)");
            return ExitCode::FAILURE;
        }
    };
    let Some(stdout) = child.stdout.take() else {
        return ExitCode::FAILURE;
    };
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if each(&line).is_err() {
            let _ = child.kill();
            break;
        }
    }
    match child.wait() {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}

/// Prints one journal entry (a line of journalctl's JSON) as `args` asks;
/// an error is a closed output.
fn print(args: &LogsArgs, term: &Terminal, line: &str) -> std::io::Result<()> {
    let out = std::io::stdout();
    if args.output == Output::Json {
        return writeln!(out.lock(), "{line}");
    }
    let Ok(entry) = serde_json::from_str::<Value>(line) else {
        return Ok(());
    };
    match entry_to_line(&entry) {
        Some(l) => {
            let mut text = stamp(&entry, args.output)
                .map(|s| format!("{s} ").into_bytes())
                .unwrap_or_default();
            text.extend(term.format_line(&l));
            out.lock().write_all(&text)
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use locald_core::event::{Phase, Stream};

    #[test]
    fn filters_by_project_service_and_phase() {
        let a = LogsArgs {
            project: "shop".into(),
            services: vec![],
            service: Some("web".into()),
            follow: true,
            phase: Some("build".into()),
            since: Some("-10m".into()),
            until: Some("-1m".into()),
            lines: Some(5),
            output: Output::Plain,
            namespace: None,
        };
        let v = journalctl_args(&a, &Pass::Direct);
        for want in [
            "--follow",
            "--since=-10m",
            "--until=-1m",
            "--lines=5",
            "LOCALD_PROJECT=shop",
            "LOCALD_SERVICE=web",
            "LOCALD_PHASE=build",
        ] {
            assert!(v.iter().any(|x| x == want), "{want} in {v:?}");
        }
        // Only the user's own entries, in every alternative of the match.
        let groups: Vec<&[String]> = v.split(|x| x == "+").collect();
        assert!(groups.iter().all(|g| g.contains(&own_uid())), "{v:?}");

        // -n with a range: the whole range without --lines (the last N
        // are kept here), then following after the last one.
        assert!(needs_history(&a));
        let h = journalctl_args(&a, &Pass::History);
        assert!(h.iter().any(|x| x == "--since=-10m"), "{h:?}");
        assert!(!h
            .iter()
            .any(|x| x.starts_with("--lines") || x == "--follow"));
        let f = journalctl_args(&a, &Pass::FollowAfter("s=1".into()));
        assert!(f.iter().any(|x| x == "--after-cursor=s=1"), "{f:?}");
        assert!(!f.iter().any(|x| x.starts_with("--since")), "{f:?}");
    }

    #[test]
    fn entries_become_lines_with_bytes_kept() {
        let e: Value = serde_json::from_str(
            r#"{"LOCALD_PROJECT":"p","LOCALD_SERVICE":"web","LOCALD_PHASE":"build","LOCALD_STREAM":"stderr","MESSAGE":[104,255]}"#,
        )
        .expect("json");
        let l = entry_to_line(&e).expect("a line");
        assert_eq!(
            (l.phase, l.stream, l.line.as_slice()),
            (Phase::Build, Stream::Stderr, &[104u8, 255][..])
        );
    }

    #[test]
    fn unit_lines_are_matched_by_unit_and_become_lines() {
        let a = LogsArgs {
            project: "my-shop".into(),
            services: vec![],
            service: Some("web".into()),
            follow: false,
            phase: None,
            since: None,
            until: None,
            lines: None,
            output: Output::Plain,
            namespace: None,
        };
        let v = journalctl_args(&a, &Pass::Direct);
        let plus = v.iter().position(|x| x == "+").expect("an OR");
        assert_eq!(
            v[plus + 1..],
            [
                own_uid(),
                "_SYSTEMD_USER_UNIT=locald-my\\x2dshop-web.service".to_owned()
            ]
        );
        let e: Value = serde_json::from_str(
            r#"{"_SYSTEMD_USER_UNIT":"locald-my\\x2dshop-web.service","_SYSTEMD_USER_SLICE":"locald-my\\x2dshop.slice","SYSLOG_IDENTIFIER":"web","_PID":"42","MESSAGE":"hi"}"#,
        )
        .expect("json");
        let l = entry_to_line(&e).expect("a line");
        assert_eq!(
            (&*l.project, &*l.service, l.pid, l.line.as_slice()),
            ("my-shop", "web", Some(42), &b"hi"[..])
        );
        // Build lines never come from a unit.
        let b = LogsArgs {
            phase: Some("build".into()),
            ..a
        };
        assert!(!journalctl_args(&b, &Pass::Direct).iter().any(|x| x == "+"));
    }

    #[test]
    fn stamps_in_journalctl_formats() {
        let e: Value = serde_json::from_str(
            r#"{"_SOURCE_REALTIME_TIMESTAMP":"1764601200123456","__REALTIME_TIMESTAMP":"1764601200123999","MESSAGE":"x"}"#,
        )
        .expect("json");
        let t = Local::from_usec(1_764_601_200_123_456).expect("a time");
        let (day, iso, off) = (
            t.format(c"%b %d %H:%M:%S"),
            t.format(c"%Y-%m-%dT%H:%M:%S"),
            t.format(c"%z"),
        );
        assert!(off.len() == 5 && (off.starts_with('+') || off.starts_with('-')));
        assert_eq!(stamp(&e, Output::Short), Some(day.clone()));
        assert_eq!(
            stamp(&e, Output::ShortPrecise),
            Some(format!("{day}.123456"))
        );
        assert_eq!(stamp(&e, Output::ShortIso), Some(format!("{iso}{off}")));
        assert_eq!(
            stamp(&e, Output::ShortIsoPrecise),
            Some(format!("{iso}.123456{off}"))
        );
        assert_eq!(stamp(&e, Output::Plain), None);
        let received_only: Value =
            serde_json::from_str(r#"{"__REALTIME_TIMESTAMP":"1764601200123456"}"#).expect("json");
        assert_eq!(
            stamp(&received_only, Output::ShortPrecise),
            Some(format!("{day}.123456"))
        );
    }
}
