//! The `.locald/` directory of a project: where builds keep their artifacts,
//! caches and state, and how a new artifact replaces the old one.
//!
//! ```text
//! .locald/
//!   .gitignore                                 # "*": never in the user's git status
//!   services/<name>/artifacts/manifest.json    # what was built from what (Manifest)
//!   services/<name>/artifacts/sources.bin      # the file list hashed, to explain changes
//!   services/<name>/artifacts/oci-layout/      # CNB image (CNB builds)
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

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::hash::{decode_files, encode_files, FileEntry};
use super::BuildError;
use crate::event::BuildResult;
use crate::fsutil::{work_dir, SafeDir, STATE_LIMIT};

/// Version of `manifest.json`; a manifest of another version is treated as
/// absent, so the service is rebuilt once.
pub const SCHEMA_VERSION: u32 = 1;

/// The directory under the project root.
pub use crate::fsutil::LOCALD_DIR;

/// The size limit for `sources.bin` (a file list: ~100 bytes a file).
const SOURCES_LIMIT: u64 = 256 << 20;

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

    /// Creates `.locald/` with its `.gitignore` and `state/`, each opened
    /// as [`work_dir`] opens them (never through a symlink, ours only).
    pub fn ensure(&self) -> Result<(), BuildError> {
        let root = open_dir(&self.root, true)?;
        open_dir(&self.state_dir(), true)?;
        let gi = ".gitignore";
        if root
            .kind(gi)
            .map_err(|e| BuildError::io("cannot stat", root.join(gi), e))?
            .is_none()
        {
            root.write_atomic(
                gi,
                b"# Written by locald: build artifacts and state.\n*\n",
                false,
            )
            .map_err(|e| BuildError::io("cannot write", root.join(gi), e))?;
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
        })
    }
}

