//! `journal-units-bench`: the journald flood through a service that runs as
//! a systemd transient unit (issue 12), in a real systemd user manager booted
//! with systemd-nspawn (see `run.sh` beside this file).
//!
//! In one container, each round floods the container's journald with the
//! same N-line generator (`journal-bench generate N`):
//!   (u) as a locald service run as a unit: the unit's output forwarder
//!       writes each line with locald's fields; the daemon copies nothing;
//!   (h) as the same service with `runtime = "host"`: the daemon's copying
//!       path (a pipe into locald, locald into journald);
//!   (b) through `sd_journal_sendv()` with the same fields (`sd_send.c`,
//!       with `--sd-send PATH`): journald's own ceiling for such entries;
//!   (c) through `systemd-cat` (stream protocol, no fields of ours).
//! Each case ends when the last process of it has exited and
//! `journalctl --sync` returned; then every line is counted. Prints lines/s,
//! the ratios u/c (the target: >= 0.9) and u/b, and the daemon's own CPU time (utime +
//! stime of `locald daemon`) during (u) against (h) (target: under 5 %).
//! Needs root (it boots a container).
//!
//!   journal-units-bench [--lines N] [--rounds K] [--sd-send PATH]

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use locald_tests::nspawn::{self, Container, HOME};
use locald_tests::pids_with;

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: u64 = flag(&args, "--lines").map_or(Ok(1_000_000), |v| v.parse())?;
    let rounds: usize = flag(&args, "--rounds").map_or(Ok(2), |v| v.parse())?;
    let sd_send = flag(&args, "--sd-send").map(std::path::PathBuf::from);
    if let Err(why) = nspawn::available() {
        bail!("cannot boot a systemd container: {why}");
    }
    let marker = locald_tests::unique("unitbench");
    let c = Container::boot(|root| prepare(root, n, &marker, sd_send.as_deref()));
    let cases: &[char] = if sd_send.is_some() {
        &['u', 'h', 'b', 'c']
    } else {
        &['u', 'h', 'c']
    };
    let reload = c.user(HOME, "systemctl --user daemon-reload");
    if !reload.status.success() {
        bail!("daemon-reload: {reload:?}");
    }
    // Starts the daemon (D-Bus activation) before anything is timed; the
    // project is not up yet, which is all this says.
    let _ = c.user(&format!("{HOME}/u0"), "locald-ctl status");
    let mut rows: Vec<(char, usize, f64, f64)> = Vec::new();
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        for &case in cases {
            let (secs, cpu) = run_case(&c, case, round, n, &marker)?;
            let tag = format!("{case}{round}");
            let lines = count(&c, case, &tag)?;
            if lines != n {
                bail!("({case}) round {round}: {lines} of {n} lines in the journal");
            }
            println!(
                "({case}) {:>9.0} lines/s  {n} lines in {secs:>6.2} s  daemon CPU {cpu:>6.2} s  {}",
                n as f64 / secs,
                describe(case)
            );
            rows.push((case, round, secs, cpu));
        }
    }
    let best = |case: char| {
        rows.iter()
            .filter(|r| r.0 == case)
            .map(|r| n as f64 / r.2)
            .fold(0.0, f64::max)
    };
    let cpu = |case: char| {
        let v: Vec<f64> = rows.iter().filter(|r| r.0 == case).map(|r| r.3).collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let per_round: Vec<String> = (0..rounds)
        .filter_map(|r| {
            let u = rows.iter().find(|x| x.0 == 'u' && x.1 == r)?;
            let c = rows.iter().find(|x| x.0 == 'c' && x.1 == r)?;
            Some(format!("{:.2}", c.2 / u.2))
        })
        .collect();
    println!(
        "u/c = {:.2} (bests; target >= 0.9); per round [{}]",
        best('u') / best('c'),
        per_round.join(", ")
    );
    println!(
        "h/c = {:.2} (the copying path, for comparison)",
        best('h') / best('c')
    );
    if sd_send.is_some() {
        println!(
            "u/b = {:.2} (against journald's ceiling for entries with the same fields)",
            best('u') / best('b')
        );
    }
    println!(
        "daemon CPU during the flood: unit {:.3} s vs host {:.3} s = {:.1} % (target < 5 %)",
        cpu('u'),
        cpu('h'),
        100.0 * cpu('u') / cpu('h').max(1e-9)
    );
    Ok(())
}

fn describe(case: char) -> &'static str {
    match case {
        'u' => "service as a systemd unit (forwarder, locald's fields)",
        'h' => "service on the host runtime (copied through the daemon)",
        'b' => "sd_journal_sendv(), same fields (journald's ceiling)",
        _ => "systemd-cat (stream protocol, no fields)",
    }
}

