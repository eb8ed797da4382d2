//! Stage one of reading `locald.toml`: the file as written, with spans.
//!
//! These types mirror the TOML one to one and reject unknown keys. Leaf
//! values that have a syntax of their own (durations, signals, commands) are
//! checked here, inside `Deserialize`, so that the TOML parser attaches the
//! exact span of the offending value to the error. Checks that need more than
//! one value (dependencies, cycles, "exactly one health check kind") happen in
//! stage two, [`super::Config::from_raw`], using the [`Spanned`] wrappers kept
//! here. The JSON Schema in `docs/locald.schema.json` is generated from these
//! types, so editors see exactly what the parser accepts.

use std::fmt;
use std::time::Duration;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

/// Separates a message from its hint inside a custom serde error, so hints
/// survive the trip through the TOML parser's error type.
pub(crate) const HINT_SEP: char = '\u{1f}';

fn custom_with_hint<E: de::Error>(message: impl fmt::Display, hint: impl fmt::Display) -> E {
    E::custom(format!("{message}{HINT_SEP}{hint}"))
}

/// The whole file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "locald.toml",
    description = "A locald project: its services, how they are built, started, checked and restarted."
)]
pub struct RawFile {
    /// Project-wide settings.
    pub project: Option<RawProject>,
    /// The services of this project, by name.
    #[schemars(with = "Option<IndexMap<String, RawService>>")]
    pub services: Option<IndexMap<Spanned<String>, Spanned<RawService>>>,
    /// Same as `services`; accepted because the seed documentation writes `[service.NAME]`.
    #[schemars(with = "Option<IndexMap<String, RawService>>")]
    pub service: Option<IndexMap<Spanned<String>, Spanned<RawService>>>,
}

/// `[project]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawProject {
    /// Project name; defaults to the name of the directory holding `locald.toml`.
    #[schemars(with = "Option<String>")]
    pub name: Option<Spanned<String>>,
    /// How services (host programs and containers) and host builds run:
    /// "systemd" (each a transient unit of the user's systemd manager when
    /// the daemon runs under one; the default there) or "host" (children of
    /// locald, as everywhere without a user manager).
    #[schemars(with = "Option<RuntimeChoice>")]
    pub runtime: Option<Spanned<RuntimeChoice>>,
}

/// `runtime`.
pub use locald_core::workload::RuntimeChoice;

