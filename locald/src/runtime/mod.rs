//! How a service's workload is started, stopped and reaped.
//!
//! The supervisor's state machine only sees [`Runtime`] and [`Process`]: it
//! hands a [`LaunchSpec`] that says *what* to run as data (a [`Workload`])
//! plus what every kind must place somewhere (a notify socket, the output
//! pipes), reads the output as [`AsyncRead`] streams, and asks the process to
//! stop (signal, then kill after a timeout) or to die. Each kind knows how:
//! host processes ([`host`]) with process groups and cgroups; containers
//! through `locald-shim`; systemd transient user units. The state machine
//! never asks which kind it talks to, and never writes a host path into a
//! workload's environment: the runtime places the notify socket where its
//! workload can see it.
//!
//! A [`RuntimeSet`] holds one runtime per kind; each service gets the one
//! its workload needs, and stale-run clean-up at start sweeps every kind, so
//! a service switched from one kind to another never leaves its old copy
//! running. `fake.rs` is a scripted runtime for the state machine's tests.

pub mod accounting;
pub mod cgroup;
pub mod claim;
pub mod container;
pub mod container_unit;
#[cfg(test)]
pub(crate) mod fake;
pub mod host;
pub mod notify;
pub mod systemd;
pub mod unit_exec;

use std::fmt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::AsyncRead;

use crate::image::prepare::StoreImages;
use crate::image::ProgressFn;
use crate::output::BoxFuture;

/// One output stream of a workload.
pub type Output = Pin<Box<dyn AsyncRead + Send>>;

pub use locald_core::workload::{RuntimeKind, Workload};

/// Everything needed to start one process of a service or build.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// Project name (for messages).
    pub project: String,
    /// The project instance's key ([`claim::project_key`]): name and
    /// directory. Pid records and cgroups are kept under it, so two
    /// instances of a project never mistake each other's processes.
    pub key: String,
    /// Unit name inside the project: the service name, or `NAME.build` for its build.
    pub unit: String,
    /// What to run.
    pub workload: Workload,
    /// Working directory.
    pub cwd: PathBuf,
    /// Variables added to the workload's environment.
    pub env: Vec<(String, String)>,
    /// The host path of the service's sd_notify socket, if it has one. The
    /// runtime makes it reachable by the workload and sets `$NOTIFY_SOCKET`
    /// to where the workload sees it.
    pub notify_socket: Option<PathBuf>,
    /// The workload says `READY=1` when it is ready (`health = { notify =
    /// true }`). A runtime that tracks readiness itself (a systemd unit of
    /// `Type=notify`) reports it as [`ProcessEvent::Notice`].
    pub notify_ready: bool,
    /// `watchdog_sec`: a runtime that enforces it itself (systemd's
    /// `WatchdogSec=`) says so through [`Runtime::enforces_watchdog`].
    pub watchdog: Option<std::time::Duration>,
    /// Priority of stderr lines without a `<N>` prefix, for a runtime that
    /// writes the workload's output to the journal itself.
    pub stderr_priority: locald_core::priority::Priority,
    /// The build's id when this is a build (unit `NAME.build`): its output
    /// is the build phase of service `NAME`.
    pub build_id: Option<String>,
    /// The service's own `stop_signal` (`None`: the workload's default,
    /// SIGTERM or an image's StopSignal), for a runtime whose workload can
    /// also be stopped by someone else (a unit's `KillSignal=`).
    pub stop_signal: Option<Signal>,
    /// `stop_timeout`, likewise (a unit's `TimeoutStopSec=`).
    pub stop_timeout: Duration,
    /// How often the service was restarted so far; a workload that outlives
    /// the daemon keeps it for the next one ([`Adopted::history`]).
    pub restarts: u32,
    /// Where the runtime reports how far it got in making the workload
    /// ready to start (an image pulled or imported for its first start).
    pub progress: ProgressSink,
}

/// Where a runtime reports progress of getting a workload ready: the
/// supervisor passes one that turns reports into events (`PullProgress`);
/// kinds with nothing to get ready never call it.
#[derive(Clone, Default)]
pub struct ProgressSink(Option<ProgressFn>);

impl LaunchSpec {
    /// The service this workload belongs to: `unit` without a build's
    /// `.build`.
    pub fn service(&self) -> &str {
        match &self.build_id {
            Some(_) => self.unit.strip_suffix(".build").unwrap_or(&self.unit),
            None => &self.unit,
        }
    }
}

