//! Runs a planned job from start to record: stage the inputs, start one container per host
//! on the job's own network, stream its output, enforce stops (shutdown, max runtime) with
//! SIGTERM → grace → SIGKILL, collect and upload the artifacts, and keep the record current
//! at every step. A failed or stopped job is a [`JobOutcome`]; `Err` means smlocal itself
//! could not do its part.

use crate::artifacts;
use crate::docker::{ContainerSpec, Docker, DockerError, Exit, JOB_LABEL};
use crate::job::{HostPlan, Job};
use crate::record::{Record, Status};
use crate::resources::human_bytes;
use crate::stage::{self, StageError};
use crate::storage::{self, StorageError};
use crate::store::{Store, StoreError};
use futures::StreamExt;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The first 1024 characters of `/opt/ml/output/failure` become `FailureReason`.
const FAILURE_REASON_CHARS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Storage(#[from] StorageError),
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

/// Receives each complete log line with the host that printed it.
pub type LogSink = Arc<dyn Fn(&str, &str) + Send + Sync>;

#[derive(Clone)]
pub struct RunOptions {
    /// Time between SIGTERM and SIGKILL when a job is stopped.
    pub stop_grace: Duration,
    /// Leave containers, the network and work folders in place for debugging.
    pub keep: bool,
    /// Give the containers this process's AWS credentials (off unless the user asks).
    pub pass_credentials: bool,
    pub log: LogSink,
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
}

/// Why the containers were asked to stop.
#[derive(Debug, Clone, Copy, PartialEq)]
enum StopCause {
    Shutdown,
    MaxRuntime,
}

pub async fn run(
    job: &Job,
    store: &Store,
    docker: &Docker,
    options: &RunOptions,
    shutdown: CancellationToken,
) -> Result<JobOutcome, RunError> {
    let started = Instant::now();
    docker.ensure_image(&job.image).await?;
    if store.job_dir(&job.name).exists() {
        return Err(StoreError::ResourceInUse {
            arn: job.arn.clone(),
        }
        .into());
    }
    let model_uri = job.model_artifacts_uri();
    if storage::exists(&model_uri).await? {
        return Err(RunError::OutputExists(model_uri));
    }
    let mut record = Record::new(&job.name, &job.arn, &model_uri, &job.request.raw);
    let dir = store.create(&record)?;
    let dir = std::fs::canonicalize(&dir).map_err(|source| RunError::Io {
        path: dir.clone(),
        source,
    })?;
    let mut run = Running {
        job,
        store,
        docker,
        options,
        dir,
        containers: Vec::new(),
        network: None,
    };
    let result = run.drive(&mut record, &shutdown, started).await;
    run.clean_up(&result).await;
    if let Err(e) = &result {
        // The record must not stay InProgress when smlocal itself failed.
        if !record.training_job_status.is_terminal() {
            record.finish(
                Status::Failed,
                "Failed",
                "Training job failed",
                Some(format!("InternalServerError: {e}")),
            );
            let _ = store.save(&record);
        }
    }
    result
}

struct Running<'a> {
    job: &'a Job,
    store: &'a Store,
    docker: &'a Docker,
    options: &'a RunOptions,
    dir: PathBuf,
    containers: Vec<(String, String)>,
    network: Option<String>,
}

