//! The two CloudWatch Logs calls that read a training job's or an endpoint's logs, as
//! SageMaker publishes them: group `/aws/sagemaker/TrainingJobs`, one stream per host named
//! `<job>/<host>-<epoch>` (the job's creation time in seconds); group
//! `/aws/sagemaker/Endpoints/<name>`, one stream per instance, `<variant>/<instance-id>`. Events are the host's log lines with the
//! millisecond each was printed ([`crate::logs::index`]). Tokens are line positions in the
//! host's log, so they stay valid while the log grows: `f/N` reads forward from line N, `b/N`
//! backward before it; a page costs one read however long the log is.

use super::{ApiError, ApiResult};
use crate::hosting::Hosting;
use crate::hosting::logs::GROUP_PREFIX;
use crate::logs;
use crate::logs::index::Reader;
use crate::state::record::Record;
use crate::state::{StateDir, StateError};
use serde_json::{Value, json};

pub(super) const LOG_GROUP: &str = "/aws/sagemaker/TrainingJobs";
/// Transform jobs' group: one stream per instance, `<job>/<instance-id>`.
const TRANSFORM_GROUP: &str = "/aws/sagemaker/TransformJobs";

/// A transform job's streams, or every job's when the prefix names none.
fn transform_streams(hosting: &Hosting, prefix: &str) -> Vec<Stream> {
    let store = crate::transform::store::TransformStore::new(hosting.state.root());
    let names: Vec<String> = match prefix.split_once('/') {
        Some((job, _)) => vec![job.to_string()],
        None => store.list().into_iter().map(|r| r.name).collect(),
    };
    names
        .iter()
        .flat_map(|n| {
            let account = store.load(n).ok().flatten().map(|r| account_of(&r.arn)).unwrap_or_default();
            store.log_streams(n).into_iter().map(move |(name, log)| Stream { name, log, account: account.clone() })
        })
        .collect()
}

/// DescribeLogStreams' largest page, and the count up to which it never pages.
const MAX_STREAMS: usize = 50;
/// GetLogEvents' largest (and default) page.
const MAX_EVENTS: usize = 10_000;

pub(super) fn not_found(what: &str) -> ApiError {
    ApiError::new("ResourceNotFoundException", format!("The specified log {what} does not exist."))
}

pub(super) fn string<'a>(body: &'a Value, field: &str) -> Result<Option<&'a str>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::new("InvalidParameterException", format!("{field} must be a string"))),
    }
}

pub(super) fn number(body: &Value, field: &str) -> Result<Option<i64>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_f64().map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| ApiError::new("InvalidParameterException", format!("{field} must be a number"))),
    }
}

/// The two kinds of log group.
enum Group {
    TrainingJobs,
    TransformJobs,
    Endpoint(String),
}

impl Group {
    fn name(&self) -> String {
        match self {
            Group::TrainingJobs => LOG_GROUP.to_string(),
            Group::TransformJobs => TRANSFORM_GROUP.to_string(),
            Group::Endpoint(name) => format!("{GROUP_PREFIX}{name}"),
        }
    }
}

fn check_group(body: &Value) -> Result<Group, ApiError> {
    let group = string(body, "logGroupName")?.or(string(body, "logGroupIdentifier")?);
    match group {
        Some(LOG_GROUP) => Ok(Group::TrainingJobs),
        Some(TRANSFORM_GROUP) => Ok(Group::TransformJobs),
        Some(g) if g.starts_with(GROUP_PREFIX) => Ok(Group::Endpoint(g[GROUP_PREFIX.len()..].to_string())),
        Some(_) => Err(not_found("group")),
        None => Err(ApiError::new("InvalidParameterException", "logGroupName is required")),
    }
}

