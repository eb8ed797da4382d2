//! The `.locald/` directory of a project: where builds keep their artifacts,
//! caches and state, and how a new artifact replaces the old one.
//!
//! ```text
//! .locald/
//!   .gitignore                                 # "*": never in the user's git status
//!   services/<name>/artifacts/manifest.json    # what was built from what (Manifest)
//!   services/<name>/artifacts/sources.bin      # the file list hashed, to explain changes
//!   services/<name>/artifacts/oci-layout/      # CNB image (CNB builds)
//!   services/<name>/cache/                     # kept between builds
//!   services/<name>/artifacts.lock             # held while a build of <name> runs
//!   state/<name>.statcache                     # stat cache (see statcache.rs)
//!   state/<name>.statcache.clock               # its stamp source, rewritten at each check
//! ```
//!
//! A build never writes into `artifacts/`. [`ServiceLayout::stage`] takes the
//! service's build lock, removes staging directories left by builds that
//! died, and creates a fresh `artifacts.staging-*` next to `artifacts/`. The
//! build writes there; [`Staging::commit`] writes the manifest last, fsyncs
//! everything, and swaps the directory in with one `renameat2(
//! RENAME_EXCHANGE)`. Until that rename the previous artifact is complete
//! and usable; a build that fails, or a process that is killed, leaves only
//! a staging directory behind, which the next build removes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::hash::{decode_files, encode_files, FileEntry};
use super::BuildError;
use crate::event::BuildResult;

/// Version of `manifest.json`; a manifest of another version is treated as
/// absent, so the service is rebuilt once.
pub const SCHEMA_VERSION: u32 = 1;

/// The directory under the project root.
pub const LOCALD_DIR: &str = ".locald";

const STAGING_PREFIX: &str = ".staging-";
const OLD_PREFIX: &str = ".old-";

/// Which kind of build made an artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildKind {
    /// A command run on the host.
    Host,
    /// Cloud Native Buildpacks.
    Cnb,
}

/// `artifacts/manifest.json`: what an artifact was built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`SCHEMA_VERSION`] when written.
    pub schema_version: u32,
    /// Host or CNB.
    pub kind: BuildKind,
    /// The service it was built for.
    pub service: String,
    /// Tree hash of the sources (hex); `None` for builds that hash nothing.
    pub source_hash: Option<String>,
    /// Hash of the build spec (hex), see [`super::config_hash`].
    pub config_hash: String,
    /// Digest of the builder image used (CNB builds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builder_image_digest: Option<String>,
    /// CNB builds: what else the image was made with and what it offers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnb: Option<Box<CnbManifest>>,
    /// Tree hash (hex) of a host build's declared `outputs` as the build
    /// left them; a later check that finds them different rebuilds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_hash: Option<String>,
    /// `CARGO_PKG_VERSION` of the locald that built it.
    pub locald_version: String,
    /// When the build started.
    #[serde(with = "rfc3339")]
    pub started_at: SystemTime,
    /// When it finished.
    #[serde(with = "rfc3339")]
    pub finished_at: SystemTime,
    /// `finished_at - started_at` in milliseconds.
    pub duration_ms: u64,
    /// How it ended (only a successful build is committed, so `succeeded`
    /// in an `artifacts/` directory).
    pub result: BuildResult,
}

/// The CNB part of a [`Manifest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CnbManifest {
    /// Digest of the run image's manifest.
    pub run_image_digest: String,
    /// The platform API the creator ran with.
    pub platform_api: String,
    /// The exported image's manifest digest.
    pub image_digest: String,
    /// Its name in the user's image store (`locald.local/<project>/<service>:latest`).
    pub image_name: String,
    /// Its process types.
    pub process_types: Vec<String>,
    /// The default process type, if any.
    pub default_process: Option<String>,
}

mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

/// What is stored for a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// No manifest: never built, or cleaned.
    Missing,
    /// A manifest that cannot be used (damaged, or another schema version);
    /// the text says why.
    Unusable(String),
    /// A usable manifest.
    Found(Manifest),
}

