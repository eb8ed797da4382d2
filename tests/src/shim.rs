//! Helpers for the setuid shim tests (`tests/tests/shim.rs`): build the shim
//! and install a root-owned 4755 copy, create unprivileged test users with
//! `/etc/subuid` / `/etc/subgid` ranges, write busybox-static bundles, run
//! the shim as a test user, and check that nothing was left behind.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// Exit status the shim uses for its own errors and refusals.
pub const SHIM_ERROR: i32 = 125;

/// Check the machine can run these tests: root, runc, busybox-static, a
/// /tmp that honours setuid. Returns false (after saying why) when the test
/// should be skipped; panics instead under `CI=true`.
pub fn preconditions() -> bool {
    let mut missing = Vec::new();
    if nix::unistd::geteuid().as_raw() != 0 {
        missing.push("the shim tests must run as root (they create users and a setuid binary)");
    }
    if !Path::new("/usr/sbin/runc").exists() {
        missing.push("runc is not installed at /usr/sbin/runc (tests/setup-debian.sh)");
    }
    if !Path::new("/bin/busybox").exists() {
        missing.push("busybox-static is not installed (tests/setup-debian.sh)");
    }
    if !Path::new("/usr/sbin/useradd").exists() {
        missing.push("useradd is missing");
    }
    if nosuid(Path::new("/tmp")) {
        missing.push("/tmp is mounted nosuid: a setuid shim cannot be tested there");
    }
    if missing.is_empty() {
        return true;
    }
    let why = missing.join("; ");
    if crate::is_ci() {
        panic!("precondition missing under CI=true: {why}");
    }
    eprintln!("skipping: {why}");
    false
}

fn nosuid(p: &Path) -> bool {
    nix::sys::statvfs::statvfs(p)
        .map(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_NOSUID))
        .unwrap_or(false)
}

/// The target directory this test binary was built into (`…/target`), found
/// from the test executable's own path (`…/target/debug/deps/shim-HASH`).
pub fn target_profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let deps = exe.parent().context("test exe has no parent")?;
    let profile = deps.parent().context("deps has no parent")?;
    Ok(profile.to_path_buf())
}

/// Build `locald-shim` (a no-op when fresh) and return the built binary.
/// The shim is another package of the workspace, so `CARGO_BIN_EXE_` does
/// not reach it from here.
pub fn built_shim() -> Result<PathBuf> {
    static BUILT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let build = || -> Result<PathBuf> {
                let profile = target_profile_dir()?;
                let target = profile.parent().context("profile dir has no parent")?;
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
                let mut cmd = Command::new(cargo);
                cmd.args(["build", "-p", "locald-shim", "--bin", "locald-shim"])
                    .env("CARGO_TARGET_DIR", target)
                    .current_dir(env!("CARGO_MANIFEST_DIR"));
                if profile.file_name().is_some_and(|n| n == "release") {
                    cmd.arg("--release");
                }
                let out = cmd.output().context("running cargo build -p locald-shim")?;
                if !out.status.success() {
                    bail!(
                        "cargo build -p locald-shim failed:\n{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                let bin = profile.join("locald-shim");
                if !bin.exists() {
                    bail!("{} was not built", bin.display());
                }
                Ok(bin)
            };
            build().map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// A root-owned, mode 4755 copy of the shim in its own temp directory.
pub struct InstalledShim {
    /// The temp directory holding it (removed on drop).
    pub dir: tempfile::TempDir,
    /// The setuid binary.
    pub path: PathBuf,
}

/// Install the shim setuid root into a fresh temp directory under /tmp.
pub fn install_shim() -> Result<InstalledShim> {
    let built = built_shim()?;
    let dir = tempfile::Builder::new()
        .prefix("locald-shim-bin-")
        .tempdir_in("/tmp")?;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
    let path = dir.path().join("locald-shim");
    fs::copy(&built, &path)?;
    std::os::unix::fs::chown(&path, Some(0), Some(0))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o4755))?;
    Ok(InstalledShim { dir, path })
}

/// An unprivileged user made for the tests.
#[derive(Clone, Debug)]
pub struct TestUser {
    /// Login name.
    pub name: String,
    /// Uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// First id of its subuid range (the subgid range starts at the same id).
    pub sub_start: u32,
    /// Size of its subuid/subgid range.
    pub sub_count: u32,
}

static USERS: Mutex<()> = Mutex::new(());

fn lookup(name: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

fn sub_range(file: &str, name: &str) -> Option<(u32, u32)> {
    let s = fs::read_to_string(file).ok()?;
    s.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() == 3 && f[0] == name).then(|| Some((f[1].parse().ok()?, f[2].parse().ok()?)))?
    })
}

