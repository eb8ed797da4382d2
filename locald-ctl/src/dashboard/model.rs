//! What the page shows, kept here from the daemon's D-Bus signals, and the
//! events that tell every open page about each change.
//!
//! One task follows the same signals an editor would (`PropertiesChanged`,
//! `InterfacesAdded`/`Removed`, `BuildProgress`, `BuildFinished`) plus
//! `LogLine`, for which it calls `SubscribeLogs` on every service. Each
//! change updates the model and goes out as one [`Event`] on a broadcast
//! channel, under the model's lock, so a page that takes a snapshot and a
//! receiver together sees every change after its snapshot exactly once.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::broadcast;
use zbus::message::Type as MessageType;
use zbus::names::OwnedUniqueName;
use zbus::proxy::CacheProperties;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};
use zbus::{Connection, MatchRule, MessageStream};

use locald_api::{
    BuildInfo, ServiceInfo, BUS_NAME, MANAGER_PATH, PROJECT_INTERFACE, SERVICE_INTERFACE,
};

/// Finished builds kept per service for the history.
const HISTORY: usize = 20;
/// Longest log line sent to a page, in bytes; the rest is cut with a mark.
pub const MAX_LINE: usize = 16 * 1024;

/// A build that is running: the last `BuildProgress`.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    /// `LOCALD_BUILD_ID`.
    pub build_id: String,
    /// Step now running, from 1.
    pub step: u32,
    /// Steps in all.
    pub total: u32,
    /// What the step does.
    pub label: String,
}

/// One service as the page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Service {
    /// The daemon's properties.
    #[serde(flatten)]
    pub info: ServiceInfo,
    /// The running build, if one runs.
    pub progress: Option<Progress>,
    /// Finished builds, oldest first.
    pub builds: VecDeque<BuildInfo>,
}

/// One project as the page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Project {
    /// Name.
    pub name: String,
    /// Directory.
    pub path: String,
    /// Summary state.
    pub state: String,
    /// Services in file order.
    pub services: Vec<Service>,
}

/// Everything the page shows, by project name.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Snapshot {
    /// Projects by name.
    pub projects: BTreeMap<String, Project>,
    /// Whether the daemon is on the bus.
    pub connected: bool,
}

/// One change, as it goes to the pages.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// Everything anew (start, objects added or removed, daemon back).
    Snapshot(Snapshot),
    /// A service changed; it comes whole.
    Service {
        /// Project name.
        project: String,
        /// The service.
        service: Box<Service>,
    },
    /// A project's summary state changed.
    Project {
        /// Project name.
        project: String,
        /// New state.
        state: String,
    },
    /// One output line.
    Log(LogLine),
}

/// One output line, from the bus or from the journal.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    /// Project name.
    pub project: String,
    /// Service name.
    pub service: String,
    /// `build` or `run`.
    pub phase: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// syslog priority (3 error … 6 info), when known.
    pub priority: Option<u8>,
    /// µs since the epoch.
    pub time: u64,
    /// The journal's cursor (lines from the journal only).
    pub cursor: Option<String>,
    /// The text, lossily decoded, cut at [`MAX_LINE`].
    pub text: String,
}

/// Text of a line's bytes for a page: lossy UTF-8, cut at [`MAX_LINE`].
pub fn line_text(bytes: &[u8]) -> String {
    let cut = bytes.len() > MAX_LINE;
    let mut text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_LINE)]).into_owned();
    if cut {
        text.push_str(" …[cut]");
    }
    text
}

/// µs since the epoch, now.
pub fn now_usec() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The shared model and the channel of its changes.
pub struct Hub {
    model: Mutex<Snapshot>,
    events: broadcast::Sender<Arc<str>>,
}

/// Serialized events kept for slow pages before they must resync.
const QUEUE: usize = 1024;

