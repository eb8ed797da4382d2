//! `locald-ctl dashboard` as a person meets it: a real headless Chromium
//! driven through WebDriver (Debian's `chromium-driver` and
//! `python3-selenium`, script in `tests/browser/dashboard.py`) against a real
//! daemon on a private bus writing to a private journald, while `locald-ctl`
//! in a "terminal" changes things; and the HTTP gate tried with bad
//! requests the way a hostile local user or a DNS-rebinding page would.
//!
//! Screenshots (running, building, failed, an error, narrow and dark) are
//! written under `target/tmp/dashboard/` for a person to look at.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use locald_tests::dbus::{have_dbus_daemon, wait_states, Daemon, DaemonSetup, TestBus};
use locald_tests::journald::Journald;
use locald_tests::{bin, pids_with, require, unique, TestProject};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const UP: &[&str] = &["running", "healthy"];

/// The dashboard process; interrupted on drop.
struct Dashboard {
    child: Child,
    url: String,
    port: u16,
    token: String,
}

impl Dashboard {
    fn start(bus: &TestBus, journal: Option<&Journald>) -> Self {
        let mut cmd = Command::new(bin("locald-ctl"));
        cmd.args(["dashboard", "--no-open", "--port", "0"])
            .env("LOCALD_BUS_ADDRESS", bus.address())
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .env_remove("DISPLAY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(j) = journal {
            cmd.env("LOCALD_JOURNAL_NAMESPACE", j.namespace());
        }
        let mut child = cmd.spawn().expect("spawn locald-ctl dashboard");
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut first)
            .expect("the URL line");
        let url = first.trim().to_owned();
        let rest = url
            .strip_prefix("http://127.0.0.1:")
            .unwrap_or_else(|| panic!("first line is the URL: {url:?}"));
        let (port, token) = rest.split_once("/#token=").expect("port and token");
        assert_eq!(token.len(), 64, "{url}");
        Self {
            port: port.parse().expect("a port"),
            token: token.to_owned(),
            url,
            child,
        }
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT);
        let _ = self.child.wait();
    }
}

/// Kills a test's leftover processes even when it fails halfway.
struct Reaper(String);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in pids_with(&self.0) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// One raw HTTP/1.1 request, as any local program could send it; the status
/// code and the whole answer.
fn http(port: u16, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(request.as_bytes()).expect("send");
    let mut out = Vec::new();
    // The event stream never ends: read what comes within the timeout.
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") && request.contains("/api/events") {
                    break;
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

fn get(port: u16, path: &str, headers: &str) -> (u16, String) {
    http(
        port,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}Connection: close\r\n\r\n"
        ),
    )
}

fn post(port: u16, host: &str, headers: &str, body: &str) -> (u16, String) {
    http(
        port,
        &format!(
            "POST /api/action HTTP/1.1\r\nHost: {host}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

fn project(marker: &str) -> TestProject {
    let p = TestProject::new(&format!(
        r#"[project]
name = "{}"

[services.web]
build = "sh build.sh"
command = ["sh", "-c", "echo \"<script>alert('x')</script>\"; printf '\\033[1;31mred bold\\033[0m plain\\n'; echo to-stderr >&2; sleep 1000; true", "{marker}-web"]
stop_timeout = "2s"

[services.db]
command = ["sh", "-c", "seq -f 'db line %g' 1 450; echo db ready; sleep 1000; true", "{marker}-db"]
stop_timeout = "2s"
"#,
        unique("dash")
    ));
    // Three steps (checking sources, running this, saving): the middle one
    // lasts long enough to be seen; `fail` in the directory breaks it.
    p.write(
        "build.sh",
        "echo compiling step one\nsleep 2\nif [ -f fail ]; then echo 'broken build: missing semicolon' >&2; exit 3; fi\necho built\n",
    );
    p
}

fn out_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("output dir");
    d
}

fn have_browser() -> bool {
    Path::new("/usr/bin/chromium").exists()
        && Path::new("/usr/bin/chromedriver").exists()
        && Command::new("/usr/bin/python3")
            .args(["-c", "import selenium"])
            .status()
            .is_ok_and(|s| s.success())
}

#[test]
fn browser_shows_and_drives_a_project_live() {
    if require(
        have_dbus_daemon(),
        "dbus-daemon is not installed (tests/setup-debian.sh)",
    ) || require(
        have_browser(),
        "chromium, chromium-driver and python3-selenium are not installed (tests/setup-debian.sh)",
    ) {
        return;
    }
    let journal = match Journald::start_or_skip("browser_shows_and_drives_a_project_live") {
        Ok(Some(j)) => j,
        Ok(None) => return,
        Err(e) => panic!("{e:#}"),
    };
    let bus = TestBus::start();
    let _daemon = Daemon::start_with(
        &bus,
        DaemonSetup {
            env: vec![(
                "LOCALD_JOURNAL_SOCKET".into(),
                journal.socket().display().to_string(),
            )],
            ..DaemonSetup::default()
        },
    );
    let marker = unique("dash-marker");
    let _reaper = Reaper(marker.clone());
    let p = project(&marker);
    let name = locald::config::load_project(p.path()).expect("valid").name;
    let up = locald_tests::dbus::ctl(&bus, p.path(), &["up"]);
    assert_eq!(up.code, 0, "{up:?}");
    wait_states(&bus, p.path(), UP, Duration::from_secs(20));

    let dash = Dashboard::start(&bus, Some(&journal));
    let out = out_dir();
    let run = Command::new("/usr/bin/python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/dashboard.py"))
        .env("DASH_URL", &dash.url)
        .env("DASH_OUT", &out)
        .env("DASH_PROJECT", &name)
        .env("DASH_DIR", p.path())
        .env("DASH_CTL", bin("locald-ctl"))
        .env("LOCALD_BUS_ADDRESS", bus.address())
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .output()
        .expect("run tests/browser/dashboard.py");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    println!("{stdout}");
    assert!(
        run.status.success(),
        "browser test failed:\n{stdout}\n{stderr}"
    );
    for shot in ["running.png", "building.png", "failed.png"] {
        let png = std::fs::read(out.join(shot)).unwrap_or_default();
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
            "{shot} is a real screenshot"
        );
    }
    eprintln!("screenshots in {}", out.display());
}

