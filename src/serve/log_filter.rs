//! CloudWatch Logs' `FilterLogEvents` on the groups smlocal serves: a job's (or endpoint's,
//! or transform job's) lines across its streams, interleaved by time, matched by the plain
//! forms of CloudWatch's filter-pattern syntax — terms (all must appear), `"quoted
//! phrases"`, `?alternatives` (any), `-exclusions` — and paged with a token of each stream's
//! position. What the AWS CLI's `logs filter-log-events` (and CLI v2's `logs tail`) call.

use super::cloudwatch::{group_streams, number, string};
use super::{ApiError, ApiResult};
use crate::hosting::Hosting;
use crate::logs::index::Reader;
use crate::state::StateDir;
use serde_json::{Value, json};

/// FilterLogEvents' largest (and default) page.
const MAX_EVENTS: usize = 10_000;

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new("InvalidParameterException", message)
}

/// A parsed filter pattern.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Pattern {
    all: Vec<String>,
    any: Vec<String>,
    none: Vec<String>,
}

impl Pattern {
    pub(super) fn parse(text: &str) -> Result<Pattern, ApiError> {
        let text = text.trim();
        if text.starts_with('{') || text.starts_with('[') || text.starts_with('%') {
            return Err(invalid(format!(
                "Invalid filter pattern: '{text}': smlocal matches terms, \"quoted phrases\", ?alternatives and -exclusions; JSON, space-delimited and regular-expression patterns are not supported"
            )));
        }
        let mut pattern = Pattern::default();
        let mut rest = text;
        while !rest.is_empty() {
            let (sign, after) = match rest.as_bytes()[0] {
                b'?' => (Some('?'), &rest[1..]),
                b'-' => (Some('-'), &rest[1..]),
                _ => (None, rest),
            };
            let (term, next) = if let Some(quoted) = after.strip_prefix('"') {
                let end = quoted
                    .find('"')
                    .ok_or_else(|| invalid(format!("Invalid filter pattern: '{text}': an unclosed quote")))?;
                (quoted[..end].to_string(), &quoted[end + 1..])
            } else {
                let end = after.find(char::is_whitespace).unwrap_or(after.len());
                (after[..end].to_string(), &after[end..])
            };
            if !term.is_empty() {
                match sign {
                    Some('?') => pattern.any.push(term),
                    Some(_) => pattern.none.push(term),
                    None => pattern.all.push(term),
                }
            }
            rest = next.trim_start();
        }
        Ok(pattern)
    }

    /// Matching is case-sensitive, as CloudWatch's is.
    pub(super) fn matches(&self, message: &str) -> bool {
        self.all.iter().all(|t| message.contains(t.as_str()))
            && !self.none.iter().any(|t| message.contains(t.as_str()))
            && (self.any.is_empty() || self.any.iter().any(|t| message.contains(t.as_str())))
    }
}

