//! The engine: every project that is up, and the one handle the edges use.
//!
//! `locald up` creates an engine with one project and a terminal sink; the
//! daemon creates one engine for the whole session and puts the D-Bus layer
//! in front of it. Both go through the same calls, so what works in the
//! foreground works in the daemon.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::broadcast;

use indexmap::IndexMap;

use crate::config::{load_project, LoadError};
use crate::event::{BuildRecord, BuildResult, Event, ProjectSnapshot};
use crate::image::manage::{ImageInfo, ManageError, Pruned, PullSummary, Users};
use crate::image::prepare::StoreImages;
use crate::image::ImageRef;
use crate::lock;
use crate::output::LogSink;
use crate::ports::{InUse, PortBook, PortError};
use crate::runtime::claim::{project_key, ClaimError, ProjectClaim};
use crate::runtime::{ImageStore, Runtime, RuntimeSet};
use crate::state::{StateError, StateFile};
use crate::supervisor::{Env, Project, ProjectView, ServiceSender};
use locald_core::paths::Paths;

/// How to create an [`Engine`].
pub struct EngineOptions {
    /// Where output lines go.
    pub sink: Arc<dyn LogSink>,
    /// Where the engine keeps state that outlives it (the set of projects that
    /// are up). `None` keeps nothing (foreground `locald up`).
    pub state_dir: Option<PathBuf>,
    /// How this instance describes itself to another that finds a project
    /// taken ("the locald daemon", "locald up").
    pub instance: String,
    /// Every directory the engine uses, resolved by the caller (normally
    /// [`Paths::from_env`] in `main`).
    pub paths: Paths,
}

pub use crate::supervisor::ReloadSummary;

/// Why an engine call failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The project's configuration could not be loaded.
    #[error(transparent)]
    Config(#[from] LoadError),
    /// No project of that name is up.
    #[error("no project named `{0}` is up")]
    NoSuchProject(String),
    /// Ports could not be assigned.
    #[error(transparent)]
    Ports(#[from] PortError),
    /// The project has no such service.
    #[error("project `{project}` has no service `{service}`")]
    NoSuchService {
        /// Project name.
        project: String,
        /// Service name.
        service: String,
    },
    /// The service has no build.
    #[error("service `{service}` of project `{project}` has no build")]
    NoBuild {
        /// Project name.
        project: String,
        /// Service name.
        service: String,
    },
    /// A build failed.
    #[error("build of `{service}` failed: {reason}")]
    BuildFailed {
        /// Service name.
        service: String,
        /// Why.
        reason: String,
        /// The record of the failed build.
        record: Box<BuildRecord>,
    },
    /// A project of that name is already up from another directory.
    #[error("a project named `{name}` is already up from {}", path.display())]
    NameTaken {
        /// Project name.
        name: String,
        /// Where the other one lives.
        path: PathBuf,
    },
    /// The file now names the project differently; `down` it and `up` again.
    #[error("the project `{old}` is now named `{new}` in its locald.toml; run down and up again")]
    Renamed {
        /// Name it is up under.
        old: String,
        /// Name in the file.
        new: String,
    },
    /// Another locald instance (the daemon, a foreground `locald up`) runs
    /// the project in this directory.
    #[error(
        "project `{name}`: {source}; stop it there first (`locald-ctl -p {name} down` for the daemon)"
    )]
    Busy {
        /// Project name.
        name: String,
        /// Who holds it.
        #[source]
        source: ClaimError,
    },
    /// The engine is shutting down.
    #[error("locald is shutting down")]
    ShuttingDown,
    /// The service runs no image and has no buildpacks build.
    #[error("service `{service}` of project `{project}` has no image")]
    NoImage {
        /// Project name.
        project: String,
        /// Service name.
        service: String,
    },
    /// Pulling a service's image failed.
    #[error("service `{service}`")]
    Pull {
        /// Service name.
        service: String,
        /// Why.
        #[source]
        source: Box<ManageError>,
    },
    /// The image store could not be used (listing, pruning, or there is
    /// none).
    #[error("image store")]
    ImageStore(#[source] Box<ManageError>),
    /// This locald has no image store; says why.
    #[error("{0}")]
    NoImageStore(String),
    /// Which projects are up in other locald instances cannot be told, so
    /// what images are used cannot be either.
    #[error("cannot tell which projects are up")]
    ImageUsers(#[source] ClaimError),
}

/// A cheap, cloneable handle to the engine.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    env: Env,
    state: Option<StateFile>,
    /// Remembered `port = "auto"` numbers, shared with every locald of the user.
    ports: PortBook,
    instance: String,
    /// Projects by name. The async mutex serialises operations on one project
    /// (up, reload, down) without blocking the others.
    projects: std::sync::Mutex<IndexMap<String, Arc<ProjectEntry>>>,
    shutting_down: std::sync::atomic::AtomicBool,
    /// What the user must know that is not a service's state (the URL
    /// proxy's port held by another user), one line each.
    warnings: std::sync::Mutex<Vec<String>>,
}

