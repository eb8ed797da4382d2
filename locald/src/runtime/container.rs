//! Containers through `locald-shim`: the runtime kind for image services.
//!
//! A spawn asks the [`ImageSource`] (the image store) for the image's
//! unpacked, shared rootfs and its config, writes an OCI bundle that merges
//! the image config with the service (command, env, volumes, workdir, the
//! notify socket's directory bind-mounted at [`NOTIFY_DIR`]), and runs it with
//! `locald-shim run`, whose stdout and stderr are the container's. The shared
//! rootfs is never changed by a container: each start runs on a private
//! writable copy of it (removed when the container ends), or on the shared
//! tree mounted read-only with `read_only = true`; `/tmp`, `/run` and
//! `/var/tmp` are per-container tmpfs mounts, and anything meant to last
//! goes in `volumes`.
//!
//! Stopping sends the service's stop signal through `locald-shim kill`, then
//! `KILL` after the timeout; the end is `locald-shim delete --force`, so no
//! runc state is left. Container ids are derived from the project instance
//! key and the unit, so a restarted daemon finds (and deletes) what an
//! earlier one left before it starts a service again, and the ids of
//! instances nobody claims are swept at daemon start.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::process::Child;

use super::claim::ProjectClaim;
use super::{ExitStatus, LaunchSpec, Output, Process, Runtime, RuntimeError, Workload};
use crate::fsutil::{sub_dir, write_atomic};
use crate::lock;
use crate::output::BoxFuture;
use crate::shim_client::{BundleSpec, ShimClient};
use locald_core::paths::RuntimeDir;

/// Where a container sees its service's notify socket directory.
pub const NOTIFY_DIR: &str = "/run/locald/notify";

pub use locald_image::source::{ImageSource, Lease, PreparedImage};

/// Who the container's process runs as, and its home directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUser {
    /// Uid in the container.
    pub uid: u32,
    /// Gid in the container.
    pub gid: u32,
    /// Home directory from the image's `/etc/passwd`, if the user is there.
    pub home: Option<String>,
}

/// Resolves an image's `User` the way runc and podman do: numbers are taken
/// as they are; names are looked up in the image's own `/etc/passwd` and
/// `/etc/group`, read contained in the rootfs (an image's symlinks cannot
/// lead the lookup out of it). No `User` is root.
pub fn resolve_user(rootfs: &Path, user: Option<&str>) -> Result<ImageUser, String> {
    let spec = user.map(str::trim).filter(|u| !u.is_empty()).unwrap_or("0");
    let (who, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read_in_root(rootfs, "etc/passwd").unwrap_or_default();
    // name:x:uid:gid:gecos:home:shell
    let entry = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 7 && (f[0] == who || f[2] == who)).then(|| {
            (
                f[2].parse::<u32>().ok(),
                f[3].parse::<u32>().ok(),
                f[5].to_owned(),
            )
        })
    });
    let uid = match who.parse::<u32>() {
        Ok(n) => n,
        Err(_) => entry
            .as_ref()
            .and_then(|e| e.0)
            .ok_or_else(|| format!("user `{who}` is not in the image's /etc/passwd"))?,
    };
    let gid = match group {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                let groups = read_in_root(rootfs, "etc/group").unwrap_or_default();
                groups
                    .lines()
                    .find_map(|l| {
                        let f: Vec<&str> = l.split(':').collect();
                        (f.len() >= 3 && f[0] == g).then(|| f[2].parse::<u32>().ok())?
                    })
                    .ok_or_else(|| format!("group `{g}` is not in the image's /etc/group"))?
            }
        },
        // Without a group: the user's own from passwd, else the uid's number.
        None => entry.as_ref().and_then(|e| e.1).unwrap_or(uid),
    };
    Ok(ImageUser {
        uid,
        gid,
        home: entry.map(|e| e.2).filter(|h| h.starts_with('/')),
    })
}

