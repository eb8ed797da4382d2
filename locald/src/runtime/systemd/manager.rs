//! The user's systemd manager as locald uses it: the `org.freedesktop.systemd1`
//! proxy and what locald reads of a unit ([`UnitState`]), and the
//! [`SystemdManager`] trait that starting and adopting a unit are written
//! against, so the decisions in them (retry on `UnitExists`, refuse a unit
//! someone else runs, adopt only what would start the same) are unit-tested
//! on [`fake::FakeManager`] without a user manager.

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use std::time::Duration;

use nix::sys::signal::Signal;
use zbus::zvariant::{OwnedObjectPath, Value};
use zbus::Connection;

use crate::output::BoxFuture;
use crate::runtime::ExitStatus;

pub(super) const DEST: &str = "org.freedesktop.systemd1";

/// One row of `ListUnitsByPatterns`.
pub(super) type UnitInfo = (
    String,
    String,
    String,
    String,
    String,
    String,
    OwnedObjectPath,
    u32,
    String,
    OwnedObjectPath,
);

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1",
    gen_blocking = false
)]
pub(super) trait Manager {
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[(&str, Value<'_>)],
        aux: &[(&str, &[(&str, Value<'_>)])],
    ) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn kill_unit(&self, name: &str, whom: &str, signal: i32) -> zbus::Result<()>;
    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    #[zbus(name = "GetUnitByPID")]
    fn get_unit_by_pid(&self, pid: u32) -> zbus::Result<OwnedObjectPath>;
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
    fn subscribe(&self) -> zbus::Result<()>;
    fn list_units_by_patterns(
        &self,
        states: &[&str],
        patterns: &[&str],
    ) -> zbus::Result<Vec<UnitInfo>>;
    #[zbus(signal)]
    fn job_new(&self, id: u32, job: OwnedObjectPath, unit: String) -> zbus::Result<()>;
    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: OwnedObjectPath,
        unit: String,
        result: String,
    ) -> zbus::Result<()>;
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
}

/// What locald reads of a unit to know where it is.
#[derive(Debug, Clone, Default)]
pub(super) struct UnitState {
    pub(super) active: String,
    pub(super) description: String,
    pub(super) exec_main_pid: u32,
    pub(super) exec_main_code: i32,
    pub(super) exec_main_status: i32,
    /// systemd's word for how the unit ended (`success`, `watchdog`, …).
    pub(super) result: String,
    /// When the main process started, in µs since the epoch.
    pub(super) exec_main_start_us: u64,
    /// The service's last `STATUS=`.
    pub(super) status_text: String,
}

impl UnitState {
    /// Whether the main process has ended (the unit may still be stopping
    /// what is left of it).
    pub(super) fn ended(&self) -> bool {
        matches!(self.active.as_str(), "inactive" | "failed") || self.exec_main_code != 0
    }

    pub(super) fn exit(&self) -> ExitStatus {
        // CLD_EXITED = 1, CLD_KILLED = 2, CLD_DUMPED = 3 (siginfo codes).
        match self.exec_main_code {
            1 => ExitStatus::Exited(self.exec_main_status),
            2 | 3 => ExitStatus::Signaled(self.exec_main_status),
            // Never ran, or systemd forgot: as good as killed.
            _ => ExitStatus::Signaled(Signal::SIGKILL as i32),
        }
    }
}

/// Why a unit could not be read.
pub(super) enum ReadError {
    /// systemd has no such unit (any more).
    Gone,
    /// The call failed otherwise.
    Bus(zbus::Error),
}

/// A connection to the user's systemd manager.
#[derive(Clone)]
pub(super) struct Systemd {
    pub(super) conn: Connection,
    pub(super) manager: ManagerProxy<'static>,
}

impl Systemd {
    pub(super) async fn get(
        &self,
        path: &OwnedObjectPath,
        iface: &str,
        prop: &str,
    ) -> zbus::Result<Value<'static>> {
        let reply = self
            .conn
            .call_method(
                Some(DEST),
                path.as_str(),
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &(iface, prop),
            )
            .await?;
        let v: zbus::zvariant::OwnedValue = reply.body().deserialize()?;
        Ok(Value::from(v))
    }

    pub(super) async fn read(&self, path: &OwnedObjectPath) -> Result<UnitState, ReadError> {
        const UNIT: &str = "org.freedesktop.systemd1.Unit";
        const SERVICE: &str = "org.freedesktop.systemd1.Service";
        let map = |e: zbus::Error| match &e {
            zbus::Error::MethodError(name, _, _)
                if name.as_str() == "org.freedesktop.DBus.Error.UnknownObject"
                    || name.as_str() == "org.freedesktop.systemd1.NoSuchUnit"
                    || name.as_str() == "org.freedesktop.DBus.Error.UnknownInterface" =>
            {
                ReadError::Gone
            }
            _ => ReadError::Bus(e),
        };
        let s = |v: Value<'static>| String::try_from(v).unwrap_or_default();
        let u = |v: Value<'static>| u32::try_from(v).unwrap_or_default();
        let i = |v: Value<'static>| i32::try_from(v).unwrap_or_default();
        let st = UnitState {
            active: s(self.get(path, UNIT, "ActiveState").await.map_err(map)?),
            description: s(self.get(path, UNIT, "Description").await.map_err(map)?),
            exec_main_pid: u(self.get(path, SERVICE, "ExecMainPID").await.map_err(map)?),
            exec_main_code: i(self.get(path, SERVICE, "ExecMainCode").await.map_err(map)?),
            exec_main_status: i(self
                .get(path, SERVICE, "ExecMainStatus")
                .await
                .map_err(map)?),
            result: s(self.get(path, SERVICE, "Result").await.map_err(map)?),
            exec_main_start_us: u64::try_from(
                self.get(path, SERVICE, "ExecMainStartTimestamp")
                    .await
                    .map_err(map)?,
            )
            .unwrap_or_default(),
            status_text: s(self.get(path, SERVICE, "StatusText").await.map_err(map)?),
        };
        // A unit that is not loaded (systemd answers for any name) is gone.
        if st.active == "inactive" && st.exec_main_pid == 0 && st.description.is_empty() {
            return Err(ReadError::Gone);
        }
        Ok(st)
    }

    /// The `PropertiesChanged` signals of the unit at `path`, if they can
    /// be subscribed to.
    pub(super) async fn property_changes(
        &self,
        path: &OwnedObjectPath,
    ) -> Option<zbus::fdo::PropertiesChangedStream> {
        let proxy = zbus::fdo::PropertiesProxy::builder(&self.conn)
            .destination(DEST)
            .and_then(|b| b.path(path.clone()))
            .ok()?
            .build()
            .await
            .ok()?;
        proxy.receive_properties_changed().await.ok()
    }

    /// Waits (at most `limit`) until the unit at `path` is inactive or
    /// failed, woken by its `PropertiesChanged` (a slow poll covers a
    /// missed signal). Whether it is: `false` also when it cannot be read
    /// (gone).
    pub(super) async fn wait_inactive(&self, path: &OwnedObjectPath, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        let mut changes = self.property_changes(path).await;
        loop {
            match self.read(path).await {
                Ok(st) if matches!(st.active.as_str(), "inactive" | "failed") => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
            let poll = if changes.is_some() { 250 } else { 20 };
            let next = (tokio::time::Instant::now() + Duration::from_millis(poll)).min(deadline);
            let change = async {
                match changes.as_mut() {
                    Some(c) => c.next().await.is_none(),
                    None => std::future::pending().await,
                }
            };
            match tokio::time::timeout_at(next, change).await {
                // A stream that ended would wake the loop at once, forever.
                Ok(true) => changes = None,
                Ok(false) => {}
                Err(_) if next >= deadline => return false,
                Err(_) => {}
            }
        }
    }

    pub(super) async fn unit_call(&self, path: &OwnedObjectPath, method: &str) {
        let _ = self
            .conn
            .call_method(
                Some(DEST),
                path.as_str(),
                Some("org.freedesktop.systemd1.Unit"),
                method,
                &(),
            )
            .await;
    }
}

/// Why `StartTransientUnit` failed.
#[derive(Debug)]
pub(super) enum StartError {
    /// systemd still has a unit of that name (`UnitExists`).
    Exists,
    /// systemd finds the unit invalid (`InvalidArgs`), with its words.
    Invalid(String),
    /// The call failed otherwise.
    Bus(zbus::Error),
}

/// What starting and adopting a unit ask of the manager.
pub(super) trait SystemdManager: Send + Sync {
    /// `StartTransientUnit(name, "fail", props)`: the start job.
    fn start_transient<'a>(
        &'a self,
        name: &'a str,
        props: &'a [(&'a str, Value<'a>)],
    ) -> BoxFuture<'a, Result<OwnedObjectPath, StartError>>;
    /// `GetUnit`: the unit's object path, if systemd has it.
    fn unit<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Option<OwnedObjectPath>>;
    /// What locald reads of the unit at `path`.
    fn read_unit<'a>(
        &'a self,
        path: &'a OwnedObjectPath,
    ) -> BoxFuture<'a, Result<UnitState, ReadError>>;
    /// `Ref` (`true`) or `Unref` (`false`) on the unit: systemd keeps a
    /// referenced unit, and its exit status, until locald read it.
    fn hold<'a>(
        &'a self,
        path: &'a OwnedObjectPath,
        hold: bool,
    ) -> BoxFuture<'a, Result<(), String>>;
    /// `ResetFailedUnit`, errors ignored (nothing to reset is fine).
    fn reset_failed<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()>;
    /// The `JobRemoved` signals from now on, as (job, result).
    fn jobs_removed(
        &self,
    ) -> BoxFuture<'_, Result<BoxStream<'static, (OwnedObjectPath, String)>, zbus::Error>>;
    /// A stream that yields whenever a property of the unit at `path`
    /// changes (`None` if that cannot be subscribed to).
    fn changes<'a>(
        &'a self,
        path: &'a OwnedObjectPath,
    ) -> BoxFuture<'a, Option<BoxStream<'static, ()>>>;
}

