//! Container ids: a small allowed alphabet, because an id becomes a path
//! component under the caller's state root and a cgroup name.

use std::fmt;

/// Longest id accepted.
pub const MAX_ID_LEN: usize = 64;

/// A container id that is safe to use as a single path component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerId(String);

/// Why an id was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadId(pub String);

impl fmt::Display for BadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl ContainerId {
    /// Accept `^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$` without `..`: never a
    /// separator, never a relative component, never empty.
    pub fn parse(s: &str) -> Result<Self, BadId> {
        let bad = |why: &str| Err(BadId(format!("invalid container id {s:?}: {why}")));
        if s.is_empty() {
            return bad("empty");
        }
        if s.len() > MAX_ID_LEN {
            return bad("longer than 64 characters");
        }
        if !s.as_bytes()[0].is_ascii_alphanumeric() {
            return bad("must start with a letter or digit");
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return bad("only letters, digits, '_', '.' and '-' are allowed");
        }
        if s.contains("..") {
            return bad("must not contain \"..\"");
        }
        Ok(Self(s.to_string()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_ids() {
        for ok in ["a", "web-1", "svc_2.main", "A9"] {
            assert!(ContainerId::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_path_tricks() {
        for bad in [
            "", ".", "..", "../x", "a/../b", "a/b", "-x", ".hidden", "a..b", "a b", "a\0b", "é",
            "a\n",
        ] {
            assert!(ContainerId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(ContainerId::parse(&"a".repeat(65)).is_err());
        assert!(ContainerId::parse(&"a".repeat(64)).is_ok());
    }
}
