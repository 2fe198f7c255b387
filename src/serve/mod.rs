//! `smlocal serve`: the SageMaker training and hosting APIs, the SageMaker runtime
//! (InvokeEndpoint) and the CloudWatch calls the SDK makes, on this machine, so boto3, the AWS
//! CLI and the SageMaker Python SDK work unchanged against `http://127.0.0.1:PORT`. AWS JSON
//! 1.1: `POST /`, the operation in `X-Amz-Target`, errors as HTTP 400 with `__type` and
//! `message`; the runtime is rest-json on `POST /endpoints/<name>/invocations`. By default signatures are accepted without being
//! checked (the server answers this machine's loopback clients only, never a web page);
//! `--require-signature` checks them (`auth.rs`), for a machine shared with other users.
//! Every GET is the console's ([`crate::console`]): its pages for people, on the same port.

pub(crate) mod auth;
pub(crate) mod queue;

mod cloudwatch;
mod hosting;
mod iam;
mod log_filter;
mod monitoring;
mod training;

pub(crate) use self::hosting::percent_decode;

use crate::console::{self, Console};
use crate::hosting::Hosting;
use crate::serve::auth::Signatures;
use crate::serve::queue::Queue;
use crate::spec::{AwsErrorKind, SpecError};
use crate::state::StateError;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Request bodies larger than this are refused (a CreateTrainingJob request is a few KiB).
const MAX_BODY: usize = 1 << 20;
/// A connection that has not sent a whole request head this long after it opened (or
/// after its last response) is closed: idle or half-open clients cannot hold the server.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the listen backlog until one closes.
const MAX_CONNECTIONS: usize = 256;
/// How long the accept loop rests after an error (out of file descriptors, say), so it
/// does not spin; and how often such an error is reported.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
const ACCEPT_WARNING_EVERY: Duration = Duration::from_secs(10);

/// An error as AWS JSON services send it.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
}

impl ApiError {
    pub(crate) fn new(kind: &'static str, message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::BAD_REQUEST, kind, message: message.into() }
    }

    pub(crate) fn validation(message: impl Into<String>) -> Self {
        ApiError::new("ValidationException", message)
    }

    /// smlocal's own trouble (a job folder it cannot read), not the request's.
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, kind: "InternalFailure", message: message.into() }
    }

    /// An error of `kind` with its message, as every smlocal error carries them.
    pub(crate) fn of(kind: AwsErrorKind, message: impl Into<String>) -> Self {
        match kind {
            AwsErrorKind::Internal => ApiError::internal(message),
            kind => ApiError::new(kind.as_str(), message),
        }
    }
}

impl From<SpecError> for ApiError {
    fn from(e: SpecError) -> Self {
        match e {
            // botocore's client-side findings, which the service words as one message.
            SpecError::Parameters(p) => ApiError::validation(p.join("; ")),
            other => ApiError::of(other.aws_kind(), other.to_string()),
        }
    }
}

impl From<StateError> for ApiError {
    fn from(e: StateError) -> Self {
        match e {
            // AWS's own words for an unknown job.
            StateError::NotFound(_) => ApiError::validation("Requested resource not found."),
            other => ApiError::of(other.aws_kind(), other.to_string()),
        }
    }
}

pub(crate) type ApiResult = Result<Value, ApiError>;

/// A response body: whole, or streamed (the runtime's event stream).
pub(crate) type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

pub(crate) fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed_unsync()
}

/// What the server answers for: training jobs and hosting, over one state directory.
pub struct Api {
    pub queue: Arc<Queue>,
    pub hosting: Arc<Hosting>,
    pub tuning: Arc<crate::tuning::Tuning>,
}

