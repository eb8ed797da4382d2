//! The bundle on disk: reading the caller's `config.json` and opening the
//! rootfs and bind-mount sources *as the caller*, then staging them in a
//! root-owned directory the caller cannot write.
//!
//! Everything the caller named is opened once, with the caller's filesystem
//! ids, and from then on used only through the open fd: the rootfs and bind
//! sources are bind-mounted from `/proc/self/fd/N` into the staging directory
//! inside the shim's private mount namespace, and runc is pointed at those
//! staged paths. Swapping a file or symlink in the caller's bundle after the
//! check therefore changes nothing.

use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::ShimError;
use crate::id::ContainerId;
use crate::policy::{self, BindRequest, Caller, FileFacts, FileKind, Violation, MAX_CONFIG_BYTES};
use crate::sys::{self, AsCaller};

/// Where all per-caller state lives.
pub const STATE_ROOT: &str = "/run/locald-shim";

/// The caller's state directories.
#[derive(Clone, Debug)]
pub struct StateDirs {
    /// `/run/locald-shim/<uid>`.
    pub user: PathBuf,
    /// runc's `--root`: `/run/locald-shim/<uid>/runc`.
    pub runc_root: PathBuf,
    /// Staged bundles: `/run/locald-shim/<uid>/bundles`.
    pub bundles: PathBuf,
}

impl StateDirs {
    /// The directories for `uid` (not created).
    pub fn for_uid(uid: u32) -> Self {
        let user = Path::new(STATE_ROOT).join(uid.to_string());
        Self {
            runc_root: user.join("runc"),
            bundles: user.join("bundles"),
            user,
        }
    }

    /// Create (or check) every directory: root-owned, not writable by
    /// anyone else. The traversable ones are 0711 because runc's init, which
    /// runs as the caller's mapped uid inside the user namespace, must reach
    /// the staged rootfs.
    pub fn ensure(&self) -> Result<(), ShimError> {
        ensure_root_dir(Path::new(STATE_ROOT), 0o711)?;
        ensure_root_dir(&self.user, 0o711)?;
        ensure_root_dir(&self.runc_root, 0o700)?;
        ensure_root_dir(&self.bundles, 0o711)?;
        Ok(())
    }

    /// The staging directory of one container.
    pub fn bundle(&self, id: &ContainerId) -> PathBuf {
        self.bundles.join(id.as_str())
    }

    /// Whether runc has state for `id` under this caller's root.
    pub fn runc_has(&self, id: &ContainerId) -> bool {
        fs::symlink_metadata(self.runc_root.join(id.as_str())).is_ok()
    }
}

/// Make `path` a root-owned directory with exactly `mode`, refusing anything
/// already there that is not one (a symlink, a file, another owner).
pub fn ensure_root_dir(path: &Path, mode: u32) -> Result<(), ShimError> {
    match fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(ShimError::io("create directory", path)(e)),
    }
    let meta = fs::symlink_metadata(path).map_err(ShimError::io("stat", path))?;
    if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(ShimError::Unsafe {
            path: path.into(),
            message: "must be a directory owned by root and writable by root only".into(),
        });
    }
    if meta.gid() != 0 {
        std::os::unix::fs::lchown(path, Some(0), Some(0)).map_err(ShimError::io("chown", path))?;
    }
    if meta.mode() & 0o7777 != mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(ShimError::io("chmod", path))?;
    }
    Ok(())
}

/// The caller's bundle directory, opened as the caller.
pub struct CallerBundle {
    dir: OwnedFd,
    /// The raw bytes of `config.json`.
    pub config: Vec<u8>,
}

/// An opened host path with the facts the policy judges.
pub struct Opened {
    fd: OwnedFd,
    /// Facts about what was opened.
    pub facts: FileFacts,
}

fn refuse(field: &str, message: String) -> ShimError {
    ShimError::Refused(policy::Refusal(vec![Violation {
        field: field.into(),
        message,
    }]))
}

