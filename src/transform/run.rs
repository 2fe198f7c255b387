//! One transform job, start to record: the model into the job's folder, `InstanceCount`
//! containers (`IMAGE serve`, `SAGEMAKER_BATCH=true`) on a network of their own, healthy
//! behind `/ping`; the settings resolved (request > `GET /execution-parameters` > defaults);
//! the input objects spread over the instances, each object split into records, packed into
//! batches, sent with `MaxConcurrentTransforms` in flight per instance, and its answers
//! written in input order to `<S3OutputPath>/<key>.out` (an upload that fails or is stopped
//! is aborted: no partial `.out` is left looking complete).

use super::jsonpath::{self, JsonPath};
use super::records;
use super::store::{TransformRecord, TransformStatus};
use super::{TransformProgress, plan::Plan};
use crate::docker::HOME_LABEL;
use crate::hosting::Hosting;
use crate::hosting::model_data::{self, ModelData};
use crate::hosting::store::Kind;
use crate::logs::LogSink;
use crate::resources;
use crate::storage::{Location, Upload};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The label on a transform job's containers and network.
pub(crate) const TRANSFORM_LABEL: &str = "smlocal.transform";
const PORT: u16 = 8080;
const STARTUP_LIMIT: Duration = Duration::from_secs(600);
/// Time between SIGTERM and SIGKILL when the job's containers are retired.
const GRACE: Duration = Duration::from_secs(30);

/// How a run ended, when it did not complete.
enum Ended {
    Failed(String),
    Stopped,
}

/// The settings a job runs with.
#[derive(Debug, Clone, Copy)]
struct Settings {
    concurrency: usize,
    /// Bytes per request; `None` for 0 (the object streamed whole).
    max_payload: Option<usize>,
    multi_record: bool,
}

struct Instance {
    id: String,
    container: String,
    /// `http://127.0.0.1:PORT`, or the container's own address when the model is isolated.
    base: String,
}

/// One object to transform and where its output goes.
struct InputObject {
    uri: String,
    output: String,
}

