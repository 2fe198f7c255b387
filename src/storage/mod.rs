//! The one module that talks to object storage (through `object_store`): listing a prefix,
//! fetching an object to a file, uploading a file. `s3://` (AWS, MinIO, any S3-compatible
//! server configured by the standard `AWS_*` variables) and `file://` behave alike.

use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

mod s3;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("'{uri}' is not a usable location: {reason}")]
    BadUri { uri: String, reason: String },
    #[error("cannot reach S3 for '{uri}': {source}{}", endpoint_hint(endpoint))]
    S3 {
        uri: String,
        endpoint: Option<String>,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("cannot reach S3 for '{uri}': {source}{}", endpoint_hint(endpoint))]
    S3Call {
        uri: String,
        endpoint: Option<String>,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("'{uri}' does not exist")]
    NotFound { uri: String },
    #[error(
        "'{uri}' is outside the folders this server lets requests name; {}",
        if .roots.is_empty() {
            "smlocal serve takes file:// URIs only under folders given with --allow-file-root DIR (none were given)".to_string()
        } else {
            format!("allowed are file:// URIs under {}", .roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", "))
        }
    )]
    NotAllowed { uri: String, roots: Vec<PathBuf> },
    #[error("'{uri}' arrived incomplete: {got} of {expected} bytes (it may have changed while it was read)")]
    Incomplete { uri: String, expected: u64, got: u64 },
    #[error("{action} '{}': {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An S3 key as object_store names it: exactly the key. (`Path::from` would percent-encode
/// `# % [ ] ~` and others a second time, so a listed key could not be fetched and an upload
/// would land at a key other than the one the record names.) Only a key object_store cannot
/// hold as is (a `.` or `..` segment, a control character) is encoded.
fn key_path(key: &str) -> StorePath {
    StorePath::parse(key).unwrap_or_else(|_| StorePath::from(key))
}

/// The end of the name a `file://` upload has until it is complete and renamed into place.
pub(crate) const PARTIAL_SUFFIX: &str = ".smlocal-partial";

/// Deletes the half-written `file://` uploads under `folder`; returns how many.
fn discard_local_partials(folder: &Path) -> usize {
    let mut partials = Vec::new();
    let _ = crate::tree::Beneath::folder(folder).walk(&mut |e| {
        if matches!(e.kind, crate::tree::EntryKind::File { .. })
            && e.path.file_name().is_some_and(|n| n.to_string_lossy().ends_with(PARTIAL_SUFFIX))
        {
            partials.push(e.path);
        }
    });
    partials.iter().filter(|p| std::fs::remove_file(p).is_ok()).count()
}

fn endpoint_hint(endpoint: &Option<String>) -> String {
    match endpoint {
        Some(e) => format!(" (endpoint {e} from AWS_ENDPOINT_URL)"),
        None => " (no AWS_ENDPOINT_URL set: using AWS itself)".to_string(),
    }
}

/// The S3 settings of this process, read once from the standard `AWS_*` variables.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`; None for AWS itself.
    pub endpoint: Option<String>,
    /// `AWS_REGION`, else `AWS_DEFAULT_REGION`.
    pub region: Option<String>,
    /// `AWS_ALLOW_HTTP`: plain HTTP to the endpoint (MinIO, a test server).
    pub allow_http: bool,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, those that are set.
    pub credentials: Vec<(&'static str, String)>,
    /// `SMLOCAL_S3_TIMEOUT` (seconds, default 30): how long a request may wait for the
    /// server's next bytes before it fails. A frozen server fails staging in this time,
    /// not after every object has waited its own.
    pub read_timeout: Duration,
    /// `SMLOCAL_S3_REQUESTS` (default 64): requests in flight at once while staging (objects,
    /// ranges and listing pages). Enough to hide a real S3's 10-50 ms to first byte; a
    /// local server is no slower for it. Fewer when the open-file limit is low.
    pub parallel_requests: usize,
}

/// The default of [`S3Config::parallel_requests`].
pub(crate) const PARALLEL_REQUESTS: usize = 64;

