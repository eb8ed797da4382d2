//! `status [--json]`: one `GetManagedObjects` call fetches every project and
//! service with all their properties, so the command costs one round trip
//! however many services there are.
//!
//! The wire has stand-ins for "none" (a PID of 0, an exit status of -1, a
//! time of 0 µs); the table shows `-` for them and the JSON `null`, with
//! times in RFC 3339.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use zbus::fdo::{ManagedObjects, ObjectManagerProxy};
use zbus::proxy::CacheProperties;

use locald_api::{ProjectInfo, ServiceInfo, MANAGER_PATH, PROJECT_INTERFACE, SERVICE_INTERFACE};

use crate::client::{Client, CtlError, Selection};

/// One project as the daemon reports it.
#[derive(Debug)]
pub struct ProjectStatus {
    /// Name.
    pub name: String,
    /// Directory.
    pub path: String,
    /// Summary state.
    pub state: String,
    /// Services in file order.
    pub services: Vec<ServiceInfo>,
}

/// One project as `status --json` prints it.
#[derive(Debug, Serialize)]
pub struct ProjectJson<'a> {
    /// Name.
    pub name: &'a str,
    /// Directory.
    pub path: &'a str,
    /// Summary state.
    pub state: &'a str,
    /// Services in file order.
    pub services: Vec<ServiceJson<'a>>,
}

/// One service as `status --json` prints it: `null` for what is absent.
#[derive(Debug, Serialize)]
pub struct ServiceJson<'a> {
    /// Name.
    pub name: &'a str,
    /// Project name.
    pub project: &'a str,
    /// Lifecycle state.
    pub state: &'a str,
    /// Why it is in that state.
    pub state_reason: Option<&'a str>,
    /// The last `STATUS=` it sent.
    pub status_text: Option<&'a str>,
    /// The main process, while one runs.
    pub main_pid: Option<u32>,
    /// Exit status of the last process that exited (128+signal if killed).
    pub exit_status: Option<i32>,
    /// Restarts since `up`.
    pub restart_count: u32,
    /// What runs it: `host`, `container` or `systemd`.
    pub runtime: Option<&'a str>,
    /// Memory of its systemd unit, bytes.
    pub memory_bytes: Option<u64>,
    /// CPU time of its systemd unit, nanoseconds.
    pub cpu_usage_nsec: Option<u64>,
    /// Processes and threads in its systemd unit.
    pub tasks: Option<u64>,
    /// When the current process started.
    pub started_at: Option<String>,
    /// The last build, if any.
    pub last_build: Option<BuildJson<'a>>,
    /// Ports by environment variable (`PORT`, `PORT_HTTP`, ...).
    pub ports: &'a std::collections::BTreeMap<String, u16>,
    /// URL behind the `*.localhost` proxy.
    pub url: Option<&'a str>,
}

/// A build as `status --json` prints it.
#[derive(Debug, Serialize)]
pub struct BuildJson<'a> {
    /// Unique id (`LOCALD_BUILD_ID` in the journal).
    pub build_id: &'a str,
    /// `running`, `succeeded`, `failed` or `skipped`.
    pub result: &'a str,
    /// Why it ran or was skipped, or why it failed.
    pub reason: Option<&'a str>,
    /// Source hash in hex.
    pub source_hash: Option<&'a str>,
    /// Start.
    pub started_at: Option<String>,
    /// End; `null` while it runs.
    pub finished_at: Option<String>,
}

fn text(s: &str) -> Option<&str> {
    Some(s).filter(|s| !s.is_empty())
}

/// µs since the epoch (0 for none, as on the wire) in RFC 3339, UTC.
pub fn rfc3339(usec: u64) -> Option<String> {
    (usec != 0).then(|| {
        humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_micros(usec)).to_string()
    })
}

