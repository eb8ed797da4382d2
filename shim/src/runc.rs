//! Finding and running runc: from a fixed, root-owned path (never `PATH`),
//! with a clean environment and clean root credentials, under the caller's
//! own `--root`.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use crate::error::ShimError;
use crate::harden::SAFE_PATH;

/// The shim's own configuration file.
pub const CONF_PATH: &str = "/etc/locald/shim.conf";

/// runc's path when `shim.conf` does not name one; set at build time with
/// `LOCALD_SHIM_RUNC=/path cargo build`.
pub const DEFAULT_RUNC: &str = match option_env!("LOCALD_SHIM_RUNC") {
    Some(p) => p,
    None => "/usr/sbin/runc",
};

/// Settings from `/etc/locald/shim.conf`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShimConf {
    /// Absolute path of runc.
    pub runc: PathBuf,
}

impl Default for ShimConf {
    fn default() -> Self {
        Self {
            runc: PathBuf::from(DEFAULT_RUNC),
        }
    }
}

impl ShimConf {
    /// Parse `key = value` lines; `#` starts a comment. Unknown keys are an
    /// error so a typo never silently falls back to a default.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut conf = Self::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(format!("line {}: expected `key = value`", n + 1));
            };
            match (k.trim(), v.trim()) {
                ("runc", p) if Path::new(p).is_absolute() => conf.runc = PathBuf::from(p),
                ("runc", p) => {
                    return Err(format!("line {}: runc path {p:?} is not absolute", n + 1))
                }
                (k, _) => return Err(format!("line {}: unknown key {k:?}", n + 1)),
            }
        }
        Ok(conf)
    }

    /// Load [`CONF_PATH`] (or the defaults if it does not exist), checking
    /// that it and its directory are root-owned and writable only by root.
    pub fn load() -> Result<Self, ShimError> {
        Self::load_from(Path::new(CONF_PATH))
    }

    /// Load a config file with the same checks (tests use a temp path).
    pub fn load_from(path: &Path) -> Result<Self, ShimError> {
        let meta = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(ShimError::io("stat", path)(e)),
        };
        let err = |message: String| ShimError::Config {
            path: path.into(),
            message,
        };
        if !meta.is_file() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
            return Err(err(
                "must be a regular file owned by root and not writable by group or others".into(),
            ));
        }
        if let Some(parent) = path.parent() {
            check_root_chain(parent).map_err(err)?;
        }
        let text = fs::read_to_string(path).map_err(ShimError::io("read", path))?;
        Self::parse(&text).map_err(err)
    }
}

/// `path` and every ancestor must be root-owned and not writable by group or
/// others, so nobody but root can change what the path names.
fn check_root_chain(path: &Path) -> Result<(), String> {
    let mut cur = Some(path);
    while let Some(p) = cur {
        let m = fs::symlink_metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        if m.uid() != 0 || m.mode() & 0o022 != 0 {
            return Err(format!(
                "{} must be owned by root and not writable by group or others",
                p.display()
            ));
        }
        cur = p.parent();
    }
    Ok(())
}

/// Resolve and check the runc binary: canonical path, regular executable
/// file, root-owned chain.
pub fn check_runc(path: &Path) -> Result<PathBuf, ShimError> {
    let unsafe_ = |message: String| ShimError::Unsafe {
        path: path.into(),
        message,
    };
    if !path.is_absolute() {
        return Err(unsafe_("runc path must be absolute".into()));
    }
    let real = fs::canonicalize(path).map_err(ShimError::io("resolve runc", path))?;
    let m = fs::metadata(&real).map_err(ShimError::io("stat", &real))?;
    if !m.is_file() || m.mode() & 0o111 == 0 {
        return Err(unsafe_("runc is not an executable regular file".into()));
    }
    check_root_chain(&real).map_err(unsafe_)?;
    Ok(real)
}

/// How to invoke runc for one caller.
#[derive(Clone, Debug)]
pub struct Runc {
    /// The checked runc binary.
    pub path: PathBuf,
    /// The caller's state root (`--root`).
    pub root: PathBuf,
}

impl Runc {
    /// A runc command with `--root`, an environment of `PATH` only, and full
    /// root credentials (real, effective, saved; no supplementary groups) so
    /// the caller cannot signal or otherwise reach it.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.env_clear()
            .env("PATH", SAFE_PATH)
            .arg("--root")
            .arg(&self.root)
            .args(args);
        // SAFETY: only async-signal-safe syscalls run between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setresgid(0, 0, 0) != 0
                    || libc::setresuid(0, 0, 0) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Run a short runc command with the shim's stdio; returns its exit code.
    pub fn simple(&self, args: &[&str]) -> Result<u8, ShimError> {
        let status = self
            .command(args)
            .stdin(Stdio::null())
            .status()
            .map_err(ShimError::io("run", &self.path))?;
        Ok(exit_code(status))
    }

