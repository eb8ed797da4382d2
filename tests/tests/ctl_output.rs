//! What people read from `locald-ctl` and `locald`, from a new user's
//! review: a broken `locald.toml` reported through the daemon as richly as
//! `locald check` does, `watch` in words, the `status` table and its JSON,
//! log timestamps as journalctl prints them, no colour codes where no
//! terminal is, and a quiet end on a closed pipe. Each test is the
//! regression test of one item, against the real daemon on a private bus,
//! a private journald and real processes.

use std::process::Command;

use locald_tests::dbus::{ctl, have_dbus_daemon, Daemon, TestBus};
use locald_tests::{bin, pids_with, require, unique, TestProject};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn no_bus() -> bool {
    require(
        have_dbus_daemon(),
        "dbus-daemon is not installed (tests/setup-debian.sh installs it)",
    )
}

/// Kills leftover processes of a test even when it fails halfway.
struct Reaper(String);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in pids_with(&self.0) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

fn project_name(p: &TestProject) -> String {
    locald::config::load_project(p.path())
        .expect("test project is valid")
        .name
}

/// `[project]` with a fresh name, then `services` as given; `MARKER` in
/// them becomes `marker` so the reaper finds their processes.
fn project(marker: &str, services: &str) -> TestProject {
    TestProject::new(&format!(
        "[project]\nname = \"{}\"\n\n{}",
        unique("out"),
        services.replace("MARKER", marker)
    ))
}

// ---------------------------------------------------------------------------
// 1. The config diagnostic through the daemon.

/// `locald-ctl reload` printed one line (`ConfigError::summary()`, all the
/// daemon sent) where `locald check` shows the line, a caret and a hint.
#[test]
fn ctl_reload_of_a_broken_file_prints_the_caret_and_the_hint() {
    if no_bus() {
        return;
    }
    let bus = TestBus::start();
    let _daemon = Daemon::start(&bus);
    let marker = unique("diag-marker");
    let _reaper = Reaper(marker.clone());
    let p = project(
        &marker,
        "[services.web]\ncommand = [\"sh\", \"-c\", \"sleep 1000; true\", \"MARKER\"]\n",
    );
    let name = project_name(&p);
    let up = ctl(&bus, p.path(), &["up"]);
    assert_eq!(up.code, 0, "{up:?}");

    p.write(
        "locald.toml",
        &format!("[project]\nname = \"{name}\"\n\n[services.web]\ncomand = \"sleep 1000\"\n"),
    );
    let check = Command::new(bin("locald"))
        .arg("check")
        .arg(p.path())
        .output()
        .expect("run locald check");
    let report = String::from_utf8_lossy(&check.stderr).trim_end().to_owned();
    assert!(
        report.contains("^^^^^^") && report.contains("hint: did you mean `command`?"),
        "locald check itself shows the caret and the hint:\n{report}"
    );
    for verb in ["reload", "up"] {
        let out = ctl(&bus, p.path(), &[verb]);
        assert_eq!(out.code, 2, "`locald-ctl {verb}`: {out:?}");
        assert!(
            out.stderr.contains(&report),
            "`locald-ctl {verb}` prints what `locald check` prints:\n{}\n--- locald check:\n{report}",
            out.stderr
        );
        assert!(!out.stderr.contains('\x1b'), "{}", out.stderr);
    }

    // On the wire the first line stays `file:line:column: message`, which
    // editors link; no colour codes in any of it.
    let file = p
        .path()
        .canonicalize()
        .expect("canonical")
        .join("locald.toml");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let err = rt.block_on(async {
        let conn = bus.connect().await;
        let manager = locald_api::Manager1Proxy::new(&conn)
            .await
            .expect("manager proxy");
        manager.reload(&name).await.expect_err("a broken file")
    });
    let locald_api::Error::ConfigInvalid(text) = err else {
        panic!("ConfigInvalid expected, got {err:?}");
    };
    assert_eq!(
        text.lines().next(),
        Some(format!("{}:5:1: unknown field `comand`", file.display()).as_str()),
        "{text}"
    );
    assert!(text.contains("^^^^^^") && !text.contains('\x1b'), "{text}");
    assert_eq!(ctl(&bus, p.path(), &["down"]).code, 0);
}
