//! Builds each host's `/opt/ml` on this machine before any container starts: the three
//! config files (DESIGN §4) and every File-mode channel (DESIGN §5). Each host gets its own
//! copy of its channels, so whatever the algorithm writes there never reaches the user's
//! `file://` data or another host.

use crate::job::{ChannelPlan, DataType, HostPlan, Job};
use crate::storage::{self, Location, StorageError};
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// Objects fetched at once: enough to hide per-request latency, few enough to stay polite to
/// the server and bounded in memory (each download streams).
const PARALLEL_DOWNLOADS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(
        "channel '{channel}': object key '{key}' would be written outside the channel folder (keys may not contain '..', NUL or be absolute); nothing was written for it"
    )]
    UnsafeKey { channel: String, key: String },
    #[error("channel '{channel}': keys '{first}' and '{second}' both map to the file '{path}'")]
    Collision {
        channel: String,
        first: String,
        second: String,
        path: String,
    },
    #[error(
        "channel '{channel}': {uri} holds no objects; SageMaker refuses a channel with no data"
    )]
    Empty { channel: String, uri: String },
    #[error("channel '{channel}': manifest {uri} is not valid: {reason}")]
    Manifest {
        channel: String,
        uri: String,
        reason: String,
    },
    #[error("channel '{channel}': {source}")]
    Storage {
        channel: String,
        #[source]
        source: StorageError,
    },
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
}

/// What staging did for one host.
#[derive(Debug, Default, Clone)]
pub struct HostStaging {
    pub objects: usize,
    pub bytes: u64,
}

/// Where each host's `/opt/ml` lives on this machine.
pub fn host_root(work: &Path, host: &str) -> PathBuf {
    work.join(host)
}

/// Makes every host's tree and fills it. Returns per-host counts for the record and logs.
pub async fn stage(job: &Job, work: &Path) -> Result<BTreeMap<String, HostStaging>, StageError> {
    let mut resolved = Vec::new();
    for channel in &job.channels {
        resolved.push((channel, resolve(channel).await?));
    }
    let mut report = BTreeMap::new();
    for host in &job.hosts {
        let root = host_root(work, &host.name);
        for dir in ["input/config", "input/data", "model", "output/data"] {
            mkdir(&root.join(dir))?;
        }
        write_json(
            &root.join("input/config/hyperparameters.json"),
            &Value::Object(job.hyperparameters.clone()),
        )?;
        write_json(
            &root.join("input/config/resourceconfig.json"),
            &resource_config(job, host),
        )?;
        let mine: Vec<_> = resolved.iter().filter(|(c, _)| serves(c, host)).collect();
        let input_config: serde_json::Map<String, Value> = mine
            .iter()
            .map(|(c, _)| (c.name.clone(), input_data_config(c)))
            .collect();
        write_json(
            &root.join("input/config/inputdataconfig.json"),
            &Value::Object(input_config),
        )?;
        let mut staging = HostStaging::default();
        for (channel, objects) in mine {
            let folder = root.join("input/data").join(&channel.name);
            mkdir(&folder)?;
            let bytes = fetch_all(channel, objects, &folder).await?;
            staging.objects += objects.len();
            staging.bytes += bytes;
        }
        report.insert(host.name.clone(), staging);
    }
    Ok(report)
}

fn serves(channel: &ChannelPlan, host: &HostPlan) -> bool {
    channel.groups.is_empty() || channel.groups.contains(&host.group)
}

