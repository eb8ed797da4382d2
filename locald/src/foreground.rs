//! `locald up` in the foreground: one project, no bus, no systemd; output and
//! state changes on the terminal; Ctrl-C stops everything in reverse
//! dependency order, a second Ctrl-C kills at once. A reader of stdout that
//! went away (`locald up | head`) stops everything as Ctrl-C does.

use std::path::Path;
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::broadcast::error::RecvError;

pub use crate::compose::journal_sinks;
use crate::config::Config;
use crate::engine::{Engine, EngineOptions};
use crate::event::{BuildResult, Event, ProjectSnapshot, ServiceState};
use crate::output::{Fanout, LogSink};
use crate::term::Terminal;
use locald_core::paths::Paths;

/// How `locald up` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpOutcome {
    /// Stopped by a signal, or every service ended successfully.
    Stopped,
    /// A service failed and nothing else runs.
    Failed(String),
}

/// Runs `config`'s project until a signal or until nothing can run any more.
/// `extra` sinks get every output line besides the terminal (e.g. journald).
pub async fn up(
    config: &Config,
    extra: Vec<Arc<dyn LogSink>>,
    watch: bool,
    paths: Paths,
) -> std::io::Result<UpOutcome> {
    if let Err(e) = paths.runtime.open() {
        return Ok(UpOutcome::Failed(format!(
            "cannot use the runtime directory: {}",
            crate::error_chain(&e)
        )));
    }
    crate::compose::raise_fd_limit();
    let names: Vec<String> = config.services.keys().cloned().collect();
    let term = Arc::new(Terminal::new(&names));
    let mut sink = Fanout::new().with(term.clone());
    for s in extra {
        sink = sink.with(s);
    }
    let engine = Engine::new(EngineOptions {
        sink: Arc::new(sink),
        state_dir: None,
        instance: "locald up".into(),
        paths,
    });
    let mut events = engine.subscribe();
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;

    let _proxy = start_proxy(config, &engine, &term).await;
    let project = match engine.up(&config.root).await {
        Ok(p) => p,
        Err(e) => return Ok(UpOutcome::Failed(e.to_string())),
    };
    if watch {
        if let Err(e) = engine.set_watch_all(&project, true).await {
            return Ok(UpOutcome::Failed(e.to_string()));
        }
        term.note("watching for changes");
    }

    let outcome = run_until_done(
        &engine,
        &project,
        &term,
        &mut events,
        &mut sigint,
        &mut sigterm,
    )
    .await;
    term.note("stopping (press Ctrl-C again to kill at once)");
    let stop = engine.shutdown();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = sigint.recv() => { engine.kill_all(); }
            _ = sigterm.recv() => { engine.kill_all(); }
            ev = events.recv() => if let Ok(ev) = ev { term.event(&ev); },
        }
    }
    term.note("stopped");
    Ok(outcome)
}

/// The `*.localhost` proxy, unless another locald (the daemon) has the
/// port; only for a project with ports, so a `locald up` of another project
/// never keeps the port from a daemon that starts later. Prints the URLs.
async fn start_proxy(
    config: &Config,
    engine: &Engine,
    term: &Terminal,
) -> Option<locald_core::task::AbortOnDrop> {
    let has_ports = config.services.values().any(|s| !s.ports.is_empty());
    let port = crate::proxy::configured_port().filter(|_| has_ports)?;
    match crate::proxy::serve(engine.clone(), port).await {
        Ok(task) => {
            for (name, svc) in &config.services {
                if !svc.ports.is_empty() {
                    term.note(&format!(
                        "{name}: {}",
                        crate::proxy::url(&config.name, name, port)
                    ));
                }
            }
            Some(locald_core::task::AbortOnDrop(task))
        }
        Err(e) if e.held_by_another_user() => {
            term.note(&format!(
                "warning: the URL proxy {e}: *.localhost:{port} URLs would reach their server, so none are shown; set LOCALD_PROXY_PORT to a port of your own"
            ));
            None
        }
        // The daemon (ours) serves it.
        Err(_) => None,
    }
}

