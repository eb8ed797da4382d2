//! `watch`: restarting (and rebuilding) services when their sources change.
//!
//! One watcher per project that is up with at least one watched service.
//! The project's directories are walked once with the ignore rules of the
//! build hash (`.gitignore`, `.ignore`, `.git/info/exclude`, hidden files
//! included, `.git` and `.locald` skipped) and each directory that is not
//! ignored gets its own inotify watch (through the `notify` crate), so an
//! ignored `node_modules/` or `target/` costs no watch at all. The same walk
//! records the BLAKE3 digest of every file, so after an event only the
//! paths it names are read again: a save that leaves the content as it was
//! (an editor touching a file, `git checkout` of the same branch) changes no
//! digest and triggers nothing, and a check costs O(changes), not a walk.
//!
//! Events are gathered until 100 ms pass without one (at most 1 s), so a
//! burst of saves is one trigger. A directory that appears (created, renamed
//! in, deleted and recreated) is walked and watched at once; a file renamed
//! over another (how editors save) shows as a change of the target. When the
//! kernel refuses another watch (`fs.inotify.max_user_watches`), locald says
//! so once, with the sysctl to raise it, and falls back to polling the tree
//! every second.
//!
//! Builds ask the watcher too ([`SourceWatch`]): it keeps the instant since
//! which it has been watching by inotify with every event checked and none
//! received, so a build check reuses the hash of its last walk when nothing
//! happened since that walk started, after syncing with the event queue
//! through a marker file in `.locald/watch-sync/`. Any event but an open or
//! a read, a queue overflow (which also rescans the tree), an error or the
//! polling fallback ends that trust. Ignore rules follow git's precedence
//! (the deepest rule that matches decides), as the build hash does.
//!
//! A change restarts each service whose watched paths it matches, saying why
//! ("src/app.py changed") as the state's reason, on the terminal, on D-Bus
//! and in the journal; with a build (action "rebuild") the build runs first
//! and is skipped as usual when its inputs did not change. Services that
//! list a restarted one in `restart_on` restart after it.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use globset::{Glob, GlobSet, GlobSetBuilder};
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use notify::{RecursiveMode, Watcher};
use tokio::sync::Notify;

use crate::build::{HashScope, TreeHash};
use crate::config::{BuildSpec, Config, WatchAction, WatchSpec};
use crate::fsutil::{work_dir, SafeDir};
use crate::lock;
use crate::output::BoxFuture;

/// Quiet time that ends a burst of events.
const SETTLE: Duration = Duration::from_millis(100);
/// Longest a burst is gathered before acting on it.
const MAX_GATHER: Duration = Duration::from_secs(1);
/// Interval of the polling fallback.
const POLL: Duration = Duration::from_secs(1);
/// Directory names never watched, at any depth (as the build hash).
const ALWAYS_SKIPPED: [&str; 2] = [".git", ".locald"];

/// A running watcher; stops when dropped.
pub(crate) struct ProjectWatch {
    task: tokio::task::JoinHandle<()>,
    inbox: Arc<Inbox>,
}

impl ProjectWatch {
    /// What builds may ask this watcher ([`WatchSlot`]).
    pub(crate) fn source(&self) -> SourceWatch {
        SourceWatch(self.inbox.clone())
    }
}

impl Drop for ProjectWatch {
    fn drop(&mut self) {
        self.task.abort();
        self.inbox.disable();
        // The tree holds the watcher, whose callback holds the inbox: break
        // the cycle so the inotify instance closes.
        lock(&self.inbox.tree).take();
    }
}

/// One watched service.
struct Watched {
    name: String,
    /// Paths (relative to the project) that concern it; `None` is every
    /// file that is not ignored.
    globs: Option<GlobSet>,
    build: bool,
}

/// The spec `watch = true` gets, or `locald up --watch` gives a service
/// without `watch`.
fn default_spec(svc: &crate::config::ServiceConfig) -> WatchSpec {
    WatchSpec {
        paths: Vec::new(),
        action: if svc.build.is_some() {
            WatchAction::Rebuild
        } else {
            WatchAction::Restart
        },
    }
}

fn globset(patterns: &[String]) -> Option<GlobSet> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let p = p.trim_start_matches("./").trim_end_matches('/');
        // A pattern naming a directory covers everything under it, as in
        // a build's `inputs`.
        for pat in [p.to_owned(), format!("{p}/**")] {
            if let Ok(g) = Glob::new(&pat) {
                b.add(g);
            }
        }
    }
    b.build().ok()
}

/// What to watch for each service of `config`: the services with `watch`,
/// and with `all` every service.
fn watched(config: &Config, all: bool) -> Vec<Watched> {
    config
        .services
        .iter()
        .filter_map(|(name, svc)| {
            let spec = match (&svc.watch, all) {
                (Some(w), _) => w.clone(),
                (None, true) => default_spec(svc),
                (None, false) => return None,
            };
            let patterns = if !spec.paths.is_empty() {
                Some(spec.paths.clone())
            } else {
                match &svc.build {
                    Some(BuildSpec::Host(h)) if !h.inputs.is_empty() => Some(h.inputs.clone()),
                    _ => None,
                }
            };
            Some(Watched {
                name: name.clone(),
                globs: patterns.and_then(|p| globset(&p)),
                build: spec.action == WatchAction::Rebuild,
            })
        })
        .collect()
}

