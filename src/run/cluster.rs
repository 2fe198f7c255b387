//! The Docker resources of one job: its network, the relay its containers reach S3 through,
//! the overlay volumes of its channels and one container per host. [`Cluster`] owns them:
//! [`Cluster::remove`] is the happy path, and its `Drop` is the safety net that removes
//! whatever a path that returned early left behind (as testcontainers' containers do).

use super::supervise::Hosts;
use super::{RunError, RunOptions};
use crate::docker::{ContainerSpec, Docker, DockerError, Exit, HOME_LABEL, JOB_LABEL};
use crate::job::{HostPlan, Job};
use crate::logs;
use crate::metrics::Recorder;
use crate::relay::Relay;
use crate::stage::{ChannelMount, HostTree};
use crate::state::StateDir;
use crate::storage::Storage;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;

/// One host's running container.
struct Container {
    host: String,
    id: String,
}

/// A channel mounted from the cache as an overlay volume.
struct Volume {
    host: String,
    channel: String,
    name: String,
    /// Where it appears in the container.
    target: String,
}

pub(crate) struct Cluster<'a> {
    job: &'a Job,
    /// The local image the hosts start from (the request's, or what the image map names).
    image: String,
    docker: Docker,
    storage: Storage,
    options: &'a RunOptions,
    labels: HashMap<String, String>,
    network: Option<String>,
    volumes: Vec<Volume>,
    /// In the job's host order, once started.
    containers: Vec<Container>,
    /// Forwards the containers' S3 traffic to an endpoint on this machine's loopback.
    relay: Option<Relay>,
}

impl<'a> Cluster<'a> {
    /// Nothing is created until [`Cluster::start`]; `state_root` labels every object so
    /// `smlocal cleanup` finds it again and never touches another state directory's.
    pub(crate) fn new(
        job: &'a Job,
        image: String,
        docker: &Docker,
        storage: &Storage,
        options: &'a RunOptions,
        state_root: &Path,
    ) -> Self {
        let labels = HashMap::from([
            (JOB_LABEL.to_string(), job.name.clone()),
            (HOME_LABEL.to_string(), state_root.display().to_string()),
        ]);
        Cluster {
            job,
            image,
            docker: docker.clone(),
            storage: storage.clone(),
            options,
            labels,
            network: None,
            volumes: Vec::new(),
            containers: Vec::new(),
            relay: None,
        }
    }

    /// Mounts the channels, creates the network (once) and one container per host, then
    /// starts them all at once, as a cluster's hosts boot together. Returns the log
    /// followers. Channels are overlays of the cache where the engine mounts them; an engine
    /// that accepts an overlay volume but fails only when it mounts it (a kernel without
    /// overlay, a VM that cannot see the layers) gets copies, and the hosts start again.
    pub(crate) async fn start(
        &mut self,
        mounts: &[ChannelMount],
        work: &Path,
        state: &StateDir,
        recorder: &Arc<Mutex<Recorder>>,
    ) -> Result<Vec<JoinHandle<()>>, RunError> {
        self.attach(mounts, work, true).await?;
        match self.start_hosts(work, state, recorder).await {
            // (A container that cannot start may be an overlay the engine cannot mount.)
            Err(e @ (RunError::Docker(_) | RunError::CannotStart { .. })) if !self.volumes.is_empty() => {
                tracing::info!("copying the channels instead of mounting them from the cache: {e}");
                self.reset().await;
                self.attach(mounts, work, false).await?;
                self.start_hosts(work, state, recorder).await
            }
            started => started,
        }
    }

    /// Puts each cached channel in front of its host as an overlay volume; where the engine
    /// cannot mount overlays (another kernel, a remote engine), each host gets a copy instead.
    async fn attach(&mut self, mounts: &[ChannelMount], work: &Path, mut overlays: bool) -> Result<(), RunError> {
        for m in mounts {
            if overlays {
                let name = format!("smlocal-{}-{}-{}-{}", self.job.name, m.host, m.channel, unique_suffix());
                // Overlay's mount options are split at ',' and ':': such a path cannot be a layer.
                let usable = [&m.lower, &m.upper, &m.scratch].iter().all(|p| !p.to_string_lossy().contains([',', ':']));
                if !usable {
                    tracing::info!(
                        "copying the channels instead of mounting them from the cache: a path with ',' or ':' cannot be an overlay layer"
                    );
                    overlays = false;
                } else {
                    match self
                        .docker
                        .create_overlay_volume(&name, &m.lower, &m.upper, &m.scratch, self.labels.clone())
                        .await
                    {
                        Ok(()) => {
                            self.volumes.push(Volume {
                                host: m.host.clone(),
                                channel: m.channel.clone(),
                                name,
                                target: m.target.clone(),
                            });
                            continue;
                        }
                        Err(e) => {
                            tracing::info!("copying the channels instead of mounting them from the cache: {e}");
                            overlays = false;
                        }
                    }
                }
            }
            m.copy_into(work)?;
        }
        Ok(())
    }