/// Prints the events of `project` until a signal, until nobody reads the
/// output, or until nothing can run any more.
async fn run_until_done(
    engine: &Engine,
    project: &str,
    term: &Terminal,
    events: &mut tokio::sync::broadcast::Receiver<Event>,
    sigint: &mut tokio::signal::unix::Signal,
    sigterm: &mut tokio::signal::unix::Signal,
) -> UpOutcome {
    loop {
        tokio::select! {
            _ = sigint.recv() => return UpOutcome::Stopped,
            _ = sigterm.recv() => return UpOutcome::Stopped,
            // `locald up | head`: nobody sees the services any more.
            () = term.output_closed() => return UpOutcome::Stopped,
            ev = events.recv() => match ev {
                Ok(ev) => {
                    term.event(&ev);
                    if matches!(ev, Event::ServiceChanged { .. }) {
                        if let Some(p) = engine.project(project) {
                            if let Some(reason) = dead_end(&p) {
                                return UpOutcome::Failed(reason);
                            }
                            if all_ended(&p) {
                                term.note("every service has ended");
                                return UpOutcome::Stopped;
                            }
                        }
                    }
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return UpOutcome::Stopped,
            },
        }
    }
}

/// Whether every service ran and ended without failing (one-shot tasks, or
/// services with `restart = "on-failure"` that exited 0): nothing is left to
/// supervise, so `locald up` returns like `docker compose up` does.
pub fn all_ended(p: &ProjectSnapshot) -> bool {
    !p.services.is_empty()
        && p.services
            .iter()
            .all(|s| s.state == ServiceState::Stopped && s.exit_status == Some(0))
}

/// When a service has failed and nothing else runs or can run, the reason.
pub fn dead_end(p: &ProjectSnapshot) -> Option<String> {
    let failed: Vec<_> = p
        .services
        .iter()
        .filter(|s| s.state == ServiceState::Failed)
        .collect();
    if failed.is_empty() {
        return None;
    }
    let stuck = p.services.iter().all(|s| match s.state {
        ServiceState::Failed | ServiceState::Stopped => true,
        ServiceState::Pending => s.reason.starts_with("waiting for"),
        _ => false,
    });
    stuck.then(|| {
        failed
            .iter()
            .map(|s| format!("{} failed: {}", s.name, s.reason))
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// What `locald build` runs builds with: the image store and its runtimes
/// when a buildpacks build needs them, else host processes only.
fn build_runtimes(
    config: &Config,
    paths: &Paths,
) -> (crate::runtime::RuntimeSet, crate::runtime::ImageStore) {
    let cnb = config
        .services
        .values()
        .any(|s| matches!(s.build, Some(crate::config::BuildSpec::Cnb(_))));
    if cnb {
        let images = crate::runtime::ImageStore::open(paths);
        (crate::runtime::RuntimeSet::detect(paths, &images), images)
    } else {
        let host = crate::runtime::host::HostRuntime::detect(paths.runtime.clone());
        (
            crate::runtime::RuntimeSet::host(Arc::new(host)),
            crate::runtime::ImageStore::none("no buildpacks build here"),
        )
    }
}

/// `locald build [SERVICE] [--force]` in the foreground, with no daemon:
/// builds one service (or every service that has a build), printing build
/// output and one line per service with what happened. Returns whether every
/// build succeeded or was up to date.
pub async fn build(
    config: &Config,
    service: Option<&str>,
    force: bool,
    extra: Vec<Arc<dyn LogSink>>,
    paths: Paths,
) -> bool {
    let names: Vec<String> = match service {
        Some(s) => vec![s.to_owned()],
        None => config
            .services
            .iter()
            .filter(|(_, s)| s.build.is_some())
            .map(|(n, _)| n.clone())
            .collect(),
    };
    let term = Arc::new(Terminal::new(&names));
    if names.is_empty() {
        term.note("no service of this project has a build");
        return true;
    }
    let mut sink = Fanout::new().with(term.clone());
    for s in extra {
        sink = sink.with(s);
    }
    let (events, mut rx) = tokio::sync::broadcast::channel(1024);
    // Buildpacks builds run in containers from the image store; the same
    // runtimes `locald up` uses.
    let (runtime, images) = build_runtimes(config, &paths);
    let env = crate::supervisor::Env {
        events,
        sink: Arc::new(sink),
        runtime,
        url_port: crate::supervisor::UrlPort::default(),
        sources: crate::watch::WatchSlot::default(),
        paths: Arc::new(paths),
        images,
    };
    // Progress steps ("Building: step 3/5 – Restoring cache") as lines.
    let printer = {
        let term = term.clone();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(ev @ Event::BuildProgress { .. }) => {
                        term.event(&ev);
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        })
    };
    let records = crate::supervisor::build_services(config, &names, force, env).await;
    printer.abort();
    let mut ok = true;
    for (name, r) in &records {
        let took = r
            .finished_at
            .and_then(|f| f.duration_since(r.started_at).ok())
            .map(|d| format!(" in {:.1}s", d.as_secs_f64()))
            .unwrap_or_default();
        let line = match r.result {
            BuildResult::Succeeded => format!("✓ {name}: built{took} ({})", r.reason),
            BuildResult::Skipped => format!("✓ {name}: {}", r.reason),
            _ => {
                ok = false;
                format!("✗ {name}: {}", r.reason)
            }
        };
        term.note(&line);
    }
    ok
}

/// `locald check`: loads and checks the project containing `dir`.
pub fn check(dir: &Path) -> Result<Config, crate::config::LoadError> {
    crate::config::load_project(dir)
}