/// Open the bundle directory and read `config.json`, as the caller. Neither
/// may be a symlink and both must belong to the caller.
pub fn read_bundle(bundle: &Path, caller: &Caller) -> Result<CallerBundle, ShimError> {
    let _as = AsCaller::enter(caller.uid, caller.gid).map_err(ShimError::io("setfsuid", bundle))?;
    let dir = sys::openat(
        None,
        bundle,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
    )
    .map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::ENOTDIR) => refuse(
            "bundle",
            format!(
                "{} is a symlink or not a directory: the bundle must be a real directory",
                bundle.display()
            ),
        ),
        _ => refuse(
            "bundle",
            format!("cannot open {} as you: {e}", bundle.display()),
        ),
    })?;
    let st = sys::fstat(dir.as_fd()).map_err(ShimError::io("stat", bundle))?;
    if st.st_uid != caller.uid {
        return Err(refuse(
            "bundle",
            format!(
                "{} is owned by uid {}, not by you ({})",
                bundle.display(),
                st.st_uid,
                caller.uid
            ),
        ));
    }
    let file = sys::openat(
        Some(dir.as_fd()),
        Path::new("config.json"),
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
    )
    .map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) => refuse(
            "config.json",
            "is a symlink: it must be a regular file in the bundle".into(),
        ),
        _ => refuse("config.json", format!("cannot open as you: {e}")),
    })?;
    let st = sys::fstat(file.as_fd()).map_err(ShimError::io("stat", "config.json"))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(refuse("config.json", "is not a regular file".into()));
    }
    if st.st_uid != caller.uid {
        return Err(refuse(
            "config.json",
            format!("is owned by uid {}, not by you ({})", st.st_uid, caller.uid),
        ));
    }
    let mut config = Vec::new();
    fs::File::from(file)
        .take(MAX_CONFIG_BYTES as u64 + 1)
        .read_to_end(&mut config)
        .map_err(ShimError::io("read", "config.json"))?;
    Ok(CallerBundle { dir, config })
}

fn kind_of(mode: u32) -> FileKind {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileKind::Directory,
        libc::S_IFREG => FileKind::Regular,
        libc::S_IFSOCK => FileKind::Socket,
        libc::S_IFBLK | libc::S_IFCHR => FileKind::Device,
        libc::S_IFIFO => FileKind::Fifo,
        _ => FileKind::Other,
    }
}

/// Open `path` (relative to `dir` or absolute) with `O_PATH` as the caller
/// and collect its facts. Symlinks are followed with the caller's rights,
/// which can reach only what the caller could reach anyway; the result is
/// then judged by what it *is*, not by the name.
fn open_as_caller(dir: Option<&OwnedFd>, path: &Path, caller: &Caller) -> io::Result<Opened> {
    let _as = AsCaller::enter(caller.uid, caller.gid)?;
    let fd = sys::openat(dir.map(|d| d.as_fd()), path, libc::O_PATH)?;
    let st = sys::fstat(fd.as_fd())?;
    let kind = kind_of(st.st_mode);
    // Prove read access by reopening the very inode for reading; only for
    // directories and regular files, where opening has no side effects.
    let caller_can_read = match kind {
        FileKind::Directory => sys::openat(
            Some(fd.as_fd()),
            Path::new("."),
            libc::O_RDONLY | libc::O_DIRECTORY,
        )
        .is_ok(),
        FileKind::Regular => sys::openat(
            None,
            &sys::proc_fd(fd.as_fd()),
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
        )
        .is_ok(),
        _ => false,
    };
    let canonical = sys::fd_path(fd.as_fd())?;
    Ok(Opened {
        facts: FileFacts {
            kind,
            uid: st.st_uid,
            dev_ino: (st.st_dev, st.st_ino),
            canonical,
            caller_can_read,
        },
        fd,
    })
}

/// Device and inode of the host's `/`.
pub fn host_root() -> Result<(u64, u64), ShimError> {
    let m = fs::metadata("/").map_err(ShimError::io("stat", "/"))?;
    Ok((m.dev(), m.ino()))
}

/// Open and judge the rootfs named by `root.path`.
pub fn open_rootfs(
    bundle: &CallerBundle,
    path: &Path,
    caller: &Caller,
) -> Result<Opened, ShimError> {
    let opened = open_as_caller(Some(&bundle.dir), path, caller).map_err(|e| {
        refuse(
            "root.path",
            format!("cannot open rootfs {} as you: {e}", path.display()),
        )
    })?;
    policy::check_rootfs(path, &opened.facts, host_root()?, caller)
        .map_err(|v| ShimError::Refused(policy::Refusal(vec![v])))?;
    Ok(opened)
}