/// Create (or reuse) the user `name` with a 65536-id subuid and subgid range.
/// Idempotent: an existing user and existing ranges are kept.
pub fn test_user(name: &str) -> Result<TestUser> {
    let _g = USERS.lock().unwrap_or_else(|e| e.into_inner());
    if lookup(name).is_none() {
        let out = Command::new("useradd")
            .args([
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--user-group",
                name,
            ])
            .output()?;
        if !out.status.success() && lookup(name).is_none() {
            bail!("useradd {name}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    let (uid, gid) = lookup(name).context("user missing after useradd")?;
    // useradd may already have allocated ranges (SUB_UID_MIN in login.defs).
    let range = match (
        sub_range("/etc/subuid", name),
        sub_range("/etc/subgid", name),
    ) {
        (Some(u), Some(g)) if u == g => u,
        (u, g) => {
            // Pick a fresh range above every existing one in both files.
            let top = |file: &str| -> u64 {
                fs::read_to_string(file)
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| {
                        let f: Vec<&str> = l.split(':').collect();
                        let s: u64 = f.get(1)?.parse().ok()?;
                        let c: u64 = f.get(2)?.parse().ok()?;
                        Some(s + c)
                    })
                    .max()
                    .unwrap_or(100_000)
            };
            let start = top("/etc/subuid").max(top("/etc/subgid")).max(100_000) as u32;
            for (file, have) in [("/etc/subuid", u), ("/etc/subgid", g)] {
                if have.is_some() {
                    // Drop the mismatched line; keep the files consistent.
                    let s = fs::read_to_string(file)?;
                    let kept: String = s
                        .lines()
                        .filter(|l| !l.starts_with(&format!("{name}:")))
                        .map(|l| format!("{l}\n"))
                        .collect();
                    fs::write(file, kept)?;
                }
                let mut s = fs::read_to_string(file).unwrap_or_default();
                if !s.is_empty() && !s.ends_with('\n') {
                    s.push('\n');
                }
                s.push_str(&format!("{name}:{start}:65536\n"));
                fs::write(file, s)?;
            }
            (start, 65536)
        }
    };
    Ok(TestUser {
        name: name.to_string(),
        uid,
        gid,
        sub_start: range.0,
        sub_count: range.1,
    })
}

/// The two users the tests run as: the main caller and an "other user".
pub fn users() -> Result<(TestUser, TestUser)> {
    Ok((test_user("locald-shim-t1")?, test_user("locald-shim-t2")?))
}

/// A bundle directory owned by a test user, with a busybox-static rootfs
/// and an editable config.
pub struct Bundle {
    /// Temp directory holding the bundle (removed on drop).
    pub tmp: tempfile::TempDir,
    /// The bundle directory.
    pub dir: PathBuf,
    /// The config to write as `config.json`.
    pub config: Value,
    owner: (u32, u32),
}

const APPLETS: &[&str] = &[
    "sh", "id", "echo", "cat", "sleep", "ls", "env", "touch", "stat", "test", "true", "false",
];

/// Make a rootfs directory with busybox and the applets the tests use, owned
/// by `owner`, containing `/marker` with `marker` in it.
pub fn make_rootfs(dir: &Path, owner: (u32, u32), marker: &str) -> Result<()> {
    fs::create_dir_all(dir.join("bin"))?;
    fs::copy("/bin/busybox", dir.join("bin/busybox"))?;
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(a))?;
    }
    for d in ["proc", "dev", "tmp", "out", "etc"] {
        fs::create_dir_all(dir.join(d))?;
    }
    fs::write(dir.join("marker"), marker)?;
    chown_tree(dir, owner)
}

/// `chown -hR`.
pub fn chown_tree(p: &Path, (uid, gid): (u32, u32)) -> Result<()> {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))?;
    if fs::symlink_metadata(p)?.is_dir() {
        for e in fs::read_dir(p)? {
            chown_tree(&e?.path(), (uid, gid))?;
        }
    }
    Ok(())
}

/// A valid config for `user`: user namespace mapping their uid to 0 and
/// their subuid range to 1.., fresh pid/ipc/uts/mount/network namespaces.
pub fn base_config(user: &TestUser, args: &[&str]) -> Value {
    let caps = json!([
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FOWNER",
        "CAP_KILL",
        "CAP_SETUID",
        "CAP_SETGID",
        "CAP_NET_BIND_SERVICE"
    ]);
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin", "HOME=/"],
            "cwd": "/",
            "noNewPrivileges": true,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "shim-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}
        ],
        "linux": {
            "uidMappings": [
                {"containerID": 0, "hostID": user.uid, "size": 1},
                {"containerID": 1, "hostID": user.sub_start, "size": user.sub_count}
            ],
            "gidMappings": [
                {"containerID": 0, "hostID": user.gid, "size": 1},
                {"containerID": 1, "hostID": user.sub_start, "size": user.sub_count}
            ],
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                {"type": "user"}, {"type": "network"}
            ],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

