//! `locald.toml`: finding it, reading it in two stages, and the checked
//! [`Config`] the rest of locald works with.
//!
//! Stage one ([`raw`]) is serde into types that mirror the file and keep
//! spans. Stage two ([`Config::from_raw`], with the rules in `check.rs`)
//! turns them into [`Config`] and is where every cross-field check lives;
//! each failure becomes a [`Diagnostic`] with the span of the value at
//! fault, so the user sees `file:line:column`, the line, and a hint. Everything downstream can rely on
//! a `Config` being valid: names are safe for D-Bus paths and journal fields,
//! dependencies exist and have no cycles, commands are not empty.

mod check;
mod diagnostic;
mod ports;
pub mod procfile;
pub mod raw;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use nix::sys::signal::Signal;
use toml::Spanned;

use crate::fsutil::{read_input, UnsafeFile, CONFIG_LIMIT, ENV_FILE_LIMIT};

pub use diagnostic::{did_you_mean, line_col, ConfigError, Diagnostic};
pub use ports::Port;
pub use raw::RuntimeChoice;
pub use raw::{RestartPolicy, WatchAction};

use raw::RawFile;

use check::Checker;
use locald_core::project::derive_name as sanitize_name;
use locald_core::project::FindError;
/// The file name locald looks for.
pub use locald_core::project::FILE_NAME;

/// Why a project's configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// No `locald.toml` (or `Procfile`) in the directory or any parent the
    /// search may enter.
    #[error("no {FILE_NAME} or Procfile in {} or any parent directory{}", dir.display(), stopped.as_deref().map(|s| format!(" (the search stopped at {s})")).unwrap_or_default())]
    NotFound {
        /// Where the search started.
        dir: PathBuf,
        /// Where and why the climb stopped before `/`, if it did.
        stopped: Option<String>,
    },
    /// The path is not a directory.
    #[error("{} is not a directory", path.display())]
    NotADirectory {
        /// The path given.
        path: PathBuf,
    },
    /// Reading a file failed.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is invalid.
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    /// The file is not one locald may trust or read: another user's, writable
    /// by others, not a regular file, or too large.
    #[error(transparent)]
    Refused(#[from] UnsafeFile),
}

/// A checked project configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The `locald.toml` it came from.
    pub file: PathBuf,
    /// The project directory (the file's parent), absolute.
    pub root: PathBuf,
    /// Project name.
    pub name: String,
    /// The directory name the project name was derived from, when the file
    /// names none and the directory's name is not a valid name itself.
    pub name_derived_from: Option<String>,
    /// Services in the order the file declares them.
    pub services: IndexMap<String, ServiceConfig>,
}

/// How to run a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandSpec {
    /// `sh -c STRING`.
    Shell(String),
    /// An argv, run without a shell.
    Argv(Vec<String>),
}

impl CommandSpec {
    /// The argv to execute.
    pub fn argv(&self) -> Vec<String> {
        match self {
            CommandSpec::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
            CommandSpec::Argv(v) => v.clone(),
        }
    }

    /// A short human form for status lines.
    pub fn display(&self) -> String {
        match self {
            CommandSpec::Shell(s) => s.clone(),
            CommandSpec::Argv(v) => v.join(" "),
        }
    }
}

/// One service, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// Name, unique in the project.
    pub name: String,
    /// What to run: a host command, or (with `image`) the container's command
    /// overriding the image's Entrypoint and Cmd.
    pub command: Option<CommandSpec>,
    /// The image it runs from, for a container service.
    pub image: Option<ImageSpec>,
    /// Absolute host working directory (host processes and builds).
    pub workdir: PathBuf,
    /// Environment added for the process (env_file first, then `env`).
    pub env: Vec<(String, String)>,
    /// How it is built before start, if at all.
    pub build: Option<BuildSpec>,
    /// Services that must be healthy first.
    pub depends_on: Vec<String>,
    /// Health check.
    pub health: Option<HealthCheck>,
    /// Restart policy and its timing.
    pub restart: RestartConfig,
    /// Signal to stop with; `None` is the workload's own default (SIGTERM
    /// for a host process, the image's StopSignal for a container).
    pub stop_signal: Option<Signal>,
    /// Time between `stop_signal` and SIGKILL.
    pub stop_timeout: Duration,
    /// Required `WATCHDOG=1` interval.
    pub watchdog: Option<Duration>,
    /// Journal priority of stderr lines without a `<N>` prefix.
    pub stderr_priority: locald_core::priority::Priority,
    /// Its ports, the main one (`port`, else the first of `ports`) first.
    pub ports: Vec<Port>,
    /// What file changes restart it, if any.
    pub watch: Option<WatchSpec>,
    /// Services whose restart by `watch` restarts this one too.
    pub restart_on: Vec<String>,
    /// `default = true`: `PROJECT.localhost` leads here.
    pub url_default: bool,
    /// How a host service runs, if the file says (the service's `runtime`,
    /// else the project's); `None` lets the daemon choose.
    pub runtime: Option<RuntimeChoice>,
}

