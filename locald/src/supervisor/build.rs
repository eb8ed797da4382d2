//! Running a service's build from the supervisor: one build at a time per
//! service, its output tagged as the build phase with a build id, its progress
//! and result reported as events and in the service's `last_build`.
//!
//! A build is a unit of its own (`NAME.build`) with its own process group and
//! cgroup, so stopping a service mid-build leaves nothing of the build behind.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{broadcast, watch, Mutex};

use crate::build::{needs_rebuild_with, BuildError, BuildOptions, Decision, TreeHash};
use crate::config::{BuildSpec, HostBuild, ServiceConfig};
use crate::error_chain;
use crate::event::{BuildRecord, BuildResult, Event, Phase, ServiceSnapshot, Stream};
use crate::output::LogSink;
use crate::runtime::{LaunchSpec, Process, RuntimeSet, Workload};
use locald_core::pipe::{pump, PipeOwner};

/// Builds one service. Cheap to clone; clones share the one-at-a-time lock.
#[derive(Clone)]
pub(crate) struct Builder {
    pub project: Arc<str>,
    /// The project instance's key, under which its processes are recorded.
    pub key: Arc<str>,
    pub service: Arc<str>,
    pub cfg: Arc<ServiceConfig>,
    /// The project directory, where `.locald/` lives.
    pub root: PathBuf,
    pub sink: Arc<dyn LogSink>,
    pub runtime: RuntimeSet,
    pub events: broadcast::Sender<Event>,
    pub snapshot: Arc<watch::Sender<ServiceSnapshot>>,
    pub lock: Arc<Mutex<()>>,
    /// The project's running source watcher, if any.
    pub sources: crate::watch::WatchSlot,
    /// Where a buildpacks build's private scratch lives (`cache`).
    pub paths: Arc<locald_core::paths::Paths>,
    /// The image store buildpacks builds use.
    pub images: crate::runtime::ImageStore,
}

/// A fresh id for a build: 16 hex digits, unique enough to find its lines.
pub(crate) fn new_build_id() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{:016x}", h.finish())
}

impl Builder {
    /// Why this version of locald can never run the service's build, if so:
    /// a permanent error, not one to retry with backoff.
    pub fn unsupported(&self) -> Option<String> {
        self.cfg.build.as_ref().and_then(BuildSpec::unsupported)
    }

    /// Decides whether a build is needed, runs it if so, and returns its
    /// record. The previous artifact stays in place until a build succeeds.
    pub async fn build(&self, force: bool) -> BuildRecord {
        let _one_at_a_time = self.lock.lock().await;
        let build_id = new_build_id();
        let started = SystemTime::now();
        let mut record = BuildRecord {
            build_id: build_id.clone(),
            result: BuildResult::Running,
            reason: "checking sources".into(),
            source_hash: None,
            started_at: started,
            finished_at: None,
        };
        self.publish(&record);
        let outcome = self
            .decide_and_run(force, &build_id, started, &mut record)
            .await;
        record.finished_at = Some(SystemTime::now());
        match outcome {
            Ok(result) => record.result = result,
            Err(reason) => {
                record.result = BuildResult::Failed;
                record.reason = reason;
            }
        }
        self.publish(&record);
        self.sink
            .build_finished(&self.project, &self.service, &record)
            .await;
        let _ = self.events.send(Event::BuildFinished {
            project: self.project.to_string(),
            service: self.service.to_string(),
            record: record.clone(),
        });
        record
    }

