//! Jobs in the background, as the AWS API runs them: [`Queue::create`] checks and admits a
//! request and returns at once; the job then waits for one of `max_parallel` slots and for
//! its containers' memory caps to fit beside the running jobs' (so jobs together never eat
//! the machine's reserve), runs, and keeps its record current in the shared store (so
//! `smlocal describe/list/logs/stop` see it). A stop request or a shutdown reaches queued jobs
//! as well as running ones.

use crate::job::{self, JobError, Settings};
use crate::resources;
use crate::run::{self, RunError, RunOptions, Services};
use crate::spec::{self, AwsErrorKind, SpecError};
use crate::state::StateDir;
use crate::state::record::{Record, Secondary, StopReason};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

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

impl CreateError {
    pub fn aws_kind(&self) -> AwsErrorKind {
        match self {
            CreateError::Spec(e) => e.aws_kind(),
            CreateError::Job(e) => e.aws_kind(),
            CreateError::Run(e) => e.aws_kind(),
        }
    }
}

/// How the runner runs every job.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub settings: Settings,
    /// Jobs that may run at once; the rest wait, `Pending` (as do jobs whose memory does not
    /// fit beside the running ones).
    pub max_parallel: usize,
    pub stop_grace: Duration,
    /// Give containers this process's AWS credentials and S3 endpoint.
    pub pass_credentials: bool,
    /// Cancelled to SIGKILL every job's containers at once (a second Ctrl-C).
    pub hurry: CancellationToken,
}

