//! Builds each host's `/opt/ml` on this machine before any container starts: the three
//! config files (DESIGN §4) and every File-mode channel (DESIGN §5). Each host sees its own
//! channels: S3 channels are overlays of the cache (the host's writes go to its own upper
//! layer), `file://` channels are private copies, so whatever the algorithm writes there never
//! reaches the user's data, the cache or another host.

use crate::cache::{Cache, Progress, Wanted};
use crate::job::{ChannelPlan, DataType, HostPlan, Job};
use crate::pipe::{Feed, Item};
use crate::spec::InputMode;
use crate::state::details::ChannelStaged;
use crate::storage::{Location, ObjectInfo, Storage, StorageError};
use crate::tree::{Beneath, EntryKind, TreeError};
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(
        "channel '{channel}': object key '{key}' would be written outside the channel folder (keys may not contain '..', NUL or be absolute); nothing was written for it"
    )]
    UnsafeKey { channel: String, key: String },
    #[error("channel '{channel}': keys '{first}' and '{second}' both map to the file '{path}'")]
    Collision { channel: String, first: String, second: String, path: String },
    #[error("channel '{channel}': {uri} holds no objects; SageMaker refuses a channel with no data")]
    Empty { channel: String, uri: String },
    #[error("channel '{channel}': manifest {uri} is not valid: {reason}")]
    Manifest { channel: String, uri: String, reason: String },
    #[error("channel '{channel}': {source}")]
    Storage {
        channel: String,
        #[source]
        source: StorageError,
    },
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("cannot prepare '{}': {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One object of a channel and where it lands, relative to the channel folder.
#[derive(Debug, Clone, PartialEq)]
pub struct StagedObject {
    pub uri: String,
    pub relative: PathBuf,
    /// Size and version from the listing (a manifest's objects are looked up when staged).
    pub info: Option<ObjectInfo>,
}

/// One host's `/opt/ml` on this machine: the one owner of that tree's layout (DESIGN §4).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HostTree(PathBuf);

impl HostTree {
    /// The tree of `host` in a job's work folder.
    pub(crate) fn new(work: &Path, host: &str) -> Self {
        HostTree(work.join(host))
    }

    /// What is mounted at `/opt/ml`.
    pub(crate) fn root(&self) -> &Path {
        &self.0
    }

    /// `input/config/<file>`: `hyperparameters.json`, `resourceconfig.json`, `inputdataconfig.json`.
    pub(crate) fn config_file(&self, file: &str) -> PathBuf {
        self.0.join("input/config").join(file)
    }

    /// `input/data/<channel>`.
    pub(crate) fn channel(&self, channel: &str) -> PathBuf {
        self.0.join("input/data").join(channel)
    }

    /// `model`: packed into `model.tar.gz`. The container owns what is below the tree's
    /// root: read it only through [`crate::tree`].
    pub(crate) fn model(&self) -> Beneath {
        Beneath::new(&self.0, "model")
    }

    /// `output/data`: packed into `output.tar.gz`.
    pub(crate) fn output_data(&self) -> Beneath {
        Beneath::new(&self.0, "output/data")
    }

    /// `output`, where the algorithm writes `failure`: its reason for a non-zero exit.
    pub(crate) fn output(&self) -> Beneath {
        Beneath::new(&self.0, "output")
    }

    /// `checkpoints`: the default `CheckpointConfig.LocalPath` (bound elsewhere when the
    /// request names another).
    pub(crate) fn checkpoints(&self) -> Beneath {
        Beneath::new(&self.0, "checkpoints")
    }

    /// `output/tensorboard`: `TensorBoardOutputConfig`'s default LocalPath (bound elsewhere
    /// when the request names another), synced while training.
    pub(crate) fn tensorboard(&self) -> Beneath {
        Beneath::new(&self.0, "output/tensorboard")
    }

    /// What is shown at `/sys/devices/system/cpu/online` when the host is pinned to some of
    /// this machine's cores: beside the tree, never inside the container's folders.
    pub(crate) fn cpus_online(&self) -> PathBuf {
        self.0.with_extension("cpus-online")
    }

    /// The folders that exist before the container starts, as SageMaker makes them.
    fn folders(&self) -> [PathBuf; 7] {
        [
            self.0.join("input/config"),
            self.0.join("input/data"),
            self.model().path(),
            self.output_data().path(),
            self.0.join("output/profiler"),
            self.0.join("output/metrics/sagemaker"),
            self.0.join("output/tensors"),
        ]
    }
}

/// A channel served from the cache: the algorithm sees an overlay of `lower` (hard links
/// into the cache, laid out as the channel) with its writes going to `upper`, so the cache is
/// never written through a channel folder and no byte is copied (DESIGN §5).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ChannelMount {
    pub host: String,
    pub channel: String,
    pub lower: PathBuf,
    pub upper: PathBuf,
    /// Overlay's own scratch folder, beside `upper`.
    pub scratch: PathBuf,
    /// Where the channel appears in the container.
    pub target: String,
}

