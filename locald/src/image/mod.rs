//! Container images: where they come from and where they are kept.
//!
//! A service with `image = "…"` runs as a container. Before the runtime can
//! unpack and run it, the image must be here, verified, once for every
//! project of the user. This module gets it here:
//!
//! - [`reference`] parses what the user wrote: `redis:7`,
//!   `ghcr.io/org/app@sha256:…`, `oci:./layout:tag`, `oci-archive:f.tar`.
//! - [`digest`] is the content digest every blob is named and checked by.

pub mod digest;
pub mod reference;

pub use digest::Digest;
pub use reference::{ImageRef, ReferenceError, RegistryRef};
