//! The tests' S3-compatible server: s3s-fs (a real S3 implementation over a folder) on
//! 127.0.0.1, with what it lacks and the tests need: the S3 console's folder markers (a
//! zero-byte object whose key ends in `/`, which s3s-fs cannot store as a file),
//! `ListMultipartUploads` (so a test can see an upload a killed run left), a count of object
//! GETs per bucket and per key, an object that always arrives cut short, and a server that
//! can be paused (it accepts connections and never answers) or stopped (it refuses them).

use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

pub(crate) const ACCESS_KEY: &str = "smlocal-test-key";
pub(crate) const SECRET_KEY: &str = "smlocal-test-secret";

/// One running server.
pub(crate) struct S3Server {
    pub endpoint: String,
    pub root: PathBuf,
    control: Arc<Control>,
    extra: Arc<Mutex<Extra>>,
}

#[derive(Default)]
struct Control {
    /// Added before every answer (a far server's time to first byte).
    latency: std::time::Duration,
    paused: AtomicBool,
    resumed: tokio::sync::Notify,
    stopped: tokio_util::sync::CancellationToken,
}

/// Base64, URL-safe, unpadded: how s3s-fs names an object's internal-info file.
fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

impl S3Server {
    /// An object written as the server's own file, mostly holes: `size` bytes that cost
    /// nothing on disk, starting with `head` and ending with `tail`. Its ETag is recorded
    /// where s3s-fs keeps one (the object's internal-info file), as an upload would have:
    /// otherwise every GET, ranged or not, reads the whole file to hash it.
    pub(crate) fn put_sparse(&self, bucket: &str, key: &str, size: u64, head: &[u8], tail: &[u8]) {
        use std::io::{Seek, SeekFrom, Write};
        let path = self.root.join(bucket).join(key);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("create the object's folder");
        let mut f = std::fs::File::create(&path).expect("create the object");
        f.write_all(head).expect("write its head");
        f.seek(SeekFrom::Start(size - tail.len() as u64)).expect("seek");
        f.write_all(tail).expect("write its tail");
        let info = self.root.join(format!(
            ".bucket-{}.object-{}.internal.json",
            base64_url(bucket.as_bytes()),
            base64_url(key.as_bytes())
        ));
        std::fs::write(info, format!(r#"{{"e_tag":"sparse{size:024x}"}}"#)).expect("write the ETag");
    }

    /// Starts a server of its own on its own thread and runtime, so it outlives every
    /// test's runtime.
    pub(crate) fn start() -> S3Server {
        let root = tempfile::Builder::new().prefix("smlocal-s3-").tempdir().expect("tempdir").keep();
        S3Server::on(root, Control::default(), Arc::new(Mutex::new(Extra::default())))
    }

    /// A second server over the same buckets that waits `latency` before every answer, as
    /// a far S3 does (AWS: 10-50 ms to first byte).
    #[allow(dead_code)]
    pub(crate) fn with_latency(&self, latency: std::time::Duration) -> S3Server {
        S3Server::on(self.root.clone(), Control { latency, ..Control::default() }, self.extra.clone())
    }

    fn on(root: PathBuf, control: Control, extra: Arc<Mutex<Extra>>) -> S3Server {
        let control = Arc::new(control);
        let (tx, rx) = std::sync::mpsc::channel();
        let (fs_root, ctl, ext) = (root.clone(), control.clone(), extra.clone());
        std::thread::spawn(move || {
            let rt =
                tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
            rt.block_on(serve(fs_root, ctl, ext, tx));
        });
        let addr = rx.recv().expect("the S3 server did not start");
        S3Server { endpoint: format!("http://{addr}"), root, control, extra }
    }

    /// Adds a folder marker, as the S3 console's "Create folder" does (a zero-byte object
    /// `key`, which ends in `/`).
    #[allow(dead_code)]
    pub(crate) fn put_folder_marker(&self, bucket: &str, key: &str) {
        assert!(key.ends_with('/'), "a folder marker's key ends in '/'");
        let at = Timestamp::from(std::time::SystemTime::now());
        lock(&self.extra).markers.insert((bucket.to_string(), key.to_string()), at);
    }

    /// The keys of the unfinished multipart uploads the server holds for `bucket`.
    #[allow(dead_code)]
    pub(crate) fn pending_uploads(&self, bucket: &str) -> Vec<String> {
        lock(&self.extra).uploads.values().filter(|(b, ..)| b == bucket).map(|(_, k, _)| k.clone()).collect()
    }

    /// From now on, requests are read and never answered (a frozen server or network).
    #[allow(dead_code)]
    pub(crate) fn pause(&self) {
        self.control.paused.store(true, Ordering::SeqCst);
    }

    #[allow(dead_code)]
    pub(crate) fn resume(&self) {
        self.control.paused.store(false, Ordering::SeqCst);
        self.control.resumed.notify_waiters();
    }

    /// Closes the listener and every connection: from now on connections are refused.
    #[allow(dead_code)]
    pub(crate) fn stop(&self) {
        self.control.stopped.cancel();
    }
}

async fn serve(
    root: PathBuf,
    control: Arc<Control>,
    extra: Arc<Mutex<Extra>>,
    tx: std::sync::mpsc::Sender<std::net::SocketAddr>,
) {
    let fs = s3s_fs::FileSystem::new(&root).expect("s3s-fs root");
    let mut builder = s3s::service::S3ServiceBuilder::new(Plus { fs, extra });
    builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1");
    tx.send(listener.local_addr().expect("addr")).expect("send addr");
    let http = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    let ctl = control.clone();
    let handler = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        count_object_get(&req);
        let cut = req.method() == hyper::Method::GET && req.uri().path().contains("cut-short");
        let response = hyper::service::Service::call(&service, req);
        let ctl = ctl.clone();
        async move {
            if !ctl.latency.is_zero() {
                tokio::time::sleep(ctl.latency).await;
            }
            while ctl.paused.load(Ordering::SeqCst) {
                let resumed = ctl.resumed.notified();
                if !ctl.paused.load(Ordering::SeqCst) {
                    break;
                }
                resumed.await;
            }
            let response: hyper::Response<s3s::Body> = response.await?;
            if !cut {
                return Ok::<_, s3s::HttpError>(response);
            }
            // Objects named `cut-short...` arrive with half their body, always: a broken
            // connection the client cannot recover from.
            let (parts, body) = response.into_parts();
            let bytes = http_body_util::BodyExt::collect(body).await.map(|b| b.to_bytes()).unwrap_or_default();
            Ok::<_, s3s::HttpError>(hyper::Response::from_parts(parts, s3s::Body::from(bytes.slice(..bytes.len() / 2))))
        }
    });
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = control.stopped.cancelled() => return,
        };
        let Ok((socket, _)) = accepted else {
            continue;
        };
        // As S3, MinIO and every production HTTP server do: without it, Nagle's algorithm
        // and delayed ACKs stall every response on a reused connection.
        let _ = socket.set_nodelay(true);
        let conn = http.serve_connection(hyper_util::rt::TokioIo::new(socket), handler.clone()).into_owned();
        let stopped = control.stopped.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = conn => {}
                _ = stopped.cancelled() => {}
            }
        });
    }
}

