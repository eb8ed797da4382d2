//! The journald writer against a real, private systemd-journald: fields,
//! priorities, faithful bytes, long and partial lines, journald going away,
//! and a flood that must not starve a quiet service nor grow memory.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use locald::event::{LogLine, Phase, Stream};
use locald::journal::{JournalConfig, JournalSink, Priority, ServiceLogOptions};
use locald::output::LogSink;
use locald_tests::journald::{Entry, Journald};

/// A project name no other test run uses.
fn project(test: &str) -> String {
    format!("{test}-{}", std::process::id())
}

fn line(project: &str, service: &str, stream: Stream, text: &[u8]) -> LogLine {
    LogLine {
        project: project.into(),
        service: service.into(),
        phase: Phase::Run,
        stream,
        pid: Some(4242),
        build_id: None,
        image: None,
        line: text.to_vec(),
        partial: false,
        continues: false,
    }
}

type Notices = Arc<Mutex<Vec<String>>>;

fn sink_for(j: &Journald) -> (JournalSink, Notices) {
    let notices: Notices = Arc::default();
    let n = Arc::clone(&notices);
    let config = JournalConfig {
        socket_path: j.socket(),
        retry_interval: Duration::from_millis(200),
        ..JournalConfig::default()
    };
    let sink = JournalSink::with_notifier(
        config,
        Arc::new(move |m: &str| {
            n.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(m.to_owned())
        }),
    );
    (sink, notices)
}

fn rt() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

macro_rules! journald_or_skip {
    ($name:expr) => {
        match Journald::start_or_skip($name)? {
            Some(j) => j,
            None => return Ok(()),
        }
    };
}

fn one(entries: &[Entry]) -> Result<&Entry> {
    ensure!(entries.len() == 1, "expected one entry, got {entries:#?}");
    Ok(&entries[0])
}

#[test]
fn fields_say_whose_line_it_is() -> Result<()> {
    let j = journald_or_skip!("fields_say_whose_line_it_is");
    let p = project("fields");
    let (sink, _) = sink_for(&j);
    rt()?.block_on(async {
        sink.write(&line(&p, "web", Stream::Stdout, b"listening on :8080"))
            .await;
        sink.write(&line(&p, "web", Stream::Stderr, b"a warning on stderr"))
            .await;
        let mut build = line(&p, "web", Stream::Stdout, b"compiling web");
        build.phase = Phase::Build;
        build.build_id = Some("b-123".into());
        build.pid = Some(77);
        sink.write(&build).await;
    });
    let run = j.synced_query(&[
        ("LOCALD_PROJECT", &p),
        ("LOCALD_PHASE", "run"),
        ("LOCALD_STREAM", "stdout"),
    ])?;
    let e = one(&run)?;
    for (k, v) in [
        ("MESSAGE", "listening on :8080"),
        ("PRIORITY", "6"),
        ("SYSLOG_IDENTIFIER", "web"),
        ("LOCALD_PROJECT", p.as_str()),
        ("LOCALD_SERVICE", "web"),
        ("LOCALD_PHASE", "run"),
        ("LOCALD_STREAM", "stdout"),
        ("LOCALD_PID", "4242"),
        ("SYSLOG_PID", "4242"),
    ] {
        assert_eq!(e.field(k), v, "field {k} of {e:#?}");
    }
    assert_eq!(e.get("LOCALD_BUILD_ID"), None);
    assert_eq!(e.get("LOCALD_LINE_BREAK"), None);

    let err = j.query(&[("LOCALD_PROJECT", &p), ("LOCALD_STREAM", "stderr")])?;
    let e = one(&err)?;
    assert_eq!(e.field("MESSAGE"), "a warning on stderr");
    assert_eq!(
        e.field("PRIORITY"),
        "6",
        "stderr is info by default, as in systemd"
    );

    let build = j.query(&[("LOCALD_PROJECT", &p), ("LOCALD_PHASE", "build")])?;
    let e = one(&build)?;
    assert_eq!(e.field("MESSAGE"), "compiling web");
    assert_eq!(e.field("LOCALD_BUILD_ID"), "b-123");
    assert_eq!(e.field("LOCALD_PID"), "77");
    Ok(())
}

