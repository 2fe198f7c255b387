//! The S3 calls smlocal makes by hand, signed with [`crate::sigv4`], where object_store has
//! no call or cannot make it exactly: its listing drops a key's trailing `/` (so the S3
//! console's folder marker `train/sub/` looks like a file `train/sub`), fails a whole
//! listing on a key with an empty segment (`a//b`) and can only list whole "folders"; and it
//! cannot list or abort the multipart uploads a killed run left behind (which AWS bills).

use super::ObjectInfo;
use crate::sigv4::{self, Credential, EMPTY_SHA256};
use object_store::aws::AwsCredentialProvider;
use std::time::Duration;

/// Attempts per request when the server is unreachable, overloaded or fails.
const ATTEMPTS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub(crate) enum RestError {
    #[error("no credentials: {0}")]
    Credentials(String),
    #[error("{0}")]
    Unreachable(String),
    #[error("{code}: {message} (HTTP {status}){}", region_hint(.region))]
    Refused { status: u16, code: String, message: String, region: Option<String> },
    #[error("the server's answer is not S3's XML: {0}")]
    BadAnswer(String),
}

impl RestError {
    /// Whether the bucket itself does not exist.
    pub(crate) fn no_such_bucket(&self) -> bool {
        matches!(self, RestError::Refused { code, .. } if code == "NoSuchBucket")
    }
}

fn region_hint(region: &Option<String>) -> String {
    region.as_ref().map(|r| format!("; the bucket is in {r}: set AWS_REGION={r}")).unwrap_or_default()
}

/// Keys starting with `prefix`, after `after` and before `before` (each when given).
#[derive(Debug, Clone, PartialEq)]
struct KeyRange {
    prefix: String,
    after: Option<String>,
    before: Option<String>,
}

/// The last character of a run of characters of one kind (`'9'` for a digit), if `c` is in
/// one.
fn run_end(c: char) -> Option<char> {
    match c {
        '0'..='9' => Some('9'),
        'a'..='z' => Some('z'),
        'A'..='Z' => Some('Z'),
        _ => None,
    }
}

impl KeyRange {
    /// The rest of this range after a truncated page that ended at `last`: disjoint but for
    /// edges, together covering every key of the range after `last`.
    fn split(&self, last: &str) -> Vec<KeyRange> {
        let Some(next) = last.get(self.prefix.len()..).and_then(|rest| rest.chars().next()) else {
            // The last key is the prefix itself: nothing to split on; the next page.
            return vec![KeyRange { after: Some(last.to_string()), ..self.clone() }];
        };
        let before = |key: &str| self.before.as_deref().is_none_or(|b| key < b);
        let deeper = format!("{}{next}", self.prefix);
        let mut ranges = vec![KeyRange { prefix: deeper, after: Some(last.to_string()), before: self.before.clone() }];
        let end = run_end(next).unwrap_or(next);
        for c in (next..=end).skip(1) {
            let prefix = format!("{}{c}", self.prefix);
            if before(&prefix) {
                ranges.push(KeyRange { prefix, after: None, before: self.before.clone() });
            }
        }
        // Everything past the run: keys after `<prefix><end>` and all its extensions.
        let after = format!("{}{end}{}", self.prefix, char::MAX);
        if before(&after) {
            ranges.push(KeyRange { prefix: self.prefix.clone(), after: Some(after), before: self.before.clone() });
        }
        ranges
    }
}

/// An unfinished multipart upload.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PendingUpload {
    pub(crate) key: String,
    pub(crate) upload_id: String,
}

/// Signed requests to one S3 endpoint, path-style (`ENDPOINT/BUCKET/KEY`, as object_store
/// addresses it), with the credentials object_store resolved from the environment.
#[derive(Debug)]
pub(crate) struct Rest {
    pub(crate) http: reqwest::Client,
    /// Scheme, host and port, no trailing `/`.
    pub(crate) endpoint: String,
    pub(crate) region: String,
    pub(crate) credentials: AwsCredentialProvider,
    /// How long one request may go without an answer.
    pub(crate) timeout: Duration,
}