struct ProjectEntry {
    path: PathBuf,
    /// `None` until the first `up` has claimed and started the project, and
    /// again once `down` took it away: whoever then finds the entry starts over.
    project: tokio::sync::Mutex<Option<Project>>,
    /// This instance's claim on the project directory, held while it is up.
    claim: std::sync::Mutex<Option<ProjectClaim>>,
    /// Live view of the services, read without taking the async lock.
    view: std::sync::Mutex<Option<ProjectView>>,
    /// The file watcher, while any service is watched.
    watch: std::sync::Mutex<Option<crate::watch::ProjectWatch>>,
    /// Every service is watched for this session (`up --watch`), not only
    /// those with `watch` in the file.
    watch_all: std::sync::atomic::AtomicBool,
}

impl Engine {
    /// Creates an engine with no projects, running host processes and (where
    /// the shim and the image store are there) containers.
    pub fn new(opts: EngineOptions) -> Engine {
        let images = ImageStore::open(&opts.paths);
        let runtimes = RuntimeSet::detect(&opts.paths, &images);
        Self::with_runtimes(opts, runtimes, images)
    }

    /// Creates an engine with a given process runtime.
    pub fn with_runtime(opts: EngineOptions, runtime: Arc<dyn Runtime>) -> Engine {
        let images = ImageStore::none("this engine was given no image store");
        Self::with_runtimes(opts, RuntimeSet::host(runtime), images)
    }

    /// Creates an engine with a runtime per kind and the image store they
    /// were given.
    pub fn with_runtimes(opts: EngineOptions, runtime: RuntimeSet, images: ImageStore) -> Engine {
        let (events, _) = broadcast::channel(4096);
        let env = Env {
            events,
            sink: opts.sink,
            runtime,
            url_port: crate::supervisor::UrlPort::default(),
            sources: crate::watch::WatchSlot::default(),
            paths: Arc::new(opts.paths.clone()),
            images,
        };
        Engine {
            inner: Arc::new(Inner {
                env,
                // The foreground keeps no project list but does remember
                // ports, in the same place the daemon would by default.
                ports: PortBook::new(opts.state_dir.clone().or(opts.paths.state)),
                state: opts.state_dir.map(StateFile::new),
                instance: opts.instance,
                projects: std::sync::Mutex::new(IndexMap::new()),
                shutting_down: std::sync::atomic::AtomicBool::new(false),
                warnings: std::sync::Mutex::new(Vec::new()),
            }),
        }
    }

    fn entry(&self, project: &str) -> Result<Arc<ProjectEntry>, EngineError> {
        lock(&self.inner.projects)
            .get(project)
            .cloned()
            .ok_or_else(|| EngineError::NoSuchProject(project.into()))
    }

