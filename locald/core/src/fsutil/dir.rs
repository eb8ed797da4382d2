//! Directories of ours held open, for work inside a project's `.locald/`.
//!
//! A project directory may be writable by others: a shared checkout
//! (setgid, umask 002) lets every member of its group create, rename and
//! replace entries in it, `.locald` included. A path like
//! `PROJECT/.locald/watch-sync` is therefore a name an attacker can point
//! anywhere (`ln -s ~victim/precious .locald/watch-sync`), and anything done
//! through it — clearing old markers, removing a staging directory,
//! renaming an artifact into place — would be done wherever it points.
//!
//! So nothing below a `.locald` component is reached by path. [`work_dir`]
//! opens the part of a path the user named (the project directory) as
//! given, then each component from `.locald` on relative to its parent's
//! descriptor with `O_NOFOLLOW|O_DIRECTORY`, and accepts each only if it is
//! a directory we own (one that group or others could write is made ours
//! alone first: only its owner can change its mode). The [`SafeDir`] it
//! returns does every further step — read, create, rename, remove — with
//! `*at` calls on that descriptor and one name, never following a symlink
//! in that name, and removes trees by descending with `O_NOFOLLOW`
//! ([`remove_tree`]). Renaming `.locald` away afterwards changes nothing
//! for a handle already open.
//!
//! What cannot be held open is a path handed to another program (a build
//! command's environment, the CNB lifecycle's bind mounts): those are made
//! from the handle's path just before use ([`SafeDir::still_at_path`] checks
//! the name still leads to the same directory).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, CWD};
use rustix::io::Errno;

use std::os::unix::fs::MetadataExt as _;

use super::{file_kind, my_uid, UnsafeFile};

/// The name of locald's own directory in a project.
pub const LOCALD_DIR: &str = ".locald";

/// A directory opened once and worked in by descriptor: see the module
/// docs. Cloning shares the descriptor.
#[derive(Debug, Clone)]
pub struct SafeDir {
    fd: Arc<OwnedFd>,
    path: PathBuf,
}

fn io_at(path: &Path, e: impl Into<io::Error>) -> UnsafeFile {
    UnsafeFile::Io {
        path: path.to_owned(),
        source: e.into(),
    }
}

