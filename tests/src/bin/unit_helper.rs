//! `locald-test-unit`: small programs the systemd-unit tests run inside the
//! nspawn container, where there is no Python and `systemd-notify` races
//! (it exits before the manager can tell whose message it was).
//!
//! - `notify READY_AFTER_MS STATUS PING_FOR_MS`: after READY_AFTER_MS sends
//!   `READY=1` and `STATUS=STATUS` to `$NOTIFY_SOCKET`, then `WATCHDOG=1`
//!   every 200 ms for PING_FOR_MS (forever if 0), then sleeps. Stays alive,
//!   so the sender is always the unit's main process. Later arguments
//!   are ignored (a marker for the tests to find the process by).
//! - `loglines PROJECT SERVICE SECONDS`: subscribes to the service's
//!   `LogLine` signal on the session bus and prints `STREAM<TAB>LINE` for
//!   each, flushed, for SECONDS (re-subscribing when the daemon comes back).

use std::io::Write as _;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use futures_util::StreamExt as _;
use locald_api::{service_path, Service1Proxy};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["notify", after, status, ping_for, ..] => {
            notify(after.parse()?, status, ping_for.parse()?)
        }
        ["loglines", project, service, secs] => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(loglines(project, service, secs.parse()?))
        }
        _ => {
            bail!("usage: locald-test-unit notify MS STATUS MS | loglines PROJECT SERVICE SECONDS")
        }
    }
}

fn send(sock: &UnixDatagram, path: &str, msg: &str) -> Result<()> {
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt as _;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(msg.as_bytes(), &addr)?;
    } else {
        sock.send_to(msg.as_bytes(), path)?;
    }
    Ok(())
}

fn notify(after_ms: u64, status: &str, ping_for_ms: u64) -> Result<()> {
    let path = std::env::var("NOTIFY_SOCKET").context("no $NOTIFY_SOCKET")?;
    let sock = UnixDatagram::unbound()?;
    println!("starting, ready in {after_ms} ms");
    std::thread::sleep(Duration::from_millis(after_ms));
    send(&sock, &path, &format!("READY=1\nSTATUS={status}"))?;
    println!("ready");
    let start = Instant::now();
    loop {
        if ping_for_ms != 0 && start.elapsed() >= Duration::from_millis(ping_for_ms) {
            println!("no more watchdog pings");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        send(&sock, &path, "WATCHDOG=1")?;
        std::thread::sleep(Duration::from_millis(200));
    }
}

async fn loglines(project: &str, service: &str, secs: u64) -> Result<()> {
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    let conn = zbus::Connection::session().await?;
    let mut out = std::io::stdout();
    while tokio::time::Instant::now() < end {
        let svc = Service1Proxy::builder(&conn)
            .path(service_path(project, service))?
            .build()
            .await?;
        let Ok(mut lines) = svc.receive_log_line().await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if svc.subscribe_logs().await.is_err() {
            // No daemon (yet): try again.
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        eprintln!("subscribed");
        // A subscription ends with the daemon that held it; the owner
        // change says so.
        let mut owner = conn
            .call_method(
                Some("org.freedesktop.DBus"),
                "/org/freedesktop/DBus",
                Some("org.freedesktop.DBus"),
                "GetNameOwner",
                &("dev.locald.Locald1",),
            )
            .await
            .ok()
            .and_then(|m| m.body().deserialize::<String>().ok());
        let dbus = zbus::fdo::DBusProxy::new(&conn).await?;
        let mut owners = dbus.receive_name_owner_changed().await?;
        loop {
            tokio::select! {
                l = lines.next() => {
                    let Some(l) = l else { break };
                    if let Ok(a) = l.args() {
                        writeln!(out, "{}\t{}", a.stream(), String::from_utf8_lossy(a.line()))?;
                        out.flush()?;
                    }
                }
                c = owners.next() => {
                    if let Some(c) = c {
                        if let Ok(a) = c.args() {
                            if a.name().as_str() == "dev.locald.Locald1" {
                                let new = a.new_owner().as_ref().map(|o| o.to_string());
                                if new != owner {
                                    owner = new;
                                    eprintln!("daemon changed");
                                    break;
                                }
                            }
                        }
                    }
                }
                () = tokio::time::sleep_until(end) => return Ok(()),
            }
        }
    }
    Ok(())
}
