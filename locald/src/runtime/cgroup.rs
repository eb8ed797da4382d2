//! One cgroup v2 per unit, where the machine gives locald a writable cgroup
//! v2 hierarchy (a systemd user service with `Delegate=yes`, or root on a
//! hybrid host).
//!
//! A process group is not enough to find everything a service started: a
//! grandchild that calls `setsid` leaves it. A cgroup keeps every descendant,
//! so stopping kills the whole tree (`cgroup.kill`) and a restarted daemon can
//! find what an earlier one left behind. The layout is
//! `<our cgroup>/locald/<project>/<unit>`, with names that are already
//! checked to be path-safe by the config parser.

use std::fs;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The directory under which locald creates unit cgroups.
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    base: PathBuf,
}

impl CgroupRoot {
    /// Finds a writable cgroup v2 directory for locald, or `None`.
    ///
    /// `LOCALD_CGROUP=off` disables cgroups (to test the fallback);
    /// `LOCALD_CGROUP=/sys/fs/cgroup/...` names the parent directory.
    pub fn detect() -> Option<CgroupRoot> {
        let parent = match std::env::var_os("LOCALD_CGROUP") {
            Some(v) if v == "off" => return None,
            Some(v) => PathBuf::from(v),
            None => {
                let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
                let mount = cgroup2_mount(&mountinfo)?;
                let own = fs::read_to_string("/proc/self/cgroup").ok()?;
                let own = own.lines().find_map(|l| l.strip_prefix("0::"))?.trim();
                mount.join(own.trim_start_matches('/'))
            }
        };
        let base = parent.join("locald");
        match fs::create_dir(&base) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(_) => return None,
        }
        // Creating is not enough: we must be able to move processes in.
        let procs = base.join("cgroup.procs");
        fs::OpenOptions::new().write(true).open(procs).ok()?;
        Some(CgroupRoot { base })
    }

    /// The base directory (`…/locald`).
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The cgroup of one unit, whether or not it exists.
    pub fn unit(&self, project: &str, unit: &str) -> Cgroup {
        Cgroup {
            path: self.base.join(project).join(unit),
        }
    }

    /// Creates (or reuses) the cgroup of one unit.
    pub fn create(&self, project: &str, unit: &str) -> io::Result<Cgroup> {
        let cg = self.unit(project, unit);
        fs::create_dir_all(&cg.path)?;
        Ok(cg)
    }

    /// Unit cgroups of a project that still exist.
    pub fn units(&self, project: &str) -> Vec<String> {
        fs::read_dir(self.base.join(project))
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

pub(crate) fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        pre.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// One unit's cgroup.
#[derive(Debug, Clone)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Its directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An fd on `cgroup.procs`, opened before fork so the child only needs
    /// `write(2)` (async-signal-safe) to move itself in.
    pub fn procs_fd(&self) -> io::Result<OwnedFd> {
        Ok(fs::OpenOptions::new()
            .write(true)
            .open(self.path.join("cgroup.procs"))?
            .into())
    }

    /// Processes in it now.
    pub fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Removes it if it is empty (after a failed spawn).
    pub fn remove_if_empty(&self) {
        let _ = fs::remove_dir(&self.path);
        if let Some(project) = self.path.parent() {
            let _ = fs::remove_dir(project);
        }
    }

    /// Sends `sig` to every process in it.
    pub fn signal(&self, sig: Signal) {
        for pid in self.pids() {
            let _ = kill(Pid::from_raw(pid), sig);
        }
    }

    /// Kills everything in it and waits (bounded) until it is empty, then removes it.
    pub async fn kill_and_remove(&self) {
        if !self.path.exists() {
            return;
        }
        for _ in 0..200 {
            if self.pids().is_empty() {
                break;
            }
            // cgroup.kill (Linux 5.14+) also gets processes that fork while we
            // iterate; the per-pid loop covers older kernels.
            let killed = fs::OpenOptions::new()
                .write(true)
                .open(self.path.join("cgroup.kill"))
                .and_then(|mut f| f.write_all(b"1"))
                .is_ok();
            if !killed {
                self.signal(Signal::SIGKILL);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A process that just exited may keep the cgroup busy for a moment.
        for _ in 0..100 {
            match fs::remove_dir(&self.path) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                _ => break,
            }
        }
        // The project's directory goes with its last unit (fails while others remain).
        if let Some(project) = self.path.parent() {
            let _ = fs::remove_dir(project);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_mount() {
        let mi = "35 25 0:30 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw\n\
                  36 25 0:31 / /sys/fs/cgroup/cpu rw shared:11 - cgroup cgroup rw,cpu\n";
        assert_eq!(
            cgroup2_mount(mi),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(cgroup2_mount("1 2 0:1 / / rw - ext4 /dev/vda rw\n"), None);
    }
}
