//! A private `systemd-journald` for tests, and helpers to read entries back.
//!
//! journald is system-wide: its default instance owns `/run/systemd/journal`.
//! Rather than share (or restart) that one, each [`Journald`] runs its own
//! *journal namespace* (`systemd-journald NAMESPACE`, as
//! `systemd-journald@.service` does): its sockets live in
//! `/run/systemd/journal.NAMESPACE/`, its files in
//! `/run/log/journal/MACHINE-ID.NAMESPACE/` (`Storage=volatile`), its config
//! in a drop-in `/run/systemd/journald@NAMESPACE.conf.d/` without rate limits,
//! and `journalctl --namespace=NAMESPACE` reads it back. Everything is
//! removed when the value is dropped.
//!
//! Traps this handles:
//! - Without systemd as PID 1, `net.unix.max_dgram_qlen` stays at the
//!   kernel's 10 (systemd sets 512): journald runs in its own network
//!   namespace with 512, so queueing behaves as on a user's machine.
//! - A namespace instance exits after 30 s without stdout-stream clients
//!   (it expects socket activation). A kept-open stream connection holds it.
//! - journald deletes its oldest files to keep `RuntimeKeepFree` (15% of
//!   the file system, at most 4 GiB) free: on a CI machine with a nearly
//!   full disk a 1,000,000-line flood lost its first 87,000 lines. Each
//!   namespace keeps nothing free and may grow to 4 GiB; the tests remove
//!   it when done.
//! - `journalctl -o json` prints fields over 4096 bytes as `null` without
//!   `--all`, and non-UTF-8 values as arrays of bytes ([`Entry::bytes`]).
//! - Entries are visible to `journalctl` only once journald has read them
//!   from its socket: [`Journald::sync`] (`journalctl --sync`) first.
//! - Tools that only know the default paths (`sd_journal_send`,
//!   `systemd-cat`, a daemon's `tracing-journald`) can be pointed at the
//!   namespace with [`Journald::command_with_default_paths`], which runs
//!   them in a private mount namespace with the namespace's socket directory
//!   bind-mounted on `/run/systemd/journal`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

/// journald's binary on Debian.
pub const JOURNALD: &str = "/lib/systemd/systemd-journald";

/// The journald config each namespace gets.
const CONFIG: &str = "\
[Journal]
Storage=volatile
RateLimitIntervalSec=0
RateLimitBurst=0
RuntimeMaxUse=4G
RuntimeKeepFree=0
RuntimeMaxFileSize=1G
ForwardToSyslog=no
ForwardToKMsg=no
ForwardToConsole=no
ForwardToWall=no
MaxLevelStore=debug
";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Fails under `CI=true`, else says why the test is skipped and returns
/// `Ok(false)`; `Ok(true)` when `ok` holds.
pub fn precondition(ok: bool, test: &str, why: &str) -> Result<bool> {
    if ok {
        return Ok(true);
    }
    if crate::is_ci() {
        bail!("{test}: precondition missing under CI=true: {why}");
    }
    eprintln!("skipping {test}: {why}");
    Ok(false)
}

/// Why a private journald cannot run here, if it cannot.
pub fn missing_precondition() -> Option<String> {
    if !Path::new(JOURNALD).exists() {
        return Some(format!(
            "{JOURNALD} is not installed (apt-get install systemd)"
        ));
    }
    if which("journalctl").is_none() {
        return Some("journalctl is not installed".into());
    }
    if !nix::unistd::geteuid().is_root() {
        return Some("a private systemd-journald needs root".into());
    }
    if fs::read_to_string("/etc/machine-id").map_or(true, |s| s.trim().is_empty()) {
        return Some("/etc/machine-id is missing (journalctl needs it)".into());
    }
    None
}

/// Whether journald can get a network namespace of its own (see
/// `start_daemon`); checked once.
fn can_unshare_net() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        Command::new("unshare")
            .args([
                "--net",
                "sh",
                "-c",
                "echo 512 > /proc/sys/net/unix/max_dgram_qlen",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.is_file())
}

/// A running private journald (one journal namespace).
pub struct Journald {
    namespace: String,
    machine_id: String,
    child: Option<Child>,
    keepalive: Option<UnixStream>,
    log: PathBuf,
    _tmp: tempfile::TempDir,
    made_default_dir: bool,
}

impl Journald {
    /// Starts a private journald, or skips (returns `None`) when it cannot
    /// run here and `CI` is not `true`.
    pub fn start_or_skip(test: &str) -> Result<Option<Self>> {
        let missing = missing_precondition();
        if !precondition(missing.is_none(), test, missing.as_deref().unwrap_or(""))? {
            return Ok(None);
        }
        Self::start().map(Some)
    }

