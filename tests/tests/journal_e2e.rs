//! Output of real builds and services, through `locald up`, into a private
//! journald: every line with its project, service, phase, stream and
//! priority; faithful bytes; build decisions as fields; a flood of a million
//! lines that all arrive while a quiet service keeps flowing and locald's
//! memory stays bounded.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use locald_tests::journald::Journald;
use locald_tests::{bin, unique, TestProject};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn up(j: &Journald, p: &TestProject) -> Result<Child> {
    Ok(std::process::Command::new(bin("locald"))
        .arg("up")
        .arg(p.path())
        .env("LOCALD_JOURNAL_SOCKET", j.socket())
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?)
}

fn stop(child: Child) -> Result<String> {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT)?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "locald up failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

macro_rules! journald_or_skip {
    ($name:expr) => {
        match Journald::start_or_skip($name)? {
            Some(j) => j,
            None => return Ok(()),
        }
    };
}

#[test]
fn build_and_run_lines_carry_their_fields() -> Result<()> {
    let j = journald_or_skip!("build_and_run_lines_carry_their_fields");
    let project = unique("jfields");
    let p = TestProject::new(&format!(
        r#"[project]
name = "{project}"

[services.web]
build = "echo build-out; echo build-err >&2"
command = ["python3", "-c", '''
import sys, time
for i in range(3):
    print(f'out {{i}}', flush=True)
    print(f'err {{i}}', file=sys.stderr, flush=True)
print('<3>something broke', flush=True)
sys.stdout.buffer.write(b'bin \xff\xfe \x1b[31mred\x1b[0m\n' + b'x' * 200 * 1024 + b'\nno newline at the end')
sys.stdout.flush()
import os; os.close(1)
time.sleep(100)
''']
stderr_priority = "warning"
"#
    ));
    let child = up(&j, &p)?;
    let base = [
        ("LOCALD_PROJECT", project.as_str()),
        ("LOCALD_SERVICE", "web"),
    ];
    let want = |extra: &[(&'static str, &'static str)]| -> Vec<(&str, &str)> {
        base.iter().copied().chain(extra.iter().copied()).collect()
    };
    let stdout = want(&[("LOCALD_PHASE", "run"), ("LOCALD_STREAM", "stdout")]);
    let deadline = Instant::now() + Duration::from_secs(20);
    // journalctl -o json, not the text helpers: some lines are not UTF-8.
    // The partial last line is the last one the service prints.
    while !j
        .synced_query(&stdout)?
        .iter()
        .any(|e| e.get("LOCALD_LINE_BREAK").as_deref() == Some("partial"))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    stop(child)?;
    j.sync()?;

    let build = j.query(&want(&[("LOCALD_PHASE", "build")]))?;
    let msgs: Vec<String> = build.iter().map(|e| e.field("MESSAGE")).collect();
    ensure!(
        msgs.contains(&"build-out".to_owned()) && msgs.contains(&"build-err".to_owned()),
        "{msgs:?}"
    );
    let ids: std::collections::BTreeSet<String> =
        build.iter().map(|e| e.field("LOCALD_BUILD_ID")).collect();
    ensure!(
        ids.len() == 1 && !ids.iter().any(String::is_empty),
        "one build id on every build line: {ids:?}"
    );
    let decision = build
        .iter()
        .find(|e| e.get("LOCALD_BUILD_DECISION").is_some())
        .context("decision entry")?;
    ensure!(
        decision.field("LOCALD_BUILD_DECISION").contains("every up"),
        "{decision:?}"
    );
    ensure!(build
        .iter()
        .any(|e| e.get("LOCALD_BUILD_RESULT").as_deref() == Some("succeeded")));
    let err = build
        .iter()
        .find(|e| e.field("MESSAGE") == "build-err")
        .context("build-err")?;
    ensure!(err.field("LOCALD_STREAM") == "stderr");

    let run_err = j.query(&want(&[
        ("LOCALD_PHASE", "run"),
        ("LOCALD_STREAM", "stderr"),
    ]))?;
    let texts: Vec<String> = run_err.iter().map(|e| e.field("MESSAGE")).collect();
    ensure!(
        texts == ["err 0", "err 1", "err 2"],
        "order kept: {texts:?}"
    );
    ensure!(
        run_err.iter().all(|e| e.field("PRIORITY") == "4"),
        "stderr_priority applies"
    );
    ensure!(run_err
        .iter()
        .all(|e| !e.field("LOCALD_PID").is_empty() && e.field("SYSLOG_IDENTIFIER") == "web"));

    let out = j.query(&want(&[
        ("LOCALD_PHASE", "run"),
        ("LOCALD_STREAM", "stdout"),
    ]))?;
    let texts: Vec<String> = out.iter().take(4).map(|e| e.field("MESSAGE")).collect();
    ensure!(
        texts == ["out 0", "out 1", "out 2", "something broke"],
        "{texts:?}"
    );
    ensure!(out[3].field("PRIORITY") == "3", "<3> prefix is an error");
    ensure!(out[0].field("PRIORITY") == "6");
    let bin = out[4].bytes("MESSAGE").context("binary line")?;
    ensure!(
        bin == b"bin \xff\xfe \x1b[31mred\x1b[0m",
        "bytes kept: {bin:?}"
    );
    let long: Vec<u8> = out[5..out.len() - 1]
        .iter()
        .flat_map(|e| e.bytes("MESSAGE").unwrap_or_default())
        .collect();
    ensure!(
        long == vec![b'x'; 200 * 1024],
        "200 KiB line reassembles ({} bytes)",
        long.len()
    );
    let last = out.last().context("last line")?;
    ensure!(
        last.field("MESSAGE") == "no newline at the end"
            && last.field("LOCALD_LINE_BREAK") == "partial"
    );
    Ok(())
}