/// `nextToken`: each stream's next line, `name=position` joined by newlines, hex-encoded.
fn encode(positions: &[(String, u64)]) -> String {
    let text: Vec<String> = positions.iter().map(|(n, p)| format!("{n}={p}")).collect();
    text.join("\n").bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode(token: &str) -> Result<Vec<(String, u64)>, ApiError> {
    let bad = || invalid(format!("The specified nextToken is invalid: {token}"));
    let bytes: Vec<u8> = (0..token.len())
        .step_by(2)
        .map(|i| token.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    text.lines()
        .map(|l| {
            let (n, p) = l.rsplit_once('=').ok_or_else(bad)?;
            Ok((n.to_string(), p.parse().map_err(|_| bad())?))
        })
        .collect()
}

pub(super) async fn filter_log_events(store: &StateDir, hosting: &Hosting, body: Value) -> ApiResult {
    let names: Option<Vec<String>> = match body.get("logStreamNames") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()),
        Some(_) => return Err(invalid("logStreamNames must be a list of stream names")),
    };
    let prefix = string(&body, "logStreamNamePrefix")?.unwrap_or_default();
    if names.is_some() && !prefix.is_empty() {
        return Err(invalid("logStreamNames and logStreamNamePrefix are mutually exclusive"));
    }
    let pattern = Pattern::parse(string(&body, "filterPattern")?.unwrap_or_default())?;
    let (start, end) = (number(&body, "startTime")?, number(&body, "endTime")?);
    let limit = number(&body, "limit")?.map_or(MAX_EVENTS, |l| l.clamp(1, MAX_EVENTS as i64) as usize);
    let resume = match string(&body, "nextToken")? {
        Some(token) => Some(decode(token)?),
        None => None,
    };
    // A stream prefix of `job/` spares reading every job's record; the names narrow after.
    let narrowing = names.as_ref().and_then(|n| n.first()).map_or(prefix, |n| n.split('/').next().unwrap_or_default());
    let narrowing =
        if names.is_some() && !narrowing.is_empty() { format!("{narrowing}/") } else { narrowing.to_string() };
    let (_, mut streams) = group_streams(store, hosting, &body, &narrowing).await?;
    if let Some(names) = &names {
        streams.retain(|s| names.contains(&s.name));
    }
    streams.sort_by(|a, b| a.name.cmp(&b.name));

    // Each stream's matching events from its position, at most `limit` of them.
    struct Found {
        stream: usize,
        line: u64,
        timestamp: i64,
        message: String,
    }
    let mut found: Vec<Found> = Vec::new();
    let mut scanned_to: Vec<u64> = Vec::new();
    let mut ends: Vec<u64> = Vec::new();
    for (i, stream) in streams.iter().enumerate() {
        let read = |e: std::io::Error| ApiError::internal(format!("cannot read the log of {}: {e}", stream.name));
        let Ok(reader) = Reader::open(&stream.log) else {
            scanned_to.push(0);
            ends.push(0);
            continue;
        };
        let low = start.map_or(Ok(0), |t| reader.first_at_or_after(t)).map_err(read)?;
        let high = end.map_or(Ok(reader.len()), |t| reader.first_at_or_after(t)).map_err(read)?;
        let from = resume
            .as_ref()
            .and_then(|r| r.iter().find(|(n, _)| *n == stream.name).map(|(_, p)| *p))
            .unwrap_or(0)
            .max(low);
        let (mut at, mut taken) = (from, 0);
        while at < high && taken < limit {
            let to = (at + 4096).min(high);
            for (k, event) in reader.events(at, to).map_err(read)?.into_iter().enumerate() {
                if taken < limit && pattern.matches(&event.message) {
                    found.push(Found {
                        stream: i,
                        line: at + k as u64,
                        timestamp: event.timestamp,
                        message: event.message,
                    });
                    taken += 1;
                }
            }
            at = to;
        }
        scanned_to.push(at);
        ends.push(high);
    }
    found.sort_by_key(|f| (f.timestamp, f.stream, f.line));
    let more_found = found.len() > limit;
    found.truncate(limit);
    // Where each stream goes on: after its last event on this page, or where its scan ended
    // when every event it found is on the page.
    let mut positions: Vec<u64> = scanned_to.clone();
    if more_found {
        for (i, position) in positions.iter_mut().enumerate() {
            if let Some(last) = found.iter().rev().find(|f| f.stream == i) {
                *position = last.line + 1;
            } else if found.iter().all(|f| f.stream != i) {
                // Nothing of this stream made the page: it goes on from where it was.
                *position = resume
                    .as_ref()
                    .and_then(|r| r.iter().find(|(n, _)| *n == streams[i].name).map(|(_, p)| *p))
                    .unwrap_or(0);
            }
        }
    }
    let complete: Vec<bool> = positions.iter().zip(&ends).map(|(p, e)| p >= e).collect();
    let events: Vec<Value> = found
        .iter()
        .map(|f| {
            json!({
                "logStreamName": streams[f.stream].name,
                "timestamp": f.timestamp,
                "message": crate::logs::cloudwatch_form(&f.message),
                "ingestionTime": f.timestamp,
                "eventId": format!("{:020}{:04}{:012}", f.timestamp.max(0), f.stream, f.line),
            })
        })
        .collect();
    let searched: Vec<Value> =
        streams.iter().zip(&complete).map(|(s, c)| json!({"logStreamName": s.name, "searchedCompletely": c})).collect();
    let mut out = json!({ "events": events, "searchedLogStreams": searched });
    if complete.iter().any(|c| !c) {
        let named: Vec<(String, u64)> = streams.iter().map(|s| s.name.clone()).zip(positions).collect();
        out["nextToken"] = json!(encode(&named));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_phrases_alternatives_and_exclusions() {
        let p = Pattern::parse("epoch \"train_mse=0\" -validation").unwrap();
        assert!(p.matches("epoch=3 train_mse=0.5"));
        assert!(!p.matches("epoch=3 train_mse=0.5 validation_mse=1"));
        assert!(!p.matches("Epoch=3 train_mse=0.5"), "case-sensitive");
        let p = Pattern::parse("?ERROR ?Traceback").unwrap();
        assert!(p.matches("Traceback (most recent call last)") && !p.matches("all good"));
        assert!(Pattern::parse("").unwrap().matches("anything"));
        assert!(Pattern::parse("{ $.level = \"error\" }").is_err());
    }

    #[test]
    fn tokens_round_trip() {
        let positions = vec![("job/algo-1-17".to_string(), 12), ("job/algo-2-17".to_string(), 0)];
        assert_eq!(decode(&encode(&positions)).unwrap(), positions);
        assert!(decode("zz").is_err());
    }
}