/// `watch`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchSpec {
    /// Globs relative to the project; empty means the build's inputs, else
    /// the whole project minus ignored files.
    pub paths: Vec<String>,
    /// What a change does.
    pub action: WatchAction,
}

/// Restart policy and backoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartConfig {
    /// When to restart.
    pub policy: RestartPolicy,
    /// First delay; doubles each consecutive failure.
    pub delay: Duration,
    /// Longest delay.
    pub delay_max: Duration,
    /// Failures within `interval` that make the service Failed.
    pub burst: u32,
    /// Window for `burst`.
    pub interval: Duration,
}

/// How a service is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildSpec {
    /// A command run on the host.
    Host(HostBuild),
    /// A Cloud Native Buildpacks build.
    Cnb(CnbBuild),
}

/// A host build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBuild {
    /// What to run.
    pub command: CommandSpec,
    /// Globs (relative to the project) whose content decides whether to rebuild;
    /// empty means "run on every up", as seed 001 specifies for the string form.
    pub inputs: Vec<String>,
    /// Paths (relative to the project) the build produces.
    pub outputs: Vec<String>,
    /// Extra environment for the build.
    pub env: Vec<(String, String)>,
}

impl BuildSpec {
    /// Why this version of locald cannot run this build, if it cannot.
    pub fn unsupported(&self) -> Option<String> {
        None
    }
}

impl Config {
    /// What `locald check` should warn about in a valid file: settings this
    /// version accepts but cannot act on, each naming its service.
    pub fn warnings(&self) -> Vec<String> {
        let derived = self.name_derived_from.as_ref().map(|dir| {
            format!(
                "the project is named `{}` after its directory `{}`, which is not a valid name; set `[project] name` to choose one",
                self.name,
                locald_core::text::sanitize(dir)
            )
        });
        derived
            .into_iter()
            .chain(self.services.iter().filter_map(|(name, s)| {
                let why = s.build.as_ref()?.unsupported()?;
                Some(format!(
                    "service `{name}`: {why}; it will be marked failed when started"
                ))
            }))
            .collect()
    }
}

/// A container service's image and what it gets from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// The image reference as written.
    pub reference: String,
    /// Bind mounts of project paths.
    pub volumes: Vec<Volume>,
    /// Working directory in the container (default: the image's).
    pub workdir: Option<String>,
    /// Run on the image's shared rootfs, read-only, instead of a private
    /// writable copy made at each start.
    pub read_only: bool,
}

pub use locald_core::workload::Volume;

impl ServiceConfig {
    /// The program of a host command that is not on `PATH` (from the
    /// service's `env`, else this process's), found as the start will look
    /// for it: the argv's first word, or a `sh -c` line's when it can be
    /// told. `None` when found, or not a host command.
    pub fn missing_program(&self) -> Option<String> {
        if self.image.is_some() || matches!(self.build, Some(BuildSpec::Cnb(_))) {
            return None;
        }
        let program = match self.command.as_ref()? {
            CommandSpec::Argv(v) => v.first()?.as_str(),
            CommandSpec::Shell(line) => locald_core::program::shell_program(line)?,
        };
        let path = locald_core::program::search_path(&self.env);
        locald_core::program::find_program(program, &path, &self.workdir)
            .is_none()
            .then(|| program.to_owned())
    }

    /// What the service runs, as the runtime takes it.
    pub fn workload(&self) -> locald_core::workload::Workload {
        if let Some(BuildSpec::Cnb(cnb)) = &self.build {
            return cnb_workload(cnb, self.command.as_ref());
        }
        match &self.image {
            Some(image) => locald_core::workload::Workload::Image {
                reference: image.reference.clone(),
                command: self.command.as_ref().map(CommandSpec::argv),
                volumes: image.volumes.clone(),
                workdir: image.workdir.clone(),
                read_only: image.read_only,
                map_user: None,
            },
            None => locald_core::workload::Workload::Host {
                argv: self
                    .command
                    .as_ref()
                    .map(CommandSpec::argv)
                    .unwrap_or_default(),
            },
        }
    }
}

