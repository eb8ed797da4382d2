//! Workloads as systemd transient user units, started the way `systemd-run
//! --user` starts them: under a user manager, the default for every host
//! service (`runtime = "host"` opts out). Image services use the same units
//! with `locald-shim run` as the program ([`super::container_unit`]).
//!
//! Each service becomes `locald-<project>-<service>.service` (both names
//! escaped as `systemd-escape` does) in `locald-<project>.slice`. systemd
//! owns the cgroup: a stop reaches every descendant, also those that called
//! `setsid`; its accounting shows in `status`.
//!
//! Output: the unit starts as `locald internal-unit-exec`
//! ([`super::unit_exec`]), which forks an output forwarder into the unit's
//! cgroup and execs the service with the same pid. The forwarder writes each
//! line to journald with locald's fields (journald would not apply the
//! unit's `LogExtraFields=` to a user unit), so locald copies nothing and a
//! [`Process`] of this kind has no output streams. Live listeners get the
//! lines read back from the journal ([`crate::journal::follow`]).
//!
//! Restarts stay locald's decision (`Restart=no`). Readiness and the watchdog
//! are the unit's: `Type=notify` for `health = { notify = true }`,
//! `WatchdogSec=` for `watchdog_sec`, `NotifyAccess=all`; locald follows the
//! unit's `ActiveState` and `StatusText` (sent as
//! [`ProcessEvent::Notice`]) and its `Result=watchdog`
//! ([`ProcessEvent::WatchdogTimeout`]).
//!
//! The unit is created with `AddRef=yes`, so systemd keeps it (and its exit
//! status) until locald has read how it ended; then locald drops the
//! reference and `CollectMode=inactive-or-failed` lets systemd forget it.
//! Exit is followed through the unit's `PropertiesChanged` signals (with a
//! slow poll as a safety net). A stop that did not come from locald (a
//! `systemctl --user stop` by hand) is reported as
//! [`ProcessEvent::StoppedOutside`], so the supervisor treats it as a stop,
//! not a crash. The description carries the project instance, a fingerprint of
//! what the unit runs and the restart count, so a new daemon adopts only
//! what it would start the same and keeps counting restarts.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::{FutureExt, StreamExt};
use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use zbus::zvariant::{OwnedObjectPath, Value};
use zbus::Connection;

use super::claim::ProjectClaim;
use super::unit_exec::UnitExec;
use super::{
    Adopted, ExitStatus, LaunchSpec, Output, Process, ProcessEvent, Runtime, RuntimeError, Workload,
};
use crate::journal::follow::{Follower, Start, Target};
use crate::lock;
use crate::output::BoxFuture;
use crate::output::LogSink;
use crate::runtime::notify::Notice;
use locald_core::paths::{Paths, RuntimeDir};
use locald_core::program::find_program;
use manager::{
    JobNew, JobNewStream, ManagerProxy, ReadError, StartError, Systemd, SystemdManager, UnitState,
};

mod manager;

/// Starts host workloads as transient units of the user's systemd manager.
#[derive(Clone)]
pub struct SystemdRuntime {
    systemd: Systemd,
    /// This `locald` binary: each unit starts as `locald internal-unit-exec`.
    locald: PathBuf,
    /// journald's native socket, for the units' output forwarders.
    journal_socket: PathBuf,
    /// Where followers keep their journal cursors and claims live.
    runtime: RuntimeDir,
    /// Where lines read back from the journal go (the live `LogLine`
    /// signal), when the daemon wants them.
    follow_sink: Option<Arc<dyn LogSink>>,
    /// Names of units started here and not yet reaped.
    live: Arc<Mutex<HashSet<String>>>,
}

