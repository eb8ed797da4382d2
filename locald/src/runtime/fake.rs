//! A scripted runtime for the state machine's tests: each spawn takes the
//! next [`Behavior`] from a script, and every call is recorded with the
//! (tokio) time it happened at. With tokio's paused clock, backoff, start
//! limits, stop escalation and dependency order are tested in milliseconds
//! of real time and cannot flake. Real processes stay in the integration
//! tests.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{ExitStatus, LaunchSpec, Output, Process, Runtime, RuntimeError};
use crate::lock;
use crate::output::BoxFuture;

/// What one spawned workload does.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Behavior {
    /// Exits with `code` after `after`.
    Exit { after: Duration, code: i32 },
    /// Runs until stopped; on the stop signal it exits after `grace`, or
    /// never (`None`: only SIGKILL ends it).
    Serve { grace: Option<Duration> },
    /// `spawn` fails as exec would with this error.
    FailSpawn(std::io::ErrorKind),
    /// `spawn` fails as fork or exec would with this errno (`EMFILE`).
    FailSpawnErrno(i32),
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Call {
    Spawn(String),
    Stop(String, Signal, Duration),
    Kill(String),
}

#[derive(Default)]
struct Shared {
    script: VecDeque<Behavior>,
    calls: Vec<(Instant, Call)>,
    next_pid: u32,
}

/// The scripted runtime. Without a script entry a spawn serves until stopped.
#[derive(Clone, Default)]
pub(crate) struct FakeRuntime {
    shared: Arc<Mutex<Shared>>,
}

impl FakeRuntime {
    pub(crate) fn new(script: impl IntoIterator<Item = Behavior>) -> Self {
        let rt = FakeRuntime::default();
        lock(&rt.shared).script = script.into_iter().collect();
        rt
    }

    /// Every call so far, with when it happened.
    pub(crate) fn calls(&self) -> Vec<(Instant, Call)> {
        lock(&self.shared).calls.clone()
    }

    /// When each spawn of `unit` happened.
    pub(crate) fn spawns(&self, unit: &str) -> Vec<Instant> {
        self.calls()
            .into_iter()
            .filter(|(_, c)| *c == Call::Spawn(unit.into()))
            .map(|(t, _)| t)
            .collect()
    }

    fn record(&self, call: Call) {
        lock(&self.shared).calls.push((Instant::now(), call));
    }
}

impl Runtime for FakeRuntime {
    fn spawn<'a>(
        &'a self,
        spec: &'a LaunchSpec,
    ) -> BoxFuture<'a, Result<Box<dyn Process>, RuntimeError>> {
        Box::pin(async move {
            let (behavior, pid) = {
                let mut s = lock(&self.shared);
                s.next_pid += 1;
                let b = s.script.pop_front().unwrap_or(Behavior::Serve {
                    grace: Some(Duration::ZERO),
                });
                (b, 1000 + s.next_pid)
            };
            self.record(Call::Spawn(spec.unit.clone()));
            let failed = match behavior {
                Behavior::FailSpawn(kind) => Some(std::io::Error::from(kind)),
                Behavior::FailSpawnErrno(n) => Some(std::io::Error::from_raw_os_error(n)),
                _ => None,
            };
            if let Some(source) = failed {
                return Err(RuntimeError::Spawn {
                    program: spec.workload.describe(),
                    source,
                });
            }
            let (exit_tx, exit_rx) = watch::channel(None);
            if let Behavior::Exit { after, code } = behavior {
                let tx = exit_tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    tx.send_if_modified(|e| {
                        e.get_or_insert(ExitStatus::Exited(code));
                        true
                    });
                });
            }
            Ok(Box::new(FakeProcess {
                rt: self.clone(),
                unit: spec.unit.clone(),
                pid,
                behavior,
                exit_tx,
                exit_rx,
            }) as Box<dyn Process>)
        })
    }

    fn clean_stale<'a>(&'a self, _key: &'a str, _unit: &'a str) -> BoxFuture<'a, usize> {
        Box::pin(std::future::ready(0))
    }

    fn sweep_abandoned(&self) -> BoxFuture<'_, usize> {
        Box::pin(std::future::ready(0))
    }

    fn kill_all(&self) {}
}

struct FakeProcess {
    rt: FakeRuntime,
    unit: String,
    pid: u32,
    behavior: Behavior,
    exit_tx: watch::Sender<Option<ExitStatus>>,
    exit_rx: watch::Receiver<Option<ExitStatus>>,
}

impl FakeProcess {
    fn end(&self, status: ExitStatus) {
        self.exit_tx.send_if_modified(|e| {
            if e.is_none() {
                *e = Some(status);
                true
            } else {
                false
            }
        });
    }
}

impl Process for FakeProcess {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn take_stdout(&mut self) -> Option<Output> {
        Some(Box::pin(tokio::io::empty()))
    }

    fn take_stderr(&mut self) -> Option<Output> {
        Some(Box::pin(tokio::io::empty()))
    }

    fn wait(&mut self) -> BoxFuture<'_, ExitStatus> {
        Box::pin(async move {
            let mut rx = self.exit_rx.clone();
            let status = match rx.wait_for(Option::is_some).await {
                Ok(e) => e.unwrap_or(ExitStatus::Exited(-1)),
                Err(_) => ExitStatus::Exited(-1),
            };
            status
        })
    }

    fn stop(&mut self, signal: Signal, timeout: Duration) -> BoxFuture<'_, ExitStatus> {
        Box::pin(async move {
            self.rt
                .record(Call::Stop(self.unit.clone(), signal, timeout));
            if let Behavior::Serve { grace: Some(g) } = self.behavior {
                if g <= timeout {
                    tokio::time::sleep(g).await;
                    self.end(ExitStatus::Signaled(signal as i32));
                    return self.wait().await;
                }
            }
            if matches!(self.behavior, Behavior::Exit { .. }) {
                self.end(ExitStatus::Signaled(signal as i32));
                return self.wait().await;
            }
            tokio::time::sleep(timeout).await;
            self.end(ExitStatus::Signaled(Signal::SIGKILL as i32));
            self.wait().await
        })
    }

    fn kill(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.rt.record(Call::Kill(self.unit.clone()));
            self.end(ExitStatus::Signaled(Signal::SIGKILL as i32));
        })
    }

    fn kill_now(&self) {
        self.end(ExitStatus::Signaled(Signal::SIGKILL as i32));
    }
}