impl SystemdManager for Systemd {
    fn start_transient<'a>(
        &'a self,
        name: &'a str,
        props: &'a [(&'a str, Value<'a>)],
    ) -> BoxFuture<'a, Result<OwnedObjectPath, StartError>> {
        Box::pin(async move {
            match self
                .manager
                .start_transient_unit(name, "fail", props, &[])
                .await
            {
                Ok(job) => Ok(job),
                Err(zbus::Error::MethodError(err, _, _))
                    if err.as_str() == "org.freedesktop.systemd1.UnitExists" =>
                {
                    Err(StartError::Exists)
                }
                Err(zbus::Error::MethodError(err, msg, _))
                    if err.as_str() == "org.freedesktop.DBus.Error.InvalidArgs" =>
                {
                    Err(StartError::Invalid(msg.unwrap_or_default()))
                }
                Err(e) => Err(StartError::Bus(e)),
            }
        })
    }

    fn unit<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Option<OwnedObjectPath>> {
        Box::pin(async move { self.manager.get_unit(name).await.ok() })
    }

    fn read_unit<'a>(
        &'a self,
        path: &'a OwnedObjectPath,
    ) -> BoxFuture<'a, Result<UnitState, ReadError>> {
        Box::pin(self.read(path))
    }

    fn hold<'a>(
        &'a self,
        path: &'a OwnedObjectPath,
        hold: bool,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.conn
                .call_method(
                    Some(DEST),
                    path.as_str(),
                    Some("org.freedesktop.systemd1.Unit"),
                    if hold { "Ref" } else { "Unref" },
                    &(),
                )
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }

    fn reset_failed<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let _ = self.manager.reset_failed_unit(name).await;
        })
    }

    fn jobs_removed(
        &self,
    ) -> BoxFuture<'_, Result<BoxStream<'static, (OwnedObjectPath, String)>, zbus::Error>> {
        Box::pin(async move {
            let stream = self.manager.receive_job_removed().await?;
            Ok(stream
                .filter_map(|sig| async move { sig.args().ok().map(|a| (a.job, a.result)) })
                .boxed())
        })
    }

    fn changes<'a>(
        &'a self,
        path: &'a OwnedObjectPath,
    ) -> BoxFuture<'a, Option<BoxStream<'static, ()>>> {
        Box::pin(async move {
            let changes = self.property_changes(path).await?;
            Some(changes.map(drop).boxed())
        })
    }
}

