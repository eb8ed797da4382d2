//! Unpacking OCI image layers into a rootfs, safely.
//!
//! [`unpack`] applies an image's layer blobs (plain, gzip or zstd tar, as
//! their media types say), lowest first, to an empty directory: files,
//! directories, symlinks, hard links, FIFOs, modes (setuid and setgid bits as
//! the image says), mtimes and the extended attributes the kernel lets an
//! unprivileged user set. Whiteouts (`.wh.NAME`) delete `NAME` from the
//! layers below; `.wh..wh..opq` makes a directory opaque. Device nodes are
//! never created: they are skipped and counted in [`UnpackStats`].
//!
//! # Containment
//!
//! A layer is hostile input. Every entry is placed through file descriptors
//! anchored at the rootfs: the directory that holds it is opened with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)`,
//! and the entry itself is created with `*at` calls on that directory and a
//! single name component, never following a symlink in the last component
//! (a file entry replaces whatever is there, it never writes through it).
//! So nothing outside the rootfs can be created, changed or removed, and an
//! entry that tries is **refused** with an [`UnpackError::Refused`] naming
//! the layer's digest and the entry:
//!
//! - a name with a `..` component, or an absolute name;
//! - a name whose directories go through a symlink (made by this layer or
//!   an earlier one, directly or through a chain) that leads outside the
//!   rootfs when read as a host path — an absolute symlink, or one that
//!   climbs above the rootfs. Symlinks that stay inside (`lib -> usr/lib`)
//!   are followed, as a container would see them. (Inside the container an
//!   absolute symlink would resolve within the rootfs; refusing to write
//!   through one is stricter than needed, and real layers never do it.)
//! - a hard link whose target is absolute, has a `..` component, or lies
//!   through such a symlink; a whiteout whose name does.
//!
//! A hard link to a symlink links the symlink itself, which stays inside.
//!
//! # Ownership
//!
//! Extraction runs in a child process (`locald internal-unpack`, see
//! [`helper_main`]) inside a new user namespace. When the user has
//! subordinate ids and `newuidmap`/`newgidmap` are installed, the namespace
//! maps the user to 0 and their `/etc/subuid`/`/etc/subgid` ranges to 1 and
//! up, as rootless podman and the shim do, so a file owned by uid N in the
//! image is owned on disk by the user's subordinate id for N
//! ([`Owners::Image`]). Otherwise the namespace maps only the user, every
//! file belongs to the user, and setuid/setgid bits of files the image gives
//! to another id are dropped rather than handed to container root
//! ([`Owners::Caller`]); this is logged once per process. The rootfs
//! directory itself stays owned by the user, as the shim requires.
//!
//! # The caller's part
//!
//! The rootfs is a temporary directory beside the final one: empty or
//! missing, in a parent directory that is owned by the user and closed to
//! group and others (setuid files inside are owned by the user's ids, and
//! nobody else may reach them). The caller renames it into place when
//! [`unpack`] succeeds and removes it when it fails. Blob digests are the
//! caller's to verify; the errors name the layer by digest, and the caller
//! adds the image's name.
//!
//! # Removal
//!
//! A rootfs holds files owned by the user's subordinate ids, which the user
//! cannot remove outside the namespace. [`remove`] removes a whole rootfs
//! through the same helper and namespace; [`remove_in_place`] is what the
//! helper runs. The tree is the image's: it is walked from file descriptors
//! opened with `O_NOFOLLOW`, one name at a time, and symlinks are unlinked,
//! never followed, so nothing outside the rootfs is touched.

mod extract;
mod fsops;
mod helper;
mod idmap;
mod remove;

use std::fmt;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

pub use super::manifest::Compression;
pub use extract::extract;
pub use helper::helper_main;
pub use idmap::{IdMap, IdRange};
pub use remove::remove_in_place;

/// The hidden `locald` subcommand that runs [`helper_main`].
pub const HELPER_SUBCOMMAND: &str = "internal-unpack";