/// How many requests this process's open-file limit leaves room for: a request in flight
/// holds a connection, its cache entry's lock and its partial file, and the listing's idle
/// connections stay open beside them (4 each); 32 are kept for everything else (logs, the
/// Docker socket, the index). A process limited to 96 files still stages, 16 at a time.
fn requests_the_descriptors_allow() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(u64::MAX);
    usize::try_from(limit.saturating_sub(32) / 4).unwrap_or(usize::MAX).max(4)
}

/// The default of [`S3Config::read_timeout`], object_store's own request timeout.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

impl S3Config {
    pub fn from_env() -> Self {
        let var = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
        S3Config {
            endpoint: var("AWS_ENDPOINT_URL_S3").or_else(|| var("AWS_ENDPOINT_URL")),
            region: var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")),
            allow_http: var("AWS_ALLOW_HTTP").is_some_and(|v| v == "true" || v == "1"),
            credentials: ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"]
                .into_iter()
                .filter_map(|key| var(key).map(|value| (key, value)))
                .collect(),
            read_timeout: var("SMLOCAL_S3_TIMEOUT")
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|s| *s > 0.0)
                .map_or(READ_TIMEOUT, Duration::from_secs_f64),
            parallel_requests: var("SMLOCAL_S3_REQUESTS")
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|n| *n > 0)
                .map_or(PARALLEL_REQUESTS, |n| n.min(1024))
                .min(requests_the_descriptors_allow()),
        }
    }
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: None,
            region: None,
            allow_http: false,
            credentials: Vec::new(),
            read_timeout: READ_TIMEOUT,
            parallel_requests: PARALLEL_REQUESTS,
        }
    }
}

/// Object storage for every URI a job names. One S3 client per bucket is built on first use
/// and shared by every clone of the handle, so connections (and TLS sessions) are reused
/// across listings, objects, ranges and uploads; `file://` needs no client.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Inner>,
}

struct Inner {
    config: S3Config,
    /// Where `file://` URIs may point (`smlocal serve --allow-file-root`); None: anywhere.
    local_roots: Option<Vec<PathBuf>>,
    buckets: std::sync::Mutex<HashMap<String, Clients>>,
    /// The connections of every hand-made S3 call (one pool for all buckets).
    http: reqwest::Client,
}

/// What talks to one bucket: object_store for objects, [`s3::Rest`] for the calls it lacks.
#[derive(Clone)]
struct Clients {
    store: Arc<dyn ObjectStore>,
    rest: Arc<s3::Rest>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").field("endpoint", &self.inner.config.endpoint).finish_non_exhaustive()
    }
}

/// A parsed `s3://bucket/key` or `file:///path` URI.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Location {
    S3 { bucket: String, key: String },
    Local { path: String },
}

impl Location {
    pub(crate) fn parse(uri: &str) -> Result<Self, StorageError> {
        let bad = |reason: &str| StorageError::BadUri { uri: uri.into(), reason: reason.into() };
        if let Some(rest) = uri.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket name; expected s3://bucket/prefix"));
            }
            Ok(Location::S3 { bucket: bucket.into(), key: key.into() })
        } else if let Some(rest) = uri.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(bad("file:// URIs must hold an absolute path, e.g. file:///home/me/data/"));
            }
            Ok(Location::Local { path: rest.into() })
        } else if uri.starts_with("https://") {
            Err(bad("https:// S3 URIs are not supported; use s3://bucket/key"))
        } else {
            Err(bad("expected s3://bucket/prefix or file:///absolute/path"))
        }
    }

    /// The URI of `key` (a full key or absolute path) in the same bucket or file system.
    pub(crate) fn uri_of(&self, key: &str) -> String {
        match self {
            Location::S3 { bucket, .. } => format!("s3://{bucket}/{key}"),
            Location::Local { .. } => format!("file://{key}"),
        }
    }

    /// The key or absolute path this location names.
    pub(crate) fn key(&self) -> &str {
        match self {
            Location::S3 { key, .. } => key,
            Location::Local { path } => path,
        }
    }
}

