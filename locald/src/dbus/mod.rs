//! The D-Bus layer: translates between the session bus and the [`Engine`].
//!
//! It holds no state of its own beyond a copy of the engine's snapshots, kept
//! current by one task that follows the engine's events (`events`), so that
//! property reads never wait on the engine. One file per interface:
//! `manager` (`dev.locald.Manager1` at `/dev/locald/Locald1`, with the
//! ObjectManager beside it), `project` (`dev.locald.Project1`) and
//! `service` (`dev.locald.Service1`). Engine errors become named
//! `dev.locald.Error.*` errors only here ([`error`]); live output lines go
//! out through [`logs`], to each subscriber alone.
//!
//! Every object, zbus's ObjectManager included, is served wrapped in
//! `guard::Guarded`: it refuses callers of another uid (`access`) on methods,
//! `Properties.Get`/`GetAll` and `GetManagedObjects` alike, and answers
//! arguments of the wrong type with `InvalidArgs`, before the interface's
//! own code runs. Look objects up as `Guarded<Service1>` and so on.
//!
//! Locking: property getters only take short `std` mutexes on the cells and
//! never await while holding one. Adding and removing objects is serialized
//! by one async mutex (`Shared::reconcile`) that no getter takes, so a
//! `GetManagedObjects` in progress can never deadlock against a change.

mod access;
pub mod error;
mod events;
mod guard;
pub mod logs;
mod manager;
mod project;
mod service;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use indexmap::IndexMap;
use tokio::task::JoinHandle;
use zbus::fdo::{ObjectManager, Properties};
use zbus::names::InterfaceName;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::Value;
use zbus::Connection;

use locald_api::{project_path, service_path, MANAGER_PATH};

use guard::Guarded;

use crate::engine::Engine;
use crate::event::{ProjectSnapshot, ServiceSnapshot, ServiceState};

pub use logs::DbusLogSink;

pub(crate) use crate::lock;

/// Emits one `PropertiesChanged` carrying every property in `changed`.
pub(crate) async fn emit_changed(
    conn: &Connection,
    path: &str,
    interface: &'static str,
    changed: Vec<(&'static str, Value<'_>)>,
) -> zbus::Result<()> {
    if changed.is_empty() {
        return Ok(());
    }
    let emitter = SignalEmitter::new(conn, path)?;
    let map: HashMap<&str, Value<'_>> = changed.into_iter().collect();
    Properties::properties_changed(
        &emitter,
        InterfaceName::from_static_str_unchecked(interface),
        map,
        Cow::Borrowed(&[]),
    )
    .await
}

/// What the bus sees of one service: its latest snapshot.
pub(crate) struct ServiceCell {
    pub(crate) project: String,
    pub(crate) name: String,
    pub(crate) snapshot: Mutex<ServiceSnapshot>,
}

/// What the bus sees of one project.
pub(crate) struct ProjectCell {
    pub(crate) name: String,
    pub(crate) path: String,
    pub(crate) services: Mutex<IndexMap<String, Arc<ServiceCell>>>,
}

impl ProjectCell {
    /// The summary state, from the services' states (see `PROJECT_STATES`).
    pub(crate) fn state(&self) -> &'static str {
        let states: Vec<ServiceState> = lock(&self.services)
            .values()
            .map(|s| lock(&s.snapshot).state)
            .collect();
        project_state(&states)
    }
}

/// The summary state of a project whose services are in `states`: a
/// summary, so one service's restart (stopping, starting) does not make a
/// running project flap. `degraded` while any service is failing (failed,
/// in error or backing off); else `running` while any is up; else
/// `starting` while any is on its way up, `stopping` while any stops, and
/// `stopped`.
pub fn project_state(states: &[ServiceState]) -> &'static str {
    use ServiceState as S;
    let any = |f: fn(&S) -> bool| states.iter().any(f);
    if any(|s| matches!(s, S::Failed | S::Error | S::Backoff)) {
        "degraded"
    } else if any(|s| matches!(s, S::Running | S::Healthy)) {
        "running"
    } else if any(|s| matches!(s, S::Pending | S::Building | S::Starting)) {
        "starting"
    } else if any(|s| matches!(s, S::Stopping)) {
        "stopping"
    } else {
        "stopped"
    }
}

