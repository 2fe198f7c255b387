//! Batch transform (DESIGN §12): `CreateTransformJob` scores a whole S3 prefix (or manifest)
//! with a model's serving container, as SageMaker does, and writes
//! `<S3OutputPath>/<key>.out` for every input object.
//!
//! - `plan.rs`: the request, typed, with AWS's limits.
//! - `records.rs`: objects into records (`SplitType`) and records into request bodies
//!   (`BatchStrategy`, `MaxPayloadInMB`).
//! - `jsonpath.rs`: the JSONPath subset of `InputFilter` / `OutputFilter`.
//! - `run.rs`: one job, start to record.
//! - `store.rs`: the records in `transform-jobs/`.

mod jsonpath;
mod plan;
mod records;
pub(crate) mod run;
pub(crate) mod store;

use crate::hosting::control::{list_query, listed};
use crate::hosting::store::Kind;
use crate::hosting::{Hosting, HostingError};
use crate::logs::LogSink;
use crate::spec;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use store::{TransformRecord, TransformStatus, TransformStore};
use tokio_util::sync::CancellationToken;

/// How far a transform job is.
#[derive(Debug, Default)]
pub struct TransformProgress {
    pub objects_total: AtomicU64,
    pub objects_done: AtomicU64,
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    /// Milliseconds from the first request to the last output written (the containers up).
    pub transform_millis: AtomicU64,
}

pub(crate) fn store_of(h: &Hosting) -> TransformStore {
    TransformStore::new(h.state.root())
}

fn text<'a>(body: &'a Value, field: &str) -> &'a str {
    body.get(field).and_then(Value::as_str).unwrap_or_default()
}

/// How a foreground run ended.
#[derive(Debug, Clone)]
pub struct TransformOutcome {
    pub status: String,
    pub failure_reason: Option<String>,
    pub output_path: String,
}

impl Hosting {
    fn transform_missing(name: &str) -> HostingError {
        HostingError::Validation(format!("Could not find requested job with name {name}"))
    }

    /// Checks a CreateTransformJob request and writes its first record; the job is not
    /// started. Returns its name.
    pub fn admit_transform_job(&self, body: &Value) -> Result<String, HostingError> {
        spec::check("CreateTransformJobRequest", body)?;
        let name = text(body, "TransformJobName").to_string();
        let request = body.as_object().cloned().unwrap_or_default();
        plan::Plan::of(&request).map_err(HostingError::Validation)?;
        let model = self.definition(Kind::Model, text(body, "ModelName"))?;
        let instance_type = body["TransformResources"]["InstanceType"].as_str().unwrap_or_default();
        self.variant_resources(&json!({"InstanceType": instance_type}))
            .map_err(|e| HostingError::Validation(format!("TransformResources.InstanceType: {e}")))?;
        for (field, uri) in [
            (
                "TransformInput.DataSource.S3DataSource.S3Uri",
                body["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"].as_str(),
            ),
            ("TransformOutput.S3OutputPath", body["TransformOutput"]["S3OutputPath"].as_str()),
        ] {
            if let Some(uri) = uri {
                self.storage.check(uri).map_err(|e| HostingError::Validation(format!("{field}: {e}")))?;
            }
        }
        if body["TransformOutput"].get("KmsKeyId").is_some()
            || body["TransformResources"].get("VolumeKmsKeyId").is_some()
        {
            tracing::warn!("{name}: KmsKeyId is accepted and ignored: smlocal writes the output unencrypted");
        }
        let account = model.arn.split(':').nth(4).unwrap_or(crate::hosting::control::DEFAULT_ACCOUNT).to_string();
        let arn = format!("arn:aws:sagemaker:{}:{account}:transform-job/{}", self.region(), name.to_ascii_lowercase());
        let mut kept = request;
        kept.remove("Tags");
        let record = TransformRecord::new(&name, &arn, kept);
        if !store_of(self).create(&record).map_err(HostingError::Store)? {
            return Err(HostingError::InUse(format!(
                "Transform job names must be unique within an AWS account and region, and a transform job with this name already exists ({arn})"
            )));
        }
        Ok(name)
    }

    /// Runs an admitted job in this process until it ends; `sink` gets every container line.
    pub async fn run_transform_job(
        self: &Arc<Self>,
        name: &str,
        progress: Arc<TransformProgress>,
        sink: Option<LogSink>,
        stop: CancellationToken,
    ) -> Option<TransformOutcome> {
        let record = run::run(self.clone(), name.to_string(), progress, sink, stop).await?;
        Some(TransformOutcome {
            status: record.status.as_str().to_string(),
            failure_reason: record.failure_reason.clone(),
            output_path: record.request["TransformOutput"]["S3OutputPath"].as_str().unwrap_or_default().to_string(),
        })
    }

    pub(crate) fn create_transform_job(self: &Arc<Self>, body: Value) -> Result<Value, HostingError> {
        let name = self.admit_transform_job(&body)?;
        let record = store_of(self).load(&name).ok().flatten();
        let arn = record.map(|r| r.arn).unwrap_or_default();
        let (h, stop) = (self.clone(), self.shutdown_token());
        let span = tracing::info_span!("transform", name = %name);
        self.spawn(tracing::Instrument::instrument(
            async move {
                h.run_transform_job(&name, Arc::default(), None, stop).await;
            },
            span,
        ));
        Ok(json!({ "TransformJobArn": arn }))
    }

    pub(crate) fn describe_transform_job(&self, body: Value) -> Result<Value, HostingError> {
        spec::check("DescribeTransformJobRequest", &body)?;
        let name = text(&body, "TransformJobName");
        let record = store_of(self).load(name).map_err(HostingError::Store)?;
        Ok(record.ok_or_else(|| Self::transform_missing(name))?.description())
    }

    pub(crate) fn list_transform_jobs(&self, body: Value) -> Result<Value, HostingError> {
        spec::check("ListTransformJobsRequest", &body)?;
        listed(store_of(self).page(&list_query(&body)), "TransformJobSummaries")
    }

    pub(crate) fn stop_transform_job(&self, body: Value) -> Result<Value, HostingError> {
        spec::check("StopTransformJobRequest", &body)?;
        let name = text(&body, "TransformJobName");
        let store = store_of(self);
        let mut record = store.load(name).map_err(HostingError::Store)?.ok_or_else(|| Self::transform_missing(name))?;
        if record.status.is_terminal() {
            return Err(HostingError::Validation(format!(
                "The transform job {name} is already {}; there is nothing to stop",
                record.status.as_str()
            )));
        }
        store.request_stop(name).map_err(HostingError::Store)?;
        record.status = TransformStatus::Stopping;
        record.last_modified_time = crate::state::record::now();
        let _ = store.save(&record);
        Ok(json!({}))
    }

    /// Transform jobs whose process died (a killed `smlocal serve`): `Failed` with the
    /// reason, their containers removed.
    pub(crate) async fn reconcile_transform_jobs(&self) {
        let store = store_of(self);
        for mut record in store.list() {
            if record.status.is_terminal() {
                continue;
            }
            let Some(_claim) = store.claim(&record.name) else { continue };
            for id in self
                .docker
                .containers_matching(&[(run::TRANSFORM_LABEL, &record.name)], &self.home())
                .await
                .unwrap_or_default()
            {
                let _ = self.docker.remove_container(&id).await;
            }
            let _ = self.docker.remove_network(&format!("smlocal-tj-{}", record.name)).await;
            record.end(
                TransformStatus::Failed,
                Some("InternalServerError: the smlocal process running this transform job ended before it did".into()),
            );
            let _ = store.save(&record);
        }
    }
}
