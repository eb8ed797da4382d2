//! Where output lines go: the [`LogSink`] seam between the pipes the
//! supervisor reads and the places lines end up (the terminal in `locald up`,
//! journald, live D-Bus subscribers).
//!
//! A sink is awaited for every line from the reader task of that one pipe, so
//! a slow sink slows only the service that writes to it: its pipe fills and
//! the service blocks in `write(2)`, as it would under systemd. Sinks must not
//! buffer without bound.

use std::sync::Arc;

use crate::event::{BuildRecord, LogLine};
use crate::priority::Priority;

/// A service's settings that sinks may care about, given before its first
/// line ([`LogSink::configure_service`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServiceLogOptions {
    /// Priority of stderr lines without a `<N>` prefix (info unless the
    /// service says otherwise, as systemd does).
    pub stderr_priority: Priority,
}

/// A boxed future, for object-safe async sinks (futures' own alias).
pub use futures_util::future::BoxFuture;

/// Receives output lines.
pub trait LogSink: Send + Sync + 'static {
    /// Takes one line. Returning applies backpressure to the writer's pipe.
    fn write<'a>(&'a self, line: &'a LogLine) -> BoxFuture<'a, ()>;

    /// Whether anything would be done with a line of this service now. A
    /// source that must work to produce lines (following the journal) asks
    /// before it does; a pipe reader does not. Default: yes.
    fn is_listening(&self, project: &str, service: &str) -> bool {
        let _ = (project, service);
        true
    }

    /// A service's settings, given before its first line and again after a
    /// reload changed them. Sinks that care (the journal's stderr priority)
    /// keep what they need.
    fn configure_service(&self, project: &str, service: &str, options: &ServiceLogOptions) {
        let _ = (project, service, options);
    }

    /// A build of `service` was decided on (runs, or is up to date): the
    /// record carries the decision and the source hash. Sinks that keep
    /// history (journald) record it; others ignore it.
    fn build_started<'a>(
        &'a self,
        project: &'a str,
        service: &'a str,
        record: &'a BuildRecord,
    ) -> BoxFuture<'a, ()> {
        let _ = (project, service, record);
        Box::pin(std::future::ready(()))
    }

    /// A build ended; see [`LogSink::build_started`].
    fn build_finished<'a>(
        &'a self,
        project: &'a str,
        service: &'a str,
        record: &'a BuildRecord,
    ) -> BoxFuture<'a, ()> {
        let _ = (project, service, record);
        Box::pin(std::future::ready(()))
    }
}

/// Sends each line to several sinks, in order.
#[derive(Clone, Default)]
pub struct Fanout {
    sinks: Vec<Arc<dyn LogSink>>,
}

impl Fanout {
    /// No sinks: lines are dropped (used in tests that do not care).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a sink.
    pub fn with(mut self, sink: Arc<dyn LogSink>) -> Self {
        self.sinks.push(sink);
        self
    }
}

impl LogSink for Fanout {
    fn write<'a>(&'a self, line: &'a LogLine) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            for s in &self.sinks {
                s.write(line).await;
            }
        })
    }

    fn is_listening(&self, project: &str, service: &str) -> bool {
        self.sinks.iter().any(|s| s.is_listening(project, service))
    }

    fn configure_service(&self, project: &str, service: &str, options: &ServiceLogOptions) {
        for s in &self.sinks {
            s.configure_service(project, service, options);
        }
    }

    fn build_started<'a>(
        &'a self,
        project: &'a str,
        service: &'a str,
        record: &'a BuildRecord,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            for s in &self.sinks {
                s.build_started(project, service, record).await;
            }
        })
    }

    fn build_finished<'a>(
        &'a self,
        project: &'a str,
        service: &'a str,
        record: &'a BuildRecord,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            for s in &self.sinks {
                s.build_finished(project, service, record).await;
            }
        })
    }
}
