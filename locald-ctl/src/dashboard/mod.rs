//! `dashboard [--port N] [--no-open]`: a web page on 127.0.0.1 that shows
//! every project live and drives it.
//!
//! This process is a D-Bus client of the daemon like any editor; the daemon
//! has no HTTP server. `model` follows the daemon's signals into a model
//! and a stream of events; `journal` reads log history through journalctl;
//! `http` is the gate (Host, token, origin) and the routes; `assets/` holds
//! the page (plain HTML, CSS and JavaScript written for it, compiled in).
//!
//! The server speaks HTTP/1.1 through `hyper`, which the workspace already
//! builds (for image pulls): six routes do not need a framework.

mod http;
mod journal;
mod model;

use std::io::Write;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::client::{Client, CtlError};

/// How the dashboard runs.
pub struct Options {
    /// Port on 127.0.0.1; 0 picks one.
    pub port: u16,
    /// Open the page in a browser when there is a desktop.
    pub open: bool,
    /// Also write the URL here (0600).
    pub url_file: Option<PathBuf>,
    /// `journalctl --namespace`.
    pub namespace: Option<String>,
}

/// Connections served at once; more are closed. An event stream holds one.
const MAX_CONNECTIONS: usize = 64;

/// A fresh random token: 32 bytes from the kernel, in hex.
fn new_token() -> Result<String, CtlError> {
    locald_core::fsutil::random_hex(32)
        .map_err(|e| CtlError::Failed(format!("cannot make a token: {e}")))
}

/// Opens `url` in the user's browser when there is a desktop to show it.
///
/// The browser gets the path of a 0600 page in `$XDG_RUNTIME_DIR/locald/`
/// that forwards to `url`, not `url` itself: a command line is readable by
/// every local user in `/proc/PID/cmdline`, and the token would be in it.
fn open_browser(url: &str) {
    let desktop = ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()));
    if !desktop {
        return;
    }
    let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) else {
        eprintln!("locald-ctl: no $XDG_RUNTIME_DIR to open the page from; open the address above");
        return;
    };
    let dir = PathBuf::from(runtime).join("locald");
    let page = dir.join("dashboard-open.html");
    let written = locald_core::fsutil::private_dir(&dir)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            locald_core::fsutil::write_atomic(&page, launcher(url).as_bytes())
                .map_err(|e| e.to_string())
        });
    if let Err(e) = written {
        eprintln!(
            "locald-ctl: cannot write {} ({e}); open the address above",
            page.display()
        );
        return;
    }
    let spawned = std::process::Command::new("xdg-open")
        .arg(&page)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if let Err(e) = spawned {
        eprintln!("locald-ctl: cannot open a browser ({e}); open the address above");
    }
}

/// A page that forwards to `url` (which is ours: digits, hex and ASCII).
fn launcher(url: &str) -> String {
    format!(
        "<!doctype html><meta charset=\"utf-8\"><meta name=\"referrer\" content=\"no-referrer\">\
         <meta http-equiv=\"refresh\" content=\"0;url={url}\"><title>locald dashboard</title>\
         <a href=\"{url}\">Open the locald dashboard</a>\n"
    )
}

/// Writes the URL (with its secret) to `file`, readable by us alone; a
/// missing parent is made private (e.g. `$XDG_RUNTIME_DIR/locald`).
fn write_url(file: &std::path::Path, url: &str) -> Result<(), CtlError> {
    let fail = |e: String| CtlError::Failed(format!("cannot write {}: {e}", file.display()));
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            locald_core::fsutil::private_dir(dir).map_err(|e| fail(e.to_string()))?;
        }
    }
    locald_core::fsutil::write_atomic(file, format!("{url}\n").as_bytes())
        .map_err(|e| fail(e.to_string()))
}

