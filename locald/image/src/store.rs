//! The per-user image store: content-addressed blobs and an index of
//! references, shared by every project, daemon and CLI of the user.
//!
//! ```text
//! $XDG_DATA_HOME/locald/            (default ~/.local/share/locald/; 0700)
//!   blobs/sha256/<hex>               verified blobs, read-only, never rewritten
//!   blobs/.tmp/<pid>.<seq>.<hex>     blobs being written
//!   images.json                      reference → manifest digest, and who uses it
//!   images.lock                      flock held while images.json is changed
//!   use.lock                         shared while fetching/unpacking, exclusive to prune
//!   rootfs/<hex>/                    unpacked root file systems (`image::prepare`)
//! ```
//!
//! **A blob is committed by verification and a link.** A [`BlobWriter`]
//! writes to a temporary name unique to its process and call, counts and
//! hashes what passes, refuses a byte past the expected size, and on
//! [`BlobWriter::commit`] checks size and digest, fsyncs, and hard-links the
//! file to `blobs/sha256/<hex>`. The link never replaces: when two writers
//! (two daemons, a CLI and a daemon) race for one blob, the first link wins
//! and the second sees it there, verified, and only drops its temporary. So
//! a file under `blobs/sha256/` is always complete and correct, and there is
//! one of it. A writer dropped without commit (an error, a cancelled pull, a
//! crash) leaves at most a temporary, which never has a blob's name; stale
//! temporaries of dead processes are removed when a store is opened.
//!
//! **An image is committed by the index.** Fetchers write layers and config
//! first, the manifest last, then record the reference in `images.json`
//! ([`Store::record`], read-modify-write under `flock`, written through
//! [`fsutil::write_atomic`]). [`Store::image`] still checks that every blob
//! an image needs is there, so a pruned or hand-deleted blob reads as "not
//! stored", never as an image with a missing layer.
//!
//! Within one process, [`Store::lock_blob`] lets concurrent pulls of the
//! same image download each blob once; across processes each may download
//! it, and the link decides which copy stays.
//!
//! The unpacked root file systems (`image::unpack`) live beside `blobs/` in
//! the same root ([`Store::rootfs_dir`]).
//!
//! **Removal waits for nobody to be adding.** Everything that adds to the
//! store — a fetch from its first blob to its record, an unpack — holds
//! `use.lock` shared ([`Store::lock_shared`]); pruning holds it exclusively
//! ([`Store::lock_exclusive`]), so it never removes a blob a fetch has
//! stored but not yet recorded, nor a rootfs being made.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use nix::fcntl::{Flock, FlockArg};
use oci_spec::image::{ImageConfiguration, ImageManifest, MediaType};
use serde::{Deserialize, Serialize};

use super::digest::{Digest, Hasher};
use super::manifest::{self, Compression, Manifest, ManifestError, CONFIG_LIMIT, MANIFEST_LIMIT};
use locald_core::fsutil::{self, UnsafeFile};

