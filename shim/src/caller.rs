//! Gathering the facts about the caller that the policy judges against:
//! ids from the kernel, subordinate id ranges from root-owned files, rlimits
//! and `oom_score_adj` inherited across the setuid exec. Nothing here comes
//! from the caller's arguments or environment.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use oci_spec::runtime::PosixRlimitType;

use crate::error::ShimError;
use crate::policy::{Caller, IdRange};

/// Every rlimit the OCI spec names, with its kernel resource number.
pub const RLIMITS: &[(PosixRlimitType, libc::__rlimit_resource_t)] = &[
    (PosixRlimitType::RlimitCpu, libc::RLIMIT_CPU),
    (PosixRlimitType::RlimitFsize, libc::RLIMIT_FSIZE),
    (PosixRlimitType::RlimitData, libc::RLIMIT_DATA),
    (PosixRlimitType::RlimitStack, libc::RLIMIT_STACK),
    (PosixRlimitType::RlimitCore, libc::RLIMIT_CORE),
    (PosixRlimitType::RlimitRss, libc::RLIMIT_RSS),
    (PosixRlimitType::RlimitNproc, libc::RLIMIT_NPROC),
    (PosixRlimitType::RlimitNofile, libc::RLIMIT_NOFILE),
    (PosixRlimitType::RlimitMemlock, libc::RLIMIT_MEMLOCK),
    (PosixRlimitType::RlimitAs, libc::RLIMIT_AS),
    (PosixRlimitType::RlimitLocks, libc::RLIMIT_LOCKS),
    (PosixRlimitType::RlimitSigpending, libc::RLIMIT_SIGPENDING),
    (PosixRlimitType::RlimitMsgqueue, libc::RLIMIT_MSGQUEUE),
    (PosixRlimitType::RlimitNice, libc::RLIMIT_NICE),
    (PosixRlimitType::RlimitRtprio, libc::RLIMIT_RTPRIO),
    (PosixRlimitType::RlimitRttime, libc::RLIMIT_RTTIME),
];

/// Collect the facts for the caller with real ids `uid`/`gid`.
pub fn gather(uid: u32, gid: u32) -> Result<Caller, ShimError> {
    let name = user_name(uid)?;
    let subuids = read_subid(Path::new("/etc/subuid"), name.as_deref(), uid)?;
    let subgids = read_subid(Path::new("/etc/subgid"), name.as_deref(), uid)?;
    let mut rlimit_hard = Vec::new();
    for &(typ, res) in RLIMITS {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: valid out-pointer for a known resource.
        if unsafe { libc::getrlimit(res, &mut lim) } == 0 {
            rlimit_hard.push((typ, lim.rlim_max));
        }
    }
    let oom = fs::read_to_string("/proc/self/oom_score_adj")
        .map_err(ShimError::io("read", "/proc/self/oom_score_adj"))?;
    let oom_score_adj = oom.trim().parse().map_err(|_| ShimError::Unsafe {
        path: "/proc/self/oom_score_adj".into(),
        message: format!("unexpected content {oom:?}"),
    })?;
    Ok(Caller {
        uid,
        gid,
        subuids,
        subgids,
        rlimit_hard,
        oom_score_adj,
    })
}

/// A system file the policy trusts must be root-owned and writable by root
/// only; otherwise whoever could write it could grant themselves ids.
fn read_trusted(path: &Path) -> Result<Option<String>, ShimError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ShimError::io("stat", path)(e)),
    };
    if !meta.is_file() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(ShimError::Unsafe {
            path: path.into(),
            message: "must be a regular file owned by root and not writable by others".into(),
        });
    }
    fs::read_to_string(path)
        .map(Some)
        .map_err(ShimError::io("read", path))
}

/// The caller's login name from `/etc/passwd`, if they have one.
fn user_name(uid: u32) -> Result<Option<String>, ShimError> {
    let Some(passwd) = read_trusted(Path::new("/etc/passwd"))? else {
        return Ok(None);
    };
    Ok(passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let _pw = f.next()?;
        let id: u32 = f.next()?.parse().ok()?;
        (id == uid).then(|| name.to_string())
    }))
}

fn read_subid(path: &Path, name: Option<&str>, uid: u32) -> Result<Vec<IdRange>, ShimError> {
    Ok(read_trusted(path)?
        .map(|s| parse_subid(&s, name, uid))
        .unwrap_or_default())
}

/// Parse `/etc/subuid` / `/etc/subgid` content: `owner:start:count` lines,
/// where owner is a login name or a numeric uid. Malformed lines grant
/// nothing.
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
            if f.next().is_some() || count == 0 {
                return None;
            }
            let mine = owner == uid_s || name.is_some_and(|n| n == owner);
            mine.then_some(IdRange { start, count })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subid_matches_name_or_uid_and_skips_junk() {
        let s = "alice:100000:65536\n1001:300000:10\nbob:200000:65536\n# c\nalice:x:1\nalice:5:0\nalice:1:2:3\n";
        assert_eq!(
            parse_subid(s, Some("alice"), 1001),
            vec![
                IdRange {
                    start: 100000,
                    count: 65536
                },
                IdRange {
                    start: 300000,
                    count: 10
                }
            ]
        );
        assert!(parse_subid(s, Some("carol"), 7).is_empty());
        assert!(parse_subid(s, None, 1000).is_empty());
    }
}
