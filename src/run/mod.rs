//! Runs a planned job from start to record: stage the inputs, start one container per host
//! on the job's own network, stream its output, enforce stops (shutdown, max runtime) with
//! SIGTERM → grace → SIGKILL, collect and upload the artifacts, and keep the record current
//! at every step. A failed or stopped job is a [`JobOutcome`]; `Err` means smlocal itself
//! could not do its part.

use crate::cache::{Cache, Progress};
use crate::checkpoints::{self, Syncer};

use crate::docker::{ContainerSpec, Docker, DockerError, Exit, HOME_LABEL, JOB_LABEL};
use crate::job::{HostPlan, Job};
use crate::logs::{self, LogSink};
use crate::metrics::{self, Recorder};
use crate::relay::Relay;
use crate::resources::human_bytes;
use crate::stage::ChannelMount;
use crate::stage::{self, StageError};
use crate::state::record::MetricData;
use crate::state::record::{Record, Status};
use crate::state::{StateDir, StateError};
use crate::storage::{self, StorageError};
use futures::StreamExt;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The first 1024 characters of `/opt/ml/output/failure` become `FailureReason`.
const FAILURE_REASON_CHARS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    StateDir(#[from] StateError),
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error(
        "{0} already exists: another job wrote its results there, and smlocal never overwrites them. Use a new TrainingJobName or another S3OutputPath"
    )]
    OutputExists(String),
    #[error("cannot prepare the job folder '{}': {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone)]
pub struct RunOptions {
    /// Time between SIGTERM and SIGKILL when a job is stopped.
    pub stop_grace: Duration,
    /// Leave containers, the network and work folders in place for debugging.
    pub keep: bool,
    /// Give the containers this process's AWS credentials (off unless the user asks).
    pub pass_credentials: bool,
    pub log: LogSink,
    /// Replay a spot interruption this long after training starts (once).
    pub interrupt_after: Option<Duration>,
    /// How often checkpoints are synced to `CheckpointConfig.S3Uri` while training.
    pub checkpoint_interval: Duration,
    /// Give containers instance-like host names (`ip-10-0-1-11`) instead of `algo-N`, as
    /// SageMaker's instances have; peers still resolve each other as `algo-N`.
    pub instance_hostnames: bool,
    /// Called with each host's name and container ID once it has started.
    pub on_start: Option<StartHook>,
    /// Staging's byte counters, for a progress display.
    pub progress: Arc<Progress>,
}

/// See [`RunOptions::on_start`].
pub type StartHook = Arc<dyn Fn(&str, &str) + Send + Sync>;

impl RunOptions {
    /// What `smlocal train` uses unless told otherwise.
    pub fn new(log: LogSink) -> Self {
        RunOptions {
            stop_grace: Duration::from_secs(120),
            keep: false,
            pass_credentials: false,
            log,
            interrupt_after: None,
            checkpoint_interval: Duration::from_secs(5),
            instance_hostnames: false,
            on_start: None,
            progress: Arc::default(),
        }
    }
}

/// How a job ended, for the caller to report and turn into an exit code.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    pub record: Record,
    /// True when the stop came from the shutdown signal (Ctrl-C), not from the job itself.
    pub interrupted: bool,
    pub elapsed: Duration,
    /// Where the artifacts were left when they could not be uploaded.
    pub kept_artifacts: Option<PathBuf>,
    /// Hosts that ignored SIGTERM until SIGKILL ended them.
    pub sigkilled: Vec<String>,
}

/// Why the containers were asked to stop.
#[derive(Debug, Clone, Copy, PartialEq)]
enum StopCause {
    /// Ctrl-C or SIGTERM to smlocal.
    Shutdown,
    /// `smlocal stop` from another process.
    Requested,
    MaxRuntime,
    /// A replayed spot interruption (`--interrupt-after`): the job restarts.
    Interrupted,
}

impl StopCause {
    fn message(self) -> &'static str {
        match self {
            StopCause::Shutdown | StopCause::Requested | StopCause::Interrupted => "Stopping the training job",
            StopCause::MaxRuntime => "Stopping the training job: MaxRuntimeInSeconds exceeded",
        }
    }
}

