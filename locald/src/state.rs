//! `projects.json`: the set of projects that are up, kept so that a restarted
//! daemon brings them back.
//!
//! One writer at a time: a save takes a ticket, and whoever holds the file's
//! lock writes the newest set for every ticket taken so far, so forty
//! concurrent `Up`s cost a few writes, each a whole document written to a
//! unique temporary name, fsynced and renamed into place
//! ([`crate::fsutil::write_atomic`]).
//!
//! Reading is strict: a file that is not the expected document (random
//! bytes, truncation, the wrong shape, a directory in its place) is renamed
//! to `projects.json.corrupt-<time>`, reported at warning level and on
//! `locald-ctl status`, and the daemon starts with no saved projects (their
//! leftover processes are still found through the runtime's records). A
//! file from a newer locald (`version` above [`VERSION`]) is refused, not
//! read and not overwritten.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::fsutil::{read_state, write_atomic, STATE_LIMIT};
use crate::lock;

/// The version this locald writes and reads.
pub const VERSION: u32 = 1;

/// Why the state cannot be used at all.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Written by a newer locald.
    #[error("{} was written by a newer locald (state version {found}; this one reads {VERSION}); run that version, or move the file away to start with no saved projects", path.display())]
    FutureVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: u64,
    },
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    version: u32,
    projects: Vec<PathBuf>,
}

/// The state file of one engine. Cheap to clone.
#[derive(Clone)]
pub struct StateFile {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// Tickets: (taken so far, written so far). Held while writing.
    tickets: Mutex<(u64, u64)>,
    problem: Mutex<Option<String>>,
}