/// The ignore rules met while walking, by the directory they apply to.
#[derive(Default)]
struct Ignores(Vec<Gitignore>);

impl Ignores {
    fn add_dir(&mut self, root: &Path, dir: &Path) {
        let mut b = GitignoreBuilder::new(dir);
        let mut any = false;
        let mut files = vec![dir.join(".gitignore"), dir.join(".ignore")];
        if dir == root {
            files.push(root.join(".git/info/exclude"));
        }
        for f in files {
            if f.is_file() && b.add(&f).is_none() {
                any = true;
            }
        }
        if any {
            if let Ok(g) = b.build() {
                self.0.retain(|o| o.path() != dir);
                self.0.push(g);
            }
        }
    }

    /// Git's precedence, as the build hash: the deepest ignore file that
    /// says something about `path` decides, so a subdirectory's
    /// `!vmlinux.scr` whitelists what the root's `vmlinux*` ignores.
    fn ignored(&self, path: &Path, is_dir: bool) -> bool {
        let mut rules: Vec<&Gitignore> = self
            .0
            .iter()
            .filter(|g| path.starts_with(g.path()) && path != g.path())
            .collect();
        rules.sort_by_key(|g| std::cmp::Reverse(g.path().components().count()));
        for g in rules {
            // The path, then its parents below the ignore file's directory
            // (`matched_path_or_any_parents` also tries that directory
            // itself as "", which a `/*/` rule matches).
            let mut m = g.matched(path, is_dir);
            let mut up = path.parent();
            while m.is_none() {
                let Some(dir) = up.filter(|d| d.starts_with(g.path()) && *d != g.path()) else {
                    break;
                };
                m = g.matched(dir, true);
                up = dir.parent();
            }
            if m.is_ignore() {
                return true;
            }
            if m.is_whitelist() {
                return false;
            }
        }
        false
    }
}

/// The watched tree: digests of its files, its ignore rules, the watcher.
struct Tree {
    root: PathBuf,
    files: HashMap<PathBuf, blake3::Hash>,
    ignores: Ignores,
    watcher: Box<dyn Watcher + Send>,
    /// Polling instead of inotify (the watch limit was reached).
    polling: bool,
}

/// The kernel refused another inotify watch.
struct WatchLimit;

fn digest(path: &Path) -> Option<blake3::Hash> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(path).ok()?;
        return Some(blake3::hash(target.as_os_str().as_encoded_bytes()));
    }
    if !meta.is_file() {
        return None;
    }
    // O_NONBLOCK: a FIFO swapped in between the stat and the open must not
    // hang the watcher.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags_nonblock()
        .open(path)
        .ok()?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                h.update(&buf[..n]);
            }
            Err(_) => return None,
        }
    }
    Some(h.finalize())
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
    }
}

fn skipped(rel: &Path) -> bool {
    rel.components()
        .any(|c| ALWAYS_SKIPPED.iter().any(|s| c.as_os_str() == *s))
}

impl Tree {
    /// Walks `dir` (the root or a directory that appeared): watches each
    /// directory that is not ignored and records each file's digest;
    /// returns the files whose digest is new or differs.
    fn walk(&mut self, dir: &Path) -> Result<Vec<PathBuf>, WatchLimit> {
        let mut changed = Vec::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            self.ignores.add_dir(&self.root, &d);
            if !self.polling {
                match self.watcher.watch(&d, RecursiveMode::NonRecursive) {
                    Ok(()) => {}
                    Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => {
                        return Err(WatchLimit)
                    }
                    Err(e) => tracing::debug!("cannot watch {}: {e}", d.display()),
                }
            }
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for entry in rd.flatten() {
                let path = entry.path();
                let Ok(rel) = path.strip_prefix(&self.root) else {
                    continue;
                };
                let Ok(ft) = entry.file_type() else {
                    continue;
                };
                if skipped(rel) || self.ignores.ignored(&path, ft.is_dir()) {
                    continue;
                }
                if ft.is_dir() {
                    stack.push(path);
                } else if let Some(h) = digest(&path) {
                    if self.files.insert(rel.to_owned(), h) != Some(h) {
                        changed.push(rel.to_owned());
                    }
                }
            }
        }
        Ok(changed)
    }

    /// Re-reads the paths events named; returns the files (relative) whose
    /// content changed, appeared or went away.
    fn check(&mut self, paths: HashSet<PathBuf>) -> Result<Vec<PathBuf>, WatchLimit> {
        let mut changed = Vec::new();
        let mut paths: Vec<PathBuf> = paths.into_iter().collect();
        paths.sort();
        for path in paths {
            let Ok(rel) = path.strip_prefix(&self.root).map(Path::to_owned) else {
                continue;
            };
            if rel.as_os_str().is_empty() {
                // Events were lost (queue overflow): walk everything again.
                let root = self.root.clone();
                changed.extend(self.walk(&root)?);
                continue;
            }
            if skipped(&rel) {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path);
            let is_dir = meta.as_ref().is_ok_and(|m| m.is_dir());
            if self.ignores.ignored(&path, is_dir) {
                continue;
            }
            if rel
                .file_name()
                .is_some_and(|n| n == ".gitignore" || n == ".ignore")
            {
                if let Some(parent) = path.parent() {
                    self.ignores.add_dir(&self.root, parent);
                }
            }
            match meta {
                Ok(m) if m.is_dir() => changed.extend(self.walk(&path)?),
                Ok(_) => match digest(&path) {
                    Some(h) => {
                        if self.files.insert(rel.clone(), h) != Some(h) {
                            changed.push(rel);
                        }
                    }
                    None => {
                        if self.files.remove(&rel).is_some() {
                            changed.push(rel);
                        }
                    }
                },
                Err(_) => {
                    // Gone: the file itself, or a directory and all it held.
                    let before = self.files.len();
                    let mut gone: Vec<PathBuf> = self
                        .files
                        .keys()
                        .filter(|k| k.starts_with(&rel))
                        .cloned()
                        .collect();
                    gone.sort();
                    for g in &gone {
                        self.files.remove(g);
                    }
                    if self.files.len() != before {
                        changed.extend(gone);
                    }
                }
            }
        }
        Ok(changed)
    }
}

