//! Supervising one project: a task per service, wired to its dependencies.
//!
//! `Project` owns the service tasks and their snapshot channels. A
//! service's snapshot channel outlives its task, so when a reload replaces a
//! service, dependents that watch it keep working. Stopping goes in reverse
//! dependency order, layer by layer: a service stops only after everything
//! that depends on it has stopped.

pub(crate) mod build;
mod cnb;
pub mod health;
mod service;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use indexmap::IndexMap;
use tokio::sync::{broadcast, mpsc, oneshot, watch, Mutex};
use tokio::task::JoinHandle;

use crate::config::{Config, ServiceConfig};
use crate::event::{BuildRecord, Event, ProjectSnapshot, ServiceSnapshot};
use crate::output::LogSink;
use crate::runtime::RuntimeSet;

use build::Builder;
use service::{Command, Dep, ServiceTask};

/// What a project needs from its surroundings.
#[derive(Clone)]
pub(crate) struct Env {
    pub events: broadcast::Sender<Event>,
    pub sink: Arc<dyn LogSink>,
    pub runtime: RuntimeSet,
    /// The port the `*.localhost` proxy serves on (0: none), for the URLs
    /// in the snapshots.
    pub url_port: UrlPort,
    /// The running source watcher of this project, if any, for builds to
    /// ask whether their sources changed (set by whoever starts it).
    pub sources: crate::watch::WatchSlot,
    /// Where notify sockets, claims and build scratch live.
    pub paths: Arc<locald_core::paths::Paths>,
    /// The user's image store (buildpacks builds), or why there is none.
    pub images: crate::runtime::ImageStore,
}

/// The proxy's port, shared by the engine and whoever serves the proxy
/// (which sets it once it listens).
#[derive(Clone, Default, Debug)]
pub struct UrlPort(Arc<std::sync::atomic::AtomicU16>);

impl UrlPort {
    /// The port; 0 when no proxy serves.
    pub fn get(&self) -> u16 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Says the proxy serves on `port`.
    pub fn set(&self, port: u16) {
        self.0.store(port, std::sync::atomic::Ordering::Relaxed);
    }

    /// The URL of `service` when a proxy serves and it has a port; empty
    /// otherwise.
    pub fn url_of(&self, project: &str, service: &str, has_port: bool) -> String {
        match self.get() {
            0 => String::new(),
            _ if !has_port => String::new(),
            port => locald_core::urls::url(project, service, port),
        }
    }
}

struct Slot {
    cfg: ServiceConfig,
    snapshot: Arc<watch::Sender<ServiceSnapshot>>,
    cmds: mpsc::Sender<Command>,
    task: JoinHandle<()>,
}

/// One project that is up.
pub(crate) struct Project {
    pub config: Config,
    env: Env,
    slots: IndexMap<String, Slot>,
}

impl Project {
    /// Starts every service of `config`. `env` is shared by the engine's
    /// projects but for the watcher slot, which is this project's own.
    pub fn start(config: Config, mut env: Env) -> Project {
        env.sources = crate::watch::WatchSlot::default();
        let mut p = Project {
            config,
            env,
            slots: IndexMap::new(),
        };
        let names: Vec<String> = p.config.services.keys().cloned().collect();
        for name in &names {
            let _ = p.env.events.send(Event::ServiceAdded {
                project: p.config.name.clone(),
                service: name.clone(),
            });
        }
        // Dependencies first, so their snapshot channels exist when dependents are wired.
        for name in p.config.start_order() {
            p.spawn(&name, None, true);
        }
        p.slots
            .sort_by_cached_key(|k, _| names.iter().position(|n| n == k).unwrap_or(usize::MAX));
        p
    }

