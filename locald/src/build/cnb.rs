//! The platform side of Cloud Native Buildpacks, as data: what locald reads
//! from a builder image, how it calls the builder's own `creator`, and what
//! it reads back from the exported image. Running the creator (in a
//! container, through the shim) is the supervisor's (`supervisor/cnb.rs`);
//! this module has no I/O beyond reading `project.toml`, so every rule of
//! the CNB Platform Interface Specification that locald follows is tested
//! here without a container.
//!
//! - [`BuilderInfo::from_config`] reads `io.buildpacks.builder.metadata`,
//!   the builder's `CNB_USER_ID`/`CNB_GROUP_ID` and the lifecycle's
//!   platform APIs, and picks the highest API both sides support (at least
//!   0.12: exporting to an OCI layout needs it).
//! - [`layout_path`] maps an image reference to its directory in the
//!   creator's layout directory (`<registry>/<repository>/<tag>`).
//! - [`creator_args`] and [`creator_env`] are the creator's command line.
//! - [`phase_of`] turns the lifecycle's `===> PHASE` banners into progress
//!   steps.
//! - [`BuildMetadata::from_config`] reads `io.buildpacks.build.metadata`
//!   (process types) from the exported image.
//! - [`ProjectDescriptor::load`] reads the subset of `project.toml` locald
//!   honours.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::image::ImageConfiguration;
use serde::Deserialize;

/// Platform APIs this version of locald implements, lowest first. 0.12 is
/// the first whose creator exports to an OCI layout (`-layout`).
pub const PLATFORM_APIS: &[&str] = &["0.12", "0.13", "0.14"];

/// The five phases of the creator, in the order its banners announce them,
/// with what the user sees for each.
pub const PHASES: &[(&str, &str)] = &[
    ("ANALYZING", "Analyzing"),
    ("DETECTING", "Detecting buildpacks"),
    ("RESTORING", "Restoring cache"),
    ("BUILDING", "Building"),
    ("EXPORTING", "Exporting image"),
];

/// Where the build container sees its directories.
pub mod paths {
    /// The copy of the sources.
    pub const APP: &str = "/workspace";
    /// The fresh layers directory.
    pub const LAYERS: &str = "/layers";
    /// The persistent cache.
    pub const CACHE: &str = "/cache";
    /// The platform directory (`env/`).
    pub const PLATFORM: &str = "/platform";
    /// The OCI layout directory (run image in, app image out).
    pub const LAYOUT: &str = "/layout-repo";
    /// Extra buildpacks from the project (`buildpacks` directories).
    pub const EXTRA_BUILDPACKS: &str = "/cnb/locald-buildpacks";
}

/// Label with the builder's metadata.
pub const BUILDER_LABEL: &str = "io.buildpacks.builder.metadata";
/// Label with the exported image's build metadata (processes).
pub const BUILD_LABEL: &str = "io.buildpacks.build.metadata";

