//! What the engine tells the outside world: service states, snapshots, build
//! and pull progress, and output lines.
//!
//! These are plain data. The supervisor produces them; the terminal printer
//! (`locald up`), the D-Bus layer and the journald writer consume them. Keeping
//! them apart from the supervisor's internals lets each consumer be written
//! and tested on its own.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Where a service is in its lifecycle.
///
/// Pending → Building → Starting → Running → Healthy; a failure goes to
/// Error and then Backoff before the next try; too many failures within the
/// start-limit window end in Failed; a stop goes through Stopping to Stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceState {
    /// Not started yet, or waiting for dependencies.
    Pending,
    /// The build runs.
    Building,
    /// The process was spawned; not yet known to be up.
    Starting,
    /// The process runs; its health check (if any) has not passed yet.
    Running,
    /// The health check passed (or there is none and the process runs).
    Healthy,
    /// The last attempt failed (the reason says why); a restart may follow.
    Error,
    /// Waiting before the next attempt.
    Backoff,
    /// Gave up: the start limit was hit, or the restart policy says no.
    Failed,
    /// Stop requested; waiting for the process to exit.
    Stopping,
    /// Not running, on purpose.
    Stopped,
}

impl ServiceState {
    /// The name used on D-Bus, in JSON and on the terminal.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Pending => "pending",
            ServiceState::Building => "building",
            ServiceState::Starting => "starting",
            ServiceState::Running => "running",
            ServiceState::Healthy => "healthy",
            ServiceState::Error => "error",
            ServiceState::Backoff => "backoff",
            ServiceState::Failed => "failed",
            ServiceState::Stopping => "stopping",
            ServiceState::Stopped => "stopped",
        }
    }

    /// A process of the service exists (or is about to).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            ServiceState::Starting
                | ServiceState::Running
                | ServiceState::Healthy
                | ServiceState::Stopping
        )
    }
}

impl fmt::Display for ServiceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether an output line comes from the build or from the running service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Build output.
    Build,
    /// Runtime output.
    Run,
}

impl Phase {
    /// `build` or `run`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Build => "build",
            Phase::Run => "run",
        }
    }
}

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One line of output from a build or a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Project name.
    pub project: Arc<str>,
    /// Service name.
    pub service: Arc<str>,
    /// Build or run.
    pub phase: Phase,
    /// stdout or stderr.
    pub stream: Stream,
    /// The process that printed it.
    pub pid: Option<u32>,
    /// Set for build lines: one id per build.
    pub build_id: Option<Arc<str>>,
    /// For a container service, the digest of the image it runs.
    pub image: Option<Arc<str>>,
    /// The bytes of the line, without its newline; may be any bytes.
    pub line: Vec<u8>,
    /// The line ended without a newline: the pipe closed after it.
    pub partial: bool,
    /// The line was cut because it was too long; the next line from the same
    /// pipe continues it.
    pub continues: bool,
}

/// The outcome of a build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRecord {
    /// Unique id of this build (also in the journal as `LOCALD_BUILD_ID`).
    pub build_id: String,
    /// `succeeded`, `failed`, `skipped` (up to date) or `running`.
    pub result: BuildResult,
    /// Why it ran or why it was skipped, e.g. "source changed: 3 files, e.g. src/main.rs".
    pub reason: String,
    /// Source hash (hex), where the build kind hashes its inputs.
    pub source_hash: Option<String>,
    /// When it started.
    pub started_at: SystemTime,
    /// When it ended.
    pub finished_at: Option<SystemTime>,
}

/// How a build ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildResult {
    /// Still running.
    Running,
    /// Built.
    Succeeded,
    /// Failed.
    Failed,
    /// Up to date; nothing ran.
    Skipped,
}

impl BuildResult {
    /// The name used on D-Bus and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            BuildResult::Running => "running",
            BuildResult::Succeeded => "succeeded",
            BuildResult::Failed => "failed",
            BuildResult::Skipped => "skipped",
        }
    }
}