impl ChannelMount {
    /// The fallback where overlays are not available: a private copy in the host's
    /// `/opt/ml/input/data/<channel>`.
    pub(crate) fn copy_into(&self, work: &Path) -> Result<(), StageError> {
        let dest = HostTree::new(work, &self.host).channel(&self.channel);
        copy_tree(&self.lower, &dest)
    }
}

/// What staging leaves for the run: the channels to mount, and the Pipe channels' feeds
/// (their `_0` FIFOs made).
#[derive(Debug, Default)]
pub struct Staged {
    pub(crate) mounts: Vec<ChannelMount>,
    pub(crate) feeds: Vec<Feed>,
    /// What each channel put before each host (the console shows it).
    pub(crate) counts: Vec<ChannelStaged>,
}

/// Makes every host's tree and fills it: S3 channels through the cache (as overlay mounts),
/// `file://` channels as private copies, Pipe channels as FIFOs their feeds will write.
pub async fn stage(
    job: &Job,
    work: &Path,
    storage: &Storage,
    cache: &Cache,
    progress: &Progress,
) -> Result<Staged, StageError> {
    let mut mounts = Vec::new();
    let mut feeds = Vec::new();
    let mut counts = Vec::new();
    for host in &job.hosts {
        let tree = HostTree::new(work, &host.name);
        for dir in tree.folders() {
            mkdir(&dir)?;
        }
        write_json(&tree.config_file("hyperparameters.json"), &Value::Object(job.hyperparameters.clone()))?;
        write_json(&tree.config_file("resourceconfig.json"), &resource_config(job, host))?;
        let input_config: serde_json::Map<String, Value> =
            job.channels.iter().filter(|c| serves(c, host)).map(|c| (c.name.clone(), input_data_config(c))).collect();
        write_json(&tree.config_file("inputdataconfig.json"), &Value::Object(input_config))?;
        write_platform_files(job, &tree)?;
        // The kernel's list of online CPUs, as a pinned container must see it: os.cpu_count()
        // (the toolkit's SM_NUM_CPUS) counts it, not the cpuset.
        if let Some(cores) = host.cores() {
            let path = tree.cpus_online();
            std::fs::write(&path, format!("{cores}\n")).map_err(|source| StageError::Io { path, source })?;
        }
    }
    for channel in &job.channels {
        let storage_err = |source| StageError::Storage { channel: channel.name.clone(), source };
        if channel.input_mode == InputMode::Pipe {
            let planned = plan_feeds(job, work, storage, cache, channel).await?;
            if let Some(feed) = planned.first() {
                counts.push(ChannelStaged {
                    channel: channel.name.clone(),
                    host: None,
                    objects: feed.items.len() as u64,
                    bytes: feed.items.iter().map(|i| i.known_size()).sum(),
                });
            }
            feeds.extend(planned);
            continue;
        }
        let objects = resolve(storage, channel).await?;
        // `<channel>-manifest`: the prefix, then every object of the channel (not the shard).
        let mut manifest = format!("{}\n", channel.uri);
        for o in &objects {
            manifest.push_str(&o.uri);
            manifest.push('\n');
        }
        for host in job.hosts.iter().filter(|h| serves(channel, h)) {
            let data = HostTree::new(work, &host.name).root().join("input/data");
            let path = data.join(format!("{}-manifest", channel.name));
            std::fs::write(&path, &manifest).map_err(|source| StageError::Io { path, source })?;
        }
        let receivers: Vec<&HostPlan> = job.hosts.iter().filter(|h| serves(channel, h)).collect();
        let shares: Vec<Vec<StagedObject>> = if channel.sharded {
            shard(objects.clone(), receivers.len(), channel.shuffle_seed)
        } else {
            vec![objects.clone(); receivers.len()]
        };
        for (host, share) in receivers.iter().zip(&shares) {
            counts.push(ChannelStaged {
                channel: channel.name.clone(),
                host: Some(host.name.clone()),
                objects: share.len() as u64,
                bytes: share.iter().filter_map(|o| o.info.as_ref()).map(|i| i.size).sum(),
            });
        }
        let remote = matches!(Location::parse(&channel.uri), Ok(Location::S3 { .. }));
        if remote {
            // Every object once, whatever the number of hosts that see it.
            let wanted = with_info(storage, &objects).await.map_err(storage_err)?;
            // Pinned in the job's own folder, so no eviction (another job's, or `smlocal
            // cache prune`) can take an object between its fetch and its links below.
            let pins = work.join(".pinned");
            let cached = cache.fetch(storage, &wanted, progress, &pins).await.map_err(storage_err)?;
            let by_uri: BTreeMap<&str, &PathBuf> = wanted.iter().map(|w| w.uri.as_str()).zip(&cached).collect();
            for (host, share) in receivers.iter().zip(&shares) {
                let base = work.join(".channels").join(&host.name).join(&channel.name);
                let mount = ChannelMount {
                    host: host.name.clone(),
                    channel: channel.name.clone(),
                    lower: base.join("lower"),
                    upper: base.join("upper"),
                    scratch: base.join("work"),
                    target: format!("/opt/ml/input/data/{}", channel.name),
                };
                for dir in [&mount.lower, &mount.upper, &mount.scratch] {
                    mkdir(dir)?;
                }
                for o in share {
                    let from = by_uri.get(o.uri.as_str()).copied().cloned().unwrap_or_default();
                    link_or_copy(&from, &mount.lower.join(&o.relative))?;
                }
                mounts.push(mount);
            }
        } else {
            for (host, share) in receivers.iter().zip(&shares) {
                let dir = HostTree::new(work, &host.name).channel(&channel.name);
                mkdir(&dir)?;
                fetch_all(storage, channel, share, &dir, progress).await?;
            }
        }
    }
    Ok(Staged { mounts, feeds, counts })
}

