//! `watch` on real inotify with real files, through `locald up`: an edit
//! restarts the service within a second with the new content; a burst of 50
//! saves is one restart; a save that changes nothing, and a change to an
//! ignored file, restart nothing; an editor's rename-over save and a
//! deleted-and-recreated directory are seen; `restart_on` restarts a
//! dependent; the terminal says what changed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use locald_tests::{bin, unique};
use nix::sys::signal::Signal;

struct Up {
    child: Child,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(0)),
            Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

impl Up {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
}

fn up(dir: &Path, args: &[&str]) -> Up {
    let logs = tempfile::tempdir().expect("tmp");
    let out = logs.path().join("up.out");
    let file = std::fs::File::create(&out).expect("out");
    let child = Command::new(bin("locald"))
        .arg("up")
        .args(args)
        .current_dir(dir)
        .env("XDG_STATE_HOME", logs.path())
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("dup"))
        .stderr(file)
        .spawn()
        .expect("locald up");
    Up {
        child,
        out,
        _dir: logs,
    }
}

fn lines(dir: &Path, rel: &str) -> usize {
    std::fs::read_to_string(dir.join(rel))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

/// Nothing more happens for a while.
fn stays(dir: &Path, rel: &str, n: usize, what: &str) {
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(lines(dir, rel), n, "{what}");
}

const TOML: &str = r#"
[services.web]
watch = true
command = ["sh", "-c", "echo \"$(cat src/app.py)\" >> out/web-starts; exec sleep 1000"]
stop_timeout = "1s"

[services.worker]
restart_on = ["web"]
command = ["sh", "-c", "echo started >> out/worker-starts; exec sleep 1000"]
stop_timeout = "1s"
"#;

fn project() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix(&unique("watch"))
        .tempdir()
        .expect("tmp");
    let p = d.path();
    std::fs::write(p.join("locald.toml"), TOML).expect("toml");
    std::fs::write(p.join(".gitignore"), "out/\n*.log\n").expect("gitignore");
    std::fs::create_dir_all(p.join("src")).expect("src");
    std::fs::create_dir_all(p.join("out")).expect("out");
    std::fs::write(p.join("src/app.py"), "v1").expect("app");
    d
}

fn last(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("out/web-starts"))
        .unwrap_or_default()
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn edits_restart_and_nothing_else_does() {
    let d = project();
    let p = d.path();
    let up = up(p, &[]);
    wait_until(Duration::from_secs(10), "first start", || {
        lines(p, "out/web-starts") == 1 && lines(p, "out/worker-starts") == 1
    });
    // Let the watcher finish its first walk.
    wait_until(Duration::from_secs(5), "watching", || true);
    std::thread::sleep(Duration::from_millis(300));

    // An edit: restarted with the new content within a second.
    std::fs::write(p.join("src/app.py"), "v2").expect("edit");
    let took = wait_until(Duration::from_secs(5), "restart after an edit", || {
        last(p) == "v2"
    });
    assert!(
        took < Duration::from_secs(1),
        "edit → restart took {took:?}"
    );
    eprintln!("edit → new content running: {took:?}");
    // restart_on: the worker follows.
    wait_until(Duration::from_secs(5), "worker restart", || {
        lines(p, "out/worker-starts") == 2
    });
    assert!(
        up.output().contains("src/app.py changed"),
        "{}",
        up.output()
    );

    // The same content again (a touch, a checkout of the same branch): nothing.
    let n = lines(p, "out/web-starts");
    std::fs::write(p.join("src/app.py"), "v2").expect("same");
    stays(p, "out/web-starts", n, "a save without change restarted");

    // An ignored file: nothing.
    std::fs::write(p.join("debug.log"), "x").expect("log");
    std::fs::write(p.join("out/other"), "x").expect("ignored dir");
    stays(p, "out/web-starts", n, "an ignored file restarted");

    // A burst of 50 saves: one restart.
    for i in 0..50 {
        std::fs::write(p.join("src/app.py"), format!("burst{i}")).expect("burst");
        std::thread::sleep(Duration::from_millis(4));
    }
    wait_until(Duration::from_secs(5), "burst restart", || {
        last(p) == "burst49"
    });
    stays(
        p,
        "out/web-starts",
        n + 1,
        "a burst restarted more than once",
    );

    // An editor's save: write a temporary file, rename it over.
    std::fs::write(p.join("src/.app.py.swp"), "renamed").expect("tmp");
    std::fs::rename(p.join("src/.app.py.swp"), p.join("src/app.py")).expect("rename");
    wait_until(Duration::from_secs(5), "rename-over restart", || {
        last(p) == "renamed"
    });

    // The directory deleted and made again: still watched.
    std::fs::remove_dir_all(p.join("src")).expect("rm");
    std::thread::sleep(Duration::from_millis(300));
    std::fs::create_dir(p.join("src")).expect("mkdir");
    std::fs::write(p.join("src/app.py"), "recreated").expect("write");
    wait_until(Duration::from_secs(5), "recreated dir", || {
        last(p) == "recreated"
    });
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(p.join("src/app.py"), "after").expect("write");
    wait_until(Duration::from_secs(5), "edit in recreated dir", || {
        last(p) == "after"
    });
}

