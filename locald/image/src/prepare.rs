//! From a reference to something a container runs from: the image store's
//! side of the container runtime ([`ImageSource`]).
//!
//! [`StoreImages::prepare`] makes sure the image is in the store (pulled
//! from its registry once, or imported from a local layout when that
//! changed), unpacks it once per manifest digest into
//! `STORE/rootfs/<digest>` (in a user namespace, see [`super::unpack`]), and
//! returns that shared rootfs with the parts of the image config a container
//! needs. The unpack goes to a temporary directory beside the final one and
//! is renamed into place only when complete, under a per-image lock, so two
//! daemons or a daemon and a foreground `locald up` starting the same image
//! unpack it once, and an interrupted unpack is never mistaken for a rootfs.
//! All of it runs under the store's shared use lock, which pruning takes
//! exclusively.
//!
//! A container holds a **lease** on the rootfs it runs from for as long as
//! it runs: a shared `flock` on `STORE/rootfs/.<digest>.inuse`, taken while
//! the use lock is held and released when the container's process handle
//! goes (or locald dies). Pruning removes no rootfs whose lease it cannot
//! take, so a container never loses its files, whichever locald runs it.
//!
//! The `images`, `pull` and `prune` operations on the same store are in
//! [`super::manage`]; [`StoreImages`] offers them with its helper binary.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{Flock, FlockArg};

use super::manage::{self, ImageInfo, ManageError, Pruned, PullSummary, Users};
use super::unpack::{unpack, Layer, UnpackOptions};
use super::{Image, ImageRef, Images, ProgressFn};
use crate::source::{ImageSource, Lease, PreparedImage};
use locald_core::output::BoxFuture;

/// Images from the user's store, unpacked on first use.
#[derive(Clone)]
pub struct StoreImages {
    images: Images,
    helper: PathBuf,
}

impl StoreImages {
    /// The user's store; `helper` is the `locald` binary that runs
    /// `locald internal-unpack` (the running executable, normally).
    pub fn new(images: Images, helper: PathBuf) -> Self {
        StoreImages { images, helper }
    }

    /// The user's store (see [`Images::open`]), unpacking with the running
    /// executable.
    pub fn open(paths: &locald_core::paths::Paths) -> Result<Self, String> {
        let images = Images::open(paths).map_err(|e| locald_core::error_chain(&e))?;
        let helper =
            std::env::current_exe().map_err(|e| format!("cannot find locald itself: {e}"))?;
        Ok(StoreImages::new(images, helper))
    }

    /// The images handle (for `images`, `pull`, `prune`).
    pub fn images(&self) -> &Images {
        &self.images
    }

    /// Where the shared rootfs of an image lives.
    pub fn rootfs_dir(&self, image: &Image) -> PathBuf {
        self.images.store().rootfs_dir(&image.manifest_digest)
    }

    /// Every stored image, its size and the projects of `users` using it.
    pub async fn list(&self, users: Users) -> Result<Vec<ImageInfo>, ManageError> {
        let store = self.images.store().clone();
        tokio::task::spawn_blocking(move || manage::list(&store, &users))
            .await
            .map_err(|_| ManageError::Interrupted)?
    }

    /// Pulls or imports `reference` for the project in `project_dir`
    /// ([`manage::pull`]).
    pub async fn pull(
        &self,
        reference: &str,
        project_dir: &Path,
        force: bool,
        progress: ProgressFn,
    ) -> Result<PullSummary, ManageError> {
        manage::pull(&self.images, reference, project_dir, force, progress).await
    }

    /// Removes what none of `users` uses ([`manage::prune`]), unpacked
    /// trees through the unpack helper's user namespace.
    pub async fn prune(&self, users: Users) -> Result<Pruned, ManageError> {
        let store = self.images.store().clone();
        let opts = UnpackOptions::new(self.helper.clone());
        tokio::task::spawn_blocking(move || {
            manage::prune(&store, &users, &|path| super::unpack::remove(path, &opts))
        })
        .await
        .map_err(|_| ManageError::Interrupted)?
    }

    /// Removes what interrupted unpacks left ([`manage::sweep_leftovers`]).
    pub async fn sweep_leftovers(&self) -> usize {
        let store = self.images.store().clone();
        let opts = UnpackOptions::new(self.helper.clone());
        tokio::task::spawn_blocking(move || {
            manage::sweep_leftovers(&store, &|path| super::unpack::remove(path, &opts))
        })
        .await
        .unwrap_or(0)
    }

    /// Takes a lease on the rootfs of `image` (see the module doc).
    /// Blocking; call with the store's use lock held.
    fn lease(&self, image: &Image) -> Result<Flock<File>, String> {
        let path = self
            .images
            .store()
            .rootfs_root()
            .join(format!(".{}.inuse", image.manifest_digest.hex()));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        Flock::lock(file, FlockArg::LockShared)
            .map_err(|(_, e)| format!("cannot lock {}: {e}", path.display()))
    }

