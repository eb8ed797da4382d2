//! How a service's process is started, signalled and reaped.
//!
//! The supervisor's state machine only sees [`Runtime`] and [`Process`]: it
//! asks for a process from a [`LaunchSpec`], reads its pipes, signals it, and
//! waits for it. Host processes ([`host`]) are the first kind; containers run
//! through `locald-shim` and systemd transient user units plug in as further
//! kinds without the state machine knowing which.

pub mod cgroup;
pub mod claim;
pub mod host;

use std::fmt;
use std::path::PathBuf;

use nix::sys::signal::Signal;
use tokio::process::{ChildStderr, ChildStdout};

use crate::output::BoxFuture;

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
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Working directory.
    pub cwd: PathBuf,
    /// Variables added to the inherited environment.
    pub env: Vec<(String, String)>,
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
    /// Whether trying again cannot help: the program or working directory
    /// does not exist or may not be executed, or locald's runtime directory
    /// is unsafe. Such a failure goes to Failed at once, without backoff.
    pub fn is_permanent(&self) -> bool {
        match self {
            RuntimeError::RuntimeDir(_) => true,
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
    /// Starts a process. Its stdin is `/dev/null`; stdout and stderr are pipes.
    fn spawn(&self, spec: &LaunchSpec) -> Result<Box<dyn Process>, RuntimeError>;

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

/// A running process and everything it started.
pub trait Process: Send + 'static {
    /// The main process id.
    fn pid(&self) -> u32;
    /// Takes the stdout pipe (once).
    fn take_stdout(&mut self) -> Option<ChildStdout>;
    /// Takes the stderr pipe (once).
    fn take_stderr(&mut self) -> Option<ChildStderr>;
    /// Waits for the main process to exit. Cancel-safe.
    fn wait(&mut self) -> BoxFuture<'_, ExitStatus>;
    /// Sends `sig` to every process of the unit.
    fn signal(&self, sig: Signal) -> Result<(), RuntimeError>;
    /// Kills every process that is left of the unit (after the main process
    /// exited, or on stop timeout) and waits until none remains.
    fn kill_remaining(&mut self) -> BoxFuture<'_, ()>;
}