/// An endpoint's streams, brought up to date with what its containers printed.
async fn endpoint_streams(hosting: &Hosting, endpoint: &str) -> Result<Vec<Stream>, ApiError> {
    let mut account = String::new();
    if let Ok(record) = hosting.endpoint(endpoint) {
        crate::hosting::logs::sync_endpoint(hosting, &record).await;
        account = account_of(&record.arn);
    }
    let streams = hosting.store.log_streams(endpoint);
    if streams.is_empty() && hosting.endpoint(endpoint).is_err() {
        return Err(not_found("group"));
    }
    Ok(streams.into_iter().map(|(name, log)| Stream { name, log, account: account.clone() }).collect())
}

/// One stream: its name and the host log it reads.
pub(super) struct Stream {
    pub name: String,
    pub log: std::path::PathBuf,
    /// The account of the job or endpoint it belongs to (for its ARN).
    pub account: String,
}

/// The account an ARN names, else the one smlocal uses when none is known.
fn account_of(arn: &str) -> String {
    arn.split(':').nth(4).filter(|a| !a.is_empty()).unwrap_or("000000000000").to_string()
}

/// Every stream of the request's group whose name starts with `prefix`.
pub(super) async fn group_streams(
    store: &StateDir,
    hosting: &Hosting,
    body: &Value,
    prefix: &str,
) -> Result<(String, Vec<Stream>), ApiError> {
    let group = check_group(body)?;
    let all = match &group {
        Group::Endpoint(endpoint) => endpoint_streams(hosting, endpoint).await?,
        Group::TrainingJobs => {
            let records: Vec<Record> = match prefix.split_once('/') {
                Some((job, _)) => store.load(job).into_iter().collect(),
                None => store.list()?,
            };
            records.iter().flat_map(|r| streams_of(store, r)).collect()
        }
        Group::TransformJobs => transform_streams(hosting, prefix),
    };
    Ok((group.name(), all.into_iter().filter(|s| s.name.starts_with(prefix)).collect()))
}

fn stream_name(record: &Record, host: &str) -> String {
    format!("{}/{host}-{}", record.training_job_name, record.creation_time as i64)
}

fn streams_of(store: &StateDir, record: &Record) -> Vec<Stream> {
    let dir = store.logs_dir(&record.training_job_name);
    logs::hosts(&dir)
        .into_iter()
        .map(|host| Stream {
            name: stream_name(record, &host),
            log: store.log_path(&record.training_job_name, &host),
            account: account_of(&record.training_job_arn),
        })
        .collect()
}

/// The first and last event times of a stream, if it has events.
fn span(stream: &Stream) -> Option<(i64, i64)> {
    let reader = Reader::open(&stream.log).ok()?;
    let last = reader.len().checked_sub(1)?;
    Some((reader.timestamp(0).ok()?, reader.timestamp(last).ok()?))
}

fn unreadable(stream: &str, e: std::io::Error) -> ApiError {
    ApiError::internal(format!("cannot read the log of {stream}: {e}"))
}

pub(super) async fn describe_log_streams(store: &StateDir, hosting: &Hosting, body: Value) -> ApiResult {
    let group = check_group(&body)?;
    let all = match &group {
        Group::Endpoint(endpoint) => endpoint_streams(hosting, endpoint).await?,
        Group::TrainingJobs => training_streams(store, &body)?,
        Group::TransformJobs => transform_streams(hosting, string(&body, "logStreamNamePrefix")?.unwrap_or_default()),
    };
    describe_streams(all, &group.name(), hosting.region(), &body)
}

/// The training jobs' streams a DescribeLogStreams request may list.
fn training_streams(store: &StateDir, body: &Value) -> Result<Vec<Stream>, ApiError> {
    let prefix = string(body, "logStreamNamePrefix")?.unwrap_or_default();
    // `<job>/...` names one job: no need to read every record.
    let records: Vec<Record> = match prefix.split_once('/') {
        Some((job, _)) => store.load(job).into_iter().collect(),
        None => store.list()?,
    };
    Ok(records.iter().flat_map(|r| streams_of(store, r)).collect())
}