/// Serves the API on `listener` until `shutdown`, then lets every open connection finish
/// the request it is serving (as mini-redis drains its connections) before returning.
/// With `signatures`, every API request must be signed by one of its key pairs.
pub async fn serve(
    listener: TcpListener,
    api: Arc<Api>,
    signatures: Option<Arc<Signatures>>,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    let console = Arc::new(Console::new(shutdown.clone(), signatures.is_none()));
    let listen = listener.local_addr().map(|a| a.ip()).unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
    let places = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut last_warning: Option<tokio::time::Instant> = None;
    let mut unreported = 0u64;
    loop {
        let place = tokio::select! {
            place = places.clone().acquire_owned() => place,
            () = shutdown.cancelled() => break,
        };
        let Ok(place) = place else { break };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                unreported += 1;
                if last_warning.is_none_or(|at| at.elapsed() >= ACCEPT_WARNING_EVERY) {
                    tracing::warn!("cannot accept connections ({unreported} failed since the last report): {e}");
                    last_warning = Some(tokio::time::Instant::now());
                    unreported = 0;
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let (api, shutdown, signatures, console) = (api.clone(), shutdown.clone(), signatures.clone(), console.clone());
        connections.spawn(async move {
            // Held while the connection lives.
            let _place = place;
            let service = hyper::service::service_fn(move |request| {
                let (api, signatures, console) = (api.clone(), signatures.clone(), console.clone());
                async move { Ok::<_, Infallible>(handle(&api, &console, listen, signatures.as_deref(), request).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(io, service);
            tokio::pin!(connection);
            // On shutdown a keep-alive connection finishes its request in flight, then closes.
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
    connections.close();
    connections.wait().await;
}

async fn handle(
    api: &Api,
    console: &Console,
    listen: IpAddr,
    signatures: Option<&Signatures>,
    request: Request<Incoming>,
) -> Response<Body> {
    if let Err(refused) = same_machine(&request, listen) {
        tracing::warn!("refused a request: {}", refused.message);
        return Wire::Json.respond(Err(refused));
    }
    // People's pages: every GET, and the pages' own actions.
    if console::claims(&request) {
        return console::handle(api, console, request).await;
    }
    // The runtime (rest-json, signing name `sagemaker`) is told apart by its path.
    if request.method() == hyper::Method::POST
        && let Some((endpoint, stream)) = hosting::runtime_route(request.uri().path())
    {
        let (parts, body) = request.into_parts();
        let check = |parts: &hyper::http::request::Parts, bytes: &Bytes| match signatures {
            Some(signatures) => signatures.check(parts, bytes),
            None => Ok(()),
        };
        return hosting::invoke(&api.hosting, endpoint, stream, parts, body, check).await;
    }
    // IAM's Query protocol: a form-encoded POST naming its Action.
    let form_encoded = request
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    if request.method() == hyper::Method::POST && form_encoded && !request.headers().contains_key("x-amz-target") {
        let (parts, body) = request.into_parts();
        let body = match read_body(body).await {
            Ok(b) => b,
            Err(e) => return Wire::Json.respond(Err(e)),
        };
        if let Some(signatures) = signatures
            && let Err(refused) = signatures.check(&parts, &body)
        {
            tracing::warn!("refused a request: {}", refused.message);
            return Wire::Json.respond(Err(refused));
        }
        let fields = iam::form(&body);
        tracing::debug!("IAM {:?}", fields.iter().find(|(k, _)| k == "Action"));
        return iam::answer(&fields);
    }
    // AWS JSON names the operation in X-Amz-Target; Smithy RPC v2 CBOR (botocore's protocol
    // for CloudWatch) in the path. Either way the request is read, its signature checked, and
    // the answer sent in the protocol it came in.
    let cbor_operation = request
        .uri()
        .path()
        .strip_prefix(&format!("/service/{}/operation/", monitoring::SERVICE))
        .filter(|_| request.method() == hyper::Method::POST)
        .map(|op| format!("{}.{op}", monitoring::SERVICE));
    let target = request.headers().get("x-amz-target").and_then(|v| v.to_str().ok()).map(str::to_string);
    let (operation, wire) = match (cbor_operation, target) {
        (Some(op), _) => (Some(op), Wire::Cbor),
        (None, target) => (target, Wire::Json),
    };
    let result = match operation {
        Some(operation) => {
            let (parts, body) = request.into_parts();
            let body = read_body(body).await;
            let signed = match (&body, signatures) {
                (Ok(bytes), Some(signatures)) => signatures.check(&parts, bytes),
                _ => Ok(()),
            };
            let result = match (body.and_then(|b| wire.decode(&b)), signed) {
                (_, Err(refused)) => {
                    tracing::warn!("refused a request: {}", refused.message);
                    Err(refused)
                }
                (Ok(body), Ok(())) => dispatch(api, &operation, body).await,
                (Err(e), Ok(())) => Err(e),
            };
            match &result {
                Err(e) => tracing::info!("{operation}: {} {}", e.kind, e.message),
                Ok(_) => tracing::debug!("{operation}: ok"),
            }
            result
        }
        None => Err(ApiError::new(
            "MissingAction",
            "The request has no X-Amz-Target header; send AWS JSON 1.1 requests such as X-Amz-Target: SageMaker.DescribeTrainingJob",
        )),
    };
    wire.respond(result)
}

/// The two protocols the server speaks.
#[derive(Debug, Clone, Copy)]
enum Wire {
    /// AWS JSON (1.1 for SageMaker and CloudWatch Logs, 1.0 for CloudWatch).
    Json,
    /// Smithy RPC v2 CBOR.
    Cbor,
}

impl Wire {
    fn decode(self, body: &[u8]) -> Result<Value, ApiError> {
        match self {
            Wire::Json => parse_body(body),
            Wire::Cbor => monitoring::from_cbor(body),
        }
    }

    /// The answer (the value, or `__type` and `message`) in this protocol.
    fn respond(self, result: ApiResult) -> Response<Body> {
        let (status, body) = match result {
            Ok(value) => (StatusCode::OK, value),
            Err(e) => (e.status, json!({"__type": e.kind, "message": e.message})),
        };
        let builder = Response::builder().status(status).header("x-amzn-requestid", request_id());
        let response = match self {
            Wire::Json => {
                builder.header("content-type", "application/x-amz-json-1.1").body(full(Bytes::from(body.to_string())))
            }
            Wire::Cbor => builder
                .header("content-type", "application/cbor")
                .header("smithy-protocol", "rpc-v2-cbor")
                .body(full(Bytes::from(monitoring::to_cbor(&body)))),
        };
        response.unwrap_or_else(|_| Response::new(full(Bytes::new())))
    }
}

/// Requests must come from this machine's own clients, not from a web page: a page cannot
/// set `Host`, so one whose name rebinds to 127.0.0.1 still sends its own name, and a
/// browser names a foreign page in `Origin`. boto3, the CLI and the SDKs send neither a
/// foreign `Host` nor an `Origin`. On a non-loopback `--listen` address the host names the
/// machine has are not known: `Host` is not checked there (the server says so at start).
fn same_machine(request: &Request<Incoming>, listen: IpAddr) -> Result<(), ApiError> {
    let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
    let local = |authority: &str| {
        let host = match authority.rsplit_once(':') {
            // `[::1]:8808`, `127.0.0.1:8808`, `localhost:8808`
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => authority,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host.eq_ignore_ascii_case("localhost")
            || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback() || ip == listen)
    };
    let denied = |message: String| ApiError { status: StatusCode::FORBIDDEN, kind: "AccessDeniedException", message };
    if let Some(host) = header("host")
        && !listen.is_unspecified()
        && !local(host)
    {
        return Err(denied(format!(
            "Host '{host}' is not this machine: smlocal serve answers requests addressed to localhost or {listen} only"
        )));
    }
    if let Some(origin) = header("origin") {
        let authority = origin.split_once("://").map_or(origin, |(_, rest)| rest).trim_end_matches('/');
        if !local(authority) {
            return Err(denied(format!(
                "requests from the web page {origin} are refused: smlocal serve acts only for clients on this machine"
            )));
        }
    }
    Ok(())
}

async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    Ok(Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::new("SerializationException", format!("cannot read the request body: {e}")))?
        .to_bytes())
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    // AWS clients send `{}` for an operation without parameters, but an empty body is as clear.
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err(ApiError::new("SerializationException", "The request body must be a JSON object")),
        Err(e) => Err(ApiError::new(
            "SerializationException",
            format!("The request body is not valid JSON ({e}); send application/x-amz-json-1.1"),
        )),
    }
}

async fn dispatch(api: &Api, target: &str, body: Value) -> ApiResult {
    let queue = &api.queue;
    let body = match hosting::dispatch(&api.hosting, target, body).await {
        Ok(answer) => return answer,
        Err(body) => body,
    };
    match target {
        "SageMaker.CreateTrainingJob" => training::create(queue, body).await,
        "SageMaker.DescribeTrainingJob" => training::describe(queue, body),
        "SageMaker.ListTrainingJobs" => training::list(queue, body),
        "SageMaker.StopTrainingJob" => training::stop(queue, body),
        "SageMaker.CreateHyperParameterTuningJob" => tuning(api.tuning.create(body)),
        "SageMaker.DescribeHyperParameterTuningJob" => tuning(api.tuning.describe(&body)),
        "SageMaker.ListHyperParameterTuningJobs" => tuning(api.tuning.list(body)),
        "SageMaker.ListTrainingJobsForHyperParameterTuningJob" => tuning(api.tuning.list_training_jobs(&body)),
        "SageMaker.StopHyperParameterTuningJob" => tuning(api.tuning.stop(&body)),
        "Logs_20140328.DescribeLogStreams" => cloudwatch::describe_log_streams(queue.store(), &api.hosting, body).await,
        "Logs_20140328.GetLogEvents" => cloudwatch::get_log_events(queue.store(), &api.hosting, body).await,
        "Logs_20140328.FilterLogEvents" => log_filter::filter_log_events(queue.store(), &api.hosting, body).await,
        "GraniteServiceVersion20100801.GetMetricStatistics" => monitoring::get_metric_statistics(queue.store(), body),
        "GraniteServiceVersion20100801.ListMetrics" => monitoring::list_metrics(queue.store(), body),
        other => Err(ApiError::new(
            "UnknownOperationException",
            format!(
                "smlocal serve does not implement {other}; it answers SageMaker.CreateTrainingJob, DescribeTrainingJob, ListTrainingJobs, StopTrainingJob, Create/Describe/List/Delete Model and EndpointConfig, Create/Describe/List/Update/Delete Endpoint, Create/Describe/List/Stop TransformJob, Create/Describe/List/Stop HyperParameterTuningJob and ListTrainingJobsForHyperParameterTuningJob, the runtime's InvokeEndpoint, Logs_20140328.DescribeLogStreams, GetLogEvents, FilterLogEvents and CloudWatch's GetMetricStatistics, ListMetrics"
            ),
        )),
    }
}

/// CreateTrainingJob, answered as the API answers it (the console's Create uses it too).
pub(crate) async fn create_training_job(api: &Api, body: Value) -> ApiResult {
    training::create(&api.queue, body).await
}

/// A tuning operation's answer, its errors as AWS sends them.
fn tuning(result: Result<Value, crate::tuning::TuningError>) -> ApiResult {
    result.map_err(|e| match e {
        crate::tuning::TuningError::Spec(e) => e.into(),
        // AWS's word for a tuning job that is not there.
        crate::tuning::TuningError::NotFound(_) => ApiError::new("ResourceNotFound", e.to_string()),
        other => ApiError::of(other.aws_kind(), other.to_string()),
    })
}

/// A request ID for `x-amzn-RequestId`: the start time and a count, unique per server.
fn request_id() -> String {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{nanos:024x}{n:08x}")
}
