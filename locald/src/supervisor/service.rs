//! The state machine of one service, run as one tokio task.
//!
//! ```text
//! Pending ─(deps healthy)→ Building → Starting → Running → Healthy
//!    ↑                        │           │         │         │
//!    │                        └──────→ Error ←──────┴─────────┘
//!    │                                   │
//!    └──────────── Backoff ←─────────────┤ (start limit hit) → Failed
//! Stop: … → Stopping → Stopped
//! ```
//!
//! Every transition updates the service's snapshot (a `watch` channel the
//! project and dependents read) and is broadcast as an [`Event`]. The task
//! never blocks on a build, a probe or a pipe: those run in their own tasks or
//! as futures raced against the task's command channel, so `stop` always
//! answers.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::{sleep, sleep_until, Instant};

use super::build::Builder;
use super::health::{run_checker, HealthEvent, ProbeContext};
use crate::config::{HealthKind, RestartPolicy, ServiceConfig};
use crate::error_chain;
use crate::event::{BuildRecord, Event, Phase, ServiceSnapshot, ServiceState, Stream};
use crate::output::LogSink;
use crate::runtime::notify::{Notice, NotifySocket};
use crate::runtime::{ExitStatus, LaunchSpec, Process, ProcessEvent, RuntimeSet};
use locald_core::pipe::{pump, PipeOwner};

/// A request to a service task. Replies are sent once the request is done.
pub(crate) enum Command {
    /// Start if stopped or failed.
    Start,
    /// Stop and stay stopped.
    Stop(oneshot::Sender<()>),
    /// Stop if running, build again (when `build`), start; `why` is the
    /// reason shown while it stops ("restart requested", "src/app.py changed").
    Restart {
        reply: oneshot::Sender<()>,
        why: String,
        build: bool,
    },
    /// Build now; does not restart a running process.
    Build {
        force: bool,
        reply: oneshot::Sender<BuildRecord>,
    },
    /// Stop and end the task.
    Shutdown(oneshot::Sender<()>),
}

/// A dependency as seen by a dependent.
pub(crate) struct Dep {
    pub name: String,
    pub snapshot: watch::Receiver<ServiceSnapshot>,
    pub has_health: bool,
}

impl Dep {
    fn satisfied(&self) -> bool {
        let s = self.snapshot.borrow().state;
        s == ServiceState::Healthy || (!self.has_health && s == ServiceState::Running)
    }
}

/// Everything one service task owns.
pub(crate) struct ServiceTask {
    pub project: Arc<str>,
    /// The project instance's key, under which its processes are recorded.
    pub key: Arc<str>,
    pub name: Arc<str>,
    pub cfg: ServiceConfig,
    pub snapshot: Arc<watch::Sender<ServiceSnapshot>>,
    pub events: broadcast::Sender<Event>,
    pub sink: Arc<dyn LogSink>,
    pub runtime: RuntimeSet,
    pub deps: Vec<Dep>,
    pub cmds: mpsc::Receiver<Command>,
    pub builder: Builder,
}

enum Next {
    Run,
    Idle,
    Exit,
}

/// A started (or adopted) workload and what the supervisor needs to know
/// of the runtime it runs on.
struct Running {
    proc: Box<dyn Process>,
    notify: Option<NotifySocket>,
    /// [`crate::runtime::Runtime::name`], for `status`.
    runtime: &'static str,
    /// The runtime times the watchdog itself.
    runtime_watchdog: bool,
    /// When an earlier daemon started it (adopted), else now.
    since: Option<SystemTime>,
}

/// Why a running process ended from the supervisor's point of view.
enum Ended {
    Exited(ExitStatus),
    /// Stopped by someone other than locald.
    Outside(ExitStatus),
    Unhealthy(String),
    Watchdog,
    Stopped(Next),
}

