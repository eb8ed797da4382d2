//! Tree hashing: one digest for a project's sources, and the per-file list
//! that explains what changed.
//!
//! The walk uses the `ignore` crate in parallel, so what counts as source is
//! what git would show the user: `.gitignore` (also outside a git
//! repository), `.ignore`, the global git excludes and `.git/info/exclude`
//! are honoured, hidden files are included, and `.git` and `.locald` are
//! always skipped (`.locald` holds our own state and outputs; hashing it
//! would make every build invalidate itself).
//!
//! The tree hash covers, for every regular file and symlink sorted by the
//! bytes of its relative path: the path, a git-like normalised mode
//! (`100644`, `100755` or `120000`, so a umask difference between machines
//! does not count but `chmod +x` does) and the BLAKE3 hash of the contents
//! or of the symlink target. Directories, sockets, FIFOs and devices do not
//! count, as in git. The result does not depend on the walk order, the
//! absolute location of the project or the machine.
//!
//! Unchanged files are not read again when the [`StatCache`] says their
//! `stat` data is what it was when they were hashed; and when no directory
//! and no ignore file changed since the last walk, directories are not read
//! either (see [`hash_tree`]).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use ignore::{DirEntry, ParallelVisitor, ParallelVisitorBuilder, WalkBuilder, WalkState};
use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode};
use rayon::iter::{IntoParallelRefIterator, IntoParallelRefMutIterator, ParallelIterator};
use rayon::slice::ParallelSliceMut;

use super::statcache::{Aux, StatCache, StatKey, WalkRecord};
use super::{BuildError, Digest};
use crate::lock;

/// Files at least this big are read in [`LARGE_CHUNK`] pieces, each hashed
/// with rayon, so one large file uses every core. They are read, never
/// memory-mapped: a file truncated while mapped raises SIGBUS, which would
/// kill the daemon (ripgrep's searcher makes the same choice by default).
const LARGE_FILE: u64 = 4 << 20;

/// Read size for large files: big enough for rayon to split.
const LARGE_CHUNK: usize = 4 << 20;

/// Read size for smaller files; large enough that BLAKE3 can use its wide
/// SIMD paths on each `update`.
const READ_CHUNK: usize = 256 << 10;

/// Directory names never hashed, at any depth.
const ALWAYS_SKIPPED: [&str; 2] = [".git", ".locald"];

/// What kind of entry a file is, in the git sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// A regular file without the owner's execute bit.
    File,
    /// A regular file with the owner's execute bit.
    Executable,
    /// A symbolic link (its target is hashed, not followed).
    Symlink,
}

impl FileKind {
    /// The normalised mode hashed into the tree, as git writes it.
    pub fn mode(self) -> u32 {
        match self {
            FileKind::File => 0o100644,
            FileKind::Executable => 0o100755,
            FileKind::Symlink => 0o120000,
        }
    }

    fn tag(self) -> u8 {
        match self {
            FileKind::File => b'f',
            FileKind::Executable => b'x',
            FileKind::Symlink => b'l',
        }
    }

    fn from_tag(t: u8) -> Option<FileKind> {
        match t {
            b'f' => Some(FileKind::File),
            b'x' => Some(FileKind::Executable),
            b'l' => Some(FileKind::Symlink),
            _ => None,
        }
    }
}

/// One file of a hashed tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Path relative to the hashed root, `/`-separated.
    pub path: PathBuf,
    /// File, executable or symlink.
    pub kind: FileKind,
    /// BLAKE3 of the contents, or of the symlink target.
    pub digest: Digest,
}

/// What [`hash_tree`] did, for logs and for the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HashStats {
    /// Files and symlinks in the tree.
    pub files: usize,
    /// Files whose contents were read because the stat cache did not vouch
    /// for them.
    pub hashed: usize,
    /// Bytes read for those.
    pub bytes_hashed: u64,
    /// Files taken from the stat cache without reading them.
    pub cache_hits: usize,
    /// Directories were read and ignore rules matched (a full walk), as
    /// opposed to only `stat`ing the files known from the last walk.
    pub walked: bool,
}

/// The hash of a tree and the files it covers.
#[derive(Debug, Clone)]
pub struct TreeHash {
    /// The tree hash.
    pub digest: Digest,
    /// Every file, sorted by the bytes of its path.
    pub files: Vec<FileEntry>,
    /// How the hash was obtained.
    pub stats: HashStats,
}

/// What to hash.
#[derive(Debug, Clone)]
pub struct HashScope {
    /// The directory to walk; paths in the result are relative to it.
    pub root: PathBuf,
    /// `None` hashes the whole tree. `Some(globs)` hashes only files that
    /// match one of the globs (a host build's `inputs`): `*` stays within a
    /// path component, `**` crosses them, and a pattern naming a directory
    /// covers everything under it. Files the ignore rules exclude stay
    /// excluded, except that a pattern without wildcards (`.env`) names its
    /// file even when it is ignored, because the user asked for it.
    pub inputs: Option<Vec<String>>,
    /// Paths relative to `root` to leave out with everything under them
    /// (a build's own outputs and caches when they live in the tree).
    pub exclude: Vec<PathBuf>,
    /// Whether `.gitignore`, `.ignore` and git's excludes apply. Sources:
    /// yes; a build's outputs (often ignored, e.g. `dist/`): no.
    pub ignore_rules: bool,
}

