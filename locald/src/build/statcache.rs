//! The stat cache: `stat` data per file → content hash, so a file that did
//! not change is not read again (what git's index does for `git status`).
//!
//! An entry is trusted when the file's size, mtime, ctime, inode and mode
//! are exactly what they were when it was hashed. That alone is not enough
//! on filesystems whose timestamps are coarser than the time between two
//! writes: a file hashed and then rewritten within the same tick keeps its
//! stat data but not its contents. This is git's "racy git" problem, and
//! the rule is git's too: an entry whose mtime or ctime is not strictly
//! older than the cache's stamp is not trusted, and the file is re-hashed
//! on the next check. The stamp is the filesystem's own clock (the mtime of
//! a file written just before the scan starts), so it has the same
//! granularity as the timestamps it is compared with, and it is taken
//! before any file is read, which closes the window between hashing a file
//! and writing the cache.
//!
//! # Format
//!
//! One file per service under `.locald/state/`, written to a temporary file
//! and renamed into place. It is a plain little-endian binary format rather
//! than bincode or postcard: the fields are fixed-width so loading is one
//! read and a linear scan with no varint decoding, the format is versioned
//! by its magic instead of by a dependency's release, and it costs no new
//! crate. A BLAKE3 of the body at the end turns a damaged file into an
//! empty cache (everything is re-hashed once) rather than wrong answers,
//! which is also why the cache is not fsynced: it is a hint.
//!
//! ```text
//! magic "LDSTAT\0\x02" | stamp: i64 sec, u32 nsec | count: u64
//! count × { path_len: u32, path, stat, digest: [u8; 32] }     (path order)
//! walk: u8 (0: none) | fingerprint: [u8; 32]
//!       dirs: u64 × { path_len: u32, path, stat }
//!       aux:  u64 × { path_len: u32, path, present: u8, stat }
//! blake3(everything above): [u8; 32]
//!
//! stat = size: u64, mtime: i64 sec + u32 nsec, ctime: i64 sec + u32 nsec,
//!        inode: u64, mode: u32
//! ```
//!
//! # The walk record
//!
//! Besides files, the cache remembers what decided *which* files there are
//! (see [`WalkRecord`]): the stat data of every directory the last full walk
//! entered and of every file the ignore rules came from (present or
//! absent). When none of those changed, no entry was added, removed or
//! renamed anywhere and no ignore rule changed, so the next check can skip
//! reading directories and matching ignore rules and only `stat` the known
//! files, in parallel, as `git status` does with its index. Directories
//! follow the same racy rule as files: one changed at or after the stamp
//! forces a full walk.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{BuildError, Digest};
use crate::fsutil::{work_dir, SafeDir};

const MAGIC: &[u8; 8] = b"LDSTAT\0\x02";

/// How far back the stamp goes when the filesystem's clock cannot be read:
/// longer than any filesystem's timestamp granularity in practice (FAT has
/// two seconds), so files written just before a scan are never trusted.
const FALLBACK_MARGIN: Duration = Duration::from_secs(2);

/// A file timestamp, as `stat` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Seconds since the epoch.
    pub sec: i64,
    /// Nanoseconds within the second.
    pub nsec: u32,
}

impl Timestamp {
    fn from_system(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp {
                sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nsec: d.subsec_nanos(),
            },
            Err(_) => Timestamp { sec: 0, nsec: 0 },
        }
    }
}

/// The `stat` data an entry is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatKey {
    /// Size in bytes.
    pub size: u64,
    /// Last modification.
    pub mtime: Timestamp,
    /// Last status change; catches changes that set mtime back.
    pub ctime: Timestamp,
    /// Inode; catches a file replaced by rename with the same times.
    pub ino: u64,
    /// Mode bits, type included.
    pub mode: u32,
}

impl StatKey {
    /// Stands for "no such file" in the encoding; never compared.
    const ABSENT: StatKey = StatKey {
        size: 0,
        mtime: Timestamp { sec: 0, nsec: 0 },
        ctime: Timestamp { sec: 0, nsec: 0 },
        ino: 0,
        mode: 0,
    };

