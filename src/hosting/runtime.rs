//! InvokeEndpoint as SageMaker's runtime answers it: the endpoint's routes (read from its
//! record, reloaded when the record changes), a variant by `TargetVariant` or by weight
//! (smooth weighted round robin: the weights' shares exactly, no randomness), an instance in
//! turn, only InvokeEndpoint's own headers forwarded, and the container's answer or a
//! `ModelError` in AWS's words. Requests in flight are counted per container so an update
//! retires old instances only once they are idle.

use super::Hosting;
use super::logs::GROUP_PREFIX;
use super::store::{EndpointRecord, EndpointStatus, Kind, Variant};
use bytes::Bytes;
use futures::Stream;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// InvokeEndpoint's largest body (6 MiB).
pub(crate) const MAX_PAYLOAD: usize = 6 * 1024 * 1024;

/// The request headers InvokeEndpoint defines, which the container receives; no other
/// header of the client's (its signature, its credentials' token) reaches it.
pub(crate) const FORWARDED: [&str; 10] = [
    "content-type",
    "accept",
    "x-amzn-sagemaker-custom-attributes",
    "x-amzn-sagemaker-target-model",
    "x-amzn-sagemaker-target-variant",
    "x-amzn-sagemaker-target-container-hostname",
    "x-amzn-sagemaker-inference-id",
    "x-amzn-sagemaker-enable-explanations",
    "x-amzn-sagemaker-inference-component",
    "x-amzn-sagemaker-session-id",
];

/// One request to an endpoint, as the HTTP edge read it.
#[derive(Debug)]
pub(crate) struct Invocation {
    pub endpoint: String,
    /// The [`FORWARDED`] headers the client sent.
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
    /// InvokeEndpointWithResponseStream: the body goes back as events while it comes.
    pub stream: bool,
}

impl Invocation {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }
}

pub(crate) type BodyStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// The container's answer.
pub(crate) struct Answered {
    pub content_type: Option<String>,
    pub variant: String,
    pub custom_attributes: Option<String>,
    pub body: AnswerBody,
}

pub(crate) enum AnswerBody {
    Whole(Bytes),
    /// Event-stream messages, already framed.
    Events(BodyStream),
}

/// An InvokeEndpoint error: HTTP status, `x-amzn-ErrorType`, and the error shape's members.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct InvokeError {
    pub status: u16,
    pub kind: &'static str,
    pub message: String,
    pub original_status: Option<u16>,
    pub original_message: Option<String>,
    pub log_stream_arn: Option<String>,
}

impl InvokeError {
    fn validation(message: impl Into<String>) -> Self {
        InvokeError {
            status: 400,
            kind: "ValidationError",
            message: message.into(),
            original_status: None,
            original_message: None,
            log_stream_arn: None,
        }
    }

    /// The JSON body botocore reads the members from.
    pub fn body(&self) -> serde_json::Value {
        let mut body = serde_json::json!({ "message": self.message, "Message": self.message });
        if let Some(code) = self.original_status {
            body["OriginalStatusCode"] = code.into();
        }
        if let Some(m) = &self.original_message {
            body["OriginalMessage"] = m.clone().into();
        }
        if let Some(arn) = &self.log_stream_arn {
            body["LogStreamArn"] = arn.clone().into();
        }
        body
    }
}

struct RouteInstance {
    url: String,
    in_flight: Arc<AtomicUsize>,
}

struct RouteVariant {
    name: String,
    weight: f64,
    instances: Vec<RouteInstance>,
    next: AtomicUsize,
}

/// Where an endpoint's requests go, as its record said at `changed`.
struct Route {
    changed: Option<SystemTime>,
    name: String,
    arn: String,
    serving: bool,
    variants: Vec<RouteVariant>,
    /// Smooth weighted round robin's running weights, one per variant.
    current: Mutex<Vec<f64>>,
}

impl Route {
    fn pick_variant(&self) -> Option<&RouteVariant> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let total: f64 = self.variants.iter().map(|v| v.weight.max(0.0)).sum();
        if total <= 0.0 {
            return self.variants.first();
        }
        for (c, v) in current.iter_mut().zip(&self.variants) {
            *c += v.weight.max(0.0);
        }
        let best = current.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i)?;
        current[best] -= total;
        self.variants.get(best)
    }
}

