//! Server-Sent Events that keep the console's open pages current: the jobs table (its rows
//! again when they change), and a job's page (new log lines of each host as they are
//! written, read from where the page left off rather than the whole file; the metric chart
//! when points arrive; the status and timeline when the record changes). Each event carries
//! its position as the event ID, so a browser that reconnects goes on where it was. Every
//! stream ends with the server's shutdown.

use super::job::{chart, log_line, parse_positions, positions_text, status_block};
use super::jobs::{View, rows};
use super::{Console, Fields, reply};
use crate::logs::index::Reader;
use crate::serve::{Api, Body};
use crate::state::StateDir;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::BodyExt;
use hyper::Response;
use hyper::body::Frame;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a job's page looks for new lines, points and status.
const JOB_TICK: Duration = Duration::from_millis(400);
/// How often the jobs table is listed again.
const LIST_TICK: Duration = Duration::from_secs(1);
/// A comment this often on a quiet stream, so a closed tab is noticed (the write fails).
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Log lines in one event at most.
const BATCH: u64 = 1000;

/// One SSE event.
fn event(kind: &str, id: Option<&str>, data: &serde_json::Value) -> String {
    let mut out = String::new();
    out.push_str("event: ");
    out.push_str(kind);
    out.push('\n');
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(id);
        out.push('\n');
    }
    // One line: JSON escapes every newline.
    out.push_str("data: ");
    out.push_str(&data.to_string());
    out.push_str("\n\n");
    out
}

fn sse<S>(stream: S) -> Response<Body>
where
    S: futures::Stream<Item = String> + Send + 'static,
{
    let frames = stream.map(|text| Ok::<_, std::io::Error>(Frame::data(Bytes::from(text))));
    let mut response = reply::stream("text/event-stream", http_body_util::StreamBody::new(frames).boxed_unsync());
    response.headers_mut().insert("x-accel-buffering", hyper::header::HeaderValue::from_static("no"));
    response
}

/// Waits `tick`, or returns false when the server shuts down.
async fn wait(tick: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(tick) => true,
        () = shutdown.cancelled() => false,
    }
}

/// The jobs table's rows, whenever they change.
pub(super) fn jobs(api: &Api, console: &Console, query: &Fields) -> Response<Body> {
    struct Feed {
        store: StateDir,
        view: View,
        /// The rows last sent; None before the first.
        last: Option<String>,
        quiet: Duration,
        shutdown: CancellationToken,
    }
    let feed = Feed {
        store: api.queue.store().clone(),
        view: View::from_query(query),
        last: None,
        quiet: Duration::ZERO,
        shutdown: console.shutdown.clone(),
    };
    sse(futures::stream::unfold(feed, |mut feed| async move {
        loop {
            if feed.last.is_some() && !wait(LIST_TICK, &feed.shutdown).await {
                return None;
            }
            let store = feed.store.clone();
            let view = feed.view.clone();
            let listed = tokio::task::spawn_blocking(move || rows(&store, &view)).await.ok()?;
            let text = match listed {
                Ok(rows) if feed.last.as_ref() != Some(&rows.html) => {
                    let text = event("rows", None, &json!({"html": rows.html}));
                    feed.last = Some(rows.html);
                    text
                }
                _ => {
                    feed.quiet += LIST_TICK;
                    if feed.quiet < KEEP_ALIVE {
                        continue;
                    }
                    ": still here\n\n".to_string()
                }
            };
            feed.quiet = Duration::ZERO;
            return Some((text, feed));
        }
    }))
}

/// Where a job's page is: lines per host, bytes of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq)]
struct Place {
    lines: BTreeMap<String, u64>,
    metrics: u64,
}

impl Place {
    fn id(&self) -> String {
        format!("{};{}", positions_text(&self.lines), self.metrics)
    }

    fn from_id(id: &str) -> Option<Place> {
        let (lines, metrics) = id.rsplit_once(';')?;
        Some(Place { lines: parse_positions(lines), metrics: metrics.parse().ok()? })
    }
}