    fn spawn(
        &mut self,
        name: &str,
        snapshot: Option<Arc<watch::Sender<ServiceSnapshot>>>,
        start: bool,
    ) {
        let Some(cfg) = self.config.services.get(name).cloned() else {
            return;
        };
        self.env.sink.configure_service(
            &self.config.name,
            name,
            &crate::output::ServiceLogOptions {
                stderr_priority: cfg.stderr_priority,
            },
        );
        let snapshot =
            snapshot.unwrap_or_else(|| Arc::new(watch::Sender::new(ServiceSnapshot::new(name))));
        let ports = cfg.ports_by_var();
        let url_default = cfg.url_default;
        let url = self
            .env
            .url_port
            .url_of(&self.config.name, name, !ports.is_empty());
        let has_health = cfg.health.is_some();
        snapshot.send_if_modified(|s| {
            let changed = s.ports != ports
                || s.url_default != url_default
                || s.url != url
                || s.has_health != has_health;
            s.ports = ports;
            s.url_default = url_default;
            s.url = url;
            s.has_health = has_health;
            changed
        });
        let deps = cfg
            .depends_on
            .iter()
            .filter_map(|d| {
                let slot = self.slots.get(d)?;
                Some(Dep {
                    name: d.clone(),
                    snapshot: slot.snapshot.subscribe(),
                    has_health: slot.cfg.health.is_some(),
                })
            })
            .collect();
        let (tx, rx) = mpsc::channel(16);
        let project: Arc<str> = self.config.name.as_str().into();
        let key: Arc<str> =
            crate::runtime::claim::project_key(&self.config.name, &self.config.root).into();
        let service: Arc<str> = name.into();
        let builder = Builder {
            project: project.clone(),
            key: key.clone(),
            service: service.clone(),
            cfg: Arc::new(cfg.clone()),
            root: self.config.root.clone(),
            sink: self.env.sink.clone(),
            runtime: self.env.runtime.clone(),
            sources: self.env.sources.clone(),
            paths: self.env.paths.clone(),
            images: self.env.images.clone(),
            events: self.env.events.clone(),
            snapshot: snapshot.clone(),
            lock: Arc::new(Mutex::new(())),
        };
        let task = ServiceTask {
            project,
            key,
            name: service,
            cfg: cfg.clone(),
            snapshot: snapshot.clone(),
            events: self.env.events.clone(),
            sink: self.env.sink.clone(),
            runtime: self.env.runtime.clone(),
            deps,
            cmds: rx,
            builder,
        };
        let handle = tokio::spawn(task.run(start));
        self.slots.insert(
            name.to_owned(),
            Slot {
                cfg,
                snapshot,
                cmds: tx,
                task: handle,
            },
        );
    }

    /// Live handles on the services' snapshots, readable without the project.
    pub fn view(&self) -> ProjectView {
        ProjectView {
            name: self.config.name.clone(),
            path: self.config.root.clone(),
            services: self.slots.values().map(|s| s.snapshot.clone()).collect(),
        }
    }

    /// The service's config, if it exists.
    pub fn service_config(&self, name: &str) -> Option<&ServiceConfig> {
        self.slots.get(name).map(|s| &s.cfg)
    }

    /// Where this project's builds look for its running source watcher.
    pub fn sources(&self) -> crate::watch::WatchSlot {
        self.env.sources.clone()
    }

    /// A handle to send requests to a service without holding the project.
    pub fn sender(&self, name: &str) -> Option<ServiceSender> {
        self.slots.get(name).map(|s| ServiceSender(s.cmds.clone()))
    }

    /// Stops every service, dependents before their dependencies, and ends the tasks.
    pub async fn shutdown(&mut self) {
        let names: Vec<String> = self.slots.keys().cloned().collect();
        self.stop_in_order(&names, true).await;
        for (_, slot) in self.slots.drain(..) {
            let _ = slot.task.await;
        }
    }