/// Reads a small file of the image, resolving every component inside the
/// rootfs (`RESOLVE_IN_ROOT`): an absolute symlink means the rootfs's own
/// path, `..` stops at its root. Not a regular file, or over 1 MiB: `None`.
fn read_in_root(rootfs: &Path, rel: &str) -> Option<String> {
    use rustix::fs::{openat2, Mode, OFlags, ResolveFlags};
    use std::io::Read;
    let root = rustix::fs::open(
        rootfs,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let fd = openat2(
        &root,
        rel,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV,
    )
    .ok()?;
    let file = std::fs::File::from(fd);
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(1 << 20).read_to_string(&mut text).ok()?;
    Some(text)
}

/// A container made ready to run ([`ContainerRuntime::prepare`]).
pub(crate) struct Prepared {
    /// Its id in the shim.
    pub id: String,
    /// Its directory (bundle, rootfs copy, records).
    pub dir: PathBuf,
    /// The bundle to run.
    pub bundle: PathBuf,
    /// The image it runs (digest, stop signal, lease).
    pub image: PreparedImage,
}

/// Runs image workloads as containers through the shim.
pub struct ContainerRuntime {
    shim: ShimClient,
    images: Arc<dyn ImageSource>,
    live: Arc<Mutex<HashSet<String>>>,
    /// Where each container's bundle and state directory lives
    /// (`containers/`), and the project claims.
    runtime: RuntimeDir,
}

impl ContainerRuntime {
    /// A runtime using the shim at `shim` and images from `images`, keeping
    /// its containers' directories in `runtime`.
    pub fn new(shim: ShimClient, images: Arc<dyn ImageSource>, runtime: RuntimeDir) -> Self {
        Self {
            shim,
            images,
            live: Arc::default(),
            runtime,
        }
    }
}

/// The container id of a unit of a project instance: short, in the shim's
/// alphabet, and the same across daemon restarts.
pub fn container_id(key: &str, unit: &str) -> String {
    let hash = blake3::hash(key.as_bytes()).to_hex();
    let unit: String = unit
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    format!("locald-{}-{unit}", &hash[..16])
}

/// An image's StopSignal (`SIGQUIT`, `QUIT` or a number), SIGTERM if it
/// names none or one this machine does not know.
pub(crate) fn image_stop_signal(s: Option<&str>) -> Signal {
    let Some(s) = s.map(str::trim).filter(|s| !s.is_empty()) else {
        return Signal::SIGTERM;
    };
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).unwrap_or(Signal::SIGTERM);
    }
    let name = s.to_ascii_uppercase();
    let name = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    name.parse().unwrap_or(Signal::SIGTERM)
}

/// The signal name `locald-shim kill` takes (`TERM`, not `SIGTERM`).
fn shim_signal(sig: Signal) -> &'static str {
    sig.as_str().trim_start_matches("SIG")
}

fn unavailable(what: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Unavailable(what.to_string())
}

impl ContainerRuntime {
    fn state_dir(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        let dir = self.runtime.open()?.join("containers");
        sub_dir(&dir).map_err(|e| unavailable(format!("cannot create {}: {e}", dir.display())))?;
        Ok(dir.join(id))
    }

    /// Everything before the container runs: the image prepared, the
    /// container's directory with its rootfs copy and bundle, and a record
    /// of the image digest (a later daemon adopting the container compares
    /// it). What is left is `locald-shim run --bundle BUNDLE ID`.
    pub(crate) async fn prepare(&self, spec: &LaunchSpec) -> Result<Prepared, RuntimeError> {
        let Workload::Image {
            reference,
            read_only,
            ..
        } = &spec.workload
        else {
            return Err(unavailable(format!(
                "the container runtime cannot run {}",
                spec.workload.describe()
            )));
        };
        self.shim.check_installed().map_err(unavailable)?;
        // An image service's working directory on the host is its project
        // directory: relative layout paths resolve against it, and it is
        // recorded as a user of the image.
        let image = self
            .images
            .prepare(reference, &spec.cwd, spec.progress.get())
            .await
            .map_err(|e| unavailable(format!("image {reference}: {e}")))?;

        let id = container_id(&spec.key, &spec.unit);
        let dir = self.state_dir(&id)?;
        // Whatever an earlier run left under this id goes first. Its
        // directory is made before its container and removed after it
        // (`kill`, `clean_stale`), so without one there is nothing to ask
        // the shim about; should runc still have the id, `run` fails,
        // `kill` deletes it and the restart succeeds.
        if std::fs::symlink_metadata(&dir).is_ok() {
            let _ = self.shim.delete(&id, true).await;
            self.remove_dir(&dir).await;
        }
        create_with_key(&dir, &spec.key)
            .map_err(|e| unavailable(format!("cannot create {}: {e}", dir.display())))?;
        // Its own writable copy of the image, unless the service runs on the
        // shared, read-only one.
        let rootfs = if *read_only {
            image.rootfs.clone()
        } else {
            let copy = dir.join("rootfs");
            self.images
                .writable_copy(&image, &copy)
                .await
                .map_err(|e| unavailable(format!("image {reference}: {e}")))?;
            copy
        };
        let bundle = bundle_spec(spec, &image, &rootfs)?
            .write(&dir.join("bundle"))
            .map_err(unavailable)?;
        write_atomic(&dir.join("image"), image.digest.as_bytes())
            .map_err(|e| unavailable(format!("cannot write {}: {e}", dir.display())))?;
        Ok(Prepared {
            id,
            dir,
            bundle,
            image,
        })
    }

