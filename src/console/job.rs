//! A training job's page: its status and timeline, what it was given (hyperparameters,
//! channels and what they staged, resources and the caps applied, stopping condition), its
//! logs and metric curves (kept live by `events::job`), what it produced, and its request;
//! and the Stop action with its confirmation.

use super::html::{self, escape, url_part};
use super::{Console, Fields, reply};
use crate::logs::index::Reader;
use crate::metrics::Point;
use crate::serve::{Api, Body};
use crate::state::StateDir;
use crate::state::details::{self, ChannelStaged, HostCaps};
use crate::state::record::Record;
use hyper::{Response, StatusCode};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Log lines the page shows at first (the newest); more arrive live.
const SHOWN_LINES: u64 = 2000;

pub(super) fn page(api: &Api, console: &Console, name: &str, query: &Fields) -> Response<Body> {
    let store = api.queue.store();
    let record = match super::training_job(api, console, name) {
        Ok(record) => record,
        Err(page) => return *page,
    };
    let host = query.get("host").filter(|h| !h.is_empty()).map(String::as_str);
    let search = query.get("q").map(String::as_str).unwrap_or_default();
    let mut main = String::new();
    let link = url_part(name);
    let _ = write!(main, r#"<h1 class="job-name">{}</h1>"#, escape(name));
    let _ = write!(main, r#"<div class="actions">"#);
    if !record.training_job_status.is_terminal() {
        let _ = write!(main, r#"<a class="button danger" id="stop" href="/jobs/{link}/stop">Stop</a> "#);
    }
    let _ = write!(main, r#"<a class="button" id="clone" href="/jobs/{link}/clone">Clone</a></div>"#);
    let _ = write!(main, r#"<div id="status-block">{}</div>"#, status_block(&record));

    // What people watch first: the curves beside the logs; then what the job was given.
    let points = crate::metrics::read(&store.metrics_path(name));
    main.push_str(r#"<div class="watch">"#);
    let _ = write!(
        main,
        r#"<section aria-labelledby="metrics-h"><h2 id="metrics-h">Metrics</h2><div id="chart" class="chart">{}</div></section>"#,
        chart(name, &points)
    );
    logs(&mut main, store, &record, host, search);
    main.push_str("</div>");
    main.push_str(r#"<div class="columns">"#);
    section(&mut main, "Overview", &overview(&record));
    section(&mut main, "Hyperparameters", &hyperparameters(&record));
    section(&mut main, "Stopping condition", &stopping(&record));
    main.push_str("</div>");
    section(&mut main, "Input channels", &channels(&record, details::read(&store.staged_path(name))));
    section(&mut main, "Resources", &resources(&record, details::read(&store.placement_path(name))));
    let request = serde_json::to_string_pretty(&request_of(&record)).unwrap_or_default();
    let _ = write!(
        main,
        r#"<section aria-labelledby="request-h"><h2 id="request-h">Request</h2><p><button type="button" class="copy" data-copy="request">Copy</button> <span class="copied" aria-live="polite"></span></p><pre id="request" class="json" tabindex="0">{}</pre></section>"#,
        escape(&request)
    );
    reply::html(StatusCode::OK, html::page(name, html::Section::Jobs, &console.token, &main))
}

/// The part of the page that changes as the job runs: status, failure, timeline, outputs.
pub(super) fn status_block(record: &Record) -> String {
    let mut out = String::new();
    let status = record.training_job_status.as_str();
    let _ = write!(
        out,
        r#"<p class="headline" data-status="{status}"><span class="status {class}" id="status">{status}</span> <span class="secondary" id="secondary">{secondary}</span></p>"#,
        class = html::status_class(status),
        secondary = record.secondary_status,
    );
    if let Some(reason) = &record.failure_reason {
        let _ = write!(
            out,
            r#"<div class="failure" role="alert"><h2>FailureReason</h2><pre>{}</pre></div>"#,
            escape(reason)
        );
    }
    out.push_str(r#"<div class="status-grid"><section aria-labelledby="timeline-h"><h2 id="timeline-h">Timeline</h2><ol class="timeline">"#);
    let now = crate::state::record::now();
    for t in &record.secondary_status_transitions {
        let took = t.end_time.unwrap_or(now) - t.start_time;
        let _ = write!(
            out,
            r#"<li><span class="status {class}">{status}</span> {start} <span class="took">{took}{open}</span><br><span class="message">{message}</span></li>"#,
            class = html::status_class(&t.status.to_string()),
            status = t.status,
            start = html::time_element(t.start_time),
            took = html::duration(took),
            open = if t.end_time.is_none() { " so far" } else { "" },
            message = escape(&t.status_message),
        );
    }
    out.push_str("</ol></section><div>");
    out.push_str(&outputs(record));
    out.push_str("</div></div>");
    out
}

fn section(out: &mut String, title: &str, body: &str) {
    let id = title.to_ascii_lowercase().replace(' ', "-");
    let _ = write!(out, r#"<section aria-labelledby="{id}-h"><h2 id="{id}-h">{title}</h2>{body}</section>"#);
}

/// A two-column table of `(label, value HTML)`.
fn pairs(rows: &[(&str, String)]) -> String {
    let mut out = String::from(r#"<table class="pairs">"#);
    for (label, value) in rows {
        let _ = write!(out, r#"<tr><th scope="row">{}</th><td>{value}</td></tr>"#, escape(label));
    }
    out.push_str("</table>");
    out
}

fn text<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(key))
}

fn shown(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(s)) => escape(s),
        Some(v) => escape(&v.to_string()),
        None => "—".into(),
    }
}

fn overview(record: &Record) -> String {
    let request = Value::Object(record.request.clone());
    let mut rows =
        vec![("ARN", escape(&record.training_job_arn)), ("Created (UTC)", html::time_element(record.creation_time))];
    if let Some(t) = record.training_start_time {
        rows.push(("Training started", html::time_element(t)));
    }
    if let Some(t) = record.training_end_time {
        rows.push(("Ended", html::time_element(t)));
    }
    if let Some(s) = record.training_time_in_seconds {
        rows.push(("Training time", html::duration(s as f64)));
    }
    rows.push(("Image", shown(text(&request, &["AlgorithmSpecification", "TrainingImage"]))));
    if let Some(algorithm) = text(&request, &["AlgorithmSpecification", "AlgorithmName"]) {
        rows.push(("Algorithm", shown(Some(algorithm))));
    }
    rows.push(("Input mode", shown(text(&request, &["AlgorithmSpecification", "TrainingInputMode"]))));
    rows.push(("Role", shown(request.get("RoleArn"))));
    if let Some(tuning) = request.get("TuningJobArn") {
        rows.push(("Tuning job", shown(Some(tuning))));
    }
    pairs(&rows)
}

fn hyperparameters(record: &Record) -> String {
    match record.request.get("HyperParameters").and_then(Value::as_object).filter(|h| !h.is_empty()) {
        None => "<p>None.</p>".into(),
        Some(map) => {
            let rows: Vec<(&str, String)> = map.iter().map(|(k, v)| (k.as_str(), shown(Some(v)))).collect();
            pairs(&rows)
        }
    }
}

fn channels(record: &Record, staged: Option<Vec<ChannelStaged>>) -> String {
    let Some(list) = record.request.get("InputDataConfig").and_then(Value::as_array).filter(|l| !l.is_empty()) else {
        return "<p>None.</p>".into();
    };
    let mode = text(&Value::Object(record.request.clone()), &["AlgorithmSpecification", "TrainingInputMode"])
        .and_then(Value::as_str)
        .unwrap_or("File")
        .to_string();
    let mut out = String::from(
        r#"<div class="scroll"><table><thead><tr><th scope="col">Channel</th><th scope="col">Source</th><th scope="col">Mode</th><th scope="col">Distribution</th><th scope="col">Staged</th></tr></thead><tbody>"#,
    );
    for channel in list {
        let name = channel.get("ChannelName").and_then(Value::as_str).unwrap_or_default();
        let source = text(channel, &["DataSource", "S3DataSource"]);
        let uri = source.and_then(|s| s.get("S3Uri"));
        let data_type = source.and_then(|s| s.get("S3DataType")).and_then(Value::as_str).unwrap_or("S3Prefix");
        let distribution =
            source.and_then(|s| s.get("S3DataDistributionType")).and_then(Value::as_str).unwrap_or("FullyReplicated");
        let input_mode = channel.get("InputMode").and_then(Value::as_str).unwrap_or(&mode);
        let mut extra = String::new();
        for (field, label) in [("ContentType", "content type"), ("CompressionType", "compression")] {
            if let Some(v) = channel.get(field).and_then(Value::as_str) {
                let _ = write!(extra, "<br><span class=\"note\">{label}: {}</span>", escape(v));
            }
        }
        let staged_here: Vec<&ChannelStaged> = staged.iter().flatten().filter(|s| s.channel == name).collect();
        let staged_text = if staged_here.is_empty() {
            if staged.is_some() { "—".to_string() } else { "not yet".to_string() }
        } else {
            staged_here
                .iter()
                .map(|s| {
                    let what = format!("{} objects, {}", s.objects, crate::resources::human_bytes(s.bytes));
                    match &s.host {
                        Some(host) => format!("{}: {what}", escape(host)),
                        None => format!("streamed each epoch: {what}"),
                    }
                })
                .collect::<Vec<_>>()
                .join("<br>")
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td><code>{}</code> <span class=\"note\">{}</span></td><td>{}{extra}</td><td>{}</td><td>{staged_text}</td></tr>",
            escape(name),
            shown(uri),
            escape(data_type),
            escape(input_mode),
            escape(distribution),
        );
    }
    out.push_str("</tbody></table></div>");
    out
}

fn resources(record: &Record, caps: Option<Vec<HostCaps>>) -> String {
    let config = record.request.get("ResourceConfig").cloned().unwrap_or(Value::Null);
    let mut rows = vec![("Instances", escape(&super::jobs::resources(record)))];
    if let Some(size) = config.get("VolumeSizeInGB") {
        rows.push(("Volume", format!("{} GB", shown(Some(size)))));
    }
    let mut out = pairs(&rows);
    match caps {
        None => out.push_str("<p class=\"note\">The caps of each container are recorded when the job is admitted.</p>"),
        Some(caps) => {
            out.push_str(
                r#"<div class="scroll"><table><caption>Caps applied to each container</caption><thead><tr><th scope="col">Host</th><th scope="col">Instance</th><th scope="col">Memory</th><th scope="col">CPUs</th><th scope="col">Cores</th></tr></thead><tbody>"#,
            );
            for c in caps {
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td>{} ({} vCPU, {})</td><td>{}</td><td>{:.2}</td><td>{}</td></tr>",
                    escape(&c.host),
                    escape(&c.instance_type),
                    c.vcpu,
                    crate::resources::human_bytes(c.instance_memory_bytes),
                    crate::resources::human_bytes(c.memory_bytes),
                    c.nano_cpus as f64 / 1e9,
                    c.cores.as_deref().map_or_else(|| "all".to_string(), escape),
                );
            }
            out.push_str("</tbody></table></div>");
        }
    }
    out
}

fn stopping(record: &Record) -> String {
    let condition = record.request.get("StoppingCondition").cloned().unwrap_or(Value::Null);
    let mut rows = Vec::new();
    for (field, label) in [
        ("MaxRuntimeInSeconds", "MaxRuntimeInSeconds"),
        ("MaxWaitTimeInSeconds", "MaxWaitTimeInSeconds"),
        ("MaxPendingTimeInSeconds", "MaxPendingTimeInSeconds"),
    ] {
        if let Some(v) = condition.get(field) {
            let seconds = v.as_f64().map(|s| format!(" ({})", html::duration(s))).unwrap_or_default();
            rows.push((label, format!("{}{seconds}", shown(Some(v)))));
        }
    }
    if rows.is_empty() { "<p>None.</p>".into() } else { pairs(&rows) }
}

/// What the job produced: links to the archives of a `file://` output (served by
/// `files.rs`), the URIs of an S3 one; and its checkpoints.
fn outputs(record: &Record) -> String {
    let name = &record.training_job_name;
    let link = url_part(name);
    let model = &record.model_artifacts.s3_model_artifacts;
    let output = super::files::output_uri(record);
    let mut rows = Vec::new();
    for (label, file, uri) in [("Model", "model.tar.gz", Some(model.clone())), ("Output", "output.tar.gz", output)] {
        let Some(uri) = uri else { continue };
        let value = match super::files::local_path(&uri) {
            Some(path) if path.is_file() => {
                let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                format!(
                    r#"<a href="/jobs/{link}/files/{file}" download>{file}</a> ({}) <code>{}</code>"#,
                    crate::resources::human_bytes(size),
                    escape(&uri)
                )
            }
            Some(_) => format!("<code>{}</code> <span class=\"note\">not written (yet)</span>", escape(&uri)),
            None => format!("<code>{}</code>", escape(&uri)),
        };
        rows.push((label, value));
    }
    if let Some(uri) = record.request.get("CheckpointConfig").and_then(|c| c.get("S3Uri")).and_then(Value::as_str) {
        let value = match super::files::local_path(uri) {
            Some(_) => format!(r#"<a href="/jobs/{link}/checkpoints/">checkpoints</a> <code>{}</code>"#, escape(uri)),
            None => format!("<code>{}</code>", escape(uri)),
        };
        rows.push(("Checkpoints", value));
    }
    let metrics = &record.final_metric_data_list;
    let mut out = String::new();
    section(&mut out, "Artifacts", &pairs(&rows));
    if !metrics.is_empty() {
        let rows: Vec<(&str, String)> =
            metrics.iter().map(|m| (m.metric_name.as_str(), format!("{}", m.value))).collect();
        section(&mut out, "Final metrics", &pairs(&rows));
    }
    out
}

/// The metric curves, one panel per metric and a line per host, with how many points they
/// hold (`data-points`).
pub(super) fn chart(name: &str, points: &[Point]) -> String {
    if points.is_empty() {
        return r#"<p class="note" data-points="0">No metric values yet (the request's MetricDefinitions match log lines).</p>"#
            .into();
    }
    let metrics: std::collections::BTreeSet<&str> = points.iter().map(|p| p.metric.as_str()).collect();
    format!(
        r#"<figure data-points="{n}"><figcaption>{n} values of {m} metric{s}, per host</figcaption>{svg}</figure>"#,
        n = points.len(),
        m = metrics.len(),
        s = if metrics.len() == 1 { "" } else { "s" },
        svg = crate::plot::svg(name, points).replace("<svg ", r#"<svg role="img" aria-label="metric curves" "#),
    )
}

/// A log line with when it was printed (ms) and its host.
type TimedLine = (i64, String, String);

/// The log lines of every host, the newest `SHOWN_LINES`, merged in time, and
/// how many lines each host's log held: where the live stream goes on.
fn log_lines(store: &StateDir, name: &str) -> (Vec<TimedLine>, BTreeMap<String, u64>) {
    let mut lines = Vec::new();
    let mut positions = BTreeMap::new();
    for host in crate::logs::hosts(&store.logs_dir(name)) {
        let Ok(reader) = Reader::open(&store.log_path(name, &host)) else { continue };
        let len = reader.len();
        let events = reader.events(len.saturating_sub(SHOWN_LINES), len).unwrap_or_default();
        lines.extend(events.into_iter().map(|e| (e.timestamp, host.clone(), e.message)));
        positions.insert(host, len);
    }
    lines.sort_by_key(|(t, _, _)| *t);
    let skip = lines.len().saturating_sub(SHOWN_LINES as usize);
    lines.drain(..skip);
    (lines, positions)
}

/// `algo-1:12,algo-2:5`: how many lines of each host's log the page holds.
pub(super) fn positions_text(positions: &BTreeMap<String, u64>) -> String {
    positions.iter().map(|(h, n)| format!("{h}:{n}")).collect::<Vec<_>>().join(",")
}

pub(super) fn parse_positions(text: &str) -> BTreeMap<String, u64> {
    text.split(',')
        .filter_map(|part| part.rsplit_once(':'))
        .filter_map(|(host, n)| Some((host.to_string(), n.parse().ok()?)))
        .collect()
}

/// One log line as the page shows it.
pub(super) fn log_line(out: &mut String, host: &str, message: &str) {
    let _ = write!(
        out,
        r#"<div class="line" data-host="{h}"><span class="host">{h}</span> {}</div>"#,
        escape(message),
        h = escape(host)
    );
}

fn logs(out: &mut String, store: &StateDir, record: &Record, only: Option<&str>, search: &str) {
    let name = &record.training_job_name;
    let (lines, positions) = log_lines(store, name);
    let hosts: Vec<&String> = positions.keys().collect();
    let _ = write!(
        out,
        r#"<section aria-labelledby="logs-h"><h2 id="logs-h">Logs</h2><form class="filter" method="get" action="/jobs/{link}#logs-h" role="search"><label for="host">Host</label> <select id="host" name="host"><option value="">All hosts</option>"#,
        link = url_part(name)
    );
    for host in &hosts {
        let selected = if only == Some(host.as_str()) { " selected" } else { "" };
        let _ = write!(out, r#"<option{selected}>{}</option>"#, escape(host));
    }
    let _ = write!(
        out,
        r#"</select> <label for="log-search">Search</label> <input id="log-search" name="q" type="search" value="{}"> <button type="submit">Show</button> <span id="log-count" class="note" aria-live="polite"></span></form>"#,
        escape(search)
    );
    let live = if record.training_job_status.is_terminal() {
        String::new()
    } else {
        format!(
            r#" data-live="/jobs/{}/events?from={}&amp;metrics={}""#,
            url_part(name),
            url_part(&positions_text(&positions)),
            std::fs::metadata(store.metrics_path(name)).map(|m| m.len()).unwrap_or(0)
        )
    };
    let _ = write!(out, r#"<div id="log" class="log" role="log" tabindex="0" aria-label="Log lines"{live}>"#);
    let needle = search.to_lowercase();
    for (_, host, message) in &lines {
        if only.is_some_and(|o| o != host) || (!needle.is_empty() && !message.to_lowercase().contains(&needle)) {
            continue;
        }
        log_line(out, host, message);
    }
    if lines.is_empty() {
        out.push_str(r#"<p class="note empty-log">No log lines yet.</p>"#);
    }
    out.push_str("</div></section>");
}

/// The request as CreateTrainingJob takes it: the name first, then what was sent, without
/// what smlocal adds (a tuning job's ARN).
pub(super) fn request_of(record: &Record) -> Value {
    let mut request = serde_json::Map::new();
    request.insert("TrainingJobName".into(), Value::String(record.training_job_name.clone()));
    let members = crate::spec::members("CreateTrainingJobRequest");
    for (k, v) in &record.request {
        if members.iter().any(|m| m == k) {
            request.insert(k.clone(), v.clone());
        }
    }
    Value::Object(request)
}

/// The confirmation a stop needs: a page of its own, so it works without JavaScript.
pub(super) fn confirm_stop(api: &Api, console: &Console, name: &str) -> Response<Body> {
    let record = match super::training_job(api, console, name) {
        Ok(record) => record,
        Err(page) => return *page,
    };
    let link = url_part(name);
    let main = if record.training_job_status.is_terminal() {
        format!(
            r#"<h1>{n}</h1><p>This job is already {}; there is nothing to stop.</p><p><a href="/jobs/{link}">Back to the job</a></p>"#,
            record.training_job_status,
            n = escape(name)
        )
    } else {
        format!(
            r#"<h1>Stop {n}?</h1><p>StopTrainingJob sends SIGTERM to its containers; what the job saved in <code>/opt/ml/model</code> is still uploaded. This cannot be undone.</p><form method="post" action="/jobs/{link}/stop"><input type="hidden" name="token" value="{token}"><button type="submit" class="danger" id="confirm-stop">Stop training job</button> <a href="/jobs/{link}">Cancel</a></form>"#,
            n = escape(name),
            token = escape(&console.token)
        )
    };
    reply::html(StatusCode::OK, html::page(&format!("Stop {name}"), html::Section::Jobs, &console.token, &main))
}

/// StopTrainingJob from the page's form; back to the job's page.
pub(super) fn stop(api: &Api, console: &Console, name: &str) -> Response<Body> {
    match api.queue.store().request_stop(name) {
        Ok(_) => {
            tracing::info!("stop of {name} asked from the console");
            reply::see_other(&format!("/jobs/{}", url_part(name)))
        }
        Err(e) => reply::error(StatusCode::BAD_REQUEST, "Cannot stop the job", &e.to_string(), &console.token),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip() {
        let positions = BTreeMap::from([("algo-1".to_string(), 12), ("algo-10".to_string(), 0)]);
        assert_eq!(parse_positions(&positions_text(&positions)), positions);
        assert!(parse_positions("garbage,algo-1:x").is_empty());
    }

    #[test]
    fn a_clone_gets_the_request_without_what_smlocal_added() {
        let request = serde_json::json!({"RoleArn": "r", "TuningJobArn": "arn:t", "HyperParameters": {"a": "1"}});
        let record = Record::new("j", "arn", "s3://b/m", request.as_object().unwrap());
        let back = request_of(&record);
        assert_eq!(back["TrainingJobName"], "j");
        assert_eq!(back["HyperParameters"]["a"], "1");
        assert!(back.get("TuningJobArn").is_none());
        assert_eq!(back.as_object().unwrap().keys().next().map(String::as_str), Some("TrainingJobName"));
    }

    #[test]
    fn log_lines_cannot_inject_markup() {
        let mut out = String::new();
        log_line(&mut out, "algo-1", "<img src=x onerror=alert(1)>");
        assert!(out.contains("&lt;img") && !out.contains("<img"), "{out}");
    }
}
