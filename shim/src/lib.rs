//! `locald-shim`: the setuid-root helper that runs an OCI bundle with runc
//! only after proving the bundle gives the caller nothing an unprivileged
//! user namespace would not. See `shim/SECURITY.md` for the threat model.
//!
//! Flow of a `run`: [`harden`] puts the process in a known state;
//! [`cli`] parses the command; [`caller`] gathers facts about the caller;
//! [`bundle`] reads `config.json` as the caller; [`policy`] (pure) judges it;
//! [`bundle`] stages the checked rootfs and mounts in a root-owned directory;
//! [`runc`] runs runc from a fixed path on the sanitized config.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod bundle;
pub mod caller;
pub mod cli;
pub mod error;
pub mod harden;
pub mod id;
pub mod policy;
pub mod runc;
pub mod sys;
