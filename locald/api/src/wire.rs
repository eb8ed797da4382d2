//! The shapes of values on the wire: structs of method results and of
//! properties, and decoding a `GetAll`/`GetManagedObjects` property map into a
//! typed view.
//!
//! Times are microseconds since the Unix epoch (`t`), 0 meaning "never", as
//! systemd's `…Timestamp` properties. Absent strings are empty; an absent PID
//! is 0; an absent exit status is -1.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use zbus::zvariant::{self, OwnedObjectPath, OwnedValue, Type};

/// `LastBuild` of a service and the result of `Build`: `(ssssstt)`.
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    Type,
    zvariant::Value,
    zvariant::OwnedValue,
)]
pub struct BuildInfo {
    /// Unique id of the build (`LOCALD_BUILD_ID` in the journal); empty when
    /// the service has never been built.
    pub build_id: String,
    /// `running`, `succeeded`, `failed`, `skipped`, or empty for no build.
    pub result: String,
    /// Why it ran or was skipped, or why it failed.
    pub reason: String,
    /// Source hash in hex, or empty.
    pub source_hash: String,
    /// Start, µs since the epoch.
    pub started_at: u64,
    /// End, µs since the epoch; 0 while running.
    pub finished_at: u64,
}

impl BuildInfo {
    /// Whether there is a build at all.
    pub fn is_empty(&self) -> bool {
        self.build_id.is_empty() && self.result.is_empty()
    }
}

/// One entry of `ListProjects`: `(ssso)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct ProjectEntry {
    /// Project name.
    pub name: String,
    /// Project directory (absolute, canonical).
    pub path: String,
    /// The project's summary state (see [`PROJECT_STATES`]).
    pub state: String,
    /// The project object.
    pub object: OwnedObjectPath,
}

/// The result of `Reload`: `(asasasas)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct ReloadResult {
    /// Services new in the file, now started.
    pub added: Vec<String>,
    /// Services gone from the file, now stopped.
    pub removed: Vec<String>,
    /// Services whose config changed, now restarted.
    pub changed: Vec<String>,
    /// Services left alone.
    pub unchanged: Vec<String>,
}

/// One entry of `ListImages`: `(sstbast)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct ImageEntry {
    /// The reference as the store records it: canonical for a registry
    /// (`docker.io/library/redis:7`), with an absolute path for `oci:` and
    /// `oci-archive:`.
    pub reference: String,
    /// The digest of the image's manifest (`sha256:…`).
    pub digest: String,
    /// Bytes on disk: its blobs and its unpacked tree. Blobs and layers
    /// shared with another image are counted for each.
    pub size: u64,
    /// Whether it is unpacked (a service has run from it).
    pub unpacked: bool,
    /// Directories of the projects that are up (under the daemon or in a
    /// foreground `locald up`) and use it; empty when `Prune` would remove it.
    pub projects: Vec<String>,
    /// When it was last pulled or imported, µs since the epoch.
    pub fetched_at: u64,
}

/// The result of `Pull`: `(sssuut)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct PullResult {
    /// The reference as the store records it.
    pub reference: String,
    /// The manifest digest the reference names now.
    pub digest: String,
    /// The digest it named before the pull; empty when it was not stored.
    pub previous: String,
    /// Blobs transferred (0 when the image was up to date).
    pub blobs: u32,
    /// Stored blobs found damaged and fetched again (with `force`).
    pub repaired: u32,
    /// Bytes transferred.
    pub bytes: u64,
}

impl PullResult {
    /// Whether the pull changed nothing: the same image, nothing transferred.
    pub fn up_to_date(&self) -> bool {
        self.blobs == 0 && self.repaired == 0 && self.previous == self.digest
    }
}

/// The result of `Prune`: `(asuuut)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct PruneResult {
    /// References removed from the store.
    pub references: Vec<String>,
    /// Blobs removed.
    pub blobs: u32,
    /// Unpacked trees removed.
    pub unpacked: u32,
    /// Unpacked trees kept because a running container uses them (their
    /// project is down, e.g. after locald was killed).
    pub in_use: u32,
    /// Bytes freed.
    pub bytes: u64,
}

/// Values of a project's `State`: `degraded` while any service is failed,
/// in error or backing off, else `running` while any is running or
/// healthy, else `starting` while any is pending, building or starting,
/// else `stopping` while any stops, else `stopped`. One service's restart
/// does not change a running project's state.
pub const PROJECT_STATES: &[&str] = &["running", "starting", "degraded", "stopping", "stopped"];

/// Values of a service's `State`, in lifecycle order.
pub const SERVICE_STATES: &[&str] = &[
    "pending", "building", "starting", "running", "healthy", "error", "backoff", "failed",
    "stopping", "stopped",
];

