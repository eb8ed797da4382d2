//! Image services as transient units, end to end in a real systemd user
//! manager (a container booted with systemd-nspawn, with runc, uidmap and a
//! root-owned setuid `locald-shim` installed): the unit's main process is
//! the shim, its output reaches the journal with locald's fields and
//! `LOCALD_IMAGE`, the container keeps running (same pid) across a daemon
//! `kill -9`, a `systemctl --user stop` of the unit stops the container with
//! the image's stop signal and is a stop in locald's view, and a shim killed
//! with SIGKILL (which leaves runc, run as root, and the container behind)
//! is cleaned up by the unit's `ExecStopPost`, never leaving two copies.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use locald_tests::images::build_busybox_layout;
use locald_tests::nspawn::{self, text, wait_until, Container, HOME};
use locald_tests::{find_service, pids_with, require, unique};

const WEB: &str = "locald-box-web.service";

fn install(root: &Path, marker: &str) {
    let home = root.join(HOME.trim_start_matches('/'));
    nspawn::install_locald(root);
    // The shim as a package installs it: root-owned, setuid, at the path
    // locald looks for it.
    let shim = root.join("usr/libexec/locald/locald-shim");
    std::fs::create_dir_all(shim.parent().expect("parent")).expect("mkdir");
    std::fs::copy(
        locald_tests::shim::built_shim().expect("build locald-shim"),
        &shim,
    )
    .expect("copy the shim");
    std::os::unix::fs::chown(&shim, Some(0), Some(0)).expect("chown shim");
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o4755)).expect("chmod shim");

    let project = home.join("box");
    std::fs::create_dir_all(&project).expect("mkdir");
    build_busybox_layout(&project.join("layout")).expect("busybox layout");
    // The stop signal reaches the container's shell, which says goodbye.
    std::fs::write(
        project.join("locald.toml"),
        format!(
            r#"[project]
name = "box"

[services.web]
image = "oci:./layout:v1"
command = ["/bin/busybox", "sh", "-c", "trap 'echo box-bye; exit 0' TERM; echo box-up; while :; do /bin/busybox sleep 0.2; done", "{marker}-web"]
stop_timeout = "5s"

# Opted out: a child of locald through the shim, no unit.
[services.side]
image = "oci:./layout:v1"
command = ["/bin/busybox", "sh", "-c", "trap 'exit 0' TERM; while :; do /bin/busybox sleep 0.2; done", "{marker}-side"]
runtime = "host"
"#
        ),
    )
    .expect("locald.toml");
    nspawn::give_home_to_user(root);
}

fn boot(marker: &str) -> Option<Container> {
    if let Some(why) = locald_tests::images::missing_tools() {
        if require(false, &why) {
            return None;
        }
    }
    let c = nspawn::boot_or_skip(|root| install(root, marker))?;
    // nspawn mounts the v1 controllers read-only; runc needs to make the
    // shim's cgroups in them (tests/README.md, "A systemd user manager").
    let rw = c.root(&[
        "sh",
        "-c",
        "for d in /sys/fs/cgroup/*/; do mount -o remount,bind,rw \"$d\" 2>/dev/null; done; true",
    ]);
    assert!(rw.status.success(), "{rw:?}");
    Some(c)
}

fn status_json(c: &Container) -> serde_json::Value {
    let out = text(&c.user(&format!("{HOME}/box"), "locald-ctl status --json"));
    serde_json::from_str(out.trim()).unwrap_or(serde_json::Value::Null)
}

/// web's entry in `status --json` (`null` while there is none).
fn web(c: &Container) -> serde_json::Value {
    find_service(&status_json(c), "web")
        .cloned()
        .unwrap_or_default()
}

/// The journal's lines of web, as the user reads them.
fn web_lines(c: &Container) -> String {
    text(&c.user(
        HOME,
        "journalctl --user -q -o cat LOCALD_PROJECT=box LOCALD_SERVICE=web",
    ))
}