impl StateFile {
    /// The state file `DIR/projects.json`.
    pub fn new(dir: PathBuf) -> StateFile {
        StateFile {
            inner: Arc::new(Inner {
                path: dir.join("projects.json"),
                tickets: Mutex::new((0, 0)),
                problem: Mutex::new(None),
            }),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// What was wrong with the file at the last load, if anything.
    pub fn problem(&self) -> Option<String> {
        lock(&self.inner.problem).clone()
    }

    /// Refuses a file of a newer version; anything else (missing, corrupt,
    /// ours) is left to [`load_or_set_aside`](Self::load_or_set_aside).
    pub fn check_version(&self) -> Result<(), StateError> {
        let Ok(Some(bytes)) = read_state(&self.inner.path, STATE_LIMIT) else {
            return Ok(());
        };
        let version = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("version").and_then(serde_json::Value::as_u64));
        match version {
            Some(found) if found > u64::from(VERSION) => Err(StateError::FutureVersion {
                path: self.inner.path.clone(),
                found,
            }),
            _ => Ok(()),
        }
    }

    /// The saved projects. A file that cannot be used is renamed aside and
    /// reported; the answer is then empty.
    pub fn load_or_set_aside(&self) -> Vec<PathBuf> {
        match self.parse() {
            Ok(projects) => projects,
            Err(why) => {
                let aside = self.set_aside();
                let text = match &aside {
                    Ok(to) => format!(
                        "the saved projects in {} could not be read ({why}); the file was kept as {} and no project was brought back",
                        self.inner.path.display(),
                        to.display()
                    ),
                    Err(e) => format!(
                        "the saved projects in {} could not be read ({why}) nor moved aside ({e}); no project was brought back",
                        self.inner.path.display()
                    ),
                };
                tracing::warn!("{text}");
                *lock(&self.inner.problem) = Some(text);
                Vec::new()
            }
        }
    }

    fn parse(&self) -> Result<Vec<PathBuf>, String> {
        let bytes = match read_state(&self.inner.path, STATE_LIMIT) {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(Vec::new()),
            Err(e) => return Err(crate::error_chain(&e)),
        };
        let saved: Saved =
            serde_json::from_slice(&bytes).map_err(|e| format!("not a state document: {e}"))?;
        if saved.version != VERSION {
            return Err(format!("unknown state version {}", saved.version));
        }
        Ok(saved.projects)
    }

    fn set_aside(&self) -> std::io::Result<PathBuf> {
        let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let mut to = self.inner.path.as_os_str().to_owned();
        to.push(format!(".corrupt-{}", stamp.replace(':', "")));
        let to = PathBuf::from(to);
        std::fs::rename(&self.inner.path, &to)?;
        Ok(to)
    }

    /// Takes a ticket for a save that must include every change made so far.
    pub fn request(&self) -> u64 {
        let mut t = lock(&self.inner.tickets);
        t.0 += 1;
        t.0
    }

    /// Writes `projects()` unless a write that covers `ticket` has landed.
    /// Blocking: call from a blocking thread.
    pub fn write_if_needed(&self, ticket: u64, projects: impl FnOnce() -> Vec<PathBuf>) {
        let mut t = lock(&self.inner.tickets);
        if t.1 >= ticket {
            return;
        }
        // Every ticket taken before this point is covered by what we read now.
        let covers = t.0;
        let saved = Saved {
            version: VERSION,
            projects: projects(),
        };
        let data = match serde_json::to_vec_pretty(&saved) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("cannot encode the state: {e}");
                return;
            }
        };
        match write_atomic(&self.inner.path, &data) {
            Ok(()) => t.1 = covers,
            Err(e) => tracing::warn!(
                "cannot save the projects that are up to {}: {e}",
                self.inner.path.display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> (tempfile::TempDir, StateFile) {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = StateFile::new(dir.path().to_owned());
        (dir, s)
    }

    #[test]
    fn round_trip() {
        let (_d, s) = state();
        let t = s.request();
        s.write_if_needed(t, || vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(
            s.load_or_set_aside(),
            vec![PathBuf::from("/a"), PathBuf::from("/b")]
        );
        assert!(s.problem().is_none());
    }

    #[test]
    fn corrupt_files_are_set_aside_and_reported() {
        for bad in [
            &b"\x00\xffgarbage"[..],
            b"{\"version\":1,\"projects\":[\"/a\"",
            b"[1,2,3]",
            b"{\"version\":1,\"projects\":\"/a\"}",
            b"{\"version\":0,\"projects\":[]}",
        ] {
            let (d, s) = state();
            std::fs::write(s.path(), bad).expect("write");
            assert!(s.load_or_set_aside().is_empty());
            let problem = s.problem().expect("reported");
            assert!(problem.contains("corrupt-"), "{problem}");
            let names: Vec<String> = std::fs::read_dir(d.path())
                .expect("ls")
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect();
            assert!(
                names
                    .iter()
                    .any(|n| n.starts_with("projects.json.corrupt-")),
                "{names:?}"
            );
            assert!(!s.path().exists());
        }
    }

    #[test]
    fn a_directory_in_its_place_is_set_aside() {
        let (_d, s) = state();
        std::fs::create_dir(s.path()).expect("mkdir");
        assert!(s.load_or_set_aside().is_empty());
        assert!(s.problem().is_some());
        assert!(!s.path().exists());
    }

    #[test]
    fn future_versions_are_refused_and_kept() {
        let (_d, s) = state();
        std::fs::write(s.path(), br#"{"version":2,"projects":[],"more":1}"#).expect("write");
        assert!(matches!(
            s.check_version(),
            Err(StateError::FutureVersion { found: 2, .. })
        ));
        assert!(s.path().exists());
    }

    #[test]
    fn concurrent_saves_coalesce_into_whole_documents() {
        let (_d, s) = state();
        let threads: Vec<_> = (0..40)
            .map(|i| {
                let s = s.clone();
                std::thread::spawn(move || {
                    let t = s.request();
                    s.write_if_needed(t, || {
                        (0..=i).map(|j| PathBuf::from(format!("/p{j}"))).collect()
                    });
                })
            })
            .collect();
        for t in threads {
            t.join().expect("join");
        }
        // Whatever order they ran in, the file is one valid document.
        assert!(!s.load_or_set_aside().is_empty());
        assert!(s.problem().is_none());
    }
}