impl SystemdRuntime {
    /// Connects to the user's systemd manager when there is one: its private
    /// socket exists in `$XDG_RUNTIME_DIR/systemd/` (or `$MANAGERPID` says
    /// locald runs under it) and `org.freedesktop.systemd1` answers on the
    /// session bus. `None` otherwise, with the reason logged at debug level.
    pub async fn detect(paths: &Paths) -> Option<SystemdRuntime> {
        let private = paths
            .user_runtime
            .as_ref()
            .map(|d| d.join("systemd/private"))
            .is_some_and(|p| p.exists());
        if !private && std::env::var_os("MANAGERPID").is_none() {
            tracing::debug!("no systemd user manager: no $XDG_RUNTIME_DIR/systemd/private");
            return None;
        }
        let conn = match Connection::session().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("no systemd user manager: no session bus: {e}");
                return None;
            }
        };
        match Self::with_connection(conn, paths.runtime.clone()).await {
            Ok(rt) => Some(rt),
            Err(e) => {
                tracing::debug!("no systemd user manager on the session bus: {e}");
                None
            }
        }
    }

    /// A runtime talking to the manager on `conn`, keeping its files in
    /// `runtime`.
    pub async fn with_connection(
        conn: Connection,
        runtime: RuntimeDir,
    ) -> zbus::Result<SystemdRuntime> {
        let manager = ManagerProxy::builder(&conn)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await?;
        let version = manager.version().await?;
        // Without it systemd sends no unit or job signals.
        manager.subscribe().await?;
        tracing::info!("services run as transient units of systemd {version}");
        Ok(SystemdRuntime {
            systemd: Systemd { conn, manager },
            locald: own_binary(),
            journal_socket: crate::journal::JournalConfig::from_env().socket_path,
            follow_sink: None,
            live: Arc::default(),
            runtime,
        })
    }

    /// The same runtime, with each unit's lines read back from the journal
    /// into `sink` while it listens ([`Follower`]).
    pub fn with_live_logs(mut self, sink: Arc<dyn LogSink>) -> SystemdRuntime {
        self.follow_sink = Some(sink);
        self
    }

    /// The follower of a unit's lines: `Start::Resume` for an adopted
    /// unit, `Start::Fresh(t)` for one started at `t`.
    fn follower(&self, spec: &LaunchSpec, unit: &str, start: Start) -> Option<Follower> {
        let sink = self.follow_sink.clone()?;
        let cursor_file = self
            .runtime
            .sub("cursors")
            .ok()
            .map(|dir| dir.join(format!("{}.{}", spec.key, spec.unit)));
        let target = Target {
            project: spec.project.clone(),
            service: spec.service().to_owned(),
            unit: unit.to_owned(),
            uid: nix::unistd::geteuid().as_raw(),
            cursor_file,
        };
        Some(Follower::spawn(target, sink, start))
    }

    /// Whether systemd is restarting the unit this daemon runs in
    /// (`systemctl --user restart locald`), as opposed to stopping it.
    pub async fn own_unit_restarting(&self) -> bool {
        let sd = &self.systemd;
        let Ok(unit) = sd.manager.get_unit_by_pid(std::process::id()).await else {
            return false;
        };
        let Ok(job) = sd.get(&unit, "org.freedesktop.systemd1.Unit", "Job").await else {
            return false;
        };
        let Ok((_, job)) = <(u32, OwnedObjectPath)>::try_from(job) else {
            return false;
        };
        if job.as_str() == "/" {
            return false;
        }
        let Ok(kind) = sd
            .get(&job, "org.freedesktop.systemd1.Job", "JobType")
            .await
        else {
            return false;
        };
        let kind = String::try_from(kind).unwrap_or_default();
        tracing::debug!("systemd job on locald's unit: {kind}");
        kind.contains("restart")
    }

    async fn start(&self, spec: &LaunchSpec) -> Result<Box<dyn Process>, RuntimeError> {
        let cmd = self.host_command(spec)?;
        Ok(Box::new(self.start_unit(spec, cmd).await?))
    }

    /// What the unit of a host workload runs: the program found in the
    /// service's `PATH`, its environment, stopped as a host process is.
    fn host_command(&self, spec: &LaunchSpec) -> Result<UnitCommand, RuntimeError> {
        let Workload::Host { argv } = &spec.workload else {
            return Err(RuntimeError::Unavailable(format!(
                "the systemd runtime cannot run {}",
                spec.workload.describe()
            )));
        };
        if let Some(e) = super::missing_program(spec) {
            return Err(e);
        }
        let program = argv.first().cloned().unwrap_or_default();
        let path_var = locald_core::program::search_path(&spec.env);
        // systemd wants an absolute path; look it up as a shell would, so a
        // missing program fails here, at once and permanently, as on the host.
        let exe =
            find_program(&program, &path_var, &spec.cwd).ok_or_else(|| RuntimeError::Spawn {
                program: program.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "not found in PATH"),
            })?;
        if !spec.cwd.is_dir() {
            return Err(RuntimeError::Spawn {
                program,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("no directory {}", spec.cwd.display()),
                ),
            });
        }
        let mut env: Vec<String> = Vec::new();
        if !spec.env.iter().any(|(k, _)| k == "PATH") {
            env.push(format!("PATH={path_var}"));
        }
        // systemd gives the unit its own $NOTIFY_SOCKET and, with
        // WatchdogSec=, $WATCHDOG_USEC and $WATCHDOG_PID.
        env.extend(
            spec.env
                .iter()
                .filter(|(k, _)| k != "WATCHDOG_USEC" && k != "NOTIFY_SOCKET")
                .map(|(k, v)| format!("{k}={v}")),
        );
        Ok(UnitCommand {
            argv: std::iter::once(exe.into_os_string())
                .chain(argv.iter().skip(1).map(Into::into))
                .collect(),
            arg0: Some(program.clone()),
            program,
            env,
            notify_ready: spec.notify_ready,
            watchdog: spec.watchdog,
            kill_mode: "control-group",
            kill_signal: spec.stop_signal.unwrap_or(Signal::SIGTERM),
            stop_timeout: spec.stop_timeout,
            stop_post: None,
            image: None,
        })
    }

    /// Starts `cmd` as the transient unit of `spec` and waits until it
    /// runs (or could not be started).
    pub(crate) async fn start_unit(
        &self,
        spec: &LaunchSpec,
        cmd: UnitCommand,
    ) -> Result<UnitProcess, RuntimeError> {
        let project = project_of(&spec.key).unwrap_or(&spec.project);
        let name = unit_name(project, &spec.unit);
        let notify_ready = cmd.notify_ready;
        let program = cmd.program.clone();
        let props = unit_properties(spec, cmd, &self.locald, &self.journal_socket);
        let sd = &self.systemd;
        // Before anything of the unit can have written a line.
        let requested = SystemTime::now();
        let mut jobs = sd.jobs_removed().await.map_err(|e| bus_error(&name, e))?;
        let job = start_with_retry(sd, &name, &props).await?;
        lock(&self.live).insert(name.clone());
        let result = wait_started(sd, &name, &mut jobs, &job, notify_ready).await;
        drop(jobs);
        let path = sd
            .manager
            .get_unit(&name)
            .await
            .map_err(|e| bus_error(&name, e))?;
        let st = sd.read(&path).await.unwrap_or_default();
        if !matches!(result.as_str(), "done" | "running") && st.exec_main_pid == 0 {
            sd.unit_call(&path, "Unref").await;
            let _ = sd.manager.reset_failed_unit(&name).await;
            lock(&self.live).remove(&name);
            return Err(RuntimeError::Spawn {
                program,
                source: std::io::Error::other(format!(
                    "systemd could not start {name}: {result}; see `journalctl --user -u {name}`"
                )),
            });
        }
        let follower = self.follower(spec, &name, Start::Fresh(requested));
        Ok(UnitProcess::new(
            self,
            name,
            path,
            st.exec_main_pid,
            notify_ready,
            None,
            follower,
        ))
    }

    /// Takes over the running unit of `spec` an earlier daemon started, if
    /// it runs what `spec` would start (same key and fingerprint).
    /// `notify_ready`: the unit was started `Type=notify`.
    pub(crate) async fn adopt_unit(
        &self,
        spec: &LaunchSpec,
        notify_ready: bool,
    ) -> Option<UnitProcess> {
        let project = project_of(&spec.key).unwrap_or(&spec.project);
        let name = unit_name(project, &spec.unit);
        let (path, st) = adoptable(&self.systemd, &name, &spec.key, &fingerprint(spec)).await?;
        lock(&self.live).insert(name.clone());
        let restarts = restarts_from_description(&st.description).unwrap_or(0);
        let since = std::time::UNIX_EPOCH + Duration::from_micros(st.exec_main_start_us);
        let follower = self.follower(spec, &name, Start::Resume);
        Some(UnitProcess::new(
            self,
            name,
            path,
            st.exec_main_pid,
            notify_ready,
            Some((restarts, since)),
            follower,
        ))
    }

    /// Stops `name` now (SIGKILL to every process, then a stop job) and
    /// waits until it is gone.
    async fn stop_unit_now(&self, name: &str) {
        let sd = &self.systemd;
        let _ = sd
            .manager
            .kill_unit(name, "all", Signal::SIGKILL as i32)
            .await;
        let _ = sd.manager.stop_unit(name, "replace").await;
        let Ok(path) = sd.manager.get_unit(name).await else {
            return;
        };
        if sd.wait_inactive(&path, Duration::from_secs(10)).await {
            sd.unit_call(&path, "Unref").await;
            let _ = sd.manager.reset_failed_unit(name).await;
        }
    }

    /// The running `locald-*` units: (name, description).
    async fn units(&self) -> Vec<(String, String)> {
        match self
            .systemd
            .manager
            .list_units_by_patterns(&[], &["locald-*.service"])
            .await
        {
            Ok(list) => list
                .into_iter()
                .filter(|u| !matches!(u.3.as_str(), "inactive" | "failed"))
                .map(|u| (u.0, u.1))
                .collect(),
            Err(e) => {
                tracing::warn!("cannot list locald's systemd units: {e}");
                Vec::new()
            }
        }
    }
}