impl HashScope {
    /// The whole tree under `root`.
    pub fn tree(root: impl Into<PathBuf>) -> Self {
        HashScope {
            root: root.into(),
            inputs: None,
            exclude: Vec::new(),
            ignore_rules: true,
        }
    }

    /// Only the files under `root` that match `inputs`.
    pub fn inputs(root: impl Into<PathBuf>, inputs: &[String]) -> Self {
        HashScope {
            root: root.into(),
            inputs: Some(inputs.to_vec()),
            exclude: Vec::new(),
            ignore_rules: true,
        }
    }

    /// A build's declared outputs under `root`, ignore rules or not.
    pub fn outputs(root: impl Into<PathBuf>, outputs: &[String]) -> Self {
        HashScope {
            ignore_rules: false,
            ..HashScope::inputs(root, outputs)
        }
    }
}

/// Which files changed between two hashed trees.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSummary {
    /// Files only in the new tree.
    pub added: usize,
    /// Files only in the old tree.
    pub removed: usize,
    /// Files in both whose contents or mode differ.
    pub modified: usize,
    /// Up to three changed paths, in path order.
    pub examples: Vec<PathBuf>,
}

impl ChangeSummary {
    /// How many files differ (a rename counts twice: removed and added).
    pub fn total(&self) -> usize {
        self.added + self.removed + self.modified
    }

