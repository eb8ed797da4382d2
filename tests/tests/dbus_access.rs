//! Who may see and touch the daemon's objects, tried as an attacker would:
//! a second local user on a bus that admits every uid
//! (`TestBus::start_with(true)`) reading properties, asking the
//! ObjectManager, calling methods and listening for the owner's service
//! output; and malformed calls answered with the standard error names.
//!
//! The clients are programs nobody here wrote (`dbus-send`, `dbus-monitor`,
//! `gdbus monitor`), run as the other user through `setpriv`, so the error
//! names checked are the ones on the wire.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use locald_api::{
    service_path, Manager1Proxy, Service1Proxy, BUS_NAME, MANAGER_INTERFACE, MANAGER_PATH,
    PROJECT_INTERFACE, SERVICE_INTERFACE,
};
use locald_tests::dbus::{have_dbus_daemon, Daemon, TestBus};
use locald_tests::shim::{test_user, TestUser};
use locald_tests::{require, unique, TestProject};
use locald_tests::{wait_until, Reaper};

const ACCESS_DENIED: &str = "org.freedesktop.DBus.Error.AccessDenied";
const INVALID_ARGS: &str = "org.freedesktop.DBus.Error.InvalidArgs";

/// Whether a program can be started (`PROGRAM --help` runs at all).
fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// The second user, or `None` (after saying why) when this machine cannot
/// run the test: it needs root to create a user and to switch to it, and
/// `tools` to act as that user.
fn other_user(tools: &[&str]) -> Option<TestUser> {
    let root = nix::unistd::getuid().is_root();
    let missing: Vec<&str> = ["setpriv"]
        .iter()
        .chain(tools)
        .copied()
        .filter(|t| !have(t))
        .collect();
    if require(
        have_dbus_daemon() && root && missing.is_empty(),
        &format!("needs dbus-daemon and root to act as a second user; missing tools: {missing:?}"),
    ) {
        return None;
    }
    match test_user("locald-dbus-t2") {
        Ok(user) => Some(user),
        Err(e) => {
            require(false, &format!("cannot create the second user: {e:#}"));
            None
        }
    }
}

