//! Whether a service needs a build, and why.
//!
//! [`needs_rebuild`] compares what a build would be made from now (the
//! build spec's hash, the builder image, the source tree hash) with the
//! manifest of the last good build, and returns a [`Decision`] whose
//! [`Reason`] is what the user sees: "Build up to date", or "source changed:
//! 3 files (3 modified), e.g. src/main.rs". The decision carries the hashes
//! it computed so the build that follows writes them into its manifest
//! without walking the tree again.
//!
//! What is hashed depends on the kind of build:
//! - a CNB build hashes the whole tree under its `path`;
//! - a host build with `inputs` hashes only the files they match (its
//!   `outputs` are left out, so a build cannot invalidate itself), and is
//!   also rebuilt when one of its `outputs` is missing;
//! - a host build without `inputs` (the plain string form) has nothing to
//!   compare and runs on every `up`, as seed 001 says.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::artifact::{BuildKind, Layout, Manifest, ServiceLayout, Stored, SCHEMA_VERSION};
use super::hash::{hash_tree, ChangeSummary, HashScope, TreeHash};
use super::statcache::StatCache;
use super::{BuildError, Digest};
use crate::config::{BuildSpec, CommandSpec};
use crate::event::BuildResult;

/// Everything that decides and runs one build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The project directory (where `locald.toml` and `.locald/` are).
    pub project_path: PathBuf,
    /// The service being built.
    pub service: String,
    /// Its build spec.
    pub spec: BuildSpec,
    /// Where the last good artifact lives; default
    /// `.locald/services/<name>/artifacts`.
    pub output_dir: PathBuf,
    /// Build even if up to date.
    pub force: bool,
    /// CNB builds: `project.toml`'s `[build] include` patterns (empty: the
    /// whole tree).
    pub include: Vec<String>,
    /// CNB builds: paths (relative to the source directory) `project.toml`
    /// excludes.
    pub exclude: Vec<PathBuf>,
}

impl BuildOptions {
    /// Options with the default `.locald/` directories.
    pub fn new(
        project_path: impl Into<PathBuf>,
        service: &str,
        spec: BuildSpec,
        force: bool,
    ) -> Result<Self, BuildError> {
        let project_path = project_path.into();
        let svc = Layout::new(&project_path).service(service)?;
        Ok(BuildOptions {
            output_dir: svc.artifacts_dir().to_path_buf(),
            project_path,
            service: service.to_owned(),
            spec,
            force,
            include: Vec::new(),
            exclude: Vec::new(),
        })
    }

    /// The project's `.locald/`.
    pub fn layout(&self) -> Layout {
        Layout::new(&self.project_path)
    }

    /// The service's artifact and cache directories.
    pub fn service_layout(&self) -> ServiceLayout {
        ServiceLayout::at(&self.service, self.output_dir.clone())
    }

    /// Host or CNB.
    pub fn kind(&self) -> BuildKind {
        match self.spec {
            BuildSpec::Host(_) => BuildKind::Host,
            BuildSpec::Cnb(_) => BuildKind::Cnb,
        }
    }

    /// What the source hash covers, or `None` when the build hashes nothing
    /// (a host build without `inputs`).
    pub fn hash_scope(&self) -> Option<HashScope> {
        let (mut scope, extra) = match &self.spec {
            BuildSpec::Host(h) if h.inputs.is_empty() => return None,
            BuildSpec::Host(h) => (
                HashScope::inputs(&self.project_path, &h.inputs),
                h.outputs
                    .iter()
                    .map(|o| PathBuf::from(o.trim_start_matches("./").trim_end_matches('/')))
                    .filter(|p| !p.as_os_str().is_empty())
                    .collect(),
            ),
            BuildSpec::Cnb(c) if self.include.is_empty() => {
                (HashScope::tree(&c.path), self.exclude.clone())
            }
            BuildSpec::Cnb(c) => {
                // The descriptor itself always counts: its env changes builds.
                let mut include = self.include.clone();
                include.push("project.toml".into());
                (HashScope::inputs(&c.path, &include), self.exclude.clone())
            }
        };
        scope.exclude = extra;
        for dir in [&self.output_dir] {
            if let Ok(rel) = dir.strip_prefix(&scope.root) {
                if !rel.as_os_str().is_empty() {
                    scope.exclude.push(rel.to_path_buf());
                }
            }
        }
        Some(scope)
    }
}

