//! Applying layers to the rootfs, entry by entry, in the current process.
//!
//! [`extract`] is what the helper runs inside its user namespace; every
//! file operation goes through [`super::fsops`], which keeps it inside the
//! rootfs. Names are normalized here first: a `..` component or an absolute
//! name is refused before anything is looked up.
//!
//! Whiteouts follow the OCI layer rules: they hide what the layers below
//! put there, never what their own layer adds, wherever in the layer they
//! appear. The paths each layer places (and their parents) are kept in a
//! set for that, so `.wh.NAME` after `NAME/x` in the same layer removes only
//! what lies below, as an opaque directory does.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Gid, Mode, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;
use tar::EntryType;

use super::fsops::{self, Resolve, Root};
use super::{Compression, Layer, Op, Owners, Refusal, UnpackError, UnpackStats};

/// Buffer for copying file content.
const COPY_BUF: usize = 128 << 10;
/// How many skipped xattr names the stats keep.
const SKIPPED_NAMES: usize = 16;

/// Applies `layers` (lowest first) to the empty directory `rootfs` in this
/// process, with `owners` deciding who owns the files. This is the helper's
/// work, public for tests and tools that already run in a suitable user
/// namespace (or as root); daemons call [`super::unpack`].
///
/// Outside a user namespace, setuid bits and file capabilities are set as
/// this process's real ids would set them (as root: effective on the host),
/// so the rootfs must stay where only its owner can reach it.
pub fn extract(
    rootfs: &Path,
    layers: &[Layer],
    owners: Owners,
    sync: bool,
) -> Result<UnpackStats, UnpackError> {
    super::check_media_types(layers)?;
    let rootfs_err = |op, source| UnpackError::RootfsIo {
        path: rootfs.to_owned(),
        op,
        source,
    };
    let root = Root::open(rootfs).map_err(|e| rootfs_err(Op::Open, e))?;
    // A container's `/` must be searchable by its non-root users; a layer's
    // `./` entry may say otherwise.
    rustix::fs::fchmod(root.fd(), Mode::from_raw_mode(0o755))
        .map_err(|e| rootfs_err(Op::Chmod, e.into()))?;
    let mut x = Extractor {
        root,
        meta: MetaWriter {
            owners,
            stats: UnpackStats {
                owners: Some(owners),
                ..UnpackStats::default()
            },
        },
        buf: vec![0; COPY_BUF],
    };
    for layer in layers {
        x.layer(layer)?;
    }
    if sync {
        rustix::fs::syncfs(x.root.fd()).map_err(|e| rootfs_err(Op::Sync, e.into()))?;
    }
    Ok(x.meta.stats)
}

struct Extractor {
    root: Root,
    meta: MetaWriter,
    buf: Vec<u8>,
}

/// Owners, modes and xattrs, and the counts.
struct MetaWriter {
    owners: Owners,
    stats: UnpackStats,
}

/// What one layer has placed so far.
struct LayerState<'a> {
    layer: &'a Layer,
    /// Every path the layer placed, and their parents.
    placed: HashSet<Vec<u8>>,
    /// Directory times, set when the layer is done (placing entries in a
    /// directory changes its mtime).
    dir_times: Vec<(Vec<u8>, Timestamps)>,
}

impl LayerState<'_> {
    /// Records `path` and its parents as placed by this layer.
    fn placed(&mut self, path: &[u8]) {
        let mut p = path;
        while !p.is_empty() && self.placed.insert(p.to_vec()) {
            p = &p[..p.iter().rposition(|&b| b == b'/').unwrap_or(0)];
        }
    }
}

/// The layer and the entry, for errors.
struct Ctx<'a> {
    layer: &'a Layer,
    raw: &'a [u8],
}

