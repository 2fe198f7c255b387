//! The training jobs table: newest first, ListTrainingJobs's status filter, name search and
//! pages, kept current by `events::jobs` while it is open.

use super::html::{self, escape, url_part};
use super::{Console, Fields, reply};
use crate::serve::{Api, Body};
use crate::state::StateDir;
use crate::state::listing::ListQuery;
use crate::state::record::{Record, Status};
use hyper::{Response, StatusCode};
use std::fmt::Write;

/// Jobs on one page of the table.
const PAGE: usize = 50;

/// What the table shows: the filter, the search and the page, as the query string gives them.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct View {
    pub(super) status: Option<Status>,
    pub(super) name_contains: String,
    /// The ListTrainingJobs token of this page; None for the first.
    pub(super) page: Option<String>,
}

impl View {
    pub(super) fn from_query(query: &Fields) -> View {
        View {
            status: query.get("status").and_then(|s| s.parse().ok()),
            name_contains: query.get("q").map(|q| q.trim().to_string()).unwrap_or_default(),
            page: query.get("page").filter(|p| !p.is_empty()).cloned(),
        }
    }

    /// The query string of this view (`page` replaced).
    fn query(&self, page: Option<&str>) -> String {
        let mut parts = Vec::new();
        if let Some(status) = self.status {
            parts.push(format!("status={status}"));
        }
        if !self.name_contains.is_empty() {
            parts.push(format!("q={}", url_part(&self.name_contains)));
        }
        if let Some(page) = page {
            parts.push(format!("page={}", url_part(page)));
        }
        parts.join("&")
    }

    fn list_query(&self) -> ListQuery {
        ListQuery {
            status_equals: self.status.map(|s| s.to_string()),
            name_contains: Some(self.name_contains.clone()).filter(|q| !q.is_empty()),
            sort_by: Some("CreationTime".into()),
            sort_order: Some("Descending".into()),
            max_results: Some(PAGE),
            next_token: self.page.clone(),
            ..ListQuery::default()
        }
    }
}

/// One page of the table: its rows' HTML and the next page's token.
pub(super) struct Rows {
    pub(super) html: String,
    pub(super) next: Option<String>,
}