/// The container's processes (its shell and sleeps carry the marker).
fn container_shells(marker: &str) -> Vec<i32> {
    pids_with(&format!("{marker}-web"))
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.starts_with("/bin/busybox") && !c.contains("locald")
                })
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn image_services_run_in_units_and_survive_a_daemon_restart() {
    let marker = unique("sdctr");
    let Some(c) = boot(&marker) else { return };
    let up = c.user(&format!("{HOME}/box"), "locald-ctl up");
    assert!(up.status.success(), "locald-ctl up: {}", text(&up));
    wait_until(
        Duration::from_secs(90),
        "web's unit active and its line",
        || c.show(WEB, "ActiveState") == "active" && web_lines(&c).contains("box-up"),
    );

    // The unit runs the shim (through locald's forwarder), stops it with the
    // image's stop signal to the main process only, and deletes the
    // container however it ends.
    assert_eq!(c.show(WEB, "KillMode"), "mixed");
    assert_eq!(c.show(WEB, "KillSignal"), "15");
    assert_eq!(c.show(WEB, "TimeoutStopUSec"), "5s");
    assert_eq!(c.show(WEB, "Slice"), "locald-box.slice");
    let start = c.show(WEB, "ExecStart");
    assert!(
        start.contains("internal-unit-exec") && start.contains("locald-shim"),
        "ExecStart: {start}"
    );
    let post = c.show(WEB, "ExecStopPost");
    assert!(post.contains("delete"), "ExecStopPost: {post}");
    let main_pid = c.show(WEB, "MainPID");
    let comm = text(&c.root(&["cat", &format!("/proc/{main_pid}/comm")]));
    assert_eq!(comm.trim(), "locald-shim", "main pid {main_pid}");

    // locald reports the container's init, run by systemd.
    let w = web(&c);
    assert_eq!(w["runtime"], "systemd", "{w}");
    assert_eq!(w["state"], "running", "{w}");
    let pid = w["main_pid"].as_u64().expect("web has a pid");
    assert_ne!(
        pid.to_string(),
        main_pid,
        "the container's pid, not the shim's"
    );
    assert_eq!(container_shells(&marker).len(), 1);
    // `runtime = "host"` keeps an image service a child of locald.
    wait_until(Duration::from_secs(30), "side running", || {
        find_service(&status_json(&c), "side").is_some_and(|s| s["state"] == "running")
    });
    let side = find_service(&status_json(&c), "side")
        .cloned()
        .unwrap_or_default();
    assert_eq!(side["runtime"], "container", "{side}");
    assert_eq!(
        c.show("locald-box-side.service", "LoadState"),
        "not-found",
        "side has a unit"
    );

    // Output with locald's fields and the image's digest.
    let out = c.root(&[
        "journalctl",
        "-q",
        "-o",
        "json",
        &format!("_SYSTEMD_USER_UNIT={WEB}"),
        "LOCALD_SERVICE=web",
        "LOCALD_STREAM=stdout",
    ]);
    let entry = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["MESSAGE"] == "box-up")
        .unwrap_or_else(|| panic!("no box-up entry: {}", text(&out)));
    assert!(
        entry["LOCALD_IMAGE"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "{entry}"
    );
    // The container's pid, as when locald runs the shim itself.
    assert_eq!(entry["LOCALD_PID"], pid.to_string().as_str(), "{entry}");

    // A daemon kill -9: the container keeps running, adopted.
    c.kill_daemon();
    wait_until(Duration::from_secs(30), "web adopted", || {
        let w = web(&c);
        w["state"] == "running" && w["main_pid"].as_u64() == Some(pid)
    });
    assert_eq!(
        c.show(WEB, "MainPID"),
        main_pid,
        "the unit was not restarted"
    );
    assert_eq!(container_shells(&marker).len(), 1);

    // A graceful restart (an upgrade) too; and the container still reaches
    // the new daemon's notify socket: its directory is bind-mounted, so the
    // socket must be made again in that same directory.
    let old = c.daemon_pid();
    let r = c.user(HOME, "systemctl --user restart locald");
    assert!(r.status.success(), "{}", text(&r));
    c.wait_for_new_daemon(&old);
    wait_until(Duration::from_secs(30), "web adopted again", || {
        let w = web(&c);
        w["state"] == "running" && w["main_pid"].as_u64() == Some(pid)
    });
    assert_eq!(
        c.show(WEB, "MainPID"),
        main_pid,
        "restarted by a daemon restart"
    );
    let inode = |argv: &[&str]| text(&c.root(argv)).trim().to_owned();
    let outside = inode(&[
        "sh",
        "-c",
        "stat -c %i /run/user/1000/locald/notify/*.web/notify.sock",
    ]);
    let inside = inode(&[
        "stat",
        "-c",
        "%i",
        &format!("/proc/{pid}/root/run/locald/notify/notify.sock"),
    ]);
    assert!(
        !outside.is_empty() && outside == inside,
        "{outside} vs {inside}"
    );

    // A stop by hand reaches the container with its stop signal, and
    // locald takes it as a stop, not a crash.
    let by_hand = c.user(HOME, &format!("systemctl --user stop {WEB}"));
    assert!(by_hand.status.success(), "{by_hand:?}");
    wait_until(Duration::from_secs(15), "the container gone", || {
        container_shells(&marker).is_empty()
    });
    assert!(web_lines(&c).contains("box-bye"), "{}", web_lines(&c));
    wait_until(
        Duration::from_secs(15),
        "web stopped in locald's view",
        || web(&c)["state"] == "stopped",
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        web(&c)["state"],
        "stopped",
        "restarted after a stop by hand"
    );
    assert!(container_shells(&marker).is_empty());
}

