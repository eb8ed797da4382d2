//! The command line: hand-written parsing (no dependency) and one function
//! per command. `main.rs` only calls [`main`].

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::bundle::{self, StateDirs};
use crate::caller;
use crate::error::ShimError;
use crate::harden::{self, Mode};
use crate::id::ContainerId;
use crate::policy::{self, Caller};
use crate::runc::{self, Runc, ShimConf};
use crate::sys;

/// Exit status for the shim's own failures and refusals (as `docker run`).
pub const EXIT_SHIM_ERROR: u8 = 125;

const USAGE: &str = "usage:
  locald-shim run --bundle DIR --id ID
  locald-shim kill --id ID [--signal SIG]
  locald-shim delete --id ID [--force]
  locald-shim state --id ID
  locald-shim exec --id ID -- PROGRAM [ARG...]
  locald-shim list
  locald-shim self-check
  locald-shim --version";

/// A parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cmd {
    /// Run a bundle in the foreground.
    Run {
        /// The caller's bundle directory.
        bundle: PathBuf,
        /// The container id.
        id: ContainerId,
    },
    /// Send a signal.
    Kill {
        /// The container id.
        id: ContainerId,
        /// Signal name without `SIG`, e.g. `TERM`.
        signal: String,
    },
    /// Delete a container and its staging directory.
    Delete {
        /// The container id.
        id: ContainerId,
        /// Kill it first if it is running.
        force: bool,
    },
    /// Run a program inside a running container (a health probe), with
    /// the container's own process settings; its exit code is the shim's.
    Exec {
        /// The container id.
        id: ContainerId,
        /// Program and arguments, as the container sees them.
        args: Vec<String>,
    },
    /// Print runc's state JSON.
    State {
        /// The container id.
        id: ContainerId,
    },
    /// Print runc's list of the caller's containers as JSON.
    List,
    /// Report the installation's health.
    SelfCheck,
    /// Print the version.
    Version,
    /// Print usage.
    Help,
}

/// Signals `kill` accepts: the ones that make sense for a service.
const SIGNALS: &[&str] = &[
    "TERM", "KILL", "INT", "HUP", "QUIT", "USR1", "USR2", "STOP", "CONT", "WINCH",
];

/// Parse arguments (without argv\[0\]).
pub fn parse(args: Vec<OsString>) -> Result<Cmd, ShimError> {
    let mut it = args.into_iter();
    let Some(cmd) = it.next() else {
        return Err(usage("no command"));
    };
    let cmd = cmd
        .into_string()
        .map_err(|_| usage("command is not UTF-8"))?;
    let opts = parse_options(it)?;
    if opts.exec_args.is_some() && cmd != "exec" {
        return Err(usage("`--` is only for exec"));
    }
    command(&cmd, opts)
}

/// A usage error: the message followed by the usage text, so that a wrong
/// command line always shows what a right one looks like.
fn usage(m: &str) -> ShimError {
    ShimError::Usage(format!("{m}\n{USAGE}"))
}

/// The options of a command line, each seen at most once, before they are
/// matched against what the command accepts.
#[derive(Default)]
struct Opts {
    bundle: Option<PathBuf>,
    id: Option<ContainerId>,
    signal: Option<String>,
    force: bool,
    /// Everything after `--`, if there was a `--`.
    exec_args: Option<Vec<String>>,
}

/// Read the options after the command; an unknown or repeated option is an
/// error, so nothing the shim does not understand is silently ignored.
fn parse_options(mut it: std::vec::IntoIter<OsString>) -> Result<Opts, ShimError> {
    let mut opts = Opts::default();
    while let Some(a) = it.next() {
        let a = a.into_string().map_err(|_| usage("option is not UTF-8"))?;
        if a == "--" {
            // Everything after `--` is the program to exec and its arguments.
            let rest = it
                .by_ref()
                .map(|s| s.into_string().map_err(|_| usage("argument is not UTF-8")))
                .collect::<Result<Vec<String>, _>>()?;
            opts.exec_args = Some(rest);
            break;
        }
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(OsString::from(v))),
            _ => (a.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| usage(&format!("{name} needs a value")))
        };
        match name.as_str() {
            "--bundle" if opts.bundle.is_none() => opts.bundle = Some(PathBuf::from(value()?)),
            "--id" if opts.id.is_none() => {
                let v = value()?
                    .into_string()
                    .map_err(|_| usage("--id is not UTF-8"))?;
                opts.id = Some(ContainerId::parse(&v).map_err(|e| ShimError::Usage(e.0))?);
            }
            "--signal" if opts.signal.is_none() => {
                let v = value()?
                    .into_string()
                    .map_err(|_| usage("--signal is not UTF-8"))?;
                opts.signal = Some(parse_signal(&v)?);
            }
            "--force" if !opts.force && inline.is_none() => opts.force = true,
            _ => return Err(usage(&format!("unexpected argument {a:?}"))),
        }
    }
    Ok(opts)
}

