//! `watch`: prints every change the daemon announces, one line each and in
//! words (`web: running → healthy`, `web: restarted (2)`, `web: pid 1234`),
//! until interrupted. It listens to the same signals an editor would:
//! `PropertiesChanged`, `InterfacesAdded`/`Removed` and the build signals,
//! and remembers each service's state to say what it changed from.
//!
//! Not every property gets a line: `ExitStatus` is in the reason of the
//! state that follows (`running → error (exited with status 3)`),
//! `StartedAt` comes with a new pid, and `LastBuild` with `BuildFinished`.

use std::collections::HashMap;
use std::process::ExitCode;

use futures_util::StreamExt;
use zbus::message::{Body, Type as MessageType};
use zbus::names::UniqueName;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};
use zbus::{MatchRule, MessageStream};

use locald_api::{BuildInfo, MANAGER_PATH, PROJECT_INTERFACE, SERVICE_INTERFACE};

use crate::client::{Client, CtlError};

/// What `watch` knows of one project or service, to put changes in words.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Known {
    /// How lines name it: `web` (or `shop/web` when watching every
    /// project), `project shop`.
    pub who: String,
    /// Its state.
    pub state: String,
    /// Why it is in that state.
    pub reason: String,
    /// Restarts so far.
    pub restarts: u32,
}

fn get<T: TryFrom<OwnedValue>>(props: &HashMap<String, OwnedValue>, key: &str) -> Option<T> {
    props
        .get(key)
        .and_then(|v| v.try_clone().ok())
        .and_then(|v| T::try_from(v).ok())
}

/// `state`, with the reason when it says more than the state itself.
fn with_reason(state: &str, reason: &str) -> String {
    if reason.is_empty() || reason == state {
        state.to_owned()
    } else {
        format!("{state} ({reason})")
    }
}

/// The lines a `PropertiesChanged` of `known` means, updating `known`.
pub fn describe(known: &mut Known, changed: &HashMap<String, OwnedValue>) -> Vec<String> {
    let who = known.who.clone();
    let mut lines = Vec::new();
    let reason = get::<String>(changed, "StateReason");
    match get::<String>(changed, "State") {
        Some(state) if state != known.state => {
            let reason = reason.unwrap_or_else(|| known.reason.clone());
            lines.push(format!(
                "{who}: {} → {}",
                known.state,
                with_reason(&state, &reason)
            ));
            known.state = state;
            known.reason = reason;
        }
        _ => {
            if let Some(reason) = reason.filter(|r| *r != known.reason) {
                if !reason.is_empty() && reason != known.state {
                    lines.push(format!("{who}: {}", with_reason(&known.state, &reason)));
                }
                known.reason = reason;
            }
        }
    }
    if let Some(pid) = get::<u32>(changed, "MainPID").filter(|&p| p != 0) {
        lines.push(format!("{who}: pid {pid}"));
    }
    if let Some(n) = get::<u32>(changed, "RestartCount") {
        if n > known.restarts {
            lines.push(format!("{who}: restarted ({n})"));
        }
        known.restarts = n;
    }
    if let Some(text) = get::<String>(changed, "StatusText").filter(|t| !t.is_empty()) {
        lines.push(format!("{who}: status \"{text}\""));
    }
    lines
}

/// A finished build in words: `web: build succeeded — source changed: …`.
pub fn build_line(who: &str, b: &BuildInfo) -> String {
    match (b.result.as_str(), b.reason.is_empty()) {
        ("failed", false) => format!("{who}: build failed: {}", b.reason),
        (result, true) => format!("{who}: build {result}"),
        (result, false) => format!("{who}: build {result} — {}", b.reason),
    }
}

/// Everything known, by object path, and how to name what is not.
struct Objects {
    by_path: HashMap<String, Known>,
    /// Service names alone when watching one project.
    scoped: bool,
}

impl Objects {
    /// Prints each project (only `only`, if given) and service as it is
    /// now, and remembers them.
    fn show(&mut self, projects: &[crate::status::ProjectStatus], only: Option<&str>) {
        for p in projects {
            if only.is_some_and(|n| n != p.name) {
                continue;
            }
            let known = Known {
                who: format!("project {}", p.name),
                state: p.state.clone(),
                ..Known::default()
            };
            print(&format!("{}: {}", known.who, known.state));
            self.by_path
                .insert(locald_api::project_path(&p.name).to_string(), known);
            for s in &p.services {
                let known = Known {
                    who: self.service_name(&p.name, &s.name),
                    state: s.state.clone(),
                    reason: s.state_reason.clone(),
                    restarts: s.restart_count,
                };
                print(&format!(
                    "{}: {}",
                    known.who,
                    with_reason(&s.state, &s.state_reason)
                ));
                self.by_path.insert(
                    locald_api::service_path(&p.name, &s.name).to_string(),
                    known,
                );
            }
        }
    }

