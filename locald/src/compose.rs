//! The one composition step the daemon and `locald up` share: what both
//! put around the engine before they start it (the journal sink when
//! journald is there, the open-file limit), so neither edge imports the
//! other.

use std::sync::Arc;

use crate::output::LogSink;

/// The journal sink when journald is there (`locald up` and `locald build`
/// write to the journal as the daemon does, besides the terminal).
pub fn journal_sinks() -> Vec<Arc<dyn LogSink>> {
    let config = crate::journal::JournalConfig::from_env();
    if config.socket_path.exists() || crate::journal::journal_is_there() {
        vec![Arc::new(crate::journal::JournalSink::new(config))]
    } else {
        Vec::new()
    }
}

/// Raises the soft limit on open files to the hard limit: every service
/// costs the daemon a few descriptors (two pipes, a notify socket, a pidfd),
/// and systemd's default soft limit of 1024 would stop a large session at
/// a few hundred services with EMFILE. Services get the limit they would
/// have had (std resets nothing, so they inherit the raised soft limit,
/// like services under systemd with `LimitNOFILE=`).
pub fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!("cannot raise the open-file limit from {soft} to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot read the open-file limit: {e}"),
    }
}
