//! Thin, safe wrappers over the few system calls the shim needs that std does
//! not offer: `openat` with exact flags, `fstat`, `setfsuid`, mounts and
//! namespaces. Each wrapper returns `io::Error` from `errno`.

use std::ffi::{CString, OsStr};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

fn cstr(p: &OsStr) -> io::Result<CString> {
    CString::new(p.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `openat(dir, path, flags | O_CLOEXEC)`; `dir` None means the cwd.
pub fn openat(dir: Option<BorrowedFd<'_>>, path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = cstr(path.as_os_str())?;
    let dirfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let fd = check(unsafe { libc::openat(dirfd, c.as_ptr(), flags | libc::O_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fstat` on an fd (works on `O_PATH` fds).
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is a valid out-pointer for a `struct stat`.
    check(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded, so it filled `st`.
    Ok(unsafe { st.assume_init() })
}

/// The path the kernel holds for an open fd.
pub fn fd_path(fd: BorrowedFd<'_>) -> io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// `/proc/self/fd/N`, to reopen or mount an fd by path.
pub fn proc_fd(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Set the filesystem uid and gid, and check the kernel took them:
/// `setfsuid` reports no error, only the previous value.
pub fn set_fs_ids(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain syscalls on the current (only) thread's credentials.
    unsafe {
        libc::setfsgid(gid);
        libc::setfsuid(uid);
        // Passing an invalid id (-1) changes nothing and returns the current one.
        let now_uid = libc::setfsuid(u32::MAX) as u32;
        let now_gid = libc::setfsgid(u32::MAX) as u32;
        if now_uid != uid || now_gid != gid {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("setfsuid/setfsgid to {uid}/{gid} did not take effect"),
            ));
        }
    }
    Ok(())
}

/// `getresuid()`: (real, effective, saved).
pub fn getresuid() -> (u32, u32, u32) {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: three valid out-pointers; getresuid cannot fail with them.
    unsafe { libc::getresuid(&mut r, &mut e, &mut s) };
    (r, e, s)
}

/// `getresgid()`: (real, effective, saved).
pub fn getresgid() -> (u32, u32, u32) {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: three valid out-pointers; getresgid cannot fail with them.
    unsafe { libc::getresgid(&mut r, &mut e, &mut s) };
    (r, e, s)
}

/// Bind-mount the file or directory behind `src` (an fd opened as the
/// caller) onto `target`, recursively. Mounting through `/proc/self/fd`
/// mounts exactly the inode that was checked, whatever the path now says.
pub fn bind_mount_fd(src: BorrowedFd<'_>, target: &Path) -> io::Result<()> {
    let s = cstr(proc_fd(src).as_os_str())?;
    let t = cstr(target.as_os_str())?;
    // SAFETY: valid C strings; null fstype/data are allowed for MS_BIND.
    check(unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    })?;
    Ok(())
}

/// Lazily unmount `target`; "not mounted" is not an error.
pub fn umount_detach(target: &Path) -> io::Result<()> {
    let t = cstr(target.as_os_str())?;
    // SAFETY: valid C string.
    match check(unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) }) {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Enter a private mount namespace so that staging mounts never appear on
/// the host and vanish with the last process using them.
pub fn unshare_private_mounts() -> io::Result<()> {
    // SAFETY: unshare affects only this single-threaded process.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS) })?;
    let root = cstr(OsStr::new("/"))?;
    // SAFETY: valid C string; null source/fstype/data are allowed here.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    })?;
    Ok(())
}

/// Turn a raw fd number into a borrowed fd for the duration of a call.
///
/// # Safety
/// `fd` must be open for the lifetime `'a`.
pub unsafe fn borrow_raw<'a>(fd: RawFd) -> BorrowedFd<'a> {
    // SAFETY: guaranteed by the caller.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`; version 3 uses two of them.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// This thread's capability sets.
fn capget() -> io::Result<[CapData; 2]> {
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: a valid version-3 header and room for the two data structs
    // that version needs.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(data)
}

/// Set this thread's capability sets.
fn capset(data: &[CapData; 2]) -> io::Result<()> {
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: a valid version-3 header and the two data structs it needs.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// While alive, the filesystem uid/gid are the caller's and, for a caller
/// other than root, the effective capability set is empty, so the kernel
/// checks exactly the caller's rights on every path the shim opens. The fs
/// ids alone drop only the `CAP_DAC_*`-like capabilities; `CAP_SYS_PTRACE`
/// would still let path walks through `/proc/PID/{root,cwd,fd/N}` of other
/// users' processes succeed where the caller's would fail. Dropping it
/// restores root's ids and capabilities.
pub struct AsCaller {
    /// Capabilities to restore; `None` when none were dropped.
    saved: Option<[CapData; 2]>,
}

impl AsCaller {
    /// Switch the filesystem ids to `uid`/`gid` and, unless `uid` is root,
    /// empty the effective capability set.
    pub fn enter(uid: u32, gid: u32) -> io::Result<Self> {
        let saved = if uid != 0 { Some(capget()?) } else { None };
        // Built before any change so that a failure half-way is undone.
        let guard = Self { saved };
        set_fs_ids(uid, gid)?;
        if let Some(caps) = guard.saved {
            let mut none = caps;
            for d in &mut none {
                d.effective = 0;
            }
            capset(&none)?;
        }
        Ok(guard)
    }
}

impl Drop for AsCaller {
    fn drop(&mut self) {
        let caps_back = self.saved.as_ref().is_none_or(|c| capset(c).is_ok());
        if !caps_back || set_fs_ids(0, 0).is_err() {
            // Continuing with the caller's rights would only fail later in a
            // confusing way; this cannot happen for a setuid-root process.
            std::process::abort();
        }
    }
}
