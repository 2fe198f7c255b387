//! smlocal against the floor this machine sets, measured in the same run and printed as
//! ratios (issue "Fast inner loop"):
//!   a. a trivial job, whole process, against `docker run --rm IMAGE train`;
//!   b. staging N objects from a local S3-compatible server, cold and warm, against a plain
//!      parallel download of the same objects by the same client library (object_store);
//!   c. packaging a model folder (half random, half text) into model.tar.gz, against
//!      `tar -c | pigz -6` writing the same tree to disk;
//!   d. the sample job from the SageMaker SDK's `Estimator.fit()` through `smlocal serve`,
//!      against the same job under `smlocal train` (only with `SMLOCAL_SDK_PYTHON`);
//!   e. InvokeEndpoint through `smlocal serve` against the same request sent straight to the
//!      container's port: latency p50/p99 one request at a time, and requests/s with 32
//!      clients at once;
//!   f. batch transform of 1,000,000 CSV lines (4 objects, `MultiRecord`, 1 MB batches, the
//!      sample's own 2 requests in flight), whole `smlocal transform` process, against a
//!      client posting the same batches straight to an already running container.
//!   g, h, i. at scale (`scale/mod.rs`): staging from a server 20 ms away against the ideal
//!      and boto3; the store with 100,000 jobs; Describe under 64 clients; packaging
//!      100,000 small files.
//!   j. Pipe mode (`pipe/mod.rs`): a FIFO fed from the cache against `cat` into a FIFO; the
//!      first byte cold against 1% of the staging path.
//!   k. a tuning job (`tuning/mod.rs`): `smlocal tune` of 20 sample jobs 4 at a time against
//!      the same 20 jobs run by `smlocal train`, 4 processes at a time.
//!   l. the console with 10,000 jobs (`console/mod.rs`): each page's first byte and whole
//!      HTML against the API answer it is built from; first byte and full load in Chromium.
//!
//! `cargo bench --bench smlocal` runs the full sizes (1 GiB); `-- --tiny` runs small ones
//! (what CI does to keep the benchmark working); `-- a c` runs only those.

use futures::StreamExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

#[path = "console/mod.rs"]
mod console;
/// The tests' S3 server and image builds, shared rather than copied.
#[allow(dead_code)]
#[path = "../tests/e2e/harness.rs"]
mod harness;
#[path = "pipe/mod.rs"]
mod pipe;
#[allow(dead_code)]
#[path = "../tests/e2e/s3_server.rs"]
mod s3_server;
#[path = "scale/mod.rs"]
mod scale;
#[path = "tuning/mod.rs"]
mod tuning;

struct Size {
    objects: usize,
    object_bytes: usize,
    model_files: usize,
    model_bytes: usize,
    repeats: usize,
}

