//! The one module that talks to the Docker Engine (through bollard). Every operation's error
//! says what was being attempted; a container that exits non-zero is an [`Exit`], not an
//! error — a failed algorithm is a job outcome.

use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, NetworkCreateRequest, NetworkingConfig, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    ListNetworksOptionsBuilder, RemoveContainerOptionsBuilder, StatsOptionsBuilder,
};
use futures::{Stream, StreamExt};
use std::collections::HashMap;

/// The label every container and network of a job carries, so leftovers can be found.
pub(crate) const JOB_LABEL: &str = "smlocal.job";
/// The state directory the job belongs to: `cleanup` with one `SMLOCAL_HOME` never touches
/// another's jobs.
pub(crate) const HOME_LABEL: &str = "smlocal.home";

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach the Docker Engine ({source}); is Docker running? `docker info` should work for this user")]
    Connect {
        #[source]
        source: bollard::errors::Error,
    },
    #[error(
        "image '{0}' is not on this machine; smlocal never pulls (there may be no registry): build it or `docker pull` it first, then run again"
    )]
    ImageMissing(String),
    #[error("the container {id} cannot start: {message}")]
    CannotStart { id: String, message: String },
    #[error("failed to {action}: {source}")]
    Operation {
        action: String,
        #[source]
        source: bollard::errors::Error,
    },
}

/// An IPv4 subnet (`172.18.0.0/16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Subnet {
    base: u32,
    mask: u32,
}

impl Subnet {
    pub(crate) fn parse(cidr: &str) -> Option<Subnet> {
        let (address, bits) = cidr.split_once('/')?;
        let address: std::net::Ipv4Addr = address.parse().ok()?;
        let bits: u32 = bits.parse().ok().filter(|b| *b <= 32)?;
        let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
        Some(Subnet { base: u32::from(address) & mask, mask })
    }

    pub(crate) fn contains(&self, ip: std::net::IpAddr) -> bool {
        match ip {
            std::net::IpAddr::V4(v4) => u32::from(v4) & self.mask == self.base,
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| u32::from(v4) & self.mask == self.base),
        }
    }
}

/// The first host address of an IPv4 subnet (`172.17.0.0/16` → `172.17.0.1`), where it
/// has hosts (not a /31 or /32).
fn first_host(subnet: &str) -> Option<std::net::Ipv4Addr> {
    let subnet = Subnet::parse(subnet)?;
    (subnet.mask.count_ones() < 31).then(|| std::net::Ipv4Addr::from(subnet.base + 1))
}

/// A 404: the object is not there (already removed, or never made).
fn gone(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

fn op(action: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> DockerError {
    let action = action.into();
    move |source| DockerError::Operation { action, source }
}

/// Everything needed to create one host's container.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub name: String,
    pub hostname: String,
    /// The name peers resolve it by on the job's network.
    pub alias: String,
    pub image: String,
    pub entrypoint: Option<Vec<String>>,
    pub args: Vec<String>,
    pub env: Vec<String>,
    /// `host_path:container_path[:ro]`
    pub binds: Vec<String>,
    pub labels: HashMap<String, String>,
    pub memory_bytes: i64,
    pub nano_cpus: i64,
    /// The cores it may run on (`0,1`), or all.
    pub cpuset: Option<String>,
    /// A network name, or `none`.
    pub network: String,
    /// Processes and threads the container may have at once (a fork bomb stops there).
    pub pids_limit: i64,
    /// A TCP port of the container to publish on 127.0.0.1, on a port the engine picks
    /// (read it back with [`Docker::published_port`]).
    pub publish: Option<u16>,
}

/// Capabilities Docker grants by default that a training container never needs: making
/// device nodes (with it, a container could open the host's disks through a node in its
/// bind-mounted folders), raw sockets (spoofing on the job's network), writing the audit
/// log, and setting file capabilities. Root inside the container keeps the rest (chown,
/// setuid for `su`, binding low ports), which package installs and MPI launchers use.
pub(crate) const DROPPED_CAPABILITIES: [&str; 4] = ["MKNOD", "NET_RAW", "AUDIT_WRITE", "SETFCAP"];

/// A container's output, chunk by chunk.
pub(crate) type OutputStream = std::pin::Pin<Box<dyn Stream<Item = Result<Output, DockerError>> + Send>>;

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: i64,
    /// The kernel's OOM killer acted inside the container's cgroup.
    pub oom_killed: bool,
}