fn name_bytes(name: &OsStr) -> io::Result<&[u8]> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{}` is not a single file name", name.to_string_lossy()),
        ));
    }
    Ok(b)
}

/// Opens the directory `path` to work inside it, creating what is missing
/// when `create` (new directories are 0700). `Ok(None)` when it does not
/// exist and `create` is false.
///
/// The part of `path` before its first `.locald` component is opened as
/// given (the user named it; symlinks in it are theirs). From `.locald` on,
/// each component is opened from its parent's descriptor without following
/// a symlink, and must be a directory owned by us; one that group or others
/// may write is made 0700-like (`go-w`) first. A path without a `.locald`
/// component is opened as given.
pub fn work_dir(path: &Path, create: bool) -> Result<Option<SafeDir>, UnsafeFile> {
    let comps: Vec<Component<'_>> = path.components().collect();
    let split = comps
        .iter()
        .position(|c| matches!(c, Component::Normal(n) if *n == OsStr::new(LOCALD_DIR)));
    let (given, ours) = match split {
        Some(i) => comps.split_at(i),
        None => (&comps[..], &comps[..0]),
    };
    let given: PathBuf = given.iter().collect();
    let given = if given.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        given
    };
    if create {
        std::fs::create_dir_all(&given).map_err(|e| io_at(&given, e))?;
    }
    let mut dir = match SafeDir::open(&given) {
        Ok(d) => d,
        Err(UnsafeFile::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    for c in ours {
        let Component::Normal(name) = c else {
            return Err(io_at(
                path,
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "only plain names may follow .locald",
                ),
            ));
        };
        dir = match dir.sub(name, create)? {
            Some(d) => d,
            None => return Ok(None),
        };
    }
    Ok(Some(dir))
}

impl SafeDir {
    /// Opens `path` as a directory, following symlinks: for directories the
    /// user named. Below them, use [`SafeDir::sub`] (or [`work_dir`]).
    pub fn open(path: &Path) -> Result<SafeDir, UnsafeFile> {
        let fd = rustix::fs::openat(
            CWD,
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_at(path, e))?;
        Ok(SafeDir {
            fd: Arc::new(fd),
            path: path.to_owned(),
        })
    }

    /// Where this directory was when it was opened.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path()/name`.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Opens (or, with `create`, makes, mode 0700) the subdirectory `rel`,
    /// one or more plain names separated by `/`, each step as
    /// [`work_dir`] takes the steps below `.locald`.
    pub fn sub(&self, rel: impl AsRef<Path>, create: bool) -> Result<Option<SafeDir>, UnsafeFile> {
        let mut dir = self.clone();
        for c in rel.as_ref().components() {
            let Component::Normal(name) = c else {
                return Err(io_at(
                    &self.join(rel.as_ref()),
                    io::Error::new(io::ErrorKind::InvalidInput, "not a plain relative path"),
                ));
            };
            dir = match dir.step(name, create)? {
                Some(d) => d,
                None => return Ok(None),
            };
        }
        Ok(Some(dir))
    }

    /// One step down: `name` opened without following a symlink, checked.
    fn step(&self, name: &OsStr, create: bool) -> Result<Option<SafeDir>, UnsafeFile> {
        let path = self.join(name);
        let bytes = name_bytes(name).map_err(|e| io_at(&path, e))?;
        let mut made = false;
        let fd = loop {
            match rustix::fs::openat(
                self.fd(),
                bytes,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => break fd,
                Err(Errno::NOENT) if create && !made => {
                    match rustix::fs::mkdirat(self.fd(), bytes, Mode::from_raw_mode(0o700)) {
                        Ok(()) | Err(Errno::EXIST) => made = true,
                        Err(e) => return Err(io_at(&path, e)),
                    }
                }
                Err(Errno::NOENT) => return Ok(None),
                Err(Errno::LOOP) => return Err(UnsafeFile::Symlink { path }),
                Err(Errno::NOTDIR) => {
                    let kind = self
                        .kind(name)
                        .ok()
                        .flatten()
                        .map_or("of an unknown kind", kind_name);
                    if kind == "a symbolic link" {
                        return Err(UnsafeFile::Symlink { path });
                    }
                    return Err(UnsafeFile::NotDirectory { path, kind });
                }
                Err(e) => return Err(io_at(&path, e)),
            }
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| io_at(&path, e))?;
        let me = my_uid();
        if st.st_uid != me {
            return Err(UnsafeFile::ForeignOwner {
                path,
                owner: st.st_uid,
                me,
            });
        }
        let mode = st.st_mode & 0o7777;
        if mode & 0o022 != 0 {
            // Ours, but others could plant entries in it: only the owner
            // can change that, and we are the owner.
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode & !0o022))
                .map_err(|e| io_at(&path, e))?;
            tracing::info!(
                "{} was writable by others (mode {mode:04o}); made it {:04o}",
                path.display(),
                mode & !0o022
            );
        }
        Ok(Some(SafeDir {
            fd: Arc::new(fd),
            path,
        }))
    }

    /// What is at `name`, without following a symlink; `None` if nothing.
    pub fn kind(&self, name: impl AsRef<OsStr>) -> io::Result<Option<FileType>> {
        kind_at(self.fd(), name_bytes(name.as_ref())?)
    }

    /// The names in this directory, without `.` and `..`.
    pub fn entries(&self) -> io::Result<Vec<OsString>> {
        Ok(list(&*self.fd)?
            .into_iter()
            .map(OsString::from_vec)
            .collect())
    }

    /// Removes `name` and, if it is a directory, everything below it;
    /// symlinks are unlinked, never followed. Missing is fine.
    pub fn remove(&self, name: impl AsRef<OsStr>) -> io::Result<()> {
        remove_tree(self.fd(), name_bytes(name.as_ref())?)
    }

    /// Removes everything in this directory.
    pub fn clear(&self) -> io::Result<()> {
        for name in list(&*self.fd)? {
            remove_tree(self.fd(), &name)?;
        }
        Ok(())
    }

    /// Makes the directory `name` (`mode`); fails if anything is there.
    pub fn mkdir(&self, name: impl AsRef<OsStr>, mode: u32) -> io::Result<()> {
        Ok(rustix::fs::mkdirat(
            self.fd(),
            name_bytes(name.as_ref())?,
            Mode::from_raw_mode(mode),
        )?)
    }

    /// Reads the regular file `name` of ours, of at most `limit` bytes,
    /// without following a symlink or blocking on a FIFO. `Ok(None)` when
    /// it does not exist.
    pub fn read(
        &self,
        name: impl AsRef<OsStr>,
        what: &'static str,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, UnsafeFile> {
        let name = name.as_ref();
        let path = self.join(name);
        let bytes = name_bytes(name).map_err(|e| io_at(&path, e))?;
        let fd = match rustix::fs::openat(
            self.fd(),
            bytes,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::LOOP) => return Err(UnsafeFile::Symlink { path }),
            Err(e) => return Err(io_at(&path, e)),
        };
        let file = File::from(fd);
        let meta = file.metadata().map_err(|e| io_at(&path, e))?;
        check_own_file(&path, &meta)?;
        if meta.len() > limit {
            return Err(UnsafeFile::TooLarge { path, what, limit });
        }
        let mut data = Vec::new();
        file.take(limit + 1)
            .read_to_end(&mut data)
            .map_err(|e| io_at(&path, e))?;
        if data.len() as u64 > limit {
            return Err(UnsafeFile::TooLarge { path, what, limit });
        }
        Ok(Some(data))
    }

    /// Creates the regular file `name` (mode 0600) for writing; fails if
    /// anything is there (`EEXIST`), never opening what another put there.
    pub fn create_new(&self, name: impl AsRef<OsStr>) -> io::Result<File> {
        let fd = rustix::fs::openat(
            self.fd(),
            name_bytes(name.as_ref())?,
            OFlags::WRONLY
                | OFlags::CREATE
                | OFlags::EXCL
                | OFlags::NOFOLLOW
                | OFlags::NONBLOCK
                | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        Ok(File::from(fd))
    }

    /// Opens the file `name` for reading and writing, creating it (0600)
    /// when missing: a lock file, or a file rewritten in place. A symlink,
    /// a FIFO or a file of another user in its place is refused.
    pub fn open_rw(&self, name: impl AsRef<OsStr>) -> Result<File, UnsafeFile> {
        let name = name.as_ref();
        let path = self.join(name);
        let bytes = name_bytes(name).map_err(|e| io_at(&path, e))?;
        let fd = match rustix::fs::openat(
            self.fd(),
            bytes,
            OFlags::RDWR
                | OFlags::CREATE
                | OFlags::NOFOLLOW
                | OFlags::NONBLOCK
                | OFlags::NOCTTY
                | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => fd,
            Err(Errno::LOOP) => return Err(UnsafeFile::Symlink { path }),
            Err(e) => return Err(io_at(&path, e)),
        };
        let file = File::from(fd);
        let meta = file.metadata().map_err(|e| io_at(&path, e))?;
        check_own_file(&path, &meta)?;
        Ok(file)
    }

    /// Writes `data` to `name` so that a reader sees the old or the new
    /// content, never a mix: a temporary file with a name unique to this
    /// process and call, then a rename over `name` (a symlink there is
    /// replaced, never followed). With `sync`, the file and the directory
    /// are fsynced.
    pub fn write_atomic(&self, name: impl AsRef<OsStr>, data: &[u8], sync: bool) -> io::Result<()> {
        let name = name_bytes(name.as_ref())?;
        let mut tries = 0;
        let (tmp, mut f) = loop {
            let tmp = OsString::from(super::temporary_name(&String::from_utf8_lossy(name)));
            match self.create_new(&tmp) {
                Ok(f) => break (tmp, f),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 8 => tries += 1,
                Err(e) => return Err(e),
            }
        };
        let result = (|| {
            f.write_all(data)?;
            if sync {
                f.sync_all()?;
            }
            rustix::fs::renameat(self.fd(), tmp.as_bytes(), self.fd(), name)?;
            if sync {
                self.sync()?;
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = rustix::fs::unlinkat(self.fd(), tmp.as_bytes(), AtFlags::empty());
        }
        result
    }

    /// Renames `from` to `to`, both in this directory, replacing `to` when
    /// it is a file or an empty directory.
    pub fn rename(&self, from: impl AsRef<OsStr>, to: impl AsRef<OsStr>) -> io::Result<()> {
        Ok(rustix::fs::renameat(
            self.fd(),
            name_bytes(from.as_ref())?,
            self.fd(),
            name_bytes(to.as_ref())?,
        )?)
    }

    /// Swaps `a` and `b` in this directory in one step
    /// (`RENAME_EXCHANGE`); `Err(EINVAL)` and the like where the file
    /// system cannot.
    pub fn exchange(&self, a: impl AsRef<OsStr>, b: impl AsRef<OsStr>) -> io::Result<()> {
        Ok(rustix::fs::renameat_with(
            self.fd(),
            name_bytes(a.as_ref())?,
            self.fd(),
            name_bytes(b.as_ref())?,
            RenameFlags::EXCHANGE,
        )?)
    }

    /// fsyncs the directory (its entries).
    pub fn sync(&self) -> io::Result<()> {
        Ok(rustix::fs::fsync(self.fd())?)
    }

    /// fsyncs every regular file and directory below this one, and this
    /// one: descending by descriptor with `O_NOFOLLOW`, opening files with
    /// `O_NONBLOCK` (a FIFO put in the tree is skipped, never waited on).
    pub fn sync_tree(&self) -> io::Result<()> {
        for name in list(&*self.fd)? {
            match kind_at(self.fd(), &name)? {
                Some(FileType::Directory) => {
                    let sub = SafeDir {
                        fd: Arc::new(open_subdir(self.fd(), &name)?),
                        path: self.path.join(OsStr::from_bytes(&name)),
                    };
                    sub.sync_tree()?;
                }
                Some(FileType::RegularFile) => {
                    let fd = rustix::fs::openat(
                        self.fd(),
                        name.as_slice(),
                        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                        Mode::empty(),
                    )?;
                    rustix::fs::fsync(&fd)?;
                }
                _ => {}
            }
        }
        self.sync()
    }

    /// `/proc/self/fd/N` of this directory, for this process: a name no
    /// rename of a parent can redirect, valid while the handle lives (an
    /// inotify watch added through it watches this very directory).
    pub fn fd_path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// Moves the tree at `from` — a private path of ours, outside any
    /// directory others can write — into this directory as `name`: one
    /// rename where both are on one file system, else a copy made here by
    /// descriptor (files, directories and symlinks; the source's symlinks
    /// are copied, never followed) and the source removed.
    pub fn take_from(&self, from: &Path, name: impl AsRef<OsStr>) -> io::Result<()> {
        let name = name_bytes(name.as_ref())?;
        match rustix::fs::renameat(CWD, from, self.fd(), name) {
            Ok(()) => return Ok(()),
            Err(Errno::XDEV) => {}
            Err(e) => return Err(e.into()),
        }
        self.copy_in(from, name)?;
        std::fs::remove_dir_all(from)
    }

    fn copy_in(&self, from: &Path, name: &[u8]) -> io::Result<()> {
        let meta = std::fs::symlink_metadata(from)?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = std::fs::read_link(from)?;
            Ok(rustix::fs::symlinkat(target.as_path(), self.fd(), name)?)
        } else if ft.is_dir() {
            rustix::fs::mkdirat(self.fd(), name, Mode::from_raw_mode(0o755))?;
            let sub = SafeDir {
                fd: Arc::new(open_subdir(self.fd(), name)?),
                path: self.path.join(OsStr::from_bytes(name)),
            };
            for e in std::fs::read_dir(from)? {
                let e = e?;
                sub.copy_in(&e.path(), e.file_name().as_bytes())?;
            }
            Ok(())
        } else if ft.is_file() {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            let mut src = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(from)?;
            let mut dst = self.create_new(OsStr::from_bytes(name))?;
            std::io::copy(&mut src, &mut dst)?;
            dst.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o755))
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a file, directory or symlink", from.display()),
            ))
        }
    }

    /// Whether [`SafeDir::path`] still leads to this directory (nobody
    /// renamed it, or a parent, away): checked before the path is handed to
    /// another program.
    pub fn still_at_path(&self) -> bool {
        let (Ok(here), Ok(there)) = (
            rustix::fs::fstat(self.fd()),
            rustix::fs::stat(self.path.as_path()),
        ) else {
            return false;
        };
        here.st_dev == there.st_dev && here.st_ino == there.st_ino
    }
}