/// The container's journald keeps everything (no rate limit, no vacuuming
/// during a run); one project per case and round.
fn prepare(root: &Path, n: u64, marker: &str, sd_send: Option<&Path>) {
    nspawn::install_locald(root);
    let home = root.join(HOME.trim_start_matches('/'));
    if let Some(p) = sd_send {
        std::fs::copy(p, home.join(".cargo/bin/sd-send")).expect("copy sd-send");
    }
    std::fs::copy(
        locald_tests::bin("journal-bench"),
        home.join(".cargo/bin/journal-bench"),
    )
    .expect("copy journal-bench");
    let conf = root.join("etc/systemd/journald.conf.d");
    std::fs::create_dir_all(&conf).expect("journald.conf.d");
    std::fs::write(
        conf.join("bench.conf"),
        "[Journal]\nRateLimitIntervalSec=0\nSystemMaxUse=8G\nSystemKeepFree=0\nRuntimeMaxUse=8G\nRuntimeKeepFree=0\n",
    )
    .expect("journald.conf");
    for round in 0..8 {
        for (case, runtime) in [('u', ""), ('h', "runtime = \"host\"\n")] {
            let dir = home.join(format!("{case}{round}"));
            std::fs::create_dir_all(&dir).expect("project dir");
            std::fs::write(
                dir.join("locald.toml"),
                format!(
                    "[project]\nname = \"{case}{round}\"\n{runtime}\n[services.gen]\ncommand = [\"{HOME}/.cargo/bin/journal-bench\", \"generate\", \"{n}\", \"{marker}\"]\nrestart = \"never\"\n"
                ),
            )
            .expect("locald.toml");
        }
    }
    std::fs::create_dir_all(home.join("u0")).ok();
    nspawn::give_home_to_user(root);
}

/// utime + stime of the `locald daemon` process, seconds.
fn daemon_cpu(c: &Container) -> Result<f64> {
    let pid = c.show("locald", "MainPID");
    // The pid is the container's: read its /proc there.
    let out = c.root(&["cat", &format!("/proc/{pid}/stat")]);
    if !out.status.success() {
        bail!("no stat for the daemon (pid {pid}): {out:?}");
    }
    let stat = String::from_utf8_lossy(&out.stdout).into_owned();
    let rest = &stat[stat.rfind(')').context("stat")? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    Ok(ticks / hz)
}

fn run_case(c: &Container, case: char, round: usize, n: u64, marker: &str) -> Result<(f64, f64)> {
    let tag = format!("{case}{round}");
    let cpu0 = daemon_cpu(c)?;
    let t0 = Instant::now();
    match case {
        'b' => {
            let out = c.user(
                HOME,
                &format!("journal-bench generate {n} {marker} | sd-send {tag} gen"),
            );
            if !out.status.success() {
                bail!("sd-send: {out:?}");
            }
        }
        'c' => {
            let out = c.user(
                HOME,
                &format!("systemd-cat -t flood-{tag} journal-bench generate {n} {marker}"),
            );
            if !out.status.success() {
                bail!("systemd-cat: {out:?}");
            }
        }
        _ => {
            let out = c.user(&format!("{HOME}/{tag}"), "locald-ctl up");
            if !out.status.success() {
                bail!("locald-ctl up: {out:?}");
            }
            // Started, then every process of it (generator, forwarder) gone.
            let end = Instant::now() + Duration::from_secs(600);
            let mut seen = false;
            loop {
                let running = !pids_with(marker).is_empty();
                seen |= running;
                if seen && !running {
                    break;
                }
                if Instant::now() > end {
                    bail!("({case}) did not finish");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    let sync = c.root(&["journalctl", "--sync"]);
    if !sync.status.success() {
        bail!("journalctl --sync: {sync:?}");
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = daemon_cpu(c)? - cpu0;
    if matches!(case, 'u' | 'h') {
        let down = c.user(&format!("{HOME}/{tag}"), "locald-ctl down");
        if !down.status.success() {
            bail!("locald-ctl down: {down:?}");
        }
    }
    Ok((secs, cpu))
}

/// Lines of the case in the journal.
fn count(c: &Container, case: char, tag: &str) -> Result<u64> {
    let m = match case {
        'c' => format!("SYSLOG_IDENTIFIER=flood-{tag}"),
        'b' => format!("LOCALD_PROJECT={tag}"),
        _ => format!("LOCALD_PROJECT={tag}"),
    };
    let out = c.root(&[
        "sh",
        "-c",
        &format!("journalctl -q -o cat {m} | grep -c '^flood '"),
    ]);
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}
