//! `up --wait`: returns once every service of the project is ready (exit
//! 0) or one has failed (exit 1, with its reason), for scripts and CI. A
//! service is ready when `healthy`, or `running` without a health check, or
//! `stopped` after exiting successfully (a one-shot task). It follows the
//! daemon's signals, re-reading the project when one arrives, so a change
//! is seen when it happens rather than at the next poll.

use std::process::ExitCode;
use std::time::Duration;

use futures_util::StreamExt;
use locald_api::ServiceInfo;

use crate::client::{Client, CtlError};

/// Where a project stands for `--wait`.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every service is ready.
    Ready,
    /// This service failed: `name: reason`.
    Failed(String),
    /// These are not ready yet, as `name (state)`.
    Waiting(Vec<String>),
}

/// Whether `s` is ready (see the module doc).
fn ready(s: &ServiceInfo) -> bool {
    match s.state.as_str() {
        "healthy" => true,
        "running" => !s.has_health,
        "stopped" => s.exit_status == 0,
        _ => false,
    }
}

/// Judges a project by its services.
pub fn judge(services: &[ServiceInfo]) -> Verdict {
    // A project has at least one service; none yet means its objects are
    // not all on the bus yet (read right after `Up`), not that it is ready.
    if services.is_empty() {
        return Verdict::Waiting(vec!["its services to appear".into()]);
    }
    if let Some(f) = services.iter().find(|s| s.state == "failed") {
        return Verdict::Failed(format!("{}: {}", f.name, f.state_reason));
    }
    let waiting: Vec<String> = services
        .iter()
        .filter(|s| !ready(s))
        .map(|s| {
            if s.state_reason.is_empty() {
                format!("{} ({})", s.name, s.state)
            } else {
                format!("{} ({}: {})", s.name, s.state, s.state_reason)
            }
        })
        .collect();
    if waiting.is_empty() {
        Verdict::Ready
    } else {
        Verdict::Waiting(waiting)
    }
}

/// Waits (at most `timeout`) until `project` is ready or failed.
pub async fn wait(client: &Client, project: &str, timeout: Duration) -> Result<ExitCode, CtlError> {
    // Subscribed before the first read: no change falls between them.
    let mut signals = crate::watch::signals_of(&client.conn, client.daemon.as_ref()).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let projects = crate::status::fetch(client).await?;
        let Some(p) = projects.iter().find(|p| p.name == project) else {
            return Err(CtlError::Failed(format!(
                "{project} went down while waiting for it"
            )));
        };
        match judge(&p.services) {
            Verdict::Ready => {
                println!("{project} is ready");
                return Ok(ExitCode::SUCCESS);
            }
            Verdict::Failed(why) => {
                return Err(CtlError::Failed(format!(
                    "{project} did not come up: {}",
                    locald_core::text::sanitize(&why)
                )));
            }
            Verdict::Waiting(which) => {
                let next = tokio::time::timeout_at(deadline, signals.next()).await;
                match next {
                    Ok(Some(_)) => {}
                    // The bus connection ended.
                    Ok(None) => {
                        return Err(CtlError::Failed(format!(
                            "lost the daemon while waiting for {project}"
                        )))
                    }
                    Err(_) => {
                        return Err(CtlError::Failed(format!(
                            "{project} not ready after {}: waiting for {}",
                            humantime::format_duration(timeout),
                            locald_core::text::sanitize(&which.join(", "))
                        )))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, state: &str, has_health: bool, exit_status: i32) -> ServiceInfo {
        ServiceInfo {
            name: name.into(),
            state: state.into(),
            has_health,
            exit_status,
            ..ServiceInfo::default()
        }
    }

    #[test]
    fn ready_means_healthy_or_running_without_a_check_or_done() {
        assert_eq!(
            judge(&[
                svc("web", "healthy", true, -1),
                svc("worker", "running", false, -1),
                svc("migrate", "stopped", false, 0),
            ]),
            Verdict::Ready
        );
        assert_eq!(
            judge(&[
                svc("web", "running", true, -1),
                svc("db", "starting", false, -1)
            ]),
            Verdict::Waiting(vec!["web (running)".into(), "db (starting)".into()])
        );
        assert_eq!(
            judge(&[svc("migrate", "stopped", false, 3)]),
            Verdict::Waiting(vec!["migrate (stopped)".into()])
        );
    }

    #[test]
    fn a_project_read_before_its_services_is_not_ready() {
        assert!(matches!(judge(&[]), Verdict::Waiting(_)));
    }

    #[test]
    fn one_failed_service_fails_the_wait_with_its_reason() {
        let mut db = svc("db", "failed", false, 1);
        db.state_reason = "start limit hit".into();
        assert_eq!(
            judge(&[svc("web", "healthy", true, -1), db]),
            Verdict::Failed("db: start limit hit".into())
        );
    }
}
