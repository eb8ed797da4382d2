//! Finding a project and knowing it by name, as every program needs to:
//! the daemon, `locald up`, and a client like `locald-ctl logs` that reads
//! the journal without asking the daemon. Checking the whole file is the
//! engine's (`locald::config`); this is only where it is and what it is
//! called.

use std::path::{Path, PathBuf};

use crate::fsutil::{read_input, trusted_owner, UnsafeFile, CONFIG_LIMIT};

/// The project file.
pub const FILE_NAME: &str = "locald.toml";
/// A foreman-style process list, a project of its own when there is no
/// `locald.toml`.
pub const PROCFILE: &str = "Procfile";

/// Why no project file was found.
#[derive(Debug, thiserror::Error)]
pub enum FindError {
    /// No `locald.toml` (or `Procfile`) in the directory or any parent the
    /// search may enter.
    #[error("no {FILE_NAME} or Procfile in {} or any parent directory{}", dir.display(), stopped.as_deref().map(|s| format!(" (the search stopped at {s})")).unwrap_or_default())]
    NotFound {
        /// Where the search started.
        dir: PathBuf,
        /// Where and why the climb stopped before `/`, if it did.
        stopped: Option<String>,
    },
    /// The path is not a directory.
    #[error("{} is not a directory", path.display())]
    NotADirectory {
        /// The path given.
        path: PathBuf,
    },
    /// Reading a directory failed.
    #[error("cannot read {}", path.display())]
    Read {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The `locald.toml` (else `Procfile`) that governs `dir`: in `dir` or the
/// nearest parent.
///
/// The climb stops (as git's does since CVE-2022-24765) at a directory owned
/// by someone other than the caller or root, and at a file system boundary,
/// so a `locald.toml` planted in a shared parent is never found from a
/// directory below it. The file found is still checked when it is read: it
/// must belong to the caller or root.
pub fn find_project_file(dir: &Path) -> Result<PathBuf, FindError> {
    use std::os::unix::fs::MetadataExt;
    let read = |path: &Path, source| FindError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(dir).map_err(|e| read(dir, e))?;
    if !meta.is_dir() {
        return Err(FindError::NotADirectory {
            path: dir.to_owned(),
        });
    }
    let dir = dir.canonicalize().map_err(|e| read(dir, e))?;
    let mut stopped = None;
    for d in dir.ancestors() {
        let here = std::fs::metadata(d).map_err(|e| read(d, e))?;
        if d != dir {
            let why = if here.dev() != meta.dev() {
                Some("another file system".to_owned())
            } else if !trusted_owner(here.uid()) {
                Some(format!("owned by uid {}, not by you or root", here.uid()))
            } else {
                None
            };
            if let Some(why) = why {
                // Worth saying only when the search missed a file for it.
                stopped = beyond(d).map(|file| {
                    format!(
                        "{}: {why}; {} is not used from below it",
                        d.display(),
                        file.display()
                    )
                });
                break;
            }
        }
        for name in [FILE_NAME, PROCFILE] {
            let file = d.join(name);
            match std::fs::metadata(&file) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Ok(file),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                // Not a "not found": a directory we may not read must say so.
                Err(e) => return Err(read(&file, e)),
            }
        }
    }
    Err(FindError::NotFound { dir, stopped })
}

/// The first project file in `from` or a parent, looked for only to say
/// that the search stopped before it.
fn beyond(from: &Path) -> Option<PathBuf> {
    from.ancestors()
        .flat_map(|d| [d.join(FILE_NAME), d.join(PROCFILE)])
        .find(|f| std::fs::metadata(f).is_ok_and(|m| m.is_file()))
}

/// Turns a directory name into a valid project name (the rule written
/// names must follow): other characters become `-`, runs of them one, the
/// name starts and ends with a letter or digit and has at most 64
/// characters; `project` when nothing is left. A name starting with `-`
/// would be read as an option (`locald-ctl -p -n-`) and a URL label of
/// `-n-` is not a host name.
pub fn derive_name(dir_name: &str) -> String {
    let mut n = String::new();
    for c in dir_name.chars() {
        let c = if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '-'
        };
        if !(c == '-' && n.ends_with('-')) {
            n.push(c);
        }
    }
    let n: String = n
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .chars()
        .take(64)
        .collect();
    let n = n.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    if n.is_empty() {
        "project".into()
    } else {
        n.to_owned()
    }
}

/// What a client needs to know of a project without the daemon: its name
/// and its services' names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The project's name (`[project] name`, else derived from its
    /// directory).
    pub name: String,
    /// Its services, by name.
    pub services: Vec<String>,
}

/// Why a project's identity could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// No project file.
    #[error(transparent)]
    Find(#[from] FindError),
    /// The file may not be read.
    #[error(transparent)]
    Refused(#[from] UnsafeFile),
    /// Not TOML (`locald check` says where).
    #[error("{}: not valid TOML (`locald check` says where)", path.display())]
    Toml {
        /// The file.
        path: PathBuf,
    },
}

/// The identity of the project containing `dir`. Only the name and the
/// service names are read; the rest of the file is `locald check`'s.
pub fn identity(dir: &Path) -> Result<Identity, IdentityError> {
    let file = find_project_file(dir)?;
    let what = if file.ends_with(PROCFILE) {
        "a Procfile"
    } else {
        "locald.toml"
    };
    let text = String::from_utf8_lossy(&read_input(&file, what, CONFIG_LIMIT)?).into_owned();
    let dir_name = file
        .parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if file.ends_with(PROCFILE) {
        return Ok(Identity {
            name: derive_name(&dir_name),
            services: procfile_names(&text),
        });
    }
    let table: toml::Table =
        toml::from_str(&text).map_err(|_| IdentityError::Toml { path: file.clone() })?;
    let name = table
        .get("project")
        .and_then(|p| p.get("name"))
        .and_then(toml::Value::as_str)
        .map_or_else(|| derive_name(&dir_name), str::to_owned);
    let services = ["services", "service"]
        .iter()
        .filter_map(|k| table.get(*k).and_then(toml::Value::as_table))
        .flat_map(|t| t.keys().cloned())
        .collect();
    Ok(Identity { name, services })
}

/// The process names of a Procfile (`name: command` lines).
fn procfile_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.starts_with('#') {
                return None;
            }
            let (name, _) = l.split_once(':')?;
            let name = name.trim();
            (!name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .then(|| name.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_from_files_and_directories() {
        let t = tempfile::tempdir().expect("tempdir");
        let p = t.path().join("my shop");
        std::fs::create_dir(&p).expect("mkdir");
        std::fs::write(
            p.join(FILE_NAME),
            "[services.web]\ncommand = \"x\"\n[services.db]\ncommand = \"y\"\n",
        )
        .expect("write");
        let id = identity(&p).expect("identity");
        assert_eq!(id.name, "my-shop");
        assert_eq!(id.services, ["db", "web"]);
        std::fs::write(
            p.join(FILE_NAME),
            "[project]\nname = \"shop\"\n[service.api]\n",
        )
        .expect("w");
        assert_eq!(identity(&p).expect("identity").name, "shop");
        let q = t.path().join("procs");
        std::fs::create_dir(&q).expect("mkdir");
        std::fs::write(q.join(PROCFILE), "# c\nweb: run web\nworker: run w\n").expect("w");
        let id = identity(&q).expect("identity");
        assert_eq!(
            (id.name.as_str(), id.services),
            ("procs", vec!["web".to_owned(), "worker".to_owned()])
        );
    }
}
