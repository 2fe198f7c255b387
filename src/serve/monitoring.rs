//! The CloudWatch metrics calls the SDK's `TrainingJobAnalytics` makes, answered from each
//! job's metric series (`metrics.jsonl`) as SageMaker publishes training metrics: namespace
//! `/aws/sagemaker/TrainingJobs`, dimension `TrainingJobName`. botocore speaks Smithy RPC v2
//! CBOR to CloudWatch (`POST /service/GraniteServiceVersion20100801/operation/<Op>`), older
//! clients AWS JSON 1.0; both reach the same handlers, which work on JSON values with
//! timestamps as epoch seconds.

use super::{ApiError, ApiResult};
use crate::state::StateDir;
use serde_json::{Value, json};

pub(super) const NAMESPACE: &str = "/aws/sagemaker/TrainingJobs";
pub(super) const SERVICE: &str = "GraniteServiceVersion20100801";
const DIMENSION: &str = "TrainingJobName";
/// GetMetricStatistics answers at most this many datapoints, as CloudWatch does.
const MAX_DATAPOINTS: usize = 1440;

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new("InvalidParameterValue", message)
}

fn text<'a>(body: &'a Value, field: &str) -> Option<&'a str> {
    body.get(field).and_then(Value::as_str)
}

/// The `TrainingJobName` a request's dimensions name, if any.
fn job_of(body: &Value) -> Option<&str> {
    body.get("Dimensions")?
        .as_array()?
        .iter()
        .find(|d| d.get("Name").and_then(Value::as_str) == Some(DIMENSION))
        .and_then(|d| d.get("Value").and_then(Value::as_str))
}

pub(super) fn get_metric_statistics(store: &StateDir, body: Value) -> ApiResult {
    let namespace = text(&body, "Namespace").ok_or_else(|| invalid("Namespace is required"))?;
    let metric = text(&body, "MetricName").ok_or_else(|| invalid("MetricName is required"))?;
    let time = |field: &str| {
        body.get(field).and_then(Value::as_f64).ok_or_else(|| invalid(format!("{field} is required (a timestamp)")))
    };
    let (start, end) = (time("StartTime")?, time("EndTime")?);
    let period = body.get("Period").and_then(Value::as_f64).ok_or_else(|| invalid("Period is required"))?;
    if period < 1.0 {
        return Err(invalid("The parameter Period must be at least 1 second."));
    }
    if end <= start {
        return Err(invalid("The parameter StartTime must be less than the parameter EndTime."));
    }
    let statistics: Vec<&str> = body
        .get("Statistics")
        .and_then(Value::as_array)
        .map_or(Vec::new(), |s| s.iter().filter_map(Value::as_str).collect());
    if statistics.is_empty() {
        return Err(invalid("The parameter Statistics or ExtendedStatistics must be specified."));
    }
    if let Some(bad) = statistics.iter().find(|s| !["Average", "Sum", "SampleCount", "Maximum", "Minimum"].contains(s))
    {
        return Err(invalid(format!(
            "The parameter Statistics has an invalid value '{bad}'; valid are Average, Sum, SampleCount, Maximum, Minimum."
        )));
    }
    let buckets = ((end - start) / period).ceil() as usize;
    if buckets > MAX_DATAPOINTS {
        return Err(invalid(format!(
            "You have requested up to {buckets} datapoints, which exceeds the limit of {MAX_DATAPOINTS}. You may reduce the datapoints requested by increasing Period, or decreasing the time range."
        )));
    }
    let mut points: Vec<(f64, f64)> = Vec::new();
    if namespace == NAMESPACE
        && let Some(job) = job_of(&body)
        && store.load(job).is_ok()
    {
        points = crate::metrics::read(&store.metrics_path(job))
            .into_iter()
            .filter(|p| p.metric == metric && p.timestamp >= start && p.timestamp < end)
            .map(|p| (p.timestamp, p.value))
            .collect();
    }
    // One datapoint per period that has points, stamped with the period's start.
    let mut by_bucket: std::collections::BTreeMap<u64, Vec<f64>> = Default::default();
    for (t, v) in points {
        by_bucket.entry(((t - start) / period) as u64).or_default().push(v);
    }
    let datapoints: Vec<Value> = by_bucket
        .into_iter()
        .map(|(bucket, values)| {
            let mut point = serde_json::Map::new();
            point.insert("Timestamp".into(), json!(start + bucket as f64 * period));
            let sum: f64 = values.iter().sum();
            for s in &statistics {
                let value = match *s {
                    "Average" => sum / values.len() as f64,
                    "Sum" => sum,
                    "SampleCount" => values.len() as f64,
                    "Maximum" => values.iter().copied().fold(f64::MIN, f64::max),
                    _ => values.iter().copied().fold(f64::MAX, f64::min),
                };
                point.insert((*s).into(), json!(value));
            }
            point.insert("Unit".into(), json!("None"));
            Value::Object(point)
        })
        .collect();
    Ok(json!({"Label": metric, "Datapoints": datapoints}))
}