/// What a service built by buildpacks runs: its exported image (read from
/// the artifact, the workspace's source of truth), with an explicit
/// `command` first, then the chosen process type, then the image's default
/// process. Both go through the CNB launcher, so the buildpacks' launch
/// environment applies.
fn cnb_workload(cnb: &CnbBuild, command: Option<&CommandSpec>) -> locald_core::workload::Workload {
    let command = match (command, &cnb.process) {
        (Some(c), _) => Some(
            ["/cnb/lifecycle/launcher".to_owned(), "--".to_owned()]
                .into_iter()
                .chain(c.argv())
                .collect(),
        ),
        (None, Some(p)) => Some(vec![format!("/cnb/process/{p}")]),
        (None, None) => None,
    };
    locald_core::workload::Workload::Image {
        reference: format!("oci:{}:{CNB_IMAGE_TAG}", cnb.layout.display()),
        command,
        volumes: Vec::new(),
        workdir: None,
        read_only: false,
        map_user: None,
    }
}

/// A CNB build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CnbBuild {
    /// Builder image reference.
    pub builder: String,
    /// Run image reference; `None` takes the builder's.
    pub run_image: Option<String>,
    /// Explicit buildpacks: ids (`id` or `id@version`) or local directories
    /// (absolute after checking).
    pub buildpacks: Vec<String>,
    /// Source directory, absolute.
    pub path: PathBuf,
    /// Build environment (the platform's `env/` directory).
    pub env: Vec<(String, String)>,
    /// The process type to run; `None` runs the image's default.
    pub process: Option<String>,
    /// When to ask registries for newer builder and run images.
    pub pull: PullPolicy,
    /// The exported image: `.locald/services/<name>/artifacts/oci-layout`.
    pub layout: PathBuf,
}

/// When a CNB build asks registries for newer images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Use what is stored; pull only what is missing (`locald-ctl build
    /// --pull` checks anyway).
    #[default]
    IfNotPresent,
    /// Check the registry before every build.
    Always,
}

/// The tag of a CNB build's image in its OCI layout.
pub const CNB_IMAGE_TAG: &str = "latest";

/// What makes a service Healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// The probe.
    pub kind: HealthKind,
    /// Time between probes.
    pub interval: Duration,
    /// Time one probe may take.
    pub timeout: Duration,
    /// Consecutive failures (after the start period) that count as unhealthy.
    pub retries: u32,
    /// Grace period after start.
    pub start_period: Duration,
}

/// A health probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthKind {
    /// TCP connect to 127.0.0.1:port; 0 (`tcp = "auto"`) is the service's
    /// own port, filled in by [`Config::apply_ports`].
    Tcp(u16),
    /// HTTP GET; 2xx/3xx is healthy. Port 0 (`http = "/path"`) is the
    /// service's own port, filled in by [`Config::apply_ports`].
    Http(HttpUrl),
    /// A command that exits 0 when healthy.
    Command(CommandSpec),
    /// `READY=1` on the notify socket.
    Notify,
}

/// A parsed `http://host:port/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// Host name or address.
    pub host: String,
    /// Port (default 80).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
    /// The URL as written.
    pub text: String,
}

impl HttpUrl {
    /// Parses plain `http://` URLs; TLS is not needed for local health checks.
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = text
            .strip_prefix("http://")
            .ok_or("only http:// URLs are supported")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err("the URL has no host".into());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| format!("invalid port `{p}`"))?;
                (
                    h.trim_start_matches('[').trim_end_matches(']').to_owned(),
                    port,
                )
            }
            _ => (authority.to_owned(), 80),
        };
        Ok(Self {
            host,
            port,
            path: path.to_owned(),
            text: text.to_owned(),
        })
    }
}

/// The `locald.toml` (else `Procfile`) that governs `dir`
/// ([`locald_core::project::find_project_file`]).
pub fn find_project_file(dir: &Path) -> Result<PathBuf, LoadError> {
    Ok(locald_core::project::find_project_file(dir)?)
}

impl From<FindError> for LoadError {
    fn from(e: FindError) -> Self {
        match e {
            FindError::NotFound { dir, stopped } => LoadError::NotFound { dir, stopped },
            FindError::NotADirectory { path } => LoadError::NotADirectory { path },
            FindError::Read { path, source } => LoadError::Read { path, source },
        }
    }
}