impl Runtime for SystemdRuntime {
    fn spawn<'a>(
        &'a self,
        spec: &'a LaunchSpec,
    ) -> BoxFuture<'a, Result<Box<dyn Process>, RuntimeError>> {
        Box::pin(self.start(spec))
    }

    fn adopt<'a>(&'a self, spec: &'a LaunchSpec) -> BoxFuture<'a, Option<Adopted>> {
        Box::pin(async move {
            if !matches!(spec.workload, Workload::Host { .. }) {
                return None;
            }
            let unit = self.adopt_unit(spec, spec.notify_ready).await?;
            Some(Adopted {
                history: unit.history(),
                process: Box::new(unit),
            })
        })
    }

    fn name(&self) -> &'static str {
        "systemd"
    }

    fn enforces_watchdog(&self) -> bool {
        true
    }

    fn outlives_daemon<'a>(&'a self, key: &'a str, unit: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let Some(project) = project_of(key) else {
                return false;
            };
            let name = unit_name(project, unit);
            self.units()
                .await
                .iter()
                .any(|(u, d)| *u == name && key_from_description(d) == Some(key))
        })
    }

    fn clean_stale<'a>(&'a self, key: &'a str, unit: &'a str) -> BoxFuture<'a, usize> {
        Box::pin(async move {
            let Some(project) = project_of(key) else {
                return 0;
            };
            let name = unit_name(project, unit);
            let mut n = 0;
            for (u, description) in self.units().await {
                // Another instance of a same-named project is not stale.
                if u == name && key_from_description(&description) == Some(key) {
                    self.stop_unit_now(&u).await;
                    n += 1;
                }
            }
            n
        })
    }

    fn sweep_abandoned(&self) -> BoxFuture<'_, usize> {
        Box::pin(async move {
            let mut n = 0;
            for (u, description) in self.units().await {
                let Some(key) = key_from_description(&description) else {
                    continue;
                };
                // Held while stopping, so no new instance starts in between.
                let Some(_claim) = ProjectClaim::take_abandoned(&self.runtime, key) else {
                    continue;
                };
                self.stop_unit_now(&u).await;
                n += 1;
            }
            n
        })
    }

    fn kill_all(&self) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let names: Vec<String> = lock(&self.live).iter().cloned().collect();
        for name in names {
            let manager = self.systemd.manager.clone();
            handle.spawn(async move {
                let _ = manager
                    .kill_unit(&name, "all", Signal::SIGKILL as i32)
                    .await;
            });
        }
    }
}

/// The properties of the transient unit of `spec` running `cmd`, as
/// `StartTransientUnit` takes them: a pure function of its inputs (unit
/// tested property by property). The unit starts as `locald
/// internal-unit-exec` (`locald`), which gives the output locald's journal
/// fields (sent to `journal_socket`) and then becomes the service, with the
/// same pid.
pub(crate) fn unit_properties(
    spec: &LaunchSpec,
    cmd: UnitCommand,
    locald: &Path,
    journal_socket: &Path,
) -> Vec<(&'static str, Value<'static>)> {
    let project = project_of(&spec.key).unwrap_or(&spec.project);
    let phase = if spec.build_id.is_some() {
        crate::event::Phase::Build
    } else {
        crate::event::Phase::Run
    };
    let forwarder = UnitExec {
        project: spec.project.clone(),
        service: spec.service().to_owned(),
        phase,
        build_id: spec.build_id.clone(),
        stderr_priority: spec.stderr_priority,
        socket: journal_socket.to_owned(),
        image: cmd.image,
        arg0: cmd.arg0,
        argv: cmd.argv,
    };
    let exec_argv: Vec<String> = std::iter::once("locald".to_owned())
        .chain(forwarder.to_args())
        .collect();
    let exec = vec![(locald.to_string_lossy().into_owned(), exec_argv, false)];
    let mut props: Vec<(&'static str, Value<'static>)> = vec![
        ("Description", Value::from(describe(spec))),
        ("Slice", Value::from(slice_name(project))),
        (
            "Type",
            Value::from(if cmd.notify_ready { "notify" } else { "exec" }),
        ),
        // The service may hand READY=/STATUS=/WATCHDOG= to a child (a
        // shell wrapping it), as with locald's own socket.
        ("NotifyAccess", Value::from("all")),
        ("ExecStart", Value::from(exec)),
        (
            "WorkingDirectory",
            Value::from(spec.cwd.to_string_lossy().into_owned()),
        ),
        ("Environment", Value::from(cmd.env)),
        ("StandardInput", Value::from("null")),
        ("StandardOutput", Value::from("journal")),
        ("StandardError", Value::from("journal")),
        ("SyslogIdentifier", Value::from(spec.service().to_owned())),
        ("LogExtraFields", Value::from(log_fields(spec, phase))),
        ("KillMode", Value::from(cmd.kill_mode)),
        ("KillSignal", Value::from(cmd.kill_signal as i32)),
        ("SendSIGKILL", Value::from(true)),
        (
            "TimeoutStopUSec",
            Value::from(u64::try_from(cmd.stop_timeout.as_micros()).unwrap_or(u64::MAX)),
        ),
        ("Restart", Value::from("no")),
        ("CollectMode", Value::from("inactive-or-failed")),
        ("AddRef", Value::from(true)),
    ];
    if cmd.notify_ready {
        // Whether it ever gets ready is the health check's call, not a
        // start timeout of systemd's.
        props.push(("TimeoutStartUSec", Value::from(u64::MAX)));
    }
    if let Some(w) = cmd.watchdog {
        let usec = u64::try_from(w.as_micros()).unwrap_or(u64::MAX);
        props.push(("WatchdogUSec", Value::from(usec)));
    }
    if let Some(post) = cmd.stop_post {
        // Runs however the unit ended, also after a SIGKILL that left
        // processes systemd may not signal (a container's, run by root).
        let path = post.first().cloned().unwrap_or_default();
        props.push(("ExecStopPost", Value::from(vec![(path, post, true)])));
    }
    props
}

/// The unit's `LogExtraFields=`: journald applies these to system units
/// only; they also say in `systemctl --user show` whose unit this is.
fn log_fields(spec: &LaunchSpec, phase: crate::event::Phase) -> Vec<Vec<u8>> {
    let mut fields: Vec<Vec<u8>> = vec![
        format!("LOCALD_PROJECT={}", spec.project).into_bytes(),
        format!("LOCALD_SERVICE={}", spec.service()).into_bytes(),
        format!("LOCALD_PHASE={}", phase.as_str()).into_bytes(),
    ];
    if let Some(id) = &spec.build_id {
        fields.push(format!("LOCALD_BUILD_ID={id}").into_bytes());
    }
    fields
}

