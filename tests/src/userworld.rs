//! One unprivileged user's world for end-to-end tests of containers and
//! buildpacks builds: the user, a root-owned setuid copy of the shim, and a
//! scratch tree the user owns with private runtime, data, config and home
//! directories; `locald` run as that user; `locald up` in the background.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::shim::{chown_tree, install_shim, InstalledShim, TestUser};

/// A user, the shim, and a scratch tree the user owns.
pub struct UserWorld {
    /// The test user.
    pub user: TestUser,
    /// The setuid shim `locald` is pointed at (`LOCALD_SHIM`).
    pub shim: InstalledShim,
    /// The scratch tree: `run`, `data`, `home`, `config` and projects.
    pub base: tempfile::TempDir,
}

impl UserWorld {
    /// Sets up `user` (see [`crate::shim::test_user`]) with a scratch tree
    /// named `/tmp/PREFIX…`. Preconditions are the caller's to check.
    pub fn new(user: TestUser, prefix: &str) -> Result<UserWorld> {
        let shim = install_shim()?;
        let base = tempfile::Builder::new().prefix(prefix).tempdir_in("/tmp")?;
        fs::set_permissions(base.path(), fs::Permissions::from_mode(0o755))?;
        for d in ["run", "data", "home", "config"] {
            let p = base.path().join(d);
            fs::create_dir(&p)?;
            fs::set_permissions(&p, fs::Permissions::from_mode(0o700))?;
        }
        chown_tree(base.path(), (user.uid, user.gid))?;
        Ok(UserWorld { user, shim, base })
    }

    /// Writes a file owned by the user (mode 0644).
    pub fn write(&self, path: &Path, content: &str) -> Result<()> {
        fs::write(path, content)?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o644))?;
        chown_tree(path, (self.user.uid, self.user.gid))
    }

    /// Gives `path` (and everything below it) to the user.
    pub fn give(&self, path: &Path) -> Result<()> {
        chown_tree(path, (self.user.uid, self.user.gid))
    }

    /// `locald ARGS` as the user, with its own runtime, data and config
    /// directories and the test's shim.
    pub fn locald(&self, args: &[&str]) -> Command {
        let mut c = Command::new("setpriv");
        c.args(self.locald_args(args));
        c
    }

    /// The arguments of `setpriv` that run `locald ARGS` as
    /// [`UserWorld::locald`] does, for running it under another program
    /// (a mount namespace).
    pub fn locald_args(&self, args: &[&str]) -> Vec<OsString> {
        let base = self.base.path();
        let mut v: Vec<OsString> = vec![
            format!("--reuid={}", self.user.uid).into(),
            format!("--regid={}", self.user.gid).into(),
            "--init-groups".into(),
            "env".into(),
            format!("XDG_RUNTIME_DIR={}", base.join("run").display()).into(),
            format!("XDG_DATA_HOME={}", base.join("data").display()).into(),
            format!("XDG_CONFIG_HOME={}", base.join("config").display()).into(),
            format!("HOME={}", base.join("home").display()).into(),
            format!("LOCALD_SHIM={}", self.shim.path.display()).into(),
            "NO_COLOR=1".into(),
            crate::user_bin("locald").into(),
        ];
        v.extend(args.iter().map(OsString::from));
        v
    }
}

/// `locald up DIR` in the background, its output into a file beside `DIR`.
pub struct Up {
    child: Child,
    out: PathBuf,
}

impl Up {
    /// `locald up DIR` as the world's user.
    pub fn start(w: &UserWorld, dir: &Path) -> Result<Up> {
        Up::spawn(w.locald(&["up", &dir.display().to_string()]), dir)
    }

    /// Runs `cmd` (a `locald up` of the project in `dir`), its output into
    /// a file beside `dir`.
    pub fn spawn(mut cmd: Command, dir: &Path) -> Result<Up> {
        let out = dir.with_extension("out");
        let f = fs::File::create(&out)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()?;
        Ok(Up { child, out })
    }

    /// Everything printed so far.
    pub fn text(&self) -> String {
        fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Waits until `what` was printed `n` times.
    pub fn wait_for(&self, what: &str, n: usize, timeout: Duration) -> Result<()> {
        let end = Instant::now() + timeout;
        while self.text().matches(what).count() < n {
            if Instant::now() > end {
                bail!("never saw {what:?} {n} times; output:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Ctrl-C, then waits (30 s at most) for it to exit; all output is in
    /// `stdout`.
    pub fn stop(mut self) -> Result<Output> {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT);
        let end = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > end {
                let _ = self.child.kill();
                bail!("locald up did not stop; output:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = self.child.wait()?;
        Ok(Output {
            status,
            stdout: self.text().into_bytes(),
            stderr: Vec::new(),
        })
    }

    /// SIGKILL.
    pub fn kill_hard(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
