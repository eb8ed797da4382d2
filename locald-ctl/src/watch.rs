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
use zbus::message::Type as MessageType;
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
    let rule = MatchRule::builder()
        .msg_type(MessageType::Signal)
        .sender(client.daemon.clone())
        .and_then(|b| b.path_namespace(MANAGER_PATH))
        .map_err(CtlError::zbus)?
        .build();
    let mut stream = MessageStream::for_match_rule(rule, &client.conn, Some(256))
        .await
        .map_err(CtlError::zbus)?;
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
    let mut objects = Objects {
        by_path: HashMap::new(),
        scoped: project.is_some(),
    };
    objects.show(&projects, project.as_deref());
    let prefix = project
        .as_deref()
        .map(|p| locald_api::project_path(p).to_string());
    let wanted = |path: &str| {
        prefix
            .as_deref()
            .is_none_or(|p| path == p || path.starts_with(&format!("{p}/")))
    };
    loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            o = owners.next() => {
                let Some(owner) = o.as_ref().and_then(|o| o.args().ok()).and_then(|a| a.new_owner().as_ref().map(|n| n.to_owned())) else {
                    print("locald stopped");
                    continue;
                };
                match crate::client::check_owner(&dbus, owner.as_ref()).await {
                    Ok(()) => {
                        let rule = MatchRule::builder()
                            .msg_type(MessageType::Signal)
                            .sender(owner.clone())
                            .and_then(|b| b.path_namespace(MANAGER_PATH))
                            .map_err(CtlError::zbus)?
                            .build();
                        stream = MessageStream::for_match_rule(rule, &client.conn, Some(256))
                            .await
                            .map_err(CtlError::zbus)?;
                        print("locald started");
                        // What it brought back, read after subscribing.
                        let projects =
                            crate::status::fetch_from(&client.conn, owner.as_ref()).await?;
                        objects.by_path.clear();
                        objects.show(&projects, project.as_deref());
                    }
                    Err(e) => print(&format!("warning: {}", e.text())),
                }
                continue;
            }
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        };
        let Some(msg) = msg else {
            return Err(CtlError::Unreachable("the daemon left the bus".into()));
        };
        let Ok(msg) = msg else { continue };
        let header = msg.header();
        let (Some(path), Some(member)) = (header.path(), header.member()) else {
            continue;
        };
        let path = path.as_str();
        match member.as_str() {
            "PropertiesChanged" if wanted(path) => {
                let Ok((iface, changed, _)) =
                    msg.body()
                        .deserialize::<(String, HashMap<String, OwnedValue>, Vec<String>)>()
                else {
                    continue;
                };
                if iface == SERVICE_INTERFACE || iface == PROJECT_INTERFACE {
                    for line in describe(objects.entry(path), &changed) {
                        print(&line);
                    }
                }
            }
            "InterfacesAdded" => {
                type Added = (
                    OwnedObjectPath,
                    HashMap<String, HashMap<String, OwnedValue>>,
                );
                let Ok((p, ifaces)) = msg.body().deserialize::<Added>() else {
                    continue;
                };
                if wanted(p.as_str()) {
                    let props = ifaces
                        .get(SERVICE_INTERFACE)
                        .or_else(|| ifaces.get(PROJECT_INTERFACE));
                    let known = objects.entry(p.as_str());
                    if let Some(props) = props {
                        known.state = get(props, "State").unwrap_or_default();
                        known.reason = get(props, "StateReason").unwrap_or_default();
                        known.restarts = get(props, "RestartCount").unwrap_or_default();
                    }
                    print(&format!("{}: added", known.who));
                }
            }
            "InterfacesRemoved" => {
                let Ok((p, _)) = msg.body().deserialize::<(OwnedObjectPath, Vec<String>)>() else {
                    continue;
                };
                if wanted(p.as_str()) {
                    let who = objects.entry(p.as_str()).who.clone();
                    objects.by_path.remove(p.as_str());
                    print(&format!("{who}: removed"));
                }
            }
            "BuildProgress" => {
                if let Ok((p, s, _, step, total, label)) =
                    msg.body()
                        .deserialize::<(String, String, String, u32, u32, String)>()
                {
                    if project.as_ref().is_none_or(|n| n == &p) {
                        let who = objects.service_name(&p, &s);
                        print(&format!("{who}: build step {step}/{total} {label}"));
                    }
                }
            }
            "BuildFinished" => {
                if let Ok((p, s, b)) = msg.body().deserialize::<(String, String, BuildInfo)>() {
                    if project.as_ref().is_none_or(|n| n == &p) {
                        print(&build_line(&objects.service_name(&p, &s), &b));
                    }
                }
            }
            _ => {}
        }
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
}
