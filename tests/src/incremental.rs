//! Helpers for the incremental-build tests: a project in a temporary
//! directory (optionally a real git repository) and a stand-in build that
//! stages and commits an artifact the way a real one does.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use locald::build::{needs_rebuild, BuildOptions, Decision};
use locald::config::{BuildSpec, CnbBuild};

/// Longer than the coarsest file timestamp tick Linux uses (10 ms at
/// HZ=100), so files written before it are strictly older than a stat
/// cache stamp taken after it.
pub const TICK: Duration = Duration::from_millis(25);

/// A project directory that is removed when dropped.
pub struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    /// An empty project (not a git repository).
    pub fn new() -> Result<Self> {
        Ok(Project {
            dir: tempfile::tempdir().context("creating a temporary project")?,
        })
    }

    /// An empty project that is a git repository.
    pub fn git() -> Result<Self> {
        let p = Project::new()?;
        p.run_git(&["init", "-q"])?;
        Ok(p)
    }

    /// The project directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `self.path().join(rel)`.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes a file, creating its directories.
    pub fn write(&self, rel: &str, content: &str) -> Result<()> {
        let p = self.join(rel);
        if let Some(d) = p.parent() {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        fs::write(&p, content).with_context(|| format!("writing {}", p.display()))
    }

    /// Runs git in the project with a fixed identity.
    pub fn run_git(&self, args: &[&str]) -> Result<()> {
        let out = Command::new("git")
            .args(["-c", "user.name=test", "-c", "user.email=test@invalid"])
            .args(args)
            .current_dir(self.path())
            .output()
            .context("running git")?;
        if !out.status.success() {
            bail!(
                "git {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Options for a CNB build of the whole project as service `web`.
    pub fn cnb(&self, builder: &str, env: &[(&str, &str)]) -> Result<BuildOptions> {
        let spec = BuildSpec::Cnb(CnbBuild {
            builder: builder.into(),
            buildpacks: vec![],
            path: self.path().to_path_buf(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            run_image: None,
            process: None,
            pull: locald::config::PullPolicy::IfNotPresent,
            layout: self
                .path()
                .join(".locald/services/web/artifacts/oci-layout"),
        });
        Ok(BuildOptions::new(self.path(), "web", spec, false)?)
    }
}

/// Decides, and when a build is needed runs a stand-in one: stages, writes
/// an `oci-layout/index.json` naming the source hash, and commits.
pub fn build(opts: &BuildOptions, builder_digest: Option<&str>) -> Result<Decision> {
    let decision = needs_rebuild(opts, builder_digest)?;
    if !decision.rebuild() {
        return Ok(decision);
    }
    let started = SystemTime::now();
    let staging = opts.service_layout().stage()?;
    let oci = staging.oci_layout_dir();
    fs::create_dir_all(&oci)?;
    let hash = decision
        .source_hash()
        .map(|d| d.to_hex())
        .unwrap_or_default();
    fs::write(
        oci.join("index.json"),
        format!("{{\"built-from\":\"{hash}\"}}"),
    )?;
    let manifest = decision.manifest(opts, started, SystemTime::now())?;
    let files = decision.source.as_ref().map(|s| s.files.as_slice());
    staging.commit(&manifest, files)?;
    Ok(decision)
}

/// Whether a precondition tool exists. Under `CI=true` a missing one fails
/// the test; elsewhere the test is skipped with a message saying why.
pub fn have(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    !crate::require(
        found,
        &format!("`{tool}` is not installed (run tests/setup-debian.sh)"),
    )
}