impl Ctx<'_> {
    fn entry(&self) -> String {
        String::from_utf8_lossy(self.raw).into_owned()
    }

    fn refuse(&self, reason: Refusal) -> UnpackError {
        UnpackError::Refused {
            layer: self.layer.digest.clone(),
            entry: self.entry(),
            reason,
        }
    }

    fn io(&self, op: Op) -> impl FnOnce(io::Error) -> UnpackError + '_ {
        move |source| UnpackError::Entry {
            layer: self.layer.digest.clone(),
            entry: self.entry(),
            op,
            source,
        }
    }

    fn errno(&self, op: Op) -> impl FnOnce(Errno) -> UnpackError + '_ {
        move |e| self.io(op)(e.into())
    }

    fn resolve(&self, path: &[u8]) -> impl FnOnce(Resolve) -> UnpackError + '_ {
        let path = String::from_utf8_lossy(path).into_owned();
        move |r| match r {
            Resolve::Escapes => self.refuse(Refusal::Escapes { path }),
            Resolve::Io(e) => self.io(Op::Resolve)(e),
        }
    }

    fn read(&self, source: io::Error) -> UnpackError {
        read_err(self.layer, source)
    }
}

fn read_err(layer: &Layer, source: io::Error) -> UnpackError {
    UnpackError::Read {
        layer: layer.digest.clone(),
        path: layer.path.clone(),
        source,
    }
}

/// An entry name with `.` and empty components dropped, joined by `/`;
/// empty for the rootfs itself.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Name {
    path: Vec<u8>,
}

/// Why a name is refused.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum BadName {
    Absolute,
    DotDot,
    Malformed,
}

impl Name {
    pub(super) fn parse(raw: &[u8]) -> Result<Self, BadName> {
        if raw.is_empty() || raw.contains(&0) {
            return Err(BadName::Malformed);
        }
        if raw[0] == b'/' {
            return Err(BadName::Absolute);
        }
        let mut path = Vec::with_capacity(raw.len());
        for c in raw.split(|&b| b == b'/') {
            match c {
                b"" | b"." => {}
                b".." => return Err(BadName::DotDot),
                c => {
                    if !path.is_empty() {
                        path.push(b'/');
                    }
                    path.extend_from_slice(c);
                }
            }
        }
        Ok(Self { path })
    }

    fn split(&self) -> (&[u8], &[u8]) {
        match self.path.iter().rposition(|&b| b == b'/') {
            Some(i) => (&self.path[..i], &self.path[i + 1..]),
            None => (b"", &self.path),
        }
    }

    /// The directory holding it (empty for the rootfs).
    pub(super) fn parent(&self) -> &[u8] {
        self.split().0
    }

    /// Its last component.
    pub(super) fn base(&self) -> &[u8] {
        self.split().1
    }
}