/// A chunk of a container's output.
#[derive(Debug, Clone)]
pub(crate) struct Output {
    pub stderr: bool,
    pub bytes: Vec<u8>,
}

#[derive(Clone)]
pub struct Docker {
    client: bollard::Docker,
}

impl std::fmt::Debug for Docker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Docker").finish_non_exhaustive()
    }
}

/// What an image runs and how big it is.
#[derive(Debug, Clone, Default)]
pub struct ImageInfo {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub size_bytes: u64,
    pub labels: std::collections::BTreeMap<String, String>,
}

/// A path the container added, changed or deleted outside its mounts.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// `A` added, `C` changed, `D` deleted, as `docker diff` prints them.
    pub kind: char,
    pub path: String,
}

impl Docker {
    /// Connects through `DOCKER_HOST` or the local socket and agrees an API version with the
    /// engine (20.10 speaks 1.41; bollard's default is newer).
    pub async fn connect() -> Result<Self, DockerError> {
        let client = bollard::Docker::connect_with_defaults().map_err(|source| DockerError::Connect { source })?;
        let client = client.negotiate_version().await.map_err(|source| DockerError::Connect { source })?;
        Ok(Docker { client })
    }

    pub async fn ensure_image(&self, image: &str) -> Result<(), DockerError> {
        match self.client.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(e) if gone(&e) => Err(DockerError::ImageMissing(image.into())),
            Err(e) => Err(op(format!("inspect image '{image}'"))(e)),
        }
    }

    /// A bridge network for one job. `internal` networks have no route out of the machine.
    pub async fn create_network(
        &self,
        name: &str,
        labels: HashMap<String, String>,
        internal: bool,
    ) -> Result<(), DockerError> {
        let request = NetworkCreateRequest {
            name: name.into(),
            driver: Some("bridge".into()),
            internal: Some(internal),
            labels: Some(labels),
            ..Default::default()
        };
        self.client.create_network(request).await.map_err(op(format!("create network '{name}'")))?;
        Ok(())
    }

    /// Whether the engine has its default `bridge` network (a daemon can be run without it).
    pub async fn has_default_bridge(&self) -> bool {
        self.client.inspect_network("bridge", None::<bollard::query_parameters::InspectNetworkOptions>).await.is_ok()
    }

    /// The address this machine has on `network` (its gateway), which the network's
    /// containers can reach.
    /// The network's gateway address (this machine, as its containers reach it) and its
    /// IPv4 subnet.
    pub(crate) async fn gateway(&self, network: &str) -> Option<(std::net::IpAddr, Option<Subnet>)> {
        let inspected = self
            .client
            .inspect_network(network, None::<bollard::query_parameters::InspectNetworkOptions>)
            .await
            .ok()?;
        let configs = inspected.ipam?.config?;
        let subnet = configs.iter().find_map(|c| Subnet::parse(c.subnet.as_deref()?));
        // The default bridge often reports only its subnet; Docker gives the gateway the
        // subnet's first address.
        let gateway = configs
            .iter()
            .find_map(|c| c.gateway.as_deref()?.parse().ok())
            .or_else(|| configs.iter().find_map(|c| first_host(c.subnet.as_deref()?).map(std::net::IpAddr::V4)))?;
        Some((gateway, subnet))
    }

    /// Removes a network; one that is already gone is not an error.
    pub async fn remove_network(&self, name: &str) -> Result<(), DockerError> {
        match self.client.remove_network(name).await {
            Ok(()) => Ok(()),
            Err(e) if gone(&e) => Ok(()),
            Err(e) => Err(op(format!("remove network '{name}'"))(e)),
        }
    }

    pub async fn create_container(&self, spec: &ContainerSpec) -> Result<String, DockerError> {
        let host_config = HostConfig {
            binds: Some(spec.binds.clone()),
            memory: Some(spec.memory_bytes),
            // Equal to memory: the container gets no swap beyond its cap, as on an instance.
            memory_swap: Some(spec.memory_bytes),
            nano_cpus: Some(spec.nano_cpus),
            cpuset_cpus: spec.cpuset.clone(),
            network_mode: Some(spec.network.clone()),
            privileged: Some(false),
            cap_drop: Some(DROPPED_CAPABILITIES.iter().map(|c| c.to_string()).collect()),
            pids_limit: Some(spec.pids_limit),
            port_bindings: spec.publish.map(|port| {
                HashMap::from([(
                    format!("{port}/tcp"),
                    Some(vec![PortBinding { host_ip: Some("127.0.0.1".into()), host_port: Some(String::new()) }]),
                )])
            }),
            ..Default::default()
        };
        // The default bridge takes no aliases; a single host needs none.
        let networking = (spec.network != "none" && spec.network != "bridge").then(|| NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                spec.network.clone(),
                EndpointSettings { aliases: Some(vec![spec.alias.clone()]), ..Default::default() },
            )])),
        });
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            hostname: Some(spec.hostname.clone()),
            entrypoint: spec.entrypoint.clone(),
            cmd: Some(spec.args.clone()),
            env: Some(spec.env.clone()),
            labels: Some(spec.labels.clone()),
            exposed_ports: spec.publish.map(|port| vec![format!("{port}/tcp")]),
            host_config: Some(host_config),
            networking_config: networking,
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new().name(&spec.name).build();
        let created = self
            .client
            .create_container(Some(options), body)
            .await
            .map_err(op(format!("create container '{}' from image '{}'", spec.name, spec.image)))?;
        Ok(created.id)
    }

    pub async fn start(&self, id: &str) -> Result<(), DockerError> {
        match self.client.start_container(id, None).await {
            Ok(()) => Ok(()),
            // 400: the container's own configuration cannot run (an entrypoint that is not in
            // the image, a mount the kernel refuses), not the engine failing.
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 400, message }) => {
                Err(DockerError::CannotStart { id: short(id).to_string(), message })
            }
            Err(e) => Err(op(format!("start container {}", short(id)))(e)),
        }
    }

    /// The container's stdout and stderr from its start, following until it exits.
    /// The container's output from its first byte, attached before it starts: the
    /// container waits when smlocal reads slower than it writes, so no line is lost to the
    /// engine's log rotation.
    pub(crate) async fn attach(&self, id: &str) -> Result<OutputStream, DockerError> {
        let options = bollard::query_parameters::AttachContainerOptionsBuilder::new()
            .stream(true)
            .stdout(true)
            .stderr(true)
            .build();
        let action = format!("read the output of container {}", short(id));
        let attached = self
            .client
            .attach_container(id, Some(options))
            .await
            .map_err(op(format!("attach to container {}", short(id))))?;
        Ok(Box::pin(attached.output.map(move |item| match item {
            Ok(bollard::container::LogOutput::StdErr { message }) => {
                Ok(Output { stderr: true, bytes: message.to_vec() })
            }
            Ok(other) => Ok(Output { stderr: false, bytes: other.into_bytes().to_vec() }),
            Err(e) => Err(op(action.clone())(e)),
        })))
    }

    /// Waits for the container to stop and reports its exit code and whether it was OOM-killed.
    pub async fn wait(&self, id: &str) -> Result<Exit, DockerError> {
        // bollard reports a non-zero exit as an error of the wait stream; the state read
        // afterwards is the one truth for every way a container ends.
        let mut waiting = self.client.wait_container(id, None);
        while let Some(item) = waiting.next().await {
            match item {
                Ok(_) | Err(bollard::errors::Error::DockerContainerWaitError { .. }) => {}
                Err(e) => return Err(op(format!("wait for container {}", short(id)))(e)),
            }
        }
        let inspected =
            self.client.inspect_container(id, None).await.map_err(op(format!("inspect container {}", short(id))))?;
        let state = inspected.state.unwrap_or_default();
        Ok(Exit { code: state.exit_code.unwrap_or(-1), oom_killed: state.oom_killed.unwrap_or(false) })
    }

    /// Sends a signal (`SIGTERM`, `SIGKILL`); a container that already stopped is not an error.
    pub async fn signal(&self, id: &str, signal: &str) -> Result<(), DockerError> {
        let options = KillContainerOptionsBuilder::new().signal(signal).build();
        match self.client.kill_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 409 | 404, .. }) => Ok(()),
            Err(e) => Err(op(format!("send {signal} to container {}", short(id)))(e)),
        }
    }

    pub async fn remove_container(&self, id: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
        match self.client.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if gone(&e) => Ok(()),
            Err(e) => Err(op(format!("remove container {}", short(id)))(e)),
        }
    }

    /// Containers (IDs), networks and volumes (names) of smlocal's jobs: those of state
    /// directory `home`, or of every state directory when `None`.
    pub async fn labelled(&self, home: Option<&str>) -> Result<Labelled, DockerError> {
        let mut wanted = vec![JOB_LABEL.to_string()];
        if let Some(home) = home {
            wanted.push(format!("{HOME_LABEL}={home}"));
        }
        let filters = HashMap::from([("label".to_string(), wanted)]);
        let owner = |labels: Option<HashMap<String, String>>| {
            let mut labels = labels.unwrap_or_default();
            Owner {
                job: labels.remove(JOB_LABEL).unwrap_or_default(),
                home: labels.remove(HOME_LABEL).unwrap_or_default(),
                alive: false,
            }
        };
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        let containers = self
            .client
            .list_containers(Some(ListContainersOptionsBuilder::new().all(true).filters(&filters).build()))
            .await
            .map_err(op("list containers"))?
            .into_iter()
            .filter_map(|c| {
                use bollard::models::ContainerSummaryStateEnum as State;
                // Created moments ago counts as alive: its `docker run` may be about to start
                // it (another process's, whose state directory this one cannot judge).
                let starting = c.state == Some(State::CREATED) && c.created.is_some_and(|t| now - t < 120);
                let alive = starting || matches!(c.state, Some(State::RUNNING | State::PAUSED | State::RESTARTING));
                Some((c.id?, Owner { alive, ..owner(c.labels) }))
            })
            .collect();
        let networks = self
            .client
            .list_networks(Some(ListNetworksOptionsBuilder::new().filters(&filters).build()))
            .await
            .map_err(op("list networks"))?
            .into_iter()
            .filter_map(|n| Some((n.name?, owner(n.labels))))
            .collect();
        let volumes = self
            .client
            .list_volumes(Some(bollard::query_parameters::ListVolumesOptionsBuilder::new().filters(&filters).build()))
            .await
            .map_err(op("list volumes"))?
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| (v.name, owner(Some(v.labels))))
            .collect();
        Ok(Labelled { containers, networks, volumes })
    }

    /// A volume that mounts an overlay of `lower` with writes going to `upper` (both folders
    /// on this machine; `scratch` is overlay's work folder beside `upper`).
    pub async fn create_overlay_volume(
        &self,
        name: &str,
        lower: &std::path::Path,
        upper: &std::path::Path,
        scratch: &std::path::Path,
        labels: HashMap<String, String>,
    ) -> Result<(), DockerError> {
        let options =
            format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), scratch.display());
        let request = bollard::models::VolumeCreateRequest {
            name: Some(name.into()),
            driver: Some("local".into()),
            driver_opts: Some(HashMap::from([
                ("type".to_string(), "overlay".to_string()),
                ("device".to_string(), "overlay".to_string()),
                ("o".to_string(), options),
            ])),
            labels: Some(labels),
            ..Default::default()
        };
        self.client.create_volume(request).await.map_err(op(format!("create volume '{name}'")))?;
        Ok(())
    }

    pub async fn remove_volume(&self, name: &str) -> Result<(), DockerError> {
        match self.client.remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>).await {
            Ok(()) => Ok(()),
            Err(e) if gone(&e) => Ok(()),
            Err(e) => Err(op(format!("remove volume '{name}'"))(e)),
        }
    }

    pub async fn image_info(&self, image: &str) -> Result<ImageInfo, DockerError> {
        let inspected = match self.client.inspect_image(image).await {
            Ok(i) => i,
            Err(e) if gone(&e) => {
                return Err(DockerError::ImageMissing(image.into()));
            }
            Err(e) => return Err(op(format!("inspect image '{image}'"))(e)),
        };
        let config = inspected.config.unwrap_or_default();
        Ok(ImageInfo {
            entrypoint: config.entrypoint.unwrap_or_default(),
            cmd: config.cmd.unwrap_or_default(),
            size_bytes: inspected.size.unwrap_or(0).max(0) as u64,
            labels: config.labels.unwrap_or_default().into_iter().collect(),
        })
    }

    /// The container's file system changes, as `docker diff` shows them.
    pub async fn changes(&self, id: &str) -> Result<Vec<Change>, DockerError> {
        let changes = self
            .client
            .container_changes(id)
            .await
            .map_err(op(format!("list the changes of container {}", short(id))))?
            .unwrap_or_default();
        Ok(changes
            .into_iter()
            .map(|c| Change {
                kind: match c.kind {
                    bollard::models::ChangeType::_0 => 'C',
                    bollard::models::ChangeType::_1 => 'A',
                    bollard::models::ChangeType::_2 => 'D',
                },
                path: c.path,
            })
            .collect())
    }

    /// The container's peak memory use so far (cgroup v1 reports it; otherwise the current
    /// use), or `None` once it has stopped.
    pub async fn memory_peak(&self, id: &str) -> Option<u64> {
        let options = StatsOptionsBuilder::new().stream(false).one_shot(true).build();
        let mut stats = self.client.stats(id, Some(options));
        let sample = stats.next().await?.ok()?;
        let memory = sample.memory_stats?;
        memory.max_usage.or(memory.usage).filter(|m| *m > 0)
    }
}

