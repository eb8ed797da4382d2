//! What `locald-ctl images`, `pull` and `prune` do with the store: list the
//! images with their size and users, fetch a service's image on demand, and
//! remove what no project that is up uses.
//!
//! **Who uses an image.** A project directory is recorded as a user of a
//! reference (in `images.json`) when one of its services prepares the image
//! or pulls it; `down` forgets it. A recorded user counts only while the
//! project is up — in the daemon or in a foreground `locald up` of the same
//! user — which the caller finds out and says with [`Users`], together with
//! the references the projects it runs declare (a service that has not
//! started yet has recorded nothing). So a project that was up when locald
//! crashed uses nothing any more, and what [`list`] shows as used is exactly
//! what [`prune`] keeps.
//!
//! **Prune** holds the store's use lock exclusively (no fetch or unpack runs
//! meanwhile, in any process), removes from the index every reference
//! nobody uses, then every blob no remaining reference needs, then every
//! unpacked rootfs whose image no remaining reference names. A rootfs a
//! container still runs from is kept whoever runs it: each running
//! container holds a lease on it (a shared `flock`, see `prepare`), and one
//! that prune cannot take exclusively is in use. A rootfs is renamed aside
//! before it is removed, so a removal cut short is never mistaken for an
//! unpacked image; what such a removal left is removed by the next prune.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};

use super::store::{BlobCheck, IndexEntry};
use super::unpack::UnpackError;
use super::{Digest, ImageError, ImageRef, Images, ProgressFn, ReferenceError, Store, StoreError};

/// Why listing, pulling or pruning failed.
#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    /// The service's image reference does not parse.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// Fetching the image failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The store failed.
    #[error("image store")]
    Store(#[source] StoreError),
    /// An unpacked rootfs could not be removed.
    #[error("cannot remove the unpacked image {}", path.display())]
    Remove {
        /// The rootfs (renamed aside).
        path: PathBuf,
        /// Why.
        #[source]
        source: UnpackError,
    },
    /// The rootfs directory could not be read or changed.
    #[error("cannot access {}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The blocking task ended without an answer.
    #[error("the image store task was interrupted")]
    Interrupted,
}

impl From<StoreError> for ManageError {
    fn from(e: StoreError) -> Self {
        ManageError::Store(e)
    }
}

/// Which projects use images now: see the module documentation.
#[derive(Debug, Clone, Default)]
pub struct Users {
    /// Directories of the projects that are up, in any locald of the user.
    pub up: BTreeSet<PathBuf>,
    /// References (index keys) the services of projects up in this locald
    /// name, and the directories of those projects.
    pub declared: BTreeMap<String, BTreeSet<PathBuf>>,
}

impl Users {
    /// The projects that are up and use `key` (recorded as users, or
    /// declaring it).
    pub fn of(&self, key: &str, entry: &IndexEntry) -> BTreeSet<PathBuf> {
        let mut users: BTreeSet<PathBuf> = entry
            .projects
            .iter()
            .filter(|p| self.up.contains(*p))
            .cloned()
            .collect();
        if let Some(d) = self.declared.get(key) {
            users.extend(d.iter().cloned());
        }
        users
    }
}

/// One stored image as `images` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The reference as recorded (canonical; `oci:` paths absolute).
    pub reference: String,
    /// The digest of its manifest.
    pub manifest: Digest,
    /// Bytes on disk: its blobs and its unpacked rootfs (blobs and layers
    /// another image shares are counted for each).
    pub size: u64,
    /// Whether it is unpacked.
    pub unpacked: bool,
    /// Projects that are up and use it.
    pub projects: Vec<PathBuf>,
    /// When it was last fetched.
    pub fetched: SystemTime,
}

/// What [`pull`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullSummary {
    /// The reference as recorded.
    pub reference: String,
    /// The manifest it resolves to now.
    pub manifest: Digest,
    /// The manifest it resolved to before, if it was stored.
    pub previous: Option<Digest>,
    /// Blobs transferred into the store (0: it was up to date).
    pub blobs: usize,
    /// Bytes transferred.
    pub bytes: u64,
    /// Stored blobs that no longer matched their digest and were fetched
    /// again (`force` only).
    pub repaired: usize,
}

/// What [`prune`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// References removed from the index.
    pub references: Vec<String>,
    /// Blobs removed.
    pub blobs: usize,
    /// Unpacked rootfs directories removed.
    pub rootfs: usize,
    /// Bytes freed (file contents).
    pub bytes: u64,
    /// Unpacked images kept because a running container uses them.
    pub in_use: usize,
}

/// Runs blocking store work off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ManageError> + Send + 'static,
) -> Result<T, ManageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ManageError::Interrupted)?
}