/// Open and judge every bind source; all violations are reported together.
pub fn open_binds(binds: &[BindRequest], caller: &Caller) -> Result<Vec<Opened>, ShimError> {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for b in binds {
        match open_as_caller(None, &b.source, caller) {
            Ok(o) => match policy::check_bind_source(b, &o.facts, caller) {
                Ok(()) => out.push(o),
                Err(v) => bad.push(v),
            },
            Err(e) => bad.push(Violation {
                field: format!("mounts[{}].source", b.index),
                message: format!(
                    "bind mount source {} cannot be accessed by you: {e}",
                    b.source.display()
                ),
            }),
        }
    }
    if bad.is_empty() {
        Ok(out)
    } else {
        Err(ShimError::Refused(policy::Refusal(bad)))
    }
}

/// A container's staging directory with what the shim put in it.
pub struct Staged {
    /// The directory: `/run/locald-shim/<uid>/bundles/<id>`.
    pub dir: PathBuf,
    /// Where the rootfs is mounted.
    pub rootfs: PathBuf,
    /// Where each bind source is mounted, in request order.
    pub binds: Vec<PathBuf>,
}

/// Create the staging directory (which must not exist yet: that is the
/// per-id lock) and mount the opened rootfs and bind sources into it.
/// Must run inside the shim's private mount namespace.
pub fn stage(dir: &Path, rootfs: &Opened, binds: &[Opened]) -> Result<Staged, ShimError> {
    let staged = Staged {
        dir: dir.to_path_buf(),
        rootfs: dir.join("rootfs"),
        binds: (0..binds.len())
            .map(|i| dir.join("mnt").join(i.to_string()))
            .collect(),
    };
    let mk = |p: &Path| {
        fs::DirBuilder::new()
            .mode(0o711)
            .create(p)
            .map_err(ShimError::io("create directory", p))
    };
    mk(&staged.rootfs)?;
    sys::bind_mount_fd(rootfs.fd.as_fd(), &staged.rootfs)
        .map_err(ShimError::io("bind-mount rootfs onto", &staged.rootfs))?;
    if !binds.is_empty() {
        mk(&dir.join("mnt"))?;
    }
    for (o, target) in binds.iter().zip(&staged.binds) {
        if o.facts.kind == FileKind::Directory {
            mk(target)?;
        } else {
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(target)
                .map_err(ShimError::io("create mount point", target))?;
        }
        sys::bind_mount_fd(o.fd.as_fd(), target)
            .map_err(ShimError::io("bind-mount onto", target))?;
    }
    Ok(staged)
}

/// Remove a staging directory without ever recursing into a mount: unmount
/// each known entry, then `rmdir`/`unlink` it. Only names the shim itself
/// creates are touched, in a directory only root can write.
pub fn remove_staging(dir: &Path) -> Result<(), ShimError> {
    if fs::symlink_metadata(dir).is_err() {
        return Ok(());
    }
    let ignore_missing = |r: io::Result<()>, what: &'static str, p: &Path| match r {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ShimError::io(what, p)(e)),
        _ => Ok(()),
    };
    let cfg = dir.join("config.json");
    ignore_missing(fs::remove_file(&cfg), "remove", &cfg)?;
    let mnt = dir.join("mnt");
    if let Ok(entries) = fs::read_dir(&mnt) {
        for e in entries.flatten() {
            let p = e.path();
            sys::umount_detach(&p).map_err(ShimError::io("unmount", &p))?;
            let is_dir = fs::symlink_metadata(&p)
                .map(|m| m.is_dir())
                .unwrap_or(false);
            let r = if is_dir {
                fs::remove_dir(&p)
            } else {
                fs::remove_file(&p)
            };
            ignore_missing(r, "remove", &p)?;
        }
        ignore_missing(fs::remove_dir(&mnt), "remove", &mnt)?;
    }
    let rootfs = dir.join("rootfs");
    sys::umount_detach(&rootfs).map_err(ShimError::io("unmount", &rootfs))?;
    ignore_missing(fs::remove_dir(&rootfs), "remove", &rootfs)?;
    ignore_missing(fs::remove_dir(dir), "remove", dir)?;
    Ok(())
}

/// Write the sanitized config, root-owned and readable by root only.
pub fn write_config(dir: &Path, spec: &oci_spec::runtime::Spec) -> Result<(), ShimError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("config.json");
    let json = serde_json::to_vec_pretty(spec).map_err(|e| ShimError::Unsafe {
        path: path.clone(),
        message: format!("cannot serialize the sanitized spec: {e}"),
    })?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(ShimError::io("create", &path))?;
    f.write_all(&json).map_err(ShimError::io("write", &path))?;
    f.sync_all().map_err(ShimError::io("sync", &path))?;
    Ok(())
}