/// An object opened by [`Storage::open`].
pub(crate) struct Opened {
    pub(crate) info: ObjectInfo,
    pub(crate) body: Body,
}

/// An opened object's bytes.
pub(crate) enum Body {
    /// From S3: its first bytes; the rest by ranges.
    Ranged { first: bytes::Bytes },
    /// A `file://` object.
    File(std::fs::File),
}

/// One object found under a prefix. `key` is the full key (S3) or absolute path (local).
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    /// Epoch milliseconds; with the size, it identifies a version where a listing carries no
    /// ETag (s3s-fs lists none; AWS, MinIO and moto do).
    pub modified_ms: i64,
}

impl Storage {
    /// Storage as this process's environment configures it.
    pub fn from_env() -> Self {
        Storage::new(S3Config::from_env())
    }

    pub fn new(config: S3Config) -> Self {
        Storage::build(config, None)
    }

    /// Storage that refuses `file://` URIs outside `roots` (for requests from clients that
    /// should not name any folder of this machine). Roots are taken as given, made absolute.
    pub fn with_local_roots(config: S3Config, roots: Vec<PathBuf>) -> Self {
        let roots = roots.into_iter().map(|r| std::path::absolute(&r).unwrap_or(r)).collect();
        Storage::build(config, Some(roots))
    }

