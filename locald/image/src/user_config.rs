//! The per-user config, `$XDG_CONFIG_HOME/locald/config.toml`: settings
//! that belong to the user rather than to a project.
//!
//! Today it holds one key:
//!
//! ```toml
//! # Registries spoken to over plain HTTP (a registry on localhost for
//! # tests or a mirror). Everything else is HTTPS only.
//! insecure_registries = ["127.0.0.1:5000", "localhost:5000"]
//! ```
//!
//! A missing file is an empty config. The file is read like every config
//! input ([`fsutil::read_input`]: ours or root's, not writable by others, a
//! regular file of bounded size), and unknown keys are errors, so a typo
//! does not silently turn a setting off.

use std::path::{Path, PathBuf};

use locald_core::fsutil::{self, UnsafeFile};

/// The largest `config.toml` read.
const LIMIT: u64 = 1 << 20;

/// The per-user settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// Registries (`host[:port]`, as in image references) to reach over
    /// plain HTTP.
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    /// The file this was read from (for hints that name it).
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

/// Why the per-user config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UserConfigError {
    /// Unsafe or unreadable.
    #[error(transparent)]
    Read(#[from] UnsafeFile),
    /// Not valid TOML, or an unknown key.
    #[error("{} is not a valid locald user config", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML error (with line and column).
        #[source]
        source: toml::de::Error,
    },
    /// An `insecure_registries` entry that is not `host[:port]`.
    #[error("{}: insecure_registries entry {entry:?} {why} (write host[:port], no scheme or path)", path.display())]
    Registry {
        /// The file.
        path: PathBuf,
        /// The entry.
        entry: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

impl UserConfig {
    /// Reads the config at `path` (the user's is
    /// [`locald_core::paths::Paths::config_file`]); a missing file is an
    /// empty config.
    pub fn load(path: &Path) -> Result<UserConfig, UserConfigError> {
        let data = match fsutil::read_input(path, "the user config", LIMIT) {
            Ok(d) => d,
            Err(UnsafeFile::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(UserConfig {
                    path: Some(path.to_owned()),
                    ..UserConfig::default()
                })
            }
            Err(e) => return Err(e.into()),
        };
        let text = String::from_utf8_lossy(&data);
        let mut config: UserConfig =
            toml::from_str(&text).map_err(|source| UserConfigError::Parse {
                path: path.to_owned(),
                source,
            })?;
        for entry in &config.insecure_registries {
            crate::reference::check_registry_name(entry).map_err(|why| {
                UserConfigError::Registry {
                    path: path.to_owned(),
                    entry: entry.clone(),
                    why,
                }
            })?;
        }
        config.path = Some(path.to_owned());
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<UserConfig, UserConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("config.toml");
        std::fs::write(&p, text).expect("write");
        UserConfig::load(&p)
    }

    #[test]
    fn reads_insecure_registries() {
        let c = load("insecure_registries = [\"127.0.0.1:5000\", \"localhost\"]\n").expect("valid");
        assert_eq!(c.insecure_registries, ["127.0.0.1:5000", "localhost"]);
    }

    #[test]
    fn a_missing_file_is_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("none.toml");
        assert_eq!(
            UserConfig::load(&path).expect("empty"),
            UserConfig {
                path: Some(path),
                ..UserConfig::default()
            }
        );
    }

    #[test]
    fn typos_and_urls_are_errors() {
        let e = load("insecure_registry = [\"x\"]\n").expect_err("unknown key");
        let chain = locald_core::error_chain(&e);
        assert!(
            chain.contains("unknown field `insecure_registry`"),
            "{chain}"
        );
        let e = load("insecure_registries = [\"http://127.0.0.1:5000\"]\n").expect_err("url");
        assert!(e.to_string().contains("no scheme or path"), "{e}");
    }
}