/// Why a build runs, or that it does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Nothing that matters changed; the last artifact is used.
    UpToDate,
    /// `--force`.
    Forced,
    /// A host build without `inputs`: it runs on every `up`.
    AlwaysRuns,
    /// No previous build.
    NoArtifact,
    /// A previous manifest exists but cannot be used; says why.
    ArtifactUnusable(String),
    /// The build spec changed.
    ConfigChanged,
    /// The builder image resolves to another digest.
    BuilderChanged {
        /// Digest used by the last build.
        old: Option<String>,
        /// Digest now.
        new: String,
    },
    /// The run image resolves to another digest.
    RunImageChanged {
        /// Digest used by the last build.
        old: Option<String>,
        /// Digest now.
        new: String,
    },
    /// A host build's declared output is gone.
    OutputMissing(PathBuf),
    /// A host build's outputs differ from what the last good build left
    /// (changed by hand, or overwritten by a build that failed since).
    OutputChanged,
    /// The sources differ; `None` when the last build's file list is not
    /// available to say which files.
    SourceChanged(Option<ChangeSummary>),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::UpToDate => f.write_str("Build up to date"),
            Reason::Forced => f.write_str("rebuild forced"),
            Reason::AlwaysRuns => f.write_str("build runs on every up (no `inputs` declared)"),
            Reason::NoArtifact => f.write_str("no previous build"),
            Reason::ArtifactUnusable(why) => write!(f, "previous build unusable: {why}"),
            Reason::ConfigChanged => f.write_str("build config changed"),
            Reason::BuilderChanged { old: Some(o), new } => {
                write!(f, "builder image changed: {o} → {new}")
            }
            Reason::BuilderChanged { old: None, new } => {
                write!(f, "builder image changed: now {new}")
            }
            Reason::RunImageChanged { old: Some(o), new } => {
                write!(f, "run image changed: {o} → {new}")
            }
            Reason::RunImageChanged { old: None, new } => {
                write!(f, "run image changed: now {new}")
            }
            Reason::OutputMissing(p) => write!(f, "output missing: {}", p.display()),
            Reason::OutputChanged => f.write_str("outputs changed since the last good build"),
            Reason::SourceChanged(Some(s)) => write!(f, "source changed: {s}"),
            Reason::SourceChanged(None) => f.write_str("source changed"),
        }
    }
}

/// The outcome of [`needs_rebuild`], with what it computed.
#[derive(Debug, Clone)]
pub struct Decision {
    /// Why.
    pub reason: Reason,
    /// Hash of the build spec now.
    pub config_hash: Digest,
    /// The source tree now (`None` when the build hashes nothing).
    pub source: Option<TreeHash>,
    /// The builder image digest the decision was made with.
    pub builder_digest: Option<String>,
    /// The source hash was vouched for by the file watcher (nothing changed
    /// since it was computed), so the tree was not walked.
    pub from_watcher: bool,
}

impl Decision {
    /// A build has to run.
    pub fn rebuild(&self) -> bool {
        self.reason != Reason::UpToDate
    }

    /// The source tree hash, if any.
    pub fn source_hash(&self) -> Option<Digest> {
        self.source.as_ref().map(|s| s.digest)
    }

