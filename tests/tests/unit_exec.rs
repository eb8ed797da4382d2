//! `locald internal-unit-exec`, the first process of a service's systemd
//! unit, run directly against a private journald (no user manager needed):
//! the service keeps the forwarder's pid and exit status, its stdout and
//! stderr lines reach the journal apart with locald's fields, a last line
//! without a newline and a line longer than journald's limit are kept, and
//! a SIGTERM to the forwarder (as systemd sends to the whole unit on stop)
//! loses nothing.

use std::os::unix::process::CommandExt as _;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use locald_tests::journald::Journald;
use locald_tests::{bin, unique};

/// `locald internal-unit-exec` for `project`/`service` into `j`; the
/// caller adds further options and `-- COMMAND`.
fn forwarder(j: &Journald, project: &str, service: &str) -> Command {
    let mut c = Command::new(bin("locald"));
    c.args([
        "internal-unit-exec",
        "--project",
        project,
        "--service",
        service,
        "--socket",
    ])
    .arg(j.socket());
    c
}

#[test]
fn forwarder_writes_locald_fields_and_becomes_the_service() -> Result<()> {
    let Some(j) =
        Journald::start_or_skip("forwarder_writes_locald_fields_and_becomes_the_service")?
    else {
        return Ok(());
    };
    let project = unique("fwd");
    let long = "x".repeat(70_000);
    // The script prints its own pid (the forwarder's, if exec kept it),
    // lines on both streams, a priority prefix, a long line, a last line
    // without newline, and exits 3.
    let script = format!(
        "echo pid=$$; echo to-err >&2; echo '<3>bad thing' >&2; echo {long}; printf tail; exit 3"
    );
    let mut child = forwarder(&j, &project, "web")
        .args([
            "--phase",
            "run",
            "--stderr-priority",
            "4",
            "--arg0",
            "sh",
            "--",
            "/bin/sh",
            "-c",
            &script,
        ])
        .spawn()?;
    let pid = child.id();
    let status = child.wait()?;
    assert_eq!(status.code(), Some(3), "the service's exit status");

    let m = [("LOCALD_PROJECT", project.as_str())];
    j.wait_for_count(&m, 6, Duration::from_secs(10))?;
    let entries = j.synced_query(&m)?;
    let find = |text: &str| {
        entries
            .iter()
            .find(|e| e.field("MESSAGE").starts_with(text))
            .unwrap_or_else(|| panic!("no line {text:?} in {} entries", entries.len()))
    };
    let first = find("pid=");
    assert_eq!(
        first.field("MESSAGE"),
        format!("pid={pid}"),
        "exec kept the pid"
    );
    for e in &entries {
        assert_eq!(e.field("LOCALD_SERVICE"), "web");
        assert_eq!(e.field("LOCALD_PHASE"), "run");
        assert_eq!(e.field("SYSLOG_IDENTIFIER"), "web");
        assert_eq!(e.field("LOCALD_PID"), pid.to_string());
    }
    assert_eq!(first.field("LOCALD_STREAM"), "stdout");
    assert_eq!(first.field("PRIORITY"), "6");
    let err = find("to-err");
    assert_eq!(err.field("LOCALD_STREAM"), "stderr");
    assert_eq!(err.field("PRIORITY"), "4", "stderr_priority");
    assert_eq!(find("bad thing").field("PRIORITY"), "3", "<3> prefix");
    let tail = find("tail");
    assert_eq!(tail.field("LOCALD_LINE_BREAK"), "partial");
    let pieces: String = entries
        .iter()
        .map(|e| e.field("MESSAGE"))
        .filter(|m| m.starts_with('x'))
        .collect();
    assert_eq!(pieces, long, "the long line, split and whole");
    Ok(())
}

#[test]
fn a_stopping_unit_loses_no_line() -> Result<()> {
    let Some(j) = Journald::start_or_skip("a_stopping_unit_loses_no_line")? else {
        return Ok(());
    };
    let project = unique("fwdterm");
    // Like systemd stopping a unit: SIGTERM to every process of it. The
    // service prints 2000 lines on SIGTERM and exits; the forwarder must
    // stay to write them.
    let script = "trap 'i=0; while [ $i -lt 2000 ]; do echo bye-$i; i=$((i+1)); done; exit 0' TERM; echo ready; while :; do sleep 0.05; done";
    let mut child = forwarder(&j, &project, "w")
        .args(["--", "/bin/sh", "-c", script])
        .process_group(0)
        .spawn()?;
    let m = [("LOCALD_PROJECT", project.as_str())];
    j.wait_for_count(&m, 1, Duration::from_secs(10))?;
    let pgid = nix::unistd::Pid::from_raw(-(child.id() as i32));
    nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGTERM)?;
    assert!(child.wait()?.success());
    j.wait_for_count(&m, 2001, Duration::from_secs(20))?;
    let msgs = j.text_messages(&m)?;
    let byes: Vec<&String> = msgs.iter().filter(|m| m.starts_with("bye-")).collect();
    let want: Vec<String> = (0..2000).map(|i| format!("bye-{i}")).collect();
    assert!(
        byes.iter()
            .map(|s| s.as_str())
            .eq(want.iter().map(String::as_str)),
        "every line once, in order: {} lines, others: {:?}",
        byes.len(),
        msgs.iter()
            .filter(|m| !m.starts_with("bye-"))
            .collect::<Vec<_>>()
    );
    let others: Vec<&String> = msgs.iter().filter(|m| !m.starts_with("bye-")).collect();
    assert_eq!(
        others.first().map(|s| s.as_str()),
        Some("ready"),
        "{others:?}"
    );
    assert_eq!(
        others.iter().filter(|m| m.as_str() == "ready").count(),
        1,
        "{others:?}"
    );
    Ok(())
}