/// Where the watcher's callback leaves the paths it saw, and what builds
/// may trust from it (see [`SourceWatch`]).
struct Inbox {
    state: Mutex<InboxState>,
    wake: Notify,
    /// The project root.
    root: PathBuf,
    /// `.locald/watch-sync/`: where [`Inbox::sync`] creates its marker files.
    sync_dir: PathBuf,
    /// That directory, held open once the watcher set it up (markers are
    /// made and removed by descriptor, never through the path: see
    /// [`crate::fsutil::dir`]); `None` until then, or when it could not be.
    sync_handle: Mutex<Option<SafeDir>>,
    /// Signalled when a sync marker's event arrives.
    synced: Condvar,
    next_sync: AtomicU64,
    /// The watched tree, once walked; taken when the watcher stops.
    tree: Mutex<Option<Arc<Mutex<Tree>>>>,
    /// Source hashes builds computed while this watcher ran, by
    /// [`hash_key`].
    known: Mutex<HashMap<String, Known>>,
}

#[derive(Default)]
struct InboxState {
    /// Paths events named, not yet checked.
    paths: HashSet<PathBuf>,
    /// Counts events (and watcher errors) received.
    generation: u64,
    /// The tree has been watched by inotify, with every event checked and
    /// every new directory watched, and nothing happened since this instant.
    /// `None` while events are pending, before the first walk ends, and
    /// for good once polling.
    quiet_since: Option<Instant>,
    /// Polling (or stopped): never quiet again.
    disabled: bool,
    /// Highest sync marker number seen.
    synced: u64,
}

/// A source hash a build computed, and when its walk started.
struct Known {
    at: Instant,
    tree: Arc<TreeHash>,
    /// Every file it covers is one the watcher watches (checked once).
    covered: bool,
}

impl Inbox {
    fn new(root: &Path) -> Self {
        Inbox {
            state: Mutex::new(InboxState::default()),
            wake: Notify::new(),
            root: root.to_owned(),
            sync_dir: root.join(".locald").join("watch-sync"),
            sync_handle: Mutex::new(None),
            synced: Condvar::new(),
            next_sync: AtomicU64::new(0),
            tree: Mutex::new(None),
            known: Mutex::new(HashMap::new()),
        }
    }

    /// Stops trusting this watcher for good (polling, or stopped).
    fn disable(&self) {
        let mut st = lock(&self.state);
        st.disabled = true;
        st.quiet_since = None;
    }

    /// Waits until every event for changes made before this call has been
    /// received: creates a marker file in the watched `sync_dir` and waits
    /// for its own event (inotify delivers one instance's events in order).
    /// `false` when that cannot be done within a second.
    fn sync(&self) -> bool {
        let Some(dir) = lock(&self.sync_handle).clone() else {
            return false;
        };
        let n = self.next_sync.fetch_add(1, Ordering::SeqCst) + 1;
        let marker = format!("sync-{n}");
        if dir.create_new(&marker).is_err() {
            return false;
        }
        let deadline = Instant::now() + SYNC_TIMEOUT;
        let mut st = lock(&self.state);
        let ok = loop {
            if st.synced >= n {
                break true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break false;
            }
            st = self
                .synced
                .wait_timeout(st, left)
                .map_or_else(|e| e.into_inner().0, |(g, _)| g);
        };
        drop(st);
        let _ = dir.remove(&marker);
        ok
    }