/// `.locald/` of one project.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout of the project at `project`.
    pub fn new(project: &Path) -> Self {
        Layout {
            root: project.join(LOCALD_DIR),
        }
    }

    /// `.locald/` itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `.locald/state/`.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }

    /// The stat cache file of `service`.
    pub fn stat_cache_path(&self, service: &str) -> PathBuf {
        self.state_dir().join(format!("{service}.statcache"))
    }

    /// Creates `.locald/` with its `.gitignore` and `state/`.
    pub fn ensure(&self) -> Result<(), BuildError> {
        let state = self.state_dir();
        fs::create_dir_all(&state).map_err(|e| BuildError::io("cannot create", &state, e))?;
        let gi = self.root.join(".gitignore");
        if !gi.exists() {
            write_atomic(
                &gi,
                b"# Written by locald: build artifacts and state.\n*\n",
                false,
            )?;
        }
        Ok(())
    }

    /// The default directories of `service`.
    pub fn service(&self, service: &str) -> Result<ServiceLayout, BuildError> {
        validate_name(service)?;
        let dir = self.root.join("services").join(service);
        Ok(ServiceLayout {
            service: service.to_owned(),
            artifacts: dir.join("artifacts"),
            cache: dir.join("cache"),
        })
    }
}

/// A name used as one path component: not empty, not `.` or `..`, no `/`
/// or NUL, at most 255 bytes.
fn validate_name(name: &str) -> Result<(), BuildError> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 255
        && !name.contains(['/', '\0']);
    if ok {
        Ok(())
    } else {
        Err(BuildError::BadServiceName(name.to_owned()))
    }
}

/// The artifact and cache directories of one service.
#[derive(Debug, Clone)]
pub struct ServiceLayout {
    service: String,
    artifacts: PathBuf,
    cache: PathBuf,
}

impl ServiceLayout {
    /// Directories chosen by the caller (a build's `output_dir` and
    /// `cache_dir`). Staging directories and the lock live next to
    /// `artifacts`, so that the final rename stays on one filesystem.
    pub fn at(service: &str, artifacts: PathBuf, cache: PathBuf) -> Self {
        ServiceLayout {
            service: service.to_owned(),
            artifacts,
            cache,
        }
    }

    /// The service.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// `artifacts/`: the last good build.
    pub fn artifacts_dir(&self) -> &Path {
        &self.artifacts
    }

    /// `artifacts/manifest.json`.
    pub fn manifest_path(&self) -> PathBuf {
        self.artifacts.join("manifest.json")
    }

    /// `artifacts/sources.bin`.
    pub fn sources_path(&self) -> PathBuf {
        self.artifacts.join("sources.bin")
    }

    /// `artifacts/oci-layout/`.
    pub fn oci_layout_dir(&self) -> PathBuf {
        self.artifacts.join("oci-layout")
    }

    /// `cache/`, kept between builds.
    pub fn cache_dir(&self) -> &Path {
        &self.cache
    }

    fn parent(&self) -> &Path {
        self.artifacts.parent().unwrap_or(Path::new("."))
    }