#[test]
fn a_killed_shim_leaves_no_container_behind() {
    let marker = unique("sdctrk");
    let Some(c) = boot(&marker) else { return };
    let up = c.user(&format!("{HOME}/box"), "locald-ctl up");
    assert!(up.status.success(), "locald-ctl up: {}", text(&up));
    wait_until(Duration::from_secs(90), "web running", || {
        web(&c)["state"] == "running" && container_shells(&marker).len() == 1
    });
    let first = container_shells(&marker);
    // SIGKILL to the shim, as the user may: runc runs as root and keeps the
    // container alive. With the daemon frozen, only the unit's ExecStopPost
    // (the shim's delete) can end it. Then locald restarts web, with one
    // container, never two.
    let daemon = c.daemon_pid();
    let shim = c.show(WEB, "MainPID");
    let k = c.user(HOME, &format!("kill -STOP {daemon}; kill -KILL {shim}"));
    assert!(k.status.success(), "{}", text(&k));
    let gone = std::time::Instant::now() + Duration::from_secs(15);
    let mut cleaned = false;
    while std::time::Instant::now() < gone {
        if container_shells(&marker).iter().all(|p| !first.contains(p)) {
            cleaned = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let k = c.user(HOME, &format!("kill -CONT {daemon}"));
    assert!(k.status.success(), "{}", text(&k));
    assert!(cleaned, "the container outlived its unit without a daemon");
    wait_until(Duration::from_secs(30), "web restarted", || {
        let w = web(&c);
        w["state"] == "running" && w["restart_count"].as_u64() == Some(1)
    });
    // Running means the unit's shim runs; runc makes the container next.
    wait_until(Duration::from_secs(10), "the new container", || {
        container_shells(&marker).len() == 1
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(container_shells(&marker).len(), 1, "one copy, not two");

    // `down` leaves no unit and no container.
    let down = c.user(&format!("{HOME}/box"), "locald-ctl down");
    assert!(down.status.success(), "{}", text(&down));
    wait_until(Duration::from_secs(20), "no container, no unit", || {
        container_shells(&marker).is_empty() && c.show(WEB, "LoadState") == "not-found"
    });
}