/// Each host's container exit, tagged with the host's index.
type Waits = futures::stream::FuturesUnordered<
    std::pin::Pin<Box<dyn std::future::Future<Output = (usize, Result<Exit, DockerError>)> + Send>>,
>;

/// How often a running job looks for a stop requested by `smlocal stop`.
const STOP_POLL: Duration = Duration::from_millis(200);

pub async fn run(
    job: &Job,
    store: &StateDir,
    docker: &Docker,
    options: &RunOptions,
    shutdown: CancellationToken,
) -> Result<JobOutcome, RunError> {
    let started = Instant::now();
    let record = admit(job, store, docker).await?;
    run_admitted(job, record, store, docker, options, shutdown, started).await
}

/// What CreateTrainingJob does before it answers: the image must be here and the output
/// must not be taken; then the name is reserved, the first record written and this process
/// named as the job's runner. Returns the record for [`run_admitted`].
pub async fn admit(job: &Job, store: &StateDir, docker: &Docker) -> Result<Record, RunError> {
    docker.ensure_image(&job.image).await?;
    if store.job_dir(&job.name).exists() {
        return Err(StateError::ResourceInUse { arn: job.arn.clone() }.into());
    }
    let model_uri = job.model_artifacts_uri();
    if storage::exists(&model_uri).await? {
        return Err(RunError::OutputExists(model_uri));
    }
    let record = Record::new(&job.name, &job.arn, &model_uri, &job.request.raw);
    store.create(&record)?;
    store.claim(&job.name)?;
    Ok(record)
}

/// Runs a job [`admit`] accepted, to its end. `started` is when the caller began (for
/// [`JobOutcome::elapsed`]).
pub async fn run_admitted(
    job: &Job,
    mut record: Record,
    store: &StateDir,
    docker: &Docker,
    options: &RunOptions,
    shutdown: CancellationToken,
    started: Instant,
) -> Result<JobOutcome, RunError> {
    let dir = store.job_dir(&job.name);
    let result = match std::fs::canonicalize(&dir) {
        Ok(dir) => {
            let mut run = Running {
                job,
                store,
                docker,
                options,
                dir,
                containers: Vec::new(),
                network: None,
                volumes: Vec::new(),
                sigkilled: Vec::new(),
                relay: None,
            };
            let stop_requested = CancellationToken::new();
            let watcher = tokio::spawn(watch_for_stop(store.clone(), job.name.clone(), stop_requested.clone()));
            let result = run.drive(&mut record, &shutdown, &stop_requested, started).await;
            watcher.abort();
            run.clean_up(&result).await;
            result
        }
        Err(source) => Err(RunError::Io { path: dir, source }),
    };
    if let Err(e) = &result {
        // The record must not stay InProgress when smlocal itself failed.
        if !record.training_job_status.is_terminal() {
            record.finish(Status::Failed, "Failed", "Training job failed", Some(format!("InternalServerError: {e}")));
            let _ = store.save(&record);
        }
    }
    result
}

struct Running<'a> {
    job: &'a Job,
    store: &'a StateDir,
    docker: &'a Docker,
    options: &'a RunOptions,
    dir: PathBuf,
    containers: Vec<(String, String)>,
    network: Option<String>,
    /// Overlay volumes: (host, volume, where it is mounted).
    volumes: Vec<(String, String, String)>,
    sigkilled: Vec<String>,
    /// Forwards the containers' S3 traffic to an endpoint on this machine's loopback.
    relay: Option<Relay>,
}