impl Rest {
    /// Every object whose key starts with `prefix` (S3's string-prefix rule), exactly as
    /// listed: keys are never re-encoded or trimmed, in key order.
    ///
    /// A listing of more than one page is split as its pages arrive, so up to
    /// `parallel` pages are requested at once where the key space allows: the rest of a
    /// range after a truncated page is the keys that extend the last key's next character,
    /// one range per following character of the same kind (digits, lower- or upper-case
    /// letters, whose keys are usually numbered or named alike), and one range for all the
    /// keys after those. Ranges that overlap only at their edges are deduplicated.
    pub(crate) async fn list_objects(
        &self,
        bucket: &str,
        prefix: &str,
        parallel: usize,
    ) -> Result<Vec<ObjectInfo>, RestError> {
        use futures::StreamExt;
        let mut found = Vec::new();
        let mut waiting = vec![KeyRange { prefix: prefix.to_string(), after: None, before: None }];
        let mut in_flight = futures::stream::FuturesUnordered::new();
        loop {
            while in_flight.len() < parallel.max(1) {
                let Some(range) = waiting.pop() else { break };
                in_flight.push(async move {
                    let page = self.list_page(bucket, &range.prefix, range.after.as_deref()).await;
                    (range, page)
                });
            }
            let Some((range, page)) = in_flight.next().await else { break };
            let (objects, truncated) = page?;
            let Some(last) = objects.last().map(|o| o.key.clone()) else { continue };
            let beyond = range.before.as_deref().is_some_and(|b| last.as_str() >= b);
            found.extend(objects.into_iter().filter(|o| range.before.as_deref().is_none_or(|b| o.key.as_str() < b)));
            if truncated && !beyond {
                waiting.extend(range.split(&last));
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        found.dedup_by(|a, b| a.key == b.key);
        Ok(found)
    }

    /// One page of keys under `prefix` after `after`, and whether more follow.
    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        after: Option<&str>,
    ) -> Result<(Vec<ObjectInfo>, bool), RestError> {
        let mut query = vec![("list-type", "2".to_string()), ("prefix", prefix.to_string())];
        query.push(("encoding-type", "url".to_string()));
        if let Some(after) = after {
            query.push(("start-after", after.to_string()));
        }
        let body = self.send("GET", bucket, "", &query).await?;
        let doc = roxmltree::Document::parse(&body).map_err(|e| RestError::BadAnswer(e.to_string()))?;
        let root = doc.root_element();
        let url_encoded = child_text(root, "EncodingType").is_some_and(|e| e.eq_ignore_ascii_case("url"));
        let mut found = Vec::new();
        for contents in root.children().filter(|n| n.has_tag_name("Contents")) {
            let Some(key) = child_text(contents, "Key") else { continue };
            let key = if url_encoded { sigv4::percent_decode(key) } else { key.to_string() };
            let size = child_text(contents, "Size").and_then(|s| s.parse().ok()).unwrap_or(0);
            let etag = child_text(contents, "ETag").map(|e| e.trim_matches('"').to_string()).filter(|e| !e.is_empty());
            let modified_ms = child_text(contents, "LastModified").map(epoch_ms).unwrap_or(0);
            found.push(ObjectInfo { key, size, etag, modified_ms });
        }
        let truncated = child_text(root, "IsTruncated").is_some_and(|t| t == "true");
        Ok((found, truncated))
    }

    /// The unfinished multipart uploads of keys starting with `prefix`.
    pub(crate) async fn list_uploads(&self, bucket: &str, prefix: &str) -> Result<Vec<PendingUpload>, RestError> {
        let mut found = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut query = vec![("uploads", String::new()), ("prefix", prefix.to_string())];
            if let Some((key, id)) = &markers {
                query.push(("key-marker", key.clone()));
                query.push(("upload-id-marker", id.clone()));
            }
            let body = self.send("GET", bucket, "", &query).await?;
            let doc = roxmltree::Document::parse(&body).map_err(|e| RestError::BadAnswer(e.to_string()))?;
            let root = doc.root_element();
            for upload in root.children().filter(|n| n.has_tag_name("Upload")) {
                if let (Some(key), Some(id)) = (child_text(upload, "Key"), child_text(upload, "UploadId")) {
                    found.push(PendingUpload { key: key.into(), upload_id: id.into() });
                }
            }
            let truncated = child_text(root, "IsTruncated").is_some_and(|t| t == "true");
            let next = child_text(root, "NextKeyMarker").zip(child_text(root, "NextUploadIdMarker"));
            match next {
                Some((key, id)) if truncated => markers = Some((key.into(), id.into())),
                _ => break,
            }
        }
        Ok(found)
    }