#[cfg(test)]
pub(super) mod fake {
    //! A user manager in memory: units by name, `StartTransientUnit`
    //! answers from a script, and every call recorded.

    use std::collections::{HashMap, VecDeque};
    use std::sync::Mutex;

    use futures_util::stream::BoxStream;
    use futures_util::StreamExt;
    use tokio::sync::mpsc;
    use zbus::zvariant::{OwnedObjectPath, Value};

    use super::{ReadError, StartError, SystemdManager, UnitState};
    use crate::lock;
    use crate::output::BoxFuture;

    /// What `StartTransientUnit` answers next.
    #[derive(Debug)]
    pub(crate) enum StartAnswer {
        /// A job; the unit is created as `state`, and `JobRemoved` says
        /// `result` for the job (`None`: never).
        Job {
            state: UnitState,
            result: Option<&'static str>,
        },
        Exists,
        Invalid(&'static str),
    }

    #[derive(Default)]
    struct Inner {
        units: HashMap<String, UnitState>,
        answers: VecDeque<StartAnswer>,
        calls: Vec<String>,
        jobs: Vec<mpsc::UnboundedSender<(OwnedObjectPath, String)>>,
        next_job: u32,
    }

    /// The fake manager.
    #[derive(Default)]
    pub(crate) struct FakeManager {
        inner: Mutex<Inner>,
    }