/// The rows of `view`, each job's record read for its resources (only this page's).
pub(super) fn rows(store: &StateDir, view: &View) -> Result<Rows, String> {
    let page = store.list_page(&view.list_query(), PAGE).map_err(|e| e.to_string())?;
    let now = crate::state::record::now();
    let mut out = String::new();
    for summary in &page.summaries {
        let Some(name) = summary.get("TrainingJobName").and_then(|n| n.as_str()) else { continue };
        // A record removed between the listing and here is left out.
        let Ok(record) = store.load(name) else { continue };
        row(&mut out, &record, now);
    }
    if page.summaries.is_empty() {
        out.push_str(r#"<tr><td colspan="5" class="empty">No training jobs match.</td></tr>"#);
    }
    Ok(Rows { html: out, next: page.next_token })
}

fn row(out: &mut String, record: &Record, now: f64) {
    let status = record.training_job_status.as_str();
    let started = record.training_start_time.unwrap_or(record.creation_time);
    let ended = record.training_end_time.unwrap_or(now);
    let _ = write!(
        out,
        r#"<tr data-job="{name}" data-status="{status}"><td><a href="/jobs/{link}">{name}</a></td><td><span class="status {class}">{status}</span> <span class="secondary">{secondary}</span></td><td>{resources}</td><td>{created}</td><td>{duration}</td></tr>"#,
        name = escape(&record.training_job_name),
        link = url_part(&record.training_job_name),
        class = html::status_class(status),
        secondary = record.secondary_status,
        resources = escape(&resources(record)),
        created = html::time_element(record.creation_time),
        duration = html::duration(ended - started),
    );
}

/// `ml.m5.large × 2`, or each instance group's.
pub(super) fn resources(record: &Record) -> String {
    let Some(config) = record.request.get("ResourceConfig") else { return String::new() };
    let one = |c: &serde_json::Value| {
        let kind = c.get("InstanceType").and_then(|t| t.as_str()).unwrap_or("?");
        let count = c.get("InstanceCount").and_then(|n| n.as_u64()).unwrap_or(1);
        format!("{kind} × {count}")
    };
    match config.get("InstanceGroups").and_then(|g| g.as_array()).filter(|g| !g.is_empty()) {
        Some(groups) => groups.iter().map(one).collect::<Vec<_>>().join(", "),
        None => one(config),
    }
}

pub(super) fn page(api: &Api, console: &Console, query: &Fields) -> Response<Body> {
    let view = View::from_query(query);
    let rows = match rows(api.queue.store(), &view) {
        Ok(rows) => rows,
        Err(e) => return reply::error(StatusCode::BAD_REQUEST, "Cannot list the training jobs", &e, &console.token),
    };
    let mut main = String::new();
    main.push_str(r#"<h1>Training jobs</h1>"#);
    let _ = write!(
        main,
        r#"<form class="filter" method="get" action="/" role="search"><label for="status">Status</label> <select id="status" name="status"><option value="">Any</option>"#
    );
    for status in Status::ALL {
        let selected = if view.status == Some(status) { " selected" } else { "" };
        let _ = write!(main, r#"<option{selected}>{status}</option>"#);
    }
    let _ = write!(
        main,
        r#"</select> <label for="q">Name contains</label> <input id="q" name="q" type="search" value="{}"> <button type="submit">Filter</button></form>"#,
        escape(&view.name_contains)
    );
    let _ = write!(
        main,
        r#"<div class="scroll"><table class="jobs" data-live="/events/jobs?{live}"><caption class="visually-hidden">Training jobs, newest first</caption><thead><tr><th scope="col">Name</th><th scope="col">Status</th><th scope="col">Instances</th><th scope="col">Created (UTC)</th><th scope="col">Duration</th></tr></thead><tbody id="rows">{rows}</tbody></table></div>"#,
        live = escape(&view.query(view.page.as_deref())),
        rows = rows.html,
    );
    main.push_str(r#"<nav class="pages" aria-label="Pages">"#);
    if view.page.is_some() {
        let _ = write!(main, r#"<a href="/?{}">First page</a> "#, escape(&view.query(None)));
    }
    if let Some(next) = &rows.next {
        let _ = write!(main, r#"<a id="next" href="/?{}">Next page</a>"#, escape(&view.query(Some(next))));
    }
    main.push_str("</nav>");
    reply::html(StatusCode::OK, html::page("Training jobs", html::Section::Jobs, &console.token, &main))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_reads_its_query_and_writes_it_back() {
        let query = Fields::from([
            ("status".into(), "InProgress".into()),
            ("q".into(), " a b ".into()),
            ("page".into(), "".into()),
        ]);
        let view = View::from_query(&query);
        assert_eq!(view.status, Some(Status::InProgress));
        assert_eq!(view.name_contains, "a b");
        assert_eq!(view.page, None);
        assert_eq!(view.query(Some("t/1")), "status=InProgress&q=a+b&page=t%2F1");
        // An unknown status is no filter, not an error page.
        assert_eq!(View::from_query(&Fields::from([("status".into(), "Bogus".into())])).status, None);
    }

    #[test]
    fn resources_read_as_type_times_count() {
        let request = serde_json::json!({"ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 2}});
        let mut record = Record::new("j", "arn", "s3://b/m", request.as_object().unwrap());
        assert_eq!(resources(&record), "ml.m5.large × 2");
        record.request.insert(
            "ResourceConfig".into(),
            serde_json::json!({"InstanceGroups": [
                {"InstanceType": "ml.c5.xlarge", "InstanceCount": 1, "InstanceGroupName": "a"},
                {"InstanceType": "ml.m5.large", "InstanceCount": 3, "InstanceGroupName": "b"}]}),
        );
        assert_eq!(resources(&record), "ml.c5.xlarge × 1, ml.m5.large × 3");
    }
}