/// Runs the job whose record exists and ends its record. `stop` (a StopTransformJob, or
/// the process stopping) stops it within the grace.
pub(crate) async fn run(
    h: Arc<Hosting>,
    name: String,
    progress: Arc<TransformProgress>,
    sink: Option<LogSink>,
    stop: CancellationToken,
) -> Option<TransformRecord> {
    let store = super::store_of(&h);
    let _claim = store.claim(&name)?;
    let mut record = store.load(&name).ok().flatten()?;
    record.start_time = Some(crate::state::record::now());
    let _ = store.save(&record);
    // A stop request arrives as a marker (from this process or another).
    let watcher = {
        let (store, name, stop) = (store.clone(), name.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                if store.stop_requested(&name) {
                    stop.cancel();
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let plan = match Plan::of(&record.request) {
        Ok(plan) => plan,
        Err(e) => {
            record.end(TransformStatus::Failed, Some(format!("ClientError: {e}")));
            let _ = store.save(&record);
            return Some(record);
        }
    };
    let network = format!("smlocal-tj-{name}");
    let mut instances = Vec::new();
    let outcome = execute(&h, &plan, &mut record, &network, &mut instances, &progress, sink, &stop).await;
    watcher.abort();
    retire(&h, &name, &network, &instances).await;
    let store = super::store_of(&h);
    match outcome {
        Ok(()) => record.end(TransformStatus::Completed, None),
        Err(Ended::Stopped) => record.end(TransformStatus::Stopped, None),
        Err(Ended::Failed(reason)) => record.end(TransformStatus::Failed, Some(reason)),
    }
    if let Err(e) = store.save(&record) {
        tracing::error!("{e}");
    }
    tracing::info!("{}", record.status.as_str());
    Some(record)
}

async fn retire(h: &Hosting, name: &str, network: &str, instances: &[Instance]) {
    let grace = GRACE;
    futures::future::join_all(instances.iter().map(|i| async move {
        let _ = h.docker.stop(&i.container, grace).await;
        let _ = h.docker.remove_container(&i.container).await;
    }))
    .await;
    for id in h.docker.containers_matching(&[(TRANSFORM_LABEL, name)], &h.home()).await.unwrap_or_default() {
        let _ = h.docker.remove_container(&id).await;
    }
    let _ = h.docker.remove_network(network).await;
    let _ = std::fs::remove_dir_all(super::store_of(h).model_dir(name));
}

#[allow(clippy::too_many_arguments)]
async fn execute(
    h: &Arc<Hosting>,
    plan: &Plan,
    record: &mut TransformRecord,
    network: &str,
    instances: &mut Vec<Instance>,
    progress: &Arc<TransformProgress>,
    sink: Option<LogSink>,
    stop: &CancellationToken,
) -> Result<(), Ended> {
    let failed = |reason: String| Ended::Failed(reason);
    let store = super::store_of(h);
    let name = record.name.clone();
    let model = h.definition(Kind::Model, &plan.model_name).map_err(|e| failed(format!("ClientError: {e}")))?;
    let container = crate::hosting::control::model_containers(&Value::Object(model.request.clone()))
        .first()
        .map(|c| (*c).clone())
        .unwrap_or_default();
    let requested = container.get("Image").and_then(Value::as_str).unwrap_or_default();
    let image = crate::images::resolve(&h.docker, h.state.root(), requested)
        .await
        .map_err(|e| failed(format!("ClientError: {e}")))?
        .image;
    let data = ModelData::of(&container);
    let model_dir = store.model_dir(&name);
    model_data::fetch(&h.storage, &data, &model_dir).await.map_err(|e| {
        failed(format!(
            "ClientError: Failed to download model data for container \"primary\" from URL: \"{}\". ({e})",
            data.uri().unwrap_or_default()
        ))
    })?;
    let instance = resources::instance(&plan.instance_type, &h.config.settings.host)
        .map_err(|e| failed(format!("ClientError: {e}")))?;
    let labels = HashMap::from([(TRANSFORM_LABEL.to_string(), name.clone()), (HOME_LABEL.to_string(), h.home())]);
    let isolated = model.request.get("EnableNetworkIsolation").and_then(Value::as_bool).unwrap_or(false);
    h.docker.create_network(network, labels.clone(), isolated).await.map_err(|e| failed(e.to_string()))?;

    let mut env = vec!["SAGEMAKER_BATCH=true".to_string()];
    if let Some(n) = plan.concurrency {
        env.push(format!("SAGEMAKER_MAX_CONCURRENT_TRANSFORMS={n}"));
    }
    if let Some(mb) = plan.payload_mb {
        env.push(format!("SAGEMAKER_MAX_PAYLOAD_IN_MB={mb}"));
    }
    if let Some(multi) = plan.multi_record {
        env.push(format!("SAGEMAKER_BATCH_STRATEGY={}", if multi { "MULTI_RECORD" } else { "SINGLE_RECORD" }));
    }
    let mut vars: Vec<(String, String)> = Vec::new();
    if let Some(model_env) = container.get("Environment").and_then(Value::as_object) {
        vars.extend(model_env.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())));
    }
    vars.extend(plan.environment.iter().cloned());
    env.extend(vars.into_iter().map(|(k, v)| format!("{k}={v}")));

    for index in 0..plan.count {
        let id = crate::hosting::deploy::instance_id(&name, 0, "transform", index);
        let spec = crate::hosting::deploy::serving_spec(
            h,
            crate::hosting::deploy::ServingContainer {
                name: format!("smlocal-tj-{name}-{}", index + 1),
                id: id.clone(),
                image: &image,
                model_dir: &model_dir,
                env: env.clone(),
                labels: &labels,
                instance: &instance,
                network,
                isolated,
            },
        );
        let container = h.docker.create_container(&spec).await.map_err(|e| failed(e.to_string()))?;
        instances.push(Instance { id: id.clone(), container: container.clone(), base: "http://127.0.0.1:0".into() });
        let output = h.docker.attach(&container).await.map_err(|e| failed(e.to_string()))?;
        tokio::spawn(follow(output, store.log_path(&name, &id), id.clone(), sink.clone()));
        h.docker
            .start(&container)
            .await
            .map_err(|e| failed(format!("ClientError: the container cannot start: {e}")))?;
        let base = if isolated {
            let address = h.docker.address_on(&container, network).await.unwrap_or_default();
            format!("http://{address}:{PORT}")
        } else {
            let port = h.docker.published_port(&container, PORT).await.ok().flatten().unwrap_or_default();
            format!("http://127.0.0.1:{port}")
        };
        if let Some(last) = instances.last_mut() {
            last.base = base;
        }
    }
    let healthy = futures::future::join_all(
        instances.iter().map(|i| crate::hosting::deploy::until_healthy(h, &i.container, &i.base, STARTUP_LIMIT)),
    );
    let healthy = tokio::select! {
        all = healthy => all,
        () = stop.cancelled() => return Err(Ended::Stopped),
    };
    if let Some(Err(why)) = healthy.into_iter().find(|r| r.is_err()) {
        return Err(failed(format!("ClientError: the container did not pass the ping health check: {why}")));
    }

    let settings = resolve(h, plan, &instances[0]).await.map_err(|e| failed(format!("ClientError: {e}")))?;
    record.resolved.insert("MaxConcurrentTransforms".into(), json!(settings.concurrency));
    record.resolved.insert("MaxPayloadInMB".into(), json!(settings.max_payload.map_or(0, |b| b >> 20)));
    record
        .resolved
        .insert("BatchStrategy".into(), json!(if settings.multi_record { "MultiRecord" } else { "SingleRecord" }));
    let _ = store.save(record);

    let objects = inputs(h, plan).await.map_err(failed)?;
    progress.objects_total.store(objects.len() as u64, Ordering::Relaxed);
    tracing::info!("{} objects over {} instances, {:?}", objects.len(), instances.len(), settings);
    // Objects spread over the instances in turn; each instance keeps its own requests in flight.
    let lanes = instances.iter().enumerate().map(|(i, instance)| {
        let permits = Arc::new(Semaphore::new(settings.concurrency));
        let work: Vec<_> = objects
            .iter()
            .skip(i)
            .step_by(instances.len())
            .map(|object| {
                Box::pin(transform_object(h, plan, settings, instance, permits.clone(), object, progress, stop))
            })
            .collect();
        async move { futures::stream::iter(work).buffer_unordered(settings.concurrency).try_collect::<Vec<()>>().await }
    });
    // A stop reaches every object, which aborts its upload before the lanes end.
    let phase = std::time::Instant::now();
    let done = futures::future::try_join_all(lanes).await;
    progress.transform_millis.store(phase.elapsed().as_millis() as u64, Ordering::Relaxed);
    if stop.is_cancelled() {
        return Err(Ended::Stopped);
    }
    done.map(drop).map_err(failed)
}

/// Copies a container's output to its stream's log (and to `sink`), line by line.
async fn follow(
    mut output: crate::docker::OutputStream,
    log: std::path::PathBuf,
    instance: String,
    sink: Option<LogSink>,
) {
    if let Some(dir) = log.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let Ok(mut writer) = crate::logs::index::Writer::open(&log) else { return };
    let mut pending = Vec::new();
    while let Some(Ok(chunk)) = output.next().await {
        pending.extend_from_slice(&chunk.bytes);
        let now = (crate::state::record::now() * 1000.0) as i64;
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line = String::from_utf8_lossy(&pending[..end]).trim_end_matches('\r').to_string();
            pending.drain(..=end);
            let _ = writer.write(now, &line);
            if let Some(sink) = &sink {
                sink(&instance, &line);
            }
        }
        let _ = writer.flush();
    }
    if !pending.is_empty() {
        let line = String::from_utf8_lossy(&pending).to_string();
        let _ = writer.write((crate::state::record::now() * 1000.0) as i64, &line);
        if let Some(sink) = &sink {
            sink(&instance, &line);
        }
    }
    let _ = writer.flush();
}