/// A container as the engine sees it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ContainerState {
    Running,
    /// Created or exited: it can be started again.
    Stopped(Exit),
    /// No such container.
    Gone,
}

impl Docker {
    /// The host port the engine published `port` of the container on.
    pub(crate) async fn published_port(&self, id: &str, port: u16) -> Result<Option<u16>, DockerError> {
        let inspected =
            self.client.inspect_container(id, None).await.map_err(op(format!("inspect container {}", short(id))))?;
        let ports = inspected.network_settings.and_then(|n| n.ports).unwrap_or_default();
        Ok(ports
            .get(&format!("{port}/tcp"))
            .and_then(|b| b.as_ref())
            .and_then(|bindings| bindings.iter().find_map(|b| b.host_port.as_deref()?.parse().ok())))
    }

    /// The container's IPv4 address on `network`.
    pub(crate) async fn address_on(&self, id: &str, network: &str) -> Option<String> {
        let inspected = self.client.inspect_container(id, None).await.ok()?;
        let networks = inspected.network_settings?.networks?;
        networks.get(network)?.ip_address.clone().filter(|a| !a.is_empty())
    }

    pub(crate) async fn state(&self, id: &str) -> Result<ContainerState, DockerError> {
        let inspected = match self.client.inspect_container(id, None).await {
            Ok(i) => i,
            Err(e) if gone(&e) => return Ok(ContainerState::Gone),
            Err(e) => return Err(op(format!("inspect container {}", short(id)))(e)),
        };
        let state = inspected.state.unwrap_or_default();
        if state.running.unwrap_or(false) {
            return Ok(ContainerState::Running);
        }
        Ok(ContainerState::Stopped(Exit {
            code: state.exit_code.unwrap_or(-1),
            oom_killed: state.oom_killed.unwrap_or(false),
        }))
    }

