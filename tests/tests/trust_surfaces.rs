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
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
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
    assert!(
        text(&out).contains(".locald/watch-sync is a symbolic link; refusing to follow it"),
        "the watcher said why it checks sources in full: {}",
        text(&out)
    );
    assert!(
        seen.contains("web-up"),
        "service came up: {seen}{}",
        text(&out)
    );
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
    assert!(
        text(&out).contains("state is a symbolic link"),
        "{}",
        text(&out)
    );
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
    for d in [
        run.as_path(),
        &run.join("locald"),
        &run.join("locald/containers"),
    ] {
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

// ---------------------------------------------------------------------------
// The *.localhost proxy (items 3, 4 and 7).

/// A server of another user (uid 4242, no account needed) on
/// 127.0.0.1:`port`, answering every request with `PWNED`.
struct Squatter(Child);

const SQUAT: &str = r#"import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', int(sys.argv[1])))
s.listen(64)
while True:
    c, _ = s.accept()
    try:
        c.recv(65536)
        c.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nPWNED')
    except Exception:
        pass
    c.close()
"#;

impl Squatter {
    fn start(port: u16) -> Squatter {
        let child = Command::new("setpriv")
            .args(["--reuid=4242", "--regid=4242", "--clear-groups"])
            .args(["/usr/bin/python3", "-c", SQUAT])
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("squatter");
        let s = Squatter(child);
        let end = Instant::now() + Duration::from_secs(10);
        while !held_by_4242(port) {
            assert!(
                Instant::now() < end,
                "the squatter never listened on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }
}

impl Drop for Squatter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn held_by_4242(port: u16) -> bool {
    locald::listeners::listeners(port)
        .unwrap_or_default()
        .iter()
        .any(|l| l.uid == OTHER)
}

/// `GET /who.txt` through the proxy with this Host: status and body.
fn via_proxy(proxy: u16, host: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", proxy)) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        s,
        "GET /who.txt HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, out)
}

fn service_port(bus: &locald_tests::dbus::TestBus, dir: &Path, service: &str) -> Option<u16> {
    let json = locald_tests::dbus::status_json(bus, dir);
    let svc = locald_tests::find_service(&json, service)?;
    svc["ports"]["PORT"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
}

fn proxy_daemon(
    nofile: Option<u64>,
) -> Option<(locald_tests::dbus::TestBus, locald_tests::dbus::Daemon, u16)> {
    use locald_tests::dbus::{have_dbus_daemon, Daemon, DaemonSetup, TestBus};
    if require(am_root(), "needs root to run a squatter as another uid")
        || require(
            have_dbus_daemon(),
            "needs dbus-daemon (apt-get install dbus)",
        )
    {
        return None;
    }
    let proxy = locald_tests::free_port();
    let bus = TestBus::start();
    let daemon = Daemon::start_with(
        &bus,
        DaemonSetup {
            env: vec![("LOCALD_PROXY_PORT".into(), proxy.to_string())],
            nofile,
            ..DaemonSetup::default()
        },
    );
    Some((bus, daemon, proxy))
}

/// Regression (item 4): the proxy connected to 127.0.0.1:PORT whenever the
/// service was running, whoever listened there. A server that binds only
/// `::1` (as Vite does) left 127.0.0.1:PORT to another user, whose page was
/// then served under the victim's origin; a port squatted while the service
/// restarted was served the same way.
#[test]
fn the_proxy_never_serves_another_users_listener_under_the_services_url() {
    use locald_tests::dbus::{ctl, wait_states};
    let Some((bus, _daemon, proxy)) = proxy_daemon(None) else {
        return;
    };
    let name = locald_tests::unique("squat");
    let p = TestProject::new(&format!(
        r#"[project]
name = "{name}"

[services.vite]
port = "auto"
command = "exec python3 -m http.server $PORT --bind ::1 --directory pub"
stop_timeout = "1s"

[services.api]
port = "auto"
command = "sleep 1; exec python3 -m http.server $PORT --bind 127.0.0.1 --directory pub"
stop_timeout = "1s"
"#
    ));
    p.write("pub/who.txt", "I am the service\n");
    assert_eq!(ctl(&bus, p.path(), &["up"]).code, 0);
    wait_states(
        &bus,
        p.path(),
        &["running", "running"],
        Duration::from_secs(20),
    );

    // The ::1-only server: another user takes 127.0.0.1 of its port.
    if require(
        std::net::TcpListener::bind("[::1]:0").is_ok(),
        "needs IPv6 on loopback for the ::1-only server",
    ) {
        return;
    }
    let vite = format!("vite.{name}.localhost:{proxy}");
    let port = service_port(&bus, p.path(), "vite").expect("vite's port");
    let end = Instant::now() + Duration::from_secs(15);
    while !via_proxy(proxy, &vite).1.contains("I am the service") {
        assert!(Instant::now() < end, "vite never answered over ::1");
        std::thread::sleep(Duration::from_millis(100));
    }
    let squatter = Squatter::start(port);
    for _ in 0..10 {
        let (code, body) = via_proxy(proxy, &vite);
        assert!(!body.contains("PWNED"), "served the squatter: {body}");
        assert_eq!(code, 200, "still reached over ::1: {body}");
    }
    drop(squatter);

    // A restart: the port is free for a moment, and taken.
    let api = format!("api.{name}.localhost:{proxy}");
    let port = service_port(&bus, p.path(), "api").expect("api's port");
    let end = Instant::now() + Duration::from_secs(15);
    while !via_proxy(proxy, &api).1.contains("I am the service") {
        assert!(Instant::now() < end, "api never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ctl(&bus, p.path(), &["stop", "api"]).code, 0);
    let _squatter = Squatter::start(port);
    assert_eq!(ctl(&bus, p.path(), &["start", "api"]).code, 0);
    let mut told = String::new();
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        let (code, body) = via_proxy(proxy, &api);
        assert!(!body.contains("PWNED"), "served the squatter: {body}");
        if code == 503 && body.contains("uid 4242") {
            told = body;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        told.contains("is held by uid 4242"),
        "the page says who holds the port"
    );
    assert_eq!(ctl(&bus, p.path(), &["down"]).code, 0);
}

/// Regression (item 3): two clients holding ~20,000 idle connections to
/// the proxy took the daemon's descriptors; starts failed with "Too many
/// open files", hit the start limit, and the service stayed failed. Here
/// the daemon has 1,100 descriptors and another user opens 3,000 idle
/// connections: most are closed at once (per-user and total caps), the
/// rest after the 10-second header/idle timeout, a restart of the service
/// works meanwhile, and the user's own requests still get through.
#[test]
fn a_flood_of_idle_proxy_connections_starves_neither_the_proxy_nor_the_services() {
    use locald_tests::dbus::{ctl, wait_states};
    let Some((bus, daemon, proxy)) = proxy_daemon(Some(1100)) else {
        return;
    };
    let name = locald_tests::unique("flood");
    let p = TestProject::new(&format!(
        r#"[project]
name = "{name}"

[services.web]
port = "auto"
command = "exec python3 -m http.server $PORT --bind 127.0.0.1 --directory pub"
stop_timeout = "1s"
start_limit_burst = 3
"#
    ));
    p.write("pub/who.txt", "I am the service\n");
    assert_eq!(ctl(&bus, p.path(), &["up"]).code, 0);
    wait_states(&bus, p.path(), &["running"], Duration::from_secs(20));
    let web = format!("web.{name}.localhost:{proxy}");

    let flood = format!(
        r#"import socket, time, select
conns = []
start = time.time()
for i in range(3000):
    if time.time() - start > 8:
        break
    try:
        s = socket.create_connection(('127.0.0.1', {proxy}), timeout=0.2)
        conns.append(s)
    except OSError:
        pass
def alive():
    n = 0
    for s in conns:
        try:
            s.setblocking(False)
            if s.recv(1, socket.MSG_PEEK) != b'':
                n += 1
        except BlockingIOError:
            n += 1
        except OSError:
            pass
    return n
time.sleep(2)
print('open-after-2s', alive(), flush=True)
time.sleep(12)
print('open-after-14s', alive(), flush=True)
"#
    );
    let flooder = Command::new("prlimit")
        .args([
            "--nofile=5000:5000",
            "--",
            "setpriv",
            "--reuid=4242",
            "--regid=4242",
        ])
        .args(["--clear-groups", "/usr/bin/python3", "-c", &flood])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("flooder");
    std::thread::sleep(Duration::from_secs(3));
    // The service restarts and the user's own requests get through.
    assert_eq!(ctl(&bus, p.path(), &["restart", "web"]).code, 0);
    wait_states(&bus, p.path(), &["running"], Duration::from_secs(20));
    let end = Instant::now() + Duration::from_secs(10);
    while !via_proxy(proxy, &web).1.contains("I am the service") {
        assert!(Instant::now() < end, "the user's request never got through");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut flooder = flooder;
    let end = Instant::now() + Duration::from_secs(40);
    while flooder.try_wait().expect("wait").is_none() {
        if Instant::now() > end {
            let _ = flooder.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = flooder.wait_with_output().expect("flooder");
    let text = String::from_utf8_lossy(&out.stdout);
    let count = |what: &str| -> usize {
        text.lines()
            .find_map(|l| l.strip_prefix(what))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "flooder said: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    };
    let held = count("open-after-2s");
    assert!(
        held <= 100,
        "one user holds at most a quarter of the places: {held}"
    );
    assert_eq!(count("open-after-14s"), 0, "idle connections are closed");
    let log = daemon.log();
    assert!(!log.contains("start limit hit"), "{log}");
    assert_eq!(ctl(&bus, p.path(), &["down"]).code, 0);
}

/// Item 4, the other half: whoever binds the proxy's port first receives
/// every `*.localhost:PORT` request of the other users. A daemon that finds
/// its port held by another user says so where the user looks (`status`,
/// `Warnings` on D-Bus, the journal) and prints no URL on that port.
#[test]
fn a_proxy_port_held_by_another_user_is_a_warning_and_gives_no_urls() {
    use locald_tests::dbus::{ctl, have_dbus_daemon, wait_states, Daemon, DaemonSetup, TestBus};
    if require(am_root(), "needs root to run a squatter as another uid")
        || require(
            have_dbus_daemon(),
            "needs dbus-daemon (apt-get install dbus)",
        )
    {
        return;
    }
    let proxy = locald_tests::free_port();
    let _squatter = Squatter::start(proxy);
    let bus = TestBus::start();
    let _daemon = Daemon::start_with(
        &bus,
        DaemonSetup {
            env: vec![("LOCALD_PROXY_PORT".into(), proxy.to_string())],
            ..DaemonSetup::default()
        },
    );
    let p = TestProject::new(&format!(
        "[project]\nname = \"{}\"\n\n[services.web]\nport = \"auto\"\ncommand = [\"sleep\", \"600\"]\n",
        locald_tests::unique("held")
    ));
    assert_eq!(ctl(&bus, p.path(), &["up"]).code, 0);
    wait_states(&bus, p.path(), &["running"], Duration::from_secs(20));
    let status = ctl(&bus, p.path(), &["status"]);
    assert!(
        status.stderr.contains(&format!(
            "the URL proxy cannot listen on 127.0.0.1:{proxy}: the port is held by uid 4242"
        )),
        "{status:?}"
    );
    assert!(!status.stdout.contains(".localhost"), "{status:?}");
    let warnings = bus.busctl(&[
        "get-property",
        "dev.locald.Locald1",
        "/dev/locald/Locald1",
        "dev.locald.Manager1",
        "Warnings",
    ]);
    assert!(
        String::from_utf8_lossy(&warnings.stdout).contains("held by uid 4242"),
        "{warnings:?}"
    );
    assert_eq!(ctl(&bus, p.path(), &["down"]).code, 0);
}

// ---------------------------------------------------------------------------
// The bus (item 5).

const FAKE_DAEMON: &str = r#"import sys
from jeepney import MessageType, HeaderFields
from jeepney.io.blocking import open_dbus_connection
from jeepney.bus_messages import message_bus
conn = open_dbus_connection(bus=sys.argv[1])
conn.send_and_get_reply(message_bus.RequestName('dev.locald.Locald1'))
print('owned', flush=True)
while True:
    msg = conn.receive()
    if msg.header.message_type == MessageType.method_call:
        with open(sys.argv[2], 'a') as f:
            f.write(str(msg.header.fields.get(HeaderFields.member)) + ' ' + repr(msg.body) + '\n')
"#;

/// Regression (item 5): `locald-ctl` called whoever owned
/// `dev.locald.Locald1`. On a bus shared between users, another user who
/// takes the name while the victim's daemon is not running received the
/// victim's `Up('/home/victim/proj')` and printed escape sequences into
/// the victim's terminal. The owner's uid is now checked first, and
/// nothing is sent to a stranger.
#[test]
fn locald_ctl_never_talks_to_a_daemon_of_another_user() {
    use locald_tests::dbus::{have_dbus_daemon, TestBus};
    use std::io::BufRead;
    if require(
        am_root() && have_dbus_daemon(),
        "needs root (a second user) and dbus-daemon",
    ) {
        return;
    }
    let user = locald_tests::shim::test_user("locald-dbus-t2").expect("second user");
    let bus = TestBus::start_with(true);
    let calls = bus.dir().join("fake-calls.log");
    std::fs::write(&calls, "").expect("log");
    chown(&calls, Some(user.uid), Some(user.gid)).expect("chown");
    let mut fake = locald_tests::KillOnDrop(
        Command::new("setpriv")
            .arg(format!("--reuid={}", user.uid))
            .arg(format!("--regid={}", user.gid))
            .args(["--clear-groups", "/usr/bin/python3", "-c", FAKE_DAEMON])
            .arg(bus.address())
            .arg(&calls)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("fake daemon"),
    );
    let mut first = String::new();
    let _ = std::io::BufReader::new(fake.0.stdout.take().expect("stdout")).read_line(&mut first);
    assert_eq!(first.trim(), "owned", "the fake took the name");

    let p = TestProject::new("[services.web]\ncommand = \"sleep 60\"\n");
    for args in [&["up"][..], &["status"], &["down"], &["images"]] {
        // Bounded: a client that talks to the fake waits for an answer
        // that never comes.
        let mut c = Command::new(bin("locald-ctl"));
        c.args(args)
            .current_dir(p.path())
            .env("LOCALD_BUS_ADDRESS", bus.address())
            .env_remove("DBUS_SESSION_BUS_ADDRESS");
        let out = output_within(c, Duration::from_secs(10));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "dev.locald.Locald1 on this bus is owned by uid {}",
                user.uid
            )),
            "{args:?}: {err}"
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    drop(fake);
    assert_eq!(
        std::fs::read_to_string(&calls).expect("log"),
        "",
        "nothing was sent to the fake daemon"
    );
}