    /// The manifest for a successful build made on this decision. Call it
    /// once the build has run: it hashes the outputs the build left.
    pub fn manifest(
        &self,
        opts: &BuildOptions,
        started_at: SystemTime,
        finished_at: SystemTime,
    ) -> Result<Manifest, BuildError> {
        let duration = finished_at.duration_since(started_at).unwrap_or_default();
        Ok(Manifest {
            schema_version: SCHEMA_VERSION,
            kind: opts.kind(),
            service: opts.service.clone(),
            source_hash: self.source_hash().map(|d| d.to_hex()),
            config_hash: self.config_hash.to_hex(),
            builder_image_digest: self.builder_digest.clone(),
            cnb: None,
            // What the build left, so a later check notices outputs that
            // changed since (by hand, or by a build that failed half-way).
            output_hash: output_hash(opts)?,
            locald_version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at,
            finished_at,
            duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            result: BuildResult::Succeeded,
        })
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.reason.fmt(f)?;
        if self.from_watcher && self.reason == Reason::UpToDate {
            f.write_str(" (watched: no change since the last check)")?;
        }
        Ok(())
    }
}

/// Decides whether `opts` needs a build.
///
/// `builder_digest` is the digest the CNB builder image resolves to now, when
/// the caller knows it; `None` leaves the builder out of the decision (for
/// host builds, or when the registry cannot be asked).
///
/// The source tree is hashed even when the answer is already "rebuild"
/// (forced, config changed, ...), because the build records the hash in its
/// manifest. The stat cache in `.locald/state/` is refreshed on the way.
///
/// This blocks (file I/O, and hashing spread over rayon's threads): call it
/// from `tokio::task::spawn_blocking` in async code.
pub fn needs_rebuild(
    opts: &BuildOptions,
    builder_digest: Option<&str>,
) -> Result<Decision, BuildError> {
    needs_rebuild_with(opts, builder_digest, None)
}

/// [`needs_rebuild`] with the source tree hash already known: `known` is
/// a hash of [`BuildOptions::hash_scope`] that something vouches is still
/// the tree's (a file watcher that has seen no change since it was
/// computed), so the tree is not walked. Every other check (build spec,
/// builder, manifest, artifact, outputs) runs as usual.
pub fn needs_rebuild_with(
    opts: &BuildOptions,
    builder_digest: Option<&str>,
    known: Option<&TreeHash>,
) -> Result<Decision, BuildError> {
    let config_hash = config_hash(&opts.spec, &opts.project_path);
    let builder_digest = builder_digest.map(str::to_owned);
    let decide = |reason, source| Decision {
        reason,
        config_hash,
        source,
        builder_digest: builder_digest.clone(),
        from_watcher: known.is_some(),
    };

    let Some(scope) = opts.hash_scope() else {
        let reason = if opts.force {
            Reason::Forced
        } else {
            Reason::AlwaysRuns
        };
        return Ok(decide(reason, None));
    };
    let tree = match known {
        // Only the digest matters for "up to date"; the file list (which
        // can be the size of a kernel tree) is cloned when a build follows.
        Some(k) => TreeHash {
            digest: k.digest,
            files: Vec::new(),
            stats: k.stats,
        },
        None => hash_with_cache(opts, &scope, &opts.service)?,
    };
    let decide_full = |reason: Reason, tree: TreeHash| {
        let tree = match known {
            Some(k) => k.clone(),
            None => tree,
        };
        decide(reason, Some(tree))
    };
    let decide = |reason: Reason, tree: TreeHash| {
        if reason == Reason::UpToDate {
            decide(reason, Some(tree))
        } else {
            decide_full(reason, tree)
        }
    };

    if opts.force {
        return Ok(decide(Reason::Forced, tree));
    }
    let svc = opts.service_layout();
    let manifest = match svc.read_manifest()? {
        Stored::Missing => return Ok(decide(Reason::NoArtifact, tree)),
        Stored::Unusable(why) => return Ok(decide(Reason::ArtifactUnusable(why), tree)),
        Stored::Found(m) => m,
    };
    if manifest.config_hash != config_hash.to_hex() {
        return Ok(decide(Reason::ConfigChanged, tree));
    }
    if let Some(new) = &builder_digest {
        if manifest.builder_image_digest.as_deref() != Some(new.as_str()) {
            let reason = Reason::BuilderChanged {
                old: manifest.builder_image_digest.clone(),
                new: new.clone(),
            };
            return Ok(decide(reason, tree));
        }
    }
    match &opts.spec {
        BuildSpec::Cnb(_) => {
            if !svc.oci_layout_dir().is_dir() {
                return Ok(decide(Reason::NoArtifact, tree));
            }
        }
        BuildSpec::Host(h) => {
            for out in &h.outputs {
                let p = opts.project_path.join(out);
                if std::fs::symlink_metadata(&p).is_err() {
                    return Ok(decide(Reason::OutputMissing(PathBuf::from(out)), tree));
                }
            }
            if output_hash(opts)? != manifest.output_hash {
                return Ok(decide(Reason::OutputChanged, tree));
            }
        }
    }
    if manifest.source_hash.as_deref() != Some(tree.digest.to_hex().as_str()) {
        let files = known.map_or(&tree.files, |k| &k.files);
        let summary = svc
            .read_sources()
            .map(|old| ChangeSummary::between(&old, files));
        return Ok(decide(Reason::SourceChanged(summary), tree));
    }
    Ok(decide(Reason::UpToDate, tree))
}

