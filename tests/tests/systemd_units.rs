//! End to end in a real systemd user manager (a container booted with
//! systemd-nspawn): under it the daemon runs every service as a transient
//! unit `locald-<project>-<service>.service` in `locald-<project>.slice`,
//! whose output reaches the journal with locald's fields without passing
//! through locald; a stop takes descendants that called `setsid` with it; a
//! unit stopped behind locald's back is seen as stopped, not restarted.

use std::path::Path;
use std::time::{Duration, Instant};

use locald_tests::nspawn::{self, Container, HOME};
use locald_tests::{pids_with, require, unique};

fn install(root: &Path, marker: &str) {
    let home = root.join(HOME.trim_start_matches('/'));
    nspawn::install_locald(root);
    let project = home.join("proj/locald.toml");
    std::fs::create_dir_all(project.parent().expect("parent")).expect("mkdir");
    // web leaves a grandchild in its own session, which only a cgroup stop
    // reaches; its marker is spelled so that web's own command line lacks it.
    let toml = format!(
        r#"[project]
name = "shop"
runtime = "systemd"

[services.web]
command = ["sh", "-c", "echo hello from web; setsid sh -c 'sleep 1000; true' {marker}-gr$(echo and) & sleep 1000; true", "{marker}-web"]
stop_timeout = "2s"
# An auto port: a restarted daemon must not stop web to free it.
port = "auto"

[services.db]
command = ["sh", "-c", "echo hello from db; sleep 1000; true", "{marker}-db"]
stop_timeout = "2s"

[services.plain]
command = ["sh", "-c", "sleep 1000; true", "{marker}-plain"]
runtime = "host"
"#
    );
    std::fs::write(&project, toml).expect("locald.toml");
    let st = std::process::Command::new("chown")
        .args(["-R", "1000:1000"])
        .arg(&home)
        .status()
        .expect("chown");
    assert!(st.success());
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn show(c: &Container, unit: &str, prop: &str) -> String {
    let out = c.user(
        HOME,
        &format!("systemctl --user show '{unit}' -p {prop} --value"),
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn status(c: &Container) -> String {
    text(&c.user(&format!("{HOME}/proj"), "locald-ctl status"))
}

fn boot(marker: &str) -> Option<Container> {
    if require(
        nspawn::available().is_ok(),
        &format!(
            "cannot boot a systemd container: {}",
            nspawn::available().err().unwrap_or_default()
        ),
    ) {
        return None;
    }
    let c = Container::boot(|root| install(root, marker));
    let reload = c.user(HOME, "systemctl --user daemon-reload");
    assert!(reload.status.success(), "{reload:?}");
    Some(c)
}

/// The service object named `name` anywhere in `status --json` output.
fn find_service<'a>(v: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => {
            if m.get("name").and_then(|n| n.as_str()) == Some(name) && m.contains_key("state") {
                return Some(v);
            }
            m.values().find_map(|x| find_service(x, name))
        }
        serde_json::Value::Array(a) => a.iter().find_map(|x| find_service(x, name)),
        _ => None,
    }
}

const WEB: &str = "locald-shop-web.service";
const DB: &str = "locald-shop-db.service";

