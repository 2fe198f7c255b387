//! The SageMaker hosting operations (models, endpoint configurations, endpoints) over the
//! shared [`Hosting`], and the runtime's InvokeEndpoint on the same port.

use super::{ApiError, ApiResult, Body, full};
use crate::hosting::runtime::{AnswerBody, FORWARDED, Invocation, InvokeError, MAX_PAYLOAD};
use crate::hosting::{Hosting, HostingError};
use crate::spec::SpecError;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper::body::Incoming;
use hyper::{Response, StatusCode};
use serde_json::Value;
use std::sync::Arc;

impl From<HostingError> for ApiError {
    fn from(e: HostingError) -> Self {
        match e {
            HostingError::Spec(SpecError::Parameters(p)) => ApiError::validation(p.join("; ")),
            other => ApiError::of(other.aws_kind(), other.to_string()),
        }
    }
}

/// The hosting operation named by `target`; the body back when it is not one.
pub(super) async fn dispatch(hosting: &Arc<Hosting>, target: &str, body: Value) -> Result<ApiResult, Value> {
    let Some(operation) = target.strip_prefix("SageMaker.") else { return Err(body) };
    hosting.call(operation, body).await.map(|answer| answer.map_err(ApiError::from))
}

/// `POST /endpoints/<name>/invocations` (and `…/invocations-response-stream`): the endpoint
/// name and whether the answer streams, when the path is one of those.
pub(super) fn runtime_route(path: &str) -> Option<(String, bool)> {
    let rest = path.strip_prefix("/endpoints/")?;
    let (name, operation) = rest.split_once('/')?;
    let name = percent_decode(name);
    match operation {
        "invocations" => Some((name, false)),
        "invocations-response-stream" => Some((name, true)),
        _ => None,
    }
}

/// A URL path segment decoded (`+` stays `+`: only a query reads it as a space).
pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = text.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The runtime's error as rest-json sends it: the code in `x-amzn-ErrorType`, the members
/// in the body.
pub(super) fn invoke_error(e: &InvokeError) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST))
        .header("x-amzn-errortype", e.kind)
        .header("content-type", "application/json")
        .header("x-amzn-requestid", super::request_id())
        .body(full(Bytes::from(e.body().to_string())))
        .unwrap_or_else(|_| Response::new(full(Bytes::new())))
}

/// Reads an invocation (its body up to the 6 MiB limit and its own headers) and answers it.
pub(super) async fn invoke(
    hosting: &Hosting,
    endpoint: String,
    stream: bool,
    parts: hyper::http::request::Parts,
    body: Incoming,
    check: impl FnOnce(&hyper::http::request::Parts, &Bytes) -> Result<(), ApiError>,
) -> Response<Body> {
    let body = match Limited::new(body, MAX_PAYLOAD + 1).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return invoke_error(&InvokeError {
                status: 413,
                kind: "ValidationError",
                message: format!(
                    "1 validation error detected: Value at 'body' failed to satisfy constraint: Member must have length less than or equal to {MAX_PAYLOAD}"
                ),
                original_status: None,
                original_message: None,
                log_stream_arn: None,
            });
        }
        Err(e) => {
            return invoke_error(&InvokeError {
                status: 400,
                kind: "SerializationException",
                message: format!("cannot read the request body: {e}"),
                original_status: None,
                original_message: None,
                log_stream_arn: None,
            });
        }
    };
    if let Err(refused) = check(&parts, &body) {
        tracing::warn!("refused a request: {}", refused.message);
        return super::Wire::Json.respond(Err(refused));
    }
    let headers = FORWARDED
        .iter()
        .filter_map(|name| Some((*name, parts.headers.get(*name)?.to_str().ok()?.to_string())))
        .collect();
    let invocation = Invocation { endpoint: endpoint.clone(), headers, body, stream };
    let answered = match hosting.runtime.invoke(hosting, invocation).await {
        Ok(a) => a,
        Err(e) => {
            tracing::info!(endpoint, "InvokeEndpoint: {} {}", e.kind, e.message);
            return invoke_error(&e);
        }
    };
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header("x-amzn-invoked-production-variant", &answered.variant)
        .header("x-amzn-requestid", super::request_id());
    if let Some(attributes) = &answered.custom_attributes {
        response = response.header("x-amzn-sagemaker-custom-attributes", attributes);
    }
    let built = match answered.body {
        AnswerBody::Whole(bytes) => {
            if let Some(content_type) = &answered.content_type {
                response = response.header("content-type", content_type);
            }
            response.body(full(bytes))
        }
        AnswerBody::Events(events) => {
            if let Some(content_type) = &answered.content_type {
                response = response.header("x-amzn-sagemaker-content-type", content_type);
            }
            use futures::StreamExt;
            let frames = events.map(|chunk| chunk.map(hyper::body::Frame::data));
            response
                .header("content-type", "application/vnd.amazon.eventstream")
                .body(BodyExt::boxed_unsync(StreamBody::new(frames)))
        }
    };
    built.unwrap_or_else(|_| Response::new(full(Bytes::new())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_paths_name_the_endpoint_and_the_operation() {
        assert_eq!(runtime_route("/endpoints/my-ep/invocations"), Some(("my-ep".into(), false)));
        assert_eq!(runtime_route("/endpoints/my%2Dep/invocations-response-stream"), Some(("my-ep".into(), true)));
        assert_eq!(runtime_route("/endpoints/my-ep"), None);
        assert_eq!(runtime_route("/"), None);
    }
}