    /// Takes the fields from a raw `lstat` result.
    pub fn from_stat(st: &libc::stat) -> Self {
        StatKey {
            size: u64::try_from(st.st_size).unwrap_or(0),
            mtime: Timestamp {
                sec: st.st_mtime,
                nsec: u32::try_from(st.st_mtime_nsec).unwrap_or(0),
            },
            ctime: Timestamp {
                sec: st.st_ctime,
                nsec: u32::try_from(st.st_ctime_nsec).unwrap_or(0),
            },
            ino: st.st_ino,
            mode: st.st_mode,
        }
    }

    /// Takes the fields from `lstat` data.
    pub fn from_metadata(m: &fs::Metadata) -> Self {
        StatKey {
            size: m.size(),
            mtime: Timestamp {
                sec: m.mtime(),
                nsec: u32::try_from(m.mtime_nsec()).unwrap_or(0),
            },
            ctime: Timestamp {
                sec: m.ctime(),
                nsec: u32::try_from(m.ctime_nsec()).unwrap_or(0),
            },
            ino: m.ino(),
            mode: m.mode(),
        }
    }
}

/// Stat data → content hash, loaded from and saved to one file.
///
/// The file's bytes are kept as loaded (one allocation however many files)
/// and read in order by a scan, which merges them with its own sorted list.
#[derive(Debug, Default)]
pub struct StatCache {
    path: Option<PathBuf>,
    /// Entries are trusted only if their file is strictly older than this.
    stamp: Option<Timestamp>,
    /// The encoded file (see the module docs), checksum included.
    data: Vec<u8>,
    /// Number of entries in `data`.
    count: usize,
    /// Where the entries end in `data` (the walk record follows).
    entries_end: usize,
    walk: Option<WalkRecord>,
    dirty: bool,
}

impl StatCache {
    /// A cache that is never saved; every file is hashed on the first scan.
    pub fn in_memory() -> Self {
        StatCache::default()
    }

