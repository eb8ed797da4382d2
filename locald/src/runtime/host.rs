//! Host processes: each unit in its own process group, and in its own cgroup
//! where [`CgroupRoot::detect`] finds a writable hierarchy.
//!
//! Without a cgroup, stopping reaches the process group only: a descendant
//! that called `setsid` or changed its process group survives a stop. The
//! user documentation (`docs/config.md`) says so.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use super::cgroup::{Cgroup, CgroupRoot};
use super::claim::ProjectClaim;
use super::{ExitStatus, LaunchSpec, Output, Process, Runtime, RuntimeError, Workload};
use crate::fsutil::{read_state, sub_dir, write_atomic};
use crate::lock;
use crate::output::BoxFuture;
use locald_core::paths::RuntimeDir;

/// Starts units as host processes.
#[derive(Debug, Clone)]
pub struct HostRuntime {
    cgroups: Option<CgroupRoot>,
    /// Units that may still have processes: main pid (= process group) → cgroup.
    live: Arc<Mutex<HashMap<u32, Option<Cgroup>>>>,
    /// Where pid records and project claims live.
    runtime: RuntimeDir,
}

impl HostRuntime {
    /// A runtime using cgroups when the machine allows, keeping its records
    /// in `runtime`.
    pub fn detect(runtime: RuntimeDir) -> Self {
        Self {
            cgroups: CgroupRoot::detect(),
            live: Arc::default(),
            runtime,
        }
    }

    /// Whether units get their own cgroup.
    pub fn has_cgroups(&self) -> bool {
        self.cgroups.is_some()
    }

    /// Forks and execs the workload (nothing in it awaits).
    fn spawn_now(&self, spec: &LaunchSpec) -> Result<Box<dyn Process>, RuntimeError> {
        let Workload::Host { argv } = &spec.workload else {
            return Err(RuntimeError::Unavailable(format!(
                "the host runtime cannot run {}",
                spec.workload.describe()
            )));
        };
        if let Some(e) = super::missing_program(spec) {
            return Err(e);
        }
        let program = argv.first().cloned().unwrap_or_default();
        let mut cmd = Command::new(&program);
        cmd.args(argv.iter().skip(1))
            .current_dir(&spec.cwd)
            .envs(spec.env.iter().map(|(k, v)| (k, v)));
        if let Some(sock) = &spec.notify_socket {
            // A host process sees the host path as it is.
            cmd.env("NOTIFY_SOCKET", sock);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);

        // Refuse before forking when the records cannot be kept safely: a
        // process nobody can find after a daemon crash is a second copy later.
        let record = PidRecord::path(&self.runtime, &spec.key, &spec.unit)?;
        let cgroup = self
            .cgroups
            .as_ref()
            .and_then(|r| r.create(&spec.key, &spec.unit).ok());
        let procs_fd = cgroup.as_ref().and_then(|c| c.procs_fd().ok());
        if let Some(fd) = &procs_fd {
            let raw = fd.as_raw_fd();
            // SAFETY: the closure runs in the child between fork and exec and
            // only calls write(2), which is async-signal-safe. `raw` stays
            // open in the parent until spawn returns (procs_fd lives past it)
            // and is close-on-exec, so the service never inherits it.
            unsafe {
                cmd.pre_exec(move || {
                    let n = libc::write(raw, b"0".as_ptr().cast(), 1);
                    if n == 1 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(source) => {
                if let Some(cg) = &cgroup {
                    cg.remove_if_empty();
                }
                return Err(RuntimeError::Spawn { program, source });
            }
        };
        drop(procs_fd);
        let pid = child.id().unwrap_or(0);
        lock(&self.live).insert(pid, cgroup.clone());
        PidRecord::write(&record, pid);
        Ok(Box::new(HostProcess {
            child,
            pid,
            cgroup,
            exit: None,
            live: self.live.clone(),
            record,
        }))
    }
}

impl Runtime for HostRuntime {
    fn spawn<'a>(
        &'a self,
        spec: &'a LaunchSpec,
    ) -> BoxFuture<'a, Result<Box<dyn Process>, RuntimeError>> {
        Box::pin(std::future::ready(self.spawn_now(spec)))
    }

    fn clean_stale<'a>(&'a self, key: &'a str, unit: &'a str) -> BoxFuture<'a, usize> {
        Box::pin(async move {
            let mut n = match PidRecord::path(&self.runtime, key, unit) {
                Ok(p) => PidRecord::kill_stale(&p).await,
                Err(_) => 0,
            };
            if let Some(root) = &self.cgroups {
                let cg = root.unit(key, unit);
                n += cg.pids().len();
                cg.kill_and_remove().await;
            }
            n
        })
    }

    fn sweep_abandoned(&self) -> BoxFuture<'_, usize> {
        Box::pin(async move {
            let mut keys: Vec<String> = match self.runtime.open() {
                Ok(d) => list_dirs(&d.join("units")),
                Err(_) => Vec::new(),
            };
            if let Some(root) = &self.cgroups {
                keys.extend(list_dirs(root.base()));
            }
            keys.sort();
            keys.dedup();
            let mut n = 0;
            for key in keys {
                // Held while cleaning, so no new instance starts in between.
                let Some(_claim) = ProjectClaim::take_abandoned(&self.runtime, &key) else {
                    continue;
                };
                let units: Vec<String> = match self.runtime.open() {
                    Ok(d) => list_files(&d.join("units").join(&key), ".pid"),
                    Err(_) => Vec::new(),
                };
                for unit in units {
                    n += self.clean_stale(&key, &unit).await;
                }
                if let Some(root) = &self.cgroups {
                    for unit in root.units(&key) {
                        n += self.clean_stale(&key, &unit).await;
                    }
                }
                if let Ok(d) = self.runtime.open() {
                    let _ = std::fs::remove_dir(d.join("units").join(&key));
                }
            }
            n
        })
    }

    fn name(&self) -> &'static str {
        "host"
    }

    fn kill_all(&self) {
        for (pid, cg) in lock(&self.live).iter() {
            let _ = killpg(Pid::from_raw(*pid as i32), Signal::SIGKILL);
            if let Some(cg) = cg {
                cg.signal(Signal::SIGKILL);
            }
        }
    }
}

