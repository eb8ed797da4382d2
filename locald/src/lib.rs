//! locald: a local-development service manager that lives in the user's
//! systemd session.
//!
//! This crate is the engine. [`config`] reads `locald.toml`; the supervisor
//! runs a project's services through their lifecycle and reports [`event`]s;
//! [`output`] carries their output lines to sinks. The binary `locald` is a
//! thin edge over it (`locald up` in the foreground, `locald daemon` on the
//! session bus). See `ARCHITECTURE.md` at the repository root for the map.
#![deny(missing_docs)]

pub mod build;
pub mod config;
pub mod daemon;
pub mod dbus;
pub mod engine;
pub mod event;
pub mod foreground;
pub mod fsutil;
pub mod image;
pub mod journal;
pub mod listeners;
pub mod output;
pub mod ports;
pub mod proxy;
pub mod runtime;
pub mod shim_client;
pub mod state;
pub mod supervisor;
pub mod term;
pub mod user_config;
mod watch;

/// Locks a std mutex, recovering the data if a panicking thread poisoned
/// it: every mutex in locald guards plain values that are whole after any
/// single write, so a panic elsewhere must not take the daemon down too.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An error and its sources on one line (`outer: inner: innermost`), as
/// `anyhow`'s `{:#}` prints them: the one formatter for reasons shown to a
/// user or sent over the bus.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