/// Normalize a `--signal` value (`SIGTERM`, `term`, `15`…) to its name
/// without `SIG` and refuse any signal not in [`SIGNALS`].
fn parse_signal(v: &str) -> Result<String, ShimError> {
    let s = v.trim_start_matches("SIG").to_ascii_uppercase();
    let s = match s.as_str() {
        "15" => "TERM".to_string(),
        "9" => "KILL".to_string(),
        "2" => "INT".to_string(),
        "1" => "HUP".to_string(),
        _ => s,
    };
    if !SIGNALS.contains(&s.as_str()) {
        return Err(usage(&format!("signal {v:?} is not allowed")));
    }
    Ok(s)
}

/// Build the command `cmd` from its options, refusing options the command
/// does not take and requiring the ones it needs.
fn command(cmd: &str, opts: Opts) -> Result<Cmd, ShimError> {
    let Opts {
        bundle,
        id,
        signal,
        force,
        exec_args,
    } = opts;
    Ok(match cmd {
        "exec" => {
            only(bundle.is_none() && signal.is_none() && !force)?;
            let args = exec_program(exec_args)?;
            Cmd::Exec {
                id: need_id(id)?,
                args,
            }
        }
        "run" => {
            only(signal.is_none() && !force)?;
            Cmd::Run {
                bundle: bundle.ok_or_else(|| usage("--bundle is required"))?,
                id: need_id(id)?,
            }
        }
        "kill" => {
            only(bundle.is_none() && !force)?;
            Cmd::Kill {
                id: need_id(id)?,
                signal: signal.unwrap_or_else(|| "TERM".into()),
            }
        }
        "delete" => {
            only(bundle.is_none() && signal.is_none())?;
            Cmd::Delete {
                id: need_id(id)?,
                force,
            }
        }
        "state" => {
            only(bundle.is_none() && signal.is_none() && !force)?;
            Cmd::State { id: need_id(id)? }
        }
        c => {
            only(bundle.is_none() && signal.is_none() && !force && id.is_none())?;
            match c {
                "list" => Cmd::List,
                "self-check" => Cmd::SelfCheck,
                "--version" | "version" => Cmd::Version,
                "--help" | "-h" | "help" => Cmd::Help,
                _ => return Err(usage(&format!("unknown command {c:?}"))),
            }
        }
    })
}

/// Refuse an option the command does not take (`ok` is false).
fn only(ok: bool) -> Result<(), ShimError> {
    if ok {
        Ok(())
    } else {
        Err(usage("option not valid here"))
    }
}

/// The `--id` every per-container command needs.
fn need_id(id: Option<ContainerId>) -> Result<ContainerId, ShimError> {
    id.ok_or_else(|| usage("--id is required"))
}

/// The program and arguments after `--` for `exec`; a program starting with
/// `-` is refused because runc would read it as one of its own options.
fn exec_program(exec_args: Option<Vec<String>>) -> Result<Vec<String>, ShimError> {
    let args = exec_args.ok_or_else(|| usage("exec needs `-- PROGRAM [ARG...]`"))?;
    match args.first() {
        None => return Err(usage("exec needs a program after `--`")),
        // runc would read a leading dash as one of its own options.
        Some(p) if p.starts_with('-') => return Err(usage("the program must not start with '-'")),
        Some(_) => {}
    }
    Ok(args)
}

/// The shim's entry point: harden, parse, run.
pub fn main() -> ExitCode {
    // Hardening comes before anything reads arguments or the environment.
    let mode = match harden::harden() {
        Ok(m) => m,
        Err(e) => return fail(&e),
    };
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match parse(args).and_then(|cmd| dispatch(mode, cmd)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(&e),
    }
}

fn fail(e: &ShimError) -> ExitCode {
    let mut err = std::io::stderr().lock();
    for line in e.to_string().lines() {
        let _ = writeln!(err, "locald-shim: {line}");
    }
    ExitCode::from(EXIT_SHIM_ERROR)
}