    /// Compares two sorted file lists (as [`TreeHash::files`] keeps them).
    pub fn between(old: &[FileEntry], new: &[FileEntry]) -> Self {
        let mut s = ChangeSummary::default();
        let (mut i, mut j) = (0, 0);
        let note = |s: &mut ChangeSummary, p: &Path| {
            if s.examples.len() < 3 {
                s.examples.push(p.to_path_buf());
            }
        };
        while i < old.len() || j < new.len() {
            let ord = match (old.get(i), new.get(j)) {
                (Some(a), Some(b)) => path_bytes(&a.path).cmp(path_bytes(&b.path)),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, _) => std::cmp::Ordering::Greater,
            };
            match ord {
                std::cmp::Ordering::Less => {
                    s.removed += 1;
                    note(&mut s, &old[i].path);
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    s.added += 1;
                    note(&mut s, &new[j].path);
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    if old[i].kind != new[j].kind || old[i].digest != new[j].digest {
                        s.modified += 1;
                        note(&mut s, &new[j].path);
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
        s
    }
}

impl fmt::Display for ChangeSummary {
    /// `3 files (1 added, 2 modified), e.g. src/main.rs`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.total();
        write!(f, "{n} file{}", if n == 1 { "" } else { "s" })?;
        let parts: Vec<String> = [
            (self.added, "added"),
            (self.removed, "removed"),
            (self.modified, "modified"),
        ]
        .iter()
        .filter(|(c, _)| *c > 0)
        .map(|(c, w)| format!("{c} {w}"))
        .collect();
        if !parts.is_empty() {
            write!(f, " ({})", parts.join(", "))?;
        }
        if let Some(p) = self.examples.first() {
            write!(f, ", e.g. {}", p.display())?;
        }
        Ok(())
    }
}

/// Hashes what `scope` covers, using and refreshing `cache`.
///
/// Finding the files: when the cache's [`WalkRecord`] shows that no
/// directory and no ignore-rule file changed since the last full walk, the
/// files are the cached ones and each is only `stat`ed, in parallel (what
/// `git status` does with its index). Otherwise a full walk: in parallel,
/// honouring the ignore rules, `stat`ing relative to a descriptor of the
/// root so the kernel does not resolve the root's path for every file;
/// then a sort and one sequential merge with the cache, which is kept in
/// path order so that no per-file lookup jumps around in memory. Either
/// way, the files the cache does not vouch for are then hashed in parallel.
///
/// `cache` is updated in memory; the caller saves it with
/// [`StatCache::save`] (which writes only when something changed).
pub fn hash_tree(scope: &HashScope, cache: &mut StatCache) -> Result<TreeHash, BuildError> {
    let root = scope.root.as_path();
    let root_dir = File::open(root).map_err(|e| BuildError::io("cannot hash", root, e))?;
    match root_dir.metadata() {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(BuildError::io(
                "cannot hash",
                root,
                io::Error::other("not a directory"),
            ))
        }
        Err(e) => return Err(BuildError::io("cannot hash", root, e)),
    }
    let root_fd = root_dir.as_raw_fd();
    let matcher = match &scope.inputs {
        Some(globs) => Some(InputMatcher::new(globs)?),
        None => None,
    };

    // Taken before anything is read: a file or directory whose mtime is not
    // older than this may change again without its stat data changing (the
    // racy-git case), so the cache will not vouch for it next time.
    let stamp = cache.begin_scan();

    let fingerprint = walk_fingerprint(scope);
    let known = match cache.walk() {
        Some(w) if w.fingerprint == fingerprint => known_files(root_fd, cache, w),
        _ => None,
    };
    let (mut records, walk) = match known {
        Some(records) => (records, None),
        None => {
            let (records, walk) = full_walk(scope, root_fd, matcher.as_ref(), cache, fingerprint)?;
            (records, Some(walk))
        }
    };

    // Hash the rest, spread over all cores.
    records
        .par_iter_mut()
        .filter(|r| !r.hit)
        .try_for_each_init(Vec::new, |buf, r| hash_record(root_fd, root, r, buf))?;
    records.retain(|r| !r.gone);

    let mut stats = HashStats {
        files: records.len(),
        walked: walk.is_some(),
        ..HashStats::default()
    };
    for r in &records {
        if r.hit {
            stats.cache_hits += 1;
        } else if r.kind != FileKind::Symlink {
            stats.hashed += 1;
            stats.bytes_hashed += r.stat.size;
        }
    }
    if walk.is_some() || cache.would_change(records.len(), stats.cache_hits) {
        let fresh: Vec<_> = records
            .iter()
            .map(|r| (&*r.path, &r.stat, r.digest))
            .collect();
        // A walk that met a layout it cannot vouch for records none, so
        // the next check walks again.
        let walk = walk.map(|w| {
            w.unwrap_or(WalkRecord {
                fingerprint: Digest([0; 32]),
                dirs: Vec::new(),
                aux: Vec::new(),
            })
        });
        cache.replace(stamp, fresh.into_iter(), walk);
    }

    let files: Vec<FileEntry> = records
        .into_iter()
        .map(|r| FileEntry {
            path: PathBuf::from(std::ffi::OsString::from_vec(r.path.into_vec())),
            kind: r.kind,
            digest: r.digest,
        })
        .collect();

    Ok(TreeHash {
        digest: tree_digest(&files),
        files,
        stats,
    })
}

/// Everything besides directories and ignore files that decides which files
/// a walk finds.
fn walk_fingerprint(scope: &HashScope) -> Digest {
    let mut h = blake3::Hasher::new_derive_key("locald walk v1");
    let mut field = |b: &[u8]| {
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(scope.root.as_os_str().as_bytes());
    match &scope.inputs {
        None => field(b"tree"),
        Some(globs) => {
            field(b"inputs");
            for g in globs {
                field(g.as_bytes());
            }
        }
    }
    field(b"exclude");
    for e in &scope.exclude {
        field(e.as_os_str().as_bytes());
    }
    field(if scope.ignore_rules {
        b"ignore"
    } else {
        b"plain"
    });
    for var in GIT_ENV {
        field(var.as_bytes());
        field(std::env::var_os(var).unwrap_or_default().as_bytes());
    }
    h.finalize().into()
}

/// The environment the `ignore` crate reads to find global git config.
const GIT_ENV: [&str; 4] = [
    "HOME",
    "XDG_CONFIG_HOME",
    "GIT_CONFIG_GLOBAL",
    "GIT_CONFIG_SYSTEM",
];

/// The fast path: if no recorded directory or ignore file changed, the
/// cached files with their current stat data, in path order. `None` means
/// "walk".
fn known_files(root_fd: RawFd, cache: &StatCache, walk: &WalkRecord) -> Option<Vec<Record>> {
    if walk.dirs.is_empty() {
        return None;
    }
    for (path, aux) in &walk.aux {
        if aux_now(path) != Some(*aux) || !aux_trusted(cache, aux) {
            return None;
        }
    }
    let dirs_unchanged = walk.dirs.par_iter().all(|(rel, key)| {
        let rel: &[u8] = if rel.is_empty() { b"." } else { rel };
        fstatat(Some(root_fd), rel, AtFlags::AT_SYMLINK_NOFOLLOW)
            .is_ok_and(|st| cache.unchanged(key, &StatKey::from_stat(&st)))
    });
    if !dirs_unchanged {
        return None;
    }
    let entries: Vec<_> = cache.entries().collect();
    let records: Option<Vec<Option<Record>>> = entries
        .par_iter()
        .map(|(rel, key, digest)| {
            let st = match fstatat(Some(root_fd), *rel, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::ENOENT) => return Some(None),
                Err(_) => return None,
            };
            let now = StatKey::from_stat(&st);
            let kind = kind_of(now.mode)?;
            let hit = cache.unchanged(key, &now);
            Some(Some(Record {
                path: (*rel).into(),
                kind,
                digest: if hit { *digest } else { Digest([0; 32]) },
                stat: now,
                hit,
                gone: false,
            }))
        })
        .collect();
    Some(records?.into_iter().flatten().collect())
}

/// What is at `path` now, in the terms [`Aux`] records it (`None` on an
/// error other than absence).
fn aux_now(path: &Path) -> Option<Aux> {
    let kind_only = path.file_name().is_some_and(|n| n == ".git");
    match fs::symlink_metadata(path) {
        Ok(m) if kind_only => Some(Aux::Exists(m.mode() & libc::S_IFMT)),
        Ok(m) => Some(Aux::Exact(StatKey::from_metadata(&m))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Some(Aux::Absent),
        // `.git` is a file (a worktree or submodule), so `.git/info/exclude`
        // cannot be looked up: not a layout the fast path vouches for.
        Err(_) => None,
    }
}

fn aux_trusted(cache: &StatCache, aux: &Aux) -> bool {
    match aux {
        Aux::Exact(k) => cache.unchanged(k, k),
        Aux::Absent | Aux::Exists(_) => true,
    }
}

/// The full walk. Returns the records in path order, cache hits filled in,
/// and what the walk depended on (`None` if it met something the fast path
/// cannot vouch for, such as a `.git` file).
fn full_walk(
    scope: &HashScope,
    root_fd: RawFd,
    matcher: Option<&InputMatcher>,
    cache: &StatCache,
    fingerprint: Digest,
) -> Result<(Vec<Record>, Option<WalkRecord>), BuildError> {
    let root = scope.root.as_path();
    let shared = Shared {
        root,
        root_fd,
        inputs: matcher,
        out: Mutex::new(Vec::new()),
        dirs: Mutex::new(Vec::new()),
        aux: Mutex::new(Vec::new()),
        unrecordable: AtomicBool::new(false),
        error: Mutex::new(None),
    };
    walker(scope)
        .build_parallel()
        .visit(&mut VisitorBuilder { shared: &shared });

    if let Some(e) = lock(&shared.error).take() {
        return Err(e);
    }
    let mut records = std::mem::take(&mut *lock(&shared.out));
    let mut aux = std::mem::take(&mut *lock(&shared.aux));
    let mut recordable = !shared.unrecordable.load(Ordering::Relaxed);
    if let Some(m) = matcher {
        recordable &= add_literal_inputs(scope, root_fd, m, &mut records, &mut aux)?;
    }
    records.par_sort_unstable_by(|a, b| a.path.cmp(&b.path));
    // Two literal inputs may name one file.
    records.dedup_by(|a, b| a.path == b.path);
    take_cache_hits(cache, &mut records);
    recordable &= record_outside_rules(root, &mut aux);

    let walk = recordable.then(|| {
        let mut dirs = std::mem::take(&mut *lock(&shared.dirs));
        dirs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        WalkRecord {
            fingerprint,
            dirs,
            aux,
        }
    });
    Ok((records, walk))
}

/// The walker of `scope`: hidden files included, links not followed, the
/// ignore rules (parents' only when they can be trusted), `.git`, `.locald`
/// and the excluded paths skipped.
fn walker(scope: &HashScope) -> WalkBuilder {
    let root = scope.root.as_path();
    let exclude: Arc<HashSet<PathBuf>> = Arc::new(scope.exclude.iter().cloned().collect());
    let filter_root = root.to_path_buf();
    let rules = scope.ignore_rules;
    let mut builder = WalkBuilder::new(root);
    builder
        .hidden(false)
        .parents(rules && parent_rules_trusted(root))
        .ignore(rules)
        .git_ignore(rules)
        .git_global(rules)
        .git_exclude(rules)
        .require_git(false)
        .follow_links(false)
        .filter_entry(move |e| {
            if e.depth() == 0 {
                return true;
            }
            let name = e.file_name();
            if ALWAYS_SKIPPED.iter().any(|s| name == *s) {
                return false;
            }
            if exclude.is_empty() {
                return true;
            }
            match e.path().strip_prefix(&filter_root) {
                Ok(rel) => !exclude.contains(rel),
                Err(_) => true,
            }
        });
    builder
}

/// Literal inputs name their file even when an ignore rule hides it; its
/// directory may not be walked, so its existence is recorded on its own.
/// Returns whether every one could be recorded.
fn add_literal_inputs(
    scope: &HashScope,
    root_fd: RawFd,
    m: &InputMatcher,
    records: &mut Vec<Record>,
    aux: &mut Vec<(PathBuf, Aux)>,
) -> Result<bool, BuildError> {
    let root = scope.root.as_path();
    let mut recordable = true;
    let seen: HashSet<&[u8]> = records.iter().map(|r| &*r.path).collect();
    let mut extra = Vec::new();
    for lit in &m.literals {
        let bytes = lit.as_os_str().as_bytes();
        if skipped_path(lit, &scope.exclude) {
            continue;
        }
        let abs = root.join(lit);
        match aux_now(&abs) {
            Some(a) => aux.push((abs, a)),
            None => recordable = false,
        }
        if seen.contains(bytes) {
            continue;
        }
        if let Some(r) = stat_record(root_fd, root, bytes)? {
            extra.push(r);
        }
    }
    records.extend(extra);
    Ok(recordable)
}

/// Takes what the cache vouches for, in one pass over both sorted lists.
fn take_cache_hits(cache: &StatCache, records: &mut [Record]) {
    let mut cached = cache.entries().peekable();
    for r in records.iter_mut() {
        while cached.next_if(|(p, _, _)| *p < &*r.path).is_some() {}
        if let Some((_, old, digest)) = cached.next_if(|(p, _, _)| *p == &*r.path) {
            if cache.unchanged(&old, &r.stat) {
                r.digest = digest;
                r.hit = true;
            }
        }
    }
}

/// Records the ignore rules from above the root and from the user's git
/// config, which decide what the walk saw. Returns whether each could be.
fn record_outside_rules(root: &Path, aux: &mut Vec<(PathBuf, Aux)>) -> bool {
    let mut paths = Vec::new();
    for dir in root.ancestors().skip(1) {
        for name in [".gitignore", ".ignore", ".git", ".git/info/exclude"] {
            paths.push(dir.join(name));
        }
    }
    paths.extend(ignore::gitignore::gitconfig_excludes_path());
    let var = |v: &str| {
        std::env::var_os(v)
            .filter(|x| !x.is_empty())
            .map(PathBuf::from)
    };
    let home = var("HOME");
    paths.extend(var("GIT_CONFIG_GLOBAL"));
    paths.push(var("GIT_CONFIG_SYSTEM").unwrap_or_else(|| PathBuf::from("/etc/gitconfig")));
    paths.extend(home.as_ref().map(|h| h.join(".gitconfig")));
    paths.extend(
        var("XDG_CONFIG_HOME")
            .or_else(|| home.as_ref().map(|h| h.join(".config")))
            .map(|x| x.join("git/config")),
    );
    let mut recordable = true;
    for p in paths {
        match aux_now(&p) {
            Some(a) => aux.push((p, a)),
            None => recordable = false,
        }
    }
    recordable
}

/// The tree hash of a sorted file list.
pub fn tree_digest(files: &[FileEntry]) -> Digest {
    // One buffer and one update: BLAKE3 is much faster on one large input
    // (SIMD across chunks, and threads) than on many tiny ones.
    let size: usize = files.iter().map(|f| f.path.as_os_str().len() + 45).sum();
    let mut buf = Vec::with_capacity(size + 8);
    buf.extend_from_slice(&(files.len() as u64).to_le_bytes());
    for f in files {
        let p = path_bytes(&f.path);
        buf.extend_from_slice(&(p.len() as u64).to_le_bytes());
        buf.extend_from_slice(p);
        buf.push(f.kind.tag());
        buf.extend_from_slice(&f.kind.mode().to_le_bytes());
        buf.extend_from_slice(&f.digest.0);
    }
    let mut h = blake3::Hasher::new_derive_key("locald tree hash v1");
    h.update_rayon(&buf);
    h.finalize().into()
}

const FILES_MAGIC: &[u8; 8] = b"LDSRC\0v1";

/// Encodes a file list for `artifacts/sources.bin`: magic, count, then per
/// file the path length, path, kind tag and digest; a BLAKE3 of all of that
/// at the end so a damaged file reads as absent instead of as wrong.
pub fn encode_files(files: &[FileEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + files.len() * 64);
    out.extend_from_slice(FILES_MAGIC);
    out.extend_from_slice(&(files.len() as u64).to_le_bytes());
    for f in files {
        let p = path_bytes(&f.path);
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(p);
        out.push(f.kind.tag());
        out.extend_from_slice(&f.digest.0);
    }
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

/// Decodes what [`encode_files`] wrote; `None` if it is damaged.
pub fn decode_files(data: &[u8]) -> Option<Vec<FileEntry>> {
    let body_len = data.len().checked_sub(32)?;
    let (body, sum) = data.split_at(body_len);
    if blake3::hash(body).as_bytes() != sum {
        return None;
    }
    let mut r = body.strip_prefix(FILES_MAGIC.as_slice())?;
    let n = u64::from_le_bytes(take(&mut r, 8)?.try_into().ok()?);
    let mut files = Vec::with_capacity(usize::try_from(n).ok()?.min(1 << 20));
    for _ in 0..n {
        let len = u32::from_le_bytes(take(&mut r, 4)?.try_into().ok()?) as usize;
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(take(&mut r, len)?));
        let kind = FileKind::from_tag(take(&mut r, 1)?[0])?;
        let digest = Digest(take(&mut r, 32)?.try_into().ok()?);
        files.push(FileEntry { path, kind, digest });
    }
    r.is_empty().then_some(files)
}

fn take<'a>(r: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if r.len() < n {
        return None;
    }
    let (a, b) = r.split_at(n);
    *r = b;
    Some(a)
}

