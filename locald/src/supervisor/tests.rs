//! The state machine against the scripted [`FakeRuntime`] under tokio's
//! paused clock: exact backoff delays, the start limit, permanent errors,
//! stop escalation and dependency order, each in milliseconds of real time.

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::{Env, Project};
use crate::config::Config;
use crate::event::{Event, ServiceState};
use crate::output::Fanout;
use crate::runtime::fake::{Adopt, Behavior, Call, FakeRuntime};
use crate::runtime::notify::Notice;
use crate::runtime::{ExitStatus, ProcessEvent, RuntimeSet};

fn project(
    toml: &str,
    rt: &FakeRuntime,
) -> (Project, broadcast::Receiver<Event>, tempfile::TempDir) {
    // The notify sockets and pid records live in a private runtime dir of
    // the test's own, passed in (the process environment is shared by the
    // test threads).
    let dir = tempfile::Builder::new()
        .prefix("locald-fsm-")
        .tempdir()
        .unwrap_or_else(|e| panic!("tempdir: {e}"));
    // The project directory is real: builds keep their records in it.
    let root = dir.path().join("project");
    std::fs::create_dir_all(&root).unwrap_or_else(|e| panic!("project dir: {e}"));
    let config = Config::parse(&root.join("locald.toml"), toml)
        .unwrap_or_else(|e| panic!("test config: {e}"));
    let (events, rx) = broadcast::channel(4096);
    let env = Env {
        events,
        sink: Arc::new(Fanout::new()),
        runtime: RuntimeSet::host(Arc::new(rt.clone())),
        url_port: super::UrlPort::default(),
        sources: crate::watch::WatchSlot::default(),
        paths: Arc::new(locald_core::paths::Paths::under(dir.path())),
        images: crate::runtime::ImageStore::none("no image store in these tests"),
    };
    (Project::start(config, env), rx, dir)
}