impl<'a> ServiceJson<'a> {
    /// The JSON view of a service's properties.
    pub fn new(s: &'a ServiceInfo) -> Self {
        let b = &s.last_build;
        Self {
            name: &s.name,
            project: &s.project,
            state: &s.state,
            state_reason: text(&s.state_reason),
            status_text: text(&s.status_text),
            main_pid: Some(s.main_pid).filter(|&p| p != 0),
            exit_status: Some(s.exit_status).filter(|&e| e >= 0),
            restart_count: s.restart_count,
            runtime: text(&s.runtime),
            memory_bytes: known(s, s.memory_current),
            cpu_usage_nsec: known(s, s.cpu_usage_nsec),
            tasks: known(s, s.tasks_current),
            // The daemon may keep the time of a process that has exited;
            // like the table's UPTIME, it counts only while one runs.
            started_at: rfc3339(s.started_at).filter(|_| s.main_pid != 0),
            last_build: (!b.is_empty()).then(|| BuildJson {
                build_id: &b.build_id,
                result: &b.result,
                reason: text(&b.reason),
                source_hash: text(&b.source_hash),
                started_at: rfc3339(b.started_at),
                finished_at: rfc3339(b.finished_at),
            }),
            ports: &s.ports,
            url: text(&s.url),
        }
    }
}

impl<'a> ProjectJson<'a> {
    /// The JSON view of a project and its services.
    pub fn new(p: &'a ProjectStatus) -> Self {
        Self {
            name: &p.name,
            path: &p.path,
            state: &p.state,
            services: p.services.iter().map(ServiceJson::new).collect(),
        }
    }
}

/// Every project the daemon has, decoded from one `GetManagedObjects`.
pub async fn fetch(client: &Client) -> Result<Vec<ProjectStatus>, CtlError> {
    fetch_from(&client.conn, client.daemon.as_ref()).await
}

/// Every project of the daemon `daemon` (a checked owner of the name).
pub async fn fetch_from(
    conn: &zbus::Connection,
    daemon: zbus::names::UniqueName<'_>,
) -> Result<Vec<ProjectStatus>, CtlError> {
    let om = ObjectManagerProxy::builder(conn)
        .destination(daemon.to_owned())
        .and_then(|b| b.path(MANAGER_PATH))
        .map_err(CtlError::zbus)?
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .map_err(CtlError::zbus)?;
    let objects = om
        .get_managed_objects()
        .await
        .map_err(|e| CtlError::zbus(e.into()))?;
    decode(&objects)
}

pub fn decode(objects: &ManagedObjects) -> Result<Vec<ProjectStatus>, CtlError> {
    let bad = |e: locald_api::DecodeError| {
        CtlError::Failed(format!("unexpected reply from the daemon: {e}"))
    };
    let mut projects = BTreeMap::new();
    let mut services = BTreeMap::new();
    for (path, interfaces) in objects {
        for (iface, props) in interfaces {
            if iface.as_str() == PROJECT_INTERFACE {
                let p = ProjectInfo::from_properties(props).map_err(bad)?;
                projects.insert(path.to_string(), p);
            } else if iface.as_str() == SERVICE_INTERFACE {
                let s = ServiceInfo::from_properties(props).map_err(bad)?;
                services.insert(path.to_string(), s);
            }
        }
    }
    Ok(projects
        .into_values()
        .map(|p| ProjectStatus {
            services: p
                .services
                .iter()
                .filter_map(|s| services.remove(s.as_str()))
                .collect(),
            name: p.name,
            path: p.path,
            state: p.state,
        })
        .collect())
}

/// Rows as left-aligned columns two spaces apart (the last one unpadded),
/// each line cut to `width`: the one table layout of every listing.
pub fn columns<R: AsRef<[String]>>(rows: &[R], width: Option<usize>) -> String {
    // Cells hold text from outside (reasons, STATUS= lines, registry
    // messages, paths): escapes shown, never obeyed.
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            r.as_ref()
                .iter()
                .map(|c| locald_core::text::sanitize(c).into_owned())
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = Vec::new();
    for r in &rows {
        let r = r.as_slice();
        widths.resize(widths.len().max(r.len()), 0);
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let r = r.as_slice();
        let mut line = String::new();
        for (i, (c, w)) in r.iter().zip(&widths).enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  "));
            }
        }
        out.push_str(&fit(line.trim_end(), width));
        out.push('\n');
    }
    out
}