impl ServiceTask {
    pub(crate) async fn run(mut self, start: bool) {
        // A workload an earlier daemon left running unchanged (a systemd
        // unit survives a daemon restart) is taken over, not restarted.
        let mut adopted = None;
        if start {
            let notify = self.bind_notify();
            let spec = self.launch_spec(notify.as_ref());
            let runtime = self
                .runtime
                .for_service(spec.workload.kind(), self.cfg.runtime);
            if let Some(a) = runtime.adopt(&spec).await {
                self.tell(&format!("adopted the running pid {}", a.process.pid()));
                if let Some((restarts, _)) = a.history {
                    self.update(|s| s.restart_count = restarts);
                }
                adopted = Some(Running {
                    proc: a.process,
                    notify,
                    runtime: runtime.name(),
                    runtime_watchdog: runtime.enforces_watchdog(),
                    since: a.history.map(|(_, since)| since),
                });
            }
        }
        let stale = if adopted.is_some() {
            0
        } else {
            self.runtime.clean_stale(&self.key, &self.name).await
        } + self
            .runtime
            .clean_stale(&self.key, &format!("{}.build", self.name))
            .await;
        if stale > 0 {
            let what = if stale == 1 { "process" } else { "processes" };
            tracing::warn!(project = %self.project, service = %self.name, "stopped {stale} {what} left from an earlier run");
        }
        let mut fsm = Fsm {
            build_needed: true,
            failures: VecDeque::new(),
            consecutive: 0,
        };
        let mut next = if start { Next::Run } else { Next::Idle };
        if !start {
            self.set_state(ServiceState::Stopped, "");
        }
        if let Some(running) = adopted {
            next = self.run_process(&mut fsm, running).await;
        }
        loop {
            next = match next {
                Next::Exit => return,
                Next::Idle => self.idle(&mut fsm).await,
                Next::Run => self.attempt(&mut fsm).await,
            };
        }
    }

    fn update(&self, f: impl FnOnce(&mut ServiceSnapshot)) {
        self.snapshot.send_modify(f);
        let snap = self.snapshot.borrow().clone();
        let _ = self.events.send(Event::ServiceChanged {
            project: self.project.to_string(),
            service: snap,
        });
    }

    fn set_state(&self, state: ServiceState, reason: impl Into<String>) {
        let reason = reason.into();
        self.update(|s| {
            s.state = state;
            s.reason = reason;
            if !state.is_active() {
                s.main_pid = None;
            }
        });
    }

    /// Stopped or failed: wait for a request.
    async fn idle(&mut self, fsm: &mut Fsm) -> Next {
        loop {
            match self.cmds.recv().await {
                None => return Next::Exit,
                Some(Command::Start) => {
                    fsm.reset();
                    return Next::Run;
                }
                Some(Command::Restart { reply, why, build }) => {
                    self.tell(&format!("restarting: {why}"));
                    fsm.reset();
                    fsm.build_needed |= build;
                    let _ = reply.send(());
                    return Next::Run;
                }
                Some(Command::Stop(reply)) => {
                    let _ = reply.send(());
                }
                Some(Command::Shutdown(reply)) => {
                    let _ = reply.send(());
                    return Next::Exit;
                }
                Some(Command::Build { force, reply }) => {
                    let before = self.snapshot.borrow().state;
                    let before_reason = self.snapshot.borrow().reason.clone();
                    self.set_state(ServiceState::Building, "");
                    let record = self.builder.build(force).await;
                    self.set_state(before, before_reason);
                    let _ = reply.send(record);
                }
            }
        }
    }

    /// Handles a request that arrives while the service is not yet running.
    /// Returns where to go, or `None` to carry on.
    fn early_command(&mut self, cmd: Option<Command>, fsm: &mut Fsm) -> Option<Next> {
        match cmd {
            None => Some(Next::Exit),
            Some(Command::Start) => None,
            Some(Command::Stop(reply)) => {
                self.set_state(ServiceState::Stopped, "stopped");
                let _ = reply.send(());
                Some(Next::Idle)
            }
            Some(Command::Shutdown(reply)) => {
                self.set_state(ServiceState::Stopped, "stopped");
                let _ = reply.send(());
                Some(Next::Exit)
            }
            Some(Command::Restart { reply, why, build }) => {
                self.tell(&format!("restarting: {why}"));
                fsm.build_needed |= build;
                let _ = reply.send(());
                Some(Next::Run)
            }
            Some(Command::Build { force, reply }) => {
                let builder = self.builder.clone();
                tokio::spawn(async move {
                    let _ = reply.send(builder.build(force).await);
                });
                None
            }
        }
    }

    /// Tells the journal (at info, with the project and service as fields)
    /// what happened to the service, so `journalctl -t locald` tells its story.
    fn tell(&self, what: &str) {
        tracing::info!(project = %self.project, service = %self.name, "{}/{}: {what}", self.project, self.name);
    }

    /// A failure that no retry can mend (this version cannot run the build,
    /// the program does not exist): Failed at once with the reason, no backoff.
    fn permanent(&self, reason: String) -> Next {
        self.tell(&format!("failed, not retrying: {reason}"));
        self.set_state(ServiceState::Failed, reason);
        Next::Idle
    }

