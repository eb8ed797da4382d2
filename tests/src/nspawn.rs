//! A real systemd user manager for end-to-end tests: a Debian bookworm
//! container under `systemd-nspawn`, booted with a lingering user `dev`
//! (uid 1000) whose `systemctl --user` and session bus work.
//!
//! The root file system is made once with `debootstrap` (~45 s, ~250 MB) and
//! cached in `$LOCALD_TEST_ROOTFS` (default
//! `/var/cache/locald-tests/rootfs-bookworm-v2`; the suffix changes with what it holds); each container runs on an
//! overlay of it, so tests never change the cache. Host PID 1 need not be
//! systemd: the container gets its own host cgroups, created here and removed
//! on drop, as `tests/README.md` ("A systemd user manager") describes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The user inside the container.
pub const USER_UID: u32 = 1000;
/// Its home.
pub const HOME: &str = "/home/dev";

/// Whether this machine can run the container: root, nspawn, debootstrap,
/// and a cgroup v2 hierarchy to give the container.
pub fn available() -> Result<(), String> {
    if !nix::unistd::getuid().is_root() {
        return Err("needs root".into());
    }
    for tool in ["systemd-nspawn", "debootstrap", "nsenter", "mount"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Err(format!(
                "{tool} is missing (tests/setup-debian.sh installs systemd-container and debootstrap)"
            ));
        }
    }
    if cgroup_dirs("probe").is_empty() {
        return Err("no cgroup v2 hierarchy under /sys/fs/cgroup".into());
    }
    Ok(())
}

/// The host cgroup directories to create for a container named `name`:
/// the v1 name=systemd and v2 hierarchies on a hybrid host, the one v2
/// hierarchy on a unified host.
fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("unified").is_dir() {
        vec![
            root.join("systemd").join(name),
            root.join("unified").join(name),
        ]
    } else if root.join("cgroup.controllers").exists() {
        vec![root.join(name)]
    } else {
        Vec::new()
    }
}