/// `[services.NAME]`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    /// What to run: a string is run with `sh -c`, an array is an argv run directly.
    #[schemars(with = "Option<RawCommand>")]
    pub command: Option<Spanned<RawCommand>>,
    /// An OCI image to run as a container: `name[:tag][@digest]` (Docker's
    /// defaults: `docker.io`, `library/`, `latest`), `oci:PATH[:TAG]` (a local
    /// OCI image layout, relative to the project) or `oci-archive:FILE[:TAG]`.
    /// With `image`, `command` (optional) overrides the image's Entrypoint and Cmd.
    #[schemars(with = "Option<String>")]
    pub image: Option<Spanned<String>>,
    /// Bind mounts for an image service: `HOST:CONTAINER[:ro]`, the host path
    /// relative to the project directory.
    #[schemars(with = "Option<Vec<String>>")]
    pub volumes: Option<Vec<Spanned<String>>>,
    /// For an image service: run on the image's shared files, read-only
    /// (faster start, nothing the container writes outside /tmp, /run,
    /// /var/tmp and volumes), instead of a private writable copy.
    #[schemars(with = "Option<bool>")]
    pub read_only: Option<Spanned<bool>>,
    /// Working directory: for a host process, relative to the project
    /// directory; for an image service, an absolute path in the container.
    #[schemars(with = "Option<String>")]
    pub workdir: Option<Spanned<String>>,
    /// Environment variables added to the service's environment.
    #[schemars(with = "Option<IndexMap<String, String>>")]
    pub env: Option<IndexMap<String, Spanned<EnvValue>>>,
    /// A file of `KEY=value` lines, relative to the project directory; `env` wins over it.
    #[schemars(with = "Option<String>")]
    pub env_file: Option<Spanned<String>>,
    /// A string is a host build command run once before start; a table with
    /// `builder` is a Cloud Native Buildpacks build; a table with `command` is a
    /// host build with options.
    #[schemars(with = "Option<RawBuild>")]
    pub build: Option<Spanned<RawBuild>>,
    /// Services that must be healthy before this one starts.
    #[schemars(with = "Option<Vec<String>>")]
    pub depends_on: Option<Vec<Spanned<String>>>,
    /// How locald decides the service is healthy.
    #[schemars(with = "Option<RawHealth>")]
    pub health: Option<Spanned<RawHealth>>,
    /// When to restart the process after it exits.
    #[schemars(with = "Option<RestartPolicy>")]
    pub restart: Option<Spanned<RestartPolicy>>,
    /// First delay before a restart; doubles up to `restart_delay_max`. Default "500ms".
    #[schemars(with = "Option<RawDurationSchema>")]
    pub restart_delay: Option<Spanned<RawDuration>>,
    /// Longest delay between restarts. Default "30s".
    #[schemars(with = "Option<RawDurationSchema>")]
    pub restart_delay_max: Option<Spanned<RawDuration>>,
    /// Failures within `start_limit_interval` after which the service is Failed. Default 5.
    #[schemars(with = "Option<u32>")]
    pub start_limit_burst: Option<Spanned<u32>>,
    /// Window for `start_limit_burst`. Default "60s".
    #[schemars(with = "Option<RawDurationSchema>")]
    pub start_limit_interval: Option<Spanned<RawDuration>>,
    /// Signal sent to stop the service, e.g. "SIGTERM" (default) or "INT".
    #[schemars(with = "Option<String>")]
    pub stop_signal: Option<Spanned<RawSignal>>,
    /// How long to wait after `stop_signal` before SIGKILL. Default "10s".
    #[schemars(with = "Option<RawDurationSchema>")]
    pub stop_timeout: Option<Spanned<RawDuration>>,
    /// If set, the service must send `WATCHDOG=1` on `$NOTIFY_SOCKET` at least this often.
    #[schemars(with = "Option<RawDurationSchema>")]
    pub watchdog_sec: Option<Spanned<RawDuration>>,
    /// A port for the service: "auto" (a free port, remembered per project
    /// and service) or a number. Passed as `PORT`.
    #[schemars(with = "Option<RawPortSchema>")]
    pub port: Option<Spanned<RawPort>>,
    /// Named ports, each "auto" or a number, passed as `PORT_NAME` (upper
    /// case); without `port`, the first is also `PORT`.
    #[schemars(with = "Option<IndexMap<String, RawPortSchema>>")]
    pub ports: Option<IndexMap<Spanned<String>, Spanned<RawPort>>>,
    /// Rebuild and restart when sources change: `true` (the build's inputs,
    /// else the whole project minus ignored files), an array of globs, or a
    /// table `{ paths = [...], action = "restart" | "rebuild" }`.
    #[schemars(with = "Option<RawWatchSchema>")]
    pub watch: Option<Spanned<RawWatch>>,
    /// The service `http://PROJECT.localhost:PROXY/` leads to (it needs a
    /// `port`); at most one per project.
    #[schemars(with = "Option<bool>")]
    pub default: Option<Spanned<bool>>,
    /// Services whose restart by `watch` restarts this one too.
    #[schemars(with = "Option<Vec<String>>")]
    pub restart_on: Option<Vec<Spanned<String>>>,
    /// Journal priority of stderr lines that carry no `<N>` prefix: "err",
    /// "warning", "info" (default), ... or 0-7.
    #[schemars(with = "Option<String>")]
    pub stderr_priority: Option<Spanned<RawPriority>>,
    /// How this service runs: "systemd" (a transient unit, where there is a
    /// user manager) or "host" (a child of locald); overrides
    /// `[project] runtime`.
    #[schemars(with = "Option<RuntimeChoice>")]
    pub runtime: Option<Spanned<RuntimeChoice>>,
}