    fn service_name(&self, project: &str, service: &str) -> String {
        if self.scoped {
            service.to_owned()
        } else {
            format!("{project}/{service}")
        }
    }

    /// The entry for `path`, named from the path when it is new.
    fn entry(&mut self, path: &str) -> &mut Known {
        let scoped = self.scoped;
        self.by_path.entry(path.to_owned()).or_insert_with(|| {
            let labels: Vec<String> = path
                .strip_prefix(locald_api::PROJECT_PATH_PREFIX)
                .unwrap_or(path)
                .trim_start_matches('/')
                .split('/')
                .map(|l| locald_api::unescape_label(l).unwrap_or_else(|| l.to_owned()))
                .collect();
            let who = match labels.as_slice() {
                [project] => format!("project {project}"),
                [_, service] if scoped => service.clone(),
                _ => labels.join("/"),
            };
            Known {
                who,
                ..Known::default()
            }
        })
    }
}

/// One line of `watch`: everything in it came from the daemon (reasons,
/// build labels), so it is shown escaped.
fn print(text: &str) {
    println!(
        "{} {}",
        crate::clock::now_hms(),
        locald_core::text::sanitize(text)
    );
}

/// `watch`.
pub async fn watch(client: &Client) -> Result<ExitCode, CtlError> {
    let project = client.resolve_optional().await?;
    let mut stream = signals_of(&client.conn, client.daemon.as_ref()).await?;
    // A daemon restart gives the name a new owner: followed once it is
    // checked to be the caller's (crate::client::check_owner).
    let dbus = zbus::fdo::DBusProxy::new(&client.conn)
        .await
        .map_err(CtlError::zbus)?;
    let mut owners = dbus
        .receive_name_owner_changed_with_args(&[(0, locald_api::BUS_NAME)])
        .await
        .map_err(CtlError::zbus)?;
    // Initial state, after subscribing so nothing falls in between.
    let projects = crate::status::fetch(client).await?;
    let mut watched = Watched::new(project);
    watched.show(&projects);
    // An ended stream of owner changes (the connection closing) is not a
    // change: it is no longer polled.
    let mut owners_open = true;
    loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            o = owners.next(), if owners_open => {
                if o.is_none() {
                    owners_open = false;
                    continue;
                }
                owner_changed(client, &dbus, o, &mut stream, &mut watched).await?;
                continue;
            }
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        };
        let Some(msg) = msg else {
            return Err(CtlError::Unreachable("the daemon left the bus".into()));
        };
        let Ok(msg) = msg else { continue };
        for line in watched.lines(&msg) {
            print(&line);
        }
    }
}

/// The signals of `daemon` (a checked owner of the name) under the
/// manager's path: every object it announces lives there.
pub(crate) async fn signals_of(
    conn: &zbus::Connection,
    daemon: UniqueName<'_>,
) -> Result<MessageStream, CtlError> {
    let rule = MatchRule::builder()
        .msg_type(MessageType::Signal)
        .sender(daemon)
        .and_then(|b| b.path_namespace(MANAGER_PATH))
        .map_err(CtlError::zbus)?
        .build();
    MessageStream::for_match_rule(rule, conn, Some(256))
        .await
        .map_err(CtlError::zbus)
}

/// Follows the name to its new owner. Gone: says so. The caller's own
/// daemon: `stream` is replaced by its signals and what it brought back is
/// shown anew. Another user's: a warning, and `stream` stays on the old
/// owner, so nothing the new one sends is believed.
async fn owner_changed(
    client: &Client,
    dbus: &zbus::fdo::DBusProxy<'_>,
    change: Option<zbus::fdo::NameOwnerChanged>,
    stream: &mut MessageStream,
    watched: &mut Watched,
) -> Result<(), CtlError> {
    let Some(owner) = change
        .as_ref()
        .and_then(|o| o.args().ok())
        .and_then(|a| a.new_owner().as_ref().map(|n| n.to_owned()))
    else {
        print("locald stopped");
        return Ok(());
    };
    match crate::client::check_owner(dbus, owner.as_ref()).await {
        Ok(()) => {
            *stream = signals_of(&client.conn, owner.as_ref()).await?;
            print("locald started");
            // What it brought back, read after subscribing.
            let projects = crate::status::fetch_from(&client.conn, owner.as_ref()).await?;
            watched.objects.by_path.clear();
            watched.show(&projects);
        }
        Err(e) => print(&format!("warning: {}", e.text())),
    }
    Ok(())
}

