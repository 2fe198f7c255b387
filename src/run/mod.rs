//! Runs a planned job from start to record: stage the inputs, start one container per host
//! on the job's own network ([`cluster`]), stream its output, enforce stops (shutdown, max
//! runtime) with SIGTERM → grace → SIGKILL ([`supervise`]), collect and upload the
//! artifacts, and keep the record current at every step ([`outcome`]). A failed or stopped
//! job is a [`JobOutcome`]; `Err` means smlocal itself could not do its part.

pub(crate) mod cluster;
mod outcome;
mod supervise;

use self::cluster::Cluster;
use self::supervise::{Ended, StopCause, Stops, Supervisor};
use crate::artifacts::CollectError;
use crate::cache::{Cache, Progress};
use crate::checkpoints::{self, SyncError, Syncer};
use crate::docker::{Docker, DockerError};
use crate::job::Job;
use crate::logs::LogSink;
use crate::metrics::Recorder;
use crate::spec::AwsErrorKind;
use crate::stage::{self, HostTree, StageError, Staged};
use crate::state::details;
use crate::state::record::{Failure, FailureKind, Record, Secondary, StopReason};
use crate::state::{StateDir, StateError};
use crate::storage::{Storage, StorageError};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Image(#[from] crate::images::ImageError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error(
        "{0} already exists: another job wrote its results there, and smlocal never overwrites them. Use a new TrainingJobName or another S3OutputPath"
    )]
    OutputExists(String),
    /// The engine refused to start a host's container as configured: the image's or the
    /// request's doing (an entrypoint that is not in the image), so the job fails with it.
    #[error("the training container on {host} could not start: {message}")]
    CannotStart { host: String, message: String },
    #[error("cannot prepare the job folder '{}': {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl RunError {
    /// How the API reports it: what the request can change is a validation error; a name
    /// in use is `ResourceInUse`; the rest is smlocal's own trouble.
    pub fn aws_kind(&self) -> AwsErrorKind {
        match self {
            RunError::State(e) => e.aws_kind(),
            RunError::Docker(DockerError::ImageMissing(_)) | RunError::OutputExists(_) | RunError::Storage(_) => {
                AwsErrorKind::Validation
            }
            RunError::Image(e) if e.is_validation() => AwsErrorKind::Validation,
            _ => AwsErrorKind::Internal,
        }
    }
}

/// What every job runs with: the state directory, the Docker Engine and object storage, each
/// a handle that is built once and shared.
#[derive(Debug, Clone)]
pub struct Services {
    pub state: StateDir,
    pub docker: Docker,
    pub storage: Storage,
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
    /// Cancelled to end the grace at once: hosts still running get SIGKILL now (a second
    /// Ctrl-C).
    pub hurry: CancellationToken,
}

/// See [`RunOptions::on_start`].
pub(crate) type StartHook = Arc<dyn Fn(&str, &str) + Send + Sync>;

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
            hurry: CancellationToken::new(),
        }
    }
}

/// How a job ended, for the caller to report and turn into an exit code.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    pub record: Record,
    /// Why it failed, when it did: the kind says who is to blame without reading the text.
    pub failure: Option<Failure>,
    /// True when the stop came from the shutdown signal (Ctrl-C), not from the job itself.
    pub interrupted: bool,
    pub elapsed: Duration,
    /// Whether `model.tar.gz` and `output.tar.gz` reached the output path.
    pub uploaded: bool,
    /// Where the artifacts were left when they could not be uploaded.
    pub kept_artifacts: Option<PathBuf>,
    /// Hosts that ignored SIGTERM until SIGKILL ended them.
    pub sigkilled: Vec<String>,
    /// What each Pipe mode channel delivered to each host, epoch by epoch (the last attempt).
    pub pipes: Vec<crate::pipe::PipeReport>,
}

/// How often a running job looks for a stop requested by `smlocal stop`.
const STOP_POLL: Duration = Duration::from_millis(200);