fn counts() -> &'static Mutex<HashMap<String, HashMap<String, u64>>> {
    static GETS: OnceLock<Mutex<HashMap<String, HashMap<String, u64>>>> = OnceLock::new();
    GETS.get_or_init(Default::default)
}

/// A GET of an object (not a listing: those carry a query and no key).
fn count_object_get<B>(req: &hyper::Request<B>) {
    if req.method() != hyper::Method::GET
        || req.uri().query().is_some_and(|q| q.contains("list-type") || q.contains("prefix") || q.contains("uploads"))
    {
        return;
    }
    let path = req.uri().path().trim_start_matches('/');
    if let Some((bucket, key)) = path.split_once('/')
        && !key.is_empty()
        && let Ok(mut gets) = counts().lock()
    {
        *gets.entry(bucket.to_string()).or_default().entry(key.to_string()).or_default() += 1;
    }
}

/// How many object GETs a bucket has served, per key as it appeared in the request path.
pub(crate) fn object_gets(bucket: &str) -> HashMap<String, u64> {
    counts().lock().map(|g| g.get(bucket).cloned().unwrap_or_default()).unwrap_or_default()
}

/// s3s-fs with folder markers and a list of unfinished multipart uploads.
struct Plus {
    fs: s3s_fs::FileSystem,
    extra: Arc<Mutex<Extra>>,
}

#[derive(Default)]
struct Extra {
    /// `(bucket, key)` of every folder marker.
    markers: BTreeMap<(String, String), Timestamp>,
    /// Upload id to `(bucket, key, initiated)`.
    uploads: BTreeMap<String, (String, String, Timestamp)>,
}

impl Plus {
    fn extra(&self) -> std::sync::MutexGuard<'_, Extra> {
        lock(&self.extra)
    }
}

fn lock(extra: &Mutex<Extra>) -> std::sync::MutexGuard<'_, Extra> {
    extra.lock().unwrap_or_else(|p| p.into_inner())
}