impl Bundle {
    /// A bundle in a fresh temp dir for `user` running `args`.
    pub fn new(user: &TestUser, args: &[&str]) -> Result<Self> {
        let tmp = tempfile::Builder::new()
            .prefix("locald-shim-bundle-")
            .tempdir_in("/tmp")?;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755))?;
        let dir = tmp.path().join("bundle");
        fs::create_dir(&dir)?;
        let owner = (user.uid, user.gid);
        make_rootfs(&dir.join("rootfs"), owner, "good")?;
        let b = Self {
            tmp,
            dir,
            config: base_config(user, args),
            owner,
        };
        b.write()?;
        Ok(b)
    }

    /// Write `config` to `config.json`, owned by the bundle's user.
    pub fn write(&self) -> Result<()> {
        self.write_config_to(&self.dir.join("config.json"), &self.config)
    }

    /// Write a config to any path, owned by the bundle's user.
    pub fn write_config_to(&self, path: &Path, config: &Value) -> Result<()> {
        fs::write(path, serde_json::to_vec_pretty(config)?)?;
        std::os::unix::fs::lchown(path, Some(self.owner.0), Some(self.owner.1))?;
        chown_tree(&self.dir, self.owner)
    }

    /// A directory in the bundle's temp dir owned by the bundle's user.
    pub fn user_dir(&self, name: &str) -> Result<PathBuf> {
        let p = self.tmp.path().join(name);
        fs::create_dir_all(&p)?;
        chown_tree(&p, self.owner)?;
        Ok(p)
    }
}

/// A shim command that runs as `user` (real uid/gid the user's, no
/// supplementary groups) with a minimal environment.
pub fn shim_as(shim: &Path, user: &TestUser, args: &[&str]) -> Command {
    let mut cmd = Command::new(shim);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .current_dir("/")
        .stdin(Stdio::null())
        .uid(user.uid)
        .gid(user.gid);
    cmd
}

/// Retry `op` while exec fails with ETXTBSY: another test thread may have
/// forked while a freshly copied binary was still open for writing, and
/// that child holds the write fd until it execs.
fn retry_busy<T>(mut op: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    let mut tries = 0;
    loop {
        match op() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            r => return r,
        }
    }
}

/// `cmd.spawn()`, retried on ETXTBSY.
pub fn spawn(cmd: &mut Command) -> std::io::Result<std::process::Child> {
    retry_busy(|| cmd.spawn())
}

/// `cmd.output()`, retried on ETXTBSY.
pub fn output(cmd: &mut Command) -> std::io::Result<Output> {
    retry_busy(|| cmd.output())
}

/// Run the shim as `user` and collect its output.
pub fn run_as(shim: &Path, user: &TestUser, args: &[&str]) -> Result<Output> {
    Ok(output(&mut shim_as(shim, user, args))?)
}

/// Text of a process's stdout and stderr, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Everything the shim or runc could leave behind for `id` of `uid`.
pub fn leftovers(uid: u32, id: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let base = Path::new("/run/locald-shim").join(uid.to_string());
    for p in [base.join("runc").join(id), base.join("bundles").join(id)] {
        if fs::symlink_metadata(&p).is_ok() {
            found.push(p);
        }
    }
    if let Ok(ctrls) = fs::read_dir("/sys/fs/cgroup") {
        for c in ctrls.flatten() {
            let p = c.path().join(format!("locald-shim/u{uid}/{id}"));
            if p.exists() {
                found.push(p);
            }
        }
    }
    found
}

/// Remove cgroups runc may leave behind on failure paths (depth-first).
pub fn remove_cgroups(uid: u32, id: &str) {
    if let Ok(ctrls) = fs::read_dir("/sys/fs/cgroup") {
        for c in ctrls.flatten() {
            let _ = fs::remove_dir(c.path().join(format!("locald-shim/u{uid}/{id}")));
        }
    }
}

/// A unique container id for one test.
pub fn unique_id(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Poll `state` as `user` until the container reports `status`.
pub fn wait_for_status(
    shim: &Path,
    user: &TestUser,
    id: &str,
    status: &str,
    timeout: Duration,
) -> Result<Value> {
    let start = Instant::now();
    loop {
        let out = run_as(shim, user, &["state", "--id", id])?;
        if out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout)?;
            if v["status"] == status {
                return Ok(v);
            }
        }
        if start.elapsed() > timeout {
            bail!("container {id} never reached {status}: {}", describe(&out));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Owner uid of a host process (from `/proc/PID/status`, real uid).
pub fn host_uid_of(pid: u64) -> Result<u32> {
    let s = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = s
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .context("no Uid line")?;
    line.split_whitespace()
        .nth(1)
        .context("short Uid line")?
        .parse()
        .context("bad uid")
}

/// Owner uid of a path.
pub fn owner_of(p: &Path) -> Result<u32> {
    Ok(fs::metadata(p)?.uid())
}
