//! The one place that touches files another user might have planted.
//!
//! locald runs as its user and reads and writes in places a hostile local
//! user may reach first: a world-writable parent of a project, a `/tmp`
//! fallback for the runtime directory, a symlink where a state file should
//! be, a FIFO or `/dev/zero` named as a config input. Everything here fails
//! closed, with an error that says what was refused and why:
//!
//! - [`private_dir`] creates or accepts a directory only if it is a real
//!   directory (not a symlink), owned by us, and not writable by group or
//!   others; what lives inside it is then ours alone.
//! - [`read_input`] reads a config input (`locald.toml`, an `env_file`): a
//!   regular file, owned by us or root, not writable by others, at most a
//!   given size, opened without blocking (a FIFO cannot stall the daemon).
//! - [`open_input`] opens a large input (an image archive) under the same
//!   rules, to be read in pieces.
//! - [`open_content`] opens a file whose bytes the caller verifies (an
//!   image blob in a layout): regular, non-blocking, any owner.
//! - [`write_atomic`] writes a state file through a uniquely named temporary
//!   file (`O_EXCL|O_NOFOLLOW`), fsync and rename, so concurrent writers
//!   never share a temporary and a reader sees old or new, never a mix.
//! - [`read_state`] reads a state file without following a symlink.
//! - [`work_dir`] opens a directory below a project's `.locald/` without
//!   following symlinks, and gives a [`SafeDir`] that does everything
//!   inside it by descriptor ([`dir`] says why).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub mod dir;

pub use dir::{work_dir, SafeDir, LOCALD_DIR};