    /// One try: wait for dependencies, build if needed, run until the process ends.
    async fn attempt(&mut self, fsm: &mut Fsm) -> Next {
        if let Some(next) = self.wait_for_deps(fsm).await {
            return next;
        }
        if let Some(why) = self.builder.unsupported() {
            return self.permanent(why);
        }

        if self.cfg.build.is_some() && fsm.build_needed {
            self.set_state(ServiceState::Building, "");
            let builder = self.builder.clone();
            let build = builder.build(false);
            tokio::pin!(build);
            let record = loop {
                tokio::select! {
                    r = &mut build => break r,
                    cmd = self.cmds.recv() => {
                        if let Some(next) = self.early_command(cmd, fsm) {
                            return next;
                        }
                    }
                }
            };
            if record.result == crate::event::BuildResult::Failed {
                return self
                    .failure(fsm, format!("build failed: {}", record.reason), None)
                    .await;
            }
            fsm.build_needed = false;
        }

        // The notify socket lives as long as this attempt.
        let notify = self.bind_notify();
        let spec = self.launch_spec(notify.as_ref());
        self.set_state(ServiceState::Starting, "");
        let runtime = self
            .runtime
            .for_service(spec.workload.kind(), self.cfg.runtime);
        let proc = match runtime.spawn(&spec).await {
            Ok(p) => p,
            Err(e) if e.is_permanent() => return self.permanent(error_chain(&e)),
            // Out of descriptors or processes (a flood of connections to
            // the daemon, a fork bomb elsewhere): not the service's fault,
            // so it does not count towards the start limit.
            Err(e) if e.is_resource_shortage() => {
                return self.shortage(fsm, error_chain(&e)).await;
            }
            Err(e) => return self.failure(fsm, error_chain(&e), None).await,
        };
        self.tell(&format!("started (pid {})", proc.pid()));
        let running = Running {
            proc,
            notify,
            runtime: runtime.name(),
            runtime_watchdog: runtime.enforces_watchdog(),
            since: None,
        };
        self.run_process(fsm, running).await
    }

    /// Supervises a started (or adopted) process until it ends, then decides
    /// what comes next.
    async fn run_process(&mut self, fsm: &mut Fsm, running: Running) -> Next {
        let Running {
            mut proc,
            notify,
            runtime,
            runtime_watchdog,
            since,
        } = running;
        let pid = proc.pid();
        let pumps = self.start_pumps(proc.as_mut(), pid);
        let started = Instant::now();
        self.update(|s| {
            s.state = ServiceState::Running;
            s.reason = String::new();
            s.main_pid = Some(pid);
            s.runtime = runtime.to_owned();
            s.started_at = Some(since.unwrap_or_else(SystemTime::now));
            s.status_text = String::new();
        });

        // A runtime that enforces the watchdog itself ends the process.
        let own_watchdog = self.cfg.watchdog.filter(|_| !runtime_watchdog);
        let ended = self
            .supervise(proc.as_mut(), notify.as_ref(), own_watchdog, fsm)
            .await;
        proc.kill().await;
        // A process's last lines belong before what is said about its end
        // (and must not be lost when `locald up` returns right after). A
        // descendant that keeps the pipe open is not waited for.
        let deadline = tokio::time::Instant::now() + PUMP_DRAIN;
        for pump in pumps {
            let _ = tokio::time::timeout_at(deadline, pump).await;
        }
        if started.elapsed() > self.cfg.restart.delay_max {
            fsm.consecutive = 0;
        }
        self.after(fsm, pid, ended).await
    }

