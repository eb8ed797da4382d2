//! File operations confined to the rootfs: the only place the extraction
//! touches the filesystem.
//!
//! Every operation starts from the rootfs directory fd. A directory that
//! holds an entry is opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)`: the kernel follows symlinks
//! that stay beneath the rootfs and fails with `EXDEV` (or `ELOOP`) for one
//! that would leave it, which becomes [`Resolve::Escapes`]. Entries are then
//! made with `*at` calls on that fd and one name component, without
//! following a symlink in that component. Removal ([`remove_tree`],
//! [`prune`]) descends with `O_NOFOLLOW` and unlinks symlinks rather than
//! following them.

use std::collections::HashSet;
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, Timestamps, CWD};
use rustix::io::Errno;

pub(super) use locald_core::fsutil::dir::{kind_at, remove_tree};
use locald_core::fsutil::dir::{list, open_subdir};

/// How the directories that hold entries are resolved.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// Why a directory path could not be opened.
#[derive(Debug)]
pub(super) enum Resolve {
    /// It goes through a symlink (or a mount) that leaves the rootfs.
    Escapes,
    /// Any other error (`ENOTDIR` for a file on the way, …).
    Io(io::Error),
}

impl From<Errno> for Resolve {
    fn from(e: Errno) -> Self {
        match e {
            Errno::XDEV | Errno::LOOP => Resolve::Escapes,
            e => Resolve::Io(e.into()),
        }
    }
}

/// The rootfs, and the directory last resolved in it.
pub(super) struct Root {
    dir: OwnedFd,
    /// The last directory resolved (its path and an `O_PATH` fd): layers
    /// list entries directory by directory, so most lookups hit it. Dropped
    /// whenever anything is removed, since a removal may take a directory on
    /// its path away.
    cache: Option<(Vec<u8>, OwnedFd)>,
}

impl Root {
    /// Opens `path`, which must be an empty directory (not a symlink).
    pub(super) fn open(path: &Path) -> io::Result<Self> {
        let dir = rustix::fs::openat(
            CWD,
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mut entries = Dir::read_from(&dir)?;
        while let Some(e) = entries.read() {
            let e = e?;
            if !is_dot(e.file_name()) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "the rootfs is not empty",
                ));
            }
        }
        Ok(Self { dir, cache: None })
    }

    /// The rootfs directory (opened for reading, so it takes `fchmod`,
    /// `futimens` and `fsetxattr`).
    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// Forgets the cached directory (after a removal).
    pub(super) fn invalidate(&mut self) {
        self.cache = None;
    }

    /// The directory `path` (components joined by `/`, empty for the
    /// rootfs) as an `O_PATH` fd, creating missing directories (mode 0755)
    /// when `create`; `None` when it is missing and not created.
    pub(super) fn dir(
        &mut self,
        path: &[u8],
        create: bool,
    ) -> Result<Option<BorrowedFd<'_>>, Resolve> {
        if path.is_empty() {
            return Ok(Some(self.dir.as_fd()));
        }
        let hit = self.cache.as_ref().is_some_and(|(p, _)| p == path);
        if !hit {
            let fd = match open_beneath(&self.dir, path) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => self.create_dirs(path)?,
                Err(Errno::NOENT) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            self.cache = Some((path.to_vec(), fd));
        }
        Ok(self.cache.as_ref().map(|(_, fd)| fd.as_fd()))
    }

    /// Opens `path` component by component from the rootfs, making the
    /// missing ones. Each prefix is resolved from the rootfs again, so a
    /// relative symlink on the way is judged as a whole path.
    fn create_dirs(&self, path: &[u8]) -> Result<OwnedFd, Resolve> {
        let mut parent: Option<OwnedFd> = None;
        let mut end = 0;
        loop {
            let next = path[end..]
                .iter()
                .position(|&b| b == b'/')
                .map_or(path.len(), |i| end + i);
            let prefix = &path[..next];
            let name = &path[end..next];
            let fd = match open_beneath(&self.dir, prefix) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    let at = parent.as_ref().map_or(self.dir.as_fd(), |f| f.as_fd());
                    match rustix::fs::mkdirat(at, name, Mode::from_raw_mode(0o755)) {
                        // Whatever the umask: a container's non-root users
                        // must get through.
                        Ok(()) => rustix::fs::chmodat(
                            at,
                            name,
                            Mode::from_raw_mode(0o755),
                            AtFlags::empty(),
                        )
                        .map_err(|e| Resolve::Io(e.into()))?,
                        // A dangling symlink in the way, resolved (and
                        // judged) just below.
                        Err(Errno::EXIST) => {}
                        Err(e) => return Err(Resolve::Io(e.into())),
                    }
                    open_beneath(&self.dir, prefix)?
                }
                Err(e) => return Err(e.into()),
            };
            if next == path.len() {
                return Ok(fd);
            }
            parent = Some(fd);
            end = next + 1;
        }
    }

    /// The directory `path` opened for reading (to list, chmod or set times
    /// on it), without following a symlink in its last component.
    pub(super) fn open_dir(&self, path: &[u8]) -> Result<OwnedFd, Resolve> {
        let path: &[u8] = if path.is_empty() { b"." } else { path };
        Ok(rustix::fs::openat2(
            &self.dir,
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )?)
    }
}

