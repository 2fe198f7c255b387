//! Hosting (DESIGN §12): models, endpoint configurations and endpoints as SageMaker keeps
//! them, and the containers that serve them. `smlocal serve` and the CLI share one
//! [`Hosting`] over the state directory, so an endpoint deployed from one is seen, invoked
//! and deleted from the other; its containers outlive the process that started them, as an
//! endpoint outlives the API call that created it.
//!
//! - `store.rs`: the records (atomic, `O_EXCL` names) and every path of an endpoint.
//! - `control.rs`: the control-plane operations (Create/Describe/List/Delete, Update), in
//!   AWS's words.
//! - `deploy.rs`: one deployment of a configuration: model data, one container per
//!   instance on a network of its own, `/ping` until healthy; and retiring one.
//! - `model_data.rs`: `ModelDataUrl` / `ModelDataSource` into the endpoint's own folder.
//! - `runtime.rs`: InvokeEndpoint (and its response stream): variant and instance choice,
//!   the forwarded headers, `ModelError`; `eventstream.rs` AWS's event-stream framing.
//! - `logs.rs`: the containers' output as CloudWatch streams of
//!   `/aws/sagemaker/Endpoints/<name>`.

pub(crate) mod control;
pub(crate) mod deploy;
pub(crate) mod eventstream;
pub(crate) mod logs;
pub(crate) mod model_data;
pub(crate) mod runtime;
pub(crate) mod store;

