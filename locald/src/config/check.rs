//! Stage two of reading `locald.toml`: the [`Checker`] that turns the raw
//! serde types ([`super::raw`]) into a [`Config`], one rule at a time, and
//! collects every violation as a [`Diagnostic`] with the span of the value
//! at fault. The types it produces and the loader that calls it live in
//! [`super`].

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use toml::Spanned;

use super::raw::{
    EnvValue, RawBuild, RawBuildTable, RawCommand, RawDuration, RawHealth, RawPort, RawService,
    RawWatch, RestartPolicy, RuntimeChoice,
};
use super::*;

/// Accumulates diagnostics while converting.
pub(super) struct Checker {
    pub(super) diags: Vec<Diagnostic>,
    pub(super) root: PathBuf,
    /// `${services.NAME.port}` references met in `env` values, with the
    /// span of the value, checked once every service is known.
    pub(super) port_refs: Vec<(ports::PortRef, Range<usize>)>,
    /// The project's `Procfile`, read the first time a service without
    /// `command` needs it: its entries, or why it cannot be used.
    pub(super) procfile: Option<Result<Vec<procfile::Entry>, String>>,
    /// `[project] runtime`, the default for each service.
    pub(super) project_runtime: Option<RuntimeChoice>,
}

/// The keys of a service that say what it runs (see `Checker::what_runs`).
struct RunsRaw<'a> {
    command: Option<Spanned<RawCommand>>,
    image: Option<Spanned<String>>,
    volumes: Option<Vec<Spanned<String>>>,
    workdir: Option<&'a Spanned<String>>,
    read_only: Option<Spanned<bool>>,
}

/// The restart keys of a service (see `Checker::restart_config`).
struct RestartRaw {
    policy: Option<Spanned<RestartPolicy>>,
    delay: Option<Spanned<RawDuration>>,
    delay_max: Option<Spanned<RawDuration>>,
    burst: Option<Spanned<u32>>,
    interval: Option<Spanned<RawDuration>>,
}

const NAME_HINT: &str =
    "names use letters, digits, `-` and `_`, start with a letter or digit, and are at most 64 long";

impl Checker {
    pub(super) fn push(
        &mut self,
        message: impl Into<String>,
        span: Option<Range<usize>>,
        hint: Option<String>,
    ) {
        self.diags.push(Diagnostic::new(message, span, hint));
    }

    pub(super) fn check_name(&mut self, name: &Spanned<String>, what: &str) {
        let n = name.get_ref();
        let ok = !n.is_empty()
            && n.len() <= 64
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
        if !ok {
            self.push(
                format!("invalid {what} name `{n}`"),
                Some(name.span()),
                Some(NAME_HINT.into()),
            );
        }
    }

    fn command(&mut self, cmd: Spanned<RawCommand>, what: &str) -> Option<CommandSpec> {
        let span = cmd.span();
        match cmd.into_inner() {
            RawCommand::Shell(s) if s.trim().is_empty() => {
                self.push(
                    format!("{what} is empty"),
                    Some(span),
                    Some("write the command to run, e.g. \"python3 -m http.server 8000\"".into()),
                );
                None
            }
            RawCommand::Argv(v) if v.first().is_none_or(|a| a.is_empty()) => {
                self.push(
                    format!("{what} is empty"),
                    Some(span),
                    Some("the first element of the array is the program to run".into()),
                );
                None
            }
            RawCommand::Shell(s) => Some(CommandSpec::Shell(s)),
            RawCommand::Argv(v) => Some(CommandSpec::Argv(v)),
        }
    }

    /// The command of the `Procfile` entry `name`, or why there is none.
    fn procfile_command(&mut self, name: &str) -> Result<CommandSpec, String> {
        let root = self.root.clone();
        let entries = self.procfile.get_or_insert_with(|| {
            let path = root.join(procfile::PROCFILE);
            let bytes = match read_input(&path, "a Procfile", CONFIG_LIMIT) {
                Ok(b) => b,
                Err(UnsafeFile::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    return Err("there is no Procfile".into())
                }
                Err(e) => return Err(format!("the Procfile: {}", crate::error_chain(&e))),
            };
            let text =
                String::from_utf8(bytes).map_err(|_| "the Procfile is not UTF-8".to_owned())?;
            procfile::parse(&text).map_err(|diags| {
                let each: Vec<String> = diags
                    .iter()
                    .map(|d| match &d.span {
                        Some(span) => {
                            format!("Procfile:{}: {}", line_col(&text, span.start).0, d.message)
                        }
                        None => format!("Procfile: {}", d.message),
                    })
                    .collect();
                format!("the Procfile is invalid: {}", each.join("; "))
            })
        });
        match entries {
            Err(why) => Err(why.clone()),
            Ok(entries) => entries
                .iter()
                .find(|e| e.name == name)
                .map(|e| CommandSpec::Shell(e.command.clone()))
                .ok_or_else(|| format!("the Procfile has no `{name}` entry")),
        }
    }

