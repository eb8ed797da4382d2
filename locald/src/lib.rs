//! locald: a local-development service manager that lives in the user's
//! systemd session.
//!
//! This crate is the engine. [`config`] reads `locald.toml`; the supervisor
//! runs a project's services through their lifecycle and reports [`event`]s;
//! [`output`] carries their output lines to sinks. The binary `locald` is a
//! thin edge over it (`locald up` in the foreground, `locald daemon` on the
//! session bus). See `ARCHITECTURE.md` at the repository root for the map.
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod build;
pub mod compose;
pub mod config;
pub mod daemon;
pub mod dbus;
pub mod engine;
pub use locald_core::event;
pub mod foreground;
pub use locald_core::fsutil;
pub use locald_image as image;
pub mod journal;
pub use locald_core::listeners;
pub use locald_core::output;
pub use locald_core::paths;
pub mod ports;
pub mod proxy;
pub mod runtime;
pub mod shim_client;
pub mod state;
pub mod supervisor;
pub use locald_core::term;
pub use locald_image::user_config;
mod watch;

pub use locald_core::{error_chain, lock};