fn open_beneath(root: &OwnedFd, path: &[u8]) -> Result<OwnedFd, Errno> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    // openat2 fails with EAGAIN when a rename raced the lookup; the rootfs
    // is ours alone, so this is rare: retry a few times.
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(root, path, flags, Mode::empty(), RESOLVE) {
            Err(Errno::AGAIN) if tries < 8 => tries += 1,
            r => return r,
        }
    }
}

fn is_dot(name: &CStr) -> bool {
    matches!(name.to_bytes(), b"." | b"..")
}

/// Whether `a` in `da` and `b` in `db` are the same inode (neither followed).
pub(super) fn same_inode(
    da: BorrowedFd<'_>,
    a: &[u8],
    db: BorrowedFd<'_>,
    b: &[u8],
) -> io::Result<bool> {
    let sa = rustix::fs::statat(da, a, AtFlags::SYMLINK_NOFOLLOW)?;
    let sb = rustix::fs::statat(db, b, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino)
}

/// Removes from the directory `dir` (at `path`) everything whose path is not
/// in `keep`, descending into kept directories: what an opaque directory
/// hides of the layers below, sparing what its own layer already put there.
pub(super) fn prune(dir: BorrowedFd<'_>, path: &[u8], keep: &HashSet<Vec<u8>>) -> io::Result<()> {
    for child in list(&dir)? {
        let mut child_path = Vec::with_capacity(path.len() + 1 + child.len());
        if !path.is_empty() {
            child_path.extend_from_slice(path);
            child_path.push(b'/');
        }
        child_path.extend_from_slice(&child);
        if !keep.contains(&child_path) {
            remove_tree(dir, &child)?;
        } else if kind_at(dir, &child)? == Some(FileType::Directory) {
            let sub = open_subdir(dir, &child)?;
            prune(sub.as_fd(), &child_path, keep)?;
        }
    }
    Ok(())
}

/// Runs `make` (which creates `name` in `dir` and fails with `EEXIST` when
/// something is there); on `EEXIST` removes what is there (and everything
/// below it), sets `removed`, and runs it once more.
pub(super) fn replace<T>(
    dir: BorrowedFd<'_>,
    name: &[u8],
    removed: &mut bool,
    mut make: impl FnMut() -> Result<T, Errno>,
) -> io::Result<T> {
    match make() {
        Err(Errno::EXIST) => {
            *removed = true;
            remove_tree(dir, name)?;
            Ok(make()?)
        }
        r => Ok(r?),
    }
}

/// Creates the regular file `name` in `dir` for writing (mode 0600 until
/// its real mode is set), never opening an existing file.
pub(super) fn create_file(dir: BorrowedFd<'_>, name: &[u8]) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
}

/// Creates the directory `name` in `dir` (mode 0700 until its real mode is
/// set) or keeps the directory already there, and opens it for reading.
/// Anything else there is replaced (and `removed` set).
pub(super) fn make_dir(
    dir: BorrowedFd<'_>,
    name: &[u8],
    removed: &mut bool,
) -> io::Result<OwnedFd> {
    match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    match open_subdir(dir, name) {
        Ok(fd) => Ok(fd),
        Err(e) if matches!(Errno::from_io_error(&e), Some(Errno::NOTDIR | Errno::LOOP)) => {
            *removed = true;
            remove_tree(dir, name)?;
            rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700))?;
            open_subdir(dir, name)
        }
        Err(e) => Err(e),
    }
}

/// `utimensat(AT_SYMLINK_NOFOLLOW)`.
pub(super) fn set_times_at(dir: BorrowedFd<'_>, name: &[u8], t: &Timestamps) -> io::Result<()> {
    Ok(rustix::fs::utimensat(
        dir,
        name,
        t,
        AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

/// A directory held as an `O_PATH` fd, opened again for reading (to list
/// it).
pub(super) fn reopen_dir(dir: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}
