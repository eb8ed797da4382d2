//! Following a systemd unit's lines in the journal, for the live surfaces
//! (the `LogLine` D-Bus signal that the dashboard, editors and `locald-ctl`
//! show): a service that runs as a transient unit writes to journald itself
//! (through its output forwarder, see the runtime's `unit_exec`), so the
//! daemon reads its lines back instead of copying them.
//!
//! A [`Follower`] runs `journalctl --follow --output=json` for one unit, and
//! only while someone listens to that service ([`LogSink::is_listening`]): a
//! flood nobody watches costs the daemon nothing. Its position is a journal
//! cursor, kept in a file in the runtime directory while it follows, so a
//! follower of the same unit in the next daemon (after `kill -9`, a crash or
//! `systemctl --user restart locald`) starts right after the last line the
//! old one delivered: the lines written while no daemon ran are delivered,
//! and none twice (at most the last 200 ms of lines may come again after a
//! `kill -9`, the interval the cursor is saved at). A follower that stops
//! because its last listener left forgets the cursor; the next one starts
//! from the present, as a fresh subscription should. A listener that is
//! already there when a unit starts (the dashboard watching a service that
//! restarts) gets the unit's lines from its start, also those written
//! before journalctl was running.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::output::LogSink;
use locald_core::task::AbortOnDrop;

/// How often the listener check and the cursor file are refreshed.
const TICK: Duration = Duration::from_millis(200);

/// Whose lines to follow.
#[derive(Debug, Clone)]
pub struct Target {
    /// Project name (as the sink knows it).
    pub project: String,
    /// Service name.
    pub service: String,
    /// The user unit whose lines these are (`_SYSTEMD_USER_UNIT`).
    pub unit: String,
    /// The user running it (`_UID`): another user's unit of the same name is
    /// not ours.
    pub uid: u32,
    /// Where the cursor is kept while following; `None` keeps none.
    pub cursor_file: Option<PathBuf>,
}

/// Where a follower starts.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    /// A unit an earlier daemon followed (adopted): at its saved cursor.
    Resume,
    /// A unit started at this time (just before its start was asked for).
    Fresh(std::time::SystemTime),
}

/// A running follower; dropping it stops it at once.
pub struct Follower {
    finish: Option<oneshot::Sender<Duration>>,
    task: Option<JoinHandle<()>>,
}

impl Follower {
    /// Starts following `target` into `sink` (see [`Start`]).
    pub fn spawn(target: Target, sink: Arc<dyn LogSink>, start: Start) -> Follower {
        let since = match start {
            Start::Resume => None,
            Start::Fresh(at) => {
                // A cursor file left from an earlier unit of the name.
                if let Some(f) = &target.cursor_file {
                    let _ = std::fs::remove_file(f);
                }
                // Someone already listens as the unit starts (a dashboard
                // watching a service that restarts): they get every line
                // of it, also those written before journalctl is running.
                sink.is_listening(&target.project, &target.service)
                    .then_some(at)
            }
        };
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(run(target, sink, rx, since));
        Follower {
            finish: Some(tx),
            task: Some(task),
        }
    }