    /// The process ID, on this machine, of the container's PID 1 while it runs.
    pub(crate) async fn init_pid(&self, id: &str) -> Option<i64> {
        let inspected = self.client.inspect_container(id, None).await.ok()?;
        inspected.state?.pid.filter(|p| *p > 0)
    }

    /// The image ID a name refers to now (`sha256:…`).
    pub(crate) async fn image_id(&self, image: &str) -> Result<String, DockerError> {
        match self.client.inspect_image(image).await {
            Ok(i) => Ok(i.id.unwrap_or_default()),
            Err(e) if gone(&e) => Err(DockerError::ImageMissing(image.into())),
            Err(e) => Err(op(format!("inspect image '{image}'"))(e)),
        }
    }

    /// SIGTERM, then SIGKILL after `grace`, as `docker stop` does; a container that already
    /// stopped or is gone is not an error.
    pub(crate) async fn stop(&self, id: &str, grace: std::time::Duration) -> Result<(), DockerError> {
        let options = bollard::query_parameters::StopContainerOptionsBuilder::new()
            .t(i32::try_from(grace.as_secs()).unwrap_or(i32::MAX))
            .build();
        match self.client.stop_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 304 | 404, .. }) => Ok(()),
            Err(e) => Err(op(format!("stop container {}", short(id)))(e)),
        }
    }

    /// What the engine kept of the container's output since `since` (epoch seconds, 0 for
    /// all), as lines with the engine's nanosecond time of each; at most the last `tail`
    /// lines when given.
    pub(crate) async fn logged_lines(
        &self,
        id: &str,
        since: i64,
        tail: Option<usize>,
    ) -> Result<Vec<(i128, String)>, DockerError> {
        let options = bollard::query_parameters::LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .since(i32::try_from(since).unwrap_or(0))
            .tail(&tail.map_or("all".to_string(), |n| n.to_string()))
            .build();
        let mut stream = self.client.logs(id, Some(options));
        let mut text = Vec::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(output) => text.extend_from_slice(&output.into_bytes()),
                Err(e) if gone(&e) => break,
                Err(e) => return Err(op(format!("read the logs of container {}", short(id)))(e)),
            }
        }
        let text = String::from_utf8_lossy(&text);
        Ok(text
            .lines()
            .filter_map(|line| {
                let (stamp, message) = line.split_once(' ').unwrap_or((line, ""));
                let at = time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339).ok()?;
                Some((at.unix_timestamp_nanos(), message.to_string()))
            })
            .collect())
    }

    /// Containers (any state) whose labels pass every label filter (`key` or `key=value`).
    async fn containers_filtered(
        &self,
        wanted: Vec<String>,
    ) -> Result<Vec<bollard::models::ContainerSummary>, DockerError> {
        let filters = HashMap::from([("label".to_string(), wanted)]);
        self.client
            .list_containers(Some(ListContainersOptionsBuilder::new().all(true).filters(&filters).build()))
            .await
            .map_err(op("list containers"))
    }

    /// Containers of state directory `home` carrying every `label=value` given.
    pub(crate) async fn containers_matching(
        &self,
        labels: &[(&str, &str)],
        home: &str,
    ) -> Result<Vec<String>, DockerError> {
        let mut wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        wanted.push(format!("{HOME_LABEL}={home}"));
        Ok(self.containers_filtered(wanted).await?.into_iter().filter_map(|c| c.id).collect())
    }

    /// Containers carrying `label` (any value) of state directory `home`: `(id, label value)`.
    pub(crate) async fn containers_labelled(
        &self,
        label: &str,
        home: &str,
    ) -> Result<Vec<(String, String)>, DockerError> {
        let wanted = vec![label.to_string(), format!("{HOME_LABEL}={home}")];
        Ok(self
            .containers_filtered(wanted)
            .await?
            .into_iter()
            .filter_map(|c| {
                let value = c.labels.as_ref()?.get(label)?.clone();
                Some((c.id?, value))
            })
            .collect())
    }
}

/// Docker objects found by label: `(id or name, owner)`.
#[derive(Debug, Default)]
pub struct Labelled {
    pub containers: Vec<(String, Owner)>,
    pub networks: Vec<(String, Owner)>,
    pub volumes: Vec<(String, Owner)>,
}

/// The job and state directory a Docker object belongs to.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Owner {
    pub job: String,
    pub home: String,
    /// For a container: whether it is running (or paused, or restarting, or was created in
    /// the last two minutes and may be about to start).
    pub alive: bool,
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subnet_s_first_host_is_its_gateway() {
        assert_eq!(first_host("172.17.0.0/16"), Some("172.17.0.1".parse().unwrap()));
        assert_eq!(first_host("10.1.2.128/25"), Some("10.1.2.129".parse().unwrap()));
        assert_eq!(first_host("fd00::/64"), None);
        assert_eq!(first_host("10.0.0.1/32"), None);
    }
}