    /// Aborts one multipart upload: its parts are deleted and no longer billed.
    pub(crate) async fn abort_upload(&self, bucket: &str, upload: &PendingUpload) -> Result<(), RestError> {
        match self.send("DELETE", bucket, &upload.key, &[("uploadId", upload.upload_id.clone())]).await {
            Ok(_) => Ok(()),
            Err(RestError::Refused { code, .. }) if code == "NoSuchUpload" => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// One signed request, retried while the server is unreachable or answers 5xx/429.
    /// Returns the body of a 2xx answer.
    async fn send(&self, method: &str, bucket: &str, key: &str, query: &[(&str, String)]) -> Result<String, RestError> {
        let credential = self.credentials.get_credential().await.map_err(|e| RestError::Credentials(e.to_string()))?;
        let credential = Credential {
            key_id: credential.key_id.clone(),
            secret: credential.secret_key.clone(),
            token: credential.token.clone(),
        };
        let path = if key.is_empty() {
            format!("/{}", sigv4::uri_encode(bucket, false))
        } else {
            format!("/{}/{}", sigv4::uri_encode(bucket, false), sigv4::uri_encode(key, true))
        };
        let query_string = query
            .iter()
            .map(|(k, v)| if v.is_empty() { (*k).to_string() } else { format!("{k}={}", sigv4::uri_encode(v, false)) })
            .collect::<Vec<_>>()
            .join("&");
        let url = format!("{}{path}?{query_string}", self.endpoint);
        let parsed = url::Url::parse(&url).map_err(|e| RestError::Unreachable(format!("{url}: {e}")))?;
        let host = match (parsed.host_str(), parsed.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => return Err(RestError::Unreachable(format!("{url}: no host"))),
        };
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::GET);
        let mut last = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            let mut request = sigv4::Request {
                method: method.as_str(),
                path: &path,
                query: &query_string,
                headers: vec![("host".into(), host.clone()), ("x-amz-content-sha256".into(), EMPTY_SHA256.into())],
                payload_sha256: EMPTY_SHA256.into(),
            };
            let amz_date = time::OffsetDateTime::now_utc()
                .format(time::macros::format_description!("[year][month][day]T[hour][minute][second]Z"))
                .unwrap_or_default();
            let added = sigv4::sign(&mut request, &credential, &self.region, "s3", &amz_date);
            let mut builder = self
                .http
                .request(method.clone(), parsed.clone())
                .timeout(self.timeout)
                .header("x-amz-content-sha256", EMPTY_SHA256);
            for (name, value) in added {
                builder = builder.header(name, value);
            }
            let response = match builder.send().await {
                Ok(r) => r,
                // A server that let a whole timeout pass will not answer the next attempt
                // sooner: say so now rather than after three timeouts.
                Err(e) if e.is_timeout() => return Err(RestError::Unreachable(describe(&e))),
                Err(e) => {
                    last = Some(RestError::Unreachable(describe(&e)));
                    continue;
                }
            };
            let status = response.status();
            let region =
                response.headers().get("x-amz-bucket-region").and_then(|v| v.to_str().ok()).map(str::to_string);
            let body = match response.text().await {
                Ok(b) => b,
                Err(e) => {
                    last = Some(RestError::Unreachable(describe(&e)));
                    continue;
                }
            };
            if status.is_success() {
                return Ok(body);
            }
            let refused = refusal(status.as_u16(), &body, region);
            if status.is_server_error() || status.as_u16() == 429 {
                last = Some(refused);
                continue;
            }
            return Err(refused);
        }
        Err(last.unwrap_or_else(|| RestError::Unreachable("no attempt was made".into())))
    }
}

