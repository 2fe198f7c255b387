//! `smlocal check IMAGE`: runs an algorithm image through short jobs and judges it against
//! the training contract, one named check at a time, so a team finds contract mistakes in
//! seconds instead of after a cloud job has started and failed.

use crate::docker::{Change, Docker};
use crate::job::{self, Settings};
use crate::logs::LogSink;
use crate::resources::human_bytes;
use crate::run::{self, JobOutcome, RunOptions, Services};
use crate::spec;
use crate::state::StateDir;
use crate::state::record::{FailureKind, Record, Secondary, Status};
use crate::storage::Storage;
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn check_names() -> String {
    CHECKS.iter().map(|c| c.0).collect::<Vec<_>>().join(", ")
}

/// Every check: its name and what it protects against (README documents each).
pub const CHECKS: &[(&str, &str)] = &[
    ("train", "the image starts with the argument `train` (or the request's entrypoint) and exits 0"),
    ("model", "it writes at least one file under /opt/ml/model, or the job uploads an empty model"),
    ("filesystem", "it writes nothing outside /opt/ml/model, /opt/ml/output, /opt/ml/checkpoints and /tmp"),
    ("sigterm", "it stops cleanly on SIGTERM within the grace, as StopTrainingJob and spot reclaims require"),
    ("failure", "a failing run exits non-zero and explains itself in /opt/ml/output/failure"),
    ("isolation", "it needs no network, so it works with EnableNetworkIsolation"),
    ("memory", "it stays well inside the instance type's memory"),
    ("two-hosts", "it runs as 2 hosts, taking its identity from resourceconfig.json, not /etc/hostname"),
    ("pid1", "its entrypoint is exec form, so PID 1 receives signals; reports the image size"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug, Clone)]
pub struct CheckResult {
    pub name: &'static str,
    pub verdict: Verdict,
    pub evidence: String,
    pub fix: String,
    pub seconds: f64,
}

impl CheckResult {
    fn new(name: &'static str, verdict: Verdict, evidence: impl Into<String>, fix: impl Into<String>) -> Self {
        CheckResult { name, verdict, evidence: evidence.into(), fix: fix.into(), seconds: 0.0 }
    }

    /// The time the check's own runs took.
    fn since(mut self, started: Instant) -> Self {
        self.seconds = started.elapsed().as_secs_f64();
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("unknown check '{name}'; the checks are: {}", check_names())]
    UnknownCheck { name: String },
    #[error("the request is not usable for checks: {0}")]
    Request(String),
    #[error(transparent)]
    Docker(#[from] crate::docker::DockerError),
    #[error("cannot prepare the check's files in '{}': {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub struct CheckOptions {
    /// The user's own request; `None` generates a minimal one with a tiny CSV `train` channel.
    pub request: Option<Value>,
    /// Run only these checks.
    pub only: Option<Vec<String>>,
    pub stop_grace: Duration,
    /// Hyperparameters the image must reject; without them the failure run has no channels.
    pub invalid_hyperparameters: Option<Map<String, Value>>,
    pub settings: Settings,
    pub log: LogSink,
}

/// Runs the selected checks against `image`, in the order of [`CHECKS`].
pub async fn check(
    image: &str,
    docker: &Docker,
    storage: &Storage,
    options: &CheckOptions,
) -> Result<Vec<CheckResult>, CheckError> {
    let selected: Vec<&'static str> = match &options.only {
        Some(only) => {
            for name in only {
                if !CHECKS.iter().any(|c| c.0 == name) {
                    return Err(CheckError::UnknownCheck { name: name.clone() });
                }
            }
            CHECKS.iter().map(|c| c.0).filter(|c| only.iter().any(|o| o == c)).collect()
        }
        None => CHECKS.iter().map(|c| c.0).collect(),
    };
    let image_info = docker.image_info(image).await?;
    let scratch = tempfile::Builder::new()
        .prefix("smlocal-check-")
        .tempdir()
        .map_err(|source| CheckError::Io { path: std::env::temp_dir(), source })?;
    let lab = Lab::new(image, docker, storage, options, scratch.path())?;