/// Every recorded reference, with its size and the projects (that are up)
/// using it. Blocking.
pub fn list(store: &Store, users: &Users) -> Result<Vec<ImageInfo>, ManageError> {
    let mut out = Vec::new();
    for (key, entry) in store.entries()? {
        let blobs: BTreeSet<Digest> = store.entry_blobs(&entry)?.blobs.into_iter().collect();
        let mut size: u64 = blobs.iter().filter_map(|d| store.blob_size(d)).sum();
        let rootfs = store.rootfs_dir(&entry.manifest);
        let unpacked = fs::symlink_metadata(&rootfs).is_ok_and(|m| m.is_dir());
        if unpacked {
            size += tree_size(&rootfs);
        }
        out.push(ImageInfo {
            projects: users.of(&key, &entry).into_iter().collect(),
            reference: key,
            manifest: entry.manifest,
            size,
            unpacked,
            fetched: UNIX_EPOCH + Duration::from_secs(entry.fetched),
        });
    }
    Ok(out)
}

/// Fetches `reference` (as a service of the project in `project_dir` names
/// it) and records the project as its user: for a registry image, asks the
/// registry what the tag names now and fetches what is not stored; an
/// image pinned by digest that is stored is not asked for again. A local
/// layout or archive is imported again (copying only what changed). With
/// `force`, every stored blob of the image is first hashed again and one
/// that changed on disk is fetched anew (and a pinned image is asked for).
pub async fn pull(
    images: &Images,
    reference: &str,
    project_dir: &Path,
    force: bool,
    progress: ProgressFn,
) -> Result<PullSummary, ManageError> {
    let image = ImageRef::parse(reference)?;
    let key = image.key(project_dir);
    let store = images.store().clone();
    let (lock, previous, repaired) = {
        let key = key.clone();
        blocking(move || {
            let lock = store.lock_shared()?;
            let previous = store.lookup(&key)?;
            let mut repaired = 0;
            if let (true, Some(p)) = (force, &previous) {
                for d in store.entry_blobs(p)?.blobs {
                    if store.verify_blob(&d)? == BlobCheck::Removed {
                        repaired += 1;
                    }
                }
            }
            Ok((lock, previous, repaired))
        })
        .await?
    };
    let previous = previous.map(|e| e.manifest);
    if let (false, ImageRef::Registry(r)) = (force, &image) {
        if r.digest().is_some() {
            let store = images.store().clone();
            let (k, dir) = (key.clone(), project_dir.to_owned());
            let stored = blocking(move || {
                let image = store.resolve(&k)?;
                if image.is_some() {
                    store.add_project(&k, &dir)?;
                }
                Ok(image)
            })
            .await?;
            if let Some(stored) = stored {
                drop(lock);
                return Ok(PullSummary {
                    reference: key,
                    manifest: stored.manifest_digest,
                    previous,
                    blobs: 0,
                    bytes: 0,
                    repaired,
                });
            }
        }
    }
    let fetched = images.fetch(&image, project_dir, progress).await?;
    drop(lock);
    Ok(PullSummary {
        reference: key,
        manifest: fetched.image.manifest_digest,
        previous,
        blobs: fetched.copied.len(),
        bytes: fetched.bytes,
        repaired,
    })
}