impl Hub {
    /// An empty model.
    pub fn new() -> Arc<Self> {
        let (events, _) = broadcast::channel(QUEUE);
        Arc::new(Self {
            model: Mutex::new(Snapshot::default()),
            events,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Snapshot> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.model.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The model now and a receiver of every change after it.
    pub fn subscribe(&self) -> (String, broadcast::Receiver<Arc<str>>) {
        let model = self.lock();
        let rx = self.events.subscribe();
        let snap = serde_json::to_string(&Event::Snapshot(model.clone())).unwrap_or_default();
        (snap, rx)
    }

    /// The model now.
    pub fn snapshot(&self) -> Snapshot {
        self.lock().clone()
    }

    /// Applies `f` to the model and sends the event it returns, under the lock.
    fn update(&self, f: impl FnOnce(&mut Snapshot) -> Option<Event>) {
        let mut model = self.lock();
        if let Some(e) = f(&mut model) {
            if let Ok(json) = serde_json::to_string(&e) {
                // No receiver is fine: no page is open.
                let _ = self.events.send(json.into());
            }
        }
    }
}

fn get<T: TryFrom<OwnedValue>>(props: &HashMap<String, OwnedValue>, key: &str) -> Option<T> {
    props
        .get(key)
        .and_then(|v| v.try_clone().ok())
        .and_then(|v| T::try_from(v).ok())
}

/// Applies the properties of a `PropertiesChanged` to a service.
pub fn apply(info: &mut ServiceInfo, changed: &HashMap<String, OwnedValue>) {
    if let Some(v) = get(changed, "State") {
        info.state = v;
    }
    if let Some(v) = get(changed, "StateReason") {
        info.state_reason = v;
    }
    if let Some(v) = get(changed, "StatusText") {
        info.status_text = v;
    }
    if let Some(v) = get(changed, "MainPID") {
        info.main_pid = v;
    }
    if let Some(v) = get(changed, "ExitStatus") {
        info.exit_status = v;
    }
    if let Some(v) = get(changed, "RestartCount") {
        info.restart_count = v;
    }
    if let Some(v) = get(changed, "StartedAt") {
        info.started_at = v;
    }
    if let Some((build_id, result, reason, source_hash, started_at, finished_at)) =
        get::<(String, String, String, String, u64, u64)>(changed, "LastBuild")
    {
        info.last_build = BuildInfo {
            build_id,
            result,
            reason,
            source_hash,
            started_at,
            finished_at,
        };
    }
}

/// The project and service names of a service object path.
fn names_of(path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix(locald_api::PROJECT_PATH_PREFIX)?;
    let mut labels = rest.trim_start_matches('/').split('/');
    let p = locald_api::unescape_label(labels.next()?)?;
    let s = locald_api::unescape_label(labels.next()?)?;
    labels.next().is_none().then_some((p, s))
}

fn service_mut<'a>(
    model: &'a mut Snapshot,
    project: &str,
    service: &str,
) -> Option<&'a mut Service> {
    model
        .projects
        .get_mut(project)?
        .services
        .iter_mut()
        .find(|s| s.info.name == service)
}

fn service_event(model: &mut Snapshot, project: &str, service: &str) -> Option<Event> {
    let s = service_mut(model, project, service)?.clone();
    Some(Event::Service {
        project: project.to_owned(),
        service: Box::new(s),
    })
}

/// The daemon the dashboard talks to: the owner of `dev.locald.Locald1`
/// last checked to be the user's (`crate::client::check_owner`); `None`
/// while there is none, or while another user holds the name. Calls go to
/// it, and signals count only from it.
#[derive(Debug, Default)]
pub struct DaemonRef(Mutex<Option<OwnedUniqueName>>);

impl DaemonRef {
    /// Starts with `owner`, already checked.
    pub fn new(owner: OwnedUniqueName) -> Arc<DaemonRef> {
        Arc::new(DaemonRef(Mutex::new(Some(owner))))
    }

    /// The checked owner, if any.
    pub fn get(&self) -> Option<OwnedUniqueName> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, owner: Option<OwnedUniqueName>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = owner;
    }
}

/// The connection and the daemon on it.
#[derive(Clone)]
struct Bus {
    conn: Connection,
    daemon: Arc<DaemonRef>,
}

/// Subscribes to the daemon's signals, reads the model once (so the first
/// page sees it whole), then follows the daemon in a task until the
/// connection ends.
pub async fn follow(
    hub: Arc<Hub>,
    conn: Connection,
    daemon: Arc<DaemonRef>,
) -> zbus::Result<tokio::task::JoinHandle<zbus::Result<()>>> {
    let rule = MatchRule::builder()
        .msg_type(MessageType::Signal)
        .sender(BUS_NAME)?
        .path_namespace(MANAGER_PATH)?
        .build();
    let stream = MessageStream::for_match_rule(rule, &conn, Some(1024)).await?;
    // The daemon coming back (or going) shows as its name changing owner.
    let dbus = zbus::fdo::DBusProxy::new(&conn).await?;
    let owners = dbus.receive_name_owner_changed().await?;
    // The name may have changed owner between the client's check and these
    // subscriptions: check again now that no change can be missed.
    match crate::client::trusted_owner(&conn, false).await {
        Ok(now) => daemon.set(now),
        Err(e) => {
            eprintln!("locald-ctl dashboard: {}", e.text());
            daemon.set(None);
        }
    }
    let bus = Bus { conn, daemon };
    resync(&hub, &bus).await;
    Ok(tokio::spawn(run(hub, bus, dbus, stream, owners)))
}