    async fn start_hosts(
        &mut self,
        work: &Path,
        state: &StateDir,
        recorder: &Arc<Mutex<Recorder>>,
    ) -> Result<Vec<JoinHandle<()>>, RunError> {
        let job = self.job;
        let suffix = unique_suffix();
        let network = self.network(&suffix).await?;
        let s3_endpoint = self.container_s3_endpoint(&network).await;
        let specs: Vec<ContainerSpec> =
            job.hosts.iter().map(|h| self.container_spec(h, work, &network, &suffix, s3_endpoint.as_deref())).collect();
        // Created concurrently; every one that was created is kept for clean-up, even when
        // another failed.
        let created = futures::future::join_all(specs.iter().map(|spec| self.docker.create_container(spec))).await;
        let mut first_error = None;
        for (host, result) in job.hosts.iter().zip(created) {
            match result {
                Ok(id) => self.containers.push(Container { host: host.name.clone(), id }),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e.into());
        }
        // Attached before they start, so their output is read from its first byte.
        let outputs = futures::future::try_join_all(self.containers.iter().map(|c| self.docker.attach(&c.id))).await?;
        let started = futures::future::join_all(self.containers.iter().map(|c| self.docker.start(&c.id))).await;
        for (c, result) in self.containers.iter().zip(started) {
            match result {
                Ok(()) => {}
                Err(DockerError::CannotStart { message, .. }) => {
                    return Err(RunError::CannotStart { host: c.host.clone(), message });
                }
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(hook) = &self.options.on_start {
            self.containers.iter().for_each(|c| hook(&c.host, &c.id));
        }
        Ok(self
            .containers
            .iter()
            .zip(outputs)
            .map(|(c, output)| {
                // Inside the job's span (the caller's), tagged with the host.
                let span = tracing::info_span!("host", host = %c.host);
                let follow = logs::follow(
                    output,
                    c.host.clone(),
                    state.log_path(&job.name, &c.host),
                    self.options.log.clone(),
                    recorder.clone(),
                );
                tokio::spawn(tracing::Instrument::instrument(follow, span))
            })
            .collect())
    }

    /// The network the hosts join: made once per job and kept across restarts.
    async fn network(&mut self, suffix: &str) -> Result<String, RunError> {
        let job = self.job;
        Ok(match &self.network {
            Some(name) => name.clone(),
            // Isolation is never "no network" even for one host: the container must resolve
            // its own name (the toolkit waits for every host's) and have the `eth0` that
            // resourceconfig.json names (NCCL and MPI bind to it). An internal network gives
            // both, and no way out.
            // One host has no peers to resolve: Docker's default bridge gives it eth0 and the
            // outside world as an instance has, without the ~0.2 s of making and removing a
            // network (a third of a trivial job).
            // Unless the job gets a relay to this machine's loopback: then it needs a network
            // of its own, the only one the relay serves.
            None if job.hosts.len() == 1
                && !job.network_isolation
                && !self.needs_relay()
                && self.docker.has_default_bridge().await =>
            {
                "bridge".to_string()
            }
            None => {
                // Isolation keeps the network internal: hosts reach each other and nothing else.
                let name = format!("smlocal-{}-{suffix}", job.name);
                self.docker.create_network(&name, self.labels.clone(), job.network_isolation).await?;
                self.network = Some(name.clone());
                name
            }
        })
    }

    /// Whether the containers reach S3 through a relay (their credentials are passed and the
    /// endpoint is on this machine's loopback, which a container cannot reach).
    fn needs_relay(&self) -> bool {
        self.options.pass_credentials
            && !self.job.network_isolation
            && self.storage.endpoint().is_some_and(|e| crate::relay::loopback_target(e).is_some())
    }

    /// The S3 endpoint containers get with the credentials (`--pass-aws-credentials`): this
    /// process's own, or a relay to it when it is on the loopback. None means AWS itself.
    async fn container_s3_endpoint(&mut self, network: &str) -> Option<String> {
        if !self.options.pass_credentials {
            return None;
        }
        let endpoint = self.storage.endpoint()?.to_string();
        if crate::relay::loopback_target(&endpoint).is_none() {
            return Some(endpoint);
        }
        if let Some(relay) = &self.relay {
            return Some(relay.url.clone());
        }
        if !self.needs_relay() {
            // An isolated job has no way to this machine's loopback.
            return None;
        }
        let Some((gateway, Some(subnet))) = self.docker.gateway(network).await else {
            tracing::warn!("the network {network} has no gateway address: containers cannot reach {endpoint}");
            return None;
        };
        match Relay::start(gateway, &endpoint, subnet).await {
            Ok(relay) => {
                tracing::info!("containers reach {endpoint} as {}", relay.url);
                let url = relay.url.clone();
                self.relay = Some(relay);
                Some(url)
            }
            Err(e) => {
                tracing::warn!("cannot relay {endpoint} to the containers on {gateway}: {e}");
                None
            }
        }
    }

    fn container_spec(
        &self,
        host: &HostPlan,
        work: &Path,
        network: &str,
        suffix: &str,
        s3_endpoint: Option<&str>,
    ) -> ContainerSpec {
        let job = self.job;
        let tree = HostTree::new(work, &host.name);
        let mut env = vec![
            format!("TRAINING_JOB_NAME={}", job.name),
            format!("TRAINING_JOB_ARN={}", job.arn),
            format!("AWS_REGION={}", job.region),
            // No AWS SDK in a container may find this machine's own credentials through an
            // EC2 instance's metadata service: credentials arrive only when passed.
            "AWS_EC2_METADATA_DISABLED=true".to_string(),
        ];
        if self.options.pass_credentials {
            env.extend(self.storage.credentials().into_iter().map(|(key, value)| format!("{key}={value}")));
            // Both names: newer AWS SDKs read the first, older scripts and tools the second.
            if let Some(url) = s3_endpoint {
                env.push(format!("AWS_ENDPOINT_URL_S3={url}"));
                env.push(format!("S3_ENDPOINT_URL={url}"));
            }
        }
        env.extend(job.environment.iter().map(|(k, v)| format!("{k}={v}")));
        let mut binds = vec![format!("{}:/opt/ml", tree.root().display())];
        // A FastFile channel is read-only, as on SageMaker (its writes fail with EROFS):
        // mounted so whether it is an overlay of the cache or a copy in the host's tree.
        let fast_file = |channel: &str| {
            job.channels.iter().any(|c| c.name == channel && c.input_mode == crate::spec::InputMode::FastFile)
        };
        for v in self.volumes.iter().filter(|v| v.host == host.name) {
            let ro = if fast_file(&v.channel) { ":ro" } else { "" };
            binds.push(format!("{}:{}{ro}", v.name, v.target));
        }
        for c in job.channels.iter().filter(|c| c.input_mode == crate::spec::InputMode::FastFile) {
            if crate::stage::serves(c, host) && !self.volumes.iter().any(|v| v.host == host.name && v.channel == c.name)
            {
                binds.push(format!("{}:/opt/ml/input/data/{}:ro", tree.channel(&c.name).display(), c.name));
            }
        }
        // The default LocalPath is already inside the /opt/ml mount.
        if let Some(c) = &job.checkpoint
            && c.local_path.trim_end_matches('/') != crate::job::DEFAULT_CHECKPOINT_PATH
        {
            binds.push(format!("{}:{}", tree.checkpoints().path().display(), c.local_path));
        }
        if let Some(t) = &job.tensorboard
            && t.local_path != crate::job::DEFAULT_TENSORBOARD_PATH
        {
            binds.push(format!("{}:{}", tree.tensorboard().path().display(), t.local_path));
        }
        // Pinned to the instance's vCPUs, the list of online CPUs (written by staging) to match.
        let cpuset = host.cores();
        if cpuset.is_some() {
            binds.push(format!("{}:/sys/devices/system/cpu/online:ro", tree.cpus_online().display()));
        }
        let mut labels = self.labels.clone();
        labels.insert("smlocal.host".to_string(), host.name.clone());
        ContainerSpec {
            name: format!("smlocal-{}-{}-{suffix}", job.name, host.name),
            hostname: if self.options.instance_hostnames { instance_hostname(&host.name) } else { host.name.clone() },
            alias: host.name.clone(),
            image: self.image.clone(),
            entrypoint: job.entrypoint.clone(),
            args: job.args.clone(),
            env,
            binds,
            labels,
            memory_bytes: host.limits.memory_bytes as i64,
            nano_cpus: host.limits.nano_cpus,
            cpuset,
            network: network.to_string(),
            pids_limit: pids_limit(host.instance.vcpu),
            publish: None,
        }
    }

    /// Removes the containers and volumes of an attempt (the network stays for the next).
    pub(crate) async fn reset(&mut self) {
        let removals = std::mem::take(&mut self.containers).into_iter().map(|c| {
            let docker = self.docker.clone();
            async move { docker.remove_container(&c.id).await }
        });
        for result in futures::future::join_all(removals).await {
            if let Err(e) = result {
                tracing::warn!("{e}");
            }
        }
        for volume in std::mem::take(&mut self.volumes) {
            if let Err(e) = self.docker.remove_volume(&volume.name).await {
                tracing::warn!("{e}");
            }
        }
    }

    /// Removes everything the job created in Docker.
    pub(crate) async fn remove(mut self) {
        self.reset().await;
        if let Some(network) = self.network.take()
            && let Err(e) = self.docker.remove_network(&network).await
        {
            tracing::warn!("{e}");
        }
    }

    /// Leaves everything in place (`--keep`): nothing is removed, now or on drop.
    pub(crate) fn keep(mut self) {
        self.containers.clear();
        self.volumes.clear();
        self.network = None;
    }
}

impl Hosts for Cluster<'_> {
    fn count(&self) -> usize {
        self.containers.len()
    }

    fn wait(&self, host: usize) -> BoxFuture<'static, Result<Exit, DockerError>> {
        let (docker, id) = (self.docker.clone(), self.containers[host].id.clone());
        Box::pin(async move { docker.wait(&id).await })
    }

