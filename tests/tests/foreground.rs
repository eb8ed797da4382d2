//! `locald up` as a user runs it: output prefixed by service, build lines
//! marked, Ctrl-C stops in reverse dependency order and exits 0, a service
//! that fails with nothing else running makes it exit non-zero with why.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use locald_tests::{bin, free_port, unique, TestProject};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn spawn_up(p: &TestProject) -> std::process::Child {
    spawn_up_with(p, &[])
}

fn spawn_up_with(p: &TestProject, env: &[(&str, &str)]) -> std::process::Child {
    Command::new(bin("locald"))
        .arg("up")
        .arg(p.path())
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn locald up")
}

fn wait_file(p: &TestProject, rel: &str, timeout: Duration) {
    let end = Instant::now() + timeout;
    while !p.join(rel).exists() {
        assert!(Instant::now() < end, "{rel} never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn finish(mut child: std::process::Child, timeout: Duration) -> (Option<i32>, String, String) {
    let end = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut out = String::new();
            let mut err = String::new();
            child
                .stdout
                .take()
                .expect("stdout")
                .read_to_string(&mut out)
                .expect("read");
            child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut err)
                .expect("read");
            return (status.code(), out, err);
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("locald up did not exit in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn ctrl_c_stops_in_reverse_dependency_order_and_exits_0() {
    let port = free_port();
    let p = TestProject::new(&format!(
        r#"
[project]
name = "{}"

[services.web]
build = "echo building the site"
command = ["python3", "-c", "import socket,time; s=socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); print('listening', flush=True); time.sleep(100)"]
health = {{ tcp = {port}, interval = "100ms" }}

[services.worker]
depends_on = ["web"]
command = "echo worker up; touch worker-started; exec sleep 100"
"#,
        unique("fg")
    ));
    let child = spawn_up(&p);
    wait_file(&p, "worker-started", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(200));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).expect("SIGINT");
    let (code, out, err) = finish(child, Duration::from_secs(15));
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("web:build | building the site"),
        "build lines are marked:\n{out}"
    );
    assert!(
        out.contains("      web | listening"),
        "run lines prefixed by service:\n{out}"
    );
    assert!(out.contains("worker | worker up"), "{out}");
    assert!(!out.contains('\x1b'), "no colour on a pipe:\n{out}");
    let worker_stopped = out.find("worker stopped").expect("worker stopped");
    let web_stopping = out.find("web stopping").expect("web stopping");
    assert!(
        worker_stopped < web_stopping,
        "worker stops before web:\n{out}"
    );
}

#[test]
fn exits_non_zero_when_a_service_fails_and_nothing_else_runs() {
    let p = TestProject::new(&format!(
        "[project]\nname = \"{}\"\n[services.broken]\nbuild = \"exit 7\"\ncommand = \"sleep 100\"\nstart_limit_burst = 1\n\
         [services.after]\ncommand = \"sleep 100\"\ndepends_on = [\"broken\"]\n",
        unique("fgfail")
    ));
    let (code, out, err) = finish(spawn_up(&p), Duration::from_secs(10));
    assert_eq!(code, Some(1), "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("broken failed: start limit hit"), "{err}");
    assert!(err.contains("build command exited with status 7"), "{err}");
}

#[test]
fn exits_0_when_every_service_ended_successfully() {
    let p = TestProject::new(&format!(
        "[project]\nname = \"{}\"\n[services.migrate]\ncommand = \"echo migrated\"\nrestart = \"on-failure\"\n\
         [services.seed]\ncommand = \"true\"\nrestart = \"never\"\n",
        unique("fgdone")
    ));
    let (code, out, err) = finish(spawn_up(&p), Duration::from_secs(10));
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("migrated"), "{out}");
    assert!(out.contains("every service has ended"), "{out}");
}

#[test]
fn broken_config_exits_2_before_running_anything() {
    let p = TestProject::new("[services.web]\ncommand = \"touch ran\"\ndepends_on = [\"db\"]\n");
    let (code, _out, err) = finish(spawn_up(&p), Duration::from_secs(10));
    assert_eq!(code, Some(2));
    assert!(err.contains("locald.toml:3:15"), "{err}");
    assert!(!p.join("ran").exists());
}

