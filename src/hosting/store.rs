//! The hosting records in the state directory, shared by `smlocal serve` and the CLI:
//! `hosting/models/<name>.json`, `hosting/endpoint-configs/<name>.json` and one folder per
//! endpoint, `hosting/endpoints/<name>/` with `endpoint.json` and the model folders its
//! containers mount; the instances' logs in `hosting/logs/<name>/`, which outlive the endpoint. Every record is written beside its place and renamed
//! over it (never half-written); creating one is `O_EXCL`, which is what reserves a name.

use crate::state::index::{self, Index, Records, Row};
use crate::state::listing::{ListError, ListQuery, Page};
use crate::state::record::now;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum HostingStoreError {
    #[error("the record '{}' is unreadable: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot {action} '{}': {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> HostingStoreError + 'a {
    move |source| HostingStoreError::Io { action, path: path.to_path_buf(), source }
}

/// The three kinds of hosting record, each in its own folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Model,
    EndpointConfig,
    Endpoint,
}

impl Kind {
    /// As AWS names the resource in its messages.
    pub(crate) fn noun(self) -> &'static str {
        match self {
            Kind::Model => "model",
            Kind::EndpointConfig => "endpoint configuration",
            Kind::Endpoint => "endpoint",
        }
    }

    /// As it appears in an ARN (`arn:aws:sagemaker:REGION:ACCOUNT:endpoint/NAME`).
    pub(crate) fn arn_type(self) -> &'static str {
        match self {
            Kind::Model => "model",
            Kind::EndpointConfig => "endpoint-config",
            Kind::Endpoint => "endpoint",
        }
    }
}

/// A model or an endpoint configuration: the request as it came (Describe echoes it) and
/// what the service adds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Definition {
    pub name: String,
    pub arn: String,
    pub creation_time: f64,
    pub request: Map<String, Value>,
}

/// `EndpointStatus` as AWS spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum EndpointStatus {
    Creating,
    InService,
    Updating,
    Failed,
    Deleting,
}

impl EndpointStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EndpointStatus::Creating => "Creating",
            EndpointStatus::InService => "InService",
            EndpointStatus::Updating => "Updating",
            EndpointStatus::Failed => "Failed",
            EndpointStatus::Deleting => "Deleting",
        }
    }
}

impl std::fmt::Display for EndpointStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One running container of a variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Instance {
    /// EC2-style, as CloudWatch names the stream (`AllTraffic/i-…`).
    pub id: String,
    pub container: String,
    /// The host port (on 127.0.0.1) the container's 8080 is published on, or 8080 itself
    /// when the model is network-isolated and reached at the container's own address.
    pub port: u16,
    /// Where the port is: 127.0.0.1, or the container's address on its internal network.
    #[serde(default = "loopback")]
    pub address: String,
}

fn loopback() -> String {
    "127.0.0.1".into()
}

impl Instance {
    /// The instance's base URL (`http://127.0.0.1:32768`).
    pub(crate) fn url(&self) -> String {
        format!("http://{}:{}", self.address, self.port)
    }
}

/// A production variant as deployed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Variant {
    pub name: String,
    pub model_name: String,
    pub image: String,
    /// The image ID the containers run (`DeployedImages[].ResolvedImage`).
    pub resolved_image: String,
    pub weight: f64,
    pub instance_type: String,
    pub instances: Vec<Instance>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct EndpointRecord {
    pub name: String,
    pub arn: String,
    pub config_name: String,
    pub status: EndpointStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    pub creation_time: f64,
    pub last_modified_time: f64,
    /// What serves requests now.
    #[serde(default)]
    pub variants: Vec<Variant>,
    /// The configuration an `UpdateEndpoint` is moving to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_config: Option<String>,
    /// Counts deployments, so each one's model folders and containers have names of their own.
    #[serde(default)]
    pub generation: u32,
}

impl EndpointRecord {
    pub(crate) fn new(name: &str, arn: &str, config_name: &str) -> Self {
        let t = now();
        EndpointRecord {
            name: name.into(),
            arn: arn.into(),
            config_name: config_name.into(),
            status: EndpointStatus::Creating,
            failure_reason: None,
            creation_time: t,
            last_modified_time: t,
            variants: Vec::new(),
            pending_config: None,
            generation: 0,
        }
    }

    pub(crate) fn set_status(&mut self, status: EndpointStatus) {
        self.status = status;
        self.last_modified_time = now();
    }
}

/// The hosting half of the state directory.
#[derive(Debug, Clone)]
pub(crate) struct HostingStore {
    root: PathBuf,
    /// What the List operations read; kept beside every write.
    index: std::sync::Arc<Index>,
}

/// One kind of hosting record, as the index reads them.
struct Listed<'a>(&'a HostingStore, Kind);

