//! Resource accounting of a service that runs as a systemd unit: what
//! systemd's `MemoryCurrent`, `CPUUsageNSec`, `TasksCurrent`, `IOReadBytes`
//! and `IOWriteBytes` report, read from the same place systemd reads them —
//! the unit's cgroup v2 files — so a property read costs no bus round trip.
//!
//! A container service's unit holds the shim, not the container
//! (`locald-shim` keeps containers in a cgroup tree of its own); its
//! counters are read from the container's cgroup instead.
//!
//! A value is `None` when the cgroup does not account it (a controller the
//! user manager was not delegated, such as `io` by default).

use std::path::{Path, PathBuf};

/// One reading of a unit's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Accounting {
    /// `memory.current`, bytes.
    pub memory: Option<u64>,
    /// `cpu.stat` `usage_usec`, as nanoseconds.
    pub cpu_nsec: Option<u64>,
    /// `pids.current`.
    pub tasks: Option<u64>,
    /// `io.stat` `rbytes`, summed over devices.
    pub io_read: Option<u64>,
    /// `io.stat` `wbytes`, summed over devices.
    pub io_write: Option<u64>,
}

impl Accounting {
    /// The counters of the unit whose main process is `pid`: only when that
    /// process lives in a `locald-*.service` cgroup (so a pid the kernel
    /// reused for something else is never reported as the service).
    pub fn of_unit_pid(pid: u32) -> Accounting {
        match unit_cgroup(pid) {
            Some(dir) => Accounting::read(&dir),
            None => Accounting::default(),
        }
    }

    fn read(dir: &Path) -> Accounting {
        let file = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
        let number = |name: &str| file(name).and_then(|t| t.trim().parse::<u64>().ok());
        let stat = |text: &str, key: &str| -> Option<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
        };
        let io = file("io.stat");
        let io_sum = |key: &str| -> Option<u64> {
            let io = io.as_deref()?;
            Some(
                io.lines()
                    .flat_map(|l| l.split_whitespace())
                    .filter_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse::<u64>().ok())
                    .sum(),
            )
        };
        Accounting {
            memory: number("memory.current"),
            cpu_nsec: file("cpu.stat")
                .and_then(|t| stat(&t, "usage_usec"))
                .map(|us| us.saturating_mul(1000)),
            tasks: number("pids.current"),
            io_read: io_sum("rbytes"),
            io_write: io_sum("wbytes"),
        }
    }
}

/// Whether the cgroup `rel` (as `/proc/PID/cgroup` names it) counts for a
/// service of user `uid`: a locald unit of the user's own manager, or the
/// cgroup `locald-shim` gave
/// one of the user's containers (`/locald-shim/u<uid>/locald-…`), which a
/// container service's unit does not hold.
fn accountable(rel: &str, uid: u32) -> bool {
    if rel.contains("/..") {
        return false;
    }
    let last = rel.rsplit('/').next().unwrap_or_default();
    let unit = last.starts_with("locald-")
        && last.ends_with(".service")
        && rel.contains(&format!("/user@{uid}.service/"));
    let container = rel
        .strip_prefix(&format!("/locald-shim/u{uid}/"))
        .is_some_and(|id| id.starts_with("locald-") && !id.contains('/'));
    unit || container
}

/// The cgroup v2 directory of `pid` if it is a locald unit's (or its
/// container's).
fn unit_cgroup(pid: u32) -> Option<PathBuf> {
    if pid == 0 {
        return None;
    }
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = own.lines().find_map(|l| l.strip_prefix("0::"))?.trim();
    if !accountable(rel, nix::unistd::geteuid().as_raw()) {
        return None;
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = super::cgroup::cgroup2_mount(&mountinfo)?;
    Some(mount.join(rel.trim_start_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_counters_of_a_cgroup_directory() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::write(d.path().join("memory.current"), "4096\n").expect("write");
        std::fs::write(
            d.path().join("cpu.stat"),
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
        )
        .expect("write");
        std::fs::write(
            d.path().join("io.stat"),
            "8:0 rbytes=10 wbytes=20 rios=1 wios=2\n8:16 rbytes=5 wbytes=0\n",
        )
        .expect("write");
        let a = Accounting::read(d.path());
        assert_eq!(
            a,
            Accounting {
                memory: Some(4096),
                cpu_nsec: Some(1_500_000),
                tasks: None,
                io_read: Some(15),
                io_write: Some(20),
            }
        );
    }

    #[test]
    fn units_and_the_users_own_containers_are_accounted() {
        let unit =
            "/user.slice/user-1000.slice/user@1000.service/app.slice/locald-shop-web.service";
        assert!(accountable(unit, 1000));
        assert!(accountable("/locald-shim/u1000/locald-0123-web", 1000));
        assert!(!accountable("/locald-shim/u1001/locald-0123-web", 1000));
        assert!(!accountable("/locald-shim/u1000/other", 1000));
        assert!(!accountable("/locald-shim/u1000/locald-x/deeper", 1000));
        assert!(!accountable("/user.slice/sshd.service", 1000));
        // Another user's manager's unit of the same name.
        let other =
            "/user.slice/user-1001.slice/user@1001.service/app.slice/locald-shop-web.service";
        assert!(!accountable(other, 1000));
        assert!(!accountable("/x/../locald-a.service", 1000));
    }

    #[test]
    fn a_process_outside_a_locald_unit_has_no_counters() {
        assert_eq!(
            Accounting::of_unit_pid(std::process::id()),
            Accounting::default()
        );
        assert_eq!(Accounting::of_unit_pid(0), Accounting::default());
    }
}
