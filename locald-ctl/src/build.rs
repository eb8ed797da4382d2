//! `build [SERVICE] [--force]`: calls `Build` and, while it runs, draws a
//! progress bar from the daemon's `BuildProgress` signals; when it ends the
//! bar folds into one ✓/✗ line.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use locald_api::{BuildInfo, Error};

use crate::client::{Client, CtlError};

/// One build's outcome as a line: `✓ web built in 3.2s (source changed: …)`,
/// `✓ web: Build up to date`, `✗ web: build failed: …`.
pub fn result_line(service: &str, outcome: &Result<BuildInfo, String>, secs: f64) -> String {
    match outcome {
        // "Build up to date (watched: …)" when the daemon's file watcher
        // vouched for the sources instead of a walk.
        Ok(b) if b.result == "skipped" && b.reason.starts_with("Build up to date (") => {
            format!("✓ {service}: {}", b.reason)
        }
        Ok(b) if b.result == "skipped" => format!("✓ {service}: Build up to date"),
        Ok(b) if b.reason.is_empty() => format!("✓ {service} built in {secs:.1}s"),
        Ok(b) => format!("✓ {service} built in {secs:.1}s ({})", b.reason),
        Err(reason) => format!("✗ {service}: {reason}"),
    }
}

/// The bar for step `step` of `total`.
pub fn bar(service: &str, step: u32, total: u32, label: &str) -> String {
    const WIDTH: u64 = 20;
    let total = total.max(1);
    // In u64: step * WIDTH overflows u32 once step passes u32::MAX / 20.
    let filled = u64::from(step.min(total)) * WIDTH / u64::from(total);
    format!(
        "{service} [{}{}] {step}/{total} {label}",
        "#".repeat(filled as usize),
        "-".repeat((WIDTH - filled) as usize)
    )
}

async fn build_one(
    client: &Client,
    project: &str,
    service: &str,
    force: bool,
    tty: bool,
) -> Result<Result<BuildInfo, String>, Error> {
    // Subscribe before calling so the first step is not missed.
    let mut progress = client.manager.receive_build_progress().await?;
    let mut finished = client.manager.receive_build_finished().await?;
    let started = Instant::now();
    let call = client.manager.build(project, service, force);
    tokio::pin!(call);
    let mut stderr = std::io::stderr();
    let mut outcome = None;
    let mut finished_seen = false;
    // The daemon's reply can overtake its signals (they come from another
    // task); after the reply, wait a little for BuildFinished, which follows
    // every BuildProgress of the build, so no step goes unshown.
    let grace = tokio::time::sleep(Duration::from_secs(3));
    tokio::pin!(grace);
    loop {
        let waiting_for_signals = outcome
            .as_ref()
            .is_some_and(|o: &Result<BuildInfo, Error>| {
                matches!(o, Ok(_) | Err(Error::BuildFailed(_)))
            });
        if outcome.is_some() && (finished_seen || !waiting_for_signals) {
            break;
        }
        tokio::select! {
            biased;
            Some(signal) = progress.next() => {
                let Ok(a) = signal.args() else { continue };
                if a.project() != project || a.service() != service {
                    continue;
                }
                let line = bar(service, *a.step(), *a.total(), a.label());
                if tty {
                    let _ = write!(stderr, "\r\x1b[2K{}", locald_core::text::sanitize(&line));
                    let _ = stderr.flush();
                } else {
                    let _ = writeln!(stderr, "{}", locald_core::text::sanitize(&line));
                }
            }
            Some(signal) = finished.next() => {
                let Ok(a) = signal.args() else { continue };
                if a.project() == project && a.service() == service {
                    finished_seen = true;
                }
            }
            result = &mut call, if outcome.is_none() => {
                outcome = Some(result);
                grace.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(3));
            }
            () = &mut grace, if outcome.is_some() => break,
        }
    }
    if tty {
        let _ = write!(stderr, "\r\x1b[2K");
    }
    let secs = started.elapsed().as_secs_f64();
    let outcome = match outcome {
        Some(Ok(b)) => Ok(b),
        Some(Err(Error::BuildFailed(reason))) => Err(reason),
        Some(Err(e)) => return Err(e),
        None => {
            return Err(Error::ZBus(zbus::Error::Failure(
                "no reply to Build".into(),
            )))
        }
    };
    println!(
        "{}",
        locald_core::text::sanitize(&result_line(service, &outcome, secs))
    );
    Ok(outcome)
}

/// `build [SERVICE] [--force]`.
pub async fn build(
    client: &Client,
    service: Option<String>,
    force: bool,
    pull: bool,
) -> Result<ExitCode, CtlError> {
    let project = client.resolve(None).await?;
    let tty = std::io::stderr().is_terminal();
    let services = crate::status::targets(client, &project, service).await?;
    let (mut failed, mut built) = (0, 0);
    for (service, named) in services {
        if pull {
            match crate::images::pull_one(client, &project, &service, false, tty).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => {
                    failed += 1;
                    continue;
                }
                // A service without images (a host build) has nothing to pull.
                Err(Error::NoImage(_)) => {}
                Err(e) => return Err(CtlError::call(e)),
            }
        }
        match build_one(client, &project, &service, force, tty).await {
            Ok(Ok(_)) => built += 1,
            Ok(Err(_)) => failed += 1,
            // Asked for all: services without a build are not an error.
            Err(Error::NoBuild(_)) if !named => {}
            Err(e) => return Err(CtlError::call(e)),
        }
    }
    if built == 0 && failed == 0 {
        println!("no service of {project} has a build");
    }
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_fold_build_results() {
        let skipped = BuildInfo {
            result: "skipped".into(),
            ..Default::default()
        };
        let ok = BuildInfo {
            result: "succeeded".into(),
            ..Default::default()
        };
        assert_eq!(
            result_line("web", &Ok(skipped), 0.0),
            "✓ web: Build up to date"
        );
        assert_eq!(result_line("web", &Ok(ok), 3.21), "✓ web built in 3.2s");
        let why = BuildInfo {
            result: "succeeded".into(),
            reason: "source changed: 1 file (1 modified), e.g. src/a.rs".into(),
            ..Default::default()
        };
        assert_eq!(
            result_line("web", &Ok(why), 0.5),
            "✓ web built in 0.5s (source changed: 1 file (1 modified), e.g. src/a.rs)"
        );
        assert_eq!(
            result_line("web", &Err("exit status 2".into()), 1.0),
            "✗ web: exit status 2"
        );
    }

    /// `step * 20` overflowed u32 for totals above ~214 million: a panic in
    /// debug builds, a wrapped width (and a huge `repeat`) in release.
    #[test]
    fn bar_with_huge_step_counts_does_not_overflow() {
        let full = format!("w [{}] {m}/{m} x", "#".repeat(20), m = u32::MAX);
        assert_eq!(bar("w", u32::MAX, u32::MAX, "x"), full);
        assert_eq!(
            bar("w", u32::MAX / 2, u32::MAX, "x"),
            format!(
                "w [{}{}] {}/{} x",
                "#".repeat(9),
                "-".repeat(11),
                u32::MAX / 2,
                u32::MAX
            )
        );
    }

    #[test]
    fn bar_fills_with_steps() {
        assert_eq!(
            bar("w", 1, 2, "compile"),
            "w [##########----------] 1/2 compile"
        );
        assert_eq!(bar("w", 5, 0, "x"), format!("w [{}] 5/1 x", "#".repeat(20)));
    }
}
