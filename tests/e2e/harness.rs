//! What every end-to-end test stands on: the real Docker Engine, the sample images built
//! locally, a real S3-compatible server (s3s-fs) on 127.0.0.1 started in this process, and
//! the real `smlocal` binary. Nothing is mocked. A missing Docker Engine fails the test
//! (it never skips), so CI cannot pass without having run these.

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub(crate) const REGION: &str = "us-west-2";
pub(crate) const SAMPLE_IMAGE: &str = "smlocal/linear-regression:latest";
pub(crate) const PROBE_IMAGE: &str = "smlocal/probe:latest";
pub(crate) const PROBE: &str = "/usr/local/bin/probe";
pub(crate) const SCRIPT_IMAGE: &str = "smlocal/script-mode:latest";

/// Builds the sample and probe images once per test process, failing loudly when Docker is
/// not there.
pub(crate) fn images() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let info = Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]).output();
        match info {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!(
                "these tests need a running Docker Engine and `docker info` failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!("these tests need Docker and the docker CLI is missing: {e}"),
        }
        build("build-images.sh");
    });
}

/// Runs one of `sample-algorithms`' image builds, failing the test loudly if it fails.
fn build(script: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-algorithms").join(script);
    let status = Command::new("bash").arg(&script).status().expect("run an image build");
    assert!(status.success(), "{} failed", script.display());
}

/// The framework image: smlocal's stand-in for SageMaker's scikit-learn image (AWS's
/// training toolkit with scikit-learn and pandas), which requests for
/// `sagemaker-scikit-learn:1.2-1-cpu-py3` run as.
pub(crate) const TOOLKIT_IMAGE: &str = "smlocal/sagemaker-scikit-learn:1.2-1-cpu-py3";

/// Builds the framework image (`smlocal images build sklearn`; cached by name) once per
/// process.
pub(crate) fn toolkit_image() {
    stand_in("sklearn", TOOLKIT_IMAGE);
}

/// Builds smlocal's stand-in NAME with `smlocal images build NAME`, as a user would, unless
/// IMAGE is already there, built from these sources; the downloaded wheels are kept in
/// `target/stand-ins-home` for the next run. Fails loudly when the build fails.
pub(crate) fn stand_in(name: &str, image: &str) {
    static BUILT: OnceLock<Mutex<()>> = OnceLock::new();
    let _one_at_a_time = BUILT.get_or_init(|| Mutex::new(())).lock().unwrap_or_else(|e| e.into_inner());
    images();
    let home = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/stand-ins-home");
    std::fs::create_dir_all(&home).expect("create target/stand-ins-home");
    // Cached by name, unless built from other sources than these (`smlocal images` says so).
    let listed = Command::new(env!("CARGO_BIN_EXE_smlocal"))
        .arg("images")
        .env("SMLOCAL_HOME", &home)
        .output()
        .expect("smlocal images");
    let listed = String::from_utf8_lossy(&listed.stdout);
    let line = listed.lines().find(|l| l.contains(image)).unwrap_or_default();
    if line.contains("yes") && !line.contains("older sources") {
        return;
    }
    let status = Command::new(env!("CARGO_BIN_EXE_smlocal"))
        .args(["images", "build", name])
        .env("SMLOCAL_HOME", &home)
        .status()
        .expect("run smlocal images build");
    assert!(status.success(), "smlocal images build {name} failed");
}

/// A `sourcedir.tar.gz` as the SageMaker SDK packs `entry_point` and `source_dir`.
pub(crate) fn sourcedir(files: &[(&str, &str)]) -> Vec<u8> {
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for (name, text) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, text.as_bytes()).expect("tar entry");
    }
    tar.into_inner().expect("tar").finish().expect("gzip")
}

/// Builds the script-mode image (Python and boto3, made by mmdebstrap) once per process.
pub(crate) fn script_image() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        images();
        build("build-script-image.sh");
    });
}

