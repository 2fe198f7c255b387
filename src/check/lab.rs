//! Where the checks' jobs run: a private state directory, `file://` data and output in a
//! scratch folder, and the image under test. Each check's run is a real job; what it leaves
//! (the outcome, the container's file changes, its memory, its logs) goes to [`super::judge`].

use super::judge;
use super::{CheckError, CheckOptions, CheckResult};
use crate::docker::{Change, Docker};
use crate::job::{self, Job, JobError};
use crate::run::{self, JobOutcome, RunError, RunOptions, Services};
use crate::spec::{self, SpecError};
use crate::state::StateDir;
use crate::state::record::{Record, Secondary, Status};
use crate::storage::Storage;
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Why a check's job did not run to an outcome.
#[derive(Debug, thiserror::Error)]
pub(super) enum LabError {
    #[error(transparent)]
    Request(#[from] SpecError),
    #[error(transparent)]
    Plan(#[from] JobError),
    #[error(transparent)]
    Run(#[from] RunError),
}

/// What the baseline run left to judge.
pub(super) struct Baseline {
    pub(super) outcome: Result<JobOutcome, LabError>,
    /// Seconds from the containers' start to their exit.
    pub(super) training_seconds: f64,
    pub(super) changes: Vec<Change>,
    pub(super) model_files: Vec<String>,
    pub(super) peak_memory: Option<u64>,
    pub(super) memory_cap: u64,
    pub(super) log_tail: String,
    pub(super) seconds: f64,
}

impl Baseline {
    fn failed(error: LabError) -> Self {
        Baseline {
            outcome: Err(error),
            training_seconds: 0.0,
            changes: Vec::new(),
            model_files: Vec::new(),
            peak_memory: None,
            memory_cap: 0,
            log_tail: String::new(),
            seconds: 0.0,
        }
    }

    pub(super) fn completed(&self) -> bool {
        self.outcome.as_ref().is_ok_and(completed)
    }
}

pub(super) fn completed(o: &JobOutcome) -> bool {
    o.record.training_job_status == Status::Completed
}

/// From the `Training` transition to the next one.
fn training_seconds(record: &Record) -> f64 {
    record.span_of(Secondary::Training).and_then(|(start, end)| end.map(|end| end - start)).unwrap_or(0.0)
}

pub(super) struct Lab<'a> {
    docker: &'a Docker,
    options: &'a CheckOptions,
    /// A private state directory, with this process's Docker Engine and storage.
    services: Services,
    request: Value,
}

impl<'a> Lab<'a> {
    pub(super) fn new(
        image: &'a str,
        docker: &'a Docker,
        storage: &Storage,
        options: &'a CheckOptions,
        root: &Path,
    ) -> Result<Self, CheckError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CheckError::Io { path, source }
        };
        let data = root.join("data/train");
        std::fs::create_dir_all(&data).map_err(io(&data))?;
        std::fs::write(data.join("data.csv"), "1.5,1.0,0.0\n-0.5,0.0,1.0\n2.5,1.0,1.0\n0.5,0.5,0.5\n")
            .map_err(io(&data))?;
        let mut request = match &options.request {
            Some(r) => r.clone(),
            None => json!({
                "TrainingJobName": "check",
                "RoleArn": "arn:aws:iam::000000000000:role/SmlocalCheck",
                "AlgorithmSpecification": {"TrainingImage": image, "TrainingInputMode": "File"},
                "InputDataConfig": [{
                    "ChannelName": "train",
                    "ContentType": "text/csv",
                    "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": format!("file://{}/", data.display())}}
                }],
                "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
                "StoppingCondition": {"MaxRuntimeInSeconds": 600}
            }),
        };
        if !request.is_object() {
            return Err(CheckError::Request("it must be a JSON object".into()));
        }
        request["AlgorithmSpecification"]["TrainingImage"] = json!(image);
        // The checks' artifacts stay in the scratch folder, never in the user's output path.
        request["OutputDataConfig"] = json!({"S3OutputPath": format!("file://{}/output", root.display())});
        let services =
            Services { state: StateDir::new(root.join("state")), docker: docker.clone(), storage: storage.clone() };
        let lab = Lab { docker, options, services, request };
        lab.prepare("probe", |_| {}).map_err(|e| CheckError::Request(e.to_string()))?;
        Ok(lab)
    }

    /// Whether the request reads any channel in Pipe mode (then the `pipe` check applies).
    pub(super) fn uses_pipe(&self) -> bool {
        self.prepare("probe", |_| {})
            .is_ok_and(|job| job.channels.iter().any(|c| c.input_mode == crate::spec::InputMode::Pipe))
    }

    pub(super) fn entrypoint(&self) -> Option<Vec<String>> {
        self.request["AlgorithmSpecification"]["ContainerEntrypoint"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
    }

    /// The request for one check's job, validated and planned.
    fn prepare(&self, check: &str, edit: impl FnOnce(&mut Value)) -> Result<Job, LabError> {
        let mut request = self.request.clone();
        request["TrainingJobName"] = json!(format!("check-{check}"));
        edit(&mut request);
        let request = spec::from_value(request)?;
        Ok(job::plan(request, &self.options.settings)?)
    }

    async fn run(&self, job: &Job, options: RunOptions, shutdown: CancellationToken) -> Result<JobOutcome, LabError> {
        Ok(run::run(job, &self.services, &options, shutdown).await?)
    }

    /// Plans and runs one check's job.
    async fn run_check(
        &self,
        check: &str,
        edit: impl FnOnce(&mut Value),
        options: RunOptions,
    ) -> Result<JobOutcome, LabError> {
        let job = self.prepare(check, edit)?;
        self.run(&job, options, CancellationToken::new()).await
    }

    fn run_options(&self) -> RunOptions {
        RunOptions { stop_grace: self.options.stop_grace, ..RunOptions::new(self.options.log.clone()) }
    }

    /// The last three log lines of a check's job, every host's.
    fn log_tail(&self, job: &str) -> String {
        let state = &self.services.state;
        let mut lines = Vec::new();
        for host in crate::logs::hosts(&state.logs_dir(job)) {
            let text = std::fs::read_to_string(state.log_path(job, &host)).unwrap_or_default();
            lines.extend(text.lines().map(|l| format!("{host} | {l}")));
        }
        let start = lines.len().saturating_sub(3);
        lines[start..].join(" / ")
    }

    /// The plain run most checks judge: kept, so its file system can be inspected, and
    /// sampled for memory while it runs.
    pub(super) async fn baseline(&self) -> Baseline {
        let started = Instant::now();
        let job = match self.prepare("train", |_| {}) {
            Ok(job) => job,
            Err(e) => return Baseline::failed(e),
        };
        let peak = Arc::new(AtomicU64::new(0));
        let ids: Arc<Mutex<Vec<String>>> = Arc::default();
        let (docker, peak_w, ids_w) = (self.docker.clone(), peak.clone(), ids.clone());
        let options = RunOptions {
            keep: true,
            on_start: Some(Arc::new(move |_host, id| {
                if let Ok(mut ids) = ids_w.lock() {
                    ids.push(id.to_string());
                }
                tokio::spawn(sample_memory(docker.clone(), id.to_string(), peak_w.clone()));
            })),
            ..self.run_options()
        };
        let outcome = self.run(&job, options, CancellationToken::new()).await;
        let id = ids.lock().ok().and_then(|ids| ids.first().cloned());
        let changes = match &id {
            Some(id) => self.docker.changes(id).await.unwrap_or_default(),
            None => Vec::new(),
        };
        self.remove_leftovers().await;
        // The request's output is a file:// folder of the lab's (see `Lab::new`).
        let model = PathBuf::from(job.model_artifacts_uri().trim_start_matches("file://"));
        let training_seconds = outcome.as_ref().map(|o| training_seconds(&o.record)).unwrap_or(0.0);
        Baseline {
            outcome,
            training_seconds,
            changes,
            model_files: tar_files(&model),
            peak_memory: Some(peak.load(Ordering::SeqCst)).filter(|p| *p > 0),
            memory_cap: job.hosts[0].limits.memory_bytes,
            log_tail: self.log_tail("check-train"),
            seconds: started.elapsed().as_secs_f64(),
        }
    }

    /// The baseline ran with `--keep` so its container could be inspected: its Docker
    /// objects go now.
    async fn remove_leftovers(&self) {
        let home = self.services.state.root().display().to_string();
        if let Ok(found) = self.docker.labelled(Some(&home)).await {
            for (id, _) in &found.containers {
                let _ = self.docker.remove_container(id).await;
            }
            for (net, _) in &found.networks {
                let _ = self.docker.remove_network(net).await;
            }
            for (volume, _) in &found.volumes {
                let _ = self.docker.remove_volume(volume).await;
            }
        }
    }

    /// SIGTERM halfway through a run as long as the baseline's: late enough that the
    /// algorithm has set itself up (a Python framework may take seconds to import), as a stop
    /// or a spot reclaim comes in the middle of training.
    pub(super) async fn sigterm(&self, baseline_training: f64) -> CheckResult {
        let started = Instant::now();
        let grace = self.options.stop_grace;
        if baseline_training < judge::MIN_TRAINING_FOR_SIGTERM {
            return judge::sigterm_too_short(baseline_training).since(started);
        }
        let shutdown = CancellationToken::new();
        let trigger = shutdown.clone();
        let delay = Duration::from_secs_f64(baseline_training / 2.0);
        let options = RunOptions {
            on_start: Some(Arc::new(move |_, _| {
                let trigger = trigger.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    trigger.cancel();
                });
            })),
            ..self.run_options()
        };
        let outcome = match self.prepare("sigterm", |_| {}) {
            Ok(job) => self.run(&job, options, shutdown).await,
            Err(e) => Err(e),
        };
        judge::sigterm(&outcome, grace).since(started)
    }

    /// A run that must fail: with the invalid hyperparameters the user named, or with no
    /// input channels.
    pub(super) async fn failure(&self) -> CheckResult {
        let started = Instant::now();
        let invalid = self.options.invalid_hyperparameters.clone();
        let how = if invalid.is_some() { "with the invalid hyperparameters" } else { "with no input channels" };
        let edit = |r: &mut Value| match invalid {
            Some(hp) => merge_hyperparameters(r, hp),
            None => {
                if let Some(o) = r.as_object_mut() {
                    o.remove("InputDataConfig");
                }
            }
        };
        let outcome = self.run_check("failure", edit, self.run_options()).await;
        judge::failure(&outcome, how).since(started)
    }

    pub(super) async fn isolation(&self) -> CheckResult {
        let started = Instant::now();
        let edit = |r: &mut Value| r["EnableNetworkIsolation"] = json!(true);
        let outcome = self.run_check("isolation", edit, self.run_options()).await;
        judge::isolation(&outcome, &self.log_tail("check-isolation")).since(started)
    }

    pub(super) async fn two_hosts(&self) -> CheckResult {
        let started = Instant::now();
        let edit = |r: &mut Value| {
            let instance_type = r["ResourceConfig"]["InstanceType"]
                .as_str()
                .or_else(|| r["ResourceConfig"]["InstanceGroups"][0]["InstanceType"].as_str())
                .unwrap_or("ml.m5.large")
                .to_string();
            let volume = r["ResourceConfig"]["VolumeSizeInGB"].clone();
            r["ResourceConfig"] = json!({"InstanceType": instance_type, "InstanceCount": 2, "VolumeSizeInGB": volume});
            if let Some(channels) = r["InputDataConfig"].as_array_mut() {
                for c in channels {
                    if let Some(s3) = c["DataSource"]["S3DataSource"].as_object_mut() {
                        s3.remove("InstanceGroupNames");
                    }
                }
            }
        };
        // Instance-like host names, as on SageMaker: only resourceconfig.json says algo-N.
        let options = RunOptions { instance_hostnames: true, ..self.run_options() };
        let outcome = self.run_check("two-hosts", edit, options).await;
        judge::two_hosts(&outcome, &self.log_tail("check-two-hosts")).since(started)
    }
}

