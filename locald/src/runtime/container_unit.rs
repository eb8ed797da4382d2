//! Image services as systemd transient user units: the container's
//! `locald-shim run` is the unit's main process.
//!
//! Under a user manager an image service becomes
//! `locald-<project>-<service>.service` like a host service: the unit starts
//! as `locald internal-unit-exec` (the output forwarder, with
//! `LOCALD_IMAGE` added), which execs `locald-shim run --bundle B ID`; the
//! shim runs runc, runc the container. So the container outlives a daemon
//! restart (the next daemon adopts the unit, as for a host service),
//! `systemctl --user stop` stops it, and `systemctl --user status` and
//! `list-units` show it.
//!
//! What systemd does not get is the container's cgroup: `locald-shim`
//! places every container in `/locald-shim/u<uid>/<id>`, a root-owned tree
//! of its own, whatever the caller's cgroup is. The unit's cgroup holds
//! the forwarder, the shim and runc (which runs as root, so the user's
//! manager cannot signal it). Stopping therefore goes through the shim:
//!
//! - locald stops the container with `locald-shim kill` (its stop signal,
//!   then `KILL` after the timeout), as for a container it runs itself;
//! - a stop by hand uses `KillMode=mixed`: the stop signal (the service's,
//!   else the image's `StopSignal`, if it is one the shim hands on) goes to
//!   the unit's main process, the shim, which hands it to runc and runc to
//!   the container; the final `SIGKILL` reaches only what the user may
//!   signal;
//! - `ExecStopPost=locald-shim delete --force ID` runs however the unit
//!   ended (also after a `SIGKILL` of the shim, or with no daemon at all),
//!   so no container outlives its unit.
//!
//! Accounting (CPU, memory) of the unit is therefore the shim's, not the
//! container's; docs/systemd.md says so. Buildpacks builds stay children
//! of locald: their phase banners are read from the output as it arrives.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;

use super::container::{
    container_status, exec_prefix, image_stop_signal, kill_detached, stop_through_shim,
    wait_for_init, ContainerRuntime, Lease, Prepared, PreparedImage,
};
use super::systemd::{SystemdRuntime, UnitCommand, UnitProcess};
use super::{
    Adopted, ExitStatus, LaunchSpec, Output, Process, ProcessEvent, Runtime, RuntimeError, Workload,
};
use crate::lock;
use crate::output::BoxFuture;
use crate::shim_client::ShimClient;

/// Runs image workloads as units of the user's systemd manager.
pub struct ContainerUnitRuntime {
    containers: Arc<ContainerRuntime>,
    systemd: Arc<SystemdRuntime>,
    /// Ids of containers in units started or adopted here.
    live: Arc<Mutex<HashSet<String>>>,
}

impl ContainerUnitRuntime {
    /// Containers prepared by `containers`, run in units of `systemd`.
    pub fn new(containers: Arc<ContainerRuntime>, systemd: Arc<SystemdRuntime>) -> Self {
        ContainerUnitRuntime {
            containers,
            systemd,
            live: Arc::default(),
        }
    }

    async fn start(&self, spec: &LaunchSpec) -> Result<Box<dyn Process>, RuntimeError> {
        let Prepared {
            id,
            dir: _,
            bundle,
            image,
        } = self.containers.prepare(spec).await?;
        let shim = self.containers.shim().clone();
        let stop_signal = image_stop_signal(image.stop_signal.as_deref());
        let shim_path = shim.path().to_string_lossy().into_owned();
        let cmd = UnitCommand {
            program: shim_path.clone(),
            argv: vec![
                shim.path().as_os_str().to_owned(),
                "run".into(),
                "--bundle".into(),
                bundle.into_os_string(),
                "--id".into(),
                id.clone().into(),
            ],
            arg0: None,
            // Everything the container sees is in its bundle.
            env: Vec::new(),
            // The container talks to locald's notify socket (bound into it),
            // not to the unit's, which only the shim could reach.
            notify_ready: false,
            watchdog: None,
            kill_mode: "mixed",
            kill_signal: hand_stop_signal(spec.stop_signal.unwrap_or(stop_signal)),
            stop_timeout: spec.stop_timeout,
            stop_post: Some(vec![
                shim_path,
                "delete".into(),
                "--id".into(),
                id.clone(),
                "--force".into(),
            ]),
            image: Some(image.digest.clone()),
        };
        let unit = match self.systemd.start_unit(spec, cmd).await {
            Ok(u) => u,
            Err(e) => {
                self.containers.remove_container(&id).await;
                return Err(e);
            }
        };
        Ok(Box::new(self.process(unit, id, image).await))
    }

