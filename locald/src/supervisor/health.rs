//! Health probes: TCP connect, HTTP GET, a command. (`notify = true` is
//! answered by the notify socket, not probed.)
//!
//! A checker runs as its own task beside the service and reports through a
//! channel, so a slow probe never blocks the supervisor. Failures during the
//! start period do not count; after it, `retries` consecutive failures make the
//! service unhealthy, which the state machine treats like a crash.

use std::process::Stdio;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout, Instant};

use crate::config::{CommandSpec, HealthCheck, HealthKind, HttpUrl};

/// The first re-probe while a service has not passed yet.
const FIRST_RETRY: std::time::Duration = std::time::Duration::from_millis(25);

/// What a checker reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthEvent {
    /// The first passing probe (or the first after a failing streak).
    Passed,
    /// A probe failed and counted: `.1` of the `.2` failures in a row that
    /// make the service unhealthy (said at once, not only at the last).
    Failing(String, u32, u32),
    /// Probes failed `retries` times in a row after the start period.
    Failed(String),
}

/// Where command probes run.
#[derive(Debug, Clone)]
pub struct ProbeContext {
    /// Working directory.
    pub cwd: std::path::PathBuf,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// For a workload with its own view of the world (a container), the
    /// argv that runs a `command` probe inside it; the probe's argv follows.
    pub inside: Option<Vec<String>>,
}

/// Probes until the service is unhealthy or the receiver is gone.
pub async fn run_checker(check: HealthCheck, ctx: ProbeContext, tx: mpsc::Sender<HealthEvent>) {
    let started = Instant::now();
    if check.kind == HealthKind::Notify {
        // READY=1 arrives on the notify socket; here we only enforce the deadline.
        sleep(check.start_period + check.interval * check.retries).await;
        let _ = tx
            .send(HealthEvent::Failed(format!(
                "no READY=1 on $NOTIFY_SOCKET within {}",
                humantime::format_duration(check.start_period + check.interval * check.retries)
            )))
            .await;
        return;
    }
    let mut healthy = false;
    let mut failures = 0u32;
    // Until the first pass, probe again soon (doubling up to `interval`): a
    // server that listens 30 ms after start should not wait a whole interval
    // to be Healthy and release its dependents. After that, every `interval`.
    let mut eager = FIRST_RETRY;
    let mut last_counted: Option<Instant> = None;
    loop {
        let result = match timeout(check.timeout, probe(&check.kind, &ctx)).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "health check timed out after {}",
                humantime::format_duration(check.timeout)
            )),
        };
        match result {
            Ok(()) => {
                // Said again after a failing streak, which clears its reason.
                let was_failing = failures > 0;
                failures = 0;
                last_counted = None;
                if !healthy || was_failing {
                    healthy = true;
                    if tx.send(HealthEvent::Passed).await.is_err() {
                        return;
                    }
                }
            }
            Err(reason) => {
                let in_grace = !healthy && started.elapsed() < check.start_period;
                // Eager probes must not use up `retries` faster than one per
                // interval: a failure counts once an interval has passed
                // since the last counted one (or since the grace ended).
                let due = last_counted.is_none_or(|t: Instant| t.elapsed() >= check.interval);
                if !in_grace && due {
                    last_counted = Some(Instant::now());
                    failures += 1;
                    let of = check.retries.max(1);
                    if failures >= of {
                        let _ = tx.send(HealthEvent::Failed(reason)).await;
                        return;
                    }
                    if tx
                        .send(HealthEvent::Failing(reason, failures, of))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        if healthy {
            eager = FIRST_RETRY;
            sleep(check.interval).await;
        } else {
            sleep(eager.min(check.interval)).await;
            eager = eager.saturating_mul(2);
        }
    }
}

/// One probe.
pub async fn probe(kind: &HealthKind, ctx: &ProbeContext) -> Result<(), String> {
    match kind {
        HealthKind::Tcp(port) => TcpStream::connect(("127.0.0.1", *port))
            .await
            .map(drop)
            .map_err(|e| format!("tcp port {port}: {e}")),
        HealthKind::Http(url) => http_get(url).await,
        HealthKind::Command(cmd) => command(cmd, ctx).await,
        HealthKind::Notify => Ok(()),
    }
}

async fn http_get(url: &HttpUrl) -> Result<(), String> {
    let mut s = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("{}: {e}", url.text))?;
    let req = format!(
        "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: locald-health\r\nConnection: close\r\n\r\n",
        url.path, url.host
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("{}: {e}", url.text))?;
    // Read the whole (bounded) response: closing with unread data makes the
    // kernel send a reset, which servers log as an error.
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => break,
            Ok(k) => {
                if head.len() < 512 {
                    head.extend_from_slice(&buf[..k.min(512 - head.len())]);
                }
            }
            Err(e) if head.is_empty() => return Err(format!("{}: {e}", url.text)),
            Err(_) => break,
        }
    }
    let line = String::from_utf8_lossy(&head);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{}: not an HTTP response", url.text))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("GET {} → {code}", url.path))
    }
}

async fn command(cmd: &CommandSpec, ctx: &ProbeContext) -> Result<(), String> {
    let argv: Vec<String> = match &ctx.inside {
        Some(prefix) => prefix.iter().cloned().chain(cmd.argv()).collect(),
        None => cmd.argv(),
    };
    let mut c = tokio::process::Command::new(&argv[0]);
    c.args(&argv[1..])
        .current_dir(&ctx.cwd)
        .envs(ctx.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    match c.status().await {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("health command {s}")),
        Err(e) => Err(format!("health command: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that answers one request with `status` and hands back the
    /// request it read.
    async fn answer_once(status: u16) -> (u16, tokio::task::JoinHandle<String>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        let served = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            let mut buf = vec![0u8; 1024];
            let n = s.read(&mut buf).await.expect("read");
            let reply = format!("HTTP/1.0 {status} X\r\nContent-Length: 0\r\n\r\n");
            s.write_all(reply.as_bytes()).await.expect("write");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (port, served)
    }

    #[tokio::test]
    async fn an_http_probe_says_what_it_asked_and_what_came_back() {
        let (port, served) = answer_once(404).await;
        let url = HttpUrl::parse(&format!("http://127.0.0.1:{port}/ready")).expect("url");
        let err = http_get(&url).await.expect_err("404 fails");
        assert_eq!(err, "GET /ready → 404");
        let request = served.await.expect("served");
        assert!(
            request.contains("User-Agent: locald-health\r\n"),
            "{request}"
        );

        let (port, _served) = answer_once(204).await;
        let url = HttpUrl::parse(&format!("http://127.0.0.1:{port}/")).expect("url");
        assert_eq!(http_get(&url).await, Ok(()));
    }
}