/// `program` run as `user` (no supplementary groups), else as ourselves.
fn command_as(user: Option<&TestUser>, program: &str) -> Command {
    match user {
        Some(u) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={}", u.uid))
                .arg(format!("--regid={}", u.gid))
                .arg("--clear-groups")
                .arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// `dbus-send --print-reply` of `method` (`interface.Member`) on `path`.
fn dbus_send(
    bus: &TestBus,
    user: Option<&TestUser>,
    path: &str,
    method: &str,
    args: &[&str],
) -> Output {
    command_as(user, "dbus-send")
        .arg(format!("--bus={}", bus.address()))
        .args(["--print-reply", "--type=method_call"])
        .arg(format!("--dest={BUS_NAME}"))
        .arg(path)
        .arg(method)
        .args(args)
        .output()
        .expect("run dbus-send")
}

/// The error name dbus-send printed (`Error NAME: text`), or `None` for a
/// reply.
fn error_name(out: &Output) -> Option<String> {
    let err = String::from_utf8_lossy(&out.stderr);
    let rest = err.trim_start().strip_prefix("Error ")?;
    Some(rest.split(':').next().unwrap_or_default().to_owned())
}

fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A project named uniquely whose one service, `app`, prints `line` every
/// 50 ms (and, with `build`, has a host build running that command);
/// `marker` is in its command line for the [`Reaper`].
fn printer(marker: &str, line: &str, build: Option<&str>) -> (TestProject, String) {
    let name = unique("access");
    let build = build.map_or(String::new(), |b| format!("build = \"{b}\"\n"));
    let p = TestProject::new(&format!(
        "[project]\nname = \"{name}\"\n\n[services.app]\n{build}command = [\"sh\", \"-c\", \"while true; do echo {line}; sleep 0.05; done\", \"{marker}\"]\nstop_timeout = \"2s\"\n"
    ));
    (p, name)
}

/// Brings the project up as the owner; returns the path of its service's
/// object, which exists once `Up` has answered.
fn up(bus: &TestBus, p: &TestProject, name: &str) -> String {
    let out = dbus_send(
        bus,
        None,
        MANAGER_PATH,
        &format!("{MANAGER_INTERFACE}.Up"),
        &[&format!("string:{}", p.path().display())],
    );
    assert_eq!(error_name(&out), None, "owner's Up: {}", describe(&out));
    service_path(name, "app").as_str().to_owned()
}

/// Reads of objects and properties, which zbus answers outside locald's
/// methods, were open to every uid: another user got the whole tree with
/// every property from `GetManagedObjects`, and any property with
/// `Properties.Get`/`GetAll` (a project's directory, a service's status).
#[test]
fn another_user_cannot_read_objects_or_properties() {
    let Some(other) = other_user(&["dbus-send"]) else {
        return;
    };
    let bus = TestBus::start_with(true);
    let _daemon = Daemon::start(&bus);
    let marker = unique("read-marker");
    let _reaper = Reaper(marker.clone());
    let (p, name) = printer(&marker, "hello", None);
    let service = up(&bus, &p, &name);
    let project = locald_api::project_path(&name).as_str().to_owned();

    let reads: [(&str, &str, Vec<String>); 6] = [
        (
            MANAGER_PATH,
            "org.freedesktop.DBus.ObjectManager.GetManagedObjects",
            vec![],
        ),
        (
            service.as_str(),
            "org.freedesktop.DBus.Properties.Get",
            vec![format!("string:{SERVICE_INTERFACE}"), "string:State".into()],
        ),
        (
            service.as_str(),
            "org.freedesktop.DBus.Properties.GetAll",
            vec![format!("string:{SERVICE_INTERFACE}")],
        ),
        (
            project.as_str(),
            "org.freedesktop.DBus.Properties.Get",
            vec![format!("string:{PROJECT_INTERFACE}"), "string:Path".into()],
        ),
        (
            project.as_str(),
            "org.freedesktop.DBus.Properties.GetAll",
            vec![format!("string:{PROJECT_INTERFACE}")],
        ),
        (
            MANAGER_PATH,
            "org.freedesktop.DBus.Properties.Get",
            vec![
                format!("string:{MANAGER_INTERFACE}"),
                "string:Projects".into(),
            ],
        ),
    ];
    for (path, method, args) in &reads {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let theirs = dbus_send(&bus, Some(&other), path, method, &args);
        assert_eq!(
            error_name(&theirs).as_deref(),
            Some(ACCESS_DENIED),
            "{method} on {path} as uid {}: {}",
            other.uid,
            describe(&theirs)
        );
        let stdout = String::from_utf8_lossy(&theirs.stdout);
        assert!(
            !stdout.contains(&name) && !stdout.contains("hello"),
            "{stdout}"
        );
        let ours = dbus_send(&bus, None, path, method, &args);
        assert_eq!(
            error_name(&ours),
            None,
            "{method} as the owner: {}",
            describe(&ours)
        );
    }
    let ours = dbus_send(
        &bus,
        None,
        MANAGER_PATH,
        "org.freedesktop.DBus.ObjectManager.GetManagedObjects",
        &[],
    );
    assert!(
        String::from_utf8_lossy(&ours.stdout).contains(&service),
        "the owner still sees every object: {}",
        describe(&ours)
    );
}

/// A listener process, killed when dropped (also when the test fails).
struct Listener(Child);

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A listener started by `user` whose output goes to `file`.
fn listen(user: &TestUser, program: &[&str], file: &Path) -> Listener {
    let out = File::create(file).expect("listener output");
    let mut cmd = command_as(Some(user), "stdbuf");
    cmd.arg("-oL")
        .args(program)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::null())
        // The other user cannot read root's home; nothing here needs one.
        .env("HOME", "/");
    Listener(cmd.spawn().expect("spawn listener"))
}

/// Whether `text` shows `token`, as dbus-monitor prints byte arrays (the
/// text) or as GVariant prints them (`[byte 0x73, 0x65, …]`).
fn shows(text: &str, token: &str) -> bool {
    let hex: Vec<String> = token.bytes().map(|b| format!("0x{b:02x}")).collect();
    text.contains(token) || text.contains(&hex[1..].join(", "))
}

/// `LogLine` went out as a broadcast: once the owner subscribed, every
/// connection with a match rule for it got the service's output, another
/// user's included, and output carries secrets. It is unicast now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_never_hears_the_owners_log_lines() {
    let Some(other) = other_user(&["dbus-monitor", "gdbus", "stdbuf"]) else {
        return;
    };
    let bus = TestBus::start_with(true);
    let _daemon = Daemon::start(&bus);
    let marker = unique("secret-marker");
    let _reaper = Reaper(marker.clone());
    let token = format!("s3cret{}", unique("tok").replace('-', ""));
    // The build prints a secret its command does not show: BuildProgress, a
    // broadcast, names the command (see docs/daemon.md, "Other users").
    let build_secret = format!("built{}", unique("tok").replace('-', ""));
    let build_token = build_secret.to_uppercase();
    let build = format!("echo {build_secret} | tr a-z A-Z");
    let (p, name) = printer(&marker, &token, Some(&build));

    // Two listeners as the other user: dbus-monitor (it tries to become a
    // monitor, is refused, and falls back to eavesdropping match rules) and
    // gdbus monitor (a plain match rule for every signal of the daemon).
    let monitor_out = bus.dir().join("other-dbus-monitor.txt");
    let gdbus_out = bus.dir().join("other-gdbus-monitor.txt");
    let address = bus.address().to_owned();
    let listeners = [
        listen(
            &other,
            &["dbus-monitor", "--address", &address],
            &monitor_out,
        ),
        listen(
            &other,
            &[
                "gdbus",
                "monitor",
                "--address",
                &address,
                "--dest",
                BUS_NAME,
            ],
            &gdbus_out,
        ),
    ];
    let read = |f: &Path| std::fs::read_to_string(f).unwrap_or_default();
    wait_until(Duration::from_secs(10), "both listeners to listen", || {
        read(&monitor_out).contains("NameAcquired") && read(&gdbus_out).contains("is owned by")
    });

    let conn = bus.connect().await;
    let m = Manager1Proxy::new(&conn).await.expect("proxy");
    m.up(p.path().to_str().expect("utf-8")).await.expect("up");
    let path = m.get_service(&name, "app").await.expect("service");
    let svc = Service1Proxy::builder(&conn)
        .path(path)
        .expect("path")
        .build()
        .await
        .expect("service proxy");
    let mut lines = svc.receive_log_line().await.expect("stream");
    svc.subscribe_logs().await.expect("subscribe");
    // The owner hears the token, several times over (after the output of
    // the build `up` started, if it was still running).
    let mut heard = 0;
    while heard < 5 {
        let line = tokio::time::timeout(Duration::from_secs(5), lines.next())
            .await
            .expect("the owner gets a line within 5 s")
            .expect("stream open");
        let args = line.args().expect("args");
        if args.phase() == "run" {
            assert_eq!(args.line(), token.as_bytes());
            heard += 1;
        }
    }
    // Build output goes the same way, with phase `build`.
    m.build(&name, "app", true).await.expect("build");
    let built = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next().await {
            let args = line.args().expect("args");
            if args.phase() == "build" {
                return args.line().to_vec();
            }
        }
        Vec::new()
    })
    .await
    .expect("the owner gets the build's line within 10 s");
    assert_eq!(built, build_token.as_bytes());
    tokio::time::sleep(Duration::from_millis(500)).await;
    m.down(&name).await.expect("down");
    // The project's removal is a broadcast both listeners must have heard,
    // so their silence about the token means something.
    wait_until(
        Duration::from_secs(10),
        "the listeners to hear the daemon",
        || {
            read(&monitor_out).contains("InterfacesRemoved")
                && read(&gdbus_out).contains("InterfacesRemoved")
        },
    );
    drop(listeners);
    for f in [&monitor_out, &gdbus_out] {
        let text = read(f);
        assert!(
            !shows(&text, &token) && !shows(&text, &build_token),
            "uid {} heard the owner's output ({}):\n{text}",
            other.uid,
            f.display()
        );
    }
}