/// One layer blob of an image, as its manifest describes it (the store's
/// [`LayerRef`](super::LayerRef) converts into one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    /// The blob on disk (compressed as `media_type` says).
    #[serde(with = "path_bytes")]
    pub path: PathBuf,
    /// The descriptor's media type, e.g.
    /// `application/vnd.oci.image.layer.v1.tar+gzip`.
    pub media_type: String,
    /// The descriptor's digest, used to name the layer in errors.
    pub digest: String,
}

/// Who owns what [`unpack`] creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Owners {
    /// As the image says, through the user namespace: container uid N is
    /// the user for 0 and their subordinate id for N > 0. Only the first
    /// `uids`/`gids` container ids exist; an entry owned by a larger one is
    /// refused ([`Refusal::IdOutOfRange`]).
    Image {
        /// How many container uids are mapped (1 + subordinate uids).
        uids: u64,
        /// How many container gids are mapped.
        gids: u64,
    },
    /// Everything belongs to the user; setuid/setgid bits of regular files
    /// the image gives to another uid/gid are dropped.
    Caller,
}

/// What to unpack with.
#[derive(Clone, Debug)]
pub struct UnpackOptions {
    /// The `locald` binary, run as `locald internal-unpack` (the daemon
    /// passes its own executable).
    pub helper: PathBuf,
    /// The user's ids and subordinate ranges.
    pub ids: IdMap,
    /// `syncfs` the rootfs before returning, so that a rename into place
    /// after a crash never names half-written files.
    pub sync: bool,
}

impl UnpackOptions {
    /// Options for the current user (their `/etc/subuid` and `/etc/subgid`
    /// ranges), syncing at the end.
    pub fn new(helper: PathBuf) -> Self {
        Self {
            helper,
            ids: IdMap::current_user(),
            sync: true,
        }
    }
}

/// What [`unpack`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnpackStats {
    /// Layers applied.
    pub layers: u64,
    /// Tar entries read (including skipped ones and whiteouts).
    pub entries: u64,
    /// Regular files written.
    pub files: u64,
    /// Directories created or updated.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Hard links created.
    pub hardlinks: u64,
    /// FIFOs created.
    pub fifos: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Character and block devices skipped (never created).
    pub devices_skipped: u64,
    /// `.wh.NAME` whiteouts applied.
    pub whiteouts: u64,
    /// `.wh..wh..opq` opaque directories applied.
    pub opaque_dirs: u64,
    /// Extended attributes set.
    pub xattrs_set: u64,
    /// Extended attributes the kernel would not let us set (`trusted.*`,
    /// some `security.*`, any on a symlink), skipped.
    pub xattrs_skipped: u64,
    /// The distinct names of skipped extended attributes (at most 16).
    pub skipped_xattr_names: Vec<String>,
    /// setuid/setgid bits dropped because the owner was flattened to the
    /// user ([`Owners::Caller`]).
    pub setid_bits_dropped: u64,
    /// Who owns the files.
    pub owners: Option<Owners>,
}

/// Why an entry was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// The name has a `..` component.
    #[error("its name has a `..` component")]
    DotDot,
    /// The name is absolute.
    #[error("its name is absolute")]
    Absolute,
    /// The name is empty, holds a NUL byte, or is a whiteout of nothing.
    #[error("its name is malformed")]
    BadName,
    /// A directory on the way is a symlink leading outside the rootfs (or
    /// a symlink loop).
    #[error("{path:?} leads outside the rootfs through a symbolic link (or loops)")]
    Escapes {
        /// The directory path that escapes.
        path: String,
    },
    /// The entry would replace the rootfs directory itself.
    #[error("it would replace the rootfs directory itself with a non-directory")]
    ReplacesRoot,
    /// A hard link target that is absolute.
    #[error("its hard link target {target:?} is absolute")]
    LinkAbsolute {
        /// The target as written in the layer.
        target: String,
    },
    /// A hard link target with a `..` component.
    #[error("its hard link target {target:?} has a `..` component")]
    LinkDotDot {
        /// The target as written in the layer.
        target: String,
    },
    /// A hard link target that is malformed or the rootfs itself.
    #[error("its hard link target {target:?} is malformed")]
    LinkBadName {
        /// The target as written in the layer.
        target: String,
    },
    /// A hard link target whose directories lead outside the rootfs.
    #[error(
        "its hard link target {target:?} leads outside the rootfs through a symbolic link \
         (or loops)"
    )]
    LinkEscapes {
        /// The target as written in the layer.
        target: String,
    },
    /// An owner beyond the ids mapped for the user.
    #[error(
        "its {kind} {id} is beyond the {count} {kind}s this user can map \
         (their own and their subordinate ids in /etc/sub{kind})"
    )]
    IdOutOfRange {
        /// `uid` or `gid`.
        kind: String,
        /// The id in the image.
        id: u64,
        /// How many ids are mapped.
        count: u64,
    },
    /// A tar entry type locald does not unpack.
    #[error("its tar entry type {0:?} is not supported")]
    UnsupportedType(char),
}