    fn build(config: S3Config, local_roots: Option<Vec<PathBuf>>) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Storage { inner: Arc::new(Inner { config, local_roots, buckets: Default::default(), http }) }
    }

    /// Whether `uri` is one this storage reads and writes (parses, and for `file://` is
    /// under an allowed root), before anything is done with it.
    pub(crate) fn check(&self, uri: &str) -> Result<(), StorageError> {
        self.locate(uri).map(|_| ())
    }

    /// `uri` parsed, and a `file://` one checked against the allowed roots.
    fn locate(&self, uri: &str) -> Result<Location, StorageError> {
        let location = Location::parse(uri)?;
        if let (Location::Local { path }, Some(roots)) = (&location, &self.inner.local_roots) {
            let path = Path::new(path);
            // Lexically: no `..` may climb out of a root.
            let climbs = path.components().any(|c| matches!(c, std::path::Component::ParentDir));
            if climbs || !roots.iter().any(|root| path.starts_with(root)) {
                return Err(StorageError::NotAllowed { uri: uri.into(), roots: roots.clone() });
            }
        }
        Ok(location)
    }

    /// The S3 endpoint in use, or None for AWS itself.
    pub fn endpoint(&self) -> Option<&str> {
        self.inner.config.endpoint.as_deref()
    }

    /// How many requests staging keeps in flight.
    pub(crate) fn parallel_requests(&self) -> usize {
        self.inner.config.parallel_requests
    }

    /// How long a request may wait for the server's next bytes.
    pub(crate) fn read_timeout(&self) -> Duration {
        self.inner.config.read_timeout
    }

    pub fn region(&self) -> Option<&str> {
        self.inner.config.region.as_deref()
    }

    /// This process's AWS credentials, for a container that was allowed them.
    pub fn credentials(&self) -> Vec<(&'static str, String)> {
        self.inner.config.credentials.clone()
    }

    /// The bucket's object_store client, built on first use.
    fn bucket(&self, bucket: &str, uri: &str) -> Result<Arc<dyn ObjectStore>, StorageError> {
        self.clients(bucket, uri).map(|c| c.store)
    }

    /// The bucket's clients, built on first use.
    fn clients(&self, bucket: &str, uri: &str) -> Result<Clients, StorageError> {
        let mut buckets = self.inner.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(clients) = buckets.get(bucket) {
            return Ok(clients.clone());
        }
        let config = &self.inner.config;
        // object_store retries for minutes by default; a user waiting at a terminal should
        // hear about an unreachable endpoint in seconds.
        // Nor is a request that heard nothing for a whole read timeout retried: the server
        // that froze will not answer the next attempt sooner.
        let retry = RetryConfig {
            max_retries: 3,
            retry_timeout: config.read_timeout.min(Duration::from_secs(20)),
            ..Default::default()
        };
        // Enough idle connections kept for every request staging has in flight. The read
        // timeout is per read, so a slow but moving download never fails; the request
        // timeout only bounds one 16 MiB range.
        let options = ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_read_timeout(config.read_timeout)
            .with_timeout(Duration::from_secs(600))
            .with_pool_max_idle_per_host(config.parallel_requests);
        let mut builder =
            AmazonS3Builder::from_env().with_bucket_name(bucket).with_retry(retry).with_client_options(options);
        if let Some(region) = &config.region {
            builder = builder.with_region(region);
        }
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if config.allow_http {
            builder = builder.with_allow_http(true);
        }
        let store = builder.build().map_err(|e| self.error(uri, e))?;
        let region = config.region.clone().unwrap_or_else(|| "us-east-1".to_string());
        let endpoint = match &config.endpoint {
            Some(e) => e.trim_end_matches('/').to_string(),
            None => format!("https://s3.{region}.amazonaws.com"),
        };
        let rest = s3::Rest {
            http: self.inner.http.clone(),
            endpoint,
            region,
            credentials: store.credentials().clone(),
            timeout: config.read_timeout,
        };
        let clients = Clients { store: Arc::new(store), rest: Arc::new(rest) };
        buckets.insert(bucket.to_string(), clients.clone());
        Ok(clients)
    }

    fn rest_error(&self, uri: &str, source: s3::RestError) -> StorageError {
        if source.no_such_bucket() {
            return StorageError::NotFound { uri: uri.into() };
        }
        StorageError::S3Call { uri: uri.into(), endpoint: self.inner.config.endpoint.clone(), source: Box::new(source) }
    }

    fn error(&self, uri: &str, source: object_store::Error) -> StorageError {
        match source {
            object_store::Error::NotFound { .. } => StorageError::NotFound { uri: uri.into() },
            source => StorageError::S3 {
                uri: uri.into(),
                endpoint: self.inner.config.endpoint.clone(),
                source: Box::new(source),
            },
        }
    }

    /// Every object whose key starts with the location's key, as a string prefix (S3's rule:
    /// `data/tr` matches `data/train/a.csv` and `data/tr2.csv`).
    pub async fn list(&self, uri: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let location = self.locate(uri)?;
        match &location {
            Location::S3 { bucket, key } => {
                let rest = self.clients(bucket, uri)?.rest;
                rest.list_objects(bucket, key, self.inner.config.parallel_requests)
                    .await
                    .map_err(|e| self.rest_error(uri, e))
            }
            Location::Local { path } => self.list_local(uri, path).await,
        }
    }

    async fn list_local(&self, uri: &str, path: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let folder = match path.rsplit_once('/') {
            Some(("", _)) | None => "/",
            Some((dir, _)) => dir,
        };
        if !Path::new(folder).is_dir() {
            return Err(StorageError::NotFound { uri: uri.into() });
        }
        let store = LocalFileSystem::new();
        let prefix = StorePath::from_filesystem_path(folder)
            .map_err(|e| StorageError::BadUri { uri: uri.into(), reason: e.to_string() })?;
        let objects: Vec<_> = store.list(Some(&prefix)).try_collect().await.map_err(|e| self.error(uri, e))?;
        let mut found = Vec::new();
        for o in objects {
            let file = store.path_to_filesystem(&o.location).map_err(|e| self.error(uri, e))?;
            let file = file.to_string_lossy().into_owned();
            if file.starts_with(path) {
                found.push(ObjectInfo {
                    key: file,
                    size: o.size,
                    etag: o.e_tag,
                    modified_ms: o.last_modified.timestamp_millis(),
                });
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    /// Reads a small object (a manifest) whole.
    pub async fn read(&self, uri: &str) -> Result<Vec<u8>, StorageError> {
        match self.locate(uri)? {
            Location::S3 { bucket, key } => {
                let store = self.bucket(&bucket, uri)?;
                let got = store.get(&key_path(&key)).await.map_err(|e| self.error(uri, e))?;
                Ok(got.bytes().await.map_err(|e| self.error(uri, e))?.to_vec())
            }
            Location::Local { path } => tokio::fs::read(&path).await.map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound => StorageError::NotFound { uri: uri.into() },
                _ => StorageError::Io { action: "cannot read", path: path.into(), source },
            }),
        }
    }

    /// Opens one object for a reader that must not wait for all of it (Pipe mode): its size
    /// and version (`listed`, else asked for), and its first `first` bytes, read whole; the
    /// rest comes by [`Storage::read_range`]. Ranges read whole keep every request's pace the
    /// network's: a reader that pauses longer than a read timeout never fails a download. A
    /// `file://` object is the file itself.
    pub(crate) async fn open(
        &self,
        uri: &str,
        listed: Option<&ObjectInfo>,
        first: u64,
    ) -> Result<Opened, StorageError> {
        match self.locate(uri)? {
            Location::S3 { .. } => {
                let info = match listed {
                    Some(info) => info.clone(),
                    None => self.head(uri).await?,
                };
                let end = info.size.min(first);
                let bytes = if end == 0 {
                    bytes::Bytes::new()
                } else {
                    self.read_range(uri, 0..end, info.etag.as_deref()).await?
                };
                Ok(Opened { info, body: Body::Ranged { first: bytes } })
            }
            Location::Local { path } => {
                let not_found = |source: std::io::Error| match source.kind() {
                    std::io::ErrorKind::NotFound => StorageError::NotFound { uri: uri.into() },
                    _ => StorageError::Io { action: "cannot read", path: path.clone().into(), source },
                };
                let file = std::fs::File::open(&path).map_err(not_found)?;
                let size = file.metadata().map_err(not_found)?.len();
                Ok(Opened {
                    info: ObjectInfo { key: path.clone(), size, etag: None, modified_ms: 0 },
                    body: Body::File(file),
                })
            }
        }
    }

    /// `range` of an S3 object, read whole. `etag` makes the server refuse the bytes of an
    /// object that changed since it was listed.
    pub(crate) async fn read_range(
        &self,
        uri: &str,
        range: std::ops::Range<u64>,
        etag: Option<&str>,
    ) -> Result<bytes::Bytes, StorageError> {
        let Location::S3 { bucket, key } = self.locate(uri)? else {
            return Err(StorageError::BadUri { uri: uri.into(), reason: "ranged reads are for s3:// objects".into() });
        };
        let store = self.bucket(&bucket, uri)?;
        let options = object_store::GetOptions {
            range: Some(object_store::GetRange::Bounded(range)),
            if_match: etag.map(str::to_string),
            ..Default::default()
        };
        let got = store.get_opts(&key_path(&key), options).await.map_err(|e| self.error(uri, e))?;
        got.bytes().await.map_err(|e| self.error(uri, e))
    }

    /// Copies one object to `dest` (parents must exist). Returns the bytes written.
    pub async fn download(&self, uri: &str, dest: &Path) -> Result<u64, StorageError> {
        match self.locate(uri)? {
            Location::S3 { .. } => {
                let file = std::fs::File::create(dest).map_err(|source| StorageError::Io {
                    action: "cannot create",
                    path: dest.to_path_buf(),
                    source,
                })?;
                self.download_part(uri, None, None, &file, 0).await
            }
            // A plain copy lets the kernel use copy_file_range (and reflinks where the file
            // system has them); the source is only ever read.
            Location::Local { path } => tokio::fs::copy(&path, dest).await.map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound => StorageError::NotFound { uri: uri.into() },
                _ => StorageError::Io { action: "cannot copy to", path: dest.to_path_buf(), source },
            }),
        }
    }

    /// Uploads a local file to `uri`, streaming (multipart past a few MiB, never the whole file in
    /// memory). A `file://` destination appears atomically: written beside, then renamed.
    pub async fn upload(&self, src: &Path, uri: &str) -> Result<(), StorageError> {
        let io = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| StorageError::Io { action, path, source }
        };
        if let Location::Local { path } = self.locate(uri)? {
            // A copy (reflinked where possible) rather than a stream through this process.
            let dest = PathBuf::from(path);
            let tmp = partial_beside(&dest).await?;
            tokio::fs::copy(src, &tmp).await.map_err(io("cannot write", &tmp))?;
            return tokio::fs::rename(&tmp, &dest).await.map_err(io("cannot rename into", &dest));
        }
        let file = tokio::fs::File::open(src).await.map_err(io("cannot open", src))?;
        self.upload_file(file.into_std().await, src, uri).await
    }

    /// Uploads what an already open file holds (read from its descriptor, whatever its path
    /// now names); `name` is for messages. Streams through [`Upload`], so a `file://`
    /// destination also appears only once complete.
    pub(crate) async fn upload_file(&self, file: std::fs::File, name: &Path, uri: &str) -> Result<(), StorageError> {
        let io = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| StorageError::Io { action, path, source }
        };
        let mut file = tokio::fs::File::from_std(file);
        let src = name;
        let mut upload = Upload::start(self, uri).await?;
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let n = match tokio::io::AsyncReadExt::read(&mut file, &mut buffer).await {
                Ok(n) => n,
                Err(e) => {
                    upload.abort().await;
                    return Err(io("cannot read", src)(e));
                }
            };
            if n == 0 {
                return upload.finish().await;
            }
            if let Err(e) = upload.write(&buffer[..n]).await {
                upload.abort().await;
                return Err(e);
            }
        }
    }

    /// An object's size and version, without its bytes.
    pub async fn head(&self, uri: &str) -> Result<ObjectInfo, StorageError> {
        match self.locate(uri)? {
            Location::S3 { bucket, key } => {
                let store = self.bucket(&bucket, uri)?;
                let meta = store.head(&key_path(&key)).await.map_err(|e| self.error(uri, e))?;
                Ok(ObjectInfo {
                    key,
                    size: meta.size,
                    etag: meta.e_tag,
                    modified_ms: meta.last_modified.timestamp_millis(),
                })
            }
            Location::Local { path } => {
                let meta = tokio::fs::metadata(&path).await.map_err(|source| match source.kind() {
                    std::io::ErrorKind::NotFound => StorageError::NotFound { uri: uri.into() },
                    _ => StorageError::Io { action: "cannot read", path: path.clone().into(), source },
                })?;
                let modified_ms = meta
                    .modified()
                    .ok()
                    .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                Ok(ObjectInfo { key: path, size: meta.len(), etag: None, modified_ms })
            }
        }
    }

    /// Fetches `range` of an S3 object (all of it when `None`) into `file` at `offset`,
    /// streaming: memory stays bounded whatever the size. `etag` makes the server refuse a part
    /// of an object that changed since it was listed.
    pub async fn download_part(
        &self,
        uri: &str,
        range: Option<std::ops::Range<u64>>,
        etag: Option<&str>,
        file: &std::fs::File,
        offset: u64,
    ) -> Result<u64, StorageError> {
        use std::os::unix::fs::FileExt;
        let Location::S3 { bucket, key } = self.locate(uri)? else {
            return Err(StorageError::BadUri {
                uri: uri.into(),
                reason: "ranged downloads are for s3:// objects".into(),
            });
        };
        let store = self.bucket(&bucket, uri)?;
        let options = object_store::GetOptions {
            range: range.map(object_store::GetRange::Bounded),
            if_match: etag.map(str::to_string),
            ..Default::default()
        };
        let got = store.get_opts(&key_path(&key), options).await.map_err(|e| self.error(uri, e))?;
        let mut stream = got.into_stream();
        let mut at = offset;
        while let Some(chunk) = stream.try_next().await.map_err(|e| self.error(uri, e))? {
            file.write_all_at(&chunk, at).map_err(|source| StorageError::Io {
                action: "cannot write",
                path: PathBuf::from(uri),
                source,
            })?;
            at += chunk.len() as u64;
        }
        Ok(at - offset)
    }

    /// Deletes one object; one that is already gone is not an error.
    pub async fn delete(&self, uri: &str) -> Result<(), StorageError> {
        match self.locate(uri)? {
            Location::S3 { bucket, key } => {
                let store = self.bucket(&bucket, uri)?;
                match store.delete(&key_path(&key)).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(self.error(uri, e)),
                }
            }
            Location::Local { path } => match tokio::fs::remove_file(&path).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(StorageError::Io { action: "cannot delete", path: path.into(), source }),
            },
        }
    }

    /// Removes the half-written uploads a killed smlocal left in the folder of `uri` (a job's
    /// `<S3OutputPath>/<job>/output/`, which only that job writes): `file://` files that were
    /// never renamed into place, and S3 multipart uploads that were never completed (AWS
    /// keeps and bills their parts until they are aborted). Returns how many.
    pub(crate) async fn discard_partials(&self, uri: &str) -> Result<usize, StorageError> {
        match self.locate(uri)? {
            Location::Local { path } => Ok(Path::new(&path).parent().map_or(0, discard_local_partials)),
            Location::S3 { bucket, key } => {
                // Never a whole bucket: only the folder that holds the archive.
                let Some((folder, _)) = key.rsplit_once('/') else {
                    return Ok(0);
                };
                let folder = format!("{folder}/");
                let rest = self.clients(&bucket, uri)?.rest;
                let uploads = rest.list_uploads(&bucket, &folder).await.map_err(|e| self.rest_error(uri, e))?;
                for upload in &uploads {
                    rest.abort_upload(&bucket, upload).await.map_err(|e| self.rest_error(uri, e))?;
                }
                Ok(uploads.len())
            }
        }
    }

    /// Whether an object exists (used so a job never overwrites another job's results).
    pub async fn exists(&self, uri: &str) -> Result<bool, StorageError> {
        match self.locate(uri)? {
            Location::S3 { bucket, key } => {
                let store = self.bucket(&bucket, uri)?;
                match store.head(&key_path(&key)).await {
                    Ok(_) => Ok(true),
                    Err(object_store::Error::NotFound { .. }) => Ok(false),
                    Err(e) => Err(self.error(uri, e)),
                }
            }
            Location::Local { path } => Ok(Path::new(&path).exists()),
        }
    }
}