/// Everything known about one service at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSnapshot {
    /// Service name.
    pub name: String,
    /// Lifecycle state.
    pub state: ServiceState,
    /// Why it is in that state ("waiting for db", "exited with status 1", ...); may be empty.
    pub reason: String,
    /// The last `STATUS=` the service sent on its notify socket.
    pub status_text: String,
    /// PID of the main process while one runs.
    pub main_pid: Option<u32>,
    /// Exit status of the last process that exited (kept while a new one runs):
    /// the code, or 128+signal when killed.
    pub exit_status: Option<i32>,
    /// How many times the process was restarted since `up`.
    pub restart_count: u32,
    /// When the current process started.
    pub started_at: Option<SystemTime>,
    /// The last build, if the service has a build.
    pub last_build: Option<BuildRecord>,
    /// Its ports by environment variable (`PORT`, `PORT_HTTP`, ...).
    #[serde(default)]
    pub ports: std::collections::BTreeMap<String, u16>,
    /// `default = true`: what `PROJECT.localhost` leads to.
    #[serde(default)]
    pub url_default: bool,
    /// Its URL behind the `*.localhost` proxy; empty without a port or proxy.
    #[serde(default)]
    pub url: String,
    /// What runs its process (`host`, `container`, `systemd`); empty before
    /// the first start.
    #[serde(default)]
    pub runtime: String,
    /// It has a health check: it is ready when `healthy`, not when
    /// `running`.
    #[serde(default)]
    pub has_health: bool,
}

impl ServiceSnapshot {
    /// A fresh, pending service.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            state: ServiceState::Pending,
            reason: String::new(),
            status_text: String::new(),
            main_pid: None,
            exit_status: None,
            restart_count: 0,
            started_at: None,
            last_build: None,
            ports: std::collections::BTreeMap::new(),
            url_default: false,
            url: String::new(),
            runtime: String::new(),
            has_health: false,
        }
    }
}

/// A project as the engine sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectSnapshot {
    /// Project name.
    pub name: String,
    /// Project directory.
    pub path: PathBuf,
    /// Services in file order.
    pub services: Vec<ServiceSnapshot>,
}

/// Something that happened. Consumers get these in order per service.
#[derive(Debug, Clone)]
pub enum Event {
    /// A project was brought up.
    ProjectAdded {
        /// Its name.
        project: String,
    },
    /// A project was taken down and forgotten.
    ProjectRemoved {
        /// Its name.
        project: String,
    },
    /// A service was added to a project (on up or reload).
    ServiceAdded {
        /// Project name.
        project: String,
        /// Service name.
        service: String,
    },
    /// A service was removed from a project (on reload).
    ServiceRemoved {
        /// Project name.
        project: String,
        /// Service name.
        service: String,
    },
    /// Anything about a service changed; carries its whole new snapshot.
    ServiceChanged {
        /// Project name.
        project: String,
        /// The service now.
        service: ServiceSnapshot,
    },
    /// A build moved on to a new step.
    BuildProgress {
        /// Project name.
        project: String,
        /// Service name.
        service: String,
        /// The build.
        build_id: String,
        /// 1-based step.
        step: u32,
        /// Number of steps.
        total: u32,
        /// What the step does.
        label: String,
    },
    /// A layer of a service's image is being pulled or imported (for the
    /// service's first start, or for `pull`): reported at its start, about
    /// every 1% and at its end; a layer already stored is reported once,
    /// done, with `cached`.
    PullProgress {
        /// Project name.
        project: String,
        /// Service name.
        service: String,
        /// The image reference as the service names it.
        reference: String,
        /// The layer's digest.
        layer: String,
        /// Its position in the image (0 is the lowest).
        index: u32,
        /// How many layers the image has.
        layers: u32,
        /// Bytes done.
        done: u64,
        /// Bytes in all.
        total: u64,
        /// It was stored already; nothing was transferred.
        cached: bool,
    },
    /// A build ended (or was skipped as up to date).
    BuildFinished {
        /// Project name.
        project: String,
        /// Service name.
        service: String,
        /// The record.
        record: BuildRecord,
    },
}