/// Refusals of locald's own methods went out as `org.freedesktop.zbus.Error`
/// with the standard name only in the text; clients matching on the name
/// (as docs/daemon.md tells them to) missed it.
#[test]
fn another_user_calling_a_method_gets_access_denied_by_name() {
    let Some(other) = other_user(&["dbus-send"]) else {
        return;
    };
    let bus = TestBus::start_with(true);
    let _daemon = Daemon::start(&bus);
    let marker = unique("call-marker");
    let _reaper = Reaper(marker.clone());
    let (p, name) = printer(&marker, "hello", None);
    let service = up(&bus, &p, &name);

    let project = format!("string:{name}");
    let calls: [(&str, String, Vec<&str>); 5] = [
        (
            MANAGER_PATH,
            format!("{MANAGER_INTERFACE}.Down"),
            vec![project.as_str()],
        ),
        (
            MANAGER_PATH,
            format!("{MANAGER_INTERFACE}.ListProjects"),
            vec![],
        ),
        (
            MANAGER_PATH,
            format!("{MANAGER_INTERFACE}.GetService"),
            vec![project.as_str(), "string:app"],
        ),
        (
            service.as_str(),
            format!("{SERVICE_INTERFACE}.SubscribeLogs"),
            vec![],
        ),
        // Wrong arguments too: a stranger learns nothing from the check.
        (
            MANAGER_PATH,
            format!("{MANAGER_INTERFACE}.Up"),
            vec!["int32:5"],
        ),
    ];
    for (path, method, args) in &calls {
        let out = dbus_send(&bus, Some(&other), path, method, args);
        assert_eq!(
            error_name(&out).as_deref(),
            Some(ACCESS_DENIED),
            "{method} as uid {}: {}",
            other.uid,
            describe(&out)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("caller runs as uid {}", other.uid)),
            "{err}"
        );
    }
    // Nothing happened: the project is still up for its owner.
    let out = dbus_send(
        &bus,
        None,
        MANAGER_PATH,
        &format!("{MANAGER_INTERFACE}.GetProject"),
        &[&project],
    );
    assert_eq!(error_name(&out), None, "{}", describe(&out));
}