/// What was being done when an I/O error happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Creating a file, directory, symlink or FIFO.
    Create,
    /// Writing file content.
    Write,
    /// Creating a hard link.
    Link,
    /// Removing what an entry replaces or a whiteout deletes.
    Remove,
    /// Opening the directory that holds an entry.
    Resolve,
    /// Setting the owner.
    Chown,
    /// Setting the mode.
    Chmod,
    /// Setting times.
    SetTimes,
    /// Setting an extended attribute.
    SetXattr,
    /// Opening or reading.
    Open,
    /// Syncing the filesystem.
    Sync,
    /// Removing the rootfs and everything in it.
    Delete,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Create => "create it",
            Op::Write => "write it",
            Op::Link => "link it",
            Op::Remove => "remove what it replaces",
            Op::Resolve => "open its directory",
            Op::Chown => "set its owner",
            Op::Chmod => "set its mode",
            Op::SetTimes => "set its times",
            Op::SetXattr => "set an extended attribute",
            Op::Open => "open it",
            Op::Sync => "sync it",
            Op::Delete => "remove it",
        })
    }
}

/// Why the rootfs directory was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RootfsProblem {
    /// It exists and is not an empty directory.
    #[error("it is not an empty directory")]
    NotEmpty,
    /// It exists and is not a directory (or is a symlink).
    #[error("it is not a directory")]
    NotDirectory,
    /// It (or its parent) is owned by someone else.
    #[error("{what} is owned by uid {owner}, not by you (uid {me})")]
    ForeignOwner {
        /// `it` or `its parent`.
        what: String,
        /// Its owner.
        owner: u32,
        /// Our uid.
        me: u32,
    },
    /// Its parent lets group or others in.
    #[error(
        "its parent directory has mode {mode:04o}: group and others must not reach it \
         (the rootfs holds setuid files owned by your ids)"
    )]
    ParentNotPrivate {
        /// The parent's permission bits.
        mode: u32,
    },
    /// It has no parent (it is `/`).
    #[error("it has no parent directory")]
    NoParent,
}