impl ProgressSink {
    /// Reports to `f`.
    pub fn new(f: ProgressFn) -> Self {
        ProgressSink(Some(f))
    }

    /// The function to report to (one that discards, if none was given).
    pub fn get(&self) -> ProgressFn {
        self.0.clone().unwrap_or_else(crate::image::no_progress)
    }
}

impl fmt::Debug for ProgressSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "ProgressSink(..)"
        } else {
            "ProgressSink(none)"
        })
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// `exit(code)`.
    Exited(i32),
    /// Killed by a signal.
    Signaled(i32),
}

impl ExitStatus {
    /// Exit code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Exited(0)
    }

    /// The code, or 128+signal as shells report it.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(c) => c,
            ExitStatus::Signaled(s) => 128 + s,
        }
    }

    pub(crate) fn from_std(s: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (s.code(), s.signal()) {
            (Some(c), _) => ExitStatus::Exited(c),
            (None, Some(sig)) => ExitStatus::Signaled(sig),
            (None, None) => ExitStatus::Exited(-1),
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Exited(c) => write!(f, "exited with status {c}"),
            ExitStatus::Signaled(s) => match Signal::try_from(*s) {
                Ok(sig) => write!(f, "killed by {sig}"),
                Err(_) => write!(f, "killed by signal {s}"),
            },
        }
    }
}

/// Why a process could not be started or controlled.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The runtime directory, where pid records live, is not safe to use.
    #[error(transparent)]
    RuntimeDir(#[from] crate::fsutil::UnsafeFile),
    /// `fork`/`exec` failed.
    #[error("cannot start `{program}`")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// This kind of workload cannot run here; says why.
    #[error("{0}")]
    Unavailable(String),
    /// Sending a signal failed.
    #[error("cannot signal process {pid}")]
    Signal {
        /// Target.
        pid: u32,
        /// Why.
        #[source]
        source: nix::Error,
    },
}

impl RuntimeError {
    /// Whether the start failed for want of descriptors or processes
    /// (`EMFILE`, `ENFILE`, `EAGAIN`, `ENOMEM` from `fork`/`exec`): a
    /// shortage of the machine, not a fault of the service.
    pub fn is_resource_shortage(&self) -> bool {
        match self {
            RuntimeError::Spawn { source, .. } => matches!(
                source.raw_os_error(),
                Some(libc::EMFILE | libc::ENFILE | libc::EAGAIN | libc::ENOMEM)
            ),
            _ => false,
        }
    }

    /// Whether trying again cannot help: the program or working directory
    /// does not exist or may not be executed, or locald's runtime directory
    /// is unsafe. Such a failure goes to Failed at once, without backoff.
    pub fn is_permanent(&self) -> bool {
        match self {
            RuntimeError::RuntimeDir(_) | RuntimeError::Unavailable(_) => true,
            RuntimeError::Spawn { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ),
            RuntimeError::Signal { .. } => false,
        }
    }
}

/// A kind of process runtime.
pub trait Runtime: Send + Sync + 'static {
    /// Starts a workload. Its stdin is `/dev/null`; stdout and stderr are
    /// pipes the caller takes from the [`Process`].
    fn spawn<'a>(
        &'a self,
        spec: &'a LaunchSpec,
    ) -> BoxFuture<'a, Result<Box<dyn Process>, RuntimeError>>;

    /// Takes over the workload an earlier locald started for `spec` and left
    /// running, if this kind outlives its daemon (systemd units) and the
    /// running one was started from the same spec; `None` otherwise, and
    /// the caller starts afresh (after [`Runtime::clean_stale`]).
    fn adopt<'a>(&'a self, spec: &'a LaunchSpec) -> BoxFuture<'a, Option<Adopted>> {
        let _ = spec;
        Box::pin(std::future::ready(None))
    }

    /// Which kind runs the workloads, as `status` shows: `host`,
    /// `container` or `systemd`.
    fn name(&self) -> &'static str;

    /// Whether this runtime enforces a service's `watchdog_sec` itself
    /// (systemd's `WatchdogSec=`: the pings go to systemd, and a timeout
    /// arrives as [`ProcessEvent::WatchdogTimeout`]), so locald must not
    /// time the workload out as well.
    fn enforces_watchdog(&self) -> bool {
        false
    }

    /// Whether `unit` of project instance `key` still runs from an earlier
    /// daemon in a way a new one may adopt (a systemd unit): its resources
    /// (ports) are kept for it rather than cleaned up.
    fn outlives_daemon<'a>(&'a self, key: &'a str, unit: &'a str) -> BoxFuture<'a, bool> {
        let _ = (key, unit);
        Box::pin(std::future::ready(false))
    }

    /// Kills whatever is left of `unit` of the project instance `key` from an
    /// earlier run (a previous daemon that died, a crash) so a new start
    /// never makes a second copy. Only the holder of `key`'s
    /// [`claim::ProjectClaim`] calls this. Returns how many processes it found.
    fn clean_stale<'a>(&'a self, key: &'a str, unit: &'a str) -> BoxFuture<'a, usize>;

    /// Kills what is left of every project instance that no live locald
    /// claims (its records outlived the locald that ran it, and no state
    /// names it any more). Returns how many processes it found.
    fn sweep_abandoned(&self) -> BoxFuture<'_, usize>;

    /// SIGKILLs every process of every unit this runtime started, at once
    /// (the second Ctrl-C). Does not wait.
    fn kill_all(&self);
}