/// Why a builder or an exported image cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CnbError {
    /// The image has no builder label: not a builder.
    #[error("{image} is not a buildpacks builder: it has no `{BUILDER_LABEL}` label")]
    NotABuilder {
        /// The image reference.
        image: String,
    },
    /// A label is not the JSON the spec describes.
    #[error("{image}: label `{label}` is not valid: {why}")]
    BadLabel {
        /// The image reference.
        image: String,
        /// The label.
        label: &'static str,
        /// The parser's complaint.
        why: String,
    },
    /// No platform API both sides support.
    #[error(
        "builder {image} supports platform APIs {}, this locald supports {}: \
         none in common (exporting to an OCI layout needs 0.12 or later); \
         use a newer builder",
        if supported.is_empty() { "(none listed)".to_owned() } else { supported.join(", ") },
        PLATFORM_APIS.join(", ")
    )]
    NoCommonApi {
        /// The image reference.
        image: String,
        /// What its lifecycle says it supports.
        supported: Vec<String>,
    },
    /// `CNB_USER_ID` / `CNB_GROUP_ID` missing or not numbers.
    #[error("builder {image}: `{var}` is {}; a builder's Env must set it to the build user's id", value.as_deref().unwrap_or("missing"))]
    BadUser {
        /// The image reference.
        image: String,
        /// The variable.
        var: &'static str,
        /// What it was.
        value: Option<String>,
    },
    /// No run image given, and the builder names none.
    #[error("builder {image} names no run image; set `run_image` in the build table")]
    NoRunImage {
        /// The image reference.
        image: String,
    },
    /// The exported image lacks a process the service asked for.
    #[error(
        "the built image has no process type `{wanted}` (it has: {}); \
         change `process` or the buildpacks",
        if have.is_empty() { "none".to_owned() } else { have.join(", ") }
    )]
    NoSuchProcess {
        /// Asked for.
        wanted: String,
        /// Present.
        have: Vec<String>,
    },
    /// `project.toml` cannot be read or is not the descriptor.
    #[error("{}: {why}", path.display())]
    Project {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

/// What locald needs from a builder image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuilderInfo {
    /// The platform API both sides support, highest first chosen.
    pub platform_api: String,
    /// The build user.
    pub uid: u32,
    /// The build group.
    pub gid: u32,
    /// The run image the builder names (`images[0]`, else the older
    /// `stack.runImage`), if any.
    pub run_image: Option<String>,
    /// The lifecycle's version, for messages.
    pub lifecycle_version: Option<String>,
}

#[derive(Deserialize, Default)]
struct BuilderMetadata {
    #[serde(default)]
    images: Vec<RunImageEntry>,
    #[serde(default)]
    stack: Option<StackMeta>,
    #[serde(default)]
    lifecycle: Option<LifecycleMeta>,
}

#[derive(Deserialize)]
struct RunImageEntry {
    image: String,
}

#[derive(Deserialize)]
struct StackMeta {
    #[serde(rename = "runImage")]
    run_image: Option<RunImageEntry>,
}

#[derive(Deserialize, Default)]
struct LifecycleMeta {
    version: Option<String>,
    /// Older builders: the one API of each kind.
    api: Option<ApiPair>,
    /// Newer builders: the lists.
    apis: Option<ApiLists>,
}

#[derive(Deserialize)]
struct ApiPair {
    platform: Option<String>,
}

#[derive(Deserialize)]
struct ApiLists {
    platform: Option<ApiSet>,
}

#[derive(Deserialize)]
struct ApiSet {
    #[serde(default)]
    supported: Vec<String>,
    #[serde(default)]
    deprecated: Vec<String>,
}

/// `(major, minor)` of an API version `X.Y`.
fn api_version(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.trim().split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn labels(config: &ImageConfiguration) -> BTreeMap<String, String> {
    config
        .config()
        .as_ref()
        .and_then(|c| c.labels().clone())
        .map(|l| l.into_iter().collect())
        .unwrap_or_default()
}

fn env_var(config: &ImageConfiguration, name: &str) -> Option<String> {
    config
        .config()
        .as_ref()
        .and_then(|c| c.env().clone())
        .unwrap_or_default()
        .iter()
        .find_map(|e| e.strip_prefix(name)?.strip_prefix('=').map(str::to_owned))
}

impl BuilderInfo {
    /// Reads a builder image's config; `image` names it in errors.
    pub fn from_config(image: &str, config: &ImageConfiguration) -> Result<Self, CnbError> {
        let labels = labels(config);
        let raw = labels
            .get(BUILDER_LABEL)
            .ok_or_else(|| CnbError::NotABuilder {
                image: image.to_owned(),
            })?;
        let meta: BuilderMetadata = serde_json::from_str(raw).map_err(|e| CnbError::BadLabel {
            image: image.to_owned(),
            label: BUILDER_LABEL,
            why: e.to_string(),
        })?;
        let lifecycle = meta.lifecycle.unwrap_or_default();
        let mut supported: Vec<String> = match &lifecycle.apis {
            Some(ApiLists {
                platform: Some(set),
            }) => set
                .supported
                .iter()
                .chain(&set.deprecated)
                .cloned()
                .collect(),
            _ => lifecycle
                .api
                .as_ref()
                .and_then(|a| a.platform.clone())
                .into_iter()
                .collect(),
        };
        supported.sort_by_key(|s| api_version(s));
        supported.dedup();
        let platform_api = PLATFORM_APIS
            .iter()
            .rev()
            .find(|ours| {
                supported
                    .iter()
                    .any(|theirs| api_version(theirs) == api_version(ours))
            })
            .map(|s| (*s).to_owned())
            .ok_or_else(|| CnbError::NoCommonApi {
                image: image.to_owned(),
                supported: supported.clone(),
            })?;
        let id = |var: &'static str| {
            let value = env_var(config, var);
            value
                .as_deref()
                .and_then(|v| v.trim().parse::<u32>().ok())
                .ok_or(CnbError::BadUser {
                    image: image.to_owned(),
                    var,
                    value,
                })
        };
        let run_image = meta
            .images
            .first()
            .map(|i| i.image.clone())
            .or_else(|| meta.stack.and_then(|s| s.run_image).map(|r| r.image))
            .filter(|s| !s.trim().is_empty());
        Ok(BuilderInfo {
            platform_api,
            uid: id("CNB_USER_ID")?,
            gid: id("CNB_GROUP_ID")?,
            run_image,
            lifecycle_version: lifecycle.version,
        })
    }
}