    /// Run `runc run` in the foreground, forwarding the caller's signals to
    /// it (runc forwards them to the container), and return the exit code.
    pub fn run_foreground(&self, bundle: &Path, id: &str) -> Result<u8, ShimError> {
        let set = block_forwarded_signals();
        let bundle_s = bundle.to_string_lossy();
        let mut child = self
            .command(&["run", "--bundle", &bundle_s, id])
            .spawn()
            .map_err(ShimError::io("run", &self.path))?;
        let pid = child.id() as libc::pid_t;
        loop {
            if let Some(status) = child
                .try_wait()
                .map_err(ShimError::io("wait for", &self.path))?
            {
                return Ok(exit_code(status));
            }
            let timeout = libc::timespec {
                tv_sec: 1,
                tv_nsec: 0,
            };
            // SAFETY: valid set and timeout; a null siginfo is allowed.
            let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout) };
            if sig > 0 && sig != libc::SIGCHLD {
                // SAFETY: signalling our own child, which has not been reaped.
                unsafe { libc::kill(pid, sig) };
            }
        }
    }

    /// runc's version line, for `self-check`.
    pub fn version(&self) -> Result<String, ShimError> {
        let out = Command::new(&self.path)
            .env_clear()
            .env("PATH", SAFE_PATH)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(ShimError::io("run", &self.path))?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_string())
    }
}

/// The signals `run` forwards to runc.
const FORWARDED: [libc::c_int; 7] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
];

/// Block the forwarded signals and SIGCHLD and return the set, to be waited
/// for synchronously with `sigtimedwait`: no handlers, no races. Called as
/// soon as `run` starts acting, so a signal during staging is held and then
/// forwarded instead of killing the shim half-way. std clears the mask in
/// the child before exec, so runc starts with nothing blocked.
pub fn block_forwarded_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local set; the shim is single-threaded.
    unsafe {
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(set.as_mut_ptr());
        for s in FORWARDED.iter().chain([&libc::SIGCHLD]) {
            libc::sigaddset(set.as_mut_ptr(), *s);
        }
        let set = set.assume_init();
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// A process's exit status as a shell would report it.
pub fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(s)) => 128u8.saturating_add(s as u8),
        _ => 125,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn conf_file_must_be_root_owned_in_a_root_only_chain() {
        use std::os::unix::fs::PermissionsExt;
        // /tmp is world-writable, so nothing under it is trusted.
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("shim.conf");
        fs::write(&f, "runc = /usr/sbin/runc\n").unwrap();
        assert!(ShimConf::load_from(&f).is_err());
        // A missing file means the compiled-in default.
        assert_eq!(
            ShimConf::load_from(&tmp.path().join("absent")).unwrap(),
            ShimConf::default()
        );
        if !is_root() || !Path::new("/run").is_dir() {
            return;
        }
        let dir = tempfile::tempdir_in("/run").unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let f = dir.path().join("shim.conf");
        fs::write(&f, "runc = /opt/runc\n").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            ShimConf::load_from(&f).unwrap().runc,
            PathBuf::from("/opt/runc")
        );
        fs::set_permissions(&f, fs::Permissions::from_mode(0o664)).unwrap();
        assert!(ShimConf::load_from(&f).is_err(), "group-writable accepted");
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::chown(&f, Some(1), None).unwrap();
        assert!(ShimConf::load_from(&f).is_err(), "non-root owner accepted");
    }

    #[test]
    fn runc_path_checks() {
        assert!(check_runc(Path::new("runc")).is_err());
        let tmp = tempfile::tempdir().unwrap();
        let fake = tmp.path().join("runc");
        fs::write(&fake, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(
            check_runc(&fake).is_err(),
            "runc under world-writable /tmp accepted"
        );
        if Path::new("/usr/sbin/runc").exists() {
            assert!(check_runc(Path::new("/usr/sbin/runc")).is_ok());
        }
    }

    #[test]
    fn conf_parses_and_refuses_junk() {
        assert_eq!(ShimConf::parse("").unwrap(), ShimConf::default());
        assert_eq!(
            ShimConf::parse("# c\nrunc = /opt/runc # x\n").unwrap().runc,
            PathBuf::from("/opt/runc")
        );
        assert!(ShimConf::parse("runc = runc").is_err());
        assert!(ShimConf::parse("rnuc = /opt/runc").is_err());
        assert!(ShimConf::parse("garbage").is_err());
    }
}