/// A running workload and everything it started.
pub trait Process: Send + 'static {
    /// The host pid of the workload's main process (for a container, its
    /// init as seen from the host): what `MainPID` shows and what the
    /// journal's `LOCALD_PID` names.
    fn pid(&self) -> u32;
    /// Takes the stdout stream (once).
    fn take_stdout(&mut self) -> Option<Output>;
    /// Takes the stderr stream (once).
    fn take_stderr(&mut self) -> Option<Output>;
    /// Waits for the main process to exit. Cancel-safe; after the first
    /// exit it returns the same status at once.
    fn wait(&mut self) -> BoxFuture<'_, ExitStatus>;
    /// Asks the workload to stop: `signal` (then `SIGCONT`, so a stopped
    /// process sees it) to every process of it; after `timeout`, `SIGKILL`.
    /// Returns once the main process is gone, with how it ended.
    fn stop(&mut self, signal: Signal, timeout: Duration) -> BoxFuture<'_, ExitStatus>;
    /// Kills every process that is left of the workload (after the main
    /// process exited, or when giving up on it) and waits until none remains.
    /// Calling it again is harmless.
    fn kill(&mut self) -> BoxFuture<'_, ()>;
    /// SIGKILLs every process of the workload now, without waiting: for a
    /// process dropped mid-flight (a build cancelled by a stop).
    fn kill_now(&self);
    /// The digest of the image the workload runs from, if it is a container
    /// (`LOCALD_IMAGE` in the journal).
    fn image(&self) -> Option<&str> {
        None
    }
    /// The argv prefix that runs a health-check command inside the workload
    /// (`locald-shim exec --id ID --` for a container); `None` runs it on the
    /// host, as for a host process.
    fn probe_prefix(&self) -> Option<Vec<String>> {
        None
    }
    /// The signal that stops it when the service names none: SIGTERM, or a
    /// container image's StopSignal.
    fn stop_signal(&self) -> Signal {
        Signal::SIGTERM
    }
    /// The next thing that happened to the workload: what the supervisor's
    /// state machine consumes, as systemd's service state machine consumes
    /// notify messages and SIGCHLD. Cancel-safe. The last event is an end
    /// ([`ProcessEvent::end_status`] is `Some`); asked again, it returns the
    /// same end at once. A runtime that hears nothing but the exit (a child
    /// process: its notify messages go to the supervisor's own socket)
    /// keeps this default.
    fn next_event(&mut self) -> BoxFuture<'_, ProcessEvent> {
        Box::pin(async move { ProcessEvent::Exited(self.wait().await) })
    }
}

/// The error a start of `spec` would end in because its program is not on
/// `PATH`, for `sh -c LINE` too (see [`locald_core::program::shell_program`]),
/// where the shell would only exit 127, start after start. `None` when the
/// program is found, or cannot be told without a shell. (An argv's missing
/// program already fails its `exec`, permanently.)
pub fn missing_program(spec: &LaunchSpec) -> Option<RuntimeError> {
    let Workload::Host { argv } = &spec.workload else {
        return None;
    };
    let [sh, c, line] = argv.as_slice() else {
        return None;
    };
    if sh != "/bin/sh" || c != "-c" {
        return None;
    }
    let program = locald_core::program::shell_program(line)?;
    let path = locald_core::program::search_path(&spec.env);
    match locald_core::program::find_program(program, &path, &spec.cwd) {
        Some(_) => None,
        None => Some(RuntimeError::Spawn {
            program: program.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not found in PATH"),
        }),
    }
}