fn path_bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

fn skipped_path(rel: &Path, exclude: &[PathBuf]) -> bool {
    rel.components().any(|c| {
        let c = c.as_os_str();
        ALWAYS_SKIPPED.iter().any(|s| c == *s)
    }) || exclude.iter().any(|e| rel.starts_with(e))
}

/// `inputs` globs, compiled.
struct InputMatcher {
    set: GlobSet,
    /// Patterns without wildcards, as relative paths.
    literals: Vec<PathBuf>,
}

impl InputMatcher {
    fn new(patterns: &[String]) -> Result<Self, BuildError> {
        let mut b = GlobSetBuilder::new();
        let mut literals = Vec::new();
        for raw in patterns {
            let p = normalise_pattern(raw);
            if p.is_empty() {
                continue;
            }
            let glob = GlobBuilder::new(p)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|source| BuildError::Glob {
                    pattern: raw.clone(),
                    source,
                })?;
            b.add(glob);
            if !p.contains(['*', '?', '[', '{', '\\']) {
                literals.push(PathBuf::from(p));
            }
        }
        let set = b.build().map_err(|source| BuildError::Glob {
            pattern: patterns.join(", "),
            source,
        })?;
        Ok(InputMatcher { set, literals })
    }

    /// True when `rel` or one of its parent directories matches.
    fn matches(&self, rel: &Path) -> bool {
        let mut p = Some(rel);
        while let Some(x) = p {
            if x.as_os_str().is_empty() {
                break;
            }
            if self.set.is_match(x) {
                return true;
            }
            p = x.parent();
        }
        false
    }
}

