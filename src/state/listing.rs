//! ListTrainingJobs's query, page tokens and rules: the same filters, sort orders and pages
//! as the AWS API, for `smlocal list` and the List operations, which the index answers
//! ([`crate::state::index`]). A page token names the last job returned, so pages stay correct while
//! jobs are created or change status between calls.

use serde::Deserialize;

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

/// One page of summaries (as the List operation returns them) and the token for the next,
/// if there are more.
#[derive(Debug)]
pub struct Page {
    pub summaries: Vec<serde_json::Value>,
    pub next_token: Option<String>,
}

/// A position's sort key.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
pub(crate) enum Key {
    Number(f64),
    Text(String),
}

pub(crate) fn token(sort_by: &str, position: &(Key, String)) -> String {
    let key = match &position.0 {
        Key::Number(n) => format!("n{n}"),
        Key::Text(t) => format!("t{t}"),
    };
    format!("{sort_by}:{key}:{}", position.1)
}

pub(crate) fn parse_token(text: &str, sort_by: &str) -> Result<(Key, String), ListError> {
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
