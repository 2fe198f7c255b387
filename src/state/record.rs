//! The job record: what `DescribeTrainingJob` would return for this job. It echoes the
//! request and adds statuses, secondary transitions (each with `StartTime`, `EndTime`,
//! `StatusMessage`), times, the failure reason and where the model went. Times are epoch
//! seconds, as on the JSON wire.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    InProgress,
    Completed,
    Failed,
    Stopping,
    Stopped,
}

impl Status {
    /// Every status, in the order AWS documents them (`--status-equals`, `StatusEquals`).
    pub const ALL: [Status; 5] =
        [Status::InProgress, Status::Completed, Status::Failed, Status::Stopping, Status::Stopped];

    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Stopped)
    }

    /// AWS's name for it, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::InProgress => "InProgress",
            Status::Completed => "Completed",
            Status::Failed => "Failed",
            Status::Stopping => "Stopping",
            Status::Stopped => "Stopped",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a [`Status`]; the message lists the valid ones.
#[derive(Debug, thiserror::Error)]
#[error("'{0}' is not a training job status; use InProgress, Completed, Failed, Stopping or Stopped")]
pub struct UnknownStatus(pub String);

impl std::str::FromStr for Status {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL.into_iter().find(|status| status.as_str() == s).ok_or_else(|| UnknownStatus(s.into()))
    }
}

/// `SecondaryStatus` and each transition's `Status`: AWS's finer-grained steps of a job, of
/// which smlocal passes through these. Serialised as AWS's strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Secondary {
    Starting,
    /// Waiting for a place to run (`smlocal serve --max-parallel`, or memory).
    Pending,
    Downloading,
    Training,
    /// A replayed spot interruption (`--interrupt-after`).
    Interrupted,
    Restarting,
    Uploading,
    Stopping,
    Stopped,
    MaxRuntimeExceeded,
    Completed,
    Failed,
}

impl std::fmt::Display for Secondary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The variants are AWS's names.
        std::fmt::Debug::fmt(self, f)
    }
}

/// Why a job ended `Failed`: the kind says who is to blame, so callers never read it out of
/// the message. `reason` is `FailureReason` as the record shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub kind: FailureKind,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The algorithm exited non-zero and said why in `/opt/ml/output/failure`.
    AlgorithmReported,
    /// The algorithm exited non-zero without writing `/opt/ml/output/failure`.
    AlgorithmExit,
    /// A host handed over something smlocal refuses to read (a link in place of
    /// `/opt/ml/model`): the algorithm's output, not its exit, failed the job.
    AlgorithmOutput,
    /// The kernel killed a container at its memory cap.
    OutOfMemory,
    /// The user's data or configuration: an input that cannot be staged, an output that
    /// cannot be written.
    ClientError,
    /// smlocal itself could not do its part (or its process died).
    Internal,
}

impl Failure {
    pub fn new(kind: FailureKind, reason: impl Into<String>) -> Self {
        Failure { kind, reason: reason.into() }
    }
}

/// How a job came to end `Stopped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// StopTrainingJob, `smlocal stop` or Ctrl-C, while training.
    Requested,
    /// `MaxRuntimeInSeconds`, with its value.
    MaxRuntime(u64),
    /// A stop that came before any container started.
    BeforeTraining,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Transition {
    pub status: Secondary,
    pub start_time: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_time: Option<f64>,
    pub status_message: String,
}

