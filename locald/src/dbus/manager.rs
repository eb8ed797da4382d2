//! `dev.locald.Manager1` at `/dev/locald/Locald1`: bring projects up and
//! down, act on services, look objects up, list, pull and prune images;
//! build and pull progress signals.
//! Served behind [`Guarded`](super::guard::Guarded), which admits callers
//! and checks argument types before any method here runs.

// zbus generates the `PullProgress` emitter with one argument per field of
// the signal, outside the reach of an attribute on the method.
#![allow(clippy::too_many_arguments)]

use std::path::Path;
use std::sync::Arc;

use zbus::object_server::SignalEmitter;
use zbus::zvariant::{OwnedObjectPath, Value};
use zbus::{interface, Connection};

use locald_api::{
    project_path, service_path, BuildInfo, Error, ImageEntry, ProjectEntry, PruneResult,
    PullResult, ReloadResult, MANAGER_INTERFACE, MANAGER_PATH,
};

use super::error::to_dbus;
use super::{emit_changed, lock, service, Shared};

/// The manager object.
pub struct Manager1 {
    shared: Arc<Shared>,
}

impl Manager1 {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The project's name if it is up, else `NoSuchProject`.
    fn known_project(&self, project: &str) -> Result<(), Error> {
        if self.shared.engine.project(project).is_some() {
            Ok(())
        } else {
            Err(Error::NoSuchProject(format!(
                "no project named `{project}` is up"
            )))
        }
    }
}

/// Emits `PropertiesChanged` for `Projects`.
pub(crate) async fn emit_projects_changed(conn: &Connection, shared: &Shared) -> zbus::Result<()> {
    let projects: Vec<OwnedObjectPath> = lock(&shared.projects)
        .keys()
        .map(|n| project_path(n))
        .collect();
    emit_changed(
        conn,
        MANAGER_PATH,
        MANAGER_INTERFACE,
        vec![("Projects", Value::from(projects))],
    )
    .await
}

#[interface(name = "dev.locald.Manager1")]
impl Manager1 {
    /// Brings up the project containing `directory` (an absolute path), or
    /// reloads it if it is up already. Returns the project object.
    async fn up(&self, directory: String) -> Result<OwnedObjectPath, Error> {
        let dir = Path::new(&directory);
        if !dir.is_absolute() {
            return Err(Error::InvalidArgument(format!(
                "`{directory}` is not an absolute path; the daemon has no current directory of yours"
            )));
        }
        // Canonical, so one project has one identity however it is named.
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
        let name = self.shared.engine.up(&dir).await.map_err(to_dbus)?;
        self.shared.reconcile(&name).await;
        Ok(project_path(&name))
    }

    /// Stops every service of the project (reverse dependency order) and forgets it.
    async fn down(&self, project: String) -> Result<(), Error> {
        self.shared.engine.down(&project).await.map_err(to_dbus)?;
        self.shared.reconcile(&project).await;
        Ok(())
    }

    /// Re-reads the project's file and touches only the services whose
    /// config changed. Returns the services added, removed, changed and unchanged.
    async fn reload(&self, project: String) -> Result<ReloadResult, Error> {
        let summary = self.shared.engine.reload(&project).await.map_err(to_dbus)?;
        self.shared.reconcile(&project).await;
        Ok(ReloadResult {
            added: summary.added,
            removed: summary.removed,
            changed: summary.changed,
            unchanged: summary.unchanged,
        })
    }

    /// Watches every service of the project for changes to its sources
    /// (`all` true, as `locald-ctl up --watch`), or only those with `watch`
    /// in the file (`all` false). Lasts until the project goes down.
    async fn set_watch(&self, project: String, all: bool) -> Result<(), Error> {
        self.shared
            .engine
            .set_watch_all(&project, all)
            .await
            .map_err(to_dbus)
    }

    /// Starts a stopped or failed service.
    async fn start_service(&self, project: String, service: String) -> Result<(), Error> {
        self.shared
            .engine
            .start_service(&project, &service)
            .await
            .map_err(to_dbus)
    }

    /// Stops a service; it stays stopped until started.
    async fn stop_service(&self, project: String, service: String) -> Result<(), Error> {
        self.shared
            .engine
            .stop_service(&project, &service)
            .await
            .map_err(to_dbus)
    }

    /// Restarts a service, running its build again.
    async fn restart_service(&self, project: String, service: String) -> Result<(), Error> {
        self.shared
            .engine
            .restart_service(&project, &service)
            .await
            .map_err(to_dbus)
    }

    /// Builds a service now (skipped when up to date unless `force`) and
    /// returns the build once it ended. Progress arrives as `BuildProgress`
    /// signals meanwhile; a failed build is the `BuildFailed` error.
    async fn build(
        &self,
        project: String,
        service: String,
        force: bool,
    ) -> Result<BuildInfo, Error> {
        let record = self
            .shared
            .engine
            .build(&project, &service, force)
            .await
            .map_err(to_dbus)?;
        Ok(service::build_info(Some(&record)))
    }

    /// Every image in the user's store: reference, manifest digest, bytes on
    /// disk (blobs and unpacked tree), whether it is unpacked, the
    /// directories of the projects that are up and use it (none: `Prune`
    /// removes it), and when it was fetched (µs since the epoch).
    async fn list_images(&self) -> Result<Vec<ImageEntry>, Error> {
        let images = self.shared.engine.images().await.map_err(to_dbus)?;
        Ok(images.into_iter().map(image_entry).collect())
    }