    /// What comes after the process `pid` ended as `ended`: said, then a
    /// stop, a restart after backoff, or the end of the service.
    async fn after(&mut self, fsm: &mut Fsm, pid: u32, ended: Ended) -> Next {
        match &ended {
            Ended::Exited(status) | Ended::Outside(status) => {
                self.tell(&format!("pid {pid} {status}"))
            }
            Ended::Unhealthy(reason) => {
                self.tell(&format!("pid {pid} stopped: unhealthy: {reason}"))
            }
            Ended::Watchdog => self.tell(&format!("pid {pid} stopped: watchdog timeout")),
            Ended::Stopped(_) => {}
        }
        match ended {
            Ended::Stopped(next) => next,
            Ended::Unhealthy(reason) => {
                self.failure(fsm, format!("unhealthy: {reason}"), None)
                    .await
            }
            Ended::Watchdog => {
                self.failure(fsm, "watchdog timeout: no WATCHDOG=1 in time".into(), None)
                    .await
            }
            Ended::Outside(status) => {
                // `systemctl --user stop` of its unit: a stop, not a crash.
                self.update(|s| s.exit_status = Some(status.code()));
                self.set_state(ServiceState::Stopped, "stopped outside locald");
                Next::Idle
            }
            Ended::Exited(status) => {
                let restart = match self.cfg.restart.policy {
                    RestartPolicy::Always => true,
                    RestartPolicy::OnFailure => !status.success(),
                    RestartPolicy::Never => false,
                };
                if restart {
                    self.failure(fsm, status.to_string(), Some(status)).await
                } else {
                    self.update(|s| s.exit_status = Some(status.code()));
                    if status.success() {
                        self.set_state(ServiceState::Stopped, "exited successfully");
                    } else {
                        self.set_state(ServiceState::Failed, status.to_string());
                    }
                    Next::Idle
                }
            }
        }
    }

    async fn wait_for_deps(&mut self, fsm: &mut Fsm) -> Option<Next> {
        let mut changes = self.events.subscribe();
        loop {
            let waiting: Vec<&str> = self
                .deps
                .iter()
                .filter(|d| !d.satisfied())
                .map(|d| d.name.as_str())
                .collect();
            if waiting.is_empty() {
                return None;
            }
            let reason = format!("waiting for {}", waiting.join(", "));
            if self.snapshot.borrow().state != ServiceState::Pending
                || self.snapshot.borrow().reason != reason
            {
                self.set_state(ServiceState::Pending, reason);
            }
            tokio::select! {
                // Any service change may be a dependency's; re-check on each.
                r = changes.recv() => {
                    if let Err(broadcast::error::RecvError::Closed) = r {
                        return Some(Next::Exit);
                    }
                }
                cmd = self.cmds.recv() => {
                    if let Some(next) = self.early_command(cmd, fsm) {
                        return Some(next);
                    }
                }
            }
        }
    }

    /// What to start for this service (a fresh attempt, or the one an
    /// earlier locald left running, to adopt).
    fn launch_spec(&self, notify: Option<&NotifySocket>) -> LaunchSpec {
        let mut env = self.cfg.env.clone();
        env.push(("LOCALD_PROJECT".into(), self.project.to_string()));
        env.push(("LOCALD_SERVICE".into(), self.name.to_string()));
        if let Some(w) = self.cfg.watchdog {
            env.push(("WATCHDOG_USEC".into(), w.as_micros().to_string()));
        }
        LaunchSpec {
            project: self.project.to_string(),
            key: self.key.to_string(),
            unit: self.name.to_string(),
            workload: self.cfg.workload(),
            cwd: self.cfg.workdir.clone(),
            env,
            notify_socket: notify.map(|n| n.path().to_owned()),
            notify_ready: self
                .cfg
                .health
                .as_ref()
                .is_some_and(|h| h.kind == HealthKind::Notify),
            watchdog: self.cfg.watchdog,
            stderr_priority: self.cfg.stderr_priority,
            stop_signal: self.cfg.stop_signal,
            stop_timeout: self.cfg.stop_timeout,
            restarts: self.snapshot.borrow().restart_count,
            build_id: None,
            progress: match &self.cfg.image {
                Some(image) => crate::runtime::ProgressSink::new(super::pull_reporter(
                    self.events.clone(),
                    &self.project,
                    &self.name,
                    &image.reference,
                )),
                None => crate::runtime::ProgressSink::default(),
            },
        }
    }