pub(crate) use crate::s3_server::{ACCESS_KEY, S3Server, SECRET_KEY};

/// The S3-compatible server shared by the tests of this process.
pub(crate) fn s3() -> &'static S3Server {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER.get_or_init(S3Server::start)
}

impl S3Server {
    /// A new, empty bucket for one test.
    pub(crate) fn bucket(&self, name: &str) -> Bucket {
        // s3s-fs keeps a bucket as a folder under its root.
        std::fs::create_dir_all(self.root.join(name)).expect("create bucket");
        let store = AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_bucket_name(name)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_region(REGION)
            .build()
            .expect("S3 client");
        Bucket { name: name.into(), store: Arc::new(store) }
    }
}

pub(crate) struct Bucket {
    pub name: String,
    store: Arc<dyn ObjectStore>,
}

impl Bucket {
    pub(crate) fn uri(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.name)
    }

    /// The client the helpers use, for callers that need object_store itself (the benchmark).
    #[allow(dead_code)]
    pub(crate) fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// How many object GETs this bucket has served so far.
    pub(crate) fn object_gets(&self) -> u64 {
        crate::s3_server::object_gets(&self.name).values().sum()
    }

    pub(crate) fn put(&self, key: &str, bytes: &[u8]) {
        let payload = PutPayload::from(bytes.to_vec());
        block_on(self.store.put(&StorePath::parse(key).expect("a key"), payload)).expect("put object");
    }

    pub(crate) fn get(&self, key: &str) -> Option<Vec<u8>> {
        match block_on(self.store.get(&StorePath::parse(key).expect("a key"))) {
            Ok(got) => Some(block_on(got.bytes()).expect("read object").to_vec()),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("get {key}: {e}"),
        }
    }
}

/// One runtime for the tests' own S3 client: its pooled connections live on it.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime")
        })
        .block_on(f)
}

/// The `smlocal` binary with its own state directory and the test S3 server configured
/// through the standard AWS variables only.
pub(crate) struct Smlocal {
    pub home: tempfile::TempDir,
}

impl Smlocal {
    pub(crate) fn new() -> Self {
        images();
        Smlocal { home: tempfile::Builder::new().prefix("smlocal-home-").tempdir().expect("tempdir") }
    }

    pub(crate) fn command(&self) -> Command {
        let server = s3();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_smlocal"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SMLOCAL_HOME", self.home.path())
            .env("AWS_ENDPOINT_URL", &server.endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_REGION", REGION)
            .stdin(Stdio::null());
        if let Ok(host) = std::env::var("DOCKER_HOST") {
            cmd.env("DOCKER_HOST", host);
        }
        cmd
    }

    /// Runs `smlocal train` on a request and returns what it printed and its exit code.
    pub(crate) fn train(&self, request: &Value, extra: &[&str]) -> Run {
        let file = self.home.path().join(format!("request-{}.json", unique()));
        std::fs::write(&file, serde_json::to_vec_pretty(request).expect("json")).expect("write request");
        let output = self.command().arg("train").arg(&file).args(extra).output().expect("run smlocal");
        Run::from(output)
    }

    /// Starts `smlocal train` in the background; returns the process and its stdout's lines.
    pub(crate) fn spawn_train(&self, request: &Value, extra: &[&str]) -> (std::process::Child, OutputLines) {
        let file = self.home.path().join(format!("request-{}.json", unique()));
        std::fs::write(&file, serde_json::to_vec(request).expect("json")).expect("write request");
        let mut child = self
            .command()
            .arg("train")
            .arg(&file)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run smlocal");
        let lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().expect("stdout")));
        (child, lines)
    }

    pub(crate) fn describe(&self, name: &str) -> Value {
        let out = self.command().args(["describe", name]).output().expect("run smlocal describe");
        assert!(out.status.success(), "describe failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("describe prints JSON")
    }

    pub(crate) fn job_dir(&self, name: &str) -> PathBuf {
        self.home.path().join("jobs").join(name)
    }
}

