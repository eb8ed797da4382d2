//! Live output lines on the bus: a [`LogSink`] that sends a service's
//! `LogLine` signal (run output, and build output with phase `build`) to each
//! client subscribed to that service, and to nobody else.
//!
//! Each signal is unicast: its destination is the subscriber's unique name,
//! so the bus delivers it to that connection only. A broadcast would reach
//! every connection with a matching rule, including another user's on a bus
//! that admits other users, and service output carries secrets. Clients still
//! receive it through their usual match rule (zbus's `receive_log_line`,
//! GDBus subscriptions, jeepney filters): a match rule without a destination
//! matches a signal addressed to its connection.
//!
//! The daemon puts this sink in a `Fanout` beside the journal sink. With no
//! subscriber, a line costs one atomic load, so a flooding service is not
//! slowed by the bus nobody reads. A subscription belongs to the sender's
//! unique name and ends with `UnsubscribeLogs` or when the name leaves the bus.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use zbus::Connection;

use locald_api::{service_path, SERVICE_INTERFACE};

use super::lock;
use crate::event::LogLine;
use crate::output::{BoxFuture, LogSink};

/// project → service → subscriber unique name → number of subscriptions.
type Subscribers = HashMap<String, HashMap<String, HashMap<String, u32>>>;

/// Sends `LogLine` signals to the subscribers of each service.
#[derive(Default)]
pub struct DbusLogSink {
    conn: OnceLock<Connection>,
    subscribers: Mutex<Subscribers>,
    /// Total subscriptions, read without the lock on every line.
    count: AtomicUsize,
}

impl DbusLogSink {
    /// A sink with no connection yet; lines are dropped until [`attach`](Self::attach).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the connection to emit on. The engine needs its sink before the
    /// bus connection exists, hence the late binding. Later calls are ignored.
    pub fn attach(&self, conn: Connection) {
        let _ = self.conn.set(conn);
    }

    /// Adds one subscription of `sender` to a service's lines.
    pub fn subscribe(&self, sender: &str, project: &str, service: &str) {
        let mut subs = lock(&self.subscribers);
        *subs
            .entry(project.to_owned())
            .or_default()
            .entry(service.to_owned())
            .or_default()
            .entry(sender.to_owned())
            .or_default() += 1;
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Removes every subscription of `sender` to a service; returns whether it had one.
    pub fn unsubscribe(&self, sender: &str, project: &str, service: &str) -> bool {
        let mut subs = lock(&self.subscribers);
        let Some(services) = subs.get_mut(project) else {
            return false;
        };
        let Some(senders) = services.get_mut(service) else {
            return false;
        };
        let removed = senders.remove(sender);
        if senders.is_empty() {
            services.remove(service);
        }
        if services.is_empty() {
            subs.remove(project);
        }
        match removed {
            Some(n) => {
                self.count.fetch_sub(n as usize, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Drops every subscription of a connection that left the bus.
    pub fn forget_sender(&self, sender: &str) {
        let mut subs = lock(&self.subscribers);
        let mut dropped = 0usize;
        for services in subs.values_mut() {
            for senders in services.values_mut() {
                dropped += senders.remove(sender).map_or(0, |n| n as usize);
            }
            services.retain(|_, s| !s.is_empty());
        }
        subs.retain(|_, s| !s.is_empty());
        self.count.fetch_sub(dropped, Ordering::Relaxed);
    }

    /// Whether anybody listens to a service's lines.
    pub fn is_subscribed(&self, project: &str, service: &str) -> bool {
        !self.subscribers_of(project, service).is_empty()
    }

    /// The unique names subscribed to a service's lines, sorted.
    fn subscribers_of(&self, project: &str, service: &str) -> Vec<String> {
        if self.count.load(Ordering::Relaxed) == 0 {
            return Vec::new();
        }
        let mut names: Vec<String> = lock(&self.subscribers)
            .get(project)
            .and_then(|s| s.get(service))
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default();
        names.sort();
        names
    }
}

impl LogSink for DbusLogSink {
    fn is_listening(&self, project: &str, service: &str) -> bool {
        self.is_subscribed(project, service)
    }

    fn write<'a>(&'a self, line: &'a LogLine) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let subscribers = self.subscribers_of(&line.project, &line.service);
            if subscribers.is_empty() {
                return;
            }
            let Some(conn) = self.conn.get() else { return };
            let path = service_path(&line.project, &line.service);
            let body = (
                &*line.service,
                line.phase.as_str(),
                line.stream.as_str(),
                line.line.as_slice(),
            );
            for subscriber in &subscribers {
                // Awaiting each send gives backpressure: a bus that cannot
                // keep up slows only this service's pipe, never drops its
                // journal lines.
                let to = Some(subscriber.as_str());
                if let Err(e) = conn
                    .emit_signal(to, &path, SERVICE_INTERFACE, "LogLine", &body)
                    .await
                {
                    tracing::debug!(subscriber, "cannot send LogLine: {e}");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_count_per_sender() {
        let sink = DbusLogSink::new();
        assert!(!sink.is_subscribed("p", "web"));
        sink.subscribe(":1.1", "p", "web");
        sink.subscribe(":1.1", "p", "web");
        sink.subscribe(":1.2", "p", "web");
        sink.subscribe(":1.2", "p", "db");
        assert!(sink.is_subscribed("p", "web"));
        assert_eq!(sink.subscribers_of("p", "web"), [":1.1", ":1.2"]);
        assert_eq!(sink.subscribers_of("p", "db"), [":1.2"]);
        assert!(sink.unsubscribe(":1.1", "p", "web"));
        assert!(!sink.unsubscribe(":1.1", "p", "web"));
        assert!(sink.is_subscribed("p", "web"));
        sink.forget_sender(":1.2");
        assert!(!sink.is_subscribed("p", "web"));
        assert!(!sink.is_subscribed("p", "db"));
        assert_eq!(sink.count.load(Ordering::Relaxed), 0);
    }
}
