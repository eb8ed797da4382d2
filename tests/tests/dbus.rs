//! The control plane as users and editors meet it: `locald daemon` on a
//! private bus, driven through `locald-ctl`, through clients nobody here
//! wrote (`busctl`, `dbus-monitor`) and through the `locald-api` proxies;
//! sd-notify on a test-owned socket; a SIGKILLed daemon coming back without
//! duplicates; named errors for bad calls.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use locald_api::{Manager1Proxy, Service1Proxy};
use locald_tests::dbus::{
    ctl, have_dbus_daemon, states, status_json, wait_states, Daemon, DaemonSetup, TestBus,
};
use locald_tests::{pids_with, require, unique, TestProject};
use locald_tests::{wait_until, Reaper};
use nix::sys::signal::Signal;

const UP: &[&str] = &["running", "healthy"];

fn no_bus() -> bool {
    require(
        have_dbus_daemon(),
        "dbus-daemon is not installed (tests/setup-debian.sh installs it)",
    )
}

/// A project of long-running services whose processes carry `marker` in
/// their command line (the `sh` stays as the parent because of `; true`).
fn sleepers(marker: &str, names: &[&str]) -> TestProject {
    let mut toml = format!("[project]\nname = \"{}\"\n", unique("dbus"));
    for n in names {
        toml.push_str(&format!(
            "\n[services.{n}]\ncommand = [\"sh\", \"-c\", \"sleep 1000; true\", \"{marker}-{n}\"]\nstop_timeout = \"2s\"\n"
        ));
    }
    TestProject::new(&toml)
}

fn project_name(p: &TestProject) -> String {
    locald::config::load_project(p.path())
        .expect("test project is valid")
        .name
}