    /// The process of container `id` from `image` in `unit`, once runc has
    /// made the container.
    async fn process(
        &self,
        unit: UnitProcess,
        id: String,
        image: PreparedImage,
    ) -> ContainerUnitProcess {
        let pid = wait_for_init(unit.pid()).await;
        lock(&self.live).insert(id.clone());
        ContainerUnitProcess {
            unit,
            containers: self.containers.clone(),
            shim: self.containers.shim().clone(),
            id,
            pid,
            stop_signal: image_stop_signal(image.stop_signal.as_deref()),
            image: image.digest,
            live: self.live.clone(),
            _lease: image.lease,
        }
    }

    async fn adopt_container(&self, spec: &LaunchSpec) -> Option<Adopted> {
        let Workload::Image { reference, .. } = &spec.workload else {
            return None;
        };
        let id = super::container::container_id(&spec.key, &spec.unit);
        let recorded = self.containers.recorded_image(&id)?;
        let mut unit = self.systemd.adopt_unit(spec, false).await?;
        // The reference may name another image by now (a tag moved, a new
        // layout): then the running container is not what would start.
        let image = match self.containers.image(reference, &spec.cwd).await {
            Ok(i) if i.digest == recorded => i,
            Ok(i) => {
                tracing::info!(
                    "{reference} is {} now, the running container has {recorded}: restarting it",
                    i.digest
                );
                unit.release().await;
                return None;
            }
            Err(e) => {
                tracing::warn!("cannot prepare {reference} for the running container: {e}");
                unit.release().await;
                return None;
            }
        };
        let history = unit.history();
        Some(Adopted {
            process: Box::new(self.process(unit, id, image).await),
            history,
        })
    }
}

/// The signal a stop by hand (`systemctl --user stop`) sends the unit's
/// main process, the shim: `stop` if the shim hands it on to the container
/// (the signals `locald-shim run` forwards), `SIGKILL` as it is (the shim
/// dies and `ExecStopPost` deletes the container), else `SIGTERM` — any
/// other signal would kill or stop the shim, not reach the container.
fn hand_stop_signal(stop: Signal) -> Signal {
    use Signal::*;
    match stop {
        SIGINT | SIGTERM | SIGHUP | SIGQUIT | SIGUSR1 | SIGUSR2 | SIGWINCH | SIGKILL => stop,
        _ => SIGTERM,
    }
}

impl Runtime for ContainerUnitRuntime {
    fn spawn<'a>(
        &'a self,
        spec: &'a LaunchSpec,
    ) -> BoxFuture<'a, Result<Box<dyn Process>, RuntimeError>> {
        Box::pin(self.start(spec))
    }

    fn adopt<'a>(&'a self, spec: &'a LaunchSpec) -> BoxFuture<'a, Option<Adopted>> {
        Box::pin(self.adopt_container(spec))
    }

    fn name(&self) -> &'static str {
        "systemd"
    }

    // What is left of a container unit is a container and a unit: the
    // container kind (before the systemd kind in `RuntimeSet`, so the
    // container ends before its shim's unit is stopped) and the systemd
    // kind clean those up.
    fn clean_stale<'a>(&'a self, _key: &'a str, _unit: &'a str) -> BoxFuture<'a, usize> {
        Box::pin(std::future::ready(0))
    }

    fn sweep_abandoned(&self) -> BoxFuture<'_, usize> {
        Box::pin(std::future::ready(0))
    }

    fn kill_all(&self) {
        for id in lock(&self.live).iter() {
            kill_detached(self.containers.shim(), id);
        }
    }
}

