//! The vocabulary every part of locald shares, and clients too: what the
//! engine reports ([`event`]), where output lines go ([`output`]), how files
//! another user may have planted are opened ([`fsutil`]), who listens on a
//! local port ([`listeners`]), how the terminal shows lines and states
//! ([`term`]), unit names ([`units`]), journal entries turned back into
//! lines ([`journal_entry`]), where a project is and what it is called
//! ([`project`]), and escaping text from outside ([`text`]).
//!
//! Nothing here runs services: the engine (`locald`) and the clients
//! (`locald-ctl`) both stand on this crate, and it stands on none of them.
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod event;
pub mod fsutil;
pub mod ids;
pub mod journal_entry;
pub mod listeners;
pub mod output;
pub mod paths;
pub mod pipe;
pub mod priority;
pub mod program;
pub mod project;
pub mod task;
pub mod term;
pub mod text;
pub mod units;
pub mod urls;
pub mod workload;

/// Locks a std mutex, recovering the data if a panicking thread poisoned
/// it: every mutex in locald guards plain values that are whole after any
/// single write, so a panic elsewhere must not take the daemon down too.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
