//! Subordinate ids (`/etc/subuid`, `/etc/subgid`): the ranges of host ids a
//! user may map into their containers, which locald counts as the user's
//! (a container's non-root user makes files and sockets with them).

use serde::{Deserialize, Serialize};

/// A contiguous range of host ids from `/etc/subuid` or `/etc/subgid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    /// First host id.
    pub start: u32,
    /// How many.
    pub count: u32,
}

/// `owner:start:count` lines of `/etc/subuid` for a login name or numeric
/// uid; malformed lines and zero counts grant nothing.
pub fn parse_subid(content: &str, name: Option<&str>, uid: u32) -> Vec<IdRange> {
    let uid_s = uid.to_string();
    content
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.starts_with('#') {
                return None;
            }
            let mut f = l.split(':');
            let owner = f.next()?;
            let start: u32 = f.next()?.trim().parse().ok()?;
            let count: u32 = f.next()?.trim().parse().ok()?;
            let mine = owner == uid_s || name == Some(owner);
            (mine && count > 0 && f.next().is_none()).then_some(IdRange { start, count })
        })
        .collect()
}

/// The current (real) user's `/etc/subuid` ranges (matched by login name or
/// numeric uid); an unreadable file grants nothing.
pub fn current_subuids() -> Vec<IdRange> {
    let uid = rustix::process::getuid().as_raw();
    let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name);
    let text = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
    parse_subid(&text, name.as_deref(), uid)
}