async fn run(
    hub: Arc<Hub>,
    bus: Bus,
    dbus: zbus::fdo::DBusProxy<'static>,
    mut stream: MessageStream,
    mut owners: zbus::fdo::NameOwnerChangedStream,
) -> zbus::Result<()> {
    loop {
        tokio::select! {
            m = stream.next() => {
                let Some(m) = m else { return Ok(()) };
                let Ok(m) = m else { continue };
                // The match rule names the well-known name, which follows
                // its owner: count only the one that was checked.
                let from_daemon = match (m.header().sender(), bus.daemon.get()) {
                    (Some(sender), Some(d)) => *sender == d.as_ref(),
                    _ => false,
                };
                if from_daemon {
                    handle(&hub, &bus, &m).await;
                }
            }
            o = owners.next() => {
                let Some(o) = o else { return Ok(()) };
                let Ok(a) = o.args() else { continue };
                if a.name() != BUS_NAME {
                    continue;
                }
                let checked = match a.new_owner().as_ref() {
                    Some(owner) => match crate::client::check_owner(&dbus, owner.clone()).await {
                        Ok(()) => Some(OwnedUniqueName::from(owner.to_owned())),
                        Err(e) => {
                            eprintln!("locald-ctl dashboard: {}", e.text());
                            None
                        }
                    },
                    None => None,
                };
                let up = checked.is_some();
                bus.daemon.set(checked);
                if up {
                    resync(&hub, &bus).await;
                } else {
                    // Gone (or not the user's): say so, and do not call it
                    // (a call would activate it again right after
                    // `systemctl stop`).
                    hub.update(|model| {
                        model.connected = false;
                        model.projects.clear();
                        Some(Event::Snapshot(model.clone()))
                    });
                }
            }
        }
    }
}

/// Reads everything anew with `GetManagedObjects` and subscribes to the
/// log lines of every service.
async fn resync(hub: &Hub, bus: &Bus) {
    let fetched = fetch(bus).await;
    let mut paths = Vec::new();
    hub.update(|model| {
        let old = std::mem::take(&mut model.projects);
        match fetched {
            Ok(projects) => {
                model.connected = true;
                for p in projects {
                    let services = p
                        .services
                        .into_iter()
                        .map(|info| {
                            paths.push(locald_api::service_path(&p.name, &info.name));
                            // Keep what only this process knows: the history
                            // and a running build.
                            let kept = old
                                .get(&p.name)
                                .and_then(|o| o.services.iter().find(|s| s.info.name == info.name));
                            let mut builds = kept.map(|k| k.builds.clone()).unwrap_or_default();
                            let b = &info.last_build;
                            if b.finished_at != 0
                                && !builds.iter().any(|x| x.build_id == b.build_id)
                            {
                                builds.push_back(b.clone());
                            }
                            let progress = kept
                                .and_then(|k| k.progress.clone())
                                .filter(|_| b.result == "running");
                            Service {
                                info,
                                progress,
                                builds,
                            }
                        })
                        .collect();
                    model.projects.insert(
                        p.name.clone(),
                        Project {
                            name: p.name,
                            path: p.path,
                            state: p.state,
                            services,
                        },
                    );
                }
            }
            Err(_) => model.connected = false,
        }
        Some(Event::Snapshot(model.clone()))
    });
    for path in paths {
        subscribe_logs(bus, path).await;
    }
}

async fn subscribe_logs(bus: &Bus, path: OwnedObjectPath) {
    let Some(daemon) = bus.daemon.get() else {
        return;
    };
    let proxy = locald_api::Service1Proxy::builder(&bus.conn)
        .destination(daemon)
        .and_then(|b| b.path(path.into_inner()))
        .map(|b| b.cache_properties(CacheProperties::No));
    if let Ok(b) = proxy {
        if let Ok(p) = b.build().await {
            // Already subscribed, or the service just went: nothing to do.
            let _ = p.subscribe_logs().await;
        }
    }
}

