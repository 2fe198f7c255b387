//! Transform jobs in the state directory: `transform-jobs/<name>/` with `record.json`, the
//! runner lock and stop marker ([`RecordFolders`]), and beside them the instances' logs and
//! the model folder the containers mount.

use crate::state::folders::RecordFolders;
use crate::state::index::{Kind, Records, Row};
use crate::state::listing::{ListError, ListQuery, Page};
use crate::state::record::now;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};

/// `TransformJobStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum TransformStatus {
    InProgress,
    Completed,
    Failed,
    Stopping,
    Stopped,
}

impl TransformStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TransformStatus::InProgress => "InProgress",
            TransformStatus::Completed => "Completed",
            TransformStatus::Failed => "Failed",
            TransformStatus::Stopping => "Stopping",
            TransformStatus::Stopped => "Stopped",
        }
    }

    pub(crate) fn is_terminal(self) -> bool {
        matches!(self, TransformStatus::Completed | TransformStatus::Failed | TransformStatus::Stopped)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TransformRecord {
    pub name: String,
    pub arn: String,
    pub status: TransformStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    pub creation_time: f64,
    pub last_modified_time: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<f64>,
    /// The request as it came (Describe echoes it), without its tags.
    pub request: Map<String, Value>,
    /// The settings the job ran with, once known (the request's, else the container's,
    /// else the defaults).
    #[serde(default)]
    pub resolved: Map<String, Value>,
}

impl TransformRecord {
    pub(crate) fn new(name: &str, arn: &str, request: Map<String, Value>) -> Self {
        let t = now();
        TransformRecord {
            name: name.into(),
            arn: arn.into(),
            status: TransformStatus::InProgress,
            failure_reason: None,
            creation_time: t,
            last_modified_time: t,
            start_time: None,
            end_time: None,
            request,
            resolved: Map::new(),
        }
    }

    pub(crate) fn end(&mut self, status: TransformStatus, reason: Option<String>) {
        self.status = status;
        self.failure_reason = reason;
        self.end_time = Some(now());
        self.last_modified_time = now();
    }

    /// DescribeTransformJob's answer.
    pub(crate) fn description(&self) -> Value {
        let mut out = self.request.clone();
        for (k, v) in &self.resolved {
            out.insert(k.clone(), v.clone());
        }
        out.insert("TransformJobArn".into(), json!(self.arn));
        out.insert("TransformJobStatus".into(), json!(self.status.as_str()));
        out.insert("CreationTime".into(), json!(self.creation_time));
        if let Some(t) = self.start_time {
            out.insert("TransformStartTime".into(), json!(t));
        }
        if let Some(t) = self.end_time {
            out.insert("TransformEndTime".into(), json!(t));
        }
        if let Some(reason) = &self.failure_reason {
            out.insert("FailureReason".into(), json!(reason));
        }
        Value::Object(out)
    }
}

/// The hosting records' error: the same two ways a record can be unusable.
pub(crate) use crate::hosting::store::HostingStoreError as TransformStoreError;

#[derive(Debug, Clone)]
pub(crate) struct TransformStore {
    /// `transform-jobs/<name>/`, listed through the index.
    folders: RecordFolders,
}

impl Records for TransformStore {
    fn kind(&self) -> Kind {
        Kind::TransformJob
    }

    fn folder(&self) -> PathBuf {
        self.folders.root().to_path_buf()
    }

    fn names(&self) -> Vec<String> {
        self.folders.names()
    }

    fn row(&self, name: &str) -> Option<Row> {
        match self.load(name) {
            Ok(record) => record.map(|r| r.row()),
            Err(e) => {
                tracing::warn!("not listing transform job {name}: {e}");
                None
            }
        }
    }
}

impl TransformRecord {
    /// The job as ListTransformJobs summarises it.
    fn row(&self) -> Row {
        let mut summary = serde_json::json!({
            "TransformJobName": self.name,
            "TransformJobArn": self.arn,
            "CreationTime": self.creation_time,
            "LastModifiedTime": self.last_modified_time,
            "TransformJobStatus": self.status.as_str(),
        });
        if let Some(end) = self.end_time {
            summary["TransformEndTime"] = serde_json::json!(end);
        }
        if let Some(reason) = &self.failure_reason {
            summary["FailureReason"] = serde_json::json!(reason);
        }
        Row {
            name: self.name.clone(),
            created: self.creation_time,
            modified: self.last_modified_time,
            status: self.status.as_str().into(),
            summary,
        }
    }
}

impl TransformStore {
    pub(crate) fn new(state_root: &Path) -> Self {
        TransformStore { folders: RecordFolders::new(state_root, "transform-jobs") }
    }

    pub(crate) fn job_dir(&self, name: &str) -> PathBuf {
        self.folders.dir(name)
    }

    pub(crate) fn model_dir(&self, name: &str) -> PathBuf {
        self.job_dir(name).join("model")
    }

    /// `transform-jobs/<name>/logs/<instance>.log`: stream `<name>/<instance>`.
    pub(crate) fn log_path(&self, name: &str, instance: &str) -> PathBuf {
        self.job_dir(name).join("logs").join(format!("{instance}.log"))
    }

    pub(crate) fn log_streams(&self, name: &str) -> Vec<(String, PathBuf)> {
        let mut streams: Vec<(String, PathBuf)> = std::fs::read_dir(self.job_dir(name).join("logs"))
            .map(|entries| {
                entries
                    .filter_map(|e| {
                        let file = e.ok()?.file_name().into_string().ok()?;
                        let instance = file.strip_suffix(".log")?.to_string();
                        Some((format!("{name}/{instance}"), self.log_path(name, &instance)))
                    })
                    .collect()
            })
            .unwrap_or_default();
        streams.sort();
        streams
    }

    pub(crate) fn request_stop(&self, name: &str) -> Result<(), TransformStoreError> {
        self.folders.request_stop(name)
    }

    pub(crate) fn stop_requested(&self, name: &str) -> bool {
        self.folders.stop_requested(name)
    }

    /// Reserves the name and writes the first record; `false` when the name is taken.
    pub(crate) fn create(&self, record: &TransformRecord) -> Result<bool, TransformStoreError> {
        self.folders.create(self, &record.name, record)
    }

    pub(crate) fn save(&self, record: &TransformRecord) -> Result<(), TransformStoreError> {
        self.folders.save(self, &record.name, record)
    }

    /// The page of transform jobs `query` asks for (ListTransformJobs), from the index.
    pub(crate) fn page(&self, query: &ListQuery) -> Result<Page, ListError> {
        // AWS's default page size.
        self.folders.index().page(self, query, 10)
    }

    pub(crate) fn load(&self, name: &str) -> Result<Option<TransformRecord>, TransformStoreError> {
        self.folders.load(name)
    }

    pub(crate) fn list(&self) -> Vec<TransformRecord> {
        let names = self.names();
        names.iter().filter_map(|n| self.load(n).ok().flatten()).collect()
    }

    /// A lock held by the process running the job while it runs.
    pub(crate) fn claim(&self, name: &str) -> Option<std::fs::File> {
        self.folders.claim(name)
    }
}