impl Running<'_> {
    async fn drive(
        &mut self,
        record: &mut Record,
        shutdown: &CancellationToken,
        stop_requested: &CancellationToken,
        started: Instant,
    ) -> Result<JobOutcome, RunError> {
        let job = self.job;
        let work = self.dir.join("work");
        let logs_dir = self.dir.join("logs");
        std::fs::create_dir_all(&logs_dir).map_err(|source| RunError::Io { path: logs_dir.clone(), source })?;
        let recorder = Arc::new(Mutex::new(Recorder::new(&job.metric_definitions, &metrics::series_path(&self.dir))));
        let mut deadline = None;
        let mut attempt = 1;
        let (cause, failed, exits) = loop {
            record.transition("Downloading", "Downloading input data");
            self.store.save(record)?;
            let staged = tokio::select! {
                staged = self.prepare(&work) => staged,
                () = shutdown.cancelled() => Err(StopCause::Shutdown.into()),
                () = stop_requested.cancelled() => Err(StopCause::Requested.into()),
            };
            let mounts = match staged {
                Ok(mounts) => mounts,
                Err(Prepare::Stopped(cause)) => {
                    record.finish(Status::Stopped, "Stopped", "Training job stopped before training began", None);
                    self.store.save(record)?;
                    return Ok(self.outcome(record, cause == StopCause::Shutdown, started, None));
                }
                Err(Prepare::Client(reason)) => {
                    record.finish(Status::Failed, "Failed", "Training job failed", Some(reason));
                    self.store.save(record)?;
                    return Ok(self.outcome(record, false, started, None));
                }
            };
            self.options.progress.finished.store(true, std::sync::atomic::Ordering::Relaxed);
            self.attach(&mounts, &work, true).await?;

            // What was just restored is already at S3Uri: the syncer learns it before any
            // container can write.
            let syncer = job.checkpoint.as_ref().map(|c| {
                let dirs = job.hosts.iter().map(|h| checkpoint_dir(&work, &h.name)).collect();
                Syncer::new(&c.uri, dirs)
            });
            let followers = match self.start_hosts(&work, &logs_dir, &recorder).await {
                Ok(followers) => followers,
                // An engine may accept an overlay volume and fail only when it mounts it (a
                // kernel without overlay, a VM that cannot see the layers): copy and start again.
                Err(RunError::Docker(e)) if !self.volumes.is_empty() => {
                    tracing::info!("copying the channels instead of mounting them from the cache: {e}");
                    self.remove_containers().await;
                    self.remove_volumes().await;
                    self.attach(&mounts, &work, false).await?;
                    self.start_hosts(&work, &logs_dir, &recorder).await?
                }
                Err(e) => return Err(e),
            };
            record.transition("Training", "Training image download completed. Training in progress.");
            self.store.save(record)?;
            // MaxRuntimeInSeconds counts from the first start, across restarts.
            let deadline = *deadline.get_or_insert_with(|| job.max_runtime.map(|d| tokio::time::Instant::now() + d));
            let sync = syncer.map(|syncer| {
                let stop = CancellationToken::new();
                let task = tokio::spawn(sync_checkpoints(syncer, self.options.checkpoint_interval, stop.clone()));
                (stop, task)
            });
            let interrupt = if attempt == 1 { self.options.interrupt_after } else { None };
            let supervised = self.supervise(record, shutdown, stop_requested, deadline, interrupt).await;
            // Every line the containers printed is in the logs before the job is reported.
            for f in followers {
                let _ = f.await;
            }
            if let Some((stop, task)) = sync {
                stop.cancel();
                if let Ok(Err(e)) = task.await {
                    tracing::warn!("the last checkpoint sync failed: {e}");
                }
            }
            let (cause, failed, exits) = supervised?;
            if cause != Some(StopCause::Interrupted) {
                break (cause, failed, exits);
            }
            // A spot interruption, replayed: the instances are gone, the checkpoints are at
            // S3Uri, and the job starts over on fresh instances.
            record.transition(
                "Interrupted",
                "Training job interrupted (spot interruption replayed by --interrupt-after); checkpoints synced",
            );
            record.transition("Restarting", "Restarting the training job from its checkpoints");
            attempt += 1;
            record.attempts = attempt;
            self.store.save(record)?;
            self.remove_containers().await;
            self.remove_volumes().await;
            std::fs::remove_dir_all(&work).map_err(|source| RunError::Io { path: work.clone(), source })?;
        };

        record.transition("Uploading", "Uploading generated training model");
        self.store.save(record)?;
        let interrupted = cause == Some(StopCause::Shutdown);
        let roots: Vec<(String, PathBuf)> =
            job.hosts.iter().map(|h| (h.name.clone(), stage::host_root(&work, &h.name))).collect();
        record.final_metric_data_list = final_metrics(&recorder);
        if let Err((kept, reason)) = crate::artifacts::collect(job, &roots, &self.dir.join("artifacts")).await {
            record.finish(Status::Failed, "Failed", "Training job failed", Some(reason));
            self.store.save(record)?;
            return Ok(self.outcome(record, interrupted, started, Some(kept)));
        }

        match (cause, failed) {
            (Some(StopCause::MaxRuntime), _) => record.finish(
                Status::Stopped,
                "MaxRuntimeExceeded",
                format!(
                    "Training job stopped: MaxRuntimeInSeconds ({}) was exceeded",
                    job.max_runtime.map(|d| d.as_secs()).unwrap_or(0)
                ),
                None,
            ),
            (Some(_), _) => record.finish(Status::Stopped, "Stopped", "Training job stopped", None),
            (None, Some(i)) => {
                let host = &job.hosts[i];
                let exit = exits[i].unwrap_or(Exit { code: -1, oom_killed: false });
                let mut reason = failure_reason(&roots[i].1, &host.name, exit, host);
                if job.hosts.len() > 1 && !reason.contains(&host.name) {
                    reason = format!("{}: {reason}", host.name);
                }
                record.finish(Status::Failed, "Failed", "Training job failed", Some(reason));
            }
            (None, None) => record.finish(Status::Completed, "Completed", "Training job completed", None),
        }
        self.store.save(record)?;
        Ok(self.outcome(record, interrupted, started, None))
    }

    /// Stages every host's `/opt/ml` and restores its checkpoints.
    async fn prepare(&self, work: &Path) -> Result<Vec<ChannelMount>, Prepare> {
        let job = self.job;
        let cache = Cache::new(self.store.root());
        let staged = stage::stage(job, work, &cache, &self.options.progress)
            .await
            .map_err(|e| Prepare::Client(client_error(&e)))?;
        if let Some(c) = &job.checkpoint {
            for host in &job.hosts {
                let dir = checkpoint_dir(work, &host.name);
                std::fs::create_dir_all(&dir)
                    .map_err(|e| Prepare::Client(format!("ClientError: cannot create {}: {e}", dir.display())))?;
                checkpoints::restore(&c.uri, &dir).await.map_err(|e| {
                    Prepare::Client(format!("ClientError: Checkpoint download from {} failed: {e}", c.uri))
                })?;
            }
        }
        Ok(staged.mounts)
    }

    /// Puts each cached channel in front of its host as an overlay volume; where the engine
    /// cannot mount overlays (another kernel, a remote engine), each host gets a copy instead.
    async fn attach(&mut self, mounts: &[ChannelMount], work: &Path, mut overlays: bool) -> Result<(), RunError> {
        for m in mounts {
            if overlays {
                let name = format!("smlocal-{}-{}-{}-{}", self.job.name, m.host, m.channel, unique_suffix());
                let usable = [&m.lower, &m.upper, &m.scratch].iter().all(|p| !p.to_string_lossy().contains([',', ':']));
                let created = if usable {
                    self.docker.create_overlay_volume(&name, &m.lower, &m.upper, &m.scratch, self.labels()).await
                } else {
                    Err(DockerError::Unsupported("a path with ',' or ':' cannot be an overlay layer".into()))
                };
                match created {
                    Ok(()) => {
                        self.volumes.push((m.host.clone(), name, m.target.clone()));
                        continue;
                    }
                    Err(e) => {
                        tracing::info!("copying the channels instead of mounting them from the cache: {e}");
                        overlays = false;
                    }
                }
            }
            m.copy_into(work)?;
        }
        Ok(())
    }

    /// Creates the job's network (once) and one container per host, then starts them all at
    /// once, as a cluster's hosts boot together. Returns the log followers.
    async fn start_hosts(
        &mut self,
        work: &Path,
        logs_dir: &Path,
        recorder: &Arc<Mutex<Recorder>>,
    ) -> Result<Vec<tokio::task::JoinHandle<()>>, RunError> {
        let job = self.job;
        let suffix = unique_suffix();
        let network = match &self.network {
            Some(name) => name.clone(),
            None if job.network_isolation && job.hosts.len() == 1 => "none".to_string(),
            // One host has no peers to resolve: Docker's default bridge gives it eth0 and the
            // outside world as an instance has, without the ~0.2 s of making and removing a
            // network (a third of a trivial job).
            None if job.hosts.len() == 1 && self.docker.has_default_bridge().await => "bridge".to_string(),
            None => {
                // Isolation keeps the network internal: hosts reach each other and nothing else.
                let name = format!("smlocal-{}-{suffix}", job.name);
                self.docker.create_network(&name, self.labels(), job.network_isolation).await?;
                self.network = Some(name.clone());
                name
            }
        };
        let s3_endpoint = self.container_s3_endpoint(&network).await;
        let specs: Vec<ContainerSpec> =
            job.hosts.iter().map(|h| self.container_spec(h, work, &network, &suffix, s3_endpoint.as_deref())).collect();
        // Created concurrently; every one that was created is kept for clean-up, even when
        // another failed.
        let created = futures::future::join_all(specs.iter().map(|spec| self.docker.create_container(spec))).await;
        let mut first_error = None;
        for (host, result) in job.hosts.iter().zip(created) {
            match result {
                Ok(id) => self.containers.push((host.name.clone(), id)),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e.into());
        }
        futures::future::try_join_all(self.containers.iter().map(|(_, id)| self.docker.start(id))).await?;
        if let Some(hook) = &self.options.on_start {
            self.containers.iter().for_each(|(host, id)| hook(host, id));
        }
        Ok(self
            .containers
            .iter()
            .map(|(host, id)| {
                tokio::spawn(logs::follow(
                    self.docker.clone(),
                    id.clone(),
                    host.clone(),
                    logs_dir.join(format!("{host}.log")),
                    self.options.log.clone(),
                    recorder.clone(),
                ))
            })
            .collect())
    }

    /// Waits until every host has exited 0, one has failed, or a stop comes; then stops the
    /// hosts still running. Returns why it ended, the failed host and every exit.
    async fn supervise(
        &mut self,
        record: &mut Record,
        shutdown: &CancellationToken,
        stop_requested: &CancellationToken,
        deadline: Option<tokio::time::Instant>,
        interrupt_after: Option<Duration>,
    ) -> Result<(Option<StopCause>, Option<usize>, Vec<Option<Exit>>), RunError> {
        let job = self.job;
        let mut waits: Waits = self
            .containers
            .iter()
            .enumerate()
            .map(|(i, (_, id))| {
                let (docker, id) = (self.docker.clone(), id.clone());
                Box::pin(async move { (i, docker.wait(&id).await) }) as _
            })
            .collect();
        let mut exits: Vec<Option<Exit>> = vec![None; self.containers.len()];
        let at = |when: Option<tokio::time::Instant>| async move {
            match when {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let max_runtime = at(deadline);
        let interrupt = at(interrupt_after.map(|d| tokio::time::Instant::now() + d));
        tokio::pin!(max_runtime, interrupt);
        let mut cause = None;
        let mut failed = None;
        // The job completes when every host exits 0; the first failure or stop ends it.
        while !waits.is_empty() {
            tokio::select! {
                Some((i, exit)) = waits.next() => {
                    let exit = exit?;
                    exits[i] = Some(exit);
                    if exit.code != 0 {
                        failed = Some(i);
                        break;
                    }
                }
                () = shutdown.cancelled() => { cause = Some(StopCause::Shutdown); break; }
                () = stop_requested.cancelled() => { cause = Some(StopCause::Requested); break; }
                () = &mut max_runtime => { cause = Some(StopCause::MaxRuntime); break; }
                () = &mut interrupt => { cause = Some(StopCause::Interrupted); break; }
            }
        }
        if !waits.is_empty() {
            let grace = self.options.stop_grace.as_secs();
            match (cause, failed) {
                (Some(StopCause::Interrupted), _) => {
                    tracing::info!("replaying a spot interruption: SIGTERM now, SIGKILL after {grace}s")
                }
                (Some(cause), _) => {
                    record.training_job_status = Status::Stopping;
                    record.transition("Stopping", cause.message());
                    self.store.save(record)?;
                    tracing::info!("{}: SIGTERM now, SIGKILL after {grace}s", cause.message());
                }
                (None, Some(i)) => tracing::warn!(
                    "{} failed; stopping the other hosts (SIGTERM now, SIGKILL after {grace}s)",
                    job.hosts[i].name
                ),
                (None, None) => {}
            }
            self.stop_all(&mut exits, &mut waits).await?;
        }
        Ok((cause, failed, exits))
    }

    /// SIGTERM to every host still running, then SIGKILL to those still running after the
    /// grace period; returns when all have exited.
    async fn stop_all(&mut self, exits: &mut [Option<Exit>], waits: &mut Waits) -> Result<(), RunError> {
        let running = |exits: &[Option<Exit>]| -> Vec<String> {
            self.containers.iter().zip(exits).filter(|(_, e)| e.is_none()).map(|((_, id), _)| id.clone()).collect()
        };
        for id in running(exits) {
            self.docker.signal(&id, "SIGTERM").await?;
        }
        let grace = tokio::time::sleep(self.options.stop_grace);
        tokio::pin!(grace);
        while !waits.is_empty() {
            tokio::select! {
                Some((i, exit)) = waits.next() => exits[i] = Some(exit?),
                () = &mut grace => break,
            }
        }
        if !waits.is_empty() {
            tracing::warn!(
                "{} host(s) did not exit within {}s of SIGTERM; sending SIGKILL",
                waits.len(),
                self.options.stop_grace.as_secs()
            );
            let killed = running(exits);
            for id in &killed {
                self.docker.signal(id, "SIGKILL").await?;
            }
            while let Some((i, exit)) = waits.next().await {
                let exit = exit?;
                exits[i] = Some(exit);
                // 128 + SIGKILL: it was still running when the signal came.
                if exit.code == 137 && killed.contains(&self.containers[i].1) {
                    self.sigkilled.push(self.containers[i].0.clone());
                }
            }
        }
        Ok(())
    }

    /// The labels that find this job's Docker objects again (`smlocal cleanup`).
    fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (JOB_LABEL.to_string(), self.job.name.clone()),
            (HOME_LABEL.to_string(), self.store.root().display().to_string()),
        ])
    }

    /// The S3 endpoint containers get with the credentials (`--pass-aws-credentials`): this
    /// process's own, or a relay to it when it is on the loopback. None means AWS itself.
    async fn container_s3_endpoint(&mut self, network: &str) -> Option<String> {
        if !self.options.pass_credentials {
            return None;
        }
        let endpoint = storage::endpoint()?;
        if crate::relay::loopback_target(&endpoint).is_none() {
            return Some(endpoint);
        }
        if let Some(relay) = &self.relay {
            return Some(relay.url.clone());
        }
        if self.job.network_isolation {
            return None;
        }
        let Some(gateway) = self.docker.gateway(network).await else {
            tracing::warn!("the network {network} has no gateway address: containers cannot reach {endpoint}");
            return None;
        };
        match Relay::start(gateway, &endpoint).await {
            Ok(relay) => {
                tracing::info!("containers reach {endpoint} as {}", relay.url);
                let url = relay.url.clone();
                self.relay = Some(relay);
                Some(url)
            }
            Err(e) => {
                tracing::warn!("cannot relay {endpoint} to the containers on {gateway}: {e}");
                None
            }
        }
    }

    fn container_spec(
        &self,
        host: &HostPlan,
        work: &Path,
        network: &str,
        suffix: &str,
        s3_endpoint: Option<&str>,
    ) -> ContainerSpec {
        let job = self.job;
        let mut env = vec![
            format!("TRAINING_JOB_NAME={}", job.name),
            format!("TRAINING_JOB_ARN={}", job.arn),
            format!("AWS_REGION={}", job.region),
            // No AWS SDK in a container may find this machine's own credentials through an
            // EC2 instance's metadata service: credentials arrive only when passed.
            "AWS_EC2_METADATA_DISABLED=true".to_string(),
        ];
        if self.options.pass_credentials {
            for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"] {
                if let Ok(value) = std::env::var(key) {
                    env.push(format!("{key}={value}"));
                }
            }
            // Both names: newer AWS SDKs read the first, older scripts and tools the second.
            if let Some(url) = s3_endpoint {
                env.push(format!("AWS_ENDPOINT_URL_S3={url}"));
                env.push(format!("S3_ENDPOINT_URL={url}"));
            }
        }
        env.extend(job.environment.iter().map(|(k, v)| format!("{k}={v}")));
        let mut binds = vec![format!("{}:/opt/ml", stage::host_root(work, &host.name).display())];
        binds.extend(
            self.volumes
                .iter()
                .filter(|(h, _, _)| *h == host.name)
                .map(|(_, volume, target)| format!("{volume}:{target}")),
        );
        // The default LocalPath is already inside the /opt/ml mount.
        if let Some(c) = &job.checkpoint
            && c.local_path.trim_end_matches('/') != crate::job::DEFAULT_CHECKPOINT_PATH
        {
            binds.push(format!("{}:{}", checkpoint_dir(work, &host.name).display(), c.local_path));
        }
        ContainerSpec {
            name: format!("smlocal-{}-{}-{suffix}", job.name, host.name),
            hostname: if self.options.instance_hostnames { instance_hostname(&host.name) } else { host.name.clone() },
            alias: host.name.clone(),
            image: job.image.clone(),
            entrypoint: job.entrypoint.clone(),
            args: job.args.clone(),
            env,
            binds,
            labels: {
                let mut labels = self.labels();
                labels.insert("smlocal.host".to_string(), host.name.clone());
                labels
            },
            memory_bytes: host.limits.memory_bytes as i64,
            nano_cpus: host.limits.nano_cpus,
            network: network.to_string(),
        }
    }

    fn outcome(
        &self,
        record: &Record,
        interrupted: bool,
        started: Instant,
        kept_artifacts: Option<PathBuf>,
    ) -> JobOutcome {
        JobOutcome {
            record: record.clone(),
            interrupted,
            elapsed: started.elapsed(),
            kept_artifacts,
            sigkilled: self.sigkilled.clone(),
        }
    }

    /// Removes the job's containers, network and work files (unless `--keep`), whatever
    /// happened before.
    async fn remove_volumes(&mut self) {
        for (_, name, _) in std::mem::take(&mut self.volumes) {
            if let Err(e) = self.docker.remove_volume(&name).await {
                tracing::warn!("{e}");
            }
        }
    }

    async fn remove_containers(&mut self) {
        let removals = self.containers.drain(..).map(|(_, id)| {
            let docker = self.docker.clone();
            async move { docker.remove_container(&id).await }
        });
        for result in futures::future::join_all(removals).await {
            if let Err(e) = result {
                tracing::warn!("{e}");
            }
        }
    }

    async fn clean_up(&mut self, result: &Result<JobOutcome, RunError>) {
        if self.options.keep {
            tracing::debug!("--keep: leaving containers, network and {} in place", self.dir.join("work").display());
            return;
        }
        self.remove_containers().await;
        self.remove_volumes().await;
        if let Some(network) = self.network.take()
            && let Err(e) = self.docker.remove_network(&network).await
        {
            tracing::warn!("{e}");
        }
        let work = self.dir.join("work");
        if let Err(e) = std::fs::remove_dir_all(&work)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove {}: {e}", work.display());
        }
        if result.is_err() {
            let _ = std::fs::remove_dir_all(self.dir.join("artifacts"));
        }
    }
}