    /// Loads the cache at `path`. A missing, unreadable or damaged file
    /// gives an empty cache (which costs one full hash, never a wrong one).
    pub fn load(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let mut cache = StatCache {
            path: Some(path.clone()),
            ..StatCache::default()
        };
        match read_cache(&path) {
            Ok(Some(data)) => match check(&data) {
                Some(Checked {
                    stamp,
                    count,
                    entries_end,
                    walk,
                }) => {
                    cache.stamp = Some(stamp);
                    cache.count = count;
                    cache.entries_end = entries_end;
                    cache.walk = walk;
                    cache.data = data;
                }
                None => {
                    tracing::warn!(path = %path.display(), "stat cache is damaged; hashing everything once");
                    cache.dirty = true;
                }
            },
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %crate::error_chain(&e), "cannot read the stat cache; hashing everything once");
            }
        }
        cache
    }

    /// Where it is saved, if anywhere.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.count
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The stamp the entries are judged against (`None` before the first
    /// scan).
    pub fn stamp(&self) -> Option<Timestamp> {
        self.stamp
    }

    /// Something changed since it was loaded or saved.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Every entry, in the order they were stored (path order, as
    /// [`crate::build::hash::hash_tree`] stores them).
    pub fn entries(&self) -> Entries<'_> {
        let start = MAGIC.len() + 12 + 8;
        let end = self.entries_end;
        Entries {
            data: self.data.get(..end).unwrap_or_default(),
            off: start.min(end),
        }
    }

    /// What the last full walk saw, if it was recorded.
    pub fn walk(&self) -> Option<&WalkRecord> {
        self.walk.as_ref()
    }

    /// Whether an entry stored with `cached` stat data may stand for a file
    /// whose stat data is now `now`: they are equal, and the file is not
    /// racy (both its times are strictly older than the stamp).
    pub fn unchanged(&self, cached: &StatKey, now: &StatKey) -> bool {
        self.stamp
            .is_some_and(|stamp| cached == now && trusted(now, stamp))
    }

    /// The cached digest for `path` if its stat data is unchanged and not
    /// racy. A linear search: for tests and one-off questions; a scan
    /// merges with [`StatCache::entries`] instead.
    pub fn lookup(&self, path: &[u8], key: &StatKey) -> Option<Digest> {
        self.entries()
            .find(|(p, _, _)| *p == path)
            .filter(|(_, k, _)| self.unchanged(k, key))
            .map(|(_, _, d)| d)
    }

    /// Reads the filesystem's clock for a scan about to start, by writing a
    /// small file next to the cache and reading back its mtime.
    pub fn begin_scan(&mut self) -> Timestamp {
        let fallback = || Timestamp::from_system(SystemTime::now() - FALLBACK_MARGIN);
        let Some(path) = &self.path else {
            return fallback();
        };
        let mut clock = path.clone().into_os_string();
        clock.push(".clock");
        match fs_clock(Path::new(&clock)) {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(error = %crate::error_chain(&e), "cannot read the filesystem clock; using the system clock");
                fallback()
            }
        }
    }

    /// Whether a scan that saw `files` files, `hits` of them from the cache,
    /// changes the cache. It does not when every file came from the cache
    /// and none disappeared, so a no-op check writes nothing.
    pub fn would_change(&self, files: usize, hits: usize) -> bool {
        !(hits == files && hits == self.count)
    }

    /// Replaces the entries with what a scan that started at `stamp` saw,
    /// `(path, stat, digest)` per file in path order. Entries for files the
    /// scan did not see are dropped. `walk` replaces the walk record when
    /// the scan walked; `None` keeps the current one (the scan verified it).
    pub fn replace<'a>(
        &mut self,
        stamp: Timestamp,
        fresh: impl ExactSizeIterator<Item = (&'a [u8], &'a StatKey, Digest)>,
        walk: Option<WalkRecord>,
    ) {
        if walk.is_some() {
            self.walk = walk;
        }
        self.count = fresh.len();
        let (data, entries_end) = encode(stamp, fresh, self.walk.as_ref());
        self.data = data;
        self.entries_end = entries_end;
        self.stamp = Some(stamp);
        self.dirty = true;
    }

    /// Writes the cache if it changed: a temporary file, then a rename.
    pub fn save(&mut self) -> Result<(), BuildError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if !self.dirty || self.stamp.is_none() {
            return Ok(());
        }
        let (dir, name) = dir_of(path, true)?;
        dir.write_atomic(name, &self.data, false)
            .map_err(|e| BuildError::io("cannot write", path, e))?;
        self.dirty = false;
        Ok(())
    }
}

/// The racy-git rule: both times strictly older than the stamp.
fn trusted(key: &StatKey, stamp: Timestamp) -> bool {
    key.mtime < stamp && key.ctime < stamp
}

/// The directory of a cache file, opened as everything under `.locald/`
/// is ([`work_dir`]), and the file's name in it.
fn dir_of(path: &Path, create: bool) -> Result<(SafeDir, &OsStr), BuildError> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(BuildError::io(
            "cannot open",
            path,
            io::ErrorKind::InvalidInput.into(),
        ));
    };
    let dir = work_dir(parent, create)?
        .ok_or_else(|| BuildError::io("cannot open", parent, io::ErrorKind::NotFound.into()))?;
    Ok((dir, name))
}