#[test]
fn ctl_up_status_stop_start_restart_down() {
    if no_bus() {
        return;
    }
    let bus = TestBus::start();
    let _daemon = Daemon::start(&bus);
    let marker = unique("ctl-marker");
    let _reaper = Reaper(marker.clone());
    let p = sleepers(&marker, &["web", "worker"]);

    let up = ctl(&bus, p.path(), &["up"]);
    assert_eq!(up.code, 0, "{up:?}");
    assert!(up.stdout.contains("is up"), "{up:?}");
    wait_states(&bus, p.path(), UP, Duration::from_secs(10));
    assert_eq!(pids_with(&marker).len(), 2, "one process per service");

    let table = ctl(&bus, p.path(), &["status"]);
    assert_eq!(table.code, 0, "{table:?}");
    for needle in [
        "SERVICE",
        "STATE",
        "PID",
        "UPTIME",
        "RESTARTS",
        "LAST BUILD",
        "web",
        "worker",
    ] {
        assert!(
            table.stdout.contains(needle),
            "{needle} missing:\n{}",
            table.stdout
        );
    }
    let json = status_json(&bus, p.path());
    assert_eq!(json["name"], project_name(&p));
    assert!(
        json["services"][0]["main_pid"].as_u64().unwrap_or(0) > 0,
        "{json}"
    );
    // No systemd user manager on this bus: services are locald's children.
    assert_eq!(json["services"][0]["runtime"], "host", "{json}");

    let stop = ctl(&bus, p.path(), &["stop", "web"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    wait_until(Duration::from_secs(10), "web to stop", || {
        states(&bus, p.path()).contains(&("web".into(), "stopped".into()))
    });
    assert_eq!(pids_with(&format!("{marker}-web")).len(), 0);

    let start = ctl(&bus, p.path(), &["start", "web"]);
    assert_eq!(start.code, 0, "{start:?}");
    wait_states(&bus, p.path(), UP, Duration::from_secs(10));

    let before = pids_with(&format!("{marker}-worker"));
    let restart = ctl(&bus, p.path(), &["restart", "worker"]);
    assert_eq!(restart.code, 0, "{restart:?}");
    wait_until(Duration::from_secs(10), "worker to run again", || {
        let now = pids_with(&format!("{marker}-worker"));
        now.len() == 1 && now != before
    });

    let missing = ctl(&bus, p.path(), &["stop", "nope"]);
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(missing.stderr.contains("NoSuchService"), "{missing:?}");

    let down = ctl(&bus, p.path(), &["down"]);
    assert_eq!(down.code, 0, "{down:?}");
    wait_until(Duration::from_secs(10), "services to be gone", || {
        pids_with(&marker).is_empty()
    });
    let after = ctl(&bus, p.path(), &["status"]);
    assert_eq!(after.code, 1, "{after:?}");
    assert!(after.stderr.contains("not up"), "{after:?}");
}

#[test]
fn busctl_introspects_calls_up_and_reads_state() {
    if no_bus() {
        return;
    }
    let bus = TestBus::start();
    let _daemon = Daemon::start(&bus);
    let marker = unique("busctl-marker");
    let _reaper = Reaper(marker.clone());
    let p = sleepers(&marker, &["api"]);
    let name = project_name(&p);

    let intro = bus.busctl(&["introspect", locald_api::BUS_NAME, locald_api::MANAGER_PATH]);
    let text = String::from_utf8_lossy(&intro.stdout);
    for needle in [
        "dev.locald.Manager1",
        ".Up",
        ".BuildProgress",
        ".Projects",
        "org.freedesktop.DBus.ObjectManager",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }

    let dir = p.path().to_str().expect("utf-8 temp path");
    let call = bus.busctl(&[
        "call",
        locald_api::BUS_NAME,
        locald_api::MANAGER_PATH,
        locald_api::MANAGER_INTERFACE,
        "Up",
        "s",
        dir,
    ]);
    let reply = String::from_utf8_lossy(&call.stdout).trim().to_owned();
    assert_eq!(
        reply,
        format!("o \"{}\"", locald_api::project_path(&name).as_str()),
        "{call:?}"
    );

    let service = locald_api::service_path(&name, "api");
    wait_until(Duration::from_secs(10), "State running via busctl", || {
        let out = bus.busctl(&[
            "get-property",
            locald_api::BUS_NAME,
            service.as_str(),
            locald_api::SERVICE_INTERFACE,
            "State",
        ]);
        String::from_utf8_lossy(&out.stdout).trim() == "s \"running\""
    });
    let tree = bus.busctl(&["tree", locald_api::BUS_NAME]);
    assert!(
        String::from_utf8_lossy(&tree.stdout).contains(service.as_str()),
        "{tree:?}"
    );
}

#[test]
fn properties_changed_arrives_when_a_service_crashes() {
    if no_bus() {
        return;
    }
    let bus = TestBus::start();
    let _daemon = Daemon::start(&bus);
    let p = TestProject::new(&format!(
        "[project]\nname = \"{}\"\n\n[services.crash]\ncommand = \"sleep 0.5; exit 3\"\nrestart = \"never\"\n",
        unique("crash")
    ));
    let name = project_name(&p);
    let out_file = bus.dir().join("monitor.out");
    let mut monitor = Command::new("dbus-monitor")
        .arg("--address")
        .arg(bus.address())
        .arg("type='signal',interface='org.freedesktop.DBus.Properties',member='PropertiesChanged',path_namespace='/dev/locald/Locald1'")
        .stdout(std::fs::File::create(&out_file).expect("monitor out"))
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dbus-monitor");
    // dbus-monitor prints its own NameAcquired once it is listening.
    wait_until(Duration::from_secs(5), "dbus-monitor to listen", || {
        std::fs::metadata(&out_file).is_ok_and(|m| m.len() > 0)
    });

    let up = ctl(&bus, p.path(), &["up"]);
    assert_eq!(up.code, 0, "{up:?}");
    let path = locald_api::service_path(&name, "crash");
    let seen = || std::fs::read_to_string(&out_file).unwrap_or_default();
    let end = Instant::now() + Duration::from_secs(15);
    let crashed = loop {
        let text = seen();
        // One signal for the crash: on the service's path, State moving to
        // failed (or error) and ExitStatus 3.
        let hit = text.split("signal ").any(|sig| {
            sig.contains(&format!("path={};", path.as_str()))
                && sig.contains("string \"ExitStatus\"")
                && sig.contains("int32 3")
        });
        let failed = text.contains("string \"failed\"") || text.contains("string \"error\"");
        if hit && failed {
            break true;
        }
        if Instant::now() > end {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = monitor.kill();
    let _ = monitor.wait();
    assert!(
        crashed,
        "no PropertiesChanged for the crash; monitor saw:\n{}",
        seen()
    );
}

#[test]
fn sd_notify_ready_status_watchdog_and_stopping() {
    if no_bus() {
        return;
    }
    let bus = TestBus::start();
    let sock_path = bus.dir().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut daemon = Daemon::start_with(
        &bus,
        DaemonSetup {
            env: vec![
                ("NOTIFY_SOCKET".into(), sock_path.display().to_string()),
                ("WATCHDOG_USEC".into(), "200000".into()),
            ],
            ..Default::default()
        },
    );
    let mut messages: Vec<String> = Vec::new();
    let recv_until = |messages: &mut Vec<String>, what: &str, f: &dyn Fn(&[String]) -> bool| {
        let end = Instant::now() + Duration::from_secs(10);
        let mut buf = vec![0u8; 4096];
        while !f(messages) {
            assert!(Instant::now() < end, "never got {what}; got {messages:?}");
            if let Ok(n) = sock.recv(&mut buf) {
                messages.extend(
                    String::from_utf8_lossy(&buf[..n])
                        .lines()
                        .map(str::to_owned),
                );
            }
        }
    };
    recv_until(&mut messages, "READY=1", &|m| {
        m.iter().any(|l| l == "READY=1")
    });
    assert!(
        messages.iter().any(|l| l.starts_with("STATUS=0 projects")),
        "{messages:?}"
    );
    recv_until(&mut messages, "WATCHDOG=1", &|m| {
        m.iter().filter(|l| *l == "WATCHDOG=1").count() >= 2
    });

    let marker = unique("notify-marker");
    let _reaper = Reaper(marker.clone());
    let p = sleepers(&marker, &["one"]);
    assert_eq!(ctl(&bus, p.path(), &["up"]).code, 0);
    recv_until(&mut messages, "STATUS with the running service", &|m| {
        m.iter()
            .any(|l| l == "STATUS=1 project, 1 running, 0 failed")
    });

    daemon.signal(Signal::SIGTERM);
    recv_until(&mut messages, "STOPPING=1", &|m| {
        m.iter().any(|l| l == "STOPPING=1")
    });
    let status = daemon
        .wait(Duration::from_secs(15))
        .expect("daemon exits on SIGTERM");
    assert!(status.success(), "{status}");
    assert!(pids_with(&marker).is_empty(), "SIGTERM stops the services");
}

#[test]
fn sigkilled_daemon_comes_back_with_each_service_once() {
    if no_bus() {
        return;
    }
    let bus = TestBus::start();
    let state = bus.dir().join("kept-state");
    let marker = unique("restore-marker");
    let _reaper = Reaper(marker.clone());
    let p = sleepers(&marker, &["web", "db"]);

    let mut first = Daemon::start_with(
        &bus,
        DaemonSetup {
            state_dir: Some(state.clone()),
            ..Default::default()
        },
    );
    assert_eq!(ctl(&bus, p.path(), &["up"]).code, 0);
    wait_states(&bus, p.path(), UP, Duration::from_secs(10));
    assert_eq!(pids_with(&marker).len(), 2);

    first.kill_hard();
    wait_until(Duration::from_secs(5), "the name to be released", || {
        !bus.name_has_owner()
    });

    let _second = Daemon::start_with(
        &bus,
        DaemonSetup {
            state_dir: Some(state),
            ..Default::default()
        },
    );
    wait_until(Duration::from_secs(15), "the project to come back", || {
        ctl(&bus, p.path(), &["status", "--json"]).code == 0
    });
    wait_states(&bus, p.path(), UP, Duration::from_secs(15));
    // Let any duplicate show itself before counting.
    std::thread::sleep(Duration::from_millis(500));
    let web = pids_with(&format!("{marker}-web"));
    let db = pids_with(&format!("{marker}-db"));
    assert_eq!((web.len(), db.len()), (1, 1), "web {web:?}, db {db:?}");

    assert_eq!(ctl(&bus, p.path(), &["down"]).code, 0);
    wait_until(Duration::from_secs(10), "no orphans after down", || {
        pids_with(&marker).is_empty()
    });
}

fn error_name(e: &locald_api::Error) -> String {
    e.short_name()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_calls_return_named_errors_and_the_daemon_keeps_serving() {
    if no_bus() {
        return;
    }
    let bus = TestBus::start();
    let _daemon = Daemon::start(&bus);
    let conn = bus.connect().await;
    let m = Manager1Proxy::new(&conn).await.expect("proxy");

    let e = m.up("relative/dir").await.expect_err("relative path");
    assert_eq!(error_name(&e), "InvalidArgument");

    let e = m
        .up("/nonexistent/locald-test")
        .await
        .expect_err("missing dir");
    assert_eq!(error_name(&e), "ReadFailed", "{e:?}");

    let file = TestProject::new("[services.x]\ncommand = \"true\"\n");
    let e = m
        .up(file.join("locald.toml").to_str().expect("utf-8"))
        .await
        .expect_err("a file");
    assert_eq!(error_name(&e), "NotADirectory", "{e:?}");

    let empty = tempfile::tempdir().expect("tempdir");
    let e = m
        .up(empty.path().to_str().expect("utf-8"))
        .await
        .expect_err("no locald.toml");
    assert_eq!(error_name(&e), "ConfigNotFound", "{e:?}");

    let broken = TestProject::new("[services.web]\ncomand = \"x\"\n");
    let e = m
        .up(broken.path().to_str().expect("utf-8"))
        .await
        .expect_err("broken config");
    assert_eq!(error_name(&e), "ConfigInvalid", "{e:?}");
    let canonical = broken.path().canonicalize().expect("canonical");
    assert!(
        e.message()
            .starts_with(&format!("{}/locald.toml:2:1: ", canonical.display())),
        "{}",
        e.message()
    );

    let e = m.down("nope").await.expect_err("unknown project");
    assert_eq!(error_name(&e), "NoSuchProject");
    let e = m.get_project("nope").await.expect_err("unknown project");
    assert_eq!(error_name(&e), "NoSuchProject");

    // Still serving: a good project comes up and answers.
    let marker = unique("errors-marker");
    let _reaper = Reaper(marker.clone());
    let good = sleepers(&marker, &["web"]);
    let name = project_name(&good);
    let path = m
        .up(good.path().to_str().expect("utf-8"))
        .await
        .expect("good project up");
    assert_eq!(path, locald_api::project_path(&name));
    let e = m
        .start_service(&name, "nope")
        .await
        .expect_err("unknown service");
    assert_eq!(error_name(&e), "NoSuchService");
    let e = m.build(&name, "web", false).await.expect_err("no build");
    assert_eq!(error_name(&e), "NoBuild");
    let e = m
        .get_service(&name, "nope")
        .await
        .expect_err("unknown service");
    assert_eq!(error_name(&e), "NoSuchService");
    let svc = m.get_service(&name, "web").await.expect("service object");
    assert_eq!(svc, locald_api::service_path(&name, "web"));
    assert!(!m.version().await.expect("Version").is_empty());
    let projects = m.list_projects().await.expect("ListProjects");
    assert_eq!(projects.len(), 1);
    assert_eq!(
        Path::new(&projects[0].path),
        good.path().canonicalize().expect("canonical")
    );
    m.down(&name).await.expect("down");
}

#[test]
fn ctl_reports_unreachable_daemon_and_config_errors() {
    if no_bus() {
        return;
    }
    let bus = TestBus::start();
    let p = TestProject::new("[services.web]\ncommand = \"sleep 100\"\n");

    let out = ctl(&bus, p.path(), &["status"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("cannot reach the daemon: start it with `systemctl --user start locald`"),
        "{out:?}"
    );
    let out = ctl(&bus, p.path(), &["up"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("systemctl --user start locald"),
        "{out:?}"
    );

    let _daemon = Daemon::start(&bus);
    let broken = TestProject::new("[services.web]\ncomand = \"x\"\n");
    let out = ctl(&bus, broken.path(), &["up"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("locald.toml:2:1"), "{out:?}");
    assert!(
        out.stderr.contains("command"),
        "the hint names the key: {out:?}"
    );

    let out = ctl(&bus, broken.path(), &["check"]);
    assert_eq!(out.code, 2, "{out:?}");
    let out = ctl(&bus, p.path(), &["check"]);
    assert_eq!(out.code, 0, "{out:?}");

    let out = ctl(&bus, p.path(), &["no-such-command"]);
    assert_eq!(out.code, 2, "{out:?}");
    let out = ctl(&bus, p.path(), &["-p", "nope", "down"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("NoSuchProject"), "{out:?}");

    let out = ctl(&bus, p.path(), &["completions", "bash"]);
    assert_eq!(out.code, 0);
    assert!(out.stdout.contains("locald-ctl"), "{out:?}");
    let out = ctl(&bus, p.path(), &["man"]);
    assert_eq!(out.code, 0);
    assert!(out.stdout.contains(".TH locald-ctl 1"), "{out:?}");
}

#[test]
fn caller_of_another_uid_is_refused() {
    if no_bus() {
        return;
    }
    let root = nix::unistd::getuid().is_root();
    let setpriv = Command::new("setpriv").arg("--version").output().is_ok();
    if require(
        root && setpriv,
        "needs root and setpriv to call as another uid",
    ) {
        return;
    }
    let bus = TestBus::start_with(true);
    let _daemon = Daemon::start(&bus);
    let call = |as_nobody: bool| {
        let mut cmd = if as_nobody {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "busctl"]);
            c
        } else {
            Command::new("busctl")
        };
        let out = cmd
            .arg(format!("--address={}", bus.address()))
            .args([
                "call",
                locald_api::BUS_NAME,
                locald_api::MANAGER_PATH,
                locald_api::MANAGER_INTERFACE,
                "Down",
                "s",
                "nope",
            ])
            .output()
            .expect("busctl");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let nobody = call(true);
    // busctl (sd-bus) prints org.freedesktop.DBus.Error.AccessDenied as
    // "Access denied", without the text; dbus_access.rs checks name and text.
    assert!(
        nobody.contains("Access denied"),
        "another uid must be refused: {nobody}"
    );
    let me = call(false);
    assert!(
        me.contains("no project named"),
        "own uid gets through: {me}"
    );
}

/// `locald-ctl status | head -0` (a reader that went away) made every
/// `println!` fail with EPIPE, and std's `println!` panics on that: exit
/// status 101 and a panic message instead of the quiet end a pipe expects.
#[test]
fn ctl_status_into_a_closed_pipe_does_not_panic() {
    if no_bus() {
        return;
    }
    let bus = TestBus::start();
    let _daemon = Daemon::start(&bus);
    let marker = unique("pipe-marker");
    let _reaper = Reaper(marker.clone());
    let p = sleepers(&marker, &["web"]);
    assert_eq!(ctl(&bus, p.path(), &["up"]).code, 0);
    let (read, write) = std::io::pipe().expect("pipe");
    drop(read);
    let out = Command::new(locald_tests::bin("locald-ctl"))
        .arg("status")
        .current_dir(p.path())
        .env("LOCALD_BUS_ADDRESS", bus.address())
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .stdin(Stdio::null())
        .stdout(write)
        .output()
        .expect("run locald-ctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked") && out.status.code() != Some(101),
        "status into a closed pipe: {:?}\n{stderr}",
        out.status
    );
    assert_eq!(ctl(&bus, p.path(), &["down"]).code, 0);
}

/// `GetService` was the one Manager1 method without the uid check: another
/// user could probe which projects and services are up (and make the
/// daemon reconcile a project's objects).
#[test]
fn get_service_refuses_another_uid() {
    if no_bus() {
        return;
    }
    let root = nix::unistd::getuid().is_root();
    let setpriv = Command::new("setpriv").arg("--version").output().is_ok();
    if require(
        root && setpriv,
        "needs root and setpriv to call as another uid",
    ) {
        return;
    }
    let bus = TestBus::start_with(true);
    let _daemon = Daemon::start(&bus);
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "busctl"])
        .arg(format!("--address={}", bus.address()))
        .args([
            "call",
            locald_api::BUS_NAME,
            locald_api::MANAGER_PATH,
            locald_api::MANAGER_INTERFACE,
            "GetService",
            "ss",
            "nope",
            "web",
        ])
        .output()
        .expect("busctl");
    let err = String::from_utf8_lossy(&out.stderr);
    // sd-bus's text for org.freedesktop.DBus.Error.AccessDenied.
    assert!(
        err.contains("Access denied"),
        "another uid must be refused: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_flow_only_while_a_subscriber_is_on_the_bus() {
    if no_bus() {
        return;
    }
    let bus = TestBus::start();
    let _daemon = Daemon::start(&bus);
    let marker = unique("log-marker");
    let _reaper = Reaper(marker.clone());
    let p = TestProject::new(&format!(
        "[project]\nname = \"{}\"\n\n[services.ticker]\ncommand = [\"sh\", \"-c\", \"i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.05; done\", \"{marker}\"]\n",
        unique("logs")
    ));
    let name = project_name(&p);

    // A bus monitor sees every LogLine on the bus, whoever it is sent to.
    let observer = bus.connect().await;
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface(locald_api::SERVICE_INTERFACE)
        .and_then(|b| b.member("LogLine"))
        .expect("rule")
        .build();
    let seen = zbus::MessageStream::from(&observer);
    zbus::fdo::MonitoringProxy::new(&observer)
        .await
        .expect("monitoring proxy")
        .become_monitor(&[rule], 0)
        .await
        .expect("become a monitor");
    let mut seen = seen.filter(|m| {
        let is_log_line = m
            .as_ref()
            .is_ok_and(|m| m.header().member().is_some_and(|n| n.as_str() == "LogLine"));
        std::future::ready(is_log_line)
    });

    let conn = bus.connect().await;
    let m = Manager1Proxy::new(&conn).await.expect("proxy");
    m.up(p.path().to_str().expect("utf-8")).await.expect("up");
    let path = m.get_service(&name, "ticker").await.expect("service");

    // Nobody subscribed: no LogLine at all.
    let quiet = tokio::time::timeout(Duration::from_millis(500), seen.next()).await;
    assert!(quiet.is_err(), "LogLine emitted with no subscriber");

    let svc = Service1Proxy::builder(&conn)
        .path(path)
        .expect("path")
        .build()
        .await
        .expect("service proxy");
    let mut lines = svc.receive_log_line().await.expect("stream");
    svc.subscribe_logs().await.expect("subscribe");
    let first = tokio::time::timeout(Duration::from_secs(5), lines.next())
        .await
        .expect("a line within 5 s")
        .expect("stream open");
    let args = first.args().expect("args");
    assert_eq!(args.service(), "ticker");
    assert_eq!(args.phase(), "run");
    assert_eq!(args.stream(), "stdout");
    assert!(args.line().starts_with(b"tick-"), "{:?}", args.line());
    // Sent to the subscriber alone, not broadcast.
    let on_the_bus = tokio::time::timeout(Duration::from_secs(5), seen.next())
        .await
        .expect("the monitor sees the line")
        .expect("monitor stream open")
        .expect("a message");
    let me = conn.unique_name().expect("unique name").to_owned();
    assert_eq!(
        on_the_bus.header().destination().map(|d| d.to_string()),
        Some(me.to_string()),
        "LogLine goes to its subscriber only"
    );

    // The subscriber leaves the bus without unsubscribing: the lines stop.
    drop(lines);
    drop(svc);
    drop(m);
    drop(conn);
    tokio::time::sleep(Duration::from_millis(500)).await;
    while tokio::time::timeout(Duration::from_millis(10), seen.next())
        .await
        .is_ok()
    {}
    let after = tokio::time::timeout(Duration::from_millis(700), seen.next()).await;
    assert!(
        after.is_err(),
        "LogLine still emitted after the subscriber left"
    );

    // A monitor may not send: bring the project down from a new connection.
    let conn = bus.connect().await;
    let m = Manager1Proxy::new(&conn).await.expect("proxy");
    m.down(&name).await.expect("down");
}

#[test]
fn ctl_build_folds_progress_into_one_line() {
    if no_bus() {
        return;
    }
    let bus = TestBus::start();
    let _daemon = Daemon::start(&bus);
    let marker = unique("build-marker");
    let _reaper = Reaper(marker.clone());
    let p = TestProject::new(&format!(
        "[project]\nname = \"{}\"\n\n[services.web]\nbuild = \"echo compiling\"\ncommand = [\"sh\", \"-c\", \"sleep 1000; true\", \"{marker}\"]\n\n[services.plain]\ncommand = [\"sh\", \"-c\", \"sleep 1000; true\", \"{marker}\"]\n",
        unique("build")
    ));
    assert_eq!(ctl(&bus, p.path(), &["up"]).code, 0);
    wait_states(&bus, p.path(), UP, Duration::from_secs(15));

    let out = ctl(&bus, p.path(), &["build", "web"]);
    assert_eq!(out.code, 0, "{out:?}");
    let results: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(results.len(), 1, "one line per build: {out:?}");
    assert!(
        results[0].starts_with("✓ web built in") || results[0] == "✓ web: Build up to date",
        "{out:?}"
    );
    // Not a terminal: the progress fed by BuildProgress comes as plain
    // lines, the last step with a full bar.
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("web [") && l.ends_with("running echo compiling")),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("web [####################] "),
        "{out:?}"
    );

    // All builds: the service without a build is skipped, not an error.
    let out = ctl(&bus, p.path(), &["build", "--force"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.lines().count(), 1, "{out:?}");

    let out = ctl(&bus, p.path(), &["build", "plain"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("NoBuild"), "{out:?}");

    // A build that fails folds into one ✗ line and exit 1.
    p.write(
        "locald.toml",
        &std::fs::read_to_string(p.join("locald.toml"))
            .expect("read")
            .replace("echo compiling", "echo broken >&2; exit 4"),
    );
    assert_eq!(ctl(&bus, p.path(), &["reload"]).code, 0);
    let out = ctl(&bus, p.path(), &["build", "web"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.starts_with("✗ web: "), "{out:?}");
    assert_eq!(ctl(&bus, p.path(), &["down"]).code, 0);
}

#[test]
fn ctl_watch_prints_state_changes_live() {
    if no_bus() {
        return;
    }
    let bus = TestBus::start();
    let _daemon = Daemon::start(&bus);
    let marker = unique("watch-marker");
    let _reaper = Reaper(marker.clone());
    let p = sleepers(&marker, &["web"]);
    assert_eq!(ctl(&bus, p.path(), &["up"]).code, 0);
    wait_states(&bus, p.path(), UP, Duration::from_secs(10));

    let mut watch = Command::new(locald_tests::bin("locald-ctl"))
        .arg("watch")
        .current_dir(p.path())
        .env("LOCALD_BUS_ADDRESS", bus.address())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn watch");
    let stdout = watch.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let name = project_name(&p);
    let mut got = Vec::new();
    let mut expect_line = |pred: &dyn Fn(&str) -> bool, what: &str| {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => {
                    let hit = pred(&l);
                    got.push(l);
                    if hit {
                        return;
                    }
                }
                Err(_) => panic!("watch never printed {what}; got {got:?}"),
            }
        }
    };
    expect_line(
        &|l| l.ends_with(&format!("project {name}: running")),
        "the project's initial state",
    );
    expect_line(&|l| l.ends_with(" web: running"), "the initial state");
    assert_eq!(ctl(&bus, p.path(), &["stop", "web"]).code, 0);
    expect_line(
        &|l| l.contains(" web: ") && l.contains("→ stopped"),
        "web stopped",
    );
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(ctl(&bus, p.path(), &["down"]).code, 0);
}

/// The `<interface name="NAME">…</interface>` element of an introspection
/// document, re-indented as a child of a top-level `<node>`.
fn interface_xml(doc: &str, name: &str) -> Option<String> {
    let open = format!("<interface name=\"{name}\">");
    let start = doc.find(&open)?;
    let line_start = doc[..start].rfind('\n').map_or(0, |i| i + 1);
    let indent = start - line_start;
    let end = start + doc[start..].find("</interface>")? + "</interface>".len();
    let mut out = String::new();
    for line in doc[line_start..end].lines() {
        out.push_str("  ");
        out.push_str(line.get(indent..).unwrap_or(line.trim_start()));
        out.push('\n');
    }
    Some(out)
}

fn interface_doc(name: &str, body: &str) -> String {
    format!(
        r#"<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
<!-- {name}, introspected from a running `locald daemon` by the test
     introspection_xml_matches_docs in tests/tests/dbus.rs. Do not edit:
     regenerate with LOCALD_BLESS=1 cargo test -p locald-tests --test integration dbus::introspection -->
<node>
{body}</node>
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_xml_matches_docs() {
    if no_bus() {
        return;
    }
    let bus = TestBus::start();
    let _daemon = Daemon::start(&bus);
    let marker = unique("intro-marker");
    let _reaper = Reaper(marker.clone());
    let p = sleepers(&marker, &["web"]);
    let name = project_name(&p);
    let conn = bus.connect().await;
    let m = Manager1Proxy::new(&conn).await.expect("proxy");
    m.up(p.path().to_str().expect("utf-8")).await.expect("up");

    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/dbus");
    let bless = std::env::var_os("LOCALD_BLESS").is_some();
    let objects = [
        (
            locald_api::MANAGER_INTERFACE,
            locald_api::MANAGER_PATH.to_owned(),
        ),
        (
            locald_api::PROJECT_INTERFACE,
            locald_api::project_path(&name).to_string(),
        ),
        (
            locald_api::SERVICE_INTERFACE,
            locald_api::service_path(&name, "web").to_string(),
        ),
    ];
    let mut drift = Vec::new();
    for (iface, path) in objects {
        let intro = zbus::fdo::IntrospectableProxy::builder(&conn)
            .destination(locald_api::BUS_NAME)
            .expect("destination")
            .path(path.as_str())
            .expect("path")
            .build()
            .await
            .expect("introspectable proxy")
            .introspect()
            .await
            .expect("Introspect");
        let body = interface_xml(&intro, iface)
            .unwrap_or_else(|| panic!("{path} does not implement {iface}:\n{intro}"));
        let live = interface_doc(iface, &body);
        let file = docs.join(format!("{iface}.xml"));
        if bless {
            std::fs::create_dir_all(&docs).expect("mkdir docs/dbus");
            std::fs::write(&file, &live).expect("write introspection xml");
            continue;
        }
        let stored = std::fs::read_to_string(&file).unwrap_or_default();
        if stored != live {
            drift.push(format!(
                "{} differs from the running daemon; regenerate with \
                 LOCALD_BLESS=1 cargo test -p locald-tests --test integration dbus::introspection\n--- live ---\n{live}",
                file.display()
            ));
        }
    }
    m.down(&name).await.expect("down");
    assert!(drift.is_empty(), "{}", drift.join("\n"));
}

#[test]
fn editor_client_follows_state_changes() {
    if no_bus() {
        return;
    }
    // Debian's python3 has python3-jeepney; a virtualenv's may not.
    let python = "/usr/bin/python3";
    let has_jeepney = Command::new(python)
        .args(["-c", "import jeepney"])
        .output()
        .is_ok_and(|o| o.status.success());
    if require(
        has_jeepney,
        "python3-jeepney is not installed (tests/setup-debian.sh installs it)",
    ) {
        return;
    }
    let bus = TestBus::start();
    let _daemon = Daemon::start(&bus);
    let marker = unique("editor-marker");
    let _reaper = Reaper(marker.clone());
    let p = sleepers(&marker, &["web", "db"]);
    let name = project_name(&p);
    assert_eq!(ctl(&bus, p.path(), &["up"]).code, 0);
    wait_states(&bus, p.path(), UP, Duration::from_secs(10));

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/editors/locald_watch.py");
    let list = Command::new(python)
        .arg(&script)
        .args(["--address", bus.address(), "--list"])
        .output()
        .expect("run the editor client");
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success(), "{list:?}");
    assert!(text.contains(&format!("{name}/web running pid=")), "{text}");
    assert!(text.contains(&format!("{name}/db running pid=")), "{text}");

    let mut live = Command::new(python)
        .arg(&script)
        .args(["--address", bus.address()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the editor client");
    let stdout = live.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut got = Vec::new();
    let mut wait_line = |want: &str| {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
                Ok(l) => {
                    let hit = l.contains(want);
                    got.push(l);
                    if hit {
                        return;
                    }
                }
                Err(_) => panic!("the editor client never printed {want:?}; got {got:?}"),
            }
        }
    };
    wait_line("-- watching");
    assert_eq!(ctl(&bus, p.path(), &["stop", "db"]).code, 0);
    wait_line(&format!("{name}/db State stopped"));
    let _ = live.kill();
    let _ = live.wait();
    assert_eq!(ctl(&bus, p.path(), &["down"]).code, 0);
}

#[test]
fn daemon_stops_services_and_fails_when_the_bus_goes_away() {
    if no_bus() {
        return;
    }
    let bus = TestBus::start();
    let mut daemon = Daemon::start(&bus);
    let marker = unique("lostbus-marker");
    let _reaper = Reaper(marker.clone());
    let p = sleepers(&marker, &["web"]);
    assert_eq!(ctl(&bus, p.path(), &["up"]).code, 0);
    wait_states(&bus, p.path(), UP, Duration::from_secs(10));
    bus.kill();
    let status = daemon
        .wait(Duration::from_secs(15))
        .expect("the daemon exits when its bus is gone");
    assert!(
        !status.success(),
        "a non-zero exit lets Restart=on-failure bring it back: {status}"
    );
    assert!(
        daemon.log().contains("lost the connection to the bus"),
        "{}",
        daemon.log()
    );
    wait_until(Duration::from_secs(5), "services stopped", || {
        pids_with(&marker).is_empty()
    });
}

#[test]
fn second_daemon_on_the_same_bus_refuses_to_start() {
    if no_bus() {
        return;
    }
    let bus = TestBus::start();
    let _first = Daemon::start(&bus);
    let mut second = Daemon::start_with(
        &bus,
        DaemonSetup {
            state_dir: Some(bus.dir().join("second-state")),
            no_wait: true,
            ..Default::default()
        },
    );
    let status = second
        .wait(Duration::from_secs(10))
        .expect("the second daemon exits");
    assert_eq!(status.code(), Some(1), "{}", second.log());
    assert!(
        second
            .log()
            .contains("another locald already owns dev.locald.Locald1"),
        "{}",
        second.log()
    );
    assert!(bus.name_has_owner(), "the first daemon keeps serving");
}

#[test]
fn second_daemon_on_the_same_state_refuses_to_start() {
    if no_bus() {
        return;
    }
    let bus = TestBus::start();
    let other_bus = TestBus::start();
    let _first = Daemon::start(&bus);
    let mut second = Daemon::start_with(
        &other_bus,
        DaemonSetup {
            state_dir: Some(bus.dir().join("state")),
            no_wait: true,
            ..Default::default()
        },
    );
    let status = second
        .wait(Duration::from_secs(10))
        .expect("the second daemon exits");
    assert_eq!(status.code(), Some(1), "{}", second.log());
    assert!(
        second
            .log()
            .contains("another locald uses the state directory"),
        "{}",
        second.log()
    );
}

/// Issue 5 through the daemon: a build with `inputs` says why it builds, then
/// "Build up to date" until an input changes; `status --json` carries the
/// same decision in LastBuild.
#[test]
fn ctl_build_says_why_and_when_up_to_date() {
    if no_bus() {
        return;
    }
    let bus = TestBus::start();
    let _daemon = Daemon::start(&bus);
    let marker = unique("incr-marker");
    let _reaper = Reaper(marker.clone());
    let p = TestProject::new(&format!(
        "[project]\nname = \"{}\"\n\n[services.web]\nbuild = {{ command = \"cp src/a.txt out.txt\", inputs = [\"src/**\"], outputs = [\"out.txt\"] }}\ncommand = [\"sh\", \"-c\", \"sleep 1000; true\", \"{marker}\"]\n",
        unique("incr")
    ));
    p.write("src/a.txt", "one\n");
    assert_eq!(ctl(&bus, p.path(), &["up"]).code, 0);
    wait_states(&bus, p.path(), UP, Duration::from_secs(15));

    let out = ctl(&bus, p.path(), &["build", "web"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "✓ web: Build up to date", "{out:?}");
    let status = ctl(&bus, p.path(), &["status", "--json"]);
    assert!(status.stdout.contains("Build up to date"), "{status:?}");

    p.write("src/a.txt", "two\n");
    let out = ctl(&bus, p.path(), &["build", "web"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains("(source changed: 1 file (1 modified), e.g. src/a.txt)"),
        "{out:?}"
    );
    assert_eq!(p.read("out.txt"), "two\n");
    assert_eq!(ctl(&bus, p.path(), &["down"]).code, 0);
}