async fn sample_memory(docker: Docker, id: String, peak: Arc<AtomicU64>) {
    while let Some(sample) = docker.memory_peak(&id).await {
        peak.fetch_max(sample, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The files (not folders) in a model tarball.
fn tar_files(archive: &Path) -> Vec<String> {
    let Ok(file) = std::fs::File::open(archive) else {
        return Vec::new();
    };
    let mut tar = tar::Archive::new(flate2::read::MultiGzDecoder::new(file));
    let Ok(entries) = tar.entries() else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| !e.header().entry_type().is_dir())
        .filter_map(|e| e.path().ok().map(|p| p.display().to_string()))
        .collect()
}

/// `--invalid-hyperparameters` merged into the request's own, so only what the user named is
/// invalid and everything else the image needs is still there.
fn merge_hyperparameters(request: &mut Value, invalid: Map<String, Value>) {
    if !request["HyperParameters"].is_object() {
        request["HyperParameters"] = json!({});
    }
    if let Some(own) = request["HyperParameters"].as_object_mut() {
        own.extend(invalid);
    }
}

#[cfg(test)]
mod merge_tests {
    use super::*;

    #[test]
    fn invalid_hyperparameters_are_merged_into_the_requests_own() {
        let mut request = json!({"HyperParameters": {"epochs": "3", "learning_rate": "0.1"}});
        let invalid = json!({"learning_rate": "fast"}).as_object().cloned().unwrap();
        merge_hyperparameters(&mut request, invalid.clone());
        assert_eq!(request["HyperParameters"], json!({"epochs": "3", "learning_rate": "fast"}));
        let mut bare = json!({});
        merge_hyperparameters(&mut bare, invalid);
        assert_eq!(bare["HyperParameters"], json!({"learning_rate": "fast"}));
    }
}