struct HostProcess {
    child: Child,
    pid: u32,
    cgroup: Option<Cgroup>,
    exit: Option<ExitStatus>,
    live: Arc<Mutex<HashMap<u32, Option<Cgroup>>>>,
    record: PathBuf,
}

impl Process for HostProcess {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn take_stdout(&mut self) -> Option<Output> {
        self.child.stdout.take().map(|p| Box::pin(p) as Output)
    }

    fn take_stderr(&mut self) -> Option<Output> {
        self.child.stderr.take().map(|p| Box::pin(p) as Output)
    }

    fn wait(&mut self) -> BoxFuture<'_, ExitStatus> {
        Box::pin(async move {
            if let Some(e) = self.exit {
                return e;
            }
            let status = match self.child.wait().await {
                Ok(s) => ExitStatus::from_std(s),
                Err(_) => ExitStatus::Exited(-1),
            };
            self.exit = Some(status);
            status
        })
    }

    fn stop(&mut self, signal: Signal, timeout: Duration) -> BoxFuture<'_, ExitStatus> {
        Box::pin(async move {
            self.signal(signal);
            // A stopped process would never see the signal.
            self.signal(Signal::SIGCONT);
            match tokio::time::timeout(timeout, self.wait()).await {
                Ok(status) => status,
                Err(_) => {
                    self.signal(Signal::SIGKILL);
                    self.wait().await
                }
            }
        })
    }

    fn kill(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
            if let Some(cg) = &self.cgroup {
                cg.kill_and_remove().await;
            }
            let _ = self.wait().await;
            lock(&self.live).remove(&self.pid);
            let _ = std::fs::remove_file(&self.record);
        })
    }

    fn kill_now(&self) {
        self.signal(Signal::SIGKILL);
    }
}

impl HostProcess {
    /// Sends `sig` to the process group and, where there is one, to every
    /// process in the unit's cgroup (which also holds those that left the
    /// group). A group already gone is not an error.
    fn signal(&self, sig: Signal) {
        if let Err(e) = killpg(Pid::from_raw(self.pid as i32), sig) {
            if e != Errno::ESRCH {
                tracing::debug!("cannot signal process group {}: {e}", self.pid);
            }
        }
        if let Some(cg) = &self.cgroup {
            cg.signal(sig);
        }
    }
}

