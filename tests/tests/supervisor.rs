//! The supervisor with real processes: builds once per up, crash restarts
//! with growing backoff, start limits, dependencies on health, notify
//! readiness, watchdogs, stopping whole process trees, reloads.

use std::sync::Arc;
use std::time::Duration;

use locald::engine::{Engine, EngineOptions};
use locald::event::{Event, ServiceSnapshot, ServiceState};
use locald::runtime::host::HostRuntime;
use locald_tests::{free_port, pids_with, require, unique, wait_for, CollectSink, TestProject};

struct Harness {
    engine: Engine,
    sink: Arc<CollectSink>,
    project: String,
    events: tokio::sync::broadcast::Receiver<Event>,
}

async fn up(p: &TestProject) -> Harness {
    let sink = Arc::new(CollectSink::default());
    let engine = Engine::new(EngineOptions {
        sink: sink.clone(),
        state_dir: None,
        instance: "test".into(),
        paths: locald::paths::Paths::from_env(),
    });
    let events = engine.subscribe();
    let project = engine.up(p.path()).await.expect("up");
    Harness {
        engine,
        sink,
        project,
        events,
    }
}

impl Harness {
    fn service(&self, name: &str) -> ServiceSnapshot {
        let p = self.engine.project(&self.project).expect("project is up");
        p.services
            .into_iter()
            .find(|s| s.name == name)
            .expect("service exists")
    }

    async fn wait_state(
        &self,
        name: &str,
        state: ServiceState,
        timeout: Duration,
    ) -> ServiceSnapshot {
        wait_for(timeout, || {
            Some(self.service(name)).filter(|s| s.state == state)
        })
        .await
        .unwrap_or_else(|| panic!("{name} did not reach {state}; now {:?}", self.service(name)))
    }

    /// Every state `name` went through, in order, from the events so far.
    fn states_seen(&mut self, name: &str) -> Vec<ServiceState> {
        let mut seen = Vec::new();
        while let Ok(ev) = self.events.try_recv() {
            if let Event::ServiceChanged { service, .. } = ev {
                if service.name == name && seen.last() != Some(&service.state) {
                    seen.push(service.state);
                }
            }
        }
        seen
    }
}

fn project_toml(name: &str, body: &str) -> String {
    format!("[project]\nname = \"{name}\"\n\n{body}")
}

#[tokio::test]
async fn crash_restarts_back_off_and_never_rebuild() {
    let p = TestProject::new(&project_toml(
        &unique("crash"),
        r#"
[services.app]
build = "echo built >> build-marker"
command = "date +%s.%N >> starts; exit 3"
restart_delay = "100ms"
restart_delay_max = "5s"
start_limit_burst = 10
"#,
    ));
    let h = up(&p).await;
    let lines = wait_for(Duration::from_secs(10), || {
        let s = p.read("starts");
        (s.lines().count() >= 4).then_some(s)
    })
    .await
    .expect("four starts");
    let times: Vec<f64> = lines
        .lines()
        .map(|l| l.trim().parse().expect("timestamp"))
        .collect();
    let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // Each delay doubles: 100 ms, 200 ms, 400 ms. Process start-up only adds
    // to a gap, so lower bounds hold however busy the machine is.
    for (i, gap) in gaps.iter().enumerate() {
        let floor = 0.1 * f64::from(1u32 << i) * 0.95;
        assert!(*gap >= floor, "delay {i} at least {floor} s: {gaps:?}");
    }
    assert!(gaps[2] > gaps[0], "delays grow: {gaps:?}");
    assert_eq!(
        p.read("build-marker"),
        "built\n",
        "a crash restart never re-runs the build"
    );
    let s = h.service("app");
    assert!(s.restart_count >= 3, "{s:?}");
    assert_eq!(s.exit_status, Some(3));
    h.engine.shutdown().await;
}