pub async fn run(
    job: &Job,
    services: &Services,
    options: &RunOptions,
    shutdown: CancellationToken,
) -> Result<JobOutcome, RunError> {
    let record = admit(job, services).await?;
    run_admitted(job, record, services, options, shutdown).await
}

/// What CreateTrainingJob does before it answers: the image must be here and the output
/// must not be taken; then the name is reserved, the first record written and this process
/// named as the job's runner. Returns the record for [`run_admitted`].
pub(crate) async fn admit(job: &Job, services: &Services) -> Result<Record, RunError> {
    let state = &services.state;
    crate::images::resolve(&services.docker, state.root(), &job.image).await?;
    if state.job_dir(&job.name).exists() {
        return Err(StateError::ResourceInUse { arn: job.arn.clone() }.into());
    }
    // Every location the job will touch, refused now rather than when the job reaches it.
    let synced = job.checkpoint.iter().chain(&job.tensorboard).map(|c| &c.uri);
    for uri in job.channels.iter().map(|c| &c.uri).chain(synced) {
        services.storage.check(uri)?;
    }
    let model_uri = job.model_artifacts_uri();
    if services.storage.exists(&model_uri).await? {
        return Err(RunError::OutputExists(model_uri));
    }
    let record = Record::new(&job.name, &job.arn, &model_uri, &job.request.raw);
    state.create(&record)?;
    state.claim(&job.name)?;
    details::write(&state.placement_path(&job.name), &details::placement(job));
    Ok(record)
}

/// Runs a job [`admit`] accepted, to its end, inside a span that tags every log line with
/// the job's name.
pub(crate) async fn run_admitted(
    job: &Job,
    mut record: Record,
    services: &Services,
    options: &RunOptions,
    shutdown: CancellationToken,
) -> Result<JobOutcome, RunError> {
    use tracing::Instrument;
    let span = tracing::info_span!("job", name = %job.name);
    let started = Instant::now();
    let result = async {
        let dir = services.state.job_dir(&job.name);
        let work = services.state.resolved_work_dir(&job.name).map_err(|source| RunError::Io { path: dir, source })?;
        let image = crate::images::resolve(&services.docker, services.state.root(), &job.image).await?;
        if let Some((key, source)) = &image.via {
            tracing::info!(
                "{} is not on this machine: running the local image {} that {source} maps {key} to",
                job.image,
                image.image
            );
        }
        let mut cluster =
            Cluster::new(job, image.image, &services.docker, &services.storage, options, services.state.root());
        let stop_requested = CancellationToken::new();
        // In-process stops (StopTrainingJob in `smlocal serve`) take the same path as a
        // `smlocal stop` from another process, a marker in the job's folder, so there is
        // one mechanism and it works whichever process asked.
        let watcher = tokio::spawn(watch_for_stop(services.state.clone(), job.name.clone(), stop_requested.clone()));
        let attempt = Attempt { job, services, options, shutdown: &shutdown, stop_requested: &stop_requested };
        let result = attempt.drive(&mut record, &mut cluster, &work, started).await;
        watcher.abort();
        if options.keep {
            tracing::debug!("--keep: leaving containers, network and {} in place", work.display());
            cluster.keep();
        } else {
            cluster.remove().await;
            match &result {
                Ok(_) => remove_work(&work),
                // smlocal's own failure, perhaps before the upload: the hosts' folders (the
                // model among them) are not deleted.
                Err(_) => tracing::warn!("the hosts' folders are kept in {}", work.display()),
            }
        }
        result
    }
    .instrument(span)
    .await;
    if let Err(e) = &result {
        // The record must not stay InProgress when smlocal itself failed.
        if !record.training_job_status.is_terminal() {
            record.fail(&Failure::new(FailureKind::Internal, format!("InternalServerError: {e}")));
            let _ = services.state.save(&record);
        }
    }
    services.state.release(&job.name);
    result
}

/// One job's run, attempt after attempt (a replayed spot interruption starts another).
struct Attempt<'a> {
    job: &'a Job,
    services: &'a Services,
    options: &'a RunOptions,
    shutdown: &'a CancellationToken,
    stop_requested: &'a CancellationToken,
}