fn main() {
    let tiny = std::env::args().any(|a| a == "--tiny");
    let size = if tiny {
        Size { objects: 50, object_bytes: 64 << 10, model_files: 20, model_bytes: 16 << 20, repeats: 2 }
    } else {
        Size { objects: 1000, object_bytes: 1 << 20, model_files: 100, model_bytes: 1 << 30, repeats: 5 }
    };
    let root = tempfile::Builder::new().prefix("smlocal-bench-").tempdir().expect("tempdir");
    let endpoint = harness::s3().endpoint.clone();
    // Set before any other thread exists: smlocal and the tools it is compared with read S3
    // settings from the standard variables, in this process and in the ones it starts.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("AWS_ENDPOINT_URL", &endpoint);
        std::env::set_var("AWS_ACCESS_KEY_ID", harness::ACCESS_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", harness::SECRET_KEY);
        std::env::set_var("AWS_REGION", harness::REGION);
        std::env::set_var("AWS_ALLOW_HTTP", "true");
    }
    harness::images();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");

    // `-- a c` runs only those benchmarks.
    let picked: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"].contains(&a.as_str()))
        .collect();
    let run = |name: &str| picked.is_empty() || picked.iter().any(|p| p == name);
    println!("{:<44} {:>12} {:>12} {:>8}", "benchmark", "smlocal", "floor", "ratio");
    if run("a") {
        trivial_job(root.path(), &size);
    }
    if run("b") {
        rt.block_on(staging(root.path(), &size));
    }
    if run("c") {
        rt.block_on(packaging(root.path(), &size));
    }
    if run("d") {
        sdk_fit(&size);
    }
    if run("e") {
        rt.block_on(invoke_latency(root.path(), tiny));
    }
    if run("f") {
        batch_transform(root.path(), tiny, &rt);
    }
    if run("g") {
        rt.block_on(scale::latency_staging(root.path(), tiny));
    }
    if run("h") {
        rt.block_on(scale::store_at_scale(tiny));
    }
    if run("i") {
        rt.block_on(scale::many_small_files(root.path(), tiny));
    }
    if run("j") {
        rt.block_on(pipe::pipe_mode(root.path(), tiny));
    }
    if run("k") {
        tuning::tune(root.path(), tiny);
    }
    if run("l") {
        rt.block_on(console::console(tiny));
    }
}

