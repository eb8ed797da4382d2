//! Journal entries as `journalctl --output=json` prints them, turned back
//! into the [`LogLine`]s locald wrote: for `locald-ctl logs`, the dashboard's
//! history and the daemon's following of its systemd units' lines.

use serde_json::Value;

use crate::event::{LogLine, Phase, Stream};

/// A field's bytes: journalctl prints text as a string and other bytes as
/// an array of numbers.
pub fn bytes(entry: &Value, field: &str) -> Option<Vec<u8>> {
    match entry.get(field)? {
        Value::String(s) => Some(s.as_bytes().to_vec()),
        Value::Array(a) => a
            .iter()
            .map(|n| n.as_u64().and_then(|n| u8::try_from(n).ok()))
            .collect(),
        _ => None,
    }
}

/// A field as text (invalid UTF-8 replaced).
pub fn text(entry: &Value, field: &str) -> Option<String> {
    bytes(entry, field).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Turns one journal entry into the line `locald up` would have printed.
pub fn entry_to_line(entry: &Value) -> Option<LogLine> {
    if text(entry, "LOCALD_SERVICE").is_none() {
        return unit_entry_to_line(entry);
    }
    let service = text(entry, "LOCALD_SERVICE")?;
    let phase = match text(entry, "LOCALD_PHASE").as_deref() {
        Some("build") => Phase::Build,
        _ => Phase::Run,
    };
    let stream = match text(entry, "LOCALD_STREAM").as_deref() {
        Some("stderr") => Stream::Stderr,
        _ => Stream::Stdout,
    };
    Some(LogLine {
        project: text(entry, "LOCALD_PROJECT").unwrap_or_default().into(),
        service: service.into(),
        phase,
        stream,
        pid: text(entry, "LOCALD_PID").and_then(|p| p.parse().ok()),
        build_id: text(entry, "LOCALD_BUILD_ID").map(Into::into),
        image: text(entry, "LOCALD_IMAGE").map(Into::into),
        line: bytes(entry, "MESSAGE").unwrap_or_default(),
        partial: false,
        continues: false,
    })
}

/// A line a service's systemd unit wrote without locald's fields (what
/// its output forwarder says about itself, or output from before the
/// forwarder): the service is its `SyslogIdentifier=`, the project the one
/// its slice is named after.
fn unit_entry_to_line(entry: &Value) -> Option<LogLine> {
    let unit = text(entry, "_SYSTEMD_USER_UNIT")?;
    if !unit.starts_with("locald-") {
        return None;
    }
    let slice = text(entry, "_SYSTEMD_USER_SLICE").unwrap_or_default();
    Some(LogLine {
        project: crate::units::project_of_slice(&slice)
            .unwrap_or_default()
            .into(),
        service: text(entry, "SYSLOG_IDENTIFIER")?.into(),
        phase: Phase::Run,
        stream: Stream::Stdout,
        pid: text(entry, "_PID").and_then(|p| p.parse().ok()),
        build_id: None,
        image: None,
        line: bytes(entry, "MESSAGE").unwrap_or_default(),
        partial: false,
        continues: false,
    })
}
