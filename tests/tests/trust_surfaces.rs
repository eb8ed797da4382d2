//! Regression tests for the hardening issue "trust the new surfaces": what
//! a hostile local user can do through a shared project directory, a
//! squatted loopback port, a shared bus, or text that reaches a terminal.
//! Each test fails on the code before the fix.
//!
//! "Another user" is a uid with no files of its own (4242) where only
//! ownership matters, and a real account where a process must run as
//! someone else.

use std::os::unix::fs::{chown, symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use locald_tests::{bin, require, TestProject};

const OTHER: u32 = 4242;

fn am_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn output_within(mut cmd: Command, limit: Duration) -> Output {
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

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A directory of the victim's with a file in it that must survive.
fn precious(top: &Path) -> PathBuf {
    let p = top.join("precious");
    std::fs::create_dir_all(&p).expect("mkdir");
    std::fs::write(p.join("thesis.tex"), "years of work").expect("write");
    p
}

fn assert_intact(p: &Path) {
    let names: Vec<_> = std::fs::read_dir(p)
        .expect("precious is still a directory")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["thesis.tex"], "nothing added or removed in {p:?}");
    assert_eq!(
        std::fs::read_to_string(p.join("thesis.tex")).expect("read"),
        "years of work"
    );
}

/// A project with a host build that hashes `src/`.
fn built_project() -> TestProject {
    let p = TestProject::new(
        r#"[services.web]
command = ["sleep", "1000"]
build = { command = "cp src/in out.txt", inputs = ["src"], outputs = ["out.txt"] }
"#,
    );
    p.write("src/in", "hello\n");
    p
}

fn build(p: &TestProject) -> Output {
    let mut c = Command::new(bin("locald"));
    c.args(["build", "-C"]).arg(p.path()).env("NO_COLOR", "1");
    output_within(c, Duration::from_secs(30))
}

#[test]
fn a_planted_watch_sync_symlink_never_empties_the_directory_it_names() {
    let top = tempfile::tempdir().expect("tempdir");
    let victim = precious(top.path());
    let p = TestProject::new(
        "[services.web]\ncommand = [\"sh\", \"-c\", \"echo web-up; exec sleep 1000\"]\nwatch = true\n",
    );
    std::fs::create_dir(p.join(".locald")).expect("mkdir");
    symlink(&victim, p.join(".locald/watch-sync")).expect("plant");

    let mut child: Child = Command::new(bin("locald"))
        .arg("up")
        .arg(p.path())
        .env("NO_COLOR", "1")
        .env("LOCALD_PROXY_PORT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn locald up");
    // The watcher is set up before the service starts; give it a moment
    // past the first line.
    let end = Instant::now() + Duration::from_secs(20);
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = String::new();
    while Instant::now() < end && !seen.contains("web-up") {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.push_str(&l);
            seen.push('\n');
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let out = child.wait_with_output().expect("wait");
    assert!(seen.contains("web-up"), "service came up: {seen}{}", text(&out));
    assert_intact(&victim);
    assert!(
        std::fs::symlink_metadata(p.join(".locald/watch-sync"))
            .expect("still there")
            .file_type()
            .is_symlink(),
        "the planted link is left for its owner to see"
    );
}

#[test]
fn a_planted_locald_symlink_is_refused_and_its_target_untouched() {
    let top = tempfile::tempdir().expect("tempdir");
    let victim = precious(top.path());
    let p = built_project();
    symlink(&victim, p.join(".locald")).expect("plant");
    let out = build(&p);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(".locald is a symbolic link; refusing to follow it"),
        "{}",
        text(&out)
    );
    assert_intact(&victim);
}

#[test]
fn planted_symlinks_below_locald_are_removed_or_refused_never_followed() {
    let top = tempfile::tempdir().expect("tempdir");
    let victim = precious(top.path());
    let p = built_project();
    let out = build(&p);
    assert!(out.status.success(), "first build: {}", text(&out));

    // A staging directory "left by a dead build" that is a link to the
    // victim's directory: the next build clears leftovers — by unlinking.
    let svc = p.join(".locald/services/web");
    symlink(&victim, svc.join("artifacts.staging-1-1")).expect("plant");
    symlink(&victim, svc.join("artifacts.old-1")).expect("plant");
    p.write("src/in", "changed\n");
    let out = build(&p);
    assert!(out.status.success(), "{}", text(&out));
    assert_intact(&victim);
    assert!(!svc.join("artifacts.staging-1-1").exists());

    // The artifacts directory itself replaced by a link: refused by name.
    std::fs::remove_dir_all(svc.join("artifacts")).expect("rm");
    symlink(&victim, svc.join("artifacts")).expect("plant");
    p.write("src/in", "changed again\n");
    let out = build(&p);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("artifacts is a symbolic link"),
        "{}",
        text(&out)
    );
    assert_intact(&victim);

    // The stat cache's directory a link: refused, nothing written there.
    std::fs::remove_file(svc.join("artifacts")).expect("rm");
    std::fs::remove_dir_all(p.join(".locald/state")).expect("rm");
    symlink(&victim, p.join(".locald/state")).expect("plant");
    let out = build(&p);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("state is a symbolic link"), "{}", text(&out));
    assert_intact(&victim);
}