/// What happens to a running workload, in order ([`Process::next_event`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessEvent {
    /// The workload said something over sd_notify that the runtime heard
    /// (a systemd unit's `READY=1` and `STATUS=`, which systemd keeps and
    /// publishes as unit properties).
    Notice(crate::runtime::notify::Notice),
    /// The main process ended.
    Exited(ExitStatus),
    /// The runtime ended it because no `WATCHDOG=1` came in time
    /// (systemd's `WatchdogSec=`, `Result=watchdog`).
    WatchdogTimeout(ExitStatus),
    /// Someone other than locald stopped it (a `systemctl --user stop` of
    /// its unit): a stop, not a crash to restart from.
    StoppedOutside(ExitStatus),
}

impl ProcessEvent {
    /// How the main process ended, when this event is its end.
    pub fn end_status(&self) -> Option<ExitStatus> {
        match self {
            ProcessEvent::Notice(_) => None,
            ProcessEvent::Exited(s)
            | ProcessEvent::WatchdogTimeout(s)
            | ProcessEvent::StoppedOutside(s) => Some(*s),
        }
    }
}

/// A workload an earlier daemon started, taken over ([`Runtime::adopt`]).
pub struct Adopted {
    /// The running workload.
    pub process: Box<dyn Process>,
    /// How often the service had been restarted then, and when this
    /// process started, when the runtime recorded it.
    pub history: Option<(u32, std::time::SystemTime)>,
}

/// One runtime per kind, and the choice of kind per service. (The image
/// store is not found through it: whoever composes the engine opens an
/// [`ImageStore`] and gives it to the container runtime and the engine.)
#[derive(Clone)]
pub struct RuntimeSet {
    host: Arc<dyn Runtime>,
    container: Arc<dyn Runtime>,
    /// The user's systemd manager, when services run as its transient units.
    systemd: Option<Arc<dyn Runtime>>,
    /// The shim's containers, to run in units when there is a manager.
    containers: Option<Arc<container::ContainerRuntime>>,
    /// Image services as units ([`container_unit`]).
    container_unit: Option<Arc<dyn Runtime>>,
}

/// The user's image store, or why there is none: opened once by whoever
/// composes the engine and handed to the container runtime, the builder and
/// the engine's `pull`/`images`/`prune`, each of which says the reason when
/// there is no store.
#[derive(Clone)]
pub struct ImageStore(Result<StoreImages, String>);

impl ImageStore {
    /// The store at `paths.data` ([`StoreImages::open`]).
    pub fn open(paths: &locald_core::paths::Paths) -> ImageStore {
        ImageStore(StoreImages::open(paths))
    }

    /// No store, for `why`.
    pub fn none(why: impl Into<String>) -> ImageStore {
        ImageStore(Err(why.into()))
    }

    /// The store, or why there is none.
    pub fn get(&self) -> Result<&StoreImages, &str> {
        self.0.as_ref().map_err(String::as_str)
    }
}

impl RuntimeSet {
    /// A set that runs host processes with `host`; containers are refused
    /// as not available until a container runtime is given.
    pub fn host(host: Arc<dyn Runtime>) -> RuntimeSet {
        RuntimeSet {
            host,
            container: Arc::new(Unavailable(
                "this version of locald cannot run image services yet".into(),
            )),
            systemd: None,
            containers: None,
            container_unit: None,
        }
    }

    /// What this machine and user can run: host processes, and containers
    /// through the shim (`$LOCALD_SHIM`, else the packaged path) from
    /// `images`. Without a store (no home directory) image services are
    /// refused with the reason; a missing shim is reported when an image
    /// service starts, with how to install it.
    pub fn detect(paths: &locald_core::paths::Paths, images: &ImageStore) -> RuntimeSet {
        let set = RuntimeSet::host(Arc::new(host::HostRuntime::detect(paths.runtime.clone())));
        match images.get() {
            Ok(images) => {
                let containers = Arc::new(container::ContainerRuntime::new(
                    crate::shim_client::ShimClient::from_env(),
                    Arc::new(images.clone()),
                    paths.runtime.clone(),
                ));
                let mut set = set.with_container(containers.clone());
                set.containers = Some(containers);
                set
            }
            Err(why) => {
                let why = format!("image services need the image store: {why}");
                set.with_container(Arc::new(Unavailable(why)))
            }
        }
    }

    /// The same set with `container` running image workloads.
    pub fn with_container(mut self, container: Arc<dyn Runtime>) -> RuntimeSet {
        self.container = container;
        // Units run the shim's containers only; another runtime's never.
        self.containers = None;
        self.container_unit = None;
        self
    }

