//! `locald internal-unit-exec`: the first process of a service's systemd
//! unit. It gives the service's output locald's journal fields and then
//! becomes the service.
//!
//! journald applies a unit's `LogExtraFields=` only to units of the system
//! manager: it reads them from `/run/systemd/units/`, where a user manager
//! cannot write. A user unit's stdout stream therefore carries the unit
//! (`_SYSTEMD_USER_UNIT`) but not `LOCALD_PROJECT`, `LOCALD_SERVICE`,
//! `LOCALD_PHASE` or `LOCALD_STREAM`, and stdout and stderr arrive as one
//! stream. So the unit starts here instead:
//!
//! 1. two pipes are made, for the service's stdout and stderr;
//! 2. a forwarder is forked off twice (so it is nobody's child but the
//!    manager's, the unit's reaper; the service never sees it in `wait`). It
//!    stays in the unit's cgroup, so its entries still carry the unit and its
//!    CPU time is the service's. It reads both pipes line by line with the
//!    daemon's own reader ([`pump`]) and writes each line over journald's
//!    native protocol with the same fields locald writes for a host service
//!    ([`JournalSink`]). It ignores `SIGTERM`, `SIGINT` and `SIGHUP`: a
//!    stopping unit's last lines are still written, and it ends when the
//!    pipes close (or with the unit's `SIGKILL`);
//! 3. this process points its stdout and stderr at the pipes and `exec`s the
//!    service, keeping its pid: the unit's `MainPID` is the service, so
//!    `sd_notify` from it (`NotifyAccess=main`) and the exit status are the
//!    service's own.
//!
//! The daemon copies nothing: a flood costs the service's unit the
//! forwarder's CPU, not locald.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::signal::{signal, SigHandler, Signal};
use nix::unistd::{dup2, fork, pipe2, ForkResult};

use crate::event::{Phase, Stream};
use crate::journal::{JournalConfig, JournalSink, Priority, ServiceLogOptions};
use crate::output::LogSink;
use locald_core::pipe::{pump, PipeOwner};

/// The hidden subcommand of `locald` that runs this.
pub const SUBCOMMAND: &str = "internal-unit-exec";

/// Who the output belongs to and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitExec {
    /// Project name (`LOCALD_PROJECT`).
    pub project: String,
    /// Service name (`LOCALD_SERVICE`, and the identifier).
    pub service: String,
    /// Build or run (`LOCALD_PHASE`).
    pub phase: Phase,
    /// `LOCALD_BUILD_ID` of a build's lines.
    pub build_id: Option<String>,
    /// Priority of stderr lines without a `<N>` prefix.
    pub stderr_priority: Priority,
    /// journald's native socket.
    pub socket: PathBuf,
    /// `LOCALD_IMAGE`: the digest of the image a container service runs.
    pub image: Option<String>,
    /// The service's `argv[0]`, when it is not the program's path (`sh`
    /// for `/usr/bin/sh`, as a shell would pass it).
    pub arg0: Option<String>,
    /// The service: program (an absolute path) and arguments.
    pub argv: Vec<OsString>,
}

impl UnitExec {
    /// The arguments after `locald` that run this (see [`UnitExec::parse`]).
    pub fn to_args(&self) -> Vec<String> {
        let mut v = vec![
            SUBCOMMAND.to_owned(),
            "--project".into(),
            self.project.clone(),
            "--service".into(),
            self.service.clone(),
            "--phase".into(),
            self.phase.as_str().into(),
            "--stderr-priority".into(),
            self.stderr_priority.value().to_string(),
            "--socket".into(),
            self.socket.to_string_lossy().into_owned(),
        ];
        if let Some(id) = &self.build_id {
            v.push("--build-id".into());
            v.push(id.clone());
        }
        if let Some(i) = &self.image {
            v.push("--image".into());
            v.push(i.clone());
        }
        if let Some(a) = &self.arg0 {
            v.push("--arg0".into());
            v.push(a.clone());
        }
        v.push("--".into());
        v.extend(self.argv.iter().map(|a| a.to_string_lossy().into_owned()));
        v
    }

    /// Parses what [`UnitExec::to_args`] made (without the subcommand),
    /// with clap, as every other command line of locald is parsed.
    pub fn parse(args: &[OsString]) -> Result<UnitExec, String> {
        use clap::Parser;
        let a = Args::try_parse_from(
            std::iter::once(OsString::from(SUBCOMMAND)).chain(args.iter().cloned()),
        )
        .map_err(|e| e.to_string().trim_end().to_owned())?;
        Ok(UnitExec {
            project: a.project,
            service: a.service,
            phase: a.phase,
            build_id: a.build_id,
            stderr_priority: a.stderr_priority,
            socket: a.socket,
            image: a.image,
            arg0: a.arg0,
            argv: a.argv,
        })
    }
}

/// The command line of `locald internal-unit-exec` (see [`UnitExec`]).
#[derive(clap::Parser)]
#[command(disable_help_flag = true, disable_version_flag = true)]
struct Args {
    #[arg(long)]
    project: String,
    #[arg(long)]
    service: String,
    #[arg(long, default_value = "run", value_parser = parse_phase)]
    phase: Phase,
    #[arg(long)]
    build_id: Option<String>,
    #[arg(long, default_value_t = Priority::INFO)]
    stderr_priority: Priority,
    #[arg(long, default_value = crate::journal::DEFAULT_SOCKET)]
    socket: PathBuf,
    #[arg(long)]
    image: Option<String>,
    #[arg(long)]
    arg0: Option<String>,
    /// The service, after `--`.
    #[arg(last = true, required = true)]
    argv: Vec<OsString>,
}

