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
//! - [`manifest`] holds what every source reads: media types, platform
//!   selection, the checks that a manifest is a runnable image.
//! - [`digest`] is the content digest every blob is named and checked by.
//!
//! Unpacking layers into a root file system (`image::unpack`) lives beside
//! these modules and reads [`LayerRef::blob_path`]; it is not part of
//! fetching.

pub mod digest;
pub mod manifest;
pub mod reference;
pub mod store;
// `pub mod unpack;` (layers → root file system) is added beside these by
// the unpacking work; nothing here depends on it.

pub use digest::Digest;
pub use reference::{ImageRef, ReferenceError, RegistryRef};
pub use store::{Image, LayerRef, Store, StoreError};
