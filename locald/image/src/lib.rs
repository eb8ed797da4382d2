//! Container images: where they come from and where they are kept.
//!
//! A service with `image = "…"` runs as a container. Before the runtime can
//! unpack and run it, the image must be here, verified, once for every
//! project of the user. This module gets it here:
//!
//! - [`reference`](mod@reference) parses what the user wrote: `redis:7`,
//!   `ghcr.io/org/app@sha256:…`, `oci:./layout:tag`, `oci-archive:f.tar`.
//! - [`store`] is the per-user, content-addressed store under
//!   `$XDG_DATA_HOME/locald/`: blobs committed only once verified, and an
//!   index of which reference resolved to which manifest, used by which
//!   projects. [`Store::image`] turns a manifest digest into an [`Image`]
//!   (config and layer blobs), which is what the runtime consumes.
//! - [`registry`] pulls from registries (with `oci-client`): token auth,
//!   credentials from Docker's and containers' auth files, indexes resolved
//!   to linux and this architecture, layers in parallel with progress.
//! - [`layout`] imports from local OCI layouts and archives, no network.
//! - [`manifest`] holds what both read: media types, platform selection,
//!   the checks that a manifest is a runnable image.
//! - [`digest`] is the content digest every blob is named and checked by.
//!
//! [`unpack`] turns an image's layers into a root file system (reading
//! [`LayerRef::blob_path`]), safely, in a user namespace; it is not part of
//! fetching.
//!
//! [`Images`] is the one handle the engine, the D-Bus layer and the CLI
//! use: [`Images::resolve`] (no network), [`Images::fetch`] (`pull`), and
//! [`Images::ensure`] (what starting a service does). [`prepare`] unpacks
//! images for the container runtime; [`manage`] lists, pulls on demand and
//! prunes (`locald-ctl images`, `pull`, `prune`); [`source`] is what the
//! container runtime asks of all this. [`user_config`] holds the user's own
//! settings (`insecure_registries`).
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod digest;
pub mod layout;
pub mod manage;
pub mod manifest;
pub mod prepare;
pub mod reference;
pub mod registry;
pub mod source;
pub mod store;
pub mod unpack;
pub mod user_config;

use std::path::Path;
use std::sync::Arc;

pub use digest::Digest;
pub use reference::{ImageRef, ReferenceError, RegistryRef};
pub use registry::{Credentials, RegistryClient};
pub use store::{Image, LayerRef, Store, StoreError};

use crate::user_config::{UserConfig, UserConfigError};

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

/// What a fetch brought into the store.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The image, complete in the store.
    pub image: Image,
    /// The image index it was chosen from, if the reference named one.
    pub index: Option<Digest>,
    /// Blobs this fetch stored (the others were there already).
    pub copied: Vec<Digest>,
    /// Bytes transferred into the store.
    pub bytes: u64,
}

