//! What the container runtime asks of the image store: [`ImageSource`]
//! prepares an image (stored, verified, unpacked once) and makes and
//! removes each container's writable copy; [`PreparedImage`] is what a
//! container needs of its image. The store implements it
//! (`StoreImages` in `prepare`); the engine's container runtime uses
//! it, and tests give it a fake.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use locald_core::output::BoxFuture;

use crate::ProgressFn;

/// Something that must live as long as a container runs from its image
/// (the image store's hold on the shared rootfs, which keeps `prune` from
/// removing it); dropped with the container's process handle.
#[derive(Clone, Default)]
pub struct Lease(Option<Arc<dyn std::any::Any + Send + Sync>>);

impl Lease {
    /// A lease holding `hold` until the last clone is dropped.
    pub fn new(hold: impl std::any::Any + Send + Sync) -> Self {
        Lease(Some(Arc::new(hold)))
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Lease(held)"
        } else {
            "Lease(none)"
        })
    }
}

/// What a container needs from its image.
#[derive(Debug, Clone, Default)]
pub struct PreparedImage {
    /// The image's manifest digest (`sha256:…`), for `LOCALD_IMAGE`.
    pub digest: String,
    /// The unpacked rootfs, shared by every container of the image; only
    /// ever mounted read-only.
    pub rootfs: PathBuf,
    /// `NAME=value` entries of the image config's `Env`.
    pub env: Vec<String>,
    /// The image's Entrypoint.
    pub entrypoint: Vec<String>,
    /// The image's Cmd.
    pub cmd: Vec<String>,
    /// The image's WorkingDir.
    pub workdir: Option<String>,
    /// The image's StopSignal (e.g. `SIGQUIT`).
    pub stop_signal: Option<String>,
    /// Held for as long as the container runs.
    pub lease: Lease,
    /// The image's User: `uid`, `name`, `uid:gid`, `name:group`, ….
    pub user: Option<String>,
}

/// Resolves an image reference to a prepared image (pulled or imported,
/// verified and unpacked): the image store implements it.
pub trait ImageSource: Send + Sync + 'static {
    /// Prepares `reference` for the project in `project_dir` (relative
    /// `oci:`/`oci-archive:` paths are relative to it), reporting the
    /// progress of a pull or import to `progress`.
    fn prepare<'a>(
        &'a self,
        reference: &'a str,
        project_dir: &'a Path,
        progress: ProgressFn,
    ) -> BoxFuture<'a, Result<PreparedImage, String>>;

    /// Makes `dest` (new, in a directory only the user can enter) a private,
    /// writable copy of the image's files for one container.
    fn writable_copy<'a>(
        &'a self,
        image: &'a PreparedImage,
        dest: &'a Path,
    ) -> BoxFuture<'a, Result<(), String>>;

    /// Removes such a copy (its files may belong to subordinate ids); a
    /// missing one is not an error.
    fn remove_copy<'a>(&'a self, dest: &'a Path) -> BoxFuture<'a, Result<(), String>>;
}
