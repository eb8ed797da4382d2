//! What people read from `locald-ctl` and `locald`, from a new user's
//! review: a broken `locald.toml` reported through the daemon as richly as
//! `locald check` does, `watch` in words, the `status` table and its JSON,
//! log timestamps as journalctl prints them, no colour codes where no
//! terminal is, and a quiet end on a closed pipe. Each test is the
//! regression test of one item, against the real daemon on a private bus,
//! a private journald and real processes.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use locald_tests::dbus::{ctl, have_dbus_daemon, status_json, Daemon, TestBus};
use locald_tests::journald::Journald;
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

/// A child killed on drop, so a failing test leaves no `watch` behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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

/// A `locald` or `locald-ctl` run whose stdout is a pipe nobody reads: the
/// read end is closed before the command starts, as after `| head -c1`.
fn into_closed_pipe(cmd: &mut Command) -> Output {
    let (read, write) = std::io::pipe().expect("pipe");
    drop(read);
    cmd.stdin(Stdio::null())
        .stdout(write)
        .stderr(Stdio::piped())
        .output()
        .expect("run the command")
}

fn assert_quiet_end(what: &str, out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked") && out.status.code() != Some(101),
        "{what} into a closed pipe: {:?}\n{stderr}",
        out.status
    );
    assert!(
        stderr.trim().is_empty(),
        "{what}: nothing on stderr:\n{stderr}"
    );
}

// ---------------------------------------------------------------------------
// 1. The config diagnostic through the daemon.

