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

/// Values of a project's `State`: `degraded` when any service is failed or
/// in error, else `starting` while any is pending, building, starting or in
/// backoff, else `stopping` while any stops, else `stopped` when none runs,
/// else `running`.
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
