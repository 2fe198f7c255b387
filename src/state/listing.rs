//! ListTrainingJobs over the job store: the same filters, sort orders and pages as the AWS
//! API, for `smlocal list` and the API endpoint. A page token names the last job returned,
//! so pages stay correct while jobs are created or change status between calls.

use crate::state::record::Record;
use serde::Deserialize;
use std::cmp::Ordering;

/// The `ListTrainingJobs` request fields smlocal honours (times are epoch seconds).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListQuery {
    pub creation_time_after: Option<f64>,
    pub creation_time_before: Option<f64>,
    pub last_modified_time_after: Option<f64>,
    pub last_modified_time_before: Option<f64>,
    pub name_contains: Option<String>,
    pub status_equals: Option<String>,
    pub sort_by: Option<String>,
    pub sort_order: Option<String>,
    pub max_results: Option<usize>,
    pub next_token: Option<String>,
    /// No job here has a warm pool or a training plan, so these match nothing, as on AWS
    /// for jobs without them.
    pub warm_pool_status_equals: Option<String>,
    pub training_plan_arn_equals: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ListError {
    #[error("Invalid pagination token: {0}")]
    Token(String),
}

/// One page of jobs and the token for the next, if there are more.
#[derive(Debug)]
pub struct Page {
    pub records: Vec<Record>,
    pub next_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, PartialOrd)]
enum Key {
    Number(f64),
    Text(String),
}

fn key(record: &Record, sort_by: &str) -> Key {
    match sort_by {
        "Name" => Key::Text(record.training_job_name.clone()),
        "Status" => Key::Text(record.training_job_status.to_string()),
        _ => Key::Number(record.creation_time),
    }
}

/// The order of two (key, name) positions; the name breaks ties so the order is total.
fn compare(a: &(Key, String), b: &(Key, String)) -> Ordering {
    a.0.partial_cmp(&b.0).unwrap_or(Ordering::Equal).then_with(|| a.1.cmp(&b.1))
}

fn token(sort_by: &str, position: &(Key, String)) -> String {
    let key = match &position.0 {
        Key::Number(n) => format!("n{n}"),
        Key::Text(t) => format!("t{t}"),
    };
    format!("{sort_by}:{key}:{}", position.1)
}

fn parse_token(text: &str, sort_by: &str) -> Result<(Key, String), ListError> {
    let invalid = || ListError::Token(text.to_string());
    let mut parts = text.splitn(3, ':');
    let (Some(by), Some(key), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(invalid());
    };
    if by != sort_by {
        return Err(ListError::Token(format!("{text} (it was made for SortBy {by}, not {sort_by})")));
    }
    let key = match key.split_at_checked(1) {
        Some(("n", n)) => Key::Number(n.parse().map_err(|_| invalid())?),
        Some(("t", t)) => Key::Text(t.to_string()),
        _ => return Err(invalid()),
    };
    Ok((key, name.to_string()))
}

/// Filters, sorts and cuts `records` into the page `query` asks for; `default_max` is the
/// page size when the query names none (AWS: 10).
pub fn page(records: Vec<Record>, query: &ListQuery, default_max: usize) -> Result<Page, ListError> {
    let sort_by = query.sort_by.as_deref().unwrap_or("CreationTime");
    let descending = query.sort_order.as_deref() != Some("Ascending");
    let after = query.next_token.as_deref().map(|t| parse_token(t, sort_by)).transpose()?;
    let needle = query.name_contains.as_deref().map(str::to_lowercase);
    let unmatched = query.warm_pool_status_equals.is_some() || query.training_plan_arn_equals.is_some();
    let mut matching: Vec<((Key, String), Record)> = records
        .into_iter()
        .filter(|_| !unmatched)
        .filter(|r| query.status_equals.as_deref().is_none_or(|s| r.training_job_status.as_str() == s))
        .filter(|r| needle.as_deref().is_none_or(|n| r.training_job_name.to_lowercase().contains(n)))
        .filter(|r| query.creation_time_after.is_none_or(|t| r.creation_time > t))
        .filter(|r| query.creation_time_before.is_none_or(|t| r.creation_time < t))
        .filter(|r| query.last_modified_time_after.is_none_or(|t| r.last_modified_time > t))
        .filter(|r| query.last_modified_time_before.is_none_or(|t| r.last_modified_time < t))
        .map(|r| ((key(&r, sort_by), r.training_job_name.clone()), r))
        .collect();
    let order = |a: &(Key, String), b: &(Key, String)| if descending { compare(b, a) } else { compare(a, b) };
    matching.sort_by(|a, b| order(&a.0, &b.0));
    if let Some(after) = &after {
        matching.retain(|(position, _)| order(position, after) == Ordering::Greater);
    }
    let max = query.max_results.unwrap_or(default_max).max(1);
    let more = matching.len() > max;
    matching.truncate(max);
    let next_token = if more { matching.last().map(|(position, _)| token(sort_by, position)) } else { None };
    Ok(Page { records: matching.into_iter().map(|(_, r)| r).collect(), next_token })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records() -> Vec<Record> {
        (0..5)
            .map(|i| {
                let mut r = Record::new(&format!("job-{i}"), "arn", "s3://b/m", &serde_json::Map::new());
                r.creation_time = 100.0 + f64::from(i % 3);
                r.last_modified_time = 200.0 + f64::from(i);
                if i % 2 == 0 {
                    r.complete();
                }
                r
            })
            .collect()
    }

    fn names(page: &Page) -> Vec<&str> {
        page.records.iter().map(|r| r.training_job_name.as_str()).collect()
    }

    #[test]
    fn pages_walk_every_job_once_newest_first() {
        let mut query = ListQuery { max_results: Some(2), ..ListQuery::default() };
        let mut seen = Vec::new();
        loop {
            let page = page(records(), &query, 10).unwrap();
            seen.extend(names(&page).into_iter().map(String::from));
            match page.next_token {
                Some(t) => query.next_token = Some(t),
                None => break,
            }
        }
        // Equal creation times fall back to the name, descending too.
        assert_eq!(seen, ["job-2", "job-4", "job-1", "job-3", "job-0"]);
    }

    #[test]
    fn a_job_created_between_pages_does_not_shift_the_next_page() {
        let first = page(records(), &ListQuery { max_results: Some(2), ..ListQuery::default() }, 10).unwrap();
        let mut more = records();
        let mut newest = Record::new("job-new", "arn", "s3://b/m", &serde_json::Map::new());
        newest.creation_time = 500.0;
        more.push(newest);
        let query = ListQuery { max_results: Some(2), next_token: first.next_token, ..ListQuery::default() };
        assert_eq!(names(&page(more, &query, 10).unwrap()), ["job-1", "job-3"]);
    }

    #[test]
    fn filters_and_sorting_follow_the_request() {
        let query = ListQuery {
            status_equals: Some("Completed".into()),
            sort_by: Some("Name".into()),
            sort_order: Some("Ascending".into()),
            ..ListQuery::default()
        };
        assert_eq!(names(&page(records(), &query, 10).unwrap()), ["job-0", "job-2", "job-4"]);
        let query = ListQuery {
            name_contains: Some("JOB-3".into()),
            last_modified_time_after: Some(202.5),
            ..ListQuery::default()
        };
        assert_eq!(names(&page(records(), &query, 10).unwrap()), ["job-3"]);
        let query = ListQuery { next_token: Some("garbage".into()), ..ListQuery::default() };
        assert!(matches!(page(records(), &query, 10), Err(ListError::Token(_))));
    }
}
