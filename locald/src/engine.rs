//! The engine: every project that is up, and the one handle the edges use.
//!
//! `locald up` creates an engine with one project and a terminal sink; the
//! daemon creates one engine for the whole session and puts the D-Bus layer
//! in front of it. Both go through the same calls, so what works in the
//! foreground works in the daemon.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::config::LoadError;
use crate::event::{BuildRecord, Event, ProjectSnapshot};
use crate::output::LogSink;

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
    _opts: EngineOptions,
    events: broadcast::Sender<Event>,
}

impl Engine {
    /// Creates an engine with no projects.
    pub fn new(opts: EngineOptions) -> Engine {
        let (events, _) = broadcast::channel(4096);
        Engine {
            inner: Arc::new(Inner {
                _opts: opts,
                events,
            }),
        }
    }

    /// Brings up the project containing `dir` (or reloads it if it is up
    /// already) and returns its name. Returns once the services are launched,
    /// not when they are healthy.
    pub async fn up(&self, dir: &Path) -> Result<String, EngineError> {
        let _ = dir;
        Err(EngineError::ShuttingDown)
    }

    /// Stops every service of the project (reverse dependency order) and forgets it.
    pub async fn down(&self, project: &str) -> Result<(), EngineError> {
        Err(EngineError::NoSuchProject(project.into()))
    }

    /// Re-reads the project's file; touches only services whose config changed.
    pub async fn reload(&self, project: &str) -> Result<ReloadSummary, EngineError> {
        Err(EngineError::NoSuchProject(project.into()))
    }

    /// Starts a stopped or failed service.
    pub async fn start_service(&self, project: &str, service: &str) -> Result<(), EngineError> {
        let _ = service;
        Err(EngineError::NoSuchProject(project.into()))
    }

    /// Stops a service; it stays stopped until started.
    pub async fn stop_service(&self, project: &str, service: &str) -> Result<(), EngineError> {
        let _ = service;
        Err(EngineError::NoSuchProject(project.into()))
    }

    /// Restarts a service, running its build again (an explicit restart, unlike a crash restart).
    pub async fn restart_service(&self, project: &str, service: &str) -> Result<(), EngineError> {
        let _ = service;
        Err(EngineError::NoSuchProject(project.into()))
    }

    /// Builds a service now (skipped when up to date unless `force`) and
    /// returns the record once the build ended.
    pub async fn build(
        &self,
        project: &str,
        service: &str,
        force: bool,
    ) -> Result<BuildRecord, EngineError> {
        let _ = (service, force);
        Err(EngineError::NoSuchProject(project.into()))
    }

    /// Every project that is up.
    pub fn projects(&self) -> Vec<ProjectSnapshot> {
        Vec::new()
    }

    /// One project.
    pub fn project(&self, name: &str) -> Option<ProjectSnapshot> {
        let _ = name;
        None
    }

    /// Events from now on. A receiver that lags gets `RecvError::Lagged` and
    /// should re-read snapshots.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Stops every project, each in reverse dependency order.
    pub async fn shutdown(&self) {}
}