    /// The unit ended: delivers what journald still has for it (for at most
    /// `drain`, or until it has been quiet for a moment), then stops and
    /// forgets the cursor.
    pub async fn finish(mut self, drain: Duration) {
        if let Some(tx) = self.finish.take() {
            let _ = tx.send(drain);
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(drain + TICK, task).await;
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// What ended one journalctl run.
enum Ended {
    /// Nobody listens any more.
    Unheard,
    /// The unit ended and its lines were delivered.
    Finished,
    /// journalctl exited (or could not start).
    Failed,
}

async fn run(
    target: Target,
    sink: Arc<dyn LogSink>,
    mut finish: oneshot::Receiver<Duration>,
    mut since: Option<std::time::SystemTime>,
) {
    let mut warned = false;
    loop {
        // Wait for a listener; a unit that ends unheard has nothing to drain.
        while !sink.is_listening(&target.project, &target.service) {
            tokio::select! {
                _ = &mut finish => {
                    forget(&target);
                    return;
                }
                () = tokio::time::sleep(TICK) => {}
            }
        }
        // Only the first run starts at the unit's start; a later one (after
        // the listeners left and came back) starts at the present.
        let from = since.take();
        match follow_once(&target, &sink, &mut finish, &mut warned, from).await {
            Ended::Finished => {
                forget(&target);
                return;
            }
            Ended::Unheard => forget(&target),
            Ended::Failed => {
                tokio::select! {
                    _ = &mut finish => {
                        forget(&target);
                        return;
                    }
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

fn forget(target: &Target) {
    if let Some(f) = &target.cursor_file {
        let _ = std::fs::remove_file(f);
    }
}

/// The journalctl arguments that follow `target`: after `cursor`, else
/// from `since`, else from now.
pub fn journalctl_args(
    target: &Target,
    cursor: Option<&str>,
    since: Option<std::time::SystemTime>,
) -> Vec<String> {
    let mut v = vec![
        "--output=json".to_owned(),
        "--all".to_owned(),
        "--no-pager".to_owned(),
        "--follow".to_owned(),
    ];
    match (cursor, since) {
        (Some(c), _) => v.push(format!("--after-cursor={c}")),
        (None, Some(t)) => {
            let us = t
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros();
            v.push(format!("--since=@{}.{:06}", us / 1_000_000, us % 1_000_000));
        }
        (None, None) => v.push("--lines=0".to_owned()),
    }
    v.push(format!("_SYSTEMD_USER_UNIT={}", target.unit));
    v.push(format!("_UID={}", target.uid));
    v
}

async fn follow_once(
    target: &Target,
    sink: &Arc<dyn LogSink>,
    finish: &mut oneshot::Receiver<Duration>,
    warned: &mut bool,
    since: Option<std::time::SystemTime>,
) -> Ended {
    let saved = saved_cursor(target);
    let Some((mut child, stdout, _stderr_task)) =
        spawn_journalctl(target, saved.as_deref(), since, warned)
    else {
        return Ended::Failed;
    };
    let mut lines = BufReader::new(stdout).lines();
    let mut cursor = Cursor {
        at: saved,
        saved_at: Instant::now(),
        dirty: false,
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Set once the unit ended: until then, deliver what is still coming.
    let mut drain_until: Option<Instant> = None;
    let mut last_line = Instant::now();
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Ok(Some(line)) = line else {
                    let _ = child.wait().await;
                    return if drain_until.is_some() { Ended::Finished } else { Ended::Failed };
                };
                last_line = Instant::now();
                deliver(&line, sink, &mut cursor).await;
                if cursor.dirty && cursor.saved_at.elapsed() >= TICK {
                    cursor.save(target);
                }
            }
            drain = &mut *finish, if drain_until.is_none() => {
                let drain = drain.unwrap_or(Duration::ZERO);
                drain_until = Some(Instant::now() + drain);
            }
            _ = tick.tick() => {
                if cursor.dirty {
                    cursor.save(target);
                }
                if let Some(until) = drain_until {
                    // Quiet for a tick, or out of time: what the unit wrote
                    // has arrived.
                    if Instant::now() >= until || last_line.elapsed() >= TICK {
                        return Ended::Finished;
                    }
                } else if !sink.is_listening(&target.project, &target.service) {
                    return Ended::Unheard;
                }
            }
        }
    }
}

/// Where following has got to: the last entry's cursor, and whether it was
/// kept since.
struct Cursor {
    at: Option<String>,
    saved_at: Instant,
    dirty: bool,
}

impl Cursor {
    fn save(&mut self, target: &Target) {
        save(target, self.at.as_deref());
        self.saved_at = Instant::now();
        self.dirty = false;
    }
}

/// The cursor a follower of `target` kept last, if any.
fn saved_cursor(target: &Target) -> Option<String> {
    target.cursor_file.as_ref().and_then(|f| {
        crate::fsutil::read_state(f, 4096)
            .ok()
            .flatten()
            .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
            .filter(|c| !c.is_empty() && !c.contains('\n'))
    })
}

/// Starts `journalctl --follow` for `target` from `cursor` (else `since`,
/// else now); what it complains about (no access to the journal files)
/// goes to the daemon's log once (`warned`).
fn spawn_journalctl(
    target: &Target,
    cursor: Option<&str>,
    since: Option<std::time::SystemTime>,
    warned: &mut bool,
) -> Option<(
    tokio::process::Child,
    tokio::process::ChildStdout,
    AbortOnDrop,
)> {
    let mut child = match tokio::process::Command::new("journalctl")
        .args(journalctl_args(target, cursor, since))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            if !*warned {
                *warned = true;
                tracing::warn!(
                    project = %target.project,
                    service = %target.service,
                    "cannot run journalctl to follow {}: {e}; its live output is not shown (it is in the journal)",
                    target.unit
                );
            }
            return None;
        }
    };
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return None;
    };
    let (project, service, unit) = (
        target.project.clone(),
        target.service.clone(),
        target.unit.clone(),
    );
    let complain = *warned;
    let stderr_task = AbortOnDrop(tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut said = complain;
        while let Ok(Some(l)) = lines.next_line().await {
            if !said && !l.trim().is_empty() {
                said = true;
                tracing::warn!(project = %project, service = %service, "journalctl following {unit}: {l}");
            }
        }
    }));
    *warned = true;
    Some((child, stdout, stderr_task))
}

/// One `journalctl --output=json` line: its cursor noted, its line sent.
async fn deliver(line: &str, sink: &Arc<dyn LogSink>, cursor: &mut Cursor) {
    let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
        return;
    };
    if let Some(c) = entry.get("__CURSOR").and_then(|c| c.as_str()) {
        cursor.at = Some(c.to_owned());
        cursor.dirty = true;
    }
    if let Some(l) = crate::journal::entry::entry_to_line(&entry) {
        sink.write(&l).await;
    }
}

fn save(target: &Target, cursor: Option<&str>) {
    if let (Some(f), Some(c)) = (&target.cursor_file, cursor) {
        if let Err(e) = crate::fsutil::write_atomic(f, c.as_bytes()) {
            tracing::debug!("cannot keep the journal cursor of {}: {e}", target.unit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_unit_of_this_user_from_a_cursor_or_now() {
        let t = Target {
            project: "shop".into(),
            service: "web".into(),
            unit: "locald-shop-web.service".into(),
            uid: 1000,
            cursor_file: None,
        };
        let now = journalctl_args(&t, None, None);
        assert!(now.contains(&"--lines=0".to_owned()));
        assert!(now.contains(&"_SYSTEMD_USER_UNIT=locald-shop-web.service".to_owned()));
        assert!(now.contains(&"_UID=1000".to_owned()));
        let after = journalctl_args(&t, Some("s=abc;i=1"), Some(std::time::UNIX_EPOCH));
        assert!(after.contains(&"--after-cursor=s=abc;i=1".to_owned()));
        assert!(!after.contains(&"--lines=0".to_owned()));
        assert!(!after.iter().any(|a| a.starts_with("--since")));
        let start = std::time::UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_042);
        let from_start = journalctl_args(&t, None, Some(start));
        assert!(from_start.contains(&"--since=@1700000000.000042".to_owned()));
    }
}
