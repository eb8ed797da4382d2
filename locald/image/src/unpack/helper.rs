//! The unpack helper: a child process (`locald internal-unpack`) that runs
//! [`super::extract`] inside a new user namespace.
//!
//! A user namespace can only be entered by a single-threaded process, and
//! the daemon is not one, so the extraction runs in a freshly executed
//! `locald`. The two talk in JSON lines over the child's stdin and stdout:
//!
//! 1. parent → child: [`ToHelper::Unpack`] with the rootfs, the layers and
//!    who owns the files;
//! 2. the child `unshare(CLONE_NEWUSER)`s and answers [`FromHelper::Ready`];
//! 3. the parent runs `newuidmap`/`newgidmap` on the child's pid (the user
//!    → 0, subordinate ids → 1..), or nothing when only the user is mapped,
//!    and sends [`ToHelper::Go`];
//! 4. the child maps only itself if asked to, extracts, and answers
//!    [`FromHelper::Done`] with the stats or a typed error.
//!
//! Removing a rootfs ([`ToHelper::Remove`]) goes the same way, in a
//! namespace mapped the same way, and ends with [`FromHelper::Removed`].
//!
//! The child dies with its parent (`PR_SET_PDEATHSIG`), and the parent
//! kills and reaps the child on any early return.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};

use serde::{Deserialize, Serialize};

use super::idmap::{self, Plan};
use super::{
    extract, Layer, Op, Owners, Refusal, RootfsProblem, UnpackError, UnpackStats, HELPER_SUBCOMMAND,
};

/// How much of the helper's stderr is kept for an error message.
const STDERR_LIMIT: u64 = 16 << 10;

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    #[serde(with = "super::path_bytes")]
    rootfs: PathBuf,
    layers: Vec<Layer>,
    owners: Owners,
    sync: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct RemoveRequest {
    #[serde(with = "super::path_bytes")]
    rootfs: PathBuf,
    owners: Owners,
}

#[derive(Debug, Serialize, Deserialize)]
enum ToHelper {
    Unpack(Request),
    Remove(RemoveRequest),
    Go,
}

#[derive(Debug, Serialize, Deserialize)]
enum FromHelper {
    Ready,
    Done(Result<UnpackStats, WireError>),
    Removed(Result<(), WireError>),
}

/// An I/O error on the wire: the errno when there is one.
#[derive(Debug, Serialize, Deserialize)]
struct WireIo {
    errno: Option<i32>,
    message: String,
}

impl From<&io::Error> for WireIo {
    fn from(e: &io::Error) -> Self {
        Self {
            errno: e.raw_os_error(),
            message: e.to_string(),
        }
    }
}

impl From<WireIo> for io::Error {
    fn from(w: WireIo) -> Self {
        match w.errno {
            Some(n) => io::Error::from_raw_os_error(n),
            None => io::Error::other(w.message),
        }
    }
}

/// [`UnpackError`] on the wire.
#[derive(Debug, Serialize, Deserialize)]
enum WireError {
    Refused {
        layer: String,
        entry: String,
        reason: Refusal,
    },
    Entry {
        layer: String,
        entry: String,
        op: Op,
        source: WireIo,
    },
    Read {
        layer: String,
        #[serde(with = "super::path_bytes")]
        path: PathBuf,
        source: WireIo,
    },
    MediaType {
        layer: String,
        media_type: String,
        why: String,
    },
    Rootfs {
        #[serde(with = "super::path_bytes")]
        path: PathBuf,
        problem: RootfsProblem,
    },
    RootfsIo {
        #[serde(with = "super::path_bytes")]
        path: PathBuf,
        op: Op,
        source: WireIo,
    },
    UserNamespace {
        what: String,
        source: Option<WireIo>,
    },
    Other(String),
}

impl From<UnpackError> for WireError {
    fn from(e: UnpackError) -> Self {
        match e {
            UnpackError::Refused {
                layer,
                entry,
                reason,
            } => WireError::Refused {
                layer,
                entry,
                reason,
            },
            UnpackError::Entry {
                layer,
                entry,
                op,
                source,
            } => WireError::Entry {
                layer,
                entry,
                op,
                source: (&source).into(),
            },
            UnpackError::Read {
                layer,
                path,
                source,
            } => WireError::Read {
                layer,
                path,
                source: (&source).into(),
            },
            UnpackError::MediaType {
                layer,
                media_type,
                why,
            } => WireError::MediaType {
                layer,
                media_type,
                why,
            },
            UnpackError::Rootfs { path, problem } => WireError::Rootfs { path, problem },
            UnpackError::RootfsIo { path, op, source } => WireError::RootfsIo {
                path,
                op,
                source: (&source).into(),
            },
            UnpackError::UserNamespace { what, source } => WireError::UserNamespace {
                what,
                source: source.as_ref().map(Into::into),
            },
            e @ UnpackError::Helper { .. } => WireError::Other(locald_core::error_chain(&e)),
        }
    }
}