    fn sibling(&self, suffix: &str) -> PathBuf {
        let mut name = self
            .artifacts
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| "artifacts".into());
        name.push(suffix);
        self.parent().join(name)
    }

    /// The manifest of the last good build.
    pub fn read_manifest(&self) -> Result<Stored, BuildError> {
        let path = self.manifest_path();
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Stored::Missing),
            Err(e) => return Err(BuildError::io("cannot read", path, e)),
        };
        #[derive(Deserialize)]
        struct Version {
            schema_version: u32,
        }
        match serde_json::from_slice::<Version>(&data) {
            Ok(v) if v.schema_version != SCHEMA_VERSION => {
                return Ok(Stored::Unusable(format!(
                    "manifest has schema version {}, this locald writes {SCHEMA_VERSION}",
                    v.schema_version
                )))
            }
            Ok(_) => {}
            Err(e) => return Ok(Stored::Unusable(format!("manifest is damaged: {e}"))),
        }
        Ok(match serde_json::from_slice::<Manifest>(&data) {
            Ok(m) => Stored::Found(m),
            Err(e) => Stored::Unusable(format!("manifest is damaged: {e}")),
        })
    }

    /// The file list the last good build was made from, if it was kept and
    /// is intact.
    pub fn read_sources(&self) -> Option<Vec<FileEntry>> {
        decode_files(&fs::read(self.sources_path()).ok()?)
    }

    /// Starts a build: takes the service's lock, cleans up after builds that
    /// died, and creates an empty staging directory.
    ///
    /// Fails with [`BuildError::Busy`] while another build of the service
    /// (in this process or another) holds the lock.
    pub fn stage(&self) -> Result<Staging, BuildError> {
        let parent = self.parent().to_path_buf();
        fs::create_dir_all(&parent).map_err(|e| BuildError::io("cannot create", &parent, e))?;
        // `.locald/` is the grandparent for the default layout; give it its
        // .gitignore when that is where we are.
        if let Some(root) = parent.ancestors().find(|p| p.ends_with(LOCALD_DIR)) {
            if let Some(project) = root.parent() {
                Layout::new(project).ensure()?;
            }
        }

        let lock_path = self.sibling(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| BuildError::io("cannot open", &lock_path, e))?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(BuildError::Busy {
                    service: self.service.clone(),
                })
            }
            Err((_, errno)) => return Err(BuildError::io("cannot lock", &lock_path, errno.into())),
        };

        self.recover()?;

        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = self.sibling(&format!("{STAGING_PREFIX}{}-{nanos}", std::process::id()));
        fs::create_dir(&dir).map_err(|e| BuildError::io("cannot create", &dir, e))?;
        Ok(Staging {
            layout: self.clone(),
            dir,
            committed: false,
            _lock: lock,
        })
    }

    /// With the lock held: removes staging directories of dead builds, and
    /// finishes a swap that was interrupted between its two renames (only
    /// possible where `RENAME_EXCHANGE` is not supported).
    fn recover(&self) -> Result<(), BuildError> {
        let parent = self.parent();
        let Some(base) = self
            .artifacts
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
        else {
            return Ok(());
        };
        let entries = match fs::read_dir(parent) {
            Ok(e) => e,
            Err(e) => return Err(BuildError::io("cannot read", parent, e)),
        };
        let mut old = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| BuildError::io("cannot read", parent, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(base.as_str()) else {
                continue;
            };
            if rest.starts_with(STAGING_PREFIX) {
                tracing::info!(path = %entry.path().display(), "removing the staging directory of an interrupted build");
                remove_tree(&entry.path())?;
            } else if rest.starts_with(OLD_PREFIX) {
                old.push(entry.path());
            }
        }
        for o in old {
            if !self.artifacts.exists() {
                fs::rename(&o, &self.artifacts)
                    .map_err(|e| BuildError::io("cannot restore", &o, e))?;
            } else {
                remove_tree(&o)?;
            }
        }
        Ok(())
    }
}

/// A build in progress: a directory to write the artifact into, and the
/// service's build lock.
///
/// Dropping it without [`Staging::commit`] removes the directory; the
/// previous artifact was never touched.
#[derive(Debug)]
pub struct Staging {
    layout: ServiceLayout,
    dir: PathBuf,
    committed: bool,
    _lock: Flock<File>,
}

impl Staging {
    /// The directory the build writes into; it becomes `artifacts/`.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// `oci-layout/` inside the staging directory.
    pub fn oci_layout_dir(&self) -> PathBuf {
        self.dir.join("oci-layout")
    }

    /// The service's directories.
    pub fn layout(&self) -> &ServiceLayout {
        &self.layout
    }