    async fn start(&self, spec: &LaunchSpec) -> Result<Box<dyn Process>, RuntimeError> {
        let Prepared {
            id,
            dir,
            bundle,
            image,
        } = self.prepare(spec).await?;
        let mut child = self.shim.run(&bundle, &id).map_err(unavailable)?;
        let stdout = child.stdout.take().map(|p| Box::pin(p) as Output);
        let stderr = child.stderr.take().map(|p| Box::pin(p) as Output);
        let pid = self.init_pid(&id, &mut child).await;
        lock(&self.live).insert(id.clone());
        Ok(Box::new(ContainerProcess {
            images: self.images.clone(),
            shim: self.shim.clone(),
            id,
            dir,
            child,
            pid,
            stdout,
            stderr,
            exit: None,
            live: self.live.clone(),
            stop_signal: image_stop_signal(image.stop_signal.as_deref()),
            image: image.digest,
            _lease: image.lease,
        }))
    }

    /// The shim this runtime runs containers through.
    pub(crate) fn shim(&self) -> &ShimClient {
        &self.shim
    }

    /// Prepares `reference` as [`ImageSource::prepare`] does, for a
    /// container a later daemon adopts (its lease and stop signal).
    pub(crate) async fn image(
        &self,
        reference: &str,
        project_dir: &Path,
    ) -> Result<PreparedImage, String> {
        self.images
            .prepare(reference, project_dir, crate::image::no_progress())
            .await
    }

    /// The image digest a container's directory records, if any.
    pub(crate) fn recorded_image(&self, id: &str) -> Option<String> {
        let dir = self.state_dir(id).ok()?;
        crate::fsutil::read_state(&dir.join("image"), 200)
            .ok()
            .flatten()
            .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
    }

    /// Removes the directory of container `id` (after it is gone).
    pub(crate) async fn remove_container(&self, id: &str) {
        if let Ok(dir) = self.state_dir(id) {
            self.remove_dir(&dir).await;
        }
    }

    /// Removes a container's directory, its writable copy of the image
    /// first (through the image source: its files may belong to
    /// subordinate ids, which a plain removal cannot delete).
    async fn remove_dir(&self, dir: &Path) {
        remove_container_dir(self.images.as_ref(), dir).await;
    }