fn parse_phase(s: &str) -> Result<Phase, String> {
    match s {
        "run" => Ok(Phase::Run),
        "build" => Ok(Phase::Build),
        other => Err(format!("unknown phase {other}")),
    }
}

/// `locald internal-unit-exec …`: call from `main` while the process has one
/// thread (it forks). Returns only when the service could not be executed.
pub fn main(args: &[OsString]) -> ExitCode {
    let exec = match UnitExec::parse(args) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("locald {SUBCOMMAND}: {e}");
            return ExitCode::from(2);
        }
    };
    let pipes = pipe2(OFlag::O_CLOEXEC).and_then(|o| Ok((o, pipe2(OFlag::O_CLOEXEC)?)));
    let ((out_r, out_w), (err_r, err_w)) = match pipes {
        Ok(p) => p,
        Err(e) => {
            // Without a forwarder the output still reaches the journal,
            // only without locald's fields.
            eprintln!("locald: cannot make output pipes ({e}); output goes to the journal without locald's fields");
            return exec_service(&exec);
        }
    };
    let service_pid = std::process::id();
    // SAFETY: the process has a single thread here (main calls this before
    // anything starts a thread), so the children may do anything.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            // SAFETY: as above; this intermediate child only forks and exits.
            if let Ok(ForkResult::Child) = unsafe { fork() } {
                drop(out_w);
                drop(err_w);
                forward(&exec, service_pid, out_r, err_r);
            }
            // SAFETY: _exit is async-signal-safe and skips the parent's
            // atexit handlers and buffers, which are not this child's.
            unsafe { libc::_exit(0) }
        }
        Ok(ForkResult::Parent { child }) => {
            let _ = nix::sys::wait::waitpid(child, None);
        }
        Err(e) => {
            eprintln!("locald: cannot start the output forwarder ({e}); output goes to the journal without locald's fields");
            return exec_service(&exec);
        }
    }
    drop(out_r);
    drop(err_r);
    // dup2 leaves the new descriptors without O_CLOEXEC: the service keeps them.
    if let Err(e) = dup2(out_w.as_raw_fd(), 1).and_then(|_| dup2(err_w.as_raw_fd(), 2)) {
        eprintln!("locald: cannot redirect output to the forwarder: {e}");
    }
    drop(out_w);
    drop(err_w);
    exec_service(&exec)
}

fn exec_service(exec: &UnitExec) -> ExitCode {
    let Some((program, args)) = exec.argv.split_first() else {
        return ExitCode::from(2);
    };
    // std restores SIGPIPE's default and the signal mask for the service.
    let mut cmd = std::process::Command::new(program);
    if let Some(a) = &exec.arg0 {
        cmd.arg0(a);
    }
    let err = cmd.args(args).exec();
    eprintln!("locald: cannot run {}: {err}", program.to_string_lossy());
    ExitCode::from(127)
}

/// The forwarder: both pipes into journald until both close.
fn forward(exec: &UnitExec, service_pid: u32, out: OwnedFd, err: OwnedFd) {
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: SIG_IGN installs no handler code.
        let _ = unsafe { signal(sig, SigHandler::SigIgn) };
    }
    // Do not keep the project directory busy.
    let _ = std::env::set_current_dir("/");
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("locald: the output forwarder cannot start: {e}");
            return;
        }
    };
    rt.block_on(async {
        let journal = JournalSink::new(JournalConfig {
            socket_path: exec.socket.clone(),
            retry_interval: Duration::from_secs(1),
            ..JournalConfig::default()
        });
        journal.set_service_options(
            &exec.project,
            &exec.service,
            ServiceLogOptions {
                stderr_priority: exec.stderr_priority,
            },
        );
        let sink: Arc<dyn LogSink> = Arc::new(journal);
        // A container service's lines name the container's init, as they
        // do when locald runs the shim itself; the service here is the
        // shim. Nothing is read before runc has made it (the pipes hold
        // what comes meanwhile).
        let pid = match exec.image {
            Some(_) => super::container::wait_for_init(service_pid).await,
            None => service_pid,
        };
        let owner = PipeOwner {
            project: exec.project.as_str().into(),
            service: exec.service.as_str().into(),
            phase: exec.phase,
            pid: Some(pid),
            build_id: exec.build_id.as_deref().map(Into::into),
            image: exec.image.as_deref().map(Into::into),
        };
        let mut pumps = Vec::with_capacity(2);
        for (fd, stream) in [(out, Stream::Stdout), (err, Stream::Stderr)] {
            match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
                Ok(r) => pumps.push(tokio::spawn(pump(r, owner.clone(), stream, sink.clone()))),
                Err(e) => eprintln!("locald: cannot read the service's {stream:?}: {e}"),
            }
        }
        for p in pumps {
            let _ = p.await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_round_trip() {
        let e = UnitExec {
            project: "my shop".into(),
            service: "web".into(),
            phase: Phase::Build,
            build_id: Some("b-1".into()),
            stderr_priority: Priority::WARNING,
            socket: "/run/x/socket".into(),
            image: Some("sha256:ab".into()),
            arg0: Some("sh".into()),
            argv: vec!["/bin/sh".into(), "-c".into(), "echo -- --project".into()],
        };
        let args: Vec<OsString> = e.to_args().into_iter().skip(1).map(Into::into).collect();
        assert_eq!(UnitExec::parse(&args), Ok(e));
        assert!(UnitExec::parse(&["--project".into()]).is_err());
        assert!(UnitExec::parse(&["--project".into(), "p".into(), "--".into()]).is_err());
    }
}
