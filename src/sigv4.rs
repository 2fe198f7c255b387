//! AWS Signature Version 4, both ways: signing the S3 requests smlocal makes itself (those
//! object_store has no call for: exact listings, unfinished multipart uploads) and checking
//! the signatures of requests to `smlocal serve --require-signature`. One canonical form
//! serves both, so a request smlocal signs is one it would accept.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// The hash of an empty payload, which S3 wants in `x-amz-content-sha256` for a GET.
pub(crate) const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// How far a request's clock may be from ours: AWS's own window.
const MAX_SKEW_SECONDS: i64 = 15 * 60;

/// A key pair (and session token) a request is signed with.
#[derive(Clone, PartialEq)]
pub(crate) struct Credential {
    pub(crate) key_id: String,
    pub(crate) secret: String,
    pub(crate) token: Option<String>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a secret, even in a debug log.
        f.debug_struct("Credential").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

/// One request as signing sees it. `path` is as sent on the wire (already percent-encoded),
/// `query` the raw query string, `headers` every header the signature covers (any case).
#[derive(Debug)]
pub(crate) struct Request<'a> {
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) query: &'a str,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) payload_sha256: String,
}

/// Why a request's signature is not accepted, in the words AWS uses for each case.
#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum SignatureError {
    #[error("Missing Authentication Token")]
    Missing,
    #[error(
        "Authorization header requires {0}; expected 'AWS4-HMAC-SHA256 Credential=KEY/DATE/REGION/SERVICE/aws4_request, SignedHeaders=..., Signature=...'"
    )]
    Incomplete(&'static str),
    #[error("The security token included in the request is invalid (unknown access key '{0}')")]
    UnknownKey(String),
    #[error("Signature expired: {request} is more than 15 minutes from the server's time {now}")]
    Expired { request: String, now: String },
    #[error(
        "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method."
    )]
    Mismatch,
}

impl SignatureError {
    /// The AWS error code a client sees.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            SignatureError::Missing => "MissingAuthenticationTokenException",
            SignatureError::Incomplete(_) => "IncompleteSignatureException",
            SignatureError::UnknownKey(_) => "UnrecognizedClientException",
            SignatureError::Expired { .. } | SignatureError::Mismatch => "InvalidSignatureException",
        }
    }
}

/// SHA-256 of `bytes`, lower-case hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn hmac(key: &[u8], data: &str) -> [u8; 32] {
    // HMAC takes a key of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().into()
}

/// RFC 3986 percent-encoding of everything but the unreserved characters, as SigV4 wants;
/// `/` too unless `keep_slash`.
pub(crate) fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b'/' if keep_slash => out.push('/'),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// Percent-decoding (and `+` as a space), for query strings and URL-encoded listings.
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex_at = |j: usize| bytes.get(j).and_then(|c| (*c as char).to_digit(16));
        match (bytes[i], hex_at(i + 1), hex_at(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b'+', ..) => {
                // A form-encoded space; SigV4 clients send %20, but decode both alike.
                out.push(b' ');
                i += 1;
            }
            (b, ..) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query string in canonical form: every name and value decoded, encoded strictly, and
/// sorted.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (uri_encode(&percent_decode(k), false), uri_encode(&percent_decode(v), false))
        })
        .collect();
    pairs.sort();
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

/// The canonical block of the headers named in `signed` (lower-case, sorted), one per line.
fn canonical_headers(headers: &[(String, String)], signed: &[String]) -> String {
    let mut out = String::new();
    for name in signed {
        let values: Vec<String> = headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        let _ = writeln!(out, "{name}:{}", values.join(","));
    }
    out
}

/// The scope string `DATE/REGION/SERVICE/aws4_request`.
fn scope(date: &str, region: &str, service: &str) -> String {
    format!("{date}/{region}/{service}/aws4_request")
}

fn signature(secret: &str, amz_date: &str, scope_parts: (&str, &str, &str), canonical: &str) -> String {
    let (date, region, service) = scope_parts;
    let string_to_sign =
        format!("{ALGORITHM}\n{amz_date}\n{}\n{}", scope(date, region, service), sha256_hex(canonical.as_bytes()));
    let key = hmac(format!("AWS4{secret}").as_bytes(), date);
    let key = hmac(&key, region);
    let key = hmac(&key, service);
    let key = hmac(&key, "aws4_request");
    hex(&hmac(&key, &string_to_sign))
}