/// The request's settings, else what the container's `/execution-parameters` says, else
/// SageMaker's defaults (1 in flight, `MultiRecord`, 6 MB).
async fn resolve(h: &Hosting, plan: &Plan, instance: &Instance) -> Result<Settings, String> {
    let url = format!("{}/execution-parameters", instance.base);
    let asked = match h.runtime.client().get(&url).timeout(Duration::from_secs(2)).send().await {
        Ok(answer) if answer.status().is_success() => {
            answer.bytes().await.ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(Value::Null)
        }
        _ => Value::Null,
    };
    let concurrency = plan.concurrency.or_else(|| asked["MaxConcurrentTransforms"].as_u64()).unwrap_or(1).max(1);
    let payload_mb = plan.payload_mb.or_else(|| asked["MaxPayloadInMB"].as_u64()).unwrap_or(6);
    let multi_record = plan
        .multi_record
        .or_else(|| asked["BatchStrategy"].as_str().map(|s| s.eq_ignore_ascii_case("MULTI_RECORD")))
        .unwrap_or(true);
    super::plan::check_limits(concurrency, payload_mb)?;
    Ok(Settings {
        concurrency: concurrency as usize,
        max_payload: (payload_mb > 0).then_some((payload_mb as usize) << 20),
        multi_record,
    })
}