/// What every interface object shares: the engine, the bus, the cells.
pub(crate) struct Shared {
    pub(crate) engine: Engine,
    pub(crate) conn: Connection,
    pub(crate) access: Arc<access::Access>,
    pub(crate) logs: Arc<DbusLogSink>,
    pub(crate) projects: Mutex<BTreeMap<String, Arc<ProjectCell>>>,
    /// Serializes adding and removing objects.
    structure: tokio::sync::Mutex<()>,
}

impl Shared {
    pub(crate) fn project_cell(&self, name: &str) -> Option<Arc<ProjectCell>> {
        lock(&self.projects).get(name).cloned()
    }

    pub(crate) fn service_cell(&self, project: &str, service: &str) -> Option<Arc<ServiceCell>> {
        let p = self.project_cell(project)?;
        let services = lock(&p.services);
        services.get(service).cloned()
    }

    /// Makes the objects of `project` match the engine's snapshot of it:
    /// adds and removes project and service objects, updates every cell and
    /// emits the changes. Idempotent; safe to call from a method handler and
    /// from the event task at once.
    pub(crate) async fn reconcile(&self, project: &str) {
        let _guard = self.structure.lock().await;
        let snapshot = self.engine.project(project);
        let result = match snapshot {
            Some(snapshot) => self.apply_project(snapshot).await,
            None => self.remove_project(project).await,
        };
        if let Err(e) = result {
            tracing::warn!(project, "cannot update the D-Bus objects: {e}");
        }
    }

    /// Reconciles every project the engine has and drops those it has not.
    pub(crate) async fn reconcile_all(&self) {
        let mut names: Vec<String> = self.engine.projects().into_iter().map(|p| p.name).collect();
        names.extend(lock(&self.projects).keys().cloned());
        names.sort();
        names.dedup();
        for name in names {
            self.reconcile(&name).await;
        }
    }

    async fn apply_project(&self, snapshot: ProjectSnapshot) -> zbus::Result<()> {
        let server = self.conn.object_server();
        let existing = self.project_cell(&snapshot.name);
        let is_new = existing.is_none();
        let cell = match existing {
            Some(c) => c,
            None => {
                let cell = Arc::new(ProjectCell {
                    name: snapshot.name.clone(),
                    path: snapshot.path.display().to_string(),
                    services: Mutex::new(IndexMap::new()),
                });
                lock(&self.projects).insert(snapshot.name.clone(), cell.clone());
                cell
            }
        };
        let state_before = cell.state();
        let names_before: Vec<String> = lock(&cell.services).keys().cloned().collect();
        if is_new {
            server
                .at(
                    project_path(&cell.name),
                    Guarded::new(project::Project1::new(cell.clone()), self.access.clone()),
                )
                .await?;
        }

        // Services gone from the snapshot.
        let wanted: Vec<String> = snapshot.services.iter().map(|s| s.name.clone()).collect();
        for gone in names_before.iter().filter(|n| !wanted.contains(n)) {
            lock(&cell.services).shift_remove(gone);
            server
                .remove::<Guarded<service::Service1>, _>(service_path(&cell.name, gone))
                .await?;
        }
        // New and changed services, then the file's order.
        for snap in snapshot.services {
            let known = lock(&cell.services).get(&snap.name).cloned();
            match known {
                Some(svc) => {
                    // `snapshot` was read before this loop's awaits, and the
                    // event task may have given the cell something newer
                    // meanwhile: writing the old one would undo it for good
                    // (a service left "starting" while it runs). What the
                    // engine says now is never older than what an event
                    // already brought.
                    let fresh = self
                        .engine
                        .project(&cell.name)
                        .and_then(|p| p.services.into_iter().find(|s| s.name == snap.name))
                        .unwrap_or(snap);
                    service::update(&self.conn, &svc, fresh).await?
                }
                None => {
                    let svc = Arc::new(ServiceCell {
                        project: cell.name.clone(),
                        name: snap.name.clone(),
                        snapshot: Mutex::new(snap),
                    });
                    lock(&cell.services).insert(svc.name.clone(), svc.clone());
                    server
                        .at(
                            service_path(&cell.name, &svc.name),
                            Guarded::new(
                                service::Service1::new(svc, self.logs.clone()),
                                self.access.clone(),
                            ),
                        )
                        .await?;
                }
            }
        }
        {
            let mut services = lock(&cell.services);
            services.sort_by_cached_key(|name, _| wanted.iter().position(|w| w == name));
        }
        let names_after: Vec<String> = lock(&cell.services).keys().cloned().collect();
        if !is_new {
            project::emit_changes(
                &self.conn,
                &cell,
                names_before != names_after,
                state_before != cell.state(),
            )
            .await?;
        }
        if is_new {
            manager::emit_projects_changed(&self.conn, self).await?;
        }
        Ok(())
    }