/// `./src/` and `/src` both mean `src`.
fn normalise_pattern(p: &str) -> &str {
    let mut p = p.trim();
    while let Some(rest) = p.strip_prefix("./") {
        p = rest;
    }
    p = p.trim_start_matches('/');
    p.trim_end_matches('/')
}

/// One file as the walker saw it.
struct Record {
    path: Box<[u8]>,
    kind: FileKind,
    digest: Digest,
    /// Its `lstat` data (symlinks are cached too: a link cannot change in
    /// place, so unchanged stat data means an unchanged target).
    stat: StatKey,
    hit: bool,
    /// Deleted between the walk and the hash: not part of the tree.
    gone: bool,
}

struct Shared<'a> {
    root: &'a Path,
    root_fd: RawFd,
    inputs: Option<&'a InputMatcher>,
    out: Mutex<Vec<Record>>,
    dirs: Mutex<Vec<(Box<[u8]>, StatKey)>>,
    aux: Mutex<Vec<(PathBuf, Aux)>>,
    /// The walk met something the fast path cannot vouch for.
    unrecordable: AtomicBool,
    error: Mutex<Option<BuildError>>,
}

struct VisitorBuilder<'a> {
    shared: &'a Shared<'a>,
}

impl<'s> ParallelVisitorBuilder<'s> for VisitorBuilder<'s> {
    fn build(&mut self) -> Box<dyn ParallelVisitor + 's> {
        Box::new(Visitor {
            shared: self.shared,
            local: Vec::new(),
            dirs: Vec::new(),
            aux: Vec::new(),
        })
    }
}