/// A Pipe channel: what it sends (objects, or an augmented manifest's lines, checked now so
/// a bad line fails the job before it starts) and a feed per host it serves, with `_0` made.
async fn plan_feeds(
    job: &Job,
    work: &Path,
    storage: &Storage,
    cache: &Cache,
    channel: &ChannelPlan,
) -> Result<Vec<Feed>, StageError> {
    let storage_err = |source| StageError::Storage { channel: channel.name.clone(), source };
    let items: Vec<Item> = match channel.data_type {
        DataType::AugmentedManifestFile => {
            let bytes = storage.read(&channel.uri).await.map_err(storage_err)?;
            let lines = crate::pipe::manifest::parse(&bytes, &channel.attribute_names).map_err(|e| {
                StageError::Manifest { channel: channel.name.clone(), uri: channel.uri.clone(), reason: e.to_string() }
            })?;
            lines.into_iter().map(Item::Line).collect()
        }
        DataType::S3Prefix | DataType::ManifestFile => {
            let mut objects = resolve(storage, channel).await?;
            // The base order of the sharding rule: objects sorted by URI.
            objects.sort_by(|a, b| a.uri.cmp(&b.uri));
            objects.into_iter().map(|o| Item::Object { uri: o.uri, info: o.info }).collect()
        }
    };
    let known: u64 = items.iter().map(Item::known_size).sum();
    let items = std::sync::Arc::new(items);
    let receivers: Vec<&HostPlan> = job.hosts.iter().filter(|h| serves(channel, h)).collect();
    let mut feeds = Vec::new();
    for (index, host) in receivers.iter().enumerate() {
        let folder = HostTree::new(work, &host.name).root().join("input/data");
        let feed = Feed {
            host: host.name.clone(),
            channel: channel.name.clone(),
            folder,
            items: items.clone(),
            hosts: receivers.len(),
            index,
            sharded: channel.sharded,
            seed: channel.shuffle_seed,
            record_wrapper: channel.record_wrapper,
            gzip: channel.gzip,
            fill_cache: known <= cache.max_bytes(),
        };
        feed.prepare().map_err(|source| StageError::Io { path: feed.fifo(0), source })?;
        feeds.push(feed);
    }
    Ok(feeds)
}