/// A reference as the creator reads it, split with Docker's defaults:
/// `(registry, repository, tag)`. `None` for a reference with a digest
/// only or one that does not parse.
pub fn split_reference(reference: &str) -> Option<(String, String, String)> {
    let reference = reference.trim();
    if reference.is_empty() || reference.contains('@') {
        return None;
    }
    let (name, tag) = match reference.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, t),
        _ => (reference, "latest"),
    };
    let (registry, repo) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_owned(), rest.to_owned())
        }
        Some(_) => ("index.docker.io".to_owned(), name.to_owned()),
        None => ("index.docker.io".to_owned(), format!("library/{name}")),
    };
    let registry = if registry == "docker.io" {
        "index.docker.io".to_owned()
    } else {
        registry
    };
    if repo.is_empty() || tag.is_empty() || repo.split('/').any(|c| c.is_empty() || c == "..") {
        return None;
    }
    Some((registry, repo, tag.to_owned()))
}

/// The directory, relative to the layout directory, where the creator
/// reads or writes the image `reference` (the spec's "map an image
/// reference to a path in the layout directory").
pub fn layout_path(reference: &str) -> Option<PathBuf> {
    let (registry, repo, tag) = split_reference(reference)?;
    Some(Path::new(&registry).join(repo).join(tag))
}

/// A component of an image name: lowercase letters, digits and single
/// `-`, never empty.
fn name_component(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let out = out.trim_end_matches('-').to_owned();
    if out.is_empty() {
        "x".to_owned()
    } else {
        out
    }
}

/// The registry name of images locald makes: no registry answers it.
pub const LOCAL_REGISTRY: &str = "locald.local";

/// The name the exported image gets: `locald.local/<project>/<service>:latest`,
/// also its tag in the user's image store.
pub fn output_name(project: &str, service: &str) -> String {
    format!(
        "{LOCAL_REGISTRY}/{}/{}:{}",
        name_component(project),
        name_component(service),
        crate::config::CNB_IMAGE_TAG
    )
}

/// The name the run image is given in the layout directory: its own name
/// for a registry image, else one made from its digest.
pub fn run_image_name(reference: &str, digest_hex: &str) -> String {
    match crate::image::ImageRef::parse(reference) {
        Ok(crate::image::ImageRef::Registry(_)) if split_reference(reference).is_some() => {
            reference.trim().to_owned()
        }
        _ => format!(
            "{LOCAL_REGISTRY}/run-image:sha256-{}",
            &digest_hex[..digest_hex.len().min(16)]
        ),
    }
}