/// The services a per-service command acts on: the one named (`true`: an
/// error about it is the user's), or every service of the project (`false`:
/// a service the command does not apply to is skipped).
pub async fn targets(
    client: &Client,
    project: &str,
    service: Option<String>,
) -> Result<Vec<(String, bool)>, CtlError> {
    Ok(match service {
        Some(s) => vec![(s, true)],
        None => fetch(client)
            .await?
            .into_iter()
            .filter(|p| p.name == project)
            .flat_map(|p| p.services)
            .map(|s| (s.name, false))
            .collect(),
    })
}

/// `status [--json]`.
pub async fn status(client: &Client, json: bool) -> Result<ExitCode, CtlError> {
    // Filter here rather than asking the daemon which project this is: one
    // round trip for the whole command.
    let selection = client.selection();
    // The daemon's own warnings (a state file it had to set aside) in the
    // same round trip; an older daemon without the property has none.
    let (projects, warnings) = tokio::join!(fetch(client), client.manager.warnings());
    let mut projects = projects?;
    for w in warnings.unwrap_or_default() {
        eprintln!("warning: {}", locald_core::text::sanitize(&w));
    }
    match &selection {
        Selection::Name(name) => {
            projects.retain(|p| &p.name == name);
            if projects.is_empty() {
                return Err(CtlError::Call(locald_api::Error::NoSuchProject(format!(
                    "no project named `{name}` is up"
                ))));
            }
        }
        Selection::Dir(root) => {
            projects.retain(|p| std::path::Path::new(&p.path) == root);
            if projects.is_empty() {
                return Err(CtlError::Failed(format!(
                    "the project in {} is not up; run `locald-ctl up` there first",
                    root.display()
                )));
            }
        }
        Selection::All => {}
    }
    if json {
        // Always an array of projects, also when one is selected: one shape
        // for scripts (`jq '.[0].services'`).
        let views: Vec<ProjectJson<'_>> = projects.iter().map(ProjectJson::new).collect();
        let text =
            serde_json::to_string_pretty(&views).map_err(|e| CtlError::Failed(e.to_string()))?;
        println!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    if projects.is_empty() {
        println!("no project is up");
    }
    let now = SystemTime::now();
    let width = terminal_width();
    for (i, p) in projects.iter().enumerate() {
        if i > 0 {
            println!();
        }
        println!(
            "{} ({}) — {}",
            p.name,
            p.state,
            locald_core::text::sanitize(&p.path)
        );
        print!("{}", table(&p.services, now, width));
    }
    Ok(ExitCode::SUCCESS)
}

fn since(usec: u64, now: SystemTime) -> Option<Duration> {
    if usec == 0 {
        return None;
    }
    now.duration_since(UNIX_EPOCH + Duration::from_micros(usec))
        .ok()
}

/// A duration as a short age: `42s`, `3m12s`, `5h03m`, `2d04h`.
pub fn short(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

/// The width to fit the table in: `$COLUMNS` when set (as systemctl reads
/// it), else the terminal's when stdout is one, else none (a pipe or a file
/// gets every line whole).
pub fn terminal_width() -> Option<usize> {
    if let Some(n) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
    {
        return Some(n);
    }
    if !std::io::stdout().is_terminal() {
        return None;
    }
    rustix::termios::tcgetwinsize(std::io::stdout())
        .ok()
        .filter(|size| size.ws_col > 0)
        .map(|size| usize::from(size.ws_col))
}

/// Why a service is in its state, unless that says nothing more than the
/// state itself (a stopped service's reason is "stopped").
pub fn reason(s: &ServiceInfo) -> Option<&str> {
    Some(s.state_reason.as_str()).filter(|r| !r.is_empty() && *r != s.state)
}

/// `line` cut to `width` characters, with an ellipsis where it was cut.
pub fn fit(line: &str, width: Option<usize>) -> String {
    match width {
        Some(w) if line.chars().count() > w => {
            let mut cut: String = line.chars().take(w.saturating_sub(1)).collect();
            cut.push('…');
            cut
        }
        _ => line.to_owned(),
    }
}

/// A service's ports for the table: the main port alone, or each named
/// port as `name:number` (`http:41234 admin:9001`); `-` for none.
pub fn ports_cell(s: &ServiceInfo) -> String {
    let named: Vec<String> = s
        .ports
        .iter()
        .filter_map(|(k, v)| Some(format!("{}:{v}", k.strip_prefix("PORT_")?.to_lowercase())))
        .collect();
    match (s.ports.get("PORT"), named.is_empty()) {
        (None, true) => "-".to_owned(),
        (Some(p), true) => p.to_string(),
        _ => named.join(" "),
    }
}

/// An accounting value of a running systemd unit; `None` otherwise (the
/// wire's 2^64-1 stands for unknown).
fn known(s: &ServiceInfo, v: u64) -> Option<u64> {
    (s.runtime == "systemd" && s.main_pid != 0 && v != u64::MAX).then_some(v)
}

/// Bytes as `ps` and systemd print them: `512B`, `12.3M`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[i])
    }
}