#[async_trait::async_trait]
impl S3 for Plus {
    async fn create_bucket(&self, req: S3Request<CreateBucketInput>) -> S3Result<S3Response<CreateBucketOutput>> {
        self.fs.create_bucket(req).await
    }

    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        self.fs.head_bucket(req).await
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.fs.get_bucket_location(req).await
    }

    async fn list_buckets(&self, req: S3Request<ListBucketsInput>) -> S3Result<S3Response<ListBucketsOutput>> {
        self.fs.list_buckets(req).await
    }

    async fn list_objects(&self, req: S3Request<ListObjectsInput>) -> S3Result<S3Response<ListObjectsOutput>> {
        self.fs.list_objects(req).await
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        self.fs.get_object(req).await
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        self.fs.head_object(req).await
    }

    async fn copy_object(&self, req: S3Request<CopyObjectInput>) -> S3Result<S3Response<CopyObjectOutput>> {
        self.fs.copy_object(req).await
    }

    async fn delete_objects(&self, req: S3Request<DeleteObjectsInput>) -> S3Result<S3Response<DeleteObjectsOutput>> {
        self.fs.delete_objects(req).await
    }

    async fn upload_part(&self, req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        self.fs.upload_part(req).await
    }

    async fn list_parts(&self, req: S3Request<ListPartsInput>) -> S3Result<S3Response<ListPartsOutput>> {
        self.fs.list_parts(req).await
    }

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        if req.input.key.ends_with('/') && req.input.content_length.unwrap_or(0) == 0 {
            let at = Timestamp::from(std::time::SystemTime::now());
            self.extra().markers.insert((req.input.bucket.clone(), req.input.key.clone()), at);
            return Ok(S3Response::new(PutObjectOutput::default()));
        }
        self.fs.put_object(req).await
    }

    async fn delete_object(&self, req: S3Request<DeleteObjectInput>) -> S3Result<S3Response<DeleteObjectOutput>> {
        let marker = (req.input.bucket.clone(), req.input.key.clone());
        if self.extra().markers.remove(&marker).is_some() {
            return Ok(S3Response::new(DeleteObjectOutput::default()));
        }
        self.fs.delete_object(req).await
    }

    async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> S3Result<S3Response<ListObjectsV2Output>> {
        let bucket = req.input.bucket.clone();
        let prefix = req.input.prefix.clone().unwrap_or_default();
        let first_page = req.input.continuation_token.is_none();
        let after = req.input.start_after.clone().unwrap_or_default();
        let mut response = self.fs.list_objects_v2(req).await?;
        if first_page {
            let markers: Vec<Object> = self
                .extra()
                .markers
                .iter()
                .filter(|((b, k), _)| *b == bucket && k.starts_with(&prefix) && *k > after)
                .map(|((_, k), at)| Object {
                    key: Some(k.clone()),
                    size: Some(0),
                    last_modified: Some(at.clone()),
                    ..Default::default()
                })
                .collect();
            if !markers.is_empty() {
                let contents = response.output.contents.get_or_insert_with(Vec::new);
                contents.extend(markers);
                contents.sort_by(|a, b| a.key.cmp(&b.key));
                response.output.key_count = Some(contents.len() as i32);
            }
        }
        Ok(response)
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        let response = self.fs.create_multipart_upload(req).await?;
        if let Some(id) = &response.output.upload_id {
            let at = Timestamp::from(std::time::SystemTime::now());
            self.extra().uploads.insert(id.clone(), (bucket, key, at));
        }
        Ok(response)
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let id = req.input.upload_id.clone();
        let response = self.fs.complete_multipart_upload(req).await?;
        self.extra().uploads.remove(&id);
        Ok(response)
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let id = req.input.upload_id.clone();
        let response = self.fs.abort_multipart_upload(req).await?;
        self.extra().uploads.remove(&id);
        Ok(response)
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let bucket = req.input.bucket.clone();
        let prefix = req.input.prefix.clone().unwrap_or_default();
        let uploads: Vec<MultipartUpload> = self
            .extra()
            .uploads
            .iter()
            .filter(|(_, (b, k, _))| *b == bucket && k.starts_with(&prefix))
            .map(|(id, (_, k, at))| MultipartUpload {
                key: Some(k.clone()),
                upload_id: Some(id.clone()),
                initiated: Some(at.clone()),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(bucket),
            prefix: Some(prefix),
            is_truncated: Some(false),
            uploads: Some(uploads),
            ..Default::default()
        }))
    }
}