/// Every project and service, from one `GetManagedObjects`.
async fn fetch(bus: &Bus) -> Result<Vec<crate::status::ProjectStatus>, zbus::Error> {
    let daemon = bus
        .daemon
        .get()
        .ok_or_else(|| zbus::Error::Failure("no daemon of yours owns the name".into()))?;
    let om = zbus::fdo::ObjectManagerProxy::builder(&bus.conn)
        .destination(daemon)?
        .path(MANAGER_PATH)?
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    let objects = om.get_managed_objects().await?;
    crate::status::decode(&objects).map_err(|e| zbus::Error::Failure(format!("{e:?}")))
}

/// Follows one signal of the daemon into the model.
async fn handle(hub: &Hub, bus: &Bus, m: &zbus::Message) {
    let header = m.header();
    let (Some(path), Some(member)) = (header.path(), header.member()) else {
        return;
    };
    match member.as_str() {
        // Objects came or went: read them all anew, which also subscribes to
        // the log lines of a new service.
        "InterfacesAdded" | "InterfacesRemoved" => resync(hub, bus).await,
        member => {
            if let Some(change) = Change::decode(member, path.as_str(), &m.body(), now_usec) {
                hub.update(|model| change.apply_to(model));
            }
        }
    }
}

/// What one signal of the daemon changes in the model. Decoding a message
/// and applying it to the model are two steps so that each can be tested
/// without a bus.
#[derive(Debug)]
enum Change {
    /// A service's `PropertiesChanged`.
    Service {
        /// Project name.
        project: String,
        /// Service name.
        service: String,
        /// The properties that changed, with their new values.
        changed: HashMap<String, OwnedValue>,
    },
    /// A project's `PropertiesChanged` with a new `State`.
    Project {
        /// Project name.
        project: String,
        /// New state.
        state: String,
    },
    /// `BuildProgress`: a build went on to its next step.
    Progress {
        /// Project name.
        project: String,
        /// Service name.
        service: String,
        /// The step now running.
        progress: Progress,
    },
    /// `BuildFinished`.
    Finished {
        /// Project name.
        project: String,
        /// Service name.
        service: String,
        /// The finished build.
        build: BuildInfo,
    },
    /// `LogLine`.
    Log(LogLine),
}

impl Change {
    /// The change that signal `member` of the object at `path` carries in
    /// `body`; `None` for a signal the page does not show or a body that
    /// does not decode. `now` stamps a log line, whose time the bus does
    /// not carry.
    fn decode(
        member: &str,
        path: &str,
        body: &zbus::message::Body,
        now: impl FnOnce() -> u64,
    ) -> Option<Change> {
        match member {
            "PropertiesChanged" => Self::properties(path, body),
            "BuildProgress" => {
                let (project, service, build_id, step, total, label) = body
                    .deserialize::<(String, String, String, u32, u32, String)>()
                    .ok()?;
                Some(Change::Progress {
                    project,
                    service,
                    progress: Progress {
                        build_id,
                        step,
                        total,
                        label,
                    },
                })
            }
            "BuildFinished" => {
                let (project, service, build) =
                    body.deserialize::<(String, String, BuildInfo)>().ok()?;
                Some(Change::Finished {
                    project,
                    service,
                    build,
                })
            }
            "LogLine" => Self::log_line(path, body, now),
            _ => None,
        }
    }

    /// A `PropertiesChanged` of a service or of a project (only its
    /// `State` is shown); other interfaces change nothing on the page.
    fn properties(path: &str, body: &zbus::message::Body) -> Option<Change> {
        type Changed = (String, HashMap<String, OwnedValue>, Vec<String>);
        let (iface, changed, _) = body.deserialize::<Changed>().ok()?;
        if iface == SERVICE_INTERFACE {
            let (project, service) = names_of(path)?;
            Some(Change::Service {
                project,
                service,
                changed,
            })
        } else if iface == PROJECT_INTERFACE {
            let state = get::<String>(&changed, "State")?;
            let project = path
                .strip_prefix(locald_api::PROJECT_PATH_PREFIX)
                .map(|l| l.trim_start_matches('/'))
                .and_then(locald_api::unescape_label)?;
            Some(Change::Project { project, state })
        } else {
            None
        }
    }