/// The versions of each buildpack a builder holds
/// (`io.buildpacks.buildpack.layers`: `{id: {version: {...}}}`).
pub fn builder_buildpacks(config: &ImageConfiguration) -> BTreeMap<String, Vec<String>> {
    let labels = labels(config);
    let Some(text) = labels.get("io.buildpacks.buildpack.layers") else {
        return BTreeMap::new();
    };
    let parsed: BTreeMap<String, BTreeMap<String, serde_json::Value>> =
        serde_json::from_str(text).unwrap_or_default();
    parsed
        .into_iter()
        .map(|(id, versions)| (id, versions.into_keys().collect()))
        .collect()
}

/// A buildpack the user chose, before it is resolved against the builder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildpackChoice {
    /// `id` or `id@version`.
    Id {
        /// The id.
        id: String,
        /// The version, if given.
        version: Option<String>,
    },
    /// A buildpack directory on the host (with `buildpack.toml`).
    Dir(PathBuf),
}

impl BuildpackChoice {
    /// From `locald.toml`'s `buildpacks` (ids, or absolute directories after
    /// the config check).
    pub fn from_config(s: &str) -> Self {
        if s.starts_with('/') {
            return BuildpackChoice::Dir(PathBuf::from(s));
        }
        match s.split_once('@') {
            Some((id, v)) => BuildpackChoice::Id {
                id: id.to_owned(),
                version: Some(v.to_owned()),
            },
            None => BuildpackChoice::Id {
                id: s.to_owned(),
                version: None,
            },
        }
    }

    /// From `project.toml`'s `[[build.buildpacks]]`; `uri` is a local
    /// directory relative to `dir`, the only kind locald fetches.
    pub fn from_project(bp: &ProjectBuildpack, dir: &Path) -> Result<Self, String> {
        if let Some(uri) = &bp.uri {
            let path = uri.strip_prefix("file://").unwrap_or(uri);
            if path.contains("://") || path.starts_with("docker:") || path.starts_with("urn:") {
                return Err(format!(
                    "project.toml: buildpack uri `{uri}` is not a local directory; \
                     locald takes ids the builder has, or local directories"
                ));
            }
            let p = Path::new(path);
            return Ok(BuildpackChoice::Dir(if p.is_absolute() {
                p.to_owned()
            } else {
                dir.join(p)
            }));
        }
        Ok(BuildpackChoice::Id {
            id: bp.id.clone().unwrap_or_default(),
            version: bp.version.clone(),
        })
    }
}

/// `id` and `version` from a buildpack directory's `buildpack.toml` text.
pub fn buildpack_id(toml_text: &str) -> Result<(String, String), String> {
    #[derive(Deserialize)]
    struct File {
        buildpack: Bp,
    }
    #[derive(Deserialize)]
    struct Bp {
        id: String,
        version: String,
    }
    let f: File = toml::from_str(toml_text).map_err(|e| e.to_string())?;
    let ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && !s.contains(['\0', '\n', '"', '\\'])
            && !s.starts_with('/')
            && !s.split('/').any(|c| c.is_empty() || c == "..")
    };
    if !ok(&f.buildpack.id) || !ok(&f.buildpack.version) || f.buildpack.version.contains('/') {
        return Err("`[buildpack] id` or `version` is not usable".into());
    }
    Ok((f.buildpack.id, f.buildpack.version))
}

/// The directory name of a buildpack id under a buildpacks directory
/// (`/` becomes `_`, as the spec says).
pub fn escape_id(id: &str) -> String {
    id.replace('/', "_")
}