/// Waits (in paused time) until `service` reaches `state`.
async fn reach(p: &Project, service: &str, state: ServiceState) {
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let snap = p.view().snapshot();
        if snap
            .services
            .iter()
            .any(|s| s.name == service && s.state == state)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{service} never reached {state:?}: {snap:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test(start_paused = true)]
async fn crash_restarts_back_off_exponentially_then_hit_the_start_limit() {
    let crash = Behavior::Exit {
        after: Duration::ZERO,
        code: 1,
    };
    let rt = FakeRuntime::new(vec![crash; 10]);
    let (mut p, _rx, _dir) = project(
        "[services.web]\ncommand = \"x\"\nrestart_delay = \"100ms\"\nstart_limit_burst = 5\nstart_limit_interval = \"1h\"\n",
        &rt,
    );
    reach(&p, "web", ServiceState::Failed).await;
    let spawns = rt.spawns("web");
    assert_eq!(spawns.len(), 5, "the fifth failure hits the limit");
    let ms: Vec<u128> = gaps(&spawns).iter().map(Duration::as_millis).collect();
    assert_eq!(ms, [100, 200, 400, 800]);
    let snap = p.view().snapshot();
    assert!(snap.services[0]
        .reason
        .starts_with("start limit hit: 5 failures"));
    p.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_run_longer_than_the_longest_delay_resets_the_doubling() {
    let rt = FakeRuntime::new([
        Behavior::Exit {
            after: Duration::ZERO,
            code: 1,
        },
        Behavior::Exit {
            after: Duration::ZERO,
            code: 1,
        },
        Behavior::Exit {
            after: Duration::from_secs(10),
            code: 1,
        },
        Behavior::Exit {
            after: Duration::ZERO,
            code: 1,
        },
    ]);
    let (mut p, _rx, _dir) = project(
        "[services.web]\ncommand = \"x\"\nrestart_delay = \"100ms\"\nrestart_delay_max = \"1s\"\nstart_limit_burst = 50\n",
        &rt,
    );
    let end = Instant::now() + Duration::from_secs(60);
    while rt.spawns("web").len() < 5 && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let s = rt.spawns("web");
    assert!(s.len() >= 5);
    // 100, 200, then a 10 s run (> delay_max): back to 100.
    assert_eq!(s[1] - s[0], Duration::from_millis(100));
    assert_eq!(s[2] - s[1], Duration::from_millis(200));
    assert_eq!(
        s[3] - s[2],
        Duration::from_secs(10) + Duration::from_millis(100)
    );
    p.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_missing_program_fails_at_once_without_backoff() {
    let rt = FakeRuntime::new([Behavior::FailSpawn(std::io::ErrorKind::NotFound)]);
    let (mut p, _rx, _dir) = project("[services.web]\ncommand = [\"/no/such\"]\n", &rt);
    let t0 = Instant::now();
    reach(&p, "web", ServiceState::Failed).await;
    assert!(
        Instant::now() - t0 < Duration::from_millis(5),
        "no backoff delay"
    );
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(rt.spawns("web").len(), 1, "never retried");
    assert_eq!(p.view().snapshot().services[0].restart_count, 0);
    p.shutdown().await;
}

/// Regression (#19 item 3): with the daemon's descriptors taken by a flood
/// of connections, starts failed with EMFILE, hit the start limit and the
/// service stayed failed after the flood was gone. A shortage is retried
/// and never counted.
#[tokio::test(start_paused = true)]
async fn starts_that_fail_for_want_of_descriptors_do_not_count_towards_the_start_limit() {
    let rt = FakeRuntime::new(vec![Behavior::FailSpawnErrno(libc::EMFILE); 12]);
    let (mut p, _rx, _dir) = project(
        "[services.web]\ncommand = \"x\"\nrestart_delay = \"100ms\"\nstart_limit_burst = 3\nstart_limit_interval = \"1h\"\n",
        &rt,
    );
    reach(&p, "web", ServiceState::Running).await;
    assert_eq!(rt.spawns("web").len(), 13, "12 shortages, then the start");
    let gaps: Vec<u128> = gaps(&rt.spawns("web"))
        .iter()
        .map(Duration::as_millis)
        .collect();
    assert!(gaps.iter().all(|&g| g == 100), "no doubling: {gaps:?}");
    p.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn stop_asks_with_the_configured_signal_and_timeout_then_kills() {
    let rt = FakeRuntime::new([Behavior::Serve { grace: None }]);
    let (mut p, _rx, _dir) = project(
        "[services.web]\ncommand = \"x\"\nstop_signal = \"SIGINT\"\nstop_timeout = \"3s\"\n",
        &rt,
    );
    reach(&p, "web", ServiceState::Running).await;
    let sender = p.sender("web").expect("sender");
    let t0 = Instant::now();
    sender.stop().await;
    assert_eq!(
        Instant::now() - t0,
        Duration::from_secs(3),
        "escalated after the timeout"
    );
    let mut calls: Vec<Call> = rt.calls().into_iter().map(|(_, c)| c).collect();
    // `kill` may be repeated (it is idempotent); once is what matters.
    calls.dedup();
    assert_eq!(
        calls,
        [
            Call::Spawn("web".into()),
            Call::Stop("web".into(), Signal::SIGINT, Duration::from_secs(3)),
            Call::Kill("web".into()),
        ]
    );
    let snap = p.view().snapshot();
    assert_eq!(snap.services[0].state, ServiceState::Stopped);
    assert_eq!(snap.services[0].exit_status, Some(128 + 9));
    p.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn dependents_start_after_their_dependency_runs_and_stop_before_it() {
    let rt = FakeRuntime::new([]);
    let (mut p, _rx, _dir) = project(
        "[services.web]\ncommand = \"x\"\ndepends_on = [\"db\"]\n\n[services.db]\ncommand = \"x\"\n",
        &rt,
    );
    reach(&p, "web", ServiceState::Running).await;
    p.shutdown().await;
    let calls: Vec<Call> = rt.calls().into_iter().map(|(_, c)| c).collect();
    let pos = |c: &Call| calls.iter().position(|x| x == c).expect("call made");
    assert!(pos(&Call::Spawn("db".into())) < pos(&Call::Spawn("web".into())));
    let stop = |u: &str| Call::Stop(u.into(), Signal::SIGTERM, Duration::from_secs(10));
    assert!(pos(&stop("web")) < pos(&stop("db")), "{calls:?}");
}

#[tokio::test(start_paused = true)]
async fn a_dependent_waits_while_its_dependency_is_failed() {
    let rt = FakeRuntime::new([Behavior::FailSpawn(std::io::ErrorKind::PermissionDenied)]);
    let (mut p, _rx, _dir) = project(
        "[services.db]\ncommand = \"x\"\n\n[services.web]\ncommand = \"x\"\ndepends_on = [\"db\"]\n",
        &rt,
    );
    reach(&p, "db", ServiceState::Failed).await;
    tokio::time::sleep(Duration::from_secs(600)).await;
    let snap = p.view().snapshot();
    let web = snap.services.iter().find(|s| s.name == "web").expect("web");
    assert_eq!(web.state, ServiceState::Pending);
    assert_eq!(web.reason, "waiting for db");
    assert!(rt.spawns("web").is_empty());
    p.shutdown().await;
}

fn snapshot(p: &Project, service: &str) -> crate::event::ServiceSnapshot {
    p.view()
        .snapshot()
        .services
        .into_iter()
        .find(|s| s.name == service)
        .unwrap_or_else(|| panic!("no service {service}"))
}

fn stops(rt: &FakeRuntime, unit: &str) -> Vec<Instant> {
    rt.calls()
        .into_iter()
        .filter(|(_, c)| matches!(c, Call::Stop(u, ..) if u == unit))
        .map(|(t, _)| t)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn an_adopted_workload_is_not_started_again_and_keeps_its_history() {
    let since = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let rt = FakeRuntime::new([]).adoptable(Adopt {
        behavior: Behavior::Serve {
            grace: Some(Duration::ZERO),
        },
        history: Some((3, since)),
    });
    let (mut p, _rx, _dir) = project("[services.web]\ncommand = \"x\"\n", &rt);
    reach(&p, "web", ServiceState::Running).await;
    let web = snapshot(&p, "web");
    assert!(rt.spawns("web").is_empty(), "{:?}", rt.calls());
    assert!(rt
        .calls()
        .iter()
        .any(|(_, c)| *c == Call::Adopt("web".into())));
    assert_eq!(web.restart_count, 3);
    assert_eq!(web.started_at, Some(since));
    assert_eq!(web.runtime, "fake");
    p.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_adopted_workload_that_crashes_restarts_like_any_other() {
    let rt = FakeRuntime::new([]).adoptable(Adopt {
        behavior: Behavior::Exit {
            after: Duration::from_secs(1),
            code: 1,
        },
        history: None,
    });
    let (mut p, _rx, _dir) = project(
        "[services.web]\ncommand = \"x\"\nrestart = \"on-failure\"\nrestart_delay = \"100ms\"\n",
        &rt,
    );
    let t0 = Instant::now();
    while rt.spawns("web").is_empty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(
        rt.spawns("web")[0] - t0,
        Duration::from_secs(1) + Duration::from_millis(100)
    );
    p.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_runtime_watchdog_timeout_is_a_failure_and_restarts() {
    let rt = FakeRuntime::new([Behavior::Events(vec![(
        Duration::from_secs(1),
        ProcessEvent::WatchdogTimeout(ExitStatus::Signaled(6)),
    )])])
    .enforcing_watchdog();
    let (mut p, _rx, _dir) = project(
        "[services.web]\ncommand = \"x\"\nwatchdog_sec = \"5s\"\nrestart = \"on-failure\"\nrestart_delay = \"100ms\"\n",
        &rt,
    );
    reach(&p, "web", ServiceState::Backoff).await;
    let web = snapshot(&p, "web");
    assert!(web.reason.contains("watchdog"), "{}", web.reason);
    assert_eq!(web.exit_status, Some(128 + 6));
    // The runtime ended it: locald did not stop it as well.
    assert!(stops(&rt, "web").is_empty(), "{:?}", rt.calls());
    reach(&p, "web", ServiceState::Running).await;
    let s = rt.spawns("web");
    assert_eq!(s[1] - s[0], Duration::from_millis(1100));
    p.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn locald_times_the_watchdog_when_the_runtime_does_not() {
    let rt = FakeRuntime::new([Behavior::Serve {
        grace: Some(Duration::ZERO),
    }]);
    let (mut p, _rx, _dir) = project(
        "[services.web]\ncommand = \"x\"\nwatchdog_sec = \"2s\"\nrestart_delay = \"100ms\"\n",
        &rt,
    );
    let t0 = Instant::now();
    reach(&p, "web", ServiceState::Backoff).await;
    assert!(snapshot(&p, "web").reason.contains("watchdog"));
    let stopped = stops(&rt, "web");
    assert_eq!(stopped.len(), 1, "{:?}", rt.calls());
    assert_eq!(stopped[0] - t0, Duration::from_secs(2));
    p.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_runtime_that_enforces_the_watchdog_is_not_second_guessed() {
    let rt = FakeRuntime::new([]).enforcing_watchdog();
    let (mut p, _rx, _dir) = project(
        "[services.web]\ncommand = \"x\"\nwatchdog_sec = \"2s\"\n",
        &rt,
    );
    reach(&p, "web", ServiceState::Running).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(snapshot(&p, "web").state, ServiceState::Running);
    assert!(stops(&rt, "web").is_empty(), "{:?}", rt.calls());
    p.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn readiness_and_status_from_the_runtime_reach_the_snapshot() {
    let rt = FakeRuntime::new([Behavior::Events(vec![
        (
            Duration::from_millis(100),
            ProcessEvent::Notice(Notice::Status("warming up".into())),
        ),
        (
            Duration::from_millis(100),
            ProcessEvent::Notice(Notice::Ready),
        ),
    ])]);
    let (mut p, _rx, _dir) = project(
        "[services.web]\ncommand = \"x\"\nhealth = { notify = true }\n",
        &rt,
    );
    reach(&p, "web", ServiceState::Running).await;
    assert_eq!(snapshot(&p, "web").state, ServiceState::Running);
    reach(&p, "web", ServiceState::Healthy).await;
    assert_eq!(snapshot(&p, "web").status_text, "warming up");
    p.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_dependent_starts_once_its_dependency_says_ready() {
    let rt = FakeRuntime::new([
        Behavior::Events(vec![(
            Duration::from_secs(3),
            ProcessEvent::Notice(Notice::Ready),
        )]),
        Behavior::Serve {
            grace: Some(Duration::ZERO),
        },
    ]);
    let (mut p, _rx, _dir) = project(
        "[services.db]\ncommand = \"x\"\nhealth = { notify = true }\n\n[services.web]\ncommand = \"x\"\ndepends_on = [\"db\"]\n",
        &rt,
    );
    reach(&p, "web", ServiceState::Running).await;
    let (db, web) = (rt.spawns("db"), rt.spawns("web"));
    assert_eq!(web[0] - db[0], Duration::from_secs(3));
    p.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_stop_from_outside_is_a_stop_not_a_crash() {
    let rt = FakeRuntime::new([Behavior::Events(vec![(
        Duration::from_secs(1),
        ProcessEvent::StoppedOutside(ExitStatus::Signaled(15)),
    )])]);
    let (mut p, _rx, _dir) = project(
        "[services.web]\ncommand = \"x\"\nrestart = \"always\"\nrestart_delay = \"100ms\"\n",
        &rt,
    );
    reach(&p, "web", ServiceState::Running).await;
    reach(&p, "web", ServiceState::Stopped).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let web = snapshot(&p, "web");
    assert_eq!(web.state, ServiceState::Stopped);
    assert_eq!(web.reason, "stopped outside locald");
    assert_eq!(rt.spawns("web").len(), 1);
    p.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_health_check_stops_and_restarts_the_service() {
    // A port nobody listens on: every probe is refused at once.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let rt = FakeRuntime::new([]);
    let toml = format!(
        "[services.web]\ncommand = \"x\"\nrestart = \"on-failure\"\nrestart_delay = \"100ms\"\n\
         health = {{ tcp = {port}, interval = \"1s\", retries = 2 }}\n"
    );
    let (mut p, _rx, _dir) = project(&toml, &rt);
    // The first counted failure shows at once, in the running state.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !snapshot(&p, "web").reason.ends_with("(1 of 2)") {
        assert!(Instant::now() < deadline, "{:?}", snapshot(&p, "web"));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let web = snapshot(&p, "web");
    assert_eq!(web.state, ServiceState::Running, "{web:?}");
    assert!(web.reason.starts_with("health: tcp port "), "{web:?}");
    reach(&p, "web", ServiceState::Backoff).await;
    assert!(snapshot(&p, "web").reason.contains(": unhealthy"));
    assert_eq!(stops(&rt, "web").len(), 1, "{:?}", rt.calls());
    while rt.spawns("web").len() < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    p.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_build_keeps_the_service_from_starting() {
    let rt = FakeRuntime::new([Behavior::Exit {
        after: Duration::from_millis(10),
        code: 2,
    }]);
    let (mut p, _rx, _dir) = project(
        "[services.web]\ncommand = \"x\"\nbuild = \"make\"\nrestart_delay = \"1h\"\nrestart_delay_max = \"1h\"\n",
        &rt,
    );
    reach(&p, "web", ServiceState::Backoff).await;
    assert!(snapshot(&p, "web").reason.contains(": build failed"));
    assert_eq!(rt.spawns("web.build").len(), 1);
    assert!(rt.spawns("web").is_empty());
    p.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_crash_restart_does_not_run_the_build_again() {
    let rt = FakeRuntime::new([
        Behavior::Exit {
            after: Duration::from_millis(10),
            code: 0,
        },
        Behavior::Exit {
            after: Duration::from_secs(1),
            code: 1,
        },
    ]);
    let (mut p, _rx, _dir) = project(
        "[services.web]\ncommand = \"x\"\nbuild = \"make\"\nrestart = \"on-failure\"\nrestart_delay = \"100ms\"\n",
        &rt,
    );
    while rt.spawns("web").len() < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(rt.spawns("web.build").len(), 1, "{:?}", rt.calls());
    reach(&p, "web", ServiceState::Running).await;
    p.shutdown().await;
}