/// f. Records/s of a batch transform against the same batches posted directly.
fn batch_transform(root: &Path, tiny: bool, rt: &tokio::runtime::Runtime) {
    let lines = if tiny { 20_000 } else { 1_000_000 };
    let bucket = harness::s3().bucket(&format!("bench-transform-{}", harness::unique()));
    let mut objects = Vec::new();
    for part in 0..4 {
        let text: String = (0..lines / 4).map(|i| format!("{},{}\n", (i + part) % 97, i % 13)).collect();
        bucket.put(&format!("in/part-{part}.csv"), text.as_bytes());
        objects.push(text);
    }
    // A model the sample serves, packed as training would.
    let model_dir = root.join("transform-model");
    std::fs::create_dir_all(&model_dir).expect("model dir");
    std::fs::write(model_dir.join("model.json"), r#"{"weights": [0.5, -0.25], "bias": 0.1, "target_column": 0}"#)
        .expect("model.json");
    let archive = root.join("transform-model.tar.gz");
    let packed = Command::new("tar").arg("-czf").arg(&archive).arg("-C").arg(&model_dir).arg("model.json").status();
    assert!(packed.is_ok_and(|s| s.success()), "tar");

    let sm = harness::Smlocal::new();
    let server = sm.serve(&["--allow-file-root", &root.display().to_string()]);
    let create = serde_json::json!({"ModelName": "bench", "ExecutionRoleArn": "arn:aws:iam::123456789012:role/R",
        "PrimaryContainer": {"Image": harness::SAMPLE_IMAGE, "ModelDataUrl": format!("file://{}", archive.display())}});
    let client = reqwest::Client::builder().no_proxy().build().expect("client");
    rt.block_on(async {
        let created = client
            .post(&server.url)
            .header("x-amz-target", "SageMaker.CreateModel")
            .header("content-type", "application/x-amz-json-1.1")
            .body(create.to_string())
            .send()
            .await
            .expect("CreateModel");
        assert!(created.status().is_success(), "CreateModel: {:?}", created.text().await);
    });
    drop(server);
    let request = serde_json::json!({
        "TransformJobName": "bench-transform", "ModelName": "bench", "MaxPayloadInMB": 1,
        "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": bucket.uri("in/")}},
                           "ContentType": "text/csv", "SplitType": "Line"},
        "TransformOutput": {"S3OutputPath": bucket.uri("out/"), "AssembleWith": "Line"},
        "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 1},
    });
    let file = root.join("transform-request.json");
    std::fs::write(&file, request.to_string()).expect("request");
    let mut phase = 0.0;
    let ours = time(|| {
        let out = sm.command().args(["transform", "--unique-name"]).arg(&file).output().expect("smlocal transform");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        // `transformed N records in X s once the containers were up`
        phase = stderr
            .lines()
            .find_map(|l| l.split_once(" records in ")?.1.split_once(" s once")?.0.parse().ok())
            .expect("the transform phase's time");
    });

    // The floor: the same container, already up, and the same 1 MB batches, 2 in flight.
    let started = Command::new("docker")
        .args(["run", "-d", "--rm", "-p", "127.0.0.1::8080", "-v"])
        .arg(format!("{}:/opt/ml/model:ro", model_dir.display()))
        .args([harness::SAMPLE_IMAGE, "serve"])
        .output()
        .expect("docker run");
    let id = String::from_utf8_lossy(&started.stdout).trim().to_string();
    let port: u16 = Command::new("docker")
        .args(["port", &id, "8080/tcp"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().rsplit(':').next()?.parse().ok())
        .expect("the container's port");
    let url = format!("http://127.0.0.1:{port}/invocations");
    rt.block_on(async {
        while client.get(format!("http://127.0.0.1:{port}/ping")).send().await.is_err() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });
    let mut batches = Vec::new();
    for text in &objects {
        let mut batch = String::new();
        for line in text.split_inclusive('\n') {
            if batch.len() + line.len() > 1 << 20 {
                batches.push(std::mem::take(&mut batch));
            }
            batch.push_str(line);
        }
        batches.push(batch);
    }
    let floor_started = Instant::now();
    let answered: Vec<usize> = rt.block_on(
        futures::stream::iter(batches)
            .map(|body| {
                let (client, url) = (client.clone(), url.clone());
                async move {
                    let answer =
                        client.post(&url).header("content-type", "text/csv").body(body).send().await.expect("post");
                    answer.bytes().await.expect("answer").len()
                }
            })
            .buffered(2)
            .collect::<Vec<usize>>(),
    );
    let floor = floor_started.elapsed().as_secs_f64();
    assert!(answered.iter().all(|n| *n > 0));
    let _ = Command::new("docker").args(["rm", "-f", &id]).output();
    let (ours_rate, floor_rate) = (lines as f64 / phase, lines as f64 / floor);
    row("f. transform records/s vs direct batches", ours_rate, floor_rate, " /s");
    row("   whole process (s) vs the direct batches", ours, floor, " s");
    // SDK local mode reads local folders: the same objects on disk.
    let local_in = root.join("transform-local-in");
    std::fs::create_dir_all(&local_in).expect("input dir");
    for (part, text) in objects.iter().enumerate() {
        std::fs::write(local_in.join(format!("part-{part}.csv")), text).expect("input");
    }
    let args = ["transform", harness::SAMPLE_IMAGE, &archive.display().to_string(), &local_in.display().to_string()];
    if let Some(sdk) = sdk_seconds(&args, root, 1) {
        row("   vs SageMaker SDK local mode (records/s)", ours_rate, lines as f64 / sdk, " /s");
    }
}

