//! `$NOTIFY_SOCKET` for services: the sd_notify protocol, so a service written
//! for systemd (`READY=1`, `STATUS=…`, `WATCHDOG=1`) works under locald too.
//!
//! Each service gets its own datagram socket, so every message is attributed
//! to the service whose socket it arrived on.

use std::path::{Path, PathBuf};

use tokio::net::UnixDatagram;

/// One parsed notify message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// `READY=1`.
    Ready,
    /// `STATUS=text`.
    Status(String),
    /// `WATCHDOG=1`.
    Watchdog,
    /// `STOPPING=1`.
    Stopping,
    /// `MAINPID=n`.
    MainPid(u32),
}

/// Parses one datagram (newline-separated `KEY=VALUE` assignments).
pub fn parse(datagram: &[u8]) -> Vec<Notice> {
    String::from_utf8_lossy(datagram)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            match (k, v) {
                ("READY", "1") => Some(Notice::Ready),
                ("STATUS", s) => Some(Notice::Status(s.to_owned())),
                ("WATCHDOG", "1") => Some(Notice::Watchdog),
                ("STOPPING", "1") => Some(Notice::Stopping),
                ("MAINPID", p) => p.parse().ok().map(Notice::MainPid),
                _ => None,
            }
        })
        .collect()
}

/// A bound notify socket, removed when dropped.
pub struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    /// Binds a fresh socket at `path` (replacing a stale one).
    pub fn bind(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            crate::fsutil::sub_dir(dir)?;
        }
        let _ = std::fs::remove_file(path);
        let sock = UnixDatagram::bind(path)?;
        Ok(Self {
            sock,
            path: path.to_owned(),
        })
    }

    /// Its path, for `$NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the next message. Cancel-safe.
    pub async fn recv(&self) -> Vec<Notice> {
        let mut buf = vec![0u8; 4096];
        match self.sock.recv(&mut buf).await {
            Ok(n) => parse(&buf[..n]),
            Err(_) => Vec::new(),
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        // The directory stays: a container that outlives this daemon (a
        // systemd unit, adopted by the next one) has it bind-mounted, and
        // sees the next daemon's socket only if it is made in this same
        // directory. An empty directory per service in the runtime dir
        // costs nothing and goes at logout.
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_assignments() {
        assert_eq!(
            parse(b"READY=1\nSTATUS=warming up\nWATCHDOG=1\nBOGUS\nMAINPID=42"),
            vec![
                Notice::Ready,
                Notice::Status("warming up".into()),
                Notice::Watchdog,
                Notice::MainPid(42)
            ]
        );
    }
}