    async fn decide_and_run(
        &self,
        force: bool,
        build_id: &str,
        started: SystemTime,
        record: &mut BuildRecord,
    ) -> Result<BuildResult, String> {
        let Some(spec) = self.cfg.build.clone() else {
            return Err("the service has no build".into());
        };
        if let Some(why) = self.unsupported() {
            return Err(why);
        }
        if let BuildSpec::Cnb(cnb) = &spec {
            return self.cnb(cnb, force, build_id, started, record).await;
        }
        self.progress(build_id, 1, 3, "checking sources".into());
        let opts = BuildOptions::new(&self.root, &self.service, spec.clone(), force)
            .map_err(|e| error_chain(&e))?;
        let decision = self
            .decide(&opts, build_id, record, |o, known| {
                needs_rebuild_with(o, None, known)
            })
            .await?;
        if !decision.rebuild() {
            return Ok(BuildResult::Skipped);
        }
        let BuildSpec::Host(host) = &spec else {
            return Err("unsupported build kind".into());
        };
        let staging = opts.service_layout().stage().map_err(|e| error_chain(&e))?;
        self.progress(
            build_id,
            2,
            3,
            format!("running {}", host.command.display()),
        );
        self.host(host, build_id).await?;
        self.progress(build_id, 3, 3, "saving the artifact".into());
        let finished = SystemTime::now();
        tokio::task::spawn_blocking(move || {
            let manifest = decision.manifest(&opts, started, finished)?;
            let files = decision.source.as_ref().map(|s| s.files.as_slice());
            staging.commit(&manifest, files)
        })
        .await
        .map_err(|e| format!("saving the artifact crashed: {e}"))?
        .map_err(|e| format!("cannot save the artifact: {}", error_chain(&e)))?;
        Ok(BuildResult::Succeeded)
    }
}

impl Builder {
    /// Whether `opts`'s service must build: `check` runs off the async
    /// threads, with the project's watcher vouching for an unchanged tree
    /// where it can ([`decide_watched`]); the decision is then recorded in
    /// `record` and announced (daemon log, D-Bus, sinks).
    pub(super) async fn decide<F>(
        &self,
        opts: &BuildOptions,
        build_id: &str,
        record: &mut BuildRecord,
        check: F,
    ) -> Result<Decision, String>
    where
        F: Fn(&BuildOptions, Option<&TreeHash>) -> Result<Decision, BuildError> + Send + 'static,
    {
        let decision = {
            let opts = opts.clone();
            let watch = crate::watch::source_watch(&self.sources);
            tokio::task::spawn_blocking(move || decide_watched(&opts, watch.as_ref(), check))
                .await
                .map_err(|e| format!("source check crashed: {e}"))?
                .map_err(|e| format!("cannot check sources: {}", error_chain(&e)))?
        };
        record.source_hash = decision.source_hash().map(|d| d.to_hex());
        record.reason = decision.to_string();
        tracing::info!(project = %self.project, service = %self.service, build_id, "{}/{}: build {build_id}: {decision}", self.project, self.service);
        self.publish(record);
        self.sink
            .build_started(&self.project, &self.service, record)
            .await;
        Ok(decision)
    }
}

/// [`crate::build::needs_rebuild`], skipping the walk of the sources when the project's
/// file watcher vouches that nothing changed since the last walk this
/// daemon made for the same build (see `watch::SourceWatch`), and
/// remembering the hash of a walk for the next check.
/// `decide` is the check itself, given the hash when it is known.
pub(super) fn decide_watched(
    opts: &BuildOptions,
    watch: Option<&crate::watch::SourceWatch>,
    decide: impl Fn(&BuildOptions, Option<&TreeHash>) -> Result<Decision, BuildError>,
) -> Result<Decision, BuildError> {
    let (Some(watch), Some(scope), false) = (watch, opts.hash_scope(), opts.force) else {
        return decide(opts, None);
    };
    let key = crate::watch::hash_key(
        &opts.service,
        &scope,
        &crate::build::config_hash(&opts.spec, &opts.project_path).to_hex(),
    );
    if let Some(known) = watch.unchanged(&key, &scope) {
        return decide(opts, Some(&known));
    }
    // Taken before the walk: a change made during it is newer than this,
    // so the watcher will not vouch for the result.
    let at = crate::watch::SourceWatch::now();
    let decision = decide(opts, None)?;
    if let Some(tree) = &decision.source {
        watch.remember(key, at, tree.clone());
    }
    Ok(decision)
}

impl Builder {
    pub(super) fn publish(&self, record: &BuildRecord) {
        self.snapshot
            .send_modify(|s| s.last_build = Some(record.clone()));
        let snap = self.snapshot.borrow().clone();
        let _ = self.events.send(Event::ServiceChanged {
            project: self.project.to_string(),
            service: snap,
        });
    }