    /// The same set with services and host builds run by `systemd`, as
    /// transient units ([`systemd::SystemdRuntime`]); image services too
    /// when the set runs containers through the shim
    /// ([`container_unit::ContainerUnitRuntime`]).
    pub fn with_systemd(mut self, systemd: systemd::SystemdRuntime) -> RuntimeSet {
        let systemd = Arc::new(systemd);
        if let Some(c) = &self.containers {
            self.container_unit = Some(Arc::new(container_unit::ContainerUnitRuntime::new(
                c.clone(),
                systemd.clone(),
            )));
        }
        self.systemd = Some(systemd);
        self
    }

    /// The runtime for a service's workload. A workload (host program or
    /// container) runs as a systemd unit whenever there is a systemd user
    /// manager (the daemon under `systemctl --user`), unless `choice` says
    /// `runtime = "host"`; otherwise (no manager: `locald up`, a container,
    /// CI) as a child of locald. `Runtime` on `Service1` and `locald-ctl
    /// status` say which.
    pub fn for_service(
        &self,
        kind: RuntimeKind,
        choice: Option<locald_core::workload::RuntimeChoice>,
    ) -> Arc<dyn Runtime> {
        use locald_core::workload::RuntimeChoice;
        let unit = match kind {
            RuntimeKind::Host => &self.systemd,
            RuntimeKind::Container => &self.container_unit,
        };
        match (choice, unit) {
            (None | Some(RuntimeChoice::Systemd), Some(u)) => u.clone(),
            _ => self.get(kind).clone(),
        }
    }

    /// The runtime for a build's workload: a host build runs where its
    /// service would ([`RuntimeSet::for_service`]); a buildpacks build stays
    /// a child of locald, which reads its phase banners from the output as
    /// it comes.
    pub fn for_build(
        &self,
        kind: RuntimeKind,
        choice: Option<locald_core::workload::RuntimeChoice>,
    ) -> Arc<dyn Runtime> {
        match kind {
            RuntimeKind::Host => self.for_service(kind, choice),
            RuntimeKind::Container => self.get(kind).clone(),
        }
    }

    /// The runtime for a kind of workload.
    pub fn get(&self, kind: RuntimeKind) -> &Arc<dyn Runtime> {
        match kind {
            RuntimeKind::Host => &self.host,
            RuntimeKind::Container => &self.container,
        }
    }

    fn all(&self) -> impl Iterator<Item = &Arc<dyn Runtime>> {
        [&self.host, &self.container]
            .into_iter()
            .chain(self.systemd.as_ref())
            .chain(self.container_unit.as_ref())
    }

    /// [`Runtime::clean_stale`] of every kind: a service whose kind changed
    /// since the last run leaves nothing of its old kind behind.
    pub async fn clean_stale(&self, key: &str, unit: &str) -> usize {
        let mut n = 0;
        for r in self.all() {
            n += r.clean_stale(key, unit).await;
        }
        n
    }

    /// [`Runtime::outlives_daemon`] of any kind.
    pub async fn outlives_daemon(&self, key: &str, unit: &str) -> bool {
        for r in self.all() {
            if r.outlives_daemon(key, unit).await {
                return true;
            }
        }
        false
    }

    /// [`Runtime::sweep_abandoned`] of every kind.
    pub async fn sweep_abandoned(&self) -> usize {
        let mut n = 0;
        for r in self.all() {
            n += r.sweep_abandoned().await;
        }
        n
    }

    /// [`Runtime::kill_all`] of every kind.
    pub fn kill_all(&self) {
        for r in self.all() {
            r.kill_all();
        }
    }
}

/// A kind that cannot run here (no shim installed, not built in): every
/// spawn fails at once, permanently, with the reason.
struct Unavailable(String);

impl Runtime for Unavailable {
    fn spawn<'a>(
        &'a self,
        _spec: &'a LaunchSpec,
    ) -> BoxFuture<'a, Result<Box<dyn Process>, RuntimeError>> {
        Box::pin(std::future::ready(Err(RuntimeError::Unavailable(
            self.0.clone(),
        ))))
    }

    fn clean_stale<'a>(&'a self, _key: &'a str, _unit: &'a str) -> BoxFuture<'a, usize> {
        Box::pin(std::future::ready(0))
    }

    fn sweep_abandoned(&self) -> BoxFuture<'_, usize> {
        Box::pin(std::future::ready(0))
    }

    fn name(&self) -> &'static str {
        "unavailable"
    }

    fn kill_all(&self) {}
}