    fn signal(&self, host: usize, signal: &'static str) -> BoxFuture<'_, Result<(), DockerError>> {
        Box::pin(self.docker.signal(&self.containers[host].id, signal))
    }
}

impl Drop for Cluster<'_> {
    /// The safety net: a path that returned without [`Cluster::remove`] (an error, a panic
    /// unwinding) still leaves no container, volume or network behind.
    fn drop(&mut self) {
        if self.containers.is_empty() && self.volumes.is_empty() && self.network.is_none() {
            return;
        }
        let containers: Vec<String> = self.containers.drain(..).map(|c| c.id).collect();
        let volumes: Vec<String> = self.volumes.drain(..).map(|v| v.name).collect();
        let network = self.network.take();
        tracing::warn!("job {}: removing its Docker objects after an early exit", self.job.name);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no runtime to remove them with; `smlocal cleanup` will");
            return;
        };
        let docker = self.docker.clone();
        runtime.spawn(async move {
            for id in containers {
                let _ = docker.remove_container(&id).await;
            }
            for name in volumes {
                let _ = docker.remove_volume(&name).await;
            }
            if let Some(network) = network {
                let _ = docker.remove_network(&network).await;
            }
        });
    }
}

/// 4,096 tasks (processes and threads) per container, and 256 per vCPU on larger
/// instances: data loaders, BLAS pools and MPI ranks fit, a fork bomb does not take the
/// workstation.
pub(crate) fn pids_limit(vcpu: u32) -> i64 {
    4096.max(256 * i64::from(vcpu))
}

/// An EC2-style private host name for `algo-N`, as a SageMaker instance reports.
fn instance_hostname(host: &str) -> String {
    let n: u32 = host.trim_start_matches("algo-").parse().unwrap_or(0);
    format!("ip-10-0-{}-{}", 1 + n / 200, 10 + n % 200)
}

/// Keeps this run's Docker object names apart from any leftover of an earlier run.
fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0);
    format!("{:08x}", nanos ^ std::process::id().rotate_left(16))
}
