//! A scripted runtime for the state machine's tests: each spawn takes the
//! next [`Behavior`] from a script (including the [`ProcessEvent`]s a real
//! runtime would send: notices, a watchdog timeout, a stop from outside), an
//! adoption takes the next scripted [`Adopt`], and every call is recorded
//! with the (tokio) time it happened at. With tokio's paused clock, backoff, start
//! limits, stop escalation and dependency order are tested in milliseconds
//! of real time and cannot flake. Real processes stay in the integration
//! tests.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use nix::sys::signal::Signal;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{
    Adopted, ExitStatus, LaunchSpec, Output, Process, ProcessEvent, Runtime, RuntimeError,
};
use crate::lock;
use crate::output::BoxFuture;

/// What one spawned workload does.
#[derive(Debug, Clone)]
pub(crate) enum Behavior {
    /// Sends each event after its delay (from the previous one); an end
    /// event ends it, else it serves until stopped (ending at once on the
    /// stop signal).
    Events(Vec<(Duration, ProcessEvent)>),
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
    Adopt(String),
    Stop(String, Signal, Duration),
    Kill(String),
}

/// A workload an earlier daemon left running, for [`Runtime::adopt`].
#[derive(Debug, Clone)]
pub(crate) struct Adopt {
    pub behavior: Behavior,
    pub history: Option<(u32, SystemTime)>,
}

#[derive(Default)]
struct Shared {
    script: VecDeque<Behavior>,
    adoptable: VecDeque<Adopt>,
    enforces_watchdog: bool,
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

    /// The next adoption finds `adopt` running.
    pub(crate) fn adoptable(self, adopt: Adopt) -> Self {
        lock(&self.shared).adoptable.push_back(adopt);
        self
    }

    /// The runtime times the watchdog itself (as systemd does).
    pub(crate) fn enforcing_watchdog(self) -> Self {
        lock(&self.shared).enforces_watchdog = true;
        self
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

impl FakeRuntime {
    /// A running workload doing `behavior`: its end (and scripted events)
    /// played by a task on tokio's clock.
    fn process(&self, unit: &str, pid: u32, behavior: Behavior) -> FakeProcess {
        let (exit_tx, exit_rx) = watch::channel(None);
        let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
        match &behavior {
            Behavior::Exit { after, code } => {
                let (tx, after, code) = (exit_tx.clone(), *after, *code);
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    tx.send_if_modified(|e| {
                        e.get_or_insert(ProcessEvent::Exited(ExitStatus::Exited(code)));
                        true
                    });
                });
            }
            Behavior::Events(script) => {
                let (tx, script) = (exit_tx.clone(), script.clone());
                tokio::spawn(async move {
                    for (after, ev) in script {
                        tokio::time::sleep(after).await;
                        if ev.end_status().is_some() {
                            tx.send_if_modified(|e| {
                                e.get_or_insert(ev);
                                true
                            });
                            return;
                        }
                        if events_tx.send(ev).is_err() {
                            return;
                        }
                    }
                });
            }
            _ => {}
        }
        FakeProcess {
            rt: self.clone(),
            unit: unit.to_owned(),
            pid,
            behavior,
            events,
            exit_tx,
            exit_rx,
        }
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
            Ok(Box::new(self.process(&spec.unit, pid, behavior)) as Box<dyn Process>)
        })
    }

    fn adopt<'a>(&'a self, spec: &'a LaunchSpec) -> BoxFuture<'a, Option<Adopted>> {
        Box::pin(async move {
            let adopt = {
                let mut s = lock(&self.shared);
                s.next_pid += 1;
                s.adoptable.pop_front().map(|a| (a, 1000 + s.next_pid))
            };
            let (adopt, pid) = adopt?;
            self.record(Call::Adopt(spec.unit.clone()));
            Some(Adopted {
                process: Box::new(self.process(&spec.unit, pid, adopt.behavior)),
                history: adopt.history,
            })
        })
    }

    fn name(&self) -> &'static str {
        "fake"
    }

    fn enforces_watchdog(&self) -> bool {
        lock(&self.shared).enforces_watchdog
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
    /// Scripted events that are not the end.
    events: tokio::sync::mpsc::UnboundedReceiver<ProcessEvent>,
    exit_tx: watch::Sender<Option<ProcessEvent>>,
    exit_rx: watch::Receiver<Option<ProcessEvent>>,
}

impl FakeProcess {
    fn end(&self, status: ExitStatus) {
        self.exit_tx.send_if_modified(|e| {
            if e.is_none() {
                *e = Some(ProcessEvent::Exited(status));
                true
            } else {
                false
            }
        });
    }
}

impl FakeProcess {
    async fn end_event(&self) -> ProcessEvent {
        let mut rx = self.exit_rx.clone();
        let end = match rx.wait_for(Option::is_some).await {
            Ok(e) => e.clone(),
            Err(_) => None,
        };
        end.unwrap_or(ProcessEvent::Exited(ExitStatus::Exited(-1)))
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
            let end = self.end_event().await;
            end.end_status().unwrap_or(ExitStatus::Exited(-1))
        })
    }

    fn next_event(&mut self) -> BoxFuture<'_, ProcessEvent> {
        Box::pin(async move {
            if self.exit_rx.borrow().is_none() {
                tokio::select! {
                    biased;
                    Some(ev) = self.events.recv() => return ev,
                    _ = self.exit_rx.changed() => {}
                }
            }
            self.end_event().await
        })
    }

    fn stop(&mut self, signal: Signal, timeout: Duration) -> BoxFuture<'_, ExitStatus> {
        Box::pin(async move {
            self.rt
                .record(Call::Stop(self.unit.clone(), signal, timeout));
            let grace = match &self.behavior {
                Behavior::Serve { grace } => *grace,
                Behavior::Events(_) => Some(Duration::ZERO),
                _ => None,
            };
            if let Some(g) = grace {
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
