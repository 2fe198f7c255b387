//! The `CreateTrainingJob` request exactly as the AWS API defines it: field names, nesting and
//! enums as on the wire. Parsing checks the request against botocore's service model
//! ([`validate`]); turning it into something runnable is [`crate::job`]'s work.

pub(crate) mod validate;

use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The `__type` of an AWS error: how a client tells one failure from another. Errors carry
/// their kind as data; the API puts it on the wire and the command line prefixes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwsErrorKind {
    /// The request is wrong, or names something that does not exist (SageMaker says
    /// `ValidationException` for an unknown training job too).
    Validation,
    /// The name is taken.
    ResourceInUse,
    /// A resource the request names is not there (CloudWatch Logs' word for it).
    ResourceNotFound,
    /// The request asks for more than this machine can give (an instance bigger than the
    /// memory left beside the reserve).
    ResourceLimitExceeded,
    /// smlocal's own trouble, not the request's.
    Internal,
}

impl AwsErrorKind {
    /// As AWS spells it in `__type`.
    pub fn as_str(self) -> &'static str {
        match self {
            AwsErrorKind::Validation => "ValidationException",
            AwsErrorKind::ResourceInUse => "ResourceInUse",
            AwsErrorKind::ResourceNotFound => "ResourceNotFoundException",
            AwsErrorKind::ResourceLimitExceeded => "ResourceLimitExceeded",
            AwsErrorKind::Internal => "InternalFailure",
        }
    }
}

/// Why a request text is not a valid `CreateTrainingJob` request.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("Parameter validation failed:\n{}", .0.join("\n"))]
    Parameters(Vec<String>),
    #[error("{}", validation_sentence(.0))]
    Constraints(Vec<String>),
}

impl SpecError {
    pub fn aws_kind(&self) -> AwsErrorKind {
        AwsErrorKind::Validation
    }
}

/// AWS's wording: `1 validation error detected: ...` / `2 validation errors detected: a; b`.
pub(crate) fn validation_sentence(errors: &[String]) -> String {
    let plural = if errors.len() == 1 { "error" } else { "errors" };
    format!("{} validation {plural} detected: {}", errors.len(), errors.join("; "))
}