#[test]
fn level_prefix_sets_priority_and_is_stripped() -> Result<()> {
    let j = journald_or_skip!("level_prefix_sets_priority_and_is_stripped");
    let p = project("prio");
    let (sink, _) = sink_for(&j);
    sink.set_service_options(
        &p,
        "api",
        ServiceLogOptions {
            stderr_priority: Priority::WARNING,
        },
    );
    rt()?.block_on(async {
        for (stream, text) in [
            (Stream::Stdout, &b"<3>database is down"[..]),
            (Stream::Stdout, b"<9>not a level"),
            (Stream::Stdout, b"plain"),
            (Stream::Stderr, b"stderr default"),
            (Stream::Stderr, b"<7>stderr debug"),
        ] {
            sink.write(&line(&p, "api", stream, text)).await;
        }
    });
    let got: Vec<(String, String)> = j
        .synced_query(&[("LOCALD_PROJECT", &p)])?
        .iter()
        .map(|e| (e.field("PRIORITY"), e.field("MESSAGE")))
        .collect();
    let want: Vec<(String, String)> = [
        ("3", "database is down"),
        ("6", "<9>not a level"),
        ("6", "plain"),
        ("4", "stderr default"),
        ("7", "stderr debug"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(got, want);
    Ok(())
}

#[test]
fn order_within_each_stream_is_kept() -> Result<()> {
    let j = journald_or_skip!("order_within_each_stream_is_kept");
    let p = project("order");
    let (sink, _) = sink_for(&j);
    let sink: Arc<dyn LogSink> = Arc::new(sink);
    const N: usize = 3000;
    rt()?.block_on(async {
        let tasks: Vec<_> = [Stream::Stdout, Stream::Stderr]
            .into_iter()
            .map(|stream| {
                let sink = Arc::clone(&sink);
                let p = p.clone();
                tokio::spawn(async move {
                    for i in 0..N {
                        let text = format!("{} {i}", stream.as_str());
                        sink.write(&line(&p, "svc", stream, text.as_bytes())).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await?;
        }
        anyhow::Ok(())
    })?;
    j.sync()?;
    for stream in ["stdout", "stderr"] {
        let got = j.text_messages(&[("LOCALD_PROJECT", &p), ("LOCALD_STREAM", stream)])?;
        let want: Vec<String> = (0..N).map(|i| format!("{stream} {i}")).collect();
        assert!(
            got == want,
            "{stream}: {} entries, first difference at {:?}",
            got.len(),
            got.iter().zip(&want).position(|(a, b)| a != b)
        );
    }
    Ok(())
}

#[test]
fn any_bytes_and_ansi_colours_survive_byte_exact() -> Result<()> {
    let j = journald_or_skip!("any_bytes_and_ansi_colours_survive_byte_exact");
    let p = project("bytes");
    let (sink, _) = sink_for(&j);
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let latin1 = b"caf\xe9 \xff\xfe not utf-8".to_vec();
    let ansi = b"\x1b[1;31merror:\x1b[0m red and bold".to_vec();
    let cases = [all_bytes, latin1, ansi, "ünïcödé ✓".as_bytes().to_vec()];
    rt()?.block_on(async {
        for c in &cases {
            sink.write(&line(&p, "bin", Stream::Stdout, c)).await;
        }
    });
    let got: Vec<Vec<u8>> = j
        .synced_query(&[("LOCALD_PROJECT", &p)])?
        .iter()
        .map(|e| e.bytes("MESSAGE").unwrap_or_default())
        .collect();
    assert_eq!(got, cases);
    Ok(())
}

#[test]
fn a_200_kib_line_is_split_marked_and_reassembles() -> Result<()> {
    let j = journald_or_skip!("a_200_kib_line_is_split_marked_and_reassembles");
    let p = project("long");
    let (sink, _) = sink_for(&j);
    // Text with multi-byte characters (so cuts must respect them) and a
    // few raw bytes.
    let mut big: Vec<u8> = "0123456789abcdefé€"
        .bytes()
        .cycle()
        .take(200 * 1024)
        .collect();
    big[1000] = 0xff;
    rt()?.block_on(sink.write(&line(&p, "long", Stream::Stdout, &big)));
    let entries = j.synced_query(&[("LOCALD_PROJECT", &p)])?;
    assert_eq!(entries.len(), 5, "200 KiB in pieces of at most 48 KiB");
    let breaks: Vec<Option<String>> = entries.iter().map(|e| e.get("LOCALD_LINE_BREAK")).collect();
    let mut want = vec![Some("line-max".to_owned()); 4];
    want.push(None);
    assert_eq!(breaks, want);
    let mut joined = Vec::new();
    for e in &entries {
        let piece = e.bytes("MESSAGE").context("MESSAGE")?;
        assert!(piece.len() <= 48 * 1024);
        joined.extend_from_slice(&piece);
    }
    assert!(joined == big, "reassembled line differs");
    assert_eq!(sink.stats().split_lines, 1);
    Ok(())
}

#[test]
fn an_entry_too_big_for_a_datagram_goes_through_a_memfd() -> Result<()> {
    let j = journald_or_skip!("an_entry_too_big_for_a_datagram_goes_through_a_memfd");
    let p = project("memfd");
    let config = JournalConfig {
        socket_path: j.socket(),
        line_max: 32 * 1024 * 1024,
        ..JournalConfig::default()
    };
    let sink = JournalSink::new(config);
    // Over the 8 MiB send buffer: the datagram fails with EMSGSIZE.
    let big: Vec<u8> = b"memfd "
        .iter()
        .copied()
        .cycle()
        .take(9 * 1024 * 1024)
        .collect();
    rt()?.block_on(sink.write(&line(&p, "m", Stream::Stdout, &big)));
    let e = j.synced_query(&[("LOCALD_PROJECT", &p)])?;
    let e = one(&e)?;
    assert!(
        e.bytes("MESSAGE").as_deref() == Some(&big[..]),
        "9 MiB message differs"
    );
    let stats = sink.stats();
    assert_eq!(
        (stats.memfd_entries, stats.undelivered_lines),
        (1, 0),
        "{stats:?}"
    );
    Ok(())
}

#[test]
fn a_partial_last_line_is_kept_and_marked() -> Result<()> {
    let j = journald_or_skip!("a_partial_last_line_is_kept_and_marked");
    let p = project("partial");
    let (sink, _) = sink_for(&j);
    let mut l = line(&p, "p", Stream::Stdout, b"no newline at the end");
    l.partial = true;
    rt()?.block_on(sink.write(&l));
    let e = j.synced_query(&[("LOCALD_PROJECT", &p)])?;
    let e = one(&e)?;
    assert_eq!(e.field("MESSAGE"), "no newline at the end");
    assert_eq!(e.field("LOCALD_LINE_BREAK"), "partial");
    Ok(())
}

#[test]
fn journald_stopped_mid_run_is_reported_once_and_nothing_hangs() -> Result<()> {
    let mut j = journald_or_skip!("journald_stopped_mid_run_is_reported_once_and_nothing_hangs");
    let p = project("gone");
    let (sink, notices) = sink_for(&j);
    let sink = Arc::new(sink);
    let rt = rt()?;
    // A writer flooding while journald goes away, so that it is likely to
    // be waiting for room in journald's queue at that moment.
    let flood = {
        let sink = Arc::clone(&sink);
        let p = p.clone();
        rt.spawn(async move {
            for i in 0..300_000u32 {
                sink.write(&line(
                    &p,
                    "loud",
                    Stream::Stdout,
                    format!("loud {i}").as_bytes(),
                ))
                .await;
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    j.stop()?;
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), flood)
            .await
            .context("the writer hung after journald stopped")??;
        // A quiet service is not held up either.
        tokio::time::timeout(
            Duration::from_secs(1),
            sink.write(&line(&p, "quiet", Stream::Stdout, b"while gone")),
        )
        .await
        .context("a write while journald is gone hung")?;
        anyhow::Ok(())
    })?;
    let stats = sink.stats();
    let gone: Vec<String> = notices.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(gone.len(), 1, "reported once: {gone:#?}");
    assert!(gone[0].contains("not reachable"), "{gone:#?}");
    assert_eq!(stats.outages, 1);
    assert!(stats.undelivered_lines > 0, "{stats:?}");

    // Back: after the retry interval, lines flow again and the loss is told.
    j.restart()?;
    std::thread::sleep(Duration::from_millis(300));
    rt.block_on(sink.write(&line(&p, "quiet", Stream::Stdout, b"back again")));
    let back = j.synced_query(&[("LOCALD_PROJECT", &p), ("MESSAGE", "back again")])?;
    one(&back)?;
    let notices = notices.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(notices.len(), 2, "{notices:#?}");
    let lost = stats.undelivered_lines;
    assert!(
        notices[1].contains(&format!("{lost} lines could not be written")),
        "{notices:#?} vs {stats:?}"
    );
    // Every line is accounted for: sent, or counted as undelivered.
    let stats = sink.stats();
    assert_eq!(stats.entries + stats.undelivered_lines, stats.lines);
    Ok(())
}

/// A million lines from one service, read from a real pipe as locald's
/// supervisor does (by `journal-bench pipe-sink`), all arrive in order;
/// a second, quiet service writing every 50 ms through the same writer
/// gets each line in within a second; the process's peak RSS stays under
/// `RSS_BOUND_KIB`.
#[test]
fn a_flood_arrives_whole_and_does_not_stall_a_quiet_service() -> Result<()> {
    /// The writer keeps at most one entry (≤ 49 KiB) per pipe in flight and
    /// no queue; the rest is the runtime and the pipe reader's buffer.
    const RSS_BOUND_KIB: u64 = 16 * 1024;
    const N: usize = 1_000_000;
    let j = journald_or_skip!("a_flood_arrives_whole_and_does_not_stall_a_quiet_service");
    let p = project("flood");
    let bench = env!("CARGO_BIN_EXE_journal-bench");
    let out = std::process::Command::new(bench)
        .arg("pipe-sink")
        .arg("--socket")
        .arg(j.socket())
        .args([
            "--project",
            &p,
            "--service",
            "loud",
            "--quiet",
            "quiet",
            "--",
        ])
        .args([bench, "generate", &N.to_string()])
        .output()?;
    ensure!(
        out.status.success(),
        "pipe-sink: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    eprintln!("pipe-sink: {summary}");
    j.sync()?;

    let loud = j.text_messages(&[("LOCALD_PROJECT", &p), ("LOCALD_SERVICE", "loud")])?;
    assert_eq!(loud.len(), N, "every line of the flood arrives");
    if let Some(i) = (0..N)
        .find(|&i| loud[i] != format!("flood {i:07} the quick brown fox jumps over the lazy dog"))
    {
        panic!("flood line {i} out of order: {:?}", loud[i]);
    }

    let quiet = j.query(&[("LOCALD_PROJECT", &p), ("LOCALD_SERVICE", "quiet")])?;
    let sent = summary["quiet_lines"].as_u64().unwrap_or(0);
    assert!(
        sent >= 10,
        "the flood lasted long enough to test the quiet service: {summary}"
    );
    assert_eq!(quiet.len() as u64, sent);
    let mut worst = 0u64;
    for e in &quiet {
        let msg = e.field("MESSAGE");
        let sent_us: u64 = msg
            .rsplit("sent_us=")
            .next()
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad quiet line {msg:?}"))?;
        let got_us = e.received_us().context("__REALTIME_TIMESTAMP")?;
        worst = worst.max(got_us.saturating_sub(sent_us));
    }
    eprintln!(
        "quiet service: {} lines, worst delay {} ms",
        quiet.len(),
        worst / 1000
    );
    assert!(
        worst < 1_000_000,
        "a quiet line took {} ms to arrive",
        worst / 1000
    );

    let hwm = summary["vm_hwm_kib"].as_u64().unwrap_or(u64::MAX);
    assert!(
        hwm < RSS_BOUND_KIB,
        "peak RSS {hwm} KiB over the {RSS_BOUND_KIB} KiB bound"
    );
    Ok(())
}

/// The daemon's own log goes to the journal through tracing-journald, with
/// its fields under the `LOCALD_` prefix, and to stderr when asked.
#[test]
fn the_daemons_own_log_goes_to_the_journal_with_its_fields() -> Result<()> {
    let mut j = journald_or_skip!("the_daemons_own_log_goes_to_the_journal_with_its_fields");
    let p = project("daemonlog");
    let bench = env!("CARGO_BIN_EXE_journal-bench");
    let out = j
        .command_with_default_paths(bench)
        .args(["daemon-log", "auto", "--project", &p])
        .env_remove("JOURNAL_STREAM")
        .output()?;
    ensure!(
        out.status.success(),
        "daemon-log: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "journal");
    let e = j.synced_query(&[("LOCALD_PROJECT", &p)])?;
    let e = one(&e)?;
    assert_eq!(e.field("MESSAGE"), "service web exited with status 1");
    assert_eq!(e.field("SYSLOG_IDENTIFIER"), "locald");
    assert_eq!(e.field("LOCALD_SERVICE"), "web");
    assert_eq!(e.field("PRIORITY"), "4");

    let out = std::process::Command::new(bench)
        .args(["daemon-log", "stderr", "--project", &p])
        .output()?;
    ensure!(
        out.status.success(),
        "daemon-log: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "stderr");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("service web exited with status 1") && err.contains(&p),
        "{err}"
    );
    Ok(())
}