/// One walker thread: collects its records locally and hands them over when
/// the walk ends, so threads do not contend on a lock per file.
struct Visitor<'a> {
    shared: &'a Shared<'a>,
    local: Vec<Record>,
    dirs: Vec<(Box<[u8]>, StatKey)>,
    aux: Vec<(PathBuf, Aux)>,
}

impl Visitor<'_> {
    fn fail(&self, e: BuildError) -> WalkState {
        let mut slot = lock(&self.shared.error);
        if slot.is_none() {
            *slot = Some(e);
        }
        WalkState::Quit
    }

    fn entry(&mut self, entry: &DirEntry) -> Result<(), BuildError> {
        let Some(ft) = entry.file_type() else {
            return Ok(());
        };
        if ft.is_dir() {
            return self.dir(entry);
        }
        if !(ft.is_file() || ft.is_symlink()) {
            return Ok(());
        }
        let Some(rel) = self.relative(entry.path()) else {
            return Ok(());
        };
        if let Some(m) = self.shared.inputs {
            if !m.matches(Path::new(OsStr::from_bytes(rel))) {
                return Ok(());
            }
        }
        if let Some(r) = stat_record(self.shared.root_fd, self.shared.root, rel)? {
            self.local.push(r);
        }
        Ok(())
    }
}