/// One entry of `FinalMetricDataList`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct MetricData {
    pub metric_name: String,
    pub value: f64,
    pub timestamp: f64,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ModelArtifacts {
    pub s3_model_artifacts: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Record {
    pub training_job_name: String,
    pub training_job_arn: String,
    pub training_job_status: Status,
    pub secondary_status: Secondary,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    pub model_artifacts: ModelArtifacts,
    pub creation_time: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub training_start_time: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub training_end_time: Option<f64>,
    pub last_modified_time: f64,
    pub secondary_status_transitions: Vec<Transition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub final_metric_data_list: Vec<MetricData>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub training_time_in_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub billable_time_in_seconds: Option<u64>,
    /// How many times the job started (more than 1 after a replayed spot interruption).
    /// smlocal's own field: AWS does not report it.
    #[serde(rename = "SmlocalAttempts", default = "one")]
    pub attempts: u32,
    /// The request as sent (HyperParameters, AlgorithmSpecification, ResourceConfig, ...).
    #[serde(flatten)]
    pub request: Map<String, Value>,
}

impl Record {
    pub fn new(name: &str, arn: &str, model_uri: &str, request: &Map<String, Value>) -> Self {
        let t = now();
        let mut request = request.clone();
        // The name and artifacts are the record's own fields; the rest is echoed.
        request.remove("TrainingJobName");
        Record {
            training_job_name: name.into(),
            training_job_arn: arn.into(),
            training_job_status: Status::InProgress,
            secondary_status: Secondary::Starting,
            failure_reason: None,
            model_artifacts: ModelArtifacts { s3_model_artifacts: model_uri.into() },
            creation_time: t,
            training_start_time: None,
            training_end_time: None,
            last_modified_time: t,
            final_metric_data_list: Vec::new(),
            training_time_in_seconds: None,
            billable_time_in_seconds: None,
            attempts: 1,
            secondary_status_transitions: vec![Transition {
                status: Secondary::Starting,
                start_time: t,
                end_time: None,
                status_message: "Preparing the instances for training".into(),
            }],
            request,
        }
    }

    /// The job as ListTrainingJobs summarises it.
    pub fn summary(&self) -> Value {
        let mut s = serde_json::json!({
            "TrainingJobName": self.training_job_name,
            "TrainingJobArn": self.training_job_arn,
            "CreationTime": self.creation_time,
            "LastModifiedTime": self.last_modified_time,
            "TrainingJobStatus": self.training_job_status,
            "SecondaryStatus": self.secondary_status,
        });
        if let Some(end) = self.training_end_time {
            s["TrainingEndTime"] = serde_json::json!(end);
        }
        s
    }

    /// Moves to a new secondary status, closing the previous one.
    pub fn enter(&mut self, secondary: Secondary, message: impl Into<String>) {
        let t = now();
        if let Some(last) = self.secondary_status_transitions.last_mut() {
            last.end_time.get_or_insert(t);
        }
        self.secondary_status_transitions.push(Transition {
            status: secondary,
            start_time: t,
            end_time: None,
            status_message: message.into(),
        });
        self.secondary_status = secondary;
        self.last_modified_time = t;
        // The first start counts: a restarted job has trained since then.
        if secondary == Secondary::Training && self.training_start_time.is_none() {
            self.training_start_time = Some(t);
        }
    }

    /// `Stopping`, with what asked for it; the containers get SIGTERM next.
    pub fn stopping(&mut self, message: impl Into<String>) {
        self.training_job_status = Status::Stopping;
        self.enter(Secondary::Stopping, message);
    }

    /// Whether the job has been through `secondary` (e.g. whether it reached `Uploading`).
    pub fn passed(&self, secondary: Secondary) -> bool {
        self.secondary_status_transitions.iter().any(|t| t.status == secondary)
    }

    /// When the job entered `secondary` and left it again (the left time is None while it is
    /// still there).
    pub fn span_of(&self, secondary: Secondary) -> Option<(f64, Option<f64>)> {
        self.secondary_status_transitions.iter().find(|t| t.status == secondary).map(|t| (t.start_time, t.end_time))
    }

    pub fn complete(&mut self) {
        self.finish(Status::Completed, Secondary::Completed, "Training job completed", None);
    }

    pub fn fail(&mut self, failure: &Failure) {
        self.finish(Status::Failed, Secondary::Failed, "Training job failed", Some(failure.reason.clone()));
    }

    pub fn stop(&mut self, why: StopReason) {
        match why {
            StopReason::Requested => self.finish(Status::Stopped, Secondary::Stopped, "Training job stopped", None),
            StopReason::MaxRuntime(seconds) => self.finish(
                Status::Stopped,
                Secondary::MaxRuntimeExceeded,
                format!("Training job stopped: MaxRuntimeInSeconds ({seconds}) was exceeded"),
                None,
            ),
            StopReason::BeforeTraining => {
                self.finish(Status::Stopped, Secondary::Stopped, "Training job stopped before training began", None)
            }
        }
    }

    /// Ends the job: the final transition is opened and closed at once, as AWS shows it.
    fn finish(&mut self, status: Status, secondary: Secondary, message: impl Into<String>, failure: Option<String>) {
        self.enter(secondary, message);
        let t = self.last_modified_time;
        if let Some(last) = self.secondary_status_transitions.last_mut() {
            last.end_time = Some(t);
        }
        self.training_job_status = status;
        self.failure_reason = failure;
        self.training_end_time = Some(t);
        let start = *self.training_start_time.get_or_insert(t);
        // No spot discount is simulated: the whole training time would be billed.
        let seconds = (t - start).max(0.0).round() as u64;
        self.training_time_in_seconds = Some(seconds);
        self.billable_time_in_seconds = Some(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn transitions_close_in_order_and_the_request_is_echoed() {
        let request = json!({"TrainingJobName": "j", "HyperParameters": {"a": "1"}, "RoleArn": "r"});
        let mut r = Record::new("j", "arn", "s3://b/o/j/output/model.tar.gz", request.as_object().unwrap());
        r.enter(Secondary::Downloading, "Downloading input data");
        r.enter(Secondary::Training, "Training in progress");
        r.fail(&Failure::new(FailureKind::AlgorithmReported, "AlgorithmError: boom"));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["TrainingJobStatus"], "Failed");
        assert_eq!(v["FailureReason"], "AlgorithmError: boom");
        assert_eq!(v["HyperParameters"]["a"], "1");
        assert_eq!(v["ModelArtifacts"]["S3ModelArtifacts"], "s3://b/o/j/output/model.tar.gz");
        let statuses: Vec<&str> =
            v["SecondaryStatusTransitions"].as_array().unwrap().iter().map(|t| t["Status"].as_str().unwrap()).collect();
        assert_eq!(statuses, ["Starting", "Downloading", "Training", "Failed"]);
        assert_eq!(v["SecondaryStatus"], "Failed");
        assert!(r.secondary_status_transitions.iter().all(|t| t.end_time.is_some()));
        let back: Record = serde_json::from_value(v).unwrap();
        assert_eq!(back.request["RoleArn"], "r");
        assert!(!back.request.contains_key("TrainingJobStatus"));
        assert_eq!(back.secondary_status, Secondary::Failed);
    }

    #[test]
    fn a_max_runtime_stop_reads_as_aws_words_it() {
        let mut r = Record::new("j", "arn", "s3://b/m", &Map::new());
        r.stop(StopReason::MaxRuntime(30));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            (v["TrainingJobStatus"].as_str(), v["SecondaryStatus"].as_str()),
            (Some("Stopped"), Some("MaxRuntimeExceeded"))
        );
        assert!(v["SecondaryStatusTransitions"][1]["StatusMessage"].as_str().unwrap().contains("(30)"));
    }

    #[test]
    fn statuses_parse_from_and_print_as_aws_names() {
        for status in Status::ALL {
            assert_eq!(status.to_string().parse::<Status>().unwrap(), status);
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        assert!("Running".parse::<Status>().unwrap_err().to_string().contains("InProgress, Completed"));
    }
}
