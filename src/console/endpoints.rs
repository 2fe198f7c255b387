//! Endpoints: the list with their status, and an endpoint's page: its description and
//! config, the containers' logs, and a form that invokes it (content type and body in,
//! the answer and how long it took out).

use super::html::{self, escape, url_part};
use super::{Console, Fields, reply};
use crate::serve::{Api, Body};
use hyper::{Response, StatusCode};
use serde_json::{Value, json};
use std::fmt::Write;
use std::time::Instant;

/// Log lines an endpoint's page shows (the newest).
const SHOWN_LINES: usize = 2000;

async fn call(api: &Api, operation: &str, body: Value) -> Result<Value, String> {
    match api.hosting.call(operation, body).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("{operation} is not a hosting operation")),
    }
}

pub(super) async fn list(api: &Api, console: &Console) -> Response<Body> {
    let listed =
        call(api, "ListEndpoints", json!({"SortBy": "CreationTime", "SortOrder": "Descending", "MaxResults": 100}))
            .await;
    let endpoints = match listed {
        Ok(value) => value.get("Endpoints").and_then(Value::as_array).cloned().unwrap_or_default(),
        Err(e) => return reply::error(StatusCode::INTERNAL_SERVER_ERROR, "Cannot list endpoints", &e, &console.token),
    };
    let mut main = String::from(
        r#"<h1>Endpoints</h1><div class="scroll"><table><caption class="visually-hidden">Endpoints, newest first</caption><thead><tr><th scope="col">Name</th><th scope="col">Status</th><th scope="col">Created (UTC)</th><th scope="col">Last modified</th></tr></thead><tbody>"#,
    );
    for e in &endpoints {
        let name = e.get("EndpointName").and_then(Value::as_str).unwrap_or_default();
        let status = e.get("EndpointStatus").and_then(Value::as_str).unwrap_or_default();
        let time = |field: &str| e.get(field).and_then(Value::as_f64).map(html::time_element).unwrap_or_default();
        let _ = write!(
            main,
            r#"<tr><td><a href="/endpoints/{link}">{n}</a></td><td><span class="status {class}">{s}</span></td><td>{created}</td><td>{modified}</td></tr>"#,
            link = url_part(name),
            n = escape(name),
            class = html::status_class(status),
            s = escape(status),
            created = time("CreationTime"),
            modified = time("LastModifiedTime"),
        );
    }
    if endpoints.is_empty() {
        main.push_str(r#"<tr><td colspan="4" class="empty">No endpoints. Create one with CreateEndpoint, or <code>smlocal deploy</code>.</td></tr>"#);
    }
    main.push_str("</tbody></table></div>");
    reply::html(StatusCode::OK, html::page("Endpoints", html::Section::Endpoints, &console.token, &main))
}

/// What an invocation answered, for the page.
struct Answer {
    content_type: String,
    body: String,
    outcome: Result<String, String>,
    millis: f64,
}

pub(super) async fn page(api: &Api, console: &Console, name: &str) -> Response<Body> {
    render(api, console, name, None).await
}

async fn render(api: &Api, console: &Console, name: &str, answer: Option<Answer>) -> Response<Body> {
    let described = match call(api, "DescribeEndpoint", json!({"EndpointName": name})).await {
        Ok(value) => value,
        Err(e) => return reply::error(StatusCode::NOT_FOUND, "No such endpoint", &e, &console.token),
    };
    let status = described.get("EndpointStatus").and_then(Value::as_str).unwrap_or_default();
    let config_name = described.get("EndpointConfigName").and_then(Value::as_str).unwrap_or_default();
    let mut main = format!(
        r#"<h1>{n}</h1><p class="headline"><span class="status {class}" id="status">{s}</span></p>"#,
        n = escape(name),
        class = html::status_class(status),
        s = escape(status)
    );
    if let Some(reason) = described.get("FailureReason").and_then(Value::as_str) {
        let _ = write!(
            main,
            r#"<div class="failure" role="alert"><h2>FailureReason</h2><pre>{}</pre></div>"#,
            escape(reason)
        );
    }
    let config = call(api, "DescribeEndpointConfig", json!({"EndpointConfigName": config_name})).await;
    let _ = write!(
        main,
        r#"<section aria-labelledby="config-h"><h2 id="config-h">Config <code>{}</code></h2>"#,
        escape(config_name)
    );
    match &config {
        Ok(config) => {
            main.push_str(r#"<div class="scroll"><table><thead><tr><th scope="col">Variant</th><th scope="col">Model</th><th scope="col">Instance type</th><th scope="col">Instances</th><th scope="col">Weight</th></tr></thead><tbody>"#);
            let running = described.get("ProductionVariants").and_then(Value::as_array).cloned().unwrap_or_default();
            for v in config.get("ProductionVariants").and_then(Value::as_array).into_iter().flatten() {
                let field = |k: &str| {
                    v.get(k).map(|x| x.as_str().map(escape).unwrap_or_else(|| x.to_string())).unwrap_or_default()
                };
                let variant = v.get("VariantName").and_then(Value::as_str).unwrap_or_default();
                let current = running
                    .iter()
                    .find(|r| r.get("VariantName").and_then(Value::as_str) == Some(variant))
                    .and_then(|r| r.get("CurrentInstanceCount"))
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "0".into());
                let _ = write!(
                    main,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{current} of {}</td><td>{}</td></tr>",
                    field("VariantName"),
                    field("ModelName"),
                    field("InstanceType"),
                    field("InitialInstanceCount"),
                    field("InitialVariantWeight"),
                );
            }
            main.push_str("</tbody></table></div>");
            let text = serde_json::to_string_pretty(config).unwrap_or_default();
            let _ = write!(
                main,
                r#"<details><summary>DescribeEndpointConfig</summary><pre class="json">{}</pre></details>"#,
                escape(&text)
            );
        }
        Err(e) => {
            let _ = write!(main, r#"<p class="failure">{}</p>"#, escape(e));
        }
    }
    main.push_str("</section>");

    let link = url_part(name);
    let (content_type, body) =
        answer.as_ref().map_or(("text/csv".to_string(), String::new()), |a| (a.content_type.clone(), a.body.clone()));
    let _ = write!(
        main,
        r#"<section aria-labelledby="invoke-h"><h2 id="invoke-h">Invoke</h2><form method="post" action="/endpoints/{link}/invoke#invoke-h" class="editor"><input type="hidden" name="token" value="{token}"><label for="content-type">Content type</label><input id="content-type" name="content_type" value="{ct}"><label for="accept">Accept</label><input id="accept" name="accept" placeholder="(the container's default)"><label for="body">Body</label><textarea id="body" name="body" rows="6" spellcheck="false">{body}</textarea><p><button type="submit" id="invoke">Invoke</button></p></form>"#,
        token = escape(&console.token),
        ct = escape(&content_type),
        body = escape(&body),
    );
    if let Some(answer) = &answer {
        let (role, said, text) = match &answer.outcome {
            Ok(text) => (r#"aria-live="polite""#, "Answered in", text),
            Err(e) => (r#"class="failure" role="alert""#, "Failed after", e),
        };
        let _ = write!(
            main,
            r#"<div id="answer" {role}><p>{said} <strong id="latency">{:.1} ms</strong></p><pre id="response">{}</pre></div>"#,
            answer.millis,
            escape(text)
        );
    }
    main.push_str("</section>");

    main.push_str(r#"<section aria-labelledby="logs-h"><h2 id="logs-h">Logs</h2><div id="log" class="log" role="log" tabindex="0" aria-label="Log lines">"#);
    match api.hosting.endpoint_logs(name).await {
        Ok(lines) => {
            let skip = lines.len().saturating_sub(SHOWN_LINES);
            for (stream, line) in &lines[skip..] {
                super::job::log_line(&mut main, stream, line);
            }
            if lines.is_empty() {
                main.push_str(r#"<p class="note">No log lines yet.</p>"#);
            }
        }
        Err(e) => {
            let _ = write!(main, r#"<p class="failure">{}</p>"#, escape(&e.to_string()));
        }
    }
    main.push_str("</div></section>");
    let text = serde_json::to_string_pretty(&described).unwrap_or_default();
    let _ = write!(
        main,
        r#"<details><summary>DescribeEndpoint</summary><pre class="json">{}</pre></details>"#,
        escape(&text)
    );
    reply::html(StatusCode::OK, html::page(name, html::Section::Endpoints, &console.token, &main))
}

/// InvokeEndpoint from the form; the page again with the answer and its latency.
pub(super) async fn invoke(api: &Api, console: &Console, name: &str, form: &Fields) -> Response<Body> {
    let content_type = form.get("content_type").map(|t| t.trim().to_string()).unwrap_or_default();
    let accept = form.get("accept").map(|a| a.trim()).filter(|a| !a.is_empty());
    let body = form.get("body").cloned().unwrap_or_default();
    let content = Some(content_type.as_str()).filter(|t| !t.is_empty());
    let started = Instant::now();
    let answered = api.hosting.invoke(name, content, accept, bytes::Bytes::from(body.clone())).await;
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    let outcome = match answered {
        Ok((kind, variant, bytes)) => {
            let text = match std::str::from_utf8(&bytes) {
                Ok(text) => text.to_string(),
                Err(_) => format!("({} bytes that are not text)", bytes.len()),
            };
            Ok(format!("Content-Type: {}\nVariant: {variant}\n\n{text}", kind.unwrap_or_else(|| "(none)".into())))
        }
        Err(e) => Err(e.to_string()),
    };
    render(api, console, name, Some(Answer { content_type, body, outcome, millis })).await
}