/// A background run's stdout, line by line.
pub(crate) type OutputLines = std::io::Lines<std::io::BufReader<std::process::ChildStdout>>;

pub(crate) struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

/// A name no other test of any process uses.
pub(crate) fn unique() -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("{}-{n}", std::process::id())
}

/// A request in the shape boto3 sends, with one S3 channel and an S3 output path.
pub(crate) fn request(name: &str, image: &str, bucket: &Bucket) -> Value {
    json!({
        "TrainingJobName": name,
        "RoleArn": "arn:aws:iam::123456789012:role/SageMakerRole",
        "AlgorithmSpecification": {"TrainingImage": image, "TrainingInputMode": "File"},
        "InputDataConfig": [{
            "ChannelName": "train",
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": bucket.uri("train/"), "S3DataDistributionType": "FullyReplicated"}}
        }],
        "OutputDataConfig": {"S3OutputPath": bucket.uri("output")},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
        "StoppingCondition": {"MaxRuntimeInSeconds": 300}
    })
}

/// A request whose container is the probe running `steps`.
pub(crate) fn probe_request(name: &str, bucket: &Bucket, steps: &[&str]) -> Value {
    let mut r = request(name, PROBE_IMAGE, bucket);
    let mut entry = vec![PROBE.to_string()];
    entry.extend(steps.iter().map(|s| s.to_string()));
    r["AlgorithmSpecification"]["ContainerEntrypoint"] = json!(entry);
    r
}

/// Bytes no compressor can shrink (xorshift), the same for the same seed.
pub(crate) fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The entries of a gzip tarball: path → (is symlink, link target or file bytes).
pub(crate) fn tar_entries(bytes: &[u8]) -> Vec<(String, Entry)> {
    let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(bytes));
    let mut out = Vec::new();
    for entry in archive.entries().expect("a tar.gz") {
        let mut entry = entry.expect("tar entry");
        let path = entry.path().expect("path").display().to_string();
        let kind = entry.header().entry_type();
        let item = if kind.is_symlink() {
            Entry::Link(entry.link_name().expect("link").map(|l| l.display().to_string()).unwrap_or_default())
        } else if kind.is_dir() {
            Entry::Dir
        } else {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).expect("read entry");
            Entry::File(data)
        };
        out.push((path, item));
    }
    out
}

#[derive(Debug, PartialEq)]
pub(crate) enum Entry {
    File(Vec<u8>),
    Dir,
    Link(String),
}

pub(crate) fn file_entry(entries: &[(String, Entry)], path: &str) -> Vec<u8> {
    match entries.iter().find(|(p, _)| p == path) {
        Some((_, Entry::File(data))) => data.clone(),
        other => panic!(
            "{path} is not a file in the archive: {other:?}; entries: {:?}",
            entries.iter().map(|e| &e.0).collect::<Vec<_>>()
        ),
    }
}

/// Containers and networks still labelled for a job.
pub(crate) fn leftovers(job: &str) -> (String, String) {
    let label = format!("label=smlocal.job={job}");
    let containers = Command::new("docker").args(["ps", "-aq", "--filter", &label]).output().expect("docker ps");
    let networks =
        Command::new("docker").args(["network", "ls", "-q", "--filter", &label]).output().expect("docker network ls");
    (
        String::from_utf8_lossy(&containers.stdout).trim().to_string(),
        String::from_utf8_lossy(&networks.stdout).trim().to_string(),
    )
}

/// Volumes (the overlay channel mounts) still labelled for a job.
pub(crate) fn leftover_volumes(job: &str) -> String {
    let label = format!("label=smlocal.job={job}");
    let volumes =
        Command::new("docker").args(["volume", "ls", "-q", "--filter", &label]).output().expect("docker volume ls");
    String::from_utf8_lossy(&volumes.stdout).trim().to_string()
}

