//! `dev.locald.Service1`: one object per service, at
//! `/dev/locald/Locald1/project/<project>/<service>` (escaped labels).
//! Every property comes from the service's latest snapshot; [`update`] swaps
//! in a new one and emits one `PropertiesChanged` with what differs. Served
//! behind [`Guarded`](super::guard::Guarded), like every locald object.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::Value;
use zbus::{interface, Connection};

use locald_api::{
    project_path, service_path, BuildInfo, Error, PROJECT_INTERFACE, SERVICE_INTERFACE,
};

use super::{emit_changed, lock, DbusLogSink, ServiceCell, Shared};
use crate::event::{BuildRecord, ServiceSnapshot};
use crate::runtime::accounting::Accounting;

/// A service object.
pub struct Service1 {
    cell: Arc<ServiceCell>,
    logs: Arc<DbusLogSink>,
}

impl Service1 {
    pub(crate) fn new(cell: Arc<ServiceCell>, logs: Arc<DbusLogSink>) -> Self {
        Self { cell, logs }
    }

    fn snapshot(&self) -> std::sync::MutexGuard<'_, ServiceSnapshot> {
        lock(&self.cell.snapshot)
    }

    /// The running unit's counters; none for a service that does not run as
    /// a systemd unit (or is not running).
    fn accounting(&self) -> Accounting {
        let (runtime_is_systemd, pid) = {
            let s = self.snapshot();
            (s.runtime == "systemd", s.main_pid)
        };
        match pid {
            Some(pid) if runtime_is_systemd => Accounting::of_unit_pid(pid),
            _ => Accounting::default(),
        }
    }
}