/// e. InvokeEndpoint's added latency: the probe's echo endpoint, one keep-alive client,
/// through `smlocal serve` and straight to the container's published port.
async fn invoke_latency(root: &Path, tiny: bool) {
    let sm = harness::Smlocal::new();
    let server = sm.serve(&[]);
    let model = root.join("invoke-model.tar.gz");
    let made = Command::new("tar").arg("-czf").arg(&model).args(["-C", "/", "--files-from", "/dev/null"]).status();
    assert!(made.is_ok_and(|s| s.success()), "tar");
    let deployed = sm
        .command()
        .args(["deploy", &model.display().to_string(), "--image", "smlocal/probe:latest", "--name", "bench"])
        .args(["--instance-type", "ml.c5.large"])
        .output()
        .expect("smlocal deploy");
    assert!(deployed.status.success(), "{deployed:?}");
    let port = Command::new("docker")
        .args(["ps", "-q", "--filter", "label=smlocal.endpoint=bench"])
        .args(["--filter", &format!("label=smlocal.home={}", sm.home.path().display())])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|id| {
            let out = Command::new("docker").args(["port", id.trim(), "8080/tcp"]).output().ok()?;
            String::from_utf8(out.stdout).ok()?.trim().rsplit(':').next()?.parse::<u16>().ok()
        })
        .expect("the endpoint's published port");
    let direct = format!("http://127.0.0.1:{port}/invocations");
    let through = format!("{}/endpoints/bench/invocations", server.url);
    let client = reqwest::Client::builder().no_proxy().build().expect("client");
    let n = if tiny { 200 } else { 2000 };
    let body = bytes::Bytes::from_static(b"1,2,3\n");
    let sequential = |url: String| {
        let (client, body) = (client.clone(), body.clone());
        async move {
            let mut times = Vec::with_capacity(n);
            for i in 0..n + 50 {
                let started = Instant::now();
                let answer = client.post(&url).header("content-type", "text/csv").body(body.clone()).send().await;
                let ok = match answer {
                    Ok(a) => a.status().is_success() && a.bytes().await.is_ok(),
                    Err(_) => false,
                };
                assert!(ok, "a request to {url} failed");
                // The first 50 warm the connection and the route.
                if i >= 50 {
                    times.push(started.elapsed().as_secs_f64() * 1e3);
                }
            }
            times.sort_by(f64::total_cmp);
            (times[times.len() / 2], times[times.len() * 99 / 100])
        }
    };
    let (floor_p50, floor_p99) = sequential(direct.clone()).await;
    let (ours_p50, ours_p99) = sequential(through.clone()).await;
    row("e. invoke latency p50 (ms) vs direct", ours_p50, floor_p50, " ms");
    println!("{:<44} {:>+10.3} ms", "   added at p50", ours_p50 - floor_p50);
    row("   invoke latency p99 (ms) vs direct", ours_p99, floor_p99, " ms");
    let concurrent = |url: String| {
        let (client, body) = (client.clone(), body.clone());
        async move {
            let started = Instant::now();
            let per_client = n / 16;
            let clients = (0..32).map(|_| {
                let (client, body, url) = (client.clone(), body.clone(), url.clone());
                tokio::spawn(async move {
                    for _ in 0..per_client {
                        let answer =
                            client.post(&url).header("content-type", "text/csv").body(body.clone()).send().await;
                        assert!(answer.is_ok_and(|a| a.status().is_success()), "a request to {url} failed");
                    }
                })
            });
            futures::future::join_all(clients).await;
            (32 * per_client) as f64 / started.elapsed().as_secs_f64()
        }
    };
    let floor_rps = concurrent(direct).await;
    let ours_rps = concurrent(through).await;
    row("   requests/s, 32 clients, vs direct", ours_rps, floor_rps, " /s");
    let deleted = sm.command().args(["delete-endpoint", "bench"]).output().expect("delete-endpoint");
    assert!(deleted.status.success(), "{deleted:?}");
}

/// d. What an SDK user waits for: `fit(wait=True, logs=True)` from call to return, through
/// the API, against the whole `smlocal train` process for the same algorithm and data.
fn sdk_fit(size: &Size) {
    if std::env::var_os("SMLOCAL_SDK_PYTHON").is_none() {
        println!("d. SDK fit through smlocal serve: skipped (scripts/sdk-venv.sh, then SMLOCAL_SDK_PYTHON=...)");
        return;
    }
    let sm = harness::Smlocal::new();
    let bucket = harness::s3().bucket(&format!("bench-fit-{}", harness::unique()));
    let mut request = harness::sample_request("bench-fit", &bucket, 30);
    request["AlgorithmSpecification"]["MetricDefinitions"] =
        serde_json::json!([{"Name": "validation:mse", "Regex": "validation_mse=([0-9.]+)"}]);
    let server = sm.serve(&[]);
    let fits: Vec<f64> = (0..size.repeats.min(3))
        .map(|_| {
            let args = [harness::SAMPLE_IMAGE, &bucket.uri("data"), &bucket.uri("fit-output")];
            let run = harness::python(&sm, &server, "sdk_fit.py", &args);
            assert_eq!(run.code, 0, "{run:?}");
            let seconds = run.stdout.lines().find_map(|l| l.strip_prefix("fit_seconds="));
            seconds.and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no fit_seconds: {run:?}"))
        })
        .collect();
    let trains: Vec<f64> =
        (0..size.repeats.min(3)).map(|_| time(|| assert_eq!(sm.train(&request, &["--unique-name"]).code, 0))).collect();
    row("d. SDK fit() via serve (s) vs smlocal train", median(fits), median(trains), " s");
    println!("{:<44} the SDK sleeps 5 s before it first describes the job", "");
}