impl Attempt<'_> {
    /// The story of a job: download, train (perhaps again), upload, end.
    async fn drive(
        &self,
        record: &mut Record,
        cluster: &mut Cluster<'_>,
        work: &Path,
        started: Instant,
    ) -> Result<JobOutcome, RunError> {
        let (job, state) = (self.job, &self.services.state);
        let logs_dir = state.logs_dir(&job.name);
        std::fs::create_dir_all(&logs_dir).map_err(|source| RunError::Io { path: logs_dir.clone(), source })?;
        let recorder = Arc::new(Mutex::new(Recorder::new(&job.metric_definitions, &state.metrics_path(&job.name))));
        // How the job ended; before the upload nothing was uploaded, kept or SIGKILLed.
        let done = |record: &Record, failure: Option<Failure>, interrupted| JobOutcome {
            record: record.clone(),
            failure,
            interrupted,
            elapsed: started.elapsed(),
            uploaded: false,
            kept_artifacts: None,
            sigkilled: Vec::new(),
            pipes: Vec::new(),
        };
        let mut deadline = None;
        let mut attempt = 1;
        let (ended, sigkilled, pipes, input_failure) = loop {
            record.enter(Secondary::Downloading, "Downloading input data");
            note(state, record);
            let staged = match self.prepare(work).await {
                Ok(staged) => staged,
                Err(Prepare::Stopped(cause)) => {
                    record.stop(StopReason::BeforeTraining);
                    state.save(record)?;
                    return Ok(done(record, None, cause == StopCause::Shutdown));
                }
                Err(Prepare::Client(failure)) => {
                    record.fail(&failure);
                    state.save(record)?;
                    return Ok(done(record, Some(failure), false));
                }
            };
            self.options.progress.finished.store(true, std::sync::atomic::Ordering::Relaxed);

            // What was just restored is already at S3Uri: the syncer learns it before any
            // container can write.
            let syncer = job.checkpoint.as_ref().map(|c| {
                let dirs = job.hosts.iter().map(|h| HostTree::new(work, &h.name).checkpoints()).collect();
                Syncer::new(&self.services.storage, &c.uri, dirs)
            });
            // TensorBoard's folder goes to its S3OutputPath the same way, while training and at the end.
            let tensorboard = job.tensorboard.as_ref().map(|t| {
                let dirs = job.hosts.iter().map(|h| HostTree::new(work, &h.name).tensorboard()).collect();
                Syncer::new(&self.services.storage, &t.uri, dirs)
            });
            // The feeds wait for their FIFOs to be opened; `_0` is already there.
            let cache = Cache::new(state.root());
            let feeds = crate::pipe::Feeds::start(staged.feeds, &self.services.storage, &cache);
            let followers = match cluster.start(&staged.mounts, work, state, &recorder).await {
                Ok(followers) => followers,
                Err(e @ RunError::CannotStart { .. }) => {
                    let failure = Failure::new(
                        FailureKind::AlgorithmExit,
                        format!(
                            "AlgorithmError: {e}. Check AlgorithmSpecification.ContainerEntrypoint and the image's ENTRYPOINT"
                        ),
                    );
                    record.fail(&failure);
                    state.save(record)?;
                    return Ok(done(record, Some(failure), false));
                }
                Err(e) => return Err(e),
            };
            record.enter(Secondary::Training, "Training image download completed. Training in progress.");
            note(state, record);
            // MaxRuntimeInSeconds counts from the first start, across restarts.
            let deadline = *deadline.get_or_insert_with(|| job.max_runtime.map(|d| tokio::time::Instant::now() + d));
            let syncs: Vec<_> = syncer
                .into_iter()
                .chain(tensorboard)
                .map(|syncer| {
                    let stop = CancellationToken::new();
                    let task = tokio::spawn(sync_checkpoints(syncer, self.options.checkpoint_interval, stop.clone()));
                    (stop, task)
                })
                .collect();
            let interrupt = (attempt == 1)
                .then_some(self.options.interrupt_after)
                .flatten()
                .map(|d| tokio::time::Instant::now() + d);
            let stops = Stops {
                shutdown: self.shutdown,
                requested: self.stop_requested,
                deadline,
                interrupt,
                input_failed: Some(feeds.failed()),
            };
            let supervised = self.supervise(record, cluster, &stops).await;
            let input_failure = feeds.failure();
            let pipes = feeds.finish().await;
            // Every line the containers printed is in the logs before the job is reported.
            for f in followers {
                let _ = f.await;
            }
            for (stop, task) in syncs {
                stop.cancel();
                if let Ok(Err(e)) = task.await {
                    tracing::warn!("the last sync of a synced folder (checkpoints, TensorBoard) failed: {e}");
                }
            }
            let (ended, sigkilled) = supervised?;
            if ended != Ended::Stopped(StopCause::Interrupted) {
                break (ended, sigkilled, pipes, input_failure);
            }
            // A spot interruption, replayed: the instances are gone, the checkpoints are at
            // S3Uri, and the job starts over on fresh instances.
            record.enter(
                Secondary::Interrupted,
                "Training job interrupted (spot interruption replayed by --interrupt-after); checkpoints synced",
            );
            record.enter(Secondary::Restarting, "Restarting the training job from its checkpoints");
            attempt += 1;
            record.attempts = attempt;
            note(state, record);
            cluster.reset().await;
            std::fs::remove_dir_all(work).map_err(|source| RunError::Io { path: work.to_path_buf(), source })?;
        };

        record.enter(Secondary::Uploading, "Uploading generated training model");
        note(state, record);
        // A Ctrl-C after the hosts ended (during the upload, which finishes: nothing is
        // lost) still interrupted the run: asked once the upload is over.
        let interrupted = || ended == Ended::Stopped(StopCause::Shutdown) || self.shutdown.is_cancelled();
        let trees: Vec<(String, HostTree)> =
            job.hosts.iter().map(|h| (h.name.clone(), HostTree::new(work, &h.name))).collect();
        record.final_metric_data_list = outcome::final_metrics(&recorder);
        let kept = state.artifacts_dir(&job.name);
        if let Err(e) = crate::artifacts::collect(&self.services.storage, job, &trees, &kept).await {
            let (kind, kept) = match &e {
                CollectError::LinkedFolder { .. } => (FailureKind::AlgorithmOutput, None),
                CollectError::Upload(u) => (FailureKind::ClientError, Some(u.kept.clone())),
            };
            let failure = Failure::new(kind, e.to_string());
            record.fail(&failure);
            state.save(record)?;
            return Ok(JobOutcome {
                kept_artifacts: kept,
                sigkilled,
                pipes,
                ..done(record, Some(failure), interrupted())
            });
        }
        let interrupted = interrupted();
        let failure = if ended == Ended::InputFailed {
            let reason = input_failure.unwrap_or_else(|| "ClientError: a Pipe mode channel could not be read".into());
            let failure = Failure::new(FailureKind::ClientError, reason);
            record.fail(&failure);
            Some(failure)
        } else {
            outcome::finish(record, job, ended, work).await
        };
        state.save(record)?;
        Ok(JobOutcome { uploaded: true, sigkilled, pipes, ..done(record, failure, interrupted) })
    }

    /// Stages every host's `/opt/ml` and restores its checkpoints, unless a stop comes first.
    async fn prepare(&self, work: &Path) -> Result<Staged, Prepare> {
        tokio::select! {
            staged = self.stage_inputs(work) => staged,
            () = self.shutdown.cancelled() => Err(Prepare::Stopped(StopCause::Shutdown)),
            () = self.stop_requested.cancelled() => Err(Prepare::Stopped(StopCause::Requested)),
        }
    }

    async fn stage_inputs(&self, work: &Path) -> Result<Staged, Prepare> {
        let (job, storage) = (self.job, &self.services.storage);
        let client = |reason: String| Prepare::Client(Failure::new(FailureKind::ClientError, reason));
        let cache = Cache::new(self.services.state.root());
        let staged = stage::stage(job, work, storage, &cache, &self.options.progress)
            .await
            .map_err(|e| client(format!("ClientError: Data download failed: {e}")))?;
        details::write(&self.services.state.staged_path(&job.name), &staged.counts);
        if let Some(c) = &job.checkpoint {
            for host in &job.hosts {
                // Made here, before any container starts: a folder of smlocal's own.
                let dir = HostTree::new(work, &host.name).checkpoints().path();
                std::fs::create_dir_all(&dir)
                    .map_err(|e| client(format!("ClientError: cannot create {}: {e}", dir.display())))?;
                checkpoints::restore(storage, &c.uri, &dir)
                    .await
                    .map_err(|e| client(format!("ClientError: Checkpoint download from {} failed: {e}", c.uri)))?;
            }
        }
        Ok(staged)
    }

    /// Waits for the attempt's end, records a stop as `Stopping`, and stops the hosts still
    /// running. Returns how it ended and the hosts SIGKILL ended.
    async fn supervise(
        &self,
        record: &mut Record,
        cluster: &Cluster<'_>,
        stops: &Stops<'_>,
    ) -> Result<(Ended, Vec<String>), RunError> {
        let mut supervisor = Supervisor::new(cluster);
        let ended = supervisor.until_end(stops).await?;
        if supervisor.running() == 0 {
            return Ok((ended, Vec::new()));
        }
        let grace = self.options.stop_grace.as_secs();
        match ended {
            Ended::Stopped(StopCause::Interrupted) => {
                tracing::info!("replaying a spot interruption: SIGTERM now, SIGKILL after {grace}s")
            }
            Ended::Stopped(cause) => {
                record.stopping(cause.message());
                note(&self.services.state, record);
                tracing::info!("{}: SIGTERM now, SIGKILL after {grace}s", cause.message());
            }
            Ended::Failed { host, .. } => tracing::warn!(
                "{} failed; stopping the other hosts (SIGTERM now, SIGKILL after {grace}s)",
                self.job.hosts[host].name
            ),
            Ended::InputFailed => tracing::warn!(
                "a Pipe mode channel could not be read; stopping the hosts (SIGTERM now, SIGKILL after {grace}s)"
            ),
            Ended::Completed => {}
        }
        let sigkilled = supervisor.stop_rest(self.options.stop_grace, &self.options.hurry).await?;
        Ok((ended, sigkilled.into_iter().map(|i| self.job.hosts[i].name.clone()).collect()))
    }
}