    /// A `LogLine` of the service at `path`, stamped with `now()`.
    fn log_line(
        path: &str,
        body: &zbus::message::Body,
        now: impl FnOnce() -> u64,
    ) -> Option<Change> {
        let (service, phase, stream, line) = body
            .deserialize::<(String, String, String, Vec<u8>)>()
            .ok()?;
        let (project, _) = names_of(path)?;
        Some(Change::Log(LogLine {
            project,
            service,
            // The bus does not carry it (the journal sink derives it
            // from `stderr_priority` and `<N>` prefixes): no guess.
            priority: None,
            phase,
            stream,
            time: now(),
            cursor: None,
            text: line_text(&line),
        }))
    }

    /// Applies the change to `model` and gives the event that tells the
    /// pages; `None`, with the model untouched, when it has no such project
    /// or service (a resync reads it whole when objects come).
    fn apply_to(self, model: &mut Snapshot) -> Option<Event> {
        match self {
            Change::Service {
                project,
                service,
                changed,
            } => {
                apply(&mut service_mut(model, &project, &service)?.info, &changed);
                service_event(model, &project, &service)
            }
            Change::Project { project, state } => {
                model.projects.get_mut(&project)?.state = state.clone();
                Some(Event::Project { project, state })
            }
            Change::Progress {
                project,
                service,
                progress,
            } => {
                service_mut(model, &project, &service)?.progress = Some(progress);
                service_event(model, &project, &service)
            }
            Change::Finished {
                project,
                service,
                build,
            } => {
                finish_build(service_mut(model, &project, &service)?, build);
                service_event(model, &project, &service)
            }
            Change::Log(line) => Some(Event::Log(line)),
        }
    }
}

/// Ends `svc`'s running build with `build`. It joins the history unless a
/// build of its id is there already (a resync may have put it there); one
/// without an id cannot be told apart and always joins. The history keeps
/// the last [`HISTORY`] builds.
fn finish_build(svc: &mut Service, build: BuildInfo) {
    svc.progress = None;
    if !svc.builds.iter().any(|b| b.build_id == build.build_id) || build.build_id.is_empty() {
        svc.builds.push_back(build.clone());
    }
    while svc.builds.len() > HISTORY {
        svc.builds.pop_front();
    }
    svc.info.last_build = build;
}