/// The other files SageMaker puts in `input/config` (DESIGN §14), each only when the request
/// sets what it describes, and the folders the configs name.
fn write_platform_files(job: &Job, tree: &HostTree) -> Result<(), StageError> {
    let raw = &job.request.raw;
    if let Some(c) = &job.checkpoint {
        write_json(&tree.config_file("checkpointconfig.json"), &json!({"LocalPath": c.local_path, "S3Uri": c.uri}))?;
        mkdir(&tree.checkpoints().path())?;
    }
    if let Some(t) = &job.tensorboard {
        let output = raw.get("TensorBoardOutputConfig").and_then(|c| c.get("S3OutputPath")).cloned();
        write_json(
            &tree.config_file("tensorboardoutputconfig.json"),
            &json!({"LocalPath": format!("{}/", t.local_path), "S3OutputPath": output}),
        )?;
        mkdir(&tree.tensorboard().path())?;
    }
    for (field, file) in [("DebugHookConfig", "debughookconfig.json"), ("ProfilerConfig", "profilerconfig.json")] {
        if let Some(config) = raw.get(field) {
            write_json(&tree.config_file(file), config)?;
        }
    }
    let mut request = raw.clone();
    request.insert("TrainingJobArn".into(), json!(job.arn));
    write_json(&tree.config_file("trainingjobconfig.json"), &Value::Object(request))?;
    let definitions: Vec<Value> =
        job.metric_definitions.iter().map(|d| json!({"Name": d.name, "Regex": d.regex})).collect();
    write_json(&tree.config_file("metric-definition-regex.json"), &json!(definitions))?;
    Ok(())
}

/// Sizes and versions for every object, looking up those a manifest named.
async fn with_info(storage: &Storage, objects: &[StagedObject]) -> Result<Vec<Wanted>, StorageError> {
    // Collected before streaming: a stream over the mapping closure itself cannot be proven
    // `Send`, which `smlocal serve`'s background jobs need (a compiler limitation with
    // closures over borrowed items).
    let lookups: Vec<_> = objects
        .iter()
        .map(|o| async move {
            let info = match &o.info {
                Some(info) => info.clone(),
                None => storage.head(&o.uri).await?,
            };
            Ok(Wanted { uri: o.uri.clone(), info })
        })
        .collect();
    // The first failure ends the lookups (the rest are cancelled): a dead or frozen server
    // fails the channel once, not once per object.
    let mut wanted: Vec<Wanted> =
        futures::stream::iter(lookups).buffered(storage.parallel_requests()).try_collect().await?;
    wanted.dedup_by(|a, b| a.uri == b.uri);
    Ok(wanted)
}

/// A hard link into the cache where the file system allows it, else a copy.
fn link_or_copy(from: &Path, to: &Path) -> Result<(), StageError> {
    if let Some(parent) = to.parent() {
        mkdir(parent)?;
    }
    std::fs::hard_link(from, to)
        .or_else(|_| std::fs::copy(from, to).map(|_| ()))
        .map_err(|source| StageError::Io { path: to.into(), source })
}