    async fn remove_project(&self, name: &str) -> zbus::Result<()> {
        let Some(cell) = self.project_cell(name) else {
            return Ok(());
        };
        let server = self.conn.object_server();
        let services: Vec<String> = lock(&cell.services).keys().cloned().collect();
        for s in services.iter().rev() {
            server
                .remove::<Guarded<service::Service1>, _>(service_path(name, s))
                .await?;
        }
        server
            .remove::<Guarded<project::Project1>, _>(project_path(name))
            .await?;
        lock(&self.projects).remove(name);
        manager::emit_projects_changed(&self.conn, self).await
    }
}

/// A running D-Bus layer: its objects are served on the connection for as
/// long as the connection lives; dropping this stops following the engine.
pub struct Server {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    closed: tokio::sync::watch::Receiver<bool>,
}

impl Server {
    /// Resolves once the connection to the bus is lost (the bus daemon went
    /// away). The objects are unreachable from then on.
    pub async fn closed(&self) {
        let mut closed = self.closed.clone();
        let _ = closed.wait_for(|c| *c).await;
    }

    /// The connection the objects are served on.
    pub fn connection(&self) -> &Connection {
        &self.shared.conn
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Serves the locald objects on `conn` for `engine` and starts following its
/// events. `logs` must be the sink the engine was created with (or part of
/// it) so that `LogLine` signals carry the engine's output. Does not take the
/// well-known name: the caller does that once the objects are in place, so
/// nobody activated by name finds an empty tree.
pub async fn serve(
    conn: &Connection,
    engine: Engine,
    logs: Arc<DbusLogSink>,
) -> Result<Server, zbus::Error> {
    // Subscribe before the first snapshot so no change falls between them.
    let events = engine.subscribe();
    let shared = Arc::new(Shared {
        engine,
        conn: conn.clone(),
        access: Arc::new(access::Access::new(conn).await?),
        logs: logs.clone(),
        projects: Mutex::new(BTreeMap::new()),
        structure: tokio::sync::Mutex::new(()),
    });
    logs.attach(conn.clone());
    let server = conn.object_server();
    let access = shared.access.clone();
    server
        .at(MANAGER_PATH, Guarded::new(ObjectManager, access.clone()))
        .await?;
    server
        .at(
            MANAGER_PATH,
            Guarded::new(manager::Manager1::new(shared.clone()), access),
        )
        .await?;
    shared.reconcile_all().await;
    let (closed_tx, closed) = tokio::sync::watch::channel(false);
    let departed = shared.clone();
    let tasks = vec![
        tokio::spawn(events::follow(shared.clone(), events)),
        // The bus's NameOwnerChanged stream ends only with the connection.
        tokio::spawn(async move {
            access::forget_departed(departed).await;
            let _ = closed_tx.send(true);
        }),
    ];
    Ok(Server {
        shared,
        tasks,
        closed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ServiceState as S;

    #[test]
    fn project_state_summarizes() {
        assert_eq!(project_state(&[]), "stopped");
        assert_eq!(project_state(&[S::Healthy, S::Running]), "running");
        assert_eq!(project_state(&[S::Healthy, S::Stopped]), "running");
        assert_eq!(project_state(&[S::Healthy, S::Building]), "running");
        assert_eq!(project_state(&[S::Backoff, S::Failed]), "degraded");
        assert_eq!(project_state(&[S::Stopping, S::Stopped]), "stopping");
        assert_eq!(project_state(&[S::Stopped, S::Stopped]), "stopped");
        // One service restarting in a running project: still running.
        assert_eq!(project_state(&[S::Healthy, S::Stopping]), "running");
        assert_eq!(project_state(&[S::Healthy, S::Starting]), "running");
        assert_eq!(project_state(&[S::Pending, S::Starting]), "starting");
        assert_eq!(project_state(&[S::Healthy, S::Backoff]), "degraded");
    }
}