/// One page of a group's streams, filtered, ordered and paged as the request asks.
fn describe_streams(all: Vec<Stream>, group_name: &str, region: &str, body: &Value) -> ApiResult {
    let prefix = string(body, "logStreamNamePrefix")?.unwrap_or_default();
    if !prefix.is_empty() && string(body, "orderBy")? == Some("LastEventTime") {
        return Err(ApiError::new(
            "InvalidParameterException",
            "Cannot order by LastEventTime with a logStreamNamePrefix.",
        ));
    }
    let descending = body.get("descending").and_then(Value::as_bool).unwrap_or(false);
    let limit = number(body, "limit")?.map_or(MAX_STREAMS, |l| l.clamp(1, MAX_STREAMS as i64) as usize);
    let after = string(body, "nextToken")?;
    let mut streams: Vec<(Stream, Option<(i64, i64)>)> = all
        .into_iter()
        .filter(|s| s.name.starts_with(prefix))
        .map(|s| {
            let span = span(&s);
            (s, span)
        })
        .collect();
    match string(body, "orderBy")? {
        Some("LastEventTime") => streams.sort_by_key(|(s, span)| (span.map_or(0, |(_, last)| last), s.name.clone())),
        _ => streams.sort_by(|a, b| a.0.name.cmp(&b.0.name)),
    }
    if descending {
        streams.reverse();
    }
    if let Some(after) = after {
        match streams.iter().position(|(s, _)| s.name == after) {
            Some(i) => drop(streams.drain(..=i)),
            None => return Err(ApiError::new("InvalidParameterException", format!("invalid nextToken: {after}"))),
        }
    }
    // Up to 50 streams come in one page whatever the limit: the SageMaker SDK asks again
    // without the token while a token comes back, so a token for few streams never ends.
    let page = if streams.len() <= MAX_STREAMS { streams.len() } else { limit };
    let more = streams.len() > page;
    streams.truncate(page);
    let listed: Vec<Value> = streams
        .iter()
        .map(|(s, span)| {
            let mut v = json!({
                "logStreamName": s.name,
                "creationTime": span.map_or(0, |(first, _)| first),
                "arn": format!("arn:aws:logs:{region}:{}:log-group:{group_name}:log-stream:{}", s.account, s.name),
                "storedBytes": 0,
            });
            if let Some((first, last)) = span {
                v["firstEventTimestamp"] = json!(first);
                v["lastEventTimestamp"] = json!(last);
                v["lastIngestionTime"] = json!(last);
            }
            v
        })
        .collect();
    let mut out = json!({ "logStreams": listed });
    if more && let Some((last, _)) = streams.last() {
        out["nextToken"] = json!(last.name);
    }
    Ok(out)
}

/// The stream of that name, if its job exists and has that host's log.
fn find_stream(store: &StateDir, name: &str) -> Result<Stream, ApiError> {
    let (job, _) = name.split_once('/').ok_or_else(|| not_found("stream"))?;
    let record = match store.load(job) {
        Ok(r) => r,
        Err(StateError::NotFound(_)) => return Err(not_found("stream")),
        Err(e) => return Err(e.into()),
    };
    streams_of(store, &record).into_iter().find(|s| s.name == name).ok_or_else(|| not_found("stream"))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cursor {
    Forward(u64),
    Backward(u64),
}

fn parse_cursor(token: &str) -> Result<Cursor, ApiError> {
    let invalid = || ApiError::new("InvalidParameterException", format!("The specified nextToken is invalid: {token}"));
    let (direction, n) = token.split_once('/').ok_or_else(invalid)?;
    let n: u64 = n.parse().map_err(|_| invalid())?;
    match direction {
        "f" => Ok(Cursor::Forward(n)),
        "b" => Ok(Cursor::Backward(n)),
        _ => Err(invalid()),
    }
}

pub(super) async fn get_log_events(store: &StateDir, hosting: &Hosting, body: Value) -> ApiResult {
    let group = check_group(&body)?;
    let name = string(&body, "logStreamName")?
        .ok_or_else(|| ApiError::new("InvalidParameterException", "logStreamName is required"))?;
    let stream = match &group {
        Group::TrainingJobs => find_stream(store, name)?,
        Group::TransformJobs => {
            transform_streams(hosting, name).into_iter().find(|s| s.name == name).ok_or_else(|| not_found("stream"))?
        }
        Group::Endpoint(endpoint) => endpoint_streams(hosting, endpoint)
            .await?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| not_found("stream"))?,
    };
    events_of(&stream, &body)
}