pub(super) fn list_metrics(store: &StateDir, body: Value) -> ApiResult {
    if text(&body, "Namespace").is_some_and(|n| n != NAMESPACE) {
        return Ok(json!({"Metrics": []}));
    }
    let wanted_metric = text(&body, "MetricName");
    let wanted_job = job_of(&body);
    let mut metrics = Vec::new();
    for record in store.list()? {
        let job = &record.training_job_name;
        if wanted_job.is_some_and(|w| w != job) {
            continue;
        }
        let names: std::collections::BTreeSet<String> =
            crate::metrics::read(&store.metrics_path(job)).into_iter().map(|p| p.metric).collect();
        for name in names.into_iter().filter(|n| wanted_metric.is_none_or(|w| w == n)) {
            metrics.push(json!({
                "Namespace": NAMESPACE,
                "MetricName": name,
                "Dimensions": [{"Name": DIMENSION, "Value": job}],
            }));
        }
    }
    Ok(json!({"Metrics": metrics}))
}

/// Fields whose values are timestamps on the wire (CBOR tag 1).
const TIMESTAMPS: [&str; 3] = ["StartTime", "EndTime", "Timestamp"];

/// A CBOR request body as a JSON value: maps with text keys, epoch-second timestamps.
pub(super) fn from_cbor(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.is_empty() {
        return Ok(json!({}));
    }
    let value: ciborium::Value = ciborium::from_reader(bytes)
        .map_err(|e| ApiError::new("SerializationException", format!("The request body is not valid CBOR: {e}")))?;
    Ok(cbor_to_json(value))
}

fn cbor_to_json(value: ciborium::Value) -> Value {
    use ciborium::Value as C;
    match value {
        C::Integer(i) => i128::from(i).try_into().map(|n: i64| json!(n)).unwrap_or(Value::Null),
        C::Float(f) => json!(f),
        C::Text(s) => json!(s),
        C::Bool(b) => json!(b),
        C::Null => Value::Null,
        C::Tag(_, inner) => cbor_to_json(*inner),
        C::Array(items) => Value::Array(items.into_iter().map(cbor_to_json).collect()),
        C::Map(entries) => Value::Object(
            entries.into_iter().filter_map(|(k, v)| k.into_text().ok().map(|k| (k, cbor_to_json(v)))).collect(),
        ),
        C::Bytes(_) => Value::Null,
        _ => Value::Null,
    }
}

/// A JSON answer as CBOR, timestamps tagged as Smithy wants them.
pub(super) fn to_cbor(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = ciborium::into_writer(&json_to_cbor(value, false), &mut out);
    out
}

fn json_to_cbor(value: &Value, timestamp: bool) -> ciborium::Value {
    use ciborium::Value as C;
    match value {
        Value::Null => C::Null,
        Value::Bool(b) => C::Bool(*b),
        Value::Number(n) if timestamp => C::Tag(1, Box::new(C::Float(n.as_f64().unwrap_or(0.0)))),
        Value::Number(n) => match n.as_i64() {
            Some(i) => C::Integer(i.into()),
            None => C::Float(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => C::Text(s.clone()),
        Value::Array(items) => C::Array(items.iter().map(|v| json_to_cbor(v, false)).collect()),
        Value::Object(map) => C::Map(
            map.iter().map(|(k, v)| (C::Text(k.clone()), json_to_cbor(v, TIMESTAMPS.contains(&k.as_str())))).collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cbor_round_trips_with_tagged_timestamps() {
        let answer =
            json!({"Label": "m", "Datapoints": [{"Timestamp": 1700000000.5, "Average": 0.25, "Unit": "None"}]});
        let bytes = to_cbor(&answer);
        let raw: ciborium::Value = ciborium::from_reader(&bytes[..]).unwrap();
        let text = format!("{raw:?}");
        assert!(text.contains("Tag(1"), "{text}");
        assert_eq!(from_cbor(&bytes).unwrap(), answer);
    }

    #[test]
    fn statistics_are_per_period_from_the_jobs_series() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateDir::new(dir.path());
        let record = crate::state::record::Record::new("stats-job", "arn", "s3://b/m", &serde_json::Map::new());
        store.create(&record).unwrap();
        let lines: Vec<String> = [(100.0, 1.0), (130.0, 3.0), (170.0, 5.0), (175.0, 9.0)]
            .iter()
            .map(|(t, v)| {
                serde_json::to_string(&crate::metrics::Point {
                    metric: "loss".into(),
                    host: "algo-1".into(),
                    timestamp: *t,
                    value: *v,
                })
                .unwrap()
            })
            .collect();
        std::fs::write(store.metrics_path("stats-job"), lines.join("\n") + "\n").unwrap();
        let body = json!({
            "Namespace": NAMESPACE, "MetricName": "loss", "StartTime": 100.0, "EndTime": 220.0, "Period": 60,
            "Statistics": ["Average", "Maximum"], "Dimensions": [{"Name": "TrainingJobName", "Value": "stats-job"}],
        });
        let answer = get_metric_statistics(&store, body.clone()).unwrap();
        assert_eq!(
            answer["Datapoints"],
            json!([
                {"Timestamp": 100.0, "Average": 2.0, "Maximum": 3.0, "Unit": "None"},
                {"Timestamp": 160.0, "Average": 7.0, "Maximum": 9.0, "Unit": "None"},
            ])
        );
        let mut other = body;
        other["Dimensions"][0]["Value"] = json!("no-such-job");
        assert_eq!(get_metric_statistics(&store, other).unwrap()["Datapoints"], json!([]));
        let listed = list_metrics(&store, json!({"Namespace": NAMESPACE})).unwrap();
        assert_eq!(listed["Metrics"][0]["MetricName"], "loss");
    }
}