/// A file under `.locald/` must be a regular file of ours.
fn check_own_file(path: &Path, meta: &std::fs::Metadata) -> Result<(), UnsafeFile> {
    use std::os::unix::fs::MetadataExt;
    if !meta.file_type().is_file() {
        return Err(UnsafeFile::NotRegular {
            path: path.to_owned(),
            kind: file_kind(meta.mode()),
        });
    }
    if meta.uid() != my_uid() {
        return Err(UnsafeFile::ForeignOwner {
            path: path.to_owned(),
            owner: meta.uid(),
            me: my_uid(),
        });
    }
    Ok(())
}

fn kind_name(t: FileType) -> &'static str {
    match t {
        FileType::Fifo => "a FIFO",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Directory => "a directory",
        FileType::Socket => "a socket",
        FileType::Symlink => "a symbolic link",
        FileType::RegularFile => "a regular file",
        _ => "of an unknown kind",
    }
}

/// `fstatat(AT_SYMLINK_NOFOLLOW)`: what is at `name` in `dir`, if anything.
pub fn kind_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<FileType>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Removes `name` in `dir` and, if it is a directory, everything below it;
/// each directory is opened with `O_NOFOLLOW` from its parent's descriptor
/// and symlinks are unlinked, never followed. Missing is fine.
pub fn remove_tree(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    match kind_at(dir, name)? {
        None => Ok(()),
        Some(FileType::Directory) => {
            let sub = open_subdir(dir, name)?;
            for child in list(&sub)? {
                remove_tree(sub.as_fd(), &child)?;
            }
            unlink(dir, name, AtFlags::REMOVEDIR)
        }
        Some(_) => unlink(dir, name, AtFlags::empty()),
    }
}

