//! Helpers for the D-Bus tests: a private `dbus-daemon` on a temporary
//! socket, a `locald daemon` serving it, and `locald-ctl` pointed at it.
//! Nothing touches the user's real session bus; everything is stopped on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::bin;

/// A private session bus.
pub struct TestBus {
    dir: tempfile::TempDir,
    address: String,
    pid: i32,
}

/// Whether the D-Bus tools the tests need are installed.
pub fn have_dbus_daemon() -> bool {
    Command::new("dbus-daemon")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

impl TestBus {
    /// Starts a bus that only the current uid may use.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Starts a bus; with `any_user` the socket and the policy let every uid
    /// connect (to test that locald itself refuses other uids).
    pub fn start_with(any_user: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("locald-bus-")
            .tempdir()
            .expect("tempdir");
        let socket = dir.path().join("bus");
        let users = if any_user {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod bus dir");
            r#"<allow user="*"/>"#
        } else {
            ""
        };
        let config = format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    {users}
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
            socket.display()
        );
        let conf = dir.path().join("bus.conf");
        std::fs::write(&conf, config).expect("write bus.conf");
        let out = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .args(["--fork", "--print-address=1", "--print-pid=1"])
            .stderr(Stdio::null())
            .output()
            .expect("run dbus-daemon");
        assert!(out.status.success(), "dbus-daemon failed: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        let address = lines.next().expect("bus address").trim().to_owned();
        let pid = lines
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("bus pid");
        if any_user {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777));
        }
        Self { dir, address, pid }
    }

    /// The bus address (`unix:path=…,guid=…`).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// A scratch directory that lives as long as the bus.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A zbus connection to the bus.
    pub async fn connect(&self) -> zbus::Connection {
        zbus::connection::Builder::address(self.address.as_str())
            .expect("address")
            .build()
            .await
            .expect("connect to the test bus")
    }

    /// Whether somebody owns `dev.locald.Locald1`.
    pub fn name_has_owner(&self) -> bool {
        Command::new("busctl")
            .arg(format!("--address={}", self.address))
            .args([
                "call",
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "NameHasOwner",
                "s",
                locald_api::BUS_NAME,
            ])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "b true")
    }

    /// Kills the bus daemon, as when a session bus goes away.
    pub fn kill(&self) {
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
    }

    /// Runs `busctl --address=… ARGS`.
    pub fn busctl(&self, args: &[&str]) -> Output {
        Command::new("busctl")
            .arg(format!("--address={}", self.address))
            .args(args)
            .output()
            .expect("run busctl")
    }
}

impl Drop for TestBus {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGTERM);
    }
}

/// A `locald daemon` on a [`TestBus`].
pub struct Daemon {
    child: Child,
    log: PathBuf,
}

/// How to start a daemon.
#[derive(Default)]
pub struct DaemonSetup {
    /// Where it keeps its state; a fresh one under the bus's dir if `None`.
    pub state_dir: Option<PathBuf>,
    /// Extra environment (e.g. `NOTIFY_SOCKET`).
    pub env: Vec<(String, String)>,
    /// Do not wait for the bus name (the test watches startup itself).
    pub no_wait: bool,
    /// Run it with this open-file limit (soft and hard), through `prlimit`.
    pub nofile: Option<u64>,
}

impl Daemon {
    /// Starts a daemon with a state dir under the bus's scratch dir and waits
    /// until it owns its name.
    pub fn start(bus: &TestBus) -> Self {
        Self::start_with(bus, DaemonSetup::default())
    }

    /// Starts a daemon as `setup` says.
    pub fn start_with(bus: &TestBus, setup: DaemonSetup) -> Self {
        let state = setup.state_dir.unwrap_or_else(|| bus.dir().join("state"));
        let log = bus.dir().join(format!("daemon-{}.log", crate::unique("d")));
        let log_file = std::fs::File::create(&log).expect("daemon log");
        let mut cmd = match setup.nofile {
            // prlimit execs the daemon: same pid.
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}"))
                    .arg("--")
                    .arg(bin("locald"));
                c
            }
            None => Command::new(bin("locald")),
        };
        cmd.arg("daemon")
            .arg("--bus-address")
            .arg(bus.address())
            .arg("--state-dir")
            .arg(&state)
            .env("LOCALD_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        for (k, v) in &setup.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn locald daemon");
        let mut d = Daemon { child, log };
        if !setup.no_wait {
            let end = Instant::now() + Duration::from_secs(10);
            while !bus.name_has_owner() {
                if let Ok(Some(status)) = d.child.try_wait() {
                    panic!("locald daemon exited with {status}:\n{}", d.log());
                }
                assert!(
                    Instant::now() < end,
                    "locald daemon did not take its name in 10 s:\n{}",
                    d.log()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        d
    }

    /// The daemon's pid.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap_or(i32::MAX)
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal.
    pub fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.pid()), sig);
    }

    /// Waits for the daemon to exit; `None` if it did not within `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILLs the daemon (its services are left behind, as after a crash).
    pub fn kill_hard(&mut self) {
        self.signal(Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SIGTERM stops every service in order; give it time, then force.
        self.signal(Signal::SIGTERM);
        if self.wait(Duration::from_secs(15)).is_none() {
            self.signal(Signal::SIGKILL);
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- locald daemon log ---\n{}", self.log());
        }
    }
}

/// The result of a `locald-ctl` run.
#[derive(Debug)]
pub struct CtlOutput {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `locald-ctl ARGS` in `cwd` against the bus.
pub fn ctl(bus: &TestBus, cwd: &Path, args: &[&str]) -> CtlOutput {
    let out = Command::new(bin("locald-ctl"))
        .args(args)
        .current_dir(cwd)
        .env("LOCALD_BUS_ADDRESS", bus.address())
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .stdin(Stdio::null())
        .output()
        .expect("run locald-ctl");
    CtlOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `locald-ctl status --json` for the project in `cwd`, parsed: the one
/// project of the array it prints.
pub fn status_json(bus: &TestBus, cwd: &Path) -> serde_json::Value {
    let out = ctl(bus, cwd, &["status", "--json"]);
    assert_eq!(out.code, 0, "status failed: {out:?}");
    let all: serde_json::Value = serde_json::from_str(&out.stdout).expect("status --json is JSON");
    let projects = all.as_array().expect("status --json is an array");
    assert_eq!(projects.len(), 1, "one project from its directory: {all}");
    projects[0].clone()
}

/// The state of each service, from `status --json`.
pub fn states(bus: &TestBus, cwd: &Path) -> Vec<(String, String)> {
    status_json(bus, cwd)["services"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    (
                        s["name"].as_str().unwrap_or_default().to_owned(),
                        s["state"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Polls until every service of the project in `cwd` is in one of `wanted`.
pub fn wait_states(bus: &TestBus, cwd: &Path, wanted: &[&str], timeout: Duration) {
    let end = Instant::now() + timeout;
    loop {
        let now = states(bus, cwd);
        if !now.is_empty() && now.iter().all(|(_, s)| wanted.contains(&s.as_str())) {
            return;
        }
        assert!(
            Instant::now() < end,
            "services never reached {wanted:?}; last seen {now:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