    fn check_running(&self) -> Result<(), EngineError> {
        if self
            .inner
            .shutting_down
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            Err(EngineError::ShuttingDown)
        } else {
            Ok(())
        }
    }

    /// Brings up the project containing `dir` (or reloads it if it is up
    /// already) and returns its name. Returns once the services are launched
    /// and the set of projects is saved, not when they are healthy.
    ///
    /// Concurrent calls for one directory share one entry: the first claims
    /// and starts the project while holding the entry's lock; the others wait
    /// for it and then reload (a no-op when nothing changed), so a project is
    /// never started twice.
    pub async fn up(&self, dir: &Path) -> Result<String, EngineError> {
        self.check_running()?;
        let mut config = load_off_runtime(dir.to_owned()).await?;
        let name = config.name.clone();
        loop {
            let entry = {
                let mut projects = lock(&self.inner.projects);
                match projects.get(&name) {
                    Some(e) if e.path != config.root => {
                        return Err(EngineError::NameTaken {
                            name,
                            path: e.path.clone(),
                        })
                    }
                    Some(e) => e.clone(),
                    None => {
                        let e = Arc::new(ProjectEntry {
                            path: config.root.clone(),
                            project: tokio::sync::Mutex::new(None),
                            claim: std::sync::Mutex::new(None),
                            view: std::sync::Mutex::new(None),
                            watch: std::sync::Mutex::new(None),
                            watch_all: std::sync::atomic::AtomicBool::new(false),
                        });
                        projects.insert(name.clone(), e.clone());
                        e
                    }
                }
            };
            let mut guard = entry.project.lock().await;
            if guard.is_some() {
                drop(guard);
                self.reload(&name).await?;
                return Ok(name);
            }
            // A `down` (or a failed `up`) removed the entry while we waited:
            // start over with a fresh one.
            let current = lock(&self.inner.projects).get(&name).cloned();
            if !current.is_some_and(|c| Arc::ptr_eq(&c, &entry)) {
                continue;
            }
            match self.claim(&name, &config.root).await {
                Ok(claim) => *lock(&entry.claim) = Some(claim),
                Err(source) => {
                    lock(&self.inner.projects).shift_remove(&name);
                    return Err(EngineError::Busy { name, source });
                }
            }
            if let Err(e) = self.assign_ports(&mut config, InUse::new(), true).await {
                lock(&entry.claim).take();
                lock(&self.inner.projects).shift_remove(&name);
                return Err(e);
            }
            let _ = self.inner.env.events.send(Event::ProjectAdded {
                project: name.clone(),
            });
            let project = Project::start(config, self.inner.env.clone());
            *lock(&entry.view) = Some(project.view());
            rewatch(&entry, &project);
            *guard = Some(project);
            drop(guard);
            self.save_state().await;
            return Ok(name);
        }
    }

    /// Numbers the project's auto ports (remembered ones when still free)
    /// and applies them to its config. On a first start (`clean`), what an
    /// earlier run of the project left running is stopped first, so that
    /// its old processes never make the project's own ports look taken.
    async fn assign_ports(
        &self,
        config: &mut crate::config::Config,
        mut in_use: InUse,
        clean: bool,
    ) -> Result<(), EngineError> {
        if !config
            .services
            .values()
            .any(|s| s.ports.iter().any(|p| p.auto))
        {
            config.apply_ports();
            return Ok(());
        }
        let key = project_key(&config.name, &config.root);
        let book = self.inner.ports.clone();
        if clean {
            let mut remembered: Option<InUse> = None;
            for service in config.services.keys() {
                // A systemd unit outlives the daemon and is adopted if its
                // service is unchanged: it keeps its ports (which it holds).
                if self.inner.env.runtime.outlives_daemon(&key, service).await {
                    let book = book.clone();
                    let k = key.clone();
                    let r = match &remembered {
                        Some(r) => r.clone(),
                        None => tokio::task::spawn_blocking(move || book.remembered(&k))
                            .await
                            .unwrap_or_default(),
                    };
                    in_use.extend(
                        r.iter()
                            .filter(|((s, _), _)| s == service)
                            .map(|(k, n)| (k.clone(), *n)),
                    );
                    remembered = Some(r);
                } else {
                    self.inner.env.runtime.clean_stale(&key, service).await;
                }
            }
        }
        let mut owned = std::mem::replace(config, placeholder(config));
        let (owned, result) = tokio::task::spawn_blocking(move || {
            let r = book.assign(&key, &mut owned, &in_use);
            (owned, r)
        })
        .await
        .map_err(|_| EngineError::ShuttingDown)?;
        *config = owned;
        Ok(result?)
    }

    /// Watches every service of the project for this session (`up
    /// --watch`), or (`false`) only those with `watch` in the file.
    pub async fn set_watch_all(&self, project: &str, on: bool) -> Result<(), EngineError> {
        self.check_running()?;
        let entry = self.entry(project)?;
        let guard = entry.project.lock().await;
        let p = guard
            .as_ref()
            .ok_or_else(|| EngineError::NoSuchProject(project.into()))?;
        entry
            .watch_all
            .store(on, std::sync::atomic::Ordering::SeqCst);
        rewatch(&entry, p);
        Ok(())
    }

    /// Claims the project directory for this instance. Another locald that
    /// is only cleaning up after a dead one holds it for a moment: wait for
    /// it (up to 10 s) rather than refuse.
    async fn claim(&self, name: &str, root: &Path) -> Result<ProjectClaim, ClaimError> {
        let key = project_key(name, root);
        let mut tries = 0;
        loop {
            match ProjectClaim::acquire(
                &self.inner.env.paths.runtime,
                &key,
                root,
                &self.inner.instance,
            ) {
                Err(ClaimError::CleaningUp { .. }) if tries < 200 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    /// Stops every service of the project (reverse dependency order) and forgets it.
    pub async fn down(&self, project: &str) -> Result<(), EngineError> {
        let entry = self.entry(project)?;
        let mut guard = entry.project.lock().await;
        if let Some(mut p) = guard.take() {
            p.shutdown().await;
        }
        lock(&entry.watch).take();
        lock(&entry.claim).take();
        {
            let mut projects = lock(&self.inner.projects);
            if projects
                .get(project)
                .is_some_and(|e| Arc::ptr_eq(e, &entry))
            {
                projects.shift_remove(project);
            }
        }
        drop(guard);
        let _ = self.inner.env.events.send(Event::ProjectRemoved {
            project: project.into(),
        });
        self.save_state().await;
        self.forget_images(&entry.path).await;
        release_memory();
        Ok(())
    }

    /// Forgets `root` as a user of every stored image (after `down`), so
    /// that `images` no longer names it and `prune` may remove what only it
    /// used.
    async fn forget_images(&self, root: &Path) {
        let Ok(images) = self.inner.env.images.get() else {
            return;
        };
        let store = images.images().store().clone();
        let root = root.to_owned();
        let forgot = tokio::task::spawn_blocking(move || store.forget_project(&root)).await;
        if let Ok(Err(e)) = forgot {
            tracing::warn!("cannot update the image index: {}", crate::error_chain(&e));
        }
    }

    /// Re-reads the project's file; touches only services whose config changed.
    pub async fn reload(&self, project: &str) -> Result<ReloadSummary, EngineError> {
        self.check_running()?;
        let entry = self.entry(project)?;
        let config = load_off_runtime(entry.path.clone()).await?;
        if config.name != project {
            return Err(EngineError::Renamed {
                old: project.into(),
                new: config.name,
            });
        }
        let mut config = config;
        let mut guard = entry.project.lock().await;
        let Some(p) = guard.as_mut() else {
            return Err(EngineError::NoSuchProject(project.into()));
        };
        self.assign_ports(&mut config, PortBook::in_use(&p.config), false)
            .await?;
        let summary = p.reload(config).await;
        *lock(&entry.view) = Some(p.view());
        rewatch(&entry, p);
        drop(guard);
        release_memory();
        Ok(summary)
    }

    async fn sender(&self, project: &str, service: &str) -> Result<ServiceSender, EngineError> {
        let entry = self.entry(project)?;
        let guard = entry.project.lock().await;
        guard
            .as_ref()
            .and_then(|p| p.sender(service))
            .ok_or_else(|| EngineError::NoSuchService {
                project: project.into(),
                service: service.into(),
            })
    }

    /// Starts a stopped or failed service.
    pub async fn start_service(&self, project: &str, service: &str) -> Result<(), EngineError> {
        self.check_running()?;
        self.sender(project, service).await?.start().await;
        Ok(())
    }

    /// Stops a service; it stays stopped until started.
    pub async fn stop_service(&self, project: &str, service: &str) -> Result<(), EngineError> {
        self.sender(project, service).await?.stop().await;
        Ok(())
    }

    /// Restarts a service, running its build again (an explicit restart, unlike a crash restart).
    pub async fn restart_service(&self, project: &str, service: &str) -> Result<(), EngineError> {
        self.check_running()?;
        self.sender(project, service).await?.restart().await;
        Ok(())
    }

    /// Builds a service now (skipped when up to date unless `force`) and
    /// returns the record once the build ended.
    pub async fn build(
        &self,
        project: &str,
        service: &str,
        force: bool,
    ) -> Result<BuildRecord, EngineError> {
        self.check_running()?;
        let entry = self.entry(project)?;
        let sender = {
            let guard = entry.project.lock().await;
            let p = guard
                .as_ref()
                .ok_or_else(|| EngineError::NoSuchProject(project.into()))?;
            let cfg = p
                .service_config(service)
                .ok_or_else(|| EngineError::NoSuchService {
                    project: project.into(),
                    service: service.into(),
                })?;
            if cfg.build.is_none() {
                return Err(EngineError::NoBuild {
                    project: project.into(),
                    service: service.into(),
                });
            }
            p.sender(service)
        };
        let record = match sender {
            Some(s) => s.build(force).await,
            None => None,
        };
        let record = record.ok_or(EngineError::ShuttingDown)?;
        if record.result == BuildResult::Failed {
            return Err(EngineError::BuildFailed {
                service: service.into(),
                reason: record.reason.clone(),
                record: Box::new(record),
            });
        }
        Ok(record)
    }

    /// Pulls (or imports again) the image of a service now, reporting
    /// progress as [`Event::PullProgress`]; see
    /// [`manage::pull`](crate::image::manage::pull) for what `force` does.
    /// A running service keeps the image it started with until it restarts.
    pub async fn pull(
        &self,
        project: &str,
        service: &str,
        force: bool,
    ) -> Result<PullSummary, EngineError> {
        self.check_running()?;
        let entry = self.entry(project)?;
        let (reference, root) = {
            let guard = entry.project.lock().await;
            let p = guard
                .as_ref()
                .ok_or_else(|| EngineError::NoSuchProject(project.into()))?;
            let cfg = p
                .service_config(service)
                .ok_or_else(|| EngineError::NoSuchService {
                    project: project.into(),
                    service: service.into(),
                })?;
            // A buildpacks service's images are its builder and run image.
            let reference = match (&cfg.image, &cfg.build) {
                (Some(image), _) => (image.reference.clone(), None),
                (None, Some(crate::config::BuildSpec::Cnb(c))) => {
                    (c.builder.clone(), Some(c.run_image.clone()))
                }
                _ => {
                    return Err(EngineError::NoImage {
                        project: project.into(),
                        service: service.into(),
                    })
                }
            };
            (reference, p.config.root.clone())
        };
        let images = self.store_images()?;
        let (reference, cnb_run) = reference;
        if let Some(run_image) = cnb_run {
            return self
                .pull_cnb(project, service, &reference, run_image, &root, force)
                .await;
        }
        let progress = crate::supervisor::pull_reporter(
            self.inner.env.events.clone(),
            project,
            service,
            &reference,
        );
        images
            .pull(&reference, &root, force, progress)
            .await
            .map_err(|source| EngineError::Pull {
                service: service.into(),
                source: Box::new(source),
            })
    }

    /// Pulls a buildpacks service's builder, then its run image (the one
    /// configured, else the one the builder names); the summary is the
    /// builder's. The next build sees new digests and rebuilds.
    async fn pull_cnb(
        &self,
        project: &str,
        service: &str,
        builder: &str,
        run_image: Option<String>,
        root: &Path,
        force: bool,
    ) -> Result<PullSummary, EngineError> {
        let images = self.store_images()?;
        let fail = |source| EngineError::Pull {
            service: service.into(),
            source: Box::new(source),
        };
        let reporter = |reference: &str| {
            crate::supervisor::pull_reporter(
                self.inner.env.events.clone(),
                project,
                service,
                reference,
            )
        };
        let summary = images
            .pull(builder, root, force, reporter(builder))
            .await
            .map_err(fail)?;
        let run_image = match run_image {
            Some(r) => Some(r),
            None => images
                .images()
                .store()
                .image(&summary.manifest)
                .ok()
                .and_then(|image| {
                    crate::build::cnb::BuilderInfo::from_config(builder, &image.config).ok()
                })
                .and_then(|info| info.run_image),
        };
        if let Some(run) = run_image {
            images
                .pull(&run, root, force, reporter(&run))
                .await
                .map_err(fail)?;
        }
        Ok(summary)
    }

    /// Every stored image, its size, and the projects that are up and use
    /// it (see [`manage`](crate::image::manage) for what "use" means).
    pub async fn images(&self) -> Result<Vec<ImageInfo>, EngineError> {
        let images = self.store_images()?;
        let users = self.image_users().await?;
        images
            .list(users)
            .await
            .map_err(|e| EngineError::ImageStore(Box::new(e)))
    }

    /// Removes the stored images no project that is up uses, their blobs
    /// and their unpacked trees.
    pub async fn prune(&self) -> Result<Pruned, EngineError> {
        self.check_running()?;
        let images = self.store_images()?;
        let users = self.image_users().await?;
        images
            .prune(users)
            .await
            .map_err(|e| EngineError::ImageStore(Box::new(e)))
    }

    fn store_images(&self) -> Result<StoreImages, EngineError> {
        self.inner
            .env
            .images
            .get()
            .cloned()
            .map_err(|why| EngineError::NoImageStore(why.to_owned()))
    }

    /// Who uses images now: the directories of projects up in any locald
    /// of the user, and what the projects up here declare.
    async fn image_users(&self) -> Result<Users, EngineError> {
        let mut users = Users::default();
        let entries: Vec<_> = lock(&self.inner.projects).values().cloned().collect();
        for e in entries {
            // A project in the middle of `up`, `reload` or `down` may hold
            // its lock for a stop timeout: count it as up (what it recorded
            // is kept) rather than wait.
            let Ok(guard) = e.project.try_lock() else {
                users.up.insert(e.path.clone());
                continue;
            };
            let Some(p) = guard.as_ref() else { continue };
            users.up.insert(p.config.root.clone());
            for s in p.config.services.values() {
                let Some(image) = &s.image else { continue };
                if let Ok(r) = ImageRef::parse(&image.reference) {
                    users
                        .declared
                        .entry(r.key(&p.config.root))
                        .or_default()
                        .insert(p.config.root.clone());
                }
            }
        }
        let runtime = self.inner.env.paths.runtime.clone();
        let others =
            tokio::task::spawn_blocking(move || crate::runtime::claim::live_roots(&runtime))
                .await
                .map_err(|_| EngineError::ShuttingDown)?
                .map_err(EngineError::ImageUsers)?;
        users.up.extend(others);
        Ok(users)
    }

    /// Every project that is up.
    pub fn projects(&self) -> Vec<ProjectSnapshot> {
        let entries: Vec<_> = lock(&self.inner.projects).values().cloned().collect();
        entries
            .iter()
            .filter_map(|e| lock(&e.view).as_ref().map(ProjectView::snapshot))
            .collect()
    }

    /// One project.
    pub fn project(&self, name: &str) -> Option<ProjectSnapshot> {
        let entry = lock(&self.inner.projects).get(name).cloned()?;
        let snap = lock(&entry.view).as_ref().map(ProjectView::snapshot);
        snap
    }

    /// Events from now on. A receiver that lags gets `RecvError::Lagged` and
    /// should re-read snapshots.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.env.events.subscribe()
    }

    /// Stops every project, each in reverse dependency order. The set of
    /// projects that are up is kept, so a restarted daemon brings them back.
    pub async fn shutdown(&self) {
        self.inner
            .shutting_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let entries: Vec<_> = lock(&self.inner.projects).values().cloned().collect();
        let mut stops = Vec::new();
        for e in entries {
            // A change while stopping must not restart anything.
            lock(&e.watch).take();
            stops.push(tokio::spawn(async move {
                let mut guard = e.project.lock().await;
                if let Some(mut p) = guard.take() {
                    p.shutdown().await;
                }
            }));
        }
        for s in stops {
            let _ = s.await;
        }
    }

    /// SIGKILLs every process of every project at once, without waiting (the
    /// second Ctrl-C in the foreground).
    pub fn kill_all(&self) {
        self.inner.env.runtime.kill_all();
    }

    /// Brings back the projects that were up when the state was last saved,
    /// then stops whatever earlier locald runs left that no live instance
    /// claims (a project missing from a lost or corrupt state file still
    /// has its pid records and cgroups). Processes an earlier daemon left
    /// behind are stopped before each service starts again, so no service
    /// ever runs twice. Returns the projects that could not be brought back,
    /// with why; a state file that could not be read is reported through
    /// [`Engine::state_problem`] and kept aside.
    pub async fn restore(&self) -> Vec<(PathBuf, EngineError)> {
        let mut failed = Vec::new();
        let saved = match &self.inner.state {
            Some(state) => state.load_or_set_aside(),
            None => Vec::new(),
        };
        for path in saved {
            if let Err(e) = self.up(&path).await {
                failed.push((path, e));
            }
        }
        // What interrupted unpacks left in the image store (possibly a
        // large tree) goes in the background: restoring does not wait.
        if let Ok(images) = self.inner.env.images.get().cloned() {
            tokio::spawn(async move {
                images.sweep_leftovers().await;
            });
        }
        let swept = self.inner.env.runtime.sweep_abandoned().await;
        if swept > 0 {
            tracing::warn!(
                "stopped {swept} {} left by an earlier locald that no project claims",
                if swept == 1 { "process" } else { "processes" }
            );
        }
        failed
    }

    /// Says that the `*.localhost` proxy serves on `port`: the services'
    /// URLs in snapshots use it from now on.
    pub fn set_url_port(&self, port: u16) {
        self.inner.env.url_port.set(port);
    }

    /// Records a problem the user should know about (shown by `status`, on
    /// D-Bus as `Warnings`), and logs it.
    pub fn warn_user(&self, text: String) {
        tracing::warn!("{text}");
        lock(&self.inner.warnings).push(text);
    }

    /// Every problem recorded with [`Engine::warn_user`], and the state
    /// file's, if any.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = lock(&self.inner.warnings).clone();
        w.extend(self.state_problem());
        w
    }

    /// What went wrong with the state file at the last restore, if anything
    /// ("projects.json was not valid JSON; kept as …"), for `status`.
    pub fn state_problem(&self) -> Option<String> {
        self.inner.state.as_ref().and_then(StateFile::problem)
    }

    /// Refuses a state file written by a newer locald: reading it would
    /// lose what it holds, and overwriting it would break the newer version.
    pub fn check_state_version(&self) -> Result<(), StateError> {
        match &self.inner.state {
            Some(state) => state.check_version(),
            None => Ok(()),
        }
    }

    /// Writes the set of projects that are up. Concurrent calls are
    /// serialized and coalesced: each waits until a write that began after
    /// its call has landed, so a caller that returns knows the file holds at
    /// least its change.
    async fn save_state(&self) {
        let Some(state) = self.inner.state.clone() else {
            return;
        };
        let wanted = state.request();
        let engine = self.clone();
        let write = tokio::task::spawn_blocking(move || {
            state.write_if_needed(wanted, || engine.project_paths())
        });
        if let Err(e) = write.await {
            tracing::warn!("saving the state crashed: {e}");
        }
    }

    fn project_paths(&self) -> Vec<PathBuf> {
        lock(&self.inner.projects)
            .values()
            .filter(|e| lock(&e.claim).is_some())
            .map(|e| e.path.clone())
            .collect()
    }
}