/// A container running in its unit.
struct ContainerUnitProcess {
    unit: UnitProcess,
    containers: Arc<ContainerRuntime>,
    shim: ShimClient,
    id: String,
    /// The container's init as the host sees it.
    pid: u32,
    image: String,
    stop_signal: Signal,
    live: Arc<Mutex<HashSet<String>>>,
    /// Keeps the rootfs from being pruned while the container runs.
    _lease: Lease,
}

impl Process for ContainerUnitProcess {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn take_stdout(&mut self) -> Option<Output> {
        None
    }

    fn take_stderr(&mut self) -> Option<Output> {
        None
    }

    fn wait(&mut self) -> BoxFuture<'_, ExitStatus> {
        Box::pin(async move { container_status(self.unit.wait().await) })
    }

    fn stop(&mut self, signal: Signal, timeout: Duration) -> BoxFuture<'_, ExitStatus> {
        Box::pin(async move {
            self.unit.expect_stop();
            let (shim, id) = (self.shim.clone(), self.id.clone());
            let grace = timeout + Duration::from_secs(5);
            let stop = stop_through_shim(self, &shim, &id, signal, timeout);
            match tokio::time::timeout(grace, stop).await {
                Ok(status) => status,
                // runc never made the container (nothing to kill by id):
                // the unit's SIGKILL ends the shim, ExecStopPost the rest.
                Err(_) => {
                    self.unit.kill_now();
                    self.wait().await
                }
            }
        })
    }

    fn kill(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.unit.expect_stop();
            // Gone already unless the shim died before it; then runc (root)
            // keeps it alive and only the shim can end it.
            let mut gone = false;
            for _ in 0..5 {
                let _ = self.shim.delete(&self.id, true).await;
                if self.shim.state(&self.id).await.is_err() {
                    gone = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            self.unit.kill().await;
            if gone {
                self.containers.remove_container(&self.id).await;
            } else {
                // Its files stay under a container that may still run; the
                // next start (or the sweep) deletes it by id first.
                tracing::warn!(
                    "container {} did not go away; left for the next start",
                    self.id
                );
            }
            lock(&self.live).remove(&self.id);
        })
    }

    fn kill_now(&self) {
        kill_detached(&self.shim, &self.id);
        self.unit.kill_now();
    }

    fn image(&self) -> Option<&str> {
        Some(&self.image)
    }

    fn stop_signal(&self) -> Signal {
        self.stop_signal
    }

    fn probe_prefix(&self) -> Option<Vec<String>> {
        Some(exec_prefix(&self.shim, &self.id))
    }

    fn next_event(&mut self) -> BoxFuture<'_, ProcessEvent> {
        // READY=1 and STATUS= reach locald's own socket (bound into the
        // container); from the unit only its end matters, and whether
        // someone else stopped it.
        Box::pin(async move {
            let status = self.wait().await;
            if self.unit.stopped_outside() {
                ProcessEvent::StoppedOutside(status)
            } else {
                ProcessEvent::Exited(status)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_stop_sends_only_what_the_shim_hands_on() {
        assert_eq!(hand_stop_signal(Signal::SIGQUIT), Signal::SIGQUIT);
        assert_eq!(hand_stop_signal(Signal::SIGINT), Signal::SIGINT);
        assert_eq!(hand_stop_signal(Signal::SIGKILL), Signal::SIGKILL);
        // These would stop or kill the shim itself.
        assert_eq!(hand_stop_signal(Signal::SIGPWR), Signal::SIGTERM);
        assert_eq!(hand_stop_signal(Signal::SIGSTOP), Signal::SIGTERM);
        assert_eq!(hand_stop_signal(Signal::SIGALRM), Signal::SIGTERM);
    }
}
