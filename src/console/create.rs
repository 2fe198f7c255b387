//! Clone: a job's request as editable JSON under a new name, checked on submit exactly as
//! CreateTrainingJob checks it (the API's own messages), the field a message names marked
//! in the text; a request that passes runs like any other.

use super::html::{self, escape, url_part};
use super::{Console, Fields, reply};
use crate::serve::{Api, Body};
use hyper::{Response, StatusCode};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write;

pub(super) fn page(api: &Api, console: &Console, name: &str) -> Response<Body> {
    let record = match super::training_job(api, console, name) {
        Ok(record) => record,
        Err(page) => return *page,
    };
    let mut request = super::job::request_of(&record);
    let fresh = crate::spec::unique_name(base_name(name), time::OffsetDateTime::now_utc());
    request["TrainingJobName"] = Value::String(fresh);
    let (text, _) = pretty(&request);
    editor(console, name, &text, None)
}

/// A name without the timestamp an earlier clone (or the SDK) gave it, so clones of clones
/// do not pile up stamps.
fn base_name(name: &str) -> &str {
    let stamped = regex::Regex::new(r"-\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}-\d{3}$").ok();
    match stamped.and_then(|re| re.find(name)) {
        Some(m) if m.start() > 0 => &name[..m.start()],
        _ => name,
    }
}

/// What went wrong with a submitted request: the message as the API gives it, and the
/// lines of the text it is about.
struct Problem {
    message: String,
    field: Option<String>,
    lines: Option<(usize, usize)>,
}