/// Resolves on SIGINT or SIGTERM (systemd's stop).
async fn stopped() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// `dashboard`.
pub async fn run(client: Client, opts: Options) -> Result<ExitCode, CtlError> {
    // `main` lets SIGPIPE end a printing command quietly; a server must
    // instead live through a browser that closes a connection mid-answer.
    // Listening for SIGPIPE installs tokio's handler for it, for the rest
    // of the process: the signal no longer ends it, and a write to a
    // closed socket fails with EPIPE instead.
    let _ = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::pipe());
    let (listener, port) = listen(opts.port).await?;
    let token = new_token()?;
    let url = format!("http://127.0.0.1:{port}/#token={token}");
    announce(&url, &opts)?;

    let hub = model::Hub::new();
    let daemon = model::DaemonRef::new(client.daemon.clone());
    let follower = model::follow(hub.clone(), client.conn.clone(), daemon.clone())
        .await
        .map_err(CtlError::zbus)?;
    let server = Arc::new(http::Server {
        token,
        port,
        hub,
        conn: client.conn.clone(),
        daemon,
        namespace: opts.namespace.clone(),
    });
    serve(listener, server, follower, opts.url_file.as_deref()).await
}

/// Binds the dashboard's socket on 127.0.0.1: the listener and the port it
/// got (`port` 0 lets the kernel pick, and the URL must name the real one).
async fn listen(port: u16) -> Result<(TcpListener, u16), CtlError> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| CtlError::Failed(format!("cannot listen on 127.0.0.1:{port}: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| CtlError::Failed(e.to_string()))?
        .port();
    Ok((listener, port))
}

/// Tells the user (and whatever started us) where the page is: the URL
/// file if asked for, stdout as the first line, and the browser.
fn announce(url: &str, opts: &Options) -> Result<(), CtlError> {
    if let Some(file) = &opts.url_file {
        write_url(file, url)?;
    }
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{url}");
        let _ = out.flush();
    }
    if opts.open {
        open_browser(url);
    }
    Ok(())
}

/// Accepts connections until SIGINT or SIGTERM (success, after removing
/// `url_file`, whose secret is then worthless) or until the task following
/// the daemon ends (an error: the page would no longer be live).
async fn serve(
    listener: TcpListener,
    server: Arc<http::Server>,
    mut follower: tokio::task::JoinHandle<zbus::Result<()>>,
    url_file: Option<&std::path::Path>,
) -> Result<ExitCode, CtlError> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let stop = stopped();
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = &mut stop => {
                if let Some(file) = url_file {
                    let _ = std::fs::remove_file(file);
                }
                return Ok(ExitCode::SUCCESS);
            }
            r = &mut follower => {
                return Err(match r {
                    Ok(Err(e)) => CtlError::zbus(e),
                    _ => CtlError::Unreachable("the bus connection ended".into()),
                });
            }
        };
        let (stream, _) = match accepted {
            Ok(s) => s,
            // Out of file descriptors and the like: wait, then go on.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Full: this connection is closed at once; the loop never waits, so
        // Ctrl-C and SIGTERM are always heard.
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        spawn_connection(stream, server.clone(), permit);
    }
}

/// Serves one connection in its own task, which holds `permit` (one of the
/// [`MAX_CONNECTIONS`] slots) until the connection closes. The header
/// timeout frees the slot of a client that connects and sends nothing; the
/// buffer cap bounds what one request can make us hold.
fn spawn_connection(
    stream: tokio::net::TcpStream,
    server: Arc<http::Server>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    tokio::spawn(async move {
        let service = service_fn(move |req| server.clone().handle(req));
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10))
            .max_buf_size(64 * 1024)
            .serve_connection(TokioIo::new(stream), service);
        // A client that goes away mid-request is not our error.
        let _ = conn.await;
        drop(permit);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_launcher_forwards_to_the_url() {
        let page = launcher("http://127.0.0.1:1/#token=ab");
        assert!(page.contains("content=\"0;url=http://127.0.0.1:1/#token=ab\""));
    }

    #[test]
    fn tokens_are_long_and_fresh() {
        let a = new_token().expect("token");
        let b = new_token().expect("token");
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