/// An `order.toml` of one group holding `group` (id, version), in order.
pub fn order_toml(group: &[(String, String)]) -> String {
    let mut s = String::from("[[order]]\n");
    for (id, version) in group {
        s.push_str(&format!(
            "\n  [[order.group]]\n    id = {}\n    version = {}\n",
            toml_string(id),
            toml_string(version)
        ));
    }
    s
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The version of `id` to use: the one asked for, else the builder's only
/// (or highest) version.
pub fn resolve_version(
    id: &str,
    version: Option<&str>,
    have: &BTreeMap<String, Vec<String>>,
    builder: &str,
) -> Result<String, String> {
    let versions = have.get(id).ok_or_else(|| {
        format!(
            "buildpack `{id}` is not in builder {builder} (it has: {}); \
             give a local directory instead",
            if have.is_empty() {
                "none listed".to_owned()
            } else {
                have.keys().cloned().collect::<Vec<_>>().join(", ")
            }
        )
    })?;
    match version {
        Some(v) if versions.iter().any(|x| x == v) => Ok(v.to_owned()),
        Some(v) => Err(format!(
            "builder {builder} has buildpack `{id}` in version(s) {}, not {v}",
            versions.join(", ")
        )),
        None => versions
            .iter()
            .max_by_key(|v| {
                v.split(['.', '-'])
                    .map(|p| p.parse::<u64>().unwrap_or(0))
                    .collect::<Vec<_>>()
            })
            .cloned()
            .ok_or_else(|| format!("builder {builder} lists no version of `{id}`")),
    }
}

/// Everything the creator's command line is made of.
#[derive(Debug, Clone)]
pub struct CreatorCall<'a> {
    /// The chosen platform API.
    pub platform_api: &'a str,
    /// The build user.
    pub uid: u32,
    /// The build group.
    pub gid: u32,
    /// `-run-image`.
    pub run_image: &'a str,
    /// The output image name.
    pub output: &'a str,
    /// An `order.toml` of locald's own (`buildpacks` given), in the
    /// container.
    pub order: Option<&'a str>,
    /// `-process-type`.
    pub process: Option<&'a str>,
    /// `-buildpacks`: a buildpacks directory of locald's own (local
    /// buildpacks given).
    pub buildpacks: Option<&'a str>,
}

/// The creator's argv (`/cnb/lifecycle/creator` first).
pub fn creator_args(c: &CreatorCall<'_>) -> Vec<String> {
    let mut a: Vec<String> = vec!["/cnb/lifecycle/creator".into()];
    let mut flag = |f: &str, v: &str| {
        a.push(format!("-{f}"));
        a.push(v.to_owned());
    };
    flag("app", paths::APP);
    flag("layers", paths::LAYERS);
    flag("cache-dir", paths::CACHE);
    flag("platform", paths::PLATFORM);
    flag("layout-dir", paths::LAYOUT);
    flag("run-image", c.run_image);
    flag("uid", &c.uid.to_string());
    flag("gid", &c.gid.to_string());
    if let Some(order) = c.order {
        flag("order", order);
    }
    if let Some(dir) = c.buildpacks {
        flag("buildpacks", dir);
    }
    if let Some(p) = c.process {
        flag("process-type", p);
    }
    a.push("-layout".into());
    a.push("-no-color".into());
    a.push(c.output.to_owned());
    a
}

/// The creator's environment: the platform API, and layout export opted in
/// as the spec requires (it is experimental), quietly.
pub fn creator_env(platform_api: &str) -> Vec<(String, String)> {
    vec![
        ("CNB_PLATFORM_API".into(), platform_api.to_owned()),
        ("CNB_EXPERIMENTAL_MODE".into(), "quiet".into()),
        ("CNB_NO_COLOR".into(), "true".into()),
    ]
}

/// The progress step (1-based) and label of a lifecycle banner line
/// (`===> RESTORING`), if it is one.
pub fn phase_of(line: &[u8]) -> Option<(u32, &'static str)> {
    let text = std::str::from_utf8(line).ok()?.trim();
    let name = text.strip_prefix("===> ")?.trim();
    PHASES
        .iter()
        .position(|(banner, _)| *banner == name)
        .map(|i| (i as u32 + 1, PHASES[i].1))
}

/// One process type of a built image.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ProcessType {
    /// Its name (`web`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Its command.
    #[serde(default)]
    pub command: Vec<String>,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
}

/// What `io.buildpacks.build.metadata` says about a built image.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BuildMetadata {
    /// Its process types.
    pub processes: Vec<ProcessType>,
    /// The default process, if the buildpacks named one.
    pub default_process: Option<String>,
}