/// Loads a project's config on a blocking thread: reading files must never
/// stall the runtime that answers the bus.
async fn load_off_runtime(dir: PathBuf) -> Result<crate::config::Config, EngineError> {
    tokio::task::spawn_blocking(move || load_project(&dir))
        .await
        .map_err(|_| EngineError::ShuttingDown)?
        .map_err(EngineError::Config)
}

/// (Re)starts the project's file watcher for its current config; stops
/// it when nothing is watched.
fn rewatch(entry: &ProjectEntry, p: &Project) {
    let all = entry.watch_all.load(std::sync::atomic::Ordering::SeqCst);
    let senders = crate::supervisor::Senders(
        p.config
            .services
            .keys()
            .filter_map(|n| Some((n.clone(), p.sender(n)?)))
            .collect(),
    );
    // The old watcher goes first, so one change never triggers twice.
    lock(&entry.watch).take();
    let watch = crate::watch::spawn(&p.config, all, Arc::new(senders));
    *lock(&p.sources()) = watch.as_ref().map(crate::watch::ProjectWatch::source);
    *lock(&entry.watch) = watch;
}

/// An empty config of the same project, to hold `config`'s place while it
/// is on a blocking thread.
fn placeholder(config: &crate::config::Config) -> crate::config::Config {
    crate::config::Config {
        file: config.file.clone(),
        root: config.root.clone(),
        name: config.name.clone(),
        name_derived_from: None,
        services: IndexMap::new(),
    }
}

/// Gives freed memory back to the system after a project's config and
/// services were dropped: glibc's allocator keeps freed arenas otherwise,
/// and a daemon that once loaded a large config would hold it for good.
fn release_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