/// Until config edits are applied on save, an edit of `locald.toml` (even
/// into broken TOML) restarts nothing, which would run the old config
/// again, and says how to apply it.
#[test]
fn an_edit_of_locald_toml_restarts_nothing_and_says_reload() {
    let d = project();
    let p = d.path();
    let up = up(p, &[]);
    wait_until(Duration::from_secs(10), "first start", || {
        lines(p, "out/web-starts") == 1
    });
    std::thread::sleep(Duration::from_millis(300));
    let toml = std::fs::read_to_string(p.join("locald.toml")).expect("read");
    std::fs::write(p.join("locald.toml"), format!("{toml}\n[broken\n")).expect("edit");
    wait_until(Duration::from_secs(5), "the note", || {
        up.output()
            .contains("locald.toml changed: run `locald-ctl reload`")
    });
    stays(
        p,
        "out/web-starts",
        1,
        "an edit of locald.toml restarted web",
    );
    // Sources still restart it.
    std::fs::write(p.join("src/app.py"), "v2").expect("edit");
    wait_until(Duration::from_secs(5), "restart after an edit", || {
        last(p) == "v2"
    });
}

#[test]
fn up_watch_watches_services_without_watch() {
    let d = project();
    let p = d.path();
    std::fs::write(
        p.join("locald.toml"),
        "[services.web]\ncommand = [\"sh\", \"-c\", \"echo \\\"$(cat src/app.py)\\\" >> out/web-starts; exec sleep 1000\"]\nstop_timeout = \"1s\"\n",
    )
    .expect("toml");
    let first = up(p, &["--watch"]);
    wait_until(Duration::from_secs(10), "first start", || {
        lines(p, "out/web-starts") == 1
    });
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(p.join("src/app.py"), "v2").expect("edit");
    wait_until(Duration::from_secs(5), "restart", || last(p) == "v2");
    assert!(first.output().contains("watching"), "{}", first.output());

    // Without --watch and without `watch`, nothing restarts.
    drop(first);
    let d2 = project();
    let p2 = d2.path();
    std::fs::copy(p.join("locald.toml"), p2.join("locald.toml")).expect("cp");
    let _up = up(p2, &[]);
    wait_until(Duration::from_secs(10), "first start", || {
        lines(p2, "out/web-starts") == 1
    });
    std::fs::write(p2.join("src/app.py"), "v2").expect("edit");
    stays(p2, "out/web-starts", 1, "restarted without watch");
}