/// A call whose arguments have the wrong D-Bus types was answered with
/// zbus's generic `org.freedesktop.zbus.Error`.
#[test]
fn wrong_signature_is_invalid_args() {
    if require(
        have_dbus_daemon() && have("dbus-send"),
        "needs dbus-daemon and dbus-send",
    ) {
        return;
    }
    let bus = TestBus::start();
    let _daemon = Daemon::start(&bus);
    let marker = unique("sig-marker");
    let _reaper = Reaper(marker.clone());
    let (p, name) = printer(&marker, "hello", None);
    let service = up(&bus, &p, &name);

    let project = format!("string:{name}");
    let cases: [(&str, &str, Vec<&str>, &str); 5] = [
        (MANAGER_PATH, "Up", vec!["int32:5"], "takes 's', got 'i'"),
        (
            MANAGER_PATH,
            "GetService",
            vec![project.as_str()],
            "takes 'ss', got 's'",
        ),
        (
            MANAGER_PATH,
            "Build",
            vec![project.as_str(), "string:app", "string:yes"],
            "takes 'ssb', got 'sss'",
        ),
        (MANAGER_PATH, "Up", vec![], "takes 's', got no arguments"),
        (
            service.as_str(),
            "SubscribeLogs",
            vec!["string:x"],
            "takes no arguments, got 's'",
        ),
    ];
    for (path, method, args, says) in &cases {
        let interface = if *path == MANAGER_PATH {
            MANAGER_INTERFACE
        } else {
            SERVICE_INTERFACE
        };
        let out = dbus_send(&bus, None, path, &format!("{interface}.{method}"), args);
        assert_eq!(
            error_name(&out).as_deref(),
            Some(INVALID_ARGS),
            "{method} {args:?}: {}",
            describe(&out)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{method} {args:?}: {err}");
    }
    // Still serving, and the right arguments still work.
    let out = dbus_send(
        &bus,
        None,
        MANAGER_PATH,
        &format!("{MANAGER_INTERFACE}.GetService"),
        &[&project, "string:app"],
    );
    assert_eq!(error_name(&out), None, "{}", describe(&out));
    let out = dbus_send(
        &bus,
        None,
        MANAGER_PATH,
        &format!("{MANAGER_INTERFACE}.Down"),
        &[&project],
    );
    assert_eq!(error_name(&out), None, "{}", describe(&out));
}