    fn bind_notify(&self) -> Option<NotifySocket> {
        let dir = match self.builder.paths.runtime.open() {
            Ok(d) => d.join("notify"),
            Err(e) => {
                tracing::warn!(service = %self.name, "no notify socket: {}", error_chain(&e));
                return None;
            }
        };
        // A directory per socket: a container gets its own directory
        // bind-mounted, never the sockets of the user's other services. The
        // path is the same for every attempt and daemon, so a workload a new
        // daemon adopts (a systemd unit) still reaches it.
        let path = dir
            .join(format!("{}.{}", self.key, self.name))
            .join("notify.sock");
        match NotifySocket::bind(&path) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(service = %self.name, "no notify socket at {}: {e}", path.display());
                None
            }
        }
    }

    fn start_pumps(&self, proc: &mut dyn Process, pid: u32) -> Vec<tokio::task::JoinHandle<()>> {
        let owner = PipeOwner {
            project: self.project.clone(),
            service: self.name.clone(),
            phase: Phase::Run,
            pid: Some(pid),
            build_id: None,
            image: proc.image().map(Into::into),
        };
        let mut pumps = Vec::with_capacity(2);
        if let Some(out) = proc.take_stdout() {
            pumps.push(tokio::spawn(pump(
                out,
                owner.clone(),
                Stream::Stdout,
                self.sink.clone(),
            )));
        }
        if let Some(err) = proc.take_stderr() {
            pumps.push(tokio::spawn(pump(
                err,
                owner,
                Stream::Stderr,
                self.sink.clone(),
            )));
        }
        pumps
    }

    /// Watches a running process until it ends or a request ends it.
    async fn supervise(
        &mut self,
        proc: &mut dyn Process,
        notify: Option<&NotifySocket>,
        own_watchdog: Option<Duration>,
        fsm: &mut Fsm,
    ) -> Ended {
        let (health_tx, mut health_rx) = mpsc::channel(4);
        let checker = self.cfg.health.clone().map(|check| {
            let ctx = ProbeContext {
                cwd: self.cfg.workdir.clone(),
                env: self.cfg.env.clone(),
                inside: proc.probe_prefix(),
            };
            tokio::spawn(run_checker(check, ctx, health_tx))
        });
        let _abort = AbortOnDrop(checker);
        let notify_health = self
            .cfg
            .health
            .as_ref()
            .is_some_and(|h| h.kind == HealthKind::Notify);
        let far = Instant::now() + Duration::from_secs(86400 * 365);
        let mut watchdog = own_watchdog.map_or(far, |w| Instant::now() + w);

        loop {
            tokio::select! {
                ev = proc.next_event() => {
                    let end = match ev {
                        ProcessEvent::Notice(n) => {
                            self.notice(n, notify_health, own_watchdog, &mut watchdog);
                            continue;
                        }
                        ProcessEvent::Exited(s) => (s, Ended::Exited(s)),
                        ProcessEvent::WatchdogTimeout(s) => (s, Ended::Watchdog),
                        ProcessEvent::StoppedOutside(s) => (s, Ended::Outside(s)),
                    };
                    self.update(|s| s.exit_status = Some(end.0.code()));
                    return end.1;
                }
                Some(ev) = health_rx.recv() => match ev {
                    HealthEvent::Passed => self.set_state(ServiceState::Healthy, ""),
                    // Failing but not yet unhealthy: the reason says so at
                    // once, in the state the service is in.
                    HealthEvent::Failing(reason, n, of) => {
                        self.update(|s| s.reason = format!("health: {reason} ({n} of {of})"));
                    }
                    HealthEvent::Failed(reason) => {
                        self.stop_process(proc, &reason).await;
                        return Ended::Unhealthy(reason);
                    }
                },
                notices = recv_notices(notify) => {
                    for n in notices {
                        self.notice(n, notify_health, own_watchdog, &mut watchdog);
                    }
                }
                _ = sleep_until(watchdog) => {
                    self.stop_process(proc, "watchdog timeout").await;
                    return Ended::Watchdog;
                }
                cmd = self.cmds.recv() => {
                    if let Some(ended) = self.command(cmd, proc, fsm).await {
                        return ended;
                    }
                }
            }
        }
    }

    /// A request while the process runs; `Some` when it ended the process.
    async fn command(
        &mut self,
        cmd: Option<Command>,
        proc: &mut dyn Process,
        fsm: &mut Fsm,
    ) -> Option<Ended> {
        let ended = match cmd {
            None => {
                self.stop_process(proc, "shutting down").await;
                Ended::Stopped(Next::Exit)
            }
            Some(Command::Start) => return None,
            Some(Command::Stop(reply)) => {
                self.stop_for_good(proc, "stop requested", reply, Next::Idle)
                    .await
            }
            Some(Command::Shutdown(reply)) => {
                self.stop_for_good(proc, "shutting down", reply, Next::Exit)
                    .await
            }
            Some(Command::Restart { reply, why, build }) => {
                self.tell(&format!("restarting: {why}"));
                self.stop_process(proc, &why).await;
                proc.kill().await;
                fsm.build_needed |= build;
                fsm.reset();
                let _ = reply.send(());
                Ended::Stopped(Next::Run)
            }
            Some(Command::Build { force, reply }) => {
                let builder = self.builder.clone();
                tokio::spawn(async move {
                    let _ = reply.send(builder.build(force).await);
                });
                return None;
            }
        };
        Some(ended)
    }

    /// What a sd_notify message means for the service, from locald's
    /// socket or from the runtime.
    fn notice(
        &self,
        n: Notice,
        notify_health: bool,
        own_watchdog: Option<Duration>,
        watchdog: &mut Instant,
    ) {
        match n {
            Notice::Ready if notify_health => self.set_state(ServiceState::Healthy, ""),
            Notice::Status(text) => self.update(|s| s.status_text = text),
            Notice::Watchdog => {
                if let Some(w) = own_watchdog {
                    *watchdog = Instant::now() + w;
                }
            }
            _ => {}
        }
    }

    /// Stops the process and everything it started, marks the service
    /// Stopped, and answers the request.
    async fn stop_for_good(
        &self,
        proc: &mut dyn Process,
        reason: &str,
        reply: oneshot::Sender<()>,
        next: Next,
    ) -> Ended {
        self.stop_process(proc, reason).await;
        proc.kill().await;
        self.set_state(ServiceState::Stopped, "stopped");
        self.tell("stopped");
        let _ = reply.send(());
        Ended::Stopped(next)
    }

    /// `stop_signal`, then SIGKILL after `stop_timeout`; returns once the main process is gone.
    async fn stop_process(&self, proc: &mut dyn Process, reason: &str) {
        self.set_state(ServiceState::Stopping, reason);
        let signal = self.cfg.stop_signal.unwrap_or_else(|| proc.stop_signal());
        let status = proc.stop(signal, self.cfg.stop_timeout).await;
        self.update(|s| s.exit_status = Some(status.code()));
    }

    /// A start that failed for want of descriptors or processes: tried
    /// again after the base restart delay, without counting as a failure
    /// of the service.
    async fn shortage(&mut self, fsm: &mut Fsm, reason: String) -> Next {
        self.set_state(ServiceState::Error, reason.clone());
        let delay = self
            .cfg
            .restart
            .delay
            .max(std::time::Duration::from_millis(100));
        self.back_off(fsm, delay, reason).await
    }

    /// Records a failure; decides between Backoff and Failed.
    async fn failure(&mut self, fsm: &mut Fsm, reason: String, status: Option<ExitStatus>) -> Next {
        if let Some(st) = status {
            self.update(|s| s.exit_status = Some(st.code()));
        }
        self.set_state(ServiceState::Error, reason.clone());
        let now = Instant::now();
        let r = &self.cfg.restart;
        fsm.failures.push_back(now);
        while fsm
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > r.interval)
        {
            fsm.failures.pop_front();
        }
        if fsm.failures.len() >= r.burst as usize {
            let why = format!(
                "start limit hit: {} failures within {}; last: {reason}",
                fsm.failures.len(),
                humantime::format_duration(r.interval)
            );
            self.tell(&why);
            self.set_state(ServiceState::Failed, why);
            return Next::Idle;
        }
        let delay = r
            .delay
            .saturating_mul(1u32 << fsm.consecutive.min(20))
            .min(r.delay_max);
        fsm.consecutive += 1;
        self.back_off(fsm, delay, reason).await
    }

    /// Waits `delay` in Backoff (a `start` ends it early), then tries again.
    async fn back_off(
        &mut self,
        fsm: &mut Fsm,
        delay: std::time::Duration,
        reason: String,
    ) -> Next {
        let why = format!(
            "restarting in {}: {reason}",
            humantime::format_duration(delay)
        );
        self.tell(&why);
        self.set_state(ServiceState::Backoff, why);
        let wake = sleep(delay);
        tokio::pin!(wake);
        loop {
            tokio::select! {
                _ = &mut wake => break,
                cmd = self.cmds.recv() => match cmd {
                    Some(Command::Start) => break,
                    other => {
                        if let Some(next) = self.early_command(other, fsm) {
                            return next;
                        }
                    }
                }
            }
        }
        self.update(|s| s.restart_count += 1);
        Next::Run
    }
}

/// The next notices on locald's notify socket (a runtime that gathers
/// them itself sends them as [`ProcessEvent::Notice`]).
async fn recv_notices(sock: Option<&NotifySocket>) -> Vec<Notice> {
    match sock {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Restart bookkeeping of one service.
struct Fsm {
    build_needed: bool,
    failures: VecDeque<Instant>,
    consecutive: u32,
}

impl Fsm {
    fn reset(&mut self) {
        self.failures.clear();
        self.consecutive = 0;
    }
}

/// How long an ended process's output may take to arrive.
const PUMP_DRAIN: Duration = Duration::from_secs(1);

struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}