/// The objects to transform and their output URIs.
async fn inputs(h: &Hosting, plan: &Plan) -> Result<Vec<InputObject>, String> {
    let output_base = plan.output_path.trim_end_matches('/').to_string();
    let out = |relative: &str| format!("{output_base}/{relative}.out");
    let cannot = |uri: &str, e: &dyn std::fmt::Display| format!("ClientError: cannot read the input {uri}: {e}");
    if plan.manifest {
        let text = h.storage.read(&plan.input_uri).await.map_err(|e| cannot(&plan.input_uri, &e))?;
        let (prefix, keys) = crate::stage::parse_manifest(&text)
            .map_err(|e| format!("ClientError: the manifest {} is not valid: {e}", plan.input_uri))?;
        return Ok(keys.iter().map(|k| InputObject { uri: format!("{prefix}{k}"), output: out(k) }).collect());
    }
    let listed = h.storage.list(&plan.input_uri).await.map_err(|e| cannot(&plan.input_uri, &e))?;
    let location = Location::parse(&plan.input_uri).map_err(|e| cannot(&plan.input_uri, &e))?;
    let prefix = location.key().to_string();
    let objects: Vec<InputObject> = listed
        .into_iter()
        .filter(|o| !o.key.ends_with('/'))
        .map(|o| {
            let relative = o.key.strip_prefix(&prefix).unwrap_or(&o.key).trim_start_matches('/');
            let relative = if relative.is_empty() { o.key.rsplit('/').next().unwrap_or(&o.key) } else { relative };
            InputObject { uri: location.uri_of(&o.key), output: out(relative) }
        })
        .collect();
    if objects.is_empty() {
        return Err(format!("ClientError: no objects under {}", plan.input_uri));
    }
    Ok(objects)
}

/// One object: records, batches, answers in order, one output object. A stop aborts the
/// object's upload.
#[allow(clippy::too_many_arguments)]
async fn transform_object(
    h: &Hosting,
    plan: &Plan,
    settings: Settings,
    instance: &Instance,
    permits: Arc<Semaphore>,
    object: &InputObject,
    progress: &TransformProgress,
    stop: &CancellationToken,
) -> Result<(), String> {
    if stop.is_cancelled() {
        return Err("stopped".into());
    }
    let cannot = |e: &dyn std::fmt::Display| format!("ClientError: cannot read the input {}: {e}", object.uri);
    let mut bytes = h.storage.read(&object.uri).await.map_err(|e| cannot(&e))?;
    if plan.gzip {
        bytes = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut out).map(|_| out)
        })
        .await
        .map_err(|e| cannot(&e))?
        .map_err(|e| cannot(&format!("it is not gzip ({e})")))?;
    }
    progress.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    let bad = |e: &dyn std::fmt::Display| format!("ClientError: {}: {e}", object.uri);
    let ranges = records::split(&bytes, plan.split).map_err(|e| bad(&e))?;
    let originals: Vec<&[u8]> = ranges.iter().map(|r| &bytes[r.clone()]).collect();
    let sent: Vec<Vec<u8>> = match &plan.input_filter {
        Some(filter) => {
            originals.iter().map(|r| filter_record(filter, r, plan)).collect::<Result<_, _>>().map_err(|e| bad(&e))?
        }
        None => Vec::new(),
    };
    let payload = |i: usize| -> &[u8] { if sent.is_empty() { originals[i] } else { &sent[i] } };
    let sizes: Vec<usize> = (0..originals.len()).map(|i| payload(i).len()).collect();
    let batches = match settings.max_payload {
        // 0: the object goes whole, as one streamed request.
        None => std::iter::once(0..originals.len()).collect(),
        Some(max) => records::batches(&sizes, settings.multi_record, Some(max)).map_err(|e| bad(&e))?,
    };
    let mut upload = Upload::start(&h.storage, &object.output)
        .await
        .map_err(|e| format!("ClientError: cannot write {}: {e}", object.output))?;
    let bodies: Vec<(std::ops::Range<usize>, Bytes)> = batches
        .iter()
        .map(|b| {
            let body: Vec<u8> = b.clone().flat_map(|i| payload(i).iter().copied()).collect();
            (b.clone(), Bytes::from(body))
        })
        .collect();
    let uri = object.uri.clone();
    let chunked = settings.max_payload.is_none();
    let requests: Vec<_> = bodies
        .into_iter()
        .map(|(range, body)| {
            let (permits, uri) = (permits.clone(), uri.clone());
            Box::pin(async move {
                let _permit = permits.acquire_owned().await.map_err(|e| e.to_string())?;
                let label = format!("for {uri} (records {}-{})", range.start + 1, range.end);
                post(h, plan, instance, body, chunked)
                    .await
                    .map(|answer| (range, answer))
                    .map_err(|e| format!("{e} {label}"))
            })
        })
        .collect();
    let mut answers = futures::stream::iter(requests).buffered(settings.concurrency);
    loop {
        let next = tokio::select! {
            next = answers.next() => next,
            () = stop.cancelled() => {
                drop(answers);
                upload.abort().await;
                return Err("stopped".into());
            }
        };
        let Some(answer) = next else { break };
        let (range, answer) = match answer {
            Ok(a) => a,
            Err(e) => {
                upload.abort().await;
                return Err(e);
            }
        };
        let chunk = match assemble(plan, &originals[range.clone()], &answer) {
            Ok(c) => c,
            Err(e) => {
                upload.abort().await;
                return Err(bad(&e));
            }
        };
        if let Err(e) = upload.write(&chunk).await {
            upload.abort().await;
            return Err(format!("ClientError: cannot write {}: {e}", object.output));
        }
        progress.records.fetch_add(range.len() as u64, Ordering::Relaxed);
    }
    upload.finish().await.map_err(|e| format!("ClientError: cannot write {}: {e}", object.output))?;
    progress.objects_done.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// One request to the container, retried on a dropped connection or a timeout as