    /// The container's init as the host sees it, once runc has created it;
    /// the shim's own pid if the container ended (or never started) first.
    ///
    /// Found in `/proc` (see [`init_below`]), polled every 2 ms: asking
    /// `locald-shim state` instead costs a setuid start and a runc start
    /// (~10 ms of CPU) a time, on the cores runc needs to create the
    /// container, and delayed the first output line by tens of ms. runc's
    /// state is still asked now and then, should `/proc` not tell.
    async fn init_pid(&self, id: &str, child: &mut Child) -> u32 {
        let shim_pid = child.id().unwrap_or(0);
        let start = tokio::time::Instant::now();
        let mut ask_runc = start + Duration::from_millis(200);
        while start.elapsed() < Duration::from_secs(3) {
            if let Some(pid) = init_below(shim_pid) {
                return pid;
            }
            if matches!(child.try_wait(), Ok(Some(_))) {
                break;
            }
            if tokio::time::Instant::now() >= ask_runc {
                if let Ok(s) = self.shim.state(id).await {
                    if let Some(pid) = s.pid.filter(|p| *p > 0) {
                        return pid;
                    }
                }
                ask_runc = tokio::time::Instant::now() + Duration::from_millis(100);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        shim_pid
    }
}

/// The container's init below the shim `shim_pid` (our child): runc is the
/// shim's child, and the container's init — created by runc's init
/// stages, then reparented to runc, its subreaper — is the one child of
/// runc that is pid 1 of a pid namespace of its own (`NSpid: HOST … 1`).
/// It keeps that pid from creation through its exec of the command, as
/// runc's state reports it. `None` until runc has created it.
fn init_below(shim_pid: u32) -> Option<u32> {
    children(shim_pid)
        .into_iter()
        .flat_map(children)
        .find(|&pid| is_pid_namespace_init(pid))
}

/// The container's init below the shim `shim_pid` (not locald's child: a
/// unit's main process), once runc has made it; `shim_pid` if the shim
/// ends first or 30 s pass (runc is slow on a loaded machine; until then
/// the service is starting).
pub(crate) async fn wait_for_init(shim_pid: u32) -> u32 {
    let start = tokio::time::Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if let Some(pid) = init_below(shim_pid) {
            return pid;
        }
        if !Path::new(&format!("/proc/{shim_pid}")).exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    shim_pid
}

/// The children of every thread of `pid` (`/proc/PID/task/*/children`,
/// readable by anyone, also for a setuid process).
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// The bundle of the image workload of `spec` on `rootfs`: the command
/// (the service's, else the image's Entrypoint and Cmd), the user (the
/// image's, or the CNB user the caller's ids map to), the environment (the
/// image's, `HOME`, the service's, `LOCALD_IMAGE`, `NOTIFY_SOCKET`), tmpfs
/// on the usual scratch directories, the notify socket's directory and the
/// service's volumes.
fn bundle_spec(
    spec: &LaunchSpec,
    image: &PreparedImage,
    rootfs: &Path,
) -> Result<BundleSpec, RuntimeError> {
    let Workload::Image {
        reference,
        command,
        volumes,
        workdir,
        read_only,
        map_user,
    } = &spec.workload
    else {
        return Err(unavailable(format!(
            "the container runtime cannot run {}",
            spec.workload.describe()
        )));
    };
    let args = match command {
        Some(c) => c.clone(),
        None => image
            .entrypoint
            .iter()
            .chain(image.cmd.iter())
            .cloned()
            .collect(),
    };
    if args.is_empty() {
        return Err(unavailable(format!(
            "image {reference} has no Entrypoint or Cmd; give the service a `command`"
        )));
    }
    let mut user = resolve_user(&image.rootfs, image.user.as_deref())
        .map_err(|e| unavailable(format!("image {reference}: {e}")))?;
    if let Some((uid, gid)) = map_user {
        user.uid = *uid;
        user.gid = *gid;
    }
    let mut env = image.env.clone();
    if let Some(home) = &user.home {
        if !env.iter().any(|e| e.starts_with("HOME=")) {
            env.push(format!("HOME={home}"));
        }
    }
    env.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
    env.push(format!("LOCALD_IMAGE={}", image.digest));
    let mut bundle = BundleSpec::for_current_user(rootfs, args)
        .map_err(unavailable)?
        .cwd(
            workdir
                .clone()
                .or_else(|| image.workdir.clone())
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| "/".into()),
        )
        .readonly_root(*read_only)
        .user(user.uid, user.gid);
    if let Some((uid, gid)) = map_user {
        bundle = bundle.own_ids_as(*uid, *gid).map_err(unavailable)?;
    }
    for tmp in ["/tmp", "/run", "/var/tmp"] {
        bundle = bundle.tmpfs(tmp);
    }
    if let Some(sock) = &spec.notify_socket {
        if let (Some(dir), Some(name)) = (sock.parent(), sock.file_name()) {
            bundle = bundle.bind(dir.to_owned(), NOTIFY_DIR, false);
            env.push(format!(
                "NOTIFY_SOCKET={NOTIFY_DIR}/{}",
                name.to_string_lossy()
            ));
        }
    }
    for v in volumes {
        bundle = bundle.bind(v.source.clone(), v.target.clone(), v.read_only);
    }
    Ok(bundle.env(env))
}

/// Whether `pid` is the first process of a pid namespace below ours.
fn is_pid_namespace_init(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| nspid_is_init(&s))
}

