//! Removing an unpacked rootfs in this process: what the helper runs inside
//! its user namespace for [`super::remove`].
//!
//! The tree was made from an image, so it is hostile input too: it is
//! walked with [`fsops::remove_tree`], which opens each directory with
//! `O_NOFOLLOW` relative to its parent's descriptor and unlinks symlinks
//! rather than following them. Nothing outside the rootfs is reached.

use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags, CWD};

use super::fsops;
use super::{Op, RootfsProblem, UnpackError};

/// Removes the directory `rootfs` and everything below it, in this process
/// (inside the helper's user namespace, or as a user who owns every file of
/// it). Missing is fine; a symlink or a file in its place is refused.
pub fn remove_in_place(rootfs: &Path) -> Result<(), UnpackError> {
    let io_err = |op, source| UnpackError::RootfsIo {
        path: rootfs.to_owned(),
        op,
        source,
    };
    let (Some(parent), Some(name)) = (rootfs.parent(), rootfs.file_name()) else {
        return Err(UnpackError::Rootfs {
            path: rootfs.to_owned(),
            problem: RootfsProblem::NoParent,
        });
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let dir = rustix::fs::openat(
        CWD,
        parent,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err(Op::Open, e.into()))?;
    let name = name.as_bytes();
    match fsops::kind_at(dir.as_fd(), name).map_err(|e| io_err(Op::Open, e))? {
        None => Ok(()),
        Some(FileType::Directory) => {
            fsops::remove_tree(dir.as_fd(), name).map_err(|e| io_err(Op::Delete, e))
        }
        Some(_) => Err(UnpackError::Rootfs {
            path: rootfs.to_owned(),
            problem: RootfsProblem::NotDirectory,
        }),
    }
}