/// `ModelClientConfig.InvocationsMaxRetries` allows; a non-2xx answer is the job's failure.
async fn post(h: &Hosting, plan: &Plan, instance: &Instance, body: Bytes, chunked: bool) -> Result<Bytes, String> {
    let url = format!("{}/invocations", instance.base);
    let mut attempt = 0;
    loop {
        let mut request = h.runtime.client().post(&url).timeout(plan.invocation_timeout);
        if let Some(t) = &plan.content_type {
            request = request.header("content-type", t);
        }
        if let Some(a) = &plan.accept {
            request = request.header("accept", a);
        }
        request = if chunked {
            let chunks: Vec<Result<Bytes, std::io::Error>> =
                body.chunks(1 << 20).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
            request.body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        } else {
            request.body(body.clone())
        };
        match request.send().await {
            Ok(answer) if answer.status().is_success() => {
                return answer.bytes().await.map_err(|e| format!("ClientError: the answer broke off ({e})"));
            }
            Ok(answer) => {
                let status = answer.status().as_u16();
                let text = answer.text().await.unwrap_or_default();
                return Err(format!(
                    "ClientError: Bad HTTP status received from algorithm: {status} (\"{}\")",
                    text.trim()
                ));
            }
            Err(e) if attempt < plan.retries => {
                attempt += 1;
                tracing::warn!("instance {}: {e}; retrying ({attempt} of {})", instance.id, plan.retries);
            }
            Err(e) if e.is_timeout() => {
                return Err(format!(
                    "ClientError: the container did not answer within {} s (ModelClientConfig.InvocationsTimeoutInSeconds)",
                    plan.invocation_timeout.as_secs()
                ));
            }
            Err(e) => return Err(format!("ClientError: the container closed the connection ({e})")),
        }
    }
}

fn is_json(plan: &Plan, record: &[u8]) -> bool {
    match plan.content_type.as_deref() {
        Some(t) if t.contains("json") => true,
        Some(t) if t.contains("csv") => false,
        _ => record.iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|b| *b == b'{' || *b == b'['),
    }
}

fn trim_newline(record: &[u8]) -> &[u8] {
    let mut r = record;
    while let [rest @ .., b'\n' | b'\r'] = r {
        r = rest;
    }
    r
}

/// `InputFilter` applied to one record (its line ending kept).
fn filter_record(filter: &JsonPath, record: &[u8], plan: &Plan) -> Result<Vec<u8>, String> {
    let ending = &record[trim_newline(record).len()..];
    let text = std::str::from_utf8(trim_newline(record)).map_err(|_| "a record is not UTF-8 text".to_string())?;
    let filtered = if is_json(plan, record) {
        let value: Value =
            serde_json::from_str(text).map_err(|e| format!("InputFilter: a record is not JSON ({e})"))?;
        filter.select(&value).map(|v| v.to_string()).unwrap_or_default()
    } else {
        filter.select(&jsonpath::csv_fields(text)).map(|v| jsonpath::csv_line(&v)).unwrap_or_default()
    };
    let mut out = filtered.into_bytes();
    out.extend_from_slice(ending);
    Ok(out)
}