fn row(name: &str, ours: f64, floor: f64, unit: &str) {
    println!("{name:<44} {:>10.3}{unit} {:>10.3}{unit} {:>8.2}", ours, floor, ours / floor);
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn time(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

/// a. A trivial job from command to exit, against a bare container start.
fn trivial_job(root: &Path, size: &Size) {
    let data = root.join("trivial/data");
    std::fs::create_dir_all(&data).expect("data");
    std::fs::write(data.join("a.csv"), "1,2\n").expect("data");
    let request = serde_json::json!({
        "TrainingJobName": "trivial",
        "RoleArn": "arn:aws:iam::123456789012:role/Bench",
        "AlgorithmSpecification": {"TrainingImage": "smlocal/probe:latest", "TrainingInputMode": "File"},
        "InputDataConfig": [{"ChannelName": "train", "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": format!("file://{}/", data.display())}}}],
        "OutputDataConfig": {"S3OutputPath": format!("file://{}/trivial/out", root.display())},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
        "StoppingCondition": {"MaxRuntimeInSeconds": 60}
    });
    let file = root.join("trivial/request.json");
    std::fs::write(&file, request.to_string()).expect("request");
    let home = root.join("trivial/home");
    let smlocal = env!("CARGO_BIN_EXE_smlocal");
    let quiet = |mut c: Command| {
        let ok = c.stdout(Stdio::null()).stderr(Stdio::null()).status().map(|s| s.success()).unwrap_or(false);
        assert!(ok, "{c:?} failed");
    };
    // One warm-up each: the first container start after an image build is slower.
    quiet(docker_run());
    let bare = median((0..size.repeats).map(|_| time(|| quiet(docker_run()))).collect());
    let ours = median(
        (0..size.repeats + 1)
            .map(|_| {
                let mut c = Command::new(smlocal);
                c.env("SMLOCAL_HOME", &home).args(["train", "--unique-name"]).arg(&file);
                time(|| quiet(c))
            })
            .skip(1)
            .collect(),
    );
    row("a. trivial job (s) vs docker run --rm", ours, bare, " s");
    println!("{:<44} {:>+10.3} s", "   overhead over docker run", ours - bare);
    if let Some(sdk) =
        sdk_seconds(&["trivial", "smlocal/probe:latest", &data.display().to_string()], root, size.repeats.min(3))
    {
        row("   vs SageMaker SDK local mode (s)", ours, sdk, " s");
    }
}

