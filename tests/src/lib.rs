//! Helpers for the integration tests: finding the built binaries, making
//! throw-away projects, waiting for conditions, and the CI rule for missing
//! preconditions (skip with a reason on a laptop, fail under `CI=true`).

pub mod cnb;
pub mod dbus;
pub mod images;
pub mod incremental;
pub mod journald;
pub mod nspawn;
pub mod shim;
pub mod unpack;
pub mod userworld;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The directory holding the workspace's built binaries (`target/debug`,
/// or `target/release` for a benchmark built there).
pub fn bin_dir() -> PathBuf {
    // Test executables live in target/<profile>/deps/, the workspace's
    // binaries (benchmarks among them) in target/<profile>/.
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().expect("executable dir");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("profile dir").to_owned()
    } else {
        dir.to_owned()
    }
}

/// Path of a workspace binary; panics with how to build it when missing.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is not built: run `cargo build --workspace --bins` first (tests/run.sh does)",
        p.display()
    );
    p
}

/// A workspace binary at a path every user can reach, for tests that run it
/// as another user: the checkout may live under a directory only root can
/// enter. A hard link (a copy across file systems) in
/// `/tmp/locald-test-bins/<size-mtime>/`, made once and shared by test runs.
pub fn user_bin(name: &str) -> PathBuf {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let src = bin(name);
    let meta = std::fs::metadata(&src).expect("binary metadata");
    let dir = Path::new("/tmp/locald-test-bins").join(format!("{}-{}", meta.size(), meta.mtime()));
    let dst = dir.join(name);
    if dst.exists() {
        return dst;
    }
    for d in [Path::new("/tmp/locald-test-bins"), dir.as_path()] {
        let _ = std::fs::create_dir(d);
        let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755));
    }
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(&src, &tmp).is_err() {
        std::fs::copy(&src, &tmp).expect("copy binary");
    }
    let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755));
    // Another test process may have won the race; either copy is the same.
    let _ = std::fs::rename(&tmp, &dst);
    let _ = std::fs::remove_file(&tmp);
    dst
}

/// A child process killed and reaped when dropped, so a test that fails
/// half-way leaves no server running.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether this run is CI, where a missing precondition is a failure.
pub fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skips the calling test (returns `true`) when `ok` is false, saying why;
/// under `CI=true` it panics instead.
pub fn require(ok: bool, why: &str) -> bool {
    if ok {
        return false;
    }
    assert!(!is_ci(), "precondition missing under CI=true: {why}");
    eprintln!("SKIPPED: {why}");
    true
}

/// A throw-away project directory.
pub struct TestProject {
    /// The directory; removed on drop.
    pub dir: tempfile::TempDir,
}

impl TestProject {
    /// A project with this `locald.toml`.
    pub fn new(toml: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("locald-test-")
            .tempdir()
            .expect("tempdir");
        std::fs::write(dir.path().join("locald.toml"), toml).expect("write locald.toml");
        Self { dir }
    }

    /// The project directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the project.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes a file inside the project.
    pub fn write(&self, rel: &str, content: &str) {
        let p = self.join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(p, content).expect("write");
    }

    /// Reads a file inside the project ("" if missing).
    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.join(rel)).unwrap_or_default()
    }
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub async fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A name unique to this test run, for things that are machine-wide
/// (journal entries, cgroups, ports).
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        t % 100_000,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Pids of processes whose command line contains `marker`.
/// [`pids_with`] without the output forwarders of systemd units
/// (`locald internal-unit-exec … -- COMMAND`, which repeat the service's
/// command line): the services' own processes.
pub fn service_pids(marker: &str) -> Vec<i32> {
    pids_with(marker)
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| !String::from_utf8_lossy(&c).contains("internal-unit-exec"))
                .unwrap_or(false)
        })
        .collect()
}

pub fn pids_with(marker: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| *pid != me)
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline"))
                        // Arguments are NUL-separated; match as a shell would show them.
                        .map(|c| {
                            String::from_utf8_lossy(&c)
                                .replace('\0', " ")
                                .contains(marker)
                        })
                        .unwrap_or(false)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A sink that keeps every line, for assertions.
#[derive(Default)]
pub struct CollectSink(pub std::sync::Mutex<Vec<locald::event::LogLine>>);

impl locald::output::LogSink for CollectSink {
    fn write<'a>(&'a self, line: &'a locald::event::LogLine) -> locald::output::BoxFuture<'a, ()> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(line.clone());
        Box::pin(std::future::ready(()))
    }
}

impl CollectSink {
    /// Lines of one service as text.
    pub fn lines(&self, service: &str) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|l| &*l.service == service)
            .map(|l| String::from_utf8_lossy(&l.line).into_owned())
            .collect()
    }
}

/// Kills, when dropped, every process whose command line contains its
/// marker: a test's leftovers are gone even when it fails halfway.
pub struct Reaper(pub String);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in pids_with(&self.0) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Waits until `f` holds, polling every 25 ms; panics naming `what` after
/// `timeout`.
pub fn wait_until(timeout: std::time::Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + timeout;
    while !f() {
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
}

/// The service object named `name` anywhere in `locald-ctl status --json`
/// output.
pub fn find_service<'a>(v: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => {
            if m.get("name").and_then(|n| n.as_str()) == Some(name) && m.contains_key("state") {
                return Some(v);
            }
            m.values().find_map(|x| find_service(x, name))
        }
        serde_json::Value::Array(a) => a.iter().find_map(|x| find_service(x, name)),
        _ => None,
    }
}