impl Records for Listed<'_> {
    fn kind(&self) -> index::Kind {
        match self.1 {
            Kind::Model => index::Kind::Model,
            Kind::EndpointConfig => index::Kind::EndpointConfig,
            Kind::Endpoint => index::Kind::Endpoint,
        }
    }

    fn folder(&self) -> PathBuf {
        self.0.folder(self.1)
    }

    fn names(&self) -> Vec<String> {
        self.0.names(self.1)
    }

    fn row(&self, name: &str) -> Option<Row> {
        let loaded = match self.1 {
            Kind::Endpoint => self.0.load::<EndpointRecord>(self.1, name).map(|r| r.map(|e| e.row())),
            kind => self.0.load::<Definition>(kind, name).map(|r| r.map(|d| d.row(kind))),
        };
        loaded.unwrap_or_else(|e| {
            tracing::warn!("not listing {name}: {e}");
            None
        })
    }
}

impl Definition {
    /// The model or configuration as ListModels / ListEndpointConfigs summarise it.
    fn row(&self, kind: Kind) -> Row {
        let (name, arn) = match kind {
            Kind::EndpointConfig => ("EndpointConfigName", "EndpointConfigArn"),
            _ => ("ModelName", "ModelArn"),
        };
        let mut summary = Map::new();
        summary.insert(name.into(), Value::from(self.name.clone()));
        summary.insert(arn.into(), Value::from(self.arn.clone()));
        summary.insert("CreationTime".into(), Value::from(self.creation_time));
        Row {
            name: self.name.clone(),
            created: self.creation_time,
            modified: self.creation_time,
            status: String::new(),
            summary: Value::Object(summary),
        }
    }
}

impl EndpointRecord {
    /// The endpoint as ListEndpoints summarises it.
    fn row(&self) -> Row {
        Row {
            name: self.name.clone(),
            created: self.creation_time,
            modified: self.last_modified_time,
            status: self.status.as_str().into(),
            summary: serde_json::json!({
                "EndpointName": self.name,
                "EndpointArn": self.arn,
                "CreationTime": self.creation_time,
                "LastModifiedTime": self.last_modified_time,
                "EndpointStatus": self.status.as_str(),
            }),
        }
    }
}

/// What AWS allows in a model, config or endpoint name (`^[a-zA-Z0-9](-*[a-zA-Z0-9])*`,
/// at most 63): also what keeps a name from reaching outside its folder.
pub(crate) fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

impl HostingStore {
    pub(crate) fn new(state_root: &Path) -> Self {
        HostingStore { root: state_root.join("hosting"), index: std::sync::Arc::new(Index::new(state_root)) }
    }

    fn folder(&self, kind: Kind) -> PathBuf {
        self.root.join(match kind {
            Kind::Model => "models",
            Kind::EndpointConfig => "endpoint-configs",
            Kind::Endpoint => "endpoints",
        })
    }

    fn path(&self, kind: Kind, name: &str) -> PathBuf {
        match kind {
            Kind::Endpoint => self.endpoint_dir(name).join("endpoint.json"),
            _ => self.folder(kind).join(format!("{name}.json")),
        }
    }

    /// `hosting/endpoints/<name>`: everything of one endpoint.
    pub(crate) fn endpoint_dir(&self, name: &str) -> PathBuf {
        self.folder(Kind::Endpoint).join(name)
    }

    /// Where the model of one variant of one deployment is unpacked (mounted read-only).
    pub(crate) fn model_dir(&self, endpoint: &str, generation: u32, variant: &str) -> PathBuf {
        self.endpoint_dir(endpoint).join("models").join(format!("{generation}-{variant}"))
    }

    /// `hosting/logs/<endpoint>`: the endpoint's CloudWatch group, kept after it is deleted.
    fn logs_dir(&self, endpoint: &str) -> PathBuf {
        self.root.join("logs").join(endpoint)
    }

    /// `hosting/logs/<endpoint>/<variant>/<instance>.log`: one CloudWatch stream.
    pub(crate) fn log_path(&self, endpoint: &str, variant: &str, instance: &str) -> PathBuf {
        self.logs_dir(endpoint).join(variant).join(format!("{instance}.log"))
    }

    /// Every stream of an endpoint that has a log: `(variant/instance, log file)`.
    pub(crate) fn log_streams(&self, endpoint: &str) -> Vec<(String, PathBuf)> {
        let mut streams = Vec::new();
        if !is_name(endpoint) {
            return streams;
        }
        let logs = self.logs_dir(endpoint);
        for variant in read_names(&logs) {
            for file in read_names(&logs.join(&variant)) {
                if let Some(instance) = file.strip_suffix(".log") {
                    streams.push((format!("{variant}/{instance}"), logs.join(&variant).join(&file)));
                }
            }
        }
        streams.sort();
        streams
    }

    /// Writes a new record; `false` when one of that name exists.
    pub(crate) fn create(&self, kind: Kind, name: &str, value: &impl Serialize) -> Result<bool, HostingStoreError> {
        self.indexed(kind, name, || write_record(&self.path(kind, name), value, true))
    }

    /// Replaces a record (atomically).
    pub(crate) fn save_endpoint(&self, record: &EndpointRecord) -> Result<(), HostingStoreError> {
        self.indexed(Kind::Endpoint, &record.name, || {
            write_record(&self.path(Kind::Endpoint, &record.name), record, false).map(drop)
        })
    }