    /// Stops (or shuts down) `names` in reverse dependency order, in layers.
    async fn stop_in_order(&self, names: &[String], shutdown: bool) {
        let mut left: Vec<String> = names.to_vec();
        while !left.is_empty() {
            // A service may stop once no service still left depends on it.
            let layer: Vec<String> = left
                .iter()
                .filter(|n| {
                    !left.iter().any(|o| {
                        self.slots
                            .get(o)
                            .is_some_and(|s| s.cfg.depends_on.contains(n))
                    })
                })
                .cloned()
                .collect();
            let layer = if layer.is_empty() {
                left.clone()
            } else {
                layer
            };
            let mut waits = Vec::new();
            for n in &layer {
                if let Some(slot) = self.slots.get(n) {
                    let (tx, rx) = oneshot::channel();
                    let cmd = if shutdown {
                        Command::Shutdown(tx)
                    } else {
                        Command::Stop(tx)
                    };
                    if slot.cmds.send(cmd).await.is_ok() {
                        waits.push(rx);
                    }
                }
            }
            for w in waits {
                let _ = w.await;
            }
            left.retain(|n| !layer.contains(n));
        }
    }

    /// Applies a new config: stops removed services, restarts changed ones,
    /// starts new ones, and leaves the rest alone. A replaced service keeps its
    /// snapshot channel, so its dependents keep running and keep watching it.
    pub async fn reload(&mut self, new: Config) -> ReloadSummary {
        let mut summary = ReloadSummary::default();
        for (name, slot) in &self.slots {
            match new.services.get(name) {
                None => summary.removed.push(name.clone()),
                Some(c) if *c != slot.cfg => summary.changed.push(name.clone()),
                Some(_) => summary.unchanged.push(name.clone()),
            }
        }
        summary.added = new
            .services
            .keys()
            .filter(|n| !self.slots.contains_key(*n))
            .cloned()
            .collect();

        let mut to_stop: Vec<String> = summary
            .removed
            .iter()
            .chain(&summary.changed)
            .cloned()
            .collect();
        self.stop_in_order(&to_stop, true).await;
        let project = self.config.name.clone();
        let mut kept_snapshots: HashMap<String, Arc<watch::Sender<ServiceSnapshot>>> =
            HashMap::new();
        for name in to_stop.drain(..) {
            if let Some(slot) = self.slots.shift_remove(&name) {
                let _ = slot.task.await;
                if new.services.contains_key(&name) {
                    kept_snapshots.insert(name, slot.snapshot);
                } else {
                    let _ = self.env.events.send(Event::ServiceRemoved {
                        project: project.clone(),
                        service: name,
                    });
                }
            }
        }
        self.config = new;
        for name in &summary.added {
            let _ = self.env.events.send(Event::ServiceAdded {
                project: project.clone(),
                service: name.clone(),
            });
        }
        for name in self.config.start_order() {
            if !self.slots.contains_key(&name) {
                let snap = kept_snapshots.remove(&name);
                self.spawn(&name, snap, true);
            }
        }
        let order: Vec<String> = self.config.services.keys().cloned().collect();
        self.slots
            .sort_by_cached_key(|k, _| order.iter().position(|n| n == k).unwrap_or(usize::MAX));
        summary
    }
}

/// Builds services of `config` outside any running project (`locald build`):
/// the same builder, decisions and `.locald/` artifacts as `up` uses.
/// Services without a build are skipped. Returns each service's record.
pub(crate) async fn build_services(
    config: &Config,
    services: &[String],
    force: bool,
    env: Env,
) -> Vec<(String, BuildRecord)> {
    // A key of its own, claimed while building: a daemon running the same
    // project never mistakes these build processes for its own leftovers,
    // and its sweep leaves them alone.
    let key = format!(
        "{}~build{}",
        crate::runtime::claim::project_key(&config.name, &config.root),
        std::process::id()
    );
    let claim = crate::runtime::claim::ProjectClaim::acquire(
        &env.paths.runtime,
        &key,
        &config.root,
        "locald build",
    );
    let _claim = match claim {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(
                "building without a claim on the project: {}",
                crate::error_chain(&e)
            );
            None
        }
    };
    let mut runs = Vec::new();
    for name in services {
        let Some(cfg) = config.services.get(name) else {
            continue;
        };
        if cfg.build.is_none() {
            continue;
        }
        let builder = Builder {
            project: config.name.as_str().into(),
            key: key.as_str().into(),
            service: name.as_str().into(),
            cfg: Arc::new(cfg.clone()),
            root: config.root.clone(),
            sink: env.sink.clone(),
            runtime: env.runtime.clone(),
            sources: env.sources.clone(),
            paths: env.paths.clone(),
            images: env.images.clone(),
            events: env.events.clone(),
            snapshot: Arc::new(watch::Sender::new(ServiceSnapshot::new(name))),
            lock: Arc::new(Mutex::new(())),
        };
        let name = name.clone();
        runs.push(tokio::spawn(
            async move { (name, builder.build(force).await) },
        ));
    }
    let mut out = Vec::new();
    for r in runs {
        if let Ok(pair) = r.await {
            out.push(pair);
        }
    }
    out
}