impl BuildMetadata {
    /// Reads the label from an exported image's config.
    pub fn from_config(config: &ImageConfiguration) -> Result<Self, CnbError> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            processes: Option<Vec<ProcessType>>,
            #[serde(rename = "buildpack-default-process-type", default)]
            default: Option<String>,
        }
        let labels = labels(config);
        let Some(text) = labels.get(BUILD_LABEL) else {
            return Ok(BuildMetadata::default());
        };
        let raw: Raw = serde_json::from_str(text).map_err(|e| CnbError::BadLabel {
            image: "the built image".into(),
            label: BUILD_LABEL,
            why: e.to_string(),
        })?;
        Ok(BuildMetadata {
            processes: raw.processes.unwrap_or_default(),
            default_process: raw.default.filter(|d| !d.is_empty()),
        })
    }

    /// The process type names.
    pub fn process_types(&self) -> Vec<String> {
        self.processes.iter().map(|p| p.kind.clone()).collect()
    }

    /// Checks that `process` (if asked for) exists.
    pub fn check_process(&self, process: Option<&str>) -> Result<(), CnbError> {
        match process {
            Some(p) if !self.processes.iter().any(|x| x.kind == p) => {
                Err(CnbError::NoSuchProcess {
                    wanted: p.to_owned(),
                    have: self.process_types(),
                })
            }
            _ => Ok(()),
        }
    }
}

/// One `[[build.buildpacks]]` of `project.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectBuildpack {
    /// A buildpack id.
    pub id: Option<String>,
    /// Its version.
    pub version: Option<String>,
    /// A local directory (relative to the project) or a URI.
    pub uri: Option<String>,
}

/// One `[[build.env]]` of `project.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectEnv {
    /// The variable.
    pub name: String,
    /// Its value.
    pub value: String,
}

/// The parts of `project.toml` (the project descriptor `pack` reads) that
/// locald honours.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProjectDescriptor {
    /// `[build] include`: only these (gitignore-style patterns) go into the
    /// build.
    pub include: Vec<String>,
    /// `[build] exclude`: these stay out of it.
    pub exclude: Vec<String>,
    /// `[[build.buildpacks]]`.
    pub buildpacks: Vec<ProjectBuildpack>,
    /// `[[build.env]]`.
    pub env: Vec<(String, String)>,
}

/// Largest `project.toml` read.
const PROJECT_LIMIT: u64 = 1 << 20;

impl ProjectDescriptor {
    /// Reads `dir/project.toml`; absent is empty.
    pub fn load(dir: &Path) -> Result<Self, CnbError> {
        let path = dir.join("project.toml");
        let bad = |why: String| CnbError::Project {
            path: path.clone(),
            why,
        };
        if std::fs::symlink_metadata(&path).is_err() {
            return Ok(Self::default());
        }
        let text = crate::fsutil::read_input(&path, "project.toml", PROJECT_LIMIT)
            .map_err(|e| bad(crate::error_chain(&e)))?;
        let text = String::from_utf8(text).map_err(|_| bad("not UTF-8".into()))?;
        Self::parse(&text).map_err(bad)
    }

