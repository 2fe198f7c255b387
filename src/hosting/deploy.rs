//! Deployments: a configuration's variants started as containers (one per instance, each
//! on its own host port, all of one deployment on a network of their own), healthy once
//! `GET /ping` answers 200; and retiring them (logs kept, SIGTERM, 30 s grace, SIGKILL,
//! containers, network and model folders removed). The endpoint's transitions —
//! `Creating → InService | Failed`, `Updating → InService`, `Deleting → gone` — are made
//! here by the one process holding the endpoint's [`OwnerLock`].

use super::model_data::{self, ModelData};
use super::store::{Definition, EndpointRecord, EndpointStatus, Instance, Kind, Variant};
use super::{ENDPOINT_LABEL, GENERATION_LABEL, Hosting, OwnerLock};
use crate::docker::{ContainerSpec, ContainerState, HOME_LABEL};
use crate::resources;
use serde_json::Value;
use sha2::Digest;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// `GET /ping` must answer within this, each time.
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// Between pings while a container starts.
const PING_EVERY: Duration = Duration::from_millis(100);
/// SageMaker's default for `ContainerStartupHealthCheckTimeoutInSeconds`.
const STARTUP_LIMIT: Duration = Duration::from_secs(240);
/// The port every serving container listens on.
pub(crate) const CONTAINER_PORT: u16 = 8080;
/// Lines of a failed container's output quoted in `FailureReason`.
const TAIL_LINES: usize = 5;

fn network_name(endpoint: &str, generation: u32) -> String {
    format!("smlocal-ep-{endpoint}-{generation}")
}

/// An EC2-style instance ID, unique per endpoint, deployment, variant and index.
pub(crate) fn instance_id(endpoint: &str, generation: u32, variant: &str, index: usize) -> String {
    let digest =
        sha2::Sha256::digest(format!("{endpoint}/{generation}/{variant}/{index}/{}", crate::state::record::now()));
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("i-{}", &hex[..17])
}

/// What one variant of a configuration runs.
struct Planned {
    /// The model's EnableNetworkIsolation: its containers get an internal network.
    isolated: bool,
    name: String,
    model: Definition,
    container: Value,
    image: String,
    weight: f64,
    instance: resources::InstanceSpec,
    count: usize,
    startup_limit: Duration,
}

fn plan(h: &Hosting, config: &Definition) -> Result<Vec<Planned>, String> {
    let variants = config.request.get("ProductionVariants").and_then(Value::as_array).cloned().unwrap_or_default();
    variants
        .iter()
        .map(|v| {
            let name = v.get("VariantName").and_then(Value::as_str).unwrap_or("AllTraffic").to_string();
            let model_name = v.get("ModelName").and_then(Value::as_str).unwrap_or_default();
            let model = h.definition(Kind::Model, model_name).map_err(|e| format!("Production variant {name}: {e}"))?;
            let container = super::control::model_containers(&Value::Object(model.request.clone()))
                .first()
                .map(|c| (*c).clone())
                .unwrap_or_default();
            let image = container.get("Image").and_then(Value::as_str).unwrap_or_default().to_string();
            let instance = h.variant_resources(v).map_err(|e| format!("Production variant {name}: {e}"))?;
            let count = if v.get("ServerlessConfig").is_some() {
                1
            } else {
                v.get("InitialInstanceCount").and_then(Value::as_u64).unwrap_or(1).max(1) as usize
            };
            let startup_limit = v
                .get("ContainerStartupHealthCheckTimeoutInSeconds")
                .and_then(Value::as_u64)
                .map_or(STARTUP_LIMIT, Duration::from_secs);
            Ok(Planned {
                isolated: model.request.get("EnableNetworkIsolation").and_then(Value::as_bool).unwrap_or(false),
                name,
                model,
                container,
                image,
                weight: v.get("InitialVariantWeight").and_then(Value::as_f64).unwrap_or(1.0),
                instance,
                count,
                startup_limit,
            })
        })
        .collect()
}

/// A deployment that did not become healthy: why (as `FailureReason` says it).
struct Failed(String);