/// Whether a `/proc/PID/status` text has `NSpid:` with more than one pid
/// and 1 as the innermost.
fn nspid_is_init(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .is_some_and(|ids| {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            ids.len() > 1 && ids.last() == Some(&"1")
        })
}

/// Makes the container directory `dir` with its `key` already inside: the
/// directory is made under a temporary name, the key written, then renamed
/// into place. A sweep (the daemon's start, while the projects it restores
/// fill their containers' copies) reads the key of every directory it sees
/// to ask whether a live locald claims it; a directory seen before its key
/// was written read as claimed by nobody and was deleted while the copy was
/// being made ("cannot make the container's copy: … No such file or
/// directory").
fn create_with_key(dir: &Path, key: &str) -> std::io::Result<()> {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Err(std::io::ErrorKind::InvalidInput.into());
    };
    let tmp = parent.join(format!(
        "{UNFINISHED}{}-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let made = (|| {
        sub_dir(&tmp)?;
        write_atomic(&tmp.join("key"), key.as_bytes())?;
        std::fs::rename(&tmp, dir)
    })();
    if made.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    made
}

/// The prefix of a container directory being made ([`create_with_key`]).
const UNFINISHED: &str = ".new-";

/// Removes directories [`create_with_key`] left half-made in `dir` when its
/// process died (their name ends with the pid that made them).
fn sweep_unfinished(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(UNFINISHED)) else {
            continue;
        };
        let pid = rest.rsplit('-').next().and_then(|p| p.parse::<i32>().ok());
        let alive = pid
            .is_some_and(|p| nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok());
        if !alive {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

async fn remove_container_dir(images: &dyn ImageSource, dir: &Path) {
    if let Err(e) = images.remove_copy(&dir.join("rootfs")).await {
        tracing::warn!("cannot remove {}: {e}", dir.join("rootfs").display());
    }
    let _ = std::fs::remove_dir_all(dir);
}

impl Runtime for ContainerRuntime {
    fn spawn<'a>(
        &'a self,
        spec: &'a LaunchSpec,
    ) -> BoxFuture<'a, Result<Box<dyn Process>, RuntimeError>> {
        Box::pin(self.start(spec))
    }

    fn clean_stale<'a>(&'a self, key: &'a str, unit: &'a str) -> BoxFuture<'a, usize> {
        Box::pin(async move {
            if self.shim.check_installed().is_err() {
                return 0;
            }
            let id = container_id(key, unit);
            // One shim call: `delete --force` of an id the user's runc does
            // not have fails without starting runc.
            let found = self.shim.delete(&id, true).await.is_ok();
            if let Ok(dir) = self.state_dir(&id) {
                self.remove_dir(&dir).await;
            }
            usize::from(found)
        })
    }

    fn name(&self) -> &'static str {
        "container"
    }

    fn sweep_abandoned(&self) -> BoxFuture<'_, usize> {
        Box::pin(async move {
            let Ok(dir) = self.runtime.open().map(|d| d.join("containers")) else {
                return 0;
            };
            let ids: Vec<String> = std::fs::read_dir(&dir)
                .map(|rd| {
                    rd.filter_map(Result::ok)
                        .filter_map(|e| e.file_name().into_string().ok())
                        .filter(|n| n.starts_with("locald-"))
                        .collect()
                })
                .unwrap_or_default();
            sweep_unfinished(&dir);
            let mut n = 0;
            for id in ids {
                // A directory always has its key (`create_with_key`); one
                // without (made by an older locald, or unreadable) says
                // nothing about who owns it, so it is left alone rather
                // than taken for abandoned: the container being restored
                // right now may be filling it.
                let key = std::fs::read_to_string(dir.join(&id).join("key")).unwrap_or_default();
                let key = key.trim();
                if key.is_empty() {
                    tracing::debug!("{}: no key; left alone", dir.join(&id).display());
                    continue;
                }
                let Some(_claim) = ProjectClaim::take_abandoned(&self.runtime, key) else {
                    continue;
                };
                if self.shim.state(&id).await.is_ok() {
                    n += 1;
                }
                let _ = self.shim.delete(&id, true).await;
                self.remove_dir(&dir.join(&id)).await;
            }
            n
        })
    }

    fn kill_all(&self) {
        for id in lock(&self.live).iter() {
            kill_detached(&self.shim, id);
        }
    }
}