#[test]
fn a_fifo_under_locald_is_refused_without_blocking() {
    let p = built_project();
    let out = build(&p);
    assert!(out.status.success(), "first build: {}", text(&out));
    let manifest = p.join(".locald/services/web/artifacts/manifest.json");
    std::fs::remove_file(&manifest).expect("rm");
    nix::unistd::mkfifo(&manifest, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .expect("mkfifo");
    let out = build(&p);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("it is a FIFO"), "{}", text(&out));

    let p = built_project();
    std::fs::create_dir_all(p.join(".locald/services")).expect("mkdir");
    nix::unistd::mkfifo(
        &p.join(".locald/services/web"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .expect("mkfifo");
    let out = build(&p);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("web is not a directory (it is a FIFO)"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_directory_of_another_user_under_locald_is_refused() {
    if require(am_root(), "needs root to create another user's directory") {
        return;
    }
    let p = built_project();
    let services = p.join(".locald/services");
    std::fs::create_dir_all(services.join("web")).expect("mkdir");
    std::fs::set_permissions(&services, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    chown(&services, Some(OTHER), Some(OTHER)).expect("chown");
    let out = build(&p);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("services is owned by uid 4242"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_group_writable_locald_from_a_shared_checkout_is_made_private() {
    let p = built_project();
    std::fs::create_dir(p.join(".locald")).expect("mkdir");
    std::fs::set_permissions(p.join(".locald"), std::fs::Permissions::from_mode(0o2775))
        .expect("chmod");
    let out = build(&p);
    assert!(out.status.success(), "{}", text(&out));
    use std::os::unix::fs::MetadataExt;
    let mode = std::fs::metadata(p.join(".locald")).expect("stat").mode() & 0o7777;
    assert_eq!(mode & 0o022, 0, "mode {mode:o}");
}

/// Regression (item 10): the daemon's start restores each project and then
/// sweeps what no live locald claims, reading each container directory's
/// `key`. A directory being made by a restoring service had no key yet (it
/// was written after the writable copy); the sweep read "" as claimed by
/// nobody and deleted the copy being made ("cannot make the container's
/// copy: … No such file or directory", then failed — 3 of 4 restarts under
/// a user manager). Directories are now made with their key in them, and
/// one without a key is never taken for abandoned: this plants such a
/// directory, in the middle of being filled, and starts a daemon.
#[test]
fn a_daemon_start_never_sweeps_a_container_directory_without_its_key() {
    use locald_tests::dbus::{Daemon, DaemonSetup, TestBus};
    if require(
        locald_tests::dbus::have_dbus_daemon(),
        "needs dbus-daemon (apt-get install dbus)",
    ) {
        return;
    }
    let bus = TestBus::start();
    let run = bus.dir().join("run");
    let filling = run.join("locald/containers/locald-restoring-0123456789ab-web");
    std::fs::create_dir_all(filling.join("rootfs/bin")).expect("mkdir");
    std::fs::write(filling.join("rootfs/bin/half-copied"), "x").expect("write");
    for d in [run.as_path(), &run.join("locald"), &run.join("locald/containers")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    }
    // A directory with a key nobody claims is swept, as before.
    let ghost = run.join("locald/containers/locald-ghost-0123456789ab-web");
    std::fs::create_dir_all(&ghost).expect("mkdir");
    std::fs::write(ghost.join("key"), "ghost-0123456789ab").expect("key");

    let env = vec![
        ("XDG_RUNTIME_DIR".to_owned(), run.display().to_string()),
        (
            "LOCALD_SHIM".to_owned(),
            bus.dir().join("no-shim").display().to_string(),
        ),
    ];
    let d = Daemon::start_with(
        &bus,
        DaemonSetup {
            env,
            ..DaemonSetup::default()
        },
    );
    let end = Instant::now() + Duration::from_secs(10);
    while ghost.exists() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!ghost.exists(), "the abandoned one is swept:\n{}", d.log());
    assert!(
        filling.join("rootfs/bin/half-copied").exists(),
        "the one being made is left alone:\n{}",
        d.log()
    );
}
