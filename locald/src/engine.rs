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
use crate::output::LogSink;
use crate::runtime::host::HostRuntime;
use crate::runtime::Runtime;
use crate::supervisor::{Env, Project, ProjectView, ServiceSender};

/// How to create an [`Engine`].
pub struct EngineOptions {
    /// Where output lines go.
    pub sink: Arc<dyn LogSink>,
    /// Where the engine keeps state that outlives it (the set of projects that
    /// are up). `None` keeps nothing (foreground `locald up`).
    pub state_dir: Option<PathBuf>,
}

/// What [`Engine::reload`] did.
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

/// Why an engine call failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The project's configuration could not be loaded.
    #[error(transparent)]
    Config(#[from] LoadError),
    /// No project of that name is up.
    #[error("no project named `{0}` is up")]
    NoSuchProject(String),
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
    /// The engine is shutting down.
    #[error("locald is shutting down")]
    ShuttingDown,
}

/// A cheap, cloneable handle to the engine.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    env: Env,
    state_dir: Option<PathBuf>,
    /// Projects by name. The async mutex serialises operations on one project
    /// (up, reload, down) without blocking the others.
    projects: std::sync::Mutex<IndexMap<String, Arc<ProjectEntry>>>,
    shutting_down: std::sync::atomic::AtomicBool,
}

struct ProjectEntry {
    path: PathBuf,
    project: tokio::sync::Mutex<Option<Project>>,
    /// Live view of the services, read without taking the async lock.
    view: std::sync::Mutex<Option<ProjectView>>,
}

impl Engine {
    /// Creates an engine with no projects, running services as host processes.
    pub fn new(opts: EngineOptions) -> Engine {
        Self::with_runtime(opts, Arc::new(HostRuntime::detect()))
    }

    /// Creates an engine with a given process runtime.
    pub fn with_runtime(opts: EngineOptions, runtime: Arc<dyn Runtime>) -> Engine {
        let (events, _) = broadcast::channel(4096);
        let env = Env {
            events,
            sink: opts.sink,
            runtime,
        };
        Engine {
            inner: Arc::new(Inner {
                env,
                state_dir: opts.state_dir,
                projects: std::sync::Mutex::new(IndexMap::new()),
                shutting_down: std::sync::atomic::AtomicBool::new(false),
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
    /// already) and returns its name. Returns once the services are launched,
    /// not when they are healthy.
    pub async fn up(&self, dir: &Path) -> Result<String, EngineError> {
        self.check_running()?;
        let config = load_project(dir)?;
        let name = config.name.clone();
        let existing = lock(&self.inner.projects).get(&name).cloned();
        if let Some(entry) = existing {
            if entry.path != config.root {
                return Err(EngineError::NameTaken {
                    name,
                    path: entry.path.clone(),
                });
            }
            self.reload(&name).await?;
            return Ok(name);
        }
        let entry = Arc::new(ProjectEntry {
            path: config.root.clone(),
            project: tokio::sync::Mutex::new(None),
            view: std::sync::Mutex::new(None),
        });
        let mut guard = entry.project.lock().await;
        lock(&self.inner.projects).insert(name.clone(), entry.clone());
        let _ = self.inner.env.events.send(Event::ProjectAdded {
            project: name.clone(),
        });
        let project = Project::start(config, self.inner.env.clone());
        *lock(&entry.view) = Some(project.view());
        *guard = Some(project);
        drop(guard);
        self.save_state();
        Ok(name)
    }

    /// Stops every service of the project (reverse dependency order) and forgets it.
    pub async fn down(&self, project: &str) -> Result<(), EngineError> {
        let entry = self.entry(project)?;
        let mut guard = entry.project.lock().await;
        if let Some(mut p) = guard.take() {
            p.shutdown().await;
        }
        lock(&self.inner.projects).shift_remove(project);
        let _ = self.inner.env.events.send(Event::ProjectRemoved {
            project: project.into(),
        });
        self.save_state();
        Ok(())
    }

    /// Re-reads the project's file; touches only services whose config changed.
    pub async fn reload(&self, project: &str) -> Result<ReloadSummary, EngineError> {
        self.check_running()?;
        let entry = self.entry(project)?;
        let config = load_project(&entry.path)?;
        if config.name != project {
            return Err(EngineError::Renamed {
                old: project.into(),
                new: config.name,
            });
        }
        let mut guard = entry.project.lock().await;
        let Some(p) = guard.as_mut() else {
            return Err(EngineError::NoSuchProject(project.into()));
        };
        let summary = p.reload(config).await;
        *lock(&entry.view) = Some(p.view());
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

    /// Brings back the projects that were up when the state was last saved.
    /// Processes an earlier daemon left behind are stopped before each service
    /// starts again, so no service ever runs twice. Returns the projects that
    /// could not be brought back, with why.
    pub async fn restore(&self) -> Vec<(PathBuf, EngineError)> {
        let mut failed = Vec::new();
        for path in self.saved_projects() {
            if let Err(e) = self.up(&path).await {
                failed.push((path, e));
            }
        }
        failed
    }

    fn state_file(&self) -> Option<PathBuf> {
        self.inner
            .state_dir
            .as_ref()
            .map(|d| d.join("projects.json"))
    }

    fn saved_projects(&self) -> Vec<PathBuf> {
        let Some(file) = self.state_file() else {
            return Vec::new();
        };
        std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice::<SavedState>(&b).ok())
            .map(|s| s.projects)
            .unwrap_or_default()
    }

    /// Writes the set of projects that are up (write, fsync, rename).
    fn save_state(&self) {
        let Some(file) = self.state_file() else {
            return;
        };
        let projects: Vec<PathBuf> = lock(&self.inner.projects)
            .values()
            .map(|e| e.path.clone())
            .collect();
        let state = SavedState {
            version: 1,
            projects,
        };
        if let Err(e) = write_atomic(
            &file,
            &serde_json::to_vec_pretty(&state).unwrap_or_default(),
        ) {
            tracing::warn!("cannot save state to {}: {e}", file.display());
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedState {
    version: u32,
    projects: Vec<PathBuf>,
}

/// Writes `data` to `path` so that a reader sees the old or the new content, never a mix.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state")
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Locks a std mutex, recovering from poisoning (a panicked holder leaves
/// plain data that is still usable).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