/// Where a `file://` destination is written before it is renamed into place (its folder is
/// made if needed).
async fn partial_beside(dest: &Path) -> Result<PathBuf, StorageError> {
    let parent = dest.parent().unwrap_or(Path::new("/")).to_path_buf();
    tokio::fs::create_dir_all(&parent).await.map_err(|source| StorageError::Io {
        action: "cannot create",
        path: parent.clone(),
        source,
    })?;
    let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("upload");
    Ok(parent.join(format!(".{name}{PARTIAL_SUFFIX}")))
}

/// A streaming upload: bytes go out as they are written (multipart on S3 past a few MiB);
/// a `file://` destination appears only when finished, written beside and renamed.
pub(crate) struct Upload {
    uri: String,
    sink: UploadSink,
}

enum UploadSink {
    S3(object_store::buffered::BufWriter),
    Local { file: tokio::fs::File, tmp: PathBuf, dest: PathBuf },
}

impl Upload {
    pub(crate) async fn start(storage: &Storage, uri: &str) -> Result<Upload, StorageError> {
        let sink = match storage.locate(uri)? {
            Location::S3 { bucket, key } => {
                let store = storage.bucket(&bucket, uri)?;
                UploadSink::S3(object_store::buffered::BufWriter::new(store, key_path(&key)))
            }
            Location::Local { path } => {
                let dest = PathBuf::from(path);
                let tmp = partial_beside(&dest).await?;
                let file = tokio::fs::File::create(&tmp).await.map_err(|source| StorageError::Io {
                    action: "cannot create",
                    path: tmp.clone(),
                    source,
                })?;
                UploadSink::Local { file, tmp, dest }
            }
        };
        Ok(Upload { uri: uri.into(), sink })
    }