fn rss_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The bound stated in docs/logging.md.
const RSS_BOUND_KIB: u64 = 32 * 1024;

#[test]
fn a_million_line_flood_all_arrives_and_a_quiet_service_keeps_flowing() -> Result<()> {
    let j = journald_or_skip!("a_million_line_flood_all_arrives");
    let project = unique("jflood");
    let p = TestProject::new(&format!(
        r#"[project]
name = "{project}"

[services.flood]
command = ["python3", "-c", "import sys\nw = sys.stdout.write\nfor i in range(1000000): w(f'line {{i}}\\n')\nsys.stdout.flush()\nimport time; time.sleep(100)"]

[services.quiet]
command = ["python3", "-c", "import time\nfor i in range(100000):\n    print(f'tick {{time.time()}}', flush=True); time.sleep(0.2)"]
"#
    ));
    let child = up(&j, &p)?;
    let pid = child.id();
    let flood = [
        ("LOCALD_PROJECT", project.as_str()),
        ("LOCALD_SERVICE", "flood"),
    ];
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut n = 0;
    while Instant::now() < deadline {
        n = j.wait_for_count(&flood, 1_000_000, Duration::from_secs(5))?;
        if n >= 1_000_000 {
            break;
        }
    }
    let rss = rss_hwm_kib(pid);
    let quiet = j.query(&[
        ("LOCALD_PROJECT", project.as_str()),
        ("LOCALD_SERVICE", "quiet"),
    ])?;
    stop(child)?;
    ensure!(n == 1_000_000, "all flood lines arrived: {n}");
    ensure!(
        rss > 0 && rss < RSS_BOUND_KIB,
        "locald peak RSS {rss} KiB, bound {RSS_BOUND_KIB} KiB"
    );
    // Each tick carries the time it was printed; the journal says when it arrived.
    let mut worst = 0f64;
    for e in &quiet {
        let printed: f64 = e
            .field("MESSAGE")
            .trim_start_matches("tick ")
            .parse()
            .unwrap_or(0.0);
        let received = e.received_us().unwrap_or(0) as f64 / 1e6;
        worst = worst.max(received - printed);
    }
    ensure!(
        quiet.len() >= 5,
        "the quiet service kept writing during the flood: {} lines",
        quiet.len()
    );
    ensure!(worst < 1.0, "a quiet line took {worst:.3} s to arrive");
    eprintln!(
        "flood: {n} lines, locald peak RSS {rss} KiB, worst quiet delay {:.0} ms",
        worst * 1000.0
    );
    Ok(())
}