/// Starts every variant of `config` as deployment `generation` and waits until all are
/// healthy. On failure what was started is retired before returning.
async fn deploy(h: &Hosting, endpoint: &str, generation: u32, config: &Definition) -> Result<Vec<Variant>, Failed> {
    let planned = plan(h, config).map_err(Failed)?;
    let network = network_name(endpoint, generation);
    let labels = HashMap::from([
        (ENDPOINT_LABEL.to_string(), endpoint.to_string()),
        (GENERATION_LABEL.to_string(), generation.to_string()),
        (HOME_LABEL.to_string(), h.home()),
    ]);
    let mut started: Vec<Variant> = Vec::new();
    // A network-isolated model's containers get an internal network (no route out); this
    // machine still reaches them at their own addresses on it, which ports cannot be
    // published from.
    let isolated = planned.iter().any(|p| p.isolated);
    let result = async {
        h.docker
            .create_network(&network, labels.clone(), isolated)
            .await
            .map_err(|e| Failed(format!("cannot make the endpoint's network: {e}")))?;
        for variant in &planned {
            started.push(start_variant(h, endpoint, generation, variant, &network, &labels, isolated).await?);
        }
        let checks = planned.iter().zip(&started).flat_map(|(plan, variant)| {
            variant.instances.iter().map(move |instance| wait_healthy(h, plan, instance))
        });
        let shutdown = h.shutdown_token();
        tokio::select! {
            results = futures::future::join_all(checks) => results.into_iter().collect::<Result<Vec<()>, Failed>>(),
            () = shutdown.cancelled() => Err(Failed("smlocal stopped while the endpoint was being deployed; create it again".into())),
        }?;
        Ok(())
    }
    .await;
    match result {
        Ok(()) => Ok(started),
        Err(failed) => {
            retire(h, endpoint, generation, &started).await;
            Err(failed)
        }
    }
}

async fn start_variant(
    h: &Hosting,
    endpoint: &str,
    generation: u32,
    plan: &Planned,
    network: &str,
    labels: &HashMap<String, String>,
    isolated: bool,
) -> Result<Variant, Failed> {
    let data = ModelData::of(&plan.container);
    let model_dir = h.store.model_dir(endpoint, generation, &plan.name);
    let _ = std::fs::remove_dir_all(&model_dir);
    let timeout = Duration::from_secs(3600);
    let fetched = tokio::time::timeout(timeout, model_data::fetch(&h.storage, &data, &model_dir)).await;
    match fetched {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(Failed(format!(
                "Failed to download model data for container \"primary\" from URL: \"{}\". Please ensure that there is an object located at the URL and that the role passed to CreateModel has permissions to download the object. ({e})",
                data.uri().unwrap_or_default()
            )));
        }
        Err(_) => return Err(Failed("the model data took over an hour to download".into())),
    }
    let local =
        crate::images::resolve(&h.docker, h.state.root(), &plan.image).await.map_err(|e| Failed(e.to_string()))?;
    let resolved = h.docker.image_id(&local.image).await.map_err(|e| Failed(e.to_string()))?;
    let mut env: Vec<String> = Vec::new();
    if let Some(vars) = plan.container.get("Environment").and_then(Value::as_object) {
        env.extend(vars.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())));
    }
    let mut instances = Vec::new();
    for index in 0..plan.count {
        let id = instance_id(endpoint, generation, &plan.name, index);
        let spec = serving_spec(
            h,
            ServingContainer {
                name: format!("smlocal-ep-{endpoint}-{generation}-{}-{}", plan.name, index + 1),
                id: id.clone(),
                image: &local.image,
                model_dir: &model_dir,
                env: env.clone(),
                labels,
                instance: &plan.instance,
                network,
                isolated,
            },
        );
        let container = h.docker.create_container(&spec).await.map_err(|e| Failed(e.to_string()))?;
        // Recorded before it starts, so a failure from here on retires it too.
        let mut instance = Instance { id, container, port: 0, address: "127.0.0.1".into() };
        let begun = h.docker.start(&instance.container).await;
        if let Err(e) = begun {
            let _ = h.docker.remove_container(&instance.container).await;
            return Err(Failed(format!(
                "The primary container for production variant {} could not start: {e}",
                plan.name
            )));
        }
        locate(h, &mut instance, network, isolated).await;
        instances.push(instance);
    }
    Ok(Variant {
        name: plan.name.clone(),
        model_name: plan.model.name.clone(),
        image: plan.image.clone(),
        resolved_image: resolved,
        weight: plan.weight,
        instance_type: plan.instance.instance_type.clone(),
        instances,
    })
}

/// One serving container to make: an endpoint's instance or a transform job's.
pub(crate) struct ServingContainer<'a> {
    pub name: String,
    pub id: String,
    pub image: &'a str,
    pub model_dir: &'a std::path::Path,
    /// The model's (and the job's) own variables, `NAME=VALUE`.
    pub env: Vec<String>,
    pub labels: &'a HashMap<String, String>,
    pub instance: &'a resources::InstanceSpec,
    pub network: &'a str,
    pub isolated: bool,
}

