//! Regression tests for what locald reads and writes that another local
//! user can reach first (the trust issue, items 1, 2, 7, 8, 10, 11, 14):
//! planted `locald.toml`s in shared parents, a planted `/tmp` runtime
//! directory and pid records, FIFOs, devices and huge files as config
//! inputs, half-written build outputs, files truncated while hashed, the
//! open-file limit, lifecycle lines in the journal, and permanent errors.
//!
//! "Another user" is a uid with no files of its own (4242): only ownership
//! matters to the checks, so no account is needed.

use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::CommandExt as _;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use locald_tests::dbus::{ctl, have_dbus_daemon, states, wait_states, Daemon, TestBus};
use locald_tests::{bin, bin_dir, pids_with, require, unique, TestProject};

const OTHER: u32 = 4242;

/// Runs `cmd` with a deadline; a command still running then is killed and
/// the test fails (the point of several tests: nothing may block).
fn run_within(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let end = Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "still running after {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

fn locald(args: &[&str]) -> Command {
    let mut c = Command::new(bin("locald"));
    c.args(args).env("NO_COLOR", "1");
    c
}

/// `locald ARGS PATH`.
fn locald_at(args: &[&str], path: &Path) -> Command {
    let mut c = locald(args);
    c.arg(path);
    c
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn mkdir(p: &Path, mode: u32) {
    std::fs::create_dir_all(p).expect("mkdir");
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn am_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn a_locald_toml_planted_in_a_shared_parent_is_refused() {
    if require(am_root(), "needs root to create another user's files") {
        return;
    }
    let shared = tempfile::tempdir().expect("tempdir");
    mkdir(shared.path(), 0o1777);
    let marker = shared.path().join("pwned");
    let planted = shared.path().join("locald.toml");
    std::fs::write(
        &planted,
        format!(
            "[services.x]\ncommand = [\"touch\", \"{}\"]\n",
            marker.display()
        ),
    )
    .expect("write");
    chown(&planted, Some(OTHER), Some(OTHER)).expect("chown");
    let mine = shared.path().join("mine");
    mkdir(&mine, 0o755);

    let out = run_within(locald_at(&["check"], &mine), Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("owned by uid 4242"),
        "{}",
        stderr(&out)
    );

    let out = run_within(locald_at(&["up"], &mine), Duration::from_secs(10));
    assert!(!out.status.success());
    std::thread::sleep(Duration::from_millis(200));
    assert!(!marker.exists(), "the planted command never ran");
}

#[test]
fn the_search_stops_at_a_directory_owned_by_someone_else() {
    if require(am_root(), "needs root to create another user's files") {
        return;
    }
    let top = tempfile::tempdir().expect("tempdir");
    let theirs = top.path().join("theirs");
    mkdir(&theirs, 0o755);
    std::fs::write(
        theirs.join("locald.toml"),
        "[services.x]\ncommand = \"true\"\n",
    )
    .expect("write");
    chown(theirs.join("locald.toml"), Some(OTHER), Some(OTHER)).expect("chown");
    chown(&theirs, Some(OTHER), Some(OTHER)).expect("chown");
    let mine = theirs.join("mine");
    mkdir(&mine, 0o755);
    let out = run_within(locald_at(&["check"], &mine), Duration::from_secs(10));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no locald.toml"), "{err}");
    assert!(
        err.contains(&format!(
            "stopped at {}: owned by uid 4242",
            theirs.display()
        )),
        "{err}"
    );
}

#[test]
fn the_search_stops_at_a_file_system_boundary() {
    if require(am_root(), "needs root to mount a tmpfs") {
        return;
    }
    let top = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        top.path().join("locald.toml"),
        "[services.x]\ncommand = \"true\"\n",
    )
    .expect("write");
    let mnt = top.path().join("mnt");
    mkdir(&mnt, 0o755);
    // `locald check` of a directory on a tmpfs mounted below the project.
    let check_below = || {
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount -t tmpfs none "$1" && mkdir "$1/proj" && exec "$0" check "$1/proj""#)
            .arg(bin("locald"))
            .arg(&mnt);
        let out = run_within(c, Duration::from_secs(10));
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        stderr(&out)
    };
    let err = check_below();
    let note = format!(
        "another file system; {} is not used from below it",
        top.path().join("locald.toml").display()
    );
    assert!(err.contains(&note), "{err}");

    // Nothing beyond the boundary: nothing to say about it.
    std::fs::remove_file(top.path().join("locald.toml")).expect("remove");
    let err = check_below();
    assert!(err.contains("no locald.toml or Procfile in"), "{err}");
    assert!(!err.contains("search stopped"), "{err}");
}

#[test]
fn an_env_file_of_another_user_is_refused_at_its_line() {
    if require(am_root(), "needs root to create another user's files") {
        return;
    }
    let p = TestProject::new("[services.web]\ncommand = \"true\"\nenv_file = \"their.env\"\n");
    p.write("their.env", "TOKEN=planted\n");
    chown(p.join("their.env"), Some(OTHER), Some(OTHER)).expect("chown");
    let out = run_within(locald_at(&["check"], p.path()), Duration::from_secs(10));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("locald.toml:3:12"), "{err}");
    assert!(err.contains("owned by uid 4242"), "{err}");
}

#[test]
fn fifos_devices_and_huge_files_are_refused_without_blocking() {
    let p = TestProject::new("");
    nix::unistd::mkfifo(
        &p.join("fifo.env"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .expect("mkfifo");
    std::fs::write(p.join("big.env"), vec![b'#'; 2 << 20]).expect("write");
    for (file, says) in [
        ("fifo.env", "a FIFO"),
        ("/dev/zero", "a character device"),
        ("big.env", "larger than 1 MiB"),
    ] {
        p.write(
            "locald.toml",
            &format!("[services.web]\ncommand = \"true\"\nenv_file = \"{file}\"\n"),
        );
        let out = run_within(locald_at(&["check"], p.path()), Duration::from_secs(10));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{file}: {err}");
        assert!(err.contains("locald.toml:3:12"), "{file}: {err}");
        assert!(err.contains(says), "{file}: {err}");
    }
    // A locald.toml past its limit is not read at all.
    let mut big = String::from("[services.web]\ncommand = \"true\"\n");
    big.push_str(&"# padding\n".repeat(500_000));
    p.write("locald.toml", &big);
    let out = run_within(locald_at(&["check"], p.path()), Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("larger than 4 MiB"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_fifo_env_file_does_not_freeze_the_daemon() {
    if require(have_dbus_daemon(), "dbus-daemon is not installed") {
        return;
    }
    let bus = TestBus::start();
    let _d = Daemon::start(&bus);
    let p = TestProject::new("[services.web]\ncommand = \"true\"\nenv_file = \"fifo.env\"\n");
    nix::unistd::mkfifo(
        &p.join("fifo.env"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .expect("mkfifo");
    let out = ctl(&bus, p.path(), &["up"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("a FIFO"), "{out:?}");
    // The daemon still answers.
    let other = TestProject::new("[services.web]\ncommand = [\"sleep\", \"1000\"]\n");
    assert_eq!(ctl(&bus, other.path(), &["up"]).code, 0);
    wait_states(&bus, other.path(), &["running"], Duration::from_secs(10));
    assert_eq!(ctl(&bus, other.path(), &["down"]).code, 0);
}

#[test]
fn a_directory_that_cannot_be_read_says_so() {
    if require(am_root(), "needs root to run as another uid") {
        return;
    }
    let top = tempfile::tempdir().expect("tempdir");
    mkdir(top.path(), 0o755);
    let private = top.path().join("private");
    mkdir(&private, 0o700);
    let mut c = Command::new("setpriv");
    c.args([
        &format!("--reuid={OTHER}"),
        &format!("--regid={OTHER}"),
        "--clear-groups",
    ])
    .arg(locald_tests::user_bin("locald"))
    .arg("check")
    .arg(&private);
    let out = run_within(c, Duration::from_secs(10));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("Permission denied"), "{err}");
    assert!(!err.contains("no locald.toml"), "{err}");
}

/// A project directory outside `/tmp`, for tests that hide `/tmp`.
fn project_outside_tmp(toml: &str) -> tempfile::TempDir {
    let base = bin_dir().join("trust-tests");
    std::fs::create_dir_all(&base).expect("mkdir");
    let dir = tempfile::Builder::new()
        .prefix("proj-")
        .tempdir_in(base)
        .expect("tempdir");
    std::fs::write(dir.path().join("locald.toml"), toml).expect("write");
    dir
}

#[test]
fn a_planted_tmp_runtime_directory_is_refused() {
    if require(am_root(), "needs root for a private /tmp") {
        return;
    }
    let p = project_outside_tmp(
        "[project]\nname = \"victim\"\n\n[services.web]\ncommand = [\"sleep\", \"1000\"]\n",
    );
    let victim = p.path().join("precious");
    std::fs::write(&victim, "precious").expect("write");
    let uid = nix::unistd::geteuid();
    // In a private /tmp, another user creates /tmp/locald-<uid> first, open
    // to all, with a pid record that is a symlink to the victim's file.
    // The checkout (so the binary and the project) may itself live under
    // /tmp, which the private tmpfs hides: the old /tmp stays reachable
    // through a bind mount made first, and paths under it are rewritten.
    let keep = tempfile::Builder::new()
        .prefix("locald-keep-tmp-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let script = format!(
        r#"set -e
keep="$3"
mount --bind /tmp "$keep"
mount -t tmpfs none /tmp
under() {{ case "$1" in /tmp/*) printf '%s\n' "$keep/${{1#/tmp/}}" ;; *) printf '%s\n' "$1" ;; esac; }}
bin=$(under "$0"); proj=$(under "$1"); victim=$(under "$2")
mkdir -p /tmp/locald-{uid}/units/planted
ln -s "$victim" /tmp/locald-{uid}/units/planted/web.pid
chmod -R 777 /tmp/locald-{uid}
chown -R {OTHER}:{OTHER} /tmp/locald-{uid}
unset XDG_RUNTIME_DIR
"$bin" up "$proj" && echo "up ran" || true
"$bin" daemon --bus-address unix:path=/nonexistent --state-dir "$proj/state" || true"#
    );
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .arg(bin("locald"))
        .arg(p.path())
        .arg(&victim)
        .arg(keep.path())
        .env("NO_COLOR", "1");
    let out = run_within(c, Duration::from_secs(20));
    let err = stderr(&out);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("up ran"),
        "{err}"
    );
    let refusal = format!("/tmp/locald-{uid} is owned by uid {OTHER}");
    assert_eq!(
        err.matches(&refusal).count(),
        2,
        "up and daemon refuse: {err}"
    );
    assert_eq!(std::fs::read_to_string(&victim).expect("read"), "precious");
}

/// Field 22 of /proc/PID/stat, as locald records it.
fn start_time(pid: u32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    rest.split_whitespace()
        .nth(19)
        .expect("field 22")
        .to_owned()
}

#[test]
fn pid_records_never_signal_another_users_process_nor_follow_symlinks() {
    if require(am_root(), "needs root to run a process as another uid") {
        return;
    }
    let runtime = tempfile::tempdir().expect("tempdir");
    let name = unique("records");
    let p = TestProject::new(&format!(
        "[project]\nname = \"{name}\"\n\n[services.web]\ncommand = [\"sleep\", \"1000\"]\n\n[services.api]\ncommand = [\"sleep\", \"1000\"]\n"
    ));
    let root = p.path().canonicalize().expect("canonical");
    let key = locald::runtime::claim::project_key(&name, &root);
    let units = runtime.path().join("locald/units").join(&key);
    std::fs::create_dir_all(&units).expect("mkdir");
    std::fs::set_permissions(
        runtime.path().join("locald"),
        std::fs::Permissions::from_mode(0o700),
    )
    .expect("chmod");

    // Another user's process, named in web's record with its real start time.
    let marker = unique("other-user");
    let mut theirs = Command::new("setpriv")
        .args([
            &format!("--reuid={OTHER}"),
            &format!("--regid={OTHER}"),
            "--clear-groups",
            "sh",
            "-c",
            &format!("sleep 1000; : {marker}"),
        ])
        .process_group(0)
        .spawn()
        .expect("spawn");
    let end = Instant::now() + Duration::from_secs(5);
    while pids_with(&marker).is_empty() {
        assert!(Instant::now() < end);
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = theirs.id();
    std::fs::write(
        units.join("web.pid"),
        format!("{pid} {}\n", start_time(pid)),
    )
    .expect("record");
    // And api's record is a symlink to a file of the user's.
    let precious = p.join("precious");
    std::fs::write(&precious, "precious").expect("write");
    std::os::unix::fs::symlink(&precious, units.join("api.pid")).expect("symlink");

    let mut up = locald(&["up"])
        .arg(p.path())
        .env("XDG_RUNTIME_DIR", runtime.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("locald up");
    std::thread::sleep(Duration::from_millis(1500));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(up.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = up.wait();
    let alive = pids_with(&marker);
    // The shell and its `sleep`: the whole group, or the sleep outlives us.
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(theirs.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = theirs.wait();
    assert_eq!(
        alive,
        vec![pid as i32],
        "the other user's process was never signalled"
    );
    assert_eq!(
        std::fs::read_to_string(&precious).expect("read"),
        "precious"
    );
}

#[test]
fn a_failed_build_never_leaves_its_outputs_looking_up_to_date() {
    let p = TestProject::new(
        r#"[services.web]
command = "true"
build = { command = "sh build.sh", inputs = ["src"], outputs = ["out.txt"] }
"#,
    );
    p.write(
        "build.sh",
        "if grep -q fail src/in; then head -c 2000000 /dev/zero > out.txt; exit 1; fi\ncp src/in out.txt\n",
    );
    let build = || {
        run_within(
            locald_at(&["build", "-C"], p.path()),
            Duration::from_secs(30),
        )
    };
    p.write("src/in", "good\n");
    let out = build();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = build();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("up to date")
            || String::from_utf8_lossy(&out.stdout).contains("up to date"),
        "second build skipped: {}",
        stderr(&out)
    );

    // The disk fills (or the build breaks) half-way: outputs are garbage.
    p.write("src/in", "fail\n");
    let out = build();
    assert!(!out.status.success());
    assert_eq!(
        std::fs::metadata(p.join("out.txt")).expect("out").len(),
        2_000_000
    );

    // Inputs back as they were at the last good build: it must rebuild.
    p.write("src/in", "good\n");
    let out = build();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("outputs changed"), "{text}");
    assert_eq!(p.read("out.txt"), "good\n");
}

#[test]
fn a_large_input_truncated_while_it_is_hashed_does_not_kill_locald() {
    let p = TestProject::new(
        r#"[services.web]
command = "true"
build = { command = "true", inputs = ["big"] }
"#,
    );
    let big = p.join("big");
    std::fs::write(&big, "").expect("create");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flipper = {
        let stop = stop.clone();
        let big = big.clone();
        std::thread::spawn(move || {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&big)
                .expect("open");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = f.set_len(64 << 20);
                std::thread::sleep(Duration::from_micros(300));
                let _ = f.set_len(0);
                std::thread::sleep(Duration::from_micros(100));
            }
        })
    };
    for _ in 0..15 {
        let out = run_within(
            locald_at(&["build", "--force", "-C"], p.path()),
            Duration::from_secs(60),
        );
        assert_eq!(
            out.status.signal(),
            None,
            "locald died of a signal: {}",
            stderr(&out)
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = flipper.join();
}

#[test]
fn the_open_file_limit_is_raised_for_locald_and_its_services() {
    let p = TestProject::new(
        "[services.web]\ncommand = [\"sh\", \"-c\", \"ulimit -n > limit; exec sleep 1000\"]\n",
    );
    let mut c = Command::new("prlimit");
    c.args(["--nofile=256:4096", "--"])
        .arg(bin("locald"))
        .arg("up")
        .arg(p.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = c.spawn().expect("prlimit locald up");
    let end = Instant::now() + Duration::from_secs(10);
    while p.read("limit").is_empty() {
        assert!(Instant::now() < end, "the service started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = child.wait();
    assert_eq!(p.read("limit").trim(), "4096");
}

#[test]
fn permanent_errors_fail_at_once_without_backoff() {
    if require(have_dbus_daemon(), "dbus-daemon is not installed") {
        return;
    }
    let bus = TestBus::start();
    let _d = Daemon::start(&bus);
    // A program that does not exist cannot start however often it is
    // retried. (A builder that cannot be pulled is retried: the network
    // may come back.)
    let p = TestProject::new(
        r#"[services.missing]
command = ["/nonexistent/program"]
"#,
    );
    assert_eq!(ctl(&bus, p.path(), &["up"]).code, 0);
    wait_states(&bus, p.path(), &["failed"], Duration::from_secs(10));
    let status = locald_tests::dbus::status_json(&bus, p.path());
    for s in status["services"].as_array().expect("services") {
        assert_eq!(s["restart_count"], 0, "no retry: {s}");
    }
    let text = ctl(&bus, p.path(), &["status"]).stdout;
    assert!(text.contains("/nonexistent/program"), "{text}");
    assert_eq!(states(&bus, p.path()).len(), 1);
}

#[test]
fn lifecycle_events_tell_the_story_in_the_journal() -> anyhow::Result<()> {
    use locald_tests::journald::Journald;
    if require(have_dbus_daemon(), "dbus-daemon is not installed") {
        return Ok(());
    }
    let Some(mut j) = Journald::start_or_skip("lifecycle_events_tell_the_story_in_the_journal")?
    else {
        return Ok(());
    };
    let bus = TestBus::start();
    let state: PathBuf = bus.dir().join("state");
    let mut daemon = j
        .command_with_default_paths(bin("locald"))
        .args(["daemon", "--bus-address", bus.address(), "--state-dir"])
        .arg(&state)
        .env("LOCALD_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let end = Instant::now() + Duration::from_secs(10);
    while !bus.name_has_owner() {
        anyhow::ensure!(Instant::now() < end, "the daemon took its name");
        std::thread::sleep(Duration::from_millis(20));
    }
    let name = unique("story");
    let p = TestProject::new(&format!(
        r#"[project]
name = "{name}"

[services.crash]
command = ["sh", "-c", "exit 3"]
restart_delay = "50ms"
start_limit_burst = 3

[services.web]
command = ["sleep", "1000"]
"#
    ));
    assert_eq!(ctl(&bus, p.path(), &["up"]).code, 0);
    let end = Instant::now() + Duration::from_secs(10);
    while !states(&bus, p.path())
        .iter()
        .any(|(n, s)| n == "crash" && s == "failed")
    {
        anyhow::ensure!(Instant::now() < end, "crash reached failed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(ctl(&bus, p.path(), &["stop", "web"]).code, 0);
    let messages: Vec<String> = j
        .synced_query(&[("SYSLOG_IDENTIFIER", "locald"), ("LOCALD_PROJECT", &name)])?
        .iter()
        .map(|e| e.field("MESSAGE"))
        .collect();
    let story = messages.join("\n");
    for needle in [
        "crash: started (pid",
        "exited with status 3",
        "crash: restarting in",
        "crash: start limit hit",
        "web: started (pid",
        "web: stopped",
    ] {
        assert!(story.contains(needle), "missing {needle:?} in:\n{story}");
    }
    let web = j.synced_query(&[
        ("SYSLOG_IDENTIFIER", "locald"),
        ("LOCALD_SERVICE", "web"),
        ("LOCALD_PROJECT", &name),
    ])?;
    let levels: Vec<(String, String)> = web
        .iter()
        .map(|e| (e.field("PRIORITY"), e.field("MESSAGE")))
        .collect();
    assert!(
        levels.iter().all(|(p, _)| p == "6"),
        "info level: {levels:?}"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = daemon.wait();
    Ok(())
}