/// The same job under the SageMaker Python SDK's local mode, whole process, when
/// `SMLOCAL_SDK_PYTHON` names a Python with `sagemaker<3` (scripts/sdk-venv.sh makes one).
fn sdk_seconds(args: &[&str], root: &Path, repeats: usize) -> Option<f64> {
    let Ok(python) = std::env::var("SMLOCAL_SDK_PYTHON") else {
        println!("   SDK local mode: skipped (scripts/sdk-venv.sh, then SMLOCAL_SDK_PYTHON=.venv-sdk/bin/python)");
        return None;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/sdk_local_mode.py");
    let mut times = Vec::new();
    for i in 0..repeats.max(1) {
        let out = root.join(format!("sdk-out-{}-{i}", args[0]));
        let mut c = Command::new(&python);
        // boto3 takes its region from AWS_DEFAULT_REGION.
        c.arg(&script)
            .args(args)
            .arg(&out)
            .env("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
            .env("AWS_DEFAULT_REGION", "us-east-1");
        c.current_dir(root).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut result = None;
        times.push(time(|| result = c.output().ok()));
        if let Some(out) = result.filter(|o| !o.status.success()) {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("").to_string();
            println!("   SDK local mode: the {} job failed: {last}", args[0]);
            return None;
        }
    }
    Some(median(times))
}

fn docker_run() -> Command {
    let mut c = Command::new("docker");
    c.args(["run", "--rm", "smlocal/probe:latest", "train"]);
    c
}

/// b. Staging from S3: cold (empty cache) and warm, against a plain parallel download.
async fn staging(root: &Path, size: &Size) {
    let bucket = "bench-data";
    let store = harness::s3().bucket(bucket).store();
    scale::upload(&store, "data", size.objects, size.object_bytes).await;
    let total = (size.objects * size.object_bytes) as f64;

    // The floor: list, then 8 GETs at a time straight to files, with the same client library.
    let floor = scale::raw_floor(root, &harness::s3().endpoint, bucket, "data", 8, "b").await;

    let home = root.join("staging-home");
    let job = plan_staging_job(&format!("s3://{bucket}/data/"));
    let cache = smlocal::Cache::new(&home);
    // One handle for both runs, as a job has: its S3 client and connections are shared.
    let storage = smlocal::Storage::from_env();
    let stage = |n: usize| {
        let (job, cache, storage, work) = (&job, &cache, &storage, home.join(format!("work-{n}")));
        async move {
            let progress = smlocal::Progress::default();
            let t = Instant::now();
            smlocal::stage(job, &work, storage, cache, &progress).await.expect("stage");
            t.elapsed().as_secs_f64()
        }
    };
    let cold = stage(0).await;
    let warm = stage(1).await;
    let mib = total / (1 << 20) as f64;
    row(&format!("b. cold staging {} x {} KiB (s)", size.objects, size.object_bytes >> 10), cold, floor, " s");
    println!(
        "{:<44} {:>10.1} MiB/s vs {:.1} MiB/s plain (throughput ratio {:.2})",
        "",
        mib / cold,
        mib / floor,
        floor / cold
    );
    row("   warm re-run (s), vs cold", warm, cold, " s");
    let uri = format!("s3://{bucket}/data/");
    if let Some(sdk) = sdk_seconds(&["staging", "smlocal/probe:latest", &uri], root, 1) {
        // The SDK's figure is a whole job; so is this one, for a fair ratio.
        let file = root.join("staging-request.json");
        let mut request = serde_json::to_value(&job.request.raw).expect("request");
        request["TrainingJobName"] = serde_json::json!("bench-staging-job");
        request["OutputDataConfig"]["S3OutputPath"] =
            serde_json::json!(format!("file://{}/staging-out", root.display()));
        std::fs::write(&file, request.to_string()).expect("request");
        let mut c = Command::new(env!("CARGO_BIN_EXE_smlocal"));
        c.env("SMLOCAL_HOME", root.join("staging-cold-home"))
            .arg("train")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let whole = time(|| {
            c.status().ok();
        });
        row("   cold whole job vs SDK local mode (s)", whole, sdk, " s");
    }
}

fn plan_staging_job(uri: &str) -> smlocal::Job {
    let request = serde_json::json!({
        "TrainingJobName": "bench-staging",
        "RoleArn": "arn:aws:iam::123456789012:role/Bench",
        "AlgorithmSpecification": {"TrainingImage": "smlocal/probe:latest", "TrainingInputMode": "File"},
        "InputDataConfig": [{"ChannelName": "train", "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri}}}],
        "OutputDataConfig": {"S3OutputPath": "file:///tmp/unused"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1}
    });
    let request = smlocal::from_value(request).expect("request");
    let settings = smlocal::Settings::detect(None, true, "us-east-1").expect("this machine");
    smlocal::plan(request, &settings).expect("plan")
}

/// c. Packaging a model folder: from the folders to model.tar.gz at its destination.
async fn packaging(root: &Path, size: &Size) {
    let model = root.join("model");
    std::fs::create_dir_all(&model).expect("model dir");
    let per_file = size.model_bytes / size.model_files;
    for i in 0..size.model_files {
        let bytes = if i % 2 == 0 {
            harness::pseudo_random(per_file, i as u64 + 1)
        } else {
            let mut text = String::with_capacity(per_file);
            let mut n = i;
            while text.len() < per_file {
                n = n.wrapping_mul(2654435761) % 100_003;
                text.push_str(&format!("layer.{} weight {} bias {:.4}\n", n % 97, n, (n as f64).sin()));
            }
            text.into_bytes()
        };
        std::fs::write(model.join(format!("part-{i:03}.{}", if i % 2 == 0 { "bin" } else { "txt" })), bytes)
            .expect("model file");
    }
    // Read once so both measurements start from the page cache.
    Command::new("tar").arg("-cf").arg("/dev/null").arg("-C").arg(&model).arg(".").status().ok();

    let has_pigz = Command::new("pigz")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let floor_out = root.join("floor.tar.gz");
    let shell = |cmd: &str| {
        let t = Instant::now();
        let ok = Command::new("bash").args(["-c", cmd]).status().is_ok_and(|s| s.success());
        assert!(ok, "{cmd} failed");
        t.elapsed().as_secs_f64()
    };
    let plain_tar = shell(&format!("tar -cf {} -C {} .", root.join("plain.tar").display(), model.display()));
    let ours_out = root.join("ours/model.tar.gz");
    let sources = vec![("algo-1".to_string(), smlocal::Beneath::folder(&model))];
    let storage = smlocal::Storage::from_env();
    let t = Instant::now();
    smlocal::stream_archive(&storage, sources.clone(), &format!("file://{}", ours_out.display())).await.expect("pack");
    let ours = t.elapsed().as_secs_f64();
    let ours_size = std::fs::metadata(&ours_out).map(|m| m.len()).unwrap_or(0) as f64;
    let t = Instant::now();
    smlocal::stream_archive(&storage, sources, "s3://bench-data/out/model.tar.gz").await.expect("pack to S3");
    let to_s3 = t.elapsed().as_secs_f64();
    let mib = size.model_bytes as f64 / (1 << 20) as f64;
    if has_pigz {
        let floor = shell(&format!("tar -cf - -C {} . | pigz -6 > {}", model.display(), floor_out.display()));
        let floor_size = std::fs::metadata(&floor_out).map(|m| m.len()).unwrap_or(1) as f64;
        row(&format!("c. model.tar.gz of {mib:.0} MiB to disk (s)"), ours, floor, " s");
        println!(
            "{:<44} {:>10.1} MiB/s vs {:.1} MiB/s tar|pigz (throughput ratio {:.2})",
            "",
            mib / ours,
            mib / floor,
            floor / ours
        );
        println!(
            "{:<44} {:>10.0} B   {:>10.0} B   {:>8.4}",
            "   archive size vs tar|pigz -6",
            ours_size,
            floor_size,
            ours_size / floor_size
        );
    } else {
        println!(
            "c. pigz is not installed (apt-get install pigz): no floor; smlocal took {ours:.3} s for {mib:.0} MiB"
        );
    }
    println!(
        "{:<44} {:>10.3} s   (plain tar to disk {plain_tar:.3} s)",
        "   model.tar.gz streamed to the S3 server", to_s3
    );
}
