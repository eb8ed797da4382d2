//! The journald writer: every output line of a build or a service becomes a
//! journal entry with fields that say whose it is (`LOCALD_PROJECT`,
//! `LOCALD_SERVICE`, `LOCALD_PHASE`, `LOCALD_STREAM`, ...), written over
//! journald's native protocol.
//!
//! [`JournalSink`] is a [`LogSink`]: the supervisor's reader task of each
//! pipe awaits it once per line. Nothing is queued here. A line is encoded
//! into one buffer and sent; when journald's queue is full the send waits
//! for room, so the pipe of the service that writes too fast fills and that
//! service blocks in `write(2)`, as under systemd. Writers take turns in
//! arrival order (a FIFO lock around the socket), so a flooding service gets
//! one entry in for each waiting line of a quiet one and cannot starve it.
//! Memory is bounded: entries are encoded one at a time into a single
//! buffer (at most `line_max` plus the fields, about 52 KiB by default,
//! whatever the number of services); the lines themselves belong to the
//! callers, one per waiting pipe.
//!
//! If journald is not there, lines are counted as undelivered rather than
//! waited for (the service keeps running), the outage is reported once on
//! stderr, and the connection is retried every `retry_interval`.
//!
//! [`encode`] holds the pure parts (fields, priorities, the `<N>` prefix,
//! splitting); [`init_daemon_logging`] sets up the daemon's own log. The
//! fields are documented for users in `docs/logging.md`.

mod daemon_log;
pub mod encode;
pub use locald_core::journal_entry as entry;
pub mod follow;
mod native;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::event::{BuildRecord, BuildResult, LogLine, Phase, Stream};
pub use crate::output::ServiceLogOptions;
use crate::output::{BoxFuture, LogSink};

pub use daemon_log::{init_daemon_logging, journal_is_there, LogOutput, LoggingError};
pub use encode::{ParsePriorityError, Priority, DEFAULT_LINE_MAX, LINE_BREAK_FIELD};

use encode::{encode_entry, split_line, strip_level_prefix, LineBreak};
use native::Connection;

/// Where journald listens for native-protocol entries.
pub const DEFAULT_SOCKET: &str = "/run/systemd/journal/socket";

/// Environment variable that overrides [`DEFAULT_SOCKET`] in
/// [`JournalConfig::from_env`]; tests point it at a private journald.
pub const SOCKET_ENV: &str = "LOCALD_JOURNAL_SOCKET";

/// How the journal writer connects and splits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalConfig {
    /// journald's native socket.
    pub socket_path: PathBuf,
    /// Longest piece of a line in one entry; longer lines are split and
    /// marked with `LOCALD_LINE_BREAK=line-max`.
    pub line_max: usize,
    /// How long to wait before trying to reach journald again after it was
    /// found gone.
    pub retry_interval: Duration,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            socket_path: PathBuf::from(DEFAULT_SOCKET),
            line_max: DEFAULT_LINE_MAX,
            retry_interval: Duration::from_secs(5),
        }
    }
}

impl JournalConfig {
    /// The defaults, with the socket taken from `$LOCALD_JOURNAL_SOCKET`
    /// when that is set.
    pub fn from_env() -> Self {
        let mut c = Self::default();
        if let Some(p) = std::env::var_os(SOCKET_ENV).filter(|p| !p.is_empty()) {
            c.socket_path = PathBuf::from(p);
        }
        c
    }
}

/// What the writer did so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JournalStats {
    /// Lines handed to the writer.
    pub lines: u64,
    /// Journal entries sent (a split line makes several).
    pub entries: u64,
    /// Lines that were split because they were longer than `line_max`.
    pub split_lines: u64,
    /// Lines not (or not completely) written because journald was gone or
    /// refused them.
    pub undelivered_lines: u64,
    /// Times journald was found gone.
    pub outages: u64,
    /// Entries too big for a datagram, sent through a memfd.
    pub memfd_entries: u64,
}