/// An entry's metadata, with PAX records applied.
struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    times: Timestamps,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Meta {
    fn read<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Self> {
        let h = entry.header();
        let mut mtime = Timespec {
            tv_sec: i64::try_from(h.mtime()?).unwrap_or(i64::MAX),
            tv_nsec: 0,
        };
        let mut m = Meta {
            mode: h.mode()? & 0o7777,
            uid: h.uid()?,
            gid: h.gid()?,
            times: Timestamps {
                last_access: mtime,
                last_modification: mtime,
            },
            xattrs: Vec::new(),
        };
        if let Some(pax) = entry.pax_extensions()? {
            for ext in pax {
                let ext = ext?;
                let key = ext.key_bytes();
                let num = || -> io::Result<u64> {
                    std::str::from_utf8(ext.value_bytes())
                        .ok()
                        .and_then(|v| v.trim().parse().ok())
                        .ok_or_else(|| invalid("a PAX uid or gid that is not a number"))
                };
                match key {
                    b"uid" => m.uid = num()?,
                    b"gid" => m.gid = num()?,
                    b"mtime" => mtime = pax_time(ext.value_bytes())?,
                    _ => {
                        if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                            m.xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
                        }
                    }
                }
            }
            m.times = Timestamps {
                last_access: mtime,
                last_modification: mtime,
            };
        }
        Ok(m)
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// A PAX time: `[-]seconds[.fraction]`.
pub(super) fn pax_time(v: &[u8]) -> io::Result<Timespec> {
    let bad = || invalid("a PAX mtime that is not a time");
    let s = std::str::from_utf8(v).map_err(|_| bad())?.trim();
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().map_err(|_| bad())?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let mut nanos: i64 = 0;
    for b in frac.bytes().chain(std::iter::repeat(b'0')).take(9) {
        nanos = nanos * 10 + i64::from(b - b'0');
    }
    Ok(if !neg {
        Timespec {
            tv_sec: secs,
            tv_nsec: nanos,
        }
    } else if nanos == 0 {
        Timespec {
            tv_sec: -secs,
            tv_nsec: 0,
        }
    } else {
        Timespec {
            tv_sec: -secs - 1,
            tv_nsec: 1_000_000_000 - nanos,
        }
    })
}

impl Extractor {
    fn layer(&mut self, layer: &Layer) -> Result<(), UnpackError> {
        let compression = super::compression(layer)?;
        let file = File::open(&layer.path).map_err(|e| read_err(layer, e))?;
        let reader: Box<dyn Read> = match compression {
            Compression::None => Box::new(BufReader::with_capacity(COPY_BUF, file)),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(
                BufReader::with_capacity(COPY_BUF, file),
            )),
            Compression::Zstd => {
                Box::new(zstd::stream::read::Decoder::new(file).map_err(|e| read_err(layer, e))?)
            }
        };
        let mut archive = tar::Archive::new(reader);
        let mut ls = LayerState {
            layer,
            placed: HashSet::new(),
            dir_times: Vec::new(),
        };
        for entry in archive.entries().map_err(|e| read_err(layer, e))? {
            let mut entry = entry.map_err(|e| read_err(layer, e))?;
            self.entry(&mut ls, &mut entry)?;
        }
        // Read to the end, so that gzip and zstd check their trailers.
        io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(|e| read_err(layer, e))?;
        for (path, times) in ls.dir_times.iter().rev() {
            // Gone or replaced by a later entry of the layer: nothing to do.
            if let Ok(fd) = self.root.open_dir(path) {
                let ctx = Ctx { layer, raw: path };
                rustix::fs::futimens(&fd, times).map_err(ctx.errno(Op::SetTimes))?;
            }
        }
        self.meta.stats.layers += 1;
        Ok(())
    }

    fn entry<R: Read>(
        &mut self,
        ls: &mut LayerState<'_>,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), UnpackError> {
        self.meta.stats.entries += 1;
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader) {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let ctx = Ctx {
            layer: ls.layer,
            raw: &raw,
        };
        let name = Name::parse(&raw).map_err(|e| {
            ctx.refuse(match e {
                BadName::Absolute => Refusal::Absolute,
                BadName::DotDot => Refusal::DotDot,
                BadName::Malformed => Refusal::BadName,
            })
        })?;
        if name.base().starts_with(b".wh.") {
            return self.whiteout(ls, &ctx, &name);
        }
        if matches!(kind, EntryType::Char | EntryType::Block) {
            self.meta.stats.devices_skipped += 1;
            return Ok(());
        }
        let meta = Meta::read(entry).map_err(|e| ctx.read(e))?;
        let is_dir = matches!(kind, EntryType::Directory)
            || (matches!(kind, EntryType::Regular) && raw.ends_with(b"/"));
        if name.path.is_empty() {
            return if is_dir {
                self.root_dir(ls, &ctx, &meta)
            } else {
                Err(ctx.refuse(Refusal::ReplacesRoot))
            };
        }
        match kind {
            _ if is_dir => self.dir(ls, &ctx, &name, &meta)?,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.file(&ctx, &name, &meta, entry)?
            }
            EntryType::Symlink => self.symlink(&ctx, &name, &meta, entry)?,
            EntryType::Link => self.hardlink(&ctx, &name, entry)?,
            EntryType::Fifo => self.fifo(&ctx, &name, &meta)?,
            other => return Err(ctx.refuse(Refusal::UnsupportedType(char::from(other.as_byte())))),
        }
        ls.placed(&name.path);
        Ok(())
    }

    /// `./`: the rootfs directory's own mode, xattrs and times (never its
    /// owner, which stays the user).
    fn root_dir(
        &mut self,
        ls: &mut LayerState<'_>,
        ctx: &Ctx<'_>,
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let fd = self.root.fd();
        let mode = self.meta.mode(meta, false);
        rustix::fs::fchmod(fd, mode).map_err(ctx.errno(Op::Chmod))?;
        self.meta.xattrs(ctx, Some(fd), &meta.xattrs)?;
        ls.dir_times.push((Vec::new(), meta.times.clone()));
        self.meta.stats.dirs += 1;
        Ok(())
    }

    fn dir(
        &mut self,
        ls: &mut LayerState<'_>,
        ctx: &Ctx<'_>,
        name: &Name,
        meta: &Meta,
    ) -> Result<(), UnpackError> {
        let mut removed = false;
        let parent = self
            .root
            .dir(name.parent(), true)
            .map_err(ctx.resolve(name.parent()))?
            .ok_or_else(|| ctx.io(Op::Resolve)(Errno::NOENT.into()))?;
        let fd = fsops::make_dir(parent, name.base(), &mut removed).map_err(ctx.io(Op::Create))?;
        self.meta.apply(ctx, fd.as_fd(), meta, false)?;
        if removed {
            self.root.invalidate();
        }
        ls.dir_times.push((name.path.clone(), meta.times.clone()));
        self.meta.stats.dirs += 1;
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        ctx: &Ctx<'_>,
        name: &Name,
        meta: &Meta,
        data: &mut R,
    ) -> Result<(), UnpackError> {
        let mut removed = false;
        let parent = self
            .root
            .dir(name.parent(), true)
            .map_err(ctx.resolve(name.parent()))?
            .ok_or_else(|| ctx.io(Op::Resolve)(Errno::NOENT.into()))?;
        let base = name.base();
        let fd = fsops::replace(parent, base, &mut removed, || {
            fsops::create_file(parent, base)
        })
        .map_err(ctx.io(Op::Create))?;
        let mut file = File::from(fd);
        loop {
            let n = match data.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ctx.read(e)),
            };
            file.write_all(&self.buf[..n]).map_err(ctx.io(Op::Write))?;
            self.meta.stats.bytes += n as u64;
        }
        self.meta.apply(ctx, file.as_fd(), meta, true)?;
        rustix::fs::futimens(&file, &meta.times).map_err(ctx.errno(Op::SetTimes))?;
        if removed {
            self.root.invalidate();
        }
        self.meta.stats.files += 1;
        Ok(())
    }

    fn symlink<R: Read>(
        &mut self,
        ctx: &Ctx<'_>,
        name: &Name,
        meta: &Meta,
        entry: &tar::Entry<'_, R>,
    ) -> Result<(), UnpackError> {
        let target = entry
            .link_name_bytes()
            .ok_or_else(|| ctx.refuse(Refusal::BadName))?
            .into_owned();
        let mut removed = false;
        let parent = self
            .root
            .dir(name.parent(), true)
            .map_err(ctx.resolve(name.parent()))?
            .ok_or_else(|| ctx.io(Op::Resolve)(Errno::NOENT.into()))?;
        let base = name.base();
        fsops::replace(parent, base, &mut removed, || {
            rustix::fs::symlinkat(target.as_slice(), parent, base)
        })
        .map_err(ctx.io(Op::Create))?;
        self.meta.apply_at(ctx, parent, base, meta, None)?;
        if removed {
            self.root.invalidate();
        }
        self.meta.stats.symlinks += 1;
        Ok(())
    }

    fn fifo(&mut self, ctx: &Ctx<'_>, name: &Name, meta: &Meta) -> Result<(), UnpackError> {
        let mut removed = false;
        let parent = self
            .root
            .dir(name.parent(), true)
            .map_err(ctx.resolve(name.parent()))?
            .ok_or_else(|| ctx.io(Op::Resolve)(Errno::NOENT.into()))?;
        let base = name.base();
        fsops::replace(parent, base, &mut removed, || {
            rustix::fs::mknodat(parent, base, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
        })
        .map_err(ctx.io(Op::Create))?;
        let mode = self.meta.mode(meta, false);
        self.meta.apply_at(ctx, parent, base, meta, Some(mode))?;
        if removed {
            self.root.invalidate();
        }
        self.meta.stats.fifos += 1;
        Ok(())
    }

    fn hardlink<R: Read>(
        &mut self,
        ctx: &Ctx<'_>,
        name: &Name,
        entry: &tar::Entry<'_, R>,
    ) -> Result<(), UnpackError> {
        let raw_target = entry
            .link_name_bytes()
            .ok_or_else(|| ctx.refuse(Refusal::BadName))?
            .into_owned();
        let shown = String::from_utf8_lossy(&raw_target).into_owned();
        let target = Name::parse(&raw_target).map_err(|e| {
            let target = shown.clone();
            ctx.refuse(match e {
                BadName::Absolute => Refusal::LinkAbsolute { target },
                BadName::DotDot => Refusal::LinkDotDot { target },
                BadName::Malformed => Refusal::LinkBadName { target },
            })
        })?;
        if target.path.is_empty() {
            return Err(ctx.refuse(Refusal::LinkBadName { target: shown }));
        }
        if target == *name {
            return Ok(());
        }
        let tdir = self
            .root
            .dir(target.parent(), false)
            .map_err(|r| match r {
                Resolve::Escapes => ctx.refuse(Refusal::LinkEscapes {
                    target: shown.clone(),
                }),
                Resolve::Io(e) => ctx.io(Op::Link)(e),
            })?
            .ok_or_else(|| ctx.io(Op::Link)(Errno::NOENT.into()))?
            .try_clone_to_owned()
            .map_err(ctx.io(Op::Link))?;
        let parent = self
            .root
            .dir(name.parent(), true)
            .map_err(ctx.resolve(name.parent()))?
            .ok_or_else(|| ctx.io(Op::Resolve)(Errno::NOENT.into()))?;
        let (tbase, base) = (target.base(), name.base());
        let link = || rustix::fs::linkat(&tdir, tbase, parent, base, AtFlags::empty());
        match link() {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                let same = fsops::same_inode(tdir.as_fd(), tbase, parent, base)
                    .map_err(ctx.io(Op::Link))?;
                if !same {
                    fsops::remove_tree(parent, base).map_err(ctx.io(Op::Remove))?;
                    link().map_err(ctx.errno(Op::Link))?;
                    self.root.invalidate();
                }
            }
            Err(e) => return Err(ctx.errno(Op::Link)(e)),
        }
        self.meta.stats.hardlinks += 1;
        Ok(())
    }

    fn whiteout(
        &mut self,
        ls: &mut LayerState<'_>,
        ctx: &Ctx<'_>,
        name: &Name,
    ) -> Result<(), UnpackError> {
        let base = name.base();
        let dir_path = name.parent();
        if base == b".wh..wh..opq" {
            let dir = self
                .root
                .dir(dir_path, true)
                .map_err(ctx.resolve(dir_path))?
                .ok_or_else(|| ctx.io(Op::Resolve)(Errno::NOENT.into()))?;
            let listing = fsops::reopen_dir(dir).map_err(ctx.io(Op::Remove))?;
            fsops::prune(listing.as_fd(), dir_path, &ls.placed).map_err(ctx.io(Op::Remove))?;
            self.root.invalidate();
            ls.placed(dir_path);
            self.meta.stats.opaque_dirs += 1;
            return Ok(());
        }
        if base.starts_with(b".wh..wh.") {
            // aufs bookkeeping (`.wh..wh.plnk`, …), not a whiteout.
            return Ok(());
        }
        let gone = &base[4..];
        match gone {
            b"" | b"." => return Err(ctx.refuse(Refusal::BadName)),
            b".." => return Err(ctx.refuse(Refusal::DotDot)),
            _ => {}
        }
        let Some(dir) = self
            .root
            .dir(dir_path, false)
            .map_err(ctx.resolve(dir_path))?
        else {
            return Ok(());
        };
        let mut path = dir_path.to_vec();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(gone);
        if !ls.placed.contains(&path) {
            fsops::remove_tree(dir, gone).map_err(ctx.io(Op::Remove))?;
        } else if fsops::kind_at(dir, gone).map_err(ctx.io(Op::Remove))?
            == Some(FileType::Directory)
        {
            // Placed by this very layer: hide only what lies below.
            let sub = rustix::fs::openat(
                dir,
                gone,
                rustix::fs::OFlags::RDONLY
                    | rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::NOFOLLOW
                    | rustix::fs::OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(ctx.errno(Op::Remove))?;
            fsops::prune(sub.as_fd(), &path, &ls.placed).map_err(ctx.io(Op::Remove))?;
        }
        self.root.invalidate();
        self.meta.stats.whiteouts += 1;
        Ok(())
    }
}

