//! The four SageMaker training-job operations, over the shared job store.

use super::{ApiError, ApiResult};
use crate::run::RunError;
use crate::serve::queue::{CreateError, Queue};
use crate::spec;
use crate::state::listing::ListQuery;
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
    // AWS's default page size.
    let page = queue.store().list_page(&query, 10)?;
    let summaries = page.summaries;
    let mut out = json!({ "TrainingJobSummaries": summaries });
    if let Some(token) = page.next_token {
        out["NextToken"] = json!(token);
    }
    Ok(out)
}