/// Receives the writer's notices (journald gone, back, refusing). The
/// default prints them on stderr; the daemon's own log may itself be going
/// to the journal that is gone.
pub type Notifier = Arc<dyn Fn(&str) + Send + Sync>;

/// The journald [`LogSink`]. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct JournalSink {
    inner: Arc<Inner>,
}

struct Inner {
    config: JournalConfig,
    /// The socket, behind a fair (FIFO) lock: writers take turns in the
    /// order they arrived, whatever their rate.
    link: tokio::sync::Mutex<Writer>,
    services: RwLock<ServiceOptionsMap>,
    lines: AtomicU64,
    entries: AtomicU64,
    split_lines: AtomicU64,
    undelivered: AtomicU64,
    outages: AtomicU64,
    memfd_entries: AtomicU64,
    notify: Notifier,
}

/// The socket and the one buffer entries are encoded in, taken together.
struct Writer {
    link: Link,
    buf: Vec<u8>,
}

/// The encode buffer keeps up to this capacity between lines: an entry of a
/// full default `LineMax` piece and its fields.
const KEPT_BUFFER: usize = DEFAULT_LINE_MAX + 4096;

/// Options by project, then service.
type ServiceOptionsMap = HashMap<Arc<str>, HashMap<Arc<str>, ServiceLogOptions>>;

enum Link {
    Up(Connection),
    Down {
        /// Do not try to connect before this.
        retry_at: Instant,
        /// Set once the outage was reported: the undelivered count when it
        /// started, for the report when journald is back.
        reported: Option<u64>,
    },
}

/// What happened to one entry.
enum Sent {
    Yes,
    /// Not sent; the rest of the line is not sent either.
    No,
}