/// Removes what no project that is up uses (see the module documentation);
/// `remove_rootfs` removes one unpacked tree (in the unpack helper's user
/// namespace: its files may belong to subordinate ids). Blocking.
pub fn prune(
    store: &Store,
    users: &Users,
    remove_rootfs: &dyn Fn(&Path) -> Result<(), UnpackError>,
) -> Result<Pruned, ManageError> {
    let _lock = store.lock_exclusive()?;
    let mut pruned = Pruned::default();
    let removed = store.retain(|key, entry| {
        let used = users.of(key, entry);
        // Recorded users that are not up any more are forgotten.
        entry.projects.retain(|p| used.contains(p));
        !used.is_empty()
    })?;
    pruned.references = removed.into_iter().map(|(k, _)| k).collect();

    let mut needed: HashSet<Digest> = HashSet::new();
    let mut manifests: HashSet<Digest> = HashSet::new();
    for entry in store.entries()?.values() {
        needed.extend(store.entry_blobs(entry)?.blobs);
        manifests.insert(entry.manifest.clone());
    }
    let doomed = doomed_rootfs(store, &manifests, &mut needed, &mut pruned)?;
    for digest in store.blobs()? {
        if !needed.contains(&digest) {
            if let Some(n) = store.remove_blob(&digest)? {
                pruned.blobs += 1;
                pruned.bytes += n;
            }
        }
    }
    // Every tree is tried; the first failure is reported (what it left is
    // tried again by the next prune).
    let mut failed = None;
    for path in doomed {
        let size = tree_size(&path);
        match remove_rootfs(&path) {
            Ok(()) => {
                pruned.bytes += size;
                pruned.rootfs += 1;
            }
            Err(source) => {
                tracing::warn!(
                    "cannot remove {}: {}",
                    path.display(),
                    locald_core::error_chain(&source)
                );
                failed.get_or_insert(ManageError::Remove { path, source });
            }
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(pruned),
    }
}

/// The rootfs directories to remove (renamed aside already), and what a
/// removal cut short left; a rootfs a container runs from is kept, with
/// its image's blobs added to `needed`.
fn doomed_rootfs(
    store: &Store,
    manifests: &HashSet<Digest>,
    needed: &mut HashSet<Digest>,
    pruned: &mut Pruned,
) -> Result<Vec<PathBuf>, ManageError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = store.rootfs_root();
    let io = |path: &Path, source| ManageError::Io {
        path: path.to_owned(),
        source,
    };
    let entries = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(&dir, e)),
    };
    let mut doomed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io(&dir, e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let path = entry.path();
        // Under the exclusive lock no other prune runs: every tree set
        // aside is a leftover.
        if name.starts_with(".rm-") || stale_temporary(&name) {
            doomed.push(path);
            continue;
        }
        let Ok(digest) = Digest::parse(&format!("sha256:{name}")) else {
            continue;
        };
        if manifests.contains(&digest) {
            continue;
        }
        if in_use(&dir, &name)? {
            pruned.in_use += 1;
            // Kept whole: its blobs stay with it.
            let entry = IndexEntry {
                manifest: digest,
                index: None,
                projects: BTreeSet::new(),
                fetched: 0,
            };
            needed.extend(store.entry_blobs(&entry)?.blobs);
            continue;
        }
        let aside = dir.join(format!(
            ".rm-{name}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::rename(&path, &aside).map_err(|e| io(&path, e))?;
        for lock in [format!(".{name}.lock"), format!(".{name}.inuse")] {
            let _ = fs::remove_file(dir.join(lock));
        }
        doomed.push(aside);
    }
    Ok(doomed)
}

/// Removes what unpacks and prunes killed part-way left in the store's
/// `rootfs/` (`.tmp-HEX-PID-SEQ`, `.rm-HEX-PID-SEQ` of a process that is
/// gone: a killed unpack of a large image leaves hundreds of thousands of
/// inodes), through `remove_rootfs` (the unpack helper's user namespace:
/// the files may belong to subordinate ids). Returns how many it removed.
/// Run at the daemon's start and before each unpack; a temporary of a live
/// process is never touched.
pub fn sweep_leftovers(
    store: &Store,
    remove_rootfs: &dyn Fn(&Path) -> Result<(), UnpackError>,
) -> usize {
    let Ok(entries) = fs::read_dir(store.rootfs_root()) else {
        return 0;
    };
    let mut n = 0;
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !stale_temporary(&name) {
            continue;
        }
        match remove_rootfs(&entry.path()) {
            Ok(()) => n += 1,
            Err(e) => tracing::warn!(
                "cannot remove {}, left by an interrupted unpack: {}",
                entry.path().display(),
                locald_core::error_chain(&e)
            ),
        }
    }
    if n > 0 {
        tracing::info!("removed {n} unpacked trees that interrupted unpacks left");
    }
    n
}

/// Whether `.tmp-HEX-PID-SEQ` (an unpack) or `.rm-HEX-PID-SEQ` (a tree
/// set aside for removal) belongs to a process that is gone.
fn stale_temporary(name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix(".tmp-")
        .or_else(|| name.strip_prefix(".rm-"))
    else {
        return false;
    };
    let pid = rest.split('-').nth(1).and_then(|p| p.parse::<i32>().ok());
    match pid {
        // ESRCH means gone; EPERM means alive under another uid.
        Some(pid) => nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
            .is_err_and(|e| e == nix::errno::Errno::ESRCH),
        None => false,
    }
}

/// Whether a running container holds a lease on the rootfs `name` (see
/// `prepare`): its lease file is locked by someone.
fn in_use(dir: &Path, name: &str) -> Result<bool, ManageError> {
    let path = dir.join(format!(".{name}.inuse"));
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(source) => return Err(ManageError::Io { path, source }),
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(_) => Ok(false),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(true),
        Err((_, e)) => Err(ManageError::Io {
            path,
            source: e.into(),
        }),
    }
}

/// Bytes of the regular files under `dir` (a file with several links
/// once), without following symlinks. What cannot be read — a directory
/// only one of the user's subordinate ids may enter — is left out, so the
/// size may fall short.
pub fn tree_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(m) = fs::symlink_metadata(entry.path()) else {
                continue;
            };
            if m.is_dir() {
                stack.push(entry.path());
            } else if m.is_file() && (m.nlink() == 1 || seen.insert((m.dev(), m.ino()))) {
                total += m.len();
            }
        }
    }
    total
}

#[cfg(test)]
mod tests;