fn canonical_request(request: &Request<'_>, signed: &[String]) -> String {
    format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        request.method,
        if request.path.is_empty() { "/" } else { request.path },
        canonical_query(request.query),
        canonical_headers(&request.headers, signed),
        signed.join(";"),
        request.payload_sha256,
    )
}

/// Signs `request` (which must already carry `host` and, for S3, `x-amz-content-sha256`)
/// at `amz_date` (`YYYYMMDDTHHMMSSZ`). Returns the headers to add: `x-amz-date`, the
/// token when there is one, and `authorization`.
pub(crate) fn sign(
    request: &mut Request<'_>,
    credential: &Credential,
    region: &str,
    service: &str,
    amz_date: &str,
) -> Vec<(&'static str, String)> {
    let mut added = vec![("x-amz-date", amz_date.to_string())];
    if let Some(token) = &credential.token {
        added.push(("x-amz-security-token", token.clone()));
    }
    request.headers.extend(added.iter().map(|(n, v)| (n.to_string(), v.clone())));
    let mut signed: Vec<String> = request.headers.iter().map(|(n, _)| n.to_ascii_lowercase()).collect();
    signed.sort();
    signed.dedup();
    let date = &amz_date[..amz_date.len().min(8)];
    let canonical = canonical_request(request, &signed);
    let signature = signature(&credential.secret, amz_date, (date, region, service), &canonical);
    added.push((
        "authorization",
        format!(
            "{ALGORITHM} Credential={}/{}, SignedHeaders={}, Signature={signature}",
            credential.key_id,
            scope(date, region, service),
            signed.join(";")
        ),
    ));
    added
}

