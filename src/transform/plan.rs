//! A CreateTransformJob request, typed: what the runner acts on.

use super::jsonpath::JsonPath;
use super::records::Split;
use serde_json::{Map, Value};
use std::time::Duration;

/// SageMaker's default `ModelClientConfig`: 600 s per invocation, 3 retries.
const INVOCATION_TIMEOUT: Duration = Duration::from_secs(600);
const RETRIES: u32 = 3;

#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub model_name: String,
    pub instance_type: String,
    pub count: usize,
    pub concurrency: Option<u64>,
    pub payload_mb: Option<u64>,
    /// `Some(true)` MultiRecord, `Some(false)` SingleRecord, `None` not set.
    pub multi_record: Option<bool>,
    pub environment: Vec<(String, String)>,
    pub input_uri: String,
    pub manifest: bool,
    pub content_type: Option<String>,
    pub gzip: bool,
    pub split: Split,
    pub output_path: String,
    pub accept: Option<String>,
    pub assemble_line: bool,
    pub input_filter: Option<JsonPath>,
    pub output_filter: Option<JsonPath>,
    pub join_input: bool,
    pub invocation_timeout: Duration,
    pub retries: u32,
}

fn text<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(value, |v, k| v.get(*k))?.as_str()
}

/// `MaxPayloadInMB` at most 100, and with `MaxConcurrentTransforms` at most 100 MB in flight.
pub(crate) fn check_limits(concurrency: u64, payload_mb: u64) -> Result<(), String> {
    if payload_mb > 100 {
        return Err(format!("MaxPayloadInMB is {payload_mb}; it must be at most 100"));
    }
    if concurrency.saturating_mul(payload_mb) > 100 {
        return Err(format!(
            "MaxConcurrentTransforms ({concurrency}) × MaxPayloadInMB ({payload_mb}) must not exceed 100 MB"
        ));
    }
    Ok(())
}

impl Plan {
    pub(crate) fn of(request: &Map<String, Value>) -> Result<Plan, String> {
        let r = Value::Object(request.clone());
        let filter = |field: &str| -> Result<Option<JsonPath>, String> {
            match text(&r, &["DataProcessing", field]) {
                None | Some("$") => Ok(None),
                Some(path) => JsonPath::parse(path).map(Some).map_err(|e| format!("DataProcessing.{field}: {e}")),
            }
        };
        let concurrency = r.get("MaxConcurrentTransforms").and_then(Value::as_u64).filter(|n| *n > 0);
        let payload_mb = r.get("MaxPayloadInMB").and_then(Value::as_u64);
        check_limits(concurrency.unwrap_or(1), payload_mb.unwrap_or(0))?;
        let split = Split::parse(text(&r, &["TransformInput", "SplitType"]));
        if payload_mb == Some(0) && split != Split::None {
            return Err("MaxPayloadInMB 0 (streaming) needs SplitType None".into());
        }
        let environment = r
            .get("Environment")
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
            .unwrap_or_default();
        let client = r.get("ModelClientConfig");
        Ok(Plan {
            model_name: text(&r, &["ModelName"]).unwrap_or_default().into(),
            instance_type: text(&r, &["TransformResources", "InstanceType"]).unwrap_or("ml.m5.large").into(),
            count: r["TransformResources"].get("InstanceCount").and_then(Value::as_u64).unwrap_or(1).max(1) as usize,
            concurrency,
            payload_mb,
            multi_record: text(&r, &["BatchStrategy"]).map(|s| s == "MultiRecord"),
            environment,
            input_uri: text(&r, &["TransformInput", "DataSource", "S3DataSource", "S3Uri"]).unwrap_or_default().into(),
            manifest: text(&r, &["TransformInput", "DataSource", "S3DataSource", "S3DataType"]) == Some("ManifestFile"),
            content_type: text(&r, &["TransformInput", "ContentType"]).map(str::to_string),
            gzip: text(&r, &["TransformInput", "CompressionType"]) == Some("Gzip"),
            split,
            output_path: text(&r, &["TransformOutput", "S3OutputPath"]).unwrap_or_default().into(),
            accept: text(&r, &["TransformOutput", "Accept"]).map(str::to_string),
            assemble_line: text(&r, &["TransformOutput", "AssembleWith"]) == Some("Line"),
            input_filter: filter("InputFilter")?,
            output_filter: filter("OutputFilter")?,
            join_input: text(&r, &["DataProcessing", "JoinSource"]) == Some("Input"),
            invocation_timeout: client
                .and_then(|c| c.get("InvocationsTimeoutInSeconds"))
                .and_then(Value::as_u64)
                .map_or(INVOCATION_TIMEOUT, Duration::from_secs),
            retries: client
                .and_then(|c| c.get("InvocationsMaxRetries"))
                .and_then(Value::as_u64)
                .map_or(RETRIES, |n| n as u32),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn limits_are_aws_s() {
        assert!(check_limits(1, 100).is_ok());
        assert!(check_limits(1, 101).unwrap_err().contains("at most 100"));
        assert!(check_limits(20, 6).unwrap_err().contains("must not exceed 100 MB"));
    }

    #[test]
    fn a_request_becomes_a_plan() {
        let request = json!({
            "ModelName": "m", "MaxConcurrentTransforms": 4, "BatchStrategy": "SingleRecord",
            "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/in/"}},
                               "ContentType": "text/csv", "SplitType": "Line", "CompressionType": "Gzip"},
            "TransformOutput": {"S3OutputPath": "s3://b/out", "AssembleWith": "Line"},
            "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 2},
            "DataProcessing": {"InputFilter": "$[1:]", "JoinSource": "Input"}
        });
        let plan = Plan::of(request.as_object().unwrap()).unwrap();
        assert_eq!((plan.count, plan.concurrency, plan.multi_record), (2, Some(4), Some(false)));
        assert!(plan.gzip && plan.assemble_line && plan.join_input && plan.input_filter.is_some());
        assert_eq!(plan.split, Split::Line);
        assert_eq!(plan.invocation_timeout, INVOCATION_TIMEOUT);
    }
}