fn dispatch(mode: Mode, cmd: Cmd) -> Result<u8, ShimError> {
    match cmd {
        Cmd::Version => {
            println!("locald-shim {}", env!("CARGO_PKG_VERSION"));
            return Ok(0);
        }
        Cmd::Help => {
            println!("{USAGE}");
            return Ok(0);
        }
        Cmd::SelfCheck => return self_check(mode),
        _ => {}
    }
    let (uid, gid) = match mode {
        Mode::Setuid { uid, gid } => (uid, gid),
        Mode::Root => (0, 0),
        Mode::Unprivileged { .. } => return Err(ShimError::NotSetuid),
    };
    let dirs = StateDirs::for_uid(uid);
    dirs.ensure()?;
    let runc = Runc {
        path: runc::check_runc(&ShimConf::load()?.runc)?,
        root: dirs.runc_root.clone(),
    };
    match cmd {
        Cmd::Run { bundle, id } => run(&dirs, &runc, &caller::gather(uid, gid)?, &bundle, &id),
        Cmd::Kill { id, signal } => {
            existing(&dirs, &id, uid)?;
            runc.simple(&["kill", id.as_str(), &signal])
        }
        Cmd::State { id } => {
            existing(&dirs, &id, uid)?;
            runc.simple(&["state", id.as_str()])
        }
        Cmd::Exec { id, args } => {
            // Only into the caller's own container, and only with the
            // process settings it was validated with (no runc options pass).
            existing(&dirs, &id, uid)?;
            let mut a: Vec<&str> = vec!["exec", id.as_str()];
            a.extend(args.iter().map(String::as_str));
            runc.simple(&a)
        }
        Cmd::Delete { id, force } => {
            let staging = dirs.bundle(&id);
            let has_staging = std::fs::symlink_metadata(&staging).is_ok();
            if !dirs.runc_has(&id) && !has_staging {
                return Err(ShimError::NoSuchContainer {
                    id: id.to_string(),
                    uid,
                });
            }
            if dirs.runc_has(&id) {
                let mut args = vec!["delete"];
                if force {
                    args.push("--force");
                }
                args.push(id.as_str());
                let code = runc.simple(&args)?;
                if code != 0 {
                    return Ok(code);
                }
            }
            bundle::remove_staging(&staging)?;
            Ok(0)
        }
        Cmd::List => runc.simple(&["list", "--format", "json"]),
        Cmd::Version | Cmd::Help | Cmd::SelfCheck => Ok(0),
    }
}

/// Refuse before runc sees an id that has no state under this caller's root,
/// so the message names the rule rather than runc's internals.
fn existing(dirs: &StateDirs, id: &ContainerId, uid: u32) -> Result<(), ShimError> {
    if dirs.runc_has(id) {
        Ok(())
    } else {
        Err(ShimError::NoSuchContainer {
            id: id.to_string(),
            uid,
        })
    }
}

/// `run`: read and validate as the caller, and only then create anything.
fn run(
    dirs: &StateDirs,
    runc: &Runc,
    caller: &Caller,
    bundle_path: &std::path::Path,
    id: &ContainerId,
) -> Result<u8, ShimError> {
    let staging = dirs.bundle(id);
    if dirs.runc_has(id) || std::fs::symlink_metadata(&staging).is_ok() {
        return Err(ShimError::Exists(id.to_string()));
    }
    // A private mount namespace before opening anything of the caller's: a
    // bind mount's source must belong to the namespace it is mounted in (an
    // fd opened before unshare does not). It changes nothing on the host and
    // goes away with the shim and runc.
    sys::unshare_private_mounts()
        .map_err(ShimError::io("unshare mount namespace for", &staging))?;
    let caller_bundle = bundle::read_bundle(bundle_path, caller)?;
    let plan = policy::validate_bytes(&caller_bundle.config, caller).map_err(ShimError::Refused)?;
    let rootfs = bundle::open_rootfs(&caller_bundle, &plan.rootfs, caller)?;
    let binds = bundle::open_binds(&plan.binds, caller)?;

    // Everything checked: from here on the shim acts, and undoes on failure.
    runc::block_forwarded_signals();
    match std::fs::create_dir(&staging) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(ShimError::Exists(id.to_string()))
        }
        Err(e) => return Err(ShimError::io("create directory", &staging)(e)),
    }
    let result = (|| {
        bundle::ensure_root_dir(&staging, 0o711)?;
        let staged = bundle::stage(&staging, &rootfs, &binds)?;
        let spec = policy::finalize(
            &plan,
            &staged.rootfs,
            &staged.binds,
            &policy::cgroups_path(caller.uid, id.as_str()),
        );
        bundle::write_config(&staging, &spec)?;
        drop(rootfs);
        drop(binds);
        runc.run_foreground(&staging, id.as_str())
    })();
    let cleaned = bundle::remove_staging(&staging);
    if !dirs.runc_has(id) {
        // runc leaves empty cgroups behind on some failure paths.
        remove_empty_cgroups(&policy::cgroups_path(caller.uid, id.as_str()));
    }
    let code = result?;
    cleaned?;
    Ok(code)
}

/// `rmdir` (never recursive: only an empty cgroup goes) the container's
/// cgroup in every hierarchy under `/sys/fs/cgroup`.
fn remove_empty_cgroups(cgroup: &std::path::Path) {
    let rel = cgroup.strip_prefix("/").unwrap_or(cgroup);
    let root = std::path::Path::new("/sys/fs/cgroup");
    let _ = std::fs::remove_dir(root.join(rel));
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            let _ = std::fs::remove_dir(e.path().join(rel));
        }
    }
}