    /// Whether every file `tree` covers lives in a watched directory, and
    /// no literal input names a file the watcher ignores (the hash reads
    /// such a file anyway; the watcher would not see it change).
    fn covers(&self, scope: &HashScope, tree: &TreeHash) -> bool {
        let Ok(prefix) = scope.root.strip_prefix(&self.root) else {
            return false;
        };
        let Some(watched) = lock(&self.tree).clone() else {
            return false;
        };
        let watched = lock(&watched);
        if watched.polling {
            return false;
        }
        let literal_ignored = scope.inputs.iter().flatten().any(|p| {
            !p.contains(['*', '?', '[', '{'])
                && watched
                    .ignores
                    .ignored(&scope.root.join(p.trim_start_matches("./")), false)
        });
        if literal_ignored {
            tracing::debug!("watch: an input names a file the watcher ignores; walking");
            return false;
        }
        let missing = tree
            .files
            .iter()
            .find(|f| !watched.files.contains_key(&prefix.join(&f.path)));
        if let Some(f) = missing {
            tracing::debug!(
                "watch: {} is hashed but not watched; walking",
                f.path.display()
            );
        }
        missing.is_none()
    }
}

/// Time [`Inbox::sync`] waits for its marker's event.
const SYNC_TIMEOUT: Duration = Duration::from_secs(1);

/// What a running inotify watcher can tell a build about its project's
/// sources: that nothing changed since a hash was computed, so the hash
/// still holds and the tree need not be walked again.
#[derive(Clone)]
pub(crate) struct SourceWatch(Arc<Inbox>);

/// Where a project's builds find its running watcher: set by whoever starts
/// the watcher ([`ProjectWatch::source`]), read by the builds.
pub(crate) type WatchSlot = Arc<Mutex<Option<SourceWatch>>>;

/// The watcher in `slot`, if one is there and still to be trusted (not
/// stopped, not polling).
pub(crate) fn source_watch(slot: &WatchSlot) -> Option<SourceWatch> {
    lock(slot).clone().filter(|w| !lock(&w.0.state).disabled)
}

/// Restarts services when their sources change: the supervisor's
/// services, by name. A trait, so the watcher needs nothing of the
/// supervisor.
pub(crate) trait Restarter: Send + Sync + 'static {
    /// Restarts `service` saying `why`, with its build first when `build`;
    /// `false` when there is no such service.
    fn restart<'a>(&'a self, service: &'a str, why: String, build: bool) -> BoxFuture<'a, bool>;
}

/// The key a build's source hash is remembered under.
pub(crate) fn hash_key(service: &str, scope: &HashScope, config: &str) -> String {
    format!("{service}\0{config}\0{scope:?}")
}

impl SourceWatch {
    /// The instant to pass to [`SourceWatch::remember`] for a hash whose
    /// walk starts now.
    pub(crate) fn now() -> Instant {
        Instant::now()
    }

    /// Remembers `tree`, hashed from `scope` by a walk that started `at`.
    pub(crate) fn remember(&self, key: String, at: Instant, tree: TreeHash) {
        lock(&self.0.known).insert(
            key,
            Known {
                at,
                tree: Arc::new(tree),
                covered: false,
            },
        );
    }

    /// The hash remembered under `key` if it still holds: the watcher was
    /// already watching when its walk started, every event received since
    /// the caller started this check has been checked, and none has
    /// arrived since the walk started. Blocks up to a second.
    pub(crate) fn unchanged(&self, key: &str, scope: &HashScope) -> Option<Arc<TreeHash>> {
        let (at, tree, covered) = {
            let known = lock(&self.0.known);
            let k = known.get(key)?;
            (k.at, k.tree.clone(), k.covered)
        };
        if !self.0.sync() {
            tracing::debug!("watch: no sync with the event queue");
            return None;
        }
        let quiet = lock(&self.0.state).quiet_since.is_some_and(|q| q <= at);
        if !quiet {
            return None;
        }
        if !covered {
            if !self.0.covers(scope, &tree) {
                return None;
            }
            if let Some(k) = lock(&self.0.known).get_mut(key) {
                k.covered = true;
            }
        }
        Some(tree)
    }
}

fn inotify_watcher(inbox: Arc<Inbox>) -> notify::Result<Box<dyn Watcher + Send>> {
    let w = notify::RecommendedWatcher::new(
        move |res: notify::Result<notify::Event>| handle(&inbox, res),
        notify::Config::default(),
    )?;
    Ok(Box::new(w))
}

fn poll_watcher(inbox: Arc<Inbox>, root: &Path) -> notify::Result<Box<dyn Watcher + Send>> {
    let mut w = notify::PollWatcher::new(
        move |res: notify::Result<notify::Event>| handle(&inbox, res),
        notify::Config::default().with_poll_interval(POLL),
    )?;
    w.watch(root, RecursiveMode::Recursive)?;
    Ok(Box::new(w))
}

