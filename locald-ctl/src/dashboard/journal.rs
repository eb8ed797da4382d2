//! Log history for the page: a project's or a service's lines from the
//! journal, newest first, page by page, through `journalctl --output=json`
//! as `locald-ctl logs` reads them (see `crate::logs` for why journalctl
//! rather than the sd-journal library).
//!
//! Every value that reaches journalctl's command line is checked here first:
//! names are the characters the config parser allows, a cursor is what
//! journald writes, and each goes in as one argument, never through a shell.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncReadExt;

use super::model::{line_text, LogLine};
use crate::logs::{bytes, text};

/// Lines in one page when the page does not say.
const DEFAULT_LINES: u32 = 200;
/// Most lines one request may ask for.
const MAX_LINES: u32 = 2000;
/// Most bytes read from journalctl for one page.
const MAX_OUTPUT: u64 = 64 * 1024 * 1024;

/// One page of history to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Project name.
    pub project: String,
    /// Only this service.
    pub service: Option<String>,
    /// Only `build` or `run` lines.
    pub phase: Option<String>,
    /// Lines older than this cursor (the oldest line the page has).
    pub before: Option<String>,
    /// How many lines.
    pub lines: u32,
}

/// Whether `s` is a project or service name as the config parser allows.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Whether `s` looks like a journal cursor (`s=…;i=…;b=…;m=…;t=…;x=…`).
fn is_cursor(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 512
        && s.starts_with("s=")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b';'))
}

impl Query {
    /// The query of `/api/logs?project=…&service=…&phase=…&before=…&lines=…`.
    pub fn parse(q: &HashMap<String, String>) -> Result<Self, String> {
        let project = q.get("project").cloned().unwrap_or_default();
        if !is_name(&project) {
            return Err("`project` must be a project name".into());
        }
        let service = q.get("service").filter(|s| !s.is_empty()).cloned();
        if service.as_deref().is_some_and(|s| !is_name(s)) {
            return Err("`service` must be a service name".into());
        }
        let phase = match q.get("phase").map(String::as_str) {
            None | Some("" | "both") => None,
            Some(p @ ("build" | "run")) => Some(p.to_owned()),
            Some(_) => return Err("`phase` must be build, run or both".into()),
        };
        let before = q.get("before").filter(|s| !s.is_empty()).cloned();
        if before.as_deref().is_some_and(|c| !is_cursor(c)) {
            return Err("`before` must be a journal cursor".into());
        }
        let lines = match q.get("lines") {
            None => DEFAULT_LINES,
            Some(n) => n
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_LINES).contains(n))
                .ok_or_else(|| format!("`lines` must be 1 to {MAX_LINES}"))?,
        };
        Ok(Self {
            project,
            service,
            phase,
            before,
            lines,
        })
    }

    /// journalctl's arguments: newest first, starting after `before`.
    pub fn args(&self, namespace: Option<&str>) -> Vec<String> {
        let mut v = vec![
            "--output=json".to_owned(),
            "--all".to_owned(),
            "--no-pager".to_owned(),
            "--quiet".to_owned(),
            "--reverse".to_owned(),
            format!("--lines={}", self.lines),
        ];
        if let Some(ns) = namespace {
            v.push(format!("--namespace={ns}"));
        }
        if let Some(c) = &self.before {
            v.push(format!("--after-cursor={c}"));
        }
        v.push(format!("LOCALD_PROJECT={}", self.project));
        if let Some(s) = &self.service {
            v.push(format!("LOCALD_SERVICE={s}"));
        }
        if let Some(p) = &self.phase {
            v.push(format!("LOCALD_PHASE={p}"));
        }
        // Another user can write entries with these fields; only this
        // user's own are theirs (see `logs::journalctl_args`).
        v.push(crate::logs::own_uid());
        v
    }
}