fn read_cache(path: &Path) -> Result<Option<Vec<u8>>, BuildError> {
    let (dir, name) = match dir_of(path, false) {
        Ok(d) => d,
        Err(BuildError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    Ok(dir.read(name, "a stat cache", CACHE_LIMIT)?)
}

fn fs_clock(path: &Path) -> Result<Timestamp, BuildError> {
    let (dir, name) = dir_of(path, true)?;
    let mut f = dir.open_rw(name)?;
    let m = (|| {
        f.set_len(0)?;
        f.write_all(b"x")?;
        f.metadata()
    })()
    .map_err(|e| BuildError::io("cannot write", path, e))?;
    Ok(Timestamp {
        sec: m.mtime(),
        nsec: u32::try_from(m.mtime_nsec()).unwrap_or(0),
    })
}

/// The size limit for a stat cache file (~100 bytes a file).
const CACHE_LIMIT: u64 = 1 << 30;

fn put_ts(out: &mut Vec<u8>, t: Timestamp) {
    out.extend_from_slice(&t.sec.to_le_bytes());
    out.extend_from_slice(&t.nsec.to_le_bytes());
}

/// Bytes of a record after its path.
const FIXED: usize = 8 + 12 + 12 + 8 + 4 + 32;

fn put_key(out: &mut Vec<u8>, key: &StatKey) {
    out.extend_from_slice(&key.size.to_le_bytes());
    put_ts(out, key.mtime);
    put_ts(out, key.ctime);
    out.extend_from_slice(&key.ino.to_le_bytes());
    out.extend_from_slice(&key.mode.to_le_bytes());
}

fn put_path(out: &mut Vec<u8>, p: &[u8]) {
    out.extend_from_slice(&(p.len() as u32).to_le_bytes());
    out.extend_from_slice(p);
}

/// Encodes a cache; also returns where the entries end.
fn encode<'a>(
    stamp: Timestamp,
    entries: impl ExactSizeIterator<Item = (&'a [u8], &'a StatKey, Digest)>,
    walk: Option<&WalkRecord>,
) -> (Vec<u8>, usize) {
    let n = entries.len();
    let mut out = Vec::with_capacity(60 + n * (FIXED + 4 + 48));
    out.extend_from_slice(MAGIC);
    put_ts(&mut out, stamp);
    out.extend_from_slice(&(n as u64).to_le_bytes());
    for (p, key, digest) in entries {
        put_path(&mut out, p);
        put_key(&mut out, key);
        out.extend_from_slice(&digest.0);
    }
    let entries_end = out.len();
    match walk {
        None => out.push(0),
        Some(w) => {
            out.push(1);
            out.extend_from_slice(&w.fingerprint.0);
            out.extend_from_slice(&(w.dirs.len() as u64).to_le_bytes());
            for (p, key) in &w.dirs {
                put_path(&mut out, p);
                put_key(&mut out, key);
            }
            out.extend_from_slice(&(w.aux.len() as u64).to_le_bytes());
            for (p, aux) in &w.aux {
                put_path(&mut out, p.as_os_str().as_bytes());
                match aux {
                    Aux::Absent => {
                        out.push(0);
                        put_key(&mut out, &StatKey::ABSENT);
                    }
                    Aux::Exact(k) => {
                        out.push(1);
                        put_key(&mut out, k);
                    }
                    Aux::Exists(kind) => {
                        out.push(2);
                        put_key(
                            &mut out,
                            &StatKey {
                                mode: *kind,
                                ..StatKey::ABSENT
                            },
                        );
                    }
                }
            }
        }
    }
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    (out, entries_end)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes(N)?.try_into().ok()
    }
    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }
    fn ts(&mut self) -> Option<Timestamp> {
        Some(Timestamp {
            sec: self.array().map(i64::from_le_bytes)?,
            nsec: self.u32()?,
        })
    }
    fn key(&mut self) -> Option<StatKey> {
        Some(StatKey {
            size: self.u64()?,
            mtime: self.ts()?,
            ctime: self.ts()?,
            ino: self.u64()?,
            mode: self.u32()?,
        })
    }
    fn path(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        self.bytes(len)
    }
}

/// The record at `off`: path, stat data, digest.
fn record_at(data: &[u8], off: usize) -> Option<(&[u8], StatKey, Digest)> {
    let mut r = Reader(data.get(off..)?);
    let len = r.u32()? as usize;
    let path = r.bytes(len)?;
    let key = StatKey {
        size: r.u64()?,
        mtime: r.ts()?,
        ctime: r.ts()?,
        ino: r.u64()?,
        mode: r.u32()?,
    };
    Some((path, key, Digest(r.array()?)))
}

struct Checked {
    stamp: Timestamp,
    count: usize,
    entries_end: usize,
    walk: Option<WalkRecord>,
}