pub struct Queue {
    services: Services,
    config: QueueConfig,
    slots: Arc<Slots>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Queue {
    pub fn new(services: Services, config: QueueConfig) -> Self {
        let usable = resources::usable_memory(&config.settings.host, config.settings.reserve) / MIB;
        let slots = Arc::new(Slots {
            jobs: Arc::new(Semaphore::new(config.max_parallel.max(1))),
            memory: Arc::new(Semaphore::new(usable as usize)),
            max_parallel: config.max_parallel.max(1),
            usable_mib: usable,
        });
        Queue { services, config, slots, shutdown: CancellationToken::new(), tasks: TaskTracker::new() }
    }

    pub fn store(&self) -> &StateDir {
        &self.services.state
    }

    /// The machine and region every job is planned for.
    pub(crate) fn settings(&self) -> &Settings {
        &self.config.settings
    }

    /// Cancelled when the queue shuts down (tuning jobs stop with it).
    pub(crate) fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs `task` with the queue's jobs: [`Queue::shut_down`] waits for it too.
    pub(crate) fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Validates and plans `request` (CreateTrainingJob JSON), reserves its name and starts it
    /// in the background. Returns the ARN as soon as the record exists.
    pub async fn create(&self, request: Value) -> Result<String, CreateError> {
        self.create_for(request, None).await
    }

    /// [`Queue::create`] for a tuning job's training job: its record (DescribeTrainingJob)
    /// names the tuning job in `TuningJobArn`, as AWS's does.
    pub(crate) async fn create_for(&self, request: Value, tuning_job_arn: Option<&str>) -> Result<String, CreateError> {
        let mut request = spec::from_value(request)?;
        if let Some(arn) = tuning_job_arn {
            request.raw.insert("TuningJobArn".into(), Value::String(arn.to_string()));
        }
        let job = job::plan(request, &self.config.settings)?;
        let span = tracing::info_span!("job", name = %job.name);
        for notice in &job.notices {
            span.in_scope(|| tracing::info!("{notice}"));
        }
        let record = run::admit(&job, &self.services).await?;
        span.in_scope(|| tracing::info!("created ({})", job.image));
        let (services, slots, shutdown) = (self.services.clone(), self.slots.clone(), self.shutdown.clone());
        let options = RunOptions {
            stop_grace: self.config.stop_grace,
            pass_credentials: self.config.pass_credentials,
            hurry: self.config.hurry.clone(),
            ..RunOptions::new(Arc::new(|_, _| {}))
        };
        let arn = job.arn.clone();
        let memory_mib: u64 = job.hosts.iter().map(|h| h.limits.memory_bytes.div_ceil(MIB)).sum();
        self.tasks.spawn(
            async move {
                let state = &services.state;
                let Some((record, _slot)) = wait_for_slot(record, state, &slots, memory_mib, &shutdown).await else {
                    return;
                };
                match run::run_admitted(&job, record, &services, &options, shutdown).await {
                    Ok(outcome) => {
                        tracing::info!(
                            "{} in {:.1}s",
                            outcome.record.training_job_status,
                            outcome.elapsed.as_secs_f64()
                        )
                    }
                    Err(e) => tracing::error!("{e}"),
                }
            }
            .instrument(span),
        );
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

const MIB: u64 = 1 << 20;

/// What a job needs to start: one of `max_parallel` places, and its memory caps (MiB) out of
/// what the machine has beyond its reserve.
struct Slots {
    jobs: Arc<Semaphore>,
    memory: Arc<Semaphore>,
    max_parallel: usize,
    usable_mib: u64,
}

/// A started job's place; dropping it frees both.
struct Slot {
    _job: OwnedSemaphorePermit,
    _memory: OwnedSemaphorePermit,
}

impl Slots {
    /// A job's memory, capped at all there is (planning already made it fit the machine).
    fn permits(&self, mib: u64) -> u32 {
        mib.min(self.usable_mib).try_into().unwrap_or(u32::MAX)
    }

    /// A slot now, or why not.
    fn try_take(&self, mib: u64) -> Result<Slot, String> {
        let job = self.jobs.clone().try_acquire_owned().map_err(|_| {
            format!("Waiting for one of the {} running jobs to end (--max-parallel)", self.max_parallel)
        })?;
        let memory = self.memory.clone().try_acquire_many_owned(self.permits(mib)).map_err(|_| {
            format!(
                "Waiting for memory: this job's containers need {mib} MiB and running jobs hold {} of the {} MiB this machine gives containers",
                self.usable_mib.saturating_sub(self.memory.available_permits() as u64),
                self.usable_mib
            )
        })?;
        Ok(Slot { _job: job, _memory: memory })
    }

    /// A slot, once one is free; jobs get them in the order they asked.
    async fn take(&self, mib: u64) -> Option<Slot> {
        let job = self.jobs.clone().acquire_owned().await.ok()?;
        let memory = self.memory.clone().acquire_many_owned(self.permits(mib)).await.ok()?;
        Some(Slot { _job: job, _memory: memory })
    }
}

/// While no slot is free the job is `Pending`, saying what it waits for; a stop or shutdown
/// meanwhile ends it as `Stopped`. Returns the record to run with and the slot (freed when
/// dropped), or None when the job ended waiting.
async fn wait_for_slot(
    mut record: Record,
    store: &StateDir,
    slots: &Slots,
    memory_mib: u64,
    shutdown: &CancellationToken,
) -> Option<(Record, Slot)> {
    let why = match slots.try_take(memory_mib) {
        Ok(slot) => return Some((record, slot)),
        Err(why) => why,
    };
    record.enter(Secondary::Pending, why);
    // In line at once, before the record is saved: the queue's order is then the order of
    // the Pending transitions' start times, which clients can read.
    let take = slots.take(memory_mib);
    tokio::pin!(take);
    if let std::task::Poll::Ready(slot) = futures::poll!(&mut take) {
        return slot.map(|slot| (record, slot));
    }
    if let Err(e) = store.save(&record) {
        tracing::warn!("{e}");
    }
    tokio::select! {
        slot = &mut take => slot.map(|slot| (record, slot)),
        () = run::stop_requested(store, &record.training_job_name) => {
            stopped(record, store)
        }
        () = shutdown.cancelled() => stopped(record, store),
    }
}

fn stopped(mut record: Record, store: &StateDir) -> Option<(Record, Slot)> {
    record.stop(StopReason::BeforeTraining);
    if let Err(e) = store.save(&record) {
        tracing::warn!("{e}");
    }
    store.release(&record.training_job_name);
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(max_parallel: usize, usable_mib: u64) -> Slots {
        Slots {
            jobs: Arc::new(Semaphore::new(max_parallel)),
            memory: Arc::new(Semaphore::new(usable_mib as usize)),
            max_parallel,
            usable_mib,
        }
    }

    #[tokio::test]
    async fn jobs_wait_for_a_place_and_for_memory() {
        let slots = slots(2, 10);
        let big = slots.try_take(8).expect("room for the first job");
        let why = slots.try_take(8).err().expect("no memory left for a second 8 MiB job");
        assert!(why.starts_with("Waiting for memory") && why.contains("hold 8 of the 10 MiB"), "{why}");
        let small = slots.try_take(2).expect("a small job fits beside it");
        let why = slots.try_take(1).err().expect("both places taken");
        assert!(why.contains("--max-parallel"), "{why}");
        drop(small);
        // A job larger than the machine (only with --oversubscribe) waits for all of it.
        let waiting = tokio::spawn(async move {
            let slot = slots.take(50).await;
            slot.is_some()
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "it waits while the first job holds memory");
        drop(big);
        assert!(waiting.await.unwrap());
    }
}