/// Why a file or directory was refused.
#[derive(Debug, thiserror::Error)]
pub enum UnsafeFile {
    /// It could not be opened, read or created.
    #[error("cannot read {}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Not a regular file (a FIFO, a device, a directory, a socket).
    #[error("{} is not a regular file (it is {kind}); refusing to read it", path.display())]
    NotRegular {
        /// The path.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// Owned by another user.
    #[error("{} is owned by uid {owner}, not by you (uid {me}) or root; refusing to use it", path.display())]
    ForeignOwner {
        /// The path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Our uid.
        me: u32,
    },
    /// Writable by others, who could change it under us.
    #[error("{} is writable by {who} (mode {mode:04o}); refusing to use it", path.display())]
    Writable {
        /// The path.
        path: PathBuf,
        /// "group and others", "others", …
        who: &'static str,
        /// Its permission bits.
        mode: u32,
    },
    /// Larger than the limit for its kind.
    #[error("{} is larger than {} (the limit for {what})", path.display(), human_size(*limit))]
    TooLarge {
        /// The path.
        path: PathBuf,
        /// What kind of file.
        what: &'static str,
        /// The limit in bytes.
        limit: u64,
    },
    /// Something else where a directory must be.
    #[error("{} is not a directory (it is {kind}); refusing to use it", path.display())]
    NotDirectory {
        /// The path.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// A symlink where a directory or state file must be.
    #[error("{} is a symbolic link; refusing to follow it", path.display())]
    Symlink {
        /// The path.
        path: PathBuf,
    },
}

impl UnsafeFile {
    fn io(path: &Path, source: io::Error) -> Self {
        UnsafeFile::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// Whether it was refused for who owns it or may write it (as opposed to
    /// an I/O error or its kind).
    pub fn is_trust(&self) -> bool {
        matches!(
            self,
            UnsafeFile::ForeignOwner { .. } | UnsafeFile::Writable { .. }
        )
    }
}

/// The size limit for `locald.toml`.
pub const CONFIG_LIMIT: u64 = 4 << 20;
/// The size limit for an `env_file`.
pub const ENV_FILE_LIMIT: u64 = 1 << 20;
/// The size limit for a state file (`projects.json`).
pub const STATE_LIMIT: u64 = 16 << 20;

/// `1 MiB`, `4 MiB`, `512 bytes`.
pub fn human_size(n: u64) -> String {
    if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n % (1 << 10) == 0 {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

fn my_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

fn file_kind(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFIFO => "a FIFO",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFDIR => "a directory",
        libc::S_IFSOCK => "a socket",
        libc::S_IFLNK => "a symbolic link",
        libc::S_IFREG => "a regular file",
        _ => "of an unknown kind",
    }
}

/// Whether `uid` may be trusted to own a file we act on: ourselves or root.
pub fn trusted_owner(uid: u32) -> bool {
    uid == my_uid() || uid == 0
}

/// Checks owner (us or root) and that others cannot write.
fn check_trust(path: &Path, meta: &fs::Metadata) -> Result<(), UnsafeFile> {
    if !trusted_owner(meta.uid()) {
        return Err(UnsafeFile::ForeignOwner {
            path: path.to_owned(),
            owner: meta.uid(),
            me: my_uid(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o002 != 0 {
        return Err(UnsafeFile::Writable {
            path: path.to_owned(),
            who: "others",
            mode,
        });
    }
    Ok(())
}

/// Reads a config input: a regular file owned by us or root, not writable by
/// others, of at most `limit` bytes. Opening does not block on a FIFO, and
/// the size is checked on the open file, so nothing swapped in between a
/// check and the read is read.
pub fn read_input(path: &Path, what: &'static str, limit: u64) -> Result<Vec<u8>, UnsafeFile> {
    let file = open_input(path)?;
    read_limited(file, path, what, limit)
}

/// Opens an input too large to read at once (an image archive) under the
/// same rules as [`read_input`]: a regular file owned by us or root, not
/// writable by others, opened without blocking. The checks are made on the
/// open file, so what is read is what was checked.
pub fn open_input(path: &Path) -> Result<File, UnsafeFile> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| UnsafeFile::io(path, e))?;
    let meta = file.metadata().map_err(|e| UnsafeFile::io(path, e))?;
    if !meta.file_type().is_file() {
        return Err(UnsafeFile::NotRegular {
            path: path.to_owned(),
            kind: file_kind(meta.mode()),
        });
    }
    check_trust(path, &meta)?;
    Ok(file)
}

fn read_limited(
    file: File,
    path: &Path,
    what: &'static str,
    limit: u64,
) -> Result<Vec<u8>, UnsafeFile> {
    let too_large = || UnsafeFile::TooLarge {
        path: path.to_owned(),
        what,
        limit,
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len > limit {
        return Err(too_large());
    }
    let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    // One byte past the limit tells a file that grew since fstat.
    file.take(limit + 1)
        .read_to_end(&mut data)
        .map_err(|e| UnsafeFile::io(path, e))?;
    if data.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(data)
}

/// Opens content whose bytes are verified by the caller (an image blob
/// checked against its digest while it is read): a regular file, opened
/// without blocking, so a FIFO or a device planted in its place is refused
/// rather than read. Its owner does not matter: what it holds is checked.
/// `Ok(None)` when it does not exist.
pub fn open_content(path: &Path) -> Result<Option<File>, UnsafeFile> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(UnsafeFile::io(path, e)),
    };
    let meta = file.metadata().map_err(|e| UnsafeFile::io(path, e))?;
    if !meta.file_type().is_file() {
        return Err(UnsafeFile::NotRegular {
            path: path.to_owned(),
            kind: file_kind(meta.mode()),
        });
    }
    Ok(Some(file))
}

/// Reads a state file of ours without following a symlink. `Ok(None)` when
/// it does not exist.
pub fn read_state(path: &Path, limit: u64) -> Result<Option<Vec<u8>>, UnsafeFile> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(UnsafeFile::Symlink {
                path: path.to_owned(),
            })
        }
        Err(e) => return Err(UnsafeFile::io(path, e)),
    };
    let meta = file.metadata().map_err(|e| UnsafeFile::io(path, e))?;
    if !meta.file_type().is_file() {
        return Err(UnsafeFile::NotRegular {
            path: path.to_owned(),
            kind: file_kind(meta.mode()),
        });
    }
    read_limited(file, path, "a state file", limit).map(Some)
}

/// Creates `dir` (mode 0700) if it is missing, and accepts it only if it is
/// a directory (not a symlink to one), owned by us, and not writable by
/// group or others. Parents are created as needed with the same mode; only
/// `dir` itself is checked, since it is what keeps others out of its
/// contents.
pub fn private_dir(dir: &Path) -> Result<(), UnsafeFile> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(UnsafeFile::io(dir, e)),
    }
    let meta = fs::symlink_metadata(dir).map_err(|e| UnsafeFile::io(dir, e))?;
    if meta.file_type().is_symlink() {
        return Err(UnsafeFile::Symlink {
            path: dir.to_owned(),
        });
    }
    if !meta.is_dir() {
        return Err(UnsafeFile::NotRegular {
            path: dir.to_owned(),
            kind: file_kind(meta.mode()),
        });
    }
    if meta.uid() != my_uid() {
        return Err(UnsafeFile::ForeignOwner {
            path: dir.to_owned(),
            owner: meta.uid(),
            me: my_uid(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(UnsafeFile::Writable {
            path: dir.to_owned(),
            who: if mode & 0o002 != 0 {
                "others"
            } else {
                "its group"
            },
            mode,
        });
    }
    Ok(())
}

/// A subdirectory of a [`private_dir`]: created 0700 if missing, and never a
/// symlink.
pub fn sub_dir(dir: &Path) -> io::Result<()> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = fs::symlink_metadata(dir)?;
    if meta.is_dir() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a directory", dir.display()),
        ))
    }
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// `count` random bytes from the kernel, as hex.
pub fn random_hex(count: usize) -> io::Result<String> {
    let mut buf = vec![0u8; count];
    let mut filled = 0;
    while filled < count {
        match rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// A temporary name for `name`: `.NAME.PID.SEQ.RANDOM.tmp`. The random
/// part keeps another user from guessing it: in a directory others may
/// write (a `--url-file` in a shared place), a name they made first would
/// make the `O_EXCL` create fail every time.
pub(crate) fn temporary_name(name: &str) -> String {
    let random = random_hex(8).unwrap_or_default();
    format!(
        ".{name}.{}.{}.{random}.tmp",
        std::process::id(),
        TMP_SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Writes `data` to `path` so that a reader sees the old or the new
/// content, never a mix: a temporary file with an unpredictable name
/// (`temporary_name`, `O_EXCL|O_NOFOLLOW`, mode 0600; another name is
/// tried if one is taken), fsync, rename over `path`, fsync of the
/// directory. A symlink at `path` is replaced, never followed.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let mut tries = 0;
    let (tmp, mut f) = loop {
        let tmp = dir.join(temporary_name(name));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
        {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 8 => tries += 1,
            Err(e) => return Err(e),
        }
    };
    let result = (|| {
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Makes `path`'s permission bits `mode` (used where a directory predates
/// locald's own creation, e.g. a state dir made by an older version).
pub fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_fifo_and_devices_without_blocking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        let e = read_input(&fifo, "an env_file", ENV_FILE_LIMIT).expect_err("fifo refused");
        assert!(e.to_string().contains("a FIFO"), "{e}");
        let e = read_input(Path::new("/dev/zero"), "an env_file", ENV_FILE_LIMIT)
            .expect_err("device refused");
        assert!(e.to_string().contains("character device"), "{e}");
    }

    #[test]
    fn refuses_files_over_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("big");
        fs::write(&f, vec![b'a'; 2048]).expect("write");
        let e = read_input(&f, "an env_file", 1024).expect_err("too large");
        assert!(e.to_string().contains("1 KiB"), "{e}");
        assert_eq!(read_input(&f, "x", 4096).expect("fits").len(), 2048);
    }

    #[test]
    fn refuses_world_writable_inputs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("locald.toml");
        fs::write(&f, "").expect("write");
        set_mode(&f, 0o666).expect("chmod");
        let e = read_input(&f, "locald.toml", CONFIG_LIMIT).expect_err("writable");
        assert!(e.is_trust(), "{e}");
    }

    #[test]
    fn private_dir_refuses_symlinks_and_loose_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("real");
        private_dir(&real).expect("created");
        assert_eq!(
            fs::metadata(&real).expect("stat").mode() & 0o777,
            0o700,
            "created private"
        );
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        assert!(matches!(
            private_dir(&link),
            Err(UnsafeFile::Symlink { .. })
        ));
        set_mode(&real, 0o777).expect("chmod");
        assert!(matches!(
            private_dir(&real),
            Err(UnsafeFile::Writable { .. })
        ));
    }

    #[test]
    fn write_atomic_replaces_a_symlink_instead_of_following_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious").expect("write");
        let state = dir.path().join("state.json");
        std::os::unix::fs::symlink(&victim, &state).expect("symlink");
        write_atomic(&state, b"new").expect("written");
        assert_eq!(fs::read_to_string(&victim).expect("read"), "precious");
        assert_eq!(fs::read_to_string(&state).expect("read"), "new");
        assert!(matches!(read_state(&victim, 10), Ok(Some(_))));
    }

    #[test]
    fn write_atomic_cannot_be_blocked_by_a_planted_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = dir.path().join("dashboard-url");
        // Every name the old scheme would use for the next calls.
        for seq in 0..64 {
            let _ = fs::write(
                dir.path()
                    .join(format!(".dashboard-url.{}.{seq}.tmp", std::process::id())),
                "",
            );
        }
        write_atomic(&url, b"http://127.0.0.1:1/\n").expect("written");
        assert_eq!(
            fs::read_to_string(&url).expect("read"),
            "http://127.0.0.1:1/\n"
        );
        let a = temporary_name("x");
        let b = temporary_name("x");
        assert_ne!(a, b);
        assert_eq!(random_hex(8).expect("random").len(), 16);
    }

    #[test]
    fn read_state_does_not_follow_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("t");
        fs::write(&target, "x").expect("write");
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        assert!(matches!(
            read_state(&link, 10),
            Err(UnsafeFile::Symlink { .. })
        ));
        assert!(matches!(read_state(&dir.path().join("none"), 10), Ok(None)));
    }
}
