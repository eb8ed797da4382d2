//! `watch`: prints every change the daemon announces, one line each, until
//! interrupted. It listens to the same signals an editor would:
//! `PropertiesChanged`, `InterfacesAdded`/`Removed` and the build signals.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::SystemTime;

use futures_util::StreamExt;
use zbus::message::Type as MessageType;
use zbus::zvariant::{OwnedValue, Value};
use zbus::{MatchRule, MessageStream};

use locald_api::{BuildInfo, BUS_NAME, MANAGER_PATH, SERVICE_INTERFACE};

use crate::client::{Client, CtlError};

fn now() -> String {
    let t = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    // "2026-11-22T03:04:05Z" → "03:04:05"
    t.get(11..19).unwrap_or(&t).to_owned()
}

fn show(v: &Value<'_>) -> String {
    match v {
        Value::Str(s) => s.to_string(),
        Value::U32(n) => n.to_string(),
        Value::I32(n) => n.to_string(),
        Value::U64(n) => n.to_string(),
        other => match other
            .try_to_owned()
            .ok()
            .and_then(|v| BuildInfo::try_from(v).ok())
        {
            Some(b) if b.is_empty() => "-".to_owned(),
            Some(b) => format!("{} ({})", b.result, b.reason),
            None => other.to_string(),
        },
    }
}

/// `project/service` for a service path, from what is known about it.
struct Names {
    by_path: HashMap<String, String>,
}

impl Names {
    fn of(&self, path: &str) -> String {
        self.by_path.get(path).cloned().unwrap_or_else(|| {
            path.strip_prefix(locald_api::PROJECT_PATH_PREFIX)
                .unwrap_or(path)
                .trim_start_matches('/')
                .split('/')
                .map(|l| locald_api::unescape_label(l).unwrap_or_else(|| l.to_owned()))
                .collect::<Vec<_>>()
                .join("/")
        })
    }
}

/// `watch`.
pub async fn watch(client: &Client) -> Result<ExitCode, CtlError> {
    let project = client.resolve_optional().await?;
    let rule = MatchRule::builder()
        .msg_type(MessageType::Signal)
        .sender(BUS_NAME)
        .and_then(|b| b.path_namespace(MANAGER_PATH))
        .map_err(CtlError::zbus)?
        .build();
    let mut stream = MessageStream::for_match_rule(rule, &client.conn, Some(256))
        .await
        .map_err(CtlError::zbus)?;
    // Initial state, after subscribing so nothing falls in between.
    let projects = crate::status::fetch(client).await?;
    let mut names = Names {
        by_path: HashMap::new(),
    };
    for p in &projects {
        if project.as_ref().is_some_and(|n| n != &p.name) {
            continue;
        }
        println!("{} {} {}", now(), p.name, p.state);
        for s in &p.services {
            let path = locald_api::service_path(&p.name, &s.name);
            names
                .by_path
                .insert(path.to_string(), format!("{}/{}", p.name, s.name));
            println!("{} {}/{} {}", now(), p.name, s.name, s.state);
        }
    }
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
                let who = names.of(path);
                let mut keys: Vec<_> = changed.keys().collect();
                keys.sort();
                let state = changed.get("State").map(|v| show(v));
                let rest: Vec<String> = keys
                    .iter()
                    .filter(|k| k.as_str() != "State")
                    .map(|k| format!("{k}={}", show(&changed[k.as_str()])))
                    .collect();
                let kind = if iface == SERVICE_INTERFACE {
                    ""
                } else {
                    " (project)"
                };
                match state {
                    Some(s) => println!("{} {who}{kind} {s} {}", now(), rest.join(" ")),
                    None => println!("{} {who}{kind} {}", now(), rest.join(" ")),
                }
            }
            "InterfacesAdded" => {
                if let Ok((p, _)) = msg.body().deserialize::<(
                    zbus::zvariant::OwnedObjectPath,
                    HashMap<String, HashMap<String, OwnedValue>>,
                )>() {
                    if wanted(p.as_str()) {
                        println!("{} {} added", now(), names.of(p.as_str()));
                    }
                }
            }
            "InterfacesRemoved" => {
                if let Ok((p, _)) = msg
                    .body()
                    .deserialize::<(zbus::zvariant::OwnedObjectPath, Vec<String>)>()
                {
                    if wanted(p.as_str()) {
                        println!("{} {} removed", now(), names.of(p.as_str()));
                    }
                }
            }
            "BuildProgress" => {
                if let Ok((p, s, _, step, total, label)) =
                    msg.body()
                        .deserialize::<(String, String, String, u32, u32, String)>()
                {
                    if project.as_ref().is_none_or(|n| n == &p) {
                        println!("{} {p}/{s} build {step}/{total} {label}", now());
                    }
                }
            }
            "BuildFinished" => {
                if let Ok((p, s, b)) = msg.body().deserialize::<(String, String, BuildInfo)>() {
                    if project.as_ref().is_none_or(|n| n == &p) {
                        println!("{} {p}/{s} build {} {}", now(), b.result, b.reason);
                    }
                }
            }
            _ => {}
        }
    }
}