fn handle(inbox: &Inbox, res: notify::Result<notify::Event>) {
    if let Ok(ev) = &res {
        // Opening or reading a file changes nothing; the watcher's own
        // digests and every build's hash open files, and counting that
        // would make each check trigger the next one. (A truncating open
        // also sends a modify event, which counts.)
        if matches!(
            ev.kind,
            notify::EventKind::Access(
                notify::event::AccessKind::Open(_)
                    | notify::event::AccessKind::Read
                    | notify::event::AccessKind::Close(notify::event::AccessMode::Read)
            )
        ) {
            return;
        }
    }
    let mut st = lock(&inbox.state);
    if let Ok(ev) = &res {
        let sync_watch = lock(&inbox.sync_handle).as_ref().map(SafeDir::fd_path);
        let is_sync = |p: &PathBuf| {
            p.starts_with(&inbox.sync_dir) || sync_watch.as_ref().is_some_and(|w| p.starts_with(w))
        };
        if !ev.paths.is_empty() && ev.paths.iter().all(is_sync) {
            // Our own sync markers: no change to the sources.
            for p in &ev.paths {
                let n = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_prefix("sync-"))
                    .and_then(|n| n.parse::<u64>().ok());
                if let Some(n) = n {
                    st.synced = st.synced.max(n);
                }
            }
            inbox.synced.notify_all();
            return;
        }
    }
    // Anything else (a change, an ignored file, a queue overflow, an error)
    // ends the quiet: builds walk again until the events are checked.
    st.generation += 1;
    st.quiet_since = None;
    match res {
        Ok(ev) => {
            if ev.need_rescan() {
                tracing::debug!("file watch: events were lost; rescanning");
                st.paths.insert(inbox.root.clone());
            }
            if ev.paths.is_empty() && !ev.need_rescan() {
                return;
            }
            st.paths.extend(ev.paths);
            drop(st);
            inbox.wake.notify_one();
        }
        Err(e) => tracing::debug!("file watch: {e}"),
    }
}

/// The message for the watch-limit fallback.
pub(crate) fn limit_message(project: &str) -> String {
    let now = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
        .map(|s| format!(" ({})", s.trim()))
        .unwrap_or_default();
    format!(
        "{project}: the inotify watch limit fs.inotify.max_user_watches{now} is reached; watching by polling every {}s instead. Raise it with `sudo sysctl fs.inotify.max_user_watches=524288` (and a file in /etc/sysctl.d/ to keep it)",
        POLL.as_secs()
    )
}

/// Builds the tree: inotify, or polling when the watch limit is reached.
fn build_tree(project: &str, root: &Path, inbox: &Arc<Inbox>) -> Option<Tree> {
    let watcher = match inotify_watcher(inbox.clone()) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!("{project}: cannot use inotify ({e}); watching by polling");
            inbox.disable();
            poll_watcher(inbox.clone(), root).ok()?
        }
    };
    let mut tree = Tree {
        root: root.to_owned(),
        files: HashMap::new(),
        ignores: Ignores::default(),
        watcher,
        polling: false,
    };
    if tree.walk(root).is_err() {
        fall_back(&mut tree, project, inbox)?;
    }
    if !tree.polling {
        // Builds sync with the event queue through markers in this
        // directory (see `Inbox::sync`); without it they always walk.
        // Markers a killed daemon left would collide with this one's
        // numbers (they restart at 1): clear them first. The directory is
        // opened without following a symlink and must be ours (a teammate
        // who plants `.locald/watch-sync -> ~/precious` in a shared
        // checkout must not have us empty `precious`), and cleared by
        // descriptor.
        let dir = match work_dir(&inbox.sync_dir, true) {
            Ok(Some(dir)) => match dir.clear() {
                Ok(()) => Some(dir),
                Err(e) => {
                    tracing::warn!("cannot clear {}: {e}", dir.path().display());
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(
                    "{}; builds of `{project}` will check their sources in full",
                    crate::error_chain(&e)
                );
                None
            }
        };
        // Watched through the descriptor held (`/proc/self/fd/N`), not by
        // name: a `.locald` renamed meanwhile cannot put the watch on a
        // directory someone else fills with markers.
        let watched = dir.filter(|d| {
            tree.watcher
                .watch(&d.fd_path(), RecursiveMode::NonRecursive)
                .is_ok()
        });
        match watched {
            Some(d) => *lock(&inbox.sync_handle) = Some(d),
            None => inbox.disable(),
        }
    }
    Some(tree)
}

/// Switches `tree` to polling after the watch limit was hit, saying so once.
fn fall_back(tree: &mut Tree, project: &str, inbox: &Arc<Inbox>) -> Option<()> {
    tracing::warn!("{}", limit_message(project));
    inbox.disable();
    tree.watcher = poll_watcher(inbox.clone(), &tree.root).ok()?;
    tree.polling = true;
    // Record every file (without watches) so the poller's events compare
    // against the contents as they are now.
    let root = tree.root.clone();
    let _ = tree.walk(&root);
    Some(())
}