#[test]
fn locald_ctl_logs_reads_the_journal_by_field() -> Result<()> {
    let j = journald_or_skip!("locald_ctl_logs_reads_the_journal_by_field");
    let project = unique("jlogs");
    let p = TestProject::new(&format!(
        "[project]\nname = \"{project}\"\n\n[services.web]\nbuild = \"echo compiled\"\ncommand = \"echo hello; echo oops >&2; touch done; exec sleep 100\"\n\n[services.db]\ncommand = \"echo db ready; for i in 1 2 3 4 5 6; do echo n$i; done; exec sleep 100\"\n"
    ));
    let child = up(&j, &p)?;
    let q = [("LOCALD_PROJECT", project.as_str())];
    let deadline = Instant::now() + Duration::from_secs(20);
    while j.synced_query(&q)?.len() < 10 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop(child)?;
    let ns = j.namespace().to_owned();
    let ctl = |args: &[&str]| -> Result<String> {
        let out = std::process::Command::new(bin("locald-ctl"))
            .arg("logs")
            .args(args)
            .current_dir(p.path())
            .env("LOCALD_JOURNAL_NAMESPACE", &ns)
            .env("NO_COLOR", "1")
            .output()?;
        ensure!(
            out.status.success(),
            "locald-ctl logs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let all = ctl(&[])?;
    for want in [
        "web:build | compiled",
        "      web | hello",
        "      web | oops",
        "       db | db ready",
    ] {
        ensure!(all.contains(want), "`{want}` in:\n{all}");
    }
    let build = ctl(&["web", "--phase", "build"])?;
    ensure!(
        build.contains("web:build | compiled") && !build.contains("hello"),
        "{build}"
    );
    let run = ctl(&["web", "--phase", "run", "-n", "1"])?;
    ensure!(run.lines().count() == 1, "{run}");
    // As docs/logging.md says: a time written as "-10m", and -n is the
    // *last* N of the range (journalctl alone gives the first N).
    let last = ctl(&["db", "--since", "-10m", "-n", "2"])?;
    ensure!(
        last.lines().map(str::trim).collect::<Vec<_>>() == ["db | n5", "db | n6"],
        "{last}"
    );
    let none = ctl(&["db", "--since", "-10m", "--until", "-5m"])?;
    ensure!(none.is_empty(), "{none}");
    let json = ctl(&["db", "--json"])?;
    let first: serde_json::Value = serde_json::from_str(json.lines().next().context("a line")?)?;
    ensure!(
        first["LOCALD_SERVICE"] == "db" && first["LOCALD_PROJECT"] == project.as_str(),
        "{first}"
    );
    Ok(())
}

/// journald dies under a running `locald up`: the service keeps running
/// (its pipe never blocks on a dead journal) and locald says so once.
#[test]
fn journald_gone_mid_run_is_reported_once_and_the_service_keeps_running() -> Result<()> {
    let mut j = journald_or_skip!("journald_gone_mid_run");
    let project = unique("jgone");
    let p = TestProject::new(&format!(
        "[project]\nname = \"{project}\"\n\n[services.ticker]\ncommand = [\"python3\", \"-c\", \"import os, time\\nfor i in range(100000):\\n    print(i, flush=True); open('count.new', 'w').write(str(i)); os.replace('count.new', 'count'); time.sleep(0.02)\"]\n"
    ));
    let child = up(&j, &p)?;
    let q = [("LOCALD_PROJECT", project.as_str())];
    let deadline = Instant::now() + Duration::from_secs(20);
    while j.synced_query(&q)?.len() < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure!(
        !j.synced_query(&q)?.is_empty(),
        "lines reached the journal before it stopped"
    );
    j.stop()?;
    // Written by rename, so a read never sees it half-written (a read
    // between a truncate and the write once gave 0 here).
    let count = || p.read("count").parse::<u64>().unwrap_or(0);
    std::thread::sleep(Duration::from_millis(500));
    let before = count();
    std::thread::sleep(Duration::from_secs(2));
    let after = count();
    ensure!(
        after > before + 20,
        "the service kept printing with journald gone: {before} -> {after}"
    );
    let stderr = stop(child)?;
    let reports = stderr.matches("journald is not reachable").count();
    ensure!(reports == 1, "said once, not {reports} times:\n{stderr}");
    Ok(())
}
