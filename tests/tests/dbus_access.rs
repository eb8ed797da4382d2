//! Who may see and touch the daemon's objects, tried as an attacker would:
//! a second local user on a bus that admits every uid
//! (`TestBus::start_with(true)`) reading properties, asking the
//! ObjectManager and calling methods; and malformed calls answered with the
//! standard error names.
//!
//! The client is a program nobody here wrote (`dbus-send`), run as the other
//! user through `setpriv`, so the error names checked are the ones on the
//! wire.

use std::process::{Command, Output, Stdio};

use locald_api::{
    service_path, BUS_NAME, MANAGER_INTERFACE, MANAGER_PATH, PROJECT_INTERFACE, SERVICE_INTERFACE,
};
use locald_tests::dbus::{have_dbus_daemon, Daemon, TestBus};
use locald_tests::shim::{test_user, TestUser};
use locald_tests::{pids_with, require, unique, TestProject};
use nix::sys::signal::Signal;

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

/// Kills leftover service processes of a test even when it fails halfway.
struct Reaper(String);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in pids_with(&self.0) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// A project named uniquely whose one service, `app`, prints `line` every
/// 50 ms; `marker` is in its command line for the [`Reaper`].
fn printer(marker: &str, line: &str) -> (TestProject, String) {
    let name = unique("access");
    let p = TestProject::new(&format!(
        "[project]\nname = \"{name}\"\n\n[services.app]\ncommand = [\"sh\", \"-c\", \"while true; do echo {line}; sleep 0.05; done\", \"{marker}\"]\nstop_timeout = \"2s\"\n"
    ));
    (p, name)
}

/// Brings the project up as the owner and waits until its service object exists.
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
    let (p, name) = printer(&marker, "hello");
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
    let (p, name) = printer(&marker, "hello");
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
    let (p, name) = printer(&marker, "hello");
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