/// What one answer adds to the output: joined with its input records (`JoinSource`),
/// filtered (`OutputFilter`), and ended with a newline (`AssembleWith: Line`).
fn assemble(plan: &Plan, inputs: &[&[u8]], answer: &[u8]) -> Result<Vec<u8>, String> {
    if !plan.join_input && plan.output_filter.is_none() {
        let mut out = answer.to_vec();
        if plan.assemble_line && !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        return Ok(out);
    }
    let text = std::str::from_utf8(answer).map_err(|_| "the answer is not UTF-8 text".to_string())?;
    // One output per input record: the answer's lines when the input is split by line.
    let outputs: Vec<&str> = if inputs.len() == 1 {
        vec![text.trim_end_matches(['\n', '\r'])]
    } else {
        text.lines().filter(|l| !l.trim().is_empty()).collect()
    };
    if plan.join_input && outputs.len() != inputs.len() {
        return Err(format!(
            "JoinSource Input needs one output per input record: {} records sent, {} answered",
            inputs.len(),
            outputs.len()
        ));
    }
    let mut out = Vec::new();
    for (i, output) in outputs.iter().enumerate() {
        let json = is_json(plan, inputs.get(i).copied().unwrap_or(answer));
        let input = inputs.get(i).map(|r| String::from_utf8_lossy(trim_newline(r)).into_owned());
        let joined: Value = match (plan.join_input, input, json) {
            (true, Some(input), true) => {
                let input: Value = serde_json::from_str(&input).unwrap_or(Value::String(input));
                let output: Value = serde_json::from_str(output).unwrap_or_else(|_| Value::String(output.to_string()));
                match input {
                    Value::Object(mut map) => {
                        map.insert("SageMakerOutput".into(), output);
                        Value::Object(map)
                    }
                    other => json!({"SageMakerInput": other, "SageMakerOutput": output}),
                }
            }
            (true, Some(input), false) => jsonpath::csv_fields(&format!("{input},{output}")),
            (_, _, true) => serde_json::from_str(output).unwrap_or_else(|_| Value::String(output.to_string())),
            (_, _, false) => jsonpath::csv_fields(output),
        };
        let filtered = match &plan.output_filter {
            Some(filter) => filter.select(&joined).unwrap_or(Value::Null),
            None => joined,
        };
        let line = if json { filtered.to_string() } else { jsonpath::csv_line(&filtered) };
        out.extend_from_slice(line.as_bytes());
        if plan.assemble_line || outputs.len() > 1 {
            out.push(b'\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(extra: Value) -> Plan {
        let mut request = json!({
            "ModelName": "m",
            "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/in/"}},
                               "SplitType": "Line"},
            "TransformOutput": {"S3OutputPath": "s3://b/out", "AssembleWith": "Line"},
            "TransformResources": {"InstanceType": "ml.c5.large", "InstanceCount": 1},
        });
        for (k, v) in extra.as_object().unwrap() {
            request[k] = v.clone();
        }
        request["TransformInput"]["ContentType"] = extra.get("ContentType").cloned().unwrap_or(json!("text/csv"));
        Plan::of(request.as_object().unwrap()).unwrap()
    }

    #[test]
    fn csv_outputs_join_their_inputs_and_filters_pick_columns() {
        let p = plan(json!({"DataProcessing": {"JoinSource": "Input", "OutputFilter": "$[0,-1]"}}));
        let inputs: Vec<&[u8]> = vec![b"7,1,2\n", b"8,3,4\n"];
        assert_eq!(assemble(&p, &inputs, b"0.5\n0.25\n").unwrap(), b"7,0.5\n8,0.25\n");
        let err = assemble(&p, &inputs, b"0.5\n").unwrap_err();
        assert!(err.contains("2 records sent, 1 answered"), "{err}");
        let p = plan(json!({"DataProcessing": {"InputFilter": "$[1:]"}}));
        let filter = p.input_filter.as_ref().unwrap();
        assert_eq!(filter_record(filter, b"7,1,2\n", &p).unwrap(), b"1,2\n");
    }

    #[test]
    fn answers_end_with_a_newline_once_when_assembled_by_line() {
        let p = plan(json!({}));
        assert_eq!(assemble(&p, &[b"1,2\n"], b"3.5").unwrap(), b"3.5\n");
        assert_eq!(assemble(&p, &[b"1,2\n"], b"3.5\n").unwrap(), b"3.5\n");
    }
}