/// A private copy of a channel's layer: folders made, files copied, links recreated as links.
fn copy_tree(from: &Path, to: &Path) -> Result<(), StageError> {
    mkdir(to)?;
    let mut failed = None;
    let walked = Beneath::folder(from).walk(&mut |e| {
        if failed.is_some() {
            return;
        }
        let dest = to.join(&e.relative);
        let copied = match &e.kind {
            EntryKind::Dir => std::fs::create_dir_all(&dest),
            EntryKind::File { .. } => std::fs::copy(&e.path, &dest).map(|_| ()),
            EntryKind::Link(target) => std::os::unix::fs::symlink(target, &dest),
            EntryKind::Special => Ok(()),
        };
        if let Err(source) = copied {
            failed = Some(StageError::Io { path: dest, source });
        }
    });
    walked?;
    failed.map_or(Ok(()), Err)
}

/// The `ShardedByS3Key` rule: sort the keys, shuffle them with `seed` when one is given,
/// then object `i` goes to host `(i mod hosts) + 1`.
pub fn shard(mut objects: Vec<StagedObject>, hosts: usize, seed: Option<i64>) -> Vec<Vec<StagedObject>> {
    objects.sort_by(|a, b| a.uri.cmp(&b.uri));
    if let Some(seed) = seed {
        shuffle(&mut objects, seed as u64);
    }
    let mut shares = vec![Vec::new(); hosts.max(1)];
    for (i, object) in objects.into_iter().enumerate() {
        shares[i % hosts.max(1)].push(object);
    }
    shares
}