#[test]
fn second_ctrl_c_kills_at_once() {
    let marker = format!("{}.{}", 800_000 + std::process::id() % 90_000, 7);
    let p = TestProject::new(&format!(
        "[project]\nname = \"{}\"\n[services.stubborn]\ncommand = \"trap '' TERM INT; touch started; exec sleep {marker}\"\nstop_timeout = \"60s\"\n",
        unique("fgkill")
    ));
    let child = spawn_up(&p);
    wait_file(&p, "started", Duration::from_secs(10));
    let pid = Pid::from_raw(child.id() as i32);
    kill(pid, Signal::SIGINT).expect("first SIGINT");
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    kill(pid, Signal::SIGINT).expect("second SIGINT");
    let (code, out, _err) = finish(child, Duration::from_secs(10));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "did not wait for the 60 s stop timeout"
    );
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        locald_tests::pids_with(&format!("sleep {marker}")),
        Vec::<i32>::new()
    );
}

/// `locald up` killed with SIGKILL leaves its services running; the next
/// `locald up` of the project stops them before starting, so nothing runs
/// twice. Checked with cgroups and with only the recorded pid.
#[test]
fn a_killed_locald_never_leaves_a_second_copy() {
    for cgroup in ["auto", "off"] {
        let marker = format!("{}.{}", 700_000 + std::process::id() % 90_000, cgroup.len());
        let p = TestProject::new(&format!(
            "[project]\nname = \"{}\"\n[services.svc]\ncommand = [\"sleep\", \"{marker}\"]\n",
            unique("fgstale")
        ));
        let env: Vec<(&str, &str)> = if cgroup == "off" {
            vec![("LOCALD_CGROUP", "off")]
        } else {
            vec![]
        };
        let first = spawn_up_with(&p, &env);
        let pattern = format!("sleep {marker}");
        let end = Instant::now() + Duration::from_secs(10);
        while locald_tests::pids_with(&pattern).is_empty() {
            assert!(Instant::now() < end, "service never started");
            std::thread::sleep(Duration::from_millis(20));
        }
        let old = locald_tests::pids_with(&pattern);
        // The pid record is written just after the process appears: a kill
        // between the two is a window no test should aim at by chance.
        let end = Instant::now() + Duration::from_secs(10);
        while !pid_recorded(old[0]) {
            assert!(Instant::now() < end, "pid {} never recorded", old[0]);
            std::thread::sleep(Duration::from_millis(20));
        }
        kill(Pid::from_raw(first.id() as i32), Signal::SIGKILL).expect("SIGKILL locald");
        let _ = finish(first, Duration::from_secs(5));
        assert_eq!(
            locald_tests::pids_with(&pattern),
            old,
            "the orphan still runs"
        );

        let second = spawn_up_with(&p, &env);
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let now = locald_tests::pids_with(&pattern);
            if now.len() == 1 && now != old {
                break;
            }
            assert!(
                Instant::now() < end,
                "({cgroup}) expected one new copy, have {now:?} (old {old:?})"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        kill(Pid::from_raw(second.id() as i32), Signal::SIGINT).expect("SIGINT");
        let (code, out, _) = finish(second, Duration::from_secs(10));
        assert_eq!(code, Some(0), "{out}");
        assert_eq!(
            locald_tests::pids_with(&pattern),
            Vec::<i32>::new(),
            "({cgroup}) nothing left"
        );
    }
}

/// Whether some `units/*/*.pid` record in locald's runtime directory names `pid`.
fn pid_recorded(pid: i32) -> bool {
    let dir = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => std::path::PathBuf::from(d).join("locald"),
        _ => std::path::PathBuf::from(format!("/tmp/locald-{}", nix::unistd::geteuid())),
    };
    let Ok(keys) = std::fs::read_dir(dir.join("units")) else {
        return false;
    };
    // Only a record in place counts: the temporary file it is written
    // through (`.svc.pid.PID.N.tmp`) is not one yet, and a kill before the
    // rename leaves no record (that window made this test flaky).
    keys.flatten()
        .filter_map(|k| std::fs::read_dir(k.path()).ok())
        .flatten()
        .flatten()
        .filter(|f| {
            let name = f.file_name();
            let name = name.to_string_lossy();
            name.ends_with(".pid") && !name.starts_with('.')
        })
        .filter_map(|f| std::fs::read_to_string(f.path()).ok())
        .any(|text| text.split_whitespace().next() == Some(&pid.to_string()))
}
