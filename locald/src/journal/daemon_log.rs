//! The daemon's own log (not its services' output): to journald through
//! `tracing-journald` when there is a journal, else to stderr.
//!
//! In the journal the daemon's events carry `SYSLOG_IDENTIFIER=locald` and
//! their tracing fields with a `LOCALD_` prefix, so an event logged with
//! `project = "shop", service = "web"` matches the same
//! `journalctl LOCALD_PROJECT=shop LOCALD_SERVICE=web` as that service's
//! lines.

use std::os::fd::AsRawFd;
use std::path::Path;

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use super::DEFAULT_SOCKET;

/// Where the daemon's own log goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOutput {
    /// The journal when [`journal_is_there`], else stderr.
    Auto,
    /// The journal (stderr if it cannot be reached).
    Journal,
    /// stderr only.
    Stderr,
    /// Both; for `locald up` in a terminal, where the user watches stderr.
    Both,
}

/// The daemon's log could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// `$LOCALD_LOG` is not a valid filter.
    #[error("invalid LOCALD_LOG filter {value:?}")]
    Filter {
        /// The variable's value.
        value: String,
        /// Why it does not parse.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global subscriber was set already.
    #[error("the daemon's logging was set up twice")]
    AlreadySet(#[source] tracing_subscriber::util::TryInitError),
}

/// Whether a journal is there: our stderr is a journal stream (systemd sets
/// `$JOURNAL_STREAM` to its device and inode), or journald's socket exists.
pub fn journal_is_there() -> bool {
    stderr_is_journal_stream() || Path::new(DEFAULT_SOCKET).exists()
}

/// `$JOURNAL_STREAM` is inherited by children whose stderr may point
/// elsewhere, so it only counts when it names our stderr.
fn stderr_is_journal_stream() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match nix::sys::stat::fstat(std::io::stderr().as_raw_fd()) {
        Ok(st) => st.st_dev == dev && st.st_ino == ino,
        Err(_) => false,
    }
}

/// Sets the process-wide tracing subscriber. The filter comes from
/// `$LOCALD_LOG` (e.g. `debug`, `locald=trace`), else `default_filter`.
/// Returns whether events go to the journal.
pub fn init_daemon_logging(output: LogOutput, default_filter: &str) -> Result<bool, LoggingError> {
    let filter = match std::env::var("LOCALD_LOG") {
        Ok(v) if !v.is_empty() => {
            EnvFilter::try_new(&v).map_err(|source| LoggingError::Filter { value: v, source })?
        }
        _ => EnvFilter::new(default_filter),
    };
    let want_journal = match output {
        LogOutput::Auto => journal_is_there(),
        LogOutput::Journal | LogOutput::Both => true,
        LogOutput::Stderr => false,
    };
    let journal = want_journal
        .then(|| {
            tracing_journald::layer().ok().map(|l| {
                // Syslog's meaning of the levels: info is 6, as the docs and
                // `journalctl -p info` expect (tracing-journald's default
                // puts INFO at 5, notice).
                let levels = tracing_journald::PriorityMappings {
                    error: tracing_journald::Priority::Error,
                    warn: tracing_journald::Priority::Warning,
                    info: tracing_journald::Priority::Informational,
                    debug: tracing_journald::Priority::Debug,
                    trace: tracing_journald::Priority::Debug,
                };
                l.with_syslog_identifier("locald".to_owned())
                    .with_field_prefix(Some("LOCALD".to_owned()))
                    .with_priority_mappings(levels)
            })
        })
        .flatten();
    let to_journal = journal.is_some();
    let stderr = (!to_journal || output == LogOutput::Both).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(crate::term::color_for(&std::io::stderr()))
            .with_target(false)
            .boxed()
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(journal)
        .with(stderr)
        .try_init()
        .map_err(LoggingError::AlreadySet)?;
    Ok(to_journal)
}