impl Visitor<'_> {
    /// `path` relative to the root, as bytes. The walker joins names onto
    /// the root as given, so the relative path is a byte suffix; cheaper than
    /// `Path::strip_prefix`, which parses components.
    fn relative<'p>(&self, path: &'p Path) -> Option<&'p [u8]> {
        let rel = path
            .as_os_str()
            .as_bytes()
            .strip_prefix(self.shared.root.as_os_str().as_bytes())?;
        Some(rel.strip_prefix(b"/").unwrap_or(rel))
    }

    /// Records a directory the walk enters, and the ignore files in it.
    ///
    /// The walker has already read the directory when it shows it to us, so
    /// this `stat` comes after the read: a change in between is newer than
    /// the scan's stamp, which makes the record untrusted (the racy rule),
    /// and the next check walks again.
    fn dir(&mut self, entry: &DirEntry) -> Result<(), BuildError> {
        let abs = entry.path();
        let Some(rel) = self.relative(abs) else {
            return Ok(());
        };
        let at: &[u8] = if rel.is_empty() { b"." } else { rel };
        match fstatat(Some(self.shared.root_fd), at, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => self.dirs.push((rel.into(), StatKey::from_stat(&st))),
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(BuildError::io("cannot stat", abs, e.into())),
        }
        // A new ignore file changes the directory's mtime; one edited in
        // place does not, so those present are recorded. `.git/info/exclude`
        // is recorded present or absent, because creating it changes `.git`,
        // not this directory.
        for name in [".gitignore", ".ignore", ".git/info/exclude"] {
            let p = abs.join(name);
            match aux_now(&p) {
                Some(Aux::Absent) if name != ".git/info/exclude" => {}
                Some(Aux::Absent) => {
                    if fs::symlink_metadata(abs.join(".git")).is_ok() {
                        self.aux.push((p, Aux::Absent));
                    }
                }
                Some(a) => self.aux.push((p, a)),
                None => self.shared.unrecordable.store(true, Ordering::Relaxed),
            }
        }
        Ok(())
    }
}

impl ParallelVisitor for Visitor<'_> {
    fn visit(&mut self, entry: Result<DirEntry, ignore::Error>) -> WalkState {
        match entry {
            Ok(e) => match self.entry(&e) {
                Ok(()) => WalkState::Continue,
                Err(err) => self.fail(err),
            },
            Err(err) if is_not_found(&err) => WalkState::Continue,
            // A bad pattern in an ignore file: git skips such lines too, and
            // failing every build over one would be worse than a warning.
            Err(err) if err.io_error().is_none() => {
                tracing::warn!(error = %err, "ignoring a bad ignore rule");
                WalkState::Continue
            }
            Err(err) => self.fail(BuildError::Walk {
                root: self.shared.root.to_path_buf(),
                source: err,
            }),
        }
    }
}

impl Drop for Visitor<'_> {
    fn drop(&mut self) {
        lock(&self.shared.out).append(&mut self.local);
        lock(&self.shared.dirs).append(&mut self.dirs);
        lock(&self.shared.aux).append(&mut self.aux);
    }
}

fn is_not_found(e: &ignore::Error) -> bool {
    e.io_error()
        .is_some_and(|io| io.kind() == io::ErrorKind::NotFound)
}

/// `lstat`s one path relative to the root; `None` if it is gone or is not a
/// regular file or symlink.
fn stat_record(root_fd: RawFd, root: &Path, rel: &[u8]) -> Result<Option<Record>, BuildError> {
    let st = match fstatat(Some(root_fd), rel, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        // Deleted since the directory was read: it is not part of the tree.
        Err(Errno::ENOENT | Errno::ENOTDIR) => return Ok(None),
        Err(e) => {
            return Err(BuildError::io(
                "cannot stat",
                root.join(OsStr::from_bytes(rel)),
                e.into(),
            ))
        }
    };
    let stat = StatKey::from_stat(&st);
    let Some(kind) = kind_of(stat.mode) else {
        return Ok(None);
    };
    Ok(Some(Record {
        path: rel.into(),
        kind,
        digest: Digest([0; 32]),
        stat,
        hit: false,
        gone: false,
    }))
}

/// File, executable or symlink, from `st_mode`; `None` for anything else.
fn kind_of(mode: u32) -> Option<FileKind> {
    match mode & libc::S_IFMT {
        libc::S_IFLNK => Some(FileKind::Symlink),
        libc::S_IFREG if mode & 0o100 != 0 => Some(FileKind::Executable),
        libc::S_IFREG => Some(FileKind::File),
        _ => None,
    }
}

/// Fills in the digest of a record the cache did not vouch for.
fn hash_record(
    root_fd: RawFd,
    root: &Path,
    r: &mut Record,
    buf: &mut Vec<u8>,
) -> Result<(), BuildError> {
    let rel = OsStr::from_bytes(&r.path);
    if r.kind == FileKind::Symlink {
        match readlinkat(Some(root_fd), rel) {
            Ok(target) => r.digest = blake3::hash(target.as_bytes()).into(),
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::EINVAL) => r.gone = true,
            Err(e) => return Err(BuildError::io("cannot read link", root.join(rel), e.into())),
        }
        return Ok(());
    }
    let chunk = if r.stat.size >= LARGE_FILE {
        LARGE_CHUNK
    } else {
        READ_CHUNK
    };
    // O_NONBLOCK: a FIFO swapped in since the walk must not block the hash.
    let result = match openat(
        Some(root_fd),
        rel,
        OFlag::O_RDONLY
            | OFlag::O_CLOEXEC
            | OFlag::O_NOFOLLOW
            | OFlag::O_NOCTTY
            | OFlag::O_NONBLOCK,
        Mode::empty(),
    ) {
        // SAFETY: `openat` just returned this descriptor and nothing
        // else owns it.
        Ok(fd) => hash_reader(unsafe { File::from_raw_fd(fd) }, buf, chunk),
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(d) => r.digest = d,
        // Deleted, or replaced by a symlink (ELOOP from O_NOFOLLOW), since
        // the walk: the next check sees it as it is then.
        Err(e) if e.kind() == io::ErrorKind::NotFound => r.gone = true,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => r.gone = true,
        Err(e) => return Err(BuildError::io("cannot read", root.join(rel), e)),
    }
    Ok(())
}