    /// Unpacks `image` into its shared rootfs unless that exists.
    /// Blocking: call from a blocking task, with the use lock held.
    fn unpack_once(&self, image: &Image) -> Result<PathBuf, String> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let target = self.rootfs_dir(image);
        if target.is_dir() {
            return Ok(target);
        }
        let parent = self.images.store().rootfs_root();
        locald_core::fsutil::private_dir(&parent).map_err(|e| locald_core::error_chain(&e))?;
        // One unpack per image at a time, across processes.
        let lock_path = parent.join(format!(".{}.lock", image.manifest_digest.hex()));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&lock_path)
            .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
        let _lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| format!("cannot lock {}: {e}", lock_path.display()))?;
        if target.is_dir() {
            return Ok(target);
        }
        let opts = UnpackOptions::new(self.helper.clone());
        manage::sweep_leftovers(self.images.store(), &|path| {
            super::unpack::remove(path, &opts)
        });
        let tmp = parent.join(format!(
            ".tmp-{}-{}-{}",
            image.manifest_digest.hex(),
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let layers: Vec<Layer> = image.layers.iter().map(Layer::from).collect();
        let stats = match unpack(&tmp, &layers, &opts) {
            Ok(stats) => stats,
            Err(e) => {
                // What was unpacked may belong to subordinate ids.
                if let Err(r) = super::unpack::remove(&tmp, &opts) {
                    tracing::warn!(
                        "cannot remove the failed unpack {}: {}",
                        tmp.display(),
                        locald_core::error_chain(&r)
                    );
                }
                return Err(format!("cannot unpack: {}", locald_core::error_chain(&e)));
            }
        };
        std::fs::rename(&tmp, &target)
            .map_err(|e| format!("cannot move the rootfs into place: {e}"))?;
        tracing::info!(
            "unpacked image {} ({} entries, {} bytes)",
            image.manifest_digest,
            stats.entries,
            stats.bytes
        );
        Ok(target)
    }
}

/// The parts of an image config a container needs.
fn runtime_config(image: &Image, rootfs: PathBuf, lease: Lease) -> PreparedImage {
    let config = image.config.config().clone().unwrap_or_default();
    PreparedImage {
        digest: image.manifest_digest.to_string(),
        rootfs,
        env: config.env().clone().unwrap_or_default(),
        entrypoint: config.entrypoint().clone().unwrap_or_default(),
        cmd: config.cmd().clone().unwrap_or_default(),
        workdir: config.working_dir().clone(),
        stop_signal: config.stop_signal().clone(),
        lease,
        user: config.user().clone(),
    }
}

impl ImageSource for StoreImages {
    fn prepare<'a>(
        &'a self,
        reference: &'a str,
        project_dir: &'a Path,
        progress: ProgressFn,
    ) -> BoxFuture<'a, Result<PreparedImage, String>> {
        Box::pin(async move {
            let r = ImageRef::parse(reference).map_err(|e| e.to_string())?;
            let store = self.images.store().clone();
            let use_lock = tokio::task::spawn_blocking(move || store.lock_shared())
                .await
                .map_err(|e| format!("locking the image store crashed: {e}"))?
                .map_err(|e| locald_core::error_chain(&e))?;
            let image = self
                .images
                .ensure(&r, project_dir, progress)
                .await
                .map_err(|e| locald_core::error_chain(&e))?;
            let this = self.clone();
            let img = image.clone();
            let (rootfs, lease) = tokio::task::spawn_blocking(move || {
                let rootfs = this.unpack_once(&img)?;
                Ok::<_, String>((rootfs, this.lease(&img)?))
            })
            .await
            .map_err(|e| format!("unpacking crashed: {e}"))??;
            drop(use_lock);
            Ok(runtime_config(&image, rootfs, Lease::new(lease)))
        })
    }

    fn writable_copy<'a>(
        &'a self,
        image: &'a PreparedImage,
        dest: &'a Path,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let digest = super::Digest::parse(&image.digest).map_err(|e| e.to_string())?;
            let this = self.clone();
            let dest = dest.to_owned();
            tokio::task::spawn_blocking(move || {
                // The layers were verified when they were stored; unpacking
                // them again (not copying the shared tree) means the copy is
                // made by the same contained, namespaced code as the original.
                let image = this
                    .images
                    .store()
                    .image(&digest)
                    .map_err(|e| locald_core::error_chain(&e))?;
                let layers: Vec<Layer> = image.layers.iter().map(Layer::from).collect();
                let opts = UnpackOptions::new(this.helper.clone());
                if let Err(e) = unpack(&dest, &layers, &opts) {
                    let _ = super::unpack::remove(&dest, &opts);
                    return Err(format!(
                        "cannot make the container's copy: {}",
                        locald_core::error_chain(&e)
                    ));
                }
                Ok(())
            })
            .await
            .map_err(|e| format!("copying the image crashed: {e}"))?
        })
    }

    fn remove_copy<'a>(&'a self, dest: &'a Path) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let opts = UnpackOptions::new(self.helper.clone());
            let dest = dest.to_owned();
            tokio::task::spawn_blocking(move || {
                super::unpack::remove(&dest, &opts).map_err(|e| locald_core::error_chain(&e))
            })
            .await
            .map_err(|e| format!("removing the copy crashed: {e}"))?
        })
    }
}