/// Removes what a `--keep` run left.
pub(crate) fn remove_leftovers(job: &str) {
    let (containers, networks) = leftovers(job);
    for id in containers.split_whitespace() {
        let _ = Command::new("docker").args(["rm", "-f", id]).output();
    }
    for id in networks.split_whitespace() {
        let _ = Command::new("docker").args(["network", "rm", id]).output();
    }
    for name in leftover_volumes(job).split_whitespace() {
        let _ = Command::new("docker").args(["volume", "rm", name]).output();
    }
}

/// This machine's memory, as the kernel reports it.
pub(crate) fn memory_total() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").expect("/proc/meminfo");
    let kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse().ok())
        .expect("MemTotal in /proc/meminfo");
    kb * 1024
}

/// The sample algorithm's request with the bundled data uploaded: `train` and `validation`
/// channels under `data/`, `epochs` epochs.
pub(crate) fn sample_request(name: &str, bucket: &Bucket, epochs: u32) -> Value {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/linear");
    for channel in ["train", "validation"] {
        let data = std::fs::read(fixtures.join(channel).join("data.csv")).expect("fixture");
        bucket.put(&format!("data/{channel}/part-0.csv"), &data);
    }
    let mut req = request(name, SAMPLE_IMAGE, bucket);
    req["HyperParameters"] = json!({"epochs": epochs.to_string(), "learning_rate": "0.1"});
    req["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] = json!(bucket.uri("data/train"));
    let mut validation = req["InputDataConfig"][0].clone();
    validation["ChannelName"] = json!("validation");
    validation["DataSource"]["S3DataSource"]["S3Uri"] = json!(bucket.uri("data/validation/"));
    req["InputDataConfig"].as_array_mut().expect("channels").push(validation);
    req
}

/// A fresh state directory and a bucket holding `train/a.csv`, the input most tests need.
pub(crate) fn with_data(prefix: &str) -> (Smlocal, Bucket) {
    let sm = Smlocal::new();
    let bucket = s3().bucket(&format!("{prefix}-{}", unique()));
    bucket.put("train/a.csv", b"1\n");
    (sm, bucket)
}

/// Every path below `dir` (folders and files), never through a symbolic link.
pub(crate) fn paths_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            out.extend(paths_below(&path));
        }
        out.push(path);
    }
    out
}

/// Makes a finished job look as a `kill -9` of its runner leaves it: `InProgress`, and
/// `runner.pid` naming `pid` with no process holding the runner's lock.
pub(crate) fn as_if_its_runner_died(sm: &Smlocal, job: &str, pid: &str) {
    let record = sm.job_dir(job).join("record.json");
    let mut r: Value = serde_json::from_slice(&std::fs::read(&record).expect("a record")).expect("JSON");
    r["TrainingJobStatus"] = json!("InProgress");
    std::fs::write(&record, r.to_string()).expect("write the record");
    std::fs::write(sm.job_dir(job).join("runner.pid"), pid).expect("write runner.pid");
}

/// The secondary statuses a record went through, in order.
pub(crate) fn statuses(record: &Value) -> Vec<&str> {
    record["SecondaryStatusTransitions"]
        .as_array()
        .map(|t| t.iter().filter_map(|t| t["Status"].as_str()).collect())
        .unwrap_or_default()
}

/// A running `smlocal serve` on a free port of 127.0.0.1, killed when dropped.
pub(crate) struct Server {
    pub url: String,
    child: std::process::Child,
}

impl Smlocal {
    /// Starts `smlocal serve --port 0` (plus `extra`) and waits for the URL it prints.
    pub(crate) fn serve(&self, extra: &[&str]) -> Server {
        let mut child = self
            .command()
            .args(["serve", "--port", "0", "--stop-grace", "5"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run smlocal serve");
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().expect("stdout")));
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let url = first.rsplit(' ').next().unwrap_or_default().to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "smlocal serve printed '{first}' instead of its URL");
        Server { url, child }
    }
}