/// `resourceconfig.json` exactly as SageMaker writes it for this host.
pub fn resource_config(job: &Job, host: &HostPlan) -> Value {
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
pub fn input_data_config(channel: &ChannelPlan) -> Value {
    let mut entry = serde_json::Map::new();
    if let Some(ct) = &channel.content_type {
        entry.insert("ContentType".into(), json!(ct));
    }
    entry.insert("TrainingInputMode".into(), json!(channel.input_mode));
    let distribution = if channel.sharded {
        "ShardedByS3Key"
    } else {
        "FullyReplicated"
    };
    entry.insert("S3DistributionType".into(), json!(distribution));
    entry.insert("RecordWrapperType".into(), json!(channel.record_wrapper));
    Value::Object(entry)
}

/// The channel's objects and where each lands, with every key checked before anything is
/// written.
pub async fn resolve(channel: &ChannelPlan) -> Result<Vec<StagedObject>, StageError> {
    let storage_err = |source| StageError::Storage {
        channel: channel.name.clone(),
        source,
    };
    let mut out = Vec::new();
    match channel.data_type {
        DataType::S3Prefix => {
            let location = Location::parse(&channel.uri).map_err(storage_err)?;
            let prefix = location.key().to_string();
            for object in storage::list(&channel.uri).await.map_err(storage_err)? {
                let rest = &object.key[prefix.len()..];
                // A key ending in '/' is a folder marker from the S3 console, not data.
                if rest.ends_with('/') {
                    continue;
                }
                let relative =
                    safe_relative(rest.strip_prefix('/').unwrap_or(rest)).ok_or_else(|| {
                        StageError::UnsafeKey {
                            channel: channel.name.clone(),
                            key: object.key.clone(),
                        }
                    })?;
                out.push(StagedObject {
                    uri: location.uri_of(&object.key),
                    relative,
                });
            }
        }
        DataType::ManifestFile => {
            let bytes = storage::read(&channel.uri).await.map_err(storage_err)?;
            let (prefix, keys) = parse_manifest(&bytes).map_err(|reason| StageError::Manifest {
                channel: channel.name.clone(),
                uri: channel.uri.clone(),
                reason,
            })?;
            Location::parse(&prefix).map_err(storage_err)?;
            for key in keys {
                let relative = safe_relative(&key).ok_or_else(|| StageError::UnsafeKey {
                    channel: channel.name.clone(),
                    key: key.clone(),
                })?;
                out.push(StagedObject {
                    uri: format!("{prefix}{key}"),
                    relative,
                });
            }
        }
    }
    if out.is_empty() {
        return Err(StageError::Empty {
            channel: channel.name.clone(),
            uri: channel.uri.clone(),
        });
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
fn parse_manifest(bytes: &[u8]) -> Result<(String, Vec<String>), String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let items = value
        .as_array()
        .ok_or("expected a JSON array: [{\"prefix\": \"s3://...\"}, \"key1\", ...]")?;
    let prefix = items
        .first()
        .and_then(|f| f.get("prefix"))
        .and_then(Value::as_str)
        .ok_or("the first element must be {\"prefix\": \"s3://bucket/path/\"}")?;
    let keys = items[1..]
        .iter()
        .enumerate()
        .map(|(i, k)| {
            k.as_str()
                .map(str::to_string)
                .ok_or(format!("element {} is not a string key", i + 1))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((prefix.to_string(), keys))
}

/// The path under the channel folder for a key (already stripped of its prefix), or `None`
/// when the key could reach outside the folder.
pub fn safe_relative(rest: &str) -> Option<PathBuf> {
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
    channel: &ChannelPlan,
    objects: &[StagedObject],
    folder: &Path,
) -> Result<u64, StageError> {
    for o in objects {
        if let Some(parent) = folder.join(&o.relative).parent() {
            mkdir(parent)?;
        }
    }
    let mut downloads = futures::stream::iter(objects.iter().map(|o| {
        let dest = folder.join(&o.relative);
        async move { storage::download(&o.uri, &dest).await }
    }))
    .buffer_unordered(PARALLEL_DOWNLOADS);
    let mut total = 0;
    while let Some(result) = downloads.next().await {
        total += result.map_err(|source| StageError::Storage {
            channel: channel.name.clone(),
            source,
        })?;
    }
    Ok(total)
}

fn mkdir(path: &Path) -> Result<(), StageError> {
    std::fs::create_dir_all(path).map_err(|source| StageError::Io {
        path: path.into(),
        source,
    })
}

fn write_json(path: &Path, value: &Value) -> Result<(), StageError> {
    let text = serde_json::to_string(value).unwrap_or_default();
    std::fs::write(path, text).map_err(|source| StageError::Io {
        path: path.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (prefix, keys) =
            parse_manifest(br#"[{"prefix":"s3://b/d/"},"x.csv","s/y.csv"]"#).unwrap();
        assert_eq!(prefix, "s3://b/d/");
        assert_eq!(keys, ["x.csv", "s/y.csv"]);
        assert!(
            parse_manifest(br#"["x.csv"]"#)
                .unwrap_err()
                .contains("first element")
        );
        assert!(
            parse_manifest(br#"[{"prefix":"s3://b/"}, 3]"#)
                .unwrap_err()
                .contains("element 1")
        );
    }

    #[tokio::test]
    async fn a_manifest_traversal_is_refused_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("m.json");
        std::fs::write(
            &manifest,
            format!(
                r#"[{{"prefix":"file://{}/"}},"ok.csv","../../etc/passwd"]"#,
                dir.path().display()
            ),
        )
        .unwrap();
        let channel = ChannelPlan {
            name: "train".into(),
            uri: format!("file://{}", manifest.display()),
            data_type: DataType::ManifestFile,
            sharded: false,
            content_type: None,
            record_wrapper: "None".into(),
            input_mode: "File".into(),
            shuffle_seed: None,
            groups: vec![],
        };
        let err = resolve(&channel).await.unwrap_err().to_string();
        assert!(
            err.contains("'../../etc/passwd'") && err.contains("outside the channel folder"),
            "{err}"
        );
    }
}
