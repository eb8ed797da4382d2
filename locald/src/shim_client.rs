//! The daemon's side of the setuid shim: write an OCI bundle for a container
//! service and drive `locald-shim` (run, kill, delete, state) as a child
//! process.
//!
//! locald runs as the user; the shim (root-owned, setuid, normally at
//! [`DEFAULT_SHIM_PATH`]) checks each bundle and runs runc on it. This module
//! builds bundles that pass the shim's policy (a user namespace that maps the
//! user's own uid to root and their `/etc/subuid` ranges after it), and turns
//! a missing or badly installed shim into [`ShimError`]s that say how to
//! install it. It is self-contained: the container-services and CNB features
//! call it without knowing the shim's command line.

use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxIdMapping,
    LinuxIdMappingBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, MountBuilder, ProcessBuilder,
    RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use oci_spec::OciSpecError;
use serde::Deserialize;

/// Where packages install the shim.
pub const DEFAULT_SHIM_PATH: &str = "/usr/libexec/locald/locald-shim";

/// How to install the shim, repeated in every installation error.
const INSTALL_HINT: &str = "install it with owner root and mode 4755 \
     (`install -o root -g root -m 4755 locald-shim PATH`) on a filesystem not mounted nosuid";

/// Errors from writing bundles or driving the shim.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// The shim binary does not exist.
    #[error("the container shim {path} is missing: {INSTALL_HINT}")]
    NotInstalled {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The shim exists but is not setuid root.
    #[error(
        "the container shim {path} is not setuid root (owner uid {owner}, mode {mode:o}): \
         {INSTALL_HINT}"
    )]
    NotSetuid {
        /// The shim's path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Its permission bits.
        mode: u32,
    },
    /// The shim is setuid but on a `nosuid` mount, so the bit is ignored.
    #[error("the container shim {path} is on a filesystem mounted nosuid: {INSTALL_HINT}")]
    NosuidMount {
        /// The shim's path.
        path: PathBuf,
    },
    /// Reading or writing a file failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The shim could not be started.
    #[error("cannot start the container shim {path}: {source}")]
    Spawn {
        /// The shim's path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The shim ran and failed or refused; its message is in `stderr`.
    #[error("locald-shim {command} failed ({status}): {stderr}")]
    Failed {
        /// The shim subcommand.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// What it printed on stderr (each line starts with `locald-shim:`).
        stderr: String,
    },
    /// The shim's output was not the JSON expected.
    #[error("unexpected output from locald-shim {command}: {source}")]
    Output {
        /// The shim subcommand.
        command: String,
        /// The parse error.
        source: serde_json::Error,
    },
}

/// The subset of runc's state the daemon needs.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ContainerState {
    /// The container id.
    pub id: String,
    /// `creating`, `created`, `running`, `paused` or `stopped`.
    pub status: String,
    /// Host pid of the container's init, when it has one.
    #[serde(default)]
    pub pid: Option<u32>,
}

/// One uid or gid mapping line of the user namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdMap {
    /// First id inside the container.
    pub container_id: u32,
    /// First id on the host.
    pub host_id: u32,
    /// Number of ids.
    pub size: u32,
}

/// A bind mount from the user's files into the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    /// Host path (absolute, owned by the user, or an allowed system file).
    pub source: PathBuf,
    /// Path inside the container.
    pub destination: String,
    /// Mount it read-only.
    pub readonly: bool,
}

