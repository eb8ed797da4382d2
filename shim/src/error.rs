//! The shim's error type: everything that stops it, apart from a policy
//! refusal (which is a [`crate::policy::Refusal`] inside [`ShimError::Refused`]).

use std::io;
use std::path::PathBuf;

use crate::policy::Refusal;

/// Why the shim stopped.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// A start-up hardening step failed.
    #[error("start-up hardening failed ({what}): {source}")]
    Harden {
        /// The step.
        what: &'static str,
        /// The cause.
        source: io::Error,
    },
    /// Installed setuid to a user other than root.
    #[error("locald-shim runs with effective uid {euid}: it must be owned by root")]
    NotRootOwned {
        /// The effective uid found.
        euid: u32,
    },
    /// A privileged command was run without setuid.
    #[error(
        "locald-shim is not installed setuid root (install it owned by root, mode 4755, \
         on a filesystem not mounted nosuid)"
    )]
    NotSetuid,
    /// Bad command line.
    #[error("{0}")]
    Usage(String),
    /// The bundle was refused by the policy.
    #[error("{0}")]
    Refused(Refusal),
    /// A file or directory the shim needs is missing or unsafe.
    #[error("{path}: {message}")]
    Unsafe {
        /// The path.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// An I/O operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What the shim was doing.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The container id is already in use.
    #[error(
        "container {0:?} already exists (or was left behind: run `locald-shim delete --id {0}`)"
    )]
    Exists(String),
    /// No such container for this caller.
    #[error("no container {id:?} for uid {uid}")]
    NoSuchContainer {
        /// The id asked for.
        id: String,
        /// The caller.
        uid: u32,
    },
    /// Bad `/etc/locald/shim.conf`.
    #[error("{path}: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl ShimError {
    /// Shorthand for [`ShimError::Io`].
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| ShimError::Io { what, path, source }
    }
}