    pub(super) fn progress(&self, build_id: &str, step: u32, total: u32, label: String) {
        let _ = self.events.send(Event::BuildProgress {
            project: self.project.to_string(),
            service: self.service.to_string(),
            build_id: build_id.to_owned(),
            step,
            total,
            label,
        });
    }

    async fn host(&self, host: &HostBuild, build_id: &str) -> Result<(), String> {
        let mut env = self.cfg.env.clone();
        env.extend(host.env.iter().cloned());
        let workload = Workload::Host {
            argv: host.command.argv(),
        };
        self.run_unit(
            workload,
            env,
            build_id,
            self.sink.clone(),
            &self.cfg.workdir,
        )
        .await
        .map_err(|e| match e {
            UnitError::Start(why) => why,
            UnitError::Exit(status) => format!("build command {status}"),
        })
    }

    /// Runs a build's workload as the unit `NAME.build`, its output tagged
    /// as the build phase into `sink`.
    pub(super) async fn run_unit(
        &self,
        workload: Workload,
        mut env: Vec<(String, String)>,
        build_id: &str,
        sink: Arc<dyn LogSink>,
        cwd: &std::path::Path,
    ) -> Result<(), UnitError> {
        env.push(("LOCALD_PROJECT".into(), self.project.to_string()));
        env.push(("LOCALD_SERVICE".into(), self.service.to_string()));
        env.push(("LOCALD_BUILD_ID".into(), build_id.to_owned()));
        let spec = LaunchSpec {
            project: self.project.to_string(),
            key: self.key.to_string(),
            unit: format!("{}.build", self.service),
            workload,
            cwd: cwd.to_owned(),
            env,
            notify_socket: None,
            notify_ready: false,
            watchdog: None,
            stderr_priority: locald_core::priority::Priority::INFO,
            stop_signal: self.cfg.stop_signal,
            stop_timeout: self.cfg.stop_timeout,
            restarts: 0,
            build_id: Some(build_id.to_owned()),
            progress: crate::runtime::ProgressSink::default(),
        };
        // A host build runs where the service runs: a systemd unit of its
        // own under a user manager (its lines still the build phase).
        let runtime = self
            .runtime
            .for_build(spec.workload.kind(), self.cfg.runtime);
        let proc = runtime
            .spawn(&spec)
            .await
            .map_err(|e| UnitError::Start(error_chain(&e)))?;
        let mut guard = KillOnDrop(Some(proc));
        let Some(proc) = guard.0.as_mut() else {
            return Err(UnitError::Start("build process vanished".into()));
        };
        let owner = PipeOwner {
            project: self.project.clone(),
            service: self.service.clone(),
            phase: Phase::Build,
            pid: Some(proc.pid()),
            build_id: Some(build_id.into()),
            image: proc.image().map(Into::into),
        };
        let mut pumps = Vec::new();
        if let Some(out) = proc.take_stdout() {
            pumps.push(tokio::spawn(pump(
                out,
                owner.clone(),
                Stream::Stdout,
                sink.clone(),
            )));
        }
        if let Some(err) = proc.take_stderr() {
            pumps.push(tokio::spawn(pump(err, owner, Stream::Stderr, sink)));
        }
        let status = proc.wait().await;
        proc.kill().await;
        guard.0 = None;
        // Let the last lines land before the result is announced; a
        // descendant that keeps the pipe open must not hold the build up.
        for p in pumps {
            let _ = tokio::time::timeout(Duration::from_secs(2), p).await;
        }
        if status.success() {
            Ok(())
        } else {
            Err(UnitError::Exit(status))
        }
    }
}

/// Why a build's workload did not succeed.
pub(super) enum UnitError {
    /// It could not be started (the message says why).
    Start(String),
    /// It ended unsuccessfully.
    Exit(crate::runtime::ExitStatus),
}

/// Kills a build's processes if the build future is dropped (the service was
/// stopped mid-build).
struct KillOnDrop(Option<Box<dyn Process>>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut p) = self.0.take() {
            p.kill_now();
            tokio::spawn(async move { p.kill().await });
        }
    }
}