/// What `watch` follows (one project, or every one) and what it knows of
/// it; turns each signal into the lines it means.
struct Watched {
    /// The project watched, or `None` for every project.
    project: Option<String>,
    /// That project's object path: its objects are it and those below.
    prefix: Option<String>,
    /// Everything known so far.
    objects: Objects,
}

impl Watched {
    /// Watching `project`, or every project; nothing known yet.
    fn new(project: Option<String>) -> Self {
        let prefix = project
            .as_deref()
            .map(|p| locald_api::project_path(p).to_string());
        let objects = Objects {
            by_path: HashMap::new(),
            scoped: project.is_some(),
        };
        Self {
            project,
            prefix,
            objects,
        }
    }

    /// Prints and remembers what is watched of `projects`.
    fn show(&mut self, projects: &[crate::status::ProjectStatus]) {
        self.objects.show(projects, self.project.as_deref());
    }

    /// Whether the object at `path` is watched.
    fn wanted(&self, path: &str) -> bool {
        self.prefix
            .as_deref()
            .is_none_or(|p| path == p || path.starts_with(&format!("{p}/")))
    }

    /// Whether a build signal's project is watched (build signals name
    /// their project and service in the body, not in the path).
    fn wanted_project(&self, project: &str) -> bool {
        self.project.as_deref().is_none_or(|n| n == project)
    }

    /// The lines signal `msg` means, updating what is known; none for a
    /// signal about something not watched or that does not decode.
    fn lines(&mut self, msg: &zbus::Message) -> Vec<String> {
        let header = msg.header();
        let (Some(path), Some(member)) = (header.path(), header.member()) else {
            return Vec::new();
        };
        let body = msg.body();
        match member.as_str() {
            "PropertiesChanged" if self.wanted(path.as_str()) => {
                self.properties_changed(path.as_str(), &body)
            }
            "InterfacesAdded" => self.added(&body).into_iter().collect(),
            "InterfacesRemoved" => self.removed(&body).into_iter().collect(),
            "BuildProgress" => self.build_progress(&body).into_iter().collect(),
            "BuildFinished" => self.build_finished(&body).into_iter().collect(),
            _ => Vec::new(),
        }
    }

    /// A `PropertiesChanged` of a service or project at `path`, in words.
    fn properties_changed(&mut self, path: &str, body: &Body) -> Vec<String> {
        let Ok((iface, changed, _)) =
            body.deserialize::<(String, HashMap<String, OwnedValue>, Vec<String>)>()
        else {
            return Vec::new();
        };
        if iface == SERVICE_INTERFACE || iface == PROJECT_INTERFACE {
            describe(self.objects.entry(path), &changed)
        } else {
            Vec::new()
        }
    }

    /// `InterfacesAdded`: remembers the object's state, so its first
    /// change can say what it changed from.
    fn added(&mut self, body: &Body) -> Option<String> {
        type Added = (
            OwnedObjectPath,
            HashMap<String, HashMap<String, OwnedValue>>,
        );
        let (p, ifaces) = body.deserialize::<Added>().ok()?;
        if !self.wanted(p.as_str()) {
            return None;
        }
        let props = ifaces
            .get(SERVICE_INTERFACE)
            .or_else(|| ifaces.get(PROJECT_INTERFACE));
        let known = self.objects.entry(p.as_str());
        if let Some(props) = props {
            known.state = get(props, "State").unwrap_or_default();
            known.reason = get(props, "StateReason").unwrap_or_default();
            known.restarts = get(props, "RestartCount").unwrap_or_default();
        }
        Some(format!("{}: added", known.who))
    }

    /// `InterfacesRemoved`: forgets the object.
    fn removed(&mut self, body: &Body) -> Option<String> {
        let (p, _) = body.deserialize::<(OwnedObjectPath, Vec<String>)>().ok()?;
        if !self.wanted(p.as_str()) {
            return None;
        }
        let who = self.objects.entry(p.as_str()).who.clone();
        self.objects.by_path.remove(p.as_str());
        Some(format!("{who}: removed"))
    }

    /// `BuildProgress`: the step a build went on to.
    fn build_progress(&self, body: &Body) -> Option<String> {
        let (p, s, _, step, total, label) = body
            .deserialize::<(String, String, String, u32, u32, String)>()
            .ok()?;
        self.wanted_project(&p).then(|| {
            let who = self.objects.service_name(&p, &s);
            format!("{who}: build step {step}/{total} {label}")
        })
    }

    /// `BuildFinished`: how a build ended.
    fn build_finished(&self, body: &Body) -> Option<String> {
        let (p, s, b) = body.deserialize::<(String, String, BuildInfo)>().ok()?;
        self.wanted_project(&p)
            .then(|| build_line(&self.objects.service_name(&p, &s), &b))
    }
}

#[cfg(test)]
mod tests {
    use zbus::zvariant::Value;

