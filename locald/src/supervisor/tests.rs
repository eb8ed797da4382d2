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
use crate::runtime::fake::{Behavior, Call, FakeRuntime};
use crate::runtime::RuntimeSet;

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
    let config = Config::parse(std::path::Path::new("/fsm/locald.toml"), toml)
        .unwrap_or_else(|e| panic!("test config: {e}"));
    let (events, rx) = broadcast::channel(4096);
    let env = Env {
        events,
        sink: Arc::new(Fanout::new()),
        runtime: RuntimeSet::host(Arc::new(rt.clone())),
        url_port: super::UrlPort::default(),
        sources: crate::watch::WatchSlot::default(),
        paths: Arc::new(locald_core::paths::Paths::under(dir.path())),
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
    let rt = FakeRuntime::new([crash; 10]);
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
    let rt = FakeRuntime::new([Behavior::FailSpawnErrno(libc::EMFILE); 12]);
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