/// Saves a step of a running job. A record that cannot be written now (a full disk) must
/// not stop the job before its results are uploaded: the job goes on, and its final record
/// is written with the space the state directory kept for it (see [`StateDir::save`]).
fn note(state: &StateDir, record: &Record) {
    if let Err(e) = state.save(record) {
        tracing::warn!("the job goes on, but its record could not be updated: {e}");
    }
}

/// Why preparing an attempt did not end in staged inputs.
enum Prepare {
    Stopped(StopCause),
    /// A problem with the user's data or configuration: the job fails with this reason.
    Client(Failure),
}

/// Removes the job's work files (the hosts' trees, the channel layers) once its results
/// are where they belong.
fn remove_work(work: &Path) {
    if let Err(e) = std::fs::remove_dir_all(work)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("cannot remove {}: {e}", work.display());
    }
}

/// Syncs until `stop`, then once more so the final state is at `S3Uri`.
async fn sync_checkpoints(mut syncer: Syncer, every: Duration, stop: CancellationToken) -> Result<(), SyncError> {
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

/// Turns a `smlocal stop` from another process (a marker in the job's folder) into a stop.
async fn watch_for_stop(state: StateDir, name: String, stop: CancellationToken) {
    stop_requested(&state, &name).await;
    stop.cancel();
}

/// Returns once `smlocal stop` or StopTrainingJob has asked for the job to stop.
pub(crate) async fn stop_requested(state: &StateDir, name: &str) {
    let mut tick = tokio::time::interval(STOP_POLL);
    loop {
        tick.tick().await;
        if state.stop_requested(name) {
            return;
        }
    }
}