/// Fisher–Yates driven by SplitMix64: the same seed gives the same order on every machine
/// and every run, so users can predict which host gets which object.
pub(crate) fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for i in (1..items.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

pub(crate) fn serves(channel: &ChannelPlan, host: &HostPlan) -> bool {
    channel.groups.is_empty() || channel.groups.contains(&host.group)
}

/// `resourceconfig.json` exactly as SageMaker writes it for this host.
pub(crate) fn resource_config(job: &Job, host: &HostPlan) -> Value {
    let hosts: Vec<&str> = job.hosts.iter().map(|h| h.name.as_str()).collect();
    let groups: Vec<Value> = job
        .groups
        .iter()
        .map(|g| json!({"instance_group_name": g.name, "instance_type": g.instance_type, "hosts": g.hosts}))
        .collect();
    json!({
        "current_host": host.name,
        "current_instance_type": host.instance.instance_type,
        "current_group_name": host.group,
        "hosts": hosts,
        "instance_groups": groups,
        "network_interface_name": "eth0",
    })
}

/// One channel's entry in `inputdataconfig.json`; `ContentType` only when the request set it.
pub(crate) fn input_data_config(channel: &ChannelPlan) -> Value {
    let mut entry = serde_json::Map::new();
    if let Some(ct) = &channel.content_type {
        entry.insert("ContentType".into(), json!(ct));
    }
    entry.insert("TrainingInputMode".into(), json!(channel.input_mode));
    let distribution = if channel.sharded { "ShardedByS3Key" } else { "FullyReplicated" };
    entry.insert("S3DistributionType".into(), json!(distribution));
    entry.insert("RecordWrapperType".into(), json!(channel.record_wrapper));
    Value::Object(entry)
}

/// The channel's objects and where each lands, with every key checked before anything is
/// written.
pub(crate) async fn resolve(storage: &Storage, channel: &ChannelPlan) -> Result<Vec<StagedObject>, StageError> {
    let storage_err = |source| StageError::Storage { channel: channel.name.clone(), source };
    let mut out = Vec::new();
    match channel.data_type {
        DataType::S3Prefix => {
            let location = Location::parse(&channel.uri).map_err(storage_err)?;
            let prefix = location.key().to_string();
            for object in storage.list(&channel.uri).await.map_err(storage_err)? {
                // A key ending in '/' is a folder marker (the S3 console's "Create folder"),
                // the channel's own folder when it is exactly the prefix: not data. SageMaker
                // stages no file for it.
                if object.key.ends_with('/') {
                    continue;
                }
                // A prefix that names one object whole: SageMaker puts it in the channel
                // folder under its own name (the SDK ships code to an isolated job so).
                let rest = match &object.key[prefix.len()..] {
                    "" => object.key.rsplit('/').next().unwrap_or(&object.key),
                    rest => rest,
                };
                let relative = safe_relative(rest.strip_prefix('/').unwrap_or(rest))
                    .ok_or_else(|| StageError::UnsafeKey { channel: channel.name.clone(), key: object.key.clone() })?;
                out.push(StagedObject { uri: location.uri_of(&object.key), relative, info: Some(object) });
            }
        }
        DataType::AugmentedManifestFile => {
            return Err(StageError::Manifest {
                channel: channel.name.clone(),
                uri: channel.uri.clone(),
                reason: "an augmented manifest is sent in Pipe mode only".into(),
            });
        }
        DataType::ManifestFile => {
            let bytes = storage.read(&channel.uri).await.map_err(storage_err)?;
            let (prefix, keys) = parse_manifest(&bytes).map_err(|reason| StageError::Manifest {
                channel: channel.name.clone(),
                uri: channel.uri.clone(),
                reason,
            })?;
            Location::parse(&prefix).map_err(storage_err)?;
            for key in keys {
                let relative = safe_relative(&key)
                    .ok_or_else(|| StageError::UnsafeKey { channel: channel.name.clone(), key: key.clone() })?;
                out.push(StagedObject { uri: format!("{prefix}{key}"), relative, info: None });
            }
        }
    }
    if out.is_empty() {
        return Err(StageError::Empty { channel: channel.name.clone(), uri: channel.uri.clone() });
    }
    let mut seen: BTreeMap<&Path, &str> = BTreeMap::new();
    for o in &out {
        if let Some(first) = seen.insert(&o.relative, &o.uri) {
            return Err(StageError::Collision {
                channel: channel.name.clone(),
                first: first.into(),
                second: o.uri.clone(),
                path: o.relative.display().to_string(),
            });
        }
    }
    Ok(out)
}

/// A manifest is a JSON array: `{"prefix": "s3://bucket/path/"}` then keys relative to it.
pub(crate) fn parse_manifest(bytes: &[u8]) -> Result<(String, Vec<String>), String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let items = value.as_array().ok_or("expected a JSON array: [{\"prefix\": \"s3://...\"}, \"key1\", ...]")?;
    let prefix = items
        .first()
        .and_then(|f| f.get("prefix"))
        .and_then(Value::as_str)
        .ok_or("the first element must be {\"prefix\": \"s3://bucket/path/\"}")?;
    let keys = items[1..]
        .iter()
        .enumerate()
        .map(|(i, k)| k.as_str().map(str::to_string).ok_or(format!("element {} is not a string key", i + 1)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((prefix.to_string(), keys))
}

/// The path under the channel folder for a key (already stripped of its prefix), or `None`
/// when the key could reach outside the folder.
pub(crate) fn safe_relative(rest: &str) -> Option<PathBuf> {
    if rest.is_empty() || rest.contains('\0') {
        return None;
    }
    let path = Path::new(rest);
    let mut clean = PathBuf::new();
    for part in path.components() {
        match part {
            Component::Normal(p) => clean.push(p),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!clean.as_os_str().is_empty()).then_some(clean)
}

async fn fetch_all(
    storage: &Storage,
    channel: &ChannelPlan,
    objects: &[StagedObject],
    folder: &Path,
    progress: &Progress,
) -> Result<u64, StageError> {
    for o in objects {
        if let Some(parent) = folder.join(&o.relative).parent() {
            mkdir(parent)?;
        }
    }
    // Collected first, as in `with_info`, so the stream is `Send`.
    let downloads: Vec<_> = objects
        .iter()
        .map(|o| {
            let dest = folder.join(&o.relative);
            async move {
                let n = storage.download(&o.uri, &dest).await?;
                // A file:// listing carries sizes only as the copy learns them: count both.
                progress.total.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                progress.fetched.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                Ok::<u64, StorageError>(n)
            }
        })
        .collect();
    let mut downloads = futures::stream::iter(downloads).buffer_unordered(storage.parallel_requests());
    let mut total = 0;
    while let Some(result) = downloads.next().await {
        total += result.map_err(|source| StageError::Storage { channel: channel.name.clone(), source })?;
    }
    Ok(total)
}

fn mkdir(path: &Path) -> Result<(), StageError> {
    std::fs::create_dir_all(path).map_err(|source| StageError::Io { path: path.into(), source })
}

fn write_json(path: &Path, value: &Value) -> Result<(), StageError> {
    let text = serde_json::to_string(value).unwrap_or_default();
    std::fs::write(path, text).map_err(|source| StageError::Io { path: path.into(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(keys: &[&str]) -> Vec<StagedObject> {
        keys.iter()
            .map(|k| StagedObject { uri: format!("s3://b/{k}"), relative: PathBuf::from(k), info: None })
            .collect()
    }

    fn keys(share: &[StagedObject]) -> Vec<String> {
        share.iter().map(|o| o.relative.display().to_string()).collect()
    }

    #[test]
    fn sharding_sorts_then_deals_round_robin() {
        let shares = shard(objects(&["e", "a", "d", "b", "c"]), 2, None);
        assert_eq!(keys(&shares[0]), ["a", "c", "e"]);
        assert_eq!(keys(&shares[1]), ["b", "d"]);
        let few = shard(objects(&["only"]), 3, None);
        assert_eq!((few[0].len(), few[1].len(), few[2].len()), (1, 0, 0));
    }

    #[test]
    fn a_seed_shuffles_reproducibly() {
        let many: Vec<String> = (0..20).map(|i| format!("k{i:02}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let a = shard(objects(&refs), 3, Some(42));
        let b = shard(objects(&refs), 3, Some(42));
        let c = shard(objects(&refs), 3, Some(7));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(keys(&a[0]), keys(&shard(objects(&refs), 3, None)[0]));
        assert_eq!(a.iter().map(Vec::len).sum::<usize>(), 20);
    }

    #[test]
    fn keys_stay_inside_the_channel() {
        assert_eq!(safe_relative("a/b.csv"), Some(PathBuf::from("a/b.csv")));
        assert_eq!(safe_relative("./a//b.csv"), Some(PathBuf::from("a/b.csv")));
        for bad in ["../x", "a/../../x", "/etc/passwd", "a/\0b", "", ".", "a/.."] {
            assert_eq!(safe_relative(bad), None, "{bad:?} must be refused");
        }
    }

    #[test]
    fn manifests_need_a_prefix_first() {
        let (prefix, keys) = parse_manifest(br#"[{"prefix":"s3://b/d/"},"x.csv","s/y.csv"]"#).unwrap();
        assert_eq!(prefix, "s3://b/d/");
        assert_eq!(keys, ["x.csv", "s/y.csv"]);
        assert!(parse_manifest(br#"["x.csv"]"#).unwrap_err().contains("first element"));
        assert!(parse_manifest(br#"[{"prefix":"s3://b/"}, 3]"#).unwrap_err().contains("element 1"));
    }

    #[tokio::test]
    async fn a_manifest_traversal_is_refused_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("m.json");
        std::fs::write(
            &manifest,
            format!(r#"[{{"prefix":"file://{}/"}},"ok.csv","../../etc/passwd"]"#, dir.path().display()),
        )
        .unwrap();
        let channel = ChannelPlan {
            name: "train".into(),
            uri: format!("file://{}", manifest.display()),
            data_type: DataType::ManifestFile,
            sharded: false,
            content_type: None,
            record_wrapper: crate::spec::RecordWrapper::None,
            input_mode: crate::spec::InputMode::File,
            gzip: false,
            attribute_names: vec![],
            shuffle_seed: None,
            groups: vec![],
        };
        let err = resolve(&Storage::new(Default::default()), &channel).await.unwrap_err().to_string();
        assert!(err.contains("'../../etc/passwd'") && err.contains("outside the channel folder"), "{err}");
    }
}