/// Opens the directory `name` in `dir` without following a symlink.
pub fn open_subdir(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// The names in a directory (without `.` and `..`), read before anything in
/// it is changed.
pub fn list(dir: &impl AsFd) -> io::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut d = rustix::fs::Dir::read_from(dir)?;
    while let Some(e) = d.read() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(n.to_vec());
        }
    }
    Ok(out)
}

/// `unlinkat`; missing is fine.
pub fn unlink(dir: BorrowedFd<'_>, name: &[u8], flags: AtFlags) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, flags) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    fn precious(dir: &Path) -> PathBuf {
        let p = dir.join("precious");
        std::fs::create_dir(&p).expect("mkdir");
        std::fs::write(p.join("thesis.tex"), "years of work").expect("write");
        p
    }

    fn intact(p: &Path) {
        assert_eq!(
            std::fs::read_to_string(p.join("thesis.tex")).expect("still there"),
            "years of work"
        );
    }

    #[test]
    fn creates_the_chain_private() {
        let t = tempfile::tempdir().expect("tempdir");
        let d = work_dir(&t.path().join(".locald/services/web"), true)
            .expect("opened")
            .expect("created");
        assert!(d.path().ends_with(".locald/services/web"));
        for p in [".locald", ".locald/services", ".locald/services/web"] {
            let m = std::fs::metadata(t.path().join(p)).expect("stat");
            assert_eq!(m.mode() & 0o777, 0o700, "{p}");
        }
        assert!(work_dir(&t.path().join(".locald/nothing"), false)
            .expect("ok")
            .is_none());
    }

    #[test]
    fn a_symlink_anywhere_below_locald_is_refused() {
        let t = tempfile::tempdir().expect("tempdir");
        let victim = precious(t.path());
        let proj = t.path().join("proj");
        std::fs::create_dir_all(proj.join(".locald")).expect("mkdir");
        symlink(&victim, proj.join(".locald/watch-sync")).expect("plant");
        let e = work_dir(&proj.join(".locald/watch-sync"), true).expect_err("refused");
        assert!(matches!(e, UnsafeFile::Symlink { .. }), "{e}");
        // .locald itself a symlink.
        let proj2 = t.path().join("proj2");
        std::fs::create_dir(&proj2).expect("mkdir");
        symlink(&victim, proj2.join(".locald")).expect("plant");
        let e = work_dir(&proj2.join(".locald/state"), true).expect_err("refused");
        assert!(matches!(e, UnsafeFile::Symlink { .. }), "{e}");
        intact(&victim);
        assert!(!victim.join("state").exists());
    }

    #[test]
    fn a_fifo_or_file_in_place_of_a_directory_is_refused_without_blocking() {
        let t = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(t.path().join(".locald")).expect("mkdir");
        nix::unistd::mkfifo(
            &t.path().join(".locald/state"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .expect("mkfifo");
        let e = work_dir(&t.path().join(".locald/state"), true).expect_err("refused");
        assert!(e.to_string().contains("a FIFO"), "{e}");
    }

    #[test]
    fn a_foreign_directory_is_refused_and_a_loose_mode_tightened() {
        let t = tempfile::tempdir().expect("tempdir");
        let l = t.path().join(".locald");
        std::fs::create_dir(&l).expect("mkdir");
        std::fs::set_permissions(&l, std::fs::Permissions::from_mode(0o2775)).expect("chmod");
        let d = work_dir(&l, false).expect("ours").expect("there");
        assert_eq!(
            std::fs::metadata(d.path()).expect("stat").mode() & 0o7777,
            0o2755
        );
        if my_uid() == 0 {
            let s = l.join("state");
            std::fs::create_dir(&s).expect("mkdir");
            std::os::unix::fs::chown(&s, Some(65534), Some(65534)).expect("chown");
            let e = work_dir(&s, true).expect_err("foreign");
            assert!(
                matches!(e, UnsafeFile::ForeignOwner { owner: 65534, .. }),
                "{e}"
            );
        }
    }

    #[test]
    fn clearing_and_removing_never_follow_symlinks() {
        let t = tempfile::tempdir().expect("tempdir");
        let victim = precious(t.path());
        let d = work_dir(&t.path().join("p/.locald/x"), true)
            .expect("ok")
            .expect("made");
        symlink(&victim, d.join("link")).expect("plant");
        d.mkdir("sub", 0o700).expect("mkdir");
        symlink(&victim, d.join("sub/deeper")).expect("plant");
        d.clear().expect("cleared");
        assert!(d.entries().expect("list").is_empty());
        intact(&victim);
    }

    #[test]
    fn files_are_read_and_written_without_following() {
        let t = tempfile::tempdir().expect("tempdir");
        let victim = precious(t.path());
        let d = work_dir(&t.path().join("p/.locald"), true)
            .expect("ok")
            .expect("made");
        symlink(victim.join("thesis.tex"), d.join("manifest.json")).expect("plant");
        assert!(matches!(
            d.read("manifest.json", "a manifest", 1 << 20),
            Err(UnsafeFile::Symlink { .. })
        ));
        assert!(matches!(
            d.open_rw("manifest.json"),
            Err(UnsafeFile::Symlink { .. })
        ));
        d.write_atomic("manifest.json", b"{}", true)
            .expect("replaced");
        intact(&victim);
        assert_eq!(
            d.read("manifest.json", "a manifest", 10).expect("ok"),
            Some(b"{}".to_vec())
        );
        nix::unistd::mkfifo(
            &d.join("lock"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .expect("mkfifo");
        let e = d.open_rw("lock").expect_err("fifo");
        assert!(e.to_string().contains("a FIFO"), "{e}");
        assert!(d.create_new("lock").is_err());
    }

    #[test]
    fn a_renamed_parent_is_noticed() {
        let t = tempfile::tempdir().expect("tempdir");
        let d = work_dir(&t.path().join("p/.locald"), true)
            .expect("ok")
            .expect("made");
        assert!(d.still_at_path());
        std::fs::rename(t.path().join("p/.locald"), t.path().join("p/moved")).expect("mv");
        std::fs::create_dir(t.path().join("p/.locald")).expect("mkdir");
        assert!(!d.still_at_path());
        // The handle still works where the directory went.
        d.write_atomic("x", b"1", false).expect("write");
        assert!(t.path().join("p/moved/x").exists());
    }
}
