//! `locald daemon`: one engine for the user's session, served on D-Bus.
//!
//! Startup order matters to the callers: the state directory is locked (two
//! daemons restoring from it would stop each other's services), the objects
//! are put in place, the projects that were up are restored, and only then
//! is the well-known name `dev.locald.Locald1` taken and `READY=1` sent. A
//! client whose call activated the daemon waits in the bus until the name
//! has an owner, so it sees the restored projects, never an empty tree.
//! While running, `STATUS=` follows the services ("2 projects, 5 running,
//! 1 failed") and `WATCHDOG=1` is sent at half of `$WATCHDOG_USEC`. On
//! SIGTERM or SIGINT it says `STOPPING=1` and stops every project in order
//! before exiting; when the bus goes away it does the same and exits 1.
//!
//! The notify protocol is a datagram on `$NOTIFY_SOCKET` (a path, or an
//! abstract name starting with `@`); it is small enough to speak directly.
//! [`take_notify_env`] reads and removes the variables before any thread
//! exists so that services never inherit the daemon's socket.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use zbus::fdo::{RequestNameFlags, RequestNameReply};

use locald_api::BUS_NAME;

use crate::dbus::{self, DbusLogSink};
use crate::engine::{Engine, EngineOptions};
use crate::event::{Event, ServiceState};
use crate::output::{Fanout, LogSink};

/// How to run the daemon.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// A D-Bus address to serve instead of the session bus.
    pub bus_address: Option<String>,
    /// Where the engine keeps the set of projects that are up; defaults to
    /// `$XDG_STATE_HOME/locald` (`~/.local/state/locald`).
    pub state_dir: Option<PathBuf>,
    /// The service manager's notify socket and watchdog, from [`take_notify_env`].
    pub notify: NotifyEnv,
    /// Every directory the daemon uses.
    pub paths: Paths,
}

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The bus could not be reached.
    #[error("cannot connect to the bus{}", address.as_deref().map(|a| format!(" at {a}")).unwrap_or_default())]
    Connect {
        /// The address given, if any.
        address: Option<String>,
        /// Why (boxed: zbus errors are large).
        #[source]
        source: Box<zbus::Error>,
    },
    /// Serving the objects or asking for the name failed.
    #[error("cannot serve the locald objects on the bus")]
    Serve(#[source] Box<zbus::Error>),
    /// Another daemon owns the name already.
    #[error("another locald already owns {BUS_NAME} on this bus")]
    NameTaken,
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
    /// The bus went away while serving; exiting non-zero lets
    /// `Restart=on-failure` bring the daemon back on the new bus.
    #[error("lost the connection to the bus")]
    LostBus,
    /// Another daemon uses the same state directory.
    #[error("another locald uses the state directory {}", dir.display())]
    StateLocked {
        /// The directory.
        dir: PathBuf,
    },
    /// The state directory cannot be created or locked.
    #[error("cannot lock the state directory {}", dir.display())]
    StateDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The runtime directory is not safe to use.
    #[error("cannot use the runtime directory")]
    RuntimeDir(#[source] crate::fsutil::UnsafeFile),
    /// The state file cannot be used.
    #[error(transparent)]
    State(crate::state::StateError),
    /// No home directory to put the state in.
    #[error("cannot find a state directory: neither XDG_STATE_HOME nor HOME is set")]
    NoStateDir,
}

/// What the service manager gave the daemon to talk back with.
#[derive(Debug, Clone, Default)]
pub struct NotifyEnv {
    /// `$NOTIFY_SOCKET`.
    pub socket: Option<String>,
    /// `$WATCHDOG_USEC`, when it is meant for this process (`$WATCHDOG_PID`).
    pub watchdog: Option<Duration>,
}

/// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` and removes them
/// from the environment so that the services the daemon starts do not talk
/// to the daemon's service manager. Call before any other thread starts.
pub fn take_notify_env() -> NotifyEnv {
    let socket = std::env::var("NOTIFY_SOCKET")
        .ok()
        .filter(|s| !s.is_empty());
    let for_us = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_none_or(|p| p == std::process::id());
    let watchdog = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|u| u.parse::<u64>().ok())
        .filter(|u| *u > 0 && for_us)
        .map(Duration::from_micros);
    for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        std::env::remove_var(var);
    }
    NotifyEnv { socket, watchdog }
}