/// Errors from [`unpack`] and [`extract`].
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// An entry would land outside the rootfs, or is otherwise refused;
    /// nothing was done for it.
    #[error("layer {layer}: entry {entry:?} refused: {reason}")]
    Refused {
        /// The layer's digest.
        layer: String,
        /// The entry's name as written in the layer.
        entry: String,
        /// Why.
        reason: Refusal,
    },
    /// Placing an entry failed.
    #[error("layer {layer}: entry {entry:?}: cannot {op}")]
    Entry {
        /// The layer's digest.
        layer: String,
        /// The entry's name as written in the layer.
        entry: String,
        /// What was being done.
        op: Op,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The blob could not be read, or is not a valid compressed tar stream.
    #[error("layer {layer}: cannot read {}", path.display())]
    Read {
        /// The layer's digest.
        layer: String,
        /// The blob.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A media type that is not a layer locald unpacks.
    #[error("layer {layer}: media type {media_type:?} cannot be unpacked: {why}")]
    MediaType {
        /// The layer's digest.
        layer: String,
        /// The media type.
        media_type: String,
        /// Why (from [`manifest::layer_compression`](super::manifest::layer_compression)).
        why: String,
    },
    /// The rootfs directory was refused.
    #[error("rootfs {}: {problem}", path.display())]
    Rootfs {
        /// The rootfs.
        path: PathBuf,
        /// Why.
        problem: RootfsProblem,
    },
    /// The rootfs directory could not be checked, created, opened or synced.
    #[error("rootfs {}: cannot {op}", path.display())]
    RootfsIo {
        /// The rootfs (or its parent).
        path: PathBuf,
        /// What was being done.
        op: Op,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The user namespace for the extraction could not be set up.
    #[error("cannot set up a user namespace for unpacking: {what}")]
    UserNamespace {
        /// What failed (with a tool's own message).
        what: String,
        /// The error, when there is one.
        #[source]
        source: Option<io::Error>,
    },
    /// The helper process could not be run or failed without a report.
    #[error("unpack helper {}: {what}", helper.display())]
    Helper {
        /// The helper binary.
        helper: PathBuf,
        /// What went wrong.
        what: String,
        /// The error, when there is one.
        #[source]
        source: Option<io::Error>,
    },
}

impl UnpackError {
    /// The refusal, when an entry was refused.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            UnpackError::Refused { reason, .. } => Some(reason),
            _ => None,
        }
    }
}

/// Unpacks `layers` (lowest first) into `rootfs`, in a child process inside
/// a user namespace (see the module documentation for what is refused and
/// who owns the result). Blocking: the daemon calls it from a blocking task.
///
/// `rootfs` must be missing (it is created) or an empty directory, in a
/// parent owned by the user that group and others cannot enter. On error it
/// may hold part of the image: the caller removes it.
pub fn unpack(
    rootfs: &Path,
    layers: &[Layer],
    opts: &UnpackOptions,
) -> Result<UnpackStats, UnpackError> {
    check_media_types(layers)?;
    let rootfs = std::path::absolute(rootfs).map_err(|source| UnpackError::RootfsIo {
        path: rootfs.to_owned(),
        op: Op::Open,
        source,
    })?;
    prepare_rootfs(&rootfs)?;
    let plan = opts.ids.plan();
    if let idmap::Plan::CallerOnly { reason } = &plan {
        static SAID: AtomicBool = AtomicBool::new(false);
        if !SAID.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "{reason}: image files will all be owned by you (uid {}), \
                 and setuid/setgid bits of files owned by other ids are dropped",
                opts.ids.uid
            );
        }
    }
    let stats = helper::run(&opts.helper, &rootfs, layers, &plan, opts.sync)?;
    if stats.xattrs_skipped > 0 {
        tracing::info!(
            "{} extended attributes could not be set and were skipped ({})",
            stats.xattrs_skipped,
            stats.skipped_xattr_names.join(", ")
        );
    }
    Ok(stats)
}

/// Removes the rootfs `rootfs` (made by [`unpack`]) and everything in it,
/// in a child process inside the user namespace its files were made in (see
/// the module documentation). Blocking. A missing rootfs is not an error.
///
/// `rootfs` must be a directory of the user's (not a symlink) in a parent
/// owned by the user that group and others cannot enter, as [`unpack`]
/// requires.
pub fn remove(rootfs: &Path, opts: &UnpackOptions) -> Result<(), UnpackError> {
    let rootfs = std::path::absolute(rootfs).map_err(|source| UnpackError::RootfsIo {
        path: rootfs.to_owned(),
        op: Op::Open,
        source,
    })?;
    let me = rustix::process::geteuid().as_raw();
    match std::fs::symlink_metadata(&rootfs) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(UnpackError::RootfsIo {
                path: rootfs,
                op: Op::Open,
                source,
            })
        }
        Ok(m) if !m.is_dir() => {
            return Err(UnpackError::Rootfs {
                path: rootfs,
                problem: RootfsProblem::NotDirectory,
            })
        }
        Ok(m) if m.uid() != me => {
            return Err(UnpackError::Rootfs {
                path: rootfs,
                problem: RootfsProblem::ForeignOwner {
                    what: "it".into(),
                    owner: m.uid(),
                    me,
                },
            })
        }
        Ok(_) => {}
    }
    check_parent(&rootfs)?;
    helper::run_remove(&opts.helper, &rootfs, &opts.ids.plan())
}

