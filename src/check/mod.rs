//! `smlocal check IMAGE`: runs an algorithm image through short jobs and judges it against
//! the training contract, one named check at a time, so a team finds contract mistakes in
//! seconds instead of after a cloud job has started and failed. [`lab`] runs the jobs,
//! [`judge`] turns what they left into verdicts, [`junit`] reports them for CI. With
//! `--serve`, [`serve`] checks the inference contract instead (one container, `IMAGE serve`).

mod judge;
mod junit;
mod lab;
mod serve;

pub use self::junit::junit;

use self::lab::Lab;
use crate::docker::Docker;
use crate::job::Settings;
use crate::logs::LogSink;
use crate::storage::Storage;
use serde_json::{Map, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Every check, in the order they are reported (README documents each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Train,
    Model,
    Filesystem,
    Sigterm,
    Failure,
    Isolation,
    Memory,
    TwoHosts,
    Pid1,
    /// Only when the request uses Pipe mode.
    Pipe,
    // The inference contract (`--serve`).
    Serve,
    Listen,
    Ping,
    Invocations,
    BadPayload,
    ServeSigterm,
}

impl Check {
    /// The inference contract's checks, in the order they are reported.
    pub const SERVE: [Check; 6] =
        [Check::Serve, Check::Listen, Check::Ping, Check::Invocations, Check::BadPayload, Check::ServeSigterm];

    pub const ALL: [Check; 10] = [
        Check::Train,
        Check::Model,
        Check::Filesystem,
        Check::Sigterm,
        Check::Failure,
        Check::Isolation,
        Check::Memory,
        Check::TwoHosts,
        Check::Pid1,
        Check::Pipe,
    ];

    /// The name `--only` takes and the table shows.
    pub fn name(self) -> &'static str {
        match self {
            Check::Train => "train",
            Check::Model => "model",
            Check::Filesystem => "filesystem",
            Check::Sigterm => "sigterm",
            Check::Failure => "failure",
            Check::Isolation => "isolation",
            Check::Memory => "memory",
            Check::TwoHosts => "two-hosts",
            Check::Pid1 => "pid1",
            Check::Pipe => "pipe",
            Check::Serve => "serve",
            Check::Listen => "listen",
            Check::Ping => "ping",
            Check::Invocations => "invocations",
            Check::BadPayload => "bad-payload",
            Check::ServeSigterm => "serve-sigterm",
        }
    }

    /// What it protects against.
    pub fn about(self) -> &'static str {
        match self {
            Check::Train => "the image starts with the argument `train` (or the request's entrypoint) and exits 0",
            Check::Model => "it writes at least one file under /opt/ml/model, or the job uploads an empty model",
            Check::Filesystem => {
                "it writes nothing outside /opt/ml/model, /opt/ml/output, /opt/ml/checkpoints and /tmp"
            }
            Check::Sigterm => {
                "it stops cleanly on SIGTERM within the grace, as StopTrainingJob and spot reclaims require"
            }
            Check::Failure => "a failing run exits non-zero and explains itself in /opt/ml/output/failure",
            Check::Isolation => "it needs no network, so it works with EnableNetworkIsolation",
            Check::Memory => "it stays well inside the instance type's memory",
            Check::TwoHosts => "it runs as 2 hosts, taking its identity from resourceconfig.json, not /etc/hostname",
            Check::Pid1 => "its entrypoint is exec form, so PID 1 receives signals; reports the image size",
            Check::Pipe => {
                "with a Pipe mode request: it opens <channel>_0 and reads it, then <channel>_1 for a second epoch"
            }
            Check::Serve => "the image starts with the argument `serve` and keeps running",
            Check::Listen => "it listens on port 8080 of every interface, not only the container's loopback",
            Check::Ping => "GET /ping answers 200 within 2 s each time, and within 4 minutes of start",
            Check::Invocations => "POST /invocations answers the sample payload with a 2xx within 60 s",
            Check::BadPayload => "a payload it cannot read is a 4xx with a reason, not a 5xx or a crash",
            Check::ServeSigterm => "it exits within 30 s of SIGTERM, as endpoint updates and deletes require",
        }
    }

    /// Whether it judges the plain run, or needs that run to complete before its own.
    fn needs_baseline(self) -> bool {
        !matches!(self, Check::Failure | Check::Pid1)
    }
}

impl std::str::FromStr for Check {
    type Err = CheckError;

    fn from_str(name: &str) -> Result<Self, CheckError> {
        Check::ALL
            .into_iter()
            .chain(Check::SERVE)
            .find(|c| c.name() == name)
            .ok_or_else(|| CheckError::UnknownCheck { name: name.into() })
    }
}

fn check_names() -> String {
    format!("{}; with --serve: {}", Check::ALL.map(Check::name).join(", "), Check::SERVE.map(Check::name).join(", "))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug, Clone)]