/// Names of the subdirectories of `dir` (none if it cannot be read).
fn list_dirs(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Names (without `suffix`) of the regular files in `dir` ending in `suffix`.
fn list_files(dir: &Path, suffix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .filter_map(|e| e.file_name().into_string().ok())
                .filter_map(|n| n.strip_suffix(suffix).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A record of a unit's main pid and its start time, so a later locald can
/// find what an earlier one (killed, crashed) left behind even without a
/// cgroup. Records live in the private runtime directory under the project
/// instance's key; they are written by rename (a planted symlink is
/// replaced, never followed) and read without following symlinks. Before a
/// recorded process is killed, its start time *and* its owner are checked,
/// so a recycled pid or another user's process is never signalled.
struct PidRecord;

impl PidRecord {
    fn path(runtime: &RuntimeDir, key: &str, unit: &str) -> Result<PathBuf, RuntimeError> {
        Ok(runtime
            .open()?
            .join("units")
            .join(key)
            .join(format!("{unit}.pid")))
    }

    fn write(path: &Path, pid: u32) {
        let Some(start) = start_time(pid) else { return };
        if let Some(dir) = path.parent() {
            let _ = sub_dir(dir);
        }
        if let Err(e) = write_atomic(path, format!("{pid} {start}\n").as_bytes()) {
            tracing::warn!("cannot record pid {pid} in {}: {e}", path.display());
        }
    }

    /// Kills the recorded process group if the recorded process still
    /// exists and is ours; returns how many groups it killed. A locald
    /// killed between writing a record and renaming it into place left it
    /// as `.UNIT.pid.PID.N.tmp` beside: such leftovers count as records too
    /// (only the holder of the project's claim writes or reads them, so
    /// none is being written now) and are removed.
    async fn kill_stale(path: &Path) -> usize {
        let mut n = 0;
        for record in std::iter::once(path.to_owned()).chain(Self::leftovers(path)) {
            n += Self::kill_recorded(&record).await;
        }
        n
    }

    /// Temporary files a killed writer left for the record at `path`.
    fn leftovers(path: &Path) -> Vec<PathBuf> {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Vec::new();
        };
        let prefix = format!(".{}.", name.to_string_lossy());
        list_files(dir, ".tmp")
            .into_iter()
            .filter(|f| f.starts_with(&prefix))
            .map(|f| dir.join(format!("{f}.tmp")))
            .collect()
    }

    async fn kill_recorded(path: &Path) -> usize {
        let Ok(Some(bytes)) = read_state(path, 256) else {
            let _ = std::fs::remove_file(path);
            return 0;
        };
        let _ = std::fs::remove_file(path);
        let text = String::from_utf8_lossy(&bytes);
        let mut parts = text.split_whitespace();
        let (Some(pid), Some(start)) = (
            parts.next().and_then(|p| p.parse::<u32>().ok()),
            parts.next(),
        ) else {
            return 0;
        };
        if pid <= 1 || start_time(pid).as_deref() != Some(start) || !owned_by_us(pid) {
            return 0;
        }
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        for _ in 0..200 {
            if start_time(pid).as_deref() != Some(start) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        1
    }
}

/// Whether process `pid` runs as our uid (the owner of `/proc/PID` is the
/// process's effective uid).
fn owned_by_us(pid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}"))
        .is_ok_and(|m| m.uid() == nix::unistd::geteuid().as_raw())
}

/// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks since boot.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields resume after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let field = rest.split_whitespace().nth(19)?;
    // A zombie is as good as gone.
    (rest.split_whitespace().next()? != "Z").then(|| field.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt as _;

    #[tokio::test]
    async fn a_record_left_half_written_still_finds_the_orphan() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .process_group(0)
            .spawn()
            .expect("sleep");
        let pid = child.id();
        let start = start_time(pid).expect("start time");
        // As write_atomic leaves it when killed before the rename.
        let tmp = dir.path().join(format!(".svc.pid.{}.0.tmp", pid + 1));
        std::fs::write(&tmp, format!("{pid} {start}\n")).expect("write");
        std::fs::write(dir.path().join(".other.pid.1.0.tmp"), "1 1\n").expect("write");
        let n = PidRecord::kill_stale(&dir.path().join("svc.pid")).await;
        assert_eq!(n, 1);
        let status = child.wait().expect("wait");
        assert!(!status.success(), "the orphan was killed");
        assert!(!tmp.exists(), "the leftover is removed");
        assert!(
            dir.path().join(".other.pid.1.0.tmp").exists(),
            "another unit's file stays"
        );
    }
}
