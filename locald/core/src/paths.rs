//! Where locald keeps things: the XDG base directories, resolved once at the
//! binaries' edge ([`Paths::from_env`]) and passed in, so nothing below
//! `main` reads the environment to find a directory and a test can give an
//! engine directories of its own without touching the process environment.

use std::path::{Path, PathBuf};

/// `$VAR` if set to an absolute path, else `~/<fallback>`: the XDG base
/// directory rule (a relative value is ignored, as the spec says).
fn xdg_dir(var: &str, fallback: &str) -> Option<PathBuf> {
    let from = |v: &str| {
        std::env::var_os(v)
            .filter(|x| !x.is_empty())
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    from(var).or_else(|| from("HOME").map(|h| h.join(fallback)))
}

/// locald's runtime directory (pid records, notify sockets, project claims,
/// container state). Named, not yet trusted: [`RuntimeDir::open`] creates
/// it private and refuses one another user planted, every time it is used,
/// because the `/tmp` fallback can be planted at any moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeDir(PathBuf);

impl RuntimeDir {
    /// The runtime directory at `path`.
    pub fn new(path: impl Into<PathBuf>) -> RuntimeDir {
        RuntimeDir(path.into())
    }

    /// The path, unchecked (for messages).
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The directory, created private (0700) if missing and checked to be
    /// ours and private.
    pub fn open(&self) -> Result<PathBuf, crate::fsutil::UnsafeFile> {
        crate::fsutil::private_dir(&self.0)?;
        Ok(self.0.clone())
    }

    /// `open()/name`, itself created private: one kind of thing per
    /// subdirectory (`notify`, `units`, `projects`, `containers`…).
    pub fn sub(&self, name: &str) -> Result<PathBuf, crate::fsutil::UnsafeFile> {
        let dir = self.open()?.join(name);
        crate::fsutil::private_dir(&dir)?;
        Ok(dir)
    }
}

/// Every directory locald uses, resolved once.
#[derive(Clone, Debug)]
pub struct Paths {
    /// `$XDG_RUNTIME_DIR/locald`, else `/tmp/locald-<uid>`.
    pub runtime: RuntimeDir,
    /// The user's `$XDG_RUNTIME_DIR` itself (where the systemd user manager
    /// keeps its private socket), when set.
    pub user_runtime: Option<PathBuf>,
    /// `$XDG_STATE_HOME/locald`: the daemon's project list and port book.
    pub state: Option<PathBuf>,
    /// `$XDG_DATA_HOME/locald`: the image store.
    pub data: Option<PathBuf>,
    /// `$XDG_CONFIG_HOME/locald`: the user's `config.toml`.
    pub config: Option<PathBuf>,
    /// `$XDG_CACHE_HOME/locald`: buildpacks builds' private scratch.
    pub cache: Option<PathBuf>,
}

impl Paths {
    /// The directories the XDG base directory specification names for this
    /// process's environment. Reads the environment; creates nothing.
    pub fn from_env() -> Paths {
        let user_runtime = std::env::var_os("XDG_RUNTIME_DIR")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from);
        let runtime = match &user_runtime {
            Some(d) => d.join("locald"),
            None => PathBuf::from(format!("/tmp/locald-{}", nix::unistd::geteuid())),
        };
        Paths {
            runtime: RuntimeDir::new(runtime),
            user_runtime,
            state: xdg_dir("XDG_STATE_HOME", ".local/state").map(|d| d.join("locald")),
            data: xdg_dir("XDG_DATA_HOME", ".local/share").map(|d| d.join("locald")),
            config: xdg_dir("XDG_CONFIG_HOME", ".config").map(|d| d.join("locald")),
            cache: xdg_dir("XDG_CACHE_HOME", ".cache").map(|d| d.join("locald")),
        }
    }

    /// Every directory under `root` (`root/runtime`, `root/state`…): for
    /// tests and for callers that want an engine isolated from the user's.
    pub fn under(root: &Path) -> Paths {
        Paths {
            runtime: RuntimeDir::new(root.join("runtime")),
            user_runtime: None,
            state: Some(root.join("state")),
            data: Some(root.join("data")),
            config: Some(root.join("config")),
            cache: Some(root.join("cache")),
        }
    }

    /// The user's `config.toml`, when there is a config directory.
    pub fn config_file(&self) -> Option<PathBuf> {
        self.config.as_ref().map(|d| d.join("config.toml"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_keeps_everything_below_the_root() {
        let p = Paths::under(Path::new("/r"));
        assert_eq!(p.runtime.path(), Path::new("/r/runtime"));
        for d in [&p.state, &p.data, &p.config, &p.cache] {
            assert!(d.as_deref().is_some_and(|d| d.starts_with("/r")), "{d:?}");
        }
        assert_eq!(
            p.config_file(),
            Some(PathBuf::from("/r/config/config.toml"))
        );
    }

    #[test]
    fn a_runtime_dir_is_created_private() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().expect("tempdir");
        let rt = RuntimeDir::new(root.path().join("rt"));
        let sub = rt.sub("notify").expect("sub");
        for d in [root.path().join("rt"), sub] {
            let mode = std::fs::metadata(&d).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", d.display());
        }
    }
}