/// Stops container `id` of `process` through the shim: `signal`, then
/// `KILL` after `timeout`; returns how the container ended.
pub(crate) async fn stop_through_shim(
    process: &mut dyn Process,
    shim: &ShimClient,
    id: &str,
    signal: Signal,
    timeout: Duration,
) -> ExitStatus {
    if let Err(e) = shim.kill(id, shim_signal(signal)).await {
        tracing::debug!("locald-shim kill {id}: {e}");
    }
    match tokio::time::timeout(timeout, process.wait()).await {
        Ok(status) => status,
        Err(_) => {
            let _ = shim.kill(id, "KILL").await;
            process.wait().await
        }
    }
}

/// The argv prefix that runs a command inside container `id`.
pub(crate) fn exec_prefix(shim: &ShimClient, id: &str) -> Vec<String> {
    vec![
        shim.path().display().to_string(),
        "exec".into(),
        "--id".into(),
        id.to_owned(),
        "--".into(),
    ]
}

/// The container's status from `locald-shim run`'s: it exits 128+N when
/// the container was killed by signal N, as runc reports it.
pub(crate) fn container_status(shim: ExitStatus) -> ExitStatus {
    match shim {
        ExitStatus::Exited(c) if c > 128 && c < 128 + 65 => ExitStatus::Signaled(c - 128),
        other => other,
    }
}