    let wants = |names: &[&str]| names.iter().any(|n| selected.contains(n));
    let baseline = if wants(&["train", "model", "filesystem", "memory", "sigterm", "isolation", "two-hosts"]) {
        Some(lab.baseline().await)
    } else {
        None
    };
    let baseline_ok = baseline.as_ref().is_some_and(|b| b.outcome.as_ref().is_ok_and(completed));
    let (sigterm, failure, isolation, two_hosts) = tokio::join!(
        lab.when(
            baseline_ok && wants(&["sigterm"]),
            lab.sigterm(baseline.as_ref().map(|b| b.training_seconds).unwrap_or(0.0))
        ),
        lab.when(wants(&["failure"]), lab.failure()),
        lab.when(baseline_ok && wants(&["isolation"]), lab.isolation()),
        lab.when(baseline_ok && wants(&["two-hosts"]), lab.two_hosts()),
    );

    let mut results = Vec::new();
    for name in selected {
        let not_evaluated = || {
            let why = "not evaluated: the image does not complete a plain run (see the 'train' check)";
            CheckResult::new(name, Verdict::Warn, why, "fix 'train' first")
        };
        let result = match name {
            "train" => baseline.as_ref().map(judge_train),
            "model" => baseline.as_ref().filter(|_| baseline_ok).map(judge_model).or_else(|| Some(not_evaluated())),
            "filesystem" => {
                baseline.as_ref().filter(|_| baseline_ok).map(judge_filesystem).or_else(|| Some(not_evaluated()))
            }
            "memory" => baseline.as_ref().filter(|_| baseline_ok).map(judge_memory).or_else(|| Some(not_evaluated())),
            "sigterm" => sigterm.clone().or_else(|| Some(not_evaluated())),
            "failure" => failure.clone(),
            "isolation" => isolation.clone().or_else(|| Some(not_evaluated())),
            "two-hosts" => two_hosts.clone().or_else(|| Some(not_evaluated())),
            "pid1" => Some(judge_pid1(&image_info, lab.entrypoint())),
            _ => None,
        };
        results.extend(result);
    }
    Ok(results)
}

/// From the `Training` transition to the next one.
fn training_seconds(record: &Record) -> f64 {
    record.span_of(Secondary::Training).and_then(|(start, end)| end.map(|end| end - start)).unwrap_or(0.0)
}

fn completed(o: &JobOutcome) -> bool {
    o.record.training_job_status == Status::Completed
}

/// A baseline shorter than this leaves no middle to send SIGTERM in.
const MIN_TRAINING_FOR_SIGTERM: f64 = 0.5;

/// What the baseline run left to judge.
struct Baseline {
    outcome: Result<JobOutcome, String>,
    /// Seconds from the containers' start to their exit.
    training_seconds: f64,
    changes: Vec<Change>,
    model_files: Vec<String>,
    peak_memory: Option<u64>,
    memory_cap: u64,
    log_tail: String,
    seconds: f64,
}

/// Where the checks' jobs run: a private state directory, file:// data and output.
struct Lab<'a> {
    docker: &'a Docker,
    options: &'a CheckOptions,
    /// A private state directory, with this process's Docker Engine and storage.
    services: Services,
    request: Value,
}

impl<'a> Lab<'a> {
    fn new(
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
        lab.prepare("probe", |_| {}).map_err(CheckError::Request)?;
        Ok(lab)
    }

