//! The four SageMaker training-job operations, over the shared job store.

use super::{ApiError, ApiResult, without_kind};
use crate::listing::{self, ListQuery};
use crate::run::RunError;
use crate::runner::{CreateError, Runner};
use crate::spec::{self, SpecError};
use crate::store::StoreError;
use serde_json::{Value, json};

/// Checks `body` against botocore's input shape for the operation, as the service does.
fn check(shape: &str, body: &Value) -> Result<(), ApiError> {
    let findings = spec::validate::check(shape, body);
    if !findings.parameters.is_empty() {
        return Err(ApiError::validation(findings.parameters.join("; ")));
    }
    if !findings.constraints.is_empty() {
        return Err(ApiError::validation(spec::validation_sentence(&findings.constraints)));
    }
    Ok(())
}

fn name(body: &Value) -> &str {
    body.get("TrainingJobName").and_then(Value::as_str).unwrap_or_default()
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        // AWS's own words for an unknown job.
        StoreError::NotFound(_) => ApiError::validation("Requested resource not found."),
        // AWS's words, without the command line's --unique-name hint.
        StoreError::ResourceInUse { arn } => ApiError::new(
            "ResourceInUse",
            format!(
                "Training job names must be unique within an AWS account and region, and a training job with this name already exists ({arn})"
            ),
        ),
        StoreError::AlreadyEnded { .. } => ApiError::validation(without_kind(e.to_string(), "ValidationException")),
        other => ApiError {
            status: hyper::StatusCode::INTERNAL_SERVER_ERROR,
            kind: "InternalFailure",
            message: other.to_string(),
        },
    }
}

pub async fn create(runner: &Runner, body: Value) -> ApiResult {
    match runner.create(body).await {
        Ok(arn) => Ok(json!({ "TrainingJobArn": arn })),
        Err(CreateError::Spec(SpecError::Parameters(p))) => Err(ApiError::validation(p.join("; "))),
        Err(CreateError::Run(RunError::Store(e))) => Err(store_error(e)),
        // A missing image, an output that exists, an unreachable S3 endpoint: the request
        // cannot run here, and the message says what to change.
        Err(e) => Err(ApiError::validation(without_kind(e.to_string(), "ValidationException"))),
    }
}

pub fn describe(runner: &Runner, body: Value) -> ApiResult {
    check("DescribeTrainingJobRequest", &body)?;
    let record = runner.store().load(name(&body)).map_err(store_error)?;
    serde_json::to_value(&record).map_err(|e| ApiError::validation(e.to_string()))
}

pub fn stop(runner: &Runner, body: Value) -> ApiResult {
    check("StopTrainingJobRequest", &body)?;
    runner.store().request_stop(name(&body)).map_err(store_error)?;
    Ok(json!({}))
}

pub fn list(runner: &Runner, body: Value) -> ApiResult {
    check("ListTrainingJobsRequest", &body)?;
    let query: ListQuery = serde_json::from_value(body).map_err(|e| ApiError::validation(e.to_string()))?;
    let records = runner.store().list().map_err(store_error)?;
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