#[test]
fn services_run_as_transient_units_with_locald_fields() {
    let marker = unique("sdunit");
    let Some(c) = boot(&marker) else { return };
    let up = c.user(&format!("{HOME}/proj"), "locald-ctl up");
    assert!(up.status.success(), "locald-ctl up: {}", text(&up));
    wait_until(Duration::from_secs(15), "both units active", || {
        show(&c, WEB, "ActiveState") == "active" && show(&c, DB, "ActiveState") == "active"
    });

    // The unit as systemd sees it.
    assert_eq!(show(&c, WEB, "Slice"), "locald-shop.slice");
    assert_eq!(show(&c, WEB, "Type"), "exec");
    assert_eq!(show(&c, WEB, "Restart"), "no");
    assert_eq!(show(&c, WEB, "CollectMode"), "inactive-or-failed");
    assert_eq!(show(&c, WEB, "SyslogIdentifier"), "web");
    let fields = show(&c, WEB, "LogExtraFields");
    for f in [
        "LOCALD_PROJECT=shop",
        "LOCALD_SERVICE=web",
        "LOCALD_PHASE=run",
    ] {
        assert!(fields.contains(f), "LogExtraFields: {fields}");
    }
    assert_eq!(show(&c, WEB, "WorkingDirectory"), format!("{HOME}/proj"));
    // locald's status shows the unit's main pid: the service's `sh`.
    let main_pid = show(&c, WEB, "MainPID");
    let st = status(&c);
    assert!(st.contains(&main_pid), "pid {main_pid} not in status: {st}");
    assert!(
        st.lines()
            .any(|l| l.starts_with("web ") && l.contains(" systemd ")),
        "{st}"
    );
    // systemd's accounting of the unit, as Service1 properties.
    let json = text(&c.user(&format!("{HOME}/proj"), "locald-ctl status --json"));
    let v: serde_json::Value =
        serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("{e}: {json}"));
    let web_json = find_service(&v, "web").unwrap_or_else(|| panic!("no web in {json}"));
    assert_eq!(web_json["runtime"], "systemd", "{json}");
    assert!(
        web_json["cpu_usage_nsec"].is_u64(),
        "no CPU accounting: {json}"
    );
    // `runtime = "host"` keeps a service a child of locald.
    wait_until(Duration::from_secs(10), "plain running on the host", || {
        status(&c)
            .lines()
            .any(|l| l.starts_with("plain ") && l.contains(" host "))
    });
    assert_eq!(pids_with(&format!("{marker}-plain")).len(), 1);
    let listed = text(&c.user(HOME, "systemctl --user list-units --no-legend 'locald-*'"));
    assert!(
        listed.contains(WEB) && listed.contains(DB) && !listed.contains("plain"),
        "list-units: {listed}"
    );

    // Output went from the service straight to the journal, as the unit's.
    // (systemd applies LogExtraFields= to system services only, so a user
    // unit's lines carry the unit and identifier, not LOCALD_*; see
    // docs/systemd.md.)
    wait_until(Duration::from_secs(10), "web's line in the journal", || {
        let out = c.root(&[
            "journalctl",
            "-q",
            "-o",
            "cat",
            &format!("_SYSTEMD_USER_UNIT={WEB}"),
            "SYSLOG_IDENTIFIER=web",
            "_SYSTEMD_USER_SLICE=locald-shop.slice",
        ]);
        String::from_utf8_lossy(&out.stdout).contains("hello from web")
    });

    // `locald-ctl logs` finds them by the unit.
    let logs = c.user(&format!("{HOME}/proj"), "locald-ctl logs web");
    assert!(
        text(&logs).contains("hello from web"),
        "logs: {}",
        text(&logs)
    );
    let all = text(&c.user(&format!("{HOME}/proj"), "locald-ctl logs"));
    assert!(
        all.contains("hello from db") && all.contains("hello from web"),
        "logs: {all}"
    );

    // A stop through locald takes the setsid grandchild with the unit.
    assert_eq!(pids_with(&format!("{marker}-grand")).len(), 1);
    let stop = c.user(&format!("{HOME}/proj"), "locald-ctl stop web");
    assert!(stop.status.success(), "stop: {}", text(&stop));
    wait_until(
        Duration::from_secs(10),
        "web and its grandchild gone",
        || {
            pids_with(&format!("{marker}-web")).is_empty()
                && pids_with(&format!("{marker}-grand")).is_empty()
        },
    );
    wait_until(Duration::from_secs(10), "web's unit collected", || {
        show(&c, WEB, "LoadState") == "not-found"
    });

    // A unit stopped by hand is a stop in locald's view, not a crash.
    let by_hand = c.user(HOME, &format!("systemctl --user stop {DB}"));
    assert!(by_hand.status.success(), "{by_hand:?}");
    let mut last = String::new();
    let end = Instant::now() + Duration::from_secs(10);
    while !last
        .lines()
        .any(|l| l.contains("db") && l.contains("stopped") && !l.contains("backoff"))
    {
        assert!(Instant::now() < end, "db not seen as stopped: {last}");
        std::thread::sleep(Duration::from_millis(100));
        last = status(&c);
    }
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        pids_with(&format!("{marker}-db")).is_empty(),
        "db restarted"
    );
    assert_ne!(show(&c, DB, "ActiveState"), "active", "db restarted");

    // Starting it again through locald makes a fresh unit.
    let start = c.user(&format!("{HOME}/proj"), "locald-ctl start db");
    assert!(start.status.success(), "start: {}", text(&start));
    wait_until(Duration::from_secs(10), "db active again", || {
        show(&c, DB, "ActiveState") == "active"
    });
    let down = c.user(&format!("{HOME}/proj"), "locald-ctl down");
    assert!(down.status.success(), "down: {}", text(&down));
    wait_until(Duration::from_secs(10), "every unit gone", || {
        pids_with(&marker).is_empty()
    });
}