/// [`needs_rebuild`] for a CNB build, which also rebuilds when the run
/// image resolves to another digest than the last build's.
pub fn needs_cnb_rebuild(
    opts: &BuildOptions,
    builder_digest: &str,
    run_image_digest: &str,
) -> Result<Decision, BuildError> {
    needs_cnb_rebuild_with(opts, builder_digest, run_image_digest, None)
}

/// [`needs_cnb_rebuild`] with the source tree hash already known (see
/// [`needs_rebuild_with`]).
pub fn needs_cnb_rebuild_with(
    opts: &BuildOptions,
    builder_digest: &str,
    run_image_digest: &str,
    known: Option<&TreeHash>,
) -> Result<Decision, BuildError> {
    let mut d = needs_rebuild_with(opts, Some(builder_digest), known)?;
    if d.reason == Reason::UpToDate {
        let old = match opts.service_layout().read_manifest()? {
            Stored::Found(m) => m.cnb.map(|c| c.run_image_digest),
            _ => None,
        };
        if old.as_deref() != Some(run_image_digest) {
            d.reason = Reason::RunImageChanged {
                old,
                new: run_image_digest.to_owned(),
            };
        }
    }
    Ok(d)
}

/// The tree hash (hex) of a host build's declared `outputs`, ignored files
/// included; `None` for a build that declares none. Uses a stat cache of its
/// own, so an unchanged output costs a `stat` per file, not a read.
pub fn output_hash(opts: &BuildOptions) -> Result<Option<String>, BuildError> {
    let BuildSpec::Host(h) = &opts.spec else {
        return Ok(None);
    };
    if h.outputs.is_empty() {
        return Ok(None);
    }
    let scope = HashScope::outputs(&opts.project_path, &h.outputs);
    let tree = hash_with_cache(opts, &scope, &format!("{}.outputs", opts.service))?;
    Ok(Some(tree.digest.to_hex()))
}

/// Hashes `scope` with the stat cache named `cache_name`, saving the cache
/// when it changed. A `.locald/` that cannot be written (a read-only checkout) costs
/// speed, not the answer.
fn hash_with_cache(
    opts: &BuildOptions,
    scope: &HashScope,
    cache_name: &str,
) -> Result<TreeHash, BuildError> {
    let layout = opts.layout();
    let mut cache = match layout.ensure() {
        Ok(()) => StatCache::load(layout.stat_cache_path(cache_name)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot create .locald/; hashing without a stat cache");
            StatCache::in_memory()
        }
    };
    let tree = hash_tree(scope, &mut cache)?;
    if let Err(e) = cache.save() {
        tracing::warn!(error = %e, "cannot save the stat cache");
    }
    Ok(tree)
}