/// Checks a whole encoded cache: checksum, magic and that it parses to the
/// end.
fn check(data: &[u8]) -> Option<Checked> {
    let body_len = data.len().checked_sub(32)?;
    let (body, sum) = data.split_at(body_len);
    if blake3::hash(body).as_bytes() != sum {
        return None;
    }
    let mut r = Reader(body.strip_prefix(MAGIC.as_slice())?);
    let stamp = r.ts()?;
    let count = usize::try_from(r.u64()?).ok()?;
    for _ in 0..count {
        r.path()?;
        r.bytes(FIXED)?;
    }
    let entries_end = body.len() - r.0.len();
    let walk = match r.bytes(1)?[0] {
        0 => None,
        _ => {
            let fingerprint = Digest(r.array()?);
            let n = usize::try_from(r.u64()?).ok()?;
            let mut dirs = Vec::with_capacity(n.min(r.0.len() / (FIXED - 32)));
            for _ in 0..n {
                let p: Box<[u8]> = r.path()?.into();
                dirs.push((p, r.key()?));
            }
            let n = usize::try_from(r.u64()?).ok()?;
            let mut aux = Vec::with_capacity(n.min(r.0.len() / (FIXED - 32)));
            for _ in 0..n {
                let p = PathBuf::from(OsStr::from_bytes(r.path()?));
                let tag = r.bytes(1)?[0];
                let key = r.key()?;
                aux.push((
                    p,
                    match tag {
                        0 => Aux::Absent,
                        1 => Aux::Exact(key),
                        2 => Aux::Exists(key.mode),
                        _ => return None,
                    },
                ));
            }
            Some(WalkRecord {
                fingerprint,
                dirs,
                aux,
            })
        }
    };
    r.0.is_empty().then_some(Checked {
        stamp,
        count,
        entries_end,
        walk,
    })
}

/// What decided which files a full walk found: see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalkRecord {
    /// Hash of everything else the walk depended on: the root, the scope's
    /// patterns and the environment that locates global git config.
    pub fingerprint: Digest,
    /// Every directory the walk entered, relative to the root (`""` for the
    /// root itself), with its stat data.
    pub dirs: Vec<(Box<[u8]>, StatKey)>,
    /// Files ignore rules were or could have been read from (absolute
    /// paths), and what was there.
    pub aux: Vec<(PathBuf, Aux)>,
}

/// What was at a path in [`WalkRecord::aux`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aux {
    /// Nothing.
    Absent,
    /// A file with this stat data; any change counts.
    Exact(StatKey),
    /// Something of this file type (`mode & S_IFMT`); only a change of
    /// type or existence counts (for `.git`, which git writes to all the
    /// time, while only its existence changes how ignore rules apply).
    Exists(u32),
}

/// Iterator over a cache's entries: `(path, stat data, digest)`.
#[derive(Debug)]
pub struct Entries<'a> {
    data: &'a [u8],
    off: usize,
}