/// What a unit runs and how it stops, as [`SystemdRuntime::start_unit`]
/// tells systemd.
pub(crate) struct UnitCommand {
    /// The program as the user named it, for messages.
    pub program: String,
    /// The program's absolute path, then its arguments.
    pub argv: Vec<std::ffi::OsString>,
    /// `argv[0]` when it is not the path.
    pub arg0: Option<String>,
    /// The unit's environment (`NAME=value`).
    pub env: Vec<String>,
    /// `Type=notify`: systemd waits for `READY=1` on its own socket.
    pub notify_ready: bool,
    /// `WatchdogSec=`.
    pub watchdog: Option<Duration>,
    /// `KillMode=`.
    pub kill_mode: &'static str,
    /// `KillSignal=`.
    pub kill_signal: Signal,
    /// `TimeoutStopSec=`: how long a stop waits before `SIGKILL`.
    pub stop_timeout: Duration,
    /// `ExecStopPost=` (its failure ignored).
    pub stop_post: Option<Vec<String>>,
    /// `LOCALD_IMAGE` for the output's journal entries.
    pub image: Option<String>,
}

/// A running transient unit.
pub(crate) struct UnitProcess {
    systemd: Systemd,
    name: String,
    path: OwnedObjectPath,
    pid: u32,
    exit: Option<ExitStatus>,
    /// locald asked it to stop (so a stop job is not someone else's).
    stopping: bool,
    /// Someone else stopped it (`systemctl --user stop`).
    outside: bool,
    live: Arc<Mutex<HashSet<String>>>,
    /// READY=1 and STATUS= as systemd saw them.
    /// Shared so that [`Process::next_event`] can wait on it and on the
    /// unit's end at once without taking it out of `self` (a cancelled
    /// wait would lose it).
    notices: Option<Arc<tokio::sync::Mutex<mpsc::Receiver<Notice>>>>,
    /// systemd ended it for a missed watchdog ping (`Result=watchdog`).
    by_watchdog: bool,
    /// Restarts and start time, for a unit an earlier daemon started.
    history: Option<(u32, SystemTime)>,
    /// Reads the unit's lines back for live listeners.
    follower: Option<Follower>,
    /// The unit's `PropertiesChanged` and the manager's `JobNew` signals,
    /// subscribed once and kept: a wait that is cancelled (the supervisor
    /// waits on other things too) must not lose a signal that came in
    /// meanwhile, least of all the job of a `systemctl --user stop`.
    signals: Option<UnitSignals>,
}

/// See [`UnitProcess::signals`].
struct UnitSignals {
    changes: Option<zbus::fdo::PropertiesChangedStream>,
    jobs: Option<JobNewStream>,
}

impl UnitProcess {
    fn new(
        rt: &SystemdRuntime,
        name: String,
        path: OwnedObjectPath,
        pid: u32,
        notify_ready: bool,
        history: Option<(u32, SystemTime)>,
        follower: Option<Follower>,
    ) -> UnitProcess {
        let systemd = rt.systemd.clone();
        let live = rt.live.clone();
        let notices = Some(Arc::new(tokio::sync::Mutex::new(watch_notices(
            systemd.clone(),
            path.clone(),
            notify_ready,
        ))));
        UnitProcess {
            systemd,
            name,
            path,
            pid,
            exit: None,
            stopping: false,
            outside: false,
            live,
            notices,
            by_watchdog: false,
            history,
            follower,
            signals: None,
        }
    }

    async fn kill_unit(&self, sig: Signal) {
        if let Err(e) = self
            .systemd
            .manager
            .kill_unit(&self.name, "all", sig as i32)
            .await
        {
            tracing::debug!("cannot signal unit {}: {e}", self.name);
        }
    }

    /// Follows the unit until its main process has ended.
    async fn wait_exit(&mut self) -> ExitStatus {
        let sd = self.systemd.clone();
        if self.signals.is_none() {
            let changes = sd.property_changes(&self.path).await;
            // A job on the unit that locald did not ask for is someone's
            // `systemctl --user stop` (or restart): systemd announces it
            // before the unit's state changes, so it is in the queue by the
            // time a read shows the unit ended.
            let jobs = sd.manager.receive_job_new().await.ok();
            self.signals = Some(UnitSignals { changes, jobs });
        }
        loop {
            let read = sd.read(&self.path).await;
            let mut foreign_job = false;
            if let Some(jobs) = self.signals.as_mut().and_then(|s| s.jobs.as_mut()) {
                while let Some(Some(sig)) = jobs.next().now_or_never() {
                    foreign_job |= sig.args().is_ok_and(|a| a.unit == self.name);
                }
            }
            if foreign_job && !self.stopping {
                self.outside = true;
            }
            let mut poll = Duration::from_secs(5);
            match read {
                Ok(st) if st.ended() => return self.drained(st).await,
                Ok(_) => {}
                Err(ReadError::Gone) => {
                    return ExitStatus::Signaled(Signal::SIGKILL as i32);
                }
                Err(ReadError::Bus(e)) => {
                    tracing::debug!("cannot read unit {}: {e}", self.name);
                    // The session bus is gone (the user's session is
                    // ending: systemd stops the bus with everything else).
                    // Nobody can say how the unit ended; whether its main
                    // process still lives is all there is to ask, often.
                    if !process_exists(self.pid) {
                        return ExitStatus::Signaled(Signal::SIGKILL as i32);
                    }
                    poll = Duration::from_millis(200);
                }
            }
            // Woken by a change; the poll is a safety net for a missed one.
            // A stream that ended (its connection closed) is dropped, or it
            // would wake the loop at once, forever (`next_change` does so
            // for the property changes).
            let Some(signals) = self.signals.as_mut() else {
                continue;
            };
            let next = async {
                let change = next_change(&mut signals.changes);
                let job = async {
                    match signals.jobs.as_mut() {
                        Some(j) => j.next().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = change => Wake::Change,
                    sig = job => Wake::Job(sig),
                }
            };
            match tokio::time::timeout(poll, next).await {
                Ok(Wake::Job(None)) => signals.jobs = None,
                Ok(Wake::Job(Some(sig))) => {
                    if sig.args().is_ok_and(|a| a.unit == self.name) && !self.stopping {
                        self.outside = true;
                    }
                }
                Ok(Wake::Change) | Err(_) => {}
            }
        }
    }

    /// How the unit ended, once its output forwarder has written the last
    /// lines (it leaves when the service's pipes close; the unit is then
    /// inactive), waiting at most a second for a descendant that keeps the
    /// pipes open.
    async fn drained(&mut self, mut st: UnitState) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while !matches!(st.active.as_str(), "inactive" | "failed")
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
            match self.systemd.read(&self.path).await {
                Ok(next) => st = next,
                Err(_) => break,
            }
        }
        self.by_watchdog = st.result == "watchdog";
        st.exit()
    }

    /// Whether someone other than locald stopped the unit (a job on it
    /// that locald did not ask for).
    pub(crate) fn stopped_outside(&self) -> bool {
        self.outside && !self.stopping
    }

    /// Restarts and start time, for a unit an earlier daemon started.
    pub(crate) fn history(&self) -> Option<(u32, SystemTime)> {
        self.history
    }

    /// The stop that follows is locald's own, not someone else's.
    pub(crate) fn expect_stop(&mut self) {
        self.stopping = true;
    }

    /// Drops locald's reference so systemd collects the unit.
    pub(crate) async fn release(&mut self) {
        self.systemd.unit_call(&self.path, "Unref").await;
        let _ = self.systemd.manager.reset_failed_unit(&self.name).await;
        lock(&self.live).remove(&self.name);
    }
}

