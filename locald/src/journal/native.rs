//! One connection to journald's native socket (`SOCK_DGRAM`), non-blocking.
//!
//! A datagram carries one entry. When journald's receive queue is full the
//! kernel says `EAGAIN` and [`Connection::send`] waits for the socket to
//! become writable again: that wait is the backpressure that reaches the
//! service's pipe. An entry too big for one datagram (`EMSGSIZE`, or
//! `ENOBUFS` on some kernels) is written to a sealed memfd whose descriptor
//! is passed with `SCM_RIGHTS`, as `sd_journal_send()` does.
//!
//! The socket is `connect()`ed rather than used with `sendto()`: only a
//! connected datagram socket reports "not writable" while the peer's queue is
//! full, so epoll can wake us when there is room instead of spinning.

use std::fs::File;
use std::io::{self, IoSlice, Write as _};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use nix::sys::socket::{sendmsg, setsockopt, sockopt, ControlMessage, MsgFlags, UnixAddr};
use tokio::io::Interest;
use tokio::net::UnixDatagram;

/// The send buffer we ask for, as sd-journal does (8 MiB): it bounds what
/// the kernel holds for us and lets bursts through without a wakeup per
/// entry. Kernel memory, not ours, and bounded by this number.
const SNDBUF: usize = 8 * 1024 * 1024;

/// How an entry went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// In the datagram itself.
    Datagram,
    /// Through a sealed memfd.
    Memfd,
}

/// A connected native-protocol socket.
#[derive(Debug)]
pub(crate) struct Connection {
    sock: UnixDatagram,
}

impl Connection {
    /// Connects to journald's socket at `path`. Must run inside a Tokio
    /// runtime.
    pub(crate) fn connect(path: &Path) -> io::Result<Self> {
        let sock = std::os::unix::net::UnixDatagram::unbound()?;
        sock.connect(path)?;
        sock.set_nonblocking(true)?;
        // The forced variant needs CAP_NET_ADMIN; without it the kernel caps
        // the plain one at wmem_max. Either is fine, only slower.
        if setsockopt(&sock, sockopt::SndBufForce, &SNDBUF).is_err() {
            let _ = setsockopt(&sock, sockopt::SndBuf, &SNDBUF);
        }
        Ok(Self {
            sock: UnixDatagram::from_std(sock)?,
        })
    }

    /// Sends one encoded entry, waiting while journald's queue is full.
    /// Says whether it went through a memfd.
    pub(crate) async fn send(&self, entry: &[u8]) -> io::Result<Via> {
        match self.sock.send(entry).await {
            Ok(n) if n == entry.len() => Ok(Via::Datagram),
            Ok(n) => Err(io::Error::other(format!(
                "short datagram write: {n} of {} bytes",
                entry.len()
            ))),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMSGSIZE | libc::ENOBUFS)) => {
                self.send_memfd(entry).await.map(|()| Via::Memfd)
            }
            Err(e) => Err(e),
        }
    }

    /// Sends an entry too large for a datagram through a sealed memfd.
    async fn send_memfd(&self, entry: &[u8]) -> io::Result<()> {
        let memfd = sealed_memfd(entry)?;
        let fds = [memfd.as_raw_fd()];
        self.sock
            .async_io(Interest::WRITABLE, || {
                let cmsgs = [ControlMessage::ScmRights(&fds)];
                let empty: [IoSlice<'_>; 0] = [];
                sendmsg::<UnixAddr>(
                    self.sock.as_raw_fd(),
                    &empty,
                    &cmsgs,
                    MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map(drop)
                .map_err(io::Error::from)
            })
            .await
    }
}

/// A memfd holding `data`, sealed against any change: journald only accepts
/// descriptors it can trust not to change under it.
fn sealed_memfd(data: &[u8]) -> io::Result<OwnedFd> {
    let fd = memfd_create(
        c"journal-data",
        MemFdCreateFlag::MFD_ALLOW_SEALING | MemFdCreateFlag::MFD_CLOEXEC,
    )?;
    let mut file = File::from(fd);
    file.write_all(data)?;
    fcntl(
        file.as_raw_fd(),
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_WRITE
                | SealFlag::F_SEAL_SEAL,
        ),
    )?;
    Ok(OwnedFd::from(file))
}

/// Whether an error means journald is not there (rather than that this one
/// entry was refused).
pub(crate) fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ENOENT
                | libc::ECONNREFUSED
                | libc::ENOTCONN
                | libc::ECONNRESET
                | libc::EPIPE
                | libc::ENOTDIR
                | libc::EACCES
        )
    )
}
