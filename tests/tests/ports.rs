//! `port = "auto"` end to end, on real sockets: a daemon gives each service a
//! free port, passes it as `PORT`/`PORT_NAME`, substitutes it into another
//! service's `env`, checks health on it, shows it in `status` (read from the
//! `Ports` D-Bus property), keeps it across a `kill -9` of the daemon, and
//! never gives two projects the same one.

use std::path::Path;
use std::time::Duration;

use locald_tests::dbus::{
    ctl, have_dbus_daemon, status_json, wait_states, Daemon, DaemonSetup, TestBus,
};
use locald_tests::{require, unique, TestProject};
use locald_tests::{wait_until, Reaper};
use nix::sys::signal::Signal;

const UP: &[&str] = &["healthy", "running"];

/// `api` listens on its auto port (a real socket: the tcp health check on
/// "auto" passes only then); `web` has named ports and gets api's port in
/// its env; each writes what it saw into the project directory.
fn project(marker: &str) -> TestProject {
    let toml = format!(
        r#"[project]
name = "{name}"

[services.api]
port = "auto"
command = ["python3", "-c", "import os,socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', int(os.environ['PORT']))); s.listen(); open('api.out','w').write(os.environ['PORT']); time.sleep(1000)", "{marker}-api"]
health = {{ tcp = "auto", interval = "100ms" }}
stop_timeout = "2s"

[services.web]
ports = {{ http = "auto", admin = 19001 }}
depends_on = ["api"]
env = {{ API_URL = "http://127.0.0.1:${{services.api.port}}/v1" }}
command = ["sh", "-c", "echo \"$PORT $PORT_HTTP $PORT_ADMIN $API_URL\" > web.out; sleep 1000; true", "{marker}-web"]
stop_timeout = "2s"
"#,
        name = unique("ports"),
    );
    TestProject::new(&toml)
}

/// Each service's ports from `status --json`.
fn ports(bus: &TestBus, dir: &Path) -> Vec<(String, serde_json::Value)> {
    status_json(bus, dir)["services"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    (
                        s["name"].as_str().unwrap_or_default().to_owned(),
                        s["ports"].clone(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn port_of(ports: &[(String, serde_json::Value)], service: &str, var: &str) -> u16 {
    ports
        .iter()
        .find(|(n, _)| n == service)
        .and_then(|(_, p)| p[var].as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("{service} has no {var}: {ports:?}"))
}

#[test]
fn auto_ports_reach_env_health_and_status_survive_kill_9_and_differ_between_projects() {
    if require(
        have_dbus_daemon(),
        "dbus-daemon is not installed (tests/setup-debian.sh installs it)",
    ) {
        return;
    }
    let bus = TestBus::start();
    let state = bus.dir().join("kept-state");
    let marker = unique("ports-marker");
    let _reaper = Reaper(marker.clone());
    let a = project(&format!("{marker}-a"));
    let b = project(&format!("{marker}-b"));

    let mut first = Daemon::start_with(
        &bus,
        DaemonSetup {
            state_dir: Some(state.clone()),
            ..Default::default()
        },
    );
    let up = ctl(&bus, a.path(), &["up"]);
    assert_eq!(up.code, 0, "{up:?}");
    wait_states(&bus, a.path(), UP, Duration::from_secs(15));
    wait_until(Duration::from_secs(5), "web.out", || {
        !a.read("web.out").is_empty()
    });

    let before = ports(&bus, a.path());
    let api = port_of(&before, "api", "PORT");
    let http = port_of(&before, "web", "PORT_HTTP");
    assert_eq!(
        port_of(&before, "web", "PORT"),
        http,
        "PORT is the first of `ports`"
    );
    assert_eq!(port_of(&before, "web", "PORT_ADMIN"), 19001);
    assert_ne!(api, http);
    assert_eq!(a.read("api.out"), api.to_string());
    assert_eq!(
        a.read("web.out").trim(),
        format!("{http} {http} 19001 http://127.0.0.1:{api}/v1")
    );
    // The table shows them too.
    let table = ctl(&bus, a.path(), &["status"]);
    assert!(table.stdout.contains("PORT"), "{}", table.stdout);
    assert!(table.stdout.contains(&api.to_string()), "{}", table.stdout);
    assert!(
        table.stdout.contains(&format!("http:{http}")),
        "{}",
        table.stdout
    );

    // kill -9: the old services keep running (and holding the port) until
    // the next daemon stops them; the port must come back the same.
    first.kill_hard();
    wait_until(Duration::from_secs(5), "the name to be released", || {
        !bus.name_has_owner()
    });
    std::fs::remove_file(a.join("api.out")).expect("rm api.out");
    let _second = Daemon::start_with(
        &bus,
        DaemonSetup {
            state_dir: Some(state),
            ..Default::default()
        },
    );
    wait_until(Duration::from_secs(15), "the project to come back", || {
        ctl(&bus, a.path(), &["status", "--json"]).code == 0
    });
    wait_states(&bus, a.path(), UP, Duration::from_secs(15));
    wait_until(Duration::from_secs(5), "api.out again", || {
        !a.read("api.out").is_empty()
    });
    let after = ports(&bus, a.path());
    assert_eq!(before, after, "ports changed across kill -9");
    assert_eq!(a.read("api.out"), api.to_string());

    // A second project with the same file gets other auto ports (its fixed
    // admin port is its own business).
    let up = ctl(&bus, b.path(), &["up"]);
    assert_eq!(up.code, 0, "{up:?}");
    let other = ports(&bus, b.path());
    let b_api = port_of(&other, "api", "PORT");
    let b_http = port_of(&other, "web", "PORT_HTTP");
    for p in [b_api, b_http] {
        assert!(![api, http].contains(&p), "project b got a's port {p}");
    }
    assert_eq!(ctl(&bus, b.path(), &["down"]).code, 0);

    // A reload that changes nothing keeps the services (and their ports).
    let pid_before = status_json(&bus, a.path())["services"][0]["main_pid"].clone();
    let reload = ctl(&bus, a.path(), &["reload"]);
    assert_eq!(reload.code, 0, "{reload:?}");
    assert_eq!(
        status_json(&bus, a.path())["services"][0]["main_pid"],
        pid_before
    );
    assert_eq!(ports(&bus, a.path()), before);
    assert_eq!(ctl(&bus, a.path(), &["down"]).code, 0);
}

#[test]
fn foreground_up_passes_port_and_substitutes_it() {
    let marker = unique("ports-fg");
    let _reaper = Reaper(marker.clone());
    let p = project(&marker);
    let state = tempfile::tempdir().expect("tmp");
    let mut child = std::process::Command::new(locald_tests::bin("locald"))
        .arg("up")
        .current_dir(p.path())
        .env("XDG_STATE_HOME", state.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("locald up");
    wait_until(Duration::from_secs(15), "web.out", || {
        !p.read("web.out").is_empty()
    });
    let api: u16 = p.read("api.out").trim().parse().expect("api port");
    assert!(p
        .read("web.out")
        .contains(&format!("http://127.0.0.1:{api}/v1")));
    let book = std::fs::read_to_string(state.path().join("locald/ports.json")).expect("ports.json");
    assert!(book.contains(&api.to_string()), "{book}");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(0)),
        Signal::SIGTERM,
    );
    let _ = child.wait();
}