/// What a container should run, from which the bundle's `config.json` is
/// written. Build with [`BundleSpec::for_current_user`] and the setters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleSpec {
    /// The rootfs directory (absolute; owned by the user).
    pub rootfs: PathBuf,
    /// Program and arguments.
    pub args: Vec<String>,
    /// `NAME=value` entries.
    pub env: Vec<String>,
    /// Working directory inside the container.
    pub cwd: String,
    /// Hostname inside the container.
    pub hostname: String,
    /// uid mappings.
    pub uid_mappings: Vec<IdMap>,
    /// gid mappings.
    pub gid_mappings: Vec<IdMap>,
    /// Share the host's network (the default: dev services listen on
    /// localhost); otherwise the container gets its own loopback only.
    pub host_network: bool,
    /// Extra bind mounts.
    pub binds: Vec<BindMount>,
    /// Mount the rootfs read-only (it is shared by every container of an image).
    pub readonly_root: bool,
    /// Paths that get a private tmpfs (`/tmp`, `/run`, …).
    pub tmpfs: Vec<String>,
    /// The process's uid and gid in the container.
    pub user: (u32, u32),
}

impl BundleSpec {
    /// A spec for the current user: their uid and gid map to 0, and their
    /// `/etc/subuid` / `/etc/subgid` ranges map to 1 and up.
    pub fn for_current_user(rootfs: &Path, args: Vec<String>) -> Result<Self, ShimError> {
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name);
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let subuids = parse_subid(&read("/etc/subuid"), name.as_deref(), uid);
        let subgids = parse_subid(&read("/etc/subgid"), name.as_deref(), uid);
        Ok(Self {
            rootfs: absolute(rootfs)?,
            args,
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cwd: "/".into(),
            hostname: "locald".into(),
            uid_mappings: mappings(uid, &subuids),
            gid_mappings: mappings(gid, &subgids),
            host_network: true,
            binds: Vec::new(),
            readonly_root: false,
            tmpfs: Vec::new(),
            user: (0, 0),
        })
    }

    /// Run the process as `uid:gid` in the container.
    pub fn user(mut self, uid: u32, gid: u32) -> Self {
        self.user = (uid, gid);
        self
    }

    /// Maps the caller's own uid and gid to `uid:gid` in the container
    /// instead of to root, swapping them with the subordinate ids that
    /// `uid:gid` had: files the caller owns appear as `uid:gid`'s, and the
    /// image's root-owned files (unpacked as the caller's) as owned by the
    /// subordinate id now at 0. Only for a read-only rootfs, whose owners
    /// then matter for reading alone. Fails when `uid` or `gid` is not
    /// mapped (too few subordinate ids).
    pub fn own_ids_as(mut self, uid: u32, gid: u32) -> Result<Self, ShimError> {
        let not_mapped = |kind: &str, id: u32| ShimError::Io {
            what: "cannot map your own id to the build user",
            path: PathBuf::from(format!("/etc/sub{kind}")),
            source: std::io::Error::other(format!(
                "container {kind} {id} is not in your subordinate {kind} ranges; \
                 give your user at least {} ids in /etc/sub{kind}",
                u64::from(id) + 1
            )),
        };
        self.uid_mappings =
            swap_to(&self.uid_mappings, uid).ok_or_else(|| not_mapped("uid", uid))?;
        self.gid_mappings =
            swap_to(&self.gid_mappings, gid).ok_or_else(|| not_mapped("gid", gid))?;
        Ok(self)
    }

    /// Mount the rootfs read-only or not.
    pub fn readonly_root(mut self, yes: bool) -> Self {
        self.readonly_root = yes;
        self
    }

    /// Give the container a private tmpfs at `destination`.
    pub fn tmpfs(mut self, destination: impl Into<String>) -> Self {
        self.tmpfs.push(destination.into());
        self
    }

    /// Replace the environment.
    pub fn env(mut self, env: Vec<String>) -> Self {
        self.env = env;
        self
    }

    /// Set the working directory.
    pub fn cwd(mut self, cwd: impl Into<String>) -> Self {
        self.cwd = cwd.into();
        self
    }

    /// Share the host network or not.
    pub fn host_network(mut self, yes: bool) -> Self {
        self.host_network = yes;
        self
    }

    /// Add a bind mount.
    pub fn bind(mut self, source: PathBuf, destination: impl Into<String>, readonly: bool) -> Self {
        self.binds.push(BindMount {
            source,
            destination: destination.into(),
            readonly,
        });
        self
    }

    /// The OCI runtime spec for this bundle, built with `oci-spec`'s types —
    /// the same types the shim parses it with, so the two cannot drift.
    pub fn config(&self) -> Result<Spec, OciSpecError> {
        let mut spec = SpecBuilder::default()
            .version("1.0.2")
            .process(self.process()?)
            .root(
                RootBuilder::default()
                    .path(self.rootfs.clone())
                    .readonly(self.readonly_root)
                    .build()?,
            )
            .hostname(self.hostname.clone())
            .mounts(self.mounts()?)
            .linux(self.linux()?)
            .build()?;
        spec.set_annotations(None);
        Ok(spec)
    }

    /// The container's process: the user, command, environment and the
    /// small set of capabilities a container's root gets (none inheritable
    /// or ambient, no new privileges, no rlimits: the shim allows only what
    /// is asked for, and oci-spec's builders would fill in runc's defaults).
    fn process(&self) -> Result<oci_spec::runtime::Process, OciSpecError> {
        let caps: Capabilities = [
            Capability::Chown,
            Capability::DacOverride,
            Capability::Fowner,
            Capability::Fsetid,
            Capability::Kill,
            Capability::Setgid,
            Capability::Setuid,
            Capability::Setpcap,
            Capability::NetBindService,
            Capability::SysChroot,
        ]
        .into_iter()
        .collect();
        let mut capabilities = LinuxCapabilitiesBuilder::default()
            .bounding(caps.clone())
            .effective(caps.clone())
            .permitted(caps)
            .build()?;
        capabilities.set_inheritable(None);
        capabilities.set_ambient(None);
        let mut process = ProcessBuilder::default()
            .terminal(false)
            .user(
                UserBuilder::default()
                    .uid(self.user.0)
                    .gid(self.user.1)
                    .build()?,
            )
            .args(self.args.clone())
            .env(self.env.clone())
            .cwd(self.cwd.clone())
            .no_new_privileges(true)
            .capabilities(capabilities)
            .build()?;
        process.set_rlimits(None);
        Ok(process)
    }

    /// `/proc`, the standard `/dev` mounts, the service's tmpfs and bind
    /// mounts.
    fn mounts(&self) -> Result<Vec<oci_spec::runtime::Mount>, OciSpecError> {
        let mount = |dest: &str, typ: &str, source: &str, opts: &[&str]| {
            MountBuilder::default()
                .destination(dest)
                .typ(typ)
                .source(source)
                .options(opts.iter().map(|o| o.to_string()).collect::<Vec<_>>())
                .build()
        };
        let mut mounts = vec![
            MountBuilder::default()
                .destination("/proc")
                .typ("proc")
                .source("proc")
                .build()?,
            mount(
                "/dev",
                "tmpfs",
                "tmpfs",
                &["nosuid", "strictatime", "mode=755", "size=65536k"],
            )?,
            // No gid= option: gid 5 need not be mapped in a user namespace.
            mount(
                "/dev/pts",
                "devpts",
                "devpts",
                &[
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                ],
            )?,
            mount(
                "/dev/shm",
                "tmpfs",
                "shm",
                &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            )?,
            mount(
                "/dev/mqueue",
                "mqueue",
                "mqueue",
                &["nosuid", "noexec", "nodev"],
            )?,
        ];
        for t in &self.tmpfs {
            mounts.push(mount(
                t,
                "tmpfs",
                "tmpfs",
                &["nosuid", "nodev", "mode=1777"],
            )?);
        }
        for b in &self.binds {
            let source = b.source.to_string_lossy();
            let opts = ["rbind", if b.readonly { "ro" } else { "rw" }];
            mounts.push(mount(&b.destination, "bind", &source, &opts)?);
        }
        Ok(mounts)
    }

    /// The namespaces (a user namespace always; the network one unless the
    /// container shares the host's), the id mappings, and the paths masked
    /// or read-only as runc's defaults have them; no resources.
    fn linux(&self) -> Result<oci_spec::runtime::Linux, OciSpecError> {
        let map = |m: &[IdMap]| -> Result<Vec<LinuxIdMapping>, OciSpecError> {
            m.iter()
                .map(|m| {
                    LinuxIdMappingBuilder::default()
                        .container_id(m.container_id)
                        .host_id(m.host_id)
                        .size(m.size)
                        .build()
                })
                .collect()
        };
        let mut kinds = vec![
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::User,
        ];
        if !self.host_network {
            kinds.push(LinuxNamespaceType::Network);
        }
        let namespaces = kinds
            .into_iter()
            .map(|t| LinuxNamespaceBuilder::default().typ(t).build())
            .collect::<Result<Vec<_>, _>>()?;
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut linux = LinuxBuilder::default()
            .uid_mappings(map(&self.uid_mappings)?)
            .gid_mappings(map(&self.gid_mappings)?)
            .namespaces(namespaces)
            .masked_paths(strings(&[
                "/proc/acpi",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/proc/scsi",
                "/sys/firmware",
            ]))
            .readonly_paths(strings(&[
                "/proc/asound",
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ]))
            .build()?;
        linux.set_resources(None);
        Ok(linux)
    }

    /// Create `dir` (mode 0700) and write `config.json` into it; the rootfs
    /// stays where it is (`root.path` is absolute). Returns the bundle dir.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, ShimError> {
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| ShimError::Io { what, path, source }
        };
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("chmod", dir))?;
        let path = dir.join("config.json");
        let encode_error = |e: String| ShimError::Io {
            what: "serialize",
            path: path.clone(),
            source: std::io::Error::other(e),
        };
        let spec = self.config().map_err(|e| encode_error(e.to_string()))?;
        let text = serde_json::to_vec_pretty(&spec).map_err(|e| encode_error(e.to_string()))?;
        // Write-then-rename so the shim never reads a half-written config.
        let tmp = dir.join(".config.json.tmp");
        std::fs::write(&tmp, text).map_err(io("write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("rename", &path))?;
        absolute(dir)
    }
}