impl fmt::Debug for JournalSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JournalSink")
            .field("config", &self.inner.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl JournalSink {
    /// A writer that reports on stderr. It connects on the first line, so
    /// it can be made before journald is up (and outside a Tokio runtime).
    pub fn new(config: JournalConfig) -> Self {
        Self::with_notifier(config, Arc::new(|msg: &str| eprintln!("locald: {msg}")))
    }

    /// A writer that hands its notices to `notify`.
    pub fn with_notifier(config: JournalConfig, notify: Notifier) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                link: tokio::sync::Mutex::new(Writer {
                    link: Link::Down {
                        retry_at: Instant::now(),
                        reported: None,
                    },
                    buf: Vec::with_capacity(KEPT_BUFFER),
                }),
                services: RwLock::new(HashMap::new()),
                lines: AtomicU64::new(0),
                entries: AtomicU64::new(0),
                split_lines: AtomicU64::new(0),
                undelivered: AtomicU64::new(0),
                outages: AtomicU64::new(0),
                memfd_entries: AtomicU64::new(0),
                notify,
            }),
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &JournalConfig {
        &self.inner.config
    }

    /// Sets a service's options (replacing earlier ones).
    pub fn set_service_options(&self, project: &str, service: &str, options: ServiceLogOptions) {
        let mut map = self
            .inner
            .services
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        map.entry(Arc::from(project))
            .or_default()
            .insert(Arc::from(service), options);
    }

    /// Forgets a service's options (it was removed).
    pub fn remove_service(&self, project: &str, service: &str) {
        let mut map = self
            .inner
            .services
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = map.get_mut(project) {
            p.remove(service);
            if p.is_empty() {
                map.remove(project);
            }
        }
    }

    /// Counters since the writer was made.
    pub fn stats(&self) -> JournalStats {
        let i = &self.inner;
        JournalStats {
            lines: i.lines.load(Ordering::Relaxed),
            entries: i.entries.load(Ordering::Relaxed),
            split_lines: i.split_lines.load(Ordering::Relaxed),
            undelivered_lines: i.undelivered.load(Ordering::Relaxed),
            outages: i.outages.load(Ordering::Relaxed),
            memfd_entries: i.memfd_entries.load(Ordering::Relaxed),
        }
    }

    fn options(&self, line: &LogLine) -> ServiceLogOptions {
        let map = self
            .inner
            .services
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        map.get(&*line.project)
            .and_then(|p| p.get(&*line.service))
            .copied()
            .unwrap_or_default()
    }

    /// Writes one line as one or more entries. Waits while journald is
    /// busy; returns at once (counting the line as undelivered) while it is
    /// gone.
    pub async fn write_line(&self, line: &LogLine) {
        let inner = &*self.inner;
        inner.lines.fetch_add(1, Ordering::Relaxed);
        let (prefix, body) = strip_level_prefix(&line.line);
        let priority = prefix.unwrap_or(match line.stream {
            Stream::Stdout => Priority::INFO,
            Stream::Stderr => self.options(line).stderr_priority,
        });
        let line_max = inner.config.line_max;
        if body.len() > line_max {
            inner.split_lines.fetch_add(1, Ordering::Relaxed);
        }
        let mut pieces = split_line(body, line_max).peekable();

        // Held for the whole line so that the pieces of a split line are
        // consecutive in the journal.
        let mut guard = inner.link.lock().await;
        let Writer { link, buf } = &mut *guard;
        while let Some(piece) = pieces.next() {
            let brk = if pieces.peek().is_some() || line.continues {
                LineBreak::LineMax
            } else if line.partial {
                LineBreak::Partial
            } else {
                LineBreak::End
            };
            encode_entry(buf, line, piece, priority, brk);
            let sent = self.send_entry(link, buf, line).await;
            if buf.capacity() > KEPT_BUFFER {
                // A long line (with a raised line_max) must not pin its
                // buffer for the life of the daemon.
                *buf = Vec::with_capacity(KEPT_BUFFER);
            }
            match sent {
                Sent::Yes => {
                    inner.entries.fetch_add(1, Ordering::Relaxed);
                }
                Sent::No => {
                    inner.undelivered.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }

    async fn send_entry(&self, link: &mut Link, entry: &[u8], line: &LogLine) -> Sent {
        let inner = &*self.inner;
        // Set once this call has tried to connect, so that a connection
        // that fails again at once counts as an outage instead of looping.
        let mut connected_now = false;
        loop {
            match link {
                Link::Up(conn) => match conn.send(entry).await {
                    Ok(via) => {
                        if via == native::Via::Memfd {
                            inner.memfd_entries.fetch_add(1, Ordering::Relaxed);
                        }
                        return Sent::Yes;
                    }
                    Err(e) if native::is_gone(&e) && connected_now => {
                        self.outage(link, &e);
                        return Sent::No;
                    }
                    Err(e) if native::is_gone(&e) => {
                        // journald may just have been restarted behind the
                        // same path: reconnect at once before calling it gone.
                        *link = Link::Down {
                            retry_at: Instant::now(),
                            reported: None,
                        };
                    }
                    Err(e) => {
                        (inner.notify)(&format!(
                            "journald at {} refused a line of {}/{} ({} bytes): {e}; the line is counted as undelivered",
                            inner.config.socket_path.display(),
                            line.project,
                            line.service,
                            line.line.len(),
                        ));
                        return Sent::No;
                    }
                },
                Link::Down { retry_at, reported } => {
                    if Instant::now() < *retry_at || connected_now {
                        return Sent::No;
                    }
                    connected_now = true;
                    match Connection::connect(&inner.config.socket_path) {
                        Ok(conn) => {
                            if let Some(start) = *reported {
                                let lost = inner.undelivered.load(Ordering::Relaxed) - start;
                                (inner.notify)(&format!(
                                    "journald is reachable again at {}; {lost} lines could not be written to the journal meanwhile",
                                    inner.config.socket_path.display(),
                                ));
                            }
                            *link = Link::Up(conn);
                        }
                        Err(e) => {
                            self.outage(link, &e);
                            return Sent::No;
                        }
                    }
                }
            }
        }
    }

    /// Marks journald gone and says so, once per outage.
    fn outage(&self, link: &mut Link, e: &std::io::Error) {
        let inner = &*self.inner;
        let retry_at = Instant::now() + inner.config.retry_interval;
        if let Link::Down {
            reported: Some(start),
            ..
        } = *link
        {
            *link = Link::Down {
                retry_at,
                reported: Some(start),
            };
            return;
        }
        inner.outages.fetch_add(1, Ordering::Relaxed);
        (inner.notify)(&format!(
            "journald is not reachable at {}: {e}; service output is not written to the journal until it is back (lines are counted; retrying every {:?})",
            inner.config.socket_path.display(),
            inner.config.retry_interval,
        ));
        *link = Link::Down {
            retry_at,
            reported: Some(inner.undelivered.load(Ordering::Relaxed)),
        };
    }
}

impl JournalSink {
    /// Records a build decision or result as one entry of the build's
    /// phase, with the decision, result and source hash as fields of their
    /// own (`LOCALD_BUILD_DECISION`, `LOCALD_BUILD_RESULT`,
    /// `LOCALD_SOURCE_HASH`).
    async fn write_build(&self, project: &str, service: &str, record: &BuildRecord, done: bool) {
        let message = match (done, record.result) {
            (false, _) => format!("build {}: {}", record.build_id, record.reason),
            (true, BuildResult::Failed) => {
                format!("build {} failed: {}", record.build_id, record.reason)
            }
            (true, r) => format!("build {} {}", record.build_id, r.as_str()),
        };
        let priority = if record.result == BuildResult::Failed {
            Priority::ERR
        } else {
            Priority::INFO
        };
        // Identifies the entry in error messages only.
        let ident = LogLine {
            project: project.into(),
            service: service.into(),
            phase: Phase::Build,
            stream: Stream::Stdout,
            pid: None,
            build_id: Some(record.build_id.as_str().into()),
            image: None,
            line: Vec::new(),
            partial: false,
            continues: false,
        };
        let mut guard = self.inner.link.lock().await;
        let Writer { link, buf } = &mut *guard;
        buf.clear();
        encode::put_field(buf, "MESSAGE", message.as_bytes());
        encode::put_field(buf, "PRIORITY", priority.value().to_string().as_bytes());
        encode::put_field(buf, "SYSLOG_IDENTIFIER", service.as_bytes());
        encode::put_field(buf, "LOCALD_PROJECT", project.as_bytes());
        encode::put_field(buf, "LOCALD_SERVICE", service.as_bytes());
        encode::put_field(buf, "LOCALD_PHASE", b"build");
        encode::put_field(buf, "LOCALD_BUILD_ID", record.build_id.as_bytes());
        encode::put_field(buf, "LOCALD_BUILD_DECISION", record.reason.as_bytes());
        encode::put_field(
            buf,
            "LOCALD_BUILD_RESULT",
            record.result.as_str().as_bytes(),
        );
        if let Some(h) = &record.source_hash {
            encode::put_field(buf, "LOCALD_SOURCE_HASH", h.as_bytes());
        }
        let _ = self.send_entry(link, buf, &ident).await;
    }
}

impl LogSink for JournalSink {
    fn write<'a>(&'a self, line: &'a LogLine) -> BoxFuture<'a, ()> {
        Box::pin(self.write_line(line))
    }

    fn configure_service(&self, project: &str, service: &str, options: &ServiceLogOptions) {
        self.set_service_options(project, service, *options);
    }

    fn build_started<'a>(
        &'a self,
        project: &'a str,
        service: &'a str,
        record: &'a BuildRecord,
    ) -> BoxFuture<'a, ()> {
        Box::pin(self.write_build(project, service, record, false))
    }

    fn build_finished<'a>(
        &'a self,
        project: &'a str,
        service: &'a str,
        record: &'a BuildRecord,
    ) -> BoxFuture<'a, ()> {
        Box::pin(self.write_build(project, service, record, true))
    }
}
