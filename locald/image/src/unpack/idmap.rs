//! The user's ids and subordinate ranges, and the user namespace mapping
//! built from them: the user → 0, then each `/etc/subuid` (`/etc/subgid`)
//! range after the previous one, the same order and shape as the bundles
//! `shim_client` writes, so a file unpacked as container uid N is the file
//! the container sees as owned by N.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use locald_core::ids::parse_subid;
pub use locald_core::ids::IdRange;

/// The user's own uid and gid and their subordinate ranges.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    /// The user's uid (container uid 0).
    pub uid: u32,
    /// The user's gid (container gid 0).
    pub gid: u32,
    /// Their `/etc/subuid` ranges, in file order.
    pub subuids: Vec<IdRange>,
    /// Their `/etc/subgid` ranges, in file order.
    pub subgids: Vec<IdRange>,
}

/// How the helper's user namespace is set up.
#[derive(Clone, Debug)]
pub(super) enum Plan {
    /// `newuidmap`/`newgidmap` write the user and their ranges.
    Mapped {
        newuidmap: PathBuf,
        newgidmap: PathBuf,
        /// `container host count` lines.
        uid_lines: Vec<[u32; 3]>,
        gid_lines: Vec<[u32; 3]>,
    },
    /// The helper maps only the user, by itself; why.
    CallerOnly { reason: String },
}

impl IdMap {
    /// The current (real) user, with their ranges from `/etc/subuid` and
    /// `/etc/subgid` (matched by login name or numeric uid); unreadable
    /// files grant nothing.
    pub fn current_user() -> Self {
        let uid = rustix::process::getuid().as_raw();
        let gid = rustix::process::getgid().as_raw();
        let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name);
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        Self {
            uid,
            gid,
            subuids: parse_subid(&read("/etc/subuid"), name.as_deref(), uid),
            subgids: parse_subid(&read("/etc/subgid"), name.as_deref(), uid),
        }
    }

    /// Only the user's own ids: every file will be theirs.
    pub fn caller_only(uid: u32, gid: u32) -> Self {
        Self {
            uid,
            gid,
            subuids: Vec::new(),
            subgids: Vec::new(),
        }
    }

    /// `container host count` lines for uids: the user → 0, then each range.
    pub fn uid_lines(&self) -> Vec<[u32; 3]> {
        lines(self.uid, &self.subuids)
    }

    /// `container host count` lines for gids.
    pub fn gid_lines(&self) -> Vec<[u32; 3]> {
        lines(self.gid, &self.subgids)
    }

    /// Why the image's ids cannot be kept, if they cannot: no subordinate
    /// ids, or no `newuidmap`/`newgidmap` to map them.
    pub fn caller_only_reason(&self) -> Option<String> {
        match self.plan() {
            Plan::Mapped { .. } => None,
            Plan::CallerOnly { reason } => Some(reason),
        }
    }

    pub(super) fn plan(&self) -> Plan {
        let missing = match (self.subuids.is_empty(), self.subgids.is_empty()) {
            (true, true) => Some("/etc/subuid and /etc/subgid"),
            (true, false) => Some("/etc/subuid"),
            (false, true) => Some("/etc/subgid"),
            (false, false) => None,
        };
        if let Some(files) = missing {
            return Plan::CallerOnly {
                reason: format!("uid {} has no subordinate ids in {files}", self.uid),
            };
        }
        match (find_tool("newuidmap"), find_tool("newgidmap")) {
            (Some(newuidmap), Some(newgidmap)) => Plan::Mapped {
                newuidmap,
                newgidmap,
                uid_lines: self.uid_lines(),
                gid_lines: self.gid_lines(),
            },
            _ => Plan::CallerOnly {
                reason: "newuidmap/newgidmap are not installed (Debian: apt install uidmap)".into(),
            },
        }
    }
}

/// How many container ids `lines` map.
pub(super) fn mapped_count(lines: &[[u32; 3]]) -> u64 {
    lines.iter().map(|l| u64::from(l[2])).sum()
}

/// Own id → 0, then each subordinate range after the previous one, keeping
/// container ids below 2³² − 1 (the kernel's invalid id).
fn lines(own: u32, sub: &[IdRange]) -> Vec<[u32; 3]> {
    let mut out = vec![[0, own, 1]];
    let mut next: u32 = 1;
    for r in sub {
        let room = (u32::MAX - 1).saturating_sub(next);
        let size = r.count.min(room);
        if size == 0 {
            break;
        }
        out.push([next, r.start, size]);
        next += size;
    }
    out
}

/// A setuid helper from the standard system directories (not `PATH`: the
/// tool decides ownership on disk, so it comes from where the package
/// manager put it).
fn find_tool(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Runs `tool PID container host count …`, returning its error output on
/// failure.
pub(super) fn write_map(tool: &Path, pid: u32, lines: &[[u32; 3]]) -> Result<(), String> {
    let mut cmd = Command::new(tool);
    cmd.arg(pid.to_string());
    for l in lines {
        cmd.args(l.iter().map(u32::to_string));
    }
    match cmd.output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "{} failed ({}): {}",
            tool.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run {}: {e}", tool.display())),
    }
}