impl Server {
    /// Ends the server as a crash would: no chance to stop its jobs.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Ends the server as Ctrl-C does, and waits for it to exit.
    pub(crate) fn interrupt(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        self.child.wait().expect("wait for smlocal serve")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Python with boto3 and the SageMaker Python SDK v2: `$SMLOCAL_SDK_PYTHON`, else a
/// virtual environment made once under `target/sdk-venv` with pip from PyPI, at the versions
/// `tests/e2e/python/requirements.txt` pins. Fails loudly
/// when it cannot be made: these tests never skip.
pub(crate) fn sdk_python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            if let Some(python) = std::env::var_os("SMLOCAL_SDK_PYTHON") {
                return PathBuf::from(python);
            }
            venv("sdk-venv", "requirements.txt")
        })
        .clone()
}

/// A Python with the SageMaker SDK v3 and the AWS CLI v1 (`requirements-v3.txt`), made once
/// under `target/sdk3-venv` as [`sdk_python`] makes its own.
pub(crate) fn sdk3_python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| venv("sdk3-venv", "requirements-v3.txt")).clone()
}

/// `target/NAME/bin/python` with `tests/e2e/python/REQUIREMENTS` installed from PyPI, made
/// again when the pinned versions change. Fails loudly when it cannot be made.
fn venv(name: &str, requirements: &str) -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join(name);
    let python = venv.join("bin/python");
    std::fs::create_dir_all(venv.parent().expect("target")).expect("create target/");
    // The benchmark may be making the same environment: one at a time.
    let lock = std::fs::File::create(venv.with_extension("lock")).expect("create the venv lock");
    lock.lock().expect("lock the venv");
    let requirements = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/python").join(requirements);
    let wanted = std::fs::read_to_string(&requirements).expect("read the requirements");
    let ready = venv.join(".smlocal-ready");
    if std::fs::read_to_string(&ready).ok().as_deref() != Some(wanted.as_str()) {
        let made = Command::new("python3").args(["-m", "venv", "--clear"]).arg(&venv).status();
        assert!(made.is_ok_and(|s| s.success()), "python3 -m venv {} failed", venv.display());
        let installed = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&requirements)
            .status();
        assert!(installed.is_ok_and(|s| s.success()), "pip install -r {} failed", requirements.display());
        std::fs::write(&ready, wanted).expect("mark the venv ready");
    }
    python
}

/// Runs `tests/e2e/python/SCRIPT` with the SDK's Python, configured only through the
/// environment variables a user would set: the server for SageMaker and CloudWatch Logs,
/// the test S3 server for S3, the SDK's telemetry off (nothing may leave this machine).
pub(crate) fn python(sm: &Smlocal, server: &Server, script: &str, args: &[&str]) -> Run {
    python_with(sm, server, script, args, &[])
}

/// [`python`] with some variables set otherwise (other credentials, say).
pub(crate) fn python_with(sm: &Smlocal, server: &Server, script: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    client_with(sm, server, &sdk_python(), script, args, env)
}

/// Runs SCRIPT (or, for `aws`, the AWS CLI) from the SDK v3 environment, with
/// `AWS_ENDPOINT_URL_IAM` at the server too and every connection but 127.0.0.1 refused in
/// the client process (`python/loopback/sitecustomize.py`).
pub(crate) fn client_v3(sm: &Smlocal, server: &Server, script: &str, args: &[&str]) -> Run {
    let python = sdk3_python();
    let loopback = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/python/loopback");
    let loopback = loopback.display().to_string();
    let env = [("AWS_ENDPOINT_URL_IAM", server.url.as_str()), ("PYTHONPATH", loopback.as_str())];
    client_with(sm, server, &python, script, args, &env)
}