/// Sends `sd_notify` messages; does nothing without a socket.
pub struct Notifier {
    socket: Option<(UnixDatagram, String)>,
}

impl Notifier {
    /// A notifier for `$NOTIFY_SOCKET`; inert when there is none or it cannot be used.
    pub fn new(env: &NotifyEnv) -> Self {
        let socket = env
            .socket
            .as_ref()
            .and_then(|path| match UnixDatagram::unbound() {
                Ok(s) => Some((s, path.clone())),
                Err(e) => {
                    tracing::warn!("cannot create the notify socket: {e}");
                    None
                }
            });
        Self { socket }
    }

    /// Sends one message, e.g. `READY=1\nSTATUS=…`.
    pub fn send(&self, message: &str) {
        let Some((sock, path)) = &self.socket else {
            return;
        };
        let result = match path.strip_prefix('@') {
            Some(name) => send_abstract(sock, name, message),
            None => sock.send_to(message.as_bytes(), path).map(drop),
        };
        if let Err(e) = result {
            tracing::debug!("cannot notify the service manager: {e}");
        }
    }
}

fn send_abstract(sock: &UnixDatagram, name: &str, message: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    sock.send_to_addr(message.as_bytes(), &addr).map(drop)
}

/// Writes each line to the daemon's stderr as `project/service: line`; used
/// only when there is no journal to write to.
struct StderrSink;

impl LogSink for StderrSink {
    fn write<'a>(&'a self, line: &'a crate::event::LogLine) -> crate::output::BoxFuture<'a, ()> {
        use std::io::Write;
        let mut out = Vec::with_capacity(line.line.len() + 32);
        out.extend_from_slice(line.project.as_bytes());
        out.push(b'/');
        out.extend_from_slice(line.service.as_bytes());
        out.extend_from_slice(if line.phase == crate::event::Phase::Build {
            b" (build): "
        } else {
            b": "
        });
        out.extend_from_slice(&line.line);
        out.push(b'\n');
        // One write per line so lines of different services never interleave.
        let _ = std::io::stderr().lock().write_all(&out);
        Box::pin(std::future::ready(()))
    }
}

pub(crate) use locald_core::task::AbortOnDrop;

use locald_core::paths::Paths;

/// Takes `DIR/daemon.lock` with `flock`; released when the file is closed,
/// even when the daemon is killed.
fn lock_state_dir(dir: &std::path::Path) -> Result<nix::fcntl::Flock<std::fs::File>, DaemonError> {
    let io = |source| DaemonError::StateDir {
        dir: dir.to_owned(),
        source,
    };
    crate::fsutil::private_dir(dir).map_err(|e| match e {
        crate::fsutil::UnsafeFile::Io { source, .. } => io(source),
        other => io(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            other.to_string(),
        )),
    })?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("daemon.lock"))
        .map_err(io)?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(_, errno)| match errno {
            nix::errno::Errno::EWOULDBLOCK => DaemonError::StateLocked {
                dir: dir.to_owned(),
            },
            e => io(std::io::Error::from(e)),
        },
    )
}

/// The one-line status for `STATUS=`.
pub fn status_line(engine: &Engine) -> String {
    let projects = engine.projects();
    let states = projects
        .iter()
        .flat_map(|p| p.services.iter().map(|s| s.state));
    let (mut running, mut failed) = (0, 0);
    for s in states {
        match s {
            ServiceState::Running | ServiceState::Healthy => running += 1,
            ServiceState::Failed | ServiceState::Error => failed += 1,
            _ => {}
        }
    }
    let n = projects.len();
    let plural = if n == 1 { "" } else { "s" };
    format!("{n} project{plural}, {running} running, {failed} failed")
}