#[test]
fn locald_ctl_up_watch_watches_a_daemon_project() {
    use locald_tests::dbus::{ctl, have_dbus_daemon, wait_states, Daemon, TestBus};
    if locald_tests::require(
        have_dbus_daemon(),
        "dbus-daemon is not installed (tests/setup-debian.sh installs it)",
    ) {
        return;
    }
    let bus = TestBus::start();
    let _daemon = Daemon::start(&bus);
    let d = project();
    let p = d.path();
    std::fs::write(
        p.join("locald.toml"),
        format!(
            "[project]\nname = \"{}\"\n[services.web]\ncommand = [\"sh\", \"-c\", \"echo \\\"$(cat src/app.py)\\\" >> out/web-starts; exec sleep 1000\"]\nstop_timeout = \"1s\"\n",
            unique("watchctl")
        ),
    )
    .expect("toml");
    let up = ctl(&bus, p, &["up", "--watch"]);
    assert_eq!(up.code, 0, "{up:?}");
    assert!(up.stdout.contains("watched"), "{up:?}");
    wait_states(&bus, p, &["running"], Duration::from_secs(10));
    wait_until(Duration::from_secs(10), "first start", || {
        lines(p, "out/web-starts") == 1
    });
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(p.join("src/app.py"), "v2").expect("edit");
    wait_until(Duration::from_secs(5), "restart by the daemon", || {
        last(p) == "v2"
    });
    assert_eq!(ctl(&bus, p, &["down"]).code, 0);
}

/// The watch limit, lowered to 5 for locald alone: inotify limits are per
/// user namespace (`/proc/sys/user/max_inotify_watches`), so `unshare -Ur`
/// gives locald a namespace of its own with a tiny limit without touching
/// the machine's.
#[test]
fn an_exhausted_watch_limit_falls_back_to_polling_with_one_message() {
    let probe = Command::new("unshare")
        .args([
            "-Ur",
            "sh",
            "-c",
            "echo 5 > /proc/sys/user/max_inotify_watches",
        ])
        .status();
    if locald_tests::require(
        probe.is_ok_and(|s| s.success()),
        "cannot lower the inotify limit in a user namespace (unshare -Ur)",
    ) {
        return;
    }
    let d = project();
    let p = d.path();
    for i in 0..10 {
        std::fs::create_dir_all(p.join(format!("src/d{i}"))).expect("mkdir");
    }
    let logs = tempfile::tempdir().expect("tmp");
    let out = logs.path().join("up.out");
    let file = std::fs::File::create(&out).expect("out");
    let script = format!(
        "echo 5 > /proc/sys/user/max_inotify_watches && exec {} up",
        bin("locald").display()
    );
    let child = Command::new("unshare")
        .args(["-Ur", "sh", "-c", &script])
        .current_dir(p)
        .env("XDG_STATE_HOME", logs.path())
        .env("LOCALD_PROXY_PORT", "0")
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("dup"))
        .stderr(file)
        .spawn()
        .expect("unshare locald up");
    let up = Up {
        child,
        out,
        _dir: logs,
    };
    wait_until(Duration::from_secs(10), "first start", || {
        lines(p, "out/web-starts") == 1
    });
    wait_until(Duration::from_secs(5), "the limit message", || {
        up.output().contains("max_user_watches")
    });
    // Polling still sees an edit (within its 1 s period).
    std::thread::sleep(Duration::from_millis(1200));
    std::fs::write(p.join("src/app.py"), "polled").expect("edit");
    wait_until(Duration::from_secs(5), "restart by polling", || {
        last(p) == "polled"
    });
    let text = up.output();
    assert_eq!(
        text.matches("watch limit").count(),
        1,
        "one message:\n{text}"
    );
    assert!(
        text.contains("sysctl fs.inotify.max_user_watches="),
        "{text}"
    );
}