fn self_check(mode: Mode) -> Result<u8, ShimError> {
    let mut ok = true;
    let (uid, gid) = match mode {
        Mode::Setuid { uid, gid } => {
            println!("setuid: yes (caller uid {uid})");
            (uid, gid)
        }
        Mode::Root => {
            println!("setuid: no, running as root");
            (0, 0)
        }
        Mode::Unprivileged { uid } => {
            println!(
                "setuid: NO - install owned by root with mode 4755 on a filesystem not \
                 mounted nosuid"
            );
            ok = false;
            (uid, sys::getresgid().0)
        }
    };
    match ShimConf::load().and_then(|c| runc::check_runc(&c.runc)) {
        Ok(p) => {
            let r = Runc {
                path: p.clone(),
                root: StateDirs::for_uid(uid).runc_root,
            };
            match r.version() {
                Ok(v) => println!("runc: {} ({v})", p.display()),
                Err(e) => {
                    ok = false;
                    println!("runc: {} (cannot run: {e})", p.display())
                }
            }
        }
        Err(e) => {
            ok = false;
            println!("runc: NOT USABLE - {e}");
        }
    }
    match caller::gather(uid, gid) {
        Ok(c) => {
            let fmt = |r: &[policy::IdRange]| {
                if r.is_empty() {
                    "none".to_string()
                } else {
                    r.iter()
                        .map(|r| format!("{}+{}", r.start, r.count))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            };
            println!("subuid: {}", fmt(&c.subuids));
            println!("subgid: {}", fmt(&c.subgids));
        }
        Err(e) => {
            ok = false;
            println!("subuid: cannot read ({e})");
        }
    }
    println!("cgroup: {}", cgroup_mode());
    println!("state root: {}", StateDirs::for_uid(uid).user.display());
    Ok(if ok { 0 } else { 1 })
}

fn cgroup_mode() -> &'static str {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    // f_type's width differs between architectures.
    #[allow(clippy::unnecessary_cast)]
    let fs_type = |p: &str| {
        let c = std::ffi::CString::new(p).ok()?;
        let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
        // SAFETY: valid C string and out-pointer.
        (unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) } == 0)
            // SAFETY: statfs succeeded.
            .then(|| unsafe { st.assume_init() }.f_type as i64)
    };
    if fs_type("/sys/fs/cgroup") == Some(CGROUP2_SUPER_MAGIC) {
        "v2 (unified)"
    } else if fs_type("/sys/fs/cgroup/unified") == Some(CGROUP2_SUPER_MAGIC) {
        "v1 hybrid (cgroup2 at /sys/fs/cgroup/unified)"
    } else {
        "v1 (legacy)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(a: &[&str]) -> Result<Cmd, ShimError> {
        parse(a.iter().map(OsString::from).collect())
    }

    #[test]
    fn parses_commands() {
        assert!(matches!(
            p(&["run", "--bundle", "/b", "--id", "x"]).unwrap(),
            Cmd::Run { .. }
        ));
        assert!(matches!(
            p(&["kill", "--id=x", "--signal", "SIGKILL"]).unwrap(),
            Cmd::Kill { signal, .. } if signal == "KILL"
        ));
        assert!(matches!(
            p(&["delete", "--id", "x", "--force"]).unwrap(),
            Cmd::Delete { force: true, .. }
        ));
        assert_eq!(p(&["list"]).unwrap(), Cmd::List);
        assert_eq!(p(&["--version"]).unwrap(), Cmd::Version);
        assert_eq!(
            p(&["exec", "--id", "x", "--", "sh", "-c", "exit 3"]).unwrap(),
            Cmd::Exec {
                id: ContainerId::parse("x").unwrap(),
                args: vec!["sh".into(), "-c".into(), "exit 3".into()],
            }
        );
    }

    #[test]
    fn refuses_bad_command_lines() {
        for bad in [
            &["run", "--id", "x"][..],
            &["run", "--bundle", "/b", "--id", "../x"],
            &["kill", "--id", "x", "--signal", "SEGV"],
            &["state"],
            &["list", "--id", "x"],
            &["run", "--bundle", "/b", "--id", "x", "--id", "y"],
            &["frobnicate"],
            &["exec", "--id", "x"],
            &["exec", "--id", "x", "--"],
            &["exec", "--id", "x", "--", "--cap-add=ALL", "sh"],
            &["exec", "--", "sh"],
            &["exec", "--id", "x", "--bundle", "/b", "--", "sh"],
            &["kill", "--id", "x", "--", "sh"],
            &["exec", "--id", "x", "--user", "0", "--", "sh"],
        ] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
    }
}