/// A progress function that sends every report of pulling `reference` for
/// `service` of `project` as an [`Event::PullProgress`].
pub(crate) fn pull_reporter(
    events: broadcast::Sender<Event>,
    project: &str,
    service: &str,
    reference: &str,
) -> crate::image::ProgressFn {
    let (project, service, reference) =
        (project.to_owned(), service.to_owned(), reference.to_owned());
    Arc::new(move |p: &crate::image::Progress| {
        let _ = events.send(Event::PullProgress {
            project: project.clone(),
            service: service.clone(),
            reference: reference.clone(),
            layer: p.layer.to_string(),
            index: u32::try_from(p.index).unwrap_or(u32::MAX),
            layers: u32::try_from(p.layers).unwrap_or(u32::MAX),
            done: p.done,
            total: p.total,
            cached: p.cached,
        });
    })
}

/// Read-only access to a project's current state. Each service's snapshot
/// is updated before its change event is sent, so a reader reacting to an
/// event always sees at least that state.
#[derive(Clone)]
pub(crate) struct ProjectView {
    name: String,
    path: std::path::PathBuf,
    services: Vec<Arc<watch::Sender<ServiceSnapshot>>>,
}

impl ProjectView {
    /// The project now.
    pub fn snapshot(&self) -> ProjectSnapshot {
        ProjectSnapshot {
            name: self.name.clone(),
            path: self.path.clone(),
            services: self.services.iter().map(|s| s.borrow().clone()).collect(),
        }
    }
}

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Services new in the file, now started.
    pub added: Vec<String>,
    /// Services gone from the file, now stopped.
    pub removed: Vec<String>,
    /// Services whose config changed, now restarted.
    pub changed: Vec<String>,
    /// Services left alone.
    pub unchanged: Vec<String>,
}

/// The services of a project by name, as the file watcher restarts them.
pub(crate) struct Senders(pub HashMap<String, ServiceSender>);

impl crate::watch::Restarter for Senders {
    fn restart<'a>(
        &'a self,
        service: &'a str,
        why: String,
        build: bool,
    ) -> crate::output::BoxFuture<'a, bool> {
        Box::pin(async move {
            match self.0.get(service) {
                Some(s) => {
                    s.restart_because(why, build).await;
                    true
                }
                None => false,
            }
        })
    }
}

/// Sends requests to one service task.
#[derive(Clone)]
pub(crate) struct ServiceSender(mpsc::Sender<Command>);

impl ServiceSender {
    /// Asks the service to start; returns at once.
    pub async fn start(&self) {
        let _ = self.0.send(Command::Start).await;
    }

    /// Stops the service; returns once it is stopped.
    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.0.send(Command::Stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Restarts the service (with its build); returns once the old process is gone.
    pub async fn restart(&self) {
        self.restart_because("restart requested".into(), true).await;
    }

    /// Restarts the service saying why (shown as the state's reason and in
    /// the journal), running its build first when `build`.
    pub async fn restart_because(&self, why: String, build: bool) {
        let (tx, rx) = oneshot::channel();
        let cmd = Command::Restart {
            reply: tx,
            why,
            build,
        };
        if self.0.send(cmd).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Builds now and returns the record.
    pub async fn build(&self, force: bool) -> Option<BuildRecord> {
        let (tx, rx) = oneshot::channel();
        self.0
            .send(Command::Build { force, reply: tx })
            .await
            .ok()?;
        rx.await.ok()
    }
}