/// Why preparing an attempt did not end in running containers.
enum Prepare {
    Stopped(StopCause),
    /// A problem with the user's data or configuration: the job fails with this reason.
    Client(String),
}

impl From<StopCause> for Prepare {
    fn from(cause: StopCause) -> Self {
        Prepare::Stopped(cause)
    }
}

/// A host's checkpoint folder on this machine (bound at `CheckpointConfig.LocalPath`).
fn checkpoint_dir(work: &Path, host: &str) -> PathBuf {
    stage::host_root(work, host).join("checkpoints")
}

/// Syncs until `stop`, then once more so the final state is at `S3Uri`.
async fn sync_checkpoints(mut syncer: Syncer, every: Duration, stop: CancellationToken) -> Result<(), StorageError> {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = syncer.sync().await {
                    tracing::warn!("checkpoint sync failed (will retry): {e}");
                }
            }
            () = stop.cancelled() => break,
        }
    }
    syncer.sync().await.map(|_| ())
}

fn final_metrics(recorder: &Mutex<Recorder>) -> Vec<MetricData> {
    let Ok(recorder) = recorder.lock() else {
        return Vec::new();
    };
    recorder
        .final_metrics()
        .into_iter()
        .map(|p| MetricData { metric_name: p.metric, value: p.value, timestamp: p.timestamp })
        .collect()
}