/// One page of a stream's events, as the request's times, direction and token ask.
fn events_of(stream: &Stream, body: &Value) -> ApiResult {
    let name = stream.name.as_str();
    let reader = Reader::open(&stream.log).map_err(|e| unreadable(name, e))?;
    let start = number(body, "startTime")?;
    let end = number(body, "endTime")?;
    let limit = number(body, "limit")?.map_or(MAX_EVENTS, |l| l.clamp(1, MAX_EVENTS as i64) as usize) as u64;
    let from_head = body.get("startFromHead").and_then(Value::as_bool).unwrap_or(false);
    let cursor = match string(body, "nextToken")? {
        Some(token) => parse_cursor(token)?,
        None if from_head => Cursor::Forward(0),
        None => Cursor::Backward(reader.len()),
    };
    // Times only grow within a log, so startTime (inclusive) and endTime (exclusive) are a
    // range of lines.
    let read = |e: std::io::Error| unreadable(name, e);
    let low = start.map_or(Ok(0), |t| reader.first_at_or_after(t)).map_err(read)?;
    let high = end.map_or(Ok(reader.len()), |t| reader.first_at_or_after(t)).map_err(read)?;
    let (first, after, forward) = match cursor {
        Cursor::Forward(from) => {
            let from = from.min(reader.len());
            let first = from.max(low);
            let after = first.saturating_add(limit).min(high);
            // Nothing new: the same token again, so the next call sees lines written meanwhile.
            if first >= after { (from, from, from) } else { (first, after, after) }
        }
        Cursor::Backward(before) => {
            let after = before.min(reader.len()).min(high);
            let first = after.saturating_sub(limit).max(low);
            if first >= after { (after, after, after) } else { (first, after, after) }
        }
    };
    let page: Vec<Value> = reader
        .events(first, after)
        .map_err(read)?
        .into_iter()
        // As CloudWatch stores a line: tabs and other control characters as `#011` etc.
        .map(|e| {
            let message = crate::logs::cloudwatch_form(&e.message);
            json!({"timestamp": e.timestamp, "message": message, "ingestionTime": e.timestamp})
        })
        .collect();
    Ok(json!({
        "events": page,
        "nextForwardToken": format!("f/{forward}"),
        "nextBackwardToken": format!("b/{first}"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::index::Writer;

    fn get_log_events(store: &StateDir, body: Value) -> ApiResult {
        check_group(&body)?;
        let name = body["logStreamName"].as_str().unwrap_or_default().to_string();
        events_of(&find_stream(store, &name)?, &body)
    }

    fn describe_log_streams(store: &StateDir, body: Value) -> ApiResult {
        let group = check_group(&body)?;
        describe_streams(training_streams(store, &body)?, &group.name(), "us-west-2", &body)
    }

    fn store_with_log(lines: usize) -> (tempfile::TempDir, StateDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let store = StateDir::new(dir.path());
        let mut record = Record::new("job", "arn", "s3://b/m", &serde_json::Map::new());
        record.creation_time = 1_700_000_000.5;
        store.create(&record).unwrap();
        let logs = store.logs_dir("job");
        std::fs::create_dir_all(&logs).unwrap();
        let mut log = Writer::open(&logs.join("algo-1.log")).unwrap();
        for i in 0..lines {
            // Two lines per millisecond, as fast loggers print.
            log.write(1000 + i as i64 / 2, &format!("line {i}")).unwrap();
        }
        log.flush().unwrap();
        Writer::open(&logs.join("algo-2.log")).unwrap();
        (dir, store, "job/algo-1-1700000000".into())
    }

    fn messages(v: &Value) -> Vec<String> {
        v["events"].as_array().unwrap().iter().map(|e| e["message"].as_str().unwrap().to_string()).collect()
    }

    #[test]
    fn forward_pages_end_with_an_empty_page_and_a_stable_token() {
        let (_dir, store, stream) = store_with_log(5);
        let mut body = json!({"logGroupName": LOG_GROUP, "logStreamName": stream, "startFromHead": true, "limit": 2});
        let mut seen = Vec::new();
        loop {
            let page = get_log_events(&store, body.clone()).unwrap();
            let got = messages(&page);
            if got.is_empty() {
                assert_eq!(page["nextForwardToken"], body["nextToken"]);
                break;
            }
            seen.extend(got);
            body["nextToken"] = page["nextForwardToken"].clone();
        }
        assert_eq!(seen, ["line 0", "line 1", "line 2", "line 3", "line 4"]);
        // Lines written later come after the same token.
        Writer::open(&store.log_path("job", "algo-1")).unwrap().write(2000, "late").unwrap();
        assert_eq!(messages(&get_log_events(&store, body).unwrap()), ["late"]);
    }

    #[test]
    fn start_time_is_inclusive_and_the_default_reads_the_tail() {
        let (_dir, store, stream) = store_with_log(6);
        let body =
            json!({"logGroupName": LOG_GROUP, "logStreamName": stream, "startTime": 1001, "startFromHead": true});
        assert_eq!(messages(&get_log_events(&store, body).unwrap()), ["line 2", "line 3", "line 4", "line 5"]);
        let body = json!({"logGroupName": LOG_GROUP, "logStreamName": stream, "limit": 2});
        let tail = get_log_events(&store, body).unwrap();
        assert_eq!(messages(&tail), ["line 4", "line 5"]);
        let body = json!({"logGroupName": LOG_GROUP, "logStreamName": stream, "limit": 2, "nextToken": tail["nextBackwardToken"]});
        assert_eq!(messages(&get_log_events(&store, body).unwrap()), ["line 2", "line 3"]);
    }

    #[test]
    fn streams_are_one_per_host_without_a_token_and_unknown_names_are_not_found() {
        let (_dir, store, stream) = store_with_log(1);
        let body =
            json!({"logGroupName": LOG_GROUP, "logStreamNamePrefix": "job/", "orderBy": "LogStreamName", "limit": 1});
        let listed = describe_log_streams(&store, body).unwrap();
        let names: Vec<&str> =
            listed["logStreams"].as_array().unwrap().iter().map(|s| s["logStreamName"].as_str().unwrap()).collect();
        assert_eq!(names, [stream.as_str(), "job/algo-2-1700000000"]);
        assert!(listed.get("nextToken").is_none());
        let err = get_log_events(&store, json!({"logGroupName": LOG_GROUP, "logStreamName": "job/algo-3-1700000000"}))
            .unwrap_err();
        assert_eq!(err.kind, "ResourceNotFoundException");
        let err = describe_log_streams(&store, json!({"logGroupName": "/aws/other"})).unwrap_err();
        assert_eq!(err.kind, "ResourceNotFoundException");
        let none = describe_log_streams(&store, json!({"logGroupName": LOG_GROUP, "logStreamNamePrefix": "nope/"}));
        assert_eq!(none.unwrap()["logStreams"], json!([]));
    }

    #[test]
    fn stream_arns_name_region_and_account_and_last_event_order_takes_no_prefix() {
        let (_dir, store, stream) = store_with_log(1);
        let listed = describe_log_streams(&store, json!({"logGroupName": LOG_GROUP})).unwrap();
        let arn = listed["logStreams"][0]["arn"].as_str().unwrap().to_string();
        // The record's ARN is "arn" (no account): the default account stands in.
        assert_eq!(arn, format!("arn:aws:logs:us-west-2:000000000000:log-group:{LOG_GROUP}:log-stream:{stream}"));
        let err = describe_log_streams(
            &store,
            json!({"logGroupName": LOG_GROUP, "logStreamNamePrefix": "job/", "orderBy": "LastEventTime"}),
        )
        .unwrap_err();
        assert_eq!(err.message, "Cannot order by LastEventTime with a logStreamNamePrefix.");
    }
}
