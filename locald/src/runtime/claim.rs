//! Which locald instance runs a project: one lock file per project instance.
//!
//! The daemon and any number of foreground `locald up`s may run at once.
//! Each must know which processes are its own, or a restart's clean-up of
//! "what an earlier run left behind" kills another instance's services. A
//! project instance is keyed by its name *and* its directory
//! ([`project_key`]): pid records and cgroups live under that key, and the
//! instance that runs it holds `RUNTIME_DIR/projects/KEY.lock` with `flock`
//! for as long as it does. A second instance of the same directory is refused
//! with the holder's description; a copy of the project elsewhere has
//! another key and never touches the first one's processes. A lock nobody
//! holds means whatever its records show is left over from a locald that
//! died, and may be cleaned up.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::fsutil::{sub_dir, UnsafeFile};
use locald_core::paths::RuntimeDir;

/// The key of a project instance: its name and a hash of its directory,
/// safe as a file and cgroup name.
pub fn project_key(name: &str, root: &Path) -> String {
    let hash = blake3::hash(std::os::unix::ffi::OsStrExt::as_bytes(root.as_os_str()));
    format!("{name}-{}", &hash.to_hex()[..12])
}

/// Whether `key` has the form [`project_key`] gives: a name, `-`, and 12
/// hex digits, usable as one path component.
fn is_key(key: &str) -> bool {
    let Some((name, hash)) = key.rsplit_once('-') else {
        return false;
    };
    !name.is_empty()
        && !key.contains(['/', '\0'])
        && hash.len() == 12
        && hash.bytes().all(|b| b.is_ascii_hexdigit())
}

/// How a lock's holder describes itself while it cleans up after a dead
/// locald.
const CLEANING: &str = "cleaning up after a locald that died";

/// Why a project could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// Another locald runs it.
    #[error("{holder} already runs the project in {}", root.display())]
    Held {
        /// The project directory.
        root: PathBuf,
        /// Who, as the holder described itself ("the locald daemon (pid 42)").
        holder: String,
    },
    /// A locald is cleaning up what a dead one left of this project; it holds
    /// the claim for a moment only.
    #[error("a locald is cleaning up what an earlier run left of the project in {}", root.display())]
    CleaningUp {
        /// The project directory.
        root: PathBuf,
    },
    /// The runtime directory is not safe to use.
    #[error(transparent)]
    RuntimeDir(#[from] UnsafeFile),
    /// The lock file could not be opened or locked.
    #[error("cannot lock {}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// A held claim on a project instance; released when dropped (or when the
/// process dies, however it dies).
#[derive(Debug)]
pub struct ProjectClaim {
    _lock: Flock<File>,
}

fn lock_path(runtime: &RuntimeDir, key: &str) -> Result<PathBuf, ClaimError> {
    let dir = runtime.open()?.join("projects");
    sub_dir(&dir).map_err(|source| ClaimError::Io {
        path: dir.clone(),
        source,
    })?;
    Ok(dir.join(format!("{key}.lock")))
}

fn open_lock(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

impl ProjectClaim {
    /// Claims the project `key` (directory `root`) for this process, which
    /// describes itself as `holder` to anyone refused ("the locald daemon").
    pub fn acquire(
        runtime: &RuntimeDir,
        key: &str,
        root: &Path,
        holder: &str,
    ) -> Result<ProjectClaim, ClaimError> {
        let path = lock_path(runtime, key)?;
        let io = |source| ClaimError::Io {
            path: path.clone(),
            source,
        };
        let file = open_lock(&path).map_err(io)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = text.lines().next().unwrap_or("").trim();
                // Empty: whoever took the lock has not written who they
                // are yet — a live holder a moment from now, or a brief
                // `take_abandoned` (another locald's sweep or `live_roots`
                // looking at every lock) that lets go at once. Either way
                // the caller waits and tries again, as for a clean-up.
                if holder.is_empty() || holder.starts_with(CLEANING) {
                    return Err(ClaimError::CleaningUp {
                        root: root.to_owned(),
                    });
                }
                return Err(ClaimError::Held {
                    root: root.to_owned(),
                    holder: holder.to_owned(),
                });
            }
            Err((_, e)) => return Err(io(e.into())),
        };
        let text = format!(
            "{holder} (pid {})\n{}\n",
            std::process::id(),
            root.display()
        );
        lock.set_len(0).map_err(io)?;
        lock.rewind().map_err(io)?;
        lock.write_all(text.as_bytes()).map_err(io)?;
        Ok(ProjectClaim { _lock: lock })
    }

    /// Claims `key` only if nobody holds it, for cleaning up after a locald
    /// that died; `None` when a live instance holds it (or it cannot be
    /// checked: then nothing of it is touched).
    pub fn take_abandoned(runtime: &RuntimeDir, key: &str) -> Option<ProjectClaim> {
        // A key is `name-hash` ([`project_key`]); anything else (an empty
        // key read from a half-made record) names no project and must not
        // be "claimed" as abandoned.
        if !is_key(key) {
            return None;
        }
        let path = lock_path(runtime, key).ok()?;
        let file = open_lock(&path).ok()?;
        let mut lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).ok()?;
        // Says so to an instance that wants the project meanwhile, which
        // then waits a moment instead of being refused.
        let text = format!("{CLEANING} (pid {})\n", std::process::id());
        let _ = lock.set_len(0);
        let _ = lock.rewind();
        let _ = lock.write_all(text.as_bytes());
        Some(ProjectClaim { _lock: lock })
    }
}

/// The directories of the project instances that a live locald (this
/// process included) runs now, read from the lock files of the claims that
/// are held. A lock nobody holds is briefly taken as
/// [`ProjectClaim::take_abandoned`] does, so an instance claiming it at
/// that moment waits instead of being refused.
pub fn live_roots(runtime: &RuntimeDir) -> Result<Vec<PathBuf>, ClaimError> {
    let dir = runtime.open()?.join("projects");
    let entries = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ClaimError::Io { path: dir, source }),
    };
    let mut roots = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ClaimError::Io {
            path: dir.clone(),
            source,
        })?;
        let name = entry.file_name();
        let Some(key) = name.to_str().and_then(|n| n.strip_suffix(".lock")) else {
            continue;
        };
        if ProjectClaim::take_abandoned(runtime, key).is_some() {
            continue;
        }
        // Held: its holder wrote its directory on the second line (retry
        // briefly in case it has only just taken the lock).
        for _ in 0..5 {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            if let Some(root) = text.lines().nth(1).filter(|l| l.starts_with('/')) {
                roots.push(PathBuf::from(root));
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_keys_are_taken_as_abandoned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = RuntimeDir::new(dir.path().join("rt"));
        assert!(is_key(&project_key("web", Path::new("/p"))));
        for bad in [
            "",
            "-",
            "web",
            "web-",
            "a/b-0123456789ab",
            "web-0123456789aZ",
        ] {
            assert!(!is_key(bad), "{bad:?}");
            assert!(
                ProjectClaim::take_abandoned(&runtime, bad).is_none(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn keys_differ_by_directory() {
        let a = project_key("hello", Path::new("/home/u/a"));
        let b = project_key("hello", Path::new("/home/u/b"));
        assert_ne!(a, b);
        assert!(a.starts_with("hello-"));
        assert_eq!(a, project_key("hello", Path::new("/home/u/a")));
    }
}