/// A syslog priority name ("err", "warning", ...) or number 0-7.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawPriority(pub locald_core::priority::Priority);

const PRIORITY_HINT: &str =
    "use emerg, alert, crit, err, warning, notice, info or debug, or a number from 0 to 7";

impl<'de> Deserialize<'de> for RawPriority {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawPriority;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a syslog priority such as \"warning\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawPriority, E> {
                s.parse()
                    .map(RawPriority)
                    .map_err(|_| custom_with_hint(format!("unknown priority `{s}`"), PRIORITY_HINT))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawPriority, E> {
                u8::try_from(v)
                    .ok()
                    .and_then(locald_core::priority::Priority::new)
                    .map(RawPriority)
                    .ok_or_else(|| custom_with_hint(format!("unknown priority {v}"), PRIORITY_HINT))
            }
        }
        d.deserialize_any(V)
    }
}

/// A command: a shell string or an argv array.
#[derive(Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(untagged)]
pub enum RawCommand {
    /// Run with `sh -c`.
    Shell(String),
    /// Run directly, no shell.
    Argv(Vec<String>),
}

impl<'de> Deserialize<'de> for RawCommand {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawCommand;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a command string or an array of strings")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawCommand, E> {
                Ok(RawCommand::Shell(s.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawCommand, A::Error> {
                let mut argv = Vec::new();
                while let Some(arg) = seq.next_element::<String>()? {
                    argv.push(arg);
                }
                Ok(RawCommand::Argv(argv))
            }
        }
        d.deserialize_any(V)
    }
}