/// The path of a service object.
#[cfg(test)]
fn service_object(project: &str, service: &str) -> OwnedObjectPath {
    locald_api::service_path(project, service)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_paths_name_their_service() {
        let p = service_object("shop-1", "web_2");
        assert_eq!(
            names_of(p.as_str()),
            Some(("shop-1".to_owned(), "web_2".to_owned()))
        );
        assert_eq!(names_of(MANAGER_PATH), None);
    }

    #[test]
    fn long_lines_are_cut_and_bad_bytes_kept_visible() {
        let t = line_text(&vec![b'a'; MAX_LINE + 10]);
        assert!(t.ends_with("…[cut]") && t.len() < MAX_LINE + 20);
        assert_eq!(line_text(&[b'h', 0xff]), "h\u{fffd}");
    }

    #[test]
    fn changed_properties_apply() {
        let mut info = ServiceInfo::default();
        let mut changed = HashMap::new();
        changed.insert(
            "State".to_owned(),
            OwnedValue::from(zbus::zvariant::Str::from("running")),
        );
        changed.insert("MainPID".to_owned(), OwnedValue::from(42u32));
        apply(&mut info, &changed);
        assert_eq!((info.state.as_str(), info.main_pid), ("running", 42));
    }

    /// A signal as the daemon sends it, from `path`.
    fn signal<B>(path: &str, iface: &str, member: &str, body: &B) -> zbus::Message
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        zbus::Message::signal(path, iface, member)
            .and_then(|b| b.build(body))
            .expect("a signal")
    }

    /// What `signal` does to `model`, as `handle` applies it, at time 7.
    fn follow(model: &mut Snapshot, m: &zbus::Message) -> Option<Event> {
        let header = m.header();
        let path = header.path().expect("a path").as_str();
        let member = header.member().expect("a member").as_str();
        Change::decode(member, path, &m.body(), || 7)?.apply_to(model)
    }

    /// A model with project `shop` and its service `web`.
    fn shop() -> Snapshot {
        let web = Service {
            info: ServiceInfo {
                name: "web".into(),
                project: "shop".into(),
                state: "starting".into(),
                ..ServiceInfo::default()
            },
            progress: None,
            builds: VecDeque::new(),
        };
        let mut model = Snapshot::default();
        model.projects.insert(
            "shop".into(),
            Project {
                name: "shop".into(),
                path: "/src/shop".into(),
                state: "starting".into(),
                services: vec![web],
            },
        );
        model
    }

    fn web(model: &Snapshot) -> &Service {
        &model.projects["shop"].services[0]
    }

    #[test]
    fn signals_become_model_changes() {
        let mut model = shop();
        let web_path = service_object("shop", "web");
        let web_path = web_path.as_str();
        let project_path = locald_api::project_path("shop");

        let changed: HashMap<&str, zbus::zvariant::Value<'_>> =
            HashMap::from([("State", "running".into()), ("MainPID", 42u32.into())]);
        let props = (SERVICE_INTERFACE, changed, Vec::<String>::new());
        let event = follow(
            &mut model,
            &signal(
                web_path,
                "org.freedesktop.DBus.Properties",
                "PropertiesChanged",
                &props,
            ),
        );
        assert!(matches!(event, Some(Event::Service { ref project, .. }) if project == "shop"));
        assert_eq!(
            (web(&model).info.state.as_str(), web(&model).info.main_pid),
            ("running", 42)
        );

        let changed: HashMap<&str, zbus::zvariant::Value<'_>> =
            HashMap::from([("State", "running".into())]);
        let props = (PROJECT_INTERFACE, changed, Vec::<String>::new());
        let event = follow(
            &mut model,
            &signal(
                project_path.as_str(),
                "org.freedesktop.DBus.Properties",
                "PropertiesChanged",
                &props,
            ),
        );
        assert!(matches!(event, Some(Event::Project { ref state, .. }) if state == "running"));
        assert_eq!(model.projects["shop"].state, "running");

        let step = ("shop", "web", "b1", 2u32, 3u32, "compile");
        let event = follow(
            &mut model,
            &signal(web_path, SERVICE_INTERFACE, "BuildProgress", &step),
        );
        assert!(event.is_some());
        let progress = web(&model).progress.as_ref().expect("a running build");
        assert_eq!(
            (progress.step, progress.total, progress.label.as_str()),
            (2, 3, "compile")
        );

        let build = BuildInfo {
            build_id: "b1".into(),
            result: "succeeded".into(),
            ..BuildInfo::default()
        };
        let finished = ("shop", "web", build.clone());
        let m = signal(web_path, SERVICE_INTERFACE, "BuildFinished", &finished);
        follow(&mut model, &m);
        follow(&mut model, &m);
        assert!(web(&model).progress.is_none());
        assert_eq!(web(&model).builds.len(), 1, "one build, once");
        assert_eq!(web(&model).info.last_build, build);

        let line = ("web", "run", "stdout", b"hello".to_vec());
        let event = follow(
            &mut model,
            &signal(web_path, SERVICE_INTERFACE, "LogLine", &line),
        );
        let Some(Event::Log(line)) = event else {
            panic!("a log line, not {event:?}");
        };
        assert_eq!(
            (
                line.project.as_str(),
                line.service.as_str(),
                line.time,
                line.text.as_str()
            ),
            ("shop", "web", 7, "hello")
        );
    }

    #[test]
    fn signals_about_the_unknown_change_nothing() {
        let mut model = shop();
        let before = serde_json::to_string(&model).expect("json");
        let other = service_object("shop", "db");
        let changed: HashMap<&str, zbus::zvariant::Value<'_>> =
            HashMap::from([("State", "running".into())]);
        let props = (SERVICE_INTERFACE, changed, Vec::<String>::new());
        let m = signal(
            other.as_str(),
            "org.freedesktop.DBus.Properties",
            "PropertiesChanged",
            &props,
        );
        assert!(follow(&mut model, &m).is_none(), "no such service");
        let m = signal(
            service_object("shop", "web").as_str(),
            SERVICE_INTERFACE,
            "BuildProgress",
            &("shop", "web"),
        );
        assert!(follow(&mut model, &m).is_none(), "a body of the wrong type");
        assert_eq!(serde_json::to_string(&model).expect("json"), before);
    }
}