/// A stable hash of a build spec: its kind and every field that changes
/// what a build produces, each length-prefixed. A CNB `path` inside the
/// project is hashed relative to it, so moving the project does not count
/// as a change.
pub fn config_hash(spec: &BuildSpec, project_path: &Path) -> Digest {
    let mut h = Fields(blake3::Hasher::new_derive_key("locald build config v1"));
    match spec {
        BuildSpec::Host(b) => {
            h.field(b"host");
            h.command(&b.command);
            h.list(&b.inputs);
            h.list(&b.outputs);
            h.env(&b.env);
        }
        BuildSpec::Cnb(c) => {
            h.field(b"cnb");
            h.field(c.builder.as_bytes());
            h.field(c.run_image.as_deref().unwrap_or("").as_bytes());
            h.list(&c.buildpacks);
            let path = c.path.strip_prefix(project_path).unwrap_or(&c.path);
            h.field(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()));
            h.env(&c.env);
        }
    }
    h.0.finalize().into()
}

struct Fields(blake3::Hasher);

impl Fields {
    fn field(&mut self, b: &[u8]) {
        self.0.update(&(b.len() as u64).to_le_bytes());
        self.0.update(b);
    }
    fn count(&mut self, n: usize) {
        self.0.update(&(n as u64).to_le_bytes());
    }
    fn list(&mut self, v: &[String]) {
        self.count(v.len());
        for s in v {
            self.field(s.as_bytes());
        }
    }
    fn env(&mut self, env: &[(String, String)]) {
        self.count(env.len());
        for (k, v) in env {
            self.field(k.as_bytes());
            self.field(v.as_bytes());
        }
    }
    fn command(&mut self, c: &CommandSpec) {
        match c {
            CommandSpec::Shell(s) => {
                self.field(b"sh");
                self.field(s.as_bytes());
            }
            CommandSpec::Argv(v) => {
                self.field(b"argv");
                self.list(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CnbBuild, HostBuild};

    fn host(cmd: &str, inputs: &[&str]) -> BuildSpec {
        BuildSpec::Host(HostBuild {
            command: CommandSpec::Shell(cmd.into()),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: vec!["dist/".into()],
            env: vec![],
        })
    }

    #[test]
    fn config_hash_is_stable_and_sensitive() {
        let p = Path::new("/proj");
        let a = config_hash(&host("make", &["src/**"]), p);
        assert_eq!(a, config_hash(&host("make", &["src/**"]), p));
        assert_ne!(a, config_hash(&host("make all", &["src/**"]), p));
        assert_ne!(a, config_hash(&host("make", &["src/**", "x"]), p));
        // Argv and shell forms of the same words differ.
        let argv = BuildSpec::Host(HostBuild {
            command: CommandSpec::Argv(vec!["make".into()]),
            inputs: vec!["src/**".into()],
            outputs: vec!["dist/".into()],
            env: vec![],
        });
        assert_ne!(a, config_hash(&argv, p));
        // A CNB path inside the project does not depend on where it is.
        let cnb = |root: &str| {
            BuildSpec::Cnb(CnbBuild {
                builder: "b:1".into(),
                run_image: None,
                buildpacks: vec![],
                path: Path::new(root).join("app"),
                env: vec![],
                process: None,
                pull: crate::config::PullPolicy::IfNotPresent,
                layout: Path::new(root).join("layout"),
            })
        };
        assert_eq!(
            config_hash(&cnb("/one"), Path::new("/one")),
            config_hash(&cnb("/two"), Path::new("/two"))
        );
    }

    #[test]
    fn string_form_host_build_always_runs() {
        let dir = tempfile::tempdir().unwrap();
        let opts = BuildOptions::new(dir.path(), "web", host("make", &[]), false).unwrap();
        let d = needs_rebuild(&opts, None).unwrap();
        assert_eq!(d.reason, Reason::AlwaysRuns);
        assert!(d.rebuild());
        assert!(d.source.is_none());
    }

    #[test]
    fn reasons_read_well() {
        let s = ChangeSummary {
            added: 0,
            removed: 0,
            modified: 3,
            examples: vec![PathBuf::from("src/main.rs")],
        };
        assert_eq!(
            Reason::SourceChanged(Some(s)).to_string(),
            "source changed: 3 files (3 modified), e.g. src/main.rs"
        );
        assert_eq!(Reason::UpToDate.to_string(), "Build up to date");
    }
}