/// An environment value; numbers and booleans are accepted and turned into text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvValue(pub String);

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = EnvValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<EnvValue, E> {
                Ok(EnvValue(s.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// `build`: a string (host command) or a table (host build with options, or CNB).
#[derive(Debug, JsonSchema)]
#[serde(untagged)]
pub enum RawBuild {
    /// A host build command run with `sh -c` once before the service starts.
    Command(String),
    /// A build table.
    Table(Box<RawBuildTable>),
}

impl<'de> Deserialize<'de> for RawBuild {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawBuild;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a build command string or a build table")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawBuild, E> {
                Ok(RawBuild::Command(s.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawBuild, A::Error> {
                // Deserializing through the parser's own MapAccess keeps its
                // spans on errors inside the table (unknown keys, bad values).
                RawBuildTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|t| RawBuild::Table(Box::new(t)))
            }
        }
        d.deserialize_any(V)
    }
}

/// The table form of `build`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBuildTable {
    /// Host build: the command to run (string for `sh -c`, or argv).
    #[schemars(with = "Option<RawCommand>")]
    pub command: Option<Spanned<RawCommand>>,
    /// Host build: files whose content decides whether the build must run again (globs).
    #[schemars(with = "Option<Vec<String>>")]
    pub inputs: Option<Vec<Spanned<String>>>,
    /// Host build: what the build produces; a skip needs these to exist.
    #[schemars(with = "Option<Vec<String>>")]
    pub outputs: Option<Vec<Spanned<String>>>,
    /// CNB build: the builder image, e.g. "paketobuildpacks/builder:base".
    #[schemars(with = "Option<String>")]
    pub builder: Option<Spanned<String>>,
    /// CNB build: buildpacks to use instead of the builder's detection.
    #[schemars(with = "Option<Vec<String>>")]
    pub buildpacks: Option<Vec<Spanned<String>>>,
    /// CNB build: source directory relative to the project (default: the project).
    #[schemars(with = "Option<String>")]
    pub path: Option<Spanned<String>>,
    /// CNB build: the run image (default: the builder's own run image); any
    /// image reference, `oci:PATH:TAG` included.
    #[schemars(with = "Option<String>")]
    pub run_image: Option<Spanned<String>>,
    /// CNB build: the process type the service runs (default: the
    /// buildpacks' default process, usually "web").
    #[schemars(with = "Option<String>")]
    pub process: Option<Spanned<String>>,
    /// CNB build: when to ask the registry for newer builder and run images:
    /// "if-not-present" (default: use what is stored) or "always".
    #[schemars(with = "Option<String>")]
    pub pull: Option<Spanned<String>>,
    /// Environment for the build.
    #[schemars(with = "Option<IndexMap<String, String>>")]
    pub env: Option<IndexMap<String, Spanned<EnvValue>>>,
}

/// `[services.NAME.health]`: exactly one of `tcp`, `http`, `command`, `notify`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// Healthy once a TCP connection to 127.0.0.1:PORT succeeds; "auto" is
    /// the service's own `port`.
    #[schemars(with = "Option<RawPortSchema>")]
    pub tcp: Option<Spanned<RawPort>>,
    /// Healthy once a GET of this http:// URL answers 2xx or 3xx; a path
    /// such as "/health" is asked of 127.0.0.1 on the service's own `port`.
    #[schemars(with = "Option<String>")]
    pub http: Option<Spanned<String>>,
    /// Healthy once this command (run with `sh -c`) exits 0.
    #[schemars(with = "Option<RawCommand>")]
    pub command: Option<Spanned<RawCommand>>,
    /// Healthy once the service sends `READY=1` on `$NOTIFY_SOCKET`.
    #[schemars(with = "Option<bool>")]
    pub notify: Option<Spanned<bool>>,
    /// Time between checks. Default "1s".
    #[schemars(with = "Option<RawDurationSchema>")]
    pub interval: Option<Spanned<RawDuration>>,
    /// Time one check may take. Default "5s".
    #[schemars(with = "Option<RawDurationSchema>")]
    pub timeout: Option<Spanned<RawDuration>>,
    /// Consecutive failed checks after the start period before the service counts as failed. Default 3.
    #[schemars(with = "Option<u32>")]
    pub retries: Option<Spanned<u32>>,
    /// Grace time after start during which failed checks do not count. Default "30s".
    #[schemars(with = "Option<RawDurationSchema>")]
    pub start_period: Option<Spanned<RawDuration>>,
}

/// A port: "auto" or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawPort {
    /// A free port, chosen once and remembered.
    Auto,
    /// This number.
    Fixed(u16),
}

/// Schema stand-in for [`RawPort`].
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum RawPortSchema {
    /// "auto".
    Auto(RawPortAuto),
    /// A port number.
    Number(u16),
}

/// The word "auto".
#[derive(JsonSchema)]
#[allow(dead_code)]
enum RawPortAuto {
    /// A free port, chosen once and remembered.
    #[serde(rename = "auto")]
    Auto,
}

const PORT_HINT: &str =
    "write \"auto\" for a free port chosen by locald, or a number from 1 to 65535";

impl<'de> Deserialize<'de> for RawPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawPort;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"auto\" or a port number")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawPort, E> {
                if s == "auto" {
                    Ok(RawPort::Auto)
                } else {
                    Err(custom_with_hint(format!("invalid port `{s}`"), PORT_HINT))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawPort, E> {
                u16::try_from(v)
                    .ok()
                    .filter(|p| *p != 0)
                    .map(RawPort::Fixed)
                    .ok_or_else(|| custom_with_hint(format!("invalid port {v}"), PORT_HINT))
            }
        }
        d.deserialize_any(V)
    }
}

/// `watch`: on/off, globs, or a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawWatch {
    /// `true` / `false`.
    On(bool),
    /// Globs relative to the project.
    Paths(Vec<String>),
    /// `{ paths, action }`.
    Table(RawWatchTable),
}

