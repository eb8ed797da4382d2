//! Client proxies for the three locald interfaces. The daemon's
//! introspection XML in `docs/dbus/` is the same contract, for clients in
//! other languages.

use zbus::proxy;
use zbus::zvariant::OwnedObjectPath;

use crate::{BuildInfo, Error, ImageEntry, ProjectEntry, PruneResult, PullResult, ReloadResult};

/// `dev.locald.Manager1` at `/dev/locald/Locald1`.
#[proxy(
    interface = "dev.locald.Manager1",
    default_service = "dev.locald.Locald1",
    default_path = "/dev/locald/Locald1",
    gen_blocking = false
)]
pub trait Manager1 {
    /// Brings up the project containing `directory` (absolute), or reloads it
    /// if it is up already; returns the project object.
    fn up(&self, directory: &str) -> Result<OwnedObjectPath, Error>;

    /// Stops every service of the project and forgets it.
    fn down(&self, project: &str) -> Result<(), Error>;

    /// Re-reads the project's file; touches only services whose config changed.
    fn reload(&self, project: &str) -> Result<ReloadResult, Error>;

    /// Watches every service of the project (`all`), or only those with
    /// `watch` in the file.
    fn set_watch(&self, project: &str, all: bool) -> Result<(), Error>;

    /// Starts a stopped or failed service.
    fn start_service(&self, project: &str, service: &str) -> Result<(), Error>;

    /// Stops a service; it stays stopped until started.
    fn stop_service(&self, project: &str, service: &str) -> Result<(), Error>;

    /// Restarts a service, running its build again.
    fn restart_service(&self, project: &str, service: &str) -> Result<(), Error>;

    /// Builds a service now (skipped when up to date unless `force`); returns
    /// once the build ended.
    fn build(&self, project: &str, service: &str, force: bool) -> Result<BuildInfo, Error>;

    /// Every project that is up.
    fn list_projects(&self) -> Result<Vec<ProjectEntry>, Error>;

    /// The object of a project.
    fn get_project(&self, project: &str) -> Result<OwnedObjectPath, Error>;

    /// The object of a service.
    fn get_service(&self, project: &str, service: &str) -> Result<OwnedObjectPath, Error>;

    /// Every image in the user's store: its size and the projects that are
    /// up and use it.
    fn list_images(&self) -> Result<Vec<ImageEntry>, Error>;

    /// Pulls (or imports again) a service's image now; returns once it is
    /// stored. With `force`, stored blobs are verified and damaged ones
    /// fetched again. Progress arrives as `PullProgress` meanwhile.
    fn pull(&self, project: &str, service: &str, force: bool) -> Result<PullResult, Error>;

    /// Removes the images no project that is up uses: their blobs and
    /// unpacked trees.
    fn prune(&self) -> Result<PruneResult, Error>;

    /// A layer of a service's image is being pulled or imported (for
    /// `Pull`, or the service's first start).
    #[zbus(signal)]
    #[allow(clippy::too_many_arguments)]
    fn pull_progress(
        &self,
        project: String,
        service: String,
        reference: String,
        layer: String,
        index: u32,
        layers: u32,
        done: u64,
        total: u64,
        cached: bool,
    ) -> zbus::Result<()>;

    /// A build moved on to step `step` of `total`.
    #[zbus(signal)]
    fn build_progress(
        &self,
        project: String,
        service: String,
        build_id: String,
        step: u32,
        total: u32,
        label: String,
    ) -> zbus::Result<()>;

    /// A build ended, or was skipped as up to date.
    #[zbus(signal)]
    fn build_finished(
        &self,
        project: String,
        service: String,
        build: BuildInfo,
    ) -> zbus::Result<()>;

    /// The daemon's version.
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;

    /// Problems the daemon met that the user should know about, one line each.
    #[zbus(property)]
    fn warnings(&self) -> zbus::Result<Vec<String>>;

    /// The objects of every project that is up.
    #[zbus(property)]
    fn projects(&self) -> zbus::Result<Vec<OwnedObjectPath>>;
}

/// `dev.locald.Project1`: one per project that is up.
#[proxy(
    interface = "dev.locald.Project1",
    default_service = "dev.locald.Locald1",
    gen_blocking = false
)]
pub trait Project1 {
    /// Project name.
    #[zbus(property)]
    fn name(&self) -> zbus::Result<String>;

    /// Project directory.
    #[zbus(property)]
    fn path(&self) -> zbus::Result<String>;

    /// Service objects, in file order.
    #[zbus(property)]
    fn services(&self) -> zbus::Result<Vec<OwnedObjectPath>>;

    /// Summary state (see `PROJECT_STATES`).
    #[zbus(property)]
    fn state(&self) -> zbus::Result<String>;
}

/// `dev.locald.Service1`: one per service of a project that is up.
#[proxy(
    interface = "dev.locald.Service1",
    default_service = "dev.locald.Locald1",
    gen_blocking = false
)]
pub trait Service1 {
    /// Starts sending `LogLine` for this service to the caller (only), while
    /// it stays on the bus.
    fn subscribe_logs(&self) -> Result<(), Error>;

    /// Stops sending `LogLine` for this caller.
    fn unsubscribe_logs(&self) -> Result<(), Error>;

    /// One output line; sent only to subscribers, addressed to each. The
    /// stream from `receive_log_line` adds the match rule that receives it.
    #[zbus(signal)]
    fn log_line(
        &self,
        service: String,
        phase: String,
        stream: String,
        line: Vec<u8>,
    ) -> zbus::Result<()>;

    /// Service name.
    #[zbus(property)]
    fn name(&self) -> zbus::Result<String>;

    /// Project name.
    #[zbus(property)]
    fn project(&self) -> zbus::Result<String>;

    /// Lifecycle state (see `SERVICE_STATES`).
    #[zbus(property)]
    fn state(&self) -> zbus::Result<String>;

    /// Why it is in that state; may be empty.
    #[zbus(property)]
    fn state_reason(&self) -> zbus::Result<String>;

    /// The last `STATUS=` the service sent.
    #[zbus(property)]
    fn status_text(&self) -> zbus::Result<String>;

    /// PID of the main process, 0 when none runs.
    #[zbus(property, name = "MainPID")]
    fn main_pid(&self) -> zbus::Result<u32>;

    /// Exit status of the last process (128+signal when killed), -1 when none exited.
    #[zbus(property)]
    fn exit_status(&self) -> zbus::Result<i32>;

    /// Restarts since `up`.
    #[zbus(property)]
    fn restart_count(&self) -> zbus::Result<u32>;

    /// When the current process started, µs since the epoch; 0 when none.
    #[zbus(property)]
    fn started_at(&self) -> zbus::Result<u64>;

    /// The last build.
    #[zbus(property)]
    fn last_build(&self) -> zbus::Result<BuildInfo>;

    /// Ports by environment variable (`PORT`, `PORT_HTTP`, ...).
    #[zbus(property)]
    fn ports(&self) -> zbus::Result<std::collections::HashMap<String, u16>>;

    /// URL behind the `*.localhost` proxy; empty when none.
    #[zbus(property)]
    fn url(&self) -> zbus::Result<String>;
}