use crate::docker::{Docker, DockerError};
use crate::job::Settings;
use crate::spec::{AwsErrorKind, SpecError};
use crate::state::StateDir;
use crate::storage::Storage;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use store::{HostingStore, HostingStoreError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The label on every container and network of an endpoint (its name); training's cleanup
/// never takes these for a dead job's leftovers.
pub(crate) const ENDPOINT_LABEL: &str = "smlocal.endpoint";
/// The deployment (generation) an endpoint container belongs to.
pub(crate) const GENERATION_LABEL: &str = "smlocal.generation";

/// How endpoints run on this machine.
#[derive(Debug, Clone)]
pub struct HostingConfig {
    pub settings: Settings,
    /// How long a container may take to answer `/invocations` (SageMaker: 60 s).
    pub invocation_timeout: Duration,
    /// SIGTERM to SIGKILL when a container is retired (SageMaker: 30 s).
    pub stop_grace: Duration,
    /// Give endpoint containers this process's AWS credentials and S3 endpoint.
    pub pass_credentials: bool,
}

impl HostingConfig {
    pub fn new(settings: Settings) -> Self {
        HostingConfig {
            settings,
            invocation_timeout: Duration::from_secs(60),
            stop_grace: Duration::from_secs(30),
            pass_credentials: false,
        }
    }
}

/// Why a hosting request was refused; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum HostingError {
    #[error("{0}")]
    Validation(String),
    #[error("{0}")]
    LimitExceeded(String),
    #[error("{0}")]
    InUse(String),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Store(#[from] HostingStoreError),
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Image(#[from] crate::images::ImageError),
}

impl HostingError {
    pub fn aws_kind(&self) -> AwsErrorKind {
        match self {
            HostingError::Validation(_) | HostingError::Spec(_) => AwsErrorKind::Validation,
            HostingError::Docker(DockerError::ImageMissing(_)) => AwsErrorKind::Validation,
            HostingError::Image(e) if e.is_validation() => AwsErrorKind::Validation,
            HostingError::Image(_) => AwsErrorKind::Internal,
            HostingError::LimitExceeded(_) => AwsErrorKind::ResourceLimitExceeded,
            HostingError::InUse(_) => AwsErrorKind::ResourceInUse,
            HostingError::Store(_) | HostingError::Docker(_) => AwsErrorKind::Internal,
        }
    }
}

/// Everything hosting needs, shared by the API server and the CLI.
pub struct Hosting {
    pub(crate) store: HostingStore,
    pub(crate) state: StateDir,
    pub(crate) docker: Docker,
    pub(crate) storage: Storage,
    pub(crate) config: HostingConfig,
    pub(crate) runtime: runtime::Runtime,
    /// Deployments and retirements in the background.
    tasks: TaskTracker,
    /// Cancelled when the process stops: a deployment in progress gives up and cleans up.
    shutdown: CancellationToken,
}

impl Hosting {
    pub fn new(state: StateDir, docker: Docker, storage: Storage, config: HostingConfig) -> Arc<Self> {
        let runtime = runtime::Runtime::new(config.invocation_timeout);
        Arc::new(Hosting {
            store: HostingStore::new(state.root()),
            state,
            docker,
            storage,
            config,
            runtime,
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
        })
    }

    pub(crate) fn home(&self) -> String {
        self.state.root().display().to_string()
    }

    pub(crate) fn region(&self) -> &str {
        &self.config.settings.region
    }

    /// Runs `work` in the background; [`Hosting::settle`] waits for it.
    pub(crate) fn spawn(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(work);
    }

    pub(crate) fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until every deployment and retirement started so far has ended.
    pub async fn settle(&self) {
        self.tasks.close();
        self.tasks.wait().await;
        self.tasks.reopen();
    }

    /// Stops deployments in progress (they fail and remove what they started) and waits for
    /// them. Endpoints in service keep running.
    pub async fn shut_down(&self) {
        self.shutdown.cancel();
        self.settle().await;
    }

    /// A control-plane operation by its AWS name (`CreateEndpoint`) with its request; the
    /// request back when the operation is not a hosting one.
    pub async fn call(self: &Arc<Self>, operation: &str, body: Value) -> Result<Result<Value, HostingError>, Value> {
        Ok(match operation {
            "CreateModel" => self.create_model(body).await,
            "DescribeModel" => self.describe_model(body),
            "ListModels" => self.list_models(body),
            "DeleteModel" => self.delete_model(body),
            "CreateEndpointConfig" => self.create_endpoint_config(body),
            "DescribeEndpointConfig" => self.describe_endpoint_config(body),
            "ListEndpointConfigs" => self.list_endpoint_configs(body),
            "DeleteEndpointConfig" => self.delete_endpoint_config(body),
            "CreateEndpoint" => self.create_endpoint(body),
            "DescribeEndpoint" => self.describe_endpoint(body),
            "ListEndpoints" => self.list_endpoints(body),
            "UpdateEndpoint" => self.update_endpoint(body),
            "DeleteEndpoint" => self.delete_endpoint(body),
            "CreateTransformJob" => self.create_transform_job(body),
            "DescribeTransformJob" => self.describe_transform_job(body),
            "ListTransformJobs" => self.list_transform_jobs(body),
            "StopTransformJob" => self.stop_transform_job(body),
            _ => return Err(body),
        })
    }

    /// Brings every endpoint in line with its containers after a restart (see
    /// [`deploy::reconcile`]).
    pub async fn reconcile(self: &Arc<Self>) {
        self.reconcile_transform_jobs().await;
        deploy::reconcile(self.clone()).await;
    }

    /// InvokeEndpoint from this process (the CLI): the container's content type, the variant
    /// that answered, and the body.
    pub async fn invoke(
        &self,
        endpoint: &str,
        content_type: Option<&str>,
        accept: Option<&str>,
        body: bytes::Bytes,
    ) -> Result<(Option<String>, String, bytes::Bytes), runtime::InvokeError> {
        let mut headers = Vec::new();
        if let Some(t) = content_type {
            headers.push(("content-type", t.to_string()));
        }
        if let Some(a) = accept {
            headers.push(("accept", a.to_string()));
        }
        let invocation = runtime::Invocation { endpoint: endpoint.into(), headers, body, stream: false };
        let answered = self.runtime.invoke(self, invocation).await?;
        match answered.body {
            runtime::AnswerBody::Whole(bytes) => Ok((answered.content_type, answered.variant, bytes)),
            runtime::AnswerBody::Events(_) => Ok((answered.content_type, answered.variant, bytes::Bytes::new())),
        }
    }

    /// An endpoint's log lines, every stream brought up to date first: `(stream, line)`.
    pub async fn endpoint_logs(&self, endpoint: &str) -> Result<Vec<(String, String)>, HostingError> {
        if let Ok(record) = self.endpoint(endpoint) {
            logs::sync_endpoint(self, &record).await;
        }
        let streams = self.store.log_streams(endpoint);
        if streams.is_empty() {
            self.endpoint(endpoint)?;
        }
        let mut lines = Vec::new();
        for (stream, path) in streams {
            let Ok(reader) = crate::logs::index::Reader::open(&path) else { continue };
            let events = reader.events(0, reader.len()).unwrap_or_default();
            lines.extend(events.into_iter().map(|e| (e.timestamp, stream.clone(), e.message)));
        }
        lines.sort_by_key(|(t, _, _)| *t);
        Ok(lines.into_iter().map(|(_, s, m)| (s, m)).collect())
    }

    /// Where each instance of an endpoint answers directly: `(variant, instance, base URL)`.
    pub fn instance_urls(&self, endpoint: &str) -> Vec<(String, String, String)> {
        let record = self.store.load::<store::EndpointRecord>(store::Kind::Endpoint, endpoint).ok().flatten();
        record
            .iter()
            .flat_map(|r| &r.variants)
            .flat_map(|v| v.instances.iter().map(move |i| (v.name.clone(), i.id.clone(), i.url())))
            .collect()
    }

    /// Whether an endpoint of that name has a record (for the CLI's `logs`, which reads
    /// jobs and endpoints).
    pub fn has_endpoint(&self, name: &str) -> bool {
        matches!(self.store.load::<store::EndpointRecord>(store::Kind::Endpoint, name), Ok(Some(_)))
    }
}

/// An `flock` held by the one process acting on an endpoint (deploying, updating, deleting):
/// another process finds it taken; one that died has let it go.
pub(crate) struct OwnerLock(#[allow(dead_code)] std::fs::File);

impl OwnerLock {
    pub(crate) fn try_take(store: &HostingStore, endpoint: &str) -> Option<OwnerLock> {
        let dir = store.endpoint_dir(endpoint);
        std::fs::create_dir_all(&dir).ok()?;
        let file =
            std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(".owner")).ok()?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).ok()?;
        Some(OwnerLock(file))
    }
}