/// The cached root file system, made on first use.
pub fn rootfs() -> PathBuf {
    let dir = std::env::var_os("LOCALD_TEST_ROOTFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/locald-tests/rootfs-bookworm-v2"));
    if dir.join("etc/os-release").exists() {
        return dir;
    }
    let parent = dir.parent().unwrap_or(Path::new("/")).to_owned();
    std::fs::create_dir_all(&parent).expect("rootfs cache dir");
    // One builder at a time, across test processes.
    let lock = std::fs::File::create(parent.join(".rootfs.lock")).expect("lock file");
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("lock the rootfs cache");
    if dir.join("etc/os-release").exists() {
        return dir;
    }
    let tmp = parent.join(format!(
        "{}.tmp",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("rootfs")
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let out = Command::new("debootstrap")
        .args([
            "--variant=minbase",
            // runc, uidmap and busybox for image services in units.
            "--include=systemd,systemd-sysv,dbus,dbus-user-session,libpam-systemd,procps,runc,uidmap,busybox-static",
            "bookworm",
        ])
        .arg(&tmp)
        .output()
        .expect("run debootstrap");
    assert!(
        out.status.success(),
        "debootstrap failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = |args: &[&str]| {
        let st = Command::new("chroot")
            .arg(&tmp)
            .args(args)
            .status()
            .expect("chroot");
        assert!(st.success(), "chroot {args:?} failed");
    };
    run(&["useradd", "-m", "-u", "1000", "-s", "/bin/sh", "dev"]);
    std::fs::create_dir_all(tmp.join("var/lib/systemd/linger")).expect("linger dir");
    std::fs::write(tmp.join("var/lib/systemd/linger/dev"), "").expect("linger");
    std::fs::rename(&tmp, &dir).expect("publish rootfs");
    dir
}

/// A booted container; stopped, unmounted and its cgroups removed on drop.
pub struct Container {
    work: tempfile::TempDir,
    nspawn: Child,
    cgroups: Vec<PathBuf>,
    init_pid: i32,
}

impl Container {
    /// Boots a container on an overlay of the cached rootfs; `prepare` may
    /// write into its root (the merged directory) before boot.
    pub fn boot(prepare: impl FnOnce(&Path)) -> Self {
        let lower = rootfs();
        let work = tempfile::Builder::new()
            .prefix("locald-nspawn-")
            .tempdir()
            .expect("tempdir");
        let (upper, scratch, merged) = (
            work.path().join("upper"),
            work.path().join("work"),
            work.path().join("merged"),
        );
        for d in [&upper, &scratch, &merged] {
            std::fs::create_dir_all(d).expect("overlay dirs");
        }
        let st = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                upper.display(),
                scratch.display()
            ))
            .arg(&merged)
            .status()
            .expect("mount overlay");
        assert!(st.success(), "mounting the overlay failed");
        prepare(&merged);

        let name = crate::unique("locald-e2e").replace('-', "");
        let name: String = name.chars().take(60).collect();
        let cgroups = cgroup_dirs(&format!("nspawn-{name}"));
        for c in &cgroups {
            std::fs::create_dir_all(c).expect("container cgroup");
        }
        let join: String = cgroups
            .iter()
            .map(|c| format!("echo $$ > {}/cgroup.procs; ", c.display()))
            .collect();
        let log = std::fs::File::create(work.path().join("nspawn.log")).expect("log");
        let nspawn = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{join}exec systemd-nspawn --register=no --keep-unit -q -M {name} -D {} \
                 --console=passive --system-call-filter=@keyring -b",
                merged.display()
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn systemd-nspawn");
        let mut c = Container {
            work,
            nspawn,
            cgroups,
            init_pid: 0,
        };
        let init_procs = c
            .cgroups
            .last()
            .map(|g| g.join("payload/init.scope/cgroup.procs"))
            .expect("a cgroup");
        let end = Instant::now() + Duration::from_secs(30);
        while c.init_pid == 0 {
            c.init_pid = std::fs::read_to_string(&init_procs)
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
                .unwrap_or(0);
            assert!(
                Instant::now() < end,
                "the container did not boot: {}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // The user manager and its bus come up with lingering.
        let end = Instant::now() + Duration::from_secs(30);
        while !c
            .root(&["test", "-S", "/run/user/1000/bus"])
            .status
            .success()
        {
            assert!(
                Instant::now() < end,
                "the user manager did not start: {}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    /// What nspawn printed.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.work.path().join("nspawn.log")).unwrap_or_default()
    }

    /// The daemon's pid (in the container), as systemd knows it.
    pub fn daemon_pid(&self) -> String {
        self.show("locald.service", "MainPID")
    }

    /// Waits until systemd runs a daemon other than `old`.
    pub fn wait_for_new_daemon(&self, old: &str) {
        wait_until(Duration::from_secs(20), "a new daemon", || {
            let pid = self.daemon_pid();
            pid != old && pid != "0" && !pid.is_empty()
        });
    }

    /// `kill -9` of the daemon; returns once systemd has started the next.
    pub fn kill_daemon(&self) {
        let old = self.daemon_pid();
        let k = self.root(&["kill", "-KILL", &old]);
        assert!(k.status.success(), "{k:?}");
        self.wait_for_new_daemon(&old);
    }

    /// Runs a command as root inside the container.
    pub fn root(&self, argv: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.init_pid.to_string(), "-a"])
            .args(argv)
            .output()
            .expect("nsenter")
    }

    /// Runs a shell command as the user, in their session, from `cwd`.
    /// A property of a unit of the user's manager (`systemctl --user show
    /// UNIT -p PROP --value`), trimmed; empty when there is none.
    pub fn show(&self, unit: &str, prop: &str) -> String {
        let out = self.user(
            HOME,
            &format!("systemctl --user show '{unit}' -p {prop} --value"),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub fn user(&self, cwd: &str, script: &str) -> Output {
        let uid = USER_UID.to_string();
        Command::new("nsenter")
            .args(["-t", &self.init_pid.to_string(), "-a"])
            .args([
                "setpriv",
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--init-groups",
                "env",
                &format!("HOME={HOME}"),
                "USER=dev",
                &format!("XDG_RUNTIME_DIR=/run/user/{uid}"),
                &format!("DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/{uid}/bus"),
                &format!("PATH={HOME}/.cargo/bin:/usr/bin:/bin"),
                "sh",
                "-c",
                &format!("cd {cwd} && {script}"),
            ])
            .output()
            .expect("nsenter")
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let pid = Pid::from_raw(i32::try_from(self.nspawn.id()).unwrap_or(i32::MAX));
        let _ = kill(pid, Signal::SIGTERM);
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                break;
            }
            if Instant::now() > end {
                let _ = kill(pid, Signal::SIGKILL);
                let _ = self.nspawn.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let merged = self.work.path().join("merged");
        let _ = Command::new("umount").arg("-l").arg(&merged).status();
        // Depth-first: a cgroup can only go once its children are gone,
        // and a child only once its last process has exited, which may be
        // a moment after nspawn: try again for up to 3 s.
        let end = Instant::now() + Duration::from_secs(3);
        for c in &self.cgroups {
            while c.exists() {
                let _ = Command::new("find")
                    .arg(c)
                    .args(["-depth", "-type", "d", "-exec", "rmdir", "{}", ";"])
                    .stderr(Stdio::null())
                    .status();
                if !c.exists() || Instant::now() > end {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if std::thread::panicking() {
            eprintln!("--- systemd-nspawn log ---\n{}", self.log());
        }
    }
}

/// Boots a container with a user manager (after `prepare` wrote into its
/// root) and reloads the user's units; `None`, after saying why, when this
/// machine cannot (a failure instead under `CI=true`).
pub fn boot_or_skip(prepare: impl FnOnce(&Path)) -> Option<Container> {
    if crate::require(
        available().is_ok(),
        &format!(
            "cannot boot a systemd container: {}",
            available().err().unwrap_or_default()
        ),
    ) {
        return None;
    }
    let c = Container::boot(prepare);
    let reload = c.user(HOME, "systemctl --user daemon-reload");
    assert!(reload.status.success(), "{reload:?}");
    Some(c)
}

/// Stdout and stderr of a command, as one text.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Installs locald into the container's user home at `root` as
/// docs/daemon.md says: `locald` and `locald-ctl` in `~/.cargo/bin`, the
/// user units from `systemd/` and the D-Bus activation file.
pub fn install_locald(root: &Path) {
    let home = root.join(HOME.trim_start_matches('/'));
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let copy = |from: &Path, to: &Path| {
        if let Some(d) = to.parent() {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    };
    copy(&crate::bin("locald"), &home.join(".cargo/bin/locald"));
    copy(
        &crate::bin("locald-ctl"),
        &home.join(".cargo/bin/locald-ctl"),
    );
    for unit in ["locald.service", "locald-dashboard.service"] {
        copy(
            &repo.join("systemd").join(unit),
            &home.join(".config/systemd/user").join(unit),
        );
    }
    copy(
        &repo.join("systemd/dev.locald.Locald1.service"),
        &home.join(".local/share/dbus-1/services/dev.locald.Locald1.service"),
    );
}

/// Gives the user's home in the container at `root` (and all that was
/// written into it) to the user, as their own files would be.
pub fn give_home_to_user(root: &Path) {
    let home = root.join(HOME.trim_start_matches('/'));
    let st = Command::new("chown")
        .arg("-R")
        .arg(format!("{USER_UID}:{USER_UID}"))
        .arg(&home)
        .status()
        .expect("chown");
    assert!(st.success(), "chown {}", home.display());
}

/// Polls `f` until it holds, at most `timeout`. Every 100 ms, not faster:
/// each poll of a container starts processes in it.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
