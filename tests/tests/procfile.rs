//! Procfile projects on real processes and sockets: a directory with only a
//! foreman-style `Procfile` runs with `locald up` and `locald-ctl up`, each
//! process type with its own `$PORT`; a `locald.toml` service without
//! `command` runs the `Procfile` entry of its name; `locald check` reports a
//! bad Procfile line with its number.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use locald_tests::dbus::{ctl, have_dbus_daemon, status_json, wait_states, Daemon, TestBus};
use locald_tests::{bin, require, unique};
use locald_tests::{wait_until, Reaper};
use nix::sys::signal::Signal;

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

/// A directory named like a unique project holding `files`.
fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(&unique("procfile"))
        .tempdir()
        .expect("tempdir");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write");
    }
    dir
}

/// `web` serves HTTP on `$PORT`; `worker` records its own `$PORT` and `.env`.
fn foreman_style(marker: &str) -> String {
    format!(
        "# a foreman Procfile\n\
         web: echo $PORT > web.port; exec python3 -m http.server $PORT --bind 127.0.0.1 # {marker}-web\n\
         worker: echo \"$PORT $GREETING\" > worker.out; exec sleep 1000 # {marker}-worker\n"
    )
}

fn http_ok(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.0 200")
}

#[test]
fn a_foreman_procfile_runs_with_locald_up() {
    let marker = unique("procfile-fg");
    let _reaper = Reaper(marker.clone());
    let p = project(&[
        ("Procfile", &foreman_style(&marker)),
        (".env", "GREETING=hello\n"),
    ]);
    let state = tempfile::tempdir().expect("state");
    let mut child = Command::new(bin("locald"))
        .arg("up")
        .current_dir(p.path())
        .env("XDG_STATE_HOME", state.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("locald up");
    wait_until(Duration::from_secs(15), "both processes", || {
        !read(p.path(), "web.port").is_empty() && !read(p.path(), "worker.out").is_empty()
    });
    let web: u16 = read(p.path(), "web.port")
        .trim()
        .parse()
        .expect("web $PORT");
    let worker = read(p.path(), "worker.out");
    let (worker_port, greeting) = worker.trim().split_once(' ').expect("worker.out");
    assert_ne!(
        worker_port,
        web.to_string(),
        "each process type has its own PORT"
    );
    assert_eq!(greeting, "hello", ".env is read as foreman does");
    wait_until(Duration::from_secs(10), "web to answer on $PORT", || {
        http_ok(web)
    });
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(0)),
        Signal::SIGTERM,
    );
    let _ = child.wait();
}

#[test]
fn a_procfile_runs_with_locald_ctl_up_and_shows_ports() {
    if require(
        have_dbus_daemon(),
        "dbus-daemon is not installed (tests/setup-debian.sh installs it)",
    ) {
        return;
    }
    let bus = TestBus::start();
    let _daemon = Daemon::start(&bus);
    let marker = unique("procfile-ctl");
    let _reaper = Reaper(marker.clone());
    let p = project(&[("Procfile", &foreman_style(&marker))]);
    let up = ctl(&bus, p.path(), &["up"]);
    assert_eq!(up.code, 0, "{up:?}");
    wait_states(
        &bus,
        p.path(),
        &["running", "healthy"],
        Duration::from_secs(15),
    );
    wait_until(Duration::from_secs(10), "web.port", || {
        !read(p.path(), "web.port").is_empty()
    });
    let status = status_json(&bus, p.path());
    let web = &status["services"][0];
    assert_eq!(web["name"], "web");
    assert_eq!(
        web["ports"]["PORT"].as_u64().map(|p| p.to_string()),
        Some(read(p.path(), "web.port").trim().to_owned())
    );
    assert_eq!(ctl(&bus, p.path(), &["down"]).code, 0);
}

#[test]
fn a_locald_toml_service_without_command_runs_its_procfile_entry() {
    let marker = unique("procfile-toml");
    let _reaper = Reaper(marker.clone());
    let p = project(&[
        ("Procfile", &foreman_style(&marker)),
        (
            "locald.toml",
            "[services.worker]\nport = 4999\nenv = { GREETING = \"from-toml\" }\n",
        ),
    ]);
    let check = Command::new(bin("locald"))
        .arg("check")
        .arg(p.path())
        .output()
        .expect("check");
    assert_eq!(check.status.code(), Some(0), "{check:?}");
    let mut child = Command::new(bin("locald"))
        .arg("up")
        .current_dir(p.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("locald up");
    wait_until(Duration::from_secs(15), "worker.out", || {
        !read(p.path(), "worker.out").is_empty()
    });
    assert_eq!(read(p.path(), "worker.out").trim(), "4999 from-toml");
    // Only the services of locald.toml run.
    assert!(read(p.path(), "web.port").is_empty());
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(0)),
        Signal::SIGTERM,
    );
    let _ = child.wait();
}

#[test]
fn locald_check_reports_a_bad_procfile_line_with_its_number() {
    let p = project(&[(
        "Procfile",
        "web: python3 -m http.server $PORT\n\nthis is not a process\n",
    )]);
    let out = Command::new(bin("locald"))
        .arg("check")
        .arg(p.path())
        .output()
        .expect("check");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Procfile:3:1"), "{err}");
    assert!(err.contains("3 | this is not a process"), "{err}");
    assert!(err.contains("no `:`"), "{err}");

    // Through locald.toml: the service that needs the entry names the line.
    let p = project(&[
        ("Procfile", "web: ok\nnope\n"),
        ("locald.toml", "[services.web]\n"),
    ]);
    let out = Command::new(bin("locald"))
        .arg("check")
        .arg(p.path())
        .output()
        .expect("check");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Procfile:2:"), "{err}");
    assert!(err.contains("locald.toml:1:1"), "{err}");
}

#[test]
fn a_procfile_that_is_a_fifo_or_another_users_is_refused_not_read() {
    let p = project(&[]);
    nix::unistd::mkfifo(
        &p.path().join("Procfile"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .expect("mkfifo");
    let start = Instant::now();
    let out = Command::new(bin("locald"))
        .arg("check")
        .arg(p.path())
        .output()
        .expect("check");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "blocked on the FIFO"
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Procfile"), "{err}");

    if nix::unistd::Uid::effective().is_root() {
        let p = project(&[("Procfile", "web: touch planted-ran\n")]);
        let file = p.path().join("Procfile");
        nix::unistd::chown(&file, Some(nix::unistd::Uid::from_raw(4242)), None).expect("chown");
        let out = Command::new(bin("locald"))
            .arg("check")
            .arg(p.path())
            .output()
            .expect("check");
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("4242"), "{err}");
    }
}