/// Opens (and with `create`, makes) a directory through [`work_dir`]; a
/// missing one is an error (`NotFound`) here.
pub(crate) fn open_dir(path: &Path, create: bool) -> Result<SafeDir, BuildError> {
    work_dir(path, create)?.ok_or_else(|| {
        BuildError::io(
            "cannot open",
            path,
            io::Error::from(io::ErrorKind::NotFound),
        )
    })
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

/// The artifact directory of one service.
#[derive(Debug, Clone)]
pub struct ServiceLayout {
    service: String,
    artifacts: PathBuf,
}

impl ServiceLayout {
    /// A directory chosen by the caller (a build's `output_dir`). Staging
    /// directories and the lock live next to
    /// `artifacts`, so that the final rename stays on one filesystem.
    pub fn at(service: &str, artifacts: PathBuf) -> Self {
        ServiceLayout {
            service: service.to_owned(),
            artifacts,
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

    fn parent(&self) -> &Path {
        self.artifacts.parent().unwrap_or(Path::new("."))
    }

    /// The name of `artifacts` plus `suffix`, a sibling of `artifacts/`.
    fn sibling_name(&self, suffix: &str) -> OsString {
        let mut name = self
            .artifacts
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| "artifacts".into());
        name.push(suffix);
        name
    }

    /// The manifest of the last good build.
    pub fn read_manifest(&self) -> Result<Stored, BuildError> {
        let Some(dir) = work_dir(&self.artifacts, false)? else {
            return Ok(Stored::Missing);
        };
        let Some(data) = dir.read("manifest.json", "a build manifest", STATE_LIMIT)? else {
            return Ok(Stored::Missing);
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
        let dir = work_dir(&self.artifacts, false).ok()??;
        decode_files(
            &dir.read("sources.bin", "a source list", SOURCES_LIMIT)
                .ok()??,
        )
    }

    /// Starts a build: takes the service's lock, cleans up after builds that
    /// died, and creates an empty staging directory.
    ///
    /// Fails with [`BuildError::Busy`] while another build of the service
    /// (in this process or another) holds the lock.
    pub fn stage(&self) -> Result<Staging, BuildError> {
        let parent = open_dir(self.parent(), true)?;
        // `.locald/` is the grandparent for the default layout; give it its
        // .gitignore when that is where we are.
        if let Some(root) = self.parent().ancestors().find(|p| p.ends_with(LOCALD_DIR)) {
            if let Some(project) = root.parent() {
                Layout::new(project).ensure()?;
            }
        }

        let lock_name = self.sibling_name(".lock");
        let file = parent.open_rw(&lock_name)?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(BuildError::Busy {
                    service: self.service.clone(),
                })
            }
            Err((_, errno)) => {
                return Err(BuildError::io(
                    "cannot lock",
                    parent.join(&lock_name),
                    errno.into(),
                ))
            }
        };

        self.recover(&parent)?;

        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let name = self.sibling_name(&format!("{STAGING_PREFIX}{}-{nanos}", std::process::id()));
        parent
            .mkdir(&name, 0o755)
            .map_err(|e| BuildError::io("cannot create", parent.join(&name), e))?;
        Ok(Staging {
            layout: self.clone(),
            dir: parent.join(&name),
            parent,
            name,
            committed: false,
            _lock: lock,
        })
    }

    /// With the lock held: removes staging directories of dead builds, and
    /// finishes a swap that was interrupted between its two renames (only
    /// possible where `RENAME_EXCHANGE` is not supported). Everything by
    /// descriptor from `parent`: these names are removed, never followed.
    fn recover(&self, parent: &SafeDir) -> Result<(), BuildError> {
        let Some(base) = self.artifacts.file_name() else {
            return Ok(());
        };
        let base_bytes = base.as_bytes();
        let entries = parent
            .entries()
            .map_err(|e| BuildError::io("cannot read", parent.path(), e))?;
        let mut old = Vec::new();
        for name in entries {
            let Some(rest) = name.as_bytes().strip_prefix(base_bytes) else {
                continue;
            };
            if rest.starts_with(STAGING_PREFIX.as_bytes()) {
                tracing::info!(path = %parent.join(&name).display(), "removing the staging directory of an interrupted build");
                remove_in(parent, &name)?;
            } else if rest.starts_with(OLD_PREFIX.as_bytes()) {
                old.push(name);
            }
        }
        for o in old {
            if kind_in(parent, base)?.is_none() {
                parent
                    .rename(&o, base)
                    .map_err(|e| BuildError::io("cannot restore", parent.join(&o), e))?;
            } else {
                remove_in(parent, &o)?;
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
    /// The directory holding `artifacts/` and the staging directory.
    parent: SafeDir,
    /// The staging directory's name in `parent`.
    name: OsString,
    /// Its path, for the build to write into.
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

    /// The staging directory, held open: what a build puts into it from
    /// elsewhere goes through this handle ([`SafeDir::take_from`]).
    pub fn handle(&self) -> Result<SafeDir, BuildError> {
        self.parent
            .sub(&self.name, false)?
            .ok_or_else(|| BuildError::io("cannot open", &self.dir, io::ErrorKind::NotFound.into()))
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
        let staged = self.parent.sub(&self.name, false)?.ok_or_else(|| {
            BuildError::io("cannot open", &self.dir, io::ErrorKind::NotFound.into())
        })?;
        let write = |name: &str, data: &[u8]| {
            staged
                .write_atomic(name, data, true)
                .map_err(|e| BuildError::io("cannot write", staged.join(name), e))
        };
        if let Some(files) = sources {
            write("sources.bin", &encode_files(files))?;
        }
        let json = serde_json::to_vec_pretty(manifest).map_err(|e| {
            BuildError::io("cannot encode", self.dir.join("manifest.json"), e.into())
        })?;
        write("manifest.json", &json)?;
        staged
            .sync_tree()
            .map_err(|e| BuildError::io("cannot fsync", &self.dir, e))?;

        self.swap_in()?;
        self.committed = true;
        // The staging name now holds the previous artifact, if there was one.
        remove_in(&self.parent, &self.name)?;
        self.parent
            .sync()
            .map_err(|e| BuildError::io("cannot fsync", self.parent.path(), e))
    }

    /// Moves the staging directory to `artifacts/`, atomically replacing
    /// what is there.
    fn swap_in(&self) -> Result<(), BuildError> {
        let parent = &self.parent;
        let staged = &self.name;
        let target = self.layout.artifacts.file_name().unwrap_or_default();
        let fail = |what, e| BuildError::io(what, &self.dir, e);
        if kind_in(parent, target)?.is_none() {
            return parent
                .rename(staged, target)
                .map_err(|e| fail("cannot rename", e));
        }
        match parent.exchange(staged, target) {
            Ok(()) => return Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
                ) => {}
            Err(e) => return Err(fail("cannot swap in", e)),
        }
        // No RENAME_EXCHANGE here: two renames. `recover` puts the old
        // artifact back if we die between them.
        let old = self
            .layout
            .sibling_name(&format!("{OLD_PREFIX}{}", std::process::id()));
        parent
            .rename(target, &old)
            .map_err(|e| fail("cannot rename", e))?;
        parent
            .rename(staged, target)
            .map_err(|e| fail("cannot rename", e))?;
        parent
            .rename(&old, staged)
            .map_err(|e| fail("cannot rename", e))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            if let Err(e) = remove_in(&self.parent, &self.name) {
                tracing::warn!(error = %e, "cannot remove the staging directory of a failed build");
            }
        }
    }
}

fn remove_in(dir: &SafeDir, name: &OsStr) -> Result<(), BuildError> {
    dir.remove(name)
        .map_err(|e| BuildError::io("cannot remove", dir.join(name), e))
}

fn kind_in(dir: &SafeDir, name: &OsStr) -> Result<Option<rustix::fs::FileType>, BuildError> {
    dir.kind(name)
        .map_err(|e| BuildError::io("cannot stat", dir.join(name), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
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
        let old = svc
            .parent()
            .join(svc.sibling_name(&format!("{OLD_PREFIX}999")));
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