/// A job's new log lines, chart and status while it runs; `end` once it has ended and all
/// its lines are sent.
pub(super) fn job(
    api: &Api,
    console: &Console,
    name: &str,
    query: &Fields,
    last_event_id: Option<String>,
) -> Response<Body> {
    struct Feed {
        store: StateDir,
        name: String,
        place: Place,
        /// The record's LastModifiedTime when its status was last sent; None before the first.
        modified: Option<f64>,
        quiet: Duration,
        ended: bool,
        shutdown: CancellationToken,
    }
    let from_query = Place {
        lines: query.get("from").map(|f| parse_positions(f)).unwrap_or_default(),
        metrics: query.get("metrics").and_then(|m| m.parse().ok()).unwrap_or(0),
    };
    let place = last_event_id.as_deref().and_then(Place::from_id).unwrap_or(from_query);
    let feed = Feed {
        store: api.queue.store().clone(),
        name: name.to_string(),
        place,
        modified: None,
        quiet: Duration::ZERO,
        ended: false,
        shutdown: console.shutdown.clone(),
    };
    sse(futures::stream::unfold(feed, |mut feed| async move {
        if feed.ended {
            return None;
        }
        let mut first = feed.modified.is_none();
        loop {
            if !first && !wait(JOB_TICK, &feed.shutdown).await {
                return None;
            }
            first = false;
            let store = feed.store.clone();
            let (name, place, modified) = (feed.name.clone(), feed.place.clone(), feed.modified);
            let tick = tokio::task::spawn_blocking(move || look(&store, &name, place, modified)).await.ok()?;
            let Some(tick) = tick else {
                feed.ended = true;
                return Some((event("end", None, &json!({})), feed));
            };
            let mut out = String::new();
            let id = tick.place.id();
            if let Some(html) = &tick.status {
                out.push_str(&event("status", Some(&id), &json!({"html": html, "terminal": tick.ended})));
            }
            for batch in &tick.lines {
                out.push_str(&event("log", Some(&id), &json!({"html": batch})));
            }
            if let Some(html) = &tick.chart {
                out.push_str(&event("chart", Some(&id), &json!({"html": html})));
            }
            feed.place = tick.place;
            feed.modified = Some(tick.modified);
            if tick.ended && tick.lines.is_empty() {
                out.push_str(&event("end", None, &json!({})));
                feed.ended = true;
            }
            if out.is_empty() {
                feed.quiet += JOB_TICK;
                if feed.quiet < KEEP_ALIVE {
                    continue;
                }
                out.push_str(": still here\n\n");
            }
            feed.quiet = Duration::ZERO;
            return Some((out, feed));
        }
    }))
}

/// What changed on a job's page since `place` and `modified`.
struct Tick {
    place: Place,
    modified: f64,
    /// The status block, when the record changed.
    status: Option<String>,
    /// Batches of new lines, as HTML.
    lines: Vec<String>,
    chart: Option<String>,
    ended: bool,
}

/// None when the job is gone.
fn look(store: &StateDir, name: &str, mut place: Place, modified: Option<f64>) -> Option<Tick> {
    let record = store.load(name).ok()?;
    // Read first: every line written before the job ended is read below.
    let ended = record.training_job_status.is_terminal();
    let status = (Some(record.last_modified_time) != modified).then(|| status_block(&record));
    let mut lines = Vec::new();
    for host in crate::logs::hosts(&store.logs_dir(name)) {
        let Ok(reader) = Reader::open(&store.log_path(name, &host)) else { continue };
        let from = place.lines.entry(host.clone()).or_insert(0);
        while *from < reader.len() {
            let to = reader.len().min(*from + BATCH);
            let Ok(events) = reader.events(*from, to) else { break };
            let mut html = String::new();
            for e in &events {
                log_line(&mut html, &host, &e.message);
            }
            lines.push(html);
            *from = to;
        }
    }
    let metrics_path = store.metrics_path(name);
    let size = std::fs::metadata(&metrics_path).map(|m| m.len()).unwrap_or(0);
    let chart = (size != place.metrics).then(|| chart(name, &crate::metrics::read(&metrics_path)));
    place.metrics = size;
    Some(Tick { place, modified: record.last_modified_time, status, lines, chart, ended })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_one_data_line_whatever_it_holds() {
        let text = event("log", Some("algo-1:3;0"), &json!({"html": "a\nb"}));
        assert_eq!(text, "event: log\nid: algo-1:3;0\ndata: {\"html\":\"a\\nb\"}\n\n");
    }

    #[test]
    fn a_place_survives_a_reconnect() {
        let place = Place { lines: BTreeMap::from([("algo-1".into(), 7), ("algo-2".into(), 0)]), metrics: 120 };
        assert_eq!(Place::from_id(&place.id()), Some(place));
        assert_eq!(Place::from_id("nonsense"), None);
    }
}