/// A service object's properties, decoded (e.g. from `GetManagedObjects`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// `Name`.
    pub name: String,
    /// `Project`.
    pub project: String,
    /// `State`.
    pub state: String,
    /// `StateReason`.
    pub state_reason: String,
    /// `StatusText`.
    pub status_text: String,
    /// `MainPID`; 0 when none runs.
    pub main_pid: u32,
    /// `ExitStatus`; -1 when no process has exited.
    pub exit_status: i32,
    /// `RestartCount`.
    pub restart_count: u32,
    /// `StartedAt`, µs since the epoch; 0 when not running.
    pub started_at: u64,
    /// `LastBuild`.
    pub last_build: BuildInfo,
    /// `Ports`, by environment variable (`PORT`, `PORT_HTTP`, ...); empty
    /// from a daemon that predates it.
    #[serde(default)]
    pub ports: std::collections::BTreeMap<String, u16>,
    /// `Url`; empty without a port or proxy (or from an older daemon).
    #[serde(default)]
    pub url: String,
    /// `Runtime`: `host`, `container` or `systemd`; empty before the first
    /// start (or from a daemon that predates the property).
    #[serde(default)]
    pub runtime: String,
    /// `HasHealth`: ready when `healthy` rather than `running` (false from
    /// a daemon that predates it).
    #[serde(default)]
    pub has_health: bool,
    /// `MemoryCurrent`, bytes; `u64::MAX` when unknown.
    #[serde(default = "unknown")]
    pub memory_current: u64,
    /// `CPUUsageNSec`; `u64::MAX` when unknown.
    #[serde(default = "unknown")]
    pub cpu_usage_nsec: u64,
    /// `TasksCurrent`; `u64::MAX` when unknown.
    #[serde(default = "unknown")]
    pub tasks_current: u64,
}

fn unknown() -> u64 {
    u64::MAX
}

/// A property map did not have the shape of the interface.
#[derive(Debug)]
pub struct DecodeError {
    /// The property at fault.
    pub property: &'static str,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "property `{}` is missing or of the wrong type",
            self.property
        )
    }
}

impl std::error::Error for DecodeError {}

fn get<T>(props: &HashMap<String, OwnedValue>, property: &'static str) -> Result<T, DecodeError>
where
    T: TryFrom<OwnedValue>,
{
    props
        .get(property)
        .and_then(|v| v.try_clone().ok())
        .and_then(|v| T::try_from(v).ok())
        .ok_or(DecodeError { property })
}

impl ServiceInfo {
    /// Decodes the properties of a `dev.locald.Service1` object.
    pub fn from_properties(props: &HashMap<String, OwnedValue>) -> Result<Self, DecodeError> {
        let last_build = props
            .get("LastBuild")
            .and_then(|v| v.try_clone().ok())
            .and_then(|v| <(String, String, String, String, u64, u64)>::try_from(v).ok())
            .map(
                |(build_id, result, reason, source_hash, started_at, finished_at)| BuildInfo {
                    build_id,
                    result,
                    reason,
                    source_hash,
                    started_at,
                    finished_at,
                },
            )
            .ok_or(DecodeError {
                property: "LastBuild",
            })?;
        Ok(Self {
            name: get(props, "Name")?,
            project: get(props, "Project")?,
            state: get(props, "State")?,
            state_reason: get(props, "StateReason")?,
            status_text: get(props, "StatusText")?,
            main_pid: get(props, "MainPID")?,
            exit_status: get(props, "ExitStatus")?,
            restart_count: get(props, "RestartCount")?,
            started_at: get(props, "StartedAt")?,
            last_build,
            ports: props
                .get("Ports")
                .and_then(|v| v.try_clone().ok())
                .and_then(|v| HashMap::<String, u16>::try_from(v).ok())
                .map(|m| m.into_iter().collect())
                .unwrap_or_default(),
            url: get(props, "Url").unwrap_or_default(),
            runtime: get(props, "Runtime").unwrap_or_default(),
            has_health: get(props, "HasHealth").unwrap_or_default(),
            memory_current: get(props, "MemoryCurrent").unwrap_or(u64::MAX),
            cpu_usage_nsec: get(props, "CPUUsageNSec").unwrap_or(u64::MAX),
            tasks_current: get(props, "TasksCurrent").unwrap_or(u64::MAX),
        })
    }
}

/// A project object's properties, decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectInfo {
    /// `Name`.
    pub name: String,
    /// `Path`.
    pub path: String,
    /// `State`.
    pub state: String,
    /// `Services`.
    pub services: Vec<OwnedObjectPath>,
}

impl ProjectInfo {
    /// Decodes the properties of a `dev.locald.Project1` object.
    pub fn from_properties(props: &HashMap<String, OwnedValue>) -> Result<Self, DecodeError> {
        Ok(Self {
            name: get(props, "Name")?,
            path: get(props, "Path")?,
            state: get(props, "State")?,
            services: get(props, "Services")?,
        })
    }
}
