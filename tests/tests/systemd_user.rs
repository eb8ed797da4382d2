//! End to end in a real systemd user manager (a container booted with
//! systemd-nspawn): the unit and the D-Bus activation file installed by hand
//! as docs/daemon.md says, then `locald-ctl up` activates the daemon,
//! `Type=notify` and `STATUS=` reach systemd, the watchdog keeps it alive, a
//! SIGKILLed daemon is restarted by systemd with each service once, and
//! `systemctl --user stop` stops every service; the dashboard unit serves
//! the page and writes its address for the user; a logout (the user
//! manager stopped, the session bus with it) is not held up by locald.

use std::path::Path;
use std::time::Duration;

use locald_tests::nspawn::{self, wait_until, Container, HOME};
use locald_tests::{pids_with, service_pids, unique};

fn install(root: &Path, marker: &str) {
    let home = root.join(HOME.trim_start_matches('/'));
    nspawn::install_locald(root);
    // A short watchdog so the test sees the daemon survive several periods.
    let dropin = home.join(".config/systemd/user/locald.service.d/test.conf");
    std::fs::create_dir_all(dropin.parent().expect("parent")).expect("mkdir");
    std::fs::write(&dropin, "[Service]\nWatchdogSec=2s\n").expect("drop-in");
    let project = home.join("proj/locald.toml");
    std::fs::create_dir_all(project.parent().expect("parent")).expect("mkdir");
    let mut toml = String::from("[project]\nname = \"shop\"\n");
    for s in ["db", "web"] {
        toml.push_str(&format!(
            "\n[services.{s}]\ncommand = [\"sh\", \"-c\", \"echo hello from {s}; sleep 1000; true\", \"{marker}-{s}\"]\nstop_timeout = \"2s\"\n"
        ));
    }
    std::fs::write(&project, toml).expect("locald.toml");
    nspawn::give_home_to_user(root);
}

/// A property of the locald unit.
fn show(c: &Container, prop: &str) -> String {
    c.show("locald", prop)
}

#[test]
fn unit_installed_by_hand_runs_in_a_real_user_manager() {
    let marker = unique("e2e-marker");
    let Some(c) = nspawn::boot_or_skip(|root| install(root, &marker)) else {
        return;
    };
    assert_eq!(show(&c, "ActiveState"), "inactive");

    // The first call activates the daemon through the bus and systemd.
    let up = c.user(&format!("{HOME}/proj"), "locald-ctl up");
    assert!(
        up.status.success(),
        "locald-ctl up: {}{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );
    assert_eq!(show(&c, "ActiveState"), "active");
    wait_until(
        Duration::from_secs(15),
        "STATUS= with both services",
        || show(&c, "StatusText") == "1 project, 2 running, 0 failed",
    );
    let status = c.user(&format!("{HOME}/proj"), "locald-ctl status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("shop (running)"), "{text}");
    // Service output reaches the journal with the service's fields (each
    // service runs as a systemd unit here, tests/tests/systemd_units.rs).
    wait_until(Duration::from_secs(10), "web's line in the journal", || {
        let out = c.root(&[
            "journalctl",
            "-q",
            "-o",
            "cat",
            "LOCALD_PROJECT=shop",
            "LOCALD_SERVICE=web",
        ]);
        String::from_utf8_lossy(&out.stdout).contains("hello from web")
    });

    // Several watchdog periods pass without a restart.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(show(&c, "ActiveState"), "active");
    assert_eq!(show(&c, "NRestarts"), "0", "the watchdog must be fed");

    // SIGKILL: systemd restarts the daemon, which brings the project back
    // with each service exactly once.
    let old = show(&c, "MainPID");
    let k = c.root(&["sh", "-c", &format!("kill -KILL {old}")]);
    assert!(k.status.success(), "{k:?}");
    wait_until(Duration::from_secs(20), "systemd to restart locald", || {
        let pid = show(&c, "MainPID");
        pid != old && pid != "0" && show(&c, "StatusText") == "1 project, 2 running, 0 failed"
    });
    assert_eq!(show(&c, "NRestarts"), "1");
    std::thread::sleep(Duration::from_millis(500));
    let web = service_pids(&format!("{marker}-web"));
    let db = service_pids(&format!("{marker}-db"));
    assert_eq!((web.len(), db.len()), (1, 1), "web {web:?}, db {db:?}");

    // The dashboard unit: it serves on 127.0.0.1:8765 (the container shares
    // the host's network) and writes its address, token included, where
    // only the user reads it.
    let start = c.user(HOME, "systemctl --user start locald-dashboard");
    assert!(start.status.success(), "{start:?}");
    let url_file = "/run/user/1000/locald/dashboard-url";
    let mut url = String::new();
    wait_until(Duration::from_secs(15), "the dashboard's URL file", || {
        let out = c.root(&["cat", url_file]);
        url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        !url.is_empty()
    });
    let mode = c.root(&["stat", "-c", "%a %u", url_file]);
    assert_eq!(String::from_utf8_lossy(&mode.stdout).trim(), "600 1000");
    let token = url
        .strip_prefix("http://127.0.0.1:8765/#token=")
        .unwrap_or_else(|| panic!("{url}"));
    let state = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", 8765)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        write!(
            s,
            "GET /api/state HTTP/1.1\r\nHost: 127.0.0.1:8765\r\nX-Locald-Token: {token}\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    assert!(state.starts_with("HTTP/1.1 200"), "{state}");
    assert!(
        state.contains(r#""connected":true"#) && state.contains(r#""shop""#),
        "{state}"
    );
    let stop = c.user(HOME, "systemctl --user stop locald-dashboard");
    assert!(stop.status.success(), "{stop:?}");
    let gone = c.root(&["test", "-e", url_file]);
    assert!(!gone.status.success(), "the URL file goes with the service");

    // Stopping the unit stops every service.
    let stop = c.user(HOME, "systemctl --user stop locald");
    assert!(stop.status.success(), "{stop:?}");
    assert_eq!(show(&c, "ActiveState"), "inactive");
    wait_until(Duration::from_secs(10), "services gone after stop", || {
        pids_with(&marker).is_empty()
    });
    // With the daemon stopped and activation available, a call brings it back.
    // It was up when the unit stopped, so it is restored before the name is
    // taken and this very call sees it.
    let again = c.user(&format!("{HOME}/proj"), "locald-ctl status");
    assert!(again.status.success(), "{again:?}");
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(
        text.contains("shop (") && text.contains("web") && text.contains("db"),
        "{again:?}"
    );
    wait_until(Duration::from_secs(10), "locald active again", || {
        show(&c, "ActiveState") == "active"
    });

    // Logging out (or shutting down) stops the user manager: it stops the
    // session bus along with locald and its units. locald must not wait
    // for a bus that is gone (it did, until systemd's 90 s stop timeout).
    let t = std::time::Instant::now();
    let logout = c.root(&["timeout", "60", "systemctl", "stop", "user@1000.service"]);
    let took = t.elapsed();
    assert!(logout.status.success(), "{logout:?}");
    let log = c.root(&["journalctl", "-q", "--no-pager", "-o", "cat"]);
    let log = String::from_utf8_lossy(&log.stdout);
    assert!(
        took < Duration::from_secs(15)
            && !log.contains("locald.service: State 'stop-sigterm' timed out"),
        "logout took {took:?}: {log}"
    );
    assert!(pids_with(&marker).is_empty(), "services left after logout");
}