    fn rel_path(&mut self, p: &Spanned<String>, what: &str) -> Option<PathBuf> {
        let path = Path::new(p.get_ref());
        if p.get_ref().is_empty() {
            self.push(format!("{what} is empty"), Some(p.span()), None);
            return None;
        }
        Some(if path.is_absolute() {
            path.to_owned()
        } else {
            self.root.join(path)
        })
    }

    fn env(&mut self, env: Option<IndexMap<String, Spanned<EnvValue>>>) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (k, v) in env.unwrap_or_default() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                self.push(
                    format!("invalid environment variable name `{k}`"),
                    Some(v.span()),
                    Some("names may not be empty or contain `=`".into()),
                );
                continue;
            }
            if v.get_ref().0.contains('\0') {
                self.push(
                    format!("environment variable `{k}` contains a NUL byte"),
                    Some(v.span()),
                    None,
                );
                continue;
            }
            match ports::find_refs(&v.get_ref().0) {
                Ok(refs) => self
                    .port_refs
                    .extend(refs.into_iter().map(|r| (r, v.span()))),
                Err(why) => {
                    self.push(
                        format!("environment variable `{k}`: {why}"),
                        Some(v.span()),
                        Some(
                            "write ${services.NAME.port} or ${services.NAME.ports.PORTNAME}".into(),
                        ),
                    );
                    continue;
                }
            }
            out.push((k, v.into_inner().0));
        }
        out
    }

    fn env_file(&mut self, file: &Spanned<String>) -> Vec<(String, String)> {
        let Some(path) = self.rel_path(file, "env_file") else {
            return Vec::new();
        };
        match read_input(&path, "an env_file", ENV_FILE_LIMIT) {
            Ok(bytes) => parse_env_file(&String::from_utf8_lossy(&bytes)),
            Err(e) => {
                let hint = match &e {
                    UnsafeFile::Io { .. } => {
                        "the path is relative to the directory holding locald.toml".to_owned()
                    }
                    UnsafeFile::TooLarge { .. } => format!(
                        "an env_file holds KEY=VALUE lines; locald reads at most {}",
                        crate::fsutil::human_size(ENV_FILE_LIMIT)
                    ),
                    _ => "locald reads only regular files that you (or root) own and others cannot write"
                        .to_owned(),
                };
                self.push(
                    format!("env_file: {}", crate::error_chain(&e)),
                    Some(file.span()),
                    Some(hint),
                );
                Vec::new()
            }
        }
    }

    pub(super) fn service(
        &mut self,
        name: &str,
        svc: RawService,
        span: Range<usize>,
        names: &[String],
    ) -> Option<ServiceConfig> {
        let errors_before = self.diags.len();
        let cnb = matches!(
            svc.build.as_ref().map(Spanned::get_ref),
            Some(RawBuild::Table(t)) if t.builder.is_some()
        );
        let (command, image) = self.what_runs(
            name,
            &span,
            cnb,
            RunsRaw {
                command: svc.command,
                image: svc.image,
                volumes: svc.volumes,
                workdir: svc.workdir.as_ref(),
                read_only: svc.read_only,
            },
        );
        let workdir = match &svc.workdir {
            Some(w) if image.is_none() => self.rel_path(w, "workdir"),
            _ => Some(self.root.clone()),
        };
        let mut env = svc
            .env_file
            .as_ref()
            .map(|f| self.env_file(f))
            .unwrap_or_default();
        env.extend(self.env(svc.env));
        let depends_on = self.depends_on(name, svc.depends_on.unwrap_or_default(), names);
        let build = svc.build.and_then(|b| self.build(b, name));
        let ports = self.ports(svc.port, svc.ports);
        let watch = svc.watch.and_then(|w| self.watch(w, build.is_some()));
        let restart_on = self.restart_on(name, svc.restart_on, names);
        let url_default = self.url_default(name, svc.default, &ports);
        let health = svc.health.and_then(|h| self.health(h, !ports.is_empty()));
        let restart = self.restart_config(
            name,
            RestartRaw {
                policy: svc.restart,
                delay: svc.restart_delay,
                delay_max: svc.restart_delay_max,
                burst: svc.start_limit_burst,
                interval: svc.start_limit_interval,
            },
        );
        let watchdog = self.watchdog(name, svc.watchdog_sec);

        if self.diags.len() > errors_before {
            return None;
        }
        if let (Some(_), Some(BuildSpec::Cnb(_))) = (&image, &build) {
            self.push(
                format!("service `{name}` has both `image` and a buildpacks build"),
                Some(span.clone()),
                Some("a buildpacks build makes the service's image; remove `image`".into()),
            );
            return None;
        }
        Some(ServiceConfig {
            name: name.to_owned(),
            command,
            image,
            workdir: workdir?,
            env,
            build,
            depends_on,
            health,
            restart,
            stop_signal: svc.stop_signal.map(|s| s.into_inner().0),
            stop_timeout: svc
                .stop_timeout
                .map_or(Duration::from_secs(10), |d| d.into_inner().0),
            watchdog,
            stderr_priority: svc
                .stderr_priority
                .map_or(locald_core::priority::Priority::INFO, |p| p.into_inner().0),
            ports,
            watch,
            restart_on,
            url_default,
            runtime: svc
                .runtime
                .map(Spanned::into_inner)
                .or(self.project_runtime),
        })
    }

    /// What a service runs: its `command` and, for an image service, its
    /// image; a host service without `command` (and without a buildpacks
    /// build, which makes its start command) takes its Procfile entry.
    fn what_runs(
        &mut self,
        name: &str,
        span: &Range<usize>,
        cnb: bool,
        raw: RunsRaw<'_>,
    ) -> (Option<CommandSpec>, Option<ImageSpec>) {
        let errors_before = self.diags.len();
        let mut command = raw.command.and_then(|cmd| self.command(cmd, "command"));
        if let Some(image) = raw.image {
            let image = self.image(
                image,
                raw.volumes,
                raw.workdir,
                raw.read_only.map(Spanned::into_inner).unwrap_or(false),
            );
            return (command, image);
        }
        if let Some(r) = &raw.read_only {
            self.push(
                "`read_only` is for image services",
                Some(r.span()),
                Some(
                    "it makes a container's image files read-only; remove it or add `image`".into(),
                ),
            );
        }
        if let Some(v) = raw.volumes.as_ref().and_then(|v| v.first()) {
            self.push(
                "`volumes` are for image services",
                Some(v.span()),
                Some("a host process sees the host's files as they are; remove `volumes` or add `image`".into()),
            );
        }
        if command.is_none() && !cnb && self.diags.len() == errors_before {
            match self.procfile_command(name) {
                Ok(c) => command = Some(c),
                Err(why) => self.push(
                    format!("service `{name}` has no `command` or `image`, and {why}"),
                    Some(span.clone()),
                    Some("add `command = \"...\"` (what to run after the build), `image = \"...\"`, a buildpacks build, or a Procfile line `NAME: COMMAND`".into()),
                ),
            }
        }
        (command, None)
    }

    /// `depends_on`: known services of the project, not itself, each once.
    fn depends_on(
        &mut self,
        name: &str,
        deps: Vec<Spanned<String>>,
        names: &[String],
    ) -> Vec<String> {
        let mut depends_on = Vec::new();
        for dep in deps {
            let d = dep.get_ref();
            if d == name {
                self.push(
                    format!("service `{name}` depends on itself"),
                    Some(dep.span()),
                    Some("remove it from depends_on".into()),
                );
            } else if !names.iter().any(|n| n == d) {
                let hint = match did_you_mean(d, names.iter().map(String::as_str)) {
                    Some(best) => format!("did you mean `{best}`?"),
                    None => format!("services in this project: {}", names.join(", ")),
                };
                self.push(
                    format!("service `{name}` depends on unknown service `{d}`"),
                    Some(dep.span()),
                    Some(hint),
                );
            } else if depends_on.contains(d) {
                self.push(
                    format!("`{d}` is listed twice in depends_on"),
                    Some(dep.span()),
                    None,
                );
            } else {
                depends_on.push(d.clone());
            }
        }
        depends_on
    }

    /// `default = true`, which needs a port to lead to.
    fn url_default(&mut self, name: &str, default: Option<Spanned<bool>>, ports: &[Port]) -> bool {
        match &default {
            Some(d) if *d.get_ref() && ports.is_empty() => {
                self.push(
                    format!("service `{name}` is the project's default URL but has no port"),
                    Some(d.span()),
                    Some("add `port = \"auto\"` so the proxy knows where to send requests".into()),
                );
                false
            }
            Some(d) => *d.get_ref(),
            None => false,
        }
    }

    /// The restart policy with its defaults, and what cannot work together.
    fn restart_config(&mut self, name: &str, raw: RestartRaw) -> RestartConfig {
        let restart = RestartConfig {
            policy: raw.policy.map(Spanned::into_inner).unwrap_or_default(),
            delay: raw
                .delay
                .map_or(Duration::from_millis(500), |d| d.into_inner().0),
            delay_max: raw
                .delay_max
                .map_or(Duration::from_secs(30), |d| d.into_inner().0),
            burst: raw.burst.as_ref().map_or(5, |b| *b.get_ref()),
            interval: raw
                .interval
                .map_or(Duration::from_secs(60), |d| d.into_inner().0),
        };
        if restart.delay > restart.delay_max {
            self.push(
                "restart_delay is longer than restart_delay_max",
                None,
                Some(format!(
                    "in service `{name}`, make restart_delay_max at least {}",
                    humantime::format_duration(restart.delay)
                )),
            );
        }
        if let Some(b) = &raw.burst {
            if *b.get_ref() == 0 {
                self.push("start_limit_burst must be at least 1", Some(b.span()), None);
            }
        }
        restart
    }

    /// `watchdog_sec`, which must not be zero.
    fn watchdog(&mut self, name: &str, raw: Option<Spanned<RawDuration>>) -> Option<Duration> {
        let watchdog = raw.map(|d| d.into_inner().0);
        if watchdog == Some(Duration::ZERO) {
            self.push(
                "watchdog_sec must be greater than zero",
                None,
                Some(format!(
                    "in service `{name}`, remove it to disable the watchdog"
                )),
            );
        }
        watchdog
    }

    /// A builder's or run image's reference.
    fn cnb_image(&mut self, what: &str, r: &Spanned<String>) -> Option<String> {
        let hint = "write `name[:tag][@sha256:…]`, `oci:PATH[:TAG]` or `oci-archive:FILE[:TAG]`, \
                    e.g. \"paketobuildpacks/builder-jammy-base\"";
        let text = r.get_ref().trim();
        match check_image_reference(text) {
            Ok(()) if !text.contains(char::is_whitespace) => Some(text.to_owned()),
            Ok(()) => {
                self.push(
                    format!("invalid {what} image `{}`", r.get_ref()),
                    Some(r.span()),
                    Some(hint.into()),
                );
                None
            }
            Err(why) => {
                self.push(
                    format!("invalid {what} image `{}`: {why}", r.get_ref()),
                    Some(r.span()),
                    Some(hint.into()),
                );
                None
            }
        }
    }

    /// `buildpacks`: ids as they are, local directories made absolute.
    fn buildpacks(&mut self, raw: Vec<Spanned<String>>) -> Vec<String> {
        let mut buildpacks = Vec::new();
        for bp in raw {
            let text = bp.get_ref().trim();
            if text.is_empty() || text.contains(char::is_whitespace) {
                self.push(
                    format!("invalid buildpack `{}`", bp.get_ref()),
                    Some(bp.span()),
                    Some("give a buildpack id (`heroku/nodejs`, `id@1.2.3`) or a local directory (`./buildpacks/mine`)".into()),
                );
            } else if text.starts_with("./") || text.starts_with("../") || text.starts_with('/') {
                if let Some(p) = self.rel_path(&bp, "buildpack directory") {
                    buildpacks.push(p.to_string_lossy().into_owned());
                }
            } else {
                buildpacks.push(text.to_owned());
            }
        }
        buildpacks
    }

    /// `process`: a CNB process type's name.
    fn process_type(&mut self, p: &Spanned<String>) -> Option<String> {
        let ok = !p.get_ref().is_empty()
            && p.get_ref()
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            && !p.get_ref().starts_with('.');
        if ok {
            Some(p.get_ref().clone())
        } else {
            self.push(
                format!("invalid process type `{}`", p.get_ref()),
                Some(p.span()),
                Some("process types are letters, digits, `-`, `_` and `.`, e.g. \"web\" or \"worker\"".into()),
            );
            None
        }
    }

    fn watch(&mut self, w: Spanned<RawWatch>, has_build: bool) -> Option<WatchSpec> {
        let span = w.span();
        let default_action = if has_build {
            WatchAction::Rebuild
        } else {
            WatchAction::Restart
        };
        let (paths, action) = match w.into_inner() {
            RawWatch::On(false) => return None,
            RawWatch::On(true) => (Vec::new(), default_action),
            RawWatch::Paths(p) => (p, default_action),
            RawWatch::Table(t) => (
                t.paths.unwrap_or_default(),
                t.action.unwrap_or(default_action),
            ),
        };
        for p in &paths {
            if let Err(e) = globset::Glob::new(p) {
                self.push(
                    format!("invalid watch pattern `{p}`: {}", e.kind()),
                    Some(span.clone()),
                    Some("globs are relative to the project, e.g. \"src/**\" or \"templates/*.html\"".into()),
                );
                return None;
            }
        }
        if action == WatchAction::Rebuild && !has_build {
            self.push(
                "watch action \"rebuild\" needs a `build`",
                Some(span),
                Some("use action = \"restart\", or add a build".into()),
            );
            return None;
        }
        Some(WatchSpec { paths, action })
    }

    fn restart_on(
        &mut self,
        name: &str,
        list: Option<Vec<Spanned<String>>>,
        names: &[String],
    ) -> Vec<String> {
        let mut out = Vec::new();
        for s in list.unwrap_or_default() {
            let n = s.get_ref();
            if n == name {
                self.push(
                    format!("service `{name}` lists itself in restart_on"),
                    Some(s.span()),
                    Some("remove it".into()),
                );
            } else if !names.contains(n) {
                let hint = match did_you_mean(n, names.iter().map(String::as_str)) {
                    Some(best) => format!("did you mean `{best}`?"),
                    None => format!("services in this project: {}", names.join(", ")),
                };
                self.push(
                    format!("restart_on names unknown service `{n}`"),
                    Some(s.span()),
                    Some(hint),
                );
            } else if !out.contains(n) {
                out.push(n.clone());
            }
        }
        out
    }

    fn ports(
        &mut self,
        port: Option<Spanned<RawPort>>,
        named: Option<IndexMap<Spanned<String>, Spanned<RawPort>>>,
    ) -> Vec<Port> {
        let to_port = |name: Option<String>, p: RawPort| match p {
            RawPort::Auto => Port {
                name,
                auto: true,
                number: 0,
            },
            RawPort::Fixed(n) => Port {
                name,
                auto: false,
                number: n,
            },
        };
        let mut out: Vec<Port> = port
            .map(|p| to_port(None, p.into_inner()))
            .into_iter()
            .collect();
        for (name, p) in named.unwrap_or_default() {
            let n = name.get_ref();
            let ok = !n.is_empty()
                && n.len() <= 32
                && n.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok {
                self.push(
                    format!("invalid port name `{n}`"),
                    Some(name.span()),
                    Some("port names use letters, digits, `-` and `_`, start with a letter and are at most 32 long; the name becomes PORT_NAME in the environment".into()),
                );
                continue;
            }
            let port = to_port(Some(n.clone()), *p.get_ref());
            if let Some(other) = out.iter().find(|o| o.var() == port.var()) {
                self.push(
                    format!(
                        "port `{n}` and {} both become {}",
                        other
                            .name
                            .as_ref()
                            .map_or("`port`".to_owned(), |o| format!("port `{o}`")),
                        port.var()
                    ),
                    Some(name.span()),
                    Some("rename one of them".into()),
                );
                continue;
            }
            if !port.auto && out.iter().any(|o| !o.auto && o.number == port.number) {
                self.push(
                    format!("port {} is listed twice", port.number),
                    Some(p.span()),
                    None,
                );
                continue;
            }
            out.push(port);
        }
        out
    }

    /// Port references name services and ports that exist; two services
    /// never declare the same fixed port.
    pub(super) fn check_ports(
        &mut self,
        services: &IndexMap<String, ServiceConfig>,
        names: &[String],
    ) {
        for (r, span) in std::mem::take(&mut self.port_refs) {
            let Some(svc) = services.get(&r.service) else {
                // A service that failed its own checks was reported already.
                if !names.contains(&r.service) {
                    let hint = match did_you_mean(&r.service, names.iter().map(String::as_str)) {
                        Some(best) => format!("did you mean `{best}`?"),
                        None => format!("services in this project: {}", names.join(", ")),
                    };
                    self.push(
                        format!("`${{services.{}...}}` names an unknown service", r.service),
                        Some(span),
                        Some(hint),
                    );
                }
                continue;
            };
            let found = match &r.port {
                None => !svc.ports.is_empty(),
                Some(p) => svc.ports.iter().any(|x| x.name.as_deref() == Some(p)),
            };
            if !found {
                let what = match &r.port {
                    None => format!("service `{}` has no port", r.service),
                    Some(p) => format!("service `{}` has no port named `{p}`", r.service),
                };
                self.push(
                    what,
                    Some(span),
                    Some(format!(
                        "add `port = \"auto\"` (or `ports = {{ NAME = \"auto\" }}`) to [services.{}]",
                        r.service
                    )),
                );
            }
        }
        let defaults: Vec<&str> = services
            .iter()
            .filter(|(_, s)| s.url_default)
            .map(|(n, _)| n.as_str())
            .collect();
        if defaults.len() > 1 {
            self.push(
                format!(
                    "services {} are all marked `default = true`",
                    defaults.join(", ")
                ),
                None,
                Some("PROJECT.localhost leads to one service; keep `default = true` on one".into()),
            );
        }
        let mut seen: HashMap<u16, &str> = HashMap::new();
        for (name, svc) in services {
            for p in svc.ports.iter().filter(|p| !p.auto) {
                if let Some(other) = seen.insert(p.number, name) {
                    if other != name {
                        self.push(
                            format!("services `{other}` and `{name}` both use port {}", p.number),
                            None,
                            Some("give one of them another port, or \"auto\"".into()),
                        );
                    }
                }
            }
        }
    }

    fn image(
        &mut self,
        image: Spanned<String>,
        volumes: Option<Vec<Spanned<String>>>,
        workdir: Option<&Spanned<String>>,
        read_only: bool,
    ) -> Option<ImageSpec> {
        let before = self.diags.len();
        let reference = image.get_ref().trim().to_owned();
        if let Err(why) = check_image_reference(&reference) {
            self.push(
                format!("image: {why}"),
                Some(image.span()),
                Some(
                    "write `name[:tag][@sha256:…]`, `oci:PATH[:TAG]` or `oci-archive:FILE[:TAG]`"
                        .into(),
                ),
            );
        }
        let mut out = Vec::new();
        for v in volumes.unwrap_or_default() {
            if let Some(vol) = self.volume(&v) {
                out.push(vol);
            }
        }
        let workdir = workdir.and_then(|w| {
            if w.get_ref().starts_with('/') {
                Some(w.get_ref().clone())
            } else {
                self.push(
                    "the workdir of an image service is a path in the container and must be absolute",
                    Some(w.span()),
                    Some("e.g. workdir = \"/app\"".into()),
                );
                None
            }
        });
        (self.diags.len() == before).then_some(ImageSpec {
            reference,
            volumes: out,
            workdir,
            read_only,
        })
    }

    fn volume(&mut self, v: &Spanned<String>) -> Option<Volume> {
        let text = v.get_ref();
        let parts: Vec<&str> = text.split(':').collect();
        let (host, target, read_only) = match parts.as_slice() {
            [h, t] => (*h, *t, false),
            [h, t, "ro"] => (*h, *t, true),
            [h, t, "rw"] => (*h, *t, false),
            _ => {
                self.push(
                    format!("volume `{text}` is not HOST:CONTAINER[:ro]"),
                    Some(v.span()),
                    Some("e.g. \"./data:/data\" or \"./config.toml:/etc/app.toml:ro\"".into()),
                );
                return None;
            }
        };
        if !target.starts_with('/') || target.split('/').any(|c| c == "..") {
            self.push(
                format!("volume target `{target}` must be an absolute path in the container, without `..`"),
                Some(v.span()),
                None,
            );
            return None;
        }
        let source = self.rel_path(&Spanned::new(v.span(), host.to_owned()), "volume source")?;
        Some(Volume {
            source,
            target: target.to_owned(),
            read_only,
        })
    }

    fn build(&mut self, build: Spanned<RawBuild>, service: &str) -> Option<BuildSpec> {
        let span = build.span();
        match build.into_inner() {
            RawBuild::Command(s) => {
                let cmd =
                    self.command(Spanned::new(span, RawCommand::Shell(s)), "build command")?;
                Some(BuildSpec::Host(HostBuild {
                    command: cmd,
                    inputs: Vec::new(),
                    outputs: Vec::new(),
                    env: Vec::new(),
                }))
            }
            RawBuild::Table(mut t) => match (t.command.take(), t.builder.take()) {
                (Some(_), Some(b)) => {
                    self.push(
                        "a build table has both `command` and `builder`",
                        Some(b.span()),
                        Some("use `command` for a host build or `builder` for a buildpacks build, not both".into()),
                    );
                    None
                }
                (None, None) => {
                    self.push(
                        "a build table needs `command` or `builder`",
                        Some(span),
                        Some("e.g. build = { command = \"make\" } or build = { builder = \"paketobuildpacks/builder:base\" }".into()),
                    );
                    None
                }
                (Some(cmd), None) => {
                    for (field, v) in [
                        ("buildpacks", t.buildpacks.is_some()),
                        ("path", t.path.is_some()),
                        ("run_image", t.run_image.is_some()),
                        ("process", t.process.is_some()),
                        ("pull", t.pull.is_some()),
                    ] {
                        if v {
                            self.push(
                                format!("`{field}` is for buildpacks builds"),
                                Some(span.clone()),
                                Some("add `builder`, or remove it".into()),
                            );
                        }
                    }
                    let command = self.command(cmd, "build command")?;
                    let inputs = self.globs(t.inputs, "inputs");
                    let outputs = t
                        .outputs
                        .unwrap_or_default()
                        .into_iter()
                        .map(Spanned::into_inner)
                        .collect();
                    let env = self.env(t.env);
                    Some(BuildSpec::Host(HostBuild {
                        command,
                        inputs,
                        outputs,
                        env,
                    }))
                }
                (None, Some(builder)) => {
                    for (field, v) in [
                        ("inputs", t.inputs.is_some()),
                        ("outputs", t.outputs.is_some()),
                    ] {
                        if v {
                            self.push(
                                format!("`{field}` is for host builds"),
                                Some(span.clone()),
                                Some(
                                    "buildpacks builds hash the whole source tree; remove it"
                                        .into(),
                                ),
                            );
                        }
                    }
                    self.cnb_build(*t, builder, service)
                }
            },
        }
    }

    /// The buildpacks side of a build table (`builder` is set).
    fn cnb_build(
        &mut self,
        t: RawBuildTable,
        builder: Spanned<String>,
        service: &str,
    ) -> Option<BuildSpec> {
        let before = self.diags.len();
        let builder_ref = self.cnb_image("builder", &builder);
        let run_image = t.run_image.as_ref().and_then(|r| self.cnb_image("run", r));
        let path = match &t.path {
            Some(p) => self.rel_path(p, "path"),
            None => Some(self.root.clone()),
        };
        let buildpacks = self.buildpacks(t.buildpacks.unwrap_or_default());
        let process = t.process.as_ref().and_then(|p| self.process_type(p));
        let pull = match t.pull.as_ref().map(|p| p.get_ref().as_str()) {
            None | Some("if-not-present") => PullPolicy::IfNotPresent,
            Some("always") => PullPolicy::Always,
            Some(other) => {
                let span = t.pull.as_ref().map(Spanned::span);
                self.push(
                    format!("invalid pull policy `{other}`"),
                    span,
                    Some("use \"if-not-present\" (the default) or \"always\"".into()),
                );
                PullPolicy::IfNotPresent
            }
        };
        let env = self.env(t.env);
        if self.diags.len() > before {
            return None;
        }
        let layout = self
            .root
            .join(locald_core::fsutil::LOCALD_DIR)
            .join("services")
            .join(service)
            .join("artifacts")
            .join("oci-layout");
        Some(BuildSpec::Cnb(CnbBuild {
            builder: builder_ref?,
            run_image,
            buildpacks,
            path: path?,
            env,
            process,
            pull,
            layout,
        }))
    }

    fn globs(&mut self, globs: Option<Vec<Spanned<String>>>, what: &str) -> Vec<String> {
        let mut out = Vec::new();
        for g in globs.unwrap_or_default() {
            if g.get_ref().is_empty() {
                self.push(format!("empty pattern in `{what}`"), Some(g.span()), None);
            } else {
                out.push(g.into_inner());
            }
        }
        out
    }

    fn health(&mut self, health: Spanned<RawHealth>, has_port: bool) -> Option<HealthCheck> {
        let span = health.span();
        let h = health.into_inner();
        let errors_before = self.diags.len();
        let mut kinds = Vec::new();
        let no_port = |what: &str| {
            (
                format!("{what} uses the service's port, but the service has none"),
                Some("add `port = \"auto\"` (or a number) to the service".to_owned()),
            )
        };
        if let Some(port) = h.tcp {
            match port.get_ref() {
                RawPort::Fixed(n) => kinds.push(HealthKind::Tcp(*n)),
                RawPort::Auto if has_port => kinds.push(HealthKind::Tcp(0)),
                RawPort::Auto => {
                    let (m, hint) = no_port("tcp = \"auto\"");
                    self.push(m, Some(port.span()), hint);
                }
            }
        }
        if let Some(url) = h.http.as_ref().filter(|u| u.get_ref().starts_with('/')) {
            if has_port {
                kinds.push(HealthKind::Http(HttpUrl {
                    host: "127.0.0.1".into(),
                    port: 0,
                    path: url.get_ref().clone(),
                    text: url.get_ref().clone(),
                }));
            } else {
                let (m, hint) = no_port(&format!("http = \"{}\"", url.get_ref()));
                self.push(m, Some(url.span()), hint);
            }
        } else if let Some(url) = h.http {
            match HttpUrl::parse(url.get_ref()) {
                Ok(u) => kinds.push(HealthKind::Http(u)),
                Err(e) => self.push(
                    format!("invalid health URL `{}`: {e}", url.get_ref()),
                    Some(url.span()),
                    Some("write e.g. \"http://127.0.0.1:8000/health\"".into()),
                ),
            }
        }
        if let Some(cmd) = h.command {
            if let Some(cmd) = self.command(cmd, "health command") {
                kinds.push(HealthKind::Command(cmd));
            }
        }
        if let Some(n) = h.notify {
            if *n.get_ref() {
                kinds.push(HealthKind::Notify);
            }
        }
        if self.diags.len() > errors_before {
            return None;
        }
        if kinds.len() != 1 {
            self.push(
                if kinds.is_empty() { "health check has no kind" } else { "health check has more than one kind" },
                Some(span),
                Some("use exactly one of `tcp = PORT`, `http = \"URL\"` (or \"/path\"), `command = \"...\"`, `notify = true`".into()),
            );
            return None;
        }
        Some(HealthCheck {
            kind: kinds.pop()?,
            interval: h
                .interval
                .map_or(Duration::from_secs(1), |d| d.into_inner().0),
            timeout: h
                .timeout
                .map_or(Duration::from_secs(5), |d| d.into_inner().0),
            retries: h.retries.map_or(3, |r| r.into_inner()),
            start_period: h
                .start_period
                .map_or(Duration::from_secs(30), |d| d.into_inner().0),
        })
    }

    pub(super) fn check_cycles(
        &mut self,
        names: &[String],
        deps: &HashMap<String, Vec<Spanned<String>>>,
    ) {
        // Iterative DFS with colours; on a back edge the stack holds the cycle.
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Active,
            Done,
        }
        let mut mark: BTreeMap<&str, Mark> =
            names.iter().map(|n| (n.as_str(), Mark::New)).collect();
        for start in names {
            if mark.get(start.as_str()) != Some(&Mark::New) {
                continue;
            }
            let mut stack: Vec<(&str, usize)> = vec![(start.as_str(), 0)];
            mark.insert(start, Mark::Active);
            while let Some((node, idx)) = stack.last().copied() {
                let edges = deps.get(node).map(Vec::as_slice).unwrap_or(&[]);
                if let Some(edge) = edges.get(idx) {
                    if let Some(top) = stack.last_mut() {
                        top.1 += 1;
                    }
                    let next = edge.get_ref().as_str();
                    match mark.get(next).copied() {
                        Some(Mark::New) => {
                            mark.insert(next, Mark::Active);
                            stack.push((next, 0));
                        }
                        Some(Mark::Active) if next != node => {
                            let pos = stack.iter().position(|(n, _)| *n == next).unwrap_or(0);
                            let mut cycle: Vec<&str> =
                                stack[pos..].iter().map(|(n, _)| *n).collect();
                            cycle.push(next);
                            self.push(
                                format!("dependency cycle: {}", cycle.join(" -> ")),
                                Some(edge.span()),
                                Some("remove one of these depends_on entries".into()),
                            );
                            return;
                        }
                        _ => {}
                    }
                } else {
                    mark.insert(node, Mark::Done);
                    stack.pop();
                }
            }
        }
    }
}

/// Checks an image reference with the image module's own parser, so
/// `locald check` accepts exactly what the store can resolve.
fn check_image_reference(r: &str) -> Result<(), String> {
    crate::image::ImageRef::parse(r)
        .map(drop)
        .map_err(|e| e.to_string())
}
