//! End to end in a real systemd user manager (a container booted with
//! systemd-nspawn): under it the daemon runs every host service as a
//! transient unit `locald-<project>-<service>.service` in
//! `locald-<project>.slice` (no `runtime` key needed), whose output reaches
//! the journal with locald's fields without passing through locald; the
//! live `LogLine` signal follows the journal and carries on across a daemon
//! `kill -9` without losing lines; readiness, `STATUS=` and the watchdog go
//! through the unit (`Type=notify`, `WatchdogSec=`); a stop takes
//! descendants that called `setsid` with it; a unit stopped behind locald's
//! back is seen as stopped, not restarted; restart counts survive adoption.

use std::path::Path;
use std::time::{Duration, Instant};

use locald_tests::nspawn::{self, text, wait_until, Container, HOME};
use locald_tests::{find_service, pids_with, service_pids, unique};

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
    let feed = home.join("feed/locald.toml");
    std::fs::create_dir_all(feed.parent().expect("parent")).expect("mkdir");
    std::fs::copy(
        locald_tests::bin("locald-test-unit"),
        home.join(".cargo/bin/locald-test-unit"),
    )
    .expect("copy locald-test-unit");
    std::fs::write(
        &feed,
        format!(
            r#"[project]
name = "feed"

[services.ticker]
command = ["sh", "-c", "i=0; while :; do i=$((i+1)); echo tick-$i; [ $((i % 10)) -eq 0 ] && echo err-$i >&2; sleep 0.1; done", "{marker}-ticker"]

[services.ready]
command = ["{HOME}/.cargo/bin/locald-test-unit", "notify", "1500", "warming done", "0", "{marker}-ready"]
health = {{ notify = true }}

[services.dog]
command = ["{HOME}/.cargo/bin/locald-test-unit", "notify", "0", "up", "1500", "{marker}-dog"]
health = {{ notify = true }}
watchdog_sec = "1s"

[services.flaky]
command = ["sh", "-c", "if [ ! -e $HOME/crashed-once ]; then touch $HOME/crashed-once; exit 1; fi; exec sleep 1000", "{marker}-flaky"]
"#
        ),
    )
    .expect("feed locald.toml");
    let bld = home.join("bld/locald.toml");
    std::fs::create_dir_all(bld.parent().expect("parent")).expect("mkdir");
    std::fs::write(
        &bld,
        format!(
            r#"[project]
name = "bld"

[services.app]
build = "echo building {marker}-build; sleep 4; echo built >&2"
command = ["sh", "-c", "echo app up; sleep 1000", "{marker}-app"]
"#
        ),
    )
    .expect("bld locald.toml");
    nspawn::give_home_to_user(root);
}

fn show(c: &Container, unit: &str, prop: &str) -> String {
    c.show(unit, prop)
}

fn status(c: &Container) -> String {
    text(&c.user(&format!("{HOME}/proj"), "locald-ctl status"))
}