    /// Makes the staged build the service's artifact: writes `sources`
    /// (when the build hashed any) and the manifest, fsyncs the whole
    /// directory tree, swaps it with `artifacts/` and removes the old one.
    pub fn commit(
        mut self,
        manifest: &Manifest,
        sources: Option<&[FileEntry]>,
    ) -> Result<(), BuildError> {
        if let Some(files) = sources {
            write_atomic(&self.dir.join("sources.bin"), &encode_files(files), true)?;
        }
        let json = serde_json::to_vec_pretty(manifest).map_err(|e| {
            BuildError::io("cannot encode", self.dir.join("manifest.json"), e.into())
        })?;
        write_atomic(&self.dir.join("manifest.json"), &json, true)?;
        sync_tree(&self.dir)?;

        let target = self.layout.artifacts.clone();
        swap_in(&self.dir, &target, &self.layout)?;
        self.committed = true;
        // The staging path now holds the previous artifact, if there was one.
        if self.dir.exists() {
            remove_tree(&self.dir)?;
        }
        sync_dir(self.layout.parent())?;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            if let Err(e) = remove_tree(&self.dir) {
                tracing::warn!(error = %e, "cannot remove the staging directory of a failed build");
            }
        }
    }
}

/// Moves `staged` to `target`, atomically replacing what is there.
fn swap_in(staged: &Path, target: &Path, layout: &ServiceLayout) -> Result<(), BuildError> {
    match fs::symlink_metadata(target) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return fs::rename(staged, target)
                .map_err(|e| BuildError::io("cannot rename", staged, e));
        }
        Err(e) => return Err(BuildError::io("cannot stat", target, e)),
        Ok(_) => {}
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::errno::Errno;
        use nix::fcntl::{renameat2, RenameFlags};
        match renameat2(None, staged, None, target, RenameFlags::RENAME_EXCHANGE) {
            Ok(()) => return Ok(()),
            Err(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {}
            Err(e) => return Err(BuildError::io("cannot swap in", staged, e.into())),
        }
    }
    // No RENAME_EXCHANGE here: two renames. `recover` puts the old artifact
    // back if we die between them.
    let old = layout.sibling(&format!("{OLD_PREFIX}{}", std::process::id()));
    fs::rename(target, &old).map_err(|e| BuildError::io("cannot rename", target, e))?;
    fs::rename(staged, target).map_err(|e| BuildError::io("cannot rename", staged, e))?;
    fs::rename(&old, staged).map_err(|e| BuildError::io("cannot rename", &old, e))
}

/// Writes `data` to `path` through a temporary file and a rename.
fn write_atomic(path: &Path, data: &[u8], sync: bool) -> Result<(), BuildError> {
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let write = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        if sync {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        BuildError::io("cannot write", path, e)
    })
}

/// fsyncs every file and directory under `dir` (symlinks need no fsync of
/// their own: their directory's covers them).
fn sync_tree(dir: &Path) -> Result<(), BuildError> {
    let entries = fs::read_dir(dir).map_err(|e| BuildError::io("cannot read", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| BuildError::io("cannot read", dir, e))?;
        let ft = entry
            .file_type()
            .map_err(|e| BuildError::io("cannot stat", entry.path(), e))?;
        let path = entry.path();
        if ft.is_dir() {
            sync_tree(&path)?;
        } else if ft.is_file() {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| BuildError::io("cannot fsync", &path, e))?;
        }
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), BuildError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| BuildError::io("cannot fsync", dir, e))
}