/// `IMAGE serve` with the model read-only at /opt/ml/model, the instance's caps (scaled to
/// what the machine leaves beside its reserve), the platform's variables and, when asked,
/// this process's credentials; its 8080 published unless the model is isolated.
pub(crate) fn serving_spec(h: &Hosting, c: ServingContainer<'_>) -> ContainerSpec {
    let host = &h.config.settings.host;
    let usable = resources::usable_memory(host, h.config.settings.reserve);
    let limits = resources::limits(c.instance, host, (usable as f64 / c.instance.memory_bytes as f64).min(1.0));
    let mut env: Vec<String> = vec![
        format!("AWS_REGION={}", h.region()),
        // Credentials reach a container only when passed, never from a metadata service.
        "AWS_EC2_METADATA_DISABLED=true".into(),
    ];
    if h.config.pass_credentials {
        env.extend(h.storage.credentials().into_iter().map(|(k, v)| format!("{k}={v}")));
        if let Some(url) = h.storage.endpoint().filter(|e| crate::relay::loopback_target(e).is_none()) {
            env.push(format!("AWS_ENDPOINT_URL_S3={url}"));
        }
    }
    env.extend(c.env);
    ContainerSpec {
        name: c.name,
        hostname: c.id.clone(),
        alias: c.id,
        image: c.image.to_string(),
        entrypoint: None,
        args: vec!["serve".into()],
        env,
        binds: vec![format!("{}:/opt/ml/model:ro", c.model_dir.display())],
        labels: c.labels.clone(),
        memory_bytes: limits.memory_bytes as i64,
        nano_cpus: limits.nano_cpus,
        cpuset: None,
        network: c.network.to_string(),
        pids_limit: crate::run::cluster::pids_limit(c.instance.vcpu),
        publish: (!c.isolated).then_some(CONTAINER_PORT),
    }
}

/// Where a started instance answers: its published port, or its own address when isolated.
pub(crate) async fn locate(h: &Hosting, instance: &mut Instance, network: &str, isolated: bool) {
    if isolated {
        if let Some(address) = h.docker.address_on(&instance.container, network).await {
            instance.address = address;
            instance.port = CONTAINER_PORT;
        }
    } else {
        instance.address = "127.0.0.1".into();
        instance.port =
            h.docker.published_port(&instance.container, CONTAINER_PORT).await.ok().flatten().unwrap_or_default();
    }
}

/// Pings the instance until it answers 200, its container exits, or the startup limit.
async fn wait_healthy(h: &Hosting, plan: &Planned, instance: &Instance) -> Result<(), Failed> {
    match until_healthy(h, &instance.container, &instance.url(), plan.startup_limit).await {
        Ok(()) => {
            tracing::info!("instance {} of {} is healthy", instance.id, plan.name);
            Ok(())
        }
        Err(detail) => Err(Failed(format!(
            "The primary container for production variant {} did not pass the ping health check. Please check CloudWatch logs for this endpoint. ({detail})",
            plan.name
        ))),
    }
}

/// Pings a serving container on `port` until it answers 200 (Ok), or says why not: it
/// exited or was removed, or `limit` passed; with the container's last lines.
pub(crate) async fn until_healthy(h: &Hosting, container: &str, base: &str, limit: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + limit;
    let url = format!("{base}/ping");
    let located = !base.ends_with(":0");
    let failed = |detail: String| async move {
        let tail = h.docker.logged_lines(container, 0, Some(TAIL_LINES)).await.unwrap_or_default();
        let lines: Vec<String> = tail.into_iter().map(|(_, l)| l).collect();
        let tail = if lines.is_empty() { String::new() } else { format!("; its last lines: {}", lines.join(" | ")) };
        format!("{detail}{tail}")
    };
    loop {
        if located
            && let Ok(answer) = h.runtime.client().get(&url).timeout(PING_TIMEOUT).send().await
            && answer.status() == reqwest::StatusCode::OK
        {
            return Ok(());
        }
        match h.docker.state(container).await {
            Ok(ContainerState::Running) => {}
            Ok(ContainerState::Stopped(exit)) => {
                return Err(failed(format!("the container exited with code {} before it was healthy", exit.code)).await);
            }
            Ok(ContainerState::Gone) => return Err(failed("the container was removed".into()).await),
            Err(e) => return Err(failed(e.to_string()).await),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(failed(format!(
                "GET /ping did not answer 200 within {} s, the variant's ContainerStartupHealthCheckTimeoutInSeconds",
                limit.as_secs()
            ))
            .await);
        }
        tokio::time::sleep(PING_EVERY).await;
    }
}