/// Microseconds since the epoch, 0 for none (as systemd's timestamps).
pub fn usec(t: Option<SystemTime>) -> u64 {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A build record as it goes on the wire; all empty for none.
pub fn build_info(record: Option<&BuildRecord>) -> BuildInfo {
    match record {
        None => BuildInfo::default(),
        Some(r) => BuildInfo {
            build_id: r.build_id.clone(),
            result: r.result.as_str().to_owned(),
            reason: r.reason.clone(),
            source_hash: r.source_hash.clone().unwrap_or_default(),
            started_at: usec(Some(r.started_at)),
            finished_at: usec(r.finished_at),
        },
    }
}

/// The properties that follow the snapshot, by D-Bus name.
fn properties(s: &ServiceSnapshot) -> Vec<(&'static str, Value<'static>)> {
    vec![
        ("State", Value::from(s.state.as_str())),
        ("StateReason", Value::from(s.reason.clone())),
        ("StatusText", Value::from(s.status_text.clone())),
        ("MainPID", Value::from(s.main_pid.unwrap_or(0))),
        ("ExitStatus", Value::from(s.exit_status.unwrap_or(-1))),
        ("RestartCount", Value::from(s.restart_count)),
        ("StartedAt", Value::from(usec(s.started_at))),
        ("LastBuild", Value::from(build_info(s.last_build.as_ref()))),
        ("Ports", Value::from(ports(s))),
        ("Url", Value::from(s.url.clone())),
        ("Runtime", Value::from(s.runtime.clone())),
        ("HasHealth", Value::from(s.has_health)),
    ]
}

/// The service's ports by environment variable, as `Ports` carries them.
fn ports(s: &ServiceSnapshot) -> std::collections::HashMap<String, u16> {
    s.ports.iter().map(|(k, v)| (k.clone(), *v)).collect()
}

/// Swaps in a new snapshot and emits what changed, for the service and for
/// its project's `State`.
pub(crate) async fn update(
    conn: &Connection,
    cell: &ServiceCell,
    new: ServiceSnapshot,
) -> zbus::Result<()> {
    let after = properties(&new);
    let before = {
        let mut snap = lock(&cell.snapshot);
        if *snap == new {
            return Ok(());
        }
        let before = properties(&snap);
        *snap = new;
        before
    };
    let changed: Vec<_> = after
        .into_iter()
        .zip(before)
        .filter(|(a, b)| a.1 != b.1)
        .map(|(a, _)| a)
        .collect();
    emit_changed(
        conn,
        service_path(&cell.project, &cell.name).as_str(),
        SERVICE_INTERFACE,
        changed,
    )
    .await
}

/// Applies a `ServiceChanged` event; `false` when the object does not exist
/// yet and the project needs reconciling.
pub(crate) async fn apply_change(
    shared: &Shared,
    project: &str,
    snapshot: ServiceSnapshot,
) -> zbus::Result<bool> {
    let Some(pcell) = shared.project_cell(project) else {
        return Ok(false);
    };
    let Some(cell) = lock(&pcell.services).get(&snapshot.name).cloned() else {
        return Ok(false);
    };
    let state_before = pcell.state();
    update(&shared.conn, &cell, snapshot).await?;
    let state_after = pcell.state();
    if state_before != state_after {
        emit_changed(
            &shared.conn,
            project_path(project).as_str(),
            PROJECT_INTERFACE,
            vec![("State", Value::from(state_after))],
        )
        .await?;
    }
    Ok(true)
}

#[interface(name = "dev.locald.Service1")]
impl Service1 {
    /// Starts sending this service's `LogLine` signals to the caller, and to
    /// nobody else. They stop with `UnsubscribeLogs` or when the caller
    /// leaves the bus.
    async fn subscribe_logs(&self, #[zbus(header)] header: Header<'_>) -> Result<(), Error> {
        if let Some(sender) = header.sender() {
            self.logs
                .subscribe(sender.as_str(), &self.cell.project, &self.cell.name);
        }
        Ok(())
    }

    /// Stops sending `LogLine` signals for this caller.
    async fn unsubscribe_logs(&self, #[zbus(header)] header: Header<'_>) -> Result<(), Error> {
        if let Some(sender) = header.sender() {
            self.logs
                .unsubscribe(sender.as_str(), &self.cell.project, &self.cell.name);
        }
        Ok(())
    }

    /// One line of output: `phase` is `build` or `run`, `stream` is `stdout`
    /// or `stderr`, `line` the bytes without the newline. Sent only to the
    /// connections that called `SubscribeLogs`, addressed to each of them.
    #[zbus(signal)]
    async fn log_line(
        emitter: &SignalEmitter<'_>,
        service: &str,
        phase: &str,
        stream: &str,
        line: &[u8],
    ) -> zbus::Result<()>;

    /// Service name.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn name(&self) -> String {
        self.cell.name.clone()
    }

    /// Name of the project the service belongs to.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn project(&self) -> String {
        self.cell.project.clone()
    }

    /// Lifecycle state: pending, building, starting, running, healthy,
    /// error, backoff, failed, stopping or stopped.
    #[zbus(property(emits_changed_signal = "true"))]
    async fn state(&self) -> String {
        self.snapshot().state.as_str().to_owned()
    }

    /// Why the service is in its state ("waiting for db", "exited with status 1"); may be empty.
    #[zbus(property(emits_changed_signal = "true"))]
    async fn state_reason(&self) -> String {
        self.snapshot().reason.clone()
    }

    /// The last `STATUS=` the service sent on its notify socket.
    #[zbus(property(emits_changed_signal = "true"))]
    async fn status_text(&self) -> String {
        self.snapshot().status_text.clone()
    }

    /// What runs the service's process: `host`, `container` or `systemd`
    /// (a transient unit of the user's systemd manager); empty before the
    /// first start.
    #[zbus(property(emits_changed_signal = "true"))]
    async fn runtime(&self) -> String {
        self.snapshot().runtime.clone()
    }

    /// Whether the service has a health check: it is ready when `healthy`;
    /// without one, when `running`.
    #[zbus(property(emits_changed_signal = "true"))]
    async fn has_health(&self) -> bool {
        self.snapshot().has_health
    }

    /// Memory of the service's unit in bytes, as systemd's `MemoryCurrent`
    /// (read when asked, never signalled); 2^64-1 when unknown: not a
    /// systemd unit, not running, or not accounted.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn memory_current(&self) -> u64 {
        self.accounting().memory.unwrap_or(u64::MAX)
    }

    /// CPU time of the unit in nanoseconds, as systemd's `CPUUsageNSec`;
    /// 2^64-1 when unknown.
    #[zbus(property(emits_changed_signal = "false"), name = "CPUUsageNSec")]
    async fn cpu_usage_nsec(&self) -> u64 {
        self.accounting().cpu_nsec.unwrap_or(u64::MAX)
    }

    /// Processes and threads in the unit, as systemd's `TasksCurrent`;
    /// 2^64-1 when unknown.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn tasks_current(&self) -> u64 {
        self.accounting().tasks.unwrap_or(u64::MAX)
    }

    /// Bytes the unit read, as systemd's `IOReadBytes`; 2^64-1 when unknown.
    #[zbus(property(emits_changed_signal = "false"), name = "IOReadBytes")]
    async fn io_read_bytes(&self) -> u64 {
        self.accounting().io_read.unwrap_or(u64::MAX)
    }

    /// Bytes the unit wrote, as systemd's `IOWriteBytes`; 2^64-1 when unknown.
    #[zbus(property(emits_changed_signal = "false"), name = "IOWriteBytes")]
    async fn io_write_bytes(&self) -> u64 {
        self.accounting().io_write.unwrap_or(u64::MAX)
    }

    /// PID of the main process; 0 when none runs.
    #[zbus(property(emits_changed_signal = "true"), name = "MainPID")]
    async fn main_pid(&self) -> u32 {
        self.snapshot().main_pid.unwrap_or(0)
    }

    /// Exit status of the last process (the code, or 128+signal when
    /// killed); -1 when no process has exited yet.
    #[zbus(property(emits_changed_signal = "true"))]
    async fn exit_status(&self) -> i32 {
        self.snapshot().exit_status.unwrap_or(-1)
    }

    /// How many times the process was restarted since `up`.
    #[zbus(property(emits_changed_signal = "true"))]
    async fn restart_count(&self) -> u32 {
        self.snapshot().restart_count
    }

    /// When the current process started, in µs since the epoch; 0 when none.
    #[zbus(property(emits_changed_signal = "true"))]
    async fn started_at(&self) -> u64 {
        usec(self.snapshot().started_at)
    }

    /// The last build: (id, result, reason, source hash, started, finished),
    /// times in µs since the epoch; all empty when never built.
    #[zbus(property(emits_changed_signal = "true"))]
    async fn last_build(&self) -> BuildInfo {
        build_info(self.snapshot().last_build.as_ref())
    }

    /// The service's ports by the environment variable that carries each
    /// (`PORT`, `PORT_HTTP`, ...): fixed ones and those locald chose for
    /// `port = "auto"`, remembered across restarts. Empty when it has none.
    #[zbus(property(emits_changed_signal = "true"))]
    async fn ports(&self) -> std::collections::HashMap<String, u16> {
        ports(&self.snapshot())
    }

    /// The service's URL behind the daemon's `*.localhost` proxy
    /// (`http://SERVICE.PROJECT.localhost:7780/`); empty when it has no
    /// port or the proxy is off.
    #[zbus(property(emits_changed_signal = "true"))]
    async fn url(&self) -> String {
        self.snapshot().url.clone()
    }
}
