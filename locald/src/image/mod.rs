//! Container images: where they come from and where they are kept.
//!
//! A service with `image = "…"` runs as a container. Before the runtime can
//! unpack and run it, the image must be here, verified, once for every
//! project of the user. This module gets it here:
//!
//! - [`reference`] parses what the user wrote: `redis:7`,
//!   `ghcr.io/org/app@sha256:…`, `oci:./layout:tag`, `oci-archive:f.tar`.
//! - [`store`] is the per-user, content-addressed store under
//!   `$XDG_DATA_HOME/locald/`: blobs committed only once verified, and an
//!   index of which reference resolved to which manifest, used by which
//!   projects. [`Store::image`] turns a manifest digest into an [`Image`]
//!   (config and layer blobs), which is what the runtime consumes.
//! - [`layout`] imports from local OCI layouts and archives, no network.
//! - [`manifest`] holds what both read: media types, platform selection,
//!   the checks that a manifest is a runnable image.
//! - [`digest`] is the content digest every blob is named and checked by.
//!
//! Unpacking layers into a root file system (`image::unpack`) lives beside
//! these modules and reads [`LayerRef::blob_path`]; it is not part of
//! fetching.

pub mod digest;
pub mod layout;
pub mod manifest;
pub mod reference;
pub mod store;
// `pub mod unpack;` (layers → root file system) is added beside these by
// the unpacking work; nothing here depends on it.

use std::sync::Arc;

pub use digest::Digest;
pub use reference::{ImageRef, ReferenceError, RegistryRef};
pub use store::{Image, LayerRef, Store, StoreError};

/// Progress of one layer being copied or downloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The layer.
    pub layer: Digest,
    /// Its position in the image (0 is the lowest layer).
    pub index: usize,
    /// How many layers the image has.
    pub layers: usize,
    /// Bytes done.
    pub done: u64,
    /// Bytes in all.
    pub total: u64,
    /// The layer was already stored; nothing was transferred.
    pub cached: bool,
}

/// Where progress goes: called from the fetching tasks (possibly several
/// at once), at the start and end of each layer and every 1% or so
/// between, so a caller can forward every call to the bus or a terminal.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// A [`ProgressFn`] that discards progress.
pub fn no_progress() -> ProgressFn {
    Arc::new(|_| {})
}

/// Reports one layer's progress at a bounded rate.
pub(crate) struct LayerProgress {
    f: ProgressFn,
    p: Progress,
    step: u64,
    last: u64,
}

impl LayerProgress {
    /// Reports a layer that is already stored.
    pub(crate) fn cached(f: &ProgressFn, layer: &Digest, index: usize, layers: usize, total: u64) {
        f(&Progress {
            layer: layer.clone(),
            index,
            layers,
            done: total,
            total,
            cached: true,
        });
    }

    /// Reports the start of a transfer and returns the reporter for it.
    pub(crate) fn start(
        f: &ProgressFn,
        layer: &Digest,
        index: usize,
        layers: usize,
        total: u64,
    ) -> LayerProgress {
        let p = Progress {
            layer: layer.clone(),
            index,
            layers,
            done: 0,
            total,
            cached: false,
        };
        f(&p);
        LayerProgress {
            f: f.clone(),
            p,
            step: (total / 100).max(64 << 10),
            last: 0,
        }
    }

    /// Reports `done` bytes if it is a step further than the last report
    /// or the end.
    pub(crate) fn update(&mut self, done: u64) {
        if done >= self.last + self.step || (done == self.p.total && done != self.last) {
            self.last = done;
            self.p.done = done;
            (self.f)(&self.p);
        }
    }
}