    /// Pulls a service's image now (a registry is asked what its tag names;
    /// a local layout or archive is imported again), transferring only what
    /// is not stored; with `force`, stored blobs are verified first and
    /// damaged ones fetched again. Returns once the image is stored; a
    /// running service keeps its image until it restarts. Progress arrives
    /// as `PullProgress` signals meanwhile.
    async fn pull(
        &self,
        project: String,
        service: String,
        force: bool,
    ) -> Result<PullResult, Error> {
        let s = self
            .shared
            .engine
            .pull(&project, &service, force)
            .await
            .map_err(to_dbus)?;
        Ok(PullResult {
            reference: s.reference,
            digest: s.manifest.to_string(),
            previous: s.previous.map(|d| d.to_string()).unwrap_or_default(),
            blobs: u32::try_from(s.blobs).unwrap_or(u32::MAX),
            repaired: u32::try_from(s.repaired).unwrap_or(u32::MAX),
            bytes: s.bytes,
        })
    }

    /// Removes the images no project that is up uses (the ones
    /// `ListImages` shows with no projects): their blobs and unpacked
    /// trees. A tree a running container uses is kept.
    async fn prune(&self) -> Result<PruneResult, Error> {
        let p = self.shared.engine.prune().await.map_err(to_dbus)?;
        let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        Ok(PruneResult {
            references: p.references,
            blobs: n(p.blobs),
            unpacked: n(p.rootfs),
            in_use: n(p.in_use),
            bytes: p.bytes,
        })
    }

    /// Every project that is up: name, directory, state and object.
    async fn list_projects(&self) -> Result<Vec<ProjectEntry>, Error> {
        let cells: Vec<_> = lock(&self.shared.projects).values().cloned().collect();
        Ok(cells
            .iter()
            .map(|c| ProjectEntry {
                name: c.name.clone(),
                path: c.path.clone(),
                state: c.state().to_owned(),
                object: project_path(&c.name),
            })
            .collect())
    }

    /// The object of a project.
    async fn get_project(&self, project: String) -> Result<OwnedObjectPath, Error> {
        if self.shared.project_cell(&project).is_none() {
            self.known_project(&project)?;
            self.shared.reconcile(&project).await;
        }
        Ok(project_path(&project))
    }

    /// The object of a service.
    async fn get_service(
        &self,
        project: String,
        service: String,
    ) -> Result<OwnedObjectPath, Error> {
        if self.shared.service_cell(&project, &service).is_none() {
            self.known_project(&project)?;
            self.shared.reconcile(&project).await;
            if self.shared.service_cell(&project, &service).is_none() {
                return Err(Error::NoSuchService(format!(
                    "project `{project}` has no service `{service}`"
                )));
            }
        }
        Ok(service_path(&project, &service))
    }

    /// A build moved on to step `step` (1-based) of `total`.
    #[zbus(signal)]
    pub(crate) async fn build_progress(
        emitter: &SignalEmitter<'_>,
        project: &str,
        service: &str,
        build_id: &str,
        step: u32,
        total: u32,
        label: &str,
    ) -> zbus::Result<()>;

    /// A layer of a service's image is being pulled or imported, for `Pull`
    /// or the service's first start: sent at the layer's start, about every
    /// 1% and at its end (`done` = `total`). A layer already stored is sent
    /// once, done, with `cached`. `index` counts from 0 (the lowest layer)
    /// of `layers`.
    #[zbus(signal)]
    pub(crate) async fn pull_progress(
        emitter: &SignalEmitter<'_>,
        project: &str,
        service: &str,
        reference: &str,
        layer: &str,
        index: u32,
        layers: u32,
        done: u64,
        total: u64,
        cached: bool,
    ) -> zbus::Result<()>;

    /// A build ended (`result` is `succeeded` or `failed`) or was skipped as
    /// up to date (`skipped`).
    #[zbus(signal)]
    pub(crate) async fn build_finished(
        emitter: &SignalEmitter<'_>,
        project: &str,
        service: &str,
        build: BuildInfo,
    ) -> zbus::Result<()>;

    /// The daemon's version.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_owned()
    }

    /// Problems the daemon met that the user should know about, one line
    /// each (e.g. a state file that could not be read and was set aside,
    /// the URL proxy's port held by another user).
    #[zbus(property(emits_changed_signal = "const"))]
    async fn warnings(&self) -> Vec<String> {
        self.shared.engine.warnings()
    }

    /// The objects of every project that is up.
    #[zbus(property(emits_changed_signal = "true"))]
    async fn projects(&self) -> Vec<OwnedObjectPath> {
        lock(&self.shared.projects)
            .keys()
            .map(|n| project_path(n))
            .collect()
    }
}

/// An image as `ListImages` returns it.
fn image_entry(i: crate::image::manage::ImageInfo) -> ImageEntry {
    let micros = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    };
    ImageEntry {
        reference: i.reference,
        digest: i.manifest.to_string(),
        size: i.size,
        unpacked: i.unpacked,
        projects: i.projects.iter().map(|p| p.display().to_string()).collect(),
        fetched_at: micros(i.fetched),
    }
}