/// `locald-ctl reload` printed one line (`ConfigError::summary()`, all the
/// daemon sent) where `locald check` shows the line, a caret and a hint.
/// `up --wait` for scripts: 0 once every service is ready (a one-shot
/// task that exited 0 counts), 1 with the reason once one failed, 1 naming
/// what it waited for when the time is up.
#[test]
fn ctl_up_wait_returns_when_ready_or_failed_or_out_of_time() {
    if no_bus() {
        return;
    }
    let bus = TestBus::start();
    let _daemon = Daemon::start(&bus);
    let marker = unique("wait-marker");
    let _reaper = Reaper(marker.clone());
    let good = project(
        &marker,
        "[services.web]\ncommand = [\"sh\", \"-c\", \"sleep 1000; true\", \"MARKER\"]\n\n\
         [services.migrate]\ncommand = \"true\"\nrestart = \"never\"\n",
    );
    let out = ctl(&bus, good.path(), &["up", "--wait", "--timeout", "30s"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("is ready"), "{out:?}");
    // (The one-shot task may be seen running for a moment: it counts too.)
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let states = status_json(&bus, good.path())["services"].clone();
        if states.to_string().contains("exited successfully") {
            break;
        }
        assert!(Instant::now() < deadline, "{states}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(ctl(&bus, good.path(), &["down"]).code, 0);

    // Failed before it ever runs (a service without a health check that
    // is running even for a moment counts as ready).
    let bad = project(
        &marker,
        "[services.bad]\ncommand = \"no-such-program-ww --x\"\n",
    );
    let out = ctl(&bus, bad.path(), &["up", "--wait", "--timeout", "30s"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("did not come up: bad:"), "{out:?}");
    assert!(out.stderr.contains("not found in PATH"), "{out:?}");
    assert_eq!(ctl(&bus, bad.path(), &["down"]).code, 0);

    // A health check nobody answers: running, never healthy.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let slow = project(
        &marker,
        &format!(
            "[services.web]\ncommand = [\"sh\", \"-c\", \"sleep 1000; true\", \"MARKER\"]\n\
             health = {{ tcp = {port}, interval = \"200ms\", retries = 1000 }}\n"
        ),
    );
    let t0 = Instant::now();
    let out = ctl(&bus, slow.path(), &["up", "--wait", "--timeout", "1s"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("not ready after 1s: waiting for web"),
        "{out:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert_eq!(ctl(&bus, slow.path(), &["down"]).code, 0);
}

/// `locald-ctl down hello` names a project the way `up` named it, but
/// `down`'s argument is a directory: the error says why it cannot be read
/// and how to name a project; a broken TOML file's message is said once.
#[test]
fn ctl_says_how_to_name_a_project_and_a_parse_error_once() {
    if no_bus() {
        return;
    }
    let bus = TestBus::start();
    let _daemon = Daemon::start(&bus);
    let empty = tempfile::tempdir().expect("tempdir");
    let out = ctl(&bus, empty.path(), &["down", "hello"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("No such file or directory"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("`locald-ctl -p hello …`"),
        "{}",
        out.stderr
    );

    let p = TestProject::new("[services.web]\ncommand = \"x\"\nbad = = 1\n");
    let up = ctl(&bus, p.path(), &["up"]);
    assert_eq!(up.code, 2, "{up:?}");
    assert_eq!(
        up.stderr.matches("invalid string").count(),
        1,
        "{}",
        up.stderr
    );
    assert_eq!(
        up.stderr.matches("expected `\"`").count(),
        1,
        "{}",
        up.stderr
    );
}

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

// ---------------------------------------------------------------------------
// 2. Output people read.

/// `locald-ctl watch` printed D-Bus property names and raw values
/// (`MainPID=1234 RestartCount=2 StartedAt=1764601200123456`).
#[test]
fn ctl_watch_says_what_changed_in_words() {
    if no_bus() {
        return;
    }
    let bus = TestBus::start();
    let _daemon = Daemon::start(&bus);
    let marker = unique("watch-marker");
    let _reaper = Reaper(marker.clone());
    let p = project(
        &marker,
        "[services.web]\ncommand = [\"sh\", \"-c\", \"sleep 0.3; exit 3\", \"MARKER\"]\nrestart_delay = \"100ms\"\nstart_limit_burst = 100\n",
    );
    assert_eq!(ctl(&bus, p.path(), &["up"]).code, 0);
    let child = Command::new(bin("locald-ctl"))
        .arg("watch")
        .current_dir(p.path())
        .env("LOCALD_BUS_ADDRESS", bus.address())
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn locald-ctl watch");
    let mut watch = KillOnDrop(child);
    let stdout = watch.0.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let end = Instant::now() + Duration::from_secs(30);
    while !lines
        .iter()
        .any(|l: &String| l.contains("web: restarted (2)"))
    {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(_) => panic!("no `web: restarted (2)` in 30 s:\n{}", lines.join("\n")),
        }
    }
    drop(watch);
    let all = lines.join("\n");
    let arrow = |l: &&String| {
        l.split_once("web: ")
            .and_then(|(_, rest)| rest.split_once(" → "))
            .is_some_and(|(from, to)| {
                let to = to.split(' ').next().unwrap_or("");
                locald_api::SERVICE_STATES.contains(&from)
                    && locald_api::SERVICE_STATES.contains(&to)
            })
    };
    assert!(
        lines.iter().any(|l| arrow(&l)),
        "a state change as `web: a → b`:\n{all}"
    );
    assert!(
        lines.iter().any(|l| l
            .split_once("web: pid ")
            .is_some_and(|(_, pid)| pid.parse::<u32>().is_ok_and(|n| n > 0))),
        "a new process as `web: pid N`:\n{all}"
    );
    assert!(all.contains("web: restarted (1)"), "{all}");
    for raw in [
        "MainPID",
        "RestartCount",
        "StartedAt",
        "ExitStatus",
        "State=",
        "LastBuild",
    ] {
        assert!(!all.contains(raw), "no property name `{raw}`:\n{all}");
    }
    let long_number = all
        .split(|c: char| !c.is_ascii_digit())
        .any(|n| n.len() >= 10);
    assert!(!long_number, "no microsecond timestamps:\n{all}");
}

/// A project with a service that keeps running, one that failed at once,
/// and one stopped by hand (whose reason, "stopped", was printed again:
/// `stopped (stopped)`).
fn three_states(marker: &str) -> TestProject {
    project(
        marker,
        "[services.web]\ncommand = [\"sh\", \"-c\", \"sleep 1000; true\", \"MARKER-web\"]\nbuild = \"true\"\n\n\
         [services.bad]\ncommand = [\"sh\", \"-c\", \"echo no config file found; exit 1\", \"MARKER-bad\"]\nrestart = \"never\"\n\n\
         [services.idle]\ncommand = [\"sh\", \"-c\", \"sleep 1000; true\", \"MARKER-idle\"]\nstop_timeout = \"2s\"\n",
    )
}

fn bring_up_three(bus: &TestBus, p: &TestProject) {
    assert_eq!(ctl(bus, p.path(), &["up"]).code, 0);
    let stop = ctl(bus, p.path(), &["stop", "idle"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let json = status_json(bus, p.path());
        let state = |n: &str| {
            json["services"]
                .as_array()
                .and_then(|a| a.iter().find(|s| s["name"] == n))
                .map(|s| s["state"].as_str().unwrap_or("").to_owned())
                .unwrap_or_default()
        };
        if state("bad") == "failed" && state("idle") == "stopped" && state("web") == "running" {
            return;
        }
        assert!(Instant::now() < end, "states never settled: {json}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `locald-ctl status` put the reason in parentheses after the state, so
/// a stopped service read `stopped (stopped)` and a long reason pushed the
/// table past the terminal's edge.
#[test]
fn ctl_status_shows_the_reason_in_its_own_column_without_repeating_the_state() {
    if no_bus() {
        return;
    }
    let bus = TestBus::start();
    let _daemon = Daemon::start(&bus);
    let marker = unique("status-marker");
    let _reaper = Reaper(marker.clone());
    let p = three_states(&marker);
    bring_up_three(&bus, &p);
    let json = status_json(&bus, p.path());
    let reason = json["services"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "bad"))
        .and_then(|s| s["state_reason"].as_str())
        .expect("bad has a reason")
        .to_owned();

    let out = ctl(&bus, p.path(), &["status"]);
    assert_eq!(out.code, 0, "{out:?}");
    let table: Vec<&str> = out.stdout.lines().skip(1).collect();
    let row = |name: &str| {
        table
            .iter()
            .find(|l| l.split_whitespace().next() == Some(name))
            .copied()
            .unwrap_or_else(|| panic!("no row for {name}:\n{}", out.stdout))
    };
    let header = table[0];
    assert!(
        header.contains("STATE") && header.contains("REASON"),
        "{}",
        out.stdout
    );
    assert_eq!(
        row("idle").matches("stopped").count(),
        1,
        "the state once:\n{}",
        out.stdout
    );
    assert!(
        !table.iter().any(|l| l.contains('(')),
        "no reasons in parentheses:\n{}",
        out.stdout
    );
    let bad = row("bad");
    let col = header.find("REASON").expect("REASON");
    assert_eq!(
        bad.get(col..),
        Some(reason.as_str()),
        "the whole reason under REASON (not a terminal, no COLUMNS):\n{}",
        out.stdout
    );

    // In a narrower terminal ($COLUMNS, as systemctl reads it) the reason is
    // cut to fit, with an ellipsis.
    let narrow = Command::new(bin("locald-ctl"))
        .arg("status")
        .current_dir(p.path())
        .env("LOCALD_BUS_ADDRESS", bus.address())
        .env("COLUMNS", (col + 8).to_string())
        .output()
        .expect("run locald-ctl status");
    let text = String::from_utf8_lossy(&narrow.stdout);
    for line in text.lines().skip(1) {
        assert!(
            line.chars().count() <= col + 8,
            "`{line}` fits in {} columns:\n{text}",
            col + 8
        );
    }
    let cut = text
        .lines()
        .find(|l| l.starts_with("bad "))
        .expect("bad row");
    assert!(cut.ends_with('…'), "{text}");
    assert_eq!(ctl(&bus, p.path(), &["down"]).code, 0);
}

fn rfc3339(v: &serde_json::Value) -> SystemTime {
    let text = v.as_str().unwrap_or_else(|| panic!("a time string: {v}"));
    humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("`{text}` is RFC 3339: {e}"))
}

/// `locald-ctl status --json` printed the wire's stand-ins for "none"
/// (`"main_pid": 0`, `"exit_status": -1`, `"started_at": 0`) and times as
/// microseconds since the epoch.
#[test]
fn ctl_status_json_has_null_for_absent_values_and_rfc3339_times() {
    if no_bus() {
        return;
    }
    let bus = TestBus::start();
    let _daemon = Daemon::start(&bus);
    let marker = unique("json-marker");
    let _reaper = Reaper(marker.clone());
    let p = three_states(&marker);
    bring_up_three(&bus, &p);
    let json = status_json(&bus, p.path());
    let svc = |n: &str| {
        json["services"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == n))
            .cloned()
            .unwrap_or_else(|| panic!("no {n} in {json}"))
    };
    let (web, bad, idle) = (svc("web"), svc("bad"), svc("idle"));
    let now = SystemTime::now();
    let recent = |t: SystemTime| {
        now.duration_since(t)
            .is_ok_and(|d| d < Duration::from_secs(120))
    };

    assert!(web["main_pid"].as_u64().is_some_and(|p| p > 0), "{web}");
    assert!(web["exit_status"].is_null(), "never exited: {web}");
    assert!(recent(rfc3339(&web["started_at"])), "{web}");
    let build = &web["last_build"];
    assert_eq!(build["result"], "succeeded", "{web}");
    assert!(recent(rfc3339(&build["started_at"])), "{web}");
    assert!(recent(rfc3339(&build["finished_at"])), "{web}");

    assert!(bad["main_pid"].is_null(), "no process: {bad}");
    assert!(bad["started_at"].is_null(), "not running: {bad}");
    assert_eq!(bad["exit_status"], 1, "{bad}");
    assert!(bad["last_build"].is_null(), "never built: {bad}");

    assert!(idle["main_pid"].is_null(), "{idle}");
    assert!(idle["started_at"].is_null(), "{idle}");
    assert_eq!(ctl(&bus, p.path(), &["down"]).code, 0);
}

/// `locald-ctl logs` had no way to show when a line was written; the
/// journal knows (`__REALTIME_TIMESTAMP`) and journalctl prints it.
#[test]
fn ctl_logs_timestamps_match_journalctl() -> anyhow::Result<()> {
    let Some(j) = Journald::start_or_skip("ctl_logs_timestamps_match_journalctl")? else {
        return Ok(());
    };
    let name = unique("jts");
    let p = TestProject::new(&format!(
        "[project]\nname = \"{name}\"\n\n[services.web]\ncommand = \"echo first; sleep 1.1; echo second; touch done; exec sleep 100\"\n"
    ));
    let mut up = Command::new(bin("locald"))
        .arg("up")
        .arg(p.path())
        .env("LOCALD_JOURNAL_SOCKET", j.socket())
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let end = Instant::now() + Duration::from_secs(20);
    while !p.join("done").exists() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    kill(Pid::from_raw(up.id() as i32), Signal::SIGINT)?;
    up.wait()?;
    j.sync()?;

    // A zone with a half-hour offset and no tzdata needed: both programs
    // must apply it the same way.
    let tz = "XST-5:30";
    let journalctl = |mode: &str| -> anyhow::Result<Vec<String>> {
        let out = Command::new("journalctl")
            .arg(format!("--namespace={}", j.namespace()))
            .args(["--no-pager", "-q", "-o", mode])
            .arg(format!("LOCALD_PROJECT={name}"))
            .arg("LOCALD_SERVICE=web")
            .env("TZ", tz)
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.ends_with("first") || l.ends_with("second"))
            .map(str::to_owned)
            .collect())
    };
    let logs = |args: &[&str]| -> anyhow::Result<Vec<String>> {
        let out = Command::new(bin("locald-ctl"))
            .arg("logs")
            .arg("web")
            .args(args)
            .current_dir(p.path())
            .env("LOCALD_JOURNAL_NAMESPACE", j.namespace())
            .env("NO_COLOR", "1")
            .env("TZ", tz)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "locald-ctl logs {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect())
    };
    // journalctl's short format: "Dec 01 14:16:24 host ident[pid]: text".
    // Newer journalctl versions write the ISO offset as +05:30 rather than
    // +0530; either is fine.
    let stamp = |line: &str, words: usize| -> String {
        let s = line.split_whitespace().take(words).collect::<Vec<_>>();
        let s = s.join(" ");
        match s.rsplit_once('+') {
            Some((t, off)) if words == 1 => format!("{t}+{}", off.replace(':', "")),
            _ => s,
        }
    };
    for (args, mode, words) in [
        (&["--timestamps"][..], "short", 3),
        (&["-o", "short"][..], "short", 3),
        (&["-o", "short-iso"][..], "short-iso", 1),
        (&["-o", "short-precise"][..], "short-precise", 3),
        (&["-o", "short-iso-precise"][..], "short-iso-precise", 1),
    ] {
        let want = journalctl(mode)?;
        let got = logs(args)?;
        anyhow::ensure!(want.len() == 2, "journalctl -o {mode}: {want:?}");
        anyhow::ensure!(
            got.len() == 2,
            "locald-ctl logs {args:?}, two lines: {got:?}"
        );
        for (w, g) in want.iter().zip(&got) {
            anyhow::ensure!(
                stamp(w, words) == stamp(g, words),
                "locald-ctl logs {args:?} stamps like journalctl -o {mode}:\n  {g}\n  {w}"
            );
            let text = w.rsplit(' ').next().unwrap_or("");
            anyhow::ensure!(
                g.ends_with(&format!("web | {text}")),
                "the line as `up` shows it after the stamp: {g}"
            );
        }
    }
    // Without a timestamp option the lines are as `locald up` printed them.
    let plain = logs(&[])?;
    let plain: Vec<&str> = plain.iter().map(|l| l.trim_start()).collect();
    anyhow::ensure!(plain == ["web | first", "web | second"], "{plain:?}");
    Ok(())
}

/// Warnings of `locald` (tracing) were coloured even into a pipe or a
/// file: `^[[33m WARN^[[0m` in CI logs and in `2> errors.txt`.
#[test]
fn locald_warnings_have_no_colour_codes_off_a_terminal_or_under_no_color() {
    let p = TestProject::new(&format!(
        "[project]\nname = \"{}\"\n\n[services.web]\nbuild = {{ command = \"true\", inputs = [\"src/**\"] }}\ncommand = \"sleep 1\"\n",
        unique("ansi")
    ));
    p.write("src/a.txt", "a\n");
    let build = |env: &[(&str, &str)], tty: bool| -> String {
        // A damaged stat cache is worth a warning on every build.
        let cache = p.join(".locald/state/web.statcache");
        if cache.exists() {
            std::fs::write(&cache, "damaged").expect("damage the stat cache");
        }
        let locald = bin("locald");
        let mut cmd = if tty {
            // `script` gives the command a terminal for stdout and stderr.
            let mut c = Command::new("script");
            c.args(["-qec"])
                .arg(format!(
                    "{} build -C {}",
                    locald.display(),
                    p.path().display()
                ))
                .arg("/dev/null");
            c
        } else {
            let mut c = Command::new(&locald);
            c.arg("build").arg("-C").arg(p.path());
            c
        };
        cmd.env_remove("NO_COLOR").stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run locald build");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    build(&[], false);
    let piped = build(&[], false);
    assert!(piped.contains("stat cache is damaged"), "{piped}");
    assert!(!piped.contains('\x1b'), "no colour into a pipe:\n{piped:?}");

    if require(
        Command::new("script").arg("--version").output().is_ok(),
        "`script` (util-linux) is needed to give locald a terminal",
    ) {
        return;
    }
    let tty = build(&[], true);
    assert!(tty.contains("stat cache is damaged"), "{tty}");
    assert!(tty.contains('\x1b'), "colour on a terminal:\n{tty:?}");
    let no_color = build(&[("NO_COLOR", "1")], true);
    assert!(no_color.contains("stat cache is damaged"), "{no_color}");
    assert!(
        !no_color.contains('\x1b'),
        "NO_COLOR on a terminal:\n{no_color:?}"
    );
}

/// The daemon's own log, when it goes to stderr (no journal) and stderr is
/// a file, was coloured like a terminal's.
#[test]
fn locald_daemon_log_into_a_file_has_no_colour_codes() {
    if no_bus() {
        return;
    }
    let bus = TestBus::start();
    let daemon = Daemon::start(&bus);
    let marker = unique("log-marker");
    let _reaper = Reaper(marker.clone());
    let p = project(
        &marker,
        "[services.web]\ncommand = [\"sh\", \"-c\", \"sleep 1000; true\", \"MARKER\"]\n",
    );
    assert_eq!(ctl(&bus, p.path(), &["up"]).code, 0);
    assert_eq!(ctl(&bus, p.path(), &["down"]).code, 0);
    let log = daemon.log();
    if log.trim().is_empty() {
        // Not a missing precondition: with a journal the daemon logs there.
        eprintln!("the daemon logs to the journal here; its stderr is not exercised");
        return;
    }
    assert!(!log.contains('\x1b'), "no colour codes in a file:\n{log:?}");
}

// ---------------------------------------------------------------------------
// 3. A closed pipe.

/// `locald check DIR | head -c1` panicked (exit 101, "failed printing to
/// stdout: Broken pipe"), as did `locald schema | head -c1`. `locald build`
/// (which finishes the build it started) and `locald-ctl` end quietly too.
#[test]
fn locald_check_and_schema_into_a_closed_pipe_end_quietly() {
    let p = TestProject::new(&format!(
        "[project]\nname = \"{}\"\n\n[services.web]\nbuild = \"echo compiling\"\ncommand = \"sleep 1\"\n",
        unique("pipe")
    ));
    let check = into_closed_pipe(Command::new(bin("locald")).arg("check").arg(p.path()));
    assert_quiet_end("locald check", &check);
    let schema = into_closed_pipe(Command::new(bin("locald")).arg("schema"));
    assert_quiet_end("locald schema", &schema);
    let ctl_check = into_closed_pipe(Command::new(bin("locald-ctl")).arg("check").arg(p.path()));
    assert_quiet_end("locald-ctl check", &ctl_check);
    let build = into_closed_pipe(
        Command::new(bin("locald"))
            .arg("build")
            .arg("-C")
            .arg(p.path()),
    );
    assert_quiet_end("locald build", &build);
    assert!(
        build.status.success(),
        "the build itself succeeded: {:?}",
        build.status
    );
}

/// `locald up | head -1`: once the reader is gone, `up` kept running its
/// services with nobody to see them. It now stops them, as on Ctrl-C, and
/// ends quietly.
#[test]
fn locald_up_into_a_closed_pipe_stops_its_services_and_ends_quietly() {
    let marker = unique("up-pipe-marker");
    let _reaper = Reaper(marker.clone());
    let p = project(
        &marker,
        "[services.web]\ncommand = [\"sh\", \"-c\", \"while true; do echo tick; sleep 0.1; done\", \"MARKER\"]\n",
    );
    let (read, write) = std::io::pipe().expect("pipe");
    drop(read);
    let mut child = Command::new(bin("locald"))
        .arg("up")
        .arg(p.path())
        .env("LOCALD_JOURNAL_SOCKET", p.join("no-journal"))
        .stdin(Stdio::null())
        .stdout(write)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn locald up");
    let end = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > end {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGINT);
            let out = child.wait_with_output().expect("wait");
            panic!(
                "locald up kept running with its output gone:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        status.success(),
        "locald up ends with 0 when its reader is gone: {status:?}\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        pids_with(&marker).is_empty(),
        "the service was stopped, not left behind"
    );
}