/// The table form of `watch`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWatchTable {
    /// Globs relative to the project (default: as `watch = true`).
    pub paths: Option<Vec<String>>,
    /// "rebuild" (default when the service has a build) runs the build
    /// first; "restart" only restarts the process.
    pub action: Option<WatchAction>,
}

/// What a watched change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum WatchAction {
    /// Restart the process, no build.
    Restart,
    /// Run the build (skipped when up to date), then restart.
    Rebuild,
}

/// Schema stand-in for [`RawWatch`].
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum RawWatchSchema {
    /// Watch the build's inputs, else the project minus ignored files.
    On(bool),
    /// Globs relative to the project.
    Paths(Vec<String>),
    /// Paths and action.
    Table(RawWatchTable),
}

impl<'de> Deserialize<'de> for RawWatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawWatch;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true, an array of globs, or a table { paths, action }")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawWatch, E> {
                Ok(RawWatch::On(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawWatch, A::Error> {
                let mut paths = Vec::new();
                while let Some(p) = seq.next_element::<String>()? {
                    paths.push(p);
                }
                Ok(RawWatch::Paths(paths))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawWatch, A::Error> {
                RawWatchTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawWatch::Table)
            }
        }
        d.deserialize_any(V)
    }
}

/// `restart`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Restart when the process exits with a failure (non-zero, signal, failed health).
    #[default]
    OnFailure,
    /// Restart whenever the process exits.
    Always,
    /// Never restart.
    Never,
}

/// A duration: a string like "500ms", "10s", "1m 30s", or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawDuration(pub Duration);

/// Schema stand-in for [`RawDuration`].
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum RawDurationSchema {
    /// "500ms", "10s", "2m", "1h", "1m 30s".
    Text(String),
    /// Seconds.
    Seconds(f64),
}

const DURATION_HINT: &str =
    "write a number with a unit, e.g. \"500ms\", \"10s\", \"2m\", or a number of seconds";

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"10s\" or a number of seconds")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawDuration, E> {
                humantime::parse_duration(s.trim())
                    .map(RawDuration)
                    .map_err(|e| {
                        custom_with_hint(format!("invalid duration `{s}`: {e}"), DURATION_HINT)
                    })
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawDuration, E> {
                u64::try_from(v)
                    .map(|s| RawDuration(Duration::from_secs(s)))
                    .map_err(|_| {
                        custom_with_hint(format!("invalid duration {v}: negative"), DURATION_HINT)
                    })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawDuration, E> {
                Ok(RawDuration(Duration::from_secs(v)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawDuration, E> {
                Duration::try_from_secs_f64(v)
                    .map(RawDuration)
                    .map_err(|_| custom_with_hint(format!("invalid duration {v}"), DURATION_HINT))
            }
        }
        d.deserialize_any(V)
    }
}

/// A signal name such as "SIGTERM", "TERM" or "SIGHUP", or its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawSignal(pub nix::sys::signal::Signal);

impl<'de> Deserialize<'de> for RawSignal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawSignal;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a signal name such as \"SIGTERM\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawSignal, E> {
                let upper = s.trim().to_ascii_uppercase();
                let name = if upper.starts_with("SIG") {
                    upper
                } else {
                    format!("SIG{upper}")
                };
                name.parse::<nix::sys::signal::Signal>().map(RawSignal).map_err(|_| {
                    custom_with_hint(
                        format!("unknown signal `{s}`"),
                        "use a signal name such as \"SIGTERM\", \"SIGINT\", \"SIGQUIT\" or \"SIGHUP\"",
                    )
                })
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawSignal, E> {
                i32::try_from(v)
                    .ok()
                    .and_then(|n| nix::sys::signal::Signal::try_from(n).ok())
                    .map(RawSignal)
                    .ok_or_else(|| {
                        custom_with_hint(
                            format!("unknown signal number {v}"),
                            "use a signal name such as \"SIGTERM\"",
                        )
                    })
            }
        }
        d.deserialize_any(V)
    }
}
