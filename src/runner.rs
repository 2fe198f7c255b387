//! Jobs in the background, as the AWS API runs them: [`Runner::create`] checks and admits a
//! request and returns at once; the job then waits for one of `max_parallel` slots, runs, and
//! keeps its record current in the shared store (so `smlocal describe/list/logs/stop` see
//! it). A stop request or a shutdown reaches queued jobs as well as running ones.

use crate::docker::Docker;
use crate::job::{self, JobError, Settings};
use crate::record::{Record, Status};
use crate::run::{self, RunError, RunOptions};
use crate::spec::{self, SpecError};
use crate::store::Store;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why a request was not admitted; nothing was recorded.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Job(#[from] JobError),
    #[error(transparent)]
    Run(#[from] RunError),
}

/// How the runner runs every job.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub settings: Settings,
    /// Jobs that may run at once; the rest wait, `Pending`.
    pub max_parallel: usize,
    pub stop_grace: Duration,
    /// Give containers this process's AWS credentials and S3 endpoint.
    pub pass_credentials: bool,
}

pub struct Runner {
    store: Store,
    docker: Docker,
    config: RunnerConfig,
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Runner {
    pub fn new(store: Store, docker: Docker, config: RunnerConfig) -> Self {
        let slots = Arc::new(Semaphore::new(config.max_parallel.max(1)));
        Runner { store, docker, config, slots, shutdown: CancellationToken::new(), tasks: TaskTracker::new() }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Validates and plans `request` (CreateTrainingJob JSON), reserves its name and starts it
    /// in the background. Returns the ARN as soon as the record exists.
    pub async fn create(&self, request: Value) -> Result<String, CreateError> {
        let request = spec::from_value(request)?;
        let job = job::plan(request, &self.config.settings)?;
        for notice in &job.notices {
            tracing::info!("{}: {notice}", job.name);
        }
        let record = run::admit(&job, &self.store, &self.docker).await?;
        tracing::info!("{}: created ({})", job.name, job.image);
        let (store, docker, slots, shutdown) =
            (self.store.clone(), self.docker.clone(), self.slots.clone(), self.shutdown.clone());
        let options = RunOptions {
            stop_grace: self.config.stop_grace,
            pass_credentials: self.config.pass_credentials,
            ..RunOptions::new(Arc::new(|_, _| {}))
        };
        let max_parallel = self.config.max_parallel;
        let arn = job.arn.clone();
        self.tasks.spawn(async move {
            let started = Instant::now();
            let Some((record, _slot)) = wait_for_slot(record, &store, slots, &shutdown, max_parallel).await else {
                return;
            };
            match run::run_admitted(&job, record, &store, &docker, &options, shutdown, started).await {
                Ok(outcome) => tracing::info!(
                    "{}: {:?} in {:.1}s",
                    job.name,
                    outcome.record.training_job_status,
                    outcome.elapsed.as_secs_f64()
                ),
                Err(e) => tracing::error!("{}: {e}", job.name),
            }
        });
        Ok(arn)
    }

    /// Stops every job (queued ones at once, running ones with SIGTERM and the grace) and
    /// waits until their records are final.
    pub async fn shut_down(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// While every slot is taken the job is `Pending`; a stop or shutdown meanwhile ends it as
/// `Stopped`. Returns the record to run with and the slot (freed when dropped), or None when
/// the job ended waiting. Slots go to waiting jobs in the order they were created.
async fn wait_for_slot(
    mut record: Record,
    store: &Store,
    slots: Arc<Semaphore>,
    shutdown: &CancellationToken,
    max_parallel: usize,
) -> Option<(Record, OwnedSemaphorePermit)> {
    if let Ok(slot) = slots.clone().try_acquire_owned() {
        return Some((record, slot));
    }
    record.transition("Pending", format!("Waiting for one of the {max_parallel} running jobs to end (--max-parallel)"));
    if let Err(e) = store.save(&record) {
        tracing::warn!("{e}");
    }
    tokio::select! {
        slot = slots.acquire_owned() => slot.ok().map(|slot| (record, slot)),
        () = run::stop_requested(store, &record.training_job_name) => {
            stopped(record, store)
        }
        () = shutdown.cancelled() => stopped(record, store),
    }
}

fn stopped(mut record: Record, store: &Store) -> Option<(Record, OwnedSemaphorePermit)> {
    record.finish(Status::Stopped, "Stopped", "Training job stopped before training began", None);
    if let Err(e) = store.save(&record) {
        tracing::warn!("{e}");
    }
    None
}