/// Finds and loads the project containing `dir`.
pub fn load_project(dir: &Path) -> Result<Config, LoadError> {
    let file = find_project_file(dir)?;
    Config::load(&file)
}

impl Config {
    /// Reads and checks a `locald.toml`, or a `Procfile` (by its name).
    pub fn load(file: &Path) -> Result<Config, LoadError> {
        let is_procfile = file.file_name() == Some(std::ffi::OsStr::new(procfile::PROCFILE));
        let what = if is_procfile {
            "a Procfile"
        } else {
            "locald.toml"
        };
        let bytes = read_input(file, what, CONFIG_LIMIT)?;
        let text = String::from_utf8(bytes).map_err(|_| LoadError::Read {
            path: file.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not valid UTF-8"),
        })?;
        let file = std::path::absolute(file).unwrap_or_else(|_| file.to_owned());
        if is_procfile {
            return Ok(Config::parse_procfile(&file, &text)?);
        }
        Ok(Config::parse(&file, &text)?)
    }

    /// Checks `text` as if it were the file at `file`.
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let error = |diagnostics| ConfigError {
            path: file.to_owned(),
            text: text.to_owned(),
            diagnostics,
        };
        let raw: RawFile =
            toml::from_str(text).map_err(|e| error(vec![Diagnostic::from_toml(&e)]))?;
        let root = file.parent().map(Path::to_owned).unwrap_or_default();
        Config::from_raw(raw, file, &root).map_err(error)
    }

    /// Stage two: every check that needs more than one value.
    pub fn from_raw(raw: RawFile, file: &Path, root: &Path) -> Result<Config, Vec<Diagnostic>> {
        let mut c = Checker {
            diags: Vec::new(),
            root: root.to_owned(),
            port_refs: Vec::new(),
            procfile: None,
            project_runtime: None,
        };
        let (project_name, project_runtime) = match raw.project {
            Some(p) => (p.name, p.runtime),
            None => (None, None),
        };
        c.project_runtime = project_runtime.map(Spanned::into_inner);
        let mut name_derived_from = None;
        let name = match project_name {
            Some(n) => {
                c.check_name(&n, "project");
                n.into_inner()
            }
            None => {
                let dir = root
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let name = sanitize_name(&dir);
                if name != dir {
                    name_derived_from = Some(dir);
                }
                name
            }
        };

        let mut raw_services = Vec::new();
        match (raw.services, raw.service) {
            (Some(a), Some(b)) => {
                if let Some((k, _)) = b.first() {
                    c.push(
                        "both [services] and [service] are used",
                        Some(k.span()),
                        Some("use one of them; `services` is preferred".into()),
                    );
                }
                raw_services.extend(a);
            }
            (Some(s), None) | (None, Some(s)) => raw_services.extend(s),
            (None, None) => {}
        }
        if raw_services.is_empty() {
            c.push(
                "no services defined",
                None,
                Some("add a [services.NAME] table with a `command`".into()),
            );
        }

        let names: Vec<String> = raw_services
            .iter()
            .map(|(k, _)| k.get_ref().clone())
            .collect();
        let mut services = IndexMap::new();
        let mut dep_spans: HashMap<String, Vec<Spanned<String>>> = HashMap::new();
        for (key, svc) in raw_services {
            c.check_name(&key, "service");
            let span = svc.span();
            let svc = svc.into_inner();
            dep_spans.insert(
                key.get_ref().clone(),
                svc.depends_on.clone().unwrap_or_default(),
            );
            if let Some(s) = c.service(key.get_ref(), svc, span, &names) {
                services.insert(s.name.clone(), s);
            }
        }
        c.check_cycles(&names, &dep_spans);
        c.check_ports(&services, &names);

        if c.diags.is_empty() {
            Ok(Config {
                file: file.to_owned(),
                root: root.to_owned(),
                name,
                name_derived_from,
                services,
            })
        } else {
            Err(c.diags)
        }
    }

    /// Service names in an order where every service comes after its dependencies.
    pub fn start_order(&self) -> Vec<String> {
        let mut order = Vec::new();
        let mut seen = std::collections::HashSet::new();
        fn visit(
            c: &Config,
            n: &str,
            seen: &mut std::collections::HashSet<String>,
            order: &mut Vec<String>,
        ) {
            if !seen.insert(n.to_owned()) {
                return;
            }
            if let Some(s) = c.services.get(n) {
                for d in &s.depends_on {
                    visit(c, d, seen, order);
                }
            }
            order.push(n.to_owned());
        }
        for n in self.services.keys() {
            visit(self, n, &mut seen, &mut order);
        }
        order
    }
}