#[test]
fn the_gate_refuses_bad_requests() {
    if require(
        have_dbus_daemon(),
        "dbus-daemon is not installed (tests/setup-debian.sh)",
    ) {
        return;
    }
    let bus = TestBus::start();
    let _daemon = Daemon::start(&bus);
    let marker = unique("dash-gate");
    let _reaper = Reaper(marker.clone());
    let p = project(&marker);
    let name = locald::config::load_project(p.path()).expect("valid").name;
    assert_eq!(locald_tests::dbus::ctl(&bus, p.path(), &["up"]).code, 0);
    wait_states(&bus, p.path(), UP, Duration::from_secs(20));
    let d = Dashboard::start(&bus, None);
    let port = d.port;
    let good = format!("X-Locald-Token: {}\r\n", d.token);

    // The page itself loads without the token, with a strict policy.
    let (code, page) = get(port, "/", "");
    assert_eq!(code, 200, "{page}");
    assert!(
        page.to_ascii_lowercase()
            .contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{page}"
    );
    assert!(!page.contains(&d.token), "the token is never in the page");

    // Every /api/ call needs the token: 401 without, 403 wrong.
    for path in ["/api/state", "/api/events", "/api/logs?project=x"] {
        assert_eq!(get(port, path, "").0, 401, "{path} without a token");
        assert_eq!(
            get(port, path, "X-Locald-Token: 0000\r\n").0,
            403,
            "{path} with a wrong token"
        );
        let wrong_same_length = format!("X-Locald-Token: {}\r\n", "0".repeat(64));
        assert_eq!(get(port, path, &wrong_same_length).0, 403, "{path}");
    }
    let sep = "?";
    assert_eq!(
        get(port, &format!("/api/state{sep}token=nope"), "").0,
        403,
        "a wrong token as a query parameter"
    );
    let (code, state) = get(port, "/api/state", &good);
    assert_eq!(code, 200, "{state}");
    assert!(state.contains(&name), "{state}");
    let (code, events) = get(port, &format!("/api/events?token={}", d.token), "");
    assert_eq!(code, 200, "{events}");
    assert!(events.contains("text/event-stream"), "{events}");

    // DNS rebinding: the right address under another name is refused,
    // static files included.
    for host in [
        format!("evil.example:{port}"),
        format!("127.0.0.1.evil.example:{port}"),
        "127.0.0.1".to_owned(),
        format!("localhost:{}", port.wrapping_add(1)),
        String::new(),
    ] {
        let (code, text) = http(
            port,
            &format!("GET /api/state HTTP/1.1\r\nHost: {host}\r\n{good}Connection: close\r\n\r\n"),
        );
        assert_eq!(code, 400, "Host {host:?}: {text}");
        let (code, _) = http(
            port,
            &format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(code, 400, "Host {host:?} for the page");
    }
    assert_eq!(
        http(
            port,
            &format!("GET /api/state HTTP/1.1\r\nHost: localhost:{port}\r\n{good}Connection: close\r\n\r\n")
        )
        .0,
        200
    );

    // Actions: POST only, same origin only, JSON only, token required.
    let body = format!(r#"{{"action":"stop","project":"{name}","service":"db"}}"#);
    let host = format!("127.0.0.1:{port}");
    let origin = format!("Origin: http://{host}\r\n");
    let json = "Content-Type: application/json\r\n";
    assert_eq!(get(port, "/api/action", &good).0, 405, "GET of an action");
    assert_eq!(post(port, &host, &format!("{origin}{json}"), &body).0, 401);
    assert_eq!(
        post(
            port,
            &host,
            &format!("X-Locald-Token: bad\r\n{origin}{json}"),
            &body
        )
        .0,
        403
    );
    assert_eq!(
        post(port, &host, &format!("{good}{json}"), &body).0,
        403,
        "no Origin"
    );
    assert_eq!(
        post(
            port,
            &host,
            &format!("{good}Origin: http://evil.example\r\n{json}"),
            &body
        )
        .0,
        403,
        "another origin"
    );
    assert_eq!(
        post(
            port,
            &host,
            &format!("{good}{origin}Content-Type: text/plain\r\n"),
            &body
        )
        .0,
        415,
        "a form-like body"
    );
    assert_eq!(
        post(
            port,
            &host,
            &format!("{good}{origin}{json}"),
            &"x".repeat(20_000)
        )
        .0,
        413,
        "a huge body"
    );
    assert_eq!(
        post(port, &host, &format!("{good}{origin}{json}"), "{not json").0,
        400
    );
    // Nothing above stopped it.
    let st = locald_tests::dbus::states(&bus, p.path());
    assert!(
        st.iter()
            .any(|(n, s)| n == "db" && UP.contains(&s.as_str())),
        "{st:?}"
    );
    // A named error from the daemon comes back named.
    let (code, text) = post(
        port,
        &host,
        &format!("{good}{origin}{json}"),
        &format!(r#"{{"action":"stop","project":"{name}","service":"nope"}}"#),
    );
    assert_eq!(code, 422, "{text}");
    assert!(text.contains(r#""name":"NoSuchService""#), "{text}");
    // The right request works.
    let (code, text) = post(port, &host, &format!("{good}{origin}{json}"), &body);
    assert_eq!(code, 200, "{text}");
    wait_states(
        &bus,
        p.path(),
        &["running", "healthy", "stopped"],
        Duration::from_secs(10),
    );
    let st = locald_tests::dbus::states(&bus, p.path());
    assert!(
        st.iter().any(|(n, s)| n == "db" && s == "stopped"),
        "{st:?}"
    );

    // Event streams whose readers went away while events flowed: the
    // dashboard lives on (a write to a closed socket is EPIPE, not SIGPIPE).
    for _ in 0..3 {
        let _ = get(port, &format!("/api/events?token={}", d.token), "");
    }
    for verb in ["start", "stop", "start"] {
        let body = format!(r#"{{"action":"{verb}","project":"{name}","service":"db"}}"#);
        assert_eq!(
            post(port, &host, &format!("{good}{origin}{json}"), &body).0,
            200
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        get(port, "/api/state", &good).0,
        200,
        "the dashboard lives on"
    );

    // A local user holding many idle connections shuts others out only
    // while they last, and never the dashboard's own stop.
    let held: Vec<TcpStream> = (0..80)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get(port, "/api/state", &good).0, 0, "refused while full");
    drop(held);
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while get(port, "/api/state", &good).0 != 200 {
        assert!(
            std::time::Instant::now() < end,
            "served again once they went"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // journalctl never sees an option from a query.
    let (code, _) = get(port, "/api/logs?project=--output%3Dcat", &good);
    assert_eq!(code, 400);
    let (code, _) = get(port, "/api/logs?project=a&before=--since%3Dtoday", &good);
    assert_eq!(code, 400);
    assert_eq!(locald_tests::dbus::ctl(&bus, p.path(), &["down"]).code, 0);
}

#[test]
fn the_page_follows_the_daemon_away_and_back() {
    if require(
        have_dbus_daemon(),
        "dbus-daemon is not installed (tests/setup-debian.sh)",
    ) {
        return;
    }
    let bus = TestBus::start();
    let daemon = Daemon::start(&bus);
    let marker = unique("dash-away");
    let _reaper = Reaper(marker.clone());
    let p = project(&marker);
    let name = locald::config::load_project(p.path()).expect("valid").name;
    assert_eq!(locald_tests::dbus::ctl(&bus, p.path(), &["up"]).code, 0);
    wait_states(&bus, p.path(), UP, Duration::from_secs(20));
    let d = Dashboard::start(&bus, None);
    let good = format!("X-Locald-Token: {}\r\n", d.token);
    let state = || {
        let (code, text) = get(d.port, "/api/state", &good);
        assert_eq!(code, 200, "{text}");
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        serde_json::from_str::<serde_json::Value>(body).expect("JSON state")
    };
    let wait_for = |what: &str, f: &dyn Fn(&serde_json::Value) -> bool| {
        let end = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let s = state();
            if f(&s) {
                return;
            }
            assert!(std::time::Instant::now() < end, "{what}: {s}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for("the project", &|s| {
        s["connected"] == true && s["projects"][&name].is_object()
    });
    // The daemon stops: the page is told, and the dashboard does not call
    // (and so re-activate) a daemon that left.
    drop(daemon);
    wait_for("daemon gone", &|s| s["connected"] == false);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!bus.name_has_owner(), "nobody brought the daemon back");
    // A new daemon restores the project; the page fills in again.
    let _daemon = Daemon::start(&bus);
    wait_for("daemon back with the project", &|s| {
        s["connected"] == true
            && s["projects"][&name]["services"]
                .as_array()
                .is_some_and(|a| {
                    a.iter()
                        .all(|x| UP.contains(&x["state"].as_str().unwrap_or_default()))
                })
    });
    assert!(d.port > 0);
    assert_eq!(locald_tests::dbus::ctl(&bus, p.path(), &["down"]).code, 0);
}