/// Checks that the parent of `rootfs` is ours and closed to group and
/// others.
fn check_parent(rootfs: &Path) -> Result<(), UnpackError> {
    let refuse = |problem| UnpackError::Rootfs {
        path: rootfs.to_owned(),
        problem,
    };
    let me = rustix::process::geteuid().as_raw();
    let parent = rootfs
        .parent()
        .ok_or_else(|| refuse(RootfsProblem::NoParent))?;
    let pm = std::fs::metadata(parent).map_err(|source| UnpackError::RootfsIo {
        path: parent.to_owned(),
        op: Op::Open,
        source,
    })?;
    if pm.uid() != me {
        return Err(refuse(RootfsProblem::ForeignOwner {
            what: "its parent".into(),
            owner: pm.uid(),
            me,
        }));
    }
    if pm.mode() & 0o011 != 0 {
        return Err(refuse(RootfsProblem::ParentNotPrivate {
            mode: pm.mode() & 0o7777,
        }));
    }
    Ok(())
}

/// How a layer is compressed, by the media-type rules fetching applies
/// (`manifest::layer_compression`), or why it cannot be unpacked.
fn compression(l: &Layer) -> Result<Compression, UnpackError> {
    let media_type = oci_spec::image::MediaType::from(l.media_type.as_str());
    super::manifest::layer_compression(&l.digest, &media_type).map_err(|e| UnpackError::MediaType {
        layer: l.digest.clone(),
        media_type: l.media_type.clone(),
        why: match e {
            super::manifest::ManifestError::Layer { why, .. } => why.to_string(),
            other => other.to_string(),
        },
    })
}

/// Refuses a layer whose media type cannot be unpacked, before anything is
/// touched.
fn check_media_types(layers: &[Layer]) -> Result<(), UnpackError> {
    layers.iter().try_for_each(|l| compression(l).map(|_| ()))
}

impl From<&super::LayerRef> for Layer {
    fn from(l: &super::LayerRef) -> Self {
        Layer {
            path: l.blob_path.clone(),
            media_type: l.media_type.to_string(),
            digest: l.digest.to_string(),
        }
    }
}

/// Checks the parent of `rootfs` is ours and private, and that `rootfs` is
/// an empty directory of ours (creating it when missing).
fn prepare_rootfs(rootfs: &Path) -> Result<(), UnpackError> {
    let refuse = |problem| UnpackError::Rootfs {
        path: rootfs.to_owned(),
        problem,
    };
    let io_err = |path: &Path, op, source| UnpackError::RootfsIo {
        path: path.to_owned(),
        op,
        source,
    };
    let me = rustix::process::geteuid().as_raw();
    check_parent(rootfs)?;
    match std::fs::symlink_metadata(rootfs) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .mode(0o755)
            .create(rootfs)
            .map_err(|e| io_err(rootfs, Op::Create, e)),
        Err(e) => Err(io_err(rootfs, Op::Open, e)),
        Ok(m) if !m.is_dir() => Err(refuse(RootfsProblem::NotDirectory)),
        Ok(m) if m.uid() != me => Err(refuse(RootfsProblem::ForeignOwner {
            what: "it".into(),
            owner: m.uid(),
            me,
        })),
        Ok(_) => {
            let mut rd = std::fs::read_dir(rootfs).map_err(|e| io_err(rootfs, Op::Open, e))?;
            match rd.next() {
                None => Ok(()),
                Some(_) => Err(refuse(RootfsProblem::NotEmpty)),
            }
        }
    }
}

/// Paths as their bytes on the wire to the helper (a JSON array), so that a
/// path that is not UTF-8 still round-trips.
mod path_bytes {
    use std::ffi::OsString;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::path::{Path, PathBuf};

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(p.as_os_str().as_bytes())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        Ok(OsString::from_vec(Vec::<u8>::deserialize(d)?).into())
    }
}

#[cfg(test)]
mod tests;
