//! `journal-bench`: the journald flood benchmark's generator, its locald
//! stand-in, and its driver (see `run.sh` beside this file).
//!
//! - `generate N`: prints N numbered lines, as fast as the pipe takes them.
//! - `pipe-sink --socket S --project P --service NAME [--quiet NAME] -- CMD…`:
//!   runs CMD, reads its stdout line by line like locald's supervisor and
//!   awaits `JournalSink` per line; with `--quiet`, a second service writes a
//!   timestamped line every 50 ms through the same sink while the flood
//!   lasts. Prints a JSON summary (lines, seconds, sink stats, peak RSS).
//! - `daemon-log [auto|journal|stderr] --project P`: sets up locald's own
//!   log and logs one event (for the tests).
//! - `run [--lines N] [--rounds K] [--sd-send PATH] [--locald PATH]`: K
//!   rounds of: a private journald per case and floods it (a) through JournalSink (or, with
//!   `--locald`, through `locald up` of a one-service project), (b) through
//!   `sd_journal_sendv()` with the same fields, (c) through `systemd-cat`;
//!   counts every line in the journal and prints lines/s, the best of the
//!   rounds per case, and the ratios of the bests.

use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use locald::event::{LogLine, Phase, Stream};
use locald::journal::{JournalConfig, JournalSink};
use locald::output::LogSink;
use locald_tests::journald::Journald;
use tokio::io::AsyncBufReadExt as _;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("generate") => generate(&args[1..]),
        Some("pipe-sink") => pipe_sink(&args[1..]),
        Some("run") => run(&args[1..]),
        Some("daemon-log") => daemon_log(&args[1..]),
        _ => bail!("usage: journal-bench generate N | pipe-sink … -- CMD… | run [--lines N] [--sd-send PATH] [--locald PATH]"),
    }
}

/// Sets up locald's own logging as the daemon does and logs one event with
/// project and service fields; prints where it went (`journal` or
/// `stderr`). For the tests of `init_daemon_logging`.
fn daemon_log(args: &[String]) -> Result<()> {
    use locald::journal::{init_daemon_logging, LogOutput};
    let output = match args.first().map(String::as_str) {
        Some("stderr") => LogOutput::Stderr,
        Some("journal") => LogOutput::Journal,
        _ => LogOutput::Auto,
    };
    let project = flag(args, "--project").unwrap_or_default();
    let to_journal = init_daemon_logging(output, "info")?;
    tracing::warn!(project = %project, service = "web", "service web exited with status 1");
    println!("{}", if to_journal { "journal" } else { "stderr" });
    Ok(())
}