/// Why an image could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference does not parse.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// The store refused or failed.
    #[error("image store")]
    Store(#[source] StoreError),
    /// Importing from a layout or archive failed.
    #[error("cannot import {reference}")]
    Layout {
        /// The reference.
        reference: String,
        /// Why.
        #[source]
        source: Box<layout::LayoutError>,
    },
    /// Pulling from a registry failed.
    #[error("cannot pull {reference}")]
    Pull {
        /// The reference.
        reference: String,
        /// Why.
        #[source]
        source: Box<registry::PullError>,
    },
    /// The per-user config is unusable.
    #[error(transparent)]
    UserConfig(#[from] UserConfigError),
    /// The registry client could not be set up.
    #[error(transparent)]
    Client(Box<registry::PullError>),
    /// A credentials file is unusable.
    #[error(transparent)]
    Credentials(#[from] registry::CredentialsError),
    /// The blocking import task ended without an answer.
    #[error("importing {reference} was interrupted")]
    Interrupted {
        /// The reference.
        reference: String,
    },
}

impl From<StoreError> for ImageError {
    fn from(e: StoreError) -> Self {
        ImageError::Store(e)
    }
}

/// The one handle on images: a store and a registry client.
#[derive(Clone)]
pub struct Images {
    store: Store,
    registry: Arc<RegistryClient>,
}

impl Images {
    /// Images in `store`, pulled with `registry`.
    pub fn new(store: Store, registry: RegistryClient) -> Images {
        Images {
            store,
            registry: Arc::new(registry),
        }
    }

    /// The user's store (in `paths.data`) and config (`paths`'
    /// `config.toml`), with the container tools' credentials files.
    pub fn open(paths: &locald_core::paths::Paths) -> Result<Images, ImageError> {
        let root = paths.data.as_deref().ok_or_else(|| {
            StoreError::io(
                Path::new("$XDG_DATA_HOME"),
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "neither XDG_DATA_HOME nor HOME is set to an absolute path",
                ),
            )
        })?;
        let store = Store::open(root)?;
        let config = match paths.config_file() {
            Some(p) => UserConfig::load(&p)?,
            None => UserConfig::default(),
        };
        let credentials = Credentials::load(&Credentials::default_paths())?;
        let registry = RegistryClient::new(&config, credentials)
            .map_err(|e| ImageError::Client(Box::new(e)))?;
        Ok(Images::new(store, registry))
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The image `image` names, if it is stored, without the network.
    /// `project_dir` resolves relative `oci:` paths.
    pub fn resolve(
        &self,
        image: &ImageRef,
        project_dir: &Path,
    ) -> Result<Option<Image>, ImageError> {
        Ok(self.store.resolve(&image.key(project_dir))?)
    }

    /// Pulls or imports `image` (blobs already stored are not transferred
    /// again), records it as used by `project_dir`, and returns it.
    pub async fn fetch(
        &self,
        image: &ImageRef,
        project_dir: &Path,
        progress: ProgressFn,
    ) -> Result<Fetched, ImageError> {
        self.fetch_and_record(image, project_dir, progress, true)
            .await
    }

    /// [`Images::fetch`]; with `always_record` false, `images.json` is
    /// rewritten only when what the reference names (or who uses it)
    /// changed, so re-importing an unchanged layout costs no write and no
    /// fsync.
    async fn fetch_and_record(
        &self,
        image: &ImageRef,
        project_dir: &Path,
        progress: ProgressFn,
        always_record: bool,
    ) -> Result<Fetched, ImageError> {
        let (manifest, index, copied, bytes) = match image {
            ImageRef::Registry(r) => {
                let p = self
                    .registry
                    .pull(&self.store, r, progress)
                    .await
                    .map_err(|source| ImageError::Pull {
                        reference: r.to_string(),
                        source: Box::new(source),
                    })?;
                (p.manifest, p.index, p.copied, p.bytes)
            }
            ImageRef::OciLayout(l) | ImageRef::OciArchive(l) => {
                let archive = matches!(image, ImageRef::OciArchive(_));
                let path = l.resolve(project_dir);
                let tag = l.tag.clone();
                let store = self.store.clone();
                let imported = tokio::task::spawn_blocking(move || {
                    if archive {
                        layout::import_archive(&store, &path, tag.as_deref(), &progress)
                    } else {
                        layout::import_layout(&store, &path, tag.as_deref(), &progress)
                    }
                })
                .await
                .map_err(|_| ImageError::Interrupted {
                    reference: image.to_string(),
                })?
                .map_err(|source| ImageError::Layout {
                    reference: image.to_string(),
                    source: Box::new(source),
                })?;
                (
                    imported.manifest,
                    imported.index,
                    imported.copied,
                    imported.bytes,
                )
            }
        };
        let store = self.store.clone();
        let key = image.key(project_dir);
        let project = project_dir.to_owned();
        let (image, index) = tokio::task::spawn_blocking(move || {
            let unchanged = !always_record
                && store.lookup(&key)?.is_some_and(|e| {
                    e.manifest == manifest && e.index == index && e.projects.contains(&project)
                });
            if !unchanged {
                store.record(&key, &manifest, index.as_ref(), Some(&project))?;
            }
            Ok::<_, StoreError>((store.image(&manifest)?, index))
        })
        .await
        .map_err(|_| ImageError::Interrupted {
            reference: image.to_string(),
        })??;
        Ok(Fetched {
            image,
            index,
            copied,
            bytes,
        })
    }

    /// What starting a service does: a registry image already stored is
    /// used as it is (pulled once; `pull` updates it); a local layout or
    /// archive is imported again, which copies only what changed.
    pub async fn ensure(
        &self,
        image: &ImageRef,
        project_dir: &Path,
        progress: ProgressFn,
    ) -> Result<Image, ImageError> {
        if let ImageRef::Registry(_) = image {
            let store = self.store.clone();
            let key = image.key(project_dir);
            let project = project_dir.to_owned();
            let stored = tokio::task::spawn_blocking(move || stored_for(&store, &key, &project))
                .await
                .map_err(|_| ImageError::Interrupted {
                    reference: image.to_string(),
                })??;
            if let Some(stored) = stored {
                return Ok(stored);
            }
        }
        Ok(self
            .fetch_and_record(image, project_dir, progress, false)
            .await?
            .image)
    }
}

/// The stored image `key` names, recording `project` as a user of it; `None`
/// when it is not recorded or a blob of it is gone.
fn stored_for(store: &Store, key: &str, project: &Path) -> Result<Option<Image>, StoreError> {
    let Some(entry) = store.lookup(key)? else {
        return Ok(None);
    };
    let image = match store.image(&entry.manifest) {
        Ok(image) => image,
        Err(StoreError::Missing(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    if !entry.projects.contains(project) {
        store.add_project(key, project)?;
    }
    Ok(Some(image))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemon spawns fetches on its runtime: their futures must be Send.
    #[test]
    fn fetch_futures_are_send() {
        fn send<T: Send>(_: &T) {}
        let dir = tempfile::tempdir().expect("tempdir");
        let images = Images::new(
            Store::open(&dir.path().join("s")).expect("store"),
            RegistryClient::new(&UserConfig::default(), Credentials::none()).expect("client"),
        );
        let r = ImageRef::parse("redis:7").expect("reference");
        let fetch = images.fetch(&r, dir.path(), no_progress());
        send(&fetch);
        let ensure = images.ensure(&r, dir.path(), no_progress());
        send(&ensure);
    }

    #[test]
    fn progress_is_reported_at_start_steps_and_end() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        let f: ProgressFn = Arc::new(move |p: &Progress| s.lock().unwrap().push(p.done));
        let d = Digest::of(b"layer");
        let total = 10 << 20;
        let mut p = LayerProgress::start(&f, &d, 0, 1, total);
        for done in (0..=total).step_by(4096) {
            p.update(done);
        }
        p.update(total);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.first(), Some(&0));
        assert_eq!(seen.last(), Some(&total));
        assert!(
            (100..=102).contains(&seen.len()),
            "about every 1%: {}",
            seen.len()
        );
    }
}