/// The status table of one project's services; each line fits in `width`
/// columns when given, by cutting the reason, which comes last.
pub fn table(services: &[ServiceInfo], now: SystemTime, width: Option<usize>) -> String {
    let mut rows = vec![[
        "SERVICE".to_owned(),
        "STATE".to_owned(),
        "PID".to_owned(),
        "PORT".to_owned(),
        "URL".to_owned(),
        "UPTIME".to_owned(),
        "RESTARTS".to_owned(),
        "RUNTIME".to_owned(),
        "CPU".to_owned(),
        "MEM".to_owned(),
        "LAST BUILD".to_owned(),
        "REASON".to_owned(),
    ]];
    for s in services {
        let pid = if s.main_pid == 0 {
            "-".to_owned()
        } else {
            s.main_pid.to_string()
        };
        let uptime = if s.main_pid == 0 {
            "-".to_owned()
        } else {
            since(s.started_at, now).map_or("-".to_owned(), short)
        };
        let build = if s.last_build.is_empty() {
            "-".to_owned()
        } else {
            let at = if s.last_build.finished_at != 0 {
                s.last_build.finished_at
            } else {
                s.last_build.started_at
            };
            match since(at, now) {
                Some(d) => format!("{} {} ago", s.last_build.result, short(d)),
                None => s.last_build.result.clone(),
            }
        };
        rows.push([
            s.name.clone(),
            s.state.clone(),
            pid,
            ports_cell(s),
            text(&s.url).unwrap_or("-").to_owned(),
            uptime,
            s.restart_count.to_string(),
            if s.runtime.is_empty() {
                "-".to_owned()
            } else {
                s.runtime.clone()
            },
            known(s, s.cpu_usage_nsec)
                .map_or("-".to_owned(), |ns| format!("{:.1}s", ns as f64 / 1e9)),
            known(s, s.memory_current).map_or("-".to_owned(), bytes),
            build,
            reason(s).unwrap_or("-").to_owned(),
        ]);
    }
    crate::status::columns(&rows, width)
}

#[cfg(test)]
mod tests {
    use locald_api::BuildInfo;

    use super::*;

    #[test]
    fn ages_are_short() {
        assert_eq!(short(Duration::from_secs(42)), "42s");
        assert_eq!(short(Duration::from_secs(192)), "3m12s");
        assert_eq!(short(Duration::from_secs(5 * 3600 + 180)), "5h03m");
        assert_eq!(short(Duration::from_secs(2 * 86400 + 4 * 3600)), "2d04h");
    }