fn absolute(p: &Path) -> Result<PathBuf, ShimError> {
    std::path::absolute(p).map_err(|source| ShimError::Io {
        what: "resolve",
        path: p.to_path_buf(),
        source,
    })
}

/// `owner:start:count` lines of `/etc/subuid` for a name or numeric uid,
/// as `(start, count)`.
fn parse_subid(content: &str, name: Option<&str>, uid: u32) -> Vec<(u32, u32)> {
    locald_core::ids::parse_subid(content, name, uid)
        .into_iter()
        .map(|r| (r.start, r.count))
        .collect()
}

/// Own id → 0, then each subordinate range after the previous one.
fn mappings(own: u32, sub: &[(u32, u32)]) -> Vec<IdMap> {
    let mut out = vec![IdMap {
        container_id: 0,
        host_id: own,
        size: 1,
    }];
    let mut next: u32 = 1;
    for &(start, count) in sub {
        // Keep container ids below 2^32 - 1 (the kernel's invalid id).
        let room = (u32::MAX - 1).saturating_sub(next);
        let size = count.min(room);
        if size == 0 {
            break;
        }
        out.push(IdMap {
            container_id: next,
            host_id: start,
            size,
        });
        next += size;
    }
    out
}

/// `maps` (container 0 first, as [`mappings`] makes them) with container
/// ids 0 and `to` swapped; `None` when `to` is not mapped.
fn swap_to(maps: &[IdMap], to: u32) -> Option<Vec<IdMap>> {
    if to == 0 {
        return Some(maps.to_vec());
    }
    let host_of = |c: u32| {
        maps.iter()
            .find(|m| c >= m.container_id && c - m.container_id < m.size)
            .map(|m| m.host_id + (c - m.container_id))
    };
    let (own, other) = (host_of(0)?, host_of(to)?);
    let mut out = Vec::new();
    for m in maps {
        let end = m.container_id + m.size;
        // Split every range around ids 0 and `to`, which get single entries.
        let mut start = m.container_id;
        for cut in [0, to] {
            if cut >= start && cut < end {
                if cut > start {
                    out.push(IdMap {
                        container_id: start,
                        host_id: m.host_id + (start - m.container_id),
                        size: cut - start,
                    });
                }
                start = cut + 1;
            }
        }
        if start < end {
            out.push(IdMap {
                container_id: start,
                host_id: m.host_id + (start - m.container_id),
                size: end - start,
            });
        }
    }
    out.push(IdMap {
        container_id: 0,
        host_id: other,
        size: 1,
    });
    out.push(IdMap {
        container_id: to,
        host_id: own,
        size: 1,
    });
    out.sort_by_key(|m| m.container_id);
    Some(out)
}