fn boot(marker: &str) -> Option<Container> {
    nspawn::boot_or_skip(|root| install(root, marker))
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
    // A stop by hand stops it as locald would.
    assert_eq!(show(&c, WEB, "KillSignal"), "15");
    assert_eq!(show(&c, WEB, "TimeoutStopUSec"), "2s");
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
    assert_eq!(service_pids(&format!("{marker}-plain")).len(), 1);
    let listed = text(&c.user(HOME, "systemctl --user list-units --no-legend 'locald-*'"));
    assert!(
        listed.contains(WEB) && listed.contains(DB) && !listed.contains("plain"),
        "list-units: {listed}"
    );

    // Output went from the service to the journal through the unit's own
    // forwarder, with locald's fields (journald gives a user unit no
    // LogExtraFields) and the unit's.
    let exec_start = show(&c, WEB, "ExecStart");
    assert!(
        exec_start.contains("internal-unit-exec"),
        "ExecStart: {exec_start}"
    );
    let mut entry = serde_json::Value::Null;
    wait_until(Duration::from_secs(10), "web's line in the journal", || {
        let out = c.root(&[
            "journalctl",
            "-q",
            "-o",
            "json",
            &format!("_SYSTEMD_USER_UNIT={WEB}"),
            "_SYSTEMD_USER_SLICE=locald-shop.slice",
            "LOCALD_PROJECT=shop",
            "LOCALD_SERVICE=web",
            "LOCALD_PHASE=run",
            "LOCALD_STREAM=stdout",
        ]);
        String::from_utf8_lossy(&out.stdout).lines().any(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            let hit = v["MESSAGE"] == "hello from web";
            if hit {
                entry = v;
            }
            hit
        })
    });
    assert_eq!(entry["LOCALD_PID"], main_pid.as_str(), "{entry}");
    assert_eq!(entry["SYSLOG_IDENTIFIER"], "web", "{entry}");
    // The user finds them by locald's fields and by the unit alike.
    for query in [
        "journalctl --user -q -o cat LOCALD_SERVICE=web".to_owned(),
        format!("journalctl --user -q -o cat -u {WEB}"),
    ] {
        let out = text(&c.user(HOME, &query));
        assert!(out.contains("hello from web"), "{query}: {out}");
    }

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

    // Another local user can write entries with any LOCALD_* field (and a
    // USER_UNIT naming web's unit); a user who may read others' journals
    // (group adm, as Debian makes its first user) sees them, but `locald-ctl
    // logs` shows only the user's own (`_UID`, set by journald).
    let eve = c.root(&["sh", "-c", "useradd -m eve && usermod -aG adm dev"]);
    assert!(eve.status.success(), "{eve:?}");
    let forged = c.root(&[
        "setpriv",
        "--reuid=eve",
        "--regid=eve",
        "--clear-groups",
        "sh",
        "-c",
        "printf 'MESSAGE=forged-line\\nLOCALD_PROJECT=shop\\nLOCALD_SERVICE=web\\nLOCALD_PHASE=run\\nLOCALD_STREAM=stdout\\nSYSLOG_IDENTIFIER=web\\nUSER_UNIT=locald-shop-web.service\\n' | logger --journald",
    ]);
    assert!(forged.status.success(), "{}", text(&forged));
    wait_until(Duration::from_secs(10), "dev reads eve's entry", || {
        text(&c.user(HOME, "journalctl -q -o cat LOCALD_SERVICE=web")).contains("forged-line")
    });
    for query in ["locald-ctl logs web", "locald-ctl logs"] {
        let out = text(&c.user(&format!("{HOME}/proj"), query));
        assert!(out.contains("hello from web"), "{query}: {out}");
        assert!(
            !out.contains("forged-line"),
            "{query} shows eve's line: {out}"
        );
    }

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
    let running_with = |pid: &str| {
        let st = status(&c);
        st.lines()
            .any(|l| l.starts_with("web ") && l.contains("running") && l.contains(pid))
    };
    wait_until(Duration::from_secs(10), "web running in status", || {
        running_with(&web)
    });

    // kill -9: systemd restarts the daemon, which adopts both units.
    c.kill_daemon();
    wait_until(Duration::from_secs(15), "web adopted", || {
        running_with(&web)
    });
    assert_eq!(show(&c, WEB, "MainPID"), web, "web was restarted");
    assert_eq!(show(&c, DB, "MainPID"), db, "db was restarted");
    assert_eq!(service_pids(&format!("{marker}-web")).len(), 1);

    // `systemctl --user restart locald` (an upgrade) keeps them too.
    let old = c.daemon_pid();
    let r = c.user(HOME, "systemctl --user restart locald");
    assert!(r.status.success(), "{r:?}");
    c.wait_for_new_daemon(&old);
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
    c.kill_daemon();
    wait_until(Duration::from_secs(15), "db started afresh", || {
        let pid = show(&c, DB, "MainPID");
        show(&c, DB, "ActiveState") == "active" && pid != db && pid != "0"
    });
    wait_until(Duration::from_secs(15), "web adopted again", || {
        running_with(&web)
    });
    assert_eq!(show(&c, WEB, "MainPID"), web, "web was restarted");
    assert_eq!(service_pids(&format!("{marker}-db")).len(), 1, "two dbs");

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

/// The `tick-N` numbers in a `loglines` transcript, in order.
fn ticks(transcript: &str) -> Vec<u64> {
    transcript
        .lines()
        .filter_map(|l| l.strip_prefix("stdout\ttick-")?.parse().ok())
        .collect()
}

/// The service's entry in `locald-ctl status --json` of `dir`.
fn service_json(c: &Container, dir: &str, name: &str) -> serde_json::Value {
    let json = text(&c.user(dir, "locald-ctl status --json"));
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap_or_default();
    find_service(&v, name).cloned().unwrap_or_default()
}