/// The arguments of `locald daemon`.
#[derive(Debug, Clone, clap::Args)]
pub struct DaemonArgs {
    /// Serve this D-Bus address instead of the session bus.
    #[arg(long, value_name = "ADDR")]
    pub bus_address: Option<String>,
    /// Keep the set of projects that are up here [default: $XDG_STATE_HOME/locald].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// `locald daemon`: takes the notify variables, starts a runtime and runs
/// the daemon. Call from `main` before any other thread exists.
pub fn main(args: DaemonArgs) -> std::process::ExitCode {
    let notify = take_notify_env();
    // The daemon's own log: the journal when there is one (under systemd),
    // else stderr.
    if let Err(e) = crate::journal::init_daemon_logging(crate::journal::LogOutput::Auto, "info") {
        eprintln!("locald: {e}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("locald: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let opts = DaemonOptions {
        bus_address: args.bus_address,
        state_dir: args.state_dir,
        notify,
        paths: Paths::from_env(),
    };
    match runtime.block_on(run(opts)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let mut text = format!("locald: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("{text}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT. Must run inside a tokio runtime.
pub async fn run(opts: DaemonOptions) -> Result<(), DaemonError> {
    let notifier = Arc::new(Notifier::new(&opts.notify));
    let state_dir = match opts.state_dir {
        Some(d) => d,
        None => opts.paths.state.clone().ok_or(DaemonError::NoStateDir)?,
    };
    // Two daemons restoring from one state directory would stop each other's
    // services; the lock is held for the daemon's whole life.
    let _state_lock = lock_state_dir(&state_dir)?;
    // Pid records and project locks live here; a directory another user
    // planted (the /tmp fallback) is refused before any service starts.
    opts.paths.runtime.open().map_err(DaemonError::RuntimeDir)?;
    crate::compose::raise_fd_limit();
    let mut terminate = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;

    let bus_logs = Arc::new(DbusLogSink::new());
    let (engine, systemd) = compose_engine(state_dir, bus_logs.clone(), opts.paths).await;
    // Refuse a state file from a newer locald before touching anything.
    engine.check_state_version().map_err(DaemonError::State)?;
    let _proxy = start_proxy(&engine).await;
    let conn = connect(opts.bus_address.as_deref()).await?;
    let shutdown = async {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    };
    let served = Served {
        engine,
        bus_logs,
        systemd,
        notifier,
        watchdog: opts.notify.watchdog,
    };
    serve(conn, served, shutdown).await
}

/// The engine with the daemon's sinks (the journal, else stderr, and live
/// D-Bus subscribers) and runtimes (systemd units where a user manager is
/// on the session bus); the systemd runtime too, when there is one.
async fn compose_engine(
    state_dir: std::path::PathBuf,
    bus_logs: Arc<DbusLogSink>,
    paths: Paths,
) -> (Engine, Option<crate::runtime::systemd::SystemdRuntime>) {
    // Output lines go to the journal (with per-service fields) and to live
    // D-Bus subscribers. Without a journal (a test bus, a container without
    // journald) they go to stderr so they are not lost.
    let journal = crate::compose::journal_sinks();
    let mut fanout = Fanout::new();
    if journal.is_empty() {
        fanout = fanout.with(Arc::new(StderrSink));
    }
    for j in journal {
        fanout = fanout.with(j);
    }
    let sink: Arc<dyn LogSink> = Arc::new(fanout.with(bus_logs.clone()));
    let images = crate::runtime::ImageStore::open(&paths);
    let mut runtimes = crate::runtime::RuntimeSet::detect(&paths, &images);
    let systemd = crate::runtime::systemd::SystemdRuntime::detect(&paths).await;
    if let Some(sd) = &systemd {
        runtimes = runtimes.with_systemd(sd.clone().with_live_logs(bus_logs));
    }
    let engine = Engine::with_runtimes(
        EngineOptions {
            sink,
            state_dir: Some(state_dir),
            instance: "the locald daemon".into(),
            paths,
        },
        runtimes,
        images,
    );
    (engine, systemd)
}

/// The `*.localhost` proxy; URLs are a convenience, so a port in use is
/// said and the daemon runs on without them (loudly when another user
/// holds it).
async fn start_proxy(engine: &Engine) -> Option<AbortOnDrop> {
    let port = crate::proxy::configured_port()?;
    match crate::proxy::serve(engine.clone(), port).await {
        Ok(task) => Some(AbortOnDrop(task)),
        Err(e) if e.held_by_another_user() => {
            // Whoever opens a *.localhost URL on this port reaches
            // their server, with the user's cookies for that origin.
            engine.warn_user(format!(
                "the URL proxy {e}: *.localhost:{port} URLs would reach their server, so locald shows none; set LOCALD_PROXY_PORT to a port of your own (docs/urls.md)"
            ));
            None
        }
        Err(e) => {
            tracing::warn!("the URL proxy {e}; *.localhost URLs are off (set LOCALD_PROXY_PORT to another port)");
            None
        }
    }
}

/// A connection to the bus at `address`, else the session bus.
async fn connect(address: Option<&str>) -> Result<zbus::Connection, DaemonError> {
    let builder = match address {
        Some(a) => zbus::connection::Builder::address(a),
        None => zbus::connection::Builder::session(),
    };
    match builder {
        Ok(b) => b.build().await,
        Err(e) => Err(e),
    }
    .map_err(|source| DaemonError::Connect {
        address: address.map(str::to_owned),
        source: Box::new(source),
    })
}

/// What [`serve`] serves.
pub struct Served {
    /// The engine.
    pub engine: Engine,
    /// The sink that sends `LogLine` to subscribers (part of the engine's).
    pub bus_logs: Arc<DbusLogSink>,
    /// The systemd runtime, when services run as units.
    pub systemd: Option<crate::runtime::systemd::SystemdRuntime>,
    /// sd_notify towards the service manager (or nowhere).
    pub notifier: Arc<Notifier>,
    /// The watchdog period the service manager asked for.
    pub watchdog: Option<std::time::Duration>,
}

/// Serves `served.engine` on `conn` until `shutdown` completes or the bus
/// goes away: the objects, the projects brought back, the well-known
/// name, `READY=1`, the watchdog; then stops (or, for a restart of a
/// systemd unit, leaves running) the services. A function of what it is
/// given, as tokio's mini-redis `server::run` is, so a test can run it
/// in-process.
pub async fn serve(
    conn: zbus::Connection,
    served: Served,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DaemonError> {
    let Served {
        engine,
        bus_logs,
        systemd,
        notifier,
        watchdog,
    } = served;
    let server = dbus::serve(&conn, engine.clone(), bus_logs)
        .await
        .map_err(|e| DaemonError::Serve(Box::new(e)))?;
    // Fail fast, before touching any process, when another daemon serves
    // this bus; the request below settles a race between two starting ones.
    if name_has_owner(&conn).await? {
        return Err(DaemonError::NameTaken);
    }
    // Status follows events; subscribe before restoring so nothing is missed.
    let status_task = AbortOnDrop(tokio::spawn(follow_status(
        engine.clone(),
        engine.subscribe(),
        notifier.clone(),
    )));
    // Bring back the projects that were up when the last daemon stopped or
    // was killed; the engine stops what that daemon left running first. This
    // happens before the name is taken, so a client activated by its call
    // (which the bus holds until the name has an owner) sees them back.
    notifier.send("STATUS=restoring projects");
    for (path, e) in engine.restore().await {
        tracing::warn!("cannot bring back the project in {}: {e}", path.display());
    }
    take_name(&conn, &engine).await?;
    notifier.send(&format!("READY=1\nSTATUS={}", status_line(&engine)));
    tracing::info!("locald {} serving {BUS_NAME}", env!("CARGO_PKG_VERSION"));
    let _watchdog_task = watchdog.map(|period| AbortOnDrop(ping_watchdog(&notifier, period)));

    let lost_bus = tokio::select! {
        () = shutdown => false,
        () = server.closed() => true,
    };
    if lost_bus {
        tracing::error!("lost the connection to the bus; stopping");
    }
    stop(&engine, systemd.as_ref(), lost_bus, &notifier).await;
    drop(status_task);
    if lost_bus {
        return Err(DaemonError::LostBus);
    }
    let _ = conn.release_name(BUS_NAME).await;
    drop(server);
    Ok(())
}

/// Whether another connection owns the daemon's name.
async fn name_has_owner(conn: &zbus::Connection) -> Result<bool, DaemonError> {
    let dbus = zbus::fdo::DBusProxy::new(conn)
        .await
        .map_err(|e| DaemonError::Serve(Box::new(e)))?;
    let bus_name = zbus::names::BusName::from_static_str(BUS_NAME)
        .map_err(|e| DaemonError::Serve(Box::new(e.into())))?;
    Ok(dbus.name_has_owner(bus_name).await.unwrap_or(false))
}

/// Takes the well-known name; losing a start-up race to another daemon
/// stops what was restored (the saved list stays).
async fn take_name(conn: &zbus::Connection, engine: &Engine) -> Result<(), DaemonError> {
    let reply = conn
        .request_name_with_flags(BUS_NAME, RequestNameFlags::DoNotQueue.into())
        .await;
    if matches!(
        reply,
        Ok(RequestNameReply::PrimaryOwner | RequestNameReply::AlreadyOwner)
    ) {
        return Ok(());
    }
    engine.shutdown().await;
    Err(match reply {
        Err(e) if !matches!(e, zbus::Error::NameTaken) => DaemonError::Serve(Box::new(e)),
        _ => DaemonError::NameTaken,
    })
}

/// `WATCHDOG=1` every half `period`, as sd_watchdog_enabled(3) advises; the
/// ping comes from the runtime that serves the bus, so a wedged runtime
/// stops it and systemd restarts the daemon.
fn ping_watchdog(
    notifier: &Arc<Notifier>,
    period: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    let notifier = notifier.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period / 2);
        loop {
            tick.tick().await;
            notifier.send("WATCHDOG=1");
        }
    })
}

/// The end: `systemctl --user restart locald` (an upgrade) leaves services
/// that run as systemd units up for the next daemon to adopt; a stop, a
/// lost bus, or a daemon outside systemd stops everything.
async fn stop(
    engine: &Engine,
    systemd: Option<&crate::runtime::systemd::SystemdRuntime>,
    lost_bus: bool,
    notifier: &Notifier,
) {
    let restarting = match (systemd, lost_bus) {
        (Some(sd), false) => sd.own_unit_restarting().await,
        _ => false,
    };
    if restarting {
        notifier.send("STOPPING=1\nSTATUS=restarting; services keep running");
        tracing::info!("restarting: services that run as systemd units keep running");
    } else {
        notifier.send("STOPPING=1\nSTATUS=stopping services");
        tracing::info!("stopping every project");
        engine.shutdown().await;
    }
}

/// Keeps `STATUS=` current, at most ten times a second.
async fn follow_status(
    engine: Engine,
    mut events: tokio::sync::broadcast::Receiver<Event>,
    notifier: Arc<Notifier>,
) {
    let mut last = String::new();
    loop {
        match events.recv().await {
            Ok(Event::BuildProgress { .. } | Event::PullProgress { .. }) => continue,
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Everything that arrived meanwhile is folded into this one update.
        while let Ok(_) | Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) =
            events.try_recv()
        {}
        let line = status_line(&engine);
        if line != last {
            notifier.send(&format!("STATUS={line}"));
            last = line;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifier_sends_datagrams() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).expect("bind");
        let env = NotifyEnv {
            socket: Some(path.display().to_string()),
            watchdog: None,
        };
        Notifier::new(&env).send("READY=1\nSTATUS=x");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=x");
    }

    #[test]
    fn notifier_without_socket_is_inert() {
        Notifier::new(&NotifyEnv::default()).send("READY=1");
    }

    #[test]
    fn status_line_of_empty_engine() {
        let engine = Engine::new(EngineOptions {
            sink: Arc::new(Fanout::new()),
            state_dir: None,
            instance: "test".into(),
            paths: Paths::under(std::path::Path::new("/nonexistent")),
        });
        assert_eq!(status_line(&engine), "0 projects, 0 running, 0 failed");
    }
}