#[tokio::test]
async fn explicit_restart_runs_the_build_again() {
    let p = TestProject::new(&project_toml(
        &unique("rebuild"),
        "[services.app]\nbuild = \"echo built >> build-marker\"\ncommand = \"sleep 100\"\n",
    ));
    let h = up(&p).await;
    h.wait_state("app", ServiceState::Running, Duration::from_secs(5))
        .await;
    h.engine
        .restart_service(&h.project, "app")
        .await
        .expect("restart");
    h.wait_state("app", ServiceState::Running, Duration::from_secs(5))
        .await;
    assert_eq!(p.read("build-marker"), "built\nbuilt\n");
    let build_lines = h
        .sink
        .0
        .lock()
        .expect("lines")
        .iter()
        .filter(|l| l.phase == locald::event::Phase::Build)
        .count();
    assert_eq!(build_lines, 0, "the build printed nothing");
    h.engine.shutdown().await;
}

#[tokio::test]
async fn dependent_starts_only_after_the_port_answers() {
    let port = free_port();
    let p = TestProject::new(&project_toml(
        &unique("deps"),
        &format!(
            r#"
[services.db]
command = ["python3", "-c", "import socket,time; time.sleep(1.0); s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', {port})); s.listen(); open('db-listening','w').write(repr(time.time())); time.sleep(100)"]
health = {{ tcp = {port}, interval = "100ms" }}

[services.app]
depends_on = ["db"]
command = ["python3", "-c", "import time; open('app-started','w').write(repr(time.time())); time.sleep(100)"]
"#
        ),
    ));
    let h = up(&p).await;
    wait_for(Duration::from_secs(2), || {
        (h.service("app").reason == "waiting for db").then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("app says what it waits for: {:?}", h.service("app")));
    assert_eq!(h.service("app").state, ServiceState::Pending);
    h.wait_state("app", ServiceState::Running, Duration::from_secs(10))
        .await;
    let app: f64 = wait_for(Duration::from_secs(5), || {
        p.read("app-started").parse().ok()
    })
    .await
    .expect("app started");
    let db: f64 = p.read("db-listening").parse().expect("db listened first");
    assert!(app >= db, "app started at {app}, db listened at {db}");
    assert_eq!(h.service("db").state, ServiceState::Healthy);
    h.engine.shutdown().await;
}

#[tokio::test]
async fn stop_kills_a_setsid_grandchild_that_ignores_sigterm() {
    if require(
        HostRuntime::detect(locald::paths::Paths::from_env().runtime).has_cgroups(),
        "no writable cgroup v2 hierarchy (run as root, or under systemd with Delegate=yes)",
    ) {
        return;
    }
    let marker = format!(
        "{}.{}",
        900_000 + std::process::id() % 90_000,
        std::process::id() % 1000
    );
    let p = TestProject::new(&project_toml(
        &unique("setsid"),
        &format!(
            r#"
[services.tree]
command = "setsid sh -c 'trap \"\" TERM; exec sleep {marker}' & wait"
stop_timeout = "500ms"
"#
        ),
    ));
    let h = up(&p).await;
    h.wait_state("tree", ServiceState::Running, Duration::from_secs(5))
        .await;
    wait_for(Duration::from_secs(5), || {
        (!pids_with(&format!("sleep {marker}")).is_empty()).then_some(())
    })
    .await
    .expect("grandchild started");
    h.engine
        .stop_service(&h.project, "tree")
        .await
        .expect("stop");
    assert_eq!(h.service("tree").state, ServiceState::Stopped);
    assert_eq!(
        pids_with(&format!("sleep {marker}")),
        Vec::<i32>::new(),
        "nothing of the service remains"
    );
    h.engine.shutdown().await;
}

#[tokio::test]
async fn failing_build_backs_off_then_fails_while_others_run() {
    let p = TestProject::new(&project_toml(
        &unique("badbuild"),
        r#"
[services.bad]
build = "echo compiling; echo 'error: no' >&2; exit 1"
command = "sleep 100"
restart_delay = "50ms"
start_limit_burst = 3

[services.good]
command = "sleep 100"
"#,
    ));
    let mut h = up(&p).await;
    let failed = h
        .wait_state("bad", ServiceState::Failed, Duration::from_secs(10))
        .await;
    assert!(
        failed.reason.starts_with("start limit hit: 3 failures"),
        "{}",
        failed.reason
    );
    assert!(failed.reason.contains("build failed"), "{}", failed.reason);
    let seen = h.states_seen("bad");
    for s in [
        ServiceState::Building,
        ServiceState::Error,
        ServiceState::Backoff,
        ServiceState::Failed,
    ] {
        assert!(seen.contains(&s), "bad went through {s}: {seen:?}");
    }
    assert_eq!(
        h.service("good").state,
        ServiceState::Running,
        "other services keep running"
    );
    let build = h
        .sink
        .0
        .lock()
        .expect("lines")
        .iter()
        .filter(|l| &*l.service == "bad")
        .cloned()
        .collect::<Vec<_>>();
    assert!(build
        .iter()
        .all(|l| l.phase == locald::event::Phase::Build && l.build_id.is_some()));
    assert!(build
        .iter()
        .any(|l| l.line == b"error: no" && l.stream == locald::event::Stream::Stderr));
    h.engine.shutdown().await;
}

#[tokio::test]
async fn late_ready_notification_makes_the_service_healthy() {
    let p = TestProject::new(&project_toml(
        &unique("notify"),
        r#"
[services.slow]
command = ["python3", "-c", """
import os, socket, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.connect(os.environ['NOTIFY_SOCKET'])
s.send(b'STATUS=warming up')
time.sleep(1.5)
s.send(b'READY=1\\nSTATUS=serving')
time.sleep(100)
"""]
health = { notify = true }
"#,
    ));
    let h = up(&p).await;
    let running = h
        .wait_state("slow", ServiceState::Running, Duration::from_secs(5))
        .await;
    assert!(running.main_pid.is_some());
    wait_for(Duration::from_secs(2), || {
        (h.service("slow").status_text == "warming up").then_some(())
    })
    .await
    .expect("STATUS=");
    assert_eq!(
        h.service("slow").state,
        ServiceState::Running,
        "not healthy before READY=1"
    );
    let healthy = h
        .wait_state("slow", ServiceState::Healthy, Duration::from_secs(5))
        .await;
    assert_eq!(healthy.status_text, "serving");
    h.engine.shutdown().await;
}

#[tokio::test]
async fn watchdog_restarts_a_service_that_stops_pinging() {
    let p = TestProject::new(&project_toml(
        &unique("watchdog"),
        "[services.hung]\ncommand = \"sleep 100\"\nwatchdog_sec = \"300ms\"\nrestart_delay = \"50ms\"\n",
    ));
    let h = up(&p).await;
    let s = wait_for(Duration::from_secs(5), || {
        Some(h.service("hung")).filter(|s| s.restart_count >= 1)
    })
    .await
    .expect("restarted");
    assert!(s.restart_count >= 1);
    h.engine.shutdown().await;
}

#[tokio::test]
async fn reload_touches_only_changed_services() {
    let name = unique("reload");
    let p = TestProject::new(&project_toml(
        &name,
        "[services.a]\ncommand = \"sleep 100\"\n[services.b]\ncommand = \"sleep 101\"\n",
    ));
    let h = up(&p).await;
    let a = h
        .wait_state("a", ServiceState::Running, Duration::from_secs(5))
        .await;
    let b = h
        .wait_state("b", ServiceState::Running, Duration::from_secs(5))
        .await;
    p.write("locald.toml", &project_toml(&name, "[services.a]\ncommand = \"sleep 100\"\n[services.b]\ncommand = \"sleep 102\"\n[services.c]\ncommand = \"sleep 103\"\n"));
    let summary = h.engine.reload(&h.project).await.expect("reload");
    assert_eq!(summary.changed, ["b"]);
    assert_eq!(summary.added, ["c"]);
    assert_eq!(summary.unchanged, ["a"]);
    let b2 = h
        .wait_state("b", ServiceState::Running, Duration::from_secs(5))
        .await;
    h.wait_state("c", ServiceState::Running, Duration::from_secs(5))
        .await;
    assert_eq!(h.service("a").main_pid, a.main_pid, "a untouched");
    assert_ne!(b2.main_pid, b.main_pid, "b restarted");
    h.engine.shutdown().await;
}

#[tokio::test]
async fn clean_exit_with_on_failure_stays_stopped() {
    let p = TestProject::new(&project_toml(
        &unique("oneshot"),
        "[services.once]\ncommand = \"echo done\"\n",
    ));
    let h = up(&p).await;
    let s = h
        .wait_state("once", ServiceState::Stopped, Duration::from_secs(5))
        .await;
    assert_eq!(s.reason, "exited successfully");
    assert_eq!(s.exit_status, Some(0));
    assert_eq!(h.sink.lines("once"), ["done"]);
    h.engine.shutdown().await;
}

#[tokio::test]
async fn missing_program_is_an_error_with_the_reason() {
    let p = TestProject::new(&project_toml(
        &unique("noprog"),
        "[services.x]\ncommand = [\"/nonexistent/prog\"]\nrestart_delay = \"10ms\"\nstart_limit_burst = 2\n",
    ));
    let h = up(&p).await;
    let s = h
        .wait_state("x", ServiceState::Failed, Duration::from_secs(5))
        .await;
    assert!(
        s.reason.contains("cannot start `/nonexistent/prog`"),
        "{}",
        s.reason
    );
    h.engine.shutdown().await;
}

/// A `sh -c` line whose program is not on PATH fails at once with the
/// same words as an argv's, instead of exiting 127 start after start; and
/// `locald check` warns of both forms.
#[tokio::test]
async fn a_shell_line_whose_program_is_missing_fails_at_once_and_check_warns() {
    let toml = project_toml(
        &unique("noprog-sh"),
        "[services.x]\ncommand = \"PORT=1 no-such-program-zz --flag\"\nrestart_delay = \"10ms\"\n\n\
         [services.y]\ncommand = [\"no-such-program-yy\"]\n\n\
         [services.z]\ncommand = \"echo fine; exec sleep 100\"\n",
    );
    let p = TestProject::new(&toml);
    let h = up(&p).await;
    let s = h
        .wait_state("x", ServiceState::Failed, Duration::from_secs(5))
        .await;
    assert_eq!(
        s.reason, "cannot start `no-such-program-zz`: not found in PATH",
        "{s:?}"
    );
    assert_eq!(s.restart_count, 0, "{s:?}");
    h.engine.shutdown().await;

    let check = std::process::Command::new(locald_tests::bin("locald"))
        .arg("check")
        .arg(p.path())
        .output()
        .expect("locald check");
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{err}");
    for name in ["no-such-program-zz", "no-such-program-yy"] {
        assert!(
            err.contains(&format!("`{name}` is not found in PATH")),
            "{err}"
        );
    }
    assert!(!err.contains("`echo`"), "{err}");
}

#[tokio::test]
async fn first_health_pass_does_not_wait_a_whole_interval() {
    let port = free_port();
    let p = TestProject::new(&project_toml(
        &unique("eager"),
        &format!(
            r#"
[services.db]
command = ["python3", "-c", "import socket,time; time.sleep(0.3); s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(100)"]
health = {{ tcp = {port}, interval = "30s" }}
"#
        ),
    ));
    let h = up(&p).await;
    // Listening after 0.3 s; with a 30 s interval, only eager first probes
    // make it Healthy within seconds.
    h.wait_state("db", ServiceState::Healthy, Duration::from_secs(5))
        .await;
    h.engine.shutdown().await;
}

#[tokio::test]
async fn eager_first_probes_do_not_spend_retries_early() {
    let port = free_port();
    let p = TestProject::new(&project_toml(
        &unique("eagerfail"),
        &format!(
            r#"
[services.db]
command = "sleep 100"
health = {{ tcp = {port}, interval = "400ms", retries = 3, start_period = "0s" }}
"#
        ),
    ));
    let started = std::time::Instant::now();
    let h = up(&p).await;
    wait_for(Duration::from_secs(10), || {
        h.service("db").reason.contains("unhealthy").then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("db never unhealthy: {:?}", h.service("db")));
    // Three counted failures, one per interval: at least two intervals.
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "failed after {:?}",
        started.elapsed()
    );
    h.engine.shutdown().await;
}