/// A request that matches the service model, with the fields smlocal acts on typed and the
/// whole original kept for the job record (DescribeTrainingJob echoes the request).
#[derive(Debug, Clone)]
pub struct Request {
    pub fields: CreateTrainingJob,
    pub raw: Map<String, Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateTrainingJob {
    pub training_job_name: String,
    #[serde(default)]
    pub hyper_parameters: Map<String, Value>,
    pub algorithm_specification: Option<AlgorithmSpecification>,
    pub role_arn: String,
    #[serde(default)]
    pub input_data_config: Vec<Channel>,
    pub output_data_config: OutputDataConfig,
    pub resource_config: Option<ResourceConfig>,
    pub stopping_condition: Option<StoppingCondition>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    #[serde(default)]
    pub enable_network_isolation: bool,
    pub checkpoint_config: Option<CheckpointConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CheckpointConfig {
    pub s3_uri: String,
    pub local_path: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AlgorithmSpecification {
    pub training_image: Option<String>,
    pub algorithm_name: Option<String>,
    pub training_input_mode: InputMode,
    #[serde(default)]
    pub metric_definitions: Vec<MetricDefinition>,
    pub container_entrypoint: Option<Vec<String>>,
    pub container_arguments: Option<Vec<String>>,
}

/// `TrainingInputMode`: how a channel reaches the algorithm (the model's enum, so a request
/// that passed validation always parses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum InputMode {
    Pipe,
    File,
    FastFile,
}

/// `RecordWrapperType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum RecordWrapper {
    None,
    RecordIO,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MetricDefinition {
    pub name: String,
    pub regex: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Channel {
    pub channel_name: String,
    pub data_source: DataSource,
    pub content_type: Option<String>,
    pub compression_type: Option<String>,
    pub record_wrapper_type: Option<RecordWrapper>,
    pub input_mode: Option<InputMode>,
    pub shuffle_config: Option<ShuffleConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DataSource {
    pub s3_data_source: Option<S3DataSource>,
    pub file_system_data_source: Option<Value>,
    pub dataset_source: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct S3DataSource {
    pub s3_data_type: String,
    pub s3_uri: String,
    pub s3_data_distribution_type: Option<String>,
    #[serde(default)]
    pub attribute_names: Vec<String>,
    #[serde(default)]
    pub instance_group_names: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ShuffleConfig {
    pub seed: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct OutputDataConfig {
    pub s3_output_path: String,
    pub compression_type: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ResourceConfig {
    pub instance_type: Option<String>,
    pub instance_count: Option<i64>,
    #[serde(default)]
    pub instance_groups: Vec<InstanceGroup>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceGroup {
    pub instance_type: String,
    pub instance_count: i64,
    pub instance_group_name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StoppingCondition {
    pub max_runtime_in_seconds: Option<u64>,
}

/// Checks `value` as the named input shape of botocore's model (e.g.
/// `DescribeTrainingJobRequest`): botocore's parameter errors first, then the service's
/// constraint errors, as a real client meets them.
pub(crate) fn check(shape: &str, value: &Value) -> Result<(), SpecError> {
    let findings = validate::check(shape, value);
    if !findings.parameters.is_empty() {
        return Err(SpecError::Parameters(findings.parameters));
    }
    if !findings.constraints.is_empty() {
        return Err(SpecError::Constraints(findings.constraints));
    }
    Ok(())
}

/// The fields botocore's model gives a structure (e.g. `CreateTrainingJobRequest`).
pub(crate) fn members(shape: &str) -> Vec<String> {
    validate::members(shape)
}

/// Checks a request and keeps it whole. Parameter errors (botocore's) are reported before
/// constraint errors (the service's), as a real client would meet them.
pub fn from_value(value: Value) -> Result<Request, SpecError> {
    check("CreateTrainingJobRequest", &value)?;
    let raw = match &value {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    let fields: CreateTrainingJob = serde_json::from_value(value)?;
    Ok(Request { fields, raw })
}

/// The SageMaker SDK's `name_from_base`: `base` cut to fit a `TrainingJobName`, then
/// `-YYYY-MM-DD-HH-MM-SS-mmm` of `now`.
pub fn unique_name(base: &str, now: time::OffsetDateTime) -> String {
    let stamp = format!(
        "{:04}-{:02}-{:02}-{:02}-{:02}-{:02}-{:03}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.millisecond()
    );
    let base: String = base.chars().take(63 - stamp.len() - 1).collect();
    format!("{}-{stamp}", base.trim_end_matches('-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Request, SpecError> {
        let value: Value = serde_json::from_str(text)?;
        from_value(value)
    }

    #[test]
    fn malformed_json_says_where() {
        let err = parse("{\"TrainingJobName\": ").unwrap_err();
        assert!(matches!(err, SpecError::Json(_)));
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn hyperparameters_keep_their_exact_strings() {
        let text = r#"{"TrainingJobName":"j","RoleArn":"arn:aws:iam::123456789012:role/R",
            "OutputDataConfig":{"S3OutputPath":"s3://b/o"},
            "AlgorithmSpecification":{"TrainingImage":"i","TrainingInputMode":"File"},
            "HyperParameters":{"sagemaker_program":"\"train.py\"","b":"1e-3","a":"x"}}"#;
        let req = parse(text).unwrap();
        let keys: Vec<&String> = req.fields.hyper_parameters.keys().collect();
        assert_eq!(keys, ["sagemaker_program", "b", "a"]);
        assert_eq!(req.fields.hyper_parameters["sagemaker_program"], "\"train.py\"");
    }

    #[test]
    fn unique_names_fit_the_limit_as_the_sdk_makes_them() {
        let at = time::macros::datetime!(2026-12-01 18:05:09.042 UTC);
        assert_eq!(unique_name("job", at), "job-2026-12-01-18-05-09-042");
        let long = unique_name(&format!("{}-", "x".repeat(70)), at);
        assert_eq!(long.len(), 63);
        assert!(long.ends_with("x-2026-12-01-18-05-09-042"), "{long}");
    }

    #[test]
    fn several_constraint_errors_are_counted() {
        let err = SpecError::Constraints(vec!["a".into(), "b".into()]);
        assert_eq!(err.to_string(), "2 validation errors detected: a; b");
        assert_eq!(err.aws_kind().as_str(), "ValidationException");
    }
}