impl WireError {
    fn into_error(self, helper: &Path) -> UnpackError {
        match self {
            WireError::Refused {
                layer,
                entry,
                reason,
            } => UnpackError::Refused {
                layer,
                entry,
                reason,
            },
            WireError::Entry {
                layer,
                entry,
                op,
                source,
            } => UnpackError::Entry {
                layer,
                entry,
                op,
                source: source.into(),
            },
            WireError::Read {
                layer,
                path,
                source,
            } => UnpackError::Read {
                layer,
                path,
                source: source.into(),
            },
            WireError::MediaType {
                layer,
                media_type,
                why,
            } => UnpackError::MediaType {
                layer,
                media_type,
                why,
            },
            WireError::Rootfs { path, problem } => UnpackError::Rootfs { path, problem },
            WireError::RootfsIo { path, op, source } => UnpackError::RootfsIo {
                path,
                op,
                source: source.into(),
            },
            WireError::UserNamespace { what, source } => UnpackError::UserNamespace {
                what,
                source: source.map(Into::into),
            },
            WireError::Other(what) => UnpackError::Helper {
                helper: helper.to_owned(),
                what,
                source: None,
            },
        }
    }
}

fn send<W: Write, T: Serialize>(w: &mut W, msg: &T) -> io::Result<()> {
    let mut line = serde_json::to_vec(msg).map_err(io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line)?;
    w.flush()
}

/// The next message, or `None` at end of stream.
fn recv<R: BufRead, T: for<'de> Deserialize<'de>>(r: &mut R) -> io::Result<Option<T>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    serde_json::from_str(&line)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Kills and reaps the helper unless it was waited for.
struct Reaper(Option<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Who owns the files, as `plan` maps them.
fn owners_of(plan: &Plan) -> Owners {
    match plan {
        Plan::Mapped {
            uid_lines,
            gid_lines,
            ..
        } => Owners::Image {
            uids: idmap::mapped_count(uid_lines),
            gids: idmap::mapped_count(gid_lines),
        },
        Plan::CallerOnly { .. } => Owners::Caller,
    }
}

/// The parent's side of an unpack: runs the helper and maps its ids as
/// `plan` says.
pub(super) fn run(
    helper: &Path,
    rootfs: &Path,
    layers: &[Layer],
    plan: &Plan,
    sync: bool,
) -> Result<UnpackStats, UnpackError> {
    let request = ToHelper::Unpack(Request {
        rootfs: rootfs.to_owned(),
        layers: layers.to_vec(),
        owners: owners_of(plan),
        sync,
    });
    match talk(helper, request, plan)? {
        FromHelper::Done(Ok(stats)) => Ok(stats),
        FromHelper::Done(Err(e)) => Err(e.into_error(helper)),
        other => Err(unexpected(helper, &other)),
    }
}

/// The parent's side of removing a rootfs, in a namespace mapped as for
/// unpacking.
pub(super) fn run_remove(helper: &Path, rootfs: &Path, plan: &Plan) -> Result<(), UnpackError> {
    let request = ToHelper::Remove(RemoveRequest {
        rootfs: rootfs.to_owned(),
        owners: owners_of(plan),
    });
    match talk(helper, request, plan)? {
        FromHelper::Removed(Ok(())) => Ok(()),
        FromHelper::Removed(Err(e)) => Err(e.into_error(helper)),
        other => Err(unexpected(helper, &other)),
    }
}

fn unexpected(helper: &Path, msg: &FromHelper) -> UnpackError {
    UnpackError::Helper {
        helper: helper.to_owned(),
        what: format!("answered {msg:?}, which does not fit the request"),
        source: None,
    }
}

/// Runs the helper with `request`, maps its ids as `plan` says, and
/// returns its last message; an error when it ended without one.
fn talk(helper: &Path, request: ToHelper, plan: &Plan) -> Result<FromHelper, UnpackError> {
    let failed = |what: String, source: Option<io::Error>| UnpackError::Helper {
        helper: helper.to_owned(),
        what,
        source,
    };
    let mut child = Command::new(helper)
        .arg(HELPER_SUBCOMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed("cannot start it".into(), Some(e)))?;
    let pid = child.id();
    let pipes = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let mut reaper = Reaper(Some(child));
    let (Some(mut to), Some(from), Some(errout)) = pipes else {
        return Err(failed("its pipes were not set up".into(), None));
    };
    let stderr = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = errout.take(STDERR_LIMIT).read_to_end(&mut s);
        String::from_utf8_lossy(&s).trim().to_string()
    });
    let mut from = BufReader::new(from);
    // A pipe error means the helper ended early: its status and stderr,
    // collected below, say why.
    let (done, pipe_err) = match converse(&mut to, &mut from, request, plan, pid)? {
        Ok(done) => (done, None),
        Err(e) => (None, Some(e)),
    };
    drop(to);
    let status = reaper.0.take().map(|mut c| c.wait());
    let stderr = stderr.join().unwrap_or_default();
    match done {
        Some(msg @ (FromHelper::Done(_) | FromHelper::Removed(_))) => Ok(msg),
        _ => {
            let status = match status {
                Some(Ok(s)) => s.to_string(),
                Some(Err(e)) => format!("cannot be waited for ({e})"),
                None => "unknown".into(),
            };
            Err(failed(
                format!("ended without a result ({status}): {stderr}"),
                pipe_err,
            ))
        }
    }
}