pub struct CheckResult {
    pub check: Check,
    pub verdict: Verdict,
    pub evidence: String,
    pub fix: String,
    pub seconds: f64,
}

impl CheckResult {
    fn new(check: Check, verdict: Verdict, evidence: impl Into<String>, fix: impl Into<String>) -> Self {
        CheckResult { check, verdict, evidence: evidence.into(), fix: fix.into(), seconds: 0.0 }
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
    pub only: Option<Vec<Check>>,
    pub stop_grace: Duration,
    /// Hyperparameters the image must reject; without them the failure run has no channels.
    pub invalid_hyperparameters: Option<Map<String, Value>>,
    pub settings: Settings,
    pub log: LogSink,
    /// Check the inference contract instead of the training one.
    pub serve: Option<ServeOptions>,
}

/// What the serving checks send.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The model (`.tar.gz`, local or S3) mounted at /opt/ml/model; none leaves it empty.
    pub model: Option<String>,
    /// The sample request for the `invocations` check, and its content type.
    pub payload: Vec<u8>,
    pub content_type: String,
}

/// Runs the selected checks against `image`, in the order of [`Check::ALL`]. The plain run
/// comes first; the checks that need it to complete run side by side after it.
pub async fn check(
    image: &str,
    docker: &Docker,
    storage: &Storage,
    options: &CheckOptions,
) -> Result<Vec<CheckResult>, CheckError> {
    let family = if options.serve.is_some() { &Check::SERVE[..] } else { &Check::ALL[..] };
    let selected: Vec<Check> =
        family.iter().copied().filter(|c| options.only.as_ref().is_none_or(|only| only.contains(c))).collect();
    let image_info = docker.image_info(image).await?;
    if let Some(serving) = &options.serve {
        return serve::check(image, docker, storage, options, serving, &selected).await;
    }
    let scratch = tempfile::Builder::new()
        .prefix("smlocal-check-")
        .tempdir()
        .map_err(|source| CheckError::Io { path: std::env::temp_dir(), source })?;
    let lab = Lab::new(image, docker, storage, options, scratch.path())?;

    let wants = |check: Check| selected.contains(&check);
    let baseline = if selected.iter().any(|c| c.needs_baseline()) { Some(lab.baseline().await) } else { None };
    let baseline_ok = baseline.as_ref().is_some_and(|b| b.completed());
    let after_baseline = |check: Check| baseline_ok && wants(check);
    let (sigterm, failure, isolation, two_hosts) = tokio::join!(
        when(after_baseline(Check::Sigterm), lab.sigterm(baseline.as_ref().map(|b| b.training_seconds).unwrap_or(0.0))),
        when(wants(Check::Failure), lab.failure()),
        when(after_baseline(Check::Isolation), lab.isolation()),
        when(after_baseline(Check::TwoHosts), lab.two_hosts()),
    );

    let mut results = Vec::new();
    for check in selected {
        let not_evaluated = || {
            let why = "not evaluated: the image does not complete a plain run (see the 'train' check)";
            CheckResult::new(check, Verdict::Warn, why, "fix 'train' first")
        };
        let judged = |judge: fn(&lab::Baseline) -> CheckResult| {
            baseline.as_ref().filter(|_| baseline_ok).map(judge).unwrap_or_else(not_evaluated)
        };
        let result = match check {
            Check::Train => match baseline.as_ref() {
                Some(b) => judge::train(b),
                None => continue,
            },
            Check::Model => judged(judge::model),
            Check::Filesystem => judged(judge::filesystem),
            Check::Memory => judged(judge::memory),
            Check::Sigterm => sigterm.clone().unwrap_or_else(not_evaluated),
            Check::Failure => match failure.clone() {
                Some(r) => r,
                None => continue,
            },
            Check::Isolation => isolation.clone().unwrap_or_else(not_evaluated),
            Check::TwoHosts => two_hosts.clone().unwrap_or_else(not_evaluated),
            Check::Pid1 => judge::pid1(&image_info, lab.entrypoint()),
            Check::Pipe => match baseline.as_ref() {
                Some(b) if lab.uses_pipe() => judge::pipe(b),
                _ => continue,
            },
            // The serving checks run only with --serve (above).
            _ => continue,
        };
        results.push(result);
    }
    Ok(results)
}

async fn when(condition: bool, run: impl std::future::Future<Output = CheckResult>) -> Option<CheckResult> {
    if condition { Some(run.await) } else { None }
}

/// Evidence cut to fit a table cell or a JUnit message.
fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() > max {
        format!("{}...", text.chars().take(max).collect::<String>())
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_check_has_one_name_that_parses_back() {
        for check in Check::ALL.into_iter().chain(Check::SERVE) {
            assert_eq!(check.name().parse::<Check>().unwrap(), check);
            assert!(!check.about().is_empty());
        }
        let err = "modle".parse::<Check>().unwrap_err().to_string();
        assert!(err.starts_with("unknown check 'modle'; the checks are: train, model, filesystem"), "{err}");
    }
}