    fn entrypoint(&self) -> Option<Vec<String>> {
        self.request["AlgorithmSpecification"]["ContainerEntrypoint"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
    }

    async fn when(&self, condition: bool, run: impl std::future::Future<Output = CheckResult>) -> Option<CheckResult> {
        if condition { Some(run.await) } else { None }
    }

    /// The request for one check's job, validated and planned.
    fn prepare(&self, check: &str, edit: impl FnOnce(&mut Value)) -> Result<job::Job, String> {
        let mut request = self.request.clone();
        request["TrainingJobName"] = json!(format!("check-{check}"));
        edit(&mut request);
        let request = spec::from_value(request).map_err(|e| e.to_string())?;
        job::plan(request, &self.options.settings).map_err(|e| e.to_string())
    }

    async fn run(
        &self,
        job: &job::Job,
        options: RunOptions,
        shutdown: CancellationToken,
    ) -> Result<JobOutcome, String> {
        run::run(job, &self.services, &options, shutdown).await.map_err(|e| e.to_string())
    }

    fn run_options(&self) -> RunOptions {
        RunOptions { stop_grace: self.options.stop_grace, ..RunOptions::new(self.options.log.clone()) }
    }

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
    async fn baseline(&self) -> Baseline {
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
    async fn sigterm(&self, baseline_training: f64) -> CheckResult {
        let started = Instant::now();
        let grace = self.options.stop_grace;
        let result =
            |verdict, evidence: String, fix: &str| CheckResult::new("sigterm", verdict, evidence, fix).since(started);
        if baseline_training < MIN_TRAINING_FOR_SIGTERM {
            return result(
                Verdict::Warn,
                format!("training took {baseline_training:.2} s, too short to send SIGTERM in the middle of it"),
                "give --request hyperparameters or data that train for a few seconds to test SIGTERM handling",
            );
        }
        let job = match self.prepare("sigterm", |_| {}) {
            Ok(job) => job,
            Err(e) => return result(Verdict::Fail, e, "make the request valid"),
        };
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
        let outcome = match self.run(&job, options, shutdown).await {
            Ok(o) => o,
            Err(e) => return result(Verdict::Fail, e, "see the error"),
        };
        let stopping = outcome.record.span_of(Secondary::Stopping);
        match stopping {
            None => result(
                Verdict::Warn,
                format!("the run ended in {:.2} s, before SIGTERM was sent", outcome.elapsed.as_secs_f64()),
                "give --request hyperparameters that train for a few seconds to test SIGTERM handling",
            ),
            Some((start, end)) => {
                let took = end.unwrap_or(start) - start;
                if outcome.sigkilled.is_empty() {
                    result(Verdict::Pass, format!("exited {took:.2} s after SIGTERM (grace {} s)", grace.as_secs()), "")
                } else {
                    result(
                        Verdict::Fail,
                        format!("still running {} s after SIGTERM; it was SIGKILLed", grace.as_secs()),
                        "handle SIGTERM: save what you can and exit (and run the process as PID 1 with an exec-form ENTRYPOINT)",
                    )
                }
            }
        }
    }

    async fn failure(&self) -> CheckResult {
        let started = Instant::now();
        let invalid = self.options.invalid_hyperparameters.clone();
        let how = if invalid.is_some() { "with the invalid hyperparameters" } else { "with no input channels" };
        let job = self.prepare("failure", |r| match invalid {
            Some(hp) => r["HyperParameters"] = Value::Object(hp),
            None => {
                if let Some(o) = r.as_object_mut() {
                    o.remove("InputDataConfig");
                }
            }
        });
        let result =
            |verdict, evidence: String, fix: &str| CheckResult::new("failure", verdict, evidence, fix).since(started);
        let job = match job {
            Ok(job) => job,
            Err(e) => return result(Verdict::Fail, e, "make the request valid"),
        };
        let outcome = match self.run(&job, self.run_options(), CancellationToken::new()).await {
            Ok(o) => o,
            Err(e) => return result(Verdict::Fail, e, "see the error"),
        };
        let r = &outcome.record;
        let reason = r.failure_reason.clone().unwrap_or_default();
        match r.training_job_status {
            Status::Completed => result(
                Verdict::Fail,
                format!("run {how} exited 0"),
                "check inputs and hyperparameters; on bad input write the reason to /opt/ml/output/failure and exit non-zero",
            ),
            Status::Failed if outcome.failure.as_ref().is_some_and(|f| f.kind == FailureKind::AlgorithmExit) => result(
                Verdict::Fail,
                format!("run {how} failed but wrote no /opt/ml/output/failure ({reason})"),
                "write a one-line reason to /opt/ml/output/failure before exiting non-zero: it becomes FailureReason",
            ),
            Status::Failed => result(Verdict::Pass, format!("run {how} failed with: {}", shorten(&reason, 100)), ""),
            other => result(Verdict::Warn, format!("run {how} ended {other:?}"), ""),
        }
    }

    async fn isolation(&self) -> CheckResult {
        let started = Instant::now();
        let outcome = match self.prepare("isolation", |r| r["EnableNetworkIsolation"] = json!(true)) {
            Ok(job) => self.run(&job, self.run_options(), CancellationToken::new()).await,
            Err(e) => Err(e),
        };
        let (verdict, evidence, fix) = match &outcome {
            Ok(o) if completed(o) => {
                (Verdict::Pass, "completed with EnableNetworkIsolation (no network at all)".to_string(), "")
            }
            Ok(o) => (
                Verdict::Fail,
                format!(
                    "fails without network: {} ({})",
                    o.record.failure_reason.clone().unwrap_or_default(),
                    self.log_tail("check-isolation")
                ),
                "bake dependencies and weights into the image or the input channels; fetch nothing at run time",
            ),
            Err(e) => (Verdict::Fail, e.clone(), "see the error"),
        };
        CheckResult::new("isolation", verdict, evidence, fix).since(started)
    }

    async fn two_hosts(&self) -> CheckResult {
        let started = Instant::now();
        let job = self.prepare("two-hosts", |r| {
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
        });
        // Instance-like host names, as on SageMaker: only resourceconfig.json says algo-N.
        let options = RunOptions { instance_hostnames: true, ..self.run_options() };
        let outcome = match job {
            Ok(job) => self.run(&job, options, CancellationToken::new()).await,
            Err(e) => Err(e),
        };
        let (verdict, evidence, fix) = match &outcome {
            Ok(o) if completed(o) => {
                (Verdict::Pass, format!("algo-1 and algo-2 both finished in {:.1} s", o.elapsed.as_secs_f64()), "")
            }
            Ok(o) => (
                Verdict::Fail,
                format!(
                    "as 2 hosts (host names ip-10-0-1-11, ip-10-0-1-12): {} ({})",
                    o.record.failure_reason.clone().unwrap_or_else(|| format!("{:?}", o.record.training_job_status)),
                    self.log_tail("check-two-hosts")
                ),
                "take current_host and hosts from /opt/ml/input/config/resourceconfig.json, not from /etc/hostname or socket.gethostname()",
            ),
            Err(e) => (Verdict::Fail, e.clone(), "see the error"),
        };
        CheckResult::new("two-hosts", verdict, evidence, fix).since(started)
    }
}

impl Baseline {
    fn failed(reason: String) -> Self {
        Baseline {
            outcome: Err(reason),
            training_seconds: 0.0,
            changes: Vec::new(),
            model_files: Vec::new(),
            peak_memory: None,
            memory_cap: 0,
            log_tail: String::new(),
            seconds: 0.0,
        }
    }
}

async fn sample_memory(docker: Docker, id: String, peak: Arc<AtomicU64>) {
    while let Some(sample) = docker.memory_peak(&id).await {
        peak.fetch_max(sample, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn judge_train(b: &Baseline) -> CheckResult {
    let (verdict, evidence, fix) = match &b.outcome {
        Ok(o) if completed(o) => (Verdict::Pass, format!("exit 0 in {:.2} s", b.seconds), String::new()),
        Ok(o) => (
            Verdict::Fail,
            format!(
                "{:?}: {} ({})",
                o.record.training_job_status,
                o.record.failure_reason.clone().unwrap_or_default(),
                b.log_tail
            ),
            "SageMaker runs `docker run IMAGE train`: the entrypoint must accept `train` and exit 0 after training"
                .into(),
        ),
        Err(e) => (Verdict::Fail, e.clone(), "see the error".into()),
    };
    CheckResult { seconds: b.seconds, ..CheckResult::new("train", verdict, evidence, fix) }
}

fn judge_model(b: &Baseline) -> CheckResult {
    let (verdict, evidence, fix) = match b.model_files.len() {
        0 => (Verdict::Fail, "model.tar.gz is empty".to_string(), "save the trained model under /opt/ml/model"),
        n => (Verdict::Pass, format!("{n} file(s), e.g. {}", b.model_files[0]), ""),
    };
    CheckResult::new("model", verdict, evidence, fix)
}

/// Paths a training container may write; everything else is lost on SageMaker or a sign of
/// an image that is not self-contained.
const ALLOWED: &[&str] = &["/opt/ml/model", "/opt/ml/output", "/opt/ml/checkpoints", "/tmp"];

fn judge_filesystem(b: &Baseline) -> CheckResult {
    let outside = outside_allowed(&b.changes);
    let (verdict, evidence, fix) = if outside.is_empty() {
        (Verdict::Pass, "no writes outside /opt/ml/model, /opt/ml/output, /opt/ml/checkpoints, /tmp".to_string(), "")
    } else {
        (
            Verdict::Fail,
            format!("wrote {}", outside.iter().take(5).cloned().collect::<Vec<_>>().join(", ")),
            "write results to /opt/ml/model or /opt/ml/output/data and scratch files to /tmp",
        )
    };
    CheckResult::new("filesystem", verdict, evidence, fix)
}

/// The changed paths outside [`ALLOWED`], each as `A /path` (added), `C` or `D`. A changed
/// directory only counts when nothing inside it is listed (its own change is then the news).
pub fn outside_allowed(changes: &[Change]) -> Vec<String> {
    let allowed =
        |p: &str| ALLOWED.iter().any(|a| p == *a || p.starts_with(&format!("{a}/")) || a.starts_with(&format!("{p}/")));
    changes
        .iter()
        .filter(|c| !allowed(&c.path))
        .filter(|c| c.kind != 'C' || !changes.iter().any(|o| o.path.starts_with(&format!("{}/", c.path))))
        .map(|c| format!("{} {}", c.kind, c.path))
        .collect()
}

fn judge_memory(b: &Baseline) -> CheckResult {
    let oom = b
        .outcome
        .as_ref()
        .ok()
        .and_then(|o| o.failure.as_ref())
        .filter(|f| f.kind == FailureKind::OutOfMemory)
        .map(|f| f.reason.clone());
    let cap = b.memory_cap;
    let (verdict, evidence, fix) = match (oom, b.peak_memory) {
        (Some(reason), _) => (Verdict::Fail, reason, "use less memory or a larger instance type"),
        (None, None) => (
            Verdict::Warn,
            format!("finished in {:.2} s, too quickly to sample its memory (cap {})", b.seconds, human_bytes(cap)),
            "give --request data or hyperparameters that run for a second or more",
        ),
        (None, Some(peak)) => {
            let share = peak as f64 / cap.max(1) as f64;
            let evidence = format!("peak {} of {} ({:.0}%)", human_bytes(peak), human_bytes(cap), share * 100.0);
            if share > 0.9 {
                (
                    Verdict::Fail,
                    evidence,
                    "on a real instance system processes take part of this memory: use less or a larger instance type",
                )
            } else if share > 0.75 {
                (Verdict::Warn, evidence, "little headroom: a larger input may run out of memory")
            } else {
                (Verdict::Pass, evidence, "")
            }
        }
    };
    CheckResult::new("memory", verdict, evidence, fix)
}

fn judge_pid1(image: &crate::docker::ImageInfo, request_entrypoint: Option<Vec<String>>) -> CheckResult {
    let entrypoint = request_entrypoint.unwrap_or_else(|| image.entrypoint.clone());
    let shell = entrypoint.len() >= 2
        && entrypoint[0].rsplit('/').next().is_some_and(|b| b == "sh" || b == "bash")
        && entrypoint[1] == "-c";
    let size = human_bytes(image.size_bytes);
    let shown = if entrypoint.is_empty() {
        format!("(none; CMD {:?} is replaced by train)", image.cmd)
    } else {
        format!("{entrypoint:?}")
    };
    let (verdict, evidence, fix) = if shell {
        (
            Verdict::Warn,
            format!("shell-form ENTRYPOINT {shown}: PID 1 is the shell, which does not pass SIGTERM on; image {size}"),
            "use exec form: ENTRYPOINT [\"/usr/local/bin/train\"] (or `exec` in a wrapper script)",
        )
    } else {
        (Verdict::Pass, format!("ENTRYPOINT {shown}; image {size}"), "")
    };
    CheckResult::new("pid1", verdict, evidence, fix)
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

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() > max {
        format!("{}...", text.chars().take(max).collect::<String>())
    } else {
        text.to_string()
    }
}

/// JUnit XML: one testcase per check; FAIL is a failure, WARN passes with its evidence in
/// system-out.
pub fn junit(image: &str, results: &[CheckResult]) -> String {
    let failures = results.iter().filter(|r| r.verdict == Verdict::Fail).count();
    let total: f64 = results.iter().map(|r| r.seconds).sum();
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    xml.push_str(&format!(
        "<testsuites tests=\"{}\" failures=\"{failures}\" time=\"{total:.3}\">\n  <testsuite name=\"smlocal check {}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"0\" time=\"{total:.3}\">\n",
        results.len(),
        escape(image),
        results.len()
    ));
    for r in results {
        xml.push_str(&format!(
            "    <testcase classname=\"smlocal.check\" name=\"{}\" time=\"{:.3}\">\n",
            r.name, r.seconds
        ));
        match r.verdict {
            Verdict::Fail => xml.push_str(&format!(
                "      <failure message=\"{}\">{}\nfix: {}</failure>\n",
                escape(&shorten(&r.evidence, 200)),
                escape(&r.evidence),
                escape(&r.fix)
            )),
            Verdict::Warn => xml.push_str(&format!("      <system-out>WARN: {}</system-out>\n", escape(&r.evidence))),
            Verdict::Pass => xml.push_str(&format!("      <system-out>{}</system-out>\n", escape(&r.evidence))),
        }
        xml.push_str("    </testcase>\n");
    }
    xml.push_str("  </testsuite>\n</testsuites>\n");
    xml
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(kind: char, path: &str) -> Change {
        Change { kind, path: path.into() }
    }

    #[test]
    fn only_writes_outside_the_allowed_folders_count() {
        let changes = [
            change('C', "/opt"),
            change('C', "/opt/ml"),
            change('A', "/opt/ml/model/x"),
            change('C', "/tmp"),
            change('A', "/tmp/scratch"),
            change('C', "/var"),
            change('A', "/var/lib"),
            change('A', "/var/lib/state"),
            change('C', "/etc/passwd"),
        ];
        assert_eq!(outside_allowed(&changes), ["A /var/lib", "A /var/lib/state", "C /etc/passwd"]);
    }

    #[test]
    fn junit_counts_failures_and_escapes_evidence() {
        let r = |name, verdict, evidence: &str| CheckResult {
            name,
            verdict,
            evidence: evidence.into(),
            fix: "do <this>".into(),
            seconds: 0.5,
        };
        let xml = junit(
            "img:1",
            &[
                r("train", Verdict::Pass, "ok"),
                r("model", Verdict::Fail, "a < b & \"c\""),
                r("pid1", Verdict::Warn, "shell"),
            ],
        );
        assert!(xml.contains("tests=\"3\" failures=\"1\""));
        assert!(xml.contains("a &lt; b &amp; &quot;c&quot;"));
        assert!(xml.contains("<system-out>WARN: shell</system-out>"));
    }

    #[test]
    fn shell_form_entrypoints_are_warned() {
        let info = crate::docker::ImageInfo {
            entrypoint: vec!["/bin/sh".into(), "-c".into(), "python train.py".into()],
            cmd: vec![],
            size_bytes: 1 << 20,
        };
        assert_eq!(judge_pid1(&info, None).verdict, Verdict::Warn);
        let exec = crate::docker::ImageInfo { entrypoint: vec!["/usr/bin/train".into()], ..info };
        let r = judge_pid1(&exec, None);
        assert_eq!(r.verdict, Verdict::Pass);
        assert!(r.evidence.contains("1.0 MiB"));
    }
}