    pub(crate) async fn write(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        let result = match &mut self.sink {
            UploadSink::S3(w) => w.write_all(bytes).await,
            UploadSink::Local { file, .. } => file.write_all(bytes).await,
        };
        result.map_err(|source| StorageError::Io { action: "cannot upload to", path: PathBuf::from(&self.uri), source })
    }

    pub(crate) async fn finish(self) -> Result<(), StorageError> {
        let uri = self.uri;
        let io = |action| {
            let path = PathBuf::from(&uri);
            move |source| StorageError::Io { action, path, source }
        };
        match self.sink {
            UploadSink::S3(mut w) => w.shutdown().await.map_err(io("cannot finish uploading")),
            UploadSink::Local { mut file, tmp, dest } => {
                file.flush().await.map_err(io("cannot write"))?;
                tokio::fs::rename(&tmp, &dest).await.map_err(io("cannot rename into"))
            }
        }
    }

    /// Gives up: no partial object is left at the destination.
    pub(crate) async fn abort(self) {
        match self.sink {
            UploadSink::S3(mut w) => {
                let _ = w.abort().await;
            }
            UploadSink::Local { tmp, .. } => {
                let _ = tokio::fs::remove_file(&tmp).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_or_say_what_is_expected() {
        assert_eq!(
            Location::parse("s3://bucket/a/b").unwrap(),
            Location::S3 { bucket: "bucket".into(), key: "a/b".into() }
        );
        assert_eq!(Location::parse("s3://bucket").unwrap(), Location::S3 { bucket: "bucket".into(), key: "".into() });
        assert_eq!(Location::parse("file:///data/x").unwrap(), Location::Local { path: "/data/x".into() });
        assert!(Location::parse("file://relative/x").unwrap_err().to_string().contains("absolute path"));
        assert!(Location::parse("gs://b/k").unwrap_err().to_string().contains("expected s3://"));
    }

    #[tokio::test]
    async fn local_listing_uses_string_prefixes() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["train/a.csv", "train/sub/b.csv", "train2/c.csv", "test/d.csv"] {
            let p = dir.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, f).unwrap();
        }
        let root = dir.path().display();
        let storage = Storage::new(S3Config::default());
        let keys = |objs: Vec<ObjectInfo>| objs.into_iter().map(|o| o.key).collect::<Vec<_>>();
        let all = keys(storage.list(&format!("file://{root}/train")).await.unwrap());
        assert_eq!(
            all,
            [format!("{root}/train/a.csv"), format!("{root}/train/sub/b.csv"), format!("{root}/train2/c.csv")]
        );
        let slash = keys(storage.list(&format!("file://{root}/train/")).await.unwrap());
        assert_eq!(slash.len(), 2);
        assert!(matches!(storage.list("file:///no/such/dir/").await, Err(StorageError::NotFound { .. })));
    }

    #[tokio::test]
    async fn file_uris_outside_the_allowed_roots_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.csv"), b"1").unwrap();
        let open = Storage::with_local_roots(S3Config::default(), vec![dir.path().to_path_buf()]);
        let inside = format!("file://{}/a.csv", dir.path().display());
        assert!(open.exists(&inside).await.unwrap());
        for uri in ["file:///etc/passwd".to_string(), format!("file://{}/../../etc/passwd", dir.path().display())] {
            let err = open.exists(&uri).await.unwrap_err();
            assert!(matches!(err, StorageError::NotAllowed { .. }), "{uri}: {err}");
        }
        let none = Storage::with_local_roots(S3Config::default(), Vec::new());
        assert!(none.list(&inside).await.unwrap_err().to_string().contains("--allow-file-root"));
    }

    #[tokio::test]
    async fn local_upload_is_atomic_and_makes_folders() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.bin");
        std::fs::write(&src, b"payload").unwrap();
        let dest = dir.path().join("out/job/output/model.tar.gz");
        let storage = Storage::new(S3Config::default());
        storage.upload(&src, &format!("file://{}", dest.display())).await.unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"payload");
        assert!(storage.exists(&format!("file://{}", dest.display())).await.unwrap());
    }
}