fn editor(console: &Console, source: &str, text: &str, problem: Option<&Problem>) -> Response<Body> {
    let mut main = String::new();
    let _ = write!(
        main,
        r#"<h1>Create a training job</h1><p>From <a href="/jobs/{link}">{name}</a>. Edit the CreateTrainingJob request, then create it; it is checked as the API checks it.</p>"#,
        link = url_part(source),
        name = escape(source)
    );
    let mut select = String::new();
    if let Some(problem) = problem {
        let _ = write!(
            main,
            r#"<div class="failure" role="alert" id="problem"><h2>The request was refused</h2><pre id="message">{}</pre>"#,
            escape(&problem.message)
        );
        if let Some(field) = &problem.field {
            let _ = write!(main, r#"<p>Field: <mark id="field">{}</mark></p>"#, escape(field));
        }
        if let Some((first, last)) = problem.lines {
            main.push_str(r#"<pre class="excerpt">"#);
            let all: Vec<&str> = text.lines().collect();
            for (i, line) in
                all.iter().enumerate().skip(first.saturating_sub(2)).take(last - first.saturating_sub(2) + 3)
            {
                let shown = format!("{:>4}  {}", i + 1, escape(line));
                if (first..=last).contains(&i) {
                    let _ = writeln!(main, "<mark>{shown}</mark>");
                } else {
                    let _ = writeln!(main, "{shown}");
                }
            }
            main.push_str("</pre>");
            let (start, end) = char_range(text, first, last);
            select = format!(
                r#" data-select-start="{start}" data-select-end="{end}" aria-invalid="true" aria-describedby="problem""#
            );
        }
        main.push_str("</div>");
    }
    let rows = text.lines().count().clamp(12, 40);
    let _ = write!(
        main,
        r#"<form method="post" action="/jobs" class="editor"><input type="hidden" name="token" value="{token}"><input type="hidden" name="source" value="{source}"><label for="request">CreateTrainingJob request (JSON)</label><textarea id="request" name="request" rows="{rows}" spellcheck="false" autocapitalize="off"{select}>{text}</textarea><p><button type="submit" id="create">Create training job</button> <a href="/jobs/{link}">Cancel</a></p></form>"#,
        token = escape(&console.token),
        source = escape(source),
        link = url_part(source),
        text = escape(text),
    );
    let status = if problem.is_some() { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    reply::html(status, html::page("Create a training job", html::Section::Jobs, &console.token, &main))
}

/// The request from the form, created as CreateTrainingJob creates it; the job's page, or
/// the editor again with what was wrong.
pub(super) async fn submit(api: &Api, console: &Console, form: &Fields) -> Response<Body> {
    let text = form.get("request").map(String::as_str).unwrap_or_default();
    let source = form.get("source").map(String::as_str).unwrap_or_default();
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(e) => {
            let line = e.line().saturating_sub(1);
            let problem = Problem {
                message: format!("SerializationException: the request is not valid JSON: {e}"),
                field: None,
                lines: Some((line, line)).filter(|_| e.line() > 0),
            };
            return editor(console, source, text, Some(&problem));
        }
    };
    let name = value.get("TrainingJobName").and_then(Value::as_str).unwrap_or_default().to_string();
    match crate::serve::create_training_job(api, value.clone()).await {
        Ok(_) => {
            tracing::info!("{name} created from the console");
            reply::see_other(&format!("/jobs/{}", url_part(&name)))
        }
        Err(e) => {
            let message = format!("{}: {}", e.kind, e.message);
            let (text, lines_of) = pretty(&value);
            let field = field_named(&message, &lines_of);
            let lines = field.as_ref().and_then(|f| lines_of.get(f)).copied();
            editor(console, source, &text, Some(&Problem { message, field, lines }))
        }
    }
}

/// The offsets (in characters, as a textarea counts) of lines `first..=last` of `text`.
fn char_range(text: &str, first: usize, last: usize) -> (usize, usize) {
    let mut start = 0;
    let mut offset = 0;
    for (i, line) in text.split('\n').enumerate() {
        let len = line.chars().count();
        if i == first {
            start = offset;
        }
        if i == last {
            return (start, offset + len);
        }
        offset += len + 1;
    }
    (start, offset)
}

/// `value` printed as `serde_json`'s pretty printer does, with the lines each field spans:
/// `ResourceConfig.InstanceCount`, `InputDataConfig[0].ChannelName`, as botocore names them.
fn pretty(value: &Value) -> (String, BTreeMap<String, (usize, usize)>) {
    let mut out = String::new();
    let mut lines = BTreeMap::new();
    write_value(&mut out, value, 0, "", &mut lines);
    (out, lines)
}

fn write_value(
    out: &mut String,
    value: &Value,
    depth: usize,
    path: &str,
    lines: &mut BTreeMap<String, (usize, usize)>,
) {
    let line_now = |out: &String| out.matches('\n').count();
    let indent = |d: usize| "  ".repeat(d);
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push_str("{\n");
            for (i, (k, v)) in map.iter().enumerate() {
                let at = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                let first = line_now(out);
                let _ = write!(out, "{}{}: ", indent(depth + 1), Value::String(k.clone()));
                write_value(out, v, depth + 1, &at, lines);
                lines.insert(at, (first, line_now(out)));
                out.push_str(if i + 1 < map.len() { ",\n" } else { "\n" });
            }
            let _ = write!(out, "{}}}", indent(depth));
        }
        Value::Array(list) if !list.is_empty() => {
            out.push_str("[\n");
            for (i, v) in list.iter().enumerate() {
                let at = format!("{path}[{i}]");
                let first = line_now(out);
                out.push_str(&indent(depth + 1));
                write_value(out, v, depth + 1, &at, lines);
                lines.insert(at, (first, line_now(out)));
                out.push_str(if i + 1 < list.len() { ",\n" } else { "\n" });
            }
            let _ = write!(out, "{}]", indent(depth));
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The field a refusal is about, as it appears in `lines` (the nearest enclosing one when
/// the field itself is missing): botocore's `parameter X`, the service's `at 'x.1.member.y'`,
/// or smlocal's own `X.Y[0].Z`.
fn field_named(message: &str, lines: &BTreeMap<String, (usize, usize)>) -> Option<String> {
    let patterns = [
        r#"parameter in ([\w.\[\]]+): "(\w+)""#,
        r"parameter ([\w.\[\]]+)",
        r"at '([\w.]+)'",
        r"\b([A-Z]\w*(?:\[\d+\])?(?:\.[A-Z]\w*(?:\[\d+\])?)*)",
    ];
    for (i, pattern) in patterns.iter().enumerate() {
        let Ok(re) = regex::Regex::new(pattern) else { continue };
        for caps in re.captures_iter(message) {
            let path = match i {
                0 => {
                    let parent = caps.get(1).map_or("", |m| m.as_str());
                    let field = caps.get(2).map_or("", |m| m.as_str());
                    if parent == "input" { field.to_string() } else { format!("{parent}.{field}") }
                }
                2 => from_service_path(caps.get(1).map_or("", |m| m.as_str())),
                _ => caps.get(1).map_or("", |m| m.as_str()).to_string(),
            };
            // The generic pattern names only fields that are there; the others may name a
            // missing one, shown at its parent.
            let mut candidate = path.as_str();
            loop {
                if lines.contains_key(candidate) {
                    return Some(candidate.to_string());
                }
                if i == 3 {
                    break;
                }
                match candidate.rfind(['.', '[']) {
                    Some(cut) => candidate = &candidate[..cut],
                    None => break,
                }
            }
        }
    }
    None
}

/// `inputDataConfig.1.member.channelName` → `InputDataConfig[0].ChannelName`.
fn from_service_path(path: &str) -> String {
    let mut out = String::new();
    for segment in path.split('.') {
        if segment == "member" {
            continue;
        }
        if let Ok(n) = segment.parse::<usize>() {
            let _ = write!(out, "[{}]", n.saturating_sub(1));
            continue;
        }
        if !out.is_empty() {
            out.push('.');
        }
        let mut chars = segment.chars();
        if let Some(first) = chars.next() {
            out.extend(first.to_uppercase());
            out.push_str(chars.as_str());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request() -> Value {
        json!({
            "TrainingJobName": "j",
            "InputDataConfig": [{"ChannelName": "train", "DataSource": {"S3DataSource": {"S3Uri": "s3://b/p"}}}],
            "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 0},
            "Empty": {}
        })
    }

    #[test]
    fn the_text_is_what_serde_prints_and_each_field_has_its_lines() {
        let value = request();
        let (text, lines) = pretty(&value);
        assert_eq!(text, serde_json::to_string_pretty(&value).unwrap());
        let line = |path: &str| text.lines().nth(lines[path].0).unwrap().trim().to_string();
        assert_eq!(line("ResourceConfig.InstanceCount"), r#""InstanceCount": 0"#);
        assert_eq!(line("InputDataConfig[0].ChannelName"), r#""ChannelName": "train","#);
        assert_eq!(lines["ResourceConfig"], (12, 15));
    }

    #[test]
    fn messages_name_fields_in_any_of_the_three_ways() {
        let (_, lines) = pretty(&request());
        let named = |m: &str| field_named(m, &lines);
        assert_eq!(
            named("ValidationException: Parameter validation failed:\nInvalid range for parameter ResourceConfig.InstanceCount, value: 0, valid min value: 1").as_deref(),
            Some("ResourceConfig.InstanceCount")
        );
        assert_eq!(
            named("ValidationException: 1 validation error detected: Value 'x' at 'inputDataConfig.1.member.channelName' failed to satisfy constraint").as_deref(),
            Some("InputDataConfig[0].ChannelName")
        );
        // A missing field is shown at its parent.
        assert_eq!(
            named(r#"Missing required parameter in ResourceConfig: "VolumeSizeInGB""#).as_deref(),
            Some("ResourceConfig")
        );
        assert_eq!(named("InputDataConfig[0] (channel 'train'): no objects").as_deref(), Some("InputDataConfig[0]"));
        assert_eq!(named("Nothing to see"), None);
    }

    #[test]
    fn clones_of_clones_keep_one_stamp() {
        assert_eq!(base_name("my-job-2026-12-03-14-09-46-123"), "my-job");
        assert_eq!(base_name("my-job"), "my-job");
        assert_eq!(from_service_path("resourceConfig.instanceCount"), "ResourceConfig.InstanceCount");
        assert_eq!(char_range("ab\ncd\nef", 1, 1), (3, 5));
    }
}