/// Parses `KEY=value` lines; `#` comments, blank lines, `export ` and
/// surrounding single or double quotes are handled as shells and dotenv do.
pub fn parse_env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_owned(), v.to_owned()))
        })
        .collect()
}

/// The JSON Schema of `locald.toml`, as published in `docs/locald.schema.json`.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(RawFile);
    let mut s = serde_json::to_string_pretty(&schema).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/p/locald.toml"), text)
    }

    /// Regression (#19 item 9): a directory named `ünï` gave the project
    /// name `-n-`, which `locald check` accepted, `locald-ctl -p -n-` took
    /// for an option and a URL could not use.
    #[test]
    fn names_derived_from_directories_follow_the_name_rule() {
        for (dir, want) in [
            ("ünï", "n"),
            ("my app", "my-app"),
            ("--x--", "x"),
            ("___", "project"),
            ("日本", "project"),
            ("web_shop", "web_shop"),
        ] {
            let c = Config::parse(
                &Path::new("/tmp").join(dir).join("locald.toml"),
                "[services.web]\ncommand = \"x\"\n",
            )
            .expect("valid");
            assert_eq!(c.name, want, "{dir}");
            let mut chk = Checker {
                diags: Vec::new(),
                root: PathBuf::new(),
                port_refs: Vec::new(),
                procfile: None,
                project_runtime: None,
            };
            chk.check_name(&Spanned::new(0..0, c.name.clone()), "project");
            assert!(chk.diags.is_empty(), "{dir} -> {}", c.name);
            let said = c.warnings().join("\n");
            if want == dir {
                assert!(said.is_empty(), "{said}");
            } else {
                assert!(
                    said.contains(&format!("named `{want}` after its directory")),
                    "{said}"
                );
            }
        }
        assert_eq!(sanitize_name(&"a".repeat(100)).len(), 64);
    }

    #[test]
    fn minimal_service() {
        let c = parse("[services.web]\ncommand = \"python3 -m http.server\"\n").unwrap();
        assert_eq!(c.name, "p");
        let web = &c.services["web"];
        assert_eq!(
            web.command,
            Some(CommandSpec::Shell("python3 -m http.server".into()))
        );
        assert_eq!(web.stop_signal, None);
        assert_eq!(web.workdir, Path::new("/p"));
    }

    #[test]
    fn an_image_service_may_choose_its_runtime() {
        let c = parse(
            "[project]\nruntime = \"host\"\n[services.a]\nimage='redis'\n[services.b]\nimage='redis'\nruntime = \"systemd\"\n",
        )
        .unwrap();
        assert_eq!(c.services["a"].runtime, Some(RuntimeChoice::Host));
        assert_eq!(c.services["b"].runtime, Some(RuntimeChoice::Systemd));
    }

    #[test]
    fn runtime_of_the_service_wins_over_the_project() {
        let c = parse(
            "[project]\nruntime = \"host\"\n[services.a]\ncommand='x'\n[services.b]\ncommand='x'\nruntime = \"systemd\"\n",
        )
        .unwrap();
        assert_eq!(c.services["a"].runtime, Some(RuntimeChoice::Host));
        assert_eq!(c.services["b"].runtime, Some(RuntimeChoice::Systemd));
        let c = parse("[services.a]\ncommand='x'\n").unwrap();
        assert_eq!(c.services["a"].runtime, None);
    }

    #[test]
    fn singular_service_table_is_accepted() {
        let c = parse("[service.web]\ncommand = [\"a\", \"b\"]\nbuild = { builder = \"x/y:z\" }\n")
            .unwrap();
        assert!(matches!(c.services["web"].build, Some(BuildSpec::Cnb(_))));
    }

    #[test]
    fn start_order_puts_dependencies_first() {
        let c = parse(
            "[services.a]\ncommand='x'\ndepends_on=['b']\n[services.b]\ncommand='x'\ndepends_on=['c']\n[services.c]\ncommand='x'\n",
        )
        .unwrap();
        assert_eq!(c.start_order(), ["c", "b", "a"]);
    }

    #[test]
    fn env_file_parsing() {
        let v = parse_env_file("# c\nA=1\nexport B=\"two words\"\nC='x'\n\nbad\n");
        assert_eq!(
            v,
            [
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "x".into())
            ]
        );
    }

    fn error(text: &str) -> String {
        parse(text).expect_err("invalid").to_string()
    }

    #[test]
    fn ports_are_parsed_in_order_main_first() {
        let c = parse(
            "[services.web]\ncommand='x'\nports = { http = \"auto\", admin = 9001 }\nport = 8000\nhealth = { http = \"/health\" }\n",
        )
        .unwrap();
        let web = &c.services["web"];
        let vars: Vec<String> = web.ports.iter().map(Port::var).collect();
        assert_eq!(vars, ["PORT", "PORT_HTTP", "PORT_ADMIN"]);
        assert!(web.ports[1].auto);
        assert_eq!(web.ports[2].number, 9001);
    }

    #[test]
    fn port_errors_have_positions() {
        let e = error("[services.web]\ncommand='x'\nport = \"any\"\n");
        assert!(e.contains("invalid port `any`"), "{e}");
        assert!(e.contains("locald.toml:3:8"), "{e}");
        let e = error("[services.web]\ncommand='x'\nport = 70000\n");
        assert!(
            e.contains("invalid port 70000") && e.contains(":3:8"),
            "{e}"
        );
        let e = error("[services.web]\ncommand='x'\nports = { \"9x\" = 1 }\n");
        assert!(e.contains("invalid port name `9x`"), "{e}");
        let e = error("[services.web]\ncommand='x'\nhealth = { tcp = \"auto\" }\n");
        assert!(
            e.contains("the service has none") && e.contains(":3:18"),
            "{e}"
        );
        let e = error("[services.web]\ncommand='x'\nhealth = { http = \"/h\" }\n");
        assert!(e.contains("the service has none"), "{e}");
    }

    #[test]
    fn port_references_are_checked() {
        let base = "[services.api]\ncommand='x'\nport = 'auto'\n[services.web]\ncommand='x'\n";
        parse(&format!(
            "{base}env = {{ U = 'http://h:${{services.api.port}}/${{HOME}}' }}\n"
        ))
        .unwrap();
        let e = error(&format!("{base}env = {{ U = '${{services.apx.port}}' }}\n"));
        assert!(
            e.contains("unknown service") && e.contains("did you mean `api`"),
            "{e}"
        );
        assert!(e.contains("locald.toml:6:13"), "{e}");
        let e = error(&format!("{base}env = {{ U = '${{services.web.port}}' }}\n"));
        assert!(e.contains("service `web` has no port"), "{e}");
        let e = error(&format!(
            "{base}env = {{ U = '${{services.api.ports.x}}' }}\n"
        ));
        assert!(e.contains("no port named `x`"), "{e}");
        let e = error(&format!("{base}env = {{ U = '${{services.api}}' }}\n"));
        assert!(e.contains("not a port reference"), "{e}");
    }

    #[test]
    fn two_services_with_one_fixed_port_are_refused() {
        let e = error("[services.a]\ncommand='x'\nport = 9000\n[services.b]\ncommand='x'\nports = { web = 9000 }\n");
        assert!(e.contains("both use port 9000"), "{e}");
    }

    #[test]
    fn watch_forms_and_errors() {
        let c = parse("[services.a]\ncommand='x'\nwatch = true\n[services.b]\ncommand='x'\nbuild='make'\nwatch = ['src/**']\nrestart_on = ['a']\n").unwrap();
        assert_eq!(
            c.services["a"].watch.as_ref().map(|w| w.action),
            Some(WatchAction::Restart)
        );
        assert_eq!(
            c.services["b"].watch.as_ref().map(|w| w.action),
            Some(WatchAction::Rebuild)
        );
        assert_eq!(c.services["b"].restart_on, ["a"]);
        let e = error("[services.a]\ncommand='x'\nwatch = { paths = ['src/[x'] }\n");
        assert!(
            e.contains("invalid watch pattern") && e.contains(":3:9"),
            "{e}"
        );
        let e = error("[services.a]\ncommand='x'\nwatch = { action = 'rebuild' }\n");
        assert!(e.contains("needs a `build`"), "{e}");
        let e = error("[services.a]\ncommand='x'\nwatch = 'yes'\n");
        assert!(e.contains(":3:9"), "{e}");
        let e = error("[services.a]\ncommand='x'\nrestart_on = ['b']\n");
        assert!(
            e.contains("unknown service `b`") && e.contains(":3:15"),
            "{e}"
        );
    }

    #[test]
    fn http_urls() {
        let u = HttpUrl::parse("http://127.0.0.1:8000/health?x=1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 8000, "/health?x=1")
        );
        assert_eq!(HttpUrl::parse("http://localhost").unwrap().port, 80);
        assert!(HttpUrl::parse("https://x").is_err());
    }
}