    /// Runs a change of `name`'s record with the index's row following it.
    fn indexed<T>(&self, kind: Kind, name: &str, change: impl FnOnce() -> T) -> T {
        let listed = Listed(self, kind);
        let intent = self.index.intend(&listed, name);
        let changed = change();
        self.index.wrote(&listed, intent, name, listed.row(name).as_ref());
        changed
    }

    /// The page of `kind` that `query` asks for (ListModels, ListEndpointConfigs,
    /// ListEndpoints), from the index.
    pub(crate) fn page(&self, kind: Kind, query: &ListQuery) -> Result<Page, ListError> {
        // AWS's default page size.
        self.index.page(&Listed(self, kind), query, 10)
    }

    /// The names of every record of a kind.
    fn names(&self, kind: Kind) -> Vec<String> {
        read_names(&self.folder(kind))
            .into_iter()
            .filter_map(|n| match kind {
                Kind::Endpoint => Some(n),
                _ => n.strip_suffix(".json").map(str::to_string),
            })
            .filter(|n| is_name(n))
            .collect()
    }

    pub(crate) fn load<T: serde::de::DeserializeOwned>(
        &self,
        kind: Kind,
        name: &str,
    ) -> Result<Option<T>, HostingStoreError> {
        if !is_name(name) {
            return Ok(None);
        }
        let path = self.path(kind, name);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("read", &path)(e)),
        };
        serde_json::from_slice(&text).map(Some).map_err(|e| HostingStoreError::Corrupt { path, reason: e.to_string() })
    }

    /// When the endpoint's record last changed (the runtime reloads its routes then).
    pub(crate) fn endpoint_changed(&self, name: &str) -> Option<std::time::SystemTime> {
        std::fs::metadata(self.path(Kind::Endpoint, name)).and_then(|m| m.modified()).ok()
    }

    /// Every record of a kind, in name order (unreadable ones are reported and skipped).
    pub(crate) fn list<T: serde::de::DeserializeOwned>(&self, kind: Kind) -> Result<Vec<T>, HostingStoreError> {
        let mut names = self.names(kind);
        names.sort();
        let mut records = Vec::new();
        for name in names {
            match self.load(kind, &name) {
                Ok(Some(r)) => records.push(r),
                Ok(None) => {}
                Err(e) => tracing::warn!("{e}"),
            }
        }
        Ok(records)
    }

    /// Removes a model's or configuration's record; `false` when there was none.
    pub(crate) fn remove(&self, kind: Kind, name: &str) -> Result<bool, HostingStoreError> {
        if !is_name(name) {
            return Ok(false);
        }
        let path = self.path(kind, name);
        let removed = self.indexed(kind, name, || match kind {
            Kind::Endpoint => std::fs::remove_dir_all(self.endpoint_dir(name)),
            _ => std::fs::remove_file(&path),
        });
        match removed {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io("remove", &path)(e)),
        }
    }
}

/// Writes a record beside `path` and renames (or, `fresh`, links) it into place, so a
/// reader sees the old record or the new one, never a mix; `false` when `fresh` and a record
/// is there already. Shared by the hosting and transform-job records.
pub(crate) fn write_record(path: &Path, value: &impl Serialize, fresh: bool) -> Result<bool, HostingStoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let text = serde_json::to_vec_pretty(value)
        .map_err(|e| HostingStoreError::Corrupt { path: path.to_path_buf(), reason: e.to_string() })?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io("write", path))?;
    tmp.write_all(&text).and_then(|_| tmp.as_file().sync_all()).map_err(io("write", path))?;
    if fresh {
        // Linking never replaces: the name is taken by whoever links first.
        return match tmp.persist_noclobber(path) {
            Ok(_) => Ok(true),
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io("write", path)(e.error)),
        };
    }
    tmp.persist(path).map_err(|e| io("write", path)(e.error))?;
    Ok(true)
}

fn read_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_reserved_once_and_records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = HostingStore::new(dir.path());
        let model = Definition { name: "m".into(), arn: "arn".into(), creation_time: 1.0, request: Map::new() };
        assert!(store.create(Kind::Model, "m", &model).unwrap());
        assert!(!store.create(Kind::Model, "m", &model).unwrap());
        let back: Definition = store.load(Kind::Model, "m").unwrap().unwrap();
        assert_eq!(back.arn, "arn");
        let mut endpoint = EndpointRecord::new("e", "arn:e", "c");
        assert!(store.create(Kind::Endpoint, "e", &endpoint).unwrap());
        endpoint.set_status(EndpointStatus::InService);
        store.save_endpoint(&endpoint).unwrap();
        let all: Vec<EndpointRecord> = store.list(Kind::Endpoint).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].status, EndpointStatus::InService);
        assert!(store.remove(Kind::Endpoint, "e").unwrap());
        assert!(store.load::<EndpointRecord>(Kind::Endpoint, "e").unwrap().is_none());
    }

    #[test]
    fn names_that_could_leave_the_folder_are_not_names() {
        for bad in ["", "../x", "a/b", "-a", "a-", ".", &"x".repeat(64)] {
            assert!(!is_name(bad), "{bad}");
        }
        assert!(is_name("my-endpoint-1"));
    }
}