/// Checks the `Authorization` header of `request` against the secret `secret_of` gives
/// for its key id, with its `x-amz-date` within 15 minutes of `now` (Unix seconds).
pub(crate) fn verify(
    request: &Request<'_>,
    secret_of: impl Fn(&str) -> Option<String>,
    now: i64,
) -> Result<(), SignatureError> {
    let header = |name: &str| request.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v);
    let authorization = header("authorization").ok_or(SignatureError::Missing)?;
    let fields = authorization.strip_prefix(ALGORITHM).ok_or(SignatureError::Incomplete("AWS4-HMAC-SHA256"))?;
    let field = |name: &str| {
        fields.split(',').map(str::trim).find_map(|f| f.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
    };
    let credential = field("Credential").ok_or(SignatureError::Incomplete("Credential"))?;
    let signed = field("SignedHeaders").ok_or(SignatureError::Incomplete("SignedHeaders"))?;
    let given = field("Signature").ok_or(SignatureError::Incomplete("Signature"))?;
    let parts: Vec<&str> = credential.split('/').collect();
    let [key_id, date, region, service, "aws4_request"] = parts[..] else {
        return Err(SignatureError::Incomplete("Credential=KEY/DATE/REGION/SERVICE/aws4_request"));
    };
    let secret = secret_of(key_id).ok_or_else(|| SignatureError::UnknownKey(key_id.to_string()))?;
    let amz_date = header("x-amz-date").ok_or(SignatureError::Incomplete("an X-Amz-Date header"))?;
    let at = time::PrimitiveDateTime::parse(
        amz_date,
        time::macros::format_description!("[year][month][day]T[hour][minute][second]Z"),
    )
    .map_err(|_| SignatureError::Incomplete("X-Amz-Date as YYYYMMDDTHHMMSSZ"))?
    .assume_utc()
    .unix_timestamp();
    if (at - now).abs() > MAX_SKEW_SECONDS || !amz_date.starts_with(date) {
        let now = time::OffsetDateTime::from_unix_timestamp(now)
            .ok()
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
            .unwrap_or_default();
        return Err(SignatureError::Expired { request: amz_date.clone(), now });
    }
    let signed: Vec<String> = signed.split(';').map(str::to_string).collect();
    if !signed.iter().any(|h| h == "host") {
        return Err(SignatureError::Incomplete("the host header among SignedHeaders"));
    }
    let canonical = canonical_request(request, &signed);
    let expected = signature(&secret, amz_date, (date, region, service), &canonical);
    // Compared in constant time, so the comparison leaks nothing about the expected value.
    let same = expected.len() == given.len()
        && expected.bytes().zip(given.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if same { Ok(()) } else { Err(SignatureError::Mismatch) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example_credential() -> Credential {
        // The key pair of AWS's own SigV4 examples for S3.
        Credential {
            key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            token: None,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn signs_aws_documented_get_object_example() {
        let mut request = Request {
            method: "GET",
            path: "/test.txt",
            query: "",
            headers: headers(&[
                ("Host", "examplebucket.s3.amazonaws.com"),
                ("Range", "bytes=0-9"),
                ("x-amz-content-sha256", EMPTY_SHA256),
            ]),
            payload_sha256: EMPTY_SHA256.into(),
        };
        let added = sign(&mut request, &example_credential(), "us-east-1", "s3", "20130524T000000Z");
        let authorization = &added.iter().find(|(n, _)| *n == "authorization").expect("signed").1;
        assert_eq!(
            authorization,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn signs_aws_documented_list_objects_example() {
        let mut request = Request {
            method: "GET",
            path: "/",
            query: "max-keys=2&prefix=J",
            headers: headers(&[("host", "examplebucket.s3.amazonaws.com"), ("x-amz-content-sha256", EMPTY_SHA256)]),
            payload_sha256: EMPTY_SHA256.into(),
        };
        let added = sign(&mut request, &example_credential(), "us-east-1", "s3", "20130524T000000Z");
        assert!(
            added.iter().any(|(n, v)| *n == "authorization"
                && v.ends_with("Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")),
            "{added:?}"
        );
    }

    fn signed_request(body: &[u8], at: &str) -> Vec<(String, String)> {
        let mut request = Request {
            method: "POST",
            path: "/",
            query: "",
            headers: headers(&[
                ("Host", "127.0.0.1:8080"),
                ("X-Amz-Target", "SageMaker.ListTrainingJobs"),
                ("Content-Type", "application/x-amz-json-1.1"),
            ]),
            payload_sha256: sha256_hex(body),
        };
        let added = sign(&mut request, &example_credential(), "us-west-2", "sagemaker", at);
        let mut all = request.headers;
        all.retain(|(n, _)| n != "x-amz-date");
        all.extend(added.into_iter().map(|(n, v)| (n.to_string(), v)));
        all
    }

    fn check(headers: Vec<(String, String)>, body: &[u8], now: i64) -> Result<(), SignatureError> {
        let request = Request { method: "POST", path: "/", query: "", headers, payload_sha256: sha256_hex(body) };
        let secret_of = |key: &str| (key == "AKIAIOSFODNN7EXAMPLE").then(|| example_credential().secret);
        verify(&request, secret_of, now)
    }

    // 2013-05-24T00:00:00Z
    const THEN: i64 = 1_369_353_600;

    #[test]
    fn what_is_signed_verifies_and_any_change_does_not() {
        let body = br#"{"MaxResults": 5}"#;
        let good = signed_request(body, "20130524T000000Z");
        assert_eq!(check(good.clone(), body, THEN + 60), Ok(()));
        assert_eq!(check(good.clone(), br#"{"MaxResults": 6}"#, THEN), Err(SignatureError::Mismatch));
        let mut retargeted = good.clone();
        for (n, v) in &mut retargeted {
            if n == "X-Amz-Target" {
                *v = "SageMaker.CreateTrainingJob".into();
            }
        }
        assert_eq!(check(retargeted, body, THEN), Err(SignatureError::Mismatch));
        assert!(matches!(check(good.clone(), body, THEN + 16 * 60), Err(SignatureError::Expired { .. })));
        let unsigned: Vec<_> = good.iter().filter(|(n, _)| n != "authorization").cloned().collect();
        assert_eq!(check(unsigned, body, THEN), Err(SignatureError::Missing));
        let stranger: Vec<_> =
            good.iter().map(|(n, v)| (n.clone(), v.replace("AKIAIOSFODNN7EXAMPLE", "AKIDSTRANGER"))).collect();
        assert_eq!(check(stranger, body, THEN), Err(SignatureError::UnknownKey("AKIDSTRANGER".into())));
    }

    #[test]
    fn query_is_canonicalised_strictly() {
        assert_eq!(canonical_query("prefix=a b&list-type=2"), "list-type=2&prefix=a%20b");
        assert_eq!(canonical_query("uploads"), "uploads=");
        assert_eq!(canonical_query("prefix=%C3%BC%2F"), "prefix=%C3%BC%2F");
        assert_eq!(uri_encode("dir/ü #.csv", true), "dir/%C3%BC%20%23.csv");
    }
}