/// Sends KILL through the shim without waiting (from `Drop` and the second
/// Ctrl-C, where nothing may block).
pub(crate) fn kill_detached(shim: &ShimClient, id: &str) {
    let _ = std::process::Command::new(shim.path())
        .args(["kill", "--id", id, "--signal", "KILL"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

struct ContainerProcess {
    images: Arc<dyn ImageSource>,
    shim: ShimClient,
    id: String,
    dir: PathBuf,
    child: Child,
    pid: u32,
    stdout: Option<Output>,
    stderr: Option<Output>,
    exit: Option<ExitStatus>,
    live: Arc<Mutex<HashSet<String>>>,
    image: String,
    stop_signal: Signal,
    /// Keeps the rootfs from being pruned while the container runs.
    _lease: Lease,
}

impl Process for ContainerProcess {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn take_stdout(&mut self) -> Option<Output> {
        self.stdout.take()
    }

    fn take_stderr(&mut self) -> Option<Output> {
        self.stderr.take()
    }

    fn wait(&mut self) -> BoxFuture<'_, ExitStatus> {
        Box::pin(async move {
            if let Some(e) = self.exit {
                return e;
            }
            let status = match self.child.wait().await {
                Ok(s) => container_status(ExitStatus::from_std(s)),
                Err(_) => ExitStatus::Exited(-1),
            };
            self.exit = Some(status);
            status
        })
    }

    fn stop(&mut self, signal: Signal, timeout: Duration) -> BoxFuture<'_, ExitStatus> {
        Box::pin(async move {
            let (shim, id) = (self.shim.clone(), self.id.clone());
            stop_through_shim(self, &shim, &id, signal, timeout).await
        })
    }

    fn kill(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if self.exit.is_none() {
                let _ = self.shim.kill(&self.id, "KILL").await;
            }
            let _ = self.wait().await;
            let _ = self.shim.delete(&self.id, true).await;
            remove_container_dir(self.images.as_ref(), &self.dir).await;
            lock(&self.live).remove(&self.id);
        })
    }

    fn kill_now(&self) {
        kill_detached(&self.shim, &self.id);
    }

    fn image(&self) -> Option<&str> {
        Some(&self.image)
    }

    fn stop_signal(&self) -> Signal {
        self.stop_signal
    }

    fn probe_prefix(&self) -> Option<Vec<String>> {
        Some(exec_prefix(&self.shim, &self.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_are_stable_short_and_in_the_shims_alphabet() {
        let a = container_id("shop-0123456789ab", "web");
        assert_eq!(a, container_id("shop-0123456789ab", "web"));
        assert_ne!(a, container_id("shop-ba9876543210", "web"));
        assert!(a.len() <= 64);
        let b = container_id("k", &"x.build".repeat(20));
        assert!(b.len() <= 64, "{b}");
        assert!(b
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-')));
        assert!(!b.contains(".."));
    }

    #[test]
    fn image_users_resolve_from_the_images_own_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).expect("mkdir");
        std::fs::write(
            etc.join("passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnode:x:1000:1001::/home/node:/bin/sh\n",
        )
        .expect("passwd");
        std::fs::write(etc.join("group"), "root:x:0:\nstaff:x:50:\n").expect("group");
        let r = |u: Option<&str>| resolve_user(dir.path(), u);
        assert_eq!(r(None).map(|u| (u.uid, u.gid)), Ok((0, 0)));
        let node = r(Some("node")).expect("node");
        assert_eq!(
            (node.uid, node.gid, node.home.as_deref()),
            (1000, 1001, Some("/home/node"))
        );
        assert_eq!(
            r(Some("1000:staff")).map(|u| (u.uid, u.gid)),
            Ok((1000, 50))
        );
        assert_eq!(r(Some("42")).map(|u| (u.uid, u.gid)), Ok((42, 42)));
        assert!(r(Some("nobody")).is_err());
        assert!(r(Some("node:wheel")).is_err());
    }

    #[test]
    fn an_image_symlink_cannot_lead_the_lookup_out_of_the_rootfs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).expect("mkdir");
        std::fs::write(outside.join("passwd"), "evil:x:7:7::/:/bin/sh\n").expect("write");
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir(&rootfs).expect("mkdir");
        // etc -> ../outside resolves to the rootfs's own root under RESOLVE_IN_ROOT.
        std::os::unix::fs::symlink("../outside", rootfs.join("etc")).expect("symlink");
        assert!(resolve_user(&rootfs, Some("evil")).is_err());
    }

    #[test]
    fn image_stop_signals() {
        assert_eq!(image_stop_signal(Some("SIGQUIT")), Signal::SIGQUIT);
        assert_eq!(image_stop_signal(Some("quit")), Signal::SIGQUIT);
        assert_eq!(image_stop_signal(Some("2")), Signal::SIGINT);
        assert_eq!(image_stop_signal(Some("SIGNOPE")), Signal::SIGTERM);
        assert_eq!(image_stop_signal(None), Signal::SIGTERM);
    }

    #[test]
    fn a_pid_namespace_init_is_pid_1_inside_and_another_outside() {
        let status =
            |nspid: &str| format!("Name:\tbusybox\nPid:\t4242\nNSpid:\t{nspid}\nUid:\t0\n");
        assert!(nspid_is_init(&status("4242\t1")));
        assert!(nspid_is_init(&status("4242\t77\t1")), "nested");
        assert!(!nspid_is_init(&status("4242")), "runc's own stages");
        assert!(!nspid_is_init(&status("4242\t7")), "not the first");
        assert!(!nspid_is_init("Name:\tx\n"), "no NSpid line");
    }

    #[test]
    fn the_init_of_a_process_with_no_container_below_is_none() {
        assert_eq!(init_below(std::process::id()), None);
        assert_eq!(init_below(u32::MAX), None);
    }

    #[test]
    fn signal_names_for_the_shim() {
        assert_eq!(shim_signal(Signal::SIGTERM), "TERM");
        assert_eq!(shim_signal(Signal::SIGKILL), "KILL");
    }
}