fn remove_tree(path: &Path) -> Result<(), BuildError> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BuildError::io("cannot remove", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn manifest(service: &str, hash: &str) -> Manifest {
        let started = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        Manifest {
            schema_version: SCHEMA_VERSION,
            kind: BuildKind::Cnb,
            service: service.into(),
            source_hash: Some(hash.into()),
            config_hash: "c".into(),
            builder_image_digest: Some("sha256:abc".into()),
            cnb: None,
            output_hash: None,
            locald_version: env!("CARGO_PKG_VERSION").into(),
            started_at: started,
            finished_at: started + Duration::from_millis(1500),
            duration_ms: 1500,
            result: BuildResult::Succeeded,
        }
    }

    #[test]
    fn layout_paths_match_the_documented_tree() {
        let l = Layout::new(Path::new("/p"));
        let s = l.service("web").unwrap();
        assert_eq!(
            s.manifest_path(),
            Path::new("/p/.locald/services/web/artifacts/manifest.json")
        );
        assert_eq!(
            s.oci_layout_dir(),
            Path::new("/p/.locald/services/web/artifacts/oci-layout")
        );
        assert_eq!(s.cache_dir(), Path::new("/p/.locald/services/web/cache"));
        assert_eq!(l.state_dir(), Path::new("/p/.locald/state"));
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(l.service(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn commit_swaps_and_keeps_old_until_then() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let svc = layout.service("web").unwrap();
        assert_eq!(svc.read_manifest().unwrap(), Stored::Missing);

        let st = svc.stage().unwrap();
        fs::write(st.path().join("out"), "one").unwrap();
        st.commit(&manifest("web", "h1"), None).unwrap();
        assert_eq!(
            svc.read_manifest().unwrap(),
            Stored::Found(manifest("web", "h1"))
        );
        assert_eq!(
            fs::read_to_string(dir.path().join(".locald/.gitignore"))
                .unwrap()
                .lines()
                .last(),
            Some("*")
        );

        // A second build: the first stays in place until commit.
        let st = svc.stage().unwrap();
        assert!(matches!(svc.stage(), Err(BuildError::Busy { .. })));
        fs::write(st.path().join("out"), "two").unwrap();
        assert_eq!(
            fs::read_to_string(svc.artifacts_dir().join("out")).unwrap(),
            "one"
        );
        st.commit(&manifest("web", "h2"), None).unwrap();
        assert_eq!(
            fs::read_to_string(svc.artifacts_dir().join("out")).unwrap(),
            "two"
        );

        // A failed build (dropped) leaves everything as it was and no
        // staging directory behind.
        let st = svc.stage().unwrap();
        fs::write(st.path().join("out"), "three").unwrap();
        drop(st);
        assert_eq!(
            fs::read_to_string(svc.artifacts_dir().join("out")).unwrap(),
            "two"
        );
        let names: Vec<String> = fs::read_dir(svc.artifacts_dir().parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names
                .iter()
                .all(|n| !n.contains(STAGING_PREFIX) && !n.contains(OLD_PREFIX)),
            "{names:?}"
        );
    }

    #[test]
    fn interrupted_fallback_swap_is_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let svc = Layout::new(dir.path()).service("api").unwrap();
        svc.stage()
            .unwrap()
            .commit(&manifest("api", "h1"), None)
            .unwrap();
        // Simulate death between the two renames of the fallback path.
        let old = svc.sibling(&format!("{OLD_PREFIX}999"));
        fs::rename(svc.artifacts_dir(), &old).unwrap();
        let st = svc.stage().unwrap();
        assert_eq!(
            svc.read_manifest().unwrap(),
            Stored::Found(manifest("api", "h1"))
        );
        drop(st);
    }

    #[test]
    fn other_schema_and_damage_are_unusable() {
        let dir = tempfile::tempdir().unwrap();
        let svc = Layout::new(dir.path()).service("web").unwrap();
        fs::create_dir_all(svc.artifacts_dir()).unwrap();
        fs::write(svc.manifest_path(), r#"{"schema_version": 99}"#).unwrap();
        assert!(matches!(svc.read_manifest().unwrap(), Stored::Unusable(m) if m.contains("99")));
        fs::write(svc.manifest_path(), "{").unwrap();
        assert!(matches!(svc.read_manifest().unwrap(), Stored::Unusable(_)));
    }
}