impl MetaWriter {
    /// The host-side owner to give an entry, or `None` to leave it the
    /// user's.
    fn owner(&self, ctx: &Ctx<'_>, meta: &Meta) -> Result<Option<(Uid, Gid)>, UnpackError> {
        let Owners::Image { uids, gids } = self.owners else {
            return Ok(None);
        };
        for (kind, id, count) in [("uid", meta.uid, uids), ("gid", meta.gid, gids)] {
            if id >= count {
                return Err(ctx.refuse(Refusal::IdOutOfRange {
                    kind: kind.into(),
                    id,
                    count,
                }));
            }
        }
        // Both fit in u32: they are below counts of mapped u32 ids.
        let (uid, gid) = (meta.uid as u32, meta.gid as u32);
        Ok(Some((Uid::from_raw(uid), Gid::from_raw(gid))))
    }

    /// The mode to set: the image's, except that with [`Owners::Caller`] a
    /// regular file does not keep a setuid (setgid) bit for an owner (group)
    /// that was flattened to the user.
    fn mode(&mut self, meta: &Meta, regular: bool) -> Mode {
        let mut mode = meta.mode;
        if regular && self.owners == Owners::Caller {
            let before = mode;
            if meta.uid != 0 {
                mode &= !0o4000;
            }
            if meta.gid != 0 {
                mode &= !0o2000;
            }
            if mode != before {
                self.stats.setid_bits_dropped += 1;
            }
        }
        Mode::from_raw_mode(mode)
    }

