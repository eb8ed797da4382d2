//! Start-up hardening, run before anything else looks at its input.
//!
//! A setuid program starts with an environment, fds, signal dispositions, a
//! umask and a cwd chosen by its caller. This module puts all of those into a
//! known state (as bubblewrap's `acquire_privs` and glibc's secure mode do)
//! and decides in which mode the shim runs.

use std::io;

use crate::error::ShimError;
use crate::sys;

/// The fixed `PATH` for everything the shim runs.
pub const SAFE_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// How the shim was started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Installed setuid root and run by an ordinary user: the normal case.
    Setuid {
        /// The real uid of the caller.
        uid: u32,
        /// The real gid of the caller.
        gid: u32,
    },
    /// Run directly by root (tests, administrators): root is its own caller.
    Root,
    /// Not setuid and not root: only `--version`, `--help` and `self-check`
    /// work, so users can diagnose an installation.
    Unprivileged {
        /// The caller's uid.
        uid: u32,
    },
}

/// Put the process into a known state and detect the mode.
///
/// Must run first in `main`, while the process is single-threaded.
pub fn harden() -> Result<Mode, ShimError> {
    reopen_standard_fds()?;
    close_inherited_fds().map_err(fail("close inherited fds"))?;
    reset_environment()?;
    reset_signals();
    // Files the shim creates get exactly the modes it asks for.
    // SAFETY: umask only changes this process's file-creation mask.
    unsafe { libc::umask(0o022) };
    forbid_inspection_and_privilege_gain()?;
    detect_mode()
}

/// Turn an `io::Error` from hardening step `what` into the shim's error, so
/// a failure names the step that could not put the process in a known state.
fn fail(what: &'static str) -> impl Fn(io::Error) -> ShimError {
    move |e: io::Error| ShimError::Harden { what, source: e }
}

/// Make sure fds 0, 1 and 2 are open (on `/dev/null` if the caller closed
/// them): otherwise the first file the shim opens becomes its stderr and
/// error messages land in it.
fn reopen_standard_fds() -> Result<(), ShimError> {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries the fd table.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            let null = sys::openat(None, "/dev/null".as_ref(), libc::O_RDWR)
                .map_err(fail("open /dev/null"))?;
            let raw = std::os::fd::AsRawFd::as_raw_fd(&null);
            let ok = if raw == fd {
                // open() took the lowest free fd, which is this one: keep it
                // open past `null`'s drop and across exec.
                let raw = std::os::fd::IntoRawFd::into_raw_fd(null);
                // SAFETY: clearing FD_CLOEXEC on an fd this process owns.
                unsafe { libc::fcntl(raw, libc::F_SETFD, 0) >= 0 }
            } else {
                // SAFETY: dup2 onto a closed standard fd; FD_CLOEXEC is not copied.
                unsafe { libc::dup2(raw, fd) >= 0 }
            };
            if !ok {
                return Err(fail("reopen standard fds")(io::Error::last_os_error()));
            }
        }
    }
    Ok(())
}

/// Drop the caller's whole environment and set only [`SAFE_PATH`], so that
/// nothing of theirs (`PATH`, `LD_*`, `RUNC_*`…) reaches runc.
fn reset_environment() -> Result<(), ShimError> {
    // SAFETY: single-threaded at this point; nothing holds pointers into environ.
    unsafe {
        if libc::clearenv() != 0 {
            return Err(fail("clear environment")(io::Error::last_os_error()));
        }
        let k = c"PATH";
        let v = std::ffi::CString::new(SAFE_PATH)
            .map_err(|_| fail("set PATH")(io::Error::from_raw_os_error(libc::EINVAL)))?;
        if libc::setenv(k.as_ptr(), v.as_ptr(), 1) != 0 {
            return Err(fail("set PATH")(io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Default dispositions and an empty mask: an inherited SIG_IGN for SIGCHLD
/// would make waitpid lose runc's exit status.
fn reset_signals() {
    // SAFETY: resetting handlers to SIG_DFL installs no Rust code.
    unsafe {
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        // Writing to a pipe the caller closed must fail with EPIPE, not kill
        // the shim half-way through.
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(set.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_SETMASK, set.as_ptr(), std::ptr::null_mut());
    }
}

/// Keep the caller from inspecting the shim and everything it runs from
/// gaining privileges through exec.
fn forbid_inspection_and_privilege_gain() -> Result<(), ShimError> {
    // No core dumps, no ptrace, /proc/self owned by root.
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(fail("PR_SET_DUMPABLE")(io::Error::last_os_error()));
    }
    // Nothing the shim or runc executes can gain privileges through exec.
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(fail("PR_SET_NO_NEW_PRIVS")(io::Error::last_os_error()));
    }
    Ok(())
}

/// Decide from the real and effective uid how the shim was started, refusing
/// any effective uid but the caller's own or root's; in setuid mode, make
/// the effective and saved gid root.
fn detect_mode() -> Result<Mode, ShimError> {
    let (ruid, euid, _) = sys::getresuid();
    let (rgid, _, _) = sys::getresgid();
    let mode = match (ruid, euid) {
        (0, 0) => Mode::Root,
        (r, 0) => Mode::Setuid { uid: r, gid: rgid },
        (r, e) if r == e => Mode::Unprivileged { uid: r },
        (_, e) => return Err(ShimError::NotRootOwned { euid: e }),
    };
    if let Mode::Setuid { .. } = mode {
        // Files the shim creates must be group root, not the caller's group;
        // the real gid keeps the caller's identity.
        // SAFETY: plain syscall; euid is 0 so this cannot fail for gid 0.
        if unsafe { libc::setresgid(u32::MAX, 0, 0) } != 0 {
            return Err(fail("setresgid")(io::Error::last_os_error()));
        }
    }
    Ok(mode)
}

/// Close every fd above 2 that the caller left open.
fn close_inherited_fds() -> io::Result<()> {
    // SAFETY: close_range takes integers only; nothing in this process owns
    // fds above 2 yet.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if r == 0 {
        return Ok(());
    }
    // Kernels before 5.9: close one by one up to the fd limit.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let max = lim.rlim_cur.min(1 << 20) as libc::c_int;
    for fd in 3..max {
        // SAFETY: closing fds nobody in this process uses.
        unsafe { libc::close(fd) };
    }
    Ok(())
}