/// Version of `images.json` this build writes; a newer one is not touched.
const INDEX_VERSION: u32 = 1;
/// The largest `images.json` read.
const INDEX_LIMIT: u64 = 64 << 20;

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A directory or file of the store is unsafe or unreadable.
    #[error(transparent)]
    Unsafe(#[from] UnsafeFile),
    /// An I/O error on a path of the store.
    #[error("cannot access {}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Content whose digest is not the one it was fetched as.
    #[error("the content hashes to {actual}, not {expected}; refusing it")]
    DigestMismatch {
        /// The digest it should have.
        expected: Digest,
        /// The digest it has.
        actual: Digest,
    },
    /// Content of another size than its descriptor says.
    #[error("{digest} should be {expected} bytes but {actual} arrived{}; refusing it", if *.more { " (at least)" } else { "" })]
    SizeMismatch {
        /// The blob.
        digest: Digest,
        /// The size its descriptor gives.
        expected: u64,
        /// How many bytes arrived.
        actual: u64,
        /// Whether it was cut off for being too long.
        more: bool,
    },
    /// A blob an image needs is not in the store.
    #[error("blob {0} is not in the image store")]
    Missing(Digest),
    /// A manifest or config in the store cannot be used.
    #[error("image {manifest} cannot be used")]
    Manifest {
        /// The manifest's digest.
        manifest: Digest,
        /// What is wrong.
        #[source]
        source: ManifestError,
    },
    /// A descriptor names a digest locald cannot store.
    #[error("image {manifest} names a digest locald cannot store")]
    Descriptor {
        /// The manifest's digest.
        manifest: Digest,
        /// What is wrong with the digest.
        #[source]
        source: super::digest::DigestError,
    },
    /// `images.json` was written by a newer locald.
    #[error("{} has version {found}; this locald understands version {INDEX_VERSION} and leaves it alone", path.display())]
    NewerIndex {
        /// The index file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
}

impl StoreError {
    pub(crate) fn io(path: &Path, source: io::Error) -> StoreError {
        StoreError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// An image in the store, ready for unpacking and running: what the
/// runtime asks for.
#[derive(Debug, Clone)]
pub struct Image {
    /// The digest of its (platform-specific) manifest; its identity.
    pub manifest_digest: Digest,
    /// The digest of its config blob.
    pub config_digest: Digest,
    /// Its config: Env, Entrypoint, Cmd, WorkingDir, User, ExposedPorts,
    /// StopSignal, and the layers' `diff_ids`.
    pub config: ImageConfiguration,
    /// Its layers, lowest first.
    pub layers: Vec<LayerRef>,
}

/// One layer of an [`Image`], stored and verified.
#[derive(Debug, Clone)]
pub struct LayerRef {
    /// The digest of the layer as stored (compressed).
    pub digest: Digest,
    /// Its media type (OCI or Docker; see [`LayerRef::compression`]).
    pub media_type: MediaType,
    /// Its size in bytes as stored.
    pub size: u64,
    /// The blob: `blobs/sha256/<hex>`, read-only.
    pub blob_path: PathBuf,
}

impl LayerRef {
    /// How the layer is compressed. Checked when the image was fetched, so
    /// an error here means the store was changed by hand.
    pub fn compression(&self) -> Result<Compression, ManifestError> {
        manifest::layer_compression(&self.digest.to_string(), &self.media_type)
    }
}

impl Image {
    /// Total stored size of the layers, in bytes.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// What the index knows about one reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The platform-specific manifest the reference resolved to.
    pub manifest: Digest,
    /// The image index it was chosen from, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<Digest>,
    /// Project directories that use it (for `images` and `prune`).
    #[serde(default)]
    pub projects: BTreeSet<PathBuf>,
    /// When it was last fetched (seconds since the epoch).
    pub fetched: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct IndexFile {
    version: u32,
    images: BTreeMap<String, IndexEntry>,
}

/// The store. Cheap to clone; clones share the in-process blob locks.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    inflight: Mutex<HashMap<Digest, Weak<tokio::sync::Mutex<()>>>>,
}

/// The store's use lock, held (shared or exclusive) until dropped; see the
/// module documentation.
#[derive(Debug)]
pub struct UseLock {
    _lock: Flock<File>,
}

/// What [`Store::verify_blob`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobCheck {
    /// It is there and hashes to its name.
    Good,
    /// It was not there.
    Missing,
    /// It did not hash to its name (changed on disk) and was removed.
    Removed,
}

/// The blobs one recorded reference consists of, as far as they can be
/// read: see [`Store::entry_blobs`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryBlobs {
    /// Digests of the index, the manifest, the config and the layers.
    pub blobs: Vec<Digest>,
    /// The manifest could not be read (missing or damaged), so its config
    /// and layers are unknown.
    pub incomplete: bool,
}

/// Held while this process downloads one blob (see [`Store::lock_blob`]).
pub struct BlobLock {
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// Opens (creating if needed) the store at `root`: a private directory
    /// (ours, mode 0700, not a symlink). Temporaries left by processes that
    /// no longer run are removed.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        fsutil::private_dir(root)?;
        let store = Store {
            inner: Arc::new(Inner {
                root: root.to_owned(),
                inflight: Mutex::new(HashMap::new()),
            }),
        };
        for dir in [store.blobs_dir(), store.tmp_dir()] {
            fsutil::sub_dir(&dir).map_err(|e| StoreError::io(&dir, e))?;
        }
        store.remove_stale_temporaries();
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    fn blobs_dir(&self) -> PathBuf {
        self.inner.root.join("blobs/sha256")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.inner.root.join("blobs/.tmp")
    }

    fn index_path(&self) -> PathBuf {
        self.inner.root.join("images.json")
    }

    /// The directory holding every unpacked rootfs.
    pub fn rootfs_root(&self) -> PathBuf {
        self.inner.root.join("rootfs")
    }

    /// Where the image whose manifest is `manifest` is unpacked (whether or
    /// not it is).
    pub fn rootfs_dir(&self, manifest: &Digest) -> PathBuf {
        self.rootfs_root().join(manifest.hex())
    }

    /// Takes the use lock shared, waiting while a prune runs: held by
    /// whoever adds to the store. Blocking.
    pub fn lock_shared(&self) -> Result<UseLock, StoreError> {
        self.use_lock(FlockArg::LockShared)
    }

    /// Takes the use lock exclusively, waiting until nobody adds to the
    /// store: held while removing. Blocking.
    pub fn lock_exclusive(&self) -> Result<UseLock, StoreError> {
        self.use_lock(FlockArg::LockExclusive)
    }

    fn use_lock(&self, how: FlockArg) -> Result<UseLock, StoreError> {
        let path = self.inner.root.join("use.lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        let lock = Flock::lock(file, how).map_err(|(_, e)| StoreError::io(&path, e.into()))?;
        Ok(UseLock { _lock: lock })
    }

    /// Where a blob lives (whether or not it is there).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    /// Whether a blob is stored (and so complete and verified).
    pub fn has_blob(&self, digest: &Digest) -> bool {
        fs::symlink_metadata(self.blob_path(digest)).is_ok_and(|m| m.is_file())
    }

    /// Every stored blob's digest.
    pub fn blobs(&self) -> Result<Vec<Digest>, StoreError> {
        let dir = self.blobs_dir();
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| StoreError::io(&dir, e))? {
            let entry = entry.map_err(|e| StoreError::io(&dir, e))?;
            if let Some(d) = entry
                .file_name()
                .to_str()
                .and_then(|n| Digest::parse(&format!("sha256:{n}")).ok())
            {
                out.push(d);
            }
        }
        out.sort();
        Ok(out)
    }

    /// The size of a stored blob, `None` when it is not stored.
    pub fn blob_size(&self, digest: &Digest) -> Option<u64> {
        fs::symlink_metadata(self.blob_path(digest))
            .ok()
            .filter(fs::Metadata::is_file)
            .map(|m| m.len())
    }

    /// Removes a stored blob; returns its size, or `None` when it was not
    /// there. Callers hold [`Store::lock_exclusive`].
    pub fn remove_blob(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        let path = self.blob_path(digest);
        let size = self.blob_size(digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(size),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(&path, e)),
        }
    }

    /// Hashes a stored blob again; one that no longer hashes to its name
    /// (changed on disk) is removed, so that the next fetch stores it anew.
    pub fn verify_blob(&self, digest: &Digest) -> Result<BlobCheck, StoreError> {
        let path = self.blob_path(digest);
        let Some(mut file) = fsutil::open_content(&path)? else {
            return Ok(BlobCheck::Missing);
        };
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; 256 << 10];
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => hasher.update(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(StoreError::io(&path, e)),
            }
        }
        if hasher.finish() == *digest {
            return Ok(BlobCheck::Good);
        }
        match fs::remove_file(&path) {
            Ok(()) => Ok(BlobCheck::Removed),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BlobCheck::Removed),
            Err(e) => Err(StoreError::io(&path, e)),
        }
    }

    /// The blobs `entry` consists of: its index and manifest, and the config
    /// and layers the manifest names if it can be read. Unlike
    /// [`Store::image`] this does not need every blob to be there: it is
    /// what pruning keeps and what sizes are counted from.
    pub fn entry_blobs(&self, entry: &IndexEntry) -> Result<EntryBlobs, StoreError> {
        let mut out = EntryBlobs::default();
        out.blobs.extend(entry.index.iter().cloned());
        out.blobs.push(entry.manifest.clone());
        let bytes = match self.read_blob(&entry.manifest, MANIFEST_LIMIT) {
            Ok(b) => b,
            Err(StoreError::Missing(_) | StoreError::DigestMismatch { .. }) => {
                out.incomplete = true;
                return Ok(out);
            }
            Err(e) => return Err(e),
        };
        let Ok(Manifest::Image(m)) = manifest::parse(&bytes, None) else {
            out.incomplete = true;
            return Ok(out);
        };
        let descriptors = std::iter::once(m.config()).chain(m.layers());
        for d in descriptors {
            match Digest::try_from(d.digest()) {
                Ok(digest) => out.blobs.push(digest),
                Err(_) => out.incomplete = true,
            }
        }
        Ok(out)
    }

    /// Reads a small stored blob (a manifest, a config) and verifies it
    /// again: cheap for these, and a changed file on disk is caught before
    /// it decides what runs.
    pub fn read_blob(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest);
        let data =
            fsutil::read_state(&path, limit)?.ok_or_else(|| StoreError::Missing(digest.clone()))?;
        let actual = Digest::of(&data);
        if actual != *digest {
            return Err(StoreError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        Ok(data)
    }

    /// A writer for the blob `digest`, which must turn out `size` bytes
    /// long (when known).
    pub fn blob_writer(
        &self,
        digest: &Digest,
        size: Option<u64>,
    ) -> Result<BlobWriter, StoreError> {
        let tmp = self.tmp_dir().join(format!(
            "{}.{}.{}",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed),
            digest.hex()
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(|e| StoreError::io(&tmp, e))?;
        Ok(BlobWriter {
            file: Some(file),
            tmp,
            dest: self.blob_path(digest),
            expected: digest.clone(),
            size,
            hasher: Hasher::new(),
        })
    }

    /// Stores bytes held in memory (a manifest, a config) as `digest`.
    pub fn put_blob(&self, digest: &Digest, data: &[u8]) -> Result<PathBuf, StoreError> {
        if self.has_blob(digest) {
            // Still refuse content that is not what it claims to be.
            let actual = Digest::of(data);
            if actual != *digest {
                return Err(StoreError::DigestMismatch {
                    expected: digest.clone(),
                    actual,
                });
            }
            return Ok(self.blob_path(digest));
        }
        let mut w = self.blob_writer(digest, Some(data.len() as u64))?;
        w.write(data)?;
        w.commit()
    }

    /// Copies a blob from a reader, verifying it, calling `progress` with
    /// the bytes copied so far.
    pub fn copy_blob(
        &self,
        digest: &Digest,
        size: u64,
        mut from: impl Read,
        mut progress: impl FnMut(u64),
    ) -> Result<PathBuf, StoreError> {
        let mut w = self.blob_writer(digest, Some(size))?;
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StoreError::io(&w.tmp, e)),
            };
            w.write(&buf[..n])?;
            progress(w.written());
        }
        w.commit()
    }

    /// Serializes downloads of one blob within this process: the second
    /// pull of the same image waits for the first, then finds the blob
    /// stored.
    pub async fn lock_blob(&self, digest: &Digest) -> BlobLock {
        let lock = {
            let mut map = self
                .inner
                .inflight
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            map.retain(|_, w| w.strong_count() > 0);
            match map.get(digest).and_then(Weak::upgrade) {
                Some(l) => l,
                None => {
                    let l = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(digest.clone(), Arc::downgrade(&l));
                    l
                }
            }
        };
        BlobLock {
            _guard: lock.lock_owned().await,
        }
    }

    /// The image whose manifest is `manifest`, if it and every blob it
    /// needs are stored.
    pub fn image(&self, manifest: &Digest) -> Result<Image, StoreError> {
        let bad = |source| StoreError::Manifest {
            manifest: manifest.clone(),
            source,
        };
        let bytes = self.read_blob(manifest, MANIFEST_LIMIT)?;
        let m: ImageManifest = match manifest::parse(&bytes, None).map_err(bad)? {
            Manifest::Image(m) => *m,
            Manifest::Index(_) => {
                return Err(bad(ManifestError::MediaType(
                    manifest::OCI_INDEX.to_owned(),
                )))
            }
        };
        manifest::check_image(&m).map_err(bad)?;
        let digest_of = |d: &oci_spec::image::Digest| {
            Digest::try_from(d).map_err(|source| StoreError::Descriptor {
                manifest: manifest.clone(),
                source,
            })
        };
        let config_digest = digest_of(m.config().digest())?;
        let config_bytes = self.read_blob(&config_digest, CONFIG_LIMIT)?;
        let config: ImageConfiguration = manifest::parse_config(&config_bytes).map_err(bad)?;
        manifest::check_config(&config, &m).map_err(bad)?;
        let mut layers = Vec::with_capacity(m.layers().len());
        for l in m.layers() {
            let digest = digest_of(l.digest())?;
            let blob_path = self.blob_path(&digest);
            match fs::symlink_metadata(&blob_path) {
                Ok(meta) if meta.is_file() && meta.len() == l.size() => {}
                Ok(meta) if meta.is_file() => {
                    return Err(StoreError::SizeMismatch {
                        digest,
                        expected: l.size(),
                        actual: meta.len(),
                        more: false,
                    })
                }
                _ => return Err(StoreError::Missing(digest)),
            }
            layers.push(LayerRef {
                digest,
                media_type: l.media_type().clone(),
                size: l.size(),
                blob_path,
            });
        }
        Ok(Image {
            manifest_digest: manifest.clone(),
            config_digest,
            config,
            layers,
        })
    }

    /// What the index says about `key` (see `ImageRef::key`), if anything.
    pub fn lookup(&self, key: &str) -> Result<Option<IndexEntry>, StoreError> {
        Ok(self.load_index()?.images.remove(key))
    }

    /// Every reference in the index.
    pub fn entries(&self) -> Result<BTreeMap<String, IndexEntry>, StoreError> {
        Ok(self.load_index()?.images)
    }

    /// The image `key` names, if it is recorded and complete.
    pub fn resolve(&self, key: &str) -> Result<Option<Image>, StoreError> {
        let Some(entry) = self.lookup(key)? else {
            return Ok(None);
        };
        match self.image(&entry.manifest) {
            Ok(image) => Ok(Some(image)),
            Err(StoreError::Missing(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Records that `key` resolves to `manifest` (chosen from `index`), used
    /// by `project` if given. The commit point of a fetch: call it after
    /// every blob is stored.
    pub fn record(
        &self,
        key: &str,
        manifest: &Digest,
        index: Option<&Digest>,
        project: Option<&Path>,
    ) -> Result<(), StoreError> {
        self.update_index(|file| {
            let fetched = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let entry = file
                .images
                .entry(key.to_owned())
                .or_insert_with(|| IndexEntry {
                    manifest: manifest.clone(),
                    index: None,
                    projects: BTreeSet::new(),
                    fetched,
                });
            entry.manifest = manifest.clone();
            entry.index = index.cloned();
            entry.fetched = fetched;
            if let Some(p) = project {
                entry.projects.insert(p.to_owned());
            }
        })
    }

    /// Records `project` as a user of `key` (an entry that exists), without
    /// touching when it was fetched.
    pub fn add_project(&self, key: &str, project: &Path) -> Result<(), StoreError> {
        self.update_index(|file| {
            if let Some(e) = file.images.get_mut(key) {
                e.projects.insert(project.to_owned());
            }
        })
    }

    /// Removes `project` from every entry's users (a project that no longer
    /// uses its images); entries are kept for `prune` to decide.
    pub fn forget_project(&self, project: &Path) -> Result<(), StoreError> {
        self.update_index(|file| {
            for e in file.images.values_mut() {
                e.projects.remove(project);
            }
        })
    }

    /// Keeps the references for which `keep` says so (it may also change
    /// their entries) and removes the others from the index; returns the
    /// removed ones. Their blobs stay until removed by the caller.
    pub fn retain(
        &self,
        mut keep: impl FnMut(&str, &mut IndexEntry) -> bool,
    ) -> Result<Vec<(String, IndexEntry)>, StoreError> {
        let mut removed = Vec::new();
        self.update_index(|file| {
            let images = std::mem::take(&mut file.images);
            for (key, mut entry) in images {
                if keep(&key, &mut entry) {
                    file.images.insert(key, entry);
                } else {
                    removed.push((key, entry));
                }
            }
        })?;
        Ok(removed)
    }

    fn update_index(&self, change: impl FnOnce(&mut IndexFile)) -> Result<(), StoreError> {
        let lock_path = self.inner.root.join("images.lock");
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&lock_path)
            .map_err(|e| StoreError::io(&lock_path, e))?;
        let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
            .map_err(|(_, e)| StoreError::io(&lock_path, e.into()))?;
        let mut file = self.load_index()?;
        change(&mut file);
        file.version = INDEX_VERSION;
        let path = self.index_path();
        let data = serde_json::to_vec_pretty(&file).map_err(|e| StoreError::io(&path, e.into()))?;
        fsutil::write_atomic(&path, &data).map_err(|e| StoreError::io(&path, e))
    }

    /// Reads `images.json`. A file that is not valid JSON is set aside and
    /// reported (the blobs are still there; the next fetch re-records), as
    /// `projects.json` is; one from a newer locald is refused.
    fn load_index(&self) -> Result<IndexFile, StoreError> {
        let path = self.index_path();
        let Some(data) = fsutil::read_state(&path, INDEX_LIMIT)? else {
            return Ok(IndexFile {
                version: INDEX_VERSION,
                images: BTreeMap::new(),
            });
        };
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        match serde_json::from_slice::<Version>(&data) {
            Ok(v) if v.version > INDEX_VERSION => {
                return Err(StoreError::NewerIndex {
                    path,
                    found: v.version,
                })
            }
            _ => {}
        }
        match serde_json::from_slice::<IndexFile>(&data) {
            Ok(f) => Ok(f),
            Err(e) => {
                let aside = path.with_extension(format!(
                    "json.corrupt-{}",
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs())
                ));
                tracing::warn!(
                    "{} is not a valid image index ({e}); set aside as {}",
                    path.display(),
                    aside.display()
                );
                let _ = fs::rename(&path, &aside);
                Ok(IndexFile {
                    version: INDEX_VERSION,
                    images: BTreeMap::new(),
                })
            }
        }
    }

    /// Removes temporaries whose writing process is gone. A temporary of a
    /// live process (this one included) is left alone.
    fn remove_stale_temporaries(&self) {
        let dir = self.tmp_dir();
        let Ok(entries) = fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.split('.').next())
                .and_then(|p| p.parse::<i32>().ok());
            let alive = pid.is_some_and(|pid| {
                // ESRCH means gone; EPERM means alive under another uid.
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                    .map_or_else(|e| e != nix::errno::Errno::ESRCH, |()| true)
            });
            if !alive {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// Writes one blob: see the module doc for how it commits.
pub struct BlobWriter {
    file: Option<File>,
    tmp: PathBuf,
    dest: PathBuf,
    expected: Digest,
    size: Option<u64>,
    hasher: Hasher,
}

impl BlobWriter {
    /// Appends bytes. Refuses (and the blob is lost) once more bytes arrive
    /// than the expected size: a hostile source cannot fill the disk.
    pub fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        let after = self.hasher.len() + data.len() as u64;
        if let Some(size) = self.size {
            if after > size {
                self.discard();
                return Err(StoreError::SizeMismatch {
                    digest: self.expected.clone(),
                    expected: size,
                    actual: after,
                    more: true,
                });
            }
        }
        let Some(file) = self.file.as_mut() else {
            return Err(StoreError::io(
                &self.tmp,
                io::Error::other("the blob was already discarded"),
            ));
        };
        file.write_all(data)
            .map_err(|e| StoreError::io(&self.tmp, e))?;
        self.hasher.update(data);
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.hasher.len()
    }

    /// Verifies size and digest and puts the blob in place; returns its path.
    pub fn commit(mut self) -> Result<PathBuf, StoreError> {
        let Some(file) = self.file.take() else {
            return Err(StoreError::io(
                &self.tmp,
                io::Error::other("the blob was already discarded"),
            ));
        };
        let written = self.hasher.len();
        if let Some(size) = self.size {
            if written != size {
                return Err(StoreError::SizeMismatch {
                    digest: self.expected.clone(),
                    expected: size,
                    actual: written,
                    more: false,
                });
            }
        }
        let actual = std::mem::take(&mut self.hasher).finish();
        if actual != self.expected {
            return Err(StoreError::DigestMismatch {
                expected: self.expected.clone(),
                actual,
            });
        }
        let io = |e| StoreError::io(&self.tmp, e);
        // Read-only: nothing of ours writes a blob again.
        file.set_permissions(fs::Permissions::from_mode(0o444))
            .map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        match fs::hard_link(&self.tmp, &self.dest) {
            Ok(()) => {}
            // Another writer committed the same verified content first.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            // A file system without hard links: rename (which may replace
            // an identical blob another writer just committed).
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EOPNOTSUPP)) => {
                fs::rename(&self.tmp, &self.dest).map_err(|e| StoreError::io(&self.dest, e))?;
            }
            Err(e) => return Err(StoreError::io(&self.dest, e)),
        }
        let _ = fs::remove_file(&self.tmp);
        if let Some(dir) = self.dest.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| StoreError::io(dir, e))?;
        }
        Ok(self.dest.clone())
    }

    fn discard(&mut self) {
        self.file.take();
        let _ = fs::remove_file(&self.tmp);
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // Committed or not, the temporary goes (commit already removed it).
        self.discard();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("locald")).expect("open");
        (dir, store)
    }

    fn temporaries(store: &Store) -> Vec<String> {
        fs::read_dir(store.tmp_dir())
            .expect("tmp dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn concurrent_writers_of_one_blob_leave_one_copy_and_no_temporaries() {
        let (_dir, store) = store();
        let data: Vec<u8> = (0..(3u32 << 20)).map(|i| (i % 251) as u8).collect();
        let digest = Digest::of(&data);
        let barrier = std::sync::Barrier::new(8);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    // Each thread opens its own store, as separate processes would.
                    let store = Store::open(store.root()).expect("open");
                    barrier.wait();
                    let path = store
                        .copy_blob(&digest, data.len() as u64, &data[..], |_| {})
                        .expect("every writer succeeds");
                    assert_eq!(path, store.blob_path(&digest));
                });
            }
        });
        assert_eq!(store.blobs().expect("list"), vec![digest.clone()]);
        assert_eq!(fs::read(store.blob_path(&digest)).expect("read"), data);
        assert!(temporaries(&store).is_empty(), "{:?}", temporaries(&store));
        let mode = fs::metadata(store.blob_path(&digest)).expect("stat").mode() & 0o7777;
        assert_eq!(mode, 0o444, "blobs are read-only");
    }

    #[test]
    fn corrupted_content_is_refused_and_leaves_nothing() {
        let (_dir, store) = store();
        let good = b"the real layer".to_vec();
        let digest = Digest::of(&good);
        let mut bad = good.clone();
        bad[0] ^= 1;
        let e = store
            .copy_blob(&digest, bad.len() as u64, &bad[..], |_| {})
            .expect_err("corrupted");
        assert!(matches!(e, StoreError::DigestMismatch { .. }), "{e}");
        assert!(
            e.to_string()
                .ends_with(&format!(", not {digest}; refusing it")),
            "{e}"
        );
        assert!(!store.has_blob(&digest));
        assert!(temporaries(&store).is_empty());
    }

    #[test]
    fn more_or_fewer_bytes_than_the_descriptor_says_are_refused() {
        let (_dir, store) = store();
        let data = b"0123456789".to_vec();
        let digest = Digest::of(&data);
        let e = store
            .copy_blob(&digest, 4, &data[..], |_| {})
            .expect_err("too long");
        assert!(
            matches!(
                e,
                StoreError::SizeMismatch {
                    more: true,
                    expected: 4,
                    ..
                }
            ),
            "{e}"
        );
        let e = store
            .copy_blob(&digest, 20, &data[..], |_| {})
            .expect_err("too short");
        assert!(
            matches!(
                e,
                StoreError::SizeMismatch {
                    more: false,
                    actual: 10,
                    ..
                }
            ),
            "{e}"
        );
        assert!(!store.has_blob(&digest));
        assert!(temporaries(&store).is_empty());
    }

    #[test]
    fn an_interrupted_write_is_never_a_blob() {
        let (_dir, store) = store();
        let data = b"half of a layer, then the network went away".to_vec();
        let digest = Digest::of(&data);
        let mut w = store
            .blob_writer(&digest, Some(data.len() as u64))
            .expect("writer");
        w.write(&data[..10]).expect("some bytes");
        assert!(!store.has_blob(&digest));
        drop(w);
        assert!(!store.has_blob(&digest));
        assert!(temporaries(&store).is_empty());
    }

    #[test]
    fn temporaries_of_dead_processes_are_removed_on_open() {
        let (_dir, store) = store();
        let digest = Digest::of(b"x");
        // A pid that cannot be running (above pid_max's ceiling).
        let stale = store.tmp_dir().join(format!("4194305.0.{}", digest.hex()));
        fs::write(&stale, b"partial").expect("write");
        let mine = store
            .tmp_dir()
            .join(format!("{}.99.{}", std::process::id(), digest.hex()));
        fs::write(&mine, b"in progress").expect("write");
        let store = Store::open(store.root()).expect("reopen");
        assert_eq!(
            temporaries(&store),
            vec![mine.file_name().unwrap().to_string_lossy().into_owned()]
        );
    }

    #[test]
    fn a_blob_changed_on_disk_is_caught_when_read() {
        let (_dir, store) = store();
        let digest = Digest::of(b"{}");
        store.put_blob(&digest, b"{}").expect("put");
        let path = store.blob_path(&digest);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        fs::write(&path, b"[]").expect("tamper");
        let e = store.read_blob(&digest, 100).expect_err("tampered");
        assert!(matches!(e, StoreError::DigestMismatch { .. }), "{e}");
    }

    #[test]
    fn a_blob_verified_again_is_removed_when_it_changed_on_disk() {
        let (_dir, store) = store();
        let good = Digest::of(b"layer");
        store.put_blob(&good, b"layer").expect("put");
        assert_eq!(store.verify_blob(&good).expect("verify"), BlobCheck::Good);
        let path = store.blob_path(&good);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        fs::write(&path, b"LAYER").expect("tamper");
        assert_eq!(
            store.verify_blob(&good).expect("verify"),
            BlobCheck::Removed
        );
        assert!(!store.has_blob(&good));
        assert_eq!(
            store.verify_blob(&good).expect("verify"),
            BlobCheck::Missing
        );
    }

    #[test]
    fn pruning_waits_for_every_user_of_the_store() {
        let (_dir, store) = store();
        let shared = store.lock_shared().expect("shared");
        let also = Store::open(store.root())
            .expect("open")
            .lock_shared()
            .expect("shared locks coexist");
        let (tx, rx) = std::sync::mpsc::channel();
        let other = Store::open(store.root()).expect("open");
        let pruner = std::thread::spawn(move || {
            let _l = other.lock_exclusive().expect("exclusive");
            tx.send(()).expect("send");
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(rx.try_recv().is_err(), "prune waits");
        drop(shared);
        drop(also);
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("prune runs once nobody uses the store");
        pruner.join().expect("joined");
    }

    #[test]
    fn the_index_records_references_and_their_projects() {
        let (_dir, store) = store();
        let m = Digest::of(b"manifest");
        let i = Digest::of(b"index");
        store
            .record(
                "docker.io/library/redis:7",
                &m,
                Some(&i),
                Some(Path::new("/p/a")),
            )
            .expect("record");
        store
            .record(
                "docker.io/library/redis:7",
                &m,
                Some(&i),
                Some(Path::new("/p/b")),
            )
            .expect("record");
        let e = store
            .lookup("docker.io/library/redis:7")
            .expect("read")
            .expect("there");
        assert_eq!(e.manifest, m);
        assert_eq!(e.index, Some(i));
        assert_eq!(
            e.projects
                .iter()
                .map(|p| p.to_str().unwrap())
                .collect::<Vec<_>>(),
            ["/p/a", "/p/b"]
        );
        store.forget_project(Path::new("/p/a")).expect("forget");
        assert_eq!(
            store
                .lookup("docker.io/library/redis:7")
                .unwrap()
                .unwrap()
                .projects
                .len(),
            1
        );
        // Recorded but its blobs are not there: not resolvable, not an error.
        assert!(store
            .resolve("docker.io/library/redis:7")
            .expect("resolve")
            .is_none());
        assert!(store.lookup("nothing").expect("read").is_none());
    }

    #[test]
    fn concurrent_index_updates_lose_nothing() {
        let (_dir, store) = store();
        let m = Digest::of(b"m");
        std::thread::scope(|s| {
            for t in 0..6 {
                let root = store.root().to_owned();
                let m = &m;
                s.spawn(move || {
                    let store = Store::open(&root).expect("open");
                    for i in 0..5 {
                        store
                            .record(&format!("r{t}-{i}"), m, None, Some(Path::new("/p")))
                            .expect("record");
                    }
                });
            }
        });
        assert_eq!(store.entries().expect("entries").len(), 30);
    }

    #[test]
    fn a_corrupt_index_is_set_aside_and_a_newer_one_left_alone() {
        let (_dir, store) = store();
        fs::write(store.index_path(), b"{not json").expect("write");
        assert!(store.entries().expect("tolerated").is_empty());
        assert!(fs::read_dir(store.root()).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("images.json.corrupt-")));
        fs::write(store.index_path(), br#"{"version": 9, "images": {}}"#).expect("write");
        let e = store
            .record("x", &Digest::of(b"m"), None, None)
            .expect_err("newer");
        assert!(e.to_string().contains("version 9"), "{e}");
    }

    #[test]
    fn the_store_root_must_be_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("locald");
        fs::create_dir(&root).expect("mkdir");
        fs::set_permissions(&root, fs::Permissions::from_mode(0o777)).expect("chmod");
        assert!(matches!(Store::open(&root), Err(StoreError::Unsafe(_))));
    }

    #[tokio::test]
    async fn one_download_per_blob_in_a_process() {
        let (_dir, store) = store();
        let d = Digest::of(b"x");
        let first = store.lock_blob(&d).await;
        let s2 = store.clone();
        let d2 = d.clone();
        let waiter = tokio::spawn(async move {
            let _l = s2.lock_blob(&d2).await;
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "the second waits for the first");
        drop(first);
        waiter.await.expect("joined");
        // The map forgets blobs nobody downloads.
        let _l = store.lock_blob(&Digest::of(b"y")).await;
        assert_eq!(store.inner.inflight.lock().unwrap().len(), 1);
    }
}