/// The one generator all cases share.
fn generate(args: &[String]) -> Result<()> {
    let n: u64 = args.first().context("generate N")?.parse()?;
    let out = std::io::stdout().lock();
    let mut w = BufWriter::with_capacity(64 * 1024, out);
    for i in 0..n {
        writeln!(
            w,
            "flood {i:07} the quick brown fox jumps over the lazy dog"
        )?;
    }
    w.flush()?;
    Ok(())
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Peak resident set size of this process, in KiB.
fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn pipe_sink(args: &[String]) -> Result<()> {
    let dash = args
        .iter()
        .position(|a| a == "--")
        .context("pipe-sink … -- CMD")?;
    let (opts, cmd) = (&args[..dash], &args[dash + 1..]);
    let socket = flag(opts, "--socket").context("--socket")?;
    let project: Arc<str> = flag(opts, "--project").context("--project")?.into();
    let service: Arc<str> = flag(opts, "--service").context("--service")?.into();
    let quiet: Option<Arc<str>> = flag(opts, "--quiet").map(Into::into);
    let program = cmd.first().context("a command after --")?.clone();
    let cmd_args: Vec<String> = cmd[1..].to_vec();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // The work runs in a spawned task, on a worker thread beside the I/O
    // driver, as the supervisor's reader tasks do (not on the block_on
    // thread, which would need a cross-thread wakeup for every wait).
    rt.block_on(async move {
        tokio::spawn(async move {
            let config = JournalConfig {
                socket_path: PathBuf::from(socket),
                ..JournalConfig::default()
            };
            let sink: Arc<dyn LogSink> = Arc::new(JournalSink::new(config));
            let start = Instant::now();
            let mut child = tokio::process::Command::new(&program)
                .args(&cmd_args)
                .stdout(Stdio::piped())
                .spawn()
                .with_context(|| format!("spawning {program}"))?;
            let pid = child.id();
            let stdout = child.stdout.take().context("child stdout")?;
            let (done_tx, done_rx) = tokio::sync::watch::channel(false);
            let quiet_task = quiet.map(|q| {
                let sink = Arc::clone(&sink);
                let project = Arc::clone(&project);
                tokio::spawn(async move {
                    let mut n = 0u64;
                    let mut tick = tokio::time::interval(Duration::from_millis(50));
                    while !*done_rx.borrow() {
                        tick.tick().await;
                        let line = LogLine {
                            project: Arc::clone(&project),
                            service: Arc::clone(&q),
                            phase: Phase::Run,
                            stream: Stream::Stdout,
                            pid: None,
                            build_id: None,
                            image: None,
                            line: format!("quiet {n} sent_us={}", now_us()).into_bytes(),
                            partial: false,
                            continues: false,
                        };
                        sink.write(&line).await;
                        n += 1;
                    }
                    n
                })
            });
            let mut reader = tokio::io::BufReader::with_capacity(64 * 1024, stdout);
            let mut buf = Vec::with_capacity(1024);
            let mut lines = 0u64;
            loop {
                buf.clear();
                if reader.read_until(b'\n', &mut buf).await? == 0 {
                    break;
                }
                let partial = buf.last() != Some(&b'\n');
                if !partial {
                    buf.pop();
                }
                let line = LogLine {
                    project: Arc::clone(&project),
                    service: Arc::clone(&service),
                    phase: Phase::Run,
                    stream: Stream::Stdout,
                    pid,
                    build_id: None,
                    image: None,
                    line: std::mem::take(&mut buf),
                    partial,
                    continues: false,
                };
                sink.write(&line).await;
                buf = line.line;
                lines += 1;
            }
            let status = child.wait().await?;
            let seconds = start.elapsed().as_secs_f64();
            let _ = done_tx.send(true);
            let quiet_lines = match quiet_task {
                Some(t) => t.await?,
                None => 0,
            };
            let summary = serde_json::json!({
                "lines": lines,
                "quiet_lines": quiet_lines,
                "seconds": seconds,
                "child_ok": status.success(),
                "vm_hwm_kib": vm_hwm_kib(),
            });
            println!("{summary}");
            anyhow::Ok(())
        })
        .await?
    })
}

struct Case {
    name: &'static str,
    round: usize,
    what: String,
    lines: usize,
    seconds: f64,
    /// CPU seconds of the client side (generator and sender, not journald).
    client_cpu: f64,
}

/// User and system CPU seconds of all waited-for children so far.
fn children_cpu() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_CHILDREN is valid and `ru` is a valid out pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn run(args: &[String]) -> Result<()> {
    let n: usize = flag(args, "--lines").map_or(Ok(1_000_000), |v| v.parse())?;
    let sd_send = flag(args, "--sd-send").map(PathBuf::from);
    let locald = flag(args, "--locald").map(PathBuf::from);
    let me = std::env::current_exe()?;
    let rounds: usize = flag(args, "--rounds").map_or(Ok(1), |v| v.parse())?;
    let mut cases = Vec::new();
    for round in 0..rounds {
        let tag = format!("bench{}r{round}", std::process::id());
        eprintln!("round {}/{rounds}", round + 1);
        run_round(
            n,
            round,
            &tag,
            &me,
            sd_send.as_deref(),
            locald.as_deref(),
            &mut cases,
        )?;
    }
    report(n, &cases)
}

/// One measurement of each case, each into a fresh journald.
fn run_round(
    n: usize,
    round: usize,
    tag: &str,
    me: &Path,
    sd_send: Option<&Path>,
    locald: Option<&Path>,
    cases: &mut Vec<Case>,
) -> Result<()> {
    // (a) through locald (or its journal writer) into journald.
    {
        let mut j = Journald::start()?;
        let service = format!("flood-{tag}");
        let matches = [("LOCALD_SERVICE", service.as_str())];
        let cpu0 = children_cpu();
        let t0 = Instant::now();
        let what = if let Some(locald) = locald {
            let dir = tempfile::tempdir()?;
            let proj = dir.path().join(format!("{tag}-a"));
            std::fs::create_dir(&proj)?;
            std::fs::write(
                proj.join("locald.toml"),
                format!(
                    "[services.{service}]\ncommand = \"{} generate {n}\"\n",
                    me.display()
                ),
            )?;
            let mut child = j
                .command_with_default_paths(locald)
                .arg("up")
                .arg(&proj)
                .stdout(Stdio::null())
                .spawn()?;
            let last = format!(
                "flood {:07} the quick brown fox jumps over the lazy dog",
                n - 1
            );
            wait_for_last(&j, &matches, &last, &mut child, Duration::from_secs(600))?;
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(child.id())?),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
            format!("locald up ({})", locald.display())
        } else {
            let out = Command::new(me)
                .args(["pipe-sink", "--socket"])
                .arg(j.socket())
                .args([
                    "--project",
                    &format!("{tag}-a"),
                    "--service",
                    &service,
                    "--",
                ])
                .arg(me)
                .args(["generate", &n.to_string()])
                .output()?;
            if !out.status.success() {
                bail!("pipe-sink failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            j.sync()?;
            format!(
                "JournalSink via a pipe (stand-in for locald), {}",
                String::from_utf8_lossy(&out.stdout).trim()
            )
        };
        let seconds = t0.elapsed().as_secs_f64();
        let lines = count_exact(&j, &matches, n)?;
        cases.push(Case {
            name: "a",
            round,
            client_cpu: children_cpu() - cpu0,
            what,
            lines,
            seconds,
        });
    }

    // (b) straight into journald with the same fields.
    if let Some(sd_send) = sd_send {
        let mut j = Journald::start()?;
        let service = format!("flood-{tag}-b");
        let cpu0 = children_cpu();
        let t0 = Instant::now();
        let status = j
            .command_with_default_paths("sh")
            .arg("-c")
            .arg(r#""$0" generate "$1" | "$2" "$3" "$4""#)
            .arg(me)
            .arg(n.to_string())
            .arg(sd_send)
            .arg(format!("{tag}-b"))
            .arg(&service)
            .status()?;
        if !status.success() {
            bail!("sd-send failed: {status}");
        }
        j.sync()?;
        let seconds = t0.elapsed().as_secs_f64();
        let lines = count_exact(&j, &[("LOCALD_SERVICE", service.as_str())], n)?;
        cases.push(Case {
            name: "b",
            round,
            client_cpu: children_cpu() - cpu0,
            what: "sd_journal_sendv(), same fields (journald's ceiling)".into(),
            lines,
            seconds,
        });
    } else {
        eprintln!("no --sd-send: skipping (b)");
    }

    // (c) systemd-cat: the stream protocol, no fields of ours.
    {
        let mut j = Journald::start()?;
        let ident = format!("flood-{tag}-c");
        let cpu0 = children_cpu();
        let t0 = Instant::now();
        let status = j
            .command_with_default_paths("systemd-cat")
            .args(["-t", &ident])
            .arg(me)
            .args(["generate", &n.to_string()])
            .status()?;
        if !status.success() {
            bail!("systemd-cat failed: {status}");
        }
        j.sync()?;
        let seconds = t0.elapsed().as_secs_f64();
        let lines = count_exact(&j, &[("SYSLOG_IDENTIFIER", ident.as_str())], n)?;
        cases.push(Case {
            name: "c",
            round,
            client_cpu: children_cpu() - cpu0,
            what: "systemd-cat (stream protocol)".into(),
            lines,
            seconds,
        });
    }

    Ok(())
}

/// Prints every measurement, then the best rate of each case (the least
/// disturbed by whatever else the machine is doing) and the ratios.
fn report(n: usize, cases: &[Case]) -> Result<()> {
    let rate = |c: &Case| c.lines as f64 / c.seconds;
    println!("journald flood benchmark: {n} lines per case");
    for c in cases {
        let valid = if c.lines == n {
            ""
        } else {
            "  INVALID: lines lost"
        };
        println!(
            "({}) {:>9.0} lines/s  {:>7} lines in {:>6.2} s  {}{valid}",
            c.name,
            rate(c),
            c.lines,
            c.seconds,
            c.what
        );
    }
    if cases.iter().any(|c| c.lines != n) {
        bail!("lines were lost: the rates above do not count");
    }
    let best = |name: &str| {
        cases
            .iter()
            .filter(|c| c.name == name)
            .map(rate)
            .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))))
    };
    for name in ["a", "b", "c"] {
        let cpu: Vec<f64> = cases
            .iter()
            .filter(|c| c.name == name)
            .map(|c| c.client_cpu / c.lines as f64 * 1e6)
            .collect();
        if let Some(r) = best(name) {
            let cpu = cpu.iter().sum::<f64>() / cpu.len() as f64;
            println!("best ({name}) {r:>9.0} lines/s   client CPU {cpu:.2} us/line");
        }
    }
    // Ratios of the same round (runs close in time) are less disturbed by
    // the machine's other load than ratios of bests.
    let paired = |x: &str, y: &str| {
        let mut v: Vec<f64> = cases
            .iter()
            .filter(|c| c.name == x)
            .filter_map(|cx| {
                let cy = cases.iter().find(|c| c.name == y && c.round == cx.round)?;
                Some(rate(cx) / rate(cy))
            })
            .collect();
        v.sort_by(f64::total_cmp);
        let median = v.get(v.len() / 2).copied();
        (v, median)
    };
    if let (Some(a), Some(b)) = (best("a"), best("b")) {
        let (v, median) = paired("a", "b");
        println!(
            "a/b = {:.2} (bests; target >= 0.9); per round {:.2?}, median {:.2}",
            a / b,
            v,
            median.unwrap_or(f64::NAN)
        );
    }
    if let (Some(a), Some(c)) = (best("a"), best("c")) {
        let (v, median) = paired("a", "c");
        println!(
            "a/c = {:.2} (bests); per round {:.2?}, median {:.2}",
            a / c,
            v,
            median.unwrap_or(f64::NAN)
        );
    }
    Ok(())
}

/// Counts the matching entries and checks each generated line is there once,
/// in order.
fn count_exact(j: &Journald, matches: &[(&str, &str)], n: usize) -> Result<usize> {
    let msgs = j.text_messages(matches)?;
    for (i, m) in msgs.iter().enumerate().take(n) {
        let want = format!("flood {i:07} the quick brown fox jumps over the lazy dog");
        if *m != want {
            eprintln!("entry {i}: {m:?}, expected {want:?}");
            break;
        }
    }
    Ok(msgs.len())
}

fn wait_for_last(
    j: &Journald,
    matches: &[(&str, &str)],
    last: &str,
    locald: &mut std::process::Child,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut c = Command::new("journalctl");
        c.arg(format!("--namespace={}", j.namespace()))
            .args(["-q", "--no-pager", "-o", "cat", "-n", "1"])
            .args(matches.iter().map(|(k, v)| format!("{k}={v}")));
        let out = c.output()?;
        if String::from_utf8_lossy(&out.stdout).trim_end() == last {
            return Ok(());
        }
        if let Some(status) = locald.try_wait()? {
            bail!("locald exited ({status}) before the last line arrived");
        }
        if Instant::now() > deadline {
            bail!("the last line did not arrive within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