impl Process for UnitProcess {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn take_stdout(&mut self) -> Option<Output> {
        // The unit writes to the journal itself.
        None
    }

    fn take_stderr(&mut self) -> Option<Output> {
        None
    }

    fn wait(&mut self) -> BoxFuture<'_, ExitStatus> {
        Box::pin(async move {
            if let Some(e) = self.exit {
                return e;
            }
            let status = self.wait_exit().await;
            self.exit = Some(status);
            status
        })
    }

    fn stop(&mut self, signal: Signal, timeout: Duration) -> BoxFuture<'_, ExitStatus> {
        Box::pin(async move {
            self.stopping = true;
            self.kill_unit(signal).await;
            // A stopped process would never see the signal.
            self.kill_unit(Signal::SIGCONT).await;
            match tokio::time::timeout(timeout, self.wait()).await {
                Ok(status) => status,
                Err(_) => {
                    self.kill_unit(Signal::SIGKILL).await;
                    self.wait().await
                }
            }
        })
    }

    fn kill(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.stopping = true;
            let _ = self.wait().await;
            // The last lines reach live listeners before the exit is told.
            if let Some(f) = self.follower.take() {
                f.finish(Duration::from_secs(1)).await;
            }
            // What is left of the unit (descendants, setsid or not) goes
            // with its cgroup; then the unit is stopped and collected.
            self.kill_unit(Signal::SIGKILL).await;
            let _ = self.systemd.manager.stop_unit(&self.name, "replace").await;
            self.systemd
                .wait_inactive(&self.path, Duration::from_secs(10))
                .await;
            self.release().await;
        })
    }

    fn kill_now(&self) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let manager = self.systemd.manager.clone();
        let name = self.name.clone();
        handle.spawn(async move {
            let _ = manager
                .kill_unit(&name, "all", Signal::SIGKILL as i32)
                .await;
        });
    }

    fn next_event(&mut self) -> BoxFuture<'_, ProcessEvent> {
        Box::pin(async move {
            if let Some(notices) = self.notices.clone().filter(|_| self.exit.is_none()) {
                let mut rx = notices.lock_owned().await;
                tokio::select! {
                    biased;
                    n = rx.recv() => match n {
                        Some(n) => return ProcessEvent::Notice(n),
                        // The watcher ends with the unit.
                        None => self.notices = None,
                    },
                    _ = self.wait() => {}
                }
            }
            let status = self.wait().await;
            if self.by_watchdog {
                ProcessEvent::WatchdogTimeout(status)
            } else if self.stopped_outside() {
                ProcessEvent::StoppedOutside(status)
            } else {
                ProcessEvent::Exited(status)
            }
        })
    }
}

/// Follows a unit's `ActiveState` and `StatusText` and turns them into
/// notices: `Ready` once a `Type=notify` unit is active (systemd got
/// READY=1), `Status` for each new `STATUS=` text. Ends with the unit or
/// when the receiver is dropped.
fn watch_notices(sd: Systemd, path: OwnedObjectPath, notify_ready: bool) -> mpsc::Receiver<Notice> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut changes = sd.property_changes(&path).await;
        let mut ready = false;
        let mut status = String::new();
        loop {
            let st = match sd.read(&path).await {
                Ok(st) => st,
                Err(ReadError::Gone) => return,
                Err(ReadError::Bus(_)) => UnitState::default(),
            };
            if notify_ready && !ready && st.active == "active" {
                ready = true;
                if tx.send(Notice::Ready).await.is_err() {
                    return;
                }
            }
            if st.status_text != status {
                status = st.status_text.clone();
                if tx.send(Notice::Status(status.clone())).await.is_err() {
                    return;
                }
            }
            if st.ended() {
                return;
            }
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::timeout(Duration::from_secs(5), next_change(&mut changes)) => {}
            }
        }
    });
    rx
}

/// What woke [`UnitProcess::wait_exit`]: a property change or a new job
/// (`None`: the stream ended).
enum Wake {
    Change,
    Job(Option<JobNew>),
}