/// The error of a non-2xx answer, from S3's `<Error><Code>…<Message>…` body when there is one.
fn refusal(status: u16, body: &str, region: Option<String>) -> RestError {
    let doc = roxmltree::Document::parse(body).ok();
    let field = |name: &str| doc.as_ref().and_then(|d| child_text(d.root_element(), name)).map(str::to_string);
    RestError::Refused {
        status,
        code: field("Code").unwrap_or_else(|| format!("HTTP{status}")),
        message: field("Message").unwrap_or_else(|| body.chars().take(200).collect()),
        region: region.or_else(|| field("Region")),
    }
}

/// What went wrong with a request, with its causes (reqwest's own message alone says only
/// "error sending request").
fn describe(error: &reqwest::Error) -> String {
    let mut text =
        if error.is_timeout() { "no answer in time (SMLOCAL_S3_TIMEOUT)".to_string() } else { error.to_string() };
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

fn child_text<'a>(node: roxmltree::Node<'a, '_>, name: &str) -> Option<&'a str> {
    node.children().find(|n| n.has_tag_name(name)).and_then(|n| n.text())
}

fn epoch_ms(timestamp: &str) -> i64 {
    time::OffsetDateTime::parse(timestamp, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_keys_are_decoded_exactly() {
        assert_eq!(sigv4::percent_decode("train/sub/"), "train/sub/");
        assert_eq!(sigv4::percent_decode("a%2F%2Fb%20%23%C3%BC+x"), "a//b #ü x");
        assert_eq!(epoch_ms("2009-10-12T17:50:30.000Z"), 1_255_369_830_000);
    }

    #[test]
    fn a_truncated_listing_splits_into_ranges_that_cover_the_rest() {
        let range = KeyRange { prefix: "data/".into(), after: None, before: None };
        let parts = range.split("data/part-00999");
        assert_eq!(parts[0], KeyRange { prefix: "data/p".into(), after: Some("data/part-00999".into()), before: None });
        let siblings: Vec<&str> = parts[1..parts.len() - 1].iter().map(|r| r.prefix.as_str()).collect();
        assert_eq!(
            siblings,
            ["data/q", "data/r", "data/s", "data/t", "data/u", "data/v", "data/w", "data/x", "data/y", "data/z"]
        );
        let tail = parts.last().unwrap();
        assert_eq!((tail.prefix.as_str(), tail.after.as_deref()), ("data/", Some("data/z\u{10FFFF}")));
        // Every key after the page's last falls in some range.
        let within = |r: &KeyRange, k: &str| {
            k.starts_with(&r.prefix)
                && r.after.as_deref().is_none_or(|a| k > a)
                && r.before.as_deref().is_none_or(|b| k < b)
        };
        for key in ["data/part-01000", "data/part-1", "data/q", "data/zz", "data/{x", "data/\u{e9}t\u{e9}", "data/Part"]
        {
            let covered = parts.iter().any(|r| within(r, key));
            assert_eq!(covered, key > "data/part-00999", "{key}");
        }
        let numbered = KeyRange { prefix: "data/part-".into(), after: Some("data/part-0".into()), before: None };
        let next = numbered.split("data/part-07");
        assert_eq!(next.iter().filter(|r| r.after.is_none()).count(), 9, "digits 1 to 9 at once: {next:?}");
    }

    #[test]
    fn an_s3_error_body_names_the_code_and_the_region() {
        let body = "<?xml version=\"1.0\"?><Error><Code>PermanentRedirect</Code><Message>Use the right endpoint.</Message><Region>eu-west-1</Region></Error>";
        let err = refusal(301, body, None);
        assert_eq!(
            err.to_string(),
            "PermanentRedirect: Use the right endpoint. (HTTP 301); the bucket is in eu-west-1: set AWS_REGION=eu-west-1"
        );
        assert!(refusal(404, "<Error><Code>NoSuchBucket</Code></Error>", None).no_such_bucket());
    }
}