/// Starts watching `config`'s project; `None` when no service is watched.
/// `services` restarts them.
pub(crate) fn spawn(
    config: &Config,
    all: bool,
    services_handle: Arc<dyn Restarter>,
) -> Option<ProjectWatch> {
    let services = watched(config, all);
    if services.is_empty() {
        return None;
    }
    let restart_on: HashMap<String, Vec<String>> = config
        .services
        .iter()
        .map(|(n, s)| (n.clone(), s.restart_on.clone()))
        .collect();
    let project = config.name.clone();
    let root = config.root.clone();
    // The project's own file: a change is told, not acted on (below).
    let config_file = config
        .file
        .strip_prefix(&config.root)
        .map(Path::to_path_buf)
        .ok();
    let inbox = Arc::new(Inbox::new(&root));
    let task_inbox = inbox.clone();
    let task = tokio::spawn(async move {
        let inbox = task_inbox;
        let (p, r, i) = (project.clone(), root.clone(), inbox.clone());
        let Ok(Some(tree)) = tokio::task::spawn_blocking(move || build_tree(&p, &r, &i)).await
        else {
            tracing::warn!("{project}: cannot watch {}", root.display());
            inbox.disable();
            return;
        };
        let tree = Arc::new(Mutex::new(tree));
        *lock(&inbox.tree) = Some(tree.clone());
        {
            // Quiet from now on, unless events came during the walk (a
            // directory created then may not be watched yet).
            let mut st = lock(&inbox.state);
            if st.generation == 0 && !st.disabled {
                st.quiet_since = Some(Instant::now());
            }
        }
        loop {
            inbox.wake.notified().await;
            let first = Instant::now();
            loop {
                tokio::select! {
                    () = inbox.wake.notified() => {
                        if first.elapsed() >= MAX_GATHER { break; }
                    }
                    () = tokio::time::sleep(SETTLE) => break,
                }
            }
            let (paths, generation) = {
                let mut st = lock(&inbox.state);
                (std::mem::take(&mut st.paths), st.generation)
            };
            let (p, i, t) = (project.clone(), inbox.clone(), tree.clone());
            let Ok(changed) = tokio::task::spawn_blocking(move || {
                let mut tree = lock(&t);
                match tree.check(paths) {
                    Ok(c) => c,
                    Err(WatchLimit) => {
                        let _ = fall_back(&mut tree, &p, &i);
                        Vec::new()
                    }
                }
            })
            .await
            else {
                inbox.disable();
                return;
            };
            {
                // Every event so far is checked (and every new directory
                // watched): quiet again, unless more came meanwhile.
                let mut st = lock(&inbox.state);
                if st.generation == generation && !st.disabled {
                    st.quiet_since = Some(Instant::now());
                }
            }
            let changed = without_config(&project, config_file.as_deref(), changed);
            if !changed.is_empty() {
                dispatch(
                    &project,
                    &services,
                    &restart_on,
                    &*services_handle,
                    &changed,
                )
                .await;
            }
        }
    });
    Some(ProjectWatch { task, inbox })
}

/// "src/app.py changed", "src/app.py and 3 more changed".
/// `changed` without the project's `locald.toml` (or `Procfile`). A
/// restart would run the old configuration again, the new one only
/// applies on reload (a half-saved file may not even parse): so its change
/// is said, with what to do, and restarts nothing.
fn without_config(project: &str, config: Option<&Path>, changed: Vec<PathBuf>) -> Vec<PathBuf> {
    let Some(config) = config else {
        return changed;
    };
    let before = changed.len();
    let rest: Vec<PathBuf> = changed.into_iter().filter(|p| p != config).collect();
    if rest.len() != before {
        tracing::warn!(
            project = %project,
            "{project}: {} changed: run `locald-ctl reload` to apply it (nothing was restarted for it)",
            config.display()
        );
    }
    rest
}

fn describe(paths: &[&PathBuf]) -> String {
    match paths {
        [] => "files changed".into(),
        [one] => format!("{} changed", one.display()),
        [one, rest @ ..] => format!("{} and {} more changed", one.display(), rest.len()),
    }
}