/// Turns a `smlocal stop` from another process (a marker in the job's folder) into a stop.
async fn watch_for_stop(store: StateDir, name: String, stop: CancellationToken) {
    stop_requested(&store, &name).await;
    stop.cancel();
}

/// Returns once `smlocal stop` or StopTrainingJob has asked for the job to stop.
pub async fn stop_requested(store: &StateDir, name: &str) {
    let mut tick = tokio::time::interval(STOP_POLL);
    loop {
        tick.tick().await;
        if store.stop_requested(name) {
            return;
        }
    }
}

/// `FailureReason` for a non-zero exit: out of memory first (the failure file of a killed
/// process is whatever it managed to write), then the algorithm's own words, then the code.
fn failure_reason(host_root: &Path, host: &str, exit: Exit, plan: &HostPlan) -> String {
    if exit.oom_killed {
        return format!(
            "OutOfMemoryError: the training container on {host} ran out of memory and was killed (exit code {}); its memory limit was {} ({} has {}{}). Use a larger instance type or reduce the algorithm's memory use",
            exit.code,
            human_bytes(plan.limits.memory_bytes),
            plan.instance.instance_type,
            human_bytes(plan.instance.memory_bytes),
            if plan.limits.memory_bytes < plan.instance.memory_bytes {
                ", scaled down to fit this machine"
            } else {
                ""
            }
        );
    }
    match read_failure(host_root) {
        Some(text) => text,
        None => format!(
            "AlgorithmError: the training container on {host} exited with a non-zero exit code {}; no /opt/ml/output/failure was written. See the job's logs",
            exit.code
        ),
    }
}

