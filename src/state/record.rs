//! The job record: what `DescribeTrainingJob` would return for this job. It echoes the
//! request and adds statuses, secondary transitions (each with `StartTime`, `EndTime`,
//! `StatusMessage`), times, the failure reason and where the model went. Times are epoch
//! seconds, as on the JSON wire.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::time::{SystemTime, UNIX_EPOCH};

pub fn now() -> f64 {
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
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Stopped)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Transition {
    pub status: String,
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
    pub secondary_status: String,
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
            secondary_status: "Starting".into(),
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
                status: "Starting".into(),
                start_time: t,
                end_time: None,
                status_message: "Preparing the instances for training".into(),
            }],
            request,
        }
    }

    /// Moves to a new secondary status, closing the previous one.
    pub fn transition(&mut self, secondary: &str, message: impl Into<String>) {
        let t = now();
        if let Some(last) = self.secondary_status_transitions.last_mut() {
            last.end_time.get_or_insert(t);
        }
        self.secondary_status_transitions.push(Transition {
            status: secondary.into(),
            start_time: t,
            end_time: None,
            status_message: message.into(),
        });
        self.secondary_status = secondary.into();
        self.last_modified_time = t;
        // The first start counts: a restarted job has trained since then.
        if secondary == "Training" && self.training_start_time.is_none() {
            self.training_start_time = Some(t);
        }
    }

    /// Ends the job: the final transition is opened and closed at once, as AWS shows it.
    pub fn finish(&mut self, status: Status, secondary: &str, message: impl Into<String>, failure: Option<String>) {
        self.transition(secondary, message);
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
        r.transition("Downloading", "Downloading input data");
        r.transition("Training", "Training in progress");
        r.finish(Status::Failed, "Failed", "Training job failed", Some("AlgorithmError: boom".into()));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["TrainingJobStatus"], "Failed");
        assert_eq!(v["FailureReason"], "AlgorithmError: boom");
        assert_eq!(v["HyperParameters"]["a"], "1");
        assert_eq!(v["ModelArtifacts"]["S3ModelArtifacts"], "s3://b/o/j/output/model.tar.gz");
        let statuses: Vec<&str> = r.secondary_status_transitions.iter().map(|t| t.status.as_str()).collect();
        assert_eq!(statuses, ["Starting", "Downloading", "Training", "Failed"]);
        assert!(r.secondary_status_transitions.iter().all(|t| t.end_time.is_some()));
        let back: Record = serde_json::from_value(v).unwrap();
        assert_eq!(back.request["RoleArn"], "r");
        assert!(!back.request.contains_key("TrainingJobStatus"));
    }
}