    /// Owner, then mode (a chown clears setuid bits), then xattrs, on an
    /// open file or directory.
    fn apply(
        &mut self,
        ctx: &Ctx<'_>,
        fd: BorrowedFd<'_>,
        meta: &Meta,
        regular: bool,
    ) -> Result<(), UnpackError> {
        if let Some((uid, gid)) = self.owner(ctx, meta)? {
            rustix::fs::fchown(fd, Some(uid), Some(gid)).map_err(ctx.errno(Op::Chown))?;
        }
        let mode = self.mode(meta, regular);
        rustix::fs::fchmod(fd, mode).map_err(ctx.errno(Op::Chmod))?;
        self.xattrs(ctx, Some(fd), &meta.xattrs)
    }

    /// Owner, mode (`None` for a symlink) and times of `name` in `dir`,
    /// which was just created there (so a mode is never set through a
    /// symlink: the helper is the only writer of the rootfs). xattrs cannot
    /// be set without opening the file: they are skipped.
    fn apply_at(
        &mut self,
        ctx: &Ctx<'_>,
        dir: BorrowedFd<'_>,
        name: &[u8],
        meta: &Meta,
        mode: Option<Mode>,
    ) -> Result<(), UnpackError> {
        if let Some((uid, gid)) = self.owner(ctx, meta)? {
            rustix::fs::chownat(dir, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(ctx.errno(Op::Chown))?;
        }
        if let Some(mode) = mode {
            rustix::fs::chmodat(dir, name, mode, AtFlags::empty()).map_err(ctx.errno(Op::Chmod))?;
        }
        self.xattrs(ctx, None, &meta.xattrs)?;
        fsops::set_times_at(dir, name, &meta.times).map_err(ctx.io(Op::SetTimes))
    }

    /// Sets each xattr on `fd`; one the kernel refuses to an unprivileged
    /// user (`trusted.*`, `security.*` other than file capabilities, any on
    /// a symlink or FIFO: `fd` is `None`) is skipped and counted.
    fn xattrs(
        &mut self,
        ctx: &Ctx<'_>,
        fd: Option<BorrowedFd<'_>>,
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<(), UnpackError> {
        for (name, value) in xattrs {
            let r = match fd {
                Some(fd) => rustix::fs::fsetxattr(fd, name.as_slice(), value, XattrFlags::empty()),
                None => Err(Errno::PERM),
            };
            match r {
                Ok(()) => self.stats.xattrs_set += 1,
                Err(
                    Errno::PERM
                    | Errno::ACCESS
                    | Errno::NOTSUP
                    | Errno::INVAL
                    | Errno::TOOBIG
                    | Errno::RANGE,
                ) => {
                    self.stats.xattrs_skipped += 1;
                    let n = String::from_utf8_lossy(name).into_owned();
                    let names = &mut self.stats.skipped_xattr_names;
                    if names.len() < SKIPPED_NAMES && !names.contains(&n) {
                        names.push(n);
                    }
                }
                Err(e) => return Err(ctx.errno(Op::SetXattr)(e)),
            }
        }
        Ok(())
    }
}