/// Retires a deployment: its logs kept, its containers stopped (SIGTERM, grace, SIGKILL)
/// and removed with its network and model folders. Goes on past what it cannot remove.
pub(crate) async fn retire(h: &Hosting, endpoint: &str, generation: u32, variants: &[Variant]) {
    let stops =
        variants.iter().flat_map(|v| v.instances.iter().map(move |i| (v, i))).map(|(variant, instance)| async move {
            super::logs::sync(h, endpoint, &variant.name, instance).await;
            if let Err(e) = h.docker.stop(&instance.container, h.config.stop_grace).await {
                tracing::warn!("{e}");
            }
            super::logs::sync(h, endpoint, &variant.name, instance).await;
            if let Err(e) = h.docker.remove_container(&instance.container).await {
                tracing::warn!("{e}");
            }
        });
    futures::future::join_all(stops).await;
    // Containers of this deployment that no record names (a start cut short).
    let generation_text = generation.to_string();
    let labels = [(ENDPOINT_LABEL, endpoint), (GENERATION_LABEL, generation_text.as_str())];
    for id in h.docker.containers_matching(&labels, &h.home()).await.unwrap_or_default() {
        let _ = h.docker.remove_container(&id).await;
    }
    if let Err(e) = h.docker.remove_network(&network_name(endpoint, generation)).await {
        tracing::warn!("{e}");
    }
    for variant in variants {
        let _ = std::fs::remove_dir_all(h.store.model_dir(endpoint, generation, &variant.name));
    }
}

fn save(h: &Hosting, record: &EndpointRecord) {
    if let Err(e) = h.store.save_endpoint(record) {
        tracing::error!(endpoint = %record.name, "{e}");
    }
}

/// CreateEndpoint's work: deployment 1, then `InService` or `Failed`.
pub(crate) async fn create(h: Arc<Hosting>, name: String) {
    let span = tracing::info_span!("endpoint", name = %name);
    async {
        let Some(_owner) = OwnerLock::try_take(&h.store, &name) else { return };
        let Ok(mut record) = h.endpoint(&name) else { return };
        let outcome = match h.definition(Kind::EndpointConfig, &record.config_name) {
            Ok(config) => deploy(&h, &name, 1, &config).await,
            Err(e) => Err(Failed(e.to_string())),
        };
        // Only the lock holder writes the record now: the copy read above is current.
        record.generation = 1;
        match outcome {
            Ok(variants) => {
                record.variants = variants;
                record.set_status(EndpointStatus::InService);
                tracing::info!("InService");
            }
            Err(Failed(reason)) => {
                tracing::warn!("Failed: {reason}");
                record.failure_reason = Some(reason);
                record.set_status(EndpointStatus::Failed);
            }
        }
        save(&h, &record);
    }
    .instrument(span)
    .await
}

/// UpdateEndpoint's work: the new configuration deployed beside the old one; once it is
/// healthy the record switches to it (new requests go there), the requests in flight on
/// the old instances finish, and the old deployment is retired. A new deployment that
/// fails leaves the old one serving, `InService` with the reason, as SageMaker rolls back.
pub(crate) async fn update(h: Arc<Hosting>, name: String) {
    let span = tracing::info_span!("endpoint", name = %name);
    async {
        let Some(_owner) = OwnerLock::try_take(&h.store, &name) else { return };
        let Ok(mut record) = h.endpoint(&name) else { return };
        let Some(config_name) = record.pending_config.take() else { return };
        let generation = record.generation + 1;
        let outcome = match h.definition(Kind::EndpointConfig, &config_name) {
            Ok(config) => deploy(&h, &name, generation, &config).await,
            Err(e) => Err(Failed(e.to_string())),
        };
        match outcome {
            Ok(variants) => {
                let old = std::mem::replace(&mut record.variants, variants);
                let old_generation = record.generation;
                record.generation = generation;
                record.config_name = config_name;
                record.set_status(EndpointStatus::InService);
                save(&h, &record);
                tracing::info!("switched to deployment {generation}; retiring {old_generation}");
                h.runtime.drain(&old, h.config.invocation_timeout).await;
                retire(&h, &name, old_generation, &old).await;
            }
            Err(Failed(reason)) => {
                tracing::warn!("update failed, the previous configuration keeps serving: {reason}");
                record.failure_reason = Some(reason);
                record.set_status(EndpointStatus::InService);
                save(&h, &record);
            }
        }
    }
    .instrument(span)
    .await
}

