//! Where locald keeps things: the XDG base directories, resolved at the
//! binaries' edge and passed in.

use std::path::PathBuf;

/// `$VAR` if set to an absolute path, else `~/<fallback>`: the XDG base
/// directory rule (a relative value is ignored, as the spec says).
pub fn xdg_dir(var: &str, fallback: &str) -> Option<PathBuf> {
    let from = |v: &str| {
        std::env::var_os(v)
            .filter(|x| !x.is_empty())
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    from(var).or_else(|| from("HOME").map(|h| h.join(fallback)))
}

/// The runtime directory: `$XDG_RUNTIME_DIR/locald`, else
/// `/tmp/locald-<uid>`; created private (0700) and checked (a planted one
/// is refused).
pub fn runtime_dir() -> Result<PathBuf, crate::fsutil::UnsafeFile> {
    let dir = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("locald"),
        _ => PathBuf::from(format!("/tmp/locald-{}", nix::unistd::geteuid())),
    };
    crate::fsutil::private_dir(&dir)?;
    Ok(dir)
}

/// The state directory: `$XDG_STATE_HOME/locald`, else
/// `~/.local/state/locald`.
pub fn default_state_dir() -> Option<PathBuf> {
    xdg_dir("XDG_STATE_HOME", ".local/state").map(|d| d.join("locald"))
}