fn read_failure(host_root: &Path) -> Option<String> {
    let text = std::fs::read(host_root.join("output/failure")).ok()?;
    let text = String::from_utf8_lossy(&text);
    let text = text.trim();
    (!text.is_empty()).then(|| text.chars().take(FAILURE_REASON_CHARS).collect())
}

/// Staging failures are the user's data or configuration, as SageMaker reports them.
fn client_error(e: &StageError) -> String {
    format!("ClientError: Data download failed: {e}")
}

/// An EC2-style private host name for `algo-N`, as a SageMaker instance reports.
fn instance_hostname(host: &str) -> String {
    let n: u32 = host.trim_start_matches("algo-").parse().unwrap_or(0);
    format!("ip-10-0-{}-{}", 1 + n / 200, 10 + n % 200)
}

/// Keeps this run's Docker object names apart from any leftover of an earlier run.
fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0);
    format!("{:08x}", nanos ^ std::process::id().rotate_left(16))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{InstanceSpec, Limits};

    fn plan() -> HostPlan {
        HostPlan {
            name: "algo-1".into(),
            group: "homogeneousCluster".into(),
            instance: InstanceSpec {
                instance_type: "ml.m5.large".into(),
                vcpu: 2,
                memory_bytes: 8 << 30,
                accelerators: 0,
                derived: false,
            },
            limits: Limits { memory_bytes: 256 << 20, nano_cpus: 2_000_000_000 },
        }
    }

    #[test]
    fn failure_file_wins_and_is_cut_at_1024_chars() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("output")).unwrap();
        std::fs::write(dir.path().join("output/failure"), "x".repeat(2000)).unwrap();
        let reason = failure_reason(dir.path(), "algo-1", Exit { code: 1, oom_killed: false }, &plan());
        assert_eq!(reason.len(), 1024);
    }

    #[test]
    fn without_a_failure_file_the_exit_code_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let reason = failure_reason(dir.path(), "algo-1", Exit { code: 3, oom_killed: false }, &plan());
        assert!(reason.starts_with("AlgorithmError:") && reason.contains("exit code 3"), "{reason}");
    }

    #[test]
    fn out_of_memory_names_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let reason = failure_reason(dir.path(), "algo-1", Exit { code: 137, oom_killed: true }, &plan());
        assert!(
            reason.starts_with("OutOfMemoryError") && reason.contains("256.0 MiB") && reason.contains("scaled down"),
            "{reason}"
        );
    }
}