    /// Starts a private journald in a fresh namespace.
    pub fn start() -> Result<Self> {
        sweep_leftovers();
        let namespace = format!(
            "locald-t{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let machine_id = fs::read_to_string("/etc/machine-id")
            .context("reading /etc/machine-id")?
            .trim()
            .to_owned();
        let tmp = tempfile::tempdir()?;
        let mut j = Self {
            log: tmp.path().join("journald.log"),
            namespace,
            machine_id,
            child: None,
            keepalive: None,
            _tmp: tmp,
            made_default_dir: false,
        };
        let conf_dir = j.conf_dir();
        fs::create_dir_all(&conf_dir)?;
        fs::write(conf_dir.join("50-locald-test.conf"), CONFIG)?;
        j.start_daemon()?;
        Ok(j)
    }

    /// The namespace's name (`journalctl --namespace=` this).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The directory with the namespace's sockets.
    pub fn runtime_dir(&self) -> PathBuf {
        PathBuf::from(format!("/run/systemd/journal.{}", self.namespace))
    }

    /// The native-protocol socket (for `JournalConfig::socket_path`).
    pub fn socket(&self) -> PathBuf {
        self.runtime_dir().join("socket")
    }

    fn conf_dir(&self) -> PathBuf {
        PathBuf::from(format!("/run/systemd/journald@{}.conf.d", self.namespace))
    }

    fn storage_dir(&self) -> PathBuf {
        PathBuf::from(format!(
            "/run/log/journal/{}.{}",
            self.machine_id, self.namespace
        ))
    }

    /// The daemon's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn start_daemon(&mut self) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        // systemd as PID 1 raises net.unix.max_dgram_qlen from the kernel's
        // 10 to 512 at boot; this machine's PID 1 does not. The queue length
        // of journald's socket comes from the network namespace it is made
        // in, so give journald one of its own with systemd's value, as on a
        // user's machine. Path-bound unix sockets work across namespaces.
        let mut cmd = if can_unshare_net() {
            let mut c = Command::new("unshare");
            c.args(["--net", "sh", "-c"])
                .arg(r#"echo 512 > /proc/sys/net/unix/max_dgram_qlen && exec "$0" "$@""#)
                .arg(JOURNALD);
            c
        } else {
            Command::new(JOURNALD)
        };
        let child = cmd
            .arg(&self.namespace)
            .env("SYSTEMD_LOG_TARGET", "console")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {JOURNALD}"))?;
        self.child = Some(child);
        let stdout_socket = self.runtime_dir().join("stdout");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!(
                    "systemd-journald {} exited at start ({status}): {}",
                    self.namespace,
                    self.log_tail()
                );
            }
            // Connecting (not just seeing the file) proves it listens: the
            // socket of an earlier run of the same namespace may be there.
            if self.socket().exists() {
                if let Ok(mut s) = UnixStream::connect(&stdout_socket) {
                    // The stream protocol's header: identifier, unit, priority,
                    // level prefix, forward to syslog/kmsg/console.
                    s.write_all(b"locald-test-keepalive\n\n6\n0\n0\n0\n0\n")?;
                    self.keepalive = Some(s);
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "systemd-journald {} did not listen within 10 s: {}",
                    self.namespace,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the daemon (SIGTERM) but keeps its sockets and files, as when
    /// journald dies under a running service.
    pub fn stop(&mut self) -> Result<()> {
        self.keepalive = None;
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("systemd-journald {} ignored SIGTERM", self.namespace);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }

    /// Starts the daemon again after [`Journald::stop`].
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.start_daemon()
    }

    /// journald's own output so far (last lines), for error messages.
    pub fn log_tail(&self) -> String {
        let s = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn journalctl(&self) -> Command {
        let mut c = Command::new("journalctl");
        c.arg(format!("--namespace={}", self.namespace))
            .args(["--no-pager", "-q"]);
        c
    }

    /// Waits until journald has written everything it has received.
    pub fn sync(&self) -> Result<()> {
        let out = self.journalctl().arg("--sync").output()?;
        if !out.status.success() {
            bail!(
                "journalctl --sync: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// All entries matching every `FIELD=value` in `matches`, oldest first.
    pub fn query(&self, matches: &[(&str, &str)]) -> Result<Vec<Entry>> {
        let out = self
            .journalctl()
            .args(["-o", "json", "--all"])
            .args(matches.iter().map(|(k, v)| format!("{k}={v}")))
            .stderr(Stdio::inherit())
            .output()?;
        if !out.status.success() {
            bail!("journalctl -o json failed: {}", out.status);
        }
        out.stdout
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let v: BTreeMap<String, Value> =
                    serde_json::from_slice(l).context("parsing journalctl -o json")?;
                Ok(Entry(v))
            })
            .collect()
    }

    /// [`Journald::sync`], then [`Journald::query`].
    pub fn synced_query(&self, matches: &[(&str, &str)]) -> Result<Vec<Entry>> {
        self.sync()?;
        self.query(matches)
    }

    /// The messages of the matching entries, one `String` per entry, read
    /// with `-o cat`: fast enough for a million entries, but only right for
    /// single-line UTF-8 messages.
    pub fn text_messages(&self, matches: &[(&str, &str)]) -> Result<Vec<String>> {
        let mut child = self
            .journalctl()
            .args(["-o", "cat", "--all"])
            .args(matches.iter().map(|(k, v)| format!("{k}={v}")))
            .stdout(Stdio::piped())
            .spawn()?;
        let mut raw = Vec::new();
        child
            .stdout
            .take()
            .context("journalctl stdout")?
            .read_to_end(&mut raw)?;
        let status = child.wait()?;
        if !status.success() {
            bail!("journalctl -o cat failed: {status}");
        }
        let text = String::from_utf8(raw).context("journalctl -o cat printed non-UTF-8")?;
        Ok(text.lines().map(str::to_owned).collect())
    }

    /// Counts the matching entries (single-line messages, see
    /// [`Journald::text_messages`]).
    pub fn count(&self, matches: &[(&str, &str)]) -> Result<usize> {
        Ok(self.text_messages(matches)?.len())
    }

    /// Polls until at least `n` entries match, or the timeout passes;
    /// returns the last count.
    pub fn wait_for_count(
        &self,
        matches: &[(&str, &str)],
        n: usize,
        timeout: Duration,
    ) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            self.sync()?;
            let c = self.count(matches)?;
            if c >= n || Instant::now() > deadline {
                return Ok(c);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A command that runs `program` in a private mount namespace where
    /// `/run/systemd/journal` is this journald's socket directory, so that
    /// tools with the default paths compiled in write here.
    pub fn command_with_default_paths(&mut self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let default = Path::new("/run/systemd/journal");
        if !default.exists() && fs::create_dir_all(default).is_ok() {
            self.made_default_dir = true;
        }
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind "$0" /run/systemd/journal && exec "$@""#)
            .arg(self.runtime_dir())
            .arg(program);
        c
    }
}

impl Drop for Journald {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = fs::remove_dir_all(self.runtime_dir());
        let _ = fs::remove_dir_all(self.storage_dir());
        let _ = fs::remove_dir_all(self.conf_dir());
        if self.made_default_dir {
            // Only removes it if empty: a real journald's is not.
            let _ = fs::remove_dir("/run/systemd/journal");
        }
    }
}

/// Removes what a killed test run left behind (its journald exits on its
/// own after 30 s idle): namespaces `locald-t<PID>-*` of dead processes.
fn sweep_leftovers() {
    let dead = |name: &str| -> bool {
        name.strip_prefix("locald-t")
            .and_then(|r| r.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    let sweep = |dir: &str, prefix: &str| {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pos) = name.find(prefix) else {
                continue;
            };
            let ns = name[pos + prefix.len()..].trim_end_matches(".conf.d");
            if dead(ns) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    };
    sweep("/run/systemd", "journal.");
    sweep("/run/systemd", "journald@");
    sweep("/run/log/journal", ".");
}

/// One journal entry as `journalctl -o json` prints it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry(pub BTreeMap<String, Value>);

impl Entry {
    /// A field's bytes: journalctl prints text as a string and anything else
    /// as an array of numbers.
    pub fn bytes(&self, field: &str) -> Option<Vec<u8>> {
        match self.0.get(field)? {
            Value::String(s) => Some(s.as_bytes().to_vec()),
            Value::Array(a) => a
                .iter()
                .map(|v| v.as_u64().and_then(|n| u8::try_from(n).ok()))
                .collect(),
            _ => None,
        }
    }

    /// A field as text (lossy for non-UTF-8).
    pub fn get(&self, field: &str) -> Option<String> {
        self.bytes(field)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    /// The field, or an empty string; for assertions.
    pub fn field(&self, field: &str) -> String {
        self.get(field).unwrap_or_default()
    }

    /// When journald received it (`__REALTIME_TIMESTAMP`, µs since the epoch).
    pub fn received_us(&self) -> Option<u64> {
        self.get("__REALTIME_TIMESTAMP")?.parse().ok()
    }
}