#[test]
fn services_keep_their_pids_across_daemon_kill_and_restart() {
    let marker = unique("sdadopt");
    let Some(c) = boot(&marker) else { return };
    let up = c.user(&format!("{HOME}/proj"), "locald-ctl up");
    assert!(up.status.success(), "locald-ctl up: {}", text(&up));
    wait_until(Duration::from_secs(15), "both units active", || {
        show(&c, WEB, "ActiveState") == "active" && show(&c, DB, "ActiveState") == "active"
    });
    let (web, db) = (show(&c, WEB, "MainPID"), show(&c, DB, "MainPID"));
    let daemon = || show(&c, "locald.service", "MainPID");
    let running_with = |pid: &str| {
        let st = status(&c);
        st.lines()
            .any(|l| l.starts_with("web ") && l.contains("running") && l.contains(pid))
    };
    wait_until(Duration::from_secs(10), "web running in status", || {
        running_with(&web)
    });

    // kill -9: systemd restarts the daemon, which adopts both units.
    let old = daemon();
    let k = c.root(&["kill", "-KILL", &old]);
    assert!(k.status.success(), "{k:?}");
    wait_until(Duration::from_secs(20), "a new daemon", || {
        let pid = daemon();
        pid != old && pid != "0" && !pid.is_empty()
    });
    wait_until(Duration::from_secs(15), "web adopted", || {
        running_with(&web)
    });
    assert_eq!(show(&c, WEB, "MainPID"), web, "web was restarted");
    assert_eq!(show(&c, DB, "MainPID"), db, "db was restarted");
    assert_eq!(pids_with(&format!("{marker}-web")).len(), 1);

    // `systemctl --user restart locald` (an upgrade) keeps them too.
    let old = daemon();
    let r = c.user(HOME, "systemctl --user restart locald");
    assert!(r.status.success(), "{r:?}");
    wait_until(Duration::from_secs(20), "a new daemon", || {
        let pid = daemon();
        pid != old && pid != "0" && !pid.is_empty()
    });
    wait_until(Duration::from_secs(15), "web adopted again", || {
        running_with(&web)
    });
    assert_eq!(show(&c, WEB, "MainPID"), web, "web was restarted");
    assert_eq!(show(&c, DB, "MainPID"), db, "db was restarted");

    // Only a service whose config changed is started afresh: db gets a new
    // variable, and after the next kill -9 a new unit; web keeps its pid.
    let file = format!("{HOME}/proj/locald.toml");
    let edit = c.user(
        HOME,
        &format!("sed -i 's/^\\[services.db\\]$/[services.db]\\nenv = {{ CHANGED = \"1\" }}/' {file} && grep -c CHANGED {file}"),
    );
    assert!(edit.status.success(), "edit: {}", text(&edit));
    let old = daemon();
    let k = c.root(&["kill", "-KILL", &old]);
    assert!(k.status.success(), "{k:?}");
    wait_until(Duration::from_secs(20), "a new daemon", || {
        let pid = daemon();
        pid != old && pid != "0" && !pid.is_empty()
    });
    wait_until(Duration::from_secs(15), "db started afresh", || {
        let pid = show(&c, DB, "MainPID");
        show(&c, DB, "ActiveState") == "active" && pid != db && pid != "0"
    });
    wait_until(Duration::from_secs(15), "web adopted again", || {
        running_with(&web)
    });
    assert_eq!(show(&c, WEB, "MainPID"), web, "web was restarted");
    assert_eq!(pids_with(&format!("{marker}-db")).len(), 1, "two dbs");

    // The adopted unit is supervised: stopping it through locald works and
    // takes the setsid grandchild with it.
    let stop = c.user(&format!("{HOME}/proj"), "locald-ctl stop web");
    assert!(stop.status.success(), "stop: {}", text(&stop));
    wait_until(
        Duration::from_secs(10),
        "web and its grandchild gone",
        || {
            pids_with(&format!("{marker}-web")).is_empty()
                && pids_with(&format!("{marker}-grand")).is_empty()
        },
    );

    // `systemctl --user stop locald` stops the services, as before.
    let s = c.user(HOME, "systemctl --user stop locald");
    assert!(s.status.success(), "{s:?}");
    wait_until(Duration::from_secs(10), "every service gone", || {
        pids_with(&marker).is_empty()
    });
}