    pub(crate) fn path_of(name: &str) -> OwnedObjectPath {
        let escaped: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        OwnedObjectPath::try_from(format!("/org/freedesktop/systemd1/unit/{escaped}"))
            .unwrap_or_else(|e| panic!("object path: {e}"))
    }

    impl FakeManager {
        /// systemd has a unit `name` in `state`.
        pub(crate) fn with_unit(self, name: &str, state: UnitState) -> Self {
            lock(&self.inner).units.insert(name.to_owned(), state);
            self
        }

        /// The next `StartTransientUnit` answers `answer`.
        pub(crate) fn answering(self, answer: StartAnswer) -> Self {
            lock(&self.inner).answers.push_back(answer);
            self
        }

        /// Every call so far, as `Method name`.
        pub(crate) fn calls(&self) -> Vec<String> {
            lock(&self.inner).calls.clone()
        }

        fn record(&self, call: String) {
            lock(&self.inner).calls.push(call);
        }
    }

    impl SystemdManager for FakeManager {
        fn start_transient<'a>(
            &'a self,
            name: &'a str,
            _props: &'a [(&'a str, Value<'a>)],
        ) -> BoxFuture<'a, Result<OwnedObjectPath, StartError>> {
            Box::pin(async move {
                self.record(format!("StartTransientUnit {name}"));
                let mut inner = lock(&self.inner);
                match inner.answers.pop_front() {
                    Some(StartAnswer::Exists) => Err(StartError::Exists),
                    Some(StartAnswer::Invalid(why)) => Err(StartError::Invalid(why.into())),
                    Some(StartAnswer::Job { state, result }) => {
                        inner.next_job += 1;
                        let job = OwnedObjectPath::try_from(format!(
                            "/org/freedesktop/systemd1/job/{}",
                            inner.next_job
                        ))
                        .map_err(|e| StartError::Invalid(e.to_string()))?;
                        inner.units.insert(name.to_owned(), state);
                        if let Some(r) = result {
                            inner
                                .jobs
                                .retain(|tx| tx.send((job.clone(), r.to_owned())).is_ok());
                        }
                        Ok(job)
                    }
                    None => Err(StartError::Invalid("no scripted answer".into())),
                }
            })
        }

        fn unit<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Option<OwnedObjectPath>> {
            Box::pin(async move {
                self.record(format!("GetUnit {name}"));
                lock(&self.inner)
                    .units
                    .contains_key(name)
                    .then(|| path_of(name))
            })
        }

        fn read_unit<'a>(
            &'a self,
            path: &'a OwnedObjectPath,
        ) -> BoxFuture<'a, Result<UnitState, ReadError>> {
            Box::pin(async move {
                let inner = lock(&self.inner);
                inner
                    .units
                    .iter()
                    .find(|(n, _)| path_of(n) == *path)
                    .map(|(_, st)| st.clone())
                    .ok_or(ReadError::Gone)
            })
        }

        fn hold<'a>(
            &'a self,
            path: &'a OwnedObjectPath,
            hold: bool,
        ) -> BoxFuture<'a, Result<(), String>> {
            Box::pin(async move {
                let name = path.as_str().rsplit('/').next().unwrap_or_default();
                self.record(format!("{} {name}", if hold { "Ref" } else { "Unref" }));
                Ok(())
            })
        }

        fn reset_failed<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()> {
            Box::pin(async move {
                self.record(format!("ResetFailedUnit {name}"));
                // An ended unit nobody references is collected.
                let mut inner = lock(&self.inner);
                if inner.units.get(name).is_some_and(UnitState::ended) {
                    inner.units.remove(name);
                }
            })
        }

        fn jobs_removed(
            &self,
        ) -> BoxFuture<'_, Result<BoxStream<'static, (OwnedObjectPath, String)>, zbus::Error>>
        {
            Box::pin(async move {
                let (tx, mut rx) = mpsc::unbounded_channel();
                lock(&self.inner).jobs.push(tx);
                Ok(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed())
            })
        }

        fn changes<'a>(
            &'a self,
            _path: &'a OwnedObjectPath,
        ) -> BoxFuture<'a, Option<BoxStream<'static, ()>>> {
            Box::pin(std::future::ready(None))
        }
    }
}
