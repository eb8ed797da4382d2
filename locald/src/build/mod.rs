//! The builder: deciding whether a service needs a build, and keeping its
//! artifacts in `.locald/`.
//!
//! Everything that builds goes through this module: the daemon on `up`,
//! `locald build` in the foreground and `locald-ctl build` via the daemon
//! (seed 002 §3.1). Host builds and CNB builds are two kinds behind one
//! [`BuildOptions`] and one [`needs_rebuild`]:
//!
//! - [`hash`] walks a project (honouring its ignore files) and hashes its
//!   contents into one tree hash, remembering each file so a change can be
//!   explained.
//! - [`statcache`] remembers `stat` data per file so an unchanged file is not
//!   read again, as git's index does.
//! - [`artifact`] owns the `.locald/` layout, the manifest and the staging
//!   directory a build writes into before it is swapped in.
//! - [`cnb`] is the Cloud Native Buildpacks platform side as data: builder
//!   inspection, the creator's command line, phases, process types.
//! - [`decision`] puts them together into a [`Decision`] that says why a
//!   build runs or why it is skipped.
//!
//! Running a build command is not done here; this module only decides and
//! keeps the results.

pub mod artifact;
pub mod cnb;
pub mod decision;
pub mod hash;
pub mod statcache;

use std::fmt;
use std::io;
use std::path::PathBuf;

pub use artifact::{CnbManifest, Layout, Manifest, ServiceLayout, Staging};
pub use decision::{
    config_hash, needs_cnb_rebuild, needs_cnb_rebuild_with, needs_rebuild, needs_rebuild_with,
    output_hash, BuildOptions, Decision, Reason,
};
pub use hash::{hash_tree, ChangeSummary, FileEntry, FileKind, HashScope, TreeHash};
pub use statcache::StatCache;

/// A BLAKE3 digest: of a file's contents, a symlink's target, a whole tree or
/// a build spec.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Lowercase hex, as written to manifests and logs.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// Parses the form [`Digest::to_hex`] writes.
    pub fn from_hex(s: &str) -> Option<Digest> {
        blake3::Hash::from_hex(s)
            .ok()
            .map(|h| Digest(*h.as_bytes()))
    }

    /// The first 12 hex digits, enough for a human to compare two hashes.
    pub fn short(&self) -> String {
        let mut s = self.to_hex();
        s.truncate(12);
        s
    }
}

impl From<blake3::Hash> for Digest {
    fn from(h: blake3::Hash) -> Self {
        Digest(*h.as_bytes())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.short())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Why deciding on, or keeping the results of, a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A file or directory could not be read or written.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done, e.g. "cannot read".
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The project directory could not be walked.
    #[error("cannot walk {}", root.display())]
    Walk {
        /// The directory being hashed.
        root: PathBuf,
        /// The walker's error.
        #[source]
        source: ignore::Error,
    },
    /// A pattern in a host build's `inputs` is not a valid glob.
    #[error("invalid pattern `{pattern}` in `inputs`")]
    Glob {
        /// The pattern as written.
        pattern: String,
        /// Why globset rejected it.
        #[source]
        source: globset::Error,
    },
    /// Another build of the same service holds its lock.
    #[error("another build of `{service}` is running")]
    Busy {
        /// The service.
        service: String,
    },
    /// Something under `.locald/` is not what locald made: a symlink, a
    /// FIFO, a directory of another user.
    #[error(transparent)]
    Unsafe(#[from] crate::fsutil::UnsafeFile),
    /// A service name that cannot be a directory name under `.locald/`.
    #[error("service name `{0}` cannot be used as a directory name")]
    BadServiceName(String),
}

impl BuildError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        BuildError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