/// While a project is watched, a no-op `locald-ctl build` takes the source
/// hash from the watcher instead of walking the tree (the reason says so);
/// an edit made just before the check is never missed, even one the
/// watcher has not acted on yet; a project that is not watched walks.
#[test]
fn a_watched_no_op_check_does_not_walk_and_an_edit_is_never_missed() {
    use locald_tests::dbus::{ctl, have_dbus_daemon, wait_states, Daemon, TestBus};
    if locald_tests::require(
        have_dbus_daemon(),
        "dbus-daemon is not installed (tests/setup-debian.sh installs it)",
    ) {
        return;
    }
    let bus = TestBus::start();
    let _daemon = Daemon::start(&bus);
    let d = project();
    let p = d.path();
    let toml = |watch: &str| {
        format!(
            "[project]\nname = \"{}\"\n[services.web]\ncommand = [\"sleep\", \"1000\"]\nbuild = {{ command = [\"sh\", \"-c\", \"echo built >> out/builds\"], inputs = [\"src/**\"] }}\n{watch}stop_timeout = \"1s\"\n",
            unique("watchhash")
        )
    };
    // Watched, but no change restarts or rebuilds it on its own: every
    // build below is one this test asked for.
    std::fs::write(
        p.join("locald.toml"),
        toml("watch = { paths = [\"elsewhere/**\"], action = \"restart\" }\n"),
    )
    .expect("toml");
    let up = ctl(&bus, p, &["up"]);
    assert_eq!(up.code, 0, "{up:?}");
    wait_states(&bus, p, &["running"], Duration::from_secs(10));
    let build = || {
        let out = ctl(&bus, p, &["build", "web"]);
        assert_eq!(out.code, 0, "{out:?}");
        out.stdout
    };
    // The first checks walk (the build at `up` may have hashed before the
    // watcher was watching); one that walked after it was is remembered.
    let mut watched = false;
    for _ in 0..20 {
        if build().contains("(watched") {
            watched = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(watched, "no check was vouched for by the watcher");
    let again = build();
    assert!(
        again.contains("Build up to date (watched: no change"),
        "{again}"
    );
    let builds = lines(p, "out/builds");

    // Edits immediately followed by a check: the check syncs with the
    // event queue, so it never answers from a stale hash; each rebuilds.
    for i in 0..20 {
        std::fs::write(p.join("src/app.py"), format!("v{i}")).expect("edit");
        let out = build();
        assert!(!out.contains("up to date"), "edit {i} missed: {out}");
    }
    // A new directory: files written into it right away count too.
    std::fs::create_dir_all(p.join("src/new/deeper")).expect("mkdir");
    std::fs::write(p.join("src/new/deeper/mod.py"), "x").expect("write");
    let out = build();
    assert!(!out.contains("up to date"), "new directory missed: {out}");
    assert_eq!(lines(p, "out/builds"), builds + 21, "every edit rebuilt");
    // Quiet again: vouched for again.
    let mut watched = false;
    for _ in 0..20 {
        if build().contains("(watched") {
            watched = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(watched, "not vouched for again after the edits settled");
    // An ignored file changing is conservative: the next check walks,
    // and finds the build up to date.
    std::fs::write(p.join("x.log"), "noise").expect("write");
    let out = build();
    assert!(out.contains("Build up to date"), "{out}");
    assert!(!out.contains("(watched"), "{out}");
    assert_eq!(ctl(&bus, p, &["down"]).code, 0);

    // Not watched: every check walks.
    std::fs::write(p.join("locald.toml"), toml("")).expect("toml");
    let up = ctl(&bus, p, &["up"]);
    assert_eq!(up.code, 0, "{up:?}");
    wait_states(&bus, p, &["running"], Duration::from_secs(10));
    for _ in 0..3 {
        let out = build();
        assert!(out.contains("Build up to date"), "{out}");
        assert!(!out.contains("(watched"), "{out}");
    }
    assert_eq!(ctl(&bus, p, &["down"]).code, 0);
}