impl<'a> Iterator for Entries<'a> {
    type Item = (&'a [u8], StatKey, Digest);

    fn next(&mut self) -> Option<Self::Item> {
        let (p, k, d) = record_at(self.data, self.off)?;
        self.off += 4 + p.len() + FIXED;
        Some((p, k, d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(mtime: i64, ctime: i64) -> StatKey {
        StatKey {
            size: 3,
            mtime: Timestamp {
                sec: mtime,
                nsec: 5,
            },
            ctime: Timestamp {
                sec: ctime,
                nsec: 5,
            },
            ino: 42,
            mode: 0o100644,
        }
    }

    fn fill(c: &mut StatCache, stamp: Timestamp, files: &[(&str, StatKey, u8)]) {
        let keys: Vec<(Vec<u8>, StatKey, Digest)> = files
            .iter()
            .map(|(p, k, d)| (p.as_bytes().to_vec(), *k, Digest([*d; 32])))
            .collect();
        c.replace(
            stamp,
            keys.iter().map(|(p, k, d)| (p.as_slice(), k, *d)),
            None,
        );
    }

    #[test]
    fn racy_entries_are_not_trusted() {
        let stamp = Timestamp { sec: 100, nsec: 5 };
        let mut c = StatCache::in_memory();
        fill(
            &mut c,
            stamp,
            &[
                ("old", key(99, 99), 1),
                ("same-tick", key(100, 100), 2),
                ("ctime-only", key(99, 100), 3),
                ("future", key(200, 99), 4),
            ],
        );
        assert_eq!(c.len(), 4);
        assert_eq!(c.lookup(b"old", &key(99, 99)), Some(Digest([1; 32])));
        assert_eq!(c.lookup(b"same-tick", &key(100, 100)), None);
        assert_eq!(c.lookup(b"ctime-only", &key(99, 100)), None);
        assert_eq!(c.lookup(b"future", &key(200, 99)), None);
        assert_eq!(c.lookup(b"missing", &key(99, 99)), None);
        // Any stat difference is a miss.
        let mut k = key(99, 99);
        k.ino = 43;
        assert_eq!(c.lookup(b"old", &k), None);
    }

    #[test]
    fn round_trip_and_no_write_when_nothing_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/web.statcache");
        let mut c = StatCache::load(&path);
        assert!(c.is_empty());
        let stamp = c.begin_scan();
        fill(&mut c, stamp, &[("a", key(1, 1), 7), ("b/c", key(2, 2), 8)]);
        assert!(c.is_dirty());
        c.save().unwrap();
        assert!(!c.is_dirty());

        let c = StatCache::load(&path);
        assert_eq!(c.stamp(), Some(stamp));
        assert_eq!(c.lookup(b"a", &key(1, 1)), Some(Digest([7; 32])));
        assert_eq!(c.lookup(b"b/c", &key(2, 2)), Some(Digest([8; 32])));
        // Every file a hit and none gone: nothing to write.
        assert!(!c.would_change(2, 2));
        // A file gone, a file new, or a file re-hashed: written.
        assert!(c.would_change(1, 1));
        assert!(c.would_change(3, 2));
        assert!(c.would_change(2, 1));
    }

    #[test]
    fn walk_record_round_trips_and_survives_entry_updates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let walk = WalkRecord {
            fingerprint: Digest([3; 32]),
            dirs: vec![
                (b"".as_slice().into(), key(1, 1)),
                (b"src".as_slice().into(), key(2, 2)),
            ],
            aux: vec![
                (PathBuf::from("/p/.gitignore"), Aux::Exact(key(3, 3))),
                (PathBuf::from("/home/u/.gitconfig"), Aux::Absent),
                (PathBuf::from("/.git"), Aux::Exists(0o040000)),
            ],
        };
        let mut c = StatCache::load(&path);
        let k = key(1, 1);
        let stamp = Timestamp { sec: 9, nsec: 0 };
        c.replace(
            stamp,
            [(b"a".as_slice(), &k, Digest([7; 32]))].into_iter(),
            Some(walk.clone()),
        );
        c.save().unwrap();
        let mut c = StatCache::load(&path);
        assert_eq!(c.walk(), Some(&walk));
        assert_eq!(c.lookup(b"a", &k), Some(Digest([7; 32])));
        // New entries without a new walk keep the recorded walk.
        c.replace(
            stamp,
            [(b"b".as_slice(), &k, Digest([8; 32]))].into_iter(),
            None,
        );
        c.save().unwrap();
        let c = StatCache::load(&path);
        assert_eq!(c.walk(), Some(&walk));
        assert_eq!(
            c.entries().map(|e| e.0.to_vec()).collect::<Vec<_>>(),
            vec![b"b".to_vec()]
        );
    }

    #[test]
    fn damaged_cache_loads_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let mut c = StatCache::load(&path);
        fill(
            &mut c,
            Timestamp { sec: 9, nsec: 0 },
            &[("a", key(1, 1), 7)],
        );
        c.save().unwrap();
        let mut data = fs::read(&path).unwrap();
        let mid = data.len() / 2;
        data[mid] ^= 0xff;
        fs::write(&path, &data).unwrap();
        let c = StatCache::load(&path);
        assert!(c.is_empty());
        assert!(c.stamp().is_none());
    }

    #[test]
    fn fs_clock_moves_forward() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = StatCache::load(dir.path().join("c"));
        let a = c.begin_scan();
        std::thread::sleep(Duration::from_millis(20));
        let b = c.begin_scan();
        assert!(b > a, "{a:?} then {b:?}");
    }
}