/// DeleteEndpoint's work: every deployment retired, then the record removed (its logs stay).
pub(crate) async fn delete(h: Arc<Hosting>, name: String) {
    let span = tracing::info_span!("endpoint", name = %name);
    async {
        let Some(owner) = OwnerLock::try_take(&h.store, &name) else { return };
        let Ok(record) = h.endpoint(&name) else { return };
        h.runtime.drain(&record.variants, Duration::from_secs(5)).await;
        retire(&h, &name, record.generation, &record.variants).await;
        // Anything of older deployments still labelled with this endpoint.
        for id in h.docker.containers_matching(&[(ENDPOINT_LABEL, &name)], &h.home()).await.unwrap_or_default() {
            let _ = h.docker.remove_container(&id).await;
        }
        drop(owner);
        if let Err(e) = h.store.remove(Kind::Endpoint, &name) {
            tracing::error!("{e}");
        }
        tracing::info!("deleted");
    }
    .instrument(span)
    .await
}

/// After a restart (of `smlocal serve`, or of the machine): every endpoint as its containers
/// are now. Transitions whose process died end (`Creating` → `Failed`, `Updating` → the old
/// deployment `InService`, `Deleting` finished); an `InService` endpoint whose containers
/// stopped is started again and pinged; one whose containers are gone is `Failed` with the
/// reason. Never silently gone.
pub(crate) async fn reconcile(h: Arc<Hosting>) {
    let records: Vec<EndpointRecord> = match h.store.list(Kind::Endpoint) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("{e}");
            return;
        }
    };
    for record in records {
        let name = record.name.clone();
        let span = tracing::info_span!("endpoint", name = %name);
        let h = h.clone();
        async move {
            let Some(owner) = OwnerLock::try_take(&h.store, &name) else { return };
            let mut record = record;
            match record.status {
                EndpointStatus::Deleting => {
                    drop(owner);
                    delete(h.clone(), name.clone()).await;
                }
                EndpointStatus::Creating => {
                    retire(&h, &name, 1, &[]).await;
                    record.failure_reason =
                        Some("smlocal stopped while the endpoint was being created; delete it and create it again".into());
                    record.set_status(EndpointStatus::Failed);
                    save(&h, &record);
                    tracing::warn!("was Creating when its smlocal process ended: Failed");
                }
                EndpointStatus::Updating => {
                    retire(&h, &name, record.generation + 1, &[]).await;
                    record.pending_config = None;
                    record.failure_reason =
                        Some("smlocal stopped while the endpoint was being updated; the previous configuration keeps serving".into());
                    record.set_status(EndpointStatus::InService);
                    save(&h, &record);
                    revive(&h, &mut record).await;
                }
                EndpointStatus::InService => revive(&h, &mut record).await,
                EndpointStatus::Failed => {}
            }
        }
        .instrument(span)
        .await;
    }
}

/// Checks an in-service endpoint's containers, restarting stopped ones.
async fn revive(h: &Hosting, record: &mut EndpointRecord) {
    let mut lost = Vec::new();
    let mut changed = false;
    for variant in &mut record.variants {
        for instance in &mut variant.instances {
            match h.docker.state(&instance.container).await {
                Ok(ContainerState::Running) => {}
                Ok(ContainerState::Stopped(_)) => {
                    tracing::info!("instance {} of {} had stopped: starting it again", instance.id, variant.name);
                    if let Err(e) = h.docker.start(&instance.container).await {
                        lost.push(format!(
                            "instance {} of production variant {} cannot start again: {e}",
                            instance.id, variant.name
                        ));
                        continue;
                    }
                    // The engine may publish it on another port (or address) this time.
                    let network = network_name(&record.name, record.generation);
                    let isolated = instance.address != "127.0.0.1";
                    locate(h, instance, &network, isolated).await;
                    changed = true;
                }
                Ok(ContainerState::Gone) => lost.push(format!(
                    "the container of instance {} of production variant {} is gone (removed outside smlocal)",
                    instance.id, variant.name
                )),
                Err(e) => lost.push(e.to_string()),
            }
        }
    }
    if !lost.is_empty() {
        tracing::warn!("Failed: {}", lost.join("; "));
        record.failure_reason = Some(format!("{}; delete the endpoint and create it again", lost.join("; ")));
        record.set_status(EndpointStatus::Failed);
        save(h, record);
    } else if changed {
        save(h, record);
    }
}