    /// Parses the text of a `project.toml`.
    pub fn parse(text: &str) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct File {
            #[serde(default)]
            build: Option<Build>,
            // `[_]`, `[io.buildpacks]` (the older schema) and others: not ours.
            #[serde(default)]
            io: Option<Io>,
        }
        #[derive(Deserialize)]
        struct Io {
            #[serde(default)]
            buildpacks: Option<Build>,
        }
        #[derive(Deserialize)]
        struct Build {
            #[serde(default)]
            include: Vec<String>,
            #[serde(default)]
            exclude: Vec<String>,
            #[serde(default)]
            buildpacks: Vec<ProjectBuildpack>,
            #[serde(default)]
            env: Vec<ProjectEnv>,
        }
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let Some(build) = file.build.or(file.io.and_then(|i| i.buildpacks)) else {
            return Ok(Self::default());
        };
        if !build.include.is_empty() && !build.exclude.is_empty() {
            return Err("`[build]` has both `include` and `exclude`; the spec allows one".into());
        }
        for bp in &build.buildpacks {
            if bp.id.is_none() && bp.uri.is_none() {
                return Err("a `[[build.buildpacks]]` needs `id` or `uri`".into());
            }
        }
        Ok(ProjectDescriptor {
            include: build.include,
            exclude: build.exclude,
            buildpacks: build.buildpacks,
            env: build.env.into_iter().map(|e| (e.name, e.value)).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(labels: &[(&str, &str)], env: &[&str]) -> ImageConfiguration {
        let json = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Env": env,
                "Labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
            },
            "rootfs": {"type": "layers", "diff_ids": []},
            "history": [],
        });
        serde_json::from_value(json).unwrap()
    }

    const META: &str = r#"{"images":[{"image":"example.com/run:1"}],"stack":{"runImage":{"image":"old/run"}},"lifecycle":{"version":"0.20.0","apis":{"platform":{"supported":["0.10","0.12","0.13"],"deprecated":[]}}}}"#;

    #[test]
    fn builder_picks_the_highest_common_api_and_its_user() {
        let c = config(
            &[(BUILDER_LABEL, META)],
            &["CNB_USER_ID=1000", "CNB_GROUP_ID=1001"],
        );
        let b = BuilderInfo::from_config("b", &c).unwrap();
        assert_eq!(b.platform_api, "0.13");
        assert_eq!((b.uid, b.gid), (1000, 1001));
        assert_eq!(b.run_image.as_deref(), Some("example.com/run:1"));
    }

    #[test]
    fn builder_errors_say_what_is_wrong() {
        let no_label = config(&[], &["CNB_USER_ID=1", "CNB_GROUP_ID=1"]);
        assert!(matches!(
            BuilderInfo::from_config("b", &no_label),
            Err(CnbError::NotABuilder { .. })
        ));
        let old = r#"{"lifecycle":{"api":{"platform":"0.9"}}}"#;
        let e = BuilderInfo::from_config(
            "b",
            &config(
                &[(BUILDER_LABEL, old)],
                &["CNB_USER_ID=1", "CNB_GROUP_ID=1"],
            ),
        )
        .unwrap_err();
        assert!(e.to_string().contains("0.9"), "{e}");
        assert!(e.to_string().contains("0.12"), "{e}");
        let e =
            BuilderInfo::from_config("b", &config(&[(BUILDER_LABEL, META)], &["CNB_GROUP_ID=1"]))
                .unwrap_err();
        assert!(e.to_string().contains("CNB_USER_ID"), "{e}");
        let e =
            BuilderInfo::from_config("b", &config(&[(BUILDER_LABEL, "{nope")], &[])).unwrap_err();
        assert!(matches!(e, CnbError::BadLabel { .. }));
    }

    #[test]
    fn references_map_to_layout_paths_with_docker_defaults() {
        assert_eq!(
            layout_path("registry.locald.test/fixture/run:latest").unwrap(),
            Path::new("registry.locald.test/fixture/run/latest")
        );
        assert_eq!(
            layout_path("locald.local/proj/web").unwrap(),
            Path::new("locald.local/proj/web/latest")
        );
        assert_eq!(
            layout_path("busybox").unwrap(),
            Path::new("index.docker.io/library/busybox/latest")
        );
        assert_eq!(
            layout_path("localhost:5000/a/b:1").unwrap(),
            Path::new("localhost:5000/a/b/1")
        );
        assert!(layout_path("a/../b").is_none());
        assert!(layout_path("a@sha256:00").is_none());
    }

    #[test]
    fn output_names_are_valid_image_names() {
        assert_eq!(
            output_name("My_Proj", "web"),
            "locald.local/my-proj/web:latest"
        );
        assert_eq!(output_name("--", "x.y"), "locald.local/x/x-y:latest");
        assert!(split_reference(&output_name("A b", "c")).is_some());
    }

    #[test]
    fn banners_are_steps() {
        assert_eq!(phase_of(b"===> RESTORING"), Some((3, "Restoring cache")));
        assert_eq!(phase_of(b"===> ANALYZING\r"), Some((1, "Analyzing")));
        assert_eq!(phase_of(b"===> NOPE"), None);
        assert_eq!(phase_of(b"RESTORING"), None);
    }

    #[test]
    fn creator_line_has_layout_and_user() {
        let a = creator_args(&CreatorCall {
            platform_api: "0.13",
            uid: 1000,
            gid: 1000,
            run_image: "r/run:1",
            output: "locald.local/p/web:latest",
            order: None,
            process: None,
            buildpacks: None,
        });
        assert_eq!(a[0], "/cnb/lifecycle/creator");
        assert!(a.windows(2).any(|w| w == ["-uid", "1000"]));
        assert!(a.iter().any(|x| x == "-layout"));
        assert_eq!(a.last().unwrap(), "locald.local/p/web:latest");
    }

    #[test]
    fn buildpack_choices_and_order() {
        assert_eq!(
            BuildpackChoice::from_config("a/b@1.0"),
            BuildpackChoice::Id {
                id: "a/b".into(),
                version: Some("1.0".into())
            }
        );
        assert_eq!(
            BuildpackChoice::from_config("/x/bp"),
            BuildpackChoice::Dir("/x/bp".into())
        );
        let bp = ProjectBuildpack {
            id: None,
            version: None,
            uri: Some("https://example.com/bp.tgz".into()),
        };
        assert!(BuildpackChoice::from_project(&bp, Path::new("/p")).is_err());
        let mut have = BTreeMap::new();
        have.insert(
            "a/b".to_owned(),
            vec!["0.9.0".to_owned(), "0.10.0".to_owned()],
        );
        assert_eq!(resolve_version("a/b", None, &have, "B").unwrap(), "0.10.0");
        assert!(resolve_version("a/b", Some("2"), &have, "B").is_err());
        let e = resolve_version("c", None, &have, "B").unwrap_err();
        assert!(e.contains("it has: a/b"), "{e}");
        let order = order_toml(&[("a/b".into(), "1".into())]);
        let v: toml::Value = toml::from_str(&order).unwrap();
        assert_eq!(v["order"][0]["group"][0]["id"].as_str(), Some("a/b"));
        assert_eq!(
            buildpack_id("[buildpack]\nid = \"x/y\"\nversion = \"1.0\"\n").unwrap(),
            ("x/y".into(), "1.0".into())
        );
        assert!(buildpack_id("[buildpack]\nid = \"../x\"\nversion = \"1\"\n").is_err());
    }

    #[test]
    fn build_metadata_processes() {
        let label = r#"{"processes":[{"type":"web","command":["hello-web"],"args":[],"direct":true}],"buildpack-default-process-type":"web"}"#;
        let m = BuildMetadata::from_config(&config(&[(BUILD_LABEL, label)], &[])).unwrap();
        assert_eq!(m.process_types(), ["web"]);
        assert_eq!(m.default_process.as_deref(), Some("web"));
        assert!(m.check_process(Some("web")).is_ok());
        let e = m.check_process(Some("worker")).unwrap_err();
        assert!(e.to_string().contains("has: web"), "{e}");
    }

    #[test]
    fn project_descriptor_subset() {
        let d = ProjectDescriptor::parse(
            "[_]\nschema-version = \"0.2\"\n[build]\nexclude = [\"secret.txt\"]\n[[build.buildpacks]]\nuri = \"./bp\"\n[[build.env]]\nname = \"A\"\nvalue = \"1\"\n",
        )
        .unwrap();
        assert_eq!(d.exclude, ["secret.txt"]);
        assert_eq!(d.buildpacks[0].uri.as_deref(), Some("./bp"));
        assert_eq!(d.env, [("A".to_owned(), "1".to_owned())]);
        assert!(ProjectDescriptor::parse("[build]\ninclude=['a']\nexclude=['b']\n").is_err());
        assert!(ProjectDescriptor::parse("[[build.buildpacks]]\nversion='1'\n").is_err());
        assert_eq!(
            ProjectDescriptor::parse("").unwrap(),
            ProjectDescriptor::default()
        );
    }
}