async fn dispatch(
    project: &str,
    services: &[Watched],
    restart_on: &HashMap<String, Vec<String>>,
    senders: &dyn Restarter,
    changed: &[PathBuf],
) {
    let mut restarted: Vec<String> = Vec::new();
    for w in services {
        let hits: Vec<&PathBuf> = changed
            .iter()
            .filter(|p| w.globs.as_ref().is_none_or(|g| g.is_match(p)))
            .collect();
        if hits.is_empty() {
            continue;
        }
        let why = describe(&hits);
        tracing::info!(project = %project, service = %w.name, "{project}/{}: {why}", w.name);
        if senders.restart(&w.name, why, w.build).await {
            restarted.push(w.name.clone());
        }
    }
    for (name, on) in restart_on {
        if restarted.contains(name) {
            continue;
        }
        if let Some(dep) = on.iter().find(|d| restarted.contains(d)) {
            senders
                .restart(name, format!("{dep} restarted"), false)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(root: &Path) -> (Tree, Arc<Inbox>) {
        let inbox = Arc::new(Inbox::new(root));
        let t = build_tree("t", root, &inbox).expect("tree");
        (t, inbox)
    }

    #[test]
    fn only_real_changes_of_files_that_are_not_ignored_count() {
        let d = tempfile::tempdir().expect("tmp");
        let root = d.path().canonicalize().expect("canon");
        std::fs::create_dir_all(root.join("src")).expect("mkdir");
        std::fs::create_dir_all(root.join("build")).expect("mkdir");
        std::fs::write(root.join(".gitignore"), "build/\n*.log\n").expect("write");
        std::fs::write(root.join("src/app.py"), "v1").expect("write");
        let (mut t, _inbox) = tree(&root);
        assert!(t.files.contains_key(Path::new("src/app.py")));

        // Same content: nothing.
        std::fs::write(root.join("src/app.py"), "v1").expect("write");
        let set = |p: &[&str]| p.iter().map(|p| root.join(p)).collect::<HashSet<_>>();
        assert!(t
            .check(set(&["src/app.py"]))
            .ok()
            .expect("check")
            .is_empty());
        // Ignored: nothing.
        std::fs::write(root.join("x.log"), "1").expect("write");
        std::fs::write(root.join("build/out"), "1").expect("write");
        assert!(t
            .check(set(&["x.log", "build/out"]))
            .ok()
            .expect("check")
            .is_empty());
        // A rename over the file: the target changed.
        std::fs::write(root.join("src/.app.py.swp"), "v2").expect("write");
        std::fs::rename(root.join("src/.app.py.swp"), root.join("src/app.py")).expect("mv");
        let c = t
            .check(set(&["src/.app.py.swp", "src/app.py"]))
            .ok()
            .expect("check");
        assert_eq!(c, [PathBuf::from("src/app.py")]);
        // A directory deleted and recreated: its files count again.
        std::fs::remove_dir_all(root.join("src")).expect("rm");
        let c = t.check(set(&["src"])).ok().expect("check");
        assert_eq!(c, [PathBuf::from("src/app.py")]);
        std::fs::create_dir(root.join("src")).expect("mkdir");
        std::fs::write(root.join("src/app.py"), "v3").expect("write");
        let c = t.check(set(&["src"])).ok().expect("check");
        assert_eq!(c, [PathBuf::from("src/app.py")]);
    }

    #[test]
    fn a_change_of_the_project_file_restarts_nothing() {
        let cfg = Path::new("locald.toml");
        let changed = vec![PathBuf::from("locald.toml"), PathBuf::from("src/app.py")];
        assert_eq!(
            without_config("p", Some(cfg), changed),
            [PathBuf::from("src/app.py")]
        );
        assert!(without_config("p", Some(cfg), vec![cfg.to_path_buf()]).is_empty());
        let sub = vec![PathBuf::from("sub/locald.toml")];
        assert_eq!(without_config("p", Some(cfg), sub.clone()), sub);
    }

    #[test]
    fn globs_and_descriptions() {
        let g = globset(&["src".into(), "templates/*.html".into()]).expect("globs");
        assert!(g.is_match("src/a/b.py"));
        assert!(g.is_match("templates/x.html"));
        assert!(!g.is_match("README.md"));
        let a = PathBuf::from("a");
        let b = PathBuf::from("b");
        assert_eq!(describe(&[&a]), "a changed");
        assert_eq!(describe(&[&a, &b]), "a and 1 more changed");
    }

    #[test]
    fn the_limit_message_names_the_sysctl() {
        let m = limit_message("p");
        assert!(m.contains("sysctl fs.inotify.max_user_watches="), "{m}");
        assert!(m.contains("polling"), "{m}");
    }

    /// The trust `SourceWatch` gives a remembered hash, and everything that
    /// takes it away: an event, a queue overflow, the polling fallback.
    #[test]
    fn a_remembered_hash_holds_only_while_nothing_happens() {
        use crate::build::{hash_tree, StatCache};
        let d = tempfile::tempdir().expect("tmp");
        let root = d.path().canonicalize().expect("canon");
        std::fs::create_dir_all(root.join("src")).expect("mkdir");
        std::fs::write(root.join("src/app.py"), "v1").expect("write");
        // A marker a killed daemon left behind.
        std::fs::create_dir_all(root.join(".locald/watch-sync")).expect("mkdir");
        std::fs::write(root.join(".locald/watch-sync/sync-1"), "").expect("write");
        let (t, inbox) = tree(&root);
        *lock(&inbox.tree) = Some(Arc::new(Mutex::new(t)));
        // What `spawn` does once the first walk is done.
        let quiet = |inbox: &Inbox| lock(&inbox.state).quiet_since = Some(Instant::now());
        quiet(&inbox);
        let scope = HashScope::tree(&root);
        let watch = SourceWatch(inbox.clone());
        let hash = || hash_tree(&scope, &mut StatCache::in_memory()).expect("hash");
        let remember = || watch.remember("k".into(), SourceWatch::now(), hash());

        remember();
        assert!(
            watch.unchanged("k", &scope).is_some(),
            "quiet since the walk"
        );
        assert!(watch.unchanged("other", &scope).is_none(), "never hashed");

        // An event (even one the watcher would ignore) ends the trust, and
        // so does the watcher becoming quiet again after the walk started.
        std::fs::write(root.join("src/app.py"), "v2").expect("write");
        assert!(watch.unchanged("k", &scope).is_none(), "edit seen");
        quiet(&inbox);
        assert!(
            watch.unchanged("k", &scope).is_none(),
            "quiet only since after the walk"
        );
        remember();
        assert!(watch.unchanged("k", &scope).is_some(), "a new walk");

        // A queue overflow.
        handle(
            &inbox,
            Ok(notify::Event::new(notify::EventKind::Other).set_flag(notify::event::Flag::Rescan)),
        );
        assert!(watch.unchanged("k", &scope).is_none(), "overflow");
        assert!(lock(&inbox.state).paths.contains(&root), "overflow rescans");
        quiet(&inbox);
        remember();
        assert!(watch.unchanged("k", &scope).is_some());

        // A watcher error.
        handle(&inbox, Err(notify::Error::generic("boom")));
        assert!(watch.unchanged("k", &scope).is_none(), "error");
        quiet(&inbox);
        remember();
        assert!(watch.unchanged("k", &scope).is_some());

        // The polling fallback: never again, and not found any more.
        let slot: WatchSlot = Arc::new(Mutex::new(Some(SourceWatch(inbox.clone()))));
        assert!(source_watch(&slot).is_some(), "offered while trusted");
        inbox.disable();
        quiet(&inbox);
        assert!(
            source_watch(&slot).is_none(),
            "a disabled watcher is not offered"
        );
        lock(&inbox.state).quiet_since = None;
        remember();
        assert!(watch.unchanged("k", &scope).is_none(), "polling");
    }

    /// A subdirectory's `!pattern` wins over the root's ignore rule, as in
    /// git and the build hash (the kernel's `arch/sh/boot/.gitignore`).
    #[test]
    fn a_deeper_whitelist_wins() {
        let d = tempfile::tempdir().expect("tmp");
        let root = d.path().canonicalize().expect("canon");
        std::fs::create_dir_all(root.join("boot")).expect("mkdir");
        std::fs::write(root.join(".gitignore"), "vmlinux*\n").expect("write");
        std::fs::write(root.join("boot/.gitignore"), "!vmlinux.scr\n").expect("write");
        std::fs::write(root.join("boot/vmlinux.scr"), "x").expect("write");
        std::fs::write(root.join("boot/vmlinux.o"), "x").expect("write");
        std::fs::create_dir_all(root.join("usr/include/linux")).expect("mkdir");
        std::fs::write(root.join("usr/include/.gitignore"), "/*/\n").expect("write");
        std::fs::write(root.join("usr/include/Makefile"), "x").expect("write");
        std::fs::write(root.join("usr/include/linux/gen.h"), "x").expect("write");
        let (t, _inbox) = tree(&root);
        assert!(
            t.files.contains_key(Path::new("usr/include/Makefile")),
            "{:?}",
            t.files.keys()
        );
        assert!(!t.files.contains_key(Path::new("usr/include/linux/gen.h")));
        assert!(t.files.contains_key(Path::new("boot/vmlinux.scr")));
        assert!(!t.files.contains_key(Path::new("boot/vmlinux.o")));
    }

    /// A hash covering a file the watcher does not watch (an ignored file a
    /// literal input names) is never trusted.
    #[test]
    fn a_literal_input_the_watcher_ignores_is_never_trusted() {
        use crate::build::{hash_tree, StatCache};
        let d = tempfile::tempdir().expect("tmp");
        let root = d.path().canonicalize().expect("canon");
        std::fs::write(root.join(".gitignore"), ".env\n").expect("write");
        std::fs::write(root.join(".env"), "A=1").expect("write");
        std::fs::write(root.join("app.py"), "v1").expect("write");
        let (t, inbox) = tree(&root);
        // The watcher's own setup (making .locald/watch-sync) sends events
        // that may arrive late on a busy machine and end the quiet the test
        // sets: wait until they are in.
        assert!(inbox.sync(), "the watcher settles");
        *lock(&inbox.tree) = Some(Arc::new(Mutex::new(t)));
        lock(&inbox.state).quiet_since = Some(Instant::now());
        let watch = SourceWatch(inbox.clone());
        for (inputs, trusted) in [(vec!["app.py"], true), (vec!["app.py", ".env"], false)] {
            let inputs: Vec<String> = inputs.into_iter().map(str::to_owned).collect();
            let scope = HashScope::inputs(&root, &inputs);
            let h = hash_tree(&scope, &mut StatCache::in_memory()).expect("hash");
            watch.remember("k".into(), SourceWatch::now(), h);
            assert_eq!(
                watch.unchanged("k", &scope).is_some(),
                trusted,
                "{inputs:?}"
            );
        }
    }
}
