//! What a service or build runs, as data: a host program or a container
//! made from an image, with the bind mounts it gets. The config says it;
//! the runtime translates it; neither needs the other to name it.

use std::path::PathBuf;

/// What a workload is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workload {
    /// A program on the host: argv\[0\] looked up in `PATH`.
    Host {
        /// Program and arguments.
        argv: Vec<String>,
    },
    /// A container made from an image.
    Image {
        /// The image reference as the user wrote it.
        reference: String,
        /// Overrides the image's Entrypoint and Cmd.
        command: Option<Vec<String>>,
        /// Bind mounts of host paths.
        volumes: Vec<Volume>,
        /// Working directory in the container (default: the image's).
        workdir: Option<String>,
        /// Run on the image's shared rootfs, read-only, instead of a
        /// private writable copy.
        read_only: bool,
        /// Run as this `uid:gid` of the container and map the caller's own
        /// ids to it (instead of to root): what the process writes in its
        /// bind mounts is then the caller's. Buildpacks builds run so, as the
        /// builder's CNB user.
        map_user: Option<(u32, u32)>,
    },
}

impl Workload {
    /// Which kind of runtime runs it.
    pub fn kind(&self) -> RuntimeKind {
        match self {
            Workload::Host { .. } => RuntimeKind::Host,
            Workload::Image { .. } => RuntimeKind::Container,
        }
    }

    /// A one-line description for messages (`python3 app.py`, `image redis:7`).
    pub fn describe(&self) -> String {
        match self {
            Workload::Host { argv } => argv.join(" "),
            Workload::Image { reference, .. } => format!("image {reference}"),
        }
    }
}

/// The kinds of runtime locald knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuntimeKind {
    /// Host processes.
    Host,
    /// Containers through `locald-shim`.
    Container,
}

/// One bind mount of a host path into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// Absolute host path.
    pub source: PathBuf,
    /// Absolute path in the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// `runtime` in `locald.toml`: where a service's process lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeChoice {
    /// A child process of locald, in its own process group (and cgroup where
    /// locald can make one).
    Host,
    /// A transient unit of the user's systemd manager.
    Systemd,
}