impl Running<'_> {
    async fn drive(
        &mut self,
        record: &mut Record,
        shutdown: &CancellationToken,
        started: Instant,
    ) -> Result<JobOutcome, RunError> {
        let job = self.job;
        let work = self.dir.join("work");
        record.transition("Downloading", "Downloading input data");
        self.store.save(record)?;
        let staged = tokio::select! {
            staged = stage::stage(job, &work) => staged,
            () = shutdown.cancelled() => {
                record.finish(Status::Stopped, "Stopped", "Training job stopped before training began", None);
                self.store.save(record)?;
                return Ok(self.outcome(record, true, started, None));
            }
        };
        if let Err(e) = staged {
            let reason = client_error(&e);
            record.finish(
                Status::Failed,
                "Failed",
                "Training job failed",
                Some(reason),
            );
            self.store.save(record)?;
            return Ok(self.outcome(record, false, started, None));
        }

        let suffix = unique_suffix();
        let network = if job.network_isolation && job.hosts.len() == 1 {
            "none".to_string()
        } else {
            let name = format!("smlocal-{}-{suffix}", job.name);
            self.docker
                .create_network(&name, &job.name, job.network_isolation)
                .await?;
            self.network = Some(name.clone());
            name
        };
        for host in &job.hosts {
            let spec = self.container_spec(host, &work, &network, &suffix);
            let id = self.docker.create_container(&spec).await?;
            self.containers.push((host.name.clone(), id));
        }
        let logs_dir = self.dir.join("logs");
        std::fs::create_dir_all(&logs_dir).map_err(|source| RunError::Io {
            path: logs_dir.clone(),
            source,
        })?;

        record.transition(
            "Training",
            "Training image download completed. Training in progress.",
        );
        self.store.save(record)?;
        let mut followers = Vec::new();
        for (host, id) in &self.containers {
            self.docker.start(id).await?;
            followers.push(tokio::spawn(follow(
                self.docker.clone(),
                id.clone(),
                host.clone(),
                logs_dir.join(format!("{host}.log")),
                self.options.log.clone(),
            )));
        }

        let (host, id) = self.containers[0].clone();
        let max_runtime = async {
            match job.max_runtime {
                Some(limit) => tokio::time::sleep(limit).await,
                None => std::future::pending().await,
            }
        };
        let wait = self.docker.wait(&id);
        tokio::pin!(wait);
        let (exit, stop) = tokio::select! {
            exit = &mut wait => (exit?, None),
            () = shutdown.cancelled() => (self.stop(record, &id, &mut wait, StopCause::Shutdown).await?, Some(StopCause::Shutdown)),
            () = max_runtime => (self.stop(record, &id, &mut wait, StopCause::MaxRuntime).await?, Some(StopCause::MaxRuntime)),
        };
        // Every line the container printed is in the log before the job is reported.
        for f in followers {
            let _ = f.await;
        }

        record.transition("Uploading", "Uploading generated training model");
        self.store.save(record)?;
        let host_root = stage::host_root(&work, &host);
        let kept = match self.collect(&host_root).await {
            Ok(()) => None,
            Err((kept, reason)) => {
                record.finish(
                    Status::Failed,
                    "Failed",
                    "Training job failed",
                    Some(reason),
                );
                self.store.save(record)?;
                return Ok(self.outcome(
                    record,
                    stop == Some(StopCause::Shutdown),
                    started,
                    Some(kept),
                ));
            }
        };

        match stop {
            Some(StopCause::Shutdown) => {
                record.finish(Status::Stopped, "Stopped", "Training job stopped", None)
            }
            Some(StopCause::MaxRuntime) => record.finish(
                Status::Stopped,
                "MaxRuntimeExceeded",
                format!(
                    "Training job stopped: MaxRuntimeInSeconds ({}) was exceeded",
                    job.max_runtime.map(|d| d.as_secs()).unwrap_or(0)
                ),
                None,
            ),
            None if exit.code == 0 => record.finish(
                Status::Completed,
                "Completed",
                "Training job completed",
                None,
            ),
            None => {
                let reason = failure_reason(&host_root, &host, exit, &job.hosts[0]);
                record.finish(
                    Status::Failed,
                    "Failed",
                    "Training job failed",
                    Some(reason),
                );
            }
        }
        self.store.save(record)?;
        Ok(self.outcome(record, stop == Some(StopCause::Shutdown), started, kept))
    }

    /// SIGTERM, then SIGKILL if the container is still running after the grace period.
    async fn stop(
        &self,
        record: &mut Record,
        id: &str,
        wait: &mut (impl std::future::Future<Output = Result<Exit, DockerError>> + Unpin),
        cause: StopCause,
    ) -> Result<Exit, RunError> {
        let why = match cause {
            StopCause::Shutdown => "Stopping the training job",
            StopCause::MaxRuntime => "Stopping the training job: MaxRuntimeInSeconds exceeded",
        };
        record.training_job_status = Status::Stopping;
        record.transition("Stopping", why);
        self.store.save(record)?;
        tracing::info!(
            "{why}: SIGTERM now, SIGKILL after {}s",
            self.options.stop_grace.as_secs()
        );
        self.docker.signal(id, "SIGTERM").await?;
        match tokio::time::timeout(self.options.stop_grace, &mut *wait).await {
            Ok(exit) => Ok(exit?),
            Err(_) => {
                tracing::warn!(
                    "the container did not exit within {}s of SIGTERM; sending SIGKILL",
                    self.options.stop_grace.as_secs()
                );
                self.docker.signal(id, "SIGKILL").await?;
                Ok(wait.await?)
            }
        }
    }

    fn container_spec(
        &self,
        host: &HostPlan,
        work: &Path,
        network: &str,
        suffix: &str,
    ) -> ContainerSpec {
        let job = self.job;
        let mut env = vec![
            format!("TRAINING_JOB_NAME={}", job.name),
            format!("TRAINING_JOB_ARN={}", job.arn),
            format!("AWS_REGION={}", job.region),
        ];
        if self.options.pass_credentials {
            for key in [
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_TOKEN",
            ] {
                if let Ok(value) = std::env::var(key) {
                    env.push(format!("{key}={value}"));
                }
            }
        }
        env.extend(job.environment.iter().map(|(k, v)| format!("{k}={v}")));
        ContainerSpec {
            name: format!("smlocal-{}-{}-{suffix}", job.name, host.name),
            hostname: host.name.clone(),
            image: job.image.clone(),
            entrypoint: job.entrypoint.clone(),
            args: job.args.clone(),
            env,
            binds: vec![format!(
                "{}:/opt/ml",
                stage::host_root(work, &host.name).display()
            )],
            labels: HashMap::from([
                (JOB_LABEL.to_string(), job.name.clone()),
                ("smlocal.host".to_string(), host.name.clone()),
            ]),
            memory_bytes: host.limits.memory_bytes as i64,
            nano_cpus: host.limits.nano_cpus,
            network: network.to_string(),
        }
    }

    /// Packs and uploads both tarballs. On failure the archives stay in the job folder and
    /// the reason says where.
    async fn collect(&self, host_root: &Path) -> Result<(), (PathBuf, String)> {
        let out = self.dir.join("artifacts");
        let job = self.job;
        let pairs = [
            (
                host_root.join("model"),
                out.join("model.tar.gz"),
                job.model_artifacts_uri(),
            ),
            (
                host_root.join("output/data"),
                out.join("output.tar.gz"),
                job.output_artifacts_uri(),
            ),
        ];
        let fail = |what: String| {
            (
                out.clone(),
                format!(
                    "ClientError: {what}; the artifacts are kept in {}",
                    out.display()
                ),
            )
        };
        std::fs::create_dir_all(&out)
            .map_err(|e| fail(format!("cannot create {}: {e}", out.display())))?;
        for (dir, archive, _) in &pairs {
            let (d, a) = (dir.clone(), archive.clone());
            let packed = tokio::task::spawn_blocking(move || artifacts::pack(&d, &a))
                .await
                .map_err(|e| fail(format!("packing {} stopped: {e}", dir.display())))?
                .map_err(|e| fail(e.to_string()))?;
            tracing::debug!(
                entries = packed.entries,
                bytes = packed.bytes,
                "packed {}",
                archive.display()
            );
        }
        for (_, archive, uri) in &pairs {
            storage::upload(archive, uri)
                .await
                .map_err(|e| fail(format!("uploading {uri} failed: {e}")))?;
        }
        if !self.options.keep {
            let _ = std::fs::remove_dir_all(&out);
        }
        Ok(())
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
        }
    }

    /// Removes the job's containers, network and work files (unless `--keep`), whatever
    /// happened before.
    async fn clean_up(&mut self, result: &Result<JobOutcome, RunError>) {
        if self.options.keep {
            tracing::info!(
                "--keep: leaving containers, network and {} in place",
                self.dir.join("work").display()
            );
            return;
        }
        for (_, id) in self.containers.drain(..) {
            if let Err(e) = self.docker.remove_container(&id).await {
                tracing::warn!("{e}");
            }
        }
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

/// Streams a container's output line by line to its log file and the sink, until it exits.
async fn follow(docker: Docker, id: String, host: String, path: PathBuf, sink: LogSink) {
    let mut file = match std::fs::File::create(&path) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!("cannot write {}: {e}", path.display());
            None
        }
    };
    // Docker frames are writes, not lines: keep a partial line per stream until it ends.
    let mut partial: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut emit = |line: &[u8]| {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\r');
        if let Some(f) = file.as_mut() {
            let _ = writeln!(f, "{text}");
        }
        sink(&host, text);
    };
    let mut stream = Box::pin(docker.output(&id));
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => {
                let buf = &mut partial[usize::from(chunk.stderr)];
                buf.extend_from_slice(&chunk.bytes);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    emit(&line[..line.len() - 1]);
                }
            }
            Err(e) => {
                tracing::warn!("{e}");
                break;
            }
        }
    }
    for buf in partial {
        if !buf.is_empty() {
            emit(&buf);
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
                ", capped to fit this machine"
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
            limits: Limits {
                memory_bytes: 256 << 20,
                nano_cpus: 2_000_000_000,
            },
        }
    }

    #[test]
    fn failure_file_wins_and_is_cut_at_1024_chars() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("output")).unwrap();
        std::fs::write(dir.path().join("output/failure"), "x".repeat(2000)).unwrap();
        let reason = failure_reason(
            dir.path(),
            "algo-1",
            Exit {
                code: 1,
                oom_killed: false,
            },
            &plan(),
        );
        assert_eq!(reason.len(), 1024);
    }

    #[test]
    fn without_a_failure_file_the_exit_code_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let reason = failure_reason(
            dir.path(),
            "algo-1",
            Exit {
                code: 3,
                oom_killed: false,
            },
            &plan(),
        );
        assert!(
            reason.starts_with("AlgorithmError:") && reason.contains("exit code 3"),
            "{reason}"
        );
    }

    #[test]
    fn out_of_memory_names_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let reason = failure_reason(
            dir.path(),
            "algo-1",
            Exit {
                code: 137,
                oom_killed: true,
            },
            &plan(),
        );
        assert!(
            reason.starts_with("OutOfMemoryError")
                && reason.contains("256.0 MiB")
                && reason.contains("capped"),
            "{reason}"
        );
    }
}