#[test]
fn unit_output_is_live_notify_goes_through_the_unit_and_restarts_survive_adoption() {
    let marker = unique("sdlive");
    let Some(c) = boot(&marker) else { return };
    let feed = format!("{HOME}/feed");
    let up = c.user(&feed, "locald-ctl up");
    assert!(up.status.success(), "locald-ctl up: {}", text(&up));
    const TICKER: &str = "locald-feed-ticker.service";
    const READY: &str = "locald-feed-ready.service";
    const DOG: &str = "locald-feed-dog.service";
    const FLAKY: &str = "locald-feed-flaky.service";
    wait_until(Duration::from_secs(15), "ticker active", || {
        show(&c, TICKER, "ActiveState") == "active"
    });

    // Readiness through the unit: Type=notify, not ready (not healthy)
    // until READY=1, whose STATUS= text reaches locald's status.
    let end = Instant::now() + Duration::from_secs(15);
    while show(&c, READY, "LoadState") != "loaded" {
        assert!(
            Instant::now() < end,
            "no unit for ready:\n{}\n{}",
            text(&c.user(&feed, "locald-ctl status")),
            text(&c.user(&feed, "journalctl --user -q -n 50 -o cat -u locald.service"))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        show(&c, READY, "Type"),
        "notify",
        "{}\n{}",
        text(&c.user(&feed, "locald-ctl status")),
        text(&c.user(&feed, "journalctl --user -q -n 50 -o cat -u locald.service"))
    );
    assert_eq!(
        show(&c, READY, "NotifyAccess"),
        "all",
        "{}",
        text(&c.user(HOME, &format!("systemctl --user show {READY}")))
    );
    let early = service_json(&c, &feed, "ready");
    assert_ne!(early["state"], "healthy", "healthy before READY=1: {early}");
    wait_until(
        Duration::from_secs(10),
        "ready healthy with its status",
        || {
            let v = service_json(&c, &feed, "ready");
            v["state"] == "healthy" && v["status_text"] == "warming done"
        },
    );
    assert_eq!(show(&c, READY, "StatusText"), "warming done");
    assert_eq!(show(&c, READY, "ActiveState"), "active");

    // The watchdog is systemd's: WatchdogSec=1s; when the pings stop after
    // 1.5 s, systemd ends the unit and locald calls it a watchdog timeout
    // and restarts it (a new unit, a new pid).
    assert_eq!(show(&c, DOG, "WatchdogUSec"), "1s");
    let first_dog = show(&c, DOG, "MainPID");
    wait_until(Duration::from_secs(20), "dog ended by the watchdog", || {
        let v = service_json(&c, &feed, "dog");
        v["restart_count"].as_u64().unwrap_or(0) >= 1
    });
    let log = text(&c.user(&feed, "journalctl --user -q -o cat -u locald.service"));
    assert!(
        log.contains("watchdog timeout"),
        "no watchdog timeout in the daemon's log: {log}"
    );
    wait_until(Duration::from_secs(10), "dog running again", || {
        let pid = show(&c, DOG, "MainPID");
        pid != first_dog && pid != "0" && !pid.is_empty()
    });

    // The live LogLine signal follows the unit's journal: stdout and stderr
    // told apart, every line in order.
    let out = text(&c.user(HOME, "locald-test-unit loglines feed ticker 3 2>/dev/null"));
    let t = ticks(&out);
    assert!(t.len() >= 10, "too few live lines: {out}");
    assert!(
        t.windows(2).all(|w| w[1] == w[0] + 1),
        "lines missing or out of order: {t:?}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("stderr\terr-")),
        "no stderr line: {out}"
    );

    // A listener that stays across a daemon kill -9: the new daemon adopts
    // the unit and resumes at the old daemon's cursor, so the lines written
    // while no daemon ran arrive and none is lost.
    let bg = c.user(
        HOME,
        "nohup locald-test-unit loglines feed ticker 120 >live.txt 2>live.err </dev/null &",
    );
    assert!(bg.status.success(), "{}", text(&bg));
    std::thread::sleep(Duration::from_secs(3));
    // flaky crashed once at start; its count must survive the adoption.
    wait_until(
        Duration::from_secs(10),
        "flaky running after one crash",
        || {
            let v = service_json(&c, &feed, "flaky");
            v["state"] == "running" && v["restart_count"] == 1
        },
    );
    let flaky_pid = show(&c, FLAKY, "MainPID");
    let ticker_pid = show(&c, TICKER, "MainPID");
    c.kill_daemon();
    wait_until(
        Duration::from_secs(15),
        "flaky adopted with its count",
        || {
            let v = service_json(&c, &feed, "flaky");
            v["state"] == "running"
                && v["restart_count"] == 1
                && v["main_pid"] == flaky_pid.parse::<u64>().unwrap_or(0)
        },
    );
    assert_eq!(show(&c, TICKER, "MainPID"), ticker_pid, "ticker restarted");
    // A restart while someone listens: the new unit's lines from its very
    // first one (written before any journalctl could be following it).
    std::thread::sleep(Duration::from_secs(3));
    let restart = c.user(&feed, "locald-ctl restart ticker");
    assert!(restart.status.success(), "restart: {}", text(&restart));
    std::thread::sleep(Duration::from_secs(4));
    let stop = c.user(HOME, "pkill -f '[l]ocald-test-unit loglines'");
    assert!(
        stop.status.success(),
        "no listener to stop: {}\n{}\n{}",
        text(&stop),
        text(&c.user(HOME, "cat live.err")),
        text(&c.user(HOME, "tail -5 live.txt"))
    );
    let live = text(&c.user(HOME, "cat live.txt"));
    let err = text(&c.user(HOME, "cat live.err"));
    let all = ticks(&live);
    assert!(
        err.matches("subscribed").count() >= 2,
        "the listener never got back on: {err}"
    );
    let reset = all
        .windows(2)
        .position(|w| w[1] == 1 && w[0] > 1)
        .unwrap_or_else(|| panic!("the restarted ticker's tick-1 never arrived: {all:?}"));
    let (t, after) = all.split_at(reset + 1);
    assert!(
        after.len() >= 10 && after.windows(2).all(|w| w[1] == w[0] + 1),
        "the restarted unit's lines: {after:?}"
    );
    assert!(t.len() >= 50, "too few lines across the restart: {t:?}");
    let mut repeated = 0;
    for w in t.windows(2) {
        assert!(
            w[1] <= w[0] + 1,
            "lines {}..{} lost across the daemon restart: {t:?}",
            w[0] + 1,
            w[1] - 1
        );
        if w[1] <= w[0] {
            repeated += 1;
        }
    }
    // The cursor is saved every 200 ms: at most that much comes again.
    assert!(repeated <= 3, "{repeated} lines repeated: {t:?}");

    let down = c.user(&feed, "locald-ctl down");
    assert!(down.status.success(), "down: {}", text(&down));
    wait_until(Duration::from_secs(15), "every unit gone", || {
        pids_with(&marker).is_empty()
    });
}

#[test]
fn host_builds_run_as_units_and_a_daemon_restart_cancels_them() {
    let marker = unique("sdbuild");
    let Some(c) = boot(&marker) else { return };
    let bld = format!("{HOME}/bld");
    const BUILD: &str = "locald-bld-app.build.service";
    const APP: &str = "locald-bld-app.service";
    let up = c.user(&bld, "locald-ctl up");
    assert!(up.status.success(), "locald-ctl up: {}", text(&up));
    wait_until(Duration::from_secs(15), "the build's unit", || {
        show(&c, BUILD, "ActiveState") == "active"
    });
    let fields = show(&c, BUILD, "LogExtraFields");
    assert!(
        fields.contains("LOCALD_PHASE=build") && fields.contains("LOCALD_SERVICE=app"),
        "{fields}"
    );
    assert_eq!(show(&c, BUILD, "Slice"), "locald-bld.slice");
    // Its lines: the build phase of service app, with the build's id.
    let mut entry = serde_json::Value::Null;
    wait_until(Duration::from_secs(10), "the build's line", || {
        let out = c.root(&[
            "journalctl",
            "-q",
            "-o",
            "json",
            &format!("_SYSTEMD_USER_UNIT={BUILD}"),
            "LOCALD_SERVICE=app",
            "LOCALD_PHASE=build",
        ]);
        String::from_utf8_lossy(&out.stdout).lines().any(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            let hit = v["MESSAGE"]
                .as_str()
                .is_some_and(|m| m.starts_with("building"));
            if hit {
                entry = v;
            }
            hit
        })
    });
    assert!(
        entry["LOCALD_BUILD_ID"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{entry}"
    );
    let first_id = entry["LOCALD_BUILD_ID"].clone();

    // kill -9 of the daemon mid-build: the next daemon stops the orphaned
    // build (a build's half-written output is never trusted) and builds
    // afresh; the service then starts from the new build.
    let old_build = service_pids(&format!("{marker}-build"));
    assert_eq!(old_build.len(), 1, "{old_build:?}");
    c.kill_daemon();
    wait_until(Duration::from_secs(15), "the old build gone", || {
        !std::path::Path::new(&format!("/proc/{}", old_build[0])).exists()
    });
    wait_until(
        Duration::from_secs(30),
        "app running after a new build",
        || show(&c, APP, "ActiveState") == "active",
    );
    let ids = text(&c.root(&[
        "journalctl",
        "-q",
        "-o",
        "json",
        "LOCALD_SERVICE=app",
        "LOCALD_PHASE=build",
    ]));
    let builds: std::collections::BTreeSet<String> = ids
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            v["LOCALD_BUILD_ID"].as_str().map(str::to_owned)
        })
        .collect();
    assert!(
        builds.len() >= 2 && builds.contains(first_id.as_str().unwrap_or_default()),
        "expected the cancelled build and a new one: {builds:?}"
    );
    let st = text(&c.user(&bld, "locald-ctl status"));
    assert!(
        st.lines()
            .any(|l| l.starts_with("app ") && l.contains("running")),
        "{st}"
    );
    let down = c.user(&bld, "locald-ctl down");
    assert!(down.status.success(), "down: {}", text(&down));
    wait_until(Duration::from_secs(15), "every unit gone", || {
        pids_with(&marker).is_empty()
    });
}
