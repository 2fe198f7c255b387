//! The four SageMaker training-job operations, over the shared job store.

use super::{ApiError, ApiResult};
use crate::run::RunError;
use crate::serve::queue::{CreateError, Queue};
use crate::spec;
use crate::state::listing::{self, ListQuery};
use serde_json::{Value, json};

fn name(body: &Value) -> &str {
    body.get("TrainingJobName").and_then(Value::as_str).unwrap_or_default()
}

pub(super) async fn create(queue: &Queue, body: Value) -> ApiResult {
    match queue.create(body).await {
        Ok(arn) => Ok(json!({ "TrainingJobArn": arn })),
        Err(CreateError::Spec(e)) => Err(e.into()),
        Err(CreateError::Run(RunError::State(e))) => Err(e.into()),
        // A missing image, an output that exists, an unreachable S3 endpoint: the request
        // cannot run here, and the message says what to change.
        Err(e) => Err(ApiError::of(e.aws_kind(), e.to_string())),
    }
}

pub(super) fn describe(queue: &Queue, body: Value) -> ApiResult {
    spec::check("DescribeTrainingJobRequest", &body)?;
    let record = queue.store().load(name(&body))?;
    serde_json::to_value(&record).map_err(|e| ApiError::internal(e.to_string()))
}

pub(super) fn stop(queue: &Queue, body: Value) -> ApiResult {
    spec::check("StopTrainingJobRequest", &body)?;
    queue.store().request_stop(name(&body))?;
    Ok(json!({}))
}

pub(super) fn list(queue: &Queue, body: Value) -> ApiResult {
    spec::check("ListTrainingJobsRequest", &body)?;
    let query: ListQuery = serde_json::from_value(body).map_err(|e| ApiError::validation(e.to_string()))?;
    let records = queue.store().list()?;
    // AWS's default page size.
    let page = listing::page(records, &query, 10).map_err(|e| ApiError::validation(e.to_string()))?;
    let summaries: Vec<Value> = page
        .records
        .iter()
        .map(|r| {
            let mut s = json!({
                "TrainingJobName": r.training_job_name,
                "TrainingJobArn": r.training_job_arn,
                "CreationTime": r.creation_time,
                "LastModifiedTime": r.last_modified_time,
                "TrainingJobStatus": r.training_job_status,
                "SecondaryStatus": r.secondary_status,
            });
            if let Some(end) = r.training_end_time {
                s["TrainingEndTime"] = json!(end);
            }
            s
        })
        .collect();
    let mut out = json!({ "TrainingJobSummaries": summaries });
    if let Some(token) = page.next_token {
        out["NextToken"] = json!(token);
    }
    Ok(out)
}