/// Whether the ignore files in `root`'s parents may be read: every
/// `.gitignore` and `.ignore` above the project must belong to us or root.
/// A parent like `/tmp` lets anyone plant one there, and a planted `*` would
/// hide every source from the hash, so a build would be skipped forever. With
/// an untrusted one, no parent's rules are used (and the walk says so).
fn parent_rules_trusted(root: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    for dir in root.ancestors().skip(1) {
        for name in [".gitignore", ".ignore"] {
            let f = dir.join(name);
            if let Ok(m) = std::fs::symlink_metadata(&f) {
                if !crate::fsutil::trusted_owner(m.uid()) {
                    tracing::warn!(
                        "ignoring the ignore rules above {}: {} belongs to uid {}",
                        root.display(),
                        f.display(),
                        m.uid()
                    );
                    return false;
                }
            }
        }
    }
    true
}

/// BLAKE3 of what `f` reads to its end, whatever its size was when it was
/// `stat`ed: a file that changed since is hashed as it is now, and its new
/// stat data will not match the cache entry next time.
fn hash_reader(mut f: File, buf: &mut Vec<u8>, chunk: usize) -> io::Result<Digest> {
    let mut hasher = blake3::Hasher::new();
    if buf.len() < chunk {
        buf.resize(chunk, 0);
    }
    loop {
        let n = match f.read(&mut buf[..chunk]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n >= LARGE_CHUNK / 2 {
            hasher.update_rayon(&buf[..n]);
        } else {
            hasher.update(&buf[..n]);
        }
    }
    Ok(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(p: &str, kind: FileKind, d: u8) -> FileEntry {
        FileEntry {
            path: PathBuf::from(p),
            kind,
            digest: Digest([d; 32]),
        }
    }

    #[test]
    fn change_summary_counts_and_examples() {
        let old = vec![
            entry("a", FileKind::File, 1),
            entry("b", FileKind::File, 2),
            entry("c", FileKind::File, 3),
        ];
        let new = vec![
            entry("a", FileKind::File, 1),
            entry("b", FileKind::Executable, 2),
            entry("d", FileKind::File, 3),
        ];
        let s = ChangeSummary::between(&old, &new);
        assert_eq!((s.added, s.removed, s.modified), (1, 1, 1));
        assert_eq!(
            s.to_string(),
            "3 files (1 added, 1 removed, 1 modified), e.g. b"
        );
    }

    #[test]
    fn tree_digest_depends_on_path_mode_and_content() {
        let base = vec![entry("a", FileKind::File, 1)];
        let d = tree_digest(&base);
        assert_ne!(d, tree_digest(&[entry("b", FileKind::File, 1)]));
        assert_ne!(d, tree_digest(&[entry("a", FileKind::Executable, 1)]));
        assert_ne!(d, tree_digest(&[entry("a", FileKind::File, 2)]));
        assert_eq!(d, tree_digest(&base));
        // Length prefixes keep ("ab") and ("a","b") apart.
        assert_ne!(
            tree_digest(&[entry("ab", FileKind::File, 1)]),
            tree_digest(&[entry("a", FileKind::File, 1), entry("b", FileKind::File, 1)])
        );
    }

    #[test]
    fn files_round_trip_and_damage_is_detected() {
        let files = vec![
            entry("src/main.rs", FileKind::File, 7),
            entry("run.sh", FileKind::Executable, 8),
            entry("link", FileKind::Symlink, 9),
        ];
        let mut data = encode_files(&files);
        assert_eq!(decode_files(&data), Some(files));
        data[12] ^= 1;
        assert_eq!(decode_files(&data), None);
        assert_eq!(decode_files(&[]), None);
    }

    #[test]
    fn input_patterns_match_files_and_directories() {
        let m = InputMatcher::new(&[
            "src/**".into(),
            "./package.json".into(),
            "assets/".into(),
            "*.toml".into(),
        ])
        .unwrap();
        for yes in [
            "src/a.rs",
            "src/x/y.rs",
            "package.json",
            "assets/img/x.png",
            "Cargo.toml",
        ] {
            assert!(m.matches(Path::new(yes)), "{yes}");
        }
        for no in ["srcs/a.rs", "lib/package.json", "sub/Cargo.toml", "README"] {
            assert!(!m.matches(Path::new(no)), "{no}");
        }
        assert_eq!(
            m.literals,
            vec![PathBuf::from("package.json"), PathBuf::from("assets")]
        );
    }

    #[test]
    fn bad_glob_is_a_typed_error() {
        let Err(err) = InputMatcher::new(&["src/[".into()]) else {
            panic!("accepted a bad glob");
        };
        assert!(matches!(err, BuildError::Glob { .. }), "{err}");
    }
}