/// Drives one installed shim binary.
#[derive(Clone, Debug)]
pub struct ShimClient {
    path: PathBuf,
}

impl Default for ShimClient {
    fn default() -> Self {
        Self::new(DEFAULT_SHIM_PATH)
    }
}

impl ShimClient {
    /// A client for the shim at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The shim named by `$LOCALD_SHIM`, else [`DEFAULT_SHIM_PATH`]. Naming
    /// another shim gains nothing: it only works if it is setuid root,
    /// which only root can make it.
    pub fn from_env() -> Self {
        match std::env::var_os("LOCALD_SHIM") {
            Some(p) if !p.is_empty() => Self::new(p),
            _ => Self::default(),
        }
    }

    /// The shim's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Check the shim is installed so that its setuid bit works: present,
    /// owned by root, mode includes 04000 and execute, not on a nosuid mount.
    pub fn check_installed(&self) -> Result<(), ShimError> {
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ShimError::NotInstalled {
                    path: self.path.clone(),
                })
            }
            Err(source) => {
                return Err(ShimError::Io {
                    what: "stat",
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let mode = meta.mode() & 0o7777;
        if meta.uid() != 0 || mode & 0o4000 == 0 || mode & 0o001 == 0 {
            return Err(ShimError::NotSetuid {
                path: self.path.clone(),
                owner: meta.uid(),
                mode,
            });
        }
        let nosuid = nix::sys::statvfs::statvfs(&self.path)
            .map(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_NOSUID))
            .unwrap_or(false);
        if nosuid {
            return Err(ShimError::NosuidMount {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    fn command<I, S>(&self, args: I) -> tokio::process::Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = tokio::process::Command::new(&self.path);
        cmd.args(args).stdin(Stdio::null()).kill_on_drop(false);
        cmd
    }

    /// Start `run --bundle DIR --id ID` with stdout and stderr piped; the
    /// child's exit status is the container's. Checks the installation first
    /// so a broken install gives the install hint, not a refusal. Must be
    /// called inside a tokio runtime (the child is a `tokio::process::Child`).
    pub fn run(&self, bundle: &Path, id: &str) -> Result<tokio::process::Child, ShimError> {
        self.check_installed()?;
        self.command([
            OsStr::new("run"),
            OsStr::new("--bundle"),
            bundle.as_os_str(),
            OsStr::new("--id"),
            OsStr::new(id),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, as host services have: a Ctrl-C at the
        // terminal reaches locald, which stops containers in dependency
        // order, not the shim (which would forward it to the container).
        .process_group(0)
        .spawn()
        .map_err(|source| ShimError::Spawn {
            path: self.path.clone(),
            source,
        })
    }

    async fn short(&self, args: &[&str]) -> Result<Vec<u8>, ShimError> {
        self.check_installed()?;
        let out = self
            .command(args)
            .output()
            .await
            .map_err(|source| ShimError::Spawn {
                path: self.path.clone(),
                source,
            })?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(ShimError::Failed {
                command: args.first().copied().unwrap_or("").to_string(),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim_end().to_string(),
            })
        }
    }

    /// Send `signal` (a name such as `TERM` or `KILL`) to the container.
    pub async fn kill(&self, id: &str, signal: &str) -> Result<(), ShimError> {
        self.short(&["kill", "--id", id, "--signal", signal])
            .await
            .map(drop)
    }

    /// Delete the container (with `force`, kill it first if running).
    pub async fn delete(&self, id: &str, force: bool) -> Result<(), ShimError> {
        let mut args = vec!["delete", "--id", id];
        if force {
            args.push("--force");
        }
        self.short(&args).await.map(drop)
    }

    /// The container's state.
    pub async fn state(&self, id: &str) -> Result<ContainerState, ShimError> {
        let out = self.short(&["state", "--id", id]).await?;
        serde_json::from_slice(&out).map_err(|source| ShimError::Output {
            command: "state".into(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_put_own_id_first_then_ranges() {
        let m = mappings(1000, &[(100000, 65536), (300000, 10)]);
        assert_eq!(
            m,
            vec![
                IdMap {
                    container_id: 0,
                    host_id: 1000,
                    size: 1
                },
                IdMap {
                    container_id: 1,
                    host_id: 100000,
                    size: 65536
                },
                IdMap {
                    container_id: 65537,
                    host_id: 300000,
                    size: 10
                },
            ]
        );
    }

    #[test]
    fn own_ids_swap_with_the_build_user() {
        let m = mappings(1000, &[(100000, 65536)]);
        let s = swap_to(&m, 1000).unwrap();
        let host = |c: u32| {
            s.iter()
                .find(|m| c >= m.container_id && c - m.container_id < m.size)
                .map(|m| m.host_id + (c - m.container_id))
        };
        assert_eq!(host(1000), Some(1000));
        assert_eq!(host(0), Some(100000 + 999));
        assert_eq!(host(1), Some(100000));
        assert_eq!(host(999), Some(100000 + 998));
        assert_eq!(host(1001), Some(100000 + 1000));
        assert_eq!(host(65536), Some(100000 + 65535));
        assert_eq!(s.iter().map(|m| u64::from(m.size)).sum::<u64>(), 65537);
        assert!(swap_to(&mappings(1000, &[]), 1000).is_none());
    }

    #[test]
    fn subid_lines_by_name_or_uid() {
        let s = "a:100:5\n7:200:3\nb:1:1\nbad\na:9:0\n";
        assert_eq!(parse_subid(s, Some("a"), 7), vec![(100, 5), (200, 3)]);
    }

    #[test]
    fn config_has_user_namespace_and_absolute_root() {
        let spec = BundleSpec {
            rootfs: "/r".into(),
            args: vec!["true".into()],
            env: vec![],
            cwd: "/".into(),
            hostname: "h".into(),
            uid_mappings: mappings(1000, &[]),
            gid_mappings: mappings(1000, &[]),
            host_network: true,
            binds: vec![],
            readonly_root: false,
            tmpfs: vec![],
            user: (0, 0),
        };
        let c = spec.config().expect("a valid spec");
        assert_eq!(
            c.root().as_ref().map(|r| r.path().clone()),
            Some("/r".into())
        );
        let ns = c
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .unwrap_or_default();
        assert!(ns.iter().any(|n| n.typ() == LinuxNamespaceType::User));
        assert!(!ns.iter().any(|n| n.typ() == LinuxNamespaceType::Network));
        // What the shim parses is what was built.
        let text = serde_json::to_string(&c).expect("encode");
        let back: Spec = serde_json::from_str(&text).expect("decode");
        assert_eq!(back, c);
    }
}