    use super::*;

    fn props(pairs: &[(&str, Value<'static>)]) -> HashMap<String, OwnedValue> {
        pairs
            .iter()
            .map(|(k, v)| {
                let v = OwnedValue::try_from(v.try_clone().expect("clone")).expect("owned");
                ((*k).to_owned(), v)
            })
            .collect()
    }

    #[test]
    fn changes_in_words() {
        let mut web = Known {
            who: "web".into(),
            state: "starting".into(),
            ..Known::default()
        };
        let lines = describe(
            &mut web,
            &props(&[
                ("State", Value::from("running")),
                ("MainPID", Value::from(1234u32)),
                ("StartedAt", Value::from(1_764_601_200_123_456u64)),
            ]),
        );
        assert_eq!(lines, ["web: starting → running", "web: pid 1234"]);

        let lines = describe(
            &mut web,
            &props(&[
                ("State", Value::from("error")),
                ("MainPID", Value::from(0u32)),
                ("StateReason", Value::from("exited with status 3")),
            ]),
        );
        assert_eq!(lines, ["web: running → error (exited with status 3)"]);

        let lines = describe(&mut web, &props(&[("RestartCount", Value::from(2u32))]));
        assert_eq!(lines, ["web: restarted (2)"]);

        let lines = describe(
            &mut web,
            &props(&[
                ("State", Value::from("stopped")),
                ("StateReason", Value::from("stopped")),
                ("ExitStatus", Value::from(143i32)),
            ]),
        );
        assert_eq!(lines, ["web: error → stopped"], "the state once");

        let lines = describe(
            &mut web,
            &props(&[("StatusText", Value::from("listening on :8080"))]),
        );
        assert_eq!(lines, ["web: status \"listening on :8080\""]);
    }

    #[test]
    fn builds_in_words() {
        let b = |result: &str, reason: &str| BuildInfo {
            result: result.into(),
            reason: reason.into(),
            ..BuildInfo::default()
        };
        assert_eq!(
            build_line("web", &b("succeeded", "source changed")),
            "web: build succeeded — source changed"
        );
        assert_eq!(
            build_line("web", &b("failed", "exit status 2")),
            "web: build failed: exit status 2"
        );
        assert_eq!(build_line("web", &b("skipped", "")), "web: build skipped");
    }

    /// A signal as the daemon sends it, from `path`.
    fn signal<B>(path: &str, member: &str, body: &B) -> zbus::Message
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        zbus::Message::signal(path, "dev.locald.Test", member)
            .and_then(|b| b.build(body))
            .expect("a signal")
    }

    #[test]
    fn signals_in_words() {
        let mut watched = Watched::new(Some("shop".into()));
        let web = locald_api::service_path("shop", "web");
        let db = locald_api::service_path("other", "db");
        let manager = MANAGER_PATH;

        let props: HashMap<&str, Value<'_>> =
            HashMap::from([("State", "starting".into()), ("RestartCount", 1u32.into())]);
        let ifaces = HashMap::from([(SERVICE_INTERFACE, props)]);
        let added = signal(manager, "InterfacesAdded", &(web.clone(), ifaces));
        assert_eq!(watched.lines(&added), ["web: added"]);

        let changed: HashMap<&str, Value<'_>> = HashMap::from([("State", "running".into())]);
        let body = (SERVICE_INTERFACE, changed, Vec::<String>::new());
        let m = signal(web.as_str(), "PropertiesChanged", &body);
        assert_eq!(watched.lines(&m), ["web: starting → running"]);
        let m = signal(db.as_str(), "PropertiesChanged", &body);
        assert!(watched.lines(&m).is_empty(), "another project's service");

        let step = ("shop", "web", "b1", 1u32, 2u32, "compile");
        let m = signal(manager, "BuildProgress", &step);
        assert_eq!(watched.lines(&m), ["web: build step 1/2 compile"]);
        let step = ("other", "db", "b2", 1u32, 2u32, "compile");
        assert!(watched
            .lines(&signal(manager, "BuildProgress", &step))
            .is_empty());

        let build = BuildInfo {
            result: "succeeded".into(),
            ..BuildInfo::default()
        };
        let m = signal(manager, "BuildFinished", &("shop", "web", build));
        assert_eq!(watched.lines(&m), ["web: build succeeded"]);

        let removed = (web.clone(), vec![SERVICE_INTERFACE]);
        let m = signal(manager, "InterfacesRemoved", &removed);
        assert_eq!(watched.lines(&m), ["web: removed"]);
        assert!(watched.objects.by_path.is_empty());

        let m = signal(manager, "BuildFinished", &("shop", "web"));
        assert!(watched.lines(&m).is_empty(), "a body of the wrong type");
    }
}
