//! Container images: what locald pulls, stores and unpacks to run image
//! services through the shim. [`unpack`] turns an image's layer blobs into a
//! rootfs directory, safely.
pub mod unpack;