fn client_with(sm: &Smlocal, server: &Server, python: &Path, script: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/python");
    let mut command = if script == "aws" {
        Command::new(python.with_file_name("aws"))
    } else {
        let mut c = Command::new(python);
        c.arg(scripts.join(script));
        c
    };
    let path = format!("{}:{}", python.parent().expect("bin").display(), std::env::var("PATH").unwrap_or_default());
    let output = command
        .args(args)
        .env_clear()
        .env("PATH", path)
        // A home of its own: no ~/.aws or SageMaker config of the user's leaks in.
        .env("HOME", sm.home.path())
        .env("AWS_ENDPOINT_URL_SAGEMAKER", &server.url)
        .env("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", &server.url)
        .env("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", &server.url)
        .env("AWS_ENDPOINT_URL_CLOUDWATCH", &server.url)
        .env("AWS_ENDPOINT_URL_S3", &s3().endpoint)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_DEFAULT_REGION", REGION)
        .env("SAGEMAKER_USER_CONFIG_OVERRIDE", scripts.join("sagemaker-config.yaml"))
        .env("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
        .env("PYTHONUNBUFFERED", "1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run python");
    Run::from(output)
}

/// Runs `boto3_calls.py` with `args` and returns what it printed, as JSON.
pub(crate) fn calls(sm: &Smlocal, server: &Server, args: &[&str]) -> Value {
    let run = python(sm, server, "boto3_calls.py", args);
    assert_eq!(run.code, 0, "boto3_calls.py {args:?}: {run:?}");
    serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {run:?}"))
}

/// Writes a request where a client can read it; returns its path.
pub(crate) fn request_file(sm: &Smlocal, request: &Value) -> String {
    let path = sm.home.path().join(format!("request-{}.json", unique()));
    std::fs::write(&path, request.to_string()).expect("write request");
    path.display().to_string()
}

/// Polls the shared store (through the CLI) until `done` holds for the job's record.
pub(crate) fn wait_for(sm: &Smlocal, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = sm.command().args(["describe", name]).output().expect("smlocal describe");
        if out.status.success() {
            let record: Value = serde_json::from_slice(&out.stdout).expect("json");
            if done(&record) {
                return record;
            }
            assert!(Instant::now() < deadline, "{name} never became {what}: {record:#}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `done` every few milliseconds until it holds; fails the test, saying `what` never
/// happened, after `limit`.
pub(crate) fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} never happened within {limit:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Starts `smlocal train` on `server` with a model archive big enough (24 MiB, incompressible)
/// for a multipart upload, and returns it held mid-upload: the upload has begun and the
/// server is paused. The model is what it returns beside the process.
pub(crate) fn held_mid_upload(sm: &Smlocal, server: &S3Server, job: &str) -> (std::process::Child, Vec<u8>) {
    let bucket = server.bucket(job);
    let big = pseudo_random(24 << 20, 11);
    bucket.put("train/big.bin", &big);
    let request = probe_request(job, &bucket, &["copy", "/opt/ml/input/data/train", "/opt/ml/model/seen"]);
    let file = sm.home.path().join(format!("{job}.json"));
    std::fs::write(&file, request.to_string()).expect("write request");
    let child = sm
        .command()
        .env("AWS_ENDPOINT_URL", &server.endpoint)
        .arg("train")
        .arg(&file)
        .stderr(Stdio::null())
        .spawn()
        .expect("run smlocal");
    wait_until("the model upload's start", Duration::from_secs(60), || !server.pending_uploads(job).is_empty());
    server.pause();
    (child, big)
}

/// What the sample model (its model.json) predicts for one row of features.
pub(crate) fn sample_prediction(model: &Value, row: &[f64]) -> f64 {
    let weights: Vec<f64> = model["weights"].as_array().unwrap().iter().map(|w| w.as_f64().unwrap()).collect();
    weights.iter().zip(row).map(|(w, x)| w * x).sum::<f64>() + model["bias"].as_f64().unwrap()
}