/// Waits for the unit's next property change. A stream that ended (the
/// bus connection closed) is dropped and never wakes anyone again:
/// otherwise every wait on it would return at once, and its loop spin.
async fn next_change(changes: &mut Option<zbus::fdo::PropertiesChangedStream>) {
    match changes.as_mut() {
        Some(c) => {
            if c.next().await.is_none() {
                *changes = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Whether a process `pid` exists (a zombie counts).
fn process_exists(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    pid > 0
        && !matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        )
}

/// The running `locald` binary, for the units' `ExecStart`. After an
/// upgrade replaced the file, `/proc/self/exe` names it `… (deleted)`;
/// the new file at the same path is what the unit should run.
fn own_binary() -> PathBuf {
    match std::env::current_exe() {
        Ok(p) => {
            let s = p.to_string_lossy();
            match s.strip_suffix(" (deleted)") {
                Some(orig) if Path::new(orig).exists() => PathBuf::from(orig),
                _ => p,
            }
        }
        Err(_) => PathBuf::from("locald"),
    }
}

/// `StartTransientUnit`, again while systemd still holds an earlier unit
/// of that name of ours that has ended (it goes away by itself); a
/// running one is someone else's, and a unit systemd finds invalid
/// cannot be mended by trying again. Returns the start job.
async fn start_with_retry(
    sd: &dyn SystemdManager,
    name: &str,
    props: &[(&str, Value<'_>)],
) -> Result<OwnedObjectPath, RuntimeError> {
    const TRIES: u32 = 50;
    let mut attempt = 0;
    loop {
        match sd.start_transient(name, props).await {
            Ok(job) => return Ok(job),
            Err(StartError::Exists) if attempt < TRIES => {
                attempt += 1;
                if let Some(path) = sd.unit(name).await {
                    if let Ok(st) = sd.read_unit(&path).await {
                        if !st.ended() {
                            return Err(RuntimeError::Unavailable(format!(
                                "the systemd unit {name} already runs ({}); \
                                 stop it with `systemctl --user stop {name}`",
                                st.description
                            )));
                        }
                    }
                    let _ = sd.hold(&path, false).await;
                }
                sd.reset_failed(name).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(StartError::Exists) => {
                return Err(RuntimeError::Unavailable(format!(
                    "systemd still has an ended unit {name} after {TRIES} tries; \
                     `systemctl --user reset-failed {name}` clears it"
                )))
            }
            Err(StartError::Invalid(msg)) => {
                return Err(RuntimeError::Unavailable(format!(
                    "systemd refused the unit {name}: {msg}"
                )))
            }
            Err(StartError::Bus(e)) => return Err(bus_error(name, e)),
        }
    }
}

/// How the start went: the start job's result (with `Type=exec` it ends
/// once the program executes, or could not); with `Type=notify` the job
/// lasts until `READY=1`, so "running" once the unit has a main pid
/// (systemd announces `ExecMainPID` in `PropertiesChanged`; a short poll
/// covers a missed signal). A lost job signal must not hang the service
/// in Starting: after 30 s the unit's own state says it ("timeout").
async fn wait_started(
    sd: &dyn SystemdManager,
    name: &str,
    jobs: &mut futures_util::stream::BoxStream<'static, (OwnedObjectPath, String)>,
    job: &OwnedObjectPath,
    notify_ready: bool,
) -> String {
    let wait_job = async {
        while let Some((j, result)) = jobs.next().await {
            if &j == job {
                return result;
            }
        }
        "unknown".to_owned()
    };
    let has_pid = async {
        if !notify_ready {
            return std::future::pending().await;
        }
        let mut changes = match sd.unit(name).await {
            Some(path) => sd.changes(&path).await,
            None => None,
        };
        loop {
            if let Some(path) = sd.unit(name).await {
                match sd.read_unit(&path).await {
                    Ok(st) if st.exec_main_pid != 0 || st.ended() => return "running".to_owned(),
                    Err(ReadError::Gone) => return "gone".to_owned(),
                    _ => {}
                }
            }
            let poll = Duration::from_millis(if changes.is_some() { 100 } else { 10 });
            let change = async {
                match changes.as_mut() {
                    Some(c) => c.next().await.is_none(),
                    None => std::future::pending().await,
                }
            };
            // A stream that ended would wake the loop at once, forever.
            if tokio::time::timeout(poll, change).await == Ok(true) {
                changes = None;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), async {
        tokio::select! {
            r = wait_job => r,
            r = has_pid => r,
        }
    })
    .await
    .unwrap_or_else(|_| "timeout".to_owned())
}

/// The unit `name` if an earlier daemon started it for the project
/// instance `key` and it runs what would start now (`print`, the spec's
/// [`fingerprint`]): then it is held (`Ref`, so systemd keeps its exit
/// status until locald read it) and returned with its state.
async fn adoptable(
    sd: &dyn SystemdManager,
    name: &str,
    key: &str,
    print: &str,
) -> Option<(OwnedObjectPath, UnitState)> {
    let path = sd.unit(name).await?;
    let st = sd.read_unit(&path).await.ok()?;
    let (k, p) = tag_from_description(&st.description)?;
    if st.active != "active" || k != key || p != print {
        return None;
    }
    if let Err(e) = sd.hold(&path, true).await {
        tracing::warn!("cannot hold on to {name}: {e}; starting it afresh");
        return None;
    }
    Some((path, st))
}

fn bus_error(name: &str, e: zbus::Error) -> RuntimeError {
    RuntimeError::Spawn {
        program: name.to_owned(),
        source: std::io::Error::other(format!("systemd: {e}")),
    }
}

/// The unit's description; it ends with the project instance's key, so
/// clean-up never touches another instance's units.
fn describe(spec: &LaunchSpec) -> String {
    format!(
        "locald {}/{}: {}{} {} r{}]",
        spec.project,
        spec.unit,
        spec.workload
            .describe()
            .chars()
            .take(200)
            .collect::<String>(),
        key_tag(&spec.key),
        fingerprint(spec),
        spec.restarts
    )
}

/// What the description holds of the project instance: ` [KEY `, followed
/// by the spec's fingerprint and `]`.
fn key_tag(key: &str) -> String {
    format!(" [{key}")
}

/// A hash of what the unit runs (program, directory, environment): a new
/// daemon adopts a running unit only when its service would start the same.
fn fingerprint(spec: &LaunchSpec) -> String {
    let mut h = blake3::Hasher::new();
    for part in [
        format!("{:?}", spec.workload),
        spec.cwd.to_string_lossy().into_owned(),
        format!("{:?}", spec.env),
        format!("{:?}", spec.notify_socket),
    ] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().to_hex()[..16].to_owned()
}

/// The tag a unit's description ends with: `KEY FINGERPRINT rN` of
/// ` [KEY FINGERPRINT rN]` (units of older versions lack ` rN`).
fn description_tag(d: &str) -> Option<&str> {
    let rest = d.strip_suffix(']')?;
    Some(&rest[rest.rfind(" [")? + 2..])
}

/// (key, fingerprint) from a unit's description.
fn tag_from_description(d: &str) -> Option<(&str, &str)> {
    let mut parts = description_tag(d)?.split(' ');
    let (key, print) = (parts.next()?, parts.next()?);
    (!key.is_empty() && !key.contains('/') && !key.starts_with('.') && !print.is_empty())
        .then_some((key, print))
}

/// The restart count a unit's description recorded (` rN]`).
fn restarts_from_description(d: &str) -> Option<u32> {
    description_tag(d)?
        .split(' ')
        .nth(2)?
        .strip_prefix('r')?
        .parse()
        .ok()
}

fn key_from_description(d: &str) -> Option<&str> {
    tag_from_description(d).map(|(k, _)| k)
}

/// The project name inside a [`super::claim::project_key`] (`NAME-HASH`).
fn project_of(key: &str) -> Option<&str> {
    key.rsplit_once('-').map(|(name, _)| name)
}

pub use locald_core::units::{escape, project_of_slice, slice_name, unescape, unit_name};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_as_systemd_escape_does() {
        assert_eq!(unit_name("hello", "web"), "locald-hello-web.service");
        assert_eq!(
            unit_name("my-shop", "api.v2"),
            "locald-my\\x2dshop-api.v2.service"
        );
        assert_eq!(escape(".x y/z"), "\\x2ex\\x20y-z");
        assert_eq!(escape("café"), "caf\\xc3\\xa9");
        for s in ["my-shop", ".x y/z", "café", "a\\b"] {
            assert_eq!(unescape(&escape(s)).as_deref(), Some(s));
        }
        assert_eq!(
            project_of_slice("locald-my\\x2dshop.slice").as_deref(),
            Some("my-shop")
        );
        assert_eq!(unescape("bad\\x"), None);
    }

    #[test]
    fn key_round_trips_through_the_description() {
        assert_eq!(
            key_from_description("locald shop/web: sh -c x [shop-0123456789ab 0011]"),
            Some("shop-0123456789ab")
        );
        assert_eq!(key_from_description("locald shop/web: x [../x 00]"), None);
        assert_eq!(key_from_description("locald shop/web: x [shop-01]"), None);
        assert_eq!(key_from_description("something else"), None);
        let d = "locald shop/web: sh -c x [shop-0123456789ab 0011 r7]";
        assert_eq!(tag_from_description(d), Some(("shop-0123456789ab", "0011")));
        assert_eq!(restarts_from_description(d), Some(7));
        assert_eq!(restarts_from_description("locald a/b: x [a-01 00]"), None);
        assert_eq!(project_of("my-shop-0123456789ab"), Some("my-shop"));
    }

    fn spec() -> LaunchSpec {
        LaunchSpec {
            project: "shop".into(),
            key: "shop-0123456789ab".into(),
            unit: "web".into(),
            workload: Workload::Host {
                argv: vec!["python3".into(), "app.py".into()],
            },
            cwd: "/p".into(),
            env: Vec::new(),
            notify_socket: None,
            notify_ready: false,
            watchdog: None,
            stderr_priority: locald_core::priority::Priority::WARNING,
            build_id: None,
            stop_signal: None,
            stop_timeout: Duration::from_secs(2),
            restarts: 3,
            progress: crate::runtime::ProgressSink::default(),
        }
    }

    fn command(notify_ready: bool) -> UnitCommand {
        UnitCommand {
            program: "python3".into(),
            argv: vec!["/usr/bin/python3".into(), "app.py".into()],
            arg0: Some("python3".into()),
            env: vec!["PORT=8080".into()],
            notify_ready,
            watchdog: notify_ready.then_some(Duration::from_secs(5)),
            kill_mode: "mixed",
            kill_signal: Signal::SIGQUIT,
            stop_timeout: Duration::from_secs(2),
            stop_post: notify_ready.then(|| vec!["/shim".into(), "delete".into()]),
            image: None,
        }
    }

    fn prop<'a>(props: &'a [(&str, Value<'static>)], name: &str) -> &'a Value<'static> {
        &props
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .1
    }

    /// The unit's properties, one by one: what a hand stop, journald and
    /// `systemctl --user` see.
    #[test]
    fn unit_properties_say_what_the_unit_is() {
        let props = unit_properties(
            &spec(),
            command(false),
            Path::new("/usr/bin/locald"),
            Path::new("/run/systemd/journal/socket"),
        );
        let text = |n: &str| match prop(&props, n) {
            Value::Str(s) => s.as_str().to_owned(),
            v => format!("{v:?}"),
        };
        assert_eq!(text("Slice"), "locald-shop.slice");
        assert_eq!(text("Type"), "exec");
        assert_eq!(text("NotifyAccess"), "all");
        assert_eq!(text("WorkingDirectory"), "/p");
        assert_eq!(text("StandardInput"), "null");
        assert_eq!(text("StandardOutput"), "journal");
        assert_eq!(text("SyslogIdentifier"), "web");
        assert_eq!(text("KillMode"), "mixed");
        assert_eq!(text("Restart"), "no");
        assert_eq!(text("CollectMode"), "inactive-or-failed");
        assert!(text("Description").starts_with("locald shop/web: "));
        assert!(text("Description").contains("[shop-0123456789ab "));
        assert_eq!(
            prop(&props, "KillSignal"),
            &Value::from(Signal::SIGQUIT as i32)
        );
        assert_eq!(prop(&props, "TimeoutStopUSec"), &Value::from(2_000_000u64));
        assert_eq!(prop(&props, "SendSIGKILL"), &Value::from(true));
        assert_eq!(prop(&props, "AddRef"), &Value::from(true));
        assert_eq!(
            prop(&props, "Environment"),
            &Value::from(vec!["PORT=8080".to_owned()])
        );
        let fields =
            |f: &[&str]| Value::from(f.iter().map(|f| f.as_bytes().to_vec()).collect::<Vec<_>>());
        assert_eq!(
            prop(&props, "LogExtraFields"),
            &fields(&[
                "LOCALD_PROJECT=shop",
                "LOCALD_SERVICE=web",
                "LOCALD_PHASE=run"
            ])
        );
        // ExecStart: the forwarder, then the program (same pid after exec).
        let exec = format!("{:?}", prop(&props, "ExecStart"));
        assert!(exec.contains("/usr/bin/locald"), "{exec}");
        assert!(exec.contains("internal-unit-exec"), "{exec}");
        assert!(exec.contains("/usr/bin/python3"), "{exec}");
        for absent in ["TimeoutStartUSec", "WatchdogUSec", "ExecStopPost"] {
            assert!(!props.iter().any(|(n, _)| *n == absent), "{absent}");
        }

        // Type=notify, a watchdog and a post-stop command.
        let props = unit_properties(
            &spec(),
            command(true),
            Path::new("/usr/bin/locald"),
            Path::new("/run/systemd/journal/socket"),
        );
        assert_eq!(prop(&props, "Type"), &Value::from("notify"));
        assert_eq!(prop(&props, "TimeoutStartUSec"), &Value::from(u64::MAX));
        assert_eq!(prop(&props, "WatchdogUSec"), &Value::from(5_000_000u64));
        let post = format!("{:?}", prop(&props, "ExecStopPost"));
        assert!(post.contains("/shim") && post.contains("delete"), "{post}");

        // A build's unit says so in its fields.
        let mut build = spec();
        build.unit = "web.build".into();
        build.build_id = Some("00ff".into());
        let props = unit_properties(
            &build,
            command(false),
            Path::new("/usr/bin/locald"),
            Path::new("/run/systemd/journal/socket"),
        );
        assert_eq!(
            prop(&props, "LogExtraFields"),
            &fields(&[
                "LOCALD_PROJECT=shop",
                "LOCALD_SERVICE=web",
                "LOCALD_PHASE=build",
                "LOCALD_BUILD_ID=00ff"
            ])
        );
    }

    #[test]
    fn exit_codes_map_from_siginfo() {
        let st = |code, status| UnitState {
            exec_main_code: code,
            exec_main_status: status,
            ..UnitState::default()
        };
        assert_eq!(st(1, 3).exit(), ExitStatus::Exited(3));
        assert_eq!(st(2, 15).exit(), ExitStatus::Signaled(15));
        assert!(!st(0, 0).ended());
        assert!(st(1, 0).ended());
    }

    mod on_a_fake_manager {
        //! Starting and adopting a unit against [`manager::fake`]: the
        //! decisions, without a user manager.

        use super::*;
        use manager::fake::{path_of, FakeManager, StartAnswer};

        const NAME: &str = "locald-shop-web.service";

        fn running(description: String) -> UnitState {
            UnitState {
                active: "active".into(),
                description,
                exec_main_pid: 4242,
                exec_main_start_us: 1_700_000_000_000_000,
                ..UnitState::default()
            }
        }

        fn ended() -> UnitState {
            UnitState {
                active: "failed".into(),
                description: "locald shop/web: x [shop-0123456789ab 00 r0]".into(),
                exec_main_code: 1,
                exec_main_status: 1,
                ..UnitState::default()
            }
        }

        fn job(result: Option<&'static str>) -> StartAnswer {
            StartAnswer::Job {
                state: running(describe(&spec())),
                result,
            }
        }

        #[tokio::test(start_paused = true)]
        async fn unit_exists_for_an_ended_unit_is_cleared_and_retried() {
            let sd = FakeManager::default()
                .with_unit(NAME, ended())
                .answering(StartAnswer::Exists)
                .answering(job(Some("done")));
            let job = start_with_retry(&sd, NAME, &[]).await.expect("started");
            assert_eq!(job.as_str(), "/org/freedesktop/systemd1/job/1");
            let calls = sd.calls();
            let unit = path_of(NAME);
            let leaf = unit.as_str().rsplit('/').next().unwrap_or_default();
            assert_eq!(
                calls,
                [
                    format!("StartTransientUnit {NAME}"),
                    format!("GetUnit {NAME}"),
                    format!("Unref {leaf}"),
                    format!("ResetFailedUnit {NAME}"),
                    format!("StartTransientUnit {NAME}"),
                ]
            );
        }

        #[tokio::test(start_paused = true)]
        async fn unit_exists_for_a_running_unit_is_refused_naming_it() {
            let sd = FakeManager::default()
                .with_unit(NAME, running("someone's own unit".into()))
                .answering(StartAnswer::Exists);
            let err = start_with_retry(&sd, NAME, &[])
                .await
                .expect_err("someone else's unit");
            let text = err.to_string();
            assert!(text.contains("already runs (someone's own unit)"), "{text}");
            assert!(
                text.contains(&format!("systemctl --user stop {NAME}")),
                "{text}"
            );
            // Nothing of the running unit is touched.
            assert!(!sd.calls().iter().any(|c| c.starts_with("Unref")));
            assert!(!sd.calls().iter().any(|c| c.starts_with("ResetFailed")));
        }

        #[tokio::test(start_paused = true)]
        async fn a_unit_that_keeps_existing_is_given_up_on() {
            let mut sd = FakeManager::default();
            for _ in 0..60 {
                sd = sd.answering(StartAnswer::Exists);
            }
            let err = start_with_retry(&sd, NAME, &[])
                .await
                .expect_err("gives up");
            assert!(err.to_string().contains("after 50 tries"), "{err}");
            let starts = sd
                .calls()
                .iter()
                .filter(|c| c.starts_with("StartTransientUnit"))
                .count();
            assert_eq!(starts, 51);
        }

        #[tokio::test(start_paused = true)]
        async fn an_invalid_unit_is_refused_at_once() {
            let sd = FakeManager::default().answering(StartAnswer::Invalid("bad ExecStart"));
            let err = start_with_retry(&sd, NAME, &[]).await.expect_err("invalid");
            assert!(err.is_permanent());
            assert!(err.to_string().contains("bad ExecStart"), "{err}");
            assert_eq!(sd.calls().len(), 1);
        }

        #[tokio::test(start_paused = true)]
        async fn the_start_job_result_says_how_the_start_went() {
            for result in ["done", "failed", "dependency"] {
                let sd = FakeManager::default().answering(job(Some(result)));
                let mut jobs = sd.jobs_removed().await.expect("jobs");
                let j = start_with_retry(&sd, NAME, &[]).await.expect("job");
                assert_eq!(wait_started(&sd, NAME, &mut jobs, &j, false).await, result);
            }
        }

        #[tokio::test(start_paused = true)]
        async fn a_notify_unit_counts_as_started_once_it_has_a_main_pid() {
            // Type=notify: the job lasts until READY=1.
            let sd = FakeManager::default().answering(job(None));
            let mut jobs = sd.jobs_removed().await.expect("jobs");
            let j = start_with_retry(&sd, NAME, &[]).await.expect("job");
            assert_eq!(
                wait_started(&sd, NAME, &mut jobs, &j, true).await,
                "running"
            );
        }

        #[tokio::test(start_paused = true)]
        async fn a_lost_job_signal_times_out_instead_of_hanging() {
            let sd = FakeManager::default().answering(job(None));
            let mut jobs = sd.jobs_removed().await.expect("jobs");
            let j = start_with_retry(&sd, NAME, &[]).await.expect("job");
            let t0 = tokio::time::Instant::now();
            assert_eq!(
                wait_started(&sd, NAME, &mut jobs, &j, false).await,
                "timeout"
            );
            assert_eq!(t0.elapsed(), Duration::from_secs(30));
        }

        #[tokio::test]
        async fn only_a_running_unit_of_the_same_instance_and_spec_is_adopted() {
            let spec = spec();
            let print = fingerprint(&spec);
            let sd = FakeManager::default().with_unit(NAME, running(describe(&spec)));
            let (path, st) = adoptable(&sd, NAME, &spec.key, &print)
                .await
                .expect("adopted");
            assert_eq!(path, path_of(NAME));
            assert_eq!(st.exec_main_pid, 4242);
            assert_eq!(restarts_from_description(&st.description), Some(3));
            assert!(sd.calls().iter().any(|c| c.starts_with("Ref ")), "held");

            // Another instance of the project, another spec, an ended
            // unit, no unit: started afresh, and nothing is held.
            let other_key = "shop-fedcba987654";
            assert!(adoptable(&sd, NAME, other_key, &print).await.is_none());
            assert!(adoptable(&sd, NAME, &spec.key, "0000").await.is_none());
            let gone = FakeManager::default().with_unit(NAME, ended());
            assert!(adoptable(&gone, NAME, &spec.key, &print).await.is_none());
            let none = FakeManager::default();
            assert!(adoptable(&none, NAME, &spec.key, &print).await.is_none());
            for fake in [&gone, &none] {
                assert!(!fake.calls().iter().any(|c| c.starts_with("Ref ")));
            }
        }

        #[tokio::test]
        async fn a_unit_with_a_foreign_description_is_never_adopted() {
            let sd = FakeManager::default()
                .with_unit(NAME, running("locald shop/web: x [../etc 00 r0]".into()));
            assert!(adoptable(&sd, NAME, "../etc", "00").await.is_none());
        }
    }
}