/// One journal entry as a line for the page; `None` for entries that are
/// not a service's output.
pub fn entry_line(entry: &Value) -> Option<LogLine> {
    let time = ["_SOURCE_REALTIME_TIMESTAMP", "__REALTIME_TIMESTAMP"]
        .iter()
        .find_map(|f| text(entry, f)?.parse::<u64>().ok().filter(|&t| t > 0))
        .unwrap_or(0);
    Some(LogLine {
        project: text(entry, "LOCALD_PROJECT")?,
        service: text(entry, "LOCALD_SERVICE")?,
        phase: match text(entry, "LOCALD_PHASE").as_deref() {
            Some("build") => "build".into(),
            _ => "run".into(),
        },
        stream: match text(entry, "LOCALD_STREAM").as_deref() {
            Some("stderr") => "stderr".into(),
            _ => "stdout".into(),
        },
        priority: text(entry, "PRIORITY").and_then(|p| p.parse().ok()),
        time,
        cursor: text(entry, "__CURSOR"),
        text: line_text(&bytes(entry, "MESSAGE").unwrap_or_default()),
    })
}

/// Reads one page: newest first.
pub async fn history(q: &Query, namespace: Option<&str>) -> Result<Vec<LogLine>, String> {
    let mut child = tokio::process::Command::new("journalctl")
        .args(q.args(namespace))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run journalctl: {e}"))?;
    let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err("journalctl has no output".into());
    };
    let read = async {
        let mut out = Vec::new();
        stdout.take(MAX_OUTPUT).read_to_end(&mut out).await?;
        let mut err = Vec::new();
        (&mut stderr).take(64 * 1024).read_to_end(&mut err).await?;
        let status = child.wait().await?;
        Ok::<_, std::io::Error>((out, err, status))
    };
    let (out, err, status) = tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .map_err(|_| "journalctl took too long".to_owned())?
        .map_err(|e| format!("reading journalctl: {e}"))?;
    // journalctl exits 1 when a namespace has no journal yet: no lines.
    if !status.success() && !out.is_empty() {
        return Err(format!(
            "journalctl failed: {}",
            String::from_utf8_lossy(&err).trim()
        ));
    }
    Ok(out
        .split(|&b| b == b'\n')
        .filter_map(|l| serde_json::from_slice::<Value>(l).ok())
        .filter_map(|e| entry_line(&e))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Result<Query, String> {
        Query::parse(
            &pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn queries_are_checked_before_journalctl_sees_them() {
        assert!(q(&[]).is_err());
        assert!(q(&[("project", "--output=cat")]).is_err());
        assert!(q(&[("project", "a b")]).is_err());
        assert!(q(&[("project", "shop"), ("service", "x=y")]).is_err());
        assert!(q(&[("project", "shop"), ("phase", "all")]).is_err());
        assert!(q(&[("project", "shop"), ("before", "--since=x")]).is_err());
        assert!(q(&[("project", "shop"), ("lines", "0")]).is_err());
        assert!(q(&[("project", "shop"), ("lines", "999999")]).is_err());
        let ok = q(&[
            ("project", "shop"),
            ("service", "web"),
            ("phase", "build"),
            ("before", "s=ab12;i=3f;b=cd;m=1a;t=5e;x=77"),
            ("lines", "50"),
        ])
        .expect("a good query");
        let args = ok.args(Some("ns"));
        for want in [
            "--reverse",
            "--lines=50",
            "--namespace=ns",
            "--after-cursor=s=ab12;i=3f;b=cd;m=1a;t=5e;x=77",
            "LOCALD_PROJECT=shop",
            "LOCALD_SERVICE=web",
            "LOCALD_PHASE=build",
        ] {
            assert!(args.iter().any(|a| a == want), "{want} in {args:?}");
        }
        assert!(args.contains(&crate::logs::own_uid()), "{args:?}");
    }

    #[test]
    fn entries_become_lines() {
        let e: Value = serde_json::from_str(
            r#"{"LOCALD_PROJECT":"p","LOCALD_SERVICE":"web","LOCALD_PHASE":"build","LOCALD_STREAM":"stderr","PRIORITY":"3","__CURSOR":"s=1","__REALTIME_TIMESTAMP":"17","MESSAGE":"<b>x</b>"}"#,
        )
        .expect("json");
        let l = entry_line(&e).expect("a line");
        assert_eq!(
            (
                l.phase.as_str(),
                l.stream.as_str(),
                l.priority,
                l.time,
                l.text.as_str()
            ),
            ("build", "stderr", Some(3), 17, "<b>x</b>")
        );
        let not_ours: Value = serde_json::from_str(r#"{"MESSAGE":"x"}"#).expect("json");
        assert!(entry_line(&not_ours).is_none());
    }
}