pub(crate) struct Runtime {
    client: reqwest::Client,
    timeout: Duration,
    routes: Mutex<HashMap<String, Arc<Route>>>,
    in_flight: Mutex<HashMap<String, Arc<AtomicUsize>>>,
}

/// Counts a request on an instance while it lives.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Runtime {
    pub(crate) fn new(timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()
            .unwrap_or_default();
        Runtime { client, timeout, routes: Mutex::default(), in_flight: Mutex::default() }
    }

    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.client
    }

    fn counter(&self, container: &str) -> Arc<AtomicUsize> {
        let mut counters = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        counters.entry(container.to_string()).or_default().clone()
    }

    /// Waits (up to `limit`) until no request is in flight on these variants' instances.
    pub(crate) async fn drain(&self, variants: &[Variant], limit: Duration) {
        let counters: Vec<Arc<AtomicUsize>> =
            variants.iter().flat_map(|v| &v.instances).map(|i| self.counter(&i.container)).collect();
        let deadline = tokio::time::Instant::now() + limit;
        while counters.iter().any(|c| c.load(Ordering::SeqCst) > 0) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn route(&self, h: &Hosting, name: &str) -> Result<Option<Arc<Route>>, InvokeError> {
        let changed = h.store.endpoint_changed(name);
        if let Some(route) = self.routes.lock().unwrap_or_else(|p| p.into_inner()).get(name)
            && route.changed == changed
            && changed.is_some()
        {
            return Ok(Some(route.clone()));
        }
        let record: Option<EndpointRecord> = h.store.load(Kind::Endpoint, name).map_err(|e| InvokeError {
            status: 500,
            kind: "InternalFailure",
            ..InvokeError::validation(e.to_string())
        })?;
        let Some(record) = record else {
            self.routes.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
            return Ok(None);
        };
        let variants: Vec<RouteVariant> = record
            .variants
            .iter()
            .map(|v| RouteVariant {
                name: v.name.clone(),
                weight: v.weight,
                instances: v
                    .instances
                    .iter()
                    .map(|i| RouteInstance {
                        url: format!("{}/invocations", i.url()),
                        in_flight: self.counter(&i.container),
                    })
                    .collect(),
                next: AtomicUsize::new(0),
            })
            .collect();
        let route = Arc::new(Route {
            changed,
            name: record.name.clone(),
            arn: record.arn.clone(),
            // Updating keeps serving on the deployment in service.
            serving: matches!(record.status, EndpointStatus::InService | EndpointStatus::Updating),
            current: Mutex::new(vec![0.0; variants.len()]),
            variants,
        });
        self.routes.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), route.clone());
        Ok(Some(route))
    }

    /// Sends one invocation to the endpoint and returns the container's answer.
    pub(crate) async fn invoke(&self, h: &Hosting, invocation: Invocation) -> Result<Answered, InvokeError> {
        let not_found = || {
            InvokeError::validation(format!(
                "Endpoint {} of account {} not found.",
                invocation.endpoint,
                super::control::DEFAULT_ACCOUNT
            ))
        };
        if invocation.body.len() > MAX_PAYLOAD {
            return Err(InvokeError::validation(format!(
                "1 validation error detected: Value at 'body' failed to satisfy constraint: Member must have length less than or equal to {MAX_PAYLOAD}"
            )));
        }
        let route = self.route(h, &invocation.endpoint)?.ok_or_else(not_found)?;
        let account = route.arn.split(':').nth(4).unwrap_or(super::control::DEFAULT_ACCOUNT).to_string();
        if !route.serving {
            return Err(InvokeError::validation(format!(
                "Endpoint {} of account {account} not found.",
                invocation.endpoint
            )));
        }
        let variant = match invocation.header("x-amzn-sagemaker-target-variant") {
            Some(target) => route.variants.iter().find(|v| v.name == target).ok_or_else(|| {
                InvokeError::validation(format!(
                    "The variant(s) \"[{target}]\" is/are not found for endpoint \"{}\". Please check the variant name(s) and try again.",
                    route.name
                ))
            })?,
            None => route.pick_variant().ok_or_else(not_found)?,
        };
        if variant.instances.is_empty() {
            return Err(not_found());
        }
        let instance = &variant.instances[variant.next.fetch_add(1, Ordering::Relaxed) % variant.instances.len()];
        instance.in_flight.fetch_add(1, Ordering::SeqCst);
        let in_flight = InFlight(instance.in_flight.clone());
        let region = h.region().to_string();
        let model_error = |status: u16, original: Option<u16>, message: String, original_message: Option<String>| {
            InvokeError {
                status,
                kind: "ModelError",
                message: format!(
                    "{message}. See https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}#logEventViewer:group={GROUP_PREFIX}{} in account {account} for more information.",
                    route.name
                ),
                original_status: original,
                original_message,
                log_stream_arn: Some(format!("arn:aws:logs:{region}:{account}:log-group:{GROUP_PREFIX}{}", route.name)),
            }
        };
        let mut request = self.client.post(&instance.url).timeout(self.timeout).body(invocation.body.clone());
        for (name, value) in &invocation.headers {
            request = request.header(*name, value);
        }
        let answer = match request.send().await {
            Ok(answer) => answer,
            Err(e) if e.is_timeout() => {
                return Err(model_error(
                    424,
                    None,
                    "Received server error (0) from primary with message \"Your invocation timed out while waiting for a response from container primary. Review the latency metrics for each container in Amazon CloudWatch, resolve the issue, and try again.\"".into(),
                    None,
                ));
            }
            Err(e) => {
                let why = std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string());
                return Err(model_error(
                    424,
                    None,
                    format!(
                        "Received server error (0) from primary with message \"The container closed the connection without an answer ({why}); it may have crashed\""
                    ),
                    None,
                ));
            }
        };
        let status = answer.status();
        let header = |name: &str| answer.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let content_type = header("content-type");
        let custom_attributes = header("x-amzn-sagemaker-custom-attributes");
        if !status.is_success() {
            let text =
                tokio::time::timeout(self.timeout, answer.text()).await.ok().and_then(Result::ok).unwrap_or_default();
            let side = if status.is_client_error() { "client" } else { "server" };
            return Err(model_error(
                424,
                Some(status.as_u16()),
                format!("Received {side} error ({}) from primary with message \"{text}\"", status.as_u16()),
                Some(text),
            ));
        }
        let variant_name = variant.name.clone();
        if invocation.stream {
            use futures::StreamExt;
            let events = answer.bytes_stream().map(move |chunk| {
                // The counter lives as long as the stream does.
                let _held = &in_flight;
                Ok(Bytes::from(match chunk {
                    Ok(bytes) => super::eventstream::payload_part(&bytes),
                    Err(e) => super::eventstream::model_stream_error(&format!("the container's stream broke off: {e}")),
                }))
            });
            return Ok(Answered {
                content_type,
                variant: variant_name,
                custom_attributes,
                body: AnswerBody::Events(Box::pin(events)),
            });
        }
        let body = match answer.bytes().await {
            Ok(body) => body,
            Err(e) if e.is_timeout() => {
                return Err(model_error(
                    424,
                    None,
                    "Received server error (0) from primary with message \"Your invocation timed out while waiting for a response from container primary.\"".into(),
                    None,
                ));
            }
            Err(e) => {
                return Err(model_error(
                    424,
                    None,
                    format!("Received server error (0) from primary with message \"the answer broke off: {e}\""),
                    None,
                ));
            }
        };
        drop(in_flight);
        Ok(Answered { content_type, variant: variant_name, custom_attributes, body: AnswerBody::Whole(body) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(weights: &[f64]) -> Route {
        Route {
            changed: None,
            name: "e".into(),
            arn: "arn".into(),
            serving: true,
            variants: weights
                .iter()
                .enumerate()
                .map(|(i, w)| RouteVariant {
                    name: format!("v{i}"),
                    weight: *w,
                    instances: Vec::new(),
                    next: AtomicUsize::new(0),
                })
                .collect(),
            current: Mutex::new(vec![0.0; weights.len()]),
        }
    }

    #[test]
    fn variants_get_their_weights_share_of_requests() {
        let r = route(&[3.0, 1.0]);
        let mut counts = [0, 0];
        for _ in 0..400 {
            let v = r.pick_variant().unwrap();
            counts[if v.name == "v0" { 0 } else { 1 }] += 1;
        }
        assert_eq!(counts, [300, 100]);
        let r = route(&[0.0, 0.0]);
        assert_eq!(r.pick_variant().unwrap().name, "v0");
    }
}