    #[test]
    fn table_aligns_columns() {
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        let web = ServiceInfo {
            name: "web".into(),
            state: "healthy".into(),
            main_pid: 1234,
            started_at: 940_000_000,
            restart_count: 2,
            ..Default::default()
        };
        let db = ServiceInfo {
            name: "database".into(),
            state: "failed".into(),
            state_reason: "exited with status 1".into(),
            ..Default::default()
        };
        let idle = ServiceInfo {
            name: "idle".into(),
            state: "stopped".into(),
            state_reason: "stopped".into(),
            ..Default::default()
        };
        let t = table(&[web, db, idle], now, None);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].ends_with("LAST BUILD  REASON"), "{t}");
        assert!(lines[1].starts_with("web       healthy"), "{t}");
        assert!(lines[1].contains("1m00s"), "{t}");
        assert!(lines[1].ends_with(" -"), "no reason: {t}");
        assert!(lines[2].starts_with("database  failed "), "{t}");
        assert!(lines[2].ends_with("  exited with status 1"), "{t}");
        assert_eq!(lines[3].matches("stopped").count(), 1, "{t}");
    }

    #[test]
    fn accounting_shows_only_for_a_running_unit() {
        let mut s = ServiceInfo {
            name: "web".into(),
            state: "running".into(),
            runtime: "systemd".into(),
            main_pid: 7,
            memory_current: 12 * 1024 * 1024 + 300 * 1024,
            cpu_usage_nsec: 1_250_000_000,
            tasks_current: u64::MAX,
            ..Default::default()
        };
        let t = table(std::slice::from_ref(&s), UNIX_EPOCH, None);
        assert!(t.contains(" 1.2s ") && t.contains(" 12.3M "), "{t}");
        assert_eq!(known(&s, s.tasks_current), None);
        s.runtime = "host".into();
        assert_eq!(known(&s, s.memory_current), None);
        assert_eq!(bytes(512), "512B");
    }

    #[test]
    fn json_has_null_for_what_is_absent() {
        let stopped = ServiceInfo {
            name: "web".into(),
            project: "shop".into(),
            state: "stopped".into(),
            exit_status: -1,
            started_at: 1_764_601_100_000_000,
            ..Default::default()
        };
        let v = serde_json::to_value(ServiceJson::new(&stopped)).expect("json");
        for key in [
            "state_reason",
            "status_text",
            "main_pid",
            "exit_status",
            "started_at",
            "last_build",
        ] {
            assert!(v[key].is_null(), "{key}: {v}");
        }
        let running = ServiceInfo {
            main_pid: 42,
            exit_status: 0,
            started_at: 1_764_601_200_123_456,
            last_build: BuildInfo {
                build_id: "b1".into(),
                result: "running".into(),
                started_at: 1_764_601_200_000_000,
                ..Default::default()
            },
            ..stopped
        };
        let v = serde_json::to_value(ServiceJson::new(&running)).expect("json");
        assert_eq!(v["main_pid"], 42);
        assert_eq!(v["exit_status"], 0, "0 is a status, not an absence");
        assert_eq!(v["started_at"], "2025-12-01T15:00:00.123456Z");
        assert_eq!(v["last_build"]["started_at"], "2025-12-01T15:00:00.000000Z");
        assert!(v["last_build"]["finished_at"].is_null(), "{v}");
    }

    #[test]
    fn table_fits_the_width_by_cutting_the_reason() {
        let db = ServiceInfo {
            name: "db".into(),
            state: "backoff".into(),
            state_reason: "restarting in 800ms: exited with status 3".into(),
            ..Default::default()
        };
        let now = UNIX_EPOCH;
        let whole = table(std::slice::from_ref(&db), now, None);
        let row = whole.lines().nth(1).unwrap_or_default();
        let w = row.chars().count() - 10;
        let cut = table(&[db], now, Some(w));
        for line in cut.lines() {
            assert!(line.chars().count() <= w, "{cut}");
        }
        let kept: String = row.chars().take(w - 1).collect();
        assert_eq!(
            cut.lines().nth(1),
            Some(format!("{kept}…").as_str()),
            "{cut}"
        );
        assert!(kept.contains("restarting in 800ms"), "{cut}");
        assert_eq!(fit("abc", Some(3)), "abc");
        assert_eq!(fit("abcd", Some(3)), "ab…");
    }
}