/// Sends the request, maps the helper's ids when it is ready, says go, and
/// returns its last message (`None` if it ended without one). Mapping
/// errors are the caller's errors; pipe errors are returned inside.
fn converse(
    to: &mut ChildStdin,
    from: &mut impl BufRead,
    request: ToHelper,
    plan: &Plan,
    pid: u32,
) -> Result<io::Result<Option<FromHelper>>, UnpackError> {
    if let Err(e) = send(to, &request) {
        return Ok(Err(e));
    }
    match recv::<_, FromHelper>(from) {
        Ok(Some(FromHelper::Ready)) => {}
        other => return Ok(other),
    }
    if let Plan::Mapped {
        newuidmap,
        newgidmap,
        uid_lines,
        gid_lines,
    } = plan
    {
        idmap::write_map(newuidmap, pid, uid_lines)
            .and_then(|()| idmap::write_map(newgidmap, pid, gid_lines))
            .map_err(|what| UnpackError::UserNamespace { what, source: None })?;
    }
    if let Err(e) = send(to, &ToHelper::Go) {
        return Ok(Err(e));
    }
    Ok(recv(from))
}

/// The child's side: `locald internal-unpack`. Call it from `main` before
/// anything starts a thread (a multi-threaded process cannot enter a user
/// namespace).
pub fn helper_main() -> ExitCode {
    match serve() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("locald {HELPER_SUBCOMMAND}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve() -> io::Result<()> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    let mut input = io::stdin().lock();
    let mut out = io::stdout().lock();
    let request = match recv(&mut input)? {
        Some(r @ (ToHelper::Unpack(_) | ToHelper::Remove(_))) => r,
        _ => return Err(io::Error::other("expected a request on stdin")),
    };
    let owners = match &request {
        ToHelper::Unpack(req) => req.owners,
        ToHelper::Remove(req) => req.owners,
        ToHelper::Go => Owners::Caller,
    };
    // The answer to send when the namespace cannot be set up.
    let failure = |err: UnpackError| match &request {
        ToHelper::Remove(_) => FromHelper::Removed(Err(err.into())),
        _ => FromHelper::Done(Err(err.into())),
    };
    let (uid, gid) = (rustix::process::getuid(), rustix::process::getgid());
    // SAFETY: this process is single-threaded (main calls us before
    // anything starts a thread), and NEWUSER does not unshare the file
    // descriptor table, which is what makes unshare unsafe in rustix.
    if let Err(e) = unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWUSER) }
    {
        let err = UnpackError::UserNamespace {
            what: "unshare(CLONE_NEWUSER) failed (are user namespaces disabled?)".into(),
            source: Some(e.into()),
        };
        return send(&mut out, &failure(err));
    }
    send(&mut out, &FromHelper::Ready)?;
    let Some(ToHelper::Go) = recv(&mut input)? else {
        return Err(io::Error::other("the parent did not say go"));
    };
    if owners == Owners::Caller {
        if let Err(e) = map_self(uid.as_raw(), gid.as_raw()) {
            let err = UnpackError::UserNamespace {
                what: "cannot map the user to root in the new namespace".into(),
                source: Some(e),
            };
            return send(&mut out, &failure(err));
        }
    }
    let answer = match request {
        ToHelper::Unpack(req) => FromHelper::Done(
            extract(&req.rootfs, &req.layers, req.owners, req.sync).map_err(WireError::from),
        ),
        ToHelper::Remove(req) => {
            FromHelper::Removed(super::remove_in_place(&req.rootfs).map_err(WireError::from))
        }
        ToHelper::Go => return Err(io::Error::other("expected a request on stdin")),
    };
    send(&mut out, &answer)
}

/// Maps only the user (to 0): what an unprivileged process may write for
/// itself, once `setgroups` is denied.
fn map_self(uid: u32, gid: u32) -> io::Result<()> {
    std::fs::write("/proc/self/setgroups", "deny")?;
    std::fs::write("/proc/self/uid_map", format!("0 {uid} 1\n"))?;
    std::fs::write("/proc/self/gid_map", format!("0 {gid} 1\n"))
}
